/* newton_schulz.c — Newton–Schulz orthogonalization (spec §3) and the spectral clipping
 * utilities built on it (§5.7). Written only against the public backend API, so every backend
 * (CPU today, CUDA later) runs this same sequence of GEMM/SYRK and elementwise calls. */
#include "orthod/newton_schulz.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "orthod_internal.h"

/* ---- coefficient sets (spec §3.3; every decimal is exactly representable the same way via
 * double or directly as fp32, so fp32 literals are safe) ---------------------------------------- */

static const orthod_ns_coef_t k_simple[] = {
    {3.4445f, -4.7750f, 2.0315f},
};

static const orthod_ns_coef_t k_quintic[] = {
    {4.0848f, -6.8946f, 2.9270f}, {3.9505f, -6.3029f, 2.6377f}, {3.7418f, -5.5913f, 2.3037f},
    {2.8769f, -3.1427f, 1.2046f}, {2.8366f, -3.0525f, 1.2012f},
};

/* Stability damping (division by 1.01^degree) is already folded into these numbers. */
static const orthod_ns_coef_t k_polar_express[] = {
    {8.2051f, -22.9019f, 16.4607f}, {4.0664f, -2.8612f, 0.5184f}, {3.9096f, -2.8234f, 0.5250f},
    {3.2856f, -2.4153f, 0.4853f},   {2.2779f, -1.6198f, 0.3985f}, {1.8726f, -1.2307f, 0.3585f},
    {1.8564f, -1.2132f, 0.3568f},   {1.8750f, -1.2500f, 0.3750f},
};

static const orthod_ns_coef_t k_cans[] = {
    {8.4703f, -25.1081f, 18.6293f}, {4.1828f, -3.1087f, 0.5806f}, {3.9619f, -2.9541f, 0.5630f},
    {3.2866f, -2.4647f, 0.5074f},   {2.2737f, -1.6447f, 0.4162f},
};

static const orthod_ns_coef_t k_aol[] = {
    {4.0098f, -7.0585f, 2.4635f},
    {3.4585f, -5.5479f, 2.5959f},
    {2.7573f, -3.2939f, 1.4254f},
    {2.7215f, -3.0494f, 1.3169f},
};

static const orthod_ns_coef_t k_deepseekv4[] = {
    {3.4445f, -4.7750f, 2.0315f}, {3.4445f, -4.7750f, 2.0315f}, {3.4445f, -4.7750f, 2.0315f},
    {3.4445f, -4.7750f, 2.0315f}, {3.4445f, -4.7750f, 2.0315f}, {3.4445f, -4.7750f, 2.0315f},
    {3.4445f, -4.7750f, 2.0315f}, {3.4445f, -4.7750f, 2.0315f}, {2.0f, -1.5f, 0.5f},
    {2.0f, -1.5f, 0.5f},
};

/* c == 0 in every tuple: each step takes the one-GEMM cubic path. */
static const orthod_ns_coef_t k_cubic5[] = {
    {3.3656576f, -3.3420992f, 0.0f}, {2.5744352f, -1.4957376f, 0.0f},
    {2.5368962f, -1.4312570f, 0.0f}, {2.4418906f, -1.2764040f, 0.0f},
    {2.2230472f, -0.9630650f, 0.0f},
};

typedef struct {
  const char *name;
  const orthod_ns_coef_t *tuples; /* NULL for custom */
  int count;
  orthod_iter_mode_t mode;
} coef_set;

#define SET(arr, mode) arr, (int)(sizeof arr / sizeof arr[0]), mode
static const coef_set k_sets[ORTHOD_COEF_COUNT] = {
    [ORTHOD_COEF_SIMPLE] = {"simple", SET(k_simple, ORTHOD_ITER_CYCLE)},
    [ORTHOD_COEF_QUINTIC] = {"quintic", SET(k_quintic, ORTHOD_ITER_CYCLE)},
    [ORTHOD_COEF_POLAR_EXPRESS] = {"polar_express", SET(k_polar_express, ORTHOD_ITER_REPEAT_LAST)},
    [ORTHOD_COEF_CANS] = {"cans", SET(k_cans, ORTHOD_ITER_REPEAT_LAST)},
    [ORTHOD_COEF_AOL] = {"aol", SET(k_aol, ORTHOD_ITER_CYCLE)},
    [ORTHOD_COEF_DEEPSEEKV4] = {"deepseekv4", SET(k_deepseekv4, ORTHOD_ITER_REPEAT_LAST)},
    [ORTHOD_COEF_CUBIC5] = {"cubic5", SET(k_cubic5, ORTHOD_ITER_CYCLE)},
    [ORTHOD_COEF_CUSTOM] = {"custom", NULL, 0, ORTHOD_ITER_CYCLE},
};
#undef SET

