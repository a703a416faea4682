/* error.c — messages and names generated from ORTHOD_ERRNO_MAP, and the thread-local detail. */
#include <stdarg.h>
#include <string.h>

#include "orthod_internal.h"

static _Thread_local char detail[512];

const char *orthod_strerror(orthod_err_t err) {
  switch (err) {
#define ORTHOD__ERR_MSG(name, msg) \
  case ORTHOD_##name:              \
    return msg;
    ORTHOD_ERRNO_MAP(ORTHOD__ERR_MSG)
#undef ORTHOD__ERR_MSG
    default:
      return "unknown error code";
  }
}

const char *orthod_err_name(orthod_err_t err) {
  switch (err) {
#define ORTHOD__ERR_NAME(name, msg) \
  case ORTHOD_##name:               \
    return #name;
    ORTHOD_ERRNO_MAP(ORTHOD__ERR_NAME)
#undef ORTHOD__ERR_NAME
    default:
      return "E_UNKNOWN_CODE";
  }
}

const char *orthod_error_detail(void) { return detail; }

void orthod_error_clear(void) { detail[0] = '\0'; }

orthod_err_t orthod__fail(orthod_err_t err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "%s: %s", orthod_err_name(err), detail);
  return err;
}

int orthod__streq_nocase(const char *a, const char *b) {
  if (a == NULL || b == NULL) return 0;
  for (; *a && *b; a++, b++) {
    char ca = (*a >= 'A' && *a <= 'Z') ? (char)(*a - 'A' + 'a') : *a;
    char cb = (*b >= 'A' && *b <= 'Z') ? (char)(*b - 'A' + 'a') : *b;
    if (ca != cb) return 0;
  }
  return *a == *b;
}
