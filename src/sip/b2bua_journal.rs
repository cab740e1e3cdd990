//! A child module of `b2bua`: confirmed calls as journal records, so that calls survive a
//! restart (`media.handover`). The B2BUA queues an [`JournalEntry::Up`] when a call is
//! confirmed (ACK of the 2xx) or a mid-call negotiation changes what a hang-up or the media
//! needs, and an [`JournalEntry::End`] when a confirmed call ends; the control loop takes them
//! with [`B2bua::drain_journal`] and appends them to the state file
//! (`signalling::journal`). At the next start [`B2bua::adopt`] rebuilds each recorded call as
//! Confirmed, with its exact media ports.
//!
//! Calls still setting up at the restart are not recorded and are lost. CSeq numbers are not
//! recorded at every request: an adopted leg's local CSeq jumps by [`CSEQ_MARGIN`], so the
//! next BYE or re-INVITE is above anything the old process sent.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{midcall, prack, refer, timers, B2bua, Call, CallKey, Deadline, Phase, Side};
use crate::cdr::{Attempt, AttemptResult};
use crate::config::{Config, Endpoint};
use crate::media::session::{CallMedia, MediaRecord};
use crate::sip::dialog::Dialog;
use crate::sip::message::Message;
use crate::sip::transaction::Target;
use crate::sip::translate::Numbers;

/// How far an adopted leg's local CSeq jumps past the recorded one (requests the old process
/// sent after its last record: session refreshes, INFO, ...).
pub const CSEQ_MARGIN: u32 = 1000;

/// One line of the call-state journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "lowercase")]
pub enum JournalEntry {
    /// A confirmed call as it is now (replaces any earlier record of the same call).
    Up(Box<CallRecord>),
    /// The call ended.
    End { call: String },
}

/// What it takes to rebuild a confirmed call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call's label (`c-N`), its id in `/status` and CDRs.
    pub call: String,
    pub a: DialogRecord,
    pub b: DialogRecord,
    /// Trunk names (a trunk gone from the new configuration refuses the call).
    pub a_trunk: String,
    pub b_trunk: String,
    /// What the call kept of the caller's INVITE (dialled numbers for the CDR).
    pub a_invite: String,
    /// Numbers after the inbound translation.
    pub called: String,
    pub calling: String,
    pub emergency: bool,
    pub b_invite_cseq: u32,
    /// Wall-clock start and answer, milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub answered_ms: Option<u64>,
    pub final_code: u16,
    pub attempts: Vec<AttemptRecord>,
    /// On hold: `media.hold_timeout_s` applies.
    pub held: bool,
    pub timers: [TimerRecord; 2],
    pub media: MediaRecord,
}

/// One leg's dialog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialogRecord {
    /// Transport and peer address, `udp:IP:PORT`.
    pub peer: String,
    /// mediagate's own address on the leg.
    pub local_addr: SocketAddr,
    pub call_id: String,
    /// Our From/To header value with our tag, and the peer's.
    pub local: String,
    pub remote: String,
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub signalling_ip: IpAddr,
}

/// One INVITE of the call toward a trunk, for its CDR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub trunk: String,
    pub peer: String,
    /// The final status code; `None`: timeout.
    pub code: Option<u16>,
}

/// One leg's session timer (RFC 4028).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRecord {
    pub interval: u32,
    pub ours: bool,
    pub supports: bool,
    pub update: bool,
}

