#!/usr/bin/python3
"""bench_ns.py — `make bench-ns`: orthod's CPU Newton–Schulz against NumPy float32.

Times 5 quintic NS steps at `highest` per shape in orthod (the C binary bench_ns, use_syrk on
and off) and in NumPy (the straightforward math of spec §3, run in this process), with the
same BLAS thread count. Per shape, --reps rounds each run one orthod process (warm-up pass,
then one timed pass per variant) and one NumPy pass, so both sides see the same machine
state; the median over rounds is reported (spec §8: sorted[len // 2]).
Prints a table and ends with exactly one line `ns speedup vs numpy (geomean): X.XX`, where
the speedup of a shape is numpy_ms / orthod_ms with orthod's SYRK path (its fastest path on
the CPU).

Run with Debian's /usr/bin/python3 (the only interpreter with NumPy here).
"""
import argparse
import math
import os
import subprocess
import sys
import time

DEFAULT_SHAPES = ["256x256", "512x512", "1024x1024", "2048x2048", "768x3072", "3072x768", "4096x1024"]

# quintic (spec §3.3); the tuples used by NumPy as float32 scalars, as the C code uses them
QUINTIC = [
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True, help="path of the bench_ns binary")
    p.add_argument("--reps", type=int, default=5, help="timed passes per shape (>= 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes per shape")
    p.add_argument("--steps", type=int, default=5, help="NS steps (quintic, cycled)")
    p.add_argument("--threads", type=int, default=0,
                   help="BLAS threads for both sides (0 = all cores: os.cpu_count())")
    p.add_argument("--sgemm", type=int, default=2048, help="square size of the sgemm roofline")
    p.add_argument("--ablation", action="store_true",
                   help="also time the unfused NumPy-style C baseline (column 'unfused ms')")
    p.add_argument("shapes", nargs="*", default=DEFAULT_SHAPES, help="RxC shapes")
    return p.parse_args()


ARGS = parse_args()
THREADS = ARGS.threads if ARGS.threads > 0 else (os.cpu_count() or 1)
# Must be set before NumPy loads OpenBLAS; the C binary gets the same value (env + --threads).
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(THREADS)

import numpy as np  # noqa: E402  (after the thread variables on purpose)


def numpy_blas_name():
    """Which BLAS NumPy's multiarray module is linked against (from its ELF dependencies)."""
    try:
        import numpy.core._multiarray_umath as mu
        out = subprocess.run(["ldd", mu.__file__], capture_output=True, text=True).stdout
        libs = []
        for line in out.splitlines():
            if "blas" in line or "lapack" in line:
                path = line.split("=>")[-1].split("(")[0].strip()
                libs.append(os.path.realpath(path) if path else line.strip())
        return ", ".join(libs) or "unknown"
    except Exception as e:  # informative only
        return f"unknown ({e})"


def ns_numpy(x, steps, eps=np.float32(1e-15)):
    """The straightforward float32 NS: transpose if rows > cols, X = x / max(‖x‖_F, eps),
    then per tuple A = X Xᵀ; B = b·A + c·(A A); X = a·X + B X; transpose back."""
    t = x.shape[-2] > x.shape[-1]
    X = x.T if t else x
    X = X / max(np.linalg.norm(X), eps)
    for i in range(steps):
        a, b, c = (np.float32(v) for v in QUINTIC[i % len(QUINTIC)])
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.T if t else X


def numpy_input(rows, cols):
    rng = np.random.default_rng(rows * 131 + cols)
    return rng.standard_normal((rows, cols), dtype=np.float32)


def time_numpy_once(x):
    t0 = time.perf_counter()
    out = ns_numpy(x, ARGS.steps)
    t1 = time.perf_counter()
    assert out.dtype == np.float32 and out.shape == x.shape
    return (t1 - t0) * 1e3


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def parse_kv(line):
    fields = {}
    for tok in line.split()[1:]:
        if "=" in tok:
            k, v = tok.split("=", 1)
            fields[k] = v.strip('"')
    return fields


