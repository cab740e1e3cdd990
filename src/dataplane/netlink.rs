//! The kernel's IPv4 neighbour and routing tables over rtnetlink, for the AF_XDP workers' next
//! hops: a dump of the neighbour table (`ip neigh`) and a route query for one destination
//! (`ip route get`), which answers what the kernel itself would use, policy routing included.
//! Messages are built and parsed as bytes (native endian, as netlink is) with no unsafe casts.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const HEADER: usize = 16;
/// Neighbour states whose link-layer address can be used (`ip neigh` shows them with a MAC).
const USABLE: u16 =
    libc::NUD_REACHABLE | libc::NUD_STALE | libc::NUD_DELAY | libc::NUD_PROBE | libc::NUD_PERMANENT;

/// An rtnetlink socket of the caller's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The `(type, payload)` attributes packed in `data`; stops at the first malformed one.
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(data, 0)?);
        let kind = u16_at(data, 2)?;
        let payload = data.get(4..len)?;
        data = data.get(align(len)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

impl Netlink {
    /// Opens the socket (no privileges needed for these queries).
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and calls `each` with the body of every reply of type `reply`, until
    /// the kernel is done (a dump's NLMSG_DONE, or the single answer of a plain request).
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
        reply: u16,
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(HEADER + body.len());
        msg.extend_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: `msg` is valid for its length; the kernel is the default destination.
        if unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let dump = flags & libc::NLM_F_DUMP as u16 != 0;
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut data = &self.buf[..n as usize];
            while data.len() >= HEADER {
                let len = u32_at(data, 0).unwrap_or(0) as usize;
                let (Some(kind), Some(seq)) = (u16_at(data, 4), u32_at(data, 8)) else {
                    break;
                };
                let Some(body) = data.get(HEADER..len.max(HEADER)) else {
                    break;
                };
                data = data.get(align(len.max(HEADER))..).unwrap_or(&[]);
                if seq != self.seq {
                    continue;
                }
                match kind {
                    k if k == libc::NLMSG_DONE as u16 => return Ok(()),
                    k if k == libc::NLMSG_ERROR as u16 => {
                        let code = u32_at(body, 0).unwrap_or(0) as i32;
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    k if k == reply => {
                        each(body);
                        if !dump {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The usable IPv4 neighbours (address → MAC) of every device.
    pub fn neighbours(&mut self) -> io::Result<HashMap<Ipv4Addr, [u8; 6]>> {
        // struct ndmsg: family, 3 pad bytes, ifindex, state, flags, type.
        let mut ndmsg = [0u8; 12];
        ndmsg[0] = libc::AF_INET as u8;
        let mut found = HashMap::new();
        self.request(
            libc::RTM_GETNEIGH,
            libc::NLM_F_DUMP as u16,
            &ndmsg,
            libc::RTM_NEWNEIGH,
            |body| {
                let usable = u16_at(body, 8).is_some_and(|state| state & USABLE != 0);
                let (mut ip, mut mac) = (None, None);
                for (kind, payload) in attributes(body.get(12..).unwrap_or(&[])) {
                    match kind {
                        libc::NDA_DST => ip = ipv4(payload),
                        libc::NDA_LLADDR => mac = <[u8; 6]>::try_from(payload).ok(),
                        _ => {}
                    }
                }
                if let (true, Some(ip), Some(mac)) = (usable, ip, mac) {
                    found.insert(ip, mac);
                }
            },
        )?;
        Ok(found)
    }

    /// The next hop the kernel routes `dest` through: its gateway, or `dest` when on-link.
    /// `None` when there is no route.
    pub fn next_hop(&mut self, dest: Ipv4Addr) -> io::Result<Option<Ipv4Addr>> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags;
        // then RTA_DST.
        let mut body = vec![0u8; 12];
        body[0] = libc::AF_INET as u8;
        body[1] = 32;
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
        body.extend_from_slice(&dest.octets());
        let mut hop = None;
        let answer = self.request(libc::RTM_GETROUTE, 0, &body, libc::RTM_NEWROUTE, |reply| {
            let gateway = attributes(reply.get(12..).unwrap_or(&[]))
                .find(|(kind, _)| *kind == libc::RTA_GATEWAY)
                .and_then(|(_, payload)| ipv4(payload));
            hop = Some(gateway.unwrap_or(dest));
        });
        match answer {
            Ok(()) => Ok(hop),
            // No route (ENETUNREACH, EHOSTUNREACH): nothing to resolve.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_walked_with_alignment() {
        // A 5-byte attribute (padded to 8) followed by a 4-byte one; then a truncated header.
        let header = |len: u16, kind: u16| [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
        let mut data = header(9, 1);
        data.extend_from_slice(&[10, 0, 0, 1, 0xff, 0, 0, 0]);
        data.extend_from_slice(&header(8, 5));
        data.extend_from_slice(&[192, 0, 2, 1]);
        data.extend_from_slice(&200u16.to_ne_bytes());
        let attrs: Vec<(u16, Vec<u8>)> = attributes(&data).map(|(k, p)| (k, p.to_vec())).collect();
        assert_eq!(
            attrs,
            vec![(1, vec![10, 0, 0, 1, 0xff]), (5, vec![192, 0, 2, 1])]
        );
    }

    #[test]
    fn loopback_routes_on_link_and_has_no_arp_entry() {
        let mut nl = Netlink::open().expect("rtnetlink socket");
        let lo = Ipv4Addr::LOCALHOST;
        assert_eq!(nl.next_hop(lo).unwrap(), Some(lo));
        assert!(!nl.neighbours().unwrap().contains_key(&lo));
    }
}
