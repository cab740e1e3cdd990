//! TOML configuration: schema, defaults and validation.
//!
//! Every error names the file, the line and the key (`FILE:LINE: key: what is wrong`) so an
//! operator can fix a bad file without reading source code. Parsing happens in two passes: serde
//! into raw structs (type errors, unknown keys), then validation into the typed [`Config`] the rest
//! of the program uses (addresses, ranges, regexes, cross references between trunks and routes).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

mod abuse;
mod capture;
mod identity;
pub mod live;
mod log;
mod peers;
mod routing;
pub use abuse::{AllowList, SourceLimit, Unknown};
mod tls;
pub use capture::{CaptureConfig, TrunkCapture};
pub use identity::{Credentials, Identity, Register, Secret};
pub use log::{LogConfig, LogFormat};
pub use peers::{NamedPeer, PeerSpec};
pub use routing::{
    Direction, HeaderAction, HeaderPolicy, NumberField, TranslateRule, TrunkPolicy, POLICY_HEADERS,
};
pub use tls::{TlsMaterial, TrunkTls};

/// The smallest session interval (RFC 4028 Min-SE) mediagate asks for or accepts, in seconds:
/// the RFC's recommended floor, so a refresh costs little and a dead peer is found in minutes.
pub const MIN_SESSION_TIMER_S: u64 = 90;

/// The configuration used when no `--config` is given: loopback only, no trunks, so it accepts
/// calls from no one. It exists so that a bare start shows a working process, not a surprise.
pub const EMBEDDED_DEFAULT: &str = r#"
[sip]
listen = ["udp:127.0.0.1:5060"]

[media]
ports = "30000-30999"
dataplane = "auto"

[control]
http = "127.0.0.1:9100"
"#;

/// A SIP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 §26.2; Via `SIP/2.0/TLS`, `;transport=tls` URIs).
    Tls,
}

impl Transport {
    /// The lower-case name used in config addresses, URI `transport=` parameters and metric
    /// labels.
    pub fn lower(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The transport named `udp`, `tcp` or `tls`.
    pub fn from_lower(s: &str) -> Option<Transport> {
        [Transport::Udp, Transport::Tcp, Transport::Tls]
            .into_iter()
            .find(|t| t.lower() == s)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        })
    }
}

/// A transport-qualified socket address as written in the config (`udp:10.0.0.1:5060`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (proto, rest) = s.split_once(':').ok_or_else(|| {
            format!("`{s}` is not of the form udp:IP:PORT, tcp:IP:PORT or tls:IP:PORT")
        })?;
        let transport = Transport::from_lower(proto)
            .ok_or_else(|| format!("unknown transport `{proto}` (expected udp, tcp or tls)"))?;
        let addr = rest
            .parse()
            .map_err(|_| format!("`{rest}` is not an IP:PORT socket address"))?;
        Ok(Endpoint { transport, addr })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport.lower(), self.addr)
    }
}

/// Which media forwarding tier to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataplane {
    /// Pick the best tier this machine offers: kernel, else socket.
    Auto,
    /// Plain UDP sockets with batched `recvmmsg`/`sendmmsg`.
    Socket,
    /// The in-kernel XDP tier (with the socket tier as its slow path).
    Kernel,
    /// The XDP program hands every stream packet to pinned AF_XDP relay loops.
    Afxdp,
}

/// How a trunk's peers share its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The first peer that is not down takes every call; the others are its failover.
    #[default]
    Priority,
    /// Peers take turns.
    RoundRobin,
    /// Peers take calls in proportion to their `weights` (smooth weighted round robin).
    Weighted,
}

/// What a 3xx answer from a trunk does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Redirect {
    /// Send the INVITE to the first `sip:` Contact of the redirect (same trunk, same local
    /// socket), as one more attempt.
    Follow,
    /// Relay the 3xx to the caller unchanged (its Contact reveals the trunk's target).
    Pass,
    /// Treat it as a failed attempt: try the next peer or trunk, else answer the caller 480.
    #[default]
    Reject,
}

/// What a REFER (call transfer, RFC 3515) from a trunk's peer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Refer {
    /// Relay it on the other leg (its Refer-To and Referred-By kept, with mediagate's address
    /// in place of addresses of the sender's side), and the transfer's NOTIFYs back.
    Pass,
    /// Answer 403: transfers stay with the party that may be billed for them.
    #[default]
    Reject,
}

/// OPTIONS keepalive of a trunk's peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub interval: Duration,
    /// A probe without a final response within this time counts as a failure.
    pub timeout: Duration,
    /// Consecutive failures that take an up (or unprobed) peer down.
    pub down_after: u32,
    /// Consecutive successes that bring a down peer up.
    pub up_after: u32,
}

/// Whether a trunk faces the LAN (IP-PBX, PSTN gateway) or an Internet telephony provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkKind {
    Lan,
    Itsp,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub sip: SipConfig,
    pub media: MediaConfig,
    pub control: ControlConfig,
    pub trunks: Vec<Trunk>,
    pub routes: Vec<Route>,
    /// Call detail records (`[cdr]`); `None` when the section is absent: no CDRs are written.
    pub cdr: Option<CdrConfig>,
    /// `[log]`: format, level, redaction.
    pub log: LogConfig,
    /// `[capture]`: HEP export of SIP messages.
    pub capture: CaptureConfig,
}

#[derive(Debug, Clone)]
pub struct SipConfig {
    pub listen: Vec<Endpoint>,
    /// Concurrent calls beyond which new INVITEs get 503.
    pub max_calls: usize,
    /// New calls per second accepted in all (token bucket, burst of one second's worth).
    pub max_cps: Option<f64>,
    /// Dialled numbers (Request-URI user part as received) that are emergency calls: they bypass
    /// deny-lists and limits (see `sip::policy::is_emergency`).
    pub emergency: Vec<Regex>,
    /// Requests from addresses that are no trunk peer: 403 or silence (`unknown`).
    pub unknown: Unknown,
    /// SIP messages accepted per source IP (`rate_per_source` / `burst_per_source`).
    pub per_source: Option<SourceLimit>,
    /// `[sip.tls]`: certificate, key and trust anchors; `None` when the section is absent.
    pub tls: Option<TlsMaterial>,
    /// CRLF keep-alive interval on the TCP and TLS connections mediagate opens (RFC 5626
    /// §4.4.1, `keepalive_s`); `None` when 0.
    pub keepalive: Option<Duration>,
    /// DNS servers for trunk peers given by name (`dns_servers`); empty: the system's
    /// (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// First RTP port (even) and the last usable port of the range.
    pub port_first: u16,
    pub port_last: u16,
    pub dataplane: Dataplane,
    /// No media in either direction for this long ends the call.
    pub timeout: Duration,
    /// The same for a held call (every media line `inactive`, `sendonly`/`recvonly` or
    /// `c=0.0.0.0` in the latest offer or answer): `hold_timeout_s`.
    pub hold_timeout: Duration,
    /// Socket relay threads.
    pub threads: usize,
    /// UDP payloads larger than this are dropped by every tier (`max_packet_bytes`).
    pub max_packet: usize,
    /// CPUs of the AF_XDP workers, one pinned worker each.
    pub cores: Vec<usize>,
    /// AF_XDP workers spin without sleeping (`busy`) or sleep in `poll` when idle (`wakeup`).
    pub busy_poll: bool,
    /// Named media addresses (`[[media.interface]]`).
    pub interfaces: Vec<MediaInterface>,
    /// Calls survive a restart (`handover`): confirmed calls are journalled to `state_file`
    /// and adopted by the next start, and the XDP program's pins are left in bpffs on exit.
    pub handover: bool,
    /// The call-state journal a restart adopts calls from (`state_file`).
    pub state_file: PathBuf,
    /// The bpffs directory the XDP program's maps and links are pinned in for handover
    /// (`pin_dir`): one per mediagate instance, so two instances never adopt each other's.
    pub pin_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Where `GET /status` is served; `None` disables the HTTP endpoint.
    pub http: Option<SocketAddr>,
    /// UDP address of the rtpengine NG control protocol; `None` disables it.
    pub ng: Option<SocketAddr>,
    /// How long a deleted NG call keeps forwarding when the request names no `delete-delay`.
    pub delete_delay: Duration,
    /// On SIGTERM, how long calls up may go on before they are hung up.
    pub shutdown_grace: Duration,
    /// NG commands accepted per source IP (`rate_per_source` / `burst_per_source`).
    pub per_source: Option<SourceLimit>,
    /// Who may reach the NG socket and the HTTP endpoint (`allow`); `None`: anyone who can
    /// reach the address, which config validation permits only on loopback.
    pub allow: Option<AllowList>,
}

