"""test_valgrind.py — a short session against the daemon running under valgrind memcheck:
register, upload, 3 steps, pull, a few bad requests, a SYNC push aborted by Drop, a Checkpoint,
metrics scrapes (and an HTTP peer left idle), SIGTERM with an open Step stream and a pending SYNC
push (the final checkpoint); then a second daemon under memcheck restores that checkpoint. Each
exit status must be 0 (valgrind's --error-exitcode=99 turns any memory error or definite leak
into 99) and each log must show no invalid reads/writes and no definitely lost bytes. Skips (77)
without valgrind.

Usage: /usr/bin/python3 test_valgrind.py --orthod PATH --gen DIR
"""

import http.client
import os
import re
import shutil
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import grpc, np  # noqa: E402

SC = grpc.StatusCode


def session(dm):
    stub = dm.stub()
    h.register(stub, "w", [16, 8], "muon", {"lr": 0.02})
    h.register(stub, "b", [16], "adamw")
    w0 = h.seeded([16, 8], 1, scale=0.1)
    h.upload(stub, "w", w0, n_chunks=2)
    s = h.StepStream(stub, timeout=120)
    for step in range(3):
        s.push("w", step, h.seeded([16, 8], 2, step), n_chunks=2)
        s.push("b", step, h.seeded([16], 3, step))
        got = set()
        for _ in range(2):
            st, w, _ = s.next_weights()
            assert st == step + 1
            got.add(len(w))
        assert got == {128, 16}
    s.finish()
    pulled, order = h.pull(stub, [], h.pb.DTYPE_BF16)
    assert order == ["b", "w"] and pulled["w"][0] == 3
    stub.List(h.pb.ListRequest(), timeout=30, metadata=h.md())
    stub.SetConfig(h.pb.SetConfigRequest(name="w", options=h.options({"lr": 0.01})), timeout=30,
                   metadata=h.md())
    # bad requests: each must fail cleanly
    h.expect_rpc_error(lambda: h.register(stub, "x", [4, 0]), SC.INVALID_ARGUMENT)
    h.expect_rpc_error(lambda: h.register(stub, "x", [4, 4], "adamw", {"foo": "1"}),
                       SC.INVALID_ARGUMENT)
    h.expect_rpc_error(lambda: h.describe(stub, "nosuch"), SC.NOT_FOUND)
    h.expect_rpc_error(lambda: h.step_once(stub, "w", 0, h.seeded([16, 8], 4)),
                       SC.FAILED_PRECONDITION)
    g = h.seeded([16, 8], 5)
    g[0, 0] = np.nan
    h.expect_rpc_error(lambda: h.step_once(stub, "w", 3, g), SC.INVALID_ARGUMENT)
    bad = [h.pb.UploadRequest(name="w", chunk=h.chunk(np.zeros(64, np.float32), 0))]
    h.expect_rpc_error(lambda: stub.Upload(iter(bad), timeout=30, metadata=h.md()),
                       SC.INVALID_ARGUMENT)
    raw = dm.channel().unary_unary("/orthod.v1.Optimizer/Register", request_serializer=None,
                                   response_deserializer=None)
    h.expect_rpc_error(lambda: raw(b"\xff\xff\xff", timeout=30), SC.INVALID_ARGUMENT)
    # a stream left half-sent and cancelled by the client
    s = h.StepStream(stub, timeout=120)
    s.push("w", 3, h.seeded([16, 8], 6)[:8], n_chunks=1)
    time.sleep(0.5)
    s.cancel()
    stub.Drop(h.pb.DropRequest(name="b"), timeout=30, metadata=h.md())
    # an upload with a gap; a SYNC push aborted by Drop
    gap = [h.pb.UploadRequest(name="w", chunk=h.chunk(np.zeros(64, np.float32), 0))]
    h.expect_rpc_error(lambda: stub.Upload(iter(gap), timeout=30, metadata=h.md()),
                       SC.INVALID_ARGUMENT)
    h.register(stub, "s", [8, 8], "adamw", workers=2, sync_mode=h.pb.SYNC_MODE_SYNC)
    p = h.StepStream(stub, timeout=120)
    p.push("s", 0, h.seeded([8, 8], 8), rank=0)
    time.sleep(0.5)
    stub.Drop(h.pb.DropRequest(name="s"), timeout=30, metadata=h.md())
    h.expect_rpc_error(lambda: p.next_weights("s"), SC.ABORTED)
    # a checkpoint, metrics and the probe (the port is in the log)
    ck = stub.Checkpoint(h.pb.CheckpointRequest(), timeout=60, metadata=h.md())
    assert ck.sequence == 1 and ck.parameters == 1, ck  # w ("b" and "s" were dropped)
    port = int(re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", dm.stderr_text()).group(1))
    for path, want in (("/metrics", b"orthod_checkpoints_total{result=\"written\"} 1\n"),
                       ("/healthz", b"ok\n"), ("/nope", b"not found")):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", path)
        body = c.getresponse().read()
        c.close()
        assert want in body, (path, body[:200])
    idle = socket.create_connection(("127.0.0.1", port), timeout=60)
    idle.sendall(b"GET /metr")  # half a request, left open for the shutdown
    # left open for the shutdown: a stream after a step, and a pending SYNC push
    s = h.StepStream(stub, timeout=120)
    s.push("w", 3, h.seeded([16, 8], 7))
    st, _, _ = s.next_weights("w")
    assert st == 4
    h.register(stub, "s2", [8, 8], "adamw", workers=2, sync_mode=h.pb.SYNC_MODE_SYNC)
    p = h.StepStream(stub, timeout=120)
    p.push("s2", 0, h.seeded([8, 8], 9), rank=1)
    time.sleep(0.5)
    return s, p, idle


def check_log(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    problems = []
    for m in re.finditer(r"definitely lost: ([\d,]+) bytes", text):
        if int(m.group(1).replace(",", "")) != 0:
            problems.append(m.group(0))
    for pat in (r"Invalid (read|write|free)", r"uninitialised value", r"Mismatched free",
                r"Source and destination overlap"):
        for m in re.finditer(pat, text):
            problems.append(m.group(0))
    summary = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    return problems, summary.group(0) if summary else "no ERROR SUMMARY"


def main():
    args = h.parse_args(__doc__)
    h.require(args.orthod)
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind not found: skipping")
        return h.SKIP
    runner = h.Runner("valgrind", args.only)
    dm, log = under_valgrind(args, valgrind, "orthod-valgrind")
    try:
        dm.start()
    except Exception as e:  # noqa: BLE001
        runner.fail("start the daemon under valgrind", h.describe_exception(e))
        dm.cleanup(failed=True)
        return runner.finish()
    state = {}

    def run_session():
        state["stream"] = session(dm)

    runner.case("session under valgrind (register, upload, steps, pull, bad requests)",
                run_session)

    def stop():
        return stop_and_check(dm, log)

    runner.case("SIGTERM: exit 0, no memory errors, no definite leaks", stop)

    def restore():
        again, log2 = under_valgrind(args, valgrind, "orthod-valgrind-restored")
        again.state_dir = dm.state_dir
        try:
            again.start()
            info = h.describe(again.stub(), "w", timeout=60)
            assert info.step == 4, info
            return stop_and_check(again, log2)
        finally:
            again.kill()
            again.cleanup(failed=runner.failed > 0)

    runner.case("restore the final checkpoint under valgrind: exit 0, no errors", restore)
    dm.cleanup(failed=runner.failed > 0)
    return runner.finish()


def stop_and_check(dm, log):
    """SIGTERM, then exit status 0 and a clean memcheck log."""
    t0 = time.monotonic()
    dm.send_signal(signal.SIGTERM)
    rc, _ = dm.wait(120)
    if rc is None:
        dm.kill()
        raise AssertionError("no exit within 120 s of SIGTERM under valgrind")
    took = time.monotonic() - t0
    dm.stop(expect_rc=None)
    problems, summary = check_log(log)
    assert rc == 0, "exit status %d (99: valgrind found errors); %s; %s\n%s" % (
        rc, summary, problems[:10], tail(log))
    assert not problems, "%s; %s\n%s" % (summary, problems[:10], tail(log))
    return "exit 0 after %.1f s; %s" % (took, summary)


def under_valgrind(args, valgrind, name):
    """A Daemon (not started) under memcheck, with its metrics endpoint; returns it and the
    path of valgrind's log."""
    dm = h.Daemon(args.orthod, ["--drain-timeout-ms", "3000", "--metrics-listen", "127.0.0.1:0",
                                "--checkpoint-interval-s", "0"], keep=args.keep, name=name,
                  start_timeout=60)
    log = os.path.join(dm.tmp, "valgrind.log")
    dm.wrapper = [valgrind, "--error-exitcode=99", "--leak-check=full",
                  "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
                  "--track-fds=no", "--log-file=" + log,
                  "--suppressions=" + os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "valgrind.supp")]
    return dm, log


def tail(path, n=60):
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return ""
    return "\n".join(["---- %s (last %d lines) ----" % (path, min(n, len(lines)))] + lines[-n:])


if __name__ == "__main__":
    sys.exit(main())
