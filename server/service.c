/* server/service.c — the orthod.v1.Optimizer service: RPC handlers, the loop-side registry of
 * parameters, synchronous/asynchronous step semantics, chunk assembly and weight streaming.
 *
 * Semantics chosen here (docs/PROTOCOL.md is built from this block):
 * - Threads. Everything in this file runs on the loop thread except the `run` functions of the
 *   jobs, which run on the device thread and are the only code that touches the store. The loop
 *   keeps its own registry (name → shape, effective spec, step counter, pending pushes) so that
 *   validation, List and Describe never wait for the device.
 * - Registry. A parameter enters the registry when its Register request is accepted and becomes
 *   visible to the other RPCs when the store has created it. Drop removes it from the registry at
 *   once (a Register of the same name afterwards is a new parameter); the device runs jobs in
 *   order, so steps submitted before the Drop still complete and reply.
 * - ParameterInfo.spec holds effective values: workers >= 1, sync_mode SYNC or ASYNC (never
 *   UNSPECIFIED), sync_timeout_ms the timeout in force (0 for ASYNC), every option key of the
 *   engine with its current value. Register compares these effective values for idempotency.
 * - Register: an empty algorithm picks orthod_algo_for(shape, role) where role is taken from the
 *   options; options apply in order over the algorithm's defaults ("algo" among the options
 *   resets the others, as the engine's key table does). max_staleness must be 0 for SYNC.
 * - Chunks are converted to fp32 on arrival; a chunk equal to one received before (same range,
 *   same values after conversion) is ignored; the same range with other values, or a range that
 *   overlaps another, is INVALID_ARGUMENT. A gradient chunk that a stream repeats after the step
 *   it belonged to was applied (same rank, step and range; the values are no longer kept) is
 *   ignored too, for the last step applied of each parameter; on any other stream such a push is
 *   stale and gets FAILED_PRECONDITION.
 * - Upload writes nothing until the client half-closes with every named parameter covered; the
 *   writes then run as one device job that first checks every parameter still exists.
 * - Step acceptance (checked at the first chunk of a push and again when it completes): the
 *   "current step" is the store's counter plus the steps already submitted to the device, so
 *   pushes for the next step can arrive while the previous one is still computing. SYNC accepts
 *   step == current; ASYNC accepts current - max_staleness <= step <= current.
 * - SYNC: a push is keyed by (parameter, step, worker_rank); any stream may contribute chunks to
 *   a push, and every stream that did is a "pusher" of that step. The timeout starts at the first
 *   chunk of the step. The mean is the fp32 sum in rank order divided by workers, computed on the
 *   device thread. The learning rate is that of the lowest rank that sent one (else configured).
 * - A cancelled or failed stream drops out of its pushes: an incomplete gradient it was the only
 *   contributor to is discarded (the other workers then time out); a gradient it completed still
 *   counts, the step fires and the stream simply gets no reply.
 * - Half-closing a Step stream while one of its gradients is incomplete is INVALID_ARGUMENT; a
 *   half-closed stream otherwise ends with OK once every step it pushed has been answered.
 * - Non-finite averaged gradient: --nonfinite reject → INVALID_ARGUMENT to every pusher, nothing
 *   applied, counter unchanged; skip → counter advances, weights unchanged, pushers get the
 *   (unchanged) weights with the new counter.
 * - A sync timeout, a Drop or the drain aborts every pending push of the parameter (all steps).
 * - Drain: pending pushes fail UNAVAILABLE, every message arriving afterwards gets UNAVAILABLE,
 *   open Upload streams end with UNAVAILABLE, Step streams end with UNAVAILABLE once the replies
 *   of their in-flight steps are sent; Pull streams finish what they were sending.
 * - Replies stream in chunks of --chunk-bytes of data; at most about four chunks are queued on a
 *   call at a time, the rest follows on on_writable, so a slow reader holds little memory. The
 *   weights are read back once per step in fp32 and converted chunk by chunk to each stream's
 *   reply dtype. Pull reads one parameter at a time (at most two are held per call).
 * - SetConfig: options apply over the current configuration; a key that defines the state
 *   layout (algo, split_rows, num_heads, role, moment2_method, amsgrad, hook) is accepted only
 *   with the value it already has.
 * - Checkpoint (RPC, --checkpoint-interval-s timer, shutdown): a device job queued behind every
 *   job submitted so far, so it holds every change acknowledged before it was asked for; the
 *   daemon's part of each spec (workers, sync mode, staleness, timeout) is stored with the
 *   parameter as text. The timer writes only when a mutating job was submitted since the last
 *   checkpoint and none is in flight. Sequence numbers continue after the newest file at start
 *   and are never reused (a failed write consumes its number). Steps wait while a checkpoint
 *   is written (the device thread writes it).
 * - Restore (start, before serving): the newest checkpoint is loaded whole or the start fails;
 *   parameters come back live with their effective spec and step counter.
 * - Error statuses are logged at info with the peer; cancelled calls at debug. */
#include "service.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "chunks.h"
#include "metrics.h"
#include "orthod/checkpoint.h"
#include "orthod/log.h"
#include "orthod/v1/orthod.pb-c.h"
#include "status.h"
#include "wire.h"

#define MSG_MAX 1024
#define MAX_WORKERS 65536
#define QUEUE_CHUNKS 4
#define FIRED_RING 32

typedef struct ctx ctx_t;
typedef struct param param_t;

/* ---- data ------------------------------------------------------------------------------- */

typedef struct {
  ctx_t *ctx;            /* reference held */
  orthod_dtype_t reply;  /* dtype of the weights sent back */
  bool no_reply;
} pusher_t;

/* One worker's gradient for one step of one parameter. */
typedef struct push {
  struct push *next; /* in param->pushes */
  param_t *p;
  uint64_t step;
  uint32_t rank;
  orthod_chunks_t *chunks;
  bool has_lr;
  double lr;
  pusher_t *pushers;
  size_t n_pushers, cap_pushers;
} push_t;

struct param {
  orthod_service_t *svc;
  int refs;
  bool live;        /* created in the store */
  bool dropped;     /* no longer in the registry */
  int reg_pending;  /* register jobs in flight */
  char *name;
  orthod_shape_t shape;
  uint64_t numel;
  orthod_optim_config_t cfg;
  uint32_t workers;
  int mode;                 /* ORTHOD__V1__SYNC_MODE__SYNC_MODE_SYNC / _ASYNC */
  uint64_t max_staleness;
  uint32_t sync_timeout_ms; /* effective; 0 for ASYNC */
  uint64_t step;            /* the store's counter as last reported by a job */
  uint64_t inflight;        /* step jobs submitted and not done */
  uint64_t bytes;           /* device bytes */
  push_t *pushes;
  /* the ranges (not the values) of the pushes of the last step applied, so that a chunk retried
   * after its step fired is recognised and ignored */
  uint64_t recent_step;
  uint32_t n_recent;
  uint32_t *recent_rank;
  orthod_chunks_t **recent;
  /* SYNC deadline of the pending step (svc->pending list) */
  bool pending;
  uint64_t deadline;
  param_t *pending_prev, *pending_next;
};

/* Weights read back from the device, shared by every stream that sends them. */
typedef struct {
  int refs;
  float *data;
  uint64_t numel;
  char *name;
  uint64_t step;
  int ndim;
  int64_t dims[ORTHOD_MAX_DIMS];
} snap_t;

typedef struct out_item {
  struct out_item *next;
  snap_t *snap;
  orthod_dtype_t dtype;
  uint64_t off;
  bool pull;
} out_item_t;

typedef struct {
  param_t *p; /* reference held */
  orthod_chunks_t *chunks;
} upl_t;

enum {
  M_REGISTER, M_UPLOAD, M_STEP, M_PULL, M_LIST, M_DESCRIBE, M_DROP, M_SETCONFIG, M_CHECKPOINT,
  M_COUNT
};

static const char *const method_names[M_COUNT] = {"Register", "Upload",   "Step",
                                                  "Pull",     "List",     "Describe",
                                                  "Drop",     "SetConfig", "Checkpoint"};
static const char *const request_names[M_COUNT] = {
    "RegisterRequest", "UploadRequest",   "StepRequest", "PullRequest",      "ListRequest",
    "DescribeRequest", "DropRequest",     "SetConfigRequest", "CheckpointRequest"};

struct ctx {
  orthod_service_t *svc;
  orthod_call_t *call; /* NULL after on_done */
  const orthod_token_t *token; /* with --auth-tokens: the call's token (checked at its start) */
  int refs;
  int method;
  bool over;        /* finished (by us or the peer): nothing more is sent */
  bool half_closed;
  bool got_message;
  bool busy;        /* a unary/upload job is in flight */
  ctx_t *prev, *next; /* svc->calls */
  /* Step */
  push_t **pushes;
  size_t n_pushes, cap_pushes;
  size_t inflight;  /* jobs whose results this stream waits for */
  out_item_t *out_head, *out_tail;
  size_t n_out;
  /* the last steps this stream's pushes went into (parameter reference held), so that a chunk
   * the stream repeats after its step fired is ignored rather than refused */
  struct {
    param_t *p;
    uint64_t step;
  } fired[FIRED_RING];
  size_t n_fired;
  /* Upload */
  upl_t *upl;
  size_t n_upl, cap_upl;
  /* Pull */
  param_t **pull;
  size_t n_pull, pull_next;
  orthod_dtype_t pull_dtype;
};

struct orthod_service {
  uv_loop_t *loop;
  orthod_device_t *dev;
  const orthod_server_config_t *cfg;
  orthod_method_t methods[M_COUNT];
  param_t **params; /* registry, sorted by name */
  size_t n_params, cap_params;
  uint64_t bytes_used;
  bool draining;
  ctx_t *calls;
  param_t *pending; /* SYNC parameters with a deadline */
  uv_timer_t *timer;
  uint64_t timer_due; /* 0: not armed */
  uint8_t *scratch;   /* one chunk converted for sending */
  size_t scratch_len;
  orthod_metrics_t *metrics; /* may be NULL */
  const orthod_auth_t *auth; /* --auth-tokens; NULL: every call may do everything */
  /* checkpoints */
  char state_dir[ORTHOD_CHECKPOINT_PATH_MAX]; /* --state-dir made absolute (file names in logs
                                                 and replies do not depend on the cwd) */
  uint64_t changes;        /* mutating device jobs submitted so far */
  uint64_t changes_saved;  /* `changes` as of the newest checkpoint written */
  uint64_t next_sequence;  /* number of the next checkpoint file */
  int ckpt_inflight;       /* checkpoint jobs submitted and not done */
  uv_timer_t *ckpt_timer;  /* --checkpoint-interval-s */
  bool *final_failed;      /* set when the shutdown checkpoint fails */
};

/* ---- small helpers ---------------------------------------------------------------------- */

static size_t chunk_bytes(const orthod_service_t *svc) {
  return svc->cfg->chunk_bytes ? (size_t)svc->cfg->chunk_bytes : (size_t)1 << 20;
}

static const char *mode_name(int mode) {
  return mode == ORTHOD__V1__SYNC_MODE__SYNC_MODE_SYNC ? "SYNC" : "ASYNC";
}

static void recent_clear(param_t *p) {
  for (uint32_t i = 0; i < p->n_recent; i++) orthod_chunks_destroy(p->recent[i]);
  free(p->recent);
  free(p->recent_rank);
  p->recent = NULL;
  p->recent_rank = NULL;
  p->n_recent = 0;
}

static void param_release(param_t *p) {
  if (p == NULL || --p->refs > 0) return;
  recent_clear(p);
  free(p->name);
  free(p);
}

static ptrdiff_t registry_find(const orthod_service_t *svc, const char *name, size_t *at) {
  size_t a = 0, b = svc->n_params;
  while (a < b) {
    size_t m = a + (b - a) / 2;
    int c = strcmp(svc->params[m]->name, name);
    if (c == 0) return (ptrdiff_t)m;
    if (c < 0) a = m + 1;
    else b = m;
  }
  if (at) *at = a;
  return -1;
}

static param_t *registry_get(const orthod_service_t *svc, const char *name) {
  ptrdiff_t i = registry_find(svc, name, NULL);
  return i < 0 ? NULL : svc->params[i];
}

/* A parameter the store has created (registering ones are not visible yet). */
static param_t *registry_live(const orthod_service_t *svc, const char *name) {
  param_t *p = registry_get(svc, name);
  return p != NULL && p->live ? p : NULL;
}

static int registry_insert(orthod_service_t *svc, param_t *p) {
  size_t at = 0;
  if (registry_find(svc, p->name, &at) >= 0) return -1;
  if (svc->n_params == svc->cap_params) {
    size_t cap = svc->cap_params ? svc->cap_params * 2 : 64;
    param_t **n = realloc(svc->params, cap * sizeof *n);
    if (n == NULL) return -1;
    svc->params = n;
    svc->cap_params = cap;
  }
  memmove(svc->params + at + 1, svc->params + at, (svc->n_params - at) * sizeof *svc->params);
  svc->params[at] = p;
  svc->n_params++;
  p->refs++;
  return 0;
}

static void pending_remove(orthod_service_t *svc, param_t *p);

static void registry_remove(orthod_service_t *svc, param_t *p) {
  ptrdiff_t i = registry_find(svc, p->name, NULL);
  if (i < 0 || svc->params[i] != p) return;
  memmove(svc->params + i, svc->params + i + 1,
          (svc->n_params - (size_t)i - 1) * sizeof *svc->params);
  svc->n_params--;
  p->dropped = true;
  if (p->live) svc->bytes_used -= p->bytes;
  pending_remove(svc, p);
  param_release(p);
}

/* ---- calls ------------------------------------------------------------------------------ */

