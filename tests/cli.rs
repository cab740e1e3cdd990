//! `mediagate status` and `mediagate calls` against a running mediagate with a sipp call up
//! through it (namespace lab, tests/data/lab.toml): the tables show the trunks, their peers and
//! the call with its trunks, numbers, tier and moving packet counters. Needs root; fails
//! (never skips) without it.

mod common;

use std::time::Duration;

use common::*;

const DIALLED: &str = "+4930123";

/// The whitespace-separated cells of the first line of `table` starting with `first`.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
}

#[test]
fn status_and_calls_print_the_running_state() {
    require_root_and_tools();
    let lab = Lab::new("cli");
    let mut uas = Sipp::spawn(
        &lab,
        "itsp",
        SippOpts::new(lab.it(), "uas_echo", IT_IP)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mg = Mediagate::start(&lab, &config(30));
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        &lab,
        "pbx",
        SippOpts::new(lab.gw(), "uac_rtp", GW_IP)
            .caller(DIALLED, &remote)
            .args(&["-m", "1"])
            .timeout(30),
    );
    let (flowing, st) = mg.wait_status(Duration::from_secs(8), |st| {
        media_flowing(st, 1, Dataplane::Socket)
    });
    assert!(flowing, "media did not flow: {st:#}");

    let config = mg.config_path.display().to_string();
    let (rc, calls, err) = mg.cli(&["calls", "--config", &config]);
    assert!(rc.success(), "mediagate calls: {rc}\n{err}");
    let header = row(&calls, "CALL");
    assert_eq!(header[..4], ["CALL", "SOURCE", "FROM", "TO"], "{calls}");
    let id = st["calls"][0]["id"].as_str().unwrap();
    let call = row(&calls, id);
    assert_eq!(
        call[1..8],
        ["sip", "pbx", "itsp", "sipp", DIALLED, "confirmed", call[7]],
        "{calls}"
    );
    assert!(call[7].ends_with('s'), "duration: {calls}");
    assert_eq!(call[8], "socket", "{calls}");
    let rx: u64 = call[9].parse().expect("rx packets");
    assert!(rx > 0, "no packets counted: {calls}");

    // The packet counts move while the call is up.
    let (moved, _) = mg.wait_status(Duration::from_secs(5), |_| {
        let (_, later, _) = mg.cli(&["calls", "--http", "127.0.0.1:9100"]);
        row(&later, id)[9].parse::<u64>().unwrap_or(0) > rx
    });
    assert!(moved, "the packet count did not move");

    let (rc, status, err) = mg.cli(&["status", "--http", "127.0.0.1:9100"]);
    assert!(rc.success(), "mediagate status: {rc}\n{err}");
    assert!(
        status.starts_with("calls up: 1   media ports free: 498/500"),
        "{status}"
    );
    assert!(status.contains("data plane: socket"), "{status}");
    assert_eq!(
        row(&status, "pbx")[..4],
        ["pbx", "lan", "1", "no"],
        "{status}"
    );
    assert_eq!(
        row(&status, "itsp")[..4],
        ["itsp", "itsp", "1", "no"],
        "{status}"
    );
    let peer = status
        .lines()
        .find(|l| l.contains("10.99.2.2:5060"))
        .unwrap_or_else(|| panic!("no ITSP peer row:\n{status}"));
    assert!(peer.contains("UDP") && peer.contains("unprobed"), "{peer}");
    assert_eq!(row(&status, id)[2..4], ["pbx", "itsp"], "{status}");

    // Nothing listening: a clear error, not a panic.
    let (rc, _, err) = mg.cli(&["status", "--http", "127.0.0.1:9"]);
    assert_eq!(rc.code(), Some(1), "{err}");
    assert!(err.contains("connecting to 127.0.0.1:9"), "{err}");
    let (rc, _, err) = mg.cli(&["calls", "--http", "nonsense"]);
    assert_eq!(rc.code(), Some(1), "{err}");
    assert!(err.contains("expected IP:PORT"), "{err}");
    let (rc, _, err) = mg.cli(&["status", "--bogus"]);
    assert_eq!(rc.code(), Some(2), "{err}");
    assert!(err.contains("usage:"), "{err}");

    uac.assert_ok(Some(&mg));
    let st = uas.stop();
    assert!(st.success(), "callee sipp failed: {st}\n{}", uas.describe());
    mg.assert_idle(Duration::from_secs(5));
    let (rc, calls, _) = mg.cli(&["calls"]);
    assert!(rc.success());
    assert_eq!(
        calls.lines().count(),
        1,
        "only the header once idle:\n{calls}"
    );
}
