/* orthod/client.h — liborthod-client: the orthod.v1 API from C, over gRPC core.
 *
 * Every function that talks to the daemon returns an int status: the gRPC status code (0 = OK,
 * 5 = NOT_FOUND, ...; see orthod_client_status_name) and, on failure, fills the handle's
 * last-error message "CODE_NAME: message" (orthod_client_last_error, orthod_step_last_error).
 * Errors found by the client itself (bad arguments, a reply that does not cover a buffer) use
 * the same codes: INVALID_ARGUMENT for bad arguments, DATA_LOSS for malformed replies,
 * RESOURCE_EXHAUSTED for memory. The one value outside the gRPC codes is
 * ORTHOD_HEALTH_WATCH_TIMEOUT (-1) from orthod_health_watch_next. Nothing here calls exit() or
 * aborts on bad input.
 *
 * Threads: a handle (client, step stream or health watch) is used by one thread at a time.
 * Different clients may be used from different threads; a step stream or a health watch may run
 * on another thread than its client (each has its own completion queue and its own last-error),
 * but every stream and watch must be destroyed (closed) before its client. Calls block the
 * calling thread; there are no callbacks from other threads.
 *
 * Tensor data: caller buffers are flat, row-major, in a host dtype (f32, bf16 or f16); the wire
 * dtype may differ, conversions use round-to-nearest-even like the daemon. Data moves in chunks
 * of options.chunk_bytes (default 1 MiB). */
#ifndef ORTHOD_CLIENT_H
#define ORTHOD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define ORTHOD_CLIENT_API __attribute__((visibility("default")))
#else
#define ORTHOD_CLIENT_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define ORTHOD_CLIENT_PROTOCOL_VERSION 1 /* sent as metadata orthod-protocol-version */
#define ORTHOD_CLIENT_MAX_DIMS 8
#define ORTHOD_CLIENT_NAME_MAX 255 /* bytes of a parameter name */

typedef struct orthod_client orthod_client_t;
typedef struct orthod_step_stream orthod_step_stream_t;
typedef struct orthod_health_watch orthod_health_watch_t;

/* Element types; the values are those of orthod.v1.DType. 0 (DEFAULT) means F32. */
typedef enum {
  ORTHOD_CLIENT_DEFAULT = 0,
  ORTHOD_CLIENT_F32 = 1,  /* IEEE binary32, 4 bytes */
  ORTHOD_CLIENT_BF16 = 2, /* bfloat16 (uint16_t bit patterns), 2 bytes */
  ORTHOD_CLIENT_F16 = 3,  /* IEEE binary16 (uint16_t bit patterns), 2 bytes */
} orthod_client_dtype_t;

/* How the pushes of several workers combine; values of orthod.v1.SyncMode. */
typedef enum {
  ORTHOD_SYNC_DEFAULT = 0, /* SYNC when workers > 1, else ASYNC */
  ORTHOD_SYNC = 1,
  ORTHOD_ASYNC = 2,
} orthod_sync_mode_t;

/* ---- client -------------------------------------------------------------------------------- */

typedef struct orthod_client_options {
  int64_t deadline_ms;           /* per unary call, Upload and Pull, and per step wait; 0: none
                                    (default 60000) */
  size_t chunk_bytes;            /* bytes of tensor data per message (default 1 MiB) */
  size_t max_message_bytes;      /* largest message received (default 64 MiB) */
  unsigned keepalive_time_ms;    /* HTTP/2 ping interval while calls are open, so idle Step
                                    streams survive NATs and load balancers; 0: off; otherwise
                                    at least 10000, the daemon's permit (default 30000) */
  unsigned keepalive_timeout_ms; /* a ping unanswered this long closes the connection (20000) */
  const char *token;             /* bearer token sent as "authorization: Bearer <token>"; NULL:
                                    none (copied at create) */
  /* TLS (appended, so callers that fill opts with orthod_client_options_init or a designated
     initializer need no change). The files are read once, at create. Setting any tls_* field,
     or tls, makes the channel TLS only: a daemon without TLS then fails every call with
     UNAVAILABLE. */
  const char *tls_ca_file;       /* PEM CA bundle that verifies the daemon's certificate; NULL:
                                    gRPC's default roots ($GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, else
                                    its built-in set) (default NULL) */
  const char *tls_cert_file;     /* PEM certificate chain of this client, for a daemon that
                                    requires client certificates (mutual TLS) (default NULL) */
  const char *tls_key_file;      /* PEM private key of tls_cert_file; both or neither (NULL) */
  bool tls;                      /* TLS even when no tls_* file is given: default roots, no
                                    client certificate (default false) */
  const char *tls_server_name;   /* name checked against the daemon's certificate instead of
                                    the host of the address (grpc.ssl_target_name_override), e.g.
                                    when connecting by IP to a certificate issued for a DNS name;
                                    NULL: the host of the address (default NULL) */
  /* Appended after the TLS fields: options filled without orthod_client_options_init (a
     designated initializer) get 0 here, the single reply of before. */
  unsigned list_page_size;       /* params per List reply while orthod_list collects them
                                    (default 1000); 0: one reply, which fails with
                                    RESOURCE_EXHAUSTED once the list outgrows max_message_bytes
                                    or the daemon's send limit */
} orthod_client_options_t;

