//! The `[capture]` section and each trunk's `hep`: where SIP messages are mirrored as HEP v3
//! (Homer).
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

/// A trunk's `hep`: where the SIP messages exchanged with its peers are captured, so that one
/// trunk can be kept out of Homer (privacy, volume) or sent to its own collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrunkCapture {
    /// Absent or `true`: the `[capture] hep` collector, when there is one.
    #[default]
    Default,
    /// `false`: not captured.
    Off,
    /// `"udp:IP:PORT"`: this collector instead of `[capture] hep`.
    To(SocketAddr),
}

/// A trunk's `hep` as written: a flag or a collector.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawTrunkHep {
    Flag(bool),
    Collector(String),
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
    let hep = raw.hep.map(|s| collector(&s, &at, err)).transpose()?;
    Ok(CaptureConfig {
        hep,
        agent_id: raw.agent_id,
    })
}

/// Checks a trunk's `hep` (`at` is the key): `true`, `false` or a `udp:IP:PORT` collector.
pub(super) fn trunk_capture(
    raw: Option<&RawTrunkHep>,
    at: &[Seg],
    err: ErrAt,
) -> Result<TrunkCapture, ConfigError> {
    Ok(match raw {
        None | Some(RawTrunkHep::Flag(true)) => TrunkCapture::Default,
        Some(RawTrunkHep::Flag(false)) => TrunkCapture::Off,
        Some(RawTrunkHep::Collector(s)) => TrunkCapture::To(collector(s, at, err)?),
    })
}

/// A HEP collector: a `udp:IP:PORT` endpoint.
fn collector(s: &str, at: &[Seg], err: ErrAt) -> Result<SocketAddr, ConfigError> {
    let e: Endpoint = s.parse().map_err(|m| err(at, m))?;
    if e.transport != Transport::Udp {
        return Err(err(
            at,
            format!("`{s}`: HEP is sent over UDP only (udp:IP:PORT)"),
        ));
    }
    Ok(e.addr)
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

    #[test]
    fn a_trunk_hep_is_a_flag_or_a_collector() {
        use super::TrunkCapture;
        let trunk = |hep: &str| {
            format!(
                "{BASE}[[trunk]]\nname = \"t\"\nkind = \"itsp\"\npeers = [\"udp:127.0.0.2:5060\"]\n\
                 local = \"udp:127.0.0.1:5060\"\n{hep}\n"
            )
        };
        let hep_of = |hep: &str| parse("t.toml", &trunk(hep)).map(|c| c.trunks[0].hep);
        assert_eq!(hep_of(""), Ok(TrunkCapture::Default));
        assert_eq!(hep_of("hep = true"), Ok(TrunkCapture::Default));
        assert_eq!(hep_of("hep = false"), Ok(TrunkCapture::Off));
        assert_eq!(
            hep_of("hep = \"udp:10.0.0.8:9060\""),
            Ok(TrunkCapture::To("10.0.0.8:9060".parse().unwrap()))
        );
        for bad in [
            "hep = \"tcp:10.0.0.8:9060\"",
            "hep = \"collector\"",
            "hep = 9060",
        ] {
            let e = hep_of(bad).unwrap_err();
            assert_eq!((e.line, e.key.as_str()), (10, "trunk[0].hep"), "{bad}: {e}");
        }
    }
}
