//! The `/metrics` model: counters the control loop keeps as messages, records and media
//! commands pass through it, and the rendering of everything (those counters, the B2BUA's and
//! NG server's counters, the `/status` trunk data, the data plane's counters) in the
//! OpenMetrics text format with `prometheus-client`.
//!
//! Nothing here runs per packet: media counters are the per-stream single-writer atomics the
//! data plane already keeps ([`StreamStats`]), summed at scrape time over the live streams plus
//! the totals of removed ones (folded in when the control loop forwards their `Remove`), so the
//! totals never go down when a call ends. A fresh registry is built for each scrape from these
//! plain numbers; the control loop owns all of it, so there is no lock.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use hdrhistogram::Histogram;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram as PromHistogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;

use crate::cdr::Cdr;
use crate::config::Transport;
use crate::control::ng::Totals as NgTotals;
use crate::dataplane::Snapshot as DataplaneSnapshot;
use crate::media::{Command, DropReason, StreamId, StreamStats, Tier};
use crate::sip::b2bua::Counters as B2buaCounters;
use crate::sip::message::Message;

/// The `Content-Type` of the OpenMetrics 1.0 text `prometheus-client` writes, served when the
/// scraper's `Accept` asks for it (Prometheus does).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of the classic Prometheus text format (0.0.4), served otherwise (curl,
/// `promtool check metrics`, older scrapers).
pub const CONTENT_TYPE_CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an HTTP `Accept` header value asks for OpenMetrics.
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.contains("application/openmetrics-text")
}

/// Turns the OpenMetrics text `prometheus-client` writes into the classic Prometheus text
/// format: a counter family is named with its `_total` suffix in `# HELP`/`# TYPE` (the
/// samples already carry it), and `# UNIT` and `# EOF` lines go. Samples are unchanged (the
/// classic parser reads `1.0` and `+Inf` the same way).
pub fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Upper bounds (seconds) of the relay-latency histogram buckets, `+Inf` added.
pub const LATENCY_BUCKETS: [f64; 14] = [
    1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3,
    100e-3,
];

/// Upper bounds (seconds) of the per-leg RTP jitter histogram, `+Inf` added: a few ms is
/// normal on a LAN, 20–50 ms stretches a jitter buffer, beyond 100 ms is audible.
pub const JITTER_BUCKETS: [f64; 10] = [
    0.5e-3, 1e-3, 2.5e-3, 5e-3, 10e-3, 20e-3, 30e-3, 50e-3, 100e-3, 200e-3,
];

/// Upper bounds of the per-leg estimated MOS histogram, `+Inf` added: finer near the top,
/// where G.711 calls sit (4.40 with no loss and no jitter).
pub const MOS_BUCKETS: [f64; 10] = [1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.3, 4.4];

/// Histograms per trunk, observed once per call leg when its CDR is written.
type LegHistograms = Family<Labels, PromHistogram, fn() -> PromHistogram>;

fn jitter_histogram() -> PromHistogram {
    PromHistogram::new(JITTER_BUCKETS.into_iter())
}

fn mos_histogram() -> PromHistogram {
    PromHistogram::new(MOS_BUCKETS.into_iter())
}

/// RTP quality of ended calls' legs, per trunk (the leg's trunk: `trunk_in` for the caller's,
/// `trunk_out` for the callee's), from their CDRs.
#[derive(Debug)]
struct LegQuality {
    /// trunk → RTP packets lost.
    lost: BTreeMap<String, u64>,
    jitter: LegHistograms,
    mos: LegHistograms,
}

impl Default for LegQuality {
    fn default() -> Self {
        LegQuality {
            lost: BTreeMap::new(),
            jitter: Family::new_with_constructor(jitter_histogram),
            mos: Family::new_with_constructor(mos_histogram),
        }
    }
}

impl LegQuality {
    fn observe(&mut self, trunk: &str, leg: &crate::cdr::MediaCounters) {
        let Some(lost) = leg.packets_lost else {
            return;
        };
        *self.lost.entry(trunk.to_string()).or_default() += lost;
        let labels = vec![("trunk", trunk.to_string())];
        if let Some(j) = leg.jitter_ms {
            self.jitter.get_or_create(&labels).observe(j / 1000.0);
        }
        if let Some(m) = leg.mos {
            self.mos.get_or_create(&labels).observe(m);
        }
    }
}

/// SIP methods given their own label value; anything else is `other` (bounded cardinality
/// whatever the network sends).
const METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "UPDATE",
    "PRACK",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "MESSAGE",
    "PUBLISH",
];

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Received,
    Sent,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Received => "received",
            Direction::Sent => "sent",
        }
    }
}

/// Media counters of one tier.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct MediaTotals {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    drops: [u64; DropReason::ALL.len()],
}

impl MediaTotals {
    fn add(&mut self, o: &MediaTotals) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
    }
}

/// Media totals per tier: index = `Tier as usize`.
type ByTier = [MediaTotals; 3];

/// Splits a stream's counters by tier: its user-space counters belong to the socket tier, or
/// to the AF_XDP tier when that tier carries the stream; its kernel totals to the kernel tier.
fn split(s: &StreamStats) -> ByTier {
    let mut t = ByTier::default();
    let user = if s.tier() == Tier::Afxdp {
        Tier::Afxdp
    } else {
        Tier::Socket
    };
    let u = s.user_totals();
    let k = s.kernel_totals();
    t[user as usize] = MediaTotals {
        rx_packets: u.rx_packets,
        rx_bytes: u.rx_bytes,
        tx_packets: u.tx_packets,
        tx_bytes: u.tx_bytes,
        drops: DropReason::ALL.map(|r| s.drops(r)),
    };
    t[Tier::Kernel as usize] = MediaTotals {
        rx_packets: k.rx_packets,
        rx_bytes: k.rx_bytes,
        tx_packets: k.tx_packets,
        tx_bytes: k.tx_bytes,
        drops: [0; DropReason::ALL.len()],
    };
    t
}

