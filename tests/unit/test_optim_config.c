/* test_optim_config.c — the optimizer configuration: the spec's defaults per algorithm (4, 5),
 * the key table (set/get/list, ranges, lists, enum names), the registry names of spec 9, the Muon
 * scale factor and every validation rule, each failure with its code and detail. */
#include <math.h>
#include <string.h>

#include "orthod/optimizer.h"
#include "testutil.h"

static orthod_shape_t shp(int nd, int64_t a, int64_t b, int64_t c, int64_t d) {
  orthod_shape_t s;
  const int64_t dims[4] = {a, b, c, d};
  if (orthod_shape_init(&s, nd, dims) != ORTHOD_OK) abort();
  return s;
}

static orthod_optim_config_t def(orthod_algo_t a) {
  orthod_optim_config_t c;
  if (orthod_optim_config_default(&c, a) != ORTHOD_OK) abort();
  return c;
}

/* ---- defaults ------------------------------------------------------------------------------- */

static void check_muon_base(const orthod_optim_config_t *c) {
  CU_ASSERT_EQUAL(c->lr, 3e-4);
  CU_ASSERT_EQUAL(c->momentum, 0.95);
  CU_ASSERT_FALSE(c->nesterov);
  CU_ASSERT_EQUAL(c->weight_decay_method, ORTHOD_WD_DECOUPLED);
  CU_ASSERT_EQUAL(c->coefficient_type, ORTHOD_COEF_QUINTIC);
  CU_ASSERT_EQUAL(c->num_ns_steps, 5);
  CU_ASSERT_FALSE(c->use_syrk);
  CU_ASSERT_EQUAL(c->extra_scale_factor, 1.0);
  CU_ASSERT_EQUAL(c->n_splits, 0);
  CU_ASSERT_EQUAL(c->num_heads, 0);
}

static void test_defaults_per_algorithm(void) {
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  check_muon_base(&c);
  CU_ASSERT_EQUAL(c.algo, ORTHOD_ALGO_MUON);
  CU_ASSERT_EQUAL(c.weight_decay, 0.01);
  CU_ASSERT_EQUAL(c.precision, ORTHOD_PREC_MEDIUM);
  CU_ASSERT_EQUAL(c.scale_mode, ORTHOD_SCALE_SPECTRAL);
  CU_ASSERT_EQUAL(c.hook, ORTHOD_HOOK_NONE);
  CU_ASSERT_EQUAL(c.hook_eps, 1e-15);
  CU_ASSERT_EQUAL(c.outward_scale, 0.5);
  CU_ASSERT_EQUAL(c.inward_scale, 1.0);

  c = def(ORTHOD_ALGO_ADAPTIVE_MUON); /* lr/momentum/wd required in the spec: Muon's values */
  check_muon_base(&c);
  CU_ASSERT_EQUAL(c.weight_decay, 0.01);
  CU_ASSERT_EQUAL(c.precision, ORTHOD_PREC_MEDIUM);
  CU_ASSERT_EQUAL(c.moment2_method, ORTHOD_MOMENT2_ADAMUON);
  CU_ASSERT_EQUAL(c.beta2, 0.95);
  CU_ASSERT_EQUAL(c.eps, 1e-8);
  CU_ASSERT_EQUAL(c.scale_mode, ORTHOD_SCALE_SPECTRAL);

  c = def(ORTHOD_ALGO_MOP);
  check_muon_base(&c);
  CU_ASSERT_EQUAL(c.weight_decay, 0.01);
  CU_ASSERT_EQUAL(c.precision, ORTHOD_PREC_HIGHEST);
  CU_ASSERT_EQUAL(c.scale_mode, ORTHOD_SCALE_NUCLEAR_NORM);

  c = def(ORTHOD_ALGO_MUON_HYPERBALL);
  check_muon_base(&c);
  CU_ASSERT_EQUAL(c.hook, ORTHOD_HOOK_HYPERBALL);
  CU_ASSERT_EQUAL(c.hyperball_radius, 0.0); /* required: unset */
  CU_ASSERT_EQUAL(c.hook_eps, 1e-15);
  CU_ASSERT_EQUAL(c.precision, ORTHOD_PREC_MEDIUM);

  c = def(ORTHOD_ALGO_POLARGRAD);
  check_muon_base(&c);
  CU_ASSERT_EQUAL(c.weight_decay, 0.01);
  CU_ASSERT_EQUAL(c.precision, ORTHOD_PREC_HIGHEST);

  c = def(ORTHOD_ALGO_SCION);
  CU_ASSERT_EQUAL(c.lr, 3e-4);
  CU_ASSERT_EQUAL(c.momentum, 0.95);
  CU_ASSERT_EQUAL(c.weight_decay, 1.0);
  CU_ASSERT_EQUAL(c.weight_decay_method, ORTHOD_WD_DECOUPLED);
  CU_ASSERT_FALSE(c.nesterov);
  CU_ASSERT_EQUAL(c.spectral_radius, 1.0);
  CU_ASSERT_EQUAL(c.scale_mode, ORTHOD_SCALE_UNIT_RMS_NORM);
  CU_ASSERT_EQUAL(c.precision, ORTHOD_PREC_MEDIUM);
  CU_ASSERT_EQUAL(c.num_ns_steps, 5);

  c = def(ORTHOD_ALGO_SPEL);
  check_muon_base(&c);
  CU_ASSERT_EQUAL(c.weight_decay, 0.1);
  CU_ASSERT_EQUAL(c.precision, ORTHOD_PREC_MEDIUM);

  c = def(ORTHOD_ALGO_ADAMW); /* torch.optim.AdamW */
  CU_ASSERT_EQUAL(c.lr, 1e-3);
  CU_ASSERT_EQUAL(c.adam_beta1, 0.9);
  CU_ASSERT_EQUAL(c.adam_beta2, 0.999);
  CU_ASSERT_EQUAL(c.adam_eps, 1e-8);
  CU_ASSERT_EQUAL(c.weight_decay, 1e-2);
  CU_ASSERT_FALSE(c.amsgrad);

  /* every default validates on a matrix, except MuonHyperball (radius required) */
  orthod_shape_t s = shp(2, 8, 16, 0, 0);
  for (int a = 0; a < ORTHOD_ALGO_COUNT; a++) {
    c = def((orthod_algo_t)a);
    if (a == ORTHOD_ALGO_MUON_HYPERBALL) {
      TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
      TU_EXPECT_DETAIL("hyperball_radius is required");
    } else {
      TU_OK(orthod_optim_config_validate(&c, &s));
    }
  }
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_default(&c, ORTHOD_ALGO_COUNT));
  TU_EXPECT_DETAIL("invalid algo");
}

