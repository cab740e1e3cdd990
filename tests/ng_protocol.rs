//! The NG protocol server fed raw datagrams, as Kamailio's rtpengine module sends them: every
//! command, the retransmission cache, load limit, and malformed input answered with errors.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mediagate::config;
use mediagate::control::bencode::Value;
use mediagate::control::ng::NgServer;
use mediagate::media::session::Resources;
use mediagate::media::Command;
use mediagate::sdp::Sdp;

const CONFIG: &str = r#"
[sip]
listen = ["udp:127.0.0.1:5060"]
max_calls = 2
[media]
ports = "30000-30099"
[[media.interface]]
name = "internal"
address = "10.99.1.1"
[[media.interface]]
name = "external"
address = "10.99.2.1"
advertise = "203.0.113.5"
[control]
ng = "127.0.0.1:2223"
"#;

const OFFER_SDP: &str = "v=0\r\no=caller 1 1 IN IP4 10.99.1.2\r\ns=-\r\nc=IN IP4 10.99.1.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtcp-mux\r\na=ice-ufrag:abcd\r\na=sendrecv\r\n";
const ANSWER_SDP: &str = "v=0\r\no=callee 1 1 IN IP4 10.99.2.2\r\ns=-\r\nc=IN IP4 10.99.2.2\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";

struct Ng {
    server: NgServer,
    media: mediagate::media::session::SharedResources,
    now: Instant,
    cookie: u32,
}

impl Ng {
    fn new() -> Self {
        let config = Arc::new(config::parse("ng.toml", CONFIG).unwrap());
        let media = Resources::shared(config.media.port_first, config.media.port_last);
        Ng {
            server: NgServer::new(config, media.clone()),
            media,
            now: Instant::now(),
            cookie: 0,
        }
    }

    /// Sends `body` with a fresh cookie; returns the decoded reply.
    fn send(&mut self, body: &[u8]) -> Value {
        self.cookie += 1;
        let cookie = format!("c{}", self.cookie);
        self.send_with(&cookie, body)
    }

    fn send_with(&mut self, cookie: &str, body: &[u8]) -> Value {
        let mut datagram = format!("{cookie} ").into_bytes();
        datagram.extend_from_slice(body);
        let reply = self
            .server
            .handle(&datagram, 0, self.now, SystemTime::now())
            .expect("a reply");
        let prefix = format!("{cookie} ");
        assert!(
            reply.starts_with(prefix.as_bytes()),
            "reply echoes the cookie"
        );
        Value::decode(&reply[prefix.len()..]).expect("reply is bencode")
    }

    fn ports_free(&self) -> usize {
        self.media.borrow().pool.free()
    }
}

fn bstr(s: &str) -> String {
    format!("{}:{s}", s.len())
}

fn offer(call: &str, extra: &str) -> Vec<u8> {
    format!(
        "d7:call-id{}7:command5:offer{extra}8:from-tag{}13:received-froml3:IP4{}e3:sdp{}8:supportsl10:load limitee",
        bstr(call),
        bstr("ft"),
        bstr("10.99.1.2"),
        bstr(OFFER_SDP)
    )
    .into_bytes()
}

fn answer(call: &str) -> Vec<u8> {
    format!(
        "d7:call-id{}7:command6:answer8:from-tag{}3:sdp{}6:to-tag{}e",
        bstr(call),
        bstr("ft"),
        bstr(ANSWER_SDP),
        bstr("tt")
    )
    .into_bytes()
}

fn result(v: &Value) -> &str {
    v.get("result").and_then(Value::as_str).unwrap_or("(none)")
}

fn sdp_of(v: &Value) -> Sdp {
    let Some(Value::Bytes(b)) = v.get("sdp") else {
        panic!("no sdp in {v:?}")
    };
    Sdp::parse(b).unwrap()
}

#[test]
fn ping() {
    let mut ng = Ng::new();
    assert_eq!(result(&ng.send(b"d7:command4:pinge")), "pong");
}

