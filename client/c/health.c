/* health.c — grpc.health.v1.Health/Watch: one server-streaming call per watch, on its own pluck
 * completion queue (like a step stream), so a watch can wait with a timeout, run on another
 * thread than its client, and never sees the events of other calls. From open on, three batches
 * are outstanding: the request (initial metadata, the message, the half-close), the status, and
 * one RECV_MESSAGE that is armed again after every status received. */
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"
#include "grpc/health/v1/health.pb-c.h"

#define WATCH_METHOD "/grpc.health.v1.Health/Watch"

/* Tags of the three kinds of batch; the watch has its own queue, so constants are unique. */
#define TAG_SEND ((void *)1)
#define TAG_RECV ((void *)2)
#define TAG_STATUS ((void *)3)

struct orthod_health_watch {
  orthod__cl_call_t call;
  grpc_metadata_array init_md, trail_md;
  grpc_byte_buffer *send_bb; /* the HealthCheckRequest, until the watch is freed */
  grpc_byte_buffer *recv_bb; /* target of the outstanding RECV_MESSAGE */
  grpc_status_code status;   /* filled by RECV_STATUS_ON_CLIENT */
  grpc_slice details;
  bool send_pending;         /* the request batch is outstanding */
  bool recv_pending;         /* a RECV_MESSAGE batch is outstanding */
  bool status_pending;       /* the RECV_STATUS_ON_CLIENT batch is outstanding */
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

static grpc_event pluck(orthod_health_watch_t *w, void *tag, gpr_timespec deadline) {
  return grpc_completion_queue_pluck(w->call.cq, tag, deadline, NULL);
}

static bool arm_recv(orthod_health_watch_t *w, bool with_initial_md) {
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  size_t k = 0;
  if (with_initial_md) {
    ops[k].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[k++].data.recv_initial_metadata.recv_initial_metadata = &w->init_md;
  }
  ops[k].op = GRPC_OP_RECV_MESSAGE;
  ops[k++].data.recv_message.recv_message = &w->recv_bb;
  w->recv_bb = NULL;
  w->recv_pending = grpc_call_start_batch(w->call.call, ops, k, TAG_RECV, NULL) == GRPC_CALL_OK;
  return w->recv_pending;
}

/* Wait for the batches still outstanding (after a cancel, or once the stream is over, each
 * completes promptly), discarding messages. */
static void drain(orthod_health_watch_t *w) {
  gpr_timespec forever = gpr_inf_future(GPR_CLOCK_REALTIME);
  while (w->recv_pending) {
    pluck(w, TAG_RECV, forever);
    w->recv_pending = false;
    if (w->recv_bb == NULL) break;
    grpc_byte_buffer_destroy(w->recv_bb);
    w->recv_bb = NULL;
    arm_recv(w, false);
  }
  if (w->status_pending) {
    pluck(w, TAG_STATUS, forever);
    w->status_pending = false;
  }
  if (w->send_pending) {
    pluck(w, TAG_SEND, forever);
    w->send_pending = false;
  }
}

/* End the watch. local_code != 0: a failure found here (its message already in w->err): cancel
 * the call and keep that status. Otherwise the daemon (or the transport) ended it: read its
 * status. Returns the watch's result. */
static int end_watch(orthod_health_watch_t *w, int local_code) {
  if (w->over) return w->result;
  if (local_code != 0) grpc_call_cancel(w->call.call, NULL);
  drain(w);
  if (local_code != 0) {
    w->result = local_code;
  } else {
    w->result = orthod__cl_status(w->err, w->status, w->details);
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
  grpc_metadata_array_init(&w->init_md);
  grpc_metadata_array_init(&w->trail_md);
  w->details = grpc_empty_slice();
  int rc = orthod__cl_call_start(c, WATCH_METHOD, deadline_ms, &w->call, c->err);
  if (rc != 0) goto fail;

  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)(service ? service : "");
  w->send_bb = orthod__cl_pack(&req.base);
  if (w->send_bb == NULL) {
    rc = orthod__cl_fail(c->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto fail;
  }
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  op.data.recv_status_on_client.trailing_metadata = &w->trail_md;
  op.data.recv_status_on_client.status = &w->status;
  op.data.recv_status_on_client.status_details = &w->details;
  w->status_pending =
      grpc_call_start_batch(w->call.call, &op, 1, TAG_STATUS, NULL) == GRPC_CALL_OK;
  /* The request is not waited for: open never blocks on the network. */
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = w->call.n_md;
  ops[0].data.send_initial_metadata.metadata = w->call.md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = w->send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  w->send_pending = w->status_pending &&
                    grpc_call_start_batch(w->call.call, ops, 3, TAG_SEND, NULL) == GRPC_CALL_OK;
  if (!w->send_pending || !arm_recv(w, true)) {
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
  if (!w->recv_pending) return end_watch(w, 0);
  gpr_timespec deadline = timeout_ms < 0
                              ? gpr_inf_future(GPR_CLOCK_MONOTONIC)
                              : gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                             gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
  grpc_event ev = pluck(w, TAG_RECV, deadline);
  if (ev.type == GRPC_QUEUE_TIMEOUT) {
    w->err[0] = '\0';
    return ORTHOD_HEALTH_WATCH_TIMEOUT;
  }
  if (ev.type != GRPC_OP_COMPLETE)
    return end_watch(w, orthod__cl_fail(w->err, GRPC_STATUS_INTERNAL,
                                        "Health/Watch: queue shut down"));
  w->recv_pending = false;
  if (w->recv_bb == NULL) return end_watch(w, 0); /* the stream is over: its status says why */
  Grpc__Health__V1__HealthCheckResponse *resp =
      (Grpc__Health__V1__HealthCheckResponse *)orthod__cl_unpack(
          &grpc__health__v1__health_check_response__descriptor, w->recv_bb);
  grpc_byte_buffer_destroy(w->recv_bb);
  w->recv_bb = NULL;
  if (resp == NULL)
    return end_watch(w, orthod__cl_fail(w->err, GRPC_STATUS_DATA_LOSS,
                                        "Health/Watch: malformed response"));
  *status = (int)resp->status;
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  /* If the next receive cannot be armed, the next call reads the stream's status. */
  arm_recv(w, false);
  w->err[0] = '\0';
  return 0;
}

void orthod_health_watch_close(orthod_health_watch_t *w) {
  if (w == NULL) return;
  if (w->call.call != NULL) {
    if (!w->over) grpc_call_cancel(w->call.call, NULL);
    drain(w);
  }
  orthod__cl_call_end(&w->call);
  if (w->send_bb != NULL) grpc_byte_buffer_destroy(w->send_bb);
  grpc_slice_unref(w->details);
  grpc_metadata_array_destroy(&w->init_md);
  grpc_metadata_array_destroy(&w->trail_md);
  free(w);
}
