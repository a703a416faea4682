"""test_shutdown.py — SIGTERM and SIGINT while calls are in flight.

1. SIGTERM while the daemon streams the weights of a 2048x2048 parameter back (64 KiB chunks, the
   client reading slowly): the daemon exits 0 within 5 s, the Step stream ends with UNAVAILABLE
   or CANCELLED (which one is reported), and a health Watch opened before sees NOT_SERVING before
   its stream closes.
2. SIGTERM while a client is half-way through sending a gradient: same expectations, and the
   half-sent gradient is never applied (nothing to observe after exit but the exit itself).
3. SIGINT with an idle open Step stream: exit 0 within 5 s.

Usage: /usr/bin/python3 test_shutdown.py --orthod PATH --gen DIR
"""

import os
import queue
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import grpc  # noqa: E402

SC = grpc.StatusCode
ENDS = (SC.UNAVAILABLE, SC.CANCELLED)
EXIT_LIMIT = 5.0


class Watcher:
    def __init__(self, dm):
        self.q = queue.Queue()
        self.call = dm.health().Watch(h.health_pb.HealthCheckRequest(service=""), timeout=60)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        try:
            for r in self.call:
                self.q.put(h.health_pb.HealthCheckResponse.ServingStatus.Name(r.status))
            self.q.put("end OK")
        except grpc.RpcError as e:
            self.q.put("end " + e.code().name)

    def first(self):
        return self.q.get(timeout=10)

    def rest(self):
        out = []
        while True:
            ev = self.q.get(timeout=15)
            out.append(ev)
            if ev.startswith("end"):
                return out


def drain_stream(s, limit=100000):
    """Read a Step stream to its end; returns (responses read, final status code)."""
    n = 0
    try:
        for _ in range(limit):
            s.recv()
            n += 1
    except StopIteration:
        return n, SC.OK
    except grpc.RpcError as e:
        return n, e.code()
    return n, None


def wait_exit(dm, t0):
    rc, _ = dm.wait(15)
    took = time.monotonic() - t0
    if rc is None:
        dm.kill()
        raise AssertionError("the daemon did not exit within 15 s of the signal\n%s"
                             % dm.stderr_tail())
    assert rc == 0, "exit status %s\n%s" % (rc, dm.stderr_tail())
    assert took < EXIT_LIMIT, "exit took %.2f s (limit %.0f s)" % (took, EXIT_LIMIT)
    dm.stop()
    return took


def mid_reply(args):
    n = 2048
    dm = h.Daemon(args.orthod, ["--chunk-bytes", "65536"], keep=args.keep,
                  name="orthod-mid-reply").start()
    ok = False
    try:
        stub = dm.stub()
        h.register(stub, "big", [n, n], "adamw", {"lr": 0.01})
        w0 = h.seeded([n, n], 1, scale=0.1)
        h.upload(stub, "big", w0, n_chunks=16)
        watch = Watcher(dm)
        assert watch.first() == "SERVING"
        s = h.StepStream(stub, timeout=60)
        s.push("big", 0, h.seeded([n, n], 2), n_chunks=16)
        first = s.recv()
        assert first.name == "big" and first.step == 1 and not first.last
        time.sleep(0.2)  # the daemon is now blocked on flow control, mid-transfer
        t0 = time.monotonic()
        dm.send_signal(signal.SIGTERM)
        got, end = drain_stream(s)
        watch_events = watch.rest()
        took = wait_exit(dm, t0)
        total = n * n * 4 // 65536
        assert end in ENDS, "stream ended with %s after %d of %d chunks" % (
            end and end.name, got + 1, total)
        assert watch_events[0] == "NOT_SERVING", "Watch after SIGTERM: %s" % watch_events
        ok = True
        return "stream ended %s after %d of %d reply chunks; Watch %s; exit 0 after %.2f s" % (
            end.name, got + 1, total, watch_events, took)
    finally:
        if dm.alive():
            dm.kill()
        dm.cleanup(failed=not ok)


def half_sent(args):
    n = 1024
    dm = h.Daemon(args.orthod, keep=args.keep, name="orthod-half-sent").start()
    ok = False
    try:
        stub = dm.stub()
        h.register(stub, "m", [n, n], "adamw")
        watch = Watcher(dm)
        assert watch.first() == "SERVING"
        s = h.StepStream(stub, timeout=60)
        chunks = h.split_chunks(h.seeded([n, n], 3), 8)
        for c in chunks[:4]:
            s.send(h.pb.StepRequest(name="m", step=0, chunk=c))
        time.sleep(0.3)
        t0 = time.monotonic()
        dm.send_signal(signal.SIGTERM)
        got, end = drain_stream(s)
        watch_events = watch.rest()
        took = wait_exit(dm, t0)
        assert got == 0, "%d responses for a half-sent gradient" % got
        assert end in ENDS, "stream ended with %s" % (end and end.name)
        assert watch_events[0] == "NOT_SERVING", "Watch after SIGTERM: %s" % watch_events
        ok = True
        return "stream ended %s; Watch %s; exit 0 after %.2f s" % (end.name, watch_events, took)
    finally:
        if dm.alive():
            dm.kill()
        dm.cleanup(failed=not ok)


