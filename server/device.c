/* server/device.c — the device worker thread: owns the backend and the store, runs jobs FIFO.
 *
 * The backend and the store are created, used and destroyed on this thread only (a CUDA context
 * is bound to the thread that made it). Finished jobs go back to the loop through a locked list
 * and one uv_async; the loop runs their `done` in submission order. */
#include "device.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/error.h"
#include "orthod/log.h"

/* OpenBLAS (the CPU backend's BLAS, linked through the core library), for the start-up log only;
 * declared here rather than pulling cblas.h into the server. */
extern char *openblas_get_config(void);
extern int openblas_get_num_threads(void);

struct orthod_device {
  uv_loop_t *loop;
  uv_async_t *async;        /* own allocation, freed by its close callback (with the device) */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;        /* device thread: work or stop; create: init result */
  /* guarded by mu */
  orthod_job_t *q_head, *q_tail;    /* submitted, not yet run */
  orthod_job_t *d_head, *d_tail;    /* run, `done` not yet called */
  bool stop;                /* every job is done and no more will come: free, exit */
  bool exited;              /* the thread freed the store and backend and is about to return */
  int init_state;           /* 0 pending, 1 ok, -1 failed */
  char init_err[256];
  /* device thread only */
  orthod_backend_t *backend;
  orthod_store_t *store;
  /* loop thread only */
  orthod_device_opts_t opts;
  char backend_arg[16];
  char name[192];           /* backend description for the start-up log */
  size_t pending;           /* submitted and `done` not yet called */
  bool joined;
  bool stop_requested;      /* orthod_device_stop was called */
  void (*stopped)(void *arg);
  void *stopped_arg;
};

/* ---- device thread --------------------------------------------------------------------------- */

/* The CPU backend and its start-up description ("cpu (OpenBLAS 0.3.21, 16 threads)"). */
static int init_cpu(orthod_device_t *dev, char *err, size_t errlen) {
  orthod_backend_opts_t bo = {.threads = dev->opts.threads, .device = dev->opts.device};
  orthod_err_t e = orthod_backend_create_cpu(&bo, &dev->backend);
  if (e != ORTHOD_OK) {
    snprintf(err, errlen, "backend cpu: %s (%s)", orthod_strerror(e), orthod_error_detail());
    return -1;
  }
  /* "OpenBLAS 0.3.21 DYNAMIC_ARCH ..." → "OpenBLAS 0.3.21" */
  char blas[64];
  snprintf(blas, sizeof blas, "%s", openblas_get_config());
  char *sp = strchr(blas, ' ');
  if (sp) sp = strchr(sp + 1, ' ');
  if (sp) *sp = '\0';
  int threads = openblas_get_num_threads();
  snprintf(dev->name, sizeof dev->name, "%s (%s, %d thread%s)", orthod_backend_name(dev->backend),
           blas, threads, threads == 1 ? "" : "s");
  return 0;
}

/* The CUDA backend on --device; its description names the GPU. */
static int init_cuda(orthod_device_t *dev, char *err, size_t errlen) {
  orthod_backend_opts_t bo = {.threads = dev->opts.threads, .device = dev->opts.device};
  orthod_err_t e = orthod_backend_create_cuda(&bo, &dev->backend);
  if (e != ORTHOD_OK) {
    const char *detail = orthod_error_detail();
    snprintf(err, errlen, "backend cuda: %s", detail[0] ? detail : orthod_strerror(e));
    return -1;
  }
  char desc[160];
  if (orthod_backend_cuda_describe(dev->opts.device, desc, sizeof desc) != ORTHOD_OK)
    snprintf(desc, sizeof desc, "device %d", dev->opts.device);
  snprintf(dev->name, sizeof dev->name, "%s (%s)", orthod_backend_name(dev->backend), desc);
  return 0;
}

/* auto: CUDA when this build has it and a device is present, else the CPU (a CUDA backend that
 * fails to start is logged and the CPU is used); cuda: CUDA or a start failure; cpu: the CPU. */
