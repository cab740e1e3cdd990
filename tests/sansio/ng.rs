//! The sans-IO NG protocol server fed raw datagrams with a virtual clock, shared by the tests
//! that drive it so (tests/ng_protocol.rs, tests/restart_sansio.rs): a configuration with two
//! interfaces, an offer and an answer as Kamailio's rtpengine module sends them, and the
//! harness that sends them and decodes the replies.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mediagate::config;
use mediagate::control::bencode::Value;
use mediagate::control::ng::NgServer;
use mediagate::media::session::Resources;
use mediagate::sdp::Sdp;

pub const CONFIG: &str = r#"
[sip]
listen = ["udp:127.0.0.1:5060"]
max_calls = 2
[media]
ports = "30000-30099"
[[media.interface]]
name = "internal"
address = "10.99.1.1"
[[media.interface]]
name = "internal"
address = "fd00:99:1::1"
[[media.interface]]
name = "external"
address = "10.99.2.1"
advertise = "203.0.113.5"
[control]
ng = "127.0.0.1:2223"
"#;

pub const OFFER_SDP: &str = "v=0\r\no=caller 1 1 IN IP4 10.99.1.2\r\ns=-\r\nc=IN IP4 10.99.1.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtcp-mux\r\na=ice-ufrag:abcd\r\na=sendrecv\r\n";
pub const ANSWER_SDP: &str = "v=0\r\no=callee 1 1 IN IP4 10.99.2.2\r\ns=-\r\nc=IN IP4 10.99.2.2\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";

pub struct Ng {
    pub server: NgServer,
    pub media: mediagate::media::session::SharedResources,
    pub now: Instant,
    pub cookie: u32,
}

impl Ng {
    pub fn new() -> Self {
        Self::with_config(CONFIG)
    }

    /// A server on configuration `text` (a variant of [`CONFIG`]).
    pub fn with_config(text: &str) -> Self {
        let config = Arc::new(config::parse("ng.toml", text).unwrap());
        let media = Resources::shared(config.media.port_first, config.media.port_last);
        Ng {
            server: NgServer::new(config, media.clone()),
            media,
            now: Instant::now(),
            cookie: 0,
        }
    }

    /// Sends `body` with a fresh cookie; returns the decoded reply.
    pub fn send(&mut self, body: &[u8]) -> Value {
        self.cookie += 1;
        let cookie = format!("c{}", self.cookie);
        self.send_with(&cookie, body)
    }

    pub fn send_with(&mut self, cookie: &str, body: &[u8]) -> Value {
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

    pub fn ports_free(&self) -> usize {
        self.media.borrow().pool.free()
    }
}

pub fn bstr(s: &str) -> String {
    format!("{}:{s}", s.len())
}

pub fn offer(call: &str, extra: &str) -> Vec<u8> {
    format!(
        "d7:call-id{}7:command5:offer{extra}8:from-tag{}13:received-froml3:IP4{}e3:sdp{}8:supportsl10:load limitee",
        bstr(call),
        bstr("ft"),
        bstr("10.99.1.2"),
        bstr(OFFER_SDP)
    )
    .into_bytes()
}

pub fn answer(call: &str) -> Vec<u8> {
    format!(
        "d7:call-id{}7:command6:answer8:from-tag{}3:sdp{}6:to-tag{}e",
        bstr(call),
        bstr("ft"),
        bstr(ANSWER_SDP),
        bstr("tt")
    )
    .into_bytes()
}

pub fn result(v: &Value) -> &str {
    v.get("result").and_then(Value::as_str).unwrap_or("(none)")
}

pub fn sdp_of(v: &Value) -> Sdp {
    let Some(Value::Bytes(b)) = v.get("sdp") else {
        panic!("no sdp in {v:?}")
    };
    Sdp::parse(b).unwrap()
}
