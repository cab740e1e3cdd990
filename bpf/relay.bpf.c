// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* Dual-licensed because bpf_fib_lookup is available only to GPL-compatible programs. */
/* mediagate's in-kernel media tier: UDP packets (IPv4 or IPv6) to a kernel-tier stream are
 * latched, rewritten to leave from the paired stream's endpoint toward its remote, and
 * redirected out of the egress device; everything else is passed to the kernel untouched. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/mg_abi.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MG_MAX_STREAMS);
	__type(key, __u32);
	__type(value, struct mg_config);
} mg_configs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MG_MAX_STREAMS);
	__type(key, __u32);
	__type(value, struct mg_state);
} mg_states SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mg_settings);
} mg_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MG_MAX_DEVICES * MG_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} mg_xsks SEC(".maps");

/* ifindex -> device slot for XSKMAP keys (one map, no collisions across devices). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MG_MAX_DEVICES);
	__type(key, __u32);
	__type(value, __u32);
} mg_ifslots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MG_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} mg_counters SEC(".maps");

static __always_inline int count(__u32 which, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&mg_counters, &which);
	if (c)
		*c += 1;
	return verdict;
}

static __always_inline __u32 fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u32)s;
}

/* One's-complement sum change when 16-bit words old[] are replaced by new[] (RFC 1624 eq. 3),
 * to be added to ~check. */
static __always_inline __u64 csum_delta(const __u16 *old, const __u16 *new, int n)
{
	__u64 s = 0;
	for (int i = 0; i < n; i++) {
		s += (__u16)~old[i];
		s += new[i];
	}
	return s;
}

static __always_inline __u16 csum_apply(__u16 check, __u64 delta)
{
	return ~fold((__u16)~check + delta);
}

static __always_inline int addr_eq(const struct mg_addr *a, const struct mg_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] &&
	       a->w[3] == b->w[3];
}

/* What a packet carries, in header byte order, read once. */
struct flow {
	struct mg_addr src;
	struct mg_addr dst;
	__u16 sport;
	__u16 dport;
};

/* RTP quality: RFC 3550 A.1 and A.8 (integer form), step for step as media::quality does. */
#define MG_Q_MAX_DROPOUT 3000
#define MG_Q_MAX_MISORDER 100
#define MG_Q_MIN_SEQUENTIAL 2
#define MG_Q_SEQ_MOD (1U << 16)
#define MG_Q_MAX_GAP_NS 60000000000ULL /* arrival gaps clamped: gap * rate cannot overflow */
#define MG_Q_MAX_TRANSIT_STEP (1U << 24) /* transit steps clamped: jitter cannot overflow */

static __always_inline void q_init_seq(struct mg_quality *q, __u16 seq)
{
	q->base_seq = seq;
	q->max_seq = seq;
	q->bad_seq = MG_Q_SEQ_MOD + 1;
	q->cycles = 0;
	q->received = 0;
}

/* Moves the current source's expected and lost packets into the prior totals. */
static __always_inline void q_fold_prior(struct mg_quality *q)
{
	__u32 expected = q->received ? q->cycles + q->max_seq - q->base_seq + 1 : 0;
	q->prior_expected += expected;
	q->prior_lost += expected > q->received ? expected - q->received : 0;
}

/* A.1 update_seq, counting into `received` what A.1 counts as valid. */
static __always_inline void q_update_seq(struct mg_quality *q, __u16 seq)
{
	__u16 udelta = seq - q->max_seq;
	if (q->probation) {
		if (seq == (__u16)(q->max_seq + 1)) {
			q->probation--;
			q->max_seq = seq;
			if (!q->probation) {
				q_init_seq(q, seq);
				q->received++;
			}
		} else {
			q->probation = MG_Q_MIN_SEQUENTIAL - 1;
			q->max_seq = seq;
		}
		return;
	}
	if (udelta < MG_Q_MAX_DROPOUT) {
		if (seq < q->max_seq)
			q->cycles += MG_Q_SEQ_MOD;
		q->max_seq = seq;
	} else if (udelta <= MG_Q_SEQ_MOD - MG_Q_MAX_MISORDER) {
		if (seq != q->bad_seq) {
			q->bad_seq = (seq + 1) & (MG_Q_SEQ_MOD - 1);
			return;
		}
		q_fold_prior(q);
		q_init_seq(q, seq);
	}
	q->received++;
}

/* Takes an accepted packet's RTP header (if it is RTP: version 2, not RTCP types 72-76) into
 * the stream's quality state. */
