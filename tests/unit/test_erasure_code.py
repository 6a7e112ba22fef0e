"""The erasure code is pinned, its layout is DESIGN §7's, and bad input is refused.

Method: golden values (the RS 4+2 parity matrix and code id that placements store:
a change of either is a new code, never a silent one); GF(2^8) tables and the full
multiplication table against `reedsolo`'s own; the matrix derivation survives another
user re-initialising `reedsolo`'s module-global tables; threads sharing one Code get
the same bytes; a table of layouts around the boundaries; and examples of every
rejected input (ValueError).
"""

from __future__ import annotations

import concurrent.futures

import pytest
import reedsolo

from common import erasure

MiB = 1 << 20

RS_4_2_PARITY = ((31, 15, 7, 3), (30, 14, 6, 2))
RS_4_2_CODE_ID = "rs-4+2-a0e9261e74f6078f"


def test_rs_4_2_is_pinned():
    assert erasure.parity_matrix(4, 2) == RS_4_2_PARITY
    assert erasure.code_id(4, 2) == RS_4_2_CODE_ID
    for path in erasure.available_paths():
        assert erasure.Code(4, 2, path=path).code_id == RS_4_2_CODE_ID


def test_code_ids_name_parameters_and_differ_by_shape():
    ids = {erasure.code_id(k, m) for k, m in [(4, 2), (2, 1), (3, 3), (10, 4), (6, 3), (2, 2)]}
    assert len(ids) == 6
    assert erasure.code_id(10, 4).startswith("rs-10+4-")


def test_field_is_reedsolos():
    gf_log, gf_exp, field_charac = reedsolo.init_tables(prim=0x11D, generator=2, c_exp=8)
    assert field_charac == 255
    assert list(gf_exp[:510]) == erasure._EXP
    assert list(gf_log[1:256]) == erasure._LOG[1:]
    table = erasure._load_numpy()._table
    for a in range(256):
        assert [reedsolo.gf_mul(a, b) for b in range(256)] == table[a].tolist()


def test_derivation_reinitialises_reedsolos_global_tables():
    reedsolo.init_tables(prim=0x187, generator=3, c_exp=8)  # another user's field
    assert erasure.reedsolo_encode_column(bytes([1, 0, 0, 0]), 2) == bytes([31, 30])
    erasure.parity_matrix.cache_clear()
    reedsolo.init_tables(prim=0x187, generator=3, c_exp=8)
    assert erasure.parity_matrix(4, 2) == RS_4_2_PARITY


def test_inverse_of_every_two_erasure_submatrix():
    parity = erasure.parity_matrix(4, 2)
    generator = [tuple(int(c == r) for c in range(4)) for r in range(4)] + list(parity)
    for a in range(6):
        for b in range(a + 1, 6):
            rows = tuple(generator[i] for i in range(6) if i not in (a, b))
            inverse = erasure._invert(rows)
            product = erasure.multiply_reference(inverse, [bytes(row) for row in rows])
            assert product == [bytes(int(c == r) for c in range(4)) for r in range(4)]


