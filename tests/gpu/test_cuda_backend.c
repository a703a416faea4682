/* test_cuda_backend.c — every operation of the CUDA backend against the CPU backend on the same
 * data. Bit for bit where the CUDA kernel performs the CPU's operations in the CPU's order with
 * IEEE round-to-nearest intrinsics (conversions, copy, zero, axpy, scale, lerp, bf16 rounding,
 * transpose, AdamW, AdaMuon, NorMuon's column sums); within a stated relative bound where a sum is
 * reordered (reductions, GEMM/SYRK) or a different algorithm runs (SVD, eigh). Also: strided and
 * padded GEMM operands (padding untouched), exact symmetry of SYRK, memory limits and device
 * out-of-memory, use from a second thread. Skips (77) without a CUDA device. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gputest.h"
#include "orthod/newton_schulz.h"
#include "orthod/tensor.h"

static orthod_backend_t *D(void) { return gt_dut(); }
static orthod_backend_t *R(void) { return gt_ref(); }

static float bits_f(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Both sides of a pair must hold the same bits (or both NaN). */
static void expect_same(const char *label, const gt_pair_t *p) {
  float *d, *r;
  gt_pair_get(p, &d, &r);
  TU_CHECK(gt_same(label, d, r, p->n));
  free(d);
  free(r);
}

static void expect_rel(const char *label, const gt_pair_t *p, double bound) {
  float *d, *r;
  gt_pair_get(p, &d, &r);
  TU_CHECK(gt_rel_close(label, d, r, p->n, bound));
  free(d);
  free(r);
}

/* ---- transfers and conversions -------------------------------------------------------------- */

/* fp32 patterns that reach every branch of the bf16/fp16 conversions: signed zeros, infinities,
 * quiet and signalling NaNs with payloads, fp32 subnormals, bf16 ties to even both ways, the fp16
 * overflow threshold 65520 and its neighbours, fp16 subnormals and their ties, fp16 ties. */
static const uint32_t k_special[] = {
    0x00000000u, 0x80000000u, 0x3f800000u, 0xbf800000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
    0xffc00001u, 0x7f800001u, 0x7fbfffffu, 0xff812345u, 0x00000001u, 0x807fffffu, 0x00800000u,
    0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x3f807fffu, 0x7f7fffffu, 0xff7f8000u, 0x7f7f7fffu,
    0x477ff000u, 0x477fefffu, 0x477fe000u, 0xc77ff000u, 0x33800000u, 0x33000000u, 0x33400000u,
    0x33c00000u, 0x387fc000u, 0x387fe000u, 0x38800000u, 0x387ff000u, 0x3f800fffu, 0x3f801000u,
    0x3f803000u, 0x3f801001u, 0x47800000u, 0x46fffe00u, 0xb3800000u, 0x2f800000u, 0x3a000000u,
};

static void roundtrip_check(const char *label, const float *host, size_t n) {
  /* fp32 up, then down as fp32, bf16 and fp16: bit-identical to the CPU's conversions */
  float *dd = NULL, *rd = NULL;
  GT_OK(orthod_backend_alloc(D(), n, &dd));
  GT_OK(orthod_backend_alloc(R(), n, &rd));
  GT_OK(orthod_backend_upload(D(), dd, host, ORTHOD_DTYPE_F32, n));
  GT_OK(orthod_backend_upload(R(), rd, host, ORTHOD_DTYPE_F32, n));
  GT_OK(orthod_backend_sync(D()));
  uint32_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
  uint16_t *a16 = malloc(n * sizeof *a16), *b16 = malloc(n * sizeof *b16);
  GT_OK(orthod_backend_download(D(), a, ORTHOD_DTYPE_F32, dd, n));
  GT_OK(orthod_backend_download(R(), b, ORTHOD_DTYPE_F32, rd, n));
  GT_OK(orthod_backend_sync(D()));
  if (memcmp(a, b, n * sizeof *a) != 0) {
    fprintf(stderr, "\n  %s: fp32 round trip differs\n", label);
    CU_FAIL("fp32 round trip");
  }
  TU_CHECK(memcmp(a, host, n * sizeof *a) == 0); /* fp32 -> fp32 is the identity, NaN payloads too */
  orthod_dtype_t dts[2] = {ORTHOD_DTYPE_BF16, ORTHOD_DTYPE_F16};
  for (int t = 0; t < 2; t++) {
    GT_OK(orthod_backend_download(D(), a16, dts[t], dd, n));
    GT_OK(orthod_backend_download(R(), b16, dts[t], rd, n));
    GT_OK(orthod_backend_sync(D()));
    for (size_t i = 0; i < n; i++)
      if (a16[i] != b16[i]) {
        uint32_t u;
        memcpy(&u, &host[i], sizeof u);
        fprintf(stderr, "\n  %s: fp32 0x%08x -> %s: dut 0x%04x ref 0x%04x\n", label, (unsigned)u,
                orthod_dtype_name(dts[t]), a16[i], b16[i]);
        CU_FAIL("narrowing differs");
        break;
      }
  }
  free(a);
  free(b);
  free(a16);
  free(b16);
  gt_free(D(), dd);
  gt_free(R(), rd);
}

/* Every bf16 and fp16 bit pattern up, fp32 down: the widening is exact and identical. */
static void widen_check(orthod_dtype_t dt, const uint16_t *src, size_t n) {
  float *dd = NULL, *rd = NULL;
  GT_OK(orthod_backend_alloc(D(), n, &dd));
  GT_OK(orthod_backend_alloc(R(), n, &rd));
  GT_OK(orthod_backend_upload(D(), dd, src, dt, n));
  GT_OK(orthod_backend_upload(R(), rd, src, dt, n));
  GT_OK(orthod_backend_sync(D()));
  uint32_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
  gt_get(D(), (float *)(void *)a, dd, n);
  gt_get(R(), (float *)(void *)b, rd, n);
  for (size_t i = 0; i < n; i++)
    if (a[i] != b[i]) {
      fprintf(stderr, "\n  %s 0x%04x -> fp32: dut 0x%08x ref 0x%08x\n", orthod_dtype_name(dt),
              src[i], (unsigned)a[i], (unsigned)b[i]);
      CU_FAIL("widening differs");
      break;
    }
  free(a);
  free(b);
  gt_free(D(), dd);
  gt_free(R(), rd);
}

