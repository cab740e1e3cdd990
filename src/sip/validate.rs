//! Which error a bad request gets, before any transaction or call sees it (RFC 3261 §8.2,
//! RFC 4475 §3.1.2 and §3.3): requests that cannot be parsed, requests missing what RFC 3261
//! makes mandatory, and requests whose URIs or name-addrs are malformed. Pure functions, so the
//! transports (unparseable bytes) and the B2BUA (parsed requests) answer alike.

use super::dialog::{reason, response_to};
use super::header;
use super::message::{Message, ParseError};

/// Headers a request may carry once only (RFC 3261 §7.3.1: only list headers may repeat);
/// two different Call-IDs or CSeqs leave no right way to answer.
const SINGLE: [&str; 6] = [
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Max-Forwards",
    "Content-Type",
];

/// Request-URI schemes mediagate routes; anything else is 416 (RFC 3261 §8.2.2.1).
const SCHEMES: [&str; 3] = ["sip", "sips", "tel"];

/// Why a request is refused before it reaches the B2BUA: the status code and reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub reason: &'static str,
}

impl Refused {
    fn bad(reason: &'static str) -> Refused {
        Refused { code: 400, reason }
    }
}

/// The answer to bytes that did not parse as a SIP message: 505 for another SIP version, 513 for
/// a message over the size limit, 400 otherwise. `None` when nothing can be answered (a
/// response, an ACK, or no Via to send it along), i.e. the bytes are dropped.
pub fn reply_to_unparseable(data: &[u8], error: &ParseError) -> Option<Message> {
    let mut request = Message::salvage_request(data)?;
    // Only the top Via: the response goes back to the sender either way, and a header bomb's
    // thousands of Vias must not come back multiplied.
    let top_via = request.header("Via").map(str::to_string);
    request.remove_headers("Via");
    request
        .headers
        .extend(top_via.map(|value| crate::sip::message::Header {
            name: "Via".into(),
            value,
        }));
    let (code, why) = match error {
        ParseError::BadVersion => (505, reason(505)),
        ParseError::TooLarge => (513, reason(513)),
        other => (400, parse_reason(other)),
    };
    Some(response_to(&request, code, why, None))
}

fn parse_reason(error: &ParseError) -> &'static str {
    match error {
        ParseError::BadContentLength => "Bad Content-Length",
        ParseError::TooManyHeaders => "Too Many Headers",
        ParseError::BadHeader => "Bad Header",
        ParseError::NotText => "Not UTF-8",
        _ => "Bad Request Line",
    }
}

/// RFC 3261 §8.2 on a parsed request: well-formed Vias (a branch is not required: RFC 2543
/// peers are matched by `header::transaction_id`), the mandatory headers, a CSeq naming the request's method, a Request-URI of a known scheme without
/// escaped headers, well-formed From and To, and a Date in GMT when present.
pub fn check_request(msg: &Message) -> Result<(), Refused> {
    if msg.header("Via").is_none() || !msg.headers_named("Via").all(header::via_ok) {
        return Err(Refused::bad("Bad Via"));
    }
    for h in ["From", "To", "Call-ID"] {
        if msg.header(h).is_none_or(|v| v.trim().is_empty()) {
            return Err(Refused::bad("Missing Mandatory Header"));
        }
    }
    if SINGLE.iter().any(|h| msg.headers_named(h).nth(1).is_some()) {
        return Err(Refused::bad("Duplicate Header"));
    }
    match header::cseq(msg) {
        Some((_, m)) if Some(&m) == msg.method() => {}
        _ => return Err(Refused::bad("Bad CSeq")),
    }
    if msg.header("Max-Forwards").is_some() && header::max_forwards(msg).is_none_or(|n| n > 255) {
        return Err(Refused::bad("Bad Max-Forwards"));
    }
    check_request_uri(msg.uri().unwrap_or_default())?;
    for h in ["From", "To"] {
        if !name_addr_ok(msg.header(h).unwrap_or_default()) {
            return Err(Refused::bad(if h == "From" {
                "Bad From"
            } else {
                "Bad To"
            }));
        }
    }
    if msg
        .header("Date")
        .is_some_and(|d| !d.trim_end().ends_with(" GMT"))
    {
        return Err(Refused::bad("Date Not In GMT"));
    }
    Ok(())
}

