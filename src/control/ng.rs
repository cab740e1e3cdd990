//! rtpengine's NG control protocol, sans-IO: `COOKIE SP bencoded-dict` in, the reply out, with
//! retransmitted cookies answered from a cache instead of executed twice. Calls live in the same
//! media session model as the B2BUA's (`media::session`): the from-tag is side A, the to-tag
//! side B.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};

use super::bencode::{dict, Value};
use crate::config::{Config, MediaInterface};
use crate::media::session::{CallMedia, MediaCtx, SharedResources, Side};
use crate::media::{LatchMode, StreamId};
use crate::sdp::Sdp;

#[path = "ng_journal.rs"]
pub mod journal;

/// How long a reply is kept for retransmissions of its request.
const REPLY_CACHE: Duration = Duration::from_secs(30);

/// An NG command's failure, answered as `result: error` with this reason.
type NgError = String;

/// One participant of an NG call (rtpengine's "monologue"): its tag and the `label` the
/// signalling gave it, which `query` shows so a controller can find participants by role.
struct Party {
    tag: String,
    label: Option<String>,
}

/// The media between the offerer and one answerer. SIP forking answers one offer several
/// times with different to-tags; each answer gets its own branch with its own ports on both
/// sides, so the offerer's media reaches the callee whose answer it follows.
struct Branch {
    /// The answerer; `None` until the first answer claims the branch the offer created.
    to: Option<Party>,
    media: CallMedia,
}

struct NgCall {
    /// mediagate's own id for the call in `/status` (`n-N`); not an NG `label`.
    status_id: String,
    created: Instant,
    created_unix: u64,
    from: Party,
    /// The latest offer from the offerer, as anchored: a further branch anchors it again.
    offer: Sdp,
    /// That offer as it came (an `Sdp` does not print itself) and the address that replaced
    /// its media addresses (`SIP-source-address`): what the call-state journal keeps of it.
    offer_body: Vec<u8>,
    offer_address: Option<IpAddr>,
    /// The interface entries facing the offerer and the answerers, the offerer's signalling
    /// address and the latching rule: what a further branch is built from.
    a_if: MediaInterface,
    b_if: MediaInterface,
    a_peer: IpAddr,
    latch: LatchMode,
    /// In creation order; the first holds the ports the offer's SDP advertised.
    branches: Vec<Branch>,
    /// The to-tag of the latest answer: where `query` shows the offerer's media going.
    latest: Option<String>,
    /// Set by `delete` with a delay: the call is released at this instant.
    delete_at: Option<Instant>,
}

impl NgCall {
    /// Media for a new branch, facing the call's interfaces.
    fn new_media(&self) -> CallMedia {
        new_media(&self.a_if, self.a_peer, &self.b_if, self.latch)
    }

    /// The branch answered with `tag`.
    fn branch_of(&self, tag: &str) -> Option<usize> {
        self.branches
            .iter()
            .position(|b| b.to.as_ref().is_some_and(|p| p.tag == tag))
    }

    /// The latest packet on any branch.
    fn last_activity(&self) -> Option<Instant> {
        self.branches
            .iter()
            .filter_map(|b| b.media.last_activity())
            .max()
    }

    /// The branch `query` and `/status` show the offerer's media from: the latest answer's.
    fn latest_branch(&self) -> &Branch {
        let i = self.latest.as_deref().and_then(|t| self.branch_of(t));
        &self.branches[i.unwrap_or(0)]
    }

    fn release(&mut self, ctx: &mut MediaCtx) {
        for b in &mut self.branches {
            b.media.release(ctx);
        }
    }
}

/// An IP address family, as NG's `address family` (`IP4` / `IP6`) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The family of an SDP's media (its first media line's address; IPv4 without media).
    fn of_sdp(sdp: &Sdp) -> Family {
        sdp.media()
            .first()
            .map_or(Family::V4, |m| Family::of(m.rtp.ip()))
    }

    fn ng_name(self) -> &'static str {
        match self {
            Family::V4 => "IP4",
            Family::V6 => "IP6",
        }
    }
}

/// Which address family the SDP a message produces should carry: `required` when the message
/// asked for it (`address family`), so that a missing address is an error, else a preference
/// that falls back to the interface's first address.
#[derive(Debug, Clone, Copy)]
struct FamilyWish {
    family: Family,
    required: bool,
}

/// What NG statistics count (also read by the metrics endpoint).
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub offers: u64,
    pub answers: u64,
    pub deletes: u64,
    pub errors: u64,
    /// NG calls created (first offer of a call-id).
    pub calls_created: u64,
    /// NG calls whose state was released (delete, delete-delay, timeout, shutdown).
    pub calls_deleted: u64,
}