/* ---- key table ------------------------------------------------------------------------------ */

static void test_key_table_roundtrip(void) {
  const char *help = NULL, *key;
  int count = 0;
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  c.n_splits = 3;
  c.split_rows[0] = 768;
  c.split_rows[1] = 256;
  c.split_rows[2] = 256;
  for (int i = 0; (key = orthod_optim_config_key(i, &help)) != NULL; i++, count++) {
    CU_ASSERT_PTR_NOT_NULL(help);
    CU_ASSERT_TRUE(help != NULL && strlen(help) > 10);
    for (int j = 0; j < i; j++) CU_ASSERT_STRING_NOT_EQUAL(orthod_optim_config_key(j, NULL), key);
    if (strcmp(key, "algo") == 0) continue; /* setting it resets: checked separately */
    char v1[256], v2[256];
    TU_OK(orthod_optim_config_get(&c, key, v1, sizeof v1));
    orthod_optim_config_t d = c;
    TU_OK(orthod_optim_config_set(&d, key, v1));
    TU_OK(orthod_optim_config_get(&d, key, v2, sizeof v2));
    CU_ASSERT_STRING_EQUAL(v1, v2);
    CU_ASSERT_EQUAL(memcmp(&c, &d, sizeof c), 0); /* same bytes: no other field touched */
  }
  CU_ASSERT_TRUE(count >= 28);
  CU_ASSERT_PTR_NULL(orthod_optim_config_key(count, &help));
  CU_ASSERT_PTR_NULL(orthod_optim_config_key(-1, &help));
  char buf[64];
  TU_OK(orthod_optim_config_get(&c, "split_rows", buf, sizeof buf));
  CU_ASSERT_STRING_EQUAL(buf, "768,256,256");
  TU_OK(orthod_optim_config_get(&c, "precision", buf, sizeof buf));
  CU_ASSERT_STRING_EQUAL(buf, "medium");
  TU_OK(orthod_optim_config_get(&c, "lr", buf, sizeof buf));
  CU_ASSERT_EQUAL(strtod(buf, NULL), 3e-4); /* %.17g round-trips doubles */
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_get(&c, "split_rows", buf, 4));
  TU_EXPECT_DETAIL("too small");
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_optim_config_get(&c, "nonexistent_arg", buf, sizeof buf));
  TU_EXPECT_DETAIL("nonexistent_arg");
}

