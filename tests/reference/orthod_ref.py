"""orthod_ref.py — an independent NumPy model of the math in spec/ORTHOGONALIZED_OPTIMIZERS.md
(sections 1-6), used as the oracle of tests/reference/test_trajectories.py.

Everything is computed in float64 (or, for calibration, in float32: pass dtype=np.float32), with
the spec's fp32 scalars reproduced: coefficients, 1-beta, -eta*lambda, scale factors ... are
doubles rounded to fp32 once (spec 1.6, 2, 3.5, 11.8), because that is what the engine uses and
it costs nothing here. What is NOT modelled is fp32 arithmetic: sums, products and norms run in
the array dtype. Precision "medium" is emulated by rounding to bf16 at exactly the points of spec
3.6 (normalised X, every A, B and new X, and the output with steps = 0).

Only Debian's /usr/bin/python3 + numpy are needed. No torch.
"""

import math

import numpy as np

# ---------------------------------------------------------------------------------------------
# scalar and rounding helpers


def f32(x):
    """A double rounded to fp32 once and returned as a Python float (spec 1.6: scalars are
    formed in double and cast to fp32 once)."""
    return float(np.float32(x))


def bf16(x):
    """bf16(x) of the spec, vectorised: round to bfloat16 with round-to-nearest-even and widen
    back. The input is first rounded to fp32 (RNE, numpy's astype), then the fp32 value is
    rounded to bf16 by integer arithmetic on its bit pattern: add 0x7FFF plus the lowest kept
    bit, then clear the low 16 bits (ties go to the even bf16 mantissa; a carry into the exponent
    is the correct rounding up, and overflow lands on inf). NaN stays NaN.

    For float64 inputs (the reference's intermediates) this is therefore a double rounding
    float64 -> fp32 -> bf16. It can differ from a direct float64 -> bf16 rounding only when the
    float64 value lies within half an fp32 ulp of a bf16 rounding midpoint; the engine itself
    rounds fp32 values, so the fp32 step is the model of what it does, not an approximation of
    something else. Returns an array of the input's float dtype (float64 or float32)."""
    a = np.asarray(x)
    out_dtype = a.dtype if a.dtype in (np.float32, np.float64) else np.float64
    f = np.ascontiguousarray(a, dtype=np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    lsb = (u >> np.uint64(16)) & np.uint64(1)
    r = ((u + np.uint64(0x7FFF) + lsb) & np.uint64(0xFFFF0000)).astype(np.uint32)
    out = r.view(np.float32)
    out = np.where(np.isnan(f), f, out)
    return out.astype(out_dtype)


def round_fp16(x):
    """IEEE half rounding (RNE, via fp32 like the engine's wire conversion), widened back."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float64)


def round_fp32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def lerp(s, e, w):
    """torch.lerp mathematically (the two-branch fp32 form of spec 1.6 is the same value in
    exact arithmetic; w is the fp32 weight)."""
    return s + w * (e - s)


def fro(x, axes=None):
    """Frobenius norm over all elements (or the given axes, keepdims)."""
    if axes is None:
        return math.sqrt(float(np.sum(np.square(x, dtype=np.float64))))
    return np.sqrt(np.sum(np.square(x), axis=axes, keepdims=True))


# ---------------------------------------------------------------------------------------------
# Newton–Schulz (spec 3)

COEFFICIENT_SETS = {
    "simple": ([(3.4445, -4.7750, 2.0315)], "cycle"),
    "quintic": ([(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
                 (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)], "cycle"),
    "polar_express": ([(8.2051, -22.9019, 16.4607), (4.0664, -2.8612, 0.5184),
                       (3.9096, -2.8234, 0.5250), (3.2856, -2.4153, 0.4853),
                       (2.2779, -1.6198, 0.3985), (1.8726, -1.2307, 0.3585),
                       (1.8564, -1.2132, 0.3568), (1.8750, -1.2500, 0.3750)], "repeat_last"),
    "cans": ([(8.4703, -25.1081, 18.6293), (4.1828, -3.1087, 0.5806), (3.9619, -2.9541, 0.5630),
              (3.2866, -2.4647, 0.5074), (2.2737, -1.6447, 0.4162)], "repeat_last"),
    "aol": ([(4.0098, -7.0585, 2.4635), (3.4585, -5.5479, 2.5959), (2.7573, -3.2939, 1.4254),
             (2.7215, -3.0494, 1.3169)], "cycle"),
    "deepseekv4": ([(3.4445, -4.7750, 2.0315)] * 8 + [(2.0, -1.5, 0.5)] * 2, "repeat_last"),
    "cubic5": ([(3.3656576, -3.3420992, 0.0), (2.5744352, -1.4957376, 0.0),
                (2.5368962, -1.4312570, 0.0), (2.4418906, -1.2764040, 0.0),
                (2.2230472, -0.9630650, 0.0)], "cycle"),
}

PRECISIONS = ("highest", "high", "medium")


def ns_coefficients(coefficient_type, steps, custom=None):
    """The `steps` (a, b, c) tuples used (spec 3.4), as fp32 values (spec 3.5: GEMM alpha/beta)."""
    if steps < 0:
        raise ValueError("steps must be >= 0, got %d" % steps)
    if coefficient_type == "custom":
        if not custom:
            raise ValueError("custom_coefficient_sets must be provided for coefficient_type custom")
        tuples, mode = list(custom), "cycle"
    elif coefficient_type in COEFFICIENT_SETS:
        tuples, mode = COEFFICIENT_SETS[coefficient_type]
        if coefficient_type == "cubic5" and steps != 5:
            raise ValueError("cubic5 is a fixed 5-step schedule, got steps=%d; use steps=5" % steps)
    else:
        raise ValueError("Invalid coefficient type: %s" % coefficient_type)
    n = len(tuples)
    out = []
    for i in range(steps):
        a, b, c = tuples[i % n] if mode == "cycle" else tuples[min(i, n - 1)]
        out.append((f32(a), f32(b), f32(c)))
    return out


def newton_schulz(x, steps=5, coefficient_type="quintic", custom=None, eps=1e-15,
                  transpose=None, normalize_in_double=False, precision="highest", dtype=np.float64):
    """NS_k of spec 3.2 on a 2-D (M, N) or batched 3-D (B, M, N) array; returns the same shape.
    `precision` medium rounds to bf16 at the points of spec 3.6; highest/high are plain
    arithmetic in `dtype` (high is fp32 on a CPU, spec 3.6)."""
    x = np.asarray(x, dtype=dtype)
    if x.ndim not in (2, 3):
        raise TypeError("Input tensor x must be 2d or 3d (batched 2d), got %dd" % x.ndim)
    if precision not in PRECISIONS:
        raise ValueError("Invalid precision: %s" % precision)
    coefs = ns_coefficients(coefficient_type, steps, custom)
    rows, cols = x.shape[-2], x.shape[-1]
    t = (rows > cols) if transpose is None else bool(transpose)
    X = np.swapaxes(x, -1, -2) if t else x
    # Frobenius normalisation per slice; eps is a floor (max), not added (spec 3.2 step 2).
    sq = np.sum(np.square(X.astype(np.float64)), axis=(-2, -1), keepdims=True)
    norm = np.sqrt(sq)
    if normalize_in_double:
        X = X / norm.astype(np.float32).astype(dtype)  # fp32(fp64 norm), no eps
    else:
        X = X / np.maximum(norm, f32(eps)).astype(dtype)
    medium = precision == "medium"
    rnd = (lambda y: bf16(y)) if medium else (lambda y: y)
    X = rnd(X)
    for a, b, c in coefs:
        A = rnd(X @ np.swapaxes(X, -1, -2))
        if c != 0.0:
            B = rnd(dtype(c) * (A @ A) + dtype(b) * A)
            X = rnd(B @ X + dtype(a) * X)
        else:  # cubic path (spec 3.5): X = a X + b (A X), one GEMM
            X = rnd(dtype(b) * (A @ X) + dtype(a) * X)
    if t:
        X = np.swapaxes(X, -1, -2)
    return np.ascontiguousarray(X)


def muon_scale_factor(m, n, mode):
    """s(m, n) of spec 4 (a double)."""
    if mode == "shape_scaling":
        return math.sqrt(max(1.0, m / n))
    if mode == "spectral":
        return math.sqrt(max(m, n))
    if mode == "unit_rms_norm":
        return math.sqrt(m / n)
    raise ValueError("Invalid mode for Muon update scale factor: %s" % mode)


# ---------------------------------------------------------------------------------------------
# configuration: the keys of orthod_optim_config_t (core/src/optim_config.c), same defaults

ALGOS = ("muon", "adamw", "scion", "polargrad", "spel", "adaptive_muon", "muon_hyperball", "mop")
WD_METHODS = ("decoupled", "independent", "l2", "palm")
SCALE_MODES = ("spectral", "shape_scaling", "unit_rms_norm", "nuclear_norm")
MOMENT2 = ("adamuon", "normuon", "namo")
HOOKS = ("none", "hyperball", "radial_brake", "relative_update")


def default_config(algo):
    """orthod_optim_config_default: Muon's values (spec 4) plus the per-algorithm changes."""
    if algo not in ALGOS:
        raise ValueError("Optimizer '%s' not found in the registry." % algo)
    cfg = dict(algo=algo, lr=3e-4, momentum=0.95, weight_decay=0.01, nesterov=False,
               weight_decay_method="decoupled", precision="medium", coefficient_type="quintic",
               num_ns_steps=5, use_syrk=False, scale_mode="spectral", extra_scale_factor=1.0,
               spectral_radius=1.0, moment2_method="adamuon", beta2=0.95, eps=1e-8, hook="none",
               hyperball_radius=0.0, hook_eps=1e-15, outward_scale=0.5, inward_scale=1.0,
               adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, amsgrad=False, split_rows=(),
               num_heads=0, role="auto")
    if algo == "adamw":  # torch.optim.AdamW defaults
        cfg.update(lr=1e-3, weight_decay=1e-2)
    elif algo == "scion":  # 5.5: forced weight_decay 1, decoupled, no Nesterov; sqrt(m/n)*rho
        cfg.update(weight_decay=1.0, scale_mode="unit_rms_norm")
    elif algo in ("polargrad", "mop"):  # 5.2, 5.4: highest
        cfg.update(precision="highest")
        if algo == "mop":
            cfg.update(scale_mode="nuclear_norm")
    elif algo == "spel":  # 5.6: weight_decay 0.1
        cfg.update(weight_decay=0.1)
    elif algo == "muon_hyperball":  # 5.3: its own hyperball hook
        cfg.update(hook="hyperball")
    return cfg


def config_from(config, shape=None):
    """Defaults of config['algo'] updated with config; unknown keys refused. Without 'algo' the
    algorithm is the engine's choice for the shape (orthod_algo_for: adamw for rank < 2 and for
    embedding/head roles, muon otherwise)."""
    algo = config.get("algo")
    if algo is None:
        rank = 2 if shape is None else len(shape)
        algo = "adamw" if rank < 2 or config.get("role") in ("embedding", "head") else "muon"
    cfg = default_config(algo)
    for k, v in config.items():
        if k in ("fp32_matmul_prec",):
            k = "precision"
        if k == "hyperball_eps":
            k = "hook_eps"
        if k not in cfg:
            raise KeyError("unknown optimizer config key '%s'" % k)
        if k == "split_rows" and isinstance(v, str):
            v = tuple(int(s) for s in v.split(",") if s.strip()) if v not in ("", "none") else ()
        cfg[k] = v
    return cfg


def config_value_text(v):
    """The text orthod_optim_config_set parses for a Python value (doubles round-trip)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return ",".join(str(int(r)) for r in v)
    return str(v)


# ---------------------------------------------------------------------------------------------
# the optimizer


class Optimizer:
    """One parameter's optimizer: Optimizer(config, shape).step(w, g, lr=None) -> new weights.

    config uses the C table's keys (see default_config). N-D parameters (rank >= 2) are
    orthogonalized as the matrix (dim0, product of the rest) (spec 6, conv); split_rows blocks and
    num_heads heads are orthogonalized (and scaled) as separate matrices (spec 6). State: the
    momentum buffer (shape of the parameter), AdaptiveMuon's second moment, AdamW's moments."""

    def __init__(self, config, shape, dtype=np.float64):
        self.shape = tuple(int(d) for d in shape)
        self.cfg = config_from(config, self.shape)
        self.dt = dtype
        c = self.cfg
        if c["algo"] != "adamw" and len(self.shape) < 2:
            raise ValueError("Only 2D parameters are supported by %s" % c["algo"])
        if c["algo"] not in ("adamw", "mop") and c["algo"] != "polargrad" and c["num_ns_steps"] < 1:
            raise ValueError("num_ns_steps must be at least 1, got %d" % c["num_ns_steps"])
        if c["algo"] == "polargrad" and c["num_ns_steps"] < 0:
            raise ValueError("num_ns_steps must be positive, got %d" % c["num_ns_steps"])
        if c["algo"] == "adaptive_muon" and c["moment2_method"] == "namo" \
                and c["weight_decay_method"] == "l2":
            raise ValueError("namo cannot be combined with l2 weight decay")
        if c["split_rows"] and sum(c["split_rows"]) != self.shape[0]:
            raise ValueError("split_rows sum %d != dim 0 of %d" % (sum(c["split_rows"]),
                                                                   self.shape[0]))
        if c["num_heads"] > 1 and self.shape[0] % c["num_heads"]:
            raise ValueError("num_heads does not divide dim 0")
        self.t = 0
        self.M = np.zeros(self.shape, dtype)
        if len(self.shape) >= 2:
            self.m = self.shape[0]
            self.n = int(np.prod(self.shape[1:]))
        if c["algo"] == "adamw":
            self.exp_avg = np.zeros(self.shape, dtype)
            self.exp_avg_sq = np.zeros(self.shape, dtype)
            self.max_exp_avg_sq = np.zeros(self.shape, dtype)
        if c["algo"] == "adaptive_muon":
            meth = c["moment2_method"]
            if meth == "adamuon":
                self.V = np.zeros((self.m, self.n), dtype)
            elif meth == "normuon":
                self.V = np.zeros((self.m, 1) if self.m >= self.n else (1, self.n), dtype)
            elif meth == "namo":
                self.V = np.zeros((1,), dtype)
            else:
                raise TypeError("Invalid second moment method: %s" % meth)

    # -- Newton–Schulz and the per-algorithm orthogonalizers ---------------------------------

    def ns(self, x):
        c = self.cfg
        return newton_schulz(x, c["num_ns_steps"], c["coefficient_type"],
                             precision=c["precision"], dtype=self.dt)

    def blocks(self, U):
        """Row blocks of the (m, n) matrix: split_rows blocks, num_heads equal heads, or all."""
        c = self.cfg
        if c["split_rows"]:
            edges = np.cumsum((0,) + tuple(c["split_rows"]))
            return [(int(edges[i]), int(edges[i + 1])) for i in range(len(c["split_rows"]))]
        if c["num_heads"] > 1:
            d = self.m // c["num_heads"]
            return [(h * d, (h + 1) * d) for h in range(c["num_heads"])]
        return [(0, self.m)]

    def orth_matrix(self, U):
        """scaled_orthogonalize_fn of the algorithm for one matrix block U (r x n)."""
        c = self.cfg
        algo = c["algo"]
        r, n = U.shape
        e = self.dt(f32(c["extra_scale_factor"]))
        if algo in ("muon", "muon_hyperball"):
            return (self.ns(U) * self.dt(f32(muon_scale_factor(r, n, c["scale_mode"])))) * e
        if algo == "scion":  # 5.5: NS · sqrt(m/n) · rho
            return (self.ns(U) * self.dt(f32(muon_scale_factor(r, n, "unit_rms_norm")))) \
                * self.dt(f32(c["spectral_radius"]))
        if algo == "polargrad":  # 5.4: (O · <O, U>) · e
            O = self.ns(U)
            nu = np.sum(O * U)
            return (O * nu) * e
        if algo == "spel":  # 5.6: plain NS
            return self.ns(U)
        if algo == "adaptive_muon":  # 5.1: raw NS, moment2 and scale come later
            return self.ns(U)
        if algo == "mop":  # 5.2: polar factor by thin SVD, scale nuclear norm or s(m, n)
            P, S, Qt = np.linalg.svd(U.astype(np.float64), full_matrices=False)
            O = (P @ Qt).astype(self.dt)
            if c["scale_mode"] == "nuclear_norm":
                scale = self.dt(np.sum(S))
            else:
                scale = self.dt(f32(muon_scale_factor(r, n, c["scale_mode"])))
            return (O * scale) * e
        raise ValueError("no orthogonalizer for %s" % algo)

    def orthogonalize(self, U):
        """The (m, n) matrix view, block by block (blocks/heads each get their own NS and
        scale, spec 6); heads of equal size are the batched 3-D NS, which equals the loop."""
        U2 = U.reshape(self.m, self.n)
        out = np.empty_like(U2)
        for lo, hi in self.blocks(U2):
            out[lo:hi] = self.orth_matrix(U2[lo:hi])
        return out.reshape(self.shape)

    # -- hooks (spec 5.9) -------------------------------------------------------------------

    def hook_pre(self, p, u):
        c = self.cfg
        h = c["hook"]
        eps = f32(c["hook_eps"])
        if h == "none":
            return u, None
        if h == "hyperball":
            nu = fro(u)
            R = f32(c["hyperball_radius"])
            return (np.zeros_like(u) if nu < eps else u * self.dt(R / max(nu, eps))), None
        if h == "radial_brake":
            n0 = fro(p)
            return u, (0.0 if n0 < eps else n0)
        if h == "relative_update":
            np_, nu = fro(p), fro(u)
            if np_ < eps or nu < eps:
                return np.zeros_like(u), None
            return u * self.dt(np_ / max(nu, eps)), None
        raise ValueError("Invalid hook: %s" % h)

    def hook_post(self, p, state):
        c = self.cfg
        h = c["hook"]
        eps = f32(c["hook_eps"])
        if h == "hyperball":
            n = fro(p)
            R = f32(c["hyperball_radius"])
            return np.zeros_like(p) if n < eps else p * self.dt(R / max(n, eps))
        if h == "radial_brake":
            n0 = state
            n1 = fro(p)
            if n1 < eps:
                return np.zeros_like(p)
            d = n1 - n0
            k = f32(c["outward_scale"]) if d >= eps else (f32(c["inward_scale"]) if d <= -eps else 0.0)
            target = n0 + k * d
            return p * self.dt(target / max(n1, eps))
        return p

    # -- the step ---------------------------------------------------------------------------

    def step(self, w, g, lr=None):
        """One step: returns the new weights (w, g are not modified)."""
        c = self.cfg
        lr = c["lr"] if lr is None else float(lr)
        dt = self.dt
        p = np.array(w, dtype=dt).reshape(self.shape)
        G = np.array(g, dtype=dt).reshape(self.shape)
        self.t += 1
        if c["algo"] == "adamw":
            return self._adamw(p, G, lr)

        # 1. weight decay (spec 2): the scalar in double, cast to fp32 once
        lam = c["weight_decay"]
        meth = c["weight_decay_method"] if c["algo"] != "scion" else "decoupled"
        if lam != 0.0:
            if meth == "decoupled":
                p = p + dt(f32(-(lam * lr))) * p
            elif meth == "independent":
                p = p + dt(f32(-lam)) * p
            elif meth == "l2":
                G = G + dt(f32(lam)) * p
            elif meth == "palm":
                p = p + dt(f32(-(lam * lr * lr))) * p
            else:
                raise ValueError("Invalid weight decay method: %s" % meth)
        # 2. EMA momentum, 3. Nesterov with the updated buffer
        beta = c["momentum"]
        self.M = lerp(self.M, G, dt(f32(1.0 - beta)))
        nesterov = c["nesterov"] and c["algo"] != "scion"
        U = lerp(G, self.M, dt(f32(beta))) if nesterov else self.M
        # 4. orthogonalize
        O = self.orthogonalize(U)
        if c["algo"] == "adaptive_muon":
            O = self._moment2(O, G, U)
        # 5. update with hooks: subclass pre (none here) -> hook pre -> update -> subclass post
        #    (Spel re-projection) -> hook post
        O, hstate = self.hook_pre(p, O)
        p = p + dt(f32(-lr)) * O
        if c["algo"] == "spel":
            p = self._spel_project(p)
        p = self.hook_post(p, hstate)
        return p

    def _spel_project(self, p):
        """Spel's post-update hook: W <- NS_k(W) under the same precision (spec 5.6), on the
        same matrix view and blocks as the orthogonalizer."""
        W2 = p.reshape(self.m, self.n)
        out = np.empty_like(W2)
        for lo, hi in self.blocks(W2):
            out[lo:hi] = self.ns(W2[lo:hi])
        return out.reshape(self.shape)

    def _moment2(self, O, G, U):
        """AdaptiveMuon (spec 5.1): second moment on the raw NS output, then Muon's scale."""
        c = self.cfg
        dt = self.dt
        w2 = dt(f32(1.0 - c["beta2"]))
        eps = dt(f32(c["eps"]))
        O2 = O.reshape(self.m, self.n)
        meth = c["moment2_method"]
        if meth == "adamuon":
            self.V = lerp(self.V, O2 * O2, w2)
            T = O2 / (np.sqrt(self.V) + eps)
        elif meth == "normuon":
            per_row = self.m >= self.n
            r = np.mean(O2 * O2, axis=-1 if per_row else -2, keepdims=True)
            self.V = lerp(self.V, r, w2)
            Ut = O2 / np.sqrt(np.maximum(self.V, eps))
            ratio = fro(O2) / max(fro(Ut), float(eps))
            T = Ut * dt(ratio)
        elif meth == "namo":
            gn2 = fro(G) ** 2
            self.V = lerp(self.V, dt(gn2), w2)
            alpha = fro(U) / (math.sqrt(float(self.V[0])) + float(eps))
            T = O2 * dt(alpha)
        else:
            raise TypeError("Invalid second moment method: %s" % meth)
        # Muon scale per block (the blocks' own dims, spec 6)
        out = np.empty_like(T)
        s_mode = c["scale_mode"]
        e = dt(f32(c["extra_scale_factor"]))
        for lo, hi in self.blocks(T):
            out[lo:hi] = (T[lo:hi] * dt(f32(muon_scale_factor(hi - lo, self.n, s_mode)))) * e
        return out.reshape(self.shape)

    def _adamw(self, p, G, lr):
        """torch.optim.AdamW (single-tensor path) at step t."""
        c = self.cfg
        dt = self.dt
        b1, b2, eps, wd = c["adam_beta1"], c["adam_beta2"], c["adam_eps"], c["weight_decay"]
        p = p * dt(f32(1.0 - lr * wd))
        self.exp_avg = lerp(self.exp_avg, G, dt(f32(1.0 - b1)))
        self.exp_avg_sq = self.exp_avg_sq * dt(f32(b2)) + dt(f32(1.0 - b2)) * G * G
        bc1 = 1.0 - b1 ** self.t
        bc2 = 1.0 - b2 ** self.t
        step_size = lr / bc1
        bc2_sqrt = math.sqrt(bc2)
        if c["amsgrad"]:
            self.max_exp_avg_sq = np.maximum(self.max_exp_avg_sq, self.exp_avg_sq)
            denom = np.sqrt(self.max_exp_avg_sq) / dt(f32(bc2_sqrt)) + dt(f32(eps))
        else:
            denom = np.sqrt(self.exp_avg_sq) / dt(f32(bc2_sqrt)) + dt(f32(eps))
        return p + dt(f32(-step_size)) * (self.exp_avg / denom)


def trajectory(config, shape, w0, grads, lrs=None, dtype=np.float64):
    """Run len(grads) steps from w0; returns the final weights (dtype)."""
    opt = Optimizer(config, shape, dtype=dtype)
    w = np.array(w0, dtype=dtype).reshape(shape)
    for i, g in enumerate(grads):
        w = opt.step(w, g, None if lrs is None else lrs[i])
    return w


# ---------------------------------------------------------------------------------------------
# self-checks of the reference (run this file directly)


def _self_check():
    rng = np.random.default_rng(1)
    fails = []

    def check(name, ok):
        print("%-60s %s" % (name, "ok" if ok else "FAIL"))
        if not ok:
            fails.append(name)

    # bf16: exact values, ties to even, carries, overflow, NaN
    vals = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -9, 1.0 + 2 ** -8 + 2 ** -9,
                     -1.0 - 2 ** -9 - 2 ** -20, 3.4e38, np.nan, 0.0, -0.0], dtype=np.float32)
    want = np.array([1.0, 1.0, 1.0 + 4 * 2 ** -8, 1.0, 1.0 + 2 * 2 ** -7 * 1.0 / 2 * 2, -1.0 - 2 ** -7,
                     np.inf, np.nan, 0.0, 0.0])
    got = bf16(vals).astype(np.float64)
    # 1+2^-8 is a tie between 1 and 1+2^-7 -> even (1.0); 1+3·2^-8 tie -> 1+2^-6 (even mantissa 2);
    # 1+2^-8+2^-9 rounds up to 1+2^-7; -1-2^-9-2^-20 is past halfway to -1-2^-7? no: half ulp is
    # 2^-8, so it rounds to -1.
    want[4] = 1.0 + 2 ** -7
    want[5] = -1.0
    check("bf16 rounding: ties to even, overflow to inf, NaN kept",
          np.array_equal(got, want, equal_nan=True))
    # against a slow scalar model: nearest of the two neighbouring bf16 values, ties to even
    xs = rng.standard_normal(20000).astype(np.float32) * np.float32(10.0) ** rng.integers(-30, 30, 20000)
    fast = bf16(xs).astype(np.float64)
    ok = True
    for x, fx in zip(xs[:4000], fast[:4000]):
        u = int(np.float32(x).view(np.uint32))
        lo = u & 0xFFFF0000
        hi = lo + 0x10000
        vlo = float(np.uint32(lo).view(np.float32))
        vhi = float(np.uint32(hi).view(np.float32))
        dl, dh = abs(float(x) - vlo), abs(vhi - float(x))
        ref = vlo if dl < dh else vhi if dh < dl else (vlo if ((lo >> 16) & 1) == 0 else vhi)
        if ref != fx:
            ok = False
            break
    check("bf16 rounding matches a scalar nearest-even model (4000 values)", ok)

    # NS approaches the polar factor; transposes; batched == per slice; cubic path
    for shape in ((40, 70), (70, 40), (50, 50)):
        x = rng.standard_normal(shape)
        P, S, Qt = np.linalg.svd(x, full_matrices=False)
        o = newton_schulz(x, 16, "polar_express")
        check("NS polar_express 16 ≈ U Vᵀ %s" % (shape,), np.max(np.abs(o - P @ Qt)) < 1e-3)
        # quintic maps normalised σ >= ~0.02 into its band of roughly [0.7, 1.2]; random square
        # matrices have σ near 0 that 5 steps cannot lift, so those are left out.
        o5 = newton_schulz(x, 5, "quintic")
        sv = np.diag(P.T @ o5 @ Qt.T)
        big = S / np.linalg.norm(x) > 0.02
        check("NS quintic 5: σ >= 0.02‖x‖ mapped into (0.6, 1.25) %s" % (shape,),
              sv[big].min() > 0.6 and sv.max() < 1.25)
    xb = rng.standard_normal((3, 20, 30))
    for ct, k in (("quintic", 5), ("cubic5", 5), ("deepseekv4", 12)):
        ob = newton_schulz(xb, k, ct)
        loop = np.stack([newton_schulz(xb[i], k, ct) for i in range(3)])
        check("NS batched == per slice (%s)" % ct, np.allclose(ob, loop, rtol=0, atol=1e-12))
    # transpose rule: NS(xᵀ) = NS(x)ᵀ for the auto rule
    x = rng.standard_normal((30, 20))
    check("NS(xᵀ) == NS(x)ᵀ", np.allclose(newton_schulz(x.T, 5), newton_schulz(x, 5).T, atol=1e-12))
    # one quintic step by hand on a 1x1 matrix: X = 1 -> a + b + c
    o = newton_schulz(np.array([[2.0]]), 1, "custom", custom=[(1.5, -0.5, 0.25)])
    check("NS one step on [[2]] = a+b+c", abs(o[0, 0] - 1.25) < 1e-15)
    # cubic path and quintic path agree on c == 0 mathematically
    x = rng.standard_normal((8, 12))
    o1 = newton_schulz(x, 2, "custom", custom=[(2.0, -1.5, 0.0)])
    X = x / np.linalg.norm(x)
    for _ in range(2):
        X = 2.0 * X - 1.5 * (X @ X.T) @ X
    check("NS cubic path == a X + b X Xᵀ X", np.allclose(o1, X, atol=1e-14))
    # repeat_last vs cycle selection
    cs = ns_coefficients("deepseekv4", 12)
    check("deepseekv4 12 steps: last 4 are (2, -1.5, 0.5)", cs[8:] == [(2.0, -1.5, 0.5)] * 4)
    cs = ns_coefficients("aol", 6)
    check("aol cycles", cs[4] == cs[0] and cs[5] == cs[1])
    try:
        ns_coefficients("cubic5", 4)
        check("cubic5 with 4 steps rejected", False)
    except ValueError as ex:
        check("cubic5 with 4 steps rejected", "5-step" in str(ex))
    # medium: every output value is a bf16 value, also with steps = 0; eps floor; double norm
    x = rng.standard_normal((16, 24))
    om = newton_schulz(x, 5, precision="medium")
    check("NS medium output is bf16-valued", np.array_equal(bf16(om), om))
    o0 = newton_schulz(x, 0, precision="medium")
    check("NS medium steps=0 = bf16(x/‖x‖)", np.array_equal(o0, bf16(x / np.linalg.norm(x))))
    check("NS medium close to highest (bf16 level)",
          np.max(np.abs(om - newton_schulz(x, 5))) < 0.05)
    z = np.zeros((4, 5))
    check("NS of zeros is zeros (eps floor)", np.array_equal(newton_schulz(z, 5), z))
    tiny = rng.standard_normal((6, 6)) * 1e-30
    od = newton_schulz(tiny, 0, normalize_in_double=True)
    check("normalize_in_double keeps 1e-30 inputs",
          np.allclose(od, tiny / np.linalg.norm(tiny), rtol=1e-6, atol=0))

    # Optimizer: momentum 0 and identity-like checks
    w0 = rng.standard_normal((6, 10))
    g = rng.standard_normal((6, 10))
    cfg = dict(algo="muon", lr=0.1, momentum=0.0, weight_decay=0.0, precision="highest")
    w1 = Optimizer(cfg, w0.shape).step(w0, g)
    want = w0 - f32(0.1) * newton_schulz(g, 5) * f32(math.sqrt(10))
    check("muon momentum 0: W - lr·s·NS(G)", np.allclose(w1, want, atol=1e-12))
    # decay methods
    for meth, k in (("decoupled", 0.5 * 0.1), ("independent", 0.5), ("palm", 0.5 * 0.1 * 0.1)):
        o = Optimizer(dict(cfg, weight_decay=0.5, weight_decay_method=meth), w0.shape)
        w1 = o.step(w0, g)
        want = (w0 + f32(-k) * w0) - f32(0.1) * newton_schulz(g, 5) * f32(math.sqrt(10))
        check("decay %s" % meth, np.allclose(w1, want, atol=1e-12))
    o = Optimizer(dict(cfg, weight_decay=0.5, weight_decay_method="l2"), w0.shape)
    w1 = o.step(w0, g)
    want = w0 - f32(0.1) * newton_schulz(g + f32(0.5) * w0, 5) * f32(math.sqrt(10))
    check("decay l2 folds into G", np.allclose(w1, want, atol=1e-12))
    # EMA + Nesterov over two steps
    g2 = rng.standard_normal((6, 10))
    o = Optimizer(dict(cfg, momentum=0.9, nesterov=True), w0.shape)
    wa = o.step(w0, g)
    wb = o.step(wa, g2)
    b = f32(0.9)
    M1 = f32(0.1) * g
    M2 = M1 + f32(1 - 0.9) * (g2 - M1)
    U2 = g2 + b * (M2 - g2)
    want = wa - f32(0.1) * newton_schulz(U2, 5) * f32(math.sqrt(10))
    check("EMA momentum + Nesterov (updated buffer)", np.allclose(wb, want, atol=1e-12))
    # split rows: blocks get their own NS and scale
    w0 = rng.standard_normal((9, 4))
    g = rng.standard_normal((9, 4))
    o = Optimizer(dict(cfg, split_rows=(3, 6)), w0.shape)
    w1 = o.step(w0, g)
    want = np.vstack([w0[:3] - f32(0.1) * newton_schulz(g[:3], 5) * f32(2.0),
                      w0[3:] - f32(0.1) * newton_schulz(g[3:], 5) * f32(math.sqrt(6))])
    check("split_rows blocks", np.allclose(w1, want, atol=1e-12))
    # hyperball keeps the norm; relative update; radial brake outward
    w0 = rng.standard_normal((8, 8))
    R = fro(w0)
    o = Optimizer(dict(algo="muon_hyperball", hyperball_radius=R, precision="highest"), w0.shape)
    w = w0
    for _ in range(3):
        w = o.step(w, rng.standard_normal((8, 8)))
    check("muon_hyperball preserves ‖W‖", abs(fro(w) - f32(R)) < 1e-9 * R)
    p = np.array([[8.0]])
    o = Optimizer(dict(algo="muon", hook="radial_brake"), (1, 1))
    _, st = o.hook_pre(p, np.array([[-8.0]]))
    p3 = o.hook_post(p + 8.0, st)  # norm 8 -> 16, outward 0.5 -> 12 (spec 7.7)
    check("radial brake 8 -> 16 ends at 12", p3[0, 0] == 12.0)
    _, st = o.hook_pre(p, np.array([[4.0]]))
    p3 = o.hook_post(p - 4.0, st)  # 8 -> 4 with inward 1.0 -> stays 4
    check("radial brake 8 -> 4 (inward 1.0) ends at 4", p3[0, 0] == 4.0)
    o.cfg["hook"] = "relative_update"
    u, _ = o.hook_pre(np.array([[4.0]]), np.array([[8.0]]))
    check("relative update 8 with weight 4 -> 4", u[0, 0] == 4.0)
    # AdamW: first step moves every element by ~lr (sign of g)
    w0 = rng.standard_normal(7)
    g = rng.standard_normal(7)
    o = Optimizer(dict(algo="adamw", lr=0.01, weight_decay=0.0), (7,))
    w1 = o.step(w0, g)
    check("adamw first step = -lr·sign(g) (|g| >> eps)", np.allclose(w1 - w0, -0.01 * np.sign(g),
                                                                      atol=1e-8))
    o = Optimizer(dict(algo="adamw", lr=0.01, weight_decay=0.0, amsgrad=True), (7,))
    wa = o.step(w0, g * 10)
    wb = o.step(wa, g)
    check("amsgrad keeps the max second moment",
          np.allclose(o.max_exp_avg_sq, np.maximum(f32(0.001) * 100 * g * g,
                                                   o.exp_avg_sq), rtol=1e-6))
    # AdaptiveMuon normuon keeps ‖T(O)‖ = ‖O‖; adamuon step 1 with beta2 = 0 is ~sign(O)
    w0 = rng.standard_normal((12, 5))
    g = rng.standard_normal((12, 5))
    o = Optimizer(dict(algo="adaptive_muon", moment2_method="normuon", momentum=0.0,
                       weight_decay=0.0, precision="highest", lr=1.0, scale_mode="shape_scaling"),
                  w0.shape)
    w1 = o.step(w0, g)
    check("normuon matches the Frobenius norm of O",
          abs(fro(w0 - w1) - f32(math.sqrt(12 / 5)) * fro(newton_schulz(g, 5))) < 1e-9)
    o = Optimizer(dict(algo="adaptive_muon", moment2_method="adamuon", momentum=0.0, beta2=0.0,
                       weight_decay=0.0, precision="highest", lr=1.0, scale_mode="shape_scaling"),
                  w0.shape)
    w1 = o.step(w0, g)
    check("adamuon beta2 0: update = sign(O)·s",
          np.allclose(w0 - w1, np.sign(newton_schulz(g, 5)) * f32(math.sqrt(12 / 5)), atol=1e-6))
    # MOP: polar factor times nuclear norm
    o = Optimizer(dict(algo="mop", momentum=0.0, weight_decay=0.0, lr=1.0), (12, 5))
    w1 = o.step(w0, g)
    P, S, Qt = np.linalg.svd(g, full_matrices=False)
    check("mop: W - Σσ·P Qᵀ", np.allclose(w1, w0 - S.sum() * (P @ Qt), atol=1e-10))
    # conv weight is viewed as (out, in·kh·kw)
    w0 = rng.standard_normal((4, 2, 3, 3))
    g = rng.standard_normal((4, 2, 3, 3))
    w1 = Optimizer(cfg, w0.shape).step(w0, g)
    want = w0 - (f32(0.1) * newton_schulz(g.reshape(4, 18), 5) * f32(math.sqrt(18))).reshape(w0.shape)
    check("conv weight (4,2,3,3) viewed as 4x18", np.allclose(w1, want, atol=1e-12))
    print("%d reference self-checks failed" % len(fails) if fails else "all reference self-checks ok")
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(_self_check())
