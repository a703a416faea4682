/* test_optimizer.c — the optimizer family (spec 1, 2, 4, 5, 6) ported from spec 7.1, 7.3–7.7:
 * the base step through an identity orthogonalizer against torch SGD (bitwise), Muon against a
 * step written out from the spec (bitwise; public NS underneath), blocks/heads/N-D views, Scion,
 * MOP, MuonHyperball, PolarGrad (+ one-sided helper), AdaptiveMuon, Spel, AdamW, weight decay
 * (bitwise), weight-update hooks, reconfiguration, errors with their details, memory. */
#include <math.h>
#include <string.h>

#include "optimizer_impl.h"
#include "orthod/newton_schulz.h"
#include "orthod/optimizer.h"
#include "testutil.h"

/* ---- helpers -------------------------------------------------------------------------------- */

static orthod_shape_t shp(int nd, int64_t a, int64_t b, int64_t c) {
  orthod_shape_t s;
  const int64_t d[3] = {a, b, c};
  if (orthod_shape_init(&s, nd, d) != ORTHOD_OK) abort();
  return s;
}

static const int64_t k_shapes[3][2] = {{5, 7}, {33, 65}, {127, 257}};

static orthod_optim_config_t def(orthod_algo_t a) {
  orthod_optim_config_t c;
  if (orthod_optim_config_default(&c, a) != ORTHOD_OK) abort();
  return c;
}

static orthod_optim_t *mk(const orthod_optim_config_t *c, const orthod_shape_t *s) {
  orthod_optim_t *o = NULL;
  orthod_err_t e = orthod_optim_create(tu_backend(), c, s, &o);
  if (e != ORTHOD_OK) {
    fprintf(stderr, "\n  optim_create: %s (%s)\n", orthod_err_name(e), orthod_error_detail());
    abort();
  }
  return o;
}

static float *hbuf(size_t n) {
  float *p = calloc(n ? n : 1, sizeof *p);
  if (p == NULL) abort();
  return p;
}

static bool all_finite(const float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(x[i])) return false;
  return true;
}

/* One step from host weights/grad; the weights come back in w (grad may be modified: l2). */
static orthod_err_t host_step(orthod_optim_t *o, float *w, const float *g, size_t n, double lr,
                              orthod__orth_fn fn) {
  float *dw = tu_dev_from(w, n), *dg = tu_dev_from(g, n);
  orthod_err_t e = fn ? orthod__optim_step_with(o, dw, dg, lr, fn, NULL)
                      : orthod_optim_step(o, dw, dg, lr);
  tu_to_host(w, dw, n);
  tu_dev_free(dw);
  tu_dev_free(dg);
  return e;
}

static size_t numel_of(orthod_optim_t *o) {
  int64_t m, n;
  orthod__optim_view(o, &m, &n);
  return (size_t)(m * n);
}

/* The identity orthogonalizer of the spec's base class. */
static orthod_err_t identity_fn(void *ctx, orthod_optim_t *o, float *out, const float *u) {
  (void)ctx;
  return orthod_backend_copy(tu_backend(), out, u, numel_of(o));
}

/* PyTorch's lerp (spec 1.6) and add-with-alpha, on the host, as references. */
static float lerp_ref(float s, float e, float w) {
  return fabsf(w) < 0.5f ? s + w * (e - s) : fmaf(w - 1.0f, e - s, e);
}

static void read_buffer(orthod_optim_t *o, const char *want, float *host, size_t *n_out) {
  const char *name;
  float *d;
  size_t n;
  for (int i = 0; orthod_optim_buffer(o, i, &name, &d, &n); i++)
    if (strcmp(name, want) == 0) {
      tu_to_host(host, d, n);
      if (n_out) *n_out = n;
      return;
    }
  fprintf(stderr, "\n  no buffer %s\n", want);
  abort();
}

/* ---- spec 7.1: the base class with an identity orthogonalizer -------------------------------- */

static void test_base_smoke(void) {
  static const orthod_wd_method_t wds[] = {ORTHOD_WD_DECOUPLED, ORTHOD_WD_INDEPENDENT, ORTHOD_WD_L2};
  static const orthod_precision_t precs[] = {ORTHOD_PREC_HIGHEST, ORTHOD_PREC_HIGH, ORTHOD_PREC_MEDIUM};
  tu_rng_t r;
  tu_rng_seed(&r, 71);
  for (int si = 0; si < 3; si++) {
    orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
    size_t n = (size_t)(k_shapes[si][0] * k_shapes[si][1]);
    float *w = hbuf(n), *g = hbuf(n);
    for (int wi = 0; wi < 3; wi++)
      for (int ne = 0; ne < 2; ne++)
        for (int pi = 0; pi < 3; pi++) {
          orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
          c.lr = 2;
          c.momentum = 0;
          c.weight_decay = 0.5;
          c.weight_decay_method = wds[wi];
          c.nesterov = ne;
          c.precision = precs[pi];
          orthod_optim_t *o = mk(&c, &s);
          tu_fill_int(&r, w, n, -5, 4);
          tu_fill_int(&r, g, n, -5, 4);
          TU_OK(host_step(o, w, g, n, c.lr, identity_fn));
          CU_ASSERT_EQUAL(orthod_optim_step_count(o), 1);
          CU_ASSERT_TRUE(all_finite(w, n));
          orthod_optim_destroy(o);
        }
    free(w);
    free(g);
  }
}

/* torch.optim.SGD (single-tensor path) on the host: d = g + wd·p; heavy-ball buffer. */
static void sgd_ref(float *p, const float *g, float *buf, size_t n, double lr, double mom,
                    double wd, bool first) {
  for (size_t i = 0; i < n; i++) {
    float d = g[i];
    if (wd != 0.0) d = d + (float)wd * p[i];
    if (mom != 0.0) {
      buf[i] = first ? d : buf[i] * (float)mom + d; /* buf.mul_(m).add_(d, alpha=1-dampening) */
      d = buf[i];
    }
    p[i] = p[i] + (float)(-lr) * d;
  }
}

static void test_core_matches_sgd(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 72);
  for (int si = 0; si < 3; si++) {
    orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
    size_t n = (size_t)(k_shapes[si][0] * k_shapes[si][1]);
    float *w = hbuf(n), *ref = hbuf(n), *g = hbuf(n);
    tu_fill_int(&r, w, n, -5, 4);
    tu_fill_int(&r, g, n, -5, 4);
    memcpy(ref, w, n * sizeof *w);
    orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
    c.lr = 2;
    c.momentum = 0;
    c.weight_decay = 0.5;
    c.precision = ORTHOD_PREC_HIGHEST;
    orthod_optim_t *o = mk(&c, &s);
    TU_OK(host_step(o, w, g, n, 2.0, identity_fn));
    sgd_ref(ref, g, NULL, n, 2.0, 0.0, 0.5, true);
    CU_ASSERT_TRUE(tu_bitequal("identity Muon vs SGD (both -2G)", w, ref, n));
    for (size_t i = 0; i < n; i++) CU_ASSERT_EQUAL(w[i], -2.0f * g[i]);
    orthod_optim_destroy(o);
    free(w);
    free(ref);
    free(g);
  }
}

static void test_core_matches_sgd_with_momentum(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 73);
  for (int si = 0; si < 3; si++) {
    orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
    size_t n = (size_t)(k_shapes[si][0] * k_shapes[si][1]);
    float *w = hbuf(n), *ref = hbuf(n), *g = hbuf(n), *buf = hbuf(n), *mom = hbuf(n);
    tu_fill_int(&r, w, n, -5, 4);
    memcpy(ref, w, n * sizeof *w);
    orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
    c.lr = 2.0;
    c.momentum = 0.5;
    c.weight_decay = 0;
    c.weight_decay_method = ORTHOD_WD_L2;
    c.precision = ORTHOD_PREC_HIGHEST;
    orthod_optim_t *o = mk(&c, &s);
    for (int t = 0; t < 5; t++) {
      tu_fill_int(&r, g, n, -5, 4);
      TU_OK(host_step(o, w, g, n, 2.0, identity_fn));
      sgd_ref(ref, g, buf, n, 1.0, 0.5, 0.0, t == 0);
      CU_ASSERT_TRUE(tu_bitequal("EMA momentum lr 2 vs heavy-ball SGD lr 1", w, ref, n));
      read_buffer(o, "momentum_buffer", mom, NULL);
      for (size_t i = 0; i < n; i++) CU_ASSERT_EQUAL(mom[i], 0.5f * buf[i]); /* EMA = ½ heavy ball */
    }
    orthod_optim_destroy(o);
    free(w);
    free(ref);
    free(g);
    free(buf);
    free(mom);
  }
}

/* _init_group: state exists from construction (no lazy creation), zero, parameter-sized. */
static void test_state_created_at_construction(void) {
  orthod_shape_t s = shp(2, 5, 7, 0);
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  orthod_optim_t *o = mk(&c, &s);
  const char *name = NULL;
  float *d = NULL;
  size_t n = 0;
  CU_ASSERT_TRUE(orthod_optim_buffer(o, 0, &name, &d, &n));
  CU_ASSERT_STRING_EQUAL(name, "momentum_buffer");
  CU_ASSERT_EQUAL(n, 35);
  float h[35];
  tu_to_host(h, d, 35);
  for (int i = 0; i < 35; i++) CU_ASSERT_EQUAL(h[i], 0.0f);
  CU_ASSERT_FALSE(orthod_optim_buffer(o, 1, &name, &d, &n));
  CU_ASSERT_EQUAL(orthod_optim_step_count(o), 0);
  orthod_optim_destroy(o);
  orthod_optim_destroy(NULL);
}

/* Rows grouped by i mod 3, each group replaced by a block of its max, groups stacked. */
static orthod_err_t interleaved_fn(void *ctx, orthod_optim_t *o, float *out, const float *u) {
  (void)ctx;
  int64_t m, n;
  orthod__optim_view(o, &m, &n);
  float *h = hbuf((size_t)(m * n)), *res = hbuf((size_t)(m * n));
  tu_to_host(h, u, (size_t)(m * n));
  int64_t row = 0;
  for (int64_t grp = 0; grp < 3; grp++) {
    float mx = -INFINITY;
    int64_t cnt = 0;
    for (int64_t i = grp; i < m; i += 3, cnt++)
      for (int64_t j = 0; j < n; j++) mx = fmaxf(mx, h[i * n + j]);
    for (int64_t k = 0; k < cnt; k++, row++)
      for (int64_t j = 0; j < n; j++) res[row * n + j] = mx;
  }
  orthod_err_t e = orthod_backend_upload(tu_backend(), out, res, ORTHOD_DTYPE_F32, (size_t)(m * n));
  if (e == ORTHOD_OK) e = orthod_backend_sync(tu_backend());
  free(h);
  free(res);
  return e;
}

