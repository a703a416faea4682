/* optimizer.c — per-parameter state and the step of every algorithm (spec 1.3, 2, 4, 5, 6).
 * Written only against backend.h and newton_schulz.h so every backend runs the same code.
 * Scalars of the update are formed in double and cast to fp32 once, as PyTorch does (spec 1.6). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "optimizer_impl.h"
#include "orthod_internal.h"

/* Sub-buffers of the one state allocation start on 64-byte boundaries. */
#define STATE_ALIGN_FLOATS 16u
#define ABSENT SIZE_MAX

typedef struct {
  size_t momentum, moment2, exp_avg, exp_avg_sq, max_exp_avg_sq; /* offsets in floats or ABSENT */
  size_t moment2_n;                                              /* floats of moment2 */
  size_t total;                                                  /* floats to allocate */
} layout_t;

struct orthod_optim {
  orthod_backend_t *be;        /* not owned */
  orthod_optim_config_t cfg;
  orthod_shape_t shape;
  size_t numel;
  int64_t m, n;                /* matrix view: dim0 x (numel / dim0); 1 x numel for rank 1 */
  int64_t step;                /* steps taken */
  bool radius_checked;         /* MuonHyperball: ‖W‖_F matched R at the first step */
  float *state;                /* the one device allocation (layout.total floats), or NULL */
  layout_t layout;
  float *momentum;             /* numel, orthogonalized algorithms */
  float *moment2;              /* AdaptiveMuon: numel (adamuon), m or n (normuon), 1 (namo) */
  float *exp_avg, *exp_avg_sq; /* AdamW: numel each */
  float *max_exp_avg_sq;       /* AdamW with amsgrad: numel */
};

/* ---- layout ----------------------------------------------------------------------------------- */

static void view_of(const orthod_shape_t *s, int64_t *m, int64_t *n) {
  int64_t numel = orthod_shape_numel(s);
  *m = s->ndim >= 2 ? s->dims[0] : 1;
  *n = numel / *m;
}

static orthod_err_t add_buf(layout_t *l, size_t floats, size_t *off) {
  size_t at = (l->total + STATE_ALIGN_FLOATS - 1) / STATE_ALIGN_FLOATS * STATE_ALIGN_FLOATS;
  if (at < l->total || floats > SIZE_MAX - at)
    return orthod__fail(ORTHOD_E_OVERFLOW, "optimizer state size overflows");
  *off = at;
  l->total = at + floats;
  return ORTHOD_OK;
}

static orthod_err_t layout_of(const orthod_optim_config_t *cfg, const orthod_shape_t *shape,
                              layout_t *l) {
  *l = (layout_t){ABSENT, ABSENT, ABSENT, ABSENT, ABSENT, 0, 0};
  size_t numel = (size_t)orthod_shape_numel(shape);
  int64_t m, n;
  view_of(shape, &m, &n);
  if (cfg->algo == ORTHOD_ALGO_ADAMW) {
    ORTHOD_TRY(add_buf(l, numel, &l->exp_avg));
    ORTHOD_TRY(add_buf(l, numel, &l->exp_avg_sq));
    if (cfg->amsgrad) ORTHOD_TRY(add_buf(l, numel, &l->max_exp_avg_sq));
  } else {
    ORTHOD_TRY(add_buf(l, numel, &l->momentum));
    if (cfg->algo == ORTHOD_ALGO_ADAPTIVE_MUON) {
      switch (cfg->moment2_method) {
        case ORTHOD_MOMENT2_ADAMUON: l->moment2_n = numel; break;
        case ORTHOD_MOMENT2_NORMUON: l->moment2_n = (size_t)(m >= n ? m : n); break;
        default: l->moment2_n = 1; break;
      }
      ORTHOD_TRY(add_buf(l, l->moment2_n, &l->moment2));
    }
  }
  if (l->total > SIZE_MAX / sizeof(float))
    return orthod__fail(ORTHOD_E_OVERFLOW, "optimizer state size overflows");
  return ORTHOD_OK;
}

orthod_err_t orthod_optim_state_bytes(const orthod_optim_config_t *cfg, const orthod_shape_t *shape,
                                      size_t *out) {
  if (cfg == NULL || shape == NULL || out == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "optim_state_bytes: NULL argument");
  ORTHOD_TRY(orthod_optim_config_validate(cfg, shape));
  layout_t l;
  ORTHOD_TRY(layout_of(cfg, shape, &l));
  *out = l.total * sizeof(float);
  return ORTHOD_OK;
}

/* ---- create / destroy ------------------------------------------------------------------------- */

