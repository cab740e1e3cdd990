//! mg-rtpgen: RTP-like UDP load generator for `scripts/loadtest`.
//!
//! Sends 172-byte RTP packets (12-byte RTP header + 160-byte payload) for N streams, stream `i`
//! from `SRC:(src-port-base + i)` to destination `i % len(destinations)`. The payload carries a
//! magic, the stream index, a per-stream sequence number, the send time (CLOCK_MONOTONIC, ns)
//! and a run id (`--run-id`, so that a sink can tell this run's packets from stragglers of an
//! earlier one still queued in a relay) for `mg-rtpsink`. Payload layout after the RTP header:
//! magic "MGLT" | stream u32 LE | seq u64 LE | send time u64 LE | run id u32 LE | filler.
//!
//! To keep the per-packet cost low (the generator shares one core with the sink on the 2-core
//! testbed), every stream goes out of ONE raw IPv4 socket (`IPPROTO_UDP`; the kernel adds the IP
//! header, we write the UDP header with a full checksum), so a single `sendmmsg` carries packets
//! of many streams. Packets go round-robin over the streams, so each stream sees `--pps` evenly
//! spaced packets per second (staggered phases); `--pps 0` sends as fast as possible.
//!
//! Known impairments for quality tests: `--skip-every N` leaves out every Nth sequence number
//! of each stream (seq N−1, 2N−1, …: a loss of exactly 1/N that the relay must report), and
//! `--ts-jitter-ms J` stamps every odd packet J ms late in RTP time (8 kHz clock), so a
//! receiver's RFC 3550 jitter converges to J ms although the packets leave evenly.
//!
//! The run stops by itself after `--packets` packets or `--seconds` seconds, whichever comes
//! first, and prints one JSON object: packets sent, achieved rate and, with `--cpu-stat`, the
//! whole-box idle time per CPU and the CPU time of `--watch-pid` processes over the sending
//! window (exactly the window, measured here rather than by the caller).
//!
//! ```text
//! mg-rtpgen --src 10.99.1.2 --src-port-base 20000 --dst-file dsts.txt --streams 1000 \
//!           --pps 50 --seconds 5 --packets 1000000 --cpu 0 --cpu-stat --watch-pid 1234
//! ```

use mediagate::clock::monotonic_ns;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::exit;

use serde_json::{json, Value};

const RTP_LEN: usize = 172;
const UDP_HDR: usize = 8;
const DGRAM_LEN: usize = UDP_HDR + RTP_LEN;
/// Bytes of the datagram (from the UDP header on) that change per packet: UDP header + RTP
/// header + magic, stream, seq, timestamp.
const VAR_END: usize = UDP_HDR + 36;
const MAGIC: &[u8; 4] = b"MGLT";
const MAX_BATCH: usize = 1024;

struct Args {
    src: Ipv4Addr,
    src_port_base: u16,
    dsts: Vec<SocketAddrV4>,
    streams: usize,
    pps: f64,
    seconds: f64,
    packets: u64,
    batch: usize,
    cpu: i32,
    cpu_stat: bool,
    watch: Vec<u32>,
    sndbuf: i32,
    run_id: u32,
    skip_every: u64,
    ts_jitter_units: u32,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "mg-rtpgen: {msg}\n\
         usage: mg-rtpgen --src IP --dst IP:PORT[,IP:PORT...] | --dst-file FILE\n\
         \x20         [--streams N (default: number of destinations)] [--src-port-base P (20000)]\n\
         \x20         [--pps R per stream, 0 = unpaced (50)] [--seconds S (5)] [--packets N (10000000)]\n\
         \x20         [--batch B (64)] [--cpu C (0; -1 = no pinning)] [--cpu-stat] [--watch-pid PID]...\n\
         \x20         [--sndbuf BYTES (4194304)] [--run-id N (0)]"
    );
    exit(2)
}

fn parse_dst(s: &str) -> SocketAddrV4 {
    s.trim()
        .parse()
        .unwrap_or_else(|_| usage(&format!("bad destination '{s}' (want IPv4:PORT)")))
}

