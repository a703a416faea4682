/* step.c — the Step stream: one long-lived bidirectional call per training loop. Gradients go
 * out chunk by chunk (one SEND_MESSAGE in flight), while one RECV_MESSAGE is always outstanding
 * so that weights coming back are reassembled as soon as they arrive, even during a push. */
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"

#define TAG_SEND ORTHOD__TAG_SEND
#define TAG_RECV ORTHOD__TAG_RECV

typedef struct pending {
  orthod_step_item_t *item; /* caller-owned until answered */
  orthod__cl_cover_t cover;    /* chunks of the reply so far */
} pending_t;

struct orthod_step_stream {
  orthod_client_t *client; /* borrowed: options and channel */
  orthod__cl_stream_t st;      /* the call and its receiving side (stream.c) */
  bool half_closed;            /* orthod_step_finish sent the client's end */
  bool over;                   /* ended (error, finish): every call returns `result` */
  int result;
  pending_t *pending;          /* FIFO of pushes awaiting their weights */
  size_t n_pending, cap_pending;
  void *scratch;               /* one chunk of converted gradient */
  size_t scratch_len;
  char err[ORTHOD__ERR_LEN];
};

const char *orthod_step_last_error(const orthod_step_stream_t *s) {
  return s == NULL ? "INVALID_ARGUMENT: no stream" : s->err;
}

/* End the stream. local_code != 0: a failure found here (its message already in s->err): cancel
 * the call and keep that status. Otherwise the daemon (or the transport) ended it: read its
 * status. Messages still in flight are discarded. Returns the stream's result. */
static int end_stream(orthod_step_stream_t *s, int local_code) {
  if (s->over) return s->result;
  if (local_code != 0) grpc_call_cancel(s->st.call.call, NULL);
  orthod__cl_stream_drain(&s->st);
  if (local_code != 0) {
    s->result = local_code;
  } else {
    s->result = orthod__cl_status(s->err, s->st.status, s->st.details);
    if (s->result == 0 && s->n_pending > 0)
      s->result = orthod__cl_fail(s->err, GRPC_STATUS_DATA_LOSS,
                               "Step stream ended with %zu push(es) unanswered (first: '%s')",
                               s->n_pending, s->pending[0].item->name);
    else if (s->result == 0 && !s->half_closed)
      s->result = orthod__cl_fail(s->err, GRPC_STATUS_UNAVAILABLE,
                               "the daemon ended the Step stream before the client did");
  }
  for (size_t i = 0; i < s->n_pending; i++) orthod__cl_cover_free(&s->pending[i].cover);
  s->n_pending = 0;
  s->over = true;
  return s->result;
}

/* ---- replies --------------------------------------------------------------------------------- */

/* One StepResponse: find the oldest pending push of that parameter and write the chunk into its
 * buffer. Returns 0 or a local failure code (message in s->err). */
static int on_response(orthod_step_stream_t *s, const Orthod__V1__StepResponse *r) {
  const char *name = r->name ? r->name : "";
  size_t i = 0;
  while (i < s->n_pending && strcmp(s->pending[i].item->name, name) != 0) i++;
  if (i == s->n_pending)
    return orthod__cl_fail(s->err, GRPC_STATUS_DATA_LOSS, "Step: weights for '%s' that no push "
                        "of this stream is waiting for", name);
  pending_t *p = &s->pending[i];
  orthod_step_item_t *it = p->item;
  orthod_client_dtype_t host = orthod__cl_dtype(it->weights_dtype);
  orthod_client_dtype_t wire = it->reply_dtype == ORTHOD_CLIENT_DEFAULT ? host
                                                                        : orthod__cl_dtype(it->reply_dtype);
  size_t wsz = orthod_client_dtype_size(wire), hsz = orthod_client_dtype_size(host);
  const Orthod__V1__TensorChunk *ch = r->chunk;
  if (r->elements != it->elements)
    return orthod__cl_fail(s->err, GRPC_STATUS_INVALID_ARGUMENT,
                        "Step '%s': the parameter has %llu elements, the buffer %zu", name,
                        (unsigned long long)r->elements, it->elements);
  if (ch == NULL || (int)ch->dtype != (int)wire || ch->data.len == 0 || ch->data.len % wsz != 0 ||
      ch->offset > it->elements || ch->data.len / wsz > it->elements - ch->offset)
    return orthod__cl_fail(s->err, GRPC_STATUS_DATA_LOSS,
                        "Step '%s': a reply chunk has the wrong dtype or lies outside the %zu "
                        "elements", name, it->elements);
  size_t cnt = ch->data.len / wsz;
  orthod_client_convert((uint8_t *)it->weights + ch->offset * hsz, host, ch->data.data, wire, cnt);
  int rc = orthod__cl_cover_add(&p->cover, ch->offset, cnt, s->err);
  if (rc != 0) return rc;
  if (r->last) {
    if (!orthod__cl_cover_complete(&p->cover, it->elements))
      return orthod__cl_fail(s->err, GRPC_STATUS_DATA_LOSS,
                          "Step '%s': the reply chunks do not cover its %zu elements exactly once",
                          name, it->elements);
    it->new_step = r->step;
    orthod__cl_cover_free(&p->cover);
    memmove(&s->pending[i], &s->pending[i + 1], (s->n_pending - i - 1) * sizeof *s->pending);
    s->n_pending--;
  }
  return 0;
}