static void test_split_fn_interleaved(void) {
  orthod_shape_t s = shp(2, 6, 7, 0);
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  c.lr = -1;
  c.momentum = 0;
  c.weight_decay = 0;
  c.weight_decay_method = ORTHOD_WD_L2;
  orthod_optim_t *o = mk(&c, &s);
  float w[42] = {0}, g[42], want[42];
  static const float rows_want[6] = {4, 4, 5, 5, 6, 6};
  for (int i = 0; i < 6; i++)
    for (int j = 0; j < 7; j++) {
      g[i * 7 + j] = (float)(i + 1);
      want[i * 7 + j] = rows_want[i];
    }
  TU_OK(host_step(o, w, g, 42, -1.0, interleaved_fn));
  CU_ASSERT_TRUE(tu_bitequal("custom split function output used verbatim", w, want, 42));
  CU_ASSERT_NOT_EQUAL(memcmp(w, g, sizeof w), 0);
  orthod_optim_destroy(o);
}

static void test_non_2d_param_rejected(void) {
  orthod_shape_t v = shp(1, 8, 0, 0);
  static const orthod_algo_t algos[] = {ORTHOD_ALGO_MUON, ORTHOD_ALGO_SCION, ORTHOD_ALGO_SPEL,
                                        ORTHOD_ALGO_POLARGRAD, ORTHOD_ALGO_MOP,
                                        ORTHOD_ALGO_ADAPTIVE_MUON};
  for (size_t i = 0; i < sizeof algos / sizeof algos[0]; i++) {
    orthod_optim_config_t c = def(algos[i]);
    orthod_optim_t *o = (orthod_optim_t *)&c; /* must be reset to NULL */
    TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_optim_create(tu_backend(), &c, &v, &o));
    TU_EXPECT_DETAIL("Only 2D parameters are supported");
    CU_ASSERT_PTR_NULL(o);
  }
  for (int m2 = 0; m2 < ORTHOD_MOMENT2_COUNT; m2++) { /* AdaptiveMuon: every method */
    orthod_optim_config_t c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
    c.moment2_method = (orthod_moment2_t)m2;
    orthod_optim_t *o = NULL;
    TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_optim_create(tu_backend(), &c, &v, &o));
    TU_EXPECT_DETAIL("rank >= 2");
  }
}

/* ---- Muon (spec 4, 6) ------------------------------------------------------------------------ */

static void test_muon_smoke(void) {
  static const orthod_wd_method_t wds[] = {ORTHOD_WD_DECOUPLED, ORTHOD_WD_INDEPENDENT, ORTHOD_WD_L2};
  tu_rng_t r;
  tu_rng_seed(&r, 74);
  for (int si = 0; si < 3; si++) {
    orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
    size_t n = (size_t)(k_shapes[si][0] * k_shapes[si][1]);
    float *w = hbuf(n), *w0 = hbuf(n), *g = hbuf(n);
    for (int wi = 0; wi < 3; wi++)
      for (int ne = 0; ne < 2; ne++) {
        orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
        c.weight_decay_method = wds[wi];
        c.nesterov = ne;
        orthod_optim_t *o = mk(&c, &s);
        tu_fill_normal(&r, w, n);
        tu_fill_normal(&r, g, n);
        memcpy(w0, w, n * sizeof *w);
        TU_OK(host_step(o, w, g, n, c.lr, NULL));
        CU_ASSERT_TRUE(all_finite(w, n));
        CU_ASSERT_NOT_EQUAL(memcmp(w, w0, n * sizeof *w), 0);
        orthod_optim_destroy(o);
      }
    free(w);
    free(w0);
    free(g);
  }
}

static void test_muon_defaults_read_back(void) {
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  orthod_shape_t s = shp(2, 4, 4, 0);
  orthod_optim_t *o = mk(&c, &s);
  static const char *const kv[][2] = {{"num_ns_steps", "5"},
                                      {"coefficient_type", "quintic"},
                                      {"scale_mode", "spectral"},
                                      {"extra_scale_factor", "1"},
                                      {"use_syrk", "false"}};
  char buf[64];
  for (int i = 0; i < 5; i++) {
    TU_OK(orthod_optim_config_get(orthod_optim_config(o), kv[i][0], buf, sizeof buf));
    CU_ASSERT_STRING_EQUAL(buf, kv[i][1]);
  }
  orthod_optim_destroy(o);
}

static void test_muon_use_syrk_matches_without(void) {
  static const orthod_precision_t precs[] = {ORTHOD_PREC_HIGHEST, ORTHOD_PREC_MEDIUM};
  tu_rng_t r;
  tu_rng_seed(&r, 75);
  orthod_shape_t s = shp(2, 32, 32, 0);
  float w[1024], g[1024], a[1024], b[1024];
  tu_fill_int(&r, w, 1024, -5, 4);
  tu_fill_int(&r, g, 1024, -5, 4);
  for (int p = 0; p < 2; p++) {
    orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
    c.num_ns_steps = 1;
    c.coefficient_type = ORTHOD_COEF_SIMPLE;
    c.precision = precs[p];
    memcpy(a, w, sizeof w);
    memcpy(b, w, sizeof w);
    orthod_optim_t *o1 = mk(&c, &s);
    c.use_syrk = true;
    orthod_optim_t *o2 = mk(&c, &s);
    TU_OK(host_step(o1, a, g, 1024, c.lr, NULL));
    TU_OK(host_step(o2, b, g, 1024, c.lr, NULL));
    /* torch.testing.assert_close fp32 defaults (spec 7): the weights after one step */
    CU_ASSERT_TRUE(tu_allclose("syrk vs gemm", b, a, 1024, 1e-5, 1.3e-6));
    orthod_optim_destroy(o1);
    orthod_optim_destroy(o2);
  }
}

static void test_muon_independent_wd(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 76);
  orthod_shape_t s = shp(2, 32, 32, 0);
  float w[1024], g[1024], want[1024];
  tu_fill_int(&r, w, 1024, -5, 4);
  tu_fill_int(&r, g, 1024, -5, 4);
  for (int i = 0; i < 1024; i++) want[i] = 0.75f * w[i];
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  c.lr = 0;
  c.weight_decay = 0.25;
  c.weight_decay_method = ORTHOD_WD_INDEPENDENT;
  c.momentum = 0;
  orthod_optim_t *o = mk(&c, &s);
  TU_OK(host_step(o, w, g, 1024, 0.0, NULL));
  CU_ASSERT_TRUE(tu_bitequal("independent decay 0.25 at lr 0", w, want, 1024));
  orthod_optim_destroy(o);
}

static void test_muon_zero_steps_rejected(void) {
  orthod_shape_t s = shp(2, 4, 4, 0);
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  c.num_ns_steps = 0;
  orthod_optim_t *o = NULL;
  TU_EXPECT_ERR(ORTHOD_E_STEPS, orthod_optim_create(tu_backend(), &c, &s, &o));
  TU_EXPECT_DETAIL("num_ns_steps must be at least 1");
  c = def(ORTHOD_ALGO_SCION); /* ScionTest */
  c.num_ns_steps = 0;
  TU_EXPECT_ERR(ORTHOD_E_STEPS, orthod_optim_create(tu_backend(), &c, &s, &o));
  TU_EXPECT_DETAIL("num_ns_steps must be at least 1, got 0");
  c = def(ORTHOD_ALGO_MUON);
  c.coefficient_type = ORTHOD_COEF_CUSTOM;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_create(tu_backend(), &c, &s, &o));
  TU_EXPECT_DETAIL("cannot take custom coefficients");
  CU_ASSERT_PTR_NULL(o);
}

/* The spec's Muon step written out (host elementwise, public NS on the device per block). */
typedef struct {
  int nb;
  int64_t rows[ORTHOD_MAX_SPLITS];
} ref_blocks_t;

static void ns_host(const orthod_optim_config_t *c, float *o, const float *u, int64_t rows,
                    int64_t cols) {
  orthod_ns_opts_t ns;
  orthod_ns_opts_default(&ns);
  ns.steps = c->num_ns_steps;
  ns.coef_type = c->coefficient_type;
  ns.precision = c->precision;
  size_t n = (size_t)(rows * cols);
  float *d = tu_dev_from(u, n), *e = tu_dev_zeros(n);
  TU_OK(orthod_newton_schulz(tu_backend(), e, d, 1, rows, cols, &ns));
  tu_to_host(o, e, n);
  tu_dev_free(d);
  tu_dev_free(e);
}

static void muon_ref_step(const orthod_optim_config_t *c, const ref_blocks_t *b, int64_t m,
                          int64_t n, float *w, float *mbuf, float *g, double lr) {
  size_t N = (size_t)(m * n);
  float *u = hbuf(N), *o = hbuf(N);
  double wd = c->weight_decay, k = 0;
  if (wd != 0 && c->weight_decay_method == ORTHOD_WD_L2)
    for (size_t i = 0; i < N; i++) g[i] = g[i] + (float)wd * w[i];
  for (size_t i = 0; i < N; i++) mbuf[i] = lerp_ref(mbuf[i], g[i], (float)(1.0 - c->momentum));
  for (size_t i = 0; i < N; i++)
    u[i] = c->nesterov ? lerp_ref(g[i], mbuf[i], (float)c->momentum) : mbuf[i];
  int64_t r0 = 0;
  for (int k2 = 0; k2 < b->nb; k2++) {
    int64_t rows = b->rows[k2];
    ns_host(c, o + r0 * n, u + r0 * n, rows, n);
    double s = 0;
    TU_OK(orthod_muon_scale_factor(rows, n, c->scale_mode, &s));
    for (int64_t i = r0 * n; i < (r0 + rows) * n; i++)
      o[i] = (o[i] * (float)s) * (float)c->extra_scale_factor;
    r0 += rows;
  }
  switch (c->weight_decay_method) {
    case ORTHOD_WD_DECOUPLED: k = wd * lr; break;
    case ORTHOD_WD_INDEPENDENT: k = wd; break;
    case ORTHOD_WD_PALM: k = wd * lr * lr; break;
    default: k = 0; break;
  }
  if (wd != 0 && k != 0)
    for (size_t i = 0; i < N; i++) w[i] = w[i] + (float)(-k) * w[i];
  for (size_t i = 0; i < N; i++) w[i] = w[i] + (float)(-lr) * o[i];
  free(u);
  free(o);
}