def run_bin(extra):
    cmd = [ARGS.bin, "--warmup", str(max(ARGS.warmup, 1)), "--steps", str(ARGS.steps),
           "--threads", str(THREADS)] + extra
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        sys.exit(f"bench_ns.py: {' '.join(cmd)} failed with {res.returncode}")
    return res.stdout.splitlines()


def flops(rows, cols, steps):
    r, c = min(rows, cols), max(rows, cols)
    return 2.0 * (2.0 * r * r * c + r ** 3) * steps


def main():
    if ARGS.reps < 5:
        sys.exit("bench_ns.py: --reps must be >= 5 (median of at least 5)")
    print(f"numpy {np.__version__}, BLAS: {numpy_blas_name()}")
    rows_out = []
    config = None
    sgemm_ms = []
    for shape in ARGS.shapes:
        r, c = (int(v) for v in shape.split("x"))
        x = numpy_input(r, c)
        for _ in range(ARGS.warmup):
            time_numpy_once(x)
        # Round-robin at pass granularity: each round is one orthod process (its own warm-up
        # pass, then one timed pass per variant) followed by one NumPy pass, so load from
        # other processes on the machine hits both sides alike.
        ms = {"syrk": [], "gemm": [], "unfused": [], "numpy": []}
        extra = ["--unfused"] if ARGS.ablation else []
        for _ in range(ARGS.reps):
            # the sgemm roofline is sampled in every round too, so that it sees the same load
            for line in run_bin(["--reps", "1", "--syrk", "both", "--sgemm", str(ARGS.sgemm)] + extra + [shape]):
                if line.startswith("config") and config is None:
                    config = parse_kv(line)
                elif line.startswith("sgemm"):
                    kv = parse_kv(line)
                    sgemm_ms.append(float(kv["median_ms"]))
                elif line.startswith("ns "):
                    kv = parse_kv(line)
                    key = "unfused" if kv["variant"] == "unfused" else ("syrk" if kv["syrk"] == "1" else "gemm")
                    ms[key].append(float(kv["median_ms"]))
            ms["numpy"].append(time_numpy_once(x))
        rows_out.append((shape, r, c, {k: median(v) for k, v in ms.items() if v}))
    sg_ms = median(sgemm_ms)
    sgemm_gflops = 2.0 * ARGS.sgemm ** 3 / (sg_ms * 1e6)
    if config:
        print(f"orthod BLAS: {config.get('blas')}, threads {config.get('blas_threads')}; "
              f"numpy threads {THREADS}")
    print(f"quintic, {ARGS.steps} steps, highest; median of {ARGS.reps} interleaved rounds after "
          f"warm-up; effective GFLOP/s (orthod syrk) count 2(2r^2c + r^3) per step")
    print(f"cblas_sgemm {ARGS.sgemm}^3 (median of {len(sgemm_ms)}, one per round): {sg_ms:.2f} ms = "
          f"{sgemm_gflops:.1f} GFLOP/s")
    hdr = (f"{'shape':>10} {'orthod syrk ms':>14} {'orthod gemm ms':>14} {'numpy ms':>10} "
           f"{'numpy/syrk':>10} {'numpy/gemm':>10} {'GFLOP/s':>8} {'% sgemm':>8}")
    if ARGS.ablation:
        hdr += f" {'unfused ms':>10}"
    print(hdr)
    print("-" * len(hdr))
    logs = []
    for shape, r, c, m in rows_out:
        gf = flops(r, c, ARGS.steps) / (m["syrk"] * 1e6)
        ratio = m["numpy"] / m["syrk"]
        logs.append(math.log(ratio))
        line = (f"{shape:>10} {m['syrk']:>14.2f} {m['gemm']:>14.2f} {m['numpy']:>10.2f} {ratio:>10.2f} "
                f"{m['numpy'] / m['gemm']:>10.2f} {gf:>8.1f} {100.0 * gf / sgemm_gflops:>7.0f}%")
        if ARGS.ablation:
            line += f" {m['unfused']:>10.2f}"
        print(line)
    print(f"ns speedup vs numpy (geomean): {math.exp(sum(logs) / len(logs)):.2f}")


if __name__ == "__main__":
    main()
