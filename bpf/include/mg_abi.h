/* ABI shared between the XDP program and mediagate (mirrored by #[repr(C)] types in
 * src/dataplane/kernel/abi.rs, with size and offset assertions there). Addresses and the SDP
 * port are in network byte order, exactly as they appear in packet headers; map indices and
 * peer ports are host order. */
#ifndef MG_ABI_H
#define MG_ABI_H

#include <linux/types.h>
#include <linux/bpf.h>

/* Streams are indexed by their local UDP port (host order): mediagate allocates every media
 * port from one pool, so a port names one stream whatever the local address. An array index is
 * one bounds-checked add in the program, where a hash lookup costs a call, a hash and a bucket
 * walk over cold memory for every packet. */
#define MG_MAX_STREAMS 65536

/* Address families of a stream (mg_config.family). */
#define MG_FAMILY_NONE 0 /* no stream on this port */
#define MG_FAMILY_V4 4
#define MG_FAMILY_V6 6

/* Flags of a stream. */
#define MG_F_KERNEL 1 /* forward in the kernel */
#define MG_F_XSK 2    /* redirect to the AF_XDP socket of the ingress device and queue */
#define MG_F_ASYMMETRIC 4 /* never learn: accept any source, send to the SDP address */
#define MG_F_HANDOVER 8   /* after the first latch, follow any new source */
/* Neither MG_F_KERNEL nor MG_F_XSK: pass to the kernel stack (the socket tier). */

/* XSKMAP keys: device slot (from mg_ifslots) * MG_MAX_QUEUES + rx queue. */
#define MG_MAX_QUEUES 64
#define MG_MAX_DEVICES 16

/* An IPv4 or IPv6 address: IPv4 in w[3] with w[0..2] zero, IPv6 in all four words. */
struct mg_addr {
	__u32 w[4];
};

/* What the control plane says about a stream. Written only by user space. */
struct mg_config {
	struct mg_addr local;     /* this stream's own address (its port is the map index) */
	struct mg_addr sdp;       /* remote address from SDP; sdp_port 0 = not known yet */
	struct mg_addr signalling; /* source address of the leg's SIP: may latch too */
	__u16 sdp_port;
	__u16 flags;
	__u16 peer_port;          /* the paired stream: source of the packets this one forwards */
	__u8 family;              /* MG_FAMILY_*; both streams of a kernel-tier pair share it */
	__u8 pad;
	__u32 generation;         /* bumped on renegotiation: the program re-opens learning */
	__u32 clock_rate;         /* RTP clock of the stream's payload (from SDP); 0 = unknown:
	                           * loss is tracked, jitter is not */
};

/* RTP quality of the packets a stream accepts: RFC 3550 A.1 sequence tracking and A.8 jitter
 * in integer form, the layout of media::quality::RtpQuality (user space runs the same steps;
 * see that module for the meaning of each field). */
struct mg_quality {
	__u64 last_arrival_ns;    /* bpf_ktime_get_ns() of the previous RTP packet */
	__u32 ssrc;
	__u32 packets;            /* RTP packets seen, probation included; 0 = none yet */
	__u16 max_seq;
	__u16 probation;
	__u32 cycles;             /* sequence wraps * 65536 */
	__u32 base_seq;
	__u32 bad_seq;
	__u32 received;
	__u32 jitter;             /* timestamp units * 16 */
	__u32 last_ts;
	__u32 prior_expected;     /* totals of earlier sources (SSRC changes, restarts) */
	__u32 prior_lost;
	__u32 flags;              /* MG_Q_HAVE_PREVIOUS */
};

#define MG_Q_HAVE_PREVIOUS 1

/* What the program learns and counts about a stream. Written by the program, zeroed by user
 * space when the stream is added. Packets forwarded out of a stream's peer are this stream's
 * rx, so the program counts only rx (user space derives the peer's tx). */
struct mg_state {
	struct bpf_spin_lock lock; /* IPv6 only: guards latched and latched6 */
	__u32 generation;          /* the mg_config generation this state belongs to */
	__u64 latched;             /* 0 = learning; IPv4: MG_LATCHED | ip << 16 | port;
	                            * IPv6: MG_LATCHED | port, with the address in latched6 */
	struct mg_addr latched6;
	__u64 rx_packets;          /* accepted and forwarded */
	__u64 rx_bytes;            /* UDP payload, as a socket counts it */
	__u64 drops;
	__u64 last_seen_ns;        /* bpf_ktime_get_coarse_ns() of the last forwarded packet:
	                            * tick resolution is plenty for media timeouts, and reading it
	                            * costs a load instead of a clock read per packet */
	struct mg_quality quality; /* updated without atomics: a flow hashes to one rx queue,
	                            * so one CPU writes it at a time in practice */
};

#define MG_LATCHED (1ULL << 48)

/* Global settings, one entry. */
struct mg_settings {
	__u16 port_first; /* host byte order: media port range */
	__u16 port_last;
	__u16 max_payload; /* largest UDP payload a kernel-tier stream relays (media.max_packet_bytes) */
	__u16 pad;
};

/* Per-CPU counters by outcome (index into the per-CPU array). */
enum mg_counter {
	MG_C_FORWARDED = 0,
	MG_C_PASS_NOT_MEDIA,  /* not UDP to the media range: left to the kernel */
	MG_C_PASS_USERSPACE,  /* a stream handled by a user-space tier */
	MG_C_PASS_NO_NEIGH,   /* next hop not resolved: the kernel path resolves and forwards */
	MG_C_DROP_MISS,       /* media port with no stream (or another address's port) */
	MG_C_DROP_UNKNOWN_SOURCE,
	MG_C_DROP_STRICT_SOURCE,
	MG_C_DROP_NO_DESTINATION,
	MG_C_DROP_TTL,
	MG_C_DROP_REDIRECT,
	MG_C_TO_XSK,          /* handed to an AF_XDP socket (or passed when the queue has none) */
	MG_C_DROP_OVERSIZE,   /* a kernel-tier stream's packet larger than max_payload */
	MG_C_MAX,
};

#endif
