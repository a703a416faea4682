#!/usr/bin/python3
"""bench_gpu_torch.py — the PyTorch side of `make bench-gpu` (run by bench_gpu).

A straightforward PyTorch Newton–Schulz (the spec's order of operations: transpose to wide,
Frobenius normalisation, 5 quintic steps A = X Xᵀ, B = b·A + c·A·A, X = a·X + B·X, back to fp32)
on the same GPU, per shape and precision:
  highest  fp32 with TF32 disabled (torch.backends.cuda.matmul.allow_tf32 = False)
  high     fp32 with TF32 enabled
  medium   X cast to bf16 before the loop, every product in bf16 (fp32 accumulation in cuBLAS)
Prints one line per case, `torch shape=RxC precision=P median_ms=X` (median over --reps timed
runs after --warmup; wall clock between two device synchronisations, as bench_gpu times orthod),
or a single `torch: <reason>` line and exit 0
when torch or its CUDA support is missing.
"""
import argparse
import sys
import time

QUINTIC = [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
           (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)]


def ns(g, steps, medium):
    """Newton–Schulz as a PyTorch user writes it (spec 3.2 order; quintic tuples cycled)."""
    x = g
    t = x.size(-2) > x.size(-1)
    if t:
        x = x.transpose(-2, -1)
    x = x / x.norm().clamp_min(1e-15)
    if medium:
        x = x.bfloat16()
    for i in range(steps):
        a, b, c = QUINTIC[i % len(QUINTIC)]
        A = x @ x.transpose(-2, -1)
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    x = x.float()
    if t:
        x = x.transpose(-2, -1)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("shapes", nargs="+", help="RxC")
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        print("torch: not importable by %s (%s)" % (sys.executable, e))
        return 0
    if not torch.cuda.is_available():
        print("torch: torch %s has no CUDA device here" % torch.__version__)
        return 0
    dev = torch.device("cuda", args.device)
    print("torch %s, CUDA %s, %s" % (torch.__version__, torch.version.cuda,
                                     torch.cuda.get_device_name(dev)))

    for shape in args.shapes:
        r, c = (int(v) for v in shape.split("x"))
        g = torch.randn(r, c, device=dev, dtype=torch.float32)
        for prec in ("highest", "high", "medium"):
            torch.backends.cuda.matmul.allow_tf32 = prec == "high"
            times = []
            for i in range(args.warmup + args.reps):
                torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                ns(g, 5, prec == "medium")
                torch.cuda.synchronize(dev)
                if i >= args.warmup:
                    times.append(1e3 * (time.perf_counter() - t0))
            times.sort()
            print("torch shape=%dx%d precision=%s median_ms=%.4f" % (r, c, prec,
                                                                    times[len(times) // 2]),
                  flush=True)
        del g
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
