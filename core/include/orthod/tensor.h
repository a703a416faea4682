/* orthod/tensor.h — dtypes, shapes and host-side dtype conversion.
 * Weights and optimizer state are fp32; the wire may carry fp32, bf16 or fp16, converted with
 * round-to-nearest-even (NaN stays NaN, overflow rounds to infinity, as IEEE does). */
#ifndef ORTHOD_TENSOR_H
#define ORTHOD_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "orthod/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  ORTHOD_DTYPE_F32 = 0,
  ORTHOD_DTYPE_BF16 = 1,
  ORTHOD_DTYPE_F16 = 2,
} orthod_dtype_t;

#define ORTHOD_MAX_DIMS 8

/* A validated shape: 1..ORTHOD_MAX_DIMS dims, each >= 1, element count fits in int64 and size_t
 * bytes of fp64 (so any buffer of it can be addressed). */
typedef struct {
  int ndim;
  int64_t dims[ORTHOD_MAX_DIMS];
} orthod_shape_t;

/* Build a shape from ndim dims; E_SHAPE for rank or zero/negative dims, E_OVERFLOW for products
 * that overflow. */
ORTHOD_API orthod_err_t orthod_shape_init(orthod_shape_t *shape, int ndim, const int64_t *dims);

/* Element count of a shape built by orthod_shape_init. */
ORTHOD_API int64_t orthod_shape_numel(const orthod_shape_t *shape);

/* True when both shapes have the same rank and dims. */
ORTHOD_API int orthod_shape_equal(const orthod_shape_t *a, const orthod_shape_t *b);

/* Write "33x65" into buf (always NUL-terminated); returns buf. */
ORTHOD_API char *orthod_shape_str(const orthod_shape_t *shape, char *buf, size_t len);

/* Bytes per element (4, 2, 2); 0 for an invalid dtype. */
ORTHOD_API size_t orthod_dtype_size(orthod_dtype_t dtype);

/* "fp32", "bf16", "fp16"; "?" for an invalid dtype. */
ORTHOD_API const char *orthod_dtype_name(orthod_dtype_t dtype);

/* Parse "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16" (case-insensitive). */
ORTHOD_API orthod_err_t orthod_dtype_from_name(const char *name, orthod_dtype_t *out);

/* Scalar conversions, round-to-nearest-even. */
ORTHOD_API uint16_t orthod_f32_to_bf16(float x);
ORTHOD_API float orthod_bf16_to_f32(uint16_t h);
ORTHOD_API uint16_t orthod_f32_to_f16(float x);
ORTHOD_API float orthod_f16_to_f32(uint16_t h);

/* x rounded to the nearest bf16 value and widened back to fp32 (the "bf16(x)" of the spec). */
ORTHOD_API float orthod_round_bf16(float x);

/* Convert n elements between any two dtypes on the host (src and dst must not overlap unless
 * the dtypes are equal). */
ORTHOD_API orthod_err_t orthod_convert(void *dst, orthod_dtype_t dst_dtype, const void *src,
                                       orthod_dtype_t src_dtype, size_t n);

#ifdef __cplusplus
}
#endif
#endif
