//! Integration-test harness: network-namespace lab, the mediagate process,
//! sipp peers and tcpdump captures.
//!
//! Every test builds its own three namespaces (`<prefix>gw`, `<prefix>mg`,
//! `<prefix>it`, see `scripts/lab`) with a unique prefix, so tests run in
//! parallel with identical addresses. Guards tear everything down on drop,
//! including while unwinding from a failed assertion, and print the
//! mediagate log and the sipp output when the test failed.
//!
//! Drop order matters: declare the `Lab` first so it is dropped last, after
//! the processes that live in its namespaces.
#![allow(dead_code)]

pub mod dnsmasq;
pub mod kamailio;
pub mod pki;

use mediagate::control::bencode::Value as Bencode;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Addresses of the lab (fixed; namespaces keep them apart).
pub const GW_IP: &str = "10.99.1.2";
pub const MG_GW_IP: &str = "10.99.1.1";
pub const MG_IT_IP: &str = "10.99.2.1";
pub const IT_IP: &str = "10.99.2.2";
/// Second ITSP address, on it's veth next to `IT_IP` (`Lab::add_it_addr`): a second peer of
/// the same trunk (tests/trunks.rs).
pub const IT2_IP: &str = "10.99.2.3";
/// Extra address on the gw side that is no configured peer (403 test).
pub const GW_STRANGER_IP: &str = "10.99.1.3";
/// The lab's IPv6 addresses, added beside the IPv4 ones by `add_lab_ipv6`.
pub const GW6: &str = "fd99:1::2";
pub const MG_GW6: &str = "fd99:1::1";
pub const MG_IT6: &str = "fd99:2::1";
pub const IT6: &str = "fd99:2::2";
/// Media port range given to mediagate by `config()`.
pub const MEDIA_PORTS: std::ops::RangeInclusive<u16> = 30000..=30999;
/// RTP port of sipp on either side (`-mp`).
pub const SIPP_MEDIA_PORT: u16 = 6000;
/// Control HTTP address inside the mg namespace.
pub const STATUS_URL: &str = "http://127.0.0.1:9100/status";

// ---------------------------------------------------------------------------
// Environment checks and paths
// ---------------------------------------------------------------------------

/// Fail loudly (never skip) when the tests cannot run here.
pub fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "mediagate integration tests need root (they create network namespaces, \
             veth links and run tcpdump). Run them as root, e.g. \
             `sudo -E cargo test --test calls`; euid is {euid}"
        );
    }
    for tool in ["ip", "sipp", "tcpdump", "curl", "timeout", "ethtool", "nft"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            panic!(
                "`{tool}` not found in PATH; install with \
                 `apt-get install -y sip-tester tcpdump curl iproute2 coreutils ethtool nftables`"
            );
        }
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn lab_script() -> PathBuf {
    repo_root().join("scripts/lab")
}

pub fn scenario(name: &str) -> PathBuf {
    let p = repo_root()
        .join("tests/data/sipp")
        .join(format!("{name}.xml"));
    assert!(p.is_file(), "missing sipp scenario {}", p.display());
    p
}

pub fn mediagate_bin() -> PathBuf {
    match std::env::var_os("MEDIAGATE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_mediagate")),
    }
}

/// mediagate's `media.dataplane` setting in a test config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataplane {
    /// user-space sockets only
    Socket,
    /// the in-kernel XDP tier (socket path only for unresolved next hops)
    Kernel,
    /// AF_XDP relay workers fed by the XDP program
    Afxdp,
}

impl Dataplane {
    /// The config value, which is also the `tier` that /status reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Dataplane::Socket => "socket",
            Dataplane::Kernel => "kernel",
            Dataplane::Afxdp => "afxdp",
        }
    }
}

/// The lab config of the tests on the socket data plane.
pub fn config(timeout_s: u32) -> String {
    config_with(timeout_s, Dataplane::Socket)
}

/// `config` with call detail records written to `path`.
pub fn with_cdr(config: &str, path: &Path) -> String {
    format!("{config}\n[cdr]\npath = \"{}\"\n", path.display())
}

/// The lab config of the tests (tests/data/lab.toml), with the media timeout and data plane
/// to use.
pub fn config_with(timeout_s: u32, dataplane: Dataplane) -> String {
    let lab = include_str!("../data/lab.toml");
    assert!(lab.contains("dataplane = \"socket\"") && lab.contains("timeout_s = 30"));
    lab.replace(
        "dataplane = \"socket\"",
        &format!("dataplane = \"{}\"", dataplane.as_str()),
    )
    .replace("timeout_s = 30", &format!("timeout_s = {timeout_s}"))
}

fn tail_of(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill() on a pid we spawned (or its process group, negative).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: kill() on the process group we created for our own child.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

/// Wait for a child with a deadline; `None` if it is still running.
fn wait_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(20));
    }
}

/// The RTP stream of the leg whose trunk is `trunk` in the only call of `st`.
pub fn rtp_stream<'a>(st: &'a Value, trunk: &str) -> &'a Value {
    st["calls"][0]["legs"]
        .as_array()
        .and_then(|legs| legs.iter().find(|l| l["trunk"].as_str() == Some(trunk)))
        .map(|l| &l["streams"][0])
        .unwrap_or_else(|| panic!("no {trunk} leg: {st:#}"))
}

/// The port of a /status stream's `local` address.
pub fn local_port(stream: &Value) -> u16 {
    stream["local"]
        .as_str()
        .and_then(|s| s.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("stream local: {stream:#}"))
}

/// `mg-rtpsink` in `ns` on `ip` and `ports` (e.g. `"50000,20000-20099"`), counting `streams`
/// streams of generator run `run_id` for at most 90 s; returns once it is receiving.
pub fn rtp_sink(lab: &Lab, ns: &str, ip: &str, ports: &str, streams: usize, run_id: u32) -> Proc {
    let ready = lab.path(&format!("sink-{ip}.ready"));
    let p = Proc::spawn(
        lab,
        ns,
        &format!("sink-{ip}"),
        env!("CARGO_BIN_EXE_mg-rtpsink"),
        &[
            "--bind",
            ip,
            "--ports",
            ports,
            "--streams",
            &streams.to_string(),
            "--seconds",
            "90",
            "--cpu",
            "-1",
            "--run-id",
            &run_id.to_string(),
            "--ready-file",
            &ready.display().to_string(),
        ],
    );
    wait_for(Duration::from_secs(5), "the RTP sink to start", || {
        ready.exists()
    });
    p
}

/// A copy of sipp scenario `name` of tests/data/sipp with the SDP media port fixed to `port`
/// (a sink can listen there), written to the lab directory; returns the name to give
/// `SippOpts` (an absolute path without `.xml`, which `scenario()` joins as is).
pub fn sdp_port_scenario(lab: &Lab, name: &str, port: u16) -> String {
    let src = scenario(name);
    let text = fs::read_to_string(&src).expect("read scenario");
    let fixed = text.replace("m=audio [media_port] ", &format!("m=audio {port} "));
    assert_ne!(
        fixed,
        text,
        "no `m=audio [media_port]` in {}",
        src.display()
    );
    let out = lab.path(&format!("{name}_sdp{port}.xml"));
    fs::write(&out, fixed).expect("write scenario");
    out.with_extension("").display().to_string()
}

