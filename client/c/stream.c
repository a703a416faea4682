/* stream.c — the receiving side shared by the streaming calls (step.c, health.c): the status
 * batch, re-armed message receives, and the drain that must precede ending the call (every
 * started batch completes on the call's queue before the queue is shut down). */
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <string.h>

#include "client_impl.h"

void orthod__cl_stream_init(orthod__cl_stream_t *st) {
  memset(st, 0, sizeof *st);
  grpc_metadata_array_init(&st->init_md);
  grpc_metadata_array_init(&st->trail_md);
  st->details = grpc_empty_slice();
}

int orthod__cl_stream_start(orthod_client_t *c, const char *method, int64_t deadline_ms,
                            orthod__cl_stream_t *st, char *err) {
  int rc = orthod__cl_call_start(c, method, deadline_ms, &st->call, err);
  if (rc != 0) return rc;
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  op.data.recv_status_on_client.trailing_metadata = &st->trail_md;
  op.data.recv_status_on_client.status = &st->status;
  op.data.recv_status_on_client.status_details = &st->details;
  st->status_pending =
      grpc_call_start_batch(st->call.call, &op, 1, ORTHOD__TAG_STATUS, NULL) == GRPC_CALL_OK;
  if (!st->status_pending)
    return orthod__cl_fail(err, GRPC_STATUS_INTERNAL, "%s: the call did not start", method);
  return 0;
}

bool orthod__cl_stream_arm_recv(orthod__cl_stream_t *st, bool with_initial_md) {
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  size_t k = 0;
  if (with_initial_md) {
    ops[k].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[k++].data.recv_initial_metadata.recv_initial_metadata = &st->init_md;
  }
  ops[k].op = GRPC_OP_RECV_MESSAGE;
  ops[k++].data.recv_message.recv_message = &st->recv_bb;
  st->recv_bb = NULL;
  st->recv_pending =
      grpc_call_start_batch(st->call.call, ops, k, ORTHOD__TAG_RECV, NULL) == GRPC_CALL_OK;
  return st->recv_pending;
}

grpc_event orthod__cl_stream_pluck(orthod__cl_stream_t *st, void *tag, gpr_timespec deadline) {
  return grpc_completion_queue_pluck(st->call.cq, tag, deadline, NULL);
}

void orthod__cl_stream_drain(orthod__cl_stream_t *st) {
  gpr_timespec forever = gpr_inf_future(GPR_CLOCK_REALTIME);
  while (st->recv_pending) {
    orthod__cl_stream_pluck(st, ORTHOD__TAG_RECV, forever);
    st->recv_pending = false;
    if (st->recv_bb == NULL) break; /* the end of the stream */
    grpc_byte_buffer_destroy(st->recv_bb);
    st->recv_bb = NULL;
    orthod__cl_stream_arm_recv(st, false);
  }
  if (st->status_pending) {
    orthod__cl_stream_pluck(st, ORTHOD__TAG_STATUS, forever);
    st->status_pending = false;
  }
}

void orthod__cl_stream_release(orthod__cl_stream_t *st) {
  if (st->call.call != NULL) orthod__cl_stream_drain(st);
  orthod__cl_call_end(&st->call);
  if (st->recv_bb != NULL) grpc_byte_buffer_destroy(st->recv_bb);
  st->recv_bb = NULL;
  grpc_slice_unref(st->details);
  st->details = grpc_empty_slice();
  grpc_metadata_array_destroy(&st->init_md);
  grpc_metadata_array_destroy(&st->trail_md);
}
