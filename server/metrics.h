/* server/metrics.h — the daemon's counters and the small HTTP endpoint that serves them on their
 * own port (--metrics-listen), through libuv TCP:
 *   GET /metrics   Prometheus text exposition format 0.0.4 (docs/OPERATIONS.md lists the series)
 *   GET /healthz   200 "ok" while serving, 503 "shutting down" once the drain began
 * HEAD works on both; other paths are 404, other methods 405, a request head over 8 KiB 431; every
 * response closes the connection. Loop thread only: the service counts from its callbacks (the
 * device thread's numbers reach the loop through the jobs' done callbacks). Every counting call
 * accepts m == NULL and then does nothing, so the service counts unconditionally. */
#ifndef ORTHOD_SERVER_METRICS_H
#define ORTHOD_SERVER_METRICS_H

#include <grpc/status.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct orthod_metrics orthod_metrics_t;

/* Values read at each scrape (from the owner of the registry). */
typedef struct {
  uint64_t parameters;
  uint64_t device_bytes;
  uint64_t device_bytes_limit; /* 0: none */
} orthod_metrics_gauges_t;
typedef void (*orthod_metrics_gauges_fn)(void *arg, orthod_metrics_gauges_t *g);

/* backend: its first word ("cpu", "cuda") labels orthod_build_info. Returns 0 or -1. */
int orthod_metrics_create(const char *backend, orthod_metrics_t **out);

/* Serve on listen ("HOST:PORT", port 0 picks one). Returns 0, or -1 with err filled. */
int orthod_metrics_listen(orthod_metrics_t *m, uv_loop_t *loop, const char *listen,
                          char *err, size_t errlen);
/* The bound port (0 when not listening). */
int orthod_metrics_port(const orthod_metrics_t *m);

void orthod_metrics_set_gauges(orthod_metrics_t *m, orthod_metrics_gauges_fn fn, void *arg);
void orthod_metrics_set_serving(orthod_metrics_t *m, bool serving);

/* ---- counting (m may be NULL) ---- */
void orthod_metrics_rpc(orthod_metrics_t *m, const char *method);
void orthod_metrics_rpc_error(orthod_metrics_t *m, const char *method, grpc_status_code code);
/* One optimizer step of one parameter: device seconds (the step and the read-back); applied
 * false for a step that failed or was skipped for a non-finite gradient. */
void orthod_metrics_step(orthod_metrics_t *m, double seconds, bool applied);
void orthod_metrics_bytes_received(orthod_metrics_t *m, uint64_t bytes);
void orthod_metrics_bytes_sent(orthod_metrics_t *m, uint64_t bytes);
/* A checkpoint written (ok) or failed; bytes and seconds of a written one. */
void orthod_metrics_checkpoint(orthod_metrics_t *m, bool ok, double seconds, uint64_t bytes);

/* The exposition text (caller frees); NULL when out of memory. For the endpoint and tests. */
char *orthod_metrics_render(orthod_metrics_t *m);

/* Stop listening and close open connections; `closed(arg)` runs on the loop when every handle
 * is gone (then orthod_metrics_destroy may run). Without a listener it runs at once. */
void orthod_metrics_close(orthod_metrics_t *m, void (*closed)(void *arg), void *arg);
void orthod_metrics_destroy(orthod_metrics_t *m);

#endif
