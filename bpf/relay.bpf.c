// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* Dual-licensed because bpf_fib_lookup is available only to GPL-compatible programs. */
/* mediagate's in-kernel media tier: UDP packets to a kernel-tier stream are latched, rewritten
 * to leave from the paired stream's endpoint toward its remote, and redirected out of the
 * egress device; everything else is passed to the kernel untouched. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/mg_abi.h"

#ifndef AF_INET
#define AF_INET 2
#endif

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MG_MAX_STREAMS);
	__type(key, struct mg_key);
	__type(value, struct mg_config);
} mg_configs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MG_MAX_STREAMS);
	__type(key, struct mg_key);
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

/* New checksum after 16-bit words old[] were replaced by new[] (RFC 1624 eq. 3). */
static __always_inline __u16 csum_update(__u16 check, const __u16 *old, const __u16 *new, int n)
{
	__u64 s = (__u16)~check;
	for (int i = 0; i < n; i++) {
		s += (__u16)~old[i];
		s += new[i];
	}
	return ~fold(s);
}

static __always_inline __u64 pack(__u32 ip, __u16 port)
{
	return MG_LATCHED | ((__u64)ip << 16) | port;
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
	if (proto != bpf_htons(ETH_P_IP))
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	struct iphdr *ip = l3;
	if ((void *)(ip + 1) > data_end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	if (ip->frag_off & bpf_htons(0x3fff)) /* MF set or offset: a fragment */
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);

	__u32 zero = 0;
	struct mg_settings *set = bpf_map_lookup_elem(&mg_settings, &zero);
	if (!set)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);
	__u16 dport = bpf_ntohs(udp->dest);
	if (dport < set->port_first || dport > set->port_last)
		return count(MG_C_PASS_NOT_MEDIA, XDP_PASS);

	struct mg_key key = { .ip = ip->daddr, .port = udp->dest };
	struct mg_config *cfg = bpf_map_lookup_elem(&mg_configs, &key);
	struct mg_state *st = bpf_map_lookup_elem(&mg_states, &key);
	if (!cfg || !st)
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

	/* Latching and strict source: DESIGN.md's media rules, as in media::Latch. */
	if (st->generation != cfg->generation) {
		st->latched = 0;
		st->generation = cfg->generation;
	}
	__u64 src = pack(ip->saddr, udp->source);
	__u64 latched = st->latched;
	if (cfg->flags & MG_F_ASYMMETRIC) {
		/* No learning, any source. */
	} else if (!latched) {
		if (ip->saddr != cfg->sdp_ip && ip->saddr != cfg->signalling_ip) {
			__sync_fetch_and_add(&st->drops, 1);
			return count(MG_C_DROP_UNKNOWN_SOURCE, XDP_DROP);
		}
		latched = __sync_val_compare_and_swap(&st->latched, 0, src);
		if (!latched)
			latched = src;
	} else if (latched != src && (cfg->flags & MG_F_HANDOVER)) {
		/* Follow the new source; a concurrent handover on another CPU may win instead. */
		__sync_val_compare_and_swap(&st->latched, latched, src);
		latched = src;
	}
	if (!(cfg->flags & MG_F_ASYMMETRIC) && latched != src) {
		__sync_fetch_and_add(&st->drops, 1);
		return count(MG_C_DROP_STRICT_SOURCE, XDP_DROP);
	}

	/* Destination: the paired stream's latched source, else its SDP address. */
	struct mg_config *pcfg = bpf_map_lookup_elem(&mg_configs, &cfg->peer);
	struct mg_state *pst = bpf_map_lookup_elem(&mg_states, &cfg->peer);
	if (!pcfg || !pst) {
		__sync_fetch_and_add(&st->drops, 1);
		return count(MG_C_DROP_NO_DESTINATION, XDP_DROP);
	}
	__u32 dst_ip;
	__u16 dst_port;
	__u64 plat = pst->generation == pcfg->generation ? pst->latched : 0;
	if (plat) {
		dst_ip = (__u32)(plat >> 16);
		dst_port = (__u16)plat;
	} else if (pcfg->sdp_port && pcfg->sdp_ip) {
		dst_ip = pcfg->sdp_ip;
		dst_port = pcfg->sdp_port;
	} else {
		__sync_fetch_and_add(&st->drops, 1);
		return count(MG_C_DROP_NO_DESTINATION, XDP_DROP);
	}
	if (ip->ttl <= 1)
		return count(MG_C_DROP_TTL, XDP_DROP);

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = IPPROTO_UDP;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = cfg->peer.ip;
	fib.ipv4_dst = dst_ip;
	fib.ifindex = ctx->ingress_ifindex;
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		/* Unresolved neighbour or no route: the user-space tier, which latched the same way,
		 * forwards this packet and the kernel resolves the neighbour meanwhile. */
		return count(MG_C_PASS_NO_NEIGH, XDP_PASS);

	__u64 len = (__u64)(data_end - (void *)udp);
	__sync_fetch_and_add(&st->rx_packets, 1);
	__sync_fetch_and_add(&st->rx_bytes, len);
	st->last_seen_ns = bpf_ktime_get_ns();

	/* Rewrite addresses, ports and TTL with incremental checksum updates. */
	__u16 old_ip[4], new_ip[4], old_ports[2], new_ports[2];
	__builtin_memcpy(&old_ip[0], &ip->saddr, 4);
	__builtin_memcpy(&old_ip[2], &ip->daddr, 4);
	__builtin_memcpy(&new_ip[0], &cfg->peer.ip, 4);
	__builtin_memcpy(&new_ip[2], &dst_ip, 4);
	old_ports[0] = udp->source;
	old_ports[1] = udp->dest;
	new_ports[0] = cfg->peer.port;
	new_ports[1] = dst_port;

	__u16 old_ttl = *(__u16 *)&ip->ttl; /* ttl and protocol share one checksum word */
	ip->ttl -= 1;
	__u16 new_ttl = *(__u16 *)&ip->ttl;
	ip->saddr = cfg->peer.ip;
	ip->daddr = dst_ip;
	ip->check = csum_update(ip->check, old_ip, new_ip, 4);
	ip->check = csum_update(ip->check, &old_ttl, &new_ttl, 1);
	udp->source = cfg->peer.port;
	udp->dest = dst_port;
	if (udp->check) { /* an IPv4 UDP checksum of 0 means "none" and stays 0 */
		__u16 c = csum_update(udp->check, old_ip, new_ip, 4);
		c = csum_update(c, old_ports, new_ports, 2);
		udp->check = c ? c : 0xffff;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);

	__sync_fetch_and_add(&pst->tx_packets, 1);
	__sync_fetch_and_add(&pst->tx_bytes, len);
	if (fib.ifindex == ctx->ingress_ifindex)
		return count(MG_C_FORWARDED, XDP_TX);
	int verdict = bpf_redirect(fib.ifindex, 0);
	if (verdict != XDP_REDIRECT)
		return count(MG_C_DROP_REDIRECT, XDP_DROP);
	return count(MG_C_FORWARDED, verdict);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