static void test_conversions(void) {
  size_t ns = sizeof k_special / sizeof k_special[0];
  float *sp = malloc(ns * sizeof *sp);
  for (size_t i = 0; i < ns; i++) sp[i] = bits_f(k_special[i]);
  roundtrip_check("specials", sp, ns);
  free(sp);

  uint16_t *all = malloc(65536 * sizeof *all);
  for (uint32_t i = 0; i < 65536; i++) all[i] = (uint16_t)i;
  widen_check(ORTHOD_DTYPE_BF16, all, 65536);
  widen_check(ORTHOD_DTYPE_F16, all, 65536);
  free(all);

  /* random fp32 bit patterns (every exponent: NaNs, subnormals, overflow) */
  size_t n = 300007;
  float *x = malloc(n * sizeof *x);
  tu_rng_t r;
  tu_rng_seed(&r, 7);
  for (size_t i = 0; i < n; i++) x[i] = bits_f((uint32_t)(tu_rng_u64(&r) >> 32));
  roundtrip_check("random bit patterns", x, n);
  free(x);
}

/* Sizes past the staging chunk (1 Mi fp32 / 2 Mi 16-bit values per slot) with a ragged tail,
 * several uploads queued back to back before one sync (both staging slots reused while copies
 * may still be in flight), and every dtype both ways. */
static void test_transfers_large(void) {
  size_t n = ((size_t)5 << 20) + 12345;
  float *x = gt_normal(21, n);
  for (size_t i = 0; i < n; i += 4099) x[i] *= 1e-39f * (float)(i % 7); /* subnormals and zeros */
  uint16_t *h16 = malloc(n * sizeof *h16);
  tu_rng_t r;
  tu_rng_seed(&r, 22);
  for (size_t i = 0; i < n; i++) h16[i] = (uint16_t)tu_rng_u64(&r);
  float *d[3], *rf[3];
  for (int i = 0; i < 3; i++) {
    GT_OK(orthod_backend_alloc(D(), n, &d[i]));
    GT_OK(orthod_backend_alloc(R(), n, &rf[i]));
  }
  GT_OK(orthod_backend_upload(D(), d[0], x, ORTHOD_DTYPE_F32, n));
  GT_OK(orthod_backend_upload(D(), d[1], h16, ORTHOD_DTYPE_BF16, n));
  GT_OK(orthod_backend_upload(D(), d[2], h16, ORTHOD_DTYPE_F16, n));
  GT_OK(orthod_backend_upload(R(), rf[0], x, ORTHOD_DTYPE_F32, n));
  GT_OK(orthod_backend_upload(R(), rf[1], h16, ORTHOD_DTYPE_BF16, n));
  GT_OK(orthod_backend_upload(R(), rf[2], h16, ORTHOD_DTYPE_F16, n));
  GT_OK(orthod_backend_sync(D()));
  GT_OK(orthod_backend_sync(R()));
  uint16_t *a16 = malloc(n * sizeof *a16), *b16 = malloc(n * sizeof *b16);
  float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
  static const char *names[3] = {"fp32 upload", "bf16 upload", "fp16 upload"};
  for (int i = 0; i < 3; i++) {
    gt_get(D(), a, d[i], n);
    gt_get(R(), b, rf[i], n);
    TU_CHECK(memcmp(a, b, n * sizeof *a) == 0 || gt_same(names[i], a, b, n));
    orthod_dtype_t dts[2] = {ORTHOD_DTYPE_BF16, ORTHOD_DTYPE_F16};
    for (int t = 0; t < 2; t++) {
      GT_OK(orthod_backend_download(D(), a16, dts[t], d[i], n));
      GT_OK(orthod_backend_download(R(), b16, dts[t], rf[i], n));
      GT_OK(orthod_backend_sync(D()));
      if (memcmp(a16, b16, n * sizeof *a16) != 0) {
        fprintf(stderr, "\n  %s, download %s differs\n", names[i], orthod_dtype_name(dts[t]));
        CU_FAIL("large download differs");
      }
    }
    GT_OK(orthod_backend_download(D(), a, ORTHOD_DTYPE_F32, d[i], n));
    GT_OK(orthod_backend_sync(D()));
    TU_CHECK(memcmp(a, b, n * sizeof *a) == 0);
  }
  for (int i = 0; i < 3; i++) {
    gt_free(D(), d[i]);
    gt_free(R(), rf[i]);
  }
  free(x);
  free(h16);
  free(a16);
  free(b16);
  free(a);
  free(b);
}

/* ---- exact elementwise kernels -------------------------------------------------------------- */

static float *specials_mixed(uint64_t seed, size_t n) {
  float *x = gt_normal(seed, n);
  size_t ns = sizeof k_special / sizeof k_special[0];
  for (size_t i = 0; i < ns && i * 97 < n; i++) x[i * 97] = bits_f(k_special[i]);
  return x;
}

static void test_elementwise(void) {
  size_t n = 1000003;
  float *x = specials_mixed(31, n), *y = gt_normal(32, n);
  gt_pair_t px = gt_pair(x, n), py = gt_pair(y, n), po = gt_pair(y, n);

  GT_OK(orthod_backend_axpy(D(), py.d, -0.37f, px.d, n));
  GT_OK(orthod_backend_axpy(R(), py.r, -0.37f, px.r, n));
  expect_same("axpy", &py);
  GT_OK(orthod_backend_axpy(D(), py.d, -0.0123f, py.d, n)); /* weight decay form: x = y */
  GT_OK(orthod_backend_axpy(R(), py.r, -0.0123f, py.r, n));
  expect_same("axpy in place", &py);
  GT_OK(orthod_backend_scale(D(), py.d, 1.7f, n));
  GT_OK(orthod_backend_scale(R(), py.r, 1.7f, n));
  expect_same("scale", &py);

  const float ws[] = {0.1f, 0.05f, 0.9f, 0.5f, -0.7f, 0.49999997f, 1.0f};
  for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
    char label[64];
    snprintf(label, sizeof label, "lerp w=%g", (double)ws[i]);
    GT_OK(orthod_backend_lerp(D(), po.d, px.d, py.d, ws[i], n));
    GT_OK(orthod_backend_lerp(R(), po.r, px.r, py.r, ws[i], n));
    expect_same(label, &po);
  }
  GT_OK(orthod_backend_lerp(D(), py.d, py.d, px.d, 0.95f, n)); /* out aliases s */
  GT_OK(orthod_backend_lerp(R(), py.r, py.r, px.r, 0.95f, n));
  expect_same("lerp in place", &py);

  GT_OK(orthod_backend_copy(D(), po.d, px.d, n));
  GT_OK(orthod_backend_copy(R(), po.r, px.r, n));
  GT_OK(orthod_backend_round_bf16(D(), po.d, n));
  GT_OK(orthod_backend_round_bf16(R(), po.r, n));
  expect_same("round_bf16", &po);
  float *hd = malloc(n * sizeof *hd);
  gt_get(D(), hd, po.d, n);
  TU_CHECK(gt_is_bf16("round_bf16 output", hd, n));
  free(hd);

  /* overlapping copies (memmove semantics) in both directions */
  GT_OK(orthod_backend_copy(D(), po.d + 3, po.d, n - 3));
  GT_OK(orthod_backend_copy(R(), po.r + 3, po.r, n - 3));
  expect_same("overlapping copy up", &po);
  GT_OK(orthod_backend_copy(D(), po.d, po.d + 1000, n - 1000));
  GT_OK(orthod_backend_copy(R(), po.r, po.r + 1000, n - 1000));
  expect_same("overlapping copy down", &po);

  GT_OK(orthod_backend_zero(D(), po.d + 5, n - 10));
  GT_OK(orthod_backend_zero(R(), po.r + 5, n - 10));
  expect_same("zero", &po);

  /* scale_by: a device scalar written by the device (norm), then used without a host trip */
  float s = -0.8125f;
  gt_pair_t ps = gt_pair(&s, 1);
  GT_OK(orthod_backend_scale_by(D(), px.d, ps.d, n));
  GT_OK(orthod_backend_scale_by(R(), px.r, ps.r, n));
  expect_same("scale_by", &px);
  gt_pair_free(&ps);

  gt_pair_free(&px);
  gt_pair_free(&py);
  gt_pair_free(&po);
  free(x);
  free(y);
}

