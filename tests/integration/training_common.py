"""training_common.py — pieces shared by test_training.py and its NumPy-only child process.

* import_orthod(): the Python client package from the build tree (--pythonpath, normally
  <build>/python, where CMake places client/python/orthod and the generated stubs).
* Reference: tests/reference/orthod_ref.py (float64 NumPy model of the optimizer math) and the
  comparison metric of tests/reference, max|W - W_ref| / max|W_ref - W_0| (orthod_harness's
  rel_error), taken over every parameter by worst_rel.
* The optimizer configuration of the runs, the teacher-forced reference (the float64 optimizer
  fed the gradients the client pushed) and the shared tolerances.
* The NumPy-only run (numpy_child), executed in a child process with torch blocked.
* An independent implementation of the sharding placement (ring hash = MurmurHash3's fmix64 of
  FNV-1a 64 over UTF-8, 64 ring points per shard address "addr#k", first point >= hash(name),
  wrapping; ties to the lower shard), used to cross-check ShardedClient.shard_of.

No torch here: the NumPy-only child imports this module with torch blocked.
"""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree (ctest runs from it)

import numpy as np  # noqa: E402

from orthod_harness import reference, rel_error  # noqa: E402

# The optimizer configuration of the training tests, in the engine's keys. Matrices: Muon at
# precision "highest" (fp32 Newton–Schulz on the CPU, so that a float64 reference is a tight
# model of it; "medium" would add bf16 rounding flips) with shape_scaling (update RMS ~ lr/sqrt(n),
# a stable step size for 16..64-wide layers at lr 0.02; the default "spectral" scale multiplies
# the update by sqrt(max(m, n)) = 8 and makes this small problem oscillate). Vectors: AdamW.
# Everything else is the algorithms' defaults (momentum 0.95, decoupled weight decay 0.01 ...),
# which orthod_ref.default_config mirrors independently of the daemon.
MUON = {"algo": "muon", "lr": 0.02, "precision": "highest", "scale_mode": "shape_scaling"}
ADAMW = {"algo": "adamw", "lr": 0.005}


def group_options(cfg):
    """The engine options of a param group for RemoteOptimizer: every key except algo and lr
    (those are the group's "algorithm" and "lr")."""
    return {k: v for k, v in cfg.items() if k not in ("algo", "lr")}


def import_orthod(pythonpath):
    """Import the client package from `pythonpath` (not from anywhere else on sys.path)."""
    pythonpath = os.path.abspath(pythonpath)
    if not os.path.isfile(os.path.join(pythonpath, "orthod", "__init__.py")):
        raise SystemExit("no orthod package in %s (build the target orthod_python_package)"
                         % pythonpath)
    if pythonpath not in sys.path:
        sys.path.insert(0, pythonpath)
    import orthod  # noqa: E402
    got = os.path.dirname(os.path.abspath(orthod.__file__))
    if got != os.path.join(pythonpath, "orthod"):
        raise SystemExit("imported orthod from %s, expected %s" % (got, pythonpath))
    return orthod


def worst_rel(got, ref, w0):
    """The worst rel_error over the parameters of three {name: array} dicts: (value, name)."""
    worst = (0.0, None)
    for n in ref:
        r = rel_error(got[n], ref[n], w0[n])
        if r > worst[0] or worst[1] is None:
            worst = (r, n)
    return worst


def teacher_forced_steps(configs, w0, grads, lrs):
    """Float64 reference fed recorded gradients (teacher forcing): configs {name: engine config},
    w0 {name: array}, grads [{name: array} per step], lrs [{name: lr or None} per step].
    Yields {name: float64 array} after each step."""
    ref = reference()
    opts = {n: ref.Optimizer(configs[n], np.shape(w0[n])) for n in w0}
    w = {n: np.array(w0[n], dtype=np.float64) for n in w0}
    for g, lr in zip(grads, lrs):
        for n in w:
            w[n] = opts[n].step(w[n], np.asarray(g[n], dtype=np.float64), lr=lr[n])
        yield dict(w)


