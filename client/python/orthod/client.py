"""Client: every orthod.v1 RPC from Python over one gRPC channel to one daemon.

Tensors go out as NumPy arrays (torch tensors are accepted and copied to the CPU) cut into chunks
of ``chunk_bytes`` (docs/PROTOCOL.md, "Tensor chunks") and come back as float32 arrays of the
parameter's shape. Errors raise :class:`orthod.OrthodError` with the daemon's status code and
message. Calls that are safe to repeat (Register, Describe, List, Pull, SetConfig, Checkpoint,
health) are retried with exponential backoff when the daemon is unreachable (``UNAVAILABLE``); the
others (Upload, Step, Drop) never are, since the first attempt may have been applied.
"""

import math
import os
import queue
import threading
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from . import dtypes as _dt
from ._proto import METADATA, PROTOCOL_VERSION, health_modules, pb, pb_grpc
from .errors import OrthodError

__all__ = ["Client", "PROTOCOL_VERSION", "option_text", "to_numpy"]

# A PEM file is a few KiB (a CA bundle some hundred): a larger one is the wrong file.
_PEM_MAX = 16 << 20

SC = grpc.StatusCode
_SYNC_MODES = {"": 0, "unspecified": 0, "sync": 1, "async": 2}
_SYNC_NAMES = {0: "UNSPECIFIED", 1: "SYNC", 2: "ASYNC"}
_END = object()  # end of a Step stream's responses (status OK)
_MAX_BACKOFF = 5.0


def option_text(value) -> str:
    """The text of an engine option value: bools as ``true``/``false``, sequences (``split_rows``)
    comma-separated, floats so that they read back exactly."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(int(v)) for v in value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def to_numpy(x) -> np.ndarray:
    """An array or torch tensor as a NumPy array (tensors detached and copied to the CPU as
    float32; torch is never imported here)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor (bf16 has no NumPy type)
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _flat_f32(x) -> np.ndarray:
    return np.ascontiguousarray(to_numpy(x), dtype=np.float32).reshape(-1)


def _sync_mode_code(mode) -> int:
    if mode is None:
        return 0
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        if int(mode) in _SYNC_NAMES:
            return int(mode)
    elif isinstance(mode, str):
        key = mode.lower()
        if key.startswith("sync_mode_"):
            key = key[len("sync_mode_"):]
        if key in _SYNC_MODES:
            return _SYNC_MODES[key]
    raise ValueError("unknown sync_mode %r: expected None, 'sync' or 'async'" % (mode,))


def _info(pi, created=None) -> dict:
    """A ParameterInfo message as a dict."""
    s = pi.spec
    return {
        "name": s.name,
        "shape": tuple(int(d) for d in s.shape),
        "algorithm": s.algorithm,
        "options": {o.key: o.value for o in s.options},
        "workers": int(s.workers),
        "sync_mode": _SYNC_NAMES.get(s.sync_mode, str(s.sync_mode)),
        "max_staleness": int(s.max_staleness),
        "sync_timeout_ms": int(s.sync_timeout_ms),
        "step": int(pi.step),
        "elements": int(pi.elements),
        "device_bytes": int(pi.device_bytes),
        "created": created,
    }


def _page_size(value, what: str) -> int:
    """A List page size: an int in 0..2**32-1 (the proto's uint32)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            not 0 <= int(value) < 1 << 32:
        raise ValueError("%s must be an integer in 0..2**32-1, got %r" % (what, value))
    return int(value)


def _pem(value, what: str) -> Optional[bytes]:
    """PEM bytes of a tls_* argument: bytes are the PEM itself, a str or PathLike names a file.
    Checked here so that a wrong argument fails at once, not as an opaque handshake error at the
    first call."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        where = "%s (bytes)" % what
    elif isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        try:
            with open(path, "rb") as f:
                data = f.read(_PEM_MAX + 1)
        except OSError as e:
            # OSError(errno, ...) builds the matching subclass (FileNotFoundError, ...)
            raise OSError(e.errno, "cannot read %s: %s" % (what, e.strerror), path) from None
        if len(data) > _PEM_MAX:
            raise ValueError("%s %r is larger than %d MiB: not a PEM file" % (
                what, path, _PEM_MAX >> 20))
        where = "%s %r" % (what, path)
    else:
        raise TypeError("%s must be a file path (str or os.PathLike) or PEM bytes, not %s" % (
            what, type(value).__name__))
    if b"-----BEGIN " not in data:
        raise ValueError("%s holds no PEM block (-----BEGIN ...)" % where)
    return data