/// Why a recorded call was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptRefusal {
    #[error("trunk `{0}` is not in the configuration")]
    NoTrunk(String),
    #[error("bad record: {0}")]
    Bad(String),
    #[error("the call is already up")]
    Duplicate,
    #[error(transparent)]
    Media(#[from] crate::media::session::AdoptError),
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn wall(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl DialogRecord {
    fn of(d: &Dialog) -> Self {
        DialogRecord {
            peer: Endpoint {
                transport: d.target.transport,
                addr: d.target.remote,
            }
            .to_string(),
            local_addr: d.target.local,
            call_id: d.call_id.clone(),
            local: d.local.clone(),
            remote: d.remote.clone(),
            remote_target: d.remote_target.clone(),
            route_set: d.route_set.clone(),
            local_cseq: d.local_cseq,
            signalling_ip: d.signalling_ip,
        }
    }

    fn dialog(&self) -> Result<Dialog, AdoptRefusal> {
        let peer: Endpoint = self.peer.parse().map_err(AdoptRefusal::Bad)?;
        Ok(Dialog {
            target: Target {
                transport: peer.transport,
                remote: peer.addr,
                local: self.local_addr,
            },
            call_id: self.call_id.clone(),
            local: self.local.clone(),
            remote: self.remote.clone(),
            remote_target: self.remote_target.clone(),
            route_set: self.route_set.clone(),
            local_cseq: self.local_cseq.saturating_add(CSEQ_MARGIN),
            signalling_ip: self.signalling_ip,
        })
    }
}

impl CallRecord {
    fn of(call: &Call) -> Self {
        let trunk = |t: usize| call.config.trunks[t].name.clone();
        CallRecord {
            call: call.label.clone(),
            a: DialogRecord::of(&call.a),
            b: DialogRecord::of(&call.b),
            a_trunk: trunk(call.a_trunk),
            b_trunk: trunk(call.b_trunk),
            a_invite: String::from_utf8_lossy(&call.a_invite.to_bytes()).into_owned(),
            called: call.numbers.called.clone(),
            calling: call.numbers.calling.clone(),
            emergency: call.emergency,
            b_invite_cseq: call.b_invite_cseq,
            started_ms: millis(call.started_wall),
            answered_ms: call.answered_wall.map(millis),
            final_code: call.final_code.unwrap_or(200),
            attempts: call
                .attempts
                .iter()
                .map(|a| AttemptRecord {
                    trunk: a.trunk.clone(),
                    peer: a.peer.to_string(),
                    code: match a.code {
                        AttemptResult::Code(c) => Some(c),
                        AttemptResult::Timeout => None,
                    },
                })
                .collect(),
            held: call.mid.held,
            timers: call.timers.record(),
            media: call.media.record(),
        }
    }
}

/// The index of trunk `name` in `config`, for an adopted call.
fn trunk_index(config: &Config, name: &str) -> Result<usize, AdoptRefusal> {
    config
        .trunks
        .iter()
        .position(|t| t.name == name && !t.retired)
        .ok_or_else(|| AdoptRefusal::NoTrunk(name.to_string()))
}

impl B2bua {
    /// Notes that call `key`'s journal record is out of date (written at the next
    /// [`Self::drain_journal`], once per turn however many changes the turn made).
    pub(super) fn journal_changed(&mut self, key: CallKey) {
        if self.config.media.handover {
            self.journal_dirty.push(key);
        }
    }

    /// Queues the end of call `key` when it was journalled (confirmed).
    pub(super) fn journal_ended(&mut self, call: &str) {
        if self.config.media.handover {
            self.journal_ends.push(JournalEntry::End {
                call: call.to_string(),
            });
        }
    }

    /// Journal entries since the last call, in the order to append them: the calls that
    /// ended, then the current state of confirmed calls that changed. Empty unless
    /// `media.handover` is on.
    pub fn drain_journal(&mut self) -> Vec<JournalEntry> {
        let mut out = std::mem::take(&mut self.journal_ends);
        let mut dirty = std::mem::take(&mut self.journal_dirty);
        dirty.sort_unstable();
        dirty.dedup();
        out.extend(
            dirty
                .into_iter()
                .filter_map(|k| self.calls.get(&k))
                .filter(|c| c.phase == Phase::Confirmed)
                .map(|c| JournalEntry::Up(Box::new(CallRecord::of(c)))),
        );
        out
    }

    /// Rebuilds the calls of a journal read at start-up, before any SIP is served: each as
    /// Confirmed, with its exact media ports claimed and its streams queued for the data
    /// plane, its trunks occupied and its session timers started again from `now`. A call
    /// whose trunk is gone, whose ports are taken or whose record is bad is logged and
    /// dropped. Adopted calls are queued for the journal again (the compacted file).
    /// Returns how many calls were adopted.
    pub fn adopt(&mut self, records: Vec<CallRecord>, now: Instant) -> usize {
        let mut adopted = 0;
        for rec in records {
            match self.adopt_one(&rec, now) {
                Ok(key) => {
                    adopted += 1;
                    self.journal_changed(key);
                    tracing::info!(call = %rec.call, sip_call_id = %rec.a.call_id, "call adopted from the state file");
                }
                Err(why) => {
                    tracing::warn!(call = %rec.call, sip_call_id = %rec.a.call_id, %why, "call in the state file NOT adopted");
                }
            }
        }
        adopted
    }

    fn adopt_one(&mut self, rec: &CallRecord, now: Instant) -> Result<CallKey, AdoptRefusal> {
        let config: Arc<Config> = self.config.clone();
        let a_trunk = trunk_index(&config, &rec.a_trunk)?;
        let b_trunk = trunk_index(&config, &rec.b_trunk)?;
        let key: CallKey = rec
            .call
            .strip_prefix("c-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| AdoptRefusal::Bad(format!("call label `{}`", rec.call)))?;
        if self.calls.contains_key(&key)
            || self.by_call_id.contains_key(&rec.a.call_id)
            || self.by_call_id.contains_key(&rec.b.call_id)
        {
            return Err(AdoptRefusal::Duplicate);
        }
        let (a, b) = (rec.a.dialog()?, rec.b.dialog()?);
        let a_invite = Message::parse_datagram(rec.a_invite.as_bytes())
            .map_err(|e| AdoptRefusal::Bad(format!("caller's INVITE: {e}")))?;
        let attempts = rec
            .attempts
            .iter()
            .map(|r| {
                Ok(Attempt {
                    trunk: r.trunk.clone(),
                    peer: r.peer.parse().map_err(AdoptRefusal::Bad)?,
                    code: r.code.map_or(AttemptResult::Timeout, AttemptResult::Code),
                })
            })
            .collect::<Result<Vec<_>, AdoptRefusal>>()?;
        let media = CallMedia::adopt(&rec.media, &mut self.media.borrow_mut().ctx(now))?;
        let (timers, due) = timers::SessionTimers::adopted(&rec.timers, now);
        let (wall_now, started_wall) = (SystemTime::now(), wall(rec.started_ms));
        let age = wall_now.duration_since(started_wall).unwrap_or_default();
        let label = rec.call.clone();
        let span = tracing::info_span!("call", id = %label, sip_call_id = %rec.a.call_id);
        let call = Call {
            label,
            config: config.clone(),
            span,
            started: now.checked_sub(age).unwrap_or(now),
            phase: Phase::Confirmed,
            a,
            a_trunk,
            a_invite,
            // No transaction of the old process survives: 0 is no transaction's id.
            a_txn: 0,
            a_offer: None,
            numbers: Numbers {
                called: rec.called.clone(),
                calling: rec.calling.clone(),
            },
            b,
            b_trunk,
            remaining_peers: Vec::new(),
            remaining_trunks: Vec::new(),
            invites_sent: u32::try_from(attempts.len()).unwrap_or(u32::MAX).max(1),
            attempts,
            started_wall,
            answered_wall: rec.answered_ms.map(wall),
            final_code: Some(rec.final_code),
            responded: true,
            redirects: 0,
            occupying: true,
            emergency: rec.emergency,
            b_txn: 0,
            b_invite_cseq: rec.b_invite_cseq,
            cancelled: false,
            cancel_sent: false,
            ok_to_a: None,
            ack_to_b: None,
            open_txns: Vec::new(),
            media,
            mid: midcall::MidCall {
                held: rec.held,
                ..Default::default()
            },
            timers,
            transfer: refer::Transfer::default(),
            early: prack::Early::default(),
            forks: None,
        };
        self.by_call_id
            .insert(call.a.call_id.clone(), (key, Side::A));
        self.by_call_id
            .insert(call.b.call_id.clone(), (key, Side::B));
        self.limits.occupy(a_trunk);
        self.limits.occupy(b_trunk);
        let limit = [a_trunk, b_trunk]
            .iter()
            .filter_map(|t| config.trunks[*t].max_duration)
            .min();
        if let (Some(limit), Some(answered)) = (limit, call.answered_wall) {
            let up = wall_now.duration_since(answered).unwrap_or_default();
            let left = limit.saturating_sub(up);
            self.deadlines
                .push(std::cmp::Reverse((now + left, key, Deadline::MaxDuration)));
        }
        timers::schedule(&mut self.deadlines, key, due);
        self.calls.insert(key, Box::new(call));
        self.next_call = self.next_call.max(key);
        self.next_sweep.get_or_insert(now + super::MEDIA_SWEEP);
        Ok(key)
    }
}
