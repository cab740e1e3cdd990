//! mg-rtpsink: receiving end of `scripts/loadtest`, counterpart of `mg-rtpgen`.
//!
//! Binds UDP `IP:PORT` for every given port (one socket; or several, polled with epoll),
//! receives with `recvmmsg` and, from the payload `mg-rtpgen` writes (magic, stream index,
//! sequence number, CLOCK_MONOTONIC send time), counts per-stream packets, duplicates,
//! in-stream gaps and reordering, and the one-way latency distribution (receive time − send
//! time; generator and sink share the machine's clock), and the largest interval between two
//! consecutive packets (`max_gap_ns`: the media gap across a relay restart).
//!
//! Latency uses the kernel's receive timestamp (`SO_TIMESTAMPNS`, taken when the packet enters
//! the sink's namespace; CLOCK_REALTIME, converted to CLOCK_MONOTONIC with an offset measured at
//! start), so it does not include the sink's own scheduling delay. That lets the sink poll
//! lazily (`--poll-us`, default 1000: drain, then sleep) instead of waking per packet, which
//! keeps its CPU cost per packet low on the core it shares with the generator.
//!
//! Checksums: these are ordinary UDP sockets, so the kernel verifies the UDP checksum and drops
//! bad packets before they reach us; it counts them in `/proc/net/snmp` `Udp: InCsumErrors` of
//! the sink's network namespace. The sink reports the delta of that counter (and of
//! `RcvbufErrors`, `InErrors`, `NoPorts`) over its run, so a relay that corrupts checksums shows
//! up as `udp.InCsumErrors > 0` rather than as unexplained loss.
//!
//! Stops on SIGTERM/SIGINT, after `--seconds`, or `--idle-ms` after the last datagram of any
//! kind (once at least one arrived; so a caller can use it to wait until a relay's queue has
//! drained); then prints one JSON object on stdout.
//!
//! ```text
//! mg-rtpsink --bind 10.99.2.2 --ports 40000 --streams 1000 --seconds 30 --cpu 0 --ready-file F
//! ```

use mediagate::clock::{monotonic_ns, realtime_ns};
use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};

const MAGIC: &[u8; 4] = b"MGLT";
const BUF_LEN: usize = 2048;
const MAX_BATCH: usize = 1024;
/// Largest stream index / per-stream sequence number tracked (guards memory against garbage).
const MAX_STREAMS: usize = 1 << 20;
const MAX_SEQ: u64 = 1 << 28;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

struct Args {
    bind: Ipv4Addr,
    ports: Vec<u16>,
    streams: usize,
    seconds: f64,
    idle_ms: u64,
    batch: usize,
    cpu: i32,
    rcvbuf: i32,
    ready_file: Option<String>,
    poll_us: u64,
    run_id: Option<u32>,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "mg-rtpsink: {msg}\n\
         usage: mg-rtpsink --bind IP --ports P[,P2|A-B...] [--streams N (expected, for the zero-packet count)]\n\
         \x20         [--seconds S (60)] [--idle-ms MS (0 = off)] [--batch B (256)] [--cpu C (0; -1 = none)]\n\
         \x20         [--rcvbuf BYTES (33554432)] [--ready-file PATH (created once bound)]\n\
         \x20         [--poll-us US (1000; 0 = block and wake per packet)]\n\
         \x20         [--run-id N (count only packets of this generator run; others are `stale`)]"
    );
    exit(2)
}

