//! Per-trunk codec filtering (`codecs = ["PCMA", "PCMU", "telephone-event"]`): an offer sent
//! toward a trunk keeps only the payload types whose encoding is listed, in the list's order,
//! so an ITSP that accepts a few codecs, or prefers one, gets exactly those.

use super::{media_fields, static_encoding, Sdp};

/// The encoding name of payload type `pt` in one media section: its `a=rtpmap`, else the static
/// assignment.
fn encoding<'a>(pt: &str, rtpmaps: &[(&'a str, &'a str)]) -> Option<&'a str> {
    rtpmaps
        .iter()
        .find(|(p, _)| *p == pt)
        .map(|(_, n)| *n)
        .or_else(|| static_encoding(pt.parse().ok()?))
}

/// The payload type an attribute line (`a=rtpmap:PT ...`, `a=fmtp:PT ...`, `a=rtcp-fb:PT ...`)
/// describes, when it is one of those.
fn attribute_payload_type(line: &str) -> Option<&str> {
    ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
        .iter()
        .find_map(|prefix| line.strip_prefix(prefix))
        .and_then(|rest| rest.split(' ').next())
}

/// One `m=` section: its line index and the index one past its last line.
fn sections(lines: &[String]) -> Vec<(usize, usize)> {
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("m="))
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| (s, starts.get(k + 1).copied().unwrap_or(lines.len())))
        .collect()
}

impl Sdp {
    /// The description with every RTP media line reduced to the payload types whose encoding
    /// (case-insensitive) is in `codecs`, ordered as `codecs` lists them; their `rtpmap`, `fmtp`
    /// and `rtcp-fb` lines go with them. A line left with none is disabled (port 0). Lines that
    /// are not RTP (e.g. T.38 `udptl`) are untouched. `None` when no enabled line is left: the
    /// call cannot be offered to that trunk (488).
    pub fn keep_codecs(&self, codecs: &[String]) -> Option<Sdp> {
        let mut lines = self.lines.clone();
        let mut drop = vec![false; lines.len()];
        for (start, end) in sections(&self.lines) {
            let fields: Vec<&str> = media_fields(&self.lines[start][2..]).collect();
            if fields.len() < 4 || !fields[2].contains("RTP") || fields[1] == "0" {
                continue;
            }
            let rtpmaps: Vec<(&str, &str)> = self.lines[start..end]
                .iter()
                .filter_map(|l| l.strip_prefix("a=rtpmap:"))
                .filter_map(|rest| {
                    let (pt, enc) = rest.split_once(' ')?;
                    Some((pt, enc.split('/').next()?))
                })
                .collect();
            let formats = &fields[3..];
            let kept: Vec<&str> = codecs
                .iter()
                .flat_map(|codec| {
                    formats.iter().copied().filter(|pt| {
                        encoding(pt, &rtpmaps).is_some_and(|e| e.eq_ignore_ascii_case(codec))
                    })
                })
                .collect();
            if kept.is_empty() {
                lines[start] = format!("m={} 0 {}", fields[0], fields[2..].join(" "));
                continue;
            }
            lines[start] = format!(
                "m={} {} {} {}",
                fields[0],
                fields[1],
                fields[2],
                kept.join(" ")
            );
            let section = self.lines[start + 1..end].iter();
            for (line, dropped) in section.zip(&mut drop[start + 1..end]) {
                *dropped = attribute_payload_type(line)
                    .is_some_and(|pt| pt != "*" && formats.contains(&pt) && !kept.contains(&pt));
            }
        }
        let text: String = lines
            .iter()
            .zip(&drop)
            .filter(|(_, dropped)| !**dropped)
            .map(|(l, _)| format!("{l}{}", self.eol))
            .collect();
        let filtered = Sdp::parse(text.as_bytes()).ok()?;
        filtered
            .media()
            .iter()
            .any(|m| m.rtp.port() != 0)
            .then_some(filtered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
o=pbx 1 1 IN IP4 10.99.1.2\r\n\
s=-\r\n\
c=IN IP4 10.99.1.2\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0 8 9 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
m=image 6002 udptl t38\r\n\
a=T38FaxVersion:0\r\n";

    fn keep(codecs: &[&str]) -> Option<String> {
        let codecs: Vec<String> = codecs.iter().map(|c| c.to_string()).collect();
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        sdp.keep_codecs(&codecs).map(|s| {
            let mut text = String::new();
            for l in &s.lines {
                text.push_str(l);
                text.push_str("\r\n");
            }
            text
        })
    }

    #[test]
    fn keeps_listed_codecs_in_list_order_with_their_attributes() {
        let text = keep(&["pcma", "PCMU", "telephone-event"]).unwrap();
        assert!(text.contains("m=audio 6000 RTP/AVP 8 0 101\r\n"), "{text}");
        assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"));
        assert!(text.contains("a=ptime:20\r\n"));
        assert!(
            text.contains("m=image 6002 udptl t38\r\n"),
            "T.38 is not RTP: untouched"
        );
    }

    #[test]
    fn drops_the_attributes_of_removed_payload_types() {
        let text = keep(&["G722"]).unwrap();
        assert!(text.contains("m=audio 6000 RTP/AVP 9\r\n"), "{text}");
        assert!(
            !text.contains("rtpmap:0") && !text.contains("101"),
            "{text}"
        );
    }

    #[test]
    fn a_line_without_a_listed_codec_is_disabled_and_nothing_left_is_none() {
        let text = keep(&["G729"]).unwrap();
        assert!(text.contains("m=audio 0 RTP/AVP 0 8 9 101\r\n"), "{text}");
        assert!(
            text.contains("m=image 6002 "),
            "the fax line still carries the call"
        );
        let audio_only = OFFER.split("m=image").next().unwrap();
        let sdp = Sdp::parse(audio_only.as_bytes()).unwrap();
        assert_eq!(sdp.keep_codecs(&["G729".to_string()]), None);
    }
}
