//! One SIP stream connection, TCP or TLS alike: messages framed by Content-Length in both
//! directions, and the CRLF keep-alive of RFC 5626 §4.4.1 (a CRLFCRLF "ping" is answered with
//! a CRLF "pong"; on connections mediagate opened it pings every `keepalive` and closes the
//! connection when no pong comes back, so a dead peer is noticed before a call needs it).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use std::sync::Arc;

use super::gate::{Gate, Refusal};
use super::transport::Inbound;
use crate::sip::message::{Message, ParseError, MAX_MESSAGE};
use crate::sip::transaction::Target;

/// Longest wait for the pong after a ping (RFC 5626 §4.4.1: 10 s), shortened to the ping
/// interval when that is shorter.
const PONG_WAIT: Duration = Duration::from_secs(10);

/// A connection that sends nothing for this long between messages is closed.
const IDLE: Duration = Duration::from_secs(600);
/// The same for a connection from an address that is no trunk peer (all it can get is 403).
const STRANGER_IDLE: Duration = Duration::from_secs(30);
/// Once a message has begun, the rest of it must arrive within this time, or the connection is
/// closed (a slowloris client trickling bytes holds nothing for long).
const MESSAGE_TIME: Duration = Duration::from_secs(10);

/// The double CRLF a keep-alive ping is made of.
const PING: &[u8] = b"\r\n\r\n";
/// The single CRLF answering it.
const PONG: &[u8] = b"\r\n";

/// What the head of a connection's receive buffer holds.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A keep-alive ping (CRLFCRLF), consumed: answer with a pong.
    Ping,
    /// A keep-alive pong (a lone CRLF), consumed.
    Pong,
    /// A whole SIP message, consumed.
    Message(Box<Message>),
    /// Not enough bytes yet.
    Incomplete,
    /// Framing is lost (unparseable head, bad Content-Length, too large): close.
    Broken,
}

/// Takes the next frame off the front of `buf`. A lone CRLF is a pong when one is awaited or
/// when a message follows it; otherwise two CRLFs may still be arriving as a ping.
pub fn next_frame(buf: &mut Vec<u8>, awaiting_pong: bool) -> Frame {
    if buf.starts_with(PING) {
        buf.drain(..PING.len());
        return Frame::Ping;
    }
    if buf.starts_with(PONG) {
        let more = &buf[PONG.len()..];
        // "\r\n" then "\r" could be the start of a ping, unless a pong is expected.
        let undecided = more.is_empty() || more == b"\r";
        if undecided && !awaiting_pong {
            return Frame::Incomplete;
        }
        buf.drain(..PONG.len());
        return Frame::Pong;
    }
    match Message::parse_stream(buf) {
        Ok(Some((msg, used))) => {
            buf.drain(..used);
            Frame::Message(Box::new(msg))
        }
        Ok(None) if buf.len() <= MAX_MESSAGE => Frame::Incomplete,
        Ok(None) | Err(_) => Frame::Broken,
    }
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed it, or reading or writing failed.
    Peer,
    /// No pong within the wait after a ping.
    NoPong,
    /// The byte stream could not be framed into SIP messages.
    Unframeable,
    /// mediagate dropped the sending side (shutdown).
    Local,
    /// Nothing for too long, or a message not completed in time (counted `idle_closed`).
    Idle,
}

