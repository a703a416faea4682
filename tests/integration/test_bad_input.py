"""test_bad_input.py — the bad-input table: every case asserts the exact gRPC status code and a
pattern of the message, and after every case the daemon must still answer Health Check (SERVING)
and a normal Step of a control parameter (whose step counter must advance by exactly one).

The expected codes and messages are those of docs/PROTOCOL.md ("Status codes" and the sections
of each RPC). Cases that need other daemon flags (message size, memory limit, parameter count,
non-finite policy, shutdown) run on daemons of their own. A daemon that dies during a case is
reported by that case and restarted for the next ones. Last, start-up failures: refused
configuration (exit 2, `orthod: ...` naming the key and its source), state directory and
address in use (exit 1), and --version.

Usage: /usr/bin/python3 test_bad_input.py --orthod PATH --gen DIR [--only SUBSTRING] [--keep]
"""

import os
import re
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import grpc, np  # noqa: E402

SC = grpc.StatusCode
MAX_TENSOR = 1000000

# ---------------------------------------------------------------------------------------------
# fixture: a daemon with a control parameter and the parameters the cases use


class Fixture:
    def __init__(self, args, flags=(), name="orthod"):
        self.args = args
        self.flags = list(flags)
        self.name = name
        self.dm = None
        self.restarts = 0
        self.daemons = []

    def start(self):
        self.dm = h.Daemon(self.args.orthod, self.flags, keep=self.args.keep, name=self.name)
        self.daemons.append(self.dm)
        self.dm.start()
        self.stub = self.dm.stub()
        h.register(self.stub, "control", [4, 4], "adamw", {"lr": 0.01})
        h.upload(self.stub, "control", h.seeded([4, 4], 1))

    def ensure(self):
        """(Re)start the daemon when it is not running (a crash is reported by the case that
        caused it; the next cases get a fresh daemon)."""
        if self.dm is None or not self.dm.alive():
            if self.dm is not None:
                self.restarts += 1
            self.start()
            self.setup()

    def setup(self):
        pass

    def control(self):
        """Health SERVING and one normal Step of the control parameter."""
        assert self.dm.alive(), "the daemon is no longer running (exit status %s)" % (
            self.dm.proc.poll())
        r = h.health_check(self.dm)
        assert r.status == h.health_pb.HealthCheckResponse.SERVING, "health says %s" % r.status
        before = h.describe(self.stub, "control").step
        st, w = h.step_once(self.stub, "control", before, h.seeded([4, 4], 2, before))
        assert st == before + 1, "control step counter %d -> %d" % (before, st)
        assert np.all(np.isfinite(w)), "control weights not finite"

    def run(self, runner, name, fn):
        """One case: the case function, then the control check (both always run)."""
        def body():
            self.ensure()
            err = None
            try:
                fn(self)
            except Exception as e:  # noqa: BLE001
                err = e
            try:
                self.control()
            except Exception as e:  # noqa: BLE001
                raise AssertionError("%sthe daemon did not serve the control calls after the "
                                     "case: %s" % (("case failed (%s) and " % h.describe_exception(err))
                                                   if err else "", h.describe_exception(e)))
            if err is not None:
                raise err
        runner.case(name, body)

    def stop(self, runner):
        for d in self.daemons:
            if d.alive():
                try:
                    d.stop()
                except AssertionError as e:
                    runner.fail("%s exits 0 on SIGTERM" % self.name, str(e))
                    d.cleanup(failed=True)
                    continue
            d.cleanup(failed=runner.failed > 0)


class MainFixture(Fixture):
    def setup(self):
        s = self.stub
        # 'p': 4x4 AdamW, one worker (async), stepped once so that stale and future steps exist.
        h.register(s, "p", [4, 4], "adamw", {"lr": 0.01})
        self.p_w0 = h.seeded([4, 4], 3)
        h.upload(s, "p", self.p_w0)
        st, _ = h.step_once(s, "p", 0, h.seeded([4, 4], 4))
        assert st == 1
        # 's2': two synchronous workers.
        h.register(s, "s2", [4, 4], "adamw", workers=2, sync_mode=h.pb.SYNC_MODE_SYNC)


def state_of(stub, name):
    step, w = h.pull_one(stub, name)
    return h.describe(stub, name).step, step, w


