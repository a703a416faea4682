"""test_c_shard.py — the sharded C client (client/c/include/orthod/shard.h) against real daemons.

Parts:
  vectors   tests/integration/shard_vectors.json must be what make_shard_vectors.py writes, and
            tests/integration/c/c_shard (vectors mode) must place every one of its ~200 names
            (ASCII and non-ASCII UTF-8) on the index the file gives, with both of the library's
            placement functions (the scan of every point and the client's sorted ring).
  cluster   3 shard daemons and 1 more: 12 parameters (Muon matrices, a fused QKV, AdamW vectors
            with lr schedules, several with non-ASCII names) whose names are picked so that every
            shard owns 4 (by training_common.placement, an implementation independent of the C
            one, which c_shard checks against its own). c_shard registers, uploads and steps them
            through the sharded client and identically on the single daemon, checks that every
            daemon's own List holds exactly the parameters placement gives it (and that List in
            pages of 1, 2, 3, 12, 13, with a prefix and sharded, equals one reply), that the
            weights are bit-identical to the single daemon's after every step, then errors (one
            shard, two shards, argument errors, an unreachable shard) and recovery. Here the final
            weights are compared with the float64 reference tests/reference/orthod_ref.py:
                rel = max|W - W_ref| / max|W_ref - W_0|
            with the tolerances of tests/reference/test_trajectories.py (quoted in c_driver.py).
            With --orthoctl, then on the same daemons `orthoctl --shards A,B,C`: `where` prints
            the owner of each name, describe and pull reach the owner, list, checkpoint and
            health run on every shard under a "== shard I (ADDR)" line; usage errors of --shards.

usage: /usr/bin/python3 test_c_shard.py --orthod PATH --shard PATH [--orthoctl PATH]
       [--only vectors,cluster] [--valgrind PATH] [--keep]
--valgrind runs c_shard and orthoctl under memcheck (memory errors and definite leaks fail).
Prints `PASS part` / `FAIL part` and `N passed, N failed`; exit 1 on failure, 77 when numpy is
missing or the daemon is not built.
"""

import os
import re
import sys
import time

sys.dont_write_bytecode = True

import c_driver  # noqa: E402  (exits 77 when numpy is missing)
from c_driver import (HERE, TOL_ELEM, TOL_FP32, Failure, case_lines, check, np,  # noqa: E402
                      ref, rel_error, run, write_cases_txt, write_data)
from orthod_harness import Daemon  # noqa: E402
from training_common import placement  # noqa: E402
import make_shard_vectors  # noqa: E402

STEPS = 6
DAEMON_FLAGS = ["--backend", "cpu", "--threads", "1"]


def start_daemons(orthod, n):
    ds = []
    try:
        for i in range(n):
            ds.append(Daemon(orthod, flags=DAEMON_FLAGS, name="orthod-%d" % i).start())
    except BaseException:
        for d in ds:
            d.kill()
        raise
    return ds


def stop_daemons(ds):
    """SIGTERM each; every one must drain and exit 0 (unless a failure is already on its way)."""
    failing = sys.exc_info()[0] is not None
    errors = []
    for d in ds:
        try:
            d.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors and not failing:
        raise Failure("\n".join(errors))


def logs(ds):
    return "\n".join("--- %s (%s):\n%s" % (d.name, d.address, d.stderr_tail()) for d in ds)


# ---------------------------------------------------------------------------------------------
# vectors


def part_vectors(args, tmp):
    path = os.path.join(HERE, "shard_vectors.json")
    with open(path, encoding="utf-8") as f:
        check(f.read() == make_shard_vectors.render(),
              "%s differs from what make_shard_vectors.py writes (run it)" % path)
    rc, out, err = run([args.shard, "vectors", path])
    print("  " + out.strip().replace("\n", "\n  "))
    check(rc == 0, "c_shard vectors exit %d\n%s%s" % (rc, out, err))


# ---------------------------------------------------------------------------------------------
# cluster

MUON = dict(algo="muon", lr=0.02, precision="highest")
ADAMW = dict(algo="adamw", lr=0.01, weight_decay=0.01)