static void run_muon_vs_ref(orthod_optim_config_t c, const orthod_shape_t *s, const ref_blocks_t *b,
                            int steps, uint64_t seed, const char *label) {
  int64_t m = s->dims[0], n = orthod_shape_numel(s) / m;
  size_t N = (size_t)(m * n);
  tu_rng_t r;
  tu_rng_seed(&r, seed);
  float *w = hbuf(N), *wr = hbuf(N), *g = hbuf(N), *gr = hbuf(N), *mr = hbuf(N), *mb = hbuf(N);
  tu_fill_normal(&r, w, N);
  memcpy(wr, w, N * sizeof *w);
  orthod_optim_t *o = mk(&c, s);
  for (int t = 0; t < steps; t++) {
    tu_fill_normal(&r, g, N);
    memcpy(gr, g, N * sizeof *g);
    TU_OK(host_step(o, w, g, N, c.lr, NULL));
    muon_ref_step(&c, b, m, n, wr, mr, gr, c.lr);
    CU_ASSERT_TRUE(tu_bitequal(label, w, wr, N));
    read_buffer(o, "momentum_buffer", mb, NULL);
    CU_ASSERT_TRUE(tu_bitequal("momentum buffer", mb, mr, N));
  }
  orthod_optim_destroy(o);
  free(w);
  free(wr);
  free(g);
  free(gr);
  free(mr);
  free(mb);
}

static void test_muon_matches_spec_step(void) {
  static const orthod_precision_t precs[] = {ORTHOD_PREC_HIGHEST, ORTHOD_PREC_MEDIUM};
  for (int si = 0; si < 2; si++)
    for (int p = 0; p < 2; p++)
      for (int wi = 0; wi < ORTHOD_WD_COUNT; wi++) {
        orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
        c.lr = 0.02;
        c.weight_decay = 0.1;
        c.precision = precs[p];
        c.weight_decay_method = (orthod_wd_method_t)wi;
        c.nesterov = wi % 2 == 1;
        c.extra_scale_factor = 0.2;
        c.scale_mode = (orthod_scale_mode_t)(wi % 3);
        orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
        ref_blocks_t b = {1, {k_shapes[si][0]}};
        run_muon_vs_ref(c, &s, &b, 3, 100 + (uint64_t)(si * 8 + p * 4 + wi), "Muon vs spec step");
      }
}

static void test_muon_split_rows_blocks(void) {
  /* fused QKV: each block its own NS and s(r_i, n); bitwise vs the per-block reference */
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  TU_OK(orthod_optim_config_set(&c, "split_rows", "16,8,8"));
  c.lr = 0.05;
  orthod_shape_t s = shp(2, 32, 24, 0);
  ref_blocks_t b = {3, {16, 8, 8}};
  run_muon_vs_ref(c, &s, &b, 2, 201, "split_rows Muon vs per-block reference");
  c.precision = ORTHOD_PREC_HIGHEST;
  c.scale_mode = ORTHOD_SCALE_SHAPE_SCALING;
  run_muon_vs_ref(c, &s, &b, 2, 202, "split_rows Muon (highest) vs per-block reference");
  /* conv weights (8, 4, 3, 3) are the (8, 36) matrix view */
  orthod_optim_config_t cc = def(ORTHOD_ALGO_MUON);
  orthod_shape_t conv;
  const int64_t d[4] = {8, 4, 3, 3};
  TU_OK(orthod_shape_init(&conv, 4, d));
  ref_blocks_t bc = {1, {8}};
  run_muon_vs_ref(cc, &conv, &bc, 2, 203, "conv Muon vs (8, 36) reference");
}

static void test_muon_num_heads_matches_per_head(void) {
  /* batched NS on (H, d, n) with s(d, n) == Muon on each d x n head (spec 6: atol 1e-6) */
  static const orthod_precision_t precs[] = {ORTHOD_PREC_HIGHEST, ORTHOD_PREC_MEDIUM};
  tu_rng_t r;
  tu_rng_seed(&r, 77);
  const int64_t H = 4, dh = 8, n = 24, m = H * dh;
  orthod_shape_t s = shp(2, m, n, 0);
  size_t N = (size_t)(m * n);
  float *u = hbuf(N), *got = hbuf(N), *want = hbuf(N);
  tu_fill_normal(&r, u, N);
  for (int p = 0; p < 2; p++) {
    orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
    c.num_heads = H;
    c.precision = precs[p];
    c.extra_scale_factor = 0.5;
    orthod_optim_t *o = mk(&c, &s);
    float *du = tu_dev_from(u, N), *dout = tu_dev_zeros(N);
    TU_OK(orthod_optim_orthogonalize(o, dout, du));
    tu_to_host(got, dout, N);
    double sc = 0;
    TU_OK(orthod_muon_scale_factor(dh, n, ORTHOD_SCALE_SPECTRAL, &sc));
    for (int64_t h = 0; h < H; h++) {
      ns_host(&c, want + h * dh * n, u + h * dh * n, dh, n);
      for (int64_t i = h * dh * n; i < (h + 1) * dh * n; i++) want[i] = (want[i] * (float)sc) * 0.5f;
    }
    /* spec 3.7/6: batched vs per-slice within 1e-6 (×s·e = sqrt(24)·0.5 ≈ 2.45 → 2.5e-6);
     * medium: identical bf16 GEMMs per slice, same bound */
    CU_ASSERT_TRUE(tu_allclose("num_heads vs per-head Muon", got, want, N, 2.5e-6, 0));
    /* the orthogonalizer may also work in place */
    TU_OK(orthod_optim_orthogonalize(o, du, du));
    tu_to_host(want, du, N);
    CU_ASSERT_TRUE(tu_bitequal("in-place orthogonalize", want, got, N));
    tu_dev_free(du);
    tu_dev_free(dout);
    orthod_optim_destroy(o);
  }
  free(u);
  free(got);
  free(want);
}

/* ---- Scion, MOP (spec 5.5, 5.2) -------------------------------------------------------------- */

static void test_scion(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 78);
  for (int si = 0; si < 3; si++) {
    orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
    int64_t m = k_shapes[si][0], n = k_shapes[si][1];
    size_t N = (size_t)(m * n);
    float *w = hbuf(N), *wr = hbuf(N), *g = hbuf(N), *o = hbuf(N);
    tu_fill_normal(&r, w, N);
    tu_fill_normal(&r, g, N);
    memcpy(wr, w, N * sizeof *w);
    orthod_optim_config_t c = def(ORTHOD_ALGO_SCION);
    c.spectral_radius = 2.0;
    c.lr = 0.01;
    c.momentum = 0;
    orthod_optim_t *opt = mk(&c, &s);
    TU_OK(host_step(opt, w, g, N, c.lr, NULL));
    CU_ASSERT_TRUE(all_finite(w, N));
    /* Frank–Wolfe form: W ← W + (−η)W (forced decay 1, decoupled), then − η·NS(M)·sqrt(m/n)·ρ */
    ns_host(&c, o, g, m, n);
    float s1 = (float)sqrt((double)m / (double)n);
    for (size_t i = 0; i < N; i++) {
      float oi = (o[i] * s1) * 2.0f;
      wr[i] = wr[i] + (float)(-(1.0 * 0.01)) * wr[i];
      wr[i] = wr[i] + (float)(-0.01) * oi;
    }
    CU_ASSERT_TRUE(tu_bitequal("Scion vs spec step", w, wr, N));
    orthod_optim_destroy(opt);
    free(w);
    free(wr);
    free(g);
    free(o);
  }
}

static void test_mop(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 79);
  static const orthod_wd_method_t wds[] = {ORTHOD_WD_DECOUPLED, ORTHOD_WD_INDEPENDENT};
  static const orthod_scale_mode_t modes[] = {ORTHOD_SCALE_SPECTRAL, ORTHOD_SCALE_NUCLEAR_NORM};
  static const double extras[] = {1.0, 0.2};
  for (int si = 0; si < 3; si++) {
    orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
    size_t N = (size_t)(k_shapes[si][0] * k_shapes[si][1]);
    float *w = hbuf(N), *g = hbuf(N);
    for (int wi = 0; wi < 2; wi++)
      for (int ne = 0; ne < 2; ne++)
        for (int mi = 0; mi < 2; mi++)
          for (int ei = 0; ei < 2; ei++) {
            orthod_optim_config_t c = def(ORTHOD_ALGO_MOP);
            c.weight_decay_method = wds[wi];
            c.nesterov = ne;
            c.scale_mode = modes[mi];
            c.extra_scale_factor = extras[ei];
            orthod_optim_t *o = mk(&c, &s);
            tu_fill_normal(&r, w, N);
            tu_fill_normal(&r, g, N);
            TU_OK(host_step(o, w, g, N, c.lr, NULL));
            CU_ASSERT_TRUE(all_finite(w, N));
            orthod_optim_destroy(o);
          }
    free(w);
    free(g);
  }
  /* A generalized permutation U = Σ σ_i e_i e_π(i)ᵀ (π(i) = 5 − i) has polar factor Σ sign(σ_i) e_i e_π(i)ᵀ and
   * nuclear norm Σ|σ_i| = 7: O = sign·7·e (nuclear) or sign·sqrt(6)·e (spectral). */
  orthod_shape_t s = shp(2, 4, 6, 0);
  static const float sig[4] = {3.0f, -2.0f, 1.5f, 0.5f};
  float u[24] = {0}, got[24], want[24];
  for (int i = 0; i < 4; i++) u[i * 6 + (5 - i)] = sig[i];
  for (int mi = 0; mi < 2; mi++) {
    orthod_optim_config_t c = def(ORTHOD_ALGO_MOP);
    c.scale_mode = modes[mi];
    c.extra_scale_factor = 0.5;
    orthod_optim_t *o = mk(&c, &s);
    float *du = tu_dev_from(u, 24), *dout = tu_dev_zeros(24);
    TU_OK(orthod_optim_orthogonalize(o, dout, du));
    tu_to_host(got, dout, 24);
    float scale = mi == 1 ? 7.0f : sqrtf(6.0f);
    for (int i = 0; i < 24; i++) want[i] = u[i] == 0 ? 0.0f : copysignf(scale * 0.5f, u[i]);
    /* fp32 SVD of an exact permutation: within a few ulps of the exact factor */
    CU_ASSERT_TRUE(tu_allclose("MOP polar factor × scale", got, want, 24, 1e-5, 1e-5));
    tu_dev_free(du);
    tu_dev_free(dout);
    orthod_optim_destroy(o);
  }
}

