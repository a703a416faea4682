/* backend.c — the public orthod_backend_* calls: argument validation, memory accounting with a
 * limit, and the scratch arena, in front of a backend's function table (backend_impl.h).
 * Sizes live in a host-side hash map keyed by pointer, because a device allocation cannot carry
 * a header that the host could read. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backend_impl.h"

/* ---- state ---------------------------------------------------------------------------------- */

typedef struct {
  void *p;      /* NULL = empty slot */
  size_t bytes; /* size requested from the backend */
} alloc_slot;

typedef struct {
  char *ptr;   /* backend memory, aligned by the backend (>= 64 bytes) */
  size_t base; /* logical arena offset of the first byte */
  size_t cap;  /* bytes, multiple of SCRATCH_ALIGN */
} scratch_block;

struct orthod_backend {
  const orthod_backend_i *iface;
  void *ctx;
  size_t used;  /* bytes held through the iface (user allocations + scratch blocks) */
  size_t limit; /* 0 = no limit */
  /* open-addressing map pointer -> size; cap is a power of two, load kept <= 1/2 */
  alloc_slot *slots;
  size_t slots_cap, slots_count;
  /* scratch arena: blocks in logical order; positions are logical byte offsets */
  scratch_block *blocks;
  size_t nblocks, blocks_cap;
  size_t pos;         /* next free logical offset */
  size_t cur;         /* block holding pos (valid when nblocks > 0) */
  size_t window_hw;   /* highest pos seen in the current trim window */
  unsigned resets0;   /* resets to 0 in the current trim window */
};

#define SCRATCH_ALIGN 64u
#define SCRATCH_MIN_BLOCK ((size_t)256 * 1024)
/* Every this many resets to mark 0, cached blocks beyond twice the window's high-water mark are
 * released; a window (rather than the last cycle) avoids thrashing when big and small parameters
 * alternate. */
#define SCRATCH_TRIM_WINDOW 64u

/* ---- pointer -> size map -------------------------------------------------------------------- */

static size_t slot_hash(const void *p, size_t cap) {
  uint64_t h = (uint64_t)(uintptr_t)p;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return (size_t)h & (cap - 1);
}

static orthod_err_t map_grow(orthod_backend_t *be) {
  size_t ncap = be->slots_cap ? be->slots_cap * 2 : 64;
  alloc_slot *ns = calloc(ncap, sizeof *ns);
  if (ns == NULL) return orthod__fail(ORTHOD_E_NOMEM, "backend: cannot grow the allocation map");
  for (size_t i = 0; i < be->slots_cap; i++) {
    if (be->slots[i].p == NULL) continue;
    size_t j = slot_hash(be->slots[i].p, ncap);
    while (ns[j].p != NULL) j = (j + 1) & (ncap - 1);
    ns[j] = be->slots[i];
  }
  free(be->slots);
  be->slots = ns;
  be->slots_cap = ncap;
  return ORTHOD_OK;
}

static orthod_err_t map_put(orthod_backend_t *be, void *p, size_t bytes) {
  if ((be->slots_count + 1) * 2 > be->slots_cap) ORTHOD_TRY(map_grow(be));
  size_t j = slot_hash(p, be->slots_cap);
  while (be->slots[j].p != NULL) j = (j + 1) & (be->slots_cap - 1);
  be->slots[j].p = p;
  be->slots[j].bytes = bytes;
  be->slots_count++;
  return ORTHOD_OK;
}

/* Remove p; returns false when p is unknown. Backward-shift deletion keeps probe chains intact
 * without tombstones. */
static bool map_take(orthod_backend_t *be, const void *p, size_t *bytes) {
  if (be->slots_cap == 0) return false;
  size_t mask = be->slots_cap - 1, j = slot_hash(p, be->slots_cap);
  while (be->slots[j].p != p) {
    if (be->slots[j].p == NULL) return false;
    j = (j + 1) & mask;
  }
  *bytes = be->slots[j].bytes;
  size_t hole = j;
  for (size_t k = (j + 1) & mask; be->slots[k].p != NULL; k = (k + 1) & mask) {
    size_t home = slot_hash(be->slots[k].p, be->slots_cap);
    /* Move k into the hole unless its home lies cyclically in (hole, k]. */
    bool stays = (hole <= k) ? (home > hole && home <= k) : (home > hole || home <= k);
    if (!stays) {
      be->slots[hole] = be->slots[k];
      hole = k;
    }
  }
  be->slots[hole].p = NULL;
  be->slots[hole].bytes = 0;
  be->slots_count--;
  return true;
}

