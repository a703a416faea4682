"""test_sync.py — synchronous data-parallel steps with 4 worker processes on one parameter.

1. Trajectory: 4 worker processes push different seeded gradients for steps 0..4 of a Muon
   parameter (workers=4, SYNC); every worker must receive bit-identical weights after each step,
   equal to the float64 reference (tests/reference/orthod_ref.py) applied to the MEAN gradient.
   Step 5 carries per-rank learning rates (ranks 1 and 3): the lowest rank's applies.
2. Missing worker: on a parameter with sync_timeout_ms=500, ranks 0-2 push and rank 3 does not:
   the three get ABORTED naming rank 3 within 0.5-3 s, the step counter does not move, and then a
   full step by all four succeeds (counter +1, weights = reference without the failed step).
3. The daemon-wide --sync-timeout-ms applies to a parameter registered with sync_timeout_ms=0.

Workers are separate processes (this file run with --worker) driven over stdin/stdout with one
JSON line per command, so every step starts at the same moment for all of them.

Usage: /usr/bin/python3 test_sync.py --orthod PATH --gen DIR
"""

import argparse
import base64
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import grpc, np  # noqa: E402

SC = grpc.StatusCode
WORKERS = 4
SHAPE = [16, 8]
MUON = {"lr": 0.02, "precision": "highest"}
TOL_MUON = 1e-4  # NS in fp32 vs float64 (tests/reference/test_trajectories.py, TOL_FP32)


def grad(seed, rank, step):
    return h.seeded(SHAPE, seed, rank, step)


# ---------------------------------------------------------------------------------------------
# worker process


def worker_main(args):
    ch = grpc.insecure_channel(args.address)
    grpc.channel_ready_future(ch).result(timeout=20)
    stub = h.pb_grpc.OptimizerStub(ch)
    streams = {}

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": args.rank})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        name, step = cmd["name"], cmd["step"]
        g = grad(cmd["seed"], args.rank, step)
        s = streams.get(name)
        if s is None:
            s = streams[name] = h.StepStream(stub, timeout=120)
        t0 = time.monotonic()
        try:
            s.push(name, step, g, rank=args.rank, n_chunks=cmd.get("n_chunks", 1),
                   lr=cmd.get("lr"))
            st, w, _ = s.next_weights(name)
            reply({"ok": True, "step": st, "t": time.monotonic() - t0,
                   "w": base64.b64encode(w.astype("<f4").tobytes()).decode()})
        except grpc.RpcError as e:
            streams.pop(name, None)
            s.cancel()
            reply({"ok": False, "code": e.code().name, "details": e.details(),
                   "t": time.monotonic() - t0})
    for s in streams.values():
        try:
            s.finish()
        except grpc.RpcError:
            pass
    ch.close()
    return 0