/* ---- MuonHyperball (spec 5.3) ------------------------------------------------------------------ */

static double norm_d(const float *x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  return sqrt(s);
}

static void test_hyperball_norm_preservation(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 80);
  for (int si = 0; si < 3; si++) {
    orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
    size_t N = (size_t)(k_shapes[si][0] * k_shapes[si][1]);
    float *w = hbuf(N), *g = hbuf(N), *nrm = hbuf(1);
    tu_fill_normal(&r, w, N);
    double r0 = norm_d(w, N);
    orthod_optim_config_t c = def(ORTHOD_ALGO_MUON_HYPERBALL);
    c.lr = 0.01;
    c.momentum = 0;
    c.weight_decay = 0;
    c.hyperball_radius = r0;
    orthod_optim_t *o = mk(&c, &s);
    for (int t = 0; t < 5; t++) {
      tu_fill_normal(&r, g, N);
      TU_OK(host_step(o, w, g, N, c.lr, NULL));
      nrm[0] = (float)norm_d(w, N);
      /* spec 7.1: atol 1e-5, rtol 1e-5 */
      CU_ASSERT_TRUE(tu_allclose_d("‖p‖ stays R", nrm, &r0, 1, 1e-5, 1e-5));
    }
    orthod_optim_destroy(o);
    free(w);
    free(g);
    free(nrm);
  }
}

static void test_hyperball_invalid(void) {
  orthod_shape_t s = shp(2, 5, 7, 0);
  float w[35] = {0}, g[35], before[35];
  for (int i = 0; i < 35; i++) g[i] = (float)(i % 5) - 2.0f;
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON_HYPERBALL);
  c.hyperball_radius = 1.0;
  orthod_optim_t *o = mk(&c, &s);
  TU_EXPECT_ERR(ORTHOD_E_ZERO_NORM, host_step(o, w, g, 35, c.lr, NULL)); /* zero param */
  TU_EXPECT_DETAIL("below hook_eps");
  CU_ASSERT_EQUAL(orthod_optim_step_count(o), 0);
  /* radius ‖p‖ + 1: mismatch names both numbers; nothing is modified */
  for (int i = 0; i < 35; i++) w[i] = (i == 3) ? 2.0f : 0.0f; /* ‖p‖ = 2, R = 1 */
  memcpy(before, w, sizeof w);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, host_step(o, w, g, 35, c.lr, NULL));
  TU_EXPECT_DETAIL("‖W‖_F = 2 does not match hyperball_radius 1");
  CU_ASSERT_TRUE(tu_bitequal("weights untouched", w, before, 35));
  float mom[35];
  read_buffer(o, "momentum_buffer", mom, NULL);
  for (int i = 0; i < 35; i++) CU_ASSERT_EQUAL(mom[i], 0.0f);
  CU_ASSERT_EQUAL(orthod_optim_step_count(o), 0);
  orthod_optim_destroy(o);
  /* an explicit other hook (the spec's KeyError) */
  c.hook = ORTHOD_HOOK_RADIAL_BRAKE;
  orthod_optim_t *o2 = NULL;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_create(tu_backend(), &c, &s, &o2));
  TU_EXPECT_DETAIL("hook");
  c = def(ORTHOD_ALGO_MUON_HYPERBALL); /* radius unset */
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_create(tu_backend(), &c, &s, &o2));
  TU_EXPECT_DETAIL("hyperball_radius is required");
}

/* ---- PolarGrad (spec 5.4, 7.3) ----------------------------------------------------------------- */

static void test_polargrad_smoke(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 81);
  for (int si = 0; si < 3; si++)
    for (int e = 0; e < 2; e++) {
      orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
      size_t N = (size_t)(k_shapes[si][0] * k_shapes[si][1]);
      float *w = hbuf(N), *g = hbuf(N);
      tu_fill_normal(&r, w, N);
      tu_fill_normal(&r, g, N);
      orthod_optim_config_t c = def(ORTHOD_ALGO_POLARGRAD);
      c.extra_scale_factor = e ? 0.2 : 1.0;
      orthod_optim_t *o = mk(&c, &s);
      TU_OK(host_step(o, w, g, N, c.lr, NULL));
      CU_ASSERT_TRUE(all_finite(w, N));
      orthod_optim_destroy(o);
      free(w);
      free(g);
    }
  orthod_shape_t s = shp(2, 4, 4, 0);
  orthod_optim_config_t c = def(ORTHOD_ALGO_POLARGRAD);
  c.num_ns_steps = -1;
  orthod_optim_t *o = NULL;
  TU_EXPECT_ERR(ORTHOD_E_STEPS, orthod_optim_create(tu_backend(), &c, &s, &o));
  TU_EXPECT_DETAIL("num_ns_steps must be positive");
}

static void test_polargrad_orthogonalize_matches_ref(void) {
  static const int64_t shapes[4][2] = {{4, 8}, {16, 16}, {32, 64}, {13, 17}};
  static const double extras[2] = {0.25, 0.125};
  for (int si = 0; si < 4; si++)
    for (int e = 0; e < 2; e++) {
      int64_t m = shapes[si][0], n = shapes[si][1];
      size_t N = (size_t)(m * n);
      orthod_shape_t s = shp(2, m, n, 0);
      orthod_optim_config_t c = def(ORTHOD_ALGO_POLARGRAD);
      c.num_ns_steps = 0;
      c.extra_scale_factor = extras[e];
      orthod_optim_t *o = mk(&c, &s);
      float *g = hbuf(N), *nh = hbuf(N), *got = hbuf(N), *want = hbuf(N);
      for (size_t i = 0; i < N; i++) g[i] = 0.5f;
      /* N = G / max(‖G‖, eps): the sum of squares 0.25·mn is exact in any order */
      float nrm = sqrtf(0.25f * (float)N);
      for (size_t i = 0; i < N; i++) nh[i] = g[i] / fmaxf(nrm, 1e-7f);
      CU_ASSERT_NOT_EQUAL(nh[0], 1.0f);
      /* ν = Σ N⊙G with the backend's fp32 dot (its accumulation order is the kernel's) */
      float *dn = tu_dev_from(nh, N), *dg = tu_dev_from(g, N), *dnu = tu_dev_zeros(1),
            *dout = tu_dev_zeros(N);
      float nu = 0;
      TU_OK(orthod_backend_dot(tu_backend(), dnu, dn, dg, N));
      tu_to_host(&nu, dnu, 1);
      for (size_t i = 0; i < N; i++) want[i] = (nh[i] * nu) * (float)extras[e];
      TU_OK(orthod_optim_orthogonalize(o, dout, dg));
      tu_to_host(got, dout, N);
      CU_ASSERT_TRUE(tu_bitequal("PolarGrad (N·ν)·e", got, want, N));
      tu_dev_free(dn);
      tu_dev_free(dg);
      tu_dev_free(dnu);
      tu_dev_free(dout);
      orthod_optim_destroy(o);
      free(g);
      free(nh);
      free(got);
      free(want);
    }
}

/* host helpers for the one-sided tests */
static void matmul_h(float *c, const float *a, const float *b, int64_t m, int64_t k, int64_t n) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      double s = 0;
      for (int64_t l = 0; l < k; l++) s += (double)a[i * k + l] * b[l * n + j];
      c[i * n + j] = (float)s;
    }
}

static void random_orthogonal(tu_rng_t *r, float *q, int64_t n) {
  double *a = malloc((size_t)(n * n) * sizeof *a);
  if (a == NULL) abort();
  for (int64_t i = 0; i < n * n; i++) a[i] = tu_rng_normal(r);
  /* modified Gram–Schmidt on the columns, in double */
  for (int64_t j = 0; j < n; j++) {
    for (int64_t k = 0; k < j; k++) {
      double d = 0;
      for (int64_t i = 0; i < n; i++) d += a[i * n + j] * a[i * n + k];
      for (int64_t i = 0; i < n; i++) a[i * n + j] -= d * a[i * n + k];
    }
    double nn = 0;
    for (int64_t i = 0; i < n; i++) nn += a[i * n + j] * a[i * n + j];
    nn = sqrt(nn);
    for (int64_t i = 0; i < n; i++) a[i * n + j] /= nn;
  }
  for (int64_t i = 0; i < n * n; i++) q[i] = (float)a[i];
  free(a);
}

static void one_sided_h(float *out, const float *g, int64_t m, int64_t n, orthod_side_t side,
                        bool center, double extra) {
  size_t N = (size_t)(m * n);
  float *dg = tu_dev_from(g, N), *dout = tu_dev_zeros(N);
  TU_OK(orthod_polargrad_one_sided(tu_backend(), dout, dg, m, n, side, 1.0, center, 1e-15, extra));
  tu_to_host(out, dout, N);
  tu_dev_free(dg);
  tu_dev_free(dout);
}