/* ---- accounted allocation ------------------------------------------------------------------- */

static orthod_err_t raw_alloc(orthod_backend_t *be, size_t bytes, void **out) {
  *out = NULL;
  if (be->limit != 0 && (bytes > be->limit || be->used > be->limit - bytes))
    return orthod__fail(ORTHOD_E_NOMEM,
                        "%s backend: allocating %zu bytes would use %zu bytes, limit %zu",
                        be->iface->name, bytes, be->used + bytes, be->limit);
  void *p = NULL;
  orthod_err_t err = be->iface->alloc(be->ctx, bytes, &p);
  if (err != ORTHOD_OK) return err;
  if (p == NULL) return orthod__fail(ORTHOD_E_BACKEND, "%s backend: alloc returned NULL", be->iface->name);
  err = map_put(be, p, bytes);
  if (err != ORTHOD_OK) {
    be->iface->free(be->ctx, p);
    return err;
  }
  be->used += bytes;
  *out = p;
  return ORTHOD_OK;
}

static void raw_free(orthod_backend_t *be, void *p) {
  size_t bytes = 0;
  if (!map_take(be, p, &bytes)) {
    /* Not ours or freed twice: handing it to the backend would corrupt its heap. */
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "%s backend: free of unknown pointer %p ignored", be->iface->name, p);
    return;
  }
  be->used -= bytes;
  be->iface->free(be->ctx, p);
}

/* ---- construction --------------------------------------------------------------------------- */

orthod_err_t orthod__backend_new(const orthod_backend_i *iface, void *ctx, orthod_backend_t **out) {
  if (out != NULL) *out = NULL;
  if (iface == NULL || out == NULL) {
    if (iface != NULL && iface->destroy != NULL) iface->destroy(ctx);
    return orthod__fail(ORTHOD_E_INVAL, "backend_new: NULL table or output");
  }
  orthod_backend_t *be = calloc(1, sizeof *be);
  if (be == NULL) {
    if (iface->destroy != NULL) iface->destroy(ctx);
    return orthod__fail(ORTHOD_E_NOMEM, "backend_new: out of host memory");
  }
  be->iface = iface;
  be->ctx = ctx;
  *out = be;
  return ORTHOD_OK;
}

static void scratch_release_all(orthod_backend_t *be) {
  for (size_t i = 0; i < be->nblocks; i++) raw_free(be, be->blocks[i].ptr);
  be->nblocks = 0;
  be->cur = 0;
  be->pos = 0;
}

void orthod_backend_destroy(orthod_backend_t *be) {
  if (be == NULL) return;
  scratch_release_all(be);
  free(be->blocks);
  if (be->slots_count != 0) {
    /* The caller forgot some frees (its bug); release them so the device is not left holding. */
    ORTHOD_LOG(ORTHOD_LOG_WARN, "%s backend destroyed with %zu live allocations (%zu bytes)",
               be->iface->name, be->slots_count, be->used);
    for (size_t i = 0; i < be->slots_cap; i++)
      if (be->slots[i].p != NULL) be->iface->free(be->ctx, be->slots[i].p);
  }
  free(be->slots);
  if (be->iface->destroy != NULL) be->iface->destroy(be->ctx);
  free(be);
}

const char *orthod_backend_name(const orthod_backend_t *be) {
  return be == NULL ? "(null)" : be->iface->name;
}

/* ---- memory --------------------------------------------------------------------------------- */

#define CHECK_BE(be, op)                                                         \
  do {                                                                           \
    if ((be) == NULL) return orthod__fail(ORTHOD_E_INVAL, op ": backend is NULL"); \
  } while (0)

orthod_err_t orthod_backend_alloc(orthod_backend_t *be, size_t n_floats, float **out) {
  CHECK_BE(be, "alloc");
  if (out == NULL) return orthod__fail(ORTHOD_E_INVAL, "alloc: output pointer is NULL");
  *out = NULL;
  if (n_floats == 0) return orthod__fail(ORTHOD_E_INVAL, "alloc: 0 floats requested");
  if (n_floats > SIZE_MAX / sizeof(float) - SCRATCH_ALIGN)
    return orthod__fail(ORTHOD_E_OVERFLOW, "alloc: %zu floats overflow a byte count", n_floats);
  void *p = NULL;
  ORTHOD_TRY(raw_alloc(be, n_floats * sizeof(float), &p));
  *out = p;
  return ORTHOD_OK;
}

void orthod_backend_free(orthod_backend_t *be, float *p) {
  if (be == NULL || p == NULL) return;
  raw_free(be, p);
}

