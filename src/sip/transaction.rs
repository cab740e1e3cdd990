//! Sans-IO SIP transaction layer (RFC 3261 §17, with the RFC 6026 "Accepted" behaviour for 2xx).
//!
//! Callers feed it parsed messages with [`Transactions::handle_message`] and the passage of time
//! with [`Transactions::handle_timeout`]; it answers with [`Event`]s for the transaction user and
//! queues wire output for [`Transactions::drain_transmits`]. It never reads a clock or touches a
//! socket, so unit tests drive it with a virtual clock.
//!
//! Timers: A/B/D (INVITE client), E/F/K (non-INVITE client), G/H/I (INVITE server), J (non-INVITE
//! server). Over reliable transports the retransmission timers are off and the wait timers zero.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::header;
use super::message::{Message, Method, StartLine};
use crate::config::Transport;

/// RTT estimate (RFC 3261 §17.1.1.1).
pub const T1: Duration = Duration::from_millis(500);
/// Longest retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// Longest time a message stays in the network.
pub const T4: Duration = Duration::from_secs(5);

/// Where a message goes or came from: transport, remote address and the local socket used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

impl Target {
    fn reliable(&self) -> bool {
        self.transport != Transport::Udp
    }
}

/// A message to put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    pub target: Target,
    pub message: Message,
}

/// Identifies a transaction for the transaction user.
pub type TxnId = u64;

/// What the transaction layer tells its user.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new request opened a server transaction; answer it with [`Transactions::respond`].
    Request {
        txn: TxnId,
        request: Message,
        source: Target,
    },
    /// An ACK that matched no INVITE server transaction: the ACK for a 2xx, for the dialog layer.
    Ack { request: Message, source: Target },
    /// A response for a client transaction (every provisional, the first final, and 2xx
    /// retransmissions so that the user can ACK them again).
    Response { txn: TxnId, response: Message },
    /// A client transaction got no final response in time (timer B or F).
    Timeout { txn: TxnId },
    /// A response that matched no client transaction; dropped per RFC 3261 §18.1.2.
    Stray,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calling (INVITE client) or Trying (non-INVITE); server: before any response.
    Initial,
    Proceeding,
    /// INVITE client after 2xx (RFC 6026): absorbs nothing, passes 2xx retransmits up.
    Accepted,
    Completed,
    /// INVITE server after the ACK for a non-2xx.
    Confirmed,
}

#[derive(Debug)]
struct ServerTxn {
    branch: String,
    invite: bool,
    source: Target,
    state: State,
    last_response: Option<Message>,
    /// Next retransmission of the final response (timer G) and its interval.
    retransmit: Option<(Instant, Duration)>,
    /// When the transaction ends (timers H, I, J).
    end: Option<Instant>,
    /// Generation of the newest timer-heap entry; older entries are stale.
    gen: u32,
}

#[derive(Debug)]
struct ClientTxn {
    branch: String,
    invite: bool,
    request: Message,
    target: Target,
    state: State,
    retransmit: Option<(Instant, Duration)>,
    /// Timer B/F while waiting, timer D/K once completed.
    end: Instant,
    ack: Option<Message>,
    /// Generation of the newest timer-heap entry; older entries are stale.
    gen: u32,
}

impl ClientTxn {
    /// Drops the request's headers and body once it is answered finally: nothing retransmits
    /// or cancels it any more, and a held call should not pin a copy of its INVITE for 32 s.
    /// The start line stays (the method keys the transaction).
    fn forget_request(&mut self) {
        self.request.headers = Vec::new();
        self.request.body = Vec::new();
    }
}

