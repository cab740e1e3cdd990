//! Kamailio 5.6 as a real peer in a lab namespace: started in the foreground with a config from
//! `tests/data/kamailio/`, waited for until it listens, stopped (SIGTERM, then SIGKILL to its
//! process group) on drop.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::Lab;

const KAMAILIO: &str = "/usr/sbin/kamailio";

/// A Kamailio process in one of the lab's namespaces.
pub struct Kamailio {
    child: Option<Child>,
    log: PathBuf,
}

impl Kamailio {
    /// Starts Kamailio in namespace `ns` with config file `cfg`, and waits until `ss` in that
    /// namespace shows a socket on `listening` (e.g. `10.99.2.2:5061`).
    pub fn start(lab: &Lab, ns: &str, name: &str, cfg: &Path, listening: &str) -> Kamailio {
        assert!(
            Path::new(KAMAILIO).is_file(),
            "{KAMAILIO} not found: run scripts/install-deps (Debian package `kamailio`)"
        );
        let log = lab.path(&format!("kamailio-{name}.log"));
        let file = fs::File::create(&log).expect("kamailio log");
        let rundir = lab.path(&format!("kamailio-{name}-run"));
        fs::create_dir_all(&rundir).expect("rundir");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, KAMAILIO, "-DD", "-E", "-m", "32"])
            .arg("-Y")
            .arg(&rundir)
            .arg("-f")
            .arg(cfg)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("spawn kamailio");
        let k = Kamailio {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ss = lab.exec(ns, &["ss", "-Hltun"]);
            if ss.contains(listening) {
                sleep(Duration::from_millis(300));
                return k;
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not start:\n{}",
                k.log_text()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Everything Kamailio logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signals to the child we spawned and to the process group it leads.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = child.wait();
    }
}
