/* client.c — liborthod-client: channel, errors, the unary RPCs (Register, Describe, Drop,
 * SetConfig, List, Checkpoint, Health/Check), Upload and Pull. Each call runs on its own pluck
 * completion queue, so a call only ever sees its own events. */
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"
#include "grpc/health/v1/health.pb-c.h"
#include "orthod/tensor.h"

#define METHOD(name) "/orthod.v1.Optimizer/" name

/* ---- errors and small helpers ------------------------------------------------------------ */

static const char *const status_names[] = {
    "OK",        "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED", "NOT_FOUND",  "ALREADY_EXISTS",    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL",       "UNAVAILABLE",       "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *orthod_client_status_name(int status) {
  if (status < 0 || status >= (int)(sizeof status_names / sizeof status_names[0])) return "UNKNOWN";
  return status_names[status];
}

int orthod__cl_fail(char *err, int code, const char *fmt, ...) {
  int n = snprintf(err, ORTHOD__ERR_LEN, "%s: ", orthod_client_status_name(code));
  if (n < 0 || n >= ORTHOD__ERR_LEN) return code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err + n, ORTHOD__ERR_LEN - (size_t)n, fmt, ap);
  va_end(ap);
  return code;
}

int orthod__cl_status(char *err, grpc_status_code code, grpc_slice details) {
  if (code == GRPC_STATUS_OK) {
    err[0] = '\0';
    return 0;
  }
  size_t len = GRPC_SLICE_LENGTH(details);
  if (len == 0) return orthod__cl_fail(err, (int)code, "(no message)");
  return orthod__cl_fail(err, (int)code, "%.*s", (int)(len > 900 ? 900 : len),
                      (const char *)GRPC_SLICE_START_PTR(details));
}

orthod_client_dtype_t orthod__cl_dtype(orthod_client_dtype_t d) {
  switch (d) {
    case ORTHOD_CLIENT_DEFAULT:
    case ORTHOD_CLIENT_F32: return ORTHOD_CLIENT_F32;
    case ORTHOD_CLIENT_BF16: return ORTHOD_CLIENT_BF16;
    case ORTHOD_CLIENT_F16: return ORTHOD_CLIENT_F16;
  }
  return (orthod_client_dtype_t)0;
}

size_t orthod_client_dtype_size(orthod_client_dtype_t dtype) {
  switch (orthod__cl_dtype(dtype)) {
    case ORTHOD_CLIENT_F32: return 4;
    case ORTHOD_CLIENT_BF16:
    case ORTHOD_CLIENT_F16: return 2;
    default: return 0;
  }
}

/* The engine's converter: the same round-to-nearest-even code as the daemon, bit for bit. */
static orthod_dtype_t core_dtype(orthod_client_dtype_t d) {
  switch (orthod__cl_dtype(d)) {
    case ORTHOD_CLIENT_BF16: return ORTHOD_DTYPE_BF16;
    case ORTHOD_CLIENT_F16: return ORTHOD_DTYPE_F16;
    default: return ORTHOD_DTYPE_F32;
  }
}

int orthod_client_convert(void *dst, orthod_client_dtype_t dst_dtype, const void *src,
                          orthod_client_dtype_t src_dtype, size_t n) {
  if (orthod__cl_dtype(dst_dtype) == 0 || orthod__cl_dtype(src_dtype) == 0)
    return GRPC_STATUS_INVALID_ARGUMENT;
  if (n == 0) return 0;
  if (orthod_convert(dst, core_dtype(dst_dtype), src, core_dtype(src_dtype), n) != ORTHOD_OK)
    return GRPC_STATUS_INVALID_ARGUMENT;
  return 0;
}

size_t orthod__cl_chunk_elements(const orthod_client_t *c, orthod_client_dtype_t wire) {
  size_t per = c->opts.chunk_bytes / orthod_client_dtype_size(wire);
  return per ? per : 1;
}

static bool name_ok(const char *name) {
  return name != NULL && name[0] != '\0' && strlen(name) <= ORTHOD_CLIENT_NAME_MAX;
}

/* ---- chunk coverage ------------------------------------------------------------------------ */

int orthod__cl_cover_add(orthod__cl_cover_t *cv, uint64_t offset, uint64_t count, char *err) {
  if (cv->n == cv->cap) {
    size_t cap = cv->cap ? cv->cap * 2 : 16;
    uint64_t *p = realloc(cv->pairs, cap * 2 * sizeof *p);
    if (p == NULL) return orthod__cl_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    cv->pairs = p;
    cv->cap = cap;
  }
  cv->pairs[2 * cv->n] = offset;
  cv->pairs[2 * cv->n + 1] = count;
  cv->n++;
  cv->total += count;
  return 0;
}

