//! Registration of mediagate with ITSP trunks (`register = { user, password, domain, expires }`),
//! sans-IO: one state machine per trunk, driven by the B2BUA with explicit instants.
//!
//! REGISTER at start, refresh at half the granted expiry, back-off after a failure (30 s doubling
//! to 10 min), un-REGISTER (`Expires: 0`) on shutdown. The B2BUA sends what [`Registrations::due`]
//! asks for (building it with [`Registrations::request`]), answers challenges with its digest
//! client, and feeds back final responses and timeouts.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::config::Config;
use crate::sip::dialog::{token, uri_transport, PRODUCT};
use crate::sip::header;
use crate::sip::message::{Message, Method, StartLine};
use crate::sip::transaction::{Target, TxnId};

/// First retry delay after a failure.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(30);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Shortest refresh interval, whatever the registrar grants.
const MIN_REFRESH: Duration = Duration::from_secs(5);

/// Where one trunk's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not registered yet (or no longer, after shutdown).
    Unregistered,
    /// A REGISTER is out.
    Registering,
    Registered,
    /// The last attempt failed; the next one is scheduled with back-off.
    Failed,
    /// The un-REGISTER is out.
    Unregistering,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Unregistered => "unregistered",
            State::Registering => "registering",
            State::Registered => "registered",
            State::Failed => "failed",
            State::Unregistering => "unregistering",
        }
    }
}

#[derive(Debug)]
struct Reg {
    state: State,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// Expiry to ask for next (the config's, or the registrar's Min-Expires after a 423).
    asking: u32,
    /// When the binding lapses, as granted by the last 2xx.
    expires_at: Option<Instant>,
    /// When the next REGISTER goes out (refresh or retry); `None` while one is out or after
    /// shutdown.
    next: Option<Instant>,
    backoff: Duration,
    last_error: Option<String>,
    txn: Option<TxnId>,
}

/// What [`Registrations::due`] asks the B2BUA to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub trunk: usize,
    pub expires: u32,
}

/// Stops `reg` from refreshing: true when it has a binding or a REGISTER out, which an
/// un-REGISTER must remove.
fn stop(reg: &mut Reg, now: Instant) -> bool {
    reg.next = None;
    if reg.expires_at.is_some_and(|e| e > now) || reg.txn.is_some() {
        reg.state = State::Unregistering;
        true
    } else {
        reg.state = State::Unregistered;
        false
    }
}

/// The registrations of every trunk with `register`.
#[derive(Debug, Default)]
pub struct Registrations {
    regs: HashMap<usize, Reg>,
    by_txn: HashMap<TxnId, usize>,
}

impl Registrations {
    /// A registration per trunk with `register`, each due at `now`.
    pub fn new(config: &Config, now: Instant) -> Self {
        let mut regs = Registrations::default();
        for t in 0..config.trunks.len() {
            regs.start_trunk(config, t, now);
        }
        regs
    }

    /// Slot `t` holds `config.trunks[t]` from now on (at start, or added by a reload): a fresh
    /// registration due at `now` when it has `register`, none otherwise.
    pub fn start_trunk(&mut self, config: &Config, t: usize, now: Instant) {
        self.by_txn.retain(|_, trunk| *trunk != t);
        let trunk = &config.trunks[t];
        let Some(r) = trunk.identity.register.as_ref() else {
            self.regs.remove(&t);
            return;
        };
        let reg = Reg {
            state: State::Unregistered,
            call_id: format!("{}@{}", token(), trunk.local.addr.ip()),
            from_tag: token(),
            cseq: 0,
            asking: r.expires,
            expires_at: None,
            next: Some(now),
            backoff: BACKOFF_FIRST,
            last_error: None,
            txn: None,
        };
        self.regs.insert(t, reg);
    }

    /// Stops slot `t`'s registration (its trunk was removed by a reload): true when an
    /// un-REGISTER (`Expires: 0`) must go out now.
    pub fn stop_trunk(&mut self, t: usize, now: Instant) -> bool {
        self.regs.get_mut(&t).is_some_and(|reg| stop(reg, now))
    }