@pytest.mark.parametrize("size,k,chunk_max,expected", [
    (0, 4, MiB, (0, 0)),
    (1, 4, MiB, (1, 1)),
    (4, 4, MiB, (1, 1)),
    (5, 4, MiB, (2, 1)),
    (4 * MiB - 1, 4, MiB, (MiB, 1)),
    (4 * MiB, 4, MiB, (MiB, 1)),
    (4 * MiB + 1, 4, MiB, (MiB, 2)),
    (100 * MiB, 4, MiB, (MiB, 25)),
    (3 * MiB, 4, MiB, (3 * MiB // 4, 1)),
    (None, 4, MiB, (MiB, None)),
    (1001, 10, 64, (64, 2)),
])
def test_stripe_layout(size, k, chunk_max, expected):
    layout = erasure.stripe_layout(size, k, chunk_max)
    assert tuple(layout) == expected
    if size:
        assert (layout.stripe_count - 1) * layout.stripe_bytes(k) < size <= layout.stripe_count * layout.stripe_bytes(k)


def test_stripe_chunks_pad_the_partial_stripe_with_zeros():
    chunks = erasure.stripe_chunks(b"abcdefg", 4, 2)
    assert [bytes(chunk) for chunk in chunks] == [b"ab", b"cd", b"ef", b"g\0"]
    chunks = erasure.stripe_chunks(b"abc", 4, 2)
    assert [bytes(chunk) for chunk in chunks] == [b"ab", b"c\0", b"\0\0", b"\0\0"]
    assert erasure.Code(4, 2).encode(chunks) == erasure.Code(4, 2, path="numpy").encode(chunks)


def test_empty_chunks_encode_and_decode_to_empty():
    code = erasure.Code(4, 2)
    assert code.encode([b""] * 4) == [b"", b""]
    assert code.decode({0: b"", 2: b"", 4: b"", 5: b""}, 0) == [b""] * 4


def test_surplus_shards_and_present_data_are_returned_as_given():
    code = erasure.Code(2, 1)
    data = [b"hello", b"world"]
    parity = code.encode(data)
    assert code.decode({0: data[0], 1: data[1], 2: parity[0]}, 5) == data
    assert code.decode({1: memoryview(data[1]), 2: parity[0]}, 5) == data


@pytest.mark.parametrize("k,m", [(0, 2), (4, 0), (200, 56), (-1, 2), (4.0, 2)])
def test_impossible_shapes_are_refused(k, m):
    with pytest.raises(ValueError):
        erasure.Code(k, m)


def test_unknown_path_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        erasure.Code(4, 2, path="gpu")


@pytest.mark.parametrize("path", erasure.available_paths())
def test_invalid_input_is_refused(path):
    code = erasure.Code(4, 2, path=path)
    data = [bytes(8)] * 4
    shards = dict(enumerate(data + code.encode(data)))
    with pytest.raises(ValueError):
        code.encode(data[:3])  # too few chunks
    with pytest.raises(ValueError):
        code.encode(data + data[:1])  # too many
    with pytest.raises(ValueError):
        code.encode(data[:3] + [bytes(7)])  # lengths differ
    with pytest.raises(ValueError):
        code.encode(data[:3] + [memoryview(bytes(16))[::2]])  # not contiguous
    with pytest.raises(ValueError):
        code.decode({index: shards[index] for index in (0, 1, 5)}, 8)  # fewer than k shards
    with pytest.raises(ValueError):
        code.decode({**shards, 1: bytes(7)}, 8)  # a shard of the wrong length
    with pytest.raises(ValueError):
        code.decode(shards, 9)  # every shard of the wrong length
    with pytest.raises(ValueError):
        code.decode({**shards, 6: bytes(8)}, 8)  # no shard 6 in 4+2
    with pytest.raises(ValueError):
        code.decode({**shards, -1: bytes(8)}, 8)
    with pytest.raises(ValueError):
        code.decode(shards, -1)


@pytest.mark.parametrize("path", erasure.available_paths())
def test_threads_share_a_code(path):
    code = erasure.Code(4, 2, path=path)
    stripes = [[bytes([seed, index]) * 40_000 for index in range(4)] for seed in range(16)]
    expected = [code.encode(stripe) for stripe in stripes]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(code.encode, stripes)) == expected
        lost = [{index: shard for index, shard in enumerate(stripe + parity) if index not in (0, 3)}
                for stripe, parity in zip(stripes, expected)]
        assert list(pool.map(code.decode, lost, [80_000] * 16)) == stripes


def test_numpy_is_chosen_when_isal_cannot_load(monkeypatch):
    monkeypatch.setattr(erasure, "_load_isal", lambda: None)
    assert erasure.available_paths() == ["numpy"]
    assert erasure.Code(4, 2).path == "numpy"
    with pytest.raises(ValueError, match="ISA-L"):
        erasure.Code(4, 2, path="isal")
