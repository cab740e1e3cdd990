//! What a configuration reload (SIGHUP) may change in a running mediagate.
//!
//! Routes, translation rules, header policy, deny-lists, limits, failover and timeouts apply to
//! new calls at once. Settings bound to sockets, threads or per-peer state cannot change while
//! running: listen addresses, media ports, interfaces and data plane, the control endpoints,
//! the CDR file, the log format, the HEP capture, and each kept trunk's wiring (peers,
//! `local`, OPTIONS probing, registration). A reload keeps their running values and names them
//! so the operator knows a restart is needed.
//!
//! The trunk list itself may change: per-trunk state (peer health, limits and drain, the
//! registration, counters) lives in *slots*, indexes into `Config::trunks` that stay fixed for
//! the life of the process. A trunk kept across the reload (same name) keeps its slot and so its
//! state, whatever its position in the file; a new trunk takes a free slot (one whose removed
//! trunk has no call left) or a new one at the end; a removed trunk stays in its slot marked
//! `retired` so that its calls finish on the configuration they started with, until a later
//! reload reuses the slot. Routes are rewritten from file positions to slots.

use super::{Config, Transport, Trunk};

/// A reloaded configuration ready to use, and the keys whose change waits for a restart.
#[derive(Debug)]
pub struct Merged {
    /// The new file's settings, with every restart-only key at its running value.
    pub config: Config,
    /// Keys (e.g. `media.ports`, `trunk[itsp].peers`) whose new value was not applied.
    pub restart_needed: Vec<String>,
    /// Slots that now hold a trunk the running process did not have: it starts probing and
    /// registering, with fresh counters and limits.
    pub added: Vec<usize>,
    /// Slots whose trunk the file no longer has, retired by this reload: probing stops, its
    /// registration is removed, its calls finish.
    pub removed: Vec<usize>,
}

/// Merges the newly loaded `new` into the running `old`: see the module documentation. `free`
/// are the retired slots no call uses any more, which new trunks may take. Errors (the reload
/// is refused, `old` stays) when a new trunk needs what only a restart sets up.
pub fn merge(old: &Config, mut new: Config, free: &[usize]) -> Result<Merged, String> {
    let (added, removed) = arrange_trunks(old, &mut new, free)?;
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
    running!("media.handover", media.handover);
    running!("media.state_file", media.state_file);
    running!("media.pin_dir", media.pin_dir);
    let kept = old
        .trunks
        .iter()
        .zip(new.trunks.iter_mut())
        .enumerate()
        .filter(|(i, (_, n))| !n.retired && !added.contains(i));
    for (_, (o, n)) in kept {
        let name = n.name.clone();
        let mut wire = |key: &str, changed: bool| keep(&format!("trunk[{name}].{key}"), changed);
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
        added,
        removed,
    })
}

/// Puts the file's trunks of `new` into the running slots of `old` (see the module
/// documentation) and rewrites the routes to match: (added slots, removed slots).
fn arrange_trunks(
    old: &Config,
    new: &mut Config,
    free: &[usize],
) -> Result<(Vec<usize>, Vec<usize>), String> {
    let file = std::mem::take(&mut new.trunks);
    let mut slots: Vec<Option<Trunk>> = vec![None; old.trunks.len()];
    let mut slot_of = vec![0; file.len()];
    let mut fresh = Vec::new();
    for (i, t) in file.into_iter().enumerate() {
        match old
            .trunks
            .iter()
            .position(|o| !o.retired && o.name == t.name)
        {
            Some(s) => {
                slot_of[i] = s;
                slots[s] = Some(t);
            }
            None => fresh.push((i, t)),
        }
    }
    let removed: Vec<usize> = (0..old.trunks.len())
        .filter(|s| slots[*s].is_none() && !old.trunks[*s].retired)
        .collect();
    let mut reusable = free
        .iter()
        .copied()
        .filter(|s| old.trunks.get(*s).is_some_and(|t| t.retired));
    let mut added = Vec::new();
    for (i, t) in fresh {
        addable(old, &t)?;
        let s = reusable.next().unwrap_or_else(|| {
            slots.push(None);
            slots.len() - 1
        });
        slots[s] = Some(t);
        slot_of[i] = s;
        added.push(s);
    }
    new.trunks = slots
        .into_iter()
        .enumerate()
        .map(|(s, t)| {
            t.unwrap_or_else(|| Trunk {
                retired: true,
                ..old.trunks[s].clone()
            })
        })
        .collect();
    for r in &mut new.routes {
        for t in r.from.iter_mut().chain(r.to.iter_mut()) {
            *t = slot_of[*t];
        }
    }
    added.sort_unstable();
    Ok((added, removed))
}

