/* orthod/error.h — the one error list of the engine.
 * Every public function returns orthod_err_t (0 = ORTHOD_OK) or NULL; a thread-local detail
 * string says exactly what was wrong, so the server can put it in the gRPC status message. */
#ifndef ORTHOD_ERROR_H
#define ORTHOD_ERROR_H

#include "orthod/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, short message). The server maps each code to a gRPC status in one place. */
#define ORTHOD_ERRNO_MAP(X)                                                        \
  X(OK, "success")                                                                 \
  X(E_INVAL, "invalid argument")                                                   \
  X(E_SHAPE, "invalid or mismatched shape")                                        \
  X(E_DTYPE, "unsupported or mismatched dtype")                                    \
  X(E_OVERFLOW, "size overflows")                                                  \
  X(E_UNKNOWN_NAME, "unknown name")                                                \
  X(E_STEPS, "invalid number of Newton-Schulz steps")                              \
  X(E_ZERO_NORM, "norm is zero or below eps")                                      \
  X(E_NONFINITE, "non-finite value")                                               \
  X(E_NOMEM, "out of memory or over the memory limit")                             \
  X(E_NOTFOUND, "not found")                                                       \
  X(E_EXISTS, "already exists with a different specification")                     \
  X(E_NUMERIC, "numerical routine failed")                                         \
  X(E_BACKEND, "backend failure")                                                  \
  X(E_UNSUPPORTED, "not supported by this backend or build")                       \
  X(E_IO, "input/output error")                                                    \
  X(E_CORRUPT, "corrupt or unrecognised data")

typedef enum {
#define ORTHOD__ERR_ENUM(name, msg) ORTHOD_##name,
  ORTHOD_ERRNO_MAP(ORTHOD__ERR_ENUM)
#undef ORTHOD__ERR_ENUM
  ORTHOD_ERR_COUNT
} orthod_err_t;

/* Short, static description of a code ("invalid argument"). Never NULL. */
ORTHOD_API const char *orthod_strerror(orthod_err_t err);

/* Symbolic name of a code ("E_INVAL"). Never NULL. */
ORTHOD_API const char *orthod_err_name(orthod_err_t err);

/* Detail of the last error raised on the calling thread ("shape 3x0: dimension 1 is zero").
 * Valid until the next failing orthod call on this thread; "" when none. */
ORTHOD_API const char *orthod_error_detail(void);

/* Clear the calling thread's detail string. */
ORTHOD_API void orthod_error_clear(void);

#ifdef __cplusplus
}
#endif
#endif