static void test_transpose(void) {
  static const int64_t shapes[][3] = {{1, 1, 1},   {1, 33, 65}, {3, 64, 32}, {2, 100, 7},
                                      {1, 1, 1000}, {1, 1000, 1}, {5, 31, 33}, {1, 257, 129}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    int64_t b = shapes[s][0], rows = shapes[s][1], cols = shapes[s][2];
    size_t n = (size_t)(b * rows * cols);
    float *x = gt_normal(40 + s, n);
    gt_pair_t pi = gt_pair(x, n), po = gt_pair(x, n);
    GT_OK(orthod_backend_transpose(D(), po.d, pi.d, b, rows, cols));
    GT_OK(orthod_backend_transpose(R(), po.r, pi.r, b, rows, cols));
    char label[64];
    snprintf(label, sizeof label, "transpose %lldx%lldx%lld", (long long)b, (long long)rows,
             (long long)cols);
    expect_same(label, &po);
    gt_pair_free(&pi);
    gt_pair_free(&po);
    free(x);
  }
}

/* ---- reductions and the kernels built on them ----------------------------------------------- */

/* Under the host emulation of tests/gpu/emu (ORTHOD_GPU_TEST_EMULATED): smaller sizes where a
 * kernel with barriers would run millions of thread contexts. */
static bool emulated(void) {
  const char *emu = getenv("ORTHOD_GPU_TEST_EMULATED");
  return emu != NULL && emu[0] != '\0';
}

/* fp32 sums of squares in two blocked orders (CPU: 16 lanes folded every 2048 elements; CUDA:
 * blocks of 8192 elements, 256 strided partial sums, fixed trees): for positive terms each
 * order's relative error is below ~200 ulp for these sizes, so norms and everything scaled by
 * a norm agree to 1e-5. */
#define RED_REL 1e-5

static void test_norm_dot(void) {
  size_t n = 100003;
  int64_t batch = 3;
  float *x = gt_normal(51, n * (size_t)batch), *y = gt_normal(52, n);
  gt_pair_t px = gt_pair(x, n * (size_t)batch), py = gt_pair(y, n);
  float zero4[4] = {0};
  gt_pair_t out = gt_pair(zero4, 4);
  GT_OK(orthod_backend_norm(D(), out.d, px.d, batch, n));
  GT_OK(orthod_backend_norm(R(), out.r, px.r, batch, n));
  expect_rel("norm", &out, RED_REL);
  /* one slice of 5 Mi elements: partials of 640 blocks, then the second pass */
  size_t big = (size_t)5 << 20;
  float *xb = gt_normal(53, big);
  gt_pair_t pb = gt_pair(xb, big);
  GT_OK(orthod_backend_norm(D(), out.d, pb.d, 1, big));
  GT_OK(orthod_backend_norm(R(), out.r, pb.r, 1, big));
  expect_rel("norm of 5 Mi", &out, RED_REL);
  gt_pair_free(&pb);
  free(xb);
  /* dot: mixed signs cancel, so the bound is relative to Σ|x·y| */
  GT_OK(orthod_backend_dot(D(), out.d, px.d, py.d, n));
  GT_OK(orthod_backend_dot(R(), out.r, px.r, py.r, n));
  float dd, dr;
  gt_get(D(), &dd, out.d, 1);
  gt_get(R(), &dr, out.r, 1);
  double abs_sum = 0.0;
  for (size_t i = 0; i < n; i++) abs_sum += fabs((double)x[i] * (double)y[i]);
  if (!(fabs((double)dd - (double)dr) <= 1e-5 * abs_sum)) {
    fprintf(stderr, "\n  dot: dut %.9g ref %.9g (Σ|xy| %.6g)\n", (double)dd, (double)dr, abs_sum);
    CU_FAIL("dot");
  }
  gt_pair_free(&px);
  gt_pair_free(&py);
  gt_pair_free(&out);
  free(x);
  free(y);
}

/* Integer-valued data: every partial sum is an integer below 2^24, exact in fp32 in any order,
 * so norms, dots and normalisations must agree bit for bit. Sizes straddle the reduction's
 * block boundaries (8192 elements per block, 256 threads) to catch a dropped or repeated
 * element; a batch of more than 65535 slices exercises the grid-y chunking (not under the
 * host emulation, where 70000 blocks of thread contexts take minutes). */
