/* bench_ns.c — wall-clock latency of one Newton–Schulz call on the CPU backend (spec §8
 * procedure), with use_syrk on and off, plus the measured cblas_sgemm rate as the roofline.
 * Prints one machine-readable line per measurement; tests/bench/bench_ns.py runs it, times
 * NumPy on the same shapes and prints the comparison table.
 *
 * usage: bench_ns [--reps N] [--warmup N] [--steps N] [--threads N] [--precision P]
 *                 [--coef NAME] [--sgemm N] [--syrk on|off|both] [--unfused] SHAPE...
 *   SHAPE is RxC or BxRxC. --unfused adds the NumPy-style ablation baseline (2-D only).
 *   Output lines (gflops counts 2(2r²c + r³) per step, r <= c):
 *   ns shape=RxC batch=B r=.. c=.. steps=.. precision=.. syrk=0|1 variant=fused|unfused reps=..
 *      median_ms=.. min_ms=.. gflops=..
 *   sgemm n=N reps=.. median_ms=.. min_ms=.. gflops=..                                        */
#define _POSIX_C_SOURCE 199309L
#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "orthod/backend.h"
#include "orthod/newton_schulz.h"

static void usage(void) {
  fprintf(stderr,
          "usage: bench_ns [--reps N] [--warmup N] [--steps N] [--threads N] [--precision P]\n"
          "                [--coef NAME] [--sgemm N] [--syrk on|off|both] [--unfused] SHAPE...\n"
          "  SHAPE: RxC or BxRxC (e.g. 2048x2048, 4x512x2048)\n");
}

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* "RxC" or "BxRxC" */
static int parse_shape(const char *s, int64_t *b, int64_t *r, int64_t *c) {
  long long v[3];
  int n = 0;
  const char *p = s;
  while (n < 3) {
    char *end = NULL;
    v[n] = strtoll(p, &end, 10);
    if (end == p || v[n] < 1 || v[n] > (1LL << 20)) return -1;
    n++;
    if (*end == '\0') break;
    if (*end != 'x') return -1;
    p = end + 1;
  }
  if (n == 2) {
    *b = 1, *r = v[0], *c = v[1];
  } else if (n == 3) {
    *b = v[0], *r = v[1], *c = v[2];
  } else {
    return -1;
  }
  return 0;
}

