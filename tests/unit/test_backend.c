/* test_backend.c — the backend wrappers (validation, accounting, scratch arena) and every kernel
 * of the backend under test against straightforward double computations or, where the spec asks
 * for bit parity, against the same fp32 operation order computed here. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/backend.h"
#include "orthod/tensor.h"
#include "testutil.h"

/* ---- helpers -------------------------------------------------------------------------------- */

static orthod_backend_t *BE(void) { return tu_backend(); }

static float *host_normal(uint64_t seed, size_t n) {
  tu_rng_t r;
  tu_rng_seed(&r, seed);
  float *x = malloc(n * sizeof *x);
  tu_fill_normal(&r, x, n);
  return x;
}

/* fp32 GEMM error bound for N(0,1) data: |err| <= k·2⁻²⁴·Σ|a||b| ≈ k²·2⁻²⁴·E|a||b|; for k <= 64
 * that is < 2.5e-4 in the worst case and ~1e-5 typically. */
#define GEMM_ATOL 2.5e-4

/* double reference of C = alpha·op(A)·op(B) + beta·C0 for one stored layout */
static void ref_gemm(double *out, const orthod_gemm_t *g, const float *a, const float *b,
                     const float *c0) {
  for (int64_t bt = 0; bt < g->batch; bt++)
    for (int64_t i = 0; i < g->m; i++)
      for (int64_t j = 0; j < g->n; j++) {
        double s = 0.0;
        for (int64_t l = 0; l < g->k; l++) {
          double av = g->trans_a ? a[bt * g->stride_a + l * g->lda + i] : a[bt * g->stride_a + i * g->lda + l];
          double bv = g->trans_b ? b[bt * g->stride_b + j * g->ldb + l] : b[bt * g->stride_b + l * g->ldb + j];
          s += av * bv;
        }
        size_t ci = (size_t)(bt * g->stride_c + i * g->ldc + j);
        out[ci] = g->alpha * s + (g->beta != 0.0f ? g->beta * (double)c0[ci] : 0.0);
      }
}

/* Compare only the m x n entries of each batch slice of a strided C; the padding must be
 * untouched (equal to c0). */
static bool check_strided(const char *label, const float *c, const double *ref, const float *c0,
                          int64_t batch, int64_t m, int64_t n, int64_t ldc, int64_t stride,
                          size_t total, double atol, double rtol) {
  bool ok = true;
  for (size_t idx = 0; idx < total; idx++) {
    int64_t bt = (int64_t)idx / stride, rem = (int64_t)idx % stride;
    int64_t i = rem / ldc, j = rem % ldc;
    bool inside = bt < batch && i < m && j < n;
    double want = inside ? ref[idx] : (double)c0[idx];
    double tol = inside ? atol + rtol * fabs(want) : 0.0;
    if (!inside && memcmp(&c[idx], &c0[idx], sizeof c[idx]) == 0) continue; /* padding (NaN too) */
    if (!(fabs((double)c[idx] - want) <= tol)) {
      fprintf(stderr, "\n  %s: [%zu] (b%lld,%lld,%lld%s) got %.9g want %.9g\n", label, idx,
              (long long)bt, (long long)i, (long long)j, inside ? "" : " padding", (double)c[idx],
              want);
      ok = false;
      break;
    }
  }
  return ok;
}

static bool is_bf16_valued(const float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (orthod_round_bf16(x[i]) != x[i]) {
      fprintf(stderr, "\n  [%zu] = %a is not a bf16 value\n", i, (double)x[i]);
      return false;
    }
  return true;
}

/* ---- memory and scratch --------------------------------------------------------------------- */

static void test_memory_accounting(void) {
  orthod_backend_t *be = BE();
  CU_ASSERT_STRING_EQUAL(orthod_backend_name(be), "cpu");
  size_t base = orthod_backend_memory_used(be);
  enum { N = 300 };
  float *p[N];
  size_t expect = base;
  tu_rng_t r;
  tu_rng_seed(&r, 11);
  for (int i = 0; i < N; i++) {
    size_t n = 1 + (size_t)(tu_rng_u64(&r) % 5000);
    TU_OK(orthod_backend_alloc(be, n, &p[i]));
    CU_ASSERT_EQUAL((uintptr_t)p[i] % 64, 0);
    p[i][0] = (float)i; /* host memory on the CPU backend: touching it must be valid */
    p[i][n - 1] = (float)i;
    expect += n * sizeof(float);
  }
  CU_ASSERT_EQUAL(orthod_backend_memory_used(be), expect);
  /* free in a scrambled order (exercises the map's deletion), accounting each time */
  for (int s = 0; s < N; s++) {
    int i = (s * 7) % N; /* 7 is coprime with 300: a permutation */
    size_t before = orthod_backend_memory_used(be);
    float *q = p[i];
    orthod_backend_free(be, q);
    CU_ASSERT_TRUE(orthod_backend_memory_used(be) < before);
  }
  CU_ASSERT_EQUAL(orthod_backend_memory_used(be), base);
  orthod_backend_free(be, NULL); /* no-op */
  CU_ASSERT_EQUAL(orthod_backend_memory_used(be), base);
}

static void test_memory_limit(void) {
  orthod_backend_t *be = BE();
  size_t base = orthod_backend_memory_used(be);
  float *a = NULL, *b = NULL;
  orthod_backend_set_memory_limit(be, base + 4096);
  CU_ASSERT_EQUAL(orthod_backend_memory_limit(be), base + 4096);
  TU_OK(orthod_backend_alloc(be, 1000, &a)); /* 4000 bytes fit */
  CU_ASSERT_EQUAL(orthod_backend_memory_used(be), base + 4000);
  TU_EXPECT_ERR(ORTHOD_E_NOMEM, orthod_backend_alloc(be, 25, &b)); /* 4100 > 4096 */
  TU_EXPECT_DETAIL("would use");
  TU_EXPECT_DETAIL("limit");
  char want[96];
  snprintf(want, sizeof want, "would use %zu bytes, limit %zu", base + 4100, base + 4096);
  TU_EXPECT_DETAIL(want);
  CU_ASSERT_PTR_NULL(b);
  CU_ASSERT_EQUAL(orthod_backend_memory_used(be), base + 4000);
  TU_OK(orthod_backend_alloc(be, 24, &b)); /* exactly at the limit */
  orthod_backend_free(be, b);
  orthod_backend_free(be, a);
  CU_ASSERT_EQUAL(orthod_backend_memory_used(be), base);
  /* scratch is accounted against the limit too */
  orthod_backend_set_memory_limit(be, base + 1024);
  float *s = NULL;
  size_t mark = orthod_backend_scratch_mark(be);
  TU_EXPECT_ERR(ORTHOD_E_NOMEM, orthod_backend_scratch(be, 1u << 20, &s));
  TU_EXPECT_DETAIL("limit");
  orthod_backend_scratch_reset(be, mark);
  orthod_backend_set_memory_limit(be, 0);
  CU_ASSERT_EQUAL(orthod_backend_memory_limit(be), 0);
  /* a huge request fails cleanly without a limit too */
  TU_EXPECT_ERR(ORTHOD_E_OVERFLOW, orthod_backend_alloc(be, SIZE_MAX / 2, &a));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_alloc(be, 0, &a));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_alloc(be, 4, NULL));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_alloc(NULL, 4, &a));
  CU_ASSERT_EQUAL(orthod_backend_memory_used(be), base);
}

