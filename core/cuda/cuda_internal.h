/* cuda_internal.h — the launchers of the CUDA backend's kernels (kernels.cu), behind plain C.
 * Each launcher enqueues its kernels on the given stream and returns the launch status
 * (cudaGetLastError right after each launch); execution errors surface at the next
 * synchronisation. Pointers are device pointers unless said otherwise. Element counts are size_t,
 * matrix dimensions int64_t (row-major, leading dimension `ld` in elements). */
#ifndef ORTHOD_CUDA_INTERNAL_H
#define ORTHOD_CUDA_INTERNAL_H

#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- conversions (bit-exact with core/src/tensor.c) ------------------------------------------ */

/* dst[i] = fp32 value of the bf16 (bf16 = true) or fp16 bit pattern src[i]. */
cudaError_t orthod__cu_widen(float *dst, const uint16_t *src, bool bf16, size_t n, cudaStream_t st);
/* dst[i] = RNE bf16 / fp16 bit pattern of src[i] (quiet NaN kept, overflow to ±inf). */
cudaError_t orthod__cu_narrow(uint16_t *dst, const float *src, bool bf16, size_t n, cudaStream_t st);
/* dst[i] = (double)src[i] and back. */
cudaError_t orthod__cu_f32_to_f64(double *dst, const float *src, size_t n, cudaStream_t st);

/* ---- elementwise ------------------------------------------------------------------------------ */

cudaError_t orthod__cu_axpy(float *y, float a, const float *x, size_t n, cudaStream_t st);
cudaError_t orthod__cu_scale(float *x, float s, size_t n, cudaStream_t st);
/* x[i] *= s[0] for a device scalar s. */
cudaError_t orthod__cu_scale_by(float *x, const float *s, size_t n, cudaStream_t st);
cudaError_t orthod__cu_lerp(float *out, const float *s, const float *e, float w, size_t n,
                            cudaStream_t st);
cudaError_t orthod__cu_round_bf16(float *x, size_t n, cudaStream_t st);
/* Round the rows x cols entries of `batch` matrices (leading dim ld, element stride `stride`)
 * to bf16; padding between rows and matrices is not touched. */
cudaError_t orthod__cu_round_bf16_matrix(float *c, int64_t batch, int64_t stride, int64_t rows,
                                         int64_t cols, int64_t ld, cudaStream_t st);
/* For each of `batch` n x n matrices: C[j][i] = C[i][j] for i > j (the lower triangle wins),
 * rounding the lower triangle and the diagonal to bf16 first when `round`. */
cudaError_t orthod__cu_mirror_lower(float *c, int64_t batch, int64_t stride, int64_t n, int64_t ld,
                                    bool round, cudaStream_t st);
/* out (batch x cols x rows) = transpose of each in (batch x rows x cols), contiguous. */
cudaError_t orthod__cu_transpose(float *out, const float *in, int64_t batch, int64_t rows,
                                 int64_t cols, cudaStream_t st);
/* Count of entries whose exponent bits are all ones, added to *count (zero it first). */
cudaError_t orthod__cu_count_nonfinite(unsigned long long *count, const float *x, size_t n,
                                       cudaStream_t st);

/* ---- reductions -------------------------------------------------------------------------------
 * Deterministic segmented sums: `batch` slices of n contiguous elements; each slice is cut into a
 * number of blocks that depends only on n, each block sums its part in a fixed order (per-thread
 * strided partial sums, then a shared-memory tree), and a second pass sums the block partials of
 * a slice in a fixed order. Same input, same device, same bits. */
typedef enum {
  ORTHOD_CU_SUMSQ = 0,     /* Σ x², fp32 accumulation, sums are float */
  ORTHOD_CU_DOT = 1,       /* Σ x·y, fp32 (batch must be 1), sums are float */
  ORTHOD_CU_SUMSQ_F64 = 2, /* Σ (double)x², fp64 accumulation, sums are double */
} orthod_cu_reduce_t;

/* Bytes of workspace orthod__cu_reduce needs (0 when one block per slice is enough). */
size_t orthod__cu_reduce_ws_bytes(int64_t batch, size_t n, orthod_cu_reduce_t kind);
/* sums[b] (float or double, see the kind) = the reduction of slice b; with take_sqrt (float
 * kinds only) sums[b] = sqrtf(Σ). ws: orthod__cu_reduce_ws_bytes bytes, 256-byte aligned. */
cudaError_t orthod__cu_reduce(void *sums, const float *x, const float *y, int64_t batch, size_t n,
                              orthod_cu_reduce_t kind, bool take_sqrt, void *ws, cudaStream_t st);

