//! The I/O shell around the sans-IO SIP core: one control loop that owns the [`B2bua`], feeds it
//! received messages and timer ticks, sends what it produces and hands its media commands to the
//! data plane. Runs on a tokio current-thread runtime. It also owns the CDR file
//! ([`CallRecords`]) and, on SIGHUP, reopens it and reloads the configuration ([`reload`]).

mod connection;
mod dns;
pub mod gate;
pub mod hep;
pub mod journal;
mod tls;
pub mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::cdr::{Cdr, CdrWriter};
use crate::config::Config;
use crate::control::ng::NgServer;
use crate::dataplane::Dataplane;
use crate::media::session::SharedResources;
use crate::metrics::prometheus::{Direction, Metrics, Sources};
use crate::sip::b2bua::B2bua;
use gate::Gate;
use transport::Transports;

/// A request from the operator endpoint, answered by the control loop that owns the state.
pub enum ControlRequest {
    /// The `/status` document.
    Status(oneshot::Sender<serde_json::Value>),
    /// The `/metrics` exposition text.
    Metrics(oneshot::Sender<String>),
    /// Start (`on`) or stop draining a trunk; an error names what is wrong.
    Drain {
        trunk: String,
        on: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// How long shutdown waits for the answers to its un-REGISTERs.
const UNREGISTER_GRACE: Duration = Duration::from_secs(2);

/// How long start-up waits for the first resolution of trunk peers given by name.
const FIRST_RESOLUTION: Duration = Duration::from_secs(3);

/// Longest sleep of the control loop when no timer is due.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// The front ends the control loop drives, the media resources they share, and where their
/// finished calls are recorded.
pub struct Frontends {
    pub b2bua: B2bua,
    pub ng: NgServer,
    pub media: SharedResources,
    /// The CDR file, opened at start-up (`None` without a `[cdr]` section).
    pub cdr: Option<CdrWriter>,
    /// The front door shared with the HTTP endpoint: per-source limits, allow-list, refusal
    /// counters.
    pub gate: Arc<Gate>,
    /// The call-state journal (`media.handover`), compacted at start-up after the calls in it
    /// were adopted; `None` without handover.
    pub journal: Option<journal::Journal>,
}

/// The control loop's end of the call detail records. It lives on the control thread, which
/// owns all call state, so records need no lock or channel; each is written (one `write(2)`)
/// as it arrives, so nothing is held in memory that a stop could lose.
pub struct CallRecords {
    writer: Option<CdrWriter>,
}

impl CallRecords {
    /// Records go to `writer`, or nowhere when CDRs are not configured.
    pub fn new(writer: Option<CdrWriter>) -> Self {
        CallRecords { writer }
    }

    /// Writes the records of calls that ended, e.g. `records.write_cdrs(b2bua.drain_cdrs())`
    /// after each turn of the loop; without `[cdr]` they are dropped. Write errors are logged
    /// and counted by the writer and never stop the loop.
    pub fn write_cdrs(&mut self, records: impl IntoIterator<Item = Cdr>) {
        match &mut self.writer {
            Some(w) => records.into_iter().for_each(|r| w.write(&r)),
            None => records.into_iter().for_each(drop),
        }
    }

    /// SIGHUP: reopens the CDR file (logrotate moved it away).
    pub fn on_sighup(&mut self) {
        let Some(w) = &mut self.writer else {
            return;
        };
        match w.reopen() {
            Ok(()) => tracing::info!(path = %w.path().display(), "SIGHUP: CDR file reopened"),
            Err(e) => tracing::warn!(path = %w.path().display(), error = %e,
                "SIGHUP: cannot reopen the CDR file; records keep going to the previously open file"),
        }
    }
}

/// SIGHUP's configuration reload: reads `path` again and merges it into `running`
/// ([`crate::config::live::merge`]; `free` are the trunk slots a new trunk may take). Logs the
/// outcome: the error (FILE:LINE: key: problem) of a refused file, or the keys whose change
/// needs a restart. `None` when the reload was refused and `running` stays.
pub fn reload(
    path: Option<&Path>,
    running: &Config,
    free: &[usize],
) -> Option<crate::config::live::Merged> {
    let Some(path) = path else {
        tracing::error!("SIGHUP: configuration NOT reloaded: mediagate runs the embedded default (no --config FILE)");
        return None;
    };
    let merged = crate::config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|new| crate::config::live::merge(running, new, free));
    match merged {
        Ok(m) => {
            if !m.restart_needed.is_empty() {
                tracing::warn!(keys = ?m.restart_needed,
                    "SIGHUP: these settings change only with a restart; they keep their running values");
            }
            let name = |t: &usize| m.config.trunks[*t].name.clone();
            tracing::info!(path = %path.display(),
                added = ?m.added.iter().map(name).collect::<Vec<_>>(),
                removed = ?m.removed.iter().map(name).collect::<Vec<_>>(),
                "SIGHUP: configuration reloaded; new calls use it, calls in progress keep theirs");
            Some(m)
        }
        Err(error) => {
            tracing::error!(path = %path.display(), %error,
                "SIGHUP: configuration NOT reloaded; the running configuration stays");
            None
        }
    }
}

/// Largest NG datagram accepted.
const NG_MAX: usize = 65_535;
/// How long the loop keeps running after hanging up every call, for the BYEs to be answered.
const LINGER: Duration = Duration::from_secs(2);

/// How the process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: refuse new calls, let calls up go on for `control.shutdown_grace_s`, then hang
    /// up the rest.
    Graceful,
    /// SIGINT, or a second signal: hang up every call now.
    Immediate,
}

