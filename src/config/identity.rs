//! A trunk's identity keys: digest credentials (`auth`), the inbound challenge
//! (`challenge_inbound`) and registration to the ITSP (`register`).
//!
//! A child module of `config` so that these keys share its file:line:key errors. Passwords are
//! held in [`Secret`], whose `Debug` never prints them, so neither logs nor `/status` can.

use serde::Deserialize;

use super::{ConfigError, Seg};
use crate::config::routing::ErrAt;

/// A password: printed as `***` by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The password itself, for digest computation only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `trunk.auth`: the credentials mediagate answers the trunk's challenges with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
    /// Answer only challenges of this realm (any realm when absent). It is also the realm of
    /// mediagate's own challenges with `challenge_inbound`.
    pub realm: Option<String>,
}

/// `trunk.register`: registration of `sip:user@domain` with the trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub user: String,
    pub password: Secret,
    pub domain: String,
    /// Expiry asked for, in seconds; the registrar's answer decides.
    pub expires: u32,
}

/// A trunk's identity settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub auth: Option<Credentials>,
    /// New INVITEs from the trunk are challenged (401) and checked against `auth`.
    pub challenge_inbound: bool,
    pub register: Option<Register>,
}

impl Identity {
    /// Credentials for a request of `method` toward the trunk: REGISTER uses `register`'s
    /// (then `auth`'s), everything else `auth`'s (then `register`'s). The realm filter is
    /// `auth.realm` in both cases.
    pub fn credentials_for(&self, register: bool) -> Option<(&str, &Secret, Option<&str>)> {
        let realm = self.auth.as_ref().and_then(|a| a.realm.as_deref());
        let from_auth = self.auth.as_ref().map(|a| (a.user.as_str(), &a.password));
        let from_reg = self
            .register
            .as_ref()
            .map(|r| (r.user.as_str(), &r.password));
        let (user, password) = if register {
            from_reg.or(from_auth)?
        } else {
            from_auth.or(from_reg)?
        };
        Some((user, password, realm))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    user: String,
    password: Secret,
    realm: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegister {
    user: String,
    password: Secret,
    domain: String,
    #[serde(default = "default_expires")]
    expires: u32,
}

fn default_expires() -> u32 {
    3600
}

/// Shortest and longest `register.expires`.
pub const EXPIRES_RANGE: std::ops::RangeInclusive<u32> = 60..=86_400;

/// The identity keys of one `[[trunk]]`, borrowed from its raw table.
pub(super) struct RawIdentity<'a> {
    pub auth: Option<&'a RawAuth>,
    pub challenge_inbound: bool,
    pub register: Option<&'a RawRegister>,
}

fn join<'a>(at: &[Seg<'a>], rest: &[Seg<'a>]) -> Vec<Seg<'a>> {
    at.iter().chain(rest).copied().collect()
}

/// A user name or realm goes into quoted header parameters and URIs: printable ASCII without
/// quotes, backslashes, spaces or URI delimiters.
fn check_token(v: &str, what: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !c.is_ascii_graphic() || "\"\\<>@;:,?".contains(*c))
    {
        return Err(format!("{what} must not contain {c:?}"));
    }
    Ok(())
}

fn check_password(p: &Secret) -> Result<(), String> {
    if p.0.is_empty() {
        return Err("password must not be empty".into());
    }
    if p.0.chars().any(|c| c.is_control()) {
        return Err("password must not contain control characters".into());
    }
    Ok(())
}

