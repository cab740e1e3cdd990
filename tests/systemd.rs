//! `scripts/mediagate.service`: `systemd-analyze verify` accepts it without a warning (with
//! ExecStart pointed at the binary under test, since verify checks that it exists), and it
//! holds what the README promises: the six capabilities and no others, unlimited locked
//! memory, restart on failure, SIGHUP as reload, SIGTERM as stop with a stop timeout above the
//! default grace period. Skips (saying so) only where systemd-analyze is not installed
//! (`scripts/install-deps` installs it).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const CAPABILITIES: [&str; 6] = [
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_NICE",
    "CAP_IPC_LOCK",
];

fn unit_text() -> String {
    fs::read_to_string(repo_root().join("scripts/mediagate.service")).expect("read the unit")
}

/// Values of `key=` lines of the unit, in order.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn one<'a>(unit: &'a str, key: &str) -> &'a str {
    match values(unit, key).as_slice() {
        [v] => v,
        other => panic!("{key}= appears {} times in the unit", other.len()),
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `systemd-analyze verify` of `unit` (installed as `mediagate.service` in a scratch
/// directory): exit success and stderr.
fn verify(unit: &str, dir: &Path) -> (bool, String) {
    let path = dir.join("mediagate.service");
    fs::write(&path, unit).unwrap();
    let out = Command::new("timeout")
        .args(["30", "systemd-analyze", "verify"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unit_passes_systemd_analyze_verify_and_holds_the_promised_settings() {
    let unit = unit_text();

    let caps = |key| {
        let mut v: Vec<&str> = one(&unit, key).split_whitespace().collect();
        v.sort();
        v
    };
    let mut want = CAPABILITIES.to_vec();
    want.sort();
    assert_eq!(caps("AmbientCapabilities"), want);
    assert_eq!(caps("CapabilityBoundingSet"), want);
    assert_eq!(one(&unit, "LimitMEMLOCK"), "infinity");
    assert_eq!(one(&unit, "Restart"), "on-failure");
    assert_eq!(one(&unit, "KillSignal"), "SIGTERM");
    assert_eq!(one(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(one(&unit, "ExecStart").ends_with("--config /etc/mediagate/mediagate.toml"));
    // Above the default grace plus the 2 s linger and 2 s of un-REGISTER after it.
    let grace = mediagate::config::parse("default", mediagate::config::EMBEDDED_DEFAULT)
        .unwrap()
        .control
        .shutdown_grace;
    let stop: u64 = one(&unit, "TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        Duration::from_secs(stop) > grace + Duration::from_secs(4),
        "TimeoutStopSec={stop} is not above shutdown_grace_s ({grace:?}) + 4 s"
    );

    let has_analyze = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("systemd-analyze").is_file()));
    if !has_analyze {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed (scripts/install-deps)");
        return;
    }
    let dir = Scratch(std::env::temp_dir().join(format!("mediagate-unit-{}", std::process::id())));
    fs::create_dir_all(&dir.0).unwrap();
    let bin = mediagate_bin();
    assert!(bin.is_file(), "{} not built", bin.display());
    let testable = unit.replace("/usr/bin/mediagate", &bin.display().to_string());
    let (ok, stderr) = verify(&testable, &dir.0);
    assert!(
        ok && stderr.trim().is_empty(),
        "systemd-analyze verify: ok={ok}\n{stderr}"
    );

    // The check can fail: a misspelt signal is reported.
    let broken = testable.replace("KillSignal=SIGTERM", "KillSignal=SIGTREM");
    let (_, stderr) = verify(&broken, &dir.0);
    assert!(
        stderr.contains("SIGTREM"),
        "verify missed a bad signal: {stderr}"
    );
}