    /// The next instant something is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.regs.values().filter_map(|r| r.next).min()
    }

    /// REGISTERs due at `now` (marked as going out; report each with [`Self::sent`]).
    pub fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut due: Vec<Due> = self
            .regs
            .iter_mut()
            .filter(|(_, r)| r.next.is_some_and(|n| n <= now))
            .map(|(&trunk, r)| {
                r.next = None;
                Due {
                    trunk,
                    expires: r.asking,
                }
            })
            .collect();
        due.sort_by_key(|d| d.trunk);
        due
    }

    /// The REGISTER for `trunk` asking for `expires` (0: remove the binding), sent to `peer`.
    /// The Request-URI is `sip:domain`, To and From the AoR `sip:user@domain`, the Contact
    /// mediagate's address on the trunk's local socket.
    pub fn request(
        &mut self,
        config: &Config,
        trunk: usize,
        expires: u32,
        peer: usize,
    ) -> Option<(Message, Target)> {
        let t = &config.trunks[trunk];
        let r = t.identity.register.as_ref()?;
        let reg = self.regs.get_mut(&trunk)?;
        let p = t.peers.get(peer)?;
        let target = Target {
            transport: p.transport,
            remote: p.addr,
            local: t.local.addr,
        };
        reg.cseq += 1;
        let aor = format!("sip:{}@{}", r.user, r.domain);
        let mut m = Message {
            start: StartLine::Request {
                method: Method::Register,
                uri: format!("sip:{}", r.domain),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        m.push_header("Max-Forwards", "70".into());
        m.push_header("From", format!("<{aor}>;tag={}", reg.from_tag));
        m.push_header("To", format!("<{aor}>"));
        m.push_header("Call-ID", reg.call_id.clone());
        m.push_header("CSeq", format!("{} REGISTER", reg.cseq));
        let transport = uri_transport(target.transport);
        m.push_header(
            "Contact",
            format!("<sip:{}@{}{transport}>", r.user, target.local),
        );
        m.push_header("Expires", expires.to_string());
        m.push_header("User-Agent", PRODUCT.into());
        m.push_header("Content-Length", "0".into());
        Some((m, target))
    }

    /// The REGISTER for `trunk` went out as `txn` (also after a digest resend, with its CSeq).
    pub fn sent(&mut self, trunk: usize, txn: TxnId, cseq: Option<u32>) {
        let Some(reg) = self.regs.get_mut(&trunk) else {
            return;
        };
        if let Some(old) = reg.txn.replace(txn) {
            self.by_txn.remove(&old);
        }
        if let Some(c) = cseq {
            reg.cseq = reg.cseq.max(c);
        }
        if reg.state != State::Unregistering {
            reg.state = State::Registering;
        }
        self.by_txn.insert(txn, trunk);
    }

    /// The trunk whose REGISTER is transaction `txn`.
    pub fn trunk_of(&self, txn: TxnId) -> Option<usize> {
        self.by_txn.get(&txn).copied()
    }

    /// A final response to a REGISTER; true when `txn` was one. `failure` overrides the
    /// reason of a non-2xx (e.g. a challenge the digest client could not answer).
    pub fn on_response(
        &mut self,
        txn: TxnId,
        resp: &Message,
        failure: Option<String>,
        now: Instant,
    ) -> bool {
        let Some(trunk) = self.by_txn.remove(&txn) else {
            return false;
        };
        let reg = self.regs.get_mut(&trunk).expect("indexed");
        reg.txn = None;
        let code = resp.code().unwrap_or(500);
        if reg.state == State::Unregistering {
            reg.state = State::Unregistered;
            reg.expires_at = None;
            return true;
        }
        match code {
            200..=299 => {
                let granted = granted_expiry(resp).unwrap_or(reg.asking);
                if granted == 0 {
                    return fail(reg, "registrar granted no binding (expires=0)".into(), now);
                }
                let granted = Duration::from_secs(granted.into());
                reg.state = State::Registered;
                reg.expires_at = Some(now + granted);
                reg.next = Some(now + (granted / 2).max(MIN_REFRESH));
                reg.backoff = BACKOFF_FIRST;
                reg.last_error = None;
                tracing::info!(trunk, expires_s = granted.as_secs(), "registered");
            }
            423 => {
                // Interval Too Brief: ask again at once with the registrar's minimum.
                let min = resp
                    .header("Min-Expires")
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(m) if m > reg.asking && m <= 7 * 86_400 => {
                        reg.asking = m;
                        reg.next = Some(now);
                    }
                    _ => {
                        return fail(reg, "423 without a usable Min-Expires".into(), now);
                    }
                }
            }
            _ => {
                let why = failure.unwrap_or_else(|| {
                    let reason = match &resp.start {
                        StartLine::Response { reason, .. } => reason.as_str(),
                        StartLine::Request { .. } => "",
                    };
                    format!("{code} {reason}")
                });
                return fail(reg, why, now);
            }
        }
        true
    }

    /// A REGISTER got no final response (Timer F); true when `txn` was one.
    pub fn on_timeout(&mut self, txn: TxnId, now: Instant) -> bool {
        let Some(trunk) = self.by_txn.remove(&txn) else {
            return false;
        };
        let reg = self.regs.get_mut(&trunk).expect("indexed");
        reg.txn = None;
        if reg.state == State::Unregistering {
            reg.state = State::Unregistered;
            return true;
        }
        fail(reg, "no response (timeout)".into(), now)
    }

    /// The REGISTER for `trunk` could not be sent: the trunk has no peer yet (its DNS names
    /// have not resolved). Retried with the usual back-off.
    pub fn no_peer(&mut self, trunk: usize, now: Instant) {
        if let Some(reg) = self.regs.get_mut(&trunk) {
            fail(
                reg,
                "no peer to register with (DNS names not resolved)".into(),
                now,
            );
        }
    }

    /// Stops every registration: the trunks to un-REGISTER (`Expires: 0`) now, those with a
    /// binding or a REGISTER out; nothing is scheduled afterwards.
    pub fn unregister_all(&mut self, now: Instant) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .regs
            .iter_mut()
            .filter_map(|(&trunk, reg)| stop(reg, now).then_some(trunk))
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether slot `t` has an un-REGISTER waiting for its answer.
    pub fn unregistering_trunk(&self, t: usize) -> bool {
        self.regs
            .get(&t)
            .is_some_and(|r| r.state == State::Unregistering && r.txn.is_some())
    }

    /// Whether an un-REGISTER is still waiting for its answer.
    pub fn unregistering(&self) -> bool {
        self.regs
            .values()
            .any(|r| r.state == State::Unregistering && r.txn.is_some())
    }

    /// The state of `trunk`'s registration, `None` when it has none.
    pub fn state(&self, trunk: usize) -> Option<State> {
        self.regs.get(&trunk).map(|r| r.state)
    }

    /// When the next REGISTER of `trunk` is scheduled.
    pub fn next_attempt(&self, trunk: usize) -> Option<Instant> {
        self.regs.get(&trunk).and_then(|r| r.next)
    }

    /// `/status` `trunks[].registration`: state, expiry (wall clock), next attempt, last error.
    pub fn status(&self, trunk: usize, now: Instant, wall: SystemTime) -> Option<Value> {
        let r = self.regs.get(&trunk)?;
        let at = |i: Instant| {
            let w = if i >= now {
                wall + (i - now)
            } else {
                wall - (now - i)
            };
            humantime::format_rfc3339_seconds(w).to_string()
        };
        let lapsed = r.expires_at.is_some_and(|e| e <= now);
        let state = match r.state {
            State::Registered if lapsed => "expired",
            s => s.name(),
        };
        Some(json!({
            "state": state,
            "expires_at": r.expires_at.filter(|_| r.state == State::Registered && !lapsed).map(at),
            "next_attempt": r.next.map(at),
            "last_error": r.last_error,
        }))
    }
}