fn parse_ports(s: &str) -> Vec<u16> {
    let bad = || usage(&format!("bad port list '{s}'"));
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (u16, u16) = (
                a.parse().unwrap_or_else(|_| bad()),
                b.parse().unwrap_or_else(|_| bad()),
            );
            if a > b {
                bad();
            }
            v.extend(a..=b);
        } else {
            v.push(part.parse().unwrap_or_else(|_| bad()));
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

fn parse_args() -> Args {
    let mut a = Args {
        bind: Ipv4Addr::UNSPECIFIED,
        ports: Vec::new(),
        streams: 0,
        seconds: 60.0,
        idle_ms: 0,
        batch: 256,
        cpu: 0,
        rcvbuf: 32 << 20,
        ready_file: None,
        poll_us: 1000,
        run_id: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "-h" || k == "--help" {
            usage("help");
        }
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{k} needs a value")));
        let num = |v: &str| -> f64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{k}: bad number '{v}'")))
        };
        match k.as_str() {
            "--bind" => {
                a.bind = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --bind '{v}'")))
            }
            "--ports" => a.ports.extend(parse_ports(&v)),
            "--streams" => a.streams = num(&v) as usize,
            "--seconds" => a.seconds = num(&v),
            "--idle-ms" => a.idle_ms = num(&v) as u64,
            "--batch" => a.batch = (num(&v) as usize).clamp(1, MAX_BATCH),
            "--cpu" => a.cpu = num(&v) as i32,
            "--rcvbuf" => a.rcvbuf = num(&v) as i32,
            "--ready-file" => a.ready_file = Some(v),
            "--poll-us" => a.poll_us = num(&v) as u64,
            "--run-id" => a.run_id = Some(num(&v) as u32),
            _ => usage(&format!("unknown option {k}")),
        }
    }
    if a.ports.is_empty() {
        usage("no --ports");
    }
    a
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, read back to back.
fn realtime_offset() -> i128 {
    let m0 = monotonic_ns();
    let r = realtime_ns();
    let m1 = monotonic_ns();
    r as i128 - ((m0 as i128 + m1 as i128) / 2)
}

fn sleep_us(us: u64) {
    let ts = libc::timespec {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_nsec: ((us % 1_000_000) * 1000) as libc::c_long,
    };
    // SAFETY: valid timespec; EINTR (a stop signal) just ends the sleep early.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// The `SCM_TIMESTAMPNS` receive time of a message, as CLOCK_MONOTONIC ns.
fn kernel_rx_ns(h: &libc::msghdr, offset: i128) -> Option<u64> {
    // SAFETY: h was filled by recvmmsg; the CMSG macros stay within msg_control/msg_controllen.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(h);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cm) as *const libc::timespec);
                let real = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
                return u64::try_from(real - offset).ok();
            }
            cm = libc::CMSG_NXTHDR(h, cm);
        }
    }
    None
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn pin(cpu: i32) -> Option<String> {
    if cpu < 0 {
        return None;
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for cpu < CPU_SETSIZE.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    (rc != 0).then(|| format!("sched_setaffinity({cpu}): {}", errno()))
}

fn setopt(fd: i32, level: i32, name: i32, v: &impl Sized) -> i32 {
    // SAFETY: v is a live value whose size we pass.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const _ as *const libc::c_void).cast(),
            std::mem::size_of_val(v) as libc::socklen_t,
        )
    }
}

fn bind_udp(ip: Ipv4Addr, port: u16, rcvbuf: i32) -> Result<i32, String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", errno()));
    }
    if setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf) != 0 {
        setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf);
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    setopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv);
    let on: libc::c_int = 1;
    if setopt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &on) != 0 {
        return Err(format!("SO_TIMESTAMPNS: {}", errno()));
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = errno();
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        return Err(format!("bind {ip}:{port}: {e}"));
    }
    Ok(fd)
}