def assert_unchanged(stub, name, before):
    after = state_of(stub, name)
    assert after[0] == before[0], "step counter (Describe) %d -> %d" % (before[0], after[0])
    assert after[1] == before[1], "step counter (Pull) %d -> %d" % (before[1], after[1])
    assert np.array_equal(after[2], before[2]), "weights changed (max diff %g)" % (
        np.max(np.abs(after[2] - before[2])))


# ---------------------------------------------------------------------------------------------
# Register


def reg_case(shape, pattern, code=SC.INVALID_ARGUMENT, name="bad", algorithm="adamw", opts=None,
             **kw):
    def fn(fx):
        h.expect_rpc_error(lambda: h.register(fx.stub, name, shape, algorithm, opts, **kw),
                           code, pattern)
        # nothing half-registered
        if name and len(name) < 256 and "\x01" not in name and name != "p":
            h.expect_rpc_error(lambda: h.describe(fx.stub, name), SC.NOT_FOUND)
    return fn


def case_reregister(fx):
    # identical spec: idempotent
    r = h.register(fx.stub, "p", [4, 4], "adamw", {"lr": 0.01})
    assert r.created is False, "identical re-register says created=%s" % r.created
    assert r.info.step == 1, "re-register reports step %d" % r.info.step
    h.expect_rpc_error(lambda: h.register(fx.stub, "p", [4, 5], "adamw", {"lr": 0.01}),
                       SC.ALREADY_EXISTS, r"'?p'?.*(exists|shape)")
    h.expect_rpc_error(lambda: h.register(fx.stub, "p", [4, 4], "adamw", {"lr": 0.02}),
                       SC.ALREADY_EXISTS, r"exists")
    h.expect_rpc_error(lambda: h.register(fx.stub, "p", [4, 4], "muon", {"lr": 0.01}),
                       SC.ALREADY_EXISTS, r"exists")


# ---------------------------------------------------------------------------------------------
# Upload chunk ranges and dtypes (parameter 'p', 16 elements)


def upload_case(chunks, pattern, code=SC.INVALID_ARGUMENT, name="p"):
    def fn(fx):
        before = state_of(fx.stub, "p")
        reqs = [h.pb.UploadRequest(name=name, chunk=c) for c in chunks]
        h.expect_rpc_error(lambda: fx.stub.Upload(iter(reqs), timeout=10, metadata=h.md()),
                           code, pattern)
        assert_unchanged(fx.stub, "p", before)
    return fn


def raw_chunk(offset, data, dt):
    return h.pb.TensorChunk(offset=offset, dtype=dt, data=data)


def vals(n, seed=5):
    return h.seeded([n], seed)


def upload_chunks_gap():
    return [h.chunk(vals(8), 0), h.chunk(vals(4), 12)]


# ---------------------------------------------------------------------------------------------
# Step


def step_case(reqs_fn, pattern, code=SC.INVALID_ARGUMENT, check=("p",), metadata=None,
              half_close=False):
    """Send the requests of reqs_fn(fx) on a Step stream (then half-close it if asked); the
    stream must end with code, and the parameters in `check` must be unchanged."""
    def fn(fx):
        before = {n: state_of(fx.stub, n) for n in check}
        s = h.StepStream(fx.stub, metadata=metadata, timeout=15)
        for r in reqs_fn(fx):
            s.send(r)
        if half_close:
            s.close()

        def drain():
            for _ in range(1000):
                s.recv()
            raise AssertionError("stream did not end")
        try:
            h.expect_rpc_error(drain, code, pattern)
        finally:
            s.cancel()
        for n in check:
            assert_unchanged(fx.stub, n, before[n])
    return fn


def sreq(name="p", step=1, grad=None, rank=0, offset=0, dt=None, data=None, lr=None, n=16):
    if data is None:
        g = vals(n, 6) if grad is None else np.asarray(grad, np.float32)
        c = h.chunk(g, offset, dt)
    else:
        c = raw_chunk(offset, data, h.pb.DTYPE_F32 if dt is None else dt)
    r = h.pb.StepRequest(name=name, step=step, worker_rank=rank, chunk=c)
    if lr is not None:
        r.lr.value = lr
    return r


def nonfinite_grad(v, at=5):
    g = vals(16, 7)
    g[at] = v
    return g


# ---------------------------------------------------------------------------------------------
# unknown parameter, for every RPC


def nf_upload(fx):
    h.expect_rpc_error(lambda: h.upload(fx.stub, "nosuch", vals(16)), SC.NOT_FOUND, r"nosuch")