void orthod_backend_set_memory_limit(orthod_backend_t *be, size_t bytes) {
  if (be != NULL) be->limit = bytes;
}

size_t orthod_backend_memory_used(const orthod_backend_t *be) { return be ? be->used : 0; }

size_t orthod_backend_memory_limit(const orthod_backend_t *be) { return be ? be->limit : 0; }

/* ---- scratch arena -------------------------------------------------------------------------- */

size_t orthod_backend_scratch_mark(orthod_backend_t *be) { return be ? be->pos : 0; }

static void scratch_drop_after(orthod_backend_t *be, size_t keep) {
  while (be->nblocks > keep) {
    be->nblocks--;
    raw_free(be, be->blocks[be->nblocks].ptr);
  }
}

static orthod_err_t scratch_new_block(orthod_backend_t *be, size_t bytes) {
  if (be->nblocks == be->blocks_cap) {
    size_t ncap = be->blocks_cap ? be->blocks_cap * 2 : 8;
    scratch_block *nb = realloc(be->blocks, ncap * sizeof *nb);
    if (nb == NULL) return orthod__fail(ORTHOD_E_NOMEM, "scratch: cannot grow the block list");
    be->blocks = nb;
    be->blocks_cap = ncap;
  }
  size_t cap = bytes < SCRATCH_MIN_BLOCK ? SCRATCH_MIN_BLOCK : bytes;
  /* The first block of a cycle is sized for the whole previous cycle, so that a steady pattern
   * ends up in one block. */
  if (be->nblocks == 0 && be->window_hw > cap) cap = be->window_hw;
  void *p = NULL;
  orthod_err_t err = raw_alloc(be, cap, &p);
  if (err != ORTHOD_OK && cap > bytes) {
    cap = bytes; /* the generous size did not fit (limit or device): ask for what is needed */
    err = raw_alloc(be, cap, &p);
  }
  if (err != ORTHOD_OK) return err;
  size_t base = 0;
  if (be->nblocks > 0) base = be->blocks[be->nblocks - 1].base + be->blocks[be->nblocks - 1].cap;
  be->blocks[be->nblocks] = (scratch_block){.ptr = p, .base = base, .cap = cap};
  be->cur = be->nblocks;
  be->nblocks++;
  be->pos = base;
  return ORTHOD_OK;
}

orthod_err_t orthod_backend_scratch(orthod_backend_t *be, size_t n_floats, float **out) {
  CHECK_BE(be, "scratch");
  if (out == NULL) return orthod__fail(ORTHOD_E_INVAL, "scratch: output pointer is NULL");
  *out = NULL;
  if (n_floats == 0) return orthod__fail(ORTHOD_E_INVAL, "scratch: 0 floats requested");
  if (n_floats > (SIZE_MAX / 2) / sizeof(float))
    return orthod__fail(ORTHOD_E_OVERFLOW, "scratch: %zu floats overflow a byte count", n_floats);
  size_t bytes = (n_floats * sizeof(float) + SCRATCH_ALIGN - 1) & ~(size_t)(SCRATCH_ALIGN - 1);
  for (;;) {
    if (be->nblocks > 0) {
      scratch_block *b = &be->blocks[be->cur];
      size_t off = be->pos - b->base; /* a multiple of SCRATCH_ALIGN: all sizes are */
      if (off <= b->cap && b->cap - off >= bytes) {
        *out = (float *)(void *)(b->ptr + off);
        be->pos += bytes;
        if (be->pos > be->window_hw) be->window_hw = be->pos;
        return ORTHOD_OK;
      }
      if (be->cur + 1 < be->nblocks && be->blocks[be->cur + 1].cap >= bytes) {
        be->cur++;
        be->pos = be->blocks[be->cur].base;
        continue;
      }
      /* The cached blocks after this one are unused (pos is here) and too small. */
      scratch_drop_after(be, be->cur + 1);
    }
    ORTHOD_TRY(scratch_new_block(be, bytes));
  }
}

void orthod_backend_scratch_reset(orthod_backend_t *be, size_t mark) {
  if (be == NULL || mark > be->pos) return; /* a stale mark past the current position: nothing to release */
  be->pos = mark;
  if (mark == 0) {
    size_t total = 0;
    for (size_t i = 0; i < be->nblocks; i++) total += be->blocks[i].cap;
    if (be->nblocks > 1) {
      /* Consolidate: the next cycle gets one block sized to the high-water mark. */
      scratch_release_all(be);
    } else if (++be->resets0 >= SCRATCH_TRIM_WINDOW) {
      if (total > 2 * be->window_hw) scratch_release_all(be);
      be->resets0 = 0;
      be->window_hw = 0;
    }
    be->cur = 0;
    return;
  }
  size_t i = be->nblocks;
  while (i > 0 && be->blocks[i - 1].base > mark) i--;
  be->cur = i > 0 ? i - 1 : 0;
}

