//! ZMTP 3, the ZeroMQ wire protocol (rfc.zeromq.org 23/ZMTP 3.0 and
//! 37/ZMTP 3.1), as the server speaks it: the greeting, frame headers, and
//! the commands of the NULL mechanism and of heartbeats. No I/O.
//!
//! ```text
//! greeting   0xFF, 8 bytes of padding, 0x7F, major 3, minor, mechanism
//!            (20 bytes, NUL-padded), as-server (1 byte), 31 bytes of filler
//! frame      flags (bit 0 MORE, bit 1 LONG, bit 2 COMMAND; bits 3-7 zero),
//!            size (1 byte, or 8 bytes big-endian when LONG), body
//! command    one frame: name length (1 byte), name, data
//! READY      properties: name length (1 byte), name, value length (4 bytes
//!            big-endian), value
//! ERROR      reason length (1 byte), reason
//! PING       TTL (2 bytes, tenths of a second), context (0-16 bytes)
//! PONG       the PING's context
//! ```

use std::fmt;

/// Bytes of a ZMTP 3 greeting.
pub const GREETING_LEN: usize = 64;

/// The server's greeting: ZMTP 3.1, the NULL mechanism, not as-server (the
/// NULL mechanism has no roles).
pub const GREETING: [u8; GREETING_LEN] = {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 1;
    g[12] = b'N';
    g[13] = b'U';
    g[14] = b'L';
    g[15] = b'L';
    g
};

/// The largest command body the server reads: a READY (socket type,
/// identity, application metadata) or a heartbeat, never more. A larger
/// command ends the connection before its body is read.
pub const MAX_COMMAND: u64 = 64 * 1024;

const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

/// Why the peer cannot be spoken to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the peer's greeting: ZMTP 3.0 or later with the NULL mechanism.
/// `Err((reason, send_error))`: whether the peer speaks ZMTP 3 (then an
/// ERROR command can tell it why before the connection closes).
pub fn check_greeting(g: &[u8; GREETING_LEN]) -> Result<(), (Refusal, bool)> {
    // Older peers: ZMTP 1.0 begins with a length, 2.0 has major 1 or 2.
    if g[0] != 0xFF || g[9] & 0x01 == 0 {
        return Err((
            Refusal("the peer does not speak ZMTP 3 (not ZeroMQ, or ZMTP 1.0)".into()),
            false,
        ));
    }
    if g[10] < 3 {
        return Err((
            Refusal(format!(
                "the peer speaks ZMTP {}.0 (libzmq before 4.0); the server needs ZMTP 3",
                g[10] + 1
            )),
            false,
        ));
    }
    let mechanism = &g[12..32];
    let name_len = mechanism.iter().position(|&b| b == 0).unwrap_or(20);
    if &mechanism[..name_len] != b"NULL" || mechanism[name_len..].iter().any(|&b| b != 0) {
        let name = String::from_utf8_lossy(&mechanism[..name_len]).into_owned();
        return Err((
            Refusal(format!(
                "mymps serves ZeroMQ without a security mechanism (NULL); the peer asked for '{name}' (PLAIN and CURVE are not served: authenticate with the Hello's token)"
            )),
            true,
        ));
    }
    Ok(())
}

/// A frame's flags and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// More frames of the same message follow.
    pub more: bool,
    /// A command, not a message frame.
    pub command: bool,
    /// Bytes of the body.
    pub size: u64,
}

impl Header {
    /// A message frame's header.
    pub fn message(size: u64, more: bool) -> Header {
        Header {
            more,
            command: false,
            size,
        }
    }

    /// Decodes the header at the front of `buf`: `Ok(None)` if more bytes
    /// are needed (`need` says how many in all), else the header and its
    /// length.
    pub fn decode(buf: &[u8]) -> Result<Result<(Header, usize), usize>, Refusal> {
        let Some(&flags) = buf.first() else {
            return Ok(Err(2));
        };
        if flags & !(MORE | LONG | COMMAND) != 0 {
            return Err(Refusal(format!(
                "a ZMTP frame with reserved flag bits set ({flags:#04x})"
            )));
        }
        let command = flags & COMMAND != 0;
        if command && flags & MORE != 0 {
            return Err(Refusal("a ZMTP command with the MORE flag".into()));
        }
        let (size, len) = if flags & LONG != 0 {
            if buf.len() < 9 {
                return Ok(Err(9));
            }
            let size = u64::from_be_bytes(buf[1..9].try_into().expect("8 bytes"));
            if size > i64::MAX as u64 {
                return Err(Refusal(format!("a ZMTP frame of {size} bytes")));
            }
            (size, 9)
        } else {
            if buf.len() < 2 {
                return Ok(Err(2));
            }
            (buf[1] as u64, 2)
        };
        Ok(Ok((
            Header {
                more: flags & MORE != 0,
                command,
                size,
            },
            len,
        )))
    }