static __always_inline void track_rtp(const struct mg_config *cfg, struct mg_state *st,
				      const struct udphdr *udp, void *data_end)
{
	const __u8 *rtp = (const void *)(udp + 1);
	if ((const void *)(rtp + 12) > data_end || (rtp[0] >> 6) != 2)
		return;
	__u8 pt = rtp[1] & 0x7f;
	if (pt >= 72 && pt <= 76)
		return;
	__u16 seq = ((__u16)rtp[2] << 8) | rtp[3];
	__u32 ts = ((__u32)rtp[4] << 24) | ((__u32)rtp[5] << 16) | ((__u32)rtp[6] << 8) | rtp[7];
	__u32 ssrc = ((__u32)rtp[8] << 24) | ((__u32)rtp[9] << 16) | ((__u32)rtp[10] << 8) | rtp[11];
	__u64 now = bpf_ktime_get_ns();
	struct mg_quality *q = &st->quality;
	if (!q->packets || ssrc != q->ssrc) {
		/* A new source: on probation until MIN_SEQUENTIAL packets in sequence. */
		q_fold_prior(q);
		q_init_seq(q, seq);
		q->max_seq = seq - 1;
		q->probation = MG_Q_MIN_SEQUENTIAL;
		q->ssrc = ssrc;
		q->flags &= ~MG_Q_HAVE_PREVIOUS;
	}
	q->packets++;
	q_update_seq(q, seq);
	__u32 rate = cfg->clock_rate;
	if (!rate)
		return;
	if (q->flags & MG_Q_HAVE_PREVIOUS) {
		__u64 gap = now > q->last_arrival_ns ? now - q->last_arrival_ns : 0;
		if (gap > MG_Q_MAX_GAP_NS)
			gap = MG_Q_MAX_GAP_NS;
		__u32 arrival_units = (__u32)(gap * rate / 1000000000ULL);
		__s32 diff = (__s32)(arrival_units - (ts - q->last_ts));
		__u32 d = diff < 0 ? -(__u32)diff : (__u32)diff;
		if (d > MG_Q_MAX_TRANSIT_STEP)
			d = MG_Q_MAX_TRANSIT_STEP;
		q->jitter += d - ((q->jitter + 8) >> 4);
	}
	q->last_arrival_ns = now;
	q->last_ts = ts;
	q->flags |= MG_Q_HAVE_PREVIOUS;
}

/* A stream's verdict on a packet's source: 0 to forward, else the drop counter. */
static __always_inline __u32 admit_v4(const struct mg_config *cfg, struct mg_state *st,
				      const struct flow *f)
{
	if (st->generation != cfg->generation) {
		st->latched = 0;
		st->generation = cfg->generation;
	}
	if (cfg->flags & MG_F_ASYMMETRIC)
		return 0; /* no learning, any source */
	__u32 saddr = f->src.w[3];
	__u64 src = MG_LATCHED | ((__u64)saddr << 16) | f->sport;
	__u64 latched = st->latched;
	if (!latched) {
		if (saddr != cfg->sdp.w[3] && saddr != cfg->signalling.w[3])
			return MG_C_DROP_UNKNOWN_SOURCE;
		latched = __sync_val_compare_and_swap(&st->latched, 0, src);
		if (!latched)
			return 0;
	}
	if (latched == src)
		return 0;
	if (cfg->flags & MG_F_HANDOVER) {
		/* Follow the new source; a concurrent handover on another CPU may win instead. */
		__sync_val_compare_and_swap(&st->latched, latched, src);
		return 0;
	}
	return MG_C_DROP_STRICT_SOURCE;
}

/* The same rules for IPv6, whose address does not fit one atomic word: under the lock. */
static __always_inline __u32 admit_v6(const struct mg_config *cfg, struct mg_state *st,
				      const struct flow *f)
{
	__u32 verdict = 0;
	bpf_spin_lock(&st->lock);
	if (st->generation != cfg->generation) {
		st->latched = 0;
		st->generation = cfg->generation;
	}
	if (cfg->flags & MG_F_ASYMMETRIC) {
		/* no learning, any source */
	} else if (!st->latched) {
		if (addr_eq(&f->src, &cfg->sdp) || addr_eq(&f->src, &cfg->signalling)) {
			st->latched6 = f->src;
			st->latched = MG_LATCHED | f->sport;
		} else {
			verdict = MG_C_DROP_UNKNOWN_SOURCE;
		}
	} else if ((__u16)st->latched != f->sport || !addr_eq(&st->latched6, &f->src)) {
		if (cfg->flags & MG_F_HANDOVER) {
			st->latched6 = f->src;
			st->latched = MG_LATCHED | f->sport;
		} else {
			verdict = MG_C_DROP_STRICT_SOURCE;
		}
	}
	bpf_spin_unlock(&st->lock);
	return verdict;
}

