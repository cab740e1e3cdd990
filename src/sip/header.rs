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
}
