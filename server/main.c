/* server/main.c — the orthod daemon: configuration, the device thread, the gRPC server and the
 * libuv loop that runs every RPC's control logic; SIGTERM/SIGINT drain and exit 0.
 *
 * Exit codes: 0 normal (including --help/--version and a drained shutdown), 1 start failure
 * (state directory, checkpoint, backend, bind), a shutdown that could not complete or whose
 * final checkpoint failed, 2 configuration error. */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "device.h"
#include "auth.h"
#include "health.h"
#include "metrics.h"
#include "orthod/log.h"
#include "rpc.h"
#include "service.h"

extern char **environ;

/* After cancelling every call, how long the drain may take before every call is cancelled
 * outright, and after that before we give up (exit 1). */
#define SHUTDOWN_STUCK_MS 700

typedef struct app {
  uv_loop_t *loop;
  orthod_server_config_t cfg;
  orthod_device_t *dev;
  orthod_service_t *svc;
  orthod_health_t *health;
  orthod_metrics_t *metrics; /* NULL until created */
  orthod_auth_t *auth;       /* --auth-tokens, or NULL */
  char *tls_cert, *tls_key, *tls_ca; /* PEM text until the gRPC server has its copy */
  orthod_rpc_server_t *rpc;
  uv_signal_t sig_int, sig_term;
  uv_timer_t drain_timer;  /* drain_timeout_ms → cancel all; then the stuck guard */
  bool handles_open;
  int signals;             /* termination signals received */
  bool cancelled;          /* cancel_all was issued */
  bool hard_cancelled;     /* ... and issued again: every call cancelled outright */
  bool drained;            /* every call has ended; only the device is left to stop */
  bool final_checkpoint_failed;
  int exit_code;
} app_t;

/* ---- helpers --------------------------------------------------------------------------------- */

/* mkdir -p: create dir and missing parents (mode 0755; the leaf 0700 is not needed: the state
 * holds weights, not secrets). */
static int mkdir_p(const char *dir, char *err, size_t errlen) {
  char path[ORTHOD_CONFIG_PATH_MAX];
  if (dir[0] == '\0' || snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
    snprintf(err, errlen, "'%s': empty or too long", dir);
    return -1;
  }
  for (char *p = path + 1; ; p++) {
    bool end = *p == '\0';
    if (*p == '/' || end) {
      *p = '\0';
      if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "mkdir %s: %s", path, strerror(errno));
        return -1;
      }
      if (end) break;
      *p = '/';
    }
  }
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(err, errlen, "%s exists and is not a directory", dir);
    return -1;
  }
  if (access(dir, W_OK | X_OK) != 0) {
    snprintf(err, errlen, "%s is not writable: %s", dir, strerror(errno));
    return -1;
  }
  return 0;
}

/* The whole of a small text file (PEM, the token file), NUL-terminated, at most 1 MiB; NULL with
 * err ("KEY PATH: reason") filled. */
static char *read_text(const char *key, const char *path, bool allow_empty, char *err,
                       size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, errlen, "%s %s: %s", key, path, strerror(errno));
    return NULL;
  }
  size_t cap = 1 << 20;
  char *text = malloc(cap);
  size_t n = text ? fread(text, 1, cap - 1, f) : 0;
  bool big = text && n == cap - 1 && fgetc(f) != EOF;
  fclose(f);
  if (text == NULL || big || (n == 0 && !allow_empty)) {
    snprintf(err, errlen, "%s %s: %s", key, path, text == NULL ? "out of memory"
                                                   : big ? "larger than 1 MiB" : "empty file");
    free(text);
    return NULL;
  }
  text[n] = '\0';
  return text;
}

/* --auth-tokens: read and parse the file, warning when others than its owner may read it. */
static int load_tokens(app_t *app, char *err, size_t errlen) {
  const char *path = app->cfg.auth_tokens;
  char *text = read_text("auth-tokens", path, true, err, errlen);
  if (text == NULL) return -1;
  struct stat st;
  if (stat(path, &st) == 0 && (st.st_mode & 077) != 0)
    ORTHOD_LOG(ORTHOD_LOG_WARN, "auth-tokens %s can be read by others than its owner (mode %03o); "
               "it holds secrets: chmod 600", path, (unsigned)(st.st_mode & 0777));
  int rc = orthod_auth_parse(text, path, &app->auth, err, errlen);
  memset(text, 0, strlen(text)); /* no copy of the secrets left in freed memory */
  free(text);
  return rc;
}