/// Whether trunk `t`, new in a reloaded file, can start without a restart: its sockets and
/// media address exist already, and nothing of it needs start-up work (DNS resolver tasks,
/// TLS trust per peer).
fn addable(old: &Config, t: &Trunk) -> Result<(), String> {
    let refuse = |why: String| {
        Err(format!(
            "trunk[{}]: {why}; adding it needs a restart",
            t.name
        ))
    };
    if !old.sip.listen.contains(&t.local) {
        return refuse(format!(
            "local = \"{}:{}\" is not a running listen address",
            t.local.transport.lower(),
            t.local.addr
        ));
    }
    let mut media = old
        .trunks
        .iter()
        .map(|o| o.local.addr.ip())
        .chain(old.media.interfaces.iter().map(|i| i.address));
    if !media.any(|ip| ip == t.local.addr.ip()) {
        return refuse(format!(
            "the data plane was started without media address {}",
            t.local.addr.ip()
        ));
    }
    if t.has_named_peers() {
        return refuse("its peers are given by name (resolved from start-up on)".into());
    }
    if t.peers.iter().any(|p| p.transport == Transport::Tls) {
        return refuse("it has tls: peers (their TLS settings are loaded at start-up)".into());
    }
    Ok(())
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
        let m = merge(&old, cfg(&text), &[]).unwrap();
        assert!(m.config.routes[0].called.is_match("2"));
        assert!(!m.config.routes[0].called.is_match("1"));
        assert_eq!(m.config.media.timeout.as_secs(), 7);
        assert_eq!(m.config.media.port_first, 30000);
        assert_eq!(m.config.trunks[1].peers, old.trunks[1].peers);
        assert_eq!(m.restart_needed, ["media.ports", "trunk[itsp].peers"]);
        assert!(m.added.is_empty() && m.removed.is_empty());
    }

    #[test]
    fn an_unchanged_file_needs_no_restart() {
        let m = merge(&cfg(BASE), cfg(BASE), &[]).unwrap();
        assert!(m.restart_needed.is_empty());
    }

    /// BASE with `itsp` renamed `carrier` and listed before `pbx`.
    fn renamed_and_reordered() -> String {
        let (head, rest) = BASE.split_once("[[trunk]]").unwrap();
        let (pbx, rest) = rest.split_once("[[trunk]]").unwrap();
        let (itsp, routes) = rest.split_once("[[route]]").unwrap();
        let carrier = itsp.replace("name = \"itsp\"", "name = \"carrier\"");
        let routes = routes.replace("[\"itsp\"]", "[\"carrier\"]");
        format!("{head}[[trunk]]{carrier}[[trunk]]{pbx}[[route]]{routes}")
    }

    #[test]
    fn kept_trunks_keep_their_slot_new_ones_are_added_removed_ones_retired() {
        let old = cfg(BASE);
        let m = merge(&old, cfg(&renamed_and_reordered()), &[]).unwrap();
        let c = &m.config;
        let names: Vec<_> = c
            .trunks
            .iter()
            .map(|t| (t.name.as_str(), t.retired))
            .collect();
        assert_eq!(names, [("pbx", false), ("itsp", true), ("carrier", false)]);
        assert_eq!((m.added, m.removed), (vec![2], vec![1]));
        assert_eq!(c.routes[0].from, [0]);
        assert_eq!(c.routes[0].to, [2]);
        // A call from the pbx peer still finds pbx; the shared peer is now carrier's.
        assert_eq!(c.trunk_of_peer("10.99.1.2".parse().unwrap()), Some(0));
        assert_eq!(c.trunk_of_peer("10.99.2.2".parse().unwrap()), Some(2));
        assert!(m.restart_needed.is_empty(), "{:?}", m.restart_needed);
    }

    #[test]
    fn a_retired_slot_is_reused_only_once_free() {
        let first = merge(&cfg(BASE), cfg(&renamed_and_reordered()), &[])
            .unwrap()
            .config;
        let text = BASE
            .replace("name = \"itsp\"", "name = \"other\"")
            .replace("[\"itsp\"]", "[\"other\"]");
        let busy = merge(&first, cfg(&text), &[]).unwrap();
        assert_eq!(busy.config.trunks.len(), 4, "slot 1 still carries calls");
        assert_eq!(busy.added, [3]);
        let free = merge(&first, cfg(&text), &[1]).unwrap();
        let names: Vec<_> = free
            .config
            .trunks
            .iter()
            .map(|t| (t.name.as_str(), t.retired))
            .collect();
        assert_eq!(names, [("pbx", false), ("other", false), ("carrier", true)]);
        assert_eq!((free.added, free.removed), (vec![1], vec![2]));
        assert_eq!(free.config.routes[0].to, [1]);
    }

    #[test]
    fn a_new_trunk_needing_a_restart_is_refused() {
        let text = BASE
            .replace(
                "udp:10.99.2.1:5060\"]",
                "udp:10.99.2.1:5060\", \"udp:10.99.3.1:5060\"]",
            )
            .replace(
                "peers = [\"udp:10.99.2.2:5060\"]\nlocal = \"udp:10.99.2.1:5060\"",
                "peers = [\"udp:10.99.3.2:5060\"]\nlocal = \"udp:10.99.3.1:5060\"",
            )
            .replace("name = \"itsp\"", "name = \"far\"")
            .replace("[\"itsp\"]", "[\"far\"]");
        let e = merge(&cfg(BASE), cfg(&text), &[]).unwrap_err();
        assert!(
            e.contains("trunk[far]") && e.contains("not a running listen address"),
            "{e}"
        );
    }
}
