/* test_error.c — the error list, its names and messages, the thread-local detail, logging. */
#include <string.h>

#include "orthod/error.h"
#include "orthod/log.h"
#include "orthod_internal.h"
#include "testutil.h"

static void test_every_code_has_name_and_message(void) {
  CU_ASSERT_EQUAL(ORTHOD_OK, 0);
  for (int e = 0; e < ORTHOD_ERR_COUNT; e++) {
    const char *name = orthod_err_name((orthod_err_t)e), *msg = orthod_strerror((orthod_err_t)e);
    CU_ASSERT_PTR_NOT_NULL(name);
    CU_ASSERT_PTR_NOT_NULL(msg);
    CU_ASSERT_NOT_EQUAL(strcmp(name, "E_UNKNOWN_CODE"), 0);
    for (int f = 0; f < e; f++) CU_ASSERT_NOT_EQUAL(strcmp(name, orthod_err_name((orthod_err_t)f)), 0);
  }
  CU_ASSERT_STRING_EQUAL(orthod_err_name(ORTHOD_E_NOMEM), "E_NOMEM");
  CU_ASSERT_STRING_EQUAL(orthod_strerror(ORTHOD_E_NOTFOUND), "not found");
  CU_ASSERT_STRING_EQUAL(orthod_err_name((orthod_err_t)999), "E_UNKNOWN_CODE");
}

static void test_detail(void) {
  orthod_error_clear();
  CU_ASSERT_STRING_EQUAL(orthod_error_detail(), "");
  CU_ASSERT_EQUAL(orthod__fail(ORTHOD_E_SHAPE, "rows %d", 7), ORTHOD_E_SHAPE);
  CU_ASSERT_STRING_EQUAL(orthod_error_detail(), "rows 7");
  orthod_error_clear();
  CU_ASSERT_STRING_EQUAL(orthod_error_detail(), "");
}

static int seen_level = -1;
static char seen_msg[128];

static void sink(orthod_log_level_t level, const char *msg, void *user) {
  (void)user;
  seen_level = (int)level;
  snprintf(seen_msg, sizeof seen_msg, "%s", msg);
}

static void test_log_sink_and_level(void) {
  orthod_log_set_sink(sink, NULL, ORTHOD_LOG_INFO);
  ORTHOD_LOG(ORTHOD_LOG_INFO, "hello %d", 5);
  CU_ASSERT_EQUAL(seen_level, ORTHOD_LOG_INFO);
  CU_ASSERT_STRING_EQUAL(seen_msg, "hello 5");
  seen_level = -1;
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "not formatted");
  CU_ASSERT_EQUAL(seen_level, -1);
  orthod_log_set_sink(NULL, NULL, ORTHOD_LOG_WARN);
  CU_ASSERT_STRING_EQUAL(orthod_log_level_name(ORTHOD_LOG_ERROR), "error");
}

int main(void) {
  static const tu_test_t tests[] = {
      {"every_code_has_name_and_message", test_every_code_has_name_and_message},
      {"detail", test_detail},
      {"log_sink_and_level", test_log_sink_and_level},
      {NULL, NULL},
  };
  return tu_run_suite("error", tests);
}
