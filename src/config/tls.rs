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