/* Where the paired stream's packets go: its latched source, else its SDP address. Returns 0
 * when neither is known. */
static __always_inline int destination(const struct mg_config *pcfg, struct mg_state *pst,
				       struct mg_addr *addr, __u16 *port)
{
	__u64 latched = 0;
	if (pcfg->family == MG_FAMILY_V6) {
		bpf_spin_lock(&pst->lock);
		if (pst->generation == pcfg->generation && pst->latched) {
			latched = pst->latched;
			*addr = pst->latched6;
		}
		bpf_spin_unlock(&pst->lock);
		if (latched) {
			*port = (__u16)latched;
			return 1;
		}
	} else {
		latched = pst->generation == pcfg->generation ? pst->latched : 0;
		if (latched) {
			*addr = (struct mg_addr){ .w = { 0, 0, 0, (__u32)(latched >> 16) } };
			*port = (__u16)latched;
			return 1;
		}
	}
	if (!pcfg->sdp_port)
		return 0;
	*addr = pcfg->sdp;
	*port = pcfg->sdp_port;
	return (addr->w[0] | addr->w[1] | addr->w[2] | addr->w[3]) != 0;
}

/* The stream a packet to dst:dport carrying `payload` UDP bytes belongs to, its state, and the
 * user-space verdict when the program does not forward it: -1 to forward here, else an XDP
 * verdict (counted). */
static __always_inline int classify(struct xdp_md *ctx, const struct flow *f, __u8 family,
				    __u64 payload, struct mg_config **cfg_out,
				    struct mg_state **st_out)
{
	__u32 zero = 0;
	struct mg_settings *set = bpf_map_lookup_elem(&mg_settings, &zero);
	if (!set)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	__u32 index = bpf_ntohs(f->dport);
	if (index < set->port_first || index > set->port_last)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	struct mg_config *cfg = bpf_map_lookup_elem(&mg_configs, &index);
	struct mg_state *st = bpf_map_lookup_elem(&mg_states, &index);
	if (!cfg || !st || cfg->family != family || !addr_eq(&cfg->local, &f->dst))
		return count(MG_C_DROP_MISS, XDP_DROP);
	if (cfg->flags & MG_F_XSK) {
		/* The AF_XDP workers latch and forward; a queue without a socket passes. */
		__u32 ifindex = ctx->ingress_ifindex;
		__u32 *slot = bpf_map_lookup_elem(&mg_ifslots, &ifindex);
		if (!slot || ctx->rx_queue_index >= MG_MAX_QUEUES)
			return count(MG_C_PASS_USERSPACE, XDP_PASS);
		__u32 xsk = *slot * MG_MAX_QUEUES + ctx->rx_queue_index;
		return count(MG_C_TO_XSK, bpf_redirect_map(&mg_xsks, xsk, XDP_PASS));
	}
	if (!(cfg->flags & MG_F_KERNEL))
		return count(MG_C_PASS_USERSPACE, XDP_PASS);
	/* Checked before latching, as the user-space tiers do. */
	if (payload > set->max_payload) {
		__sync_fetch_and_add(&st->drops, 1);
		return count(MG_C_DROP_OVERSIZE, XDP_DROP);
	}
	*cfg_out = cfg;
	*st_out = st;
	return -1;
}

/* Latches, finds the destination and the next hop of a kernel-tier packet. Returns -1 with
 * the peer's config, destination and `fib` filled in to forward, else a counted XDP verdict. */
