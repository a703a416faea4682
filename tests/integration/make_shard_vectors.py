"""make_shard_vectors.py — writes tests/integration/shard_vectors.json, the placement test vectors
every orthod client library checks its consistent-hash sharding against.

Format: {"addresses": [3 shard addresses], "names": {parameter name: shard index}}, the indices
computed by training_common.placement (an implementation written from the rule: ring_hash(s) =
fmix64(fnv1a64(s)), FNV-1a 64 over the UTF-8 bytes followed by the MurmurHash3 64-bit finalizer;
64 ring points per address at ring_hash(address + "#" + k); the owner of the first point >=
ring_hash(name), wrapping to the smallest point, equal points to the lower index).

The names are fixed (no randomness): transformer-style parameter names, names in several
scripts (non-ASCII UTF-8: accents, Cyrillic, CJK, emoji beyond the BMP, a combining mark), a
255-byte name, names with a JSON-escaped quote and backslash, names equal to ring point keys
(their hash equals a point, chosen where the next point has another owner, so ">=" is told from
">"), and names whose hash lies past the largest point (the wrap: with these addresses the
smallest and the largest point have different owners, so a missing wrap gives another index).
Equal points of different shards do not occur with these addresses (a 64-bit collision), so the
tie rule is not exercised here. Last, for each plausible mistake in MUTANTS below that none of
those names tells apart, one name that does (a ring point key of the mistake, or "probe.N").
Every mistake must be told apart by some name: one whose ring has the same owners everywhere as
the rule's (63 replicas, when the 64th point of every address lay inside a run of its own
shard's points, as it did with FNV-1a alone) makes the script fail instead of writing the file.

usage: /usr/bin/python3 make_shard_vectors.py [--check] [--out PATH]
--check compares the file with what the script would write (exit 1 when it differs).
"""

import argparse
import bisect
import json
import os
import sys

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from training_common import REPLICAS, placement, ring_hash  # noqa: E402

ADDRESSES = ["127.0.0.1:50051", "10.0.0.2:50051", "orthod-2.cluster.local:7000"]
OUT = os.path.join(HERE, "shard_vectors.json")
RUN_KEYS = 4  # ring point keys per shard among the names


def names():
    out = []
    for i in range(15):
        for part in ("self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.up.weight",
                     "mlp.down.weight", "input_layernorm.weight", "post_attention_layernorm.bias",
                     "mlp.gate.weight", "self_attn.o_proj.bias", "mlp.up.bias", "mlp.down.bias"):
            out.append("model.layers.%d.%s" % (i, part))
    out += ["embed_tokens.weight", "lm_head.weight", "norm.weight", "w", "b", "x", "0", "a.b",
            "conv1.weight", "bn1.running_mean", "fc.weight", "fc.bias", "wte", "wpe", "ln_f.bias",
            "encoder.block.0.layer.0.SelfAttention.q.weight",
            "decoder/final_layer_norm/scale", "params['dense']['kernel']"]
    out += ["x" * 255, "y" * 100]
    out += ["café.poids", "naïve.bias", "Ωmega.weight", "ключ.вес", "слой.0.смещение",
            "层.0.权重", "注意力.查询", "重み.レイヤー1", "가중치.층", "βήτα", "אלף.בית",
            "وزن.طبقة", "emoji.🚀", "🧠.cortex.weight", "𝔣𝔯𝔞𝔨𝔱𝔲𝔯", "e\u0301.combining",
            "tab\there", "quote\"name", "back\\slash", "µ.σ²", "日本語のパラメータ名.重み"]
    # Names whose hash IS a ring point: the key "address#k" of the last point of a run of one
    # shard's points (the next point belongs to another shard, so taking the first point
    # > hash instead of >= hash gives another index), the first RUN_KEYS in ring order of each
    # shard, and "address#0" of each shard.
    ring = sorted((ring_hash("%s#%d" % (a, k)), i, k) for i, a in enumerate(ADDRESSES)
                  for k in range(REPLICAS))
    per_shard = [0] * len(ADDRESSES)
    for j, (_, i, k) in enumerate(ring):
        if ring[(j + 1) % len(ring)][1] != i and per_shard[i] < RUN_KEYS:
            out.append("%s#%d" % (ADDRESSES[i], k))
            per_shard[i] += 1
    for a in ADDRESSES:
        if "%s#0" % a not in out:
            out.append("%s#0" % a)
    # names past the largest point: they wrap to the owner of the smallest point
    top = ring[-1][0]
    wraps, i = [], 0
    while len(wraps) < 3:
        n = "wrap.%d" % i
        if ring_hash(n) > top:
            wraps.append(n)
        i += 1
    out += wraps
    assert ring[0][1] != ring[-1][1], "the wrap names would not tell a missing wrap"
    out += probes(out)
    assert len(out) == len(set(out)), "duplicate names"
    return out


