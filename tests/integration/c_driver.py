"""c_driver.py — shared pieces of the scripts that drive the C-client test programs
(test_c_client.py, test_c_shard.py).

* numpy (exits 77 when it is missing), tests/reference/orthod_ref.py as `ref`, and the
  tolerances of tests/reference/test_trajectories.py.
* Failure / check(): an expected failure of a check (reported without a traceback).
* run(): a C program, under valgrind's memcheck when --valgrind was given; memcheck_cmd(): the
  same command line for programs started with subprocess.Popen.
* The input of the C programs: the data files of a parameter (random w0 and gradients as
  little-endian float32) and the lines of DIR/cases.txt.
* rel_error(): the comparison metric of tests/reference, max|W - W_ref| / max|W_ref - W_0|.
* main(): the command line (--orthod, the script's own flags, --only, --valgrind, --keep) and
  the part runner: each part gets a fresh temporary directory and prints `PASS part` /
  `FAIL part`; then `N passed, N failed`; exit 1 on failure, 77 when the daemon is not built.

Needs numpy only (no grpc). Import it first: `import c_driver` from the scripts' directory.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree (ctest runs from it)

SKIP = 77
try:
    import numpy as np
except ImportError:
    print("numpy is not available to %s: skipping" % sys.executable)
    sys.exit(SKIP)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "reference"))
import orthod_ref as ref  # noqa: E402

# Tolerances of tests/reference/test_trajectories.py (see the derivations there):
TOL_ELEM = 1e-5   # elementwise fp32 paths (AdamW): measured 1.1e-6
TOL_FP32 = 1e-4   # Newton-Schulz in fp32 (precision highest) vs float64: measured 8.5e-6
TOL_BF16 = 3e-2   # precision medium (bf16 NS intermediates, rounding flips): measured 8.7e-3

VALGRIND = None   # set by main() from --valgrind

__all__ = ["HERE", "SKIP", "TOL_BF16", "TOL_ELEM", "TOL_FP32", "Failure", "case_lines", "check",
           "main", "memcheck_cmd", "np", "ref", "rel_error", "run", "write_cases_txt",
           "write_data"]


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def memcheck_cmd(cmd, memcheck=True):
    """cmd under valgrind's memcheck when --valgrind was given (and memcheck): exit status 99
    then means memory errors or definite leaks."""
    if VALGRIND and memcheck:
        return [VALGRIND, "--quiet", "--error-exitcode=99", "--leak-check=full",
                "--errors-for-leak-kinds=definite"] + list(cmd)
    return list(cmd)


def run(cmd, timeout=120, memcheck=True):
    """Run a C program (under valgrind when asked); returns (rc, stdout, stderr) as text."""
    if VALGRIND and memcheck:
        cmd = memcheck_cmd(cmd)
        timeout *= 10
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    if VALGRIND and memcheck and p.returncode == 99:
        raise Failure("valgrind reported errors for %s:\n%s" % (" ".join(cmd), err))
    return p.returncode, out, err


def write_data(tmp, stem, rng, shape, steps):
    """Initial weights (normal, scale 0.05) and `steps` normal gradients of one parameter, as
    float32 in tmp/STEM.w0.f32 and tmp/STEM.grads.f32; returns (w0, grads), flat."""
    n = int(np.prod(shape))
    w0 = (rng.standard_normal(n) * 0.05).astype(np.float32)
    grads = rng.standard_normal((steps, n)).astype(np.float32)
    w0.astype("<f4").tofile(os.path.join(tmp, stem + ".w0.f32"))
    grads.astype("<f4").tofile(os.path.join(tmp, stem + ".grads.f32"))
    return w0, grads


def case_lines(name, shape, cfg, column, lrs):
    """The cases.txt lines of one parameter: `param NAME ALGO SHAPE COLUMN KEY=VALUE ...` (COLUMN:
    the wire dtype for c_trajectory, the shard index for c_shard; the options are cfg without
    algo) and, with per-step learning rates, `lrs NAME LR0,LR1,...`."""
    opts = " ".join("%s=%s" % (k, ref.config_value_text(v)) for k, v in cfg.items()
                    if k != "algo")
    lines = ["param %s %s %s %s %s" % (name, cfg["algo"], "x".join(map(str, shape)), column,
                                       opts)]
    if lrs is not None:
        lines.append("lrs %s %s" % (name, ",".join(repr(float(x)) for x in lrs)))
    return lines


def write_cases_txt(tmp, lines):
    with open(os.path.join(tmp, "cases.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def rel_error(w, w_ref, w0):
    """max |W - W_ref| / max |W_ref - W_0| (tests/reference/test_trajectories.py's metric).
    Stricter than orthod_harness.rel_error on purpose: weights that are not all finite give
    inf (with NaN, `rel > tol` would be false as well as `rel <= tol`), and so does any
    difference from a reference that did not move (the harness returns the absolute error)."""
    if not np.all(np.isfinite(w)):
        return float("inf")
    err = float(np.max(np.abs(w - w_ref)))
    scale = float(np.max(np.abs(w_ref - w0)))
    return err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))


def main(doc, parts, add_arguments, tmp_prefix, prepare=None):
    """Parse the command line and run the parts [(name, fn(args, tmp))]. add_arguments(parser)
    adds the script's own flags after --orthod; prepare(args), if given, runs before the parts
    (it may exit, e.g. 77). Returns the exit status."""
    global VALGRIND
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--orthod", required=True)
    add_arguments(ap)
    ap.add_argument("--only", default="", help="comma-separated parts (default: all)")
    ap.add_argument("--valgrind", default=None, help="run the C programs under this valgrind")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = ap.parse_args()
    VALGRIND = args.valgrind
    if not os.access(args.orthod, os.X_OK):
        print("daemon not built (%s): skipping" % args.orthod)
        return SKIP
    if prepare is not None:
        prepare(args)
    only = [p for p in args.only.split(",") if p]
    passed = failed = 0
    for name, fn in parts:
        if only and name not in only:
            continue
        tmp = tempfile.mkdtemp(prefix="%s%s-" % (tmp_prefix, name))
        t0 = time.time()
        try:
            fn(args, tmp)
            print("PASS %s (%.1f s)" % (name, time.time() - t0))
            passed += 1
        except Exception as e:  # a failure of any kind is reported, then the next part runs
            print("FAIL %s (%.1f s): %s" % (name, time.time() - t0, e))
            if not isinstance(e, Failure):
                traceback.print_exc()
            failed += 1
        finally:
            if args.keep:
                print("  kept %s" % tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0