/// One short call (SDP, no RTP, `uac_short`) from the PBX side to `dialled` through mediagate,
/// from SIP port `sip_port` and media port `media_port` of the PBX address (another sipp may
/// hold 5060); returns the caller once it completed successfully.
pub fn short_call(
    lab: &Lab,
    mg: &Mediagate,
    name: &str,
    dialled: &str,
    (sip_port, media_port): (u16, u16),
) -> Sipp {
    let remote = format!("{MG_GW_IP}:5060");
    let mut uac = Sipp::spawn(
        lab,
        name,
        SippOpts::new(lab.gw(), "uac_short", GW_IP)
            .caller(dialled, &remote)
            .ports(sip_port, media_port)
            .args(&["-m", "1", "-d", "200"])
            .timeout(15),
    );
    uac.assert_ok(Some(mg));
    uac
}

/// Moves the calling thread into a named network namespace.
pub fn enter_netns(name: &str) {
    let f = fs::File::open(format!("/var/run/netns/{name}")).unwrap();
    // SAFETY: a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A UDP socket bound to `addr` inside namespace `ns` (a socket stays in the namespace it was
/// created in, whichever thread uses it).
pub fn bind_in(ns: &str, addr: &str) -> UdpSocket {
    let (ns, addr) = (ns.to_string(), addr.to_string());
    std::thread::spawn(move || {
        enter_netns(&ns);
        UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"))
    })
    .join()
    .expect("namespace thread")
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `within`.
pub fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        sleep(Duration::from_millis(50));
    }
}

/// Run a command to completion, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// IPv6 beside the lab's IPv4
// ---------------------------------------------------------------------------