/// All transactions of one SIP endpoint.
#[derive(Debug, Default)]
pub struct Transactions {
    next_id: TxnId,
    /// Boxed, like `clients`: thousands of transactions linger for Timer J/D, and the table's
    /// slack and doubling steps (which stay in RSS at the peak) then cost a pointer per slot.
    servers: HashMap<TxnId, Box<ServerTxn>>,
    /// (branch, is INVITE) → server transaction; ACK and CANCEL find their INVITE by branch.
    server_index: HashMap<(String, bool), TxnId>,
    clients: HashMap<TxnId, Box<ClientTxn>>,
    /// (branch, CSeq method) → client transaction.
    client_index: HashMap<(String, String), TxnId>,
    timers: BinaryHeap<Reverse<(Instant, TxnId, u32)>>,
    out: Vec<Transmit>,
    retransmissions: Retransmissions,
}

/// Retransmission counters since start (for `/metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retransmissions {
    /// Requests sent again by timer A/E (client transactions).
    pub requests_sent: u64,
    /// Final responses sent again by timer G (INVITE server transactions).
    pub responses_sent: u64,
    /// Requests received again for a live server transaction (absorbed; the last response,
    /// if any, repeated).
    pub requests_received: u64,
}

/// A fresh RFC 3261 branch (magic cookie + randomness).
pub fn new_branch() -> String {
    format!("z9hG4bK{:016x}", fastrand::u64(..))
}

/// The Via header value mediagate puts on requests it sends from `local`.
pub fn via_value(transport: Transport, local: SocketAddr, branch: &str) -> String {
    format!("SIP/2.0/{transport} {local};branch={branch};rport")
}

