//! A test certificate authority made at test time (rcgen): certificates with the host names and
//! IP addresses a test asks for, written as PEM files into the lab's directory.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};

/// PEM files of one certificate and its key.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA whose certificate is `ca.pem` in `dir`; it issues end-entity certificates.
pub struct TestCa {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (the trust anchor for `[sip.tls] ca` and Kamailio's `ca_list`).
    pub ca: PathBuf,
}

fn named(cn: &str, sans: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("certificate parameters");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = named(name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let ca = dir.join("ca.pem");
        fs::write(&ca, issuer.pem()).expect("write ca.pem");
        TestCa {
            dir: dir.to_path_buf(),
            issuer,
            ca,
        }
    }

    /// A certificate for common name `cn` with `sans` (host names, or IP addresses as IP
    /// SANs), written to `dir/<file>.pem` and `dir/<file>.key`.
    pub fn issue(&self, file: &str, cn: &str, sans: &[&str]) -> CertFiles {
        let key = KeyPair::generate().expect("key");
        let cert = named(cn, sans)
            .signed_by(&key, &self.issuer)
            .expect("certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        fs::write(&files.cert, cert.pem()).expect("write certificate");
        fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}