/// The MAC address of device `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> String {
    let out = run(Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", dev]));
    let mac = out
        .split_whitespace()
        .skip_while(|t| *t != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in `ip link show {dev}`: {out}"));
    mac.to_string()
}

/// Adds the lab's IPv6 addresses (`GW6`, `MG_GW6`, `MG_IT6`, `IT6`, /64, no DAD) beside its
/// IPv4 ones and permanent neighbour entries for both peers in mg (so the kernel tier's
/// `bpf_fib_lookup` resolves every next hop), and waits until every address is usable.
pub fn add_lab_ipv6(lab: &Lab) {
    let addrs = [
        (lab.gw(), lab.gw_if(), format!("{GW6}/64")),
        (lab.mg(), lab.mg_gw_if(), format!("{MG_GW6}/64")),
        (lab.mg(), lab.mg_it_if(), format!("{MG_IT6}/64")),
        (lab.it(), lab.it_if(), format!("{IT6}/64")),
    ];
    for (ns, dev, cidr) in &addrs {
        run(Command::new("ip").args(["-n", ns, "addr", "add", cidr, "dev", dev, "nodad"]));
    }
    for (peer, peer_ns, peer_dev, mg_dev) in [
        (GW6, lab.gw(), lab.gw_if(), lab.mg_gw_if()),
        (IT6, lab.it(), lab.it_if(), lab.mg_it_if()),
    ] {
        let mac = mac_of(&peer_ns, &peer_dev);
        run(Command::new("ip").args([
            "-n",
            &lab.mg(),
            "neigh",
            "replace",
            peer,
            "lladdr",
            &mac,
            "dev",
            &mg_dev,
            "nud",
            "permanent",
        ]));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (ns, dev, cidr) in &addrs {
        let ip = cidr.split('/').next().unwrap();
        loop {
            let out = run(Command::new("ip").args(["-n", ns, "-6", "addr", "show", "dev", dev]));
            let line = out.lines().find(|l| l.contains(&format!("inet6 {cidr}")));
            if line.is_some_and(|l| !l.contains("tentative")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ip} on {dev} in {ns} not usable within 5 s:\n{out}"
            );
            sleep(Duration::from_millis(50));
        }
        // usable: a socket binds to it
        drop(bind_in(ns, &format!("[{ip}]:0")));
    }
}

// ---------------------------------------------------------------------------
// Lab
// ---------------------------------------------------------------------------

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn candidate_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u64;
    let pid = std::process::id() as u64;
    // splitmix64 over pid, counter and clock
    let mut x = nanos ^ (pid << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    format!("m{:04x}", x & 0xffff)
}

/// Three namespaces joined by veths (`scripts/lab up PREFIX`), removed on drop.
pub struct Lab {
    pub prefix: String,
    pub name: String,
    /// Per-test directory for configs, logs, captures and sipp traces.
    pub dir: PathBuf,
    /// The test's own bpffs mount for handover pins (see [`Lab::pin_dir`]), once made.
    bpffs: std::sync::OnceLock<PathBuf>,
}

impl Lab {
    pub fn new(test_name: &str) -> Lab {
        require_root_and_tools();
        let mut last_err = String::new();
        for _ in 0..8 {
            let prefix = candidate_prefix();
            if Path::new(&format!("/run/netns/{prefix}gw")).exists()
                || Path::new(&format!("/run/netns/{prefix}mg")).exists()
                || Path::new(&format!("/run/netns/{prefix}it")).exists()
            {
                continue;
            }
            let out = Command::new(lab_script())
                .args(["up", &prefix])
                .stdin(Stdio::null())
                .output()
                .expect("cannot run scripts/lab");
            if out.status.success() {
                let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join("calls")
                    .join(format!("{test_name}-{prefix}"));
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir_all(&dir).expect("create test dir");
                let lab = Lab {
                    prefix,
                    name: test_name.to_string(),
                    dir,
                    bpffs: std::sync::OnceLock::new(),
                };
                return lab;
            }
            last_err = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!("scripts/lab up failed repeatedly: {last_err}");
    }

    pub fn gw(&self) -> String {
        format!("{}gw", self.prefix)
    }
    pub fn mg(&self) -> String {
        format!("{}mg", self.prefix)
    }
    pub fn it(&self) -> String {
        format!("{}it", self.prefix)
    }
    /// veth of the gw namespace (toward mg).
    pub fn gw_if(&self) -> String {
        format!("{}g0", self.prefix)
    }
    /// veth of the it namespace (toward mg).
    pub fn it_if(&self) -> String {
        format!("{}i0", self.prefix)
    }
    /// mg's veth toward gw.
    pub fn mg_gw_if(&self) -> String {
        format!("{}g1", self.prefix)
    }
    /// mg's veth toward it.
    pub fn mg_it_if(&self) -> String {
        format!("{}i1", self.prefix)
    }

    /// After mediagate stopped: nothing of the kernel tier is left in mg, i.e.
    /// no XDP program on any interface, `net.ipv4.ip_forward` back to 0 and an
    /// empty nftables rule set.
    pub fn assert_mg_clean(&self) {
        let mg = self.mg();
        let links = run(Command::new("ip").args(["-n", &mg, "-d", "link", "show"]));
        assert!(
            !links.contains("xdp"),
            "an XDP program is still attached in {mg} after mediagate stopped:\n{links}"
        );
        let fwd = self.exec(&mg, &["sysctl", "-n", "net.ipv4.ip_forward"]);
        assert_eq!(
            fwd.trim(),
            "0",
            "net.ipv4.ip_forward in {mg} after mediagate stopped"
        );
        let rules = self.exec(&mg, &["nft", "list", "ruleset"]);
        assert!(
            rules.trim().is_empty(),
            "nftables rule set in {mg} not empty after mediagate stopped:\n{rules}"
        );
    }

    /// Run a command inside a namespace, panicking on failure.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Add an extra address to gw's veth (e.g. an unknown peer for 403).
    pub fn add_gw_addr(&self, cidr: &str) {
        run(Command::new("ip").args(["-n", &self.gw(), "addr", "add", cidr, "dev", &self.gw_if()]));
    }

    /// Add an address (`IP/24`) to it's veth: a second ITSP peer next to `IT_IP`.
    pub fn add_it_addr(&self, cidr: &str) {
        run(Command::new("ip").args(["-n", &self.it(), "addr", "add", cidr, "dev", &self.it_if()]));
    }

    /// Take an address added by `add_it_addr` away again (the peer vanishes from the network).
    pub fn del_it_addr(&self, cidr: &str) {
        run(Command::new("ip").args(["-n", &self.it(), "addr", "del", cidr, "dev", &self.it_if()]));
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A `media.pin_dir` of this test only: a directory on a bpffs mounted for the test in the
    /// host mount namespace (`ip netns exec` gives mediagate its own /sys, where a bpffs it
    /// mounted would die with it). Unmounted on drop, which removes every pin left there and so
    /// detaches a program a killed mediagate left running, even when the test failed.
    pub fn pin_dir(&self) -> PathBuf {
        let mount = self.bpffs.get_or_init(|| {
            let m = PathBuf::from(format!("/run/mg-bpf-{}", self.prefix));
            fs::create_dir_all(&m).expect("create the bpffs mount point");
            run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&m));
            m
        });
        mount.join("mediagate")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(m) = self.bpffs.get() {
            let _ = Command::new("umount").arg(m).status();
            let _ = fs::remove_dir(m);
        }
        let _ = Command::new(lab_script())
            .args(["down", &self.prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!(
                "[{}] test failed; logs, traces and captures kept in {}",
                self.name,
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// mediagate
// ---------------------------------------------------------------------------

/// mediagate running in the mg namespace; SIGTERM (then SIGKILL) on drop.
pub struct Mediagate {
    child: Option<Child>,
    ns: String,
    pub log: PathBuf,
    pub config_path: PathBuf,
    /// `GET /status` URL inside the mg namespace (`STATUS_URL` unless started by `start_named`).
    pub status_url: String,
}

impl Mediagate {
    pub fn start(lab: &Lab, config_text: &str) -> Mediagate {
        Mediagate::start_named(lab, "mediagate", config_text, STATUS_URL)
    }

    /// Start an instance whose config, log and `/status` URL are its own, so that several
    /// instances can run side by side in the mg namespace (`NAME.toml`, `NAME.log`).
    pub fn start_named(lab: &Lab, name: &str, config_text: &str, status_url: &str) -> Mediagate {
        let config_path = lab.path(&format!("{name}.toml"));
        fs::write(&config_path, config_text).expect("write config");
        let log = lab.path(&format!("{name}.log"));
        let log_file = fs::File::create(&log).expect("create mediagate log");
        let child = Mediagate::spawn(&lab.mg(), &config_path, log_file);
        let mut mg = Mediagate {
            child: Some(child),
            ns: lab.mg(),
            log,
            config_path,
            status_url: status_url.to_string(),
        };
        mg.wait_ready(Duration::from_secs(10));
        mg
    }

    /// Runs the binary on `config_path` in namespace `ns`, output to `log_file`.
    fn spawn(ns: &str, config_path: &Path, log_file: fs::File) -> Child {
        let bin = mediagate_bin();
        assert!(
            bin.is_file(),
            "mediagate binary {} not found (set MEDIAGATE_BIN or build it)",
            bin.display()
        );
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&bin)
            .arg("--config")
            .arg(config_path)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()))
    }

    /// Stops this instance with `sig` (`libc::SIGTERM`, or `libc::SIGKILL` for a crash),
    /// waits for it to be gone, and starts it again on the same config file, logging to the
    /// same file (appended); returns once the new process answers `/status`.
    pub fn restart(&mut self, sig: libc::c_int) {
        let mut child = self.child.take().expect("mediagate running");
        signal(child.id(), sig);
        let st = wait_deadline(&mut child, Duration::from_secs(5));
        assert!(
            st.is_some(),
            "mediagate did not exit 5 s after signal {sig}"
        );
        let log_file = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("reopen mediagate log");
        self.child = Some(Mediagate::spawn(&self.ns, &self.config_path, log_file));
        self.wait_ready(Duration::from_secs(10));
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "mediagate exited during start-up ({st}); log {}:\n{}",
                    self.log.display(),
                    tail_of(&self.log, 60)
                );
            }
            let last = match self.try_status() {
                Ok(_) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "mediagate /status did not answer within {limit:?} (last error: {last}); log {}:\n{}",
                    self.log.display(),
                    tail_of(&self.log, 60)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Runs the mediagate binary with `args` in this instance's namespace (a CLI command such
    /// as `status`), bounded to 10 s: exit status, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let out = Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &self.ns])
            .arg(mediagate_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the mediagate CLI");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Sends SIGHUP: reopen the CDR file and reload the configuration file.
    pub fn sighup(&self) {
        signal(self.pid(), libc::SIGHUP);
    }

    /// Waits (bounded) until the log holds `text`; panics with the log tail otherwise.
    pub fn wait_log(&self, within: Duration, text: &str) {
        wait_for(within, &format!("`{text}` in the log"), || {
            fs::read_to_string(&self.log).is_ok_and(|l| l.contains(text))
        });
    }

    /// Kills mediagate with SIGKILL (a crash: nothing of its own shutdown runs) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM: a graceful stop (no new calls, calls up get the grace period).
    pub fn terminate(&self) {
        signal(self.pid(), libc::SIGTERM);
    }

    /// Waits up to `within` for mediagate to exit by itself; its status, or `None` if it is
    /// still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let st = wait_deadline(self.child.as_mut()?, within)?;
        self.child = None;
        Some(st)
    }

    /// `GET path` (e.g. `/metrics`) on the status endpoint, with extra request headers
    /// (`"Accept: ..."`): the response's `Content-Type` and body.
    pub fn http_get(&self, path: &str, headers: &[&str]) -> Result<(String, String), String> {
        let base = self
            .status_url
            .strip_suffix("/status")
            .expect("status URL ends with /status");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "curl", "-s", "-m", "2", "--fail"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .args(["-w", "\n%{content_type}"])
            .arg(format!("{base}{path}"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        if !out.status.success() {
            return Err(format!("curl exited {}", out.status));
        }
        let text = String::from_utf8(out.stdout).map_err(|e| format!("not UTF-8: {e}"))?;
        let (body, content_type) = text.rsplit_once('\n').unwrap_or((&text, ""));
        Ok((content_type.to_string(), body.to_string()))
    }

    /// One series of `GET /metrics`, named as the strict parser names it (labels in
    /// alphabetical order, e.g. `mediagate_refused_total{protocol="sip",reason="rate_limited"}`);
    /// 0 when the series is absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.http_get("/metrics", &[]).expect("GET /metrics");
        let samples = mediagate::metrics::prometheus::parse_exposition(&text)
            .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"));
        samples.get(series).copied().unwrap_or(0.0)
    }

    pub fn try_status(&self) -> Result<Value, String> {
        let (_, body) = self.http_get("/status", &[])?;
        serde_json::from_str(&body).map_err(|e| format!("/status is not JSON ({e}): {body}"))
    }

    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|e| {
            panic!(
                "GET /status failed: {e}; log {}:\n{}",
                self.log.display(),
                tail_of(&self.log, 40)
            )
        })
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log, lines)
    }

    /// Poll /status until no call is left (bounded), then assert it strictly:
    /// `active_calls == 0`, `calls == []`, `ports.free == ports.total`.
    pub fn assert_idle(&self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let st = self.status();
            if is_idle(&st) || Instant::now() >= deadline {
                assert_idle_status(&st);
                return st;
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Poll /status until `pred` holds (bounded); returns the last snapshot.
    pub fn wait_status<F: Fn(&Value) -> bool>(&self, within: Duration, pred: F) -> (bool, Value) {
        let deadline = Instant::now() + within;
        loop {
            let st = self.status();
            if pred(&st) {
                return (true, st);
            }
            if Instant::now() >= deadline {
                return (false, st);
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Stop with SIGTERM and return the exit status (SIGKILL after 5 s).
    /// Stops mediagate with SIGINT: every call hung up at once (SIGTERM would give calls up
    /// `control.shutdown_grace_s` first; tests of that send it themselves).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), libc::SIGINT);
        match wait_deadline(&mut child, Duration::from_secs(5)) {
            Some(st) => Some(st),
            None => {
                eprintln!("mediagate did not exit 5 s after SIGINT; killing it");
                let _ = child.kill();
                child.wait().ok()
            }
        }
    }
}

impl Drop for Mediagate {
    fn drop(&mut self) {
        let _ = self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- mediagate log {} (last 80 lines) ----\n{}\n---- end of mediagate log ----",
                self.log.display(),
                tail_of(&self.log, 80)
            );
        }
    }
}

pub fn is_idle(st: &Value) -> bool {
    st["active_calls"].as_u64() == Some(0)
        && st["calls"]
            .as_array()
            .map(|a| a.is_empty())
            .unwrap_or(false)
        && st["ports"]["total"].as_u64().is_some()
        && st["ports"]["free"].as_u64() == st["ports"]["total"].as_u64()
}

pub fn assert_idle_status(st: &Value) {
    assert_eq!(st["version"].as_u64(), Some(1), "/status version: {st:#}");
    assert_eq!(
        st["active_calls"].as_u64(),
        Some(0),
        "active_calls after the calls ended: {st:#}"
    );
    assert_eq!(
        st["calls"].as_array().map(|a| a.len()),
        Some(0),
        "calls after the calls ended: {st:#}"
    );
    let total = st["ports"]["total"].as_u64();
    assert!(total.unwrap_or(0) > 0, "ports.total missing or 0: {st:#}");
    assert_eq!(
        st["ports"]["free"].as_u64(),
        total,
        "ports leaked (free != total): {st:#}"
    );
}

/// Check the /status snapshot of established RTP calls: two legs on the
/// expected trunks, every stream (and its RTCP) on the tier of `dataplane`,
/// latched, and having received packets. On the kernel tier, every RTP
/// stream must also have moved packets in the kernel (`kernel_packets > 0`)
/// and the XDP program must sit on both of mg's veths in native mode.
pub fn assert_rtp_call_status(st: &Value, calls: usize, dataplane: Dataplane) {
    let tier = dataplane.as_str();
    assert_eq!(
        st["dataplane"]["tier"].as_str(),
        Some(tier),
        "/status dataplane.tier: {:#}",
        st["dataplane"]
    );
    if dataplane != Dataplane::Socket {
        let devices = st["dataplane"]["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("no dataplane.devices: {:#}", st["dataplane"]));
        assert_eq!(
            devices.len(),
            2,
            "XDP devices (mg's two veths): {:#}",
            st["dataplane"]
        );
        for d in devices {
            assert_eq!(
                d["mode"].as_str(),
                Some("native"),
                "XDP attach mode: {:#}",
                st["dataplane"]
            );
        }
    }
    let arr = st["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no calls array: {st:#}"));
    assert_eq!(arr.len(), calls, "calls in /status mid-call: {st:#}");
    assert_eq!(
        st["active_calls"].as_u64(),
        Some(calls as u64),
        "active_calls mid-call: {st:#}"
    );
    for call in arr {
        let legs = call["legs"]
            .as_array()
            .unwrap_or_else(|| panic!("no legs: {call:#}"));
        assert_eq!(legs.len(), 2, "legs of a call: {call:#}");
        let mut trunks: Vec<&str> = legs.iter().filter_map(|l| l["trunk"].as_str()).collect();
        trunks.sort_unstable();
        assert_eq!(trunks, ["itsp", "pbx"], "trunks of the legs: {call:#}");
        for leg in legs {
            let streams = leg["streams"]
                .as_array()
                .unwrap_or_else(|| panic!("no streams on leg: {leg:#}"));
            assert!(!streams.is_empty(), "leg has no streams: {leg:#}");
            // Every stream on the expected tier; at least one (the RTP one)
            // latched and receiving (RTCP may stay silent with sipp).
            for stream in streams {
                assert_eq!(stream["tier"].as_str(), Some(tier), "stream tier: {leg:#}");
                if !stream["rtcp"].is_null() {
                    assert_eq!(
                        stream["rtcp"]["tier"].as_str(),
                        Some(tier),
                        "RTCP tier: {leg:#}"
                    );
                }
                if dataplane == Dataplane::Kernel {
                    assert!(
                        stream["kernel_packets"].as_u64().unwrap_or(0) > 0,
                        "RTP stream moved no packets in the kernel tier mid-call \
                         (silent fallback to the socket path?): {leg:#}\ndataplane: {:#}",
                        st["dataplane"]
                    );
                }
                let local: SocketAddrV4 = stream["local"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("stream local address: {leg:#}"));
                assert!(
                    MEDIA_PORTS.contains(&local.port()),
                    "stream local port out of range: {leg:#}"
                );
            }
            assert!(
                streams.iter().any(|s| s["latched"].as_bool() == Some(true)
                    && s["rx_packets"].as_u64().unwrap_or(0) > 0),
                "no stream of this leg is latched with rx_packets > 0 mid-call: {leg:#}"
            );
        }
    }
}

/// `rtp_flowing`, and on the kernel tier also every RTP stream having moved
/// packets in the kernel (the first packets may take the socket path while
/// a neighbour resolves).
pub fn media_flowing(st: &Value, calls: usize, dataplane: Dataplane) -> bool {
    rtp_flowing(st, calls)
        && (dataplane != Dataplane::Kernel
            || st["calls"].as_array().is_some_and(|arr| {
                arr.iter().all(|c| {
                    c["legs"].as_array().is_some_and(|legs| {
                        legs.iter().all(|l| {
                            l["streams"].as_array().is_some_and(|ss| {
                                ss.iter()
                                    .all(|s| s["kernel_packets"].as_u64().unwrap_or(0) > 0)
                            })
                        })
                    })
                })
            }))
}

/// True once the snapshot shows `calls` calls whose every leg's first stream
/// has received packets.
pub fn rtp_flowing(st: &Value, calls: usize) -> bool {
    let Some(arr) = st["calls"].as_array() else {
        return false;
    };
    arr.len() == calls
        && arr.iter().all(|c| {
            c["legs"].as_array().is_some_and(|legs| {
                legs.len() == 2
                    && legs.iter().all(|l| {
                        l["streams"].as_array().is_some_and(|ss| {
                            ss.iter().any(|s| {
                                s["rx_packets"].as_u64().unwrap_or(0) > 0
                                    && s["latched"].as_bool() == Some(true)
                            })
                        })
                    })
            })
        })
}

// ---------------------------------------------------------------------------
// sipp
// ---------------------------------------------------------------------------

/// A sipp process in one namespace, inside an outer `timeout` (which puts
/// itself and sipp in their own process group and forwards SIGUSR1).
pub struct Sipp {
    pub name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    pub started: Instant,
    pub msg_file: PathBuf,
    pub err_file: PathBuf,
    pub out_file: PathBuf,
    pub cmdline: String,
}

pub struct SippOpts<'a> {
    /// namespace
    pub ns: String,
    /// scenario name in tests/data/sipp (without .xml)
    pub scenario: &'a str,
    /// `-i` local address
    pub local_ip: &'a str,
    /// `-s` dialled user (callers)
    pub service: Option<&'a str>,
    /// remote host:port (callers)
    pub remote: Option<&'a str>,
    /// other sipp arguments (`-m 1`, `-rtp_echo`, `-t t1`, `-l 5` ...)
    pub extra: Vec<&'a str>,
    /// sipp `-timeout` in seconds (the outer timeout adds 10 s)
    pub timeout_s: u32,
    /// `-p` SIP port (5060): another sipp on the same address needs its own
    pub port: u16,
    /// `-mp` media port (`SIPP_MEDIA_PORT`)
    pub media_port: u16,
}

impl<'a> SippOpts<'a> {
    pub fn new(ns: String, scenario: &'a str, local_ip: &'a str) -> Self {
        SippOpts {
            ns,
            scenario,
            local_ip,
            service: None,
            remote: None,
            extra: Vec::new(),
            timeout_s: 20,
            port: 5060,
            media_port: SIPP_MEDIA_PORT,
        }
    }
    pub fn caller(mut self, service: &'a str, remote: &'a str) -> Self {
        self.service = Some(service);
        self.remote = Some(remote);
        self
    }
    pub fn args(mut self, a: &[&'a str]) -> Self {
        self.extra.extend_from_slice(a);
        self
    }
    pub fn timeout(mut self, s: u32) -> Self {
        self.timeout_s = s;
        self
    }
    /// SIP and media ports, for a second sipp on an address that already has one.
    pub fn ports(mut self, sip: u16, media: u16) -> Self {
        self.port = sip;
        self.media_port = media;
        self
    }
}

impl Sipp {
    pub fn spawn(lab: &Lab, name: &str, o: SippOpts<'_>) -> Sipp {
        let msg_file = lab.path(&format!("sipp-{name}.msg"));
        let err_file = lab.path(&format!("sipp-{name}.err"));
        let out_file = lab.path(&format!("sipp-{name}.out"));
        let out = fs::File::create(&out_file).expect("create sipp out");
        let sc = scenario(o.scenario);
        let outer = (o.timeout_s + 10).to_string();
        let sipp_timeout = format!("{}s", o.timeout_s);
        let mp = o.media_port.to_string();
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            o.ns.clone(),
            "timeout".into(),
            "-s".into(),
            "USR1".into(),
            "-k".into(),
            "5".into(),
            outer,
            "sipp".into(),
            "-sf".into(),
            sc.display().to_string(),
            "-i".into(),
            o.local_ip.into(),
            "-p".into(),
            o.port.to_string(),
            "-mp".into(),
            mp,
            "-timeout".into(),
            sipp_timeout,
            "-timeout_error".into(),
            "-trace_msg".into(),
            "-message_file".into(),
            msg_file.display().to_string(),
            "-trace_err".into(),
            "-error_file".into(),
            err_file.display().to_string(),
        ];
        if let Some(s) = o.service {
            args.push("-s".into());
            args.push(s.into());
        }
        if o.remote.is_some() {
            // Callers sit on the trunk peer's address: answer mediagate's
            // OPTIONS probes instead of discarding them.
            args.push("-oocsf".into());
            args.push(scenario("ooc_options").display().to_string());
        }
        args.extend(o.extra.iter().map(|s| s.to_string()));
        if let Some(r) = o.remote {
            args.push(r.into());
        }
        let cmdline = format!("ip {}", args.join(" "));
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn sipp: {e}"));
        Sipp {
            name: name.to_string(),
            child: Some(child),
            status: None,
            started: Instant::now(),
            msg_file,
            err_file,
            out_file,
            cmdline,
        }
    }

    /// Give a freshly started answering sipp time to bind its sockets.
    pub fn settle(&self) {
        sleep(Duration::from_millis(400));
    }

    /// Wait for sipp to end on its own (bounded by its outer timeout).
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(st) = self.status {
            return st;
        }
        let mut child = self.child.take().expect("sipp child");
        let st = match wait_deadline(&mut child, Duration::from_secs(120)) {
            Some(st) => st,
            None => {
                signal_group(child.id(), libc::SIGKILL);
                child.wait().expect("wait sipp")
            }
        };
        self.status = Some(st);
        st
    }

    /// Whether sipp has already exited (without blocking).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if let Some(st) = self.status {
            return Some(st);
        }
        let st = self.child.as_mut()?.try_wait().ok().flatten();
        if let Some(st) = st {
            self.child = None;
            self.status = Some(st);
        }
        st
    }

    /// SIGUSR1: sipp lets running calls finish and exits.
    ///
    /// A caller's run ends when mediagate answers its BYE, which can be
    /// before the relayed BYE reaches the callee; sipp aborts a call that is
    /// still open at SIGUSR1, so first give its dialogs a moment to close.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(st) = self.exited() {
            return st;
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !all_dialogs_closed(&self.messages()) && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        let mut child = self.child.take().expect("sipp child");
        // `timeout -s USR1` forwards SIGUSR1 to sipp.
        signal(child.id(), libc::SIGUSR1);
        let st = match wait_deadline(&mut child, Duration::from_secs(15)) {
            Some(st) => st,
            None => {
                signal_group(child.id(), libc::SIGKILL);
                child.wait().expect("wait sipp")
            }
        };
        self.status = Some(st);
        st
    }

    /// Human-readable diagnostics for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "sipp '{}': {}", self.name, self.cmdline);
        let _ = writeln!(
            s,
            "--- {} (tail) ---\n{}",
            self.out_file.display(),
            tail_of(&self.out_file, 40)
        );
        if self.err_file.exists() {
            let _ = writeln!(
                s,
                "--- {} (tail) ---\n{}",
                self.err_file.display(),
                tail_of(&self.err_file, 20)
            );
        }
        let _ = writeln!(s, "--- messages: {} ---", self.msg_file.display());
        for m in self.messages() {
            let _ = writeln!(
                s,
                "  {} {}",
                if m.received { "<-" } else { "->" },
                m.start_line()
            );
        }
        s
    }

    /// Assert that the sipp run ended successfully (all its calls passed).
    pub fn assert_ok(&mut self, mg: Option<&Mediagate>) {
        let st = self.wait();
        if !st.success() {
            let log = mg.map(|m| m.log_tail(60)).unwrap_or_default();
            panic!(
                "sipp '{}' failed: {st}\n{}\n--- mediagate log tail ---\n{log}",
                self.name,
                self.describe()
            );
        }
    }

    /// Messages from `-trace_msg`, in order.
    pub fn messages(&self) -> Vec<SipMsg> {
        let text = match fs::read(&self.msg_file) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => return Vec::new(),
        };
        parse_trace(&text)
    }

    pub fn received(&self) -> Vec<SipMsg> {
        self.messages().into_iter().filter(|m| m.received).collect()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                signal_group(child.id(), libc::SIGKILL);
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
    }
}

