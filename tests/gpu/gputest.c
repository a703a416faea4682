/* gputest.c — see gputest.h. */
#include "gputest.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/error.h"
#include "orthod/tensor.h"

static orthod_backend_t *g_dut, *g_ref;
static bool g_self;

orthod_backend_t *gt_dut(void) { return g_dut; }
orthod_backend_t *gt_ref(void) { return g_ref; }
bool gt_selfcheck(void) { return g_self; }

bool gt_verbose(void) {
  const char *v = getenv("ORTHOD_GPU_TEST_VERBOSE");
  return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

static int create_dut(const char *suite) {
  const char *dut = getenv("ORTHOD_GPU_TEST_DUT");
  orthod_backend_opts_t opts = {0};
  if (dut != NULL && strcmp(dut, "cpu") == 0) {
    g_self = true;
    if (orthod_backend_create_cpu(&opts, &g_dut) != ORTHOD_OK) {
      fprintf(stderr, "%s: cannot create the cpu backend: %s\n", suite, orthod_error_detail());
      return 1;
    }
    printf("%s: self-check: the device under test is a second CPU backend\n", suite);
    return 0;
  }
  const char *dev = getenv("ORTHOD_TEST_CUDA_DEVICE");
  opts.device = dev != NULL ? atoi(dev) : 0;
  if (orthod_backend_cuda_device_count() == 0) {
    orthod_backend_cuda_describe(opts.device, NULL, 0);
    printf("%s: skipped: %s\n", suite, orthod_error_detail());
    return 77;
  }
  orthod_err_t e = orthod_backend_create_cuda(&opts, &g_dut);
  if (e != ORTHOD_OK) {
    const char *d = orthod_error_detail();
    /* Only the absence of a device skips; a device this build cannot drive is a failure. */
    if (e == ORTHOD_E_UNSUPPORTED &&
        (strstr(d, "no CUDA device") != NULL || strstr(d, "has no CUDA backend") != NULL)) {
      printf("%s: skipped: %s\n", suite, d);
      return 77;
    }
    fprintf(stderr, "%s: cannot create the cuda backend: %s: %s\n", suite, orthod_err_name(e), d);
    return 1;
  }
  char desc[256];
  if (orthod_backend_cuda_describe(opts.device, desc, sizeof desc) == ORTHOD_OK)
    printf("%s: device under test: %s\n", suite, desc);
  return 0;
}

int gt_main(const char *suite, const tu_test_t *tests) {
  int rc = create_dut(suite);
  if (rc != 0) return rc;
  orthod_backend_opts_t opts = {0};
  if (orthod_backend_create_cpu(&opts, &g_ref) != ORTHOD_OK) {
    fprintf(stderr, "%s: cannot create the cpu backend: %s\n", suite, orthod_error_detail());
    orthod_backend_destroy(g_dut);
    return 1;
  }
  rc = tu_run_suite(suite, tests);
  if (orthod_backend_sync(g_dut) != ORTHOD_OK) {
    fprintf(stderr, "%s: final sync failed: %s\n", suite, orthod_error_detail());
    rc = 1;
  }
  /* A buffer a test forgot to free is reported by orthod_backend_destroy (a warning naming the
   * count and bytes of live allocations). */
  orthod_backend_destroy(g_dut);
  orthod_backend_destroy(g_ref);
  g_dut = g_ref = NULL;
  return rc;
}

float *gt_put(orthod_backend_t *be, const float *host, size_t n) {
  float *d = NULL;
  if (orthod_backend_alloc(be, n, &d) != ORTHOD_OK ||
      orthod_backend_upload(be, d, host, ORTHOD_DTYPE_F32, n) != ORTHOD_OK ||
      orthod_backend_sync(be) != ORTHOD_OK) {
    fprintf(stderr, "gt_put(%s, %zu floats): %s\n", orthod_backend_name(be), n, orthod_error_detail());
    abort();
  }
  return d;
}

void gt_get(orthod_backend_t *be, float *host, const float *dev, size_t n) {
  if (orthod_backend_read(be, host, dev, n) != ORTHOD_OK) {
    fprintf(stderr, "gt_get(%s, %zu floats): %s\n", orthod_backend_name(be), n, orthod_error_detail());
    abort();
  }
}

void gt_free(orthod_backend_t *be, float *dev) { orthod_backend_free(be, dev); }

gt_pair_t gt_pair(const float *host, size_t n) {
  gt_pair_t p = {.d = gt_put(g_dut, host, n), .r = gt_put(g_ref, host, n), .n = n};
  return p;
}

void gt_pair_free(gt_pair_t *p) {
  gt_free(g_dut, p->d);
  gt_free(g_ref, p->r);
  p->d = p->r = NULL;
}

void gt_pair_get(const gt_pair_t *p, float **dut, float **ref) {
  *dut = malloc(p->n * sizeof **dut);
  *ref = malloc(p->n * sizeof **ref);
  if (*dut == NULL || *ref == NULL) abort();
  gt_get(g_dut, *dut, p->d, p->n);
  gt_get(g_ref, *ref, p->r, p->n);
}

float *gt_normal(uint64_t seed, size_t n) {
  tu_rng_t r;
  tu_rng_seed(&r, seed);
  float *x = malloc((n ? n : 1) * sizeof *x);
  if (x == NULL) abort();
  tu_fill_normal(&r, x, n);
  return x;
}

bool gt_same(const char *label, const float *x, const float *y, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (memcmp(&x[i], &y[i], sizeof x[i]) == 0 || (isnan(x[i]) && isnan(y[i]))) continue;
    uint32_t a, b;
    memcpy(&a, &x[i], sizeof a);
    memcpy(&b, &y[i], sizeof b);
    fprintf(stderr, "\n  %s: [%zu] dut %.9g (0x%08x) ref %.9g (0x%08x)\n", label, i, (double)x[i],
            (unsigned)a, (double)y[i], (unsigned)b);
    return false;
  }
  return true;
}

bool gt_rel_close(const char *label, const float *x, const float *ref, size_t n, double bound) {
  double num = 0.0, den = 0.0, worst = -1.0;
  size_t wi = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)x[i] - (double)ref[i];
    num += d * d;
    den += (double)ref[i] * (double)ref[i];
    if (!(fabs(d) <= worst)) {
      worst = fabs(d);
      wi = i;
    }
  }
  double rel = den > 0.0 ? sqrt(num / den) : sqrt(num);
  if (gt_verbose()) printf("\n  measured %-70s %.3e (bound %.1e)", label, rel, bound);
  if (rel <= bound) return true; /* NaN fails here */
  fprintf(stderr, "\n  %s: relative error %.3e > %.1e (worst [%zu]: dut %.9g ref %.9g)\n", label, rel,
          bound, wi, n ? (double)x[wi] : 0.0, n ? (double)ref[wi] : 0.0);
  return false;
}

bool gt_is_bf16(const char *label, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (isnan(x[i]) || orthod_round_bf16(x[i]) == x[i]) continue;
    fprintf(stderr, "\n  %s: [%zu] = %a is not a bf16 value\n", label, i, (double)x[i]);
    return false;
  }
  return true;
}
