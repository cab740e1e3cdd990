//! Kamailio (a stateful, record-routing proxy with the `rtpengine` module) driving mediagate
//! over rtpengine's NG protocol, with real sipp peers, each test in its own three-namespace lab
//! (see tests/common/mod.rs and scripts/lab):
//!
//!   gw (10.99.1.2) -- 10.99.1.1:5060 [Kamailio + mediagate, mg ns] 10.99.2.1:5060 -- it (10.99.2.2)
//!
//! mediagate runs as a pure NG media relay (no trunks) with two named media interfaces,
//! `internal` (10.99.1.1) and `external` (10.99.2.1); Kamailio's configuration is
//! tests/data/kamailio/proxy.cfg. These tests need root and Kamailio; they fail (never skip)
//! without them. Logs, sipp traces and captures of a failed test are kept under
//! target/tmp/calls/<test>-<prefix>/.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const DIALLED: &str = "+4930123";
const KAMAILIO: &str = "/usr/sbin/kamailio";
/// Kamailio's SIP address facing gw (the callers' remote).
const KAMAILIO_GW: &str = "10.99.1.1:5060";

// ---------------------------------------------------------------------------
// Kamailio
// ---------------------------------------------------------------------------

/// Fail loudly when Kamailio (or its rtpengine module) is missing.
fn require_kamailio() {
    assert!(
        std::path::Path::new(KAMAILIO).is_file(),
        "{KAMAILIO} not found: install Kamailio (`apt-get install -y kamailio`, \
         or run scripts/install-deps)"
    );
    let module = "/usr/lib/x86_64-linux-gnu/kamailio/modules/rtpengine.so";
    assert!(
        std::path::Path::new(module).is_file(),
        "{module} not found: Kamailio's rtpengine module is missing (Debian package `kamailio`)"
    );
}

fn kamailio_cfg() -> PathBuf {
    let p = repo_root().join("tests/data/kamailio/proxy.cfg");
    assert!(p.is_file(), "missing {}", p.display());
    p
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill() on a pid (or, negative, the process group) of a child we spawned.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Kamailio in the mg namespace (`kamailio -DD -E`: the main process stays in the foreground
/// and is the child we spawned, in its own process group); SIGTERM on drop, then SIGKILL to
/// its process group if it does not exit.
struct Kamailio {
    child: Option<Child>,
    log: PathBuf,
}

impl Kamailio {
    /// Start after mediagate: the rtpengine module pings its nodes at start-up and marks a node
    /// that does not answer as disabled.
    fn start(lab: &Lab, two_nodes: bool) -> Kamailio {
        require_kamailio();
        let log = lab.path("kamailio.log");
        let log_file = fs::File::create(&log).expect("create kamailio log");
        let rundir = lab.path("kamailio-run");
        fs::create_dir_all(&rundir).expect("kamailio runtime dir");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &lab.mg(),
            KAMAILIO,
            "-DD",
            "-E",
            "-m",
            "64",
        ])
        .arg("-Y")
        .arg(&rundir);
        if two_nodes {
            cmd.args(["-A", "TWO_NODES"]);
        }
        cmd.arg("-f").arg(kamailio_cfg());
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn kamailio: {e}"));
        let mut k = Kamailio {
            child: Some(child),
            log,
        };
        k.wait_ready(lab, Duration::from_secs(10));
        k
    }

    /// Both UDP sockets bound and the worker processes started (their rtpengine ping done).
    fn wait_ready(&mut self, lab: &Lab, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "kamailio exited during start-up ({st}); log {}:\n{}",
                    self.log.display(),
                    self.log_tail(60)
                );
            }
            let ss = lab.exec(&lab.mg(), &["ss", "-Hlun"]);
            if ss.contains("10.99.1.1:5060") && ss.contains("10.99.2.1:5060") {
                // The rtpengine module pings its nodes from each worker's child_init.
                sleep(Duration::from_millis(500));
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "kamailio did not listen on 10.99.1.1:5060 and 10.99.2.1:5060 within \
                     {limit:?}; sockets:\n{ss}\nlog {}:\n{}",
                    self.log.display(),
                    self.log_tail(60)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        eprintln!("kamailio did not exit 5 s after SIGTERM; killing its process group");
        signal(child.id(), libc::SIGKILL);
        // the workers share the main process's group (process_group(0) at spawn)
        signal_group_of(&child);
        let _ = child.wait();
    }
}

