/* orthod/newton_schulz.h — Newton–Schulz orthogonalization (spec section 3), on any backend.
 * Input (batch x rows x cols, fp32, row-major, device memory) → approximately U Vᵀ per slice. */
#ifndef ORTHOD_NEWTON_SCHULZ_H
#define ORTHOD_NEWTON_SCHULZ_H

#include <stdbool.h>
#include <stdint.h>

#include "orthod/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  ORTHOD_COEF_SIMPLE = 0,
  ORTHOD_COEF_QUINTIC,
  ORTHOD_COEF_POLAR_EXPRESS,
  ORTHOD_COEF_CANS,
  ORTHOD_COEF_AOL,
  ORTHOD_COEF_DEEPSEEKV4,
  ORTHOD_COEF_CUBIC5,
  ORTHOD_COEF_CUSTOM,
  ORTHOD_COEF_COUNT
} orthod_coef_type_t;

typedef enum {
  ORTHOD_ITER_CYCLE = 0,       /* tuple i mod L */
  ORTHOD_ITER_REPEAT_LAST = 1, /* tuple min(i, L-1) */
} orthod_iter_mode_t;

/* One polynomial step p(σ) = aσ + bσ³ + cσ⁵; c == 0 selects the cubic one-GEMM path. */
typedef struct {
  float a, b, c;
} orthod_ns_coef_t;

#define ORTHOD_NS_MAX_CUSTOM 32

typedef struct {
  int steps;                      /* >= 0; exactly 5 for cubic5 */
  orthod_coef_type_t coef_type;   /* default quintic */
  int n_custom;                   /* tuples in custom[] when coef_type == CUSTOM */
  orthod_ns_coef_t custom[ORTHOD_NS_MAX_CUSTOM];
  float eps;                      /* norm floor, default 1e-15 */
  int transpose;                  /* -1 auto (rows > cols), 0 never, 1 always */
  bool normalize_in_double;       /* fp64 norm accumulation, eps not applied */
  bool use_syrk;                  /* symmetric products through SYRK (CPU: any precision) */
  orthod_precision_t precision;   /* default highest */
} orthod_ns_opts_t;

/* Defaults of newton_schulz(): 5 quintic steps, eps 1e-15, auto transpose, highest. */
ORTHOD_API void orthod_ns_opts_default(orthod_ns_opts_t *opts);

/* Built-in set: tuples, count and iteration mode. E_INVAL for CUSTOM or an invalid type. */
ORTHOD_API orthod_err_t orthod_ns_coefficient_set(orthod_coef_type_t type,
                                                  const orthod_ns_coef_t **tuples, int *count,
                                                  orthod_iter_mode_t *mode);

/* The tuple used at 0-based iteration i under opts (validates like orthod_ns_validate). */
ORTHOD_API orthod_err_t orthod_ns_coefficient_at(const orthod_ns_opts_t *opts, int i,
                                                 orthod_ns_coef_t *out);

/* Check opts: E_UNKNOWN_NAME bad type, E_INVAL custom without tuples or a bad eps/transpose,
 * E_STEPS negative steps or cubic5 with steps != 5. The detail string carries the spec's text. */
ORTHOD_API orthod_err_t orthod_ns_validate(const orthod_ns_opts_t *opts);

/* Name ↔ type ("quintic", "polar_express", ..., case-insensitive). */
ORTHOD_API const char *orthod_coef_type_name(orthod_coef_type_t type);
ORTHOD_API orthod_err_t orthod_coef_type_from_name(const char *name, orthod_coef_type_t *out);
ORTHOD_API const char *orthod_precision_name(orthod_precision_t p);
ORTHOD_API orthod_err_t orthod_precision_from_name(const char *name, orthod_precision_t *out);

/* Orthogonalize batch slices of rows x cols from x into out (fp32 device buffers; out may equal
 * x). Temporaries come from the backend's scratch and are released before returning. */
ORTHOD_API orthod_err_t orthod_newton_schulz(orthod_backend_t *be, float *out, const float *x,
                                             int64_t batch, int64_t rows, int64_t cols,
                                             const orthod_ns_opts_t *opts);

/* One step X <- a·X + (b·A + c·A²)·X with A = X Xᵀ (r x r), in place on normalised X (batch x
 * r x c): the building block above, exposed for tests (spec 7.2 TestBatchedNewtonSchulzStep).
 * Any r and c are accepted and X is never transposed; r <= c (wide) is the cheap orientation. */
ORTHOD_API orthod_err_t orthod_ns_step(orthod_backend_t *be, float *x, int64_t batch, int64_t r,
                                       int64_t c, orthod_ns_coef_t coef, bool use_syrk,
                                       orthod_precision_t precision);

/* Floating-point operation count of `steps` iterations on one r x c wide matrix as the
 * benchmark counts them: 2·(2r²c + r³) per step. */
ORTHOD_API double orthod_ns_flops(int64_t rows, int64_t cols, int steps);

/* Spectral utilities of spec 5.7 (polar_express, 8 steps, ambient precision), for 2-D x:
 * clip singular values to [lo, hi]; cap them at beta. out may not alias x. */
ORTHOD_API orthod_err_t orthod_spectral_clip(orthod_backend_t *be, float *out, const float *x,
                                             int64_t rows, int64_t cols, float lo, float hi,
                                             orthod_precision_t precision);
ORTHOD_API orthod_err_t orthod_spectral_hardcap(orthod_backend_t *be, float *out, const float *x,
                                                int64_t rows, int64_t cols, float beta,
                                                orthod_precision_t precision);

#ifdef __cplusplus
}
#endif
#endif
