//! What a UAS cannot do as a well-formed request asks, found before it acts on the request
//! (RFC 3261 §8.2.2.3 and §8.2.3): an extension the request requires that mediagate lacks (420,
//! with `Unsupported` naming them), a body it cannot read (415, with `Accept` or
//! `Accept-Encoding` saying what it can), and an INVITE whose `Accept` rules out the SDP that
//! every answer to it carries (406). Each refusal names what would have worked, so the sender
//! can retry without guessing (RFC 4475 §3.3.5, §3.3.6 and §3.3.15).

use super::header;
use super::message::Message;

/// Option tags mediagate implements: reliable provisional responses (RFC 3262) and session
/// timers (RFC 4028). A `Require` naming anything else is refused.
pub const SUPPORTED: [&str; 2] = ["100rel", "timer"];

/// The only body mediagate reads.
const SDP: &str = "application/sdp";

/// A request refused here: its status code and the header that tells the sender what
/// mediagate would have accepted (none for 406: the answer's type is not the sender's choice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub code: u16,
    pub header: Option<(&'static str, String)>,
}

/// RFC 3261 §8.2.2.3: every option tag of `Require` must be one of [`SUPPORTED`]; otherwise
/// 420 with the unknown ones in `Unsupported`. (CANCEL and ACK are exempt; callers do not ask.)
pub fn required_extensions(req: &Message) -> Result<(), Unmet> {
    let unknown: Vec<&str> = req
        .headers_named("Require")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Unmet {
        code: 420,
        header: Some(("Unsupported", unknown.join(", "))),
    })
}

/// RFC 3261 §8.2.3 for a request whose body mediagate reads as an offer: a body must be SDP
/// (415 with `Accept: application/sdp`) and not content-coded (415 with
/// `Accept-Encoding: identity`). An empty body is always readable.
pub fn readable_body(req: &Message) -> Result<(), Unmet> {
    if req.body.is_empty() {
        return Ok(());
    }
    let coded = req
        .headers_named("Content-Encoding")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
    if coded {
        return Err(Unmet {
            code: 415,
            header: Some(("Accept-Encoding", "identity".into())),
        });
    }
    if !header::has_sdp(req) {
        return Err(Unmet {
            code: 415,
            header: Some(("Accept", SDP.into())),
        });
    }
    Ok(())
}

/// RFC 3261 §21.4.7 for an INVITE: its answers carry SDP, so an `Accept` that admits no
/// `application/sdp` (by name, `application/*` or `*/*`, with a q above zero) is 406. No
/// `Accept` at all means SDP (§20.1); an empty one means nothing is acceptable.
pub fn sdp_acceptable(req: &Message) -> Result<(), Unmet> {
    let mut accepts = req.headers_named("Accept").peekable();
    if accepts.peek().is_none() {
        return Ok(());
    }
    let takes_sdp = accepts.flat_map(|v| v.split(',')).any(range_takes_sdp);
    if takes_sdp {
        Ok(())
    } else {
        Err(Unmet {
            code: 406,
            header: None,
        })
    }
}

/// Whether one media range of an `Accept` covers SDP with a non-zero quality.
fn range_takes_sdp(range: &str) -> bool {
    let mut parts = range.split(';');
    let media = parts.next().unwrap_or_default().trim();
    let covers = [SDP, "application/*", "*/*"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(media));
    let refused = parts.any(|p| {
        p.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
        })
    });
    covers && !refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &str, body: &str) -> Message {
        let text = format!(
            "INVITE sip:u@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n{headers}\r\n{body}"
        );
        Message::parse_datagram(text.as_bytes()).expect("parses")
    }

    #[test]
    fn unknown_option_tags_are_420_with_unsupported() {
        assert_eq!(
            required_extensions(&req("Require: timer, 100rel\r\n", "")),
            Ok(())
        );
        assert_eq!(required_extensions(&req("", "")), Ok(()));
        let e = required_extensions(&req(
            "Require: nothingSupportsThis, timer\r\nRequire: norThis\r\n",
            "",
        ))
        .unwrap_err();
        assert_eq!(e.code, 420);
        assert_eq!(
            e.header,
            Some(("Unsupported", "nothingSupportsThis, norThis".into()))
        );
    }

    #[test]
    fn only_plain_sdp_bodies_are_readable() {
        assert_eq!(readable_body(&req("", "")), Ok(()));
        assert_eq!(
            readable_body(&req("Content-Type: application/sdp\r\n", "v=0\r\n")),
            Ok(())
        );
        let e = readable_body(&req(
            "Content-Type: application/unknownformat\r\n",
            "<audio/>",
        ))
        .unwrap_err();
        assert_eq!((e.code, e.header), (415, Some(("Accept", SDP.into()))));
        let e = readable_body(&req(
            "Content-Type: application/sdp\r\ne: gzip\r\n",
            "v=0\r\n",
        ))
        .unwrap_err();
        assert_eq!(
            (e.code, e.header),
            (415, Some(("Accept-Encoding", "identity".into())))
        );
    }

    #[test]
    fn an_accept_must_admit_sdp() {
        for ok in [
            "",
            "Accept: application/sdp\r\n",
            "Accept: text/plain, APPLICATION/SDP;level=1\r\n",
            "Accept: application/*\r\n",
            "Accept: */*;q=0.5\r\n",
        ] {
            assert_eq!(sdp_acceptable(&req(ok, "")), Ok(()), "{ok}");
        }
        for refused in [
            "Accept: text/nobodyKnowsThis\r\n",
            "Accept:\r\n",
            "Accept: application/sdp;q=0\r\n",
            "Accept: application/sdpx\r\n",
        ] {
            assert_eq!(
                sdp_acceptable(&req(refused, "")).unwrap_err().code,
                406,
                "{refused}"
            );
        }
    }
}
