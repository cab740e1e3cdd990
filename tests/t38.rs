//! T.38 fax through mediagate (issue 7): a sipp call whose caller re-INVITEs with a T.38 line
//! (`m=image 6400 udptl t38`), once switching to fax (the audio line disabled, port 0) and once
//! keeping audio beside it. The image line is anchored both ways (mediagate's address and a
//! port of its range in what each side receives) and UDPTL datagrams that the test sends from
//! each side's SDP address to mediagate's anchored port come out on the other side, from the
//! other anchored port, unchanged.
//!
//!   gw (10.99.1.2, "pbx" trunk) -- 10.99.1.1 [mediagate] 10.99.2.1 -- it (10.99.2.2, "itsp")
//!
//! These tests need root; they fail (never skip) without it.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";
/// The T.38 port both sipp scenarios put in their `m=image` line (tests/data/sipp/*_t38.xml).
const T38_PORT: u16 = 6400;

/// The 200 answering the re-INVITE (CSeq 2) among what `s` received, once it has arrived.
fn reinvite_ok(s: &Sipp) -> Option<SipMsg> {
    s.received()
        .into_iter()
        .find(|m| m.status_code() == Some(200) && m.header("CSeq").as_deref() == Some("2 INVITE"))
}

/// The re-INVITE (CSeq 2) among what `s` received.
fn reinvite(s: &Sipp) -> Option<SipMsg> {
    s.received()
        .into_iter()
        .find(|m| m.is_request("INVITE") && m.header("CSeq").as_deref() == Some("2 INVITE"))
}

/// mediagate's anchor of the T.38 line in `m`, checked to be on `mg_ip` and in its range.
fn t38_anchor(m: &SipMsg, mg_ip: &str) -> SocketAddr {
    assert_eq!(m.sdp_conn_addr().as_deref(), Some(mg_ip), "{}", m.text);
    let port = m
        .sdp_port("image")
        .unwrap_or_else(|| panic!("no m=image in\n{}", m.text));
    assert!(
        MEDIA_PORTS.contains(&port),
        "image port {port} not anchored:\n{}",
        m.text
    );
    assert!(m.body().contains("udptl t38"), "{}", m.text);
    sa(mg_ip, port).into()
}

/// Sends `datagram` from `from` to `anchor` and returns what `to` receives (and from where).
fn through(
    from: &UdpSocket,
    anchor: SocketAddr,
    to: &UdpSocket,
    datagram: &[u8],
) -> (Vec<u8>, SocketAddr) {
    from.send_to(datagram, anchor).unwrap();
    to.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    let (n, src) = to
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("UDPTL sent to {anchor} not relayed: {e}"));
    (buf[..n].to_vec(), src)
}

/// A call re-INVITEd to T.38 with the audio line on `audio_port` (0: switched off; 6000: kept).
fn fax_call(test: &str, audio_port: &str) {
    require_root_and_tools();
    let lab = Lab::new(test);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), "uas_t38", IT_IP)
            .args(&["-key", "audio_port", audio_port])
            .timeout(30),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config(30));
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), "uac_t38", GW_IP)
            .caller(DIALLED, &remote)
            .args(&["-m", "1", "-key", "audio_port", audio_port])
            .timeout(30),
    );
    let fax_gw = bind_in(&lab.gw(), &format!("{GW_IP}:{T38_PORT}"));
    let fax_it = bind_in(&lab.it(), &format!("{IT_IP}:{T38_PORT}"));
    wait_for(Duration::from_secs(8), "the re-INVITE answered", || {
        reinvite(&uas).is_some() && reinvite_ok(&uac).is_some()
    });
    let (offer, answer) = (reinvite(&uas).unwrap(), reinvite_ok(&uac).unwrap());
    let it_anchor = t38_anchor(&offer, MG_IT_IP);
    let gw_anchor = t38_anchor(&answer, MG_GW_IP);
    assert!(
        !offer.text.contains(GW_IP) && !answer.text.contains(IT_IP),
        "topology leaked"
    );
    // The audio line as offered: disabled, or still anchored.
    let audio = |m: &SipMsg| m.sdp_audio_port().expect("an audio line");
    if audio_port == "0" {
        assert_eq!((audio(&offer), audio(&answer)), (0, 0));
    } else {
        assert!(MEDIA_PORTS.contains(&audio(&offer)) && MEDIA_PORTS.contains(&audio(&answer)));
        assert_ne!(
            audio(&offer),
            it_anchor.port(),
            "audio and image have their own ports"
        );
    }

    // UDPTL both ways through the anchored ports (an IFP packet: seq 0, t30 indicator).
    let ifp = [0x00, 0x00, 0x02, 0x00, 0x01, 0x00];
    let (got, src) = through(&fax_gw, gw_anchor, &fax_it, &ifp);
    assert_eq!((got.as_slice(), src), (&ifp[..], it_anchor));
    let back = [0x00, 0x01, 0x03, 0x80, 0x05, 0x00, 0x00];
    let (got, src) = through(&fax_it, it_anchor, &fax_gw, &back);
    assert_eq!((got.as_slice(), src), (&back[..], gw_anchor));

    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));
}

#[test]
fn a_reinvite_switching_to_t38_is_anchored_and_relays_udptl() {
    fax_call("t38only", "0");
}

#[test]
fn a_reinvite_adding_t38_beside_audio_is_anchored_and_relays_udptl() {
    fax_call("t38both", "6000");
}
