"""orthod_harness.py — shared pieces of the Python integration tests.

* Daemon: starts `orthod --listen 127.0.0.1:0 --state-dir <tmp> [flags]` (optionally under a
  wrapper such as valgrind), waits for the one stdout line
  `orthod: listening on 127.0.0.1:PORT (pid PID)`, captures stderr to a file (its tail is printed
  when a case fails), and stops it with a signal, asserting the exit status and measuring the time.
* Stubs: the Python code generated from proto/ (protoc + grpc_python_plugin) is imported from the
  directory given by --gen or the environment variable ORTHOD_PYTHON_GEN.
* A tiny runner: one line `PASS name` / `FAIL name` per case, then `N passed, N failed`; exit 1 on
  any failure, 77 (the CTest skip code) when grpc or numpy is missing.
* Backend: the environment variable ORTHOD_TEST_BACKEND (auto, cpu or cuda; unset = the daemon's
  default) becomes `--backend` of every daemon started here. With cuda, require() first starts
  `orthod --backend cuda` once, and when that reports no CUDA device (or a build without the CUDA
  backend) the script exits 77 (skipped); any other start failure is left to fail the tests.
* Helpers for the wire format (fp32/bf16/fp16 chunks), Register/Upload/Pull, a Step stream driven
  from a queue, and expect_rpc_error (exact status code plus a regular expression on the message).

Run with Debian's /usr/bin/python3 (python3-grpcio, python3-protobuf, python3-numpy).
"""

import argparse
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree (ctest runs from it)

SKIP = 77

try:
    import grpc
    import numpy as np
except ImportError as e:  # pragma: no cover - Debian's python3 has both
    print("%s lacks a module the integration tests need (%s): skipping" % (sys.executable, e))
    sys.exit(SKIP)

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_DIR = os.path.join(os.path.dirname(HERE), "reference")

PROTOCOL_VERSION = "1"
VERSION_KEY = "orthod-protocol-version"
SERVICE = "orthod.v1.Optimizer"

# Filled by load_stubs().
pb = None            # orthod.v1.orthod_pb2
pb_grpc = None       # orthod.v1.orthod_pb2_grpc
health_pb = None     # grpc.health.v1.health_pb2
health_grpc = None   # grpc.health.v1.health_pb2_grpc

LISTEN_RE = re.compile(rb"^orthod: listening on 127\.0\.0\.1:(\d+) \(pid (\d+)\)\n$")

# Daemons started by this process and not yet stopped: their stderr is shown when a case fails.
LIVE = []

# --backend of every daemon (ORTHOD_TEST_BACKEND; None = the daemon's default).
TEST_BACKEND = os.environ.get("ORTHOD_TEST_BACKEND") or None
NO_CUDA_RE = re.compile(r"no CUDA device|has no CUDA backend")


def backend_flags():
    return ["--backend", TEST_BACKEND] if TEST_BACKEND else []