static void test_scratch(void) {
  orthod_backend_t *be = BE();
  size_t base = orthod_backend_memory_used(be);
  orthod_backend_scratch_reset(be, 0);
  size_t m0 = orthod_backend_scratch_mark(be);
  CU_ASSERT_EQUAL(m0, 0);
  float *s1 = NULL, *s2 = NULL, *s3 = NULL, *s3b = NULL, *big = NULL;
  TU_OK(orthod_backend_scratch(be, 100, &s1));
  TU_OK(orthod_backend_scratch(be, 1000, &s2));
  CU_ASSERT_EQUAL((uintptr_t)s1 % 64, 0);
  CU_ASSERT_EQUAL((uintptr_t)s2 % 64, 0);
  CU_ASSERT_TRUE(s2 >= s1 + 100 || s1 >= s2 + 1000); /* disjoint */
  for (int i = 0; i < 100; i++) s1[i] = (float)i;
  for (int i = 0; i < 1000; i++) s2[i] = (float)-i;
  size_t m1 = orthod_backend_scratch_mark(be);
  CU_ASSERT_TRUE(m1 > m0);
  TU_OK(orthod_backend_scratch(be, 10, &s3));
  orthod_backend_scratch_reset(be, m1);
  CU_ASSERT_EQUAL(orthod_backend_scratch_mark(be), m1);
  TU_OK(orthod_backend_scratch(be, 10, &s3b));
  CU_ASSERT_PTR_EQUAL(s3, s3b); /* released space is reused */
  /* larger than the first block: a new block; earlier pointers do not move */
  TU_OK(orthod_backend_scratch(be, 300000, &big));
  CU_ASSERT_EQUAL((uintptr_t)big % 64, 0);
  for (int i = 0; i < 300000; i++) big[i] = 1.0f;
  bool intact = true;
  for (int i = 0; i < 100; i++) intact &= s1[i] == (float)i;
  for (int i = 0; i < 1000; i++) intact &= s2[i] == (float)-i;
  CU_ASSERT_TRUE(intact);
  CU_ASSERT_TRUE(orthod_backend_memory_used(be) >= base + 300000 * sizeof(float));
  orthod_backend_scratch_reset(be, m1);
  float *again = NULL;
  TU_OK(orthod_backend_scratch(be, 300000, &again));
  CU_ASSERT_PTR_EQUAL(again, big); /* the cached block is reused, not reallocated */
  orthod_backend_scratch_reset(be, 0);
  /* steady state: the same pattern repeated does not grow memory */
  size_t used_after_first = 0;
  for (int cycle = 0; cycle < 150; cycle++) {
    float *a = NULL, *b = NULL, *c = NULL;
    TU_OK(orthod_backend_scratch(be, 100, &a));
    TU_OK(orthod_backend_scratch(be, 1000, &b));
    TU_OK(orthod_backend_scratch(be, 300000, &c));
    c[299999] = 2.0f;
    orthod_backend_scratch_reset(be, 0);
    if (cycle == 1) used_after_first = orthod_backend_memory_used(be);
    if (cycle > 1 && orthod_backend_memory_used(be) != used_after_first) {
      CU_FAIL("scratch memory changed in a steady cycle");
      break;
    }
  }
  /* usage held by the arena is bounded: one cycle needs ~1.2 MB; the cache stays below 4x */
  CU_ASSERT_TRUE(orthod_backend_memory_used(be) - base <= 4 * (300000 + 1100) * sizeof(float) + (1 << 20));
  /* a stale mark past the current position changes nothing */
  orthod_backend_scratch_reset(be, 1u << 30);
  CU_ASSERT_EQUAL(orthod_backend_scratch_mark(be), 0);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_scratch(be, 0, &s1));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_scratch(be, 1, NULL));
}

/* ---- transfers ------------------------------------------------------------------------------ */

static void test_transfers(void) {
  orthod_backend_t *be = BE();
  enum { N = 257 };
  float *h = host_normal(3, N), back[N];
  uint16_t h16[N], out16[N];
  for (int i = 0; i < N; i++) h16[i] = orthod_f32_to_bf16(h[i] * 1000.0f);
  float *d = tu_dev_zeros(N);
  TU_OK(orthod_backend_upload(be, d, h16, ORTHOD_DTYPE_BF16, N));
  TU_OK(orthod_backend_sync(be));
  tu_to_host(back, d, N);
  bool ok = true;
  for (int i = 0; i < N; i++) ok &= back[i] == orthod_bf16_to_f32(h16[i]);
  CU_ASSERT_TRUE(ok);
  for (int i = 0; i < N; i++) h16[i] = orthod_f32_to_f16(h[i]);
  TU_OK(orthod_backend_upload(be, d, h16, ORTHOD_DTYPE_F16, N));
  tu_to_host(back, d, N);
  ok = true;
  for (int i = 0; i < N; i++) ok &= back[i] == orthod_f16_to_f32(h16[i]);
  CU_ASSERT_TRUE(ok);
  TU_OK(orthod_backend_upload(be, d, h, ORTHOD_DTYPE_F32, N));
  TU_OK(orthod_backend_download(be, out16, ORTHOD_DTYPE_BF16, d, N));
  TU_OK(orthod_backend_sync(be));
  ok = true;
  for (int i = 0; i < N; i++) ok &= out16[i] == orthod_f32_to_bf16(h[i]);
  CU_ASSERT_TRUE(ok);
  TU_OK(orthod_backend_download(be, back, ORTHOD_DTYPE_F32, d, N));
  CU_ASSERT_TRUE(tu_bitequal("download f32", back, h, N));
  TU_EXPECT_ERR(ORTHOD_E_DTYPE, orthod_backend_upload(be, d, h, (orthod_dtype_t)9, N));
  TU_EXPECT_ERR(ORTHOD_E_DTYPE, orthod_backend_download(be, back, (orthod_dtype_t)-1, d, N));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_upload(be, NULL, h, ORTHOD_DTYPE_F32, N));
  TU_OK(orthod_backend_upload(be, d, NULL, ORTHOD_DTYPE_F32, 0)); /* empty transfer */
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_read(be, NULL, d, N));
  tu_dev_free(d);
  free(h);
}

/* ---- GEMM ----------------------------------------------------------------------------------- */

static void run_gemm_case(bool ta, bool tb, int64_t batch, float beta, orthod_precision_t prec,
                          uint64_t seed) {
  const int64_t m = 23, n = 17, k = 31;
  orthod_gemm_t g = {.trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k, .alpha = 0.75f,
                     .beta = beta, .batch = batch, .precision = prec};
  int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
  g.lda = ac + 3;            /* padded rows */
  g.ldb = bc + 1;
  g.ldc = n + 2;
  g.stride_a = ar * g.lda + 5; /* padded slices */
  g.stride_b = br * g.ldb + 7;
  g.stride_c = m * g.ldc + 4;
  size_t na = (size_t)(batch * g.stride_a), nb = (size_t)(batch * g.stride_b),
         nc = (size_t)(batch * g.stride_c);
  float *a = host_normal(seed, na), *b = host_normal(seed + 1, nb), *c0 = host_normal(seed + 2, nc);
  if (prec == ORTHOD_PREC_MEDIUM) /* medium expects bf16 inputs */
    for (size_t i = 0; i < na; i++) a[i] = orthod_round_bf16(a[i]);
  if (prec == ORTHOD_PREC_MEDIUM)
    for (size_t i = 0; i < nb; i++) b[i] = orthod_round_bf16(b[i]);
  if (beta == 0.0f) /* C is not read when beta == 0: garbage (NaN) must not leak */
    for (size_t i = 0; i < nc; i += 2) c0[i] = NAN;
  float *da = tu_dev_from(a, na), *db = tu_dev_from(b, nb), *dc = tu_dev_from(c0, nc);
  g.a = da;
  g.b = db;
  g.c = dc;
  TU_OK(orthod_backend_gemm(BE(), &g));
  float *c = malloc(nc * sizeof *c);
  double *ref = calloc(nc, sizeof *ref);
  tu_to_host(c, dc, nc);
  ref_gemm(ref, &g, a, b, c0);
  char label[96];
  snprintf(label, sizeof label, "gemm ta=%d tb=%d batch=%lld beta=%g prec=%d", ta, tb,
           (long long)batch, (double)beta, (int)prec);
  /* medium: one bf16 rounding of the output, relative 2⁻⁹ (half an ulp of 8 bits) */
  double rtol = prec == ORTHOD_PREC_MEDIUM ? 0x1p-8 : 1e-5;
  CU_ASSERT_TRUE(check_strided(label, c, ref, c0, batch, m, n, g.ldc, g.stride_c, nc, GEMM_ATOL, rtol));
  if (prec == ORTHOD_PREC_MEDIUM) {
    bool ok = true;
    for (int64_t bt = 0; bt < batch; bt++)
      for (int64_t i = 0; i < m; i++) ok &= is_bf16_valued(c + bt * g.stride_c + i * g.ldc, (size_t)n);
    CU_ASSERT_TRUE(ok);
  }
  tu_dev_free(da);
  tu_dev_free(db);
  tu_dev_free(dc);
  free(a);
  free(b);
  free(c0);
  free(c);
  free(ref);
}

static void test_gemm(void) {
  uint64_t seed = 100;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      run_gemm_case(ta, tb, 1, 0.0f, ORTHOD_PREC_HIGHEST, seed += 3);
      run_gemm_case(ta, tb, 3, 0.5f, ORTHOD_PREC_HIGHEST, seed += 3);
      run_gemm_case(ta, tb, 2, -1.25f, ORTHOD_PREC_HIGH, seed += 3);
      run_gemm_case(ta, tb, 2, 0.5f, ORTHOD_PREC_MEDIUM, seed += 3);
    }
}