/// Validates the identity keys of trunk `at` (`[trunk, i]`).
pub(super) fn identity<'a>(
    raw: RawIdentity<'a>,
    at: &[Seg<'a>],
    err: ErrAt,
) -> Result<Identity, ConfigError> {
    let auth = match raw.auth {
        None => None,
        Some(a) => {
            let key = |k| join(at, &[Seg::Key("auth"), Seg::Key(k)]);
            check_token(&a.user, "user").map_err(|m| err(&key("user"), m))?;
            check_password(&a.password).map_err(|m| err(&key("password"), m))?;
            if let Some(r) = &a.realm {
                // A realm may hold '@' and ':' (e.g. `sip.example.com`, `user@host`).
                if r.is_empty()
                    || r.chars()
                        .any(|c| !c.is_ascii_graphic() || c == '"' || c == '\\')
                {
                    return Err(err(
                        &key("realm"),
                        "realm must be non-empty printable ASCII without quotes, backslashes or spaces".into(),
                    ));
                }
            }
            Some(Credentials {
                user: a.user.clone(),
                password: a.password.clone(),
                realm: a.realm.clone(),
            })
        }
    };
    if raw.challenge_inbound && auth.is_none() {
        return Err(err(
            &join(at, &[Seg::Key("challenge_inbound")]),
            "needs `auth` (the user and password the trunk must present)".into(),
        ));
    }
    let register = match raw.register {
        None => None,
        Some(r) => {
            let key = |k| join(at, &[Seg::Key("register"), Seg::Key(k)]);
            check_token(&r.user, "user").map_err(|m| err(&key("user"), m))?;
            check_password(&r.password).map_err(|m| err(&key("password"), m))?;
            check_token(&r.domain, "domain")
                .or_else(|e| {
                    // host:port is a valid domain part.
                    let colon_ok = r.domain.matches(':').count() == 1
                        && check_token(&r.domain.replace(':', ""), "domain").is_ok();
                    if colon_ok {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|m| err(&key("domain"), m))?;
            if !EXPIRES_RANGE.contains(&r.expires) {
                return Err(err(
                    &key("expires"),
                    format!(
                        "must be {} to {} seconds",
                        EXPIRES_RANGE.start(),
                        EXPIRES_RANGE.end()
                    ),
                ));
            }
            Some(Register {
                user: r.user.clone(),
                password: r.password.clone(),
                domain: r.domain.clone(),
                expires: r.expires,
            })
        }
    };
    Ok(Identity {
        auth,
        challenge_inbound: raw.challenge_inbound,
        register,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const BASE: &str = r#"
[sip]
listen = ["udp:10.0.0.1:5060"]
[media]
ports = "30000-30099"
[[trunk]]
name = "itsp"
kind = "itsp"
peers = ["udp:10.0.0.2:5060"]
local = "udp:10.0.0.1:5060"
auth = { user = "acme", password = "s3cret!", realm = "sip.example.net" }
challenge_inbound = true
register = { user = "4930123", password = "r3g", domain = "sip.example.net", expires = 600 }
"#;

    #[test]
    fn every_key_parses_and_passwords_do_not_print() {
        let c = parse("a.toml", BASE).unwrap();
        let id = &c.trunks[0].identity;
        let auth = id.auth.as_ref().unwrap();
        assert_eq!(auth.user, "acme");
        assert_eq!(auth.password.expose(), "s3cret!");
        assert_eq!(auth.realm.as_deref(), Some("sip.example.net"));
        assert!(id.challenge_inbound);
        let r = id.register.as_ref().unwrap();
        assert_eq!(
            (r.user.as_str(), r.domain.as_str(), r.expires),
            ("4930123", "sip.example.net", 600)
        );
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("r3g"),
            "{debug}"
        );
        // Credentials: REGISTER prefers register's, other requests auth's.
        assert_eq!(id.credentials_for(true).unwrap().0, "4930123");
        assert_eq!(id.credentials_for(false).unwrap().0, "acme");
        // Defaults: no identity, expires 3600.
        let c = parse(
            "a.toml",
            &BASE
                .replace("challenge_inbound = true\n", "")
                .replace(", expires = 600", ""),
        )
        .unwrap();
        assert_eq!(
            c.trunks[0].identity.register.as_ref().unwrap().expires,
            3600
        );
        assert!(!c.trunks[0].identity.challenge_inbound);
    }

    #[test]
    fn bad_values_are_rejected_with_line_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            (r#"user = "acme""#, r#"user = """#, "trunk[0].auth.user"),
            (r#"user = "acme""#, r#"user = "a b""#, "trunk[0].auth.user"),
            (
                r#"password = "s3cret!""#,
                r#"password = """#,
                "trunk[0].auth.password",
            ),
            (
                r#"realm = "sip.example.net" }"#,
                r#"realm = "" }"#,
                "trunk[0].auth.realm",
            ),
            (
                r#"auth = { user = "acme", password = "s3cret!", realm = "sip.example.net" }"#,
                "",
                "trunk[0].challenge_inbound",
            ),
            (
                r#"user = "4930123""#,
                r#"user = "49<1>""#,
                "trunk[0].register.user",
            ),
            (
                r#"password = "r3g""#,
                r#"password = "a\nb""#,
                "trunk[0].register.password",
            ),
            (
                r#"domain = "sip.example.net", expires"#,
                r#"domain = "a b", expires"#,
                "trunk[0].register.domain",
            ),
            ("expires = 600", "expires = 10", "trunk[0].register.expires"),
            (
                "expires = 600",
                "expires = 600, proxy = 1",
                "trunk[0].register.proxy",
            ),
            (
                r#"realm = "sip.example.net" }"#,
                r#"realm = "x", nonce = 1 }"#,
                "trunk[0].auth.nonce",
            ),
        ];
        for (old, new, key) in cases {
            assert!(BASE.contains(old), "{old}");
            let text = BASE.replacen(old, new, 1);
            let e = parse("a.toml", &text).unwrap_err();
            let line = text
                .lines()
                .position(|l| l.contains(&key.rsplit('.').next().unwrap().replace("trunk[0]", "")))
                .map(|l| l + 1);
            assert!(
                e.key.starts_with(key) || e.key == *key,
                "{old} -> {new}: {e}"
            );
            assert!(!e.to_string().contains("s3cret"), "{e}");
            // The line is the key's own line (or its table's, for a missing key).
            assert!(
                e.line >= 11 && e.line <= 13,
                "{old} -> {new}: {e} ({line:?})"
            );
        }
        let e = parse("a.toml", &BASE.replace(", realm = \"sip.example.net\"", "")).unwrap();
        assert!(e.trunks[0].identity.auth.as_ref().unwrap().realm.is_none());
        let ok = BASE.replace(
            r#"domain = "sip.example.net""#,
            r#"domain = "10.0.0.2:5060""#,
        );
        assert!(parse("a.toml", &ok).is_ok());
    }
}