/* Fill opts with the defaults above (zero for every field not named there). */
ORTHOD_CLIENT_API void orthod_client_options_init(orthod_client_options_t *opts);

/* Create a client for `address` ("host:port", any gRPC target). opts may be NULL (defaults).
 * Connection happens lazily, at the first call. On success *out owns the client (free it with
 * orthod_client_destroy); on failure *out is NULL, the status says why and
 * orthod_client_create_error the details: INVALID_ARGUMENT for bad options (keepalive_time_ms
 * below 10000, an unreadable or non-PEM tls_* file, only one of tls_cert_file and
 * tls_key_file), RESOURCE_EXHAUSTED for memory. TLS problems with the daemon itself (an
 * untrusted certificate, a name that does not match, a client certificate it refuses) show at
 * the first call, as UNAVAILABLE. */
ORTHOD_CLIENT_API int orthod_client_create(const char *address,
                                           const orthod_client_options_t *opts,
                                           orthod_client_t **out);

/* Why the last orthod_client_create (or orthod_sharded_create) on the calling thread failed:
 * "INVALID_ARGUMENT: cannot read tls_ca_file '/x': No such file or directory"; "" after a
 * success. Thread-local (there is no client to hold it); valid until the next create on the
 * thread. */
ORTHOD_CLIENT_API const char *orthod_client_create_error(void);

/* Close the channel and free the client (NULL is a no-op). Destroy its step streams first. */
ORTHOD_CLIENT_API void orthod_client_destroy(orthod_client_t *client);

/* The last error of a call on this client: "NOT_FOUND: parameter 'x' not found"; "" after a
 * success. Valid until the next call on the client. */
ORTHOD_CLIENT_API const char *orthod_client_last_error(const orthod_client_t *client);

/* "OK", "CANCELLED", ... "UNAUTHENTICATED" for a gRPC status code; "UNKNOWN" outside 0..16. */
ORTHOD_CLIENT_API const char *orthod_client_status_name(int status);

/* Bytes per element of a dtype (DEFAULT counts as F32); 0 if invalid. */
ORTHOD_CLIENT_API size_t orthod_client_dtype_size(orthod_client_dtype_t dtype);

/* Convert n elements between dtypes (round-to-nearest-even); dst and src must not overlap
 * unless the dtypes are equal. Returns 0 or INVALID_ARGUMENT for a bad dtype. */
ORTHOD_CLIENT_API int orthod_client_convert(void *dst, orthod_client_dtype_t dst_dtype,
                                            const void *src, orthod_client_dtype_t src_dtype,
                                            size_t n);

/* ---- parameters ---------------------------------------------------------------------------- */

typedef struct orthod_option {
  const char *key;   /* engine key: "lr", "split_rows", ... (docs/ENGINE.md) */
  const char *value; /* its text: "0.02", "32,32,32" */
} orthod_option_t;

/* Everything that defines a parameter (borrowed by orthod_register). */
typedef struct orthod_param_spec {
  const char *name;                       /* 1..255 bytes */
  int ndim;                               /* 1..8 */
  int64_t shape[ORTHOD_CLIENT_MAX_DIMS];  /* each >= 1 */
  const char *algorithm;                  /* "muon", "adamw", ...; NULL/"": daemon's choice */
  const orthod_option_t *options;         /* n_options hyper-parameters over the defaults */
  size_t n_options;
  uint32_t workers;                       /* data-parallel workers; 0 means 1 */
  orthod_sync_mode_t sync_mode;
  uint64_t max_staleness;                 /* ASYNC: accepted steps behind the current one */
  uint32_t sync_timeout_ms;               /* SYNC: wait for missing workers; 0: daemon default */
} orthod_param_spec_t;

/* What the daemon reports about a parameter. Strings and options are owned by the info: free
 * them with orthod_param_info_clear. */