static void test_exact_sums(void) {
  static const size_t sizes[] = {1, 255, 256, 257, 8191, 8192, 8193, 16385, 100003,
                                 ((size_t)5 << 20) + 3};
  tu_rng_t r;
  tu_rng_seed(&r, 57);
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    size_t n = sizes[s];
    int lo = n > 1000000 ? -1 : -3, hi = -lo; /* Σ x² <= 9n < 2^24, or <= n for the big one */
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    tu_fill_int(&r, x, n, lo, hi);
    tu_fill_int(&r, y, n, lo, hi);
    x[0] = 1.0f; /* never an all-zero vector */
    gt_pair_t px = gt_pair(x, n), py = gt_pair(y, n);
    float z[2] = {0};
    gt_pair_t out = gt_pair(z, 2);
    char label[64];
    GT_OK(orthod_backend_norm(D(), out.d, px.d, 1, n));
    GT_OK(orthod_backend_norm(R(), out.r, px.r, 1, n));
    GT_OK(orthod_backend_dot(D(), out.d + 1, px.d, py.d, n));
    GT_OK(orthod_backend_dot(R(), out.r + 1, px.r, py.r, n));
    snprintf(label, sizeof label, "exact norm, dot n=%zu", n);
    expect_same(label, &out);
    float host[2];
    gt_get(D(), host, out.d, 2);
    double ss = 0.0, dd = 0.0;
    for (size_t i = 0; i < n; i++) {
      ss += (double)x[i] * (double)x[i];
      dd += (double)x[i] * (double)y[i];
    }
    TU_CHECK(host[0] == (float)sqrt(ss)); /* sqrtf of an exact sum == fp32(fp64 sqrt) */
    TU_CHECK(host[1] == (float)dd);
    for (int dbl = 0; dbl < 2; dbl++) {
      GT_OK(orthod_backend_normalize(D(), py.d, 1, n, 1e-7f, dbl));
      GT_OK(orthod_backend_normalize(R(), py.r, 1, n, 1e-7f, dbl));
      snprintf(label, sizeof label, "exact normalize n=%zu%s", n, dbl ? " in double" : "");
      expect_same(label, &py);
      gt_pair_free(&py);
      py = gt_pair(x, n); /* from here on a vector that is not zero (no eps in double) */
    }
    gt_pair_free(&px);
    gt_pair_free(&py);
    gt_pair_free(&out);
    free(x);
    free(y);
  }
  if (emulated()) return;
  /* 70000 slices of 3: sums of squares of small integers, exact */
  int64_t batch = 70000;
  size_t n = 3, total = (size_t)batch * n;
  float *x = malloc(total * sizeof *x), *z = calloc((size_t)batch, sizeof *z);
  tu_fill_int(&r, x, total, -3, 3);
  for (int64_t b = 0; b < batch; b++) x[(size_t)b * n] = 2.0f;
  gt_pair_t px = gt_pair(x, total), out = gt_pair(z, (size_t)batch);
  GT_OK(orthod_backend_norm(D(), out.d, px.d, batch, n));
  GT_OK(orthod_backend_norm(R(), out.r, px.r, batch, n));
  expect_same("norm of 70000 slices", &out);
  GT_OK(orthod_backend_normalize(D(), px.d, batch, n, 1e-7f, false));
  GT_OK(orthod_backend_normalize(R(), px.r, batch, n, 1e-7f, false));
  expect_same("normalize of 70000 slices", &px);
  gt_pair_free(&px);
  gt_pair_free(&out);
  free(x);
  free(z);
}

static void test_normalize(void) {
  int64_t batch = 4;
  size_t n = 70001;
  float *x = gt_normal(61, n * (size_t)batch);
  memset(x + 2 * n, 0, n * sizeof *x); /* a zero slice: 0 / max(0, eps) = 0 */
  gt_pair_t p = gt_pair(x, n * (size_t)batch);
  GT_OK(orthod_backend_normalize(D(), p.d, batch, n, 1e-7f, false));
  GT_OK(orthod_backend_normalize(R(), p.r, batch, n, 1e-7f, false));
  expect_rel("normalize", &p, RED_REL);
  float *d, *r;
  gt_pair_get(&p, &d, &r);
  TU_CHECK(gt_same("normalize zero slice", d + 2 * n, r + 2 * n, n));
  free(d);
  free(r);
  gt_pair_free(&p);
  /* in double: fp64 sums in different orders differ by ~1e-16 relative, so the fp32 norm is the
   * same value except in the rare case of a rounding boundary: 1 ulp */
  x[2 * n] = 1.0f; /* no zero slice here (no eps: it would give NaN on both) */
  p = gt_pair(x, n * (size_t)batch);
  GT_OK(orthod_backend_normalize(D(), p.d, batch, n, 0.0f, true));
  GT_OK(orthod_backend_normalize(R(), p.r, batch, n, 0.0f, true));
  expect_rel("normalize in double", &p, 2e-7);
  gt_pair_free(&p);
  free(x);
}

static void test_count_nonfinite(void) {
  size_t n = emulated() ? 300005 : ((size_t)3 << 20) + 5; /* many grid-stride rounds on a GPU */
  float *x = gt_normal(71, n);
  size_t at[] = {0, 17, n / 3, 2 * (n / 3) + 1, n - 2, n - 1};
  uint32_t bits[] = {0x7fc00000u, 0x7f800000u, 0xff800000u, 0x7f800001u, 0xffffffffu, 0x7f800000u};
  for (size_t i = 0; i < 6; i++) x[at[i]] = bits_f(bits[i]);
  x[100] = bits_f(0x7f7fffffu); /* largest finite: not counted */
  gt_pair_t p = gt_pair(x, n);
  size_t cd = 99, cr = 99;
  GT_OK(orthod_backend_count_nonfinite(D(), p.d, n, &cd));
  GT_OK(orthod_backend_count_nonfinite(R(), p.r, n, &cr));
  CU_ASSERT_EQUAL(cd, 6);
  CU_ASSERT_EQUAL(cr, 6);
  GT_OK(orthod_backend_count_nonfinite(D(), p.d + 1, 16, &cd));
  CU_ASSERT_EQUAL(cd, 0);
  gt_pair_free(&p);
  free(x);
}

static void test_hooks(void) {
  size_t n = 200003;
  float *p0 = gt_normal(81, n), *u0 = gt_normal(82, n);
  for (size_t i = 0; i < n; i++) u0[i] *= 0.01f;
  gt_pair_t p = gt_pair(p0, n), u = gt_pair(u0, n);
  GT_OK(orthod_backend_hyperball(D(), p.d, n, 2.5f, 1e-15f));
  GT_OK(orthod_backend_hyperball(R(), p.r, n, 2.5f, 1e-15f));
  expect_rel("hyperball", &p, RED_REL);
  /* radial brake: n0 = ‖p‖ before, p += u, then the brake */
  float z = 0.0f;
  gt_pair_t n0 = gt_pair(&z, 1);
  GT_OK(orthod_backend_norm(D(), n0.d, p.d, 1, n));
  GT_OK(orthod_backend_norm(R(), n0.r, p.r, 1, n));
  GT_OK(orthod_backend_axpy(D(), p.d, 1.0f, u.d, n));
  GT_OK(orthod_backend_axpy(R(), p.r, 1.0f, u.r, n));
  GT_OK(orthod_backend_radial_brake(D(), p.d, n, n0.d, 0.5f, 1.0f, 1e-15f));
  GT_OK(orthod_backend_radial_brake(R(), p.r, n, n0.r, 0.5f, 1.0f, 1e-15f));
  expect_rel("radial_brake", &p, RED_REL);
  GT_OK(orthod_backend_relative_update(D(), u.d, p.d, n, 1e-15f));
  GT_OK(orthod_backend_relative_update(R(), u.r, p.r, n, 1e-15f));
  expect_rel("relative_update", &u, RED_REL);
  /* below eps: everything becomes exactly 0 on both */
  GT_OK(orthod_backend_zero(D(), u.d, n));
  GT_OK(orthod_backend_zero(R(), u.r, n));
  GT_OK(orthod_backend_hyperball(D(), u.d, n, 2.5f, 1e-15f));
  GT_OK(orthod_backend_hyperball(R(), u.r, n, 2.5f, 1e-15f));
  expect_same("hyperball of zero", &u);
  GT_OK(orthod_backend_relative_update(D(), p.d, u.d, n, 1e-15f));
  GT_OK(orthod_backend_relative_update(R(), p.r, u.r, n, 1e-15f));
  expect_same("relative_update with a zero reference", &p);
  gt_pair_free(&p);
  gt_pair_free(&u);
  gt_pair_free(&n0);
  free(p0);
  free(u0);
}

