/* shard.c — the sharded client: a consistent-hash ring of points (FNV-1a 64 and the
 * MurmurHash3 finalizer) over the shard addresses, calls routed by parameter name, and
 * multi-shard calls (Step, Upload, Pull, List, Health, Checkpoint) run with one thread per
 * shard, each on that shard's own orthod_client_t. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"
#include "orthod/shard.h"

#define FNV_OFFSET UINT64_C(0xcbf29ce484222325)
#define FNV_PRIME UINT64_C(0x100000001b3)
#define MAX_SHARDS ((size_t)1 << 16) /* keeps n * replicas far from overflow */

/* ---- placement ------------------------------------------------------------------------------ */

static uint64_t fnv_update(uint64_t h, const void *data, size_t len) {
  const unsigned char *p = data;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= FNV_PRIME;
  }
  return h;
}

uint64_t orthod_fnv1a64(const void *data, size_t len) {
  return data == NULL ? FNV_OFFSET : fnv_update(FNV_OFFSET, data, len);
}

uint64_t orthod_fmix64(uint64_t h) {
  h ^= h >> 33;
  h *= UINT64_C(0xff51afd7ed558ccd);
  h ^= h >> 33;
  h *= UINT64_C(0xc4ceb9fe1a85ec53);
  h ^= h >> 33;
  return h;
}

uint64_t orthod_shard_hash(const char *s) {
  return orthod_fmix64(s == NULL ? FNV_OFFSET : fnv_update(FNV_OFFSET, s, strlen(s)));
}

/* ring_hash(address + "#" + k), the FNV-1a part hashed in two pieces so no buffer has to fit
 * the address. */
static uint64_t ring_point(const char *address, unsigned k) {
  char tail[16];
  int len = snprintf(tail, sizeof tail, "#%u", k);
  return orthod_fmix64(
      fnv_update(fnv_update(FNV_OFFSET, address, strlen(address)), tail, (size_t)len));
}

/* A direct scan of every point instead of a sorted ring: no allocation, and an implementation
 * independent of the ring the client builds (the tests compare the two). Scanning shards in
 * index order with strict comparisons keeps the lower index on equal points. */
size_t orthod_shard_placement(const char *const *addresses, size_t n, const char *name) {
  if (addresses == NULL || n == 0 || name == NULL) return SIZE_MAX;
  for (size_t i = 0; i < n; i++)
    if (addresses[i] == NULL) return SIZE_MAX;
  uint64_t h = orthod_shard_hash(name);
  bool found = false;
  uint64_t best = 0, low = 0;
  size_t best_i = 0, low_i = 0;
  for (size_t i = 0; i < n; i++) {
    for (unsigned k = 0; k < ORTHOD_SHARD_REPLICAS; k++) {
      uint64_t p = ring_point(addresses[i], k);
      if ((i == 0 && k == 0) || p < low) {
        low = p;
        low_i = i;
      }
      if (p >= h && (!found || p < best)) {
        best = p;
        best_i = i;
        found = true;
      }
    }
  }
  return found ? best_i : low_i; /* past the largest point: wrap to the smallest */
}

/* ---- the client ------------------------------------------------------------------------------ */

typedef struct ring_entry {
  uint64_t point;
  size_t shard;
} ring_entry_t;

struct orthod_sharded_client {
  size_t n;                        /* shards */
  char **addresses;                /* n owned copies, as given */
  orthod_client_t **clients;       /* n, one per shard */
  orthod_step_stream_t **streams;  /* n, NULL until that shard's first step (or after a failure) */
  ring_entry_t *ring;              /* n * ORTHOD_SHARD_REPLICAS, sorted by (point, shard) */
  size_t err_shard;                /* shard of the last error, SIZE_MAX if none */
  char err[ORTHOD__ERR_LEN];
};

static int cmp_ring(const void *a, const void *b) {
  const ring_entry_t *x = a, *y = b;
  if (x->point != y->point) return x->point < y->point ? -1 : 1;
  return x->shard < y->shard ? -1 : x->shard > y->shard;
}

