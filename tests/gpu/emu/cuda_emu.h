/* cuda_emu.h — just enough of the CUDA device environment to compile core/cuda/kernels.cu as
 * host C++ and run its kernels on the CPU, one block at a time, each thread of the block a
 * user-level context (ucontext) so that __syncthreads() and warp shuffles behave as on a GPU.
 * Used only by the emulated GPU tests (tests/gpu/CMakeLists.txt): it checks the kernels' logic
 * (indexing, tiling, barriers, reductions) where no GPU exists. Arithmetic intrinsics map to the
 * host's IEEE operations (compiled with -ffp-contract=off), which round like the device's. */
#ifndef ORTHOD_CUDA_EMU_H
#define ORTHOD_CUDA_EMU_H

#define __global__
#define __device__
#define __host__
#define __shared__ static /* one instance per kernel, shared by the block's threads */

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>

extern dim3 emu_gridDim, emu_blockDim;
extern uint3 emu_blockIdx, emu_threadIdx;
#define gridDim emu_gridDim
#define blockDim emu_blockDim
#define blockIdx emu_blockIdx
#define threadIdx emu_threadIdx

/* Run body for every thread of every block of the grid; _simple runs the threads one after the
 * other to completion (for kernels without __syncthreads or shuffles; a barrier there aborts). */
void emu_launch(dim3 grid, dim3 block, const std::function<void()> &body);
void emu_launch_simple(dim3 grid, dim3 block, const std::function<void()> &body);
void emu_syncthreads(void);
/* The current thread's linear index in its block, and the block's thread count. */
unsigned emu_linear_tid(void);
unsigned emu_block_threads(void);
#define __syncthreads() emu_syncthreads()

template <typename T> static T __shfl_down_sync(unsigned mask, T v, unsigned off) {
  (void)mask;
  static T buf[1024];
  unsigned t = emu_linear_tid();
  buf[t] = v;
  emu_syncthreads();
  unsigned lane = t % 32u;
  T r = (lane + off < 32u && t + off < emu_block_threads()) ? buf[t + off] : v;
  emu_syncthreads();
  return r;
}

static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
  unsigned long long old = *p;
  *p = old + v;
  return old;
}

static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }
static inline float __double2float_rn(double a) { return (float)a; }
static inline unsigned __float_as_uint(float x) {
  unsigned u;
  memcpy(&u, &x, sizeof u);
  return u;
}
static inline float __uint_as_float(unsigned u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}
static inline float __int_as_float(int i) {
  float x;
  memcpy(&x, &i, sizeof x);
  return x;
}

#endif
