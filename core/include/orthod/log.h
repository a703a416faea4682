/* orthod/log.h — the engine logs through one callback that the embedding program installs.
 * Without a callback, warnings and errors go to stderr. */
#ifndef ORTHOD_LOG_H
#define ORTHOD_LOG_H

#include "orthod/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  ORTHOD_LOG_ERROR = 0,
  ORTHOD_LOG_WARN = 1,
  ORTHOD_LOG_INFO = 2,
  ORTHOD_LOG_DEBUG = 3,
} orthod_log_level_t;

/* Receives one formatted message (no trailing newline). Called from any thread. */
typedef void (*orthod_log_fn)(orthod_log_level_t level, const char *msg, void *user);

/* Install the sink and the most verbose level that is formatted; fn NULL restores stderr. */
ORTHOD_API void orthod_log_set_sink(orthod_log_fn fn, void *user, orthod_log_level_t max_level);

/* Most verbose level currently enabled. */
ORTHOD_API orthod_log_level_t orthod_log_level(void);

/* Format and emit a message; prefer the ORTHOD_LOG macro, which skips formatting when off. */
ORTHOD_API void orthod_log_write(orthod_log_level_t level, const char *fmt, ...) ORTHOD_PRINTF(2, 3);

/* Short level name: "error", "warn", "info", "debug". */
ORTHOD_API const char *orthod_log_level_name(orthod_log_level_t level);

#define ORTHOD_LOG(level, ...)                                                     \
  do {                                                                             \
    if ((level) <= orthod_log_level()) orthod_log_write((level), __VA_ARGS__);     \
  } while (0)

#ifdef __cplusplus
}
#endif
#endif
