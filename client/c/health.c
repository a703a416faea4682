/* health.c — grpc.health.v1.Health/Watch: one server-streaming call per watch, on its own pluck
 * completion queue (like a step stream), so a watch can wait with a timeout, run on another
 * thread than its client, and never sees the events of other calls. From open on, three batches
 * are outstanding: the request (initial metadata, the message, the half-close), the status, and
 * one RECV_MESSAGE that is armed again after every status received (stream.c). */
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"
#include "grpc/health/v1/health.pb-c.h"

#define WATCH_METHOD "/grpc.health.v1.Health/Watch"

struct orthod_health_watch {
  orthod__cl_stream_t st;
  grpc_byte_buffer *send_bb; /* the HealthCheckRequest, until the watch is freed */
  bool send_pending;         /* the request batch is outstanding */
  bool over;                 /* ended: every call returns `result` */
  int result;
  char err[ORTHOD__ERR_LEN];
};

static const char *const health_names[] = {"UNKNOWN", "SERVING", "NOT_SERVING",
                                           "SERVICE_UNKNOWN"};

const char *orthod_health_status_name(int status) {
  if (status < 0 || status >= (int)(sizeof health_names / sizeof health_names[0]))
    return "UNKNOWN";
  return health_names[status];
}

const char *orthod_health_watch_last_error(const orthod_health_watch_t *w) {
  return w == NULL ? "INVALID_ARGUMENT: no watch" : w->err;
}

/* Wait for every batch still outstanding (after a cancel, or once the stream is over, each
 * completes promptly), discarding messages. */
static void drain(orthod_health_watch_t *w) {
  orthod__cl_stream_drain(&w->st);
  if (w->send_pending) {
    orthod__cl_stream_pluck(&w->st, ORTHOD__TAG_SEND, gpr_inf_future(GPR_CLOCK_REALTIME));
    w->send_pending = false;
  }
}

/* End the watch. local_code != 0: a failure found here (its message already in w->err): cancel
 * the call and keep that status. Otherwise the daemon (or the transport) ended it: read its
 * status. Returns the watch's result. */
static int end_watch(orthod_health_watch_t *w, int local_code) {
  if (w->over) return w->result;
  if (local_code != 0) grpc_call_cancel(w->st.call.call, NULL);
  drain(w);
  if (local_code != 0) {
    w->result = local_code;
  } else {
    w->result = orthod__cl_status(w->err, w->st.status, w->st.details);
    if (w->result == 0)
      w->result = orthod__cl_fail(w->err, GRPC_STATUS_UNAVAILABLE,
                                  "the daemon ended the Watch stream (with OK)");
  }
  w->over = true;
  return w->result;
}

int orthod_health_watch_open(orthod_client_t *c, const char *service, int64_t deadline_ms,
                             orthod_health_watch_t **out) {
  if (out != NULL) *out = NULL;
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (out == NULL || deadline_ms < 0)
    return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT,
                           "health_watch_open: needs out and a deadline_ms >= 0");
  orthod_health_watch_t *w = calloc(1, sizeof *w);
  if (w == NULL) return orthod__cl_fail(c->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  orthod__cl_stream_init(&w->st);
  int rc = orthod__cl_stream_start(c, WATCH_METHOD, deadline_ms, &w->st, c->err);
  if (rc != 0) goto fail;

  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)(service ? service : "");
  w->send_bb = orthod__cl_pack(&req.base);
  if (w->send_bb == NULL) {
    rc = orthod__cl_fail(c->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto fail;
  }
  /* The request is not waited for: open never blocks on the network. */
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = w->st.call.n_md;
  ops[0].data.send_initial_metadata.metadata = w->st.call.md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = w->send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  w->send_pending =
      grpc_call_start_batch(w->st.call.call, ops, 3, ORTHOD__TAG_SEND, NULL) == GRPC_CALL_OK;
  if (!w->send_pending || !orthod__cl_stream_arm_recv(&w->st, true)) {
    end_watch(w, orthod__cl_fail(w->err, GRPC_STATUS_INTERNAL, "Health/Watch: the call did not "
                                                               "start"));
    rc = w->result;
    memcpy(c->err, w->err, sizeof c->err);
    goto fail;
  }
  c->err[0] = '\0';
  *out = w;
  return 0;

fail:
  orthod_health_watch_close(w);
  return rc;
}

int orthod_health_watch_next(orthod_health_watch_t *w, int64_t timeout_ms, int *status) {
  if (status != NULL) *status = ORTHOD_HEALTH_UNKNOWN;
  if (w == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (w->over) return w->result;
  if (status == NULL)
    return orthod__cl_fail(w->err, GRPC_STATUS_INVALID_ARGUMENT, "health_watch_next: no status");
  if (!w->st.recv_pending) return end_watch(w, 0);
  gpr_timespec deadline = timeout_ms < 0
                              ? gpr_inf_future(GPR_CLOCK_MONOTONIC)
                              : gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                             gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
  grpc_event ev = orthod__cl_stream_pluck(&w->st, ORTHOD__TAG_RECV, deadline);
  if (ev.type == GRPC_QUEUE_TIMEOUT) {
    w->err[0] = '\0';
    return ORTHOD_HEALTH_WATCH_TIMEOUT;
  }
  if (ev.type != GRPC_OP_COMPLETE)
    return end_watch(w, orthod__cl_fail(w->err, GRPC_STATUS_INTERNAL,
                                        "Health/Watch: queue shut down"));
  w->st.recv_pending = false;
  if (w->st.recv_bb == NULL) return end_watch(w, 0); /* the stream is over: its status says why */
  Grpc__Health__V1__HealthCheckResponse *resp =
      (Grpc__Health__V1__HealthCheckResponse *)orthod__cl_unpack(
          &grpc__health__v1__health_check_response__descriptor, w->st.recv_bb);
  grpc_byte_buffer_destroy(w->st.recv_bb);
  w->st.recv_bb = NULL;
  if (resp == NULL)
    return end_watch(w, orthod__cl_fail(w->err, GRPC_STATUS_DATA_LOSS,
                                        "Health/Watch: malformed response"));
  *status = (int)resp->status;
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  /* If the next receive cannot be armed, the next call reads the stream's status. */
  orthod__cl_stream_arm_recv(&w->st, false);
  w->err[0] = '\0';
  return 0;
}

void orthod_health_watch_close(orthod_health_watch_t *w) {
  if (w == NULL) return;
  if (w->st.call.call != NULL) {
    if (!w->over) grpc_call_cancel(w->st.call.call, NULL);
    drain(w);
  }
  orthod__cl_stream_release(&w->st);
  if (w->send_bb != NULL) grpc_byte_buffer_destroy(w->send_bb);
  free(w);
}
