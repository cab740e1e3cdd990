//! dnsmasq as a real DNS server in the lab's `it` namespace, serving only the records a test
//! gives it (`--srv-host`, `--naptr-record`, `--host-record`, ...), killed on drop.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{Lab, IT_IP};

/// The DNS server's address (on the `it` side), port 53.
pub const DNS_IP: &str = IT_IP;

/// dnsmasq in the `it` namespace, serving only the records given; killed on drop.
pub struct Dnsmasq {
    child: Option<Child>,
    log: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq on `DNS_IP`:53 with `records` (dnsmasq options), TTL 5 s, logging
    /// queries; waits until it listens.
    pub fn start(lab: &Lab, records: &[String]) -> Dnsmasq {
        let log = lab.path("dnsmasq.log");
        let file = fs::File::create(&log).expect("dnsmasq log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.it(),
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
            ])
            .args(["--bind-interfaces", &format!("--listen-address={DNS_IP}")])
            .args(["--log-queries", "--log-facility=-", "--local-ttl=5"])
            .args(records)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("spawn dnsmasq (apt-get install dnsmasq-base)");
        let d = Dnsmasq {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lab
            .exec(&lab.it(), &["ss", "-Hlun"])
            .contains(&format!("{DNS_IP}:53"))
        {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start:\n{}",
                d.log_text()
            );
            sleep(Duration::from_millis(100));
        }
        d
    }

    /// Everything dnsmasq logged so far (queries included).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: a signal to the child we spawned.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