typedef struct orthod_param_info {
  char *name;
  int ndim;
  int64_t shape[ORTHOD_CLIENT_MAX_DIMS];
  char *algorithm;
  orthod_option_t *options;               /* the effective value of every key */
  size_t n_options;
  uint32_t workers;
  orthod_sync_mode_t sync_mode;
  uint64_t max_staleness;
  uint32_t sync_timeout_ms;
  uint64_t step;                          /* optimizer steps applied so far */
  uint64_t elements;                      /* product of the shape */
  uint64_t device_bytes;                  /* weights + optimizer state on the device */
  void *storage_;                         /* private: the allocation behind the pointers */
} orthod_param_info_t;

/* Free what an info owns and zero it (safe on a zeroed info and twice). */
ORTHOD_CLIENT_API void orthod_param_info_clear(orthod_param_info_t *info);

/* Value of option `key` in an info, NULL if absent. */
ORTHOD_CLIENT_API const char *orthod_param_info_option(const orthod_param_info_t *info,
                                                       const char *key);

/* Register a parameter (idempotent for an identical spec; ALREADY_EXISTS for a different one).
 * info (may be NULL) receives the parameter as registered; created (may be NULL) tells whether
 * it is new. */
ORTHOD_CLIENT_API int orthod_register(orthod_client_t *client, const orthod_param_spec_t *spec,
                                      orthod_param_info_t *info, bool *created);

/* Describe one parameter into info (clear it afterwards). */
ORTHOD_CLIENT_API int orthod_describe(orthod_client_t *client, const char *name,
                                      orthod_param_info_t *info);

/* Drop a parameter; step (may be NULL) receives the counter it had. */
ORTHOD_CLIENT_API int orthod_drop(orthod_client_t *client, const char *name, uint64_t *step);

/* Change hyper-parameters; info (may be NULL) receives the result. */
ORTHOD_CLIENT_API int orthod_set_config(orthod_client_t *client, const char *name,
                                        const orthod_option_t *options, size_t n_options,
                                        orthod_param_info_t *info);

typedef struct orthod_param_list {
  orthod_param_info_t *params; /* n, in name order */
  size_t n;
  uint64_t device_bytes_used;
  uint64_t device_bytes_limit; /* 0: no limit */
} orthod_param_list_t;

/* List the parameters whose names start with prefix (NULL or "": all) into *list; free it with
 * orthod_param_list_clear. The list is fetched in pages of options.list_page_size parameters,
 * one List call each (each bounded by deadline_ms), until the daemon says it sent the last:
 * *list holds them all, in name order, and the device bytes of the last reply. Parameters
 * registered or dropped meanwhile may or may not be listed; none is listed twice. A failed page
 * fails the whole list (*list is then empty). DATA_LOSS when the daemon's paging does not move
 * on (a next_page_token repeated or with an empty page, a page that does not start after the
 * previous one), rather than asking for the same page forever. */
ORTHOD_CLIENT_API int orthod_list(orthod_client_t *client, const char *prefix,
                                  orthod_param_list_t *list);
ORTHOD_CLIENT_API void orthod_param_list_clear(orthod_param_list_t *list);

/* ---- checkpoints --------------------------------------------------------------------------- */

#define ORTHOD_CLIENT_PATH_MAX 4096 /* bytes of a checkpoint path, its NUL included */

/* What a checkpoint holds and where the daemon put it. (The client_ prefix keeps it apart from
 * the engine's orthod_checkpoint_info_t, as orthod_client_dtype_t is from orthod_dtype_t.) */
typedef struct orthod_client_checkpoint_info {
  char path[ORTHOD_CLIENT_PATH_MAX]; /* the file written, as the daemon names it (a path on the
                                        daemon's machine, in its state directory) */
  uint64_t sequence;                 /* one more than the previous checkpoint of that directory */
  uint32_t parameters;               /* parameters in the checkpoint */
  uint64_t bytes;                    /* size of the file */
} orthod_client_checkpoint_info_t;

/* Have the daemon write a checkpoint of every parameter (weights, optimizer state, step counter,
 * spec) to its state directory; returns once the file is durable. It holds every change the
 * daemon acknowledged before the call. info (may be NULL) receives what was written. The wait is
 * bounded by deadline_ms like every unary call: DEADLINE_EXCEEDED does not mean that no file was
 * written. UNAVAILABLE while the daemon shuts down; INTERNAL (RESOURCE_EXHAUSTED for a full disk)
 * when the file cannot be written, the message naming it. Safe to repeat: a retry writes one more
 * checkpoint, with the next sequence. */
