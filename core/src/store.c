/* store.c — the parameter store: a name-sorted array of parameters on one backend.
 * Sorted so List is in name order and lookup is a binary search; registration is rare next to
 * steps, so the O(n) insert does not matter. Memory is admitted before anything is allocated. */
#define _POSIX_C_SOURCE 200809L /* strnlen */
#include <string.h>

#include "orthod/store.h"
#include "orthod_internal.h"

struct orthod_param {
  char name[ORTHOD_NAME_MAX];
  orthod_shape_t shape;
  size_t numel;
  size_t bytes;             /* weights + optimizer state, as accounted */
  float *weights;           /* device, numel fp32 */
  orthod_optim_t *optim;    /* config, state and step counter */
  orthod_store_t *store;
};

struct orthod_store {
  orthod_backend_t *be;     /* not owned */
  size_t memory_limit;      /* bytes; 0 = none */
  size_t memory_used;
  orthod_param_t **params;  /* sorted by name */
  size_t count, cap;
};

orthod_err_t orthod_store_create(orthod_backend_t *be, size_t memory_limit, orthod_store_t **out) {
  if (be == NULL || out == NULL) return orthod__fail(ORTHOD_E_INVAL, "store: NULL argument");
  orthod_store_t *s = calloc(1, sizeof *s);
  if (s == NULL) return orthod__fail(ORTHOD_E_NOMEM, "store: out of host memory");
  s->be = be;
  s->memory_limit = memory_limit;
  *out = s;
  return ORTHOD_OK;
}

static void param_free(orthod_param_t *p) {
  if (p == NULL) return;
  orthod_optim_destroy(p->optim);
  orthod_backend_free(p->store->be, p->weights);
  free(p);
}

void orthod_store_destroy(orthod_store_t *store) {
  if (store == NULL) return;
  for (size_t i = 0; i < store->count; i++) param_free(store->params[i]);
  free(store->params);
  free(store);
}

/* Index of name, or -(insertion point) - 1 when absent. */
static ptrdiff_t find(const orthod_store_t *s, const char *name) {
  size_t lo = 0, hi = s->count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(s->params[mid]->name, name);
    if (c == 0) return (ptrdiff_t)mid;
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return -(ptrdiff_t)lo - 1;
}

static orthod_err_t check_name(const char *name) {
  if (name == NULL || name[0] == '\0')
    return orthod__fail(ORTHOD_E_INVAL, "parameter name is empty");
  size_t len = strnlen(name, ORTHOD_NAME_MAX);
  if (len >= ORTHOD_NAME_MAX)
    return orthod__fail(ORTHOD_E_INVAL, "parameter name is longer than %d bytes",
                        ORTHOD_NAME_MAX - 1);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c < 0x20 || c == 0x7f)
      return orthod__fail(ORTHOD_E_INVAL, "parameter name has a control character at byte %zu", i);
  }
  return ORTHOD_OK;
}

/* Same configuration, compared key by key through the config table (no padding bytes involved). */
static int config_equal(const orthod_optim_config_t *a, const orthod_optim_config_t *b) {
  char va[512], vb[512];
  const char *help;
  for (int i = 0; orthod_optim_config_key(i, &help) != NULL; i++) {
    const char *key = orthod_optim_config_key(i, &help);
    if (orthod_optim_config_get(a, key, va, sizeof va) != ORTHOD_OK) return 0;
    if (orthod_optim_config_get(b, key, vb, sizeof vb) != ORTHOD_OK) return 0;
    if (strcmp(va, vb) != 0) return 0;
  }
  return 1;
}