fn check_request_uri(uri: &str) -> Result<(), Refused> {
    let scheme = uri.split_once(':').map_or("", |(s, _)| s);
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(Refused::bad("Bad Request-URI"));
    }
    if !SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(Refused {
            code: 416,
            reason: reason(416),
        });
    }
    if scheme.eq_ignore_ascii_case("tel") {
        return Ok(());
    }
    // Headers in a Request-URI (RFC 4475 §3.1.2.11): a B2BUA must not act on them, and passing
    // them on would let the caller set headers toward the trunk. They follow the host; a `?`
    // in the userinfo is an ordinary character there (RFC 3261 §25.1 user-unreserved, RFC 4475
    // §3.1.1.2), and the userinfo ends at the last `@`, as in `hostport_ok`.
    let after_userinfo = uri.rsplit_once('@').map_or(uri, |(_, host)| host);
    if after_userinfo.contains('?') {
        return Err(Refused::bad("Headers In Request-URI"));
    }
    if !hostport_ok(uri.split_once(':').map_or("", |(_, rest)| rest)) {
        return Err(Refused::bad("Bad Request-URI Host"));
    }
    Ok(())
}

/// The host and port of a SIP URI's rest (after `sip:`): an IPv6 reference only in brackets
/// (RFC 5118 §4.2), at most one port after the host, and that port a number.
fn hostport_ok(rest: &str) -> bool {
    let after_user = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = after_user.split(';').next().unwrap_or_default();
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, "")) => (addr, None),
            Some((addr, after)) => match after.strip_prefix(':') {
                Some(p) => (addr, Some(p)),
                None => return false,
            },
            None => return false,
        },
        None => match hostport.split_once(':') {
            Some((host, p)) => (host, Some(p)),
            None => (hostport, None),
        },
    };
    !host.is_empty() && port.is_none_or(|p| p.parse::<u16>().is_ok())
}

/// From/To as RFC 3261 §25.1 allows: an addr-spec, or `[display-name] <URI>` where the display
/// name is a quoted string or tokens, and quotes and angle brackets balance.
fn name_addr_ok(value: &str) -> bool {
    let value = value.trim();
    let Some(display) = display_part(value) else {
        return false;
    };
    let display = display.trim();
    if display.is_empty() {
        return true;
    }
    if display.starts_with('"') {
        return display.len() >= 2 && display.ends_with('"');
    }
    display
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .all(|w| w.bytes().all(is_token_char))
}

/// The text before `<` of a name-addr (empty for an addr-spec); `None` when a quote or an
/// angle bracket is left open.
fn display_part(value: &str) -> Option<&str> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => {
                return value[i..].contains('>').then_some(&value[..i]);
            }
            _ => {}
        }
    }
    (!quoted && !value.starts_with('"')).then_some("")
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addrs() {
        assert!(name_addr_ok("sip:a@b;tag=1"));
        assert!(name_addr_ok("caller<sip:caller@example.com>;tag=323"));
        assert!(name_addr_ok(
            "\"J Rosenberg \\\\\\\"\"  <sip:j@example.com>;tag=9"
        ));
        assert!(name_addr_ok("token1~` token2'+_ <sip:m@example.com>"));
        assert!(!name_addr_ok("\"Mr. J. User <sip:j.user@example.com>"));
        assert!(!name_addr_ok(
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43"
        ));
        assert!(!name_addr_ok("\"A\" <sip:a@b"));
    }

    #[test]
    fn request_uris() {
        assert_eq!(check_request_uri("sip:+4930@h"), Ok(()));
        assert_eq!(check_request_uri("tel:+4930"), Ok(()));
        assert_eq!(
            check_request_uri("soap.beep://h:3002").unwrap_err().code,
            416
        );
        assert_eq!(check_request_uri("<sip:u@h>").unwrap_err().code, 400);
        assert_eq!(check_request_uri("sip:u@h?Route=x").unwrap_err().code, 400);
        for ok in [
            "sip:[2001:db8::10]",
            "sip:[2001:db8::10]:5070",
            "sip:user;par=u%40example.net@example.com",
            "sip:u@h:5060;transport=tcp",
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        ] {
            assert_eq!(check_request_uri(ok), Ok(()), "{ok}");
        }
        for bad in [
            "sip:2001:db8::10",
            "sip:[2001:db8::10",
            "sip:h:x",
            "sip:u@",
            "sip:[::1]x",
        ] {
            assert_eq!(check_request_uri(bad).unwrap_err().code, 400, "{bad}");
        }
    }

    #[test]
    fn unparseable_requests_are_answered_responses_never() {
        let bad = b"OPTIONS sip:a@b SIP/7.0\r\nVia: SIP/7.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let r = reply_to_unparseable(bad, &ParseError::BadVersion).unwrap();
        assert_eq!(r.code(), Some(505));
        assert_eq!(r.header("Via"), Some("SIP/7.0/UDP h;branch=z9hG4bK1"));
        let resp = b"SIP/2.0 4294967301 x\r\nVia: SIP/2.0/UDP h\r\n\r\n";
        assert!(reply_to_unparseable(resp, &ParseError::BadStartLine).is_none());
        let ack = b"ACK sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nl: 9\r\n\r\n";
        assert!(reply_to_unparseable(ack, &ParseError::BadContentLength).is_none());
    }
}
