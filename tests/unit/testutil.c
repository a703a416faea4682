/* testutil.c — see testutil.h. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tu_rng_seed(tu_rng_t *r, uint64_t seed) { r->s = seed * 0x9E3779B97F4A7C15ull + 1; }

uint64_t tu_rng_u64(tu_rng_t *r) {
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * 0x2545F4914F6CDD1Dull;
}

double tu_rng_uniform(tu_rng_t *r) { return (double)(tu_rng_u64(r) >> 11) * 0x1.0p-53; }

double tu_rng_normal(tu_rng_t *r) {
  double u1 = tu_rng_uniform(r), u2 = tu_rng_uniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void tu_fill_normal(tu_rng_t *r, float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = (float)tu_rng_normal(r);
}

void tu_fill_int(tu_rng_t *r, float *x, size_t n, int lo, int hi) {
  uint64_t span = (uint64_t)(hi - lo + 1);
  for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (int)(tu_rng_u64(r) % span));
}

static orthod_backend_t *the_backend;

static void destroy_backend(void) {
  orthod_backend_destroy(the_backend);
  the_backend = NULL;
}

orthod_backend_t *tu_backend(void) {
  if (the_backend == NULL) {
    const char *which = getenv("ORTHOD_TEST_BACKEND");
    if (which != NULL && strcmp(which, "cpu") != 0) {
      fprintf(stderr, "testutil: backend '%s' is not available in this build\n", which);
      exit(77);
    }
    orthod_backend_opts_t opts = {0};
    if (orthod_backend_create_cpu(&opts, &the_backend) != ORTHOD_OK) {
      fprintf(stderr, "testutil: cannot create the cpu backend: %s\n", orthod_error_detail());
      abort();
    }
    atexit(destroy_backend);
  }
  return the_backend;
}

float *tu_dev_zeros(size_t n) {
  float *d = NULL;
  if (orthod_backend_alloc(tu_backend(), n, &d) != ORTHOD_OK) abort();
  if (orthod_backend_zero(tu_backend(), d, n) != ORTHOD_OK) abort();
  return d;
}

float *tu_dev_from(const float *host, size_t n) {
  float *d = NULL;
  if (orthod_backend_alloc(tu_backend(), n, &d) != ORTHOD_OK) abort();
  if (orthod_backend_upload(tu_backend(), d, host, ORTHOD_DTYPE_F32, n) != ORTHOD_OK) abort();
  if (orthod_backend_sync(tu_backend()) != ORTHOD_OK) abort();
  return d;
}

void tu_to_host(float *host, const float *dev, size_t n) {
  if (orthod_backend_read(tu_backend(), host, dev, n) != ORTHOD_OK) abort();
}

void tu_dev_free(float *dev) { orthod_backend_free(tu_backend(), dev); }

static bool close_generic(const char *label, const float *x, const float *yf, const double *yd,
                          size_t n, double atol, double rtol) {
  size_t worst = 0, bad = 0;
  double worst_excess = 0.0;
  for (size_t i = 0; i < n; i++) {
    double y = yd ? yd[i] : (double)yf[i];
    double diff = fabs((double)x[i] - y);
    double bound = atol + rtol * fabs(y);
    bool nan_ok = isnan(x[i]) && isnan(y);
    if (!nan_ok && !(diff <= bound)) {
      double excess = isnan(diff) ? INFINITY : diff - bound;
      if (bad == 0 || excess > worst_excess) {
        worst = i;
        worst_excess = excess;
      }
      bad++;
    }
  }
  if (bad != 0) {
    double y = yd ? yd[worst] : (double)yf[worst];
    fprintf(stderr,
            "\n  %s: %zu of %zu values outside atol=%g rtol=%g; worst [%zu]: got %.9g want %.9g "
            "(|diff| %.3g)\n",
            label, bad, n, atol, rtol, worst, (double)x[worst], y, fabs((double)x[worst] - y));
  }
  return bad == 0;
}

bool tu_allclose(const char *label, const float *x, const float *y, size_t n, double atol,
                 double rtol) {
  return close_generic(label, x, y, NULL, n, atol, rtol);
}

bool tu_allclose_d(const char *label, const float *x, const double *y, size_t n, double atol,
                   double rtol) {
  return close_generic(label, x, NULL, y, n, atol, rtol);
}

bool tu_bitequal(const char *label, const float *x, const float *y, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (!(x[i] == y[i]) && !(isnan(x[i]) && isnan(y[i]))) {
      fprintf(stderr, "\n  %s: first difference at [%zu]: got %.9g (%a) want %.9g (%a)\n", label,
              i, (double)x[i], (double)x[i], (double)y[i], (double)y[i]);
      return false;
    }
  }
  return true;
}

int tu_run_suite(const char *suite, const tu_test_t *tests) {
  if (CU_initialize_registry() != CUE_SUCCESS) return 2;
  CU_pSuite s = CU_add_suite(suite, NULL, NULL);
  for (const tu_test_t *t = tests; t->name != NULL; t++) CU_add_test(s, t->name, t->fn);
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  CU_cleanup_registry();
  return failed == 0 ? 0 : 1;
}