static void test_set_values_and_errors(void) {
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  TU_OK(orthod_optim_config_set(&c, "lr", "0.02"));
  CU_ASSERT_EQUAL(c.lr, 0.02);
  TU_OK(orthod_optim_config_set(&c, "LR", "-1")); /* keys are case-insensitive; lr may be negative */
  CU_ASSERT_EQUAL(c.lr, -1.0);
  TU_OK(orthod_optim_config_set(&c, "coefficient_type", "polar_express"));
  CU_ASSERT_EQUAL(c.coefficient_type, ORTHOD_COEF_POLAR_EXPRESS);
  TU_OK(orthod_optim_config_set(&c, "coefficient_type", "CUBIC5"));
  CU_ASSERT_EQUAL(c.coefficient_type, ORTHOD_COEF_CUBIC5);
  TU_OK(orthod_optim_config_set(&c, "fp32_matmul_prec", "Highest")); /* the spec's name */
  CU_ASSERT_EQUAL(c.precision, ORTHOD_PREC_HIGHEST);
  TU_OK(orthod_optim_config_set(&c, "nesterov", "true"));
  CU_ASSERT_TRUE(c.nesterov);
  TU_OK(orthod_optim_config_set(&c, "nesterov", "0"));
  CU_ASSERT_FALSE(c.nesterov);
  TU_OK(orthod_optim_config_set(&c, "weight_decay_method", "palm"));
  CU_ASSERT_EQUAL(c.weight_decay_method, ORTHOD_WD_PALM);
  TU_OK(orthod_optim_config_set(&c, "hook", "radial_brake"));
  CU_ASSERT_EQUAL(c.hook, ORTHOD_HOOK_RADIAL_BRAKE);
  TU_OK(orthod_optim_config_set(&c, "hyperball_eps", "0.25"));
  CU_ASSERT_EQUAL(c.hook_eps, 0.25);
  TU_OK(orthod_optim_config_set(&c, "num_heads", "12"));
  CU_ASSERT_EQUAL(c.num_heads, 12);
  TU_OK(orthod_optim_config_set(&c, "role", "Embedding"));
  CU_ASSERT_EQUAL(c.role, ORTHOD_ROLE_EMBEDDING);

  TU_OK(orthod_optim_config_set(&c, "split_rows", "768, 256,256"));
  CU_ASSERT_EQUAL(c.n_splits, 3);
  CU_ASSERT_EQUAL(c.split_rows[0], 768);
  CU_ASSERT_EQUAL(c.split_rows[2], 256);
  TU_OK(orthod_optim_config_set(&c, "split_rows", ""));
  CU_ASSERT_EQUAL(c.n_splits, 0);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "split_rows", "768,-1"));
  TU_EXPECT_DETAIL("split_rows: row counts must be positive");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "split_rows", "7,x"));
  TU_EXPECT_DETAIL("split_rows: cannot parse");
  TU_EXPECT_ERR(ORTHOD_E_INVAL,
                orthod_optim_config_set(&c, "split_rows", "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"));
  TU_EXPECT_DETAIL("at most 16");
  CU_ASSERT_EQUAL(c.n_splits, 0); /* failures leave the value */

  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "momentum", "1"));
  TU_EXPECT_DETAIL("momentum must be in [0, 1), got 1");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "momentum", "-0.5"));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "lr", "abc"));
  TU_EXPECT_DETAIL("lr: cannot parse 'abc'");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "lr", "nan"));
  TU_EXPECT_DETAIL("lr must be finite");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "lr", "inf"));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "eps", "0"));
  TU_EXPECT_DETAIL("eps must be in (0, inf)");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "outward_scale", "1.5"));
  TU_EXPECT_DETAIL("outward_scale must be in [0, 1]");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "beta2", "1"));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "nesterov", "maybe"));
  TU_EXPECT_DETAIL("nesterov");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(&c, "num_ns_steps", "2.5"));
  TU_EXPECT_DETAIL("num_ns_steps: cannot parse");
  TU_EXPECT_ERR(ORTHOD_E_STEPS, orthod_optim_config_set(&c, "num_ns_steps", "-1"));
  TU_EXPECT_DETAIL("num_ns_steps");
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_optim_config_set(&c, "scale_mode", "invalid_mode"));
  TU_EXPECT_DETAIL("invalid_mode");
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_optim_config_set(&c, "weight_decay_method", "bogus"));
  TU_EXPECT_DETAIL("weight_decay_method: unknown value 'bogus'");
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_optim_config_set(&c, "moment2_method", "bogus"));
  TU_EXPECT_DETAIL("adamuon, normuon, namo");
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_optim_config_set(&c, "coefficient_type", "nonexistent"));
  TU_EXPECT_DETAIL("nonexistent");
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_optim_config_set(&c, "nonexistent_arg", "1"));
  TU_EXPECT_DETAIL("unknown optimizer config key 'nonexistent_arg'");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_set(NULL, "lr", "1"));
}

