"""test_node_client.py — the Node.js client (client/node) against a real daemon.

Cases:
  npm         installs the client's dependencies from client/node/package-lock.json with
              `npm ci` into <build-dir>/node-client (never into the source tree); an install whose
              package.json, package-lock.json and node version are unchanged is reused. The
              client's .js files are copied there too, so Node resolves @grpc/grpc-js and
              @grpc/proto-loader from <build-dir>/node-client/node_modules whatever the source
              tree holds; ORTHOD_PROTO_DIR points the copies at the source tree's proto/.
  client      client/node/test.js on a daemon (--chunk-bytes 4096: replies of several chunks):
              health, Register (+ the idempotent retry), one Upload of every parameter in its wire
              dtype, STEPS steps with seeded gradients (the first ones on one explicit Step
              stream with every parameter in flight, the rest through Client.step()), Pull in
              fp32/bf16/fp16, Describe, List (in pages of 1, 2, all, more: the same as one
              reply; a fake daemon whose paging does not advance is refused), SetConfig, Drop,
              and failing calls whose gRPC code and daemon message must reach the caller. Parameters: fused-QKV Muon (split_rows),
              a 256x128 Muon matrix with bf16 on the wire in 8 chunks per push, 1-D AdamW with a
              per-step lr, a 4-D conv Muon at the default (medium) precision, and Scion with fp16
              gradients and bf16 replies. The weights of every step reply are compared here with
              the float64 reference tests/reference/orthod_ref.py; the module's bf16/fp16
              encoders with NumPy's conversions, bit for bit.
  example     client/node/example.js runs against the daemon and prints its per-step lines.

Metric, as in tests/reference/test_trajectories.py:
    rel = max|W_daemon - W_ref| / max|W_ref - W_0|   (error relative to the change the steps made)
with that file's tolerances (quoted where they are used below).

usage: /usr/bin/python3 test_node_client.py --orthod PATH --pythonpath DIR --build-dir DIR
       [--keep]
--pythonpath is accepted for the command line shared by the client tests and not used here.
Exit 0 all passed, 1 a failure (an `npm ci` that cannot reach the registry included), 77 when
`node` or `npm` is not on PATH.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import np  # noqa: E402

SRC = os.path.dirname(os.path.dirname(h.HERE))
NODE_SRC = os.path.join(SRC, "client", "node")
PROTO_DIR = os.path.join(SRC, "proto")
NODE_FILES = ("orthod.js", "test.js", "example.js")
NPM_FILES = ("package.json", "package-lock.json")
STAMP = ".orthod-install-stamp"   # in node_modules: `npm ci` deletes it with the rest

# Tolerances of tests/reference/test_trajectories.py (derivations there):
TOL_ELEM = 1e-5   # elementwise fp32 paths (AdamW): measured 1.1e-6
TOL_FP32 = 1e-4   # Newton-Schulz in fp32 (precision highest) vs float64: measured 8.5e-6
TOL_BF16 = 3e-2   # precision medium (bf16 NS intermediates): measured 8.7e-3

STEPS = 8          # steps per parameter
STREAM_STEPS = 5   # of which on one explicit Step stream; the rest through Client.step()
DAEMON_CHUNK = 4096
MISSING = "missing.weight"

# name, shape, config (engine keys; algo goes in the spec), wire dtype (upload and gradients),
# reply dtype, gradient bytes per Step message (steps 1..STREAM_STEPS), lrs, tolerance
PARAMS = [
    ("layers.0.attn.qkv", (96, 32), dict(algo="muon", lr=0.02, split_rows="32,32,32",
                                         precision="highest"),
     "f32", "f32", 4096, None, TOL_FP32),      # three 32x32 blocks; 3 chunks per push
    ("layers.0.mlp.up", (256, 128), dict(algo="muon", lr=0.02, nesterov=True,
                                         precision="highest"),
     "bf16", "f32", 8192, None, TOL_FP32),     # bf16 on the wire: both sides see bf16(w0),
                                               # bf16(g); 8 chunks per push, 32 per reply
    ("layers.0.norm.bias", (65,), dict(algo="adamw", lr=0.01, weight_decay=0.1),
     "f32", "f32", 100, [0.01 * 0.8 ** i for i in range(STEPS)], TOL_ELEM),  # per-step lr
    ("conv.weight", (8, 4, 3, 3), dict(algo="muon", lr=0.02),
     "f32", "f32", 4096, None, TOL_BF16),      # the 8x36 matrix; Muon's default precision medium
    ("head.weight", (33, 65), dict(algo="scion", lr=0.02, precision="highest"),
     "f16", "bf16", 4096, None, TOL_FP32),     # fp16 gradients, bf16 replies; dropped at the end
]
SIZE = {"f32": 4, "bf16": 2, "f16": 2}


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def ref():
    return h.reference()


def on_wire(x, dtype):
    """The values the daemon sees for float32 data sent as `dtype`, as float64."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "bf16":
        return ref().bf16(x).astype(np.float64)
    if dtype == "f16":
        return ref().round_fp16(x)
    return x.astype(np.float64)