ORTHOD_CLIENT_API int orthod_checkpoint(orthod_client_t *client,
                                        orthod_client_checkpoint_info_t *info);

/* ---- health (grpc.health.v1.Health) ------------------------------------------------------ */

/* ServingStatus values of grpc.health.v1 (what orthod_health_check and a watch report). */
typedef enum {
  ORTHOD_HEALTH_UNKNOWN = 0,
  ORTHOD_HEALTH_SERVING = 1,
  ORTHOD_HEALTH_NOT_SERVING = 2,    /* the daemon is shutting down */
  ORTHOD_HEALTH_SERVICE_UNKNOWN = 3 /* Watch of a service name the daemon does not know */
} orthod_health_status_t;

/* "UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"; "UNKNOWN" outside 0..3. */
ORTHOD_CLIENT_API const char *orthod_health_status_name(int status);

/* grpc.health.v1.Health/Check for `service` (NULL or "": the whole server). serving (may be
 * NULL) receives the ServingStatus: 1 SERVING, 2 NOT_SERVING, 0 UNKNOWN. An unknown service is
 * NOT_FOUND. */
ORTHOD_CLIENT_API int orthod_health_check(orthod_client_t *client, const char *service,
                                          int *serving);

/* orthod_health_watch_next: nothing arrived within its timeout; the watch stays open. */
#define ORTHOD_HEALTH_WATCH_TIMEOUT (-1)

/* Open grpc.health.v1.Health/Watch for `service` (NULL or "": the whole server): a
 * server-streaming call on which the daemon sends the current status at once and again on every
 * change (NOT_SERVING when it starts to shut down, then it ends the stream with UNAVAILABLE).
 * deadline_ms bounds the whole call (it then ends with DEADLINE_EXCEEDED); 0: none, the usual
 * choice for a watch; negative is INVALID_ARGUMENT. Returns without waiting for the daemon: a
 * daemon that cannot be reached shows as the stream's end status in orthod_health_watch_next.
 * *out owns the watch (orthod_health_watch_close); errors go to the client's last error. */
ORTHOD_CLIENT_API int orthod_health_watch_open(orthod_client_t *client, const char *service,
                                               int64_t deadline_ms, orthod_health_watch_t **out);

/* Wait at most timeout_ms (< 0: no limit; 0: only look) for the next status:
 *   0                            *status holds it (an orthod_health_status_t value);
 *   ORTHOD_HEALTH_WATCH_TIMEOUT  nothing arrived in time: call again;
 *   anything else                the stream is over, with this gRPC status (the daemon's:
 *                                UNAVAILABLE "orthod is shutting down" after NOT_SERVING; the
 *                                transport's: UNAVAILABLE when the daemon cannot be reached;
 *                                DEADLINE_EXCEEDED; DATA_LOSS for a malformed message). A stream
 *                                the daemon ends with OK reads as UNAVAILABLE, since a Watch only
 *                                ends when the daemon goes away. Every later call returns the
 *                                same status.
 * Statuses that arrived before the end are all returned first. */
ORTHOD_CLIENT_API int orthod_health_watch_next(orthod_health_watch_t *watch, int64_t timeout_ms,
                                               int *status);

/* The watch's last error: "UNAVAILABLE: orthod is shutting down" once the stream is over; ""
 * after a status or a timeout. */
ORTHOD_CLIENT_API const char *orthod_health_watch_last_error(const orthod_health_watch_t *watch);

/* Cancel the call if it is still open and free the watch (NULL is a no-op). */
ORTHOD_CLIENT_API void orthod_health_watch_close(orthod_health_watch_t *watch);

/* ---- weights: upload and pull ------------------------------------------------------------ */

/* A caller buffer holding (upload) or receiving (pull) one parameter's weights. */
typedef struct orthod_tensor {
  const char *name;
  void *data;                  /* `elements` values of `dtype`; const for uploads */
  orthod_client_dtype_t dtype; /* host dtype of data */
  size_t elements;             /* must equal the parameter's element count */
  uint64_t step;               /* pull: out, the parameter's step counter */
} orthod_tensor_t;

/* Set the weights of n parameters in one Upload call (all written at once, or none). wire is
 * the dtype sent (DEFAULT: each tensor's own dtype). infos (may be NULL) receives up to n
 * ParameterInfo (clear each); n_infos (may be NULL) how many. */
ORTHOD_CLIENT_API int orthod_upload(orthod_client_t *client, const orthod_tensor_t *tensors,
                                    size_t n, orthod_client_dtype_t wire,
                                    orthod_param_info_t *infos, size_t *n_infos);

