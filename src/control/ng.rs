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
use crate::media::session::{CallMedia, SharedResources, Side};
use crate::media::LatchMode;
use crate::sdp::Sdp;

/// How long a reply is kept for retransmissions of its request.
const REPLY_CACHE: Duration = Duration::from_secs(30);

/// An NG command's failure, answered as `result: error` with this reason.
type NgError = String;

struct NgCall {
    label: String,
    created: Instant,
    created_unix: u64,
    from_tag: String,
    to_tag: Option<String>,
    media: CallMedia,
    /// Set by `delete` with a delay: the call is released at this instant.
    delete_at: Option<Instant>,
}

/// What NG statistics count.
#[derive(Default)]
struct Totals {
    offers: u64,
    answers: u64,
    deletes: u64,
    errors: u64,
}

/// The NG protocol server state.
pub struct NgServer {
    config: Arc<Config>,
    media: SharedResources,
    calls: HashMap<String, NgCall>,
    replies: HashMap<Vec<u8>, Vec<u8>>,
    reply_expiry: VecDeque<(Instant, Vec<u8>)>,
    next_label: u64,
    totals: Totals,
}

fn error_reply(reason: &str) -> Value {
    dict([("result", "error".into()), ("error-reason", reason.into())])
}

fn unix_now(wall: SystemTime) -> u64 {
    wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl NgServer {
    pub fn new(config: Arc<Config>, media: SharedResources) -> Self {
        NgServer {
            config,
            media,
            calls: HashMap::new(),
            replies: HashMap::new(),
            reply_expiry: VecDeque::new(),
            next_label: 0,
            totals: Totals::default(),
        }
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
            "offer" => self.offer(msg, other_calls, now, wall),
            "answer" => self.answer(msg, now),
            "delete" => self.delete(msg, now),
            "query" => self.query(msg),
            "list" => Ok(self.list(msg)),
            "statistics" => Ok(self.statistics(other_calls)),
            other => Err(format!("Unrecognized command '{other}'")),
        };
        result.unwrap_or_else(|reason| error_reply(&reason))
    }

    fn interface(&self, name: Option<&str>) -> Result<&MediaInterface, NgError> {
        let ifaces = &self.config.media.interfaces;
        match name {
            None => ifaces.first().ok_or_else(|| {
                "No media interface is configured ([[media.interface]])".to_string()
            }),
            Some(n) => ifaces
                .iter()
                .find(|i| i.name == n)
                .ok_or_else(|| format!("Unknown interface '{n}'")),
        }
    }

    /// The interfaces facing the offerer (A) and the answerer (B): `direction`, else
    /// `from-interface` / `to-interface`, else the first configured interface.
    fn directions(&self, msg: &Value) -> Result<(MediaInterface, MediaInterface), NgError> {
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
        Ok((self.interface(from)?.clone(), self.interface(to)?.clone()))
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
            .map(|f| f.to_ascii_lowercase())
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
        let mut media = self.media.borrow_mut();
        if let Some(call) = self.calls.get_mut(call_id) {
            // A re-offer, from either side of the existing call.
            let side = if call.from_tag == from_tag {
                Side::A
            } else {
                Side::B
            };
            let body = call
                .media
                .anchor(side, &media_sdp(&sdp, &flags, msg), &mut media.ctx(now))
                .map_err(|e| e.to_string())?;
            self.totals.offers += 1;
            return Ok(ok_with_sdp(body));
        }
        if other_calls + self.active_calls() >= self.config.sip.max_calls {
            let limit = msg.get("supports").map(Value::strings).unwrap_or_default();
            return Ok(if limit.contains(&"load limit") {
                dict([("result", "load limit".into())])
            } else {
                error_reply("Parallel session limit reached")
            });
        }
        let (a_if, b_if) = self.directions(msg)?;
        let sdp = media_sdp(&sdp, &flags, msg);
        let a_peer = Self::received_from(msg)
            .or_else(|| sdp.media().first().map(|m| m.rtp.ip()))
            .unwrap_or(a_if.address);
        let unknown = if b_if.address.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        };
        let mut call_media = CallMedia::new(a_if.address, a_peer, b_if.address, unknown);
        call_media.set_latch_mode(latch_mode(&flags));
        call_media.advertise(Side::A, a_if.advertise);
        call_media.advertise(Side::B, b_if.advertise);
        let body = match call_media.anchor(Side::A, &sdp, &mut media.ctx(now)) {
            Ok(b) => b,
            Err(e) => {
                call_media.release(&mut media.ctx(now));
                return Err(format!("Failed to allocate media: {e}"));
            }
        };
        self.next_label += 1;
        self.calls.insert(
            call_id.to_string(),
            NgCall {
                label: format!("n-{}", self.next_label),
                created: now,
                created_unix: unix_now(wall),
                from_tag: from_tag.to_string(),
                to_tag: None,
                media: call_media,
                delete_at: None,
            },
        );
        self.totals.offers += 1;
        tracing::info!(call_id, from_tag, "NG offer");
        Ok(ok_with_sdp(body))
    }

    fn answer(&mut self, msg: &Value, now: Instant) -> Result<Value, NgError> {
        let call_id = required(msg, "call-id")?;
        let from_tag = required(msg, "from-tag")?;
        let to_tag = required(msg, "to-tag")?;
        let sdp = Self::sdp_of(msg)?;
        let flags = Self::flags(msg);
        let call = self
            .calls
            .get_mut(call_id)
            .filter(|c| c.delete_at.is_none())
            .ok_or_else(|| "Unknown call-id".to_string())?;
        // The answer's from-tag is the offerer's; a re-INVITE answered by the caller swaps them.
        let side = if call.from_tag == from_tag {
            Side::B
        } else {
            Side::A
        };
        if side == Side::B {
            call.to_tag = Some(to_tag.to_string());
        }
        let body = call
            .media
            .anchor(
                side,
                &media_sdp(&sdp, &flags, msg),
                &mut self.media.borrow_mut().ctx(now),
            )
            .map_err(|e| e.to_string())?;
        self.totals.answers += 1;
        Ok(ok_with_sdp(body))
    }

    fn delete(&mut self, msg: &Value, now: Instant) -> Result<Value, NgError> {
        let call_id = required(msg, "call-id")?;
        let tag_matches = |call: &NgCall| {
            let tags = [msg.get("from-tag"), msg.get("to-tag")];
            tags.iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .all(|t| t.is_empty() || t == call.from_tag || Some(t) == call.to_tag.as_deref())
        };
        let Some(call) = self.calls.get_mut(call_id).filter(|c| tag_matches(c)) else {
            return Ok(dict([
                ("result", "ok".into()),
                ("warning", "Call-ID not found or tags didn't match".into()),
            ]));
        };
        let delay = msg
            .get("delete-delay")
            .or_else(|| msg.get("delete delay"))
            .and_then(Value::as_int)
            .map_or(self.config.control.delete_delay, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        self.totals.deletes += 1;
        let totals = totals_of(&call.media);
        if delay.is_zero() {
            self.release(call_id, now);
        } else {
            call.delete_at = Some(now + delay);
        }
        Ok(dict([("result", "ok".into()), ("totals", totals)]))
    }

    fn release(&mut self, call_id: &str, now: Instant) {
        if let Some(mut call) = self.calls.remove(call_id) {
            call.media.release(&mut self.media.borrow_mut().ctx(now));
            tracing::info!(call_id, "NG call deleted");
        }
    }

    fn query(&self, msg: &Value) -> Result<Value, NgError> {
        let call_id = required(msg, "call-id")?;
        let call = self
            .calls
            .get(call_id)
            .ok_or_else(|| "Unknown call-id".to_string())?;
        let mut tags = Vec::new();
        let sides = [
            (Side::A, Some(call.from_tag.as_str())),
            (Side::B, call.to_tag.as_deref()),
        ];
        for (side, tag) in sides {
            let Some(tag) = tag else { continue };
            let other = match side {
                Side::A => call.to_tag.clone().unwrap_or_default(),
                Side::B => call.from_tag.clone(),
            };
            let medias: Vec<Value> = call
                .media
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
                            Value::List(vec![ng_stream(s, "RTP"), ng_stream(&s["rtcp"], "RTCP")]),
                        ),
                    ])
                })
                .collect();
            tags.push((
                tag.as_bytes().to_vec(),
                dict([
                    ("tag", tag.into()),
                    ("created", Value::Int(call.created_unix as i64)),
                    ("in dialogue with", other.into()),
                    ("medias", Value::List(medias)),
                ]),
            ));
        }
        Ok(dict([
            ("result", "ok".into()),
            ("created", Value::Int(call.created_unix as i64)),
            ("tags", Value::Dict(tags.into_iter().collect())),
            ("totals", totals_of(&call.media)),
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
                    || c.media.last_activity().is_some_and(|last| {
                        now.saturating_duration_since(last.max(c.created)) >= timeout
                    })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            self.release(&id, now);
        }
    }

    /// `/status` entries for NG calls (deleted ones excluded), one leg per tag.
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
                let mut legs = vec![json!({"tag": c.from_tag, "streams": c.media.status(Side::A)})];
                if let Some(t) = &c.to_tag {
                    legs.push(json!({"tag": t, "streams": c.media.status(Side::B)}));
                }
                json!({
                    "id": c.label,
                    "source": "ng",
                    "started": humantime::format_rfc3339_seconds(started).to_string(),
                    "legs": legs,
                })
            })
            .collect()
    }
}

