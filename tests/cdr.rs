//! The CDR file of a real mediagate: opened at start-up, reopened on SIGHUP after logrotate
//! moved it away (with the process still running), and a CDR directory that does not exist
//! stopping the start. Needs root (network namespaces).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use common::*;

fn config_with_cdr(path: &Path) -> String {
    format!(
        "{}\n[cdr]\npath = \"{}\"\nmax_mb = 1\nkeep = 2\n",
        config(30),
        path.display()
    )
}

#[test]
fn cdr_file_reopened_on_sighup() {
    let lab = Lab::new("cdr_hup");
    let path = lab.path("cdr.jsonl");
    let mut mg = Mediagate::start(&lab, &config_with_cdr(&path));

    // Opened at start-up, before any call, so that the reopen below is observable.
    assert!(path.is_file(), "{} not created at start", path.display());
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o007, 0, "CDR file readable by others: {mode:o}");

    // logrotate without copytruncate: move the file away, then SIGHUP.
    let moved = lab.path("cdr.jsonl.1");
    fs::rename(&path, &moved).unwrap();
    mg.sighup();
    wait_for(Duration::from_secs(5), "the CDR file reopened", || {
        path.is_file()
    });
    mg.wait_log(Duration::from_secs(5), "CDR file reopened");

    // Still alive and serving; a second SIGHUP (file in place) is harmless too.
    mg.status();
    mg.sighup();
    sleep(Duration::from_millis(300));
    mg.status();
    assert!(path.is_file() && moved.is_file());

    let st = mg.stop().expect("mediagate was running");
    assert!(st.success(), "mediagate exit when stopped: {st}");
}

#[test]
fn missing_cdr_directory_stops_the_start() {
    let lab = Lab::new("cdr_nodir");
    let path = lab.path("no-such-dir/cdr.jsonl");
    let config_path = lab.path("mediagate.toml");
    fs::write(&config_path, config_with_cdr(&path)).unwrap();
    let out = Command::new("timeout")
        .args(["10", "ip", "netns", "exec", &lab.mg()])
        .arg(mediagate_bin())
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .output()
        .expect("run mediagate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains("opening the CDR file") && stderr.contains("no-such-dir"),
        "the error names the CDR file:\n{stderr}"
    );
    assert!(
        !lab.path("no-such-dir").exists(),
        "the directory is not created"
    );
}
