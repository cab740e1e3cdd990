//! SIP capture over HEP v3: a real mediagate with `[capture] hep` carries a sipp call (namespace
//! lab, tests/data/lab.toml) while a small HEP v3 receiver of this test, bound inside the
//! mediagate namespace, decodes every datagram's chunks. Each SIP message the callee received is
//! there as sent by mediagate, with mediagate's and the callee's addresses and ports; the
//! caller's INVITE is there as received; every datagram is well-formed, carries the agent id,
//! SIP as protocol type and the Call-ID as correlation. RTCP: a sender report the test sends
//! on a call's anchored RTCP port is relayed and exported as HEP type 5 with Homer's JSON and
//! the caller's Call-ID, on the socket and the AF_XDP data planes. Per trunk: a trunk with `hep = false`
//! is not captured and one with its own collector goes there instead of `[capture] hep`. Needs
//! root; fails (never skips) without it.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mediagate::control::bencode::dict;

use common::*;

const DIALLED: &str = "+4930123";
const AGENT_ID: u32 = 42;

/// One decoded HEP v3 datagram: chunk type → value (vendor 0 only; a test receiver).
#[derive(Debug)]
struct Hep {
    chunks: BTreeMap<u16, Vec<u8>>,
}

impl Hep {
    /// Decodes `HEP3`, the total length and every chunk, checking each length.
    fn decode(d: &[u8]) -> Result<Hep, String> {
        if d.len() < 6 || &d[..4] != b"HEP3" {
            return Err(format!("no HEP3 header: {:?}", &d[..d.len().min(6)]));
        }
        let total = usize::from(u16::from_be_bytes([d[4], d[5]]));
        if total != d.len() {
            return Err(format!("length {total}, datagram {}", d.len()));
        }
        let mut chunks = BTreeMap::new();
        let mut at = 6;
        while at < d.len() {
            let head = d.get(at..at + 6).ok_or("truncated chunk header")?;
            let vendor = u16::from_be_bytes([head[0], head[1]]);
            let kind = u16::from_be_bytes([head[2], head[3]]);
            let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
            let body = d
                .get(at + 6..at + len)
                .ok_or(format!("chunk {kind:#x} overruns"))?;
            if vendor != 0 || len < 6 || chunks.insert(kind, body.to_vec()).is_some() {
                return Err(format!("bad or repeated chunk {vendor}/{kind:#x}"));
            }
            at += len;
        }
        Ok(Hep { chunks })
    }

    fn chunk(&self, kind: u16) -> &[u8] {
        self.chunks
            .get(&kind)
            .unwrap_or_else(|| panic!("no chunk {kind:#x} in {self:?}"))
    }

    fn u8(&self, kind: u16) -> u8 {
        self.chunk(kind)[0]
    }

    fn u16(&self, kind: u16) -> u16 {
        u16::from_be_bytes(self.chunk(kind).try_into().expect("2 bytes"))
    }

    fn u32(&self, kind: u16) -> u32 {
        u32::from_be_bytes(self.chunk(kind).try_into().expect("4 bytes"))
    }

    fn addr(&self, ip: u16, port: u16) -> SocketAddr {
        let o: [u8; 4] = self.chunk(ip).try_into().expect("IPv4 address");
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(o), self.u16(port)))
    }

    fn src(&self) -> SocketAddr {
        self.addr(0x0003, 0x0007)
    }

    fn dst(&self) -> SocketAddr {
        self.addr(0x0004, 0x0008)
    }

    fn sip(&self) -> String {
        String::from_utf8(self.chunk(0x000f).to_vec()).expect("SIP payload is text")
    }
}

/// Everything the receiver got, read until it stays quiet for a second (bounded).
fn drain(sock: &UdpSocket) -> Vec<Hep> {
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match sock.recv(&mut buf) {
            Ok(n) => out.push(Hep::decode(&buf[..n]).unwrap_or_else(|e| panic!("{e}"))),
            Err(_) => break,
        }
    }
    out
}