static void test_moments(void) {
  int64_t m = 67, n = 129;
  size_t total = (size_t)(m * n);
  float *o0 = gt_normal(91, total), *v0 = gt_normal(92, total);
  for (size_t i = 0; i < total; i++) v0[i] = fabsf(v0[i]) * 0.1f;
  /* AdaMuon: elementwise, bit for bit */
  gt_pair_t o = gt_pair(o0, total), v = gt_pair(v0, total);
  for (int step = 0; step < 3; step++) {
    GT_OK(orthod_backend_adamuon(D(), o.d, v.d, total, 0.05f, 1e-8f));
    GT_OK(orthod_backend_adamuon(R(), o.r, v.r, total, 0.05f, 1e-8f));
  }
  expect_same("adamuon o", &o);
  expect_same("adamuon v", &v);
  gt_pair_free(&o);
  gt_pair_free(&v);
  /* NorMuon per column: the column sums run in the CPU's row order, so V is bit for bit; O is
   * then scaled by a ratio of two norms (reordered sums) */
  o = gt_pair(o0, total);
  v = gt_pair(v0, (size_t)n);
  GT_OK(orthod_backend_normuon(D(), o.d, v.d, m, n, false, 0.05f, 1e-8f));
  GT_OK(orthod_backend_normuon(R(), o.r, v.r, m, n, false, 0.05f, 1e-8f));
  expect_same("normuon per column v", &v);
  expect_rel("normuon per column o", &o, RED_REL);
  gt_pair_free(&o);
  gt_pair_free(&v);
  o = gt_pair(o0, total);
  v = gt_pair(v0, (size_t)m);
  GT_OK(orthod_backend_normuon(D(), o.d, v.d, m, n, true, 0.05f, 1e-8f));
  GT_OK(orthod_backend_normuon(R(), o.r, v.r, m, n, true, 0.05f, 1e-8f));
  expect_rel("normuon per row v", &v, RED_REL);
  expect_rel("normuon per row o", &o, RED_REL);
  gt_pair_free(&v);
  /* NAMO */
  float v1 = 0.3f;
  v = gt_pair(&v1, 1);
  gt_pair_t g = gt_pair(v0, total);
  GT_OK(orthod_backend_namo_moment(D(), v.d, g.d, total, 0.1f));
  GT_OK(orthod_backend_namo_moment(R(), v.r, g.r, total, 0.1f));
  expect_rel("namo_moment", &v, RED_REL);
  GT_OK(orthod_backend_namo_scale(D(), o.d, g.d, v.d, total, 1e-8f));
  GT_OK(orthod_backend_namo_scale(R(), o.r, g.r, v.r, total, 1e-8f));
  expect_rel("namo_scale", &o, 2 * RED_REL);
  gt_pair_free(&o);
  gt_pair_free(&v);
  gt_pair_free(&g);
  free(o0);
  free(v0);
}

/* torch.optim.AdamW: every operation elementwise, so 5 steps agree bit for bit. */
static void test_adamw(void) {
  size_t n = 100003;
  float *p0 = gt_normal(101, n), *zeros = calloc(n, sizeof *zeros);
  for (int variant = 0; variant < 4; variant++) {
    bool ams = variant & 1;
    double wd = (variant & 2) ? 0.01 : 0.0;
    gt_pair_t p = gt_pair(p0, n), m = gt_pair(zeros, n), v = gt_pair(zeros, n),
              vm = gt_pair(zeros, n);
    for (int step = 1; step <= 5; step++) {
      float *g0 = gt_normal(200 + (uint64_t)step, n);
      if (step == 3) g0[7] = bits_f(0x7fc00000u); /* NaN propagates the same way on both */
      gt_pair_t g = gt_pair(g0, n);
      orthod_adamw_args_t a = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                               .weight_decay = wd, .step = step, .amsgrad = ams};
      GT_OK(orthod_backend_adamw(D(), p.d, g.d, m.d, v.d, vm.d, n, &a));
      GT_OK(orthod_backend_adamw(R(), p.r, g.r, m.r, v.r, vm.r, n, &a));
      gt_pair_free(&g);
      free(g0);
    }
    expect_same("adamw p", &p);
    expect_same("adamw exp_avg", &m);
    expect_same("adamw exp_avg_sq", &v);
    if (ams) expect_same("adamw max_exp_avg_sq", &vm);
    gt_pair_free(&p);
    gt_pair_free(&m);
    gt_pair_free(&v);
    gt_pair_free(&vm);
  }
  free(p0);
  free(zeros);
}

/* ---- GEMM and SYRK -------------------------------------------------------------------------- */

/* Bounds of one product vs the CPU's fp32 sgemm (relative Frobenius error of C):
 *  highest: fp32 both, summation order only: ~sqrt(k)·2⁻²⁴ ≈ 1e-6 for k <= 260 -> 1e-5;
 *  high:    TF32 rounds every input to 10 explicit mantissa bits (relative 2⁻¹¹ ≈ 4.9e-4 per
 *           factor); over a random-sign sum the relative error of C stays ~1e-3 -> 5e-3;
 *  medium:  bf16-valued inputs multiply exactly; sums differ in order and both sides round C to
 *           bf16 (2⁻⁸ relative), so a few entries differ by one bf16 ulp -> 1e-2. */
static double gemm_bound(orthod_precision_t p) {
  return p == ORTHOD_PREC_HIGHEST ? 1e-5 : (p == ORTHOD_PREC_HIGH ? 5e-3 : 1e-2);
}

static void round_host_bf16(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = orthod_round_bf16(x[i]);
}

/* Compare C of both sides: inside each m x n slice within the bound (and bf16-valued for
 * medium), every element outside (row padding, gaps between slices) bit-identical to c0. */