fn parse_args() -> Args {
    let mut a = Args {
        src: Ipv4Addr::UNSPECIFIED,
        src_port_base: 20000,
        dsts: Vec::new(),
        streams: 0,
        pps: 50.0,
        seconds: 5.0,
        packets: 10_000_000,
        batch: 64,
        cpu: 0,
        cpu_stat: false,
        watch: Vec::new(),
        sndbuf: 4 << 20,
        run_id: 0,
        skip_every: 0,
        ts_jitter_units: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--cpu-stat" {
            a.cpu_stat = true;
            continue;
        }
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
            "--src" => {
                a.src = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --src '{v}'")))
            }
            "--src-port-base" => a.src_port_base = num(&v) as u16,
            "--dst" => a.dsts.extend(v.split(',').map(parse_dst)),
            "--dst-file" => {
                let text = fs::read_to_string(&v)
                    .unwrap_or_else(|e| usage(&format!("cannot read {v}: {e}")));
                a.dsts.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(parse_dst),
                );
            }
            "--streams" => a.streams = num(&v) as usize,
            "--pps" => a.pps = num(&v),
            "--seconds" => a.seconds = num(&v),
            "--packets" => a.packets = num(&v) as u64,
            "--batch" => a.batch = (num(&v) as usize).clamp(1, MAX_BATCH),
            "--cpu" => a.cpu = num(&v) as i32,
            "--watch-pid" => a.watch.push(num(&v) as u32),
            "--sndbuf" => a.sndbuf = num(&v) as i32,
            "--run-id" => a.run_id = num(&v) as u32,
            "--skip-every" => a.skip_every = num(&v) as u64,
            // RTP timestamps count 8000 per second (PCMA): 8 units per millisecond.
            "--ts-jitter-ms" => a.ts_jitter_units = (num(&v) * 8.0) as u32,
            _ => usage(&format!("unknown option {k}")),
        }
    }
    if a.src.is_unspecified() {
        usage("--src is required (the source address written into the pseudo-header)");
    }
    if a.dsts.is_empty() {
        usage("no destinations");
    }
    if a.streams == 0 {
        a.streams = a.dsts.len();
    }
    if a.src_port_base as usize + a.streams > 65536 {
        usage("--src-port-base + --streams exceeds 65535");
    }
    if a.seconds.is_nan() || a.seconds <= 0.0 {
        usage("--seconds must be > 0");
    }
    a
}

