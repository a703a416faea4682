"""test_async_and_misc.py — asynchronous mode with max_staleness, idempotent retried chunks,
per-step learning rates, Pull/List (prefixes, pages)/Describe/Drop/SetConfig, no_reply, bf16/fp16 replies and
gradients, chunked gradients out of order, several parameters on one stream.

The daemon runs with --chunk-bytes 1K so that every fp32 reply of a 32x16 parameter comes in
several chunks. Weights are compared with tests/reference/orthod_ref.py (AdamW 1e-5, Muon at precision
highest 1e-4, relative to the size of the change, as in tests/reference/test_trajectories.py).

Usage: /usr/bin/python3 test_async_and_misc.py --orthod PATH --gen DIR
"""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import grpc, np  # noqa: E402

SC = grpc.StatusCode
SHAPE = [32, 16]
ADAMW = {"lr": 0.01}
MUON = {"lr": 0.02, "precision": "highest"}
TOL_ADAMW = 1e-5
TOL_MUON = 1e-4


def ref_opt(algo, cfg, shape=SHAPE):
    return h.reference().Optimizer(dict(cfg, algo=algo), shape)


def close_to(got, ref, w0, tol, what):
    rel = h.rel_error(got, ref, w0)
    assert rel < tol, "%s: rel error %.3g >= %g" % (what, rel, tol)
    return rel


def setup_param(stub, name, algo, cfg, seed, shape=SHAPE, **kw):
    r = h.register(stub, name, shape, algo, cfg, **kw)
    assert r.created, "%s: created=False on first register" % name
    w0 = h.seeded(shape, seed, scale=0.1)
    h.upload(stub, name, w0, n_chunks=3)
    return w0


# ---------------------------------------------------------------------------------------------


def async_staleness_1(stub):
    w0 = setup_param(stub, "as1", "adamw", ADAMW, 1, workers=2,
                     sync_mode=h.pb.SYNC_MODE_ASYNC, max_staleness=1)
    opt = ref_opt("adamw", ADAMW)
    ga, gb, gc = (h.seeded(SHAPE, 2, i) for i in range(3))
    st, w1 = h.step_once(stub, "as1", 0, ga, rank=0)
    assert st == 1
    r1 = opt.step(w0, ga)
    close_to(w1, r1, w0, TOL_ADAMW, "rank 0 step 0")
    # rank 1 lags: its gradient was computed at step 0, the counter is 1: accepted
    st, w2 = h.step_once(stub, "as1", 0, gb, rank=1)
    assert st == 2, "stale-by-1 push: counter %d" % st
    r2 = opt.step(r1, gb)
    close_to(w2, r2, r1, TOL_ADAMW, "rank 1 stale step")
    # stale by 2 and future: rejected, naming the current step
    for bad in (0, 3):
        h.expect_rpc_error(lambda: h.step_once(stub, "as1", bad, gc, rank=0),
                           SC.FAILED_PRECONDITION, r"current step is 2")
    st, w3 = h.step_once(stub, "as1", 1, gc, rank=1)
    assert st == 3
    close_to(w3, opt.step(r2, gc), r2, TOL_ADAMW, "stale-by-1 step from rank 1 at step 1")
    assert h.describe(stub, "as1").step == 3


def async_staleness_0(stub):
    setup_param(stub, "as0", "adamw", ADAMW, 3, workers=2, sync_mode=h.pb.SYNC_MODE_ASYNC,
                max_staleness=0)
    st, _ = h.step_once(stub, "as0", 0, h.seeded(SHAPE, 4), rank=0)
    assert st == 1
    h.expect_rpc_error(lambda: h.step_once(stub, "as0", 0, h.seeded(SHAPE, 5), rank=1),
                       SC.FAILED_PRECONDITION, r"current step is 1")
    st, _ = h.step_once(stub, "as0", 1, h.seeded(SHAPE, 5), rank=1)
    assert st == 2
    assert h.describe(stub, "as0").step == 2


def workers1_is_async(stub):
    """workers = 0 (= 1), SYNC_MODE_UNSPECIFIED: every push steps at once."""
    setup_param(stub, "one", "adamw", ADAMW, 6)
    for step in range(3):
        st, _ = h.step_once(stub, "one", step, h.seeded(SHAPE, 7, step))
        assert st == step + 1


