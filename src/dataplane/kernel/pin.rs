//! The handover directory in bpffs (`media.pin_dir`): with `media.handover = true` the kernel
//! tier pins its maps and XDP links there, so the program keeps forwarding while no mediagate
//! runs and the next start adopts them. bpffs holds only directories and BPF objects, so the
//! facts a later process needs (which program build made the pins, the host settings to restore)
//! are recorded as empty directories named `KEY=VALUE` (bpffs refuses names with a dot).

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// Where bpffs is mounted when it is absent and `media.pin_dir` lies below it (the default).
pub const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Prefix of a pinned XDP link: `link_IFINDEX_DEVICE` (dots of the device name as `_`).
const LINK: &str = "link_";
/// Prefix of the record naming the program build that made the pins.
const PROGRAM: &str = "program=";
/// Prefix of a host setting to restore when the pins go: `restore_KEY=VALUE`.
const RESTORE: &str = "restore_";

/// Whether `path` lies on a bpffs mount.
fn on_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct of the right type; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as u32 == BPF_FS_MAGIC }
}

/// Mounts bpffs at [`BPFFS`] unless one is mounted there already.
fn ensure_bpffs() -> io::Result<()> {
    if on_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    let path = CString::new(BPFFS).expect("no NUL");
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: all pointers are NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::other(format!("mounting bpffs at {BPFFS}: {e}")));
    }
    // A mount made inside a private mount namespace (`ip netns exec` gives one, with its own
    // /sys) vanishes with the process, and the pins with it.
    let private =
        std::fs::read_link("/proc/self/ns/mnt").ok() != std::fs::read_link("/proc/1/ns/mnt").ok();
    if private {
        tracing::warn!(
            path = BPFFS,
            "bpffs mounted in a private mount namespace: the pins die \
            with this process; mount bpffs in the host namespace or set media.pin_dir to one"
        );
    } else {
        tracing::info!(path = BPFFS, "bpffs mounted");
    }
    Ok(())
}

/// A stable fingerprint (FNV-1a) of the embedded program, so a start adopts only pins made by
/// the same program build: another build may lay its maps out differently.
pub fn fingerprint(program: &[u8]) -> String {
    let hash = program.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// One handover directory in bpffs.
#[derive(Debug, Clone)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// Opens (creating it) the directory at `path`, which must be on bpffs; bpffs is mounted at
    /// [`BPFFS`] first when `path` is below it and nothing is mounted there.
    pub fn create(path: &Path) -> io::Result<Self> {
        if path.starts_with(BPFFS) {
            ensure_bpffs()?;
        }
        std::fs::create_dir_all(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if !on_bpffs(path) {
            return Err(io::Error::other(format!(
                "media.pin_dir {} is not on a bpffs mount: pins cannot live there",
                path.display()
            )));
        }
        Ok(PinDir { path: path.into() })
    }

    /// The directory at `path` if it exists (nothing is mounted or created): for clean-up.
    pub fn existing(path: &Path) -> Option<Self> {
        path.is_dir().then(|| PinDir { path: path.into() })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> io::Result<Vec<String>> {
        Ok(std::fs::read_dir(&self.path)?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// Whether a previous run left pins here.
    pub fn has_pins(&self) -> bool {
        self.names().map(|n| !n.is_empty()).unwrap_or(false)
    }

    /// The pin path of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The pin name of the XDP link on `device` (interface index `ifindex`).
    fn link_name(device: &str, ifindex: u32) -> String {
        format!("{LINK}{ifindex}_{}", device.replace('.', "_"))
    }

    /// The pin path of the XDP link on `device` (interface index `ifindex`).
    pub fn link(&self, device: &str, ifindex: u32) -> PathBuf {
        self.path.join(Self::link_name(device, ifindex))
    }

    /// Whether the pinned links are exactly those of `devices` (`(name, ifindex)`): the same
    /// devices, not since recreated (a new device gets a new index).
    pub fn links_match(&self, devices: &[(String, u32)]) -> io::Result<bool> {
        let mut pinned: Vec<String> = self
            .names()?
            .into_iter()
            .filter(|n| n.starts_with(LINK))
            .collect();
        let mut wanted: Vec<String> = devices
            .iter()
            .map(|(d, i)| Self::link_name(d, *i))
            .collect();
        pinned.sort();
        wanted.sort();
        Ok(pinned == wanted)
    }

    /// The fingerprint of the program build that made these pins.
    pub fn program(&self) -> Option<String> {
        self.names()
            .ok()?
            .iter()
            .find_map(|n| n.strip_prefix(PROGRAM).map(str::to_string))
    }

    /// Records the fingerprint of the program build making the pins.
    pub fn set_program(&self, fingerprint: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.path.join(format!("{PROGRAM}{fingerprint}")))
    }

    /// The host settings to restore when the pins go, as `(key, value)`.
    pub fn restores(&self) -> Vec<(String, String)> {
        self.names()
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.strip_prefix(RESTORE)?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Records host settings to restore when the pins go, unless some are recorded already
    /// (they are then the values from before the first handover run, which must win).
    pub fn record_restores(&self, settings: &[(&str, String)]) -> io::Result<()> {
        if !self.restores().is_empty() {
            return Ok(());
        }
        for (key, value) in settings {
            std::fs::create_dir_all(self.path.join(format!("{RESTORE}{key}={value}")))?;
        }
        Ok(())
    }

    /// Removes every pin and record, links first (which detaches the program once no process
    /// holds them), then the directory itself; returns the host settings recorded for restoring.
    pub fn clear(self) -> io::Result<Vec<(String, String)>> {
        let restores = self.restores();
        let mut names = self.names()?;
        // Links before maps, so the program stops before its maps go.
        names.sort_by_key(|n| !n.starts_with(LINK));
        for name in names {
            let p = self.path.join(&name);
            if p.is_dir() {
                std::fs::remove_dir(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        std::fs::remove_dir(&self.path)?;
        Ok(restores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_tells_builds_apart() {
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
        assert_eq!(fingerprint(b"").len(), 16);
    }

    #[test]
    fn records_round_trip_as_directory_names() {
        // A plain directory behaves like bpffs for directories, which is all the records use.
        let base = std::env::temp_dir().join(format!("mg-pin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = PinDir::existing(&base).unwrap();
        assert!(!dir.has_pins());
        dir.set_program("00ff").unwrap();
        dir.record_restores(&[("ipv4", "0".into())]).unwrap();
        // A later run finds forwarding on (its predecessor set it): the first record wins.
        dir.record_restores(&[("ipv4", "1".into())]).unwrap();
        std::fs::create_dir(dir.link("eth0.100", 7)).unwrap();
        assert!(dir.has_pins());
        assert_eq!(dir.program().as_deref(), Some("00ff"));
        assert!(dir.path().join("link_7_eth0_100").exists());
        assert!(dir.links_match(&[("eth0.100".into(), 7)]).unwrap());
        assert!(!dir.links_match(&[("eth0.100".into(), 8)]).unwrap());
        assert!(!dir.links_match(&[]).unwrap());
        assert_eq!(dir.restores(), vec![("ipv4".to_string(), "0".to_string())]);
        assert_eq!(
            dir.clear().unwrap(),
            vec![("ipv4".to_string(), "0".to_string())]
        );
        assert!(!base.exists());
    }
}
