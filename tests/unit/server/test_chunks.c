/* test_chunks.c — tensor assembly from chunks: coverage, gaps, overlaps, exact retries,
 * conflicting retries, out-of-range chunks and dtype conversion on arrival. */
#include <string.h>

#include "chunks.h"
#include "testutil.h"

static void test_in_order_and_out_of_order(void) {
  orthod_chunks_t *c = orthod_chunks_create(10);
  TU_CHECK(c != NULL);
  float a[4] = {0, 1, 2, 3}, b[3] = {4, 5, 6}, d[3] = {7, 8, 9};
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 7, d, ORTHOD_DTYPE_F32, 3, NULL, NULL), ORTHOD_CHUNK_ADDED);
  CU_ASSERT_EQUAL(orthod_chunks_first_gap(c), 0);
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 0, a, ORTHOD_DTYPE_F32, 4, NULL, NULL), ORTHOD_CHUNK_ADDED);
  CU_ASSERT_EQUAL(orthod_chunks_covered(c), 7);
  CU_ASSERT_EQUAL(orthod_chunks_first_gap(c), 4);
  CU_ASSERT_FALSE(orthod_chunks_complete(c));
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 4, b, ORTHOD_DTYPE_F32, 3, NULL, NULL), ORTHOD_CHUNK_ADDED);
  CU_ASSERT_TRUE(orthod_chunks_complete(c));
  CU_ASSERT_EQUAL(orthod_chunks_first_gap(c), 10);
  const float *x = orthod_chunks_data(c);
  for (int i = 0; i < 10; i++) CU_ASSERT_EQUAL(x[i], (float)i);
  float *taken = orthod_chunks_take(c);
  TU_CHECK(taken != NULL);
  CU_ASSERT_EQUAL(taken[9], 9.0f);
  CU_ASSERT_PTR_NULL(orthod_chunks_data(c));
  /* the ranges survive the take: late retries are recognised by range */
  CU_ASSERT_TRUE(orthod_chunks_has_range(c, 4, 3));
  CU_ASSERT_FALSE(orthod_chunks_has_range(c, 4, 2));
  CU_ASSERT_FALSE(orthod_chunks_has_range(c, 5, 2));
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 4, b, ORTHOD_DTYPE_F32, 3, NULL, NULL),
                  ORTHOD_CHUNK_DUPLICATE);
  CU_ASSERT_TRUE(orthod_chunks_complete(c));
  free(taken);
  orthod_chunks_destroy(c);
}

static void test_overlap_duplicate_conflict(void) {
  orthod_chunks_t *c = orthod_chunks_create(100);
  float v[20];
  for (int i = 0; i < 20; i++) v[i] = (float)i * 0.5f;
  uint64_t lo = 0, hi = 0;
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 10, v, ORTHOD_DTYPE_F32, 20, &lo, &hi), ORTHOD_CHUNK_ADDED);
  /* the same chunk again: ignored */
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 10, v, ORTHOD_DTYPE_F32, 20, &lo, &hi),
                  ORTHOD_CHUNK_DUPLICATE);
  CU_ASSERT_EQUAL(orthod_chunks_covered(c), 20);
  /* same range, other data */
  float w[20];
  memcpy(w, v, sizeof w);
  w[7] = 100.0f;
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 10, w, ORTHOD_DTYPE_F32, 20, &lo, &hi),
                  ORTHOD_CHUNK_CONFLICT);
  /* overlaps at either end and inside */
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 5, v, ORTHOD_DTYPE_F32, 6, &lo, &hi), ORTHOD_CHUNK_OVERLAP);
  CU_ASSERT_EQUAL(lo, 10);
  CU_ASSERT_EQUAL(hi, 30);
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 29, v, ORTHOD_DTYPE_F32, 2, &lo, &hi),
                  ORTHOD_CHUNK_OVERLAP);
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 12, v, ORTHOD_DTYPE_F32, 2, &lo, &hi),
                  ORTHOD_CHUNK_OVERLAP);
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 0, v, ORTHOD_DTYPE_F32, 20, &lo, &hi),
                  ORTHOD_CHUNK_OVERLAP);
  /* adjacent is fine */
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 30, v, ORTHOD_DTYPE_F32, 5, &lo, &hi), ORTHOD_CHUNK_ADDED);
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 0, v, ORTHOD_DTYPE_F32, 10, &lo, &hi), ORTHOD_CHUNK_ADDED);
  CU_ASSERT_EQUAL(orthod_chunks_covered(c), 35);
  CU_ASSERT_EQUAL(orthod_chunks_first_gap(c), 35);
  /* the data of refused chunks was not stored */
  CU_ASSERT_EQUAL(orthod_chunks_data(c)[17], v[7]);
  orthod_chunks_destroy(c);
}

