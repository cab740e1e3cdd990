//! Trunk peers by DNS name (RFC 3263) against a real DNS server in the three-namespace lab
//! (tests/common/mod.rs):
//!
//!   gw (10.99.1.2, "pbx") -- 10.99.1.1 [mediagate] 10.99.2.1 -- it: dnsmasq 10.99.2.2:53,
//!                                                               sipp 10.99.2.2 and 10.99.2.3
//!
//! dnsmasq serves `itsp.test`: a NAPTR record (SIP+D2U) pointing at `_sip._udp.naptr.itsp.test`
//! (not the default `_sip._udp.itsp.test`, so the NAPTR step is needed), whose SRV records
//! name p1.itsp.test (priority 1) and p2.itsp.test (priority 2), and their A records. The ITSP
//! trunk's only peer is `udp:itsp.test`. These tests need root, sipp and dnsmasq
//! (`dnsmasq-base`); they fail (never skip) without them.

mod common;

use std::time::Duration;

use common::dnsmasq::{Dnsmasq, DNS_IP};
use common::*;

/// The priority-1 and priority-2 targets.
const P1: &str = IT_IP;
const P2: &str = IT2_IP;

/// A callee sipp on `ip`:5060.
fn callee(lab: &Lab, name: &str, ip: &'static str) -> Sipp {
    let s = Sipp::spawn(
        lab,
        name,
        SippOpts::new(lab.it(), "uas_echo", ip).timeout(40),
    );
    s.settle();
    s
}

/// One short call from the PBX, expected to succeed.
fn call(lab: &Lab, mg: &Mediagate, name: &str) {
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        lab,
        name,
        SippOpts::new(lab.gw(), "uac_short", GW_IP)
            .caller("+4930123", &remote)
            .args(&["-m", "1", "-d", "300"]),
    );
    uac.assert_ok(Some(mg));
}

fn invites(s: &Sipp) -> usize {
    s.received()
        .iter()
        .filter(|m| m.is_request("INVITE"))
        .count()
}

#[test]
fn naptr_and_srv_priorities_order_the_targets_and_calls_fail_over_to_priority_two() {
    let lab = Lab::new("dns-srv");
    lab.add_it_addr(&format!("{P2}/24"));
    let dns = Dnsmasq::start(
        &lab,
        &[
            "--naptr-record=itsp.test,10,10,S,SIP+D2U,,_sip._udp.naptr.itsp.test".into(),
            "--naptr-record=itsp.test,5,10,S,SIP+D2T,,_sip._tcp.naptr.itsp.test".into(),
            "--srv-host=_sip._udp.naptr.itsp.test,p2.itsp.test,5060,2,10".into(),
            "--srv-host=_sip._udp.naptr.itsp.test,p1.itsp.test,5060,1,10".into(),
            format!("--host-record=p1.itsp.test,{P1}"),
            format!("--host-record=p2.itsp.test,{P2}"),
        ],
    );
    let mut p1 = callee(&lab, "p1", P1);
    let mut p2 = callee(&lab, "p2", P2);
    let cfg = config(30)
        .replace(
            "max_calls = 100",
            &format!("max_calls = 100\ndns_servers = [\"{DNS_IP}\"]"),
        )
        .replace(
            "peers = [\"udp:10.99.2.2:5060\"]\nlocal = \"udp:10.99.2.1:5060\"",
            "peers = [\"udp:itsp.test\"]\nlocal = \"udp:10.99.2.1:5060\"\ninvite_timeout_s = 1\n\
             options_interval_s = 2\noptions_timeout_s = 1\ndown_after = 1\nup_after = 1",
        );
    assert!(cfg.contains("udp:itsp.test") && cfg.contains("dns_servers"));
    let mg = Mediagate::start(&lab, &cfg);

    // Both SRV targets become the trunk's peers, priority 1 first.
    let (ok, st) = mg.wait_status(Duration::from_secs(10), |s| {
        s["trunks"][1]["peers"].as_array().map_or(0, Vec::len) == 2
    });
    assert!(ok, "not resolved: {st:#}\n{}", dns.log_text());
    let peers: Vec<&str> = st["trunks"][1]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["address"].as_str())
        .collect();
    assert_eq!(
        peers,
        [format!("{P1}:5060"), format!("{P2}:5060")],
        "{st:#}"
    );

    // OPTIONS health per resolved target.
    let state = |s: &serde_json::Value, i: usize| s["trunks"][1]["peers"][i]["state"].clone();
    let (ok, st) = mg.wait_status(Duration::from_secs(6), |s| {
        state(s, 0) == "up" && state(s, 1) == "up"
    });
    assert!(ok, "targets not probed up: {st:#}");

    // The priority-1 target takes the call.
    call(&lab, &mg, "pbx-1");
    assert_eq!((invites(&p1), invites(&p2)), (1, 0));

    // Priority 1 gone: the next call gets no answer there and fails over to priority 2.
    let st = p1.stop();
    assert!(st.success(), "p1: {st}\n{}", p1.describe());
    call(&lab, &mg, "pbx-2");
    assert_eq!(invites(&p2), 1, "{}", p2.describe());
    let (ok, st) = mg.wait_status(Duration::from_secs(6), |s| {
        state(s, 0) == "down" && state(s, 1) == "up"
    });
    assert!(ok, "the silent target is not down: {st:#}");
    let st = p2.stop();
    assert!(st.success(), "p2: {st}\n{}", p2.describe());
    mg.assert_idle(Duration::from_secs(5));

    let log = dns.log_text();
    assert!(
        log.contains("query[NAPTR] itsp.test") && log.contains("_sip._udp.naptr.itsp.test"),
        "{log}"
    );
}

