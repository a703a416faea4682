/* test_tensor.c — shapes, dtype names, and the bf16/fp16 conversions against independent
 * references (nearest representable value by search, ties to even). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/tensor.h"
#include "testutil.h"

static uint32_t bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}

static float from_bits(uint32_t u) {
  float x;
  memcpy(&x, &u, 4);
  return x;
}

/* ---- shapes -------------------------------------------------------------------------------- */

static void test_shape_valid(void) {
  orthod_shape_t s;
  const int64_t dims[4] = {8, 4, 3, 3};
  TU_OK(orthod_shape_init(&s, 4, dims));
  CU_ASSERT_EQUAL(orthod_shape_numel(&s), 288);
  char buf[64];
  CU_ASSERT_STRING_EQUAL(orthod_shape_str(&s, buf, sizeof buf), "8x4x3x3");
  orthod_shape_t t;
  TU_OK(orthod_shape_init(&t, 4, dims));
  CU_ASSERT_TRUE(orthod_shape_equal(&s, &t));
  TU_OK(orthod_shape_init(&t, 3, dims));
  CU_ASSERT_FALSE(orthod_shape_equal(&s, &t));
  const int64_t eight[8] = {1, 2, 1, 2, 1, 2, 1, 2};
  TU_OK(orthod_shape_init(&s, 8, eight));
  CU_ASSERT_EQUAL(orthod_shape_numel(&s), 16);
}

static void test_shape_invalid(void) {
  orthod_shape_t s;
  const int64_t zero[2] = {3, 0}, neg[2] = {-1, 4}, nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_shape_init(&s, 2, zero));
  TU_EXPECT_DETAIL("dimension 1 is 0");
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_shape_init(&s, 2, neg));
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_shape_init(&s, 9, nine));
  TU_EXPECT_ERR(ORTHOD_E_SHAPE, orthod_shape_init(&s, 0, nine));
  const int64_t huge[2] = {INT64_C(1) << 40, INT64_C(1) << 40};
  TU_EXPECT_ERR(ORTHOD_E_OVERFLOW, orthod_shape_init(&s, 2, huge));
  TU_EXPECT_DETAIL("overflows");
  const int64_t big[2] = {INT64_C(1) << 31, INT64_C(1) << 31}; /* 2^62 elements: no 8-byte buffer */
  TU_EXPECT_ERR(ORTHOD_E_OVERFLOW, orthod_shape_init(&s, 2, big));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_shape_init(NULL, 2, big));
}

static void test_dtype_names(void) {
  orthod_dtype_t d;
  TU_OK(orthod_dtype_from_name("BF16", &d));
  CU_ASSERT_EQUAL(d, ORTHOD_DTYPE_BF16);
  TU_OK(orthod_dtype_from_name("float16", &d));
  CU_ASSERT_EQUAL(d, ORTHOD_DTYPE_F16);
  TU_OK(orthod_dtype_from_name("fp32", &d));
  CU_ASSERT_EQUAL(d, ORTHOD_DTYPE_F32);
  TU_EXPECT_ERR(ORTHOD_E_UNKNOWN_NAME, orthod_dtype_from_name("int8", &d));
  TU_EXPECT_DETAIL("int8");
  CU_ASSERT_STRING_EQUAL(orthod_dtype_name(ORTHOD_DTYPE_BF16), "bf16");
  CU_ASSERT_EQUAL(orthod_dtype_size(ORTHOD_DTYPE_F32), 4);
  CU_ASSERT_EQUAL(orthod_dtype_size(ORTHOD_DTYPE_F16), 2);
  CU_ASSERT_EQUAL(orthod_dtype_size((orthod_dtype_t)7), 0);
}

/* ---- bf16 ---------------------------------------------------------------------------------- */

/* Reference: the two bf16 neighbours of x by truncation, nearest in exact double arithmetic,
 * ties to the even mantissa; overflow past the rounding boundary gives infinity. */
static uint16_t ref_bf16(float x) {
  uint32_t u = bits(x);
  if (isnan(x)) return 0; /* handled by the caller */
  uint16_t lo = (uint16_t)(u >> 16);
  uint16_t hi = (uint16_t)(lo + 1); /* next magnitude away from zero (may become inf) */
  double dx = fabs((double)x);
  double dlo = fabs((double)from_bits((uint32_t)lo << 16));
  double dhi = (lo & 0x7fff) == 0x7f7f ? ldexp(1.0, 128) /* past FLT_MAX: the inf boundary */
                                        : fabs((double)from_bits((uint32_t)hi << 16));
  if (dx - dlo < dhi - dx) return lo;
  if (dx - dlo > dhi - dx) return hi;
  return (lo & 1) ? hi : lo;
}

