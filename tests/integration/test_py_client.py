"""test_py_client.py — the Python client package (client/python/orthod) against real daemons.

Cases (each prints PASS/FAIL with its numbers):
  every_rpc          Register/Upload/Pull/List/Describe/Drop/SetConfig/Checkpoint/health/Step
                     through Client, the weights of 4 steps against the float64 reference
                     (tests/reference); two checkpoints: sequence +1, their files on disk.
  chunking           client chunks of 256 bytes (a 48x40 tensor in 30 messages); a daemon with
                     --max-message-bytes 64K takes a 256 KiB tensor only when it is chunked.
  dtype_conversions  orthod.dtypes vs an independent rounding model and a literal table: NaN
                     payloads, ±Inf, overflow, ties-to-even, subnormals (bit-exact).
  wire_dtypes        bf16/f16 uploads, gradients, replies and pulls through the daemon, bit-exact
                     where no arithmetic is involved.
  errors             OrthodError carries the daemon's exact code and message.
  list_paging        25 parameters (non-ASCII names among them) listed in pages of 4, 5, 3 (the
                     client option) and 1: the same infos in bytewise name order as one reply,
                     the number of List calls each page size takes, a prefix, usage().
  list_bad_pages     a fake daemon whose paging does not advance (a repeated token, a token with
                     an empty page, a page that goes back): DATA_LOSS, after a bounded number of
                     calls, instead of listing forever; from Client.list and, when the build
                     holds it, from the C client (`orthoctl list`, exit 1).
  retry              a client started before its daemon succeeds after backoff (idempotent calls),
                     also across a daemon restart on the same port; non-idempotent calls (Step,
                     Drop, Upload) fail at once with UNAVAILABLE and are tried exactly once;
                     idempotent ones (Describe, SetConfig) exhaust their retries.
  shard_vectors      ShardedClient.shard_of against tests/integration/shard_vectors.json; hash
                     known answers; every shard's share of 3000 names over 3 local addresses.
  sharded            ShardedClient over 3 daemons: every parameter on the daemon shard_of names
                     (each daemon's List), merged list/pull, steps against the reference, a
                     checkpoint of each daemon's own parameters.
  optimizer_numpy    RemoteOptimizer on NumPy arrays (torch=False): steps vs the reference, a
                     per-group lr change reaching the daemon, state_dict round trip, mismatches.
  data_parallel      two ranks (threads) of a SYNC parameter: rank 1 waits for rank 0's upload;
                     both get the averaged step.
  optimizer_torch    RemoteOptimizer as a torch.optim.Optimizer with StepLR (skipped without torch).

Tolerances (rel = max|W - W_ref| / max|W_ref - W_0| after each step, W_0 the initial weights:
the metric of tests/reference, whose README gives the measured values): AdamW 1e-5 (elementwise
fp32 vs float64, measured ~1e-6); Muon at precision "highest" 1e-4 (fp32 Newton-Schulz, measured
~1e-5). Conversions and data that are only
moved (uploads, pulls, replies in a wire dtype) are compared bit for bit.

Usage: /usr/bin/python3 test_py_client.py --orthod PATH --pythonpath <build>/python --build-dir DIR
"""

import argparse
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from concurrent import futures

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import orthod_harness as h  # noqa: E402  (exits 77 without grpc or numpy)
from orthod_harness import grpc, np  # noqa: E402

SC = grpc.StatusCode
TOL_ADAMW = 1e-5
TOL_MUON = 1e-4
MUON = {"algo": "muon", "lr": 0.02, "precision": "highest"}
ADAMW = {"algo": "adamw", "lr": 0.01}
orthod = None  # the package, imported from --pythonpath


def import_orthod(pythonpath):
    """The package from `pythonpath` only (a copy elsewhere on sys.path would hide a stale
    build)."""
    pythonpath = os.path.abspath(pythonpath)
    if not os.path.isfile(os.path.join(pythonpath, "orthod", "__init__.py")):
        raise SystemExit("no orthod package in %s (build the target orthod_python_package)" %
                         pythonpath)
    sys.path.insert(0, pythonpath)
    import orthod as mod  # noqa: E402
    got = os.path.dirname(os.path.abspath(mod.__file__))
    if got != os.path.join(pythonpath, "orthod"):
        raise SystemExit("imported orthod from %s, expected %s" % (got, pythonpath))
    return mod


def ref_opt(cfg, shape):
    return h.reference().Optimizer(dict(cfg), tuple(shape))


def close_to(got, ref, w0, tol, what):
    rel = h.rel_error(got, ref, w0)
    assert rel < tol, "%s: rel error %.3g >= %g" % (what, rel, tol)
    return rel


def expect_error(fn, code, substring):
    """fn() must raise OrthodError with exactly `code` and `substring` in its message."""
    try:
        r = fn()
    except orthod.OrthodError as e:
        assert e.code == code, "expected %s, got %s: %r" % (code.name, e.code.name, e.details)
        assert substring in e.details, "%s message %r lacks %r" % (code.name, e.details,
                                                                  substring)
        assert str(e) == "%s: %s" % (code.name, e.details), "str(error) is %r" % str(e)
        return e
    raise AssertionError("expected %s (%s), the call succeeded: %s" % (code.name, substring,
                                                                      h.short(r)))


def bits32(a):
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint32)


def check_checkpoint(ck, parameters, state_dir):
    """A Checkpoint result: the file exists in the daemon's state directory (the test daemons run
    here) with the size the reply gives. Checked right after the call, since a new checkpoint may
    delete older ones."""
    assert sorted(ck) == ["bytes", "parameters", "path", "sequence"], ck
    assert ck["parameters"] == parameters, "checkpoint of %d parameters, expected %d: %r" % (
        ck["parameters"], parameters, ck)
    assert ck["bytes"] > 0 and os.path.isabs(ck["path"]) and os.path.isfile(ck["path"]), ck
    assert os.path.getsize(ck["path"]) == ck["bytes"], "%s has %d bytes, the reply says %d" % (
        ck["path"], os.path.getsize(ck["path"]), ck["bytes"])
    assert os.path.realpath(ck["path"]).startswith(os.path.realpath(state_dir) + os.sep), \
        "checkpoint %s outside the state directory %s" % (ck["path"], state_dir)


# ---------------------------------------------------------------------------------------------
# every RPC through Client


