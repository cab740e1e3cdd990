//! A child module of `ng`: NG calls as journal records, so that they survive a restart
//! (`media.handover`) like the B2BUA's calls. The server queues a [`JournalEntry::NgUp`] after
//! an offer, answer or delete changes a call and a [`JournalEntry::NgEnd`] when a call is
//! released; the control loop takes them with [`NgServer::drain_journal`] and appends them to
//! the state file (`signalling::journal`) next to the B2BUA's. At the next start
//! [`NgServer::adopt`] rebuilds each recorded call, with its exact media ports, before the NG
//! socket serves.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Branch, NgCall, NgServer, Party};
use crate::config::MediaInterface;
use crate::media::session::{AdoptError, CallMedia, MediaRecord};
use crate::media::LatchMode;
use crate::sdp::Sdp;
use crate::sip::b2bua::journal::JournalEntry;

/// What it takes to rebuild an NG call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NgCallRecord {
    /// The NG `call-id`.
    pub call_id: String,
    /// mediagate's own id for the call in `/status` (`n-N`).
    pub status_id: String,
    /// Wall-clock creation, seconds since the Unix epoch (what `query` shows as `created`).
    pub created_unix: u64,
    pub from: PartyRecord,
    /// The latest offer from the offerer as it came, and the address that replaced its media
    /// addresses (`SIP-source-address`).
    pub offer: String,
    pub offer_address: Option<IpAddr>,
    /// The interfaces facing the offerer and the answerers, by name and address (an interface
    /// gone from the new configuration refuses the call).
    pub a_if: InterfaceRecord,
    pub b_if: InterfaceRecord,
    pub a_peer: IpAddr,
    pub latch: LatchMode,
    pub branches: Vec<BranchRecord>,
    pub latest: Option<String>,
    /// Seconds left before a delayed `delete` releases the call.
    pub delete_in_s: Option<u64>,
}

/// A participant: its tag and NG `label`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartyRecord {
    pub tag: String,
    pub label: Option<String>,
}

/// A `[[media.interface]]` entry a call uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceRecord {
    pub name: String,
    pub address: IpAddr,
}

/// One branch: its answerer (none before the first answer) and its media.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchRecord {
    pub to: Option<PartyRecord>,
    pub media: MediaRecord,
}

/// Why a recorded NG call was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum NgAdoptRefusal {
    #[error("media interface `{0}` with address {1} is not in the configuration")]
    NoInterface(String, IpAddr),
    #[error("bad record: {0}")]
    Bad(String),
    #[error("the call is already up")]
    Duplicate,
    #[error(transparent)]
    Media(#[from] AdoptError),
}

impl PartyRecord {
    fn of(p: &Party) -> Self {
        PartyRecord {
            tag: p.tag.clone(),
            label: p.label.clone(),
        }
    }

    fn party(&self) -> Party {
        Party {
            tag: self.tag.clone(),
            label: self.label.clone(),
        }
    }
}

impl InterfaceRecord {
    fn of(i: &MediaInterface) -> Self {
        InterfaceRecord {
            name: i.name.clone(),
            address: i.address,
        }
    }

    /// The entry of the new configuration with this name and address.
    fn find(&self, ifaces: &[MediaInterface]) -> Result<MediaInterface, NgAdoptRefusal> {
        ifaces
            .iter()
            .find(|i| i.name == self.name && i.address == self.address)
            .cloned()
            .ok_or_else(|| NgAdoptRefusal::NoInterface(self.name.clone(), self.address))
    }
}

impl NgCallRecord {
    fn of(call_id: &str, call: &NgCall, now: Instant) -> Self {
        NgCallRecord {
            call_id: call_id.to_string(),
            status_id: call.status_id.clone(),
            created_unix: call.created_unix,
            from: PartyRecord::of(&call.from),
            offer: String::from_utf8_lossy(&call.offer_body).into_owned(),
            offer_address: call.offer_address,
            a_if: InterfaceRecord::of(&call.a_if),
            b_if: InterfaceRecord::of(&call.b_if),
            a_peer: call.a_peer,
            latch: call.latch,
            branches: call
                .branches
                .iter()
                .map(|b| BranchRecord {
                    to: b.to.as_ref().map(PartyRecord::of),
                    media: b.media.record(),
                })
                .collect(),
            latest: call.latest.clone(),
            delete_in_s: call
                .delete_at
                .map(|t| t.saturating_duration_since(now).as_secs()),
        }
    }
}