def _credentials(tls: bool, tls_ca, tls_cert, tls_key, tls_server_name):
    """grpc.ChannelCredentials for the tls arguments, or None for an insecure channel."""
    if not (tls or tls_ca is not None or tls_cert is not None or tls_key is not None
            or tls_server_name is not None):
        return None
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together (a client certificate and its key)")
    if tls_server_name is not None and (not isinstance(tls_server_name, str)
                                        or not tls_server_name):
        raise ValueError("tls_server_name must be a non-empty str (None: the host of the "
                         "address)")
    return grpc.ssl_channel_credentials(root_certificates=_pem(tls_ca, "tls_ca"),
                                        private_key=_pem(tls_key, "tls_key"),
                                        certificate_chain=_pem(tls_cert, "tls_cert"))


def _auth_metadata(token) -> tuple:
    """The metadata of every orthod.v1.Optimizer call: the protocol version, and the bearer
    token when there is one (None or "": none)."""
    if token is None or token == "":
        return METADATA
    if not isinstance(token, str):
        raise TypeError("token must be a str, not %s" % type(token).__name__)
    # gRPC refuses other characters in a header value only when the call is made, as INTERNAL
    if any(not 0x20 <= ord(ch) <= 0x7e for ch in token):
        raise ValueError("token must be printable ASCII (an HTTP/2 header value)")
    return METADATA + (("authorization", "Bearer " + token),)


class _StepStream:
    """One bidirectional Step call: requests from a queue, responses read by a thread into
    another queue (so that a wait can time out and replies arrive while gradients still go out)."""

    def __init__(self, stub, metadata):
        self._requests = queue.Queue()
        self.responses = queue.Queue()
        self.ended = threading.Event()
        self.final = None  # grpc.RpcError the call ended with (None: OK or still open)
        self.no_reply_pending = False  # a push without reply was sent and not confirmed since
        self.last_step = {}  # (name, rank) -> the last step pushed on this stream
        self.call = stub.Step(self._gen(), metadata=metadata)
        threading.Thread(target=self._read, name="orthod-step-reader", daemon=True).start()

    def _gen(self):
        while True:
            r = self._requests.get()
            if r is None:
                return
            yield r

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(r)
            self.responses.put(_END)
        except grpc.RpcError as e:
            self.final = e
            self.responses.put(e)
        finally:
            self.ended.set()

    def send(self, req):
        self._requests.put(req)

    def half_close(self):
        self._requests.put(None)

    def cancel(self):
        self._requests.put(None)
        self.call.cancel()