static void test_polargrad_one_sided_equivariance(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 82);
  /* right: f(G Q) ≈ f(G) Q, (8,4), (32,8) × center_rows (spec: atol/rtol 1e-4) */
  static const int64_t rs[2][2] = {{8, 4}, {32, 8}};
  for (int si = 0; si < 2; si++)
    for (int ce = 0; ce < 2; ce++) {
      int64_t m = rs[si][0], n = rs[si][1];
      size_t N = (size_t)(m * n);
      float *g = hbuf(N), *q = hbuf((size_t)(n * n)), *gq = hbuf(N), *f1 = hbuf(N), *f2 = hbuf(N),
            *f1q = hbuf(N);
      tu_fill_normal(&r, g, N);
      random_orthogonal(&r, q, n);
      matmul_h(gq, g, q, m, n, n);
      one_sided_h(f1, g, m, n, ORTHOD_SIDE_RIGHT, ce, 1.0);
      one_sided_h(f2, gq, m, n, ORTHOD_SIDE_RIGHT, ce, 1.0);
      matmul_h(f1q, f1, q, m, n, n);
      CU_ASSERT_TRUE(tu_allclose("right: f(GQ) vs f(G)Q", f2, f1q, N, 1e-4, 1e-4));
      free(g), free(q), free(gq), free(f1), free(f2), free(f1q);
    }
  /* left: f(Q G) ≈ Q f(G); f(P G) = P f(G) for a row permutation; centered column means ≈ 0 */
  static const int64_t ls[2][2] = {{4, 8}, {8, 32}};
  for (int si = 0; si < 2; si++) {
    int64_t m = ls[si][0], n = ls[si][1];
    size_t N = (size_t)(m * n);
    float *g = hbuf(N), *q = hbuf((size_t)(m * m)), *qg = hbuf(N), *f1 = hbuf(N), *f2 = hbuf(N),
          *qf = hbuf(N), *gt = hbuf(N), *fr = hbuf(N), *frt = hbuf(N);
    tu_fill_normal(&r, g, N);
    random_orthogonal(&r, q, m);
    matmul_h(qg, q, g, m, m, n);
    one_sided_h(f1, g, m, n, ORTHOD_SIDE_LEFT, false, 1.0);
    one_sided_h(f2, qg, m, n, ORTHOD_SIDE_LEFT, false, 1.0);
    matmul_h(qf, q, f1, m, m, n);
    CU_ASSERT_TRUE(tu_allclose("left: f(QG) vs Qf(G)", f2, qf, N, 1e-4, 1e-4));
    for (int ce = 0; ce < 2; ce++) {
      /* P: reverse the rows */
      for (int64_t i = 0; i < m; i++) memcpy(qg + i * n, g + (m - 1 - i) * n, (size_t)n * sizeof *g);
      one_sided_h(f1, g, m, n, ORTHOD_SIDE_LEFT, ce, 1.0);
      one_sided_h(f2, qg, m, n, ORTHOD_SIDE_LEFT, ce, 1.0);
      for (int64_t i = 0; i < m; i++) memcpy(qf + i * n, f1 + (m - 1 - i) * n, (size_t)n * sizeof *g);
      /* spec: atol 1e-2 / rtol 1e-3 when centering (a dropped null eigenvalue), else 1e-4 */
      CU_ASSERT_TRUE(tu_allclose("left: f(PG) vs Pf(G)", f2, qf, N, ce ? 1e-2 : 1e-4, ce ? 1e-3 : 1e-4));
      if (ce) {
        float mean[32] = {0}, zero[32] = {0};
        for (int64_t j = 0; j < n; j++) {
          double sum = 0;
          for (int64_t i = 0; i < m; i++) sum += f1[i * n + j];
          mean[j] = (float)(sum / (double)m);
        }
        CU_ASSERT_TRUE(tu_allclose("centered column means", mean, zero, (size_t)n, 1e-5, 1e-5));
      }
    }
    /* f_left(G) ≈ f_right(Gᵀ)ᵀ (same Gram) */
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) gt[j * m + i] = g[i * n + j];
    one_sided_h(f1, g, m, n, ORTHOD_SIDE_LEFT, false, 1.0);
    one_sided_h(fr, gt, n, m, ORTHOD_SIDE_RIGHT, false, 1.0);
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) frt[i * n + j] = fr[j * m + i];
    CU_ASSERT_TRUE(tu_allclose("f_left(G) vs f_right(Gᵀ)ᵀ", f1, frt, N, 1e-4, 1e-4));
    free(g), free(q), free(qg), free(f1), free(f2), free(qf), free(gt), free(fr), free(frt);
  }
  float x[4] = {1, 2, 3, 4}, y[4];
  float *dx = tu_dev_from(x, 4), *dy = tu_dev_zeros(4);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_polargrad_one_sided(tu_backend(), dy, dx, 2, 2,
                                                           (orthod_side_t)5, 1, false, 1e-15, 1));
  TU_EXPECT_DETAIL("side must be 'left' or 'right'");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_polargrad_one_sided(tu_backend(), dx, dx, 2, 2,
                                                           ORTHOD_SIDE_LEFT, 1, false, 1e-15, 1));
  TU_EXPECT_DETAIL("overlaps");
  tu_to_host(y, dy, 4);
  tu_dev_free(dx);
  tu_dev_free(dy);
}

static orthod_side_t g_side;
static orthod_err_t one_sided_fn(void *ctx, orthod_optim_t *o, float *out, const float *u) {
  (void)ctx;
  int64_t m, n;
  orthod__optim_view(o, &m, &n);
  return orthod_polargrad_one_sided(tu_backend(), out, u, m, n, g_side, 1.0, true, 1e-15, 0.2);
}

static void test_polargrad_one_sided_as_orthogonalizer(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 83);
  for (int side = 0; side < 2; side++) {
    g_side = (orthod_side_t)side;
    orthod_shape_t s = side == ORTHOD_SIDE_RIGHT ? shp(2, 32, 8, 0) : shp(2, 8, 32, 0);
    orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
    c.lr = 1e-2;
    c.precision = ORTHOD_PREC_HIGHEST;
    orthod_optim_t *o = mk(&c, &s);
    float w[256], g[256];
    tu_fill_normal(&r, w, 256);
    for (int t = 0; t < 3; t++) {
      tu_fill_normal(&r, g, 256);
      TU_OK(host_step(o, w, g, 256, c.lr, one_sided_fn));
    }
    CU_ASSERT_TRUE(all_finite(w, 256));
    orthod_optim_destroy(o);
  }
}

/* ---- AdaptiveMuon (spec 5.1, 7.4) -------------------------------------------------------------- */

static void test_adaptive_smoke(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 84);
  for (int si = 0; si < 3; si++)
    for (int m2 = 0; m2 < 3; m2++)
      for (int ne = 0; ne < 2; ne++) {
        orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
        size_t N = (size_t)(k_shapes[si][0] * k_shapes[si][1]);
        float *w = hbuf(N), *g = hbuf(N);
        tu_fill_normal(&r, w, N);
        tu_fill_normal(&r, g, N);
        orthod_optim_config_t c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
        c.lr = 0.01;
        c.momentum = 0.9;
        c.weight_decay = 0.01;
        c.moment2_method = (orthod_moment2_t)m2;
        c.nesterov = ne;
        orthod_optim_t *o = mk(&c, &s);
        TU_OK(host_step(o, w, g, N, c.lr, NULL));
        CU_ASSERT_TRUE(all_finite(w, N));
        orthod_optim_destroy(o);
        free(w);
        free(g);
      }
}

static void test_adaptive_moment2_shapes(void) {
  static const struct {
    int64_t m, n;
    orthod_moment2_t meth;
    size_t want;
  } cases[] = {{8, 16, ORTHOD_MOMENT2_ADAMUON, 128}, {16, 8, ORTHOD_MOMENT2_NORMUON, 16},
               {8, 16, ORTHOD_MOMENT2_NORMUON, 16},  {8, 16, ORTHOD_MOMENT2_NAMO, 1}};
  tu_rng_t r;
  tu_rng_seed(&r, 85);
  for (int i = 0; i < 4; i++) {
    orthod_shape_t s = shp(2, cases[i].m, cases[i].n, 0);
    orthod_optim_config_t c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
    c.moment2_method = cases[i].meth;
    orthod_optim_t *o = mk(&c, &s);
    float w[128], g[128], v[128];
    tu_fill_normal(&r, w, 128);
    tu_fill_normal(&r, g, 128);
    TU_OK(host_step(o, w, g, 128, c.lr, NULL));
    const char *name;
    float *d;
    size_t n;
    CU_ASSERT_TRUE(orthod_optim_buffer(o, 0, &name, &d, &n));
    CU_ASSERT_STRING_EQUAL(name, "momentum_buffer");
    CU_ASSERT_EQUAL(n, 128);
    size_t n2 = 0;
    read_buffer(o, "moment2_buffer", v, &n2);
    CU_ASSERT_EQUAL(n2, cases[i].want);
    CU_ASSERT_TRUE(v[0] > 0.0f); /* accumulated */
    orthod_optim_destroy(o);
  }
}

static void test_adaptive_moment2_before_scaling(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 86);
  orthod_shape_t s = shp(2, 4, 16, 0);
  for (int m2 = 0; m2 < 3; m2++) {
    float w0[64], g[64], wa[64], wb[64], va[64], vb[64], da[64], db4[64];
    tu_fill_normal(&r, w0, 64);
    tu_fill_normal(&r, g, 64);
    orthod_optim_config_t c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
    c.lr = 0.01;
    c.momentum = 0;
    c.weight_decay = 0;
    c.beta2 = 0;
    c.precision = ORTHOD_PREC_HIGHEST;
    c.moment2_method = (orthod_moment2_t)m2;
    orthod_optim_t *oa = mk(&c, &s);
    c.scale_mode = ORTHOD_SCALE_SHAPE_SCALING;
    orthod_optim_t *ob = mk(&c, &s);
    memcpy(wa, w0, sizeof w0);
    memcpy(wb, w0, sizeof w0);
    TU_OK(host_step(oa, wa, g, 64, 0.01, NULL));
    TU_OK(host_step(ob, wb, g, 64, 0.01, NULL));
    size_t n2 = 0;
    read_buffer(oa, "moment2_buffer", va, &n2);
    read_buffer(ob, "moment2_buffer", vb, NULL);
    CU_ASSERT_TRUE(tu_bitequal("moment2 independent of the Muon scale", va, vb, n2));
    for (int i = 0; i < 64; i++) {
      da[i] = w0[i] - wa[i];
      db4[i] = 4.0f * (w0[i] - wb[i]); /* s_spectral / s_shape = sqrt(16) / 1 */
    }
    CU_ASSERT_TRUE(tu_allclose("delta ratio 4", da, db4, 64, 1e-6, 1e-6)); /* spec 7.4 */
    orthod_optim_destroy(oa);
    orthod_optim_destroy(ob);
  }
}