static void test_set_algo_resets_defaults(void) {
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  TU_OK(orthod_optim_config_set(&c, "lr", "0.5"));
  TU_OK(orthod_optim_config_set(&c, "split_rows", "4,4"));
  TU_OK(orthod_optim_config_set(&c, "algo", "SPEL"));
  orthod_optim_config_t want = def(ORTHOD_ALGO_SPEL);
  CU_ASSERT_EQUAL(memcmp(&c, &want, sizeof c), 0);
  CU_ASSERT_EQUAL(c.weight_decay, 0.1);
  CU_ASSERT_EQUAL(c.lr, 3e-4);
  TU_OK(orthod_optim_config_set(&c, "algo", "adamw"));
  CU_ASSERT_EQUAL(c.lr, 1e-3);
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_optim_config_set(&c, "algo", "soap"));
  TU_EXPECT_DETAIL("soap");
  CU_ASSERT_EQUAL(c.algo, ORTHOD_ALGO_ADAMW);
}

/* ---- registry names (spec 9) ---------------------------------------------------------------- */

static void test_registry_names(void) {
  static const char *const family[] = {"muon", "adaptive_muon", "mop", "muon_hyperball",
                                       "polargrad", "scion", "spel", "adamw"};
  for (size_t i = 0; i < sizeof family / sizeof family[0]; i++) {
    orthod_algo_t a = ORTHOD_ALGO_COUNT;
    TU_OK(orthod_algo_from_name(family[i], &a));
    CU_ASSERT_STRING_EQUAL(orthod_algo_name(a), family[i]);
  }
  orthod_algo_t a = ORTHOD_ALGO_COUNT;
  TU_OK(orthod_algo_from_name("MUON", &a)); /* lower-cased lookups */
  CU_ASSERT_EQUAL(a, ORTHOD_ALGO_MUON);
  TU_OK(orthod_algo_from_name("Adaptive_Muon", &a));
  CU_ASSERT_EQUAL(a, ORTHOD_ALGO_ADAPTIVE_MUON);
  TU_OK(orthod_algo_from_name("MoP", &a));
  CU_ASSERT_EQUAL(a, ORTHOD_ALGO_MOP);
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_algo_from_name("nonexistent", &a));
  TU_EXPECT_DETAIL("Optimizer 'nonexistent' not found in the registry");
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_algo_from_name("muown", &a)); /* not registered */
  /* every algorithm's name round-trips; names are distinct and lower case */
  for (int i = 0; i < ORTHOD_ALGO_COUNT; i++) {
    const char *n = orthod_algo_name((orthod_algo_t)i);
    for (const char *p = n; *p; p++) CU_ASSERT_FALSE(*p >= 'A' && *p <= 'Z');
    TU_OK(orthod_algo_from_name(n, &a));
    CU_ASSERT_EQUAL((int)a, i);
  }
  CU_ASSERT_STRING_EQUAL(orthod_algo_name(ORTHOD_ALGO_COUNT), "?");
  /* the other name tables */
  CU_ASSERT_STRING_EQUAL(orthod_wd_method_name(ORTHOD_WD_L2), "l2");
  CU_ASSERT_STRING_EQUAL(orthod_wd_method_name(ORTHOD_WD_PALM), "palm");
  CU_ASSERT_STRING_EQUAL(orthod_scale_mode_name(ORTHOD_SCALE_SHAPE_SCALING), "shape_scaling");
  CU_ASSERT_STRING_EQUAL(orthod_scale_mode_name(ORTHOD_SCALE_NUCLEAR_NORM), "nuclear_norm");
  CU_ASSERT_STRING_EQUAL(orthod_moment2_name(ORTHOD_MOMENT2_NORMUON), "normuon");
  CU_ASSERT_STRING_EQUAL(orthod_hook_name(ORTHOD_HOOK_RELATIVE_UPDATE), "relative_update");
  CU_ASSERT_STRING_EQUAL(orthod_role_name(ORTHOD_ROLE_HEAD), "head");
  CU_ASSERT_STRING_EQUAL(orthod_hook_name((orthod_hook_t)42), "?");
}

