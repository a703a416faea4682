/* fake_cuda.h — what the emulated GPU tests can ask the host stand-in of the CUDA libraries. */
#ifndef ORTHOD_FAKE_CUDA_H
#define ORTHOD_FAKE_CUDA_H

#include <stddef.h>

/* Bytes of "device" memory currently allocated (all allocations, not only the accounted ones). */
size_t fake_cuda_device_bytes(void);

#endif
