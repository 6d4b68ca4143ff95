//! One error type for every layer: a wire-stable [`ErrorCode`] plus a message.
//!
//! Remote errors cross the wire as `{code, message}`; codes are numbers that
//! never change meaning, and a code this build does not know (sent by a newer
//! peer) survives as [`ErrorCode::Other`].

use std::fmt;

/// Wire-stable error codes. The numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The op is not in the whitelist.
    UnknownOp,
    /// An argument is missing, unexpected, or of the wrong type; the message
    /// names the op's signature.
    BadArgument,
    /// A tensor is malformed: unknown dtype, data length not equal to shape ×
    /// itemsize, strides out of bounds, dtype or shape unsupported by the op.
    InvalidTensor,
    /// The backend (libtorch) failed while running the request.
    Backend,
    /// A frame, header or tensor is larger than the peer accepts.
    PayloadTooLarge,
    /// The peer broke the protocol (undecodable header, unexpected frame).
    Protocol,
    /// No protocol version in common.
    UnsupportedVersion,
    /// Authentication is required or failed.
    Unauthenticated,
    /// The named model is not loaded.
    ModelNotFound,
    /// A model failed to load or run.
    Model,
    /// The request was cancelled.
    Cancelled,
    /// The request did not complete in time (reported by the client).
    Timeout,
    /// The connection failed or closed (reported by the client).
    Connection,
    /// The server is at capacity; try again later.
    Busy,
    /// The request kind or feature is not supported by this server.
    Unsupported,
    /// A bug on the reporting side.
    Internal,
    /// A server-resident tensor that this connection cannot use: unknown,
    /// already freed, or another connection's (unshared) handle.
    UnknownTensor,
    /// A cap on server-resident tensors (their number or bytes, per
    /// connection or for the server) would be exceeded.
    LimitReached,
    /// A code this build does not know, from a newer peer.
    Other(u16),
}

impl ErrorCode {
    /// The wire number of this code.
    pub const fn as_u16(self) -> u16 {
        match self {
            ErrorCode::UnknownOp => 1,
            ErrorCode::BadArgument => 2,
            ErrorCode::InvalidTensor => 3,
            ErrorCode::Backend => 4,
            ErrorCode::PayloadTooLarge => 5,
            ErrorCode::Protocol => 6,
            ErrorCode::UnsupportedVersion => 7,
            ErrorCode::Unauthenticated => 8,
            ErrorCode::ModelNotFound => 9,
            ErrorCode::Model => 10,
            ErrorCode::Cancelled => 11,
            ErrorCode::Timeout => 12,
            ErrorCode::Connection => 13,
            ErrorCode::Busy => 14,
            ErrorCode::Unsupported => 15,
            ErrorCode::Internal => 16,
            ErrorCode::UnknownTensor => 17,
            ErrorCode::LimitReached => 18,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for a wire number; unknown numbers become [`ErrorCode::Other`].
    pub const fn from_u16(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::UnknownOp,
            2 => ErrorCode::BadArgument,
            3 => ErrorCode::InvalidTensor,
            4 => ErrorCode::Backend,
            5 => ErrorCode::PayloadTooLarge,
            6 => ErrorCode::Protocol,
            7 => ErrorCode::UnsupportedVersion,
            8 => ErrorCode::Unauthenticated,
            9 => ErrorCode::ModelNotFound,
            10 => ErrorCode::Model,
            11 => ErrorCode::Cancelled,
            12 => ErrorCode::Timeout,
            13 => ErrorCode::Connection,
            14 => ErrorCode::Busy,
            15 => ErrorCode::Unsupported,
            16 => ErrorCode::Internal,
            17 => ErrorCode::UnknownTensor,
            18 => ErrorCode::LimitReached,
            n => ErrorCode::Other(n),
        }
    }

    /// A short snake_case name (`"unknown_op"`, `"bad_argument"`, ...), used in
    /// logs, JSON output and the Python exception mapping.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadArgument => "bad_argument",
            ErrorCode::InvalidTensor => "invalid_tensor",
            ErrorCode::Backend => "backend",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Protocol => "protocol",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::Model => "model",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Connection => "connection",
            ErrorCode::Busy => "busy",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal",
            ErrorCode::UnknownTensor => "unknown_tensor",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::Other(_) => "other",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Other(n) => write!(f, "error code {n}"),
            c => f.write_str(c.name()),
        }
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.as_u16())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ErrorCode::from_u16(u16::deserialize(d)?))
    }
}

/// An error with a stable code and a human-readable message.
///
/// This is what every mymps API returns and what crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Error {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// What happened, for a human.
    pub message: String,
}

impl Error {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// [`ErrorCode::BadArgument`].
    pub fn bad_argument(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::BadArgument, message)
    }

    /// [`ErrorCode::InvalidTensor`].
    pub fn invalid_tensor(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::InvalidTensor, message)
    }

    /// [`ErrorCode::Backend`].
    pub fn backend(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Backend, message)
    }

    /// [`ErrorCode::Protocol`].
    pub fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Protocol, message)
    }

    /// [`ErrorCode::Internal`].
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Internal, message)
    }

    /// [`ErrorCode::Connection`].
    pub fn connection(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Connection, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::TimedOut {
            Error::new(ErrorCode::Timeout, e.to_string())
        } else {
            Error::connection(e.to_string())
        }
    }
}

/// `s` cut to at most `max` characters (with an ellipsis and the full
/// length when cut), for quoting client-sent names in error messages
/// without echoing megabytes back.
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(s),
        Some((at, _)) => std::borrow::Cow::Owned(format!("{}… ({} bytes)", &s[..at], s.len())),
    }
}

/// The first line of `msg`, at most 300 characters: what a client is told
/// of a panic or a library's error whose full text (a C++ backtrace, paths
/// of the server's install) is for the server's log only.
pub fn brief(msg: &str) -> String {
    let first = msg
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    clip(first, 300).into_owned()
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_keeps_the_first_line() {
        let m =
            "\n  shape mismatch: 2 vs 3\nException raised from foo at /opt/x.cpp:1\nframe #0: 0x7f";
        assert_eq!(brief(m), "shape mismatch: 2 vs 3");
        assert!(brief(&"x".repeat(5000)).len() < 320);
    }

    #[test]
    fn clip_keeps_short_strings_and_cuts_long_ones() {
        assert_eq!(clip("add", 64), "add");
        let long = "é".repeat(100);
        let c = clip(&long, 4);
        assert!(c.starts_with("éééé…"), "{c}");
        assert!(c.ends_with("(200 bytes)"), "{c}");
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_survive() {
        for n in 1..=16 {
            assert_eq!(ErrorCode::from_u16(n).as_u16(), n);
            assert!(!matches!(ErrorCode::from_u16(n), ErrorCode::Other(_)));
        }
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Other(999));
        assert_eq!(ErrorCode::Other(999).as_u16(), 999);
    }
}