static int cmp_pair(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

bool orthod__cl_cover_complete(orthod__cl_cover_t *cv, uint64_t elements) {
  if (cv->total != elements) return false;
  /* Chunks normally arrive in order; sort only when they did not. */
  for (size_t i = 1; i < cv->n; i++) {
    if (cv->pairs[2 * i] < cv->pairs[2 * i - 2]) {
      qsort(cv->pairs, cv->n, 2 * sizeof *cv->pairs, cmp_pair);
      break;
    }
  }
  uint64_t next = 0;
  for (size_t i = 0; i < cv->n; i++) {
    if (cv->pairs[2 * i] != next) return false;
    next += cv->pairs[2 * i + 1];
  }
  return next == elements;
}

void orthod__cl_cover_free(orthod__cl_cover_t *cv) {
  free(cv->pairs);
  memset(cv, 0, sizeof *cv);
}

/* ---- client -------------------------------------------------------------------------------- */

void orthod_client_options_init(orthod_client_options_t *opts) {
  memset(opts, 0, sizeof *opts);
  opts->deadline_ms = 60000;
  opts->chunk_bytes = (size_t)1 << 20;
  opts->max_message_bytes = (size_t)64 << 20;
  opts->keepalive_time_ms = 30000;
  opts->keepalive_timeout_ms = 20000;
  opts->list_page_size = 1000;
}

/* Why the last create on this thread failed: there is no client yet to hold the text. */
static _Thread_local char create_err[ORTHOD__ERR_LEN];

const char *orthod_client_create_error(void) { return create_err; }

char *orthod__cl_create_err(void) { return create_err; }

/* A PEM file larger than this is not a certificate, a key or any sane CA bundle (the Mozilla set
 * is about 200 KiB): refuse it rather than read a wrong path (a device, a data file) to its end. */
#define PEM_MAX ((size_t)16 << 20)

/* Read the PEM file `path` of option `what` into a new NUL-terminated string (*out). */
static int read_pem(const char *what, const char *path, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return orthod__cl_fail(create_err, GRPC_STATUS_INVALID_ARGUMENT, "cannot read %s '%s': %s",
                           what, path, strerror(errno));
  size_t n = 0, cap = 4096;
  char *buf = malloc(cap);
  int rc = buf ? 0 : orthod__cl_fail(create_err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  while (rc == 0) {
    if (n + 1 == cap) { /* full: the last byte is kept for the NUL */
      char *more = cap >= PEM_MAX ? NULL : realloc(buf, cap * 2);
      if (more == NULL) {
        rc = cap >= PEM_MAX
                 ? orthod__cl_fail(create_err, GRPC_STATUS_INVALID_ARGUMENT,
                                   "%s '%s' is larger than %zu MiB: not a PEM file", what, path,
                                   PEM_MAX >> 20)
                 : orthod__cl_fail(create_err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        break;
      }
      buf = more;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - 1 - n, f);
    if (got == 0) break;
    n += got;
  }
  if (rc == 0 && ferror(f)) {
    /* fopen of a directory succeeds; its read fails here with EISDIR */
    rc = orthod__cl_fail(create_err, GRPC_STATUS_INVALID_ARGUMENT, "cannot read %s '%s': %s",
                         what, path, strerror(errno));
  } else if (rc == 0) {
    buf[n] = '\0';
    /* A DER file or the wrong file would otherwise only fail at the first call, as an opaque
     * handshake error (strstr also stops at the NUL bytes of binary data). */
    if (strstr(buf, "-----BEGIN ") == NULL)
      rc = orthod__cl_fail(create_err, GRPC_STATUS_INVALID_ARGUMENT,
                           "%s '%s' holds no PEM block (-----BEGIN ...)", what, path);
  }
  fclose(f);
  if (rc != 0) free(buf);
  else *out = buf;
  return rc;
}

/* The channel credentials the options ask for: insecure, or TLS with the files read. */
static int make_creds(const orthod_client_options_t *o, grpc_channel_credentials **creds) {
  *creds = NULL;
  bool tls = o->tls || o->tls_ca_file != NULL || o->tls_cert_file != NULL ||
             o->tls_key_file != NULL || o->tls_server_name != NULL;
  if (!tls) {
    *creds = grpc_insecure_credentials_create();
    if (*creds == NULL)
      return orthod__cl_fail(create_err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return 0;
  }
  if ((o->tls_cert_file == NULL) != (o->tls_key_file == NULL))
    return orthod__cl_fail(create_err, GRPC_STATUS_INVALID_ARGUMENT,
                           "tls_cert_file and tls_key_file go together");
  if (o->tls_server_name != NULL && o->tls_server_name[0] == '\0')
    return orthod__cl_fail(create_err, GRPC_STATUS_INVALID_ARGUMENT,
                           "tls_server_name is empty (NULL: the host of the address)");
  char *ca = NULL, *cert = NULL, *key = NULL;
  int rc = 0;
  if (o->tls_ca_file != NULL) rc = read_pem("tls_ca_file", o->tls_ca_file, &ca);
  if (rc == 0 && o->tls_cert_file != NULL) rc = read_pem("tls_cert_file", o->tls_cert_file, &cert);
  if (rc == 0 && o->tls_key_file != NULL) rc = read_pem("tls_key_file", o->tls_key_file, &key);
  if (rc == 0) {
    /* gRPC copies the PEM strings (and checks them only at the handshake). */
    grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
    *creds = grpc_ssl_credentials_create(ca, cert != NULL ? &pair : NULL, NULL, NULL);
    if (*creds == NULL)
      rc = orthod__cl_fail(create_err, GRPC_STATUS_INTERNAL, "cannot create TLS credentials");
  }
  free(ca);
  free(cert);
  free(key);
  return rc;
}

int orthod_client_create(const char *address, const orthod_client_options_t *opts,
                         orthod_client_t **out) {
  create_err[0] = '\0';
  if (out == NULL)
    return orthod__cl_fail(create_err, GRPC_STATUS_INVALID_ARGUMENT, "create: out is NULL");
  *out = NULL;
  if (address == NULL || address[0] == '\0')
    return orthod__cl_fail(create_err, GRPC_STATUS_INVALID_ARGUMENT, "create: no address");
  orthod_client_t *c = calloc(1, sizeof *c);
  if (c == NULL)
    return orthod__cl_fail(create_err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  if (opts != NULL) c->opts = *opts;
  else orthod_client_options_init(&c->opts);
  if (c->opts.chunk_bytes < 4) c->opts.chunk_bytes = (size_t)1 << 20;
  if (c->opts.max_message_bytes == 0) c->opts.max_message_bytes = (size_t)64 << 20;
  if (c->opts.keepalive_time_ms != 0 && c->opts.keepalive_time_ms < 10000) {
    /* The daemon answers pings more frequent than its permit with GOAWAY(too_many_pings). */
    orthod__cl_fail(create_err, GRPC_STATUS_INVALID_ARGUMENT,
                    "keepalive_time_ms %u is below 10000, the daemon's ping permit",
                    c->opts.keepalive_time_ms);
    free(c);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  int rc = GRPC_STATUS_RESOURCE_EXHAUSTED;
  if (c->opts.token != NULL) {
    c->token = strdup(c->opts.token);
    size_t n = strlen(c->opts.token) + sizeof "Bearer ";
    c->auth = malloc(n);
    if (c->token == NULL || c->auth == NULL) {
      orthod__cl_fail(create_err, rc, "out of memory");
      goto fail;
    }
    snprintf(c->auth, n, "Bearer %s", c->token);
    c->opts.token = c->token;
  }

  grpc_init();
  grpc_channel_credentials *creds;
  rc = make_creds(&c->opts, &creds);
  if (rc != 0) {
    grpc_shutdown();
    goto fail;
  }
  int max_msg = c->opts.max_message_bytes > (size_t)INT32_MAX ? INT32_MAX
                                                               : (int)c->opts.max_message_bytes;
  grpc_arg args[8];
  size_t n_args = 0;
  args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                              .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                              .value.integer = max_msg};
  args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                              .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
                              .value.integer = max_msg};
  if (c->opts.keepalive_time_ms != 0) {
    args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_KEEPALIVE_TIME_MS,
                                .value.integer = (int)c->opts.keepalive_time_ms};
    args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                                .value.integer = (int)(c->opts.keepalive_timeout_ms
                                                           ? c->opts.keepalive_timeout_ms
                                                           : 20000)};
    /* Keep pinging an idle Step stream: by default gRPC stops after 2 pings without data. */
    args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                                .key = GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA,
                                .value.integer = 0};
  }
  if (c->opts.tls_server_name != NULL)
    args[n_args++] = (grpc_arg){.type = GRPC_ARG_STRING, .key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG,
                                .value.string = (char *)c->opts.tls_server_name};
  grpc_channel_args ch_args = {.num_args = n_args, .args = args};
  c->channel = grpc_channel_create(address, creds, &ch_args);
  grpc_channel_credentials_release(creds);
  /* Read above; the caller's strings need not outlive create. */
  c->opts.tls_ca_file = c->opts.tls_cert_file = c->opts.tls_key_file = NULL;
  c->opts.tls_server_name = NULL;
  if (c->channel == NULL) {
    grpc_shutdown();
    rc = orthod__cl_fail(create_err, GRPC_STATUS_RESOURCE_EXHAUSTED,
                         "cannot create a channel for '%s'", address);
    goto fail;
  }
  c->err[0] = '\0';
  *out = c;
  return 0;

fail:
  free(c->token);
  free(c->auth);
  free(c);
  return rc;
}

void orthod_client_destroy(orthod_client_t *c) {
  if (c == NULL) return;
  grpc_channel_destroy(c->channel);
  free(c->token);
  free(c->auth);
  free(c);
  grpc_shutdown();
}

const char *orthod_client_last_error(const orthod_client_t *c) {
  return c == NULL ? "INVALID_ARGUMENT: no client" : c->err;
}

/* ---- calls ----------------------------------------------------------------------------------- */

int orthod__cl_call_start(orthod_client_t *c, const char *method, int64_t deadline_ms,
                       orthod__cl_call_t *call, char *err) {
  memset(call, 0, sizeof *call);
  call->cq = grpc_completion_queue_create_for_pluck(NULL);
  if (call->cq == NULL) return orthod__cl_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "no queue");
  gpr_timespec deadline = deadline_ms > 0
                              ? gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                             gpr_time_from_millis(deadline_ms, GPR_TIMESPAN))
                              : gpr_inf_future(GPR_CLOCK_REALTIME);
  call->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, call->cq,
                                        grpc_slice_from_static_string(method), NULL, deadline,
                                        NULL);
  if (call->call == NULL) {
    orthod__cl_call_end(call);
    return orthod__cl_fail(err, GRPC_STATUS_INTERNAL, "cannot create a call for %s", method);
  }
  call->md[0].key = grpc_slice_from_static_string("orthod-protocol-version");
  call->md[0].value = grpc_slice_from_static_string("1");
  call->n_md = 1;
  if (c->auth != NULL) {
    call->md[1].key = grpc_slice_from_static_string("authorization");
    call->md[1].value = grpc_slice_from_static_string(c->auth);
    call->n_md = 2;
  }
  return 0;
}

