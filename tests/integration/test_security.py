"""test_security.py — TLS, mutual TLS and bearer tokens.

Certificates are made for the run with openssl (a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and a second CA with its own client certificate that the daemon
must not trust).

1. TLS (--tls-cert/--tls-key): a client that trusts the CA registers, steps, pulls; a plaintext
   client and a client that trusts another CA cannot connect (UNAVAILABLE).
2. Mutual TLS (--tls-client-ca): no client certificate, or one from the other CA, cannot connect;
   the right one can.
3. Tokens (--auth-tokens): no token, another scheme, an unknown token are UNAUTHENTICATED; health
   needs none; a write token works inside its prefixes and gets PERMISSION_DENIED outside them (also
   for names that do not exist, so existence does not leak); a read token reads everything and
   writes nothing; List and Pull of everything show only what a token may read; Checkpoint needs
   an admin token; no token appears in the daemon's log.
4. With TLS the daemon may listen beyond loopback; without it, not. Unreadable certificate and bad
   token files stop the start with the reason.
5. The clients: orthod.Client (Python) and orthoctl (C) over mutual TLS with a token.

Usage: /usr/bin/python3 test_security.py --orthod PATH --gen DIR [--orthoctl PATH --pythonpath DIR]
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import grpc, np  # noqa: E402

SC = grpc.StatusCode
TOKENS = {
    "trainer": "trainer-0123456789abcdef",
    "viewer": "viewer-0123456789abcdef",
    "ops": "ops-0123456789abcdef-xyz",
}
TOKEN_FILE = """# test tokens
trainer  %(trainer)s  write  gpt.,bert.
viewer   %(viewer)s   read
ops      %(ops)s      admin
""" % TOKENS


# ---------------------------------------------------------------------------------------------
# certificates


def openssl(*argv, cwd):
    p = subprocess.run(["openssl"] + list(argv), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    if p.returncode != 0:
        raise AssertionError("openssl %s: %s" % (" ".join(argv), p.stderr.decode()[-500:]))


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=%s" % name, "-keyout", name + ".key",
            "-out", name + ".pem", cwd=d)


def make_cert(d, ca, name, san=None):
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n")
        if san:
            f.write("subjectAltName=%s\n" % san)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=%s" % name, "-keyout", name + ".key", "-out", name + ".csr", cwd=d)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", name + ".pem", cwd=d)


class Certs:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="orthod-certs-")
        make_ca(self.dir, "ca")
        make_ca(self.dir, "otherca")
        make_cert(self.dir, "ca", "server", "IP:127.0.0.1,DNS:localhost")
        make_cert(self.dir, "ca", "client")
        make_cert(self.dir, "otherca", "stranger")
        self.tokens = self.path("tokens.txt")
        with open(self.tokens, "w") as f:
            f.write(TOKEN_FILE)
        os.chmod(self.tokens, 0o600)

    def path(self, name):
        return os.path.join(self.dir, name)

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()

    def server_flags(self, mutual=False):
        flags = ["--tls-cert", self.path("server.pem"), "--tls-key", self.path("server.key")]
        if mutual:
            flags += ["--tls-client-ca", self.path("ca.pem")]
        return flags

    def channel(self, dm, ca="ca", client=None):
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.read(ca + ".pem"),
            private_key=self.read(client + ".key") if client else None,
            certificate_chain=self.read(client + ".pem") if client else None)
        ch = grpc.secure_channel(dm.address, creds)
        dm._channels.append(ch)
        return ch


def stub_of(ch):
    return h.pb_grpc.OptimizerStub(ch)


def md(token=None, raw=None):
    m = list(h.md())
    if token is not None:
        m.append(("authorization", "Bearer " + token))
    if raw is not None:
        m.append(("authorization", raw))
    return m


def cannot_connect(ch):
    h.expect_rpc_error(lambda: stub_of(ch).List(h.pb.ListRequest(), timeout=5, metadata=md()),
                       SC.UNAVAILABLE)


def round_trip(stub, name, metadata=None):
    """Register, upload, one step, pull; returns the pulled step."""
    metadata = metadata or md()
    stub.Register(h.pb.RegisterRequest(spec=h.spec(name, (8, 4), "muon")), timeout=10,
                  metadata=metadata)
    stub.Upload(iter([h.pb.UploadRequest(name=name, chunk=h.chunk(h.seeded((32,), 1)))]),
                timeout=10, metadata=metadata)
    resp = list(stub.Step(iter([h.pb.StepRequest(name=name, step=0, chunk=h.chunk(
        h.seeded((32,), 2)))]), timeout=30, metadata=metadata))
    assert resp and resp[-1].last and resp[-1].step == 1, resp
    got = list(stub.Pull(h.pb.PullRequest(names=[name]), timeout=10, metadata=metadata))
    return got[0].step


# ---------------------------------------------------------------------------------------------


def tls(args, certs):
    dm = h.Daemon(args.orthod, flags=certs.server_flags()).start()
    try:
        assert round_trip(stub_of(certs.channel(dm)), "w") == 1
        ok = h.health_pb.HealthCheckResponse.SERVING
        hs = h.health_grpc.HealthStub(certs.channel(dm))
        assert hs.Check(h.health_pb.HealthCheckRequest(), timeout=5).status == ok
        cannot_connect(dm.channel())  # plaintext to a TLS port
        cannot_connect(certs.channel(dm, ca="otherca"))  # a CA that did not sign the server
        dm.stop()
    finally:
        dm.kill()
        dm.cleanup()


def mutual_tls(args, certs):
    dm = h.Daemon(args.orthod, flags=certs.server_flags(mutual=True)).start()
    try:
        cannot_connect(certs.channel(dm))  # no client certificate
        cannot_connect(certs.channel(dm, client="stranger"))  # signed by the other CA
        assert round_trip(stub_of(certs.channel(dm, client="client")), "w") == 1
        dm.stop()
    finally:
        dm.kill()
        dm.cleanup()


def tokens(args, certs):
    dm = h.Daemon(args.orthod, flags=["--auth-tokens", certs.tokens]).start()
    try:
        assert re.search(r"auth-tokens .*: 3 tokens", dm.stderr_text()), dm.stderr_tail()
        stub = dm.stub()
        ls = lambda m: stub.List(h.pb.ListRequest(), timeout=10, metadata=m)  # noqa: E731
        h.expect_rpc_error(lambda: ls(md()), SC.UNAUTHENTICATED, r"needs a bearer token")
        h.expect_rpc_error(lambda: ls(md(raw="Basic dXNlcjpwdw==")), SC.UNAUTHENTICATED,
                           r"not a bearer token")
        h.expect_rpc_error(lambda: ls(md("not-a-known-token-1234")), SC.UNAUTHENTICATED,
                           r"^unknown bearer token$")
        assert h.health_check(dm).status == h.health_pb.HealthCheckResponse.SERVING
        tr, vw, ops = (md(TOKENS[k]) for k in ("trainer", "viewer", "ops"))
        # the trainer inside its prefixes
        assert round_trip(stub, "gpt.w", tr) == 1
        assert round_trip(stub, "bert.w", tr) == 1
        # ... and outside them: refused before the name is looked up
        deny = r"token 'trainer' \(write access to names gpt\.,bert\.\) may not (write|read) 'x\.w'"
        h.expect_rpc_error(lambda: round_trip(stub, "x.w", tr), SC.PERMISSION_DENIED, deny)
        h.expect_rpc_error(lambda: stub.Describe(h.pb.DescribeRequest(name="x.w"), timeout=10,
                                                 metadata=tr), SC.PERMISSION_DENIED, deny)
        assert round_trip(stub, "x.w", ops) == 1  # admin: every name
        h.expect_rpc_error(lambda: stub.Describe(h.pb.DescribeRequest(name="x.w"), timeout=10,
                                                 metadata=tr), SC.PERMISSION_DENIED, deny)
        h.expect_rpc_error(lambda: stub.Drop(h.pb.DropRequest(name="x.w"), timeout=10,
                                             metadata=tr), SC.PERMISSION_DENIED, deny)
        h.expect_rpc_error(lambda: list(stub.Pull(h.pb.PullRequest(names=["gpt.w", "x.w"]),
                                                  timeout=10, metadata=tr)),
                           SC.PERMISSION_DENIED, deny)
        h.expect_rpc_error(lambda: stub.SetConfig(h.pb.SetConfigRequest(
            name="x.w", options=h.options({"lr": 0.1})), timeout=10, metadata=tr),
            SC.PERMISSION_DENIED, deny)
        # everything, filtered to what may be read
        assert [p.spec.name for p in ls(tr).params] == ["bert.w", "gpt.w"]
        assert [p.spec.name for p in ls(vw).params] == ["bert.w", "gpt.w", "x.w"]
        pulled = {r.name for r in stub.Pull(h.pb.PullRequest(), timeout=10, metadata=tr)}
        assert pulled == {"bert.w", "gpt.w"}, pulled
        # the viewer reads and never writes
        assert stub.Describe(h.pb.DescribeRequest(name="gpt.w"), timeout=10,
                             metadata=vw).step == 1
        h.expect_rpc_error(lambda: round_trip(stub, "gpt.v", vw), SC.PERMISSION_DENIED,
                           r"token 'viewer' \(read access to names \*\) may not write 'gpt\.v'")
        # Checkpoint is for admins
        ck = lambda m: stub.Checkpoint(h.pb.CheckpointRequest(), timeout=30, metadata=m)  # noqa
        h.expect_rpc_error(lambda: ck(tr), SC.PERMISSION_DENIED,
                           r"token 'trainer' \(write access\) may not write checkpoints")
        assert ck(ops).parameters == 3
        dm.stop()
        log = dm.stderr_text()
        for t in TOKENS.values():
            assert t not in log, "a token is in the daemon's log"
        assert "PERMISSION_DENIED" in log and "UNAUTHENTICATED" in log
    finally:
        dm.kill()
        dm.cleanup()


def start(args, flags, state_dir):
    """Run the daemon until it prints its listen line or exits; returns (rc or None, stdout
    line, stderr); a daemon that started is stopped with SIGTERM."""
    p = subprocess.Popen([args.orthod, "--state-dir", state_dir] + flags,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stdout.readline().decode()
    if line:
        p.terminate()
    out, err = p.communicate(timeout=30)
    return (None if line else p.returncode), line, err.decode()


def start_rules(args, certs):
    state = os.path.join(certs.dir, "state")
    rc, line, err = start(args, ["--listen", "0.0.0.0:0"] + certs.server_flags(), state)
    assert rc is None and re.match(r"^orthod: listening on 0\.0\.0\.0:\d+ ", line), (rc, err[-300:])
    rc, line, err = start(args, ["--listen", "0.0.0.0:0"], state)
    assert rc == 2 and "needs --allow-insecure-remote" in err, (rc, err[-300:])
    rc, _, err = start(args, ["--listen", "127.0.0.1:0", "--tls-cert", certs.path("nope.pem"),
                              "--tls-key", certs.path("server.key")], state)
    assert rc == 1 and re.search(r"tls-cert .*nope\.pem: No such file", err), (rc, err[-300:])
    rc, _, err = start(args, ["--listen", "127.0.0.1:0", "--tls-cert", certs.path("server.pem")],
                       state)
    assert rc == 2 and "tls-cert and tls-key go together" in err, (rc, err[-300:])
    bad = certs.path("bad-tokens.txt")
    with open(bad, "w") as f:
        f.write("a valid-token-0123456789 write\nb short read\n")
    rc, _, err = start(args, ["--listen", "127.0.0.1:0", "--auth-tokens", bad], state)
    assert rc == 1 and re.search(r"bad-tokens\.txt:2: the token must be 16 to 256 characters",
                                 err), (rc, err[-300:])


def clients(args, certs):
    if not args.orthoctl or not args.pythonpath:
        print("  (no --orthoctl/--pythonpath: client checks skipped)")
        return
    dm = h.Daemon(args.orthod, flags=certs.server_flags(mutual=True) +
                  ["--auth-tokens", certs.tokens]).start()
    try:
        sys.path.insert(0, args.pythonpath)
        # the generated stubs (--gen) made "orthod" a namespace package: drop it for the client
        for k in [k for k in sys.modules if k == "orthod" or k.startswith("orthod.")]:
            del sys.modules[k]
        import orthod
        c = orthod.Client(dm.address, token=TOKENS["trainer"], tls_ca=certs.path("ca.pem"),
                          tls_cert=certs.path("client.pem"), tls_key=certs.path("client.key"))
        c.register("gpt.c", (4, 4), algorithm="muon")
        assert [p["name"] for p in c.list()] == ["gpt.c"]
        try:
            c.register("x.c", (4, 4))
            raise AssertionError("register outside the token's prefixes succeeded")
        except orthod.OrthodError as e:
            assert e.code == "PERMISSION_DENIED" or getattr(e.code, "name", "") == \
                "PERMISSION_DENIED", e
        c.close()
        base = [args.orthoctl, "--addr", dm.address, "--tls-ca", certs.path("ca.pem"),
                "--tls-cert", certs.path("client.pem"), "--tls-key", certs.path("client.key")]
        p = subprocess.run(base + ["--token", TOKENS["viewer"], "list"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        assert p.returncode == 0 and b"gpt.c" in p.stdout, (p.returncode, p.stderr)
        p = subprocess.run(base + ["list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        assert p.returncode == 1 and p.stderr.startswith(b"orthoctl: UNAUTHENTICATED: "), \
            (p.returncode, p.stderr)
        p = subprocess.run(base[:3] + ["--token", TOKENS["viewer"], "list"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert p.returncode == 1 and b"UNAVAILABLE" in p.stderr, (p.returncode, p.stderr)
        dm.stop()
    finally:
        dm.kill()
        dm.cleanup()


def main():
    def extra(ap):
        ap.add_argument("--orthoctl", default=None)
        ap.add_argument("--pythonpath", default=None, help="directory holding the orthod package")
    args = h.parse_args(__doc__, extra)
    h.require(args.orthod)
    if shutil.which("openssl") is None:
        print("openssl not found: skipping")
        return h.SKIP
    certs = Certs()
    runner = h.Runner("security", args.only)
    try:
        runner.case("TLS: the CA's clients connect, plaintext and other CAs do not", tls, args,
                    certs)
        runner.case("mutual TLS: only certificates of the client CA", mutual_tls, args, certs)
        runner.case("tokens: authentication, prefixes, read/write/admin, no leaks", tokens, args,
                    certs)
        runner.case("start rules: TLS beyond loopback, file errors", start_rules, args, certs)
        runner.case("clients: Python and orthoctl over mutual TLS with tokens", clients, args,
                    certs)
    finally:
        shutil.rmtree(certs.dir, ignore_errors=True)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