static int device_init(orthod_device_t *dev, char *err, size_t errlen) {
  const char *kind = dev->backend_arg;
  int rc;
  if (strcmp(kind, "cuda") == 0) {
    rc = init_cuda(dev, err, errlen);
  } else if (strcmp(kind, "auto") == 0) {
    rc = -1;
    if (orthod_backend_cuda_device_count() > 0) {
      rc = init_cuda(dev, err, errlen);
      if (rc != 0) ORTHOD_LOG(ORTHOD_LOG_WARN, "%s; backend auto falls back to the CPU", err);
    } else if (orthod_backend_cuda_describe(dev->opts.device, NULL, 0) != ORTHOD_OK) {
      ORTHOD_LOG(ORTHOD_LOG_INFO, "backend auto: %s; using the CPU", orthod_error_detail());
    }
    if (rc != 0) rc = init_cpu(dev, err, errlen);
  } else if (strcmp(kind, "cpu") == 0) {
    rc = init_cpu(dev, err, errlen);
  } else {
    snprintf(err, errlen, "backend '%s': unknown (expected auto, cpu or cuda)", kind);
    return -1;
  }
  if (rc != 0) return -1;
  orthod_err_t e = orthod_store_create(dev->backend, dev->opts.memory_limit, &dev->store);
  if (e != ORTHOD_OK) {
    snprintf(err, errlen, "parameter store: %s (%s)", orthod_strerror(e), orthod_error_detail());
    orthod_backend_destroy(dev->backend);
    dev->backend = NULL;
    return -1;
  }
  return 0;
}

static void *device_main(void *arg) {
  orthod_device_t *dev = arg;
#if defined(__linux__)
  pthread_setname_np(pthread_self(), "orthod-device");
#endif
  char err[256] = "";
  int rc = device_init(dev, err, sizeof err);
  pthread_mutex_lock(&dev->mu);
  dev->init_state = rc == 0 ? 1 : -1;
  snprintf(dev->init_err, sizeof dev->init_err, "%s", err);
  pthread_cond_broadcast(&dev->cv);
  pthread_mutex_unlock(&dev->mu);
  if (rc != 0) return NULL;

  pthread_mutex_lock(&dev->mu);
  for (;;) {
    while (!dev->q_head && !dev->stop) pthread_cond_wait(&dev->cv, &dev->mu);
    orthod_job_t *job = dev->q_head;
    if (!job) break; /* stop requested and the queue is empty */
    dev->q_head = job->next_;
    if (!dev->q_head) dev->q_tail = NULL;
    pthread_mutex_unlock(&dev->mu);

    job->run(job, dev->store);

    pthread_mutex_lock(&dev->mu);
    job->next_ = NULL;
    if (dev->d_tail) dev->d_tail->next_ = job;
    else dev->d_head = job;
    dev->d_tail = job;
    pthread_mutex_unlock(&dev->mu);
    uv_async_send(dev->async);
    pthread_mutex_lock(&dev->mu);
  }
  pthread_mutex_unlock(&dev->mu);

  orthod_store_destroy(dev->store);
  dev->store = NULL;
  orthod_backend_destroy(dev->backend);
  dev->backend = NULL;

  pthread_mutex_lock(&dev->mu);
  dev->exited = true;
  pthread_mutex_unlock(&dev->mu);
  uv_async_send(dev->async);
  return NULL;
}

/* ---- loop thread ----------------------------------------------------------------------------- */

static void device_free(orthod_device_t *dev) {
  pthread_cond_destroy(&dev->cv);
  pthread_mutex_destroy(&dev->mu);
  free(dev);
}

static void on_async_closed(uv_handle_t *handle) {
  orthod_device_t *dev = handle->data;
  free(handle);
  if (!dev) return;
  void (*stopped)(void *) = dev->stopped;
  void *arg = dev->stopped_arg;
  device_free(dev);
  if (stopped) stopped(arg);
}

/* Tell the thread to exit once stop was asked for and every job's `done` has run: a `done`
 * during the drain may still submit follow-up work. */