/* ---- validation helpers --------------------------------------------------------------------- */

/* Elements spanned by `batch` row-major matrices of rows x cols with leading dimension ld at
 * element stride `stride`; -1 on overflow. */
static int64_t span_of(int64_t batch, int64_t stride, int64_t rows, int64_t cols, int64_t ld) {
  int64_t a = 0, b = 0, s = 0;
  if (__builtin_mul_overflow(batch - 1, stride, &a) || __builtin_mul_overflow(rows - 1, ld, &b) ||
      __builtin_add_overflow(a, b, &s) || __builtin_add_overflow(s, cols, &s))
    return -1;
  return s;
}

static bool ranges_overlap(const float *a, int64_t na, const float *b, int64_t nb) {
  uintptr_t a0 = (uintptr_t)a, a1 = a0 + (uintptr_t)na * sizeof(float);
  uintptr_t b0 = (uintptr_t)b, b1 = b0 + (uintptr_t)nb * sizeof(float);
  return a0 < b1 && b0 < a1;
}

static bool valid_precision(orthod_precision_t p) {
  return p == ORTHOD_PREC_HIGHEST || p == ORTHOD_PREC_HIGH || p == ORTHOD_PREC_MEDIUM;
}

/* One strided operand: row-major rows x cols, leading dim ld, `batch` copies at `stride`. */
static orthod_err_t check_operand(const char *op, const char *name, const float *p, int64_t rows,
                                  int64_t cols, int64_t ld, int64_t stride, int64_t batch,
                                  bool written, int64_t *span) {
  if (p == NULL) return orthod__fail(ORTHOD_E_INVAL, "%s: %s is NULL", op, name);
  if (ld < cols)
    return orthod__fail(ORTHOD_E_SHAPE, "%s: ld%s %lld < %lld, the row length of the stored %s (%lldx%lld)",
                        op, name, (long long)ld, (long long)cols, name, (long long)rows,
                        (long long)cols);
  if (batch > 1) {
    if (stride < 0)
      return orthod__fail(ORTHOD_E_SHAPE, "%s: stride_%s %lld is negative", op, name,
                          (long long)stride);
    int64_t one = span_of(1, 0, rows, cols, ld);
    if (written && stride < one)
      return orthod__fail(ORTHOD_E_SHAPE,
                          "%s: stride_%s %lld < %lld, the extent of one output matrix (batch slices would overlap)",
                          op, name, (long long)stride, (long long)one);
  }
  *span = span_of(batch, batch > 1 ? stride : 0, rows, cols, ld);
  if (*span < 0)
    return orthod__fail(ORTHOD_E_OVERFLOW, "%s: the extent of %s overflows int64", op, name);
  return ORTHOD_OK;
}

/* ---- transfers ------------------------------------------------------------------------------ */

orthod_err_t orthod_backend_upload(orthod_backend_t *be, float *dst, const void *src,
                                   orthod_dtype_t src_dtype, size_t n) {
  CHECK_BE(be, "upload");
  if (orthod_dtype_size(src_dtype) == 0)
    return orthod__fail(ORTHOD_E_DTYPE, "upload: invalid source dtype %d", (int)src_dtype);
  if (n == 0) return ORTHOD_OK;
  if (dst == NULL || src == NULL) return orthod__fail(ORTHOD_E_INVAL, "upload: NULL buffer");
  return be->iface->upload(be->ctx, dst, src, src_dtype, n);
}

orthod_err_t orthod_backend_download(orthod_backend_t *be, void *dst, orthod_dtype_t dst_dtype,
                                     const float *src, size_t n) {
  CHECK_BE(be, "download");
  if (orthod_dtype_size(dst_dtype) == 0)
    return orthod__fail(ORTHOD_E_DTYPE, "download: invalid destination dtype %d", (int)dst_dtype);
  if (n == 0) return ORTHOD_OK;
  if (dst == NULL || src == NULL) return orthod__fail(ORTHOD_E_INVAL, "download: NULL buffer");
  return be->iface->download(be->ctx, dst, dst_dtype, src, n);
}

orthod_err_t orthod_backend_sync(orthod_backend_t *be) {
  CHECK_BE(be, "sync");
  return be->iface->sync(be->ctx);
}