orthod_err_t orthod_optim_create(orthod_backend_t *be, const orthod_optim_config_t *cfg,
                                 const orthod_shape_t *shape, orthod_optim_t **out) {
  if (out != NULL) *out = NULL;
  if (be == NULL || cfg == NULL || shape == NULL || out == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "optim_create: NULL argument");
  ORTHOD_TRY(orthod_optim_config_validate(cfg, shape));
  orthod_optim_t *o = calloc(1, sizeof *o);
  if (o == NULL) return orthod__fail(ORTHOD_E_NOMEM, "optim_create: out of host memory");
  o->be = be;
  o->cfg = *cfg;
  o->shape = *shape;
  o->numel = (size_t)orthod_shape_numel(shape);
  view_of(shape, &o->m, &o->n);
  orthod_err_t err = layout_of(cfg, shape, &o->layout);
  if (err == ORTHOD_OK) err = orthod_backend_alloc(be, o->layout.total, &o->state);
  if (err == ORTHOD_OK) err = orthod_backend_zero(be, o->state, o->layout.total);
  if (err != ORTHOD_OK) goto fail;
#define CARVE(field) o->field = o->layout.field == ABSENT ? NULL : o->state + o->layout.field
  CARVE(momentum);
  CARVE(moment2);
  CARVE(exp_avg);
  CARVE(exp_avg_sq);
  CARVE(max_exp_avg_sq);
#undef CARVE
  *out = o;
  return ORTHOD_OK;

fail:
  orthod_optim_destroy(o);
  return err;
}

void orthod_optim_destroy(orthod_optim_t *opt) {
  if (opt == NULL) return;
  if (opt->state != NULL) orthod_backend_free(opt->be, opt->state);
  opt->state = NULL;
  opt->momentum = opt->moment2 = opt->exp_avg = opt->exp_avg_sq = opt->max_exp_avg_sq = NULL;
  free(opt);
}

int64_t orthod_optim_step_count(const orthod_optim_t *opt) { return opt->step; }
void orthod_optim_set_step_count(orthod_optim_t *opt, int64_t step) { opt->step = step; }
const orthod_optim_config_t *orthod_optim_config(const orthod_optim_t *opt) { return &opt->cfg; }

void orthod__optim_view(const orthod_optim_t *opt, int64_t *m, int64_t *n) {
  *m = opt->m;
  *n = opt->n;
}

typedef struct {
  const char *name;
  float *p;
  size_t n;
} buf_ref_t;

bool orthod_optim_buffer(const orthod_optim_t *opt, int i, const char **name, float **data,
                         size_t *n) {
  if (opt == NULL || i < 0) return false;
  buf_ref_t bufs[3];
  int count = 0;
  if (opt->momentum) bufs[count++] = (buf_ref_t){"momentum_buffer", opt->momentum, opt->numel};
  if (opt->moment2)
    bufs[count++] = (buf_ref_t){"moment2_buffer", opt->moment2, opt->layout.moment2_n};
  if (opt->exp_avg) bufs[count++] = (buf_ref_t){"exp_avg", opt->exp_avg, opt->numel};
  if (opt->exp_avg_sq) bufs[count++] = (buf_ref_t){"exp_avg_sq", opt->exp_avg_sq, opt->numel};
  if (opt->max_exp_avg_sq)
    bufs[count++] = (buf_ref_t){"max_exp_avg_sq", opt->max_exp_avg_sq, opt->numel};
  if (i >= count) return false;
  if (name) *name = bufs[i].name;
  if (data) *data = bufs[i].p;
  if (n) *n = bufs[i].n;
  return true;
}

static bool same_splits(const orthod_optim_config_t *a, const orthod_optim_config_t *b) {
  if (a->n_splits != b->n_splits) return false;
  for (int i = 0; i < a->n_splits; i++)
    if (a->split_rows[i] != b->split_rows[i]) return false;
  return true;
}

orthod_err_t orthod_optim_reconfigure(orthod_optim_t *opt, const orthod_optim_config_t *cfg) {
  if (opt == NULL || cfg == NULL) return orthod__fail(ORTHOD_E_INVAL, "optim_reconfigure: NULL argument");
  const orthod_optim_config_t *c = &opt->cfg;
  const char *key = NULL;
  if (cfg->algo != c->algo) key = "algo";
  else if (cfg->moment2_method != c->moment2_method) key = "moment2_method";
  else if (cfg->amsgrad != c->amsgrad) key = "amsgrad";
  else if (!same_splits(cfg, c)) key = "split_rows";
  else if ((cfg->num_heads > 1 ? cfg->num_heads : 0) != (c->num_heads > 1 ? c->num_heads : 0)) key = "num_heads";
  else if (cfg->hook != c->hook) key = "hook";
  if (key != NULL)
    return orthod__fail(ORTHOD_E_INVAL, "reconfigure: %s changes the state layout and must stay the same",
                        key);
  ORTHOD_TRY(orthod_optim_config_validate(cfg, &opt->shape));
  /* A new radius is a new construction for MuonHyperball: check it again at the next step. */
  if (cfg->hyperball_radius != c->hyperball_radius) opt->radius_checked = false;
  opt->cfg = *cfg;
  return ORTHOD_OK;
}