static void ctx_release(ctx_t *ctx);
static void ctx_detach(ctx_t *ctx);
static void ctx_pump(ctx_t *ctx);
static void ctx_maybe_finish(ctx_t *ctx);

static bool ctx_alive(const ctx_t *ctx) {
  return !ctx->over && ctx->call != NULL && !orthod_call_is_over(ctx->call);
}

/* End the call with a status (once), log errors, and drop out of every pending push. */
static void ctx_end(ctx_t *ctx, grpc_status_code code, const char *msg) {
  if (ctx->over) return;
  ctx->over = true;
  if (ctx->call != NULL) {
    if (code != GRPC_STATUS_OK) {
      orthod_metrics_rpc_error(ctx->svc->metrics, method_names[ctx->method], code);
      ORTHOD_LOG(code == GRPC_STATUS_INTERNAL ? ORTHOD_LOG_WARN : ORTHOD_LOG_INFO,
                 "%s from %s: %s: %s", method_names[ctx->method], orthod_call_peer(ctx->call),
                 orthod_status_name(code), msg);
    }
    orthod_call_finish(ctx->call, code, msg);
  }
  ctx_detach(ctx);
}

static void ctx_fail(ctx_t *ctx, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ctx_fail(ctx_t *ctx, grpc_status_code code, const char *fmt, ...) {
  char msg[MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  ctx_end(ctx, code, msg);
}

/* Fail with an engine error: its gRPC code and "<prefix>: <detail>". */
static void ctx_fail_err(ctx_t *ctx, orthod_err_t err, const char *detail) {
  ctx_end(ctx, orthod_status_from_err(err), detail && detail[0] ? detail : orthod_strerror(err));
}

/* Host memory ran out while handling the call: the call fails, the daemon goes on. */
static void ctx_oom(ctx_t *ctx) {
  ctx_fail(ctx, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of host memory handling %s",
           method_names[ctx->method]);
}

static const char *access_name(orthod_access_t a) {
  return a == ORTHOD_ACCESS_ADMIN ? "admin" : a == ORTHOD_ACCESS_WRITE ? "write" : "read";
}

/* With --auth-tokens: may this call read (or write) parameter `name`? If not, the call fails
 * with PERMISSION_DENIED. Checked before the name is looked up, so that a token cannot learn
 * which names outside its prefixes exist. */
static bool permitted(ctx_t *ctx, const char *name, orthod_access_t need) {
  if (ctx->svc->auth == NULL || orthod_token_allows(ctx->token, name, need)) return true;
  ctx_fail(ctx, GRPC_STATUS_PERMISSION_DENIED,
           "token '%s' (%s access to names %s) may not %s '%s'", orthod_token_name(ctx->token),
           access_name(orthod_token_access(ctx->token)), orthod_token_prefixes(ctx->token),
           need == ORTHOD_ACCESS_READ ? "read" : "write", name);
  return false;
}

/* List and Pull of everything: only what the token may read. */
static bool readable(const ctx_t *ctx, const char *name) {
  return ctx->svc->auth == NULL || orthod_token_allows(ctx->token, name, ORTHOD_ACCESS_READ);
}

static void ctx_reply(ctx_t *ctx, const ProtobufCMessage *msg) {
  if (!ctx_alive(ctx)) return;
  if (orthod_wire_send(ctx->call, msg) != 0) {
    ctx_fail(ctx, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory encoding the response");
    return;
  }
  ctx_end(ctx, GRPC_STATUS_OK, NULL);
}

static void snap_release(snap_t *s) {
  if (s == NULL || --s->refs > 0) return;
  free(s->data);
  free(s->name);
  free(s);
}

static void out_free_all(ctx_t *ctx) {
  while (ctx->out_head != NULL) {
    out_item_t *it = ctx->out_head;
    ctx->out_head = it->next;
    snap_release(it->snap);
    free(it);
  }
  ctx->out_tail = NULL;
  ctx->n_out = 0;
}

static void ctx_free(ctx_t *ctx) {
  for (size_t i = 0; i < FIRED_RING; i++) param_release(ctx->fired[i].p);
  free(ctx->pushes);
  out_free_all(ctx);
  for (size_t i = 0; i < ctx->n_upl; i++) {
    orthod_chunks_destroy(ctx->upl[i].chunks);
    param_release(ctx->upl[i].p);
  }
  free(ctx->upl);
  for (size_t i = 0; i < ctx->n_pull; i++) param_release(ctx->pull[i]);
  free(ctx->pull);
  free(ctx);
}

static void ctx_release(ctx_t *ctx) {
  if (ctx != NULL && --ctx->refs == 0) ctx_free(ctx);
}

/* ---- pushes ----------------------------------------------------------------------------- */

static void push_unlink_ctx(push_t *push, ctx_t *ctx) {
  for (size_t i = 0; i < ctx->n_pushes; i++)
    if (ctx->pushes[i] == push) {
      ctx->pushes[i] = ctx->pushes[--ctx->n_pushes];
      return;
    }
}

/* Remove a push from its parameter's list (the pushers are not touched). */
static void push_unlink_param(push_t *push) {
  param_t *p = push->p;
  for (push_t **pp = &p->pushes; *pp != NULL; pp = &(*pp)->next)
    if (*pp == push) {
      *pp = push->next;
      break;
    }
  push->next = NULL;
  if (p->pushes == NULL) pending_remove(p->svc, p);
}

/* Free a push that is no longer linked anywhere; the pusher references are released. */
static void push_free(push_t *push) {
  for (size_t i = 0; i < push->n_pushers; i++) ctx_release(push->pushers[i].ctx);
  free(push->pushers);
  orthod_chunks_destroy(push->chunks);
  param_release(push->p);
  free(push);
}

/* Take the push out of the parameter and of every pusher; returns the pushers (references
 * transferred to the caller, n in *n). */
static pusher_t *push_take(push_t *push, size_t *n) {
  push_unlink_param(push);
  for (size_t i = 0; i < push->n_pushers; i++) push_unlink_ctx(push, push->pushers[i].ctx);
  pusher_t *ps = push->pushers;
  *n = push->n_pushers;
  push->pushers = NULL;
  push->n_pushers = 0;
  return ps;
}

/* Fail every pending push of p (all steps): each stream that contributed ends with code/msg. */
static void param_abort_pushes(param_t *p, grpc_status_code code, const char *msg) {
  pusher_t *all = NULL;
  size_t n_all = 0, cap = 0;
  while (p->pushes != NULL) {
    push_t *push = p->pushes;
    size_t n = 0;
    pusher_t *ps = push_take(push, &n);
    for (size_t i = 0; i < n; i++) {
      if (n_all == cap) {
        size_t c2 = cap ? cap * 2 : 8;
        pusher_t *a2 = realloc(all, c2 * sizeof *a2);
        if (a2 == NULL) { /* cannot remember it: end it now */
          ctx_end(ps[i].ctx, code, msg);
          ctx_release(ps[i].ctx);
          continue;
        }
        all = a2;
        cap = c2;
      }
      all[n_all++] = ps[i];
    }
    free(ps);
    push_free(push);
  }
  for (size_t i = 0; i < n_all; i++) {
    ctx_end(all[i].ctx, code, msg);
    ctx_maybe_finish(all[i].ctx);
    ctx_release(all[i].ctx);
  }
  free(all);
}

/* A stream ends: leave every push; an incomplete push nobody else contributes to is discarded. */
static void ctx_detach(ctx_t *ctx) {
  while (ctx->n_pushes > 0) {
    push_t *push = ctx->pushes[--ctx->n_pushes];
    for (size_t i = 0; i < push->n_pushers; i++)
      if (push->pushers[i].ctx == ctx) {
        push->pushers[i] = push->pushers[--push->n_pushers];
        ctx_release(ctx);
        break;
      }
    if (push->n_pushers == 0 && !orthod_chunks_complete(push->chunks)) {
      push_unlink_param(push);
      push_free(push);
    }
  }
  out_free_all(ctx);
}

/* ---- sync deadlines --------------------------------------------------------------------- */

static void timer_cb(uv_timer_t *t);

static void timer_arm(orthod_service_t *svc, uint64_t due) {
  if (svc->timer_due != 0 && svc->timer_due <= due) return;
  uint64_t now = uv_now(svc->loop);
  uv_timer_start(svc->timer, timer_cb, due > now ? due - now : 0, 0);
  svc->timer_due = due;
}

static void pending_add(orthod_service_t *svc, param_t *p, uint64_t deadline) {
  if (p->pending) return;
  p->pending = true;
  p->deadline = deadline;
  p->pending_prev = NULL;
  p->pending_next = svc->pending;
  if (svc->pending) svc->pending->pending_prev = p;
  svc->pending = p;
  timer_arm(svc, deadline);
}

static void pending_remove(orthod_service_t *svc, param_t *p) {
  if (!p->pending) return;
  if (p->pending_prev) p->pending_prev->pending_next = p->pending_next;
  else svc->pending = p->pending_next;
  if (p->pending_next) p->pending_next->pending_prev = p->pending_prev;
  p->pending = false;
  p->pending_prev = p->pending_next = NULL;
}

static void sync_timeout(param_t *p) {
  /* the step of the oldest pending push names the step in the message */
  uint64_t step = UINT64_MAX;
  for (push_t *x = p->pushes; x; x = x->next)
    if (x->step < step) step = x->step;
  char ranks[512] = "";
  size_t at = 0, missing = 0;
  for (uint32_t r = 0; r < p->workers && at < sizeof ranks - 16; r++) {
    bool have = false;
    for (push_t *x = p->pushes; x; x = x->next)
      if (x->step == step && x->rank == r && orthod_chunks_complete(x->chunks)) have = true;
    if (have) continue;
    at += (size_t)snprintf(ranks + at, sizeof ranks - at, "%s%" PRIu32, missing ? "," : "", r);
    missing++;
  }
  char msg[MSG_MAX];
  snprintf(msg, sizeof msg, "step %" PRIu64 " of '%s': worker rank%s %s did not push within %" PRIu32
           " ms", step, p->name, missing == 1 ? "" : "s", ranks, p->sync_timeout_ms);
  param_abort_pushes(p, GRPC_STATUS_ABORTED, msg);
}

static void timer_cb(uv_timer_t *t) {
  orthod_service_t *svc = t->data;
  svc->timer_due = 0;
  uint64_t now = uv_now(svc->loop);
  for (;;) {
    param_t *expired = NULL;
    for (param_t *p = svc->pending; p; p = p->pending_next)
      if (p->deadline <= now) {
        expired = p;
        break;
      }
    if (expired == NULL) break;
    pending_remove(svc, expired);
    expired->refs++;
    sync_timeout(expired);
    param_release(expired);
  }
  uint64_t next = 0;
  for (param_t *p = svc->pending; p; p = p->pending_next)
    if (next == 0 || p->deadline < next) next = p->deadline;
  if (next != 0) timer_arm(svc, next);
}

/* ---- ParameterInfo ---------------------------------------------------------------------- */

typedef struct {
  Orthod__V1__ParameterInfo info;
  Orthod__V1__ParameterSpec spec;
  Orthod__V1__Option *opts;
  Orthod__V1__Option **optp;
  char *vals; /* the values, NUL-separated, sized to fit (List may build many) */
  size_t n;
} info_t;

#define VAL_LEN 512

static int info_build(const param_t *p, const orthod_optim_config_t *cfg, info_t *b) {
  memset(b, 0, sizeof *b);
  const char *help, *key;
  char v[VAL_LEN];
  size_t nk = 0, total = 0;
  for (; (key = orthod_optim_config_key((int)nk, &help)) != NULL; nk++)
    if (orthod_optim_config_get(cfg, key, v, sizeof v) == ORTHOD_OK) total += strlen(v) + 1;
  b->opts = calloc(nk ? nk : 1, sizeof *b->opts);
  b->optp = calloc(nk ? nk : 1, sizeof *b->optp);
  b->vals = malloc(total ? total : 1);
  if (!b->opts || !b->optp || !b->vals) return -1;
  size_t at = 0;
  for (size_t i = 0; i < nk; i++) {
    key = orthod_optim_config_key((int)i, &help);
    if (orthod_optim_config_get(cfg, key, v, sizeof v) != ORTHOD_OK) continue;
    size_t len = strlen(v) + 1;
    if (at + len > total) break; /* cannot happen: same config, same values */
    memcpy(b->vals + at, v, len);
    orthod__v1__option__init(&b->opts[b->n]);
    b->opts[b->n].key = (char *)key;
    b->opts[b->n].value = b->vals + at;
    b->optp[b->n] = &b->opts[b->n];
    b->n++;
    at += len;
  }
  orthod__v1__parameter_spec__init(&b->spec);
  b->spec.name = p->name;
  b->spec.n_shape = (size_t)p->shape.ndim;
  b->spec.shape = (int64_t *)p->shape.dims;
  b->spec.algorithm = (char *)orthod_algo_name(cfg->algo);
  b->spec.n_options = b->n;
  b->spec.options = b->optp;
  b->spec.workers = p->workers;
  b->spec.sync_mode = (Orthod__V1__SyncMode)p->mode;
  b->spec.max_staleness = p->max_staleness;
  b->spec.sync_timeout_ms = p->sync_timeout_ms;
  orthod__v1__parameter_info__init(&b->info);
  b->info.spec = &b->spec;
  b->info.step = p->step;
  b->info.elements = p->numel;
  b->info.device_bytes = p->bytes;
  return 0;
}

static void info_free(info_t *b) {
  free(b->opts);
  free(b->optp);
  free(b->vals);
}

/* Reply with one ParameterInfo (Describe, SetConfig). */
static void reply_info(ctx_t *ctx, const param_t *p) {
  info_t b;
  if (info_build(p, &p->cfg, &b) != 0) ctx_oom(ctx);
  else ctx_reply(ctx, &b.info.base);
  info_free(&b);
}

/* ---- jobs: common ----------------------------------------------------------------------- */

typedef struct {
  orthod_job_t job;
  ctx_t *ctx;     /* reference held; may be over when done runs */
  param_t *p;     /* reference held */
  orthod_err_t err;
  char detail[MSG_MAX];
  int64_t step;   /* the store's counter after the job */
  uint64_t bytes;
} job_base_t;

static void job_error(job_base_t *j, orthod_err_t err) {
  j->err = err;
  snprintf(j->detail, sizeof j->detail, "%s", orthod_error_detail());
}

static void submit(orthod_service_t *svc, job_base_t *j, ctx_t *ctx, param_t *p,
                   void (*run)(orthod_job_t *, orthod_store_t *), void (*done)(orthod_job_t *)) {
  j->job.run = run;
  j->job.done = done;
  j->ctx = ctx;
  if (ctx) ctx->refs++;
  j->p = p;
  if (p) p->refs++;
  orthod_device_submit(svc->dev, &j->job);
}

/* submit() for a job that may change what a checkpoint would hold (register, write, step,
 * drop, set config): the periodic and shutdown checkpoints are written only after one (a job
 * that then fails at worst costs a checkpoint that was not needed). */
static void submit_change(orthod_service_t *svc, job_base_t *j, ctx_t *ctx, param_t *p,
                          void (*run)(orthod_job_t *, orthod_store_t *),
                          void (*done)(orthod_job_t *)) {
  svc->changes++;
  submit(svc, j, ctx, p, run, done);
}

static void job_base_release(job_base_t *j) {
  ctx_release(j->ctx);
  param_release(j->p);
}

/* ---- Register --------------------------------------------------------------------------- */

typedef struct {
  job_base_t b;
  bool created;
} reg_job_t;

static void reg_run(orthod_job_t *job, orthod_store_t *store) {
  reg_job_t *j = (reg_job_t *)job;
  param_t *p = j->b.p;
  orthod_param_t *sp = NULL;
  orthod_error_clear();
  j->created = orthod_store_get(store, p->name, &sp) != ORTHOD_OK;
  orthod_err_t err = orthod_store_register(store, p->name, &p->shape, &p->cfg, &sp);
  if (err != ORTHOD_OK) {
    job_error(&j->b, err);
    return;
  }
  j->b.step = orthod_param_step(sp);
  j->b.bytes = orthod_param_bytes(sp);
}

static void reg_done(orthod_job_t *job) {
  reg_job_t *j = (reg_job_t *)job;
  param_t *p = j->b.p;
  ctx_t *ctx = j->b.ctx;
  orthod_service_t *svc = p->svc;
  p->reg_pending--;
  if (j->b.err == ORTHOD_OK) {
    if (!p->live && !p->dropped) {
      p->live = true;
      p->bytes = j->b.bytes;
      p->step = (uint64_t)j->b.step;
      svc->bytes_used += p->bytes;
    }
    if (ctx_alive(ctx)) {
      info_t b;
      if (info_build(p, &p->cfg, &b) != 0) {
        ctx_oom(ctx);
      } else {
        Orthod__V1__RegisterResponse r = ORTHOD__V1__REGISTER_RESPONSE__INIT;
        r.info = &b.info;
        r.created = j->created;
        ctx_reply(ctx, &r.base);
      }
      info_free(&b);
    }
  } else {
    if (!p->live && p->reg_pending == 0 && !p->dropped) registry_remove(svc, p);
    char msg[MSG_MAX];
    snprintf(msg, sizeof msg, "register '%s': %.700s", p->name,
             j->b.detail[0] ? j->b.detail : orthod_strerror(j->b.err));
    ctx_fail_err(ctx, j->b.err, msg);
  }
  job_base_release(&j->b);
  free(j);
}

/* First difference between an existing parameter and a requested one, "" when identical. */
static void spec_diff(const param_t *a, const param_t *b, char *out, size_t len) {
  out[0] = '\0';
  if (!orthod_shape_equal(&a->shape, &b->shape)) {
    char sa[256], sb[256];
    snprintf(out, len, "shape %s vs %s",
             orthod_wire_dims_str(a->shape.dims, (size_t)a->shape.ndim, sa, sizeof sa),
             orthod_wire_dims_str(b->shape.dims, (size_t)b->shape.ndim, sb, sizeof sb));
    return;
  }
  if (a->cfg.algo != b->cfg.algo) {
    snprintf(out, len, "algorithm %s vs %s", orthod_algo_name(a->cfg.algo),
             orthod_algo_name(b->cfg.algo));
    return;
  }
  const char *help, *key;
  for (int i = 0; (key = orthod_optim_config_key(i, &help)) != NULL; i++) {
    char va[VAL_LEN] = "", vb[VAL_LEN] = "";
    orthod_optim_config_get(&a->cfg, key, va, sizeof va);
    orthod_optim_config_get(&b->cfg, key, vb, sizeof vb);
    if (strcmp(va, vb) != 0) {
      snprintf(out, len, "option %s %s vs %s", key, va, vb);
      return;
    }
  }
  if (a->workers != b->workers)
    snprintf(out, len, "workers %" PRIu32 " vs %" PRIu32, a->workers, b->workers);
  else if (a->mode != b->mode)
    snprintf(out, len, "sync_mode %s vs %s", mode_name(a->mode), mode_name(b->mode));
  else if (a->max_staleness != b->max_staleness)
    snprintf(out, len, "max_staleness %" PRIu64 " vs %" PRIu64, a->max_staleness, b->max_staleness);
  else if (a->sync_timeout_ms != b->sync_timeout_ms)
    snprintf(out, len, "sync_timeout_ms %" PRIu32 " vs %" PRIu32, a->sync_timeout_ms,
             b->sync_timeout_ms);
}

static void algo_list(char *buf, size_t len) {
  size_t at = 0;
  buf[0] = '\0';
  for (int a = 0; a < ORTHOD_ALGO_COUNT && at < len; a++)
    at += (size_t)snprintf(buf + at, len - at, "%s%s", a ? ", " : "",
                           orthod_algo_name((orthod_algo_t)a));
}

static void handle_register(ctx_t *ctx, const uint8_t *data, size_t len) {
  orthod_service_t *svc = ctx->svc;
  Orthod__V1__RegisterRequest *req = orthod__v1__register_request__unpack(NULL, len, data);
  if (req == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "malformed RegisterRequest message");
    return;
  }
  char err[MSG_MAX];
  param_t *p = calloc(1, sizeof *p);
  if (p == NULL) {
    ctx_oom(ctx);
    goto out;
  }
  p->svc = svc;
  p->refs = 1;
  const Orthod__V1__ParameterSpec *s = req->spec;
  if (s == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "RegisterRequest has no spec");
    goto out;
  }
  if (orthod_wire_check_name(s->name, err, sizeof err) != 0) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "%s", err);
    goto out;
  }
  const char *name = s->name;
  if (!permitted(ctx, name, ORTHOD_ACCESS_WRITE)) goto out;
  if (orthod_wire_shape(s->shape, s->n_shape, svc->cfg->max_tensor_elements, &p->shape, err,
                        sizeof err) != 0) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "parameter '%s': %s", name, err);
    goto out;
  }
  p->numel = (uint64_t)orthod_shape_numel(&p->shape);
  /* algorithm: named, or chosen from the shape and the role among the options */
  orthod_algo_t algo;
  if (s->algorithm[0] != '\0') {
    if (orthod_algo_from_name(s->algorithm, &algo) != ORTHOD_OK) {
      char known[256];
      algo_list(known, sizeof known);
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
               "parameter '%s': unknown algorithm '%s'; known algorithms: %s", name,
               s->algorithm, known);
      goto out;
    }
  } else {
    orthod_optim_config_t tmp;
    orthod_optim_config_default(&tmp, ORTHOD_ALGO_MUON);
    tmp.role = ORTHOD_ROLE_AUTO;
    for (size_t i = 0; i < s->n_options; i++)
      if (s->options[i] && strcmp(s->options[i]->key, "role") == 0)
        (void)orthod_optim_config_set(&tmp, "role", s->options[i]->value);
    algo = orthod_algo_for(&p->shape, tmp.role);
  }
  orthod_optim_config_default(&p->cfg, algo);
  for (size_t i = 0; i < s->n_options; i++) {
    const Orthod__V1__Option *o = s->options[i];
    if (o == NULL) continue;
    orthod_error_clear();
    orthod_err_t e = orthod_optim_config_set(&p->cfg, o->key, o->value);
    if (e != ORTHOD_OK) {
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "parameter '%s': option %s = '%s': %s", name,
               o->key, o->value, orthod_error_detail()[0] ? orthod_error_detail()
                                                         : orthod_strerror(e));
      goto out;
    }
  }
  orthod_error_clear();
  orthod_err_t e = orthod_optim_config_validate(&p->cfg, &p->shape);
  if (e != ORTHOD_OK) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "parameter '%s': %s", name,
             orthod_error_detail()[0] ? orthod_error_detail() : orthod_strerror(e));
    goto out;
  }
  p->workers = s->workers ? s->workers : 1;
  if (p->workers > MAX_WORKERS) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "parameter '%s': workers %" PRIu32
             " is more than %d", name, p->workers, MAX_WORKERS);
    goto out;
  }
  switch (s->sync_mode) {
    case ORTHOD__V1__SYNC_MODE__SYNC_MODE_UNSPECIFIED:
      p->mode = p->workers > 1 ? ORTHOD__V1__SYNC_MODE__SYNC_MODE_SYNC
                               : ORTHOD__V1__SYNC_MODE__SYNC_MODE_ASYNC;
      break;
    case ORTHOD__V1__SYNC_MODE__SYNC_MODE_SYNC:
    case ORTHOD__V1__SYNC_MODE__SYNC_MODE_ASYNC: p->mode = (int)s->sync_mode; break;
    default:
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "parameter '%s': unknown sync_mode %d", name,
               (int)s->sync_mode);
      goto out;
  }
  if (p->mode == ORTHOD__V1__SYNC_MODE__SYNC_MODE_SYNC) {
    if (s->max_staleness != 0) {
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
               "parameter '%s': max_staleness %" PRIu64 " applies only to SYNC_MODE_ASYNC", name,
               s->max_staleness);
      goto out;
    }
    p->sync_timeout_ms = s->sync_timeout_ms ? s->sync_timeout_ms : svc->cfg->sync_timeout_ms;
  } else {
    p->max_staleness = s->max_staleness;
  }
  p->name = strdup(name);
  if (p->name == NULL) {
    ctx_oom(ctx);
    goto out;
  }
  param_t *have = registry_get(svc, name);
  if (have != NULL) {
    char diff[MSG_MAX];
    spec_diff(have, p, diff, sizeof diff);
    if (diff[0] != '\0') {
      ctx_fail(ctx, GRPC_STATUS_ALREADY_EXISTS, "parameter '%s' exists with a different spec: %s",
               name, diff);
      goto out;
    }
    if (have->live) { /* identical and there: idempotent retry */
      info_t b;
      if (info_build(have, &have->cfg, &b) != 0) {
        ctx_oom(ctx);
      } else {
        Orthod__V1__RegisterResponse r = ORTHOD__V1__REGISTER_RESPONSE__INIT;
        r.info = &b.info;
        r.created = false;
        ctx_reply(ctx, &r.base);
      }
      info_free(&b);
      goto out;
    }
    /* still being created: queue behind the first request (the store is idempotent) */
    param_release(p);
    p = have;
    p->refs++;
  } else {
    if (svc->n_params >= svc->cfg->max_params) {
      ctx_fail(ctx, GRPC_STATUS_RESOURCE_EXHAUSTED,
               "cannot register '%s': %zu parameters are registered, the limit "
               "(--max-params) is %" PRIu32, name, svc->n_params, svc->cfg->max_params);
      goto out;
    }
    if (registry_insert(svc, p) != 0) {
      ctx_oom(ctx);
      goto out;
    }
  }
  reg_job_t *j = calloc(1, sizeof *j);
  if (j == NULL) {
    if (!p->live && p->reg_pending == 0) registry_remove(svc, p);
    ctx_oom(ctx);
    goto out;
  }
  p->reg_pending++;
  ctx->busy = true;
  submit_change(svc, &j->b, ctx, p, reg_run, reg_done);