/* Handle a completed RECV_MESSAGE and arm the next one. */
static int on_recv_complete(orthod_step_stream_t *s) {
  s->st.recv_pending = false;
  if (s->st.recv_bb == NULL) return end_stream(s, 0); /* the daemon ended the stream */
  Orthod__V1__StepResponse *r = (Orthod__V1__StepResponse *)orthod__cl_unpack(
      &orthod__v1__step_response__descriptor, s->st.recv_bb);
  grpc_byte_buffer_destroy(s->st.recv_bb);
  s->st.recv_bb = NULL;
  if (r == NULL)
    return end_stream(s, orthod__cl_fail(s->err, GRPC_STATUS_DATA_LOSS, "Step: malformed response"));
  int rc = on_response(s, r);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  if (rc != 0) return end_stream(s, rc);
  if (!orthod__cl_stream_arm_recv(&s->st, false)) return end_stream(s, 0);
  return 0;
}

/* ---- open, push, wait, finish ---------------------------------------------------------------- */

int orthod_step_open(orthod_client_t *c, orthod_step_stream_t **out) {
  if (out != NULL) *out = NULL;
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (out == NULL) return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT, "step_open: no out");
  orthod_step_stream_t *s = calloc(1, sizeof *s);
  if (s == NULL) return orthod__cl_fail(c->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  s->client = c;
  orthod__cl_stream_init(&s->st);
  /* No deadline on the call itself: it lives as long as the training run. Waits are bounded
   * by deadline_ms instead. */
  int rc = orthod__cl_stream_start(c, "/orthod.v1.Optimizer/Step", 0, &s->st, c->err);
  if (rc != 0) goto fail;
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_INITIAL_METADATA;
  op.data.send_initial_metadata.count = s->st.call.n_md;
  op.data.send_initial_metadata.metadata = s->st.call.md;
  if (!orthod__cl_call_batch(&s->st.call, &op, 1, TAG_SEND) ||
      !orthod__cl_stream_arm_recv(&s->st, true)) {
    rc = end_stream(s, 0);
    if (rc == 0) rc = orthod__cl_fail(s->err, GRPC_STATUS_INTERNAL, "Step: the call did not start");
    memcpy(c->err, s->err, sizeof c->err);
    goto fail;
  }
  c->err[0] = '\0';
  *out = s;
  return 0;

fail:
  orthod_step_destroy(s);
  return rc;
}

