/* orthod/store.h — the parameter store: name → parameter (shape, config, weights, optimizer
 * state, step counter) on one backend, with memory accounting against a limit.
 * Single owner: the store is not thread-safe; the daemon's loop thread owns it. */
#ifndef ORTHOD_STORE_H
#define ORTHOD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "orthod/backend.h"
#include "orthod/optimizer.h"
#include "orthod/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ORTHOD_NAME_MAX 256

typedef struct orthod_store orthod_store_t;
typedef struct orthod_param orthod_param_t;

/* Create an empty store on be (not owned). memory_limit bytes for weights + state (0 = none).
 * Caller owns *out. */
ORTHOD_API orthod_err_t orthod_store_create(orthod_backend_t *be, size_t memory_limit,
                                            orthod_store_t **out);

/* Destroy the store and every parameter in it (NULL is a no-op). */
ORTHOD_API void orthod_store_destroy(orthod_store_t *store);

/* Register a parameter with zero weights. Idempotent: an identical spec returns the existing
 * parameter with ORTHOD_OK; a different one E_EXISTS. E_INVAL for a bad name (empty, longer
 * than ORTHOD_NAME_MAX-1, control characters), E_NOMEM over the limit. *out is borrowed. */
ORTHOD_API orthod_err_t orthod_store_register(orthod_store_t *store, const char *name,
                                              const orthod_shape_t *shape,
                                              const orthod_optim_config_t *cfg,
                                              orthod_param_t **out);

/* Look up by name; E_NOTFOUND. *out is borrowed. */
ORTHOD_API orthod_err_t orthod_store_get(orthod_store_t *store, const char *name,
                                         orthod_param_t **out);

/* Remove and free a parameter; E_NOTFOUND. */
ORTHOD_API orthod_err_t orthod_store_drop(orthod_store_t *store, const char *name);

/* Number of parameters and the i-th in name order (NULL past the end); borrowed. */
ORTHOD_API size_t orthod_store_count(const orthod_store_t *store);
ORTHOD_API orthod_param_t *orthod_store_at(orthod_store_t *store, size_t i);

/* The backend the store's buffers live on (borrowed). */
ORTHOD_API orthod_backend_t *orthod_store_backend(orthod_store_t *store);

/* Bytes accounted to parameters and the limit. */
ORTHOD_API size_t orthod_store_memory_used(const orthod_store_t *store);
ORTHOD_API size_t orthod_store_memory_limit(const orthod_store_t *store);

/* Parameter accessors (borrowed pointers, valid while the parameter lives). */
ORTHOD_API const char *orthod_param_name(const orthod_param_t *p);
ORTHOD_API const orthod_shape_t *orthod_param_shape(const orthod_param_t *p);
ORTHOD_API const orthod_optim_config_t *orthod_param_config(const orthod_param_t *p);
ORTHOD_API int64_t orthod_param_step(const orthod_param_t *p);
ORTHOD_API size_t orthod_param_bytes(const orthod_param_t *p);
ORTHOD_API float *orthod_param_weights(orthod_param_t *p);      /* device, numel floats */
ORTHOD_API orthod_optim_t *orthod_param_optim(orthod_param_t *p);

/* Write n elements of host data (any dtype) into the weights at element offset `offset`
 * (chunked uploads); E_SHAPE when the range exceeds the tensor. Synchronises. */
ORTHOD_API orthod_err_t orthod_param_write(orthod_param_t *p, size_t offset, const void *src,
                                           orthod_dtype_t dtype, size_t n);

/* Read n weights from `offset` into host memory as dtype. Synchronises. */
ORTHOD_API orthod_err_t orthod_param_read(orthod_param_t *p, size_t offset, void *dst,
                                          orthod_dtype_t dtype, size_t n);

/* One optimizer step from a full host gradient of numel elements in dtype. lr < 0 means the
 * configured lr. E_NONFINITE (nothing applied) if the gradient has a NaN/Inf. */
ORTHOD_API orthod_err_t orthod_param_step_host(orthod_param_t *p, const void *grad,
                                               orthod_dtype_t dtype, double lr);

/* Change hyper-parameters (see orthod_optim_reconfigure). */
ORTHOD_API orthod_err_t orthod_param_reconfigure(orthod_param_t *p,
                                                 const orthod_optim_config_t *cfg);

#ifdef __cplusplus
}
#endif
#endif