static void test_gemm_broadcast(void) {
  /* stride 0 on B: the same B for every slice (allowed: operands are only read) */
  const int64_t m = 8, n = 5, k = 6, batch = 3;
  float *a = host_normal(7, (size_t)(batch * m * k)), *b = host_normal(8, (size_t)(k * n));
  float c0[3 * 8 * 5] = {0};
  float *da = tu_dev_from(a, (size_t)(batch * m * k)), *db = tu_dev_from(b, (size_t)(k * n));
  float *dc = tu_dev_zeros((size_t)(batch * m * n));
  orthod_gemm_t g = {.m = m, .n = n, .k = k, .alpha = 1.0f, .beta = 0.0f, .a = da, .lda = k,
                     .stride_a = m * k, .b = db, .ldb = n, .stride_b = 0, .c = dc, .ldc = n,
                     .stride_c = m * n, .batch = batch, .precision = ORTHOD_PREC_HIGHEST};
  TU_OK(orthod_backend_gemm(BE(), &g));
  float c[3 * 8 * 5];
  double ref[3 * 8 * 5];
  tu_to_host(c, dc, (size_t)(batch * m * n));
  ref_gemm(ref, &g, a, b, c0);
  CU_ASSERT_TRUE(tu_allclose_d("gemm stride_b=0", c, ref, (size_t)(batch * m * n), GEMM_ATOL, 1e-5));
  tu_dev_free(da);
  tu_dev_free(db);
  tu_dev_free(dc);
  free(a);
  free(b);
}

static void test_gemm_invalid(void) {
  orthod_backend_t *be = BE();
  float *a = tu_dev_zeros(64), *b = tu_dev_zeros(64), *c = tu_dev_zeros(64);
  orthod_gemm_t ok = {.m = 4, .n = 4, .k = 4, .alpha = 1.0f, .a = a, .lda = 4, .b = b, .ldb = 4,
                      .c = c, .ldc = 4, .batch = 1, .precision = ORTHOD_PREC_HIGHEST};
  TU_OK(orthod_backend_gemm(be, &ok));
  orthod_gemm_t g = ok;
  g.a = NULL;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_gemm(be, &g));
  TU_EXPECT_DETAIL("a is NULL");
  g = ok;
  g.m = 0;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_gemm(be, &g));
  TU_EXPECT_DETAIL("m=0");
  g = ok;
  g.k = -3;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_gemm(be, &g));
  g = ok;
  g.lda = 3;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_gemm(be, &g));
  TU_EXPECT_DETAIL("lda 3 < 4");
  g = ok; /* transposed B is n x k: ldb must cover k */
  g.k = 5;
  g.trans_b = true;
  g.lda = 5;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_gemm(be, &g));
  TU_EXPECT_DETAIL("ldb 4 < 5");
  g = ok;
  g.batch = 0;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_gemm(be, &g));
  TU_EXPECT_DETAIL("batch 0");
  g = ok;
  g.batch = 2;
  g.stride_a = g.stride_b = 16;
  g.stride_c = 10; /* slices of C would overlap */
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_gemm(be, &g));
  TU_EXPECT_DETAIL("stride_c");
  g.stride_a = -1;
  g.stride_c = 16;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_gemm(be, &g));
  g = ok;
  g.c = a + 8; /* C overlapping A */
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_gemm(be, &g));
  TU_EXPECT_DETAIL("overlaps");
  g = ok;
  g.precision = (orthod_precision_t)7;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_gemm(be, &g));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_gemm(be, NULL));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_gemm(NULL, &ok));
  /* syrk */
  orthod_syrk_t sk = {.n = 4, .k = 4, .alpha = 1.0f, .a = a, .lda = 4, .c = c, .ldc = 4,
                      .batch = 1, .precision = ORTHOD_PREC_HIGHEST};
  TU_OK(orthod_backend_syrk(be, &sk));
  orthod_syrk_t s = sk;
  s.trans = true;
  s.n = 6; /* A is k x n = 4 x 6: lda 4 < 6 */
  s.ldc = 6;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_syrk(be, &s));
  TU_EXPECT_DETAIL("lda 4 < 6");
  s = sk;
  s.ldc = 3;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_syrk(be, &s));
  s = sk;
  s.c = a;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_syrk(be, &s));
  s = sk;
  s.n = 0;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_syrk(be, &s));
  s = sk;
  s.batch = -1;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_syrk(be, &s));
  tu_dev_free(a);
  tu_dev_free(b);
  tu_dev_free(c);
}

/* ---- SYRK ----------------------------------------------------------------------------------- */

static void run_syrk_case(bool trans, int64_t batch, float beta, orthod_precision_t prec,
                          uint64_t seed) {
  const int64_t n = 37, k = 45; /* n > 32: several mirror tiles */
  orthod_syrk_t s = {.trans = trans, .n = n, .k = k, .alpha = 1.5f, .beta = beta, .batch = batch,
                     .precision = prec};
  int64_t ar = trans ? k : n, ac = trans ? n : k;
  s.lda = ac + 2;
  s.ldc = n + 3;
  s.stride_a = ar * s.lda + 1;
  s.stride_c = n * s.ldc + 6;
  size_t na = (size_t)(batch * s.stride_a), nc = (size_t)(batch * s.stride_c);
  float *a = host_normal(seed, na), *c0 = host_normal(seed + 1, nc);
  if (prec == ORTHOD_PREC_MEDIUM)
    for (size_t i = 0; i < na; i++) a[i] = orthod_round_bf16(a[i]);
  /* C symmetric on input (required when beta != 0) */
  for (int64_t bt = 0; bt < batch; bt++)
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < i; j++)
        c0[bt * s.stride_c + j * s.ldc + i] = c0[bt * s.stride_c + i * s.ldc + j];
  float *da = tu_dev_from(a, na), *dc = tu_dev_from(c0, nc);
  s.a = da;
  s.c = dc;
  TU_OK(orthod_backend_syrk(BE(), &s));
  float *c = malloc(nc * sizeof *c);
  double *ref = calloc(nc, sizeof *ref);
  tu_to_host(c, dc, nc);
  /* the same product as a GEMM: op(A) op(A)ᵀ with op(A) n x k */
  orthod_gemm_t g = {.trans_a = trans, .trans_b = !trans, .m = n, .n = n, .k = k,
                     .alpha = s.alpha, .beta = beta, .lda = s.lda, .stride_a = s.stride_a,
                     .ldb = s.lda, .stride_b = s.stride_a, .ldc = s.ldc, .stride_c = s.stride_c,
                     .batch = batch};
  ref_gemm(ref, &g, a, a, c0);
  char label[96];
  snprintf(label, sizeof label, "syrk trans=%d batch=%lld beta=%g prec=%d", trans,
           (long long)batch, (double)beta, (int)prec);
  double rtol = prec == ORTHOD_PREC_MEDIUM ? 0x1p-8 : 1e-5; /* as for gemm */
  CU_ASSERT_TRUE(check_strided(label, c, ref, c0, batch, n, n, s.ldc, s.stride_c, nc, GEMM_ATOL, rtol));
  bool sym = true, bf = true;
  for (int64_t bt = 0; bt < batch; bt++)
    for (int64_t i = 0; i < n; i++) {
      for (int64_t j = 0; j < n; j++)
        sym &= c[bt * s.stride_c + i * s.ldc + j] == c[bt * s.stride_c + j * s.ldc + i];
      if (prec == ORTHOD_PREC_MEDIUM) bf &= is_bf16_valued(c + bt * s.stride_c + i * s.ldc, (size_t)n);
    }
  CU_ASSERT_TRUE(sym); /* exactly symmetric: one triangle is copied */
  CU_ASSERT_TRUE(bf);
  tu_dev_free(da);
  tu_dev_free(dc);
  free(a);
  free(c0);
  free(c);
  free(ref);
}

static void test_syrk(void) {
  uint64_t seed = 500;
  for (int t = 0; t < 2; t++) {
    run_syrk_case(t, 1, 0.0f, ORTHOD_PREC_HIGHEST, seed += 2);
    run_syrk_case(t, 3, 0.25f, ORTHOD_PREC_HIGHEST, seed += 2);
    run_syrk_case(t, 2, -0.5f, ORTHOD_PREC_MEDIUM, seed += 2);
    run_syrk_case(t, 2, 0.0f, ORTHOD_PREC_MEDIUM, seed += 2);
  }
}

/* ---- elementwise ---------------------------------------------------------------------------- */

