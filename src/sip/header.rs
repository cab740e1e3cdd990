//! Interpretation of the few header values a B2BUA must understand: Via, From/To (name-addr with
//! tag), CSeq, Contact and SIP URIs.

use super::message::{Message, Method};

/// Parameters of a header value (`;name=value` pairs after the main part), e.g. Via branch or tag.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    // Parameters start after the closing '>' of a name-addr, or anywhere in a bare value.
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The URI inside a name-addr (`"Bob" <sip:bob@x>;tag=1` → `sip:bob@x`) or an addr-spec.
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// The display name of a name-addr, without quotes, when present.
pub fn display_name(value: &str) -> Option<&str> {
    let lt = value.find('<')?;
    let name = value[..lt].trim().trim_matches('"').trim();
    (!name.is_empty()).then_some(name)
}

/// The user part of a SIP URI (`sip:+4930123@host;user=phone` → `+4930123`), empty if none.
pub fn uri_user(uri: &str) -> &str {
    let rest = uri.split_once(':').map_or(uri, |(_, r)| r);
    match rest.split_once('@') {
        Some((user, _)) => user.split(';').next().unwrap_or(user),
        None => "",
    }
}

/// The CSeq number and method.
pub fn cseq(msg: &Message) -> Option<(u32, Method)> {
    let v = msg.header("CSeq")?;
    let mut it = v.split_whitespace();
    let n = it.next()?.parse().ok()?;
    let m = Method::parse(it.next()?);
    it.next().is_none().then_some((n, m))
}

/// The branch parameter of the top Via; transactions are keyed by it (RFC 3261 §17.2.3).
pub fn top_branch(msg: &Message) -> Option<&str> {
    param(msg.header("Via")?, "branch")
}

/// RFC 3261's magic cookie: a branch starting with it is unique per transaction.
const MAGIC_COOKIE: &str = "z9hG4bK";

/// What identifies a server transaction (RFC 3261 §17.2.3): the top Via's branch and sent-by
/// when the branch carries the magic cookie and more; otherwise (an RFC 2543 peer, or a bare
/// cookie) the Request-URI, From tag, Call-ID, CSeq number and top Via together. The To tag is
/// left out so that the ACK of a non-2xx response (which carries the tag of that response) and
/// a CANCEL find their INVITE. The method is the caller's part of the key.
pub fn transaction_id(msg: &Message) -> Option<String> {
    let via = msg.header("Via")?;
    if let Some(branch) = param(via, "branch").filter(|b| b.len() > MAGIC_COOKIE.len()) {
        if branch.starts_with(MAGIC_COOKIE) {
            let sent_by = via
                .split(';')
                .next()
                .and_then(|sent| sent.split_whitespace().last())
                .unwrap_or_default();
            return Some(format!("{branch}|{sent_by}"));
        }
    }
    let cseq = msg.header("CSeq")?.split_whitespace().next()?;
    Some(format!(
        "rfc2543|{}|{}|{}|{cseq}|{via}",
        msg.uri().unwrap_or_default(),
        tag(msg, "From").unwrap_or_default(),
        msg.header("Call-ID").unwrap_or_default(),
    ))
}

/// Stamps the top Via of a request received from `source` as RFC 3261 §18.2.1 and RFC 3581
/// §4 ask, so responses record where the request really came from: `received=IP` when the
/// sent-by host is not the source IP (a name, a NATed address, or any host when `rport` is
/// asked for), and `rport=PORT` when `rport` came without a value. An IPv6 `received` is
/// written without brackets (RFC 3261's grammar, RFC 5118 §4.5). Responses go to `source`
/// whatever the Via says; this is for the peer's benefit (NAT discovery, logs).
pub fn stamp_received(msg: &mut Message, source: std::net::SocketAddr) {
    let Some(via) = msg.headers.iter_mut().find(|h| h.name == "Via") else {
        return;
    };
    let mut parts = via.value.split(';');
    let sent = parts.next().unwrap_or_default();
    let host = sent
        .split_whitespace()
        .last()
        .map(sent_by_host)
        .unwrap_or_default();
    let params: Vec<&str> = parts.collect();
    let named = |p: &str, n: &str| {
        p.split_once('=')
            .map_or(p, |(k, _)| k)
            .trim()
            .eq_ignore_ascii_case(n)
    };
    let rport_asked = params.iter().any(|p| named(p, "rport") && !p.contains('='));
    if host.parse::<std::net::IpAddr>().ok() == Some(source.ip()) && !rport_asked {
        return;
    }
    let mut value = sent.to_string();
    for p in params
        .iter()
        .filter(|p| !(named(p, "received") || (rport_asked && named(p, "rport"))))
    {
        value.push(';');
        value.push_str(p);
    }
    value.push_str(&format!(";received={}", source.ip()));
    if rport_asked {
        value.push_str(&format!(";rport={}", source.port()));
    }
    via.value = value;
}

