//! What a configuration reload (SIGHUP) may change in a running mediagate.
//!
//! Routes, translation rules, header policy, deny-lists, limits, failover and timeouts apply to
//! new calls at once. Settings bound to sockets, threads or per-peer state cannot change while
//! running: listen addresses, media ports, interfaces and data plane, the control endpoints,
//! the CDR file, the log format, the HEP capture, and each trunk's wiring (peers,
//! `local`, OPTIONS probing, registration). A reload keeps their running values and names them
//! so the operator knows a restart is needed. Trunks are matched by position and name: a reload
//! that adds, removes, renames or reorders trunks is refused as a whole, because the routes of
//! the new file would name trunks that the running process has no sockets, health or
//! registration state for.

use super::Config;

/// A reloaded configuration ready to use, and the keys whose change waits for a restart.
#[derive(Debug)]
pub struct Merged {
    /// The new file's settings, with every restart-only key at its running value.
    pub config: Config,
    /// Keys (e.g. `media.ports`, `trunk[1].peers`) whose new value was not applied.
    pub restart_needed: Vec<String>,
}

/// Merges the newly loaded `new` into the running `old`: see the module documentation.
/// Errors (the reload is refused, `old` stays) when the trunk list differs.
pub fn merge(old: &Config, mut new: Config) -> Result<Merged, String> {
    let names = |c: &Config| c.trunks.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    if names(old) != names(&new) {
        return Err(format!(
            "trunk: the list of trunks changed (running {:?}, file {:?}); adding, removing, \
             renaming or reordering trunks needs a restart",
            names(old),
            names(&new)
        ));
    }
    let mut restart_needed = Vec::new();
    let mut keep = |key: &str, changed: bool| {
        if changed {
            restart_needed.push(key.to_string());
        }
    };
    macro_rules! running {
        ($key:expr, $($field:tt).+) => {
            keep(&$key, old.$($field).+ != new.$($field).+);
            new.$($field).+ = old.$($field).+.clone();
        };
    }
    running!("sip.listen", sip.listen);
    running!("media.ports", media.port_first);
    running!("media.ports", media.port_last);
    running!("media.dataplane", media.dataplane);
    running!("media.threads", media.threads);
    running!("media.cores", media.cores);
    running!("media.poll", media.busy_poll);
    running!("media.interface", media.interfaces);
    running!("control.http", control.http);
    running!("control.ng", control.ng);
    running!("cdr", cdr);
    running!("log.format", log.format);
    running!("capture", capture);
    // The front door (signalling::gate) and the data plane read these once at start.
    running!("sip.unknown", sip.unknown);
    running!("sip.rate_per_source", sip.per_source);
    running!("control.rate_per_source", control.per_source);
    running!("control.allow", control.allow);
    running!("media.max_packet_bytes", media.max_packet);
    for (i, (o, n)) in old.trunks.iter().zip(new.trunks.iter_mut()).enumerate() {
        let mut wire = |key: &str, changed: bool| keep(&format!("trunk[{i}].{key}"), changed);
        wire("peers", o.peers != n.peers);
        wire("local", o.local != n.local);
        wire("options_interval_s", o.probe != n.probe);
        wire("register", o.identity.register != n.identity.register);
        n.peers = o.peers.clone();
        n.local = o.local;
        n.probe = o.probe;
        n.identity.register = o.identity.register.clone();
        // Weights are per peer: they follow the peers that stay.
        if n.weights.len() != n.peers.len() && !n.weights.is_empty() {
            n.weights = o.weights.clone();
            n.strategy = o.strategy;
        }
    }
    restart_needed.dedup();
    Ok(Merged {
        config: new,
        restart_needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"
[sip]
listen = ["udp:10.99.1.1:5060", "udp:10.99.2.1:5060"]
[media]
ports = "30000-30099"
[[trunk]]
name = "pbx"
kind = "lan"
peers = ["udp:10.99.1.2:5060"]
local = "udp:10.99.1.1:5060"
[[trunk]]
name = "itsp"
kind = "itsp"
peers = ["udp:10.99.2.2:5060"]
local = "udp:10.99.2.1:5060"
[[route]]
from = ["pbx"]
match = "^1"
to = ["itsp"]
"#;

    fn cfg(text: &str) -> Config {
        parse("t.toml", text).unwrap()
    }

    #[test]
    fn routes_and_limits_change_restart_only_keys_keep_their_value() {
        let old = cfg(BASE);
        let text = BASE
            .replace("^1", "^2")
            .replace("30000-30099", "40000-40099")
            .replace("udp:10.99.2.2:5060", "udp:10.99.2.3:5060")
            .replace("[media]", "[media]\ntimeout_s = 7");
        let m = merge(&old, cfg(&text)).unwrap();
        assert!(m.config.routes[0].called.is_match("2"));
        assert!(!m.config.routes[0].called.is_match("1"));
        assert_eq!(m.config.media.timeout.as_secs(), 7);
        assert_eq!(m.config.media.port_first, 30000);
        assert_eq!(m.config.trunks[1].peers, old.trunks[1].peers);
        assert_eq!(m.restart_needed, ["media.ports", "trunk[1].peers"]);
    }

    #[test]
    fn an_unchanged_file_needs_no_restart() {
        let m = merge(&cfg(BASE), cfg(BASE)).unwrap();
        assert!(m.restart_needed.is_empty());
    }

    #[test]
    fn a_changed_trunk_list_is_refused() {
        let text = BASE
            .replace("name = \"itsp\"", "name = \"carrier\"")
            .replace("[\"itsp\"]", "[\"carrier\"]");
        let e = merge(&cfg(BASE), cfg(&text)).unwrap_err();
        assert!(e.contains("needs a restart"), "{e}");
    }
}