/* ---- weight decay (spec 2) -------------------------------------------------------------------- */

/* The part that writes the gradient (l2): G ← G + (float)λ·p. */
static orthod_err_t decay_grad(orthod_backend_t *be, orthod_wd_method_t method, const float *p,
                               float *g, size_t n, double wd) {
  if (wd == 0.0 || method != ORTHOD_WD_L2) return ORTHOD_OK;
  return orthod_backend_axpy(be, g, (float)wd, p, n);
}

/* The part that writes the weights: p ← p + (float)(−k)·p with k formed in double. */
static orthod_err_t decay_weights(orthod_backend_t *be, orthod_wd_method_t method, float *p,
                                  size_t n, double lr, double wd) {
  if (wd == 0.0) return ORTHOD_OK;
  double k;
  switch (method) {
    case ORTHOD_WD_DECOUPLED: k = wd * lr; break;
    case ORTHOD_WD_INDEPENDENT: k = wd; break;
    case ORTHOD_WD_PALM: k = wd * lr * lr; break;
    case ORTHOD_WD_L2: return ORTHOD_OK;
    default: return orthod__fail(ORTHOD_E_INVAL, "Invalid weight decay method: %d", (int)method);
  }
  return orthod_backend_axpy(be, p, (float)(-k), p, n);
}

orthod_err_t orthod__weight_decay(orthod_backend_t *be, orthod_wd_method_t method, float *p,
                                  float *g, size_t n, double lr, double wd) {
  if ((int)method < 0 || method >= ORTHOD_WD_COUNT)
    return orthod__fail(ORTHOD_E_INVAL, "Invalid weight decay method: %d", (int)method);
  ORTHOD_TRY(decay_grad(be, method, p, g, n, wd));
  return decay_weights(be, method, p, n, lr, wd);
}

/* ---- orthogonalizers (spec 4, 5, 6) ----------------------------------------------------------- */

/* A run of `batch` contiguous rows x n slices starting at row `row0` of the matrix view. */
typedef struct {
  int64_t row0, rows, batch;
} block_t;

static int blocks_of(const orthod_optim_t *o, block_t out[ORTHOD_MAX_SPLITS]) {
  const orthod_optim_config_t *c = &o->cfg;
  if (c->n_splits > 0) {
    int64_t r0 = 0;
    for (int i = 0; i < c->n_splits; i++) {
      out[i] = (block_t){r0, c->split_rows[i], 1};
      r0 += c->split_rows[i];
    }
    return c->n_splits;
  }
  if (c->num_heads > 1) {
    out[0] = (block_t){0, o->m / c->num_heads, c->num_heads};
    return 1;
  }
  out[0] = (block_t){0, o->m, 1};
  return 1;
}

static void ns_opts_of(const orthod_optim_config_t *c, orthod_ns_opts_t *ns) {
  orthod_ns_opts_default(ns);
  ns->steps = c->num_ns_steps;
  ns->coef_type = c->coefficient_type;
  ns->precision = c->precision;
  /* Only Muon forwards use_syrk; AdaptiveMuon, Scion, Spel always pass False (spec 3.8). */
  ns->use_syrk = c->use_syrk && (c->algo == ORTHOD_ALGO_MUON || c->algo == ORTHOD_ALGO_MUON_HYPERBALL);
}

/* x ← (x·(float)s)·(float)e: two fp32 multiplies (spec 4, pitfall 8); a factor of exactly 1 is
 * skipped since x·1 == x bit for bit. */
static orthod_err_t scale2(orthod_backend_t *be, float *x, size_t n, double s, double e) {
  if ((float)s != 1.0f) ORTHOD_TRY(orthod_backend_scale(be, x, (float)s, n));
  if ((float)e != 1.0f) ORTHOD_TRY(orthod_backend_scale(be, x, (float)e, n));
  return ORTHOD_OK;
}

/* Muon's s(rows, n) · e for one block; Scion uses unit_rms_norm and ρ. */
static orthod_err_t muon_scale_block(const orthod_optim_t *o, float *x, size_t count, int64_t rows) {
  const orthod_optim_config_t *c = &o->cfg;
  double s = 1.0;
  if (c->algo == ORTHOD_ALGO_SCION) {
    ORTHOD_TRY(orthod_muon_scale_factor(rows, o->n, ORTHOD_SCALE_UNIT_RMS_NORM, &s));
    return scale2(o->be, x, count, s, c->spectral_radius);
  }
  ORTHOD_TRY(orthod_muon_scale_factor(rows, o->n, c->scale_mode, &s));
  return scale2(o->be, x, count, s, c->extra_scale_factor);
}

