//! The sans-IO back-to-back user agent: every call is two dialogs (leg A toward the caller's
//! trunk, leg B toward the routed trunk) with nothing of one side's identity or topology visible
//! on the other, and all media anchored on mediagate.
//!
//! Feed it with [`B2bua::handle_message`] and [`B2bua::handle_timeout`]; collect wire output with
//! [`B2bua::drain_transmits`] and data-plane commands with [`B2bua::drain_media_commands`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

#[path = "b2bua_capture.rs"]
mod capture;
#[path = "b2bua_forks.rs"]
mod forks;
#[path = "b2bua_identity.rs"]
mod identity;
#[path = "b2bua_journal.rs"]
pub mod journal;
#[path = "b2bua_midcall.rs"]
mod midcall;
#[path = "b2bua_peers.rs"]
mod peers;
#[path = "b2bua_prack.rs"]
mod prack;
#[path = "b2bua_refer.rs"]
mod refer;
#[path = "b2bua_timers.rs"]
mod timers;
#[path = "b2bua_trunks.rs"]
mod trunks;

use super::advertise;
use super::auth::{ClientAuth, Inbound};
use super::dialog::{contact_for, reason, response_to, token, with_sdp, Dialog, ALLOW, PRODUCT};
use super::header;
use super::message::{Message, Method, StartLine};
use super::negotiate::{self, Unmet};
use super::policy;
use super::transaction::{Event, Target, Transactions, Transmit, TxnId, T1, T2};
use super::translate::Numbers;
use super::validate;
use crate::cdr::{Attempt, AttemptResult, CallTimes, Cdr, Ending, MediaCounters};
use crate::config::{Config, Direction, Endpoint, Redirect, Unknown, POLICY_HEADERS};
use crate::logging::{Number, Uri};
use crate::media::session::{AnchorError, CallMedia, Resources, SharedResources, Side};
use crate::media::Command;
use crate::sdp::Sdp;
use crate::trunk::health::Health;
use crate::trunk::limits::{Limits, Refusal};
use crate::trunk::register::Registrations;
use crate::trunk::select::Selector;

/// How often media activity is checked for timeouts.
const MEDIA_SWEEP: Duration = Duration::from_secs(1);
/// Redirects a call follows at most (`redirect = "follow"`), so two trunks redirecting to each
/// other cannot loop.
const MAX_REDIRECTS: u32 = 3;

/// Methods of SIP extensions mediagate knows of but does not serve outside a dialog: 405 (with
/// Allow) for these, 501 for methods it does not recognise at all (RFC 3261 §8.2.1).
const KNOWN_METHODS: [&str; 8] = [
    "SUBSCRIBE",
    "NOTIFY",
    "MESSAGE",
    "REFER",
    "INFO",
    "UPDATE",
    "PRACK",
    "PUBLISH",
];

/// A per-call timer, checked against the call's state when it fires (stale ones are skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    /// The INVITE of attempt N got no response at all within the trunk's `invite_timeout_s`.
    Invite(u32),
    /// The trunk's `max_duration_s` since the answer.
    MaxDuration,
    /// A leg's session timer (`b2bua_timers.rs`), of the given generation: refresh or expiry.
    Session(Side, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// INVITE sent to B, no final answer yet.
    Setup,
    /// 2xx relayed to A, waiting for A's ACK.
    Answered,
    Confirmed,
    /// Hung up, cancelled or failed: media released, waiting for the last transactions.
    Ending,
}

/// What a client transaction was sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Invite,
    Cancel,
    Bye,
    /// An in-dialog request relayed from the other leg (re-INVITE, UPDATE, INFO, PRACK).
    Relay,
    /// mediagate's own session refresh (`b2bua_timers.rs`).
    Refresh,
    /// mediagate's own PRACK of a reliable provisional (`b2bua_prack.rs`).
    Prack,
}

/// The 2xx sent to A, retransmitted until A's ACK (RFC 3261 §13.3.1.4).
#[derive(Debug)]
struct PendingOk {
    response: Message,
    target: Target,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

#[derive(Debug)]
struct Call {
    label: String,
    /// The configuration the call started with: its translation, header policy, timeouts,
    /// failover and response mapping stay as they were when a reload (SIGHUP) changes them
    /// for new calls.
    config: Arc<Config>,
    /// `call{id, sip_call_id}`: entered while the B2BUA works on this call, so every log
    /// line of the call names it.
    span: tracing::Span,
    started: Instant,
    phase: Phase,
    a: Dialog,
    a_trunk: usize,
    /// A's INVITE, kept to build responses to it.
    a_invite: Message,
    a_txn: TxnId,
    a_offer: Option<Sdp>,
    /// Called and calling numbers after the source trunk's inbound translation; each B trunk's
    /// outbound rules start from these.
    numbers: Numbers,
    b: Dialog,
    b_trunk: usize,
    /// Peers of `b_trunk` not tried yet, in the order the trunk's strategy gave.
    remaining_peers: Vec<usize>,
    /// Trunks of the route not tried yet.
    remaining_trunks: Vec<usize>,
    /// INVITEs sent toward trunks so far; the last one is current.
    invites_sent: u32,
    /// How each finished INVITE toward a trunk ended, for the call's record.
    attempts: Vec<Attempt>,
    /// Wall-clock start and answer, for the call's record.
    started_wall: SystemTime,
    answered_wall: Option<SystemTime>,
    /// The final status code the caller got.
    final_code: Option<u16>,
    /// Whether the current attempt got any response (a 100 Trying stops the invite timeout).
    responded: bool,
    redirects: u32,
    /// Whether this call still counts against its trunks' limits.
    occupying: bool,
    /// An emergency number: limits and drain do not apply to it (`sip.emergency`).
    emergency: bool,
    b_txn: TxnId,
    b_invite_cseq: u32,
    cancelled: bool,
    cancel_sent: bool,
    ok_to_a: Option<PendingOk>,
    ack_to_b: Option<Message>,
    /// Client transactions still running for this call.
    open_txns: Vec<TxnId>,
    media: CallMedia,
    /// Mid-call requests relayed to the other leg and negotiation state (`b2bua_midcall.rs`).
    mid: midcall::MidCall,
    /// Session timers of both legs (`b2bua_timers.rs`).
    timers: timers::SessionTimers,
    /// A REFER passed between the legs (`b2bua_refer.rs`).
    transfer: refer::Transfer,
    /// Reliable provisional responses toward the caller (`b2bua_prack.rs`).
    early: prack::Early,
    /// The callee leg's early dialogs once it forked (`b2bua_forks.rs`).
    forks: Option<Box<forks::Forks>>,
}

impl Call {
    /// An offer about to be sent to leg `to`, reduced to the codecs that leg's trunk allows
    /// (`trunk.codecs`): `Ok(None)` when it passes unchanged (no offer, or no list), `Err` when
    /// nothing of it is left (the sender gets 488).
    fn offer_for(&self, to: Side, offer: Option<&Sdp>) -> Result<Option<Sdp>, ()> {
        let trunk = match to {
            Side::A => self.a_trunk,
            Side::B => self.b_trunk,
        };
        let codecs = &self.config.trunks[trunk].codecs;
        match offer {
            Some(offer) if !codecs.is_empty() => offer.keep_codecs(codecs).map(Some).ok_or(()),
            _ => Ok(None),
        }
    }
}

/// Identifies a call inside the B2BUA.
type CallKey = u64;

/// The B2BUA core.
pub struct B2bua {
    config: Arc<Config>,
    txns: Transactions,
    /// Boxed: a call is ~1.8 KB, and the table's slack and its doubling steps (which stay in
    /// RSS at the peak) then cost a pointer per slot, not a call.
    calls: HashMap<CallKey, Box<Call>>,
    by_call_id: HashMap<String, (CallKey, Side)>,
    by_client_txn: HashMap<TxnId, (CallKey, Purpose)>,
    by_server_invite: HashMap<TxnId, CallKey>,
    /// In-dialog requests relayed from one leg to the other, by client transaction.
    relayed: HashMap<TxnId, midcall::Relayed>,
    media: SharedResources,
    next_call: CallKey,
    next_sweep: Option<Instant>,
    health: Health,
    selector: Selector,
    limits: Limits,
    deadlines: BinaryHeap<Reverse<(Instant, CallKey, Deadline)>>,
    /// INVITEs given up on by the invite timeout, with the dialog they would have made: a late
    /// 2xx is ACKed and hung up, a late provisional cancelled.
    abandoned: HashMap<TxnId, Dialog>,
    /// Records of ended calls not yet taken by [`Self::drain_cdrs`].
    cdrs: Vec<Cdr>,
    /// Shutting down: new calls get 503.
    stopping: bool,
    /// Digest client, inbound challenge and registrations (`b2bua_identity.rs`).
    auth: ClientAuth,
    inbound: Inbound,
    registrations: Registrations,
    /// New INVITEs per trunk they came from (index as `config.trunks`), for `/metrics`.
    calls_started: Vec<u64>,
    screened: Screened,
    /// Confirmed calls whose journal record is out of date, and ends of journalled calls
    /// (`b2bua_journal.rs`; only with `media.handover`).
    journal_dirty: Vec<CallKey>,
    journal_ends: Vec<journal::JournalEntry>,
    /// Provisionals of forks beyond their trunk's `max_early_dialogs`, not relayed.
    forks_unrelayed: u64,
}

/// What [`B2bua::counters`] reports.
#[derive(Debug, Clone)]
pub struct Counters<'a> {
    /// New INVITEs per trunk they came from, by trunk name (trunks of the running
    /// configuration only: a trunk removed by a reload leaves with its counter).
    pub calls_started: Vec<(&'a str, u64)>,
    /// Requests refused before any transaction was created.
    pub screened: Screened,
    pub retransmissions: crate::sip::transaction::Retransmissions,
    /// Live transactions.
    pub transactions: usize,
    /// Calls in the table, including ones being torn down.
    pub calls: usize,
    /// Dialogs: two per call, plus abandoned forks kept to BYE them.
    pub dialogs: usize,
    /// In-dialog requests relayed between the legs and still remembered (a leak check: a
    /// re-INVITE is forgotten 64×T1 after its ACK).
    pub relayed: usize,
    /// Provisional responses of forks beyond the callee trunk's `max_early_dialogs`, not
    /// relayed to the caller (`b2bua_forks.rs`).
    pub forks_unrelayed: u64,
}

/// Requests the B2BUA refused before any transaction or call saw them, by reason.
#[derive(Debug, Clone, Copy, Default)]
pub struct Screened {
    /// From an address that is no trunk peer, answered 403 (`sip.unknown = "reject"`).
    pub unknown_rejected: u64,
    /// From an address that is no trunk peer, not answered (`sip.unknown = "drop"`, or ACKs).
    pub unknown_dropped: u64,
    /// Parsed but invalid (RFC 3261 §8.2, `sip::validate`): answered 400/416.
    pub invalid: u64,
}

fn now_label(n: u64) -> String {
    format!("c-{n}")
}

impl B2bua {
    /// A B2BUA for `config` with media resources of its own.
    pub fn new(config: Arc<Config>) -> Self {
        let media = Resources::shared(config.media.port_first, config.media.port_last);
        Self::with_resources(config, media)
    }