/// Runs a connection until it ends: received messages that `gate` admits go to `inbound` with
/// `target` as their source, byte strings from `outgoing` are written in order. With
/// `keepalive`, a ping is sent every interval and the connection closed when its pong does not
/// arrive in time. A connection idle too long, or trickling a message too slowly, is closed;
/// one whose bytes cannot be framed gets the error answer `gate` allows before it is closed.
pub async fn run<S>(
    stream: S,
    target: Target,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    inbound: mpsc::Sender<Inbound>,
    keepalive: Option<Duration>,
    gate: Arc<Gate>,
) -> Closed
where
    S: AsyncRead + AsyncWrite,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let far_future = || Instant::now() + Duration::from_secs(86_400 * 365);
    let mut next_ping = keepalive.map_or_else(far_future, |k| Instant::now() + k);
    let mut pong_due: Option<Instant> = None;
    let ip = target.remote.ip();
    let peer = gate.is_peer(ip);
    let idle = if peer { IDLE } else { STRANGER_IDLE };
    // When the bytes now in `buf` began to arrive (`None` when it is empty), and the last read.
    let mut started: Option<Instant> = None;
    let mut last_read = Instant::now();
    loop {
        // Connections with keep-alive (the ones mediagate opened) are judged by their pongs.
        let read_deadline = match (started, keepalive) {
            (Some(t), _) => t + MESSAGE_TIME,
            (None, None) => last_read + idle,
            (None, Some(_)) => far_future(),
        };
        tokio::select! {
            read = reader.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => return Closed::Peer,
                    Ok(n) => n,
                };
                let read_at = Instant::now();
                // A stranger's keep-alive pings do not keep its connection: only messages do.
                if peer {
                    last_read = read_at;
                }
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match next_frame(&mut buf, pong_due.is_some()) {
                        Frame::Ping => {
                            if writer.write_all(PONG).await.is_err() {
                                return Closed::Peer;
                            }
                        }
                        Frame::Pong => pong_due = None,
                        Frame::Message(msg) => {
                            last_read = read_at;
                            if gate.admit_sip(ip) && inbound.send((*msg, target)).await.is_err() {
                                return Closed::Local;
                            }
                        }
                        Frame::Incomplete => break,
                        Frame::Broken => {
                            let error = Message::parse_stream(&buf)
                                .err()
                                .unwrap_or(ParseError::TooLarge);
                            if let Some(reply) = gate.reply_to_unparseable(&buf, &error, ip) {
                                let _ = writer.write_all(&reply.to_bytes()).await;
                            }
                            return Closed::Unframeable;
                        }
                    }
                }
                let between_messages = buf.iter().all(|b| *b == b'\r' || *b == b'\n');
                started = match (between_messages, started) {
                    (true, _) => None,
                    (false, None) => Some(read_at),
                    (false, t) => t,
                };
            }
            _ = tokio::time::sleep_until(read_deadline) => {
                gate.count(Refusal::SipIdleClosed);
                return Closed::Idle;
            }
            out = outgoing.recv() => {
                let Some(bytes) = out else { return Closed::Local };
                if writer.write_all(&bytes).await.is_err() {
                    return Closed::Peer;
                }
            }
            _ = tokio::time::sleep_until(next_ping), if pong_due.is_none() => {
                let interval = keepalive.unwrap_or(PONG_WAIT);
                if writer.write_all(PING).await.is_err() {
                    return Closed::Peer;
                }
                pong_due = Some(Instant::now() + PONG_WAIT.min(interval));
                next_ping = Instant::now() + interval;
            }
            _ = async { tokio::time::sleep_until(pong_due.unwrap_or_else(far_future)).await }, if pong_due.is_some() => {
                return Closed::NoPong;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;

    const OPTIONS: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
        Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn pings_pongs_and_messages_are_told_apart() {
        let mut buf = [PING, PING, OPTIONS].concat();
        assert_eq!(next_frame(&mut buf, false), Frame::Ping);
        assert_eq!(next_frame(&mut buf, false), Frame::Ping);
        assert!(matches!(next_frame(&mut buf, false), Frame::Message(_)));
        assert_eq!(next_frame(&mut buf, false), Frame::Incomplete);
        assert!(buf.is_empty());

        // A lone CRLF waits for more unless a pong is expected.
        let mut buf = PONG.to_vec();
        assert_eq!(next_frame(&mut buf, false), Frame::Incomplete);
        assert_eq!(next_frame(&mut buf, true), Frame::Pong);
        // A CRLF before a message is a pong either way.
        let mut buf = [PONG, OPTIONS].concat();
        assert_eq!(next_frame(&mut buf, false), Frame::Pong);
        assert!(matches!(next_frame(&mut buf, false), Frame::Message(_)));

        let mut buf = b"NOT SIP AT ALL\r\n\r\n".to_vec();
        assert_eq!(next_frame(&mut buf, false), Frame::Broken);
    }

    /// The gate of the embedded default configuration (no peers, no limits).
    fn gate() -> Arc<Gate> {
        let config = crate::config::parse("embedded", crate::config::EMBEDDED_DEFAULT).unwrap();
        Arc::new(Gate::new(Arc::new(config)))
    }

    fn target() -> Target {
        Target {
            transport: Transport::Tcp,
            remote: "127.0.0.1:5060".parse().unwrap(),
            local: "127.0.0.1:5070".parse().unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_and_closes_when_no_pong_comes() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let (_out_tx, out_rx) = mpsc::channel(4);
        let (in_tx, _in_rx) = mpsc::channel(4);
        let conn = tokio::spawn(run(
            ours,
            target(),
            out_rx,
            in_tx,
            Some(Duration::from_secs(30)),
            gate(),
        ));
        // The first ping after 30 s: answered, so the connection stays.
        let mut got = [0u8; 4];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, PING);
        theirs.write_all(PONG).await.unwrap();
        // The second ping goes unanswered: closed after the pong wait.
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, PING);
        assert_eq!(conn.await.unwrap(), Closed::NoPong);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_are_answered_and_messages_delivered_and_sent() {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let (out_tx, out_rx) = mpsc::channel(4);
        let (in_tx, mut in_rx) = mpsc::channel(4);
        let conn = tokio::spawn(run(ours, target(), out_rx, in_tx, None, gate()));
        theirs.write_all(&[PING, OPTIONS].concat()).await.unwrap();
        let mut pong = [0u8; 2];
        theirs.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, PONG);
        let (msg, from) = in_rx.recv().await.unwrap();
        assert_eq!((msg.header("CSeq"), from), (Some("1 OPTIONS"), target()));
        out_tx.send(b"hello".to_vec()).await.unwrap();
        let mut hello = [0u8; 5];
        theirs.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        drop(theirs);
        assert_eq!(conn.await.unwrap(), Closed::Peer);
    }
}