    /// Appends the encoded header to `out` (short when the body fits in
    /// one byte of size).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.more {
            flags |= MORE;
        }
        if self.command {
            flags |= COMMAND;
        }
        match u8::try_from(self.size) {
            Ok(n) => out.extend_from_slice(&[flags, n]),
            Err(_) => {
                out.push(flags | LONG);
                out.extend_from_slice(&self.size.to_be_bytes());
            }
        }
    }
}

/// A command the server understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// The NULL mechanism's handshake, with the peer's socket type (if it
    /// said).
    Ready {
        /// The `Socket-Type` property.
        socket_type: Option<&'a [u8]>,
    },
    /// The peer refuses the connection.
    Error {
        /// Why, as it says.
        reason: &'a [u8],
    },
    /// A heartbeat asking for a PONG with this context.
    Ping {
        /// Up to 16 bytes to send back.
        context: &'a [u8],
    },
    /// A heartbeat's answer.
    Pong,
    /// Any other command (SUBSCRIBE, CANCEL, ...): not for a ROUTER.
    Other {
        /// Its name.
        name: &'a [u8],
    },
}

/// Parses a command body.
pub fn parse_command(body: &[u8]) -> Result<Command<'_>, Refusal> {
    let bad = |what: &str| Refusal(format!("a malformed ZMTP command: {what}"));
    let (&name_len, rest) = body.split_first().ok_or_else(|| bad("empty"))?;
    let name_len = name_len as usize;
    if name_len == 0 || rest.len() < name_len {
        return Err(bad("its name is cut short"));
    }
    let (name, data) = rest.split_at(name_len);
    Ok(match name {
        b"READY" => Command::Ready {
            socket_type: ready_socket_type(data).ok_or_else(|| bad("READY's properties"))?,
        },
        b"ERROR" => {
            let (&len, reason) = data.split_first().unwrap_or((&0, &[]));
            Command::Error {
                reason: &reason[..(len as usize).min(reason.len())],
            }
        }
        b"PING" => {
            if data.len() < 2 {
                return Err(bad("PING without its TTL"));
            }
            let context = &data[2..];
            Command::Ping {
                context: &context[..context.len().min(16)],
            }
        }
        b"PONG" => Command::Pong,
        _ => Command::Other { name },
    })
}

/// The `Socket-Type` of READY's properties (names case-insensitive);
/// `None` if the properties are malformed.
fn ready_socket_type(mut data: &[u8]) -> Option<Option<&[u8]>> {
    let mut socket_type = None;
    while !data.is_empty() {
        let (&name_len, rest) = data.split_first()?;
        let name_len = name_len as usize;
        if name_len == 0 || rest.len() < name_len + 4 {
            return None;
        }
        let (name, rest) = rest.split_at(name_len);
        let value_len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let rest = &rest[4..];
        if rest.len() < value_len {
            return None;
        }
        let (value, rest) = rest.split_at(value_len);
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            socket_type = Some(value);
        }
        data = rest;
    }
    Some(socket_type)
}

/// A command frame (header and body) named `name` carrying `data`.
fn command(name: &[u8], data: &[u8]) -> Vec<u8> {
    let body = 1 + name.len() + data.len();
    let mut out = Vec::with_capacity(9 + body);
    Header {
        more: false,
        command: true,
        size: body as u64,
    }
    .encode(&mut out);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(data);
    out
}

/// The server's READY: `Socket-Type: ROUTER`.
pub fn ready() -> Vec<u8> {
    let mut props = vec![11];
    props.extend_from_slice(b"Socket-Type");
    props.extend_from_slice(&6u32.to_be_bytes());
    props.extend_from_slice(b"ROUTER");
    command(b"READY", &props)
}

/// An ERROR command with `reason` (cut to 255 bytes).
pub fn error(reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(255)];
    let mut data = vec![reason.len() as u8];
    data.extend_from_slice(reason);
    command(b"ERROR", &data)
}

/// The PONG answering a PING with `context`.
pub fn pong(context: &[u8]) -> Vec<u8> {
    command(b"PONG", context)
}

/// How the server frames messages for a peer of this socket type, or why
/// it cannot serve it. A ROUTER's peers are DEALER, REQ and ROUTER sockets
/// (37/ZMTP); a DEALER's and a ROUTER's messages reach the server as they
/// are, a REQ's behind an empty delimiter part (which replies carry too).
pub fn peer_kind(socket_type: Option<&[u8]>) -> Result<PeerKind, Refusal> {
    match socket_type {
        None | Some(b"DEALER") | Some(b"ROUTER") => Ok(PeerKind::Dealer),
        Some(b"REQ") => Ok(PeerKind::Req),
        Some(other) => Err(Refusal(format!(
            "a ZeroMQ {} socket cannot talk to mymps (a ROUTER): connect a DEALER (or REQ) socket",
            String::from_utf8_lossy(&other[..other.len().min(32)])
        ))),
    }
}

