"""orthod — the Python client of the orthod optimizer daemon.

* :class:`Client`: every RPC of orthod.v1 over one connection (register, upload, step, pull,
  list, describe, drop, set_config, checkpoint, health).
* :class:`ShardedClient`: the same over several daemons, parameters placed by consistent hashing
  of their names (:mod:`orthod.placement`).
* :class:`RemoteOptimizer`: a torch.optim-style optimizer (a ``torch.optim.Optimizer`` subclass
  when torch is importable) whose step runs in the daemon; also works on NumPy arrays.
* :class:`OrthodError`: every failure, with the gRPC status code and the daemon's message.
* :mod:`orthod.dtypes`: the wire dtypes f32, bf16, f16, converted bit-exactly like the daemon.

Build the CMake target ``orthod_python_package`` and put ``<build>/python`` on PYTHONPATH: the
package there holds the generated protocol modules (``orthod.v1.orthod_pb2``). docs/CLIENTS.md
has the quickstart.
"""

from . import dtypes, placement
from ._proto import PROTOCOL_VERSION, VERSION_KEY
from .client import Client
from .errors import OrthodError
from .placement import fnv1a64, ring_hash
from .sharded import ShardedClient

__version__ = "0.1.0"

__all__ = ["Client", "ShardedClient", "RemoteOptimizer", "OrthodError", "dtypes", "placement",
           "fnv1a64", "ring_hash", "PROTOCOL_VERSION", "VERSION_KEY", "__version__"]


def __getattr__(name):
    # RemoteOptimizer imports torch when it is installed (seconds): only on first use.
    if name == "RemoteOptimizer":
        from .optim import RemoteOptimizer
        return RemoteOptimizer
    if name == "optim":
        from . import optim
        return optim
    raise AttributeError("module 'orthod' has no attribute %r" % name)