/// Where and how call detail records are written (`[cdr]`, see [`crate::cdr::CdrWriter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrConfig {
    /// The JSON-lines file; its directory must exist (it is not created, so a typo fails at
    /// start-up instead of writing records somewhere nobody looks).
    pub path: PathBuf,
    /// Size beyond which the file is rotated, in bytes (`max_mb` MiB in the config).
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` … `PATH.keep`).
    pub keep: u32,
}

/// A named media address, for NG `direction` / `from-interface` / `to-interface`. A name can
/// have one address per family; NG `address family` chooses between them.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInterface {
    pub name: String,
    pub address: std::net::IpAddr,
    /// What SDP says for this interface (1:1 NAT); the address itself when absent.
    pub advertise: Option<std::net::IpAddr>,
    /// The network device XDP attaches to for this address; the device holding it when absent.
    pub device: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Trunk {
    pub name: String,
    pub kind: TrunkKind,
    /// The peers calls go to and requests are recognised from. At start these are the
    /// addresses of `peer_specs`; with host names among them, the DNS resolver replaces the
    /// list with every resolved target in RFC 3263 order (`B2bua::set_peers`).
    pub peers: Vec<Endpoint>,
    /// The peers as configured: addresses and host names, in config order.
    pub peer_specs: Vec<PeerSpec>,
    /// The listen socket that faces this trunk; its IP is advertised in SDP toward the trunk.
    pub local: Endpoint,
    pub strategy: Strategy,
    /// One per peer, for [`Strategy::Weighted`] (all 1 otherwise).
    pub weights: Vec<u32>,
    /// OPTIONS keepalive; `None`: peers are never probed and always tried.
    pub probe: Option<Probe>,
    /// A peer that sends nothing (not even 100 Trying) within this time is given up on.
    pub invite_timeout: Duration,
    /// Final responses after which the next peer, then the next trunk, is tried.
    pub failover_on: Vec<u16>,
    pub redirect: Redirect,
    /// REFERs from this trunk's peers (`refer`).
    pub refer: Refer,
    /// Concurrent calls through this trunk (either direction).
    pub max_calls: Option<usize>,
    /// New calls per second through this trunk (either direction).
    pub max_cps: Option<f64>,
    /// Calls through this trunk are hung up (BYE both legs) after this long answered.
    pub max_duration: Option<Duration>,
    /// RFC 4028 session interval asked for on legs toward this trunk (`session_timer_s`);
    /// `None`: mediagate asks for none (it still honours a peer's own request).
    pub session_timer: Option<Duration>,
    /// Early dialogs of a forked call toward this trunk relayed to the caller
    /// (`max_early_dialogs`): a proxy behind the trunk may fork to many phones, and each
    /// relayed fork is an early dialog the caller has to keep.
    pub max_early_dialogs: usize,
    /// Number translation, response mapping, deny-list and header policy.
    pub policy: TrunkPolicy,
    /// Digest credentials, inbound challenge and registration (`auth`, `challenge_inbound`,
    /// `register`).
    pub identity: Identity,
    /// Encoding names (`PCMA`, `telephone-event`, ...) offers toward this trunk are reduced to,
    /// in this order of preference; empty: offers pass with every payload type.
    pub codecs: Vec<String>,
    /// `tls_name` and `tls_client_auth`, for the trunk's `tls:` peers.
    pub tls: TrunkTls,
    /// `hep`: where the SIP messages with this trunk's peers are captured.
    pub hep: TrunkCapture,
    /// Removed from the file by a reload (SIGHUP) while calls still used it: it stays in its
    /// slot only so that those calls finish; it takes no new call, is not probed nor
    /// registered, and is left out of `/status` and `/metrics` (see `config::live`). Never set
    /// by a parsed file.
    pub retired: bool,
    /// The address written instead of `local`'s IP into Via, Contact and SDP toward this trunk
    /// (`advertise`): mediagate's public address when it sits behind a 1:1 NAT on this side.
    pub advertise: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Indexes into [`Config::trunks`] of the trunks whose calls this route takes.
    pub from: Vec<usize>,
    /// Matched against the called number (after the source trunk's inbound translation).
    pub called: Regex,
    /// Matched against the calling number (after inbound translation); any when absent.
    pub calling: Option<Regex>,
    /// Called numbers this route refuses with 403 (unless emergency).
    pub deny: Vec<Regex>,
    /// Trunks tried in order.
    pub to: Vec<usize>,
}

/// A configuration error pointing at the offending file, line and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    sip: RawSip,
    media: RawMedia,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    trunk: Vec<RawTrunk>,
    #[serde(default)]
    route: Vec<RawRoute>,
    cdr: Option<RawCdr>,
    #[serde(default)]
    log: log::RawLog,
    #[serde(default)]
    capture: capture::RawCapture,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    listen: Vec<String>,
    #[serde(default = "default_max_calls")]
    max_calls: usize,
    max_cps: Option<f64>,
    #[serde(default)]
    emergency: Vec<String>,
    unknown: Option<String>,
    rate_per_source: Option<f64>,
    burst_per_source: Option<f64>,
    tls: Option<tls::RawTls>,
    #[serde(default = "default_keepalive")]
    keepalive_s: u64,
    #[serde(default)]
    dns_servers: Vec<String>,
}

fn default_keepalive() -> u64 {
    30
}
/// Longest `sip.keepalive_s`.
const KEEPALIVE_MAX: u64 = 3600;

fn default_max_calls() -> usize {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    ports: String,
    #[serde(default = "default_dataplane")]
    dataplane: String,
    #[serde(default = "default_timeout")]
    timeout_s: u64,
    #[serde(default = "default_hold_timeout")]
    hold_timeout_s: u64,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_cores")]
    cores: Vec<usize>,
    #[serde(default = "default_poll")]
    poll: String,
    #[serde(default)]
    interface: Vec<RawInterface>,
    #[serde(default = "default_max_packet")]
    max_packet_bytes: usize,
    #[serde(default)]
    handover: bool,
    #[serde(default = "default_state_file")]
    state_file: String,
    #[serde(default = "default_pin_dir")]
    pin_dir: String,
}

fn default_pin_dir() -> String {
    format!("{}/mediagate", crate::dataplane::kernel::pin::BPFFS)
}

fn default_state_file() -> String {
    "/var/lib/mediagate/calls.state".into()
}

fn default_max_packet() -> usize {
    1500
}
/// The range of `media.max_packet_bytes`: an RTCP header at least, and no more than the user-space
/// tiers' receive buffers hold.
pub const MAX_PACKET_RANGE: std::ops::RangeInclusive<usize> = 64..=2048;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: String,
    address: String,
    advertise: Option<String>,
    device: Option<String>,
}

fn default_cores() -> Vec<usize> {
    vec![0]
}
fn default_poll() -> String {
    "wakeup".into()
}

fn default_dataplane() -> String {
    "auto".into()
}
fn default_timeout() -> u64 {
    30
}
fn default_hold_timeout() -> u64 {
    3600
}
fn default_threads() -> usize {
    1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    http: Option<String>,
    ng: Option<String>,
    #[serde(default)]
    delete_delay_s: u64,
    #[serde(default = "default_shutdown_grace")]
    shutdown_grace_s: u64,
    rate_per_source: Option<f64>,
    burst_per_source: Option<f64>,
    allow: Option<Vec<String>>,
}

fn default_shutdown_grace() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrunk {
    name: String,
    kind: TrunkKind,
    peers: Vec<String>,
    local: String,
    #[serde(default)]
    strategy: Strategy,
    weights: Option<Vec<u32>>,
    #[serde(default)]
    options_interval_s: u64,
    #[serde(default = "default_options_timeout")]
    options_timeout_s: u64,
    #[serde(default = "default_down_after")]
    down_after: u32,
    #[serde(default = "default_up_after")]
    up_after: u32,
    #[serde(default = "default_invite_timeout")]
    invite_timeout_s: u64,
    failover_on: Option<Vec<u16>>,
    #[serde(default)]
    redirect: Redirect,
    #[serde(default)]
    refer: Refer,
    max_calls: Option<usize>,
    max_cps: Option<f64>,
    max_duration_s: Option<u64>,
    session_timer_s: Option<u64>,
    #[serde(default = "default_max_early_dialogs")]
    max_early_dialogs: i64,
    #[serde(default)]
    translate: Vec<routing::RawTranslate>,
    #[serde(default)]
    response_map: Vec<routing::RawResponseMap>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    headers: routing::RawHeaders,
    auth: Option<identity::RawAuth>,
    #[serde(default)]
    challenge_inbound: bool,
    register: Option<identity::RawRegister>,
    #[serde(default)]
    codecs: Vec<String>,
    tls_name: Option<String>,
    #[serde(default)]
    tls_client_auth: bool,
    hep: Option<capture::RawTrunkHep>,
    advertise: Option<String>,
}

fn default_options_timeout() -> u64 {
    3
}
fn default_down_after() -> u32 {
    3
}
fn default_up_after() -> u32 {
    2
}
fn default_max_early_dialogs() -> i64 {
    8
}

fn default_invite_timeout() -> u64 {
    5
}
/// Responses after which a call moves on to the next peer or trunk, unless a trunk says otherwise.
pub const DEFAULT_FAILOVER_ON: [u16; 6] = [408, 480, 500, 502, 503, 504];

/// A calls-per-second limit must be a positive, finite number.
fn check_cps(v: f64) -> Result<f64, String> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a positive number of calls per second"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCdr {
    path: String,
    #[serde(default = "default_cdr_max_mb")]
    max_mb: u64,
    #[serde(default = "default_cdr_keep")]
    keep: u32,
}

fn default_cdr_max_mb() -> u64 {
    100
}
fn default_cdr_keep() -> u32 {
    5
}
/// Largest `cdr.max_mb` (1 TiB): keeps the byte count far from overflow.
const CDR_MAX_MB: u64 = 1 << 20;
/// Largest `cdr.keep`: rotation renames every kept file, so the count stays small.
const CDR_MAX_KEEP: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    from: Vec<String>,
    #[serde(rename = "match")]
    called: String,
    match_calling: Option<String>,
    #[serde(default)]
    deny: Vec<String>,
    to: Vec<String>,
}

/// One step of a key path: a table key or an array index.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Maps key paths to line numbers in the source text, for error messages.
struct Locator<'a> {
    text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: toml_edit::ImDocument::parse(text).ok(),
        }
    }

    fn line_of_offset(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// The line of the value at `path`, or of its closest existing parent; 1 when unknown.
    fn line(&self, path: &[Seg]) -> usize {
        let Some(doc) = &self.doc else { return 1 };
        let mut item: &toml_edit::Item = doc.as_item();
        let mut best = None;
        for seg in path {
            let next = match seg {
                Seg::Key(k) => item.get(*k),
                Seg::Index(i) => match item {
                    toml_edit::Item::ArrayOfTables(a) => a.get(*i).map(|_| &item[*i]),
                    _ => item.get(*i),
                },
            };
            match next {
                Some(n) => {
                    item = n;
                    let span = match n {
                        toml_edit::Item::Table(t) => t.span(),
                        other => other.span(),
                    };
                    if let Some(s) = span {
                        best = Some(s.start);
                    }
                }
                None => break,
            }
        }
        best.map_or(1, |o| self.line_of_offset(o))
    }
}

fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: name.clone(),
        line: 0,
        key: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&name, &text)
}

/// Parses and validates config text; `file` is used only in error messages.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let loc = Locator::new(text);
    let err = |path: &[Seg], message: String| ConfigError {
        file: file.to_string(),
        line: loc.line(path),
        key: path_string(path),
        message,
    };
    let raw: RawConfig =
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map_or(1, |s| loc.line_of_offset(s.start));
            ConfigError {
                file: file.to_string(),
                line,
                key: if key == "." { "(document)".into() } else { key },
                message: inner.message().to_string(),
            }
        })?;

    let mut listen = Vec::new();
    for (i, l) in raw.sip.listen.iter().enumerate() {
        listen.push(
            l.parse::<Endpoint>()
                .map_err(|m| err(&[Seg::Key("sip"), Seg::Key("listen"), Seg::Index(i)], m))?,
        );
    }
    if listen.is_empty() {
        return Err(err(
            &[Seg::Key("sip"), Seg::Key("listen")],
            "at least one listen address is required".into(),
        ));
    }
    let tls = raw
        .sip
        .tls
        .as_ref()
        .map(|t| tls::material(t, file, &[Seg::Key("sip"), Seg::Key("tls")], &err))
        .transpose()?;
    if let Some(i) = listen.iter().position(|l| l.transport == Transport::Tls) {
        if tls.as_ref().is_none_or(|t| t.identity.is_none()) {
            return Err(err(
                &[Seg::Key("sip"), Seg::Key("listen"), Seg::Index(i)],
                "a tls: listener needs [sip.tls] cert and key".into(),
            ));
        }
    }
    if raw.sip.keepalive_s > KEEPALIVE_MAX {
        return Err(err(
            &[Seg::Key("sip"), Seg::Key("keepalive_s")],
            format!("must be 0 (off) to {KEEPALIVE_MAX} seconds"),
        ));
    }
    if raw.sip.max_calls == 0 {
        return Err(err(
            &[Seg::Key("sip"), Seg::Key("max_calls")],
            "must be at least 1".into(),
        ));
    }

    let emergency = routing::regex_list(
        &raw.sip.emergency,
        &[Seg::Key("sip"), Seg::Key("emergency")],
        &err,
    )?;

    let ports_path = [Seg::Key("media"), Seg::Key("ports")];
    let (port_first, port_last) =
        parse_port_range(&raw.media.ports).map_err(|m| err(&ports_path, m))?;
    let dataplane = match raw.media.dataplane.as_str() {
        "auto" => Dataplane::Auto,
        "socket" => Dataplane::Socket,
        "kernel" => Dataplane::Kernel,
        "afxdp" => Dataplane::Afxdp,
        other => {
            return Err(err(
                &[Seg::Key("media"), Seg::Key("dataplane")],
                format!(
                    "unknown data plane `{other}` (expected \"auto\", \"socket\", \"kernel\" or \"afxdp\")"
                ),
            ))
        }
    };
    if raw.media.cores.is_empty() || raw.media.cores.iter().any(|c| *c >= 1024) {
        return Err(err(
            &[Seg::Key("media"), Seg::Key("cores")],
            "must list at least one CPU number (0-1023)".into(),
        ));
    }
    let busy_poll = match raw.media.poll.as_str() {
        "busy" => true,
        "wakeup" => false,
        other => {
            return Err(err(
                &[Seg::Key("media"), Seg::Key("poll")],
                format!("unknown poll mode `{other}` (expected \"busy\" or \"wakeup\")"),
            ))
        }
    };
    if raw.media.timeout_s == 0 {
        return Err(err(
            &[Seg::Key("media"), Seg::Key("timeout_s")],
            "must be at least 1 second".into(),
        ));
    }
    if raw.media.hold_timeout_s == 0 || raw.media.hold_timeout_s > 86_400 {
        return Err(err(
            &[Seg::Key("media"), Seg::Key("hold_timeout_s")],
            "must be between 1 and 86400 seconds".into(),
        ));
    }
    if raw.media.state_file.trim().is_empty() || raw.media.state_file.ends_with('/') {
        return Err(err(
            &[Seg::Key("media"), Seg::Key("state_file")],
            "must name the call-state file".into(),
        ));
    }
    let pin_dir = std::path::Path::new(&raw.media.pin_dir);
    if !pin_dir.is_absolute()
        || pin_dir.parent().is_none()
        || pin_dir.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::RootDir
            )
        })
    {
        return Err(err(
            &[Seg::Key("media"), Seg::Key("pin_dir")],
            "must be an absolute directory path on bpffs (not `/`, without `..`)".into(),
        ));
    }
    if !MAX_PACKET_RANGE.contains(&raw.media.max_packet_bytes) {
        return Err(err(
            &[Seg::Key("media"), Seg::Key("max_packet_bytes")],
            format!(
                "must be between {} and {} bytes",
                MAX_PACKET_RANGE.start(),
                MAX_PACKET_RANGE.end()
            ),
        ));
    }
    if raw.media.threads == 0 || raw.media.threads > 64 {
        return Err(err(
            &[Seg::Key("media"), Seg::Key("threads")],
            "must be between 1 and 64".into(),
        ));
    }

    let http = match &raw.control.http {
        None => None,
        Some(h) => Some(h.parse().map_err(|_| {
            err(
                &[Seg::Key("control"), Seg::Key("http")],
                format!("`{h}` is not an IP:PORT socket address"),
            )
        })?),
    };

    let ng = match &raw.control.ng {
        None => None,
        Some(h) => Some(h.parse().map_err(|_| {
            err(
                &[Seg::Key("control"), Seg::Key("ng")],
                format!("`{h}` is not an IP:PORT socket address"),
            )
        })?),
    };
    let (unknown, sip_per_source) = abuse::sip(
        abuse::RawSipAbuse {
            unknown: raw.sip.unknown.as_deref(),
            rate_per_source: raw.sip.rate_per_source,
            burst_per_source: raw.sip.burst_per_source,
        },
        &err,
    )?;
    let (ng_per_source, allow) = abuse::control(
        abuse::RawControlAbuse {
            rate_per_source: raw.control.rate_per_source,
            burst_per_source: raw.control.burst_per_source,
            allow: raw.control.allow.as_deref(),
            http,
            ng,
        },
        &err,
    )?;
    let mut interfaces: Vec<MediaInterface> = Vec::new();
    for (i, m) in raw.media.interface.iter().enumerate() {
        let at = |key| {
            [
                Seg::Key("media"),
                Seg::Key("interface"),
                Seg::Index(i),
                Seg::Key(key),
            ]
        };
        let ip = |key, v: &str| {
            v.parse::<std::net::IpAddr>()
                .map_err(|_| err(&at(key), format!("`{v}` is not an IP address")))
        };
        let address = ip("address", &m.address)?;
        // A name may appear once per address family (rtpengine's dual-stack logical interface:
        // NG `address family` picks the IPv4 or the IPv6 address).
        let taken = interfaces
            .iter()
            .any(|o| o.name == m.name && o.address.is_ipv4() == address.is_ipv4());
        if m.name.is_empty() || taken {
            return Err(err(
                &at("name"),
                format!(
                    "interface name `{}` is empty or used twice for one address family",
                    m.name
                ),
            ));
        }
        let advertise = m
            .advertise
            .as_deref()
            .map(|a| ip("advertise", a))
            .transpose()?;
        if advertise.is_some_and(|a| a.is_ipv4() != address.is_ipv4()) {
            return Err(err(
                &at("advertise"),
                "advertise must be of the address's family".to_string(),
            ));
        }
        interfaces.push(MediaInterface {
            name: m.name.clone(),
            address,
            advertise,
            device: m.device.clone(),
        });
    }

    let mut trunks: Vec<Trunk> = Vec::new();
    for (i, t) in raw.trunk.iter().enumerate() {
        let at = |key| [Seg::Key("trunk"), Seg::Index(i), Seg::Key(key)];
        if t.name.is_empty() || trunks.iter().any(|o| o.name == t.name) {
            return Err(err(
                &at("name"),
                format!("trunk name `{}` is empty or used twice", t.name),
            ));
        }
        if t.peers.is_empty() {
            return Err(err(&at("peers"), "a trunk needs at least one peer".into()));
        }
        let mut peer_specs = Vec::new();
        for (j, p) in t.peers.iter().enumerate() {
            let at = [
                Seg::Key("trunk"),
                Seg::Index(i),
                Seg::Key("peers"),
                Seg::Index(j),
            ];
            let peer = peers::parse_peer(p).map_err(|m| err(&at, m))?;
            if peer.transport() == Transport::Tls && tls.as_ref().is_none_or(|m| m.roots.is_none())
            {
                return Err(err(
                    &at,
                    "a tls: peer needs [sip.tls] ca (the trust anchors its certificate is checked against)".into(),
                ));
            }
            if matches!(peer, PeerSpec::Name(_)) && t.strategy == Strategy::Weighted {
                return Err(err(
                    &at,
                    "strategy \"weighted\" needs addresses: a peer given by name takes its order from DNS (SRV priorities and weights)".into(),
                ));
            }
            peer_specs.push(peer);
        }
        let peers: Vec<Endpoint> = peer_specs
            .iter()
            .filter_map(|p| match p {
                PeerSpec::Addr(e) => Some(*e),
                PeerSpec::Name(_) => None,
            })
            .collect();
        let local: Endpoint = t.local.parse().map_err(|m| err(&at("local"), m))?;
        if !listen.contains(&local) {
            return Err(err(
                &at("local"),
                format!("`{}` is not one of sip.listen", t.local),
            ));
        }
        // A socket sends to its own family only: the trunk's peers must share `local`'s (a
        // call may still cross families, each leg on its own trunk).
        if let Some(j) = peer_specs.iter().position(
            |p| matches!(p, PeerSpec::Addr(e) if e.addr.is_ipv4() != local.addr.is_ipv4()),
        ) {
            return Err(err(
                &[
                    Seg::Key("trunk"),
                    Seg::Index(i),
                    Seg::Key("peers"),
                    Seg::Index(j),
                ],
                format!(
                    "`{}` is not of the family of local ({}): the trunk reaches its peers from local",
                    t.peers[j], t.local
                ),
            ));
        }
        let weights = match (&t.weights, t.strategy) {
            (None, _) => vec![1; peers.len()],
            (Some(w), Strategy::Weighted) if w.len() == peers.len() && !w.contains(&0) => w.clone(),
            (Some(_), Strategy::Weighted) => {
                return Err(err(
                    &at("weights"),
                    format!("needs one weight above 0 per peer ({})", peers.len()),
                ))
            }
            (Some(_), _) => {
                return Err(err(
                    &at("weights"),
                    "weights need strategy = \"weighted\"".into(),
                ))
            }
        };
        let probe = match t.options_interval_s {
            0 => None,
            interval => {
                if t.options_timeout_s == 0 || t.options_timeout_s >= interval {
                    return Err(err(
                        &at("options_timeout_s"),
                        format!("must be at least 1 and below options_interval_s ({interval})"),
                    ));
                }
                for (key, v) in [("down_after", t.down_after), ("up_after", t.up_after)] {
                    if v == 0 {
                        return Err(err(&at(key), "must be at least 1".into()));
                    }
                }
                Some(Probe {
                    interval: Duration::from_secs(interval),
                    timeout: Duration::from_secs(t.options_timeout_s),
                    down_after: t.down_after,
                    up_after: t.up_after,
                })
            }
        };
        if !(1..=32).contains(&t.invite_timeout_s) {
            return Err(err(
                &at("invite_timeout_s"),
                "must be 1 to 32 seconds (Timer B)".into(),
            ));
        }
        if !(1..=64).contains(&t.max_early_dialogs) {
            return Err(err(
                &at("max_early_dialogs"),
                "must be 1 to 64 early dialogs".into(),
            ));
        }
        let failover_on = t
            .failover_on
            .clone()
            .unwrap_or(DEFAULT_FAILOVER_ON.to_vec());
        if let Some(j) = failover_on.iter().position(|c| !(300..=699).contains(c)) {
            return Err(err(
                &[
                    Seg::Key("trunk"),
                    Seg::Index(i),
                    Seg::Key("failover_on"),
                    Seg::Index(j),
                ],
                format!("{} is not a final SIP error code (300-699)", failover_on[j]),
            ));
        }
        if t.max_calls == Some(0) {
            return Err(err(&at("max_calls"), "must be at least 1".into()));
        }
        let max_cps = t
            .max_cps
            .map(check_cps)
            .transpose()
            .map_err(|m| err(&at("max_cps"), m))?;
        if t.max_duration_s == Some(0) {
            return Err(err(&at("max_duration_s"), "must be at least 1".into()));
        }
        let session_timer = match t.session_timer_s {
            None | Some(0) => None,
            Some(s) if !(MIN_SESSION_TIMER_S..=86_400).contains(&s) => {
                return Err(err(
                    &at("session_timer_s"),
                    format!(
                        "must be 0 (off) or {MIN_SESSION_TIMER_S} to 86400 seconds \
                         (Min-SE {MIN_SESSION_TIMER_S}, RFC 4028)"
                    ),
                ))
            }
            Some(s) => Some(Duration::from_secs(s)),
        };
        let policy = routing::trunk_policy(
            routing::RawTrunkPolicy {
                translate: &t.translate,
                response_map: &t.response_map,
                deny: &t.deny,
                headers: &t.headers,
            },
            &[Seg::Key("trunk"), Seg::Index(i)],
            &err,
        )?;
        let identity = identity::identity(
            identity::RawIdentity {
                auth: t.auth.as_ref(),
                challenge_inbound: t.challenge_inbound,
                register: t.register.as_ref(),
            },
            &[Seg::Key("trunk"), Seg::Index(i)],
            &err,
        )?;
        if let Some(j) = t
            .codecs
            .iter()
            .position(|c| c.is_empty() || !c.bytes().all(|b| b.is_ascii_graphic() && b != b'/'))
        {
            return Err(err(
                &[
                    Seg::Key("trunk"),
                    Seg::Index(i),
                    Seg::Key("codecs"),
                    Seg::Index(j),
                ],
                format!(
                    "`{}` is not an encoding name like \"PCMA\" (no rate, no spaces)",
                    t.codecs[j]
                ),
            ));
        }
        let trunk_tls = tls::trunk_tls(
            t.tls_name.as_deref(),
            t.tls_client_auth,
            peer_specs.iter().any(|p| p.transport() == Transport::Tls),
            tls.as_ref(),
            &[Seg::Key("trunk"), Seg::Index(i)],
            &err,
        )?;
        let hep = capture::trunk_capture(
            t.hep.as_ref(),
            &[Seg::Key("trunk"), Seg::Index(i), Seg::Key("hep")],
            &err,
        )?;
        let advertise = t
            .advertise
            .as_deref()
            .map(|a| match a.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() => Err(format!(
                    "`{a}` cannot be advertised (unspecified or multicast)"
                )),
                Ok(ip) if ip.is_ipv4() != local.addr.is_ipv4() => Err(format!(
                    "`{a}` is not of the family of local ({})",
                    local.addr.ip()
                )),
                Ok(ip) => Ok(ip),
                Err(_) => Err(format!("`{a}` is not an IP address")),
            })
            .transpose()
            .map_err(|m| err(&at("advertise"), m))?;
        trunks.push(Trunk {
            name: t.name.clone(),
            kind: t.kind,
            peers,
            peer_specs,
            local,
            strategy: t.strategy,
            weights,
            probe,
            invite_timeout: Duration::from_secs(t.invite_timeout_s),
            failover_on,
            redirect: t.redirect,
            refer: t.refer,
            max_calls: t.max_calls,
            max_cps,
            max_duration: t.max_duration_s.map(Duration::from_secs),
            session_timer,
            max_early_dialogs: t.max_early_dialogs as usize,
            policy,
            identity,
            codecs: t.codecs.clone(),
            tls: trunk_tls,
            hep,
            retired: false,
            advertise,
        });
    }

    let mut routes = Vec::new();
    for (i, r) in raw.route.iter().enumerate() {
        let trunk_refs = |key: &'static str, names: &[String]| -> Result<Vec<usize>, ConfigError> {
            if names.is_empty() {
                return Err(err(
                    &[Seg::Key("route"), Seg::Index(i), Seg::Key(key)],
                    "must name at least one trunk".into(),
                ));
            }
            names
                .iter()
                .enumerate()
                .map(|(j, n)| {
                    trunks.iter().position(|t| &t.name == n).ok_or_else(|| {
                        err(
                            &[
                                Seg::Key("route"),
                                Seg::Index(i),
                                Seg::Key(key),
                                Seg::Index(j),
                            ],
                            format!("no trunk is named `{n}`"),
                        )
                    })
                })
                .collect()
        };
        let from = trunk_refs("from", &r.from)?;
        let to = trunk_refs("to", &r.to)?;
        let called = Regex::new(&r.called).map_err(|e| {
            err(
                &[Seg::Key("route"), Seg::Index(i), Seg::Key("match")],
                format!("invalid regex: {e}"),
            )
        })?;
        let at = |key| [Seg::Key("route"), Seg::Index(i), Seg::Key(key)];
        let calling = r
            .match_calling
            .as_deref()
            .map(|p| routing::regex(p, &at("match_calling"), &err))
            .transpose()?;
        let deny = routing::regex_list(&r.deny, &at("deny"), &err)?;
        routes.push(Route {
            from,
            called,
            calling,
            deny,
            to,
        });
    }

    let cdr = match &raw.cdr {
        None => None,
        Some(c) => {
            let at = |key| [Seg::Key("cdr"), Seg::Key(key)];
            if c.path.trim().is_empty() {
                return Err(err(&at("path"), "must name the CDR file".into()));
            }
            if c.max_mb == 0 || c.max_mb > CDR_MAX_MB {
                return Err(err(
                    &at("max_mb"),
                    format!("must be between 1 and {CDR_MAX_MB} (MiB)"),
                ));
            }
            if c.keep == 0 || c.keep > CDR_MAX_KEEP {
                return Err(err(
                    &at("keep"),
                    format!("must be between 1 and {CDR_MAX_KEEP} rotated files"),
                ));
            }
            Some(CdrConfig {
                path: PathBuf::from(&c.path),
                max_bytes: c.max_mb << 20,
                keep: c.keep,
            })
        }
    };

    let log = log::log(raw.log, &err)?;
    let capture = capture::capture(raw.capture, &err)?;
    Ok(Config {
        log,
        capture,
        sip: SipConfig {
            listen,
            max_calls: raw.sip.max_calls,
            max_cps: raw
                .sip
                .max_cps
                .map(check_cps)
                .transpose()
                .map_err(|m| err(&[Seg::Key("sip"), Seg::Key("max_cps")], m))?,
            emergency,
            unknown,
            per_source: sip_per_source,
            tls,
            keepalive: (raw.sip.keepalive_s > 0).then(|| Duration::from_secs(raw.sip.keepalive_s)),
            dns_servers: raw
                .sip
                .dns_servers
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    peers::parse_dns_server(d).map_err(|m| {
                        err(
                            &[Seg::Key("sip"), Seg::Key("dns_servers"), Seg::Index(i)],
                            m,
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        },
        media: MediaConfig {
            port_first,
            port_last,
            dataplane,
            timeout: Duration::from_secs(raw.media.timeout_s),
            hold_timeout: Duration::from_secs(raw.media.hold_timeout_s),
            threads: raw.media.threads,
            max_packet: raw.media.max_packet_bytes,
            cores: raw.media.cores.clone(),
            busy_poll,
            interfaces,
            handover: raw.media.handover,
            state_file: PathBuf::from(&raw.media.state_file),
            pin_dir: PathBuf::from(&raw.media.pin_dir),
        },
        control: ControlConfig {
            http,
            ng,
            delete_delay: Duration::from_secs(raw.control.delete_delay_s),
            shutdown_grace: Duration::from_secs(raw.control.shutdown_grace_s),
            per_source: ng_per_source,
            allow,
        },
        trunks,
        routes,
        cdr,
    })
}

/// Parses `"30000-39999"` into its first even port and last port; at least one pair must fit.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{s}` is not a port range like \"30000-39999\"");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a < 1024 {
        return Err(format!("`{s}` starts below 1024"));
    }
    let first = a + (a % 2);
    if b <= first {
        return Err(format!("`{s}` holds no RTP/RTCP port pair"));
    }
    Ok((first, b))
}

