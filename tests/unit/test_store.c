/* test_store.c — the parameter store: registration (idempotent, conflicting, invalid), lookup,
 * name order, drop, memory admission against the limit, chunked writes/reads in every dtype,
 * steps from host gradients (non-finite rejected with nothing applied), reconfiguration. */
#include <math.h>
#include <string.h>

#include "orthod/store.h"
#include "testutil.h"

static orthod_shape_t shape2(int64_t m, int64_t n) {
  orthod_shape_t s;
  const int64_t d[2] = {m, n};
  if (orthod_shape_init(&s, 2, d) != ORTHOD_OK) abort();
  return s;
}

static orthod_optim_config_t muon(void) {
  orthod_optim_config_t c;
  orthod_optim_config_default(&c, ORTHOD_ALGO_MUON);
  return c;
}

static void test_register_get_list_drop(void) {
  orthod_store_t *st = NULL;
  TU_OK(orthod_store_create(tu_backend(), 0, &st));
  orthod_shape_t s = shape2(4, 6);
  orthod_optim_config_t c = muon();
  orthod_param_t *a = NULL, *b = NULL, *again = NULL, *got = NULL;
  TU_OK(orthod_store_register(st, "layer.1.weight", &s, &c, &b));
  TU_OK(orthod_store_register(st, "layer.0.weight", &s, &c, &a));
  TU_OK(orthod_store_register(st, "layer.1.weight", &s, &c, &again)); /* identical: idempotent */
  CU_ASSERT_PTR_EQUAL(again, b);
  CU_ASSERT_EQUAL(orthod_store_count(st), 2);
  CU_ASSERT_STRING_EQUAL(orthod_param_name(orthod_store_at(st, 0)), "layer.0.weight");
  CU_ASSERT_STRING_EQUAL(orthod_param_name(orthod_store_at(st, 1)), "layer.1.weight");
  CU_ASSERT_PTR_NULL(orthod_store_at(st, 2));
  TU_OK(orthod_store_get(st, "layer.0.weight", &got));
  CU_ASSERT_PTR_EQUAL(got, a);
  CU_ASSERT_EQUAL(orthod_param_step(a), 0);
  CU_ASSERT_TRUE(orthod_shape_equal(orthod_param_shape(a), &s));
  CU_ASSERT_EQUAL(orthod_param_config(a)->algo, ORTHOD_ALGO_MUON);
  /* zero weights after registration */
  float w[24];
  TU_OK(orthod_param_read(a, 0, w, ORTHOD_DTYPE_F32, 24));
  for (int i = 0; i < 24; i++) CU_ASSERT_EQUAL(w[i], 0.0f);

  TU_EXPECT_ERR(ORTHOD_E_NOTFOUND, orthod_store_get(st, "nope", &got));
  TU_EXPECT_DETAIL("nope");
  TU_OK(orthod_store_drop(st, "layer.0.weight"));
  TU_EXPECT_ERR(ORTHOD_E_NOTFOUND, orthod_store_drop(st, "layer.0.weight"));
  CU_ASSERT_EQUAL(orthod_store_count(st), 1);
  orthod_store_destroy(st);
}

static void test_register_conflicts_and_invalid(void) {
  orthod_store_t *st = NULL;
  TU_OK(orthod_store_create(tu_backend(), 0, &st));
  orthod_shape_t s = shape2(4, 6), other = shape2(6, 4);
  orthod_optim_config_t c = muon(), c2 = muon();
  c2.lr = 0.5;
  orthod_param_t *p = NULL;
  TU_OK(orthod_store_register(st, "w", &s, &c, &p));
  TU_EXPECT_ERR(ORTHOD_E_EXISTS, orthod_store_register(st, "w", &other, &c, &p));
  TU_EXPECT_DETAIL("shape 4x6, not 6x4");
  TU_EXPECT_ERR(ORTHOD_E_EXISTS, orthod_store_register(st, "w", &s, &c2, &p));
  TU_EXPECT_DETAIL("different optimizer configuration");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_store_register(st, "", &s, &c, &p));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_store_register(st, "bad\nname", &s, &c, &p));
  TU_EXPECT_DETAIL("control character");
  char longname[ORTHOD_NAME_MAX + 8];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_store_register(st, longname, &s, &c, &p));
  /* a matrix optimizer on a 1-D parameter is refused by config validation */
  orthod_shape_t vec;
  const int64_t d[1] = {8};
  TU_OK(orthod_shape_init(&vec, 1, d));
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_store_register(st, "bias", &vec, &c, &p));
  CU_ASSERT_EQUAL(orthod_store_count(st), 1);
  orthod_store_destroy(st);
}

