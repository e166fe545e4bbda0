//! The agent's two listeners: the Unix socket the CNI plugin talks to, and
//! a small HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tabby_common::agent::{AgentRequest, AgentResponse};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::agent::Request;
use crate::metrics::Metrics;

/// The liveness endpoint: 200 while the process serves (the DaemonSet's
/// livenessProbe).
pub const HEALTHZ_PATH: &str = "/healthz";

/// The readiness endpoint: 200 once the first full sync is programmed (the
/// DaemonSet's readinessProbe).
pub const READYZ_PATH: &str = "/readyz";

/// How long one CNI conversation may take on the agent's side.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the CNI socket, replacing a stale one from an earlier run.
pub fn bind_cni_socket(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path)
}

/// Serves CNI requests: one JSON line in, one out, per connection.
pub async fn serve_cni(listener: UnixListener, requests: mpsc::Sender<Request>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accepting on the CNI socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let answer = match tokio::time::timeout(
                REQUEST_TIMEOUT,
                BufReader::new(read).read_line(&mut line),
            )
            .await
            {
                Ok(Ok(_)) => match serde_json::from_str::<AgentRequest>(&line) {
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        if requests.send((req, tx)).await.is_err() {
                            AgentResponse::refused("the agent is shutting down")
                        } else {
                            match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
                                Ok(Ok(resp)) => resp,
                                _ => AgentResponse::refused("the agent did not finish in time"),
                            }
                        }
                    }
                    Err(e) => AgentResponse::refused(format!("bad request: {e}")),
                },
                _ => return,
            };
            let mut out =
                serde_json::to_vec(&answer).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
            out.push(b'\n');
            if let Err(e) = write.write_all(&out).await {
                debug!(error = %e, "CNI client went away before the answer");
            }
        });
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/status` (JSON) over HTTP/1.1.
pub async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head; the body (there is none for GET) is ignored.
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf[len..]))
                    .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                    Ok(Ok(n)) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                HEALTHZ_PATH | "/livez" => ("200 OK", "ok\n".to_string()),
                "/status" => ("200 OK", metrics.status()),
                READYZ_PATH if metrics.is_ready() => ("200 OK", "ready\n".to_string()),
                READYZ_PATH => (
                    "503 Service Unavailable",
                    "not ready: first sync not programmed\n".to_string(),
                ),
                "/metrics" => {
                    let drops = tokio::task::spawn_blocking(crate::nft::drop_counters)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    ("200 OK", metrics.render(&drops))
                }
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}