impl Trunk {
    /// Whether some of its peers are DNS names (resolved at run time by `signalling::dns`).
    pub fn has_named_peers(&self) -> bool {
        self.peer_specs
            .iter()
            .any(|p| matches!(p, PeerSpec::Name(_)))
    }
}

impl Config {
    /// The address SDP toward trunk `t` carries instead of its `local` IP: the trunk's
    /// `advertise`, else the `advertise` of the media interface holding that IP (a 1:1 NAT
    /// configured once for the address), else none (the local IP itself).
    pub fn media_advertise(&self, t: usize) -> Option<std::net::IpAddr> {
        let trunk = &self.trunks[t];
        trunk.advertise.or_else(|| {
            self.media
                .interfaces
                .iter()
                .find(|i| i.address == trunk.local.addr.ip())
                .and_then(|i| i.advertise)
        })
    }

    /// Finds the trunk whose peers include `ip`; peers are recognised by IP only, so TCP peers
    /// with ephemeral source ports are recognised too. A trunk in use prevails over a retired
    /// one (a reload may have moved the peer to a renamed trunk); a retired trunk is still
    /// found so that the calls it carries get their in-dialog requests.
    pub fn trunk_of_peer(&self, ip: std::net::IpAddr) -> Option<usize> {
        let has = |t: &Trunk| t.peers.iter().any(|p| p.addr.ip() == ip);
        let live = self.trunks.iter().position(|t| !t.retired && has(t));
        live.or_else(|| self.trunks.iter().position(has))
    }