static __always_inline int route(struct xdp_md *ctx, const struct flow *f,
				 const struct mg_config *cfg, struct mg_state *st,
				 const struct udphdr *udp, void *data_end,
				 struct mg_config **pcfg_out, struct mg_addr *dst, __u16 *dport,
				 struct bpf_fib_lookup *fib)
{
	__u32 drop = cfg->family == MG_FAMILY_V6 ? admit_v6(cfg, st, f) : admit_v4(cfg, st, f);
	if (drop) {
		__sync_fetch_and_add(&st->drops, 1);
		return count(drop, XDP_DROP);
	}
	/* Accepted from the peer: what it sent counts for quality, whichever tier forwards it. */
	track_rtp(cfg, st, udp, data_end);
	__u32 peer = cfg->peer_port;
	struct mg_config *pcfg = bpf_map_lookup_elem(&mg_configs, &peer);
	struct mg_state *pst = bpf_map_lookup_elem(&mg_states, &peer);
	if (!pcfg || !pst || !pcfg->family || !destination(pcfg, pst, dst, dport)) {
		__sync_fetch_and_add(&st->drops, 1);
		return count(MG_C_DROP_NO_DESTINATION, XDP_DROP);
	}
	/* The next hop in the family the packet leaves in, which is the pair's other leg's: it
	 * may differ from the one it came in (translated by v4_to_v6 / v6_to_v4). The length
	 * lets the lookup refuse a packet too large for the egress MTU (the kernel fragments
	 * it on the socket path). */
	__u16 udp_len = bpf_ntohs(udp->len);
	if (pcfg->family == MG_FAMILY_V6) {
		fib->family = AF_INET6;
		__builtin_memcpy(fib->ipv6_src, &pcfg->local, 16);
		__builtin_memcpy(fib->ipv6_dst, dst, 16);
		fib->tot_len = sizeof(struct ipv6hdr) + udp_len;
	} else {
		fib->family = AF_INET;
		fib->ipv4_src = pcfg->local.w[3];
		fib->ipv4_dst = dst->w[3];
		fib->tot_len = sizeof(struct iphdr) + udp_len;
	}
	fib->ifindex = ctx->ingress_ifindex;
	fib->l4_protocol = IPPROTO_UDP;
	int rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		/* Unresolved neighbour or no route: the user-space tier, which latched the same way,
		 * forwards this packet and the kernel resolves the neighbour meanwhile. */
		return count(MG_C_PASS_NO_NEIGH, XDP_PASS);
	*pcfg_out = pcfg;
	return -1;
}

/* Sends a rewritten frame out of the device the FIB chose. */
static __always_inline int transmit(struct xdp_md *ctx, struct ethhdr *eth,
				    const struct bpf_fib_lookup *fib, struct mg_state *st,
				    __u64 len)
{
	__sync_fetch_and_add(&st->rx_packets, 1);
	__sync_fetch_and_add(&st->rx_bytes, len);
	st->last_seen_ns = bpf_ktime_get_coarse_ns();
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	if (fib->ifindex == ctx->ingress_ifindex)
		return count(MG_C_FORWARDED, XDP_TX);
	int verdict = bpf_redirect(fib->ifindex, 0);
	if (verdict != XDP_REDIRECT)
		return count(MG_C_DROP_REDIRECT, XDP_DROP);
	return count(MG_C_FORWARDED, verdict);
}

/* The UDP checksum change when a packet's addresses and ports are replaced. The
 * pseudo-header's length and protocol add up the same in IPv4 and IPv6, so this holds across
 * families too: only addresses (an IPv4 one as ::a.b.c.d, whose zero words add nothing) and
 * ports count. */
static __always_inline __u64 udp_delta(const struct flow *f, const struct mg_addr *src,
				       const struct mg_addr *dst, const __u16 *new_ports)
{
	__u16 old_ports[2] = { f->sport, f->dport };
	return csum_delta((const __u16 *)&f->src, (const __u16 *)src, 8) +
	       csum_delta((const __u16 *)&f->dst, (const __u16 *)dst, 8) +
	       csum_delta(old_ports, new_ports, 2);
}

/* The 20 bytes an IPv6 header is longer than an IPv4 one without options. */
#define MG_V6_GROWTH ((int)(sizeof(struct ipv6hdr) - sizeof(struct iphdr)))

/* Sends an IPv4 packet of a stream whose pair is IPv6 out as IPv6 (RFC 7915 section 4, for
 * a UDP packet without options): the header grows by 20 bytes in front, the UDP header and
 * payload stay where they are. `tclass` and `hop_limit` come from the IPv4 TOS and TTL. */
