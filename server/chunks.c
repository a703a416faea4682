/* server/chunks.c — tensor assembly from chunks: a sorted array of the ranges received (kept
 * exactly as received so that a retried chunk is recognised) over one fp32 buffer. */
#include "chunks.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  uint64_t lo, hi; /* [lo, hi) elements */
} range_t;

struct orthod_chunks {
  uint64_t numel;
  uint64_t covered;
  float *data;     /* numel fp32, allocated on the first chunk */
  range_t *ranges; /* sorted by lo, disjoint */
  size_t n, cap;
  bool taken;      /* the buffer was taken: ranges only */
};

orthod_chunks_t *orthod_chunks_create(uint64_t numel) {
  orthod_chunks_t *c = calloc(1, sizeof *c);
  if (c != NULL) c->numel = numel;
  return c;
}

void orthod_chunks_destroy(orthod_chunks_t *c) {
  if (c == NULL) return;
  free(c->data);
  free(c->ranges);
  free(c);
}

/* Index of the first range with lo >= offset. */
static size_t lower_bound(const orthod_chunks_t *c, uint64_t offset) {
  size_t a = 0, b = c->n;
  while (a < b) {
    size_t m = a + (b - a) / 2;
    if (c->ranges[m].lo < offset) a = m + 1;
    else b = m;
  }
  return a;
}

orthod_chunk_result_t orthod_chunks_add(orthod_chunks_t *c, uint64_t offset, const void *data,
                                        orthod_dtype_t dtype, uint64_t count, uint64_t *lo,
                                        uint64_t *hi) {
  if (count == 0 || offset > c->numel || count > c->numel - offset) return ORTHOD_CHUNK_OUT_OF_RANGE;
  uint64_t end = offset + count;
  size_t at = lower_bound(c, offset);
  /* The same range again: a retry when the data is identical (compared after conversion). */
  if (at < c->n && c->ranges[at].lo == offset && c->ranges[at].hi == end) {
    if (c->taken) return ORTHOD_CHUNK_DUPLICATE; /* the values are gone: the range decides */
    float *tmp = malloc((size_t)count * sizeof(float));
    if (tmp == NULL) return ORTHOD_CHUNK_NOMEM;
    orthod_chunk_result_t r = ORTHOD_CHUNK_DUPLICATE;
    if (orthod_convert(tmp, ORTHOD_DTYPE_F32, data, dtype, (size_t)count) != ORTHOD_OK ||
        memcmp(tmp, c->data + offset, (size_t)count * sizeof(float)) != 0)
      r = ORTHOD_CHUNK_CONFLICT;
    free(tmp);
    return r;
  }
  const range_t *clash = NULL;
  if (at < c->n && c->ranges[at].lo < end) clash = &c->ranges[at];
  else if (at > 0 && c->ranges[at - 1].hi > offset) clash = &c->ranges[at - 1];
  if (clash != NULL) {
    if (lo) *lo = clash->lo;
    if (hi) *hi = clash->hi;
    return ORTHOD_CHUNK_OVERLAP;
  }
  if (c->taken) return ORTHOD_CHUNK_OVERLAP; /* complete by construction */
  if (c->data == NULL) {
    c->data = malloc((size_t)c->numel * sizeof(float));
    if (c->data == NULL) return ORTHOD_CHUNK_NOMEM;
  }
  if (c->n == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 8;
    range_t *r = realloc(c->ranges, cap * sizeof *r);
    if (r == NULL) return ORTHOD_CHUNK_NOMEM;
    c->ranges = r;
    c->cap = cap;
  }
  if (orthod_convert(c->data + offset, ORTHOD_DTYPE_F32, data, dtype, (size_t)count) != ORTHOD_OK)
    return ORTHOD_CHUNK_OUT_OF_RANGE; /* invalid dtype: callers validate it first */
  memmove(c->ranges + at + 1, c->ranges + at, (c->n - at) * sizeof *c->ranges);
  c->ranges[at].lo = offset;
  c->ranges[at].hi = end;
  c->n++;
  c->covered += count;
  return ORTHOD_CHUNK_ADDED;
}

uint64_t orthod_chunks_numel(const orthod_chunks_t *c) { return c->numel; }
uint64_t orthod_chunks_covered(const orthod_chunks_t *c) { return c->covered; }
bool orthod_chunks_complete(const orthod_chunks_t *c) { return c->covered == c->numel; }

uint64_t orthod_chunks_first_gap(const orthod_chunks_t *c) {
  uint64_t next = 0;
  for (size_t i = 0; i < c->n; i++) {
    if (c->ranges[i].lo != next) return next;
    next = c->ranges[i].hi;
  }
  return next;
}

float *orthod_chunks_take(orthod_chunks_t *c) {
  float *d = c->data;
  c->data = NULL;
  c->taken = true;
  return d;
}

bool orthod_chunks_has_range(const orthod_chunks_t *c, uint64_t offset, uint64_t count) {
  size_t at = lower_bound(c, offset);
  return at < c->n && c->ranges[at].lo == offset && c->ranges[at].hi - offset == count;
}

const float *orthod_chunks_data(const orthod_chunks_t *c) { return c->data; }

const char *orthod_chunk_result_name(orthod_chunk_result_t r) {
  switch (r) {
    case ORTHOD_CHUNK_ADDED: return "ADDED";
    case ORTHOD_CHUNK_DUPLICATE: return "DUPLICATE";
    case ORTHOD_CHUNK_OUT_OF_RANGE: return "OUT_OF_RANGE";
    case ORTHOD_CHUNK_OVERLAP: return "OVERLAP";
    case ORTHOD_CHUNK_CONFLICT: return "CONFLICT";
    case ORTHOD_CHUNK_NOMEM: return "NOMEM";
  }
  return "?";
}
