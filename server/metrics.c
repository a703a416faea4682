/* server/metrics.c — counters and the HTTP/1.x endpoint of metrics.h. The endpoint is deliberately
 * tiny: one request per connection, the request head read whole (at most 8 KiB, 10 s), one
 * response, close. That is all a Prometheus scraper or a Kubernetes httpGet probe needs, and it
 * keeps a slow or hostile peer from holding more than one small buffer. */
#include "metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "orthod/log.h"
#include "status.h"

#define HEAD_MAX 8192
#define CONN_TIMEOUT_MS 10000
#define MAX_CONNS 64
#define MAX_METHODS 16
#define MAX_ERROR_SERIES 128

/* Device seconds of one parameter's step: from a small matrix on a GPU to a large one on a CPU. */
static const double step_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,    0.25,  0.5,    1,     2.5,   5,     10};
#define N_BUCKETS (sizeof step_buckets / sizeof step_buckets[0])

typedef struct conn conn_t;

typedef struct {
  const char *method; /* static strings of the service */
  uint64_t n;
} rpc_count_t;

typedef struct {
  const char *method;
  grpc_status_code code;
  uint64_t n;
} error_count_t;

struct orthod_metrics {
  char backend[16];
  double start_time;
  bool serving;
  orthod_metrics_gauges_fn gauges;
  void *gauges_arg;
  /* counters */
  rpc_count_t rpcs[MAX_METHODS];
  size_t n_rpcs;
  error_count_t errors[MAX_ERROR_SERIES];
  size_t n_errors;
  uint64_t steps_applied, steps_failed;
  uint64_t step_bucket[N_BUCKETS]; /* non-cumulative; summed when rendered */
  uint64_t step_count;
  double step_sum;
  uint64_t bytes_received, bytes_sent;
  uint64_t checkpoints_ok, checkpoints_failed;
  double checkpoint_last_time, checkpoint_last_seconds;
  uint64_t checkpoint_last_bytes;
  /* endpoint */
  uv_loop_t *loop;
  uv_tcp_t *server; /* own allocation: freed by its close callback */
  int port;
  conn_t *conns;
  size_t n_conns;
  bool closing;
  void (*closed)(void *);
  void *closed_arg;
};

struct conn {
  orthod_metrics_t *m;
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t write;
  char head[HEAD_MAX];
  size_t len;
  char *response;
  int open_handles; /* tcp and timer */
  bool responding;
  conn_t *prev, *next;
};