static void test_bf16_random_against_reference(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 1);
  for (int i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)tu_rng_u64(&r);
    if (i < 65536) u = ((uint32_t)i << 16) | 0x8000u; /* every exact tie */
    float x = from_bits(u);
    if (isnan(x) || isinf(x)) continue;
    uint16_t got = orthod_f32_to_bf16(x), want = ref_bf16(x);
    if (got != want) {
      fprintf(stderr, "\n  bf16(%a): got 0x%04x want 0x%04x\n", (double)x, got, want);
      CU_FAIL("bf16 rounding differs from the reference");
      return;
    }
  }
}

static void test_bf16_specials(void) {
  CU_ASSERT_TRUE(isnan(orthod_round_bf16(NAN)));
  CU_ASSERT_TRUE(isnan(orthod_bf16_to_f32(orthod_f32_to_bf16(from_bits(0x7f800001u))))); /* sNaN low bits */
  CU_ASSERT_EQUAL(orthod_f32_to_bf16(INFINITY), 0x7f80);
  CU_ASSERT_EQUAL(orthod_f32_to_bf16(-INFINITY), 0xff80);
  CU_ASSERT_EQUAL(orthod_f32_to_bf16(FLT_MAX), 0x7f80); /* rounds past the largest bf16 */
  CU_ASSERT_EQUAL(orthod_f32_to_bf16(-0.0f), 0x8000);
  CU_ASSERT_EQUAL(orthod_round_bf16(1.0f + 0x1p-8f), 1.0f);          /* tie → even */
  CU_ASSERT_EQUAL(orthod_round_bf16(1.0f + 3 * 0x1p-8f), 1.0f + 0x1p-6f); /* tie → even (up) */
  CU_ASSERT_EQUAL(orthod_bf16_to_f32(0x3f80), 1.0f);
}

/* ---- fp16 ---------------------------------------------------------------------------------- */

static double half_value(uint16_t h) { return (double)orthod_f16_to_f32(h); }

static void test_f16_exhaustive_roundtrip(void) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = orthod_f16_to_f32((uint16_t)h);
    uint16_t back = orthod_f32_to_f16(f);
    bool nan = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff) != 0;
    if (nan) {
      CU_ASSERT_TRUE(isnan(f));
      CU_ASSERT_EQUAL(back & 0x7e00, 0x7e00); /* quiet NaN */
    } else if (back != h) {
      fprintf(stderr, "\n  fp16 0x%04x -> %a -> 0x%04x\n", h, (double)f, back);
      CU_FAIL("fp16 round trip");
      return;
    }
  }
  /* independent decoding of a few values */
  CU_ASSERT_EQUAL(half_value(0x3c00), 1.0);
  CU_ASSERT_EQUAL(half_value(0x0001), ldexp(1.0, -24));
  CU_ASSERT_EQUAL(half_value(0x7bff), 65504.0);
  CU_ASSERT_EQUAL(half_value(0xc000), -2.0);
}

/* Reference rounding: binary search over the 31744 finite non-negative halves (monotonic). */
static uint16_t ref_f16(float x) {
  double ax = fabs((double)x);
  uint16_t sign = signbit(x) ? 0x8000 : 0;
  if (ax >= 65520.0) return sign | 0x7c00;
  unsigned lo = 0, hi = 0x7bff;
  while (lo < hi) { /* largest h with value(h) <= ax */
    unsigned mid = (lo + hi + 1) / 2;
    if (half_value((uint16_t)mid) <= ax) lo = mid;
    else hi = mid - 1;
  }
  if (half_value((uint16_t)lo) == ax || lo == 0x7bff) return (uint16_t)(sign | lo);
  double d0 = ax - half_value((uint16_t)lo), d1 = half_value((uint16_t)(lo + 1)) - ax;
  unsigned pick = d0 < d1 ? lo : d0 > d1 ? lo + 1 : ((lo & 1) ? lo + 1 : lo);
  return (uint16_t)(sign | pick);
}

