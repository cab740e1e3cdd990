//! Per-message costs of the control plane's hot functions: SIP parse and print, SDP parse and
//! anchoring, one whole call set-up through the B2BUA state machine, and a whole confirmed
//! call with and without the call-state journal (`media.handover`).

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mediagate::config::{self, Transport};
use mediagate::sdp::{Anchor, Sdp};
use mediagate::signalling::journal::Journal;
use mediagate::sip::b2bua::journal::JournalEntry;
use mediagate::sip::b2bua::B2bua;
use mediagate::sip::dialog::response_to;
use mediagate::sip::message::{Message, Method, StartLine};
use mediagate::sip::transaction::Target;

fn invite() -> Vec<u8> {
    include_str!("../tests/data/sip/invite_from_pbx.txt")
        .replace('\n', "\r\n")
        .into_bytes()
}

fn sip(c: &mut Criterion) {
    let bytes = invite();
    c.bench_function("sip_parse_invite", |b| {
        b.iter(|| Message::parse_datagram(black_box(&bytes)).unwrap())
    });
    let msg = Message::parse_datagram(&bytes).unwrap();
    c.bench_function("sip_print_invite", |b| {
        b.iter(|| black_box(&msg).to_bytes())
    });
}

fn sdp(c: &mut Criterion) {
    let msg = Message::parse_datagram(&invite()).unwrap();
    c.bench_function("sdp_parse", |b| {
        b.iter(|| Sdp::parse(black_box(&msg.body)).unwrap())
    });
    let sdp = Sdp::parse(&msg.body).unwrap();
    let anchor = Anchor {
        address: "10.99.2.1".parse().unwrap(),
        rtp_ports: &[30000],
        session_id: 1,
        session_version: 1,
    };
    c.bench_function("sdp_anchor", |b| {
        b.iter(|| black_box(&sdp).anchored(&anchor).unwrap())
    });
}

/// One call set-up (INVITE in, 100 + INVITE out, 200 in, 200 out) and teardown by 486 of the
/// next, measured through the sans-IO core without sockets.
fn call_setup(c: &mut Criterion) {
    let config = config::parse("lab.toml", include_str!("../tests/data/lab.toml")).unwrap();
    let mut core = B2bua::new(Arc::new(config));
    let pbx = Target {
        transport: Transport::Udp,
        remote: "10.99.1.2:5060".parse().unwrap(),
        local: "10.99.1.1:5060".parse().unwrap(),
    };
    let itsp = Target {
        transport: Transport::Udp,
        remote: "10.99.2.2:5060".parse().unwrap(),
        local: "10.99.2.1:5060".parse().unwrap(),
    };
    let template = Message::parse_datagram(&invite()).unwrap();
    let mut n = 0u64;
    c.bench_function("b2bua_call_setup_and_reject", |b| {
        b.iter(|| {
            n += 1;
            let mut inv = template.clone();
            inv.set_header(
                "Via",
                format!("SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK{n}"),
            );
            inv.set_header("Call-ID", format!("bench-{n}"));
            let now = Instant::now();
            core.handle_message(inv, pbx, now);
            let out: Vec<_> = core.drain_transmits().collect();
            let to_b = out.into_iter().find(|t| t.target == itsp).unwrap().message;
            let busy = response_to(&to_b, 486, "Busy Here", Some("t"));
            core.handle_message(busy, itsp, now);
            core.drain_transmits().for_each(drop);
            drop(core.drain_media_commands());
        })
    });
}

/// SIP targets of the lab's PBX and ITSP, as mediagate sees them.
fn lab_targets() -> (Target, Target) {
    let t = |remote: &str, local: &str| Target {
        transport: Transport::Udp,
        remote: remote.parse().unwrap(),
        local: local.parse().unwrap(),
    };
    (
        t("10.99.1.2:5060", "10.99.1.1:5060"),
        t("10.99.2.2:5060", "10.99.2.1:5060"),
    )
}

/// The one message of `out` sent to `target`.
fn sent_to(core: &mut B2bua, target: Target) -> Message {
    let out: Vec<_> = core.drain_transmits().collect();
    out.into_iter()
        .find(|t| t.target == target)
        .unwrap()
        .message
}