static void check_c(const char *label, const float *cd, const float *cr, const float *c0,
                    size_t total, int64_t batch, int64_t m, int64_t n, int64_t ldc, int64_t sc,
                    orthod_precision_t prec) {
  size_t inside = (size_t)(batch * m * n);
  float *id = malloc(inside * sizeof *id), *ir = malloc(inside * sizeof *ir);
  size_t k = 0;
  bool pad_ok = true;
  for (size_t idx = 0; idx < total; idx++) {
    int64_t b = batch > 1 ? (int64_t)idx / sc : 0, rem = batch > 1 ? (int64_t)idx % sc : (int64_t)idx;
    int64_t i = rem / ldc, j = rem % ldc;
    if (b < batch && i < m && j < n) {
      id[k] = cd[idx];
      ir[k] = cr[idx];
      k++;
    } else if (pad_ok && memcmp(&cd[idx], &c0[idx], sizeof cd[idx]) != 0) {
      fprintf(stderr, "\n  %s: padding [%zu] changed: %.9g -> %.9g\n", label, idx, (double)c0[idx],
              (double)cd[idx]);
      pad_ok = false;
    }
  }
  TU_CHECK(pad_ok);
  TU_CHECK(k == inside);
  TU_CHECK(gt_rel_close(label, id, ir, inside, gemm_bound(prec)));
  if (prec == ORTHOD_PREC_MEDIUM) TU_CHECK(gt_is_bf16(label, id, inside));
  free(id);
  free(ir);
}

typedef struct {
  bool ta, tb;
  int64_t m, n, k, batch, pad;
  float alpha, beta;
  bool broadcast_a; /* stride_a = 0 */
} gemm_case;

static void run_gemm_case(const gemm_case *gc, orthod_precision_t prec, uint64_t seed) {
  int64_t ar = gc->ta ? gc->k : gc->m, acol = gc->ta ? gc->m : gc->k;
  int64_t br = gc->tb ? gc->n : gc->k, bcol = gc->tb ? gc->k : gc->n;
  int64_t lda = acol + gc->pad, ldb = bcol + gc->pad, ldc = gc->n + gc->pad;
  int64_t sa = gc->broadcast_a ? 0 : ar * lda + 3 * gc->pad, sb = br * ldb + gc->pad;
  int64_t sc = gc->m * ldc + 2 * gc->pad + 1;
  size_t na = (size_t)((gc->batch - 1) * sa + ar * lda), nb = (size_t)((gc->batch - 1) * sb + br * ldb);
  size_t nc = (size_t)((gc->batch - 1) * sc + gc->m * ldc);
  float *a = gt_normal(seed, na), *b = gt_normal(seed + 1, nb), *c0 = gt_normal(seed + 2, nc);
  if (prec == ORTHOD_PREC_MEDIUM) {
    round_host_bf16(a, na);
    round_host_bf16(b, nb);
    round_host_bf16(c0, nc);
  }
  if (gc->beta == 0.0f) /* C is not read when beta == 0: NaN must not leak into the result */
    for (int64_t bt = 0; bt < gc->batch; bt++)
      for (int64_t i = 0; i < gc->m; i++)
        for (int64_t j = 0; j < gc->n; j++) c0[bt * sc + i * ldc + j] = bits_f(0x7fc00000u);
  gt_pair_t pa = gt_pair(a, na), pb = gt_pair(b, nb), pc = gt_pair(c0, nc);
  orthod_gemm_t g = {.trans_a = gc->ta, .trans_b = gc->tb, .m = gc->m, .n = gc->n, .k = gc->k,
                     .alpha = gc->alpha, .beta = gc->beta, .lda = lda, .stride_a = sa,
                     .ldb = ldb, .stride_b = sb, .ldc = ldc, .stride_c = sc,
                     .batch = gc->batch, .precision = prec};
  g.a = pa.d;
  g.b = pb.d;
  g.c = pc.d;
  GT_OK(orthod_backend_gemm(D(), &g));
  g.a = pa.r;
  g.b = pb.r;
  g.c = pc.r;
  GT_OK(orthod_backend_gemm(R(), &g));
  float *cd, *cr;
  gt_pair_get(&pc, &cd, &cr);
  char label[160];
  snprintf(label, sizeof label, "gemm %s ta=%d tb=%d %lldx%lldx%lld batch=%lld pad=%lld a=%g b=%g%s",
           orthod_precision_name(prec), gc->ta, gc->tb, (long long)gc->m, (long long)gc->n,
           (long long)gc->k, (long long)gc->batch, (long long)gc->pad, (double)gc->alpha,
           (double)gc->beta, gc->broadcast_a ? " broadcast" : "");
  check_c(label, cd, cr, c0, nc, gc->batch, gc->m, gc->n, ldc, sc, prec);
  free(cd);
  free(cr);
  gt_pair_free(&pa);
  gt_pair_free(&pb);
  gt_pair_free(&pc);
  free(a);
  free(b);
  free(c0);
}

static void test_gemm(void) {
  static const int64_t dims[][3] = {{37, 53, 29}, {64, 64, 64}, {1, 17, 5}, {130, 7, 260}};
  static const float ab[][2] = {{1.0f, 0.0f}, {0.75f, -1.25f}, {-2.0f, 0.5f}};
  uint64_t seed = 1000;
  for (int prec = 0; prec < 3; prec++)
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++)
      for (int t = 0; t < 4; t++) {
        gemm_case gc = {.ta = t & 1, .tb = (t >> 1) & 1, .m = dims[d][0], .n = dims[d][1],
                        .k = dims[d][2], .batch = 1, .pad = 0, .alpha = ab[t % 3][0],
                        .beta = ab[t % 3][1]};
        run_gemm_case(&gc, (orthod_precision_t)prec, seed += 3);
        gc.batch = 3;
        gc.pad = 5;
        gc.alpha = ab[(t + 1) % 3][0];
        gc.beta = ab[(t + 1) % 3][1];
        run_gemm_case(&gc, (orthod_precision_t)prec, seed += 3);
        gc.broadcast_a = true;
        run_gemm_case(&gc, (orthod_precision_t)prec, seed += 3);
      }
}

