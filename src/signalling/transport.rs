//! SIP transports (RFC 3261 §18): UDP sockets and TCP connections, inbound and outbound, framed
//! by Content-Length. Everything received is parsed and handed to the control loop as
//! [`Inbound`]; everything sent goes through [`Transports::send`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::gate::{Gate, Refusal, TcpSlot};
use crate::config::{Endpoint, Transport};
use crate::sip::message::{Message, ParseError, MAX_MESSAGE};
use crate::sip::transaction::Target;

/// A parsed message and where it came from.
pub type Inbound = (Message, Target);

/// Queue depth per TCP connection writer.
const TCP_QUEUE: usize = 1024;
/// A TCP connection that sends nothing for this long between messages is closed.
const TCP_IDLE: Duration = Duration::from_secs(600);
/// The same for a connection from an address that is no trunk peer (all it can get is 403).
const TCP_STRANGER_IDLE: Duration = Duration::from_secs(30);
/// Once a message has begun on a TCP connection, the rest of it must arrive within this time, or
/// the connection is closed (a slowloris client trickling bytes holds nothing for long).
const TCP_MESSAGE_TIME: Duration = Duration::from_secs(10);

/// The open sockets and connections.
#[derive(Clone)]
pub struct Transports {
    udp: Arc<HashMap<SocketAddr, Arc<UdpSocket>>>,
    /// Live TCP connections by remote address; each has a writer task fed by this sender.
    tcp: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>,
    inbound: mpsc::Sender<Inbound>,
    gate: Arc<Gate>,
}

