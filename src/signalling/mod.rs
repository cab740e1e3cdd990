//! The I/O shell around the sans-IO SIP core: one control loop that owns the [`B2bua`], feeds it
//! received messages and timer ticks, sends what it produces and hands its media commands to the
//! data plane. Runs on a tokio current-thread runtime.

pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::dataplane::Dataplane;
use crate::sip::b2bua::B2bua;
use transport::Transports;

/// A request for the `/status` document, answered by the control loop.
pub type StatusRequest = oneshot::Sender<serde_json::Value>;

/// Longest sleep of the control loop when no timer is due.
const IDLE_TICK: Duration = Duration::from_millis(500);

/// Runs the control loop until `shutdown` completes.
pub async fn run(
    config: Arc<Config>,
    mut relay: Dataplane,
    mut core: B2bua,
    mut status: mpsc::Receiver<StatusRequest>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (inbound_tx, mut inbound) = mpsc::channel(4096);
    let transports = Transports::bind(&config.sip.listen, inbound_tx).await?;
    for l in &config.sip.listen {
        tracing::info!(listen = %l, "SIP listening");
    }
    tokio::pin!(shutdown);
    loop {
        let deadline = core
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + IDLE_TICK);
        tokio::select! {
            Some((msg, source)) = inbound.recv() => {
                core.handle_message(msg, source, Instant::now());
                // Drain what is already queued before flushing, to batch under load.
                while let Ok((msg, source)) = inbound.try_recv() {
                    core.handle_message(msg, source, Instant::now());
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => core.handle_timeout(Instant::now()),
            Some(reply) = status.recv() => {
                let mut status = core.status(Instant::now(), SystemTime::now());
                status["dataplane"] = relay.status();
                let _ = reply.send(status);
            }
            _ = &mut shutdown => break,
        }
        for t in core.drain_transmits() {
            transports.send(t.target, &t.message);
        }
        for cmd in core.drain_media_commands() {
            if let Err(e) = relay.apply(cmd) {
                tracing::warn!(error = %e, "media command failed");
            }
        }
    }
    Ok(())
}