/// Where a shutdown stands.
#[derive(Default)]
struct Shutdown {
    /// When the calls still up get hung up; `None` while running normally.
    hang_up_at: Option<Instant>,
    /// Set once every call was hung up: when to stop waiting for the last transactions.
    linger_until: Option<Instant>,
}

impl Shutdown {
    fn begin(&mut self, how: Stop, grace: Duration, core: &mut B2bua, ng: &mut NgServer) {
        let now = Instant::now();
        let grace = match (how, self.hang_up_at) {
            (Stop::Graceful, None) => grace,
            _ => Duration::ZERO,
        };
        if self.hang_up_at.is_none() {
            core.begin_shutdown();
            ng.begin_shutdown();
            tracing::info!(
                ?how,
                calls = core.active_calls() + ng.active_calls(),
                grace_s = grace.as_secs(),
                "stopping: new calls refused, calls up hung up after the grace period"
            );
        }
        let at = now + grace;
        self.hang_up_at = Some(self.hang_up_at.map_or(at, |t| t.min(at)));
    }

    /// Advances the shutdown; true when the loop may end.
    fn step(&mut self, core: &mut B2bua, ng: &mut NgServer) -> bool {
        let Some(hang_up_at) = self.hang_up_at else {
            return false;
        };
        let now = Instant::now();
        if self.linger_until.is_none()
            && (core.active_calls() + ng.active_calls() == 0 || now >= hang_up_at)
        {
            let left = core.active_calls() + ng.active_calls();
            if left > 0 {
                tracing::info!(
                    calls = left,
                    "grace period over: hanging up the calls still up"
                );
            }
            core.hang_up_all(now);
            ng.release_all(now);
            self.linger_until = Some(now + LINGER);
        }
        self.linger_until
            .is_some_and(|until| core.is_idle() || now >= until)
    }
}

/// Hands the queued media commands of every front end to the data plane, counting them.
fn apply_media(media: &SharedResources, relay: &mut Dataplane, metrics: &mut Metrics) {
    let commands = media.borrow_mut().take_commands();
    for cmd in commands {
        metrics.media_command(&cmd);
        if let Err(e) = relay.apply(cmd) {
            tracing::warn!(error = %e, "media command failed");
        }
    }
}

