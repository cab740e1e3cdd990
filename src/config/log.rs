//! The `[log]` section: output format, level and redaction of phone numbers.
//!
//! A child module of `config` so that its keys share the file:line:key errors.

use serde::Deserialize;

use super::{ConfigError, Seg};
use crate::config::routing::ErrAt;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event, the call's span (`call{id=… sip_call_id=…}`) in front.
    #[default]
    Human,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, `span`, `spans`),
    /// for log shippers.
    Json,
}

/// `[log]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directives (`info`, `mediagate=debug,warn`); `RUST_LOG` overrides.
    pub level: String,
    /// Phone numbers (and the user part of SIP URIs) are masked in log lines.
    pub redact: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: default_level(),
            redact: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    format: LogFormat,
    #[serde(default = "default_level")]
    level: String,
    #[serde(default)]
    redact: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Human,
            level: default_level(),
            redact: false,
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// Checks `[log]`: the level must be valid filter directives.
pub(super) fn log(raw: RawLog, err: ErrAt) -> Result<LogConfig, ConfigError> {
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&raw.level) {
        return Err(err(
            &[Seg::Key("log"), Seg::Key("level")],
            format!(
                "invalid level `{}`: {e} (e.g. \"info\", \"mediagate=debug,warn\")",
                raw.level
            ),
        ));
    }
    Ok(LogConfig {
        format: raw.format,
        level: raw.level,
        redact: raw.redact,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, LogFormat};

    const BASE: &str =
        "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\n[media]\nports = \"30000-30099\"\n";

    #[test]
    fn defaults_and_values() {
        let c = parse("t.toml", BASE).unwrap();
        assert_eq!(
            (c.log.format, c.log.level.as_str(), c.log.redact),
            (LogFormat::Human, "info", false)
        );
        let c = parse(
            "t.toml",
            &format!(
                "{BASE}[log]\nformat = \"json\"\nlevel = \"mediagate=debug,warn\"\nredact = true\n"
            ),
        )
        .unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(c.log.redact);
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let e = parse("t.toml", &format!("{BASE}[log]\nformat = \"xml\"\n")).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (6, "log.format"), "{e}");
        let e = parse(
            "t.toml",
            &format!("{BASE}[log]\nredact = true\nlevel = \"info,=[\"\n"),
        )
        .unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (7, "log.level"), "{e}");
        assert!(
            e.to_string()
                .starts_with("t.toml:7: log.level: invalid level"),
            "{e}"
        );
        let e = parse("t.toml", &format!("{BASE}[log]\ncolour = true\n")).unwrap_err();
        assert_eq!(e.key, "log.colour", "{e}");
    }
}
