/* orthod/backend.h — the device a parameter lives on, behind one interface.
 * A backend owns its device context (stream, BLAS handle, workspace) and must be used by one
 * thread at a time. Device pointers are `float *` in the backend's address space (host memory
 * for the CPU backend, device memory for CUDA); they are only dereferenced by the backend.
 * Every operation is enqueued in order on the backend's stream; orthod_backend_sync waits.
 * All matrices are row-major. Optimizer code is written once against these calls. */
#ifndef ORTHOD_BACKEND_H
#define ORTHOD_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orthod/error.h"
#include "orthod/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct orthod_backend orthod_backend_t;

/* Matmul precision of the spec (section 3.6). On the CPU `high` computes in fp32; `medium`
 * rounds every GEMM/SYRK output to bf16 (inputs are expected to be bf16 values already).
 * On CUDA: highest = cuBLAS COMPUTE_32F, high = COMPUTE_32F_FAST_TF32, medium =
 * COMPUTE_32F_FAST_16BF (bf16 tensor cores, fp32 accumulation and epilogue; exact for bf16-valued
 * inputs) followed by the same RNE rounding of the output to bf16 (docs/CUDA.md). */
typedef enum {
  ORTHOD_PREC_HIGHEST = 0,
  ORTHOD_PREC_HIGH = 1,
  ORTHOD_PREC_MEDIUM = 2,
} orthod_precision_t;

typedef struct {
  int threads; /* BLAS/compute threads for the CPU backend; 0 = library default */
  int device;  /* device ordinal for GPU backends */
} orthod_backend_opts_t;

/* Create the CPU backend (OpenBLAS). Caller owns *out; free with orthod_backend_destroy. */
ORTHOD_API orthod_err_t orthod_backend_create_cpu(const orthod_backend_opts_t *opts,
                                                  orthod_backend_t **out);

/* Create the CUDA backend on device opts->device (NULL opts: device 0): one stream, a cuBLAS
 * and a cuSOLVER handle, pinned staging buffers. Caller owns *out; free with
 * orthod_backend_destroy. Fails with E_UNSUPPORTED, the detail saying "this build has no CUDA
 * backend" (built without CUDA) or "no CUDA device" (no driver, no device, or a driver older than
 * the runtime), or that the device has no kernel image for its architecture; E_INVAL for a
 * negative device index or one past the device count. The backend must be used from one thread
 * at a time; it makes its device current on each call. */
ORTHOD_API orthod_err_t orthod_backend_create_cuda(const orthod_backend_opts_t *opts,
                                                   orthod_backend_t **out);

/* Number of CUDA devices this build can use: 0 without CUDA in the build, without a driver or
 * without a device. Never fails. */
ORTHOD_API int orthod_backend_cuda_device_count(void);

/* One line describing CUDA device `device` for logs, e.g. "NVIDIA H100 80GB HBM3 (device 0,
 * sm_90, 132 SMs, 79.1 GiB, runtime 13.0, driver 13.0)", into buf (always NUL-terminated when
 * len > 0). E_UNSUPPORTED without CUDA or without that device. */
ORTHOD_API orthod_err_t orthod_backend_cuda_describe(int device, char *buf, size_t len);

/* Destroy a backend and everything it allocated (NULL is a no-op). */
ORTHOD_API void orthod_backend_destroy(orthod_backend_t *be);

/* "cpu" or "cuda". */
ORTHOD_API const char *orthod_backend_name(const orthod_backend_t *be);

/* ---------------------------------------------------------------------------------------------
 * Memory. Allocations are accounted; a limit (0 = none) makes alloc fail with E_NOMEM. */

ORTHOD_API orthod_err_t orthod_backend_alloc(orthod_backend_t *be, size_t n_floats, float **out);
ORTHOD_API void orthod_backend_free(orthod_backend_t *be, float *p);
ORTHOD_API void orthod_backend_set_memory_limit(orthod_backend_t *be, size_t bytes);
ORTHOD_API size_t orthod_backend_memory_used(const orthod_backend_t *be);
ORTHOD_API size_t orthod_backend_memory_limit(const orthod_backend_t *be);

/* Scratch memory that lives until orthod_backend_scratch_reset(be, mark). Pointers handed out
 * stay valid until reset past them (blocks never move). Used for NS and update temporaries. */
ORTHOD_API size_t orthod_backend_scratch_mark(orthod_backend_t *be);
ORTHOD_API orthod_err_t orthod_backend_scratch(orthod_backend_t *be, size_t n_floats, float **out);
ORTHOD_API void orthod_backend_scratch_reset(orthod_backend_t *be, size_t mark);