out:
  param_release(p);
  orthod__v1__register_request__free_unpacked(req, NULL);
}

/* ---- Upload ----------------------------------------------------------------------------- */

typedef struct {
  job_base_t b;
  size_t n;
  param_t **ps;   /* references held */
  float **data;   /* fp32, numel each */
  int64_t *steps; /* outputs */
} write_job_t;

static void write_run(orthod_job_t *job, orthod_store_t *store) {
  write_job_t *j = (write_job_t *)job;
  orthod_param_t **sp = calloc(j->n ? j->n : 1, sizeof *sp);
  if (sp == NULL) {
    j->b.err = ORTHOD_E_NOMEM;
    snprintf(j->b.detail, sizeof j->b.detail, "out of memory");
    return;
  }
  /* every parameter must exist with this size before anything is written */
  for (size_t i = 0; i < j->n; i++) {
    orthod_error_clear();
    orthod_err_t err = orthod_store_get(store, j->ps[i]->name, &sp[i]);
    if (err == ORTHOD_OK &&
        (uint64_t)orthod_shape_numel(orthod_param_shape(sp[i])) != j->ps[i]->numel)
      err = ORTHOD_E_NOTFOUND;
    if (err != ORTHOD_OK) {
      j->b.err = ORTHOD_E_NOTFOUND;
      snprintf(j->b.detail, sizeof j->b.detail,
               "parameter '%s' was dropped during the upload; nothing was written",
               j->ps[i]->name);
      free(sp);
      return;
    }
  }
  for (size_t i = 0; i < j->n; i++) {
    orthod_err_t err =
        orthod_param_write(sp[i], 0, j->data[i], ORTHOD_DTYPE_F32, (size_t)j->ps[i]->numel);
    if (err != ORTHOD_OK) {
      job_error(&j->b, err);
      break;
    }
    j->steps[i] = orthod_param_step(sp[i]);
  }
  free(sp);
}

