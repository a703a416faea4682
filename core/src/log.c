/* log.c — one sink for the engine's messages; stderr until the embedding program installs one. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#include "orthod_internal.h"

static orthod_log_fn sink_fn;
static void *sink_user;
static atomic_int max_level = ORTHOD_LOG_WARN;

void orthod_log_set_sink(orthod_log_fn fn, void *user, orthod_log_level_t level) {
  sink_fn = fn;
  sink_user = user;
  atomic_store(&max_level, (int)level);
}

orthod_log_level_t orthod_log_level(void) { return (orthod_log_level_t)atomic_load(&max_level); }

const char *orthod_log_level_name(orthod_log_level_t level) {
  switch (level) {
    case ORTHOD_LOG_ERROR: return "error";
    case ORTHOD_LOG_WARN: return "warn";
    case ORTHOD_LOG_INFO: return "info";
    case ORTHOD_LOG_DEBUG: return "debug";
  }
  return "?";
}

void orthod_log_write(orthod_log_level_t level, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (sink_fn != NULL) {
    sink_fn(level, msg, sink_user);
  } else {
    fprintf(stderr, "orthod %s: %s\n", orthod_log_level_name(level), msg);
  }
}
