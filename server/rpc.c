/* server/rpc.c — gRPC core (C API) under the libuv loop.
 *
 * One completion queue, drained by one thread that only moves (tag, ok) pairs into a locked
 * array and wakes the loop; every state machine below runs on the loop thread, so handlers never
 * see a gRPC thread. Each call keeps at most one receive and one send batch in flight, plus the
 * RECV_CLOSE_ON_SERVER posted at start that tells us when (and whether by cancellation) it ended.
 * A call is freed once that close has completed and no batch is left in flight. */
#include "rpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/log.h"

/* Calls requested ahead per method: new calls are matched at once while the loop re-arms. */
#define RPC_REQUESTS_PER_METHOD 32
#define RPC_SHUTDOWN_MESSAGE "orthod is shutting down"

/* ---- tags ----------------------------------------------------------------------------------- */

typedef enum {
  TAG_REQUEST,         /* a requested registered call arrived (or the request failed) */
  TAG_RECV,            /* RECV_MESSAGE */
  TAG_SEND,            /* SEND_MESSAGE (+ initial metadata the first time) */
  TAG_STATUS,          /* SEND_STATUS_FROM_SERVER (+ initial metadata if none was sent) */
  TAG_CLOSE,           /* RECV_CLOSE_ON_SERVER */
  TAG_UNKNOWN_REQUEST, /* a call to a method nobody registered */
  TAG_UNKNOWN_DONE,    /* its UNIMPLEMENTED answer completed */
  TAG_SHUTDOWN,        /* grpc_server_shutdown_and_notify */
} tag_kind_t;

/* Every pointer handed to gRPC as a tag points at one of these, embedded in its owner. */
typedef struct {
  tag_kind_t kind;
  void *owner;
} rpc_tag_t;

typedef struct {
  rpc_tag_t *tag;
  int ok;
} rpc_event_t;

typedef struct {
  orthod_method_t m;
  void *handle; /* grpc_server_register_method */
} method_entry_t;

typedef struct send_node {
  struct send_node *next;
  grpc_byte_buffer *bb;
  size_t len;
} send_node_t;

typedef struct md_copy {
  struct md_copy *next;
  char *key;
  char *value;
} md_copy_t;

struct orthod_call {
  orthod_rpc_server_t *srv;
  const method_entry_t *method;
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array md;
  rpc_tag_t t_request, t_recv, t_send, t_status, t_close;
  int ops;                     /* batches in flight (the close included) */
  bool started;                /* on_start delivered: on_done is owed */
  /* receive side */
  grpc_byte_buffer *recv_buf;
  bool half_closed;
  grpc_slice request;          /* unary / server-streaming: the one message, until half-close */
  bool has_request;
  /* send side */
  send_node_t *sq_head, *sq_tail;
  size_t queued_bytes;         /* bytes in sq, not yet handed to gRPC */
  grpc_byte_buffer *send_buf;  /* the SEND_MESSAGE in flight, or NULL */
  bool initial_md_sent;
  bool finish_requested;
  bool status_posted;
  grpc_status_code code;
  grpc_slice status_details;
  /* end */
  int close_cancelled;         /* written by gRPC: RECV_CLOSE_ON_SERVER.cancelled */
  bool closed;
  bool failed;                 /* a batch failed: the call is dead, stop producing */
  bool shutdown_cancel;        /* ended by cancel_all: on_done says cancelled */
  bool old;                    /* live when the drain began: the drain waits for it */
  void *data;
  char *peer;                  /* gpr_malloc'd by grpc_call_get_peer */
  md_copy_t *md_copies;
  orthod_call_t *prev, *next;  /* server's live list */
};

typedef struct {
  orthod_rpc_server_t *srv;
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array md;
  rpc_tag_t t_request, t_done;
  int close_cancelled;
  grpc_slice message;
} unknown_call_t;