fn signal_group_of(child: &Child) {
    // SAFETY: SIGKILL to the process group created for our own child.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- kamailio log {} (last 60 lines) ----\n{}\n---- end of kamailio log ----",
                self.log.display(),
                self.log_tail(60)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// mediagate as an NG media relay
// ---------------------------------------------------------------------------

/// One mediagate NG node in the mg namespace.
struct Node {
    name: &'static str,
    ng_port: u16,
    http_port: u16,
    sip_port: u16,
    ports: std::ops::RangeInclusive<u16>,
}

const NODE_A: Node = Node {
    name: "mediagate-a",
    ng_port: 2223,
    http_port: 9100,
    sip_port: 5070,
    ports: 30000..=30499,
};
const NODE_B: Node = Node {
    name: "mediagate-b",
    ng_port: 2224,
    http_port: 9101,
    sip_port: 5071,
    ports: 30500..=30999,
};

impl Node {
    fn config(&self, ports: &std::ops::RangeInclusive<u16>) -> String {
        format!(
            r#"[sip]
listen = ["udp:127.0.0.1:{sip}"]
max_calls = 100

[media]
ports = "{first}-{last}"
dataplane = "socket"
timeout_s = 30

[[media.interface]]
name = "internal"
address = "10.99.1.1"

[[media.interface]]
name = "external"
address = "10.99.2.1"

[control]
ng = "127.0.0.1:{ng}"
http = "127.0.0.1:{http}"
"#,
            sip = self.sip_port,
            first = ports.start(),
            last = ports.end(),
            ng = self.ng_port,
            http = self.http_port,
        )
    }

    fn start(&self, lab: &Lab, ports: &std::ops::RangeInclusive<u16>) -> Mediagate {
        let url = format!("http://127.0.0.1:{}/status", self.http_port);
        Mediagate::start_named(lab, self.name, &self.config(ports), &url)
    }
}

/// `/status` calls whose source is NG.
fn ng_calls(st: &Value) -> usize {
    st["calls"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|c| c["source"].as_str() == Some("ng"))
            .count()
    })
}

/// Lines of a mediagate log that record an accepted NG offer (a new call).
fn ng_offers_logged(mg: &Mediagate) -> usize {
    fs::read(&mg.log)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter(|l| l.contains("NG offer"))
                .count()
        })
        .unwrap_or(0)
}

/// mediagate must have logged no error; its warnings (e.g. NG flags it ignores) are printed.
fn assert_log_clean(mg: &Mediagate) {
    let text = fs::read(&mg.log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    for l in text.lines().filter(|l| l.contains("WARN")) {
        eprintln!("[{}] {l}", mg.log.display());
    }
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "mediagate logged errors ({}):\n{}",
        mg.log.display(),
        errors.join("\n")
    );
}

// ---------------------------------------------------------------------------
// SIP and RTP checks
// ---------------------------------------------------------------------------

fn is_invite_200(m: &SipMsg) -> bool {
    m.received
        && m.status_code() == Some(200)
        && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
}

/// SDP of a message must carry `ip` and a port of `ports`; returns the port.
fn assert_sdp(m: &SipMsg, ip: &str, ports: &std::ops::RangeInclusive<u16>, who: &str) -> u16 {
    assert_eq!(
        m.sdp_conn_addr().as_deref(),
        Some(ip),
        "{who} must see c=IN IP4 {ip} (mediagate), got:\n{}",
        m.text
    );
    let port = m
        .sdp_audio_port()
        .unwrap_or_else(|| panic!("{who}: no m=audio in SDP:\n{}", m.text));
    assert!(
        ports.contains(&port),
        "{who}: SDP audio port {port} not in mediagate's range {ports:?}:\n{}",
        m.text
    );
    port
}

