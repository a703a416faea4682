"""test_deploy.py — the files in deploy/ agree with the daemon this tree builds.

No image is built here (a test machine has no container runtime or registry); what can drift is
checked instead:

1. deploy/orthod.service: `systemd-analyze verify` accepts it (when systemd-analyze exists); its
   ExecStart arguments, with the shipped deploy/orthod.conf, start the daemon, which then stops on
   the unit's KillSignal with exit 0 well within TimeoutStopSec; exit 2 is the one status it does
   not restart on, and it is the daemon's configuration-error status.
2. deploy/Dockerfile: the build stage installs with `install-deps.sh --build`; the runtime stage
   installs a Debian package for every shared library that orthod and orthoctl link directly
   (CUDA and the base image's C/C++ runtime aside); its command starts the daemon, and its
   EXPOSE lines are the gRPC and metrics ports of that command.
3. deploy/kubernetes/orthod.yaml: the container's args start the daemon; the named ports are the
   ports of --listen and --metrics-listen; readiness is the gRPC health service on the gRPC port
   and liveness /healthz on the metrics port, and both answer on the running daemon; the volume
   is mounted at --state-dir; the grace period exceeds the drain timeout; the pod's user is the
   image's; the Service targets the container's port names.

The daemon runs with each file's own arguments, with --listen, --metrics-listen and --state-dir
overridden last (local ports and a temporary directory; later flags win).

Usage: /usr/bin/python3 test_deploy.py --orthod PATH --orthoctl PATH --gen DIR
"""

import http.client
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orthod_harness as h  # noqa: E402
from orthod_harness import grpc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
PORT_RE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
# In debian:12-slim already (the C and C++ runtimes).
BASE_IMAGE = {"libc6", "libgcc-s1", "libstdc++6"}


def read(name):
    with open(os.path.join(DEPLOY, name)) as f:
        return f.read()


def run_daemon(args, argv, check=None):
    """Start the daemon with argv (the deploy file's own arguments) plus local overrides; run
    check(dm) while it serves; stop it with SIGTERM and expect exit 0."""
    metrics = any(a.startswith("--metrics-listen") for a in argv)
    extra = ["--listen", "127.0.0.1:0", "--backend", "cpu"]
    if metrics:
        extra += ["--metrics-listen", "127.0.0.1:0"]
    dm = h.Daemon(args.orthod, flags=list(argv) + extra)
    # Daemon puts --state-dir before the flags; the file's own --state-dir must lose to ours
    dm.flags += ["--state-dir", dm.state_dir]
    try:
        dm.start()
        if check is not None:
            m = PORT_RE.search(dm.stderr_text())
            dm.metrics_port = int(m.group(1)) if m else None
            check(dm)
        took = dm.stop()
        return took
    finally:
        dm.kill()
        dm.cleanup()


def flag_value(argv, key):
    """The value of --key in argv (--key=V or --key V); the last one wins, as in the daemon."""
    value = None
    for i, a in enumerate(argv):
        if a == "--" + key and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith("--" + key + "="):
            value = a.split("=", 1)[1]
    return value


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------------------


