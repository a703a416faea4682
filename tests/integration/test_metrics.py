"""test_metrics.py — the HTTP metrics endpoint (--metrics-listen).

1. Counters follow what the daemon does: parameters and device bytes, calls by method, errors by
   method and code, steps applied and not applied (a NaN gradient under --nonfinite skip), the step
   time histogram (cumulative buckets, count, sum), tensor bytes received and sent (exactly the
   chunk data of the uploads, gradients, replies and pulls), checkpoints; every line is valid text
   exposition format and every family has HELP and TYPE.
2. HTTP: /healthz 200 "ok"; HEAD; 404, 405, 400, 431; a peer that connects and sends nothing
   neither blocks other scrapes nor the shutdown.
3. Start errors: a malformed --metrics-listen is a configuration error (exit 2), a port in use
   stops the start (exit 1).

Usage: /usr/bin/python3 test_metrics.py --orthod PATH --gen DIR
"""

import http.client
import math
import os
import re
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import grpc, np  # noqa: E402

SC = grpc.StatusCode
LINE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$')
PORT_RE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def start(args, flags=()):
    dm = h.Daemon(args.orthod, flags=["--metrics-listen", "127.0.0.1:0",
                                      "--checkpoint-interval-s", "0"] + list(flags))
    dm.start()
    m = PORT_RE.search(dm.stderr_text())
    assert m, "no metrics line in the log\n%s" % dm.stderr_tail()
    dm.metrics_port = int(m.group(1))
    return dm


