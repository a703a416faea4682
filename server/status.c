/* server/status.c — engine error → gRPC status, in one place, and status names for logs. */
#include "status.h"

grpc_status_code orthod_status_from_err(orthod_err_t err) {
  switch (err) {
  case ORTHOD_OK: return GRPC_STATUS_OK;
  case ORTHOD_E_INVAL:
  case ORTHOD_E_SHAPE:
  case ORTHOD_E_DTYPE:
  case ORTHOD_E_OVERFLOW:
  case ORTHOD_E_UNKNOWN_NAME:
  case ORTHOD_E_STEPS:
  case ORTHOD_E_NONFINITE: return GRPC_STATUS_INVALID_ARGUMENT;
  case ORTHOD_E_ZERO_NORM: return GRPC_STATUS_FAILED_PRECONDITION;
  case ORTHOD_E_NOTFOUND: return GRPC_STATUS_NOT_FOUND;
  case ORTHOD_E_EXISTS: return GRPC_STATUS_ALREADY_EXISTS;
  case ORTHOD_E_NOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
  case ORTHOD_E_UNSUPPORTED: return GRPC_STATUS_UNIMPLEMENTED;
  case ORTHOD_E_NUMERIC:
  case ORTHOD_E_BACKEND:
  case ORTHOD_E_IO: return GRPC_STATUS_INTERNAL;
  case ORTHOD_E_CORRUPT: return GRPC_STATUS_DATA_LOSS;
  case ORTHOD_ERR_COUNT: break;
  }
  /* A code outside the list is a broken invariant on our side, not the client's fault. */
  return GRPC_STATUS_INTERNAL;
}

const char *orthod_status_name(grpc_status_code code) {
  switch (code) {
  case GRPC_STATUS_OK: return "OK";
  case GRPC_STATUS_CANCELLED: return "CANCELLED";
  case GRPC_STATUS_UNKNOWN: return "UNKNOWN";
  case GRPC_STATUS_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
  case GRPC_STATUS_DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
  case GRPC_STATUS_NOT_FOUND: return "NOT_FOUND";
  case GRPC_STATUS_ALREADY_EXISTS: return "ALREADY_EXISTS";
  case GRPC_STATUS_PERMISSION_DENIED: return "PERMISSION_DENIED";
  case GRPC_STATUS_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
  case GRPC_STATUS_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
  case GRPC_STATUS_ABORTED: return "ABORTED";
  case GRPC_STATUS_OUT_OF_RANGE: return "OUT_OF_RANGE";
  case GRPC_STATUS_UNIMPLEMENTED: return "UNIMPLEMENTED";
  case GRPC_STATUS_INTERNAL: return "INTERNAL";
  case GRPC_STATUS_UNAVAILABLE: return "UNAVAILABLE";
  case GRPC_STATUS_DATA_LOSS: return "DATA_LOSS";
  case GRPC_STATUS_UNAUTHENTICATED: return "UNAUTHENTICATED";
  case GRPC_STATUS__DO_NOT_USE: break;
  }
  return "UNKNOWN_STATUS";
}