def idle_stream(args, sig):
    """An open Step stream that has finished one step and sends nothing more (the usual state
    of a training client between iterations) when the signal arrives."""
    dm = h.Daemon(args.orthod, keep=args.keep, name="orthod-%s" % sig.name.lower()).start()
    ok = False
    try:
        stub = dm.stub()
        h.register(stub, "a", [8, 8], "muon")
        s = h.StepStream(stub, timeout=60)
        s.push("a", 0, h.seeded([8, 8], 4))
        st, _, _ = s.next_weights("a")
        assert st == 1
        t0 = time.monotonic()
        dm.send_signal(sig)
        got, end = drain_stream(s)
        took = wait_exit(dm, t0)
        assert end in ENDS, "idle stream ended with %s" % (end and end.name)
        ok = True
        return "idle stream ended %s; exit 0 after %.2f s" % (end.name, took)
    finally:
        if dm.alive():
            dm.kill()
        dm.cleanup(failed=not ok)


def idle_sigterm(args):
    dm = h.Daemon(args.orthod, keep=args.keep, name="orthod-idle").start()
    ok = False
    try:
        t0 = time.monotonic()
        dm.send_signal(signal.SIGTERM)
        took = wait_exit(dm, t0)
        assert dm.extra_stdout() == b"", "stdout after the listen line: %r" % dm.extra_stdout()
        ok = True
        return "exit 0 after %.2f s" % took
    finally:
        dm.cleanup(failed=not ok)


def racing_calls(args):
    """Unary calls issued continuously by 4 threads while SIGTERM arrives: every call that fails
    must fail with UNAVAILABLE (docs/PROTOCOL.md: new calls during a shutdown get UNAVAILABLE;
    connection refused is UNAVAILABLE on the client too), never CANCELLED or anything else.
    Two rounds, since the window is a few milliseconds wide."""
    seen = {}
    bad = {}
    for rnd in range(2):
        dm = h.Daemon(args.orthod, keep=args.keep, name="orthod-race-%d" % rnd).start()
        try:
            stub = dm.stub()
            h.register(stub, "a", [4, 4], "adamw")
            stop = threading.Event()
            lock = threading.Lock()

            def loop():
                while not stop.is_set():
                    try:
                        h.describe(stub, "a", timeout=5)
                        key = "OK"
                    except grpc.RpcError as e:
                        d = e.details() or ""
                        key = "%s: %s" % (e.code().name, "connection refused" if
                                          "onnect" in d else d)
                        if e.code() != SC.UNAVAILABLE:
                            with lock:
                                bad[key] = bad.get(key, 0) + 1
                    with lock:
                        seen[key] = seen.get(key, 0) + 1
            threads = [threading.Thread(target=loop) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.3)
            t0 = time.monotonic()
            dm.send_signal(signal.SIGTERM)
            rc, _ = dm.wait(10)
            time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join(10)
            assert rc == 0 and time.monotonic() - t0 < EXIT_LIMIT + 1, "exit status %s" % rc
            dm.stop()
        finally:
            if dm.alive():
                dm.kill()
            dm.cleanup(failed=bool(bad))
    summary = ", ".join("%s x%d" % (k, v) for k, v in sorted(seen.items()) if k != "OK")
    assert not bad, "calls racing with SIGTERM ended with %s (expected UNAVAILABLE); all " \
        "failures: %s" % (bad, summary)
    return summary


def main():
    args = h.parse_args(__doc__)
    h.require(args.orthod)
    runner = h.Runner("shutdown", args.only)
    runner.case("SIGTERM on an idle daemon: exit 0", idle_sigterm, args)
    runner.case("SIGTERM while 2048x2048 weights stream back", mid_reply, args)
    runner.case("SIGTERM while a gradient is half sent", half_sent, args)
    runner.case("SIGTERM with an idle open Step stream", idle_stream, args, signal.SIGTERM)
    runner.case("SIGINT with an idle open Step stream", idle_stream, args, signal.SIGINT)
    runner.case("unary calls racing with SIGTERM fail only with UNAVAILABLE", racing_calls, args)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