/// The counters the control loop keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (direction, transport, method) → requests.
    requests: BTreeMap<(Direction, &'static str, &'static str), u64>,
    /// (direction, transport, CSeq method, code) → responses.
    responses: BTreeMap<(Direction, &'static str, &'static str, u16), u64>,
    /// (trunk, final code) → ended calls.
    calls_ended: BTreeMap<(String, u16), u64>,
    /// Streams the data plane has now, by id.
    streams: HashMap<StreamId, Arc<StreamStats>>,
    /// Totals of streams already removed.
    retired: ByTier,
    /// Configuration reloads (SIGHUP): (applied, refused).
    reloads: (u64, u64),
    /// Whether the latest reload was refused.
    last_reload_failed: bool,
    /// RTP loss, jitter and MOS of ended calls, per trunk.
    quality: LegQuality,
}

fn method_label(m: &str) -> &'static str {
    METHODS
        .iter()
        .find(|k| **k == m)
        .copied()
        .unwrap_or("other")
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one SIP message received or sent over `transport`.
    pub fn sip_message(&mut self, dir: Direction, transport: Transport, msg: &Message) {
        let transport = transport.lower();
        if let Some(m) = msg.method() {
            *self
                .requests
                .entry((dir, transport, method_label(m.as_str())))
                .or_default() += 1;
        } else if let Some(code) = msg.code() {
            let method = msg
                .header("CSeq")
                .and_then(|c| c.split_whitespace().nth(1))
                .map_or("other", method_label);
            // Codes outside 100..=699 are not valid SIP; keep the label set bounded.
            let code = if (100..=699).contains(&code) { code } else { 0 };
            *self
                .responses
                .entry((dir, transport, method, code))
                .or_default() += 1;
        }
    }

    /// Counts the calls whose records the B2BUA produced, and observes their legs' RTP
    /// quality under each leg's trunk.
    pub fn calls_ended<'a>(&mut self, records: impl IntoIterator<Item = &'a Cdr>) {
        for r in records {
            *self
                .calls_ended
                .entry((r.trunk_in.clone(), r.final_code))
                .or_default() += 1;
            self.quality.observe(&r.trunk_in, &r.media_in);
            if let Some(out) = &r.trunk_out {
                self.quality.observe(out, &r.media_out);
            }
        }
    }

    /// Counts a configuration reload (SIGHUP): applied (`ok`) or refused with the running
    /// configuration kept.
    pub fn config_reload(&mut self, ok: bool) {
        if ok {
            self.reloads.0 += 1;
        } else {
            self.reloads.1 += 1;
        }
        self.last_reload_failed = !ok;
    }

    /// Notes a media command on its way to the data plane: added streams are watched, removed
    /// streams' totals are kept.
    pub fn media_command(&mut self, cmd: &Command) {
        match cmd {
            Command::Add(spec) => {
                if let Some(old) = self.streams.insert(spec.id, spec.stats.clone()) {
                    self.retire(&old);
                }
            }
            Command::Remove(id) => {
                if let Some(old) = self.streams.remove(id) {
                    self.retire(&old);
                }
            }
            Command::Renegotiate { .. } => {}
        }
    }

    fn retire(&mut self, s: &StreamStats) {
        for (r, t) in self.retired.iter_mut().zip(split(s)) {
            r.add(&t);
        }
    }

    fn media_totals(&self) -> ByTier {
        let mut all = self.retired;
        for s in self.streams.values() {
            for (a, t) in all.iter_mut().zip(split(s)) {
                a.add(&t);
            }
        }
        all
    }

    /// Renders the whole exposition.
    pub fn render(&self, sources: &Sources<'_>) -> String {
        let mut out = Out::default();
        self.render_calls(&mut out, sources);
        self.render_sip(&mut out, sources);
        render_trunks(&mut out, sources.status);
        self.render_media(&mut out, sources);
        self.render_reloads(&mut out);
        render_relay_threads(&mut out, &super::threads::relay_threads());
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &out.registry);
        text
    }

    fn render_calls(&self, out: &mut Out, s: &Sources<'_>) {
        out.gauge(
            "mediagate_calls_active",
            "Calls up now: SIP calls (B2BUA) plus NG calls not deleted.",
            [
                (vec![("frontend", "sip".to_string())], s.sip_active as f64),
                (vec![("frontend", "ng".to_string())], s.ng_active as f64),
            ],
        );
        out.counter(
            "mediagate_calls_started",
            "New INVITEs (call attempts) received, by the trunk they came from.",
            s.b2bua
                .calls_started
                .iter()
                .map(|(t, n)| (vec![("trunk", t.to_string())], *n)),
        );
        out.counter(
            "mediagate_calls_ended",
            "Calls ended (one per CDR), by the trunk they came from and the final status code sent to the caller (200 = answered).",
            self.calls_ended.iter().map(|((t, c), n)| {
                (vec![("trunk", t.clone()), ("code", c.to_string())], *n)
            }),
        );
        out.counter(
            "mediagate_ng_calls_created",
            "NG (rtpengine protocol) calls created by a first offer.",
            [(vec![], s.ng.calls_created)],
        );
        out.counter(
            "mediagate_ng_calls_deleted",
            "NG calls released (delete, delete delay, media timeout, shutdown).",
            [(vec![], s.ng.calls_deleted)],
        );
        out.counter(
            "mediagate_ng_commands",
            "NG commands handled, by command; errors are commands answered result=error.",
            [
                ("offer", s.ng.offers),
                ("answer", s.ng.answers),
                ("delete", s.ng.deletes),
                ("error", s.ng.errors),
            ]
            .map(|(c, n)| (vec![("command", c.to_string())], n)),
        );
    }

    fn render_reloads(&self, out: &mut Out) {
        out.counter(
            "mediagate_config_reloads",
            "Configuration reloads on SIGHUP: ok = applied to new calls, error = refused (invalid file), running configuration kept.",
            [("ok", self.reloads.0), ("error", self.reloads.1)]
                .map(|(r, n)| (vec![("result", r.to_string())], n)),
        );
        out.gauge(
            "mediagate_config_last_reload_successful",
            "0 when the latest configuration reload was refused, else 1.",
            [(vec![], f64::from(u8::from(!self.last_reload_failed)))],
        );
    }

    fn render_sip(&self, out: &mut Out, s: &Sources<'_>) {
        out.counter(
            "mediagate_sip_requests",
            "SIP requests received and sent (retransmissions included), by method and transport.",
            self.requests.iter().map(|((d, t, m), n)| {
                (
                    vec![
                        ("direction", d.name().to_string()),
                        ("transport", t.to_string()),
                        ("method", m.to_string()),
                    ],
                    *n,
                )
            }),
        );
        out.counter(
            "mediagate_sip_responses",
            "SIP responses received and sent (retransmissions included), by status code, CSeq method and transport.",
            self.responses.iter().map(|((d, t, m, c), n)| {
                (
                    vec![
                        ("direction", d.name().to_string()),
                        ("transport", t.to_string()),
                        ("method", m.to_string()),
                        ("code", c.to_string()),
                    ],
                    *n,
                )
            }),
        );
        let screened = s.b2bua.screened;
        out.counter(
            "mediagate_refused",
            "Input refused or dropped before it reached a call, by protocol and reason: SIP from sources that are no trunk peer (unknown_source_rejected: 403, unknown_source_dropped), invalid SIP requests answered 400/416 (invalid_answered), unparseable ones (malformed_answered, malformed_dropped), messages over a source's rate (rate_limited), TCP connections closed for slowness (idle_closed); NG and HTTP clients outside control.allow (not_allowed) or over their rate.",
            s.refused
                .iter()
                .copied()
                .chain([
                    ("sip", "unknown_source_rejected", screened.unknown_rejected),
                    ("sip", "unknown_source_dropped", screened.unknown_dropped),
                    ("sip", "invalid_answered", screened.invalid),
                ])
                .map(|(p, r, n)| {
                    (
                        vec![("protocol", p.to_string()), ("reason", r.to_string())],
                        n,
                    )
                }),
        );
        let r = s.b2bua.retransmissions;
        out.counter(
            "mediagate_sip_retransmissions",
            "SIP retransmissions by the transaction layer: requests sent again (timers A/E), final responses sent again (timer G), requests received again (absorbed).",
            [
                ("sent", "request", r.requests_sent),
                ("sent", "response", r.responses_sent),
                ("received", "request", r.requests_received),
            ]
            .map(|(d, k, n)| {
                (
                    vec![("direction", d.to_string()), ("kind", k.to_string())],
                    n,
                )
            }),
        );
        out.gauge(
            "mediagate_sip_transactions",
            "Live SIP transactions (client and server).",
            [(vec![], s.b2bua.transactions as f64)],
        );
        out.gauge(
            "mediagate_sip_dialogs",
            "Live SIP dialogs of the B2BUA (two per call, including calls being torn down).",
            [(vec![], s.b2bua.dialogs as f64)],
        );
        out.counter(
            "mediagate_sip_forks_unrelayed",
            "Provisional responses of forked early dialogs beyond the callee trunk's max_early_dialogs, not relayed to the caller.",
            [(vec![], s.b2bua.forks_unrelayed)],
        );
        out.gauge(
            "mediagate_sip_calls",
            "Calls in the B2BUA's table, including calls being torn down.",
            [(vec![], s.b2bua.calls as f64)],
        );
    }

    fn render_media(&self, out: &mut Out, s: &Sources<'_>) {
        let totals = self.media_totals();
        let tiers = [Tier::Socket, Tier::Kernel, Tier::Afxdp];
        let per_tier = |f: fn(&MediaTotals) -> (u64, u64)| {
            tiers.iter().flat_map(move |t| {
                let (rx, tx) = f(&totals[*t as usize]);
                [("received", rx), ("sent", tx)].map(|(d, n)| {
                    (
                        vec![("tier", t.name().to_string()), ("direction", d.to_string())],
                        n,
                    )
                })
            })
        };
        out.counter(
            "mediagate_media_packets",
            "RTP/RTCP packets relayed, by data-plane tier: received = accepted from a peer, sent = forwarded to the other side. Summed over streams at scrape time.",
            per_tier(|t| (t.rx_packets, t.tx_packets)),
        );
        out.counter_unit(
            "mediagate_media",
            Unit::Bytes,
            "UDP payload bytes of the packets in mediagate_media_packets_total.",
            per_tier(|t| (t.rx_bytes, t.tx_bytes)),
        );
        let mut drops: Vec<(Vec<(&'static str, String)>, u64)> = Vec::new();
        for t in [Tier::Socket, Tier::Afxdp] {
            for r in DropReason::ALL {
                drops.push((
                    vec![("tier", t.name().into()), ("reason", r.name().into())],
                    totals[t as usize].drops[r as usize],
                ));
            }
        }
        for (name, n) in &s.dataplane.program_counters {
            if let Some(reason) = name.strip_prefix("drop_") {
                drops.push((
                    vec![("tier", "kernel".into()), ("reason", reason.into())],
                    *n,
                ));
            }
        }
        out.counter(
            "mediagate_media_dropped_packets",
            "Media packets dropped, by tier and reason (user-space tiers per stream; kernel tier from the XDP program's counters).",
            drops,
        );
        out.counter(
            "mediagate_xdp_packets",
            "Packets seen by the XDP program by outcome (forwarded, pass_*, drop_*, to_afxdp), summed over CPUs; absent without an XDP tier.",
            s.dataplane
                .program_counters
                .iter()
                .map(|(name, n)| (vec![("outcome", name.to_string())], *n)),
        );
        out.gauge(
            "mediagate_dataplane_info",
            "The data-plane tier in use (label tier), always 1.",
            [(vec![("tier", s.dataplane.tier.to_string())], 1.0)],
        );
        let workers = &s.dataplane.workers;
        let per_worker = |f: fn(&crate::dataplane::WorkerCounters) -> u64| {
            workers
                .iter()
                .map(move |w| (vec![("core", w.core.to_string())], f(w)))
        };
        out.counter(
            "mediagate_afxdp_worker_iterations",
            "Loop iterations of each AF_XDP worker (label core).",
            per_worker(|w| w.iterations),
        );
        out.counter(
            "mediagate_afxdp_worker_received_packets",
            "Packets taken off the RX rings by each AF_XDP worker.",
            per_worker(|w| w.rx),
        );
        out.counter(
            "mediagate_afxdp_worker_sent_packets",
            "Packets transmitted by each AF_XDP worker.",
            per_worker(|w| w.tx),
        );
        out.counter(
            "mediagate_afxdp_worker_dropped_packets",
            "Packets dropped by each AF_XDP worker (reasons in mediagate_media_dropped_packets_total).",
            per_worker(|w| w.dropped),
        );
        out.counter(
            "mediagate_afxdp_worker_no_neighbour_packets",
            "Packets an AF_XDP worker sent through the kernel because the next hop's MAC was not known yet.",
            per_worker(|w| w.no_neighbour),
        );
        out.counter(
            "mediagate_afxdp_neighbour_probes",
            "Datagrams sent to make the kernel resolve a next hop for the AF_XDP workers.",
            [(vec![], s.dataplane.neighbour_probes)],
        );
        out.counter(
            "mediagate_capture_rtcp_skipped",
            "Relayed RTCP packets not exported over HEP because the data plane's hand-off queue to the control loop was full (the packets themselves were relayed).",
            [(vec![], s.dataplane.rtcp_copies_skipped)],
        );
        if let Some(h) = &s.dataplane.latency {
            out.registry.register_with_unit(
                "mediagate_relay_latency",
                help_text("Relay-added latency in the AF_XDP workers (RX ring to TX kick, one sample per batch weighted by its packets), from the workers' merged hdrhistogram (2 significant digits) at scrape time."),
                Unit::Seconds,
                HdrBuckets::from_histogram(h, &LATENCY_BUCKETS),
            );
        }
        self.render_quality(out);
        out.gauge(
            "mediagate_media_port_pairs",
            "RTP/RTCP port pairs (an even port and the next) of the media port pool, state=total or free.",
            [("total", s.ports.0), ("free", s.ports.1)]
                .map(|(k, n)| (vec![("state", k.to_string())], n as f64)),
        );
        out.gauge(
            "mediagate_media_streams",
            "Media streams the data plane holds now (including streams kept by delete delay).",
            [(vec![], self.streams.len() as f64)],
        );
    }
}

impl Metrics {
    fn render_quality(&self, out: &mut Out) {
        let q = &self.quality;
        out.counter(
            "mediagate_rtp_packets_lost",
            "RTP packets the peers of ended calls sent but mediagate never received (RFC 3550 A.1: expected from sequence numbers minus received), by the trunk of the leg.",
            q.lost
                .iter()
                .map(|(t, n)| (vec![("trunk", t.clone())], *n)),
        );
        out.registry.register_with_unit(
            "mediagate_rtp_jitter",
            help_text("RFC 3550 interarrival jitter of the RTP received from each leg of an ended call (the worst media line), observed once per leg at call end, by the trunk of the leg."),
            Unit::Seconds,
            q.jitter.clone(),
        );
        out.registry.register(
            "mediagate_rtp_mos",
            help_text("Estimated MOS (ITU-T G.107 E-model from loss and jitter, 1 to 4.5) of the RTP received from each leg of an ended call, observed once per leg at call end, by the trunk of the leg."),
            q.mos.clone(),
        );
    }
}

/// Trunk and peer gauges from the `/status` document (`trunks`), so that `/status` and
/// `/metrics` cannot disagree.
fn render_trunks(out: &mut Out, status: &Value) {
    let empty = Vec::new();
    let trunks = status["trunks"].as_array().unwrap_or(&empty);
    let name = |t: &Value| t["name"].as_str().unwrap_or_default().to_string();
    out.gauge(
        "mediagate_trunk_active_calls",
        "Calls occupying each trunk now (as counted for its limits).",
        trunks.iter().map(|t| {
            (
                vec![("trunk", name(t))],
                t["active_calls"].as_f64().unwrap_or(0.0),
            )
        }),
    );
    out.gauge(
        "mediagate_trunk_draining",
        "1 while a trunk is drained (no new calls to it), else 0.",
        trunks.iter().map(|t| {
            (
                vec![("trunk", name(t))],
                f64::from(u8::from(t["draining"].as_bool().unwrap_or(false))),
            )
        }),
    );
    let peers = || {
        trunks.iter().flat_map(|t| {
            t["peers"].as_array().into_iter().flatten().map(move |p| {
                let labels = vec![
                    ("trunk", name(t)),
                    (
                        "peer",
                        p["address"].as_str().unwrap_or_default().to_string(),
                    ),
                    (
                        "transport",
                        p["transport"]
                            .as_str()
                            .unwrap_or_default()
                            .to_ascii_lowercase(),
                    ),
                ];
                (labels, p)
            })
        })
    };
    out.gauge(
        "mediagate_trunk_peer_up",
        "1 while a trunk peer answers OPTIONS probes (or is not probed), 0 while it is down.",
        peers().map(|(l, p)| (l, f64::from(u8::from(p["state"] != "down")))),
    );
    out.gauge(
        "mediagate_trunk_peer_state",
        "Health state of each trunk peer: 1 for the current state (unprobed, up, down), 0 for the others.",
        peers().flat_map(|(l, p)| {
            ["unprobed", "up", "down"].map(|st| {
                let mut l = l.clone();
                l.push(("state", st.to_string()));
                (l, f64::from(u8::from(p["state"] == st)))
            })
        }),
    );
    out.gauge_unit(
        "mediagate_trunk_peer_rtt",
        Unit::Seconds,
        "Round-trip time of the last answered OPTIONS probe per trunk peer (absent before the first answer).",
        peers().filter_map(|(l, p)| p["rtt_ms"].as_f64().map(|ms| (l, ms / 1000.0))),
    );
    const REG_STATES: [&str; 6] = [
        "unregistered",
        "registering",
        "registered",
        "expired",
        "failed",
        "unregistering",
    ];
    out.gauge(
        "mediagate_trunk_registration_state",
        "Registration of trunks with a [trunk.register] section: 1 for the current state, 0 for the others.",
        trunks
            .iter()
            .filter(|t| t["registration"].is_object())
            .flat_map(|t| {
                let current = t["registration"]["state"].as_str().unwrap_or_default();
                REG_STATES.map(|st| {
                    (
                        vec![("trunk", name(t)), ("state", st.to_string())],
                        f64::from(u8::from(st == current)),
                    )
                })
            }),
    );
}

/// Everything the control loop reads at scrape time.
pub struct Sources<'a> {
    pub b2bua: B2buaCounters<'a>,
    pub ng: NgTotals,
    pub sip_active: usize,
    pub ng_active: usize,
    /// The `/status` document (its `trunks`).
    pub status: &'a Value,
    pub dataplane: &'a DataplaneSnapshot,
    /// Media port pairs (total, free).
    pub ports: (usize, usize),
    /// Input refused by the shell's front door: (protocol, reason, count).
    pub refused: &'a [(&'static str, &'static str, u64)],
}