def idempotent_chunk(stub):
    w0 = setup_param(stub, "idem", "adamw", ADAMW, 8)
    g = h.seeded(SHAPE, 9)
    c0, c1 = h.split_chunks(g, 2)
    s = h.StepStream(stub)
    for c in (c0, c0, c1):  # the first chunk retried before the push completes: one step
        s.send(h.pb.StepRequest(name="idem", step=0, chunk=c))
    st, w, _ = s.next_weights("idem")
    rest = s.finish()
    assert st == 1, "counter %d" % st
    assert not rest, "extra responses after one step: %d" % len(rest)
    assert h.describe(stub, "idem").step == 1
    close_to(w, ref_opt("adamw", ADAMW).step(w0, g), w0, TOL_ADAMW, "retried chunks")


def lr_override(stub):
    w0 = setup_param(stub, "lr", "muon", MUON, 10)
    opt = ref_opt("muon", MUON)
    g0, g1 = h.seeded(SHAPE, 11, 0), h.seeded(SHAPE, 11, 1)
    st, w1 = h.step_once(stub, "lr", 0, g0, lr=0.5)
    r1 = opt.step(w0, g0, lr=0.5)
    close_to(w1, r1, w0, TOL_MUON, "step with lr 0.5")
    # the wrong lr would be far off: the comparison can fail
    r1_wrong = ref_opt("muon", MUON).step(w0, g0)
    assert h.rel_error(w1, r1_wrong, w0) > 100 * TOL_MUON
    st, w2 = h.step_once(stub, "lr", 1, g1)  # back to the configured lr
    close_to(w2, opt.step(r1, g1), r1, TOL_MUON, "next step with the configured lr")


def chunked_out_of_order(stub):
    w0 = setup_param(stub, "ooo", "muon", MUON, 12)
    g = h.seeded(SHAPE, 13)
    s = h.StepStream(stub)
    s.push("ooo", 0, g, n_chunks=4, order=[2, 0, 3, 1])
    st, w, dt = s.next_weights("ooo")
    s.finish()
    assert st == 1 and dt == h.pb.DTYPE_F32
    close_to(w, ref_opt("muon", MUON).step(w0, g), w0, TOL_MUON, "out-of-order chunks")
    # and the chunks of the reply cover the tensor in several pieces (--chunk-bytes 1K)
    assert len(s.responses) >= 2, "reply in %d chunk(s)" % len(s.responses)


def bf16_gradient(stub):
    w0 = setup_param(stub, "g16", "adamw", ADAMW, 14)
    g = h.seeded(SHAPE, 15)
    s = h.StepStream(stub)
    s.push("g16", 0, g, n_chunks=2, dt=h.pb.DTYPE_BF16)
    st, w, _ = s.next_weights("g16")
    s.finish()
    close_to(w, ref_opt("adamw", ADAMW).step(w0, h.round_bf16(g)), w0, TOL_ADAMW,
             "bf16 gradient")
    w0b = setup_param(stub, "g16h", "adamw", ADAMW, 16)
    s = h.StepStream(stub)
    s.push("g16h", 0, g, n_chunks=2, dt=h.pb.DTYPE_F16)
    st, w, _ = s.next_weights("g16h")
    s.finish()
    close_to(w, ref_opt("adamw", ADAMW).step(w0b, h.round_f16(g)), w0b, TOL_ADAMW,
             "fp16 gradient")


def reply_dtypes(stub):
    setup_param(stub, "rd", "adamw", ADAMW, 17)
    for step, (dt, rnd) in enumerate(((h.pb.DTYPE_BF16, h.round_bf16),
                                      (h.pb.DTYPE_F16, h.round_f16))):
        s = h.StepStream(stub)
        s.push("rd", step, h.seeded(SHAPE, 18, step), reply_dtype=dt)
        st, w, got_dt = s.next_weights("rd")
        s.finish()
        assert got_dt == dt, "reply dtype %d, asked %d" % (got_dt, dt)
        pst, w32 = h.pull_one(stub, "rd")
        assert pst == st == step + 1
        want = rnd(w32.reshape(-1))
        assert np.array_equal(w, want), "%s reply differs from the rounded fp32 weights (%d " \
            "elements)" % (h.pb.DType.Name(dt), int(np.sum(w != want)))
        pst, wp = h.pull_one(stub, "rd", dt)
        assert np.array_equal(wp.reshape(-1), want), "Pull as %s differs" % h.pb.DType.Name(dt)


