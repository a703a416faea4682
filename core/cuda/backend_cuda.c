/* backend_cuda.c — the CUDA backend: one device context (stream, cuBLAS and cuSOLVER handles,
 * pinned staging buffers, a reduction workspace), the one GEMM wrapper, transfers with dtype
 * conversion on the device, and the function table. Kernels live in kernels.cu behind
 * cuda_internal.h. Every CUDA, cuBLAS and cuSOLVER call is checked and mapped to an orthod_err_t
 * whose detail names the operation, the failing call and the library's message. Semantics match
 * the CPU backend (backend_cpu.c) op for op; docs/CUDA.md says where results differ and why. */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "backend_impl.h"
#include "cuda_internal.h"

/* ---- context -------------------------------------------------------------------------------- */

#define STAGE_SLOTS 2
#define STAGE_BYTES ((size_t)4 << 20)      /* per slot, pinned host and device (double buffering) */
#define CUBLAS_WS_BYTES ((size_t)32 << 20)  /* cuBLAS workspace, NVIDIA's figure for Hopper */
#define DEV_ALIGN ((size_t)256)
#define N_SCALARS 8                         /* device scalars of the hooks and NorMuon */

typedef struct {
  int device;
  cudaStream_t stream;        /* every operation is enqueued here, in order */
  cublasHandle_t blas;        /* bound to stream, with blas_ws as its workspace */
  cusolverDnHandle_t solver;  /* bound to stream */
  bool pools;                 /* stream-ordered allocator (cudaMallocAsync) available */
  void *blas_ws;              /* CUBLAS_WS_BYTES */
  /* transfers: slot i is host_stage + i·STAGE_BYTES (pinned) and dev_stage + i·STAGE_BYTES
   * (raw 16-bit data before widening / after narrowing); stage_ev[i] is recorded after the last
   * command that reads or writes slot i, stage_busy[i] says whether it is still to be waited. */
  unsigned char *host_stage;
  unsigned char *dev_stage;
  cudaEvent_t stage_ev[STAGE_SLOTS];
  bool stage_busy[STAGE_SLOTS];
  int stage_next;
  /* fixed small device buffers (one allocation): scalars, a counter, cuSOLVER's info */
  void *small;
  float *scal;                /* N_SCALARS floats */
  unsigned long long *dcount; /* count_nonfinite */
  int *dinfo;                 /* cuSOLVER info */
  void *small_host;           /* pinned: hcount, hinfo */
  unsigned long long *hcount;
  int *hinfo;
  /* growable device workspace (reduction partials, per-slice sums, NorMuon factors); kept
   * between calls, outside the accounted memory (it is small: a few floats per slice) */
  void *ws;
  size_t ws_bytes;
  /* a sticky device error (illegal address, ...) leaves the CUDA context unusable */
  bool lost;
  char lost_msg[192];
} cuda_ctx;

/* ---- error mapping -------------------------------------------------------------------------- */

static bool is_sticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure:
    case cudaErrorECCUncorrectable:
      return true;
    default:
      return false;
  }
}

static void mark_lost(cuda_ctx *c, cudaError_t e) {
  if (c == NULL || c->lost || !is_sticky(e)) return;
  c->lost = true;
  snprintf(c->lost_msg, sizeof c->lost_msg, "%s: %s", cudaGetErrorName(e), cudaGetErrorString(e));
  ORTHOD_LOG(ORTHOD_LOG_ERROR,
             "cuda backend: device %d context lost (%s); every further operation fails until the "
             "process restarts",
             c->device, c->lost_msg);
}

static orthod_err_t cu_fail(cuda_ctx *c, cudaError_t e, const char *op, const char *call) {
  /* Reset the runtime's last-error slot, so that a non-sticky error (an allocation failure) is
   * not reported again by the next launch check. A sticky one stays whatever we do. */
  (void)cudaGetLastError();
  if (e == cudaErrorMemoryAllocation) {
    ORTHOD_LOG(ORTHOD_LOG_WARN, "cuda backend: %s: %s: out of device memory", op, call);
    return orthod__fail(ORTHOD_E_NOMEM, "cuda %s: %s: out of device memory (%s)", op, call,
                        cudaGetErrorString(e));
  }
  mark_lost(c, e);
  return orthod__fail(ORTHOD_E_BACKEND, "cuda %s: %s failed: %s (%s)", op, call,
                      cudaGetErrorName(e), cudaGetErrorString(e));
}

static orthod_err_t blas_fail(cuda_ctx *c, cublasStatus_t s, const char *op, const char *call) {
  cudaError_t le = cudaGetLastError(); /* the CUDA error behind an execution failure, if any */
  mark_lost(c, le);
  if (s == CUBLAS_STATUS_ALLOC_FAILED) {
    ORTHOD_LOG(ORTHOD_LOG_WARN, "cuda backend: %s: %s: cuBLAS could not allocate", op, call);
    return orthod__fail(ORTHOD_E_NOMEM, "cuda %s: %s: cuBLAS could not allocate device memory",
                        op, call);
  }
  orthod_err_t code = (s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_ARCH_MISMATCH)
                          ? ORTHOD_E_UNSUPPORTED
                          : ORTHOD_E_BACKEND;
  if (le != cudaSuccess)
    return orthod__fail(code, "cuda %s: %s failed: %s (%s; %s)", op, call, cublasGetStatusName(s),
                        cublasGetStatusString(s), cudaGetErrorName(le));
  return orthod__fail(code, "cuda %s: %s failed: %s (%s)", op, call, cublasGetStatusName(s),
                      cublasGetStatusString(s));
}

static const char *solver_status_name(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    case CUSOLVER_STATUS_INVALID_WORKSPACE: return "CUSOLVER_STATUS_INVALID_WORKSPACE";
    default: return "cuSOLVER status";
  }
}

static orthod_err_t solver_fail(cuda_ctx *c, cusolverStatus_t s, const char *op, const char *call) {
  cudaError_t le = cudaGetLastError();
  mark_lost(c, le);
  if (s == CUSOLVER_STATUS_ALLOC_FAILED) {
    ORTHOD_LOG(ORTHOD_LOG_WARN, "cuda backend: %s: %s: cuSOLVER could not allocate", op, call);
    return orthod__fail(ORTHOD_E_NOMEM, "cuda %s: %s: cuSOLVER could not allocate memory", op, call);
  }
  orthod_err_t code = (s == CUSOLVER_STATUS_NOT_SUPPORTED || s == CUSOLVER_STATUS_ARCH_MISMATCH)
                          ? ORTHOD_E_UNSUPPORTED
                          : ORTHOD_E_BACKEND;
  return orthod__fail(code, "cuda %s: %s failed: %s (%d)%s%s", op, call, solver_status_name(s),
                      (int)s, le != cudaSuccess ? "; " : "",
                      le != cudaSuccess ? cudaGetErrorName(le) : "");
}

