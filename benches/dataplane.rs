//! Per-packet costs of the user-space fast path: header rewrite with incremental checksums, the
//! latching decision, the stream-table lookup, the RTP quality step (RFC 3550 A.1 + A.8), and
//! one whole RX→TX batch of the AF_XDP worker's relay over RTP frames in memory (no NIC) — with
//! an allocation counter proving that none of them allocates after warm-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mediagate::dataplane::afxdp::relay::{Desc, Egress, Relay, Sink, WorkerCmd};
use mediagate::media::{Latch, RtpHeader, RtpQuality, StreamId, StreamStats};
use mediagate::wire::UdpFrame;

/// Counts heap allocations so the benchmark can show the hot path makes none.
struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to the system allocator; only adds a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A 172-byte RTP-sized Ethernet/IPv4/UDP frame from 10.99.1.2:6000 to 10.99.1.1:30000.
fn frame() -> Vec<u8> {
    frame_to(30000)
}

/// The same frame to mediagate's port `port`, from the caller's port 6000 + (port − 30000).
fn frame_to(port: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 172];
    f[12] = 0x08;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 8 + 172) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 99, 1, 2]);
    ip[16..20].copy_from_slice(&[10, 99, 1, 1]);
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&(6000 + (port - 30000)).to_be_bytes());
    udp[2..4].copy_from_slice(&port.to_be_bytes());
    udp[4..6].copy_from_slice(&180u16.to_be_bytes());
    udp[6..8].copy_from_slice(&[0x12, 0x34]);
    // RTP: version 2, PCMA, an SSRC; sequence number and timestamp are set per batch.
    f[42] = 0x80;
    f[43] = 8;
    f[50..54].copy_from_slice(&port.to_be_bytes().repeat(2));
    f
}

fn per_packet(c: &mut Criterion) {
    let mut buf = frame();
    let (src, dst): (SocketAddrV4, SocketAddrV4) = (
        "10.99.2.1:30002".parse().unwrap(),
        "10.99.2.2:7000".parse().unwrap(),
    );
    let latch = Latch::new(
        Some("10.99.1.2:6000".parse().unwrap()),
        "10.99.1.2".parse().unwrap(),
    );
    let from: SocketAddr = "10.99.1.2:6000".parse().unwrap();
    let streams: HashMap<SocketAddrV4, u64> = (0..10_000u32)
        .map(|i| {
            (
                SocketAddrV4::new([10, 99, 1, 1].into(), 30000 + (i % 30000) as u16),
                u64::from(i),
            )
        })
        .collect();
    let key: SocketAddrV4 = "10.99.1.1:34567".parse().unwrap();

    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..100_000 {
        let mut view = UdpFrame::parse(&mut buf).unwrap();
        black_box(streams.get(&view.destination()));
        black_box(latch.judge(Some(from), from));
        view.rewrite(src, dst, [1; 6], [2; 6]);
        view.rewrite(dst, src, [2; 6], [1; 6]);
    }
    let allocations = ALLOCATIONS.load(Relaxed) - before;
    println!("allocations in 100 000 packets of parse + lookup + latch + rewrite: {allocations}");
    assert_eq!(allocations, 0, "the per-packet path allocated");

    c.bench_function("wire_parse_and_rewrite", |b| {
        b.iter(|| {
            let mut view = UdpFrame::parse(black_box(&mut buf)).unwrap();
            view.rewrite(src, dst, [1; 6], [2; 6]);
        })
    });
    c.bench_function("latch_judge", |b| {
        b.iter(|| latch.judge(black_box(Some(from)), black_box(from)))
    });
    c.bench_function("stream_lookup_10k", |b| {
        b.iter(|| streams.get(black_box(&key)))
    });
    // RFC 3550 A.1 + A.8 for one in-order packet 20 ms after the previous one (the step every
    // tier adds per received RTP packet).
    let mut quality = RtpQuality::default();
    let mut seq: u16 = 0;
    c.bench_function("rtp_quality_record", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let header = RtpHeader {
                seq,
                timestamp: u32::from(seq) * 160,
                ssrc: 1,
            };
            quality.record(black_box(header), u64::from(seq) * 20_000_000, 8000);
            black_box(quality.counts())
        })
    });
}

/// The benchmark's side of the rings: transmitted descriptors and recycled frames in vectors
/// sized once.
struct MemorySink {
    sent: Vec<Desc>,
    recycled: Vec<u64>,
}

impl Sink for MemorySink {
    fn transmit(&mut self, _port: usize, desc: Desc) -> bool {
        self.sent.push(desc);
        true
    }
    fn slow_path(&mut self, _ip_packet: &[u8], _dest: SocketAddrV4) -> bool {
        true
    }
    fn recycle(&mut self, addr: u64) {
        self.recycled.push(addr);
    }
}

const FRAME: usize = 2048;
const BATCH: usize = 64;
/// Stream pairs in the table: the batch's 64 packets hit 64 different calls among them.
const PAIRS: u16 = 1000;