/// The host of a Via sent-by (`host`, `host:port`, `[v6]`, `[v6]:port`), without brackets.
fn sent_by_host(sent_by: &str) -> &str {
    match sent_by.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => sent_by.split(':').next().unwrap_or_default(),
    }
}

/// Whether a Via value is `SIP/2.0/TRANSPORT sent-by` followed by well-formed parameters
/// (RFC 3261 §20.42; LWS around the slashes, semicolons and equals signs allowed), so that an
/// empty parameter (`;;`) or a list separator in the wrong place (RFC 4475 §3.1.2.1) is caught.
pub fn via_ok(value: &str) -> bool {
    let mut params = value.split(';');
    let sent = params.next().unwrap_or_default();
    let mut proto = sent.splitn(3, '/');
    let (Some(name), Some(version), Some(rest)) = (proto.next(), proto.next(), proto.next()) else {
        return false;
    };
    let mut rest = rest.split_whitespace();
    let (Some(transport), Some(_host), None) = (rest.next(), rest.next(), rest.next()) else {
        return false;
    };
    name.trim().eq_ignore_ascii_case("SIP")
        && version.trim() == "2.0"
        && is_token(transport)
        && params.all(|p| {
            let name = p.split_once('=').map_or(p, |(n, _)| n);
            is_token(name.trim())
        })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// The tag parameter of From or To.
pub fn tag<'a>(msg: &'a Message, header: &str) -> Option<&'a str> {
    param(msg.header(header)?, "tag")
}

/// Max-Forwards, when present and numeric.
pub fn max_forwards(msg: &Message) -> Option<u32> {
    msg.header("Max-Forwards")?.trim().parse().ok()
}

/// Whether the body is SDP (by Content-Type; a body with no type is assumed SDP only if it looks
/// like one).
pub fn has_sdp(msg: &Message) -> bool {
    if msg.body.is_empty() {
        return false;
    }
    match msg.header("Content-Type") {
        Some(ct) => ct
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp")),
        None => msg.body.starts_with(b"v=0"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn received_and_rport_are_stamped() {
        let stamp = |via: &str, source: &str| {
            let mut m = Message::parse_datagram(
                format!("OPTIONS sip:a@b SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP x\r\nContent-Length: 0\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            stamp_received(&mut m, source.parse().unwrap());
            let vias: Vec<String> = m.headers_named("Via").map(str::to_string).collect();
            assert_eq!(vias[1], "SIP/2.0/UDP x", "only the top Via");
            vias[0].clone()
        };
        let same = "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1";
        assert_eq!(stamp(same, "10.0.0.2:5060"), same, "nothing to say");
        assert_eq!(
            stamp(same, "192.0.2.7:1024"),
            "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1;received=192.0.2.7"
        );
        assert_eq!(
            stamp(
                "SIP/2.0/UDP [fd00:99::2]:5060;rport;branch=z9hG4bK1",
                "[fd00:99::2]:5070"
            ),
            "SIP/2.0/UDP [fd00:99::2]:5060;branch=z9hG4bK1;received=fd00:99::2;rport=5070"
        );
        assert_eq!(
            stamp(
                "SIP/2.0/TCP [fd00:99::2];branch=z9hG4bK1;received=1.2.3.4",
                "[fd00:99::9]:40000"
            ),
            "SIP/2.0/TCP [fd00:99::2];branch=z9hG4bK1;received=fd00:99::9"
        );
        assert_eq!(
            stamp(
                "SIP/2.0/UDP pbx.example;branch=z9hG4bK1;rport=5060",
                "10.0.0.2:5060"
            ),
            "SIP/2.0/UDP pbx.example;branch=z9hG4bK1;rport=5060;received=10.0.0.2"
        );
    }

    use super::*;

    #[test]
    fn name_addr_parts() {
        let v = "\"Alice\" <sip:+100@10.0.0.1;user=phone>;tag=xy";
        assert_eq!(uri_of(v), "sip:+100@10.0.0.1;user=phone");
        assert_eq!(param(v, "tag"), Some("xy"));
        assert_eq!(param(v, "user"), None);
        assert_eq!(display_name(v), Some("Alice"));
        assert_eq!(uri_user(uri_of(v)), "+100");
        assert_eq!(uri_of("sip:bob@x;tag=1"), "sip:bob@x");
        assert_eq!(
            param("SIP/2.0/UDP h:5060;branch=z9hG4bK1;rport", "branch"),
            Some("z9hG4bK1")
        );
        assert_eq!(uri_user("sip:host.example"), "");
    }

    #[test]
    fn vias() {
        assert!(via_ok("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport"));
        assert!(via_ok("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw"));
        assert!(via_ok(
            "SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8"
        ));
        assert!(via_ok("SIP/2.0/TCP sip33.example.com"));
        assert!(!via_ok("SIP/2.0/UDP 192.0.2.15;;"));
        assert!(!via_ok(";"));
        assert!(!via_ok("SIP/2.0/UDP"));
    }
}
