/* gputest.h — shared pieces of the GPU suites: the device under test (the CUDA backend) next to
 * the reference (the CPU backend), data on both, and comparisons that print both values.
 *
 * Every suite's main() is gt_main(): without a CUDA device (or in a build without the CUDA
 * backend) it prints why and returns 77, the CTest skip code. ORTHOD_TEST_CUDA_DEVICE picks the
 * device (default 0). ORTHOD_GPU_TEST_DUT=cpu makes the device under test a second CPU backend:
 * a self-check of the suites' own logic that runs anywhere (every comparison then holds
 * trivially, so it proves nothing about CUDA). ORTHOD_GPU_TEST_VERBOSE=1 prints every measured
 * error with its bound. ORTHOD_GPU_TEST_EMULATED=1 (set for the host emulation of tests/gpu/emu)
 * skips the few cases that would take minutes there. */
#ifndef ORTHOD_GPUTEST_H
#define ORTHOD_GPUTEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orthod/backend.h"
#include "testutil.h"

/* The backend under test (CUDA, or CPU in self-check mode) and the reference CPU backend. */
orthod_backend_t *gt_dut(void);
orthod_backend_t *gt_ref(void);
bool gt_selfcheck(void);
/* ORTHOD_GPU_TEST_VERBOSE=1: print every measured relative error next to its bound (to
 * calibrate the bounds on new hardware). */
bool gt_verbose(void);

/* Run a suite on both backends; 77 when there is no device. */
int gt_main(const char *suite, const tu_test_t *tests);

/* Device buffer of n floats holding host[0..n) (alloc + upload + sync), a host copy of a device
 * buffer, and free. Abort with a message on failure (a test helper, not a test). */
float *gt_put(orthod_backend_t *be, const float *host, size_t n);
void gt_get(orthod_backend_t *be, float *host, const float *dev, size_t n);
void gt_free(orthod_backend_t *be, float *dev);

/* The same data on both backends. */
typedef struct {
  float *d; /* on gt_dut() */
  float *r; /* on gt_ref() */
  size_t n;
} gt_pair_t;
gt_pair_t gt_pair(const float *host, size_t n);
void gt_pair_free(gt_pair_t *p);
/* Host copies of both sides (malloc'd, caller frees). */
void gt_pair_get(const gt_pair_t *p, float **dut, float **ref);

/* Seeded N(0, 1) host data (malloc'd, caller frees). */
float *gt_normal(uint64_t seed, size_t n);

/* Equal bit patterns, or both NaN (NaN payloads of arithmetic differ between x86 and CUDA).
 * Prints the first difference with the label. */
bool gt_same(const char *label, const float *x, const float *y, size_t n);
/* ‖x − ref‖_F / ‖ref‖_F (in double) <= bound; prints both norms and the worst element. */
bool gt_rel_close(const char *label, const float *x, const float *ref, size_t n, double bound);
/* Every value is a bf16 value (bf16(x) == x). */
bool gt_is_bf16(const char *label, const float *x, size_t n);

#define GT_OK(call) TU_OK(call)

#endif