static float bits_to_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static void test_round_bf16(void) {
  enum { N = 4096 };
  static float x[N], y[N];
  tu_rng_t r;
  tu_rng_seed(&r, 21);
  size_t i = 0;
  const uint32_t special[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                              0x7f800001u, 0xff812345u, 0x7f7fffffu, 0x7f7f8000u, 0x3f808000u,
                              0x3f818000u, 0x3f808001u, 0x00008000u, 0x00018000u, 0x007fffffu};
  for (; i < sizeof special / sizeof special[0]; i++) x[i] = bits_to_f32(special[i]);
  for (; i < N; i++) x[i] = bits_to_f32((uint32_t)tu_rng_u64(&r)); /* any bit pattern */
  float *d = tu_dev_from(x, N);
  TU_OK(orthod_backend_round_bf16(BE(), d, N));
  tu_to_host(y, d, N);
  bool ok = true;
  for (i = 0; i < N; i++) {
    float want = orthod_round_bf16(x[i]);
    if (memcmp(&want, &y[i], sizeof want) != 0) { /* bit-exact, NaN payloads included */
      fprintf(stderr, "\n  round_bf16 [%zu] %a: got %a want %a\n", i, (double)x[i], (double)y[i],
              (double)want);
      ok = false;
      break;
    }
  }
  CU_ASSERT_TRUE(ok);
  tu_dev_free(d);
}

static float lerp_ref(float s, float e, float w) {
  return fabsf(w) < 0.5f ? s + w * (e - s) : fmaf(w - 1.0f, e - s, e);
}

static void test_lerp(void) {
  enum { N = 1003 };
  float *s = host_normal(31, N), *e = host_normal(32, N), out[N], want[N];
  float *ds = tu_dev_from(s, N), *de = tu_dev_from(e, N), *dout = tu_dev_zeros(N);
  const float ws[] = {(float)(1.0 - 0.95), 0.3f, -0.2f, 0.5f, (float)0.95, 0.7f, 1.0f, 0.0f, -0.75f};
  for (size_t t = 0; t < sizeof ws / sizeof ws[0]; t++) {
    TU_OK(orthod_backend_lerp(BE(), dout, ds, de, ws[t], N));
    tu_to_host(out, dout, N);
    for (int i = 0; i < N; i++) want[i] = lerp_ref(s[i], e[i], ws[t]);
    char label[64];
    snprintf(label, sizeof label, "lerp w=%g", (double)ws[t]);
    CU_ASSERT_TRUE(tu_bitequal(label, out, want, N));
  }
  /* w = 1 returns e exactly (momentum 0 reproduces the gradient), w = 0 returns s */
  TU_OK(orthod_backend_lerp(BE(), dout, ds, de, 1.0f, N));
  tu_to_host(out, dout, N);
  CU_ASSERT_TRUE(tu_bitequal("lerp w=1 is e", out, e, N));
  TU_OK(orthod_backend_lerp(BE(), dout, ds, de, 0.0f, N));
  tu_to_host(out, dout, N);
  CU_ASSERT_TRUE(tu_bitequal("lerp w=0 is s", out, s, N));
  /* in place (out aliases s), as M.lerp_(G, 1-β) */
  TU_OK(orthod_backend_lerp(BE(), ds, ds, de, 0.9f, N));
  tu_to_host(out, ds, N);
  for (int i = 0; i < N; i++) want[i] = lerp_ref(s[i], e[i], 0.9f);
  CU_ASSERT_TRUE(tu_bitequal("lerp in place", out, want, N));
  /* the fma branch differs from the unfused form on some inputs: make sure one case is hit */
  float s1 = 0x1.5c5a2cp-1f, e1 = -0x1.b09b88p-3f, w1 = 0.7f;
  float fused = lerp_ref(s1, e1, w1);
  volatile float diff = e1 - s1, prod = (w1 - 1.0f) * diff;
  CU_ASSERT_TRUE(e1 + prod != fused); /* this input tells the two forms apart */
  float *d1 = tu_dev_from(&s1, 1), *d2 = tu_dev_from(&e1, 1), got1;
  TU_OK(orthod_backend_lerp(BE(), d1, d1, d2, w1, 1));
  tu_to_host(&got1, d1, 1);
  CU_ASSERT_TRUE(tu_bitequal("lerp fma single", &got1, &fused, 1));
  tu_dev_free(d1);
  tu_dev_free(d2);
  tu_dev_free(ds);
  tu_dev_free(de);
  tu_dev_free(dout);
  free(s);
  free(e);
}

static void test_axpy_scale_copy(void) {
  enum { N = 515 };
  tu_rng_t r;
  tu_rng_seed(&r, 41);
  float x[N], y[N], out[N], want[N];
  /* dyadic data: integers / 8 and a = -0.25, so every result is exact */
  tu_fill_int(&r, x, N, -64, 64);
  tu_fill_int(&r, y, N, -64, 64);
  for (int i = 0; i < N; i++) {
    x[i] /= 8.0f;
    y[i] /= 8.0f;
  }
  float *dx = tu_dev_from(x, N), *dy = tu_dev_from(y, N);
  TU_OK(orthod_backend_axpy(BE(), dy, -0.25f, dx, N));
  tu_to_host(out, dy, N);
  for (int i = 0; i < N; i++) want[i] = (float)((double)y[i] - 0.25 * (double)x[i]);
  CU_ASSERT_TRUE(tu_bitequal("axpy dyadic", out, want, N));
  /* weight decay form p + (-k)·p with x = y */
  TU_OK(orthod_backend_axpy(BE(), dx, -0.125f, dx, N));
  tu_to_host(out, dx, N);
  for (int i = 0; i < N; i++) want[i] = x[i] + (-0.125f) * x[i];
  CU_ASSERT_TRUE(tu_bitequal("axpy aliased", out, want, N));
  /* non-dyadic: the unfused y + a·x */
  float *g = host_normal(42, N), *p = host_normal(43, N);
  float *dg = tu_dev_from(g, N), *dp = tu_dev_from(p, N);
  float a = (float)(-0.01 * 0.3);
  TU_OK(orthod_backend_axpy(BE(), dp, a, dg, N));
  tu_to_host(out, dp, N);
  for (int i = 0; i < N; i++) {
    volatile float prod = a * g[i]; /* keep the product rounded on its own */
    want[i] = p[i] + prod;
  }
  CU_ASSERT_TRUE(tu_bitequal("axpy unfused", out, want, N));
  TU_OK(orthod_backend_scale(BE(), dp, 0.3f, N));
  for (int i = 0; i < N; i++) want[i] = want[i] * 0.3f;
  tu_to_host(out, dp, N);
  CU_ASSERT_TRUE(tu_bitequal("scale", out, want, N));
  float sc = -1.75f, *dsc = tu_dev_from(&sc, 1);
  TU_OK(orthod_backend_scale_by(BE(), dp, dsc, N));
  for (int i = 0; i < N; i++) want[i] = want[i] * sc;
  tu_to_host(out, dp, N);
  CU_ASSERT_TRUE(tu_bitequal("scale_by", out, want, N));
  TU_OK(orthod_backend_copy(BE(), dg, dp, N));
  tu_to_host(out, dg, N);
  CU_ASSERT_TRUE(tu_bitequal("copy", out, want, N));
  TU_OK(orthod_backend_zero(BE(), dg, N));
  tu_to_host(out, dg, N);
  bool zero = true;
  for (int i = 0; i < N; i++) zero &= out[i] == 0.0f && !signbit(out[i]);
  CU_ASSERT_TRUE(zero);
  /* n = 0 is an empty operation */
  TU_OK(orthod_backend_axpy(BE(), NULL, 1.0f, NULL, 0));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_axpy(BE(), dp, 1.0f, NULL, N));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_copy(BE(), NULL, dp, N));
  tu_dev_free(dx);
  tu_dev_free(dy);
  tu_dev_free(dg);
  tu_dev_free(dp);
  tu_dev_free(dsc);
  free(g);
  free(p);
}

static void test_transpose(void) {
  const int64_t batch = 2, rows = 37, cols = 70; /* not multiples of the tile */
  size_t n = (size_t)(batch * rows * cols);
  float *x = host_normal(51, n), *out = malloc(n * sizeof *out), *want = malloc(n * sizeof *want);
  for (int64_t b = 0; b < batch; b++)
    for (int64_t i = 0; i < rows; i++)
      for (int64_t j = 0; j < cols; j++)
        want[b * rows * cols + j * rows + i] = x[b * rows * cols + i * cols + j];
  float *dx = tu_dev_from(x, n), *dout = tu_dev_zeros(n);
  TU_OK(orthod_backend_transpose(BE(), dout, dx, batch, rows, cols));
  tu_to_host(out, dout, n);
  CU_ASSERT_TRUE(tu_bitequal("transpose", out, want, n));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_transpose(BE(), dx + 5, dx, batch, rows, cols));
  TU_EXPECT_DETAIL("overlaps");
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_transpose(BE(), dout, dx, 0, rows, cols));
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_transpose(BE(), dout, dx, 1, rows, -2));
  tu_dev_free(dx);
  tu_dev_free(dout);
  free(x);
  free(out);
  free(want);
}

