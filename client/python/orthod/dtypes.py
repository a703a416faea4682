"""Wire dtypes and their conversions, bit-exact with the daemon.

Tensor data travels as little-endian fp32, bf16 or fp16 (``orthod.v1.DType``). The daemon keeps
every weight in fp32 and converts with round-to-nearest-even; this module does the same in NumPy
so that a value the client rounds equals, bit for bit, the value the daemon would produce:

* fp32 -> bf16: add ``0x7FFF`` plus the lowest kept bit to the fp32 bit pattern and keep the high
  16 bits (ties to even; a carry into the exponent is the correct rounding, up to infinity).
  NaN keeps its sign and top payload bits and becomes quiet (``| 0x0040``).
* fp32 -> fp16: IEEE round-to-nearest-even (NumPy's ``astype(float16)``), including subnormals
  and overflow to infinity at 65520; NaN becomes ``sign | 0x7E00 | payload >> 13``.
* bf16/fp16 -> fp32: exact widening.

Dtypes are named by strings: ``"f32"``, ``"bf16"``, ``"f16"`` (aliases ``"float32"``,
``"bfloat16"``, ``"float16"``, ``"fp32"``, ``"fp16"`` are accepted).
"""

from typing import Union

import numpy as np

__all__ = ["DTYPES", "wire_code", "dtype_name", "itemsize", "encode", "decode",
           "f32_to_bf16_bits", "bf16_bits_to_f32", "f32_to_f16_bits", "f16_bits_to_f32",
           "round_bf16", "round_f16", "round_to"]

# Names -> orthod.v1.DType values (DTYPE_F32 = 1, DTYPE_BF16 = 2, DTYPE_F16 = 3).
DTYPES = {"f32": 1, "bf16": 2, "f16": 3}
_ALIASES = {"float32": "f32", "fp32": "f32", "bfloat16": "bf16", "float16": "f16",
            "fp16": "f16", "half": "f16"}
_NAMES = {v: k for k, v in DTYPES.items()}
_SIZES = {1: 4, 2: 2, 3: 2}

DTypeLike = Union[str, int, None]


def wire_code(dtype: DTypeLike, default: str = "f32") -> int:
    """The ``orthod.v1.DType`` number of a dtype name (``None`` -> ``default``).

    Raises ValueError for anything else than f32, bf16, f16 (or their aliases, or the numbers
    1, 2, 3)."""
    if dtype is None:
        dtype = default
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        if int(dtype) in _NAMES:
            return int(dtype)
        raise ValueError("unknown wire dtype %r: expected 1 (f32), 2 (bf16) or 3 (f16)" % dtype)
    if isinstance(dtype, str):
        key = _ALIASES.get(dtype.lower(), dtype.lower())
        if key in DTYPES:
            return DTYPES[key]
    raise ValueError("unknown wire dtype %r: expected 'f32', 'bf16' or 'f16'" % (dtype,))


def dtype_name(code: int) -> str:
    """``"f32"``, ``"bf16"`` or ``"f16"`` for a DType number (0, unspecified, counts as f32)."""
    if code == 0:
        return "f32"
    try:
        return _NAMES[code]
    except KeyError:
        raise ValueError("unknown DType %d" % code) from None


def itemsize(code: int) -> int:
    """Bytes per element of a DType number (0 counts as f32)."""
    return _SIZES[code or 1]


def _as_f32(values) -> np.ndarray:
    """A flat, C-contiguous float32 view or copy (float64 is rounded to nearest, like a C cast)."""
    return np.ascontiguousarray(values, dtype=np.float32).reshape(-1)


def f32_to_bf16_bits(values) -> np.ndarray:
    """fp32 values -> bfloat16 bit patterns (uint16), round-to-nearest-even like the daemon."""
    u = _as_f32(values).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    with np.errstate(over="ignore"):
        r = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    if nan.any():
        r = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x0040), r)
    return r.astype(np.uint16)


def bf16_bits_to_f32(bits) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 values (exact)."""
    b = np.ascontiguousarray(bits, dtype=np.uint16).reshape(-1)
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_f16_bits(values) -> np.ndarray:
    """fp32 values -> IEEE binary16 bit patterns (uint16), round-to-nearest-even like the daemon."""
    f = _as_f32(values)
    with np.errstate(over="ignore", invalid="ignore"):
        h = f.astype(np.float16).view(np.uint16)
    u = f.view(np.uint32)
    ax = u & np.uint32(0x7FFFFFFF)
    nan = ax > np.uint32(0x7F800000)
    if nan.any():
        sign = (u >> np.uint32(16)) & np.uint32(0x8000)
        q = sign | np.uint32(0x7E00) | ((ax >> np.uint32(13)) & np.uint32(0x3FF))
        h = np.where(nan, q.astype(np.uint16), h)
    return h


def f16_bits_to_f32(bits) -> np.ndarray:
    """IEEE binary16 bit patterns (uint16) -> float32 values (exact). NaNs keep sign and payload
    bit for bit (``sign | 0x7F800000 | mant << 13``, as the daemon widens them), whatever the
    CPU's half-precision conversion would do with a signalling NaN."""
    b = np.ascontiguousarray(bits, dtype=np.uint16).reshape(-1)
    out = b.view(np.float16).astype(np.float32)
    nan = (b & np.uint16(0x7C00)) == np.uint16(0x7C00)
    nan &= (b & np.uint16(0x03FF)) != 0
    if nan.any():
        u = b.astype(np.uint32)
        w = ((u & np.uint32(0x8000)) << np.uint32(16)) | np.uint32(0x7F800000) | \
            ((u & np.uint32(0x03FF)) << np.uint32(13))
        out = np.where(nan, w.view(np.float32), out)
    return out


def round_bf16(values) -> np.ndarray:
    """Values rounded to bfloat16 and widened back to float32 (flat)."""
    return bf16_bits_to_f32(f32_to_bf16_bits(values))


def round_f16(values) -> np.ndarray:
    """Values rounded to fp16 and widened back to float32 (flat)."""
    return f16_bits_to_f32(f32_to_f16_bits(values))


def round_to(values, dtype: DTypeLike) -> np.ndarray:
    """Values as they arrive after a trip through wire dtype ``dtype`` (flat float32)."""
    code = wire_code(dtype)
    if code == 2:
        return round_bf16(values)
    if code == 3:
        return round_f16(values)
    return _as_f32(values).copy()


def encode(values, code: int) -> bytes:
    """Flat values -> little-endian bytes of DType ``code`` (1 f32, 2 bf16, 3 f16)."""
    if code == 1 or code == 0:
        return _as_f32(values).astype("<f4", copy=False).tobytes()
    if code == 2:
        return f32_to_bf16_bits(values).astype("<u2", copy=False).tobytes()
    if code == 3:
        return f32_to_f16_bits(values).astype("<u2", copy=False).tobytes()
    raise ValueError("unknown DType %d" % code)


def decode(data: bytes, code: int) -> np.ndarray:
    """Little-endian bytes of DType ``code`` -> flat float32 values (a new, writable array)."""
    size = itemsize(code) if code in (0, 1, 2, 3) else None
    if size is None:
        raise ValueError("unknown DType %d in a reply" % code)
    if len(data) % size:
        raise ValueError("%d bytes are not whole %s elements" % (len(data), dtype_name(code)))
    if code in (0, 1):
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if code == 2:
        return bf16_bits_to_f32(np.frombuffer(data, dtype="<u2"))
    return f16_bits_to_f32(np.frombuffer(data, dtype="<u2"))