def skip_without_cuda(orthod, timeout=60.0):
    """ORTHOD_TEST_BACKEND=cuda only: start `orthod --backend cuda` once; exit 77 when it says
    there is no CUDA device or no CUDA backend in this build. Returns otherwise."""
    if TEST_BACKEND != "cuda":
        return
    tmp = tempfile.mkdtemp(prefix="orthod-cuda-probe-")
    try:
        with open(os.path.join(tmp, "stderr.log"), "wb") as err:
            proc = subprocess.Popen([orthod, "--listen", "127.0.0.1:0", "--state-dir",
                                     os.path.join(tmp, "state"), "--backend", "cuda"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
            line = b""
            deadline = time.monotonic() + timeout
            while not line.endswith(b"\n") and time.monotonic() < deadline:
                r, _, _ = select.select([proc.stdout], [], [], 0.2)
                if r:
                    b = os.read(proc.stdout.fileno(), 1)
                    if not b:
                        break
                    line += b
                elif proc.poll() is not None:
                    break
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if LISTEN_RE.match(line):
            return
        with open(os.path.join(tmp, "stderr.log"), "rb") as f:
            text = f.read().decode("utf-8", "replace")
        m = NO_CUDA_RE.search(text)
        if m:
            why = [ln for ln in text.splitlines() if m.group(0) in ln][-1]
            print("ORTHOD_TEST_BACKEND=cuda but the daemon cannot use CUDA here: skipping\n  %s"
                  % why.strip(), flush=True)
            sys.exit(SKIP)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# arguments and generated stubs


def parse_args(description, extra=None, argv=None):
    """--orthod PATH (required), --gen DIR (default $ORTHOD_PYTHON_GEN), --keep (keep temporary
    directories), --only SUBSTRING (run matching cases only); `extra(parser)` adds more."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--orthod", help="path of the orthod executable")
    ap.add_argument("--gen", default=os.environ.get("ORTHOD_PYTHON_GEN"),
                    help="directory of the generated Python stubs (default $ORTHOD_PYTHON_GEN)")
    ap.add_argument("--keep", action="store_true", help="keep state dirs and logs")
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this")
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    if not args.gen:
        ap.error("--gen or ORTHOD_PYTHON_GEN is required")
    load_stubs(args.gen)
    return args


def load_stubs(gen):
    """Import the generated modules from `gen`. The health stubs live in the package path
    grpc/health/v1, which collides with the installed grpc package (a regular package, so a
    directory of the same name elsewhere on sys.path is never searched): the generated grpc/
    directory is appended to grpc.__path__ instead."""
    global pb, pb_grpc, health_pb, health_grpc
    gen = os.path.abspath(gen)
    if not os.path.isfile(os.path.join(gen, "orthod", "v1", "orthod_pb2.py")):
        raise SystemExit("no generated stubs in %s (build the target orthod_python_stubs)" % gen)
    if gen not in sys.path:
        sys.path.insert(0, gen)
    extra = os.path.join(gen, "grpc")
    if os.path.isdir(extra) and extra not in grpc.__path__:
        grpc.__path__.append(extra)
    from orthod.v1 import orthod_pb2, orthod_pb2_grpc  # noqa: E402
    from grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
    pb, pb_grpc, health_pb, health_grpc = orthod_pb2, orthod_pb2_grpc, health_pb2, health_pb2_grpc


def reference():
    """tests/reference/orthod_ref.py, the NumPy model of the optimizer math."""
    if REFERENCE_DIR not in sys.path:
        sys.path.insert(0, REFERENCE_DIR)
    import orthod_ref  # noqa: E402
    return orthod_ref


# ---------------------------------------------------------------------------------------------
# the daemon process


class Daemon:
    """One orthod process on an ephemeral loopback port.

    flags: extra command-line flags; wrapper: a command prefix (valgrind ...);
    start_timeout: seconds to wait for the listen line."""

    def __init__(self, orthod, flags=(), wrapper=(), start_timeout=20.0, keep=False, name="orthod",
                 env=None):
        self.orthod = orthod
        self.flags = list(flags)
        self.wrapper = list(wrapper)
        self.start_timeout = start_timeout
        self.keep = keep
        self.name = name
        self.env = env
        self.tmp = tempfile.mkdtemp(prefix="orthod-it-")
        self.state_dir = os.path.join(self.tmp, "state")
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self.proc = None
        self.port = None
        self.pid = None
        self.address = None
        self.returncode = None
        self.stop_seconds = None
        self._stdout_rest = []
        self._channels = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self):
        os.makedirs(self.state_dir, exist_ok=True)
        cmd = self.wrapper + [self.orthod, "--listen", "127.0.0.1:0", "--state-dir",
                              self.state_dir] + backend_flags() + self.flags
        self.command = cmd
        self._stderr = open(self.stderr_path, "wb")
        env = dict(os.environ)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env)
        LIVE.append(self)
        line = self._read_line(self.start_timeout)
        m = LISTEN_RE.match(line or b"")
        if not m:
            try:
                rc = self.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                rc = None
            raise AssertionError("%s: no listen line (got %r; %s)\n  command: %s\n%s" % (
                self.name, line, "still running after %.0f s" % self.start_timeout
                if rc is None else "exit status %s" % rc, " ".join(cmd), self.stderr_tail()))
        self.port = int(m.group(1))
        self.pid = int(m.group(2))
        self.address = "127.0.0.1:%d" % self.port
        if not self.wrapper:
            assert self.pid == self.proc.pid, "listen line names pid %d, process is %d" % (
                self.pid, self.proc.pid)
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        return self

    def _read_line(self, timeout):
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                return buf or None
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                b = os.read(fd, 1)
                if not b:
                    return buf or None
                buf += b
            elif self.proc.poll() is not None:
                return buf or None
        return buf

    def _drain_stdout(self):
        try:
            for line in self.proc.stdout:
                self._stdout_rest.append(line)
        except (ValueError, OSError):
            pass

    def extra_stdout(self):
        """Anything the daemon printed to stdout after the listen line (should be nothing)."""
        return b"".join(self._stdout_rest)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        """Wait for the exit; returns (returncode, seconds) or (None, timeout)."""
        t0 = time.monotonic()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, timeout
        return rc, time.monotonic() - t0

    def stop(self, sig=signal.SIGTERM, timeout=10.0, expect_rc=0):
        """Send `sig`, wait up to `timeout` s, assert the exit status; returns the seconds the
        exit took. A daemon that does not exit is killed (and the call fails)."""
        self.close_channels()
        if self.proc is None:
            return 0.0
        if self.proc.poll() is None:
            t0 = time.monotonic()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._finish()
                raise AssertionError("%s did not exit within %.1f s of %s\n%s" % (
                    self.name, timeout, signal.Signals(sig).name, self.stderr_tail()))
            self.stop_seconds = time.monotonic() - t0
        self._finish()
        if expect_rc is not None and self.returncode != expect_rc:
            raise AssertionError("%s exited with status %s, expected %s\n%s" % (
                self.name, self.returncode, expect_rc, self.stderr_tail()))
        return self.stop_seconds or 0.0

    def kill(self):
        """SIGKILL without checks (cleanup after a failure)."""
        self.close_channels()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._finish()

    def _finish(self):
        if self.proc is not None:
            self.returncode = self.proc.returncode
        if self in LIVE:
            LIVE.remove(self)
        try:
            self._stderr.close()
        except Exception:
            pass

    def cleanup(self, failed=False):
        if self.alive():
            self.kill()
        if self.keep or failed:
            print("  (%s files kept in %s)" % (self.name, self.tmp))
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- output ------------------------------------------------------------------------------

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_tail(self, lines=40):
        text = self.stderr_text().splitlines()
        tail = text[-lines:]
        head = "---- %s stderr (%s, last %d of %d lines) ----" % (self.name, self.stderr_path,
                                                                    len(tail), len(text))
        return "\n".join([head] + tail + ["---- end of %s stderr ----" % self.name])

    # -- clients -----------------------------------------------------------------------------

    def channel(self, options=()):
        ch = grpc.insecure_channel(self.address, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.enable_retries", 0),
        ] + list(options))
        self._channels.append(ch)
        return ch

    def stub(self, channel=None):
        return pb_grpc.OptimizerStub(channel or self.channel())

    def health(self, channel=None):
        return health_grpc.HealthStub(channel or self.channel())

    def close_channels(self):
        for ch in self._channels:
            try:
                ch.close()
            except Exception:
                pass
        self._channels = []

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.alive():
                if exc_type is None:
                    self.stop()
                else:
                    self.kill()
        finally:
            self.cleanup(failed=exc_type is not None)
        return False


# ---------------------------------------------------------------------------------------------
# the runner


class Runner:
    """Runs named cases, prints PASS/FAIL per case and the summary line."""

    def __init__(self, title, only=None):
        self.title = title
        self.only = only
        self.passed = 0
        self.failed = 0
        self.failures = []
        self.t0 = time.monotonic()
        print("== %s" % title, flush=True)

    def case(self, name, fn, *args, **kwargs):
        if self.only and self.only not in name:
            return None
        t0 = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every failure is reported, never raised
            self.failed += 1
            self.failures.append(name)
            print("FAIL %s (%.2f s): %s" % (name, time.monotonic() - t0, describe_exception(e)))
            traceback.print_exc(file=sys.stdout)
            for d in list(LIVE):
                print(d.stderr_tail())
            sys.stdout.flush()
            return None
        self.passed += 1
        note = (" — %s" % result) if isinstance(result, str) and result else ""
        print("PASS %s (%.2f s)%s" % (name, time.monotonic() - t0, note), flush=True)
        return result

    def fail(self, name, why):
        """Record a failure found outside a case function (e.g. a daemon that did not start)."""
        self.failed += 1
        self.failures.append(name)
        print("FAIL %s: %s" % (name, why), flush=True)

    def finish(self):
        print("%d passed, %d failed (%.1f s)" % (self.passed, self.failed,
                                                time.monotonic() - self.t0))
        if self.failures:
            print("failed: %s" % ", ".join(self.failures))
        sys.stdout.flush()
        for d in list(LIVE):
            d.kill()
        return 1 if self.failed else 0


def describe_exception(e):
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return "unexpected RPC error %s: %s" % (e.code().name, e.details())
    return "%s: %s" % (type(e).__name__, e)


# ---------------------------------------------------------------------------------------------
# wire helpers


def dtype_size(dt):
    return 4 if dt in (0, 1) else 2


def encode(values, dt=None):
    """float values -> bytes of dtype dt (default F32)."""
    dt = pb.DTYPE_F32 if dt is None else dt
    a = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if dt == pb.DTYPE_F32:
        return a.astype("<f4").tobytes()
    if dt == pb.DTYPE_F16:
        return a.astype("<f2").tobytes()
    if dt == pb.DTYPE_BF16:
        return (round_bf16_bits(a) >> np.uint32(16)).astype("<u2").tobytes()
    raise ValueError("dtype %d" % dt)


def decode(data, dt):
    """bytes of dtype dt -> float32 array."""
    if dt in (pb.DTYPE_F32, pb.DTYPE_UNSPECIFIED):
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if dt == pb.DTYPE_F16:
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    if dt == pb.DTYPE_BF16:
        u = np.frombuffer(data, dtype="<u2").astype(np.uint32) << np.uint32(16)
        return u.view(np.float32)
    raise ValueError("unknown dtype %d in a response" % dt)


def round_bf16_bits(a):
    """fp32 -> bf16 with round-to-nearest-even, as fp32 bit patterns (low 16 bits clear)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    lsb = (u >> np.uint64(16)) & np.uint64(1)
    r = ((u + np.uint64(0x7FFF) + lsb) & np.uint64(0xFFFF0000)).astype(np.uint32)
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    r = np.where(nan, np.uint32(0x7FC00000), r)
    return r


def round_bf16(a):
    return round_bf16_bits(a).view(np.float32)


def round_f16(a):
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def chunk(values, offset=0, dt=None):
    dt = pb.DTYPE_F32 if dt is None else dt
    return pb.TensorChunk(offset=offset, dtype=dt, data=encode(values, dt))


def split_chunks(values, n_chunks=1, dt=None):
    """The flattened values as n_chunks chunks (in order)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    edges = np.linspace(0, flat.size, n_chunks + 1).astype(int)
    return [chunk(flat[a:b], a, dt) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def options(d):
    return [pb.Option(key=k, value=str(v)) for k, v in d.items()]


def spec(name, shape, algorithm="adamw", opts=None, workers=0, sync_mode=0, max_staleness=0,
         sync_timeout_ms=0):
    return pb.ParameterSpec(name=name, shape=list(shape), algorithm=algorithm,
                            options=options(opts or {}), workers=workers, sync_mode=sync_mode,
                            max_staleness=max_staleness, sync_timeout_ms=sync_timeout_ms)


def md(version=PROTOCOL_VERSION):
    return [(VERSION_KEY, version)]


def register(stub, name, shape, algorithm="adamw", opts=None, timeout=10, **kw):
    return stub.Register(pb.RegisterRequest(spec=spec(name, shape, algorithm, opts, **kw)),
                         timeout=timeout, metadata=md())


def upload(stub, name, values, n_chunks=1, timeout=20):
    reqs = [pb.UploadRequest(name=name, chunk=c) for c in split_chunks(values, n_chunks)]
    return stub.Upload(iter(reqs), timeout=timeout, metadata=md())


def describe(stub, name, timeout=10):
    return stub.Describe(pb.DescribeRequest(name=name), timeout=timeout, metadata=md())


def pull(stub, names=(), dt=None, timeout=30):
    """Returns {name: (step, shape, float32 flat array)} and the order of the names."""
    req = pb.PullRequest(names=list(names), dtype=pb.DTYPE_UNSPECIFIED if dt is None else dt)
    out = {}
    order = []
    parts = {}
    for r in stub.Pull(req, timeout=timeout, metadata=md()):
        if r.name not in parts:
            order.append(r.name)
            parts[r.name] = {"step": r.step, "shape": list(r.shape), "chunks": []}
            assert r.shape, "first Pull chunk of %r has no shape" % r.name
        else:
            assert not r.shape, "Pull chunk of %r after the first repeats the shape" % r.name
        p = parts[r.name]
        p["chunks"].append((r.chunk.offset, decode(r.chunk.data, r.chunk.dtype)))
        if r.last:
            out[r.name] = (p["step"], p["shape"], assemble(p["chunks"], int(np.prod(p["shape"]))))
    for n in order:
        assert n in out, "Pull of %r ended without a last chunk" % n
    return out, order


def pull_one(stub, name, dt=None):
    got, _ = pull(stub, [name], dt)
    step, shape, w = got[name]
    return step, w.reshape(shape)


def assemble(chunks, n):
    out = np.full(n, np.nan, dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    for off, vals in chunks:
        assert off + vals.size <= n, "chunk [%d, %d) past the end (%d)" % (off, off + vals.size, n)
        assert not seen[off:off + vals.size].any(), "chunks overlap at %d" % off
        out[off:off + vals.size] = vals
        seen[off:off + vals.size] = True
    assert seen.all(), "chunks leave %d of %d elements uncovered" % (n - seen.sum(), n)
    return out


def expect_rpc_error(fn, code, pattern=None):
    """Call fn(); it must raise grpc.RpcError with status `code` and a message matching the
    regular expression `pattern` (case-insensitive). Returns the error."""
    try:
        r = fn()
    except grpc.RpcError as e:
        got = e.code()
        details = e.details() or ""
        if got != code:
            raise AssertionError("expected %s, got %s: %r" % (code.name, got.name, details))
        if pattern is not None and not re.search(pattern, details, re.I):
            raise AssertionError("%s message %r does not match /%s/" % (code.name, details,
                                                                        pattern))
        return e
    raise AssertionError("expected %s, the call succeeded (%r)" % (code.name, short(r)))


def short(x, n=200):
    s = repr(x)
    return s if len(s) <= n else s[:n] + "..."


# ---------------------------------------------------------------------------------------------
# a Step stream driven from a queue


_CLOSE = object()


class StepStream:
    """One bidirectional Step call. send() queues requests, close() half-closes, next_weights()
    reads responses until the `last` chunk of one parameter and returns (step, array)."""

    def __init__(self, stub, metadata=None, timeout=60):
        self._q = queue.Queue()
        self.call = stub.Step(self._requests(), timeout=timeout,
                              metadata=md() if metadata is None else metadata)
        self._it = iter(self.call)
        self.responses = []

    def _requests(self):
        while True:
            r = self._q.get()
            if r is _CLOSE:
                return
            yield r

    def send(self, req):
        self._q.put(req)

    def push(self, name, step, grad, rank=0, n_chunks=1, order=None, lr=None, reply_dtype=0,
             no_reply=False, dt=None):
        """Queue a whole gradient (in n_chunks chunks, sent in `order` if given)."""
        chunks = split_chunks(grad, n_chunks, dt)
        idx = range(len(chunks)) if order is None else order
        for i in idx:
            req = pb.StepRequest(name=name, step=step, worker_rank=rank, chunk=chunks[i],
                                 reply_dtype=reply_dtype, no_reply=no_reply)
            if lr is not None:
                req.lr.value = lr
            self.send(req)

    def close(self):
        self._q.put(_CLOSE)

    def recv(self):
        """Next response (raises grpc.RpcError when the call fails, StopIteration at its end)."""
        r = next(self._it)
        self.responses.append(r)
        return r

    def next_weights(self, name=None):
        """Responses up to the last chunk of `name` (or of the first parameter answered).
        Returns (step, float32 flat array, dtype of the chunks)."""
        chunks = []
        dts = set()
        step = elements = None
        while True:
            r = self.recv()
            if name is None:
                name = r.name
            if r.name != name:
                raise AssertionError("response for %r while waiting for %r" % (r.name, name))
            if step is None:
                step, elements = r.step, r.elements
            assert r.step == step, "chunks of one reply carry steps %d and %d" % (step, r.step)
            dts.add(r.chunk.dtype)
            chunks.append((r.chunk.offset, decode(r.chunk.data, r.chunk.dtype)))
            if r.last:
                assert len(dts) == 1, "mixed dtypes in one reply: %s" % dts
                return step, assemble(chunks, elements), dts.pop()

    def finish(self):
        """Half-close and read to the end (the call's deadline bounds the wait); returns the
        responses that were still to come."""
        self.close()
        rest = []
        for r in self._it:
            rest.append(r)
        return rest

    def cancel(self):
        self._q.put(_CLOSE)
        self.call.cancel()


def step_once(stub, name, step, grad, rank=0, **kw):
    """Open a stream, push one gradient, read its weights, half-close; returns (step, array)."""
    s = StepStream(stub)
    try:
        s.push(name, step, grad, rank=rank, **kw)
        st, w, _ = s.next_weights(name)
        s.finish()
        return st, w
    except BaseException:
        s.cancel()
        raise


def health_check(dm, service="", timeout=5):
    return dm.health().Check(health_pb.HealthCheckRequest(service=service), timeout=timeout)


def rel_error(got, ref, w0):
    """max|got - ref| / max|ref - w0| (the metric of tests/reference)."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    w0 = np.asarray(w0, dtype=np.float64).reshape(-1)
    change = np.max(np.abs(ref - w0))
    if change == 0:
        return float(np.max(np.abs(got - ref)))
    return float(np.max(np.abs(got - ref)) / change)


def seeded(shape, *seed, scale=1.0):
    return (np.random.default_rng(list(seed)).standard_normal(shape) * scale).astype(np.float32)


def require(path):
    if not path or not os.access(path, os.X_OK):
        print("orthod executable %r not found" % path)
        sys.exit(1)
    skip_without_cuda(path)
