/* test_cuda_ns.c — Newton–Schulz on the CUDA backend against the CPU backend: every coefficient
 * set, every precision, SYRK on and off, wide, tall (transposed), square and batched inputs, 0
 * steps, custom tuples, normalize_in_double, and the spectral utilities.
 *
 * Bounds (relative Frobenius error of the result vs the CPU's) were measured by emulating the
 * GPU's arithmetic in NumPy on these shapes (method in docs/CUDA.md): every GEMM
 * of the iteration computed (a) in fp32 with another summation order (highest, medium) and
 * (b) with TF32-rounded inputs, both round-to-nearest and truncating (high). Worst measured /
 * bound used:
 *   highest  1.5e-6 (quintic) .. 8.8e-6 (cans)          -> 1e-5, cans 3e-5
 *   high     2.6e-3 (quintic) .. 8.9e-3 (aol), 2.6e-2 (cans) -> 1.5e-2, aol 3e-2, cans 6e-2
 *   medium   5.6e-3 (quintic) .. 1.4e-2 (aol)           -> 3e-2, aol and cans 5e-2
 * The sets with large leading coefficients (cans a = 8.47, polar_express 8.21, aol) amplify
 * early differences the most; TF32 (10-bit mantissas) is the coarsest input rounding. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gputest.h"
#include "orthod/newton_schulz.h"

static orthod_backend_t *D(void) { return gt_dut(); }
static orthod_backend_t *R(void) { return gt_ref(); }

static double ns_bound(orthod_coef_type_t t, orthod_precision_t p) {
  bool cans = t == ORTHOD_COEF_CANS, aol = t == ORTHOD_COEF_AOL;
  switch (p) {
    case ORTHOD_PREC_HIGHEST: return cans ? 3e-5 : 1e-5;
    case ORTHOD_PREC_HIGH: return cans ? 6e-2 : (aol ? 3e-2 : 1.5e-2);
    default: return (cans || aol) ? 5e-2 : 3e-2;
  }
}

/* NS of the same input on both backends; compares, and for medium checks that the result is
 * bf16-valued (spec 3.6: the output of the last step is a bf16 value even with 0 steps). */
static void ns_case(const char *what, int64_t batch, int64_t rows, int64_t cols,
                    const orthod_ns_opts_t *o, double bound, uint64_t seed) {
  size_t n = (size_t)(batch * rows * cols);
  float *x = gt_normal(seed, n);
  gt_pair_t px = gt_pair(x, n), po = gt_pair(x, n);
  GT_OK(orthod_newton_schulz(D(), po.d, px.d, batch, rows, cols, o));
  GT_OK(orthod_newton_schulz(R(), po.r, px.r, batch, rows, cols, o));
  float *d, *r;
  gt_pair_get(&po, &d, &r);
  char label[200];
  snprintf(label, sizeof label, "ns %s %s %s steps=%d syrk=%d %lldx%lldx%lld", what,
           orthod_coef_type_name(o->coef_type), orthod_precision_name(o->precision), o->steps,
           o->use_syrk, (long long)batch, (long long)rows, (long long)cols);
  TU_CHECK(gt_rel_close(label, d, r, n, bound));
  if (o->precision == ORTHOD_PREC_MEDIUM) TU_CHECK(gt_is_bf16(label, d, n));
  /* the input is left alone when out != x */
  float *xd = malloc(n * sizeof *xd);
  gt_get(D(), xd, px.d, n);
  TU_CHECK(memcmp(xd, x, n * sizeof *x) == 0);
  free(xd);
  free(d);
  free(r);
  gt_pair_free(&px);
  gt_pair_free(&po);
  free(x);
}

static const int64_t k_shapes[][3] = {
    {1, 64, 96}, {1, 96, 64}, {1, 128, 128}, {3, 48, 80}, {1, 256, 768}, {1, 16, 200},
};