fn required<'a>(msg: &'a Value, key: &str) -> Result<&'a str, NgError> {
    msg.get(key)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("No {key} in message"))
}

fn ok_with_sdp(body: Vec<u8>) -> Value {
    dict([("result", "ok".into()), ("sdp", Value::Bytes(body))])
}

/// The description as mediagate should treat it: with `SIP-source-address`, the media address
/// is the signalling source rather than what the SDP says (rtpengine's pre-3.8 default).
fn media_sdp(sdp: &Sdp, flags: &[String], msg: &Value) -> Sdp {
    match (
        flags.iter().any(|f| f == "sip-source-address"),
        NgServer::received_from(msg),
    ) {
        (true, Some(ip)) => sdp.with_address(ip),
        _ => sdp.clone(),
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

/// `totals` of a call: RTP and RTCP packets, bytes and errors over both sides.
fn totals_of(media: &CallMedia) -> Value {
    let mut sums = [[0u64; 3]; 2];
    for side in [Side::A, Side::B] {
        for s in media.status(side) {
            for (i, component) in [&s, &s["rtcp"]].into_iter().enumerate() {
                sums[i][0] += component["rx_packets"].as_u64().unwrap_or(0);
                sums[i][1] += component["rx_bytes"].as_u64().unwrap_or(0);
                sums[i][2] += component["drops"].as_u64().unwrap_or(0);
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