/// What kind of socket the peer is, as far as framing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// Messages as they are (DEALER, ROUTER).
    Dealer,
    /// Messages behind an empty delimiter part (REQ).
    Req,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_are_checked() {
        assert_eq!(check_greeting(&GREETING), Ok(()));
        // libzmq's first ten bytes carry its identity's length + 1 in the
        // padding, for ZMTP 1.0 peers: no meaning, not checked.
        let mut libzmq = GREETING;
        libzmq[8] = 1;
        libzmq[11] = 0;
        assert_eq!(check_greeting(&libzmq), Ok(()));
        let mut plain = GREETING;
        plain[12..17].copy_from_slice(b"PLAIN");
        let (why, tell) = check_greeting(&plain).unwrap_err();
        assert!(why.0.contains("'PLAIN'") && tell, "{why}");
        let mut v2 = GREETING;
        v2[10] = 1;
        assert!(!check_greeting(&v2).unwrap_err().1);
        let mut v1 = GREETING;
        v1[0] = 5;
        assert!(!check_greeting(&v1).unwrap_err().1);
    }

    #[test]
    fn headers_round_trip_short_and_long() {
        for (size, more, len) in [
            (0u64, false, 2),
            (255, true, 2),
            (256, false, 9),
            (1 << 40, true, 9),
        ] {
            let h = Header::message(size, more);
            let mut b = Vec::new();
            h.encode(&mut b);
            assert_eq!(b.len(), len);
            for cut in 0..len {
                assert!(Header::decode(&b[..cut]).unwrap().is_err(), "{cut}");
            }
            assert_eq!(Header::decode(&b).unwrap(), Ok((h, len)));
        }
        assert!(Header::decode(&[0x08, 0]).is_err());
        assert!(Header::decode(&[0x05, 0]).is_err());
        let mut huge = vec![0x02];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(Header::decode(&huge).is_err());
    }

    #[test]
    fn commands_parse_and_build() {
        // What libzmq's DEALER sends: its socket type and an empty identity.
        let mut props = vec![11];
        props.extend_from_slice(b"Socket-Type");
        props.extend_from_slice(&6u32.to_be_bytes());
        props.extend_from_slice(b"DEALER");
        props.push(8);
        props.extend_from_slice(b"Identity");
        props.extend_from_slice(&0u32.to_be_bytes());
        let ready = command(b"READY", &props);
        let (h, n) = Header::decode(&ready).unwrap().unwrap();
        assert!(h.command && !h.more);
        assert_eq!(
            parse_command(&ready[n..]).unwrap(),
            Command::Ready {
                socket_type: Some(b"DEALER")
            }
        );
        // Our own READY parses the same way.
        let ours = super::ready();
        assert_eq!(
            parse_command(&ours[2..]).unwrap(),
            Command::Ready {
                socket_type: Some(b"ROUTER")
            }
        );
        // Truncated properties are refused.
        assert!(parse_command(&ready[n..ready.len() - 1]).is_err());
        assert!(parse_command(&ready[n..n + 20]).is_err());
        let ping = command(b"PING", b"\x00\x64ctx");
        assert_eq!(
            parse_command(&ping[2..]).unwrap(),
            Command::Ping { context: b"ctx" }
        );
        assert_eq!(pong(b"ctx"), command(b"PONG", b"ctx"));
        let e = error("no");
        assert_eq!(
            parse_command(&e[2..]).unwrap(),
            Command::Error { reason: b"no" }
        );
        let long = error(&"x".repeat(300));
        let (h, n) = Header::decode(&long).unwrap().unwrap();
        assert_eq!(h.size as usize, long.len() - n);
        assert!(matches!(
            parse_command(&long[n..]).unwrap(),
            Command::Error { reason } if reason.len() == 255
        ));
        assert!(parse_command(&[]).is_err());
        assert!(parse_command(&[9, b'P']).is_err());
    }

    #[test]
    fn socket_types_decide_the_framing() {
        assert_eq!(peer_kind(Some(b"DEALER")), Ok(PeerKind::Dealer));
        assert_eq!(peer_kind(Some(b"ROUTER")), Ok(PeerKind::Dealer));
        assert_eq!(peer_kind(None), Ok(PeerKind::Dealer));
        assert_eq!(peer_kind(Some(b"REQ")), Ok(PeerKind::Req));
        let e = peer_kind(Some(b"PUB")).unwrap_err();
        assert!(e.0.contains("PUB socket"), "{e}");
        assert!(error(&e.0).len() < 300);
    }
}