/* CU(c, op, cudaFoo, (args)): call, and on failure return the mapped error naming cudaFoo. */
#define CU(c, op, fn, args)                                                   \
  do {                                                                        \
    cudaError_t cu_e_ = fn args;                                              \
    if (cu_e_ != cudaSuccess) return cu_fail((c), cu_e_, (op), #fn);          \
  } while (0)
#define CUBLAS(c, op, fn, args)                                               \
  do {                                                                        \
    cublasStatus_t cb_s_ = fn args;                                           \
    if (cb_s_ != CUBLAS_STATUS_SUCCESS) return blas_fail((c), cb_s_, (op), #fn); \
  } while (0)
#define CUSOLVER(c, op, fn, args)                                             \
  do {                                                                        \
    cusolverStatus_t cs_s_ = fn args;                                         \
    if (cs_s_ != CUSOLVER_STATUS_SUCCESS) return solver_fail((c), cs_s_, (op), #fn); \
  } while (0)
/* A kernel launcher from cuda_internal.h (returns the launch status). */
#define LAUNCH(c, op, fn, args) CU(c, op, fn, args)

/* Every entry point: a lost context fails at once; the device is made current on this thread
 * (the backend may be driven from a thread other than the one that created it). */
static orthod_err_t enter(cuda_ctx *c, const char *op) {
  if (c->lost)
    return orthod__fail(ORTHOD_E_BACKEND,
                        "cuda %s: the device context was lost earlier (%s); restart the process",
                        op, c->lost_msg);
  CU(c, op, cudaSetDevice, (c->device));
  return ORTHOD_OK;
}
#define ENTER(c, op) ORTHOD_TRY(enter((c), (op)))

/* ---- device memory -------------------------------------------------------------------------- */

static size_t align_up(size_t v, size_t a) { return (v + a - 1) & ~(a - 1); }

static orthod_err_t dev_alloc(cuda_ctx *c, size_t bytes, const char *op, void **out) {
  *out = NULL;
  void *p = NULL;
  cudaError_t e = c->pools ? cudaMallocAsync(&p, bytes, c->stream) : cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) {
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
      ORTHOD_LOG(ORTHOD_LOG_WARN,
                 "cuda backend: %s: device allocation of %zu bytes failed (%zu MiB free of %zu MiB)",
                 op, bytes, free_b >> 20, total_b >> 20);
      return orthod__fail(ORTHOD_E_NOMEM,
                          "cuda %s: device allocation of %zu bytes failed: out of device memory "
                          "(%zu MiB free of %zu MiB)",
                          op, bytes, free_b >> 20, total_b >> 20);
    }
    return cu_fail(c, e, op, c->pools ? "cudaMallocAsync" : "cudaMalloc");
  }
  *out = p;
  return ORTHOD_OK;
}

/* Stream-ordered: memory freed here is reused only by work enqueued after everything that was
 * enqueued before (cudaFreeAsync), or after a device-wide wait (cudaFree). */
static void dev_free(cuda_ctx *c, void *p) {
  if (p == NULL) return;
  cudaError_t e = c->pools ? cudaFreeAsync(p, c->stream) : cudaFree(p);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    mark_lost(c, e);
    ORTHOD_LOG(ORTHOD_LOG_ERROR, "cuda backend: freeing device memory %p failed: %s (%s)", p,
               cudaGetErrorName(e), cudaGetErrorString(e));
  }
}

/* The workspace, grown (never shrunk) to at least `bytes`. */
static orthod_err_t ws_reserve(cuda_ctx *c, size_t bytes, const char *op, void **out) {
  if (bytes == 0) bytes = DEV_ALIGN;
  if (bytes > c->ws_bytes) {
    size_t want = align_up(bytes, (size_t)64 << 10);
    if (want < 2 * c->ws_bytes) want = 2 * c->ws_bytes;
    dev_free(c, c->ws);
    c->ws = NULL;
    c->ws_bytes = 0;
    ORTHOD_TRY(dev_alloc(c, want, op, &c->ws));
    c->ws_bytes = want;
  }
  *out = c->ws;
  return ORTHOD_OK;
}

/* Carve consecutive DEV_ALIGN-aligned pieces out of a block. */
typedef struct {
  unsigned char *base;
  size_t off;
} carver;

static void *carve(carver *cv, size_t bytes) {
  void *p = cv->base + cv->off;
  cv->off += align_up(bytes == 0 ? 1 : bytes, DEV_ALIGN);
  return p;
}

static size_t carve_size(size_t bytes) { return align_up(bytes == 0 ? 1 : bytes, DEV_ALIGN); }

/* ---- context lifetime ----------------------------------------------------------------------- */

static void cuda_destroy(void *vctx) {
  cuda_ctx *c = vctx;
  if (c == NULL) return;
  if (cudaSetDevice(c->device) != cudaSuccess) (void)cudaGetLastError();
  if (c->stream != NULL && cudaStreamSynchronize(c->stream) != cudaSuccess) (void)cudaGetLastError();
  if (c->ws != NULL) dev_free(c, c->ws);
  c->ws = NULL;
  if (c->stream != NULL && cudaStreamSynchronize(c->stream) != cudaSuccess) (void)cudaGetLastError();
  if (c->solver != NULL) cusolverDnDestroy(c->solver);
  c->solver = NULL;
  if (c->blas != NULL) cublasDestroy(c->blas);
  c->blas = NULL;
  for (int i = 0; i < STAGE_SLOTS; i++) {
    if (c->stage_ev[i] != NULL) cudaEventDestroy(c->stage_ev[i]);
    c->stage_ev[i] = NULL;
  }
  /* cudaFree / cudaFreeHost synchronise the device: nothing of ours is still running. */
  if (c->blas_ws != NULL) cudaFree(c->blas_ws);
  c->blas_ws = NULL;
  if (c->dev_stage != NULL) cudaFree(c->dev_stage);
  c->dev_stage = NULL;
  if (c->small != NULL) cudaFree(c->small);
  c->small = NULL;
  if (c->host_stage != NULL) cudaFreeHost(c->host_stage);
  c->host_stage = NULL;
  if (c->small_host != NULL) cudaFreeHost(c->small_host);
  c->small_host = NULL;
  if (c->stream != NULL) cudaStreamDestroy(c->stream);
  c->stream = NULL;
  (void)cudaGetLastError();
  free(c);
}

static orthod_err_t cuda_alloc(void *vctx, size_t bytes, void **out) {
  cuda_ctx *c = vctx;
  *out = NULL;
  ENTER(c, "alloc");
  return dev_alloc(c, bytes, "alloc", out);
}

static void cuda_free(void *vctx, void *p) {
  cuda_ctx *c = vctx;
  if (cudaSetDevice(c->device) != cudaSuccess) (void)cudaGetLastError();
  dev_free(c, p);
}

static orthod_err_t cuda_sync(void *vctx) {
  cuda_ctx *c = vctx;
  ENTER(c, "sync");
  CU(c, "sync", cudaStreamSynchronize, (c->stream));
  return ORTHOD_OK;
}

/* ---- transfers ------------------------------------------------------------------------------ */

