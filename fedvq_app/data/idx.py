"""The IDX format of MNIST and Fashion-MNIST, gzip-compressed or not, read with numpy.

Why not torchvision's reader (``torchvision.datasets.mnist.read_sn3_pascalvincent_tensor``):
it opens un-gzipped files only, at torchvision's fixed ``<root>/FashionMNIST/raw/`` layout,
and reports a bad file with a bare ``AssertionError``; the Debian package
``dataset-fashion-mnist`` ships the four original ``*-ubyte.gz`` files, and a bad file must
end the run with one line naming it. The format is small: a 4-byte big-endian magic
``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian int32 dimensions, then the values in C
order. Fashion-MNIST uses type ``0x08`` (unsigned byte) only, the one type read here.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from fedvq_app.config import ConfigError

UBYTE = 0x08


def read_idx(path: Path, ndim: int, key: str) -> np.ndarray:
    """uint8 array of an IDX file with ``ndim`` dimensions (``.gz``: gzip); bad input: one line naming the file.

    ``key`` is the config key the file came from (named in every error).
    """
    where = f"config key '{key}': data file {str(path)!r}"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut gzip stream an EOFError
        raise ConfigError(f"{where} cannot be read ({type(err).__name__}: {err})") from None
    if len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"{where} has {len(raw)} bytes, fewer than an IDX header of {ndim} dimensions")
    zero, kind, dims = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or kind != UBYTE or dims != ndim:
        raise ConfigError(
            f"{where} has magic number 0x{raw[:4].hex()}, expected 0x0000{UBYTE:02x}{ndim:02x} "
            f"(an IDX file of unsigned bytes with {ndim} dimensions)"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    payload = len(raw) - 4 - 4 * ndim
    if payload != expected:
        raise ConfigError(
            f"{where} holds {payload} data bytes, but its header {shape} announces {expected}: truncated or not IDX"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