static void maybe_exit(orthod_device_t *dev) {
  if (!dev->stop_requested || dev->pending > 0) return;
  pthread_mutex_lock(&dev->mu);
  dev->stop = true;
  pthread_cond_signal(&dev->cv);
  pthread_mutex_unlock(&dev->mu);
}

static void on_async(uv_async_t *handle) {
  orthod_device_t *dev = handle->data;
  pthread_mutex_lock(&dev->mu);
  orthod_job_t *done = dev->d_head;
  dev->d_head = dev->d_tail = NULL;
  bool exited = dev->exited;
  pthread_mutex_unlock(&dev->mu);

  while (done) {
    orthod_job_t *next = done->next_; /* read first: `done` may free the job */
    dev->pending--;
    done->done(done);
    done = next;
  }
  maybe_exit(dev);
  /* `exited` was read with the done list: every job's done ran above, none can follow. */
  if (exited && !dev->joined) {
    pthread_join(dev->thread, NULL);
    dev->joined = true;
    uv_close((uv_handle_t *)dev->async, on_async_closed);
  }
}

int orthod_device_create(uv_loop_t *loop, const orthod_device_opts_t *opts, orthod_device_t **out,
                         char *err, size_t errlen) {
  *out = NULL;
  orthod_device_t *dev = calloc(1, sizeof *dev);
  uv_async_t *async = calloc(1, sizeof *async);
  if (!dev || !async) {
    free(dev);
    free(async);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  dev->loop = loop;
  dev->opts = *opts;
  snprintf(dev->backend_arg, sizeof dev->backend_arg, "%s", opts->backend ? opts->backend : "auto");
  dev->opts.backend = dev->backend_arg;
  pthread_mutex_init(&dev->mu, NULL);
  pthread_cond_init(&dev->cv, NULL);
  if (uv_async_init(loop, async, on_async) != 0) {
    free(async);
    device_free(dev);
    snprintf(err, errlen, "uv_async_init failed");
    return -1;
  }
  async->data = dev;
  dev->async = async;

  if (pthread_create(&dev->thread, NULL, device_main, dev) != 0) {
    snprintf(err, errlen, "cannot start the device thread");
    async->data = NULL;
    uv_close((uv_handle_t *)async, on_async_closed);
    device_free(dev);
    return -1;
  }
  pthread_mutex_lock(&dev->mu);
  while (dev->init_state == 0) pthread_cond_wait(&dev->cv, &dev->mu);
  int state = dev->init_state;
  pthread_mutex_unlock(&dev->mu);
  if (state < 0) {
    pthread_join(dev->thread, NULL);
    snprintf(err, errlen, "%s", dev->init_err);
    async->data = NULL;
    uv_close((uv_handle_t *)async, on_async_closed);
    device_free(dev);
    return -1;
  }
  *out = dev;
  return 0;
}

const char *orthod_device_backend_name(const orthod_device_t *dev) { return dev->name; }

void orthod_device_submit(orthod_device_t *dev, orthod_job_t *job) {
  job->next_ = NULL;
  dev->pending++;
  pthread_mutex_lock(&dev->mu);
  if (dev->stop) {
    /* A job after stop would never run; that is a caller bug we want to see at once. */
    pthread_mutex_unlock(&dev->mu);
    fprintf(stderr, "orthod: device job submitted after stop (%s:%d)\n", __FILE__, __LINE__);
    abort();
  }
  if (dev->q_tail) dev->q_tail->next_ = job;
  else dev->q_head = job;
  dev->q_tail = job;
  pthread_cond_signal(&dev->cv);
  pthread_mutex_unlock(&dev->mu);
}

size_t orthod_device_pending(const orthod_device_t *dev) { return dev->pending; }

void orthod_device_stop(orthod_device_t *dev, void (*stopped)(void *arg), void *arg) {
  dev->stopped = stopped;
  dev->stopped_arg = arg;
  dev->stop_requested = true;
  maybe_exit(dev);
}