/// RTP relayed both ways through mediagate as seen by tcpdump at both far ends: from exactly
/// the address and port mediagate advertised on each side, more than `min` packets each way,
/// and nothing from one far end reaching the other directly.
fn assert_rtp_relayed(
    caller_cap: &mut Capture,
    callee_cap: &mut Capture,
    caller_port: u16,
    callee_port: u16,
    min: u64,
) {
    let desc = format!("{}\n{}", caller_cap.describe(), callee_cap.describe());
    let caller_flows = caller_cap.flows().clone();
    let callee_flows = callee_cap.flows().clone();
    let gw_rtp = sa(GW_IP, SIPP_MEDIA_PORT);
    let it_rtp = sa(IT_IP, SIPP_MEDIA_PORT);
    let count = |flows: &Flows, src, dst| flows.get(&(src, dst)).copied().unwrap_or(0);

    // callee side: mediagate (external) -> callee, and the callee's echo back
    let to_callee = flows_from(&callee_flows, MG_IT_IP, MEDIA_PORTS, it_rtp);
    assert_eq!(
        to_callee.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![sa(MG_IT_IP, callee_port)],
        "RTP toward the callee must come from exactly the address and port mediagate put in \
         the callee's SDP\n{desc}"
    );
    assert!(
        to_callee[0].1 > min,
        "too little RTP reached the callee\n{desc}"
    );
    let echo = count(&callee_flows, it_rtp, sa(MG_IT_IP, callee_port));
    assert!(echo > min, "callee's echo toward mediagate missing\n{desc}");

    // caller side: caller -> mediagate (internal), and the relayed echo back
    let from_caller = count(&caller_flows, gw_rtp, sa(MG_GW_IP, caller_port));
    assert!(
        from_caller > min,
        "caller's RTP toward mediagate missing\n{desc}"
    );
    let to_caller = flows_from(&caller_flows, MG_GW_IP, MEDIA_PORTS, gw_rtp);
    assert_eq!(
        to_caller.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![sa(MG_GW_IP, caller_port)],
        "RTP toward the caller must come from exactly the address and port mediagate put in \
         the caller's SDP\n{desc}"
    );
    assert!(
        to_caller[0].1 > min,
        "too little RTP relayed back to the caller\n{desc}"
    );

    // nothing bypasses mediagate
    assert_eq!(
        packets_from_ip(&callee_flows, GW_IP),
        0,
        "caller packets leaked to the callee side\n{desc}"
    );
    assert_eq!(
        packets_from_ip(&caller_flows, IT_IP),
        0,
        "callee packets leaked to the caller side\n{desc}"
    );
    eprintln!(
        "[rtp] caller->mg {from_caller}, mg->callee {}, callee->mg {echo}, mg->caller {}",
        to_callee[0].1, to_caller[0].1
    );
}

