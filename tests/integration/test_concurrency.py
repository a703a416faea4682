"""test_concurrency.py — 32 concurrent clients (threads, each with its own channel and Step
stream) x 50 steps on 32 distinct parameters (16x8; even ones Muon at precision highest, odd ones
AdamW). Every step must succeed, every final weight must equal the reference trajectory
(tests/reference/orthod_ref.py) within the class tolerance, every counter must be 50, and List
must show all 32.

Usage: /usr/bin/python3 test_concurrency.py --orthod PATH --gen DIR [--clients N] [--steps N]
"""

import os
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import np  # noqa: E402

SHAPE = [16, 8]
TOL = {"muon": 1e-4, "adamw": 1e-5}  # tests/reference/test_trajectories.py: TOL_FP32, TOL_ELEM
CONFIG = {"muon": {"lr": 0.02, "precision": "highest"}, "adamw": {"lr": 0.01}}


def algo_of(i):
    return "muon" if i % 2 == 0 else "adamw"


def client(dm, i, steps, out, barrier):
    name = "layer%02d.weight" % i
    try:
        ch = dm.channel()
        stub = h.pb_grpc.OptimizerStub(ch)
        algo = algo_of(i)
        h.register(stub, name, SHAPE, algo, CONFIG[algo])
        h.upload(stub, name, h.seeded(SHAPE, 1000 + i, scale=0.1))
        barrier.wait(30)
        s = h.StepStream(stub, timeout=120)
        w = None
        for step in range(steps):
            s.push(name, step, h.seeded(SHAPE, 2000 + i, step))
            st, w, _ = s.next_weights(name)
            assert st == step + 1, "%s: step %d answered with counter %d" % (name, step, st)
        s.finish()
        out[i] = ("ok", w.reshape(SHAPE))
    except Exception as e:  # noqa: BLE001
        out[i] = ("error", h.describe_exception(e))
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass


def concurrent_steps(dm, clients, steps):
    ref = h.reference()
    out = {}
    barrier = threading.Barrier(clients)
    threads = [threading.Thread(target=client, args=(dm, i, steps, out, barrier))
               for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    took = time.monotonic() - t0
    errors = ["client %d: %s" % (i, out[i][1]) for i in sorted(out) if out[i][0] != "ok"]
    missing = [i for i in range(clients) if i not in out]
    assert not errors and not missing, "errors: %s; unfinished: %s" % (errors, missing)
    worst = {"muon": 0.0, "adamw": 0.0}
    stub = dm.stub()
    for i in range(clients):
        algo = algo_of(i)
        name = "layer%02d.weight" % i
        w0 = h.seeded(SHAPE, 1000 + i, scale=0.1)
        opt = ref.Optimizer(dict(CONFIG[algo], algo=algo), SHAPE)
        w = w0.astype(np.float64)
        for step in range(steps):
            w = opt.step(w, h.seeded(SHAPE, 2000 + i, step))
        rel = h.rel_error(out[i][1], w, w0)
        worst[algo] = max(worst[algo], rel)
        assert rel < TOL[algo], "%s (%s): rel error %.3g >= %g" % (name, algo, rel, TOL[algo])
        info = h.describe(stub, name)
        assert info.step == steps, "%s: counter %d" % (name, info.step)
    lst = stub.List(h.pb.ListRequest(prefix="layer"), timeout=10, metadata=h.md())
    names = [p.spec.name for p in lst.params]
    assert names == ["layer%02d.weight" % i for i in range(clients)], names
    assert all(p.step == steps for p in lst.params)
    return "%d clients x %d steps in %.1f s (%.0f steps/s); worst rel error muon %.2g, adamw %.2g" \
        % (clients, steps, took, clients * steps / took, worst["muon"], worst["adamw"])


def main():
    def extra(ap):
        ap.add_argument("--clients", type=int, default=32)
        ap.add_argument("--steps", type=int, default=50)
    args = h.parse_args(__doc__, extra)
    h.require(args.orthod)
    runner = h.Runner("concurrency", args.only)
    try:
        dm = h.Daemon(args.orthod, keep=args.keep).start()
    except Exception as e:  # noqa: BLE001
        runner.fail("start the daemon", h.describe_exception(e))
        return runner.finish()
    runner.case("%d clients x %d steps on %d parameters" % (args.clients, args.steps,
                                                            args.clients),
                concurrent_steps, dm, args.clients, args.steps)
    runner.case("health still SERVING", lambda: h.health_check(dm))
    runner.case("daemon exits 0 on SIGTERM", dm.stop)
    dm.cleanup(failed=runner.failed > 0)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