static __always_inline int v4_to_v6(struct xdp_md *ctx, const struct flow *f,
				    const struct mg_config *cfg, const struct mg_config *pcfg,
				    struct mg_state *st, const struct mg_addr *dst, __u16 dport,
				    const struct bpf_fib_lookup *fib, __u8 tclass, __u8 hop_limit,
				    __u16 udp_check, __u64 payload)
{
	if (bpf_xdp_adjust_head(ctx, -MG_V6_GROWTH))
		return count(MG_C_PASS_USERSPACE, XDP_PASS);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > data_end) /* cannot happen: the UDP header was there before */
		return count(MG_C_DROP_REDIRECT, XDP_DROP);
	__u16 new_ports[2] = { bpf_htons(cfg->peer_port), dport };
	__u64 delta = udp_delta(f, &pcfg->local, dst, new_ports);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	*(__be32 *)ip6 = bpf_htonl(0x60000000 | ((__u32)tclass << 20));
	ip6->payload_len = udp->len;
	ip6->nexthdr = IPPROTO_UDP;
	ip6->hop_limit = hop_limit - 1;
	__builtin_memcpy(&ip6->saddr, &pcfg->local, 16);
	__builtin_memcpy(&ip6->daddr, dst, 16);
	udp->source = new_ports[0];
	udp->dest = new_ports[1];
	__u16 c = csum_apply(udp_check, delta);
	udp->check = c ? c : 0xffff;
	return transmit(ctx, eth, fib, st, payload);
}

/* Sends an IPv6 packet of a stream whose pair is IPv4 out as IPv4 (RFC 7915 section 5): the
 * header shrinks by 20 bytes in front; DF is set above 1260 bytes, as that section says. */
static __always_inline int v6_to_v4(struct xdp_md *ctx, const struct flow *f,
				    const struct mg_config *cfg, const struct mg_config *pcfg,
				    struct mg_state *st, const struct mg_addr *dst, __u16 dport,
				    const struct bpf_fib_lookup *fib, __u8 tclass, __u8 hop_limit,
				    __u16 udp_check, __u64 payload)
{
	if (bpf_xdp_adjust_head(ctx, MG_V6_GROWTH))
		return count(MG_C_PASS_USERSPACE, XDP_PASS);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end) /* cannot happen: the UDP header was there before */
		return count(MG_C_DROP_REDIRECT, XDP_DROP);
	__u16 new_ports[2] = { bpf_htons(cfg->peer_port), dport };
	__u64 delta = udp_delta(f, &pcfg->local, dst, new_ports);
	__u16 total = sizeof(struct iphdr) + bpf_ntohs(udp->len);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = tclass;
	ip->tot_len = bpf_htons(total);
	ip->id = 0;
	ip->frag_off = total > 1260 ? bpf_htons(0x4000) : 0;
	ip->ttl = hop_limit - 1;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = pcfg->local.w[3];
	ip->daddr = dst->w[3];
	__u16 *words = (__u16 *)ip;
	__u64 sum = 0;
	for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
		sum += words[i];
	ip->check = ~fold(sum);
	udp->source = new_ports[0];
	udp->dest = new_ports[1];
	__u16 c = csum_apply(udp_check, delta);
	udp->check = c ? c : 0xffff;
	return transmit(ctx, eth, fib, st, payload);
}

