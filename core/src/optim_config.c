/* optim_config.c — the optimizer configuration: one static key table drives set/get/list, range
 * checks and validation; the name tables of every enum; the spec's defaults per algorithm
 * (sections 4 and 5) and the Muon scale factor s(m, n). */
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/optimizer.h"
#include "orthod_internal.h"

/* Enum fields are read and written through int pointers by the table. */
_Static_assert(sizeof(orthod_algo_t) == sizeof(int), "enum size");
_Static_assert(sizeof(orthod_precision_t) == sizeof(int), "enum size");
_Static_assert(sizeof(orthod_coef_type_t) == sizeof(int), "enum size");

/* ---- name tables ---------------------------------------------------------------------------- */

static const char *const k_algo_names[ORTHOD_ALGO_COUNT] = {
    [ORTHOD_ALGO_MUON] = "muon",
    [ORTHOD_ALGO_ADAMW] = "adamw",
    [ORTHOD_ALGO_SCION] = "scion",
    [ORTHOD_ALGO_POLARGRAD] = "polargrad",
    [ORTHOD_ALGO_SPEL] = "spel",
    [ORTHOD_ALGO_ADAPTIVE_MUON] = "adaptive_muon",
    [ORTHOD_ALGO_MUON_HYPERBALL] = "muon_hyperball",
    [ORTHOD_ALGO_MOP] = "mop",
};
static const char *const k_wd_names[ORTHOD_WD_COUNT] = {"decoupled", "independent", "l2", "palm"};
static const char *const k_scale_names[ORTHOD_SCALE_COUNT] = {"spectral", "shape_scaling",
                                                              "unit_rms_norm", "nuclear_norm"};
static const char *const k_moment2_names[ORTHOD_MOMENT2_COUNT] = {"adamuon", "normuon", "namo"};
static const char *const k_hook_names[ORTHOD_HOOK_COUNT] = {"none", "hyperball", "radial_brake",
                                                            "relative_update"};
static const char *const k_role_names[ORTHOD_ROLE_COUNT] = {"auto", "matrix", "embedding", "head"};

static const char *name_in(const char *const *names, int count, int v) {
  return (v >= 0 && v < count) ? names[v] : "?";
}

const char *orthod_algo_name(orthod_algo_t a) { return name_in(k_algo_names, ORTHOD_ALGO_COUNT, (int)a); }
const char *orthod_wd_method_name(orthod_wd_method_t m) { return name_in(k_wd_names, ORTHOD_WD_COUNT, (int)m); }
const char *orthod_scale_mode_name(orthod_scale_mode_t m) { return name_in(k_scale_names, ORTHOD_SCALE_COUNT, (int)m); }
const char *orthod_moment2_name(orthod_moment2_t m) { return name_in(k_moment2_names, ORTHOD_MOMENT2_COUNT, (int)m); }
const char *orthod_hook_name(orthod_hook_t h) { return name_in(k_hook_names, ORTHOD_HOOK_COUNT, (int)h); }
const char *orthod_role_name(orthod_role_t r) { return name_in(k_role_names, ORTHOD_ROLE_COUNT, (int)r); }

orthod_err_t orthod_algo_from_name(const char *name, orthod_algo_t *out) {
  if (name == NULL || out == NULL) return orthod__fail(ORTHOD_E_INVAL, "algo_from_name: NULL argument");
  for (int i = 0; i < ORTHOD_ALGO_COUNT; i++)
    if (orthod__streq_nocase(name, k_algo_names[i])) {
      *out = (orthod_algo_t)i;
      return ORTHOD_OK;
    }
  return orthod__fail(ORTHOD_E_UNKNOWN_NAME,
                      "Optimizer '%s' not found in the registry (known: muon, adaptive_muon, mop, "
                      "muon_hyperball, polargrad, scion, spel, adamw)",
                      name);
}

/* Enum adapters so one table entry type covers our names and those of newton_schulz.h. */
static const char *algo_name_i(int v) { return orthod_algo_name((orthod_algo_t)v); }
static const char *wd_name_i(int v) { return orthod_wd_method_name((orthod_wd_method_t)v); }
static const char *scale_name_i(int v) { return orthod_scale_mode_name((orthod_scale_mode_t)v); }
static const char *moment2_name_i(int v) { return orthod_moment2_name((orthod_moment2_t)v); }
static const char *hook_name_i(int v) { return orthod_hook_name((orthod_hook_t)v); }
static const char *role_name_i(int v) { return orthod_role_name((orthod_role_t)v); }
static const char *prec_name_i(int v) { return orthod_precision_name((orthod_precision_t)v); }
static const char *coef_name_i(int v) { return orthod_coef_type_name((orthod_coef_type_t)v); }