static void sets_for_precision(orthod_precision_t prec) {
  uint64_t seed = 100 * (uint64_t)(prec + 1);
  for (int t = ORTHOD_COEF_SIMPLE; t < ORTHOD_COEF_CUSTOM; t++)
    for (size_t s = 0; s < sizeof k_shapes / sizeof k_shapes[0]; s++)
      for (int syrk = 0; syrk < 2; syrk++) {
        orthod_ns_opts_t o;
        orthod_ns_opts_default(&o);
        o.coef_type = (orthod_coef_type_t)t;
        o.precision = prec;
        o.use_syrk = syrk;
        o.steps = 5;
        ns_case("", k_shapes[s][0], k_shapes[s][1], k_shapes[s][2], &o,
                ns_bound(o.coef_type, prec), seed++);
      }
  /* the full schedules of the repeat_last sets */
  orthod_ns_opts_t o;
  orthod_ns_opts_default(&o);
  o.precision = prec;
  o.coef_type = ORTHOD_COEF_POLAR_EXPRESS;
  o.steps = 8;
  ns_case("full schedule", 1, 96, 64, &o, ns_bound(o.coef_type, prec), seed++);
  o.coef_type = ORTHOD_COEF_DEEPSEEKV4;
  o.steps = 10;
  ns_case("full schedule", 1, 64, 96, &o, ns_bound(o.coef_type, prec), seed++);
}

static void test_highest(void) { sets_for_precision(ORTHOD_PREC_HIGHEST); }
static void test_high(void) { sets_for_precision(ORTHOD_PREC_HIGH); }
static void test_medium(void) { sets_for_precision(ORTHOD_PREC_MEDIUM); }

static void test_options(void) {
  for (int p = 0; p < 3; p++) {
    orthod_precision_t prec = (orthod_precision_t)p;
    orthod_ns_opts_t o;
    orthod_ns_opts_default(&o);
    o.precision = prec;
    /* 0 steps: normalisation only (and the bf16 round trip in medium) */
    o.steps = 0;
    ns_case("zero steps", 2, 40, 30, &o, prec == ORTHOD_PREC_MEDIUM ? 1e-2 : 1e-5, 700 + (uint64_t)p);
    /* custom tuples, cycled, with a cubic (c == 0) tuple among them (a combination that keeps
     * the singular values in (0.02, 1.3); most mixtures of sets diverge) */
    o.coef_type = ORTHOD_COEF_CUSTOM;
    o.n_custom = 3;
    o.custom[0] = (orthod_ns_coef_t){4.0848f, -6.8946f, 2.9270f};
    o.custom[1] = (orthod_ns_coef_t){2.8769f, -3.1427f, 1.2046f};
    o.custom[2] = (orthod_ns_coef_t){2.2230472f, -0.9630650f, 0.0f};
    o.steps = 7;
    /* 7 steps leave singular values down to 0.02, where differences grow the most: the
     * loosest (cans) bounds; measured 1.02e-5 / 2.3e-2 with the emulated GPU (tests/gpu/emu) */
    ns_case("custom", 1, 50, 70, &o, ns_bound(ORTHOD_COEF_CANS, prec), 710 + (uint64_t)p);
    /* forced transpose of a wide input, no transpose of a tall one, fp64 normalisation */
    orthod_ns_opts_default(&o);
    o.precision = prec;
    o.transpose = 1;
    ns_case("transpose=1", 1, 30, 50, &o, ns_bound(ORTHOD_COEF_QUINTIC, prec), 720 + (uint64_t)p);
    o.transpose = 0;
    o.normalize_in_double = true;
    ns_case("transpose=0 in double", 1, 50, 30, &o, ns_bound(ORTHOD_COEF_QUINTIC, prec),
            730 + (uint64_t)p);
  }
}

