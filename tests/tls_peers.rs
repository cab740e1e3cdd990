//! SIP over TLS against a real peer in the three-namespace lab (tests/common/mod.rs):
//!
//!   gw (10.99.1.2, "pbx") -- 10.99.1.1 [mediagate] 10.99.2.1:5061 tls -- it: Kamailio (ITSP)
//!
//! Kamailio 5.6 with its tls module is the ITSP's edge (tests/data/kamailio/itsp_tls.cfg): TLS
//! on 10.99.2.2:5061 with a certificate for itsp.test and 10.99.2.2, and on 10.99.2.3:5061 with
//! one for other.test only; it requires client certificates of the test CA (made at test time,
//! tests/common/pki.rs) and relays to and from a sipp "phone" on UDP 10.99.2.2. The callers
//! and callees on both ends are sipp with RTP; one test names the ITSP in DNS (dnsmasq,
//! tests/common/dnsmasq.rs), one uses Kamailio over TCP (same connection handling). These tests need root, sipp, dnsmasq and Kamailio with
//! `kamailio-tls-modules`; they fail (never skip) without them.

mod common;

use std::fs;
use std::time::Duration;

use common::dnsmasq::{Dnsmasq, DNS_IP};
use common::kamailio::Kamailio;
use common::pki::TestCa;
use common::*;

/// The provider phone's SIP port (sipp behind Kamailio, on `IT_IP`).
const PHONE_PORT: u16 = 5070;
const PHONE_MEDIA_PORT: u16 = 6010;
/// Kamailio's TLS module (Debian `kamailio-tls-modules`).
const KAMAILIO_TLS_MODULE: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so";
/// The address whose certificate names another host.
const WRONG_CERT_IP: &str = IT2_IP;

/// The lab with the ITSP's Kamailio over TLS. Fields drop in order: Kamailio, then the lab.
struct TlsLab {
    kamailio: Kamailio,
    lab: Lab,
}

impl TlsLab {
    /// Lab, test CA and certificates (ITSP, the wrong host, mediagate), Kamailio started.
    fn new(test: &str) -> TlsLab {
        let lab = Lab::new(test);
        assert!(
            std::path::Path::new(KAMAILIO_TLS_MODULE).is_file(),
            "{KAMAILIO_TLS_MODULE} not found: run scripts/install-deps (Debian package kamailio-tls-modules)"
        );
        lab.add_it_addr(&format!("{WRONG_CERT_IP}/24"));
        let ca = TestCa::new(&lab.dir, "mediagate test CA");
        ca.issue("itsp", "itsp.test", &["itsp.test", IT_IP]);
        ca.issue("other", "other.test", &["other.test"]);
        ca.issue("mediagate", "mediagate.test", &[MG_IT_IP]);
        let dir = lab.dir.display().to_string();
        for (template, file) in [
            ("itsp_tls.tls.cfg", "kamailio-tls.cfg"),
            ("itsp_tls.cfg", "kamailio.cfg"),
        ] {
            let text = fs::read_to_string(repo_root().join("tests/data/kamailio").join(template))
                .expect("kamailio template");
            fs::write(lab.path(file), text.replace("@DIR@", &dir)).expect("kamailio config");
        }
        let kamailio = Kamailio::start(
            &lab,
            &lab.it(),
            "itsp",
            &lab.path("kamailio.cfg"),
            &format!("{IT_IP}:5061"),
        );
        TlsLab { kamailio, lab }
    }

    /// The lab config with mediagate's TLS listener and `[sip.tls]`, and the ITSP trunk over
    /// TLS to `peers` with mutual TLS and the extra trunk keys `extra`.
    fn config(&self, peers: &[&str], extra: &str) -> String {
        let dir = self.lab.dir.display();
        let peers: Vec<String> = peers.iter().map(|p| format!("\"tls:{p}\"")).collect();
        let base = config(30);
        for needle in [
            "\"tcp:10.99.2.1:5060\"]",
            "[media]",
            "peers = [\"udp:10.99.2.2:5060\"]\nlocal = \"udp:10.99.2.1:5060\"",
        ] {
            assert!(base.contains(needle), "lab.toml changed: {needle}");
        }
        base.replace(
            "\"tcp:10.99.2.1:5060\"]",
            "\"tcp:10.99.2.1:5060\", \"tls:10.99.2.1:5061\"]",
        )
        .replace(
            "[media]",
            &format!(
                "[sip.tls]\ncert = \"{dir}/mediagate.pem\"\nkey = \"{dir}/mediagate.key\"\nca = \"{dir}/ca.pem\"\n\n[media]"
            ),
        )
        .replace(
            "peers = [\"udp:10.99.2.2:5060\"]\nlocal = \"udp:10.99.2.1:5060\"",
            &format!(
                "peers = [{}]\nlocal = \"tls:10.99.2.1:5061\"\ntls_client_auth = true\n{extra}",
                peers.join(", ")
            ),
        )
    }