struct orthod_rpc_server {
  uv_loop_t *loop;
  uv_async_t *async;         /* own allocation: freed by its close callback */
  grpc_server *server;
  grpc_completion_queue *cq;
  pthread_t thread;
  bool thread_started;
  pthread_mutex_t mu;        /* guards events */
  rpc_event_t *events;
  size_t n_events, cap_events;
  rpc_event_t *scratch;      /* loop side of the swap */
  size_t cap_scratch;
  method_entry_t *methods;
  size_t n_methods;
  int port;
  bool started;
  bool shutting_down;        /* orthod_rpc_server_shutdown was called: draining */
  bool grpc_shutdown_called; /* grpc_server_shutdown_and_notify + cancel_all_calls issued */
  bool shutdown_notified;    /* ... and its tag arrived */
  bool drained_fired;
  size_t n_old;              /* calls that were live when the drain began, still live */
  bool cancel_requested;     /* orthod_rpc_server_cancel_all was called */
  rpc_tag_t t_shutdown;
  size_t n_requests;         /* request tags outstanding in gRPC */
  size_t n_live;             /* calls accepted and not yet freed (unknown ones included) */
  orthod_call_t *live;
  void (*drained)(void *arg);
  void *drained_arg;
};

/* ---- completion-queue thread ----------------------------------------------------------------- */

static void *cq_thread_main(void *arg) {
  orthod_rpc_server_t *srv = arg;
#if defined(__linux__)
  pthread_setname_np(pthread_self(), "orthod-cq");
#endif
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    pthread_mutex_lock(&srv->mu);
    if (srv->n_events == srv->cap_events) {
      size_t cap = srv->cap_events ? srv->cap_events * 2 : 64;
      rpc_event_t *grown = realloc(srv->events, cap * sizeof *grown);
      if (!grown) {
        /* Losing a completion would leak a call forever; this cannot be recovered from. */
        fprintf(stderr, "orthod: out of memory in the completion-queue thread\n");
        abort();
      }
      srv->events = grown;
      srv->cap_events = cap;
    }
    srv->events[srv->n_events].tag = ev.tag;
    srv->events[srv->n_events].ok = ev.success;
    srv->n_events++;
    pthread_mutex_unlock(&srv->mu);
    uv_async_send(srv->async);
  }
  return NULL;
}

/* ---- call helpers ---------------------------------------------------------------------------- */

static const char *call_path(const orthod_call_t *c) { return c->method->m.path; }

static bool start_batch(orthod_call_t *c, const grpc_op *ops, size_t n, rpc_tag_t *tag) {
  grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
  if (e != GRPC_CALL_OK) {
    /* A programming error (bad op sequence); end the call rather than hang it. */
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "rpc %s: grpc_call_start_batch failed (%d)", call_path(c), (int)e);
    c->failed = true;
    grpc_call_cancel_with_status(c->call, GRPC_STATUS_INTERNAL, "internal error", NULL);
    return false;
  }
  c->ops++;
  return true;
}

static void drop_send_queue(orthod_call_t *c) {
  while (c->sq_head) {
    send_node_t *n = c->sq_head;
    c->sq_head = n->next;
    grpc_byte_buffer_destroy(n->bb);
    free(n);
  }
  c->sq_tail = NULL;
  c->queued_bytes = 0;
}

static void post_recv(orthod_call_t *c) {
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &c->recv_buf;
  start_batch(c, &op, 1, &c->t_recv);
}

/* Hand the next queued message, or the status once the queue is empty, to gRPC. */
static void pump_send(orthod_call_t *c) {
  if (c->send_buf || c->status_posted || c->closed || c->failed) return;
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  if (!c->initial_md_sent) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n++;
  }
  if (c->sq_head) {
    send_node_t *node = c->sq_head;
    c->sq_head = node->next;
    if (!c->sq_head) c->sq_tail = NULL;
    c->queued_bytes -= node->len;
    c->send_buf = node->bb;
    free(node);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = c->send_buf;
    n++;
    if (start_batch(c, ops, n, &c->t_send)) {
      c->initial_md_sent = true;
    } else {
      grpc_byte_buffer_destroy(c->send_buf);
      c->send_buf = NULL;
    }
    return;
  }
  if (!c->finish_requested) return;
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  ops[n].data.send_status_from_server.status = c->code;
  ops[n].data.send_status_from_server.status_details =
      GRPC_SLICE_LENGTH(c->status_details) ? &c->status_details : NULL;
  n++;
  if (start_batch(c, ops, n, &c->t_status)) {
    c->initial_md_sent = true;
    c->status_posted = true;
  }
}

