//! `trunk.advertise`: mediagate behind a 1:1 NAT toward its ITSP. The lab's `it` namespace
//! becomes a NAT router (nftables DNAT/SNAT) in front of a fourth namespace holding the ITSP:
//!
//!   gw 10.99.1.2 ── 10.99.1.1 [mediagate] 10.99.2.1 ── 10.99.2.2 [it: NAT] 10.99.3.1 ── 10.99.3.2 nx
//!                                                         10.99.3.5 = mediagate's "public" address
//!
//! The NAT maps 10.99.3.5 to 10.99.2.1 both ways; the ITSP (sipp in `nx`) can reach mediagate
//! only through 10.99.3.5, so a call completes with RTP both ways only when mediagate writes
//! that address into Via, Contact and SDP toward the ITSP (and its own 10.99.1.1 toward the
//! PBX). Needs root, nftables and sipp; fails (never skips) without them. Logs of a failed
//! run stay under target/tmp/calls/<test>-<prefix>/.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// mediagate's address as the ITSP sees it (the NAT's public side holds it).
const PUBLIC: &str = "10.99.3.5";
/// The NAT router's public side.
const NAT_PUBLIC: &str = "10.99.3.1";
/// The ITSP behind the NAT's public side.
const ITSP: &str = "10.99.3.2";

/// The ITSP's namespace behind the `it` namespace turned NAT router; removed on drop (its
/// veth goes with it).
struct NatItsp {
    ns: String,
    iface: String,
}

impl NatItsp {
    fn new(lab: &Lab) -> NatItsp {
        let ns = format!("{}nx", lab.prefix);
        let (nat_if, itsp_if) = (format!("{}n0", lab.prefix), format!("{}n1", lab.prefix));
        run(Command::new("ip").args(["netns", "add", &ns]));
        let guard = NatItsp { ns, iface: itsp_if };
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        let (it, mg, nx) = (lab.it(), lab.mg(), guard.ns.clone());
        ip(&["-n", &nx, "link", "set", "lo", "up"]);
        ip(&[
            "link",
            "add",
            &nat_if,
            "netns",
            &it,
            "type",
            "veth",
            "peer",
            "name",
            &guard.iface,
            "netns",
            &nx,
        ]);
        ip(&[
            "-n",
            &it,
            "addr",
            "add",
            &format!("{NAT_PUBLIC}/24"),
            "dev",
            &nat_if,
        ]);
        ip(&[
            "-n",
            &it,
            "addr",
            "add",
            &format!("{PUBLIC}/32"),
            "dev",
            &nat_if,
        ]);
        ip(&["-n", &it, "link", "set", &nat_if, "up"]);
        ip(&[
            "-n",
            &nx,
            "addr",
            "add",
            &format!("{ITSP}/24"),
            "dev",
            &guard.iface,
        ]);
        ip(&["-n", &nx, "link", "set", &guard.iface, "up"]);
        ip(&["-n", &nx, "route", "add", "default", "via", NAT_PUBLIC]);
        ip(&["-n", &mg, "route", "add", "10.99.3.0/24", "via", IT_IP]);
        lab.exec(&it, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let rules = format!(
            "table ip nat1to1 {{
  chain pre {{ type nat hook prerouting priority dstnat; ip daddr {PUBLIC} dnat to {MG_IT_IP}; }}
  chain post {{ type nat hook postrouting priority srcnat; ip saddr {MG_IT_IP} snat to {PUBLIC}; }}
}}"
        );
        let file = lab.path("nat.nft");
        std::fs::write(&file, rules).expect("write nat.nft");
        lab.exec(&it, &["nft", "-f", &file.display().to_string()]);
        guard
    }
}

impl Drop for NatItsp {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
    }
}

/// The lab config with the ITSP trunk behind the NAT: its peer on the far side, and
/// mediagate's public address advertised toward it.
fn nat_config() -> String {
    let lab = config(30);
    let itsp = "peers = [\"udp:10.99.2.2:5060\"]\nlocal = \"udp:10.99.2.1:5060\"\n";
    assert!(lab.contains(itsp), "lab.toml's itsp trunk changed");
    lab.replace(
        itsp,
        &format!(
            "peers = [\"udp:{ITSP}:5060\"]\nlocal = \"udp:{MG_IT_IP}:5060\"\nadvertise = \"{PUBLIC}\"\n"
        ),
    )
}

/// The lines of `text` (a SIP message) starting with `prefix`.
fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// The message of `s` that carries mediagate's SDP toward the ITSP: the INVITE it received
/// (a call toward it) or the 200 to its INVITE (a call from it).
fn toward_itsp(s: &Sipp, from: Origin) -> SipMsg {
    s.received()
        .into_iter()
        .find(|m| match from {
            Origin::Gw => m.is_request("INVITE"),
            Origin::Itsp => {
                m.status_code() == Some(200)
                    && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
            }
        })
        .unwrap_or_else(|| panic!("the ITSP got no SDP from mediagate\n{}", s.describe()))
}