type Labels = Vec<(&'static str, String)>;

/// A registry being filled for one scrape.
#[derive(Default)]
struct Out {
    registry: Registry,
}

impl Out {
    fn counter(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        let f = Family::<Labels, Counter<u64, AtomicU64>>::default();
        for (l, n) in rows {
            f.get_or_create(&l).inc_by(n);
        }
        self.registry.register(name, help_text(help), f);
    }

    fn counter_unit(
        &mut self,
        name: &str,
        unit: Unit,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let f = Family::<Labels, Counter<u64, AtomicU64>>::default();
        for (l, n) in rows {
            f.get_or_create(&l).inc_by(n);
        }
        self.registry
            .register_with_unit(name, help_text(help), unit, f);
    }

    fn gauge(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, f64)>) {
        self.registry.register(name, help_text(help), gauges(rows));
    }

    fn gauge_unit(
        &mut self,
        name: &str,
        unit: Unit,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        self.registry
            .register_with_unit(name, help_text(help), unit, gauges(rows));
    }
}

/// CPU time of each data-plane relay thread (its rate is the thread's utilisation).
fn render_relay_threads(out: &mut Out, threads: &[super::threads::ThreadCpu]) {
    let f = Family::<Labels, Counter<f64, AtomicU64>>::default();
    for t in threads {
        let labels = vec![("tier", t.tier.to_string()), ("thread", t.thread.clone())];
        f.get_or_create(&labels).inc_by(t.seconds);
    }
    out.registry.register_with_unit(
        "mediagate_dataplane_thread_cpu",
        help_text("CPU time of each data-plane relay thread (socket tier media-N, AF_XDP afxdp-N), from /proc at scrape time; its rate is the thread's utilisation."),
        Unit::Seconds,
        f,
    );
}