#[test]
fn offer_answer_query_delete() {
    let mut ng = Ng::new();
    let total = ng.ports_free();
    let direction = "9:directionl8:internal8:externale";
    let r = ng.send(&offer("call-1", direction));
    assert_eq!(result(&r), "ok", "{r:?}");
    let to_callee = sdp_of(&r);
    let m = &to_callee.media()[0];
    assert_eq!(
        m.rtp.ip().to_string(),
        "203.0.113.5",
        "external interface advertises its NAT address"
    );
    let Some(Value::Bytes(raw)) = r.get("sdp") else {
        unreachable!()
    };
    let text = String::from_utf8_lossy(raw);
    assert!(
        !text.contains("rtcp-mux") && !text.contains("ice-ufrag"),
        "{text}"
    );
    assert!(
        text.contains("a=rtpmap:8 PCMA/8000"),
        "unknown lines kept: {text}"
    );

    let r = ng.send(&answer("call-1"));
    assert_eq!(result(&r), "ok", "{r:?}");
    let to_caller = sdp_of(&r);
    assert_eq!(to_caller.media()[0].rtp.ip().to_string(), "10.99.1.1");
    assert_eq!(ng.ports_free(), total - 2);

    let q = ng.send(b"d7:call-id6:call-17:command5:querye");
    assert_eq!(result(&q), "ok", "{q:?}");
    let tags = q.get("tags").expect("tags");
    for tag in ["ft", "tt"] {
        let t = tags
            .get(tag)
            .unwrap_or_else(|| panic!("tag {tag} in {q:?}"));
        let Some(Value::List(medias)) = t.get("medias") else {
            panic!("medias")
        };
        let Some(Value::List(streams)) = medias[0].get("streams") else {
            panic!("streams")
        };
        assert_eq!(streams.len(), 2, "RTP and RTCP");
        assert!(
            streams[0]
                .get("local port")
                .and_then(Value::as_int)
                .unwrap()
                >= 30000
        );
        assert!(streams[0]
            .get("stats")
            .and_then(|s| s.get("packets"))
            .is_some());
    }
    assert!(q.get("totals").and_then(|t| t.get("RTP")).is_some());

    let list = ng.send(b"d7:command4:liste");
    assert_eq!(list.get("calls").map(Value::strings), Some(vec!["call-1"]));

    let d = ng.send(b"d7:call-id6:call-17:command6:deletee");
    assert_eq!(result(&d), "ok");
    assert_eq!(ng.ports_free(), total, "ports back in the pool at once");
    assert_eq!(
        result(&ng.send(b"d7:call-id6:call-17:command5:querye")),
        "error"
    );
    let again = ng.send(b"d7:call-id6:call-17:command6:deletee");
    assert_eq!(result(&again), "ok");
    assert!(
        again.get("warning").is_some(),
        "unknown call on delete: ok with a warning"
    );
}

#[test]
fn retransmission_is_answered_from_the_cache() {
    let mut ng = Ng::new();
    let first = ng.send_with("same", &offer("call-r", ""));
    let free = ng.ports_free();
    let second = ng.send_with("same", &offer("call-r", ""));
    assert_eq!(first, second);
    assert_eq!(ng.ports_free(), free, "not executed twice");
    let commands: Vec<Command> = ng.media.borrow_mut().take_commands();
    let adds = commands
        .iter()
        .filter(|c| matches!(c, Command::Add(_)))
        .count();
    assert_eq!(adds, 4, "one call's streams: RTP and RTCP on each side");
}