/* ---- reductions ----------------------------------------------------------------------------- */

static double dnorm(const float *x, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
  return sqrt(s);
}

static void test_norm_dot_count(void) {
  const size_t n = 10007; /* crosses the 2048-element fold and leaves a lane remainder */
  const int64_t batch = 3;
  float *x = host_normal(61, n * (size_t)batch), *y = host_normal(62, n);
  float *dx = tu_dev_from(x, n * (size_t)batch), *dy = tu_dev_from(y, n);
  float *dout = tu_dev_zeros(3), out[3];
  TU_OK(orthod_backend_norm(BE(), dout, dx, batch, n));
  tu_to_host(out, dout, 3);
  double want[3];
  for (int b = 0; b < 3; b++) want[b] = dnorm(x + (size_t)b * n, n);
  /* fp32 accumulation in 16 lanes of <= 128 terms then ~5 folds: relative error ~1e-6 */
  CU_ASSERT_TRUE(tu_allclose_d("norm", out, want, 3, 0.0, 2e-6));
  TU_OK(orthod_backend_dot(BE(), dout, dx, dy, n));
  tu_to_host(out, dout, 1);
  double d = 0.0, scale = 0.0;
  for (size_t i = 0; i < n; i++) {
    d += (double)x[i] * (double)y[i];
    scale += fabs((double)x[i] * (double)y[i]);
  }
  /* cancellation: bound the error relative to Σ|x y| (fp32 sum, same 1e-6 argument) */
  CU_ASSERT_TRUE(tu_allclose_d("dot", out, &d, 1, 2e-6 * scale, 0.0));
  /* count_nonfinite */
  x[5] = INFINITY;
  x[77] = -INFINITY;
  x[n - 1] = NAN;
  x[100] = 3.4e38f; /* large but finite */
  float *dz = tu_dev_from(x, n);
  size_t cnt = 99;
  TU_OK(orthod_backend_count_nonfinite(BE(), dz, n, &cnt));
  CU_ASSERT_EQUAL(cnt, 3);
  TU_OK(orthod_backend_count_nonfinite(BE(), dz, 0, &cnt));
  CU_ASSERT_EQUAL(cnt, 0);
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_norm(BE(), dout, dx, 0, n));
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_norm(BE(), dout, dx, 1, 0));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_dot(BE(), NULL, dx, dy, n));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_count_nonfinite(BE(), dz, n, NULL));
  tu_dev_free(dx);
  tu_dev_free(dy);
  tu_dev_free(dz);
  tu_dev_free(dout);
  free(x);
  free(y);
}

static void test_normalize(void) {
  const size_t n = 999;
  const int64_t batch = 3;
  float *x = host_normal(71, n * 3), *out = malloc(n * 3 * sizeof *out);
  double *want = malloc(n * 3 * sizeof *want);
  for (size_t i = 0; i < n; i++) x[n + i] *= 1e-3f; /* slices of different scale */
  float *dx = tu_dev_from(x, n * 3);
  TU_OK(orthod_backend_normalize(BE(), dx, batch, n, 1e-15f, false));
  tu_to_host(out, dx, n * 3);
  for (int b = 0; b < 3; b++) {
    double nb = dnorm(x + (size_t)b * n, n);
    for (size_t i = 0; i < n; i++) want[(size_t)b * n + i] = x[(size_t)b * n + i] / nb;
  }
  /* fp32 norm (rel ~1e-6) and one division: rtol 2e-6 */
  CU_ASSERT_TRUE(tu_allclose_d("normalize", out, want, n * 3, 0.0, 2e-6));
  /* bit-exact form: x / max(‖x‖, eps) with the kernel's own norm */
  float nrm[3], *dn = tu_dev_zeros(3);
  float *dx2 = tu_dev_from(x, n * 3);
  TU_OK(orthod_backend_norm(BE(), dn, dx2, batch, n));
  tu_to_host(nrm, dn, 3);
  float *exact = malloc(n * 3 * sizeof *exact);
  for (int b = 0; b < 3; b++)
    for (size_t i = 0; i < n; i++) exact[(size_t)b * n + i] = x[(size_t)b * n + i] / nrm[b];
  CU_ASSERT_TRUE(tu_bitequal("normalize is x / norm", out, exact, n * 3));
  /* eps floor: a slice whose norm is below eps is divided by eps, zero stays zero */
  float small[4] = {3e-9f, -4e-9f, 0.0f, 0.0f}, sm_out[4];
  float *ds = tu_dev_from(small, 4);
  TU_OK(orthod_backend_normalize(BE(), ds, 2, 2, 1e-7f, false));
  tu_to_host(sm_out, ds, 4);
  float sm_want[4] = {3e-9f / 1e-7f, -4e-9f / 1e-7f, 0.0f, 0.0f};
  CU_ASSERT_TRUE(tu_bitequal("normalize eps floor", sm_out, sm_want, 4));
  /* in_double: data scaled by 1e-30 has squares ~1e-60, which underflow in fp32 (so the fp32
   * path sees norm 0 and divides by eps) but not in fp64 */
  for (size_t i = 0; i < n; i++) x[i] *= 1e-30f;
  float *dt = tu_dev_from(x, n), *dt2 = tu_dev_from(x, n);
  TU_OK(orthod_backend_normalize(BE(), dt, 1, n, 1e-15f, true));
  tu_to_host(out, dt, n);
  double nb = dnorm(x, n);
  for (size_t i = 0; i < n; i++) want[i] = x[i] / nb;
  /* rtol 1e-6: fp64 norm rounded once to fp32, one fp32 division */
  CU_ASSERT_TRUE(tu_allclose_d("normalize in_double tiny", out, want, n, 0.0, 1e-6));
  TU_OK(orthod_backend_normalize(BE(), dt2, 1, n, 1e-15f, false));
  tu_to_host(out, dt2, n);
  float f32_sumsq = 0.0f;
  for (size_t i = 0; i < 8; i++) f32_sumsq += x[i] * x[i];
  CU_ASSERT_EQUAL(f32_sumsq, 0.0f); /* confirms the underflow premise */
  for (size_t i = 0; i < n; i++) exact[i] = x[i] / 1e-15f;
  CU_ASSERT_TRUE(tu_bitequal("normalize fp32 underflow uses eps", out, exact, n));
  /* in_double does not apply eps: a zero slice becomes NaN (0/0) */
  float z[3] = {0.0f, 0.0f, 0.0f}, zo[3];
  float *dz = tu_dev_from(z, 3);
  TU_OK(orthod_backend_normalize(BE(), dz, 1, 3, 1e-15f, true));
  tu_to_host(zo, dz, 3);
  CU_ASSERT_TRUE(isnan(zo[0]) && isnan(zo[1]) && isnan(zo[2]));
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_normalize(BE(), dz, 0, 3, 1e-15f, false));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_normalize(BE(), dz, 1, 3, -1.0f, false));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_normalize(BE(), NULL, 1, 3, 1e-15f, false));
  tu_dev_free(dx);
  tu_dev_free(dx2);
  tu_dev_free(dn);
  tu_dev_free(ds);
  tu_dev_free(dt);
  tu_dev_free(dt2);
  tu_dev_free(dz);
  free(x);
  free(out);
  free(want);
  free(exact);
}

/* ---- weight-update hooks: the exact single-entry cases of spec §7.7 ------------------------ */

static const size_t hook_sizes[] = {1, 6, 8, 60}; /* (1,), (2,3), (2,2,2), (3,4,5) */

/* One nonzero entry at a size-dependent index. */
static float *single(size_t n, float v) {
  float *h = calloc(n, sizeof *h);
  h[n / 2] = v;
  float *d = tu_dev_from(h, n);
  free(h);
  return d;
}

static float entry(const float *d, size_t n) {
  float *h = malloc(n * sizeof *h);
  tu_to_host(h, d, n);
  float v = h[n / 2];
  for (size_t i = 0; i < n; i++)
    if (i != n / 2 && h[i] != 0.0f) v = NAN; /* other entries must stay zero */
  free(h);
  return v;
}