# ---------------------------------------------------------------------------------------------
# Plausible wrong implementations of the rule. For each mistake that no name above tells apart,
# a name that does is added: a ring point key where the two rings' owners differ, else the first
# "probe.N" that works (so the file stays deterministic).

M64 = 0xFFFFFFFFFFFFFFFF
C1, C2 = 0xff51afd7ed558ccd, 0xc4ceb9fe1a85ec53


def _fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & M64
    return h


def _fnv1(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h * 0x100000001b3) & M64) ^ b
    return h


def _fmix(h, shift=33, m1=C1, m2=C2, first=True):
    h ^= h >> shift if first else 0
    h = (h * m1) & M64
    h ^= h >> shift
    h = (h * m2) & M64
    return h ^ (h >> shift)


def _ring(data):
    return _fmix(_fnv1a(data))


def _placer(key=lambda a, k: "%s#%d" % (a, k), ks=range(REPLICAS), point_hash=_ring,
            name_hash=_ring, enc=None, strict=False, wrap_to_last=False):
    # only the ring is wrong: names land where the rule puts them, so ownerships can be compared
    plain = enc is None and name_hash is _ring and not strict and not wrap_to_last
    enc = enc or (lambda n: n.encode("utf-8"))
    ring = sorted((point_hash(key(a, k).encode("utf-8")), i) for i, a in enumerate(ADDRESSES)
                  for k in ks)
    points = [p for p, _ in ring]
    # the ownership of the ring: the last point of each run of one shard's points
    runs = tuple((p, i) for j, (p, i) in enumerate(ring) if ring[(j + 1) % len(ring)][1] != i)
    keys = {point_hash(key(a, k).encode("utf-8")): key(a, k) for a in ADDRESSES for k in ks}

    def place(name):
        h = name_hash(enc(name))
        j = (bisect.bisect_right if strict else bisect.bisect_left)(points, h)
        if j == len(ring):
            return ring[-1][1] if wrap_to_last else ring[0][1]
        return ring[j][1]
    place.runs = runs if plain else None  # mistakes of the ring alone: compare ownerships
    place.keys = keys
    return place