def teacher_forced(configs, w0, grads, lrs):
    """The final weights of teacher_forced_steps (w0 itself when there are no steps)."""
    w = {n: np.array(w0[n], dtype=np.float64) for n in w0}
    for w in teacher_forced_steps(configs, w0, grads, lrs):
        pass
    return w


def compare_teacher_forced(configs, w0, grads, lrs, weights):
    """Run the teacher-forced reference and compare it after every step with the recorded
    weights [{name: array} per step] (the daemon's replies). Returns a dict: worst (the largest
    per-step worst_rel), worst_step (1-based), worst_name, final (worst_rel after the last step),
    final_name, ref (the reference's final weights)."""
    out = {"worst": 0.0, "worst_step": 0, "worst_name": None, "final": 0.0, "final_name": None,
           "ref": None}
    for k, (wr, wd) in enumerate(zip(teacher_forced_steps(configs, w0, grads, lrs), weights)):
        r, n = worst_rel(wd, wr, w0)
        if r > out["worst"] or out["worst_name"] is None:
            out.update(worst=r, worst_step=k + 1, worst_name=n)
        out.update(final=r, final_name=n, ref=wr)
    return out


# ---------------------------------------------------------------------------------------------
# sharding placement, written from the description (not from the client's code)

FNV_OFFSET = 0xcbf29ce484222325
FNV_PRIME = 0x100000001b3
REPLICAS = 64
U64 = 1 << 64


def fnv1a64(text):
    h = FNV_OFFSET
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * FNV_PRIME) % U64
    return h


def fmix64(h):
    """MurmurHash3's 64-bit finalizer (fmix64), modulo 2**64."""
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) % U64
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) % U64
    return h ^ (h >> 33)


def ring_hash(text):
    return fmix64(fnv1a64(text))


def placement(addresses, name):
    """Index of the shard that owns `name`."""
    ring = sorted((ring_hash("%s#%d" % (a, k)), i) for i, a in enumerate(addresses)
                  for k in range(REPLICAS))
    h = ring_hash(name)
    for point, i in ring:  # sorted by (point, index): equal points go to the lower index
        if point >= h:
            return i
    return ring[0][1]


# ---------------------------------------------------------------------------------------------
# tolerances (the reasons are in test_training.py next to the checks)

TOL_TEACHER = 1e-4   # teacher-forced daemon vs float64 reference, every step (fp32 NS class)
LOSS_DROP = 10.0     # the training loss must fall by at least this factor


# ---------------------------------------------------------------------------------------------
# the NumPy-only run: a 16 -> 32 (tanh) -> 4 MLP fitted by least squares to a random teacher,
# full batch, hand-written gradients; the parameters are a plain dict of float32 ndarrays.

NUMPY_STEPS = 150
# RemoteOptimizer(dict, lr=..., **defaults): the same options for every parameter; Muon (rank 2)
# uses all of them, AdamW (rank 1) uses lr and ignores the Muon-only keys.
NUMPY_OPTIONS = {"lr": 0.02, "precision": "highest", "scale_mode": "shape_scaling"}


def numpy_problem(seed):
    """(X, Y, params): 256 samples, targets from a random tanh teacher, float32 parameters
    W1 (32, 16), b1 (32), W2 (4, 32), b2 (4) in the row-major (out, in) layout of nn.Linear."""
    rng = np.random.default_rng([seed, 5])
    X = rng.standard_normal((256, 16)).astype(np.float32)
    A = rng.standard_normal((16, 8)) / 4.0
    B = rng.standard_normal((8, 4)) / np.sqrt(8.0)
    Y = (np.tanh(1.5 * (X @ A)) @ B).astype(np.float32)
    params = {"W1": (rng.standard_normal((32, 16)) / 4.0).astype(np.float32),
              "b1": np.zeros(32, np.float32),
              "W2": (rng.standard_normal((4, 32)) / np.sqrt(32.0)).astype(np.float32),
              "b2": np.zeros(4, np.float32)}
    return X, Y, params