static orthod_err_t stage_wait(cuda_ctx *c, int slot, const char *op) {
  if (!c->stage_busy[slot]) return ORTHOD_OK;
  CU(c, op, cudaEventSynchronize, (c->stage_ev[slot]));
  c->stage_busy[slot] = false;
  return ORTHOD_OK;
}

/* After a failed transfer: wait for whatever was enqueued, so that no copy still reads or
 * writes a staging slot that the next transfer reuses. */
static void stage_reset(cuda_ctx *c) {
  if (cudaStreamSynchronize(c->stream) != cudaSuccess) (void)cudaGetLastError();
  for (int i = 0; i < STAGE_SLOTS; i++) c->stage_busy[i] = false;
}

/* Host data is copied into a pinned slot before this returns, so the caller's buffer is free at
 * once; the copy to the device and the widening kernel run asynchronously on the stream while
 * the next chunk is staged into the other slot. */
static orthod_err_t upload_chunks(cuda_ctx *c, float *dst, const void *src, orthod_dtype_t dt,
                                  size_t n) {
  size_t esz = orthod_dtype_size(dt), per = STAGE_BYTES / esz;
  const unsigned char *s = src;
  for (size_t off = 0; off < n; off += per) {
    size_t cnt = n - off < per ? n - off : per;
    int slot = c->stage_next;
    c->stage_next = (c->stage_next + 1) % STAGE_SLOTS;
    ORTHOD_TRY(stage_wait(c, slot, "upload"));
    unsigned char *h = c->host_stage + (size_t)slot * STAGE_BYTES;
    memcpy(h, s + off * esz, cnt * esz);
    if (dt == ORTHOD_DTYPE_F32) {
      CU(c, "upload", cudaMemcpyAsync,
         (dst + off, h, cnt * sizeof(float), cudaMemcpyHostToDevice, c->stream));
    } else {
      uint16_t *d = (uint16_t *)(void *)(c->dev_stage + (size_t)slot * STAGE_BYTES);
      CU(c, "upload", cudaMemcpyAsync, (d, h, cnt * esz, cudaMemcpyHostToDevice, c->stream));
      LAUNCH(c, "upload", orthod__cu_widen, (dst + off, d, dt == ORTHOD_DTYPE_BF16, cnt, c->stream));
    }
    CU(c, "upload", cudaEventRecord, (c->stage_ev[slot], c->stream));
    c->stage_busy[slot] = true;
  }
  return ORTHOD_OK;
}

static orthod_err_t cuda_upload(void *vctx, float *dst, const void *src, orthod_dtype_t dt, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "upload");
  orthod_err_t err = upload_chunks(c, dst, src, dt, n);
  if (err != ORTHOD_OK) stage_reset(c);
  return err;
}

/* Chunk i is narrowed on the device and copied into a pinned slot while chunk i-1 is waited for
 * and copied out to the caller; returns when all of it is in dst. */
static orthod_err_t download_chunks(cuda_ctx *c, void *dst, orthod_dtype_t dt, const float *src,
                                    size_t n) {
  size_t esz = orthod_dtype_size(dt), per = STAGE_BYTES / esz;
  unsigned char *d = dst;
  int prev = -1;
  size_t prev_off = 0, prev_cnt = 0;
  for (size_t off = 0; off < n; off += per) {
    size_t cnt = n - off < per ? n - off : per;
    int slot = c->stage_next;
    c->stage_next = (c->stage_next + 1) % STAGE_SLOTS;
    ORTHOD_TRY(stage_wait(c, slot, "download"));
    unsigned char *h = c->host_stage + (size_t)slot * STAGE_BYTES;
    if (dt == ORTHOD_DTYPE_F32) {
      CU(c, "download", cudaMemcpyAsync,
         (h, src + off, cnt * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    } else {
      uint16_t *ds = (uint16_t *)(void *)(c->dev_stage + (size_t)slot * STAGE_BYTES);
      LAUNCH(c, "download", orthod__cu_narrow, (ds, src + off, dt == ORTHOD_DTYPE_BF16, cnt, c->stream));
      CU(c, "download", cudaMemcpyAsync, (h, ds, cnt * esz, cudaMemcpyDeviceToHost, c->stream));
    }
    CU(c, "download", cudaEventRecord, (c->stage_ev[slot], c->stream));
    c->stage_busy[slot] = true;
    if (prev >= 0) {
      ORTHOD_TRY(stage_wait(c, prev, "download"));
      memcpy(d + prev_off * esz, c->host_stage + (size_t)prev * STAGE_BYTES, prev_cnt * esz);
    }
    prev = slot;
    prev_off = off;
    prev_cnt = cnt;
  }
  if (prev >= 0) {
    ORTHOD_TRY(stage_wait(c, prev, "download"));
    memcpy(d + prev_off * esz, c->host_stage + (size_t)prev * STAGE_BYTES, prev_cnt * esz);
  }
  return ORTHOD_OK;
}

static orthod_err_t cuda_download(void *vctx, void *dst, orthod_dtype_t dt, const float *src,
                                  size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "download");
  orthod_err_t err = download_chunks(c, dst, dt, src, n);
  if (err != ORTHOD_OK) stage_reset(c);
  return err;
}

static orthod_err_t cuda_read(void *vctx, float *host, const float *src, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "read");
  CU(c, "read", cudaMemcpyAsync, (host, src, n * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
  CU(c, "read", cudaStreamSynchronize, (c->stream));
  return ORTHOD_OK;
}

/* ---- GEMM / SYRK ---------------------------------------------------------------------------- */

static bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* Spec 3.6: highest = fp32 (never TF32: the compute type forbids it whatever the handle's math
 * mode), high = TF32 tensor cores, medium = bf16 tensor cores with fp32 accumulation and fp32
 * alpha/beta epilogue. medium's inputs are bf16 values already (Newton–Schulz rounds X, A and B),
 * so the down-conversion to bf16 inside cuBLAS is exact; the output is rounded by the caller. */
static cublasComputeType_t compute_type(orthod_precision_t p) {
  switch (p) {
    case ORTHOD_PREC_HIGH: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case ORTHOD_PREC_MEDIUM: return CUBLAS_COMPUTE_32F_FAST_16BF;
    case ORTHOD_PREC_HIGHEST:
    default: return CUBLAS_COMPUTE_32F;
  }
}

/* The one GEMM wrapper. Row-major C (m x n) = alpha·op(A)·op(B) + beta·C is the column-major
 * Cᵀ = alpha·op(B)ᵀ·op(A)ᵀ + beta·Cᵀ, and a row-major array with leading dimension ld is the
 * column-major array of its transpose with the same ld: so cuBLAS gets B first, A second, the
 * transpose flags unchanged and m, n swapped. cuBLAS does not read C when beta == 0. */
static orthod_err_t gemm_rm(cuda_ctx *c, const char *op, bool ta, bool tb, int64_t m, int64_t n,
                            int64_t k, float alpha, const float *a, int64_t lda, int64_t sa,
                            const float *b, int64_t ldb, int64_t sb, float beta, float *cm,
                            int64_t ldc, int64_t sc, int64_t batch, orthod_precision_t prec) {
  if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) ||
      !fits_int(ldc))
    return orthod__fail(ORTHOD_E_OVERFLOW,
                        "cuda %s: a dimension or leading dimension exceeds cuBLAS's int range", op);
  cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasComputeType_t ct = compute_type(prec);
  if (batch == 1) {
    CUBLAS(c, op, cublasGemmEx,
           (c->blas, opb, opa, (int)n, (int)m, (int)k, &alpha, b, CUDA_R_32F, (int)ldb, a,
            CUDA_R_32F, (int)lda, &beta, cm, CUDA_R_32F, (int)ldc, ct, CUBLAS_GEMM_DEFAULT));
    return ORTHOD_OK;
  }
  for (int64_t b0 = 0; b0 < batch; b0 += INT_MAX) {
    int nb = (int)(batch - b0 < INT_MAX ? batch - b0 : INT_MAX);
    CUBLAS(c, op, cublasGemmStridedBatchedEx,
           (c->blas, opb, opa, (int)n, (int)m, (int)k, &alpha, b + b0 * sb, CUDA_R_32F, (int)ldb,
            (long long)sb, a + b0 * sa, CUDA_R_32F, (int)lda, (long long)sa, &beta, cm + b0 * sc,
            CUDA_R_32F, (int)ldc, (long long)sc, nb, ct, CUBLAS_GEMM_DEFAULT));
  }
  return ORTHOD_OK;
}