class _Closing:
    """``with obj:`` closes obj at the end of the block (Client, ShardedClient and
    RemoteOptimizer: each defines close())."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Client(_Closing):
    """A connection to one orthod daemon.

    ``timeout``: seconds per call, and the longest wait for the weights of a step (a SYNC step
    waits for every worker). ``chunk_bytes``: tensor data per message sent (replies are chunked by
    the daemon's ``--chunk-bytes``). ``retries``/``backoff``: idempotent calls that fail with
    ``UNAVAILABLE`` are tried again up to ``retries`` times, after ``backoff * 2**k`` seconds.
    ``max_message_bytes``: the channel's send and receive limit. ``list_page_size``: parameters
    per List reply while :meth:`list` and :meth:`usage` collect them (0: all in one reply, which
    fails once the list outgrows ``max_message_bytes`` or the daemon's send limit).
    ``channel_options``: more gRPC channel arguments. Use it from one thread at a time (the Step
    stream is shared).

    Security (a daemon started with ``--tls-cert`` / ``--tls-client-ca`` / ``--auth-tokens``):
    ``token``: sent as ``authorization: Bearer <token>`` on every orthod.v1.Optimizer call (not
    on health checks); None or "": none. ``tls=True``: TLS, verifying the daemon against gRPC's
    default roots. ``tls_ca``: the CA that verifies the daemon; ``tls_cert`` and ``tls_key``
    (both or neither): this client's certificate chain and key, for mutual TLS. Each is a file
    path (str or os.PathLike) or the PEM itself as bytes; giving any of them implies TLS.
    ``tls_server_name``: the name to check in the daemon's certificate instead of the host of
    ``address`` (e.g. when connecting by IP). Files are read here: an unreadable one raises
    OSError, a non-PEM one or a certificate without its key ValueError, before any connection.
    TLS failures with the daemon (untrusted certificate, name mismatch, a refused or missing
    client certificate) and a TLS client facing a plaintext daemon show as UNAVAILABLE."""

    def __init__(self, address: str = "127.0.0.1:50051", *, timeout: float = 60.0,
                 chunk_bytes: int = 1 << 20, retries: int = 4, backoff: float = 0.1,
                 max_message_bytes: int = 64 << 20, list_page_size: int = 1000,
                 channel_options: Sequence = (), token: Optional[str] = None, tls: bool = False,
                 tls_ca=None, tls_cert=None, tls_key=None, tls_server_name: Optional[str] = None):
        if chunk_bytes < 4:
            raise ValueError("chunk_bytes must be at least 4 (one fp32 element)")
        if chunk_bytes + 1024 > max_message_bytes:
            raise ValueError("chunk_bytes %d does not fit max_message_bytes %d" % (
                chunk_bytes, max_message_bytes))
        self.address = address
        self.timeout = float(timeout)
        self.chunk_bytes = int(chunk_bytes)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.list_page_size = _page_size(list_page_size, "list_page_size")
        self._metadata = _auth_metadata(token)
        creds = _credentials(tls, tls_ca, tls_cert, tls_key, tls_server_name)
        self.tls = creds is not None
        options = [
            ("grpc.max_send_message_length", int(max_message_bytes)),
            ("grpc.max_receive_message_length", int(max_message_bytes)),
            # keepalive as docs/PROTOCOL.md recommends: silent Step streams (a SYNC wait) survive
            ("grpc.keepalive_time_ms", 30000),
            ("grpc.keepalive_timeout_ms", 20000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # retries are ours (idempotent calls only); reconnect soon after a daemon restart
            ("grpc.enable_retries", 0),
            # (not grpc.min_reconnect_backoff_ms: gRPC core takes it as the connect timeout)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if tls_server_name is not None:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        options += list(channel_options)
        if creds is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, creds, options=options)
        self._stub = pb_grpc.OptimizerStub(self._channel)
        self._health = None
        self._stream = None
        self._lock = threading.RLock()
        self._shapes = {}  # name -> shape, learned from every reply that carries it
        self.attempts = {}  # method -> calls made (retries included); for diagnostics and tests
        self._closed = False

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, method: str, fn, idempotent: bool):
        """fn() with RpcError -> OrthodError; idempotent calls retried on UNAVAILABLE."""
        attempt = 0
        while True:
            self.attempts[method] = self.attempts.get(method, 0) + 1
            try:
                return fn()
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                if idempotent and code == SC.UNAVAILABLE and attempt < self.retries:
                    self._pause(min(self.backoff * (2 ** attempt), _MAX_BACKOFF))
                    attempt += 1
                    continue
                raise OrthodError.from_rpc_error(e) from None

    def _pause(self, seconds: float) -> None:
        """Sleep while the channel tries to (re)connect. A bare sleep would not do: with no call
        in flight gRPC core polls an idle channel only every 5 s, so a daemon that came up during
        the pause would be seen seconds late."""
        end = time.monotonic() + seconds
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=seconds)
        except grpc.FutureTimeoutError:
            pass
        finally:
            ready.cancel()
        left = end - time.monotonic()
        if left > 0:
            time.sleep(left)

    def _chunks(self, flat: np.ndarray, code: int):
        """(offset, TensorChunk) covering ``flat`` with at most chunk_bytes of data each."""
        per = max(1, self.chunk_bytes // _dt.itemsize(code))
        for off in range(0, flat.size, per):
            yield off, pb.TensorChunk(offset=off, dtype=code,
                                      data=_dt.encode(flat[off:off + per], code))

    def _remember(self, info: dict) -> dict:
        self._shapes[info["name"]] = info["shape"]
        return info

    def _shape_of(self, name: str) -> Tuple[int, ...]:
        shape = self._shapes.get(name)
        if shape is None:
            shape = self.describe(name)["shape"]
        return shape

    # -- parameters ------------------------------------------------------------------------

    def register(self, name: str, shape: Sequence[int], algorithm: str = "",
                 options: Optional[Mapping] = None, workers: int = 1, sync_mode=None,
                 max_staleness: int = 0, sync_timeout_ms: int = 0) -> dict:
        """Create a parameter (weights zero, step 0); an identical existing one is returned with
        ``created`` False. ``options``: engine keys -> values (docs/ENGINE.md), e.g.
        ``{"lr": 0.02}``. ``sync_mode``: None (SYNC when workers > 1), "sync" or "async"."""
        spec = pb.ParameterSpec(
            name=name, shape=[int(d) for d in shape], algorithm=algorithm or "",
            options=[pb.Option(key=str(k), value=option_text(v))
                     for k, v in (options or {}).items()],
            workers=int(workers), sync_mode=_sync_mode_code(sync_mode),
            max_staleness=int(max_staleness), sync_timeout_ms=int(sync_timeout_ms))
        req = pb.RegisterRequest(spec=spec)
        r = self._call("Register", lambda: self._stub.Register(req, timeout=self.timeout,
                                                                metadata=self._metadata), True)
        return self._remember(_info(r.info, created=bool(r.created)))

    def upload(self, tensors: Mapping[str, object], dtype="f32") -> Dict[str, dict]:
        """Set the weights of one or more parameters in one Upload stream (all written at once,
        or none). Returns {name: info}. Not retried."""
        code = _dt.wire_code(dtype)
        items = [(name, _flat_f32(v)) for name, v in tensors.items()]
        if not items:
            return {}

        def requests():
            for name, flat in items:
                for _, c in self._chunks(flat, code):
                    yield pb.UploadRequest(name=name, chunk=c)

        r = self._call("Upload", lambda: self._stub.Upload(requests(), timeout=self.timeout,
                                                            metadata=self._metadata), False)
        return {pi.spec.name: self._remember(_info(pi)) for pi in r.params}

    def pull(self, names: Union[None, str, Iterable[str]] = None,
             dtype="f32") -> Dict[str, Tuple[np.ndarray, int]]:
        """Current weights: {name: (float32 array of the parameter's shape, step)}; ``names``
        None or empty: every parameter, in name order. ``dtype``: the wire dtype of the reply
        (bf16/f16 halve the bytes; values are rounded by the daemon)."""
        if isinstance(names, str):
            names = [names]
        names = list(names or [])
        code = _dt.wire_code(dtype)
        req = pb.PullRequest(names=names, dtype=code)

        def attempt():
            out = {}
            parts = {}  # name -> [shape, flat array, covered, step]
            for r in self._stub.Pull(req, timeout=self.timeout, metadata=self._metadata):
                p = parts.get(r.name)
                if p is None:
                    if r.name in out:
                        raise OrthodError(SC.DATA_LOSS, "Pull sent '%s' twice" % r.name)
                    shape = tuple(int(d) for d in r.shape)
                    if not shape:
                        raise OrthodError(SC.DATA_LOSS, "first Pull chunk of '%s' has no shape"
                                          % r.name)
                    p = parts[r.name] = [shape, np.empty(math.prod(shape), np.float32), 0]
                vals = _dt.decode(r.chunk.data, r.chunk.dtype)
                off = int(r.chunk.offset)
                if off != p[2] or off + vals.size > p[1].size:
                    raise OrthodError(SC.DATA_LOSS, "Pull chunk [%d, %d) of '%s' does not "
                                      "continue at element %d of %d" % (
                                          off, off + vals.size, r.name, p[2], p[1].size))
                p[1][off:off + vals.size] = vals
                p[2] += vals.size
                if r.last:
                    if p[2] != p[1].size:
                        raise OrthodError(SC.DATA_LOSS, "Pull of '%s' ended after %d of %d "
                                          "elements" % (r.name, p[2], p[1].size))
                    self._shapes[r.name] = p[0]
                    out[r.name] = (p[1].reshape(p[0]), int(r.step))
                    del parts[r.name]
            if parts:
                raise OrthodError(SC.DATA_LOSS, "Pull ended without the last chunk of %s" %
                                  ", ".join("'%s'" % n for n in parts))
            missing = [n for n in names if n not in out]
            if missing:
                raise OrthodError(SC.DATA_LOSS, "Pull ended without %s" %
                                  ", ".join("'%s'" % n for n in missing))
            return out

        return self._call("Pull", attempt, True)

    def _list_pages(self, prefix: str, page_size: Optional[int]):
        """The List replies for ``prefix``, one page after the other until the daemon sends the
        last; each page is one call, retried on its own (List is idempotent)."""
        size = self.list_page_size if page_size is None else _page_size(page_size, "page_size")
        token, last = "", None  # the token sent; the last name received
        while True:
            req = pb.ListRequest(prefix=prefix, page_size=size, page_token=token)
            r = self._call("List", lambda: self._stub.List(req, timeout=self.timeout,
                                                            metadata=self._metadata), True)
            # Pages come in name order: one that does not start after the previous one would
            # repeat parameters, and a token that does not move on would ask for the same page
            # forever.
            if r.params and last is not None and \
                    r.params[0].spec.name.encode("utf-8") <= last.encode("utf-8"):
                raise OrthodError(SC.DATA_LOSS, "List: a page starts at '%s', not after '%s' "
                                  "where the previous one ended" % (r.params[0].spec.name, last))
            nxt = r.next_page_token
            if nxt and (not r.params or nxt == token):
                raise OrthodError(SC.DATA_LOSS, "List: next_page_token %r does not advance (%d "
                                  "parameters in its page)" % (nxt[:200], len(r.params)))
            yield r
            if not nxt:
                return
            if r.params:
                last = r.params[-1].spec.name
            token = nxt

    def list(self, prefix: str = "", page_size: Optional[int] = None) -> List[dict]:
        """Every parameter whose name starts with ``prefix``, in name order. Fetched in pages of
        ``page_size`` parameters (None: the client's ``list_page_size``; 0: one reply), one List
        call each; parameters registered or dropped meanwhile may or may not be listed, none is
        listed twice."""
        return [self._remember(_info(pi)) for r in self._list_pages(prefix, page_size)
                for pi in r.params]

    def usage(self) -> dict:
        """{"device_bytes_used", "device_bytes_limit" (0: none), "params"} from List (paged as
        :meth:`list`; the bytes are those of the last page)."""
        n, r = 0, None
        for r in self._list_pages("", None):
            n += len(r.params)
        return {"device_bytes_used": int(r.device_bytes_used),
                "device_bytes_limit": int(r.device_bytes_limit), "params": n}

    def describe(self, name: str) -> dict:
        """One parameter's info (NOT_FOUND if it is not registered)."""
        req = pb.DescribeRequest(name=name)
        r = self._call("Describe", lambda: self._stub.Describe(req, timeout=self.timeout,
                                                                metadata=self._metadata), True)
        return self._remember(_info(r))

    def drop(self, name: str) -> int:
        """Remove a parameter; returns the step counter it had. Not retried."""
        self._shapes.pop(name, None)
        req = pb.DropRequest(name=name)
        r = self._call("Drop", lambda: self._stub.Drop(req, timeout=self.timeout,
                                                        metadata=self._metadata), False)
        return int(r.step)

    def set_config(self, name: str, options: Mapping) -> dict:
        """Change hyper-parameters (``{"lr": 0.01, "weight_decay": 0}``) from the next step on;
        returns the info after the change. Retried on ``UNAVAILABLE``: setting the same options
        again has the same effect."""
        req = pb.SetConfigRequest(name=name, options=[
            pb.Option(key=str(k), value=option_text(v)) for k, v in options.items()])
        r = self._call("SetConfig", lambda: self._stub.SetConfig(req, timeout=self.timeout,
                                                                  metadata=self._metadata), True)
        return self._remember(_info(r))

    def checkpoint(self) -> dict:
        """Have the daemon write a checkpoint of every parameter (weights, optimizer state, step
        counter, spec) to its state directory; returns once the file is durable:
        {"path" (the file, on the daemon's machine), "sequence" (one more than the previous
        checkpoint of that directory), "parameters", "bytes" (the file's size)}. Retried on
        ``UNAVAILABLE``: a repeated call only writes one more checkpoint, so a retry after a lost
        reply can skip a sequence number."""
        r = self._call("Checkpoint", lambda: self._stub.Checkpoint(
            pb.CheckpointRequest(), timeout=self.timeout, metadata=self._metadata), True)
        return {"path": r.path, "sequence": int(r.sequence), "parameters": int(r.parameters),
                "bytes": int(r.bytes)}

    def health(self, service: str = "") -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING", ... (service "" is the daemon,
        "orthod.v1.Optimizer" the API)."""
        health_pb2, health_pb2_grpc = health_modules()
        if self._health is None:
            self._health = health_pb2_grpc.HealthStub(self._channel)
        req = health_pb2.HealthCheckRequest(service=service)
        r = self._call("Check", lambda: self._health.Check(req, timeout=self.timeout), True)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def wait_until_serving(self, timeout: float = 30.0, service: str = "") -> None:
        """Poll health until the daemon answers SERVING (OrthodError DEADLINE_EXCEEDED else)."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        last = "no answer"
        while True:
            try:
                st = self.health(service)
                if st == "SERVING":
                    return
                last = st
            except OrthodError as e:
                last = str(e)
            if time.monotonic() + delay > deadline:
                raise OrthodError(SC.DEADLINE_EXCEEDED, "%s not SERVING within %.1f s (%s)" % (
                    self.address, timeout, last))
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- the training loop -----------------------------------------------------------------

    def step(self, grads: Mapping[str, object], steps: Union[int, Mapping[str, int]], *,
             rank: int = 0, lr: Union[None, float, Mapping[str, float]] = None, dtype="f32",
             reply_dtype=None, no_reply: bool = False) -> Dict[str, Tuple[np.ndarray, int]]:
        """Push one gradient per parameter on this client's Step stream and wait for the new
        weights: {name: (float32 array of the parameter's shape, new step)}.

        ``steps``: the counter each gradient was computed at (one int for all, or per name).
        ``lr``: this step's learning rate (one for all, or per name; absent: the configured one).
        ``dtype``: wire dtype of the gradients; ``reply_dtype``: of the weights (None: f32).
        ``no_reply``: do not ask for weights; returns {} at once, and an error of such a push
        is raised by the next step() of this client. Errors of the daemon end the stream, which
        the next call reopens. Not retried: a push may have been applied."""
        code = _dt.wire_code(dtype)
        rcode = _dt.wire_code(reply_dtype)
        items = []
        for name, g in grads.items():
            flat = _flat_f32(g)
            shape = self._shape_of(name)
            if flat.size != math.prod(shape):
                raise OrthodError(SC.INVALID_ARGUMENT, "gradient for '%s' has %d elements; the "
                                  "parameter has shape [%s] (%d elements)" % (
                                      name, flat.size, ", ".join(map(str, shape)),
                                      math.prod(shape)))
            st = steps[name] if isinstance(steps, Mapping) else steps
            plr = lr.get(name) if isinstance(lr, Mapping) else lr
            items.append((name, flat, int(st), plr, shape))
        if not items:
            return {}
        with self._lock:
            self.attempts["Step"] = self.attempts.get("Step", 0) + 1
            stream = self._open_stream()
            if any(stream.last_step.get((name, rank), -1) >= st for name, _, st, _, _ in items):
                # The daemon ignores a step's chunks sent again on the stream that pushed them
                # (an idempotent retry, docs/PROTOCOL.md): a repeated or older step goes on a
                # fresh stream, where it is judged like any push (FAILED_PRECONDITION if stale).
                self._drop_stream(cancel=False)
                stream = self._open_stream()
            try:
                for name, flat, st, plr, _ in items:
                    stream.last_step[(name, rank)] = st
                    first = True
                    for _, c in self._chunks(flat, code):
                        req = pb.StepRequest(name=name, step=st, worker_rank=int(rank), chunk=c,
                                             reply_dtype=rcode, no_reply=bool(no_reply))
                        if first and plr is not None:
                            req.lr.value = float(plr)
                        first = False
                        stream.send(req)
                if no_reply:
                    stream.no_reply_pending = True
                    return {}
                return self._receive(stream, {name: shape for name, _, _, _, shape in items})
            except BaseException:
                for name, *_ in items:  # a stale cached shape could be the cause
                    self._shapes.pop(name, None)
                raise

    def _open_stream(self) -> _StepStream:
        s = self._stream
        if s is not None and s.ended.is_set():
            self._stream = None
            s.half_close()  # let the request generator end
            if s.final is not None and s.no_reply_pending:
                raise OrthodError.from_rpc_error(s.final, "an earlier push without reply "
                                                           "failed")
            s = None
        if s is None:
            if self._closed:
                raise OrthodError(SC.CANCELLED, "the client is closed")
            s = self._stream = _StepStream(self._stub, self._metadata)
        return s

    def _drop_stream(self, cancel: bool):
        s, self._stream = self._stream, None
        if s is not None:
            s.cancel() if cancel else s.half_close()

    def _receive(self, stream: _StepStream, pending: Dict[str, tuple]):
        out = {}
        parts = {}  # name -> [flat array, covered, step]
        deadline = time.monotonic() + self.timeout
        while pending:
            try:
                r = stream.responses.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._drop_stream(cancel=True)
                raise OrthodError(SC.DEADLINE_EXCEEDED, "no weights for %s within %.1f s" % (
                    ", ".join("'%s'" % n for n in pending), self.timeout)) from None
            if r is _END:
                self._drop_stream(cancel=False)
                raise OrthodError(SC.INTERNAL, "the Step stream ended without the weights of %s"
                                  % ", ".join("'%s'" % n for n in pending))
            if isinstance(r, grpc.RpcError):
                self._drop_stream(cancel=False)
                raise OrthodError.from_rpc_error(r) from None
            stream.no_reply_pending = False
            shape = pending.get(r.name)
            if shape is None:
                self._drop_stream(cancel=True)
                raise OrthodError(SC.DATA_LOSS, "Step reply for '%s', which this push did not "
                                  "contain" % r.name)
            n = math.prod(shape)
            if r.elements != n:
                self._drop_stream(cancel=True)
                raise OrthodError(SC.DATA_LOSS, "Step reply for '%s' has %d elements, expected %d"
                                  % (r.name, r.elements, n))
            p = parts.get(r.name)
            if p is None:
                p = parts[r.name] = [np.empty(n, np.float32), 0, int(r.step)]
            vals = _dt.decode(r.chunk.data, r.chunk.dtype)
            off = int(r.chunk.offset)
            if off != p[1] or off + vals.size > n or int(r.step) != p[2]:
                self._drop_stream(cancel=True)
                raise OrthodError(SC.DATA_LOSS, "Step reply chunk [%d, %d) of '%s' (step %d) does "
                                  "not continue at element %d of step %d" % (
                                      off, off + vals.size, r.name, r.step, p[1], p[2]))
            p[0][off:off + vals.size] = vals
            p[1] += vals.size
            if r.last:
                if p[1] != n:
                    self._drop_stream(cancel=True)
                    raise OrthodError(SC.DATA_LOSS, "Step reply for '%s' ended after %d of %d "
                                      "elements" % (r.name, p[1], n))
                out[r.name] = (p[0].reshape(shape), p[2])
                del parts[r.name]
                del pending[r.name]
        return out

    # -- lifetime --------------------------------------------------------------------------

    def close(self, wait: float = 5.0) -> None:
        """Half-close the Step stream (waiting up to ``wait`` s for it to end) and the channel."""
        with self._lock:
            self._closed = True
            s, self._stream = self._stream, None
            if s is not None:
                s.half_close()
                if not s.ended.wait(wait):
                    s.call.cancel()
            self._channel.close()

    def __repr__(self):
        return "Client(%r)" % self.address
