//! RTP spray: while sipp calls with RTP run through mediagate, hosts that are no trunk peer (one
//! on each side) spray RTP-looking datagrams at the whole media port range. Latching learns a
//! source only from the SDP or signalling address and then accepts that source alone, so
//! nothing of the spray may reach either far side (counted in captures there), on every tier,
//! and the calls keep their media.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";
const CALLS: usize = 3;
/// The UDP payload length of every sprayed datagram: no packet of the calls has it (sipp's
/// RTP from its pcap is 252 bytes), so any packet of this length leaving mediagate is leaked
/// spray.
const SPRAY_LEN: usize = 333;
/// Times the whole port range is sprayed from each side.
const ROUNDS: u16 = 3;

/// An RTP header (version 2, PCMA) with sequence number `seq`, padded to `SPRAY_LEN`.
fn rtp_like(seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; SPRAY_LEN];
    p[0] = 0x80;
    p[1] = 8;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&0x5350_5241u32.to_be_bytes());
    p
}

fn spray(test: &str, dataplane: Dataplane) {
    let lab = Lab::new(test);
    lab.add_gw_addr(&format!("{GW_STRANGER_IP}/24"));
    lab.add_it_addr(&format!("{IT2_IP}/24"));
    let (caller, callee) = sides(&lab, Origin::Gw);
    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(callee.ns.clone(), "uas_echo", callee.peer_ip)
            .args(&["-rtp_echo"])
            .timeout(50),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config_with(30, dataplane));
    let mut caller_cap = Capture::start(&lab, &caller.ns, &caller.iface, "caller");
    let mut callee_cap = Capture::start(&lab, &callee.ns, &callee.iface, "callee");
    let remote = format!("{}:5060", caller.mg_ip);
    let calls = CALLS.to_string();
    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(caller.ns.clone(), "uac_rtp", caller.peer_ip)
            .caller(DIALLED, &remote)
            .args(&["-l", &calls, "-m", &calls, "-r", &calls])
            .timeout(40),
    );
    let (flowing, st) = mg.wait_status(Duration::from_secs(10), |st| {
        media_flowing(st, CALLS, dataplane)
    });
    assert!(flowing, "calls with media before the spray: {st:#}");
    assert_rtp_call_status(&st, CALLS, dataplane);

    let sprayers = [
        (udp_in(&lab.gw(), GW_STRANGER_IP), MG_GW_IP),
        (udp_in(&lab.it(), IT2_IP), MG_IT_IP),
    ];
    let mut sent = 0u64;
    for round in 0..ROUNDS {
        for port in MEDIA_PORTS {
            for (sock, mg_ip) in &sprayers {
                let to = SocketAddrV4::new(mg_ip.parse().unwrap(), port);
                if sock
                    .send_to(&rtp_like(round.wrapping_mul(1000) ^ port), to)
                    .is_ok()
                {
                    sent += 1;
                }
            }
        }
    }

    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));

    for (cap, side) in [(&mut caller_cap, &caller), (&mut callee_cap, &callee)] {
        let mg_ip = side.mg_ip;
        let packets = cap.packets().to_vec();
        let from_mg = |spray: bool| {
            packets
                .iter()
                .filter(|p| p.src.ip().to_string() == mg_ip && (p.len == Some(SPRAY_LEN)) == spray)
                .count()
        };
        assert_eq!(
            from_mg(true),
            0,
            "sprayed packets reached the {} side",
            side.peer_ip
        );
        let relayed = from_mg(false);
        assert!(
            relayed >= CALLS * 100,
            "media relayed to {} during the spray: {relayed} packets",
            side.peer_ip
        );
        let spray_seen = packets
            .iter()
            .filter(|p| p.dst.ip().to_string() == mg_ip && p.len == Some(SPRAY_LEN))
            .count();
        assert!(
            spray_seen > 0,
            "the capture on the {} side saw no spray at all ({sent} sent)",
            side.peer_ip
        );
    }
}

#[test]
fn rtp_spray_reaches_no_far_side_socket_tier() {
    spray("spray-socket", Dataplane::Socket);
}

#[test]
fn rtp_spray_reaches_no_far_side_kernel_tier() {
    spray("spray-kernel", Dataplane::Kernel);
}

#[test]
fn rtp_spray_reaches_no_far_side_afxdp_tier() {
    spray("spray-afxdp", Dataplane::Afxdp);
}