static void free_tls(app_t *app) {
  if (app->tls_key != NULL) memset(app->tls_key, 0, strlen(app->tls_key)); /* a secret */
  free(app->tls_cert);
  free(app->tls_key);
  free(app->tls_ca);
  app->tls_cert = app->tls_key = app->tls_ca = NULL;
}

static void close_handles(app_t *app) {
  if (!app->handles_open) return;
  app->handles_open = false;
  uv_close((uv_handle_t *)&app->sig_int, NULL);
  uv_close((uv_handle_t *)&app->sig_term, NULL);
  uv_close((uv_handle_t *)&app->drain_timer, NULL);
}

/* ---- shutdown -------------------------------------------------------------------------------- */

/* Last step of every teardown, on the loop once the device thread is gone: nothing can reach the
 * services any more. The loop ends when the handles closed here are gone. */
static void on_metrics_closed(void *arg) {
  app_t *app = arg;
  orthod_metrics_destroy(app->metrics);
  app->metrics = NULL;
}

static void on_device_stopped(void *arg) {
  app_t *app = arg;
  app->dev = NULL;
  orthod_rpc_server_destroy(app->rpc);
  app->rpc = NULL;
  /* the metrics read the service's registry: detach before it goes */
  orthod_metrics_set_gauges(app->metrics, NULL, NULL);
  if (app->svc) orthod_service_destroy(app->svc);
  app->svc = NULL;
  orthod_auth_destroy(app->auth); /* after the service: it borrowed the tokens */
  app->auth = NULL;
  orthod_health_destroy(app->health);
  app->health = NULL;
  if (app->metrics) orthod_metrics_close(app->metrics, on_metrics_closed, app);
  close_handles(app);
}

static void on_drained(void *arg) {
  app_t *app = arg;
  app->drained = true;
  uv_timer_stop(&app->drain_timer);
  ORTHOD_LOG(ORTHOD_LOG_INFO, "all calls ended; stopping the device");
  /* Queued behind the last steps, so it holds every step that was answered. */
  orthod_service_final_checkpoint(app->svc, &app->final_checkpoint_failed);
  /* Device jobs may still be finishing; their done callbacks need the service, which goes after
   * the device has stopped. */
  orthod_device_stop(app->dev, on_device_stopped, app);
}

static void on_shutdown_stuck(uv_timer_t *t) {
  app_t *app = t->data;
  if (!app->hard_cancelled) {
    /* Calls that ended with a status but still do not complete: cancel them outright. */
    app->hard_cancelled = true;
    ORTHOD_LOG(ORTHOD_LOG_WARN, "calls still open after cancelling; cancelling them outright");
    orthod_rpc_server_cancel_all(app->rpc);
    uv_timer_start(&app->drain_timer, on_shutdown_stuck, SHUTDOWN_STUCK_MS, 0);
    return;
  }
  ORTHOD_LOG(ORTHOD_LOG_ERROR, "shutdown did not complete after cancelling every call; "
             "exiting without cleanup");
  app->exit_code = 1;
  uv_stop(app->loop);
}

static void cancel_all(app_t *app, const char *why) {
  if (app->drained) return; /* nothing left to cancel; the device finishes its jobs */
  if (app->cancelled) {
    if (!app->hard_cancelled) on_shutdown_stuck(&app->drain_timer); /* a further signal */
    return;
  }
  app->cancelled = true;
  ORTHOD_LOG(ORTHOD_LOG_WARN, "%s: cancelling the calls still in flight", why);
  orthod_rpc_server_cancel_all(app->rpc);
  uv_timer_stop(&app->drain_timer);
  uv_timer_start(&app->drain_timer, on_shutdown_stuck, SHUTDOWN_STUCK_MS, 0);
}

static void on_drain_timeout(uv_timer_t *t) {
  app_t *app = t->data;
  char why[64];
  snprintf(why, sizeof why, "drain timeout (%u ms)", (unsigned)app->cfg.drain_timeout_ms);
  cancel_all(app, why);
}

static void on_signal(uv_signal_t *h, int signum) {
  app_t *app = h->data;
  app->signals++;
  const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
  if (app->signals > 1) {
    char why[64];
    snprintf(why, sizeof why, "second signal (%s)", name);
    cancel_all(app, why);
    return;
  }
  ORTHOD_LOG(ORTHOD_LOG_INFO, "%s received: draining (up to %u ms; a second signal cancels now)",
             name, (unsigned)app->cfg.drain_timeout_ms);
  /* Probes first, so load balancers stop routing here before calls start failing. */
  orthod_health_shutdown(app->health);
  orthod_metrics_set_serving(app->metrics, false);
  orthod_service_drain(app->svc);
  orthod_rpc_server_shutdown(app->rpc, on_drained, app);
  if (!app->cancelled) uv_timer_start(&app->drain_timer, on_drain_timeout, app->cfg.drain_timeout_ms, 0);
}

