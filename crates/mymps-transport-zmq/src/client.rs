//! The client side: one DEALER socket, owned by one thread (the pump),
//! behind a [`Connection`].
//!
//! The DEALER does not reconnect: a connection that drops (the server
//! stopped, the network failed, or libzmq's heartbeats went unanswered) ends
//! the `Connection` as a TCP connection would, and requests waiting on it
//! fail. The pump watches the socket's monitor for that.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use mymps_core::protocol::FrameError;
use mymps_core::protocol::{Frame, Limits};
use mymps_core::transport::{
    BoxFuture, Connection, Endpoint, FrameReader, FrameWriter, Incoming, MemoryBudget, ReadError,
};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::sock::{
    Waker, context, inproc, io_err, message_to_bytes, send_bytes, set_int_option, stop_monitor,
};
use crate::{ZmqConfig, wire};

/// Frames waiting for the pump to send them.
const OUTGOING: usize = 64;
const BATCH: usize = 256;

type Inbound = Result<Frame, ReadError>;

/// Connects a DEALER socket to `endpoint`; returns once the ZeroMQ
/// handshake with the server has completed.
pub async fn connect(endpoint: &Endpoint, config: &ZmqConfig) -> io::Result<Connection> {
    let host = crate::resolve(endpoint).await?;
    let addr = format!("tcp://{}:{}", crate::bracket(&host), endpoint.port);
    let ctx = context();
    let mut dealer = ctx.socket(zmq::DEALER).map_err(io_err)?;
    dealer.set_linger(0).map_err(io_err)?;
    // No reconnects in fact: the pump ends at the first disconnect, long
    // before a reconnect 24 days later. Turned off (-1), libzmq would drop
    // what it had received when the server closes (the socket terminates
    // its end of the pipe at once), such as the answer to a refused Hello.
    dealer.set_reconnect_ivl(i32::MAX).map_err(io_err)?;
    dealer.set_sndhwm(config.send_hwm).map_err(io_err)?;
    dealer.set_ipv6(host.contains(':')).map_err(io_err)?;
    crate::set_heartbeats(&mut dealer, config)?;
    let ms = i32::try_from(config.connect_timeout.as_millis()).unwrap_or(i32::MAX);
    set_int_option(&mut dealer, zmq_sys::ZMQ_CONNECT_TIMEOUT, ms)?;
    let mon_addr = inproc("monitor");
    dealer
        .monitor(&mon_addr, zmq::SocketEvent::ALL as i32)
        .map_err(io_err)?;
    let monitor = (|| {
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.set_linger(0)?;
        monitor.set_rcvhwm(0)?;
        monitor.connect(&mon_addr)?;
        Ok(monitor)
    })()
    .map_err(|e| {
        stop_monitor(&mut dealer);
        io_err(e)
    })?;
    if let Err(e) = dealer.connect(&addr) {
        stop_monitor(&mut dealer);
        return Err(io::Error::other(format!("cannot connect to {addr}: {e}")));
    }

    let (waker, wake_rx) = Waker::new()?;
    let waker = Arc::new(waker);
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(OUTGOING);
    let (ready_tx, ready_rx) = oneshot::channel();
    let pump = Pump {
        dealer,
        monitor,
        wake_rx,
        waker: waker.clone(),
        in_tx,
        out_rx,
        backlog: VecDeque::new(),
        ready: Some(ready_tx),
        config: config.clone(),
        addr: addr.clone(),
    };
    std::thread::Builder::new()
        .name("mymps-zmq-client".into())
        .spawn(move || pump.run())?;
    // The pump answers within the connect timeout; dropping this future
    // (a caller's timeout) ends the pump too.
    ready_rx
        .await
        .map_err(|_| io::Error::other("the zeromq socket thread ended"))??;
    Ok(Connection {
        reader: Box::new(ClientReader {
            rx: in_rx,
            waker: waker.clone(),
        }),
        writer: Box::new(ClientWriter {
            tx: Some(out_tx),
            waker,
        }),
        peer: addr,
    })
}

struct Pump {
    dealer: zmq::Socket,
    monitor: zmq::Socket,
    wake_rx: zmq::Socket,
    waker: Arc<Waker>,
    in_tx: mpsc::UnboundedSender<Inbound>,
    out_rx: mpsc::Receiver<Frame>,
    /// Frames taken from `out_rx` that libzmq could not take yet.
    backlog: VecDeque<Frame>,
    /// Until the handshake is done: where to say how it went.
    ready: Option<oneshot::Sender<io::Result<()>>>,
    config: ZmqConfig,
    addr: String,
}