/* ---- the key table -------------------------------------------------------------------------- */

typedef enum { K_DOUBLE, K_INT, K_INT64, K_BOOL, K_ENUM, K_SPLITS } key_type_t;

#define F_MIN_OPEN 1u /* value must be > min (else >= min) */
#define F_MAX_OPEN 2u /* value must be < max (else <= max) */
#define F_STEPS 4u    /* range violations are E_STEPS (Newton–Schulz step counts) */

typedef struct {
  const char *key;
  const char *alias; /* the spec's name where it differs, or NULL */
  key_type_t type;
  size_t offset;
  double min, max; /* numeric range; ±HUGE_VAL = only "finite" */
  unsigned flags;
  int n_values;                   /* K_ENUM: values 0..n_values-1 */
  const char *(*value_name)(int); /* K_ENUM */
  const char *help;
} key_def_t;

#define OFF(field) offsetof(orthod_optim_config_t, field)
#define ANY -HUGE_VAL, HUGE_VAL

static const key_def_t k_keys[] = {
    {"algo", NULL, K_ENUM, OFF(algo), 0, 0, 0, ORTHOD_ALGO_COUNT, algo_name_i,
     "optimizer: muon, adamw, scion, polargrad, spel, adaptive_muon, muon_hyperball, mop "
     "(setting it resets every other key to that algorithm's defaults)"},
    {"lr", NULL, K_DOUBLE, OFF(lr), ANY, 0, 0, NULL, "learning rate eta (finite)"},
    {"momentum", NULL, K_DOUBLE, OFF(momentum), 0.0, 1.0, F_MAX_OPEN, 0, NULL,
     "EMA momentum beta in [0, 1): M = beta M + (1 - beta) G"},
    {"weight_decay", NULL, K_DOUBLE, OFF(weight_decay), ANY, 0, 0, NULL,
     "weight decay lambda (0 skips; negative values are applied)"},
    {"nesterov", NULL, K_BOOL, OFF(nesterov), 0, 0, 0, 0, NULL,
     "Nesterov: orthogonalize lerp(G, M, beta) instead of M"},
    {"weight_decay_method", NULL, K_ENUM, OFF(weight_decay_method), 0, 0, 0, ORTHOD_WD_COUNT,
     wd_name_i, "decoupled, independent, l2 or palm"},
    {"precision", "fp32_matmul_prec", K_ENUM, OFF(precision), 0, 0, 0, 3, prec_name_i,
     "matmul precision of the orthogonalizer: highest, high, medium (bf16 Newton-Schulz)"},
    {"coefficient_type", NULL, K_ENUM, OFF(coefficient_type), 0, 0, 0, ORTHOD_COEF_COUNT,
     coef_name_i, "Newton-Schulz coefficient set: quintic, simple, polar_express, cans, aol, "
                  "deepseekv4, cubic5"},
    {"num_ns_steps", NULL, K_INT, OFF(num_ns_steps), 0, 1000, F_STEPS, 0, NULL,
     "Newton-Schulz iterations (>= 1; PolarGrad allows 0; cubic5 needs 5)"},
    {"use_syrk", NULL, K_BOOL, OFF(use_syrk), 0, 0, 0, 0, NULL,
     "symmetric products through SYRK (Muon and MuonHyperball only)"},
    {"scale_mode", NULL, K_ENUM, OFF(scale_mode), 0, 0, 0, ORTHOD_SCALE_COUNT, scale_name_i,
     "update scale s(m, n): spectral, shape_scaling, unit_rms_norm; nuclear_norm for mop"},
    {"extra_scale_factor", NULL, K_DOUBLE, OFF(extra_scale_factor), ANY, 0, 0, NULL,
     "extra factor e multiplying the orthogonalized update"},
    {"spectral_radius", NULL, K_DOUBLE, OFF(spectral_radius), ANY, 0, 0, NULL,
     "Scion radius rho (update scale sqrt(m/n) rho)"},
    {"moment2_method", NULL, K_ENUM, OFF(moment2_method), 0, 0, 0, ORTHOD_MOMENT2_COUNT,
     moment2_name_i, "AdaptiveMuon second moment: adamuon, normuon, namo"},
    {"beta2", NULL, K_DOUBLE, OFF(beta2), 0.0, 1.0, F_MAX_OPEN, 0, NULL,
     "AdaptiveMuon second-moment EMA coefficient in [0, 1)"},
    {"eps", NULL, K_DOUBLE, OFF(eps), 0.0, HUGE_VAL, F_MIN_OPEN, 0, NULL,
     "AdaptiveMuon epsilon (> 0)"},
    {"hook", NULL, K_ENUM, OFF(hook), 0, 0, 0, ORTHOD_HOOK_COUNT, hook_name_i,
     "weight-update hook: none, hyperball, radial_brake, relative_update"},
    {"hyperball_radius", NULL, K_DOUBLE, OFF(hyperball_radius), 0.0, HUGE_VAL, 0, 0, NULL,
     "Hyperball radius R (required by muon_hyperball and the hyperball hook; 0 = unset)"},
    {"hook_eps", "hyperball_eps", K_DOUBLE, OFF(hook_eps), 0.0, HUGE_VAL, F_MIN_OPEN, 0, NULL,
     "weight-update hook epsilon (> 0): norms below it count as zero"},
    {"outward_scale", NULL, K_DOUBLE, OFF(outward_scale), 0.0, 1.0, 0, 0, NULL,
     "RadialBrake: fraction of an outward norm change kept, in [0, 1]"},
    {"inward_scale", NULL, K_DOUBLE, OFF(inward_scale), 0.0, 1.0, 0, 0, NULL,
     "RadialBrake: fraction of an inward norm change kept, in [0, 1]"},
    {"adam_beta1", NULL, K_DOUBLE, OFF(adam_beta1), 0.0, 1.0, F_MAX_OPEN, 0, NULL,
     "AdamW beta1 in [0, 1)"},
    {"adam_beta2", NULL, K_DOUBLE, OFF(adam_beta2), 0.0, 1.0, F_MAX_OPEN, 0, NULL,
     "AdamW beta2 in [0, 1)"},
    {"adam_eps", NULL, K_DOUBLE, OFF(adam_eps), 0.0, HUGE_VAL, 0, 0, NULL, "AdamW epsilon (>= 0)"},
    {"amsgrad", NULL, K_BOOL, OFF(amsgrad), 0, 0, 0, 0, NULL, "AdamW AMSGrad variant"},
    {"split_rows", NULL, K_SPLITS, OFF(split_rows), 0, 0, 0, 0, NULL,
     "fused blocks (e.g. QKV): comma-separated row counts summing to dim 0, each block "
     "orthogonalized and scaled on its own; empty = off"},
    {"num_heads", NULL, K_INT64, OFF(num_heads), 0.0, 1099511627776.0, 0, 0, NULL,
     "per-head orthogonalization: dim 0 split into this many equal heads (0 or 1 = off)"},
    {"role", NULL, K_ENUM, OFF(role), 0, 0, 0, ORTHOD_ROLE_COUNT, role_name_i,
     "what the parameter is: auto, matrix, embedding, head"},
};
#define N_KEYS ((int)(sizeof k_keys / sizeof k_keys[0]))

