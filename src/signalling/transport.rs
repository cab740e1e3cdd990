//! SIP transports (RFC 3261 §18): UDP sockets and TCP and TLS connections, inbound and
//! outbound. Everything received is parsed and handed to the control loop as [`Inbound`];
//! everything sent goes through [`Transports::send`].
//!
//! Stream connections (TCP, TLS) are kept one per remote address and transport and used in
//! both directions: a request to a peer goes over the connection it opened to us, or the one we
//! opened to it. A missing connection is opened on the first send (its queue holds what is sent
//! meanwhile); a connect or handshake that fails puts the address in back-off (1 s, doubling
//! up to 60 s) during which sends to it are dropped and the transaction layer times out, so
//! calls fail over instead of waiting on a dead peer. Connections mediagate opened send CRLF
//! keep-alives (`sip.keepalive_s`, see [`super::connection`]).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use super::connection::{self, Closed};
use super::gate::{Gate, TcpSlot};
use super::tls::TlsContext;
use crate::config::{Config, Transport};
use crate::sip::message::{Message, MAX_MESSAGE};
use crate::sip::transaction::Target;

/// A parsed message and where it came from.
pub type Inbound = (Message, Target);

/// Queue depth per stream connection writer.
const STREAM_QUEUE: usize = 1024;
/// Longest TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First back-off after a failed connect, doubled per further failure up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A stream connection's identity: transport and remote address.
type StreamKey = (Transport, SocketAddr);

/// Stream connections by remote, and remotes whose last connect failed.
#[derive(Default)]
struct Streams {
    /// Each connection's task reads this queue and writes it to the stream.
    conns: HashMap<StreamKey, mpsc::Sender<Vec<u8>>>,
    /// No connect attempt before `until`; `delay` is the next back-off.
    backoff: HashMap<StreamKey, (Instant, Duration)>,
}

impl Streams {
    /// Removes the connection `key` when it is still the one fed by `tx`.
    fn remove(&mut self, key: StreamKey, tx: &mpsc::Sender<Vec<u8>>) {
        if self.conns.get(&key).is_some_and(|c| c.same_channel(tx)) {
            self.conns.remove(&key);
        }
    }
}

/// The open sockets and connections.
#[derive(Clone)]
pub struct Transports {
    udp: Arc<HashMap<SocketAddr, Arc<UdpSocket>>>,
    streams: Arc<Mutex<Streams>>,
    tls: Option<Arc<TlsContext>>,
    keepalive: Option<Duration>,
    inbound: mpsc::Sender<Inbound>,
    /// Targets a connection could not be opened to (or that are in back-off), for the control
    /// loop to fail their transactions over at once.
    failures: mpsc::Sender<Target>,
    /// The front door: per-source limits and refusal counters.
    gate: Arc<Gate>,
}

impl Transports {
    /// Binds every `sip.listen` endpoint and starts the readers; received messages that pass
    /// `gate` go to `inbound`, targets that cannot be reached to `failures`.
    pub async fn bind(
        config: &Config,
        inbound: mpsc::Sender<Inbound>,
        failures: mpsc::Sender<Target>,
        gate: Arc<Gate>,
    ) -> io::Result<Self> {
        let mut udp = HashMap::new();
        let mut listeners = Vec::new();
        for ep in &config.sip.listen {
            let annotate =
                |e: io::Error| io::Error::new(e.kind(), format!("cannot bind {ep}: {e}"));
            match ep.transport {
                Transport::Udp => {
                    let s = UdpSocket::bind(ep.addr).await.map_err(annotate)?;
                    udp.insert(ep.addr, Arc::new(s));
                }
                Transport::Tcp | Transport::Tls => {
                    let l = TcpListener::bind(ep.addr).await.map_err(annotate)?;
                    listeners.push((ep.transport, ep.addr, l));
                }
            }
        }
        let t = Transports {
            udp: Arc::new(udp),
            streams: Arc::default(),
            tls: TlsContext::new(config)?.map(Arc::new),
            keepalive: config.sip.keepalive,
            inbound,
            failures,
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
        for (transport, local, listener) in listeners {
            tokio::spawn(t.clone().accept(listener, transport, local));
        }
        Ok(t)
    }

    /// TLS peers learnt at run time (resolved DNS names): how to verify them.
    pub fn learn_tls_peers(&self, found: &[(SocketAddr, crate::config::TrunkTls)]) {
        if let Some(tls) = &self.tls {
            tls.learn(found);
        }
    }

    /// Sends a message; UDP send errors and unreachable peers are logged, not fatal: the
    /// transaction layer retransmits or times out.
    pub fn send(&self, target: Target, message: &Message) {
        let bytes = message.to_bytes();
        if target.transport == Transport::Udp {
            let Some(socket) = self.udp.get(&target.local) else {
                tracing::warn!(local = %target.local, "no UDP socket for this local address");
                return;
            };
            if let Err(e) = socket.try_send_to(&bytes, target.remote) {
                tracing::debug!(error = %e, to = %target.remote, "UDP send failed");
            }
            return;
        }
        let key = (target.transport, target.remote);
        let mut streams = self.streams.lock().expect("stream map");
        if let Some(tx) = streams.conns.get(&key) {
            match tx.try_send(bytes) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(to = %target.remote, "connection queue full: message dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(b)) => {
                    streams.conns.remove(&key);
                    return self.open(&mut streams, target, b);
                }
            }
        }
        self.open(&mut streams, target, bytes);
    }