impl Drop for Pump {
    fn drop(&mut self) {
        // Before the sockets close (see `stop_monitor`).
        stop_monitor(&mut self.dealer);
    }
}

enum Event {
    Connected,
    Lost(io::Error),
    Other,
}

impl Pump {
    fn run(mut self) {
        let started = Instant::now();
        let mut writers_gone = false;
        let mut more = false;
        loop {
            match &self.ready {
                Some(r) if r.is_closed() => break,
                Some(_) => {
                    if started.elapsed() >= self.config.connect_timeout {
                        let t = self.config.connect_timeout;
                        self.fail_connect(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no zeromq handshake with {} within {t:?}", self.addr),
                        ));
                        break;
                    }
                }
                None => {
                    if self.in_tx.is_closed() && writers_gone {
                        break;
                    }
                }
            }
            let connected = self.ready.is_none();
            // Every change of state wakes the thread; the timeout is a
            // safety net (and the connect timeout's clock).
            let timeout = if more {
                0
            } else if connected {
                1000
            } else {
                50
            };
            let out = if self.backlog.is_empty() {
                zmq::POLLIN
            } else {
                zmq::POLLIN | zmq::POLLOUT
            };
            let (readable, monitored, woken) = {
                let mut items = [
                    self.dealer.as_poll_item(out),
                    self.monitor.as_poll_item(zmq::POLLIN),
                    self.wake_rx.as_poll_item(zmq::POLLIN),
                ];
                match zmq::poll(&mut items, timeout) {
                    Ok(_) => (
                        items[0].is_readable(),
                        items[1].is_readable(),
                        items[2].is_readable(),
                    ),
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        let _ = self.in_tx.send(Err(ReadError::Io(io_err(e))));
                        break;
                    }
                }
            };
            if monitored {
                match self.event() {
                    Event::Connected => {
                        if let Some(r) = self.ready.take() {
                            debug!(addr = %self.addr, "zeromq connected");
                            let _ = r.send(Ok(()));
                        }
                    }
                    Event::Lost(e) => {
                        if self.ready.is_some() {
                            self.fail_connect(e);
                        } else {
                            // What the server sent before it closed comes
                            // first (a refused Hello's answer, replies).
                            while self.receive() {}
                            debug!(addr = %self.addr, error = %e, "zeromq connection lost");
                            let _ = self.in_tx.send(Err(ReadError::Io(e)));
                        }
                        break;
                    }
                    Event::Other => {}
                }
            }
            if woken {
                self.waker.taken(&self.wake_rx);
            }
            if !connected {
                continue;
            }
            more = false;
            // Outgoing: what waits first, then new frames while libzmq
            // takes them.
            while let Some(frame) = self.backlog.pop_front() {
                match self.send(frame) {
                    Ok(()) => {}
                    Err(frame) => {
                        self.backlog.push_front(frame);
                        break;
                    }
                }
            }
            if self.backlog.is_empty() && !writers_gone {
                for i in 0.. {
                    if i == BATCH {
                        more = true;
                        break;
                    }
                    match self.out_rx.try_recv() {
                        Ok(frame) => match self.send(frame) {
                            Ok(()) => {}
                            Err(frame) => {
                                self.backlog.push_back(frame);
                                break;
                            }
                        },
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            writers_gone = true;
                            break;
                        }
                    }
                }
            }
            if readable || more {
                for i in 0.. {
                    if i == BATCH {
                        more = true;
                        break;
                    }
                    if !self.receive() {
                        break;
                    }
                }
            }
        }
        debug!(addr = %self.addr, "zeromq client thread ends");
    }

    fn fail_connect(&mut self, e: io::Error) {
        if let Some(r) = self.ready.take() {
            let _ = r.send(Err(e));
        }
    }

    /// Reads one monitor event.
    fn event(&mut self) -> Event {
        let Ok(first) = self.monitor.recv_msg(zmq::DONTWAIT) else {
            return Event::Other;
        };
        // The second part names the endpoint.
        while self.monitor.get_rcvmore().unwrap_or(false) {
            let _ = self.monitor.recv_msg(0);
        }
        if first.len() < 6 {
            return Event::Other;
        }
        let event = u16::from_ne_bytes([first[0], first[1]]);
        let raw = u32::from(event);
        if raw == zmq_sys::ZMQ_EVENT_HANDSHAKE_SUCCEEDED {
            Event::Connected
        } else if raw == zmq_sys::ZMQ_EVENT_CLOSED && self.ready.is_some() {
            // A connect that failed: libzmq does not say why (the event's
            // value is the closed socket); refused is by far the most
            // common cause, and the pump ends before any retry.
            Event::Lost(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{}: connection refused or failed", self.addr),
            ))
        } else if raw == zmq_sys::ZMQ_EVENT_DISCONNECTED || raw == zmq_sys::ZMQ_EVENT_CLOSED {
            Event::Lost(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the zeromq connection to the server closed",
            ))
        } else if raw == zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
            || raw == zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
            || raw == zmq_sys::ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
        {
            Event::Lost(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "zeromq handshake with {} failed (event {event:#x})",
                    self.addr
                ),
            ))
        } else {
            Event::Other
        }
    }

    /// Sends one frame; gives it back when libzmq cannot take it now.
    fn send(&mut self, frame: Frame) -> Result<(), Frame> {
        let head = wire::encode_head(&frame);
        let n = frame.tensors.len();
        let more = if n > 0 { zmq::SNDMORE } else { 0 };
        match self.dealer.send(head, more | zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) => return Err(frame),
            Err(e) => {
                let _ = self.in_tx.send(Err(ReadError::Io(io_err(e))));
                return Ok(());
            }
        }
        // The first part is queued, so the rest of the message is too.
        for (i, t) in frame.tensors.into_iter().enumerate() {
            let flags = if i + 1 < n { zmq::SNDMORE } else { 0 };
            if let Err(e) = send_bytes(&mut self.dealer, t, flags) {
                let _ = self.in_tx.send(Err(ReadError::Io(io_err(e))));
                return Ok(());
            }
        }
        Ok(())
    }

    /// Receives one message; `false` when none is waiting.
    fn receive(&mut self) -> bool {
        let first = match self.dealer.recv_msg(zmq::DONTWAIT) {
            Ok(m) => m,
            Err(zmq::Error::EAGAIN) => return false,
            Err(zmq::Error::EINTR) => return true,
            Err(e) => {
                let _ = self.in_tx.send(Err(ReadError::Io(io_err(e))));
                return false;
            }
        };
        let mut parts = vec![message_to_bytes(first)];
        let mut total = 1usize;
        while self.dealer.get_rcvmore().unwrap_or(false) {
            let Ok(m) = self.dealer.recv_msg(0) else {
                break;
            };
            total += 1;
            if parts.len() < wire::MAX_PARTS {
                parts.push(message_to_bytes(m));
            }
        }
        let item = match wire::decode(parts, total) {
            Ok(wire::Parsed::Frame(f)) => Ok(f),
            Ok(wire::Parsed::Heartbeat) => return true,
            Err(m) => Err(ReadError::Frame(FrameError::Malformed(format!(
                "malformed zeromq message from the server: {}",
                m.message
            )))),
        };
        let _ = self.in_tx.send(item);
        true
    }
}