def no_reply(stub):
    w0 = setup_param(stub, "nr", "adamw", ADAMW, 19)
    g = h.seeded(SHAPE, 20)
    s = h.StepStream(stub)
    s.push("nr", 0, g, no_reply=True)
    rest = s.finish()  # half-close: the stream ends once the push is done
    assert not rest, "%d responses despite no_reply" % len(rest)
    st, w = h.pull_one(stub, "nr")
    assert st == 1, "counter %d after a no_reply push" % st
    close_to(w, ref_opt("adamw", ADAMW).step(w0, g), w0, TOL_ADAMW, "no_reply step")


def two_params_one_stream(stub):
    wa = setup_param(stub, "two.a", "adamw", ADAMW, 21)
    wb = setup_param(stub, "two.b", "muon", MUON, 22, shape=[8, 16])
    ga, gb = h.seeded(SHAPE, 23), h.seeded([8, 16], 24)
    s = h.StepStream(stub)
    # interleave the chunks of both gradients
    ca, cb = h.split_chunks(ga, 2), h.split_chunks(gb, 2)
    for c, n in ((ca[0], "two.a"), (cb[0], "two.b"), (ca[1], "two.a"), (cb[1], "two.b")):
        s.send(h.pb.StepRequest(name=n, step=0, chunk=c))
    got = {}
    parts = {}
    while len(got) < 2:
        r = s.recv()
        parts.setdefault(r.name, []).append((r.chunk.offset, h.decode(r.chunk.data,
                                                                      r.chunk.dtype)))
        if r.last:
            got[r.name] = (r.step, h.assemble(parts[r.name], r.elements))
    s.finish()
    assert got["two.a"][0] == 1 and got["two.b"][0] == 1
    close_to(got["two.a"][1], ref_opt("adamw", ADAMW).step(wa, ga), wa, TOL_ADAMW, "two.a")
    close_to(got["two.b"][1], ref_opt("muon", MUON, [8, 16]).step(wb, gb), wb, TOL_MUON, "two.b")


def default_algorithm(stub):
    """Empty algorithm: AdamW for rank 1 (with AdamW's defaults)."""
    r = h.register(stub, "bias", [16], "", {})
    assert r.created
    w0 = h.seeded([16], 25, scale=0.01)  # |w| ~ the change: fp32 rounding of w stays small
    h.upload(stub, "bias", w0)
    g = h.seeded([16], 26)
    st, w = h.step_once(stub, "bias", 0, g)
    close_to(w, h.reference().Optimizer({}, [16]).step(w0, g), w0, TOL_ADAMW, "1-D default")


def pull_all(stub):
    got, order = h.pull(stub, [])
    names = sorted(got)
    assert order == names, "Pull order %s is not name order" % order
    info = {p.spec.name: p for p in stub.List(h.pb.ListRequest(), timeout=10,
                                              metadata=h.md()).params}
    assert set(info) == set(names), "Pull %s vs List %s" % (names, sorted(info))
    for n in names:
        step, shape, w = got[n]
        assert shape == list(info[n].spec.shape), "%s: shape %s" % (n, shape)
        assert step == info[n].step, "%s: step %d vs %d" % (n, step, info[n].step)
        one_step, one = h.pull_one(stub, n)
        assert np.array_equal(one.reshape(-1), w), "%s: Pull of all differs from Pull of one" % n
    # a subset, in the order asked? (names given: every one of them, once)
    sub, sub_order = h.pull(stub, ["rd", "idem"])
    assert set(sub) == {"rd", "idem"} and len(sub_order) == 2
    return "%d parameters" % len(names)


def list_prefix(stub):
    for n in ("enc.0.w", "enc.1.w", "dec.0.w"):
        h.register(stub, n, [4, 4], "adamw")
    lst = stub.List(h.pb.ListRequest(prefix="enc."), timeout=10, metadata=h.md())
    assert [p.spec.name for p in lst.params] == ["enc.0.w", "enc.1.w"], lst.params
    assert lst.device_bytes_used > 0
    assert all(p.elements == 16 and p.device_bytes > 0 for p in lst.params)
    lst = stub.List(h.pb.ListRequest(prefix="zzz"), timeout=10, metadata=h.md())
    assert len(lst.params) == 0
    allp = stub.List(h.pb.ListRequest(), timeout=10, metadata=h.md())
    names = [p.spec.name for p in allp.params]
    assert names == sorted(names), "List not in name order: %s" % names
    assert allp.device_bytes_used >= sum(p.device_bytes for p in allp.params)