/* out = the algorithm's orthogonalizer of u (out != u). For AdaptiveMuon the raw NS_k(u). */
static orthod_err_t orth_algo(orthod_optim_t *o, float *out, const float *u) {
  orthod_backend_t *be = o->be;
  const orthod_optim_config_t *c = &o->cfg;
  orthod_ns_opts_t ns;
  ns_opts_of(c, &ns);
  block_t blk[ORTHOD_MAX_SPLITS];
  int nb = blocks_of(o, blk);
  float *scalar = NULL;
  if (c->algo == ORTHOD_ALGO_POLARGRAD || c->algo == ORTHOD_ALGO_MOP)
    ORTHOD_TRY(orthod_backend_scratch(be, 1, &scalar));
  for (int b = 0; b < nb; b++) {
    size_t slice = (size_t)(blk[b].rows * o->n), count = slice * (size_t)blk[b].batch;
    const float *ub = u + (size_t)blk[b].row0 * (size_t)o->n;
    float *ob = out + (size_t)blk[b].row0 * (size_t)o->n;
    switch (c->algo) {
      case ORTHOD_ALGO_MUON:
      case ORTHOD_ALGO_MUON_HYPERBALL:
      case ORTHOD_ALGO_SCION:
        ORTHOD_TRY(orthod_newton_schulz(be, ob, ub, blk[b].batch, blk[b].rows, o->n, &ns));
        ORTHOD_TRY(muon_scale_block(o, ob, count, blk[b].rows));
        break;
      case ORTHOD_ALGO_SPEL:
      case ORTHOD_ALGO_ADAPTIVE_MUON:
        ORTHOD_TRY(orthod_newton_schulz(be, ob, ub, blk[b].batch, blk[b].rows, o->n, &ns));
        break;
      case ORTHOD_ALGO_POLARGRAD:
        /* (O·ν)·e with ν = ⟨O, U⟩ per matrix (a 0-d fp32 tensor in the spec) */
        ORTHOD_TRY(orthod_newton_schulz(be, ob, ub, blk[b].batch, blk[b].rows, o->n, &ns));
        for (int64_t h = 0; h < blk[b].batch; h++) {
          ORTHOD_TRY(orthod_backend_dot(be, scalar, ob + h * slice, ub + h * slice, slice));
          ORTHOD_TRY(orthod_backend_scale_by(be, ob + h * slice, scalar, slice));
        }
        ORTHOD_TRY(scale2(be, ob, count, 1.0, c->extra_scale_factor));
        break;
      case ORTHOD_ALGO_MOP: {
        bool nuclear = c->scale_mode == ORTHOD_SCALE_NUCLEAR_NORM;
        double s = 1.0;
        if (!nuclear) ORTHOD_TRY(orthod_muon_scale_factor(blk[b].rows, o->n, c->scale_mode, &s));
        for (int64_t h = 0; h < blk[b].batch; h++) {
          ORTHOD_TRY(orthod_backend_polar_svd(be, ob + h * slice, nuclear ? scalar : NULL,
                                              ub + h * slice, blk[b].rows, o->n));
          if (nuclear) ORTHOD_TRY(orthod_backend_scale_by(be, ob + h * slice, scalar, slice));
        }
        ORTHOD_TRY(scale2(be, ob, count, s, c->extra_scale_factor));
        break;
      }
      default:
        return orthod__fail(ORTHOD_E_INVAL, "%s has no orthogonalizer", orthod_algo_name(c->algo));
    }
  }
  return ORTHOD_OK;
}

static bool overlaps(const float *a, const float *b, size_t n) {
  uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b, bytes = (uintptr_t)(n * sizeof(float));
  return pa < pb + bytes && pb < pa + bytes;
}

orthod_err_t orthod_optim_orthogonalize(orthod_optim_t *opt, float *out, const float *u) {
  if (opt == NULL || out == NULL || u == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "optim_orthogonalize: NULL argument");
  if (opt->cfg.algo == ORTHOD_ALGO_ADAMW)
    return orthod__fail(ORTHOD_E_INVAL, "optim_orthogonalize: adamw has no orthogonalizer");
  orthod_backend_t *be = opt->be;
  size_t mark = orthod_backend_scratch_mark(be);
  orthod_err_t err = ORTHOD_OK;
  const float *src = u;
  if (overlaps(out, u, opt->numel)) {
    float *copy = NULL;
    err = orthod_backend_scratch(be, opt->numel, &copy);
    if (err == ORTHOD_OK) err = orthod_backend_copy(be, copy, u, opt->numel);
    src = copy;
  }
  if (err == ORTHOD_OK) err = orth_algo(opt, out, src);
  orthod_backend_scratch_reset(be, mark);
  return err;
}

