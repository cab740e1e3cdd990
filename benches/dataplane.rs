//! Per-packet costs of the user-space fast path: header rewrite with incremental checksums, the
//! latching decision, and the stream-table lookup — with an allocation counter proving that none
//! of them allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mediagate::media::Latch;
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

/// A 172-byte RTP-sized Ethernet/IPv4/UDP frame.
fn frame() -> Vec<u8> {
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
    udp[0..2].copy_from_slice(&6000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&30000u16.to_be_bytes());
    udp[4..6].copy_from_slice(&180u16.to_be_bytes());
    udp[6..8].copy_from_slice(&[0x12, 0x34]);
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
}

criterion_group!(benches, per_packet);
criterion_main!(benches);