orthod_err_t orthod_store_register(orthod_store_t *store, const char *name,
                                   const orthod_shape_t *shape, const orthod_optim_config_t *cfg,
                                   orthod_param_t **out) {
  if (store == NULL || shape == NULL || cfg == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "register: NULL argument");
  ORTHOD_TRY(check_name(name));
  ptrdiff_t at = find(store, name);
  if (at >= 0) {
    orthod_param_t *p = store->params[at];
    char have[128], want[128];
    if (!orthod_shape_equal(&p->shape, shape))
      return orthod__fail(ORTHOD_E_EXISTS, "parameter '%s' exists with shape %s, not %s", name,
                          orthod_shape_str(&p->shape, have, sizeof have),
                          orthod_shape_str(shape, want, sizeof want));
    if (!config_equal(orthod_optim_config(p->optim), cfg))
      return orthod__fail(ORTHOD_E_EXISTS,
                          "parameter '%s' exists with a different optimizer configuration", name);
    if (out) *out = p;
    return ORTHOD_OK;
  }
  ORTHOD_TRY(orthod_optim_config_validate(cfg, shape));

  size_t numel = (size_t)orthod_shape_numel(shape), state_bytes = 0, bytes = 0;
  ORTHOD_TRY(orthod_optim_state_bytes(cfg, shape, &state_bytes));
  if (__builtin_mul_overflow(numel, sizeof(float), &bytes) ||
      __builtin_add_overflow(bytes, state_bytes, &bytes))
    return orthod__fail(ORTHOD_E_OVERFLOW, "parameter '%s' is too large to account", name);
  if (store->memory_limit != 0 &&
      (bytes > store->memory_limit || store->memory_used > store->memory_limit - bytes))
    return orthod__fail(ORTHOD_E_NOMEM,
                        "parameter '%s' needs %zu bytes; %zu of the %zu-byte limit are in use",
                        name, bytes, store->memory_used, store->memory_limit);

  if (store->count == store->cap) {
    size_t cap = store->cap ? store->cap * 2 : 16;
    orthod_param_t **grown = realloc(store->params, cap * sizeof *grown);
    if (grown == NULL) return orthod__fail(ORTHOD_E_NOMEM, "store: out of host memory");
    store->params = grown;
    store->cap = cap;
  }
  orthod_param_t *p = calloc(1, sizeof *p);
  if (p == NULL) return orthod__fail(ORTHOD_E_NOMEM, "store: out of host memory");
  memcpy(p->name, name, strlen(name) + 1);
  p->shape = *shape;
  p->numel = numel;
  p->bytes = bytes;
  p->store = store;
  orthod_err_t err = orthod_backend_alloc(store->be, numel, &p->weights);
  if (err == ORTHOD_OK) err = orthod_backend_zero(store->be, p->weights, numel);
  if (err == ORTHOD_OK) err = orthod_optim_create(store->be, cfg, shape, &p->optim);
  if (err != ORTHOD_OK) goto fail;

  size_t pos = (size_t)(-at - 1);
  memmove(store->params + pos + 1, store->params + pos, (store->count - pos) * sizeof *store->params);
  store->params[pos] = p;
  store->count++;
  store->memory_used += bytes;
  if (out) *out = p;
  return ORTHOD_OK;

fail:
  param_free(p);
  return err;
}

orthod_err_t orthod_store_get(orthod_store_t *store, const char *name, orthod_param_t **out) {
  if (store == NULL || name == NULL || out == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "get: NULL argument");
  ptrdiff_t at = find(store, name);
  if (at < 0) return orthod__fail(ORTHOD_E_NOTFOUND, "no parameter named '%s'", name);
  *out = store->params[at];
  return ORTHOD_OK;
}

orthod_err_t orthod_store_drop(orthod_store_t *store, const char *name) {
  if (store == NULL || name == NULL) return orthod__fail(ORTHOD_E_INVAL, "drop: NULL argument");
  ptrdiff_t at = find(store, name);
  if (at < 0) return orthod__fail(ORTHOD_E_NOTFOUND, "no parameter named '%s'", name);
  orthod_param_t *p = store->params[at];
  store->memory_used -= p->bytes;
  memmove(store->params + at, store->params + at + 1,
          (store->count - (size_t)at - 1) * sizeof *store->params);
  store->count--;
  param_free(p);
  return ORTHOD_OK;
}

size_t orthod_store_count(const orthod_store_t *store) { return store->count; }

orthod_param_t *orthod_store_at(orthod_store_t *store, size_t i) {
  return i < store->count ? store->params[i] : NULL;
}