orthod_err_t orthod_backend_read(orthod_backend_t *be, float *host, const float *src, size_t n) {
  CHECK_BE(be, "read");
  if (n == 0) return ORTHOD_OK;
  if (host == NULL || src == NULL) return orthod__fail(ORTHOD_E_INVAL, "read: NULL buffer");
  return be->iface->read(be->ctx, host, src, n);
}

/* ---- BLAS-like ------------------------------------------------------------------------------ */

orthod_err_t orthod_backend_gemm(orthod_backend_t *be, const orthod_gemm_t *g) {
  CHECK_BE(be, "gemm");
  if (g == NULL) return orthod__fail(ORTHOD_E_INVAL, "gemm: descriptor is NULL");
  if (g->m < 1 || g->n < 1 || g->k < 1)
    return orthod__fail(ORTHOD_E_SHAPE, "gemm: m=%lld n=%lld k=%lld; every dimension must be >= 1",
                        (long long)g->m, (long long)g->n, (long long)g->k);
  if (g->batch < 1)
    return orthod__fail(ORTHOD_E_SHAPE, "gemm: batch %lld < 1", (long long)g->batch);
  if (!valid_precision(g->precision))
    return orthod__fail(ORTHOD_E_INVAL, "gemm: invalid precision %d", (int)g->precision);
  int64_t sa = 0, sb = 0, sc = 0;
  /* Stored A is k x m when transposed, else m x k; stored B is n x k or k x n. */
  ORTHOD_TRY(check_operand("gemm", "a", g->a, g->trans_a ? g->k : g->m, g->trans_a ? g->m : g->k,
                           g->lda, g->stride_a, g->batch, false, &sa));
  ORTHOD_TRY(check_operand("gemm", "b", g->b, g->trans_b ? g->n : g->k, g->trans_b ? g->k : g->n,
                           g->ldb, g->stride_b, g->batch, false, &sb));
  ORTHOD_TRY(check_operand("gemm", "c", g->c, g->m, g->n, g->ldc, g->stride_c, g->batch, true, &sc));
  if (ranges_overlap(g->c, sc, g->a, sa) || ranges_overlap(g->c, sc, g->b, sb))
    return orthod__fail(ORTHOD_E_INVAL, "gemm: C overlaps A or B");
  return be->iface->gemm(be->ctx, g);
}

orthod_err_t orthod_backend_syrk(orthod_backend_t *be, const orthod_syrk_t *s) {
  CHECK_BE(be, "syrk");
  if (s == NULL) return orthod__fail(ORTHOD_E_INVAL, "syrk: descriptor is NULL");
  if (s->n < 1 || s->k < 1)
    return orthod__fail(ORTHOD_E_SHAPE, "syrk: n=%lld k=%lld; every dimension must be >= 1",
                        (long long)s->n, (long long)s->k);
  if (s->batch < 1)
    return orthod__fail(ORTHOD_E_SHAPE, "syrk: batch %lld < 1", (long long)s->batch);
  if (!valid_precision(s->precision))
    return orthod__fail(ORTHOD_E_INVAL, "syrk: invalid precision %d", (int)s->precision);
  int64_t sa = 0, sc = 0;
  ORTHOD_TRY(check_operand("syrk", "a", s->a, s->trans ? s->k : s->n, s->trans ? s->n : s->k,
                           s->lda, s->stride_a, s->batch, false, &sa));
  ORTHOD_TRY(check_operand("syrk", "c", s->c, s->n, s->n, s->ldc, s->stride_c, s->batch, true, &sc));
  if (ranges_overlap(s->c, sc, s->a, sa)) return orthod__fail(ORTHOD_E_INVAL, "syrk: C overlaps A");
  return be->iface->syrk(be->ctx, s);
}

/* ---- elementwise and reductions ------------------------------------------------------------- */

#define CHECK_PTR(p, op, name) \
  do {                         \
    if ((p) == NULL) return orthod__fail(ORTHOD_E_INVAL, op ": " name " is NULL"); \
  } while (0)

orthod_err_t orthod_backend_copy(orthod_backend_t *be, float *dst, const float *src, size_t n) {
  CHECK_BE(be, "copy");
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(dst, "copy", "dst");
  CHECK_PTR(src, "copy", "src");
  if (dst == src) return ORTHOD_OK;
  return be->iface->copy(be->ctx, dst, src, n);
}

orthod_err_t orthod_backend_zero(orthod_backend_t *be, float *x, size_t n) {
  CHECK_BE(be, "zero");
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(x, "zero", "x");
  return be->iface->zero(be->ctx, x, n);
}