/* ---- AdaptiveMuon second moment (spec 5.1): T(O), then Muon's scale per block --------------- */

static orthod_err_t adaptive_transform(orthod_optim_t *o, float *out, const float *g,
                                       const float *u) {
  orthod_backend_t *be = o->be;
  const orthod_optim_config_t *c = &o->cfg;
  float w = (float)(1.0 - c->beta2), eps = (float)c->eps;
  switch (c->moment2_method) {
    case ORTHOD_MOMENT2_ADAMUON:
      ORTHOD_TRY(orthod_backend_adamuon(be, out, o->moment2, o->numel, w, eps));
      break;
    case ORTHOD_MOMENT2_NORMUON:
      ORTHOD_TRY(orthod_backend_normuon(be, out, o->moment2, o->m, o->n, o->m >= o->n, w, eps));
      break;
    case ORTHOD_MOMENT2_NAMO:
      ORTHOD_TRY(orthod_backend_namo_moment(be, o->moment2, g, o->numel, w));
      ORTHOD_TRY(orthod_backend_namo_scale(be, out, u, o->moment2, o->numel, eps));
      break;
    default:
      return orthod__fail(ORTHOD_E_INVAL, "Invalid second moment method: %d", (int)c->moment2_method);
  }
  block_t blk[ORTHOD_MAX_SPLITS];
  int nb = blocks_of(o, blk);
  for (int b = 0; b < nb; b++)
    ORTHOD_TRY(muon_scale_block(o, out + (size_t)blk[b].row0 * (size_t)o->n,
                                (size_t)(blk[b].rows * blk[b].batch * o->n), blk[b].rows));
  return ORTHOD_OK;
}

/* ---- the step --------------------------------------------------------------------------------- */

/* MuonHyperball's construction check (spec 5.3), done before the first step changes anything. */
static orthod_err_t check_radius(orthod_optim_t *o, const float *w, float *scalar) {
  float nrm = 0.0f;
  ORTHOD_TRY(orthod_backend_norm(o->be, scalar, w, 1, o->numel));
  ORTHOD_TRY(orthod_backend_read(o->be, &nrm, scalar, 1));
  double r = o->cfg.hyperball_radius;
  if (!((double)nrm >= o->cfg.hook_eps))
    return orthod__fail(ORTHOD_E_ZERO_NORM,
                        "muon_hyperball: weight norm ‖W‖_F = %.9g is below hook_eps %.9g; the "
                        "weights must be written (with norm hyperball_radius) before the first step",
                        (double)nrm, o->cfg.hook_eps);
  if (!(fabs((double)nrm - r) <= 1e-5 * fabs(r)))
    return orthod__fail(ORTHOD_E_INVAL,
                        "muon_hyperball: weight norm ‖W‖_F = %.9g does not match hyperball_radius "
                        "%.9g (rtol 1e-5); weights are not rescaled for you",
                        (double)nrm, r);
  o->radius_checked = true;
  return ORTHOD_OK;
}

/* RadialBrake's n0 = ‖p‖, mapped to 0 below eps (the kernel's contract), without a host round
 * trip: relative_update on the 1-element vector n0 with p = a copy t of n0 scales it by
 * ‖t‖/‖n0‖ == 1 exactly (same value, same norm), or writes 0 when ‖t‖ = n0 < eps. */
static orthod_err_t radial_n0(orthod_backend_t *be, float *n0, float *t, const float *p, size_t n,
                              float eps) {
  ORTHOD_TRY(orthod_backend_norm(be, n0, p, 1, n));
  ORTHOD_TRY(orthod_backend_copy(be, t, n0, 1));
  return orthod_backend_relative_update(be, n0, t, 1, eps);
}

static orthod_err_t adamw_step(orthod_optim_t *o, float *w, const float *g, double lr) {
  const orthod_optim_config_t *c = &o->cfg;
  orthod_adamw_args_t a = {.lr = lr,
                           .beta1 = c->adam_beta1,
                           .beta2 = c->adam_beta2,
                           .eps = c->adam_eps,
                           .weight_decay = c->weight_decay,
                           .step = o->step + 1,
                           .amsgrad = c->amsgrad};
  ORTHOD_TRY(orthod_backend_adamw(o->be, w, g, o->exp_avg, o->exp_avg_sq, o->max_exp_avg_sq,
                                  o->numel, &a));
  o->step++;
  return ORTHOD_OK;
}

/* Spec 1.3. Ordered so that nothing is modified until the orthogonalizer has succeeded (a
 * failure there, e.g. E_NOMEM from the scratch arena, leaves weights and state as they were;
 * only an l2 decay already folded into grad remains). Bit-identical to the spec's order: the
 * decoupled/independent/palm decay of p does not feed momentum or the orthogonalizer, and the new
 * momentum is formed in scratch and copied into the buffer. */
