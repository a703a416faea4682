"""test_health.py — grpc.health.v1.Health: Check of "" and "orthod.v1.Optimizer" (SERVING), an
unknown service (NOT_FOUND), and Watch, which must report SERVING and then NOT_SERVING when the
daemon is told to stop (SIGTERM), before the stream closes.

Usage: /usr/bin/python3 test_health.py --orthod PATH --gen DIR
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


def check_serving(dm):
    H = h.health_pb.HealthCheckResponse
    for service in ("", h.SERVICE):
        r = h.health_check(dm, service)
        assert r.status == H.SERVING, "Check(%r) = %s" % (service, H.ServingStatus.Name(r.status))


def check_unknown(dm):
    for service in ("no.such.Service", "orthod.v1.Optimizer2"):
        h.expect_rpc_error(lambda: h.health_check(dm, service), SC.NOT_FOUND)


def check_check_metadata_free(dm):
    """Health is for probes: no protocol version metadata is needed, a wrong one is ignored or
    at least does not break it."""
    r = dm.health().Check(h.health_pb.HealthCheckRequest(service=""), timeout=5)
    assert r.status == h.health_pb.HealthCheckResponse.SERVING


class Watcher:
    """A Watch stream read by a thread; statuses land in a queue, then ('end', code)."""

    def __init__(self, dm, service=""):
        self.q = queue.Queue()
        self.call = dm.health().Watch(h.health_pb.HealthCheckRequest(service=service), timeout=30)
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            for r in self.call:
                self.q.put(("status", r.status, time.monotonic()))
            self.q.put(("end", grpc.StatusCode.OK, time.monotonic()))
        except grpc.RpcError as e:
            self.q.put(("end", e.code(), time.monotonic()))

    def get(self, timeout):
        return self.q.get(timeout=timeout)


def watch_then_sigterm(args):
    H = h.health_pb.HealthCheckResponse
    dm = h.Daemon(args.orthod, keep=args.keep, name="orthod-watch").start()
    ok = False
    try:
        w_all = Watcher(dm, "")
        w_svc = Watcher(dm, h.SERVICE)
        for w in (w_all, w_svc):
            ev = w.get(10)
            assert ev[0] == "status" and ev[1] == H.SERVING, "first Watch event %s" % (ev,)
        # nothing more while serving
        time.sleep(0.3)
        assert w_all.q.empty(), "unexpected Watch event %s" % (w_all.q.queue[0],)
        t0 = time.monotonic()
        dm.send_signal(signal.SIGTERM)
        seen = []
        for w in (w_all, w_svc):
            events = []
            while True:
                ev = w.get(10)
                events.append(ev)
                if ev[0] == "end":
                    break
            statuses = [H.ServingStatus.Name(e[1]) for e in events if e[0] == "status"]
            end = events[-1][1]
            seen.append("%s then stream end %s" % (statuses, end.name))
            assert statuses and statuses[0] == "NOT_SERVING", \
                "Watch after SIGTERM saw %s, expected NOT_SERVING before the end" % statuses
        rc, _ = dm.wait(10)
        took = time.monotonic() - t0
        assert rc == 0, "exit status %s\n%s" % (rc, dm.stderr_tail())
        assert took < 5.0, "exit took %.2f s" % took
        dm.stop()
        ok = True
        return "; ".join(seen) + "; exit 0 after %.2f s" % took
    finally:
        dm.cleanup(failed=not ok)


def watch_unknown(dm):
    """The standard: Watch of an unknown service answers SERVICE_UNKNOWN (and keeps the stream)."""
    H = h.health_pb.HealthCheckResponse
    w = Watcher(dm, "no.such.Service")
    ev = w.get(10)
    w.call.cancel()
    assert ev[0] == "status" and ev[1] == H.SERVICE_UNKNOWN, "Watch(unknown) gave %s" % (ev,)


def main():
    args = h.parse_args(__doc__)
    h.require(args.orthod)
    runner = h.Runner("health", args.only)
    try:
        dm = h.Daemon(args.orthod, keep=args.keep).start()
    except Exception as e:  # noqa: BLE001
        runner.fail("start the daemon", h.describe_exception(e))
        return runner.finish()
    runner.case("Check '' and 'orthod.v1.Optimizer' are SERVING", check_serving, dm)
    runner.case("Check of an unknown service is NOT_FOUND", check_unknown, dm)
    runner.case("Check needs no protocol metadata", check_check_metadata_free, dm)
    runner.case("Watch of an unknown service says SERVICE_UNKNOWN", watch_unknown, dm)
    runner.case("daemon exits 0 on SIGTERM", dm.stop)
    dm.cleanup(failed=runner.failed > 0)
    runner.case("Watch sees SERVING, then NOT_SERVING on SIGTERM", watch_then_sigterm, args)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