/// Call `n` confirmed and hung up (INVITE, 200, ACK, BYE from the caller, 200 from the
/// callee) through the sans-IO core; returns its journal entries (none without handover).
fn confirmed_call_once(core: &mut B2bua, template: &Message, n: u64) -> Vec<JournalEntry> {
    let (pbx, itsp) = lab_targets();
    let answer_sdp = b"v=0\r\no=callee 1 1 IN IP4 10.99.2.2\r\ns=-\r\nc=IN IP4 10.99.2.2\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\n";
    let now = Instant::now();
    let mut inv = template.clone();
    inv.set_header(
        "Via",
        format!("SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK{n}"),
    );
    inv.set_header("Call-ID", format!("bench-{n}"));
    core.handle_message(inv.clone(), pbx, now);
    let to_b = sent_to(core, itsp);
    let mut ok = response_to(&to_b, 200, "OK", Some("t"));
    ok.push_header("Contact", "<sip:callee@10.99.2.2:5060>".into());
    ok.push_header("Content-Type", "application/sdp".into());
    ok.body = answer_sdp.to_vec();
    core.handle_message(ok, itsp, now);
    let ok_a = sent_to(core, pbx);
    let mut entries = Vec::new();
    for (method, cseq) in [("ACK", 1), ("BYE", 2)] {
        let mut req = inv.clone();
        req.start = StartLine::Request {
            method: Method::parse(method),
            uri: "sip:mediagate@10.99.1.1:5060".into(),
        };
        req.set_header(
            "Via",
            format!("SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK{n}{method}"),
        );
        req.set_header("To", ok_a.header("To").unwrap().to_string());
        req.set_header("CSeq", format!("{cseq} {method}"));
        req.body.clear();
        req.remove_headers("Content-Type");
        core.handle_message(req, pbx, now);
        entries.extend(core.drain_journal());
    }
    let bye_b = sent_to(core, itsp);
    core.handle_message(response_to(&bye_b, 200, "OK", None), itsp, now);
    core.drain_transmits().for_each(drop);
    drop(core.drain_media_commands());
    drop(core.drain_cdrs());
    entries
}

/// [`confirmed_call_once`] benchmarked, with `handover` its journal entries (one `up`, one
/// `end`) appended to a file in the temporary directory as the control loop does.
fn confirmed_call(c: &mut Criterion, name: &str, handover: bool) {
    let mut text = include_str!("../tests/data/lab.toml").to_string();
    if handover {
        text = text.replace("[media]", "[media]\nhandover = true");
    }
    let mut core = B2bua::new(Arc::new(config::parse("lab.toml", &text).unwrap()));
    let path = std::env::temp_dir().join(format!("mg-bench-journal-{}", std::process::id()));
    let mut journal = Journal::compact(&path, &[]).unwrap();
    let template = Message::parse_datagram(&invite()).unwrap();
    let mut n = 0u64;
    c.bench_function(name, |b| {
        b.iter(|| {
            n += 1;
            journal.append(&confirmed_call_once(&mut core, &template, n));
        })
    });
    let _ = std::fs::remove_file(&path);
}

fn journal(c: &mut Criterion) {
    confirmed_call(c, "b2bua_confirmed_call", false);
    confirmed_call(c, "b2bua_confirmed_call_journalled", true);
    let text =
        include_str!("../tests/data/lab.toml").replace("[media]", "[media]\nhandover = true");
    let mut core = B2bua::new(Arc::new(config::parse("lab.toml", &text).unwrap()));
    let template = Message::parse_datagram(&invite()).unwrap();
    let entries = confirmed_call_once(&mut core, &template, 0);
    assert_eq!(entries.len(), 2, "one up and one end per call");
    // The journal's own cost per call: serialising and appending its two lines.
    let path = std::env::temp_dir().join(format!("mg-bench-append-{}", std::process::id()));
    let mut journal = Journal::compact(&path, &[]).unwrap();
    c.bench_function("journal_append_one_call", |b| {
        b.iter(|| journal.append(black_box(&entries)))
    });
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, sip, sdp, call_setup, journal);
criterion_main!(benches);