void orthod__cl_call_end(orthod__cl_call_t *call) {
  if (call->call != NULL) grpc_call_unref(call->call);
  call->call = NULL;
  if (call->cq != NULL) {
    grpc_completion_queue_shutdown(call->cq);
    while (grpc_completion_queue_pluck(call->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
               .type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(call->cq);
    call->cq = NULL;
  }
}

bool orthod__cl_call_batch(orthod__cl_call_t *call, const grpc_op *ops, size_t n, void *tag) {
  if (grpc_call_start_batch(call->call, ops, n, tag, NULL) != GRPC_CALL_OK) return false;
  grpc_event ev = grpc_completion_queue_pluck(call->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME),
                                              NULL);
  return ev.type == GRPC_OP_COMPLETE && ev.success;
}

grpc_byte_buffer *orthod__cl_pack(const ProtobufCMessage *msg) {
  size_t len = protobuf_c_message_get_packed_size(msg);
  grpc_slice s = grpc_slice_malloc(len);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

ProtobufCMessage *orthod__cl_unpack(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *bb) {
  grpc_byte_buffer_reader r;
  if (!grpc_byte_buffer_reader_init(&r, bb)) return NULL;
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  ProtobufCMessage *m =
      protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
  grpc_slice_unref(s);
  return m;
}

/* A unary call: one request, one response (parsed as resp_desc into *resp on OK). */
static int unary(orthod_client_t *c, const char *method, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp) {
  *resp = NULL;
  orthod__cl_call_t call;
  int rc = orthod__cl_call_start(c, method, c->opts.deadline_ms, &call, c->err);
  if (rc != 0) return rc;
  grpc_byte_buffer *send = orthod__cl_pack(req);
  grpc_byte_buffer *recv = NULL;
  grpc_metadata_array init_md, trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = call.n_md;
  ops[0].data.send_initial_metadata.metadata = call.md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
  ops[5].data.recv_status_on_client.status = &status;
  ops[5].data.recv_status_on_client.status_details = &details;
  if (!orthod__cl_call_batch(&call, ops, 6, (void *)1)) {
    rc = orthod__cl_fail(c->err, GRPC_STATUS_INTERNAL, "%s: the call could not run", method);
  } else if (status != GRPC_STATUS_OK) {
    rc = orthod__cl_status(c->err, status, details);
  } else if (recv == NULL) {
    rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS, "%s: OK without a response", method);
  } else if ((*resp = orthod__cl_unpack(resp_desc, recv)) == NULL) {
    rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS, "%s: malformed response", method);
  } else {
    c->err[0] = '\0';
    rc = 0;
  }
  grpc_byte_buffer_destroy(send);
  if (recv != NULL) grpc_byte_buffer_destroy(recv);
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
  orthod__cl_call_end(&call);
  return rc;
}