#[test]
fn delete_delay_keeps_the_call_until_it_expires() {
    let mut ng = Ng::new();
    let total = ng.ports_free();
    ng.send(&offer("call-d", ""));
    let r = ng.send(b"d7:call-id6:call-d7:command6:delete12:delete-delayi2ee");
    assert_eq!(result(&r), "ok");
    assert_eq!(
        result(&ng.send(b"d7:call-id6:call-d7:command5:querye")),
        "ok",
        "still there"
    );
    ng.now += Duration::from_secs(3);
    ng.server.handle_timeout(ng.now);
    assert_eq!(ng.ports_free(), total);
    assert_eq!(
        result(&ng.send(b"d7:call-id6:call-d7:command5:querye")),
        "error"
    );
}

#[test]
fn load_limit_when_over_max_calls() {
    let mut ng = Ng::new();
    assert_eq!(result(&ng.send(&offer("a", ""))), "ok");
    assert_eq!(result(&ng.send(&offer("b", ""))), "ok");
    assert_eq!(result(&ng.send(&offer("c", ""))), "load limit");
}

#[test]
fn bad_input_gets_error_replies_and_leaves_nothing_behind() {
    let mut ng = Ng::new();
    let total = ng.ports_free();
    let cases: Vec<(&[u8], &str)> = vec![
        (b"d7:command", "decode"),
        (b"le", "dictionary"),
        (b"d4:spam4:eggse", "command"),
        (b"d7:command5:bogose", "Unrecognized"),
        (b"d7:command5:offere", "call-id"),
        (b"d7:call-id1:x7:command5:offer8:from-tag1:fe", "SDP"),
        (
            b"d7:call-id1:x7:command5:offer8:from-tag1:f3:sdp5:hello",
            "decode",
        ),
        (
            b"d7:call-id1:x7:command5:offer8:from-tag1:f3:sdp5:helloe",
            "parse SDP",
        ),
        (
            b"d7:call-id1:x7:command6:answer8:from-tag1:f6:to-tag1:t3:sdp3:v=0e",
            "Unknown call",
        ),
        (b"d7:call-id1:x7:command5:querye", "Unknown call"),
    ];
    for (body, reason) in cases {
        let r = ng.send(body);
        assert_eq!(
            result(&r),
            "error",
            "{}: {r:?}",
            String::from_utf8_lossy(body)
        );
        let why = r
            .get("error-reason")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(
            why.contains(reason),
            "{}: reason {why:?}",
            String::from_utf8_lossy(body)
        );
    }
    let savp = offer("s", "");
    let savp = String::from_utf8(savp)
        .unwrap()
        .replace("RTP/AVP", "RTP/SAVP");
    let savp = savp.replace(
        &format!("{}:", OFFER_SDP.len()),
        &format!("{}:", OFFER_SDP.len() + 1),
    );
    let r = ng.send(savp.as_bytes());
    assert_eq!(result(&r), "error", "{r:?}");
    assert_eq!(ng.ports_free(), total);
    assert!(ng
        .server
        .handle(b"no-space-here", 0, ng.now, SystemTime::now())
        .is_none());
}

#[test]
fn latching_flags_reach_the_data_plane() {
    use mediagate::media::LatchMode;
    for (flag, mode) in [
        ("", LatchMode::Symmetric),
        ("5:flagsl10:asymmetrice", LatchMode::Asymmetric),
        ("5:flagsl14:media-handovere", LatchMode::Handover),
    ] {
        let mut ng = Ng::new();
        assert_eq!(result(&ng.send(&offer("f", flag))), "ok");
        let commands = ng.media.borrow_mut().take_commands();
        let modes: Vec<LatchMode> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Add(spec) => Some(spec.latch.mode),
                _ => None,
            })
            .collect();
        assert_eq!(modes, vec![mode; 4], "flag {flag:?}");
    }
}

#[test]
fn statistics() {
    let mut ng = Ng::new();
    ng.send(&offer("x", ""));
    let s = ng.send(b"d7:command10:statisticse");
    let own = s
        .get("statistics")
        .and_then(|v| v.get("currentstatistics"))
        .and_then(|v| v.get("sessionsown"))
        .and_then(Value::as_int);
    assert_eq!(own, Some(1));
}