def nf_step(fx):
    step_case(lambda f: [sreq("nosuch", 0)], r"nosuch", SC.NOT_FOUND)(fx)


def nf_pull(fx):
    h.expect_rpc_error(lambda: h.pull(fx.stub, ["nosuch"]), SC.NOT_FOUND, r"nosuch")
    h.expect_rpc_error(lambda: h.pull(fx.stub, ["p", "nosuch"]), SC.NOT_FOUND, r"nosuch")


def nf_describe(fx):
    h.expect_rpc_error(lambda: h.describe(fx.stub, "nosuch"), SC.NOT_FOUND, r"nosuch")


def nf_drop(fx):
    h.expect_rpc_error(lambda: fx.stub.Drop(h.pb.DropRequest(name="nosuch"), timeout=10,
                                            metadata=h.md()), SC.NOT_FOUND, r"nosuch")


def nf_setconfig(fx):
    h.expect_rpc_error(lambda: fx.stub.SetConfig(
        h.pb.SetConfigRequest(name="nosuch", options=h.options({"lr": 0.1})), timeout=10,
        metadata=h.md()), SC.NOT_FOUND, r"nosuch")


# ---------------------------------------------------------------------------------------------
# SetConfig


def setconfig_case(opts, pattern, code=SC.INVALID_ARGUMENT):
    def fn(fx):
        before = {o.key: o.value for o in h.describe(fx.stub, "p").spec.options}
        h.expect_rpc_error(lambda: fx.stub.SetConfig(
            h.pb.SetConfigRequest(name="p", options=h.options(opts)), timeout=10,
            metadata=h.md()), code, pattern)
        after = {o.key: o.value for o in h.describe(fx.stub, "p").spec.options}
        assert before == after, "options changed by a failed SetConfig: %s -> %s" % (before, after)
    return fn


# ---------------------------------------------------------------------------------------------
# raw calls: malformed bytes, unknown methods, protocol version


def malformed_unary(fx):
    call = fx.dm.channel().unary_unary("/orthod.v1.Optimizer/Register", request_serializer=None,
                                       response_deserializer=None)
    h.expect_rpc_error(lambda: call(b"\xff\xff\xff", timeout=10, metadata=h.md()),
                       SC.INVALID_ARGUMENT, r"parse|decode|malformed|invalid")


def malformed_stream(fx):
    call = fx.dm.channel().stream_stream("/orthod.v1.Optimizer/Step", request_serializer=None,
                                         response_deserializer=None)

    def go():
        return list(call(iter([b"\xff\xff\xff"]), timeout=10, metadata=h.md()))
    h.expect_rpc_error(go, SC.INVALID_ARGUMENT, r"parse|decode|malformed|invalid")


def unknown_method(fx):
    ch = fx.dm.channel()
    for path in ("/orthod.v1.Optimizer/Snapshot", "/orthod.v9.Other/Register"):
        call = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
        h.expect_rpc_error(lambda: call(b"", timeout=10), SC.UNIMPLEMENTED, re.escape(path))


def two_messages_unary(fx):
    """More than one message on a unary call (a client-streaming call to a unary method)."""
    call = fx.dm.channel().stream_unary("/orthod.v1.Optimizer/Describe", request_serializer=None,
                                        response_deserializer=None)
    one = h.pb.DescribeRequest(name="p").SerializeToString()
    h.expect_rpc_error(lambda: call(iter([one, one]), timeout=10, metadata=h.md()),
                       SC.INVALID_ARGUMENT, r"exactly one|one .*message")


def drop_pending(fx):
    """Drop of a parameter with a pending SYNC push: the pusher gets ABORTED."""
    h.register(fx.stub, "dropped", [4, 4], "adamw", workers=2, sync_mode=h.pb.SYNC_MODE_SYNC)
    s = h.StepStream(fx.stub, timeout=15)
    s.push("dropped", 0, vals(16), rank=0)
    time.sleep(0.2)
    r = fx.stub.Drop(h.pb.DropRequest(name="dropped"), timeout=10, metadata=h.md())
    assert r.step == 0

    def drain():
        for _ in range(100):
            s.recv()
    try:
        h.expect_rpc_error(drain, SC.ABORTED, r"'dropped' was dropped")
    finally:
        s.cancel()


VERSION_MSG = r"client protocol version 2, server protocol version 1"