/// One SIP message from a sipp `-trace_msg` file.
#[derive(Debug, Clone)]
pub struct SipMsg {
    pub received: bool,
    pub text: String,
    /// When sipp traced it: seconds since the Unix epoch (UTC), from the trace's time stamp.
    pub at: Option<f64>,
}

impl SipMsg {
    pub fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("").trim_end()
    }
    pub fn is_request(&self, method: &str) -> bool {
        self.start_line().starts_with(&format!("{method} "))
    }
    pub fn status_code(&self) -> Option<u16> {
        let l = self.start_line();
        l.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }
    /// First value of a header (full or compact name), trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }
    /// All values of a header (full or compact name), in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        let want = name.to_ascii_lowercase();
        let compact = match want.as_str() {
            "via" => "v",
            "contact" => "m",
            "from" => "f",
            "to" => "t",
            "call-id" => "i",
            "content-length" => "l",
            "content-type" => "c",
            _ => "",
        };
        let mut out = Vec::new();
        for line in self.text.lines().skip(1) {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == want || (!compact.is_empty() && k == compact) {
                    out.push(v.trim().to_string());
                }
            }
        }
        out
    }
    pub fn body(&self) -> String {
        let t = self.text.replace("\r\n", "\n");
        match t.split_once("\n\n") {
            Some((_, b)) => b.to_string(),
            None => String::new(),
        }
    }
    /// SDP `c=` address (session or first media level).
    pub fn sdp_conn_addr(&self) -> Option<String> {
        self.body().lines().find_map(|l| {
            l.trim()
                .strip_prefix("c=IN IP4 ")
                .map(|a| a.trim().to_string())
        })
    }
    /// Port of the first `m=audio` line.
    pub fn sdp_audio_port(&self) -> Option<u16> {
        self.sdp_port("audio")
    }

    /// The port of the first `m=KIND` line of the SDP body (`image` for T.38).
    pub fn sdp_port(&self, kind: &str) -> Option<u16> {
        let prefix = format!("m={kind} ");
        self.body().lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix.as_str())
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse().ok())
        })
    }
}

