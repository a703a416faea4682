"""test_trajectories.py — the engine's optimizer trajectories against the float64 NumPy reference.

For every case of the table below: generate seeded float32 data (numpy default_rng), run
`orthod-traj` (the engine through its public store API, CPU backend) and orthod_ref.Optimizer over
the same steps, and compare the final weights.

Metric (one number per case, compared with the case's tolerance):
    rel = max_ij |W_engine - W_ref| / max_ij |W_ref - W_0|
i.e. the worst weight error relative to the scale of the weight *change* the steps made. This
measures the accuracy of the updates themselves (an absolute error on W would be dominated by
the untouched part of W) and does not blow up on single elements whose change happens to be tiny.

Usage: /usr/bin/python3 tests/reference/test_trajectories.py --traj PATH/orthod-traj
       [--only SUBSTRING] [--calibrate] [--keep DIR]
--calibrate runs no engine: it prints, per case, the same metric between the reference computed
in float32 and in float64 — the size of the fp32-vs-fp64 (and bf16 rounding-flip) discrepancy
that the tolerances below are derived from.
Ends with the line `N passed, N failed`; exit 1 on any failure, 0 otherwise (77: no numpy).
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

try:
    import numpy as np
except ImportError:  # pragma: no cover - the ctest runs Debian's python3, which has numpy
    print("numpy is not available to %s: skipping" % sys.executable)
    sys.exit(77)

sys.dont_write_bytecode = True  # no __pycache__ in the source tree (ctest runs from it)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_ref as ref  # noqa: E402

# ---------------------------------------------------------------------------------------------
# tolerances (of the metric above), each with its origin. Measured numbers come from
# `--calibrate` (reference in float32 vs float64) and from runs against the engine; see README.md.

# Numbers quoted below: the worst case of each class over seeds 1-12 (the default seed included),
# "engine" = this test against orthod-traj (CPU backend, RelWithDebInfo), "calib" = --calibrate.

# Elementwise paths only (AdamW): a handful of fp32 roundings (6e-8 relative) per element and
# step, on weights whose change is ~1e-1 of their size -> ~1e-6 of the change.
# Measured: engine 1.1e-6, calib 1.1e-6 -> 1e-5 (9x margin).
TOL_ELEM = 1e-5
# Newton–Schulz in fp32 (highest/high on the CPU) vs float64: the NS polynomial amplifies the
# fp32 rounding along small singular directions by up to prod(a_i) (~500 for quintic, more for
# polar_express/cans whose first a is ~8); Spel also re-projects W with NS every step.
# Measured: engine 8.5e-6, calib 8.7e-6 (both Spel + RadialBrake; plain Muon <= 2e-6)
# -> 1e-4 (11x margin).
TOL_FP32 = 1e-4
# AdaMuon (highest): T(O) = O/(sqrt(V)+eps) is scale-free per element, so an O element near zero
# (|O| ~ 1e-4) with an fp32 absolute error ~1e-7 gets a ~1e-3 relative error in an update
# element of full size. Measured: engine 2.9e-5, calib 2.7e-5 (typically 3e-6) -> 1e-3.
TOL_ADAMUON = 1e-3
# medium: bf16 storage of X, A, B at every NS step (spec 3.6). The engine's fp32-accumulated
# intermediates and the reference's float64 ones round to different bf16 neighbours now and
# then (one bf16 ulp = 2^-8 = 3.9e-3 relative), and a flip early in the iteration propagates, so
# single update elements differ by a few bf16 ulps of the largest element.
# Measured: engine 8.7e-3, calib 1.24e-2 (the one-step probes; trajectories <= 6e-3)
# -> 3e-2 (about 8 bf16 ulps of the largest change; 2.4x margin).
TOL_BF16 = 3e-2
# Spel in medium re-projects W itself with bf16 NS each step, so W (not only the update) carries
# bf16 rounding flips, and those feed the next projection.
# Measured: engine 3.3e-2, calib 3.4e-2 -> 8e-2. This case is weak on the update math (a 10% lr
# error moves it by only 3.5e-2); the Spel highest cases carry that, this one proves the bf16
# emulation (its weights must be bf16 values).
TOL_SPEL_BF16 = 8e-2

# ---------------------------------------------------------------------------------------------
# the case table


class Case:
    def __init__(self, name, shape, config, tol, why, steps=6, lrs=None, wire="fp32",
                 w_scale=0.05, g_scale=1.0, radius_from_init=False, grid=False,
                 g_from_w=0.0):
        self.name = name
        self.shape = tuple(shape)
        self.config = dict(config)
        self.tol = tol
        self.why = why
        self.steps = steps
        self.lrs = lrs
        self.wire = wire
        self.w_scale = w_scale
        self.g_scale = g_scale
        self.radius_from_init = radius_from_init
        # grid: the engine's final weights must be exactly bf16 values (medium probes)
        self.grid = grid
        # gradients = g_from_w * W0 + g_scale * noise (aligned with W0 to make norms shrink)
        self.g_from_w = g_from_w


HI = dict(precision="highest")
MED = "medium: bf16 NS flips"
F32 = "fp32 NS vs float64"
EL = "elementwise fp32"


def cases():
    c = []
    m = dict(algo="muon", lr=0.02)
    # --- Muon: defaults (medium, quintic, spectral, decoupled 0.01), shapes tall/wide/square/odd
    c.append(Case("muon_default_33x65", (33, 65), m, TOL_BF16, MED))
    c.append(Case("muon_default_65x33", (65, 33), m, TOL_BF16, MED))
    c.append(Case("muon_default_64x64", (64, 64), m, TOL_BF16, MED))
    c.append(Case("muon_default_257x513", (257, 513), m, TOL_BF16, MED, steps=5))
    c.append(Case("muon_highest_33x65", (33, 65), dict(m, **HI), TOL_FP32, F32))
    c.append(Case("muon_highest_127x257", (127, 257), dict(m, **HI), TOL_FP32, F32, steps=5))
    c.append(Case("muon_high_65x33", (65, 33), dict(m, precision="high"), TOL_FP32,
                  "high = fp32 on the CPU (spec 3.6)"))
    c.append(Case("muon_highest_64x64_nesterov", (64, 64), dict(m, nesterov=True, **HI), TOL_FP32, F32))
    c.append(Case("muon_medium_65x33_nesterov", (65, 33), dict(m, nesterov=True), TOL_BF16, MED))
    c.append(Case("muon_highest_momentum0", (40, 24), dict(m, momentum=0.0, **HI), TOL_FP32, F32))
    # --- medium probes: lr 1, W0 = 0, no decay, momentum 0, wide/square shape with
    # shape_scaling (s = 1) and e = 1, one step: W1 = -NS(G) exactly, so the engine's output must
    # lie on the bf16 grid (spec 3.6: the NS result is bf16 and the scale is skipped). The
    # trajectory metric alone cannot prove bf16 emulation (medium vs highest differ by ~4e-3,
    # below TOL_BF16); this can. A self-check below shows highest results are off the grid.
    probe = dict(m, lr=1.0, momentum=0.0, weight_decay=0.0, scale_mode="shape_scaling")
    c.append(Case("muon_medium_probe_33x65", (33, 65), probe, TOL_BF16, MED + "; on bf16 grid",
                  steps=1, w_scale=0.0, grid=True))
    c.append(Case("muon_medium_probe_64x64", (64, 64), probe, TOL_BF16, MED + "; on bf16 grid",
                  steps=1, w_scale=0.0, grid=True))
    c.append(Case("muon_medium_probe_cubic5_40x72", (40, 72), dict(probe, coefficient_type="cubic5"),
                  TOL_BF16, MED + "; cubic path; on bf16 grid", steps=1, w_scale=0.0, grid=True))
    # --- weight-decay methods (strong decay so that it is visible in the change)
    for meth, wd in (("decoupled", 0.5), ("independent", 0.02), ("l2", 0.5), ("palm", 5.0)):
        c.append(Case("muon_wd_%s_48x80" % meth, (48, 80),
                      dict(m, weight_decay=wd, weight_decay_method=meth, **HI), TOL_FP32, F32))
        c.append(Case("muon_wd_%s_nesterov_medium_80x48" % meth, (80, 48),
                      dict(m, weight_decay=wd, weight_decay_method=meth, nesterov=True),
                      TOL_BF16, MED))
    c.append(Case("muon_wd_negative_decoupled", (24, 40),
                  dict(m, weight_decay=-0.3, **HI), TOL_FP32, "negative λ is applied (spec 2); " + F32))
    # --- scale modes and extra factor
    for mode in ("spectral", "shape_scaling", "unit_rms_norm"):
        for shp in ((33, 65), (65, 33)):
            c.append(Case("muon_scale_%s_%dx%d" % ((mode,) + shp), shp,
                          dict(m, scale_mode=mode, **HI), TOL_FP32, F32, steps=5))
    c.append(Case("muon_extra_scale_0.2", (33, 65), dict(m, extra_scale_factor=0.2), TOL_BF16, MED))
    # --- coefficient sets (custom is impossible for Muon: no key carries tuples, spec 4 / 11.19;
    # the engine refuses coefficient_type=custom at validation)
    for ct, k in (("simple", 5), ("quintic", 5), ("polar_express", 5), ("polar_express", 10),
                  ("cans", 5), ("cans", 8), ("aol", 6), ("deepseekv4", 5), ("deepseekv4", 12),
                  ("cubic5", 5)):
        c.append(Case("muon_coef_%s_%d_highest_40x72" % (ct, k), (40, 72),
                      dict(m, coefficient_type=ct, num_ns_steps=k, **HI), TOL_FP32, F32, steps=5))
    for ct, k in (("polar_express", 8), ("cubic5", 5), ("aol", 4), ("simple", 3)):
        c.append(Case("muon_coef_%s_%d_medium_72x40" % (ct, k), (72, 40),
                      dict(m, coefficient_type=ct, num_ns_steps=k), TOL_BF16, MED, steps=5))
    # --- use_syrk (symmetric products through SYRK; same math, spec 3.8)
    c.append(Case("muon_syrk_highest_64x96", (64, 96), dict(m, use_syrk=True, **HI), TOL_FP32,
                  "SYRK Gram/A² products; " + F32))
    c.append(Case("muon_syrk_medium_96x64", (96, 64), dict(m, use_syrk=True), TOL_BF16, MED))
    c.append(Case("muon_syrk_medium_probe_64x96", (64, 96), dict(probe, use_syrk=True), TOL_BF16,
                  MED + "; SYRK; on bf16 grid", steps=1, w_scale=0.0, grid=True))
    # --- fused QKV blocks, per-head, conv, lr schedule, wire dtypes
    c.append(Case("muon_qkv_split_96x32", (96, 32), dict(m, split_rows="32,32,32", **HI),
                  TOL_FP32, F32))
    c.append(Case("muon_qkv_split_192x64_medium", (192, 64), dict(m, split_rows="64,64,64"),
                  TOL_BF16, MED))
    c.append(Case("muon_split_uneven_80x48", (80, 48), dict(m, split_rows="16,32,32", **HI),
                  TOL_FP32, "blocks of 16x48 (wide) and 32x48: own NS and s(r_i, n); " + F32))
    c.append(Case("muon_heads4_64x48", (64, 48), dict(m, num_heads=4, **HI), TOL_FP32,
                  "4 heads of 16x48 through batched NS; " + F32))
    c.append(Case("muon_heads8_128x32_medium", (128, 32), dict(m, num_heads=8), TOL_BF16, MED))
    c.append(Case("muon_conv_8x4x3x3", (8, 4, 3, 3), dict(m, **HI), TOL_FP32,
                  "viewed as 8x36 (spec 6); " + F32))
    c.append(Case("muon_conv_8x4x3x3_medium", (8, 4, 3, 3), m, TOL_BF16, MED))
    lrs = [0.02 * (1.0 - i / 8.0) for i in range(8)]
    c.append(Case("muon_lr_schedule_33x65", (33, 65), dict(m, weight_decay=0.3, **HI), TOL_FP32,
                  "per-step lr (linear decay) also feeds the decoupled decay; " + F32,
                  steps=8, lrs=lrs))
    c.append(Case("muon_wire_bf16_33x65", (33, 65), dict(m, **HI), TOL_FP32,
                  "bf16 wire: both sides see bf16(w0), bf16(g); " + F32, wire="bf16"))
    c.append(Case("muon_wire_fp16_65x33", (65, 33), m, TOL_BF16, MED, wire="fp16"))
    # --- Scion (forced decoupled λ=1 by default, sqrt(m/n)·ρ)
    c.append(Case("scion_default_33x65", (33, 65), dict(algo="scion", lr=0.02), TOL_BF16, MED))
    c.append(Case("scion_highest_65x33_rho2", (65, 33),
                  dict(algo="scion", lr=0.02, spectral_radius=2.0, momentum=0.9, **HI), TOL_FP32, F32))
    # --- PolarGrad (highest by default; ν = <NS(U), U>)
    pg = dict(algo="polargrad", lr=0.002)
    c.append(Case("polargrad_default_33x65", (33, 65), pg, TOL_FP32, F32))
    c.append(Case("polargrad_65x33_nesterov_extra0.5", (65, 33),
                  dict(pg, nesterov=True, extra_scale_factor=0.5), TOL_FP32, F32))
    c.append(Case("polargrad_0steps_48x48", (48, 48), dict(pg, lr=0.05, num_ns_steps=0), TOL_FP32,
                  "0 NS steps: O = U/‖U‖, ν = ‖U‖; " + F32))
    c.append(Case("polargrad_medium_40x72", (40, 72), dict(pg, precision="medium"), TOL_BF16, MED))
    c.append(Case("polargrad_qkv_split_96x32", (96, 32), dict(pg, split_rows="32,32,32"),
                  TOL_FP32, "ν per block; " + F32))
    # --- Spel (medium, λ = 0.1, re-projection of W)
    sp = dict(algo="spel", lr=0.02)
    c.append(Case("spel_default_33x65", (33, 65), sp, TOL_SPEL_BF16,
                  "medium: bf16 NS of the update and of W itself; W = NS(W) on bf16 grid",
                  grid=True))
    c.append(Case("spel_highest_65x33", (65, 33), dict(sp, **HI), TOL_FP32, F32))
    c.append(Case("spel_highest_48x48_l2_nesterov", (48, 48),
                  dict(sp, weight_decay_method="l2", nesterov=True, **HI), TOL_FP32, F32))
    # --- AdaptiveMuon (adamuon needs highest: its first step is ~sign(O), and O elements near
    # zero would flip sign between two bf16 roundings; see README)
    am = dict(algo="adaptive_muon", lr=0.01)
    c.append(Case("adaptive_adamuon_highest_33x65", (33, 65),
                  dict(am, moment2_method="adamuon", **HI), TOL_ADAMUON,
                  "T(O) = O/(sqrt(V)+eps) is smooth away from O = 0; " + F32))
    c.append(Case("adaptive_adamuon_highest_65x33_nesterov", (65, 33),
                  dict(am, moment2_method="adamuon", nesterov=True, beta2=0.9, **HI), TOL_ADAMUON,
                  "see TOL_ADAMUON"))
    c.append(Case("adaptive_normuon_medium_65x33", (65, 33), dict(am, moment2_method="normuon"),
                  TOL_BF16, MED))
    c.append(Case("adaptive_normuon_highest_33x65", (33, 65),
                  dict(am, moment2_method="normuon", scale_mode="shape_scaling", **HI), TOL_FP32, F32))
    c.append(Case("adaptive_namo_medium_48x48", (48, 48), dict(am, moment2_method="namo"),
                  TOL_BF16, MED))
    c.append(Case("adaptive_namo_highest_40x72_independent", (40, 72),
                  dict(am, moment2_method="namo", weight_decay=0.02,
                       weight_decay_method="independent", **HI), TOL_FP32, F32))
    # --- MuonHyperball (radius = ‖W0‖, required to match within rtol 1e-5)
    hb = dict(algo="muon_hyperball", lr=0.02)
    c.append(Case("muon_hyperball_33x65", (33, 65), hb, TOL_BF16, MED, radius_from_init=True))
    c.append(Case("muon_hyperball_highest_65x33", (65, 33), dict(hb, **HI), TOL_FP32, F32,
                  radius_from_init=True))
    # --- MOP (exact SVD polar factor; LAPACK sgesdd in fp32 vs numpy's dgesdd)
    mop = dict(algo="mop", lr=0.002)
    svd_why = "fp32 SVD polar factor vs float64 SVD (random matrices are well separated)"
    c.append(Case("mop_nuclear_33x65", (33, 65), mop, TOL_FP32, svd_why))
    c.append(Case("mop_spectral_extra0.2_65x33", (65, 33),
                  dict(mop, lr=0.02, scale_mode="spectral", extra_scale_factor=0.2), TOL_FP32, svd_why))
    c.append(Case("mop_nuclear_nesterov_40x40", (40, 40), dict(mop, nesterov=True), TOL_FP32, svd_why))
    # --- weight-update hooks on Muon (and one each on Scion / PolarGrad / Spel)
    c.append(Case("muon_hook_hyperball_33x65", (33, 65), dict(m, hook="hyperball", **HI),
                  TOL_FP32, F32, radius_from_init=True))
    c.append(Case("muon_hook_radial_brake_65x33", (65, 33),
                  dict(m, hook="radial_brake", outward_scale=0.5, inward_scale=0.7, **HI),
                  TOL_FP32, F32))
    # (decay happens before the pre hook measures n0, so only an update that points into W
    # shrinks the norm: gradients aligned with W0 make O ≈ msign(W), the inward branch)
    c.append(Case("muon_hook_radial_brake_inward_48x48", (48, 48),
                  dict(m, hook="radial_brake", outward_scale=0.25, inward_scale=0.5, **HI),
                  TOL_FP32, "gradients ∝ W0: the norm shrinks (inward branch); " + F32,
                  w_scale=1.0, g_scale=0.3, g_from_w=2.0))
    c.append(Case("muon_hook_relative_update_33x65", (33, 65),
                  dict(m, hook="relative_update", lr=0.05), TOL_BF16, MED))
    c.append(Case("scion_hook_relative_update_65x33", (65, 33),
                  dict(algo="scion", lr=0.02, hook="relative_update", **HI), TOL_FP32, F32))
    c.append(Case("polargrad_hook_radial_brake_33x65", (33, 65),
                  dict(pg, hook="radial_brake"), TOL_FP32, F32))
    c.append(Case("spel_hook_radial_brake_highest_40x72", (40, 72),
                  dict(sp, hook="radial_brake", **HI), TOL_FP32, F32))
    # --- AdamW (torch.optim.AdamW semantics)
    aw = dict(algo="adamw", lr=0.01)
    c.append(Case("adamw_bias_1d_65", (65,), aw, TOL_ELEM, EL, steps=8))
    c.append(Case("adamw_33x65_wd0.1", (33, 65), dict(aw, weight_decay=0.1), TOL_ELEM, EL))
    c.append(Case("adamw_amsgrad_conv_8x4x3x3", (8, 4, 3, 3), dict(aw, amsgrad=True), TOL_ELEM, EL,
                  steps=8))
    c.append(Case("adamw_amsgrad_betas_lr_schedule_1d_100", (100,),
                  dict(aw, amsgrad=True, adam_beta1=0.8, adam_beta2=0.99, adam_eps=1e-6),
                  TOL_ELEM, EL, steps=8, lrs=[0.01 * 0.7 ** i for i in range(8)]))
    c.append(Case("adamw_default_on_1d_without_algo", (50,), dict(lr=0.01), TOL_ELEM,
                  "rank 1 without algo: the engine picks adamw (orthod_algo_for); " + EL))
    return c


# Self-checks: a deliberately wrong reference configuration must be detected as a mismatch.
# (base case name, perturbation of the reference config, what is wrong)
PERTURBED = (
    ("muon_highest_33x65", dict(lr=0.02 * 1.01), "lr 1% too large"),
    ("muon_highest_64x64_nesterov", dict(nesterov=False), "Nesterov off"),
    ("muon_wd_decoupled_48x80", dict(weight_decay_method="independent"), "wrong decay method"),
    ("muon_default_33x65", dict(lr=0.02 * 1.1), "lr 10% too large (medium tolerance)"),
    ("muon_default_33x65", dict(momentum=0.9), "momentum 0.9 instead of 0.95 (medium)"),
    ("muon_qkv_split_96x32", dict(split_rows=()), "QKV not split"),
    ("muon_coef_polar_express_5_highest_40x72", dict(num_ns_steps=4), "one NS step less"),
    ("muon_coef_cans_5_highest_40x72", dict(coefficient_type="polar_express"), "wrong coefficients"),
    ("muon_scale_shape_scaling_33x65", dict(scale_mode="unit_rms_norm"), "wrong scale mode"),
    ("muon_heads4_64x48", dict(num_heads=0), "heads not separated"),
    ("muon_conv_8x4x3x3", dict(weight_decay=0.0), "decay left out"),
    ("muon_lr_schedule_33x65", dict(momentum=0.9), "momentum 0.9 instead of 0.95"),
    ("muon_hook_radial_brake_65x33", dict(outward_scale=0.6), "RadialBrake outward 0.6"),
    ("muon_hook_radial_brake_inward_48x48", dict(inward_scale=0.6), "RadialBrake inward 0.6"),
    ("mop_nuclear_33x65", dict(scale_mode="spectral"), "MOP without nuclear norm"),
    ("adaptive_adamuon_highest_33x65", dict(beta2=0.9), "AdaMuon beta2 0.9"),
    ("polargrad_default_33x65", dict(extra_scale_factor=1.05), "PolarGrad extra 1.05"),
    ("spel_highest_65x33", dict(lr=0.02 * 1.1), "Spel lr 10% too large"),
    ("adamw_bias_1d_65", dict(adam_beta2=0.99), "wrong AdamW beta2"),
    ("adaptive_normuon_highest_33x65", dict(moment2_method="adamuon"), "wrong second moment"),
)

# ---------------------------------------------------------------------------------------------
# running


def make_data(case, seed):
    rng = np.random.default_rng(seed)
    n = int(np.prod(case.shape))
    w0 = (rng.standard_normal(n) * case.w_scale).astype(np.float32)
    grads = (rng.standard_normal((case.steps, n)) * case.g_scale
             + case.g_from_w * w0.astype(np.float64)).astype(np.float32)
    return w0, grads


def on_wire(x, wire):
    """What the engine receives when the float32 data is sent as `wire` (RNE conversion)."""
    if wire == "fp32":
        return np.asarray(x, dtype=np.float64)
    if wire == "bf16":
        return ref.bf16(np.asarray(x, dtype=np.float32)).astype(np.float64)
    if wire == "fp16":
        return ref.round_fp16(x)
    raise ValueError(wire)


def full_config(case, w0_wire):
    cfg = dict(case.config)
    if case.radius_from_init:
        # the fp32 weights' norm, as a double: the engine requires it within rtol 1e-5
        cfg["hyperball_radius"] = float(np.linalg.norm(w0_wire.astype(np.float64)))
    return cfg


def run_engine(traj, case, cfg, w0, grads, tmp):
    init_p = os.path.join(tmp, "init.f32")
    grads_p = os.path.join(tmp, "grads.f32")
    out_p = os.path.join(tmp, "out.f32")
    w0.astype("<f4").tofile(init_p)
    grads.astype("<f4").tofile(grads_p)
    cmd = [traj, "--shape", ",".join(str(d) for d in case.shape), "--init", init_p,
           "--grads", grads_p, "--steps", str(case.steps), "--out", out_p, "--wire", case.wire]
    # algo first: setting it resets every other key to that algorithm's defaults
    keys = sorted(cfg, key=lambda k: k != "algo")
    for k in keys:
        cmd += ["--set", "%s=%s" % (k, ref.config_value_text(cfg[k]))]
    if case.lrs is not None:
        lrs_p = os.path.join(tmp, "lrs.f64")
        np.asarray(case.lrs, dtype="<f8").tofile(lrs_p)
        cmd += ["--lrs", lrs_p]
    if os.path.exists(out_p):
        os.remove(out_p)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return None, "orthod-traj exit %d: %s" % (proc.returncode, proc.stderr.strip()), cmd
    return np.fromfile(out_p, dtype="<f4").astype(np.float64), "", cmd


def run_ref(case, cfg, w0_wire, grads_wire, dtype=np.float64):
    w = ref.trajectory(cfg, case.shape, w0_wire.reshape(case.shape),
                       [g.reshape(case.shape) for g in grads_wire], lrs=case.lrs, dtype=dtype)
    return np.asarray(w, dtype=np.float64).reshape(-1)


def metric(w_test, w_ref, w0):
    abs_err = float(np.max(np.abs(w_test - w_ref)))
    scale = float(np.max(np.abs(w_ref - w0)))
    rel = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf)
    if not np.all(np.isfinite(w_test)):
        rel = math.inf
    return abs_err, rel


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traj", help="path to the orthod-traj program")
    ap.add_argument("--only", help="run only cases whose name contains this")
    ap.add_argument("--calibrate", action="store_true",
                    help="reference float32 vs float64, no engine (tolerance derivation)")
    ap.add_argument("--seed", type=int, default=20260901)
    args = ap.parse_args()
    if not args.calibrate and not args.traj:
        ap.error("--traj is required (or --calibrate)")
    if args.traj and not args.calibrate and not os.access(args.traj, os.X_OK):
        print("orthod-traj not found or not executable: %s" % args.traj)
        print("0 passed, 1 failed")
        return 1

    table = cases()
    names = [c.name for c in table]
    assert len(set(names)) == len(names), "duplicate case names"
    if args.only:
        table = [c for c in table if args.only in c.name]
    by_name = {c.name: c for c in cases()}
    passed = failed = 0
    t0 = time.time()
    engine_out = {}
    with tempfile.TemporaryDirectory(prefix="orthod-traj-") as tmp:
        for i, case in enumerate(table):
            w0, grads = make_data(case, args.seed + i * 7919)
            w0w, gw = on_wire(w0, case.wire), on_wire(grads, case.wire)
            cfg = full_config(case, w0w)
            try:
                w_ref = run_ref(case, cfg, w0w, gw)
            except Exception as ex:  # a reference bug is a failure of this test, loudly
                print("%-48s reference raised %r  FAIL" % (case.name, ex))
                failed += 1
                continue
            if args.calibrate:
                w_32 = run_ref(case, cfg, w0w, gw, dtype=np.float32)
                abs_err, rel = metric(w_32, w_ref, w0w)
                print("%-48s f32-vs-f64 abs %.3e rel %.3e  tol %.1e (%4.0fx)  [%s]"
                      % (case.name, abs_err, rel, case.tol, case.tol / max(rel, 1e-300), case.why))
                ok = rel <= case.tol
            else:
                w_eng, err, cmd = run_engine(args.traj, case, cfg, w0, grads, tmp)
                if w_eng is None:
                    print("%-48s %s  FAIL" % (case.name, err))
                    print("    command: %s" % " ".join(cmd))
                    failed += 1
                    continue
                engine_out[case.name] = (w_eng, w0w, gw, cfg)
                abs_err, rel = metric(w_eng, w_ref, w0w)
                ok = rel <= case.tol
                grid_note = ""
                if case.grid:
                    on_grid = bool(np.array_equal(ref.bf16(w_eng), w_eng))
                    ok = ok and on_grid
                    grid_note = "  bf16-grid %s" % ("yes" if on_grid else "NO")
                print("%-48s max abs %.3e  max rel %.3e  tol %.1e%s  %s  [%s]"
                      % (case.name, abs_err, rel, case.tol, grid_note, "PASS" if ok else "FAIL",
                         case.why))
            if ok:
                passed += 1
            else:
                failed += 1
        # The check must be able to fail: wrong reference configurations must be detected.
        if not args.calibrate:
            for base, change, what in PERTURBED:
                if base not in engine_out:
                    continue
                case = by_name[base]
                w_eng, w0w, gw, cfg = engine_out[base]
                bad = dict(cfg, **change)
                w_bad = run_ref(case, bad, w0w, gw)
                abs_err, rel = metric(w_eng, w_bad, w0w)
                detected = rel > case.tol
                print("%-48s max abs %.3e  max rel %.3e  tol %.1e  %s  [self-check: %s must "
                      "mismatch]" % ("selfcheck:" + base, abs_err, rel, case.tol,
                                     "PASS (mismatch detected as expected)" if detected
                                     else "FAIL (perturbation NOT detected)", what))
                if detected:
                    passed += 1
                else:
                    failed += 1
            # ... and the bf16-grid probes must be able to fail: the same trajectories computed
            # at highest precision (rounded to the fp32 the engine would store) are off the grid.
            for case in table:
                if not case.grid or case.name not in engine_out:
                    continue
                _, w0w, gw, cfg = engine_out[case.name]
                w_hi = ref.round_fp32(run_ref(case, dict(cfg, precision="highest"), w0w, gw))
                off = int(np.count_nonzero(ref.bf16(w_hi) != w_hi))
                detected = off > 0
                print("%-48s %d of %d highest-precision values off the bf16 grid  %s  "
                      "[self-check: the grid test can fail]"
                      % ("selfcheck-grid:" + case.name, off, w_hi.size,
                         "PASS (detected as expected)" if detected else "FAIL (NOT detected)"))
                if detected:
                    passed += 1
                else:
                    failed += 1
    sys.stdout.flush()
    print("# %.1f s" % (time.time() - t0))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