def version_unary(fx):
    h.expect_rpc_error(lambda: fx.stub.Register(
        h.pb.RegisterRequest(spec=h.spec("v2", [2, 2])), timeout=10, metadata=h.md("2")),
        SC.FAILED_PRECONDITION, VERSION_MSG)
    h.expect_rpc_error(lambda: h.describe(fx.stub, "v2"), SC.NOT_FOUND)
    h.expect_rpc_error(lambda: fx.stub.List(h.pb.ListRequest(), timeout=10, metadata=h.md("2")),
                       SC.FAILED_PRECONDITION, VERSION_MSG)
    # absent is accepted, "1" is accepted
    fx.stub.List(h.pb.ListRequest(), timeout=10)
    fx.stub.List(h.pb.ListRequest(), timeout=10, metadata=h.md("1"))


def version_pull(fx):
    h.expect_rpc_error(lambda: list(fx.stub.Pull(h.pb.PullRequest(), timeout=10,
                                                 metadata=h.md("2"))),
                       SC.FAILED_PRECONDITION, VERSION_MSG)


# ---------------------------------------------------------------------------------------------
# special daemons


def oversize_upload(fx):
    data = b"\0" * (2 << 20)
    reqs = [h.pb.UploadRequest(name="big", chunk=raw_chunk(0, data, h.pb.DTYPE_F32))]
    h.expect_rpc_error(lambda: fx.stub.Upload(iter(reqs), timeout=10, metadata=h.md()),
                       SC.RESOURCE_EXHAUSTED, r"larger than max|too large|message")


def oversize_step(fx):
    data = b"\0" * (2 << 20)
    step_case(lambda f: [sreq("big", 0, data=data)], r"larger than max|too large|message",
              SC.RESOURCE_EXHAUSTED, check=("big",))(fx)


def memory_limit(fx):
    h.expect_rpc_error(lambda: h.register(fx.stub, "huge", [1024, 1024], "adamw"),
                       SC.RESOURCE_EXHAUSTED, r"huge|limit")
    h.expect_rpc_error(lambda: h.describe(fx.stub, "huge"), SC.NOT_FOUND)
    lst = fx.stub.List(h.pb.ListRequest(), timeout=10, metadata=h.md())
    assert lst.device_bytes_limit == 1 << 20, "device_bytes_limit %d" % lst.device_bytes_limit
    assert lst.device_bytes_used <= lst.device_bytes_limit


def nonfinite_skip(fx):
    h.register(fx.stub, "s", [4, 4], "adamw")
    w0 = vals(16, 8)
    h.upload(fx.stub, "s", w0)
    g = nonfinite_grad(np.inf)
    st, w = h.step_once(fx.stub, "s", 0, g)
    assert st == 1, "counter %d after a skipped step" % st
    assert np.array_equal(w, w0), "weights changed by a skipped step"
    st, w = h.pull_one(fx.stub, "s")
    assert st == 1 and np.array_equal(w.reshape(-1), w0)
    # and the next finite step works from there
    st, w = h.step_once(fx.stub, "s", 1, vals(16, 9))
    assert st == 2 and not np.array_equal(w, w0)


def max_params(fx):
    # limit 3: 'control' plus two more
    h.register(fx.stub, "a", [2, 2], "adamw")
    h.register(fx.stub, "b", [2, 2], "adamw")
    h.expect_rpc_error(lambda: h.register(fx.stub, "c", [2, 2], "adamw"),
                       SC.RESOURCE_EXHAUSTED, r"\b3\b|max.params|parameters")
    # an identical re-register is not a new parameter
    r = h.register(fx.stub, "a", [2, 2], "adamw")
    assert not r.created
    fx.stub.Drop(h.pb.DropRequest(name="b"), timeout=10, metadata=h.md())
    h.register(fx.stub, "c", [2, 2], "adamw")


# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# start-up: configuration refused (exit 2) or start-up failure (exit 1), docs/OPERATIONS.md


