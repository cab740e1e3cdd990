//! Log output: the subscriber set up from `[log]` (human or JSON lines on stderr, the level from
//! the config unless `RUST_LOG` is set) and the redacting wrappers through which phone numbers
//! and SIP URIs are logged, so `log.redact = true` keeps them out of log files (GDPR,
//! PCI) while the last digits still tell calls apart.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::config::{LogConfig, LogFormat};

/// Whether numbers are masked; set from `log.redact` at start and on reload.
static REDACT: AtomicBool = AtomicBool::new(false);

/// Replaces the running level filter (set by [`init`]); an error names what failed.
type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Digits left visible at the end of a masked number.
const VISIBLE_DIGITS: usize = 2;

/// Installs the process's subscriber for `config` (once, at start). `RUST_LOG`, when set,
/// replaces `log.level` (and keeps [`set_level`] from changing it).
pub fn init(config: &LogConfig) {
    set_redact(config.redact);
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // The reload handle's type differs per format, so each branch stores its own closure.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            if !fixed {
                let _ = SET_LEVEL.set(Box::new(move |level: &str| {
                    handle
                        .reload(tracing_subscriber::EnvFilter::new(level))
                        .map_err(|e| e.to_string())
                }));
            }
            builder.init()
        }};
    }
    match config.format {
        LogFormat::Human => install!(builder),
        LogFormat::Json => install!(builder.json().with_current_span(true).with_span_list(false)),
    }
}

/// Applies `log.level` from a reloaded configuration. Does nothing (and says so) when
/// `RUST_LOG` set the level at start, or before [`init`].
pub fn set_level(level: &str) {
    match SET_LEVEL.get() {
        Some(set) => match set(level) {
            Ok(()) => tracing::info!(level, "log level changed"),
            Err(error) => tracing::warn!(level, %error, "cannot change the log level"),
        },
        None => tracing::info!(level, "log.level not applied: RUST_LOG sets the level"),
    }
}

/// Turns masking on or off (`log.redact`, applied again by a reload).
pub fn set_redact(on: bool) {
    REDACT.store(on, Ordering::Relaxed);
}

/// A phone number as logged: every digit but the last two becomes `x` while redaction is on
/// (`+4930123` → `+xxxxx23`); other characters stay, so the shape of the number shows.
pub struct Number<'a>(pub &'a str);

impl fmt::Display for Number<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !REDACT.load(Ordering::Relaxed) {
            return f.write_str(self.0);
        }
        f.write_str(&mask(self.0))
    }
}

/// A SIP URI as logged: its user part (the number) is masked like [`Number`].
pub struct Uri<'a>(pub &'a str);

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once('@') {
            Some((scheme_user, host)) if REDACT.load(Ordering::Relaxed) => {
                let (scheme, user) = scheme_user.split_once(':').unwrap_or(("", scheme_user));
                let sep = if scheme.is_empty() { "" } else { ":" };
                write!(f, "{scheme}{sep}{}@{host}", mask(user))
            }
            _ => f.write_str(self.0),
        }
    }
}

fn mask(s: &str) -> String {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    let hide = digits.saturating_sub(VISIBLE_DIGITS);
    let mut seen = 0;
    s.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen <= hide {
                    return 'x';
                }
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_all_but_the_last_two_digits() {
        assert_eq!(mask("+4930123"), "+xxxxx23");
        assert_eq!(mask("12"), "12");
        assert_eq!(mask("anonymous"), "anonymous");
        assert_eq!(mask("030-123 45"), "xxx-xxx 45");
    }

    #[test]
    fn wrappers_follow_the_switch() {
        // One test flips the process-wide switch, so the two states are checked in order.
        set_redact(false);
        assert_eq!(Number("+4930123").to_string(), "+4930123");
        assert_eq!(
            Uri("sip:+4930123@10.0.0.1:5060").to_string(),
            "sip:+4930123@10.0.0.1:5060"
        );
        set_redact(true);
        assert_eq!(Number("+4930123").to_string(), "+xxxxx23");
        assert_eq!(
            Uri("sip:+4930123@10.0.0.1:5060").to_string(),
            "sip:+xxxxx23@10.0.0.1:5060"
        );
        assert_eq!(Uri("sip:10.0.0.1").to_string(), "sip:10.0.0.1");
        set_redact(false);
    }
}