static void write_done(orthod_job_t *job) {
  write_job_t *j = (write_job_t *)job;
  ctx_t *ctx = j->b.ctx;
  ctx->busy = false;
  if (j->b.err != ORTHOD_OK) {
    ctx_fail_err(ctx, j->b.err, j->b.detail);
  } else if (ctx_alive(ctx)) {
    Orthod__V1__UploadResponse r = ORTHOD__V1__UPLOAD_RESPONSE__INIT;
    info_t *bs = calloc(j->n ? j->n : 1, sizeof *bs);
    Orthod__V1__ParameterInfo **ip = calloc(j->n ? j->n : 1, sizeof *ip);
    bool ok = bs != NULL && ip != NULL;
    for (size_t i = 0; ok && i < j->n; i++) {
      ok = info_build(j->ps[i], &j->ps[i]->cfg, &bs[i]) == 0;
      if (ok) ip[i] = &bs[i].info;
    }
    if (!ok) {
      ctx_oom(ctx);
    } else {
      r.n_params = j->n;
      r.params = ip;
      ctx_reply(ctx, &r.base);
    }
    for (size_t i = 0; bs && i < j->n; i++) info_free(&bs[i]);
    free(bs);
    free(ip);
  }
  for (size_t i = 0; i < j->n; i++) {
    free(j->data[i]);
    param_release(j->ps[i]);
  }
  free(j->data);
  free(j->ps);
  free(j->steps);
  job_base_release(&j->b);
  free(j);
}

static void chunk_error(ctx_t *ctx, orthod_chunk_result_t r, const char *what, const char *name,
                        uint64_t off, uint64_t count, uint64_t numel, uint64_t lo, uint64_t hi) {
  switch (r) {
    case ORTHOD_CHUNK_OUT_OF_RANGE:
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
               "%s chunk [%" PRIu64 ", %" PRIu64 ") of '%s' is outside the tensor of %" PRIu64
               " elements", what, off, off + count, name, numel);
      break;
    case ORTHOD_CHUNK_OVERLAP:
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
               "%s chunk [%" PRIu64 ", %" PRIu64 ") of '%s' overlaps chunk [%" PRIu64 ", %" PRIu64
               ") received before", what, off, off + count, name, lo, hi);
      break;
    case ORTHOD_CHUNK_CONFLICT:
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
               "%s chunk [%" PRIu64 ", %" PRIu64 ") of '%s' was received before with different "
               "data", what, off, off + count, name);
      break;
    case ORTHOD_CHUNK_NOMEM:
      ctx_fail(ctx, GRPC_STATUS_RESOURCE_EXHAUSTED,
               "out of memory assembling %s of '%s' (%" PRIu64 " elements)", what, name, numel);
      break;
    default: break;
  }
}

static void handle_upload(ctx_t *ctx, const uint8_t *data, size_t len) {
  orthod_service_t *svc = ctx->svc;
  Orthod__V1__UploadRequest *req = orthod__v1__upload_request__unpack(NULL, len, data);
  if (req == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "malformed UploadRequest message");
    return;
  }
  if (req->chunk != NULL) orthod_metrics_bytes_received(svc->metrics, req->chunk->data.len);
  char err[MSG_MAX];
  upl_t *u = NULL;
  if (!permitted(ctx, req->name, ORTHOD_ACCESS_WRITE)) goto out;
  for (size_t i = 0; i < ctx->n_upl; i++)
    if (strcmp(ctx->upl[i].p->name, req->name) == 0) u = &ctx->upl[i];
  if (u == NULL) {
    param_t *p = registry_live(svc, req->name);
    if (p == NULL) {
      ctx_fail(ctx, GRPC_STATUS_NOT_FOUND, "parameter '%s' is not registered", req->name);
      goto out;
    }
    if (ctx->n_upl == ctx->cap_upl) {
      size_t cap = ctx->cap_upl ? ctx->cap_upl * 2 : 4;
      upl_t *n = realloc(ctx->upl, cap * sizeof *n);
      if (n == NULL) {
        ctx_oom(ctx);
        goto out;
      }
      ctx->upl = n;
      ctx->cap_upl = cap;
    }
    u = &ctx->upl[ctx->n_upl];
    u->chunks = orthod_chunks_create(p->numel);
    if (u->chunks == NULL) {
      ctx_oom(ctx);
      goto out;
    }
    u->p = p;
    p->refs++;
    ctx->n_upl++;
  }
  orthod_dtype_t dt;
  uint64_t count, lo = 0, hi = 0;
  if (orthod_wire_chunk(req->chunk, u->p->name, &dt, &count, err, sizeof err) != 0) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "%s", err);
    goto out;
  }
  orthod_chunk_result_t r =
      orthod_chunks_add(u->chunks, req->chunk->offset, req->chunk->data.data, dt, count, &lo, &hi);
  if (r != ORTHOD_CHUNK_ADDED && r != ORTHOD_CHUNK_DUPLICATE)
    chunk_error(ctx, r, "upload", u->p->name, req->chunk->offset, count, u->p->numel, lo, hi);
out:
  orthod__v1__upload_request__free_unpacked(req, NULL);
}

static void upload_half_close(ctx_t *ctx) {
  orthod_service_t *svc = ctx->svc;
  for (size_t i = 0; i < ctx->n_upl; i++) {
    upl_t *u = &ctx->upl[i];
    if (u->p->dropped) {
      ctx_fail(ctx, GRPC_STATUS_NOT_FOUND,
               "parameter '%s' was dropped during the upload; nothing was written", u->p->name);
      return;
    }
    if (!orthod_chunks_complete(u->chunks)) {
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
               "upload of '%s' covers %" PRIu64 " of %" PRIu64
               " elements; first gap at element %" PRIu64 "; nothing was written",
               u->p->name, orthod_chunks_covered(u->chunks), u->p->numel,
               orthod_chunks_first_gap(u->chunks));
      return;
    }
  }
  write_job_t *j = calloc(1, sizeof *j);
  size_t n = ctx->n_upl;
  if (j != NULL) {
    j->ps = calloc(n ? n : 1, sizeof *j->ps);
    j->data = calloc(n ? n : 1, sizeof *j->data);
    j->steps = calloc(n ? n : 1, sizeof *j->steps);
  }
  if (j == NULL || !j->ps || !j->data || !j->steps) {
    if (j) {
      free(j->ps);
      free(j->data);
      free(j->steps);
    }
    free(j);
    ctx_oom(ctx);
    return;
  }
  j->n = n;
  for (size_t i = 0; i < n; i++) {
    j->ps[i] = ctx->upl[i].p; /* reference moves to the job */
    j->data[i] = orthod_chunks_take(ctx->upl[i].chunks);
    orthod_chunks_destroy(ctx->upl[i].chunks);
  }
  ctx->n_upl = 0;
  ctx->busy = true;
  submit_change(svc, &j->b, ctx, NULL, write_run, write_done);
}

/* ---- outgoing tensors (Step replies, Pull) --------------------------------------------- */

static int ctx_enqueue(ctx_t *ctx, snap_t *s, orthod_dtype_t dt, bool pull) {
  out_item_t *it = calloc(1, sizeof *it);
  if (it == NULL) return -1;
  it->snap = s;
  s->refs++;
  it->dtype = dt;
  it->pull = pull;
  if (ctx->out_tail) ctx->out_tail->next = it;
  else ctx->out_head = it;
  ctx->out_tail = it;
  ctx->n_out++;
  return 0;
}

/* Send the next chunk of the head item; returns -1 when the call cannot take it. */
static int send_chunk(ctx_t *ctx) {
  orthod_service_t *svc = ctx->svc;
  out_item_t *it = ctx->out_head;
  snap_t *s = it->snap;
  size_t es = orthod_dtype_size(it->dtype);
  uint64_t per = chunk_bytes(svc) / es;
  if (per == 0) per = 1;
  uint64_t n = s->numel - it->off < per ? s->numel - it->off : per;
  size_t bytes = (size_t)n * es;
  if (svc->scratch_len < bytes) {
    uint8_t *b = realloc(svc->scratch, bytes);
    if (b == NULL) return -1;
    svc->scratch = b;
    svc->scratch_len = bytes;
  }
  orthod_convert(svc->scratch, it->dtype, s->data + it->off, ORTHOD_DTYPE_F32, (size_t)n);
  Orthod__V1__TensorChunk ch = ORTHOD__V1__TENSOR_CHUNK__INIT;
  ch.offset = it->off;
  ch.dtype = orthod_wire_dtype_to_proto(it->dtype);
  ch.data.data = svc->scratch;
  ch.data.len = bytes;
  bool last = it->off + n == s->numel;
  int rc;
  if (it->pull) {
    Orthod__V1__PullResponse r = ORTHOD__V1__PULL_RESPONSE__INIT;
    r.name = s->name;
    r.step = s->step;
    if (it->off == 0) {
      r.n_shape = (size_t)s->ndim;
      r.shape = s->dims;
    }
    r.chunk = &ch;
    r.last = last;
    rc = orthod_wire_send(ctx->call, &r.base);
  } else {
    Orthod__V1__StepResponse r = ORTHOD__V1__STEP_RESPONSE__INIT;
    r.name = s->name;
    r.step = s->step;
    r.elements = s->numel;
    r.chunk = &ch;
    r.last = last;
    rc = orthod_wire_send(ctx->call, &r.base);
  }
  if (rc != 0) return -1;
  orthod_metrics_bytes_sent(svc->metrics, bytes);
  it->off += n;
  if (last) {
    ctx->out_head = it->next;
    if (ctx->out_head == NULL) ctx->out_tail = NULL;
    ctx->n_out--;
    snap_release(s);
    free(it);
  }
  return 0;
}

static void pull_fetch(ctx_t *ctx);