impl NgServer {
    /// Notes that call `call_id`'s journal record is out of date (written at the next
    /// [`Self::drain_journal`], once per turn however many changes the turn made).
    pub(super) fn journal_changed(&mut self, call_id: &str) {
        if self.config.media.handover {
            self.journal_dirty.push(call_id.to_string());
        }
    }

    /// Queues the end of call `call_id`.
    pub(super) fn journal_ended(&mut self, call_id: &str) {
        if self.config.media.handover {
            self.journal_ends.push(JournalEntry::NgEnd {
                call_id: call_id.to_string(),
            });
        }
    }

    /// Journal entries since the last call, in the order to append them: the calls released,
    /// then the current state of the calls that changed. Empty unless `media.handover` is on.
    pub fn drain_journal(&mut self, now: Instant) -> Vec<JournalEntry> {
        let mut out = std::mem::take(&mut self.journal_ends);
        let mut dirty = std::mem::take(&mut self.journal_dirty);
        dirty.sort_unstable();
        dirty.dedup();
        out.extend(dirty.into_iter().filter_map(|id| {
            let call = self.calls.get(&id)?;
            Some(JournalEntry::NgUp(Box::new(NgCallRecord::of(
                &id, call, now,
            ))))
        }));
        out
    }

    /// Rebuilds the NG calls of a journal read at start-up, before the NG socket serves: each
    /// with the exact media ports of every branch claimed and its streams queued for the data
    /// plane, counted as created. A call whose interface is gone, whose ports are taken or
    /// whose record is bad is logged and dropped. Adopted calls are queued for the journal
    /// again (the compacted file). Returns how many calls were adopted.
    pub fn adopt(&mut self, records: Vec<NgCallRecord>, now: Instant, wall: SystemTime) -> usize {
        let mut adopted = 0;
        for rec in records {
            match self.adopt_one(&rec, now, wall) {
                Ok(()) => {
                    adopted += 1;
                    self.journal_changed(&rec.call_id);
                    tracing::info!(call_id = %rec.call_id, id = %rec.status_id, "NG call adopted from the state file");
                }
                Err(why) => {
                    tracing::warn!(call_id = %rec.call_id, id = %rec.status_id, %why, "NG call in the state file NOT adopted");
                }
            }
        }
        adopted
    }

    fn adopt_one(
        &mut self,
        rec: &NgCallRecord,
        now: Instant,
        wall: SystemTime,
    ) -> Result<(), NgAdoptRefusal> {
        if self.calls.contains_key(&rec.call_id) {
            return Err(NgAdoptRefusal::Duplicate);
        }
        let ifaces = &self.config.media.interfaces;
        let (a_if, b_if) = (rec.a_if.find(ifaces)?, rec.b_if.find(ifaces)?);
        let offer = Sdp::parse(rec.offer.as_bytes())
            .map_err(|e| NgAdoptRefusal::Bad(format!("offer: {e}")))?;
        let n: u64 = rec
            .status_id
            .strip_prefix("n-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| NgAdoptRefusal::Bad(format!("status id `{}`", rec.status_id)))?;
        if rec.branches.is_empty() {
            return Err(NgAdoptRefusal::Bad("no branch".into()));
        }
        let mut branches: Vec<Branch> = Vec::with_capacity(rec.branches.len());
        {
            let mut res = self.media.borrow_mut();
            for b in &rec.branches {
                match CallMedia::adopt(&b.media, &mut res.ctx(now)) {
                    Ok(media) => branches.push(Branch {
                        to: b.to.as_ref().map(PartyRecord::party),
                        media,
                    }),
                    Err(e) => {
                        // All branches or none: the ones adopted give their ports back.
                        for mut done in branches {
                            done.media.release(&mut res.ctx(now));
                        }
                        return Err(e.into());
                    }
                }
            }
        }
        let created_wall = UNIX_EPOCH + Duration::from_secs(rec.created_unix);
        let age = wall.duration_since(created_wall).unwrap_or_default();
        let call = NgCall {
            status_id: rec.status_id.clone(),
            created: now.checked_sub(age).unwrap_or(now),
            created_unix: rec.created_unix,
            from: rec.from.party(),
            offer: super::media_sdp(&offer, rec.offer_address),
            offer_body: rec.offer.clone().into_bytes(),
            offer_address: rec.offer_address,
            a_if,
            b_if,
            a_peer: rec.a_peer,
            latch: rec.latch,
            branches,
            latest: rec.latest.clone(),
            delete_at: rec.delete_in_s.map(|s| now + Duration::from_secs(s)),
        };
        self.calls.insert(rec.call_id.clone(), call);
        self.next_status_id = self.next_status_id.max(n);
        self.totals.calls_created += 1;
        Ok(())
    }
}
