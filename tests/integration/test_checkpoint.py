"""test_checkpoint.py — checkpoints of the daemon's state and restarts from them.

1. SIGTERM writes a final checkpoint; a daemon started on the same state directory has every
   parameter back (spec: algorithm, options, workers, sync mode, staleness, timeout; step counter;
   weights bit-exact), and one more step there gives bit-for-bit the weights of a daemon that never
   stopped (so the optimizer state — momentum, AdamW moments, AMSGrad maximum — came back too).
2. kill -9: what the Checkpoint RPC acknowledged survives (its step and weights), the steps after it
   do not; the response names a file of exactly `bytes` bytes and sequence numbers go up by one.
3. Periodic checkpoints (--checkpoint-interval-s 1) are written after a change and not while
   nothing changes; --checkpoint-keep 2 keeps the newest two files.
4. A damaged newest checkpoint stops the start (exit 1, the reason and the way out on stderr);
   --restore=false starts empty and numbers new checkpoints after the old ones; a memory limit
   too small for the checkpoint stops the start too.
5. A checkpoint that cannot be written is INTERNAL naming the file, and the daemon keeps serving;
   a malformed CheckpointRequest is INVALID_ARGUMENT; no change since the last checkpoint means no
   new file at shutdown.

Usage: /usr/bin/python3 test_checkpoint.py --orthod PATH --gen DIR
"""

import os
import re
import shutil
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import grpc, np  # noqa: E402

SC = grpc.StatusCode
FILE_RE = re.compile(r"^checkpoint-(\d{20})\.ock$")

# name, shape, algorithm, options, extra spec fields, rank count pushing each step
PARAMS = [
    ("attn.qkv", (12, 8), "muon", {"split_rows": "4,4,4", "nesterov": "true"}, {}, 1),
    ("conv.w", (6, 2, 4), "muon", {"lr": "0.02", "precision": "highest"},
     {"sync_mode": 2, "max_staleness": 2}, 1),
    ("ln.bias", (10,), "adamw", {"amsgrad": "true", "lr": "0.003"}, {}, 1),
    ("mlp.w", (8, 6), "adaptive_muon", {"moment2_method": "normuon"},
     {"workers": 2, "sync_mode": 1, "sync_timeout_ms": 7000}, 2),
]


def files(state_dir):
    """Sequence numbers of the checkpoint files in state_dir, ascending."""
    out = []
    for n in os.listdir(state_dir):
        m = FILE_RE.match(n)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def checkpoint(dm, timeout=30):
    return dm.stub().Checkpoint(h.pb.CheckpointRequest(), timeout=timeout, metadata=h.md())


def setup(dm):
    stub = dm.stub()
    for name, shape, algo, opts, extra, _ in PARAMS:
        h.register(stub, name, shape, algo, opts, **extra)
        h.upload(stub, name, h.seeded(shape, 1, len(name)).reshape(-1))


def grad(name, shape, step, rank):
    return h.seeded(shape, 2, len(name), step, rank).reshape(-1)


def step_all(dm, step):
    """One step of every parameter (both ranks of the SYNC one, on one stream each); returns
    {name: weights after the step}."""
    stub = dm.stub()
    out = {}
    for name, shape, _, _, _, ranks in PARAMS:
        streams = [h.StepStream(stub) for _ in range(ranks)]
        try:
            for r, s in enumerate(streams):
                s.push(name, step, grad(name, shape, step, r), rank=r)
            for s in streams:
                st, w, _ = s.next_weights(name)
                assert st == step + 1, "%s: step counter %d after step %d" % (name, st, step)
                out[name] = w
            for s in streams:
                s.finish()
        except BaseException:
            for s in streams:
                s.cancel()
            raise
    return out


def spec_of(dm, name):
    info = h.describe(dm.stub(), name)
    s = info.spec
    return (info.step, list(s.shape), s.algorithm, s.workers, s.sync_mode, s.max_staleness,
            s.sync_timeout_ms, sorted((o.key, o.value) for o in s.options))


def bit_equal(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32),
                          np.asarray(b, np.float32).view(np.uint32))


def cleanup(*daemons):
    for dm in daemons:
        if dm is not None:
            dm.kill()
            dm.cleanup()


def daemon(args, state_dir=None, flags=(), name="orthod"):
    dm = h.Daemon(args.orthod, flags=["--checkpoint-interval-s", "0"] + list(flags), name=name)
    if state_dir is not None:
        dm.state_dir = state_dir
    return dm