/// The `n` records of the CDR file at `path` (waits up to 5 s for them; fails on more or
/// fewer).
pub fn cdrs(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad CDR line ({e}): {l}")))
            .collect();
        if lines.len() >= n || Instant::now() >= deadline {
            assert_eq!(lines.len(), n, "CDR lines in {}:\n{text}", path.display());
            return lines;
        }
        sleep(Duration::from_millis(50));
    }
}

/// Whether every dialog a 2xx to INVITE opened in `msgs` was closed by a 2xx
/// to BYE (in either direction).
pub fn all_dialogs_closed(msgs: &[SipMsg]) -> bool {
    let answered_with = |method: &str| -> HashSet<String> {
        msgs.iter()
            .filter(|m| m.status_code().is_some_and(|c| (200..300).contains(&c)))
            .filter(|m| {
                m.header("CSeq")
                    .is_some_and(|c| c.split_whitespace().nth(1) == Some(method))
            })
            .filter_map(|m| m.header("Call-ID"))
            .collect()
    };
    answered_with("INVITE").is_subset(&answered_with("BYE"))
}

/// Seconds since the Unix epoch of a sipp trace stamp ` 2026-11-26 15:54:55.070138`.
fn trace_time(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.trim().split_once(' ')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    // Days from civil (H. Hinnant's algorithm), valid for the proleptic Gregorian calendar.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut hms = time.split(':').map(|p| p.parse::<f64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    Some(days as f64 * 86_400.0 + h * 3600.0 + mi * 60.0 + s)
}