/* cubic5 is tuned as a whole schedule, so it is only valid with exactly this many steps. */
#define CUBIC5_STEPS 5
/* Spectral utilities use NS_8 with polar_express (spec §5.7). */
#define SPECTRAL_NS_STEPS 8

static bool valid_type(orthod_coef_type_t t) { return (int)t >= 0 && (int)t < ORTHOD_COEF_COUNT; }

static bool valid_precision(orthod_precision_t p) {
  return p == ORTHOD_PREC_HIGHEST || p == ORTHOD_PREC_HIGH || p == ORTHOD_PREC_MEDIUM;
}

static bool coef_finite(orthod_ns_coef_t t) {
  return isfinite(t.a) && isfinite(t.b) && isfinite(t.c);
}

/* ---- options, names, coefficient lookup -------------------------------------------------------- */

void orthod_ns_opts_default(orthod_ns_opts_t *opts) {
  if (opts == NULL) return;
  *opts = (orthod_ns_opts_t){
      .steps = 5,
      .coef_type = ORTHOD_COEF_QUINTIC,
      .n_custom = 0,
      .eps = 1e-15f,
      .transpose = -1,
      .normalize_in_double = false,
      .use_syrk = false,
      .precision = ORTHOD_PREC_HIGHEST,
  };
}

orthod_err_t orthod_ns_coefficient_set(orthod_coef_type_t type, const orthod_ns_coef_t **tuples,
                                       int *count, orthod_iter_mode_t *mode) {
  if (!valid_type(type)) return orthod__fail(ORTHOD_E_INVAL, "Invalid coefficient type: %d", (int)type);
  if (type == ORTHOD_COEF_CUSTOM)
    return orthod__fail(ORTHOD_E_INVAL,
                        "coefficient type 'custom' has no built-in set; its tuples come from the options");
  const coef_set *s = &k_sets[type];
  if (tuples) *tuples = s->tuples;
  if (count) *count = s->count;
  if (mode) *mode = s->mode;
  return ORTHOD_OK;
}

orthod_err_t orthod_ns_validate(const orthod_ns_opts_t *opts) {
  if (opts == NULL) return orthod__fail(ORTHOD_E_INVAL, "newton_schulz: options are NULL");
  if (!valid_type(opts->coef_type))
    return orthod__fail(ORTHOD_E_UNKNOWN_NAME, "Invalid coefficient type: %d", (int)opts->coef_type);
  if (opts->steps < 0)
    return orthod__fail(ORTHOD_E_STEPS, "newton_schulz: steps must be >= 0, got steps=%d", opts->steps);
  if (opts->coef_type == ORTHOD_COEF_CUBIC5 && opts->steps != CUBIC5_STEPS)
    return orthod__fail(ORTHOD_E_STEPS,
                        "cubic5 is a fixed 5-step schedule, got steps=%d; use steps=5", opts->steps);
  if (opts->coef_type == ORTHOD_COEF_CUSTOM) {
    if (opts->n_custom == 0)
      return orthod__fail(ORTHOD_E_INVAL,
                          "custom_coefficient_sets must be provided when coefficient_type is "
                          "'custom' (n_custom is 0; coefficient_sets must be non-empty.)");
    if (opts->n_custom < 0 || opts->n_custom > ORTHOD_NS_MAX_CUSTOM)
      return orthod__fail(ORTHOD_E_INVAL, "custom_coefficient_sets: n_custom=%d is outside [1, %d]",
                          opts->n_custom, ORTHOD_NS_MAX_CUSTOM);
    for (int i = 0; i < opts->n_custom; i++)
      if (!coef_finite(opts->custom[i]))
        return orthod__fail(ORTHOD_E_INVAL,
                            "custom_coefficient_sets[%d] = (%g, %g, %g) is not finite", i,
                            (double)opts->custom[i].a, (double)opts->custom[i].b,
                            (double)opts->custom[i].c);
  }
  /* eps is a floor on the norm; 0 is allowed (a zero input then gives NaN, as torch does). */
  if (!(opts->eps >= 0.0f) || isinf(opts->eps))
    return orthod__fail(ORTHOD_E_INVAL, "newton_schulz: eps must be finite and >= 0, got %g",
                        (double)opts->eps);
  if (opts->transpose < -1 || opts->transpose > 1)
    return orthod__fail(ORTHOD_E_INVAL,
                        "newton_schulz: transpose must be -1 (auto), 0 or 1, got %d", opts->transpose);
  if (!valid_precision(opts->precision))
    return orthod__fail(ORTHOD_E_INVAL, "newton_schulz: invalid precision %d", (int)opts->precision);
  return ORTHOD_OK;
}