#[test]
fn sip_messages_are_mirrored_as_hep_v3() {
    require_root_and_tools();
    let lab = Lab::new("hep");
    let receiver = bind_in(&lab.mg(), "127.0.0.1:0");
    let collector = receiver.local_addr().unwrap();
    let mut uas = Sipp::spawn(&lab, "itsp", SippOpts::new(lab.it(), "uas_echo", IT_IP));
    uas.settle();
    let started = SystemTime::now();
    let mut mg = Mediagate::start(
        &lab,
        &format!(
            "{}\n[capture]\nhep = \"udp:{collector}\"\nagent_id = {AGENT_ID}\n",
            config(30)
        ),
    );
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &lab,
        "pbx",
        SippOpts::new(lab.gw(), "uac_short", GW_IP)
            .caller(DIALLED, &remote)
            .args(&["-m", "1", "-d", "200"])
            .timeout(15),
    );
    uac.assert_ok(Some(&mg));
    mg.assert_idle(Duration::from_secs(5));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    let captured = drain(&receiver);
    let ended = SystemTime::now();
    assert!(mg.stop().expect("running").success());

    let since = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    for h in &captured {
        assert_eq!(h.u8(0x0001), 2, "IPv4");
        assert_eq!(h.u8(0x0002), 17, "UDP");
        assert_eq!(h.u8(0x000b), 1, "SIP");
        assert_eq!(h.u32(0x000c), AGENT_ID);
        let t = u64::from(h.u32(0x0009));
        assert!(since(started) <= t && t <= since(ended), "timestamp {t}");
        assert!(h.u32(0x000a) < 1_000_000, "microseconds");
        let sip = h.sip();
        let call_id = sip
            .lines()
            .find_map(|l| l.strip_prefix("Call-ID: "))
            .unwrap_or_else(|| panic!("no Call-ID in\n{sip}"));
        assert_eq!(h.chunk(0x0011), call_id.as_bytes(), "correlation id");
    }

    // What mediagate sent to the callee, message for message, in order.
    let (mg_it, it) = (sa(MG_IT_IP, 5060).into(), sa(IT_IP, 5060).into());
    let to_callee: Vec<String> = captured
        .iter()
        .filter(|h| h.src() == mg_it && h.dst() == it)
        .map(|h| h.sip().lines().next().unwrap_or_default().to_string())
        .collect();
    let callee_got: Vec<String> = uas
        .received()
        .iter()
        .map(|m| m.start_line().to_string())
        .collect();
    assert_eq!(to_callee, callee_got, "HEP of what the callee received");
    assert!(
        to_callee
            .first()
            .is_some_and(|l| l == &format!("INVITE sip:{DIALLED}@{IT_IP}:5060 SIP/2.0")),
        "{to_callee:?}"
    );
    // The callee's answers, as received.
    assert!(
        captured
            .iter()
            .any(|h| h.src() == it && h.dst() == mg_it && h.sip().starts_with("SIP/2.0 200 OK")),
        "no 200 OK from the callee captured"
    );
    // The caller's INVITE, as received, with the caller's Call-ID.
    let caller_call_id = uac
        .messages()
        .into_iter()
        .find(|m| !m.received && m.is_request("INVITE"))
        .and_then(|m| m.header("Call-ID"))
        .expect("the caller's INVITE");
    let (gw, mg_gw) = (sa(GW_IP, 5060).into(), sa(MG_GW_IP, 5060).into());
    let invite = captured
        .iter()
        .find(|h| h.src() == gw && h.dst() == mg_gw && h.sip().starts_with("INVITE "))
        .expect("the caller's INVITE captured");
    assert_eq!(invite.chunk(0x0011), caller_call_id.as_bytes());
    assert!(
        captured
            .iter()
            .any(|h| h.src() == mg_gw && h.dst() == gw && h.sip().starts_with("SIP/2.0 200 OK")),
        "no 200 OK to the caller captured"
    );
}