static void fill_normal(float *x, size_t n, unsigned long long seed) {
  /* xorshift64* + Box–Muller: N(0, 1) inputs as in the spec's benchmark */
  unsigned long long s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i += 2) {
    double u[2];
    for (int k = 0; k < 2; k++) {
      s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
      u[k] = (double)((s * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
    }
    if (u[0] < 1e-300) u[0] = 1e-300;
    double rad = sqrt(-2.0 * log(u[0]));
    x[i] = (float)(rad * cos(6.283185307179586 * u[1]));
    if (i + 1 < n) x[i + 1] = (float)(rad * sin(6.283185307179586 * u[1]));
  }
}

/* Ablation baseline: the same math as NumPy runs it (separate GEMMs, elementwise passes,
 * fresh malloc'd temporaries every step) through the same backend and BLAS. Only for
 * measuring what the fused epilogues and workspace reuse of orthod_newton_schulz buy. */
static orthod_err_t unfused_ns(orthod_backend_t *be, float *out, const float *x, int64_t rows,
                               int64_t cols, const orthod_ns_opts_t *o) {
  bool t = rows > cols;
  int64_t r = t ? cols : rows, c = t ? rows : cols;
  size_t n = (size_t)(r * c), rr = (size_t)(r * r);
  float *X = malloc(n * sizeof *X);
  if (X == NULL) return ORTHOD_E_NOMEM;
  orthod_err_t e = t ? orthod_backend_transpose(be, X, x, 1, rows, cols) : orthod_backend_copy(be, X, x, n);
  if (e == ORTHOD_OK) e = orthod_backend_normalize(be, X, 1, n, o->eps, false);
  for (int i = 0; i < o->steps && e == ORTHOD_OK; i++) {
    orthod_ns_coef_t k;
    orthod_ns_coefficient_at(o, i, &k);
    float *A = malloc(rr * sizeof *A), *AA = malloc(rr * sizeof *AA), *B = malloc(rr * sizeof *B);
    float *BX = malloc(n * sizeof *BX), *Xn = malloc(n * sizeof *Xn);
    if (!A || !AA || !B || !BX || !Xn) e = ORTHOD_E_NOMEM;
    orthod_gemm_t g = {.m = r, .n = r, .k = c, .alpha = 1.0f, .trans_b = true, .a = X, .lda = c,
                       .b = X, .ldb = c, .c = A, .ldc = r, .batch = 1, .precision = o->precision};
    if (e == ORTHOD_OK) e = orthod_backend_gemm(be, &g); /* A = X Xᵀ */
    g = (orthod_gemm_t){.m = r, .n = r, .k = r, .alpha = 1.0f, .a = A, .lda = r, .b = A, .ldb = r,
                        .c = AA, .ldc = r, .batch = 1, .precision = o->precision};
    if (e == ORTHOD_OK) e = orthod_backend_gemm(be, &g); /* AA = A A */
    if (e == ORTHOD_OK) e = orthod_backend_copy(be, B, A, rr); /* B = b·A + c·AA */
    if (e == ORTHOD_OK) e = orthod_backend_scale(be, B, k.b, rr);
    if (e == ORTHOD_OK) e = orthod_backend_axpy(be, B, k.c, AA, rr);
    g = (orthod_gemm_t){.m = r, .n = c, .k = r, .alpha = 1.0f, .a = B, .lda = r, .b = X, .ldb = c,
                        .c = BX, .ldc = c, .batch = 1, .precision = o->precision};
    if (e == ORTHOD_OK) e = orthod_backend_gemm(be, &g); /* BX = B X */
    if (e == ORTHOD_OK) e = orthod_backend_copy(be, Xn, X, n); /* X = a·X + BX */
    if (e == ORTHOD_OK) e = orthod_backend_scale(be, Xn, k.a, n);
    if (e == ORTHOD_OK) e = orthod_backend_axpy(be, Xn, 1.0f, BX, n);
    free(A), free(AA), free(B), free(BX), free(X);
    X = Xn;
  }
  if (e == ORTHOD_OK)
    e = t ? orthod_backend_transpose(be, out, X, 1, r, c) : orthod_backend_copy(be, out, X, n);
  free(X);
  return e;
}

static int bench_shape(orthod_backend_t *be, int64_t batch, int64_t rows, int64_t cols,
                       const orthod_ns_opts_t *base, int syrk, int warmup, int reps) {
  size_t n = (size_t)(batch * rows * cols);
  float *host = malloc(n * sizeof *host);
  float *x = NULL, *out = NULL;
  double *t = malloc((size_t)reps * sizeof *t);
  int rc = 1;
  if (host == NULL || t == NULL) goto done;
  fill_normal(host, n, (unsigned long long)(rows * 131 + cols));
  if (orthod_backend_alloc(be, n, &x) != ORTHOD_OK || orthod_backend_alloc(be, n, &out) != ORTHOD_OK ||
      orthod_backend_upload(be, x, host, ORTHOD_DTYPE_F32, n) != ORTHOD_OK ||
      orthod_backend_sync(be) != ORTHOD_OK) {
    fprintf(stderr, "bench_ns: setup failed: %s\n", orthod_error_detail());
    goto done;
  }
  orthod_ns_opts_t o = *base;
  o.use_syrk = syrk == 1; /* syrk == 2: the unfused ablation baseline (GEMM path) */
  if (syrk == 2 && batch != 1) {
    fprintf(stderr, "bench_ns: the unfused variant takes 2-D shapes only\n");
    goto done;
  }
  /* x is never written (out is separate), so the input is the same for every pass. */
  orthod_err_t err = ORTHOD_OK;
  for (int i = 0; i < warmup + reps; i++) {
    if ((err = orthod_backend_sync(be)) != ORTHOD_OK) goto fail;
    double t0 = now_ms();
    err = syrk == 2 ? unfused_ns(be, out, x, rows, cols, &o)
                    : orthod_newton_schulz(be, out, x, batch, rows, cols, &o);
    if (err != ORTHOD_OK) goto fail;
    if ((err = orthod_backend_sync(be)) != ORTHOD_OK) goto fail;
    double t1 = now_ms();
    if (i >= warmup) t[i - warmup] = t1 - t0;
  }
  double mn = t[0];
  for (int i = 1; i < reps; i++) mn = t[i] < mn ? t[i] : mn;
  double med = median(t, reps);
  double flops = (double)batch * orthod_ns_flops(rows, cols, o.steps);
  printf("ns shape=%lldx%lld batch=%lld r=%lld c=%lld steps=%d precision=%s syrk=%d variant=%s "
         "reps=%d median_ms=%.4f min_ms=%.4f gflops=%.2f\n",
         (long long)rows, (long long)cols, (long long)batch,
         (long long)(rows < cols ? rows : cols), (long long)(rows < cols ? cols : rows), o.steps,
         orthod_precision_name(o.precision), syrk == 1, syrk == 2 ? "unfused" : "fused", reps, med,
         mn, flops / (med * 1e6));
  fflush(stdout);
  rc = 0;
  goto done;
fail:
  fprintf(stderr, "bench_ns: newton_schulz failed: %s: %s\n", orthod_err_name(err),
          orthod_error_detail());
done:
  orthod_backend_free(be, x);
  orthod_backend_free(be, out);
  free(host);
  free(t);
  return rc;
}

/* The roofline: square fp32 GEMM straight through cblas_sgemm (same library, same threads). */
static int bench_sgemm(int n, int warmup, int reps) {
  size_t nn = (size_t)n * (size_t)n;
  float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
  double *t = malloc((size_t)reps * sizeof *t);
  if (a == NULL || b == NULL || c == NULL || t == NULL) {
    free(a), free(b), free(c), free(t);
    return 1;
  }
  fill_normal(a, nn, 1);
  fill_normal(b, nn, 2);
  for (int i = 0; i < warmup + reps; i++) {
    double t0 = now_ms();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double t1 = now_ms();
    if (i >= warmup) t[i - warmup] = t1 - t0;
  }
  double mn = t[0];
  for (int i = 1; i < reps; i++) mn = t[i] < mn ? t[i] : mn;
  double med = median(t, reps);
  printf("sgemm n=%d reps=%d median_ms=%.4f min_ms=%.4f gflops=%.2f\n", n, reps, med, mn,
         2.0 * (double)n * n * n / (med * 1e6));
  fflush(stdout);
  free(a), free(b), free(c), free(t);
  return 0;
}

int main(int argc, char **argv) {
  long reps = 5, warmup = 1, steps = 5, threads = 0, sgemm = 0;
  int syrk_lo = 0, syrk_hi = 1, unfused = 0;
  orthod_ns_opts_t base;
  orthod_ns_opts_default(&base);
  int first_shape = argc;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (strcmp(a, "--reps") == 0 && v) bad = parse_int(v, 1, 100000, &reps), i++;
    else if (strcmp(a, "--warmup") == 0 && v) bad = parse_int(v, 0, 100000, &warmup), i++;
    else if (strcmp(a, "--steps") == 0 && v) bad = parse_int(v, 0, 1000, &steps), i++;
    else if (strcmp(a, "--threads") == 0 && v) bad = parse_int(v, 0, 4096, &threads), i++;
    else if (strcmp(a, "--sgemm") == 0 && v) bad = parse_int(v, 0, 65536, &sgemm), i++;
    else if (strcmp(a, "--precision") == 0 && v)
      bad = orthod_precision_from_name(v, &base.precision) != ORTHOD_OK, i++;
    else if (strcmp(a, "--coef") == 0 && v)
      bad = orthod_coef_type_from_name(v, &base.coef_type) != ORTHOD_OK, i++;
    else if (strcmp(a, "--syrk") == 0 && v) {
      if (strcmp(v, "on") == 0) syrk_lo = syrk_hi = 1;
      else if (strcmp(v, "off") == 0) syrk_lo = syrk_hi = 0;
      else if (strcmp(v, "both") == 0) syrk_lo = 0, syrk_hi = 1;
      else bad = 1;
      i++;
    } else if (strcmp(a, "--unfused") == 0) {
      unfused = 1;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage();
      return 0;
    } else if (a[0] == '-') {
      bad = 1;
    } else {
      first_shape = i;
      break;
    }
    if (bad) {
      fprintf(stderr, "bench_ns: bad option %s %s\n", a, v ? v : "");
      usage();
      return 2;
    }
  }
  base.steps = (int)steps;
  if (orthod_ns_validate(&base) != ORTHOD_OK) {
    fprintf(stderr, "bench_ns: %s\n", orthod_error_detail());
    return 2;
  }
  orthod_backend_t *be = NULL;
  orthod_backend_opts_t bo = {.threads = (int)threads};
  if (orthod_backend_create_cpu(&bo, &be) != ORTHOD_OK) {
    fprintf(stderr, "bench_ns: cannot create the cpu backend: %s\n", orthod_error_detail());
    return 1;
  }
  printf("config blas_threads=%d coef=%s steps=%d precision=%s warmup=%ld reps=%ld blas=\"%s\"\n",
         openblas_get_num_threads(), orthod_coef_type_name(base.coef_type), base.steps,
         orthod_precision_name(base.precision), warmup, reps, openblas_get_config());
  int rc = 0;
  for (int i = first_shape; i < argc && rc == 0; i++) {
    int64_t b, r, c;
    if (parse_shape(argv[i], &b, &r, &c) != 0) {
      fprintf(stderr, "bench_ns: bad shape '%s' (want RxC or BxRxC)\n", argv[i]);
      rc = 2;
      break;
    }
    for (int s = syrk_hi; s >= syrk_lo && rc == 0; s--)
      rc = bench_shape(be, b, r, c, &base, s, (int)warmup, (int)reps);
    if (unfused && rc == 0) rc = bench_shape(be, b, r, c, &base, 2, (int)warmup, (int)reps);
  }
  if (rc == 0 && sgemm > 0) rc = bench_sgemm((int)sgemm, (int)warmup, (int)reps);
  orthod_backend_destroy(be);
  return rc;
}