const char *orthod_optim_config_key(int i, const char **help) {
  if (i < 0 || i >= N_KEYS) return NULL;
  if (help != NULL) *help = k_keys[i].help;
  return k_keys[i].key;
}

static const key_def_t *find_key(const char *key) {
  for (int i = 0; i < N_KEYS; i++)
    if (orthod__streq_nocase(key, k_keys[i].key) ||
        (k_keys[i].alias != NULL && orthod__streq_nocase(key, k_keys[i].alias)))
      return &k_keys[i];
  return NULL;
}

/* ---- defaults ------------------------------------------------------------------------------- */

orthod_err_t orthod_optim_config_default(orthod_optim_config_t *cfg, orthod_algo_t algo) {
  if (cfg == NULL) return orthod__fail(ORTHOD_E_INVAL, "config_default: cfg is NULL");
  if ((int)algo < 0 || algo >= ORTHOD_ALGO_COUNT)
    return orthod__fail(ORTHOD_E_INVAL, "config_default: invalid algo %d", (int)algo);
  memset(cfg, 0, sizeof *cfg);
  /* Muon (spec 4) is the base every orthogonalized optimizer shares. */
  cfg->algo = algo;
  cfg->lr = 3e-4;
  cfg->momentum = 0.95;
  cfg->weight_decay = 0.01;
  cfg->nesterov = false;
  cfg->weight_decay_method = ORTHOD_WD_DECOUPLED;
  cfg->precision = ORTHOD_PREC_MEDIUM;
  cfg->coefficient_type = ORTHOD_COEF_QUINTIC;
  cfg->num_ns_steps = 5;
  cfg->use_syrk = false;
  cfg->scale_mode = ORTHOD_SCALE_SPECTRAL;
  cfg->extra_scale_factor = 1.0;
  cfg->spectral_radius = 1.0;
  /* AdaptiveMuon (5.1) */
  cfg->moment2_method = ORTHOD_MOMENT2_ADAMUON;
  cfg->beta2 = 0.95;
  cfg->eps = 1e-8;
  /* hooks (5.9) */
  cfg->hook = ORTHOD_HOOK_NONE;
  cfg->hyperball_radius = 0.0;
  cfg->hook_eps = 1e-15;
  cfg->outward_scale = 0.5;
  cfg->inward_scale = 1.0;
  /* torch.optim.AdamW */
  cfg->adam_beta1 = 0.9;
  cfg->adam_beta2 = 0.999;
  cfg->adam_eps = 1e-8;
  cfg->amsgrad = false;
  cfg->n_splits = 0;
  cfg->num_heads = 0;
  cfg->role = ORTHOD_ROLE_AUTO;

  switch (algo) {
    case ORTHOD_ALGO_MUON:
    case ORTHOD_ALGO_ADAPTIVE_MUON: /* lr/momentum/weight_decay required there: Muon's values */
      break;
    case ORTHOD_ALGO_ADAMW:
      cfg->lr = 1e-3;
      cfg->weight_decay = 1e-2;
      break;
    case ORTHOD_ALGO_SCION: /* forced: weight_decay 1, decoupled, no Nesterov; sqrt(m/n)·rho */
      cfg->weight_decay = 1.0;
      cfg->scale_mode = ORTHOD_SCALE_UNIT_RMS_NORM;
      break;
    case ORTHOD_ALGO_POLARGRAD:
      cfg->precision = ORTHOD_PREC_HIGHEST;
      break;
    case ORTHOD_ALGO_SPEL:
      cfg->weight_decay = 0.1;
      break;
    case ORTHOD_ALGO_MUON_HYPERBALL: /* radius required: 0 = unset, refused by validation */
      cfg->hook = ORTHOD_HOOK_HYPERBALL;
      break;
    case ORTHOD_ALGO_MOP:
      cfg->precision = ORTHOD_PREC_HIGHEST;
      cfg->scale_mode = ORTHOD_SCALE_NUCLEAR_NORM;
      break;
    case ORTHOD_ALGO_COUNT:
      break;
  }
  return ORTHOD_OK;
}