static void test_f16_random_against_reference(void) {
  tu_rng_t r;
  tu_rng_seed(&r, 2);
  for (int i = 0; i < 300000; i++) {
    /* exponents around the fp16 range: subnormals, normals, overflow */
    float x = (float)(ldexp(tu_rng_uniform(&r) + 0.5, (int)(tu_rng_u64(&r) % 50) - 30) *
                      ((tu_rng_u64(&r) & 1) ? -1 : 1));
    if (i % 7 == 0) x = (float)ldexp((double)(tu_rng_u64(&r) % 4096) + 0.5, -25); /* ties */
    uint16_t got = orthod_f32_to_f16(x), want = ref_f16(x);
    if (got != want) {
      fprintf(stderr, "\n  fp16(%a): got 0x%04x want 0x%04x\n", (double)x, got, want);
      CU_FAIL("fp16 rounding differs from the reference");
      return;
    }
  }
}

static void test_f16_specials(void) {
  CU_ASSERT_EQUAL(orthod_f32_to_f16(65520.0f), 0x7c00);     /* halfway to 2^16 → inf (even) */
  CU_ASSERT_EQUAL(orthod_f32_to_f16(65519.99f), 0x7bff);
  CU_ASSERT_EQUAL(orthod_f32_to_f16(-INFINITY), 0xfc00);
  CU_ASSERT_EQUAL(orthod_f32_to_f16(0x1p-25f), 0x0000);     /* tie between 0 and 2^-24 → 0 */
  CU_ASSERT_EQUAL(orthod_f32_to_f16(0x1.8p-24f), 0x0002);   /* tie 1.5 ulp → 2 */
  CU_ASSERT_EQUAL(orthod_f32_to_f16(-0.0f), 0x8000);
  CU_ASSERT_TRUE(isnan(orthod_f16_to_f32(orthod_f32_to_f16(NAN))));
}

static void test_convert_all_pairs(void) {
  const float src[6] = {1.0f, -2.5f, 0.333333f, 65504.0f, 1e-6f, -0.0f};
  uint16_t half[6], brain[6], cross[6];
  float back[6];
  TU_OK(orthod_convert(half, ORTHOD_DTYPE_F16, src, ORTHOD_DTYPE_F32, 6));
  TU_OK(orthod_convert(brain, ORTHOD_DTYPE_BF16, src, ORTHOD_DTYPE_F32, 6));
  for (int i = 0; i < 6; i++) {
    CU_ASSERT_EQUAL(half[i], orthod_f32_to_f16(src[i]));
    CU_ASSERT_EQUAL(brain[i], orthod_f32_to_bf16(src[i]));
  }
  TU_OK(orthod_convert(back, ORTHOD_DTYPE_F32, half, ORTHOD_DTYPE_F16, 6));
  for (int i = 0; i < 6; i++) CU_ASSERT_EQUAL(back[i], orthod_f16_to_f32(half[i]));
  TU_OK(orthod_convert(cross, ORTHOD_DTYPE_F16, brain, ORTHOD_DTYPE_BF16, 6));
  for (int i = 0; i < 6; i++)
    CU_ASSERT_EQUAL(cross[i], orthod_f32_to_f16(orthod_bf16_to_f32(brain[i])));
  float same[6];
  TU_OK(orthod_convert(same, ORTHOD_DTYPE_F32, src, ORTHOD_DTYPE_F32, 6));
  CU_ASSERT_EQUAL(memcmp(same, src, sizeof same), 0);
  TU_EXPECT_ERR(ORTHOD_E_DTYPE, orthod_convert(same, (orthod_dtype_t)9, src, ORTHOD_DTYPE_F32, 6));
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_convert(NULL, ORTHOD_DTYPE_F32, src, ORTHOD_DTYPE_F32, 6));
}

int main(void) {
  static const tu_test_t tests[] = {
      {"shape_valid", test_shape_valid},
      {"shape_invalid", test_shape_invalid},
      {"dtype_names", test_dtype_names},
      {"bf16_random_against_reference", test_bf16_random_against_reference},
      {"bf16_specials", test_bf16_specials},
      {"f16_exhaustive_roundtrip", test_f16_exhaustive_roundtrip},
      {"f16_random_against_reference", test_f16_random_against_reference},
      {"f16_specials", test_f16_specials},
      {"convert_all_pairs", test_convert_all_pairs},
      {NULL, NULL},
  };
  return tu_run_suite("tensor", tests);
}