/// `prometheus-client` ends every HELP with a full stop of its own.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

fn gauges(rows: impl IntoIterator<Item = (Labels, f64)>) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (l, v) in rows {
        f.get_or_create(&l).set(v);
    }
    f
}

/// A Prometheus histogram with fixed buckets, filled from an hdrhistogram of nanoseconds at
/// scrape time (the hdrhistogram stays the data plane's record; this is a view of it).
#[derive(Debug, Clone, PartialEq)]
pub struct HdrBuckets {
    /// Sum of the samples, seconds.
    pub sum: f64,
    pub count: u64,
    /// (upper bound in seconds, samples in this bucket only); the last bound is `f64::MAX`
    /// (`+Inf`).
    pub buckets: Vec<(f64, u64)>,
}

impl HdrBuckets {
    /// Each recorded value goes to the first bucket whose bound is at least the value's
    /// highest equivalent (conservative: a sample is never reported faster than it was).
    pub fn from_histogram(h: &Histogram<u64>, bounds_s: &[f64]) -> Self {
        let mut buckets: Vec<(f64, u64)> = bounds_s
            .iter()
            .map(|b| (*b, 0))
            .chain([(f64::MAX, 0)])
            .collect();
        let mut sum_ns = 0f64;
        for v in h.iter_recorded() {
            let n = v.count_at_value();
            let ns = h.highest_equivalent(v.value_iterated_to());
            sum_ns += ns as f64 * n as f64;
            let s = ns as f64 / 1e9;
            let i = bounds_s
                .iter()
                .position(|b| s <= *b)
                .unwrap_or(bounds_s.len());
            buckets[i].1 += n;
        }
        HdrBuckets {
            sum: sum_ns / 1e9,
            count: h.len(),
            buckets,
        }
    }
}