def numpy_loss_grad(P, X, Y, dtype=np.float32):
    """Mean squared error of the MLP and its gradient (backpropagation by hand) in `dtype`.
    P is keyed W1, b1, W2, b2."""
    X = X.astype(dtype)
    Y = Y.astype(dtype)
    W1, b1, W2, b2 = (np.asarray(P[k], dtype=dtype) for k in ("W1", "b1", "W2", "b2"))
    H = np.tanh(X @ W1.T + b1)
    R = H @ W2.T + b2 - Y
    loss = float(np.mean(R * R))
    dO = R * dtype(2.0 / R.size)
    dH = (dO @ W2) * (1 - H * H)
    grads = {"W1": dH.T @ X, "b1": dH.sum(axis=0), "W2": dO.T @ H, "b2": dO.sum(axis=0)}
    return loss, {k: v.astype(dtype) for k, v in grads.items()}


def numpy_grad_check(P, X, Y, seed=3, per_param=4, eps=1e-6):
    """Central finite differences (float64) against numpy_loss_grad at a few entries of every
    parameter; returns the largest relative error."""
    rng = np.random.default_rng(seed)
    P64 = {k: np.array(v, dtype=np.float64) for k, v in P.items()}
    _, g = numpy_loss_grad(P64, X, Y, np.float64)
    worst = 0.0
    for k, v in P64.items():
        for _ in range(per_param):
            i = tuple(int(rng.integers(d)) for d in v.shape)
            old = v[i]
            v[i] = old + eps
            lp, _ = numpy_loss_grad(P64, X, Y, np.float64)
            v[i] = old - eps
            lm, _ = numpy_loss_grad(P64, X, Y, np.float64)
            v[i] = old
            fd = (lp - lm) / (2 * eps)
            worst = max(worst, abs(fd - g[k][i]) / max(abs(fd), abs(g[k][i]), 1e-12))
    return worst


def numpy_child(spec_json):
    """Entry point of the NumPy-only child process (the parent blocks torch with
    sys.modules["torch"] = None before importing this module). Trains through
    RemoteOptimizer(dict of ndarrays), compares with the teacher-forced reference and prints one
    JSON line of results; the parent asserts them."""
    import json
    spec = json.loads(spec_json)
    try:
        __import__("torch")
        torch_blocked = False
    except ImportError:
        torch_blocked = True
    orthod = import_orthod(spec["pythonpath"])
    prefix, steps = spec["prefix"], spec["steps"]
    X, Y, local = numpy_problem(spec["seed"])
    grad_check = numpy_grad_check(local, X, Y)
    params = {prefix + k: v for k, v in local.items()}  # the same arrays: updated in place
    loss0, _ = numpy_loss_grad(local, X, Y)
    opt = orthod.RemoteOptimizer(params, address=spec["address"], **NUMPY_OPTIONS)
    w0 = {n: v.copy() for n, v in params.items()}
    grads, weights, lrs = [], [], []
    for _ in range(steps):
        _, g = numpy_loss_grad(local, X, Y)
        g = {prefix + k: v for k, v in g.items()}
        opt.step(grads=g)
        grads.append(g)
        lrs.append({n: None for n in params})  # the configured lr (no schedule)
        weights.append({n: v.copy() for n, v in params.items()})
    counters = {n: st["step"] for n, st in opt.state_dict()["state"].items()}
    mro = [c.__module__ + "." + c.__name__ for c in type(opt).__mro__]
    opt.close()
    loss1, _ = numpy_loss_grad(local, X, Y)
    configs = {n: dict(NUMPY_OPTIONS, algo="muon" if v.ndim >= 2 else "adamw")
               for n, v in params.items()}
    cmp = compare_teacher_forced(configs, w0, grads, lrs, weights)
    print(json.dumps({
        "torch_blocked": torch_blocked,
        "torch_in_modules": sys.modules.get("torch") is not None,
        "mro": mro,
        "grad_check": grad_check,
        "loss0": loss0, "loss1": loss1,
        "worst": cmp["worst"], "worst_step": cmp["worst_step"], "worst_name": cmp["worst_name"],
        "final": cmp["final"], "final_name": cmp["final_name"],
        "counters": counters,
        "algorithms": {n: ("muon" if v.ndim >= 2 else "adamw") for n, v in params.items()},
    }), flush=True)
    return 0
