"""Every erasure path computes `reedsolo`'s code, byte for byte (DESIGN §7).

Property: for RS 4+2, 2+1, 3+3 and 10+4, on every available path ("isal", "numpy"),
`Code.encode` returns the parity `reedsolo.rs_encode_msg` gives each byte column, and
`Code.decode` returns, from EVERY erasure pattern of up to `m` shards, the data
`reedsolo.rs_correct_msg` recovers from that column with those erasures.

Method: the oracle is `reedsolo` itself, called column by column with the pinned
parameters and its module-global tables re-initialised before each use; it is slow
(~0.1 ms per column), so it sees short chunks. The exhaustive decode test runs every
pattern at chunk lengths 1, 3 and 17 against `rs_correct_msg` on every column, and at
1001 against the reedsolo-encoded data on every byte and `rs_correct_msg` on sampled
columns. Hypothesis adds random shapes, lengths, data, erasures and surplus shards.
The fast path and the fallback are then compared with each other on 1 MiB buffers,
where the oracle would take minutes. CAIRN_DEEP=1 runs about 10x the examples.
"""

from __future__ import annotations

import itertools
import os
import random

import pytest
import reedsolo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import erasure

DEEP = os.environ.get("CAIRN_DEEP") == "1"
SHAPES = [(4, 2), (2, 1), (3, 3), (10, 4)]
PATHS = erasure.available_paths()
ORACLE_LENGTHS = [1, 3, 17]

_codes: dict[tuple[int, int, str], erasure.Code] = {}


def code(k: int, m: int, path: str) -> erasure.Code:
    """One Code per shape and path for the whole module, so decode matrices are computed once."""
    key = (k, m, path)
    if key not in _codes:
        _codes[key] = erasure.Code(k, m, path=path)
    return _codes[key]


def pin_reedsolo_tables() -> None:
    reedsolo.init_tables(prim=0x11D, generator=2, c_exp=8)


def oracle_encode(data: list[bytes], m: int) -> list[bytes]:
    pin_reedsolo_tables()
    generator = reedsolo.rs_generator_poly(m, fcr=0, generator=2)
    k, length = len(data), len(data[0])
    parity = [bytearray(length) for _ in range(m)]
    for offset in range(length):
        codeword = reedsolo.rs_encode_msg(bytearray(chunk[offset] for chunk in data), m,
                                          fcr=0, generator=2, gen=generator)
        for row in range(m):
            parity[row][offset] = codeword[k + row]
    return [bytes(chunk) for chunk in parity]


def oracle_decode(shards: dict[int, bytes], k: int, m: int, length: int,
                  columns: list[int] | None = None) -> list[bytes]:
    """reedsolo's data for the given byte columns (all by default), erasures at the absent shards."""
    pin_reedsolo_tables()
    erased = [index for index in range(k + m) if index not in shards]
    columns = list(range(length)) if columns is None else columns
    data = [bytearray(len(columns)) for _ in range(k)]
    for position, offset in enumerate(columns):
        codeword = bytearray(shards[index][offset] if index in shards else 0 for index in range(k + m))
        message, _, _ = reedsolo.rs_correct_msg(codeword, m, fcr=0, generator=2,
                                                erase_pos=erased, only_erasures=True)
        for row in range(k):
            data[row][position] = message[row]
    return [bytes(chunk) for chunk in data]


def random_chunks(rng: random.Random, k: int, length: int) -> list[bytes]:
    return [rng.randbytes(length) for _ in range(k)]


def erasure_patterns(k: int, m: int):
    for count in range(m + 1):
        yield from itertools.combinations(range(k + m), count)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("k,m", SHAPES)
@pytest.mark.parametrize("length", [*ORACLE_LENGTHS, 1001])
def test_encode_equals_reedsolo(k, m, path, length):
    data = random_chunks(random.Random(f"encode {k} {m} {length}"), k, length)
    assert code(k, m, path).encode(data) == oracle_encode(data, m)


@pytest.mark.parametrize("k,m", SHAPES)
@pytest.mark.parametrize("length", [*ORACLE_LENGTHS, 1001])
def test_decode_from_every_erasure_pattern_equals_reedsolo(k, m, length):
    rng = random.Random(f"decode {k} {m} {length}")
    data = random_chunks(rng, k, length)
    shards = data + oracle_encode(data, m)
    sampled = None if length in ORACLE_LENGTHS else sorted({0, length - 1, *rng.sample(range(length), 3)})
    patterns = 0
    for erased in erasure_patterns(k, m):
        surviving = {index: shards[index] for index in range(k + m) if index not in erased}
        expected = oracle_decode(surviving, k, m, length, sampled)
        if sampled is not None:
            assert expected == [bytes(chunk[offset] for offset in sampled) for chunk in data]
            expected = data  # reedsolo's answer on the sampled columns is the data; check every byte
        for path in PATHS:
            assert code(k, m, path).decode(surviving, length) == expected, (path, erased)
        patterns += 1
    assert patterns == sum(len(list(itertools.combinations(range(k + m), count))) for count in range(m + 1))


@st.composite
def stripes(draw):
    k, m = draw(st.sampled_from(SHAPES))
    length = draw(st.one_of(st.integers(1, 64), st.sampled_from([1, 3, 17, 255, 256, 257])))
    seed = draw(st.integers(0, 2**32 - 1))
    data = random_chunks(random.Random(seed), k, length)
    erased = draw(st.sets(st.integers(0, k + m - 1), max_size=m))
    return k, m, data, erased


@settings(max_examples=2000 if DEEP else 200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(stripes())
def test_random_stripes_encode_and_decode_as_reedsolo(stripe):
    k, m, data, erased = stripe
    length = len(data[0])
    parity = oracle_encode(data, m)
    shards = data + parity
    surviving = {index: shards[index] for index in range(k + m) if index not in erased}
    expected = oracle_decode(surviving, k, m, length)
    assert expected == data
    for path in PATHS:
        assert code(k, m, path).encode(data) == parity
        assert code(k, m, path).decode(surviving, length) == expected
        # Inputs as memoryviews over larger buffers decode the same.
        views = {index: memoryview(b"\xff" + shard + b"\xff")[1:-1] for index, shard in surviving.items()}
        assert code(k, m, path).decode(views, length) == expected


@settings(max_examples=50 if DEEP else 8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), extra=st.sampled_from([0, 1, 13, 63]))
def test_fast_path_equals_fallback_on_one_mib_chunks(seed, extra):
    if erasure.PATH_ISAL not in PATHS:
        pytest.skip("ISA-L not loadable here: only the numpy path runs")
    k, m = 4, 2
    length = (1 << 20) + extra
    rng = random.Random(seed)
    data = random_chunks(rng, k, length)
    fast, fallback = code(k, m, erasure.PATH_ISAL), code(k, m, erasure.PATH_NUMPY)
    parity = fast.encode(data)
    assert parity == fallback.encode(data)
    shards = data + parity
    for erased in [(0, 1), (2, 5), (rng.randrange(k),), tuple(rng.sample(range(k + m), m))]:
        surviving = {index: shards[index] for index in range(k + m) if index not in erased}
        assert fast.decode(surviving, length) == data
        assert fallback.decode(surviving, length) == data