static orthod_err_t base_step(orthod_optim_t *o, float *w, float *g, double lr, orthod__orth_fn fn,
                              void *ctx) {
  orthod_backend_t *be = o->be;
  const orthod_optim_config_t *c = &o->cfg;
  const size_t n = o->numel;
  const float eps = (float)c->hook_eps;
  float *mnew = NULL, *u = NULL, *out = NULL, *scal = NULL;
  ORTHOD_TRY(orthod_backend_scratch(be, n, &mnew));
  ORTHOD_TRY(orthod_backend_scratch(be, n, &out));
  if (c->nesterov) ORTHOD_TRY(orthod_backend_scratch(be, n, &u));
  ORTHOD_TRY(orthod_backend_scratch(be, 2, &scal));
  if (c->algo == ORTHOD_ALGO_MUON_HYPERBALL && !o->radius_checked) ORTHOD_TRY(check_radius(o, w, scal));

  /* 1. l2 decay folds into the gradient (p untouched) */
  ORTHOD_TRY(decay_grad(be, c->weight_decay_method, w, g, n, c->weight_decay));
  /* 2. M ← lerp(M, G, 1 − β), 1 − β in double then fp32 */
  ORTHOD_TRY(orthod_backend_lerp(be, mnew, o->momentum, g, (float)(1.0 - c->momentum), n));
  /* 3. Nesterov U ← lerp(G, M, β) with the updated M; else U = M */
  if (c->nesterov) ORTHOD_TRY(orthod_backend_lerp(be, u, g, mnew, (float)c->momentum, n));
  else u = mnew;
  /* 4. orthogonalize (precision is carried by the NS options) */
  if (fn != NULL) ORTHOD_TRY(fn(ctx, o, out, u));
  else ORTHOD_TRY(orth_algo(o, out, u));
  if (c->algo == ORTHOD_ALGO_ADAPTIVE_MUON) ORTHOD_TRY(adaptive_transform(o, out, g, u));

  /* commit: momentum, then the weights */
  ORTHOD_TRY(orthod_backend_copy(be, o->momentum, mnew, n));
  ORTHOD_TRY(decay_weights(be, c->weight_decay_method, w, n, lr, c->weight_decay));
  /* 5. hook pre (no subclass pre hook in this family), update, Spel's post, hook post (1.5) */
  switch (c->hook) {
    case ORTHOD_HOOK_HYPERBALL:
      ORTHOD_TRY(orthod_backend_hyperball(be, out, n, (float)c->hyperball_radius, eps));
      break;
    case ORTHOD_HOOK_RADIAL_BRAKE: ORTHOD_TRY(radial_n0(be, scal, scal + 1, w, n, eps)); break;
    case ORTHOD_HOOK_RELATIVE_UPDATE:
      ORTHOD_TRY(orthod_backend_relative_update(be, out, w, n, eps));
      break;
    default: break;
  }
  ORTHOD_TRY(orthod_backend_axpy(be, w, (float)(-lr), out, n));
  if (c->algo == ORTHOD_ALGO_SPEL) {
    /* W ← NS_k(W) per block, same steps, coefficients and precision (out is free now) */
    orthod_ns_opts_t ns;
    ns_opts_of(c, &ns);
    block_t blk[ORTHOD_MAX_SPLITS];
    int nb = blocks_of(o, blk);
    for (int b = 0; b < nb; b++) {
      size_t off = (size_t)blk[b].row0 * (size_t)o->n;
      ORTHOD_TRY(orthod_newton_schulz(be, out + off, w + off, blk[b].batch, blk[b].rows, o->n, &ns));
    }
    ORTHOD_TRY(orthod_backend_copy(be, w, out, n));
  }
  switch (c->hook) {
    case ORTHOD_HOOK_HYPERBALL:
      ORTHOD_TRY(orthod_backend_hyperball(be, w, n, (float)c->hyperball_radius, eps));
      break;
    case ORTHOD_HOOK_RADIAL_BRAKE:
      ORTHOD_TRY(orthod_backend_radial_brake(be, w, n, scal, (float)c->outward_scale,
                                             (float)c->inward_scale, eps));
      break;
    default: break;
  }
  o->step++;
  return ORTHOD_OK;
}