def list_pages(stub):
    names = ["page.%02d" % i for i in range(23)]
    for n in names:
        h.register(stub, n, [2], "adamw")
    ls = lambda **kw: stub.List(h.pb.ListRequest(**kw), timeout=10, metadata=h.md())  # noqa
    whole = ls(prefix="page.")
    assert [p.spec.name for p in whole.params] == names and whole.next_page_token == ""
    # pages of 5: 5, 5, 5, 5, 3; every token advances; the last page has no token
    got, token, pages = [], "", 0
    while True:
        r = ls(prefix="page.", page_size=5, page_token=token)
        pages += 1
        got += [p.spec.name for p in r.params]
        assert len(r.params) == (5 if r.next_page_token else 3), (pages, len(r.params))
        assert r.device_bytes_used == whole.device_bytes_used
        if not r.next_page_token:
            break
        assert r.next_page_token > token, "the token does not advance"
        token = r.next_page_token
    assert got == names and pages == 5, (pages, got)
    # a page that ends exactly at the last match has no token
    r = ls(prefix="page.", page_size=23)
    assert len(r.params) == 23 and r.next_page_token == ""
    # changes between pages neither repeat nor skip the others
    first = ls(prefix="page.", page_size=10)
    stub.Drop(h.pb.DropRequest(name="page.03"), timeout=10, metadata=h.md())
    h.register(stub, "page.05a", [2], "adamw")
    h.register(stub, "page.99", [2], "adamw")
    rest = ls(prefix="page.", page_token=first.next_page_token)
    assert [p.spec.name for p in rest.params] == names[10:] + ["page.99"], rest.params
    # a token that names no parameter (dropped meanwhile) continues after where it would be
    r = ls(prefix="page.", page_size=2, page_token="page.05b")
    assert [p.spec.name for p in r.params] == ["page.06", "page.07"], r.params
    # past the end: empty
    r = ls(prefix="page.", page_token="zzz")
    assert len(r.params) == 0 and r.next_page_token == ""


def describe_options(stub):
    h.register(stub, "desc", SHAPE, "muon", {"lr": 0.01, "nesterov": "true"}, workers=3,
               sync_mode=h.pb.SYNC_MODE_SYNC, sync_timeout_ms=1234)
    info = h.describe(stub, "desc")
    assert info.spec.name == "desc" and list(info.spec.shape) == SHAPE
    assert info.spec.algorithm == "muon", info.spec.algorithm
    assert info.spec.workers == 3 and info.spec.sync_mode == h.pb.SYNC_MODE_SYNC
    assert info.spec.sync_timeout_ms == 1234
    assert info.elements == 512 and info.step == 0 and info.device_bytes >= 2 * 512 * 4
    opts = {o.key: o.value for o in info.spec.options}
    assert float(opts["lr"]) == 0.01, opts.get("lr")
    assert opts["nesterov"] in ("true", "1"), opts.get("nesterov")
    # every key with its effective value, defaults included
    for k, v in (("momentum", 0.95), ("weight_decay", 0.01)):
        assert k in opts and float(opts[k]) == v, "%s: %r" % (k, opts.get(k))
    assert opts.get("precision") == "medium", opts.get("precision")
    assert opts.get("coefficient_type") == "quintic", opts.get("coefficient_type")
    # SetConfig changes lr; Describe shows it; the layout stays
    r = stub.SetConfig(h.pb.SetConfigRequest(name="desc", options=h.options(
        {"lr": 0.05, "weight_decay": 0})), timeout=10, metadata=h.md())
    opts2 = {o.key: o.value for o in r.spec.options}
    assert float(opts2["lr"]) == 0.05 and float(opts2["weight_decay"]) == 0.0, opts2
    opts3 = {o.key: o.value for o in h.describe(stub, "desc").spec.options}
    assert opts3 == opts2
    return "%d effective options" % len(opts)


def setconfig_applies(stub):
    w0 = setup_param(stub, "sc", "adamw", ADAMW, 27)
    stub.SetConfig(h.pb.SetConfigRequest(name="sc", options=h.options({"lr": 0.1})), timeout=10,
                   metadata=h.md())
    g = h.seeded(SHAPE, 28)
    st, w = h.step_once(stub, "sc", 0, g)
    close_to(w, ref_opt("adamw", {"lr": 0.1}).step(w0, g), w0, TOL_ADAMW, "after SetConfig lr")