static void test_normuon_preserves_pre_scale_norm(void) {
  static const float f[16] = {1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 4};
  static const int64_t shapes[2][2] = {{16, 4}, {4, 16}};
  orthod_backend_t *be = tu_backend();
  for (int si = 0; si < 2; si++) {
    int64_t m = shapes[si][0], n = shapes[si][1];
    bool tall = m >= n;
    orthod_shape_t s = shp(2, m, n, 0);
    float g[64], w[64] = {0}, wprev[64], o_h[64], upd[64], ref_u[64], v[16], ref_v[16];
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) g[i * n + j] = tall ? f[i] : f[j];
    orthod_optim_config_t c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
    c.lr = 0.125;
    c.momentum = 0;
    c.weight_decay = 0;
    c.moment2_method = ORTHOD_MOMENT2_NORMUON;
    c.precision = ORTHOD_PREC_HIGHEST;
    c.beta2 = 0.0;
    orthod_optim_t *o = mk(&c, &s);
    size_t vn = (size_t)(tall ? m : n);
    float *dv_ref = tu_dev_zeros(vn);
    for (int t = 0; t < 2; t++) {
      if (t == 1) {
        c.beta2 = 0.5;
        TU_OK(orthod_optim_reconfigure(o, &c));
      }
      /* O from the optimizer's own orthogonalizer (raw for AdaptiveMuon) */
      float *dg = tu_dev_from(g, 64), *dO = tu_dev_zeros(64);
      TU_OK(orthod_optim_orthogonalize(o, dO, dg));
      tu_to_host(o_h, dO, 64);
      /* reference by the kernels in the spec's order: normuon on O, then × s (= 4 both ways) */
      TU_OK(orthod_backend_normuon(be, dO, dv_ref, m, n, tall, (float)(1.0 - c.beta2), (float)c.eps));
      TU_OK(orthod_backend_scale(be, dO, 4.0f, 64));
      tu_to_host(ref_u, dO, 64);
      tu_to_host(ref_v, dv_ref, vn);
      memcpy(wprev, w, sizeof w);
      TU_OK(host_step(o, w, g, 64, c.lr, NULL));
      for (int i = 0; i < 64; i++) upd[i] = (wprev[i] - w[i]) / 0.125f; /* exact: power of 2 */
      read_buffer(o, "moment2_buffer", v, NULL);
      CU_ASSERT_TRUE(tu_bitequal("moment2 vs kernel composition", v, ref_v, vn));
      CU_ASSERT_TRUE(tu_bitequal("update vs kernel composition", upd, ref_u, 64));
      /* and against the formulas in double: V = mean(O², reduced dim); the same O the whole
       * time so lerp(V, r, w) = r; update = Ũ·(‖O‖/‖Ũ‖)·s; rtol 1e-5 (fp32 reductions) */
      double vd[16], ud[64], un = 0, on = 0;
      for (size_t k = 0; k < vn; k++) {
        double acc = 0;
        for (int64_t l = 0; l < (tall ? n : m); l++) {
          float x = tall ? o_h[k * (size_t)n + (size_t)l] : o_h[(size_t)l * (size_t)n + k];
          acc += (double)x * x;
        }
        vd[k] = acc / (double)(tall ? n : m);
      }
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
          double vv = vd[tall ? i : j];
          ud[i * n + j] = o_h[i * n + j] / sqrt(fmax(vv, c.eps));
          un += ud[i * n + j] * ud[i * n + j];
          on += (double)o_h[i * n + j] * o_h[i * n + j];
        }
      for (int i = 0; i < 64; i++) ud[i] *= sqrt(on) / sqrt(un) * 4.0;
      CU_ASSERT_TRUE(tu_allclose_d("moment2 = mean(O²)", v, vd, vn, 0, 1e-5));
      CU_ASSERT_TRUE(tu_allclose_d("update = Ũ·‖O‖/‖Ũ‖·s", upd, ud, 64, 1e-7, 1e-5));
      float un_f = (float)(norm_d(upd, 64) / 4.0);
      double on_d = sqrt(on);
      CU_ASSERT_TRUE(tu_allclose_d("‖update/s‖ = ‖O‖", &un_f, &on_d, 1, 0, 1e-5));
      tu_dev_free(dg);
      tu_dev_free(dO);
    }
    tu_dev_free(dv_ref);
    orthod_optim_destroy(o);
  }
}

static void test_adaptive_invalid(void) {
  orthod_shape_t s = shp(2, 4, 8, 0);
  orthod_optim_config_t c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
  c.moment2_method = ORTHOD_MOMENT2_NAMO;
  c.weight_decay_method = ORTHOD_WD_L2;
  orthod_optim_t *o = NULL;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_create(tu_backend(), &c, &s, &o));
  TU_EXPECT_DETAIL("namo cannot be combined with weight_decay_method l2");
  c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
  c.moment2_method = (orthod_moment2_t)7;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_create(tu_backend(), &c, &s, &o));
  TU_EXPECT_DETAIL("moment2_method");
  /* the raw orthogonalizer: NS_k(U) without Muon's scale */
  c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
  o = mk(&c, &s);
  float u[32], got[32], want[32];
  for (int i = 0; i < 32; i++) u[i] = (float)((i * 7) % 11) - 5.0f;
  float *du = tu_dev_from(u, 32), *dout = tu_dev_zeros(32);
  TU_OK(orthod_optim_orthogonalize(o, dout, du));
  tu_to_host(got, dout, 32);
  ns_host(&c, want, u, 4, 8);
  CU_ASSERT_TRUE(tu_bitequal("AdaptiveMuon raw O", got, want, 32));
  float w[32] = {0};
  TU_EXPECT_ERR(ORTHOD_E_INVAL, host_step(o, w, u, 32, 0.1, identity_fn));
  TU_EXPECT_DETAIL("adaptive_muon has no replaceable orthogonalizer");
  tu_dev_free(du);
  tu_dev_free(dout);
  orthod_optim_destroy(o);
}

/* ---- Spel (spec 5.6, 7.5) ---------------------------------------------------------------------- */

static void test_spel_smoke(void) {
  static const orthod_wd_method_t wds[] = {ORTHOD_WD_DECOUPLED, ORTHOD_WD_INDEPENDENT, ORTHOD_WD_L2};
  tu_rng_t r;
  tu_rng_seed(&r, 87);
  for (int si = 0; si < 3; si++)
    for (int wi = 0; wi < 3; wi++)
      for (int ne = 0; ne < 2; ne++) {
        orthod_shape_t s = shp(2, k_shapes[si][0], k_shapes[si][1], 0);
        size_t N = (size_t)(k_shapes[si][0] * k_shapes[si][1]);
        float *w = hbuf(N), *g = hbuf(N);
        tu_fill_normal(&r, w, N);
        tu_fill_normal(&r, g, N);
        orthod_optim_config_t c = def(ORTHOD_ALGO_SPEL);
        c.weight_decay_method = wds[wi];
        c.nesterov = ne;
        orthod_optim_t *o = mk(&c, &s);
        TU_OK(host_step(o, w, g, N, c.lr, NULL));
        CU_ASSERT_TRUE(all_finite(w, N));
        orthod_optim_destroy(o);
        free(w);
        free(g);
      }
  /* one step against the spec: W ← NS((1 − ηλ)W − η·NS(M)), both NS in medium */
  orthod_shape_t s = shp(2, 5, 7, 0);
  float w[35], g[35], wr[35], o[35], t[35];
  tu_fill_normal(&r, w, 35);
  tu_fill_normal(&r, g, 35);
  memcpy(wr, w, sizeof w);
  orthod_optim_config_t c = def(ORTHOD_ALGO_SPEL);
  c.lr = 0.05;
  orthod_optim_t *op = mk(&c, &s);
  TU_OK(host_step(op, w, g, 35, c.lr, NULL));
  float wm = (float)(1.0 - c.momentum);
  for (int i = 0; i < 35; i++) t[i] = lerp_ref(0.0f, g[i], wm);
  ns_host(&c, o, t, 5, 7);
  for (int i = 0; i < 35; i++) {
    wr[i] = wr[i] + (float)(-(0.1 * 0.05)) * wr[i];
    wr[i] = wr[i] + (float)(-0.05) * o[i];
  }
  ns_host(&c, t, wr, 5, 7);
  CU_ASSERT_TRUE(tu_bitequal("Spel vs spec step", w, t, 35));
  orthod_optim_destroy(op);
}

static void test_spel_weights_orthogonal(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 88);
  for (int si = 0; si < 3; si++) {
    int64_t m = k_shapes[si][0], n = k_shapes[si][1], k = m < n ? m : n;
    orthod_shape_t s = shp(2, m, n, 0);
    size_t N = (size_t)(m * n);
    float *w = hbuf(N), *g = hbuf(N);
    tu_fill_normal(&r, w, N);
    orthod_optim_config_t c = def(ORTHOD_ALGO_SPEL);
    c.lr = 0.01;
    c.momentum = 0;
    c.weight_decay = 0;
    orthod_optim_t *o = mk(&c, &s);
    for (int t = 0; t < 5; t++) {
      tu_fill_normal(&r, g, N);
      TU_OK(host_step(o, w, g, N, c.lr, NULL));
      /* Gram over the smaller side ≈ I, diag and off-diag atol 0.06 (spec 7.5, bf16 NS) */
      double worst = 0;
      for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j <= i; j++) {
          double acc = 0;
          for (int64_t l = 0; l < n; l++) acc += (double)w[i * n + l] * w[j * n + l];
          worst = fmax(worst, fabs(acc - (i == j ? 1.0 : 0.0)));
        }
      if (!(worst <= 0.06)) fprintf(stderr, "\n  Spel Gram deviation %g > 0.06\n", worst);
      CU_ASSERT_TRUE(worst <= 0.06);
    }
    orthod_optim_destroy(o);
    free(w);
    free(g);
  }
}

/* ---- weight decay (spec 2, 7.6; all bitwise) --------------------------------------------------- */

static void wd_run(orthod_wd_method_t meth, float *p, float *g, size_t n, double lr, double wd) {
  float *dp = tu_dev_from(p, n), *dg = tu_dev_from(g, n);
  TU_OK(orthod__weight_decay(tu_backend(), meth, dp, dg, n, lr, wd));
  tu_to_host(p, dp, n);
  tu_to_host(g, dg, n);
  tu_dev_free(dp);
  tu_dev_free(dg);
}