def start_case(flags, rc, pattern, env=None, listen="127.0.0.1:0", state_dir=None):
    def fn(args):
        import subprocess
        import tempfile
        with tempfile.TemporaryDirectory(prefix="orthod-it-start-") as tmp:
            cmd = [args.orthod, "--listen", listen, "--state-dir", state_dir or tmp] + flags
            e = dict(os.environ)
            e.update(env or {})
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
                               env=e, stdin=subprocess.DEVNULL)
        err = p.stderr.decode("utf-8", "replace")
        assert b"listening" not in p.stdout, "printed a listen line: %r" % p.stdout
        assert p.returncode == rc, "exit status %d, expected %d; stderr: %s" % (
            p.returncode, rc, err.strip()[-500:])
        assert re.search(pattern, err, re.I), "stderr does not match /%s/: %s" % (
            pattern, err.strip()[-500:])
        return repr(err.strip().splitlines()[-1][:160])
    return fn


def address_in_use(args):
    dm = h.Daemon(args.orthod, keep=args.keep, name="orthod-port-owner").start()
    try:
        return start_case([], 1, r"%d|address|in use|bind" % dm.port,
                          listen=dm.address)(args)
    finally:
        dm.stop()
        dm.cleanup()


def version(args):
    import subprocess
    p = subprocess.run([args.orthod, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=20)
    assert p.returncode == 0, "exit status %d" % p.returncode
    out = p.stdout.decode()
    assert re.match(r"orthod \d+\.\d+\.\d+ \(protocol 1\)\n$", out), repr(out)
    return repr(out.strip())


def main():
    args = h.parse_args(__doc__)
    h.require(args.orthod)
    pb = h.pb
    runner = h.Runner("bad input", args.only)

    fx = MainFixture(args, ["--max-tensor-elements", str(MAX_TENSOR)], name="orthod-main")
    try:
        fx.ensure()
    except Exception as e:  # noqa: BLE001
        runner.fail("start the daemon", h.describe_exception(e))
        for d in fx.daemons:
            d.cleanup(failed=True)
        return runner.finish()

    BIG = 1 << 40
    cases = [
        # Register: shapes
        ("register shape with a zero dim", reg_case([4, 0], r"dimension 1 is 0")),
        ("register shape with 9 dims", reg_case([1] * 9, r"\b9 dim")),
        ("register shape with no dims", reg_case([], r"\b0 dim|no dim|empty")),
        ("register shape with a negative dim", reg_case([3, -2], r"dimension 1 is -2")),
        ("register shape whose product overflows int64", reg_case([BIG, BIG], r"overflow|more than \d+ elements")),
        ("register shape over --max-tensor-elements",
         reg_case([1001, 1000], r"1001000|%d|max.tensor.elements" % MAX_TENSOR)),
        # Register: names
        ("register empty name", reg_case([2, 2], r"name.*empty", name="")),
        ("register name with a control character",
         reg_case([2, 2], r"control character", name="a\x01b")),
        ("register 300-byte name", reg_case([2, 2], r"longer than 255", name="n" * 300)),
        # Register: algorithm and options
        ("register unknown algorithm", reg_case([4, 4], r"sgdx", algorithm="sgdx")),
        ("register unknown option key",
         reg_case([4, 4], r"unknown optimizer config key 'foo'", opts={"foo": "1"})),
        ("register option lr=abc", reg_case([4, 4], r"lr.*abc", opts={"lr": "abc"})),
        ("register option momentum=1.5",
         reg_case([4, 4], r"momentum.*1\.5", algorithm="muon", opts={"momentum": "1.5"})),
        ("register option lr=inf", reg_case([4, 4], r"lr.*finite", opts={"lr": "inf"})),
        ("register sync_mode out of range",
         reg_case([4, 4], r"sync", sync_mode=7)),
        ("register max_staleness with SYNC",
         reg_case([4, 4], r"max_staleness", workers=2, sync_mode=1, max_staleness=1)),
        ("register conflicting spec (ALREADY_EXISTS)", case_reregister),
        # Upload: chunk ranges and data
        ("upload chunk gap at half-close",
         lambda fx: upload_case(upload_chunks_gap(), r"gap|cover|missing|\b8\b")(fx)),
        ("upload chunk overlap",
         lambda fx: upload_case([h.chunk(vals(10), 0), h.chunk(vals(8), 8)], r"overlap")(fx)),
        ("upload chunk past the end",
         lambda fx: upload_case([h.chunk(vals(8), 0), h.chunk(vals(8), 12)],
                                r"outside|past|beyond|exceed|end")(fx)),
        ("upload chunk offset far past the end",
         lambda fx: upload_case([h.chunk(vals(4), 1 << 62)], r"outside|past|beyond|exceed|end")(fx)),
        ("upload data length not a multiple of 4",
         lambda fx: upload_case([raw_chunk(0, b"\0" * 7, pb.DTYPE_F32)],
                                r"multiple|whole|length|bytes")(fx)),
        ("upload bf16 data of odd length",
         lambda fx: upload_case([raw_chunk(0, b"\0" * 31, pb.DTYPE_BF16)],
                                r"multiple|whole|length|bytes")(fx)),
        ("upload empty chunk",
         lambda fx: upload_case([raw_chunk(0, b"", pb.DTYPE_F32)], r"0 bytes|empty|no data")(fx)),
        ("upload DTYPE_UNSPECIFIED",
         lambda fx: upload_case([raw_chunk(0, b"\0" * 64, pb.DTYPE_UNSPECIFIED)], r"dtype")(fx)),
        ("upload unknown dtype 7",
         lambda fx: upload_case([raw_chunk(0, b"\0" * 64, 7)], r"dtype")(fx)),
        # unknown parameter
        ("Upload unknown parameter (NOT_FOUND)", nf_upload),
        ("Step unknown parameter (NOT_FOUND)", nf_step),
        ("Pull unknown parameter (NOT_FOUND)", nf_pull),
        ("Describe unknown parameter (NOT_FOUND)", nf_describe),
        ("Drop unknown parameter (NOT_FOUND)", nf_drop),
        ("SetConfig unknown parameter (NOT_FOUND)", nf_setconfig),
        # Step
        ("step stale (step 0, current 1)",
         step_case(lambda f: [sreq(step=0)], r"current step is 1", SC.FAILED_PRECONDITION)),
        ("step future (step 5, current 1)",
         step_case(lambda f: [sreq(step=5)], r"current step is 1", SC.FAILED_PRECONDITION)),
        ("step worker_rank >= workers (1 of 1)",
         step_case(lambda f: [sreq(rank=1)], r"rank")),
        ("step worker_rank >= workers (2 of 2, sync)",
         step_case(lambda f: [sreq("s2", 0, rank=2)], r"rank", check=("p", "s2"))),
        ("step NaN gradient", step_case(lambda f: [sreq(grad=nonfinite_grad(np.nan))],
                                        r"non-finite|nan")),
        ("step Inf gradient", step_case(lambda f: [sreq(grad=nonfinite_grad(np.inf))],
                                        r"non-finite|inf")),
        ("step NaN gradient in the second of two chunks",
         step_case(lambda f: [sreq(grad=vals(8), n=8),
                              sreq(grad=nonfinite_grad(np.nan, 12)[8:], offset=8)],
                   r"non-finite|nan")),
        ("step lr = inf", step_case(lambda f: [sreq(lr=float("inf"))], r"lr|learning rate")),
        ("step lr = nan", step_case(lambda f: [sreq(lr=float("nan"))], r"lr|learning rate")),
        ("step lr = -1", step_case(lambda f: [sreq(lr=-1.0)], r"lr|learning rate")),
        ("step half-closed with an incomplete gradient",
         step_case(lambda f: [sreq(grad=vals(8), n=8)], r"incomplete gradient.*first gap at "
                   r"element 8", half_close=True)),
        ("step same range again with other values",
         step_case(lambda f: [sreq(grad=vals(8, 1), n=8), sreq(grad=vals(8, 2), n=8)],
                   r"different data|other values")),
        ("step chunk past the end",
         step_case(lambda f: [sreq(grad=vals(8), offset=12)], r"outside|past|beyond|exceed|end")),
        ("step chunk overlap",
         step_case(lambda f: [sreq(grad=vals(10), n=10), sreq(grad=vals(8), offset=8)],
                   r"overlap")),
        ("step data length not a multiple of 4",
         step_case(lambda f: [sreq(data=b"\0" * 9)], r"multiple|whole|length|bytes")),
        ("step DTYPE_UNSPECIFIED",
         step_case(lambda f: [sreq(data=b"\0" * 64, dt=pb.DTYPE_UNSPECIFIED)], r"dtype")),
        ("step unknown dtype 9",
         step_case(lambda f: [sreq(data=b"\0" * 64, dt=9)], r"dtype")),
        ("step unknown reply dtype",
         step_case(lambda f: [pb.StepRequest(name="p", step=1, chunk=h.chunk(vals(16)),
                                             reply_dtype=5)], r"dtype")),
        ("step protocol version 2",
         step_case(lambda f: [sreq()], VERSION_MSG, SC.FAILED_PRECONDITION,
                   metadata=h.md("2"))),
        # SetConfig
        ("SetConfig layout key split_rows", setconfig_case({"split_rows": "2,2"}, r"split_rows")),
        ("SetConfig layout key algo", setconfig_case({"algo": "muon"}, r"algo")),
        ("SetConfig unknown key", setconfig_case({"foo": "1"},
                                                 r"unknown optimizer config key 'foo'")),
        ("SetConfig bad value lr=abc", setconfig_case({"lr": "abc"}, r"lr.*abc")),
        # Pull
        ("Pull unknown dtype", lambda fx: h.expect_rpc_error(
            lambda: list(fx.stub.Pull(pb.PullRequest(names=["p"], dtype=6), timeout=10,
                                      metadata=h.md())), SC.INVALID_ARGUMENT, r"dtype")),
        # raw calls
        ("malformed protobuf (unary Register)", malformed_unary),
        ("malformed protobuf (Step stream)", malformed_stream),
        ("unknown method (UNIMPLEMENTED)", unknown_method),
        ("two messages on a unary call", two_messages_unary),
        ("Drop with a pending SYNC push: ABORTED", drop_pending),
        ("protocol version 2 (unary)", version_unary),
        ("protocol version 2 (Pull)", version_pull),
    ]
    for name, fn in cases:
        fx.run(runner, name, fn)
    if fx.restarts:
        runner.fail("the daemon never crashed", "it was restarted %d times" % fx.restarts)
    fx.stop(runner)

    # ---- daemons with special flags -----------------------------------------------------
    special = [
        ("orthod --max-message-bytes 1M", ["--max-message-bytes", "1M", "--chunk-bytes", "256K"],
         [("2 MiB chunk over --max-message-bytes (Upload)", oversize_upload),
          ("2 MiB chunk over --max-message-bytes (Step)", oversize_step)],
         lambda f: h.register(f.stub, "big", [1024, 1024], "adamw")),
        ("orthod --memory-limit 1M", ["--memory-limit", "1M"],
         [("register 1024x1024 over --memory-limit 1M", memory_limit)], None),
        ("orthod --nonfinite skip", ["--nonfinite", "skip"],
         [("NaN gradient under --nonfinite skip: counter advances, weights kept", nonfinite_skip)],
         None),
        ("orthod --max-params 3", ["--max-params", "3"],
         [("register over --max-params 3", max_params)], None),
    ]
    for dname, flags, dcases, setup in special:
        sfx = Fixture(args, flags, name=dname)
        if setup is not None:
            sfx.setup = (lambda f=sfx, s=setup: s(f))
        try:
            sfx.ensure()
        except Exception as e:  # noqa: BLE001
            runner.fail("start %s" % dname, h.describe_exception(e))
            for d in sfx.daemons:
                d.cleanup(failed=True)
            continue
        for name, fn in dcases:
            sfx.run(runner, name, fn)
        if sfx.restarts:
            runner.fail("%s never crashed" % dname, "restarted %d times" % sfx.restarts)
        sfx.stop(runner)

    shutdown_cases(args, runner)

    start = [
        ("start: unknown flag (exit 2)", start_case(["--no-such-flag"], 2, r"no-such-flag")),
        ("start: --memory-limit abc (exit 2)",
         start_case(["--memory-limit", "abc"], 2, r"^orthod: .*--memory-limit.*abc")),
        ("start: ORTHOD_MAX_PARAMS=abc in the environment (exit 2)",
         start_case([], 2, r"max-params.*ORTHOD_MAX_PARAMS|ORTHOD_MAX_PARAMS.*abc",
                    env={"ORTHOD_MAX_PARAMS": "abc"})),
        ("start: --chunk-bytes above --max-message-bytes less 1K (exit 2)",
         start_case(["--max-message-bytes", "1M", "--chunk-bytes", "1M"], 2, r"chunk-bytes")),
        ("start: --listen beyond loopback without --allow-insecure-remote (exit 2)",
         start_case([], 2, r"allow-insecure-remote", listen="0.0.0.0:0")),
        ("start: state directory cannot be created (exit 1)",
         start_case([], 1, r"state", state_dir="/proc/orthod-no/state")),
        ("start: address in use (exit 1)", address_in_use),
        ("--version", version),
    ]
    for name, fn in start:
        runner.case(name, fn, args)
    return runner.finish()


def shutdown_cases(args, runner):
    """SIGTERM with an open idle Step stream and a pending synchronous step (docs/PROTOCOL.md:
    UNAVAILABLE for pending SYNC steps, new messages on open calls and new calls), then exit 0
    within 5 s. Each expectation is its own case, so one failure does not hide the others. The
    new calls come while the idle stream is still open (the daemon is draining, within
    --drain-timeout-ms), then the idle stream sends its next message."""
    dm = h.Daemon(args.orthod, ["--drain-timeout-ms", "3000", "--chunk-bytes", "64K"],
                  keep=args.keep, name="orthod-shutdown")
    st = {}
    n = 2048

    def setup():
        dm.start()
        stub = st["stub"] = dm.stub()
        # a Pull of 16 MiB that the client does not read keeps the daemon draining (it finishes
        # what it was sending), so the new calls below really arrive during the drain
        h.register(stub, "big", [n, n], "adamw")
        pull = st["pull"] = stub.Pull(h.pb.PullRequest(names=["big"]), timeout=30,
                                      metadata=h.md())
        first = next(pull)
        assert first.name == "big" and not first.last
        h.register(stub, "a", [4, 4], "adamw")
        h.register(stub, "sync", [4, 4], "adamw", workers=2, sync_mode=h.pb.SYNC_MODE_SYNC)
        idle = st["idle"] = h.StepStream(stub, timeout=30)
        idle.push("a", 0, h.seeded([4, 4], 1))
        step, _, _ = idle.next_weights("a")
        assert step == 1
        pending = st["pending"] = h.StepStream(dm.stub(), timeout=30)
        pending.push("sync", 0, h.seeded([4, 4], 2), rank=0)
        time.sleep(0.3)  # the push is in the daemon, waiting for rank 1
        st["t0"] = time.monotonic()
        dm.send_signal(signal.SIGTERM)
        return True

    def drain(s):
        for _ in range(100):
            s.recv()
        raise AssertionError("stream did not end")

    def pending_push():
        e = h.expect_rpc_error(lambda: drain(st["pending"]), SC.UNAVAILABLE, r"shutting down")
        return repr(e.details())

    def open_stream():
        st["idle"].push("a", 1, h.seeded([4, 4], 3))
        e = h.expect_rpc_error(lambda: drain(st["idle"]), SC.UNAVAILABLE, r"shutting down")
        return repr(e.details())

    def new_call_same_channel():
        e = h.expect_rpc_error(lambda: h.describe(st["stub"], "a"), SC.UNAVAILABLE)
        return repr(e.details())

    def new_call_new_channel():
        e = h.expect_rpc_error(lambda: h.pull(h.pb_grpc.OptimizerStub(dm.channel()), ["a"]),
                               SC.UNAVAILABLE)
        return repr(e.details())

    def pull_in_flight():
        count, end = 1, "OK"
        try:
            for r in st["pull"]:
                count += 1
        except h.grpc.RpcError as e:
            end = "%s %r" % (e.code().name, e.details())
        total = n * n * 4 // 65536
        assert count == total or end != "OK", "Pull ended OK after %d of %d chunks" % (count,
                                                                                    total)
        return "Pull in flight at SIGTERM: %d of %d chunks, then %s" % (count, total, end)

    def exit0():
        rc, _ = dm.wait(10)
        took = time.monotonic() - st["t0"]
        assert rc == 0, "exit status %s after SIGTERM\n%s" % (rc, dm.stderr_tail())
        assert took < 5.0, "exit took %.2f s" % took
        dm.stop()
        return "after %.2f s" % took

    if runner.case("shutdown: setup and SIGTERM", setup) is True:
        runner.case("shutdown: pending SYNC push ends UNAVAILABLE", pending_push)
        runner.case("shutdown: new call on an open channel gets UNAVAILABLE",
                    new_call_same_channel)
        runner.case("shutdown: new call on a new channel gets UNAVAILABLE", new_call_new_channel)
        runner.case("shutdown: new message on an open Step stream gets UNAVAILABLE", open_stream)
        runner.case("shutdown: a Pull in flight finishes (or ends with a status)", pull_in_flight)
        runner.case("shutdown: exit 0 within 5 s of SIGTERM", exit0)
    if dm.alive():
        dm.kill()
    dm.cleanup(failed=runner.failed > 0)


if __name__ == "__main__":
    sys.exit(main())