/* Check every item before anything is sent, so a bad argument never leaves half a push. */
static int check_items(orthod_step_stream_t *s, const orthod_step_item_t *items, size_t n) {
  if (items == NULL || n == 0)
    return orthod__cl_fail(s->err, GRPC_STATUS_INVALID_ARGUMENT, "step: no items");
  for (size_t i = 0; i < n; i++) {
    const orthod_step_item_t *it = &items[i];
    if (it->name == NULL || it->name[0] == '\0' || strlen(it->name) > ORTHOD_CLIENT_NAME_MAX)
      return orthod__cl_fail(s->err, GRPC_STATUS_INVALID_ARGUMENT,
                          "step: item %zu needs a name of 1..%d bytes", i, ORTHOD_CLIENT_NAME_MAX);
    if (it->grad == NULL || it->elements == 0 || orthod__cl_dtype(it->grad_dtype) == 0 ||
        (it->grad_wire != ORTHOD_CLIENT_DEFAULT && orthod__cl_dtype(it->grad_wire) == 0))
      return orthod__cl_fail(s->err, GRPC_STATUS_INVALID_ARGUMENT,
                          "step '%s': grad, elements >= 1 and valid dtypes are required", it->name);
    if (it->weights != NULL &&
        (orthod__cl_dtype(it->weights_dtype) == 0 ||
         (it->reply_dtype != ORTHOD_CLIENT_DEFAULT && orthod__cl_dtype(it->reply_dtype) == 0)))
      return orthod__cl_fail(s->err, GRPC_STATUS_INVALID_ARGUMENT, "step '%s': invalid reply dtype",
                          it->name);
    for (size_t j = 0; j < i; j++)
      if (strcmp(items[j].name, it->name) == 0)
        return orthod__cl_fail(s->err, GRPC_STATUS_INVALID_ARGUMENT,
                            "step: '%s' appears twice in one push", it->name);
  }
  return 0;
}

static int send_request(orthod_step_stream_t *s, const Orthod__V1__StepRequest *req) {
  grpc_byte_buffer *bb = orthod__cl_pack(&req->base);
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = bb;
  bool ok = orthod__cl_call_batch(&s->st.call, &op, 1, TAG_SEND);
  grpc_byte_buffer_destroy(bb);
  if (!ok) return end_stream(s, 0); /* the daemon ended the call: its status says why */
  /* Take in weights that already arrived, without waiting. */
  while (s->st.recv_pending && !s->over) {
    grpc_event ev = orthod__cl_stream_pluck(&s->st, TAG_RECV, gpr_time_0(GPR_CLOCK_REALTIME));
    if (ev.type != GRPC_OP_COMPLETE) break;
    int rc = on_recv_complete(s);
    if (rc != 0 || s->over) return rc ? rc : end_stream(s, 0);
  }
  return 0;
}