static void test_weight_decay_methods(void) {
  /* zero decay is a no-op for all four */
  for (int m = 0; m < ORTHOD_WD_COUNT; m++) {
    float p[3] = {1, 2, 3}, g[3] = {0.5f, -0.5f, 1}, p0[3] = {1, 2, 3}, g0[3] = {0.5f, -0.5f, 1};
    wd_run((orthod_wd_method_t)m, p, g, 3, 0.1, 0.0);
    CU_ASSERT_TRUE(tu_bitequal("zero decay p", p, p0, 3));
    CU_ASSERT_TRUE(tu_bitequal("zero decay G", g, g0, 3));
  }
  static const double dec[3][2] = {{0.25, 0.5}, {0.025, 1.0}, {1.0, 0.05}};
  for (int k = 0; k < 3; k++) {
    double lr = dec[k][0], wd = dec[k][1];
    /* decoupled: p·(1 − wd·lr), G unchanged */
    float p[4] = {4, -2, 0, 8}, g[4] = {1, 2, 1, 1}, want[4], g0[4] = {1, 2, 1, 1};
    for (int i = 0; i < 4; i++) want[i] = p[i] * (float)(1.0 - wd * lr);
    wd_run(ORTHOD_WD_DECOUPLED, p, g, 4, lr, wd);
    CU_ASSERT_TRUE(tu_bitequal("decoupled", p, want, 4));
    CU_ASSERT_TRUE(tu_bitequal("decoupled leaves G", g, g0, 4));
    /* independent: p·(1 − wd) */
    float q[4] = {4, -2, 0, 7}, h[4] = {1, 1, 1, 1};
    for (int i = 0; i < 4; i++) want[i] = q[i] * (float)(1.0 - wd);
    wd_run(ORTHOD_WD_INDEPENDENT, q, h, 4, lr, wd);
    CU_ASSERT_TRUE(tu_bitequal("independent", q, want, 4));
    /* palm: p·(1 − wd·lr²) */
    float pp[4] = {4, -2, 0, 7}, hh[4] = {1, 1, 1, 1};
    for (int i = 0; i < 4; i++) want[i] = pp[i] * (float)(1.0 - wd * lr * lr);
    wd_run(ORTHOD_WD_PALM, pp, hh, 4, lr, wd);
    CU_ASSERT_TRUE(tu_bitequal("palm", pp, want, 4));
  }
  static const double l2[3][2] = {{0.1, 0.5}, {0.01, 1.0}, {1.0, 0.01}};
  for (int k = 0; k < 3; k++) {
    float p[4] = {4, -2, 0, 7}, g[4] = {1, 1, 1, 1}, want[4], p0[4] = {4, -2, 0, 7};
    for (int i = 0; i < 4; i++) want[i] = 1.0f + (float)l2[k][1] * p[i];
    wd_run(ORTHOD_WD_L2, p, g, 4, l2[k][0], l2[k][1]);
    CU_ASSERT_TRUE(tu_bitequal("l2 G", g, want, 4));
    CU_ASSERT_TRUE(tu_bitequal("l2 leaves p", p, p0, 4));
  }
  /* independent and l2 ignore lr */
  for (int m = 0; m < 2; m++) {
    orthod_wd_method_t meth = m ? ORTHOD_WD_L2 : ORTHOD_WD_INDEPENDENT;
    float a[3] = {5, -3, 1}, b[3] = {5, -3, 1}, ga[3] = {1, 1, 1}, gb[3] = {1, 1, 1};
    wd_run(meth, a, ga, 3, 0.001, 0.3);
    wd_run(meth, b, gb, 3, 100.0, 0.3);
    CU_ASSERT_TRUE(tu_bitequal("lr-independent p", a, b, 3));
    CU_ASSERT_TRUE(tu_bitequal("lr-independent G", ga, gb, 3));
  }
  /* negative λ is applied */
  float p[2] = {4, 8}, g[2] = {0, 0}, want[2] = {5, 10};
  wd_run(ORTHOD_WD_INDEPENDENT, p, g, 2, 1.0, -0.25);
  CU_ASSERT_TRUE(tu_bitequal("negative decay", p, want, 2));
  /* "bogus" method */
  float *d = tu_dev_zeros(2);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod__weight_decay(tu_backend(), (orthod_wd_method_t)9, d, d, 2, 1, 1));
  TU_EXPECT_DETAIL("Invalid weight decay method");
  tu_dev_free(d);
}

/* ---- weight-update hooks through the optimizer (spec 5.9, 7.7) ------------------------------- */

/* A parameter with one nonzero entry (the last) of weight a and grad b; identity orthogonalizer
 * (or the PolarGrad one), momentum 0, wd 0; returns that entry after one step. */
static float hook_case(const orthod_shape_t *s, orthod_optim_config_t c, float a, float b, double lr,
                       bool polargrad) {
  size_t N = (size_t)orthod_shape_numel(s);
  float *w = hbuf(N), *g = hbuf(N);
  w[N - 1] = a;
  g[N - 1] = b;
  c.momentum = 0;
  c.weight_decay = 0;
  c.precision = ORTHOD_PREC_HIGHEST;
  orthod_optim_t *o = mk(&c, s);
  TU_OK(host_step(o, w, g, N, lr, polargrad ? NULL : identity_fn));
  float out = w[N - 1];
  for (size_t i = 0; i + 1 < N; i++) CU_ASSERT_EQUAL(w[i], 0.0f);
  orthod_optim_destroy(o);
  free(w);
  free(g);
  return out;
}

static void test_hooks_through_optimizer(void) {
  orthod_shape_t shapes[5] = {shp(2, 1, 1, 0), shp(2, 2, 3, 0), shp(2, 3, 2, 0), shp(3, 2, 2, 2),
                              shp(3, 3, 4, 5)};
  for (int si = 0; si < 5; si++) {
    const orthod_shape_t *s = &shapes[si];
    orthod_optim_config_t rb = def(ORTHOD_ALGO_MUON);
    rb.hook = ORTHOD_HOOK_RADIAL_BRAKE;
    rb.outward_scale = 0.5;
    rb.inward_scale = 0.5;
    /* lr −1, p = G = 8: 8 → 16 outward, brake 0.5 → 12 */
    CU_ASSERT_EQUAL(hook_case(s, rb, 8, 8, -1.0, false), 12.0f);
    /* the same through a public algorithm: PolarGrad with 0 NS steps is exactly the identity
     * on a single-entry matrix (N = sign·e_ij, ν = |g|) */
    orthod_optim_config_t pg = def(ORTHOD_ALGO_POLARGRAD);
    pg.num_ns_steps = 0;
    pg.hook = ORTHOD_HOOK_RADIAL_BRAKE;
    CU_ASSERT_EQUAL(hook_case(s, pg, 8, 8, -1.0, true), 12.0f);
    /* 8 → 4 inward 0.5 → 6 */
    CU_ASSERT_EQUAL(hook_case(s, rb, 8, 4, 1.0, false), 6.0f);
    /* eps 0.25: 1 + 0.125 (|Δ| < eps, k = 0) → 1.0; 1 + 0.25 → 1.125 */
    rb.hook_eps = 0.25;
    CU_ASSERT_EQUAL(hook_case(s, rb, 1, 0.125f, -1.0, false), 1.0f);
    CU_ASSERT_EQUAL(hook_case(s, rb, 1, 0.25f, -1.0, false), 1.125f);
    /* weights below eps count as zero: n0 = 0, n1 = 0 → 0 */
    CU_ASSERT_EQUAL(hook_case(s, rb, 0.125f, 0.0625f, -1.0, false), 0.0f);
    /* n0 = 0.125 < eps counts as 0: 0.125 → 1.0, Δ = 1, target 0 + 0.5·1 (not 0.5625) */
    CU_ASSERT_EQUAL(hook_case(s, rb, 0.125f, 0.875f, -1.0, false), 0.5f);

    orthod_optim_config_t hb = def(ORTHOD_ALGO_MUON);
    hb.hook = ORTHOD_HOOK_HYPERBALL;
    hb.hyperball_radius = 4;
    CU_ASSERT_EQUAL(hook_case(s, hb, 8, 8, 1.0, false), 4.0f);   /* update 8 → 4; 8 − 4 = 4 */
    CU_ASSERT_EQUAL(hook_case(s, hb, 0, 8, 1.0, false), -4.0f);  /* zero weight ends at −4 */
    hb.hyperball_radius = 2;
    hb.hook_eps = 0.25;
    CU_ASSERT_EQUAL(hook_case(s, hb, 2, 0.125f, 1.0, false), 2.0f);      /* update ↦ 0 */
    CU_ASSERT_EQUAL(hook_case(s, hb, 0.125f, 0, 1.0, false), 0.0f);      /* weight ↦ 0 */
    CU_ASSERT_EQUAL(hook_case(s, hb, 0.125f, 0.25f, 1.0, false), -2.0f); /* 0.25 ↦ 2 */

    orthod_optim_config_t ru = def(ORTHOD_ALGO_MUON);
    ru.hook = ORTHOD_HOOK_RELATIVE_UPDATE;
    CU_ASSERT_EQUAL(hook_case(s, ru, 4, 8, 0.5, false), 2.0f); /* update 8 → 4 */
    ru.hook_eps = 0.25;
    CU_ASSERT_EQUAL(hook_case(s, ru, 0.125f, 8, 0.5, false), 0.125f); /* weight < eps */
    CU_ASSERT_EQUAL(hook_case(s, ru, 2, 0.125f, 0.5, false), 2.0f);   /* update < eps */
    CU_ASSERT_EQUAL(hook_case(s, ru, 2, 0.25f, 0.5, false), 1.0f);    /* update → 2 */
  }
}

/* ---- AdamW ------------------------------------------------------------------------------------- */