/* ---- parameter infos ------------------------------------------------------------------------ */

void orthod_param_info_clear(orthod_param_info_t *info) {
  if (info == NULL) return;
  free(info->storage_);
  memset(info, 0, sizeof *info);
}

const char *orthod_param_info_option(const orthod_param_info_t *info, const char *key) {
  for (size_t i = 0; info != NULL && key != NULL && i < info->n_options; i++)
    if (strcmp(info->options[i].key, key) == 0) return info->options[i].value;
  return NULL;
}

static const char *str_or_empty(const char *s) { return s ? s : ""; }

int orthod__cl_info_from_msg(const Orthod__V1__ParameterInfo *msg, orthod_param_info_t *info,
                          char *err) {
  memset(info, 0, sizeof *info);
  const Orthod__V1__ParameterSpec *spec = msg->spec;
  const char *name = spec ? str_or_empty(spec->name) : "";
  const char *algo = spec ? str_or_empty(spec->algorithm) : "";
  size_t n_opt = spec ? spec->n_options : 0;
  size_t bytes = n_opt * sizeof(orthod_option_t) + strlen(name) + 1 + strlen(algo) + 1;
  for (size_t i = 0; i < n_opt; i++)
    bytes += strlen(str_or_empty(spec->options[i]->key)) + 1 +
             strlen(str_or_empty(spec->options[i]->value)) + 1;
  char *mem = malloc(bytes);
  if (mem == NULL) return orthod__cl_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  info->storage_ = mem;
  info->options = (orthod_option_t *)(void *)mem;
  char *p = mem + n_opt * sizeof(orthod_option_t);
#define COPY_STR(dst, src)         \
  do {                             \
    size_t l_ = strlen(src) + 1;   \
    memcpy(p, (src), l_);          \
    (dst) = p;                     \
    p += l_;                       \
  } while (0)
  COPY_STR(info->name, name);
  COPY_STR(info->algorithm, algo);
  for (size_t i = 0; i < n_opt; i++) {
    char *k, *v;
    COPY_STR(k, str_or_empty(spec->options[i]->key));
    COPY_STR(v, str_or_empty(spec->options[i]->value));
    info->options[i].key = k;
    info->options[i].value = v;
  }
#undef COPY_STR
  info->n_options = n_opt;
  if (n_opt == 0) info->options = NULL;
  if (spec != NULL) {
    info->ndim = (int)(spec->n_shape > ORTHOD_CLIENT_MAX_DIMS ? ORTHOD_CLIENT_MAX_DIMS
                                                              : spec->n_shape);
    for (int d = 0; d < info->ndim; d++) info->shape[d] = spec->shape[d];
    info->workers = spec->workers;
    info->sync_mode = (orthod_sync_mode_t)spec->sync_mode;
    info->max_staleness = spec->max_staleness;
    info->sync_timeout_ms = spec->sync_timeout_ms;
  }
  info->step = msg->step;
  info->elements = msg->elements;
  info->device_bytes = msg->device_bytes;
  return 0;
}

/* ---- unary RPCs ---------------------------------------------------------------------------- */

/* Borrowed views of caller options as protobuf-c messages (nothing is copied). */
typedef struct {
  Orthod__V1__Option *opts;
  Orthod__V1__Option **ptrs;
} option_view_t;

static int option_view(const orthod_option_t *options, size_t n, option_view_t *v, char *err) {
  v->opts = NULL;
  v->ptrs = NULL;
  if (n == 0) return 0;
  if (options == NULL) return orthod__cl_fail(err, GRPC_STATUS_INVALID_ARGUMENT, "options is NULL");
  v->opts = calloc(n, sizeof *v->opts);
  v->ptrs = calloc(n, sizeof *v->ptrs);
  if (v->opts == NULL || v->ptrs == NULL) {
    free(v->opts);
    free(v->ptrs);
    return orthod__cl_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    if (options[i].key == NULL || options[i].value == NULL) {
      free(v->opts);
      free(v->ptrs);
      return orthod__cl_fail(err, GRPC_STATUS_INVALID_ARGUMENT, "option %zu has a NULL key or value",
                          i);
    }
    orthod__v1__option__init(&v->opts[i]);
    v->opts[i].key = (char *)options[i].key;
    v->opts[i].value = (char *)options[i].value;
    v->ptrs[i] = &v->opts[i];
  }
  return 0;
}

static void option_view_free(option_view_t *v) {
  free(v->opts);
  free(v->ptrs);
}