static void call_free(orthod_call_t *c) {
  drop_send_queue(c);
  if (c->send_buf) grpc_byte_buffer_destroy(c->send_buf);
  if (c->recv_buf) grpc_byte_buffer_destroy(c->recv_buf);
  grpc_slice_unref(c->status_details);
  grpc_slice_unref(c->request);
  grpc_metadata_array_destroy(&c->md);
  while (c->md_copies) {
    md_copy_t *m = c->md_copies;
    c->md_copies = m->next;
    free(m->key);
    free(m->value);
    free(m);
  }
  if (c->peer) gpr_free(c->peer);
  if (c->call) grpc_call_unref(c->call);
  free(c);
}

/* The call is over when its close completed and nothing else is in flight: tell the handler,
 * unlink, free. Called only from the dispatcher, after the event's own handling. */
static void call_maybe_done(orthod_call_t *c) {
  if (!c->closed || c->ops > 0) return;
  orthod_rpc_server_t *srv = c->srv;
  bool cancelled = c->close_cancelled || !c->status_posted || c->failed || c->shutdown_cancel;
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "rpc %s from %s: %s", call_path(c), c->peer ? c->peer : "?",
             cancelled ? "cancelled" : "done");
  if (c->started && c->method->m.on_done) c->method->m.on_done(c, cancelled);
  if (c->prev) c->prev->next = c->next;
  else srv->live = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->n_live--;
  if (c->old) srv->n_old--;
  call_free(c);
}

/* ---- requests -------------------------------------------------------------------------------- */

static void request_registered(orthod_rpc_server_t *srv, const method_entry_t *me) {
  orthod_call_t *c = calloc(1, sizeof *c);
  if (!c) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "rpc %s: out of memory requesting a call", me->m.path);
    return;
  }
  c->srv = srv;
  c->method = me;
  c->t_request = (rpc_tag_t){TAG_REQUEST, c};
  c->t_recv = (rpc_tag_t){TAG_RECV, c};
  c->t_send = (rpc_tag_t){TAG_SEND, c};
  c->t_status = (rpc_tag_t){TAG_STATUS, c};
  c->t_close = (rpc_tag_t){TAG_CLOSE, c};
  c->status_details = grpc_empty_slice();
  c->request = grpc_empty_slice();
  grpc_metadata_array_init(&c->md);
  grpc_call_error e = grpc_server_request_registered_call(srv->server, me->handle, &c->call,
                                                          &c->deadline, &c->md, NULL, srv->cq,
                                                          srv->cq, &c->t_request);
  if (e != GRPC_CALL_OK) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "rpc %s: request_registered_call failed (%d)", me->m.path, (int)e);
    grpc_metadata_array_destroy(&c->md);
    free(c);
    return;
  }
  srv->n_requests++;
}

static void request_unknown(orthod_rpc_server_t *srv) {
  unknown_call_t *u = calloc(1, sizeof *u);
  if (!u) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "rpc: out of memory requesting a call");
    return;
  }
  u->srv = srv;
  u->t_request = (rpc_tag_t){TAG_UNKNOWN_REQUEST, u};
  u->t_done = (rpc_tag_t){TAG_UNKNOWN_DONE, u};
  u->message = grpc_empty_slice();
  grpc_call_details_init(&u->details);
  grpc_metadata_array_init(&u->md);
  grpc_call_error e = grpc_server_request_call(srv->server, &u->call, &u->details, &u->md, srv->cq,
                                               srv->cq, &u->t_request);
  if (e != GRPC_CALL_OK) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "rpc: request_call failed (%d)", (int)e);
    grpc_call_details_destroy(&u->details);
    grpc_metadata_array_destroy(&u->md);
    free(u);
    return;
  }
  srv->n_requests++;
}