#[test]
fn a_trunk_can_be_left_out_or_sent_to_its_own_collector() {
    require_root_and_tools();
    let lab = Lab::new("heptrunk");
    let global = bind_in(&lab.mg(), "127.0.0.1:0");
    let own = bind_in(&lab.mg(), "127.0.0.1:0");
    let mut uas = Sipp::spawn(&lab, "itsp", SippOpts::new(lab.it(), "uas_echo", IT_IP));
    uas.settle();
    let (pbx_local, itsp_local) = (
        format!("local = \"udp:{MG_GW_IP}:5060\"\n"),
        format!("local = \"udp:{MG_IT_IP}:5060\"\n"),
    );
    let base = config(30);
    assert!(base.contains(&pbx_local) && base.contains(&itsp_local));
    let text = base
        .replace(&pbx_local, &format!("{pbx_local}hep = false\n"))
        .replace(
            &itsp_local,
            &format!("{itsp_local}hep = \"udp:{}\"\n", own.local_addr().unwrap()),
        );
    let mut mg = Mediagate::start(
        &lab,
        &format!(
            "{text}\n[capture]\nhep = \"udp:{}\"\n",
            global.local_addr().unwrap()
        ),
    );
    short_call(&lab, &mg, "pbx", DIALLED, (5060, 6000));
    mg.assert_idle(Duration::from_secs(5));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    let (global, own) = (drain(&global), drain(&own));
    assert!(mg.stop().expect("running").success());

    assert!(
        global.is_empty(),
        "every peer's trunk says otherwise: {global:?}"
    );
    let it = sa(IT_IP, 5060).into();
    assert!(
        own.iter().all(|h| h.src() == it || h.dst() == it),
        "only the ITSP trunk's messages: {own:?}"
    );
    let callee_got = uas.received().len();
    let sent_to_callee = own.iter().filter(|h| h.dst() == it).count();
    assert_eq!(sent_to_callee, callee_got, "{own:?}");
    assert!(own
        .iter()
        .any(|h| h.src() == it && h.sip().starts_with("SIP/2.0 200 OK")));
}

/// A RTCP sender report from `ssrc` with one report block (about SSRC 7, 3 packets lost).
fn sender_report(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x81, 200, 0, 12];
    for w in [ssrc, 3_900_000_000, 0, 8000, 50, 8000, 7] {
        p.extend_from_slice(&w.to_be_bytes());
    }
    p.extend_from_slice(&[0, 0, 0, 3]);
    for w in [100u32, 12, 0, 0] {
        p.extend_from_slice(&w.to_be_bytes());
    }
    p
}