def systemd_unit(args):
    text = read("orthod.service")
    unit = {}
    for ln in text.splitlines():
        if "=" in ln and not ln.startswith("#"):
            k, v = ln.split("=", 1)
            unit[k.strip()] = v.strip()
    argv = shlex.split(unit["ExecStart"])
    assert argv[0] == "/usr/local/bin/orthod", argv
    assert unit["KillSignal"] == "SIGTERM" and unit["RestartPreventExitStatus"] == "2", unit
    # exit 2 is the configuration error the unit must not restart on
    p = subprocess.run([args.orthod, "--no-such-option"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 2, p.returncode
    # the arguments, with the shipped config file in place of /etc/orthod/orthod.conf
    conf = os.path.join(DEPLOY, "orthod.conf")
    argv = [conf if a == "/etc/orthod/orthod.conf" else a for a in argv[1:]]
    assert conf in argv, "ExecStart does not read /etc/orthod/orthod.conf: %s" % argv
    assert flag_value(argv, "state-dir") == "/var/lib/orthod" and \
        unit["StateDirectory"] == "orthod", "state-dir vs StateDirectory"
    took = run_daemon(args, argv)
    assert took < int(unit["TimeoutStopSec"]) / 4, "stop took %.1f s" % took
    verifier = shutil.which("systemd-analyze")
    if verifier is None:
        return "systemd-analyze not found: unit syntax not verified"
    with tempfile.TemporaryDirectory() as d:
        # verify wants ExecStart to exist: point it at this build
        path = os.path.join(d, "orthod.service")
        with open(path, "w") as f:
            f.write(text.replace("/usr/local/bin/orthod", os.path.abspath(args.orthod)))
        p = subprocess.run([verifier, "verify", path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        # the orthod user does not exist on a test machine; anything else is a finding
        problems = [ln for ln in p.stderr.decode().splitlines()
                    if ln.strip() and "orthod" in ln and "user" not in ln.lower()]
        assert not problems, "\n".join(problems)
    return "verified by %s" % verifier


def shared_libraries(binary):
    """{soname: package} for the libraries the binary links directly (NEEDED), packages found
    with dpkg; a library no package owns maps to None."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run(["readelf", "-d", binary], stdout=subprocess.PIPE,
                                       timeout=30).stdout.decode())
    where = {}
    for ln in subprocess.run(["ldd", binary], stdout=subprocess.PIPE,
                             timeout=30).stdout.decode().splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", ln)
        if m:
            where[m.group(1)] = m.group(2)
    out = {}
    for so in needed:
        path = where.get(so)
        pkg = None
        for candidate in filter(None, [path, path and "/usr" + path,
                                       path and os.path.realpath(path)]):
            p = subprocess.run(["dpkg", "-S", candidate], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, timeout=30)
            if p.returncode == 0:
                pkg = p.stdout.decode().split(":", 1)[0]
                break
        out[so] = pkg
    return out


def with_dependencies(packages):
    """The packages and everything they depend on (as installed here, so as apt would pull
    them in on Debian 12): a library that libgrpc29 brings along need not be named."""
    if shutil.which("dpkg-query") is None:
        return set(packages)
    seen, todo = set(), list(packages)
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        p = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", pkg], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=30)
        for alt in p.stdout.decode().split(","):
            for dep in alt.split("|"):
                name = dep.strip().split(" ")[0].split(":")[0]
                if name:
                    todo.append(name)
    return seen


def dockerfile(args):
    text = read("Dockerfile")
    joined = re.sub(r"\\\n", " ", text)
    assert re.search(r"^RUN deploy/install-deps\.sh --build\b", joined, re.M), \
        "the build stage does not use install-deps.sh --build"
    stages = re.split(r"^FROM ", joined, flags=re.M)
    runtime = stages[-1]
    m = re.search(r"apt-get install -y --no-install-recommends ([^&]+)&&", runtime)
    assert m, "no apt-get install in the runtime stage"
    installed = with_dependencies(set(m.group(1).split()))
    note = "runtime packages checked"
    if shutil.which("dpkg") and shutil.which("readelf") and shutil.which("ldd"):
        for binary in (args.orthod, args.orthoctl):
            libs = shared_libraries(binary)
            if any(re.match(r"^lib(a|ub|l|t)san\.so", so) for so in libs):
                # an ORTHOD_SANITIZE build links more than the image's plain build would
                note = "sanitizer build: runtime packages not checked"
                break
            for so, pkg in libs.items():
                if pkg is None or pkg in BASE_IMAGE:
                    continue  # CUDA (not in the CPU image) or the base image's runtime
                assert pkg in installed, "%s links %s (package %s), which the runtime stage " \
                    "does not install" % (os.path.basename(binary), so, pkg)
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert entry == ["/usr/local/bin/orthod"], entry
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    want = {port_of(flag_value(cmd, "listen")), port_of(flag_value(cmd, "metrics-listen"))}
    assert exposed == want, "EXPOSE %s, the command serves %s" % (exposed, want)
    uid = int(re.search(r"^USER (\d+)$", text, re.M).group(1))
    run_daemon(args, cmd)
    return uid, note


def kubernetes(args, image_uid):
    import yaml
    docs = list(yaml.safe_load_all(read(os.path.join("kubernetes", "orthod.yaml"))))
    kinds = {d["kind"]: d for d in docs}
    sts, svc = kinds["StatefulSet"], kinds["Service"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    argv = c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["grpc"] == port_of(flag_value(argv, "listen")), (ports, argv)
    assert ports["metrics"] == port_of(flag_value(argv, "metrics-listen")), (ports, argv)
    assert c["readinessProbe"]["grpc"]["port"] == ports["grpc"], c["readinessProbe"]
    live = c["livenessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and live["port"] in ("metrics", ports["metrics"]), live
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == flag_value(argv, "state-dir"), (mount, argv)
    assert mount["name"] in [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    drain_ms = int(flag_value(argv, "drain-timeout-ms") or 3000)
    assert pod["terminationGracePeriodSeconds"] * 1000 > 2 * drain_ms, pod
    assert pod["securityContext"]["runAsUser"] == image_uid, (pod["securityContext"], image_uid)
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports, p
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]

    def probes(dm):
        # what the kubelet does: grpc.health.v1 Check with service "" and GET /healthz
        st = h.health_check(dm).status
        assert st == h.health_pb.HealthCheckResponse.SERVING, st
        conn = http.client.HTTPConnection("127.0.0.1", dm.metrics_port, timeout=10)
        conn.request("GET", live["path"])
        assert conn.getresponse().status == 200
        conn.close()
    run_daemon(args, argv, probes)


def install_deps(args):
    script = os.path.join(DEPLOY, "install-deps.sh")
    p = subprocess.run(["bash", script, "--bogus"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert p.returncode == 2 and b"usage" in p.stderr, (p.returncode, p.stderr)


def main():
    def extra(ap):
        ap.add_argument("--orthoctl", required=True)
    args = h.parse_args(__doc__, extra)
    h.require(args.orthod)
    runner = h.Runner("deploy", args.only)
    runner.case("systemd unit: verify, its ExecStart with the sample config", systemd_unit, args)
    state = {}

    def docker():
        state["uid"], note = dockerfile(args)
        return note
    runner.case("Dockerfile: runtime packages, command, ports", docker)
    runner.case("Kubernetes: args, ports, probes, volume, user", lambda: kubernetes(
        args, state.get("uid", 10001)))
    runner.case("install-deps.sh: unknown option is a usage error", install_deps, args)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