# shape, config, per-step lrs (None: the configured lr), tolerance
KINDS = [
    ((32, 16), MUON, None, TOL_FP32),
    ((16, 32), MUON, None, TOL_FP32),
    ((48, 16), dict(MUON, split_rows="16,16,16"), None, TOL_FP32),   # fused QKV
    ((24, 24), MUON, [0.02 * 0.9 ** i for i in range(STEPS)], TOL_FP32),
    ((33,), ADAMW, None, TOL_ELEM),
    ((100,), ADAMW, [0.01 * 0.8 ** i for i in range(STEPS)], TOL_ELEM),
]
PER_SHARD = 4


def candidate_names():
    for layer in range(1000):
        for part in ("attn.qkv", "attn.out", "mlp.up", "mlp.down", "norm.bias", "层.权重",
                     "poids.é", "вес.🚀"):
            yield "layers.%d.%s" % (layer, part)


def pick_names(addresses, count):
    """count names, PER_SHARD on each shard (by the independent Python placement)."""
    per = [0] * len(addresses)
    out = []
    for name in candidate_names():
        i = placement(addresses, name)
        if per[i] < PER_SHARD:
            per[i] += 1
            out.append((name, i))
        if len(out) == count:
            return out
    raise Failure("no %d names spread over the shards" % count)


def part_cluster(args, tmp):
    ds = start_daemons(args.orthod, 4)
    try:
        shards, single = ds[:3], ds[3]
        addresses = [d.address for d in shards]
        names = pick_names(addresses, PER_SHARD * len(addresses))
        cases, lines = [], ["steps %d" % STEPS]
        for k, (name, shard) in enumerate(names):
            shape, cfg, lrs, tol = KINDS[k % len(KINDS)]
            w0, grads = write_data(tmp, "p%d" % k, np.random.default_rng(4242 + 31 * k), shape,
                                   STEPS)
            lines += case_lines(name, shape, cfg, shard, lrs)
            cases.append((name, shard, shape, cfg, lrs, tol, w0, grads))
        write_cases_txt(tmp, lines)
        t0 = time.time()
        rc, out, err = run([args.shard, "cluster", tmp, single.address] + addresses, timeout=180)
        print("  " + out.strip().replace("\n", "\n  ") + "  (%.1f s)" % (time.time() - t0))
        check(rc == 0, "c_shard cluster exit %d\n%s%s\n%s" % (rc, out, err, logs(ds)))
        if args.orthoctl:
            orthoctl_checks(args, tmp, addresses, [n for n, _ in names])
    finally:
        stop_daemons(ds)
    for k, (name, shard, shape, cfg, lrs, tol, w0, grads) in enumerate(cases):
        check("%s shard=%d step=%d" % (name, shard, STEPS) in out,
              "no step line for %s on shard %d" % (name, shard))
        w = np.fromfile(os.path.join(tmp, "p%d.out.f32" % k), dtype="<f4").astype(np.float64)
        check(w.size == w0.size, "%s: %d weights written, expected %d" % (name, w.size, w0.size))
        w0d = w0.astype(np.float64)
        gl = [g.astype(np.float64).reshape(shape) for g in grads]
        w_ref = np.asarray(ref.trajectory(cfg, shape, w0d.reshape(shape), gl, lrs=lrs)).reshape(-1)
        rel = rel_error(w, w_ref, w0d)
        print("  %-22s shard %d %-7s %-6s rel %.3e  tol %.0e  %s"
              % (name, shard, "x".join(map(str, shape)), cfg["algo"], rel, tol,
                 "ok" if rel <= tol else "FAIL"))
        check(rel <= tol, "%s: rel %.3e > tol %.0e" % (name, rel, tol))
        # the comparison must be able to fail: one step fewer is far outside the tolerance
        w_short = ref.trajectory(cfg, shape, w0d.reshape(shape), gl[:-1], lrs=lrs)
        check(rel_error(w, np.asarray(w_short).reshape(-1), w0d) > tol,
              "%s: the check cannot tell %d steps from %d" % (name, STEPS - 1, STEPS))


# ---------------------------------------------------------------------------------------------
# orthoctl --shards (on the daemons c_shard left: every parameter but the last one)


