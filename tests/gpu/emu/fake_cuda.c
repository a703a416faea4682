/* fake_cuda.c — a host stand-in for the CUDA runtime, cuBLAS and cuSOLVER calls that
 * core/cuda/backend_cuda.c makes, for the emulated GPU tests: "device" memory is host memory
 * registered here, copies are memmove, streams and events are tokens (everything completes at
 * once), GEMMs are column-major loops with the documented argument rules, SVD and eigh are
 * LAPACK. Arguments are checked as strictly as the libraries document (leading dimensions,
 * gesvd's rows >= columns, transfer directions, operand extents inside one device allocation),
 * and a violation aborts with a message: that is what these tests are for. Nothing here says
 * how the real libraries perform or round; it checks how the backend drives them. */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>
#include <lapacke.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_cuda.h"
#include "orthod/tensor.h"

struct CUstream_st {
  int token;
};
struct CUevent_st {
  int recorded;
};
struct cublasContext {
  cudaStream_t stream;
  void *ws;
  size_t ws_bytes;
};
struct cusolverDnContext {
  cudaStream_t stream;
};

static cudaError_t g_last = cudaSuccess;
static cudaError_t set_last(cudaError_t e) {
  if (e != cudaSuccess) g_last = e;
  return e;
}

static void die(const char *what) {
  fprintf(stderr, "fake_cuda: %s\n", what);
  abort();
}

/* ---- memory registry ------------------------------------------------------------------------ */

typedef struct {
  unsigned char *p;
  size_t bytes;
  bool device; /* else pinned host */
} region;

static region *g_regions;
static size_t g_nregions, g_cap;
static size_t g_device_bytes; /* live device bytes */

static void reg_add(void *p, size_t bytes, bool device) {
  if (g_nregions == g_cap) {
    g_cap = g_cap ? 2 * g_cap : 256;
    g_regions = realloc(g_regions, g_cap * sizeof *g_regions);
    if (g_regions == NULL) die("out of host memory");
  }
  g_regions[g_nregions++] = (region){.p = p, .bytes = bytes, .device = device};
  if (device) g_device_bytes += bytes;
}

static bool reg_remove(void *p, bool device) {
  for (size_t i = 0; i < g_nregions; i++)
    if (g_regions[i].p == p && g_regions[i].device == device) {
      if (device) g_device_bytes -= g_regions[i].bytes;
      g_regions[i] = g_regions[--g_nregions];
      return true;
    }
  return false;
}

/* Is [p, p + bytes) inside one device allocation? */
static bool in_device(const void *p, size_t bytes) {
  const unsigned char *c = p;
  for (size_t i = 0; i < g_nregions; i++)
    if (g_regions[i].device && c >= g_regions[i].p && c + bytes <= g_regions[i].p + g_regions[i].bytes)
      return true;
  return false;
}

static bool touches_device(const void *p, size_t bytes) {
  const unsigned char *c = p;
  for (size_t i = 0; i < g_nregions; i++)
    if (g_regions[i].device && c < g_regions[i].p + g_regions[i].bytes && g_regions[i].p < c + bytes)
      return true;
  return false;
}

static void need_device(const char *call, const char *what, const void *p, size_t bytes) {
  if (bytes == 0) return;
  if (!in_device(p, bytes)) {
    fprintf(stderr, "fake_cuda: %s: %s [%p, +%zu bytes) is not inside one device allocation\n",
            call, what, p, bytes);
    abort();
  }
}

size_t fake_cuda_device_bytes(void) { return g_device_bytes; }

#define FAKE_DEVICE_MEMORY ((size_t)80 << 30)

static cudaError_t dev_alloc(void **p, size_t bytes) {
  if (bytes > FAKE_DEVICE_MEMORY) {
    *p = NULL;
    return set_last(cudaErrorMemoryAllocation);
  }
  *p = aligned_alloc(256, (bytes + 255) & ~(size_t)255);
  if (*p == NULL) return set_last(cudaErrorMemoryAllocation);
  reg_add(*p, bytes, true);
  return cudaSuccess;
}