/* The tuple for step i of an already validated opts. */
static orthod_ns_coef_t tuple_at(const orthod_ns_opts_t *opts, int i) {
  if (opts->coef_type == ORTHOD_COEF_CUSTOM) return opts->custom[i % opts->n_custom];
  const coef_set *s = &k_sets[opts->coef_type];
  int idx = s->mode == ORTHOD_ITER_CYCLE ? i % s->count : (i < s->count ? i : s->count - 1);
  return s->tuples[idx];
}

orthod_err_t orthod_ns_coefficient_at(const orthod_ns_opts_t *opts, int i, orthod_ns_coef_t *out) {
  ORTHOD_TRY(orthod_ns_validate(opts));
  if (out == NULL) return orthod__fail(ORTHOD_E_INVAL, "coefficient_at: output pointer is NULL");
  if (i < 0) return orthod__fail(ORTHOD_E_INVAL, "coefficient_at: iteration %d is negative", i);
  *out = tuple_at(opts, i);
  return ORTHOD_OK;
}

const char *orthod_coef_type_name(orthod_coef_type_t type) {
  return valid_type(type) ? k_sets[type].name : "?";
}

orthod_err_t orthod_coef_type_from_name(const char *name, orthod_coef_type_t *out) {
  if (name == NULL || out == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "coef_type_from_name: NULL argument");
  for (int t = 0; t < ORTHOD_COEF_COUNT; t++) {
    if (orthod__streq_nocase(name, k_sets[t].name)) {
      *out = (orthod_coef_type_t)t;
      return ORTHOD_OK;
    }
  }
  return orthod__fail(ORTHOD_E_UNKNOWN_NAME,
                      "Invalid coefficient type: %s (expected simple, quintic, polar_express, cans, "
                      "aol, deepseekv4, cubic5 or custom)",
                      name);
}

static const char *const k_prec_names[] = {
    [ORTHOD_PREC_HIGHEST] = "highest", [ORTHOD_PREC_HIGH] = "high", [ORTHOD_PREC_MEDIUM] = "medium"};

const char *orthod_precision_name(orthod_precision_t p) {
  return valid_precision(p) ? k_prec_names[p] : "?";
}

orthod_err_t orthod_precision_from_name(const char *name, orthod_precision_t *out) {
  if (name == NULL || out == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "precision_from_name: NULL argument");
  for (int p = 0; p <= (int)ORTHOD_PREC_MEDIUM; p++) {
    if (orthod__streq_nocase(name, k_prec_names[p])) {
      *out = (orthod_precision_t)p;
      return ORTHOD_OK;
    }
  }
  return orthod__fail(ORTHOD_E_UNKNOWN_NAME,
                      "Invalid precision: %s (expected highest, high or medium)", name);
}

double orthod_ns_flops(int64_t rows, int64_t cols, int steps) {
  if (rows <= 0 || cols <= 0 || steps <= 0) return 0.0;
  double r = (double)(rows < cols ? rows : cols), c = (double)(rows < cols ? cols : rows);
  return 2.0 * (2.0 * r * r * c + r * r * r) * (double)steps;
}

