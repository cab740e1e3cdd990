//! RFC 4475 SIP torture messages (and RFC 5118's IPv6 ones) against a running mediagate.
//!
//! Each message of `tests/data/torture/` (see the README there for where the bytes come from)
//! is sent over UDP from the PBX trunk's peer address in the lab, followed by an OPTIONS probe
//! from the same socket. Every response that arrives before the probe's 200 is the answer to
//! the torture message, so the test needs no sleeps, and a missing answer to the probe means
//! mediagate stopped answering (crashed, hung, or lost its socket).
//!
//! The expectation per message is the RFC's own discussion of it. Where the RFC allows several
//! answers the table lists them all; "accepted" messages are recognised by the answer the B2BUA
//! gives to a well-formed request in the lab (404: no route for that user, 481: in-dialog
//! request for no dialog, 405/501: method not served, 200: OPTIONS).

mod common;

use std::net::SocketAddrV4;

use mediagate::sip::message::Message;

use common::*;

/// What the RFC says a receiver does with a message.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Exactly one final response, with one of these codes (provisional ones are ignored).
    Answer(&'static [u16]),
    /// Exactly one final response, with this code and this value of this header: the refusals
    /// whose header tells the sender what would have been accepted (RFC 3261 §8.2.2.3, §8.2.3).
    AnswerNaming(u16, &'static str, &'static str),
    /// No response at all (responses that match no transaction, unparseable responses).
    Dropped,
    /// Its top Via branch, sent-by and method are those of the named earlier message, so RFC
    /// 3261 §17.2.3 makes it a retransmission of that transaction: it is answered (again) to
    /// where that one came from, never here.
    Retransmits(&'static str),
}

use Expect::{Answer, AnswerNaming, Dropped, Retransmits};

/// (file in tests/data/torture without `.dat`, RFC 4475 section or RFC 5118's, expectation, why)
const CASES: &[(&str, &str, Expect, &str)] = &[
    // 3.1.1 Valid messages: parsed and handled like any request.
    (
        "wsinv",
        "3.1.1.1",
        Answer(&[481]),
        "valid; its To has a tag: a request in no dialog",
    ),
    (
        "intmeth",
        "3.1.1.2",
        Answer(&[501]),
        "valid; an unknown method (RFC: endpoints answer 501)",
    ),
    (
        "esc01",
        "3.1.1.3",
        Answer(&[404]),
        "valid; no route for that user",
    ),
    (
        "escnull",
        "3.1.1.4",
        Answer(&[405]),
        "valid REGISTER; mediagate is no registrar",
    ),
    (
        "esc02",
        "3.1.1.5",
        Answer(&[501]),
        "RE%47IST%45R is an unknown method, not REGISTER",
    ),
    ("lwsdisp", "3.1.1.6", Answer(&[200]), "valid OPTIONS"),
    (
        "longreq",
        "3.1.1.7",
        Answer(&[404]),
        "valid; top Via without branch (RFC 2543 matching)",
    ),
    (
        "dblreq",
        "3.1.1.8",
        Answer(&[405]),
        "only the REGISTER; the trailing INVITE is ignored",
    ),
    ("semiuri", "3.1.1.9", Answer(&[200]), "valid OPTIONS"),
    ("transports", "3.1.1.10", Answer(&[200]), "valid OPTIONS"),
    (
        "mpart01",
        "3.1.1.11",
        Answer(&[405]),
        "valid MESSAGE with a binary part; a method the B2BUA does not serve",
    ),
    (
        "unreason",
        "3.1.1.12",
        Dropped,
        "valid response with a UTF-8 reason, but to no transaction",
    ),
    (
        "noreason",
        "3.1.1.13",
        Dropped,
        "valid response, but to no transaction",
    ),
    // 3.1.2 Invalid messages.
    (
        "badinv01",
        "3.1.2.1",
        Answer(&[400]),
        "extraneous separators in Via",
    ),
    (
        "clerr",
        "3.1.2.2",
        Answer(&[400]),
        "Content-Length larger than the datagram",
    ),
    ("ncl", "3.1.2.3", Answer(&[400]), "negative Content-Length"),
    ("scalar02", "3.1.2.4", Answer(&[400]), "CSeq beyond 2^32"),
    (
        "scalarlg",
        "3.1.2.5",
        Dropped,
        "a response with overlarge values: discarded",
    ),
    (
        "quotbal",
        "3.1.2.6",
        Answer(&[400]),
        "unterminated quoted string in To",
    ),
    (
        "ltgtruri",
        "3.1.2.7",
        Answer(&[400]),
        "Request-URI in angle brackets",
    ),
    (
        "lwsruri",
        "3.1.2.8",
        Answer(&[400]),
        "LWS inside the Request-URI",
    ),
    (
        "lwsstart",
        "3.1.2.9",
        Answer(&[400]),
        "several SP between request-line elements",
    ),
    (
        "trws",
        "3.1.2.10",
        Answer(&[400]),
        "SP after SIP/2.0 in the request line",
    ),
    (
        "escruri",
        "3.1.2.11",
        Answer(&[400]),
        "escaped headers in the Request-URI (400 allowed)",
    ),
    ("baddate", "3.1.2.12", Answer(&[400]), "Date not in GMT"),
    (
        "badaspec",
        "3.1.2.14",
        Answer(&[200, 400]),
        "spaces inside <>; liberal acceptance allowed",
    ),
    (
        "regbadct",
        "3.1.2.13",
        Answer(&[400, 405]),
        "escaped header in an addr-spec Contact: 400, or a non-registrar's 405 before it looks",
    ),
    (
        "baddn",
        "3.1.2.15",
        Answer(&[400]),
        "unquoted display name with a comma",
    ),
    ("badvers", "3.1.2.16", Answer(&[505]), "SIP/7.0"),
    (
        "mismatch01",
        "3.1.2.17",
        Answer(&[400]),
        "CSeq method differs from the request's",
    ),
    (
        "mismatch02",
        "3.1.2.18",
        Answer(&[400, 501]),
        "unknown method, CSeq mismatch",
    ),
    (
        "bigcode",
        "3.1.2.19",
        Dropped,
        "response code of 4294967301",
    ),
    // 3.2 Transaction layer.
    (
        "badbranch",
        "3.2.1",
        Answer(&[200, 400]),
        "bare magic cookie as branch",
    ),
    // 3.3 Application layer.
    (
        "insuf",
        "3.3.1",
        Answer(&[400]),
        "To, From and Call-ID missing",
    ),
    (
        "unkscm",
        "3.3.2",
        Answer(&[416]),
        "unknown Request-URI scheme",
    ),
    (
        "novelsc",
        "3.3.3",
        Answer(&[416]),
        "a scheme mediagate does not serve",
    ),
    (
        "unksm2",
        "3.3.4",
        Answer(&[405]),
        "well-formed REGISTER (unknown schemes only in To/From/Contact); no registrar here",
    ),
    (
        "bext01",
        "3.3.5",
        AnswerNaming(
            420,
            "Unsupported",
            "nothingSupportsThis, nothingSupportsThisEither",
        ),
        "Require names extensions a UAS does not support (Proxy-Require is for proxies)",
    ),
    (
        "invut",
        "3.3.6",
        AnswerNaming(415, "Accept", "application/sdp"),
        "a body type the UAS cannot read",
    ),
    (
        "regaut01",
        "3.3.7",
        Answer(&[405]),
        "REGISTER with an unknown Authorization scheme; no registrar here (a registrar: 401)",
    ),
    (
        "multi01",
        "3.3.8",
        Answer(&[400]),
        "several values in single-valued headers",
    ),
    (
        "mcl01",
        "3.3.9",
        Answer(&[400]),
        "two different Content-Lengths",
    ),
    (
        "bcast",
        "3.3.10",
        Dropped,
        "well-formed response (broadcast in the 2nd Via), but to no transaction",
    ),
    (
        "zeromf",
        "3.3.11",
        Answer(&[200]),
        "Max-Forwards 0 at its endpoint: answered as if positive (only a proxy says 483)",
    ),
    (
        "cparam01",
        "3.3.12",
        Answer(&[405]),
        "valid REGISTER; no registrar here",
    ),
    (
        "cparam02",
        "3.3.13",
        Retransmits("cparam01"),
        "valid REGISTER; cparam01's branch, sent-by and method",
    ),
    (
        "regescrt",
        "3.3.14",
        Retransmits("escnull"),
        "valid REGISTER; escnull's branch, sent-by and method",
    ),
    (
        "sdp01",
        "3.3.15",
        Answer(&[406]),
        "its Accept rules out the SDP an answer to an INVITE must carry",
    ),
    (
        "inv2543",
        "3.3.16",
        Answer(&[404]),
        "valid RFC 2543 INVITE (no branch, tags, Max-Forwards); no route for that user",
    ),
    // RFC 5118 (IPv6), sent over IPv4: parsing must not depend on the transport's family.
    (
        "ipv6-good",
        "5118 4.1",
        Answer(&[405]),
        "valid REGISTER; mediagate is no registrar",
    ),
    (
        "ipv6-bad",
        "5118 4.2",
        Answer(&[400]),
        "IPv6 Request-URI host without brackets",
    ),
    (
        "port-ambiguous",
        "5118 4.3",
        Retransmits("ipv6-good"),
        "well-formed (port inside the brackets); ipv6-good's branch",
    ),
    (
        "port-unambiguous",
        "5118 4.4",
        Retransmits("ipv6-good"),
        "valid REGISTER; ipv6-good's branch",
    ),
    (
        "via-received-param-with-delim",
        "5118 4.5",
        Answer(&[481]),
        "valid BYE, no dialog",
    ),
    (
        "via-received-param-no-delim",
        "5118 4.5",
        Answer(&[200]),
        "valid OPTIONS",
    ),
    (
        "ipv6-in-sdp",
        "5118 4.6",
        Answer(&[404]),
        "valid; no route for that user",
    ),
    (
        "mult-ip-in-header",
        "5118 4.7",
        Answer(&[481]),
        "valid BYE, no dialog",
    ),
    (
        "mult-ip-in-sdp",
        "5118 4.8",
        Answer(&[404]),
        "valid; no route for that user",
    ),
    (
        "ipv4-mapped-ipv6",
        "5118 4.9",
        Answer(&[404]),
        "valid; no route for that user",
    ),
    (
        "ipv6-bug-abnf-3-colons",
        "5118 4.10",
        Answer(&[200, 400]),
        "three colons before the IPv4 part: robust parsing allowed, rejection too",
    ),
    (
        "ipv6-correct-abnf-2-colons",
        "5118 4.10",
        Retransmits("ipv6-bug-abnf-3-colons"),
        "valid OPTIONS; the 3-colon message's branch, sent-by and method",
    ),
];

fn torture_bytes(name: &str) -> Vec<u8> {
    let path = repo_root().join(format!("tests/data/torture/{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn rfc4475_torture_messages_get_the_rfcs_answer_and_mediagate_keeps_answering() {
    let lab = Lab::new("torture");
    let mg = Mediagate::start(&lab, &config(30));
    let to = SocketAddrV4::new(MG_GW_IP.parse().unwrap(), 5060);
    let mut failures = Vec::new();
    for (i, &(name, section, expect, why)) in CASES.iter().enumerate() {
        // A socket per message, so that retransmitted answers to one never count for the next.
        let sock = udp_in(&lab.gw(), GW_IP);
        let finals: Vec<SipMsg> = responses_before_probe(&sock, to, &torture_bytes(name), name)
            .into_iter()
            .map(|r| SipMsg {
                received: true,
                text: String::from_utf8_lossy(&r).into_owned(),
                at: None,
            })
            .filter(|r| r.status_code().is_some_and(|c| c >= 200))
            .collect();
        let answers: Vec<u16> = finals.iter().filter_map(SipMsg::status_code).collect();
        let ok = match expect {
            Answer(codes) => answers.len() == 1 && codes.contains(&answers[0]),
            AnswerNaming(code, header, value) => {
                answers == [code] && finals[0].header(header).as_deref() == Some(value)
            }
            Dropped => answers.is_empty(),
            Retransmits(earlier) => answers.is_empty() && CASES[..i].iter().any(|c| c.0 == earlier),
        };
        if !ok {
            failures.push(format!(
                "{name} (RFC §{section}, {why}): expected {expect:?}, got {answers:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "torture messages not handled as RFC 4475 says:\n{}\nlog:\n{}",
        failures.join("\n"),
        mg.log_tail(40)
    );
    assert_idle_status(&mg.status());
}

/// Every torture message that parses prints and parses back to the same message: the SIP fuzz
/// target's invariant, on the inputs most likely to break it (`scripts/fuzz` seeds that target
/// with these files too).
#[test]
fn torture_messages_that_parse_print_and_parse_back() {
    let mut parsed = 0;
    for &(name, ..) in CASES {
        let Ok(mut msg) = Message::parse_datagram(&torture_bytes(name)) else {
            continue;
        };
        parsed += 1;
        let mut again = Message::parse_datagram(&msg.to_bytes())
            .unwrap_or_else(|e| panic!("{name}: the printed message does not parse: {e}"));
        msg.remove_headers("Content-Length");
        again.remove_headers("Content-Length");
        assert_eq!(msg, again, "{name}");
    }
    // Most of them are well-formed, and only the framing ones fail to parse at all.
    assert!(parsed > CASES.len() / 2, "only {parsed} parsed");
}