/* ---------------------------------------------------------------------------------------------
 * Transfers (asynchronous where the backend can: the host buffer must stay valid until
 * orthod_backend_sync). Conversion to/from fp32 happens in the backend (RNE). */

ORTHOD_API orthod_err_t orthod_backend_upload(orthod_backend_t *be, float *dst, const void *src,
                                              orthod_dtype_t src_dtype, size_t n);
ORTHOD_API orthod_err_t orthod_backend_download(orthod_backend_t *be, void *dst,
                                                orthod_dtype_t dst_dtype, const float *src,
                                                size_t n);
ORTHOD_API orthod_err_t orthod_backend_sync(orthod_backend_t *be);

/* ---------------------------------------------------------------------------------------------
 * BLAS-like operations (row-major; `batch` matrices at the given element strides). */

typedef struct {
  bool trans_a, trans_b;     /* op(A) is m x k, op(B) is k x n */
  int64_t m, n, k;
  float alpha, beta;         /* C = alpha * op(A) op(B) + beta * C (C not read when beta == 0) */
  const float *a; int64_t lda; int64_t stride_a;
  const float *b; int64_t ldb; int64_t stride_b;
  float *c; int64_t ldc; int64_t stride_c;
  int64_t batch;             /* >= 1 */
  orthod_precision_t precision;
} orthod_gemm_t;

ORTHOD_API orthod_err_t orthod_backend_gemm(orthod_backend_t *be, const orthod_gemm_t *g);

/* Symmetric product C = alpha * A Aᵀ + beta * C (trans = false, A is n x k) or
 * alpha * Aᵀ A + beta * C (trans = true, A is k x n). Both triangles of C are written and C
 * must be symmetric on input when beta != 0. C must not overlap A. */
typedef struct {
  bool trans;
  int64_t n, k;
  float alpha, beta;
  const float *a; int64_t lda; int64_t stride_a;
  float *c; int64_t ldc; int64_t stride_c;
  int64_t batch;
  orthod_precision_t precision;
} orthod_syrk_t;

ORTHOD_API orthod_err_t orthod_backend_syrk(orthod_backend_t *be, const orthod_syrk_t *s);

/* ---------------------------------------------------------------------------------------------
 * Elementwise and reduction kernels. n is the element count. Scalars marked (float) are used
 * as fp32 values exactly as passed; double arguments are the caller's double-precision values
 * that the kernel rounds to fp32 once. Output buffers may alias inputs unless said otherwise. */

/* dst[i] = src[i] (device to device). */
ORTHOD_API orthod_err_t orthod_backend_copy(orthod_backend_t *be, float *dst, const float *src,
                                            size_t n);
/* x[i] = 0. */
ORTHOD_API orthod_err_t orthod_backend_zero(orthod_backend_t *be, float *x, size_t n);
/* y[i] = y[i] + a * x[i]   (torch add_ with alpha; also weight decay p + (-k) p with x = y). */
ORTHOD_API orthod_err_t orthod_backend_axpy(orthod_backend_t *be, float *y, float a,
                                            const float *x, size_t n);
/* x[i] = x[i] * s. */
ORTHOD_API orthod_err_t orthod_backend_scale(orthod_backend_t *be, float *x, float s, size_t n);
/* out[i] = lerp(s[i], e[i], w) with PyTorch's two-branch formula (spec 1.6). */
ORTHOD_API orthod_err_t orthod_backend_lerp(orthod_backend_t *be, float *out, const float *s,
                                            const float *e, float w, size_t n);
/* x[i] = bf16(x[i]). */
ORTHOD_API orthod_err_t orthod_backend_round_bf16(orthod_backend_t *be, float *x, size_t n);
/* out (batch x cols x rows) = transpose of each in (batch x rows x cols). out must not alias in. */
ORTHOD_API orthod_err_t orthod_backend_transpose(orthod_backend_t *be, float *out,
                                                 const float *in, int64_t batch, int64_t rows,
                                                 int64_t cols);
/* Per slice b of `batch` slices of n elements: x_b = x_b / max(‖x_b‖_F, eps) with an fp32
 * sum of squares; with in_double: x_b / fp32(sqrt(fp64 sum of squares)), eps not applied. */
ORTHOD_API orthod_err_t orthod_backend_normalize(orthod_backend_t *be, float *x, int64_t batch,
                                                 size_t n, float eps, bool in_double);
/* Write ‖x‖_F (fp32 accumulation) of each slice to the device scalars out[0..batch). */
ORTHOD_API orthod_err_t orthod_backend_norm(orthod_backend_t *be, float *out, const float *x,
                                            int64_t batch, size_t n);