/* ---- scale factor, algorithm choice ----------------------------------------------------------- */

static void test_muon_scale_factor_exact(void) {
  static const int64_t pairs[][2] = {{512, 512}, {512, 256}, {256, 512}, {97, 37}, {37, 97}};
  for (size_t i = 0; i < 5; i++) {
    double m = (double)pairs[i][0], n = (double)pairs[i][1], s = 0;
    TU_OK(orthod_muon_scale_factor(pairs[i][0], pairs[i][1], ORTHOD_SCALE_SHAPE_SCALING, &s));
    CU_ASSERT_EQUAL(s, sqrt(fmax(1.0, m / n))); /* exact: same double formula (spec 4) */
    TU_OK(orthod_muon_scale_factor(pairs[i][0], pairs[i][1], ORTHOD_SCALE_SPECTRAL, &s));
    CU_ASSERT_EQUAL(s, sqrt(fmax(m, n)));
    TU_OK(orthod_muon_scale_factor(pairs[i][0], pairs[i][1], ORTHOD_SCALE_UNIT_RMS_NORM, &s));
    CU_ASSERT_EQUAL(s, sqrt(m / n));
  }
  double s = 0;
  TU_OK(orthod_muon_scale_factor(4, 16, ORTHOD_SCALE_SHAPE_SCALING, &s));
  CU_ASSERT_EQUAL(s, 1.0);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_muon_scale_factor(10, 10, (orthod_scale_mode_t)77, &s));
  TU_EXPECT_DETAIL("Invalid mode for Muon update scale factor");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_muon_scale_factor(10, 10, ORTHOD_SCALE_NUCLEAR_NORM, &s));
  TU_EXPECT_DETAIL("nuclear_norm");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_muon_scale_factor(0, 10, ORTHOD_SCALE_SPECTRAL, &s));
}

static void test_algo_for(void) {
  orthod_shape_t vec = shp(1, 8, 0, 0, 0), mat = shp(2, 8, 4, 0, 0), conv = shp(4, 8, 4, 3, 3);
  CU_ASSERT_EQUAL(orthod_algo_for(&vec, ORTHOD_ROLE_AUTO), ORTHOD_ALGO_ADAMW);
  CU_ASSERT_EQUAL(orthod_algo_for(&vec, ORTHOD_ROLE_MATRIX), ORTHOD_ALGO_ADAMW);
  CU_ASSERT_EQUAL(orthod_algo_for(&mat, ORTHOD_ROLE_AUTO), ORTHOD_ALGO_MUON);
  CU_ASSERT_EQUAL(orthod_algo_for(&mat, ORTHOD_ROLE_MATRIX), ORTHOD_ALGO_MUON);
  CU_ASSERT_EQUAL(orthod_algo_for(&mat, ORTHOD_ROLE_EMBEDDING), ORTHOD_ALGO_ADAMW);
  CU_ASSERT_EQUAL(orthod_algo_for(&mat, ORTHOD_ROLE_HEAD), ORTHOD_ALGO_ADAMW);
  CU_ASSERT_EQUAL(orthod_algo_for(&conv, ORTHOD_ROLE_AUTO), ORTHOD_ALGO_MUON);
}

/* ---- validation ------------------------------------------------------------------------------- */

