//! The `[capture]` section: where SIP messages are mirrored as HEP v3 (Homer).
//!
//! A child module of `config` so that its keys share the file:line:key errors.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, Endpoint, Seg, Transport};
use crate::config::routing::ErrAt;

/// `[capture]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptureConfig {
    /// The HEP collector (`hep = "udp:IP:PORT"`); no capture when absent.
    pub hep: Option<SocketAddr>,
    /// HEP capture agent id (chunk 0x000c), to tell several mediagates apart in Homer.
    pub agent_id: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapture {
    hep: Option<String>,
    #[serde(default)]
    agent_id: u32,
}

/// Checks `[capture]`: `hep` must be a `udp:IP:PORT` endpoint (HEP is sent over UDP).
pub(super) fn capture(raw: RawCapture, err: ErrAt) -> Result<CaptureConfig, ConfigError> {
    let at = [Seg::Key("capture"), Seg::Key("hep")];
    let hep = match raw.hep {
        None => None,
        Some(s) => {
            let e: Endpoint = s.parse().map_err(|m| err(&at, m))?;
            if e.transport != Transport::Udp {
                return Err(err(
                    &at,
                    format!("`{s}`: HEP is sent over UDP only (udp:IP:PORT)"),
                ));
            }
            Some(e.addr)
        }
    };
    Ok(CaptureConfig {
        hep,
        agent_id: raw.agent_id,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const BASE: &str =
        "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\n[media]\nports = \"30000-30099\"\n";

    #[test]
    fn hep_endpoint_is_checked() {
        let c = parse("t.toml", BASE).unwrap();
        assert_eq!(c.capture.hep, None);
        let c = parse(
            "t.toml",
            &format!("{BASE}[capture]\nhep = \"udp:10.0.0.9:9060\"\nagent_id = 7\n"),
        )
        .unwrap();
        assert_eq!(c.capture.hep, Some("10.0.0.9:9060".parse().unwrap()));
        assert_eq!(c.capture.agent_id, 7);
        for bad in ["tcp:10.0.0.9:9060", "10.0.0.9:9060", "udp:collector:9060"] {
            let e = parse("t.toml", &format!("{BASE}[capture]\nhep = \"{bad}\"\n")).unwrap_err();
            assert_eq!((e.line, e.key.as_str()), (6, "capture.hep"), "{e}");
        }
    }
}
