/* server/rpc.h — gRPC core plumbing for the libuv loop.
 *
 * One gRPC completion queue is polled by a dedicated thread; every completion is handed to the
 * libuv loop (mutex-protected queue + uv_async_send). All callbacks below run on the loop thread,
 * and every function here must be called from the loop thread. Handlers see raw request bytes
 * and send raw response bytes; they decode/encode with protobuf-c.
 *
 * Reads: after on_start the framework keeps one RECV_MESSAGE outstanding and delivers each message
 * to on_message (unary and server-streaming methods receive exactly one message, delivered when
 * the client half-closes, then on_half_close; a second message ends the call with
 * INVALID_ARGUMENT before the handler sees either). Writes: orthod_call_send queues a message;
 * one SEND_MESSAGE is in flight at a time; when the queue empties, on_writable is called
 * (producers of long streams send a few chunks, then wait for on_writable). orthod_call_finish sends the status after the queued
 * messages. on_done is called exactly once, when every operation of the call has completed
 * (finished, cancelled by the peer, deadline exceeded, or cancelled at shutdown); after it
 * returns the call is freed. */
#ifndef ORTHOD_SERVER_RPC_H
#define ORTHOD_SERVER_RPC_H

#include <grpc/status.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct orthod_rpc_server orthod_rpc_server_t;
typedef struct orthod_call orthod_call_t;

typedef enum {
  ORTHOD_RPC_UNARY = 0,
  ORTHOD_RPC_CLIENT_STREAM = 1,
  ORTHOD_RPC_SERVER_STREAM = 2,
  ORTHOD_RPC_BIDI_STREAM = 3,
} orthod_rpc_kind_t;

typedef struct orthod_method {
  const char *path;        /* "/orthod.v1.Optimizer/Register" */
  orthod_rpc_kind_t kind;
  void *method_data;       /* handler context (e.g. the service) */
  /* A call arrived (request metadata available). May finish it at once (e.g. bad version). */
  void (*on_start)(orthod_call_t *call);
  /* One request message; data valid only during the callback. */
  void (*on_message)(orthod_call_t *call, const uint8_t *data, size_t len);
  /* The client half-closed: no more messages. */
  void (*on_half_close)(orthod_call_t *call);
  /* The send queue became empty (optional, may be NULL). */
  void (*on_writable)(orthod_call_t *call);
  /* The call is over; free the handler's per-call data. `cancelled`: the call ended without the
   * status we set reaching the client (peer cancel, deadline, shutdown). Exactly once. */
  void (*on_done)(orthod_call_t *call, bool cancelled);
} orthod_method_t;

typedef struct orthod_rpc_options {
  const char *listen;            /* "127.0.0.1:50051"; port 0 picks a free one */
  size_t max_recv_bytes;         /* GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH */
  size_t max_send_bytes;         /* GRPC_ARG_MAX_SEND_MESSAGE_LENGTH */
  unsigned keepalive_time_ms;    /* GRPC_ARG_KEEPALIVE_TIME_MS */
  unsigned keepalive_timeout_ms; /* GRPC_ARG_KEEPALIVE_TIMEOUT_MS */
  unsigned keepalive_permit_ms;  /* GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, with
                                    GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS = 1 and
                                    GRPC_ARG_HTTP2_MAX_PING_STRIKES = 0 so that long-lived Step
                                    streams are never cut by GOAWAY(too_many_pings) */
  /* TLS: with tls_cert_pem and tls_key_pem (PEM text) the port serves TLS only; with
   * tls_client_ca_pem too, clients must present a certificate that CA signed (mutual TLS).
   * NULL: plaintext. */
  const char *tls_cert_pem, *tls_key_pem, *tls_client_ca_pem;
} orthod_rpc_options_t;

/* Create the server, register the methods (copied; method_data pointers borrowed), bind.
 * Calls to unknown methods get UNIMPLEMENTED. Returns 0, or -1 with err filled. */
int orthod_rpc_server_create(uv_loop_t *loop, const orthod_rpc_options_t *opts,
                             const orthod_method_t *methods, size_t n_methods,
                             orthod_rpc_server_t **out, char *err, size_t errlen);

/* The port actually bound (useful with port 0). */
int orthod_rpc_server_port(const orthod_rpc_server_t *srv);

/* Start serving: the completion-queue thread begins and calls are requested. */
int orthod_rpc_server_start(orthod_rpc_server_t *srv);

/* Begin the drain. The calls in flight continue; calls that still arrive are handed to the
 * handlers as usual, which answer them UNAVAILABLE (the service and health do once drained), so
 * that no client sees the bare CANCELLED gRPC gives a call reaching a server that has stopped.
 * When the calls that were in flight have ended (or cancel_all was called twice, or could not end
 * a call gracefully), gRPC is shut down and every connection closed. `drained` runs on the loop
 * once that is done and every call has ended (on_done delivered). */
void orthod_rpc_server_shutdown(orthod_rpc_server_t *srv, void (*drained)(void *arg), void *arg);

/* Cancel every in-flight call (each gets on_done(cancelled = true)): a call with no message
 * being sent ends with UNAVAILABLE "orthod is shutting down" after dropping its queue; others,
 * and every call on a second cancel_all, are cancelled outright. */
void orthod_rpc_server_cancel_all(orthod_rpc_server_t *srv);

/* Join the thread and free everything; only after `drained` ran. */
void orthod_rpc_server_destroy(orthod_rpc_server_t *srv);

/* ---- per call ---------------------------------------------------------------------------- */

const orthod_method_t *orthod_call_method(const orthod_call_t *call);
void orthod_call_set_data(orthod_call_t *call, void *data);
void *orthod_call_data(const orthod_call_t *call);

/* Value of request metadata `key` (lower case), NUL-terminated copy owned by the call; NULL if
 * absent. */
const char *orthod_call_metadata(orthod_call_t *call, const char *key);

/* "ipv4:127.0.0.1:40212" — for logs. */
const char *orthod_call_peer(orthod_call_t *call);

/* Queue one response message (copied). Returns -1 once the call is finished or cancelled. */
int orthod_call_send(orthod_call_t *call, const uint8_t *data, size_t len);

/* Bytes queued and not yet handed to gRPC. */
size_t orthod_call_queued_bytes(const orthod_call_t *call);

/* Send the final status after the queued messages (message copied; NULL or "" for none).
 * Later sends and finishes are ignored. */
void orthod_call_finish(orthod_call_t *call, grpc_status_code code, const char *message);

/* Finished or cancelled: the handler should stop producing. */
bool orthod_call_is_over(const orthod_call_t *call);

#endif