static void test_validate_rules(void) {
  orthod_shape_t s = shp(2, 8, 16, 0, 0), vec = shp(1, 8, 0, 0, 0), conv = shp(4, 8, 4, 3, 3);
  orthod_optim_config_t c;

  /* step counts */
  c = def(ORTHOD_ALGO_MUON);
  c.num_ns_steps = 0;
  TU_EXPECT_ERR(ORTHOD_E_STEPS, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("num_ns_steps must be at least 1, got 0");
  static const orthod_algo_t at_least_one[] = {ORTHOD_ALGO_SCION, ORTHOD_ALGO_SPEL,
                                               ORTHOD_ALGO_ADAPTIVE_MUON, ORTHOD_ALGO_MUON_HYPERBALL};
  for (int i = 0; i < 4; i++) {
    c = def(at_least_one[i]);
    c.hyperball_radius = 1.0;
    c.num_ns_steps = 0;
    TU_EXPECT_ERR(ORTHOD_E_STEPS, orthod_optim_config_validate(&c, &s));
    TU_EXPECT_DETAIL("num_ns_steps must be at least 1, got 0");
  }
  c = def(ORTHOD_ALGO_POLARGRAD);
  c.num_ns_steps = 0;
  TU_OK(orthod_optim_config_validate(&c, &s));
  c.num_ns_steps = -1;
  TU_EXPECT_ERR(ORTHOD_E_STEPS, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("num_ns_steps must be positive");
  c = def(ORTHOD_ALGO_MOP); /* exact SVD: NS settings unused */
  c.num_ns_steps = 0;
  TU_OK(orthod_optim_config_validate(&c, &s));
  c = def(ORTHOD_ALGO_MUON);
  c.coefficient_type = ORTHOD_COEF_CUBIC5;
  c.num_ns_steps = 4;
  TU_EXPECT_ERR(ORTHOD_E_STEPS, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("cubic5 is a fixed 5-step schedule, got num_ns_steps=4");
  c.num_ns_steps = 5;
  TU_OK(orthod_optim_config_validate(&c, &s));
  c.coefficient_type = ORTHOD_COEF_CUSTOM;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("muon cannot take custom coefficients");

  /* ranges from the table */
  c = def(ORTHOD_ALGO_MUON);
  c.lr = NAN;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("lr must be finite");
  c = def(ORTHOD_ALGO_MUON);
  c.momentum = 1.0;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("momentum must be in [0, 1)");
  c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
  c.beta2 = -0.1;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("beta2");
  c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
  c.eps = 0.0;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("eps must be in (0, inf)");
  c = def(ORTHOD_ALGO_MUON);
  c.moment2_method = (orthod_moment2_t)9;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("moment2_method: invalid value 9");
  c = def(ORTHOD_ALGO_MUON);
  c.weight_decay_method = (orthod_wd_method_t)7;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("weight_decay_method");

  /* combinations */
  c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
  c.moment2_method = ORTHOD_MOMENT2_NAMO;
  c.weight_decay_method = ORTHOD_WD_L2;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("namo cannot be combined with weight_decay_method l2");
  c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
  c.hook = ORTHOD_HOOK_RELATIVE_UPDATE;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("hook: adaptive_muon");
  c = def(ORTHOD_ALGO_MUON);
  c.scale_mode = ORTHOD_SCALE_NUCLEAR_NORM;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("nuclear_norm is only available with mop");
  c = def(ORTHOD_ALGO_SCION);
  c.nesterov = true;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("nesterov");
  c = def(ORTHOD_ALGO_SCION);
  c.weight_decay_method = ORTHOD_WD_L2;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("scion forces decoupled");
  c = def(ORTHOD_ALGO_ADAMW);
  c.hook = ORTHOD_HOOK_RADIAL_BRAKE;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("hook: adamw");

  /* hooks (spec 5.9) */
  c = def(ORTHOD_ALGO_MUON_HYPERBALL);
  c.hook = ORTHOD_HOOK_NONE;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("muon_hyperball installs its own hyperball hook");
  c = def(ORTHOD_ALGO_MUON_HYPERBALL);
  c.hyperball_radius = 1e-20; /* R >= eps */
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("must be >= hook_eps");
  c.hyperball_radius = INFINITY;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("hyperball_radius must be finite");
  c.hyperball_radius = 2.0;
  c.hook_eps = 0.0;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("hook_eps must be in (0, inf)");
  c = def(ORTHOD_ALGO_MUON);
  c.hook = ORTHOD_HOOK_HYPERBALL;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("hyperball_radius is required");
  c = def(ORTHOD_ALGO_MUON);
  c.hook = ORTHOD_HOOK_RADIAL_BRAKE;
  c.inward_scale = 1.5;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("inward_scale must be in [0, 1]");
  c.inward_scale = 1.0;
  c.outward_scale = -0.5;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("outward_scale");
  c.outward_scale = 0.0;
  TU_OK(orthod_optim_config_validate(&c, &s));

  /* shapes */
  c = def(ORTHOD_ALGO_MUON);
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_optim_config_validate(&c, &vec));
  TU_EXPECT_DETAIL("Only 2D parameters are supported");
  TU_EXPECT_DETAIL("rank >= 2");
  TU_OK(orthod_optim_config_validate(&c, &conv)); /* viewed as 8 x 36 */
  c = def(ORTHOD_ALGO_ADAMW);
  TU_OK(orthod_optim_config_validate(&c, &vec));
  TU_OK(orthod_optim_config_validate(&c, &conv));
  TU_OK(orthod_optim_config_validate(&c, NULL)); /* no shape: configuration only */

  /* blocks */
  c = def(ORTHOD_ALGO_MUON);
  TU_OK(orthod_optim_config_set(&c, "split_rows", "4,2,2"));
  TU_OK(orthod_optim_config_validate(&c, &s));
  TU_OK(orthod_optim_config_set(&c, "split_rows", "4,2,1"));
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("split_rows sum 7 != dim 0 of 8");
  c.split_rows[2] = 0;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("row counts must be positive");
  c.n_splits = ORTHOD_MAX_SPLITS + 1;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("at most 16");
  c = def(ORTHOD_ALGO_MUON);
  c.num_heads = 4;
  TU_OK(orthod_optim_config_validate(&c, &s));
  c.num_heads = 3;
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("num_heads 3 does not divide dim 0 of 8");
  c.num_heads = -2;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("num_heads");
  c.num_heads = 2;
  TU_OK(orthod_optim_config_set(&c, "split_rows", "4,4"));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("split_rows and num_heads cannot be combined");
  c = def(ORTHOD_ALGO_ADAMW);
  c.num_heads = 2;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(&c, &s));
  TU_EXPECT_DETAIL("num_heads: adamw");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_optim_config_validate(NULL, &s));
}