def drop(stub):
    setup_param(stub, "dropme", "adamw", ADAMW, 29)
    h.step_once(stub, "dropme", 0, h.seeded(SHAPE, 30))
    r = stub.Drop(h.pb.DropRequest(name="dropme"), timeout=10, metadata=h.md())
    assert r.name == "dropme" and r.step == 1, "DropResponse %s" % r
    h.expect_rpc_error(lambda: h.describe(stub, "dropme"), SC.NOT_FOUND, r"dropme")
    h.expect_rpc_error(lambda: h.pull(stub, ["dropme"]), SC.NOT_FOUND, r"dropme")
    h.expect_rpc_error(lambda: h.step_once(stub, "dropme", 1, h.seeded(SHAPE, 31)),
                       SC.NOT_FOUND, r"dropme")
    h.expect_rpc_error(lambda: stub.Drop(h.pb.DropRequest(name="dropme"), timeout=10,
                                         metadata=h.md()), SC.NOT_FOUND, r"dropme")
    # the name is free again: a new parameter at step 0, zeros
    r = h.register(stub, "dropme", [4], "adamw")
    assert r.created and r.info.step == 0
    st, w = h.pull_one(stub, "dropme")
    assert st == 0 and np.array_equal(w, np.zeros(4, np.float32)), "new parameter is %s" % w


def upload_out_of_order(stub):
    h.register(stub, "up", [10, 7], "adamw")
    w = h.seeded([10, 7], 32)
    cs = h.split_chunks(w, 5)
    reqs = [h.pb.UploadRequest(name="up", chunk=cs[i]) for i in (4, 1, 3, 0, 2)]
    r = stub.Upload(iter(reqs), timeout=10, metadata=h.md())
    assert [p.spec.name for p in r.params] == ["up"], r
    st, got = h.pull_one(stub, "up")
    assert np.array_equal(got, w)
    # two parameters in one Upload, interleaved
    h.register(stub, "up2", [3], "adamw")
    w2 = h.seeded([3], 33)
    reqs = [h.pb.UploadRequest(name="up", chunk=h.chunk(np.zeros(35, np.float32), 35)),
            h.pb.UploadRequest(name="up2", chunk=h.chunk(w2, 0)),
            h.pb.UploadRequest(name="up", chunk=h.chunk(np.ones(35, np.float32), 0))]
    r = stub.Upload(iter(reqs), timeout=10, metadata=h.md())
    assert sorted(p.spec.name for p in r.params) == ["up", "up2"]
    _, got = h.pull_one(stub, "up")
    assert np.array_equal(got.reshape(-1), np.r_[np.ones(35), np.zeros(35)].astype(np.float32))
    _, got = h.pull_one(stub, "up2")
    assert np.array_equal(got, w2)


def main():
    args = h.parse_args(__doc__)
    h.require(args.orthod)
    runner = h.Runner("async and misc", args.only)
    try:
        dm = h.Daemon(args.orthod, ["--chunk-bytes", "1K"], keep=args.keep).start()
    except Exception as e:  # noqa: BLE001
        runner.fail("start the daemon", h.describe_exception(e))
        return runner.finish()
    stub = dm.stub()
    cases = [
        ("async, max_staleness 1: a step-behind push is accepted", async_staleness_1),
        ("async, max_staleness 0: a step-behind push is FAILED_PRECONDITION", async_staleness_0),
        ("workers 1: every push steps", workers1_is_async),
        ("retried identical chunks: one step", idempotent_chunk),
        ("per-step lr override", lr_override),
        ("gradient in 4 chunks out of order", chunked_out_of_order),
        ("bf16 and fp16 gradients", bf16_gradient),
        ("bf16 and fp16 reply dtypes", reply_dtypes),
        ("no_reply", no_reply),
        ("two parameters on one stream, interleaved", two_params_one_stream),
        ("empty algorithm on a 1-D parameter is AdamW", default_algorithm),
        ("Upload in chunks out of order, two parameters in one Upload", upload_out_of_order),
        ("List with a prefix", list_prefix),
        ("List in pages: tokens, concurrent changes, past the end", list_pages),
        ("Describe shows the effective options; SetConfig", describe_options),
        ("SetConfig lr applies to the next step", setconfig_applies),
        ("Drop, then NOT_FOUND", drop),
        ("Pull of everything: name order, shape in first chunks", pull_all),
    ]
    for name, fn in cases:
        if not dm.alive():
            runner.fail(name, "the daemon is not running (exit status %s)" % dm.proc.poll())
            continue
        runner.case(name, fn, stub)
    runner.case("daemon exits 0 on SIGTERM", dm.stop)
    dm.cleanup(failed=runner.failed > 0)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