/* ---- one iteration (spec §3.5) ------------------------------------------------------------------ */

/* Workspace of one iteration on `batch` wide r x c slices; A and B are batch x r x r. */
typedef struct {
  orthod_backend_t *be;
  int64_t batch, r, c;
  float *a, *b; /* b is NULL when only cubic tuples run */
  bool use_syrk;
  orthod_precision_t prec;
} ns_work;

/* C = alpha · S Sᵀ + beta · C for the batch of r x k row-major S (ld k) into r x r C. Used for
 * the Gram X Xᵀ and for A A = A Aᵀ (A symmetric). With SYRK only one triangle is computed. */
static orthod_err_t sym_product(const ns_work *w, const float *s, int64_t k, float alpha, float beta,
                                float *cm) {
  int64_t r = w->r;
  if (w->use_syrk) {
    orthod_syrk_t sy = {.trans = false, .n = r, .k = k, .alpha = alpha, .beta = beta,
                        .a = s, .lda = k, .stride_a = r * k,
                        .c = cm, .ldc = r, .stride_c = r * r,
                        .batch = w->batch, .precision = w->prec};
    return orthod_backend_syrk(w->be, &sy);
  }
  orthod_gemm_t g = {.trans_a = false, .trans_b = true, .m = r, .n = r, .k = k,
                     .alpha = alpha, .beta = beta,
                     .a = s, .lda = k, .stride_a = r * k,
                     .b = s, .ldb = k, .stride_b = r * k,
                     .c = cm, .ldc = r, .stride_c = r * r,
                     .batch = w->batch, .precision = w->prec};
  return orthod_backend_gemm(w->be, &g);
}

/* One step. xin is X (read only); xout holds a copy of X on entry and X_new on return, so the
 * `a·X` term is the beta epilogue of the last GEMM and no separate axpy pass is needed. */
static orthod_err_t ns_step_core(const ns_work *w, const float *xin, float *xout, orthod_ns_coef_t k) {
  int64_t r = w->r, c = w->c, rr = r * r;
  /* A = X Xᵀ */
  ORTHOD_TRY(sym_product(w, xin, c, 1.0f, 0.0f, w->a));
  const float *left;
  float alpha;
  if (k.c == 0.0f) {
    /* Cubic path (exactly c == 0): X_new = b·(A X) + a·X in one GEMM. */
    left = w->a;
    alpha = k.b;
  } else {
    /* Quintic path: B = c·(A A) + b·A, one product whose beta epilogue adds b·A. */
    ORTHOD_ASSERT(w->b != NULL);
    ORTHOD_TRY(orthod_backend_copy(w->be, w->b, w->a, (size_t)(w->batch * rr)));
    ORTHOD_TRY(sym_product(w, w->a, r, k.c, k.b, w->b));
    left = w->b;
    alpha = 1.0f;
  }
  orthod_gemm_t g = {.trans_a = false, .trans_b = false, .m = r, .n = c, .k = r,
                     .alpha = alpha, .beta = k.a,
                     .a = left, .lda = r, .stride_a = rr,
                     .b = xin, .ldb = c, .stride_b = r * c,
                     .c = xout, .ldc = c, .stride_c = r * c,
                     .batch = w->batch, .precision = w->prec};
  return orthod_backend_gemm(w->be, &g);
}

static orthod_err_t check_dims(const char *op, int64_t batch, int64_t rows, int64_t cols,
                               size_t *numel) {
  if (batch <= 0 || rows <= 0 || cols <= 0)
    return orthod__fail(ORTHOD_E_SHAPE,
                        "%s: x must be 2d or 3d (batched 2d) with every dimension >= 1, got "
                        "batch=%lld rows=%lld cols=%lld",
                        op, (long long)batch, (long long)rows, (long long)cols);
  /* Each buffer and the r x r products must be addressable in floats. */
  int64_t big = rows > cols ? rows : cols;
  if (rows > INT64_MAX / cols || batch > INT64_MAX / (rows * cols) || big > INT64_MAX / big ||
      batch > INT64_MAX / (big * big) || (uint64_t)(batch * rows * cols) > SIZE_MAX / sizeof(float))
    return orthod__fail(ORTHOD_E_OVERFLOW, "%s: %lldx%lldx%lld elements overflow", op,
                        (long long)batch, (long long)rows, (long long)cols);
  *numel = (size_t)(batch * rows * cols);
  return ORTHOD_OK;
}