impl Transports {
    /// Binds every listen endpoint and starts the readers; received messages that pass `gate`
    /// go to `inbound`.
    pub async fn bind(
        listen: &[Endpoint],
        inbound: mpsc::Sender<Inbound>,
        gate: Arc<Gate>,
    ) -> io::Result<Self> {
        let mut udp = HashMap::new();
        let mut listeners = Vec::new();
        for ep in listen {
            match ep.transport {
                Transport::Udp => {
                    let s = Arc::new(UdpSocket::bind(ep.addr).await.map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot bind udp:{}: {e}", ep.addr))
                    })?);
                    udp.insert(ep.addr, s);
                }
                Transport::Tcp => {
                    let l = TcpListener::bind(ep.addr).await.map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot bind tcp:{}: {e}", ep.addr))
                    })?;
                    listeners.push((ep.addr, l));
                }
            }
        }
        let t = Transports {
            udp: Arc::new(udp),
            tcp: Arc::new(Mutex::new(HashMap::new())),
            inbound,
            gate,
        };
        for (local, socket) in t.udp.iter() {
            tokio::spawn(read_udp(
                socket.clone(),
                *local,
                t.inbound.clone(),
                t.gate.clone(),
            ));
        }
        for (local, listener) in listeners {
            tokio::spawn(t.clone().accept_tcp(listener, local));
        }
        Ok(t)
    }

    /// Sends a message; UDP send errors and closed connections are logged, not fatal: the
    /// transaction layer retransmits or times out.
    pub fn send(&self, target: Target, message: &Message) {
        let bytes = message.to_bytes();
        match target.transport {
            Transport::Udp => {
                let Some(socket) = self.udp.get(&target.local) else {
                    tracing::warn!(local = %target.local, "no UDP socket for this local address");
                    return;
                };
                if let Err(e) = socket.try_send_to(&bytes, target.remote) {
                    tracing::debug!(error = %e, to = %target.remote, "UDP send failed");
                }
            }
            Transport::Tcp => {
                let existing = self
                    .tcp
                    .lock()
                    .expect("tcp map")
                    .get(&target.remote)
                    .cloned();
                match existing {
                    Some(tx) => {
                        if tx.try_send(bytes).is_err() {
                            tracing::debug!(to = %target.remote, "TCP connection queue full or closed");
                        }
                    }
                    None => {
                        tokio::spawn(self.clone().connect_and_send(target, bytes));
                    }
                }
            }
        }
    }

    async fn accept_tcp(self, listener: TcpListener, local: SocketAddr) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => match self.gate.open_tcp(remote.ip()) {
                    Some(slot) => self.start_connection(stream, local, remote, None, Some(slot)),
                    None => drop(stream),
                },
                Err(e) => tracing::warn!(error = %e, "TCP accept failed"),
            }
        }
    }

    async fn connect_and_send(self, target: Target, first: Vec<u8>) {
        let connect = async {
            let socket = match target.remote {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(target.local.ip(), 0))?;
            socket.connect(target.remote).await
        };
        match connect.await {
            Ok(stream) => {
                self.start_connection(stream, target.local, target.remote, Some(first), None)
            }
            Err(e) => tracing::info!(error = %e, to = %target.remote, "TCP connect failed"),
        }
    }

    /// Registers a connection and starts its reader and writer tasks.
    fn start_connection(
        &self,
        stream: TcpStream,
        local: SocketAddr,
        remote: SocketAddr,
        first: Option<Vec<u8>>,
        slot: Option<TcpSlot>,
    ) {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
        if let Some(bytes) = first {
            let _ = tx.try_send(bytes);
        }
        let writer_tx = tx.clone();
        self.tcp.lock().expect("tcp map").insert(remote, tx);
        let (mut reader, mut writer) = stream.into_split();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        let inbound = self.inbound.clone();
        let registry = self.tcp.clone();
        let gate = self.gate.clone();
        tokio::spawn(async move {
            // Held for the connection's life: its place among the open connections.
            let _slot = slot;
            let target = Target {
                transport: Transport::Tcp,
                remote,
                local,
            };
            let idle = if gate.is_peer(remote.ip()) {
                TCP_IDLE
            } else {
                TCP_STRANGER_IDLE
            };
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 16 * 1024];
            // When the message now in `buf` began; `None` between messages.
            let mut started: Option<Instant> = None;
            'conn: loop {
                let deadline = started.map_or(Instant::now() + idle, |t| t + TCP_MESSAGE_TIME);
                let n = match tokio::time::timeout_at(deadline.into(), reader.read(&mut chunk))
                    .await
                {
                    Ok(Ok(0) | Err(_)) => break,
                    Ok(Ok(n)) => n,
                    Err(_) => {
                        gate.count(Refusal::SipIdleClosed);
                        tracing::info!(from = %remote, partial = buf.len(), "TCP connection too slow or idle: closing");
                        break;
                    }
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match Message::parse_stream(&buf) {
                        Ok(Some((msg, used))) => {
                            buf.drain(..used);
                            if !gate.admit_sip(remote.ip()) {
                                continue;
                            }
                            if inbound.send((msg, target)).await.is_err() {
                                break 'conn;
                            }
                        }
                        Ok(None) if buf.len() <= MAX_MESSAGE => break,
                        Ok(None) | Err(_) => {
                            // Framing is lost: answer what can be answered, then close.
                            let error = Message::parse_stream(&buf)
                                .err()
                                .unwrap_or(ParseError::TooLarge);
                            if let Some(reply) =
                                gate.reply_to_unparseable(&buf, &error, remote.ip())
                            {
                                let _ = writer_tx.try_send(reply.to_bytes());
                            }
                            tracing::info!(from = %remote, %error, "unparseable TCP stream: closing");
                            break 'conn;
                        }
                    }
                }
                let between_messages = buf.iter().all(|b| *b == b'\r' || *b == b'\n');
                started = match (between_messages, started) {
                    (true, _) => None,
                    (false, None) => Some(Instant::now()),
                    (false, t) => t,
                };
            }
            registry.lock().expect("tcp map").remove(&remote);
        });
    }
}

async fn read_udp(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    gate: Arc<Gate>,
) {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let (n, remote) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let data = &buf[..n];
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // keep-alive
        }
        if !gate.admit_sip(remote.ip()) {
            continue;
        }
        match Message::parse_datagram(data) {
            Ok(msg) => {
                let target = Target {
                    transport: Transport::Udp,
                    remote,
                    local,
                };
                if inbound.send((msg, target)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, from = %remote, "unparseable SIP datagram");
                if let Some(reply) = gate.reply_to_unparseable(data, &e, remote.ip()) {
                    let _ = socket.try_send_to(&reply.to_bytes(), remote);
                }
            }
        }
    }
}
