//! Property tests for every parser: arbitrary input never panics, and what mediagate prints it
//! parses back to the same thing.

use mediagate::sdp::{Anchor, Sdp};
use mediagate::sip::message::{Header, Message, Method, StartLine};
use mediagate::sip::{advertise, header, validate};
use proptest::prelude::*;

/// What a transport and the B2BUA do with received bytes before any call sees them: parse,
/// then either the error answer (which must itself parse) or the request checks and the
/// transaction id. None of it may panic.
fn screen(data: &[u8]) {
    match Message::parse_datagram(data) {
        Err(e) => {
            if let Some(reply) = validate::reply_to_unparseable(data, &e) {
                Message::parse_datagram(&reply.to_bytes()).expect("error answers parse");
            }
        }
        Ok(msg) if msg.is_request() => {
            let _ = validate::check_request(&msg);
            let _ = header::transaction_id(&msg);
            // What the B2BUA writes into what it receives (received/rport) and sends (a
            // trunk's advertise address) keeps a message printable and parseable.
            for source in ["192.0.2.9:5070", "[fd00::9]:5070"] {
                let mut m = msg.clone();
                header::stamp_received(&mut m, source.parse().unwrap());
                let _ = header::transaction_id(&m);
                advertise::rewrite(
                    &mut m,
                    "10.0.0.1:5060".parse().unwrap(),
                    "203.0.113.5".parse().unwrap(),
                );
                Message::parse_datagram(&m.to_bytes()).expect("stamped message parses");
            }
        }
        Ok(_) => {}
    }
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,15}"
}

fn header_value() -> impl Strategy<Value = String> {
    // Printable text without CR/LF and without leading/trailing blanks (those are not
    // significant in SIP and are trimmed by the parser). Commas are avoided because Via, Route
    // and Record-Route split on them.
    "[!-+\\--~]([ !-+\\--~]{0,40}[!-+\\--~])?"
}

fn start_line() -> impl Strategy<Value = StartLine> {
    prop_oneof![
        (token(), "sip:[a-z0-9+]{1,10}@[a-z0-9.]{1,20}").prop_map(|(m, uri)| StartLine::Request {
            method: Method::parse(&m.to_ascii_uppercase()),
            uri,
        }),
        (100u16..700, "[A-Za-z ]{0,20}[A-Za-z]")
            .prop_map(|(code, reason)| StartLine::Response { code, reason }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        start_line(),
        prop::collection::vec((token(), header_value()), 0..12),
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(start, headers, body)| Message {
            start,
            headers: headers
                .into_iter()
                .filter(|(n, _)| {
                    // Names the parser canonicalises or that Content-Length overrides.
                    n.len() > 1 && !n.eq_ignore_ascii_case("content-length")
                })
                .map(|(name, value)| {
                    // Parse once to get the canonical name spelling.
                    let probe = format!("OPTIONS sip:a@b SIP/2.0\r\n{name}: x\r\n\r\n");
                    let name = Message::parse_datagram(probe.as_bytes())
                        .map(|m| m.headers[0].name.clone())
                        .unwrap_or(name);
                    let value = if matches!(name.as_str(), "Via" | "Route" | "Record-Route") {
                        value.replace(',', ";")
                    } else {
                        value
                    };
                    Header { name, value }
                })
                .collect(),
            body,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn sip_print_parse_round_trips(msg in message()) {
        let bytes = msg.to_bytes();
        // Printing always writes the real Content-Length; everything else must come back as is.
        let mut parsed = Message::parse_datagram(&bytes).unwrap();
        let declared = msg.body.len().to_string();
        prop_assert_eq!(parsed.header("Content-Length"), Some(declared.as_str()));
        parsed.remove_headers("Content-Length");
        prop_assert_eq!(&parsed, &msg);
        let (mut streamed, used) = Message::parse_stream(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        streamed.remove_headers("Content-Length");
        prop_assert_eq!(streamed, msg);
    }

    #[test]
    fn sip_parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        screen(&data);
        let _ = Message::parse_stream(&data);
    }

    #[test]
    fn sip_parsers_never_panic_on_near_messages(
        head in "(INVITE|SIP/2.0|ACK|BYE) [ -~]{0,30}\r\n",
        lines in prop::collection::vec("[ -~]{0,40}", 0..10),
        body in "[ -~\r\n]{0,80}",
    ) {
        let text = format!("{head}{}\r\n\r\n{body}", lines.join("\r\n"));
        screen(text.as_bytes());
        let _ = Message::parse_stream(text.as_bytes());
    }

    #[test]
    fn via_stamps_never_panic(
        via in prop_oneof![header_value(), "SIP/2.0/UDP [\\[\\]0-9a-f:.]{0,20}(;[a-z]{0,6}(=[ -~]{0,8})?){0,4}"],
    ) {
        let text = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: {via}\r\nContact: <sip:m@10.0.0.1:5060>\r\n\r\n"
        );
        screen(text.as_bytes());
    }

    #[test]
    fn sdp_parser_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Sdp::parse(&data);
    }

    #[test]
    fn sdp_anchor_round_trips(
        ports in prop::collection::vec(0u16..65000, 1..5),
        ip in any::<[u8; 4]>(),
        extra in prop::collection::vec("a=[a-z-]{1,10}:[ -~]{0,20}", 0..4),
        anchor_port in 1024u16..60000,
    ) {
        let ip = std::net::Ipv4Addr::from(ip);
        let mut text = format!("v=0\r\no=x 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n");
        for p in &ports {
            text.push_str(&format!("m=audio {p} RTP/AVP 0\r\n"));
            for e in &extra {
                text.push_str(e);
                text.push_str("\r\n");
            }
        }
        let sdp = Sdp::parse(text.as_bytes()).unwrap();
        let anchors: Vec<u16> = (0..ports.len()).map(|i| anchor_port + 2 * i as u16).collect();
        let out = sdp.anchored(&Anchor {
            address: "10.99.2.1".parse().unwrap(),
            rtp_ports: &anchors,
            session_id: 5,
            session_version: 2,
        }).unwrap();
        let again = Sdp::parse(&out).unwrap();
        prop_assert_eq!(again.media().len(), ports.len());
        for (i, m) in again.media().iter().enumerate() {
            let expected = if ports[i] == 0 { 0 } else { anchors[i] };
            prop_assert_eq!(m.rtp.port(), expected);
            prop_assert_eq!(m.rtp.ip().to_string(), "10.99.2.1");
        }
        for e in &extra {
            if !e.starts_with("a=rtcp:") && !e.starts_with("a=candidate:") {
                prop_assert!(String::from_utf8_lossy(&out).contains(e.as_str()));
            }
        }
    }

    #[test]
    fn config_parser_never_panics(text in "[ -~\n]{0,400}") {
        let _ = mediagate::config::parse("p.toml", &text);
    }
}