orthod_backend_t *orthod_store_backend(orthod_store_t *store) { return store->be; }

size_t orthod_store_memory_used(const orthod_store_t *store) { return store->memory_used; }
size_t orthod_store_memory_limit(const orthod_store_t *store) { return store->memory_limit; }

const char *orthod_param_name(const orthod_param_t *p) { return p->name; }
const orthod_shape_t *orthod_param_shape(const orthod_param_t *p) { return &p->shape; }
const orthod_optim_config_t *orthod_param_config(const orthod_param_t *p) {
  return orthod_optim_config(p->optim);
}
int64_t orthod_param_step(const orthod_param_t *p) { return orthod_optim_step_count(p->optim); }
size_t orthod_param_bytes(const orthod_param_t *p) { return p->bytes; }
float *orthod_param_weights(orthod_param_t *p) { return p->weights; }
orthod_optim_t *orthod_param_optim(orthod_param_t *p) { return p->optim; }

static orthod_err_t check_range(const orthod_param_t *p, size_t offset, size_t n, const char *what) {
  if (offset > p->numel || n > p->numel - offset)
    return orthod__fail(ORTHOD_E_SHAPE,
                        "%s of elements [%zu, %zu) is outside parameter '%s' of %zu elements",
                        what, offset, offset + n, p->name, p->numel);
  return ORTHOD_OK;
}

orthod_err_t orthod_param_write(orthod_param_t *p, size_t offset, const void *src,
                                orthod_dtype_t dtype, size_t n) {
  if (p == NULL || (src == NULL && n > 0)) return orthod__fail(ORTHOD_E_INVAL, "write: NULL argument");
  ORTHOD_TRY(check_range(p, offset, n, "write"));
  ORTHOD_TRY(orthod_backend_upload(p->store->be, p->weights + offset, src, dtype, n));
  return orthod_backend_sync(p->store->be);
}

orthod_err_t orthod_param_read(orthod_param_t *p, size_t offset, void *dst, orthod_dtype_t dtype,
                               size_t n) {
  if (p == NULL || (dst == NULL && n > 0)) return orthod__fail(ORTHOD_E_INVAL, "read: NULL argument");
  ORTHOD_TRY(check_range(p, offset, n, "read"));
  ORTHOD_TRY(orthod_backend_download(p->store->be, dst, dtype, p->weights + offset, n));
  return orthod_backend_sync(p->store->be);
}

orthod_err_t orthod_param_step_host(orthod_param_t *p, const void *grad, orthod_dtype_t dtype,
                                    double lr) {
  if (p == NULL || grad == NULL) return orthod__fail(ORTHOD_E_INVAL, "step: NULL argument");
  orthod_backend_t *be = p->store->be;
  size_t mark = orthod_backend_scratch_mark(be), bad = 0;
  float *g = NULL;
  orthod_err_t err = orthod_backend_scratch(be, p->numel, &g);
  if (err == ORTHOD_OK) err = orthod_backend_upload(be, g, grad, dtype, p->numel);
  if (err == ORTHOD_OK) err = orthod_backend_count_nonfinite(be, g, p->numel, &bad);
  if (err == ORTHOD_OK && bad != 0)
    err = orthod__fail(ORTHOD_E_NONFINITE,
                       "gradient of '%s' has %zu non-finite values; nothing was applied", p->name,
                       bad);
  if (err == ORTHOD_OK)
    err = orthod_optim_step(p->optim, p->weights, g, lr < 0 ? orthod_param_config(p)->lr : lr);
  if (err == ORTHOD_OK) err = orthod_backend_sync(be);
  orthod_backend_scratch_reset(be, mark);
  return err;
}

orthod_err_t orthod_param_reconfigure(orthod_param_t *p, const orthod_optim_config_t *cfg) {
  if (p == NULL || cfg == NULL) return orthod__fail(ORTHOD_E_INVAL, "reconfigure: NULL argument");
  ORTHOD_TRY(orthod_optim_config_validate(cfg, &p->shape));
  return orthod_optim_reconfigure(p->optim, cfg);
}