static orthod_err_t step_checked(orthod_optim_t *opt, float *weights, float *grad, double lr,
                                 orthod__orth_fn fn, void *ctx) {
  if (opt == NULL || weights == NULL || grad == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "optim_step: NULL argument");
  if (!isfinite(lr)) return orthod__fail(ORTHOD_E_INVAL, "lr must be finite, got %g", lr);
  if (opt->cfg.algo == ORTHOD_ALGO_ADAMW) {
    if (fn != NULL) return orthod__fail(ORTHOD_E_INVAL, "adamw has no replaceable orthogonalizer");
    return adamw_step(opt, weights, grad, lr);
  }
  if (fn != NULL && opt->cfg.algo == ORTHOD_ALGO_ADAPTIVE_MUON)
    return orthod__fail(ORTHOD_E_INVAL, "adaptive_muon has no replaceable orthogonalizer");
  size_t mark = orthod_backend_scratch_mark(opt->be);
  orthod_err_t err = base_step(opt, weights, grad, lr, fn, ctx);
  orthod_backend_scratch_reset(opt->be, mark);
  return err;
}

orthod_err_t orthod_optim_step(orthod_optim_t *opt, float *weights, float *grad, double lr) {
  return step_checked(opt, weights, grad, lr, NULL, NULL);
}

orthod_err_t orthod__optim_step_with(orthod_optim_t *opt, float *weights, float *grad, double lr,
                                     orthod__orth_fn fn, void *ctx) {
  if (fn == NULL) return orthod__fail(ORTHOD_E_INVAL, "optim_step_with: fn is NULL");
  return step_checked(opt, weights, grad, lr, fn, ctx);
}

/* ---- one-sided PolarGrad (spec 5.4) ----------------------------------------------------------- */

/* x (m x n) ← x − 1·mean over rows (per column), via two GEMMs against a ones vector. */
static orthod_err_t center_columns(orthod_backend_t *be, float *x, int64_t m, int64_t n,
                                   const float *ones, float *mean) {
  orthod_gemm_t g = {.m = 1, .n = n, .k = m, .alpha = (float)(1.0 / (double)m), .beta = 0.0f,
                     .a = ones, .lda = m, .stride_a = m, .b = x, .ldb = n, .stride_b = m * n,
                     .c = mean, .ldc = n, .stride_c = n, .batch = 1,
                     .precision = ORTHOD_PREC_HIGHEST};
  ORTHOD_TRY(orthod_backend_gemm(be, &g));
  orthod_gemm_t r = {.m = m, .n = n, .k = 1, .alpha = -1.0f, .beta = 1.0f, .a = ones, .lda = 1,
                     .stride_a = m, .b = mean, .ldb = n, .stride_b = n, .c = x, .ldc = n,
                     .stride_c = m * n, .batch = 1, .precision = ORTHOD_PREC_HIGHEST};
  return orthod_backend_gemm(be, &r);
}