/* out[0] = Σ x[i]·y[i] (fp32). */
ORTHOD_API orthod_err_t orthod_backend_dot(orthod_backend_t *be, float *out, const float *x,
                                           const float *y, size_t n);
/* x[i] = x[i] * s[0] for a device scalar s. */
ORTHOD_API orthod_err_t orthod_backend_scale_by(orthod_backend_t *be, float *x, const float *s,
                                                size_t n);
/* Count of non-finite entries written to *count_host (synchronises). */
ORTHOD_API orthod_err_t orthod_backend_count_nonfinite(orthod_backend_t *be, const float *x,
                                                       size_t n, size_t *count_host);

/* x = R·x/max(‖x‖, eps), or 0 when ‖x‖ < eps (HyperballHook pre and post). */
ORTHOD_API orthod_err_t orthod_backend_hyperball(orthod_backend_t *be, float *x, size_t n,
                                                 float radius, float eps);
/* RadialBrakeHook post: n1 = ‖p‖ (0 if < eps), Δ = n1 - n0[0]; k = outward if Δ >= eps,
 * inward if Δ <= -eps, else 0; p = p·((n0 + kΔ)/max(n1, eps)), or 0 when n1 < eps. n0 is the
 * device scalar written by orthod_backend_norm before the update (already 0 if < eps). */
ORTHOD_API orthod_err_t orthod_backend_radial_brake(orthod_backend_t *be, float *p, size_t n,
                                                    const float *n0, float outward,
                                                    float inward, float eps);
/* RelativeUpdateHook pre: u = u·‖p‖/max(‖u‖, eps), or 0 when either norm < eps. */
ORTHOD_API orthod_err_t orthod_backend_relative_update(orthod_backend_t *be, float *u,
                                                       const float *p, size_t n, float eps);

/* AdaMuon second moment: V = lerp(V, O⊙O, w); O = O / (sqrt(V) + eps). */
ORTHOD_API orthod_err_t orthod_backend_adamuon(orthod_backend_t *be, float *o, float *v,
                                               size_t n, float w, float eps);
/* NorMuon on an m x n matrix O: r = mean(O⊙O) over dim -1 (per_row: V is m) or dim -2
 * (V is n); V = lerp(V, r, w); Ũ = O ⊙ rsqrt(max(V, eps)); O = Ũ·(‖O‖_F / max(‖Ũ‖_F, eps)). */
ORTHOD_API orthod_err_t orthod_backend_normuon(orthod_backend_t *be, float *o, float *v,
                                               int64_t m, int64_t n, bool per_row, float w,
                                               float eps);
/* NAMO: v[0] = lerp(v[0], ‖g‖², w) (g: raw gradient after decay). */
ORTHOD_API orthod_err_t orthod_backend_namo_moment(orthod_backend_t *be, float *v,
                                                   const float *g, size_t n, float w);
/* NAMO: O = O · (‖u‖_F / (sqrt(v[0]) + eps)) with u the post-momentum tensor. */
ORTHOD_API orthod_err_t orthod_backend_namo_scale(orthod_backend_t *be, float *o, const float *u,
                                                  const float *v, size_t n, float eps);

/* torch.optim.AdamW step on n elements at 1-based step t (m, v, vmax state; vmax used only
 * with amsgrad). Bias corrections and step size are formed in double as torch does. */
typedef struct {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;
  bool amsgrad;
} orthod_adamw_args_t;
ORTHOD_API orthod_err_t orthod_backend_adamw(orthod_backend_t *be, float *p, const float *g,
                                             float *m, float *v, float *vmax, size_t n,
                                             const orthod_adamw_args_t *args);

/* Polar factor by thin SVD of the m x n matrix a = P Σ Qᵀ: out = P Qᵀ (m x n, may not alias a);
 * nuclear (device scalar, may be NULL) = Σ σ_i. E_NUMERIC if the SVD does not converge. */
ORTHOD_API orthod_err_t orthod_backend_polar_svd(orthod_backend_t *be, float *out,
                                                 float *nuclear, const float *a, int64_t m,
                                                 int64_t n);

/* Symmetric eigendecomposition of the n x n matrix a (row-major, symmetric): eigenvalues in
 * descending order to w (n), eigenvectors as columns of q (n x n). Retries in fp64 on failure. */
ORTHOD_API orthod_err_t orthod_backend_eigh(orthod_backend_t *be, float *w, float *q,
                                            const float *a, int64_t n);

/* Read `n` device floats into host memory (synchronises). For tests, tools and small scalars. */
ORTHOD_API orthod_err_t orthod_backend_read(orthod_backend_t *be, float *host, const float *src,
                                            size_t n);

#ifdef __cplusplus
}
#endif
#endif