orthod_err_t orthod_ns_step(orthod_backend_t *be, float *x, int64_t batch, int64_t r, int64_t c,
                            orthod_ns_coef_t coef, bool use_syrk, orthod_precision_t precision) {
  if (be == NULL || x == NULL) return orthod__fail(ORTHOD_E_INVAL, "ns_step: backend or x is NULL");
  size_t n = 0;
  ORTHOD_TRY(check_dims("ns_step", batch, r, c, &n));
  /* r <= c is the cheap orientation; a tall X is still valid math (its Gram is r x r), and the
   * spec's batched cubic-step test uses a tall (3, 32, 16) input, so it is accepted. */
  if (!coef_finite(coef))
    return orthod__fail(ORTHOD_E_INVAL, "ns_step: coefficients (%g, %g, %g) are not finite",
                        (double)coef.a, (double)coef.b, (double)coef.c);
  if (!valid_precision(precision))
    return orthod__fail(ORTHOD_E_INVAL, "ns_step: invalid precision %d", (int)precision);

  size_t mark = orthod_backend_scratch_mark(be);
  ns_work w = {.be = be, .batch = batch, .r = r, .c = c, .use_syrk = use_syrk, .prec = precision};
  float *xin = NULL;
  size_t rr = (size_t)(batch * r * r);
  orthod_err_t err = orthod_backend_scratch(be, n, &xin);
  if (err == ORTHOD_OK) err = orthod_backend_scratch(be, rr, &w.a);
  if (err == ORTHOD_OK && coef.c != 0.0f) err = orthod_backend_scratch(be, rr, &w.b);
  /* x keeps X as the beta input of the last GEMM; the snapshot is the GEMM operand. */
  if (err == ORTHOD_OK) err = orthod_backend_copy(be, xin, x, n);
  if (err == ORTHOD_OK) err = ns_step_core(&w, xin, x, coef);
  orthod_backend_scratch_reset(be, mark);
  return err;
}

/* ---- the full orthogonalization (spec §3.2) ---------------------------------------------------- */

orthod_err_t orthod_newton_schulz(orthod_backend_t *be, float *out, const float *x, int64_t batch,
                                  int64_t rows, int64_t cols, const orthod_ns_opts_t *opts) {
  if (be == NULL || out == NULL || x == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "newton_schulz: backend, out or x is NULL");
  size_t n = 0;
  ORTHOD_TRY(check_dims("newton_schulz", batch, rows, cols, &n));
  ORTHOD_TRY(orthod_ns_validate(opts));

  /* 1. Transpose decision: work on the wide form so the Gram is the small r x r side. */
  bool t = opts->transpose < 0 ? rows > cols : opts->transpose == 1;
  int64_t r = t ? cols : rows, c = t ? rows : cols;
  bool need_b = false;
  for (int i = 0; i < opts->steps && !need_b; i++) need_b = tuple_at(opts, i).c != 0.0f;

  size_t mark = orthod_backend_scratch_mark(be);
  ns_work w = {.be = be, .batch = batch, .r = r, .c = c, .use_syrk = opts->use_syrk,
               .prec = opts->precision};
  size_t rr = (size_t)(batch * r * r);
  float *xcur = NULL, *xalt = NULL;
  orthod_err_t err = ORTHOD_OK;
  if (t) {
    /* Transposed: both ping-pong buffers are scratch; the result is transposed back into out. */
    err = orthod_backend_scratch(be, n, &xcur);
    if (err == ORTHOD_OK) err = orthod_backend_transpose(be, xcur, x, batch, rows, cols);
  } else {
    /* Not transposed: out itself is one ping-pong buffer, saving one n-float temporary. */
    xcur = out;
    if (out != x) err = orthod_backend_copy(be, out, x, n);
  }
  if (err == ORTHOD_OK && opts->steps > 0) {
    err = orthod_backend_scratch(be, n, &xalt);
    if (err == ORTHOD_OK) err = orthod_backend_scratch(be, rr, &w.a);
    if (err == ORTHOD_OK && need_b) err = orthod_backend_scratch(be, rr, &w.b);
  }
  if (err != ORTHOD_OK) goto done;

  /* 2. Per-slice normalisation by the Frobenius norm. */
  err = orthod_backend_normalize(be, xcur, batch, (size_t)(r * c), opts->eps,
                                 opts->normalize_in_double);
  if (err != ORTHOD_OK) goto done;
  /* 4. medium: X enters the loop as bf16 values (and leaves bf16-rounded even with 0 steps). */
  if (opts->precision == ORTHOD_PREC_MEDIUM) {
    err = orthod_backend_round_bf16(be, xcur, n);
    if (err != ORTHOD_OK) goto done;
  }
  /* 3 + 5. The iterations, ping-ponging: xalt gets a copy of X, the step's last GEMM turns it
   * into X_new through its beta = a epilogue, then the roles swap. */
  for (int i = 0; i < opts->steps; i++) {
    err = orthod_backend_copy(be, xalt, xcur, n);
    if (err == ORTHOD_OK) err = ns_step_core(&w, xcur, xalt, tuple_at(opts, i));
    if (err != ORTHOD_OK) goto done;
    float *tmp = xcur;
    xcur = xalt;
    xalt = tmp;
  }
  /* 6. Back to the caller's layout (values are fp32 throughout; medium ones are bf16-exact). */
  if (t)
    err = orthod_backend_transpose(be, out, xcur, batch, r, c);
  else if (xcur != out)
    err = orthod_backend_copy(be, out, xcur, n);

done:
  orthod_backend_scratch_reset(be, mark);
  return err;
}

