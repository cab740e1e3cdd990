//! SIP over TLS keys: `[sip.tls]` (`cert`, `key`, `ca`) and a trunk's `tls_name` and
//! `tls_client_auth`.
//!
//! A child of `config` so that a certificate that cannot be read, a key that does not belong to
//! the certificate or a CA file without certificates is reported as `FILE:LINE: key: problem`
//! by `--check-config`, before anything starts. The PEM files are read here, once; the
//! transports build their rustls configurations from the loaded [`TlsMaterial`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use serde::Deserialize;

use super::{ConfigError, Seg};
use crate::config::routing::ErrAt;

/// `[sip.tls]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    ca: Option<String>,
}

/// The loaded `[sip.tls]` files.
#[derive(Clone)]
pub struct TlsMaterial {
    /// mediagate's certificate chain (end entity first) and its private key: presented by TLS
    /// listeners, and to trunks with `tls_client_auth`. `None` without `cert`/`key`.
    pub identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    /// Trust anchors (`ca`) for verifying TLS peers' certificates, as servers and as clients.
    pub roots: Option<Arc<RootCertStore>>,
}

impl std::fmt::Debug for TlsMaterial {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field(
                "certificates",
                &self.identity.as_ref().map(|(c, _)| c.len()),
            )
            .field("trust_anchors", &self.roots.as_ref().map(|r| r.len()))
            .finish()
    }
}

/// A trunk's TLS settings (meaningful for its `tls:` peers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkTls {
    /// The name sent as SNI and checked against the peers' certificates (`tls_name`); without
    /// it the peer's IP address is checked against the certificate's IP SANs.
    pub name: Option<String>,
    /// Mutual TLS (`tls_client_auth`): mediagate presents its `[sip.tls]` certificate when it
    /// connects to the trunk's peers, and a TLS connection from one of the trunk's peers must
    /// present a certificate signed by `[sip.tls] ca`, else it is closed.
    pub client_auth: bool,
}

/// Where a relative path in the config points: next to the config file.
fn resolve(config_file: &str, path: &str) -> PathBuf {
    let p = Path::new(path);
    match Path::new(config_file).parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// Reads and checks `[sip.tls]`: every file readable PEM of the right kind, the key the one of
/// the certificate, `cert` and `key` given together.
pub(super) fn material(
    raw: &RawTls,
    config_file: &str,
    at: &[Seg],
    err: ErrAt,
) -> Result<TlsMaterial, ConfigError> {
    let key_at = |k| [at, &[Seg::Key(k)]].concat();
    let identity = match (&raw.cert, &raw.key) {
        (None, None) => None,
        (Some(_), None) => return Err(err(&key_at("key"), "`cert` needs its `key`".into())),
        (None, Some(_)) => return Err(err(&key_at("cert"), "`key` needs its `cert`".into())),
        (Some(cert), Some(key)) => {
            let chain =
                certificates(&resolve(config_file, cert)).map_err(|m| err(&key_at("cert"), m))?;
            let key_path = resolve(config_file, key);
            let private = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
                err(
                    &key_at("key"),
                    format!(
                        "cannot read a PEM private key from {}: {e}",
                        key_path.display()
                    ),
                )
            })?;
            let signer = rustls::crypto::ring::sign::any_supported_type(&private)
                .map_err(|e| err(&key_at("key"), format!("unusable private key: {e}")))?;
            rustls::sign::CertifiedKey::new(chain.clone(), signer)
                .keys_match()
                .map_err(|e| {
                    err(
                        &key_at("key"),
                        format!("does not belong to the certificate in `cert`: {e}"),
                    )
                })?;
            Some((chain, Arc::new(private)))
        }
    };
    let roots = match &raw.ca {
        None => None,
        Some(ca) => {
            let mut store = RootCertStore::empty();
            for c in certificates(&resolve(config_file, ca)).map_err(|m| err(&key_at("ca"), m))? {
                store
                    .add(c)
                    .map_err(|e| err(&key_at("ca"), format!("unusable CA certificate: {e}")))?;
            }
            Some(Arc::new(store))
        }
    };
    Ok(TlsMaterial { identity, roots })
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!("cannot read PEM certificates from {}: {e}", path.display())
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if chain.is_empty() {
        return Err(bad(&"no CERTIFICATE section"));
    }
    Ok(chain)
}

