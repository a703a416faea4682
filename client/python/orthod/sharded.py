"""ShardedClient: parameters spread over several daemons by consistent hashing of their names.

Every parameter lives on exactly one daemon, the one :mod:`orthod.placement` assigns to its name
(the same rule as in the C client). Calls on one parameter go to its daemon; ``list``
and ``pull()`` of everything merge all daemons; ``step`` and ``upload`` talk to the daemons
involved in parallel, one thread per daemon, each on its own Client (and Step stream).
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .client import Client, _Closing
from .errors import OrthodError
from .placement import HashRing

__all__ = ["ShardedClient"]


def _name_key(name: str) -> bytes:
    return name.encode("utf-8")  # the daemon orders names bytewise


class ShardedClient(_Closing):
    """One :class:`Client` per address (``client_kwargs`` are passed to each: ``timeout``,
    ``token``, ``tls``, ``tls_ca``, ``tls_cert``, ``tls_key``, ``tls_server_name``, ...; every
    daemon of the set gets the same token and TLS settings, so ``tls_server_name`` fits only
    daemons that share a certificate name). The order of ``addresses`` is part of the
    placement: every process must list them in the same order."""

    def __init__(self, addresses: Union[str, Sequence[str]], **client_kwargs):
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        addresses = list(addresses)
        if not addresses:
            raise ValueError("ShardedClient needs at least one address")
        if len(set(addresses)) != len(addresses):
            raise ValueError("duplicate shard address in %r" % (addresses,))
        self.addresses = addresses
        self.ring = HashRing(addresses)
        self.clients = []
        try:
            for a in addresses:
                self.clients.append(Client(a, **client_kwargs))
        except BaseException:
            for c in self.clients:  # a bad argument fails the first; anything else, close all
                c.close()
            raise
        self._pool = ThreadPoolExecutor(max_workers=len(addresses),
                                        thread_name_prefix="orthod-shard")

    # -- placement -------------------------------------------------------------------------

    def shard_of(self, name: str) -> int:
        """Index of the daemon (in ``addresses``) that holds ``name``."""
        return self.ring.shard_of(name)

    def client_for(self, name: str) -> Client:
        return self.clients[self.ring.shard_of(name)]

    def _shard_error(self, i: int, e: OrthodError) -> OrthodError:
        """The error of shard i, its message prefixed "shard i (address): " as in the C client;
        ``.shard`` and ``.address`` say where it came from."""
        err = OrthodError(e.code, "shard %d (%s): %s" % (i, self.addresses[i], e.details))
        err.shard, err.address = i, self.addresses[i]
        return err

    def _one(self, name: str, fn):
        i = self.ring.shard_of(name)
        try:
            return fn(self.clients[i])
        except OrthodError as e:
            raise self._shard_error(i, e) from None

    def _map(self, fn, per_shard: Dict[int, object]) -> Dict[int, object]:
        """fn(client, arg) for every shard in per_shard, in parallel when more than one; every
        call finishes before the error of the lowest failing shard index is raised."""
        if len(per_shard) == 1:
            (i, arg), = per_shard.items()
            try:
                return {i: fn(self.clients[i], arg)}
            except OrthodError as e:
                raise self._shard_error(i, e) from None
        futures = {i: self._pool.submit(fn, self.clients[i], arg)
                   for i, arg in sorted(per_shard.items())}
        results, first = {}, None
        for i, f in futures.items():
            try:
                results[i] = f.result()
            except OrthodError as e:
                if first is None:
                    first = self._shard_error(i, e)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                if first is None:
                    first = e
        if first is not None:
            raise first
        return results

    def _split(self, mapping: Mapping[str, object]) -> Dict[int, dict]:
        out = {}
        for name, v in mapping.items():
            out.setdefault(self.shard_of(name), {})[name] = v
        return out

    # -- per parameter ---------------------------------------------------------------------

    def register(self, name: str, shape: Sequence[int], algorithm: str = "",
                 options: Optional[Mapping] = None, workers: int = 1, sync_mode=None,
                 max_staleness: int = 0, sync_timeout_ms: int = 0) -> dict:
        return self._one(name, lambda c: c.register(name, shape, algorithm, options, workers,
                                                     sync_mode, max_staleness, sync_timeout_ms))

    def describe(self, name: str) -> dict:
        return self._one(name, lambda c: c.describe(name))

    def drop(self, name: str) -> int:
        return self._one(name, lambda c: c.drop(name))

    def set_config(self, name: str, options: Mapping) -> dict:
        return self._one(name, lambda c: c.set_config(name, options))

    # -- several parameters ----------------------------------------------------------------

    def upload(self, tensors: Mapping[str, object], dtype="f32") -> Dict[str, dict]:
        """One Upload stream per daemon involved (each all-or-nothing on its daemon)."""
        if not tensors:
            return {}
        parts = self._map(lambda c, t: c.upload(t, dtype), self._split(tensors))
        merged = {}
        for r in parts.values():
            merged.update(r)
        return {n: merged[n] for n in tensors if n in merged}

    def pull(self, names: Union[None, str, Iterable[str]] = None,
             dtype="f32") -> Dict[str, Tuple[np.ndarray, int]]:
        """{name: (array, step)}; ``names`` None: every parameter of every daemon, in name
        order; else in the order given."""
        if isinstance(names, str):
            names = [names]
        names = list(names or [])
        if not names:
            parts = self._map(lambda c, _: c.pull(None, dtype),
                              {i: None for i in range(len(self.clients))})
            merged = {}
            for r in parts.values():
                merged.update(r)
            return {n: merged[n] for n in sorted(merged, key=_name_key)}
        per = {}
        for n in names:
            per.setdefault(self.shard_of(n), []).append(n)
        parts = self._map(lambda c, ns: c.pull(ns, dtype), per)
        merged = {}
        for r in parts.values():
            merged.update(r)
        return {n: merged[n] for n in names}

    def list(self, prefix: str = "", page_size: Optional[int] = None) -> List[dict]:
        """Every daemon's parameters starting with ``prefix``, merged in name order; each daemon
        is listed in pages as :meth:`Client.list` does (``page_size`` None: the clients'
        ``list_page_size``)."""
        parts = self._map(lambda c, _: c.list(prefix, page_size),
                          {i: None for i in range(len(self.clients))})
        infos = [info for i in sorted(parts) for info in parts[i]]
        return sorted(infos, key=lambda d: _name_key(d["name"]))

    def usage(self) -> dict:
        """Sums of every daemon's usage (a limit of 0 on any daemon means no overall limit)."""
        parts = self._map(lambda c, _: c.usage(), {i: None for i in range(len(self.clients))})
        vals = [parts[i] for i in sorted(parts)]
        limits = [u["device_bytes_limit"] for u in vals]
        return {"device_bytes_used": sum(u["device_bytes_used"] for u in vals),
                "device_bytes_limit": 0 if 0 in limits else sum(limits),
                "params": sum(u["params"] for u in vals)}

    def checkpoint(self) -> List[dict]:
        """Client.checkpoint on every daemon, in parallel: one result per daemon, in the order of
        ``addresses``. Each daemon writes its own parameters to its own state directory; the
        checkpoints are not taken at one instant across daemons."""
        parts = self._map(lambda c, _: c.checkpoint(), {i: None for i in range(len(self.clients))})
        return [parts[i] for i in range(len(self.clients))]

    def health(self, service: str = "") -> str:
        """"SERVING" when every daemon is; otherwise the first other status (by shard index).
        An unreachable daemon raises its OrthodError."""
        parts = self._map(lambda c, _: c.health(service),
                          {i: None for i in range(len(self.clients))})
        for i in sorted(parts):
            if parts[i] != "SERVING":
                return parts[i]
        return "SERVING"

    def health_all(self, service: str = "") -> Dict[str, str]:
        """{address: status}; an unreachable daemon's entry is its error text (one shard after
        the other, each with the client's retries)."""
        out = {}
        for a, c in zip(self.addresses, self.clients):
            try:
                out[a] = c.health(service)
            except OrthodError as e:
                out[a] = str(e)
        return out

    def wait_until_serving(self, timeout: float = 30.0, service: str = "") -> None:
        for c in self.clients:
            c.wait_until_serving(timeout, service)

    def step(self, grads: Mapping[str, object], steps: Union[int, Mapping[str, int]], *,
             rank: int = 0, lr: Union[None, float, Mapping[str, float]] = None, dtype="f32",
             reply_dtype=None, no_reply: bool = False) -> Dict[str, Tuple[np.ndarray, int]]:
        """Client.step on every daemon involved, in parallel; the results merged. If several
        daemons fail, the error of the lowest shard index is raised (after all have answered)."""
        per = self._split(grads)

        def one(client, g):
            st = {n: steps[n] for n in g} if isinstance(steps, Mapping) else steps
            lrs = {n: lr[n] for n in g if n in lr} if isinstance(lr, Mapping) else lr
            return client.step(g, st, rank=rank, lr=lrs, dtype=dtype, reply_dtype=reply_dtype,
                               no_reply=no_reply)

        parts = self._map(one, per) if per else {}
        merged = {}
        for r in parts.values():
            merged.update(r)
        return {n: merged[n] for n in grads if n in merged}

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self._pool.shutdown(wait=True)

    def __repr__(self):
        return "ShardedClient(%r)" % (self.addresses,)