/// The NG protocol server state.
pub struct NgServer {
    config: Arc<Config>,
    media: SharedResources,
    calls: HashMap<String, NgCall>,
    replies: HashMap<Vec<u8>, Vec<u8>>,
    reply_expiry: VecDeque<(Instant, Vec<u8>)>,
    next_status_id: u64,
    totals: Totals,
    /// Set by [`NgServer::begin_shutdown`].
    draining: bool,
    /// This process's `loop-protect` marker (`a=rtpengine:INSTANCE`).
    instance: String,
    /// Calls changed and calls released since the last [`NgServer::drain_journal`]
    /// (`ng_journal.rs`; only with `media.handover`).
    journal_dirty: Vec<String>,
    journal_ends: Vec<crate::sip::b2bua::journal::JournalEntry>,
}

fn error_reply(reason: &str) -> Value {
    dict([("result", "error".into()), ("error-reason", reason.into())])
}

fn unix_now(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl NgServer {
    /// Takes a reloaded configuration (SIGHUP) for what follows: `sip.max_calls`,
    /// `control.delete_delay_s` and the media timeouts. Media interfaces need a restart, so
    /// [`crate::config::live::merge`] has kept them as they were.
    pub fn reconfigure(&mut self, config: Arc<Config>) {
        self.config = config;
    }

    pub fn new(config: Arc<Config>, media: SharedResources) -> Self {
        NgServer {
            config,
            media,
            calls: HashMap::new(),
            replies: HashMap::new(),
            reply_expiry: VecDeque::new(),
            next_status_id: 0,
            totals: Totals::default(),
            draining: false,
            instance: format!("{:016x}", fastrand::u64(..)),
            journal_dirty: Vec::new(),
            journal_ends: Vec::new(),
        }
    }

    /// Shutting down: new calls are refused (`load limit` to Kamailio, which tries another
    /// node), calls up continue.
    pub fn begin_shutdown(&mut self) {
        self.draining = true;
    }

    /// Ends every call at once (the end of a shutdown), freeing its ports.
    pub fn release_all(&mut self, now: Instant) {
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for id in ids {
            self.release(&id, now);
        }
    }

    /// Command and call counters since start, for `/metrics`.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The NG `call-id` of the call one of whose branches holds media stream `stream`: the
    /// correlation id of the RTCP captured on it (the same Call-ID the SIP proxy's HEP carries).
    pub fn call_id_of_stream(&self, stream: StreamId) -> Option<&str> {
        self.calls.iter().find_map(|(id, call)| {
            call.branches
                .iter()
                .any(|b| b.media.side_of(stream).is_some())
                .then_some(id.as_str())
        })
    }

    /// Calls not deleted yet.
    pub fn active_calls(&self) -> usize {
        self.calls
            .values()
            .filter(|c| c.delete_at.is_none())
            .count()
    }

    /// Handles one datagram; returns the reply to send back, if any. `other_calls` is the number
    /// of calls other front ends hold, for the shared `max_calls` limit.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        other_calls: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Vec<u8>> {
        let space = datagram.iter().position(|b| *b == b' ')?;
        let (cookie, body) = (&datagram[..space], &datagram[space + 1..]);
        if cookie.is_empty() {
            return None;
        }
        if let Some(cached) = self.replies.get(cookie) {
            return Some(cached.clone());
        }
        let reply = match Value::decode(body) {
            Err(e) => error_reply(&format!("Failed to decode bencode: {e}")),
            Ok(msg @ Value::Dict(_)) => self.command(&msg, other_calls, now, wall),
            Ok(_) => error_reply("Message is not a dictionary"),
        };
        if reply.get("result").and_then(Value::as_str) == Some("error") {
            self.totals.errors += 1;
        }
        let mut out = cookie.to_vec();
        out.push(b' ');
        out.extend_from_slice(&reply.encode());
        self.replies.insert(cookie.to_vec(), out.clone());
        self.reply_expiry
            .push_back((now + REPLY_CACHE, cookie.to_vec()));
        Some(out)
    }

    fn command(
        &mut self,
        msg: &Value,
        other_calls: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Value {
        let Some(command) = msg.get("command").and_then(Value::as_str) else {
            return error_reply("No command given");
        };
        let result = match command {
            "ping" => Ok(dict([("result", "pong".into())])),
            "offer" | "answer" => self.offer_or_answer(msg, other_calls, now, wall),
            "delete" => self.delete(msg, now),
            "query" => self.query(msg),
            "list" => Ok(self.list(msg)),
            "statistics" => Ok(self.statistics(other_calls)),
            other => Err(format!("Unrecognized command '{other}'")),
        };
        result.unwrap_or_else(|reason| error_reply(&reason))
    }

    /// The interface names facing the offerer (A) and the answerer (B): `direction`, else
    /// `from-interface` / `to-interface`, else (`None`) the first configured interface.
    fn directions(msg: &Value) -> (Option<&str>, Option<&str>) {
        let direction = msg.get("direction").map(Value::strings).unwrap_or_default();
        let from = direction
            .first()
            .copied()
            .or_else(|| msg.get("from-interface").and_then(Value::as_str));
        let to = direction
            .get(1)
            .copied()
            .or_else(|| msg.get("to-interface").and_then(Value::as_str))
            .or(from);
        (from, to)
    }

    /// `address family` (also spelt `address-family`): `IP4` or `IP6`, anything else an error.
    fn requested_family(msg: &Value) -> Result<Option<Family>, NgError> {
        let Some(v) = msg
            .get("address family")
            .or_else(|| msg.get("address-family"))
        else {
            return Ok(None);
        };
        match v.as_str() {
            Some("IP4") => Ok(Some(Family::V4)),
            Some("IP6") => Ok(Some(Family::V6)),
            other => Err(format!(
                "Unknown address family '{}' (IP4 or IP6)",
                other.unwrap_or("(not a string)")
            )),
        }
    }

    fn sdp_of(msg: &Value) -> Result<Sdp, NgError> {
        let Some(Value::Bytes(body)) = msg.get("sdp") else {
            return Err("No SDP body in message".into());
        };
        let sdp = Sdp::parse(body).map_err(|e| format!("Failed to parse SDP: {e}"))?;
        if let Some(proto) = msg.get("transport-protocol").and_then(Value::as_str) {
            if proto != "RTP/AVP" && proto != "RTP/AVPF" {
                return Err(format!(
                    "Unsupported transport protocol '{proto}' (SRTP is not supported)"
                ));
            }
        }
        if sdp.media().iter().any(|m| m.protocol.contains("SAVP")) {
            return Err("SRTP (RTP/SAVP) is not supported".into());
        }
        Ok(sdp)
    }

    fn flags(msg: &Value) -> Vec<String> {
        let flags: Vec<String> = msg
            .get("flags")
            .map(Value::strings)
            .unwrap_or_default()
            .into_iter()
            // rtpengine: "spaces in each string may be replaced by hyphens".
            .map(|f| f.to_ascii_lowercase().replace(' ', "-"))
            .collect();
        const KNOWN: [&str; 12] = [
            "trust-address",
            "sip-source-address",
            "symmetric",
            "strict-source",
            "port-latching",
            "no-rtcp-attribute",
            "full-rtcp-attribute",
            "loop-protect",
            "original-sendrecv",
            "asymmetric",
            "media-handover",
            "record-call",
        ];
        for f in &flags {
            if !KNOWN.contains(&f.as_str()) {
                tracing::warn!(flag = %f, "unknown NG flag ignored");
            } else if f == "record-call" {
                tracing::warn!("NG flag record-call is not supported: ignored");
            }
        }
        if msg.get("record call").and_then(Value::as_str) == Some("yes") {
            tracing::warn!("NG 'record call' is not supported: ignored");
        }
        flags
    }

    /// The signalling source of the message (`received-from`), used by latching.
    fn received_from(msg: &Value) -> Option<IpAddr> {
        msg.get("received-from")?
            .strings()
            .get(1)
            .and_then(|a| a.parse().ok())
    }

    fn offer(
        &mut self,
        msg: &Value,
        other_calls: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Value, NgError> {
        let call_id = required(msg, "call-id")?;
        let from_tag = required(msg, "from-tag")?;
        let sdp = Self::sdp_of(msg)?;
        let flags = Self::flags(msg);
        let family = Self::requested_family(msg)?;
        let label = msg.get("label").and_then(Value::as_str).map(str::to_string);
        let address = source_address(&flags, msg);
        let body = sdp_body(msg).to_vec();
        let sdp = media_sdp(&sdp, address);
        // The SDP this offer produces is for the other side: in the family asked for, else in
        // the offer's own.
        let wish = FamilyWish {
            family: family.unwrap_or(Family::of_sdp(&sdp)),
            required: family.is_some(),
        };
        let config = self.config.clone();
        let ifaces = &config.media.interfaces;
        if let Some(call) = self.calls.get_mut(call_id) {
            // A re-offer, from the offerer (to the branch its to-tag names) or from an answerer.
            let (side, index) = if call.from.tag == from_tag {
                let to_tag = msg.get("to-tag").and_then(Value::as_str);
                (Side::A, to_tag.and_then(|t| call.branch_of(t)))
            } else {
                (Side::B, call.branch_of(from_tag))
            };
            let branch = &mut call.branches[index.unwrap_or(0)];
            let target = match side {
                Side::A => &mut call.b_if,
                Side::B => &mut call.a_if,
            };
            retarget(
                ifaces,
                &self.media,
                target,
                &mut branch.media,
                side.other(),
                wish,
                now,
            )?;
            let anchored = branch
                .media
                .anchor(side, &sdp, &mut self.media.borrow_mut().ctx(now))
                .map_err(|e| e.to_string())?;
            let party = match side {
                Side::A => Some(&mut call.from),
                Side::B => branch.to.as_mut(),
            };
            if let (Some(party), Some(label)) = (party, label) {
                party.label = Some(label);
            }
            if side == Side::A {
                call.offer = sdp;
                call.offer_body = body;
                call.offer_address = address;
            }
            self.totals.offers += 1;
            return Ok(ok_with_sdp(anchored));
        }
        if self.draining || other_calls + self.active_calls() >= self.config.sip.max_calls {
            let limit = msg.get("supports").map(Value::strings).unwrap_or_default();
            return Ok(if limit.contains(&"load limit") {
                dict([("result", "load limit".into())])
            } else {
                error_reply("Parallel session limit reached")
            });
        }
        let (a_name, b_name) = Self::directions(msg);
        let a_wish = FamilyWish {
            family: Family::of_sdp(&sdp),
            required: false,
        };
        let a_if = interface(ifaces, a_name, a_wish)?;
        let b_if = interface(ifaces, b_name, wish)?;
        let a_peer = Self::received_from(msg)
            .or_else(|| sdp.media().first().map(|m| m.rtp.ip()))
            .unwrap_or(a_if.address);
        let latch = latch_mode(&flags);
        let mut media = new_media(&a_if, a_peer, &b_if, latch);
        let anchored = match media.anchor(Side::A, &sdp, &mut self.media.borrow_mut().ctx(now)) {
            Ok(b) => b,
            Err(e) => {
                media.release(&mut self.media.borrow_mut().ctx(now));
                return Err(format!("Failed to allocate media: {e}"));
            }
        };
        self.next_status_id += 1;
        self.totals.calls_created += 1;
        self.calls.insert(
            call_id.to_string(),
            NgCall {
                status_id: format!("n-{}", self.next_status_id),
                created: now,
                created_unix: unix_now(wall),
                from: Party {
                    tag: from_tag.to_string(),
                    label,
                },
                offer: sdp,
                offer_body: body,
                offer_address: address,
                a_if,
                b_if,
                a_peer,
                latch,
                branches: vec![Branch { to: None, media }],
                latest: None,
                delete_at: None,
            },
        );
        self.totals.offers += 1;
        tracing::info!(call_id, from_tag, "NG offer");
        Ok(ok_with_sdp(anchored))
    }

    /// `offer` or `answer`, with the flags that shape the outgoing SDP as a whole: with
    /// `loop-protect`, an SDP that already carries this instance's `a=rtpengine:` marker went
    /// through it before and is returned untouched, and the outgoing SDP gets the marker;
    /// `no-rtcp-attribute` omits `a=rtcp` lines. (`a=rtcp` lines are always written in their
    /// full form, so `full-rtcp-attribute` changes nothing; directions are never rewritten, so
    /// neither does `original-sendrecv`.)
    fn offer_or_answer(
        &mut self,
        msg: &Value,
        other_calls: usize,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Value, NgError> {
        let flags = Self::flags(msg);
        let protect = flags.iter().any(|f| f == "loop-protect");
        let marker = format!("a=rtpengine:{}", self.instance);
        if let (true, Some(Value::Bytes(body))) = (protect, msg.get("sdp")) {
            if body
                .split(|b| *b == b'\n')
                .any(|l| l.trim_ascii() == marker.as_bytes())
            {
                return Ok(ok_with_sdp(body.clone()));
            }
        }
        let mut reply = if msg.get("command").and_then(Value::as_str) == Some("offer") {
            self.offer(msg, other_calls, now, wall)?
        } else {
            self.answer(msg, now)?
        };
        if let Some(call_id) = msg.get("call-id").and_then(Value::as_str) {
            self.journal_changed(call_id);
        }
        if let Some(Value::Bytes(body)) = reply.get_mut("sdp") {
            let no_rtcp = flags.iter().any(|f| f == "no-rtcp-attribute");
            *body = reshape_sdp(body, no_rtcp, protect.then_some(marker.as_str()));
        }
        Ok(reply)
    }

    fn answer(&mut self, msg: &Value, now: Instant) -> Result<Value, NgError> {
        let call_id = required(msg, "call-id")?;
        let from_tag = required(msg, "from-tag")?;
        let to_tag = required(msg, "to-tag")?;
        let sdp = Self::sdp_of(msg)?;
        let flags = Self::flags(msg);
        let family = Self::requested_family(msg)?;
        let label = msg.get("label").and_then(Value::as_str).map(str::to_string);
        let config = self.config.clone();
        let ifaces = &config.media.interfaces;
        let call = self
            .calls
            .get_mut(call_id)
            .filter(|c| c.delete_at.is_none())
            .ok_or_else(|| "Unknown call-id".to_string())?;
        let sdp = media_sdp(&sdp, source_address(&flags, msg));
        // The answer's from-tag is the offerer's; a re-INVITE answered by the caller swaps them.
        let side = if call.from.tag == from_tag {
            Side::B
        } else {
            Side::A
        };
        let mut fresh = false;
        let index = match side {
            Side::A => call.branch_of(from_tag).unwrap_or(0),
            Side::B => match call.branch_of(to_tag) {
                Some(i) => i,
                // The first answer claims the branch the offer set up.
                None => match call.branches.iter().position(|b| b.to.is_none()) {
                    Some(i) => i,
                    None => {
                        // A further answer to the same offer (SIP forking): a branch of its
                        // own, with the offer anchored again on new ports.
                        let mut media = call.new_media();
                        let mut res = self.media.borrow_mut();
                        if let Err(e) = media.anchor(Side::A, &call.offer, &mut res.ctx(now)) {
                            media.release(&mut res.ctx(now));
                            return Err(format!("Failed to allocate media: {e}"));
                        }
                        call.branches.push(Branch { to: None, media });
                        fresh = true;
                        call.branches.len() - 1
                    }
                },
            },
        };
        let branch = &mut call.branches[index];
        let target = match side {
            Side::A => &mut call.b_if,
            Side::B => &mut call.a_if,
        };
        let result = match family {
            // An answer moves the other side to another family only when asked to.
            Some(family) => {
                let wish = FamilyWish {
                    family,
                    required: true,
                };
                retarget(
                    ifaces,
                    &self.media,
                    target,
                    &mut branch.media,
                    side.other(),
                    wish,
                    now,
                )
            }
            None => Ok(()),
        }
        .and_then(|()| {
            branch
                .media
                .anchor(side, &sdp, &mut self.media.borrow_mut().ctx(now))
                .map_err(|e| e.to_string())
        });
        let body = match result {
            Ok(body) => body,
            Err(e) => {
                if fresh {
                    let mut lost = call.branches.pop().expect("just pushed");
                    lost.media.release(&mut self.media.borrow_mut().ctx(now));
                }
                return Err(e);
            }
        };
        if side == Side::B {
            let party = branch.to.get_or_insert_with(|| Party {
                tag: to_tag.to_string(),
                label: None,
            });
            if label.is_some() {
                party.label = label;
            }
            call.latest = Some(to_tag.to_string());
        } else if label.is_some() {
            // The to-tag of a swapped answer is the offerer's.
            call.from.label = label;
        }
        self.totals.answers += 1;
        Ok(ok_with_sdp(body))
    }

    fn delete(&mut self, msg: &Value, now: Instant) -> Result<Value, NgError> {
        let call_id = required(msg, "call-id")?;
        let tag = |key| {
            msg.get(key)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
        };
        let (from_tag, to_tag) = (tag("from-tag"), tag("to-tag"));
        // A to-tag names a branch; before any answer it names the one the offer set up (a
        // failed INVITE is deleted with its error response's to-tag).
        let branch_named = |call: &NgCall, t: &str| {
            call.branch_of(t)
                .or_else(|| call.branches.iter().position(|b| b.to.is_none()))
        };
        let matches = |call: &NgCall| {
            from_tag.is_none_or(|t| t == call.from.tag || call.branch_of(t).is_some())
                && to_tag.is_none_or(|t| t == call.from.tag || branch_named(call, t).is_some())
        };
        let Some(call) = self.calls.get_mut(call_id).filter(|c| matches(c)) else {
            return Ok(dict([
                ("result", "ok".into()),
                ("warning", "Call-ID not found or tags didn't match".into()),
            ]));
        };
        self.totals.deletes += 1;
        // A to-tag naming one branch of a forked call ends that branch only (its ports go back
        // to the pool at once); the last branch ends the call.
        let branch = to_tag
            .filter(|t| *t != call.from.tag)
            .and_then(|t| branch_named(call, t))
            .filter(|_| call.branches.len() > 1);
        if let Some(i) = branch {
            let mut gone = call.branches.remove(i);
            let totals = totals_of([&gone.media]);
            gone.media.release(&mut self.media.borrow_mut().ctx(now));
            tracing::info!(call_id, to_tag, "NG branch deleted");
            self.journal_changed(call_id);
            return Ok(dict([("result", "ok".into()), ("totals", totals)]));
        }
        let delay = msg
            .get("delete-delay")
            .or_else(|| msg.get("delete delay"))
            .and_then(Value::as_int)
            .map_or(self.config.control.delete_delay, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        let totals = totals_of(call.branches.iter().map(|b| &b.media));
        if delay.is_zero() {
            self.release(call_id, now);
        } else {
            call.delete_at = Some(now + delay);
            self.journal_changed(call_id);
        }
        Ok(dict([("result", "ok".into()), ("totals", totals)]))
    }

    fn release(&mut self, call_id: &str, now: Instant) {
        if let Some(mut call) = self.calls.remove(call_id) {
            self.totals.calls_deleted += 1;
            call.release(&mut self.media.borrow_mut().ctx(now));
            tracing::info!(call_id, "NG call deleted");
            self.journal_ended(call_id);
        }
    }

    fn query(&self, msg: &Value) -> Result<Value, NgError> {
        let call_id = required(msg, "call-id")?;
        let call = self
            .calls
            .get(call_id)
            .ok_or_else(|| "Unknown call-id".to_string())?;
        // The offerer with its media toward the latest answer, then each answerer.
        let offerer = (
            &call.from,
            Side::A,
            &call.latest_branch().media,
            call.latest_branch()
                .to
                .as_ref()
                .map_or("", |p| p.tag.as_str()),
        );
        let answerers = call.branches.iter().filter_map(|b| {
            let party = b.to.as_ref()?;
            Some((party, Side::B, &b.media, call.from.tag.as_str()))
        });
        let tags = std::iter::once(offerer)
            .chain(answerers)
            .map(|(party, side, media, other)| {
                let medias: Vec<Value> = media
                    .status(side)
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        dict([
                            ("index", Value::Int(i as i64 + 1)),
                            ("type", json_str(&s["kind"]).into()),
                            ("protocol", "RTP/AVP".into()),
                            (
                                "streams",
                                Value::List(vec![
                                    ng_stream(s, "RTP"),
                                    ng_stream(&s["rtcp"], "RTCP"),
                                ]),
                            ),
                        ])
                    })
                    .collect();
                let mut entry = dict([
                    ("tag", party.tag.as_str().into()),
                    ("created", Value::Int(call.created_unix as i64)),
                    ("in dialogue with", other.into()),
                    ("medias", Value::List(medias)),
                ]);
                if let (Value::Dict(d), Some(label)) = (&mut entry, &party.label) {
                    d.insert(b"label".to_vec(), label.as_str().into());
                }
                (party.tag.as_bytes().to_vec(), entry)
            });
        Ok(dict([
            ("result", "ok".into()),
            ("created", Value::Int(call.created_unix as i64)),
            ("tags", Value::Dict(tags.collect())),
            ("totals", totals_of(call.branches.iter().map(|b| &b.media))),
        ]))
    }

    fn list(&self, msg: &Value) -> Value {
        let limit = msg
            .get("limit")
            .and_then(Value::as_int)
            .unwrap_or(32)
            .max(0) as usize;
        let mut ids: Vec<&String> = self.calls.keys().collect();
        ids.sort();
        let calls = ids
            .into_iter()
            .take(limit)
            .map(|c| Value::from(c.as_str()))
            .collect();
        dict([("result", "ok".into()), ("calls", Value::List(calls))])
    }

    fn statistics(&self, other_calls: usize) -> Value {
        let own = self.active_calls() as i64;
        let current = dict([
            ("sessionsown", Value::Int(own)),
            ("sessionsforeign", Value::Int(0)),
            ("sessionstotal", Value::Int(own)),
            ("sessionsother", Value::Int(other_calls as i64)),
        ]);
        let total = dict([
            ("offers", Value::Int(self.totals.offers as i64)),
            ("answers", Value::Int(self.totals.answers as i64)),
            ("deletes", Value::Int(self.totals.deletes as i64)),
            ("errors", Value::Int(self.totals.errors as i64)),
        ]);
        dict([
            ("result", "ok".into()),
            (
                "statistics",
                dict([("currentstatistics", current), ("totalstatistics", total)]),
            ),
        ])
    }

    /// Releases delayed deletes and idle calls, and forgets old cached replies.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.reply_expiry.front().is_some_and(|(t, _)| *t <= now) {
            let (_, cookie) = self.reply_expiry.pop_front().expect("checked");
            self.replies.remove(&cookie);
        }
        let timeout = self.config.media.timeout;
        let done: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.delete_at.is_some_and(|t| t <= now)
                    || c.last_activity().is_some_and(|last| {
                        now.saturating_duration_since(last.max(c.created)) >= timeout
                    })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            self.release(&id, now);
        }
    }

    /// `/status` entries for NG calls (deleted ones excluded), one leg per tag; the offerer's
    /// leg lists its streams toward every branch.
    pub fn status_calls(&self, now: Instant, wall: SystemTime) -> Vec<Json> {
        let mut calls: Vec<&NgCall> = self
            .calls
            .values()
            .filter(|c| c.delete_at.is_none())
            .collect();
        calls.sort_by_key(|c| c.created);
        calls
            .into_iter()
            .map(|c| {
                let started = wall - now.saturating_duration_since(c.created);
                let offerer: Vec<Json> = c
                    .branches
                    .iter()
                    .flat_map(|b| b.media.status(Side::A))
                    .collect();
                let mut legs = vec![json!({"tag": c.from.tag, "streams": offerer})];
                for b in &c.branches {
                    if let Some(p) = &b.to {
                        legs.push(json!({"tag": p.tag, "streams": b.media.status(Side::B)}));
                    }
                }
                json!({
                    "id": c.status_id,
                    "source": "ng",
                    "started": humantime::format_rfc3339_seconds(started).to_string(),
                    "legs": legs,
                })
            })
            .collect()
    }
}