static void test_memory_limit(void) {
  orthod_store_t *st = NULL;
  orthod_shape_t s = shape2(16, 16);
  orthod_optim_config_t c = muon();
  size_t state = 0;
  TU_OK(orthod_optim_state_bytes(&c, &s, &state));
  CU_ASSERT_TRUE(state >= 16 * 16 * sizeof(float)); /* at least the momentum buffer */
  size_t per_param = 16 * 16 * sizeof(float) + state;
  size_t before = orthod_backend_memory_used(tu_backend());
  TU_OK(orthod_store_create(tu_backend(), 2 * per_param + per_param / 2, &st));
  orthod_param_t *p = NULL;
  TU_OK(orthod_store_register(st, "a", &s, &c, &p));
  TU_OK(orthod_store_register(st, "b", &s, &c, &p));
  CU_ASSERT_EQUAL(orthod_store_memory_used(st), 2 * per_param);
  TU_EXPECT_ERR(ORTHOD_E_NOMEM, orthod_store_register(st, "c", &s, &c, &p));
  TU_EXPECT_DETAIL("limit");
  CU_ASSERT_EQUAL(orthod_store_count(st), 2);
  TU_OK(orthod_store_drop(st, "a"));
  TU_OK(orthod_store_register(st, "c", &s, &c, &p)); /* room again */
  orthod_store_destroy(st);
  CU_ASSERT_EQUAL(orthod_backend_memory_used(tu_backend()), before); /* everything returned */
}

static void test_write_read_dtypes_and_ranges(void) {
  orthod_store_t *st = NULL;
  TU_OK(orthod_store_create(tu_backend(), 0, &st));
  orthod_shape_t s = shape2(3, 5);
  orthod_optim_config_t c = muon();
  orthod_param_t *p = NULL;
  TU_OK(orthod_store_register(st, "w", &s, &c, &p));
  float src[15], back[15];
  for (int i = 0; i < 15; i++) src[i] = (float)i * 0.3f - 2.0f;
  /* two chunks */
  TU_OK(orthod_param_write(p, 0, src, ORTHOD_DTYPE_F32, 7));
  TU_OK(orthod_param_write(p, 7, src + 7, ORTHOD_DTYPE_F32, 8));
  TU_OK(orthod_param_read(p, 0, back, ORTHOD_DTYPE_F32, 15));
  CU_ASSERT_TRUE(tu_bitequal("fp32 chunks", back, src, 15));
  /* bf16 / fp16 on the way in and out round exactly like the scalar conversions */
  uint16_t h[15], out16[15];
  TU_OK(orthod_convert(h, ORTHOD_DTYPE_BF16, src, ORTHOD_DTYPE_F32, 15));
  TU_OK(orthod_param_write(p, 0, h, ORTHOD_DTYPE_BF16, 15));
  TU_OK(orthod_param_read(p, 0, back, ORTHOD_DTYPE_F32, 15));
  for (int i = 0; i < 15; i++) CU_ASSERT_EQUAL(back[i], orthod_bf16_to_f32(h[i]));
  TU_OK(orthod_param_read(p, 0, out16, ORTHOD_DTYPE_F16, 15));
  for (int i = 0; i < 15; i++) CU_ASSERT_EQUAL(out16[i], orthod_f32_to_f16(back[i]));
  /* ranges */
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_param_write(p, 10, src, ORTHOD_DTYPE_F32, 6));
  TU_EXPECT_DETAIL("outside parameter 'w' of 15 elements");
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_param_read(p, 16, back, ORTHOD_DTYPE_F32, 0));
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_param_write(p, SIZE_MAX, src, ORTHOD_DTYPE_F32, 2));
  orthod_store_destroy(st);
}

