//! The SIP message model: start line, ordered headers, body (RFC 3261 §7).
//!
//! Headers are kept as ordered name/value pairs, with compact names expanded, so that a message
//! prints back as it was parsed (modulo whitespace around the colon and line folding). Values are
//! interpreted lazily by the helpers in [`super::header`], because a B2BUA reads only a handful of
//! headers and must pass or drop the rest untouched.

use std::fmt::Write as _;

/// Largest message accepted on any transport; larger ones are rejected (UDP: 513-free drop).
pub const MAX_MESSAGE: usize = 65_535;
/// Most headers accepted in one message (a header bomb beyond this is a parse error). The count is
/// of the message as mediagate prints it, which always carries a Content-Length, so whatever is
/// accepted can be printed and parsed again.
pub const MAX_HEADERS: usize = 256;

/// Why bytes are not a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message is incomplete")]
    Incomplete,
    #[error("message is larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("bad start line")]
    BadStartLine,
    #[error("SIP version other than SIP/2.0")]
    BadVersion,
    #[error("bad header line")]
    BadHeader,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("bad or missing Content-Length")]
    BadContentLength,
    #[error("message is not UTF-8 text")]
    NotText,
}

/// A SIP method. Unknown methods are kept by name so that they can be answered 405/501.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            other => Method::Other(other.to_string()),
        }
    }
}

/// Request line or status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: String },
    Response { code: u16, reason: String },
}

/// One header field; `name` is the canonical long form for the headers this crate knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A parsed SIP request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

/// Expands RFC 3261 §7.3.3 compact forms and canonicalises the case of known names, so lookups
/// compare with one spelling.
fn canonical_name(name: &str) -> String {
    const KNOWN: &[&str] = &[
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Content-Length",
        "Content-Type",
        "Content-Encoding",
        "Record-Route",
        "Route",
        "Supported",
        "Require",
        "Allow",
        "User-Agent",
        "Server",
        "Subject",
        "Retry-After",
    ];
    let long = match name {
        "v" | "V" => "Via",
        "f" | "F" => "From",
        "t" | "T" => "To",
        "i" | "I" => "Call-ID",
        "m" | "M" => "Contact",
        "l" | "L" => "Content-Length",
        "c" | "C" => "Content-Type",
        "e" | "E" => "Content-Encoding",
        "k" | "K" => "Supported",
        "s" | "S" => "Subject",
        other => {
            return KNOWN
                .iter()
                .find(|k| k.eq_ignore_ascii_case(other))
                .map_or_else(|| other.to_string(), |k| k.to_string())
        }
    };
    long.to_string()
}

/// Headers whose values may be comma-separated lists that count as several headers.
fn splits_on_comma(name: &str) -> bool {
    matches!(name, "Via" | "Route" | "Record-Route")
}

impl Message {
    /// Parses one complete message from a UDP datagram; trailing bytes beyond Content-Length are
    /// ignored, a body shorter than Content-Length is an error (RFC 3261 §18.3).
    pub fn parse_datagram(data: &[u8]) -> Result<Message, ParseError> {
        let (head_len, mut msg) = parse_head(data)?;
        let declared = msg.content_length()?;
        let available = data.len() - head_len;
        let len = declared.unwrap_or(available);
        if len > available {
            return Err(ParseError::BadContentLength);
        }
        msg.body = data[head_len..head_len + len].to_vec();
        Ok(msg)
    }

    /// Parses the first message of a stream buffer (TCP); `Ok(None)` means more bytes are needed.
    /// Returns the message and the number of bytes it used. Leading CRLFs (keep-alives) are skipped.
    pub fn parse_stream(buf: &[u8]) -> Result<Option<(Message, usize)>, ParseError> {
        let skip = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        let data = &buf[skip..];
        let (head_len, mut msg) = match parse_head(data) {
            Err(ParseError::Incomplete) if data.len() <= MAX_MESSAGE => return Ok(None),
            Err(ParseError::Incomplete) => return Err(ParseError::TooLarge),
            other => other?,
        };
        let len = msg.content_length()?.ok_or(ParseError::BadContentLength)?;
        // Checked: a Content-Length near usize::MAX must not wrap around the limit.
        let total = head_len
            .checked_add(len)
            .filter(|t| *t <= MAX_MESSAGE)
            .ok_or(ParseError::TooLarge)?;
        if data.len() < total {
            return Ok(None);
        }
        msg.body = data[head_len..total].to_vec();
        Ok(Some((msg, skip + total)))
    }

    fn content_length(&self) -> Result<Option<usize>, ParseError> {
        let mut values = self.headers_named("Content-Length");
        let Some(v) = values.next() else {
            return Ok(None);
        };
        let len: usize = v.trim().parse().map_err(|_| ParseError::BadContentLength)?;
        if values.any(|other| other.trim() != v.trim()) {
            return Err(ParseError::BadContentLength);
        }
        Ok(Some(len))
    }