static void unknown_free(unknown_call_t *u) {
  if (u->call) grpc_call_unref(u->call);
  grpc_slice_unref(u->message);
  grpc_call_details_destroy(&u->details);
  grpc_metadata_array_destroy(&u->md);
  free(u);
}

/* ---- event handlers -------------------------------------------------------------------------- */

static void on_request(orthod_call_t *c, int ok) {
  orthod_rpc_server_t *srv = c->srv;
  srv->n_requests--;
  if (!ok) { /* the server is shutting down: the request was never matched */
    call_free(c);
    return;
  }
  if (!srv->grpc_shutdown_called) request_registered(srv, c->method);

  c->next = srv->live;
  if (srv->live) srv->live->prev = c;
  srv->live = c;
  srv->n_live++;
  c->peer = grpc_call_get_peer(c->call);
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "rpc %s from %s: start", call_path(c), c->peer ? c->peer : "?");

  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->close_cancelled;
  if (!start_batch(c, &op, 1, &c->t_close)) {
    /* Without the close we would never learn the end; treat the call as ended. */
    c->closed = true;
    c->close_cancelled = 1;
  }
  c->started = true;
  if (c->method->m.on_start) c->method->m.on_start(c);
  if (!orthod_call_is_over(c)) post_recv(c);
  call_maybe_done(c);
}

static bool single_request(const orthod_call_t *c) {
  return c->method->m.kind == ORTHOD_RPC_UNARY || c->method->m.kind == ORTHOD_RPC_SERVER_STREAM;
}

/* Streaming requests go to on_message as they come. A unary or server-streaming request is held
 * until the half-close, so that the handler sees exactly one message: a second one ends the
 * call with INVALID_ARGUMENT before the handler acts on the first. */
static void on_recv(orthod_call_t *c, int ok) {
  c->ops--;
  grpc_byte_buffer *bb = c->recv_buf;
  c->recv_buf = NULL;
  if (ok && !orthod_call_is_over(c)) {
    if (bb) {
      grpc_byte_buffer_reader reader;
      if (grpc_byte_buffer_reader_init(&reader, bb)) {
        grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
        grpc_byte_buffer_reader_destroy(&reader);
        if (!single_request(c)) {
          if (c->method->m.on_message)
            c->method->m.on_message(c, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s));
          grpc_slice_unref(s);
        } else if (c->has_request) {
          grpc_slice_unref(s);
          char msg[300];
          snprintf(msg, sizeof msg, "%.200s takes exactly one request message", call_path(c));
          orthod_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, msg);
        } else {
          c->request = s;
          c->has_request = true;
        }
      } else {
        orthod_call_finish(c, GRPC_STATUS_INTERNAL, "cannot read the request message");
      }
      if (!orthod_call_is_over(c)) post_recv(c);
    } else if (!c->half_closed) {
      c->half_closed = true;
      if (c->has_request && c->method->m.on_message)
        c->method->m.on_message(c, GRPC_SLICE_START_PTR(c->request),
                                GRPC_SLICE_LENGTH(c->request));
      grpc_slice_unref(c->request);
      c->request = grpc_empty_slice();
      if (!orthod_call_is_over(c) && c->method->m.on_half_close) c->method->m.on_half_close(c);
    }
  }
  if (bb) grpc_byte_buffer_destroy(bb);
  call_maybe_done(c);
}

static void on_send(orthod_call_t *c, int ok) {
  c->ops--;
  grpc_byte_buffer_destroy(c->send_buf);
  c->send_buf = NULL;
  if (!ok) {
    c->failed = true;
    drop_send_queue(c);
  } else {
    pump_send(c);
    if (!c->send_buf && !c->sq_head && !orthod_call_is_over(c) && c->method->m.on_writable)
      c->method->m.on_writable(c);
  }
  call_maybe_done(c);
}