    /// A B2BUA sharing media resources with other front ends.
    pub fn with_resources(config: Arc<Config>, media: SharedResources) -> Self {
        B2bua {
            health: Health::new(&config, Instant::now()),
            selector: Selector::new(&config.trunks),
            limits: Limits::new(&config),
            deadlines: BinaryHeap::new(),
            abandoned: HashMap::new(),
            cdrs: Vec::new(),
            stopping: false,
            auth: ClientAuth::default(),
            inbound: Inbound::new(Inbound::random_secret(), Instant::now()),
            registrations: Registrations::new(&config, Instant::now()),
            calls_started: vec![0; config.trunks.len()],
            screened: Screened::default(),
            journal_dirty: Vec::new(),
            journal_ends: Vec::new(),
            forks_unrelayed: 0,
            config,
            txns: Transactions::new(),
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            by_client_txn: HashMap::new(),
            by_server_invite: HashMap::new(),
            relayed: HashMap::new(),
            media,
            next_call: 0,
            next_sweep: None,
        }
    }

    /// Number of streams the data plane must be able to hold (two per port pair).
    pub fn stream_capacity(&self) -> usize {
        self.media.borrow().pool.total() * 2
    }

    /// Counters and sizes for `/metrics` (trunk, peer and registration state come from
    /// [`Self::status`]).
    pub fn counters(&self) -> Counters<'_> {
        Counters {
            calls_started: self
                .config
                .trunks
                .iter()
                .zip(&self.calls_started)
                .filter(|(t, _)| !t.retired)
                .map(|(t, n)| (t.name.as_str(), *n))
                .collect(),
            screened: self.screened,
            retransmissions: self.txns.retransmissions(),
            transactions: self.txns.len(),
            calls: self.calls.len(),
            dialogs: self.calls.len() * 2 + self.abandoned.len(),
            relayed: self.relayed.len(),
            forks_unrelayed: self.forks_unrelayed,
        }
    }

    /// Calls not yet ended.
    pub fn active_calls(&self) -> usize {
        self.calls
            .values()
            .filter(|c| c.phase != Phase::Ending)
            .count()
    }