# ---------------------------------------------------------------------------------------------


def restart_after_sigterm(args):
    a, b, control = daemon(args, name="first"), None, daemon(args, name="control")
    try:
        a.start()
        control.start()
        setup(a)
        setup(control)
        for k in range(3):
            step_all(a, k)
            step_all(control, k)
        specs = {n: spec_of(a, n) for n, *_ in PARAMS}
        weights, _ = h.pull(a.stub())
        a.stop()
        assert files(a.state_dir) == [1], "checkpoint files after SIGTERM: %s" % files(a.state_dir)
        assert re.search(r"checkpoint 1 \(shutdown\): 4 parameters", a.stderr_text()), \
            a.stderr_tail()

        b = daemon(args, state_dir=a.state_dir, name="restarted").start()
        assert re.search(r"restored checkpoint 1: 4 parameters", b.stderr_text()), b.stderr_tail()
        for n, *_ in PARAMS:
            got = spec_of(b, n)
            assert got == specs[n], "%s after the restart:\n  %s\nbefore:\n  %s" % (n, got,
                                                                                    specs[n])
        restored, order = h.pull(b.stub())
        assert order == sorted(n for n, *_ in PARAMS), order
        for n in order:
            assert restored[n][0] == 3 and bit_equal(restored[n][2], weights[n][2]), \
                "%s: restored weights differ (step %d)" % (n, restored[n][0])
        after, ref = step_all(b, 3), step_all(control, 3)
        for n in after:
            assert bit_equal(after[n], ref[n]), \
                "%s: the step after the restart differs from the uninterrupted run by %.3g" % (
                    n, float(np.max(np.abs(after[n] - ref[n]))))
        # the restarted daemon still refuses a stale step and keeps its SYNC semantics
        h.expect_rpc_error(lambda: h.step_once(b.stub(), "ln.bias", 2, grad("ln.bias", (10,), 2, 0)),
                           SC.FAILED_PRECONDITION, r"step")
        # an identical Register is an idempotent retry after the restart too
        name, shape, algo, opts, extra, _ = PARAMS[3]
        r = h.register(b.stub(), name, shape, algo, opts, **extra)
        assert not r.created and r.info.step == 4, r
        b.stop()
        assert files(a.state_dir) == [1, 2], files(a.state_dir)
    finally:
        cleanup(a, b, control)


def kill9_keeps_acknowledged(args):
    a = daemon(args, name="first")
    b = None
    try:
        a.start()
        setup(a)
        step_all(a, 0)
        step_all(a, 1)
        saved, _ = h.pull(a.stub())
        r = checkpoint(a)
        assert r.sequence == 1 and r.parameters == len(PARAMS), r
        assert os.path.isfile(r.path) and os.path.getsize(r.path) == r.bytes, r
        assert os.path.dirname(os.path.realpath(r.path)) == os.path.realpath(a.state_dir), r.path
        r2 = checkpoint(a)
        assert r2.sequence == 2 and r2.bytes == r.bytes, r2
        step_all(a, 2)  # acknowledged as a step, not as durable
        a.proc.kill()
        a.wait(10)
        a.kill()
        b = daemon(args, state_dir=a.state_dir, name="restarted").start()
        got, _ = h.pull(b.stub())
        for n, *_ in PARAMS:
            assert got[n][0] == 2 and bit_equal(got[n][2], saved[n][2]), \
                "%s after kill -9: step %d, weights equal: %s" % (n, got[n][0],
                                                                  bit_equal(got[n][2], saved[n][2]))
        r3 = checkpoint(b)
        assert r3.sequence == 3, r3
        b.stop()
    finally:
        cleanup(a, b)