orthod_err_t orthod_backend_axpy(orthod_backend_t *be, float *y, float a, const float *x, size_t n) {
  CHECK_BE(be, "axpy");
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(y, "axpy", "y");
  CHECK_PTR(x, "axpy", "x");
  return be->iface->axpy(be->ctx, y, a, x, n);
}

orthod_err_t orthod_backend_scale(orthod_backend_t *be, float *x, float s, size_t n) {
  CHECK_BE(be, "scale");
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(x, "scale", "x");
  return be->iface->scale(be->ctx, x, s, n);
}

orthod_err_t orthod_backend_lerp(orthod_backend_t *be, float *out, const float *s, const float *e,
                                 float w, size_t n) {
  CHECK_BE(be, "lerp");
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(out, "lerp", "out");
  CHECK_PTR(s, "lerp", "s");
  CHECK_PTR(e, "lerp", "e");
  return be->iface->lerp(be->ctx, out, s, e, w, n);
}

orthod_err_t orthod_backend_round_bf16(orthod_backend_t *be, float *x, size_t n) {
  CHECK_BE(be, "round_bf16");
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(x, "round_bf16", "x");
  return be->iface->round_bf16(be->ctx, x, n);
}

orthod_err_t orthod_backend_transpose(orthod_backend_t *be, float *out, const float *in,
                                      int64_t batch, int64_t rows, int64_t cols) {
  CHECK_BE(be, "transpose");
  CHECK_PTR(out, "transpose", "out");
  CHECK_PTR(in, "transpose", "in");
  if (batch < 1 || rows < 1 || cols < 1)
    return orthod__fail(ORTHOD_E_SHAPE, "transpose: batch=%lld rows=%lld cols=%lld; each must be >= 1",
                        (long long)batch, (long long)rows, (long long)cols);
  int64_t total = 0;
  if (__builtin_mul_overflow(batch, rows, &total) || __builtin_mul_overflow(total, cols, &total))
    return orthod__fail(ORTHOD_E_OVERFLOW, "transpose: %lldx%lldx%lld elements overflow int64",
                        (long long)batch, (long long)rows, (long long)cols);
  if (ranges_overlap(out, total, in, total))
    return orthod__fail(ORTHOD_E_INVAL, "transpose: out overlaps in");
  return be->iface->transpose(be->ctx, out, in, batch, rows, cols);
}

static orthod_err_t check_slices(const char *op, int64_t batch, size_t n) {
  if (batch < 1 || n == 0)
    return orthod__fail(ORTHOD_E_SHAPE, "%s: batch=%lld n=%zu; both must be >= 1", op,
                        (long long)batch, n);
  if ((uint64_t)batch > SIZE_MAX / n)
    return orthod__fail(ORTHOD_E_OVERFLOW, "%s: %lld slices of %zu elements overflow", op,
                        (long long)batch, n);
  return ORTHOD_OK;
}

orthod_err_t orthod_backend_normalize(orthod_backend_t *be, float *x, int64_t batch, size_t n,
                                      float eps, bool in_double) {
  CHECK_BE(be, "normalize");
  CHECK_PTR(x, "normalize", "x");
  ORTHOD_TRY(check_slices("normalize", batch, n));
  if (!in_double && !(eps >= 0.0f))
    return orthod__fail(ORTHOD_E_INVAL, "normalize: eps %g must be >= 0", (double)eps);
  return be->iface->normalize(be->ctx, x, batch, n, eps, in_double);
}

orthod_err_t orthod_backend_norm(orthod_backend_t *be, float *out, const float *x, int64_t batch,
                                 size_t n) {
  CHECK_BE(be, "norm");
  CHECK_PTR(out, "norm", "out");
  CHECK_PTR(x, "norm", "x");
  ORTHOD_TRY(check_slices("norm", batch, n));
  return be->iface->norm(be->ctx, out, x, batch, n);
}

orthod_err_t orthod_backend_dot(orthod_backend_t *be, float *out, const float *x, const float *y,
                                size_t n) {
  CHECK_BE(be, "dot");
  CHECK_PTR(out, "dot", "out");
  CHECK_PTR(x, "dot", "x");
  CHECK_PTR(y, "dot", "y");
  if (n == 0) return orthod__fail(ORTHOD_E_SHAPE, "dot: n is 0");
  return be->iface->dot(be->ctx, out, x, y, n);
}