static double now_unix(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int orthod_metrics_create(const char *backend, orthod_metrics_t **out) {
  orthod_metrics_t *m = calloc(1, sizeof *m);
  if (m == NULL) return -1;
  /* the backend's first word: "cpu (OpenBLAS 0.3.21, 2 threads)" is "cpu" */
  snprintf(m->backend, sizeof m->backend, "%.*s", (int)strcspn(backend ? backend : "", " "),
           backend ? backend : "");
  m->start_time = now_unix();
  *out = m;
  return 0;
}

void orthod_metrics_set_gauges(orthod_metrics_t *m, orthod_metrics_gauges_fn fn, void *arg) {
  if (m == NULL) return;
  m->gauges = fn;
  m->gauges_arg = arg;
}

void orthod_metrics_set_serving(orthod_metrics_t *m, bool serving) {
  if (m != NULL) m->serving = serving;
}

/* ---- counting --------------------------------------------------------------------------- */

void orthod_metrics_rpc(orthod_metrics_t *m, const char *method) {
  if (m == NULL) return;
  for (size_t i = 0; i < m->n_rpcs; i++)
    if (strcmp(m->rpcs[i].method, method) == 0) {
      m->rpcs[i].n++;
      return;
    }
  if (m->n_rpcs < MAX_METHODS) m->rpcs[m->n_rpcs++] = (rpc_count_t){method, 1};
}

void orthod_metrics_rpc_error(orthod_metrics_t *m, const char *method, grpc_status_code code) {
  if (m == NULL) return;
  for (size_t i = 0; i < m->n_errors; i++)
    if (m->errors[i].code == code && strcmp(m->errors[i].method, method) == 0) {
      m->errors[i].n++;
      return;
    }
  /* methods × codes is at most 9 × 16: the table never fills in practice */
  if (m->n_errors < MAX_ERROR_SERIES)
    m->errors[m->n_errors++] = (error_count_t){method, code, 1};
}

void orthod_metrics_step(orthod_metrics_t *m, double seconds, bool applied) {
  if (m == NULL) return;
  if (applied) m->steps_applied++;
  else m->steps_failed++;
  size_t b = 0;
  while (b < N_BUCKETS && seconds > step_buckets[b]) b++;
  if (b < N_BUCKETS) m->step_bucket[b]++;
  m->step_count++;
  m->step_sum += seconds;
}

void orthod_metrics_bytes_received(orthod_metrics_t *m, uint64_t bytes) {
  if (m != NULL) m->bytes_received += bytes;
}

void orthod_metrics_bytes_sent(orthod_metrics_t *m, uint64_t bytes) {
  if (m != NULL) m->bytes_sent += bytes;
}

void orthod_metrics_checkpoint(orthod_metrics_t *m, bool ok, double seconds, uint64_t bytes) {
  if (m == NULL) return;
  if (!ok) {
    m->checkpoints_failed++;
    return;
  }
  m->checkpoints_ok++;
  m->checkpoint_last_time = now_unix();
  m->checkpoint_last_seconds = seconds;
  m->checkpoint_last_bytes = bytes;
}

/* ---- rendering -------------------------------------------------------------------------- */

typedef struct {
  char *buf;
  size_t len, cap;
  bool oom;
} text_t;

static void add(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text_t *t, const char *fmt, ...) {
  if (t->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (w < 0) {
      t->oom = true;
      return;
    }
    if ((size_t)w < t->cap - t->len) {
      t->len += (size_t)w;
      return;
    }
    size_t cap = (t->cap + (size_t)w + 1) * 2;
    char *grown = realloc(t->buf, cap);
    if (grown == NULL) {
      t->oom = true;
      return;
    }
    t->buf = grown;
    t->cap = cap;
  }
}

static void family(text_t *t, const char *name, const char *type, const char *help) {
  add(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *orthod_metrics_render(orthod_metrics_t *m) {
  text_t t = {.buf = malloc(4096), .cap = 4096};
  if (t.buf == NULL) return NULL;
  t.buf[0] = '\0';
  orthod_metrics_gauges_t g = {0};
  if (m->gauges) m->gauges(m->gauges_arg, &g);

  family(&t, "orthod_build_info", "gauge", "Version, protocol and compute backend of the daemon.");
  add(&t, "orthod_build_info{version=\"%s\",protocol=\"%d\",backend=\"%s\"} 1\n",
      ORTHOD_VERSION_STRING, ORTHOD_PROTOCOL_VERSION, m->backend);
  family(&t, "orthod_start_time_seconds", "gauge", "Start of the daemon, Unix time.");
  add(&t, "orthod_start_time_seconds %.3f\n", m->start_time);
  family(&t, "orthod_serving", "gauge", "1 while the daemon serves, 0 once it shuts down.");
  add(&t, "orthod_serving %d\n", m->serving ? 1 : 0);
  family(&t, "orthod_parameters", "gauge", "Parameters registered.");
  add(&t, "orthod_parameters %" PRIu64 "\n", g.parameters);
  family(&t, "orthod_device_bytes", "gauge", "Bytes of weights and optimizer state on the device.");
  add(&t, "orthod_device_bytes %" PRIu64 "\n", g.device_bytes);
  family(&t, "orthod_device_bytes_limit", "gauge", "The --memory-limit in bytes; 0: none.");
  add(&t, "orthod_device_bytes_limit %" PRIu64 "\n", g.device_bytes_limit);

  family(&t, "orthod_rpcs_total", "counter", "Calls of the Optimizer service started, by method.");
  for (size_t i = 0; i < m->n_rpcs; i++)
    add(&t, "orthod_rpcs_total{method=\"%s\"} %" PRIu64 "\n", m->rpcs[i].method, m->rpcs[i].n);
  family(&t, "orthod_rpc_errors_total", "counter",
         "Calls of the Optimizer service that ended with a status other than OK.");
  for (size_t i = 0; i < m->n_errors; i++)
    add(&t, "orthod_rpc_errors_total{method=\"%s\",code=\"%s\"} %" PRIu64 "\n",
        m->errors[i].method, orthod_status_name(m->errors[i].code), m->errors[i].n);

  family(&t, "orthod_steps_total", "counter",
         "Optimizer steps of single parameters, by result (applied; failed or skipped).");
  add(&t, "orthod_steps_total{result=\"applied\"} %" PRIu64 "\n", m->steps_applied);
  add(&t, "orthod_steps_total{result=\"not_applied\"} %" PRIu64 "\n", m->steps_failed);
  family(&t, "orthod_step_seconds", "histogram",
         "Device time of one parameter's step, reading the new weights back included.");
  uint64_t cum = 0;
  for (size_t b = 0; b < N_BUCKETS; b++) {
    cum += m->step_bucket[b];
    add(&t, "orthod_step_seconds_bucket{le=\"%g\"} %" PRIu64 "\n", step_buckets[b], cum);
  }
  add(&t, "orthod_step_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", m->step_count);
  add(&t, "orthod_step_seconds_sum %.9g\n", m->step_sum);
  add(&t, "orthod_step_seconds_count %" PRIu64 "\n", m->step_count);

  family(&t, "orthod_tensor_bytes_received_total", "counter",
         "Tensor data received in chunks (Upload and Step), wire bytes.");
  add(&t, "orthod_tensor_bytes_received_total %" PRIu64 "\n", m->bytes_received);
  family(&t, "orthod_tensor_bytes_sent_total", "counter",
         "Tensor data sent in chunks (Step replies and Pull), wire bytes.");
  add(&t, "orthod_tensor_bytes_sent_total %" PRIu64 "\n", m->bytes_sent);

  family(&t, "orthod_checkpoints_total", "counter", "Checkpoints written or failed.");
  add(&t, "orthod_checkpoints_total{result=\"written\"} %" PRIu64 "\n", m->checkpoints_ok);
  add(&t, "orthod_checkpoints_total{result=\"failed\"} %" PRIu64 "\n", m->checkpoints_failed);
  family(&t, "orthod_checkpoint_last_success_time_seconds", "gauge",
         "When the newest checkpoint of this run was written, Unix time; 0: none yet.");
  add(&t, "orthod_checkpoint_last_success_time_seconds %.3f\n", m->checkpoint_last_time);
  family(&t, "orthod_checkpoint_last_duration_seconds", "gauge",
         "How long the newest checkpoint took to write (steps wait meanwhile).");
  add(&t, "orthod_checkpoint_last_duration_seconds %.6f\n", m->checkpoint_last_seconds);
  family(&t, "orthod_checkpoint_last_bytes", "gauge", "Size of the newest checkpoint file.");
  add(&t, "orthod_checkpoint_last_bytes %" PRIu64 "\n", m->checkpoint_last_bytes);
  if (t.oom) {
    free(t.buf);
    return NULL;
  }
  return t.buf;
}

/* ---- the endpoint ----------------------------------------------------------------------- */

static void maybe_closed(orthod_metrics_t *m) {
  if (m->closing && m->server == NULL && m->conns == NULL && m->closed != NULL) {
    void (*cb)(void *) = m->closed;
    m->closed = NULL;
    cb(m->closed_arg);
  }
}

static void conn_handle_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  if (--c->open_handles > 0) return;
  orthod_metrics_t *m = c->m;
  if (c->prev) c->prev->next = c->next;
  else m->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  m->n_conns--;
  free(c->response);
  free(c);
  maybe_closed(m);
}

static void conn_close(conn_t *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
  uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
}

static void on_written(uv_write_t *w, int status) {
  (void)status;
  conn_close(w->data);
}

static void respond(conn_t *c, int code, const char *reason, const char *type, const char *body,
                    bool head_only) {
  size_t blen = body ? strlen(body) : 0;
  size_t cap = blen + 256;
  c->response = malloc(cap);
  if (c->response == NULL) {
    conn_close(c);
    return;
  }
  int n = snprintf(c->response, cap,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   code, reason, type, blen);
  if (!head_only && blen) memcpy(c->response + n, body, blen);
  uv_buf_t buf = uv_buf_init(c->response, (unsigned)(n + (head_only ? 0 : blen)));
  c->responding = true;
  c->write.data = c;
  uv_read_stop((uv_stream_t *)&c->tcp);
  if (uv_write(&c->write, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) conn_close(c);
}

#define TEXT "text/plain; charset=utf-8"

static void handle_request(conn_t *c) {
  char method[8] = "", target[256] = "";
  /* "GET /metrics HTTP/1.1": anything else in the request line is a bad request */
  if (sscanf(c->head, "%7[A-Z] %255[^ \r\n] HTTP/1.%*1[01]", method, target) != 2) {
    respond(c, 400, "Bad Request", TEXT, "bad request\n", false);
    return;
  }
  bool head = strcmp(method, "HEAD") == 0;
  char *query = strchr(target, '?');
  if (query) *query = '\0'; /* scrapers may add parameters; none are used */
  bool metrics = strcmp(target, "/metrics") == 0, healthz = strcmp(target, "/healthz") == 0;
  if (!metrics && !healthz) {
    respond(c, 404, "Not Found", TEXT, "not found: try /metrics or /healthz\n", head);
  } else if (!head && strcmp(method, "GET") != 0) {
    respond(c, 405, "Method Not Allowed", TEXT, "only GET and HEAD\n", false);
  } else if (healthz) {
    if (c->m->serving) respond(c, 200, "OK", TEXT, "ok\n", head);
    else respond(c, 503, "Service Unavailable", TEXT, "shutting down\n", head);
  } else {
    char *text = orthod_metrics_render(c->m);
    if (text == NULL) {
      respond(c, 500, "Internal Server Error", TEXT, "out of memory\n", head);
    } else {
      respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", text, head);
      free(text);
    }
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  conn_t *c = h->data;
  *buf = uv_buf_init(c->head + c->len, (unsigned)(HEAD_MAX - 1 - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  conn_t *c = s->data;
  if (c->responding) return;
  if (nread < 0) {
    conn_close(c);
    return;
  }
  c->len += (size_t)nread;
  c->head[c->len] = '\0';
  if (strstr(c->head, "\r\n\r\n") != NULL || strstr(c->head, "\n\n") != NULL) {
    handle_request(c);
  } else if (c->len >= HEAD_MAX - 1) {
    respond(c, 431, "Request Header Fields Too Large", TEXT, "request head over 8 KiB\n", false);
  }
}

static void on_timeout(uv_timer_t *t) { conn_close(t->data); }

static void on_connection(uv_stream_t *server, int status) {
  orthod_metrics_t *m = server->data;
  if (status < 0) return;
  conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  c->m = m;
  uv_tcp_init(m->loop, &c->tcp);
  uv_timer_init(m->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->open_handles = 2;
  c->next = m->conns;
  if (m->conns) m->conns->prev = c;
  m->conns = c;
  m->n_conns++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || m->n_conns > MAX_CONNS || m->closing) {
    conn_close(c);
    return;
  }
  uv_timer_start(&c->timer, on_timeout, CONN_TIMEOUT_MS, 0);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) conn_close(c);
}

/* A listen address (parsed as the configuration parses --listen) into a socket address. */
static int parse_addr(const char *listen, struct sockaddr_storage *sa, char *err, size_t errlen) {
  char host[256], why[256];
  unsigned port;
  if (orthod_listen_split(listen, host, sizeof host, &port, why, sizeof why) != NULL) {
    snprintf(err, errlen, "metrics-listen %s", why);
    return -1;
  }
  int rc = listen[0] == '['
               ? uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)sa)
               : uv_ip4_addr(strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, (int)port,
                             (struct sockaddr_in *)sa);
  if (rc != 0) {
    snprintf(err, errlen, "metrics-listen '%s': not a numeric IPv4 or [IPv6] address", listen);
    return -1;
  }
  return 0;
}

static void server_closed(uv_handle_t *h) {
  orthod_metrics_t *m = h->data;
  free(h);
  m->server = NULL;
  maybe_closed(m);
}

int orthod_metrics_listen(orthod_metrics_t *m, uv_loop_t *loop, const char *listen, char *err,
                          size_t errlen) {
  struct sockaddr_storage sa;
  memset(&sa, 0, sizeof sa);
  if (parse_addr(listen, &sa, err, errlen) != 0) return -1;
  m->loop = loop;
  m->server = calloc(1, sizeof *m->server);
  if (m->server == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  uv_tcp_init(loop, m->server);
  m->server->data = m;
  int rc = uv_tcp_bind(m->server, (const struct sockaddr *)&sa, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)m->server, 16, on_connection);
  if (rc != 0) {
    snprintf(err, errlen, "metrics-listen %s: %s", listen, uv_strerror(rc));
    uv_close((uv_handle_t *)m->server, server_closed);
    return -1;
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  if (uv_tcp_getsockname(m->server, (struct sockaddr *)&bound, &len) == 0)
    m->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
  return 0;
}

int orthod_metrics_port(const orthod_metrics_t *m) { return m ? m->port : 0; }

void orthod_metrics_close(orthod_metrics_t *m, void (*closed)(void *arg), void *arg) {
  m->closing = true;
  m->closed = closed;
  m->closed_arg = arg;
  if (m->server != NULL && !uv_is_closing((uv_handle_t *)m->server))
    uv_close((uv_handle_t *)m->server, server_closed);
  for (conn_t *c = m->conns; c != NULL; c = c->next) conn_close(c);
  maybe_closed(m);
}

void orthod_metrics_destroy(orthod_metrics_t *m) { free(m); }