    /// The first route (in config order) taking calls from `trunk` whose `match` accepts
    /// `called` and whose `match_calling`, when present, accepts `calling`.
    pub fn route_for(&self, trunk: usize, called: &str, calling: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.from.contains(&trunk)
                && r.called.is_match(called)
                && r.calling.as_ref().is_none_or(|c| c.is_match(calling))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[sip]
listen = ["udp:10.99.1.1:5060", "udp:10.99.2.1:5060", "tcp:10.99.2.1:5060"]

[media]
ports = "30000-39999"
dataplane = "socket"
timeout_s = 30

[control]
http = "127.0.0.1:9100"

[[trunk]]
name = "pbx"
kind = "lan"
peers = ["udp:10.99.1.2:5060"]
local = "udp:10.99.1.1:5060"

[[trunk]]
name = "itsp"
kind = "itsp"
peers = ["udp:10.99.2.2:5060"]
local = "udp:10.99.2.1:5060"

[[route]]
from = ["pbx"]
match = "^\\+?[0-9]+$"
to = ["itsp"]

[[route]]
from = ["itsp"]
match = ".*"
to = ["pbx"]
"#;

    #[test]
    fn issue_example_parses() {
        let c = parse("x.toml", GOOD).unwrap();
        assert_eq!(c.trunks.len(), 2);
        assert_eq!(c.media.port_first, 30000);
        assert_eq!(c.route_for(0, "+4930123", "100").unwrap().to, vec![1]);
        assert!(c.route_for(0, "alice", "100").is_none());
        assert_eq!(c.route_for(1, "alice", "").unwrap().to, vec![0]);
        assert_eq!(c.trunk_of_peer("10.99.2.2".parse().unwrap()), Some(1));
        assert!(!c.media.handover);
        assert_eq!(
            c.media.state_file,
            PathBuf::from("/var/lib/mediagate/calls.state")
        );
        let set = GOOD.replace(
            "timeout_s = 30",
            "timeout_s = 30\nhandover = true\nstate_file = \"/run/mg/calls.state\"",
        );
        let c = parse("x.toml", &set).unwrap();
        assert!(c.media.handover);
        assert_eq!(c.media.state_file, PathBuf::from("/run/mg/calls.state"));
        assert_eq!(c.media.pin_dir, PathBuf::from("/sys/fs/bpf/mediagate"));
        let c = parse(
            "x.toml",
            &GOOD.replace(
                "timeout_s = 30",
                "timeout_s = 30\npin_dir = \"/sys/fs/bpf/mg-a\"",
            ),
        )
        .unwrap();
        assert_eq!(c.media.pin_dir, PathBuf::from("/sys/fs/bpf/mg-a"));
    }

    #[test]
    fn embedded_default_is_valid_and_has_no_trunks() {
        let c = parse("embedded", EMBEDDED_DEFAULT).unwrap();
        assert!(c.trunks.is_empty());
        assert!(c.sip.listen.iter().all(|l| l.addr.ip().is_loopback()));
    }

    fn error_of(text: &str) -> ConfigError {
        parse("f.toml", text).unwrap_err()
    }

    #[test]
    fn abuse_keys_parse_and_errors_name_their_key() {
        let c = parse("x.toml", GOOD).unwrap();
        assert_eq!(c.sip.unknown, Unknown::Reject);
        assert!(c.sip.per_source.is_none() && c.control.allow.is_none());
        let set = GOOD
            .replace(
                "[media]",
                "unknown = \"drop\"\nrate_per_source = 20\nburst_per_source = 40\n\n[media]",
            )
            .replace(
                "http = \"127.0.0.1:9100\"",
                "http = \"10.99.1.1:9100\"\nng = \"0.0.0.0:2223\"\nrate_per_source = 5\nallow = [\"10.99.0.0/16\"]",
            );
        let c = parse("x.toml", &set).unwrap();
        assert_eq!(c.sip.unknown, Unknown::Drop);
        assert_eq!(
            c.sip.per_source,
            Some(SourceLimit {
                rate: 20.0,
                burst: 40.0
            })
        );
        assert_eq!(
            c.control.per_source,
            Some(SourceLimit {
                rate: 5.0,
                burst: 5.0
            })
        );
        assert!(c
            .control
            .allow
            .unwrap()
            .allows("10.99.1.2".parse().unwrap()));
        for (from, to, line, key) in [
            ("[media]", "unknown = \"ignore\"\n[media]", 5, "sip.unknown"),
            (
                "timeout_s = 30",
                "max_packet_bytes = 4096",
                8,
                "media.max_packet_bytes",
            ),
            (
                "[media]",
                "rate_per_source = 0\n[media]",
                5,
                "sip.rate_per_source",
            ),
            (
                "[media]",
                "burst_per_source = 3\n[media]",
                5,
                "sip.burst_per_source",
            ),
            (
                "[media]",
                "rate_per_source = 5\nburst_per_source = 0.5\n[media]",
                6,
                "sip.burst_per_source",
            ),
            ("127.0.0.1:9100", "10.99.1.1:9100", 11, "control.http"),
            (
                "http = \"127.0.0.1:9100\"",
                "http = \"127.0.0.1:9100\"\nng = \"0.0.0.0:2223\"",
                12,
                "control.ng",
            ),
            (
                "http = \"127.0.0.1:9100\"",
                "http = \"127.0.0.1:9100\"\nallow = [\"10.0.0.0/40\"]",
                12,
                "control.allow[0]",
            ),
        ] {
            let e = error_of(&GOOD.replace(from, to));
            assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
        }
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = error_of(&GOOD.replace("\"udp:10.99.2.2:5060\"]", "\"udp:nowhere\"]"));
        assert_eq!((e.line, e.key.as_str()), (22, "trunk[1].peers[0]"), "{e}");

        let e = error_of(&GOOD.replace("to = [\"itsp\"]", "to = [\"nope\"]"));
        assert_eq!((e.line, e.key.as_str()), (28, "route[0].to[0]"), "{e}");

        let e = error_of(&GOOD.replace("^\\\\+?[0-9]+$", "(["));
        assert_eq!((e.line, e.key.as_str()), (27, "route[0].match"), "{e}");

        let e = error_of(&GOOD.replace("timeout_s = 30", "timeout_s = \"x\""));
        assert_eq!((e.line, e.key.as_str()), (8, "media.timeout_s"), "{e}");

        let e = error_of(&GOOD.replace("timeout_s = 30", "timeout_s = 30\nhold_timeout_s = 0"));
        assert_eq!((e.line, e.key.as_str()), (9, "media.hold_timeout_s"), "{e}");

        let e = error_of(&GOOD.replace("timeout_s = 30", "timeout_s = 30\nstate_file = \"\""));
        assert_eq!((e.line, e.key.as_str()), (9, "media.state_file"), "{e}");

        let e = error_of(&GOOD.replace("timeout_s = 30", "timeout_s = 30\nhandover = 1"));
        assert_eq!((e.line, e.key.as_str()), (9, "media.handover"), "{e}");
        for bad in ["/", "/sys/fs/bpf/../mg", "mg", "sys/fs/bpf/mg"] {
            let e = error_of(&GOOD.replace(
                "timeout_s = 30",
                &format!("timeout_s = 30\npin_dir = \"{bad}\""),
            ));
            assert_eq!((e.line, e.key.as_str()), (9, "media.pin_dir"), "{bad}: {e}");
        }

        let e = error_of(&GOOD.replace("timeout_s = 30", "timeout_z = 3"));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.message.contains("timeout_z"), "{e}");

        let e = error_of(&GOOD.replace("30000-39999", "5-3"));
        assert_eq!((e.line, e.key.as_str()), (6, "media.ports"), "{e}");

        let e = error_of(&GOOD.replace(
            "local = \"udp:10.99.2.1:5060\"",
            "local = \"udp:10.99.9.1:5060\"",
        ));
        assert_eq!((e.line, e.key.as_str()), (23, "trunk[1].local"), "{e}");
        assert_eq!(
            e.to_string(),
            format!("f.toml:23: trunk[1].local: {}", e.message)
        );
    }