orthod_err_t orthod_backend_scale_by(orthod_backend_t *be, float *x, const float *s, size_t n) {
  CHECK_BE(be, "scale_by");
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(x, "scale_by", "x");
  CHECK_PTR(s, "scale_by", "s");
  return be->iface->scale_by(be->ctx, x, s, n);
}

orthod_err_t orthod_backend_count_nonfinite(orthod_backend_t *be, const float *x, size_t n,
                                            size_t *count_host) {
  CHECK_BE(be, "count_nonfinite");
  CHECK_PTR(count_host, "count_nonfinite", "count_host");
  *count_host = 0;
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(x, "count_nonfinite", "x");
  return be->iface->count_nonfinite(be->ctx, x, n, count_host);
}

static orthod_err_t check_eps(const char *op, float eps) {
  if (!(eps >= 0.0f) || isinf(eps))
    return orthod__fail(ORTHOD_E_INVAL, "%s: eps %g must be finite and >= 0", op, (double)eps);
  return ORTHOD_OK;
}

orthod_err_t orthod_backend_hyperball(orthod_backend_t *be, float *x, size_t n, float radius,
                                      float eps) {
  CHECK_BE(be, "hyperball");
  ORTHOD_TRY(check_eps("hyperball", eps));
  if (!isfinite(radius))
    return orthod__fail(ORTHOD_E_INVAL, "hyperball: radius %g is not finite", (double)radius);
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(x, "hyperball", "x");
  return be->iface->hyperball(be->ctx, x, n, radius, eps);
}

orthod_err_t orthod_backend_radial_brake(orthod_backend_t *be, float *p, size_t n, const float *n0,
                                         float outward, float inward, float eps) {
  CHECK_BE(be, "radial_brake");
  ORTHOD_TRY(check_eps("radial_brake", eps));
  if (!isfinite(outward) || !isfinite(inward))
    return orthod__fail(ORTHOD_E_INVAL, "radial_brake: scales %g, %g must be finite",
                        (double)outward, (double)inward);
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(p, "radial_brake", "p");
  CHECK_PTR(n0, "radial_brake", "n0");
  return be->iface->radial_brake(be->ctx, p, n, n0, outward, inward, eps);
}

orthod_err_t orthod_backend_relative_update(orthod_backend_t *be, float *u, const float *p,
                                            size_t n, float eps) {
  CHECK_BE(be, "relative_update");
  ORTHOD_TRY(check_eps("relative_update", eps));
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(u, "relative_update", "u");
  CHECK_PTR(p, "relative_update", "p");
  return be->iface->relative_update(be->ctx, u, p, n, eps);
}

orthod_err_t orthod_backend_adamuon(orthod_backend_t *be, float *o, float *v, size_t n, float w,
                                    float eps) {
  CHECK_BE(be, "adamuon");
  ORTHOD_TRY(check_eps("adamuon", eps));
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(o, "adamuon", "o");
  CHECK_PTR(v, "adamuon", "v");
  return be->iface->adamuon(be->ctx, o, v, n, w, eps);
}

orthod_err_t orthod_backend_normuon(orthod_backend_t *be, float *o, float *v, int64_t m, int64_t n,
                                    bool per_row, float w, float eps) {
  CHECK_BE(be, "normuon");
  ORTHOD_TRY(check_eps("normuon", eps));
  CHECK_PTR(o, "normuon", "o");
  CHECK_PTR(v, "normuon", "v");
  int64_t total = 0;
  if (m < 1 || n < 1)
    return orthod__fail(ORTHOD_E_SHAPE, "normuon: %lldx%lld; both dimensions must be >= 1",
                        (long long)m, (long long)n);
  if (__builtin_mul_overflow(m, n, &total))
    return orthod__fail(ORTHOD_E_OVERFLOW, "normuon: %lldx%lld overflows", (long long)m, (long long)n);
  return be->iface->normuon(be->ctx, o, v, m, n, per_row, w, eps);
}

orthod_err_t orthod_backend_namo_moment(orthod_backend_t *be, float *v, const float *g, size_t n,
                                        float w) {
  CHECK_BE(be, "namo_moment");
  CHECK_PTR(v, "namo_moment", "v");
  CHECK_PTR(g, "namo_moment", "g");
  if (n == 0) return orthod__fail(ORTHOD_E_SHAPE, "namo_moment: n is 0");
  return be->iface->namo_moment(be->ctx, v, g, n, w);
}

