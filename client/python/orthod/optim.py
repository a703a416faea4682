"""RemoteOptimizer: a torch.optim-style optimizer whose state and math live in orthod daemons.

    opt = RemoteOptimizer(model.named_parameters(), address="127.0.0.1:50051", lr=0.02)
    loss.backward(); opt.step(); opt.zero_grad()

``step()`` pushes every parameter's gradient on one Step stream and writes the new weights back
in place. With torch importable the class subclasses ``torch.optim.Optimizer`` (LR schedulers
accept it: a changed ``param_groups[i]["lr"]`` travels with the next push); without torch, or with
``torch=False``, it is a plain class with the same attributes that takes NumPy arrays and a
gradient dict: ``opt.step(grads={name: ndarray})``.
"""

import copy
import time
from typing import Dict, List

import grpc
import numpy as np

from .client import Client, _Closing, to_numpy
from .errors import OrthodError
from .sharded import ShardedClient

try:  # torch is optional; any failure to import it means "no torch"
    import torch as _torch
except Exception:  # noqa: BLE001
    _torch = None

__all__ = ["RemoteOptimizer", "PlainRemoteOptimizer", "HAVE_TORCH"]

HAVE_TORCH = _torch is not None
SC = grpc.StatusCode

# Group keys that are not engine options sent to the daemon.
_NOT_OPTIONS = {"params", "param_names", "algorithm", "algo", "lr", "initial_lr"}


def _is_tensor(x) -> bool:
    return _torch is not None and isinstance(x, _torch.Tensor)


def _named(obj, where: str):
    """(name, tensor|ndarray) pairs from a dict, named_parameters() or an iterable of pairs."""
    if isinstance(obj, dict):
        items = list(obj.items())
    else:
        items = []
        for it in obj:
            if not (isinstance(it, (tuple, list)) and len(it) == 2 and isinstance(it[0], str)):
                raise TypeError(
                    "RemoteOptimizer needs named parameters (%s): pass model.named_parameters(),"
                    " (name, tensor) pairs or a dict name -> array; got %s" % (
                        where, type(it).__name__))
            items.append((it[0], it[1]))
    for name, p in items:
        if not name:
            raise ValueError("RemoteOptimizer: empty parameter name (%s)" % where)
        if _is_tensor(p):
            if p.dim() < 1:
                raise ValueError("parameter '%s' is a scalar; orthod parameters have 1 to 8 "
                                 "dimensions" % name)
        elif isinstance(p, np.ndarray):
            if p.ndim < 1 or not np.issubdtype(p.dtype, np.floating) or not p.flags.writeable:
                raise ValueError("parameter '%s' must be a writable floating-point ndarray with "
                                 "1 to 8 dimensions (it is updated in place)" % name)
        else:
            raise TypeError("parameter '%s' is a %s; RemoteOptimizer takes torch tensors or "
                            "NumPy arrays" % (name, type(p).__name__))
    return items


def _normalize_params(params) -> List[dict]:
    """The constructor's ``params`` as a list of group dicts with (name, tensor) pairs."""
    if isinstance(params, dict):
        return [{"params": params}]
    if _is_tensor(params) or isinstance(params, np.ndarray):
        raise TypeError("RemoteOptimizer needs named parameters, not a single tensor")
    items = list(params)
    if not items:
        raise ValueError("RemoteOptimizer got an empty parameter list")
    if isinstance(items[0], dict):
        return [dict(g) for g in items]
    return [{"params": items}]


