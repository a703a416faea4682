/* server/wire.h — helpers between protobuf-c messages and the engine: dtypes, validation of
 * names, shapes and tensor chunks (with the exact status messages the protocol documents), shape
 * formatting, and packing a message onto a call. */
#ifndef ORTHOD_SERVER_WIRE_H
#define ORTHOD_SERVER_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orthod/tensor.h"
#include "orthod/v1/orthod.pb-c.h"

struct orthod_call; /* rpc.h */

/* Request dtype (UNSPECIFIED and unknown values rejected): 0, or -1 with err filled
 * ("chunk dtype DTYPE_UNSPECIFIED is not allowed; use DTYPE_F32, DTYPE_BF16 or DTYPE_F16"). */
int orthod_wire_dtype(int wire, orthod_dtype_t *out, char *err, size_t errlen);

/* Reply dtype: UNSPECIFIED means F32; unknown values rejected as above. */
int orthod_wire_reply_dtype(int wire, orthod_dtype_t *out, char *err, size_t errlen);

/* Engine dtype to the wire enum. */
Orthod__V1__DType orthod_wire_dtype_to_proto(orthod_dtype_t d);

/* Validate a chunk of parameter `name`: present, dtype, whole elements, at least one.
 * 0 with *dtype and *count set, or -1 with err filled. */
int orthod_wire_chunk(const Orthod__V1__TensorChunk *chunk, const char *name, orthod_dtype_t *dtype,
                      uint64_t *count, char *err, size_t errlen);

/* Parameter names: 1..255 bytes, no control characters. 0 or -1 with err filled. */
int orthod_wire_check_name(const char *name, char *err, size_t errlen);

/* Shapes: 1..8 dims, each >= 1, product <= max_elements (overflow-checked). 0 with *out filled,
 * or -1 with err filled naming the dims. */
int orthod_wire_shape(const int64_t *dims, size_t ndims, uint64_t max_elements,
                      orthod_shape_t *out, char *err, size_t errlen);

/* "[4, 6]" into buf (always NUL-terminated); returns buf. */
char *orthod_wire_dims_str(const int64_t *dims, size_t ndims, char *buf, size_t len);

/* Pack msg and queue it on call. Returns 0, or -1 (out of memory, or the call is over). */
int orthod_wire_send(struct orthod_call *call, const ProtobufCMessage *msg);

#endif
