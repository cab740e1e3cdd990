//! Per-message costs of the control plane's hot functions: SIP parse and print, SDP parse and
//! anchoring, and one whole call set-up through the B2BUA state machine.

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mediagate::config::{self, Transport};
use mediagate::sdp::{Anchor, Sdp};
use mediagate::sip::b2bua::B2bua;
use mediagate::sip::dialog::response_to;
use mediagate::sip::message::Message;
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

criterion_group!(benches, sip, sdp, call_setup);
criterion_main!(benches);