/* p ← p + delta, then RadialBrake(outward, inward, eps) with n0 the pre-update norm. */
static float brake(size_t n, float p0, float delta, float outward, float inward, float eps) {
  float *p = single(n, p0), *u = single(n, delta), *n0 = tu_dev_zeros(1), h;
  TU_OK(orthod_backend_norm(BE(), n0, p, 1, n));
  tu_to_host(&h, n0, 1);
  if (h < eps) TU_OK(orthod_backend_zero(BE(), n0, 1)); /* the pre hook maps ≈0 to 0 */
  TU_OK(orthod_backend_axpy(BE(), p, 1.0f, u, n));
  TU_OK(orthod_backend_radial_brake(BE(), p, n, n0, outward, inward, eps));
  float v = entry(p, n);
  tu_dev_free(p);
  tu_dev_free(u);
  tu_dev_free(n0);
  return v;
}

static void test_hook_radial_brake(void) {
  for (size_t s = 0; s < 4; s++) {
    size_t n = hook_sizes[s];
    CU_ASSERT_EQUAL(brake(n, 8.0f, 8.0f, 0.5f, 1.0f, 1e-15f), 12.0f);   /* 8 → 16 outward 0.5 */
    CU_ASSERT_EQUAL(brake(n, 8.0f, -4.0f, 0.5f, 0.5f, 1e-15f), 6.0f);   /* 8 → 4 inward 0.5 */
    CU_ASSERT_EQUAL(brake(n, 1.0f, 0.125f, 0.5f, 1.0f, 0.25f), 1.0f);   /* |Δ| < eps: k = 0 */
    CU_ASSERT_EQUAL(brake(n, 1.0f, 0.25f, 0.5f, 1.0f, 0.25f), 1.125f);  /* Δ = eps: outward */
    CU_ASSERT_EQUAL(brake(n, 8.0f, -8.0f, 0.5f, 1.0f, 1e-15f), 0.0f);   /* n1 = 0 → 0 */
  }
}

static void test_hook_hyperball(void) {
  for (size_t s = 0; s < 4; s++) {
    size_t n = hook_sizes[s];
    /* R = 4: an update of 8 becomes 4; param 8 − 4 = 4 stays 4 */
    float *u = single(n, 8.0f), *p = single(n, 8.0f);
    TU_OK(orthod_backend_hyperball(BE(), u, n, 4.0f, 1e-15f));
    CU_ASSERT_EQUAL(entry(u, n), 4.0f);
    TU_OK(orthod_backend_axpy(BE(), p, -1.0f, u, n));
    TU_OK(orthod_backend_hyperball(BE(), p, n, 4.0f, 1e-15f));
    CU_ASSERT_EQUAL(entry(p, n), 4.0f);
    tu_dev_free(u);
    tu_dev_free(p);
    /* R = 2, eps = 0.25: 0.125 maps to 0, 0.25 maps to 2 */
    float *a = single(n, 0.125f), *b = single(n, 0.25f);
    TU_OK(orthod_backend_hyperball(BE(), a, n, 2.0f, 0.25f));
    TU_OK(orthod_backend_hyperball(BE(), b, n, 2.0f, 0.25f));
    CU_ASSERT_EQUAL(entry(a, n), 0.0f);
    CU_ASSERT_EQUAL(entry(b, n), 2.0f);
    tu_dev_free(a);
    tu_dev_free(b);
    /* zero weight, update 8, R = 4: pre gives 4, p = 0 − 4, post keeps −4 */
    float *z = single(n, 0.0f), *u8 = single(n, 8.0f);
    TU_OK(orthod_backend_hyperball(BE(), u8, n, 4.0f, 1e-15f));
    TU_OK(orthod_backend_axpy(BE(), z, -1.0f, u8, n));
    TU_OK(orthod_backend_hyperball(BE(), z, n, 4.0f, 1e-15f));
    CU_ASSERT_EQUAL(entry(z, n), -4.0f);
    tu_dev_free(z);
    tu_dev_free(u8);
  }
}

static float relupd(size_t n, float w, float upd, float eps, float *p_after) {
  float *p = single(n, w), *u = single(n, upd);
  TU_OK(orthod_backend_relative_update(BE(), u, p, n, eps));
  float v = entry(u, n);
  *p_after = entry(p, n);
  tu_dev_free(p);
  tu_dev_free(u);
  return v;
}

static void test_hook_relative_update(void) {
  for (size_t s = 0; s < 4; s++) {
    size_t n = hook_sizes[s];
    float pa;
    CU_ASSERT_EQUAL(relupd(n, 4.0f, 8.0f, 1e-15f, &pa), 4.0f);
    CU_ASSERT_EQUAL(pa, 4.0f); /* param untouched */
    CU_ASSERT_EQUAL(relupd(n, 0.125f, 8.0f, 0.25f, &pa), 0.0f);
    CU_ASSERT_EQUAL(relupd(n, 8.0f, 0.125f, 0.25f, &pa), 0.0f);
    CU_ASSERT_EQUAL(relupd(n, 2.0f, 0.25f, 0.25f, &pa), 2.0f);
  }
  float *x = single(4, 1.0f);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_hyperball(BE(), x, 4, INFINITY, 1e-15f));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_relative_update(BE(), x, x, 4, NAN));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_radial_brake(BE(), x, 4, NULL, 0.5f, 1.0f, 1e-15f));
  tu_dev_free(x);
}

/* ---- AdaptiveMuon second moments (spec §5.1) vs double ------------------------------------- */

/* rtol for a handful of fp32 ops per element (each 2⁻²⁴) plus an fp32 norm (~1e-6) */
#define ELEM_RTOL 5e-6

static void test_adamuon(void) {
  const size_t n = 333;
  float *o = host_normal(81, n), *v = host_normal(82, n), oo[333], vo[333];
  for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i]; /* second moments are >= 0 */
  float *dO = tu_dev_from(o, n), *dv = tu_dev_from(v, n);
  const float w = (float)(1.0 - 0.95), eps = 1e-8f;
  TU_OK(orthod_backend_adamuon(BE(), dO, dv, n, w, eps));
  tu_to_host(oo, dO, n);
  tu_to_host(vo, dv, n);
  double wo[333], wv[333];
  for (size_t i = 0; i < n; i++) {
    wv[i] = v[i] + (double)w * ((double)o[i] * o[i] - v[i]);
    wo[i] = o[i] / (sqrt(wv[i]) + (double)eps);
  }
  CU_ASSERT_TRUE(tu_allclose_d("adamuon v", vo, wv, n, 0.0, ELEM_RTOL));
  CU_ASSERT_TRUE(tu_allclose_d("adamuon o", oo, wo, n, 0.0, ELEM_RTOL));
  tu_dev_free(dO);
  tu_dev_free(dv);
  free(o);
  free(v);
}

static void normuon_case(int64_t m, int64_t n, bool per_row, uint64_t seed) {
  size_t total = (size_t)(m * n), nv = (size_t)(per_row ? m : n);
  float *o = host_normal(seed, total), *v = host_normal(seed + 1, nv);
  for (size_t i = 0; i < nv; i++) v[i] = v[i] * v[i] * 0.01f;
  float *dO = tu_dev_from(o, total), *dv = tu_dev_from(v, nv);
  const float w = 0.05f, eps = 1e-8f;
  TU_OK(orthod_backend_normuon(BE(), dO, dv, m, n, per_row, w, eps));
  float *oo = malloc(total * sizeof *oo), *vo = malloc(nv * sizeof *vo);
  double *wo = malloc(total * sizeof *wo), *wv = malloc(nv * sizeof *wv);
  tu_to_host(oo, dO, total);
  tu_to_host(vo, dv, nv);
  for (size_t t = 0; t < nv; t++) {
    double r = 0.0;
    int64_t cnt = per_row ? n : m;
    for (int64_t q = 0; q < cnt; q++) {
      double e = per_row ? o[(int64_t)t * n + q] : o[q * n + (int64_t)t];
      r += e * e;
    }
    r /= (double)cnt;
    wv[t] = v[t] + (double)w * (r - v[t]);
  }
  double no = 0.0, nu = 0.0;
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      double vv = wv[per_row ? i : j];
      double u = o[i * n + j] / sqrt(vv > eps ? vv : eps);
      wo[i * n + j] = u;
      no += (double)o[i * n + j] * o[i * n + j];
      nu += u * u;
    }
  double ratio = sqrt(no) / sqrt(nu);
  for (size_t i = 0; i < total; i++) wo[i] *= ratio;
  char label[64];
  snprintf(label, sizeof label, "normuon %lldx%lld per_row=%d", (long long)m, (long long)n, per_row);
  CU_ASSERT_TRUE(tu_allclose_d(label, vo, wv, nv, 0.0, ELEM_RTOL));
  CU_ASSERT_TRUE(tu_allclose_d(label, oo, wo, total, 0.0, ELEM_RTOL));
  /* norm matching: ‖T(O)‖_F equals ‖O‖_F */
  CU_ASSERT_TRUE(fabs(dnorm(oo, total) - sqrt(no)) <= ELEM_RTOL * sqrt(no));
  tu_dev_free(dO);
  tu_dev_free(dv);
  free(o);
  free(v);
  free(oo);
  free(vo);
  free(wo);
  free(wv);
}

