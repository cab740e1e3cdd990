//! mediagate command line: `--config FILE` runs, `--check-config FILE` validates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use mediagate::cdr::CdrWriter;
use mediagate::config::{self, Config};
use mediagate::control::ng::NgServer;
use mediagate::dataplane::{self, Dataplane};
use mediagate::media::session::Resources;
use mediagate::signalling::gate::Gate;
use mediagate::signalling::journal::{self, Journal};
use mediagate::signalling::{Frontends, Stop};
use mediagate::sip::b2bua::B2bua;
use tokio::sync::mpsc;

const USAGE: &str = "usage: mediagate [--config FILE] | --check-config FILE | --version
       mediagate trunk (drain|resume) NAME --config FILE
       mediagate (status|calls) [--http ADDR | --config FILE]
       mediagate detach [--config FILE]

  --config FILE        run with this configuration (without it: a safe embedded default
                       that listens on loopback only and accepts calls from no one)
  --check-config FILE  validate FILE; exit 0, or print FILE:LINE: key: problem and exit 2
  trunk drain NAME     stop new calls to trunk NAME of the mediagate running with FILE (its
                       calls up continue); `trunk resume NAME` takes new calls again. Talks to
                       [control] http of FILE.
  status               trunks and peers with their health, the calls up and the data plane
                       of the running mediagate, as tables
  calls                the calls up: id, trunks, numbers, state, duration, tier, packets
                       (both read GET /status from ADDR, or from [control] http of FILE;
                       default 127.0.0.1:9100)
  detach               remove the handover pins of media.pin_dir of FILE (default
                       /sys/fs/bpf/mediagate): detaches the XDP program a stopped mediagate
                       left running (media.handover) and restores the forwarding settings.
                       Run it in the network namespace mediagate ran in.";

/// Where `status` / `calls` find the running mediagate when given neither option.
const DEFAULT_HTTP: &str = "127.0.0.1:9100";

enum Mode {
    Run(Option<PathBuf>),
    Check(PathBuf),
    Trunk {
        name: String,
        drain: bool,
        config: PathBuf,
    },
    /// `status` (`calls: false`) or `calls`, from the endpoint `http` or `[control] http` of
    /// `config`.
    Show {
        calls: bool,
        endpoint: Endpoint,
    },
    /// `detach`: remove the handover pins of the config's `media.pin_dir`.
    Detach(Option<PathBuf>),
}

/// How a CLI command finds the running mediagate's control endpoint.
enum Endpoint {
    Http(String),
    Config(PathBuf),
}

fn parse_args() -> Result<Mode, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => Ok(Mode::Run(None)),
        ["--config", f] => Ok(Mode::Run(Some(f.into()))),
        ["--check-config", f] => Ok(Mode::Check(f.into())),
        ["trunk", action @ ("drain" | "resume"), name, "--config", f] => Ok(Mode::Trunk {
            name: name.to_string(),
            drain: *action == "drain",
            config: f.into(),
        }),
        [cmd @ ("status" | "calls"), rest @ ..] => Ok(Mode::Show {
            calls: *cmd == "calls",
            endpoint: match rest {
                [] => Endpoint::Http(DEFAULT_HTTP.into()),
                ["--http", a] => Endpoint::Http(a.to_string()),
                ["--config", f] => Endpoint::Config(f.into()),
                _ => return Err(USAGE.to_string()),
            },
        }),
        ["detach"] => Ok(Mode::Detach(None)),
        ["detach", "--config", f] => Ok(Mode::Detach(Some(f.into()))),
        ["--version"] => {
            println!("mediagate {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0)
        }
        _ => Err(USAGE.to_string()),
    }
}

