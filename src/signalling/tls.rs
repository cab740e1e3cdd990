//! SIP over TLS with rustls: the server side of `tls:` listeners, the client side toward `tls:`
//! peers (SNI and certificate verification against the trunk's `tls_name`, else the peer's IP
//! address), and mutual TLS for trunks with `tls_client_auth`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::config::{Config, TlsMaterial, Transport, TrunkTls};

/// The TLS side of the transports, built once at start from `[sip.tls]` and the trunks.
pub struct TlsContext {
    /// For `tls:` listeners; `None` without `[sip.tls] cert`/`key`.
    acceptor: Option<TlsAcceptor>,
    /// Toward peers that do not ask for a client certificate; `None` without `[sip.tls] ca`.
    client: Option<TlsConnector>,
    /// Toward peers of trunks with `tls_client_auth`: presents mediagate's certificate.
    client_with_cert: Option<TlsConnector>,
    /// The TLS settings of every `tls:` trunk peer, by its address (peers resolved from DNS
    /// names are added as they are learnt).
    peers: Mutex<HashMap<SocketAddr, TrunkTls>>,
    /// Source addresses whose TLS connections must present a verified client certificate.
    cert_required: Mutex<HashSet<IpAddr>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl TlsContext {
    /// Builds the rustls configurations; `None` when the config has no `[sip.tls]`.
    pub fn new(config: &Config) -> io::Result<Option<TlsContext>> {
        let Some(material) = &config.sip.tls else {
            return Ok(None);
        };
        let mut peers = HashMap::new();
        let mut cert_required = HashSet::new();
        for t in &config.trunks {
            for p in t.peers.iter().filter(|p| p.transport == Transport::Tls) {
                peers.insert(p.addr, t.tls.clone());
            }
            if t.tls.client_auth {
                cert_required.extend(t.peers.iter().map(|p| p.addr.ip()));
            }
        }
        Ok(Some(TlsContext {
            acceptor: server_config(material)?.map(|c| TlsAcceptor::from(Arc::new(c))),
            client: client_config(material, false)?.map(|c| TlsConnector::from(Arc::new(c))),
            client_with_cert: client_config(material, true)?
                .map(|c| TlsConnector::from(Arc::new(c))),
            peers: Mutex::new(peers),
            cert_required: Mutex::new(cert_required),
        }))
    }

    /// Adds TLS peers found at run time (DNS targets of a named `tls:` peer): their settings,
    /// with the name to verify, and the client-certificate rule of their trunk.
    pub fn learn(&self, found: &[(SocketAddr, TrunkTls)]) {
        let mut peers = self.peers.lock().expect("tls peers");
        let mut required = self.cert_required.lock().expect("tls peers");
        for (addr, tls) in found {
            if tls.client_auth {
                required.insert(addr.ip());
            }
            peers.insert(*addr, tls.clone());
        }
    }

    /// Client handshake toward `remote` over `tcp`: SNI and verification with the trunk's
    /// `tls_name` when it has one, else with the IP address (its certificate needs an IP SAN).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> io::Result<client::TlsStream<TcpStream>> {
        let peer = self
            .peers
            .lock()
            .expect("tls peers")
            .get(&remote)
            .cloned()
            .unwrap_or_default();
        let connector = if peer.client_auth {
            self.client_with_cert.as_ref()
        } else {
            self.client.as_ref()
        }
        .ok_or_else(|| invalid("no [sip.tls] ca to verify the peer with"))?;
        let name = match peer.name {
            Some(n) => ServerName::try_from(n).map_err(invalid)?,
            None => ServerName::IpAddress(remote.ip().into()),
        };
        connector.connect(name, tcp).await
    }

    /// Server handshake of a connection accepted from `remote`; a peer of a trunk with
    /// `tls_client_auth` must have presented a certificate (verified against `ca` by rustls).
    pub async fn accept(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> io::Result<server::TlsStream<TcpStream>> {
        let acceptor = self
            .acceptor
            .as_ref()
            .ok_or_else(|| invalid("no [sip.tls] certificate"))?;
        let stream = acceptor.accept(tcp).await?;
        let presented = stream.get_ref().1.peer_certificates().is_some();
        let required = self
            .cert_required
            .lock()
            .expect("tls peers")
            .contains(&remote.ip());
        if required && !presented {
            return Err(invalid(
                "the trunk has tls_client_auth but the peer presented no certificate",
            ));
        }
        Ok(stream)
    }
}

/// The listeners' configuration: mediagate's certificate, and with `ca` a request for client
/// certificates (verified when presented; required per trunk in [`TlsContext::accept`]).
fn server_config(m: &TlsMaterial) -> io::Result<Option<ServerConfig>> {
    let Some((chain, key)) = &m.identity else {
        return Ok(None);
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?;
    let builder = match &m.roots {
        Some(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .allow_unauthenticated()
                .build()
                .map_err(invalid)?,
        ),
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map(Some)
        .map_err(invalid)
}

/// A client configuration trusting `ca`, presenting mediagate's certificate when `with_cert`.
fn client_config(m: &TlsMaterial, with_cert: bool) -> io::Result<Option<ClientConfig>> {
    let Some(roots) = &m.roots else {
        return Ok(None);
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(roots.clone());
    match (&m.identity, with_cert) {
        (_, false) => Ok(Some(builder.with_no_client_auth())),
        (Some((chain, key)), true) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map(Some)
            .map_err(invalid),
        (None, true) => Ok(None),
    }
}