    #[test]
    fn media_interfaces_with_advertise_and_device() {
        let good = GOOD.replace(
            "timeout_s = 30\n",
            "timeout_s = 30\n[[media.interface]]\nname = \"ext\"\naddress = \"10.99.2.1\"\nadvertise = \"203.0.113.5\"\ndevice = \"eth1\"\n",
        );
        let c = parse("m.toml", &good).unwrap();
        let i = &c.media.interfaces[0];
        assert_eq!(i.device.as_deref(), Some("eth1"));
        assert_eq!(i.advertise, Some("203.0.113.5".parse().unwrap()));
        let dup = good.replace(
            "timeout_s = 30\n",
            "timeout_s = 30\n[[media.interface]]\nname = \"ext\"\naddress = \"10.99.1.1\"\n",
        );
        let e = parse("m.toml", &dup).unwrap_err();
        assert_eq!(e.key, "media.interface[1].name", "{e}");
        let dual_stack = good.replace(
            "timeout_s = 30\n",
            "timeout_s = 30\n[[media.interface]]\nname = \"ext\"\naddress = \"fd00::1\"\n",
        );
        let c = parse("m.toml", &dual_stack).unwrap();
        assert_eq!(c.media.interfaces.len(), 2, "one name, both families");
        let mixed = good.replace("203.0.113.5", "2001:db8::5");
        let e = parse("m.toml", &mixed).unwrap_err();
        assert_eq!(e.key, "media.interface[0].advertise", "{e}");
    }