orthod_algo_t orthod_algo_for(const orthod_shape_t *shape, orthod_role_t role) {
  if (shape == NULL || shape->ndim < 2) return ORTHOD_ALGO_ADAMW;
  if (role == ORTHOD_ROLE_EMBEDDING || role == ORTHOD_ROLE_HEAD) return ORTHOD_ALGO_ADAMW;
  return ORTHOD_ALGO_MUON;
}

orthod_err_t orthod_muon_scale_factor(int64_t m, int64_t n, orthod_scale_mode_t mode, double *out) {
  if (out == NULL) return orthod__fail(ORTHOD_E_INVAL, "muon_scale_factor: out is NULL");
  if (m < 1 || n < 1)
    return orthod__fail(ORTHOD_E_INVAL, "muon_scale_factor: dims must be >= 1, got %lld x %lld",
                        (long long)m, (long long)n);
  double dm = (double)m, dn = (double)n;
  switch (mode) {
    case ORTHOD_SCALE_SHAPE_SCALING: *out = sqrt(fmax(1.0, dm / dn)); return ORTHOD_OK;
    case ORTHOD_SCALE_SPECTRAL: *out = sqrt(fmax(dm, dn)); return ORTHOD_OK;
    case ORTHOD_SCALE_UNIT_RMS_NORM: *out = sqrt(dm / dn); return ORTHOD_OK;
    default: break;
  }
  const char *name = ((int)mode >= 0 && mode < ORTHOD_SCALE_COUNT) ? k_scale_names[mode] : NULL;
  if (name != NULL)
    return orthod__fail(ORTHOD_E_INVAL, "Invalid mode for Muon update scale factor: %s", name);
  return orthod__fail(ORTHOD_E_INVAL, "Invalid mode for Muon update scale factor: %d", (int)mode);
}