def periodic_and_keep(args):
    dm = h.Daemon(args.orthod, flags=["--checkpoint-interval-s", "1", "--checkpoint-keep", "2"])
    try:
        dm.start()
        assert files(dm.state_dir) == [], files(dm.state_dir)
        setup(dm)
        deadline = time.monotonic() + 10
        while not files(dm.state_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        first = files(dm.state_dir)
        assert first == [1], "no periodic checkpoint within 10 s: %s" % first
        time.sleep(2.5)  # nothing changed: nothing written
        assert files(dm.state_dir) == [1], files(dm.state_dir)
        step_all(dm, 0)
        deadline = time.monotonic() + 10
        while files(dm.state_dir) == [1] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert files(dm.state_dir) == [1, 2], files(dm.state_dir)
        for expect in (3, 4):
            assert checkpoint(dm).sequence == expect
        assert files(dm.state_dir) == [3, 4], "--checkpoint-keep 2: %s" % files(dm.state_dir)
        dm.stop()  # nothing changed since checkpoint 4: no shutdown checkpoint
        assert files(dm.state_dir) == [3, 4], files(dm.state_dir)
        assert "none written at shutdown" in dm.stderr_text(), dm.stderr_tail()
    finally:
        cleanup(dm)


def start_fails(args, state_dir, flags, pattern):
    dm = daemon(args, state_dir=state_dir, flags=flags, name="refused")
    try:
        try:
            dm.start()
        except AssertionError:
            pass
        else:
            raise AssertionError("the daemon started (flags %s)" % flags)
        rc, _ = dm.wait(10)
        assert rc == 1, "exit status %s\n%s" % (rc, dm.stderr_tail())
        assert re.search(pattern, dm.stderr_text()), "stderr does not match /%s/:\n%s" % (
            pattern, dm.stderr_tail())
    finally:
        cleanup(dm)


def damaged_and_restore_false(args):
    a = daemon(args, name="first")
    b = None
    try:
        a.start()
        setup(a)
        step_all(a, 0)
        r = checkpoint(a)
        a.stop()  # second checkpoint? no: nothing changed since r
        assert files(a.state_dir) == [1], files(a.state_dir)
        # a memory limit that no longer fits
        start_fails(args, a.state_dir, ["--memory-limit", "1K"],
                    r"checkpoint .*checkpoint-0+1\.ock: parameter '.*' needs .*limit")
        # one flipped bit
        with open(r.path, "r+b") as f:
            f.seek(r.bytes - 6)
            c = f.read(1)
            f.seek(r.bytes - 6)
            f.write(bytes([c[0] ^ 0x10]))
        start_fails(args, a.state_dir, [],
                    r"checkpoint-0+1\.ock, record 4: CRC32C mismatch .*--restore=false")
        b = daemon(args, state_dir=a.state_dir, flags=["--restore=false"], name="fresh").start()
        assert "not loading" in b.stderr_text(), b.stderr_tail()
        assert len(b.stub().List(h.pb.ListRequest(), timeout=10, metadata=h.md()).params) == 0
        assert checkpoint(b).sequence == 2  # after the damaged one, which is kept
        b.stop()
        assert files(a.state_dir) == [1, 2], files(a.state_dir)
    finally:
        cleanup(a, b)


def errors_keep_serving(args):
    dm = daemon(args)
    try:
        dm.start()
        setup(dm)
        # a state directory that has become a file
        shutil.rmtree(dm.state_dir)
        with open(dm.state_dir, "w") as f:
            f.write("not a directory\n")
        h.expect_rpc_error(lambda: checkpoint(dm), SC.INTERNAL,
                           r"checkpoint 1 failed: checkpoint: cannot create .*/state/"
                           r"\.checkpoint-0+1\.ock\.tmp: Not a directory")
        assert h.health_check(dm).status == h.health_pb.HealthCheckResponse.SERVING
        step_all(dm, 0)
        os.unlink(dm.state_dir)
        os.makedirs(dm.state_dir)
        assert checkpoint(dm).sequence == 2  # numbers are not reused
        # a malformed request
        raw = dm.channel().unary_unary("/orthod.v1.Optimizer/Checkpoint",
                                       request_serializer=lambda x: x,
                                       response_deserializer=lambda x: x)
        h.expect_rpc_error(lambda: raw(b"\xff\xff\xff", timeout=10, metadata=h.md()),
                           SC.INVALID_ARGUMENT, r"malformed CheckpointRequest")
        dm.stop()
    finally:
        cleanup(dm)


def main():
    args = h.parse_args(__doc__)
    h.require(args.orthod)
    runner = h.Runner("checkpoint", args.only)
    runner.case("SIGTERM, restart: spec, steps, weights and state come back", restart_after_sigterm,
                args)
    runner.case("kill -9 keeps what Checkpoint acknowledged", kill9_keeps_acknowledged, args)
    runner.case("periodic checkpoints and --checkpoint-keep", periodic_and_keep, args)
    runner.case("damaged checkpoint, memory limit, --restore=false", damaged_and_restore_false,
                args)
    runner.case("write errors keep the daemon serving; malformed request", errors_keep_serving,
                args)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