pub fn parse_trace(text: &str) -> Vec<SipMsg> {
    let mut msgs = Vec::new();
    for block in text.split("-----------------------------------------------") {
        // block: " <timestamp>\n<TRANSPORT> message received [N] bytes :\n\n<message>"
        let mut lines = block.splitn(3, '\n');
        let at = lines.next().and_then(trace_time);
        let Some(kind) = lines.next() else { continue };
        let Some(rest) = lines.next() else { continue };
        let received = if kind.contains("message received") {
            true
        } else if kind.contains("message sent") {
            false
        } else {
            continue;
        };
        let msg = rest.trim_start_matches(['\n', '\r']).to_string();
        if msg.is_empty() {
            continue;
        }
        msgs.push(SipMsg {
            received,
            text: msg,
            at,
        });
    }
    msgs
}

// ---------------------------------------------------------------------------
// tcpdump
// ---------------------------------------------------------------------------

/// tcpdump (`-vv`) on a namespace's veth, counting UDP packets per flow and
/// the outcome of tcpdump's UDP checksum verification.
pub struct Capture {
    child: Option<Child>,
    pub out: PathBuf,
    pub err: PathBuf,
    flows: Option<Flows>,
    sums: Option<UdpSums>,
    packets: Vec<CapturedPacket>,
}

pub type Flows = HashMap<(SocketAddrV4, SocketAddrV4), u64>;

/// tcpdump's UDP checksum verdicts of one flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SumCount {
    /// `[udp sum ok]`
    pub ok: u64,
    /// `[bad udp cksum ...]`
    pub bad: u64,
    /// neither (no checksum, or not verified)
    pub unchecked: u64,
}

pub type UdpSums = HashMap<(SocketAddrV4, SocketAddrV4), SumCount>;

impl Capture {
    /// Capture UDP except SIP on `iface` in `ns`; returns once tcpdump listens.
    pub fn start(lab: &Lab, ns: &str, iface: &str, name: &str) -> Capture {
        let out = lab.path(&format!("tcpdump-{name}.txt"));
        let err = lab.path(&format!("tcpdump-{name}.err"));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-U",
                "-nn",
                "-vv",
                "-l",
                "-i",
                iface,
                "udp and not port 5060",
            ])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("create capture file"))
            .stderr(fs::File::create(&err).expect("create capture err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn tcpdump: {e}"));
        let mut cap = Capture {
            child: Some(child),
            out,
            err,
            flows: None,
            sums: None,
            packets: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&cap.err).unwrap_or_default();
            if text.contains("listening on") {
                break;
            }
            if let Some(st) = cap.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!("tcpdump exited ({st}): {text}");
            }
            if Instant::now() >= deadline {
                panic!("tcpdump did not start listening within 10 s: {text}");
            }
            sleep(Duration::from_millis(20));
        }
        cap
    }

    /// Drain briefly, SIGINT tcpdump and parse what it saw.
    pub fn stop(&mut self) -> &Flows {
        if self.flows.is_none() {
            if let Some(mut child) = self.child.take() {
                sleep(Duration::from_millis(500));
                signal(child.id(), libc::SIGINT);
                if wait_deadline(&mut child, Duration::from_secs(5)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            let mut text = String::new();
            if let Ok(mut f) = fs::File::open(&self.out) {
                let _ = f.read_to_string(&mut text);
            }
            let packets = parse_tcpdump_packets(&text);
            self.flows = Some(count_flows(&packets));
            self.sums = Some(count_sums(&packets));
            self.packets = packets;
        }
        self.flows.as_ref().unwrap()
    }

    /// Every captured packet (after stopping the capture).
    pub fn packets(&mut self) -> &[CapturedPacket] {
        self.stop();
        &self.packets
    }

    pub fn flows(&mut self) -> &Flows {
        self.stop()
    }

    /// UDP checksum verdicts per flow.
    pub fn sums(&mut self) -> &UdpSums {
        self.stop();
        self.sums.as_ref().unwrap()
    }

    /// Human-readable flow table for assertion messages.
    pub fn describe(&mut self) -> String {
        let path = self.out.display().to_string();
        self.stop();
        let flows = self.flows.as_ref().unwrap();
        let sums = self.sums.as_ref().unwrap();
        let mut v: Vec<_> = flows.iter().collect();
        v.sort();
        let mut s = format!("capture {path}:\n");
        for (key @ (src, dst), n) in v {
            let c = sums.get(key).copied().unwrap_or_default();
            let _ = writeln!(
                s,
                "  {src} -> {dst}: {n} (udp sum ok {}, bad {}, unchecked {})",
                c.ok, c.bad, c.unchecked
            );
        }
        s
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGINT);
            if wait_deadline(&mut child, Duration::from_secs(3)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn parse_endpoint(s: &str) -> Option<SocketAddrV4> {
    let s = s.trim_end_matches(':');
    let (ip, port) = s.rsplit_once('.')?;
    Some(SocketAddrV4::new(
        ip.parse::<Ipv4Addr>().ok()?,
        port.parse().ok()?,
    ))
}

/// One UDP packet of a tcpdump text capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedPacket {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// `Some(true)` for `[udp sum ok]`, `Some(false)` for `[bad udp cksum ..]`,
    /// `None` when tcpdump printed no verdict (no `-vv`, or no checksum).
    pub sum_ok: Option<bool>,
    /// The UDP payload length tcpdump printed (`UDP, length N`).
    pub len: Option<usize>,
    /// Arrival time of day in microseconds, from tcpdump's `HH:MM:SS.ffffff` (for gaps
    /// between packets; `None` when the line has no such time).
    pub at_us: Option<u64>,
}

/// Parse tcpdump `-nn` text. A packet starts on an unindented line; `-v`
/// continues it on indented lines, e.g.
/// ```text
/// 12:00:00.000000 IP (tos 0x0, ttl 63, id 1, offset 0, flags [DF], proto UDP (17), length 280)
///     10.99.2.1.30000 > 10.99.2.2.6000: [udp sum ok] UDP, length 252
/// ```
/// or, without `-v`, `12:00:00.000000 IP 10.99.2.1.30000 > 10.99.2.2.6000: UDP, length 172`
/// (also with the interface/direction columns of `-i any`).
pub fn parse_tcpdump_packets(text: &str) -> Vec<CapturedPacket> {
    let mut records: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = records.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else if !line.trim().is_empty() {
            records.push(line.trim().to_string());
        }
    }
    let mut packets = Vec::new();
    for rec in &records {
        let toks: Vec<&str> = rec.split_whitespace().collect();
        let Some(ip) = toks.iter().position(|t| *t == "IP") else {
            continue;
        };
        // the first `A > B` after `IP` with two endpoints (the outer header)
        let endpoints = (ip + 2..toks.len().saturating_sub(1)).find_map(|i| {
            if toks[i] != ">" {
                return None;
            }
            Some((parse_endpoint(toks[i - 1])?, parse_endpoint(toks[i + 1])?))
        });
        let Some((src, dst)) = endpoints else {
            continue;
        };
        let sum_ok = if rec.contains("[udp sum ok]") {
            Some(true)
        } else if rec.contains("[bad udp cksum") {
            Some(false)
        } else {
            None
        };
        let len = rec
            .rsplit_once("UDP, length ")
            .and_then(|(_, n)| n.split_whitespace().next()?.parse().ok());
        let at_us = toks.first().and_then(|t| {
            let mut hms = t.split(':');
            let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
            let (secs, frac) = s.split_once('.')?;
            let whole = h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60;
            Some((whole + secs.parse::<u64>().ok()?) * 1_000_000 + frac.parse::<u64>().ok()?)
        });
        packets.push(CapturedPacket {
            src,
            dst,
            sum_ok,
            len,
            at_us,
        });
    }
    packets
}

/// The local time of day in microseconds, the clock of [`CapturedPacket::at_us`] (tcpdump
/// prints local time).
pub fn time_of_day_us() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes only into the `tm` we pass.
    let offset = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm.tm_gmtoff
    };
    let local = (now.as_secs() as i64 + offset).rem_euclid(86_400) as u64;
    local * 1_000_000 + u64::from(now.subsec_micros())
}