static void test_state_bytes(void) {
  orthod_shape_t s = shp(2, 16, 8, 0, 0), vec = shp(1, 10, 0, 0, 0);
  orthod_optim_config_t c = def(ORTHOD_ALGO_MUON);
  size_t b = 0;
  TU_OK(orthod_optim_state_bytes(&c, &s, &b));
  CU_ASSERT_EQUAL(b, 128 * sizeof(float)); /* momentum only */
  c = def(ORTHOD_ALGO_ADAPTIVE_MUON);
  c.moment2_method = ORTHOD_MOMENT2_NORMUON;
  TU_OK(orthod_optim_state_bytes(&c, &s, &b));
  CU_ASSERT_EQUAL(b, (128 + 16) * sizeof(float)); /* + per-row statistic (m >= n) */
  c = def(ORTHOD_ALGO_ADAMW);
  TU_OK(orthod_optim_state_bytes(&c, &vec, &b));
  CU_ASSERT_TRUE(b >= 20 * sizeof(float) && b <= (20 + 16) * sizeof(float)); /* 2 buffers, aligned */
  c.amsgrad = true;
  size_t b3 = 0;
  TU_OK(orthod_optim_state_bytes(&c, &vec, &b3));
  CU_ASSERT_TRUE(b3 >= b + 10 * sizeof(float));
  c = def(ORTHOD_ALGO_MUON);
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_optim_state_bytes(&c, &vec, &b));
}

int main(void) {
  static const tu_test_t tests[] = {
      {"defaults_per_algorithm", test_defaults_per_algorithm},
      {"key_table_roundtrip", test_key_table_roundtrip},
      {"set_values_and_errors", test_set_values_and_errors},
      {"set_algo_resets_defaults", test_set_algo_resets_defaults},
      {"registry_names", test_registry_names},
      {"muon_scale_factor_exact", test_muon_scale_factor_exact},
      {"algo_for", test_algo_for},
      {"validate_rules", test_validate_rules},
      {"state_bytes", test_state_bytes},
      {NULL, NULL},
  };
  return tu_run_suite("optim_config", tests);
}