int orthod_register(orthod_client_t *c, const orthod_param_spec_t *spec,
                    orthod_param_info_t *info, bool *created) {
  if (info != NULL) memset(info, 0, sizeof *info);
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (spec == NULL || !name_ok(spec->name))
    return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT,
                        "register: a name of 1..%d bytes is required", ORTHOD_CLIENT_NAME_MAX);
  if (spec->ndim < 1 || spec->ndim > ORTHOD_CLIENT_MAX_DIMS)
    return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT,
                        "register '%s': ndim %d is not in 1..%d", spec->name, spec->ndim,
                        ORTHOD_CLIENT_MAX_DIMS);
  option_view_t ov;
  int rc = option_view(spec->options, spec->n_options, &ov, c->err);
  if (rc != 0) return rc;
  Orthod__V1__ParameterSpec ps = ORTHOD__V1__PARAMETER_SPEC__INIT;
  ps.name = (char *)spec->name;
  ps.n_shape = (size_t)spec->ndim;
  ps.shape = (int64_t *)spec->shape;
  ps.algorithm = (char *)(spec->algorithm ? spec->algorithm : "");
  ps.n_options = spec->n_options;
  ps.options = ov.ptrs;
  ps.workers = spec->workers;
  ps.sync_mode = (Orthod__V1__SyncMode)spec->sync_mode;
  ps.max_staleness = spec->max_staleness;
  ps.sync_timeout_ms = spec->sync_timeout_ms;
  Orthod__V1__RegisterRequest req = ORTHOD__V1__REGISTER_REQUEST__INIT;
  req.spec = &ps;
  ProtobufCMessage *m;
  rc = unary(c, METHOD("Register"), &req.base, &orthod__v1__register_response__descriptor, &m);
  option_view_free(&ov);
  if (rc != 0) return rc;
  Orthod__V1__RegisterResponse *resp = (Orthod__V1__RegisterResponse *)m;
  if (created != NULL) *created = resp->created;
  if (info != NULL) {
    if (resp->info == NULL) rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS, "Register: no info");
    else rc = orthod__cl_info_from_msg(resp->info, info, c->err);
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

int orthod_describe(orthod_client_t *c, const char *name, orthod_param_info_t *info) {
  if (info != NULL) memset(info, 0, sizeof *info);
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (!name_ok(name) || info == NULL)
    return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT, "describe: name and info required");
  Orthod__V1__DescribeRequest req = ORTHOD__V1__DESCRIBE_REQUEST__INIT;
  req.name = (char *)name;
  ProtobufCMessage *m;
  int rc = unary(c, METHOD("Describe"), &req.base, &orthod__v1__parameter_info__descriptor, &m);
  if (rc != 0) return rc;
  rc = orthod__cl_info_from_msg((Orthod__V1__ParameterInfo *)m, info, c->err);
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

int orthod_drop(orthod_client_t *c, const char *name, uint64_t *step) {
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (!name_ok(name))
    return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT, "drop: a name is required");
  Orthod__V1__DropRequest req = ORTHOD__V1__DROP_REQUEST__INIT;
  req.name = (char *)name;
  ProtobufCMessage *m;
  int rc = unary(c, METHOD("Drop"), &req.base, &orthod__v1__drop_response__descriptor, &m);
  if (rc != 0) return rc;
  if (step != NULL) *step = ((Orthod__V1__DropResponse *)m)->step;
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

int orthod_set_config(orthod_client_t *c, const char *name, const orthod_option_t *options,
                      size_t n_options, orthod_param_info_t *info) {
  if (info != NULL) memset(info, 0, sizeof *info);
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (!name_ok(name))
    return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT, "set_config: a name is required");
  option_view_t ov;
  int rc = option_view(options, n_options, &ov, c->err);
  if (rc != 0) return rc;
  Orthod__V1__SetConfigRequest req = ORTHOD__V1__SET_CONFIG_REQUEST__INIT;
  req.name = (char *)name;
  req.n_options = n_options;
  req.options = ov.ptrs;
  ProtobufCMessage *m;
  rc = unary(c, METHOD("SetConfig"), &req.base, &orthod__v1__parameter_info__descriptor, &m);
  option_view_free(&ov);
  if (rc != 0) return rc;
  if (info != NULL) rc = orthod__cl_info_from_msg((Orthod__V1__ParameterInfo *)m, info, c->err);
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

void orthod_param_list_clear(orthod_param_list_t *list) {
  if (list == NULL) return;
  for (size_t i = 0; i < list->n; i++) orthod_param_info_clear(&list->params[i]);
  free(list->params);
  memset(list, 0, sizeof *list);
}

/* Append one List reply's params to list (*cap: the length of list->params, grown as needed).
 * The daemon pages in name order, so a page must start after the last name already held:
 * anything else would repeat parameters, and a daemon that kept answering so (a token that leads
 * back) would never reach the last page. */
static int list_append(orthod_client_t *c, const Orthod__V1__ListResponse *resp,
                       orthod_param_list_t *list, size_t *cap) {
  if (resp->n_params == 0) return 0;
  if (list->n + resp->n_params > *cap) {
    size_t want = *cap * 2 > list->n + resp->n_params ? *cap * 2 : list->n + resp->n_params;
    orthod_param_info_t *p = realloc(list->params, want * sizeof *p);
    if (p == NULL) return orthod__cl_fail(c->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    list->params = p;
    *cap = want;
  }
  size_t first = list->n;
  for (size_t i = 0; i < resp->n_params; i++) {
    int rc = orthod__cl_info_from_msg(resp->params[i], &list->params[list->n], c->err);
    if (rc != 0) return rc;
    list->n++;
  }
  if (first > 0 && strcmp(list->params[first].name, list->params[first - 1].name) <= 0)
    return orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS,
                           "List: a page starts at '%s', not after '%s' where the previous one "
                           "ended", list->params[first].name, list->params[first - 1].name);
  return 0;
}

