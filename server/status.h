/* server/status.h — the one mapping from engine errors to gRPC status codes. */
#ifndef ORTHOD_SERVER_STATUS_H
#define ORTHOD_SERVER_STATUS_H

#include <grpc/status.h>

#include "orthod/error.h"

/* E_INVAL/E_SHAPE/E_DTYPE/E_OVERFLOW/E_UNKNOWN_NAME/E_STEPS/E_NONFINITE → INVALID_ARGUMENT;
 * E_ZERO_NORM → FAILED_PRECONDITION; E_NOTFOUND → NOT_FOUND; E_EXISTS → ALREADY_EXISTS;
 * E_NOMEM → RESOURCE_EXHAUSTED; E_UNSUPPORTED → UNIMPLEMENTED; E_NUMERIC/E_BACKEND → INTERNAL. */
grpc_status_code orthod_status_from_err(orthod_err_t err);

/* "INVALID_ARGUMENT" etc. */
const char *orthod_status_name(grpc_status_code code);

#endif