impl Transactions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live transactions (server + client), for status and leak tests.
    pub fn len(&self) -> usize {
        self.servers.len() + self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Retransmissions sent and received since start.
    pub fn retransmissions(&self) -> Retransmissions {
        self.retransmissions
    }

    /// Drains all queued wire output.
    pub fn drain_transmits(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.out.drain(..)
    }

    /// Earliest instant at which [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id, gen))) = self.timers.peek().copied() {
            if self.timer_gen(id) == Some(gen) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    fn timer_gen(&self, id: TxnId) -> Option<u32> {
        self.servers
            .get(&id)
            .map(|t| t.gen)
            .or_else(|| self.clients.get(&id).map(|t| t.gen))
    }

    fn schedule_server(&mut self, id: TxnId) {
        if let Some(t) = self.servers.get_mut(&id) {
            t.gen += 1;
            let at = [t.retransmit.map(|r| r.0), t.end]
                .into_iter()
                .flatten()
                .min();
            if let Some(at) = at {
                let gen = t.gen;
                self.push_timer((at, id, gen));
            }
        }
    }

    fn schedule_client(&mut self, id: TxnId) {
        if let Some(t) = self.clients.get_mut(&id) {
            t.gen += 1;
            let at = t.retransmit.map_or(t.end, |r| r.0.min(t.end));
            let gen = t.gen;
            self.push_timer((at, id, gen));
        }
    }

    /// Queues a timer. Entries superseded by a later schedule, or of ended transactions, are
    /// dropped when they reach the top of the heap, and all at once when they outnumber the
    /// live transactions: a far-off stale entry (an INVITE's one-hour ringing bound, left when
    /// the 2xx came) would otherwise stay for its whole hour, one or more per call.
    fn push_timer(&mut self, entry: (Instant, TxnId, u32)) {
        self.timers.push(Reverse(entry));
        let live = self.servers.len() + self.clients.len();
        if self.timers.len() > 2 * live + 64 {
            let (servers, clients) = (&self.servers, &self.clients);
            self.timers.retain(|Reverse((_, id, gen))| {
                let current = servers
                    .get(id)
                    .map(|t| t.gen)
                    .or_else(|| clients.get(id).map(|t| t.gen));
                current == Some(*gen)
            });
        }
    }

    fn alloc_id(&mut self) -> TxnId {
        self.next_id += 1;
        self.next_id
    }

    /// Feeds one message received from `source`.
    pub fn handle_message(&mut self, msg: Message, source: Target, now: Instant) -> Event {
        if msg.is_request() {
            self.handle_request(msg, source, now)
        } else {
            self.handle_response(msg, now)
        }
    }

    fn handle_request(&mut self, msg: Message, source: Target, now: Instant) -> Event {
        let method = msg.method().cloned().unwrap_or(Method::Ack);
        let branch = header::transaction_id(&msg).unwrap_or_default();
        let invite_key = (branch.clone(), true);
        if method == Method::Ack {
            if let Some(&id) = self.server_index.get(&invite_key) {
                let t = self.servers.get_mut(&id).expect("indexed server txn");
                let absorbed = t
                    .last_response
                    .as_ref()
                    .and_then(Message::code)
                    .unwrap_or(0)
                    >= 300;
                if t.state == State::Completed {
                    t.state = State::Confirmed;
                    t.retransmit = None;
                    t.end = Some(
                        now + if source.reliable() {
                            Duration::ZERO
                        } else {
                            T4
                        },
                    );
                    self.schedule_server(id);
                }
                if absorbed {
                    return Event::Stray;
                }
            }
            return Event::Ack {
                request: msg,
                source,
            };
        }
        // Non-INVITE requests with one branch but different methods (a CANCEL and its INVITE's
        // branch) are different transactions.
        let branch = match method {
            Method::Invite => branch,
            _ => format!("{branch}|{}", method.as_str()),
        };
        let key = (branch.clone(), method == Method::Invite);
        if let Some(&id) = self.server_index.get(&key) {
            // A retransmission: repeat the last response, if any.
            self.retransmissions.requests_received += 1;
            let t = &self.servers[&id];
            if let Some(resp) = &t.last_response {
                self.out.push(Transmit {
                    target: t.source,
                    message: resp.clone(),
                });
            }
            return Event::Stray;
        }
        let id = self.alloc_id();
        self.servers.insert(
            id,
            Box::new(ServerTxn {
                branch,
                invite: method == Method::Invite,
                source,
                state: State::Initial,
                last_response: None,
                retransmit: None,
                end: None,
                gen: 0,
            }),
        );
        self.server_index.insert(key, id);
        Event::Request {
            txn: id,
            request: msg,
            source,
        }
    }

    /// The INVITE server transaction a CANCEL refers to (same top Via branch).
    pub fn server_invite_for_cancel(&self, cancel: &Message) -> Option<TxnId> {
        let branch = header::transaction_id(cancel)?;
        self.server_index.get(&(branch, true)).copied()
    }

    /// Whether a server transaction still waits for its final response.
    pub fn is_pending_server(&self, txn: TxnId) -> bool {
        self.servers
            .get(&txn)
            .is_some_and(|t| matches!(t.state, State::Initial | State::Proceeding))
    }

    /// Sends a response on a server transaction. Responses to transactions that already
    /// finished are ignored (the user may race with a retransmission or a CANCEL).
    pub fn respond(&mut self, txn: TxnId, response: Message, now: Instant) {
        let Some(t) = self.servers.get_mut(&txn) else {
            return;
        };
        if !matches!(t.state, State::Initial | State::Proceeding) {
            return;
        }
        let code = response.code().unwrap_or(500);
        self.out.push(Transmit {
            target: t.source,
            message: response.clone(),
        });
        t.last_response = Some(response);
        let reliable = t.source.reliable();
        if code < 200 {
            t.state = State::Proceeding;
            return;
        }
        if t.invite && code < 300 {
            // The TU retransmits 2xx itself (RFC 3261 §13.3.1.4); the transaction ends.
            self.remove_server(txn);
            return;
        }
        t.state = State::Completed;
        if t.invite {
            if !reliable {
                t.retransmit = Some((now + T1, T1));
            }
            t.end = Some(now + 64 * T1);
        } else {
            t.end = Some(now + if reliable { Duration::ZERO } else { 64 * T1 });
        }
        self.schedule_server(txn);
    }

    fn remove_server(&mut self, id: TxnId) {
        if let Some(t) = self.servers.remove(&id) {
            self.server_index.remove(&(t.branch, t.invite));
        }
    }

    /// Starts a client transaction. A top Via with a fresh branch is added from `target.local`.
    pub fn send_request(&mut self, mut request: Message, target: Target, now: Instant) -> TxnId {
        let branch = new_branch();
        request.headers.insert(
            0,
            super::message::Header {
                name: "Via".into(),
                value: via_value(target.transport, target.local, &branch),
            },
        );
        self.start_client(request, branch, target, now)
    }

    fn start_client(
        &mut self,
        request: Message,
        branch: String,
        target: Target,
        now: Instant,
    ) -> TxnId {
        let method = request.method().cloned().unwrap_or(Method::Options);
        let invite = method == Method::Invite;
        let id = self.alloc_id();
        self.out.push(Transmit {
            target,
            message: request.clone(),
        });
        self.client_index
            .insert((branch.clone(), method.as_str().to_string()), id);
        self.clients.insert(
            id,
            Box::new(ClientTxn {
                branch,
                invite,
                request,
                target,
                state: State::Initial,
                retransmit: (!target.reliable()).then_some((now + T1, T1)),
                end: now + 64 * T1,
                ack: None,
                gen: 0,
            }),
        );
        self.schedule_client(id);
        id
    }

    /// Sends a CANCEL for a pending INVITE client transaction (RFC 3261 §9.1). Returns the
    /// CANCEL's own transaction, or `None` when the INVITE is gone or already answered finally.
    pub fn send_cancel(&mut self, invite: TxnId, now: Instant) -> Option<TxnId> {
        let t = self.clients.get(&invite)?;
        if !t.invite || !matches!(t.state, State::Initial | State::Proceeding) {
            return None;
        }
        let inv = &t.request;
        let StartLine::Request { uri, .. } = &inv.start else {
            return None;
        };
        let mut cancel = Message {
            start: StartLine::Request {
                method: Method::Cancel,
                uri: uri.clone(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        for name in ["Via", "Route", "From", "To", "Call-ID"] {
            for v in inv.headers_named(name) {
                cancel.push_header(name, v.to_string());
            }
        }
        let (n, _) = header::cseq(inv)?;
        cancel.push_header("CSeq", format!("{n} CANCEL"));
        cancel.push_header("Max-Forwards", "70".into());
        let (branch, target) = (t.branch.clone(), t.target);
        Some(self.start_client(cancel, branch, target, now))
    }

    /// Whether an INVITE client transaction has seen a provisional response (CANCEL allowed).
    pub fn is_proceeding(&self, txn: TxnId) -> bool {
        self.clients
            .get(&txn)
            .is_some_and(|t| t.state == State::Proceeding)
    }

    /// Sends a message outside any transaction (the ACK for a 2xx, a 2xx retransmission).
    pub fn send_stateless(&mut self, message: Message, target: Target) {
        self.out.push(Transmit { target, message });
    }

    fn handle_response(&mut self, msg: Message, now: Instant) -> Event {
        let Some(branch) = header::top_branch(&msg) else {
            return Event::Stray;
        };
        let Some((_, method)) = header::cseq(&msg) else {
            return Event::Stray;
        };
        let key = (branch.to_string(), method.as_str().to_string());
        let Some(&id) = self.client_index.get(&key) else {
            return Event::Stray;
        };
        let code = msg.code().unwrap_or(0);
        let t = self.clients.get_mut(&id).expect("indexed client txn");
        let reliable = t.target.reliable();
        match (t.state, code) {
            (State::Initial | State::Proceeding, 100..=199) => {
                t.state = State::Proceeding;
                if t.invite {
                    t.retransmit = None;
                    // Timer B covers only the Calling state; the user bounds ringing.
                    t.end = now + Duration::from_secs(3600);
                } else if let Some(r) = &mut t.retransmit {
                    r.1 = T2;
                }
                self.schedule_client(id);
            }
            (State::Initial | State::Proceeding, 200..=299) if t.invite => {
                t.state = State::Accepted;
                t.retransmit = None;
                t.forget_request();
                t.end = now + 64 * T1;
                self.schedule_client(id);
            }
            (State::Accepted, 200..=299) => {}
            (State::Initial | State::Proceeding, _) => {
                t.state = State::Completed;
                t.retransmit = None;
                if t.invite {
                    let ack = ack_for_non_2xx(&t.request, &msg);
                    self.out.push(Transmit {
                        target: t.target,
                        message: ack.clone(),
                    });
                    t.ack = Some(ack);
                    t.forget_request();
                    t.end = now
                        + if reliable {
                            Duration::ZERO
                        } else {
                            32 * Duration::from_secs(1)
                        };
                } else {
                    t.end = now + if reliable { Duration::ZERO } else { T4 };
                }
                t.forget_request();
                self.schedule_client(id);
            }
            (State::Completed, _) => {
                // Retransmitted final response: repeat the ACK, tell nobody.
                if let Some(ack) = &t.ack {
                    self.out.push(Transmit {
                        target: t.target,
                        message: ack.clone(),
                    });
                }
                return Event::Stray;
            }
            _ => return Event::Stray,
        }
        Event::Response {
            txn: id,
            response: msg,
        }
    }

    /// The transport could not deliver to `target` (connect or TLS handshake failed): every
    /// client transaction toward it still waiting for a final response ends now, reported as
    /// a timeout (RFC 3261 §17.1.4: the TU is told at once and fails over).
    pub fn transport_failed(&mut self, target: Target) -> Vec<Event> {
        let failed: Vec<TxnId> = self
            .clients
            .iter()
            .filter(|(_, t)| t.target == target && matches!(t.state, State::Initial))
            .map(|(id, _)| *id)
            .collect();
        for id in &failed {
            let t = self.clients.remove(id).expect("listed");
            let method = t
                .request
                .method()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            self.client_index.remove(&(t.branch, method));
        }
        failed
            .into_iter()
            .map(|txn| Event::Timeout { txn })
            .collect()
    }

    /// Runs every timer due at `now`; returns the timeouts the user must act on.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(Reverse((at, id, gen))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.timer_gen(id) != Some(gen) {
                continue;
            }
            if self.servers.contains_key(&id) {
                self.server_timer(id, now);
            } else if self.client_timer(id, now) {
                events.push(Event::Timeout { txn: id });
            }
        }
        events
    }

    fn server_timer(&mut self, id: TxnId, now: Instant) {
        let t = self.servers.get_mut(&id).expect("checked");
        if t.end.is_some_and(|e| e <= now) {
            self.remove_server(id);
            return;
        }
        if let Some((at, interval)) = t.retransmit {
            if at <= now {
                if let Some(resp) = &t.last_response {
                    self.out.push(Transmit {
                        target: t.source,
                        message: resp.clone(),
                    });
                    self.retransmissions.responses_sent += 1;
                }
                let next = (interval * 2).min(T2);
                t.retransmit = Some((now + next, next));
            }
        }
        self.schedule_server(id);
    }

    /// Returns true when the transaction timed out waiting for a final response.
    fn client_timer(&mut self, id: TxnId, now: Instant) -> bool {
        let t = self.clients.get_mut(&id).expect("checked");
        if t.end <= now {
            let timed_out = matches!(t.state, State::Initial | State::Proceeding);
            let t = self.clients.remove(&id).expect("checked");
            let method = t
                .request
                .method()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            self.client_index.remove(&(t.branch, method));
            return timed_out;
        }
        if let Some((at, interval)) = t.retransmit {
            if at <= now {
                self.out.push(Transmit {
                    target: t.target,
                    message: t.request.clone(),
                });
                self.retransmissions.requests_sent += 1;
                let next = if t.invite {
                    interval * 2
                } else {
                    (interval * 2).min(T2)
                };
                t.retransmit = Some((now + next, next));
            }
        }
        self.schedule_client(id);
        false
    }
}