static void on_status(orthod_call_t *c, int ok) {
  c->ops--;
  if (!ok) c->failed = true;
  call_maybe_done(c);
}

static void on_close(orthod_call_t *c) {
  c->ops--;
  c->closed = true;
  if (c->close_cancelled) drop_send_queue(c);
  call_maybe_done(c);
}

static void on_unknown_request(unknown_call_t *u, int ok) {
  orthod_rpc_server_t *srv = u->srv;
  srv->n_requests--;
  if (!ok) {
    unknown_free(u);
    return;
  }
  if (!srv->grpc_shutdown_called) request_unknown(srv);
  srv->n_live++;

  char msg[512];
  snprintf(msg, sizeof msg, "unknown method %.*s", (int)GRPC_SLICE_LENGTH(u->details.method),
           (const char *)GRPC_SLICE_START_PTR(u->details.method));
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "rpc: %s", msg);
  u->message = grpc_slice_from_copied_string(msg);
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[1].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
  ops[1].data.send_status_from_server.status_details = &u->message;
  ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[2].data.recv_close_on_server.cancelled = &u->close_cancelled;
  grpc_call_error e = grpc_call_start_batch(u->call, ops, 3, &u->t_done, NULL);
  if (e != GRPC_CALL_OK) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "rpc: cannot answer an unknown method (%d)", (int)e);
    grpc_call_cancel(u->call, NULL);
    srv->n_live--;
    unknown_free(u);
  }
}

/* The end of the drain: stop gRPC and close every connection at once.
 *
 * Why not grpc_server_shutdown_and_notify at the start of the drain: from that moment gRPC
 * drops every call that reaches it before the client has seen the GOAWAY, and the client sees a
 * bare CANCELLED (a zombie call, server.cc). So while the calls that were live at the start
 * finish, the server keeps accepting calls and the handlers answer them UNAVAILABLE ("shutting
 * down"); once those calls are gone (or cancel_all says stop waiting), the shutdown and the
 * closing of the connections are issued together, which leaves a window of microseconds instead
 * of a network round trip. Closing at once also avoids waiting on a connection whose last stream
 * ended during the GOAWAY handshake, which gRPC can leave open until the client goes away. */
static void final_shutdown(orthod_rpc_server_t *srv) {
  if (srv->grpc_shutdown_called) return;
  srv->grpc_shutdown_called = true;
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "rpc: drain done (%zu calls left); closing the connections",
             srv->n_live);
  /* Connections first: a stream that reaches gRPC after the shutdown call is dropped as a
   * zombie (bare CANCELLED), so leave as few streams as possible a way in. */
  grpc_server_cancel_all_calls(srv->server);
  grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->t_shutdown);
}

static void maybe_final_shutdown(orthod_rpc_server_t *srv) {
  if (srv->shutting_down && srv->thread_started && srv->n_old == 0) final_shutdown(srv);
}

static void check_drained(orthod_rpc_server_t *srv) {
  if (srv->drained_fired || !srv->shutdown_notified || srv->n_live || srv->n_requests) return;
  srv->drained_fired = true;
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "rpc: drained");
  if (srv->drained) srv->drained(srv->drained_arg);
}

static void dispatch(orthod_rpc_server_t *srv, rpc_tag_t *tag, int ok) {
  switch (tag->kind) {
  case TAG_REQUEST: on_request(tag->owner, ok); break;
  case TAG_RECV: on_recv(tag->owner, ok); break;
  case TAG_SEND: on_send(tag->owner, ok); break;
  case TAG_STATUS: on_status(tag->owner, ok); break;
  case TAG_CLOSE: on_close(tag->owner); break;
  case TAG_UNKNOWN_REQUEST: on_unknown_request(tag->owner, ok); break;
  case TAG_UNKNOWN_DONE:
    srv->n_live--;
    unknown_free(tag->owner);
    break;
  case TAG_SHUTDOWN: srv->shutdown_notified = true; break;
  }
}