static void test_out_of_range(void) {
  orthod_chunks_t *c = orthod_chunks_create(8);
  float v[9] = {0};
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 0, v, ORTHOD_DTYPE_F32, 9, NULL, NULL),
                  ORTHOD_CHUNK_OUT_OF_RANGE);
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 8, v, ORTHOD_DTYPE_F32, 1, NULL, NULL),
                  ORTHOD_CHUNK_OUT_OF_RANGE);
  CU_ASSERT_EQUAL(orthod_chunks_add(c, UINT64_MAX, v, ORTHOD_DTYPE_F32, 2, NULL, NULL),
                  ORTHOD_CHUNK_OUT_OF_RANGE);
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 3, v, ORTHOD_DTYPE_F32, 0, NULL, NULL),
                  ORTHOD_CHUNK_OUT_OF_RANGE);
  CU_ASSERT_EQUAL(orthod_chunks_covered(c), 0);
  CU_ASSERT_STRING_EQUAL(orthod_chunk_result_name(ORTHOD_CHUNK_OUT_OF_RANGE), "OUT_OF_RANGE");
  orthod_chunks_destroy(c);
}

static void test_dtype_conversion(void) {
  orthod_chunks_t *c = orthod_chunks_create(4);
  uint16_t h[2] = {orthod_f32_to_bf16(1.5f), orthod_f32_to_bf16(-2.0f)};
  uint16_t f[2] = {orthod_f32_to_f16(0.25f), orthod_f32_to_f16(3.0f)};
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 0, h, ORTHOD_DTYPE_BF16, 2, NULL, NULL), ORTHOD_CHUNK_ADDED);
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 2, f, ORTHOD_DTYPE_F16, 2, NULL, NULL), ORTHOD_CHUNK_ADDED);
  /* a retry in another dtype with the same values is still a duplicate */
  float same[2] = {0.25f, 3.0f};
  CU_ASSERT_EQUAL(orthod_chunks_add(c, 2, same, ORTHOD_DTYPE_F32, 2, NULL, NULL),
                  ORTHOD_CHUNK_DUPLICATE);
  const float *x = orthod_chunks_data(c);
  CU_ASSERT_EQUAL(x[0], 1.5f);
  CU_ASSERT_EQUAL(x[1], -2.0f);
  CU_ASSERT_EQUAL(x[2], 0.25f);
  CU_ASSERT_EQUAL(x[3], 3.0f);
  orthod_chunks_destroy(c);
}

static void test_many_chunks_reverse(void) {
  const uint64_t n = 1000;
  orthod_chunks_t *c = orthod_chunks_create(n);
  for (uint64_t i = n; i-- > 0;) {
    float v = (float)i;
    CU_ASSERT_EQUAL(orthod_chunks_add(c, i, &v, ORTHOD_DTYPE_F32, 1, NULL, NULL),
                    ORTHOD_CHUNK_ADDED);
    CU_ASSERT_EQUAL(orthod_chunks_first_gap(c), i == 0 ? n : 0);
  }
  CU_ASSERT_TRUE(orthod_chunks_complete(c));
  orthod_chunks_destroy(c);
}

int main(void) {
  static const tu_test_t tests[] = {
      {"in order and out of order", test_in_order_and_out_of_order},
      {"overlap, duplicate, conflict", test_overlap_duplicate_conflict},
      {"out of range", test_out_of_range},
      {"dtype conversion", test_dtype_conversion},
      {"many chunks in reverse", test_many_chunks_reverse},
      {NULL, NULL}};
  return tu_run_suite("chunks", tests);
}
