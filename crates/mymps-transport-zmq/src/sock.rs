//! What the server's and the client's socket threads share: the process'
//! ZeroMQ context, the wake-up of a thread blocked in `zmq_poll`, raw
//! socket options, and zero-copy conversions between `zmq::Message` and
//! `Bytes`.

use std::io;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

/// The ZeroMQ context of the process: its I/O threads are shared by every
/// socket of every listener and client, so a client costs one thread (its
/// socket thread), not three.
pub fn context() -> &'static zmq::Context {
    static CTX: OnceLock<zmq::Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = zmq::Context::new();
        let _ = ctx.set_io_threads(2);
        ctx
    })
}

/// A unique `inproc://` address.
pub fn inproc(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "inproc://mymps-zmq-{what}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `zmq::Error` → `io::Error`.
pub fn io_err(e: zmq::Error) -> io::Error {
    io::Error::other(format!("zeromq: {e}"))
}

/// Wakes a socket thread that waits in `zmq_poll`: a message on an inproc
/// PAIR socket that the thread polls beside its own. Wake-ups coalesce: at
/// most one is outstanding until the thread has taken it.
pub struct Waker {
    socket: Mutex<zmq::Socket>,
    pending: AtomicBool,
}

impl Waker {
    /// A waker and the socket the thread polls (bound to a fresh inproc
    /// address and connected to before this returns).
    pub fn new() -> io::Result<(Waker, zmq::Socket)> {
        let ctx = context();
        let addr = inproc("wake");
        let rx = ctx.socket(zmq::PAIR).map_err(io_err)?;
        rx.set_linger(0).map_err(io_err)?;
        rx.bind(&addr).map_err(io_err)?;
        let tx = ctx.socket(zmq::PAIR).map_err(io_err)?;
        tx.set_linger(0).map_err(io_err)?;
        tx.connect(&addr).map_err(io_err)?;
        Ok((
            Waker {
                socket: Mutex::new(tx),
                pending: AtomicBool::new(false),
            },
            rx,
        ))
    }

    /// Wakes the thread (never blocks).
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let s = self.socket.lock().unwrap_or_else(|p| p.into_inner());
            let _ = s.send(&b""[..], zmq::DONTWAIT);
        }
    }

    /// Thread side: takes the wake-ups that arrived on `rx`. Call before
    /// draining the work the wake-ups announce, so that none is lost.
    pub fn taken(&self, rx: &zmq::Socket) {
        while rx.recv_msg(zmq::DONTWAIT).is_ok() {}
        self.pending.store(false, Ordering::Release);
    }
}

/// Sets an integer socket option that the `zmq` crate has no setter for.
pub fn set_int_option(socket: &mut zmq::Socket, option: u32, value: i32) -> io::Result<()> {
    // SAFETY: the socket pointer is live for the call (we borrow the socket
    // mutably) and the value is a c_int as libzmq expects for these options.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            option as c_int,
            (&value as *const i32).cast::<c_void>(),
            std::mem::size_of::<i32>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Stops `socket`'s monitor. Call it before the socket and the monitor's
/// reader close: libzmq 4.3 stops a monitor only when the socket is
/// destroyed, after the reaper has torn its connections down, and an I/O
/// thread that reports one of those disconnects to a monitor whose reader
/// is gone blocks for good (and with it every connection it serves).
pub fn stop_monitor(socket: &mut zmq::Socket) {
    // SAFETY: the socket pointer is live for the call; a null endpoint
    // stops the monitor (zmq_socket_monitor's documented use).
    unsafe {
        zmq_sys::zmq_socket_monitor(socket.as_mut_ptr(), std::ptr::null(), 0);
    }
}

/// A received message, owned by the `Bytes` that views it.
struct Received(zmq::Message);

impl AsRef<[u8]> for Received {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A received part as `Bytes`, without copying: the bytes stay in
/// libzmq's buffer, which is released when the last `Bytes` goes.
pub fn message_to_bytes(msg: zmq::Message) -> Bytes {
    if msg.is_empty() {
        return Bytes::new();
    }
    Bytes::from_owner(Received(msg))
}

unsafe extern "C" fn drop_boxed_bytes(_data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the `Box<Bytes>` leaked in `send_bytes`, and libzmq
    // calls this exactly once, when it no longer needs the data.
    drop(unsafe { Box::from_raw(hint.cast::<Bytes>()) });
}

/// Parts up to this size are copied into the message (cheaper than the
/// allocation and callback of a zero-copy message).
const COPY_BELOW: usize = 1024;

/// Sends `bytes` as one part without copying it: libzmq reads the bytes
/// where they are and drops the `Bytes` (from one of its I/O threads) once
/// they are on the wire. Small parts are copied.
pub fn send_bytes(socket: &mut zmq::Socket, bytes: Bytes, flags: i32) -> zmq::Result<()> {
    if bytes.len() < COPY_BELOW {
        return socket.send(&bytes[..], flags);
    }
    let len = bytes.len();
    let data = bytes.as_ptr().cast_mut().cast::<c_void>();
    let boxed = Box::into_raw(Box::new(bytes));
    let mut msg = zmq_sys::zmq_msg_t { __: [0; 64] };
    // SAFETY: `msg` is initialised by `zmq_msg_init_data` before use and
    // closed when the send fails (on success libzmq owns it). `data` stays
    // valid while `boxed` lives; once `zmq_msg_init_data` succeeded, libzmq
    // only reads it and frees `boxed` through `drop_boxed_bytes` exactly
    // once; if it failed, `boxed` is ours to free.
    unsafe {
        let rc = zmq_sys::zmq_msg_init_data(
            &mut msg,
            data,
            len,
            Some(drop_boxed_bytes),
            boxed.cast::<c_void>(),
        );
        if rc != 0 {
            let e = zmq::Error::from_raw(zmq_sys::zmq_errno());
            drop(Box::from_raw(boxed));
            return Err(e);
        }
        if zmq_sys::zmq_msg_send(&mut msg, socket.as_mut_ptr(), flags as c_int) == -1 {
            let e = zmq::Error::from_raw(zmq_sys::zmq_errno());
            // Closing releases the data through `drop_boxed_bytes`.
            zmq_sys::zmq_msg_close(&mut msg);
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cross_a_socket_pair_in_place() {
        let ctx = context();
        let addr = inproc("test");
        let a = ctx.socket(zmq::PAIR).unwrap();
        a.bind(&addr).unwrap();
        let mut a = a;
        let b = ctx.socket(zmq::PAIR).unwrap();
        b.connect(&addr).unwrap();
        let payload = Bytes::from((0..1u32 << 20).map(|i| i as u8).collect::<Vec<u8>>());
        send_bytes(&mut a, payload.clone(), zmq::SNDMORE).unwrap();
        send_bytes(&mut a, Bytes::from_static(b"small"), 0).unwrap();
        let got = message_to_bytes(b.recv_msg(0).unwrap());
        // inproc hands the message over as it is: the receiver sees the
        // sender's buffer, so neither side copied it.
        assert_eq!(got.as_ptr(), payload.as_ptr());
        assert_eq!(got, payload);
        let small = message_to_bytes(b.recv_msg(0).unwrap());
        assert_eq!(&small[..], b"small");
        drop(payload);
        drop(got);
    }
}