static void ctx_pump(ctx_t *ctx) {
  size_t limit = QUEUE_CHUNKS * chunk_bytes(ctx->svc);
  while (ctx_alive(ctx) && ctx->out_head != NULL &&
         orthod_call_queued_bytes(ctx->call) < limit) {
    if (send_chunk(ctx) != 0) {
      ctx_fail(ctx, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory sending weights");
      return;
    }
  }
  if (ctx->method == M_PULL) pull_fetch(ctx);
  ctx_maybe_finish(ctx);
}

/* A stream with nothing left to do ends: OK when the client half-closed (Step) or everything
 * was sent (Pull); UNAVAILABLE when shutting down. */
static void ctx_maybe_finish(ctx_t *ctx) {
  if (!ctx_alive(ctx)) return;
  if (ctx->method == M_STEP) {
    if (ctx->n_pushes != 0 || ctx->inflight != 0 || ctx->out_head != NULL) return;
    if (ctx->half_closed) ctx_end(ctx, GRPC_STATUS_OK, NULL);
    else if (ctx->svc->draining) ctx_end(ctx, GRPC_STATUS_UNAVAILABLE, "orthod is shutting down");
  } else if (ctx->method == M_PULL) {
    if (ctx->got_message && ctx->inflight == 0 && ctx->out_head == NULL &&
        ctx->pull_next >= ctx->n_pull)
      ctx_end(ctx, GRPC_STATUS_OK, NULL);
  }
}

/* ---- Step ------------------------------------------------------------------------------- */

typedef struct {
  job_base_t b;
  uint64_t at_step;
  uint32_t n_grads;
  float **grads;        /* rank order */
  double lr;            /* < 0: configured */
  orthod_nonfinite_policy_t policy;
  pusher_t *pushers;    /* references held */
  size_t n_pushers;
  bool want_weights;
  bool skipped;
  float *weights;       /* fp32 after the step */
  double seconds;       /* device time of run */
} step_job_t;

static void step_run_timed(step_job_t *j, orthod_store_t *store) {
  param_t *p = j->b.p;
  orthod_param_t *sp = NULL;
  orthod_error_clear();
  orthod_err_t err = orthod_store_get(store, p->name, &sp);
  if (err != ORTHOD_OK) {
    j->b.err = ORTHOD_E_NOTFOUND;
    snprintf(j->b.detail, sizeof j->b.detail, "parameter '%s' was dropped", p->name);
    return;
  }
  size_t n = (size_t)p->numel;
  float *g = j->grads[0];
  if (j->n_grads > 1) { /* deterministic mean: fp32 sum in rank order, then one division */
    for (uint32_t r = 1; r < j->n_grads; r++) {
      const float *x = j->grads[r];
      for (size_t i = 0; i < n; i++) g[i] += x[i];
    }
    const float w = (float)j->n_grads;
    for (size_t i = 0; i < n; i++) g[i] /= w;
  }
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += !isfinite(g[i]);
  if (bad != 0) {
    if (j->policy == ORTHOD_NONFINITE_REJECT) {
      j->b.err = ORTHOD_E_NONFINITE;
      snprintf(j->b.detail, sizeof j->b.detail,
               "gradient of '%s' for step %" PRIu64 " has %zu non-finite values%s; nothing was "
               "applied", p->name, j->at_step, bad,
               j->n_grads > 1 ? " after averaging the workers" : "");
      j->b.step = orthod_param_step(sp);
      return;
    }
    orthod_optim_t *o = orthod_param_optim(sp);
    orthod_optim_set_step_count(o, orthod_optim_step_count(o) + 1);
    j->skipped = true;
  } else {
    err = orthod_param_step_host(sp, g, ORTHOD_DTYPE_F32, j->lr);
    if (err != ORTHOD_OK) {
      job_error(&j->b, err);
      j->b.step = orthod_param_step(sp);
      return;
    }
  }
  j->b.step = orthod_param_step(sp);
  if (j->want_weights) {
    j->weights = malloc(n * sizeof(float));
    if (j->weights == NULL) {
      j->b.err = ORTHOD_E_NOMEM;
      snprintf(j->b.detail, sizeof j->b.detail,
               "step %" PRIu64 " of '%s' was applied but its weights could not be read back: out "
               "of memory", j->at_step, p->name);
      return;
    }
    err = orthod_param_read(sp, 0, j->weights, ORTHOD_DTYPE_F32, n);
    if (err != ORTHOD_OK) job_error(&j->b, err);
  }
}

/* The step and the read-back, timed for the metrics. */
static void step_run(orthod_job_t *job, orthod_store_t *store) {
  step_job_t *j = (step_job_t *)job;
  uint64_t t0 = uv_hrtime();
  step_run_timed(j, store);
  j->seconds = (double)(uv_hrtime() - t0) * 1e-9;
}

static void step_done(orthod_job_t *job) {
  step_job_t *j = (step_job_t *)job;
  param_t *p = j->b.p;
  p->inflight--;
  orthod_metrics_step(p->svc->metrics, j->seconds, j->b.err == ORTHOD_OK && !j->skipped);
  if (j->b.step >= 0 && !(j->b.err == ORTHOD_E_NOTFOUND)) p->step = (uint64_t)j->b.step;
  if (j->skipped)
    ORTHOD_LOG(ORTHOD_LOG_INFO, "step %" PRIu64 " of '%s' skipped: non-finite gradient",
               j->at_step, p->name);
  snap_t *s = NULL;
  if (j->b.err == ORTHOD_OK && j->weights != NULL) {
    s = calloc(1, sizeof *s);
    if (s != NULL) {
      s->refs = 1;
      s->data = j->weights;
      j->weights = NULL;
      s->numel = p->numel;
      s->name = strdup(p->name);
      s->step = p->step;
      if (s->name == NULL) {
        snap_release(s);
        s = NULL;
      }
    }
  }
  for (size_t i = 0; i < j->n_pushers; i++) {
    ctx_t *ctx = j->pushers[i].ctx;
    ctx->inflight--;
    if (j->b.err != ORTHOD_OK) {
      ctx_fail_err(ctx, j->b.err, j->b.detail);
    } else if (!j->pushers[i].no_reply && ctx_alive(ctx)) {
      if (s == NULL || ctx_enqueue(ctx, s, j->pushers[i].reply, false) != 0)
        ctx_fail(ctx, GRPC_STATUS_RESOURCE_EXHAUSTED,
                 "step %" PRIu64 " of '%s' was applied but out of memory sending the weights",
                 j->at_step, p->name);
    }
    ctx_pump(ctx);
    ctx_release(ctx);
  }
  snap_release(s);
  for (uint32_t r = 0; r < j->n_grads; r++) free(j->grads[r]);
  free(j->grads);
  free(j->pushers);
  free(j->weights);
  job_base_release(&j->b);
  free(j);
}

/* Submit the step for the given complete pushes (rank order, n of them). */
static void fire(param_t *p, push_t **pushes, uint32_t n) {
  orthod_service_t *svc = p->svc;
  step_job_t *j = calloc(1, sizeof *j);
  float **grads = calloc(n, sizeof *grads);
  if (j == NULL || grads == NULL) {
    free(j);
    free(grads);
    param_abort_pushes(p, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory submitting a step");
    return;
  }
  j->at_step = pushes[0]->step;
  j->n_grads = n;
  j->grads = grads;
  j->lr = -1;
  j->policy = svc->cfg->nonfinite;
  recent_clear(p);
  p->recent = calloc(n, sizeof *p->recent);
  p->recent_rank = calloc(n, sizeof *p->recent_rank);
  if (p->recent == NULL || p->recent_rank == NULL) recent_clear(p);
  p->recent_step = j->at_step;
  for (uint32_t r = 0; r < n; r++) {
    push_t *x = pushes[r];
    if (j->lr < 0 && x->has_lr) j->lr = x->lr;
    grads[r] = orthod_chunks_take(x->chunks);
    if (p->recent != NULL) { /* keep the ranges for late retries */
      p->recent[p->n_recent] = x->chunks;
      p->recent_rank[p->n_recent++] = x->rank;
      x->chunks = NULL;
    }
    size_t np = 0;
    pusher_t *ps = push_take(x, &np);
    for (size_t i = 0; i < np; i++) {
      size_t k = 0;
      while (k < j->n_pushers && j->pushers[k].ctx != ps[i].ctx) k++;
      if (k < j->n_pushers) { /* the same stream pushed several ranks: one reply */
        ctx_release(ps[i].ctx);
        continue;
      }
      pusher_t *a2 = realloc(j->pushers, (j->n_pushers + 1) * sizeof *a2);
      if (a2 == NULL) {
        ctx_oom(ps[i].ctx);
        ctx_release(ps[i].ctx);
        continue;
      }
      j->pushers = a2;
      j->pushers[j->n_pushers++] = ps[i];
      ctx_t *c = ps[i].ctx;
      size_t slot = c->n_fired++ % FIRED_RING;
      param_release(c->fired[slot].p);
      c->fired[slot].p = p;
      c->fired[slot].step = j->at_step;
      p->refs++;
      ps[i].ctx->inflight++;
      if (!ps[i].no_reply) j->want_weights = true;
    }
    free(ps);
    push_free(x);
  }
  p->inflight++;
  submit_change(svc, &j->b, NULL, p, step_run, step_done);
}

static push_t *push_find(param_t *p, uint64_t step, uint32_t rank) {
  for (push_t *x = p->pushes; x; x = x->next)
    if (x->step == step && x->rank == rank) return x;
  return NULL;
}

/* The push is acceptable for the parameter's current step: 0, or -1 with msg filled. */
static int step_acceptable(const param_t *p, uint64_t step, char *msg, size_t len) {
  uint64_t cur = p->step + p->inflight;
  if (p->mode == ORTHOD__V1__SYNC_MODE__SYNC_MODE_SYNC) {
    if (step == cur) return 0;
    snprintf(msg, len, "push for step %" PRIu64 " of '%s' rejected: current step is %" PRIu64,
             step, p->name, cur);
    return -1;
  }
  uint64_t lo = cur > p->max_staleness ? cur - p->max_staleness : 0;
  if (step >= lo && step <= cur) return 0;
  snprintf(msg, len,
           "push for step %" PRIu64 " of '%s' rejected: current step is %" PRIu64
           " (max_staleness %" PRIu64 ")", step, p->name, cur, p->max_staleness);
  return -1;
}

/* Discard a push and end every stream that contributed to it. */
static void push_reject(push_t *push, grpc_status_code code, const char *msg) {
  size_t n = 0;
  pusher_t *ps = push_take(push, &n);
  push_free(push);
  for (size_t i = 0; i < n; i++) {
    ctx_end(ps[i].ctx, code, msg);
    ctx_release(ps[i].ctx);
  }
  free(ps);
}

/* A push became complete: step now (ASYNC) or when every rank is complete (SYNC). */
static void push_completed(ctx_t *ctx, push_t *push) {
  param_t *p = push->p;
  char msg[MSG_MAX];
  if (step_acceptable(p, push->step, msg, sizeof msg) != 0) {
    /* the counter moved while this gradient was arriving (another worker's step) */
    push_reject(push, GRPC_STATUS_FAILED_PRECONDITION, msg);
    return;
  }
  if (p->mode == ORTHOD__V1__SYNC_MODE__SYNC_MODE_ASYNC) {
    fire(p, &push, 1);
    return;
  }
  push_t **group = calloc(p->workers, sizeof *group);
  if (group == NULL) {
    ctx_oom(ctx);
    return;
  }
  uint32_t have = 0;
  for (push_t *x = p->pushes; x; x = x->next)
    if (x->step == push->step && orthod_chunks_complete(x->chunks) && x->rank < p->workers &&
        group[x->rank] == NULL) {
      group[x->rank] = x;
      have++;
    }
  if (have == p->workers) fire(p, group, p->workers);
  free(group);
}

static int push_add_pusher(push_t *push, ctx_t *ctx, orthod_dtype_t reply, bool no_reply) {
  for (size_t i = 0; i < push->n_pushers; i++)
    if (push->pushers[i].ctx == ctx) {
      push->pushers[i].reply = reply;
      push->pushers[i].no_reply = no_reply;
      return 0;
    }
  if (push->n_pushers == push->cap_pushers) {
    size_t cap = push->cap_pushers ? push->cap_pushers * 2 : 2;
    pusher_t *n = realloc(push->pushers, cap * sizeof *n);
    if (n == NULL) return -1;
    push->pushers = n;
    push->cap_pushers = cap;
  }
  if (ctx->n_pushes == ctx->cap_pushes) {
    size_t cap = ctx->cap_pushes ? ctx->cap_pushes * 2 : 4;
    push_t **n = realloc(ctx->pushes, cap * sizeof *n);
    if (n == NULL) return -1;
    ctx->pushes = n;
    ctx->cap_pushes = cap;
  }
  push->pushers[push->n_pushers++] = (pusher_t){.ctx = ctx, .reply = reply, .no_reply = no_reply};
  ctx->refs++;
  ctx->pushes[ctx->n_pushes++] = push;
  return 0;
}

/* The chunk repeats, on a stream that pushed into it, one of the pushes of the step applied
 * last (same rank, step and range). */
static bool recent_retry(const ctx_t *ctx, const param_t *p, uint64_t step, uint32_t rank,
                         uint64_t off, uint64_t count) {
  if (p->n_recent == 0 || p->recent_step != step) return false;
  bool mine = false; /* only the streams that pushed into that step */
  for (size_t i = 0; i < FIRED_RING && !mine; i++)
    mine = ctx->fired[i].p == p && ctx->fired[i].step == step;
  if (!mine) return false;
  for (uint32_t i = 0; i < p->n_recent; i++)
    if (p->recent_rank[i] == rank) return orthod_chunks_has_range(p->recent[i], off, count);
  return false;
}

static void handle_step(ctx_t *ctx, const uint8_t *data, size_t len) {
  orthod_service_t *svc = ctx->svc;
  Orthod__V1__StepRequest *req = orthod__v1__step_request__unpack(NULL, len, data);
  if (req == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "malformed StepRequest message");
    return;
  }
  if (req->chunk != NULL) orthod_metrics_bytes_received(svc->metrics, req->chunk->data.len);
  char err[MSG_MAX];
  if (!permitted(ctx, req->name, ORTHOD_ACCESS_WRITE)) goto out;
  param_t *p = registry_live(svc, req->name);
  if (p == NULL) {
    ctx_fail(ctx, GRPC_STATUS_NOT_FOUND, "parameter '%s' is not registered", req->name);
    goto out;
  }
  if (req->worker_rank >= p->workers) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
             "worker_rank %" PRIu32 " of '%s' is out of range: the parameter has %" PRIu32
             " worker%s (ranks 0..%" PRIu32 ")", req->worker_rank, p->name, p->workers,
             p->workers == 1 ? "" : "s", p->workers - 1);
    goto out;
  }
  if (req->lr != NULL && !(isfinite(req->lr->value) && req->lr->value >= 0)) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
             "lr %g for step %" PRIu64 " of '%s' is invalid: it must be finite and >= 0",
             req->lr->value, req->step, p->name);
    goto out;
  }
  orthod_dtype_t reply;
  if (orthod_wire_reply_dtype((int)req->reply_dtype, &reply, err, sizeof err) != 0) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "reply_dtype for '%s': %s", p->name, err);
    goto out;
  }
  orthod_dtype_t dt;
  uint64_t count, lo = 0, hi = 0;
  if (orthod_wire_chunk(req->chunk, p->name, &dt, &count, err, sizeof err) != 0) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "%s", err);
    goto out;
  }
  push_t *push = push_find(p, req->step, req->worker_rank);
  if (push == NULL) {
    if (step_acceptable(p, req->step, err, sizeof err) != 0) {
      if (recent_retry(ctx, p, req->step, req->worker_rank, req->chunk->offset, count))
        goto out; /* a chunk of the step just applied, sent again: already counted */
      ctx_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION, "%s", err);
      goto out;
    }
    push = calloc(1, sizeof *push);
    if (push == NULL || (push->chunks = orthod_chunks_create(p->numel)) == NULL) {
      free(push);
      ctx_oom(ctx);
      goto out;
    }
    push->p = p;
    p->refs++;
    push->step = req->step;
    push->rank = req->worker_rank;
    push->next = p->pushes;
    p->pushes = push;
    if (p->mode == ORTHOD__V1__SYNC_MODE__SYNC_MODE_SYNC)
      pending_add(svc, p, uv_now(svc->loop) + p->sync_timeout_ms);
  }
  if (push_add_pusher(push, ctx, reply, req->no_reply) != 0) {
    if (push->n_pushers == 0) {
      push_unlink_param(push);
      push_free(push);
    }
    ctx_oom(ctx);
    goto out;
  }
  if (orthod_chunks_complete(push->chunks)) {
    /* a retry of a chunk of a gradient that is complete and waiting for the other ranks */
    orthod_chunk_result_t r = orthod_chunks_add(push->chunks, req->chunk->offset,
                                                req->chunk->data.data, dt, count, &lo, &hi);
    if (r != ORTHOD_CHUNK_DUPLICATE) {
      char what[128];
      snprintf(what, sizeof what, "gradient (step %" PRIu64 ", rank %" PRIu32 ")", req->step,
               req->worker_rank);
      chunk_error(ctx, r == ORTHOD_CHUNK_ADDED ? ORTHOD_CHUNK_OVERLAP : r, what, p->name,
                  req->chunk->offset, count, p->numel, lo, hi);
    }
    goto out;
  }
  orthod_chunk_result_t r = orthod_chunks_add(push->chunks, req->chunk->offset,
                                              req->chunk->data.data, dt, count, &lo, &hi);
  if (r != ORTHOD_CHUNK_ADDED && r != ORTHOD_CHUNK_DUPLICATE) {
    char what[128];
    snprintf(what, sizeof what, "gradient (step %" PRIu64 ", rank %" PRIu32 ")", req->step,
             req->worker_rank);
    chunk_error(ctx, r, what, p->name, req->chunk->offset, count, p->numel, lo, hi);
    goto out;
  }
  if (req->lr != NULL) {
    push->has_lr = true;
    push->lr = req->lr->value;
  }
  if (r == ORTHOD_CHUNK_ADDED && orthod_chunks_complete(push->chunks)) push_completed(ctx, push);