    /// Queued wire output, in the order it was produced, with each trunk's `Server` policy
    /// applied to the responses its peers get and its `advertise` address written where
    /// mediagate names itself.
    pub fn drain_transmits(&mut self) -> impl Iterator<Item = Transmit> + '_ {
        let config = &self.config;
        self.txns.drain_transmits().map(move |mut t| {
            if let Some(trunk) = config.trunk_of_peer(t.target.remote.ip()) {
                if !t.message.is_request() {
                    policy::server_policy(config, trunk, &mut t.message);
                }
                if let Some(public) = config.trunks[trunk].advertise {
                    advertise::rewrite(&mut t.message, t.target.local, public);
                }
            }
            t
        })
    }

    /// Queued session changes for the data plane (of every front end sharing the resources).
    pub fn drain_media_commands(&mut self) -> Vec<Command> {
        self.media.borrow_mut().take_commands()
    }

    /// The next instant at which [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let oks = self.calls.values().flat_map(|c| {
            [&c.ok_to_a, &c.mid.ok]
                .into_iter()
                .flatten()
                .map(|p| p.next)
                .chain(c.early.next_timer())
        });
        [
            self.txns.poll_timeout(),
            self.next_sweep,
            self.health.poll_timeout(),
            self.registrations.poll_timeout(),
            self.deadlines.peek().map(|Reverse((at, _, _))| *at),
        ]
        .into_iter()
        .flatten()
        .chain(oks)
        .min()
    }

    /// Feeds a message received on `source`.
    pub fn handle_message(&mut self, mut msg: Message, source: Target, now: Instant) {
        self.next_sweep.get_or_insert(now + MEDIA_SWEEP);
        if msg.is_request() {
            let is_ack = msg.method() == Some(&Method::Ack);
            if self.config.trunk_of_peer(source.remote.ip()).is_none() {
                // Before any transaction exists, so a stranger costs no state; stateless 403s
                // answer its retransmissions too.
                tracing::debug!(from = %source.remote, "request from unknown source");
                if self.config.sip.unknown == Unknown::Drop || is_ack {
                    self.screened.unknown_dropped += 1;
                } else {
                    self.screened.unknown_rejected += 1;
                    let r = response_to(&msg, 403, reason(403), Some(&token()));
                    self.txns.send_stateless(r, source);
                }
                return;
            }
            if let Err(why) = validate::check_request(&msg) {
                tracing::debug!(why = why.reason, from = %source.remote, "bad request");
                self.screened.invalid += 1;
                if !is_ack {
                    self.txns
                        .send_stateless(response_to(&msg, why.code, why.reason, None), source);
                }
                return;
            }
            header::stamp_received(&mut msg, source.remote);
        }
        let span = msg
            .header("Call-ID")
            .and_then(|id| self.by_call_id.get(id))
            .map_or_else(tracing::Span::none, |(key, _)| self.span_of(*key));
        let _in_call = span.enter();
        match self.txns.handle_message(msg, source, now) {
            Event::Request {
                txn,
                request,
                source,
            } => self.on_request(txn, request, source, now),
            Event::Ack { request, source } => self.on_ack(request, source, now),
            Event::Response { txn, response } => self.on_response(txn, response, now),
            Event::Timeout { txn } => self.on_txn_timeout(txn, now),
            Event::Stray => {}
        }
    }

    /// Runs timers due at `now`: transactions, 2xx retransmissions, media timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        for ev in self.txns.handle_timeout(now) {
            if let Event::Timeout { txn } = ev {
                let key = self
                    .by_client_txn
                    .get(&txn)
                    .map(|(k, _)| *k)
                    .or_else(|| self.by_server_invite.get(&txn).copied());
                let span = key.map_or_else(tracing::Span::none, |k| self.span_of(k));
                let _in_call = span.enter();
                self.on_txn_timeout(txn, now);
            }
        }
        let mut unacked = Vec::new();
        for (key, call) in &mut self.calls {
            for p in [&mut call.ok_to_a, &mut call.mid.ok].into_iter().flatten() {
                if p.give_up <= now {
                    unacked.push(*key);
                } else if p.next <= now {
                    self.txns.send_stateless(p.response.clone(), p.target);
                    p.interval = (p.interval * 2).min(T2);
                    p.next = now + p.interval;
                }
            }
        }
        unacked.dedup();
        self.retransmit_reliable(now);
        for key in unacked {
            let span = self.span_of(key);
            let _in_call = span.enter();
            tracing::info!(call = %self.calls[&key].label, "no ACK for 200: hanging up");
            self.hang_up_both(key, Ending::NoAck, now);
        }
        if self.next_sweep.is_some_and(|s| s <= now) {
            self.next_sweep = Some(now + MEDIA_SWEEP);
            self.sweep_media(now);
        }
        while let Some(Reverse((at, key, deadline))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let span = self.span_of(key);
            let _in_call = span.enter();
            self.on_deadline(key, deadline, now);
        }
        self.health.expire(now);
        for peer in self.health.due(now) {
            self.send_probe(peer, now);
        }
        self.send_registers(now);
    }

    /// The log span of call `key` (a disabled one when the call is gone).
    fn span_of(&self, key: CallKey) -> tracing::Span {
        self.calls
            .get(&key)
            .map_or_else(tracing::Span::none, |c| c.span.clone())
    }

    /// Sends an OPTIONS keepalive to trunk peer `(t, p)`.
    fn send_probe(&mut self, (t, p): (usize, usize), now: Instant) {
        let trunk = &self.config.trunks[t];
        let peer = trunk.peers[p];
        let target = Target {
            transport: peer.transport,
            remote: peer.addr,
            local: trunk.local.addr,
        };
        let mut options = Message {
            start: StartLine::Request {
                method: Method::Options,
                uri: format!("sip:{}", peer.addr),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        options.push_header("Max-Forwards", "70".into());
        options.push_header(
            "From",
            format!("<sip:mediagate@{}>;tag={}", trunk.local.addr, token()),
        );
        options.push_header("To", format!("<sip:{}>", peer.addr));
        options.push_header("Call-ID", format!("{}@{}", token(), trunk.local.addr.ip()));
        options.push_header("CSeq", "1 OPTIONS".into());
        options.push_header("Contact", contact_for(&target));
        options.push_header("User-Agent", PRODUCT.into());
        options.push_header("Content-Length", "0".into());
        let txn = self.send_request_to(t, options, target, now);
        self.health.sent((t, p), txn, now);
    }

    /// A per-call timer fired.
    fn on_deadline(&mut self, key: CallKey, deadline: Deadline, now: Instant) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        match deadline {
            Deadline::Invite(attempt)
                if call.phase == Phase::Setup
                    && !call.cancelled
                    && !call.responded
                    && attempt == call.invites_sent =>
            {
                tracing::info!(call = %call.label, peer = %call.b.target.remote, "no response to INVITE: giving up on the peer");
                let (txn, dialog) = (call.b_txn, call.b.clone());
                self.txn_done(key, txn);
                self.abandoned.insert(txn, dialog);
                self.attempt_failed(key, AttemptResult::Timeout, 408, now);
            }
            Deadline::MaxDuration if matches!(call.phase, Phase::Answered | Phase::Confirmed) => {
                tracing::info!(call = %call.label, "maximum call duration reached: hanging up both legs");
                self.hang_up_both(key, Ending::MaxDuration, now);
            }
            Deadline::Session(side, generation) => {
                self.on_session_deadline(key, side, generation, now)
            }
            _ => {}
        }
    }

    /// Records how the current attempt ended, then tries the next candidate; answers the caller
    /// `code` when none is left.
    fn attempt_failed(&mut self, key: CallKey, result: AttemptResult, code: u16, now: Instant) {
        self.finish_attempt(key, result);
        if !self.fail_over(key, now) {
            let ending = match result {
                AttemptResult::Code(_) => Ending::CalleeRejected,
                AttemptResult::Timeout => Ending::Failed,
            };
            self.fail_call(key, code, ending, now);
        }
    }

    /// Records how the call's current INVITE toward a trunk ended.
    fn finish_attempt(&mut self, key: CallKey, result: AttemptResult) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.attempts.push(Attempt {
            trunk: self.config.trunks[call.b_trunk].name.clone(),
            peer: Endpoint {
                transport: call.b.target.transport,
                addr: call.b.target.remote,
            },
            code: result,
        });
    }

    /// A response to an INVITE abandoned by the invite timeout: the peer came back too late.
    fn on_abandoned_response(&mut self, txn: TxnId, resp: &Message, code: u16, now: Instant) {
        match code {
            101..=199 => {
                let _ = self.txns.send_cancel(txn, now);
            }
            200..=299 => {
                if let Some(dialog) = self.abandoned.remove(&txn) {
                    self.ack_and_bye(dialog, resp, now);
                }
            }
            _ if code >= 300 => {
                self.abandoned.remove(&txn);
            }
            _ => {}
        }
    }

    /// Shutting down: new calls are refused with 503 while calls up go on.
    pub fn begin_shutdown(&mut self) {
        self.stopping = true;
    }

    /// The end of a shutdown: calls being set up are answered 503 (and their INVITE
    /// cancelled), answered ones get a BYE on both legs.
    pub fn hang_up_all(&mut self, now: Instant) {
        let live: Vec<(CallKey, Phase)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.phase != Phase::Ending)
            .map(|(k, c)| (*k, c.phase))
            .collect();
        for (key, phase) in live {
            if phase == Phase::Setup {
                self.cancel_b(key, now);
                let call = self.calls.get_mut(&key).expect("live");
                call.cancelled = true;
                self.fail_call(key, 503, Ending::Shutdown, now);
            } else {
                self.hang_up_both(key, Ending::Shutdown, now);
            }
        }
    }

    /// Whether nothing is left to finish: no call (ending ones included) and no transaction.
    pub fn is_idle(&self) -> bool {
        self.calls.is_empty() && self.txns.is_empty()
    }

    /// Starts or stops draining the trunk named `name`: no new calls go to it while its calls
    /// up continue. Errors when no trunk has that name.
    pub fn set_draining(&mut self, name: &str, on: bool) -> Result<(), String> {
        let t = self
            .config
            .trunks
            .iter()
            .position(|t| t.name == name && !t.retired)
            .ok_or_else(|| format!("no trunk is named `{name}`"))?;
        self.limits.set_draining(t, on);
        tracing::info!(trunk = name, draining = on, "trunk drain changed");
        Ok(())
    }

    fn respond(&mut self, txn: TxnId, request: &Message, code: u16, now: Instant) {
        self.respond_with(txn, request, code, None, now);
    }

    /// [`Self::respond`] with one more header: what the refusal of a request [`negotiate`]
    /// found unmet says would have been accepted.
    fn respond_with(
        &mut self,
        txn: TxnId,
        request: &Message,
        code: u16,
        extra: Option<(&'static str, String)>,
        now: Instant,
    ) {
        let mut r = response_to(request, code, reason(code), Some(&token()));
        if let Some((name, value)) = extra {
            r.push_header(name, value);
        }
        if code == 405 || (code == 200 && request.method() == Some(&Method::Options)) {
            r.push_header("Allow", ALLOW.into());
        }
        if code == 503 {
            r.push_header("Retry-After", "5".into());
        }
        if code == 422 {
            r.push_header("Min-SE", timers::min_se());
        }
        self.txns.respond(txn, r, now);
    }

    /// 503 with the Retry-After the refusal calls for.
    fn refuse(&mut self, txn: TxnId, request: &Message, why: Refusal, now: Instant) {
        let mut r = response_to(request, 503, reason(503), Some(&token()));
        r.push_header("Retry-After", why.retry_after().as_secs().to_string());
        self.txns.respond(txn, r, now);
    }

    /// Answers a new INVITE from trunk `trunk` that is refused before it becomes a call (loop,
    /// no route, denied, over a limit, no trunk available, unusable offer) with `code` (503
    /// with the Retry-After of `why`), and records it: `ended_by` mediagate, `failed`, no
    /// attempts (README "Call detail records").
    fn refuse_invite(
        &mut self,
        txn: TxnId,
        req: &Message,
        trunk: usize,
        code: u16,
        why: Option<Refusal>,
        now: Instant,
    ) {
        match why {
            Some(why) => self.refuse(txn, req, why, now),
            None => self.respond(txn, req, code, now),
        }
        self.record_refused(req, trunk, code);
    }

    /// Answers a request whose demands [`negotiate`] found unmet; a new INVITE so refused is
    /// recorded like any refused call.
    fn refuse_unmet(
        &mut self,
        txn: TxnId,
        req: &Message,
        new_call_on: Option<usize>,
        unmet: Unmet,
        now: Instant,
    ) {
        tracing::info!(code = unmet.code, header = ?unmet.header, "request asks what mediagate cannot do");
        let code = unmet.code;
        self.respond_with(txn, req, code, unmet.header, now);
        if let Some(trunk) = new_call_on {
            self.record_refused(req, trunk, code);
        }
    }

    /// The log line and CDR of a new INVITE refused with `code` before it became a call.
    fn record_refused(&mut self, req: &Message, trunk: usize, code: u16) {
        self.next_call += 1;
        let label = now_label(self.next_call);
        tracing::Span::current().record("id", tracing::field::display(&label));
        let dialled = Numbers::of_invite(req);
        tracing::info!(call = %label, code, called = %Number(&dialled.called),
            calling = %Number(&dialled.calling), "new call refused");
        let wall = SystemTime::now();
        self.cdrs.push(Cdr {
            call: label,
            sip_call_id: req.header("Call-ID").unwrap_or_default().to_string(),
            times: CallTimes {
                start: wall,
                answer: None,
                end: wall,
            },
            trunk_in: self.config.trunks[trunk].name.clone(),
            trunk_out: None,
            calling_in: dialled.calling,
            called_in: dialled.called,
            calling_out: None,
            called_out: None,
            final_code: code,
            ending: Ending::Failed,
            attempts: Vec::new(),
            media_in: MediaCounters::default(),
            media_out: MediaCounters::default(),
        });
    }

    fn on_request(&mut self, txn: TxnId, req: Message, source: Target, now: Instant) {
        let method = req.method().cloned().expect("requests have methods");
        let Some(trunk) = self.config.trunk_of_peer(source.remote.ip()) else {
            // `handle_message` screens strangers out before their transaction is created.
            return self.respond(txn, &req, 403, now);
        };
        if header::tag(&req, "To").is_some() {
            return self.on_in_dialog(txn, req, method, now);
        }
        match method {
            // A trunk removed by a reload only finishes the calls it carries.
            Method::Invite if self.config.trunks[trunk].retired => {
                self.respond(txn, &req, 403, now)
            }
            Method::Invite => self.on_invite(txn, req, source, trunk, now),
            Method::Cancel => self.on_cancel(txn, req, now),
            Method::Options => match negotiate::required_extensions(&req) {
                Ok(()) => self.respond(txn, &req, 200, now),
                Err(unmet) => self.refuse_unmet(txn, &req, None, unmet, now),
            },
            Method::Bye => self.respond(txn, &req, 481, now),
            Method::Other(ref m) if !KNOWN_METHODS.contains(&m.as_str()) => {
                self.respond(txn, &req, 501, now)
            }
            _ => self.respond(txn, &req, 405, now),
        }
    }

    fn on_in_dialog(&mut self, txn: TxnId, req: Message, method: Method, now: Instant) {
        let call_id = req.header("Call-ID").unwrap_or_default();
        let Some(&(key, side)) = self.by_call_id.get(call_id) else {
            return self.respond(txn, &req, 481, now);
        };
        if !self.fork_of_request(key, side, &req) {
            return self.respond(txn, &req, 481, now);
        }
        if method != Method::Cancel {
            if let Err(unmet) = negotiate::required_extensions(&req) {
                return self.refuse_unmet(txn, &req, None, unmet, now);
            }
        }
        match method {
            Method::Bye => {
                self.respond(txn, &req, 200, now);
                let call = &self.calls[&key];
                if call.phase == Phase::Ending {
                    return;
                }
                tracing::info!(call = %call.label, ?side, "hang-up");
                let ending = match side {
                    Side::A => Ending::CallerBye,
                    Side::B => Ending::CalleeBye,
                };
                self.end_call(key, ending, now);
                self.send_bye(key, side.other(), now);
                self.finish_if_idle(key);
            }
            Method::Options => self.respond(txn, &req, 200, now),
            Method::Invite => self.on_reoffer(key, side, txn, req, now),
            Method::Other(ref m) if m == "UPDATE" => self.on_update(key, side, txn, req, now),
            Method::Other(ref m) if m == "INFO" => self.on_info(key, side, txn, req, now),
            Method::Other(ref m) if m == "REFER" => self.on_refer(key, side, txn, req, now),
            Method::Other(ref m) if m == "NOTIFY" => self.on_notify(key, side, txn, req, now),
            Method::Other(ref m) if m == "PRACK" => self.on_prack(key, side, txn, req, now),
            Method::Cancel => self.on_midcall_cancel(key, side, txn, req, now),
            _ => self.respond(txn, &req, 501, now),
        }
    }

    fn on_invite(&mut self, txn: TxnId, req: Message, source: Target, trunk: usize, now: Instant) {
        let span = tracing::info_span!(
            "call",
            id = tracing::field::Empty,
            sip_call_id = %req.header("Call-ID").unwrap_or_default()
        );
        let _in_call = span.enter();
        self.calls_started[trunk] += 1;
        let max_forwards = header::max_forwards(&req).unwrap_or(70);
        if max_forwards == 0 {
            return self.refuse_invite(txn, &req, trunk, 483, None, now);
        }
        if let Err(code) = timers::check(&req) {
            return self.refuse_invite(txn, &req, trunk, code, None, now);
        }
        if let Err(unmet) = negotiate::required_extensions(&req)
            .and_then(|()| negotiate::readable_body(&req))
            .and_then(|()| negotiate::sdp_acceptable(&req))
        {
            return self.refuse_unmet(txn, &req, Some(trunk), unmet, now);
        }
        if !self.inbound_allowed(txn, &req, source.remote.ip(), trunk, now) {
            return;
        }
        // Routing and translation (issue 5): inbound translation, route, deny-lists.
        let dialled = Numbers::of_invite(&req);
        let numbers =
            dialled.translated(&self.config.trunks[trunk].policy.translate, Direction::In);
        let Some(route) = self
            .config
            .route_for(trunk, &numbers.called, &numbers.calling)
        else {
            tracing::info!(trunk = %self.config.trunks[trunk].name,
                called = %Number(&numbers.called), "no route: 404");
            return self.refuse_invite(txn, &req, trunk, 404, None, now);
        };
        let emergency = policy::is_emergency(&self.config, &dialled.called);
        let route_to = policy::permitted_trunks(&self.config, route, &numbers.called, emergency);
        if route_to.is_empty() {
            tracing::info!(trunk = %self.config.trunks[trunk].name,
                called = %Number(&numbers.called), "denied destination: 403");
            return self.refuse_invite(txn, &req, trunk, 403, None, now);
        }
        if self.stopping {
            tracing::info!("shutting down: new call refused with 503");
            return self.refuse_invite(txn, &req, trunk, 503, Some(Refusal::Draining), now);
        }
        // Emergency calls bypass the limits, and drain (below, in next_trunk).
        if let Err(why) = self
            .limits
            .admit_new(trunk, self.active_calls(), now)
            .or_else(|why| if emergency { Ok(()) } else { Err(why) })
        {
            tracing::info!(trunk = %self.config.trunks[trunk].name, ?why, "new call refused: 503");
            return self.refuse_invite(txn, &req, trunk, 503, Some(why), now);
        }
        // A body is SDP here: `negotiate::readable_body` refused anything else.
        let offer = if req.body.is_empty() {
            None
        } else {
            match Sdp::parse(&req.body) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::info!(error = %e, "bad SDP in INVITE: 488");
                    return self.refuse_invite(txn, &req, trunk, 488, None, now);
                }
            }
        };
        let Some((b_trunk, mut peers, remaining_trunks)) =
            self.next_trunk(&route_to, emergency, now)
        else {
            tracing::info!(trunk = %self.config.trunks[trunk].name, "no trunk of the route is available: 503");
            return self.refuse_invite(txn, &req, trunk, 503, Some(Refusal::Calls), now);
        };
        let b_peer = peers.remove(0);
        self.next_call += 1;
        let key = self.next_call;
        span.record("id", tracing::field::display(now_label(key)));
        let to_tag = token();
        let a = Dialog {
            target: source,
            call_id: req.header("Call-ID").unwrap_or_default().to_string(),
            local: format!("{};tag={to_tag}", req.header("To").unwrap_or_default()),
            remote: req.header("From").unwrap_or_default().to_string(),
            remote_target: req
                .header("Contact")
                .map(|c| header::uri_of(c).to_string())
                .unwrap_or_else(|| {
                    header::uri_of(req.header("From").unwrap_or_default()).to_string()
                }),
            route_set: req
                .headers_named("Record-Route")
                .map(str::to_string)
                .collect(),
            local_cseq: 0,
            signalling_ip: source.remote.ip(),
        };
        let b = Self::new_b_dialog(&self.config, &req, &numbers, b_trunk, b_peer);
        let a_local = source.local.ip();
        let mut media = CallMedia::new(
            a_local,
            a.signalling_ip,
            b.target.local.ip(),
            b.signalling_ip,
        );
        media.advertise(Side::A, self.config.media_advertise(trunk));
        media.advertise(Side::B, self.config.media_advertise(b_trunk));
        let mut trying = response_to(&req, 100, reason(100), None);
        trying.remove_headers("Server");
        self.txns.respond(txn, trying, now);
        let timers = timers::SessionTimers::for_caller(&req, &self.config.trunks[trunk]);
        let early = prack::Early::of_invite(&req);
        let call = Call {
            label: now_label(key),
            config: self.config.clone(),
            span: span.clone(),
            started: now,
            phase: Phase::Setup,
            a,
            a_trunk: trunk,
            a_invite: essentials(req),
            a_txn: txn,
            a_offer: offer,
            numbers,
            b,
            b_trunk,
            remaining_peers: peers,
            remaining_trunks,
            invites_sent: 0,
            attempts: Vec::new(),
            started_wall: SystemTime::now(),
            answered_wall: None,
            final_code: None,
            responded: false,
            redirects: 0,
            occupying: true,
            emergency,
            b_txn: 0,
            b_invite_cseq: 1,
            cancelled: false,
            cancel_sent: false,
            ok_to_a: None,
            ack_to_b: None,
            open_txns: Vec::new(),
            media,
            mid: midcall::MidCall::default(),
            timers,
            transfer: refer::Transfer::default(),
            early,
            forks: None,
        };
        self.by_call_id
            .insert(call.a.call_id.clone(), (key, Side::A));
        self.by_server_invite.insert(txn, key);
        self.calls.insert(key, Box::new(call));
        self.limits.occupy(trunk);
        self.limits.occupy(b_trunk);
        let numbers = &self.calls[&key].numbers;
        tracing::info!(call = %now_label(key), from = %self.config.trunks[trunk].name,
            to = %self.config.trunks[b_trunk].name, called = %Number(&numbers.called),
            calling = %Number(&numbers.calling), "new call");
        self.send_b_invite(key, now);
    }

    /// The first trunk of `trunks` that can take a call now (not draining, under its limits —
    /// both ignored for an `emergency` call — with a peer that is not down): the trunk, its
    /// peers in the order to try, and the trunks after it.
    fn next_trunk(
        &mut self,
        trunks: &[usize],
        emergency: bool,
        now: Instant,
    ) -> Option<(usize, Vec<usize>, Vec<usize>)> {
        for (i, &t) in trunks.iter().enumerate() {
            let available = self.limits.outbound_available(t, now);
            if let (Err(why), false) = (available, emergency) {
                tracing::debug!(trunk = %self.config.trunks[t].name, ?why, "trunk skipped");
                continue;
            }
            let health = &self.health;
            let peers = self
                .selector
                .order(t, &self.config.trunks[t], |p| health.usable((t, p)));
            if !peers.is_empty() {
                return Some((t, peers, trunks[i + 1..].to_vec()));
            }
            tracing::debug!(trunk = %self.config.trunks[t].name, "trunk skipped: every peer is down");
        }
        None
    }

    /// A fresh dialog toward peer `peer` of `trunk`: new Call-ID, tags and URIs built from
    /// mediagate's own address, carrying only the caller's and callee's numbers (`numbers`
    /// after `trunk`'s outbound translation, by the call's `config`).
    fn new_b_dialog(
        config: &Config,
        a_invite: &Message,
        numbers: &Numbers,
        trunk: usize,
        peer: usize,
    ) -> Dialog {
        let t = &config.trunks[trunk];
        let peer = t.peers[peer];
        let target = Target {
            transport: peer.transport,
            remote: peer.addr,
            local: t.local.addr,
        };
        let Numbers { called, calling } = numbers.translated(&t.policy.translate, Direction::Out);
        let from = a_invite.header("From").unwrap_or_default();
        let calling = if calling.is_empty() {
            "anonymous".to_string()
        } else {
            calling
        };
        let display = header::display_name(from)
            .map(|d| format!("\"{}\" ", d.replace('"', "")))
            .unwrap_or_default();
        // SocketAddr prints `[v6]:port`, which is URI host:port syntax.
        let (local_host, peer_host) = (target.local, peer.addr);
        Dialog {
            target,
            call_id: format!("{}@{}", token(), target.local.ip()),
            local: format!("{display}<sip:{calling}@{local_host}>;tag={}", token()),
            remote: format!("<sip:{called}@{peer_host}>"),
            remote_target: format!("sip:{called}@{peer_host}"),
            route_set: Vec::new(),
            local_cseq: 1,
            signalling_ip: peer.addr.ip(),
        }
    }

    /// Sends (or re-sends, after failover) the INVITE toward the call's current B trunk.
    fn send_b_invite(&mut self, key: CallKey, now: Instant) {
        let mut call = self.calls.remove(&key).expect("live call");
        let filtered = match call.offer_for(Side::B, call.a_offer.as_ref()) {
            Ok(filtered) => filtered,
            Err(()) => {
                tracing::info!(call = %call.label, "no codec of the offer is allowed toward the trunk: 488");
                self.calls.insert(key, call);
                self.fail_call(key, 488, Ending::Failed, now);
                return;
            }
        };
        let anchored = filtered.as_ref().or(call.a_offer.as_ref()).map(|offer| {
            call.media
                .anchor(Side::A, offer, &mut self.media.borrow_mut().ctx(now))
        });
        let body = match anchored {
            Some(result) => match result {
                Ok(b) => Some(b),
                Err(e) => {
                    // Out of ports is our limit (503); an offer we cannot rewrite is the
                    // caller's (488).
                    let code = if e == AnchorError::TooLarge { 488 } else { 503 };
                    tracing::warn!(call = %call.label, error = %e, code, "cannot anchor media");
                    self.calls.insert(key, call);
                    self.fail_call(key, code, Ending::Failed, now);
                    return;
                }
            },
            None => None,
        };
        let max_forwards = header::max_forwards(&call.a_invite).unwrap_or(70).min(70) - 1;
        let mut inv = Message {
            start: StartLine::Request {
                method: Method::Invite,
                uri: call.b.remote_target.clone(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        inv.push_header("Max-Forwards", max_forwards.to_string());
        inv.push_header("From", call.b.local.clone());
        inv.push_header("To", call.b.remote.clone());
        inv.push_header("Call-ID", call.b.call_id.clone());
        inv.push_header("CSeq", format!("{} INVITE", call.b_invite_cseq));
        inv.push_header("Contact", contact_for(&call.b.target));
        inv.push_header("Allow", ALLOW.into());
        if let Some((name, value)) = call.early.toward_callee() {
            inv.push_header(name, value);
        }
        call.timers
            .offer(&call.config.trunks[call.b_trunk], &call.b.call_id, &mut inv);
        // Header policy of the B trunk (issue 5): passed, set and default headers.
        let headers = policy::headers_toward(
            &call.config,
            call.a_trunk,
            call.b_trunk,
            &call.a_invite,
            call.b.target.local,
        );
        for (name, value) in headers {
            inv.push_header(name, value);
        }
        let inv = with_sdp(inv, body);
        let txn = self.send_request_to(call.b_trunk, inv, call.b.target, now);
        call.b_txn = txn;
        call.open_txns.push(txn);
        call.responded = false;
        call.invites_sent += 1;
        let timeout = call.config.trunks[call.b_trunk].invite_timeout;
        self.deadlines.push(Reverse((
            now + timeout,
            key,
            Deadline::Invite(call.invites_sent),
        )));
        self.by_client_txn.insert(txn, (key, Purpose::Invite));
        self.by_call_id
            .insert(call.b.call_id.clone(), (key, Side::B));
        self.calls.insert(key, call);
    }

    fn on_cancel(&mut self, txn: TxnId, req: Message, now: Instant) {
        let Some(key) = self
            .txns
            .server_invite_for_cancel(&req)
            .and_then(|inv| self.by_server_invite.get(&inv).copied())
        else {
            return self.respond(txn, &req, 481, now);
        };
        self.respond(txn, &req, 200, now);
        let call = self.calls.get_mut(&key).expect("indexed call");
        if call.phase != Phase::Setup || !self.txns.is_pending_server(call.a_txn) {
            return;
        }
        tracing::info!(call = %call.label, "cancelled by caller");
        call.cancelled = true;
        let a_txn = call.a_txn;
        let a_invite = call.a_invite.clone();
        let tag = header::param(&call.a.local, "tag").map(str::to_string);
        self.txns.respond(
            a_txn,
            response_to(&a_invite, 487, reason(487), tag.as_deref()),
            now,
        );
        self.calls.get_mut(&key).expect("live").final_code = Some(487);
        self.cancel_b(key, now);
        self.end_call(key, Ending::CallerCancel, now);
    }

    /// Sends CANCEL to B when its INVITE has seen a provisional response; otherwise the CANCEL
    /// goes out when the first provisional arrives (RFC 3261 §9.1).
    fn cancel_b(&mut self, key: CallKey, now: Instant) {
        let call = self.calls.get_mut(&key).expect("live call");
        if !call.cancel_sent && self.txns.is_proceeding(call.b_txn) {
            call.cancel_sent = true;
            if let Some(c) = self.txns.send_cancel(call.b_txn, now) {
                call.open_txns.push(c);
                self.by_client_txn.insert(c, (key, Purpose::Cancel));
            }
        }
    }

    fn on_ack(&mut self, ack: Message, _source: Target, now: Instant) {
        let call_id = ack.header("Call-ID").unwrap_or_default();
        let Some(&(key, side)) = self.by_call_id.get(call_id) else {
            return;
        };
        let call = self.calls.get_mut(&key).expect("indexed call");
        if side == Side::B || call.phase != Phase::Answered {
            return self.on_midcall_ack(key, side, &ack, now);
        }
        call.ok_to_a = None;
        call.phase = Phase::Confirmed;
        let mut ack_b = call.b.request(Method::Ack, Some(call.b_invite_cseq));
        if header::has_sdp(&ack) {
            // Late offer: the caller's answer comes in the ACK.
            if let Ok(sdp) = Sdp::parse(&ack.body) {
                let anchored =
                    call.media
                        .anchor(Side::A, &sdp, &mut self.media.borrow_mut().ctx(now));
                if let Ok(body) = anchored {
                    ack_b = with_sdp(ack_b, Some(body));
                }
            }
        }
        self.txns.send_stateless(ack_b.clone(), call.b.target);
        call.ack_to_b = Some(ack_b);
        self.journal_changed(key);
    }

    fn on_response(&mut self, txn: TxnId, resp: Message, now: Instant) {
        let code = resp.code().unwrap_or(500);
        if self.on_identity_response(txn, &resp, code, now) {
            return;
        }
        if code >= 200 && self.health.on_response(txn, code, now) {
            return;
        }
        if self.abandoned.contains_key(&txn) {
            return self.on_abandoned_response(txn, &resp, code, now);
        }
        let Some(&(key, purpose)) = self.by_client_txn.get(&txn) else {
            return;
        };
        if code >= 200
            && matches!(purpose, Purpose::Invite | Purpose::Relay | Purpose::Refresh)
            && code < 300
        {
            // Keep the index so that 2xx retransmissions are still recognised and re-ACKed;
            // `finish_if_idle` drops it with the call.
            if let Some(call) = self.calls.get_mut(&key) {
                call.open_txns.retain(|t| *t != txn);
            }
        } else if code >= 200 {
            self.txn_done(key, txn);
        }
        match purpose {
            Purpose::Invite => self.on_invite_response(key, txn, resp, code, now),
            Purpose::Cancel | Purpose::Prack => {}
            Purpose::Bye => self.finish_if_idle(key),
            Purpose::Relay => self.on_relayed_response(txn, resp, code, now),
            Purpose::Refresh => self.on_refresh_response(key, txn, resp, code, now),
        }
    }

    fn txn_done(&mut self, key: CallKey, txn: TxnId) {
        self.by_client_txn.remove(&txn);
        if let Some(call) = self.calls.get_mut(&key) {
            call.open_txns.retain(|t| *t != txn);
        }
    }

    fn on_invite_response(
        &mut self,
        key: CallKey,
        txn: TxnId,
        resp: Message,
        code: u16,
        now: Instant,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if txn != call.b_txn {
            return;
        }
        call.responded = true;
        match code {
            100 => {}
            101..=199 => {
                if call.cancelled {
                    return self.cancel_b(key, now);
                }
                if call.phase != Phase::Setup {
                    return;
                }
                self.on_provisional(key, &resp, now);
            }
            200..=299 => {
                let call = self.calls.get_mut(&key).expect("live");
                if call.cancelled || call.phase == Phase::Ending {
                    // Answered after the caller gave up: ACK, then hang up that leg.
                    call.b.establish_from_response(&resp);
                    self.ack_b_now(key);
                    self.send_bye(key, Side::B, now);
                    return;
                }
                if call.phase != Phase::Setup {
                    if self.hang_up_late_fork(key, &resp, now) {
                        return;
                    }
                    // A retransmitted 2xx: repeat our ACK if A already sent its own.
                    let call = &self.calls[&key];
                    if let Some(ack) = &call.ack_to_b {
                        self.txns.send_stateless(ack.clone(), call.b.target);
                    }
                    return;
                }
                self.fork_of_response(key, &resp, true);
                self.forks_settled(key);
                let call = self.calls.get_mut(&key).expect("live");
                call.b.establish_from_response(&resp);
                self.finish_attempt(key, AttemptResult::Code(code));
                let body = self.anchor_from_b(key, &resp, now);
                let call = self.calls.get_mut(&key).expect("live");
                call.phase = Phase::Answered;
                call.answered_wall = Some(SystemTime::now());
                call.final_code = Some(code);
                tracing::info!(call = %call.label, "answered");
                let limit = [call.a_trunk, call.b_trunk]
                    .iter()
                    .filter_map(|t| call.config.trunks[*t].max_duration)
                    .min();
                if let Some(limit) = limit {
                    self.deadlines
                        .push(Reverse((now + limit, key, Deadline::MaxDuration)));
                }
                let mut ok = self.response_for_a(key, &resp, body);
                self.start_session_timers(key, &resp, &mut ok, now);
                let call = self.calls.get_mut(&key).expect("live");
                call.ok_to_a = Some(PendingOk {
                    response: ok.clone(),
                    target: call.a.target,
                    next: now + T1,
                    interval: T1,
                    give_up: now + 64 * T1,
                });
                let a_txn = call.a_txn;
                self.txns.respond(a_txn, ok, now);
            }
            _ => {
                if call.cancelled || call.phase == Phase::Ending {
                    return self.finish_if_idle(key);
                }
                let config = call.config.clone();
                let b_trunk = call.b_trunk;
                let trunk = &config.trunks[b_trunk];
                if (300..400).contains(&code) {
                    return self.on_redirect(key, &resp, code, trunk.redirect, now);
                }
                if code == 422 && self.retry_with_min_se(key, &resp, now) {
                    return;
                }
                // Failover looks at the trunk's own code; the caller sees it mapped.
                let mapped = policy::map_response(trunk, code);
                // A trunk with credentials that still challenges rejected them: its failure,
                // never the caller's to answer (503 unless response_map says otherwise).
                if matches!(code, 401 | 407) && ClientAuth::wants(&config, b_trunk) {
                    let mapped = if mapped == code { 503 } else { mapped };
                    return self.attempt_failed(key, AttemptResult::Code(code), mapped, now);
                }
                if trunk.failover_on.contains(&code) {
                    return self.attempt_failed(key, AttemptResult::Code(code), mapped, now);
                }
                self.finish_attempt(key, AttemptResult::Code(code));
                self.fail_call(key, mapped, Ending::CalleeRejected, now);
            }
        }
    }

    /// A 3xx from the trunk, handled as its `redirect` setting says.
    fn on_redirect(
        &mut self,
        key: CallKey,
        resp: &Message,
        code: u16,
        mode: Redirect,
        now: Instant,
    ) {
        match mode {
            Redirect::Pass => {
                self.finish_attempt(key, AttemptResult::Code(code));
                let mut r = self.response_for_a(key, resp, None);
                for contact in resp.headers_named("Contact") {
                    r.push_header("Contact", contact.to_string());
                }
                let call = self.calls.get_mut(&key).expect("live");
                call.final_code = Some(code);
                let a_txn = call.a_txn;
                self.txns.respond(a_txn, r, now);
                self.end_call(key, Ending::CalleeRejected, now);
                self.finish_if_idle(key);
            }
            Redirect::Follow => {
                let target = resp
                    .headers_named("Contact")
                    .find_map(|c| redirect_target(header::uri_of(c)));
                let call = self.calls.get_mut(&key).expect("live");
                match target {
                    Some((uri, addr)) if call.redirects < MAX_REDIRECTS => {
                        call.redirects += 1;
                        tracing::info!(call = %call.label, to = %Uri(&uri), "following redirect");
                        let (a_invite, numbers) = (call.a_invite.clone(), call.numbers.clone());
                        let (t, config) = (call.b_trunk, call.config.clone());
                        self.finish_attempt(key, AttemptResult::Code(code));
                        let mut b = Self::new_b_dialog(&config, &a_invite, &numbers, t, 0);
                        b.target.remote = addr;
                        b.signalling_ip = addr.ip();
                        b.remote_target = uri;
                        self.replace_b(key, b, t, now);
                    }
                    _ => self.attempt_failed(key, AttemptResult::Code(code), 480, now),
                }
            }
            Redirect::Reject => self.attempt_failed(key, AttemptResult::Code(code), 480, now),
        }
    }

    /// Anchors the SDP of a response from B; `None` when it carries none or it is unusable.
    fn anchor_from_b(&mut self, key: CallKey, resp: &Message, now: Instant) -> Option<Vec<u8>> {
        if !header::has_sdp(resp) {
            return None;
        }
        let sdp = match Sdp::parse(&resp.body) {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(error = %e, "bad SDP from trunk ignored");
                return None;
            }
        };
        let call = self.calls.get_mut(&key).expect("live call");
        // The caller's INVITE had no SDP (late offer): the callee's is the offer.
        let offer = call.a_offer.is_none();
        let result =
            call.media
                .anchor_as(Side::B, &sdp, offer, &mut self.media.borrow_mut().ctx(now));
        match result {
            Ok(body) => Some(body),
            Err(
                e @ (AnchorError::NoPorts | AnchorError::MediaMismatch | AnchorError::TooLarge),
            ) => {
                tracing::info!(error = %e, "cannot anchor answer");
                None
            }
        }
    }

    /// A response for A's INVITE carrying B's code, reason and (anchored) SDP.
    fn response_for_a(&self, key: CallKey, resp: &Message, body: Option<Vec<u8>>) -> Message {
        let call = &self.calls[&key];
        let (code, reason_phrase) = match &resp.start {
            StartLine::Response { code, reason } => (*code, reason.as_str()),
            StartLine::Request { .. } => (500, "Server Internal Error"),
        };
        let tag = header::param(&call.a.local, "tag");
        let mut r = response_to(&call.a_invite, code, reason_phrase, tag);
        if let (true, Some(server)) = (
            policy::passes_server(&call.config, call.a_trunk),
            resp.header("Server"),
        ) {
            r.set_header("Server", server.to_string());
        }
        if code < 300 {
            r.push_header("Contact", contact_for(&call.a.target));
            r.push_header("Allow", ALLOW.into());
        }
        with_sdp(r, body)
    }

    fn relay_to_a(&mut self, key: CallKey, resp: &Message, body: Option<Vec<u8>>, now: Instant) {
        let r = self.response_for_a(key, resp, body);
        let a_txn = self.calls[&key].a_txn;
        self.txns.respond(a_txn, r, now);
    }

    /// Tries the next peer of the current trunk, else the next available trunk of the route;
    /// false when none is left.
    fn fail_over(&mut self, key: CallKey, now: Instant) -> bool {
        let call = self.calls.get_mut(&key).expect("live");
        let (trunk, peer) = if call.remaining_peers.is_empty() {
            let remaining = std::mem::take(&mut call.remaining_trunks);
            let emergency = call.emergency;
            let Some((t, mut peers, rest)) = self.next_trunk(&remaining, emergency, now) else {
                return false;
            };
            let p = peers.remove(0);
            let call = self.calls.get_mut(&key).expect("live");
            call.remaining_peers = peers;
            call.remaining_trunks = rest;
            (t, p)
        } else {
            (call.b_trunk, call.remaining_peers.remove(0))
        };
        let call = &self.calls[&key];
        tracing::info!(call = %call.label, to = %self.config.trunks[trunk].name,
            peer = %self.config.trunks[trunk].peers[peer].addr, "failing over");
        let b = Self::new_b_dialog(&call.config, &call.a_invite, &call.numbers, trunk, peer);
        self.replace_b(key, b, trunk, now);
        true
    }

    /// Points leg B at a new dialog on `trunk` (fresh ports, counted against the new trunk)
    /// and sends it the INVITE.
    fn replace_b(&mut self, key: CallKey, b: Dialog, trunk: usize, now: Instant) {
        let call = self.calls.get_mut(&key).expect("live");
        self.by_call_id.remove(&call.b.call_id);
        call.forks = None;
        call.media.reset_b(
            b.target.local.ip(),
            b.signalling_ip,
            &mut self.media.borrow_mut().ctx(now),
        );
        call.media
            .advertise(Side::B, call.config.media_advertise(trunk));
        call.b = b;
        if call.b_trunk != trunk {
            self.limits.vacate(call.b_trunk);
            self.limits.occupy(trunk);
            call.b_trunk = trunk;
        }
        self.send_b_invite(key, now);
    }

    /// Answers A's INVITE with `code` and ends the call.
    fn fail_call(&mut self, key: CallKey, code: u16, ending: Ending, now: Instant) {
        let call = self.calls.get_mut(&key).expect("live");
        tracing::info!(call = %call.label, code, "call failed");
        call.final_code = Some(code);
        let tag = header::param(&call.a.local, "tag").map(str::to_string);
        let r = response_to(&call.a_invite, code, reason(code), tag.as_deref());
        let a_txn = call.a_txn;
        self.txns.respond(a_txn, r, now);
        self.end_call(key, ending, now);
        self.finish_if_idle(key);
    }

    fn on_txn_timeout(&mut self, txn: TxnId, now: Instant) {
        self.auth.forget(txn);
        // An INVITE given up on that never answered at all: nothing late can come any more.
        self.abandoned.remove(&txn);
        if self.registrations.on_timeout(txn, now) {
            return;
        }
        let Some(&(key, purpose)) = self.by_client_txn.get(&txn) else {
            return;
        };
        self.txn_done(key, txn);
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        match purpose {
            Purpose::Invite
                if call.phase == Phase::Setup && !call.cancelled && txn == call.b_txn =>
            {
                self.attempt_failed(key, AttemptResult::Timeout, 408, now);
            }
            Purpose::Relay => self.on_relayed_timeout(txn, now),
            Purpose::Refresh => self.on_refresh_timeout(key, txn, now),
            _ => self.finish_if_idle(key),
        }
    }

    fn ack_b_now(&mut self, key: CallKey) {
        let call = self.calls.get_mut(&key).expect("live");
        let ack = call.b.request(Method::Ack, Some(call.b_invite_cseq));
        self.txns.send_stateless(ack.clone(), call.b.target);
        call.ack_to_b = Some(ack);
    }

    fn send_bye(&mut self, key: CallKey, side: Side, now: Instant) {
        let call = self.calls.get_mut(&key).expect("live");
        let dialog = match side {
            Side::A => &mut call.a,
            Side::B => &mut call.b,
        };
        let bye = dialog.request(Method::Bye, None);
        let target = dialog.target;
        let trunk = match side {
            Side::A => call.a_trunk,
            Side::B => call.b_trunk,
        };
        let txn = self.send_request_to(trunk, bye, target, now);
        let call = self.calls.get_mut(&key).expect("live");
        call.open_txns.push(txn);
        self.by_client_txn.insert(txn, (key, Purpose::Bye));
    }

    /// Ends the call's media and removes it from the live set (signalling state stays until
    /// its last transaction finishes), and writes its record.
    fn end_call(&mut self, key: CallKey, ending: Ending, now: Instant) {
        let call = self.calls.get_mut(&key).expect("live call");
        if std::mem::take(&mut call.occupying) {
            self.limits.vacate(call.a_trunk);
            self.limits.vacate(call.b_trunk);
        }
        let journalled = call.phase == Phase::Confirmed;
        call.phase = Phase::Ending;
        call.ok_to_a = None;
        call.mid.ok = None;
        if journalled {
            let label = call.label.clone();
            self.journal_ended(&label);
        }
        let record = self.record_of(&self.calls[&key], ending);
        self.cdrs.push(record);
        let call = self.calls.get_mut(&key).expect("live call");
        call.media.release(&mut self.media.borrow_mut().ctx(now));
    }

    /// The call's detail record, as it ends (media counters read before its streams go).
    fn record_of(&self, call: &Call, ending: Ending) -> Cdr {
        let dialled = Numbers::of_invite(&call.a_invite);
        let tried = call.invites_sent > 0;
        let b_trunk = &call.config.trunks[call.b_trunk];
        let out = tried.then(|| {
            call.numbers
                .translated(&b_trunk.policy.translate, Direction::Out)
        });
        Cdr {
            call: call.label.clone(),
            sip_call_id: call.a.call_id.clone(),
            times: CallTimes {
                start: call.started_wall,
                answer: call.answered_wall,
                end: SystemTime::now(),
            },
            trunk_in: self.config.trunks[call.a_trunk].name.clone(),
            trunk_out: tried.then(|| b_trunk.name.clone()),
            calling_in: dialled.calling,
            called_in: dialled.called,
            calling_out: out.as_ref().map(|n| n.calling.clone()),
            called_out: out.map(|n| n.called),
            final_code: call.final_code.unwrap_or(500),
            ending,
            attempts: call.attempts.clone(),
            media_in: MediaCounters::from_streams(call.media.streams(Side::A)),
            media_out: MediaCounters::from_streams(call.media.streams(Side::B)),
        }
    }

    /// Records of calls that ended since the last call, for the CDR file.
    pub fn drain_cdrs(&mut self) -> Vec<Cdr> {
        std::mem::take(&mut self.cdrs)
    }

    /// BYE on both legs (media timeout, missing ACK, maximum duration).
    fn hang_up_both(&mut self, key: CallKey, ending: Ending, now: Instant) {
        self.end_call(key, ending, now);
        self.send_bye(key, Side::A, now);
        self.send_bye(key, Side::B, now);
    }

    /// Forgets an ended call once no transaction of it is running.
    fn finish_if_idle(&mut self, key: CallKey) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.phase != Phase::Ending || !call.open_txns.is_empty() {
            return;
        }
        let call = self.calls.remove(&key).expect("checked");
        self.by_call_id.remove(&call.a.call_id);
        self.by_call_id.remove(&call.b.call_id);
        self.by_server_invite.remove(&call.a_txn);
        self.by_client_txn.remove(&call.b_txn);
        for txn in &call.mid.relays {
            self.relayed.remove(txn);
            self.by_client_txn.remove(txn);
        }
        if let Some(txn) = call.timers.refresh_txn() {
            self.by_client_txn.remove(&txn);
        }
    }

    fn sweep_media(&mut self, now: Instant) {
        let idle: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Confirmed | Phase::Answered))
            .filter(|(_, c)| {
                // The call's own configuration: a reload does not change its timeouts. A held
                // call (`media.hold_timeout_s`) may be silent for longer.
                let media = &c.config.media;
                let timeout = if c.mid.held {
                    media.hold_timeout
                } else {
                    media.timeout
                };
                c.media
                    .last_activity()
                    .is_some_and(|last| now.saturating_duration_since(last) >= timeout)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            let span = self.span_of(key);
            let _in_call = span.enter();
            tracing::info!(call = %self.calls[&key].label, "media timeout: hanging up both legs");
            self.hang_up_both(key, Ending::MediaTimeout, now);
        }
    }

    /// The `/status` document; `wall` and `now` are the same moment on the wall and the
    /// monotonic clock, to date calls.
    pub fn status(&self, now: Instant, wall: SystemTime) -> Value {
        let mut calls: Vec<(&CallKey, &Call)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.phase != Phase::Ending)
            .map(|(k, c)| (k, &**c))
            .collect();
        calls.sort_by_key(|(k, _)| **k);
        let leg = |c: &Call, side: Side| {
            let (d, trunk) = match side {
                Side::A => (&c.a, c.a_trunk),
                Side::B => (&c.b, c.b_trunk),
            };
            json!({
                "trunk": self.config.trunks[trunk].name,
                "peer": d.target.remote.to_string(),
                "transport": d.target.transport.to_string(),
                "call_id": d.call_id,
                "streams": c.media.status(side),
            })
        };
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|(_, c)| {
                let started = wall - now.saturating_duration_since(c.started);
                json!({
                    "id": c.label,
                    "source": "sip",
                    "state": match c.phase {
                        Phase::Setup => "setup",
                        Phase::Answered => "answered",
                        Phase::Confirmed => "confirmed",
                        Phase::Ending => "ending",
                    },
                    "started": humantime::format_rfc3339_seconds(started).to_string(),
                    "calling": c.numbers.calling,
                    "called": c.numbers.called,
                    "legs": [leg(c, Side::A), leg(c, Side::B)],
                })
            })
            .collect();
        let trunks: Vec<Value> = self
            .config
            .trunks
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.retired)
            .map(|(i, t)| {
                json!({
                    "name": t.name,
                    "kind": match t.kind { crate::config::TrunkKind::Lan => "lan", crate::config::TrunkKind::Itsp => "itsp" },
                    "active_calls": self.limits.active(i),
                    "draining": self.limits.draining(i),
                    "registration": self.registrations.status(i, now, wall),
                    "peers": t.peers.iter().enumerate().map(|(j, p)| {
                        let mut peer = json!({
                            "address": p.addr.to_string(),
                            "transport": p.transport.to_string(),
                        });
                        if let (Value::Object(o), Value::Object(h)) = (&mut peer, self.health.status((i, j), now, wall)) {
                            o.extend(h);
                        }
                        peer
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "version": 1,
            "active_calls": calls.len(),
            "calls": calls,
            "ports": { "total": self.media.borrow().pool.total(), "free": self.media.borrow().pool.free() },
            "transactions": self.txns.len(),
            "trunks": trunks,
        })
    }
}

/// The request URI and address of a redirect's Contact: `sip:` URIs with an IP host only (no
/// DNS here), port 5060 when absent.
fn redirect_target(uri: &str) -> Option<(String, std::net::SocketAddr)> {
    let rest = uri.strip_prefix("sip:")?;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split([';', '?']).next()?;
    let addr = hostport.parse::<std::net::SocketAddr>().ok().or_else(|| {
        hostport
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, 5060))
    })?;
    Some((uri.to_string(), addr))
}

/// What a call keeps of the caller's INVITE: the request line and the headers its responses
/// copy (RFC 3261 §8.2.6), plus From and Max-Forwards for a failover's new INVITE, and the
/// headers a trunk's header policy may pass.
fn essentials(invite: Message) -> Message {
    const KEPT: [&str; 6] = ["Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards"];
    Message {
        start: invite.start,
        headers: invite
            .headers
            .into_iter()
            .filter(|h| {
                KEPT.contains(&h.name.as_str())
                    || POLICY_HEADERS
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(&h.name))
            })
            .collect(),
        body: Vec::new(),
    }
}