orthod_err_t orthod_backend_namo_scale(orthod_backend_t *be, float *o, const float *u,
                                       const float *v, size_t n, float eps) {
  CHECK_BE(be, "namo_scale");
  ORTHOD_TRY(check_eps("namo_scale", eps));
  CHECK_PTR(o, "namo_scale", "o");
  CHECK_PTR(u, "namo_scale", "u");
  CHECK_PTR(v, "namo_scale", "v");
  if (n == 0) return orthod__fail(ORTHOD_E_SHAPE, "namo_scale: n is 0");
  return be->iface->namo_scale(be->ctx, o, u, v, n, eps);
}

orthod_err_t orthod_backend_adamw(orthod_backend_t *be, float *p, const float *g, float *m,
                                  float *v, float *vmax, size_t n, const orthod_adamw_args_t *args) {
  CHECK_BE(be, "adamw");
  CHECK_PTR(args, "adamw", "args");
  /* The ranges torch.optim.AdamW's constructor enforces. */
  if (!(args->lr >= 0.0) || !isfinite(args->lr))
    return orthod__fail(ORTHOD_E_INVAL, "adamw: invalid learning rate %g", args->lr);
  if (!(args->eps >= 0.0) || !isfinite(args->eps))
    return orthod__fail(ORTHOD_E_INVAL, "adamw: invalid epsilon %g", args->eps);
  if (!(args->beta1 >= 0.0 && args->beta1 < 1.0))
    return orthod__fail(ORTHOD_E_INVAL, "adamw: invalid beta1 %g (must be in [0, 1))", args->beta1);
  if (!(args->beta2 >= 0.0 && args->beta2 < 1.0))
    return orthod__fail(ORTHOD_E_INVAL, "adamw: invalid beta2 %g (must be in [0, 1))", args->beta2);
  if (!(args->weight_decay >= 0.0) || !isfinite(args->weight_decay))
    return orthod__fail(ORTHOD_E_INVAL, "adamw: invalid weight_decay %g", args->weight_decay);
  if (args->step < 1)
    return orthod__fail(ORTHOD_E_INVAL, "adamw: step %lld < 1 (steps are 1-based)",
                        (long long)args->step);
  if (n == 0) return ORTHOD_OK;
  CHECK_PTR(p, "adamw", "p");
  CHECK_PTR(g, "adamw", "g");
  CHECK_PTR(m, "adamw", "m");
  CHECK_PTR(v, "adamw", "v");
  if (args->amsgrad && vmax == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "adamw: amsgrad needs the vmax buffer");
  return be->iface->adamw(be->ctx, p, g, m, v, vmax, n, args);
}

orthod_err_t orthod_backend_polar_svd(orthod_backend_t *be, float *out, float *nuclear,
                                      const float *a, int64_t m, int64_t n) {
  CHECK_BE(be, "polar_svd");
  CHECK_PTR(out, "polar_svd", "out");
  CHECK_PTR(a, "polar_svd", "a");
  int64_t total = 0;
  if (m < 1 || n < 1)
    return orthod__fail(ORTHOD_E_SHAPE, "polar_svd: %lldx%lld; both dimensions must be >= 1",
                        (long long)m, (long long)n);
  if (__builtin_mul_overflow(m, n, &total))
    return orthod__fail(ORTHOD_E_OVERFLOW, "polar_svd: %lldx%lld overflows", (long long)m,
                        (long long)n);
  if (ranges_overlap(out, total, a, total))
    return orthod__fail(ORTHOD_E_INVAL, "polar_svd: out overlaps a");
  if (nuclear != NULL && (ranges_overlap(nuclear, 1, a, total) || ranges_overlap(nuclear, 1, out, total)))
    return orthod__fail(ORTHOD_E_INVAL, "polar_svd: nuclear overlaps a or out");
  return be->iface->polar_svd(be->ctx, out, nuclear, a, m, n);
}

orthod_err_t orthod_backend_eigh(orthod_backend_t *be, float *w, float *q, const float *a, int64_t n) {
  CHECK_BE(be, "eigh");
  CHECK_PTR(w, "eigh", "w");
  CHECK_PTR(q, "eigh", "q");
  CHECK_PTR(a, "eigh", "a");
  int64_t total = 0;
  if (n < 1) return orthod__fail(ORTHOD_E_SHAPE, "eigh: n=%lld must be >= 1", (long long)n);
  if (__builtin_mul_overflow(n, n, &total))
    return orthod__fail(ORTHOD_E_OVERFLOW, "eigh: %lldx%lld overflows", (long long)n, (long long)n);
  if (ranges_overlap(w, n, q, total) || ranges_overlap(w, n, a, total))
    return orthod__fail(ORTHOD_E_INVAL, "eigh: w overlaps q or a");
  return be->iface->eigh(be->ctx, w, q, a, n);
}