static void on_async(uv_async_t *handle) {
  orthod_rpc_server_t *srv = handle->data;
  /* Swap the shared array with the loop's scratch so the CQ thread is never blocked on us. */
  pthread_mutex_lock(&srv->mu);
  rpc_event_t *events = srv->events;
  size_t n = srv->n_events;
  size_t cap = srv->cap_events;
  srv->events = srv->scratch;
  srv->cap_events = srv->cap_scratch;
  srv->n_events = 0;
  pthread_mutex_unlock(&srv->mu);
  srv->scratch = events;
  srv->cap_scratch = cap;
  for (size_t i = 0; i < n; i++) dispatch(srv, events[i].tag, events[i].ok);
  maybe_final_shutdown(srv);
  /* Last: `drained` may start the teardown. */
  check_drained(srv);
}

static void on_async_closed(uv_handle_t *handle) { free(handle); }

/* ---- server ---------------------------------------------------------------------------------- */

static int clamp_int(size_t v) {
  if (v == 0) return -1; /* gRPC: -1 = unlimited */
  return v > (size_t)INT_MAX ? INT_MAX : (int)v;
}

static grpc_arg int_arg(const char *key, int value) {
  grpc_arg a;
  memset(&a, 0, sizeof a);
  a.type = GRPC_ARG_INTEGER;
  a.key = (char *)key;
  a.value.integer = value;
  return a;
}

int orthod_rpc_server_create(uv_loop_t *loop, const orthod_rpc_options_t *opts,
                             const orthod_method_t *methods, size_t n_methods,
                             orthod_rpc_server_t **out, char *err, size_t errlen) {
  *out = NULL;
  orthod_rpc_server_t *srv = calloc(1, sizeof *srv);
  if (!srv) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  srv->loop = loop;
  srv->t_shutdown = (rpc_tag_t){TAG_SHUTDOWN, srv};
  pthread_mutex_init(&srv->mu, NULL);
  grpc_init();

  srv->methods = calloc(n_methods ? n_methods : 1, sizeof *srv->methods);
  srv->async = calloc(1, sizeof *srv->async);
  if (!srv->methods || !srv->async) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if (uv_async_init(loop, srv->async, on_async) != 0) {
    free(srv->async);
    srv->async = NULL;
    snprintf(err, errlen, "uv_async_init failed");
    goto fail;
  }
  srv->async->data = srv;

  grpc_arg args[] = {
      int_arg(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, clamp_int(opts->max_recv_bytes)),
      int_arg(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, clamp_int(opts->max_send_bytes)),
      int_arg(GRPC_ARG_KEEPALIVE_TIME_MS, (int)opts->keepalive_time_ms),
      int_arg(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, (int)opts->keepalive_timeout_ms),
      int_arg(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1),
      int_arg(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, (int)opts->keepalive_permit_ms),
      int_arg(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0),
      /* Two daemons on one port would split the traffic; make the second fail to bind. */
      int_arg(GRPC_ARG_ALLOW_REUSEPORT, 0),
  };
  grpc_channel_args chargs = {sizeof args / sizeof args[0], args};
  srv->server = grpc_server_create(&chargs, NULL);
  srv->cq = grpc_completion_queue_create_for_next(NULL);
  if (!srv->server || !srv->cq) {
    snprintf(err, errlen, "cannot create the gRPC server");
    goto fail;
  }
  grpc_server_register_completion_queue(srv->server, srv->cq, NULL);

  for (size_t i = 0; i < n_methods; i++) {
    method_entry_t *me = &srv->methods[i];
    me->m = methods[i];
    me->handle = grpc_server_register_method(srv->server, me->m.path, NULL, GRPC_SRM_PAYLOAD_NONE, 0);
    if (!me->handle) {
      snprintf(err, errlen, "cannot register method %s (registered twice?)", me->m.path);
      goto fail;
    }
    srv->n_methods++;
  }

  grpc_server_credentials *creds;
  if (opts->tls_cert_pem != NULL) {
    grpc_ssl_pem_key_cert_pair pair = {opts->tls_key_pem, opts->tls_cert_pem};
    creds = grpc_ssl_server_credentials_create_ex(
        opts->tls_client_ca_pem, &pair, 1,
        opts->tls_client_ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
    if (creds == NULL) {
      snprintf(err, errlen, "TLS: the certificate, key or client CA was refused");
      goto fail;
    }
  } else {
    creds = grpc_insecure_server_credentials_create();
  }
  srv->port = grpc_server_add_http2_port(srv->server, opts->listen, creds);
  grpc_server_credentials_release(creds);
  if (srv->port <= 0) {
    snprintf(err, errlen, "cannot listen on %s (address in use, or not a valid host:port)",
             opts->listen);
    goto fail;
  }
  *out = srv;
  return 0;

fail:
  orthod_rpc_server_destroy(srv);
  return -1;
}

int orthod_rpc_server_port(const orthod_rpc_server_t *srv) { return srv->port; }

int orthod_rpc_server_start(orthod_rpc_server_t *srv) {
  if (srv->started) return 0;
  grpc_server_start(srv->server);
  srv->started = true;
  if (pthread_create(&srv->thread, NULL, cq_thread_main, srv) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "rpc: cannot start the completion-queue thread");
    return -1;
  }
  srv->thread_started = true;
  for (size_t i = 0; i < srv->n_methods; i++)
    for (int k = 0; k < RPC_REQUESTS_PER_METHOD; k++) request_registered(srv, &srv->methods[i]);
  for (int k = 0; k < RPC_REQUESTS_PER_METHOD; k++) request_unknown(srv);
  return 0;
}