/// The largest time between two consecutive packets sent to `dst` that overlaps the time of
/// day `from_us..=to_us` (e.g. the media gap at a callee across a restart of mediagate), and
/// how many packets to `dst` came before and after it; `None` without such a pair.
pub fn largest_gap_during(
    packets: &[CapturedPacket],
    dst: SocketAddrV4,
    (from_us, to_us): (u64, u64),
) -> Option<(Duration, usize, usize)> {
    let times: Vec<u64> = packets
        .iter()
        .filter(|p| p.dst == dst)
        .filter_map(|p| p.at_us)
        .collect();
    let (i, gap) = times
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] >= from_us && w[0] <= to_us)
        .map(|(i, w)| (i, Duration::from_micros(w[1].saturating_sub(w[0]))))
        .max_by_key(|&(_, gap)| gap)?;
    Some((gap, i + 1, times.len() - i - 1))
}

/// Packets per (source, destination).
pub fn count_flows(packets: &[CapturedPacket]) -> Flows {
    let mut flows = Flows::new();
    for p in packets {
        *flows.entry((p.src, p.dst)).or_insert(0) += 1;
    }
    flows
}

/// UDP checksum verdicts per (source, destination).
pub fn count_sums(packets: &[CapturedPacket]) -> UdpSums {
    let mut sums = UdpSums::new();
    for p in packets {
        let c = sums.entry((p.src, p.dst)).or_default();
        match p.sum_ok {
            Some(true) => c.ok += 1,
            Some(false) => c.bad += 1,
            None => c.unchecked += 1,
        }
    }
    sums
}

/// Packets per flow of a tcpdump text capture (see `parse_tcpdump_packets`).
pub fn parse_tcpdump(text: &str) -> Flows {
    count_flows(&parse_tcpdump_packets(text))
}

/// Packets per flow matching source IP, destination and a source-port range.
pub fn flows_from(
    flows: &Flows,
    src_ip: &str,
    src_ports: std::ops::RangeInclusive<u16>,
    dst: SocketAddrV4,
) -> Vec<(SocketAddrV4, u64)> {
    let ip: Ipv4Addr = src_ip.parse().unwrap();
    let mut v: Vec<_> = flows
        .iter()
        .filter(|((s, d), _)| *s.ip() == ip && src_ports.contains(&s.port()) && *d == dst)
        .map(|((s, _), n)| (*s, *n))
        .collect();
    v.sort();
    v
}

/// Total packets whose source IP is `ip`.
pub fn packets_from_ip(flows: &Flows, ip: &str) -> u64 {
    let ip: Ipv4Addr = ip.parse().unwrap();
    flows
        .iter()
        .filter(|((s, _), _)| *s.ip() == ip)
        .map(|(_, n)| n)
        .sum()
}

pub fn sa(ip: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip.parse().unwrap(), port)
}

/// Which side places a call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Origin {
    Gw,
    Itsp,
}

/// One side of the lab as a sipp peer sees it.
pub struct Side {
    pub ns: String,
    pub iface: String,
    /// the sipp peer's address
    pub peer_ip: &'static str,
    /// mediagate's address facing that peer
    pub mg_ip: &'static str,
}

/// The caller's and the callee's side of a call placed from `from`.
pub fn sides(lab: &Lab, from: Origin) -> (Side, Side) {
    let gw = Side {
        ns: lab.gw(),
        iface: lab.gw_if(),
        peer_ip: GW_IP,
        mg_ip: MG_GW_IP,
    };
    let it = Side {
        ns: lab.it(),
        iface: lab.it_if(),
        peer_ip: IT_IP,
        mg_ip: MG_IT_IP,
    };
    match from {
        Origin::Gw => (gw, it),
        Origin::Itsp => (it, gw),
    }
}

// ---------------------------------------------------------------------------
// Raw sockets inside a namespace (hand-made SIP, hostile input)
// ---------------------------------------------------------------------------

/// Runs `f` on a thread inside namespace `ns` and returns its result: a socket made there stays
/// in that namespace whichever thread uses it later.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// A UDP socket bound to `ip:0` in namespace `ns`, with a 2 s read timeout so that no test
/// waits forever for an answer that does not come.
pub fn udp_in(ns: &str, ip: &str) -> UdpSocket {
    let s = bind_in(ns, &format!("{ip}:0"));
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set read timeout");
    s
}