int orthod_list(orthod_client_t *c, const char *prefix, orthod_param_list_t *list) {
  if (list != NULL) memset(list, 0, sizeof *list);
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (list == NULL) return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT, "list: no output");
  Orthod__V1__ListRequest req = ORTHOD__V1__LIST_REQUEST__INIT;
  req.prefix = (char *)(prefix ? prefix : "");
  req.page_size = c->opts.list_page_size;
  char *token = NULL; /* our copy of the next page's token: the reply holding it is freed */
  size_t cap = 0;
  int rc;
  do {
    req.page_token = token != NULL ? token : "";
    ProtobufCMessage *m;
    rc = unary(c, METHOD("List"), &req.base, &orthod__v1__list_response__descriptor, &m);
    if (rc != 0) break;
    Orthod__V1__ListResponse *resp = (Orthod__V1__ListResponse *)m;
    /* The usage of the last page is the most recent. */
    list->device_bytes_used = resp->device_bytes_used;
    list->device_bytes_limit = resp->device_bytes_limit;
    const char *next = str_or_empty(resp->next_page_token);
    rc = list_append(c, resp, list, &cap);
    /* A token that does not move on would ask for the same page forever. */
    if (rc == 0 && next[0] != '\0' &&
        (resp->n_params == 0 || (token != NULL && strcmp(next, token) == 0)))
      rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS,
                           "List: next_page_token '%.200s' does not advance (%zu parameters in "
                           "its page)", next, resp->n_params);
    free(token);
    token = NULL;
    if (rc == 0 && next[0] != '\0' && (token = strdup(next)) == NULL)
      rc = orthod__cl_fail(c->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    protobuf_c_message_free_unpacked(m, NULL);
  } while (rc == 0 && token != NULL);
  free(token);
  if (rc != 0) orthod_param_list_clear(list);
  return rc;
}

int orthod_checkpoint(orthod_client_t *c, orthod_client_checkpoint_info_t *info) {
  if (info != NULL) memset(info, 0, sizeof *info);
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  Orthod__V1__CheckpointRequest req = ORTHOD__V1__CHECKPOINT_REQUEST__INIT;
  ProtobufCMessage *m;
  int rc = unary(c, METHOD("Checkpoint"), &req.base, &orthod__v1__checkpoint_response__descriptor,
                 &m);
  if (rc != 0) return rc;
  Orthod__V1__CheckpointResponse *resp = (Orthod__V1__CheckpointResponse *)m;
  const char *path = str_or_empty(resp->path);
  size_t len = strlen(path);
  /* A path cut to fit would name another file: refuse it rather than truncate. */
  if (len == 0 || len >= ORTHOD_CLIENT_PATH_MAX) {
    rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS,
                         "Checkpoint: a path of %zu bytes (expected 1..%d)", len,
                         ORTHOD_CLIENT_PATH_MAX - 1);
  } else if (info != NULL) {
    memcpy(info->path, path, len + 1);
    info->sequence = resp->sequence;
    info->parameters = resp->parameters;
    info->bytes = resp->bytes;
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

int orthod_health_check(orthod_client_t *c, const char *service, int *serving) {
  if (serving != NULL) *serving = 0;
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)(service ? service : "");
  ProtobufCMessage *m;
  int rc = unary(c, "/grpc.health.v1.Health/Check", &req.base,
                 &grpc__health__v1__health_check_response__descriptor, &m);
  if (rc != 0) return rc;
  if (serving != NULL) *serving = (int)((Grpc__Health__V1__HealthCheckResponse *)m)->status;
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

/* ---- Upload ----------------------------------------------------------------------------------- */

static int check_tensors(orthod_client_t *c, const orthod_tensor_t *t, size_t n, const char *what) {
  if (n == 0 || t == NULL)
    return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT, "%s: no tensors", what);
  for (size_t i = 0; i < n; i++) {
    if (!name_ok(t[i].name))
      return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT,
                          "%s: tensor %zu needs a name of 1..%d bytes", what, i,
                          ORTHOD_CLIENT_NAME_MAX);
    if (t[i].data == NULL || t[i].elements == 0 || orthod__cl_dtype(t[i].dtype) == 0)
      return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT,
                          "%s '%s': data, elements >= 1 and a valid dtype are required", what,
                          t[i].name);
  }
  return 0;
}

