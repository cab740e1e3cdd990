//! Digest authentication around the B2BUA, sans-IO.
//!
//! [`ClientAuth`] answers challenges (401/407) from trunks that have credentials: it keeps a copy
//! of each request mediagate sent toward such a trunk until the request's final response, and on
//! a challenge it hands back the same request with `Authorization` / `Proxy-Authorization` and
//! the CSeq bumped (same Call-ID, tags and body; the transaction layer adds a new Via branch).
//! One retry per request, plus one more only when the server says the nonce was `stale`.
//!
//! [`Inbound`] challenges new INVITEs from trunks with `challenge_inbound = true`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::digest::{self, Algorithm, Challenge, NonceCheck, NonceKey};
use super::header;
use super::message::{Message, Method, StartLine};
use super::transaction::{Target, TxnId};
use crate::config::Config;

/// A request kept until its final response, in case it is challenged.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub trunk: usize,
    /// The request as sent, without its Via.
    pub request: Message,
    pub target: Target,
    /// Authenticated resends of this request so far.
    retries: u8,
}

/// The authenticated resend of a challenged request.
#[derive(Debug, Clone)]
pub struct Retry {
    pub tracked: Tracked,
    /// The resend's CSeq number.
    pub cseq: u32,
}

/// What to do with a 401/407.
#[derive(Debug)]
pub enum OnChallenge {
    /// Not a request of a trunk with credentials: handle the response as any other.
    NotOurs,
    /// Send this instead, as a new client transaction, and [`ClientAuth::resume`] it.
    Retry(Retry),
    /// A trunk with credentials that rejected them (second challenge) or challenged in a way
    /// mediagate cannot answer (other realm, unknown algorithm): a failure of the trunk.
    Failed(String),
}

/// Answers trunks' challenges.
#[derive(Debug, Default)]
pub struct ClientAuth {
    sent: HashMap<TxnId, Tracked>,
}

impl ClientAuth {
    /// Whether requests toward `trunk` need tracking (it has credentials).
    pub fn wants(config: &Config, trunk: usize) -> bool {
        let id = &config.trunks[trunk].identity;
        id.auth.is_some() || id.register.is_some()
    }

    /// Remembers `request` (without Via) sent as `txn` toward `trunk`.
    pub fn track(&mut self, txn: TxnId, trunk: usize, request: Message, target: Target) {
        self.sent.insert(
            txn,
            Tracked {
                trunk,
                request,
                target,
                retries: 0,
            },
        );
    }

    /// Remembers the resend of a challenged request, sent as `txn`.
    pub fn resume(&mut self, txn: TxnId, retry: Retry) {
        self.sent.insert(txn, retry.tracked);
    }

    /// The request ended (final response other than a challenge, timeout, abandon).
    pub fn forget(&mut self, txn: TxnId) {
        self.sent.remove(&txn);
    }

    /// Requests being tracked (for tests and leak checks).
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// A 401 or 407 arrived for `txn`.
    pub fn on_challenge(&mut self, config: &Config, txn: TxnId, resp: &Message) -> OnChallenge {
        let Some(mut tracked) = self.sent.remove(&txn) else {
            return OnChallenge::NotOurs;
        };
        let code = resp.code().unwrap_or(0);
        let (challenge_header, answer_header) = if code == 407 {
            ("Proxy-Authenticate", "Proxy-Authorization")
        } else {
            ("WWW-Authenticate", "Authorization")
        };
        let method = tracked.request.method().cloned().unwrap_or(Method::Options);
        let identity = &config.trunks[tracked.trunk].identity;
        let Some((user, password, realm)) = identity.credentials_for(method == Method::Register)
        else {
            return OnChallenge::NotOurs;
        };
        let Some(challenge) = Challenge::choose(resp.headers_named(challenge_header), realm) else {
            return OnChallenge::Failed(format!(
                "{code} with no {challenge_header} mediagate can answer{}",
                realm.map_or(String::new(), |r| format!(" for realm {r}"))
            ));
        };
        if tracked.retries >= 2 || (tracked.retries == 1 && !challenge.stale) {
            return OnChallenge::Failed(format!(
                "{code}: credentials rejected (realm {})",
                challenge.realm
            ));
        }
        let Some((cseq, _)) = header::cseq(&tracked.request) else {
            return OnChallenge::NotOurs;
        };
        let StartLine::Request { uri, .. } = &tracked.request.start else {
            return OnChallenge::NotOurs;
        };
        let value = digest::authorization(
            &challenge,
            user,
            password.expose(),
            method.as_str(),
            uri,
            &super::dialog::token(),
            1,
        );
        let req = &mut tracked.request;
        req.remove_headers("Authorization");
        req.remove_headers("Proxy-Authorization");
        req.push_header(answer_header, value);
        let cseq = cseq + 1;
        req.set_header("CSeq", format!("{cseq} {}", method.as_str()));
        tracked.retries += 1;
        OnChallenge::Retry(Retry { tracked, cseq })
    }
}