/// Kamailio must not have seen an NG error or a node failure in a test where none is expected.
fn assert_no_ng_errors(kam: &Kamailio) {
    let log = kam.log_text();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("proxy replied with error")
                || l.contains("can't send command")
                || l.contains("timeout waiting reply")
                || l.contains("no available proxies")
                || l.contains("failed to decode")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "Kamailio's rtpengine module reported problems talking to mediagate:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// One call gw -> it through Kamailio with mediagate anchoring the media over NG: SDP
/// rewritten to mediagate's interfaces, RTP both ways through it, the call visible in
/// `/status` as an NG call and released on BYE.
#[test]
fn kamailio_drives_mediagate_over_ng() {
    let t0 = Instant::now();
    require_kamailio();
    let lab = Lab::new("kam_ng");

    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), "uas_echo", IT_IP)
            .args(&["-rtp_echo"])
            .timeout(45),
    );
    uas.settle();
    let mg = NODE_A.start(&lab, &MEDIA_PORTS);
    let kam = Kamailio::start(&lab, false);
    let mut caller_cap = Capture::start(&lab, &lab.gw(), &lab.gw_if(), "caller");
    let mut callee_cap = Capture::start(&lab, &lab.it(), &lab.it_if(), "callee");

    let mut uac = Sipp::spawn(
        &lab,
        "caller",
        SippOpts::new(lab.gw(), "uac_rtp", GW_IP)
            .caller(DIALLED, KAMAILIO_GW)
            .args(&["-m", "1"])
            .timeout(30),
    );

    // Mid-call: one NG call, both sides latched and receiving.
    let (flowing, st) = mg.wait_status(Duration::from_secs(8), |st| rtp_flowing(st, 1));
    assert!(
        flowing,
        "no NG call with RTP flowing on both sides mid-call: {st:#}\n--- kamailio ---\n{}\n{}",
        kam.log_tail(40),
        uac.describe()
    );
    let calls = st["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "calls mid-call: {st:#}");
    assert_eq!(
        calls[0]["source"].as_str(),
        Some("ng"),
        "the call must come from NG: {st:#}"
    );
    assert_eq!(st["active_calls"].as_u64(), Some(1), "active_calls: {st:#}");

    uac.assert_ok(Some(&mg));
    let ust = uas.stop();
    assert!(
        ust.success(),
        "callee sipp failed: {ust}\n{}",
        uas.describe()
    );
    // The BYE went through Kamailio's rtpengine_delete(): the call is gone, every port free.
    let idle = mg.assert_idle(Duration::from_secs(5));
    eprintln!("[status after BYE] {idle}");

    // Signalling through Kamailio: each side sees mediagate's interface facing it.
    let callee_invite = uas
        .received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .unwrap_or_else(|| panic!("callee received no INVITE\n{}", uas.describe()));
    assert!(
        callee_invite
            .headers("Record-Route")
            .iter()
            .any(|r| r.contains("10.99.2.1")),
        "the callee's INVITE must be record-routed by Kamailio:\n{}",
        callee_invite.text
    );
    let callee_port = assert_sdp(&callee_invite, MG_IT_IP, &MEDIA_PORTS, "callee (INVITE)");
    let ok = uac
        .messages()
        .into_iter()
        .find(is_invite_200)
        .unwrap_or_else(|| panic!("caller received no 200 to its INVITE\n{}", uac.describe()));
    let caller_port = assert_sdp(&ok, MG_GW_IP, &MEDIA_PORTS, "caller (200 OK)");
    assert!(
        uas.received().iter().any(|m| m.is_request("BYE")),
        "the caller's BYE did not reach the callee\n{}",
        uas.describe()
    );

    assert_rtp_relayed(
        &mut caller_cap,
        &mut callee_cap,
        caller_port,
        callee_port,
        100,
    );
    assert_no_ng_errors(&kam);
    assert_log_clean(&mg);
    drop(kam);
    let mut mg = mg;
    let st = mg.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "mediagate did not exit cleanly when stopped: {st:?}\n{}",
        mg.log_tail(40)
    );
    eprintln!("[kamailio_drives_mediagate_over_ng] {:?}", t0.elapsed());
}

/// Number of calls of one batch.
const BATCH: usize = 14;

/// A batch of calls gw -> it through Kamailio: the caller INVITEs with SDP and waits for the
/// callee's BYE (after 3 s), all `BATCH` calls set up within a second.
fn caller_batch(lab: &Lab, name: &str) -> Sipp {
    let n = BATCH.to_string();
    Sipp::spawn(
        lab,
        name,
        SippOpts::new(lab.gw(), "uac_wait_bye", GW_IP)
            .caller(DIALLED, KAMAILIO_GW)
            .args(&["-m", &n, "-l", &n, "-r", &n])
            .timeout(30),
    )
}

/// Poll both nodes until their NG calls add up to `total` (bounded); returns the per-node
/// counts of the last snapshot.
fn ng_calls_on(nodes: &[&Mediagate], total: usize, within: Duration) -> Vec<usize> {
    let deadline = Instant::now() + within;
    loop {
        let counts: Vec<usize> = nodes.iter().map(|m| ng_calls(&m.status())).collect();
        if counts.iter().sum::<usize>() == total || Instant::now() >= deadline {
            return counts;
        }
        sleep(Duration::from_millis(100));
    }
}