static void run_syrk_case(bool trans, int64_t n, int64_t k, int64_t batch, int64_t pad, float alpha,
                          float beta, orthod_precision_t prec, uint64_t seed) {
  int64_t ar = trans ? k : n, acol = trans ? n : k;
  int64_t lda = acol + pad, ldc = n + pad, sa = ar * lda + pad, sc = n * ldc + pad + 2;
  size_t na = (size_t)((batch - 1) * sa + ar * lda), nc = (size_t)((batch - 1) * sc + n * ldc);
  float *a = gt_normal(seed, na), *c0 = gt_normal(seed + 1, nc);
  if (prec == ORTHOD_PREC_MEDIUM) {
    round_host_bf16(a, na);
    round_host_bf16(c0, nc);
  }
  for (int64_t bt = 0; bt < batch; bt++) /* C symmetric on input (NaN when it is not read) */
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j <= i; j++) {
        float v = beta == 0.0f ? bits_f(0x7fc00000u) : c0[bt * sc + i * ldc + j];
        c0[bt * sc + i * ldc + j] = v;
        c0[bt * sc + j * ldc + i] = v;
      }
  gt_pair_t pa = gt_pair(a, na), pc = gt_pair(c0, nc);
  orthod_syrk_t s = {.trans = trans, .n = n, .k = k, .alpha = alpha, .beta = beta, .lda = lda,
                     .stride_a = sa, .ldc = ldc, .stride_c = sc, .batch = batch, .precision = prec};
  s.a = pa.d;
  s.c = pc.d;
  GT_OK(orthod_backend_syrk(D(), &s));
  s.a = pa.r;
  s.c = pc.r;
  GT_OK(orthod_backend_syrk(R(), &s));
  float *cd, *cr;
  gt_pair_get(&pc, &cd, &cr);
  char label[128];
  snprintf(label, sizeof label, "syrk %s trans=%d n=%lld k=%lld batch=%lld pad=%lld beta=%g",
           orthod_precision_name(prec), trans, (long long)n, (long long)k, (long long)batch,
           (long long)pad, (double)beta);
  check_c(label, cd, cr, c0, nc, batch, n, n, ldc, sc, prec);
  bool sym = true;
  for (int64_t bt = 0; bt < batch && sym; bt++)
    for (int64_t i = 0; i < n && sym; i++)
      for (int64_t j = 0; j < i; j++) {
        const float *x = &cd[bt * sc + i * ldc + j], *y = &cd[bt * sc + j * ldc + i];
        if (memcmp(x, y, sizeof *x) != 0) {
          fprintf(stderr, "\n  %s: C[%lld][%lld] = %.9g but C[%lld][%lld] = %.9g\n", label,
                  (long long)i, (long long)j, (double)*x, (long long)j, (long long)i, (double)*y);
          sym = false;
          break;
        }
      }
  TU_CHECK(sym);
  free(cd);
  free(cr);
  gt_pair_free(&pa);
  gt_pair_free(&pc);
  free(a);
  free(c0);
}

static void test_syrk(void) {
  uint64_t seed = 5000;
  for (int prec = 0; prec < 3; prec++)
    for (int trans = 0; trans < 2; trans++) {
      run_syrk_case(trans, 45, 70, 1, 0, 1.0f, 0.0f, (orthod_precision_t)prec, seed += 2);
      run_syrk_case(trans, 45, 70, 2, 3, -1.5f, 0.5f, (orthod_precision_t)prec, seed += 2);
      run_syrk_case(trans, 100, 33, 3, 1, 2.8366f, -3.0525f, (orthod_precision_t)prec, seed += 2);
      run_syrk_case(trans, 1, 9, 1, 0, 1.0f, 0.0f, (orthod_precision_t)prec, seed += 2);
    }
}

/* ---- SVD and eigh --------------------------------------------------------------------------- */

/* Polar factor of well-conditioned matrices (σ_min/σ_max >= ~0.2 here): its perturbation is
 * ~κ·(backward error ~1e-6) for either library's SVD -> 1e-4; the nuclear norm (a sum of
 * singular values, each accurate to ~1e-6 relative) -> 1e-5. */
static void polar_case(int64_t m, int64_t n, bool square_shift, uint64_t seed) {
  size_t mn = (size_t)(m * n);
  float *a = gt_normal(seed, mn);
  if (square_shift) {
    for (size_t i = 0; i < mn; i++) a[i] *= 0.1f;
    for (int64_t i = 0; i < (m < n ? m : n); i++) a[i * n + i] += 4.0f;
  }
  gt_pair_t pa = gt_pair(a, mn), po = gt_pair(a, mn);
  float z[2] = {0};
  gt_pair_t nuc = gt_pair(z, 1);
  GT_OK(orthod_backend_polar_svd(D(), po.d, nuc.d, pa.d, m, n));
  GT_OK(orthod_backend_polar_svd(R(), po.r, nuc.r, pa.r, m, n));
  char label[64];
  snprintf(label, sizeof label, "polar_svd %lldx%lld", (long long)m, (long long)n);
  expect_rel(label, &po, 1e-4);
  expect_rel("nuclear norm", &nuc, 1e-5);
  GT_OK(orthod_backend_polar_svd(D(), po.d, NULL, pa.d, m, n)); /* nuclear is optional */
  expect_rel(label, &po, 1e-4);
  gt_pair_free(&pa);
  gt_pair_free(&po);
  gt_pair_free(&nuc);
  free(a);
}

static void test_polar_svd(void) {
  polar_case(40, 64, false, 301);
  polar_case(64, 40, false, 302);
  polar_case(48, 48, true, 303);
  polar_case(1, 30, false, 304);
  polar_case(30, 1, false, 305);
}

/* A = Q diag(1, 2, ..., n) Qᵀ with an orthogonal Q (the CPU's polar factor of a random matrix):
 * eigenvalue gaps of 1 make eigenvectors well determined (angle ~ ‖ΔA‖/gap ~ 1e-5), so each
 * eigenvector matches the CPU's up to sign with |cos| >= 1 - 1e-4, and eigenvalues agree to
 * 1e-5 of the largest. */
static void test_eigh(void) {
  int64_t n = 50;
  size_t nn = (size_t)(n * n);
  float *g = gt_normal(401, nn), *q = malloc(nn * sizeof *q), *a = malloc(nn * sizeof *a);
  float *gd = gt_put(R(), g, nn), *qd = gt_put(R(), g, nn);
  GT_OK(orthod_backend_polar_svd(R(), qd, NULL, gd, n, n));
  gt_get(R(), q, qd, (size_t)nn);
  gt_free(R(), gd);
  gt_free(R(), qd);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j <= i; j++) {
      double s = 0.0;
      for (int64_t l = 0; l < n; l++) s += (double)q[i * n + l] * (double)(l + 1) * (double)q[j * n + l];
      a[i * n + j] = a[j * n + i] = (float)s;
    }
  gt_pair_t pa = gt_pair(a, nn), pw = gt_pair(a, (size_t)n), pq = gt_pair(a, nn);
  GT_OK(orthod_backend_eigh(D(), pw.d, pq.d, pa.d, n));
  GT_OK(orthod_backend_eigh(R(), pw.r, pq.r, pa.r, n));
  expect_rel("eigh eigenvalues", &pw, 1e-5);
  float *wd, *wr, *vd, *vr;
  gt_pair_get(&pw, &wd, &wr);
  gt_pair_get(&pq, &vd, &vr);
  for (int64_t j = 0; j + 1 < n; j++) TU_CHECK(wd[j] >= wd[j + 1]); /* descending */
  for (int64_t j = 0; j < n; j++) {
    double dot = 0.0;
    for (int64_t i = 0; i < n; i++) dot += (double)vd[i * n + j] * (double)vr[i * n + j];
    if (!(fabs(dot) >= 1.0 - 1e-4)) {
      fprintf(stderr, "\n  eigh: eigenvector %lld: |cos| = %.9f (λ %.6g)\n", (long long)j, fabs(dot),
              (double)wd[j]);
      CU_FAIL("eigenvector differs");
      break;
    }
  }
  free(wd);
  free(wr);
  free(vd);
  free(vr);
  gt_pair_free(&pa);
  gt_pair_free(&pw);
  gt_pair_free(&pq);
  free(g);
  free(q);
  free(a);
}