/* ---- spectral clipping utilities (spec §5.7) --------------------------------------------------- */

/* GEMMs outside Newton–Schulz are plain fp32 products under the ambient precision: `medium`
 * there means PyTorch's meaning (TF32 allowed on GPU, fp32 on CPU), not bf16 storage. */
static orthod_precision_t plain_precision(orthod_precision_t p) {
  return p == ORTHOD_PREC_HIGHEST ? ORTHOD_PREC_HIGHEST : ORTHOD_PREC_HIGH;
}

static orthod_err_t ns8(orthod_backend_t *be, float *out, const float *x, int64_t rows, int64_t cols,
                        orthod_precision_t precision) {
  orthod_ns_opts_t o;
  orthod_ns_opts_default(&o);
  o.coef_type = ORTHOD_COEF_POLAR_EXPRESS;
  o.steps = SPECTRAL_NS_STEPS;
  o.precision = precision;
  return orthod_newton_schulz(be, out, x, 1, rows, cols, &o);
}

/* Plain 2-D row-major GEMM C = alpha·op(A)·op(B) + beta·C. */
static orthod_err_t gemm2d(orthod_backend_t *be, bool ta, bool tb, int64_t m, int64_t nn, int64_t k,
                           float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                           float beta, float *cm, int64_t ldc, orthod_precision_t prec) {
  orthod_gemm_t g = {.trans_a = ta, .trans_b = tb, .m = m, .n = nn, .k = k,
                     .alpha = alpha, .beta = beta,
                     .a = a, .lda = lda, .stride_a = 0,
                     .b = b, .ldb = ldb, .stride_b = 0,
                     .c = cm, .ldc = ldc, .stride_c = 0,
                     .batch = 1, .precision = prec};
  return orthod_backend_gemm(be, &g);
}

/* Common entry: checks, wide form of x into *xw (x itself or a scratch transpose). */
static orthod_err_t spectral_prologue(const char *op, orthod_backend_t *be, float *out,
                                      const float *x, int64_t rows, int64_t cols,
                                      orthod_precision_t precision, const float **xw, int64_t *r,
                                      int64_t *c, bool *t) {
  if (be == NULL || out == NULL || x == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "%s: backend, out or x is NULL", op);
  size_t n = 0;
  ORTHOD_TRY(check_dims(op, 1, rows, cols, &n));
  if (!valid_precision(precision))
    return orthod__fail(ORTHOD_E_INVAL, "%s: invalid precision %d", op, (int)precision);
  const float *x_end = x + n, *o_end = out + n;
  if (out < x_end && x < o_end) return orthod__fail(ORTHOD_E_INVAL, "%s: out may not alias x", op);
  *t = rows > cols;
  *r = *t ? cols : rows;
  *c = *t ? rows : cols;
  if (!*t) {
    *xw = x;
    return ORTHOD_OK;
  }
  float *tmp = NULL;
  ORTHOD_TRY(orthod_backend_scratch(be, n, &tmp));
  ORTHOD_TRY(orthod_backend_transpose(be, tmp, x, 1, rows, cols));
  *xw = tmp;
  return ORTHOD_OK;
}

