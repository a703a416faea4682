/* client_impl.h — liborthod-client internals shared by its files: the client struct, call setup
 * on per-call completion queues, the receiving side of streaming calls (step.c, health.c),
 * protobuf <-> grpc_byte_buffer, error text, dtype conversion and chunk-coverage bookkeeping. */
#ifndef ORTHOD_CLIENT_IMPL_H
#define ORTHOD_CLIENT_IMPL_H

#include <grpc/grpc.h>
#include <grpc/status.h>
#include <grpc/support/time.h>
#include <protobuf-c/protobuf-c.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orthod/client.h"
#include "orthod/v1/orthod.pb-c.h"

#define ORTHOD__ERR_LEN 1024

struct orthod_client {
  grpc_channel *channel;
  orthod_client_options_t opts; /* opts.token points at token below */
  char *token;                  /* owned copy, or NULL */
  char *auth;                   /* "Bearer <token>", or NULL */
  char err[ORTHOD__ERR_LEN];    /* last error of a client call */
};

/* One call on its own pluck completion queue (so calls never see each other's events). */
typedef struct orthod__cl_call {
  grpc_completion_queue *cq;
  grpc_call *call;
  grpc_metadata md[2]; /* orthod-protocol-version, authorization */
  size_t n_md;
} orthod__cl_call_t;

/* Create the queue and the call for `method` ("/orthod.v1.Optimizer/List"); deadline_ms 0: no
 * deadline. On failure fills err and returns a status. */
int orthod__cl_call_start(orthod_client_t *c, const char *method, int64_t deadline_ms,
                       orthod__cl_call_t *call, char *err);

/* Unref the call, shut the queue down, drain and destroy it. */
void orthod__cl_call_end(orthod__cl_call_t *call);

/* Start a batch with tag `tag` and wait for it (no timeout: the call's deadline bounds it).
 * Returns the event's success flag; false also when the batch could not be started. */
bool orthod__cl_call_batch(orthod__cl_call_t *call, const grpc_op *ops, size_t n, void *tag);

/* The receiving side of a long-lived streaming call (Step, Health/Watch) on its own queue: one
 * RECV_STATUS_ON_CLIENT batch from the start, and at most one RECV_MESSAGE outstanding, armed
 * again after each message. Batches carry the tags below (unique: the queue is the call's own). */
#define ORTHOD__TAG_SEND ((void *)1)
#define ORTHOD__TAG_RECV ((void *)2)
#define ORTHOD__TAG_STATUS ((void *)3)

typedef struct orthod__cl_stream {
  orthod__cl_call_t call;
  grpc_metadata_array init_md, trail_md;
  grpc_byte_buffer *recv_bb; /* target of the outstanding RECV_MESSAGE */
  grpc_status_code status;   /* filled by RECV_STATUS_ON_CLIENT */
  grpc_slice details;
  bool recv_pending;         /* a RECV_MESSAGE batch is outstanding */
  bool status_pending;       /* the RECV_STATUS_ON_CLIENT batch is outstanding */
} orthod__cl_stream_t;

/* Zero st and make it safe to release; call first, before anything can fail. */
void orthod__cl_stream_init(orthod__cl_stream_t *st);

/* Start the call (orthod__cl_call_start) and its RECV_STATUS_ON_CLIENT batch. On failure fills
 * err and returns a status; st must still be released. */
int orthod__cl_stream_start(orthod_client_t *c, const char *method, int64_t deadline_ms,
                            orthod__cl_stream_t *st, char *err);

/* Arm the next RECV_MESSAGE (with the initial metadata the first time); false when the call
 * refuses it (the stream is over: its status says why). */
bool orthod__cl_stream_arm_recv(orthod__cl_stream_t *st, bool with_initial_md);

/* Wait for the batch with `tag` until `deadline`. */
grpc_event orthod__cl_stream_pluck(orthod__cl_stream_t *st, void *tag, gpr_timespec deadline);

/* Wait for the outstanding receives (discarding their messages) and the status. Prompt once the
 * stream is over or cancelled; afterwards st->status/details hold the end status. */
void orthod__cl_stream_drain(orthod__cl_stream_t *st);

/* Drain (the caller has cancelled the call if it was still open), end the call, free st's
 * buffers. */
void orthod__cl_stream_release(orthod__cl_stream_t *st);

/* Serialize a message into a new byte buffer (caller destroys), NULL on allocation failure. */
grpc_byte_buffer *orthod__cl_pack(const ProtobufCMessage *msg);

/* Parse a byte buffer (not consumed) as `desc`; NULL if malformed. Free with
 * protobuf_c_message_free_unpacked. */
ProtobufCMessage *orthod__cl_unpack(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *bb);

/* The calling thread's create error (orthod_client_create_error), ORTHOD__ERR_LEN bytes, for
 * orthod_sharded_create to fill too. */
char *orthod__cl_create_err(void);

/* Write "CODE_NAME: message" into err (ORTHOD__ERR_LEN bytes); returns code. */
int orthod__cl_fail(char *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The status a finished call reported: err = "CODE_NAME: details" (or "" for OK). */
int orthod__cl_status(char *err, grpc_status_code code, grpc_slice details);

/* Valid wire/host dtype (DEFAULT resolves to F32): 1..3, or 0 if invalid. */
orthod_client_dtype_t orthod__cl_dtype(orthod_client_dtype_t d);

/* Fill *info from a ParameterInfo message (one allocation behind every pointer). */
int orthod__cl_info_from_msg(const Orthod__V1__ParameterInfo *msg, orthod_param_info_t *info,
                          char *err);

/* Chunks received for one tensor: (offset, count) pairs, checked at the end. */
typedef struct orthod__cl_cover {
  uint64_t *pairs; /* 2 * n */
  size_t n, cap;
  uint64_t total;  /* elements received so far */
} orthod__cl_cover_t;

/* Record a chunk; 0 or RESOURCE_EXHAUSTED. */
int orthod__cl_cover_add(orthod__cl_cover_t *cv, uint64_t offset, uint64_t count, char *err);
/* True when the chunks cover 0..elements exactly once. */
bool orthod__cl_cover_complete(orthod__cl_cover_t *cv, uint64_t elements);
void orthod__cl_cover_free(orthod__cl_cover_t *cv);

/* Elements per message for a dtype under the client's chunk_bytes (>= 1). */
size_t orthod__cl_chunk_elements(const orthod_client_t *c, orthod_client_dtype_t wire);

#endif