def n_chunks(elements, dtype, chunk_bytes):
    per = max(1, chunk_bytes // SIZE[dtype])
    return -(-elements // per)


def node_env():
    env = dict(os.environ)
    for k in ("NODE_PATH", "NODE_OPTIONS"):
        env.pop(k, None)
    env["ORTHOD_PROTO_DIR"] = PROTO_DIR
    return env


def run_node(node_dir, script, args, timeout):
    p = subprocess.run(["node", os.path.join(node_dir, script)] + list(args), cwd=node_dir,
                       env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, text=True)
    return p.returncode, p.stdout, p.stderr


# ---------------------------------------------------------------------------------------------
# npm ci into the build tree


def read_bytes(path):
    """The file's contents, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def install(build_dir):
    """`npm ci` in <build-dir>/node-client unless an install of the same lockfile is there;
    copies the client's .js files next to it. Returns (directory, what was done)."""
    node_dir = os.path.join(os.path.abspath(build_dir), "node-client")
    os.makedirs(node_dir, exist_ok=True)
    node_version = subprocess.run(["node", "--version"], stdout=subprocess.PIPE, text=True,
                                  check=True).stdout.strip()
    digest = hashlib.sha256(node_version.encode())
    for f in NPM_FILES:
        data = read_bytes(os.path.join(NODE_SRC, f))
        digest.update(data)
        dst = os.path.join(node_dir, f)
        if read_bytes(dst) != data:
            with open(dst, "wb") as out:
                out.write(data)
    stamp = os.path.join(node_dir, "node_modules", STAMP)
    want = (digest.hexdigest() + "\n").encode()
    if read_bytes(stamp) == want:
        done = "reused the install in %s (node %s)" % (node_dir, node_version)
    else:
        env = dict(os.environ, npm_config_update_notifier="false")
        cmd = ["npm", "ci", "--no-audit", "--no-fund"]
        try:
            p = subprocess.run(cmd, cwd=node_dir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=300)
            rc, out = p.returncode, p.stdout
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            rc, out = "no result within 300 s", out or ""
        if rc != 0:
            raise Failure(
                "`%s` in %s failed (%s). The Node client's dependencies (@grpc/grpc-js, "
                "@grpc/proto-loader, pinned by client/node/package-lock.json) come from the npm "
                "registry (the lockfile's URLs are on https://registry.npmjs.org): check that it "
                "is reachable (and npm's proxy/registry settings) and that the lockfile matches "
                "package.json.\n"
                "npm output (last 40 lines):\n%s"
                % (" ".join(cmd), node_dir, "exit %s" % rc if isinstance(rc, int) else rc,
                   "\n".join(out.splitlines()[-40:])))
        with open(stamp, "wb") as f:
            f.write(want)
        done = "npm ci in %s (node %s)" % (node_dir, node_version)
    for f in NODE_FILES:
        shutil.copyfile(os.path.join(NODE_SRC, f), os.path.join(node_dir, f))
    # the dependencies must resolve from the build tree, not from the source tree
    p = subprocess.run(["node", "-e", "console.log(require.resolve('@grpc/grpc-js'))"],
                       cwd=node_dir, env=node_env(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30)
    where = p.stdout.strip()
    check(p.returncode == 0 and where.startswith(os.path.join(node_dir, "node_modules") + os.sep),
          "@grpc/grpc-js resolves to %r from %s, not its node_modules (%s)"
          % (where, node_dir, p.stderr.strip()))
    return node_dir, done


# ---------------------------------------------------------------------------------------------
# the client run


def write_plan(work):
    plan = {"steps": STEPS, "stream_steps": STREAM_STEPS, "missing": MISSING,
            "upload_chunk_bytes": 4096, "step_chunk_bytes": 4096, "params": []}
    data = {}
    for i, (name, shape, cfg, wire, reply, chunk_bytes, lrs, tol) in enumerate(PARAMS):
        rng = np.random.default_rng([20261125, i])
        n = int(np.prod(shape))
        w0 = (rng.standard_normal(n) * 0.05).astype(np.float32)
        grads = rng.standard_normal((STEPS, n)).astype(np.float32)
        w0.astype("<f4").tofile(os.path.join(work, "%d.w0.f32" % i))
        for k in range(STEPS):
            grads[k].astype("<f4").tofile(os.path.join(work, "%d.g%d.f32" % (i, k)))
        plan["params"].append({
            "name": name, "shape": list(shape), "algorithm": cfg["algo"],
            "options": {k: ref().config_value_text(v) for k, v in cfg.items() if k != "algo"},
            "wire": wire, "reply": reply, "chunk_bytes": chunk_bytes, "lrs": lrs,
            "init": "%d.w0.f32" % i, "grads": ["%d.g%d.f32" % (i, k) for k in range(STEPS)]})
        data[name] = (w0, grads)
    with open(os.path.join(work, "plan.json"), "w") as f:
        json.dump(plan, f, indent=1)
    return data


def load(work, name):
    return np.fromfile(os.path.join(work, name), dtype="<f4")


def expect_error(result, key, code_name, pattern):
    e = result.get(key)
    check(isinstance(e, dict), "%s: no error recorded" % key)
    code = getattr(h.grpc.StatusCode, code_name).value[0]
    check(e["code"] == code and e["codeName"] == code_name,
          "%s: code %s (%s), expected %s (%d)" % (key, e["code"], e["codeName"], code_name, code))
    check(re.search(pattern, e["details"]), "%s: daemon message %r does not match /%s/"
          % (key, e["details"], pattern))
    check(e["message"] == "%s: %s" % (code_name, e["details"]), "%s: message %r"
          % (key, e["message"]))


def check_numbers(work, data, result):
    lines = []
    names = [p[0] for p in PARAMS]
    for name, shape, cfg, wire, reply, chunk_bytes, lrs, tol in PARAMS:
        w0, grads = data[name]
        n = w0.size
        check(result["steps"].get(name) == list(range(1, STEPS + 1)),
              "%s: step counters %r" % (name, result["steps"].get(name)))
        check(result["sent_chunks"][name] == n_chunks(n, wire, chunk_bytes),
              "%s: %s gradient chunks per push, expected %d" % (
                  name, result["sent_chunks"][name], n_chunks(n, wire, chunk_bytes)))
        want_reply = n_chunks(n, reply, DAEMON_CHUNK)
        check(result["reply_chunks"][name] == [want_reply] * STEPS,
              "%s: reply chunks %r, expected %d each" % (name, result["reply_chunks"][name],
                                                         want_reply))
        info = result["registered"][name]
        check(info["shape"] == list(shape) and info["algorithm"] == cfg["algo"]
              and info["step"] == 0 and info["elements"] == n and info["deviceBytes"] > 0,
              "%s: Register info %r" % (name, info))
        check(float(info["options"]["lr"]) == cfg["lr"], "%s: lr option %r" % (name, info))
        check(result["uploaded"][name]["step"] == 0, "%s: Upload info" % name)

        # the reference trajectory on the values the daemon saw
        opt = ref().Optimizer(cfg, shape)
        w0w = on_wire(w0, wire).reshape(shape)
        w = w0w
        worst = 0.0
        for k in range(STEPS):
            w = opt.step(w, on_wire(grads[k], wire).reshape(shape), None if lrs is None else lrs[k])
            got = load(work, "%s.step%d.f32" % (name, k + 1)).astype(np.float64)
            check(got.size == n, "%s step %d: %d weights, expected %d" % (name, k + 1, got.size, n))
            if reply == "f32":
                rel = h.rel_error(got, w, w0w)
                check(rel <= tol, "%s step %d: rel %.3e > tol %.0e" % (name, k + 1, rel, tol))
            else:
                # a bf16 reply is the fp32 weights rounded to 8 significant bits: within 2^-8 of
                # them (relative), which are within tol of the reference
                change = np.max(np.abs(w.reshape(-1) - w0w.reshape(-1)))
                err = np.abs(got - w.reshape(-1))
                bound = 2.0 ** -8 * np.abs(w.reshape(-1)) + tol * change
                check(np.all(err <= bound), "%s step %d: bf16 reply off the reference by %.3e "
                      "(bound %.3e)" % (name, k + 1, np.max(err), np.max(bound)))
                rel = float(np.max(err / np.maximum(bound, 1e-30)))
            worst = max(worst, rel)
        # Pull: fp32 is the final weights, bf16/fp16 their exact roundings
        pf32 = load(work, "%s.pull.f32.f32" % name)
        pbf16 = load(work, "%s.pull.bf16.f32" % name)
        pf16 = load(work, "%s.pull.f16.f32" % name)
        check(all(result["pull"][name][d] == STEPS for d in ("f32", "bf16", "f16")),
              "%s: Pull steps %r" % (name, result["pull"][name]))
        rel = h.rel_error(pf32, w, w0w)
        check(rel <= tol, "%s: Pull f32 rel %.3e > tol %.0e" % (name, rel, tol))
        last = load(work, "%s.step%d.f32" % (name, STEPS))
        if reply == "f32":
            check(np.array_equal(pf32, last), "%s: Pull f32 differs from the last reply" % name)
        else:
            check(np.array_equal(ref().bf16(pf32).astype(np.float32), last),
                  "%s: the last bf16 reply is not bf16(Pull f32)" % name)
        check(np.array_equal(ref().bf16(pf32).astype(np.float32), pbf16),
              "%s: Pull bf16 is not bf16(Pull f32)" % name)
        check(np.array_equal(pf32.astype(np.float16).astype(np.float32), pf16),
              "%s: Pull f16 is not f16(Pull f32)" % name)
        # the comparison can fail: one step fewer is far outside the tolerance
        short = ref().trajectory(cfg, shape, w0w, [on_wire(g, wire).reshape(shape)
                                                   for g in grads[:-1]],
                                 lrs=None if lrs is None else lrs[:-1])
        miss = h.rel_error(pf32, short, w0w)
        check(miss > tol, "%s: the check cannot tell %d steps from %d (rel %.3e)"
              % (name, STEPS - 1, STEPS, miss))
        lines.append("  %-20s %-10s %-4s->%-4s rel %.2e (tol %.0e; %d steps %.1e)"
                     % (name, "x".join(map(str, shape)), wire, reply, worst if reply == "f32"
                        else rel, tol, STEPS - 1, miss))

    # the other calls
    for name, shape, cfg, *_ in PARAMS:
        d = result["describe"][name]
        check(d["step"] == STEPS and d["shape"] == list(shape) and d["algorithm"] == cfg["algo"],
              "Describe of %s: %r" % (name, d))
    listed = [i["name"] for i in result["list"]["params"]]
    check(listed == sorted(names, key=lambda s: s.encode()), "List names %r" % listed)
    check(result["list"]["deviceBytesUsed"] >= sum(i["deviceBytes"]
                                                    for i in result["list"]["params"]) > 0,
          "List device bytes %r" % result["list"]["deviceBytesUsed"])
    check(result["list_prefix"] == [names[0]], "List with a prefix: %r" % result["list_prefix"])
    check(result["pull_all_names"] == listed, "Pull of everything: %r" % result["pull_all_names"])
    check(float(result["set_config"]["options"]["lr"]) == 0.005, "SetConfig result %r"
          % result["set_config"])
    check(result["drop_step"] == STEPS, "Drop returned step %r" % result["drop_step"])
    check(result["list_after_drop"] == [x for x in listed if x != PARAMS[-1][0]],
          "List after Drop %r" % result["list_after_drop"])

    # errors: the gRPC code and the daemon's message reach the caller unchanged
    q = re.escape
    expect_error(result, "health_unknown", "NOT_FOUND", r"^unknown service 'no\.such\.service'$")
    expect_error(result, "register_conflict", "ALREADY_EXISTS",
                 r"^parameter '%s' exists with a different spec: shape " % q(names[0]))
    expect_error(result, "register_invalid", "INVALID_ARGUMENT",
                 r"^parameter 'bad\.shape': shape \[4, ?0\]: dimension 1 is 0")
    not_registered = r"^parameter '%s' is not registered$" % q(MISSING)
    expect_error(result, "step_not_found", "NOT_FOUND", not_registered)
    expect_error(result, "pull_not_found", "NOT_FOUND", not_registered)
    expect_error(result, "describe_not_found", "NOT_FOUND", not_registered)
    expect_error(result, "stale", "FAILED_PRECONDITION",
                 r"^push for step 0 of '%s' rejected: current step is %d\b" % (q(names[0]), STEPS))
    expect_error(result, "set_config_layout", "INVALID_ARGUMENT",
                 r"^parameter '%s': option algo defines the optimizer state layout"
                 % q(names[0]))
    expect_error(result, "drop_again", "NOT_FOUND",
                 r"^parameter '%s' is not registered$" % q(PARAMS[-1][0]))
    return lines


def check_conversions(work):
    """orthod.js's encoders against NumPy: bf16 by the reference's RNE bit rule, fp16 by
    numpy's float32 -> float16 cast (both round to nearest even); bit for bit, NaN as any NaN."""
    x = load(work, "conv.in.f32")
    nan = np.isnan(x)
    check(nan.sum() == 2, "conversion inputs: %d NaNs" % nan.sum())
    bf = np.fromfile(os.path.join(work, "conv.bf16.u16"), dtype="<u2")
    want_bf = (ref().bf16(x).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    check(bf.size == x.size, "bf16: %d values for %d" % (bf.size, x.size))
    bad = np.flatnonzero((bf != want_bf) & ~nan)
    check(bad.size == 0, "bf16 encoder differs at %d values, e.g. %r -> 0x%04x, expected 0x%04x"
          % (bad.size, x[bad[0]] if bad.size else 0, bf[bad[0]] if bad.size else 0,
             want_bf[bad[0]] if bad.size else 0))
    check(np.all((bf[nan] & 0x7F80) == 0x7F80) and np.all(bf[nan] & 0x007F),
          "bf16 of NaN is not a NaN: %r" % bf[nan])
    f16 = np.fromfile(os.path.join(work, "conv.f16.u16"), dtype="<u2")
    with np.errstate(over="ignore"):  # values beyond fp16's range go to inf on purpose
        want_f16 = x.astype("<f2").view("<u2")
        want_back = x.astype(np.float16).astype(np.float32)
    bad = np.flatnonzero((f16 != want_f16) & ~nan)
    check(bad.size == 0, "f16 encoder differs at %d values, e.g. %r -> 0x%04x, expected 0x%04x"
          % (bad.size, x[bad[0]] if bad.size else 0, f16[bad[0]] if bad.size else 0,
             want_f16[bad[0]] if bad.size else 0))
    check(np.all((f16[nan] & 0x7C00) == 0x7C00) and np.all(f16[nan] & 0x03FF),
          "f16 of NaN is not a NaN: %r" % f16[nan])
    back = load(work, "conv.f16back.f32")
    check(np.array_equal(back[~nan], want_back[~nan]) and np.all(np.isnan(back[nan])),
          "f16 decoder differs from numpy")
    return "%d values, bf16 and fp16 bit-exact" % x.size


# ---------------------------------------------------------------------------------------------
# cases


def case_client(args, node_dir):
    work = tempfile.mkdtemp(prefix="orthod-node-")
    ok = False
    try:
        data = write_plan(work)
        with h.Daemon(args.orthod, flags=["--backend", "cpu", "--threads", "1", "--chunk-bytes",
                                          str(DAEMON_CHUNK)], keep=args.keep) as d:
            rc, out, err = run_node(node_dir, "test.js", ["--address", d.address, "--work", work],
                                    timeout=120)
            print("  " + out.strip().replace("\n", "\n  "))
            check(rc == 0, "test.js exit %d\nstdout:\n%s\nstderr:\n%s" % (rc, out, err))
        with open(os.path.join(work, "result.json")) as f:
            result = json.load(f)
        lines = check_numbers(work, data, result)
        print("\n".join(lines))
        conv = check_conversions(work)
        ok = True
        return "steps %.1f s, all calls %.1f s; conversions: %s" % (
            result["timings"]["steps_ms"] / 1e3, result["timings"]["total_ms"] / 1e3, conv)
    finally:
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("  (test.js files kept in %s)" % work)


def case_example(args, node_dir):
    with h.Daemon(args.orthod, flags=["--backend", "cpu", "--threads", "1"],
                  keep=args.keep) as d:
        rc, out, err = run_node(node_dir, "example.js", [d.address], timeout=60)
        print("  " + out.strip().replace("\n", "\n  "))
        check(rc == 0, "example.js exit %d\nstdout:\n%s\nstderr:\n%s" % (rc, out, err))
    losses = [float(m) for m in re.findall(r"^step \d+: loss ([\d.]+)", out, re.M)]
    check(len(losses) == 6, "example.js printed %d loss lines" % len(losses))
    check(all(b < a for a, b in zip(losses, losses[1:])), "the loss does not decrease: %r" % losses)
    check(re.search(r"^pulled at step 5 in bf16", out, re.M), "no Pull line")
    return "loss %.3f -> %.3f" % (losses[0], losses[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orthod", required=True, help="path of the orthod executable")
    ap.add_argument("--pythonpath", required=True, help="unused (shared command line)")
    ap.add_argument("--build-dir", required=True, help="the build tree (npm installs under it)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = ap.parse_args()
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        print("%s not on PATH: skipping the Node.js client test" % " and ".join(missing))
        return h.SKIP
    h.require(args.orthod)
    runner = h.Runner("Node.js client")
    got = runner.case("npm", install, args.build_dir)
    if got is None:
        runner.fail("client", "not run: the dependencies are not installed")
        runner.fail("example", "not run: the dependencies are not installed")
        return runner.finish()
    node_dir, done = got
    print("  " + done)
    runner.case("client", case_client, args, node_dir)
    runner.case("example", case_example, args, node_dir)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
