/* test_metrics.c — the metrics counters and their text: NULL-safe counting, cumulative histogram
 * buckets with inclusive upper bounds, error series per (method, code), gauges read at render
 * time, the build and serving lines. The HTTP endpoint is tested against a real daemon in
 * tests/integration/test_metrics.py. */
#include <CUnit/Basic.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "testutil.h"

static void gauges(void *arg, orthod_metrics_gauges_t *g) {
  (void)arg;
  g->parameters = 7;
  g->device_bytes = 4096;
  g->device_bytes_limit = 1 << 20;
}

#define HAS(text, line)                                                                    \
  do {                                                                                     \
    if (strstr(text, line "\n") == NULL) fprintf(stderr, "\n  missing: %s\n", line);      \
    CU_ASSERT_PTR_NOT_NULL(strstr(text, line "\n"));                                      \
  } while (0)

static void on_closed(void *arg) { ++*(int *)arg; }

static void test_null_is_a_no_op(void) {
  orthod_metrics_rpc(NULL, "Step");
  orthod_metrics_rpc_error(NULL, "Step", GRPC_STATUS_ABORTED);
  orthod_metrics_step(NULL, 1.0, true);
  orthod_metrics_bytes_received(NULL, 1);
  orthod_metrics_bytes_sent(NULL, 1);
  orthod_metrics_checkpoint(NULL, true, 1.0, 1);
  orthod_metrics_set_serving(NULL, true);
  orthod_metrics_set_gauges(NULL, gauges, NULL);
  CU_ASSERT_EQUAL(orthod_metrics_port(NULL), 0);
}

static void test_render(void) {
  orthod_metrics_t *m = NULL;
  CU_ASSERT_EQUAL_FATAL(orthod_metrics_create("cpu (OpenBLAS 0.3.21, 2 threads)", &m), 0);
  orthod_metrics_set_gauges(m, gauges, NULL);
  orthod_metrics_set_serving(m, true);
  orthod_metrics_rpc(m, "Step");
  orthod_metrics_rpc(m, "Step");
  orthod_metrics_rpc(m, "List");
  orthod_metrics_rpc_error(m, "Step", GRPC_STATUS_ABORTED);
  orthod_metrics_rpc_error(m, "Step", GRPC_STATUS_ABORTED);
  orthod_metrics_rpc_error(m, "Step", GRPC_STATUS_INVALID_ARGUMENT);
  orthod_metrics_step(m, 0.001, true);  /* exactly a bound: counts in le="0.001" */
  orthod_metrics_step(m, 0.0011, true); /* the next bucket */
  orthod_metrics_step(m, 30.0, false);  /* above every finite bound */
  orthod_metrics_bytes_received(m, 100);
  orthod_metrics_bytes_sent(m, 40);
  orthod_metrics_bytes_sent(m, 2);
  orthod_metrics_checkpoint(m, true, 0.5, 1234);
  orthod_metrics_checkpoint(m, false, 0, 0);
  char *t = orthod_metrics_render(m);
  CU_ASSERT_PTR_NOT_NULL_FATAL(t);
  HAS(t, "orthod_build_info{version=\"0.1.0\",protocol=\"1\",backend=\"cpu\"} 1");
  HAS(t, "orthod_serving 1");
  HAS(t, "orthod_parameters 7");
  HAS(t, "orthod_device_bytes 4096");
  HAS(t, "orthod_device_bytes_limit 1048576");
  HAS(t, "orthod_rpcs_total{method=\"Step\"} 2");
  HAS(t, "orthod_rpcs_total{method=\"List\"} 1");
  HAS(t, "orthod_rpc_errors_total{method=\"Step\",code=\"ABORTED\"} 2");
  HAS(t, "orthod_rpc_errors_total{method=\"Step\",code=\"INVALID_ARGUMENT\"} 1");
  HAS(t, "orthod_steps_total{result=\"applied\"} 2");
  HAS(t, "orthod_steps_total{result=\"not_applied\"} 1");
  HAS(t, "orthod_step_seconds_bucket{le=\"0.0005\"} 0");
  HAS(t, "orthod_step_seconds_bucket{le=\"0.001\"} 1");
  HAS(t, "orthod_step_seconds_bucket{le=\"0.0025\"} 2");
  HAS(t, "orthod_step_seconds_bucket{le=\"10\"} 2");
  HAS(t, "orthod_step_seconds_bucket{le=\"+Inf\"} 3");
  HAS(t, "orthod_step_seconds_count 3");
  HAS(t, "orthod_step_seconds_sum 30.0021");
  HAS(t, "orthod_tensor_bytes_received_total 100");
  HAS(t, "orthod_tensor_bytes_sent_total 42");
  HAS(t, "orthod_checkpoints_total{result=\"written\"} 1");
  HAS(t, "orthod_checkpoints_total{result=\"failed\"} 1");
  HAS(t, "orthod_checkpoint_last_bytes 1234");
  HAS(t, "# TYPE orthod_step_seconds histogram");
  HAS(t, "# TYPE orthod_rpcs_total counter");
  free(t);
  orthod_metrics_set_serving(m, false);
  t = orthod_metrics_render(m);
  CU_ASSERT_PTR_NOT_NULL_FATAL(t);
  HAS(t, "orthod_serving 0");
  free(t);
  /* without a listener, close completes at once */
  int closed = 0;
  orthod_metrics_close(m, on_closed, &closed);
  CU_ASSERT_EQUAL(closed, 1);
  orthod_metrics_destroy(m);
}

int main(void) {
  static const tu_test_t tests[] = {
      {"NULL is a no-op", test_null_is_a_no_op},
      {"render", test_render},
      {NULL, NULL},
  };
  return tu_run_suite("server_metrics", tests);
}