void orthod_rpc_server_shutdown(orthod_rpc_server_t *srv, void (*drained)(void *arg), void *arg) {
  srv->drained = drained;
  srv->drained_arg = arg;
  if (srv->shutting_down) return;
  srv->shutting_down = true;
  if (!srv->thread_started) {
    /* Nothing was ever served and no completion will be read before destroy drains the queue. */
    if (srv->started) {
      grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->t_shutdown);
      grpc_server_cancel_all_calls(srv->server);
    }
    srv->shutdown_notified = true;
    srv->n_requests = 0;
    check_drained(srv);
    return;
  }
  for (orthod_call_t *c = srv->live; c; c = c->next) {
    c->old = true;
    srv->n_old++;
  }
  maybe_final_shutdown(srv);
}

void orthod_rpc_server_cancel_all(orthod_rpc_server_t *srv) {
  /* A call with nothing in flight on its send side ends with a normal status: a cancel closes
   * the stream at once, and with the connections closing right after, the trailers may never
   * be written and the client would only see "Socket closed". A call
   * with a send in flight (a peer that stops reading may block it forever), or asked a second
   * time, is cancelled outright. Calls gRPC has not matched to a request yet are failed by the
   * shutdown itself. */
  bool hard = false;
  bool again = srv->cancel_requested;
  srv->cancel_requested = true;
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "rpc: cancel_all: %zu calls open, %zu requests pending, shutdown %s",
             srv->n_live, srv->n_requests, srv->shutdown_notified ? "notified" : "pending");
  for (orthod_call_t *c = srv->live; c; c = c->next) {
    ORTHOD_LOG(ORTHOD_LOG_DEBUG,
               "rpc: cancel_all: %s from %s: ops %d closed %d finish %d status %d send %d queued %zu",
               call_path(c), c->peer ? c->peer : "?", c->ops, c->closed, c->finish_requested,
               c->status_posted, c->send_buf != NULL, c->queued_bytes);
    if (c->closed) continue;
    bool graceful = !c->shutdown_cancel && !c->send_buf && !c->status_posted && !c->failed;
    c->shutdown_cancel = true;
    if (!graceful) hard = true;
    if (graceful) {
      drop_send_queue(c);
      c->finish_requested = true;
      c->code = GRPC_STATUS_UNAVAILABLE;
      grpc_slice_unref(c->status_details);
      c->status_details = grpc_slice_from_static_string(RPC_SHUTDOWN_MESSAGE);
      pump_send(c);
    } else {
      grpc_call_cancel_with_status(c->call, GRPC_STATUS_UNAVAILABLE, RPC_SHUTDOWN_MESSAGE, NULL);
    }
  }
  /* Asked again, or a call could not end gracefully: stop waiting for the drain. */
  if (srv->shutting_down && srv->thread_started && (hard || again)) final_shutdown(srv);
}