/// How long a nonce of mediagate's own challenges stays fresh.
pub const NONCE_LIFETIME_S: u64 = 300;
/// Realm of mediagate's challenges when the trunk's `auth` names none.
pub const DEFAULT_REALM: &str = "mediagate";

/// The verdict on a new INVITE from a trunk with `challenge_inbound = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Proceed with the call.
    Accept,
    /// Answer 401 with these `WWW-Authenticate` values.
    Challenge(Vec<String>),
    /// Wrong user or password: 403.
    Forbidden,
}

/// mediagate's challenges toward trunks: stateless nonces bound to the realm and the source
/// address, valid [`NONCE_LIFETIME_S`].
#[derive(Debug)]
pub struct Inbound {
    key: NonceKey,
    /// The clock origin of nonce times.
    epoch: Instant,
}

impl Inbound {
    pub fn new(secret: [u8; 32], epoch: Instant) -> Self {
        Inbound {
            key: NonceKey::new(secret),
            epoch,
        }
    }

    /// A secret from the process's random hash keys (seeded by the OS), without another
    /// dependency.
    pub fn random_secret() -> [u8; 32] {
        use std::hash::{BuildHasher, Hasher};
        let mut out = [0u8; 32];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u64(fastrand::u64(..));
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        out
    }

    fn bind(realm: &str, source: IpAddr) -> String {
        format!("{realm}|{source}")
    }