MUTANTS = {
    "no fmix64 finalizer (FNV-1a alone)": _placer(point_hash=_fnv1a, name_hash=_fnv1a),
    "fmix64 on the points only": _placer(name_hash=_fnv1a),
    "fmix64 on the names only": _placer(point_hash=_fnv1a),
    "fmix64 shifts of 32": _placer(point_hash=lambda d: _fmix(_fnv1a(d), shift=32),
                                   name_hash=lambda d: _fmix(_fnv1a(d), shift=32)),
    "fmix64 constants swapped": _placer(point_hash=lambda d: _fmix(_fnv1a(d), m1=C2, m2=C1),
                                        name_hash=lambda d: _fmix(_fnv1a(d), m1=C2, m2=C1)),
    # (Not listed: fmix64 without its last xor-shift. That step keeps the top 33 bits, so it
    # changes the order only of hashes that agree in those: no name findable by search tells it.)
    "fmix64 without the first xor-shift": _placer(
        point_hash=lambda d: _fmix(_fnv1a(d), first=False),
        name_hash=lambda d: _fmix(_fnv1a(d), first=False)),
    "replicas 1..64": _placer(ks=range(1, REPLICAS + 1)),
    "63 replicas": _placer(ks=range(REPLICAS - 1)),
    "65 replicas": _placer(ks=range(REPLICAS + 1)),
    "key address+k": _placer(key=lambda a, k: "%s%d" % (a, k)),
    "key address:k": _placer(key=lambda a, k: "%s:%d" % (a, k)),
    "key k#address": _placer(key=lambda a, k: "%d#%s" % (k, a)),
    "FNV-1 instead of FNV-1a": _placer(point_hash=lambda d: _fmix(_fnv1(d)),
                                       name_hash=lambda d: _fmix(_fnv1(d))),
    "names as UTF-16": _placer(enc=lambda n: n.encode("utf-16-le")),
    "names one byte per code point": _placer(enc=lambda n: bytes(ord(c) & 0xFF for c in n)),
    "first point > hash": _placer(strict=True),
    "no wrap (largest point)": _placer(wrap_to_last=True),
    "hash mod shards": lambda n: _ring(n.encode("utf-8")) % len(ADDRESSES),
}


def equivalent(wrong):
    """The mistake places every possible name as the rule does, with these addresses (its ring
    has the same runs of owners): no name can tell them apart."""
    return getattr(wrong, "runs", None) is not None and wrong.runs == _placer().runs


def _owner(runs, h):
    j = bisect.bisect_left([p for p, _ in runs], h)
    return runs[j % len(runs)][1]


def _differing(runs_a, runs_b):
    """The hash intervals (lo, hi] where two ring ownerships disagree."""
    bounds = sorted({p for p, _ in runs_a} | {p for p, _ in runs_b})
    out = []
    for j, hi in enumerate(bounds):
        lo = bounds[j - 1] if j > 0 else -1
        if _owner(runs_a, hi) != _owner(runs_b, hi):
            out.append((lo, hi))
    if _owner(runs_a, M64) != _owner(runs_b, M64):  # past the largest boundary: the wrap
        out.append((bounds[-1], M64))
    return out


def probes(existing):
    right = _placer()
    out = []
    for what, wrong in MUTANTS.items():
        if equivalent(wrong):
            raise SystemExit("with these addresses no name tells the rule from: %s" % what)
        if any(right(n) != wrong(n) for n in existing + out):
            continue
        if getattr(wrong, "runs", None) is not None:
            # The names that differ hash into intervals (lo, hi], and hi is a point of one of
            # the two rings: its key "address#k" (or the mistake's key) is such a name.
            found = [key for lo, hi in _differing(right.runs, wrong.runs)
                     for key in (right.keys.get(hi), wrong.keys.get(hi))
                     if key is not None and key not in existing + out and right(key) != wrong(key)]
            if found:
                out.append(found[0])
                continue
        for i in range(200000):
            n = "probe.%d" % i
            if right(n) != wrong(n):
                out.append(n)
                break
        else:
            raise SystemExit("no name tells the rule from: %s" % what)
    return out


def undetected(names_):
    """The mistakes that no name of the list tells apart (empty for the file we write)."""
    right = _placer()
    return [w for w, wrong in MUTANTS.items() if all(right(n) == wrong(n) for n in names_)]


def vectors():
    return {"addresses": ADDRESSES, "names": {n: placement(ADDRESSES, n) for n in names()}}


def render():
    return json.dumps(vectors(), ensure_ascii=False, indent=1) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    text = render()
    missed = undetected(names())
    if missed:
        print("the names do not tell the rule from: %s" % ", ".join(missed))
        return 1
    counts = [0] * len(ADDRESSES)
    for i in vectors()["names"].values():
        counts[i] += 1
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            if f.read() != text:
                print("%s differs from what %s writes" % (args.out, os.path.basename(__file__)))
                return 1
        print("%s is up to date (%d names, per shard %s)" % (args.out, sum(counts), counts))
        return 0
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print("wrote %s (%d names, per shard %s)" % (args.out, sum(counts), counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