static void test_normuon(void) {
  normuon_case(40, 24, true, 91);  /* m >= n: per row */
  normuon_case(24, 40, false, 93); /* m < n: per column */
  normuon_case(17, 17, true, 95);
  float x[4] = {0};
  float *d = tu_dev_from(x, 4);
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_normuon(BE(), d, d, 0, 4, true, 0.05f, 1e-8f));
  tu_dev_free(d);
}

static void test_namo(void) {
  const size_t n = 250;
  float *g = host_normal(101, n), *u = host_normal(102, n), *o = host_normal(103, n), oo[250];
  float v0 = 2.5f, v1;
  float *dg = tu_dev_from(g, n), *du = tu_dev_from(u, n), *dO = tu_dev_from(o, n),
        *dv = tu_dev_from(&v0, 1);
  const float w = (float)(1.0 - 0.95), eps = 1e-8f;
  TU_OK(orthod_backend_namo_moment(BE(), dv, dg, n, w));
  tu_to_host(&v1, dv, 1);
  double gn = dnorm(g, n);
  double wv = v0 + (double)w * (gn * gn - v0);
  CU_ASSERT_TRUE(tu_allclose_d("namo v", &v1, &wv, 1, 0.0, ELEM_RTOL));
  TU_OK(orthod_backend_namo_scale(BE(), dO, du, dv, n, eps));
  tu_to_host(oo, dO, n);
  double alpha = dnorm(u, n) / (sqrt(wv) + eps), wo[250];
  for (size_t i = 0; i < n; i++) wo[i] = o[i] * alpha;
  CU_ASSERT_TRUE(tu_allclose_d("namo o", oo, wo, n, 0.0, ELEM_RTOL));
  tu_dev_free(dg);
  tu_dev_free(du);
  tu_dev_free(dO);
  tu_dev_free(dv);
  free(g);
  free(u);
  free(o);
}

/* ---- AdamW vs a double re-implementation of torch.optim.AdamW ------------------------------ */

static void adamw_case(bool amsgrad) {
  const size_t n = 500;
  const int steps = 5;
  orthod_adamw_args_t args = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                              .weight_decay = 0.05, .amsgrad = amsgrad};
  float *p = host_normal(111, n), zeros[500] = {0};
  double dp[500], dm[500] = {0}, dv[500] = {0}, dvmax[500] = {0};
  for (size_t i = 0; i < n; i++) dp[i] = p[i];
  float *gp = tu_dev_from(p, n), *gm = tu_dev_from(zeros, n), *gv = tu_dev_from(zeros, n),
        *gvm = tu_dev_from(zeros, n), *gg = tu_dev_zeros(n);
  for (int t = 1; t <= steps; t++) {
    float *g = host_normal(200 + (uint64_t)t, n);
    if (t == 3) /* a small-gradient step: v shrinks, so amsgrad's max matters */
      for (size_t i = 0; i < n; i++) g[i] *= 0.01f;
    TU_OK(orthod_backend_upload(BE(), gg, g, ORTHOD_DTYPE_F32, n));
    args.step = t;
    TU_OK(orthod_backend_adamw(BE(), gp, gg, gm, gv, amsgrad ? gvm : NULL, n, &args));
    double bc1 = 1.0 - pow(args.beta1, t), bc2 = 1.0 - pow(args.beta2, t);
    for (size_t i = 0; i < n; i++) {
      dp[i] *= 1.0 - args.lr * args.weight_decay;
      dm[i] = args.beta1 * dm[i] + (1.0 - args.beta1) * g[i];
      dv[i] = args.beta2 * dv[i] + (1.0 - args.beta2) * (double)g[i] * g[i];
      double vv = dv[i];
      if (amsgrad) {
        dvmax[i] = dvmax[i] > dv[i] ? dvmax[i] : dv[i];
        vv = dvmax[i];
      }
      double denom = sqrt(vv) / sqrt(bc2) + args.eps;
      dp[i] -= args.lr / bc1 * dm[i] / denom;
    }
    free(g);
  }
  float out[500];
  tu_to_host(out, gp, n);
  /* Tolerance: each step changes p by ~lr = 1e-2 with an fp32 relative error of a few 2⁻²⁴
   * (~3e-7), and p itself (|p| ~ 1) is rounded to fp32 each step: |err| < 5 steps ·
   * (1e-2·1e-6 + 2⁻²⁴·|p|) ≈ 1e-6·(1 + |p|). atol 2e-6, rtol 2e-6. */
  CU_ASSERT_TRUE(tu_allclose_d(amsgrad ? "adamw p (amsgrad)" : "adamw p", out, dp, n, 2e-6, 2e-6));
  tu_to_host(out, gm, n);
  CU_ASSERT_TRUE(tu_allclose_d("adamw m", out, dm, n, 1e-7, 1e-5)); /* 5 lerps in fp32 */
  tu_to_host(out, gv, n);
  CU_ASSERT_TRUE(tu_allclose_d("adamw v", out, dv, n, 1e-9, 1e-5));
  if (amsgrad) {
    tu_to_host(out, gvm, n);
    CU_ASSERT_TRUE(tu_allclose_d("adamw vmax", out, dvmax, n, 1e-9, 1e-5));
  }
  /* validation */
  args.step = 0;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_adamw(BE(), gp, gg, gm, gv, gvm, n, &args));
  TU_EXPECT_DETAIL("step 0");
  args.step = 1;
  args.beta1 = 1.0;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_adamw(BE(), gp, gg, gm, gv, gvm, n, &args));
  args.beta1 = 0.9;
  args.amsgrad = true;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_adamw(BE(), gp, gg, gm, gv, NULL, n, &args));
  TU_EXPECT_DETAIL("vmax");
  tu_dev_free(gp);
  tu_dev_free(gm);
  tu_dev_free(gv);
  tu_dev_free(gvm);
  tu_dev_free(gg);
  free(p);
}

static void test_adamw(void) {
  adamw_case(false);
  adamw_case(true);
}

/* ---- polar factor and eigh ------------------------------------------------------------------ */

/* One-sided Jacobi SVD in double of the tall r x c matrix t (r >= c): on return t holds U·Σ
 * (columns), v the right singular vectors (c x c, row-major), sig the singular values. */
static void jacobi_svd(double *t, int r, int c, double *v, double *sig) {
  for (int i = 0; i < c * c; i++) v[i] = 0.0;
  for (int i = 0; i < c; i++) v[i * c + i] = 1.0;
  for (int sweep = 0; sweep < 60; sweep++) {
    double off = 0.0;
    for (int p = 0; p < c - 1; p++)
      for (int q = p + 1; q < c; q++) {
        double al = 0, be = 0, ga = 0;
        for (int i = 0; i < r; i++) {
          al += t[i * c + p] * t[i * c + p];
          be += t[i * c + q] * t[i * c + q];
          ga += t[i * c + p] * t[i * c + q];
        }
        if (fabs(ga) <= 1e-300 || fabs(ga) <= 1e-17 * sqrt(al * be)) continue;
        off = fmax(off, fabs(ga) / sqrt(al * be));
        double zeta = (be - al) / (2.0 * ga);
        double tt = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1.0 + zeta * zeta));
        double cs = 1.0 / sqrt(1.0 + tt * tt), sn = cs * tt;
        for (int i = 0; i < r; i++) {
          double a = t[i * c + p], b = t[i * c + q];
          t[i * c + p] = cs * a - sn * b;
          t[i * c + q] = sn * a + cs * b;
        }
        for (int i = 0; i < c; i++) {
          double a = v[i * c + p], b = v[i * c + q];
          v[i * c + p] = cs * a - sn * b;
          v[i * c + q] = sn * a + cs * b;
        }
      }
    if (off < 1e-15) break;
  }
  for (int j = 0; j < c; j++) {
    double s = 0;
    for (int i = 0; i < r; i++) s += t[i * c + j] * t[i * c + j];
    sig[j] = sqrt(s);
  }
}

