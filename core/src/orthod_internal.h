/* orthod_internal.h — helpers shared by the core's .c files (not installed). */
#ifndef ORTHOD_INTERNAL_H
#define ORTHOD_INTERNAL_H

#include <stdio.h>
#include <stdlib.h>

#include "orthod/error.h"
#include "orthod/export.h"
#include "orthod/log.h"

/* Record a formatted detail for the calling thread and return err, so that failures read
 * `return orthod__fail(ORTHOD_E_SHAPE, "split_rows sum %lld != rows %lld", ...);`. */
orthod_err_t orthod__fail(orthod_err_t err, const char *fmt, ...) ORTHOD_PRINTF(2, 3);

/* Broken invariant: print file:line and abort (never used for bad input). */
#define ORTHOD_ASSERT(cond)                                                                \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "orthod: assertion failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                             \
    }                                                                                      \
  } while (0)

/* Propagate a non-OK code. */
#define ORTHOD_TRY(expr)                                                                   \
  do {                                                                                     \
    orthod_err_t orthod__e = (expr);                                                       \
    if (orthod__e != ORTHOD_OK) return orthod__e;                                          \
  } while (0)

/* Case-insensitive string equality (ASCII). */
int orthod__streq_nocase(const char *a, const char *b);

#endif
