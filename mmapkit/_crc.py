"""CRC-32 for checks of large buffers: ISA-L's when the ``isal`` extra is installed, else
zlib's.

Both compute the same CRC (IEEE 802.3, zlib's, the seed masked to 32 bits), so a file or
a reply checked with one verifies with the other: nothing on disk or on the wire depends
on which is installed.  ISA-L's uses the CPU's carry-less multiply: 10-15x zlib's speed
here on 10 KiB to 1 MiB buffers (zlib's is slicing-by-8), which bounded a journal fetch
over a Unix socket at a third of the socket's speed.  Imported on first use only: ``import
mmapkit`` loads no third-party module.
"""

from __future__ import annotations

import functools
import zlib

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["crc32"]

_CHECK = (b"123456789", 0xCBF43926)  # the standard check value of this CRC


@functools.cache
def crc32() -> Callable[..., int]:
    """The fastest available ``crc32(data, value=0) -> int`` (zlib's signature)."""
    try:
        from isal.isal_zlib import crc32 as fast
    except ImportError:
        return zlib.crc32
    if fast(_CHECK[0], 0) != _CHECK[1] or fast(b"seed", 1 << 40) != zlib.crc32(b"seed", 1 << 40):
        return zlib.crc32  # (a build that disagrees with zlib is not used)
    return fast
