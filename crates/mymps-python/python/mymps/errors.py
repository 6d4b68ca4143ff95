"""The exceptions of the mymps client.

Every error is a :class:`MympsError`. The server reports failures as a
wire-stable error code plus a message; each code has its own subclass, and
the exception carries both:

>>> try:
...     client.exec("no_such_op", {})
... except UnknownOpError as e:
...     print(e.code, e.message)
unknown_op unknown op 'no_such_op' ...

Where a builtin exception means the same thing, the class inherits it too:
:class:`MympsTimeoutError` is a :class:`TimeoutError`,
:class:`MympsConnectionError` a :class:`ConnectionError`,
:class:`BadArgumentError` and :class:`InvalidTensorError` are
:class:`ValueError`, :class:`AuthenticationError` is a :class:`PermissionError`,
so code that catches the builtin classes keeps working.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
    "MympsError",
    "UnknownOpError",
    "BadArgumentError",
    "InvalidTensorError",
    "OpError",
    "BackendError",
    "PayloadTooLargeError",
    "ProtocolError",
    "UnsupportedVersionError",
    "AuthenticationError",
    "ModelError",
    "ModelNotFoundError",
    "CancelledError",
    "MympsTimeoutError",
    "MympsConnectionError",
    "BusyError",
    "UnsupportedError",
    "InternalError",
    "UnknownTensorError",
    "LimitReachedError",
]


class MympsError(Exception):
    """Base class of every mymps error.

    Attributes:
        message: what happened, as the server (or the client) said it.
        code: the error code's name (``"bad_argument"``, ``"backend"``, ...;
            ``"other"`` for a code this client does not know).
        code_number: the wire-stable number of the code.
    """

    #: The error code's name; each subclass sets its own.
    code: str = "other"
    #: The wire-stable number of the code (0 when there is none).
    code_number: int = 0

    def __init__(self, message: str = "", *, code: Optional[str] = None,
                 code_number: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if code_number is not None:
            self.code_number = code_number

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"

    def __reduce__(self):  # picklable across processes
        return (_from_code, (self.code, self.code_number, self.message))


class UnknownOpError(MympsError):
    """The op is not in the server's whitelist (see ``list_ops()``)."""

    code = "unknown_op"
    code_number = 1


class BadArgumentError(MympsError, ValueError):
    """An argument is missing, unexpected or of the wrong type; the message
    names the op's signature. Also raised by the client for arguments it
    cannot send (an unsupported kwarg type, an input that is not an array)."""

    code = "bad_argument"
    code_number = 2


class InvalidTensorError(MympsError, ValueError):
    """A tensor is malformed or of a dtype or shape the op (or the client)
    does not support, e.g. ``uint16``, ``object``, or ``bfloat16`` results
    without ``ml_dtypes`` installed."""

    code = "invalid_tensor"
    code_number = 3


class OpError(MympsError):
    """The op failed on the server (a libtorch error, e.g. shapes that do
    not match in ``matmul``). The message is libtorch's."""

    code = "backend"
    code_number = 4


#: Another name of :class:`OpError`, after the error code ``backend``.
BackendError = OpError


class PayloadTooLargeError(MympsError):
    """The request carries more tensor bytes (or tensors) than the server
    accepts; the message says its limits."""

    code = "payload_too_large"
    code_number = 5


class ProtocolError(MympsError):
    """A peer broke the protocol (undecodable header, unexpected frame)."""

    code = "protocol"
    code_number = 6


class UnsupportedVersionError(ProtocolError):
    """Client and server have no protocol version in common."""

    code = "unsupported_version"
    code_number = 7


class AuthenticationError(MympsError, PermissionError):
    """The server requires authentication, or the token was refused."""

    code = "unauthenticated"
    code_number = 8


class ModelError(MympsError):
    """A model failed to load or run."""

    code = "model"
    code_number = 10


class ModelNotFoundError(ModelError):
    """The named model is not loaded."""

    code = "model_not_found"
    code_number = 9


class CancelledError(MympsError):
    """The request was cancelled."""

    code = "cancelled"
    code_number = 11


class MympsTimeoutError(MympsError, TimeoutError):
    """No reply within the client's ``timeout`` (connecting included). The
    client stays usable; a late reply is discarded."""

    code = "timeout"
    code_number = 12


class MympsConnectionError(MympsError, ConnectionError):
    """The connection could not be made, was lost, or the client was
    closed. A client whose connection is lost stays closed: make a new one."""

    code = "connection"
    code_number = 13


class BusyError(MympsError):
    """The server is at capacity; try again later."""

    code = "busy"
    code_number = 14


class UnsupportedError(MympsError):
    """The request kind, feature or transport is not supported (by this
    server, or by this build of the client)."""

    code = "unsupported"
    code_number = 15


class InternalError(MympsError):
    """A bug on the side that reports it."""

    code = "internal"
    code_number = 16


class UnknownTensorError(MympsError, KeyError):
    """A server-resident tensor this connection cannot use: unknown, already
    freed, or another connection's handle that was not shared."""

    code = "unknown_tensor"
    code_number = 17

    def __str__(self) -> str:  # KeyError would quote the message
        return MympsError.__str__(self)


class LimitReachedError(MympsError):
    """A cap on server-resident tensors (their number or bytes, for this
    connection or the whole server) would be exceeded: free some first."""

    code = "limit_reached"
    code_number = 18


_BY_CODE: Dict[str, Type[MympsError]] = {
    cls.code: cls
    for cls in (
        UnknownOpError,
        BadArgumentError,
        InvalidTensorError,
        OpError,
        PayloadTooLargeError,
        ProtocolError,
        UnsupportedVersionError,
        AuthenticationError,
        ModelNotFoundError,
        ModelError,
        CancelledError,
        MympsTimeoutError,
        MympsConnectionError,
        BusyError,
        UnsupportedError,
        InternalError,
        UnknownTensorError,
        LimitReachedError,
    )
}


def _from_code(code: str, code_number: int, message: str) -> MympsError:
    """The exception for an error code (used by the native module)."""
    cls = _BY_CODE.get(code, MympsError)
    return cls(message, code=code, code_number=code_number)
