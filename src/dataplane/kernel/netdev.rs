//! Host network facts the kernel tier needs: which device holds an address, and the sysctl and
//! nftables settings that let `bpf_fib_lookup` work without turning the box into a router.

use std::io;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// Every (device name, address) pair of this network namespace, from `getifaddrs`.
fn interface_addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family tells the concrete type.
        let addr: Option<IpAddr> = unsafe {
            match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(a.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if let Some(addr) = addr {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            found.push((name.to_string_lossy().into_owned(), addr));
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The name of the network device holding `ip`.
pub fn device_of(ip: IpAddr) -> io::Result<Option<String>> {
    Ok(interface_addresses()?
        .into_iter()
        .find(|(_, a)| *a == ip)
        .map(|(name, _)| name))
}

/// The IPv4 addresses of device `name`.
pub fn ipv4_addresses_of(name: &str) -> io::Result<Vec<std::net::Ipv4Addr>> {
    Ok(interface_addresses()?
        .into_iter()
        .filter(|(n, _)| n == name)
        .filter_map(|(_, a)| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect())
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Only touched when a media address is IPv6: forwarding on makes the kernel ignore router
/// advertisements (unless `accept_ra = 2`), which a box with IPv6 media must plan for anyway.
const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const NFT_TABLE: &str = "mediagate_noforward";

/// The forwarding switches by the short name a handover record keeps them under.
const KNOBS: [(&str, &str); 2] = [("ipv4", IP_FORWARD), ("ipv6", IP6_FORWARD)];

/// Forwarding enabled for `bpf_fib_lookup`, with an nftables rule set that drops every forwarded
/// packet so the box routes nothing but its own media (which XDP moves without netfilter).
/// Restores the previous state on drop unless disarmed (handover: the program left running
/// needs both).
pub struct ForwardingGuard {
    /// Each sysctl switched on (by short name), with the value to restore.
    previous: Vec<(&'static str, String)>,
    armed: bool,
}

impl ForwardingGuard {
    /// Switches IPv4 forwarding on, and IPv6 forwarding too when `ipv6` media is configured.
    pub fn enable(ipv6: bool) -> io::Result<Self> {
        let knobs = if ipv6 { &KNOBS[..] } else { &KNOBS[..1] };
        let rules = format!(
            "table inet {NFT_TABLE} {{\n  chain forward {{\n    type filter hook forward priority -100; policy drop;\n  }}\n}}\n"
        );
        run_nft(&["-f", "-"], Some(&rules)).map_err(|e| {
            io::Error::other(format!(
                "cannot install the nftables rule set that blocks forwarding: {e}"
            ))
        })?;
        let mut guard = ForwardingGuard {
            previous: Vec::new(),
            armed: true,
        };
        for (name, knob) in knobs {
            // On failure the guard drops here and undoes what was done so far.
            let before = std::fs::read_to_string(knob)?.trim().to_string();
            std::fs::write(knob, "1")?;
            guard.previous.push((name, before));
        }
        Ok(guard)
    }

    /// The settings as they were before, by short name, for a handover record.
    pub fn previous(&self) -> &[(&'static str, String)] {
        &self.previous
    }

    /// Leaves forwarding and the rule set in place on drop: a pinned program still needs them;
    /// [`restore`] undoes them later from the handover record.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ForwardingGuard {
    fn drop(&mut self) {
        if self.armed {
            let previous: Vec<_> = self
                .previous
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            restore(&previous);
        }
    }
}

/// Puts the forwarding switches back to the recorded `(short name, value)` pairs and removes
/// the rule set: what a [`ForwardingGuard`] does on drop, for settings a handover run left.
pub fn restore(previous: &[(String, String)]) {
    for (name, before) in previous {
        if let Some((_, knob)) = KNOBS.iter().find(|(n, _)| n == name) {
            if let Err(e) = std::fs::write(knob, before) {
                tracing::warn!(knob, error = %e, "cannot restore the forwarding setting");
            }
        }
    }
    let _ = run_nft(&["delete", "table", "inet", NFT_TABLE], None);
}

fn run_nft(args: &[&str], stdin: Option<&str>) -> io::Result<()> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The interface index of device `name` in this network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::other(format!("no network device {name}"))),
        i => Ok(i),
    }
}