    /// The provider's phone: a sipp answering with RTP echo, behind Kamailio.
    fn phone(&self) -> Sipp {
        let uas = Sipp::spawn(
            &self.lab,
            "phone",
            SippOpts::new(self.lab.it(), "uas_echo", IT_IP)
                .ports(PHONE_PORT, PHONE_MEDIA_PORT)
                .args(&["-rtp_echo"])
                .timeout(45),
        );
        uas.settle();
        uas
    }
}

/// The INVITE a sipp received.
fn invite_of(s: &Sipp) -> SipMsg {
    s.received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .unwrap_or_else(|| panic!("no INVITE received\n{}", s.describe()))
}

#[test]
fn gw_calls_the_itsp_over_mutual_tls_with_media_relayed() {
    let t = TlsLab::new("tls-out");
    let mut phone = t.phone();
    // Keep-alive pings every second over the call's few seconds: Kamailio must answer them.
    let cfg = t
        .config(&[&format!("{IT_IP}:5061")], "")
        .replace("max_calls = 100", "max_calls = 100\nkeepalive_s = 1");
    assert!(cfg.contains("keepalive_s = 1"));
    let mg = Mediagate::start(&t.lab, &cfg);
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &t.lab,
        "pbx",
        SippOpts::new(t.lab.gw(), "uac_rtp", GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    let (ok, st) = mg.wait_status(Duration::from_secs(10), |st| rtp_flowing(st, 1));
    assert!(
        ok,
        "no media both ways over the TLS-signalled call: {st:#}\n{}",
        t.kamailio.log_text()
    );
    assert_rtp_call_status(&st, 1, Dataplane::Socket);
    let peer = &st["trunks"][1]["peers"][0];
    assert_eq!(peer["transport"], "TLS", "{st:#}");
    uac.assert_ok(Some(&mg));
    let status = phone.stop();
    assert!(status.success(), "phone: {status}\n{}", phone.describe());
    mg.assert_idle(Duration::from_secs(5));

    // Kamailio saw mediagate's client certificate; mediagate's Via and Contact say TLS.
    let log = t.kamailio.log_text();
    assert!(
        log.contains("TLS-PEER INVITE cn=mediagate.test"),
        "no INVITE over TLS with mediagate's certificate:\n{log}"
    );
    assert!(log.contains("TLS-PEER BYE cn=mediagate.test"), "{log}");
    let invite = invite_of(&phone);
    let vias = invite.headers("Via");
    assert!(
        vias.iter()
            .any(|v| v.starts_with("SIP/2.0/TLS 10.99.2.1:5061;")),
        "{vias:?}"
    );
    let contact = invite.header("Contact").unwrap_or_default();
    assert_eq!(contact, "<sip:mediagate@10.99.2.1:5061;transport=tls>");
    assert!(phone.received().iter().any(|m| m.is_request("BYE")));

    // One connection carried the whole call, kept alive by CRLF ping and pong.
    let log = fs::read_to_string(t.lab.path("mediagate.log")).unwrap_or_default();
    let connects = log
        .lines()
        .filter(|l| l.contains("connected") && l.contains(&format!("{IT_IP}:5061")))
        .count();
    assert_eq!(connects, 1, "{log}");
    assert!(!log.contains("no keep-alive pong"), "{log}");
}

#[test]
fn a_peer_whose_certificate_names_another_host_is_refused_and_the_call_fails_over() {
    let t = TlsLab::new("tls-wrong-name");
    let mut phone = t.phone();
    // The first peer presents other.test's certificate, the second itsp.test's.
    let cfg = t.config(
        &[&format!("{WRONG_CERT_IP}:5061"), &format!("{IT_IP}:5061")],
        "tls_name = \"itsp.test\"\n",
    );
    let mg = Mediagate::start(&t.lab, &cfg);
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &t.lab,
        "pbx",
        SippOpts::new(t.lab.gw(), "uac_short", GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1", "-d", "500"]),
    );
    uac.assert_ok(Some(&mg));
    let status = phone.stop();
    assert!(status.success(), "phone: {status}\n{}", phone.describe());
    mg.assert_idle(Duration::from_secs(5));

    let log = fs::read_to_string(t.lab.path("mediagate.log")).unwrap_or_default();
    let refused = log
        .lines()
        .find(|l| l.contains("cannot connect") && l.contains(&format!("{WRONG_CERT_IP}:5061")))
        .unwrap_or_else(|| panic!("the wrong certificate was not refused:\n{log}"));
    assert!(
        refused.contains("not valid for name") && refused.contains("itsp.test"),
        "{refused}"
    );
    // The refused connection failed the INVITE over at once, not by invite_timeout_s.
    assert!(!log.contains("no response to INVITE"), "{log}");
    let kam = t.kamailio.log_text();
    assert!(
        !kam.contains(&format!("dst={WRONG_CERT_IP}:5061")),
        "a request reached the peer with the wrong certificate:\n{kam}"
    );
    let invites = phone
        .received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
        .count();
    assert_eq!(invites, 1, "{}", phone.describe());
}

#[test]
fn itsp_calls_the_gw_over_tls_with_media_relayed() {
    let t = TlsLab::new("tls-in");
    let mut pbx = Sipp::spawn(
        &t.lab,
        "pbx",
        SippOpts::new(t.lab.gw(), "uas_echo", GW_IP)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    pbx.settle();
    let mg = Mediagate::start(&t.lab, &t.config(&[&format!("{IT_IP}:5061")], ""));
    // The provider's caller sends to Kamailio (UDP), which relays over TLS to mediagate.
    let kamailio_udp = format!("{IT_IP}:5060");
    let mut caller = Sipp::spawn(
        &t.lab,
        "itsp-caller",
        SippOpts::new(t.lab.it(), "uac_rtp", IT_IP)
            .ports(5080, 6020)
            .caller("200", &kamailio_udp)
            .args(&["-m", "1"])
            .timeout(30),
    );
    let (ok, st) = mg.wait_status(Duration::from_secs(10), |st| rtp_flowing(st, 1));
    assert!(ok, "no media both ways: {st:#}\n{}", t.kamailio.log_text());
    assert_rtp_call_status(&st, 1, Dataplane::Socket);
    let legs = st["calls"][0]["legs"].as_array().expect("legs");
    // The INVITE came over Kamailio's TLS connection, which the trunk's tls_client_auth only
    // accepts with a certificate of the test CA.
    let itsp_leg = legs
        .iter()
        .find(|l| l["trunk"] == "itsp")
        .expect("itsp leg");
    assert_eq!(itsp_leg["transport"], "TLS", "{st:#}");
    caller.assert_ok(Some(&mg));
    let status = pbx.stop();
    assert!(status.success(), "pbx: {status}\n{}", pbx.describe());
    mg.assert_idle(Duration::from_secs(5));
    assert!(
        pbx.received().iter().any(|m| m.is_request("BYE")),
        "the ITSP caller's BYE (over TLS) was not relayed\n{}",
        pbx.describe()
    );
}

#[test]
fn a_tls_peer_by_dns_name_is_verified_against_that_name_and_fails_over_to_the_next_srv_target() {
    let t = TlsLab::new("tls-dns");
    // SRV: the other.test address first (priority 1), the itsp.test one second.
    let dns = Dnsmasq::start(
        &t.lab,
        &[
            "--srv-host=_sips._tcp.itsp.test,p1.itsp.test,5061,1,10".into(),
            "--srv-host=_sips._tcp.itsp.test,p2.itsp.test,5061,2,10".into(),
            format!("--host-record=p1.itsp.test,{WRONG_CERT_IP}"),
            format!("--host-record=p2.itsp.test,{IT_IP}"),
        ],
    );
    let mut phone = t.phone();
    let cfg = t.config(&["itsp.test"], "").replace(
        "max_calls = 100",
        &format!("max_calls = 100\ndns_servers = [\"{DNS_IP}\"]"),
    );
    assert!(cfg.contains("\"tls:itsp.test\"") && cfg.contains("dns_servers"));
    let mg = Mediagate::start(&t.lab, &cfg);
    let st = mg.status();
    let peers: Vec<&str> = st["trunks"][1]["peers"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["address"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        peers,
        [format!("{WRONG_CERT_IP}:5061"), format!("{IT_IP}:5061")],
        "{st:#}\n{}",
        dns.log_text()
    );
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &t.lab,
        "pbx",
        SippOpts::new(t.lab.gw(), "uac_short", GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1", "-d", "500"]),
    );
    uac.assert_ok(Some(&mg));
    let status = phone.stop();
    assert!(status.success(), "phone: {status}\n{}", phone.describe());
    mg.assert_idle(Duration::from_secs(5));
    // RFC 5922: the first target's certificate is not valid for the configured name.
    let log = fs::read_to_string(t.lab.path("mediagate.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("cannot connect")
            && l.contains(&format!("{WRONG_CERT_IP}:5061"))
            && l.contains("not valid for name")
            && l.contains("itsp.test")),
        "{log}"
    );
    assert!(!log.contains("no response to INVITE"), "{log}");
    assert!(t
        .kamailio
        .log_text()
        .contains("TLS-PEER INVITE cn=mediagate.test"));
}

/// An OPTIONS over a TLS connection from the ITSP's address to mediagate, by `openssl
/// s_client` with `cert` (or no client certificate); what came back.
fn options_over_tls(t: &TlsLab, cert: Option<&str>) -> String {
    let dir = t.lab.dir.display().to_string();
    let options = format!(
        "OPTIONS sip:{MG_IT_IP}:5061 SIP/2.0\r\nVia: SIP/2.0/TLS {IT_IP}:5061;branch=z9hG4bK-s-client\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{IT_IP}>;tag=1\r\nTo: <sip:{MG_IT_IP}>\r\n\
         Call-ID: s-client@{IT_IP}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let input = t.lab.path("options.txt");
    fs::write(&input, options).expect("write OPTIONS");
    let mut script = format!(
        "(cat {input}; sleep 2) | timeout 10 openssl s_client -quiet -connect {MG_IT_IP}:5061 \
         -CAfile {dir}/ca.pem",
        input = input.display()
    );
    if let Some(c) = cert {
        script.push_str(&format!(" -cert {dir}/{c}.pem -key {dir}/{c}.key"));
    }
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &t.lab.it(), "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_tls_client_auth_trunk_peer_without_a_certificate_is_refused() {
    let t = TlsLab::new("tls-client-auth");
    let mg = Mediagate::start(&t.lab, &t.config(&[&format!("{IT_IP}:5061")], ""));
    // With the ITSP's certificate, mediagate answers; without one, the connection is closed.
    let with = options_over_tls(&t, Some("itsp"));
    assert!(with.starts_with("SIP/2.0 200"), "{with}");
    let without = options_over_tls(&t, None);
    assert!(!without.contains("SIP/2.0"), "{without}");
    let log = fs::read_to_string(t.lab.path("mediagate.log")).unwrap_or_default();
    assert!(log.contains("presented no certificate"), "{log}");
    mg.assert_idle(Duration::from_secs(2));
}

#[test]
fn tcp_peers_get_the_same_connection_handling_refused_peer_fails_over_at_once_and_keepalive() {
    let t = TlsLab::new("tcp-peers");
    let mut phone = t.phone();
    // Nothing listens on the first peer's TCP port: refused, then Kamailio over TCP.
    let cfg = config(30)
        .replace("max_calls = 100", "max_calls = 100\nkeepalive_s = 1")
        .replace(
            "peers = [\"udp:10.99.2.2:5060\"]\nlocal = \"udp:10.99.2.1:5060\"",
            &format!(
                "peers = [\"tcp:{WRONG_CERT_IP}:5060\", \"tcp:{IT_IP}:5060\"]\nlocal = \"tcp:10.99.2.1:5060\""
            ),
        );
    assert!(cfg.contains("keepalive_s = 1") && cfg.contains("local = \"tcp:10.99.2.1:5060\""));
    let mg = Mediagate::start(&t.lab, &cfg);
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &t.lab,
        "pbx",
        SippOpts::new(t.lab.gw(), "uac_rtp", GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    uac.assert_ok(Some(&mg));
    let status = phone.stop();
    assert!(status.success(), "phone: {status}\n{}", phone.describe());
    mg.assert_idle(Duration::from_secs(5));
    let log = fs::read_to_string(t.lab.path("mediagate.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("cannot connect")
            && l.contains(&format!("{WRONG_CERT_IP}:5060"))
            && l.contains("backoff_s")),
        "{log}"
    );
    assert!(!log.contains("no response to INVITE"), "{log}");
    let connects = log
        .lines()
        .filter(|l| l.contains("connected") && l.contains(&format!("{IT_IP}:5060")))
        .count();
    assert_eq!(connects, 1, "{log}");
    assert!(!log.contains("no keep-alive pong"), "{log}");
    let invite = invite_of(&phone);
    assert!(
        invite
            .headers("Via")
            .iter()
            .any(|v| v.starts_with("SIP/2.0/TCP 10.99.2.1:5060;")),
        "{:?}",
        invite.headers("Via")
    );
}
