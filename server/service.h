/* server/service.h — the orthod.v1.Optimizer service: the RPC handlers, the loop-side registry
 * of parameters (shape, mode, step counter, pending pushes), synchronous/asynchronous step
 * semantics, chunk assembly and streaming of weights. Runs on the loop thread; device work goes
 * through orthod_device_submit. */
#ifndef ORTHOD_SERVER_SERVICE_H
#define ORTHOD_SERVER_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "auth.h"
#include "config.h"
#include "device.h"
#include "metrics.h"
#include "rpc.h"

typedef struct orthod_service orthod_service_t;

/* cfg and dev are borrowed and outlive the service. */
int orthod_service_create(uv_loop_t *loop, orthod_device_t *dev, const orthod_server_config_t *cfg,
                          orthod_service_t **out);

/* Check bearer tokens against auth (borrowed, outlives svc; NULL: no authorization) on every
 * call of the Optimizer service (docs/OPERATIONS.md, Security). */
void orthod_service_set_auth(orthod_service_t *svc, const orthod_auth_t *auth);

/* Count into m (borrowed; NULL: no metrics) and report the registry's gauges to it. */
void orthod_service_set_metrics(orthod_service_t *svc, orthod_metrics_t *m);

/* Before serving: load the newest checkpoint of --state-dir into the store and the registry
 * (unless --restore=false) and number new checkpoints after it. Runs the loop until the device
 * has loaded it. Returns 0, or -1 with err filled (a checkpoint that fails verification). */
int orthod_service_restore(orthod_service_t *svc, char *err, size_t errlen);

/* The service's methods (Register, Upload, Step, Pull, List, Describe, Drop, SetConfig,
 * Checkpoint) with method_data = svc; valid while svc lives. */
size_t orthod_service_methods(orthod_service_t *svc, const orthod_method_t **out);

/* Shutdown has begun: new requests on open calls get UNAVAILABLE ("orthod is shutting down"),
 * pending synchronous steps fail with UNAVAILABLE, in-flight device jobs finish. */
void orthod_service_drain(orthod_service_t *svc);

/* Shutdown, once every call has ended and before the device stops: queue the final checkpoint
 * (--checkpoint-on-shutdown, when anything changed since the last one). *failed (may be NULL;
 * must outlive the device) is set if it cannot be written. */
void orthod_service_final_checkpoint(orthod_service_t *svc, bool *failed);

/* Free (after the rpc server has drained and the device has stopped). */
void orthod_service_destroy(orthod_service_t *svc);

#endif