/// Records a failure and schedules the retry with back-off; always true (for `on_*`).
fn fail(reg: &mut Reg, why: String, now: Instant) -> bool {
    tracing::warn!(error = %why, retry_in_s = reg.backoff.as_secs(), "registration failed");
    // A binding granted before stays valid until it lapses.
    if reg.expires_at.is_some_and(|e| e <= now) {
        reg.expires_at = None;
    }
    reg.state = if reg.expires_at.is_some() {
        State::Registered
    } else {
        State::Failed
    };
    reg.last_error = Some(why);
    reg.next = Some(now + reg.backoff);
    reg.backoff = (reg.backoff * 2).min(BACKOFF_MAX);
    true
}

/// The expiry a 2xx grants: the `expires` parameter of the (first) Contact, else the Expires
/// header (RFC 3261 §10.2.4).
fn granted_expiry(resp: &Message) -> Option<u32> {
    resp.headers_named("Contact")
        .find_map(|c| {
            // Parameters after the URI's closing '>'.
            let params = c.rsplit_once('>').map_or(c, |(_, p)| p);
            header::param(params, "expires").and_then(|v| v.trim().parse().ok())
        })
        .or_else(|| resp.header("Expires").and_then(|v| v.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[sip]
listen = ["udp:10.0.0.1:5060"]
[media]
ports = "30000-30099"
[[trunk]]
name = "pbx"
kind = "lan"
peers = ["udp:10.0.0.3:5060"]
local = "udp:10.0.0.1:5060"
[[trunk]]
name = "itsp"
kind = "itsp"
peers = ["udp:10.0.0.2:5060"]
local = "udp:10.0.0.1:5060"
register = { user = "4930", password = "pw", domain = "sip.example.net", expires = 600 }
"#;

    fn ok(req: &Message, extra: &[(&str, &str)]) -> Message {
        let mut r = crate::sip::dialog::response_to(req, 200, "OK", Some("t"));
        for (n, v) in extra {
            r.push_header(n, v.to_string());
        }
        r
    }

    fn code(req: &Message, code: u16) -> Message {
        crate::sip::dialog::response_to(req, code, "X", Some("t"))
    }

    #[test]
    fn registers_at_start_refreshes_at_half_and_backs_off() {
        let config = crate::config::parse("r.toml", CONFIG).unwrap();
        let t0 = Instant::now();
        let mut regs = Registrations::new(&config, t0);
        assert_eq!(regs.state(0), None);
        assert_eq!(regs.poll_timeout(), Some(t0));
        let due = regs.due(t0);
        assert_eq!(
            due,
            vec![Due {
                trunk: 1,
                expires: 600
            }]
        );
        assert!(regs.due(t0).is_empty(), "not twice");
        let (req, target) = regs.request(&config, 1, 600, 0).unwrap();
        assert_eq!(req.uri(), Some("sip:sip.example.net"));
        assert_eq!(req.header("To"), Some("<sip:4930@sip.example.net>"));
        assert_eq!(req.header("Contact"), Some("<sip:4930@10.0.0.1:5060>"));
        assert_eq!(req.header("Expires"), Some("600"));
        assert_eq!(target.remote, "10.0.0.2:5060".parse().unwrap());
        regs.sent(1, 10, None);
        assert_eq!(regs.state(1), Some(State::Registering));
        // The registrar grants 300 s in the Contact: refresh at 150 s.
        let t1 = t0 + Duration::from_millis(40);
        assert!(regs.on_response(
            10,
            &ok(
                &req,
                &[
                    ("Contact", "<sip:4930@10.0.0.1:5060>;expires=300"),
                    ("Expires", "900")
                ]
            ),
            None,
            t1
        ));
        assert_eq!(regs.state(1), Some(State::Registered));
        assert_eq!(regs.poll_timeout(), Some(t1 + Duration::from_secs(150)));
        let st = regs.status(1, t1, SystemTime::now()).unwrap();
        assert_eq!(st["state"], "registered");
        assert!(st["expires_at"].is_string() && st["last_error"].is_null());
        // Refresh: same Call-ID, next CSeq.
        let t2 = t1 + Duration::from_secs(150);
        assert_eq!(regs.due(t2).len(), 1);
        let (req2, _) = regs.request(&config, 1, 600, 0).unwrap();
        assert_eq!(req2.header("Call-ID"), req.header("Call-ID"));
        assert_eq!(req2.header("CSeq"), Some("2 REGISTER"));
        regs.sent(1, 11, None);
        // 403: still registered until the old binding lapses, retry in 30 s, then 60 s...
        assert!(regs.on_response(11, &code(&req2, 403), None, t2));
        assert_eq!(regs.state(1), Some(State::Registered));
        assert_eq!(regs.next_attempt(1), Some(t2 + BACKOFF_FIRST));
        let t3 = t2 + BACKOFF_FIRST;
        assert_eq!(regs.due(t3).len(), 1);
        regs.sent(1, 12, None);
        assert!(regs.on_timeout(12, t3));
        // The binding lapsed at t1 + 300 s < t3? (t3 = t1 + 180 s: not yet.)
        assert_eq!(regs.next_attempt(1), Some(t3 + 2 * BACKOFF_FIRST));
        let mut t = t3 + 2 * BACKOFF_FIRST;
        for expect in [120, 240, 480, 600, 600] {
            assert_eq!(regs.due(t).len(), 1);
            regs.sent(1, 20, None);
            assert!(regs.on_response(20, &code(&req2, 503), None, t));
            if t >= t1 + Duration::from_secs(300) {
                assert_eq!(regs.state(1), Some(State::Failed), "binding lapsed");
            } else {
                assert_eq!(
                    regs.state(1),
                    Some(State::Registered),
                    "binding still valid"
                );
            }
            assert_eq!(regs.next_attempt(1), Some(t + Duration::from_secs(expect)));
            t += Duration::from_secs(expect);
        }
        let st = regs.status(1, t, SystemTime::now()).unwrap();
        assert_eq!(st["state"], "failed");
        assert_eq!(st["last_error"], "503 X");
        assert!(st["expires_at"].is_null());
        // Success resets the back-off.
        assert_eq!(regs.due(t).len(), 1);
        regs.sent(1, 21, None);
        assert!(regs.on_response(21, &ok(&req2, &[]), None, t));
        assert_eq!(
            regs.next_attempt(1),
            Some(t + Duration::from_secs(300)),
            "asked 600"
        );
        assert!(!regs.on_response(99, &ok(&req2, &[]), None, t));
    }

    #[test]
    fn interval_too_brief_and_unregister() {
        let config = crate::config::parse("r.toml", CONFIG).unwrap();
        let t0 = Instant::now();
        let mut regs = Registrations::new(&config, t0);
        regs.due(t0);
        let (req, _) = regs.request(&config, 1, 600, 0).unwrap();
        regs.sent(1, 1, None);
        let mut brief = code(&req, 423);
        brief.push_header("Min-Expires", "1200".into());
        regs.on_response(1, &brief, None, t0);
        assert_eq!(
            regs.due(t0),
            vec![Due {
                trunk: 1,
                expires: 1200
            }]
        );
        regs.sent(1, 2, None);
        regs.on_response(2, &ok(&req, &[]), None, t0);
        assert_eq!(regs.next_attempt(1), Some(t0 + Duration::from_secs(600)));
        assert_eq!(regs.unregister_all(t0), vec![1]);
        assert_eq!(regs.poll_timeout(), None);
        let (unreg, _) = regs.request(&config, 1, 0, 0).unwrap();
        assert_eq!(unreg.header("Expires"), Some("0"));
        regs.sent(1, 3, None);
        assert!(regs.unregistering());
        assert_eq!(regs.state(1), Some(State::Unregistering));
        regs.on_response(3, &ok(&unreg, &[]), None, t0);
        assert!(!regs.unregistering());
        assert_eq!(regs.state(1), Some(State::Unregistered));
        // Never registered: nothing to remove.
        let mut fresh = Registrations::new(&config, t0);
        assert!(fresh.unregister_all(t0).is_empty());
    }
}