/// Media for one branch of a call between the interface entries `a_if` and `b_if`.
fn new_media(
    a_if: &MediaInterface,
    a_peer: IpAddr,
    b_if: &MediaInterface,
    latch: LatchMode,
) -> CallMedia {
    let unknown = if b_if.address.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    };
    let mut media = CallMedia::new(a_if.address, a_peer, b_if.address, unknown);
    media.set_latch_mode(latch);
    media.advertise(Side::A, a_if.advertise);
    media.advertise(Side::B, b_if.advertise);
    media
}

fn interface(
    ifaces: &[MediaInterface],
    name: Option<&str>,
    wish: FamilyWish,
) -> Result<MediaInterface, NgError> {
    let name = match name {
        Some(n) => n,
        None => {
            &ifaces
                .first()
                .ok_or_else(|| {
                    "No media interface is configured ([[media.interface]])".to_string()
                })?
                .name
        }
    };
    let mut named = ifaces.iter().filter(|i| i.name == name);
    let first = named
        .clone()
        .next()
        .ok_or_else(|| format!("Unknown interface '{name}'"))?;
    match named.find(|i| Family::of(i.address) == wish.family) {
        Some(i) => Ok(i.clone()),
        None if wish.required => Err(format!(
            "No address of family {} on interface '{name}' (address family {})",
            match wish.family {
                Family::V4 => "IPv4",
                Family::V6 => "IPv6",
            },
            wish.family.ng_name()
        )),
        None => Ok(first.clone()),
    }
}