fn main() -> ExitCode {
    let mode = match parse_args() {
        Ok(m) => m,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Check(path) => match config::load(&path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Mode::Trunk {
            name,
            drain,
            config,
        } => match trunk_command(&config, &name, drain) {
            Ok(reply) => {
                println!("{reply}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mediagate trunk: {e:#}");
                ExitCode::FAILURE
            }
        },
        Mode::Show { calls, endpoint } => match show(calls, &endpoint) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mediagate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Mode::Detach(path) => {
            let config = match load_or_default(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let dir = &config.media.pin_dir;
            match dataplane::kernel::detach(dir) {
                Ok(true) => {
                    println!("{}: pins removed, XDP program detached", dir.display());
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    println!("{}: no pins", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mediagate detach: {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Run(path) => {
            let config = match load_or_default(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            mediagate::logging::init(&config.log);
            if path.is_none() {
                tracing::warn!(
                    "no --config given: running the embedded default (loopback only, no trunks, \
                     accepts calls from no one); write a config with [[trunk]] and [[route]] \
                     sections and start with --config FILE (see README)"
                );
            }
            match run(config, path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The config file at `path`, or the embedded default without one.
fn load_or_default(path: &Option<PathBuf>) -> Result<Config, config::ConfigError> {
    match path {
        Some(p) => config::load(p),
        None => config::parse("(embedded default)", config::EMBEDDED_DEFAULT),
    }
}

/// `[control] http` of the config file at `path`.
fn http_of(path: &std::path::Path) -> anyhow::Result<std::net::SocketAddr> {
    config::load(path)?
        .control
        .http
        .context("the config has no [control] http endpoint to talk to")
}

/// `mediagate trunk drain|resume NAME`: one HTTP request to the running mediagate's control
/// endpoint; returns its JSON reply.
fn trunk_command(config: &std::path::Path, name: &str, drain: bool) -> anyhow::Result<String> {
    let action = if drain { "drain" } else { "resume" };
    http_request(
        http_of(config)?,
        "POST",
        &format!("/trunks/{name}/{action}"),
    )
}

/// `mediagate status` / `mediagate calls`: `GET /status` printed as tables.
fn show(calls: bool, endpoint: &Endpoint) -> anyhow::Result<String> {
    let addr = match endpoint {
        Endpoint::Http(a) => a
            .parse()
            .with_context(|| format!("--http {a}: expected IP:PORT"))?,
        Endpoint::Config(path) => http_of(path)?,
    };
    let body = http_request(addr, "GET", "/status")?;
    let status: serde_json::Value =
        serde_json::from_str(&body).context("the /status answer is not JSON")?;
    let now = std::time::SystemTime::now();
    Ok(if calls {
        mediagate::metrics::table::calls(&status, now)
    } else {
        mediagate::metrics::table::status(&status, now)
    })
}

/// One HTTP/1.1 request without a body to the control endpoint at `addr`; the body of a 200
/// answer, else an error carrying the answer's body.
fn http_request(addr: std::net::SocketAddr, method: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.starts_with("HTTP/1.1 200") {
        Ok(body.trim().to_string())
    } else {
        anyhow::bail!("{}", body.trim())
    }
}

/// SIGTERM asks for a graceful stop, SIGINT (or any second signal) for an immediate one.
fn stop_signals() -> std::io::Result<mpsc::Receiver<Stop>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let how = tokio::select! {
                Some(()) = term.recv() => Stop::Graceful,
                Some(()) = int.recv() => Stop::Immediate,
                else => break,
            };
            tracing::info!(?how, "stop requested");
            if tx.send(how).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// A panic in any thread (a relay worker, say) turns into an orderly stop: the default report,
/// then SIGINT to ourselves, so the control loop detaches XDP programs and restores the host
/// settings on its way out instead of leaving a half-working relay behind.
fn stop_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("a thread panicked: stopping");
        // SAFETY: sending a signal to our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
    }));
}

/// `media.handover`: adopts the B2BUA and NG calls the state file leaves up (their ports
/// claimed before any new call can take them) and compacts the file to just those, open for
/// the control loop.
fn adopt_calls(config: &Config, core: &mut B2bua, ng: &mut NgServer) -> anyhow::Result<Journal> {
    let path = &config.media.state_file;
    let records = journal::read(path)
        .with_context(|| format!("reading the call-state file {}", path.display()))?;
    let (found, ng_found) = (records.calls.len(), records.ng_calls.len());
    let now = std::time::Instant::now();
    let adopted = core.adopt(records.calls, now);
    let ng_adopted = ng.adopt(records.ng_calls, now, std::time::SystemTime::now());
    tracing::info!(path = %path.display(), found, adopted, ng_found, ng_adopted,
        "calls adopted from the call-state file");
    let mut entries = core.drain_journal();
    entries.extend(ng.drain_journal(now));
    Journal::compact(path, &entries)
        .with_context(|| format!("writing the call-state file {}", path.display()))
}

fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    stop_on_panic();
    let config = Arc::new(config);
    match dataplane::reserve_ports(config.media.port_first, config.media.port_last) {
        Ok(v) => tracing::info!(ip_local_reserved_ports = %v, "media port range reserved"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot reserve the media port range; the kernel may hand its ports to other sockets")
        }
    }
    // Opened before anything else starts, so a wrong path stops mediagate here and not at the
    // end of the first call.
    let cdr = match &config.cdr {
        Some(c) => {
            let w = CdrWriter::open(c)
                .with_context(|| format!("opening the CDR file {}", c.path.display()))?;
            tracing::info!(path = %c.path.display(), "writing call detail records");
            Some(w)
        }
        None => None,
    };
    let media = Resources::shared(config.media.port_first, config.media.port_last);
    let mut core = B2bua::with_resources(config.clone(), media.clone());
    let mut ng = NgServer::new(config.clone(), media.clone());
    let journal = if config.media.handover {
        Some(adopt_calls(&config, &mut core, &mut ng)?)
    } else {
        None
    };
    let mut media_addresses: Vec<_> = config
        .media
        .interfaces
        .iter()
        .map(|i| (i.address, i.device.clone()))
        .chain(config.trunks.iter().map(|t| (t.local.addr.ip(), None)))
        .collect();
    // One entry per address, the one naming a device first.
    media_addresses.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.is_some().cmp(&a.1.is_some())));
    media_addresses.dedup_by(|later, first| later.0 == first.0);
    // RTCP is copied for HEP when anything is captured: `[capture] hep` or a trunk's collector.
    let capture_rtcp = config.capture.hep.is_some()
        || config
            .trunks
            .iter()
            .any(|t| matches!(t.hep, mediagate::config::TrunkCapture::To(_)));
    let relay = Dataplane::start(
        &config.media,
        &media_addresses,
        core.stream_capacity(),
        capture_rtcp,
    )
    .context("starting the data plane")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let gate = Arc::new(Gate::new(config.clone()));
    runtime.block_on(async move {
        let (control_tx, control_rx) = mpsc::channel(16);
        if let Some(addr) = config.control.http {
            mediagate::metrics::serve(addr, control_tx, gate.clone())
                .await
                .with_context(|| format!("binding the status endpoint {addr}"))?;
        }
        let stop_rx = stop_signals().context("installing the SIGTERM/SIGINT handlers")?;
        let frontends = Frontends {
            b2bua: core,
            ng,
            media,
            cdr,
            gate,
            journal,
        };
        mediagate::signalling::run(config.clone(), path, relay, frontends, control_rx, stop_rx)
            .await
    })
}
