/* test_wire.c — protocol validation helpers: dtypes, chunk sizes, names, shapes (limits and
 * overflow) and their messages. */
#include <stdint.h>
#include <string.h>

#include "testutil.h"
#include "wire.h"

static void test_dtypes(void) {
  orthod_dtype_t d;
  char err[256];
  CU_ASSERT_EQUAL(orthod_wire_dtype(ORTHOD__V1__DTYPE__DTYPE_BF16, &d, err, sizeof err), 0);
  CU_ASSERT_EQUAL(d, ORTHOD_DTYPE_BF16);
  CU_ASSERT_EQUAL(orthod_wire_dtype(ORTHOD__V1__DTYPE__DTYPE_UNSPECIFIED, &d, err, sizeof err), -1);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "DTYPE_UNSPECIFIED"));
  CU_ASSERT_EQUAL(orthod_wire_dtype(17, &d, err, sizeof err), -1);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "17"));
  CU_ASSERT_EQUAL(orthod_wire_reply_dtype(ORTHOD__V1__DTYPE__DTYPE_UNSPECIFIED, &d, err, sizeof err),
                  0);
  CU_ASSERT_EQUAL(d, ORTHOD_DTYPE_F32);
  CU_ASSERT_EQUAL(orthod_wire_dtype_to_proto(ORTHOD_DTYPE_F16), ORTHOD__V1__DTYPE__DTYPE_F16);
}

static void test_chunk(void) {
  Orthod__V1__TensorChunk ch = ORTHOD__V1__TENSOR_CHUNK__INIT;
  uint8_t data[7] = {0};
  orthod_dtype_t d;
  uint64_t n = 0;
  char err[256];
  CU_ASSERT_EQUAL(orthod_wire_chunk(NULL, "w", &d, &n, err, sizeof err), -1);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "'w'"));
  ch.dtype = ORTHOD__V1__DTYPE__DTYPE_F32;
  ch.offset = 12;
  ch.data.data = data;
  ch.data.len = 7;
  CU_ASSERT_EQUAL(orthod_wire_chunk(&ch, "w", &d, &n, err, sizeof err), -1);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "7 bytes"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "offset 12"));
  ch.data.len = 0;
  CU_ASSERT_EQUAL(orthod_wire_chunk(&ch, "w", &d, &n, err, sizeof err), -1);
  ch.dtype = ORTHOD__V1__DTYPE__DTYPE_F16;
  ch.data.len = 6;
  CU_ASSERT_EQUAL(orthod_wire_chunk(&ch, "w", &d, &n, err, sizeof err), 0);
  CU_ASSERT_EQUAL(n, 3);
  CU_ASSERT_EQUAL(d, ORTHOD_DTYPE_F16);
  ch.dtype = ORTHOD__V1__DTYPE__DTYPE_UNSPECIFIED;
  CU_ASSERT_EQUAL(orthod_wire_chunk(&ch, "w", &d, &n, err, sizeof err), -1);
}

static void test_names(void) {
  char err[256], long_name[300];
  CU_ASSERT_EQUAL(orthod_wire_check_name("layer.0.weight", err, sizeof err), 0);
  CU_ASSERT_EQUAL(orthod_wire_check_name("", err, sizeof err), -1);
  CU_ASSERT_EQUAL(orthod_wire_check_name("a\nb", err, sizeof err), -1);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "0x0a"));
  memset(long_name, 'x', 255);
  long_name[255] = '\0';
  CU_ASSERT_EQUAL(orthod_wire_check_name(long_name, err, sizeof err), 0);
  long_name[255] = 'x';
  long_name[256] = '\0';
  CU_ASSERT_EQUAL(orthod_wire_check_name(long_name, err, sizeof err), -1);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "256 bytes"));
}

static void test_shapes(void) {
  char err[256];
  orthod_shape_t s;
  const int64_t ok[2] = {4, 6}, zero[2] = {4, 0}, big[2] = {INT64_MAX, 3};
  const int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  CU_ASSERT_EQUAL(orthod_wire_shape(ok, 2, 1000, &s, err, sizeof err), 0);
  CU_ASSERT_EQUAL(orthod_shape_numel(&s), 24);
  CU_ASSERT_EQUAL(orthod_wire_shape(ok, 2, 23, &s, err, sizeof err), -1);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "[4, 6]"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "23"));
  CU_ASSERT_EQUAL(orthod_wire_shape(zero, 2, 1000, &s, err, sizeof err), -1);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "dimension 1 is 0"));
  CU_ASSERT_EQUAL(orthod_wire_shape(big, 2, UINT64_MAX, &s, err, sizeof err), -1);
  CU_ASSERT_EQUAL(orthod_wire_shape(nine, 9, 1000, &s, err, sizeof err), -1);
  CU_ASSERT_PTR_NOT_NULL(strstr(err, "9 dimensions"));
  CU_ASSERT_EQUAL(orthod_wire_shape(ok, 0, 1000, &s, err, sizeof err), -1);
  char buf[64];
  CU_ASSERT_STRING_EQUAL(orthod_wire_dims_str(ok, 2, buf, sizeof buf), "[4, 6]");
}

int main(void) {
  static const tu_test_t tests[] = {{"dtypes", test_dtypes},
                                    {"chunk validation", test_chunk},
                                    {"names", test_names},
                                    {"shapes", test_shapes},
                                    {NULL, NULL}};
  return tu_run_suite("wire", tests);
}