out:
  orthod__v1__step_request__free_unpacked(req, NULL);
}

static void step_half_close(ctx_t *ctx) {
  for (size_t i = 0; i < ctx->n_pushes; i++) {
    push_t *x = ctx->pushes[i];
    if (!orthod_chunks_complete(x->chunks)) {
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
               "stream closed with an incomplete gradient: '%s' step %" PRIu64 " rank %" PRIu32
               " covers %" PRIu64 " of %" PRIu64 " elements; first gap at element %" PRIu64,
               x->p->name, x->step, x->rank, orthod_chunks_covered(x->chunks), x->p->numel,
               orthod_chunks_first_gap(x->chunks));
      return;
    }
  }
  ctx_maybe_finish(ctx);
}

/* ---- Pull ------------------------------------------------------------------------------- */

typedef struct {
  job_base_t b;
  float *weights;
} read_job_t;

static void read_run(orthod_job_t *job, orthod_store_t *store) {
  read_job_t *j = (read_job_t *)job;
  orthod_param_t *sp = NULL;
  orthod_error_clear();
  if (orthod_store_get(store, j->b.p->name, &sp) != ORTHOD_OK) {
    j->b.err = ORTHOD_E_NOTFOUND;
    snprintf(j->b.detail, sizeof j->b.detail, "parameter '%s' was dropped", j->b.p->name);
    return;
  }
  j->weights = malloc((size_t)j->b.p->numel * sizeof(float));
  if (j->weights == NULL) {
    j->b.err = ORTHOD_E_NOMEM;
    snprintf(j->b.detail, sizeof j->b.detail, "out of memory reading '%s'", j->b.p->name);
    return;
  }
  orthod_err_t err = orthod_param_read(sp, 0, j->weights, ORTHOD_DTYPE_F32, (size_t)j->b.p->numel);
  if (err != ORTHOD_OK) job_error(&j->b, err);
  j->b.step = orthod_param_step(sp);
}

static void read_done(orthod_job_t *job) {
  read_job_t *j = (read_job_t *)job;
  ctx_t *ctx = j->b.ctx;
  param_t *p = j->b.p;
  ctx->inflight--;
  if (j->b.err != ORTHOD_OK) {
    ctx_fail_err(ctx, j->b.err, j->b.detail);
  } else if (ctx_alive(ctx)) {
    snap_t *s = calloc(1, sizeof *s);
    if (s != NULL) {
      s->refs = 1;
      s->data = j->weights;
      j->weights = NULL;
      s->numel = p->numel;
      s->step = (uint64_t)j->b.step;
      s->ndim = p->shape.ndim;
      memcpy(s->dims, p->shape.dims, sizeof s->dims);
      s->name = strdup(p->name);
    }
    if (s == NULL || s->name == NULL || ctx_enqueue(ctx, s, ctx->pull_dtype, true) != 0)
      ctx_fail(ctx, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory sending '%s'", p->name);
    snap_release(s);
    ctx_pump(ctx);
  }
  free(j->weights);
  job_base_release(&j->b);
  free(j);
}

/* Read the next parameter while at most one is waiting to be sent (bounded host memory). */
static void pull_fetch(ctx_t *ctx) {
  while (ctx_alive(ctx) && ctx->inflight == 0 && ctx->n_out <= 1 &&
         ctx->pull_next < ctx->n_pull) {
    read_job_t *j = calloc(1, sizeof *j);
    if (j == NULL) {
      ctx_oom(ctx);
      return;
    }
    ctx->inflight++;
    submit(ctx->svc, &j->b, ctx, ctx->pull[ctx->pull_next++], read_run, read_done);
  }
}

static void handle_pull(ctx_t *ctx, const uint8_t *data, size_t len) {
  orthod_service_t *svc = ctx->svc;
  Orthod__V1__PullRequest *req = orthod__v1__pull_request__unpack(NULL, len, data);
  if (req == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "malformed PullRequest message");
    return;
  }
  char err[MSG_MAX];
  if (orthod_wire_reply_dtype((int)req->dtype, &ctx->pull_dtype, err, sizeof err) != 0) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "%s", err);
    goto out;
  }
  size_t n = req->n_names ? req->n_names : svc->n_params;
  ctx->pull = calloc(n ? n : 1, sizeof *ctx->pull);
  if (ctx->pull == NULL) {
    ctx_oom(ctx);
    goto out;
  }
  if (req->n_names) {
    for (size_t i = 0; i < req->n_names; i++) {
      if (!permitted(ctx, req->names[i], ORTHOD_ACCESS_READ)) goto out;
      param_t *p = registry_live(svc, req->names[i]);
      if (p == NULL) {
        ctx_fail(ctx, GRPC_STATUS_NOT_FOUND, "parameter '%s' is not registered", req->names[i]);
        goto out;
      }
      ctx->pull[ctx->n_pull++] = p;
      p->refs++;
    }
  } else {
    for (size_t i = 0; i < svc->n_params; i++)
      if (svc->params[i]->live && readable(ctx, svc->params[i]->name)) {
        ctx->pull[ctx->n_pull++] = svc->params[i];
        svc->params[i]->refs++;
      }
  }
  ctx_pump(ctx);
out:
  orthod__v1__pull_request__free_unpacked(req, NULL);
}

/* ---- List, Describe --------------------------------------------------------------------- */

static void handle_list(ctx_t *ctx, const uint8_t *data, size_t len) {
  orthod_service_t *svc = ctx->svc;
  Orthod__V1__ListRequest *req = orthod__v1__list_request__unpack(NULL, len, data);
  if (req == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "malformed ListRequest message");
    return;
  }
  /* Pages follow name order: a page starts after the name its token holds (the last name of
   * the previous page), so parameters registered or dropped between pages neither repeat nor
   * shift the others. */
  size_t start = 0;
  if (req->page_token[0] != '\0') {
    ptrdiff_t at = registry_find(svc, req->page_token, &start);
    if (at >= 0) start = (size_t)at + 1;
  }
  size_t limit = req->page_size ? req->page_size : SIZE_MAX;
  size_t plen = strlen(req->prefix), n = 0, cap = svc->n_params ? svc->n_params : 1;
  if (cap > limit) cap = limit;
  info_t *bs = calloc(cap, sizeof *bs);
  Orthod__V1__ParameterInfo **ip = calloc(cap, sizeof *ip);
  bool ok = bs != NULL && ip != NULL, more = false;
  for (size_t i = start; ok && i < svc->n_params; i++) {
    param_t *p = svc->params[i];
    if (!p->live || strncmp(p->name, req->prefix, plen) != 0 || !readable(ctx, p->name)) continue;
    if (n == limit) {
      more = true;
      break;
    }
    ok = info_build(p, &p->cfg, &bs[n]) == 0;
    ip[n] = &bs[n].info;
    n++;
  }
  if (!ok) {
    ctx_oom(ctx);
  } else {
    Orthod__V1__ListResponse r = ORTHOD__V1__LIST_RESPONSE__INIT;
    if (more) r.next_page_token = ip[n - 1]->spec->name;
    r.n_params = n;
    r.params = ip;
    r.device_bytes_used = svc->bytes_used;
    r.device_bytes_limit = svc->cfg->memory_limit;
    ctx_reply(ctx, &r.base);
  }
  for (size_t i = 0; bs && i < n; i++) info_free(&bs[i]);
  free(bs);
  free(ip);
  orthod__v1__list_request__free_unpacked(req, NULL);
}

static void handle_describe(ctx_t *ctx, const uint8_t *data, size_t len) {
  Orthod__V1__DescribeRequest *req = orthod__v1__describe_request__unpack(NULL, len, data);
  if (req == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "malformed DescribeRequest message");
    return;
  }
  if (permitted(ctx, req->name, ORTHOD_ACCESS_READ)) {
    param_t *p = registry_live(ctx->svc, req->name);
    if (p == NULL)
      ctx_fail(ctx, GRPC_STATUS_NOT_FOUND, "parameter '%s' is not registered", req->name);
    else
      reply_info(ctx, p);
  }
  orthod__v1__describe_request__free_unpacked(req, NULL);
}

/* ---- Drop ------------------------------------------------------------------------------- */

static void drop_run(orthod_job_t *job, orthod_store_t *store) {
  job_base_t *j = (job_base_t *)job;
  orthod_param_t *sp = NULL;
  orthod_error_clear();
  orthod_err_t err = orthod_store_get(store, j->p->name, &sp);
  if (err == ORTHOD_OK) {
    j->step = orthod_param_step(sp);
    err = orthod_store_drop(store, j->p->name);
  }
  if (err != ORTHOD_OK) job_error(j, err);
}

static void drop_done(orthod_job_t *job) {
  job_base_t *j = (job_base_t *)job;
  if (j->err != ORTHOD_OK) {
    ctx_fail_err(j->ctx, j->err, j->detail);
  } else {
    Orthod__V1__DropResponse r = ORTHOD__V1__DROP_RESPONSE__INIT;
    r.name = j->p->name;
    r.step = (uint64_t)j->step;
    ctx_reply(j->ctx, &r.base);
  }
  job_base_release(j);
  free(j);
}

static void handle_drop(ctx_t *ctx, const uint8_t *data, size_t len) {
  orthod_service_t *svc = ctx->svc;
  Orthod__V1__DropRequest *req = orthod__v1__drop_request__unpack(NULL, len, data);
  if (req == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "malformed DropRequest message");
    return;
  }
  if (!permitted(ctx, req->name, ORTHOD_ACCESS_WRITE)) {
    orthod__v1__drop_request__free_unpacked(req, NULL);
    return;
  }
  param_t *p = registry_live(svc, req->name);
  job_base_t *j = p ? calloc(1, sizeof *j) : NULL;
  if (p == NULL) {
    ctx_fail(ctx, GRPC_STATUS_NOT_FOUND, "parameter '%s' is not registered", req->name);
  } else if (j == NULL) {
    ctx_oom(ctx);
  } else {
    p->refs++;
    registry_remove(svc, p);
    char msg[MSG_MAX];
    snprintf(msg, sizeof msg, "parameter '%s' was dropped", p->name);
    param_abort_pushes(p, GRPC_STATUS_ABORTED, msg);
    ctx->busy = true;
    submit_change(svc, j, ctx, p, drop_run, drop_done);
    param_release(p);
  }
  orthod__v1__drop_request__free_unpacked(req, NULL);
}

/* ---- SetConfig -------------------------------------------------------------------------- */

typedef struct {
  job_base_t b;
  orthod_optim_config_t cfg; /* in: requested; out: in force after the job */
} cfg_job_t;

static void cfg_run(orthod_job_t *job, orthod_store_t *store) {
  cfg_job_t *j = (cfg_job_t *)job;
  orthod_param_t *sp = NULL;
  orthod_error_clear();
  orthod_err_t err = orthod_store_get(store, j->b.p->name, &sp);
  if (err == ORTHOD_OK) err = orthod_param_reconfigure(sp, &j->cfg);
  if (err != ORTHOD_OK) job_error(&j->b, err);
  if (sp != NULL) j->cfg = *orthod_param_config(sp);
}

static void cfg_done(orthod_job_t *job) {
  cfg_job_t *j = (cfg_job_t *)job;
  param_t *p = j->b.p;
  if (j->b.err != ORTHOD_E_NOTFOUND) p->cfg = j->cfg; /* what the engine has in force */
  if (j->b.err != ORTHOD_OK) {
    char msg[MSG_MAX];
    snprintf(msg, sizeof msg, "set config of '%s': %.700s", p->name,
             j->b.detail[0] ? j->b.detail : orthod_strerror(j->b.err));
    ctx_fail_err(j->b.ctx, j->b.err, msg);
  } else if (ctx_alive(j->b.ctx)) {
    reply_info(j->b.ctx, p);
  }
  job_base_release(&j->b);
  free(j);
}

/* Same value for every key of the engine's table. */
static bool cfg_equal(const orthod_optim_config_t *a, const orthod_optim_config_t *b) {
  const char *help, *key;
  for (int i = 0; (key = orthod_optim_config_key(i, &help)) != NULL; i++) {
    char va[VAL_LEN] = "", vb[VAL_LEN] = "";
    orthod_optim_config_get(a, key, va, sizeof va);
    orthod_optim_config_get(b, key, vb, sizeof vb);
    if (strcmp(va, vb) != 0) return false;
  }
  return true;
}

/* Keys that define the state layout: they may be given only with their current value. The
 * engine's key table matches keys in any case (and has aliases, none of them for these keys), so
 * the match here ignores case too: "ROLE" is the key "role". */