/// A call on `dataplane` whose caller side sends one sender report on mediagate's RTCP port:
/// it is exported as HEP type 5, Homer's JSON, with the caller's Call-ID.
fn rtcp_exported(test: &str, dataplane: Dataplane) {
    require_root_and_tools();
    let lab = Lab::new(test);
    let receiver = bind_in(&lab.mg(), "127.0.0.1:0");
    let collector = receiver.local_addr().unwrap();
    let mut uas = Sipp::spawn(
        &lab,
        "itsp",
        SippOpts::new(lab.it(), "uas_echo", IT_IP).args(&["-rtp_echo"]),
    );
    uas.settle();
    let mut mg = Mediagate::start(
        &lab,
        &format!(
            "{}\n[capture]\nhep = \"udp:{collector}\"\n",
            config_with(30, dataplane)
        ),
    );
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &lab,
        "pbx",
        SippOpts::new(lab.gw(), "uac_rtp", GW_IP)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    let (flowing, st) =
        mg.wait_status(Duration::from_secs(8), |st| media_flowing(st, 1, dataplane));
    assert!(flowing, "media did not flow: {st:#}");
    let rtcp_at: SocketAddr = st["calls"][0]["legs"][0]["streams"][0]["rtcp"]["local"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no RTCP address of leg A: {st:#}"));
    // The caller's side of the call sends a report (from the caller's IP, so it latches).
    let phone = bind_in(&lab.gw(), &format!("{GW_IP}:6301"));
    let report = sender_report(0xC0FFEE);
    phone.send_to(&report, rtcp_at).unwrap();
    uac.assert_ok(Some(&mg));
    mg.assert_idle(Duration::from_secs(5));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    let captured = drain(&receiver);
    assert!(mg.stop().expect("running").success());

    let rtcp: Vec<&Hep> = captured.iter().filter(|h| h.u8(0x000b) == 5).collect();
    assert_eq!(rtcp.len(), 1, "one report sent: {rtcp:?}");
    let h = rtcp[0];
    assert_eq!(h.src(), phone.local_addr().unwrap());
    assert_eq!(h.dst(), rtcp_at);
    let caller_call_id = uac
        .messages()
        .into_iter()
        .find(|m| !m.received && m.is_request("INVITE"))
        .and_then(|m| m.header("Call-ID"))
        .expect("the caller's INVITE");
    assert_eq!(h.chunk(0x0011), caller_call_id.as_bytes(), "correlation id");
    let json: serde_json::Value = serde_json::from_slice(h.chunk(0x000f)).expect("JSON payload");
    assert_eq!(json["type"], 200);
    assert_eq!(json["ssrc"], 0xC0FFEE);
    assert_eq!(json["sender_information"]["packets"], 50);
    assert_eq!(json["report_blocks"][0]["source_ssrc"], 7);
    assert_eq!(json["report_blocks"][0]["packets_lost"], 3);
    assert_eq!(json["report_blocks"][0]["highest_seq_no"], 100);
}

#[test]
fn relayed_rtcp_reports_are_exported_as_hep_type_5() {
    rtcp_exported("heprtcp", Dataplane::Socket);
}

#[test]
fn rtcp_relayed_by_the_afxdp_tier_is_exported_too() {
    rtcp_exported("heprtcpx", Dataplane::Afxdp);
}

/// A call made over NG (as Kamailio would): the RTCP it relays is exported with the NG
/// `call-id` as correlation id, the Call-ID the proxy's own HEP carries.
#[test]
fn rtcp_of_ng_calls_is_exported_with_their_call_id() {
    require_root_and_tools();
    let lab = Lab::new("heprtcpng");
    let receiver = bind_in(&lab.mg(), "127.0.0.1:0");
    let collector = receiver.local_addr().unwrap();
    let config = config_with(30, Dataplane::Socket).replacen(
        "[control]\n",
        &format!("[control]\nng = \"{NG_ADDR}\"\n"),
        1,
    );
    let mut mg = Mediagate::start(
        &lab,
        &format!(
            "{config}\n[[media.interface]]\nname = \"gw\"\naddress = \"{MG_GW_IP}\"\n\
             [[media.interface]]\nname = \"it\"\naddress = \"{MG_IT_IP}\"\n\
             [capture]\nhep = \"udp:{collector}\"\n"
        ),
    );
    let mut ng = NgClient::new(&lab);
    let call_id = format!("ng-rtcp-{}", lab.prefix);
    let offer = ng.call(&dict([
        ("command", s("offer")),
        ("call-id", s(&call_id)),
        ("from-tag", s("caller")),
        ("sdp", s(&pcma_sdp(GW_IP, 6300))),
        ("direction", list(&["gw", "it"])),
    ]));
    ok_sdp(&offer, "offer");
    let answer = ng.call(&dict([
        ("command", s("answer")),
        ("call-id", s(&call_id)),
        ("from-tag", s("caller")),
        ("to-tag", s("callee")),
        ("sdp", s(&pcma_sdp(IT_IP, 7300))),
        ("direction", list(&["it", "gw"])),
    ]));
    let gw_port = audio_port(&ok_sdp(&answer, "answer"));
    // The offerer sends a report on mediagate's RTCP port toward it (from its SDP address, so
    // the stream latches); mediagate relays it to the answerer's RTCP port.
    let rtcp_at = SocketAddr::from((MG_GW_IP.parse::<Ipv4Addr>().unwrap(), gw_port + 1));
    let phone = bind_in(&lab.gw(), &format!("{GW_IP}:6301"));
    let callee = bind_in(&lab.it(), &format!("{IT_IP}:7301"));
    callee
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let report = sender_report(0xBEEF);
    phone.send_to(&report, rtcp_at).unwrap();
    let mut buf = [0u8; 1500];
    let n = callee
        .recv(&mut buf)
        .expect("the report relayed to the answerer");
    assert_eq!(&buf[..n], &report[..]);
    let captured = drain(&receiver);
    let deleted = ng.call(&dict([
        ("command", s("delete")),
        ("call-id", s(&call_id)),
        ("from-tag", s("caller")),
    ]));
    assert_eq!(
        deleted.get("result").and_then(|r| r.as_str()),
        Some("ok"),
        "{deleted:?}"
    );
    assert!(mg.stop().expect("running").success());

    let rtcp: Vec<&Hep> = captured.iter().filter(|h| h.u8(0x000b) == 5).collect();
    assert_eq!(rtcp.len(), 1, "one report sent: {captured:?}");
    let h = rtcp[0];
    assert_eq!(h.src(), phone.local_addr().unwrap());
    assert_eq!(h.dst(), rtcp_at);
    assert_eq!(h.chunk(0x0011), call_id.as_bytes(), "correlation id");
    let json: serde_json::Value = serde_json::from_slice(h.chunk(0x000f)).expect("JSON payload");
    assert_eq!(json["ssrc"], 0xBEEF);
}

#[test]
fn rtcp_of_kernel_tier_calls_is_exported_through_the_socket_tier() {
    rtcp_exported("heprtcpk", Dataplane::Kernel);
}