static cudaError_t dev_free(void *p) {
  if (p == NULL) return cudaSuccess;
  if (!reg_remove(p, true)) die("free of a pointer that is not a device allocation");
  free(p);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) { return dev_alloc(p, bytes); }
cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t s) {
  if (s == NULL) die("cudaMallocAsync on the legacy stream");
  return dev_alloc(p, bytes);
}
cudaError_t cudaFree(void *p) { return dev_free(p); }
cudaError_t cudaFreeAsync(void *p, cudaStream_t s) {
  if (s == NULL) die("cudaFreeAsync on the legacy stream");
  return dev_free(p);
}

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned int flags) {
  (void)flags;
  *p = aligned_alloc(256, (bytes + 255) & ~(size_t)255);
  if (*p == NULL) return set_last(cudaErrorMemoryAllocation);
  reg_add(*p, bytes, false);
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p) {
  if (p == NULL) return cudaSuccess;
  if (!reg_remove(p, false)) die("cudaFreeHost of a pointer that is not pinned host memory");
  free(p);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
  *total = FAKE_DEVICE_MEMORY;
  *free_b = FAKE_DEVICE_MEMORY - g_device_bytes;
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  (void)stream;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      need_device("cudaMemcpyAsync H2D", "dst", dst, count);
      if (touches_device(src, count)) die("cudaMemcpyAsync H2D: src is device memory");
      break;
    case cudaMemcpyDeviceToHost:
      need_device("cudaMemcpyAsync D2H", "src", src, count);
      if (touches_device(dst, count)) die("cudaMemcpyAsync D2H: dst is device memory");
      break;
    case cudaMemcpyDeviceToDevice:
      need_device("cudaMemcpyAsync D2D", "dst", dst, count);
      need_device("cudaMemcpyAsync D2D", "src", src, count);
      if ((const unsigned char *)dst < (const unsigned char *)src + count &&
          (const unsigned char *)src < (const unsigned char *)dst + count && dst != src)
        die("cudaMemcpyAsync D2D: overlapping ranges (undefined on the device)");
      break;
    default:
      die("cudaMemcpyAsync: unexpected kind");
  }
  memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t count, cudaStream_t stream) {
  (void)stream;
  need_device("cudaMemsetAsync", "dst", p, count);
  memset(p, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int value, size_t count) {
  need_device("cudaMemset", "dst", p, count);
  memset(p, value, count);
  return cudaSuccess;
}

/* ---- device, streams, events, errors -------------------------------------------------------- */

cudaError_t cudaGetDeviceCount(int *n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : set_last(cudaErrorInvalidDevice); }
cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr attr, int device) {
  (void)device;
  *v = 0;
  if (attr == cudaDevAttrMemoryPoolsSupported) *v = getenv("FAKE_CUDA_NO_POOLS") ? 0 : 1;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
  if (device != 0) return set_last(cudaErrorInvalidDevice);
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "emulated GPU (host CPU)");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->totalGlobalMem = FAKE_DEVICE_MEMORY;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
  *v = 13000;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
  (void)flags;
  *s = calloc(1, sizeof **s);
  return *s ? cudaSuccess : set_last(cudaErrorMemoryAllocation);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  free(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  (void)s;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
  (void)flags;
  *e = calloc(1, sizeof **e);
  return *e ? cudaSuccess : set_last(cudaErrorMemoryAllocation);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  free(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  (void)s;
  e->recorded = 1;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e->recorded) die("cudaEventSynchronize of an event never recorded");
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  cudaError_t e = g_last;
  g_last = cudaSuccess;
  return e;
}
const char *cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    default: return "cudaError (fake)";
  }
}
const char *cudaGetErrorString(cudaError_t e) {
  return e == cudaErrorMemoryAllocation ? "out of memory" : "fake CUDA error";
}

/* ---- cuBLAS --------------------------------------------------------------------------------- */

cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
  *h = calloc(1, sizeof **h);
  return *h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  free(h);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
  h->stream = s;
  h->ws = NULL; /* as documented: the workspace goes back to the default */
  h->ws_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void *ws, size_t bytes) {
  need_device("cublasSetWorkspace", "workspace", ws, bytes);
  if (((uintptr_t)ws & 255u) != 0) return CUBLAS_STATUS_INVALID_VALUE;
  h->ws = ws;
  h->ws_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
  (void)h;
  (void)mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t h, cublasPointerMode_t mode) {
  (void)h;
  return mode == CUBLAS_POINTER_MODE_HOST ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}
const char *cublasGetStatusName(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_(fake error)";
}
const char *cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "success" : "fake cuBLAS error";
}

static float tf32(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & 0xffffe000u;
  memcpy(&x, &u, sizeof x);
  return x;
}

static float in_round(float x, cublasComputeType_t ct) {
  if (ct == CUBLAS_COMPUTE_32F_FAST_TF32) return tf32(x);
  if (ct == CUBLAS_COMPUTE_32F_FAST_16BF) return orthod_round_bf16(x);
  return x;
}

/* Column-major C (m x n) = alpha·op(A)·op(B) + beta·C for `batch` matrices at the strides. */
static cublasStatus_t gemm(const char *call, cublasHandle_t h, cublasOperation_t ta,
                           cublasOperation_t tb, int m, int n, int k, const void *alpha,
                           const void *a, cudaDataType at, int lda, long long sa, const void *b,
                           cudaDataType bt, int ldb, long long sb, const void *beta, void *c,
                           cudaDataType ct_, int ldc, long long sc, int batch,
                           cublasComputeType_t ct) {
  if (h == NULL) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (at != CUDA_R_32F || bt != CUDA_R_32F || ct_ != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (ct != CUBLAS_COMPUTE_32F && ct != CUBLAS_COMPUTE_32F_FAST_TF32 &&
      ct != CUBLAS_COMPUTE_32F_FAST_16BF)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
    return CUBLAS_STATUS_INVALID_VALUE;
  int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
  int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
  if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < (ar > 1 ? ar : 1) || ldb < (br > 1 ? br : 1) ||
      ldc < (m > 1 ? m : 1)) {
    fprintf(stderr, "fake_cuda: %s: invalid value (m %d n %d k %d lda %d ldb %d ldc %d)\n", call, m, n,
            k, lda, ldb, ldc);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  float al = *(const float *)alpha, be = *(const float *)beta;
  const float *A = a, *B = b;
  float *C = c;
  /* op(A) and op(B) copied contiguous (and rounded as the compute type rounds inputs); each
   * C element is then summed over l in ascending order in fp32, vectorised across a column */
  float *ta2 = malloc(((size_t)m * k + (size_t)k * n + (size_t)m + 1) * sizeof(float));
  if (ta2 == NULL) return CUBLAS_STATUS_ALLOC_FAILED;
  float *tb2 = ta2 + (size_t)m * k, *acc = tb2 + (size_t)k * n;
  for (int bt2 = 0; bt2 < batch; bt2++) {
    const float *Ab = A + bt2 * sa, *Bb = B + bt2 * sb;
    float *Cb = C + bt2 * sc;
    if (m > 0 && k > 0) need_device(call, "A", Ab, ((size_t)(ac - 1) * (size_t)lda + (size_t)ar) * 4);
    if (n > 0 && k > 0) need_device(call, "B", Bb, ((size_t)(bc - 1) * (size_t)ldb + (size_t)br) * 4);
    if (m > 0 && n > 0) need_device(call, "C", Cb, ((size_t)(n - 1) * (size_t)ldc + (size_t)m) * 4);
    for (int l = 0; l < k; l++)
      for (int i = 0; i < m; i++)
        ta2[i + (size_t)l * m] =
            in_round(ta == CUBLAS_OP_N ? Ab[i + (size_t)l * lda] : Ab[l + (size_t)i * lda], ct);
    for (int j = 0; j < n; j++)
      for (int l = 0; l < k; l++)
        tb2[l + (size_t)j * k] =
            in_round(tb == CUBLAS_OP_N ? Bb[l + (size_t)j * ldb] : Bb[j + (size_t)l * ldb], ct);
    for (int j = 0; j < n; j++) {
      for (int i = 0; i < m; i++) acc[i] = 0.0f;
      for (int l = 0; l < k; l++) {
        float y = tb2[l + (size_t)j * k];
        const float *col = ta2 + (size_t)l * m;
        for (int i = 0; i < m; i++) acc[i] = acc[i] + col[i] * y;
      }
      float *cj = Cb + (size_t)j * ldc;
      for (int i = 0; i < m; i++) {
        float v = al * acc[i];
        if (be != 0.0f) v = v + be * cj[i];
        cj[i] = v;
      }
    }
  }
  free(ta2);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *a, cudaDataType at, int lda,
                            const void *b, cudaDataType bt, int ldb, const void *beta, void *c,
                            cudaDataType ct_, int ldc, cublasComputeType_t ct, cublasGemmAlgo_t algo) {
  (void)algo;
  return gemm("cublasGemmEx", h, ta, tb, m, n, k, alpha, a, at, lda, 0, b, bt, ldb, 0, beta, c, ct_,
              ldc, 0, 1, ct);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta,
                                          cublasOperation_t tb, int m, int n, int k,
                                          const void *alpha, const void *a, cudaDataType at, int lda,
                                          long long sa, const void *b, cudaDataType bt, int ldb,
                                          long long sb, const void *beta, void *c, cudaDataType ct_,
                                          int ldc, long long sc, int batch, cublasComputeType_t ct,
                                          cublasGemmAlgo_t algo) {
  (void)algo;
  return gemm("cublasGemmStridedBatchedEx", h, ta, tb, m, n, k, alpha, a, at, lda, sa, b, bt, ldb,
              sb, beta, c, ct_, ldc, sc, batch, ct);
}

/* ---- cuSOLVER ------------------------------------------------------------------------------- */

cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t *h) {
  *h = calloc(1, sizeof **h);
  return *h ? CUSOLVER_STATUS_SUCCESS : CUSOLVER_STATUS_ALLOC_FAILED;
}
cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t h) {
  free(h);
  return CUSOLVER_STATUS_SUCCESS;
}
cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t h, cudaStream_t s) {
  h->stream = s;
  return CUSOLVER_STATUS_SUCCESS;
}

