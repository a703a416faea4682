/* testutil.h — shared helpers for the CUnit suites: seeded data, comparisons that print both
 * values, the backend under test, and a main() runner. */
#ifndef ORTHOD_TESTUTIL_H
#define ORTHOD_TESTUTIL_H

#include <CUnit/Basic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/backend.h"

/* Deterministic generator (xorshift64*), seeded per test so failures reproduce. */
typedef struct {
  uint64_t s;
} tu_rng_t;
void tu_rng_seed(tu_rng_t *r, uint64_t seed);
uint64_t tu_rng_u64(tu_rng_t *r);
double tu_rng_uniform(tu_rng_t *r);          /* [0, 1) */
double tu_rng_normal(tu_rng_t *r);           /* N(0, 1), Box–Muller */
void tu_fill_normal(tu_rng_t *r, float *x, size_t n);
/* Integers in [lo, hi] (inclusive), as torch.randint(lo, hi + 1). */
void tu_fill_int(tu_rng_t *r, float *x, size_t n, int lo, int hi);

/* The backend under test: ORTHOD_TEST_BACKEND=cpu (default). Created once, destroyed at exit. */
orthod_backend_t *tu_backend(void);

/* Device buffer from host data / host copy of a device buffer (test helpers; abort on failure). */
float *tu_dev_from(const float *host, size_t n);
float *tu_dev_zeros(size_t n);
void tu_to_host(float *host, const float *dev, size_t n);
void tu_dev_free(float *dev);

/* Elementwise |x - y| <= atol + rtol |y| over n values; prints the worst offender (index, both
 * values, the bound) with the label and returns false when violated. */
bool tu_allclose(const char *label, const float *x, const float *y, size_t n, double atol,
                 double rtol);
bool tu_allclose_d(const char *label, const float *x, const double *y, size_t n, double atol,
                   double rtol);
/* Bitwise equality of floats (±0 equal); prints the first difference. */
bool tu_bitequal(const char *label, const float *x, const float *y, size_t n);

#define TU_CHECK(expr) CU_ASSERT_TRUE(expr)
/* Assert an orthod call returned the expected code; prints code names and the detail. */
#define TU_EXPECT_ERR(expected, call)                                                     \
  do {                                                                                    \
    orthod_err_t tu__got = (call);                                                        \
    if (tu__got != (expected))                                                            \
      fprintf(stderr, "\n  %s:%d: %s returned %s (%s), expected %s\n", __FILE__, __LINE__, \
              #call, orthod_err_name(tu__got), orthod_error_detail(),                     \
              orthod_err_name(expected));                                                 \
    CU_ASSERT_EQUAL(tu__got, (expected));                                                 \
  } while (0)
#define TU_OK(call) TU_EXPECT_ERR(ORTHOD_OK, call)
/* Assert the thread's error detail contains a substring. */
#define TU_EXPECT_DETAIL(substr)                                                          \
  do {                                                                                    \
    if (strstr(orthod_error_detail(), (substr)) == NULL)                                  \
      fprintf(stderr, "\n  %s:%d: detail \"%s\" lacks \"%s\"\n", __FILE__, __LINE__,      \
              orthod_error_detail(), (substr));                                           \
    CU_ASSERT_PTR_NOT_NULL(strstr(orthod_error_detail(), (substr)));                      \
  } while (0)

typedef struct {
  const char *name;
  void (*fn)(void);
} tu_test_t;

/* Run one suite of tests (NULL-terminated array); returns the process exit code. */
int tu_run_suite(const char *suite, const tu_test_t *tests);

#endif