static orthod_err_t cuda_gemm(void *vctx, const orthod_gemm_t *g) {
  cuda_ctx *c = vctx;
  ENTER(c, "gemm");
  ORTHOD_TRY(gemm_rm(c, "gemm", g->trans_a, g->trans_b, g->m, g->n, g->k, g->alpha, g->a, g->lda,
                     g->stride_a, g->b, g->ldb, g->stride_b, g->beta, g->c, g->ldc, g->stride_c,
                     g->batch, g->precision));
  if (g->precision == ORTHOD_PREC_MEDIUM)
    LAUNCH(c, "gemm", orthod__cu_round_bf16_matrix,
           (g->c, g->batch, g->stride_c, g->m, g->n, g->ldc, c->stream));
  return ORTHOD_OK;
}

/* SYRK as a full GEMM (A·Aᵀ or Aᵀ·A: cuBLAS has no TF32/bf16 SYRK for every case), then the
 * lower triangle is rounded (medium) and mirrored, so C is exactly symmetric as on the CPU. */
static orthod_err_t cuda_syrk(void *vctx, const orthod_syrk_t *s) {
  cuda_ctx *c = vctx;
  ENTER(c, "syrk");
  /* trans = false: A is n x k, op(A) = A, op(B) = Aᵀ; trans = true: A is k x n, op(A) = Aᵀ. */
  ORTHOD_TRY(gemm_rm(c, "syrk", s->trans, !s->trans, s->n, s->n, s->k, s->alpha, s->a, s->lda,
                     s->stride_a, s->a, s->lda, s->stride_a, s->beta, s->c, s->ldc, s->stride_c,
                     s->batch, s->precision));
  LAUNCH(c, "syrk", orthod__cu_mirror_lower,
         (s->c, s->batch, s->stride_c, s->n, s->ldc, s->precision == ORTHOD_PREC_MEDIUM, c->stream));
  return ORTHOD_OK;
}

/* ---- elementwise ---------------------------------------------------------------------------- */

static orthod_err_t cuda_copy(void *vctx, float *dst, const float *src, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "copy");
  size_t bytes = n * sizeof(float);
  uintptr_t d0 = (uintptr_t)dst, s0 = (uintptr_t)src;
  if (d0 + bytes <= s0 || s0 + bytes <= d0) {
    CU(c, "copy", cudaMemcpyAsync, (dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    return ORTHOD_OK;
  }
  /* Overlapping ranges (memmove semantics): through a temporary. */
  void *tmp = NULL;
  ORTHOD_TRY(dev_alloc(c, bytes, "copy", &tmp));
  cudaError_t e = cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDeviceToDevice, c->stream);
  if (e == cudaSuccess) e = cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDeviceToDevice, c->stream);
  dev_free(c, tmp);
  if (e != cudaSuccess) return cu_fail(c, e, "copy", "cudaMemcpyAsync");
  return ORTHOD_OK;
}

static orthod_err_t cuda_zero(void *vctx, float *x, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "zero");
  CU(c, "zero", cudaMemsetAsync, (x, 0, n * sizeof(float), c->stream)); /* all-zero bits: +0.0f */
  return ORTHOD_OK;
}