static int gesvd_lwork(int m, int n) {
  int mn = m < n ? m : n, mx = m < n ? n : m;
  return 5 * mn + mx + 1;
}

cusolverStatus_t cusolverDnSgesvd_bufferSize(cusolverDnHandle_t h, int m, int n, int *lwork) {
  if (h == NULL || m < 0 || n < 0) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = gesvd_lwork(m, n);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnSgesvd(cusolverDnHandle_t h, signed char jobu, signed char jobvt, int m,
                                  int n, float *a, int lda, float *s, float *u, int ldu, float *vt,
                                  int ldvt, float *work, int lwork, float *rwork, int *info) {
  if (h == NULL) return CUSOLVER_STATUS_NOT_INITIALIZED;
  /* cuSOLVER's gesvd supports m >= n only; ldu >= m, ldvt >= n */
  if (m < n || lda < (m > 1 ? m : 1) || ldu < m || ldvt < n || lwork < gesvd_lwork(m, n) ||
      jobu != 'S' || jobvt != 'S') {
    fprintf(stderr, "fake_cuda: cusolverDnSgesvd: invalid value (m %d n %d lda %d ldu %d ldvt %d "
                    "lwork %d job %c%c)\n", m, n, lda, ldu, ldvt, lwork, jobu, jobvt);
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  int k = n;
  need_device("cusolverDnSgesvd", "A", a, ((size_t)(n - 1) * lda + (size_t)m) * 4);
  need_device("cusolverDnSgesvd", "S", s, (size_t)k * 4);
  need_device("cusolverDnSgesvd", "U", u, ((size_t)(k - 1) * ldu + (size_t)m) * 4);
  need_device("cusolverDnSgesvd", "VT", vt, ((size_t)(n - 1) * ldvt + (size_t)k) * 4);
  need_device("cusolverDnSgesvd", "work", work, (size_t)lwork * 4);
  if (k > 1) need_device("cusolverDnSgesvd", "rwork", rwork, (size_t)(k - 1) * 4);
  need_device("cusolverDnSgesvd", "info", info, sizeof *info);
  float *superb = malloc((size_t)(k > 1 ? k : 1) * sizeof *superb);
  *info = (int)LAPACKE_sgesvd(LAPACK_COL_MAJOR, 'S', 'S', m, n, a, lda, s, u, ldu, vt, ldvt, superb);
  free(superb);
  return CUSOLVER_STATUS_SUCCESS;
}

static int syevd_lwork(int n) { return 1 + 6 * n + 2 * n * n; }

cusolverStatus_t cusolverDnSsyevd_bufferSize(cusolverDnHandle_t h, cusolverEigMode_t jobz,
                                             cublasFillMode_t uplo, int n, const float *a, int lda,
                                             const float *w, int *lwork) {
  (void)jobz;
  (void)uplo;
  if (h == NULL || n < 0 || lda < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
  need_device("cusolverDnSsyevd_bufferSize", "A", a, (size_t)n * (size_t)lda * 4);
  need_device("cusolverDnSsyevd_bufferSize", "W", w, (size_t)n * 4);
  *lwork = syevd_lwork(n);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnDsyevd_bufferSize(cusolverDnHandle_t h, cusolverEigMode_t jobz,
                                             cublasFillMode_t uplo, int n, const double *a, int lda,
                                             const double *w, int *lwork) {
  (void)jobz;
  (void)uplo;
  if (h == NULL || n < 0 || lda < (n > 1 ? n : 1)) return CUSOLVER_STATUS_INVALID_VALUE;
  need_device("cusolverDnDsyevd_bufferSize", "A", a, (size_t)n * (size_t)lda * 8);
  need_device("cusolverDnDsyevd_bufferSize", "W", w, (size_t)n * 8);
  *lwork = syevd_lwork(n);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnSsyevd(cusolverDnHandle_t h, cusolverEigMode_t jobz,
                                  cublasFillMode_t uplo, int n, float *a, int lda, float *w,
                                  float *work, int lwork, int *info) {
  if (h == NULL || jobz != CUSOLVER_EIG_MODE_VECTOR || lda < n || lwork < syevd_lwork(n))
    return CUSOLVER_STATUS_INVALID_VALUE;
  need_device("cusolverDnSsyevd", "A", a, (size_t)n * (size_t)lda * 4);
  need_device("cusolverDnSsyevd", "W", w, (size_t)n * 4);
  need_device("cusolverDnSsyevd", "work", work, (size_t)lwork * 4);
  need_device("cusolverDnSsyevd", "info", info, sizeof *info);
  if (getenv("FAKE_CUDA_SSYEVD_FAILS") != NULL) { /* exercise the fp64 retry */
    *info = 1;
    return CUSOLVER_STATUS_SUCCESS;
  }
  *info = (int)LAPACKE_ssyevd(LAPACK_COL_MAJOR, 'V', uplo == CUBLAS_FILL_MODE_LOWER ? 'L' : 'U', n, a,
                              lda, w);
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnDsyevd(cusolverDnHandle_t h, cusolverEigMode_t jobz,
                                  cublasFillMode_t uplo, int n, double *a, int lda, double *w,
                                  double *work, int lwork, int *info) {
  if (h == NULL || jobz != CUSOLVER_EIG_MODE_VECTOR || lda < n || lwork < syevd_lwork(n))
    return CUSOLVER_STATUS_INVALID_VALUE;
  need_device("cusolverDnDsyevd", "A", a, (size_t)n * (size_t)lda * 8);
  need_device("cusolverDnDsyevd", "W", w, (size_t)n * 8);
  need_device("cusolverDnDsyevd", "work", work, (size_t)lwork * 8);
  need_device("cusolverDnDsyevd", "info", info, sizeof *info);
  *info = (int)LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', uplo == CUBLAS_FILL_MODE_LOWER ? 'L' : 'U', n, a,
                              lda, w);
  return CUSOLVER_STATUS_SUCCESS;
}
