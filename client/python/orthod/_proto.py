"""The generated protocol modules (protoc + grpc_python_plugin, built into <build>/python/orthod).

``orthod.v1.orthod_pb2`` is the API of proto/orthod/v1/orthod.proto; the health stubs are imported
only when a health call is made (``health()``), because their messages are registered under the
standard names ``grpc.health.v1.*`` in protobuf's default pool.
"""

try:
    from .v1 import orthod_pb2 as pb
    from .v1 import orthod_pb2_grpc as pb_grpc
except ImportError as _e:  # pragma: no cover - a source checkout without the build
    raise ImportError(
        "orthod: the generated protocol modules (orthod.v1.orthod_pb2) are missing (%s); build "
        "the CMake target orthod_python_package and put <build>/python on PYTHONPATH, not the "
        "source directory client/python" % _e) from None

__all__ = ["pb", "pb_grpc", "PROTOCOL_VERSION", "VERSION_KEY", "METADATA", "health_modules"]

PROTOCOL_VERSION = "1"
VERSION_KEY = "orthod-protocol-version"
METADATA = ((VERSION_KEY, PROTOCOL_VERSION),)


def health_modules():
    """(health_pb2, health_pb2_grpc), imported on first use."""
    from .health.v1 import health_pb2, health_pb2_grpc
    return health_pb2, health_pb2_grpc