    /// Serialises the message; Content-Length is always rewritten to the body's real length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = String::with_capacity(512);
        match &self.start {
            StartLine::Request { method, uri } => {
                let _ = write!(head, "{} {} SIP/2.0\r\n", method.as_str(), uri);
            }
            StartLine::Response { code, reason } => {
                let _ = write!(head, "SIP/2.0 {code} {reason}\r\n");
            }
        }
        for h in &self.headers {
            if h.name != "Content-Length" {
                let _ = write!(head, "{}: {}\r\n", h.name, h.value);
            }
        }
        let _ = write!(head, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// All values of a header, in order (names compare in canonical form).
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Replaces every value of `name` with one value (or appends it when absent).
    pub fn set_header(&mut self, name: &str, value: String) {
        if let Some(pos) = self.headers.iter().position(|h| h.name == name) {
            self.headers[pos].value = value;
            let mut seen = false;
            self.headers.retain(|h| {
                if h.name != name {
                    return true;
                }
                let keep = !seen;
                seen = true;
                keep
            });
        } else {
            self.push_header(name, value);
        }
    }

    pub fn push_header(&mut self, name: &str, value: String) {
        self.headers.push(Header {
            name: name.to_string(),
            value,
        });
    }

    pub fn remove_headers(&mut self, name: &str) {
        self.headers.retain(|h| h.name != name);
    }
}

impl Message {
    /// What can be read of a request that failed to parse, to answer it with an error
    /// (RFC 3261 §8.2, RFC 4475 §3.1.2): the method (the first word of the start line, whatever
    /// the rest says) and every header line that is `name: value`; lines that are not are skipped,
    /// the body is left out. `None` for responses (never answered), ACKs and anything without a
    /// Via to answer along.
    pub fn salvage_request(data: &[u8]) -> Option<Message> {
        let end = find_head_end(data).unwrap_or(data.len()).min(MAX_MESSAGE);
        let text = String::from_utf8_lossy(&data[..end]);
        let lines = unfold(&text);
        let method = lines.first()?.split(' ').next()?;
        if method.is_empty() || method.starts_with("SIP/") || !method.bytes().all(is_token_char) {
            return None;
        }
        let method = Method::parse(method);
        if method == Method::Ack {
            return None;
        }
        let mut msg = Message {
            start: StartLine::Request {
                method,
                uri: String::new(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        for line in lines.iter().skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim_end();
            if name.is_empty() || !name.bytes().all(is_token_char) {
                continue;
            }
            msg.push_header(&canonical_name(name), value.trim().to_string());
            if msg.headers.len() >= MAX_HEADERS {
                break;
            }
        }
        msg.header("Via").is_some().then_some(msg)
    }
}

/// Parses the start line and headers; returns the offset of the body and the message (no body).
fn parse_head(data: &[u8]) -> Result<(usize, Message), ParseError> {
    let end = find_head_end(data).ok_or(if data.len() > MAX_MESSAGE {
        ParseError::TooLarge
    } else {
        ParseError::Incomplete
    })?;
    if end > MAX_MESSAGE {
        return Err(ParseError::TooLarge);
    }
    let text = std::str::from_utf8(&data[..end]).map_err(|_| ParseError::NotText)?;
    let mut lines = unfold(text);
    let start = parse_start_line(lines.first().ok_or(ParseError::BadStartLine)?)?;
    let mut headers = Vec::new();
    for line in lines.drain(1..) {
        let (name, value) = line.split_once(':').ok_or(ParseError::BadHeader)?;
        let name = name.trim_end();
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(ParseError::BadHeader);
        }
        let name = canonical_name(name);
        let value = value.trim();
        if splits_on_comma(&name) {
            for part in split_list(value) {
                headers.push(Header {
                    name: name.clone(),
                    value: part.to_string(),
                });
            }
        } else {
            headers.push(Header {
                name,
                value: value.to_string(),
            });
        }
        if headers.len() > MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
    }
    let printed_headers =
        headers.len() + usize::from(!headers.iter().any(|h: &Header| h.name == "Content-Length"));
    if printed_headers > MAX_HEADERS {
        return Err(ParseError::TooManyHeaders);
    }
    let body_at = end
        + if data[end..].starts_with(b"\r\n\r\n") {
            4
        } else {
            2
        };
    Ok((
        body_at,
        Message {
            start,
            headers,
            body: Vec::new(),
        },
    ))
}

/// Offset of the blank line ending the head (CRLFCRLF, or bare LFLF from sloppy peers).
fn find_head_end(data: &[u8]) -> Option<usize> {
    let crlf = data.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = data.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) if b + 1 < a => Some(b),
        (Some(a), _) => Some(a),
        (None, Some(b)) => Some(b),
        (None, None) => None,
    }
}

