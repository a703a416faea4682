/* optimizer_impl.h — internals of optimizer.c shared with its unit tests (not installed).
 * The spec's base class takes any `scaled_orthogonalize_fn`; the public API only offers the
 * algorithms' own orthogonalizers, so the base-class tests (identity, custom split functions,
 * one-sided PolarGrad as orthogonalizer) step through orthod__optim_step_with. */
#ifndef ORTHOD_OPTIMIZER_IMPL_H
#define ORTHOD_OPTIMIZER_IMPL_H

#include "orthod/optimizer.h"

/* An orthogonalizer: out = f(u) for the m x n matrix view of opt's parameter (device buffers of
 * m·n floats; out never aliases u). Temporaries must come from the backend's scratch arena. */
typedef orthod_err_t (*orthod__orth_fn)(void *ctx, orthod_optim_t *opt, float *out, const float *u);

/* orthod_optim_step with fn in place of the algorithm's orthogonalizer (spec 1.3 step 4);
 * everything else (decay, momentum, hooks, Spel's re-projection) is the algorithm's.
 * E_INVAL for adamw and adaptive_muon, which have no replaceable orthogonalizer. */
orthod_err_t orthod__optim_step_with(orthod_optim_t *opt, float *weights, float *grad, double lr,
                                     orthod__orth_fn fn, void *ctx);

/* Weight decay of spec 2 on n elements: p (decoupled, independent, palm) or g (l2) in place;
 * λ == 0 does nothing. E_INVAL for an invalid method. */
orthod_err_t orthod__weight_decay(orthod_backend_t *be, orthod_wd_method_t method, float *p,
                                  float *g, size_t n, double lr, double wd);

/* The matrix view (dim0, product of the rest) the optimizer works on. */
void orthod__optim_view(const orthod_optim_t *opt, int64_t *m, int64_t *n);

#endif