/* Pull the current weights of n parameters into their buffers (converted from `wire`, DEFAULT:
 * F32), checking that every element is covered exactly once; tensors[i].step receives the
 * counter. */
ORTHOD_CLIENT_API int orthod_pull(orthod_client_t *client, orthod_tensor_t *tensors, size_t n,
                                  orthod_client_dtype_t wire);

/* One chunk of a pull, as the callback sees it (valid during the callback only). */
typedef struct orthod_pull_chunk {
  const char *name;
  uint64_t step;
  int ndim;                              /* the parameter's shape (repeated on every chunk) */
  const int64_t *shape;
  uint64_t elements;                     /* product of the shape */
  uint64_t offset;                       /* first element of this chunk */
  size_t count;                          /* elements in this chunk */
  orthod_client_dtype_t dtype;           /* of data (the wire dtype) */
  const void *data;                      /* count elements; not aligned: memcpy it */
  bool first;                            /* first chunk of this parameter */
  bool last;                             /* last chunk of this parameter */
} orthod_pull_chunk_t;

/* Return 0 to go on; anything else cancels the pull (status CANCELLED). */
typedef int (*orthod_pull_cb)(void *arg, const orthod_pull_chunk_t *chunk);

/* Pull n named parameters (n == 0: every parameter, in name order), calling cb per chunk. */
ORTHOD_CLIENT_API int orthod_pull_each(orthod_client_t *client, const char *const *names,
                                       size_t n, orthod_client_dtype_t wire, orthod_pull_cb cb,
                                       void *arg);

/* ---- the training loop: step streams ----------------------------------------------------- */

/* One parameter's push: its gradient goes out, its new weights come back into `weights`.
 * The caller owns the item and its buffers until the push is answered (orthod_step_wait). */
typedef struct orthod_step_item {
  const char *name;
  uint64_t step;                    /* the parameter's counter the gradient was computed at */
  const void *grad;                 /* `elements` values of grad_dtype */
  orthod_client_dtype_t grad_dtype; /* host dtype of grad */
  orthod_client_dtype_t grad_wire;  /* dtype on the wire (DEFAULT: grad_dtype) */
  size_t elements;
  bool has_lr;                      /* send lr (a schedule) instead of the configured one */
  double lr;
  void *weights;                    /* receives the new weights; NULL: no_reply push */
  orthod_client_dtype_t weights_dtype; /* host dtype of weights */
  orthod_client_dtype_t reply_dtype;   /* dtype on the wire (DEFAULT: weights_dtype) */
  uint64_t new_step;                /* out: the counter after the update (0 for no_reply) */
} orthod_step_item_t;

/* Open a Step stream (one bidirectional call, meant to stay open for the whole training run).
 * *out owns it: orthod_step_finish and/or orthod_step_destroy. */
ORTHOD_CLIENT_API int orthod_step_open(orthod_client_t *client, orthod_step_stream_t **out);

/* Send the gradients of n items as worker `worker_rank` without waiting for the replies (so
 * several workers or streams can push before anyone waits). Replies that arrive meanwhile are
 * consumed. Items stay pending until orthod_step_wait. */
ORTHOD_CLIENT_API int orthod_step_push(orthod_step_stream_t *stream, uint32_t worker_rank,
                                       orthod_step_item_t *items, size_t n);

/* Wait until every pending item has its new weights (each chunk checked: right parameter and
 * size, every element covered exactly once). Waits at most deadline_ms (then
 * DEADLINE_EXCEEDED and the stream is cancelled). */
ORTHOD_CLIENT_API int orthod_step_wait(orthod_step_stream_t *stream);

/* orthod_step_push then orthod_step_wait. */
ORTHOD_CLIENT_API int orthod_step(orthod_step_stream_t *stream, uint32_t worker_rank,
                                  orthod_step_item_t *items, size_t n);

/* The stream's last error ("" after a success). After an error from the daemon, the transport
 * or a reply check the stream is over: every later call returns the same status; open a new
 * one. Argument errors (INVALID_ARGUMENT before anything was sent) leave it usable. */
ORTHOD_CLIENT_API const char *orthod_step_last_error(const orthod_step_stream_t *stream);

/* Half-close the stream and return the daemon's final status (waits for pending replies first). */
ORTHOD_CLIENT_API int orthod_step_finish(orthod_step_stream_t *stream);

/* Cancel the stream if still open and free it (NULL is a no-op). */
ORTHOD_CLIENT_API void orthod_step_destroy(orthod_step_stream_t *stream);

#ifdef __cplusplus
}
#endif
#endif
