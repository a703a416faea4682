/* bench_gpu.c — `make bench-gpu`: Newton–Schulz (5 quintic steps) on the CUDA backend at
 * 1024², 2048², 4096², 8192² and the GPT-2 small matrices (768x2304, 768x768, 768x3072,
 * 3072x768), each precision, against a straightforward PyTorch implementation on the same GPU
 * in the same run (tests/bench/bench_gpu_torch.py), with TFLOP/s and the fraction of the cuBLAS
 * GEMM rate measured here at each precision. Ends with exactly one line
 * `gpu ns speedup vs torch (geomean): X.XX` (torch_ms / orthod_ms over every shape and precision;
 * "n/a (...)" when PyTorch has no CUDA on this machine). Without a CUDA device (or in a build
 * without the CUDA backend) it says so and exits 0.
 *
 * usage: bench_gpu [--reps N] [--warmup N] [--device N] [--torch SCRIPT] [--python PATH]
 *                  [--gemm N] [--quick] [RxC ...] */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "orthod/backend.h"
#include "orthod/error.h"
#include "orthod/newton_schulz.h"
#include "orthod/tensor.h"

#define MAX_SHAPES 16
#define NPREC 3

typedef struct {
  int64_t rows, cols;
  double orthod_ms[NPREC];
  double torch_ms[NPREC]; /* 0 = not measured */
} shape_row;

static void fail(const char *what) {
  fprintf(stderr, "bench_gpu: %s: %s\n", what, orthod_error_detail());
  exit(1);
}

