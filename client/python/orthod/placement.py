"""Which daemon holds a parameter: consistent hashing of parameter names over shard addresses.

The rule, identical in the Python and C clients (docs/CLIENTS.md states it for other languages):

* ``fnv1a64``: FNV-1a, 64 bits (offset basis 0xcbf29ce484222325, prime 0x100000001b3), over the
  UTF-8 bytes of a string.
* ``fmix64``: the 64-bit finalizer of MurmurHash3 (``h ^= h >> 33; h *= 0xff51afd7ed558ccd;
  h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53; h ^= h >> 33``, modulo 2**64).
* ``ring_hash(s) = fmix64(fnv1a64(s))``. FNV-1a alone would do badly here: hashes of strings that
  differ only in their last bytes differ mostly in their low bits, so the 64 points of one
  address would lie in a few clusters and the shards would get very different shares (about
  59%, 10% and 31% for three addresses); the finalizer spreads every input bit over the word.
* The ring: for each shard address ``a_i`` (the string exactly as given) and replica ``k`` in
  0..63, a point at ``ring_hash(a_i + "#" + str(k))`` owned by shard ``i``.
* A name ``n`` belongs to the owner of the first point >= ``ring_hash(n)``, wrapping around to
  the smallest point; of equal points the lower shard index wins.

Adding a shard moves only the names that fall on its new points; every client that lists the
addresses in the same order places every name on the same daemon.
"""

import bisect
from typing import Iterable, List, Sequence, Union

__all__ = ["FNV_OFFSET", "FNV_PRIME", "REPLICAS", "fnv1a64", "fmix64", "ring_hash", "HashRing",
           "shard_of"]

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
REPLICAS = 64
_MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a64(data: Union[str, bytes]) -> int:
    """FNV-1a 64-bit hash of a string's UTF-8 bytes (or of bytes)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & _MASK
    return h


def fmix64(h: int) -> int:
    """The MurmurHash3 64-bit finalizer: every input bit affects every output bit."""
    h &= _MASK
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK
    h ^= h >> 33
    return h


def ring_hash(data: Union[str, bytes]) -> int:
    """The position of a string on the ring: ``fmix64(fnv1a64(data))``."""
    return fmix64(fnv1a64(data))


class HashRing:
    """The ring of ``len(addresses) * replicas`` points; ``shard_of(name)`` -> index."""

    def __init__(self, addresses: Sequence[str], replicas: int = REPLICAS):
        addresses = list(addresses)
        if not addresses:
            raise ValueError("a hash ring needs at least one address")
        for a in addresses:
            if not isinstance(a, str) or not a:
                raise ValueError("shard addresses are non-empty strings, got %r" % (a,))
        self.addresses = addresses
        # sorted by (point, index): for equal points the lower shard index comes first
        ring = sorted((ring_hash("%s#%d" % (a, k)), i) for i, a in enumerate(addresses)
                      for k in range(replicas))
        self._points = [p for p, _ in ring]
        self._owners = [i for _, i in ring]

    def shard_of(self, name: str) -> int:
        """Index (into ``addresses``) of the shard that owns ``name``."""
        i = bisect.bisect_left(self._points, ring_hash(name))
        return self._owners[i if i < len(self._points) else 0]

    def split(self, names: Iterable[str]) -> List[List[str]]:
        """The names grouped by shard: one list per address, in the order given."""
        out = [[] for _ in self.addresses]
        for n in names:
            out[self.shard_of(n)].append(n)
        return out


def shard_of(addresses: Sequence[str], name: str) -> int:
    """Index of the shard that owns ``name`` among ``addresses`` (builds the ring each call)."""
    return HashRing(addresses).shard_of(name)
