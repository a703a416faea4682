/* server/wire.c — protobuf-c ↔ engine helpers with the protocol's validation messages. */
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"

static const char *proto_dtype_name(int wire) {
  switch (wire) {
    case ORTHOD__V1__DTYPE__DTYPE_UNSPECIFIED: return "DTYPE_UNSPECIFIED";
    case ORTHOD__V1__DTYPE__DTYPE_F32: return "DTYPE_F32";
    case ORTHOD__V1__DTYPE__DTYPE_BF16: return "DTYPE_BF16";
    case ORTHOD__V1__DTYPE__DTYPE_F16: return "DTYPE_F16";
    default: return NULL;
  }
}

static int map_dtype(int wire, bool reply, orthod_dtype_t *out, char *err, size_t errlen) {
  switch (wire) {
    case ORTHOD__V1__DTYPE__DTYPE_F32: *out = ORTHOD_DTYPE_F32; return 0;
    case ORTHOD__V1__DTYPE__DTYPE_BF16: *out = ORTHOD_DTYPE_BF16; return 0;
    case ORTHOD__V1__DTYPE__DTYPE_F16: *out = ORTHOD_DTYPE_F16; return 0;
    case ORTHOD__V1__DTYPE__DTYPE_UNSPECIFIED:
      if (reply) {
        *out = ORTHOD_DTYPE_F32;
        return 0;
      }
      break;
    default: break;
  }
  const char *n = proto_dtype_name(wire);
  if (n != NULL)
    snprintf(err, errlen, "dtype %s is not allowed here; use DTYPE_F32, DTYPE_BF16 or DTYPE_F16",
             n);
  else
    snprintf(err, errlen, "unknown dtype %d; use DTYPE_F32, DTYPE_BF16 or DTYPE_F16", wire);
  return -1;
}

int orthod_wire_dtype(int wire, orthod_dtype_t *out, char *err, size_t errlen) {
  return map_dtype(wire, false, out, err, errlen);
}

int orthod_wire_reply_dtype(int wire, orthod_dtype_t *out, char *err, size_t errlen) {
  return map_dtype(wire, true, out, err, errlen);
}

Orthod__V1__DType orthod_wire_dtype_to_proto(orthod_dtype_t d) {
  switch (d) {
    case ORTHOD_DTYPE_BF16: return ORTHOD__V1__DTYPE__DTYPE_BF16;
    case ORTHOD_DTYPE_F16: return ORTHOD__V1__DTYPE__DTYPE_F16;
    default: return ORTHOD__V1__DTYPE__DTYPE_F32;
  }
}

int orthod_wire_chunk(const Orthod__V1__TensorChunk *chunk, const char *name, orthod_dtype_t *dtype,
                      uint64_t *count, char *err, size_t errlen) {
  if (chunk == NULL) {
    snprintf(err, errlen, "message for '%s' has no chunk", name);
    return -1;
  }
  char why[160];
  if (orthod_wire_dtype((int)chunk->dtype, dtype, why, sizeof why) != 0) {
    snprintf(err, errlen, "chunk of '%s' at offset %llu: %s", name,
             (unsigned long long)chunk->offset, why);
    return -1;
  }
  size_t es = orthod_dtype_size(*dtype);
  if (chunk->data.len == 0 || chunk->data.len % es != 0) {
    snprintf(err, errlen,
             "chunk of '%s' at offset %llu has %zu bytes of data, not a positive multiple of %zu "
             "(%s)",
             name, (unsigned long long)chunk->offset, chunk->data.len, es,
             proto_dtype_name((int)chunk->dtype));
    return -1;
  }
  *count = chunk->data.len / es;
  return 0;
}

int orthod_wire_check_name(const char *name, char *err, size_t errlen) {
  size_t n = strlen(name);
  if (n == 0) {
    snprintf(err, errlen, "parameter name is empty");
    return -1;
  }
  if (n > 255) {
    snprintf(err, errlen, "parameter name of %zu bytes is longer than 255 bytes", n);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)name[i];
    if (ch < 0x20 || ch == 0x7f) {
      snprintf(err, errlen, "parameter name '%.*s...' has control character 0x%02x at byte %zu",
               (int)(i < 64 ? i : 64), name, ch, i);
      return -1;
    }
  }
  return 0;
}

char *orthod_wire_dims_str(const int64_t *dims, size_t ndims, char *buf, size_t len) {
  size_t at = 0;
  if (len == 0) return buf;
  buf[0] = '\0';
  at += (size_t)snprintf(buf, len, "[");
  for (size_t i = 0; i < ndims && at < len; i++)
    at += (size_t)snprintf(buf + at, len - at, "%s%lld", i ? ", " : "", (long long)dims[i]);
  if (at < len) snprintf(buf + at, len - at, "]");
  return buf;
}

int orthod_wire_shape(const int64_t *dims, size_t ndims, uint64_t max_elements,
                      orthod_shape_t *out, char *err, size_t errlen) {
  char s[256];
  orthod_wire_dims_str(dims, ndims < 16 ? ndims : 16, s, sizeof s);
  if (ndims == 0 || ndims > ORTHOD_MAX_DIMS) {
    snprintf(err, errlen, "shape %s has %zu dimensions; 1 to %d are allowed", s, ndims,
             ORTHOD_MAX_DIMS);
    return -1;
  }
  uint64_t total = 1;
  for (size_t i = 0; i < ndims; i++) {
    if (dims[i] < 1) {
      snprintf(err, errlen, "shape %s: dimension %zu is %lld; every dimension must be >= 1", s, i,
               (long long)dims[i]);
      return -1;
    }
    if (__builtin_mul_overflow(total, (uint64_t)dims[i], &total) || total > max_elements) {
      snprintf(err, errlen, "shape %s has more than %llu elements (--max-tensor-elements)", s,
               (unsigned long long)max_elements);
      return -1;
    }
  }
  if (orthod_shape_init(out, (int)ndims, dims) != ORTHOD_OK) {
    snprintf(err, errlen, "shape %s: %s", s, orthod_error_detail());
    return -1;
  }
  return 0;
}

int orthod_wire_send(struct orthod_call *call, const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(n ? n : 1);
  if (buf == NULL) return -1;
  protobuf_c_message_pack(msg, buf);
  int rc = orthod_call_send(call, buf, n);
  free(buf);
  return rc;
}