def case_every_rpc(dm):
    shapes = {"mat": (48, 40), "vec": (40,)}
    cfgs = {"mat": MUON, "vec": ADAMW}
    with orthod.Client(dm.address, chunk_bytes=256) as c:
        assert c.health() == "SERVING" and c.health("orthod.v1.Optimizer") == "SERVING"
        for n in shapes:
            cfg = cfgs[n]
            info = c.register(n, shapes[n], cfg["algo"], {k: v for k, v in cfg.items()
                                                          if k != "algo"})
            assert info["created"] is True, "%s: created %r" % (n, info["created"])
            assert info["name"] == n and info["shape"] == shapes[n], info
            assert info["algorithm"] == cfg["algo"] and info["workers"] == 1
            assert info["sync_mode"] == "ASYNC" and info["step"] == 0, info
            assert info["elements"] == math.prod(shapes[n]) and info["device_bytes"] > 0, info
            assert float(info["options"]["lr"]) == cfg["lr"], info["options"]
        again = c.register("mat", shapes["mat"], "muon", {"lr": 0.02, "precision": "highest"})
        assert again["created"] is False, "identical Register: created %r" % again["created"]
        w0 = {n: h.seeded(shapes[n], 1, i, scale=0.1) for i, n in enumerate(shapes)}
        up = c.upload(w0)
        assert sorted(up) == ["mat", "vec"] and all(up[n]["step"] == 0 for n in up), up
        got = c.pull()
        assert list(got) == ["mat", "vec"], "Pull of everything: %s" % list(got)
        for n in shapes:
            arr, st = got[n]
            assert st == 0 and arr.shape == shapes[n] and arr.dtype == np.float32
            assert np.array_equal(bits32(arr), bits32(w0[n])), "%s: pulled != uploaded" % n
        assert [i["name"] for i in c.list()] == ["mat", "vec"]
        assert [i["name"] for i in c.list(prefix="v")] == ["vec"]
        assert c.describe("vec")["shape"] == (40,)
        use = c.usage()
        assert use["params"] == 2 and use["device_bytes_used"] > 0, use

        refs = {n: ref_opt(cfgs[n], shapes[n]) for n in shapes}
        w = {n: w0[n].astype(np.float64) for n in shapes}
        worst = {n: 0.0 for n in shapes}
        for k in range(4):
            grads = {n: h.seeded(shapes[n], 2, k, i) for i, n in enumerate(shapes)}
            lr, ref_lr = None, {n: None for n in shapes}
            if k == 1:  # a per-step lr for one parameter
                lr, ref_lr = {"mat": 0.05}, {"mat": 0.05, "vec": None}
            if k == 2:  # a configured change: from the next step on, for every later step
                info = c.set_config("vec", {"lr": 0.002})
                assert float(info["options"]["lr"]) == 0.002, info["options"]["lr"]
                refs["vec"].cfg["lr"] = 0.002
            out = c.step(grads, {n: k for n in shapes}, lr=lr)
            assert sorted(out) == ["mat", "vec"], sorted(out)
            for n in shapes:
                new, st = out[n]
                assert st == k + 1 and new.shape == shapes[n], (n, st, new.shape)
                prev = w[n]
                w[n] = refs[n].step(prev, grads[n], lr=ref_lr[n])
                tol = TOL_MUON if n == "mat" else TOL_ADAMW
                worst[n] = max(worst[n], close_to(new, w[n], w0[n], tol, "%s step %d" % (n, k)))
                if k == 1 and n == "mat":  # the comparison can fail: lr 0.02 would be far off
                    wrong = ref_opt(MUON, shapes[n])
                    wrong.step(w0["mat"].astype(np.float64), h.seeded(shapes[n], 2, 0, 0))
                    off = h.rel_error(new, wrong.step(prev, grads[n]), prev)
                    assert off > 100 * TOL_MUON, "per-step lr invisible: %.3g" % off
            last = out
        pulled = c.pull(["vec", "mat"])
        assert list(pulled) == ["vec", "mat"], "Pull keeps the order asked"
        for n in shapes:
            assert pulled[n][1] == 4 and np.array_equal(bits32(pulled[n][0]), bits32(last[n][0]))
        assert float(c.describe("mat")["options"]["lr"]) == 0.02, "a per-step lr changed the " \
            "configuration"
        cks = []
        for _ in range(2):
            cks.append(c.checkpoint())
            check_checkpoint(cks[-1], 2, dm.state_dir)
        assert cks[1]["sequence"] == cks[0]["sequence"] + 1, "checkpoint sequences %d, %d" % (
            cks[0]["sequence"], cks[1]["sequence"])
        assert c.drop("vec") == 4
        expect_error(lambda: c.describe("vec"), SC.NOT_FOUND, "parameter 'vec' is not registered")
        assert [i["name"] for i in c.list()] == ["mat"]
        c.drop("mat")
    return "Muon rel %.1e, AdamW rel %.1e over 4 steps (per-step lr, SetConfig lr); " \
        "checkpoints %d, %d (%d bytes)" % (worst["mat"], worst["vec"], cks[0]["sequence"],
                                          cks[1]["sequence"], cks[1]["bytes"])


# ---------------------------------------------------------------------------------------------
# List paging


def case_list_paging(dm):
    # bytewise order differs from UTF-16 order (U+1F600 sorts before U+FF21 there)
    names = ["paging.%02d" % i for i in range(22)] + ["paging.\u00e9", "paging.\uff21",
                                                       "paging.\U0001F600"]
    want = sorted(names, key=lambda n: n.encode("utf-8"))
    with orthod.Client(dm.address) as c:
        for n in names:
            c.register(n, (2,), "adamw", {"lr": 0.01})
        c.register("pagingz", (2,), "adamw")  # outside the prefix "paging."

        def listed(page_size, prefix="paging.", client=c):
            before = client.attempts.get("List", 0)
            got = client.list(prefix, page_size=page_size) if page_size is not None \
                else client.list(prefix)
            return got, client.attempts["List"] - before

        whole, calls = listed(0)
        assert [i["name"] for i in whole] == want and calls == 1, (whole, calls)
        for size, pages in ((4, 7), (5, 5), (1, 25), (25, 1), (1000, 1)):
            # a last page that is exactly full ends the list: no empty page after it
            got, calls = listed(size)
            assert got == whole, "page_size %d: %s" % (size, [i["name"] for i in got])
            assert calls == pages, "page_size %d: %d List calls, expected %d" % (size, calls,
                                                                                  pages)
        got, calls = listed(2, "paging.1")
        assert [i["name"] for i in got] == ["paging.%d" % i for i in range(10, 20)], got
        assert calls == 5, calls
        with orthod.Client(dm.address, list_page_size=3) as c3:
            got, calls = listed(None, client=c3)
            assert got == whole and calls == 9, (calls, [i["name"] for i in got])
            use = c3.usage()
            assert use["params"] == len(names) + 1 and use["device_bytes_used"] > 0, use
            assert use["device_bytes_used"] == c.usage()["device_bytes_used"], use
        for bad in (-1, 1 << 32, 2.0, True):
            try:
                c.list("paging.", page_size=bad)
            except ValueError:
                pass
            else:
                raise AssertionError("page_size %r accepted" % (bad,))
        for n in names + ["pagingz"]:
            c.drop(n)
    return "%d parameters in pages of 4 (7 calls), 5 (5), 3 (9), 1 (25): all equal to one " \
        "reply" % len(names)


def bad_pages_servicer(mode):
    """An Optimizer servicer (every other method UNIMPLEMENTED) whose List paging never ends:
    ``mode`` "repeat" answers every request with a page and the same token; "empty" with no
    params and a new token each time; "back" with the same page whatever the token."""
    pb, pb_grpc = orthod._proto.pb, orthod._proto.pb_grpc

    def info(n):
        return pb.ParameterInfo(spec=pb.ParameterSpec(name=n, shape=[2]), elements=2)

    class BadPages(pb_grpc.OptimizerServicer):
        calls = 0

        def List(self, request, context):  # noqa: N802 - the gRPC method name
            self.calls += 1
            if mode == "empty":
                return pb.ListResponse(next_page_token="t%d" % self.calls)
            if mode == "back":
                return pb.ListResponse(params=[info("a"), info("b")],
                                       next_page_token="tok%d" % self.calls)
            return pb.ListResponse(params=[info("p%d" % self.calls)], next_page_token="same")

    return BadPages()