/// Moves `side` of `media` onto the entry of its interface that `wish` names, before the
/// SDP toward that side is written; `current` is the entry it is on, updated.
fn retarget(
    ifaces: &[MediaInterface],
    resources: &SharedResources,
    current: &mut MediaInterface,
    media: &mut CallMedia,
    side: Side,
    wish: FamilyWish,
    now: Instant,
) -> Result<(), NgError> {
    let target = interface(ifaces, Some(&current.name), wish)?;
    media
        .rehome(
            side,
            target.address,
            target.advertise,
            &mut resources.borrow_mut().ctx(now),
        )
        .map_err(|e| format!("Failed to allocate media: {e}"))?;
    *current = target;
    Ok(())
}

/// The message's `sdp` as it came (empty when there is none; [`NgServer::sdp_of`] has refused
/// such a message already).
fn sdp_body(msg: &Value) -> &[u8] {
    match msg.get("sdp") {
        Some(Value::Bytes(body)) => body,
        _ => &[],
    }
}

fn required<'a>(msg: &'a Value, key: &str) -> Result<&'a str, NgError> {
    msg.get(key)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("No {key} in message"))
}

/// The outgoing SDP without its `a=rtcp` lines (`no_rtcp`) and with `marker` as a session-level
/// attribute (before the first `m=` line), keeping the SDP's line endings.
fn reshape_sdp(body: &[u8], no_rtcp: bool, marker: Option<&str>) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(text.len() + 64);
    let mut marked = marker.is_none();
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if no_rtcp && bare.starts_with("a=rtcp:") {
            continue;
        }
        if !marked && bare.starts_with("m=") {
            out.push_str(marker.unwrap_or_default());
            out.push_str(eol);
            marked = true;
        }
        out.push_str(line);
    }
    if let (false, Some(m)) = (marked, marker) {
        out.push_str(m);
        out.push_str(eol);
    }
    out.into_bytes()
}