impl EncodeMetric for HdrBuckets {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<()>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A strict reading of an exposition, for tests (unit and integration): OpenMetrics when it
/// ends with `# EOF`, else the classic text format. Every sample line must belong to a family
/// announced with `# TYPE` and `# HELP`, names must be valid and follow the type's suffix
/// rules (OpenMetrics counters: family `x`, samples `x_total`; classic: family and samples
/// `x_total`), label names must not repeat, and values must parse. Returns the samples as
/// `name{labels}` → value, labels sorted.
pub fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let openmetrics = text.ends_with("# EOF\n");
    let name_ok = |n: &str| {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    let mut eof = false;
    for (no, line) in text.lines().enumerate() {
        let err = |m: &str| format!("line {}: {m}: {line}", no + 1);
        if eof {
            return Err(err("text after # EOF"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) = (parts.next(), parts.next(), parts.next());
            let (Some(kind), Some(name)) = (kind, name) else {
                return Err(err("bad comment"));
            };
            if !name_ok(name) || !name.starts_with("mediagate_") {
                return Err(err("bad family name"));
            }
            match kind {
                "TYPE" => {
                    let t = arg.ok_or_else(|| err("TYPE without type"))?;
                    if !["counter", "gauge", "histogram"].contains(&t) {
                        return Err(err("unexpected type"));
                    }
                    if t == "counter" && openmetrics == name.ends_with("_total") {
                        return Err(err("counter family name and _total"));
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(err("second TYPE"));
                    }
                }
                "HELP" => {
                    let h = arg.unwrap_or_default();
                    if h.trim().is_empty() {
                        return Err(err("empty HELP"));
                    }
                    helps.insert(name.to_string(), h.to_string());
                }
                "UNIT" if openmetrics => {
                    let u = arg.ok_or_else(|| err("UNIT without unit"))?;
                    if !name.ends_with(&format!("_{u}")) {
                        return Err(err("name does not end with its unit"));
                    }
                }
                _ => return Err(err("unknown comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| err("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}').ok_or_else(|| err("unclosed labels"))?,
            ),
            None => (series, ""),
        };
        if !name_ok(name) {
            return Err(err("bad metric name"));
        }
        let family = types
            .iter()
            .filter(|(f, t)| {
                let suffixes: &[&str] = match t.as_str() {
                    "counter" if openmetrics => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| name == format!("{f}{s}"))
            })
            .map(|(f, _)| f.clone())
            .next()
            .ok_or_else(|| err("sample of no announced family (or wrong suffix)"))?;
        if !helps.contains_key(&family) {
            return Err(err("family without HELP"));
        }
        let mut pairs = Vec::new();
        if !labels.is_empty() {
            for pair in split_labels(labels).ok_or_else(|| err("bad labels"))? {
                let (k, v) = pair;
                if !name_ok(&k) || k.contains(':') {
                    return Err(err("bad label name"));
                }
                pairs.push(format!("{k}=\"{v}\""));
            }
        }
        pairs.sort();
        let names: Vec<&str> = pairs.iter().filter_map(|p| p.split('=').next()).collect();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(err("duplicate label name"));
        }
        let key = if pairs.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", pairs.join(","))
        };
        if samples.insert(key, value).is_some() {
            return Err(err("duplicate series"));
        }
    }
    if openmetrics != eof {
        return Err("# EOF not at the end".into());
    }
    if samples.is_empty() {
        return Err("no samples".into());
    }
    Ok(samples)
}

/// `a="x",b="y"` → pairs, honouring `\"` and `\\` escapes.
fn split_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, r) = rest.split_once("=\"")?;
        let mut v = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => {
                    let (_, e) = chars.next()?;
                    let _ = write!(v, "{}", if e == 'n' { '\n' } else { e });
                }
                '"' => break i,
                c => v.push(c),
            }
        };
        out.push((k.to_string(), v));
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdr::{CallTimes, Ending, MediaCounters};
    use crate::media::{Latch, StreamSpec};
    use crate::sip::transaction::Retransmissions;
    use std::time::{Instant, SystemTime};

    fn msg(text: &str) -> Message {
        Message::parse_datagram(text.replace('\n', "\r\n").as_bytes()).unwrap()
    }

    fn cdr(trunk: &str, code: u16) -> Cdr {
        Cdr {
            call: "c-1".into(),
            sip_call_id: "x".into(),
            times: CallTimes {
                start: SystemTime::now(),
                answer: None,
                end: SystemTime::now(),
            },
            trunk_in: trunk.into(),
            trunk_out: None,
            calling_in: "1".into(),
            called_in: "2".into(),
            calling_out: None,
            called_out: None,
            final_code: code,
            ending: Ending::CalleeRejected,
            attempts: vec![],
            media_in: MediaCounters::default(),
            media_out: MediaCounters::default(),
        }
    }

    /// An answered call from `pbx` to `itsp` whose legs carried RTP: 2 % loss and 3 ms
    /// jitter from the caller, none from the callee.
    fn answered_with_quality() -> Cdr {
        let leg = |lost: u64, loss: f64, jitter_ms: f64| MediaCounters {
            packets_lost: Some(lost),
            loss: Some(loss),
            jitter_ms: Some(jitter_ms),
            mos: Some(crate::media::quality::mos(loss, jitter_ms)),
            ..MediaCounters::default()
        };
        Cdr {
            trunk_out: Some("itsp".into()),
            media_in: leg(10, 0.02, 3.0),
            media_out: leg(0, 0.0, 0.4),
            ..cdr("pbx", 200)
        }
    }

    #[test]
    fn rtp_quality_of_ended_calls_per_trunk() {
        let mut m = Metrics::new();
        let none = render(&m, &DataplaneSnapshot::default());
        assert!(
            !none.lines().any(|l| l.starts_with("mediagate_rtp_")),
            "no series before a call ends:\n{none}"
        );
        m.calls_ended(&[
            answered_with_quality(),
            answered_with_quality(),
            cdr("pbx", 486),
        ]);
        let samples = parse_exposition(&render(&m, &DataplaneSnapshot::default())).unwrap();
        let get = |k: &str| samples.get(k).copied();
        assert_eq!(
            get(r#"mediagate_rtp_packets_lost_total{trunk="pbx"}"#),
            Some(20.0)
        );
        assert_eq!(
            get(r#"mediagate_rtp_packets_lost_total{trunk="itsp"}"#),
            Some(0.0)
        );
        // Two legs per trunk, the rejected call had no RTP; 3 ms is in the 5 ms bucket, not 2.5.
        assert_eq!(
            get(r#"mediagate_rtp_jitter_seconds_count{trunk="pbx"}"#),
            Some(2.0)
        );
        assert_eq!(
            get(r#"mediagate_rtp_jitter_seconds_bucket{le="0.0025",trunk="pbx"}"#),
            Some(0.0)
        );
        assert_eq!(
            get(r#"mediagate_rtp_jitter_seconds_bucket{le="0.005",trunk="pbx"}"#),
            Some(2.0)
        );
        assert_eq!(
            get(r#"mediagate_rtp_mos_bucket{le="4.4",trunk="itsp"}"#),
            Some(0.0),
            "a clean leg is above 4.4: {:?}",
            crate::media::quality::mos(0.0, 0.4)
        );
        assert_eq!(get(r#"mediagate_rtp_mos_count{trunk="itsp"}"#), Some(2.0));
    }

    fn stream(id: StreamId, stats: &Arc<StreamStats>) -> Command {
        Command::Add(StreamSpec {
            id,
            peer: id + 1,
            local: "10.0.0.1:30000".parse().unwrap(),
            latch: Latch::new(None, "10.0.0.2".parse().unwrap()),
            stats: stats.clone(),
            rtcp: false,
        })
    }

    fn render(m: &Metrics, dp: &DataplaneSnapshot) -> String {
        let status = serde_json::json!({"trunks": [
            {"name": "pbx", "active_calls": 2, "draining": false, "registration": null,
             "peers": [{"address": "10.0.0.2:5060", "transport": "UDP", "state": "up", "rtt_ms": 12.5}]},
            {"name": "itsp", "active_calls": 0, "draining": true,
             "registration": {"state": "registered"},
             "peers": [{"address": "192.0.2.1:5060", "transport": "TCP", "state": "down", "rtt_ms": null}]},
        ]});
        m.render(&Sources {
            b2bua: B2buaCounters {
                calls_started: vec![("pbx", 3), ("itsp", 0)],
                screened: Default::default(),
                retransmissions: Retransmissions {
                    requests_sent: 4,
                    responses_sent: 1,
                    requests_received: 2,
                },
                transactions: 5,
                calls: 1,
                dialogs: 2,
                relayed: 0,
                forks_unrelayed: 1,
            },
            ng: NgTotals {
                offers: 2,
                calls_created: 1,
                ..Default::default()
            },
            sip_active: 1,
            ng_active: 1,
            status: &status,
            dataplane: dp,
            ports: (100, 96),
            refused: &[("sip", "rate_limited", 7)],
        })
    }

    #[test]
    fn renders_counters_that_parse_back() {
        let mut m = Metrics::new();
        let invite = msg("INVITE sip:1@x SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
        let ok = msg("SIP/2.0 200 OK\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
        let odd = msg("FOO sip:1@x SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\nCSeq: 1 FOO\nContent-Length: 0\n\n");
        m.sip_message(Direction::Received, Transport::Udp, &invite);
        m.sip_message(Direction::Received, Transport::Udp, &invite);
        m.sip_message(Direction::Sent, Transport::Tcp, &ok);
        m.sip_message(Direction::Received, Transport::Udp, &odd);
        m.calls_ended(&[cdr("pbx", 200), cdr("pbx", 404), cdr("pbx", 200)]);
        let s = Arc::new(StreamStats::new(Instant::now(), None));
        m.media_command(&stream(10, &s));
        s.record_rx(5, 800, Instant::now());
        s.record_tx(4, 640);
        s.record_drop(DropReason::StrictSource);

        let mut h = crate::dataplane::afxdp::worker::new_latency_histogram();
        h.record_n(3_000, 10).unwrap(); // 3 µs
        h.record_n(40_000, 1).unwrap(); // 40 µs
        let dp = DataplaneSnapshot {
            tier: "afxdp",
            program_counters: vec![("forwarded", 7), ("drop_ttl", 1)],
            workers: vec![crate::dataplane::WorkerCounters {
                core: 1,
                iterations: 99,
                rx: 8,
                ..Default::default()
            }],
            neighbour_probes: 0,
            latency: Some(h),
            rtcp_copies_skipped: 0,
        };
        let text = render(&m, &dp);
        let p = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let classic = to_classic(&text);
        let c = parse_exposition(&classic).unwrap_or_else(|e| panic!("{e}\n{classic}"));
        assert_eq!(p, c, "both formats carry the same samples");
        assert!(classic.contains("# TYPE mediagate_sip_requests_total counter\n"));
        assert!(!classic.contains("# UNIT") && !classic.contains("# EOF"));
        promtool_check(&classic);
        let get = |k: &str| *p.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
        assert_eq!(get("mediagate_sip_requests_total{direction=\"received\",method=\"INVITE\",transport=\"udp\"}"), 2.0);
        assert_eq!(get("mediagate_sip_requests_total{direction=\"received\",method=\"other\",transport=\"udp\"}"), 1.0);
        assert_eq!(get("mediagate_sip_responses_total{code=\"200\",direction=\"sent\",method=\"INVITE\",transport=\"tcp\"}"), 1.0);
        assert_eq!(
            get("mediagate_calls_ended_total{code=\"200\",trunk=\"pbx\"}"),
            2.0
        );
        assert_eq!(
            get("mediagate_calls_ended_total{code=\"404\",trunk=\"pbx\"}"),
            1.0
        );
        assert_eq!(get("mediagate_calls_started_total{trunk=\"pbx\"}"), 3.0);
        assert_eq!(get("mediagate_calls_active{frontend=\"ng\"}"), 1.0);
        assert_eq!(
            get("mediagate_sip_retransmissions_total{direction=\"sent\",kind=\"request\"}"),
            4.0
        );
        assert_eq!(
            get("mediagate_media_packets_total{direction=\"received\",tier=\"socket\"}"),
            5.0
        );
        assert_eq!(
            get("mediagate_media_bytes_total{direction=\"sent\",tier=\"socket\"}"),
            640.0
        );
        assert_eq!(
            get("mediagate_media_dropped_packets_total{reason=\"strict_source\",tier=\"socket\"}"),
            1.0
        );
        assert_eq!(
            get("mediagate_media_dropped_packets_total{reason=\"ttl\",tier=\"kernel\"}"),
            1.0
        );
        assert_eq!(
            get("mediagate_xdp_packets_total{outcome=\"forwarded\"}"),
            7.0
        );
        assert_eq!(
            get("mediagate_afxdp_worker_iterations_total{core=\"1\"}"),
            99.0
        );
        assert_eq!(
            get(
                "mediagate_trunk_peer_up{peer=\"192.0.2.1:5060\",transport=\"tcp\",trunk=\"itsp\"}"
            ),
            0.0
        );
        assert_eq!(get("mediagate_trunk_peer_rtt_seconds{peer=\"10.0.0.2:5060\",transport=\"udp\",trunk=\"pbx\"}"), 0.0125);
        assert_eq!(get("mediagate_trunk_draining{trunk=\"itsp\"}"), 1.0);
        assert_eq!(
            get("mediagate_trunk_registration_state{state=\"registered\",trunk=\"itsp\"}"),
            1.0
        );
        assert!(!p
            .keys()
            .any(|k| k.starts_with("mediagate_trunk_registration_state") && k.contains("pbx")));
        assert_eq!(get("mediagate_media_port_pairs{state=\"free\"}"), 96.0);
        // The histogram: 10 samples of 3 µs in le=5e-6, cumulative 11 by le=50e-6.
        assert_eq!(get("mediagate_relay_latency_seconds_count"), 11.0);
        assert_eq!(
            get("mediagate_relay_latency_seconds_bucket{le=\"0.0000025\"}"),
            0.0
        );
        assert_eq!(
            get("mediagate_relay_latency_seconds_bucket{le=\"0.000005\"}"),
            10.0
        );
        assert_eq!(
            get("mediagate_relay_latency_seconds_bucket{le=\"0.00005\"}"),
            11.0
        );
        assert_eq!(
            get("mediagate_relay_latency_seconds_bucket{le=\"+Inf\"}"),
            11.0
        );
        let sum = get("mediagate_relay_latency_seconds_sum");
        assert!((sum - 70e-6).abs() < 1e-6, "{sum}");

        // A removed stream's counts stay in the totals; later packets to it are not counted.
        m.media_command(&Command::Remove(10));
        s.record_rx(100, 100, Instant::now());
        let p = parse_exposition(&render(&m, &dp)).unwrap();
        assert_eq!(
            p["mediagate_media_packets_total{direction=\"received\",tier=\"socket\"}"],
            5.0
        );
        assert_eq!(p["mediagate_media_streams"], 0.0);
    }

    /// `promtool check metrics` (Debian `prometheus`, installed by `scripts/install-deps`) on
    /// the classic text, when promtool is there; the integration test requires it.
    fn promtool_check(classic: &str) {
        use std::io::Write;
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(classic.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{classic}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn every_family_has_help_and_a_conventional_name() {
        let text = render(&Metrics::new(), &DataplaneSnapshot::default());
        parse_exposition(&text).unwrap();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut w = line.split(' ').skip(2);
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            assert!(name.starts_with("mediagate_"), "{line}");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
            assert!(
                !name.ends_with("_total"),
                "{line}: the suffix is the sample's"
            );
            assert!(
                !name.contains("_ms") && !name.contains("millis"),
                "{line}: base units"
            );
            if kind == "counter" {
                assert!(
                    text.contains(&format!("\n{name}_total"))
                        || !text.contains(&format!("\n{name}{{")),
                    "{line}"
                );
            }
        }
    }

    /// Every family is in README's table, and the example dashboard uses only real series.
    #[test]
    fn readme_and_dashboard_match_the_exposition() {
        let dp = DataplaneSnapshot {
            tier: "afxdp",
            program_counters: vec![("forwarded", 1)],
            workers: vec![crate::dataplane::WorkerCounters::default()],
            latency: Some(crate::dataplane::afxdp::worker::new_latency_histogram()),
            ..Default::default()
        };
        let mut m = Metrics::new();
        m.calls_ended(&[answered_with_quality()]);
        let invite = msg("INVITE sip:1@x SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
        let ok = msg("SIP/2.0 200 OK\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
        m.sip_message(Direction::Received, Transport::Udp, &invite);
        m.sip_message(Direction::Sent, Transport::Udp, &ok);
        let text = to_classic(&render(&m, &dp));
        let samples = parse_exposition(&text).unwrap();
        let readme = include_str!("../../README.md");
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            let short = name.strip_prefix("mediagate_afxdp_worker").unwrap_or(name);
            assert!(
                readme.contains(&format!("`{name}`")) || readme.contains(&format!("`{short}`")),
                "README does not list {name}"
            );
        }
        let dashboard = include_str!("../../docs/grafana-dashboard.json");
        let re = regex::Regex::new(r"mediagate_[a-z_]+").unwrap();
        for m in re.find_iter(dashboard) {
            let name = m.as_str();
            assert!(
                samples.keys().any(|k| k.split('{').next() == Some(name)),
                "the dashboard uses {name}, which is not exported"
            );
        }
    }

    #[test]
    fn strict_parser_rejects_what_prometheus_would() {
        let ok = "# HELP mediagate_x X.\n# TYPE mediagate_x counter\nmediagate_x_total 1\n# EOF\n";
        assert!(parse_exposition(ok).is_ok());
        assert!(parse_exposition(&to_classic(ok)).is_ok());
        assert!(parse_exposition(
            "# HELP mediagate_x X.\n# TYPE mediagate_x counter\nmediagate_x_total 1\n"
        )
        .is_err());
        for bad in [
            "# TYPE mediagate_x counter\nmediagate_x_total 1\n# EOF\n",
            "# HELP mediagate_x X.\n# TYPE mediagate_x counter\nmediagate_x 1\n# EOF\n",
            "# HELP mediagate_x X.\n# TYPE mediagate_x counter\nmediagate_x_total one\n# EOF\n",
            "# HELP mediagate_x X.\n# TYPE mediagate_x counter\nmediagate_x_total 1\n",
            "# HELP mediagate_x X.\n# TYPE mediagate_x gauge\nmediagate_x{a=\"1\",a=\"1\"} 1\nmediagate_x{a=\"1\"} 1\n# EOF\n",
        ] {
            assert!(parse_exposition(bad).is_err(), "{bad}");
        }
    }
}