/* ---- memory, errors, threads ---------------------------------------------------------------- */

/* The configured limit, then the device itself: an allocation far beyond any GPU's memory fails
 * with E_NOMEM (what the daemon answers as RESOURCE_EXHAUSTED), and the backend keeps working. */
static void test_memory(void) {
  orthod_backend_t *be = D();
  size_t used = orthod_backend_memory_used(be);
  orthod_backend_set_memory_limit(be, used + ((size_t)1 << 20));
  float *p = NULL;
  TU_EXPECT_ERR(ORTHOD_E_NOMEM, orthod_backend_alloc(be, (size_t)1 << 19, &p)); /* 2 MiB */
  CU_ASSERT_PTR_NULL(p);
  GT_OK(orthod_backend_alloc(be, (size_t)1 << 16, &p)); /* 256 KiB fits */
  orthod_backend_free(be, p);
  orthod_backend_set_memory_limit(be, 0);

  /* (not in self-check mode: a sanitizer's host allocator aborts on such a request) */
  if (!gt_selfcheck()) {
    p = NULL;
    TU_EXPECT_ERR(ORTHOD_E_NOMEM, orthod_backend_alloc(be, (size_t)1 << 50, &p)); /* 4 PiB */
    CU_ASSERT_PTR_NULL(p);
    TU_EXPECT_DETAIL("out of device memory");
    CU_ASSERT_EQUAL(orthod_backend_memory_used(be), used);
  }
  /* and then everything works: allocation, transfer, a kernel, a GEMM, a read */
  size_t n = 4096;
  float *x = gt_normal(501, n), *y = malloc(n * sizeof *y);
  float *d = gt_put(be, x, n);
  GT_OK(orthod_backend_scale(be, d, 2.0f, n));
  /* A = d[0, 1024) (32 x 32), B = d[2048, 2560) (32 x 16), C = d[3072, 3584) (32 x 16) */
  orthod_gemm_t g = {.m = 32, .n = 16, .k = 32, .alpha = 1.0f, .a = d, .lda = 32, .b = d + 2048,
                     .ldb = 16, .c = d + 3072, .ldc = 16, .batch = 1};
  GT_OK(orthod_backend_gemm(be, &g));
  gt_get(be, y, d, n);
  for (size_t i = 0; i < 2048; i++)
    if (y[i] != 2.0f * x[i]) {
      CU_FAIL("scale after an out-of-memory failure");
      break;
    }
  gt_free(be, d);
  free(x);
  free(y);

  /* scratch cycles with kernels in between: blocks are reused in stream order */
  for (int cycle = 0; cycle < 20; cycle++) {
    size_t mark = orthod_backend_scratch_mark(be);
    float *s1 = NULL, *s2 = NULL;
    GT_OK(orthod_backend_scratch(be, 1000 + (size_t)cycle * 50000, &s1));
    GT_OK(orthod_backend_scratch(be, 70000, &s2));
    GT_OK(orthod_backend_zero(be, s1, 1000));
    GT_OK(orthod_backend_zero(be, s2, 70000));
    orthod_backend_scratch_reset(be, mark);
  }
  GT_OK(orthod_backend_sync(be));
}

static void test_create_errors(void) {
  if (gt_selfcheck()) return;
  orthod_backend_t *be = NULL;
  orthod_backend_opts_t o = {.device = -1};
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_create_cuda(&o, &be));
  CU_ASSERT_PTR_NULL(be);
  o.device = orthod_backend_cuda_device_count();
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_create_cuda(&o, &be));
  TU_EXPECT_DETAIL("does not exist");
  CU_ASSERT_PTR_NULL(be);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_create_cuda(NULL, NULL));
  CU_ASSERT_STRING_EQUAL(orthod_backend_name(D()), "cuda");
  char buf[256];
  GT_OK(orthod_backend_cuda_describe(0, buf, sizeof buf));
  CU_ASSERT_PTR_NOT_NULL(strstr(buf, "sm_"));
  TU_EXPECT_ERR(ORTHOD_E_UNSUPPORTED, orthod_backend_cuda_describe(o.device, buf, sizeof buf));
}

typedef struct {
  float *d;
  size_t n;
  orthod_err_t err;
} thread_job;

static void *other_thread(void *arg) {
  thread_job *j = arg;
  j->err = orthod_backend_scale(D(), j->d, 3.0f, j->n);
  if (j->err == ORTHOD_OK) j->err = orthod_backend_sync(D());
  return NULL;
}

/* The daemon creates the backend on its device thread, but nothing stops a caller from using it
 * on another thread (one at a time): each call makes the device current. */
static void test_other_thread(void) {
  size_t n = 1000;
  float *x = gt_normal(601, n), *y = malloc(n * sizeof *y);
  thread_job j = {.d = gt_put(D(), x, n), .n = n, .err = ORTHOD_E_BACKEND};
  pthread_t t;
  CU_ASSERT_EQUAL(pthread_create(&t, NULL, other_thread, &j), 0);
  pthread_join(t, NULL);
  CU_ASSERT_EQUAL(j.err, ORTHOD_OK);
  gt_get(D(), y, j.d, n);
  for (size_t i = 0; i < n; i++)
    if (y[i] != x[i] * 3.0f) {
      CU_FAIL("scale from another thread");
      break;
    }
  gt_free(D(), j.d);
  free(x);
  free(y);
}

int main(void) {
  static const tu_test_t tests[] = {
      {"conversions: specials, every 16-bit pattern, random bits", test_conversions},
      {"transfers: large, chunked, queued, every dtype", test_transfers_large},
      {"axpy, scale, lerp, copy, round_bf16, zero, scale_by (bitwise)", test_elementwise},
      {"transpose (bitwise)", test_transpose},
      {"norm and dot", test_norm_dot},
      {"exact sums across block boundaries, 70000 slices", test_exact_sums},
      {"normalize (eps, zero slice, in double)", test_normalize},
      {"count_nonfinite", test_count_nonfinite},
      {"hooks: hyperball, radial brake, relative update", test_hooks},
      {"second moments: adamuon, normuon, namo", test_moments},
      {"adamw (bitwise, 5 steps)", test_adamw},
      {"gemm: every precision, transpose, stride, padding, broadcast", test_gemm},
      {"syrk: every precision, exact symmetry", test_syrk},
      {"polar_svd", test_polar_svd},
      {"eigh", test_eigh},
      {"memory limit, device out of memory, scratch", test_memory},
      {"create errors and describe", test_create_errors},
      {"use from another thread", test_other_thread},
      {NULL, NULL},
  };
  return gt_main("cuda_backend", tests);
}
