//! SDP (RFC 4566) as a B2BUA needs it: find each media stream's address and ports, and rewrite a
//! description so that every stream is anchored on mediagate (RFC 3264 offer/answer).
//!
//! The description is kept as its original lines; only `o=`, `c=`, `m=` ports and `a=rtcp:` are
//! rewritten and ICE and rtcp-mux attributes dropped ([`DROPPED_ATTRIBUTES`]). Every other line
//! passes through byte-exact, with the original line endings.

mod codecs;

use std::net::{IpAddr, SocketAddr};

/// Largest SDP body accepted.
pub const MAX_SDP: usize = 16 * 1024;
/// Most media lines accepted in one description.
pub const MAX_MEDIA: usize = 16;

/// Why a body is not usable SDP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is not UTF-8 text")]
    NotText,
    #[error("SDP is larger than {MAX_SDP} bytes")]
    TooLarge,
    #[error("SDP does not start with v=0")]
    NoVersion,
    #[error("bad line {line}: {reason}")]
    BadLine { line: usize, reason: &'static str },
    #[error("no connection address for media {0}")]
    NoConnection(usize),
    #[error("more than {MAX_MEDIA} media lines")]
    TooManyMedia,
}

/// Media direction attribute (RFC 3264 §5.1); `sendrecv` when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// What mediagate needs to know about one `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, `image`, ...
    pub kind: String,
    /// The transport protocol of the `m=` line (`RTP/AVP`, `RTP/SAVP`, `udptl`, ...).
    pub protocol: String,
    /// Where the peer wants RTP; port 0 means the stream is disabled.
    pub rtp: SocketAddr,
    /// Where the peer wants RTCP (`a=rtcp:` or RTP port + 1).
    pub rtcp: SocketAddr,
    pub direction: Direction,
    /// RTP clock rate of the line's first (preferred) payload format: its `a=rtpmap` rate, or
    /// the RFC 3551 rate of a static payload type; `None` for non-RTP formats and unknown
    /// dynamic ones. The data planes measure jitter in it.
    pub clock_rate: Option<u32>,
}

/// The static RTP payload types of RFC 3551 §6: number, encoding name and RTP clock rate
/// (G.722's RTP clock is 8000 although it samples at 16 kHz). They need no `a=rtpmap`.
const STATIC_PAYLOAD_TYPES: [(u8, &str, u32); 24] = [
    (0, "PCMU", 8000),
    (3, "GSM", 8000),
    (4, "G723", 8000),
    (5, "DVI4", 8000),
    (6, "DVI4", 16000),
    (7, "LPC", 8000),
    (8, "PCMA", 8000),
    (9, "G722", 8000),
    (10, "L16", 44100),
    (11, "L16", 44100),
    (12, "QCELP", 8000),
    (13, "CN", 8000),
    (14, "MPA", 90000),
    (15, "G728", 8000),
    (16, "DVI4", 11025),
    (17, "DVI4", 22050),
    (18, "G729", 8000),
    (25, "CelB", 90000),
    (26, "JPEG", 90000),
    (28, "nv", 90000),
    (31, "H261", 90000),
    (32, "MPV", 90000),
    (33, "MP2T", 90000),
    (34, "H263", 90000),
];

fn static_payload_type(pt: u8) -> Option<&'static (u8, &'static str, u32)> {
    STATIC_PAYLOAD_TYPES.iter().find(|(p, _, _)| *p == pt)
}

/// RTP clock rate of a static payload type (RFC 3551 §6).
pub fn static_clock_rate(pt: u8) -> Option<u32> {
    static_payload_type(pt).map(|(_, _, rate)| *rate)
}

/// Encoding name of a static payload type (RFC 3551 §6).
pub fn static_encoding(pt: u8) -> Option<&'static str> {
    static_payload_type(pt).map(|(_, name, _)| *name)
}

/// Highest `a=rtpmap` clock rate taken as one: media clocks are at most a few hundred kHz
/// (90 kHz video, 192 kHz audio), and a bound keeps `arrival gap × rate` in 64 bits.
pub const MAX_CLOCK_RATE: u32 = 1_000_000;