/// Splits the head into logical lines, joining continuation lines (RFC 3261 §7.3.1 folding).
fn unfold(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.starts_with([' ', '\t']) {
            if let Some(last) = lines.last_mut() {
                last.push(' ');
                last.push_str(raw.trim_start());
                continue;
            }
        }
        lines.push(raw.to_string());
    }
    lines
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| ParseError::BadStartLine)?;
        if !(100..=699).contains(&code) || code.to_string().len() != 3 {
            return Err(ParseError::BadStartLine);
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine);
    };
    if version != "SIP/2.0" {
        return Err(if version.starts_with("SIP/") {
            ParseError::BadVersion
        } else {
            ParseError::BadStartLine
        });
    }
    if method.is_empty()
        || !method.bytes().all(is_token_char)
        || uri.is_empty()
        || !uri.contains(':')
    {
        return Err(ParseError::BadStartLine);
    }
    Ok(StartLine::Request {
        method: Method::parse(method),
        uri: uri.to_string(),
    })
}

/// Splits a comma-separated header list, ignoring commas inside quotes or angle brackets.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:+4930123@10.99.1.1 SIP/2.0\r\n\
v: SIP/2.0/UDP 10.99.1.2:5060;branch=z9hG4bK-1,SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-0\r\n\
From: <sip:100@10.99.1.2>;tag=a\r\n\
To: <sip:+4930123@10.99.1.1>\r\n\
Call-ID: abc\r\n\
CSeq: 1 INVITE\r\n\
Subject: folded\r\n  line\r\n\
X-Custom: kept\r\n\
l: 4\r\n\
\r\n\
v=0\n";

    #[test]
    fn parses_compact_folded_and_lists() {
        let m = Message::parse_datagram(INVITE.as_bytes()).unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.headers_named("Via").count(), 2);
        assert_eq!(m.header("Subject"), Some("folded line"));
        assert_eq!(m.header("x-custom"), Some("kept"));
        assert_eq!(m.body, b"v=0\n");
    }

    #[test]
    fn print_parse_round_trip() {
        let m = Message::parse_datagram(INVITE.as_bytes()).unwrap();
        let again = Message::parse_datagram(&m.to_bytes()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn stream_framing_waits_for_body() {
        let bytes = INVITE.as_bytes();
        assert_eq!(
            Message::parse_stream(&bytes[..bytes.len() - 2]).unwrap(),
            None
        );
        let mut two = b"\r\n\r\n".to_vec();
        two.extend_from_slice(bytes);
        two.extend_from_slice(bytes);
        let (m, used) = Message::parse_stream(&two).unwrap().unwrap();
        assert_eq!(used, 4 + bytes.len());
        assert_eq!(m.body, b"v=0\n");
    }

    #[test]
    fn rejects_bad_input() {
        let lying = INVITE.replace("l: 4", "l: 400");
        assert_eq!(
            Message::parse_datagram(lying.as_bytes()),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            Message::parse_datagram(b"HELLO\r\n\r\n"),
            Err(ParseError::BadStartLine)
        );
        assert_eq!(
            Message::parse_datagram(b"SIP/2.0 99 x\r\n\r\n"),
            Err(ParseError::BadStartLine)
        );
        let bomb = format!(
            "OPTIONS sip:a@b SIP/2.0\r\n{}\r\n",
            "Via: x\r\n".repeat(300)
        );
        assert_eq!(
            Message::parse_datagram(bomb.as_bytes()),
            Err(ParseError::TooManyHeaders)
        );
    }

    /// Found in review: a Content-Length near usize::MAX wrapped `head + length` around the
    /// size limit and the body slice panicked.
    #[test]
    fn a_huge_content_length_on_a_stream_is_too_large_not_a_panic() {
        let huge = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: {}\r\n\r\nxyz",
            usize::MAX
        );
        assert_eq!(
            Message::parse_stream(huge.as_bytes()),
            Err(ParseError::TooLarge)
        );
    }

    /// Found by the fuzzer: a message with exactly MAX_HEADERS headers and no Content-Length
    /// parsed, but its printed form (which adds Content-Length) did not.
    #[test]
    fn what_parses_prints_within_the_header_limit() {
        let at_limit = |vias: usize, content_length: &str| {
            format!(
                "OPTIONS sip:a@b SIP/2.0\r\nVia: {}\r\n{content_length}\r\n",
                vec!["x"; vias].join(",")
            )
        };
        let without_length = at_limit(MAX_HEADERS, "");
        assert_eq!(
            Message::parse_datagram(without_length.as_bytes()),
            Err(ParseError::TooManyHeaders)
        );
        let shorter = Message::parse_datagram(at_limit(MAX_HEADERS - 1, "").as_bytes()).unwrap();
        let printed = Message::parse_datagram(&shorter.to_bytes()).unwrap();
        assert_eq!(printed.headers.len(), MAX_HEADERS);
        let with_length = at_limit(MAX_HEADERS - 1, "Content-Length: 0\r\n");
        assert!(Message::parse_datagram(with_length.as_bytes()).is_ok());
    }
}