def case_list_bad_pages(build_dir):
    orthoctl = os.path.join(build_dir, "orthoctl")
    clients = [("python", None)]
    if os.access(orthoctl, os.X_OK):
        clients.append(("orthoctl", orthoctl))
    for mode, calls, text in (("repeat", 2, "next_page_token 'same' does not advance"),
                              ("empty", 1, "does not advance (0 parameters in its page)"),
                              ("back", 2, "a page starts at 'a', not after 'b'")):
        for who, exe in clients:
            servicer = bad_pages_servicer(mode)
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            orthod._proto.pb_grpc.add_OptimizerServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            try:
                if exe is None:
                    with orthod.Client("127.0.0.1:%d" % port, timeout=10) as c:
                        expect_error(lambda: c.list(page_size=1), SC.DATA_LOSS, text)
                else:
                    p = subprocess.run([exe, "--addr", "127.0.0.1:%d" % port, "--timeout",
                                        "10000", "list"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, timeout=60)
                    assert p.returncode == 1 and p.stderr.startswith("orthoctl: DATA_LOSS: ") \
                        and text in p.stderr, "orthoctl list, %s: exit %d, %r" % (
                            mode, p.returncode, p.stderr)
            finally:
                server.stop(None)
            assert servicer.calls == calls, "%s, %s: %d List calls, expected %d" % (
                who, mode, servicer.calls, calls)
    return "a repeated token, a token with an empty page, a page going back: DATA_LOSS (%s)" % \
        ", ".join(who for who, _ in clients)


# ---------------------------------------------------------------------------------------------
# chunking


def case_chunking(dm_small):
    """dm_small runs with --max-message-bytes 64K --chunk-bytes 1K."""
    shape = (256, 256)  # 256 KiB in fp32: 4x the daemon's message limit
    w0 = h.seeded(shape, 3, scale=0.1)
    g = h.seeded(shape, 4)
    with orthod.Client(dm_small.address, chunk_bytes=1 << 20) as big:
        big.register("big", shape, "adamw", {"lr": 0.01})
        # unchunked, the message is over the daemon's limit: gRPC refuses it
        expect_error(lambda: big.upload({"big": w0}), SC.RESOURCE_EXHAUSTED, "larger than max")
    with orthod.Client(dm_small.address, chunk_bytes=16 << 10) as c:
        c.upload({"big": w0})
        arr, st = c.pull("big")["big"]
        assert st == 0 and np.array_equal(bits32(arr), bits32(w0)), "chunked upload/pull differ"
        (new, st), = c.step({"big": g}, 0).values()  # 16 chunks out, 256 chunks of 1K back
        assert st == 1
        rel_big = close_to(new, ref_opt(ADAMW, shape).step(w0, g), w0, TOL_ADAMW, "big step")
        c.drop("big")
    # tiny chunks both ways: 48x40 in 256-byte messages (30 out), replies in 1K chunks (8)
    shape = (48, 40)
    w0 = h.seeded(shape, 5, scale=0.1)
    with orthod.Client(dm_small.address, chunk_bytes=256) as c:
        c.register("small", shape, "muon", {"lr": 0.02, "precision": "highest"})
        c.upload({"small": w0})
        opt = ref_opt(MUON, shape)
        w, worst = w0.astype(np.float64), 0.0
        for k in range(2):
            g = h.seeded(shape, 6, k)
            new, st = c.step({"small": g}, k)["small"]
            w = opt.step(w, g)
            worst = max(worst, close_to(new, w, w0, TOL_MUON, "small step %d" % k))
        c.drop("small")
    return "256 KiB tensor in 16 KiB chunks (unchunked: RESOURCE_EXHAUSTED), rel %.1e; " \
        "256-byte chunks, Muon rel %.1e" % (rel_big, worst)


# ---------------------------------------------------------------------------------------------
# dtype conversions: an independent model (exact arithmetic on the value, Python's round() for
# ties-to-even) and a literal table


def f32_of_bits(u):
    return struct.unpack("<f", struct.pack("<I", u))[0]


def model_round(u, sig_bits, min_exp_quantum, max_finite, inf_bits, pack):
    """RNE of the fp32 value with bit pattern u to `sig_bits` significant bits, quantum at least
    2**min_exp_quantum (subnormals), overflow to infinity above max_finite. NaN: the documented
    rule is checked separately (table); here it never occurs."""
    x = f32_of_bits(u)
    sign = u >> 31
    if math.isinf(x) or x == 0.0:
        return pack(x)
    m, e = math.frexp(abs(x))  # |x| = m * 2**e, 0.5 <= m < 1
    q = max(e - sig_bits, min_exp_quantum)
    r = round(abs(x) / 2.0 ** q)  # exact division; round() is ties-to-even
    v = r * 2.0 ** q
    if v > max_finite:
        return inf_bits | (sign << 15)
    return pack(-v if sign else v)


def model_bf16(u):
    return model_round(u, 8, -133, (2 - 2 ** -7) * 2.0 ** 127, 0x7F80,
                       lambda v: struct.unpack("<I", struct.pack("<f", v))[0] >> 16)


def model_f16(u):
    return model_round(u, 11, -24, 65504.0, 0x7C00,
                       lambda v: struct.unpack("<H", struct.pack("<e", v))[0])


def nan_bf16(u):  # documented: sign and top payload bits kept, quiet bit set
    return (u >> 16) | 0x0040


def nan_f16(u):  # documented: sign | 0x7E00 | payload >> 13
    return ((u >> 16) & 0x8000) | 0x7E00 | ((u & 0x7FFFFFFF) >> 13 & 0x3FF)


def is_nan_bits(u):
    return (u & 0x7FFFFFFF) > 0x7F800000


# (fp32 bits, bf16 bits, fp16 bits), worked out by hand
TABLE = [
    (0x00000000, 0x0000, 0x0000),  # +0
    (0x80000000, 0x8000, 0x8000),  # -0
    (0x7F800000, 0x7F80, 0x7C00),  # +Inf
    (0xFF800000, 0xFF80, 0xFC00),  # -Inf
    (0x7FC00000, 0x7FC0, 0x7E00),  # quiet NaN
    (0xFFC00001, 0xFFC0, 0xFE00),  # negative NaN, low payload (lost in both)
    (0x7F800001, 0x7FC0, 0x7E00),  # signalling NaN, lowest payload: stays NaN (not Inf)
    (0x7FA12345, 0x7FE1, 0x7F09),  # signalling NaN with payload: top bits kept, quieted
    (0x3F800000, 0x3F80, 0x3C00),  # 1
    (0x3F808000, 0x3F80, 0x3C04),  # 1 + 2^-8: bf16 tie -> even (1); fp16 exact
    (0x3F818000, 0x3F82, 0x3C0C),  # 1 + 3*2^-8: bf16 tie -> even (up)
    (0x3F808001, 0x3F81, 0x3C04),  # just above the bf16 tie: up
    (0x3F801000, 0x3F80, 0x3C00),  # 1 + 2^-11: fp16 tie -> even (1)
    (0x3F803000, 0x3F80, 0x3C02),  # 1 + 3*2^-11: fp16 tie -> even (up)
    (0x7F7FFFFF, 0x7F80, 0x7C00),  # fp32 max: overflows both to +Inf
    (0x7F7F7FFF, 0x7F7F, 0x7C00),  # just below the bf16 overflow tie
    (0x7F7F8000, 0x7F80, 0x7C00),  # the bf16 tie at the top: odd lsb -> up to Inf
    (0x477FE000, 0x4780, 0x7BFF),  # 65504: fp16 max
    (0x477FEFFF, 0x4780, 0x7BFF),  # just below 65520: fp16 max
    (0x477FF000, 0x4780, 0x7C00),  # 65520: fp16 tie at the top -> Inf
    (0xC77FF000, 0xC780, 0xFC00),  # -65520 -> -Inf
    (0x33800000, 0x3380, 0x0001),  # 2^-24: smallest fp16 subnormal
    (0x33000000, 0x3300, 0x0000),  # 2^-25: fp16 tie between 0 and 2^-24 -> 0
    (0x33000001, 0x3300, 0x0001),  # just above: up
    (0x33C00000, 0x33C0, 0x0002),  # 3*2^-25: fp16 tie -> even 2*2^-24
    (0x387FC000, 0x3880, 0x03FF),  # largest fp16 subnormal (bf16 rounds up)
    (0x38800000, 0x3880, 0x0400),  # 2^-14: smallest fp16 normal
    (0x00000001, 0x0000, 0x0000),  # smallest fp32 subnormal
    (0x00008000, 0x0000, 0x0000),  # 2^-134: bf16 tie between 0 and 2^-133 -> 0
    (0x00018000, 0x0002, 0x0000),  # bf16 subnormal tie -> even (up)
    (0x007FFFFF, 0x0080, 0x0000),  # largest fp32 subnormal: bf16 up to the smallest normal
    (0x80400000, 0x8040, 0x8000),  # negative subnormal: bf16 exact, fp16 -0
]


def case_dtype_conversions():
    dt = orthod.dtypes
    u = np.array([t[0] for t in TABLE], dtype=np.uint32)
    want_bf = np.array([t[1] for t in TABLE], dtype=np.uint16)
    want_h = np.array([t[2] for t in TABLE], dtype=np.uint16)
    # the independent model agrees with the table (for non-NaN rows; NaN rows by the rule)
    for (a, b, c) in TABLE:
        mb = nan_bf16(a) if is_nan_bits(a) else model_bf16(a)
        mh = nan_f16(a) if is_nan_bits(a) else model_f16(a)
        assert (mb, mh) == (b, c), "model of %08x: bf16 %04x f16 %04x, table %04x %04x" % (
            a, mb, mh, b, c)
    got_bf = dt.f32_to_bf16_bits(u.view(np.float32))
    got_h = dt.f32_to_f16_bits(u.view(np.float32))
    for name, got, want in (("bf16", got_bf, want_bf), ("f16", got_h, want_h)):
        bad = np.nonzero(got != want)[0]
        assert not bad.size, "%s of %08x: %04x, expected %04x" % (
            name, u[bad[0]], got[bad[0]], want[bad[0]])
    # random bit patterns over every exponent (NaNs included) against the model
    rng = np.random.default_rng(7)
    r = rng.integers(0, 2 ** 32, 4000, dtype=np.uint64).astype(np.uint32)
    r[:256] = (r[:256] & np.uint32(0x807FFFFF)) | (np.arange(256, dtype=np.uint32) << 23)
    gb, gh = dt.f32_to_bf16_bits(r.view(np.float32)), dt.f32_to_f16_bits(r.view(np.float32))
    for i, a in enumerate(r.tolist()):
        mb = nan_bf16(a) if is_nan_bits(a) else model_bf16(a)
        mh = nan_f16(a) if is_nan_bits(a) else model_f16(a)
        assert gb[i] == mb, "bf16 of %08x: %04x, model %04x" % (a, gb[i], mb)
        assert gh[i] == mh, "f16 of %08x: %04x, model %04x" % (a, gh[i], mh)
    # widening is exact, NaN payloads included (signalling ones stay signalling)
    halves = np.array([0x0001, 0x8000, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x7C01, 0xFE00,
                       0x7D55], dtype=np.uint16)
    want32 = [0x33800000, 0x80000000, 0x387FC000, 0x38800000, 0x477FE000, 0x7F800000,
              0xFF800000, 0x7F802000, 0xFFC00000, 0x7FAAA000]
    got32 = bits32(dt.f16_bits_to_f32(halves)).tolist()
    assert got32 == want32, "f16 -> f32: %s" % ["%08x" % v for v in got32]
    got32 = bits32(dt.decode(halves.astype("<u2").tobytes(), 3)).tolist()
    assert got32 == want32, "decode(f16): %s" % ["%08x" % v for v in got32]
    bf = np.array([0x7F81, 0xFFC0, 0x0001, 0x8080], dtype=np.uint16)
    got32 = bits32(dt.bf16_bits_to_f32(bf)).tolist()
    assert got32 == [0x7F810000, 0xFFC00000, 0x00010000, 0x80800000], got32
    # names
    assert [dt.wire_code(x) for x in ("f32", "bf16", "f16", "bfloat16", "float16", None)] == \
        [1, 2, 3, 2, 3, 1]
    try:
        dt.wire_code("f64")
        raise AssertionError("wire_code('f64') accepted")
    except ValueError:
        pass
    return "%d table rows and 4000 random patterns bit-exact (bf16, f16), widening exact" % (
        len(TABLE))


def case_wire_dtypes(dm):
    dt = orthod.dtypes
    specials = np.array([t[0] for t in TABLE], dtype=np.uint32).view(np.float32)
    n = specials.size
    rng = np.random.default_rng(8)
    vals = np.concatenate([specials, (rng.standard_normal(64) * 10.0 ** rng.integers(
        -8, 6, 64)).astype(np.float32)])
    shape = (vals.size,)
    bf_model = np.array([nan_bf16(a) if is_nan_bits(a) else model_bf16(a)
                         for a in bits32(vals).tolist()], dtype=np.uint32) << np.uint32(16)
    with orthod.Client(dm.address, chunk_bytes=64) as c:
        c.register("wire", shape, "adamw", {"lr": 0.01})
        # uploads in bf16: the daemon widens the client's rounding exactly
        c.upload({"wire": vals}, dtype="bf16")
        arr, _ = c.pull("wire")["wire"]
        assert np.array_equal(bits32(arr), bf_model), "bf16 upload: first difference at %d" % (
            int(np.nonzero(bits32(arr) != bf_model)[0][0]))
        # the fp32 weights back in bf16 / f16: the daemon's rounding, decoded by the client
        c.upload({"wire": vals})
        for name, model, nanrule in (("bf16", model_bf16, nan_bf16), ("f16", model_f16, nan_f16)):
            arr, _ = c.pull("wire", dtype=name)["wire"]
            want = [nanrule(a) if is_nan_bits(a) else model(a) for a in bits32(vals).tolist()]
            got = (dt.f32_to_bf16_bits(arr) if name == "bf16" else
                   dt.f32_to_f16_bits(arr)).tolist()
            # re-rounding a decoded value is the identity, so `got` are the wire bits
            assert got == want, "Pull as %s: first difference at %d (%04x vs %04x)" % (
                name, *next((i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w))
        c.drop("wire")

        # gradients in bf16/f16 on the wire; replies in bf16/f16 equal the rounded fp32 weights
        shape = (24, 20)
        worst = 0.0
        for name, rnd in (("bf16", dt.round_bf16), ("f16", dt.round_f16)):
            pname = "g_" + name
            w0 = h.seeded(shape, 9, scale=0.1)
            c.register(pname, shape, "adamw", {"lr": 0.01})
            c.upload({pname: w0})
            g = h.seeded(shape, 10)
            new, st = c.step({pname: g}, 0, dtype=name)[pname]
            worst = max(worst, close_to(new, ref_opt(ADAMW, shape).step(w0, rnd(g).reshape(shape)),
                                        w0, TOL_ADAMW, "%s gradient" % name))
            # a second step answered in the wire dtype
            g2 = h.seeded(shape, 11)
            new2, st2 = c.step({pname: g2}, st, dtype=name, reply_dtype=name)[pname]
            full, pst = c.pull(pname)[pname]
            assert st2 == pst == 2
            assert np.array_equal(bits32(new2), bits32(rnd(full))), \
                "%s reply differs from the daemon's fp32 weights rounded" % name
            assert not np.array_equal(bits32(new2), bits32(full)), "%s reply is not rounded" % name
            c.drop(pname)
    return "%d special values + 64 random bit-exact through upload/pull; bf16/f16 gradients " \
        "rel %.1e, replies = rounded weights" % (n, worst)


# ---------------------------------------------------------------------------------------------
# errors


def case_errors(dm):
    with orthod.Client(dm.address) as c:
        shape = (8, 6)
        c.register("e", shape, "adamw", {"lr": 0.01})
        c.upload({"e": h.seeded(shape, 12)})
        e = expect_error(lambda: c.describe("nope"), SC.NOT_FOUND,
                         "parameter 'nope' is not registered")
        assert pickle.loads(pickle.dumps(e)).code == SC.NOT_FOUND
        expect_error(lambda: c.pull(["e", "nope"]), SC.NOT_FOUND, "'nope' is not registered")
        expect_error(lambda: c.step({"nope": np.zeros(3)}, 0), SC.NOT_FOUND,
                     "'nope' is not registered")
        expect_error(lambda: c.drop("nope"), SC.NOT_FOUND, "'nope' is not registered")
        expect_error(lambda: c.upload({"e": np.zeros(40, np.float32)}), SC.INVALID_ARGUMENT,
                     "upload of 'e' covers 40 of 48 elements; first gap at element 40")
        expect_error(lambda: c.upload({"e": np.zeros(50, np.float32)}), SC.INVALID_ARGUMENT,
                     "upload chunk [0, 50) of 'e' is outside the tensor of 48 elements")
        # a gradient of the wrong size is refused by the client before anything is sent
        expect_error(lambda: c.step({"e": np.zeros((6, 6))}, 0), SC.INVALID_ARGUMENT,
                     "gradient for 'e' has 36 elements; the parameter has shape [8, 6]")
        expect_error(lambda: c.register("e", (8, 7), "adamw", {"lr": 0.01}), SC.ALREADY_EXISTS,
                     "parameter 'e' exists with a different spec: shape [8, 6] vs [8, 7]")
        expect_error(lambda: c.register("e2", (4,), "sgd"), SC.INVALID_ARGUMENT,
                     "unknown algorithm 'sgd'")
        expect_error(lambda: c.register("e3", (4,), "adamw", {"no_such_key": 1}),
                     SC.INVALID_ARGUMENT, "no_such_key")
        expect_error(lambda: c.set_config("e", {"amsgrad": True}), SC.INVALID_ARGUMENT,
                     "option amsgrad defines the optimizer state layout and cannot change")
        expect_error(lambda: c.health("no.Such"), SC.NOT_FOUND, "unknown service 'no.Such'")
        g = h.seeded(shape, 13)
        _, st = c.step({"e": g}, 0)["e"]
        assert st == 1
        expect_error(lambda: c.step({"e": g}, 0), SC.FAILED_PRECONDITION,
                     "push for step 0 of 'e' rejected: current step is 1")
        expect_error(lambda: c.step({"e": g}, 1, lr=-1.0), SC.INVALID_ARGUMENT,
                     "lr -1 for step 1 of 'e' is invalid")
        # the Step stream is reopened after the errors: the counter continues
        _, st = c.step({"e": g}, 1)["e"]
        assert st == 2, "step after errors: counter %d" % st
        c.drop("e")
    with orthod.Client(dm.address) as c, orthod.Client(dm.address, timeout=2.0) as short:
        # a client-side deadline: a SYNC step that waits for a second worker in vain
        c.register("sync2", (4,), "adamw", {"lr": 0.01}, workers=2, sync_timeout_ms=10000)
        short.describe("sync2")
        t0 = time.monotonic()
        expect_error(lambda: short.step({"sync2": np.ones(4)}, 0), SC.DEADLINE_EXCEEDED,
                     "no weights for 'sync2' within 2.0 s")
        waited = time.monotonic() - t0
        assert 1.9 < waited < 8, "deadline after %.2f s" % waited
        c.drop("sync2")
    return "NOT_FOUND, INVALID_ARGUMENT, ALREADY_EXISTS, FAILED_PRECONDITION, " \
        "DEADLINE_EXCEEDED with the daemon's messages"


# ---------------------------------------------------------------------------------------------
# retries


def start_on(orthod_path, address, flags=()):
    """A daemon on a given loopback address (the last --listen wins)."""
    dm = h.Daemon(orthod_path, flags=list(flags) + ["--listen", address], name="orthod@" + address)
    dm.start()
    assert dm.address == address, "daemon listens on %s, asked %s" % (dm.address, address)
    return dm


def case_retry(orthod_path):
    probe = h.Daemon(orthod_path, name="port-probe").start()
    addr = probe.address
    probe.stop()
    probe.cleanup()
    late = {}

    def start_later(delay):
        time.sleep(delay)
        try:
            late["dm"] = start_on(orthod_path, addr)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            late["error"] = e

    c = orthod.Client(addr, retries=10, backoff=0.05, timeout=10)
    dms = []
    try:
        # 1. nothing listens yet: idempotent calls retry until the daemon is up
        t = threading.Thread(target=start_later, args=(0.5,))
        t0 = time.monotonic()
        t.start()
        assert c.list() == []
        first_wait = time.monotonic() - t0
        t.join()
        assert "error" not in late, "late daemon: %s" % late.get("error")
        dms.append(late.pop("dm"))
        tries = c.attempts["List"]
        assert tries >= 2 and first_wait >= 0.4, "List tried %d times, %.2f s" % (tries,
                                                                                   first_wait)
        info = c.register("r", (4,), "adamw", {"lr": 0.01})
        assert info["created"]
        c.upload({"r": np.ones(4, np.float32)})
        _, st = c.step({"r": np.ones(4)}, 0)["r"]
        assert st == 1
        # 2. the daemon stops: non-idempotent calls are tried once and fail with UNAVAILABLE
        dms[0].stop()
        before = dict(c.attempts)
        for what, fn in (("Step", lambda: c.step({"r": np.ones(4)}, 1)),
                         ("Drop", lambda: c.drop("r")),
                         ("Upload", lambda: c.upload({"r": np.ones(4)}))):
            t0 = time.monotonic()
            expect_error(fn, SC.UNAVAILABLE, "")
            took = time.monotonic() - t0
            n = c.attempts.get(what, 0) - before.get(what, 0)
            assert n == 1, "%s with the daemon down: %d attempts, expected 1" % (what, n)
            assert took < 1.0, "%s took %.2f s to fail (retried?)" % (what, took)
        # idempotent calls exhaust their retries: 1 + 3 attempts with backoff 0.05*(1+2+4)
        c3 = orthod.Client(addr, retries=3, backoff=0.05)
        for what, fn in (("Describe", lambda: c3.describe("r")),
                         ("SetConfig", lambda: c3.set_config("r", {"lr": 0.1}))):
            t0 = time.monotonic()
            expect_error(fn, SC.UNAVAILABLE, "")
            took = time.monotonic() - t0
            assert c3.attempts[what] == 4 and took >= 0.35, "%s: %d attempts, %.2f s" % (
                what, c3.attempts[what], took)
        c3.close()
        # 3. a restarted daemon on the same port: health and an idempotent Register get through
        t = threading.Thread(target=start_later, args=(0.3,))
        t.start()
        before = c.attempts.get("Check", 0)
        assert c.health() == "SERVING"
        t.join()
        assert "error" not in late, "restarted daemon: %s" % late.get("error")
        dms.append(late.pop("dm"))
        info = c.register("r", (4,), "adamw", {"lr": 0.01})
        assert info["created"] and info["step"] == 0, "a fresh daemon has no 'r': %s" % info
        _, st = c.step({"r": np.ones(4)}, 0)["r"]  # a new Step stream on the new connection
        assert st == 1
        return "first List after %.2f s (%d attempts); Step/Drop/Upload tried once; " \
            "Describe/SetConfig 4 attempts (%.2f s); health across a restart (%d attempts)" % (
                first_wait, tries, took, c.attempts["Check"] - before)
    finally:
        c.close()
        for d in dms:
            if d.alive():
                d.stop()
            d.cleanup()


# ---------------------------------------------------------------------------------------------
# sharding


def case_shard_vectors(build_dir):
    path = os.path.join(HERE, "shard_vectors.json")
    assert os.path.isfile(path), "%s is missing (generated by make_shard_vectors.py)" % path
    with open(path, encoding="utf-8") as f:
        vec = json.load(f)
    addresses, names = vec["addresses"], vec["names"]
    assert len(addresses) >= 2 and len(names) >= 50, "too few vectors"
    assert any(ord(ch) > 127 for n in names for ch in n), "no non-ASCII name in the vectors"
    assert set(names.values()) == set(range(len(addresses))), "not every shard is used"
    sc = orthod.ShardedClient(addresses)  # channels connect lazily: nothing is contacted
    try:
        bad = [(n, sc.shard_of(n), i) for n, i in names.items() if sc.shard_of(n) != i]
    finally:
        sc.close()
    assert not bad, "%d of %d names placed differently, e.g. %r on %d, expected %d" % (
        len(bad), len(names), bad[0][0], bad[0][1], bad[0][2])
    mod = [n for n, i in names.items() if orthod.placement.shard_of(addresses, n) != i]
    assert not mod, "orthod.placement.shard_of differs for %r" % mod[0]
    # FNV-1a 64 of well-known inputs
    assert orthod.fnv1a64("") == 0xCBF29CE484222325
    assert orthod.fnv1a64("a") == 0xAF63DC4C8601EC8C
    assert orthod.fnv1a64("foobar") == 0x85944171F73967E8
    # fmix64 and ring_hash = fmix64(fnv1a64(s)): values from an independent Python implementation
    # of the rule
    fmix = orthod.placement.fmix64
    assert fmix(0) == 0 and fmix(1) == 0xB456BCFC34C2CB2C
    assert fmix(0xFFFFFFFFFFFFFFFF) == 0x64B5720B4B825F21
    assert orthod.ring_hash("") == 0xEFD01F60BA992926
    assert orthod.ring_hash("a") == 0x82A2A958A9BECE5B
    assert orthod.ring_hash("foobar") == 0x2C22194922D1672B
    assert orthod.ring_hash("127.0.0.1:50051#0") == 0x6F0E0A797AEDEE10
    # Evenness: 3000 transformer-style names over 3 local shards. With the rule the shares are
    # 35.6%, 31.1%, 33.3%; FNV-1a alone (no finalizer) clusters each address's points and gives
    # 27.8%, 8.8%, 63.4% (and 58.5%, 9.5%, 31.9% over the vector addresses), so [20%, 47%] takes
    # the rule with room and fails the unfinalized one on two shards.
    local = ["127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"]
    ring = orthod.placement.HashRing(local)
    spread = ["layers.%d.mlp.weight" % i for i in range(1500)] + \
        ["h.%d.attn.c_attn.weight" % i for i in range(1500)]
    counts = [0] * len(local)
    for n in spread:
        counts[ring.shard_of(n)] += 1
    shares = [c / len(spread) for c in counts]
    assert all(0.20 <= x <= 0.47 for x in shares), "uneven placement: shares %s" % (
        ", ".join("%.1f%%" % (100 * x) for x in shares))
    return "%d names over %d addresses match; local shares %s" % (
        len(names), len(addresses), "/".join("%.1f%%" % (100 * x) for x in shares))


def case_sharded(orthod_path):
    dms = [h.Daemon(orthod_path, flags=["--chunk-bytes", "1K"], name="shard%d" % i)
           for i in range(3)]
    try:
        for d in dms:
            d.start()
        addrs = [d.address for d in dms]
        sc = orthod.ShardedClient(addrs, chunk_bytes=512)
        names, per = [], [0, 0, 0]
        i = 0
        while min(per) < 2 or len(names) < 12:  # at least 2 parameters on every daemon
            n = "layers.%d.%s" % (i // 2, "weight" if i % 2 == 0 else "bias")
            names.append(n)
            per[sc.shard_of(n)] += 1
            i += 1
            assert i < 500, "placement never reaches every shard: %s" % per
        shapes = {n: (12, 10) if n.endswith("weight") else (10,) for n in names}
        for n in names:
            info = sc.register(n, shapes[n], "adamw", {"lr": 0.01})
            assert info["created"]
        w0 = {n: h.seeded(shapes[n], 20, j, scale=0.1) for j, n in enumerate(names)}
        up = sc.upload(w0)
        assert sorted(up) == sorted(names)
        # each daemon holds exactly the names shard_of gives it
        for k, a in enumerate(addrs):
            with orthod.Client(a) as c:
                held = sorted(i["name"] for i in c.list())
            want = sorted(n for n in names if sc.shard_of(n) == k)
            assert held == want, "daemon %d holds %s, placement says %s" % (k, held, want)
        merged = [i["name"] for i in sc.list()]
        assert merged == sorted(names, key=lambda s: s.encode()), "merged List: %s" % merged
        assert [i["name"] for i in sc.list("layers.1.")] == ["layers.1.bias", "layers.1.weight"]
        got = sc.pull()
        assert list(got) == merged, "pull(None) order: %s" % list(got)
        for n in names:
            assert got[n][1] == 0 and np.array_equal(bits32(got[n][0]), bits32(w0[n])), n
        refs = {n: ref_opt(ADAMW, shapes[n]) for n in names}
        w = {n: w0[n].astype(np.float64) for n in names}
        worst = 0.0
        for k in range(2):
            grads = {n: h.seeded(shapes[n], 21, k, j) for j, n in enumerate(names)}
            out = sc.step(grads, k)
            assert list(out) == names
            for n in names:
                new, st = out[n]
                assert st == k + 1
                w[n] = refs[n].step(w[n], grads[n])
                worst = max(worst, close_to(new, w[n], w0[n], TOL_ADAMW, "%s step %d" % (n, k)))
        some = [names[3], names[0]]
        assert list(sc.pull(some)) == some
        assert sc.describe(names[1])["step"] == 2
        assert sc.health() == "SERVING"
        assert sc.drop(names[0]) == 2
        e = expect_error(lambda: sc.describe(names[0]), SC.NOT_FOUND, "shard %d (%s): parameter "
                         "'%s' is not registered" % (sc.shard_of(names[0]),
                                                     addrs[sc.shard_of(names[0])], names[0]))
        assert e.shard == sc.shard_of(names[0]), e.shard
        e = expect_error(lambda: sc.step({names[1]: np.zeros(shapes[names[1]]),
                                          names[2]: np.zeros(shapes[names[2]])}, 0),
                         SC.FAILED_PRECONDITION, "rejected: current step is 2")
        assert e.details.startswith("shard %d (" % min(sc.shard_of(names[1]),
                                                       sc.shard_of(names[2]))), e.details
        assert len(sc.list()) == len(names) - 1
        cks = sc.checkpoint()  # one per daemon, in address order, each of its own parameters
        assert len(cks) == 3, cks
        for k, ck in enumerate(cks):
            check_checkpoint(ck, sum(1 for n in names[1:] if sc.shard_of(n) == k),
                             dms[k].state_dir)
        sc.close()
        for d in dms:
            d.stop()
        return "%d parameters over 3 daemons (%s), placement confirmed by each List; " \
            "AdamW rel %.1e over 2 parallel steps" % (len(names), per, worst)
    finally:
        for d in dms:
            d.cleanup()


# ---------------------------------------------------------------------------------------------
# RemoteOptimizer


def numpy_model(seed):
    return {"w1": h.seeded((16, 8), seed, 1, scale=0.2), "b1": h.seeded((8,), seed, 2,
                                                                        scale=0.2)}


def numpy_groups(params):
    return [{"params": {"w1": params["w1"]}, "lr": 0.02, "precision": "highest"},
            {"params": {"b1": params["b1"]}, "lr": 0.01}]


def case_optimizer_numpy(dm):
    RemoteOptimizer = orthod.RemoteOptimizer
    params = numpy_model(30)
    w0 = {n: p.copy() for n, p in params.items()}
    ids = {n: id(p) for n, p in params.items()}
    opt = RemoteOptimizer(numpy_groups(params), address=dm.address, torch=False)
    assert not any(c.__module__.startswith("torch") for c in type(opt).__mro__), type(opt).__mro__
    with orthod.Client(dm.address) as c:
        assert c.describe("w1")["algorithm"] == "muon" and c.describe("b1")["algorithm"] == \
            "adamw", "algorithm by rank"
        assert c.describe("w1")["options"]["precision"] == "highest"
        assert np.array_equal(c.pull("w1")["w1"][0], w0["w1"]), "initial weights not uploaded"
    refs = {"w1": ref_opt(MUON, (16, 8)), "b1": ref_opt(ADAMW, (8,))}
    w = {n: w0[n].astype(np.float64) for n in params}
    worst = {n: 0.0 for n in params}

    def run(opt_, k, lr_w1=None):
        grads = {n: h.seeded(params[n].shape, 31, k, i) for i, n in enumerate(sorted(params))}
        opt_.step(grads=grads)
        for n in params:
            prev = w[n]
            w[n] = refs[n].step(prev, grads[n], lr=lr_w1 if n == "w1" else None)
            tol = TOL_MUON if n == "w1" else TOL_ADAMW
            worst[n] = max(worst[n], close_to(params[n], w[n], w0[n], tol, "%s step %d" % (n, k)))

    run(opt, 0)
    run(opt, 1)
    opt.param_groups[0]["lr"] = 0.05  # a schedule: must travel with the push
    run(opt, 2, lr_w1=0.05)
    assert all(id(p) == ids[n] for n, p in params.items()), "arrays replaced, not updated"
    with orthod.Client(dm.address) as c:
        assert float(c.describe("w1")["options"]["lr"]) == 0.02, "the push changed the config"
    sd = opt.state_dict()
    assert sd["state"] == {"w1": {"step": 3}, "b1": {"step": 3}}, sd["state"]
    assert [g["params"] for g in sd["param_groups"]] == [["w1"], ["b1"]]
    assert sd["param_groups"][0]["lr"] == 0.05 and sd["param_groups"][1]["lr"] == 0.01
    try:
        opt.step(grads={"nope": np.zeros(3)})
        raise AssertionError("a gradient for an unknown parameter was accepted")
    except KeyError as e:
        assert "nope" in str(e)
    opt.close()

    # a second optimizer adopts the existing parameters (identical spec): the daemon's weights
    # and counters, then the saved group settings
    params2 = {n: np.zeros_like(p) for n, p in params.items()}
    opt2 = RemoteOptimizer(numpy_groups(params2), address=dm.address, torch=False)
    for n in params:
        assert np.array_equal(params2[n], params[n]), "%s not adopted from the daemon" % n
        assert opt2.state[n]["step"] == 3
    assert opt2.param_groups[0]["lr"] == 0.02
    bad = json.loads(json.dumps(sd))
    bad["state"]["b1"]["step"] = 2
    try:
        opt2.load_state_dict(bad)
        raise AssertionError("a state_dict at another step was accepted")
    except ValueError as e:
        assert "'b1'" in str(e) and "step 2" in str(e) and "step 3" in str(e), str(e)
    bad = json.loads(json.dumps(sd))
    bad["param_groups"][0]["params"] = ["w9"]
    try:
        opt2.load_state_dict(bad)
        raise AssertionError("a state_dict of other parameters was accepted")
    except ValueError as e:
        assert "'w1'" in str(e) or "'w9'" in str(e), str(e)
    opt2.load_state_dict(json.loads(json.dumps(sd)))
    assert opt2.param_groups[0]["lr"] == 0.05, "lr not restored"
    params.update(params2)  # the arrays run() checks
    run(opt2, 3, lr_w1=0.05)
    opt2.close()
    with orthod.Client(dm.address) as c:
        c.drop("w1")
        c.drop("b1")
    return "Muon rel %.1e, AdamW rel %.1e over 4 steps; group lr 0.05 pushed; state_dict " \
        "round trip, step and name mismatches refused" % (worst["w1"], worst["b1"])


def case_data_parallel(dm):
    """Two ranks in threads: rank 1 starts first and waits for rank 0's parameters."""
    RemoteOptimizer = orthod.RemoteOptimizer
    # a different local init on rank 1: it must end up with rank 0's weights
    init = {0: numpy_model(40), 1: numpy_model(49)}
    w0 = {n: p.copy() for n, p in init[0].items()}
    grads = {r: [{n: h.seeded(p.shape, 41, r, k, i) for i, (n, p) in enumerate(
        sorted(init[0].items()))} for k in range(2)] for r in (0, 1)}
    start = {}
    out, errors = {}, []

    def worker(rank, delay):
        try:
            time.sleep(delay)
            opt = RemoteOptimizer(numpy_groups(init[rank]), address=dm.address, rank=rank,
                                  world_size=2, sync_timeout_ms=20000, torch=False)
            start[rank] = {n: p.copy() for n, p in init[rank].items()}
            for k in range(2):
                opt.step(grads=grads[rank][k])
            out[rank] = ({n: p.copy() for n, p in init[rank].items()},
                         {n: s["step"] for n, s in opt.state.items()})
            opt.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((rank, e))

    ts = [threading.Thread(target=worker, args=(1, 0.0)),
          threading.Thread(target=worker, args=(0, 0.3))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, "rank %d: %s" % (errors[0][0], errors[0][1])
    for n in w0:
        assert np.array_equal(start[1][n], w0[n]), "rank 1 did not start from rank 0's %s" % n
    refs = {"w1": ref_opt(MUON, (16, 8)), "b1": ref_opt(ADAMW, (8,))}
    worst = 0.0
    for n in w0:
        w = w0[n].astype(np.float64)
        for k in range(2):
            w = refs[n].step(w, (grads[0][k][n].astype(np.float64) + grads[1][k][n]) / 2)
        tol = TOL_MUON if n == "w1" else TOL_ADAMW
        worst = max(worst, close_to(out[0][0][n], w, w0[n], tol, "%s rank 0" % n))
        assert np.array_equal(out[0][0][n], out[1][0][n]), "ranks differ on %s" % n
    assert out[0][1] == out[1][1] == {"w1": 2, "b1": 2}, out
    with orthod.Client(dm.address) as c:
        info = c.describe("w1")
        assert info["workers"] == 2 and info["sync_mode"] == "SYNC", info
        c.drop("w1")
        c.drop("b1")
    return "rank 1 adopted rank 0's upload; 2 SYNC steps of the mean gradient, rel %.1e; " \
        "ranks bit-identical" % worst


def case_optimizer_torch(dm):
    try:
        import torch
    except ImportError:
        return "skipped: torch is not importable"
    RemoteOptimizer = orthod.RemoteOptimizer
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = RemoteOptimizer(model.named_parameters(), address=dm.address, lr=0.02,
                          precision="highest")
    assert isinstance(opt, torch.optim.Optimizer), type(opt).__mro__
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    named = dict(model.named_parameters())
    w0 = {n: p.detach().numpy().copy() for n, p in named.items()}
    ptrs = {n: p.data_ptr() for n, p in named.items()}
    cfg = {n: dict(MUON if p.dim() >= 2 else ADAMW, lr=0.02) for n, p in named.items()}
    refs = {n: ref_opt(cfg[n], tuple(p.shape)) for n, p in named.items()}
    w = {n: w0[n].astype(np.float64) for n in named}
    x, y = torch.randn(16, 6), torch.randn(16, 2)
    worst = 0.0
    lrs = []
    for k in range(3):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        g = {n: p.grad.numpy().copy() for n, p in named.items()}
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        opt.step()
        sched.step()
        for n, p in named.items():
            prev = w[n]
            w[n] = refs[n].step(prev, g[n], lr=lr)
            tol = TOL_MUON if p.dim() >= 2 else TOL_ADAMW
            worst = max(worst, close_to(p.detach().numpy(), w[n], w0[n], tol,
                                        "%s step %d" % (n, k)))
    assert lrs == [0.02, 0.01, 0.005], "StepLR lrs %s" % lrs
    assert all(p.data_ptr() == ptrs[n] for n, p in named.items()), "weights not written in place"
    opt.zero_grad()
    assert all(p.grad is None for p in named.values()), "zero_grad left gradients"
    with orthod.Client(dm.address) as c:
        pulled = c.pull(sorted(named))
        for n, p in named.items():
            assert pulled[n][1] == 3 and np.array_equal(pulled[n][0], p.detach().numpy()), n
            assert float(c.describe(n)["options"]["lr"]) == 0.02
        for n in named:
            c.drop(n)
    opt.close()
    return "torch.optim.Optimizer subclass; StepLR lrs %s reached the daemon; rel %.1e; " \
        "in place" % (lrs, worst)


# ---------------------------------------------------------------------------------------------


def main():
    global orthod
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orthod", required=True, help="path of the orthod executable")
    ap.add_argument("--pythonpath", required=True, help="directory holding the orthod package")
    ap.add_argument("--build-dir", required=True, help="the build directory")
    ap.add_argument("--only", default=None, help="run only the cases whose name contains this")
    args = ap.parse_args()
    h.require(args.orthod)
    orthod = import_orthod(args.pythonpath)

    runner = h.Runner("Python client package (%s)" % os.path.dirname(orthod.__file__), args.only)
    runner.case("dtype_conversions", case_dtype_conversions)
    runner.case("shard_vectors", case_shard_vectors, args.build_dir)
    runner.case("list_bad_pages", case_list_bad_pages, args.build_dir)
    main_dm = h.Daemon(args.orthod, flags=["--chunk-bytes", "1K"], name="orthod")
    small_dm = h.Daemon(args.orthod, flags=["--chunk-bytes", "1K", "--max-message-bytes", "64K"],
                        name="orthod-64K")
    failed_before = runner.failed
    try:
        main_dm.start()
        small_dm.start()
        runner.case("every_rpc", case_every_rpc, main_dm)
        runner.case("chunking", case_chunking, small_dm)
        runner.case("wire_dtypes", case_wire_dtypes, main_dm)
        runner.case("errors", case_errors, main_dm)
        runner.case("list_paging", case_list_paging, main_dm)
        runner.case("optimizer_numpy", case_optimizer_numpy, main_dm)
        runner.case("data_parallel", case_data_parallel, main_dm)
        runner.case("optimizer_torch", case_optimizer_torch, main_dm)
        for d in (main_dm, small_dm):
            d.stop()
    except Exception as e:  # noqa: BLE001 - a daemon that did not start or stop cleanly
        runner.fail("daemon", h.describe_exception(e))
    finally:
        for d in (main_dm, small_dm):
            d.cleanup(failed=runner.failed > failed_before)
    runner.case("sharded", case_sharded, args.orthod)
    runner.case("retry", case_retry, args.orthod)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
