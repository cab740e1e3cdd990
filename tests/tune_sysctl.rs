//! `scripts/tune-sysctl` inside a throwaway network namespace (the lab's mg namespace): the
//! per-namespace settings (net.ipv4.udp_{r,w}mem_min, ip_local_reserved_ports, and the RPS/XPS
//! masks of the namespace's veth) change on apply, `--dry-run` changes nothing, a second apply
//! is refused, and `--revert` restores the exact previous values. The global settings are
//! skipped there: absent (netdev budget and backlog, busy poll, udp_mem) or read-only
//! (net.core.{r,w}mem_{max,default} on this kernel); the host's values are checked untouched
//! throughout. Needs root; fails (never skips) without it.

mod common;

use std::collections::BTreeMap;

use common::*;

/// Per-namespace sysctls the script sets, with the values it sets.
const SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/udp_rmem_min", "16384"),
    ("net/ipv4/udp_wmem_min", "16384"),
];
/// Global ones: absent inside the namespace, so never touched from there.
const GLOBAL: [&str; 6] = [
    "net/core/netdev_max_backlog",
    "net/core/netdev_budget",
    "net/core/busy_poll",
    "net/ipv4/udp_mem",
    "net/core/rmem_max",
    "net/ipv4/ip_local_reserved_ports",
];
const PORTS: &str = "30000-30999";

/// Files and their contents, read in namespace `ns` (the host's when `None`).
fn snapshot(ns: Option<&str>, files: &[String]) -> BTreeMap<String, String> {
    let script = r#"for f in "$@"; do printf '%s\t%s\n' "$f" "$(cat "$f" 2>/dev/null || echo '<absent>')"; done"#;
    let mut cmd = std::process::Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["netns", "exec", ns]);
    } else {
        // The test runs in the host's namespaces: `ip netns exec` is not needed.
        cmd = std::process::Command::new("env");
    }
    let out = run(cmd.args(["sh", "-c", script, "sh"]).args(files));
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect()
}

/// Runs the script in `ns` with `args`: success, and stdout + stderr.
fn tune(ns: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("timeout")
        .args(["30", "ip", "netns", "exec", ns])
        .arg(repo_root().join("scripts/tune-sysctl"))
        .args(args)
        .output()
        .expect("run tune-sysctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn dry_run_apply_and_revert_in_a_network_namespace() {
    require_root_and_tools();
    let lab = Lab::new("tune");
    let ns = lab.mg();
    let dev = lab.mg_gw_if();
    let state = lab.path("tune.state").display().to_string();
    let queue = |q: &str| format!("/sys/class/net/{dev}/queues/{q}");
    let mut files: Vec<String> = SYSCTLS
        .iter()
        .map(|(k, _)| format!("/proc/sys/{k}"))
        .chain(["/proc/sys/net/ipv4/ip_local_reserved_ports".to_string()])
        .chain(["/proc/sys/net/core/rmem_max".to_string()])
        .collect();
    for q in ["rx-0", "rx-1"] {
        files.push(format!("{}/rps_cpus", queue(q)));
    }
    for q in ["tx-0", "tx-1"] {
        files.push(format!("{}/xps_cpus", queue(q)));
    }
    let host_files: Vec<String> = GLOBAL.iter().map(|k| format!("/proc/sys/{k}")).collect();
    let host = snapshot(None, &host_files);
    let before = snapshot(Some(&ns), &files);
    assert!(!before.values().any(|v| v == "<absent>"), "{before:?}");
    let args = [
        "--state", &state, "--ports", PORTS, "--cores", "0,1", "--dev", &dev,
    ];

    // Dry run: says what it would do, changes nothing, records nothing.
    let (ok, out) = tune(&ns, &[&["--dry-run"][..], &args].concat());
    assert!(ok, "{out}");
    assert!(
        out.contains("would set /proc/sys/net/ipv4/udp_rmem_min")
            && out.contains("skip /proc/sys/net/core/rmem_max = "),
        "{out}"
    );
    assert!(
        out.contains("skip /proc/sys/net/core/netdev_max_backlog"),
        "a global sysctl must be skipped inside a namespace:\n{out}"
    );
    assert!(out.lines().all(|l| !l.starts_with("set ")), "{out}");
    assert_eq!(snapshot(Some(&ns), &files), before);
    assert!(!lab.path("tune.state").exists());

    // Apply: the namespace's values change, every line has its reason, the host stays.
    let (ok, out) = tune(&ns, &args);
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .filter(|l| l.starts_with("set ") || l.starts_with("skip "))
            .all(|l| l.contains("  # ")),
        "a setting without its reason:\n{out}"
    );
    let after = snapshot(Some(&ns), &files);
    assert_eq!(
        after["/proc/sys/net/core/rmem_max"], before["/proc/sys/net/core/rmem_max"],
        "a global value changed from inside a namespace\n{out}"
    );
    for (k, v) in SYSCTLS {
        assert_eq!(after[&format!("/proc/sys/{k}")], v, "{k}\n{out}");
    }
    let reserved = &after["/proc/sys/net/ipv4/ip_local_reserved_ports"];
    assert!(reserved.split(',').any(|r| r == PORTS), "{reserved}");
    let mask = |f: &str| u64::from_str_radix(&after[f].replace(',', ""), 16).unwrap();
    assert_eq!(mask(&format!("{}/rps_cpus", queue("rx-0"))), 0b11);
    assert_eq!(mask(&format!("{}/rps_cpus", queue("rx-1"))), 0b11);
    assert_eq!(mask(&format!("{}/xps_cpus", queue("tx-0"))), 0b01);
    assert_eq!(mask(&format!("{}/xps_cpus", queue("tx-1"))), 0b10);
    assert!(lab.path("tune.state").is_file());
    assert_eq!(
        snapshot(None, &host_files),
        host,
        "the host's settings changed"
    );

    // Applying twice would record tuned values as "previous": refused.
    let (ok, out) = tune(&ns, &args);
    assert!(!ok && out.contains("already applied"), "{out}");

    // Revert: exactly the values from before, and the state file is gone.
    let (ok, out) = tune(&ns, &["--revert", "--state", &state]);
    assert!(ok, "{out}");
    assert_eq!(snapshot(Some(&ns), &files), before, "{out}");
    assert!(!lab.path("tune.state").exists());
    assert_eq!(
        snapshot(None, &host_files),
        host,
        "the host's settings changed"
    );
    let (ok, out) = tune(&ns, &["--revert", "--state", &state]);
    assert!(!ok && out.contains("nothing to revert"), "{out}");
}
