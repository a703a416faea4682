/* server/health.c — grpc.health.v1.Health: Check answers the current state; Watch streams it now
 * and on every change. One serving state covers the daemon ("") and "orthod.v1.Optimizer". */
#include "health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "orthod/log.h"

typedef Grpc__Health__V1__HealthCheckRequest health_req_t;
typedef Grpc__Health__V1__HealthCheckResponse health_resp_t;
#define ST_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define ST_NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define ST_SERVICE_UNKNOWN GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

/* One open Watch stream (the call's data). */
typedef struct watcher {
  orthod_call_t *call;
  bool known;
  struct watcher *prev, *next;
} watcher_t;

struct orthod_health {
  bool serving;
  bool shutting_down;
  watcher_t *watchers;
  size_t n_watchers;
  orthod_method_t methods[2];
};

static const char *const known_services[] = {"", "orthod.v1.Optimizer"};

static bool service_known(const char *name) {
  for (size_t i = 0; i < sizeof known_services / sizeof known_services[0]; i++)
    if (strcmp(name, known_services[i]) == 0) return true;
  return false;
}

static int send_status(orthod_call_t *call, int status) {
  health_resp_t resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = status;
  uint8_t buf[16]; /* one enum field: at most 11 bytes */
  size_t len = grpc__health__v1__health_check_response__pack(&resp, buf);
  return orthod_call_send(call, buf, len);
}

static int current_status(const orthod_health_t *h, bool known) {
  if (!known) return ST_SERVICE_UNKNOWN;
  return h->serving ? ST_SERVING : ST_NOT_SERVING;
}

/* ---- Check ----------------------------------------------------------------------------------- */

static void check_on_message(orthod_call_t *call, const uint8_t *data, size_t len) {
  orthod_health_t *h = orthod_call_method(call)->method_data;
  health_req_t *req = grpc__health__v1__health_check_request__unpack(NULL, len, data);
  if (!req) {
    orthod_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "cannot parse HealthCheckRequest");
    return;
  }
  const char *name = req->service ? req->service : "";
  if (!service_known(name)) {
    char msg[320];
    snprintf(msg, sizeof msg, "unknown service '%.256s'", name);
    orthod_call_finish(call, GRPC_STATUS_NOT_FOUND, msg);
  } else {
    send_status(call, current_status(h, true));
    orthod_call_finish(call, GRPC_STATUS_OK, NULL);
  }
  grpc__health__v1__health_check_request__free_unpacked(req, NULL);
}

static void on_half_close_without_request(orthod_call_t *call) {
  if (!orthod_call_is_over(call) && !orthod_call_data(call))
    orthod_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "missing HealthCheckRequest");
}

/* ---- Watch ----------------------------------------------------------------------------------- */

static void watch_on_message(orthod_call_t *call, const uint8_t *data, size_t len) {
  orthod_health_t *h = orthod_call_method(call)->method_data;
  if (orthod_call_data(call)) return; /* one request per Watch */
  health_req_t *req = grpc__health__v1__health_check_request__unpack(NULL, len, data);
  if (!req) {
    orthod_call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, "cannot parse HealthCheckRequest");
    return;
  }
  bool known = service_known(req->service ? req->service : "");
  grpc__health__v1__health_check_request__free_unpacked(req, NULL);
  watcher_t *w = calloc(1, sizeof *w);
  if (!w) {
    orthod_call_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->call = call;
  w->known = known;
  w->next = h->watchers;
  if (h->watchers) h->watchers->prev = w;
  h->watchers = w;
  h->n_watchers++;
  orthod_call_set_data(call, w);
  send_status(call, current_status(h, known));
  if (h->shutting_down) orthod_call_finish(call, GRPC_STATUS_UNAVAILABLE, "orthod is shutting down");
}

static void watch_on_done(orthod_call_t *call, bool cancelled) {
  (void)cancelled;
  orthod_health_t *h = orthod_call_method(call)->method_data;
  watcher_t *w = orthod_call_data(call);
  if (!w) return;
  if (w->prev) w->prev->next = w->next;
  else h->watchers = w->next;
  if (w->next) w->next->prev = w->prev;
  h->n_watchers--;
  free(w);
  orthod_call_set_data(call, NULL);
}

/* ---- service --------------------------------------------------------------------------------- */

int orthod_health_create(orthod_health_t **out) {
  orthod_health_t *h = calloc(1, sizeof *h);
  *out = NULL;
  if (!h) return -1;
  h->methods[0] = (orthod_method_t){
      .path = "/grpc.health.v1.Health/Check",
      .kind = ORTHOD_RPC_UNARY,
      .method_data = h,
      .on_message = check_on_message,
      .on_half_close = on_half_close_without_request,
  };
  h->methods[1] = (orthod_method_t){
      .path = "/grpc.health.v1.Health/Watch",
      .kind = ORTHOD_RPC_SERVER_STREAM,
      .method_data = h,
      .on_message = watch_on_message,
      .on_half_close = on_half_close_without_request,
      .on_done = watch_on_done,
  };
  *out = h;
  return 0;
}

size_t orthod_health_methods(orthod_health_t *h, const orthod_method_t **out) {
  *out = h->methods;
  return sizeof h->methods / sizeof h->methods[0];
}

void orthod_health_set_serving(orthod_health_t *h, bool serving) {
  if (h->serving == serving) return;
  h->serving = serving;
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "health: %s (%zu watchers)", serving ? "SERVING" : "NOT_SERVING",
             h->n_watchers);
  for (watcher_t *w = h->watchers; w; w = w->next)
    if (w->known) send_status(w->call, current_status(h, true));
}

void orthod_health_shutdown(orthod_health_t *h) {
  orthod_health_set_serving(h, false);
  h->shutting_down = true;
  for (watcher_t *w = h->watchers; w; w = w->next)
    orthod_call_finish(w->call, GRPC_STATUS_UNAVAILABLE, "orthod is shutting down");
}

size_t orthod_health_watchers(const orthod_health_t *h) { return h->n_watchers; }

void orthod_health_destroy(orthod_health_t *h) {
  if (!h) return;
  /* Watchers are gone once the rpc server drained; free any left by a misuse anyway. */
  while (h->watchers) {
    watcher_t *w = h->watchers;
    h->watchers = w->next;
    free(w);
  }
  free(h);
}