fn ok_with_sdp(body: Vec<u8>) -> Value {
    dict([("result", "ok".into()), ("sdp", Value::Bytes(body))])
}

/// The address that replaces the SDP's media addresses: with `SIP-source-address`, the media
/// address is the signalling source rather than what the SDP says (rtpengine's pre-3.8
/// default).
fn source_address(flags: &[String], msg: &Value) -> Option<IpAddr> {
    NgServer::received_from(msg).filter(|_| flags.iter().any(|f| f == "sip-source-address"))
}

/// The description as mediagate should treat it: its media addresses replaced by `address`.
fn media_sdp(sdp: &Sdp, address: Option<IpAddr>) -> Sdp {
    match address {
        Some(ip) => sdp.with_address(ip),
        None => sdp.clone(),
    }
}

/// The learning rule the flags ask for: `asymmetric`, `media-handover`, else symmetric and
/// strict (`symmetric`, `strict-source` and `port-latching` all name the default).
fn latch_mode(flags: &[String]) -> LatchMode {
    if flags.iter().any(|f| f == "asymmetric") {
        LatchMode::Asymmetric
    } else if flags.iter().any(|f| f == "media-handover") {
        LatchMode::Handover
    } else {
        LatchMode::Symmetric
    }
}

fn json_str(v: &Json) -> &str {
    v.as_str().unwrap_or_default()
}