size_t orthod_sharded_shard_of(const orthod_sharded_client_t *sc, const char *name) {
  if (sc == NULL || name == NULL) return SIZE_MAX;
  uint64_t h = orthod_shard_hash(name);
  /* lower bound: the first entry with point >= h (ties sorted by shard, lowest first) */
  size_t total = sc->n * ORTHOD_SHARD_REPLICAS, lo = 0, hi = total;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (sc->ring[mid].point < h) lo = mid + 1;
    else hi = mid;
  }
  return sc->ring[lo == total ? 0 : lo].shard;
}

static const char *strip_code(int rc, const char *msg);

int orthod_sharded_create(const char *const *addresses, size_t n,
                          const orthod_client_options_t *opts, orthod_sharded_client_t **out) {
  /* No sharded client exists to hold an error yet: the texts go where orthod_client_create's
   * go (orthod_client_create_error). */
  char *err = orthod__cl_create_err();
  err[0] = '\0';
  if (out == NULL)
    return orthod__cl_fail(err, GRPC_STATUS_INVALID_ARGUMENT, "sharded create: out is NULL");
  *out = NULL;
  if (addresses == NULL || n == 0 || n > MAX_SHARDS)
    return orthod__cl_fail(err, GRPC_STATUS_INVALID_ARGUMENT,
                           "sharded create: 1..%zu addresses are required", MAX_SHARDS);
  for (size_t i = 0; i < n; i++) {
    if (addresses[i] == NULL || addresses[i][0] == '\0')
      return orthod__cl_fail(err, GRPC_STATUS_INVALID_ARGUMENT,
                             "sharded create: address %zu is empty", i);
    /* The same address twice would own identical points; the lower index would win every
     * one of them and the other would be a shard that never gets a parameter. */
    for (size_t j = 0; j < i; j++)
      if (strcmp(addresses[i], addresses[j]) == 0)
        return orthod__cl_fail(err, GRPC_STATUS_INVALID_ARGUMENT,
                               "sharded create: address '%s' is given twice", addresses[i]);
  }
  orthod_sharded_client_t *sc = calloc(1, sizeof *sc);
  if (sc == NULL) return orthod__cl_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  sc->err_shard = SIZE_MAX;
  sc->addresses = calloc(n, sizeof *sc->addresses);
  sc->clients = calloc(n, sizeof *sc->clients);
  sc->streams = calloc(n, sizeof *sc->streams);
  sc->ring = calloc(n * ORTHOD_SHARD_REPLICAS, sizeof *sc->ring);
  int rc = GRPC_STATUS_RESOURCE_EXHAUSTED;
  if (sc->addresses == NULL || sc->clients == NULL || sc->streams == NULL || sc->ring == NULL) {
    orthod__cl_fail(err, rc, "out of memory");
    goto fail;
  }
  sc->n = n; /* from here on destroy frees whatever was made */
  for (size_t i = 0; i < n; i++) {
    if ((sc->addresses[i] = strdup(addresses[i])) == NULL) {
      rc = orthod__cl_fail(err, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      goto fail;
    }
    /* Every shard gets the same options (TLS files are read once per shard). */
    rc = orthod_client_create(addresses[i], opts, &sc->clients[i]);
    if (rc != 0) {
      /* "CODE: shard i (address): message", like the errors of the calls */
      char msg[ORTHOD__ERR_LEN];
      snprintf(msg, sizeof msg, "%s", strip_code(rc, err));
      orthod__cl_fail(err, rc, "shard %zu (%s): %s", i, addresses[i], msg);
      goto fail;
    }
    for (unsigned k = 0; k < ORTHOD_SHARD_REPLICAS; k++)
      sc->ring[i * ORTHOD_SHARD_REPLICAS + k] =
          (ring_entry_t){.point = ring_point(addresses[i], k), .shard = i};
  }
  qsort(sc->ring, n * ORTHOD_SHARD_REPLICAS, sizeof *sc->ring, cmp_ring);
  *out = sc;
  return 0;

fail:
  orthod_sharded_destroy(sc);
  return rc;
}

void orthod_sharded_destroy(orthod_sharded_client_t *sc) {
  if (sc == NULL) return;
  for (size_t i = 0; i < sc->n; i++) {
    orthod_step_destroy(sc->streams[i]); /* before their clients */
    orthod_client_destroy(sc->clients[i]);
    free(sc->addresses[i]);
  }
  free(sc->streams);
  free(sc->clients);
  free(sc->addresses);
  free(sc->ring);
  free(sc);
}

const char *orthod_sharded_last_error(const orthod_sharded_client_t *sc) {
  return sc == NULL ? "INVALID_ARGUMENT: no sharded client" : sc->err;
}

size_t orthod_sharded_error_shard(const orthod_sharded_client_t *sc) {
  return sc == NULL ? SIZE_MAX : sc->err_shard;
}

size_t orthod_sharded_count(const orthod_sharded_client_t *sc) { return sc == NULL ? 0 : sc->n; }

const char *orthod_sharded_address(const orthod_sharded_client_t *sc, size_t i) {
  return sc == NULL || i >= sc->n ? NULL : sc->addresses[i];
}

orthod_client_t *orthod_sharded_shard(orthod_sharded_client_t *sc, size_t i) {
  return sc == NULL || i >= sc->n ? NULL : sc->clients[i];
}

/* ---- errors ---------------------------------------------------------------------------------- */

static void ok(orthod_sharded_client_t *sc) {
  sc->err[0] = '\0';
  sc->err_shard = SIZE_MAX;
}

/* An error found before any shard was reached. */
static int local_fail(orthod_sharded_client_t *sc, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int local_fail(orthod_sharded_client_t *sc, int code, const char *fmt, ...) {
  int n = snprintf(sc->err, sizeof sc->err, "%s: ", orthod_client_status_name(code));
  if (n > 0 && (size_t)n < sizeof sc->err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sc->err + n, sizeof sc->err - (size_t)n, fmt, ap);
    va_end(ap);
  }
  sc->err_shard = SIZE_MAX;
  return code;
}

/* msg less its "CODE_NAME: " prefix when that names rc. */
static const char *strip_code(int rc, const char *msg) {
  const char *code = orthod_client_status_name(rc);
  size_t len = strlen(code);
  if (msg == NULL || msg[0] == '\0') return "(no message)";
  if (strncmp(msg, code, len) == 0 && msg[len] == ':')
    return msg + len + (msg[len + 1] == ' ' ? 2 : 1);
  return msg;
}

/* err = "CODE: shard i (address): message", message being the shard's own text less its
 * "CODE: " prefix. Returns rc. */
static int shard_fail(orthod_sharded_client_t *sc, size_t i, int rc, const char *msg) {
  orthod__cl_fail(sc->err, rc, "shard %zu (%s): %s", i, sc->addresses[i], strip_code(rc, msg));
  sc->err_shard = i;
  return rc;
}

/* Append "; shard i (address): CODE: message" for a further failing shard (truncated to fit). */
static void shard_also(orthod_sharded_client_t *sc, size_t i, int rc, const char *msg) {
  size_t len = strlen(sc->err);
  if (len + 1 >= sizeof sc->err) return;
  snprintf(sc->err + len, sizeof sc->err - len, "; shard %zu (%s): %s: %s", i, sc->addresses[i],
           orthod_client_status_name(rc), strip_code(rc, msg));
}

/* The result of a call made on shard i's client. */
static int routed(orthod_sharded_client_t *sc, size_t i, int rc) {
  if (rc == 0) {
    ok(sc);
    return 0;
  }
  return shard_fail(sc, i, rc, orthod_client_last_error(sc->clients[i]));
}

/* Shard of a name given to a routed call, or SIZE_MAX with the error filled in. */
static size_t route(orthod_sharded_client_t *sc, const char *name, const char *what) {
  if (name == NULL || name[0] == '\0') {
    local_fail(sc, GRPC_STATUS_INVALID_ARGUMENT, "%s: a parameter name is required", what);
    return SIZE_MAX;
  }
  return orthod_sharded_shard_of(sc, name);
}

/* ---- routed calls -------------------------------------------------------------------------- */

int orthod_sharded_register(orthod_sharded_client_t *sc, const orthod_param_spec_t *spec,
                            orthod_param_info_t *info, bool *created) {
  if (info != NULL) memset(info, 0, sizeof *info);
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  size_t i = route(sc, spec ? spec->name : NULL, "register");
  if (i == SIZE_MAX) return GRPC_STATUS_INVALID_ARGUMENT;
  return routed(sc, i, orthod_register(sc->clients[i], spec, info, created));
}

int orthod_sharded_describe(orthod_sharded_client_t *sc, const char *name,
                            orthod_param_info_t *info) {
  if (info != NULL) memset(info, 0, sizeof *info);
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  size_t i = route(sc, name, "describe");
  if (i == SIZE_MAX) return GRPC_STATUS_INVALID_ARGUMENT;
  return routed(sc, i, orthod_describe(sc->clients[i], name, info));
}

int orthod_sharded_drop(orthod_sharded_client_t *sc, const char *name, uint64_t *step) {
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  size_t i = route(sc, name, "drop");
  if (i == SIZE_MAX) return GRPC_STATUS_INVALID_ARGUMENT;
  return routed(sc, i, orthod_drop(sc->clients[i], name, step));
}

int orthod_sharded_set_config(orthod_sharded_client_t *sc, const char *name,
                              const orthod_option_t *options, size_t n_options,
                              orthod_param_info_t *info) {
  if (info != NULL) memset(info, 0, sizeof *info);
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  size_t i = route(sc, name, "set_config");
  if (i == SIZE_MAX) return GRPC_STATUS_INVALID_ARGUMENT;
  return routed(sc, i, orthod_set_config(sc->clients[i], name, options, n_options, info));
}

/* ---- one job per shard, in parallel ------------------------------------------------------- */

typedef struct job job_t;
struct job {
  orthod_sharded_client_t *sc;
  size_t shard;
  size_t index;          /* position among the call's jobs */
  size_t begin, count;   /* this shard's slice of the call's grouped elements */
  int (*fn)(job_t *j);   /* returns a status; on failure fills err with "CODE: message" */
  void *ctx;             /* the call's shared context (each job touches its own slice) */
  int rc;
  bool threaded;
  pthread_t thread;
  char err[ORTHOD__ERR_LEN];
};

static void *job_main(void *arg) {
  job_t *j = arg;
  j->rc = j->fn(j);
  return NULL;
}

/* Run every job, all but the first on threads of their own (the first on the calling thread;
 * a job whose thread cannot start runs here after it), wait for all, and report the failure of
 * the lowest shard index (jobs are in shard order), the others' appended. */
static int run_jobs(orthod_sharded_client_t *sc, job_t *jobs, size_t n_jobs) {
  for (size_t j = 1; j < n_jobs; j++)
    jobs[j].threaded = pthread_create(&jobs[j].thread, NULL, job_main, &jobs[j]) == 0;
  if (n_jobs > 0) job_main(&jobs[0]);
  for (size_t j = 1; j < n_jobs; j++) {
    if (jobs[j].threaded) pthread_join(jobs[j].thread, NULL);
    else job_main(&jobs[j]);
  }
  int rc = 0;
  for (size_t j = 0; j < n_jobs; j++) {
    if (jobs[j].rc == 0) continue;
    if (rc == 0) rc = shard_fail(sc, jobs[j].shard, jobs[j].rc, jobs[j].err);
    else shard_also(sc, jobs[j].shard, jobs[j].rc, jobs[j].err);
  }
  if (rc == 0) ok(sc);
  return rc;
}

/* Group n elements by shard (shards[k] for element k), keeping their order within a shard:
 * order[] lists element indices shard by shard, and one job per shard that has elements covers
 * its slice. shards == NULL: one job per shard, with no elements. On failure fills sc->err. */
static int make_jobs(orthod_sharded_client_t *sc, const size_t *shards, size_t n,
                     int (*fn)(job_t *), void *ctx, size_t **order_out, job_t **jobs_out,
                     size_t *n_jobs_out) {
  *order_out = NULL;
  *jobs_out = NULL;
  *n_jobs_out = 0;
  size_t *count = calloc(sc->n, sizeof *count);
  size_t *order = shards != NULL ? calloc(n ? n : 1, sizeof *order) : NULL;
  job_t *jobs = calloc(sc->n, sizeof *jobs);
  if (count == NULL || jobs == NULL || (shards != NULL && order == NULL)) {
    free(count);
    free(order);
    free(jobs);
    return local_fail(sc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
  for (size_t k = 0; shards != NULL && k < n; k++) count[shards[k]]++;
  size_t n_jobs = 0, begin = 0;
  for (size_t i = 0; i < sc->n; i++) {
    if (shards != NULL && count[i] == 0) continue;
    jobs[n_jobs] = (job_t){.sc = sc, .shard = i, .index = n_jobs, .begin = begin,
                           .count = shards != NULL ? count[i] : 0, .fn = fn, .ctx = ctx};
    begin += jobs[n_jobs].count;
    count[i] = jobs[n_jobs].begin; /* reused: the next free slot of shard i in order[] */
    n_jobs++;
  }
  for (size_t k = 0; shards != NULL && k < n; k++) order[count[shards[k]]++] = k;
  free(count);
  *order_out = order;
  *jobs_out = jobs;
  *n_jobs_out = n_jobs;
  return 0;
}

static int job_error(job_t *j, const char *msg, int rc) {
  snprintf(j->err, sizeof j->err, "%s", msg);
  return rc;
}

/* ---- Step ------------------------------------------------------------------------------------ */

typedef struct {
  orthod_step_item_t *copies; /* the caller's items, grouped by shard */
  uint32_t rank;
} step_ctx_t;

static int step_job(job_t *j) {
  step_ctx_t *c = j->ctx;
  orthod_sharded_client_t *sc = j->sc;
  orthod_step_stream_t **s = &sc->streams[j->shard];
  if (*s == NULL) {
    int rc = orthod_step_open(sc->clients[j->shard], s);
    if (rc != 0) return job_error(j, orthod_client_last_error(sc->clients[j->shard]), rc);
  }
  int rc = orthod_step(*s, c->rank, c->copies + j->begin, j->count);
  if (rc != 0) {
    /* The items were checked beforehand, so this is a daemon, transport or reply error and the
     * stream is over: the next step opens a new one. */
    job_error(j, orthod_step_last_error(*s), rc);
    orthod_step_destroy(*s);
    *s = NULL;
  }
  return rc;
}

/* The checks orthod_step_push makes, done for all items before any shard is sent anything, so
 * that a bad argument never leaves some shards stepped. */
static int check_step_items(orthod_sharded_client_t *sc, const orthod_step_item_t *items,
                            size_t n) {
  if (items == NULL || n == 0)
    return local_fail(sc, GRPC_STATUS_INVALID_ARGUMENT, "step: no items");
  for (size_t k = 0; k < n; k++) {
    const orthod_step_item_t *it = &items[k];
    if (it->name == NULL || it->name[0] == '\0' || strlen(it->name) > ORTHOD_CLIENT_NAME_MAX)
      return local_fail(sc, GRPC_STATUS_INVALID_ARGUMENT,
                        "step: item %zu needs a name of 1..%d bytes", k, ORTHOD_CLIENT_NAME_MAX);
    if (it->grad == NULL || it->elements == 0 || orthod__cl_dtype(it->grad_dtype) == 0 ||
        (it->grad_wire != ORTHOD_CLIENT_DEFAULT && orthod__cl_dtype(it->grad_wire) == 0))
      return local_fail(sc, GRPC_STATUS_INVALID_ARGUMENT,
                        "step '%s': grad, elements >= 1 and valid dtypes are required", it->name);
    if (it->weights != NULL &&
        (orthod__cl_dtype(it->weights_dtype) == 0 ||
         (it->reply_dtype != ORTHOD_CLIENT_DEFAULT && orthod__cl_dtype(it->reply_dtype) == 0)))
      return local_fail(sc, GRPC_STATUS_INVALID_ARGUMENT, "step '%s': invalid reply dtype",
                        it->name);
    for (size_t j = 0; j < k; j++)
      if (strcmp(items[j].name, it->name) == 0)
        return local_fail(sc, GRPC_STATUS_INVALID_ARGUMENT,
                          "step: '%s' appears twice in one push", it->name);
  }
  return 0;
}

int orthod_sharded_step(orthod_sharded_client_t *sc, uint32_t worker_rank,
                        orthod_step_item_t *items, size_t n) {
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  int rc = check_step_items(sc, items, n);
  if (rc != 0) return rc;
  for (size_t k = 0; k < n; k++) items[k].new_step = 0;
  size_t *shards = calloc(n, sizeof *shards);
  orthod_step_item_t *copies = calloc(n, sizeof *copies);
  step_ctx_t ctx = {.copies = copies, .rank = worker_rank};
  size_t *order = NULL, n_jobs = 0;
  job_t *jobs = NULL;
  if (shards == NULL || copies == NULL) {
    rc = local_fail(sc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  for (size_t k = 0; k < n; k++) shards[k] = orthod_sharded_shard_of(sc, items[k].name);
  rc = make_jobs(sc, shards, n, step_job, &ctx, &order, &jobs, &n_jobs);
  if (rc != 0) goto out;
  for (size_t k = 0; k < n; k++) copies[k] = items[order[k]];
  rc = run_jobs(sc, jobs, n_jobs);
  for (size_t k = 0; k < n; k++) items[order[k]].new_step = copies[k].new_step;
out:
  free(shards);
  free(copies);
  free(order);
  free(jobs);
  return rc;
}

int orthod_sharded_step_finish(orthod_sharded_client_t *sc) {
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  int first = 0;
  for (size_t i = 0; i < sc->n; i++) {
    if (sc->streams[i] == NULL) continue;
    int rc = orthod_step_finish(sc->streams[i]);
    if (rc != 0) {
      if (first == 0) first = shard_fail(sc, i, rc, orthod_step_last_error(sc->streams[i]));
      else shard_also(sc, i, rc, orthod_step_last_error(sc->streams[i]));
    }
    orthod_step_destroy(sc->streams[i]);
    sc->streams[i] = NULL;
  }
  if (first == 0) ok(sc);
  return first;
}

/* ---- Upload and Pull ------------------------------------------------------------------------ */

typedef struct {
  orthod_tensor_t *copies;      /* the caller's tensors, grouped by shard */
  const size_t *order;          /* copies[k] is tensors[order[k]] */
  orthod_client_dtype_t wire;
  orthod_param_info_t *infos;   /* upload: the caller's, indexed like its tensors (or NULL) */
  orthod_param_info_t *scratch; /* upload: infos as each shard returned them (grouped) */
  bool *filled;                 /* upload: infos[i] was written */
} tensors_ctx_t;

static int upload_job(job_t *j) {
  tensors_ctx_t *c = j->ctx;
  orthod_client_t *cl = j->sc->clients[j->shard];
  size_t got = 0;
  int rc = orthod_upload(cl, c->copies + j->begin, j->count, c->wire,
                         c->infos ? c->scratch + j->begin : NULL, c->infos ? &got : NULL);
  if (rc != 0) {
    for (size_t x = 0; x < got && x < j->count; x++)
      orthod_param_info_clear(&c->scratch[j->begin + x]);
    return job_error(j, orthod_client_last_error(cl), rc);
  }
  /* Hand each info to the tensor of that name (the first not yet given one). */
  for (size_t x = 0; x < got && x < j->count; x++) {
    orthod_param_info_t *info = &c->scratch[j->begin + x];
    for (size_t y = j->begin; y < j->begin + j->count; y++) {
      size_t dst = c->order[y];
      if (!c->filled[dst] && info->name != NULL && strcmp(info->name, c->copies[y].name) == 0) {
        c->infos[dst] = *info;
        memset(info, 0, sizeof *info);
        c->filled[dst] = true;
        break;
      }
    }
    orthod_param_info_clear(info); /* one the daemon sent that matches no tensor */
  }
  return 0;
}

static int check_tensor_names(orthod_sharded_client_t *sc, const orthod_tensor_t *tensors,
                              size_t n, const char *what) {
  if (tensors == NULL || n == 0)
    return local_fail(sc, GRPC_STATUS_INVALID_ARGUMENT, "%s: no tensors", what);
  for (size_t k = 0; k < n; k++)
    if (tensors[k].name == NULL || tensors[k].name[0] == '\0')
      return local_fail(sc, GRPC_STATUS_INVALID_ARGUMENT, "%s: tensor %zu needs a name", what, k);
  return 0;
}

/* Shared by upload and pull: group the tensors by shard and run fn once per shard involved.
 * out_tensors (pull): receives the step counters of the copies. */
static int tensors_call(orthod_sharded_client_t *sc, const orthod_tensor_t *tensors,
                        orthod_tensor_t *out_tensors, size_t n, tensors_ctx_t *ctx,
                        int (*fn)(job_t *)) {
  size_t *shards = calloc(n, sizeof *shards);
  ctx->copies = calloc(n, sizeof *ctx->copies);
  size_t *order = NULL, n_jobs = 0;
  job_t *jobs = NULL;
  int rc;
  if (shards == NULL || ctx->copies == NULL) {
    rc = local_fail(sc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  for (size_t k = 0; k < n; k++) shards[k] = orthod_sharded_shard_of(sc, tensors[k].name);
  rc = make_jobs(sc, shards, n, fn, ctx, &order, &jobs, &n_jobs);
  if (rc != 0) goto out;
  ctx->order = order;
  for (size_t k = 0; k < n; k++) ctx->copies[k] = tensors[order[k]];
  rc = run_jobs(sc, jobs, n_jobs);
  for (size_t k = 0; out_tensors != NULL && k < n; k++)
    out_tensors[order[k]].step = ctx->copies[k].step;
out:
  free(shards);
  free(ctx->copies);
  ctx->copies = NULL;
  ctx->order = NULL;
  free(order);
  free(jobs);
  return rc;
}

int orthod_sharded_upload(orthod_sharded_client_t *sc, const orthod_tensor_t *tensors, size_t n,
                          orthod_client_dtype_t wire, orthod_param_info_t *infos,
                          size_t *n_infos) {
  if (n_infos != NULL) *n_infos = 0;
  if (infos != NULL && tensors != NULL) memset(infos, 0, n * sizeof *infos);
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  int rc = check_tensor_names(sc, tensors, n, "upload");
  if (rc != 0) return rc;
  tensors_ctx_t ctx = {.wire = wire, .infos = infos};
  if (infos != NULL) {
    ctx.scratch = calloc(n, sizeof *ctx.scratch);
    ctx.filled = calloc(n, sizeof *ctx.filled);
    if (ctx.scratch == NULL || ctx.filled == NULL) {
      rc = local_fail(sc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      goto out;
    }
  }
  rc = tensors_call(sc, tensors, NULL, n, &ctx, upload_job);
  for (size_t k = 0; infos != NULL && n_infos != NULL && k < n; k++) *n_infos += ctx.filled[k];
out:
  free(ctx.scratch);
  free(ctx.filled);
  return rc;
}

static int pull_job(job_t *j) {
  tensors_ctx_t *c = j->ctx;
  orthod_client_t *cl = j->sc->clients[j->shard];
  int rc = orthod_pull(cl, c->copies + j->begin, j->count, c->wire);
  return rc != 0 ? job_error(j, orthod_client_last_error(cl), rc) : 0;
}

int orthod_sharded_pull(orthod_sharded_client_t *sc, orthod_tensor_t *tensors, size_t n,
                        orthod_client_dtype_t wire) {
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  int rc = check_tensor_names(sc, tensors, n, "pull");
  if (rc != 0) return rc;
  tensors_ctx_t ctx = {.wire = wire};
  return tensors_call(sc, tensors, tensors, n, &ctx, pull_job);
}

/* ---- List, Health and Checkpoint ------------------------------------------------------------ */

typedef struct {
  const char *text;            /* list: prefix; health: service */
  orthod_param_list_t *lists;  /* list: one per job */
  int *serving;                /* health: one per shard (or NULL) */
  orthod_client_checkpoint_info_t *checkpoints; /* checkpoint: one per shard (or NULL) */
} all_ctx_t;

static int list_job(job_t *j) {
  all_ctx_t *c = j->ctx;
  orthod_client_t *cl = j->sc->clients[j->shard];
  int rc = orthod_list(cl, c->text, &c->lists[j->index]);
  return rc != 0 ? job_error(j, orthod_client_last_error(cl), rc) : 0;
}

static int cmp_info_name(const void *a, const void *b) {
  return strcmp(((const orthod_param_info_t *)a)->name, ((const orthod_param_info_t *)b)->name);
}

int orthod_sharded_list(orthod_sharded_client_t *sc, const char *prefix,
                        orthod_param_list_t *list) {
  if (list != NULL) memset(list, 0, sizeof *list);
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (list == NULL) return local_fail(sc, GRPC_STATUS_INVALID_ARGUMENT, "list: no output");
  all_ctx_t ctx = {.text = prefix, .lists = calloc(sc->n, sizeof *ctx.lists)};
  size_t *order = NULL, n_jobs = 0;
  job_t *jobs = NULL;
  int rc;
  if (ctx.lists == NULL) {
    rc = local_fail(sc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  rc = make_jobs(sc, NULL, 0, list_job, &ctx, &order, &jobs, &n_jobs);
  if (rc != 0) goto out;
  rc = run_jobs(sc, jobs, n_jobs);
  if (rc != 0) goto out;
  size_t total = 0;
  bool limited = true;
  for (size_t j = 0; j < n_jobs; j++) {
    total += ctx.lists[j].n;
    list->device_bytes_used += ctx.lists[j].device_bytes_used;
    list->device_bytes_limit += ctx.lists[j].device_bytes_limit;
    if (ctx.lists[j].device_bytes_limit == 0) limited = false;
  }
  if (!limited) list->device_bytes_limit = 0;
  if (total > 0) {
    list->params = calloc(total, sizeof *list->params);
    if (list->params == NULL) {
      memset(list, 0, sizeof *list);
      rc = local_fail(sc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      goto out;
    }
  }
  /* Move the infos (each owns its own allocation) into the merged list; the shard lists keep
   * nothing. */
  for (size_t j = 0; j < n_jobs; j++) {
    if (ctx.lists[j].n > 0)
      memcpy(list->params + list->n, ctx.lists[j].params, ctx.lists[j].n * sizeof *list->params);
    list->n += ctx.lists[j].n;
    free(ctx.lists[j].params);
    memset(&ctx.lists[j], 0, sizeof ctx.lists[j]);
  }
  if (list->n > 1) qsort(list->params, list->n, sizeof *list->params, cmp_info_name);
out:
  for (size_t j = 0; ctx.lists != NULL && j < sc->n; j++) orthod_param_list_clear(&ctx.lists[j]);
  free(ctx.lists);
  free(order);
  free(jobs);
  return rc;
}

static int health_job(job_t *j) {
  all_ctx_t *c = j->ctx;
  orthod_client_t *cl = j->sc->clients[j->shard];
  int rc = orthod_health_check(cl, c->text, c->serving ? &c->serving[j->shard] : NULL);
  return rc != 0 ? job_error(j, orthod_client_last_error(cl), rc) : 0;
}

/* One job per shard, all in parallel; the status of the lowest failing shard. */
static int run_on_every_shard(orthod_sharded_client_t *sc, int (*fn)(job_t *), all_ctx_t *ctx) {
  size_t *order = NULL, n_jobs = 0;
  job_t *jobs = NULL;
  int rc = make_jobs(sc, NULL, 0, fn, ctx, &order, &jobs, &n_jobs);
  if (rc == 0) rc = run_jobs(sc, jobs, n_jobs);
  free(order);
  free(jobs);
  return rc;
}

int orthod_sharded_health(orthod_sharded_client_t *sc, const char *service, int *serving) {
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (serving != NULL) memset(serving, 0, sc->n * sizeof *serving);
  all_ctx_t ctx = {.text = service, .serving = serving};
  return run_on_every_shard(sc, health_job, &ctx);
}

static int checkpoint_job(job_t *j) {
  all_ctx_t *c = j->ctx;
  orthod_client_t *cl = j->sc->clients[j->shard];
  int rc = orthod_checkpoint(cl, c->checkpoints ? &c->checkpoints[j->shard] : NULL);
  return rc != 0 ? job_error(j, orthod_client_last_error(cl), rc) : 0;
}

int orthod_sharded_checkpoint(orthod_sharded_client_t *sc,
                              orthod_client_checkpoint_info_t *infos) {
  if (sc == NULL) return GRPC_STATUS_INVALID_ARGUMENT;
  if (infos != NULL) memset(infos, 0, sc->n * sizeof *infos);
  all_ctx_t ctx = {.checkpoints = infos};
  return run_on_every_shard(sc, checkpoint_job, &ctx);
}
