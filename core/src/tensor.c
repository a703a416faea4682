/* tensor.c — shapes and dtype conversion on the host.
 * Conversions round to nearest even; NaN stays NaN (quiet, sign kept), overflow becomes ±inf,
 * fp16 subnormals are produced and read exactly — the IEEE behaviour the wire format promises. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "orthod/tensor.h"
#include "orthod_internal.h"

/* ---- shapes -------------------------------------------------------------------------------- */

orthod_err_t orthod_shape_init(orthod_shape_t *shape, int ndim, const int64_t *dims) {
  if (shape == NULL || (dims == NULL && ndim > 0))
    return orthod__fail(ORTHOD_E_INVAL, "shape: NULL argument");
  memset(shape, 0, sizeof *shape);
  if (ndim < 1 || ndim > ORTHOD_MAX_DIMS)
    return orthod__fail(ORTHOD_E_SHAPE, "shape has %d dims; 1 to %d are supported", ndim,
                        ORTHOD_MAX_DIMS);
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (dims[i] < 1)
      return orthod__fail(ORTHOD_E_SHAPE, "shape dimension %d is %lld; every dimension must be >= 1",
                          i, (long long)dims[i]);
    if (__builtin_mul_overflow(numel, dims[i], &numel))
      return orthod__fail(ORTHOD_E_OVERFLOW, "shape: the product of the dimensions overflows int64");
    shape->dims[i] = dims[i];
  }
  /* Buffers of the shape are addressed in bytes of up to 8-byte elements. */
  if ((uint64_t)numel > SIZE_MAX / 8)
    return orthod__fail(ORTHOD_E_OVERFLOW, "shape: %lld elements cannot be addressed",
                        (long long)numel);
  shape->ndim = ndim;
  return ORTHOD_OK;
}

int64_t orthod_shape_numel(const orthod_shape_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < shape->ndim; i++) n *= shape->dims[i];
  return n;
}

int orthod_shape_equal(const orthod_shape_t *a, const orthod_shape_t *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->dims[i] != b->dims[i]) return 0;
  return 1;
}

char *orthod_shape_str(const orthod_shape_t *shape, char *buf, size_t len) {
  if (len == 0) return buf;
  buf[0] = '\0';
  size_t used = 0;
  for (int i = 0; i < shape->ndim && used < len; i++) {
    int w = snprintf(buf + used, len - used, i ? "x%lld" : "%lld", (long long)shape->dims[i]);
    if (w < 0) break;
    used += (size_t)w;
  }
  return buf;
}

/* ---- dtypes -------------------------------------------------------------------------------- */

size_t orthod_dtype_size(orthod_dtype_t dtype) {
  switch (dtype) {
    case ORTHOD_DTYPE_F32: return 4;
    case ORTHOD_DTYPE_BF16: return 2;
    case ORTHOD_DTYPE_F16: return 2;
  }
  return 0;
}

const char *orthod_dtype_name(orthod_dtype_t dtype) {
  switch (dtype) {
    case ORTHOD_DTYPE_F32: return "fp32";
    case ORTHOD_DTYPE_BF16: return "bf16";
    case ORTHOD_DTYPE_F16: return "fp16";
  }
  return "?";
}

orthod_err_t orthod_dtype_from_name(const char *name, orthod_dtype_t *out) {
  static const struct {
    const char *name;
    orthod_dtype_t dtype;
  } names[] = {{"fp32", ORTHOD_DTYPE_F32},     {"float32", ORTHOD_DTYPE_F32},
               {"f32", ORTHOD_DTYPE_F32},      {"bf16", ORTHOD_DTYPE_BF16},
               {"bfloat16", ORTHOD_DTYPE_BF16}, {"fp16", ORTHOD_DTYPE_F16},
               {"float16", ORTHOD_DTYPE_F16},  {"f16", ORTHOD_DTYPE_F16}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    if (orthod__streq_nocase(name, names[i].name)) {
      *out = names[i].dtype;
      return ORTHOD_OK;
    }
  }
  return orthod__fail(ORTHOD_E_UNKNOWN_NAME, "unknown dtype '%s' (fp32, bf16, fp16)",
                      name ? name : "(null)");
}

static uint32_t f32_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}

static float bits_f32(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

uint16_t orthod_f32_to_bf16(float x) {
  uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
  /* Add half an ulp minus one, plus the lsb of the kept part: ties go to even; a carry into the
   * exponent is the correct rounding, up to infinity on overflow. */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float orthod_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

float orthod_round_bf16(float x) { return orthod_bf16_to_f32(orthod_f32_to_bf16(x)); }

uint16_t orthod_f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu)); /* NaN */
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
  if (ax < 0x38800000u) {
    /* Below the smallest normal 2^-14: the subnormal count is |f|·2^24, exact in fp32, then RNE
     * (nearbyintf in the default rounding mode). 1024 carries into the smallest normal. */
    float v = bits_f32(ax) * 16777216.0f;
    return (uint16_t)(sign | (uint16_t)nearbyintf(v));
  }
  uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u);
  return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

float orthod_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    float v = ldexpf((float)mant, -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

orthod_err_t orthod_convert(void *dst, orthod_dtype_t dst_dtype, const void *src,
                            orthod_dtype_t src_dtype, size_t n) {
  if (orthod_dtype_size(dst_dtype) == 0 || orthod_dtype_size(src_dtype) == 0)
    return orthod__fail(ORTHOD_E_DTYPE, "convert: invalid dtype %d -> %d", (int)src_dtype,
                        (int)dst_dtype);
  if (n == 0) return ORTHOD_OK;
  if (dst == NULL || src == NULL) return orthod__fail(ORTHOD_E_INVAL, "convert: NULL buffer");
  if (dst_dtype == src_dtype) {
    memmove(dst, src, n * orthod_dtype_size(dst_dtype));
    return ORTHOD_OK;
  }
  if (dst_dtype == ORTHOD_DTYPE_F32) {
    float *d = dst;
    const uint16_t *s = src;
    if (src_dtype == ORTHOD_DTYPE_BF16)
      for (size_t i = 0; i < n; i++) d[i] = orthod_bf16_to_f32(s[i]);
    else
      for (size_t i = 0; i < n; i++) d[i] = orthod_f16_to_f32(s[i]);
    return ORTHOD_OK;
  }
  if (src_dtype == ORTHOD_DTYPE_F32) {
    uint16_t *d = dst;
    const float *s = src;
    if (dst_dtype == ORTHOD_DTYPE_BF16)
      for (size_t i = 0; i < n; i++) d[i] = orthod_f32_to_bf16(s[i]);
    else
      for (size_t i = 0; i < n; i++) d[i] = orthod_f32_to_f16(s[i]);
    return ORTHOD_OK;
  }
  /* bf16 <-> fp16 through fp32 (exact widening, one rounding). */
  uint16_t *d = dst;
  const uint16_t *s = src;
  for (size_t i = 0; i < n; i++) {
    float w = src_dtype == ORTHOD_DTYPE_BF16 ? orthod_bf16_to_f32(s[i]) : orthod_f16_to_f32(s[i]);
    d[i] = dst_dtype == ORTHOD_DTYPE_BF16 ? orthod_f32_to_bf16(w) : orthod_f32_to_f16(w);
  }
  return ORTHOD_OK;
}