static void polar_case(int m, int n, uint64_t seed) {
  size_t mn = (size_t)m * (size_t)n;
  float *a = host_normal(seed, mn), *out = malloc(mn * sizeof *out), nuc;
  bool tall = m >= n;
  int r = tall ? m : n, c = tall ? n : m; /* work on the tall orientation */
  double *t = malloc(mn * sizeof *t), *v = malloc((size_t)c * c * sizeof *v), *sig = malloc((size_t)c * sizeof *sig);
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) t[tall ? i * n + j : j * m + i] = a[i * n + j];
  jacobi_svd(t, r, c, v, sig);
  /* polar factor of the tall matrix: U Vᵀ with U = (UΣ) Σ⁻¹; for a wide a it is transposed */
  double *o = malloc(mn * sizeof *o), nuc_ref = 0.0;
  for (int j = 0; j < c; j++) nuc_ref += sig[j];
  for (int i = 0; i < r; i++)
    for (int j = 0; j < c; j++) {
      double s = 0;
      for (int l = 0; l < c; l++) s += t[i * c + l] / sig[l] * v[j * c + l];
      if (tall) o[i * n + j] = s; else o[j * n + i] = s; /* O_a = O_tᵀ */
    }
  float *da = tu_dev_from(a, mn), *dout = tu_dev_zeros(mn), *dn = tu_dev_zeros(1);
  TU_OK(orthod_backend_polar_svd(BE(), dout, dn, da, m, n));
  tu_to_host(out, dout, mn);
  tu_to_host(&nuc, dn, 1);
  char label[64];
  snprintf(label, sizeof label, "polar_svd %dx%d", m, n);
  /* fp32 SVD of a well-conditioned random matrix: entries of P Qᵀ to ~1e-6 */
  CU_ASSERT_TRUE(tu_allclose_d(label, out, o, mn, 1e-5, 0.0));
  /* nuclear norm: an fp32 sum of c singular values each relative ~1e-6 */
  CU_ASSERT_TRUE(tu_allclose_d("nuclear", &nuc, &nuc_ref, 1, 0.0, 1e-5));
  /* orthonormal columns (tall) or rows (wide): atol 1e-5 */
  double worst = 0.0;
  for (int p = 0; p < c; p++)
    for (int q = 0; q < c; q++) {
      double s = 0;
      for (int l = 0; l < r; l++)
        s += tall ? (double)out[l * n + p] * out[l * n + q] : (double)out[p * n + l] * out[q * n + l];
      worst = fmax(worst, fabs(s - (p == q ? 1.0 : 0.0)));
    }
  if (worst > 1e-5) fprintf(stderr, "\n  %s: orthonormality error %g\n", label, worst);
  CU_ASSERT_TRUE(worst <= 1e-5);
  /* out · (Q Σ Qᵀ) reconstructs a, where Q Σ Qᵀ = O_refᵀ a (n x n) */
  double *h = calloc((size_t)n * n, sizeof *h), *rec = malloc(mn * sizeof *rec);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++)
      for (int l = 0; l < m; l++) h[i * n + j] += o[l * n + i] * a[l * n + j];
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      double s = 0;
      for (int l = 0; l < n; l++) s += out[i * n + l] * h[l * n + j];
      rec[i * n + j] = s;
    }
  /* ‖QΣQᵀ‖ ~ σ_max ~ 12: out's 1e-6 errors become ~1e-5 */
  snprintf(label, sizeof label, "polar reconstruction %dx%d", m, n);
  CU_ASSERT_TRUE(tu_allclose_d(label, a, rec, mn, 1e-4, 0.0));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_polar_svd(BE(), da, dn, da, m, n));
  TU_OK(orthod_backend_polar_svd(BE(), dout, NULL, da, m, n)); /* nuclear optional */
  tu_dev_free(da);
  tu_dev_free(dout);
  tu_dev_free(dn);
  free(a);
  free(out);
  free(t);
  free(v);
  free(sig);
  free(o);
  free(h);
  free(rec);
}

static void test_polar_svd(void) {
  polar_case(40, 25, 121);
  polar_case(25, 40, 122);
  polar_case(16, 16, 123);
}

static void test_eigh(void) {
  const int n = 30;
  size_t nn = (size_t)n * n;
  float *b = host_normal(131, nn), a[900], w[30], q[900];
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) a[i * n + j] = 0.5f * (b[i * n + j] + b[j * n + i]);
  float *da = tu_dev_from(a, nn), *dw = tu_dev_zeros((size_t)n), *dq = tu_dev_zeros(nn);
  TU_OK(orthod_backend_eigh(BE(), dw, dq, da, n));
  tu_to_host(w, dw, (size_t)n);
  tu_to_host(q, dq, nn);
  bool desc = true;
  for (int i = 1; i < n; i++) desc &= w[i - 1] >= w[i];
  CU_ASSERT_TRUE(desc);
  /* reconstruction Q diag(w) Qᵀ = A, orthonormal columns, and A q_j = w_j q_j;
   * fp32 eigensolver on ‖A‖ ~ 8: backward error ~ n·2⁻²⁴·‖A‖ ≈ 2e-5 → atol 1e-4 */
  double rec[900], qtq[900], trace = 0.0, wsum = 0.0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      double s = 0, t = 0;
      for (int l = 0; l < n; l++) {
        s += (double)q[i * n + l] * w[l] * q[j * n + l];
        t += (double)q[l * n + i] * q[l * n + j];
      }
      rec[i * n + j] = s;
      qtq[i * n + j] = t - (i == j ? 1.0 : 0.0);
    }
  CU_ASSERT_TRUE(tu_allclose_d("eigh reconstruction", a, rec, nn, 1e-4, 0.0));
  float zeros[900] = {0};
  CU_ASSERT_TRUE(tu_allclose_d("eigh QᵀQ - I", zeros, qtq, nn, 1e-5, 0.0));
  for (int i = 0; i < n; i++) {
    trace += a[i * n + i];
    wsum += w[i];
  }
  CU_ASSERT_TRUE(fabs(trace - wsum) <= 1e-4);
  /* q may alias a (the input is copied first) */
  TU_OK(orthod_backend_eigh(BE(), dw, da, da, n));
  float q2[900];
  tu_to_host(q2, da, nn);
  double worst = 0.0; /* eigenvectors up to sign */
  for (int j = 0; j < n; j++) {
    double dotp = 0;
    for (int i = 0; i < n; i++) dotp += (double)q2[i * n + j] * q[i * n + j];
    worst = fmax(worst, fabs(fabs(dotp) - 1.0));
  }
  CU_ASSERT_TRUE(worst < 1e-4);
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_backend_eigh(BE(), dw, dq, da, 0));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_eigh(BE(), dq, dq, da, n));
  tu_dev_free(da);
  tu_dev_free(dw);
  tu_dev_free(dq);
  free(b);
}

static void test_null_backend(void) {
  float x = 1.0f, *d = &x;
  size_t cnt;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_sync(NULL));
  TU_EXPECT_DETAIL("backend is NULL");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_copy(NULL, d, d, 1));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_count_nonfinite(NULL, d, 1, &cnt));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_scratch(NULL, 1, &d));
  CU_ASSERT_EQUAL(orthod_backend_memory_used(NULL), 0);
  CU_ASSERT_STRING_EQUAL(orthod_backend_name(NULL), "(null)");
  orthod_backend_destroy(NULL);
  orthod_backend_t *be = NULL;
  orthod_backend_opts_t bad = {.threads = -1};
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_backend_create_cpu(&bad, &be));
  CU_ASSERT_PTR_NULL(be);
  /* a second backend with an explicit thread count, destroyed with a forgotten allocation */
  orthod_backend_opts_t two = {.threads = 2};
  TU_OK(orthod_backend_create_cpu(&two, &be));
  float *leak = NULL, *s = NULL;
  TU_OK(orthod_backend_alloc(be, 100, &leak));
  TU_OK(orthod_backend_scratch(be, 100, &s));
  orthod_backend_destroy(be); /* must free both (valgrind checks) */
}

int main(void) {
  static const tu_test_t tests[] = {
      {"memory accounting", test_memory_accounting},
      {"memory limit", test_memory_limit},
      {"scratch arena", test_scratch},
      {"transfers", test_transfers},
      {"gemm", test_gemm},
      {"gemm broadcast", test_gemm_broadcast},
      {"gemm/syrk invalid", test_gemm_invalid},
      {"syrk", test_syrk},
      {"round_bf16", test_round_bf16},
      {"lerp", test_lerp},
      {"axpy scale copy", test_axpy_scale_copy},
      {"transpose", test_transpose},
      {"norm dot count", test_norm_dot_count},
      {"normalize", test_normalize},
      {"hook radial brake", test_hook_radial_brake},
      {"hook hyperball", test_hook_hyperball},
      {"hook relative update", test_hook_relative_update},
      {"adamuon", test_adamuon},
      {"normuon", test_normuon},
      {"namo", test_namo},
      {"adamw", test_adamw},
      {"polar_svd", test_polar_svd},
      {"eigh", test_eigh},
      {"null backend", test_null_backend},
      {NULL, NULL},
  };
  return tu_run_suite("backend", tests);
}