/* ---- field access --------------------------------------------------------------------------- */

static void *field(orthod_optim_config_t *cfg, const key_def_t *k) { return (char *)cfg + k->offset; }
static const void *cfield(const orthod_optim_config_t *cfg, const key_def_t *k) {
  return (const char *)cfg + k->offset;
}

static double numeric_value(const orthod_optim_config_t *cfg, const key_def_t *k) {
  switch (k->type) {
    case K_DOUBLE: return *(const double *)cfield(cfg, k);
    case K_INT: return (double)*(const int *)cfield(cfg, k);
    case K_INT64: return (double)*(const int64_t *)cfield(cfg, k);
    default: return 0.0;
  }
}

static void format_bound(char *buf, size_t len, double v) {
  if (isinf(v)) snprintf(buf, len, "%sinf", v < 0 ? "-" : "");
  else snprintf(buf, len, "%.17g", v);
}

/* Range check of one numeric value against its table entry. */
static orthod_err_t check_range(const key_def_t *k, double v, const char *text) {
  orthod_err_t code = (k->flags & F_STEPS) ? ORTHOD_E_STEPS : ORTHOD_E_INVAL;
  char shown[64];
  if (text != NULL) snprintf(shown, sizeof shown, "%s", text);
  else format_bound(shown, sizeof shown, v);
  if (!isfinite(v)) return orthod__fail(code, "%s must be finite, got %s", k->key, shown);
  bool lo_ok = (k->flags & F_MIN_OPEN) ? v > k->min : v >= k->min;
  bool hi_ok = (k->flags & F_MAX_OPEN) ? v < k->max : v <= k->max;
  if (lo_ok && hi_ok) return ORTHOD_OK;
  char lo[40], hi[40];
  format_bound(lo, sizeof lo, k->min);
  format_bound(hi, sizeof hi, k->max);
  return orthod__fail(code, "%s must be in %c%s, %s%c, got %s", k->key,
                      ((k->flags & F_MIN_OPEN) || isinf(k->min)) ? '(' : '[', lo, hi,
                      ((k->flags & F_MAX_OPEN) || isinf(k->max)) ? ')' : ']', shown);
}

static orthod_err_t parse_bool(const char *s, bool *out) {
  static const char *const yes[] = {"true", "1", "yes", "on"};
  static const char *const no[] = {"false", "0", "no", "off"};
  for (int i = 0; i < 4; i++) {
    if (orthod__streq_nocase(s, yes[i])) { *out = true; return ORTHOD_OK; }
    if (orthod__streq_nocase(s, no[i])) { *out = false; return ORTHOD_OK; }
  }
  return ORTHOD_E_INVAL;
}

static orthod_err_t parse_double(const char *s, double *out) {
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end != '\0' || errno == ERANGE) return ORTHOD_E_INVAL;
  *out = v;
  return ORTHOD_OK;
}

static orthod_err_t parse_i64(const char *s, long long *out) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end != '\0' || errno == ERANGE) return ORTHOD_E_INVAL;
  *out = v;
  return ORTHOD_OK;
}

/* "768,256,256" (spaces allowed around numbers); "" or "none" clears. */
static orthod_err_t parse_splits(const char *s, int64_t rows[ORTHOD_MAX_SPLITS], int *count) {
  *count = 0;
  const char *p = s;
  while (*p == ' ') p++;
  if (*p == '\0' || orthod__streq_nocase(p, "none")) return ORTHOD_OK;
  for (;;) {
    char *end = NULL;
    while (*p == ' ') p++;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno == ERANGE)
      return orthod__fail(ORTHOD_E_INVAL, "split_rows: cannot parse '%s' as a list of row counts", s);
    if (v <= 0)
      return orthod__fail(ORTHOD_E_INVAL, "split_rows: row counts must be positive, got %lld", v);
    if (*count == ORTHOD_MAX_SPLITS)
      return orthod__fail(ORTHOD_E_INVAL, "split_rows: at most %d blocks", ORTHOD_MAX_SPLITS);
    rows[(*count)++] = (int64_t)v;
    p = end;
    while (*p == ' ') p++;
    if (*p == '\0') return ORTHOD_OK;
    if (*p != ',')
      return orthod__fail(ORTHOD_E_INVAL, "split_rows: cannot parse '%s' as a list of row counts", s);
    p++;
  }
}