/* ---- start ----------------------------------------------------------------------------------- */

/* A start failure after the device exists: stop it, let the loop free the rest, exit 1. */
static int fail_after_device(app_t *app) {
  free_tls(app);
  orthod_device_stop(app->dev, on_device_stopped, app);
  uv_run(app->loop, UV_RUN_DEFAULT);
  uv_loop_close(app->loop);
  return 1;
}

int main(int argc, char **argv) {
  static app_t app; /* static: zeroed, and the uv handles inside outlive every callback */
  char err[ORTHOD_CONFIG_PATH_MAX + 512];
  /* A client that disconnects mid-write must not kill the daemon. */
  signal(SIGPIPE, SIG_IGN);

  orthod_config_result_t r = orthod_server_config_load(&app.cfg, argc, argv, environ, stdout, err,
                                                       sizeof err);
  if (r == ORTHOD_CONFIG_EXIT) return 0;
  if (r != ORTHOD_CONFIG_RUN) {
    fprintf(stderr, "orthod: %s\n", err);
    return 2;
  }
  orthod_server_log_install(app.cfg.log_level, app.cfg.log_format);
  if (mkdir_p(app.cfg.state_dir, err, sizeof err) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "state directory: %s", err);
    return 1;
  }
  ORTHOD_LOG(ORTHOD_LOG_INFO, "orthod %s (protocol %d) starting, pid %ld", ORTHOD_VERSION_STRING,
             ORTHOD_PROTOCOL_VERSION, (long)getpid());
  orthod_server_config_log(&app.cfg);
  if (app.cfg.tls_cert[0] != '\0') {
    app.tls_cert = read_text("tls-cert", app.cfg.tls_cert, false, err, sizeof err);
    if (app.tls_cert != NULL)
      app.tls_key = read_text("tls-key", app.cfg.tls_key, false, err, sizeof err);
    if (app.tls_key != NULL && app.cfg.tls_client_ca[0] != '\0')
      app.tls_ca = read_text("tls-client-ca", app.cfg.tls_client_ca, false, err, sizeof err);
    if (app.tls_key == NULL || (app.cfg.tls_client_ca[0] != '\0' && app.tls_ca == NULL)) {
      ORTHOD_LOG(ORTHOD_LOG_ERROR, "%s", err);
      free_tls(&app);
      return 1;
    }
  }
  if (app.cfg.auth_tokens[0] != '\0') {
    if (load_tokens(&app, err, sizeof err) != 0) {
      ORTHOD_LOG(ORTHOD_LOG_ERROR, "%s", err);
      free_tls(&app);
      return 1;
    }
    ORTHOD_LOG(ORTHOD_LOG_INFO, "auth-tokens %s: %zu tokens; every Optimizer call needs one",
               app.cfg.auth_tokens, orthod_auth_count(app.auth));
  }

  app.loop = uv_default_loop();
  orthod_device_opts_t dopts = {
      .backend = app.cfg.backend,
      .device = app.cfg.device,
      .threads = app.cfg.threads,
      .memory_limit = (size_t)app.cfg.memory_limit,
  };
  if (orthod_device_create(app.loop, &dopts, &app.dev, err, sizeof err) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "%s", err);
    free_tls(&app);
    orthod_auth_destroy(app.auth);
    uv_run(app.loop, UV_RUN_DEFAULT); /* the device's close callback frees its handle */
    uv_loop_close(app.loop);
    return 1;
  }
  ORTHOD_LOG(ORTHOD_LOG_INFO, "device: %s", orthod_device_backend_name(app.dev));

  uv_signal_init(app.loop, &app.sig_int);
  uv_signal_init(app.loop, &app.sig_term);
  uv_timer_init(app.loop, &app.drain_timer);
  app.sig_int.data = app.sig_term.data = app.drain_timer.data = &app;
  app.handles_open = true;

  if (orthod_service_create(app.loop, app.dev, &app.cfg, &app.svc) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "cannot create the optimizer service");
    return fail_after_device(&app);
  }
  if (orthod_metrics_create(orthod_device_backend_name(app.dev), &app.metrics) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "out of memory");
    return fail_after_device(&app);
  }
  orthod_service_set_metrics(app.svc, app.metrics);
  orthod_service_set_auth(app.svc, app.auth);
  if (app.cfg.metrics_listen[0] != '\0' &&
      orthod_metrics_listen(app.metrics, app.loop, app.cfg.metrics_listen, err, sizeof err) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "%s", err);
    return fail_after_device(&app);
  }
  if (orthod_service_restore(app.svc, err, sizeof err) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "%s", err);
    return fail_after_device(&app);
  }
  if (orthod_health_create(&app.health) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "cannot create the health service");
    return fail_after_device(&app);
  }

  const orthod_method_t *svc_methods, *health_methods;
  size_t n_svc = orthod_service_methods(app.svc, &svc_methods);
  size_t n_health = orthod_health_methods(app.health, &health_methods);
  orthod_method_t *methods = calloc(n_svc + n_health, sizeof *methods);
  if (!methods) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "out of memory");
    return fail_after_device(&app);
  }
  if (n_svc) memcpy(methods, svc_methods, n_svc * sizeof *methods);
  memcpy(methods + n_svc, health_methods, n_health * sizeof *methods);

  /* Our own responses are chunked to chunk_bytes; leave room for the message around the data. */
  uint64_t max_send = app.cfg.chunk_bytes + (1u << 20);
  if (max_send < app.cfg.max_message_bytes) max_send = app.cfg.max_message_bytes;
  orthod_rpc_options_t ropts = {
      .listen = app.cfg.listen,
      .max_recv_bytes = (size_t)app.cfg.max_message_bytes,
      .max_send_bytes = (size_t)max_send,
      .keepalive_time_ms = app.cfg.keepalive_time_ms,
      .keepalive_timeout_ms = app.cfg.keepalive_timeout_ms,
      .keepalive_permit_ms = app.cfg.keepalive_permit_ms,
      .tls_cert_pem = app.tls_cert,
      .tls_key_pem = app.tls_key,
      .tls_client_ca_pem = app.tls_ca,
  };
  int rc = orthod_rpc_server_create(app.loop, &ropts, methods, n_svc + n_health, &app.rpc, err,
                                    sizeof err);
  free(methods);
  free_tls(&app); /* gRPC keeps its own copy */
  if (rc != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "%s", err);
    return fail_after_device(&app);
  }
  if (orthod_rpc_server_start(app.rpc) != 0) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "cannot start the gRPC server");
    orthod_rpc_server_shutdown(app.rpc, NULL, NULL);
    return fail_after_device(&app);
  }
  uv_signal_start(&app.sig_int, on_signal, SIGINT);
  uv_signal_start(&app.sig_term, on_signal, SIGTERM);
  orthod_health_set_serving(app.health, true);
  orthod_metrics_set_serving(app.metrics, true);

  char host[256];
  /* Before the listen line: whoever waits for that line may read this one right after. */
  if (orthod_metrics_port(app.metrics) > 0) {
    snprintf(host, sizeof host, "%s", app.cfg.metrics_listen);
    char *mcolon = strrchr(host, ':');
    if (mcolon) *mcolon = '\0';
    ORTHOD_LOG(ORTHOD_LOG_INFO, "metrics on http://%s:%d/metrics (probe: /healthz)", host,
               orthod_metrics_port(app.metrics));
  }
  /* The one line on stdout that scripts and tests wait for; the host is what we bound. */
  snprintf(host, sizeof host, "%s", app.cfg.listen);
  char *colon = strrchr(host, ':');
  if (colon) *colon = '\0';
  printf("orthod: listening on %s:%d (pid %ld)\n", host, orthod_rpc_server_port(app.rpc),
         (long)getpid());
  fflush(stdout);
  ORTHOD_LOG(ORTHOD_LOG_INFO, "serving on %s:%d; stop with Ctrl-C or `kill -TERM %ld`", host,
             orthod_rpc_server_port(app.rpc), (long)getpid());

  uv_run(app.loop, UV_RUN_DEFAULT);
  if (app.exit_code != 0) return app.exit_code; /* stuck shutdown: no cleanup is safe */
  if (uv_loop_close(app.loop) != 0)
    ORTHOD_LOG(ORTHOD_LOG_DEBUG, "loop closed with handles still open");
  if (app.final_checkpoint_failed) {
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "stopped, but the final checkpoint could not be written");
    return 1;
  }
  ORTHOD_LOG(ORTHOD_LOG_INFO, "stopped");
  return 0;
}