/// A call through the NAT placed `from` one side, RTP echoed by the other, hung up by the
/// caller.
fn nat_call(test: &str, from: Origin) {
    let lab = Lab::new(test);
    let nat = NatItsp::new(&lab);
    let (itsp_role, pbx_role) = match from {
        Origin::Gw => ("uas_echo", "uac_rtp"),
        Origin::Itsp => ("uac_rtp", "uas_echo"),
    };
    let callee_opts = match from {
        Origin::Gw => SippOpts::new(nat.ns.clone(), itsp_role, ITSP),
        Origin::Itsp => SippOpts::new(lab.gw(), pbx_role, GW_IP),
    }
    .args(&["-rtp_echo"])
    .timeout(45);
    let mut uas = Sipp::spawn(&lab, "callee", callee_opts);
    uas.settle();
    let mg = Mediagate::start(&lab, &nat_config());
    let mut itsp_cap = Capture::start(&lab, &nat.ns, &nat.iface, "itsp");
    let mut pbx_cap = Capture::start(&lab, &lab.gw(), &lab.gw_if(), "pbx");
    let (pbx_remote, itsp_remote) = (format!("{MG_GW_IP}:5060"), format!("{PUBLIC}:5060"));
    let caller_opts = match from {
        Origin::Gw => SippOpts::new(lab.gw(), pbx_role, GW_IP).caller("+4930123", &pbx_remote),
        Origin::Itsp => {
            SippOpts::new(nat.ns.clone(), itsp_role, ITSP).caller("+4930123", &itsp_remote)
        }
    }
    .args(&["-m", "1"])
    .timeout(30);
    let mut uac = Sipp::spawn(&lab, "caller", caller_opts);
    let (flowing, st) = mg.wait_status(Duration::from_secs(8), |st| rtp_flowing(st, 1));
    assert!(flowing, "no RTP both ways through the NAT: {st:#}");
    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));
    let (itsp, pbx) = match from {
        Origin::Gw => (&uas, &uac),
        Origin::Itsp => (&uac, &uas),
    };

    // What the ITSP saw: only the public address, in Via (of requests), Contact, o= and c=.
    let sdp_msg = toward_itsp(itsp, from);
    if from == Origin::Gw {
        let top_via = sdp_msg.headers("Via").first().cloned().unwrap_or_default();
        assert!(
            top_via.starts_with(&format!("SIP/2.0/UDP {PUBLIC}:5060;")),
            "Via toward the ITSP must name {PUBLIC}:\n{}",
            sdp_msg.text
        );
    }
    assert_eq!(
        sdp_msg.header("Contact").as_deref(),
        Some(format!("<sip:mediagate@{PUBLIC}:5060>").as_str()),
        "Contact toward the ITSP:\n{}",
        sdp_msg.text
    );
    assert_eq!(
        sdp_msg.sdp_conn_addr().as_deref(),
        Some(PUBLIC),
        "c=:\n{}",
        sdp_msg.text
    );
    let origin = lines_with(&sdp_msg.text, "o=");
    assert!(
        origin.len() == 1 && origin[0].ends_with(&format!("IN IP4 {PUBLIC}")),
        "o= toward the ITSP must name {PUBLIC}: {origin:?}"
    );
    for m in itsp.received() {
        for l in lines_with(&m.text, "Via:")
            .into_iter()
            .chain(lines_with(&m.text, "Contact:"))
            .chain(lines_with(&m.text, "c="))
        {
            assert!(
                !l.contains(MG_IT_IP),
                "the private address leaked toward the ITSP: {l}\n{}",
                m.text
            );
        }
    }
    assert!(
        uas.received().iter().any(|m| m.is_request("BYE")),
        "the caller's BYE did not reach the callee\n{}",
        uas.describe()
    );

    // The PBX leg keeps mediagate's own address.
    let pbx_sdp = pbx
        .received()
        .into_iter()
        .find(|m| m.sdp_conn_addr().is_some())
        .unwrap_or_else(|| panic!("the PBX got no SDP\n{}", pbx.describe()));
    assert_eq!(
        pbx_sdp.sdp_conn_addr().as_deref(),
        Some(MG_GW_IP),
        "{}",
        pbx_sdp.text
    );
    assert!(
        pbx_sdp
            .header("Contact")
            .is_some_and(|c| c.contains(MG_GW_IP)),
        "{}",
        pbx_sdp.text
    );

    // RTP both ways through the NAT: the ITSP exchanged it with the public address and the
    // port it was given; the PBX exchanged it with mediagate.
    let itsp_port = sdp_msg.sdp_audio_port().expect("m=audio toward the ITSP");
    let desc = format!("{}\n{}", itsp_cap.describe(), pbx_cap.describe());
    let itsp_flows = itsp_cap.flows().clone();
    let itsp_rtp = sa(ITSP, SIPP_MEDIA_PORT);
    let public = sa(PUBLIC, itsp_port);
    let to_itsp = itsp_flows.get(&(public, itsp_rtp)).copied().unwrap_or(0);
    let from_itsp = itsp_flows.get(&(itsp_rtp, public)).copied().unwrap_or(0);
    assert!(
        to_itsp > 100 && from_itsp > 100,
        "RTP at the ITSP ({to_itsp} in, {from_itsp} out)\n{desc}"
    );
    assert_eq!(
        packets_from_ip(&itsp_flows, MG_IT_IP),
        0,
        "a packet from the private address reached the ITSP\n{desc}"
    );
    let to_pbx = flows_from(
        pbx_cap.flows(),
        MG_GW_IP,
        MEDIA_PORTS,
        sa(GW_IP, SIPP_MEDIA_PORT),
    );
    assert!(
        to_pbx.len() == 1 && to_pbx[0].1 > 100,
        "RTP from mediagate to the PBX: {to_pbx:?}\n{desc}"
    );
}

#[test]
fn call_to_the_itsp_through_one_to_one_nat() {
    nat_call("nat_to_itsp", Origin::Gw);
}

#[test]
fn call_from_the_itsp_through_one_to_one_nat() {
    nat_call("nat_from_itsp", Origin::Itsp);
}