static __always_inline int relay_v4(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
				    void *data_end)
{
	if ((void *)(ip + 1) > data_end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	if (ip->frag_off & bpf_htons(0x3fff)) /* MF set or offset: a fragment */
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	struct flow f = {
		.src = { .w = { 0, 0, 0, ip->saddr } },
		.dst = { .w = { 0, 0, 0, ip->daddr } },
		.sport = udp->source,
		.dport = udp->dest,
	};
	struct mg_config *cfg = 0, *pcfg = 0;
	struct mg_state *st = 0;
	__u64 payload = data_end - (void *)(udp + 1);
	int verdict = classify(ctx, &f, MG_FAMILY_V4, payload, &cfg, &st);
	if (verdict >= 0 || !cfg || !st)
		return verdict;
	if (ip->ttl <= 1)
		return count(MG_C_DROP_TTL, XDP_DROP);
	struct mg_addr dst;
	__u16 dport;
	struct bpf_fib_lookup fib = {};
	fib.tos = ip->tos;
	verdict = route(ctx, &f, cfg, st, udp, data_end, &pcfg, &dst, &dport, &fib);
	if (verdict >= 0 || !pcfg)
		return verdict;
	if (pcfg->family == MG_FAMILY_V6) {
		/* A VLAN tag, or no UDP checksum to update (IPv6 needs one): the socket tier. */
		if ((void *)ip != (void *)(eth + 1) || !udp->check)
			return count(MG_C_PASS_USERSPACE, XDP_PASS);
		return v4_to_v6(ctx, &f, cfg, pcfg, st, &dst, dport, &fib, ip->tos, ip->ttl,
				udp->check, payload);
	}
	/* Rewrite addresses, ports and TTL with incremental checksum updates. */
	__u16 old_ip[4], new_ip[4], old_ports[2], new_ports[2];
	__builtin_memcpy(&old_ip[0], &ip->saddr, 4);
	__builtin_memcpy(&old_ip[2], &ip->daddr, 4);
	__builtin_memcpy(&new_ip[0], &pcfg->local.w[3], 4);
	__builtin_memcpy(&new_ip[2], &dst.w[3], 4);
	old_ports[0] = udp->source;
	old_ports[1] = udp->dest;
	new_ports[0] = bpf_htons(cfg->peer_port);
	new_ports[1] = dport;
	__u16 old_ttl = *(__u16 *)&ip->ttl; /* ttl and protocol share one checksum word */
	ip->ttl -= 1;
	__u16 new_ttl = *(__u16 *)&ip->ttl;
	__u64 addr_delta = csum_delta(old_ip, new_ip, 4);
	ip->check = csum_apply(ip->check, addr_delta + csum_delta(&old_ttl, &new_ttl, 1));
	__builtin_memcpy(&ip->saddr, &new_ip[0], 4);
	__builtin_memcpy(&ip->daddr, &new_ip[2], 4);
	udp->source = new_ports[0];
	udp->dest = new_ports[1];
	if (udp->check) { /* an IPv4 UDP checksum of 0 means "none" and stays 0 */
		__u16 c = csum_apply(udp->check, addr_delta + csum_delta(old_ports, new_ports, 2));
		udp->check = c ? c : 0xffff;
	}
	return transmit(ctx, eth, &fib, st, payload);
}

static __always_inline int relay_v6(struct xdp_md *ctx, struct ethhdr *eth,
				    struct ipv6hdr *ip6, void *data_end)
{
	/* Extension headers (fragments included) are left to the kernel. */
	if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_UDP)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	struct udphdr *udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > data_end)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	struct flow f = { .sport = udp->source, .dport = udp->dest };
	__builtin_memcpy(&f.src, &ip6->saddr, 16);
	__builtin_memcpy(&f.dst, &ip6->daddr, 16);
	struct mg_config *cfg = 0, *pcfg = 0;
	struct mg_state *st = 0;
	__u64 payload = data_end - (void *)(udp + 1);
	int verdict = classify(ctx, &f, MG_FAMILY_V6, payload, &cfg, &st);
	if (verdict >= 0 || !cfg || !st)
		return verdict;
	if (ip6->hop_limit <= 1)
		return count(MG_C_DROP_TTL, XDP_DROP);
	if (!udp->check) /* mandatory over IPv6 (RFC 8200 8.1): the kernel drops it */
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	struct mg_addr dst;
	__u16 dport;
	struct bpf_fib_lookup fib = {};
	__u32 first_word = bpf_ntohl(*(__be32 *)ip6);
	fib.flowinfo = bpf_htonl(first_word & 0x0fffffff);
	verdict = route(ctx, &f, cfg, st, udp, data_end, &pcfg, &dst, &dport, &fib);
	if (verdict >= 0 || !pcfg)
		return verdict;
	if (pcfg->family == MG_FAMILY_V4) {
		if ((void *)ip6 != (void *)(eth + 1)) /* a VLAN tag: the socket tier */
			return count(MG_C_PASS_USERSPACE, XDP_PASS);
		return v6_to_v4(ctx, &f, cfg, pcfg, st, &dst, dport, &fib,
				(__u8)(first_word >> 20), ip6->hop_limit, udp->check, payload);
	}
	__u16 new_ports[2] = { bpf_htons(cfg->peer_port), dport };
	__u64 delta = udp_delta(&f, &pcfg->local, &dst, new_ports);
	__builtin_memcpy(&ip6->saddr, &pcfg->local, 16);
	__builtin_memcpy(&ip6->daddr, &dst, 16);
	ip6->hop_limit -= 1; /* not covered by any checksum */
	udp->source = new_ports[0];
	udp->dest = new_ports[1];
	__u16 c = csum_apply(udp->check, delta);
	udp->check = c ? c : 0xffff;
	return transmit(ctx, eth, &fib, st, payload);
}

SEC("xdp")
int mg_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	__u16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *v = l3;
		if ((void *)(v + 1) > data_end)
			return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
		proto = v->proto;
		l3 = v + 1;
	}
	if (proto == bpf_htons(ETH_P_IP))
		return relay_v4(ctx, eth, l3, data_end);
	if (proto == bpf_htons(ETH_P_IPV6))
		return relay_v6(ctx, eth, l3, data_end);
	return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
