//! The operator-facing HTTP endpoint: `GET /status` returns the control loop's JSON snapshot;
//! `GET /metrics` the Prometheus (OpenMetrics text) exposition ([`prometheus`]);
//! `POST /trunks/NAME/drain` and `POST /trunks/NAME/resume` stop and restart new calls to a
//! trunk. A deliberately small HTTP/1.1 server (one request per connection) so that the control
//! plane carries no web framework.

pub mod prometheus;
pub mod table;
pub mod threads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::signalling::gate::Gate;
use crate::signalling::ControlRequest;

/// Largest request head read; anything longer is answered 431.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that does not finish its request in this time is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the endpoint and serves it in the background to the clients `gate` admits
/// (`control.allow`); others are disconnected unanswered.
pub async fn serve(
    addr: SocketAddr,
    control: mpsc::Sender<ControlRequest>,
    gate: Arc<Gate>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "status endpoint listening");
    tokio::spawn(async move {
        loop {
            if let Ok((stream, peer)) = listener.accept().await {
                if gate.admit_http(peer.ip()) {
                    tokio::spawn(handle(stream, control.clone()));
                }
            }
        }
    });
    Ok(())
}

async fn handle(mut stream: TcpStream, control: mpsc::Sender<ControlRequest>) {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_REQUEST {
                return Some(());
            }
        }
    })
    .await;
    if !matches!(head, Ok(Some(()))) {
        return;
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let shutting_down = || (503, "{\"error\":\"shutting down\"}\n".to_string());
    let mut content_type = "application/json";
    let accept = header_value(&buf, "accept").unwrap_or_default();
    let (code, body) = match (parts.next(), parts.next()) {
        _ if buf.len() > MAX_REQUEST => (431, "{\"error\":\"request too large\"}\n".to_string()),
        (Some("GET"), Some("/metrics")) => {
            let (tx, rx) = oneshot::channel();
            if control.send(ControlRequest::Metrics(tx)).await.is_err() {
                return;
            }
            match rx.await {
                Ok(text) if prometheus::wants_openmetrics(&accept) => {
                    content_type = prometheus::CONTENT_TYPE_OPENMETRICS;
                    (200, text)
                }
                Ok(text) => {
                    content_type = prometheus::CONTENT_TYPE_CLASSIC;
                    (200, prometheus::to_classic(&text))
                }
                Err(_) => shutting_down(),
            }
        }
        (Some("GET"), Some("/status")) => {
            let (tx, rx) = oneshot::channel();
            if control.send(ControlRequest::Status(tx)).await.is_err() {
                return;
            }
            match rx.await {
                Ok(v) => (200, format!("{v}\n")),
                Err(_) => shutting_down(),
            }
        }
        (Some("POST"), Some(path)) => match drain_request(path) {
            Some((trunk, on)) => {
                let (tx, rx) = oneshot::channel();
                let request = ControlRequest::Drain {
                    trunk: trunk.clone(),
                    on,
                    reply: tx,
                };
                if control.send(request).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(Ok(())) => (
                        200,
                        format!("{}\n", serde_json::json!({"trunk": trunk, "draining": on})),
                    ),
                    Ok(Err(e)) => (404, format!("{}\n", serde_json::json!({"error": e}))),
                    Err(_) => shutting_down(),
                }
            }
            None => (404, "{\"error\":\"not found\"}\n".into()),
        },
        (Some("GET"), _) => (404, "{\"error\":\"not found\"}\n".into()),
        _ => (405, "{\"error\":\"method not allowed\"}\n".into()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// The value of header `name` (lower case) in a request head, if present.
fn header_value(head: &[u8], name: &str) -> Option<String> {
    let head = String::from_utf8_lossy(head);
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// `/trunks/NAME/drain` or `/trunks/NAME/resume`: the trunk name and whether to drain.
fn drain_request(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/trunks/")?;
    let (name, action) = rest.rsplit_once('/')?;
    let on = match action {
        "drain" => true,
        "resume" => false,
        _ => return None,
    };
    (!name.is_empty() && !name.contains('/')).then(|| (name.to_string(), on))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_paths() {
        assert_eq!(
            drain_request("/trunks/itsp/drain"),
            Some(("itsp".into(), true))
        );
        assert_eq!(
            drain_request("/trunks/itsp/resume"),
            Some(("itsp".into(), false))
        );
        assert_eq!(drain_request("/trunks//drain"), None);
        assert_eq!(drain_request("/trunks/a/b/drain"), None);
        assert_eq!(drain_request("/trunks/itsp/stop"), None);
        assert_eq!(drain_request("/status"), None);
    }

    #[test]
    fn accept_header() {
        let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nACCEPT: application/openmetrics-text;version=1.0.0\r\n\r\n";
        let accept = header_value(head, "accept").unwrap();
        assert!(prometheus::wants_openmetrics(&accept));
        assert_eq!(header_value(b"GET / HTTP/1.1\r\n\r\n", "accept"), None);
    }
}
