"""test_c_client.py — liborthod-client and orthoctl against a real daemon.

Parts (each starts its own `orthod --listen 127.0.0.1:0 --backend cpu` in a temporary state dir;
ORTHOD_TEST_BACKEND=cuda runs them on `--backend cuda` and exits 77 when there is no CUDA device):
  trajectory  tests/integration/c/c_trajectory: parameters of several algorithms and shapes
              (fused QKV Muon, 1-D AdamW with an lr schedule, 4-D conv Muon at medium precision,
              Scion, AdaptiveMuon/NorMuon with bf16 on the wire) are registered, uploaded and
              stepped 10 times on one Step stream with several parameters per push (small chunks
              both ways, so every tensor travels in several chunks); the final weights are
              compared with the float64 reference tests/reference/orthod_ref.py, step counters
              must be 10.
  large       tests/integration/c/c_large: a 4096x4096 parameter through fp32 and bf16 on the
              wire (exact checks in C against Pull; the fp32 weights against the reference here).
  orthoctl    the CLI: health (of a service too), list, describe, pull -o .npy, set, drop,
              checkpoint (twice: sequence +1, the file in the state dir), bench, usage and error
              exit codes; `health --watch` of "", of orthod.v1.Optimizer and of an unknown name
              run in the background meanwhile: their first lines (timestamped SERVING /
              SERVICE_UNKNOWN), exit 0 on SIGINT, and when the daemon is stopped at the end
              NOT_SERVING then `stream ended: UNAVAILABLE ...` with exit 0 (exit 1 and the error
              on stderr for the unknown name).
  health      tests/integration/c/c_health: Check and Watch through the library (statuses at
              once, timeouts, a call deadline, closing open watches, an unreachable daemon);
              then the daemon gets SIGTERM and the watches must see NOT_SERVING and the end
              with UNAVAILABLE (see the program's header).
Metric for the reference comparisons, as in tests/reference/test_trajectories.py:
    rel = max|W_daemon - W_ref| / max|W_ref - W_0|   (error relative to the change the steps made)
with that file's tolerances (quoted next to each case below).

usage: /usr/bin/python3 test_c_client.py --orthod PATH --orthoctl PATH --trajectory PATH
       --large PATH [--health PATH] [--only trajectory,large,orthoctl,health]
       [--valgrind PATH] [--keep]
--valgrind runs the C programs and orthoctl under memcheck (definite leaks and memory errors
fail). Prints `PASS part` / `FAIL part` lines and `N passed, N failed`; exit 1 on failure, 77
when numpy is missing or the daemon is not built.
"""

import os
import re
import select
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True

import c_driver  # noqa: E402  (exits 77 when numpy is missing)
from c_driver import (TOL_BF16, TOL_ELEM, TOL_FP32, Failure, case_lines, check,  # noqa: E402
                      memcheck_cmd, np, ref, rel_error, run, write_cases_txt, write_data)

LISTEN_RE = re.compile(r"^orthod: listening on 127\.0\.0\.1:(\d+) \(pid (\d+)\)$")
# the timestamp that starts every line of `orthoctl health --watch`
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4} "


def own_stderr(err):
    """stderr without valgrind's lines (==PID== ..., e.g. leaks that are only possible)."""
    return "".join(ln for ln in err.splitlines(True) if not ln.startswith("=="))


def slow():
    """Factor for waits: programs under valgrind run about ten times slower."""
    return 10 if c_driver.VALGRIND else 1


# ---------------------------------------------------------------------------------------------
# the daemon