orthod_err_t orthod_optim_config_set(orthod_optim_config_t *cfg, const char *key, const char *value) {
  if (cfg == NULL || key == NULL || value == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "config_set: NULL argument");
  const key_def_t *k = find_key(key);
  if (k == NULL) return orthod__fail(ORTHOD_E_UNKNOWN_NAME, "unknown optimizer config key '%s'", key);
  switch (k->type) {
    case K_DOUBLE: {
      double v;
      if (parse_double(value, &v) != ORTHOD_OK)
        return orthod__fail(ORTHOD_E_INVAL, "%s: cannot parse '%s' as a number", k->key, value);
      ORTHOD_TRY(check_range(k, v, value));
      *(double *)field(cfg, k) = v;
      return ORTHOD_OK;
    }
    case K_INT:
    case K_INT64: {
      long long v;
      if (parse_i64(value, &v) != ORTHOD_OK)
        return orthod__fail(ORTHOD_E_INVAL, "%s: cannot parse '%s' as an integer", k->key, value);
      ORTHOD_TRY(check_range(k, (double)v, value));
      if (k->type == K_INT) *(int *)field(cfg, k) = (int)v;
      else *(int64_t *)field(cfg, k) = (int64_t)v;
      return ORTHOD_OK;
    }
    case K_BOOL: {
      bool v;
      if (parse_bool(value, &v) != ORTHOD_OK)
        return orthod__fail(ORTHOD_E_INVAL, "%s: '%s' is not a boolean (true/false/1/0/yes/no/on/off)",
                            k->key, value);
      *(bool *)field(cfg, k) = v;
      return ORTHOD_OK;
    }
    case K_ENUM: {
      for (int i = 0; i < k->n_values; i++) {
        if (!orthod__streq_nocase(value, k->value_name(i))) continue;
        if (k->offset == OFF(algo)) return orthod_optim_config_default(cfg, (orthod_algo_t)i);
        *(int *)field(cfg, k) = i;
        return ORTHOD_OK;
      }
      char known[256] = "";
      size_t used = 0;
      for (int i = 0; i < k->n_values && used < sizeof known; i++)
        used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "",
                                 k->value_name(i));
      return orthod__fail(ORTHOD_E_UNKNOWN_NAME, "%s: unknown value '%s' (one of: %s)", k->key,
                          value, known);
    }
    case K_SPLITS: {
      int64_t rows[ORTHOD_MAX_SPLITS];
      int count = 0;
      ORTHOD_TRY(parse_splits(value, rows, &count));
      memset(cfg->split_rows, 0, sizeof cfg->split_rows);
      memcpy(cfg->split_rows, rows, (size_t)count * sizeof rows[0]);
      cfg->n_splits = count;
      return ORTHOD_OK;
    }
  }
  return orthod__fail(ORTHOD_E_INVAL, "%s: bad table entry", k->key);
}

orthod_err_t orthod_optim_config_get(const orthod_optim_config_t *cfg, const char *key, char *buf,
                                     size_t len) {
  if (cfg == NULL || key == NULL || buf == NULL || len == 0)
    return orthod__fail(ORTHOD_E_INVAL, "config_get: NULL argument");
  const key_def_t *k = find_key(key);
  if (k == NULL) return orthod__fail(ORTHOD_E_UNKNOWN_NAME, "unknown optimizer config key '%s'", key);
  int w = 0;
  switch (k->type) {
    case K_DOUBLE: w = snprintf(buf, len, "%.17g", *(const double *)cfield(cfg, k)); break;
    case K_INT: w = snprintf(buf, len, "%d", *(const int *)cfield(cfg, k)); break;
    case K_INT64: w = snprintf(buf, len, "%lld", (long long)*(const int64_t *)cfield(cfg, k)); break;
    case K_BOOL: w = snprintf(buf, len, "%s", *(const bool *)cfield(cfg, k) ? "true" : "false"); break;
    case K_ENUM: w = snprintf(buf, len, "%s", k->value_name(*(const int *)cfield(cfg, k))); break;
    case K_SPLITS: {
      buf[0] = '\0';
      size_t used = 0;
      int n = cfg->n_splits < 0 ? 0 : (cfg->n_splits > ORTHOD_MAX_SPLITS ? ORTHOD_MAX_SPLITS : cfg->n_splits);
      for (int i = 0; i < n; i++) {
        int r = snprintf(buf + used, len - used, "%s%lld", i ? "," : "", (long long)cfg->split_rows[i]);
        if (r < 0 || (size_t)r >= len - used) {
          w = (int)len; /* truncated */
          break;
        }
        used += (size_t)r;
        w = (int)used;
      }
      break;
    }
  }
  if (w < 0 || (size_t)w >= len)
    return orthod__fail(ORTHOD_E_INVAL, "config_get: buffer of %zu bytes too small for %s", len, k->key);
  return ORTHOD_OK;
}

