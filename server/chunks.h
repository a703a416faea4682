/* server/chunks.h — assembly of one tensor from chunks received in any order (Upload, Step).
 * Pure logic on host memory: each chunk is converted to fp32 into a buffer of the whole tensor;
 * the ranges received are remembered so that gaps, overlaps and exact retries are recognised.
 * Not thread-safe; the loop thread owns every assembly. */
#ifndef ORTHOD_SERVER_CHUNKS_H
#define ORTHOD_SERVER_CHUNKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orthod/tensor.h"

typedef struct orthod_chunks orthod_chunks_t;

typedef enum {
  ORTHOD_CHUNK_ADDED = 0,     /* new range stored */
  ORTHOD_CHUNK_DUPLICATE,     /* exactly this range with exactly this data was already stored */
  ORTHOD_CHUNK_OUT_OF_RANGE,  /* offset + count beyond the tensor (or count 0) */
  ORTHOD_CHUNK_OVERLAP,       /* overlaps a different range already stored (*lo, *hi name it) */
  ORTHOD_CHUNK_CONFLICT,      /* same range as before with different data */
  ORTHOD_CHUNK_NOMEM,         /* the tensor buffer could not be allocated */
} orthod_chunk_result_t;

/* An empty assembly of a tensor of numel elements (the fp32 buffer is allocated on the first
 * chunk). Returns NULL when out of memory. Caller owns it. */
orthod_chunks_t *orthod_chunks_create(uint64_t numel);

/* Free (NULL is a no-op). */
void orthod_chunks_destroy(orthod_chunks_t *c);

/* Add count elements of dtype at element offset. On OVERLAP, *lo and *hi (may be NULL) receive
 * the stored range [lo, hi) that collides. Nothing is stored unless ADDED. */
orthod_chunk_result_t orthod_chunks_add(orthod_chunks_t *c, uint64_t offset, const void *data,
                                        orthod_dtype_t dtype, uint64_t count, uint64_t *lo,
                                        uint64_t *hi);

/* Elements of the tensor, elements received so far, and whether every element was received. */
uint64_t orthod_chunks_numel(const orthod_chunks_t *c);
uint64_t orthod_chunks_covered(const orthod_chunks_t *c);
bool orthod_chunks_complete(const orthod_chunks_t *c);

/* First element not yet received (numel when complete). */
uint64_t orthod_chunks_first_gap(const orthod_chunks_t *c);

/* Take the fp32 buffer of numel elements (caller frees with free()); NULL when nothing was
 * received. The ranges stay, so that a late retry can still be recognised with
 * orthod_chunks_has_range; adding to a taken assembly is refused (OVERLAP or DUPLICATE). */
float *orthod_chunks_take(orthod_chunks_t *c);

/* True when exactly the range [offset, offset + count) was received as one chunk. */
bool orthod_chunks_has_range(const orthod_chunks_t *c, uint64_t offset, uint64_t count);

/* The fp32 buffer (borrowed; NULL before the first chunk). */
const float *orthod_chunks_data(const orthod_chunks_t *c);

/* "ADDED", "OVERLAP", ... for logs and tests. */
const char *orthod_chunk_result_name(orthod_chunk_result_t r);

#endif