/// Runs the control loop until a [`Stop`] has been carried out. `config_path` is the file
/// `config` came from, read again on SIGHUP (`None`: the embedded default, not reloadable).
pub async fn run(
    mut config: Arc<Config>,
    config_path: Option<PathBuf>,
    mut relay: Dataplane,
    frontends: Frontends,
    mut control: mpsc::Receiver<ControlRequest>,
    mut stop: mpsc::Receiver<Stop>,
) -> anyhow::Result<()> {
    let Frontends {
        b2bua: mut core,
        mut ng,
        media,
        cdr,
        gate,
        mut journal,
    } = frontends;
    let mut records = CallRecords::new(cdr);
    let mut metrics = Metrics::new();
    // Streams of calls adopted from the state file go to the data plane before any SIP is
    // served, so a BYE or re-INVITE for them finds them in place.
    apply_media(&media, &mut relay, &mut metrics);
    // Kernel map entries of the previous run that no adopted call re-claimed stop forwarding.
    match relay.finish_adoption() {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            streams = n,
            "stale kernel streams of the previous run cleared"
        ),
        Err(e) => tracing::warn!(error = %e, "clearing the previous run's kernel streams failed"),
    }
    let mut capture = hep::Hep::new(&config.capture);
    // Installed before the loop answers anything (so before `/status` does): SIGHUP's default
    // action would kill the process.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let (inbound_tx, mut inbound) = mpsc::channel(4096);
    let (failures_tx, mut failures) = mpsc::channel(256);
    let transports = Transports::bind(&config, inbound_tx, failures_tx, gate.clone()).await?;
    for l in &config.sip.listen {
        tracing::info!(listen = %l, "SIP listening");
    }
    let ng_socket = match config.control.ng {
        Some(addr) => {
            let s = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding the NG control socket {addr}"))?;
            tracing::info!(%addr, "NG control protocol listening");
            Some(s)
        }
        None => None,
    };
    let mut resolved = dns::spawn(&config).context("starting the DNS resolver")?;
    if let Some(rx) = &mut resolved {
        // Start with the named trunks resolved when DNS answers quickly, so that registrations
        // and the first calls find their peers; later answers arrive in the loop.
        let mut waiting = config
            .trunks
            .iter()
            .filter(|t| t.peers.len() < t.peer_specs.len())
            .count();
        let until = tokio::time::Instant::now() + FIRST_RESOLUTION;
        while waiting > 0 {
            let Ok(Some(r)) = tokio::time::timeout_at(until, rx.recv()).await else {
                break;
            };
            transports.learn_tls_peers(&r.tls);
            gate.set_peers(r.trunk, &r.peers);
            core.set_peers(r.trunk, r.peers, Instant::now());
            waiting -= 1;
        }
    }
    let mut ng_buf = vec![0u8; NG_MAX];
    let mut shutdown = Shutdown::default();
    let mut handing_over = false;
    loop {
        let deadline = core
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + IDLE_TICK)
            .min(Instant::now() + IDLE_TICK);
        tokio::select! {
            Ok((n, from)) = async {
                match &ng_socket {
                    Some(s) => s.recv_from(&mut ng_buf).await,
                    None => std::future::pending().await,
                }
            } => {
                if gate.admit_ng(from.ip()) {
                    let reply = ng.handle(&ng_buf[..n], core.active_calls(), Instant::now(), SystemTime::now());
                    if let (Some(reply), Some(s)) = (reply, &ng_socket) {
                        let _ = s.try_send_to(&reply, from);
                    }
                }
            }
            Some((msg, source)) = inbound.recv() => {
                let mut next = Some((msg, source));
                // Drain what is already queued before flushing, to batch under load.
                while let Some((msg, source)) = next {
                    metrics.sip_message(Direction::Received, source.transport, &msg);
                    capture.sip(core.running_config(), Direction::Received, &source, &msg);
                    core.handle_message(msg, source, Instant::now());
                    next = inbound.try_recv().ok();
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                core.handle_timeout(Instant::now());
                ng.handle_timeout(Instant::now());
            }
            Some(request) = control.recv() => match request {
                ControlRequest::Status(reply) => {
                    let (now, wall) = (Instant::now(), SystemTime::now());
                    let mut status = core.status(now, wall);
                    if let Some(calls) = status["calls"].as_array_mut() {
                        calls.extend(ng.status_calls(now, wall));
                        status["active_calls"] = calls.len().into();
                    }
                    status["dataplane"] = relay.status();
                    let _ = reply.send(status);
                }
                ControlRequest::Metrics(reply) => {
                    let status = core.status(Instant::now(), SystemTime::now());
                    let dataplane = relay.snapshot();
                    let refused: Vec<_> = gate
                        .counts()
                        .map(|(why, n)| {
                            let (protocol, reason) = why.labels();
                            (protocol, reason, n)
                        })
                        .collect();
                    let ports = {
                        let m = media.borrow();
                        (m.pool.total(), m.pool.free())
                    };
                    let text = metrics.render(&Sources {
                        b2bua: core.counters(),
                        ng: ng.totals(),
                        sip_active: core.active_calls(),
                        ng_active: ng.active_calls(),
                        status: &status,
                        dataplane: &dataplane,
                        ports,
                        refused: &refused,
                    });
                    let _ = reply.send(text);
                }
                ControlRequest::Drain { trunk, on, reply } => {
                    let _ = reply.send(core.set_draining(&trunk, on));
                }
            },
            Some(r) = async {
                match &mut resolved {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                transports.learn_tls_peers(&r.tls);
                gate.set_peers(r.trunk, &r.peers);
                core.set_peers(r.trunk, r.peers, Instant::now());
            }
            Some(target) = failures.recv() => core.transport_failed(target, Instant::now()),
            Some(()) = hangup.recv() => {
                records.on_sighup();
                let reloaded = reload(config_path.as_deref(), &config, &core.free_trunk_slots());
                metrics.config_reload(reloaded.is_some());
                if let Some(m) = reloaded {
                    let new = Arc::new(m.config);
                    crate::logging::set_redact(new.log.redact);
                    if new.log.level != config.log.level {
                        crate::logging::set_level(&new.log.level);
                    }
                    for &t in &m.added {
                        gate.set_peers(t, &new.trunks[t].peers);
                    }
                    core.reconfigure(new.clone(), &m.added, &m.removed, Instant::now());
                    ng.reconfigure(new.clone());
                    config = new;
                }
            }
            Some(how) = stop.recv() => {
                if how == Stop::Graceful && journal.is_some() {
                    // The calls stay up in the journal for the next start to adopt.
                    tracing::info!(calls = core.active_calls() + ng.active_calls(),
                        "stopping for a handover: calls left up for the next start");
                    handing_over = true;
                } else {
                    shutdown.begin(how, config.control.shutdown_grace, &mut core, &mut ng);
                }
            }
        }
        let finished = handing_over || shutdown.step(&mut core, &mut ng);
        let running = core.running_config().clone();
        for t in core.drain_transmits() {
            metrics.sip_message(Direction::Sent, t.target.transport, &t.message);
            capture.sip(&running, Direction::Sent, &t.target, &t.message);
            transports.send(t.target, &t.message);
        }
        let cdrs = core.drain_cdrs();
        metrics.calls_ended(&cdrs);
        records.write_cdrs(cdrs);
        if let Some(j) = &mut journal {
            j.append(&core.drain_journal());
            j.append(&ng.drain_journal(Instant::now()));
        }
        apply_media(&media, &mut relay, &mut metrics);
        for copy in relay.rtcp_copies() {
            let call_id = core
                .call_id_of_stream(copy.stream)
                .or_else(|| ng.call_id_of_stream(copy.stream));
            if let Some(call_id) = call_id {
                capture.rtcp(core.running_config(), &copy, call_id);
            }
        }
        if finished {
            break;
        }
    }
    if handing_over {
        // The registrations stay too: the next start refreshes them.
        tracing::info!("stopped");
        return Ok(());
    }
    // Every call was hung up: nothing is left to hand over, so the exit detaches the program
    // and restores the host settings as it does without handover.
    if let Err(e) = relay.end_handover() {
        tracing::warn!(error = %e, "removing the handover pins failed");
    }
    // Shutdown: remove the trunks' registrations, waiting (bounded) for the answers so that a
    // challenge to the un-REGISTER is answered too.
    core.unregister_all(Instant::now());
    let end = Instant::now() + UNREGISTER_GRACE;
    loop {
        let running = core.running_config().clone();
        for t in core.drain_transmits() {
            capture.sip(&running, Direction::Sent, &t.target, &t.message);
            transports.send(t.target, &t.message);
        }
        if !core.unregistering() || Instant::now() >= end {
            break;
        }
        let deadline = core.poll_timeout().map_or(end, |d| d.min(end));
        tokio::select! {
            Some((msg, source)) = inbound.recv() => {
                capture.sip(core.running_config(), Direction::Received, &source, &msg);
                core.handle_message(msg, source, Instant::now())
            }
            _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(Instant::now()),
        }
    }
    tracing::info!("stopped");
    Ok(())
}