    /// Starts a connection to `target` with `first` queued, unless the remote is in back-off.
    fn open(&self, streams: &mut Streams, target: Target, first: Vec<u8>) {
        let key = (target.transport, target.remote);
        if let Some((until, _)) = streams.backoff.get(&key) {
            if Instant::now() < *until {
                tracing::debug!(to = %target.remote, transport = %target.transport,
                    "connecting is in back-off after a failure: message dropped");
                let _ = self.failures.try_send(target);
                return;
            }
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let _ = tx.try_send(first);
        streams.conns.insert(key, tx.clone());
        tokio::spawn(self.clone().connect(target, tx, rx));
    }

    async fn connect(self, target: Target, tx: mpsc::Sender<Vec<u8>>, rx: mpsc::Receiver<Vec<u8>>) {
        let tcp = async {
            let socket = match target.remote {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(target.local.ip(), 0))?;
            socket.connect(target.remote).await
        };
        let keepalive = self.keepalive;
        let closed = match target.transport {
            Transport::Tls => {
                let handshake = async {
                    let tls = self.tls.clone().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::Unsupported, "no [sip.tls] section")
                    })?;
                    tls.connect(tcp.await?, target.remote).await
                };
                match self.connected(
                    target,
                    &tx,
                    tokio::time::timeout(CONNECT_TIMEOUT, handshake).await,
                ) {
                    Some(stream) => self.serve(stream, target, rx, keepalive).await,
                    None => Closed::Peer,
                }
            }
            _ => match self.connected(
                target,
                &tx,
                tokio::time::timeout(CONNECT_TIMEOUT, tcp).await,
            ) {
                Some(stream) => self.serve(stream, target, rx, keepalive).await,
                None => Closed::Peer,
            },
        };
        tracing::debug!(to = %target.remote, transport = %target.transport, ?closed, "connection closed");
        self.forget(target, &tx);
    }

    /// The outcome of a connect (and handshake): on success the back-off is cleared; on
    /// failure it is logged, the connection's queue (`tx`) leaves the map at once so that later
    /// sends meet the back-off, and the back-off grows.
    fn connected<S>(
        &self,
        target: Target,
        tx: &mpsc::Sender<Vec<u8>>,
        result: Result<io::Result<S>, tokio::time::error::Elapsed>,
    ) -> Option<S> {
        let key = (target.transport, target.remote);
        let mut streams = self.streams.lock().expect("stream map");
        let error = match result {
            Ok(Ok(stream)) => {
                streams.backoff.remove(&key);
                tracing::info!(to = %target.remote, transport = %target.transport, "connected");
                return Some(stream);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        streams.remove(key, tx);
        let delay = streams
            .backoff
            .get(&key)
            .map_or(BACKOFF_FIRST, |(_, d)| (*d * 2).min(BACKOFF_MAX));
        streams.backoff.insert(key, (Instant::now() + delay, delay));
        tracing::warn!(to = %target.remote, transport = %target.transport, %error,
            backoff_s = delay.as_secs(), "cannot connect");
        let _ = self.failures.try_send(target);
        None
    }

    /// Runs a connection until it closes.
    async fn serve<S: AsyncRead + AsyncWrite>(
        &self,
        stream: S,
        target: Target,
        rx: mpsc::Receiver<Vec<u8>>,
        keepalive: Option<Duration>,
    ) -> Closed {
        let closed = connection::run(
            stream,
            target,
            rx,
            self.inbound.clone(),
            keepalive,
            self.gate.clone(),
        )
        .await;
        if closed == Closed::NoPong {
            tracing::info!(peer = %target.remote, transport = %target.transport,
                "no keep-alive pong: connection closed");
        }
        closed
    }

    /// Removes a closed connection from the map, unless another has replaced it.
    fn forget(&self, target: Target, tx: &mpsc::Sender<Vec<u8>>) {
        let key = (target.transport, target.remote);
        self.streams.lock().expect("stream map").remove(key, tx);
    }

    async fn accept(self, listener: TcpListener, transport: Transport, local: SocketAddr) {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let target = Target {
                        transport,
                        remote,
                        local,
                    };
                    // Over the per-source or total limit: closed at once (counted).
                    if let Some(slot) = self.gate.open_tcp(remote.ip()) {
                        tokio::spawn(self.clone().accepted(stream, target, slot));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            }
        }
    }

    /// Serves an accepted connection (after the TLS handshake for `tls:` listeners); `_slot`
    /// is its place among the open connections, freed when it ends.
    async fn accepted(self, tcp: TcpStream, target: Target, _slot: TcpSlot) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let closed = match (&self.tls, target.transport) {
            (Some(tls), Transport::Tls) => {
                let handshake =
                    tokio::time::timeout(CONNECT_TIMEOUT, tls.accept(tcp, target.remote));
                match handshake.await {
                    Ok(Ok(stream)) => {
                        self.register(target, &tx);
                        self.serve(stream, target, rx, None).await
                    }
                    Ok(Err(e)) => {
                        tracing::info!(from = %target.remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(from = %target.remote, "TLS handshake timed out");
                        return;
                    }
                }
            }
            (None, Transport::Tls) => return,
            _ => {
                self.register(target, &tx);
                self.serve(tcp, target, rx, None).await
            }
        };
        tracing::debug!(from = %target.remote, transport = %target.transport, ?closed, "connection closed");
        self.forget(target, &tx);
    }

    fn register(&self, target: Target, tx: &mpsc::Sender<Vec<u8>>) {
        let key = (target.transport, target.remote);
        let mut streams = self.streams.lock().expect("stream map");
        streams.conns.insert(key, tx.clone());
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
