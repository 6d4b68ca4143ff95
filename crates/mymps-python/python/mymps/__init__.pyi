from . import errors as errors
from ._native import (
    DEFAULT_HOST as DEFAULT_HOST,
    DEFAULT_PORT as DEFAULT_PORT,
    HealthInfo as HealthInfo,
    MympsClient as MympsClient,
    OpInfo as OpInfo,
    StatsInfo as StatsInfo,
    __version__ as __version__,
    transports as transports,
)
from .errors import (
    AuthenticationError as AuthenticationError,
    BackendError as BackendError,
    BadArgumentError as BadArgumentError,
    BusyError as BusyError,
    CancelledError as CancelledError,
    InternalError as InternalError,
    InvalidTensorError as InvalidTensorError,
    ModelError as ModelError,
    ModelNotFoundError as ModelNotFoundError,
    MympsConnectionError as MympsConnectionError,
    MympsError as MympsError,
    MympsTimeoutError as MympsTimeoutError,
    OpError as OpError,
    PayloadTooLargeError as PayloadTooLargeError,
    ProtocolError as ProtocolError,
    UnknownOpError as UnknownOpError,
    UnsupportedError as UnsupportedError,
    UnsupportedVersionError as UnsupportedVersionError,
)

__all__: list[str]