    /// Checks `invite` from `source` on `trunk` (which has `challenge_inbound`).
    pub fn check(
        &self,
        config: &Config,
        trunk: usize,
        invite: &Message,
        source: IpAddr,
        now: Instant,
    ) -> Verdict {
        let Some(auth) = config.trunks[trunk].identity.auth.as_ref() else {
            return Verdict::Accept;
        };
        let realm = auth.realm.as_deref().unwrap_or(DEFAULT_REALM);
        let now_s = now.saturating_duration_since(self.epoch).as_secs();
        let bind = Self::bind(realm, source);
        let challenge = |stale| {
            let nonce = self.key.issue(now_s, &bind);
            // SHA-256 first (RFC 8760 §2.4: preferred first); MD5 for older clients.
            vec![
                digest::challenge(realm, &nonce, Algorithm::Sha256, stale),
                digest::challenge(realm, &nonce, Algorithm::Md5, stale),
            ]
        };
        let creds = invite
            .headers_named("Authorization")
            .filter_map(digest::Credentials::parse)
            .find(|c| c.realm == realm);
        let Some(creds) = creds else {
            return Verdict::Challenge(challenge(false));
        };
        let uri_ok = invite.uri() == Some(creds.uri.as_str());
        let nonce = self.key.check(&creds.nonce, &bind, now_s, NONCE_LIFETIME_S);
        let right =
            uri_ok && creds.username == auth.user && creds.verify("INVITE", auth.password.expose());
        match (nonce, right) {
            (NonceCheck::Valid, true) => Verdict::Accept,
            (NonceCheck::Stale, true) => Verdict::Challenge(challenge(true)),
            // Not our nonce (another process, a restart): challenge afresh.
            (NonceCheck::Invalid, _) => Verdict::Challenge(challenge(false)),
            (_, false) => Verdict::Forbidden,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;
    use std::time::Duration;

    const CONFIG: &str = r#"
[sip]
listen = ["udp:10.0.0.1:5060"]
[media]
ports = "30000-30099"
[[trunk]]
name = "itsp"
kind = "itsp"
peers = ["udp:10.0.0.2:5060"]
local = "udp:10.0.0.1:5060"
auth = { user = "acme", password = "pw", realm = "r1" }
challenge_inbound = true
"#;

    fn config() -> Config {
        crate::config::parse("t.toml", CONFIG).unwrap()
    }

    fn invite() -> Message {
        Message::parse_datagram(
            b"INVITE sip:1@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\n\
              From: <sip:a@h>;tag=f\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 5 INVITE\r\n\r\n",
        )
        .unwrap()
    }

    fn challenge_resp(code: u16, values: &[&str]) -> Message {
        let mut r = super::super::dialog::response_to(&invite(), code, "X", Some("t"));
        let name = if code == 407 {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        for v in values {
            r.push_header(name, v.to_string());
        }
        r
    }

    fn target() -> Target {
        Target {
            transport: Transport::Udp,
            remote: "10.0.0.2:5060".parse().unwrap(),
            local: "10.0.0.1:5060".parse().unwrap(),
        }
    }

    #[test]
    fn one_retry_per_challenge_and_one_more_when_stale() {
        let c = config();
        let mut a = ClientAuth::default();
        a.track(1, 0, invite(), target());
        let resp = challenge_resp(407, &[r#"Digest realm="r1", nonce="n1", qop="auth""#]);
        let OnChallenge::Retry(retry) = a.on_challenge(&c, 1, &resp) else {
            panic!()
        };
        assert_eq!(retry.cseq, 6);
        let req = &retry.tracked.request;
        assert_eq!(req.header("CSeq"), Some("6 INVITE"));
        let creds = digest::Credentials::parse(req.header("Proxy-Authorization").unwrap()).unwrap();
        assert!(creds.verify("INVITE", "pw") && creds.uri == "sip:1@10.0.0.1");
        a.resume(2, retry);
        // Not stale: the second challenge is a failure.
        assert!(matches!(
            a.on_challenge(&c, 2, &resp),
            OnChallenge::Failed(_)
        ));
        assert!(a.is_empty());
        // Stale: one more.
        a.track(3, 0, invite(), target());
        let OnChallenge::Retry(r) = a.on_challenge(&c, 3, &resp) else {
            panic!()
        };
        a.resume(4, r);
        let stale = challenge_resp(
            401,
            &[r#"Digest realm="r1", nonce="n2", qop="auth", stale=true"#],
        );
        let OnChallenge::Retry(r) = a.on_challenge(&c, 4, &stale) else {
            panic!()
        };
        assert_eq!(r.cseq, 7);
        assert_eq!(
            r.tracked
                .request
                .headers_named("Proxy-Authorization")
                .count(),
            0
        );
        assert!(r.tracked.request.header("Authorization").is_some());
        a.resume(5, r);
        assert!(matches!(
            a.on_challenge(&c, 5, &stale),
            OnChallenge::Failed(_)
        ));
        // Other realm, untracked.
        a.track(6, 0, invite(), target());
        let other = challenge_resp(401, &[r#"Digest realm="r2", nonce="n""#]);
        assert!(matches!(
            a.on_challenge(&c, 6, &other),
            OnChallenge::Failed(_)
        ));
        assert!(matches!(
            a.on_challenge(&c, 99, &other),
            OnChallenge::NotOurs
        ));
    }

    #[test]
    fn inbound_challenge_accepts_right_and_forbids_wrong_credentials() {
        let c = config();
        let t0 = Instant::now();
        let inbound = Inbound::new(Inbound::random_secret(), t0);
        let src: IpAddr = "10.0.0.2".parse().unwrap();
        let Verdict::Challenge(values) = inbound.check(&c, 0, &invite(), src, t0) else {
            panic!()
        };
        assert_eq!(values.len(), 2);
        assert!(values[0].contains("SHA-256") && values[1].contains("MD5"));
        let answer = |password: &str, user: &str, v: &str| {
            let ch = Challenge::parse(v).unwrap();
            let mut inv = invite();
            inv.push_header(
                "Authorization",
                digest::authorization(&ch, user, password, "INVITE", "sip:1@10.0.0.1", "cn", 1),
            );
            inv
        };
        let now = t0 + Duration::from_secs(10);
        assert_eq!(
            inbound.check(&c, 0, &answer("pw", "acme", &values[1]), src, now),
            Verdict::Accept
        );
        assert_eq!(
            inbound.check(&c, 0, &answer("pw", "acme", &values[0]), src, now),
            Verdict::Accept
        );
        assert_eq!(
            inbound.check(&c, 0, &answer("bad", "acme", &values[0]), src, now),
            Verdict::Forbidden
        );
        assert_eq!(
            inbound.check(&c, 0, &answer("pw", "eve", &values[0]), src, now),
            Verdict::Forbidden
        );
        // From another address the nonce is not ours: a fresh challenge.
        let elsewhere: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(matches!(
            inbound.check(&c, 0, &answer("pw", "acme", &values[0]), elsewhere, now),
            Verdict::Challenge(_)
        ));
        // Expired nonce with the right password: stale challenge.
        let late = t0 + Duration::from_secs(NONCE_LIFETIME_S + 5);
        let Verdict::Challenge(v) =
            inbound.check(&c, 0, &answer("pw", "acme", &values[0]), src, late)
        else {
            panic!()
        };
        assert!(v[0].contains("stale=TRUE"));
    }
}