def http_get(dm, path, method="GET", timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", dm.metrics_port, timeout=timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()


def scrape(dm):
    """{(name, labels): value} of one scrape, checking the format on the way."""
    status, ctype, body = http_get(dm, "/metrics")
    assert status == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8", (status, ctype)
    assert body.endswith("\n"), "body does not end with a newline"
    out, helped, typed = {}, set(), {}
    for ln in body.split("\n")[:-1]:
        if ln.startswith("# HELP "):
            helped.add(ln.split()[2])
            continue
        if ln.startswith("# TYPE "):
            _, _, name, kind = ln.split()
            assert kind in ("counter", "gauge", "histogram"), ln
            typed[name] = kind
            continue
        m = LINE_RE.match(ln)
        assert m, "not an exposition line: %r" % ln
        name, labels, value = m.group(1), m.group(3) or "", m.group(4)
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert base in typed and base in helped, "%s has no HELP/TYPE" % name
        key = (name, labels)
        assert key not in out, "duplicate series %s{%s}" % key
        out[key] = float(value)
    return out


def test_counters(args):
    dm = start(args, ["--nonfinite", "skip"])
    try:
        m0 = scrape(dm)
        info = [k[1] for k in m0 if k[0] == "orthod_build_info"]
        assert len(info) == 1 and re.match(r'^version="\d+\.\d+\.\d+",protocol="1",'
                                           r'backend="(cpu|cuda)"$', info[0]), info
        assert m0[("orthod_serving", "")] == 1
        assert m0[("orthod_parameters", "")] == 0
        assert abs(m0[("orthod_start_time_seconds", "")] - time.time()) < 600
        stub = dm.stub()
        h.register(stub, "w", (16, 8), "muon")
        h.register(stub, "b", (8,), "adamw")
        w0 = h.seeded((16, 8), 1).reshape(-1)
        h.upload(stub, "w", w0, n_chunks=2)
        h.expect_rpc_error(lambda: h.describe(stub, "nope"), SC.NOT_FOUND)
        h.expect_rpc_error(lambda: h.describe(stub, "nope"), SC.NOT_FOUND)
        h.expect_rpc_error(lambda: h.register(stub, "w", (16, 9), "muon"), SC.ALREADY_EXISTS)
        h.step_once(stub, "w", 0, h.seeded((16, 8), 2).reshape(-1))
        h.step_once(stub, "b", 0, h.seeded((8,), 3).reshape(-1), reply_dtype=h.pb.DTYPE_BF16)
        nan = np.full(8, np.nan, np.float32)
        h.step_once(stub, "b", 1, nan)  # skipped: the counter moves, the weights do not
        h.pull(stub, ["w"])
        ck = dm.stub().Checkpoint(h.pb.CheckpointRequest(), timeout=30, metadata=h.md())
        m = scrape(dm)
        assert m[("orthod_parameters", "")] == 2
        info = dm.stub().List(h.pb.ListRequest(), timeout=10, metadata=h.md())
        assert m[("orthod_device_bytes", "")] == info.device_bytes_used > 0
        assert m[("orthod_device_bytes_limit", "")] == 0
        calls = {k[1]: v for k, v in m.items() if k[0] == "orthod_rpcs_total"}
        want = {'method="Register"': 3, 'method="Upload"': 1, 'method="Describe"': 2,
                'method="Step"': 3, 'method="Pull"': 1, 'method="Checkpoint"': 1}
        assert calls == want, "rpcs: %s" % calls  # List comes after this scrape
        errs = {k[1]: v for k, v in m.items() if k[0] == "orthod_rpc_errors_total"}
        assert errs == {'method="Describe",code="NOT_FOUND"': 2,
                        'method="Register",code="ALREADY_EXISTS"': 1}, errs
        assert m[("orthod_steps_total", 'result="applied"')] == 2
        assert m[("orthod_steps_total", 'result="not_applied"')] == 1
        assert m[("orthod_step_seconds_count", "")] == 3
        assert m[("orthod_step_seconds_bucket", 'le="+Inf"')] == 3
        assert 0 < m[("orthod_step_seconds_sum", "")] < 60
        buckets = sorted((float(k[1][4:-1]), v) for k, v in m.items()
                         if k[0] == "orthod_step_seconds_bucket" and "Inf" not in k[1])
        assert all(b[1] <= c[1] for b, c in zip(buckets, buckets[1:])), "not cumulative"
        # bytes: upload 128 f32, gradients 128 + 8 + 8 f32; replies 128 f32 + 8 bf16 + 8 f32,
        # pull 128 f32
        assert m[("orthod_tensor_bytes_received_total", "")] == (128 + 128 + 8 + 8) * 4
        assert m[("orthod_tensor_bytes_sent_total", "")] == 128 * 4 + 8 * 2 + 8 * 4 + 128 * 4
        assert m[("orthod_checkpoints_total", 'result="written"')] == 1
        assert m[("orthod_checkpoints_total", 'result="failed"')] == 0
        assert m[("orthod_checkpoint_last_bytes", "")] == ck.bytes
        assert abs(m[("orthod_checkpoint_last_success_time_seconds", "")] - time.time()) < 600
        assert math.isfinite(m[("orthod_checkpoint_last_duration_seconds", "")])
        dm.stop()
    finally:
        dm.kill()
        dm.cleanup()


def test_http(args):
    dm = start(args)
    idle = None
    try:
        assert http_get(dm, "/healthz")[0::2] == (200, "ok\n")
        assert http_get(dm, "/healthz", "HEAD")[0::2] == (200, "")
        assert http_get(dm, "/metrics?x=1")[0] == 200
        assert http_get(dm, "/nope")[0] == 404
        assert http_get(dm, "/metrics", "POST")[0] == 405
        # a peer that connects and says nothing: other scrapes go on
        idle = socket.create_connection(("127.0.0.1", dm.metrics_port), timeout=10)
        assert http_get(dm, "/healthz")[0] == 200
        with socket.create_connection(("127.0.0.1", dm.metrics_port), timeout=10) as s:
            s.sendall(b"GARBAGE\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400 "), "malformed request line"
        with socket.create_connection(("127.0.0.1", dm.metrics_port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000)
            assert s.recv(100).startswith(b"HTTP/1.1 431 "), "oversized head"
        took = dm.stop()  # the idle connection does not hold the exit
        assert took < 5, "exit took %.1f s" % took
    finally:
        if idle is not None:
            idle.close()
        dm.kill()
        dm.cleanup()


def test_start_errors(args):
    tmp = h.Daemon(args.orthod)  # for its temporary directory only
    try:
        p = subprocess.run([args.orthod, "--listen", "127.0.0.1:0", "--state-dir", tmp.state_dir,
                            "--metrics-listen", "nohost"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        assert p.returncode == 2 and b"--metrics-listen" in p.stderr, (p.returncode, p.stderr)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            p = subprocess.run([args.orthod, "--listen", "127.0.0.1:0", "--state-dir",
                                tmp.state_dir, "--metrics-listen", "127.0.0.1:%d" % port],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert p.returncode == 1 and re.search(rb"metrics-listen 127\.0\.0\.1:\d+: address "
                                               rb"already in use", p.stderr), (p.returncode,
                                                                              p.stderr[-500:])
    finally:
        tmp.cleanup()


def main():
    args = h.parse_args(__doc__)
    h.require(args.orthod)
    runner = h.Runner("metrics", args.only)
    runner.case("counters follow the calls, steps, bytes and checkpoints", test_counters, args)
    runner.case("HTTP: healthz, HEAD, 404/405/400/431, an idle peer", test_http, args)
    runner.case("start errors: bad address (exit 2), port in use (exit 1)", test_start_errors,
                args)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