int orthod_step_push(orthod_step_stream_t *s, uint32_t worker_rank, orthod_step_item_t *items,
                     size_t n) {
  if (s == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (s->over) return s->result ? s->result
                                : orthod__cl_fail(s->err, GRPC_STATUS_FAILED_PRECONDITION,
                                               "step: the stream is finished");
  int rc = check_items(s, items, n);
  if (rc != 0) return rc;
  if (s->cap_pending < s->n_pending + n) {
    size_t cap = s->n_pending + n + 8;
    pending_t *p = realloc(s->pending, cap * sizeof *p);
    if (p == NULL) return orthod__cl_fail(s->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    s->pending = p;
    s->cap_pending = cap;
  }
  for (size_t i = 0; i < n; i++) {
    orthod_step_item_t *it = &items[i];
    orthod_client_dtype_t host = orthod__cl_dtype(it->grad_dtype);
    orthod_client_dtype_t wire = it->grad_wire == ORTHOD_CLIENT_DEFAULT ? host
                                                                        : orthod__cl_dtype(it->grad_wire);
    size_t per = orthod__cl_chunk_elements(s->client, wire);
    size_t hsz = orthod_client_dtype_size(host), wsz = orthod_client_dtype_size(wire);
    if (host != wire && s->scratch_len < per * wsz) {
      void *p = realloc(s->scratch, per * wsz);
      if (p == NULL)
        return end_stream(s, orthod__cl_fail(s->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory"));
      s->scratch = p;
      s->scratch_len = per * wsz;
    }
    it->new_step = 0;
    orthod_client_dtype_t reply = ORTHOD_CLIENT_F32;
    if (it->weights != NULL) {
      /* Registered before the first chunk goes out: the reply may come during the push. */
      reply = it->reply_dtype == ORTHOD_CLIENT_DEFAULT ? orthod__cl_dtype(it->weights_dtype)
                                                       : orthod__cl_dtype(it->reply_dtype);
      s->pending[s->n_pending++] = (pending_t){.item = it};
    }
    Orthod__V1__LearningRate lr = ORTHOD__V1__LEARNING_RATE__INIT;
    lr.value = it->lr;
    for (size_t off = 0; off < it->elements; off += per) {
      size_t cnt = it->elements - off < per ? it->elements - off : per;
      const uint8_t *src = (const uint8_t *)it->grad + off * hsz;
      if (host != wire) {
        orthod_client_convert(s->scratch, wire, src, host, cnt);
        src = s->scratch;
      }
      Orthod__V1__TensorChunk chunk = ORTHOD__V1__TENSOR_CHUNK__INIT;
      chunk.offset = off;
      chunk.dtype = (Orthod__V1__DType)wire;
      chunk.data.len = cnt * wsz;
      chunk.data.data = (uint8_t *)src;
      Orthod__V1__StepRequest req = ORTHOD__V1__STEP_REQUEST__INIT;
      req.name = (char *)it->name;
      req.step = it->step;
      req.worker_rank = worker_rank;
      req.chunk = &chunk;
      req.lr = it->has_lr ? &lr : NULL;
      req.reply_dtype = (Orthod__V1__DType)reply;
      req.no_reply = it->weights == NULL;
      rc = send_request(s, &req);
      if (rc != 0) return rc;
      if (s->over) return s->result;
    }
  }
  s->err[0] = '\0';
  return 0;
}

int orthod_step_wait(orthod_step_stream_t *s) {
  if (s == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (s->over) return s->result ? s->result
                                : orthod__cl_fail(s->err, GRPC_STATUS_FAILED_PRECONDITION,
                                               "step: the stream is finished");
  int64_t ms = s->client->opts.deadline_ms;
  gpr_timespec deadline = ms > 0 ? gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                                gpr_time_from_millis(ms, GPR_TIMESPAN))
                                 : gpr_inf_future(GPR_CLOCK_MONOTONIC);
  while (s->n_pending > 0) {
    if (!s->st.recv_pending) return end_stream(s, 0);
    grpc_event ev = orthod__cl_stream_pluck(&s->st, TAG_RECV, deadline);
    if (ev.type == GRPC_QUEUE_TIMEOUT)
      return end_stream(s, orthod__cl_fail(s->err, GRPC_STATUS_DEADLINE_EXCEEDED,
                                        "no new weights for '%s' (step %llu) within %lld ms",
                                        s->pending[0].item->name,
                                        (unsigned long long)s->pending[0].item->step,
                                        (long long)ms));
    if (ev.type != GRPC_OP_COMPLETE)
      return end_stream(s, orthod__cl_fail(s->err, GRPC_STATUS_INTERNAL, "Step: queue shut down"));
    int rc = on_recv_complete(s);
    if (rc != 0) return rc;
    if (s->over) return s->result ? s->result : end_stream(s, 0);
  }
  s->err[0] = '\0';
  return 0;
}

int orthod_step(orthod_step_stream_t *s, uint32_t worker_rank, orthod_step_item_t *items,
                size_t n) {
  int rc = orthod_step_push(s, worker_rank, items, n);
  return rc != 0 ? rc : orthod_step_wait(s);
}

int orthod_step_finish(orthod_step_stream_t *s) {
  if (s == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (s->over) return s->result;
  int rc = orthod_step_wait(s);
  if (rc != 0) return rc;
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  s->half_closed = true;
  if (!orthod__cl_call_batch(&s->st.call, &op, 1, TAG_SEND)) return end_stream(s, 0);
  /* Nothing is pending, so any further message is unexpected (on_response says so). */
  while (s->st.recv_pending && !s->over) {
    orthod__cl_stream_pluck(&s->st, TAG_RECV, gpr_inf_future(GPR_CLOCK_REALTIME));
    rc = on_recv_complete(s);
    if (rc != 0) return rc;
  }
  return end_stream(s, 0);
}

void orthod_step_destroy(orthod_step_stream_t *s) {
  if (s == NULL) return;
  if (s->st.call.call != NULL && !s->over) grpc_call_cancel(s->st.call.call, NULL);
  orthod__cl_stream_release(&s->st);
  for (size_t i = 0; i < s->n_pending; i++) orthod__cl_cover_free(&s->pending[i].cover);
  free(s->pending);
  free(s->scratch);
  free(s);
}