static orthod_err_t cuda_axpy(void *vctx, float *y, float a, const float *x, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "axpy");
  LAUNCH(c, "axpy", orthod__cu_axpy, (y, a, x, n, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_scale(void *vctx, float *x, float s, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "scale");
  LAUNCH(c, "scale", orthod__cu_scale, (x, s, n, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_lerp(void *vctx, float *out, const float *s, const float *e, float w,
                              size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "lerp");
  LAUNCH(c, "lerp", orthod__cu_lerp, (out, s, e, w, n, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_round_bf16(void *vctx, float *x, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "round_bf16");
  LAUNCH(c, "round_bf16", orthod__cu_round_bf16, (x, n, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_transpose(void *vctx, float *out, const float *in, int64_t batch,
                                   int64_t rows, int64_t cols) {
  cuda_ctx *c = vctx;
  ENTER(c, "transpose");
  LAUNCH(c, "transpose", orthod__cu_transpose, (out, in, batch, rows, cols, c->stream));
  return ORTHOD_OK;
}

/* ---- reductions ----------------------------------------------------------------------------- */

/* sums (device, `batch` floats or doubles) = per-slice reduction, through the workspace. The
 * partials live in the workspace after `reserved` bytes that the caller carved first. */
static orthod_err_t reduce_into(cuda_ctx *c, const char *op, void *sums, const float *x,
                                const float *y, int64_t batch, size_t n, orthod_cu_reduce_t kind,
                                bool take_sqrt, void *partials) {
  LAUNCH(c, op, orthod__cu_reduce, (sums, x, y, batch, n, kind, take_sqrt, partials, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_normalize(void *vctx, float *x, int64_t batch, size_t n, float eps,
                                   bool in_double) {
  cuda_ctx *c = vctx;
  ENTER(c, "normalize");
  orthod_cu_reduce_t kind = in_double ? ORTHOD_CU_SUMSQ_F64 : ORTHOD_CU_SUMSQ;
  size_t sum_bytes = (size_t)batch * (in_double ? sizeof(double) : sizeof(float));
  size_t part_bytes = orthod__cu_reduce_ws_bytes(batch, n, kind);
  void *w = NULL;
  ORTHOD_TRY(ws_reserve(c, carve_size(sum_bytes) + carve_size(part_bytes), "normalize", &w));
  carver cv = {.base = w, .off = 0};
  void *sums = carve(&cv, sum_bytes);
  void *parts = carve(&cv, part_bytes);
  ORTHOD_TRY(reduce_into(c, "normalize", sums, x, NULL, batch, n, kind, false, parts));
  LAUNCH(c, "normalize", orthod__cu_normalize_apply, (x, batch, n, sums, eps, in_double, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_norm(void *vctx, float *out, const float *x, int64_t batch, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "norm");
  void *parts = NULL;
  ORTHOD_TRY(ws_reserve(c, orthod__cu_reduce_ws_bytes(batch, n, ORTHOD_CU_SUMSQ), "norm", &parts));
  return reduce_into(c, "norm", out, x, NULL, batch, n, ORTHOD_CU_SUMSQ, true, parts);
}

static orthod_err_t cuda_dot(void *vctx, float *out, const float *x, const float *y, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "dot");
  void *parts = NULL;
  ORTHOD_TRY(ws_reserve(c, orthod__cu_reduce_ws_bytes(1, n, ORTHOD_CU_DOT), "dot", &parts));
  return reduce_into(c, "dot", out, x, y, 1, n, ORTHOD_CU_DOT, false, parts);
}

static orthod_err_t cuda_scale_by(void *vctx, float *x, const float *s, size_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "scale_by");
  LAUNCH(c, "scale_by", orthod__cu_scale_by, (x, s, n, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_count_nonfinite(void *vctx, const float *x, size_t n, size_t *count) {
  cuda_ctx *c = vctx;
  ENTER(c, "count_nonfinite");
  CU(c, "count_nonfinite", cudaMemsetAsync, (c->dcount, 0, sizeof *c->dcount, c->stream));
  LAUNCH(c, "count_nonfinite", orthod__cu_count_nonfinite, (c->dcount, x, n, c->stream));
  CU(c, "count_nonfinite", cudaMemcpyAsync,
     (c->hcount, c->dcount, sizeof *c->hcount, cudaMemcpyDeviceToHost, c->stream));
  CU(c, "count_nonfinite", cudaStreamSynchronize, (c->stream));
  *count = (size_t)*c->hcount;
  return ORTHOD_OK;
}

/* Σx² of one n-element vector into the device scalar slot `i` (fp32, no sqrt). */
static orthod_err_t sumsq_scalar(cuda_ctx *c, const char *op, int i, const float *x, size_t n) {
  void *parts = NULL;
  ORTHOD_TRY(ws_reserve(c, orthod__cu_reduce_ws_bytes(1, n, ORTHOD_CU_SUMSQ), op, &parts));
  return reduce_into(c, op, c->scal + i, x, NULL, 1, n, ORTHOD_CU_SUMSQ, false, parts);
}

/* ---- weight-update hooks and second moments ------------------------------------------------- */

static orthod_err_t cuda_hyperball(void *vctx, float *x, size_t n, float radius, float eps) {
  cuda_ctx *c = vctx;
  ENTER(c, "hyperball");
  ORTHOD_TRY(sumsq_scalar(c, "hyperball", 0, x, n));
  LAUNCH(c, "hyperball", orthod__cu_scale_factor,
         (x, n, ORTHOD_CU_F_HYPERBALL, c->scal, NULL, radius, eps, 0.0f, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_radial_brake(void *vctx, float *p, size_t n, const float *n0,
                                      float outward, float inward, float eps) {
  cuda_ctx *c = vctx;
  ENTER(c, "radial_brake");
  ORTHOD_TRY(sumsq_scalar(c, "radial_brake", 0, p, n));
  LAUNCH(c, "radial_brake", orthod__cu_scale_factor,
         (p, n, ORTHOD_CU_F_RADIAL, c->scal, n0, outward, inward, eps, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_relative_update(void *vctx, float *u, const float *p, size_t n, float eps) {
  cuda_ctx *c = vctx;
  ENTER(c, "relative_update");
  ORTHOD_TRY(sumsq_scalar(c, "relative_update", 0, p, n));
  ORTHOD_TRY(sumsq_scalar(c, "relative_update", 1, u, n));
  LAUNCH(c, "relative_update", orthod__cu_scale_factor,
         (u, n, ORTHOD_CU_F_RELATIVE, c->scal, c->scal + 1, eps, 0.0f, 0.0f, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_adamuon(void *vctx, float *o, float *v, size_t n, float w, float eps) {
  cuda_ctx *c = vctx;
  ENTER(c, "adamuon");
  LAUNCH(c, "adamuon", orthod__cu_adamuon, (o, v, n, w, eps, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_normuon(void *vctx, float *o, float *v, int64_t m, int64_t n, bool per_row,
                                 float w, float eps) {
  cuda_ctx *c = vctx;
  ENTER(c, "normuon");
  size_t total = (size_t)m * (size_t)n;
  size_t nfac = (size_t)(per_row ? m : n);
  size_t part_total = orthod__cu_reduce_ws_bytes(1, total, ORTHOD_CU_SUMSQ);
  size_t part_rows = per_row ? orthod__cu_reduce_ws_bytes(m, (size_t)n, ORTHOD_CU_SUMSQ) : 0;
  size_t part_bytes = part_total > part_rows ? part_total : part_rows;
  size_t need = carve_size(nfac * sizeof(float)) + carve_size(per_row ? (size_t)m * sizeof(float) : 0) +
                carve_size(part_bytes);
  void *w0 = NULL;
  ORTHOD_TRY(ws_reserve(c, need, "normuon", &w0));
  carver cv = {.base = w0, .off = 0};
  float *fac = carve(&cv, nfac * sizeof(float));
  float *rowsums = carve(&cv, per_row ? (size_t)m * sizeof(float) : 0);
  void *parts = carve(&cv, part_bytes);
  /* ‖O‖² before the update (scalar 0), the moment and factors, the scaling, ‖Ũ‖² (scalar 1),
   * then O ← Ũ·(‖O‖ / max(‖Ũ‖, eps)): the ratio formed first, then one multiply. */
  ORTHOD_TRY(reduce_into(c, "normuon", c->scal, o, NULL, 1, total, ORTHOD_CU_SUMSQ, false, parts));
  if (per_row)
    ORTHOD_TRY(reduce_into(c, "normuon", rowsums, o, NULL, m, (size_t)n, ORTHOD_CU_SUMSQ, false, parts));
  LAUNCH(c, "normuon", orthod__cu_normuon_moment, (v, fac, o, rowsums, m, n, per_row, w, eps, c->stream));
  LAUNCH(c, "normuon", orthod__cu_scale_rows_cols, (o, fac, m, n, per_row, c->stream));
  ORTHOD_TRY(reduce_into(c, "normuon", c->scal + 1, o, NULL, 1, total, ORTHOD_CU_SUMSQ, false, parts));
  LAUNCH(c, "normuon", orthod__cu_scale_factor,
         (o, total, ORTHOD_CU_F_RATIO, c->scal, c->scal + 1, eps, 0.0f, 0.0f, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_namo_moment(void *vctx, float *v, const float *g, size_t n, float w) {
  cuda_ctx *c = vctx;
  ENTER(c, "namo_moment");
  ORTHOD_TRY(sumsq_scalar(c, "namo_moment", 0, g, n));
  LAUNCH(c, "namo_moment", orthod__cu_namo_moment, (v, c->scal, w, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_namo_scale(void *vctx, float *o, const float *u, const float *v, size_t n,
                                    float eps) {
  cuda_ctx *c = vctx;
  ENTER(c, "namo_scale");
  ORTHOD_TRY(sumsq_scalar(c, "namo_scale", 0, u, n));
  LAUNCH(c, "namo_scale", orthod__cu_scale_factor,
         (o, n, ORTHOD_CU_F_NAMO, c->scal, v, eps, 0.0f, 0.0f, c->stream));
  return ORTHOD_OK;
}

/* torch.optim.AdamW (single-tensor path): the scalars are formed here in double exactly as the
 * CPU backend forms them, and the kernel repeats its per-element fp32 operations. */
static orthod_err_t cuda_adamw(void *vctx, float *p, const float *g, float *m, float *v,
                               float *vmax, size_t n, const orthod_adamw_args_t *a) {
  cuda_ctx *c = vctx;
  ENTER(c, "adamw");
  double bc1 = 1.0 - pow(a->beta1, (double)a->step);
  double bc2 = 1.0 - pow(a->beta2, (double)a->step);
  orthod_cu_adamw_t k = {
      .decay = (float)(1.0 - a->lr * a->weight_decay),
      .w1 = (float)(1.0 - a->beta1),
      .b2 = (float)a->beta2,
      .omb2 = (float)(1.0 - a->beta2),
      .neg_step = (float)(-(a->lr / bc1)),
      .bc2_sqrt = (float)sqrt(bc2),
      .eps = (float)a->eps,
      .decayed = a->weight_decay != 0.0,
      .amsgrad = a->amsgrad,
  };
  LAUNCH(c, "adamw", orthod__cu_adamw, (p, g, m, v, a->amsgrad ? vmax : NULL, n, k, c->stream));
  return ORTHOD_OK;
}

/* ---- cuSOLVER: polar factor and eigh -------------------------------------------------------- */

/* cuSOLVER's info (device) to the host; synchronises. */
static orthod_err_t read_info(cuda_ctx *c, const char *op, int *info) {
  CU(c, op, cudaMemcpyAsync, (c->hinfo, c->dinfo, sizeof *c->hinfo, cudaMemcpyDeviceToHost, c->stream));
  CU(c, op, cudaStreamSynchronize, (c->stream));
  *info = *c->hinfo;
  return ORTHOD_OK;
}

static orthod_err_t info_fail(const char *op, const char *routine, int info) {
  if (info > 0)
    return orthod__fail(ORTHOD_E_NUMERIC, "cuda %s: %s did not converge (info %d)", op, routine, info);
  return orthod__fail(ORTHOD_E_BACKEND, "cuda %s: %s rejected argument %d", op, routine, -info);
}

/* The row-major m x n array a is the column-major n x m matrix Aᵀ. gesvd needs rows >= cols:
 * when n >= m it factors Aᵀ = U S Vᵀ directly (A = V S Uᵀ, P = V, Q = U), else the explicit
 * transpose, the column-major m x n A = U S Vᵀ (P = U, Q = V). out = P Qᵀ is formed column-major
 * as outᵀ (n x m), which is the row-major m x n out. Synchronises (cuSOLVER's info). */
static orthod_err_t polar_body(cuda_ctx *c, float *out, float *nuclear, const float *a, int64_t m,
                               int64_t n, unsigned char *buf, int lwork, int64_t rr, int64_t cc) {
  const char *op = "polar_svd";
  int64_t k = cc;
  carver cv = {.base = buf, .off = 0};
  float *acopy = carve(&cv, (size_t)(rr * cc) * sizeof(float));
  float *sv = carve(&cv, (size_t)k * sizeof(float));
  float *u = carve(&cv, (size_t)(rr * k) * sizeof(float));
  float *vt = carve(&cv, (size_t)(k * k) * sizeof(float));
  float *work = carve(&cv, (size_t)lwork * sizeof(float));
  float *rwork = carve(&cv, (size_t)(k > 1 ? k - 1 : 1) * sizeof(float));
  bool wide = n >= m;
  if (wide)
    CU(c, op, cudaMemcpyAsync,
       (acopy, a, (size_t)(m * n) * sizeof(float), cudaMemcpyDeviceToDevice, c->stream));
  else
    LAUNCH(c, op, orthod__cu_transpose, (acopy, a, 1, m, n, c->stream));
  CUSOLVER(c, op, cusolverDnSgesvd,
           (c->solver, 'S', 'S', (int)rr, (int)cc, acopy, (int)rr, sv, u, (int)rr, vt, (int)k,
            work, lwork, rwork, c->dinfo));
  int info = 0;
  ORTHOD_TRY(read_info(c, op, &info));
  if (info != 0) return info_fail(op, "cusolverDnSgesvd", info);
  const float one = 1.0f, zero = 0.0f;
  if (wide) /* outᵀ (n x m) = U (n x m) · Vᵀ (m x m) */
    CUBLAS(c, op, cublasGemmEx,
           (c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)m, (int)m, &one, u, CUDA_R_32F, (int)rr,
            vt, CUDA_R_32F, (int)k, &zero, out, CUDA_R_32F, (int)n, CUBLAS_COMPUTE_32F,
            CUBLAS_GEMM_DEFAULT));
  else /* outᵀ (n x m) = (Vᵀ)ᵀ (n x n) · Uᵀ (n x m) */
    CUBLAS(c, op, cublasGemmEx,
           (c->blas, CUBLAS_OP_T, CUBLAS_OP_T, (int)n, (int)m, (int)n, &one, vt, CUDA_R_32F, (int)k,
            u, CUDA_R_32F, (int)rr, &zero, out, CUDA_R_32F, (int)n, CUBLAS_COMPUTE_32F,
            CUBLAS_GEMM_DEFAULT));
  if (nuclear != NULL) LAUNCH(c, op, orthod__cu_sum_ordered, (nuclear, sv, k, c->stream));
  return ORTHOD_OK;
}

static orthod_err_t cuda_polar_svd(void *vctx, float *out, float *nuclear, const float *a,
                                   int64_t m, int64_t n) {
  cuda_ctx *c = vctx;
  const char *op = "polar_svd";
  ENTER(c, op);
  if (!fits_int(m) || !fits_int(n) || !fits_int(m * n))
    return orthod__fail(ORTHOD_E_OVERFLOW, "cuda polar_svd: %lldx%lld exceeds cuSOLVER's int range",
                        (long long)m, (long long)n);
  int64_t rr = n >= m ? n : m, cc = n >= m ? m : n; /* gesvd on a column-major rr x cc, rr >= cc */
  int lwork = 0;
  CUSOLVER(c, op, cusolverDnSgesvd_bufferSize, (c->solver, (int)rr, (int)cc, &lwork));
  size_t k = (size_t)cc;
  size_t bytes = carve_size((size_t)(rr * cc) * sizeof(float)) + carve_size(k * sizeof(float)) +
                 carve_size((size_t)rr * k * sizeof(float)) + carve_size(k * k * sizeof(float)) +
                 carve_size((size_t)lwork * sizeof(float)) +
                 carve_size((k > 1 ? k - 1 : 1) * sizeof(float));
  void *buf = NULL;
  ORTHOD_TRY(dev_alloc(c, bytes, op, &buf));
  orthod_err_t err = polar_body(c, out, nuclear, a, m, n, buf, lwork, rr, cc);
  dev_free(c, buf);
  return err;
}

static orthod_err_t eigh_f32(cuda_ctx *c, float *w, float *q, const float *a, int64_t n, int *info) {
  const char *op = "eigh";
  int lwork = 0;
  size_t nn = (size_t)n * (size_t)n;
  /* the query reads no data, but gets valid pointers of the right sizes (a: n x n, w: n) */
  CUSOLVER(c, op, cusolverDnSsyevd_bufferSize,
           (c->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, (int)n, a, (int)n, w,
            &lwork));
  void *buf = NULL;
  ORTHOD_TRY(dev_alloc(c, carve_size(nn * sizeof(float)) + carve_size((size_t)n * sizeof(float)) +
                              carve_size((size_t)lwork * sizeof(float)),
                       op, &buf));
  carver cv = {.base = buf, .off = 0};
  float *z = carve(&cv, nn * sizeof(float));
  float *wl = carve(&cv, (size_t)n * sizeof(float));
  float *work = carve(&cv, (size_t)lwork * sizeof(float));
  orthod_err_t err = ORTHOD_OK;
  cudaError_t e = cudaMemcpyAsync(z, a, nn * sizeof(float), cudaMemcpyDeviceToDevice, c->stream);
  if (e != cudaSuccess) err = cu_fail(c, e, op, "cudaMemcpyAsync");
  if (err == ORTHOD_OK) {
    /* A symmetric row-major array is the same matrix column-major. */
    cusolverStatus_t s = cusolverDnSsyevd(c->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                          (int)n, z, (int)n, wl, work, lwork, c->dinfo);
    if (s != CUSOLVER_STATUS_SUCCESS) err = solver_fail(c, s, op, "cusolverDnSsyevd");
  }
  if (err == ORTHOD_OK) err = read_info(c, op, info);
  if (err == ORTHOD_OK && *info == 0) {
    e = orthod__cu_eigh_reorder(w, q, wl, z, n, c->stream);
    if (e != cudaSuccess) err = cu_fail(c, e, op, "orthod__cu_eigh_reorder");
  }
  dev_free(c, buf);
  return err;
}

static orthod_err_t eigh_f64(cuda_ctx *c, float *w, float *q, const float *a, int64_t n, int *info) {
  const char *op = "eigh";
  size_t nn = (size_t)n * (size_t)n;
  void *buf = NULL, *work_buf = NULL;
  ORTHOD_TRY(dev_alloc(c, carve_size(nn * sizeof(double)) + carve_size((size_t)n * sizeof(double)),
                       op, &buf));
  carver cv = {.base = buf, .off = 0};
  double *z = carve(&cv, nn * sizeof(double));
  double *wl = carve(&cv, (size_t)n * sizeof(double));
  orthod_err_t err = ORTHOD_OK;
  int lwork = 0;
  cusolverStatus_t s = cusolverDnDsyevd_bufferSize(c->solver, CUSOLVER_EIG_MODE_VECTOR,
                                                   CUBLAS_FILL_MODE_LOWER, (int)n, z, (int)n, wl,
                                                   &lwork);
  if (s != CUSOLVER_STATUS_SUCCESS) err = solver_fail(c, s, op, "cusolverDnDsyevd_bufferSize");
  if (err == ORTHOD_OK) err = dev_alloc(c, carve_size((size_t)lwork * sizeof(double)), op, &work_buf);
  if (err == ORTHOD_OK) {
    cudaError_t e = orthod__cu_f32_to_f64(z, a, nn, c->stream);
    if (e != cudaSuccess) err = cu_fail(c, e, op, "orthod__cu_f32_to_f64");
  }
  if (err == ORTHOD_OK) {
    s = cusolverDnDsyevd(c->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, (int)n, z,
                         (int)n, wl, work_buf, lwork, c->dinfo);
    if (s != CUSOLVER_STATUS_SUCCESS) err = solver_fail(c, s, op, "cusolverDnDsyevd");
  }
  if (err == ORTHOD_OK) err = read_info(c, op, info);
  if (err == ORTHOD_OK && *info == 0) {
    cudaError_t e = orthod__cu_eigh_reorder_f64(w, q, wl, z, n, c->stream);
    if (e != cudaSuccess) err = cu_fail(c, e, op, "orthod__cu_eigh_reorder_f64");
  }
  dev_free(c, work_buf);
  dev_free(c, buf);
  return err;
}

static orthod_err_t cuda_eigh(void *vctx, float *w, float *q, const float *a, int64_t n) {
  cuda_ctx *c = vctx;
  ENTER(c, "eigh");
  if (!fits_int(n) || !fits_int(n * n))
    return orthod__fail(ORTHOD_E_OVERFLOW, "cuda eigh: %lldx%lld exceeds cuSOLVER's int range",
                        (long long)n, (long long)n);
  int info = 0;
  ORTHOD_TRY(eigh_f32(c, w, q, a, n, &info));
  if (info == 0) return ORTHOD_OK;
  ORTHOD_LOG(ORTHOD_LOG_INFO, "cuda eigh: ssyevd failed (info %d), retrying in fp64", info);
  ORTHOD_TRY(eigh_f64(c, w, q, a, n, &info));
  if (info != 0) return info_fail("eigh", "cusolverDnDsyevd", info);
  return ORTHOD_OK;
}

/* ---- construction --------------------------------------------------------------------------- */

static const orthod_backend_i cuda_iface = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .sync = cuda_sync,
    .gemm = cuda_gemm,
    .syrk = cuda_syrk,
    .copy = cuda_copy,
    .zero = cuda_zero,
    .axpy = cuda_axpy,
    .scale = cuda_scale,
    .lerp = cuda_lerp,
    .round_bf16 = cuda_round_bf16,
    .transpose = cuda_transpose,
    .normalize = cuda_normalize,
    .norm = cuda_norm,
    .dot = cuda_dot,
    .scale_by = cuda_scale_by,
    .count_nonfinite = cuda_count_nonfinite,
    .hyperball = cuda_hyperball,
    .radial_brake = cuda_radial_brake,
    .relative_update = cuda_relative_update,
    .adamuon = cuda_adamuon,
    .normuon = cuda_normuon,
    .namo_moment = cuda_namo_moment,
    .namo_scale = cuda_namo_scale,
    .adamw = cuda_adamw,
    .polar_svd = cuda_polar_svd,
    .eigh = cuda_eigh,
    .read = cuda_read,
};

/* Device count and, when it is 0, the runtime's reason. */
static int device_count(cudaError_t *why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (why != NULL) *why = e;
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n < 0 ? 0 : n;
}

int orthod_backend_cuda_device_count(void) { return device_count(NULL); }

static void version_text(char *buf, size_t len, int v) {
  snprintf(buf, len, "%d.%d", v / 1000, (v % 1000) / 10);
}

orthod_err_t orthod_backend_cuda_describe(int device, char *buf, size_t len) {
  if (buf != NULL && len > 0) buf[0] = '\0';
  cudaError_t why = cudaSuccess;
  int count = device_count(&why);
  if (device < 0 || device >= count)
    return orthod__fail(ORTHOD_E_UNSUPPORTED, "cuda: no CUDA device %d (%d present%s%s)", device,
                        count, why != cudaSuccess ? ": " : "",
                        why != cudaSuccess ? cudaGetErrorString(why) : "");
  struct cudaDeviceProp prop;
  cudaError_t e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) return cu_fail(NULL, e, "describe", "cudaGetDeviceProperties");
  int rt = 0, drv = 0;
  if (cudaRuntimeGetVersion(&rt) != cudaSuccess) (void)cudaGetLastError();
  if (cudaDriverGetVersion(&drv) != cudaSuccess) (void)cudaGetLastError();
  char rts[16], drvs[16];
  version_text(rts, sizeof rts, rt);
  version_text(drvs, sizeof drvs, drv);
  if (buf != NULL && len > 0)
    snprintf(buf, len, "%s (device %d, sm_%d%d, %d SMs, %.1f GiB, runtime %s, driver %s)", prop.name,
             device, prop.major, prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (double)(1u << 30), rts, drvs);
  return ORTHOD_OK;
}

/* The context's fixed resources; on failure the caller destroys the partial context. */
static orthod_err_t ctx_init(cuda_ctx *c) {
  const char *op = "create";
  CU(c, op, cudaSetDevice, (c->device));
  int pools = 0;
  CU(c, op, cudaDeviceGetAttribute, (&pools, cudaDevAttrMemoryPoolsSupported, c->device));
  c->pools = pools != 0;
  CU(c, op, cudaStreamCreateWithFlags, (&c->stream, cudaStreamNonBlocking));
  /* The device must run this build's code (sm_XX SASS or PTX it can JIT). */
  cudaError_t pe = orthod__cu_probe(c->stream);
  if (pe != cudaSuccess) {
    (void)cudaGetLastError();
    struct cudaDeviceProp prop;
    int major = 0, minor = 0;
    if (cudaGetDeviceProperties(&prop, c->device) == cudaSuccess) {
      major = prop.major;
      minor = prop.minor;
    } else {
      (void)cudaGetLastError();
    }
    if (pe == cudaErrorNoKernelImageForDevice || pe == cudaErrorUnsupportedPtxVersion ||
        pe == cudaErrorInvalidKernelImage)
      return orthod__fail(ORTHOD_E_UNSUPPORTED,
                          "cuda create: device %d (sm_%d%d) cannot run this build's kernels (%s); "
                          "rebuild with -DCMAKE_CUDA_ARCHITECTURES=%d%d",
                          c->device, major, minor, cudaGetErrorName(pe), major, minor);
    return cu_fail(c, pe, op, "a test kernel launch");
  }
  CU(c, op, cudaMalloc, (&c->blas_ws, CUBLAS_WS_BYTES));
  void *p = NULL;
  CU(c, op, cudaMalloc, (&p, STAGE_SLOTS * STAGE_BYTES));
  c->dev_stage = p;
  p = NULL;
  CU(c, op, cudaHostAlloc, (&p, STAGE_SLOTS * STAGE_BYTES, cudaHostAllocDefault));
  c->host_stage = p;
  size_t small_bytes = carve_size(N_SCALARS * sizeof(float)) + carve_size(sizeof(unsigned long long)) +
                       carve_size(sizeof(int));
  CU(c, op, cudaMalloc, (&c->small, small_bytes));
  CU(c, op, cudaMemset, (c->small, 0, small_bytes));
  carver cv = {.base = c->small, .off = 0};
  c->scal = carve(&cv, N_SCALARS * sizeof(float));
  c->dcount = carve(&cv, sizeof(unsigned long long));
  c->dinfo = carve(&cv, sizeof(int));
  CU(c, op, cudaHostAlloc, (&c->small_host, 64, cudaHostAllocDefault));
  c->hcount = c->small_host;
  c->hinfo = (int *)(void *)((unsigned char *)c->small_host + 32);
  for (int i = 0; i < STAGE_SLOTS; i++)
    CU(c, op, cudaEventCreateWithFlags, (&c->stage_ev[i], cudaEventDisableTiming));
  CUBLAS(c, op, cublasCreate, (&c->blas));
  /* cublasSetStream resets the workspace to cuBLAS's default pool: set the stream first. */
  CUBLAS(c, op, cublasSetStream, (c->blas, c->stream));
  CUBLAS(c, op, cublasSetWorkspace, (c->blas, c->blas_ws, CUBLAS_WS_BYTES));
  CUBLAS(c, op, cublasSetMathMode, (c->blas, CUBLAS_DEFAULT_MATH));
  CUBLAS(c, op, cublasSetPointerMode, (c->blas, CUBLAS_POINTER_MODE_HOST));
  CUSOLVER(c, op, cusolverDnCreate, (&c->solver));
  CUSOLVER(c, op, cusolverDnSetStream, (c->solver, c->stream));
  return ORTHOD_OK;
}

orthod_err_t orthod_backend_create_cuda(const orthod_backend_opts_t *opts, orthod_backend_t **out) {
  if (out == NULL) return orthod__fail(ORTHOD_E_INVAL, "create_cuda: output pointer is NULL");
  *out = NULL;
  int device = opts != NULL ? opts->device : 0;
  if (device < 0)
    return orthod__fail(ORTHOD_E_INVAL, "create_cuda: device %d must be >= 0", device);
  cudaError_t why = cudaSuccess;
  int count = device_count(&why);
  if (count == 0)
    return orthod__fail(ORTHOD_E_UNSUPPORTED, "no CUDA device (%s%s%s)",
                        why != cudaSuccess ? cudaGetErrorName(why) : "the runtime reports 0 devices",
                        why != cudaSuccess ? ": " : "",
                        why != cudaSuccess ? cudaGetErrorString(why) : "");
  if (device >= count)
    return orthod__fail(ORTHOD_E_INVAL, "create_cuda: device %d does not exist (%d CUDA device%s)",
                        device, count, count == 1 ? "" : "s");
  cuda_ctx *c = calloc(1, sizeof *c);
  if (c == NULL) return orthod__fail(ORTHOD_E_NOMEM, "create_cuda: out of host memory");
  c->device = device;
  orthod_err_t err = ctx_init(c);
  if (err != ORTHOD_OK) {
    cuda_destroy(c);
    return err;
  }
  char desc[256];
  if (orthod_backend_cuda_describe(device, desc, sizeof desc) == ORTHOD_OK)
    ORTHOD_LOG(ORTHOD_LOG_INFO, "cuda backend: %s, stream-ordered allocator %s", desc,
               c->pools ? "on" : "off");
  return orthod__backend_new(&cuda_iface, c, out);
}