def orthoctl_checks(args, tmp, addresses, names):
    shards = ",".join(addresses)
    memchecked = set()

    def ctl(*argv, expect=0, pre=("--shards", shards)):
        key = (argv[0], expect)  # each command and exit status once under valgrind
        rc, out, err = run([args.orthoctl] + list(pre) + ["--timeout", "20000"] + list(argv),
                           timeout=60, memcheck=key not in memchecked)
        memchecked.add(key)
        check(rc == expect, "orthoctl %s %s: exit %d, expected %d\nstdout: %s\nstderr: %s"
              % (" ".join(pre), " ".join(argv), rc, expect, out, err))
        return out, err

    out, _ = ctl("where", *names)
    rows = [ln.split("\t") for ln in out.rstrip("\n").split("\n")]
    check(rows == [[n, str(i), addresses[i]] for n, i in ((n, placement(addresses, n))
                                                           for n in names)], "where: %r" % out)
    live = names[:-1]  # c_shard dropped the last one
    for name in live:
        out, _ = ctl("describe", name)
        check(re.search(r"^name\s+%s$" % re.escape(name), out, re.M), "describe %s: %r"
              % (name, out))
    _, err = ctl("describe", names[-1], expect=1)
    check(err.startswith("orthoctl: NOT_FOUND: "), "describe dropped: %r" % err)
    npy = os.path.join(tmp, "pulled.npy")
    ctl("pull", "-o", npy, live[0])  # NAME after the options: still routed by NAME
    check(os.path.getsize(npy) > 0, "pull wrote nothing")

    out, _ = ctl("list")
    sections = re.split(r"^== shard (\d+) \((\S+)\)$", out, flags=re.M)
    check(len(sections) == 1 + 3 * len(addresses), "list sections: %r" % out)
    for k in range(len(addresses)):
        index, addr, body = sections[1 + 3 * k: 4 + 3 * k]
        check(int(index) == k and addr == addresses[k], "list header %d: %r" % (k, out))
        on_it = {ln.split()[0] for ln in body.strip().split("\n")[1:-1]}
        want = {n for n in live if placement(addresses, n) == k}
        check(on_it == want, "list shard %d: %s, placement gives %s" % (k, sorted(on_it),
                                                                       sorted(want)))
    out, _ = ctl("checkpoint")
    for k, a in enumerate(addresses):
        n_on = sum(1 for n in live if placement(addresses, n) == k)
        pat = r"== shard %d \(%s\)\n%s: checkpoint \d+ \(%d parameters?, [\d.]+ MiB\) -> /\S+\n" % (
            k, re.escape(a), re.escape(a), n_on)
        check(re.search(pat, out), "checkpoint, shard %d (%d parameters): %r" % (k, n_on, out))
    out, _ = ctl("health")
    for k, a in enumerate(addresses):
        check("== shard %d (%s)\n%s: SERVING" % (k, a, a) in out, "health: %r" % out)
    dead = addresses[:1] + ["127.0.0.1:1"]
    out, err = ctl("health", expect=1, pre=("--shards", ",".join(dead)))
    check("%s: SERVING" % dead[0] in out and "UNAVAILABLE" in err, "health, one down: %r %r"
          % (out, err))
    for bad in (["--shards", shards, "--addr", addresses[0], "list"],
                ["--shards", "a:1,,b:2", "where", "x"], ["--shards", "a:1,a:1", "where", "x"]):
        rc, _, err = run([args.orthoctl] + bad, timeout=10, memcheck=False)
        check(rc == 2 and "--help" in err, "orthoctl %s: exit %d %r" % (" ".join(bad), rc, err))
    print("  orthoctl --shards: where, describe, pull, list, checkpoint, health ok")


# ---------------------------------------------------------------------------------------------


PARTS = [("vectors", part_vectors), ("cluster", part_cluster)]


def add_arguments(ap):
    ap.add_argument("--shard", required=True, help="path of tests/integration/c/c_shard")
    ap.add_argument("--orthoctl", default=None)


if __name__ == "__main__":
    sys.exit(c_driver.main(__doc__, PARTS, add_arguments, "orthod-c-shard-"))