/// The clock rate of an `a=rtpmap:PT encoding/rate[/channels]` value for payload type `pt`.
fn rtpmap_rate(value: &str, pt: u8) -> Option<u32> {
    let (num, rest) = value.split_once(' ')?;
    if num.parse::<u8>().ok()? != pt {
        return None;
    }
    rest.trim()
        .split('/')
        .nth(1)?
        .parse()
        .ok()
        .filter(|&r| r > 0 && r <= MAX_CLOCK_RATE)
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    lines: Vec<String>,
    /// Line ending used by the original ("\r\n" or "\n").
    eol: &'static str,
    media: Vec<Media>,
}

/// The anchor to write into a rewritten description: mediagate's address, its RTP port per
/// `m=` line (RTCP is RTP + 1), and the `o=` line identity of the leg it is sent on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor<'a> {
    pub address: IpAddr,
    pub rtp_ports: &'a [u16],
    pub session_id: u64,
    pub session_version: u64,
}

/// Attributes an anchored description leaves out: mediagate terminates the media path, so ICE
/// (candidates would leak internal addresses, credentials without candidates mean nothing) and
/// RTCP multiplexing (it relays RTCP on its own port) do not apply across it; RFC 5576 source
/// attributes go too, as their `cname:` commonly names the sender's user and host address.
const DROPPED_ATTRIBUTES: [&str; 10] = [
    "candidate:",
    "remote-candidates:",
    "ice-ufrag:",
    "ice-pwd:",
    "ice-options:",
    "ice-lite",
    "end-of-candidates",
    "rtcp-mux",
    "ssrc:",
    "ssrc-group:",
];

/// Whether a `c=` value is the unspecified address (`IN IP4 0.0.0.0`, old-style hold).
fn is_hold(value: &str) -> bool {
    value
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| a.is_unspecified())
}

/// The fields of an `m=` line: separated by spaces (RFC 4566 §5.14), runs of spaces tolerated.
/// Parsing and rewriting split the same way, so a rewritten line always parses again.
fn media_fields(value: &str) -> impl Iterator<Item = &str> {
    value.split(' ').filter(|f| !f.is_empty())
}

fn bad(line: usize, reason: &'static str) -> SdpError {
    SdpError::BadLine { line, reason }
}

/// `c=IN IP4 10.0.0.1` → the address (multicast TTL suffixes are tolerated).
fn parse_connection(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    let mut it = value.split_whitespace();
    let (Some("IN"), Some(fam), Some(addr)) = (it.next(), it.next(), it.next()) else {
        return Err(bad(line, "connection must be `IN IP4|IP6 address`"));
    };
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| bad(line, "connection address is not an IP address"))?;
    match (fam, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(bad(line, "address family does not match the address")),
    }
}