    #[test]
    fn trunk_advertise_overrides_the_interface() {
        let itsp = "local = \"udp:10.99.2.1:5060\"\n\n[[route]]";
        let with = |keys: &str| {
            GOOD.replacen(
                itsp,
                &format!("local = \"udp:10.99.2.1:5060\"\n{keys}\n\n[[route]]"),
                1,
            )
            .replacen(
                "[media]\n",
                "[media]\ninterface = [{ name = \"ext\", address = \"10.99.2.1\", advertise = \"198.51.100.7\" }]\n",
                1,
            )
        };
        let c = parse("t.toml", &with("advertise = \"203.0.113.5\"")).unwrap();
        assert_eq!(c.trunks[1].advertise, Some("203.0.113.5".parse().unwrap()));
        assert_eq!(c.media_advertise(1), Some("203.0.113.5".parse().unwrap()));
        let c = parse("t.toml", &with("")).unwrap();
        assert_eq!(c.trunks[1].advertise, None, "SIP headers keep local");
        assert_eq!(c.media_advertise(1), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(c.media_advertise(0), None, "the pbx side keeps its own");
        let e = error_of(&GOOD.replacen(
            "peers = [\"udp:10.99.2.2:5060\"]",
            "peers = [\"udp:10.99.2.2:5060\", \"udp:[fd00:99:2::2]:5060\"]",
            1,
        ));
        assert_eq!(e.key, "trunk[1].peers[1]", "{e}");
        for bad in [
            "\"203.0.113\"",
            "\"fd00::5\"",
            "\"0.0.0.0\"",
            "\"224.0.0.1\"",
            "5",
        ] {
            let e = error_of(&with(&format!("advertise = {bad}")));
            assert_eq!(e.key, "trunk[1].advertise", "{bad}: {e}");
            assert!(e.line >= 20, "{bad}: {e}");
        }
    }

    #[test]
    fn trunk_health_strategy_and_limits() {
        let itsp = "local = \"udp:10.99.2.1:5060\"\n\n[[route]]";
        let with = |keys: &str| {
            GOOD.replacen(
                itsp,
                &format!("local = \"udp:10.99.2.1:5060\"\n{keys}\n\n[[route]]"),
                1,
            )
        };
        let c = parse("t.toml", &with("strategy = \"weighted\"\nweights = [3]\noptions_interval_s = 20\nmax_calls = 10\nmax_cps = 2.5\nmax_duration_s = 7200\nfailover_on = [503]\nredirect = \"pass\"")).unwrap();
        let t = &c.trunks[1];
        assert_eq!(
            (t.strategy, t.weights.clone()),
            (Strategy::Weighted, vec![3])
        );
        assert_eq!(
            t.probe.map(|p| (
                p.interval.as_secs(),
                p.timeout.as_secs(),
                p.down_after,
                p.up_after
            )),
            Some((20, 3, 3, 2))
        );
        assert_eq!(
            (t.max_calls, t.max_cps, t.failover_on.clone()),
            (Some(10), Some(2.5), vec![503])
        );
        assert_eq!(t.redirect, Redirect::Pass);
        assert_eq!(
            c.trunks[0].refer,
            Refer::Reject,
            "REFER is rejected by default"
        );
        let c = parse("t.toml", &with("refer = \"pass\"")).unwrap();
        assert_eq!(c.trunks[1].refer, Refer::Pass);
        let c = parse("t.toml", &with("codecs = [\"PCMA\", \"telephone-event\"]")).unwrap();
        assert_eq!(c.trunks[1].codecs, ["PCMA", "telephone-event"]);
        assert!(c.trunks[0].codecs.is_empty(), "no filtering by default");
        assert_eq!(c.trunks[0].failover_on, DEFAULT_FAILOVER_ON.to_vec());
        assert_eq!(c.trunks[0].invite_timeout.as_secs(), 5);
        assert_eq!(
            c.trunks[0].session_timer, None,
            "no session timer by default"
        );
        let c = parse("t.toml", &with("session_timer_s = 1800")).unwrap();
        assert_eq!(c.trunks[1].session_timer, Some(Duration::from_secs(1800)));
        let c = parse("t.toml", &with("session_timer_s = 0")).unwrap();
        assert_eq!(c.trunks[1].session_timer, None, "0 is off");
        assert_eq!(c.trunks[0].max_early_dialogs, 8, "8 forks by default");
        let c = parse("t.toml", &with("max_early_dialogs = 1")).unwrap();
        assert_eq!(c.trunks[1].max_early_dialogs, 1);
        assert!(c.trunks[0].probe.is_none(), "probing is off by default");
        for (keys, key) in [
            ("weights = [1]", "trunk[1].weights"),
            (
                "strategy = \"weighted\"\nweights = [1, 2]",
                "trunk[1].weights",
            ),
            ("strategy = \"weighted\"\nweights = [0]", "trunk[1].weights"),
            ("strategy = \"random\"", "trunk[1].strategy"),
            (
                "options_interval_s = 5\noptions_timeout_s = 5",
                "trunk[1].options_timeout_s",
            ),
            (
                "options_interval_s = 5\ndown_after = 0",
                "trunk[1].down_after",
            ),
            ("options_interval_s = 5\nup_after = 0", "trunk[1].up_after"),
            ("invite_timeout_s = 0", "trunk[1].invite_timeout_s"),
            ("invite_timeout_s = 33", "trunk[1].invite_timeout_s"),
            ("failover_on = [503, 200]", "trunk[1].failover_on[1]"),
            ("redirect = \"maybe\"", "trunk[1].redirect"),
            ("refer = \"forward\"", "trunk[1].refer"),
            ("max_calls = 0", "trunk[1].max_calls"),
            ("max_cps = 0", "trunk[1].max_cps"),
            ("max_cps = -1.5", "trunk[1].max_cps"),
            ("max_duration_s = 0", "trunk[1].max_duration_s"),
            ("session_timer_s = 89", "trunk[1].session_timer_s"),
            ("session_timer_s = -1", "trunk[1].session_timer_s"),
            ("session_timer_s = 86401", "trunk[1].session_timer_s"),
            ("max_early_dialogs = 0", "trunk[1].max_early_dialogs"),
            ("max_early_dialogs = 65", "trunk[1].max_early_dialogs"),
            ("max_early_dialogs = -1", "trunk[1].max_early_dialogs"),
            ("codecs = [\"PCMA\", \"PCMA/8000\"]", "trunk[1].codecs[1]"),
            ("codecs = [\"\"]", "trunk[1].codecs[0]"),
        ] {
            let e = error_of(&with(keys));
            assert_eq!(e.key, key, "{keys}: {e}");
            assert!(e.line >= 20, "{keys}: {e}");
        }
        let e = error_of(&GOOD.replace("[media]", "max_cps = 0\n\n[media]"));
        assert_eq!(e.key, "sip.max_cps", "{e}");
    }

    #[test]
    fn cdr_section_defaults_and_absence() {
        assert_eq!(
            parse("x.toml", GOOD).unwrap().cdr,
            None,
            "no section, no CDRs"
        );
        let c = parse(
            "x.toml",
            &format!("{GOOD}\n[cdr]\npath = \"/var/log/mediagate/cdr.jsonl\"\n"),
        )
        .unwrap();
        assert_eq!(
            c.cdr,
            Some(CdrConfig {
                path: "/var/log/mediagate/cdr.jsonl".into(),
                max_bytes: 100 << 20,
                keep: 5,
            })
        );
    }

    #[test]
    fn cdr_rejections_name_line_and_key() {
        let cdr = |body: &str| error_of(&format!("{GOOD}\n[cdr]\n{body}"));
        // GOOD ends on line 34; a blank line, `[cdr]` on 35, then the keys from line 36.
        let e = cdr("path = \"/tmp/cdr.jsonl\"\nmax_mb = 0\n");
        assert_eq!((e.line, e.key.as_str()), (37, "cdr.max_mb"), "{e}");
        let e = cdr("path = \"/tmp/cdr.jsonl\"\nkeep = 0\n");
        assert_eq!((e.line, e.key.as_str()), (37, "cdr.keep"), "{e}");
        let e = cdr("path = \"\"\n");
        assert_eq!((e.line, e.key.as_str()), (36, "cdr.path"), "{e}");
        let e = cdr("max_mb = 10\n");
        assert!(e.message.contains("path"), "path is required: {e}");
        let e = cdr("path = \"/tmp/cdr.jsonl\"\nmax_mb = 2000000\n");
        assert_eq!(e.key, "cdr.max_mb", "{e}");
        let e = cdr("path = \"/tmp/cdr.jsonl\"\nkeep = 5000\n");
        assert_eq!(e.key, "cdr.keep", "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = error_of("[sip]\nlisten = [\n");
        assert!(e.line >= 2, "{e}");
    }
}
