"""Index keys preserve order and round-trip (DESIGN §2).

Property: for any two (bucket, key) pairs, their encoded current keys compare as
the pairs of raw UTF-8 byte strings do; decoding inverts encoding; a key's
encoding starts with the encoded prefix of any of its string prefixes.
"""

from __future__ import annotations

from hypothesis import given, strategies as st

from index import keys

text = st.text(alphabet=st.sampled_from(["\x00", "\x01", "a", "b", "/", "é", "\U0001F600", "\uffff", "\x7f"]), max_size=6)


@given(text, text, text, text)
def test_current_keys_sort_like_utf8_pairs(bucket_a, key_a, bucket_b, key_b):
    pair_a = (bucket_a.encode(), key_a.encode())
    pair_b = (bucket_b.encode(), key_b.encode())
    encoded_a, encoded_b = keys.current_key(bucket_a, key_a), keys.current_key(bucket_b, key_b)
    assert (encoded_a < encoded_b) == (pair_a < pair_b)
    assert (encoded_a == encoded_b) == (pair_a == pair_b)


@given(text, text)
def test_round_trip(bucket, key):
    encoded = keys.current_key(bucket, key)
    decoded_bucket, offset = keys.decode_string(encoded, 1)
    decoded_key, end = keys.decode_string(encoded, offset)
    assert (decoded_bucket, decoded_key, end) == (bucket, key, len(encoded))


@given(text, text, text)
def test_string_prefix_is_a_byte_prefix(bucket, key, suffix):
    full = keys.current_key(bucket, key + suffix)
    assert full.startswith(keys.current_prefix(bucket) + keys.string_prefix(key))


@given(st.binary(max_size=5), st.binary(max_size=5))
def test_prefix_successor_bounds_the_prefix(prefix, rest):
    successor = keys.prefix_successor(prefix)
    if successor is None:
        assert set(prefix) <= {0xFF}
    else:
        assert prefix + rest < successor


@given(st.integers(0, keys.U64_MAX), st.integers(0, keys.U64_MAX))
def test_integers_sort_big_endian(a, b):
    assert (keys.u64(a) < keys.u64(b)) == (a < b)