int orthod_upload(orthod_client_t *c, const orthod_tensor_t *tensors, size_t n,
                  orthod_client_dtype_t wire, orthod_param_info_t *infos, size_t *n_infos) {
  if (n_infos != NULL) *n_infos = 0;
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  int rc = check_tensors(c, tensors, n, "upload");
  if (rc != 0) return rc;
  if (wire != ORTHOD_CLIENT_DEFAULT && orthod__cl_dtype(wire) == 0)
    return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT, "upload: invalid wire dtype %d",
                        (int)wire);
  orthod__cl_call_t call;
  rc = orthod__cl_call_start(c, METHOD("Upload"), c->opts.deadline_ms, &call, c->err);
  if (rc != 0) return rc;

  void *scratch = NULL;
  grpc_byte_buffer *recv = NULL;
  grpc_metadata_array init_md, trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_INITIAL_METADATA;
  op.data.send_initial_metadata.count = call.n_md;
  op.data.send_initial_metadata.metadata = call.md;
  bool sending = orthod__cl_call_batch(&call, &op, 1, (void *)1);

  /* Send every chunk; a failed send means the daemon ended the call: go read its status. */
  for (size_t i = 0; sending && i < n; i++) {
    orthod_client_dtype_t host = orthod__cl_dtype(tensors[i].dtype);
    orthod_client_dtype_t w = wire == ORTHOD_CLIENT_DEFAULT ? host : orthod__cl_dtype(wire);
    size_t per = orthod__cl_chunk_elements(c, w), hsz = orthod_client_dtype_size(host),
           wsz = orthod_client_dtype_size(w);
    if (host != w && scratch == NULL && (scratch = malloc(per * wsz)) == NULL) {
      rc = orthod__cl_fail(c->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      break;
    }
    for (size_t off = 0; sending && off < tensors[i].elements; off += per) {
      size_t cnt = tensors[i].elements - off < per ? tensors[i].elements - off : per;
      const uint8_t *src = (const uint8_t *)tensors[i].data + off * hsz;
      if (host != w) {
        orthod_client_convert(scratch, w, src, host, cnt);
        src = scratch;
      }
      Orthod__V1__TensorChunk chunk = ORTHOD__V1__TENSOR_CHUNK__INIT;
      chunk.offset = off;
      chunk.dtype = (Orthod__V1__DType)w;
      chunk.data.len = cnt * wsz;
      chunk.data.data = (uint8_t *)src;
      Orthod__V1__UploadRequest req = ORTHOD__V1__UPLOAD_REQUEST__INIT;
      req.name = (char *)tensors[i].name;
      req.chunk = &chunk;
      grpc_byte_buffer *bb = orthod__cl_pack(&req.base);
      memset(&op, 0, sizeof op);
      op.op = GRPC_OP_SEND_MESSAGE;
      op.data.send_message.send_message = bb;
      sending = orthod__cl_call_batch(&call, &op, 1, (void *)2);
      grpc_byte_buffer_destroy(bb);
    }
  }
  if (rc != 0) grpc_call_cancel(call.call, NULL);

  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  size_t k = 0;
  if (sending && rc == 0) ops[k++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[k].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[k++].data.recv_initial_metadata.recv_initial_metadata = &init_md;
  ops[k].op = GRPC_OP_RECV_MESSAGE;
  ops[k++].data.recv_message.recv_message = &recv;
  ops[k].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[k].data.recv_status_on_client.trailing_metadata = &trail_md;
  ops[k].data.recv_status_on_client.status = &status;
  ops[k++].data.recv_status_on_client.status_details = &details;
  bool done = orthod__cl_call_batch(&call, ops, k, (void *)3);
  if (rc != 0) {
    /* local failure already described */
  } else if (!done) {
    rc = orthod__cl_fail(c->err, GRPC_STATUS_INTERNAL, "Upload: the call could not complete");
  } else if (status != GRPC_STATUS_OK) {
    rc = orthod__cl_status(c->err, status, details);
  } else if (recv == NULL) {
    rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS, "Upload: OK without a response");
  } else {
    Orthod__V1__UploadResponse *resp = (Orthod__V1__UploadResponse *)orthod__cl_unpack(
        &orthod__v1__upload_response__descriptor, recv);
    if (resp == NULL) {
      rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS, "Upload: malformed response");
    } else {
      c->err[0] = '\0';
      for (size_t i = 0; infos != NULL && rc == 0 && i < resp->n_params && i < n; i++) {
        rc = orthod__cl_info_from_msg(resp->params[i], &infos[i], c->err);
        if (rc == 0 && n_infos != NULL) *n_infos = i + 1;
      }
      protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
  }
  free(scratch);
  if (recv != NULL) grpc_byte_buffer_destroy(recv);
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
  orthod__cl_call_end(&call);
  return rc;
}

/* ---- Pull ------------------------------------------------------------------------------------- */

int orthod_pull_each(orthod_client_t *c, const char *const *names, size_t n,
                     orthod_client_dtype_t wire, orthod_pull_cb cb, void *arg) {
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (cb == NULL || (n > 0 && names == NULL) || orthod__cl_dtype(wire) == 0)
    return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT,
                        "pull: a callback, the names and a valid dtype are required");
  for (size_t i = 0; i < n; i++)
    if (!name_ok(names[i]))
      return orthod__cl_fail(c->err, GRPC_STATUS_INVALID_ARGUMENT, "pull: name %zu is invalid", i);
  c->err[0] = '\0'; /* the callback may describe its own failure here */
  Orthod__V1__PullRequest req = ORTHOD__V1__PULL_REQUEST__INIT;
  req.n_names = n;
  req.names = (char **)names;
  req.dtype = (Orthod__V1__DType)orthod__cl_dtype(wire);
  orthod__cl_call_t call;
  int rc = orthod__cl_call_start(c, METHOD("Pull"), c->opts.deadline_ms, &call, c->err);
  if (rc != 0) return rc;

  grpc_byte_buffer *send = orthod__cl_pack(&req.base), *recv = NULL;
  grpc_metadata_array init_md, trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = call.n_md;
  ops[0].data.send_initial_metadata.metadata = call.md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
  bool ok = orthod__cl_call_batch(&call, ops, 4, (void *)1);
  grpc_byte_buffer_destroy(send);

  /* The parameter being received: chunks of one parameter come together, its first carries the
   * shape. */
  char cur_name[ORTHOD_CLIENT_NAME_MAX + 1] = "";
  int64_t shape[ORTHOD_CLIENT_MAX_DIMS];
  int ndim = 0;
  uint64_t elements = 0;
  bool in_param = false;
  size_t wsz = orthod_client_dtype_size(wire);
  while (ok && rc == 0) {
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_MESSAGE;
    ops[0].data.recv_message.recv_message = &recv;
    if (!orthod__cl_call_batch(&call, ops, 1, (void *)2) || recv == NULL) break;
    Orthod__V1__PullResponse *resp = (Orthod__V1__PullResponse *)orthod__cl_unpack(
        &orthod__v1__pull_response__descriptor, recv);
    grpc_byte_buffer_destroy(recv);
    recv = NULL;
    if (resp == NULL) {
      rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS, "Pull: malformed response");
      break;
    }
    const char *name = str_or_empty(resp->name);
    bool first = false;
    if (resp->n_shape > 0) {
      if (resp->n_shape > ORTHOD_CLIENT_MAX_DIMS || strlen(name) > ORTHOD_CLIENT_NAME_MAX) {
        rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS, "Pull: bad shape or name for '%s'",
                          name);
      } else {
        snprintf(cur_name, sizeof cur_name, "%s", name);
        ndim = (int)resp->n_shape;
        elements = 1;
        for (int d = 0; d < ndim; d++) {
          shape[d] = resp->shape[d];
          elements *= (uint64_t)(shape[d] > 0 ? shape[d] : 0);
        }
        in_param = first = true;
      }
    } else if (!in_param || strcmp(cur_name, name) != 0) {
      rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS,
                        "Pull: chunk for '%s' before its first chunk (with the shape)", name);
    }
    const Orthod__V1__TensorChunk *ch = resp->chunk;
    if (rc == 0 && (ch == NULL || (int)ch->dtype != (int)orthod__cl_dtype(wire) ||
                    ch->data.len == 0 || ch->data.len % wsz != 0 || ch->offset > elements ||
                    ch->data.len / wsz > elements - ch->offset))
      rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS,
                        "Pull: chunk of '%s' has the wrong dtype or lies outside its %llu "
                        "elements", name, (unsigned long long)elements);
    if (rc == 0) {
      orthod_pull_chunk_t pc = {.name = cur_name, .step = resp->step, .ndim = ndim,
                                .shape = shape, .elements = elements, .offset = ch->offset,
                                .count = ch->data.len / wsz, .dtype = orthod__cl_dtype(wire),
                                .data = ch->data.data, .first = first, .last = resp->last};
      if (cb(arg, &pc) != 0) {
        /* The callback's own error (if it set one in c->err) wins over a generic message. */
        if (c->err[0] == '\0')
          orthod__cl_fail(c->err, GRPC_STATUS_CANCELLED, "pull cancelled by the callback");
        rc = (int)GRPC_STATUS_CANCELLED;
        if (strncmp(c->err, "CANCELLED", 9) != 0) {
          /* keep the callback's status code, spelled at the start of its message */
          for (int code = 1; code <= 16; code++) {
            const char *nm = orthod_client_status_name(code);
            size_t l = strlen(nm);
            if (strncmp(c->err, nm, l) == 0 && c->err[l] == ':') {
              rc = code;
              break;
            }
          }
        }
      }
      if (resp->last) in_param = false;
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
  }
  if (rc != 0) grpc_call_cancel(call.call, NULL);
  /* Drain what is left so the status can arrive. */
  while (rc != 0 && ok) {
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_MESSAGE;
    ops[0].data.recv_message.recv_message = &recv;
    if (!orthod__cl_call_batch(&call, ops, 1, (void *)2) || recv == NULL) break;
    grpc_byte_buffer_destroy(recv);
    recv = NULL;
  }
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &trail_md;
  ops[0].data.recv_status_on_client.status = &status;
  ops[0].data.recv_status_on_client.status_details = &details;
  bool done = orthod__cl_call_batch(&call, ops, 1, (void *)3);
  if (rc == 0) {
    if (!done) rc = orthod__cl_fail(c->err, GRPC_STATUS_INTERNAL, "Pull: the call could not complete");
    else if (status != GRPC_STATUS_OK) rc = orthod__cl_status(c->err, status, details);
    else if (in_param)
      rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS, "Pull: '%s' ended without its last chunk",
                        cur_name);
    else c->err[0] = '\0';
  }
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
  orthod__cl_call_end(&call);
  return rc;
}