static void test_adamw_matches_torch(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 89);
  orthod_shape_t shapes[2] = {shp(1, 37, 0, 0), shp(3, 3, 4, 5)};
  for (int si = 0; si < 2; si++)
    for (int ams = 0; ams < 2; ams++) {
      size_t N = (size_t)orthod_shape_numel(&shapes[si]);
      orthod_optim_config_t c = def(ORTHOD_ALGO_ADAMW);
      c.lr = 0.01;
      c.weight_decay = 0.1;
      c.amsgrad = ams;
      orthod_optim_t *o = mk(&c, &shapes[si]);
      float *w = hbuf(N), *g = hbuf(N);
      double *p = calloc(N, sizeof *p), *m = calloc(N, sizeof *m), *v = calloc(N, sizeof *v),
             *vm = calloc(N, sizeof *vm);
      tu_fill_normal(&r, w, N);
      for (size_t i = 0; i < N; i++) p[i] = w[i];
      for (int t = 1; t <= 4; t++) {
        tu_fill_normal(&r, g, N);
        if (t == 3)
          for (size_t i = 0; i < N; i++) g[i] *= 0.01f; /* let amsgrad's max matter */
        TU_OK(host_step(o, w, g, N, c.lr, NULL));
        double bc1 = 1 - pow(0.9, t), bc2 = 1 - pow(0.999, t);
        for (size_t i = 0; i < N; i++) {
          p[i] *= 1 - 0.01 * 0.1;
          m[i] = 0.9 * m[i] + 0.1 * g[i];
          v[i] = 0.999 * v[i] + 0.001 * (double)g[i] * g[i];
          vm[i] = fmax(vm[i], v[i]);
          double vv = ams ? vm[i] : v[i];
          p[i] -= 0.01 / bc1 * m[i] / (sqrt(vv) / sqrt(bc2) + 1e-8);
        }
        /* fp32 vs fp64 over 4 steps of size ~lr: atol 1e-6, rtol 1e-5 */
        CU_ASSERT_TRUE(tu_allclose_d("AdamW vs float64 torch formula", w, p, N, 1e-6, 1e-5));
      }
      CU_ASSERT_EQUAL(orthod_optim_step_count(o), 4);
      const char *name;
      CU_ASSERT_TRUE(orthod_optim_buffer(o, 0, &name, NULL, NULL));
      CU_ASSERT_STRING_EQUAL(name, "exp_avg");
      CU_ASSERT_TRUE(orthod_optim_buffer(o, 1, &name, NULL, NULL));
      CU_ASSERT_STRING_EQUAL(name, "exp_avg_sq");
      CU_ASSERT_EQUAL(orthod_optim_buffer(o, 2, &name, NULL, NULL), (bool)ams);
      if (ams) CU_ASSERT_STRING_EQUAL(name, "max_exp_avg_sq");
      float *dummy = tu_dev_zeros(N);
      TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_orthogonalize(o, dummy, dummy));
      TU_EXPECT_DETAIL("adamw has no orthogonalizer");
      tu_dev_free(dummy);
      orthod_optim_destroy(o);
      free(w), free(g), free(p), free(m), free(v), free(vm);
    }
}

/* ---- reconfigure, errors, memory -------------------------------------------------------------- */

static void test_reconfigure(void) {
  orthod_shape_t s = shp(2, 8, 8, 0);
  orthod_optim_config_t c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
  orthod_optim_t *o = mk(&c, &s);
  orthod_optim_config_t d = c;
  d.lr = 0.5;
  d.num_ns_steps = 3;
  TU_OK(orthod_optim_reconfigure(o, &d));
  CU_ASSERT_EQUAL(orthod_optim_config(o)->lr, 0.5);
  struct {
    const char *key, *value;
  } layout[] = {{"algo", "muon"},   {"moment2_method", "normuon"}, {"amsgrad", "true"},
                {"split_rows", "4,4"}, {"num_heads", "2"},          {"hook", "relative_update"}};
  for (int i = 0; i < 6; i++) {
    d = c;
    TU_OK(orthod_optim_config_set(&d, layout[i].key, layout[i].value));
    TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_reconfigure(o, &d));
    TU_EXPECT_DETAIL(layout[i].key);
    TU_EXPECT_DETAIL("changes the state layout");
  }
  d = c;
  d.num_ns_steps = 0; /* validated against the shape and algorithm */
  TU_EXPECT_ERR(ORTHOD_E_STEPS, orthod_optim_reconfigure(o, &d));
  CU_ASSERT_EQUAL(orthod_optim_config(o)->lr, 0.5); /* unchanged by failures */
  orthod_optim_set_step_count(o, 41);
  CU_ASSERT_EQUAL(orthod_optim_step_count(o), 41);
  orthod_optim_destroy(o);
}

static void test_invalid_arguments(void) {
  orthod_shape_t s = shp(2, 4, 4, 0);
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  orthod_optim_t *o = NULL;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_create(NULL, &c, &s, &o));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_create(tu_backend(), NULL, &s, &o));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_create(tu_backend(), &c, &s, NULL));
  o = mk(&c, &s);
  float *d = tu_dev_zeros(16);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_step(o, NULL, d, 0.1));
  TU_EXPECT_DETAIL("NULL");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_step(o, d, d, NAN));
  TU_EXPECT_DETAIL("lr must be finite");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod__optim_step_with(o, d, d, 0.1, NULL, NULL));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_orthogonalize(o, NULL, d));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_reconfigure(o, NULL));
  CU_ASSERT_FALSE(orthod_optim_buffer(o, -1, NULL, NULL, NULL));
  size_t b;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_state_bytes(NULL, &s, &b));
  CU_ASSERT_EQUAL(orthod_optim_step_count(o), 0);
  tu_dev_free(d);
  orthod_optim_destroy(o);
}

static void test_memory_accounting_and_limit(void) {
  orthod_backend_t *be = NULL;
  orthod_backend_opts_t opts = {0};
  TU_OK(orthod_backend_create_cpu(&opts, &be));
  orthod_shape_t s = shp(2, 256, 384, 0);
  const size_t N = 256 * 384;
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  c.nesterov = true;
  size_t before = orthod_backend_memory_used(be), bytes = 0;
  TU_OK(orthod_optim_state_bytes(&c, &s, &bytes));
  orthod_optim_t *o = NULL;
  orthod_backend_set_memory_limit(be, before + bytes - 4);
  TU_EXPECT_ERR(ORTHOD_E_NOMEM, orthod_optim_create(be, &c, &s, &o)); /* state over the limit */
  CU_ASSERT_PTR_NULL(o);
  CU_ASSERT_EQUAL(orthod_backend_memory_used(be), before);
  orthod_backend_set_memory_limit(be, 0);
  TU_OK(orthod_optim_create(be, &c, &s, &o));
  CU_ASSERT_TRUE(orthod_backend_memory_used(be) >= before + bytes);
  float *w = NULL, *g = NULL;
  TU_OK(orthod_backend_alloc(be, N, &w));
  TU_OK(orthod_backend_alloc(be, N, &g));
  float *hw = hbuf(N), *hg = hbuf(N), *back = hbuf(N), *mom = hbuf(N);
  tu_rng_t r;
  tu_rng_seed(&r, 90);
  tu_fill_normal(&r, hw, N);
  tu_fill_normal(&r, hg, N);
  TU_OK(orthod_backend_upload(be, w, hw, ORTHOD_DTYPE_F32, N));
  TU_OK(orthod_backend_upload(be, g, hg, ORTHOD_DTYPE_F32, N));
  TU_OK(orthod_backend_sync(be));
  /* no room for the step's scratch: E_NOMEM and nothing changed */
  orthod_backend_set_memory_limit(be, orthod_backend_memory_used(be));
  TU_EXPECT_ERR(ORTHOD_E_NOMEM, orthod_optim_step(o, w, g, 0.01));
  orthod_backend_set_memory_limit(be, 0);
  TU_OK(orthod_backend_read(be, back, w, N));
  CU_ASSERT_TRUE(tu_bitequal("weights after a failed step", back, hw, N));
  float *dm = NULL;
  CU_ASSERT_TRUE(orthod_optim_buffer(o, 0, NULL, &dm, NULL));
  TU_OK(orthod_backend_read(be, mom, dm, N));
  for (size_t i = 0; i < N; i += 97) CU_ASSERT_EQUAL(mom[i], 0.0f);
  CU_ASSERT_EQUAL(orthod_optim_step_count(o), 0);
  TU_OK(orthod_optim_step(o, w, g, 0.01)); /* and it works once memory is there */
  CU_ASSERT_EQUAL(orthod_optim_step_count(o), 1);
  orthod_optim_destroy(o);
  orthod_backend_free(be, w);
  orthod_backend_free(be, g);
  CU_ASSERT_TRUE(orthod_backend_memory_used(be) <= before + 8 * N * sizeof(float)); /* scratch cache only */
  orthod_backend_destroy(be);
  free(hw), free(hg), free(back), free(mom);
}

int main(void) {
  static const tu_test_t tests[] = {
      {"base_smoke", test_base_smoke},
      {"core_matches_sgd", test_core_matches_sgd},
      {"core_matches_sgd_with_momentum", test_core_matches_sgd_with_momentum},
      {"state_created_at_construction", test_state_created_at_construction},
      {"split_fn_interleaved", test_split_fn_interleaved},
      {"non_2d_param_rejected", test_non_2d_param_rejected},
      {"muon_smoke", test_muon_smoke},
      {"muon_defaults_read_back", test_muon_defaults_read_back},
      {"muon_use_syrk_matches_without", test_muon_use_syrk_matches_without},
      {"muon_independent_wd", test_muon_independent_wd},
      {"muon_zero_steps_rejected", test_muon_zero_steps_rejected},
      {"muon_matches_spec_step", test_muon_matches_spec_step},
      {"muon_split_rows_blocks", test_muon_split_rows_blocks},
      {"muon_num_heads_matches_per_head", test_muon_num_heads_matches_per_head},
      {"scion", test_scion},
      {"mop", test_mop},
      {"hyperball_norm_preservation", test_hyperball_norm_preservation},
      {"hyperball_invalid", test_hyperball_invalid},
      {"polargrad_smoke", test_polargrad_smoke},
      {"polargrad_orthogonalize_matches_ref", test_polargrad_orthogonalize_matches_ref},
      {"polargrad_one_sided_equivariance", test_polargrad_one_sided_equivariance},
      {"polargrad_one_sided_as_orthogonalizer", test_polargrad_one_sided_as_orthogonalizer},
      {"adaptive_smoke", test_adaptive_smoke},
      {"adaptive_moment2_shapes", test_adaptive_moment2_shapes},
      {"adaptive_moment2_before_scaling", test_adaptive_moment2_before_scaling},
      {"normuon_preserves_pre_scale_norm", test_normuon_preserves_pre_scale_norm},
      {"adaptive_invalid", test_adaptive_invalid},
      {"spel_smoke", test_spel_smoke},
      {"spel_weights_orthogonal", test_spel_weights_orthogonal},
      {"weight_decay_methods", test_weight_decay_methods},
      {"hooks_through_optimizer", test_hooks_through_optimizer},
      {"adamw_matches_torch", test_adamw_matches_torch},
      {"reconfigure", test_reconfigure},
      {"invalid_arguments", test_invalid_arguments},
      {"memory_accounting_and_limit", test_memory_accounting_and_limit},
      {NULL, NULL},
  };
  return tu_run_suite("optimizer", tests);
}