/// One stream of a `query` reply, shaped like rtpengine's.
fn ng_stream(s: &Json, component: &str) -> Value {
    let endpoint = |addr: &Json| match addr.as_str().and_then(|a| a.parse::<SocketAddr>().ok()) {
        Some(a) => dict([
            ("family", if a.is_ipv4() { "IPv4" } else { "IPv6" }.into()),
            ("address", a.ip().to_string().into()),
            ("port", Value::Int(i64::from(a.port()))),
        ]),
        None => Value::Dict(Default::default()),
    };
    let local_port = s["local"]
        .as_str()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map_or(0, |a| i64::from(a.port()));
    let count = |k: &str| Value::Int(s[k].as_u64().unwrap_or(0) as i64);
    dict([
        ("local port", Value::Int(local_port)),
        ("endpoint", endpoint(&s["remote"])),
        ("advertised endpoint", endpoint(&s["remote"])),
        ("flags", Value::List(vec![component.into()])),
        (
            "stats",
            dict([
                ("packets", count("rx_packets")),
                ("bytes", count("rx_bytes")),
                ("errors", count("drops")),
            ]),
        ),
    ])
}

/// `totals` of a call (or of one branch): RTP and RTCP packets, bytes and errors over every
/// side of `medias`.
fn totals_of<'a>(medias: impl IntoIterator<Item = &'a CallMedia>) -> Value {
    let mut sums = [[0u64; 3]; 2];
    for media in medias {
        for side in [Side::A, Side::B] {
            for s in media.status(side) {
                for (i, component) in [&s, &s["rtcp"]].into_iter().enumerate() {
                    sums[i][0] += component["rx_packets"].as_u64().unwrap_or(0);
                    sums[i][1] += component["rx_bytes"].as_u64().unwrap_or(0);
                    sums[i][2] += component["drops"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    let part = |s: [u64; 3]| {
        dict([
            ("packets", Value::Int(s[0] as i64)),
            ("bytes", Value::Int(s[1] as i64)),
            ("errors", Value::Int(s[2] as i64)),
        ])
    };
    dict([("RTP", part(sums[0])), ("RTCP", part(sums[1]))])
}