static void test_step_host_and_nonfinite(void) {
  orthod_store_t *st = NULL;
  TU_OK(orthod_store_create(tu_backend(), 0, &st));
  orthod_shape_t s = shape2(8, 12);
  orthod_optim_config_t c = muon();
  c.precision = ORTHOD_PREC_HIGHEST;
  c.weight_decay = 0.0;
  orthod_param_t *p = NULL;
  TU_OK(orthod_store_register(st, "w", &s, &c, &p));
  tu_rng_t r;
  tu_rng_seed(&r, 3);
  float w0[96], g[96], w1[96], w2[96];
  tu_fill_normal(&r, w0, 96);
  tu_fill_normal(&r, g, 96);
  TU_OK(orthod_param_write(p, 0, w0, ORTHOD_DTYPE_F32, 96));
  TU_OK(orthod_param_step_host(p, g, ORTHOD_DTYPE_F32, -1.0));
  CU_ASSERT_EQUAL(orthod_param_step(p), 1);
  TU_OK(orthod_param_read(p, 0, w1, ORTHOD_DTYPE_F32, 96));
  /* The first Muon step with momentum β from zero: M = (1-β) G, O = NS(M) (scale-invariant),
   * W1 = W0 - lr·s·O with s = sqrt(12); check the update size: ‖W1 - W0‖_F = lr·s·‖O‖_F and
   * O is close to orthogonal with 8 singular values near 1 (quintic NS leaves them in ~[0.7, 1.2]). */
  double d2 = 0.0;
  for (int i = 0; i < 96; i++) d2 += ((double)w1[i] - w0[i]) * ((double)w1[i] - w0[i]);
  double per_sv = sqrt(d2 / 8.0) / (c.lr * sqrt(12.0));
  CU_ASSERT_TRUE(per_sv > 0.6 && per_sv < 1.25);
  /* a NaN anywhere: E_NONFINITE and nothing applied, counter unchanged */
  g[17] = NAN;
  TU_EXPECT_ERR(ORTHOD_E_NONFINITE, orthod_param_step_host(p, g, ORTHOD_DTYPE_F32, -1.0));
  TU_EXPECT_DETAIL("1 non-finite");
  g[17] = INFINITY;
  TU_EXPECT_ERR(ORTHOD_E_NONFINITE, orthod_param_step_host(p, g, ORTHOD_DTYPE_F32, -1.0));
  CU_ASSERT_EQUAL(orthod_param_step(p), 1);
  TU_OK(orthod_param_read(p, 0, w2, ORTHOD_DTYPE_F32, 96));
  CU_ASSERT_TRUE(tu_bitequal("weights untouched", w2, w1, 96));
  /* an explicit lr of 0 with no decay leaves weights unchanged but counts the step */
  g[17] = 0.5f;
  TU_OK(orthod_param_step_host(p, g, ORTHOD_DTYPE_F32, 0.0));
  CU_ASSERT_EQUAL(orthod_param_step(p), 2);
  TU_OK(orthod_param_read(p, 0, w2, ORTHOD_DTYPE_F32, 96));
  CU_ASSERT_TRUE(tu_bitequal("lr 0", w2, w1, 96));
  /* a bf16 gradient is accepted */
  uint16_t gb[96];
  TU_OK(orthod_convert(gb, ORTHOD_DTYPE_BF16, g, ORTHOD_DTYPE_F32, 96));
  TU_OK(orthod_param_step_host(p, gb, ORTHOD_DTYPE_BF16, -1.0));
  CU_ASSERT_EQUAL(orthod_param_step(p), 3);
  orthod_store_destroy(st);
}

static void test_reconfigure(void) {
  orthod_store_t *st = NULL;
  TU_OK(orthod_store_create(tu_backend(), 0, &st));
  orthod_shape_t s = shape2(4, 4);
  orthod_optim_config_t c = muon();
  orthod_param_t *p = NULL;
  TU_OK(orthod_store_register(st, "w", &s, &c, &p));
  c.lr = 0.125;
  TU_OK(orthod_param_reconfigure(p, &c));
  CU_ASSERT_EQUAL(orthod_param_config(p)->lr, 0.125);
  orthod_optim_config_t bad = c;
  bad.momentum = 1.5;
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_param_reconfigure(p, &bad));
  TU_EXPECT_DETAIL("momentum");
  orthod_optim_config_t other;
  orthod_optim_config_default(&other, ORTHOD_ALGO_ADAMW);
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_param_reconfigure(p, &other));
  TU_EXPECT_DETAIL("algo");
  CU_ASSERT_EQUAL(orthod_param_config(p)->algo, ORTHOD_ALGO_MUON);
  orthod_store_destroy(st);
}

int main(void) {
  static const tu_test_t tests[] = {
      {"register_get_list_drop", test_register_get_list_drop},
      {"register_conflicts_and_invalid", test_register_conflicts_and_invalid},
      {"memory_limit", test_memory_limit},
      {"write_read_dtypes_and_ranges", test_write_read_dtypes_and_ranges},
      {"step_host_and_nonfinite", test_step_host_and_nonfinite},
      {"reconfigure", test_reconfigure},
      {NULL, NULL},
  };
  return tu_run_suite("store", tests);
}