/* Random N(0,1)-ish data (sum of uniforms), bf16-valued when asked. */
static void fill(float *h, size_t n, uint64_t seed, bool bf16) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i++) {
    double acc = 0.0;
    for (int k = 0; k < 4; k++) {
      s ^= s >> 12;
      s ^= s << 25;
      s ^= s >> 27;
      acc += (double)((s * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
    }
    float v = (float)((acc - 2.0) * 1.7320508075688772);
    h[i] = bf16 ? orthod_round_bf16(v) : v;
  }
}

static float *device_random(orthod_backend_t *be, size_t n, uint64_t seed, bool bf16) {
  float *h = malloc(n * sizeof *h), *d = NULL;
  if (h == NULL) {
    fprintf(stderr, "bench_gpu: out of host memory\n");
    exit(1);
  }
  fill(h, n, seed, bf16);
  if (orthod_backend_alloc(be, n, &d) != ORTHOD_OK) fail("alloc");
  if (orthod_backend_upload(be, d, h, ORTHOD_DTYPE_F32, n) != ORTHOD_OK) fail("upload");
  if (orthod_backend_sync(be) != ORTHOD_OK) fail("sync");
  free(h);
  return d;
}

/* The GEMM rate of the backend's wrapper (cuBLAS; medium adds the bf16 rounding of C). */
static double gemm_tflops(orthod_backend_t *be, int64_t n, orthod_precision_t prec, int warmup,
                          int reps) {
  size_t nn = (size_t)(n * n);
  float *a = device_random(be, nn, 1, prec == ORTHOD_PREC_MEDIUM);
  float *b = device_random(be, nn, 2, prec == ORTHOD_PREC_MEDIUM);
  float *c = NULL;
  if (orthod_backend_alloc(be, nn, &c) != ORTHOD_OK) fail("alloc");
  orthod_gemm_t g = {.m = n, .n = n, .k = n, .alpha = 1.0f, .beta = 0.0f, .a = a, .lda = n,
                     .b = b, .ldb = n, .c = c, .ldc = n, .batch = 1, .precision = prec};
  double t[64];
  if (reps > 64) reps = 64;
  for (int i = 0; i < warmup + reps; i++) {
    if (orthod_backend_sync(be) != ORTHOD_OK) fail("sync");
    double t0 = now_s();
    if (orthod_backend_gemm(be, &g) != ORTHOD_OK) fail("gemm");
    if (orthod_backend_sync(be) != ORTHOD_OK) fail("sync");
    if (i >= warmup) t[i - warmup] = now_s() - t0;
  }
  double med = median(t, reps);
  orthod_backend_free(be, a);
  orthod_backend_free(be, b);
  orthod_backend_free(be, c);
  return 2.0 * (double)n * (double)n * (double)n / med / 1e12;
}

static double ns_ms(orthod_backend_t *be, int64_t rows, int64_t cols, orthod_precision_t prec,
                    int warmup, int reps) {
  size_t n = (size_t)(rows * cols);
  float *x = device_random(be, n, 3, false), *out = NULL;
  if (orthod_backend_alloc(be, n, &out) != ORTHOD_OK) fail("alloc");
  orthod_ns_opts_t o;
  orthod_ns_opts_default(&o);
  o.steps = 5;
  o.coef_type = ORTHOD_COEF_QUINTIC;
  o.precision = prec;
  double t[64];
  if (reps > 64) reps = 64;
  for (int i = 0; i < warmup + reps; i++) {
    if (orthod_backend_sync(be) != ORTHOD_OK) fail("sync");
    double t0 = now_s();
    if (orthod_newton_schulz(be, out, x, 1, rows, cols, &o) != ORTHOD_OK) fail("newton_schulz");
    if (orthod_backend_sync(be) != ORTHOD_OK) fail("sync");
    if (i >= warmup) t[i - warmup] = now_s() - t0;
  }
  orthod_backend_free(be, x);
  orthod_backend_free(be, out);
  return 1e3 * median(t, reps);
}

static int prec_index(const char *name) {
  for (int p = 0; p < NPREC; p++)
    if (strcmp(name, orthod_precision_name((orthod_precision_t)p)) == 0) return p;
  return -1;
}

/* Run the PyTorch side; fills torch_ms, returns false with a reason when it could not run. */
static bool run_torch(const char *python, const char *script, int device, int warmup, int reps,
                      shape_row *rows, int nrows, char *why, size_t whylen) {
  if (strchr(python, '\'') != NULL || strchr(script, '\'') != NULL) {
    snprintf(why, whylen, "paths with a quote are not supported");
    return false;
  }
  char cmd[4096];
  int len = snprintf(cmd, sizeof cmd, "'%s' '%s' --device %d --warmup %d --reps %d", python, script,
                     device, warmup, reps);
  for (int i = 0; i < nrows && len > 0 && (size_t)len < sizeof cmd; i++)
    len += snprintf(cmd + len, sizeof cmd - (size_t)len, " %lldx%lld", (long long)rows[i].rows,
                    (long long)rows[i].cols);
  if (len < 0 || (size_t)len >= sizeof cmd) {
    snprintf(why, whylen, "command line too long");
    return false;
  }
  fflush(stdout);
  FILE *p = popen(cmd, "r");
  if (p == NULL) {
    snprintf(why, whylen, "cannot run %s", python);
    return false;
  }
  char line[512];
  int got = 0;
  snprintf(why, whylen, "the torch script printed no timings");
  while (fgets(line, sizeof line, p) != NULL) {
    long long r = 0, c = 0;
    char prec[32];
    double ms = 0.0;
    if (sscanf(line, "torch shape=%lldx%lld precision=%31s median_ms=%lf", &r, &c, prec, &ms) == 4) {
      int pi = prec_index(prec);
      for (int i = 0; i < nrows && pi >= 0; i++)
        if (rows[i].rows == r && rows[i].cols == c) rows[i].torch_ms[pi] = ms;
      got++;
    } else if (strncmp(line, "torch:", 6) == 0) {
      line[strcspn(line, "\n")] = '\0';
      size_t k = strlen(line + 7);
      if (k >= whylen) k = whylen - 1;
      memcpy(why, line + 7, k);
      why[k] = '\0';
    }
    fputs(line, stdout); /* the script's own lines (device, versions) stay visible */
  }
  int st = pclose(p);
  if (got == 0) return false;
  if (st != 0) fprintf(stderr, "bench_gpu: the torch script exited with status %d\n", st);
  return true;
}

static void usage(void) {
  fprintf(stderr, "usage: bench_gpu [--reps N] [--warmup N] [--device N] [--torch SCRIPT] "
                  "[--python PATH] [--gemm N] [--quick] [RxC ...]\n");
  exit(2);
}

int main(int argc, char **argv) {
  int reps = 10, warmup = 2, device = 0;
  int64_t gemm_n = 8192;
  const char *torch = NULL, *python = "/usr/bin/python3";
  shape_row rows[MAX_SHAPES];
  int nrows = 0;
  bool quick = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--reps") == 0 && v) reps = atoi(argv[++i]);
    else if (strcmp(a, "--warmup") == 0 && v) warmup = atoi(argv[++i]);
    else if (strcmp(a, "--device") == 0 && v) device = atoi(argv[++i]);
    else if (strcmp(a, "--torch") == 0 && v) torch = argv[++i];
    else if (strcmp(a, "--python") == 0 && v) python = argv[++i];
    else if (strcmp(a, "--gemm") == 0 && v) gemm_n = atoll(argv[++i]);
    else if (strcmp(a, "--quick") == 0) quick = true;
    else if (a[0] != '-' && nrows < MAX_SHAPES) {
      long long r = 0, c = 0;
      if (sscanf(a, "%lldx%lld", &r, &c) != 2 || r < 1 || c < 1) usage();
      rows[nrows++] = (shape_row){.rows = r, .cols = c};
    } else {
      usage();
    }
  }
  if (reps < 1 || reps > 64 || warmup < 0 || gemm_n < 64) usage();
  if (nrows == 0) {
    static const int64_t def[][2] = {{1024, 1024}, {2048, 2048}, {4096, 4096}, {8192, 8192},
                                     {768, 2304},  {768, 768},   {768, 3072},  {3072, 768}};
    for (size_t i = 0; i < sizeof def / sizeof def[0]; i++) {
      if (quick && def[i][0] > 2048) continue;
      rows[nrows++] = (shape_row){.rows = def[i][0], .cols = def[i][1]};
    }
  }
  if (quick) {
    if (gemm_n > 4096) gemm_n = 4096;
    if (reps > 5) reps = 5;
  }

  orthod_backend_t *be = NULL;
  orthod_backend_opts_t bo = {.device = device};
  orthod_err_t e = orthod_backend_create_cuda(&bo, &be);
  if (e != ORTHOD_OK) {
    printf("bench-gpu: %s: nothing to measure\n", orthod_error_detail());
    return e == ORTHOD_E_UNSUPPORTED ? 0 : 1;
  }
  char desc[256];
  if (orthod_backend_cuda_describe(device, desc, sizeof desc) == ORTHOD_OK) printf("device %s\n", desc);
  printf("config steps=5 coef=quintic warmup=%d reps=%d gemm=%lld (median of reps; wall clock "
         "around each call, synchronised)\n",
         warmup, reps, (long long)gemm_n);

  double peak[NPREC];
  for (int p = 0; p < NPREC; p++) {
    peak[p] = gemm_tflops(be, gemm_n, (orthod_precision_t)p, warmup, reps);
    printf("gemm precision=%s n=%lld tflops=%.1f\n", orthod_precision_name((orthod_precision_t)p),
           (long long)gemm_n, peak[p]);
  }
  for (int i = 0; i < nrows; i++)
    for (int p = 0; p < NPREC; p++)
      rows[i].orthod_ms[p] = ns_ms(be, rows[i].rows, rows[i].cols, (orthod_precision_t)p, warmup, reps);
  orthod_backend_destroy(be);

  char why[256] = "no torch script given (--torch)";
  bool have_torch = torch != NULL && run_torch(python, torch, device, warmup, reps, rows, nrows,
                                               why, sizeof why);

  printf("\n%-11s %-8s %11s %9s %8s %11s %8s\n", "shape", "prec", "orthod ms", "TFLOP/s",
         "% gemm", "torch ms", "speedup");
  double log_sum = 0.0;
  int count = 0;
  for (int i = 0; i < nrows; i++)
    for (int p = 0; p < NPREC; p++) {
      double fl = orthod_ns_flops(rows[i].rows, rows[i].cols, 5);
      double tf = fl / (rows[i].orthod_ms[p] * 1e-3) / 1e12;
      char shape[32], tms[16] = "-", spd[16] = "-";
      snprintf(shape, sizeof shape, "%lldx%lld", (long long)rows[i].rows, (long long)rows[i].cols);
      if (rows[i].torch_ms[p] > 0.0) {
        double s = rows[i].torch_ms[p] / rows[i].orthod_ms[p];
        snprintf(tms, sizeof tms, "%.3f", rows[i].torch_ms[p]);
        snprintf(spd, sizeof spd, "%.2f", s);
        log_sum += log(s);
        count++;
      }
      printf("%-11s %-8s %11.3f %9.1f %7.0f%% %11s %8s\n", shape,
             orthod_precision_name((orthod_precision_t)p), rows[i].orthod_ms[p], tf,
             100.0 * tf / peak[p], tms, spd);
    }
  if (have_torch && count > 0)
    printf("gpu ns speedup vs torch (geomean): %.2f\n", exp(log_sum / count));
  else
    printf("gpu ns speedup vs torch (geomean): n/a (%s)\n", why);
  return 0;
}