/// `Udp:` counters of /proc/net/snmp (of the calling process's network namespace).
fn udp_snmp() -> Vec<(String, i64)> {
    let text = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    if lines.len() < 2 {
        return Vec::new();
    }
    lines[0]
        .split_whitespace()
        .skip(1)
        .zip(lines[1].split_whitespace().skip(1))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Log-linear latency histogram: exact below 128 ns, then 128 sub-buckets per power of two
/// (< 0.8 % relative error).
struct Hist {
    counts: Vec<u64>,
    n: u64,
    sum: u128,
    min: u64,
    max: u64,
}

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

impl Hist {
    fn new() -> Hist {
        Hist {
            counts: vec![0; ((64 - SUB_BITS as usize) + 1) * SUB as usize],
            n: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS
        let shift = e - SUB_BITS;
        ((shift as u64 + 1) * SUB + ((v >> shift) - SUB)) as usize
    }
    /// Midpoint of a bucket.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let lo = (SUB + i % SUB) << shift;
        lo + ((1u64 << shift) >> 1)
    }
    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
    fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut acc = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= rank {
                return Self::value(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
    fn report(&self) -> Value {
        if self.n == 0 {
            return Value::Null;
        }
        let us = |v: u64| v as f64 / 1000.0;
        json!({
            "samples": self.n,
            "min_us": us(self.min),
            "mean_us": self.sum as f64 / self.n as f64 / 1000.0,
            "p50_us": us(self.quantile(0.50)),
            "p90_us": us(self.quantile(0.90)),
            "p99_us": us(self.quantile(0.99)),
            "p999_us": us(self.quantile(0.999)),
            "max_us": us(self.max),
        })
    }
}

#[derive(Default, Clone)]
struct Stream {
    rx: u64,
    dups: u64,
    reordered: u64,
    /// highest sequence number seen + 1 (0: none yet)
    top: u64,
    seen: Vec<u64>,
}

struct Counts {
    streams: Vec<Stream>,
    hist: Hist,
    packets: u64,
    bytes: u64,
    foreign: u64,
    stale: u64,
    run_id: Option<u32>,
    first_rx: u64,
    last_rx: u64,
    /// Largest interval between two consecutive packets of this run: the media gap of a relay
    /// restart, say (receive order; kernel timestamps).
    max_gap: u64,
    /// receive time of the latest datagram of any kind (idle detection)
    last_any: u64,
}

impl Counts {
    /// `rx`: receive time (CLOCK_MONOTONIC ns) of this packet.
    fn packet(&mut self, p: &[u8], rx: u64) {
        let now = rx;
        self.packets += 1;
        self.last_any = now;
        self.bytes += p.len() as u64;
        if p.len() < 40 || &p[12..16] != MAGIC {
            self.foreign += 1;
            return;
        }
        let run = u32::from_le_bytes(p[36..40].try_into().expect("4 bytes"));
        if self.run_id.is_some_and(|r| r != run) {
            self.stale += 1;
            return;
        }
        if self.first_rx == 0 {
            self.first_rx = now;
        } else {
            self.max_gap = self.max_gap.max(now.saturating_sub(self.last_rx));
        }
        self.last_rx = now;
        let sid = u32::from_le_bytes(p[16..20].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(p[20..28].try_into().expect("8 bytes"));
        let ts = u64::from_le_bytes(p[28..36].try_into().expect("8 bytes"));
        if sid >= MAX_STREAMS || seq >= MAX_SEQ {
            self.foreign += 1;
            return;
        }
        self.hist.record(now.saturating_sub(ts));
        if sid >= self.streams.len() {
            self.streams.resize(sid + 1, Stream::default());
        }
        let s = &mut self.streams[sid];
        s.rx += 1;
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= s.seen.len() {
            s.seen.resize((w + 1).next_power_of_two(), 0);
        }
        if s.seen[w] & bit != 0 {
            s.dups += 1;
            return;
        }
        s.seen[w] |= bit;
        if seq + 1 > s.top {
            s.top = seq + 1;
        } else {
            s.reordered += 1;
        }
    }
}

fn main() {
    let a = parse_args();
    let pin_err = pin(a.cpu);
    // SAFETY: installing an async-signal-safe handler (it only stores an atomic); no
    // SA_RESTART so blocking calls return EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }

    let mut fds = Vec::with_capacity(a.ports.len());
    for &p in &a.ports {
        match bind_udp(a.bind, p, a.rcvbuf) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                eprintln!("mg-rtpsink: {e}");
                exit(1);
            }
        }
    }
    let epfd = if fds.len() > 1 {
        // SAFETY: plain epoll calls on fds we own.
        unsafe {
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if ep < 0 {
                eprintln!("mg-rtpsink: epoll_create1: {}", errno());
                exit(1);
            }
            for (i, &fd) in fds.iter().enumerate() {
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: i as u64,
                };
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev);
            }
            Some(ep)
        }
    } else {
        None
    };

    let batch = a.batch;
    let mut bufs = vec![[0u8; BUF_LEN]; batch];
    let mut ctrl = vec![[0u64; 8]; batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF_LEN,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; all-zero is a valid value.
    let mut hdrs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for ((h, iov), cb) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(ctrl.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = cb.as_mut_ptr().cast();
    }
    let ctrl_len = std::mem::size_of::<[u64; 8]>();

    let snmp0 = udp_snmp();
    if let Some(f) = &a.ready_file {
        if let Err(e) = fs::write(f, "ready\n") {
            eprintln!("mg-rtpsink: cannot write ready file {f}: {e}");
            exit(1);
        }
    }
    let mut c = Counts {
        streams: Vec::with_capacity(a.streams),
        hist: Hist::new(),
        packets: 0,
        bytes: 0,
        foreign: 0,
        stale: 0,
        run_id: a.run_id,
        first_rx: 0,
        last_rx: 0,
        max_gap: 0,
        last_any: 0,
    };
    let offset = realtime_offset();
    let t0 = monotonic_ns();
    let deadline = t0 + (a.seconds * 1e9) as u64;
    let (mut calls, mut wakeups, mut no_kernel_ts) = (0u64, 0u64, 0u64);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut recv = |fd: i32, flags: i32, c: &mut Counts, calls: &mut u64, no_ts: &mut u64| {
        for h in hdrs.iter_mut() {
            h.msg_hdr.msg_controllen = ctrl_len as _;
        }
        // SAFETY: hdrs[..batch] point at live buffers owned by this frame.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                batch as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        *calls += 1;
        if n <= 0 {
            return 0;
        }
        let now = monotonic_ns();
        for i in 0..n as usize {
            let len = hdrs[i].msg_len as usize;
            let rx = kernel_rx_ns(&hdrs[i].msg_hdr, offset).unwrap_or_else(|| {
                *no_ts += 1;
                now
            });
            c.packet(&bufs[i][..len.min(BUF_LEN)], rx);
        }
        n as usize
    };
    while !STOP.load(Ordering::Relaxed) {
        let now = monotonic_ns();
        if now >= deadline
            || (a.idle_ms > 0
                && c.last_any > 0
                && now.saturating_sub(c.last_any) > a.idle_ms * 1_000_000)
        {
            break;
        }
        match epfd {
            None if a.poll_us == 0 => {
                recv(
                    fds[0],
                    libc::MSG_WAITFORONE,
                    &mut c,
                    &mut calls,
                    &mut no_kernel_ts,
                );
            }
            None => {
                while recv(
                    fds[0],
                    libc::MSG_DONTWAIT,
                    &mut c,
                    &mut calls,
                    &mut no_kernel_ts,
                ) == batch
                {}
                wakeups += 1;
                sleep_us(a.poll_us);
            }
            Some(ep) => {
                // SAFETY: events has room for the count we pass.
                let n =
                    unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
                wakeups += 1;
                for ev in events.iter().take(n.max(0) as usize) {
                    let fd = fds[ev.u64 as usize];
                    while recv(
                        fd,
                        libc::MSG_DONTWAIT,
                        &mut c,
                        &mut calls,
                        &mut no_kernel_ts,
                    ) == batch
                    {}
                }
                if a.poll_us > 0 {
                    sleep_us(a.poll_us);
                }
            }
        }
    }
    let t1 = monotonic_ns();
    let snmp1 = udp_snmp();
    let udp: serde_json::Map<String, Value> = snmp1
        .iter()
        .filter_map(|(k, v1)| {
            let v0 = snmp0.iter().find(|(k0, _)| k0 == k)?.1;
            Some((k.clone(), json!(v1 - v0)))
        })
        .collect();

    let expected_streams = a.streams.max(c.streams.len());
    let mut unique = 0u64;
    let (mut dups, mut gaps, mut reordered) = (0u64, 0u64, 0u64);
    let (mut min_rx, mut max_rx) = (u64::MAX, 0u64);
    let mut silent = 0usize;
    for i in 0..expected_streams {
        let s = c.streams.get(i).cloned().unwrap_or_default();
        let u = s.rx - s.dups;
        unique += u;
        dups += s.dups;
        reordered += s.reordered;
        gaps += s.top - u;
        min_rx = min_rx.min(u);
        max_rx = max_rx.max(u);
        if u == 0 {
            silent += 1;
        }
    }
    let active_s = (c.last_rx.saturating_sub(c.first_rx)) as f64 / 1e9;
    let out = json!({
        "packets": c.packets,
        "bytes": c.bytes,
        "unique": unique,
        "duplicates": dups,
        "gaps": gaps,
        "reordered": reordered,
        "foreign": c.foreign,
        "stale": c.stale,
        "streams_seen": c.streams.iter().filter(|s| s.rx > 0).count(),
        "streams_silent": silent,
        "per_stream_unique_min": if expected_streams > 0 { json!(min_rx) } else { Value::Null },
        "per_stream_unique_max": max_rx,
        "rx_active_s": active_s,
        "rx_pps": if active_s > 0.0 { c.packets as f64 / active_s } else { 0.0 },
        "first_rx_ns": c.first_rx,
        "last_rx_ns": c.last_rx,
        "max_gap_ns": c.max_gap,
        "run_s": (t1 - t0) as f64 / 1e9,
        "recvmmsg_calls": calls,
        "wakeups": wakeups,
        "no_kernel_timestamp": no_kernel_ts,
        "latency": c.hist.report(),
        "udp": udp,
        "checksum_errors": udp.get("InCsumErrors").cloned().unwrap_or(Value::Null),
        "pin_error": pin_err,
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
}