static bool layout_key(const char *key) {
  static const char *const keys[] = {"algo",      "split_rows", "num_heads", "role",
                                     "moment2_method", "amsgrad", "hook"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (strcasecmp(keys[i], key) == 0) return true;
  return false;
}

static void handle_setconfig(ctx_t *ctx, const uint8_t *data, size_t len) {
  orthod_service_t *svc = ctx->svc;
  Orthod__V1__SetConfigRequest *req = orthod__v1__set_config_request__unpack(NULL, len, data);
  if (req == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "malformed SetConfigRequest message");
    return;
  }
  if (!permitted(ctx, req->name, ORTHOD_ACCESS_WRITE)) goto out;
  param_t *p = registry_live(svc, req->name);
  if (p == NULL) {
    ctx_fail(ctx, GRPC_STATUS_NOT_FOUND, "parameter '%s' is not registered", req->name);
    goto out;
  }
  orthod_optim_config_t cfg = p->cfg;
  for (size_t i = 0; i < req->n_options; i++) {
    const Orthod__V1__Option *o = req->options[i];
    if (o == NULL) continue;
    orthod_optim_config_t before = cfg;
    orthod_error_clear();
    orthod_err_t e = orthod_optim_config_set(&cfg, o->key, o->value);
    if (e != ORTHOD_OK) {
      ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "parameter '%s': option %s = '%s': %s",
               p->name, o->key, o->value,
               orthod_error_detail()[0] ? orthod_error_detail() : orthod_strerror(e));
      goto out;
    }
    if (layout_key(o->key)) {
      char va[VAL_LEN] = "", vb[VAL_LEN] = "";
      orthod_optim_config_get(&before, o->key, va, sizeof va);
      orthod_optim_config_get(&cfg, o->key, vb, sizeof vb);
      if (strcmp(va, vb) != 0 || !cfg_equal(&before, &cfg)) {
        ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT,
                 "parameter '%s': option %s defines the optimizer state layout and cannot change "
                 "(it is %s; drop and register the parameter again to change it)",
                 p->name, o->key, va);
        goto out;
      }
    }
  }
  orthod_error_clear();
  orthod_err_t e = orthod_optim_config_validate(&cfg, &p->shape);
  if (e != ORTHOD_OK) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "parameter '%s': %s", p->name,
             orthod_error_detail()[0] ? orthod_error_detail() : orthod_strerror(e));
    goto out;
  }
  cfg_job_t *j = calloc(1, sizeof *j);
  if (j == NULL) {
    ctx_oom(ctx);
    goto out;
  }
  j->cfg = cfg;
  p->cfg = cfg; /* later requests build on this one; the job's result confirms it */
  ctx->busy = true;
  submit_change(svc, &j->b, ctx, p, cfg_run, cfg_done);
out:
  orthod__v1__set_config_request__free_unpacked(req, NULL);
}

/* ---- Checkpoint ------------------------------------------------------------------------- */

/* The daemon's part of a parameter's spec, stored with it in a checkpoint (the store keeps the
 * shape, the configuration and the step counter itself). */
static char *meta_text(const param_t *p) {
  char buf[256];
  snprintf(buf, sizeof buf,
           "workers=%" PRIu32 "\nsync_mode=%s\nmax_staleness=%" PRIu64 "\nsync_timeout_ms=%" PRIu32
           "\n",
           p->workers, mode_name(p->mode), p->max_staleness, p->sync_timeout_ms);
  return strdup(buf);
}

/* Inverse of meta_text, over defaults (1 worker, ASYNC) for what is missing. */
static void meta_parse(param_t *p, const char *text) {
  p->workers = 1;
  p->mode = ORTHOD__V1__SYNC_MODE__SYNC_MODE_ASYNC;
  p->max_staleness = 0;
  p->sync_timeout_ms = 0;
  char mode[16] = "";
  unsigned long long v;
  for (const char *line = text; *line != '\0'; line += strcspn(line, "\n"), line += *line == '\n') {
    if (sscanf(line, "workers=%llu", &v) == 1 && v >= 1 && v <= MAX_WORKERS)
      p->workers = (uint32_t)v;
    else if (sscanf(line, "sync_mode=%15[A-Z]", mode) == 1 && strcmp(mode, "SYNC") == 0)
      p->mode = ORTHOD__V1__SYNC_MODE__SYNC_MODE_SYNC;
    else if (sscanf(line, "max_staleness=%llu", &v) == 1) p->max_staleness = v;
    else if (sscanf(line, "sync_timeout_ms=%llu", &v) == 1 && v <= UINT32_MAX)
      p->sync_timeout_ms = (uint32_t)v;
  }
  if (p->mode == ORTHOD__V1__SYNC_MODE__SYNC_MODE_SYNC) {
    p->max_staleness = 0;
    if (p->sync_timeout_ms == 0) p->sync_timeout_ms = p->svc->cfg->sync_timeout_ms;
  } else {
    p->sync_timeout_ms = 0;
  }
}

typedef struct {
  char *name, *text;
} meta_entry_t;

typedef struct {
  job_base_t b;          /* ctx: the Checkpoint call, or NULL (timer, shutdown) */
  orthod_service_t *svc;
  const char *dir;       /* svc->state_dir: fixed after start, read on the device thread */
  int keep;
  const char *why;       /* for the log: "requested", "periodic", "shutdown" */
  bool final;            /* the shutdown checkpoint: its failure sets svc->final_failed */
  uint64_t sequence;
  uint64_t changes;      /* svc->changes when submitted */
  meta_entry_t *meta;    /* every registered parameter, name order (as the registry) */
  size_t n_meta;
  orthod_checkpoint_info_t info;
  double seconds;
} ckpt_job_t;

static const char *ckpt_meta(void *arg, const char *name) {
  ckpt_job_t *j = arg;
  size_t lo = 0, hi = j->n_meta;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(j->meta[mid].name, name);
    if (c == 0) return j->meta[mid].text;
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

static void ckpt_run(orthod_job_t *job, orthod_store_t *store) {
  ckpt_job_t *j = (ckpt_job_t *)job;
  uint64_t t0 = uv_hrtime();
  orthod_error_clear();
  orthod_err_t err =
      orthod_checkpoint_save(store, j->dir, j->sequence, j->keep, ckpt_meta, j, &j->info);
  if (err != ORTHOD_OK) job_error(&j->b, err);
  j->seconds = (double)(uv_hrtime() - t0) * 1e-9;
}

static void ckpt_free(ckpt_job_t *j) {
  for (size_t i = 0; i < j->n_meta; i++) {
    free(j->meta[i].name);
    free(j->meta[i].text);
  }
  free(j->meta);
  job_base_release(&j->b);
  free(j);
}

static void ckpt_done(orthod_job_t *job) {
  ckpt_job_t *j = (ckpt_job_t *)job;
  orthod_service_t *svc = j->svc;
  svc->ckpt_inflight--;
  orthod_metrics_checkpoint(svc->metrics, j->b.err == ORTHOD_OK, j->seconds, j->info.bytes);
  if (j->b.err == ORTHOD_OK) {
    if (j->changes > svc->changes_saved) svc->changes_saved = j->changes;
    ORTHOD_LOG(ORTHOD_LOG_INFO,
               "checkpoint %" PRIu64 " (%s): %" PRIu32 " parameters, %.1f MiB in %.2f s -> %s",
               j->info.sequence, j->why, j->info.parameters,
               (double)j->info.bytes / (1024.0 * 1024.0), j->seconds, j->info.path);
    if (j->b.ctx != NULL && ctx_alive(j->b.ctx)) {
      Orthod__V1__CheckpointResponse r = ORTHOD__V1__CHECKPOINT_RESPONSE__INIT;
      r.path = j->info.path;
      r.sequence = j->info.sequence;
      r.parameters = j->info.parameters;
      r.bytes = j->info.bytes;
      ctx_reply(j->b.ctx, &r.base);
    }
  } else {
    char msg[MSG_MAX];
    snprintf(msg, sizeof msg, "checkpoint %" PRIu64 " failed: %.900s", j->sequence,
             j->b.detail[0] ? j->b.detail : orthod_strerror(j->b.err));
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "%s (%s); the previous checkpoints are unchanged", msg, j->why);
    if (j->final && svc->final_failed) *svc->final_failed = true;
    if (j->b.ctx != NULL) ctx_fail_err(j->b.ctx, j->b.err, msg);
  }
  ckpt_free(j);
}

/* Queue a checkpoint behind every job submitted so far, so it holds every change the daemon
 * acknowledged before this moment. Returns -1 when out of memory. */
static int ckpt_submit(orthod_service_t *svc, ctx_t *ctx, const char *why, bool final) {
  ckpt_job_t *j = calloc(1, sizeof *j);
  if (j == NULL) return -1;
  j->meta = svc->n_params ? calloc(svc->n_params, sizeof *j->meta) : NULL;
  if (svc->n_params && j->meta == NULL) {
    free(j);
    return -1;
  }
  for (size_t i = 0; i < svc->n_params; i++) {
    j->meta[i].name = strdup(svc->params[i]->name);
    j->meta[i].text = meta_text(svc->params[i]);
    j->n_meta++;
    if (j->meta[i].name == NULL || j->meta[i].text == NULL) {
      ckpt_free(j);
      return -1;
    }
  }
  j->svc = svc;
  j->dir = svc->state_dir;
  j->keep = (int)svc->cfg->checkpoint_keep;
  j->why = why;
  j->final = final;
  j->sequence = svc->next_sequence++;
  j->changes = svc->changes;
  svc->ckpt_inflight++;
  submit(svc, &j->b, ctx, NULL, ckpt_run, ckpt_done);
  return 0;
}

static void handle_checkpoint(ctx_t *ctx, const uint8_t *data, size_t len) {
  Orthod__V1__CheckpointRequest *req = orthod__v1__checkpoint_request__unpack(NULL, len, data);
  if (req == NULL) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "malformed CheckpointRequest message");
    return;
  }
  orthod__v1__checkpoint_request__free_unpacked(req, NULL);
  if (ckpt_submit(ctx->svc, ctx, "requested", false) != 0) {
    ctx_oom(ctx);
    return;
  }
  ctx->busy = true;
}

/* Periodic: only when something changed and no checkpoint is already on its way. */
static void ckpt_timer_cb(uv_timer_t *t) {
  orthod_service_t *svc = t->data;
  if (svc->draining || svc->ckpt_inflight > 0 || svc->changes == svc->changes_saved) return;
  if (ckpt_submit(svc, NULL, "periodic", false) != 0)
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "periodic checkpoint: out of memory; trying again next time");
}

void orthod_service_final_checkpoint(orthod_service_t *svc, bool *failed) {
  svc->final_failed = failed;
  if (!svc->cfg->checkpoint_on_shutdown) return;
  if (svc->changes == svc->changes_saved) {
    ORTHOD_LOG(ORTHOD_LOG_INFO, "nothing changed since the last checkpoint; none written at "
               "shutdown");
    return;
  }
  if (ckpt_submit(svc, NULL, "shutdown", true) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "shutdown checkpoint: out of memory");
    if (failed) *failed = true;
  }
}

/* Restore at start: the device thread loads the file into its store and lists what it restored;
 * the loop then enters each parameter into the registry, live, with its step counter. */
typedef struct {
  char *name, *meta;
  orthod_shape_t shape;
  orthod_optim_config_t cfg;
  int64_t step;
  uint64_t bytes;
} restored_t;

typedef struct {
  orthod_job_t job;
  char path[ORTHOD_CHECKPOINT_PATH_MAX];
  restored_t *items;
  size_t n, cap;
  orthod_err_t err;
  char detail[MSG_MAX];
  orthod_checkpoint_info_t info;
  bool done;
} restore_job_t;

static orthod_err_t restore_one(void *arg, orthod_param_t *sp, const char *meta) {
  restore_job_t *j = arg;
  if (j->n == j->cap) {
    size_t cap = j->cap ? j->cap * 2 : 64;
    restored_t *grown = realloc(j->items, cap * sizeof *grown);
    if (grown == NULL) return ORTHOD_E_NOMEM;
    j->items = grown;
    j->cap = cap;
  }
  restored_t *r = &j->items[j->n];
  r->name = strdup(orthod_param_name(sp));
  r->meta = strdup(meta);
  if (r->name == NULL || r->meta == NULL) {
    free(r->name);
    free(r->meta);
    return ORTHOD_E_NOMEM;
  }
  r->shape = *orthod_param_shape(sp);
  r->cfg = *orthod_param_config(sp);
  r->step = orthod_param_step(sp);
  r->bytes = orthod_param_bytes(sp);
  j->n++;
  return ORTHOD_OK;
}

static void restore_run(orthod_job_t *job, orthod_store_t *store) {
  restore_job_t *j = (restore_job_t *)job;
  orthod_error_clear();
  j->err = orthod_checkpoint_load(store, j->path, restore_one, j, &j->info);
  if (j->err != ORTHOD_OK)
    snprintf(j->detail, sizeof j->detail, "%s",
             orthod_error_detail()[0] ? orthod_error_detail() : orthod_strerror(j->err));
}

static void restore_done(orthod_job_t *job) { ((restore_job_t *)job)->done = true; }

/* Enter a restored parameter into the registry, live (takes r->name). 0, or -1 when out of
 * memory. */
static int restore_param(orthod_service_t *svc, restored_t *r) {
  param_t *p = calloc(1, sizeof *p);
  if (p == NULL) return -1;
  *p = (param_t){.svc = svc, .refs = 1, .live = true, .name = r->name, .shape = r->shape,
                 .numel = (uint64_t)orthod_shape_numel(&r->shape), .cfg = r->cfg,
                 .step = (uint64_t)r->step, .bytes = r->bytes};
  r->name = NULL;
  meta_parse(p, r->meta);
  int rc = registry_insert(svc, p);
  if (rc == 0) svc->bytes_used += p->bytes;
  param_release(p); /* the registry holds its own reference */
  return rc;
}