/// Checks a trunk's `tls_name` and `tls_client_auth` against its peers and `[sip.tls]`.
pub(super) fn trunk_tls(
    name: Option<&str>,
    client_auth: bool,
    has_tls_peer: bool,
    material: Option<&TlsMaterial>,
    at: &[Seg],
    err: ErrAt,
) -> Result<TrunkTls, ConfigError> {
    let key_at = |k| [at, &[Seg::Key(k)]].concat();
    if let Some(n) = name {
        if !has_tls_peer {
            return Err(err(&key_at("tls_name"), "needs a tls: peer".into()));
        }
        if !matches!(ServerName::try_from(n), Ok(ServerName::DnsName(_))) {
            return Err(err(
                &key_at("tls_name"),
                format!("`{n}` is not a DNS host name"),
            ));
        }
    }
    if client_auth {
        let complete = material.is_some_and(|m| m.identity.is_some() && m.roots.is_some());
        if !has_tls_peer || !complete {
            return Err(err(
                &key_at("tls_client_auth"),
                "needs a tls: peer and [sip.tls] cert, key and ca".into(),
            ));
        }
    }
    Ok(TrunkTls {
        name: name.map(str::to_string),
        client_auth,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, ConfigError, Transport};
    use rcgen::{CertificateParams, KeyPair};
    use std::path::PathBuf;

    /// A directory of its own for `test` with `a.pem`/`a.key` and `b.pem`/`b.key` (two
    /// self-signed certificates) and `junk.pem`; removed on drop.
    struct Files(PathBuf);

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl std::ops::Deref for Files {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    fn files(test: &str) -> Files {
        let dir = std::env::temp_dir().join(format!(
            "mediagate-tls-config-{}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a", "b"] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["10.0.0.1".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        std::fs::write(dir.join("junk.pem"), "not a certificate\n").unwrap();
        Files(dir)
    }

    /// A config with `listen`, `[sip.tls]` keys `tls` and a trunk with `peer` and `extra` keys;
    /// written as if it were `DIR/m.toml`, so relative paths resolve in DIR.
    fn config(
        dir: &std::path::Path,
        listen: &str,
        tls: &str,
        peer: &str,
        extra: &str,
    ) -> Result<crate::config::Config, ConfigError> {
        let text = format!(
            "[sip]\nlisten = [\"{listen}\"]\n\n[sip.tls]\n{tls}\n\n[media]\nports = \"30000-30999\"\n\n\
             [[trunk]]\nname = \"itsp\"\nkind = \"itsp\"\npeers = [\"{peer}\"]\nlocal = \"{listen}\"\n{extra}\n"
        );
        parse(&dir.join("m.toml").display().to_string(), &text)
    }

    #[test]
    fn tls_listen_and_peers_load_their_files() {
        let dir = files("tls_listen_a");
        let c = config(
            &dir,
            "tls:10.0.0.1:5061",
            "cert = \"a.pem\"\nkey = \"a.key\"\nca = \"b.pem\"",
            "tls:10.0.0.2:5061",
            "tls_name = \"itsp.example\"\ntls_client_auth = true",
        )
        .unwrap();
        assert_eq!(c.sip.listen[0].transport, Transport::Tls);
        assert_eq!(c.sip.listen[0].to_string(), "tls:10.0.0.1:5061");
        let tls = c.sip.tls.as_ref().unwrap();
        assert!(tls.identity.is_some() && tls.roots.as_ref().unwrap().len() == 1);
        assert_eq!(c.trunks[0].tls.name.as_deref(), Some("itsp.example"));
        assert!(c.trunks[0].tls.client_auth);
        assert_eq!(c.sip.keepalive, Some(std::time::Duration::from_secs(30)));
        assert!(!format!("{tls:?}").contains("PRIVATE"), "{tls:?}");
    }

    #[test]
    fn tls_errors_name_line_and_key() {
        let dir = files("tls_errors_n");
        let full = "cert = \"a.pem\"\nkey = \"a.key\"\nca = \"b.pem\"";
        let cases = [
            // (listen, [sip.tls], peer, trunk keys) -> key, line, words of the message
            (
                "tls:10.0.0.1:5061",
                "cert = \"a.pem\"\nkey = \"b.key\"",
                "udp:10.0.0.2:5060",
                "",
                "sip.tls.key",
                6,
                "does not belong",
            ),
            (
                "tls:10.0.0.1:5061",
                "cert = \"missing.pem\"\nkey = \"a.key\"",
                "udp:10.0.0.2:5060",
                "",
                "sip.tls.cert",
                5,
                "missing.pem",
            ),
            (
                "tls:10.0.0.1:5061",
                "cert = \"junk.pem\"\nkey = \"a.key\"",
                "udp:10.0.0.2:5060",
                "",
                "sip.tls.cert",
                5,
                "no CERTIFICATE",
            ),
            (
                "tls:10.0.0.1:5061",
                "cert = \"a.pem\"",
                "udp:10.0.0.2:5060",
                "",
                "sip.tls.key",
                4,
                "needs its `key`",
            ),
            (
                "tls:10.0.0.1:5061",
                "ca = \"b.pem\"",
                "udp:10.0.0.2:5060",
                "",
                "sip.listen[0]",
                2,
                "cert and key",
            ),
            (
                "udp:10.0.0.1:5060",
                "cert = \"a.pem\"\nkey = \"a.key\"",
                "tls:10.0.0.2:5061",
                "",
                "trunk[0].peers[0]",
                14,
                "ca",
            ),
            (
                "udp:10.0.0.1:5060",
                "ca = \"junk.pem\"",
                "udp:10.0.0.2:5060",
                "",
                "sip.tls.ca",
                5,
                "no CERTIFICATE",
            ),
            (
                "udp:10.0.0.1:5060",
                full,
                "udp:10.0.0.2:5060",
                "tls_name = \"x.example\"",
                "trunk[0].tls_name",
                17,
                "tls: peer",
            ),
            (
                "tls:10.0.0.1:5061",
                full,
                "tls:10.0.0.2:5061",
                "tls_name = \"10.0.0.2\"",
                "trunk[0].tls_name",
                17,
                "DNS host name",
            ),
            (
                "udp:10.0.0.1:5060",
                "ca = \"b.pem\"",
                "tls:10.0.0.2:5061",
                "tls_client_auth = true",
                "trunk[0].tls_client_auth",
                15,
                "cert, key and ca",
            ),
            (
                "tls:10.0.0.1:5061",
                "cert = \"a.pem\"\nkey = \"a.key\"\nkeepalive_s = 3",
                "udp:10.0.0.2:5060",
                "",
                "sip.tls.keepalive_s",
                7,
                "unknown field",
            ),
        ];
        for (listen, tls, peer, extra, key, line, words) in cases {
            let e = config(&dir, listen, tls, peer, extra).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.line),
                (key, line),
                "{tls} / {extra}: {e}"
            );
            assert!(e.message.contains(words), "{e}");
        }
    }

    #[test]
    fn keepalive_bounds() {
        let dir = files("keepalive_bo");
        let text = |v: &str| {
            format!("[sip]\nlisten = [\"udp:10.0.0.1:5060\"]\nkeepalive_s = {v}\n\n[media]\nports = \"30000-30999\"\n")
        };
        let path = dir.join("k.toml").display().to_string();
        assert_eq!(parse(&path, &text("0")).unwrap().sip.keepalive, None);
        let e = parse(&path, &text("7200")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("sip.keepalive_s", 3), "{e}");
    }
}
