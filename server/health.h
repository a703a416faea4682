/* server/health.h — the standard grpc.health.v1.Health service (Check and Watch) over rpc.h.
 *
 * Known services: "" (the whole daemon) and "orthod.v1.Optimizer"; both share one serving state.
 * Check of another name → NOT_FOUND; Watch of another name streams SERVICE_UNKNOWN and stays open,
 * as the health protocol asks. Watch sends the current state at once and again on every change.
 * Loop thread only. */
#ifndef ORTHOD_SERVER_HEALTH_H
#define ORTHOD_SERVER_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include "rpc.h"

typedef struct orthod_health orthod_health_t;

/* Create the service, NOT_SERVING until orthod_health_set_serving(h, true). Returns 0 or -1. */
int orthod_health_create(orthod_health_t **out);

/* The two methods (Check, Watch) with method_data = h; valid while h lives. */
size_t orthod_health_methods(orthod_health_t *h, const orthod_method_t **out);

/* Change the state of every known service; open Watch streams get the new state. */
void orthod_health_set_serving(orthod_health_t *h, bool serving);

/* Shutdown has begun: NOT_SERVING to every watcher, then end their streams (UNAVAILABLE) after
 * that message so they do not hold the drain open. Later Watch calls end the same way. */
void orthod_health_shutdown(orthod_health_t *h);

/* Number of open Watch streams (for tests and logs). */
size_t orthod_health_watchers(const orthod_health_t *h);

/* Free (after the rpc server has drained: no call may still point at h). */
void orthod_health_destroy(orthod_health_t *h);

#endif