/* In place (out == x), and a batch large enough for many GEMM batches in one call. */
static void test_in_place_and_large_batch(void) {
  orthod_ns_opts_t o;
  orthod_ns_opts_default(&o);
  o.precision = ORTHOD_PREC_MEDIUM;
  int64_t batch = 64, rows = 24, cols = 40;
  size_t n = (size_t)(batch * rows * cols);
  float *x = gt_normal(800, n);
  gt_pair_t p = gt_pair(x, n);
  GT_OK(orthod_newton_schulz(D(), p.d, p.d, batch, rows, cols, &o));
  GT_OK(orthod_newton_schulz(R(), p.r, p.r, batch, rows, cols, &o));
  float *d, *r;
  gt_pair_get(&p, &d, &r);
  TU_CHECK(gt_rel_close("ns in place, batch 64", d, r, n, ns_bound(ORTHOD_COEF_QUINTIC, o.precision)));
  /* each slice equals the same NS run on that slice alone (spec 3.7) */
  gt_pair_t one = gt_pair(x + 5 * rows * cols, (size_t)(rows * cols));
  GT_OK(orthod_newton_schulz(D(), one.d, one.d, 1, rows, cols, &o));
  float *d1, *r1;
  gt_pair_get(&one, &d1, &r1);
  /* the same kernels per slice, but cuBLAS may pick another algorithm (summation order) for
   * the strided-batched GEMM than for the single one: the medium bound */
  TU_CHECK(gt_rel_close("ns batch slice 5 vs alone", d + 5 * rows * cols, d1, (size_t)(rows * cols),
                        ns_bound(ORTHOD_COEF_QUINTIC, o.precision)));
  free(d);
  free(r);
  free(d1);
  free(r1);
  gt_pair_free(&p);
  gt_pair_free(&one);
  free(x);
}

/* spectral_clip / hardcap (8 polar_express steps at the ambient precision, plain GEMMs at
 * high): the same bounds as NS at that precision, as the clip is built from two NS runs. */
static void test_spectral(void) {
  int64_t rows = 48, cols = 80;
  size_t n = (size_t)(rows * cols);
  float *x = gt_normal(900, n);
  for (int p = 0; p < 2; p++) { /* highest and high; medium is the bf16 NS underneath */
    orthod_precision_t prec = (orthod_precision_t)p;
    double bound = 5 * ns_bound(ORTHOD_COEF_POLAR_EXPRESS, prec);
    gt_pair_t px = gt_pair(x, n), po = gt_pair(x, n);
    GT_OK(orthod_spectral_clip(D(), po.d, px.d, rows, cols, -0.5f, 0.5f, prec));
    GT_OK(orthod_spectral_clip(R(), po.r, px.r, rows, cols, -0.5f, 0.5f, prec));
    float *d, *r;
    gt_pair_get(&po, &d, &r);
    TU_CHECK(gt_rel_close(p ? "spectral_clip high" : "spectral_clip highest", d, r, n, bound));
    free(d);
    free(r);
    GT_OK(orthod_spectral_hardcap(D(), po.d, px.d, rows, cols, 0.7f, prec));
    GT_OK(orthod_spectral_hardcap(R(), po.r, px.r, rows, cols, 0.7f, prec));
    gt_pair_get(&po, &d, &r);
    TU_CHECK(gt_rel_close(p ? "spectral_hardcap high" : "spectral_hardcap highest", d, r, n, bound));
    free(d);
    free(r);
    gt_pair_free(&px);
    gt_pair_free(&po);
  }
  free(x);
}

int main(void) {
  static const tu_test_t tests[] = {
      {"every coefficient set, highest", test_highest},
      {"every coefficient set, high (TF32)", test_high},
      {"every coefficient set, medium (bf16)", test_medium},
      {"0 steps, custom, transpose, normalize_in_double", test_options},
      {"in place, batch of 64, slice vs alone", test_in_place_and_large_batch},
      {"spectral clip and hardcap", test_spectral},
      {NULL, NULL},
  };
  return gt_main("cuda_ns", tests);
}