int orthod_service_restore(orthod_service_t *svc, char *err, size_t errlen) {
  char path[ORTHOD_CHECKPOINT_PATH_MAX];
  uint64_t latest = 0;
  orthod_error_clear();
  orthod_err_t e = orthod_checkpoint_latest(svc->state_dir, path, sizeof path, &latest);
  if (e == ORTHOD_E_NOTFOUND) {
    svc->next_sequence = 1;
    ORTHOD_LOG(ORTHOD_LOG_INFO, "no checkpoint in %s: starting empty", svc->state_dir);
    return 0;
  }
  if (e != ORTHOD_OK) {
    snprintf(err, errlen, "%s", orthod_error_detail());
    return -1;
  }
  svc->next_sequence = latest + 1;
  if (!svc->cfg->restore) {
    ORTHOD_LOG(ORTHOD_LOG_WARN, "--restore=false: not loading %s; starting empty (new "
               "checkpoints continue at %" PRIu64 ")", path, svc->next_sequence);
    return 0;
  }
  restore_job_t *j = calloc(1, sizeof *j);
  if (j == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  snprintf(j->path, sizeof j->path, "%s", path);
  j->job.run = restore_run;
  j->job.done = restore_done;
  uint64_t t0 = uv_hrtime();
  orthod_device_submit(svc->dev, &j->job);
  while (!j->done) uv_run(svc->loop, UV_RUN_ONCE); /* before serving: nothing else runs yet */
  int rc = 0;
  if (j->err != ORTHOD_OK) {
    snprintf(err, errlen, "%s; move the file away (older checkpoints stay) or start with "
             "--restore=false", j->detail);
    rc = -1;
  }
  for (size_t i = 0; i < j->n; i++) {
    restored_t *r = &j->items[i];
    if (rc == 0 && restore_param(svc, r) != 0) {
      snprintf(err, errlen, "restoring %s: out of memory", path);
      rc = -1;
    }
    free(r->name);
    free(r->meta);
  }
  if (rc == 0)
    ORTHOD_LOG(ORTHOD_LOG_INFO, "restored checkpoint %" PRIu64 ": %zu parameters, %.1f MiB "
               "in %.2f s from %s", j->info.sequence, j->n,
               (double)j->info.bytes / (1024.0 * 1024.0),
               (double)(uv_hrtime() - t0) * 1e-9, path);
  free(j->items);
  free(j);
  return rc;
}

/* ---- method callbacks ------------------------------------------------------------------- */

/* The rpc layer keeps its own copy of the method table: find ours by path. */
static int method_index(const orthod_call_t *call) {
  const orthod_method_t *m = orthod_call_method(call);
  orthod_service_t *svc = m->method_data;
  for (int i = 0; i < M_COUNT; i++)
    if (strcmp(m->path, svc->methods[i].path) == 0) return i;
  return -1;
}

/* With --auth-tokens, every Optimizer call needs a known bearer token; Checkpoint needs an admin
 * token. The token is never logged or echoed. */
static void authenticate(ctx_t *ctx, const char *authorization) {
  ctx->token = orthod_auth_check(ctx->svc->auth, authorization);
  if (ctx->token == NULL)
    ctx_fail(ctx, GRPC_STATUS_UNAUTHENTICATED, "%s",
             authorization == NULL ? "this daemon needs a bearer token (metadata authorization: "
                                     "Bearer TOKEN)"
             : strncasecmp(authorization, "bearer ", 7) != 0
                 ? "the authorization metadata is not a bearer token (expected Bearer TOKEN)"
                 : "unknown bearer token");
  else if (ctx->method == M_CHECKPOINT && orthod_token_access(ctx->token) != ORTHOD_ACCESS_ADMIN)
    ctx_fail(ctx, GRPC_STATUS_PERMISSION_DENIED, "token '%s' (%s access) may not write "
             "checkpoints: that needs an admin token", orthod_token_name(ctx->token),
             access_name(orthod_token_access(ctx->token)));
}

static void on_start(orthod_call_t *call) {
  const orthod_method_t *m = orthod_call_method(call);
  orthod_service_t *svc = m->method_data;
  ctx_t *ctx = calloc(1, sizeof *ctx);
  if (ctx == NULL) {
    orthod_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  ctx->svc = svc;
  ctx->call = call;
  ctx->refs = 1;
  ctx->method = method_index(call);
  if (ctx->method < 0 || ctx->method >= M_COUNT) ctx->method = M_LIST; /* cannot happen */
  ctx->next = svc->calls;
  if (svc->calls) svc->calls->prev = ctx;
  svc->calls = ctx;
  orthod_call_set_data(call, ctx);
  orthod_metrics_rpc(svc->metrics, method_names[ctx->method]);
  const char *v = orthod_call_metadata(call, "orthod-protocol-version");
  char want[16];
  snprintf(want, sizeof want, "%d", ORTHOD_PROTOCOL_VERSION);
  if (v != NULL && strcmp(v, want) != 0)
    ctx_fail(ctx, GRPC_STATUS_FAILED_PRECONDITION,
             "client protocol version %.64s, server protocol version %d", v,
             ORTHOD_PROTOCOL_VERSION);
  else if (svc->draining)
    ctx_fail(ctx, GRPC_STATUS_UNAVAILABLE, "orthod is shutting down");
  else if (svc->auth != NULL)
    authenticate(ctx, orthod_call_metadata(call, "authorization"));
}

static void on_message(orthod_call_t *call, const uint8_t *data, size_t len) {
  ctx_t *ctx = orthod_call_data(call);
  if (ctx == NULL || ctx->over) return;
  if (ctx->svc->draining) {
    ctx_fail(ctx, GRPC_STATUS_UNAVAILABLE, "orthod is shutting down");
    return;
  }
  bool unary = ctx->method != M_UPLOAD && ctx->method != M_STEP;
  if (unary && ctx->got_message) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "%s takes exactly one %s message",
             method_names[ctx->method], request_names[ctx->method]);
    return;
  }
  ctx->got_message = true;
  switch (ctx->method) {
    case M_REGISTER: handle_register(ctx, data, len); break;
    case M_UPLOAD: handle_upload(ctx, data, len); break;
    case M_STEP: handle_step(ctx, data, len); break;
    case M_PULL: handle_pull(ctx, data, len); break;
    case M_LIST: handle_list(ctx, data, len); break;
    case M_DESCRIBE: handle_describe(ctx, data, len); break;
    case M_DROP: handle_drop(ctx, data, len); break;
    case M_SETCONFIG: handle_setconfig(ctx, data, len); break;
    case M_CHECKPOINT: handle_checkpoint(ctx, data, len); break;
    default: break;
  }
}

static void on_half_close(orthod_call_t *call) {
  ctx_t *ctx = orthod_call_data(call);
  if (ctx == NULL || ctx->over) return;
  ctx->half_closed = true;
  if (ctx->method == M_STEP) {
    step_half_close(ctx);
  } else if (ctx->method == M_UPLOAD) {
    upload_half_close(ctx);
  } else if (!ctx->got_message) {
    ctx_fail(ctx, GRPC_STATUS_INVALID_ARGUMENT, "%s needs one %s message",
             method_names[ctx->method], request_names[ctx->method]);
  }
}

static void on_writable(orthod_call_t *call) {
  ctx_t *ctx = orthod_call_data(call);
  if (ctx != NULL) ctx_pump(ctx);
}

static void on_done(orthod_call_t *call, bool cancelled) {
  ctx_t *ctx = orthod_call_data(call);
  if (ctx == NULL) return;
  orthod_service_t *svc = ctx->svc;
  if (cancelled && !ctx->over)
    ORTHOD_LOG(ORTHOD_LOG_DEBUG, "%s from %s: cancelled", method_names[ctx->method],
               orthod_call_peer(call));
  ctx->over = true;
  ctx_detach(ctx);
  ctx->call = NULL;
  if (ctx->prev) ctx->prev->next = ctx->next;
  else svc->calls = ctx->next;
  if (ctx->next) ctx->next->prev = ctx->prev;
  ctx->prev = ctx->next = NULL;
  orthod_call_set_data(call, NULL);
  ctx_release(ctx);
}

/* ---- service ---------------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *h) { free(h); }

int orthod_service_create(uv_loop_t *loop, orthod_device_t *dev, const orthod_server_config_t *cfg,
                          orthod_service_t **out) {
  orthod_service_t *svc = calloc(1, sizeof *svc);
  if (svc == NULL) return -1;
  svc->loop = loop;
  svc->dev = dev;
  svc->cfg = cfg;
  svc->timer = calloc(1, sizeof *svc->timer);
  if (svc->timer == NULL || uv_timer_init(loop, svc->timer) != 0) {
    free(svc->timer);
    free(svc);
    return -1;
  }
  svc->timer->data = svc;
  svc->next_sequence = 1;
  char *abs = realpath(cfg->state_dir, NULL);
  snprintf(svc->state_dir, sizeof svc->state_dir, "%s", abs ? abs : cfg->state_dir);
  free(abs);
  svc->ckpt_timer = calloc(1, sizeof *svc->ckpt_timer);
  if (svc->ckpt_timer == NULL || uv_timer_init(loop, svc->ckpt_timer) != 0) {
    free(svc->ckpt_timer);
    uv_close((uv_handle_t *)svc->timer, timer_closed);
    free(svc);
    return -1;
  }
  svc->ckpt_timer->data = svc;
  if (cfg->checkpoint_interval_s > 0) {
    uint64_t ms = (uint64_t)cfg->checkpoint_interval_s * 1000;
    uv_timer_start(svc->ckpt_timer, ckpt_timer_cb, ms, ms);
  }
  static const orthod_rpc_kind_t kinds[M_COUNT] = {
      ORTHOD_RPC_UNARY, ORTHOD_RPC_CLIENT_STREAM, ORTHOD_RPC_BIDI_STREAM, ORTHOD_RPC_SERVER_STREAM,
      ORTHOD_RPC_UNARY, ORTHOD_RPC_UNARY,         ORTHOD_RPC_UNARY,       ORTHOD_RPC_UNARY,
      ORTHOD_RPC_UNARY};
  static const char *const paths[M_COUNT] = {
      "/orthod.v1.Optimizer/Register", "/orthod.v1.Optimizer/Upload",
      "/orthod.v1.Optimizer/Step",     "/orthod.v1.Optimizer/Pull",
      "/orthod.v1.Optimizer/List",     "/orthod.v1.Optimizer/Describe",
      "/orthod.v1.Optimizer/Drop",     "/orthod.v1.Optimizer/SetConfig",
      "/orthod.v1.Optimizer/Checkpoint"};
  for (int i = 0; i < M_COUNT; i++)
    svc->methods[i] = (orthod_method_t){.path = paths[i],
                                        .kind = kinds[i],
                                        .method_data = svc,
                                        .on_start = on_start,
                                        .on_message = on_message,
                                        .on_half_close = on_half_close,
                                        .on_writable = on_writable,
                                        .on_done = on_done};
  *out = svc;
  return 0;
}

static void service_gauges(void *arg, orthod_metrics_gauges_t *g) {
  orthod_service_t *svc = arg;
  for (size_t i = 0; i < svc->n_params; i++) g->parameters += svc->params[i]->live;
  g->device_bytes = svc->bytes_used;
  g->device_bytes_limit = svc->cfg->memory_limit;
}

void orthod_service_set_auth(orthod_service_t *svc, const orthod_auth_t *auth) {
  svc->auth = auth;
}

void orthod_service_set_metrics(orthod_service_t *svc, orthod_metrics_t *m) {
  svc->metrics = m;
  orthod_metrics_set_gauges(m, service_gauges, svc);
}

size_t orthod_service_methods(orthod_service_t *svc, const orthod_method_t **out) {
  *out = svc->methods;
  return M_COUNT;
}

void orthod_service_drain(orthod_service_t *svc) {
  if (svc->draining) return;
  svc->draining = true;
  uv_timer_stop(svc->ckpt_timer);
  for (size_t i = 0; i < svc->n_params; i++) {
    param_t *p = svc->params[i];
    if (p->pushes == NULL) continue;
    char msg[MSG_MAX];
    snprintf(msg, sizeof msg, "orthod is shutting down; the pending step of '%s' was not applied",
             p->name);
    p->refs++;
    param_abort_pushes(p, GRPC_STATUS_UNAVAILABLE, msg);
    param_release(p);
  }
  /* end idle streams; the others end when their in-flight work is answered */
  for (ctx_t *c = svc->calls; c != NULL;) {
    ctx_t *next = c->next;
    c->refs++;
    if (c->method == M_UPLOAD && !c->busy)
      ctx_fail(c, GRPC_STATUS_UNAVAILABLE, "orthod is shutting down");
    else
      ctx_maybe_finish(c);
    next = c->next;
    ctx_release(c);
    c = next;
  }
}

void orthod_service_destroy(orthod_service_t *svc) {
  if (svc == NULL) return;
  for (size_t i = 0; i < svc->n_params; i++) {
    param_t *p = svc->params[i];
    while (p->pushes != NULL) {
      push_t *x = p->pushes;
      size_t n = 0;
      pusher_t *ps = push_take(x, &n);
      for (size_t k = 0; k < n; k++) ctx_release(ps[k].ctx);
      free(ps);
      push_free(x);
    }
    p->pending = false;
    param_release(p);
  }
  free(svc->params);
  uv_timer_stop(svc->timer);
  uv_close((uv_handle_t *)svc->timer, timer_closed);
  uv_timer_stop(svc->ckpt_timer);
  uv_close((uv_handle_t *)svc->ckpt_timer, timer_closed);
  free(svc->scratch);
  free(svc);
}
