/* backend_cuda_stub.c — the CUDA entry points of a build without CUDA (ORTHOD_CUDA=OFF or no
 * nvcc): they exist, so callers need no #ifdef, and say that the backend is absent. */
#include <stdio.h>

#include "backend_impl.h"

orthod_err_t orthod_backend_create_cuda(const orthod_backend_opts_t *opts, orthod_backend_t **out) {
  (void)opts;
  if (out != NULL) *out = NULL;
  return orthod__fail(ORTHOD_E_UNSUPPORTED,
                      "this build has no CUDA backend (configure with nvcc installed and "
                      "ORTHOD_CUDA=AUTO or ON)");
}

int orthod_backend_cuda_device_count(void) { return 0; }

orthod_err_t orthod_backend_cuda_describe(int device, char *buf, size_t len) {
  if (buf != NULL && len > 0) snprintf(buf, len, "no CUDA backend in this build");
  return orthod__fail(ORTHOD_E_UNSUPPORTED,
                      "this build has no CUDA backend (device %d)", device);
}
