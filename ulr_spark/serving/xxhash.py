"""Spark's ``xxhash64`` in TorchScript, so an exported model hashes ids as Spark did.

XXH64 (Collet's xxHash, 64-bit variant) over the UTF-8 bytes of a string, with Spark's
chaining over several columns: the seed of each column is the hash of the columns before it
(the first seed is 42), and a null column is skipped (the hash passes through unchanged).

The arithmetic is unsigned 64-bit arithmetic done on TorchScript's ``int`` (a signed 64-bit
integer whose addition, multiplication and left shift wrap around modulo 2^64, the same bits
as unsigned arithmetic); a logical right shift is an arithmetic one masked. Compiled with
``torch.jit.script`` a ``str`` iterates over its UTF-8 bytes, which is what XXH64 reads: these
functions are only correct scripted (``tests/test_serving.py`` checks them against values
recorded from Spark), and :func:`scripted` returns them so.
"""

from __future__ import annotations

from typing import Optional

import torch

# Spark's fixed seed of xxhash64 (org.apache.spark.sql.catalyst.expressions.XxHash64).
SPARK_SEED = 42


# XXH64's primes, as the signed int64 with the same bits (TorchScript reads no global value,
# so the functions below spell them out): 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F,
# 0x165667B19E3779F9, 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5.


def _shift_right(x: int, bits: int) -> int:
    """Logical (unsigned) right shift of a 64-bit value, 0 < bits < 64."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _rotate_left(x: int, bits: int) -> int:
    return (x << bits) | _shift_right(x, 64 - bits)


def _round(acc: int, lane: int) -> int:
    return _rotate_left(acc + lane * -4417276706812531889, 31) * -7046029288634856825


def _merge(acc: int, value: int) -> int:
    return (acc ^ _round(0, value)) * -7046029288634856825 + -8796714831421723037


def _read(data: list[int], start: int, width: int) -> int:
    """``width`` bytes little-endian from ``start`` (width 8 wraps into the sign bit)."""
    value = 0
    for i in range(width):
        value = value | (data[start + i] << (8 * i))
    return value


def xxh64(data: list[int], seed: int) -> int:
    """XXH64 of ``data`` (bytes as ints 0..255) with ``seed``, as a signed int64 (Spark's long)."""
    p1, p2, p3, p4, p5 = -7046029288634856825, -4417276706812531889, 1609587929392839161, -8796714831421723037, 2870177450012600261
    length = len(data)
    at = 0
    if length >= 32:
        v1 = seed + p1 + p2
        v2 = seed + p2
        v3 = seed
        v4 = seed - p1
        while at + 32 <= length:
            v1 = _round(v1, _read(data, at, 8))
            v2 = _round(v2, _read(data, at + 8, 8))
            v3 = _round(v3, _read(data, at + 16, 8))
            v4 = _round(v4, _read(data, at + 24, 8))
            at += 32
        h = _rotate_left(v1, 1) + _rotate_left(v2, 7) + _rotate_left(v3, 12) + _rotate_left(v4, 18)
        h = _merge(_merge(_merge(_merge(h, v1), v2), v3), v4)
    else:
        h = seed + p5
    h = h + length
    while at + 8 <= length:
        h = h ^ _round(0, _read(data, at, 8))
        h = _rotate_left(h, 27) * p1 + p4
        at += 8
    if at + 4 <= length:
        h = h ^ (_read(data, at, 4) * p1)
        h = _rotate_left(h, 23) * p2 + p3
        at += 4
    while at < length:
        h = h ^ (data[at] * p5)
        h = _rotate_left(h, 11) * p1
        at += 1
    h = h ^ _shift_right(h, 33)
    h = h * p2
    h = h ^ _shift_right(h, 29)
    h = h * p3
    return h ^ _shift_right(h, 32)


def utf8_bytes(text: str) -> list[int]:
    """The UTF-8 bytes of ``text`` (scripted: a TorchScript str iterates over its bytes)."""
    return [ord(c) for c in text]


def spark_xxhash64(values: list[Optional[str]], trailing_int: Optional[int], seed: int = 42) -> int:
    """Spark's ``xxhash64(values..., [trailing_int])``: strings hashed in turn, each seeded with
    the hash so far (starting at ``seed``, Spark's 42), nulls skipped; then an int column (``F.lit(n)``) hashed
    as its 4 little-endian bytes when ``trailing_int`` is given."""
    h = seed
    for value in values:
        if value is not None:
            h = xxh64(utf8_bytes(value), h)
    if trailing_int is not None:
        n = trailing_int & 0xFFFFFFFF
        h = xxh64([n & 0xFF, (n >> 8) & 0xFF, (n >> 16) & 0xFF, (n >> 24) & 0xFF], h)
    return h


def pmod(value: int, divisor: int) -> int:
    """Spark's ``pmod``: the remainder in [0, divisor) for a positive divisor."""
    return ((value % divisor) + divisor) % divisor


def scripted():
    """:func:`spark_xxhash64` compiled by TorchScript (the only form in which it is right)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        return torch.jit.script(spark_xxhash64)
