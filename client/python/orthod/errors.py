"""OrthodError: a failed call, with the daemon's status code and message."""

from typing import Optional

import grpc

__all__ = ["OrthodError"]


class OrthodError(Exception):
    """A call to orthod failed.

    ``code`` is the :class:`grpc.StatusCode` (from the daemon, from gRPC for transport problems
    such as ``UNAVAILABLE``, or from the client itself: ``DATA_LOSS`` for a reply that does not
    cover a tensor, ``DEADLINE_EXCEEDED`` for a step wait longer than the client's timeout);
    ``details`` is the message, e.g. ``"parameter 'w' is not registered"``. A daemon with
    ``--auth-tokens`` answers ``UNAUTHENTICATED`` for a missing or unknown token and
    ``PERMISSION_DENIED`` for a token without the right for the parameter; TLS failures (an
    untrusted certificate, a refused client certificate) reach the client as ``UNAVAILABLE``.
    ``str(error)`` is ``"NOT_FOUND: parameter 'w' is not registered"``.
    """

    def __init__(self, code: grpc.StatusCode, details: str = ""):
        self.code = code
        self.details = details or ""
        super().__init__("%s: %s" % (code.name, self.details))

    def __reduce__(self):  # picklable (e.g. across multiprocessing)
        return (type(self), (self.code, self.details))

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError, context: Optional[str] = None) -> "OrthodError":
        """Wrap a :class:`grpc.RpcError` (``context``, if given, is prefixed to the message)."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = (err.details() if hasattr(err, "details") else str(err)) or ""
        if context:
            details = "%s: %s" % (context, details)
        return cls(code or grpc.StatusCode.UNKNOWN, details)