/// A relay loaded like a busy worker: `PAIRS` calls (leg A on 10.99.1.1:30000+2i facing the
/// caller, leg B on 10.99.2.1:40000+2i facing the callee), every next hop known.
fn loaded_relay() -> Relay {
    let egress = vec![
        Egress {
            mac: [2, 0, 0, 0, 1, 1],
            addresses: vec![[10, 99, 1, 1].into()],
        },
        Egress {
            mac: [2, 0, 0, 0, 2, 1],
            addresses: vec![[10, 99, 2, 1].into()],
        },
    ];
    let mut relay = Relay::new(4 * usize::from(PAIRS), egress, 1500);
    let epoch = Instant::now();
    for i in 0..PAIRS {
        let (a, b) = (StreamId::from(i) * 2, StreamId::from(i) * 2 + 1);
        let caller = SocketAddr::from(([10, 99, 1, 2], 6000 + 2 * i));
        let callee = SocketAddr::from(([10, 99, 2, 2], 7000 + 2 * i));
        for (id, peer, local, remote) in [
            (
                a,
                b,
                SocketAddrV4::new([10, 99, 1, 1].into(), 30000 + 2 * i),
                caller,
            ),
            (
                b,
                a,
                SocketAddrV4::new([10, 99, 2, 1].into(), 40000 + 2 * i),
                callee,
            ),
        ] {
            relay.apply(WorkerCmd::Add {
                id,
                peer,
                local,
                latch: Latch::new(Some(remote), remote.ip()),
                shared: Arc::new(AtomicU64::new(0)),
                stats: Arc::new(StreamStats::new(epoch, Some(remote))),
                rtcp: false,
            });
        }
    }
    for (ip, mac) in [
        ([10, 99, 1, 2], [2, 0, 0, 0, 1, 2]),
        ([10, 99, 2, 2], [2, 0, 0, 0, 2, 2]),
    ] {
        relay.apply(WorkerCmd::Neighbour { ip: ip.into(), mac });
    }
    relay
}

/// One RX→TX batch exactly as a worker runs it: 64 frames of 64 different calls through
/// `Relay::relay_batch` into the TX side (RTP quality statistics included). Rewriting is in
/// place, so each iteration first puts back the 42 header bytes of every frame and writes the
/// next RTP sequence number and timestamp (included in the figure, ~1 ns a frame).
fn rx_to_tx_batch(c: &mut Criterion) {
    let mut relay = loaded_relay();
    let stride = PAIRS / BATCH as u16;
    let originals: Vec<Vec<u8>> = (0..BATCH as u16)
        .map(|k| frame_to(30000 + 2 * stride * k))
        .collect();
    let mut memory = vec![0u8; BATCH * FRAME];
    let descs: Vec<Desc> = (0..BATCH)
        .map(|k| Desc {
            addr: (k * FRAME) as u64,
            len: originals[k].len() as u32,
            options: 0,
        })
        .collect();
    let mut sink = MemorySink {
        sent: Vec::with_capacity(BATCH),
        recycled: Vec::with_capacity(BATCH),
    };
    for (k, f) in originals.iter().enumerate() {
        memory[k * FRAME..k * FRAME + f.len()].copy_from_slice(f);
    }
    let mut seq: u16 = 0;
    let mut run_batch = |relay: &mut Relay, memory: &mut Vec<u8>, sink: &mut MemorySink| {
        seq = seq.wrapping_add(1);
        let ts = u32::from(seq) * 160;
        for (k, f) in originals.iter().enumerate() {
            let frame = &mut memory[k * FRAME..k * FRAME + 50];
            frame[..42].copy_from_slice(&f[..42]);
            frame[44..46].copy_from_slice(&seq.to_be_bytes());
            frame[46..50].copy_from_slice(&ts.to_be_bytes());
        }
        sink.sent.clear();
        sink.recycled.clear();
        relay.relay_batch(memory, &descs, sink, Instant::now())
    };
    // Warm-up latches every stream; then nothing may allocate and every frame must be sent.
    let first = run_batch(&mut relay, &mut memory, &mut sink);
    assert_eq!(first.tx, BATCH as u64, "warm-up batch: {first:?}");
    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..1000 {
        let counts = run_batch(&mut relay, &mut memory, &mut sink);
        assert_eq!(counts.tx, BATCH as u64);
    }
    let allocations = ALLOCATIONS.load(Relaxed) - before;
    println!("allocations in 1 000 RX→TX batches of 64 frames: {allocations}");
    assert_eq!(allocations, 0, "the batch path allocated");
    let out = &memory[..originals[0].len()];
    assert_eq!(
        UdpFrame::parse(&mut out.to_vec()).map(|v| (v.source(), v.destination())),
        Some((
            "10.99.2.1:40000".parse().unwrap(),
            "10.99.2.2:7000".parse().unwrap()
        )),
        "frames leave from leg B toward the callee"
    );

    let mut group = c.benchmark_group("afxdp_relay");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("rx_to_tx_batch_64_of_1000_calls", |b| {
        b.iter(|| run_batch(&mut relay, &mut memory, &mut sink))
    });
    group.finish();
}

criterion_group!(benches, per_packet, rx_to_tx_batch);
criterion_main!(benches);
