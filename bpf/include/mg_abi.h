/* ABI shared between the XDP program and mediagate (mirrored by #[repr(C)] types in
 * src/dataplane/kernel/abi.rs, with size and offset assertions there). All addresses and ports
 * are in network byte order, exactly as they appear in packet headers. */
#ifndef MG_ABI_H
#define MG_ABI_H

#include <linux/types.h>

#define MG_MAX_STREAMS 131072

/* A mediagate media endpoint: the local address a stream's packets are sent to. */
struct mg_key {
	__u32 ip;
	__u16 port;
	__u16 pad;
};

/* Flags of a stream. */
#define MG_F_KERNEL 1 /* forward in the kernel */
#define MG_F_XSK 2    /* redirect to the AF_XDP socket of the ingress device and queue */
#define MG_F_ASYMMETRIC 4 /* never learn: accept any source, send to the SDP address */
#define MG_F_HANDOVER 8   /* after the first latch, follow any new source */
/* Neither flag: pass to the kernel stack (the socket tier). */

/* XSKMAP keys: device slot (from mg_ifslots) * MG_MAX_QUEUES + rx queue. */
#define MG_MAX_QUEUES 64
#define MG_MAX_DEVICES 16

/* What the control plane says about a stream. Written only by user space. */
struct mg_config {
	struct mg_key peer;  /* the paired stream's local endpoint: source of forwarded packets */
	__u32 sdp_ip;        /* remote address from SDP; port 0 = not known yet */
	__u16 sdp_port;
	__u16 flags;
	__u32 signalling_ip; /* source IP of the leg's SIP: may latch too */
	__u32 generation;    /* bumped on renegotiation: the program re-opens learning */
};

/* What the program learns and counts about a stream. Written by the program (atomically),
 * created zeroed and deleted by user space. */
struct mg_state {
	__u64 latched;       /* 0 = learning; else MG_LATCHED | ip << 16 | port */
	__u32 generation;    /* the mg_config generation this state belongs to */
	__u32 pad;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;    /* forwarded out of this stream's endpoint toward its remote */
	__u64 tx_bytes;
	__u64 drops;
	__u64 last_seen_ns;  /* bpf_ktime_get_ns() of the last accepted packet */
};

#define MG_LATCHED (1ULL << 48)

/* Global settings, one entry. */
struct mg_settings {
	__u16 port_first; /* host byte order: media port range */
	__u16 port_last;
	__u32 pad;
};

/* Per-CPU counters by outcome (index into the per-CPU array). */
enum mg_counter {
	MG_C_FORWARDED = 0,
	MG_C_PASS_NOT_MEDIA,  /* not UDP to the media range: left to the kernel */
	MG_C_PASS_USERSPACE,  /* a stream handled by a user-space tier */
	MG_C_PASS_NO_NEIGH,   /* next hop not resolved: the kernel path resolves and forwards */
	MG_C_DROP_MISS,       /* media port with no stream */
	MG_C_DROP_UNKNOWN_SOURCE,
	MG_C_DROP_STRICT_SOURCE,
	MG_C_DROP_NO_DESTINATION,
	MG_C_DROP_TTL,
	MG_C_DROP_REDIRECT,
	MG_C_TO_XSK,          /* handed to an AF_XDP socket (or passed when the queue has none) */
	MG_C_MAX,
};

#endif