/* normalize: x_b /= d_b, d_b = fp32(sqrt(double sum_b)) when in_double (sums are double), else
 * max(sqrtf(sum_b), eps) (sums are float). */
cudaError_t orthod__cu_normalize_apply(float *x, int64_t batch, size_t n, const void *sums,
                                       float eps, bool in_double, cudaStream_t st);

/* x *= f, where f is computed on the device from the device scalars s0, s1 (fp32 sums of squares
 * or states) and the parameters p0..p2, with the CPU backend's formulas (backend_cpu.c). */
typedef enum {
  ORTHOD_CU_F_HYPERBALL = 0, /* s0 = Σx²; p0 radius, p1 eps */
  ORTHOD_CU_F_RADIAL = 1,    /* s0 = Σp², s1 = n0 (a norm); p0 outward, p1 inward, p2 eps */
  ORTHOD_CU_F_RELATIVE = 2,  /* s0 = Σp², s1 = Σu²; p0 eps */
  ORTHOD_CU_F_NAMO = 3,      /* s0 = Σu², s1 = v; p0 eps */
  ORTHOD_CU_F_RATIO = 4,     /* s0 = Σ(old)², s1 = Σ(new)²; p0 eps: ‖old‖ / max(‖new‖, eps) */
} orthod_cu_factor_t;
cudaError_t orthod__cu_scale_factor(float *x, size_t n, orthod_cu_factor_t op, const float *s0,
                                    const float *s1, float p0, float p1, float p2,
                                    cudaStream_t st);

/* ---- optimizer kernels ------------------------------------------------------------------------ */

cudaError_t orthod__cu_adamuon(float *o, float *v, size_t n, float w, float eps, cudaStream_t st);

/* NorMuon second moment of the m x n matrix o. per_row: sums = Σ_j o_ij² per row (from
 * orthod__cu_reduce), V has m entries; else the column sums are formed here in row order (as the
 * CPU does), V has n entries. Updates V and writes the factors 1/sqrt(max(V, eps)) to fac (m or n
 * floats). Then orthod__cu_scale_rows_cols applies them. */
cudaError_t orthod__cu_normuon_moment(float *v, float *fac, const float *o, const float *sums,
                                      int64_t m, int64_t n, bool per_row, float w, float eps,
                                      cudaStream_t st);
/* o_ij *= fac[i] (per_row) or fac[j]. */
cudaError_t orthod__cu_scale_rows_cols(float *o, const float *fac, int64_t m, int64_t n,
                                       bool per_row, cudaStream_t st);
/* v[0] = lerp(v[0], sqrtf(sum[0])², w). */
cudaError_t orthod__cu_namo_moment(float *v, const float *sum, float w, cudaStream_t st);

/* torch.optim.AdamW element update with the scalars formed on the host (backend_cpu.c). */
typedef struct {
  float decay;      /* 1 - lr·wd, used when decayed */
  float w1;         /* 1 - beta1 */
  float b2, omb2;   /* beta2, 1 - beta2 */
  float neg_step;   /* -(lr / bc1) */
  float bc2_sqrt;   /* sqrt(bc2) */
  float eps;
  int decayed;      /* weight_decay != 0 */
  int amsgrad;
} orthod_cu_adamw_t;
cudaError_t orthod__cu_adamw(float *p, const float *g, float *m, float *v, float *vmax, size_t n,
                             orthod_cu_adamw_t a, cudaStream_t st);

/* ---- solver helpers --------------------------------------------------------------------------- */

/* out[0] = s[0] + s[1] + ... + s[k-1], summed in order in fp32. */
cudaError_t orthod__cu_sum_ordered(float *out, const float *s, int64_t k, cudaStream_t st);
/* From column-major eigenvectors z (n x n, ascending eigenvalues wl): w[j] = wl[n-1-j],
 * q[i n + j] = z[i + (n-1-j) n]. The _f64 variant reads double z and wl. */
cudaError_t orthod__cu_eigh_reorder(float *w, float *q, const float *wl, const float *z, int64_t n,
                                    cudaStream_t st);
cudaError_t orthod__cu_eigh_reorder_f64(float *w, float *q, const double *wl, const double *z,
                                        int64_t n, cudaStream_t st);

/* Launch one trivial kernel and wait: cudaErrorNoKernelImageForDevice (or another error) when the
 * device cannot run this build's code. */
cudaError_t orthod__cu_probe(cudaStream_t st);

#ifdef __cplusplus
}
#endif
#endif
