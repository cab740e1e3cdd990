//! Media forwarding tiers. Today: the socket tier ([`socket::SocketRelay`]); the XDP and AF_XDP
//! tiers plug in beside it and take the same [`crate::media::Command`]s.

pub mod socket;

/// Adds the media port range to `net.ipv4.ip_local_reserved_ports` of the current network
/// namespace, so the kernel never hands one of mediagate's ports to another socket as an
/// ephemeral port. Returns the new value of the setting.
pub fn reserve_ports(first: u16, last: u16) -> std::io::Result<String> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(PATH)?;
    let current = current.trim();
    let range = format!("{first}-{last}");
    let value = if current.is_empty() {
        range
    } else {
        format!("{current},{range}")
    };
    std::fs::write(PATH, &value)?;
    Ok(std::fs::read_to_string(PATH)?.trim().to_string())
}