struct ClientReader {
    rx: mpsc::UnboundedReceiver<Inbound>,
    waker: Arc<Waker>,
}

impl ClientReader {
    async fn read(
        &mut self,
        limits: &Limits,
        budget: Option<&MemoryBudget>,
    ) -> Result<Option<Incoming>, ReadError> {
        match self.rx.recv().await {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(frame)) => {
                let permit = wire::admit(&frame, limits, budget)
                    .await
                    .map_err(ReadError::Frame)?;
                Ok(Some(Incoming { frame, permit }))
            }
        }
    }
}

impl FrameReader for ClientReader {
    fn read_frame<'a>(
        &'a mut self,
        limits: &'a Limits,
        budget: Option<&'a MemoryBudget>,
    ) -> BoxFuture<'a, Result<Option<Incoming>, ReadError>> {
        Box::pin(self.read(limits, budget))
    }
}

impl Drop for ClientReader {
    fn drop(&mut self) {
        self.rx.close();
        self.waker.wake();
    }
}

struct ClientWriter {
    tx: Option<mpsc::Sender<Frame>>,
    waker: Arc<Waker>,
}

impl FrameWriter for ClientWriter {
    fn write_frame(&mut self, frame: Frame) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the connection is closed");
            let tx = self.tx.as_ref().ok_or_else(closed)?;
            tx.send(frame).await.map_err(|_| closed())?;
            self.waker.wake();
            Ok(())
        })
    }

    fn shutdown(&mut self) -> BoxFuture<'_, io::Result<()>> {
        self.tx = None;
        self.waker.wake();
        Box::pin(async { Ok(()) })
    }
}

impl Drop for ClientWriter {
    fn drop(&mut self) {
        self.tx = None;
        self.waker.wake();
    }
}