/* orthod_pull: chunks into the caller's buffers, with coverage checked per tensor. */
typedef struct {
  orthod_client_t *c;
  orthod_tensor_t *t;
  size_t n;
  orthod__cl_cover_t *cover;
  bool *done;
} pull_into_t;

static int pull_into_cb(void *arg, const orthod_pull_chunk_t *ch) {
  pull_into_t *p = arg;
  size_t i = 0;
  while (i < p->n && strcmp(p->t[i].name, ch->name) != 0) i++;
  if (i == p->n)
    return orthod__cl_fail(p->c->err, GRPC_STATUS_DATA_LOSS, "Pull: unexpected parameter '%s'",
                        ch->name);
  orthod_tensor_t *t = &p->t[i];
  if (ch->elements != t->elements)
    return orthod__cl_fail(p->c->err, GRPC_STATUS_INVALID_ARGUMENT,
                        "pull '%s': the parameter has %llu elements, the buffer %zu", t->name,
                        (unsigned long long)ch->elements, t->elements);
  if (p->done[i])
    return orthod__cl_fail(p->c->err, GRPC_STATUS_DATA_LOSS, "Pull: '%s' sent twice", t->name);
  size_t hsz = orthod_client_dtype_size(t->dtype);
  orthod_client_convert((uint8_t *)t->data + ch->offset * hsz, t->dtype, ch->data, ch->dtype,
                        ch->count);
  if (orthod__cl_cover_add(&p->cover[i], ch->offset, ch->count, p->c->err) != 0) return 1;
  t->step = ch->step;
  if (ch->last) {
    if (!orthod__cl_cover_complete(&p->cover[i], t->elements))
      return orthod__cl_fail(p->c->err, GRPC_STATUS_DATA_LOSS,
                          "Pull: the chunks of '%s' do not cover its %zu elements exactly once",
                          t->name, t->elements);
    p->done[i] = true;
  }
  return 0;
}

int orthod_pull(orthod_client_t *c, orthod_tensor_t *tensors, size_t n,
                orthod_client_dtype_t wire) {
  if (c == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  int rc = check_tensors(c, tensors, n, "pull");
  if (rc != 0) return rc;
  pull_into_t p = {.c = c, .t = tensors, .n = n};
  const char **names = calloc(n, sizeof *names);
  p.cover = calloc(n, sizeof *p.cover);
  p.done = calloc(n, sizeof *p.done);
  if (names == NULL || p.cover == NULL || p.done == NULL) {
    rc = orthod__cl_fail(c->err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < n; i++) names[i] = tensors[i].name;
  rc = orthod_pull_each(c, names, n, wire == ORTHOD_CLIENT_DEFAULT ? ORTHOD_CLIENT_F32 : wire,
                        pull_into_cb, &p);
  for (size_t i = 0; rc == 0 && i < n; i++)
    if (!p.done[i])
      rc = orthod__cl_fail(c->err, GRPC_STATUS_DATA_LOSS, "Pull: no weights for '%s'",
                        tensors[i].name);
out:
  for (size_t i = 0; p.cover != NULL && i < n; i++) orthod__cl_cover_free(&p.cover[i]);
  free(p.cover);
  free(p.done);
  free(names);
  return rc;
}