static orthod_err_t one_sided(orthod_backend_t *be, float *out, const float *g, int64_t m,
                              int64_t n, orthod_side_t side, double alpha, bool center_rows,
                              double eps, double extra, float *hostbuf) {
  const bool left = side == ORTHOD_SIDE_LEFT;
  const int64_t d = left ? m : n;
  const size_t mn = (size_t)(m * n), dd = (size_t)(d * d);
  float *mx = NULL, *s = NULL, *w = NULL, *q = NULL, *qt = NULL, *sinv = NULL, *ones = NULL,
        *mean = NULL;
  ORTHOD_TRY(orthod_backend_scratch(be, mn, &mx));
  ORTHOD_TRY(orthod_backend_scratch(be, dd, &s));
  ORTHOD_TRY(orthod_backend_scratch(be, (size_t)d, &w));
  ORTHOD_TRY(orthod_backend_scratch(be, dd, &q));
  ORTHOD_TRY(orthod_backend_scratch(be, dd, &qt));
  ORTHOD_TRY(orthod_backend_scratch(be, dd, &sinv));
  ORTHOD_TRY(orthod_backend_copy(be, mx, g, mn));
  if (center_rows) {
    ORTHOD_TRY(orthod_backend_scratch(be, (size_t)m, &ones));
    ORTHOD_TRY(orthod_backend_scratch(be, (size_t)n, &mean));
    for (int64_t i = 0; i < m; i++) hostbuf[i] = 1.0f;
    ORTHOD_TRY(orthod_backend_upload(be, ones, hostbuf, ORTHOD_DTYPE_F32, (size_t)m));
    ORTHOD_TRY(orthod_backend_sync(be)); /* hostbuf is reused below */
    ORTHOD_TRY(center_columns(be, mx, m, n, ones, mean));
  }
  /* Gram: left Mx Mxᵀ (m x m), right Mxᵀ Mx (n x n) */
  orthod_syrk_t sy = {.trans = !left, .n = d, .k = left ? n : m, .alpha = 1.0f, .beta = 0.0f,
                      .a = mx, .lda = n, .stride_a = (int64_t)mn, .c = s, .ldc = d,
                      .stride_c = (int64_t)dd, .batch = 1, .precision = ORTHOD_PREC_HIGHEST};
  ORTHOD_TRY(orthod_backend_syrk(be, &sy));
  ORTHOD_TRY(orthod_backend_eigh(be, w, q, s, d));
  /* λ ← max(λ, eps); drop λ <= max(λ)·d·2⁻²³; nuc = Σ sqrt(λ) over all clamped values (fp32) */
  ORTHOD_TRY(orthod_backend_read(be, hostbuf, w, (size_t)d));
  const float feps = (float)eps;
  float lmax = 0.0f, nuc = 0.0f;
  for (int64_t i = 0; i < d; i++) {
    float l = hostbuf[i] < feps ? feps : hostbuf[i];
    hostbuf[i] = l;
    if (i == 0 || l > lmax) lmax = l;
  }
  const float tau = lmax * (float)d * 1.1920929e-7f;
  for (int64_t i = 0; i < d; i++) {
    float l = hostbuf[i];
    nuc += sqrtf(l);
    hostbuf[i] = l > tau ? 1.0f / sqrtf(l) : 0.0f;
  }
  /* S^(-1/2) = Q diag(v) Qᵀ: rows of Qᵀ scaled by v, then one GEMM */
  ORTHOD_TRY(orthod_backend_transpose(be, qt, q, 1, d, d));
  for (int64_t i = 0; i < d; i++)
    ORTHOD_TRY(orthod_backend_scale(be, qt + i * d, hostbuf[i], (size_t)d));
  orthod_gemm_t gs = {.m = d, .n = d, .k = d, .alpha = 1.0f, .beta = 0.0f, .a = q, .lda = d,
                      .stride_a = (int64_t)dd, .b = qt, .ldb = d, .stride_b = (int64_t)dd,
                      .c = sinv, .ldc = d, .stride_c = (int64_t)dd, .batch = 1,
                      .precision = ORTHOD_PREC_HIGHEST};
  ORTHOD_TRY(orthod_backend_gemm(be, &gs));
  orthod_gemm_t gu = {.m = m, .n = n, .k = d, .alpha = 1.0f, .beta = 0.0f,
                      .a = left ? sinv : mx, .lda = left ? d : n,
                      .stride_a = left ? (int64_t)dd : (int64_t)mn,
                      .b = left ? mx : sinv, .ldb = left ? n : d,
                      .stride_b = left ? (int64_t)mn : (int64_t)dd,
                      .c = out, .ldc = n, .stride_c = (int64_t)mn, .batch = 1,
                      .precision = ORTHOD_PREC_HIGHEST};
  ORTHOD_TRY(orthod_backend_gemm(be, &gu));
  ORTHOD_TRY(orthod_backend_scale(be, out, powf(nuc, (float)alpha), mn));
  if ((float)extra != 1.0f) ORTHOD_TRY(orthod_backend_scale(be, out, (float)extra, mn));
  if (center_rows) ORTHOD_TRY(center_columns(be, out, m, n, ones, mean));
  return ORTHOD_OK;
}

orthod_err_t orthod_polargrad_one_sided(orthod_backend_t *be, float *out, const float *g, int64_t m,
                                        int64_t n, orthod_side_t side, double alpha,
                                        bool center_rows, double eps, double extra) {
  if (be == NULL || out == NULL || g == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "polargrad_one_sided: NULL argument");
  if (side != ORTHOD_SIDE_LEFT && side != ORTHOD_SIDE_RIGHT)
    return orthod__fail(ORTHOD_E_INVAL, "side must be 'left' or 'right', got %d", (int)side);
  if (m < 1 || n < 1 || m > INT32_MAX / (n > 0 ? n : 1))
    return orthod__fail(ORTHOD_E_SHAPE, "polargrad_one_sided: bad shape %lldx%lld", (long long)m,
                        (long long)n);
  if (!(eps > 0.0) || !isfinite(eps) || !isfinite(alpha) || !isfinite(extra))
    return orthod__fail(ORTHOD_E_INVAL, "polargrad_one_sided: eps must be finite and > 0, alpha "
                        "and extra finite (eps %g, alpha %g, extra %g)", eps, alpha, extra);
  if (overlaps(out, g, (size_t)(m * n)))
    return orthod__fail(ORTHOD_E_INVAL, "polargrad_one_sided: out overlaps g");
  int64_t d = side == ORTHOD_SIDE_LEFT ? m : n;
  float *hostbuf = malloc((size_t)(d > m ? d : m) * sizeof *hostbuf);
  if (hostbuf == NULL) return orthod__fail(ORTHOD_E_NOMEM, "polargrad_one_sided: out of host memory");
  size_t mark = orthod_backend_scratch_mark(be);
  orthod_err_t err = one_sided(be, out, g, m, n, side, alpha, center_rows, eps, extra, hostbuf);
  if (err == ORTHOD_OK) err = orthod_backend_sync(be);
  orthod_backend_scratch_reset(be, mark);
  free(hostbuf);
  return err;
}