class Daemon:
    def __init__(self, exe, tmp, extra=()):
        self.state = os.path.join(tmp, "state")
        self.log_path = os.path.join(tmp, "orthod.log")
        self.log = open(self.log_path, "wb")
        backend = os.environ.get("ORTHOD_TEST_BACKEND") or "cpu"
        cmd = [exe, "--listen", "127.0.0.1:0", "--state-dir", self.state, "--backend", backend,
               "--threads", "2"] + list(extra)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log)
        line = b""
        deadline = time.time() + 20
        while not line.endswith(b"\n") and time.time() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                b = os.read(self.proc.stdout.fileno(), 1)
                if not b:
                    break
                line += b
        m = LISTEN_RE.match(line.decode(errors="replace").rstrip("\n"))
        if m is None:
            self.stop()
            raise Failure("daemon did not announce its port (got %r); log:\n%s"
                          % (line, self.log_tail()))
        self.addr = "127.0.0.1:%s" % m.group(1)

    def log_tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def stop_checked(self):
        """Stop; SIGTERM must drain and exit 0 (unless a failure is already on its way)."""
        rc = self.stop()
        if sys.exc_info()[0] is None:
            check(rc == 0, "daemon exit status %s after SIGTERM; log:\n%s" % (rc, self.log_tail()))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Background:
    """A program running while the test goes on (under memcheck with --valgrind, if memcheck);
    its stdout is read line by line with timeouts."""

    def __init__(self, cmd, memcheck=True):
        self.cmd = cmd
        self.memcheck = bool(c_driver.VALGRIND and memcheck)
        self.proc = subprocess.Popen(memcheck_cmd(cmd, memcheck), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.buf = b""

    def line(self, timeout):
        """The next line of stdout without its newline; None at EOF or after timeout seconds."""
        deadline = time.time() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                return None
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                b = os.read(self.proc.stdout.fileno(), 4096)
                if not b:
                    return None
                self.buf += b
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def finish(self, timeout):
        """Wait for the exit: (status, the rest of stdout, stderr); valgrind errors fail."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure("%s did not exit within %d s" % (" ".join(self.cmd), timeout))
        out, err = (self.buf + out).decode(errors="replace"), err.decode(errors="replace")
        self.buf = b""
        if self.memcheck and self.proc.returncode == 99:
            raise Failure("valgrind reported errors for %s:\n%s" % (" ".join(self.cmd), err))
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


# ---------------------------------------------------------------------------------------------
# (a) trajectory


STEPS = 10

# name, shape, config (engine keys; algo goes in the spec's algorithm), wire, lrs, tolerance
TRAJ_CASES = [
    ("qkv", (96, 32), dict(algo="muon", lr=0.02, split_rows="32,32,32", precision="highest"),
     "f32", None, TOL_FP32),           # fused QKV: three 32x32 blocks, fp32 NS
    ("bias", (65,), dict(algo="adamw", lr=0.01, weight_decay=0.1), "f32",
     [0.01 * 0.8 ** i for i in range(STEPS)], TOL_ELEM),   # 1-D AdamW with a per-step lr
    ("conv", (8, 4, 3, 3), dict(algo="muon", lr=0.02), "f32", None,
     TOL_BF16),                        # 4-D conv viewed as 8x36; Muon's default precision medium
    ("scion", (33, 65), dict(algo="scion", lr=0.02, precision="highest"), "f32", None, TOL_FP32),
    ("normuon", (65, 33), dict(algo="adaptive_muon", lr=0.01, moment2_method="normuon",
                               scale_mode="shape_scaling", precision="highest"),
     "bf16", None, TOL_FP32),          # bf16 on the wire: both sides see bf16(w0), bf16(g)
]


def on_wire(x, wire):
    return ref.bf16(np.asarray(x, dtype=np.float32)).astype(np.float64) if wire == "bf16" \
        else np.asarray(x, dtype=np.float64)


def write_cases(tmp, cases, steps, seed, extras=False):
    lines = ["steps %d" % steps] + (["extras"] if extras else [])
    data = {}
    for i, (name, shape, cfg, wire, lrs, tol) in enumerate(cases):
        data[name] = write_data(tmp, name, np.random.default_rng(seed + 7919 * i), shape, steps)
        lines += case_lines(name, shape, cfg, wire, lrs)
    write_cases_txt(tmp, lines)
    return data


def part_trajectory(args, tmp):
    data = write_cases(tmp, TRAJ_CASES, STEPS, seed=20261125, extras=True)
    # 4 KiB chunks both ways: every tensor here spans several messages in each direction
    d = Daemon(args.orthod, tmp, ["--chunk-bytes", "4096"])
    try:
        rc, out, err = run([args.trajectory, d.addr, tmp, "4096"])
        print("  c_trajectory: " + out.strip().replace("\n", "\n  c_trajectory: "))
        check(rc == 0, "c_trajectory exit %d\n%s%s\ndaemon log:\n%s" % (rc, out, err, d.log_tail()))
    finally:
        d.stop_checked()
    for name, shape, cfg, wire, lrs, tol in TRAJ_CASES:
        check("%s step=%d" % (name, STEPS) in out, "no step counter line for %s" % name)
        w0, grads = data[name]
        w0w, gw = on_wire(w0, wire), on_wire(grads, wire)
        w_ref = ref.trajectory(cfg, shape, w0w.reshape(shape), [g.reshape(shape) for g in gw],
                               lrs=lrs)
        w_ref = np.asarray(w_ref, dtype=np.float64).reshape(-1)
        w = np.fromfile(os.path.join(tmp, name + ".out.f32"), dtype="<f4").astype(np.float64)
        check(w.size == w0.size, "%s: %d weights written, expected %d" % (name, w.size, w0.size))
        rel = rel_error(w, w_ref, w0w)
        print("  %-8s %-14s %-4s rel %.3e  tol %.0e  %s" % (name, "x".join(map(str, shape)), wire,
                                                          rel, tol, "ok" if rel <= tol else "FAIL"))
        check(rel <= tol, "%s: rel %.3e > tol %.0e" % (name, rel, tol))
        # the comparison must be able to fail: one step fewer is far outside the tolerance
        w_short = ref.trajectory(cfg, shape, w0w.reshape(shape),
                                 [g.reshape(shape) for g in gw[:-1]], lrs=lrs)
        check(rel_error(w, np.asarray(w_short, dtype=np.float64).reshape(-1), w0w) > tol,
              "%s: the check cannot tell 9 steps from 10" % name)


# ---------------------------------------------------------------------------------------------
# (b) large tensors


def hash_data(n, seed, scale):
    """Mirror of hval() in c_large.c, bit for bit (uint32 arithmetic wraps in numpy too)."""
    i = np.arange(n, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = i * np.uint32(0x9E3779B1) + np.uint32(seed)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    v = (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 8388608.0) - np.float32(1.0)
    return v * np.float32(scale)


def part_large(args, tmp):
    # under valgrind the same checks on 256x256 (4096x4096 would take minutes there)
    rows = cols = 256 if args.valgrind else 4096
    d = Daemon(args.orthod, tmp)
    try:
        t0 = time.time()
        rc, out, err = run([args.large, d.addr, tmp, str(rows), str(cols)])
        print("  " + out.strip().replace("\n", "\n  ") + "  (%.1f s)" % (time.time() - t0))
        check(rc == 0, "c_large exit %d\n%s%s\ndaemon log:\n%s" % (rc, out, err, d.log_tail()))
    finally:
        d.stop_checked()
    n = rows * cols
    cfg = dict(algo="adamw", lr=0.01, weight_decay=0.01)
    w0 = hash_data(n, 1, 0.05).astype(np.float64)
    g = [hash_data(n, 101, 1.0).astype(np.float64),
         ref.bf16(hash_data(n, 102, 1.0)).astype(np.float64),   # sent as bf16 by the client
         hash_data(n, 103, 1.0).astype(np.float64)]
    opt = ref.Optimizer(cfg, (n,))
    w1 = opt.step(w0, g[0])
    got1 = np.fromfile(os.path.join(tmp, "large.w1.f32"), dtype="<f4").astype(np.float64)
    rel1 = rel_error(got1, w1, w0)
    w3 = opt.step(opt.step(w1, g[1]), g[2])
    got3 = np.fromfile(os.path.join(tmp, "large.w3.f32"), dtype="<f4").astype(np.float64)
    rel3 = rel_error(got3, w3, w0)
    print("  after step 1 rel %.3e, after step 3 rel %.3e  (tol %.0e, elementwise fp32)"
          % (rel1, rel3, TOL_ELEM))
    check(rel1 <= TOL_ELEM, "large step 1: rel %.3e > %.0e" % (rel1, TOL_ELEM))
    check(rel3 <= TOL_ELEM, "large step 3: rel %.3e > %.0e" % (rel3, TOL_ELEM))


# ---------------------------------------------------------------------------------------------
# (c) orthoctl


def part_orthoctl(args, tmp):
    cases = [("layer0.qkv", (96, 32), dict(algo="muon", lr=0.02, split_rows="32,32,32"), "f32",
              None, 0), ("layer0.bias", (65,), dict(algo="adamw", lr=0.01), "f32", None, 0),
             ("head.w", (40, 72), dict(algo="muon", lr=0.02), "f32", None, 0)]
    write_cases(tmp, cases, 2, seed=7)
    d = Daemon(args.orthod, tmp)

    memchecked = set()

    def ctl(*argv, expect=0, timeout=60, memcheck=True):
        cmd = [args.orthoctl, "--addr", d.addr, "--timeout", "20000"] + list(argv)
        # under valgrind: each command and exit status once is enough (valgrind costs ~1.5 s/run)
        key = (argv[0], expect)
        memcheck = memcheck and key not in memchecked
        memchecked.add(key)
        rc, out, err = run(cmd, timeout=timeout, memcheck=memcheck)
        check(rc == expect, "orthoctl %s: exit %d, expected %d\nstdout: %s\nstderr: %s"
              % (" ".join(argv), rc, expect, out, err))
        return out, own_stderr(err)

    watchers = []
    try:
        rc, out, err = run([args.trajectory, d.addr, tmp], memcheck=False)
        check(rc == 0, "c_trajectory (setup) exit %d\n%s%s" % (rc, out, err))

        # health --watch in the background until the daemon stops at the end (memchecked: the
        # watch of "" and the one ended by SIGINT)
        watch = [args.orthoctl, "--addr", d.addr, "--timeout", "20000", "health", "--watch"]
        watch_all = Background(watch)
        watch_unknown = Background(watch + ["no.such.Service"], memcheck=False)
        watch_int = Background(watch + ["orthod.v1.Optimizer"])
        watchers = [watch_all, watch_unknown, watch_int]
        for w, label, status in ((watch_all, d.addr, "SERVING"),
                                 (watch_unknown, d.addr + " no.such.Service", "SERVICE_UNKNOWN"),
                                 (watch_int, d.addr + " orthod.v1.Optimizer", "SERVING")):
            line = w.line(30 * slow())
            check(line is not None and re.match("^%s%s: %s$" % (STAMP, re.escape(label), status),
                                                line), "health --watch %s: first line %r"
                  % (label, line))
        watch_int.proc.send_signal(signal.SIGINT)
        rc, out, err = watch_int.finish(30 * slow())
        err = own_stderr(err)
        check(rc == 0 and out == "" and err == "", "health --watch after SIGINT: exit %d, "
              "stdout %r, stderr %r" % (rc, out, err))

        out, _ = ctl("health")
        check(out == "%s: SERVING\n" % d.addr, "health: %r" % out)
        out, _ = ctl("health", "orthod.v1.Optimizer")
        check(out == "%s orthod.v1.Optimizer: SERVING\n" % d.addr, "health SERVICE: %r" % out)
        _, err = ctl("health", "no.such.Service", expect=1)
        check(err == "orthoctl: NOT_FOUND: unknown service 'no.such.Service'\n",
              "health of an unknown service: %r" % err)

        out, _ = ctl("list")
        lines = out.rstrip("\n").split("\n")
        check(re.match(r"^NAME\s+SHAPE\s+ALGORITHM\s+STEP\s+MIB\s+MODE$", lines[0]),
              "list header: %r" % lines[0])
        rows = {ln.split()[0]: ln for ln in lines[1:4]}
        check(sorted(rows) == ["head.w", "layer0.bias", "layer0.qkv"], "list rows: %r" % out)
        check(rows["layer0.qkv"].split()[1:4] == ["96x32", "muon", "2"],
              "list qkv row: %r" % rows["layer0.qkv"])
        check(rows["layer0.bias"].split()[1:4] == ["65", "adamw", "2"],
              "list bias row: %r" % rows["layer0.bias"])
        # aligned: every column starts at the header's offset
        for col in ("SHAPE", "ALGORITHM", "MODE"):
            at = lines[0].index(col)
            for ln in lines[1:4]:
                check(ln[at - 2:at] == "  " and ln[at] != " ", "column %s misaligned: %r"
                      % (col, out))
        check(lines[-1].startswith("3 parameters"), "list footer: %r" % lines[-1])

        out, _ = ctl("list", "layer0.")
        check("layer0.qkv" in out and "layer0.bias" in out and "head.w" not in out,
              "list with prefix: %r" % out)

        out, _ = ctl("describe", "layer0.qkv")
        check(re.search(r"^step\s+2$", out, re.M) and re.search(r"^shape\s+96x32$", out, re.M)
              and re.search(r"^\s+split_rows\s+32,32,32$", out, re.M), "describe: %r" % out)

        expected = np.fromfile(os.path.join(tmp, "layer0.qkv.out.f32"), dtype="<f4")
        npy = os.path.join(tmp, "qkv.npy")
        out, _ = ctl("pull", "layer0.qkv", "-o", npy)
        a = np.load(npy)
        check(a.dtype == np.dtype("<f4") and a.shape == (96, 32), "npy %s %s" % (a.dtype, a.shape))
        check(np.array_equal(a.reshape(-1), expected), "pull -o: weights differ from Pull")
        npy1 = os.path.join(tmp, "bias.npy")
        ctl("pull", "layer0.bias", "-o", npy1, "--dtype", "bf16")
        a = np.load(npy1)
        want = ref.bf16(np.fromfile(os.path.join(tmp, "layer0.bias.out.f32"), dtype="<f4"))
        check(a.shape == (65,) and np.array_equal(a, want.astype(np.float32)),
              "pull --dtype bf16: not bf16(weights)")

        out, _ = ctl("set", "head.w", "lr=0.005", "weight_decay=0")
        check(re.search(r"lr = 0\.005", out), "set output: %r" % out)
        out, _ = ctl("describe", "head.w")
        m = re.search(r"^\s+lr\s+(\S+)$", out, re.M)
        check(m and abs(float(m.group(1)) - 0.005) < 1e-12, "lr after set: %r" % out)
        _, err = ctl("set", "head.w", "split_rows=20,20", expect=1)
        check(err.startswith("orthoctl: ") and "split_rows" in err, "set layout key: %r" % err)

        out, _ = ctl("drop", "head.w")
        check("dropped 'head.w'" in out and "step 2" in out, "drop: %r" % out)
        out, _ = ctl("list")
        check("head.w" not in out and "2 parameters" in out, "list after drop: %r" % out)

        # checkpoint: the two parameters left, the sequence one more per call; the file is in the
        # daemon's state directory with the size printed (checked at once: a new checkpoint may
        # delete older ones)
        seqs = []
        for _ in range(2):
            out, _ = ctl("checkpoint")
            m = re.match(r"^%s: checkpoint (\d+) \(2 parameters, (\d+\.\d\d) MiB\) -> (/[^\n]+)\n\Z"
                         % re.escape(d.addr), out)
            check(m, "checkpoint: %r" % out)
            path = m.group(3)
            inside = os.path.realpath(path).startswith(os.path.realpath(d.state) + os.sep)
            check(inside and os.path.isfile(path), "checkpoint file %r (state dir %s)"
                  % (path, d.state))
            size = os.path.getsize(path)
            check(abs(size / 2**20 - float(m.group(2))) <= 0.005 + 1e-9,
                  "checkpoint size: %d bytes on disk, printed %s MiB" % (size, m.group(2)))
            seqs.append(int(m.group(1)))
        check(seqs[1] == seqs[0] + 1, "checkpoint sequences %r" % seqs)

        _, err = ctl("describe", "nope", expect=1)
        check(re.match(r"^orthoctl: NOT_FOUND: .*'nope'", err), "unknown parameter: %r" % err)
        _, err = ctl("pull", "nope", "-o", os.path.join(tmp, "nope.npy"), expect=1)
        check(err.startswith("orthoctl: NOT_FOUND: "), "pull unknown: %r" % err)
        check(not os.path.exists(os.path.join(tmp, "nope.npy")), "pull unknown wrote a file")

        for bad in (["bogus"], ["describe"], ["pull", "layer0.qkv"], ["set", "head.w"],
                    ["set", "head.w", "novalue"], ["list", "a", "b"], ["bench", "--shape", "0x3"],
                    ["pull", "x", "-o", "y.npy", "--dtype", "f64"], ["health", "a", "b"],
                    ["health", "--watch", "--often"], ["checkpoint", "now"]):
            # usage errors never reach the client library: memcheck only the first one
            _, err = ctl(*bad, expect=2, memcheck=bad == ["bogus"])
            check("orthoctl" in err and "--help" in err, "usage error text: %r" % err)
        rc, _, _ = run([args.orthoctl], timeout=10, memcheck=False)
        check(rc == 2, "no command: exit %d" % rc)
        rc, _, _ = run([args.orthoctl, "--timeout", "soon", "list"], timeout=10, memcheck=False)
        check(rc == 2, "bad --timeout: exit %d" % rc)
        rc, out, _ = run([args.orthoctl, "pull", "--help"], timeout=10, memcheck=False)
        check(rc == 0 and "-o FILE.npy" in out, "pull --help: %r" % out)
        rc, out, _ = run([args.orthoctl, "checkpoint", "--help"], timeout=10, memcheck=False)
        check(rc == 0 and "ADDR: checkpoint SEQUENCE" in out, "checkpoint --help: %r" % out)

        out, _ = ctl("bench", "--shape", "64x48", "--steps", "3", "--dtype", "bf16")
        check(re.search(r"^step ms\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M),
              "bench output: %r" % out)
        out, _ = ctl("list")
        check("orthoctl-bench" not in out, "bench left its parameter behind: %r" % out)

        rc, _, err = run([args.orthoctl, "--addr", "127.0.0.1:1", "--timeout", "3000", "health"],
                         timeout=30)
        check(rc == 1 and err.startswith("orthoctl: UNAVAILABLE: "), "unreachable: %d %r"
              % (rc, err))
        rc, out, err = run([args.orthoctl, "--addr", "127.0.0.1:1", "--timeout", "3000", "health",
                            "--watch"], timeout=30)
        check(rc == 1 and out == "" and err.startswith("orthoctl: UNAVAILABLE: "),
              "health --watch unreachable: %d %r %r" % (rc, out, err))

        # the daemon shuts down: the watch of "" prints NOT_SERVING and the orderly end (exit 0),
        # the unknown name only sees the stream end (exit 1)
        d.stop_checked()
        rc, out, err = watch_all.finish(30 * slow())
        err = own_stderr(err)
        lines = out.splitlines()
        check(rc == 0 and err == "" and len(lines) == 2
              and re.match("^%s%s: NOT_SERVING$" % (STAMP, re.escape(d.addr)), lines[0])
              and re.match("^%s%s: stream ended: UNAVAILABLE: orthod is shutting down$"
                           % (STAMP, re.escape(d.addr)), lines[1]),
              "health --watch at shutdown: exit %d, stdout %r, stderr %r" % (rc, out, err))
        rc, out, err = watch_unknown.finish(30 * slow())
        check(rc == 1 and out == "" and err == "orthoctl: UNAVAILABLE: orthod is shutting down\n",
              "health --watch no.such.Service at shutdown: exit %d, stdout %r, stderr %r"
              % (rc, out, err))
    finally:
        for w in watchers:
            w.kill()
        d.stop_checked()


# ---------------------------------------------------------------------------------------------
# (d) health: Check and Watch through the library


def part_health(args, tmp):
    check(args.health is not None, "the health part needs --health PATH (c_health)")
    d = Daemon(args.orthod, tmp)
    prog = None
    try:
        prog = Background([args.health, d.addr])
        got = []
        while not got or got[-1] != "ready":
            line = prog.line(60 * slow())
            if line is None:
                prog.kill()
                rc, out, err = prog.finish(10)
                raise Failure("c_health did not get ready (exit %s)\n%s\n%s%s\ndaemon log:\n%s"
                              % (rc, "\n".join(got), out, err, d.log_tail()))
            got.append(line)
        # SIGTERM: the open watches must see NOT_SERVING, then the end; the daemon exits 0
        d.stop_checked()
        rc, out, err = prog.finish(60 * slow())
        print("  c_health: " + "\n  c_health: ".join(got + out.strip().split("\n")))
        check(rc == 0, "c_health exit %d\n%s\ndaemon log:\n%s" % (rc, err, d.log_tail()))
    finally:
        if prog is not None:
            prog.kill()
        d.stop_checked()


# ---------------------------------------------------------------------------------------------


PARTS = [("trajectory", part_trajectory), ("large", part_large), ("orthoctl", part_orthoctl),
         ("health", part_health)]


def add_arguments(ap):
    ap.add_argument("--orthoctl", required=True)
    ap.add_argument("--trajectory", required=True, help="path of c_trajectory")
    ap.add_argument("--large", required=True, help="path of c_large")
    ap.add_argument("--health", default=None, help="path of c_health (needed by the health part)")


def skip_without_cuda(args):
    if os.environ.get("ORTHOD_TEST_BACKEND") == "cuda":
        import orthod_harness  # exits 77 when the daemon has no CUDA device here
        orthod_harness.skip_without_cuda(args.orthod)


if __name__ == "__main__":
    sys.exit(c_driver.main(__doc__, PARTS, add_arguments, "orthod-c-", skip_without_cuda))