void orthod_rpc_server_destroy(orthod_rpc_server_t *srv) {
  if (!srv) return;
  if (srv->server) {
    if (srv->started && !srv->shutdown_notified) {
      /* Misuse (destroy before drained) would make grpc_server_destroy assert; say so. */
      ORTHOD_LOG(ORTHOD_LOG_ERROR, "rpc: destroy before the server drained");
    }
    grpc_server_destroy(srv->server);
  }
  if (srv->cq) {
    grpc_completion_queue_shutdown(srv->cq);
    if (srv->thread_started) {
      pthread_join(srv->thread, NULL);
    } else {
      while (grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
             GRPC_QUEUE_SHUTDOWN) {
      }
    }
    grpc_completion_queue_destroy(srv->cq);
  }
  if (srv->async) uv_close((uv_handle_t *)srv->async, on_async_closed);
  free(srv->events);
  free(srv->scratch);
  free(srv->methods);
  pthread_mutex_destroy(&srv->mu);
  free(srv);
  grpc_shutdown();
}

/* ---- per call -------------------------------------------------------------------------------- */

const orthod_method_t *orthod_call_method(const orthod_call_t *call) { return &call->method->m; }

void orthod_call_set_data(orthod_call_t *call, void *data) { call->data = data; }

void *orthod_call_data(const orthod_call_t *call) { return call->data; }

const char *orthod_call_metadata(orthod_call_t *call, const char *key) {
  for (md_copy_t *m = call->md_copies; m; m = m->next)
    if (strcmp(m->key, key) == 0) return m->value;
  for (size_t i = 0; i < call->md.count; i++) {
    const grpc_metadata *e = &call->md.metadata[i];
    if (grpc_slice_str_cmp(e->key, key) != 0) continue;
    md_copy_t *m = calloc(1, sizeof *m);
    size_t len = GRPC_SLICE_LENGTH(e->value);
    char *value = malloc(len + 1);
    char *k = strdup(key);
    if (!m || !value || !k) {
      free(m);
      free(value);
      free(k);
      return NULL;
    }
    memcpy(value, GRPC_SLICE_START_PTR(e->value), len);
    value[len] = '\0';
    m->key = k;
    m->value = value;
    m->next = call->md_copies;
    call->md_copies = m;
    return value;
  }
  return NULL;
}

const char *orthod_call_peer(orthod_call_t *call) { return call->peer ? call->peer : "unknown"; }

int orthod_call_send(orthod_call_t *call, const uint8_t *data, size_t len) {
  if (orthod_call_is_over(call)) return -1;
  send_node_t *node = malloc(sizeof *node);
  if (!node) return -1;
  grpc_slice s = grpc_slice_from_copied_buffer((const char *)data, len);
  node->bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  node->len = len;
  node->next = NULL;
  if (call->sq_tail) call->sq_tail->next = node;
  else call->sq_head = node;
  call->sq_tail = node;
  call->queued_bytes += len;
  pump_send(call);
  return 0;
}

size_t orthod_call_queued_bytes(const orthod_call_t *call) { return call->queued_bytes; }

void orthod_call_finish(orthod_call_t *call, grpc_status_code code, const char *message) {
  if (call->finish_requested || call->closed || call->failed) return;
  call->finish_requested = true;
  call->code = code;
  if (message && *message) {
    grpc_slice_unref(call->status_details);
    call->status_details = grpc_slice_from_copied_string(message);
  }
  pump_send(call);
}

bool orthod_call_is_over(const orthod_call_t *call) {
  return call->finish_requested || call->closed || call->failed;
}