class _RemoteOptimizerCore(_Closing):
    """Everything of RemoteOptimizer except its base class (which _init_groups calls on)."""

    def __init__(self, params, address="127.0.0.1:50051", *, addresses=None, lr=None,
                 algorithm=None, rank=0, world_size=1, reply_dtype="f32", wire_dtype="f32",
                 register=True, upload=True, sync_timeout_ms=0, client=None, timeout=60.0,
                 client_kwargs=None, token=None, tls=False, tls_ca=None, tls_cert=None,
                 tls_key=None, tls_server_name=None, **defaults):
        defaults.pop("torch", None)
        groups = _normalize_params(params)
        self.param_groups = []
        # (named here, not left in **defaults, which are engine options sent to the daemon)
        security = {k: v for k, v in (("token", token), ("tls", tls), ("tls_ca", tls_ca),
                                      ("tls_cert", tls_cert), ("tls_key", tls_key),
                                      ("tls_server_name", tls_server_name))
                    if v is not None and v is not False}
        d = self._configure(address, addresses, lr, algorithm, rank, world_size, reply_dtype,
                            wire_dtype, register, upload, sync_timeout_ms, client, timeout,
                            client_kwargs, security, defaults)
        try:
            self._init_groups(groups, d)
            self.state = {}
            self._setup_groups(list(range(len(self.param_groups))))
        except BaseException:
            self.close()
            raise
        self._ready = True

    def _init_groups(self, groups: List[dict], defaults: dict) -> None:
        """Set self.defaults and add the groups with add_param_group (the base class's way)."""
        raise NotImplementedError

    def _configure(self, address, addresses, lr, algorithm, rank, world_size, reply_dtype,
                   wire_dtype, register, upload, sync_timeout_ms, client, timeout,
                   client_kwargs, security, defaults):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError("rank %d out of range for world_size %d" % (rank, world_size))
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.reply_dtype = reply_dtype
        self.wire_dtype = wire_dtype
        self.sync_timeout_ms = int(sync_timeout_ms)
        self.timeout = float(timeout)
        self._register = bool(register)
        self._upload = bool(upload)
        self._ready = False
        self._reg_lr = []  # per group: the lr the group's parameters were registered with
        self._names = set()
        kw = dict(client_kwargs or {})
        kw.setdefault("timeout", self.timeout)
        for k, v in security.items():
            if k in kw and kw[k] != v:
                raise ValueError("%s given both as an argument and in client_kwargs" % k)
            kw[k] = v
        if client is not None and security:
            # the settings of a connection this optimizer does not open would be ignored
            raise ValueError("%s: configure the client passed as client= instead" %
                             ", ".join(sorted(security)))
        if client is not None:
            self.client, self._own_client = client, False
        elif addresses is not None:
            self.client, self._own_client = ShardedClient(list(addresses), **kw), True
        else:
            self.client, self._own_client = Client(address, **kw), True
        d = {"lr": lr, "algorithm": algorithm}
        d.update(defaults)
        return d

    # -- groups ----------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """Add a group {"params": named parameters, "lr": ..., "algorithm": ..., engine
        options...}; after construction its parameters are registered at once."""
        group = dict(param_group)
        if "params" not in group:
            raise ValueError("a param group needs 'params'")
        items = _named(group.pop("params"), "param group %d" % len(self.param_groups))
        if "algo" in group and group.get("algorithm") is None:
            group["algorithm"] = group.pop("algo")
        group.pop("algo", None)
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        names = [n for n, _ in items]
        dup = [n for n in names if n in self._names] or \
            [n for i, n in enumerate(names) if n in names[:i]]
        if dup:
            raise ValueError("parameter '%s' appears in more than one place" % dup[0])
        group["params"] = [p for _, p in items]
        group["param_names"] = names
        self._names.update(names)
        self.param_groups.append(group)
        self._reg_lr.append(group.get("lr"))
        if self._ready:
            self._setup_groups([len(self.param_groups) - 1])

    def _spec(self, group: dict, p) -> dict:
        shape = tuple(int(d) for d in p.shape)
        algorithm = group.get("algorithm") or ("muon" if len(shape) >= 2 else "adamw")
        options = {k: v for k, v in group.items() if k not in _NOT_OPTIONS and v is not None}
        if group.get("lr") is not None:
            options["lr"] = group["lr"]
        spec = {"shape": shape, "algorithm": algorithm, "options": options,
                "workers": self.world_size}
        if self.world_size > 1:
            spec.update(sync_mode="sync", sync_timeout_ms=self.sync_timeout_ms)
        return spec

    def _params(self, groups=None):
        """(group index, name, param) of the given groups (default all)."""
        for gi in (range(len(self.param_groups)) if groups is None else groups):
            g = self.param_groups[gi]
            for name, p in zip(g["param_names"], g["params"]):
                yield gi, name, p

    # -- registration ----------------------------------------------------------------------

    def _setup_groups(self, groups: List[int]) -> None:
        """Register (rank 0) or find (other ranks) the parameters of these groups, upload or
        adopt their weights, and learn their step counters."""
        entries = list(self._params(groups))
        infos = {}
        if self.rank == 0:
            to_upload, to_pull = {}, []
            for gi, name, p in entries:
                if self._register:
                    s = self._spec(self.param_groups[gi], p)
                    info = self.client.register(name, s["shape"], s["algorithm"], s["options"],
                                                s["workers"], s.get("sync_mode"), 0,
                                                s.get("sync_timeout_ms", 0))
                    if info["created"] and self._upload:
                        to_upload[name] = p
                    else:
                        to_pull.append(name)
                else:
                    info = self.client.describe(name)
                    to_pull.append(name)
                self._check_shape(name, p, info)
                infos[name] = info
            if to_upload:
                for name, info in self.client.upload(to_upload).items():
                    infos[name] = info
            if to_pull:
                self._adopt(to_pull, infos, wait_uploaded=False)
        else:
            for gi, name, p in entries:
                infos[name] = self._wait_registered(name)
                if self._register:  # the same spec as rank 0's, or ALREADY_EXISTS
                    s = self._spec(self.param_groups[gi], p)
                    infos[name] = self.client.register(
                        name, s["shape"], s["algorithm"], s["options"], s["workers"],
                        s.get("sync_mode"), 0, s.get("sync_timeout_ms", 0))
                self._check_shape(name, p, infos[name])
            self._adopt([name for _, name, _ in entries], infos, wait_uploaded=True)
        for _, name, _ in entries:
            self.state[name] = {"step": int(infos[name]["step"])}
        for gi in groups:
            g = self.param_groups[gi]
            if g.get("lr") is None:
                # no lr given: the group's lr is the daemon's, if all its parameters share one
                lrs = {infos[n]["options"].get("lr") for n in g["param_names"]}
                if len(lrs) == 1 and None not in lrs:
                    g["lr"] = float(lrs.pop())
                    self._reg_lr[gi] = g["lr"]

    @staticmethod
    def _check_shape(name, p, info):
        if tuple(info["shape"]) != tuple(int(d) for d in p.shape):
            raise ValueError("parameter '%s' has shape %s here and %s in the daemon" % (
                name, tuple(p.shape), tuple(info["shape"])))

    def _wait_registered(self, name: str) -> dict:
        """Describe until the parameter exists (rank 0 registers it), bounded by the timeout."""
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        while True:
            try:
                return self.client.describe(name)
            except OrthodError as e:
                if e.code != SC.NOT_FOUND:
                    raise
            if time.monotonic() + delay > deadline:
                raise OrthodError(SC.DEADLINE_EXCEEDED, "parameter '%s' was not registered "
                                  "(by rank 0) within %.1f s" % (name, self.timeout))
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _adopt(self, names: List[str], infos: Dict[str, dict], wait_uploaded: bool) -> None:
        """Pull the daemon's weights into the local parameters and take its counters.
        wait_uploaded (ranks > 0): a parameter whose weights are still all zero in the daemon
        while the local ones are not has been registered but not yet uploaded by rank 0; pull it
        again (bounded by the timeout, then take what is there)."""
        local = {n: p for _, n, p in self._params()}
        todo = list(names)
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        while todo:
            got = self.client.pull(todo)
            later = []
            for n in todo:
                w, st = got[n]
                if wait_uploaded and st == 0 and not w.any() and time.monotonic() < deadline \
                        and self._nonzero(local[n]):
                    later.append(n)
                    continue
                self._write(local[n], w)
                infos[n] = dict(infos[n], step=st)
            todo = later
            if todo:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @staticmethod
    def _nonzero(p) -> bool:
        if _is_tensor(p):
            return bool(p.detach().ne(0).any())
        return bool(np.any(p))

    @staticmethod
    def _write(p, w: np.ndarray) -> None:
        """New weights into a parameter, in place (dtype and device of the parameter kept)."""
        if _is_tensor(p):
            src = _torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).reshape(p.shape)
            with _torch.no_grad():
                p.copy_(src)
        else:
            p[...] = w.reshape(p.shape)

    # -- the training step -----------------------------------------------------------------

    def step(self, closure=None, grads=None):
        """Push the gradients (``.grad`` of torch parameters, or ``grads`` {name: array}) of
        every parameter that has one, wait for the new weights, write them in place. Returns
        the closure's loss. Parameters without a gradient are skipped (in a data-parallel job
        every rank must push the same parameters, or the SYNC step times out)."""
        loss = None
        if closure is not None:
            if _torch is not None:
                with _torch.enable_grad():
                    loss = closure()
            else:
                loss = closure()
        if grads is not None:
            unknown = [n for n in grads if n not in self._names]
            if unknown:
                raise KeyError("gradient for '%s', which this optimizer does not hold" %
                               unknown[0])
        push, steps, lrs, targets = {}, {}, {}, {}
        for gi, group in enumerate(self.param_groups):
            cur, reg = group.get("lr"), self._reg_lr[gi]
            send_lr = cur is not None and (reg is None or float(cur) != float(reg))
            for name, p in zip(group["param_names"], group["params"]):
                if grads is not None:
                    g = grads.get(name)
                else:
                    g = p.grad if _is_tensor(p) else None
                if g is None:
                    continue
                push[name] = to_numpy(g)
                steps[name] = self.state[name]["step"]
                if send_lr:
                    lrs[name] = float(cur)
                targets[name] = p
        if not push:
            return loss
        replies = self.client.step(push, steps, rank=self.rank, lr=lrs or None,
                                   dtype=self.wire_dtype, reply_dtype=self.reply_dtype)
        for name, (w, st) in replies.items():
            self._write(targets[name], w)
            self.state[name]["step"] = st
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the ``.grad`` of torch parameters (NumPy parameters have none)."""
        for _, _, p in self._params():
            if _is_tensor(p) and p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    def resync(self) -> None:
        """Take the daemon's weights and counters for every parameter (after a
        FAILED_PRECONDITION on a step, or when another process stepped the parameters)."""
        names = [n for _, n, _ in self._params()]
        infos = {n: {"step": self.state[n]["step"]} for n in names}
        self._adopt(names, infos, wait_uploaded=False)
        for n in names:
            self.state[n]["step"] = infos[n]["step"]

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """{"state": {name: {"step": n}}, "param_groups": [group settings, "params": names]}.
        The optimizer state itself lives in the daemon (checkpoint it there)."""
        groups = []
        for g in self.param_groups:
            d = {k: copy.deepcopy(v) for k, v in g.items() if k not in ("params", "param_names")}
            d["params"] = list(g["param_names"])
            groups.append(d)
        return {"state": {n: {"step": int(self.state[n]["step"])} for _, n, _ in self._params()},
                "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Check that ``state_dict`` matches this optimizer's parameters and the daemon's step
        counters (ValueError naming the parameter otherwise), then restore the groups' settings
        (lr, ...) and the counters."""
        groups = state_dict.get("param_groups")
        state = state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(state, dict):
            raise ValueError("not a RemoteOptimizer state_dict (needs 'state' and 'param_groups')")
        if len(groups) != len(self.param_groups):
            raise ValueError("state_dict has %d param groups, the optimizer has %d" % (
                len(groups), len(self.param_groups)))
        for gi, (saved, g) in enumerate(zip(groups, self.param_groups)):
            saved_names = list(saved.get("params", []))
            if saved_names != g["param_names"]:
                diff = [n for n in g["param_names"] if n not in saved_names] + \
                    [n for n in saved_names if n not in g["param_names"]]
                raise ValueError("param group %d: parameter '%s' differs between the state_dict "
                                 "and the optimizer" % (gi, diff[0] if diff else
                                                        g["param_names"][0]))
        for _, name, _ in self._params():
            if name not in state or "step" not in state[name]:
                raise ValueError("state_dict has no step for parameter '%s'" % name)
            try:
                daemon_step = self.client.describe(name)["step"]
            except OrthodError as e:
                if e.code == SC.NOT_FOUND:
                    raise ValueError("parameter '%s' is not registered in the daemon" %
                                     name) from None
                raise
            if int(state[name]["step"]) != daemon_step:
                raise ValueError("parameter '%s': the state_dict is at step %d, the daemon at "
                                 "step %d" % (name, int(state[name]["step"]), daemon_step))
        for saved, g in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k not in ("params", "param_names"):
                    g[k] = copy.deepcopy(v)
        for _, name, _ in self._params():
            self.state[name] = {"step": int(state[name]["step"])}

    def close(self) -> None:
        """Close the connection (only when this optimizer created it)."""
        if self._own_client:
            self.client.close()


_INIT_DOC = """RemoteOptimizer(params, address="127.0.0.1:50051", *, addresses=None, lr=None,
        algorithm=None, rank=0, world_size=1, reply_dtype="f32", wire_dtype="f32",
        register=True, upload=True, sync_timeout_ms=0, client=None, timeout=60.0,
        client_kwargs=None, token=None, tls=False, tls_ca=None, tls_cert=None, tls_key=None,
        tls_server_name=None, torch=None, **engine_options)

    params: model.named_parameters(), (name, tensor|ndarray) pairs, a dict name -> ndarray, or
      a list of group dicts {"params": ..., "lr": ..., "algorithm": ..., engine options}.
    address / addresses: one daemon, or several (a ShardedClient); client: an existing Client or
      ShardedClient (not closed by close()).
    token, tls, tls_ca, tls_cert, tls_key, tls_server_name: the connection's bearer token and
      TLS settings, passed to the Client (every ShardedClient daemon); see orthod.Client. Not
      with client=. client_kwargs: further Client keyword arguments.
    lr, algorithm, engine_options: defaults of every group. Algorithm per parameter: the group's,
      else "muon" for 2+ dimensions and "adamw" for vectors. Engine options (docs/ENGINE.md keys,
      e.g. weight_decay=0.01, precision="highest") and lr are sent at registration.
    rank, world_size: data parallelism: world_size > 1 registers SYNC parameters with that many
      workers; rank 0 registers and uploads, the other ranks wait for the parameters and pull.
    wire_dtype / reply_dtype: "f32", "bf16" or "f16" for gradients / returned weights.
    register=False: the parameters must exist; upload=False: adopt the daemon's weights.
    torch=False: a plain (non-torch) optimizer even when torch is importable.
"""


class PlainRemoteOptimizer(_RemoteOptimizerCore):
    __doc__ = _INIT_DOC

    def _init_groups(self, groups, defaults):
        self.defaults = defaults
        for g in groups:
            self.add_param_group(g)

    def __repr__(self):
        return "%s(%d groups, %d parameters, %r)" % (type(self).__name__, len(self.param_groups),
                                                     len(self._names), self.client)


if _torch is not None:

    class RemoteOptimizer(_RemoteOptimizerCore, _torch.optim.Optimizer):
        __doc__ = _INIT_DOC

        def __new__(cls, *args, **kwargs):
            if kwargs.get("torch") is False and cls is RemoteOptimizer:
                inst = object.__new__(PlainRemoteOptimizer)
                inst.__init__(*args, **kwargs)
                return inst
            return object.__new__(cls)

        def _init_groups(self, groups, defaults):
            # torch's constructor sets self.defaults, its hooks and a state dict (replaced by
            # ours afterwards), and calls our add_param_group per group
            _torch.optim.Optimizer.__init__(self, groups, defaults)

        # (_RemoteOptimizerCore comes first in the MRO: its add_param_group, step, zero_grad,
        # state_dict and load_state_dict replace torch's, which take tensors only)

else:

    class RemoteOptimizer(PlainRemoteOptimizer):
        __doc__ = _INIT_DOC

        def __init__(self, *args, **kwargs):
            if kwargs.get("torch"):
                raise ImportError("RemoteOptimizer(torch=True): torch cannot be imported")
            super().__init__(*args, **kwargs)