/// The ACK a client INVITE transaction sends for a non-2xx final (RFC 3261 §17.1.1.3).
fn ack_for_non_2xx(invite: &Message, response: &Message) -> Message {
    let uri = invite.uri().unwrap_or("sip:invalid").to_string();
    let mut ack = Message {
        start: StartLine::Request {
            method: Method::Ack,
            uri,
        },
        headers: Vec::new(),
        body: Vec::new(),
    };
    if let Some(via) = invite.header("Via") {
        ack.push_header("Via", via.to_string());
    }
    for name in ["Route", "From"] {
        for v in invite.headers_named(name) {
            ack.push_header(name, v.to_string());
        }
    }
    if let Some(to) = response.header("To") {
        ack.push_header("To", to.to_string());
    }
    if let Some(cid) = invite.header("Call-ID") {
        ack.push_header("Call-ID", cid.to_string());
    }
    let n = header::cseq(invite).map_or(1, |c| c.0);
    ack.push_header("CSeq", format!("{n} ACK"));
    ack.push_header("Max-Forwards", "70".into());
    ack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(transport: Transport) -> Target {
        Target {
            transport,
            remote: "10.99.2.2:5060".parse().unwrap(),
            local: "10.99.2.1:5060".parse().unwrap(),
        }
    }

    fn request(method: &str, branch: &str) -> Message {
        let text = format!(
            "{method} sip:1@10.99.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.99.2.2:5060;branch={branch}\r\n\
             From: <sip:a@x>;tag=f\r\nTo: <sip:1@y>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n\r\n"
        );
        Message::parse_datagram(text.as_bytes()).unwrap()
    }

    /// A response to `req` (whose top Via is the one that counts).
    fn response(req: &Message, code: u16) -> Message {
        let mut r = Message {
            start: StartLine::Response {
                code,
                reason: "X".into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        for n in ["Via", "From", "To", "Call-ID", "CSeq"] {
            r.push_header(n, req.header(n).unwrap().to_string());
        }
        r
    }

    fn sent_count(tx: &mut Transactions) -> usize {
        tx.drain_transmits().count()
    }

    #[test]
    fn a_transport_failure_ends_the_waiting_client_transactions_toward_that_target() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        let a = tx.send_request(request("INVITE", "x"), target(Transport::Tls), t0);
        let b = tx.send_request(request("OPTIONS", "y"), target(Transport::Tls), t0);
        let other = Target {
            remote: "10.0.0.9:5061".parse().unwrap(),
            ..target(Transport::Tls)
        };
        tx.send_request(request("INVITE", "z"), other, t0);
        let mut events = tx.transport_failed(target(Transport::Tls));
        events.sort_by_key(|e| match e {
            Event::Timeout { txn } => *txn,
            _ => u64::MAX,
        });
        assert_eq!(
            events,
            [Event::Timeout { txn: a }, Event::Timeout { txn: b }]
        );
        assert_eq!(tx.len(), 1, "the transaction toward another target stays");
        assert!(tx.handle_timeout(t0 + Duration::from_secs(40)).len() == 1);
    }

    #[test]
    fn invite_client_retransmits_with_timer_a_and_times_out_with_b() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        let id = tx.send_request(request("INVITE", "x"), target(Transport::Udp), t0);
        assert_eq!(sent_count(&mut tx), 1);
        let mut retransmits = 0;
        let mut timed_out = false;
        let mut now = t0;
        while let Some(at) = tx.poll_timeout() {
            now = at;
            for ev in tx.handle_timeout(now) {
                assert_eq!(ev, Event::Timeout { txn: id });
                timed_out = true;
            }
            retransmits += sent_count(&mut tx);
        }
        // Timer A at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; timer B at 32 s.
        assert_eq!(retransmits, 6);
        assert_eq!(tx.retransmissions().requests_sent, 6);
        assert!(timed_out);
        assert_eq!(now - t0, 64 * T1);
        assert!(tx.is_empty());
    }

    #[test]
    fn invite_client_acks_non_2xx_and_absorbs_retransmissions() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        let id = tx.send_request(request("INVITE", "x"), target(Transport::Udp), t0);
        let sent = tx.drain_transmits().next().unwrap().message;
        let ringing = response(&sent, 180);
        assert!(matches!(
            tx.handle_message(ringing, target(Transport::Udp), t0),
            Event::Response { txn, .. } if txn == id
        ));
        assert!(tx.is_proceeding(id));
        // No more retransmissions once proceeding.
        tx.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(sent_count(&mut tx), 0);
        let busy = response(&sent, 486);
        assert!(matches!(
            tx.handle_message(busy.clone(), target(Transport::Udp), t0),
            Event::Response { .. }
        ));
        let ack = tx.drain_transmits().next().unwrap().message;
        assert_eq!(ack.method(), Some(&Method::Ack));
        assert_eq!(header::top_branch(&ack), header::top_branch(&sent));
        assert_eq!(
            tx.handle_message(busy, target(Transport::Udp), t0),
            Event::Stray
        );
        assert_eq!(
            sent_count(&mut tx),
            1,
            "ACK repeated for the retransmitted 486"
        );
        tx.handle_timeout(t0 + Duration::from_secs(33));
        assert!(tx.is_empty(), "timer D ended the transaction");
    }

    /// Found in review: each ringing INVITE left a one-hour timer entry behind when its 2xx
    /// came, so the heap grew with every call for an hour.
    #[test]
    fn stale_timer_entries_do_not_pile_up_call_after_call() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        for n in 0..2000 {
            let now = t0 + Duration::from_millis(25 * n);
            let sent = request("INVITE", &format!("z9hG4bK-{n}"));
            tx.send_request(sent, target(Transport::Udp), now);
            let sent = tx.drain_transmits().next().unwrap().message;
            for code in [100, 180, 200] {
                tx.handle_message(response(&sent, code), target(Transport::Udp), now);
            }
            while tx.poll_timeout().is_some_and(|at| at <= now) {
                tx.handle_timeout(now);
            }
        }
        let live = tx.len();
        assert!(
            tx.timers.len() <= 2 * live + 65,
            "{} timer entries for {live} live transactions",
            tx.timers.len()
        );
    }

    #[test]
    fn invite_client_passes_2xx_retransmissions_up() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        let id = tx.send_request(request("INVITE", "x"), target(Transport::Udp), t0);
        let sent = tx.drain_transmits().next().unwrap().message;
        for _ in 0..2 {
            assert!(matches!(
                tx.handle_message(response(&sent, 200), target(Transport::Udp), t0),
                Event::Response { txn, .. } if txn == id
            ));
        }
        assert_eq!(sent_count(&mut tx), 0, "2xx ACK is the dialog's job");
    }

    #[test]
    fn non_invite_client_timer_e_caps_at_t2() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        tx.send_request(request("BYE", "x"), target(Transport::Udp), t0);
        sent_count(&mut tx);
        let mut gaps = Vec::new();
        let mut last = t0;
        while let Some(at) = tx.poll_timeout() {
            tx.handle_timeout(at);
            if sent_count(&mut tx) > 0 {
                gaps.push(at - last);
                last = at;
            }
        }
        assert_eq!(&gaps[..4], &[T1, 2 * T1, 4 * T1, T2]);
        assert!(gaps.iter().all(|g| *g <= T2));
    }

    #[test]
    fn reliable_transport_does_not_retransmit() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        tx.send_request(request("INVITE", "x"), target(Transport::Tcp), t0);
        sent_count(&mut tx);
        tx.handle_timeout(t0 + Duration::from_secs(31));
        assert_eq!(sent_count(&mut tx), 0);
    }

    #[test]
    fn invite_server_retransmits_final_until_ack() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        let inv = request("INVITE", "z9hG4bKs");
        let Event::Request { txn, .. } = tx.handle_message(inv.clone(), target(Transport::Udp), t0)
        else {
            panic!("expected a request")
        };
        tx.respond(txn, response(&inv, 100), t0);
        // A retransmitted INVITE gets the last response again.
        assert_eq!(
            tx.handle_message(inv.clone(), target(Transport::Udp), t0),
            Event::Stray
        );
        assert_eq!(sent_count(&mut tx), 2);
        tx.respond(txn, response(&inv, 486), t0);
        sent_count(&mut tx);
        tx.handle_timeout(t0 + T1);
        tx.handle_timeout(t0 + 3 * T1);
        assert_eq!(sent_count(&mut tx), 2, "timer G fired twice");
        let r = tx.retransmissions();
        assert_eq!((r.requests_received, r.responses_sent), (1, 2));
        let mut ack = request("ACK", "z9hG4bKs");
        ack.set_header("CSeq", "1 ACK".into());
        assert_eq!(
            tx.handle_message(ack, target(Transport::Udp), t0 + 3 * T1),
            Event::Stray
        );
        // Timer I: T4 after the ACK.
        tx.handle_timeout(t0 + 3 * T1 + T4);
        assert_eq!(sent_count(&mut tx), 0, "no retransmission once confirmed");
        assert!(tx.is_empty(), "timer I ended the transaction");
    }

    #[test]
    fn invite_server_gives_up_with_timer_h() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        let inv = request("INVITE", "z9hG4bKh");
        let Event::Request { txn, .. } = tx.handle_message(inv.clone(), target(Transport::Udp), t0)
        else {
            panic!()
        };
        tx.respond(txn, response(&inv, 500), t0);
        tx.handle_timeout(t0 + 64 * T1);
        assert!(tx.is_empty());
    }

    #[test]
    fn ack_for_2xx_reaches_the_user_and_cancel_finds_its_invite() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        let inv = request("INVITE", "z9hG4bKa");
        let Event::Request { txn, .. } = tx.handle_message(inv.clone(), target(Transport::Udp), t0)
        else {
            panic!()
        };
        let cancel = request("CANCEL", "z9hG4bKa");
        assert_eq!(tx.server_invite_for_cancel(&cancel), Some(txn));
        tx.respond(txn, response(&inv, 200), t0);
        let ack = request("ACK", "z9hG4bKother");
        assert!(matches!(
            tx.handle_message(ack, target(Transport::Udp), t0),
            Event::Ack { .. }
        ));
    }

    #[test]
    fn non_invite_server_answers_retransmissions_then_ends_with_timer_j() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        let bye = request("BYE", "z9hG4bKb");
        let Event::Request { txn, .. } = tx.handle_message(bye.clone(), target(Transport::Udp), t0)
        else {
            panic!()
        };
        tx.respond(txn, response(&bye, 200), t0);
        assert_eq!(
            tx.handle_message(bye, target(Transport::Udp), t0 + T1),
            Event::Stray
        );
        assert_eq!(sent_count(&mut tx), 2);
        tx.handle_timeout(t0 + 64 * T1);
        assert!(tx.is_empty());
    }

    #[test]
    fn cancel_is_built_from_the_invite() {
        let mut tx = Transactions::new();
        let t0 = Instant::now();
        let id = tx.send_request(request("INVITE", "x"), target(Transport::Udp), t0);
        let sent = tx.drain_transmits().next().unwrap().message;
        assert_eq!(tx.send_cancel(id, t0), Some(id + 1));
        let cancel = tx.drain_transmits().next().unwrap().message;
        assert_eq!(cancel.method(), Some(&Method::Cancel));
        assert_eq!(cancel.header("Via"), sent.header("Via"));
        assert_eq!(cancel.header("CSeq"), Some("1 CANCEL"));
        assert_eq!(cancel.uri(), sent.uri());
    }
}