fn sleep_until(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: valid timespec; a null remainder is allowed with TIMER_ABSTIME. EINTR just wakes
    // us early, which the caller's loop tolerates.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

fn pin(cpu: i32) -> Option<String> {
    if cpu < 0 {
        return None;
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for cpu < CPU_SETSIZE, and
    // sched_setaffinity(0) applies to this (single-threaded) process.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    (rc != 0).then(|| format!("sched_setaffinity({cpu}): {}", errno_str()))
}

fn errno_str() -> String {
    std::io::Error::last_os_error().to_string()
}

/// One's-complement sum of 16-bit big-endian words (odd tail padded with zero), not folded.
fn sum16(bytes: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        s += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        s += (*last as u64) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Per-stream constant part: the datagram template and the checksum sum of everything that
/// does not change per packet (pseudo-header and the constant payload tail).
struct Stream {
    dst: libc::sockaddr_in,
    template: [u8; DGRAM_LEN],
    base_sum: u64,
}

fn build_streams(a: &Args) -> Vec<Stream> {
    (0..a.streams)
        .map(|i| {
            let d = a.dsts[i % a.dsts.len()];
            let sport = a.src_port_base + i as u16;
            let mut t = [0u8; DGRAM_LEN];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&d.port().to_be_bytes());
            t[4..6].copy_from_slice(&(DGRAM_LEN as u16).to_be_bytes());
            // RTP: V=2, PT=8 (PCMA), SSRC
            t[UDP_HDR] = 0x80;
            t[UDP_HDR + 1] = 8;
            let ssrc = 0x4d47_0000u32.wrapping_add(i as u32);
            t[UDP_HDR + 8..UDP_HDR + 12].copy_from_slice(&ssrc.to_be_bytes());
            t[UDP_HDR + 12..UDP_HDR + 16].copy_from_slice(MAGIC);
            t[UDP_HDR + 16..UDP_HDR + 20].copy_from_slice(&(i as u32).to_le_bytes());
            t[VAR_END..VAR_END + 4].copy_from_slice(&a.run_id.to_le_bytes());
            for (k, b) in t[VAR_END + 4..].iter_mut().enumerate() {
                *b = 0xd5 ^ (k as u8); // PCMA-ish filler, constant per packet
            }
            let mut pseudo = [0u8; 12];
            pseudo[0..4].copy_from_slice(&a.src.octets());
            pseudo[4..8].copy_from_slice(&d.ip().octets());
            pseudo[9] = libc::IPPROTO_UDP as u8;
            pseudo[10..12].copy_from_slice(&(DGRAM_LEN as u16).to_be_bytes());
            let base_sum = sum16(&pseudo) + sum16(&t[VAR_END..]);
            let dst = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0, // raw sockets: the port field is not used
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(d.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            Stream {
                dst,
                template: t,
                base_sum,
            }
        })
        .collect()
}

/// Writes packet `seq` of stream `s`; odd packets' RTP timestamps are `ts_late` units late.
#[inline]
fn fill(pkt: &mut [u8; DGRAM_LEN], s: &Stream, seq: u64, now: u64, ts_late: u32) {
    pkt.copy_from_slice(&s.template);
    let h = UDP_HDR;
    let late = if seq % 2 == 1 { ts_late } else { 0 };
    let ts = (seq as u32).wrapping_mul(160).wrapping_add(late);
    pkt[h + 2..h + 4].copy_from_slice(&(seq as u16).to_be_bytes());
    pkt[h + 4..h + 8].copy_from_slice(&ts.to_be_bytes());
    pkt[h + 20..h + 28].copy_from_slice(&seq.to_le_bytes());
    pkt[h + 28..h + 36].copy_from_slice(&now.to_le_bytes());
    let c = !fold(s.base_sum + sum16(&pkt[..VAR_END]));
    let c = if c == 0 { 0xffff } else { c };
    pkt[6..8].copy_from_slice(&c.to_be_bytes());
}

/// Whole-box and per-process CPU counters at one instant.
struct CpuSnap {
    mono_ns: u64,
    /// (cpu name, idle+iowait in USER_HZ ticks) per CPU, "cpu" (all) first.
    idle: Vec<(String, u64)>,
    /// per watched pid: (sum of task schedstat run ns, utime+stime ticks from /proc/PID/stat)
    procs: Vec<Option<(u64, u64)>>,
}

fn read_idle() -> Vec<(String, u64)> {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_string();
            let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal ...
            Some((name, v.get(3)? + v.get(4).copied().unwrap_or(0)))
        })
        .collect()
}

fn read_proc(pid: u32) -> Option<(u64, u64)> {
    let mut run_ns = 0u64;
    for e in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        if let Ok(s) = fs::read_to_string(e.path().join("schedstat")) {
            run_ns += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the ")" of comm: state is field 3; utime 14, stime 15 (1-based)
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((run_ns, ticks))
}

fn snap(watch: &[u32]) -> CpuSnap {
    CpuSnap {
        mono_ns: monotonic_ns(),
        idle: read_idle(),
        procs: watch.iter().map(|&p| read_proc(p)).collect(),
    }
}

fn cpu_report(a: &CpuSnap, b: &CpuSnap, watch: &[u32]) -> Value {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let wall_s = (b.mono_ns - a.mono_ns) as f64 / 1e9;
    let mut per_cpu = serde_json::Map::new();
    let mut busy_total = Value::Null;
    for (name, idle_b) in &b.idle {
        let Some((_, idle_a)) = a.idle.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let idle_s = idle_b.saturating_sub(*idle_a) as f64 / hz;
        if name == "cpu" {
            let ncpu = (b.idle.len() - 1).max(1) as f64;
            busy_total = json!(ncpu - idle_s / wall_s);
        } else {
            per_cpu.insert(name.clone(), json!((1.0 - idle_s / wall_s).clamp(0.0, 1.0)));
        }
    }
    let procs: Vec<Value> = watch
        .iter()
        .zip(a.procs.iter().zip(&b.procs))
        .map(|(pid, (pa, pb))| match (pa, pb) {
            (Some((ra, ta)), Some((rb, tb))) => json!({
                "pid": pid,
                "cpu_s": (rb - ra) as f64 / 1e9,
                "cpu_ticks_s": (tb - ta) as f64 / hz,
                "cores": (rb - ra) as f64 / 1e9 / wall_s,
            }),
            _ => json!({"pid": pid, "error": "process not readable"}),
        })
        .collect();
    json!({
        "wall_s": wall_s,
        "busy_cores": busy_total,
        "busy_per_cpu": per_cpu,
        "procs": procs,
    })
}

fn main() {
    let a = parse_args();
    let pin_err = pin(a.cpu);
    // SAFETY: prctl(PR_SET_TIMERSLACK) only affects this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64, 0, 0, 0) };

    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    if fd < 0 {
        eprintln!(
            "mg-rtpgen: raw socket: {} (needs root / CAP_NET_RAW)",
            errno_str()
        );
        exit(1);
    }
    // SAFETY: valid fd and option value pointers of the right size.
    unsafe {
        let v: libc::c_int = a.sndbuf;
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&v as *const libc::c_int).cast(),
            sz,
        ) != 0
        {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&v as *const libc::c_int).cast(),
                sz,
            );
        }
    }

    let streams = build_streams(&a);
    let n_streams = streams.len() as u64;
    let batch = a.batch;
    let mut bufs = vec![[0u8; DGRAM_LEN]; batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: DGRAM_LEN,
        })
        .collect();
    let mut names = vec![streams[0].dst; batch];
    // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
    let mut hdrs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for i in 0..batch {
        let h = &mut hdrs[i].msg_hdr;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }

    let paced = a.pps > 0.0;
    let total_rate = a.pps * n_streams as f64; // packets/s over all streams
    let ns_per_pkt = if paced { 1e9 / total_rate } else { 0.0 };
    // Wake up for at most ~1 ms of packets (and at least one) per batch when paced.
    let wake_pkts = if paced {
        ((total_rate / 1000.0) as u64).clamp(1, batch as u64)
    } else {
        0
    };

    let before = a.cpu_stat.then(|| snap(&a.watch));
    let t0 = monotonic_ns();
    let deadline = t0 + (a.seconds * 1e9) as u64;
    let (mut sent, mut calls, mut errors, mut sleeps) = (0u64, 0u64, 0u64, 0u64);
    let mut skipped = 0u64;
    let mut last_err = String::new();
    let mut next = 0u64; // index of the next packet (round-robin over streams)
    loop {
        let now = monotonic_ns();
        if now >= deadline || next >= a.packets {
            break;
        }
        let due = if paced {
            let target = (((now - t0) as f64 / ns_per_pkt) as u64 + 1).min(a.packets);
            if target <= next {
                sleeps += 1;
                // Packet k is due at t0 + k·interval: wake when the last of the next
                // `wake_pkts` is due (waking one interval later sent packets in pairs).
                let wake = t0 + ((next + wake_pkts - 1) as f64 * ns_per_pkt) as u64;
                sleep_until(wake.min(deadline));
                continue;
            }
            target - next
        } else {
            a.packets - next
        };
        let take = due.min(batch as u64);
        let mut n = 0;
        for idx in next..next + take {
            let seq = idx / n_streams;
            if a.skip_every > 0 && seq % a.skip_every == a.skip_every - 1 {
                skipped += 1;
                continue;
            }
            let s = &streams[(idx % n_streams) as usize];
            fill(&mut bufs[n], s, seq, now, a.ts_jitter_units);
            names[n] = s.dst;
            n += 1;
        }
        next += take;
        if n == 0 {
            continue;
        }
        // SAFETY: hdrs[..n] point at live buffers, iovecs and names owned by this frame.
        let rc = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
        calls += 1;
        if rc < 0 {
            errors += 1;
            last_err = errno_str();
            // Skip the batch rather than spinning on a persistent error.
            continue;
        }
        sent += rc as u64;
    }
    let t1 = monotonic_ns();
    let after = a.cpu_stat.then(|| snap(&a.watch));
    let secs = (t1 - t0) as f64 / 1e9;
    let achieved = sent as f64 / secs;
    let offered = if paced { Some(total_rate) } else { None };
    let out = json!({
        "streams": n_streams,
        "pps_per_stream": if paced { json!(a.pps) } else { Value::Null },
        "offered_pps": offered,
        "sent": sent,
        "skipped": skipped,
        "attempted": next,
        "seconds": secs,
        "achieved_pps": achieved,
        "reached_offered": offered.map(|o| achieved >= 0.97 * o),
        "sendmmsg_calls": calls,
        "avg_batch": if calls > 0 { sent as f64 / calls as f64 } else { 0.0 },
        "sleeps": sleeps,
        "send_errors": errors,
        "last_error": if last_err.is_empty() { Value::Null } else { json!(last_err) },
        "pin_error": pin_err,
        "run_id": a.run_id,
        "t0_ns": t0,
        "t1_ns": t1,
        "cpu": match (before, after) {
            (Some(b), Some(af)) => cpu_report(&b, &af, &a.watch),
            _ => Value::Null,
        },
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
}