/* Write the wide result R (r x c) into out in the caller's layout, halving it first. */
static orthod_err_t spectral_epilogue(orthod_backend_t *be, float *out, float *res, int64_t r,
                                      int64_t c, bool t) {
  ORTHOD_TRY(orthod_backend_scale(be, res, 0.5f, (size_t)(r * c)));
  if (t) return orthod_backend_transpose(be, out, res, 1, r, c);
  return orthod_backend_copy(be, out, res, (size_t)(r * c));
}

static orthod_err_t spectral_clip_body(orthod_backend_t *be, float *out, const float *x,
                                       int64_t rows, int64_t cols, float lo, float hi,
                                       orthod_precision_t precision) {
  const float *xw = NULL;
  int64_t r = 0, c = 0;
  bool t = false;
  ORTHOD_TRY(spectral_prologue("spectral_clip", be, out, x, rows, cols, precision, &xw, &r, &c, &t));
  if (!isfinite(lo) || !isfinite(hi))
    return orthod__fail(ORTHOD_E_INVAL, "spectral_clip: bounds must be finite, got [%g, %g]",
                        (double)lo, (double)hi);
  orthod_precision_t pp = plain_precision(precision);
  size_t n = (size_t)(r * c), rr = (size_t)(r * r);
  float *o = NULL, *res = NULL, *as = NULL, *nas = NULL, *bs = NULL, *eye = NULL;
  ORTHOD_TRY(orthod_backend_scratch(be, n, &o));
  ORTHOD_TRY(orthod_backend_scratch(be, n, &res));
  ORTHOD_TRY(orthod_backend_scratch(be, n, &bs));
  ORTHOD_TRY(orthod_backend_scratch(be, rr, &as));
  ORTHOD_TRY(orthod_backend_scratch(be, rr, &nas));
  ORTHOD_TRY(orthod_backend_scratch(be, rr, &eye));

  /* The identity is built on the host and uploaded once (the API has no diagonal kernel). */
  float *host_eye = calloc(rr, sizeof *host_eye);
  if (host_eye == NULL)
    return orthod__fail(ORTHOD_E_NOMEM, "spectral_clip: host identity of %zu floats", rr);
  for (int64_t i = 0; i < r; i++) host_eye[i * r + i] = 1.0f;
  orthod_err_t err = orthod_backend_upload(be, eye, host_eye, ORTHOD_DTYPE_F32, rr);
  if (err == ORTHOD_OK) err = orthod_backend_sync(be); /* the host buffer must outlive the copy */
  free(host_eye);
  ORTHOD_TRY(err);

  /* O = NS_8(X) ≈ P Qᵀ; R = (lo + hi)·O. */
  ORTHOD_TRY(ns8(be, o, xw, r, c, precision));
  ORTHOD_TRY(orthod_backend_copy(be, res, o, n));
  ORTHOD_TRY(orthod_backend_scale(be, res, lo + hi, n));
  const float s_list[2] = {lo, hi}, sgn_list[2] = {1.0f, -1.0f};
  for (int j = 0; j < 2; j++) {
    float s = s_list[j];
    /* A_s = s·I − O Xᵀ  (= P (s − Σ) Pᵀ, r x r) */
    ORTHOD_TRY(orthod_backend_zero(be, as, rr));
    ORTHOD_TRY(orthod_backend_axpy(be, as, s, eye, rr));
    ORTHOD_TRY(gemm2d(be, false, true, r, r, c, -1.0f, o, c, xw, c, 1.0f, as, r, pp));
    /* B_s = s·O − X  (= P (s − Σ) Qᵀ), as −X + s·O: negation is exact and + commutes. */
    ORTHOD_TRY(orthod_backend_copy(be, bs, xw, n));
    ORTHOD_TRY(orthod_backend_scale(be, bs, -1.0f, n));
    ORTHOD_TRY(orthod_backend_axpy(be, bs, s, o, n));
    /* R += sgn · NS_8(A_s) · B_s  (= ± P |s − Σ| Qᵀ) */
    ORTHOD_TRY(ns8(be, nas, as, r, r, precision));
    ORTHOD_TRY(gemm2d(be, false, false, r, c, r, sgn_list[j], nas, r, bs, c, 1.0f, res, c, pp));
  }
  return spectral_epilogue(be, out, res, r, c, t);
}