/* ---- validation ----------------------------------------------------------------------------- */

static bool uses_ns(orthod_algo_t a) { return a != ORTHOD_ALGO_ADAMW && a != ORTHOD_ALGO_MOP; }

orthod_err_t orthod_optim_config_validate(const orthod_optim_config_t *cfg, const orthod_shape_t *shape) {
  if (cfg == NULL) return orthod__fail(ORTHOD_E_INVAL, "config_validate: cfg is NULL");
  /* enums first: everything below switches on them */
  for (int i = 0; i < N_KEYS; i++) {
    const key_def_t *k = &k_keys[i];
    if (k->type != K_ENUM) continue;
    int v = *(const int *)cfield(cfg, k);
    if (v < 0 || v >= k->n_values)
      return orthod__fail(ORTHOD_E_INVAL, "%s: invalid value %d", k->key, v);
  }
  const orthod_algo_t algo = cfg->algo;
  const char *an = orthod_algo_name(algo);

  /* Newton–Schulz step counts (spec 4, 5.1, 5.3–5.6): algorithm-specific wording first. */
  if (uses_ns(algo)) {
    if (algo == ORTHOD_ALGO_POLARGRAD) {
      if (cfg->num_ns_steps < 0)
        return orthod__fail(ORTHOD_E_STEPS, "num_ns_steps must be positive, got %d", cfg->num_ns_steps);
    } else if (cfg->num_ns_steps < 1) {
      return orthod__fail(ORTHOD_E_STEPS, "num_ns_steps must be at least 1, got %d", cfg->num_ns_steps);
    }
    if (cfg->coefficient_type == ORTHOD_COEF_CUSTOM)
      return orthod__fail(ORTHOD_E_INVAL,
                          "coefficient_type: %s cannot take custom coefficients (there is no key "
                          "for the tuples); choose a built-in set",
                          an);
    if (cfg->coefficient_type == ORTHOD_COEF_CUBIC5 && cfg->num_ns_steps != 5)
      return orthod__fail(ORTHOD_E_STEPS,
                          "coefficient_type cubic5 is a fixed 5-step schedule, got num_ns_steps=%d; "
                          "use num_ns_steps=5",
                          cfg->num_ns_steps);
  }
  /* generic numeric ranges from the table */
  for (int i = 0; i < N_KEYS; i++) {
    const key_def_t *k = &k_keys[i];
    if (k->type != K_DOUBLE && k->type != K_INT && k->type != K_INT64) continue;
    ORTHOD_TRY(check_range(k, numeric_value(cfg, k), NULL));
  }
  if (algo == ORTHOD_ALGO_ADAMW) {
    /* torch.optim.AdamW's own checks */
    if (cfg->lr < 0.0) return orthod__fail(ORTHOD_E_INVAL, "lr: adamw needs lr >= 0, got %.17g", cfg->lr);
    if (cfg->weight_decay < 0.0)
      return orthod__fail(ORTHOD_E_INVAL, "weight_decay: adamw needs weight_decay >= 0, got %.17g",
                          cfg->weight_decay);
    if (cfg->hook != ORTHOD_HOOK_NONE)
      return orthod__fail(ORTHOD_E_INVAL, "hook: adamw takes no weight-update hook (got %s)",
                          orthod_hook_name(cfg->hook));
    if (cfg->n_splits != 0 || cfg->num_heads > 1)
      return orthod__fail(ORTHOD_E_INVAL, "%s: adamw is elementwise; blocks apply to orthogonalized "
                          "optimizers only", cfg->n_splits != 0 ? "split_rows" : "num_heads");
  }
  if (cfg->scale_mode == ORTHOD_SCALE_NUCLEAR_NORM && algo != ORTHOD_ALGO_MOP)
    return orthod__fail(ORTHOD_E_INVAL, "scale_mode: nuclear_norm is only available with mop, not %s", an);
  if (algo == ORTHOD_ALGO_SCION) {
    if (cfg->nesterov) return orthod__fail(ORTHOD_E_INVAL, "nesterov: scion forces nesterov off");
    if (cfg->weight_decay_method != ORTHOD_WD_DECOUPLED)
      return orthod__fail(ORTHOD_E_INVAL, "weight_decay_method: scion forces decoupled decay, got %s",
                          orthod_wd_method_name(cfg->weight_decay_method));
    if (cfg->scale_mode != ORTHOD_SCALE_UNIT_RMS_NORM)
      return orthod__fail(ORTHOD_E_INVAL, "scale_mode: scion always scales by unit_rms_norm "
                          "sqrt(m/n)·spectral_radius, got %s", orthod_scale_mode_name(cfg->scale_mode));
  }
  if (algo == ORTHOD_ALGO_ADAPTIVE_MUON) {
    if (cfg->moment2_method == ORTHOD_MOMENT2_NAMO && cfg->weight_decay_method == ORTHOD_WD_L2)
      return orthod__fail(ORTHOD_E_INVAL, "moment2_method: namo cannot be combined with "
                          "weight_decay_method l2 (namo needs the raw gradient)");
    if (cfg->hook != ORTHOD_HOOK_NONE)
      return orthod__fail(ORTHOD_E_INVAL, "hook: adaptive_muon takes no weight-update hook (got %s)",
                          orthod_hook_name(cfg->hook));
  }
  if (algo == ORTHOD_ALGO_MUON_HYPERBALL && cfg->hook != ORTHOD_HOOK_HYPERBALL)
    return orthod__fail(ORTHOD_E_INVAL, "hook: muon_hyperball installs its own hyperball hook; "
                        "got hook %s", orthod_hook_name(cfg->hook));
  /* hooks (spec 5.9): eps finite > 0 for all (table), R finite >= eps */
  if (cfg->hook == ORTHOD_HOOK_HYPERBALL) {
    if (cfg->hyperball_radius == 0.0)
      return orthod__fail(ORTHOD_E_INVAL, "hyperball_radius is required (> 0) with the hyperball hook%s",
                          algo == ORTHOD_ALGO_MUON_HYPERBALL ? " of muon_hyperball" : "");
    if (cfg->hyperball_radius < cfg->hook_eps)
      return orthod__fail(ORTHOD_E_INVAL, "hyperball_radius %.17g must be >= hook_eps %.17g",
                          cfg->hyperball_radius, cfg->hook_eps);
  }
  /* layout of the matrix view */
  if (cfg->n_splits < 0 || cfg->n_splits > ORTHOD_MAX_SPLITS)
    return orthod__fail(ORTHOD_E_INVAL, "split_rows: %d blocks, at most %d", cfg->n_splits,
                        ORTHOD_MAX_SPLITS);
  for (int i = 0; i < cfg->n_splits; i++)
    if (cfg->split_rows[i] <= 0)
      return orthod__fail(ORTHOD_E_INVAL, "split_rows: block %d has %lld rows; row counts must be positive",
                          i, (long long)cfg->split_rows[i]);
  if (cfg->n_splits != 0 && cfg->num_heads > 1)
    return orthod__fail(ORTHOD_E_INVAL, "split_rows and num_heads cannot be combined");
  if (shape == NULL) return ORTHOD_OK;

  char sbuf[128];
  if (shape->ndim < 1 || shape->ndim > ORTHOD_MAX_DIMS)
    return orthod__fail(ORTHOD_E_SHAPE, "shape has rank %d", shape->ndim);
  if (algo != ORTHOD_ALGO_ADAMW && shape->ndim < 2)
    return orthod__fail(ORTHOD_E_SHAPE,
                        "Only 2D parameters are supported by %s: orthogonalized optimizers need "
                        "rank >= 2 (N-D weights are viewed as (dim0, product of the rest)); got "
                        "shape %s — use adamw",
                        an, orthod_shape_str(shape, sbuf, sizeof sbuf));
  int64_t dim0 = shape->dims[0];
  if (cfg->n_splits != 0) {
    int64_t sum = 0;
    for (int i = 0; i < cfg->n_splits; i++) sum += cfg->split_rows[i];
    if (sum != dim0)
      return orthod__fail(ORTHOD_E_SHAPE, "split_rows sum %lld != dim 0 of %lld", (long long)sum,
                          (long long)dim0);
  }
  if (cfg->num_heads > 1 && dim0 % cfg->num_heads != 0)
    return orthod__fail(ORTHOD_E_SHAPE, "num_heads %lld does not divide dim 0 of %lld",
                        (long long)cfg->num_heads, (long long)dim0);
  return ORTHOD_OK;
}