class Worker:
    def __init__(self, args, address, rank):
        self.rank = rank
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--address", address,
             "--rank", str(rank), "--gen", args.gen],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.q.put(json.loads(line))
        self.q.put(None)

    def send(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def get(self, timeout=60):
        r = self.q.get(timeout=timeout)
        if r is None:
            raise AssertionError("worker %d exited (status %s)" % (self.rank, self.proc.wait()))
        return r

    def quit(self):
        try:
            self.send(op="quit")
            self.proc.stdin.close()
            self.proc.wait(20)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait()


def weights_of(r):
    return np.frombuffer(base64.b64decode(r["w"]), dtype="<f4").reshape(SHAPE)


def run_step(workers, name, step, seed, ranks=None, lrs=None):
    ranks = range(len(workers)) if ranks is None else ranks
    for r in ranks:
        lr = (lrs or {}).get(r)
        workers[r].send(op="push", name=name, step=step, seed=seed, lr=lr)
    return {r: workers[r].get() for r in ranks}


# ---------------------------------------------------------------------------------------------
# cases


def trajectory(dm, workers):
    ref = h.reference()
    stub = dm.stub()
    h.register(stub, "w", SHAPE, "muon", MUON, workers=WORKERS, sync_mode=h.pb.SYNC_MODE_SYNC)
    w0 = h.seeded(SHAPE, 11, scale=0.1)
    h.upload(stub, "w", w0)
    opt = ref.Optimizer(dict(MUON, algo="muon"), SHAPE)
    w_ref = w0.astype(np.float64)
    worst = 0.0
    for step in range(5):
        res = run_step(workers, "w", step, seed=100)
        for r, x in res.items():
            assert x["ok"], "rank %d step %d: %s %s" % (r, step, x.get("code"), x.get("details"))
            assert x["step"] == step + 1, "rank %d got step %d after pushing %d" % (
                r, x["step"], step)
        ws = [weights_of(res[r]) for r in range(WORKERS)]
        for r in range(1, WORKERS):
            assert ws[r].tobytes() == ws[0].tobytes(), \
                "rank %d received weights that differ from rank 0's at step %d" % (r, step)
        mean = np.mean([grad(100, r, step).astype(np.float64) for r in range(WORKERS)], axis=0)
        w_prev = w_ref
        w_ref = opt.step(w_ref, mean)
        rel = h.rel_error(ws[0], w_ref, w_prev)
        worst = max(worst, rel)
        assert rel < TOL_MUON, "step %d: rel error %.3g vs the mean-gradient reference" % (
            step, rel)
    st, pulled = h.pull_one(stub, "w")
    assert st == 5 and pulled.tobytes() == ws[0].tobytes(), "Pull disagrees with the streams"
    # a reference that averaged 3 of the 4 gradients is far away: the check can fail
    opt3 = ref.Optimizer(dict(MUON, algo="muon"), SHAPE)
    w3 = w0.astype(np.float64)
    for step in range(5):
        w3 = opt3.step(w3, np.mean([grad(100, r, step) for r in range(3)], axis=0))
    assert h.rel_error(pulled, w3, w0) > 100 * TOL_MUON
    # step 5 with per-rank learning rates: the lowest rank that sent one wins (ranks 1 and 3 send
    # 0.1 and 0.3; ranks 0 and 2 send none) -> 0.1
    res = run_step(workers, "w", 5, seed=100, lrs={1: 0.1, 3: 0.3})
    assert all(x["ok"] and x["step"] == 6 for x in res.values()), res
    mean = np.mean([grad(100, r, 5).astype(np.float64) for r in range(WORKERS)], axis=0)
    w6 = opt.step(w_ref, mean, lr=0.1)
    rel = h.rel_error(weights_of(res[0]), w6, w_ref)
    assert rel < TOL_MUON, "step with lr from ranks 1 (0.1) and 3 (0.3): rel error %.3g vs lr " \
        "0.1" % rel
    return "6 steps, 4 workers, worst rel error %.2g (tolerance %g); per-rank lr: lowest rank's" \
        % (max(worst, rel), TOL_MUON)


def missing_worker(dm, workers):
    ref = h.reference()
    stub = dm.stub()
    h.register(stub, "wt", SHAPE, "muon", MUON, workers=WORKERS, sync_mode=h.pb.SYNC_MODE_SYNC,
               sync_timeout_ms=500)
    w0 = h.seeded(SHAPE, 12, scale=0.1)
    h.upload(stub, "wt", w0)
    res = run_step(workers, "wt", 0, seed=200)
    assert all(x["ok"] and x["step"] == 1 for x in res.values()), res
    before = h.describe(stub, "wt").step
    _, w_before = h.pull_one(stub, "wt")
    assert before == 1
    res = run_step(workers, "wt", 1, seed=300, ranks=[0, 1, 2])
    times = []
    for r, x in res.items():
        assert not x["ok"], "rank %d: the step succeeded without rank 3" % r
        assert x["code"] == "ABORTED", "rank %d got %s: %s" % (r, x["code"], x["details"])
        assert re.search(
            r"rank.*\b3\b.*did not push|did not push.*\b3\b", x["details"]), \
            "message does not name rank 3: %r" % x["details"]
        times.append(x["t"])
        assert 0.4 <= x["t"] <= 3.0, "rank %d: ABORTED after %.2f s (sync timeout 0.5 s)" % (
            r, x["t"])
    msg = res[0]["details"]
    st = h.describe(stub, "wt").step
    assert st == before, "counter moved %d -> %d on a failed step" % (before, st)
    st, w_after_fail = h.pull_one(stub, "wt")
    assert np.array_equal(w_after_fail, w_before), "weights changed on a failed step"
    # the full step now succeeds (fresh gradients; the aborted ones were discarded)
    res = run_step(workers, "wt", 1, seed=400)
    for r, x in res.items():
        assert x["ok"], "rank %d after the abort: %s %s" % (r, x.get("code"), x.get("details"))
        assert x["step"] == before + 1, "rank %d: step %d" % (r, x["step"])
    ws = [weights_of(res[r]) for r in range(WORKERS)]
    assert all(w.tobytes() == ws[0].tobytes() for w in ws)
    opt = ref.Optimizer(dict(MUON, algo="muon"), SHAPE)
    w1 = opt.step(w0, np.mean([grad(200, r, 0).astype(np.float64) for r in range(4)], axis=0))
    w2 = opt.step(w1, np.mean([grad(400, r, 1).astype(np.float64) for r in range(4)], axis=0))
    rel = h.rel_error(ws[0], w2, w1)
    assert rel < TOL_MUON, "weights after the recovered step: rel error %.3g" % rel
    assert h.describe(stub, "wt").step == before + 1
    return "ABORTED after %.2f-%.2f s: %r" % (min(times), max(times), msg)


def daemon_sync_timeout(args):
    """--sync-timeout-ms 500 with a parameter that leaves sync_timeout_ms at 0."""
    dm = h.Daemon(args.orthod, ["--sync-timeout-ms", "500"], keep=args.keep,
                  name="orthod-sync-timeout").start()
    ok = False
    try:
        stub = dm.stub()
        h.register(stub, "d", [4, 4], "adamw", workers=2, sync_mode=h.pb.SYNC_MODE_SYNC)
        t0 = time.monotonic()
        e = h.expect_rpc_error(lambda: h.step_once(stub, "d", 0, h.seeded([4, 4], 1), rank=0),
                               SC.ABORTED, r"\b1\b.*did not push|did not push.*\b1\b")
        t = time.monotonic() - t0
        assert 0.4 <= t <= 3.0, "ABORTED after %.2f s" % t
        assert h.describe(stub, "d").step == 0
        dm.stop()
        ok = True
        return "after %.2f s: %r" % (t, e.details())
    finally:
        dm.cleanup(failed=not ok)


def main():
    def extra(ap):
        ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
        ap.add_argument("--address")
        ap.add_argument("--rank", type=int)
    args = h.parse_args(__doc__, extra)
    if args.worker:
        return worker_main(args)
    h.require(args.orthod)
    runner = h.Runner("synchronous steps", args.only)
    try:
        dm = h.Daemon(args.orthod, keep=args.keep).start()
    except Exception as e:  # noqa: BLE001
        runner.fail("start the daemon", h.describe_exception(e))
        return runner.finish()
    workers = [Worker(args, dm.address, r) for r in range(WORKERS)]
    try:
        for w in workers:
            r = w.get(30)
            assert r.get("ready") == w.rank
        runner.case("4 workers x 6 sync steps = reference with the mean gradient", trajectory,
                    dm, workers)
        runner.case("missing worker: ABORTED naming rank 3, then a full step", missing_worker,
                    dm, workers)
    except Exception as e:  # noqa: BLE001
        runner.fail("worker processes", h.describe_exception(e))
    finally:
        for w in workers:
            w.quit()
    runner.case("daemon exits 0 on SIGTERM", dm.stop)
    dm.cleanup(failed=runner.failed > 0)
    runner.case("--sync-timeout-ms 500 applies to sync_timeout_ms=0", daemon_sync_timeout, args)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