/// Kamailio with two mediagate nodes in its rtpengine set (equal weights): calls spread over
/// both; once one node is stopped, every new call succeeds on the other.
#[test]
fn kamailio_spreads_calls_over_two_mediagate_nodes() {
    let t0 = Instant::now();
    require_kamailio();
    let lab = Lab::new("kam_two");

    let mut uas = Sipp::spawn(
        &lab,
        "callee",
        SippOpts::new(lab.it(), "uas_hangup", IT_IP).timeout(60),
    );
    uas.settle();
    let mg_a = NODE_A.start(&lab, &NODE_A.ports);
    let mut mg_b = NODE_B.start(&lab, &NODE_B.ports);
    let kam = Kamailio::start(&lab, true);

    // Phase 1: both nodes up.
    let mut uac1 = caller_batch(&lab, "caller1");
    let counts = ng_calls_on(&[&mg_a, &mg_b], BATCH, Duration::from_secs(6));
    eprintln!("[phase 1] concurrent NG calls per node: {counts:?}");
    assert_eq!(
        counts.iter().sum::<usize>(),
        BATCH,
        "all {BATCH} calls must be anchored on the two nodes at once (per node {counts:?})\n{}",
        uac1.describe()
    );
    assert!(
        counts.iter().all(|&c| c > 0),
        "Kamailio must spread calls over both nodes (per node {counts:?})"
    );
    uac1.assert_ok(Some(&mg_a));
    mg_a.assert_idle(Duration::from_secs(5));
    mg_b.assert_idle(Duration::from_secs(5));
    let offers = (ng_offers_logged(&mg_a), ng_offers_logged(&mg_b));
    assert_eq!(
        offers.0 + offers.1,
        BATCH,
        "NG offers logged by the nodes {offers:?}"
    );
    for ok in uac1.messages().iter().filter(|m| is_invite_200(m)) {
        assert_sdp(ok, MG_GW_IP, &MEDIA_PORTS, "caller (200 OK)");
    }
    assert_no_ng_errors(&kam);

    // Phase 2: node B stops; every new call must succeed, all on node A.
    let st = mg_b.stop();
    assert!(
        st.is_some_and(|s| s.success()),
        "mediagate-b did not exit cleanly when stopped: {st:?}\n{}",
        mg_b.log_tail(40)
    );
    let t2 = Instant::now();
    let mut uac2 = caller_batch(&lab, "caller2");
    let counts = ng_calls_on(&[&mg_a], BATCH, Duration::from_secs(8));
    eprintln!("[phase 2] concurrent NG calls on the remaining node: {counts:?}");
    uac2.assert_ok(Some(&mg_a));
    eprintln!("[phase 2] batch took {:?}", t2.elapsed());
    assert_eq!(
        counts,
        vec![BATCH],
        "all {BATCH} calls must be anchored on the remaining node"
    );
    let oks: Vec<SipMsg> = uac2.messages().into_iter().filter(is_invite_200).collect();
    assert!(
        oks.len() >= BATCH,
        "the caller must get a 200 for each of its {BATCH} calls\n{}",
        uac2.describe()
    );
    for ok in &oks {
        assert_sdp(
            ok,
            MG_GW_IP,
            &NODE_A.ports,
            "caller (200 OK, node A's range)",
        );
    }
    assert_eq!(
        ng_offers_logged(&mg_a),
        offers.0 + BATCH,
        "node A must have taken every call of phase 2"
    );
    mg_a.assert_idle(Duration::from_secs(5));
    let ust = uas.stop();
    assert!(
        ust.success(),
        "callee sipp failed: {ust}\n{}",
        uas.describe()
    );
    assert_log_clean(&mg_a);
    assert_log_clean(&mg_b);
    let log = kam.log_text();
    eprintln!(
        "[kamailio] lines about the stopped node: {}",
        log.lines()
            .filter(|l| l.contains("2224"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "[kamailio_spreads_calls_over_two_mediagate_nodes] {:?}",
        t0.elapsed()
    );
}
