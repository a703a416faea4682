/* backend_impl.h — the backend function table (private to core and its backends).
 * The public wrappers in backend.c validate arguments, do the memory accounting and the scratch
 * arena, then call through this table. A backend fills it with designated initialisers. */
#ifndef ORTHOD_BACKEND_IMPL_H
#define ORTHOD_BACKEND_IMPL_H

#include "orthod/backend.h"
#include "orthod_internal.h"

typedef struct orthod_backend_i {
  const char *name;
  void (*destroy)(void *ctx);
  orthod_err_t (*alloc)(void *ctx, size_t bytes, void **out);
  void (*free)(void *ctx, void *p);
  orthod_err_t (*upload)(void *ctx, float *dst, const void *src, orthod_dtype_t dt, size_t n);
  orthod_err_t (*download)(void *ctx, void *dst, orthod_dtype_t dt, const float *src, size_t n);
  orthod_err_t (*sync)(void *ctx);
  orthod_err_t (*gemm)(void *ctx, const orthod_gemm_t *g);
  orthod_err_t (*syrk)(void *ctx, const orthod_syrk_t *s);
  orthod_err_t (*copy)(void *ctx, float *dst, const float *src, size_t n);
  orthod_err_t (*zero)(void *ctx, float *x, size_t n);
  orthod_err_t (*axpy)(void *ctx, float *y, float a, const float *x, size_t n);
  orthod_err_t (*scale)(void *ctx, float *x, float s, size_t n);
  orthod_err_t (*lerp)(void *ctx, float *out, const float *s, const float *e, float w, size_t n);
  orthod_err_t (*round_bf16)(void *ctx, float *x, size_t n);
  orthod_err_t (*transpose)(void *ctx, float *out, const float *in, int64_t batch, int64_t rows,
                            int64_t cols);
  orthod_err_t (*normalize)(void *ctx, float *x, int64_t batch, size_t n, float eps,
                            bool in_double);
  orthod_err_t (*norm)(void *ctx, float *out, const float *x, int64_t batch, size_t n);
  orthod_err_t (*dot)(void *ctx, float *out, const float *x, const float *y, size_t n);
  orthod_err_t (*scale_by)(void *ctx, float *x, const float *s, size_t n);
  orthod_err_t (*count_nonfinite)(void *ctx, const float *x, size_t n, size_t *count);
  orthod_err_t (*hyperball)(void *ctx, float *x, size_t n, float radius, float eps);
  orthod_err_t (*radial_brake)(void *ctx, float *p, size_t n, const float *n0, float outward,
                               float inward, float eps);
  orthod_err_t (*relative_update)(void *ctx, float *u, const float *p, size_t n, float eps);
  orthod_err_t (*adamuon)(void *ctx, float *o, float *v, size_t n, float w, float eps);
  orthod_err_t (*normuon)(void *ctx, float *o, float *v, int64_t m, int64_t n, bool per_row,
                          float w, float eps);
  orthod_err_t (*namo_moment)(void *ctx, float *v, const float *g, size_t n, float w);
  orthod_err_t (*namo_scale)(void *ctx, float *o, const float *u, const float *v, size_t n,
                             float eps);
  orthod_err_t (*adamw)(void *ctx, float *p, const float *g, float *m, float *v, float *vmax,
                        size_t n, const orthod_adamw_args_t *args);
  orthod_err_t (*polar_svd)(void *ctx, float *out, float *nuclear, const float *a, int64_t m,
                            int64_t n);
  orthod_err_t (*eigh)(void *ctx, float *w, float *q, const float *a, int64_t n);
  orthod_err_t (*read)(void *ctx, float *host, const float *src, size_t n);
} orthod_backend_i;

/* Wrap a filled table and its context into a backend (takes ownership of ctx: on failure the
 * table's destroy is called). Used by backend constructors. */
orthod_err_t orthod__backend_new(const orthod_backend_i *iface, void *ctx, orthod_backend_t **out);

#endif