impl Sdp {
    /// Parses an SDP body.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        if body.len() > MAX_SDP {
            return Err(SdpError::TooLarge);
        }
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
        let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let lines: Vec<String> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if lines.first().map(String::as_str) != Some("v=0") {
            return Err(SdpError::NoVersion);
        }
        let mut session_conn: Option<IpAddr> = None;
        // Per media: (kind, port, conn, rtcp port, rtcp addr, direction, first line number)
        struct Partial {
            kind: String,
            protocol: String,
            port: u16,
            conn: Option<IpAddr>,
            rtcp: Option<(u16, Option<IpAddr>)>,
            direction: Option<Direction>,
            /// The first format, when it is an RTP payload type, and its `a=rtpmap` rate.
            first_pt: Option<u8>,
            rtpmap: Option<u32>,
        }
        let mut session_dir = Direction::SendRecv;
        let mut media: Vec<Partial> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let n = i + 1;
            let (key, value) = line
                .split_once('=')
                .filter(|(k, _)| k.len() == 1)
                .ok_or_else(|| bad(n, "not of the form x=value"))?;
            match key {
                "c" => {
                    let ip = parse_connection(value, n)?;
                    match media.last_mut() {
                        Some(m) => m.conn = Some(ip),
                        None => session_conn = Some(ip),
                    }
                }
                "m" => {
                    if media.len() == MAX_MEDIA {
                        return Err(SdpError::TooManyMedia);
                    }
                    // Fields are separated by single spaces (RFC 4566 §5.14); splitting on any
                    // whitespace here but on spaces when rewriting would disagree on odd input.
                    let mut it = media_fields(value);
                    let kind = it.next().ok_or_else(|| bad(n, "empty media line"))?;
                    let port = it.next().ok_or_else(|| bad(n, "media line without port"))?;
                    // `port/count` is allowed by RFC 4566; mediagate anchors the first port.
                    let port: u16 = port
                        .split('/')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(|| bad(n, "media port is not a number 0-65535"))?;
                    let (Some(protocol), Some(format)) = (it.next(), it.next()) else {
                        return Err(bad(n, "media line needs proto and formats"));
                    };
                    let first_pt = format
                        .parse::<u8>()
                        .ok()
                        .filter(|&pt| pt < 128 && protocol.starts_with("RTP/"));
                    media.push(Partial {
                        kind: kind.to_string(),
                        protocol: protocol.to_string(),
                        port,
                        conn: None,
                        rtcp: None,
                        direction: None,
                        first_pt,
                        rtpmap: None,
                    });
                }
                "a" => {
                    let dir = match value {
                        "sendrecv" => Some(Direction::SendRecv),
                        "sendonly" => Some(Direction::SendOnly),
                        "recvonly" => Some(Direction::RecvOnly),
                        "inactive" => Some(Direction::Inactive),
                        _ => None,
                    };
                    if let Some(d) = dir {
                        match media.last_mut() {
                            Some(m) => m.direction = Some(d),
                            None => session_dir = d,
                        }
                    } else if let (Some(map), Some(m)) =
                        (value.strip_prefix("rtpmap:"), media.last_mut())
                    {
                        if let Some(rate) = m.first_pt.and_then(|pt| rtpmap_rate(map, pt)) {
                            m.rtpmap = Some(rate);
                        }
                    } else if let (Some(rest), Some(m)) =
                        (value.strip_prefix("rtcp:"), media.last_mut())
                    {
                        let mut it = rest.split_whitespace();
                        let port: u16 = it
                            .next()
                            .and_then(|p| p.parse().ok())
                            .ok_or_else(|| bad(n, "a=rtcp port is not a number"))?;
                        let addr = match it.next() {
                            Some(_) => Some(parse_connection(
                                rest.split_once(' ').map_or("", |(_, a)| a),
                                n,
                            )?),
                            None => None,
                        };
                        m.rtcp = Some((port, addr));
                    }
                }
                _ => {}
            }
        }
        let media = media
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let ip = m.conn.or(session_conn).ok_or(SdpError::NoConnection(i))?;
                let (rtcp_port, rtcp_ip) = m.rtcp.unwrap_or((m.port.wrapping_add(1), None));
                Ok(Media {
                    kind: m.kind,
                    protocol: m.protocol,
                    rtp: SocketAddr::new(ip, m.port),
                    rtcp: SocketAddr::new(
                        rtcp_ip.unwrap_or(ip),
                        if m.port == 0 { 0 } else { rtcp_port },
                    ),
                    direction: m.direction.unwrap_or(session_dir),
                    clock_rate: m.rtpmap.or_else(|| m.first_pt.and_then(static_clock_rate)),
                })
            })
            .collect::<Result<_, SdpError>>()?;
        Ok(Sdp { lines, eol, media })
    }

    /// The same description with every media address replaced by `ip` (ports kept): for peers
    /// whose SDP cannot be trusted (NG `SIP-source-address`).
    pub fn with_address(&self, ip: IpAddr) -> Sdp {
        let mut copy = self.clone();
        for m in &mut copy.media {
            m.rtp.set_ip(ip);
            m.rtcp.set_ip(ip);
        }
        copy
    }

    /// Whether the description puts the call on hold: every enabled media line is `inactive`,
    /// `sendonly` or `recvonly`, or has the unspecified address (RFC 2543 `c=0.0.0.0`). False
    /// when no line is enabled.
    pub fn is_hold(&self) -> bool {
        let enabled = || self.media.iter().filter(|m| m.rtp.port() != 0);
        enabled().next().is_some()
            && enabled().all(|m| m.direction != Direction::SendRecv || m.rtp.ip().is_unspecified())
    }

    /// The media streams, in `m=` line order.
    pub fn media(&self) -> &[Media] {
        &self.media
    }

    /// Writes the description anchored on mediagate: `o=` with the leg's identity, every `c=`
    /// with the anchor address, each enabled `m=` port and `a=rtcp:` with the anchor's ports.
    /// Disabled streams (port 0) stay disabled. ICE and rtcp-mux attributes are dropped.
    /// Fails when the result would outgrow [`MAX_SDP`] (rewritten lines can be longer than the
    /// originals), so that mediagate never sends a description it would refuse itself.
    pub fn anchored(&self, anchor: &Anchor) -> Result<Vec<u8>, SdpError> {
        let fam = if anchor.address.is_ipv4() {
            "IP4"
        } else {
            "IP6"
        };
        let mut out = String::with_capacity(self.lines.iter().map(|l| l.len() + 2).sum());
        let mut media_index: Option<usize> = None;
        let port_of = |m: Option<usize>| -> Option<u16> {
            let m = m?;
            if self.media[m].rtp.port() == 0 {
                return None;
            }
            anchor.rtp_ports.get(m).copied()
        };
        for line in &self.lines {
            let rewritten: Option<String> = match line.split_at(2) {
                ("o=", value) => {
                    let user = value.split_whitespace().next().unwrap_or("-");
                    Some(format!(
                        "o={user} {} {} IN {fam} {}",
                        anchor.session_id, anchor.session_version, anchor.address
                    ))
                }
                // An unspecified address is an RFC 2543 hold: pass it on, do not anchor it.
                ("c=", value) if is_hold(value) => None,
                ("c=", _) => Some(format!("c=IN {fam} {}", anchor.address)),
                ("m=", value) => {
                    media_index = Some(media_index.map_or(0, |i| i + 1));
                    match port_of(media_index) {
                        Some(port) => {
                            let fields: Vec<&str> = media_fields(value).collect();
                            let rest = fields.get(2..).unwrap_or_default().join(" ");
                            Some(format!("m={} {port} {rest}", fields[0]))
                        }
                        None => None,
                    }
                }
                ("a=", value) if value.starts_with("rtcp:") => port_of(media_index)
                    .map(|p| format!("a=rtcp:{} IN {fam} {}", p + 1, anchor.address)),
                ("a=", value) if DROPPED_ATTRIBUTES.iter().any(|a| value.starts_with(a)) => {
                    continue
                }
                _ => None,
            };
            out.push_str(rewritten.as_deref().unwrap_or(line));
            out.push_str(self.eol);
        }
        if out.len() > MAX_SDP {
            return Err(SdpError::TooLarge);
        }
        Ok(out.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
o=user1 53655765 2353687637 IN IP4 10.99.1.2\r\n\
s=-\r\n\
c=IN IP4 10.99.1.2\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 8 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtcp:6001\r\n\
a=x-unknown: keep  me\r\n\
a=candidate:1 1 UDP 1 192.168.0.9 6000 typ host\r\n\
a=ssrc:1234 cname:alice@10.99.1.2\r\n\
m=video 0 RTP/AVP 96\r\n";

    #[test]
    fn finds_streams() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let m = sdp.media();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].rtp, "10.99.1.2:6000".parse().unwrap());
        assert_eq!(m[0].rtcp, "10.99.1.2:6001".parse().unwrap());
        assert_eq!(m[0].direction, Direction::SendRecv);
        assert_eq!(m[1].rtp.port(), 0);
        assert_eq!(m[0].clock_rate, Some(8000));
        assert_eq!(m[1].clock_rate, None, "dynamic type without rtpmap");
    }

    #[test]
    fn clock_rate_of_the_first_format() {
        let rate = |m: &str| {
            let body = format!("v=0\r\nc=IN IP4 10.0.0.1\r\n{m}");
            Sdp::parse(body.as_bytes()).unwrap().media()[0].clock_rate
        };
        assert_eq!(rate("m=audio 5 RTP/AVP 9 0\r\n"), Some(8000), "G.722");
        assert_eq!(
            rate(
                "m=audio 5 RTP/AVP 111 0\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:111 opus/48000/2\r\n"
            ),
            Some(48000)
        );
        assert_eq!(rate("m=video 5 RTP/AVP 31\r\n"), Some(90000));
        assert_eq!(rate("m=image 5 udptl t38\r\n"), None);
        assert_eq!(rate("m=audio 5 RTP/AVP 96\r\na=rtpmap:96 x/0\r\n"), None);
        assert_eq!(
            rate("m=audio 5 RTP/AVP 96\r\na=rtpmap:96 x/4000000000\r\n"),
            None
        );
    }

    #[test]
    fn anchors_and_keeps_unknown_lines() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let out = sdp
            .anchored(&Anchor {
                address: "10.99.2.1".parse().unwrap(),
                rtp_ports: &[30000, 30002],
                session_id: 7,
                session_version: 1,
            })
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("o=user1 7 1 IN IP4 10.99.2.1\r\n"));
        assert!(out.contains("c=IN IP4 10.99.2.1\r\n"));
        assert!(out.contains("m=audio 30000 RTP/AVP 8 101\r\n"));
        assert!(out.contains("a=rtcp:30001 IN IP4 10.99.2.1\r\n"));
        assert!(out.contains("a=x-unknown: keep  me\r\n"));
        assert!(
            out.contains("m=video 0 RTP/AVP 96\r\n"),
            "disabled stream stays disabled"
        );
        assert!(!out.contains("10.99.1.2") && !out.contains("192.168.0.9"));
        // Re-parsing the output finds the anchor.
        let again = Sdp::parse(out.as_bytes()).unwrap();
        assert_eq!(again.media()[0].rtp, "10.99.2.1:30000".parse().unwrap());
    }

    #[test]
    fn anchoring_refuses_to_outgrow_the_size_limit() {
        // Found by the fuzzer: short lines that the rewrite lengthens.
        let mut text = String::from("v=0\r\nc=IN IP4 1.1.1.1\r\nm=audio 1 RTP/AVP 0\r\n");
        while text.len() < MAX_SDP - 10 {
            text.push_str("a=rtcp:1\r\n");
        }
        let sdp = Sdp::parse(text.as_bytes()).unwrap();
        let anchor = Anchor {
            address: "10.99.2.1".parse().unwrap(),
            rtp_ports: &[30000],
            session_id: 1,
            session_version: 1,
        };
        assert_eq!(sdp.anchored(&anchor), Err(SdpError::TooLarge));
    }

    #[test]
    fn old_style_hold_passes_through() {
        let hold = b"v=0\r\no=a 1 2 IN IP4 10.1.1.10\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n";
        let out = Sdp::parse(hold)
            .unwrap()
            .anchored(&Anchor {
                address: "10.99.2.1".parse().unwrap(),
                rtp_ports: &[30000],
                session_id: 1,
                session_version: 3,
            })
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("c=IN IP4 0.0.0.0\r\n"), "{text}");
        assert!(text.contains("m=audio 30000 "), "{text}");
    }

    #[test]
    fn media_line_fields_are_space_separated() {
        // Found by the fuzzer: a port followed by control characters instead of a space.
        let sdp = b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 601\r\r\x00 RTP/AVP 0\r\n";
        assert!(Sdp::parse(sdp).is_err());
        let ok = b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio  601 RTP/AVP 0\r\n";
        let parsed = Sdp::parse(ok).unwrap();
        let out = parsed
            .anchored(&Anchor {
                address: "10.0.0.2".parse().unwrap(),
                rtp_ports: &[30000],
                session_id: 1,
                session_version: 1,
            })
            .unwrap();
        assert_eq!(Sdp::parse(&out).unwrap().media()[0].rtp.port(), 30000);
    }

    #[test]
    fn rejects_bad_descriptions() {
        assert_eq!(Sdp::parse(b"hello"), Err(SdpError::NoVersion));
        assert!(Sdp::parse(b"v=0\nc=IN IP4 999.1.1.1\n").is_err());
        assert!(Sdp::parse(b"v=0\nc=IN IP4 1.1.1.1\nm=audio 70000 RTP/AVP 0\n").is_err());
        assert_eq!(
            Sdp::parse(b"v=0\nm=audio 4000 RTP/AVP 0\n"),
            Err(SdpError::NoConnection(0))
        );
        assert!(Sdp::parse(b"v=0\nc=IN IP6 1.1.1.1\n").is_err());
    }

    #[test]
    fn hold_is_every_enabled_line_not_sendrecv_or_a_null_address() {
        let base = "v=0\r\no=a 1 2 IN IP4 10.1.1.10\r\ns=-\r\nc=IN IP4 10.1.1.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n";
        let hold = |extra: &str| {
            Sdp::parse(format!("{base}{extra}").as_bytes())
                .unwrap()
                .is_hold()
        };
        assert!(!hold(""));
        assert!(!hold("a=sendrecv\r\n"));
        assert!(hold("a=sendonly\r\n"));
        assert!(hold("a=inactive\r\n"));
        assert!(hold("a=recvonly\r\n"));
        assert!(!hold("a=inactive\r\nm=video 6002 RTP/AVP 96\r\n"));
        let null = base.replace("c=IN IP4 10.1.1.10", "c=IN IP4 0.0.0.0");
        assert!(Sdp::parse(null.as_bytes()).unwrap().is_hold());
    }
}
