//! HTTP digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760): MD5 and SHA-256 (and
//! their `-sess` variants), `qop=auth` with nc/cnonce, and the legacy RFC 2069 form without qop.
//!
//! Pure functions and values only: parsing challenges and credentials, computing responses,
//! building header values, and the stateless nonces mediagate issues when it challenges a trunk
//! (`challenge_inbound`). No clock is read: times are arguments.

use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// A digest hash algorithm (RFC 8760 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex(&Sha256::digest(data.as_bytes())),
        }
    }

    /// The algorithm token, without `-sess`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses `MD5`, `SHA-256` and their `-sess` forms (case-insensitive); `None` for others.
    fn parse(token: &str) -> Option<(Algorithm, bool)> {
        let t = token.to_ascii_uppercase();
        let (base, sess) = match t.strip_suffix("-SESS") {
            Some(b) => (b.to_string(), true),
            None => (t, false),
        };
        match base.as_str() {
            "MD5" => Some((Algorithm::Md5, sess)),
            "SHA-256" => Some((Algorithm::Sha256, sess)),
            _ => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The `name=value` parameters of a `Digest` header value; `None` when the scheme is not
/// Digest or the syntax is broken. Quoted values are unescaped; names are lower-cased.
pub fn params(value: &str) -> Option<Vec<(String, String)>> {
    let value = value.trim_start();
    let (scheme, mut rest) = value.split_at(value.find(char::is_whitespace)?);
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            return Some(out);
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_ascii_lowercase();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ',') {
            return None;
        }
        rest = rest[eq + 1..].trim_start();
        let val;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            val = v;
            rest = &quoted[end?..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            val = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        out.push((name, val));
    }
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A `WWW-Authenticate` or `Proxy-Authenticate` challenge mediagate can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    pub sess: bool,
    /// The server offered `qop=auth` (answered with nc/cnonce); false: legacy RFC 2069 form.
    pub qop_auth: bool,
    pub stale: bool,
}

impl Challenge {
    /// Parses one challenge; `None` when it is not Digest, lacks realm or nonce, names an
    /// unsupported algorithm, or offers only `qop` values other than `auth` (e.g. `auth-int`).
    pub fn parse(value: &str) -> Option<Challenge> {
        let p = params(value)?;
        let (algorithm, sess) = match get(&p, "algorithm") {
            None => (Algorithm::Md5, false),
            Some(a) => Algorithm::parse(a)?,
        };
        let qop_auth = match get(&p, "qop") {
            None => false,
            Some(q) => {
                if !q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) {
                    return None;
                }
                true
            }
        };
        Some(Challenge {
            realm: get(&p, "realm")?.to_string(),
            nonce: get(&p, "nonce")?.to_string(),
            opaque: get(&p, "opaque").map(str::to_string),
            algorithm,
            sess,
            qop_auth,
            stale: get(&p, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The challenge to answer among several (RFC 8760 §2.4: the client uses the first one it
    /// supports in the server's order of preference; SHA-256 beats MD5 when both are offered
    /// for a realm). `realm`, when set, restricts the choice to that realm.
    pub fn choose<'a>(
        values: impl IntoIterator<Item = &'a str>,
        realm: Option<&str>,
    ) -> Option<Challenge> {
        let mut best: Option<Challenge> = None;
        for c in values.into_iter().filter_map(Challenge::parse) {
            if realm.is_some_and(|r| r != c.realm) {
                continue;
            }
            let better = match &best {
                None => true,
                Some(b) => b.algorithm == Algorithm::Md5 && c.algorithm == Algorithm::Sha256,
            };
            if better {
                best = Some(c);
            }
        }
        best
    }
}

/// The inputs of one digest response.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub algorithm: Algorithm,
    pub sess: bool,
    pub username: &'a str,
    pub realm: &'a str,
    pub password: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub nonce: &'a str,
    /// `(nc, cnonce)` for `qop=auth`; `None` for the RFC 2069 form (no cnonce in HA1 either).
    pub qop: Option<(&'a str, &'a str)>,
}

/// The `response` value (RFC 7616 §3.4.1, RFC 2617 §3.2.2.1).
pub fn response(i: &Input) -> String {
    let h = |s: &str| i.algorithm.hash(s);
    let mut ha1 = h(&format!("{}:{}:{}", i.username, i.realm, i.password));
    if i.sess {
        let cnonce = i.qop.map_or("", |(_, c)| c);
        ha1 = h(&format!("{ha1}:{}:{cnonce}", i.nonce));
    }
    let ha2 = h(&format!("{}:{}", i.method, i.uri));
    match i.qop {
        Some((nc, cnonce)) => h(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", i.nonce)),
        None => h(&format!("{ha1}:{}:{ha2}", i.nonce)),
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The `Authorization` / `Proxy-Authorization` value answering `challenge` for a request with
/// `method` and Request-URI `uri`. `cnonce` and `nc` are used when the challenge offers
/// `qop=auth`.
pub fn authorization(
    challenge: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let nc = format!("{nc:08x}");
    let input = Input {
        algorithm: challenge.algorithm,
        sess: challenge.sess,
        username,
        realm: &challenge.realm,
        password,
        method,
        uri,
        nonce: &challenge.nonce,
        qop: challenge.qop_auth.then_some((nc.as_str(), cnonce)),
    };
    let mut v = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{}\", algorithm={}{}",
        quote(username),
        quote(&challenge.realm),
        quote(&challenge.nonce),
        quote(uri),
        response(&input),
        challenge.algorithm.name(),
        if challenge.sess { "-sess" } else { "" },
    );
    if challenge.qop_auth {
        v.push_str(&format!(", cnonce={}, qop=auth, nc={nc}", quote(cnonce)));
    }
    if let Some(o) = &challenge.opaque {
        v.push_str(&format!(", opaque={}", quote(o)));
    }
    v
}

/// Credentials a client sent (`Authorization` / `Proxy-Authorization`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub sess: bool,
    /// `(nc, cnonce)` when the client used `qop=auth`.
    pub qop: Option<(String, String)>,
}

impl Credentials {
    /// Parses credentials; `None` when not Digest, incomplete, or of an unsupported algorithm
    /// or qop.
    pub fn parse(value: &str) -> Option<Credentials> {
        let p = params(value)?;
        let (algorithm, sess) = match get(&p, "algorithm") {
            None => (Algorithm::Md5, false),
            Some(a) => Algorithm::parse(a)?,
        };
        let qop = match get(&p, "qop") {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                Some((get(&p, "nc")?.to_string(), get(&p, "cnonce")?.to_string()))
            }
            Some(_) => return None,
        };
        Some(Credentials {
            username: get(&p, "username")?.to_string(),
            realm: get(&p, "realm")?.to_string(),
            nonce: get(&p, "nonce")?.to_string(),
            uri: get(&p, "uri")?.to_string(),
            response: get(&p, "response")?.to_ascii_lowercase(),
            algorithm,
            sess,
            qop,
        })
    }

    /// Whether the response proves knowledge of `password` for a request with `method`.
    pub fn verify(&self, method: &str, password: &str) -> bool {
        let expected = response(&Input {
            algorithm: self.algorithm,
            sess: self.sess,
            username: &self.username,
            realm: &self.realm,
            password,
            method,
            uri: &self.uri,
            nonce: &self.nonce,
            qop: self.qop.as_ref().map(|(n, c)| (n.as_str(), c.as_str())),
        });
        constant_time_eq(expected.as_bytes(), self.response.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A challenge header value mediagate sends (`qop="auth"`).
pub fn challenge(realm: &str, nonce: &str, algorithm: Algorithm, stale: bool) -> String {
    format!(
        "Digest realm={}, nonce={}, algorithm={}, qop=\"auth\"{}",
        quote(realm),
        quote(nonce),
        algorithm.name(),
        if stale { ", stale=TRUE" } else { "" }
    )
}

/// What a nonce presented by a client is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Issued by us but expired: answer 401 with `stale=TRUE` when the response is right.
    Stale,
    Invalid,
}

/// Issues and checks stateless nonces: `TIME-MAC`, where TIME is the issue time in seconds
/// (hexadecimal, on the caller's clock) and MAC an HMAC-SHA-256 over the time and a binding
/// string (the realm and the client's address), keyed by a secret of this process.
#[derive(Clone)]
pub struct NonceKey {
    secret: [u8; 32],
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    pub fn new(secret: [u8; 32]) -> Self {
        NonceKey { secret }
    }

    fn mac(&self, time: u64, bind: &str) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        m.update(&time.to_be_bytes());
        m.update(bind.as_bytes());
        hex(&m.finalize().into_bytes()[..16])
    }

    /// A nonce issued at `now_s` seconds for `bind`.
    pub fn issue(&self, now_s: u64, bind: &str) -> String {
        format!("{now_s:x}-{}", self.mac(now_s, bind))
    }

    /// Checks a nonce against `bind` at `now_s`; nonces older than `max_age_s` are stale.
    pub fn check(&self, nonce: &str, bind: &str, now_s: u64, max_age_s: u64) -> NonceCheck {
        let Some((time, mac)) = nonce.split_once('-') else {
            return NonceCheck::Invalid;
        };
        let Ok(time) = u64::from_str_radix(time, 16) else {
            return NonceCheck::Invalid;
        };
        if time > now_s || !constant_time_eq(self.mac(time, bind).as_bytes(), mac.as_bytes()) {
            return NonceCheck::Invalid;
        }
        if now_s - time > max_age_s {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 §3.9.1 (MD5 and SHA-256, qop=auth).
    const RFC7616: &str = r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
    const CNONCE_7616: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    #[test]
    fn rfc7616_md5_vector() {
        let c = Challenge::parse(RFC7616).unwrap();
        assert!(c.qop_auth && c.algorithm == Algorithm::Md5);
        let v = authorization(
            &c,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            CNONCE_7616,
            1,
        );
        assert!(
            v.contains(r#"response="8ca523f5e9506fed4657c9700eebdbec""#),
            "{v}"
        );
        assert!(v.contains("nc=00000001") && v.contains("qop=auth"));
        assert!(v.contains(r#"opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#));
    }

    #[test]
    fn rfc7616_sha256_vector() {
        let c = Challenge::parse(&RFC7616.replace("MD5", "SHA-256")).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        let v = authorization(
            &c,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            CNONCE_7616,
            1,
        );
        assert!(
            v.contains(
                r#"response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1""#
            ),
            "{v}"
        );
        // And the server side accepts what the client built.
        let creds = Credentials::parse(&v).unwrap();
        assert!(creds.verify("GET", "Circle of Life"));
        assert!(!creds.verify("GET", "circle of life"));
        assert!(!creds.verify("POST", "Circle of Life"));
    }

    /// RFC 2617 §3.5 (MD5, qop=auth).
    #[test]
    fn rfc2617_vector() {
        let r = response(&Input {
            algorithm: Algorithm::Md5,
            sess: false,
            username: "Mufasa",
            realm: "testrealm@host.com",
            password: "Circle Of Life",
            method: "GET",
            uri: "/dir/index.html",
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop: Some(("00000001", "0a4f113b")),
        });
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    /// RFC 2069 form (no qop) and SHA-256 with a SIP method, against Python's hashlib.
    #[test]
    fn legacy_md5_and_sip_sha256() {
        let c = Challenge::parse(
            r#"Digest realm="atlanta.com", nonce="84a4cc6f3082121f32b42a2187831a9e""#,
        )
        .unwrap();
        assert!(!c.qop_auth && c.algorithm == Algorithm::Md5);
        let v = authorization(
            &c,
            "alice",
            "secret",
            "INVITE",
            "sip:bob@biloxi.com",
            "x",
            1,
        );
        assert!(
            v.contains(r#"response="dd50dd6ea935bc8bd2d6401f00755476""#),
            "{v}"
        );
        assert!(!v.contains("cnonce") && !v.contains("nc="));
        let r = response(&Input {
            algorithm: Algorithm::Sha256,
            sess: false,
            username: "alice",
            realm: "atlanta.com",
            password: "secret",
            method: "REGISTER",
            uri: "sip:atlanta.com",
            nonce: "abc",
            qop: Some(("00000002", "xyz")),
        });
        assert_eq!(
            r,
            "4abe9d639d0e5cd5184cfc6d238bbb21a42ad957fbe2df7276a335bcdc89d393"
        );
    }

    #[test]
    fn choice_prefers_sha256_and_honours_realm() {
        let md5 = r#"Digest realm="a", nonce="1", qop="auth""#;
        let sha = r#"Digest realm="a", nonce="2", qop="auth", algorithm=SHA-256"#;
        let other = r#"Digest realm="b", nonce="3", algorithm=SHA-256"#;
        let c = Challenge::choose([md5, sha, other], None).unwrap();
        assert_eq!(c.nonce, "2");
        let c = Challenge::choose([md5, other], Some("a")).unwrap();
        assert_eq!(c.nonce, "1");
        assert!(Challenge::choose([md5], Some("z")).is_none());
        // Unsupported algorithm or qop, other schemes, broken syntax.
        assert!(
            Challenge::parse(r#"Digest realm="a", nonce="1", algorithm=SHA-512-256"#).is_none()
        );
        assert!(Challenge::parse(r#"Digest realm="a", nonce="1", qop="auth-int""#).is_none());
        assert!(Challenge::parse(r#"Basic realm="a""#).is_none());
        assert!(Challenge::parse(r#"Digest realm="a, nonce="1"#).is_none());
        assert!(Challenge::parse("Digest").is_none());
    }

    #[test]
    fn quoted_values_are_escaped_and_unescaped() {
        let c = Challenge::parse(r#"Digest realm="a\"b", nonce="n,1", stale=TRUE"#).unwrap();
        assert_eq!(
            (c.realm.as_str(), c.nonce.as_str(), c.stale),
            ("a\"b", "n,1", true)
        );
        let v = authorization(&c, "u", "p", "BYE", "sip:x", "c", 1);
        let creds = Credentials::parse(&v).unwrap();
        assert_eq!(creds.realm, "a\"b");
        assert!(creds.verify("BYE", "p"));
    }

    #[test]
    fn sess_variant_round_trips() {
        let c =
            Challenge::parse(r#"Digest realm="r", nonce="n", qop="auth", algorithm=SHA-256-sess"#)
                .unwrap();
        assert!(c.sess);
        let v = authorization(&c, "u", "p", "INVITE", "sip:1@h", "cn", 7);
        assert!(v.contains("algorithm=SHA-256-sess") && v.contains("nc=00000007"));
        assert!(Credentials::parse(&v).unwrap().verify("INVITE", "p"));
    }

    #[test]
    fn nonces_expire_and_bind() {
        let k = NonceKey::new([7; 32]);
        let n = k.issue(1000, "realm|10.0.0.1");
        assert_eq!(k.check(&n, "realm|10.0.0.1", 1010, 300), NonceCheck::Valid);
        assert_eq!(k.check(&n, "realm|10.0.0.1", 1301, 300), NonceCheck::Stale);
        assert_eq!(
            k.check(&n, "realm|10.0.0.2", 1010, 300),
            NonceCheck::Invalid
        );
        assert_eq!(k.check(&n, "realm|10.0.0.1", 999, 300), NonceCheck::Invalid);
        let other = NonceKey::new([8; 32]);
        assert_eq!(
            other.check(&n, "realm|10.0.0.1", 1010, 300),
            NonceCheck::Invalid
        );
        for bad in ["", "-", "zz-00", "3e8", "3e8-"] {
            assert_eq!(
                k.check(bad, "realm|10.0.0.1", 1010, 300),
                NonceCheck::Invalid
            );
        }
    }
}
