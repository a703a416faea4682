/* server/device.h — the device worker: one thread that owns the backend (for CUDA: its context,
 * stream, cuBLAS handle and workspace) and the parameter store, and runs jobs for the loop.
 *
 * The loop thread submits jobs; the device thread runs them in order (`run`), then posts them back
 * to the loop (uv_async_send), where `done` runs. A job is any work that touches the store or the
 * backend: register, write, step, read, drop, describe. Everything that does not (chunk assembly,
 * synchronous-mode bookkeeping, streaming) stays on the loop, so network transfer of one parameter
 * overlaps the compute of another. */
#ifndef ORTHOD_SERVER_DEVICE_H
#define ORTHOD_SERVER_DEVICE_H

#include <stddef.h>
#include <uv.h>

#include "orthod/backend.h"
#include "orthod/store.h"

typedef struct orthod_device orthod_device_t;
typedef struct orthod_job orthod_job_t;

struct orthod_job {
  /* Device thread. The job's own fields carry inputs and outputs (embed orthod_job_t first in a
   * larger struct). */
  void (*run)(orthod_job_t *job, orthod_store_t *store);
  /* Loop thread, after run. May free the job. */
  void (*done)(orthod_job_t *job);
  orthod_job_t *next_; /* queue link, owned by the device */
};

typedef struct orthod_device_opts {
  const char *backend;  /* "auto" | "cpu" | "cuda" */
  int device;           /* CUDA device index */
  int threads;          /* CPU backend threads, 0 = all */
  size_t memory_limit;  /* store limit, bytes, 0 = none */
} orthod_device_opts_t;

/* Start the thread, create the backend and the store on it. Returns 0, or -1 with err filled
 * ("backend cuda: no CUDA device (...)", "backend cuda: this build has no CUDA backend (...)"). */
int orthod_device_create(uv_loop_t *loop, const orthod_device_opts_t *opts, orthod_device_t **out,
                         char *err, size_t errlen);

/* "cpu" / "cuda" and a description for the start-up log ("OpenBLAS 0.3.21, 16 threads"). */
const char *orthod_device_backend_name(const orthod_device_t *dev);

/* Loop thread: queue a job. */
void orthod_device_submit(orthod_device_t *dev, orthod_job_t *job);

/* Jobs queued or running. */
size_t orthod_device_pending(const orthod_device_t *dev);

/* Loop thread: run the queued jobs to completion (their `done` callbacks included, via the loop),
 * then stop the thread and free the store and backend. Call while the loop still runs; `stopped`
 * runs on the loop when everything is freed. */
void orthod_device_stop(orthod_device_t *dev, void (*stopped)(void *arg), void *arg);

#endif