orthod_err_t orthod_spectral_clip(orthod_backend_t *be, float *out, const float *x, int64_t rows,
                                  int64_t cols, float lo, float hi, orthod_precision_t precision) {
  size_t mark = orthod_backend_scratch_mark(be);
  orthod_err_t err = spectral_clip_body(be, out, x, rows, cols, lo, hi, precision);
  orthod_backend_scratch_reset(be, mark);
  return err;
}

static orthod_err_t spectral_hardcap_body(orthod_backend_t *be, float *out, const float *x,
                                          int64_t rows, int64_t cols, float beta,
                                          orthod_precision_t precision) {
  const float *xw = NULL;
  int64_t r = 0, c = 0;
  bool t = false;
  ORTHOD_TRY(spectral_prologue("spectral_hardcap", be, out, x, rows, cols, precision, &xw, &r, &c, &t));
  if (!isfinite(beta))
    return orthod__fail(ORTHOD_E_INVAL, "spectral_hardcap: beta must be finite, got %g", (double)beta);
  orthod_precision_t pp = plain_precision(precision);
  size_t n = (size_t)(r * c), cc = (size_t)(c * c);
  float *o = NULL, *d = NULL, *nd = NULL, *res = NULL, *tq = NULL;
  ORTHOD_TRY(orthod_backend_scratch(be, n, &o));
  ORTHOD_TRY(orthod_backend_scratch(be, n, &d));
  ORTHOD_TRY(orthod_backend_scratch(be, n, &nd));
  ORTHOD_TRY(orthod_backend_scratch(be, n, &res));
  ORTHOD_TRY(orthod_backend_scratch(be, cc, &tq));

  ORTHOD_TRY(ns8(be, o, xw, r, c, precision));
  /* D = β·O − X (as −X + β·O) */
  ORTHOD_TRY(orthod_backend_copy(be, d, xw, n));
  ORTHOD_TRY(orthod_backend_scale(be, d, -1.0f, n));
  ORTHOD_TRY(orthod_backend_axpy(be, d, beta, o, n));
  /* T = NS_8(D)ᵀ O  (c x c = Q sign(β − Σ) Qᵀ). The spec's association D·(NS_8(D)ᵀ O) is kept
   * for parity with the reference even though (D NS_8(D)ᵀ) O would be an r x r intermediate. */
  ORTHOD_TRY(ns8(be, nd, d, r, c, precision));
  ORTHOD_TRY(gemm2d(be, true, false, c, c, r, 1.0f, nd, c, o, c, 0.0f, tq, c, pp));
  /* R = β·O + X − D·T */
  ORTHOD_TRY(orthod_backend_copy(be, res, xw, n));
  ORTHOD_TRY(orthod_backend_axpy(be, res, beta, o, n));
  ORTHOD_TRY(gemm2d(be, false, false, r, c, c, -1.0f, d, c, tq, c, 1.0f, res, c, pp));
  return spectral_epilogue(be, out, res, r, c, t);
}

orthod_err_t orthod_spectral_hardcap(orthod_backend_t *be, float *out, const float *x,
                                     int64_t rows, int64_t cols, float beta,
                                     orthod_precision_t precision) {
  size_t mark = orthod_backend_scratch_mark(be);
  orthod_err_t err = spectral_hardcap_body(be, out, x, rows, cols, beta, precision);
  orthod_backend_scratch_reset(be, mark);
  return err;
}