/// A TCP connection from `ip` in namespace `ns` to `to`, with a 2 s read timeout.
pub fn tcp_in(ns: &str, ip: &str, to: SocketAddrV4) -> std::net::TcpStream {
    let ip: Ipv4Addr = ip.parse().expect("IPv4 address");
    let s = in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("tokio runtime");
        let stream = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().expect("TCP socket");
            sock.bind(SocketAddrV4::new(ip, 0).into())
                .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
            sock.connect(to.into())
                .await
                .unwrap_or_else(|e| panic!("connect {to}: {e}"))
        });
        let std = stream.into_std().expect("std TCP stream");
        std.set_nonblocking(false).expect("blocking TCP stream");
        std
    });
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set read timeout");
    s
}

/// An OPTIONS request from `from` (a socket address the caller bound) with its own Call-ID:
/// the probe that shows mediagate still answers.
pub fn options_probe(from: std::net::SocketAddr, to: &str, call_id: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:probe@{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{ip}>;tag=p1\r\n\
         To: <sip:probe@{to}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        ip = from.ip()
    )
    .into_bytes()
}

/// The status code of a SIP response's first line (`None` for anything else).
pub fn status_code(msg: &[u8]) -> Option<u16> {
    let line = msg.split(|b| *b == b'\r' || *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// Sends `bytes` and then an OPTIONS probe from `sock` to `to`, and returns the status codes of
/// every response that arrived before the probe's answer (the answers to `bytes`, in order),
/// or panics when the probe is not answered: mediagate must keep answering whatever it got.
pub fn send_then_probe(sock: &UdpSocket, to: SocketAddrV4, bytes: &[u8], what: &str) -> Vec<u16> {
    responses_before_probe(sock, to, bytes, what)
        .iter()
        .filter_map(|r| status_code(r))
        .collect()
}

/// [`send_then_probe`], returning the responses themselves (for tests that read their headers).
pub fn responses_before_probe(
    sock: &UdpSocket,
    to: SocketAddrV4,
    bytes: &[u8],
    what: &str,
) -> Vec<Vec<u8>> {
    let probe_id = format!("probe-{what}");
    sock.send_to(bytes, to).expect("send");
    let local = sock.local_addr().expect("local address");
    sock.send_to(&options_probe(local, &to.to_string(), &probe_id), to)
        .expect("send probe");
    let mut responses = Vec::new();
    let mut buf = vec![0u8; 65_536];
    for _ in 0..64 {
        let codes = || {
            responses
                .iter()
                .filter_map(|r: &Vec<u8>| status_code(r))
                .collect::<Vec<_>>()
        };
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!(
                "{what}: no answer to the OPTIONS probe sent after it ({e}); answers so far {:?}",
                codes()
            ),
        };
        let msg = &buf[..n];
        let Some(code) = status_code(msg) else {
            continue;
        };
        if String::from_utf8_lossy(msg).contains(&format!("Call-ID: {probe_id}\r\n")) {
            assert_eq!(code, 200, "{what}: OPTIONS probe answered {code}");
            return responses;
        }
        responses.push(msg.to_vec());
    }
    panic!(
        "{what}: more than 64 responses before the probe's answer: {:?}",
        responses
            .iter()
            .filter_map(|r| status_code(r))
            .collect::<Vec<_>>()
    );
}

/// Status codes of every datagram already waiting on `sock` (it is drained without waiting:
/// call this after a later request's answer showed that mediagate handled these).
pub fn drain_codes(sock: &UdpSocket) -> Vec<u16> {
    sock.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 65_536];
    let mut codes = Vec::new();
    for _ in 0..10_000 {
        match sock.recv(&mut buf) {
            Ok(n) => codes.extend(status_code(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    sock.set_nonblocking(false).unwrap();
    codes
}

/// A process in a namespace (`ip netns exec` execs it, so the child is the program itself)
/// with stdout/stderr in the lab directory; SIGTERM, then SIGKILL, on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    pub fn spawn(lab: &Lab, ns: &str, name: &str, bin: &str, args: &[&str]) -> Proc {
        let out = lab.path(&format!("{name}.json"));
        let err = lab.path(&format!("{name}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, bin])
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("create stdout file"))
            .stderr(fs::File::create(&err).expect("create stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {bin}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            status: None,
            out,
            err,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} (status {:?}): stdout {}\nstderr {}",
            self.name,
            self.status,
            fs::read_to_string(&self.out).unwrap_or_default(),
            fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.status = Some(st);
                self.child = None;
                return self.status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the process to exit successfully and parse its one JSON line.
    pub fn wait_json(&mut self, limit: Duration) -> Value {
        let st = self
            .wait(limit)
            .unwrap_or_else(|| panic!("{} still running after {limit:?}", self.name));
        assert!(st.success(), "{} failed: {}", self.name, self.describe());
        self.json()
    }

    /// SIGTERM (the sink then prints its result) and parse its JSON.
    pub fn term_json(&mut self) -> Value {
        if let Some(child) = &self.child {
            // SAFETY: kill() on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        self.wait_json(Duration::from_secs(5))
    }

    pub fn json(&self) -> Value {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "{}: output is not JSON ({e}): {}",
                self.name,
                self.describe()
            )
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill() on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
    }
}

// ---------------------------------------------------------------------------
// NG
// ---------------------------------------------------------------------------

/// Where the tests' mediagate listens for NG (`control.ng`), inside the mg namespace.
pub const NG_ADDR: &str = "127.0.0.1:2223";

/// An NG client in a lab's mg namespace, talking to mediagate's `control.ng` at [`NG_ADDR`].
pub struct NgClient {
    sock: UdpSocket,
    server: SocketAddr,
    next: u32,
}

impl NgClient {
    pub fn new(lab: &Lab) -> NgClient {
        NgClient {
            sock: bind_in(&lab.mg(), "127.0.0.1:0"),
            server: NG_ADDR.parse().unwrap(),
            next: 0,
        }
    }

    /// Sends `m` with a fresh cookie (up to 3 tries, 1 s apart) and returns the decoded reply.
    pub fn call(&mut self, m: &Bencode) -> Bencode {
        self.next += 1;
        let cookie = format!("ngtest{} ", self.next);
        let mut datagram = cookie.clone().into_bytes();
        datagram.extend_from_slice(&m.encode());
        self.sock
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        for _ in 0..3 {
            self.sock.send_to(&datagram, self.server).expect("send NG");
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                if let Some(rest) = buf[..n].strip_prefix(cookie.as_bytes()) {
                    return Bencode::decode(rest).unwrap_or_else(|e| {
                        panic!(
                            "NG reply is not bencode ({e}): {:?}",
                            String::from_utf8_lossy(rest)
                        )
                    });
                }
            }
        }
        panic!("no NG reply from {} to {m:?}", self.server);
    }
}

/// A bencode string.
pub fn s(x: &str) -> Bencode {
    Bencode::from(x)
}

/// A bencode list of strings.
pub fn list(xs: &[&str]) -> Bencode {
    Bencode::List(xs.iter().map(|x| s(x)).collect())
}

/// An SDP of one PCMA line at `ip:port`, as an NG test peer offers or answers it.
pub fn pcma_sdp(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
    )
}

/// The audio port of an anchored SDP.
pub fn audio_port(sdp: &str) -> u16 {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no m=audio port:\n{sdp}"))
}

/// One RTP packet of 20 ms PCMA (RTP v2, payload type 8) with sequence number `seq`.
pub fn pcma_rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]);
    p
}

/// The reply's SDP, after checking `result: ok`.
pub fn ok_sdp(reply: &Bencode, what: &str) -> String {
    assert_eq!(
        reply.get("result").and_then(Bencode::as_str),
        Some("ok"),
        "{what} reply: {reply:?}"
    );
    match reply.get("sdp") {
        Some(Bencode::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => panic!("{what} reply has no SDP: {reply:?}"),
    }
}