/// `/etc/netns/NS/resolv.conf` naming dnsmasq, which `ip netns exec NS` puts over
/// `/etc/resolv.conf` for mediagate; removed (with its directory) on drop.
struct NetnsResolvConf {
    dir: std::path::PathBuf,
}

impl NetnsResolvConf {
    fn new(ns: &str) -> Self {
        let dir = std::path::Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NS");
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {DNS_IP}\n"))
            .expect("write resolv.conf");
        NetnsResolvConf { dir }
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_name_with_a_port_uses_only_its_address_records_from_the_system_resolver() {
    let lab = Lab::new("dns-a");
    lab.add_it_addr(&format!("{P2}/24"));
    // An SRV record that must not be used: with a port, only A/AAAA count.
    let dns = Dnsmasq::start(
        &lab,
        &[
            "--srv-host=_sip._udp.p2.itsp.test,p1.itsp.test,5060,1,10".into(),
            format!("--host-record=p1.itsp.test,{P1}"),
            format!("--host-record=p2.itsp.test,{P2}"),
        ],
    );
    let _resolv = NetnsResolvConf::new(&lab.mg());
    let mut p1 = callee(&lab, "p1", P1);
    let mut p2 = callee(&lab, "p2", P2);
    let cfg = config(30).replace(
        "peers = [\"udp:10.99.2.2:5060\"]",
        "peers = [\"udp:p2.itsp.test:5060\"]",
    );
    assert!(cfg.contains("p2.itsp.test") && !cfg.contains("dns_servers"));
    let mg = Mediagate::start(&lab, &cfg);
    let st = mg.status();
    assert_eq!(
        st["trunks"][1]["peers"][0]["address"],
        format!("{P2}:5060"),
        "{st:#}\n{}",
        dns.log_text()
    );
    call(&lab, &mg, "pbx");
    assert_eq!((invites(&p1), invites(&p2)), (0, 1));
    for s in [&mut p1, &mut p2] {
        let st = s.stop();
        assert!(st.success(), "{st}\n{}", s.describe());
    }
    mg.assert_idle(Duration::from_secs(5));
    let log = dns.log_text();
    assert!(log.contains("query[A] p2.itsp.test"), "{log}");
    assert!(!log.contains("query[SRV]"), "{log}");
}

#[test]
fn a_changed_answer_replaces_the_peer_list_when_the_ttl_runs_out() {
    let lab = Lab::new("dns-ttl");
    lab.add_it_addr(&format!("{P2}/24"));
    let records = |first: &str, second: &str| {
        vec![
            format!("--srv-host=_sip._udp.itsp.test,{first}.itsp.test,5060,1,10"),
            format!("--srv-host=_sip._udp.itsp.test,{second}.itsp.test,5060,2,10"),
            format!("--host-record=p1.itsp.test,{P1}"),
            format!("--host-record=p2.itsp.test,{P2}"),
        ]
    };
    let dns = Dnsmasq::start(&lab, &records("p1", "p2"));
    let cfg = config(30)
        .replace(
            "max_calls = 100",
            &format!("max_calls = 100\ndns_servers = [\"{DNS_IP}\"]"),
        )
        .replace(
            "peers = [\"udp:10.99.2.2:5060\"]",
            "peers = [\"udp:itsp.test\"]",
        );
    let mg = Mediagate::start(&lab, &cfg);
    let order = |s: &serde_json::Value| -> Vec<String> {
        s["trunks"][1]["peers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["address"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let p1 = format!("{P1}:5060");
    let p2 = format!("{P2}:5060");
    let st = mg.status();
    assert_eq!(order(&st), [p1.clone(), p2.clone()], "{st:#}");
    // The operator swaps the priorities; the answers had a TTL of 5 s.
    drop(dns);
    let dns = Dnsmasq::start(&lab, &records("p2", "p1"));
    let (ok, st) = mg.wait_status(Duration::from_secs(15), |s| {
        order(s) == [p2.clone(), p1.clone()]
    });
    assert!(
        ok,
        "the new answer was not taken: {st:#}\n{}",
        dns.log_text()
    );
    mg.assert_idle(Duration::from_secs(1));
}
