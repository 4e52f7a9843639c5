"""mmapkit._crc: the fast CRC-32 (ISA-L's, from the ``isal`` extra) gives zlib's values for
every buffer and seed, so nothing written or sent depends on which is installed."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmapkit import _crc


def test_the_fast_crc_is_used_where_the_extra_is_installed() -> None:
    try:
        from isal.isal_zlib import crc32 as fast
    except ImportError:
        if os.environ.get("CI") == "true":
            raise AssertionError("the test extra installs isal: CI must have it") from None
        pytest.skip("the isal extra is not installed: zlib's crc32 is used")
    assert _crc.crc32() is fast


@given(st.binary(max_size=20_000), st.integers(min_value=0, max_value=(1 << 64) - 1),
       st.integers(min_value=0, max_value=64))
def test_same_values_as_zlib(data: bytes, seed: int, cut: int) -> None:
    crc = _crc.crc32()
    assert crc(data) == zlib.crc32(data)
    assert crc(data, seed) == zlib.crc32(data, seed)  # (both mask the seed to 32 bits)
    view = memoryview(data)[cut:]
    assert crc(view, seed) == zlib.crc32(view, seed)
