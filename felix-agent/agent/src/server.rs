//! The agent's two listeners: the Unix socket the CNI plugin talks to, and
//! a small HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tabby_common::agent::{AgentRequest, AgentResponse};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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

/// How long the agent may take to carry out one CNI request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a failing `accept` (EMFILE, ENFILE, ENOBUFS) waits before the
/// next try: a hot loop would burn a core and flood the log while the
/// condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bounds on the CNI socket, so that no client (a stuck plugin, or anyone
/// who can reach the socket) can take the agent's memory or descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Longest request line, newline not counted. An endpoint record of a pod
    /// with many addresses is under 1 KiB.
    pub max_line: usize,
    /// Connections held at once: at most this many descriptors (plus one
    /// being closed) and `max_line` bytes of buffer each, 16 MiB in all.
    pub max_connections: usize,
    /// How long a connection may take to send its complete line. The
    /// plugin sends it at once; only a stuck or hostile client waits.
    pub idle_timeout: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        SocketLimits {
            max_line: 64 * 1024,
            max_connections: 256,
            idle_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the agent closed a CNI connection without serving it (the
/// `reason` label of `tabby_cni_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// At the connection cap with every connection mid-request.
    Busy,
    /// Idle (no complete line yet) and the oldest such when a new
    /// connection came at the cap.
    Evicted,
    /// Sent a line longer than the cap.
    TooLong,
    /// Sent no complete line within the idle timeout.
    Idle,
}

impl Refusal {
    /// Every reason, in the order metrics list them.
    pub const ALL: [Refusal; 4] = [
        Refusal::Busy,
        Refusal::Evicted,
        Refusal::TooLong,
        Refusal::Idle,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Evicted => "evicted",
            Refusal::TooLong => "too_long",
            Refusal::Idle => "idle",
        }
    }
}

/// The connections being served. A connection is idle until its request
/// line is complete; at the cap, a new connection displaces the oldest
/// idle one, so idle clients, however many, can never lock out the plugin
/// (which sends its line as soon as it connects). Only when every slot is
/// mid-request is a newcomer closed at once.
#[derive(Debug, Default)]
struct Slots {
    active: usize,
    next_id: u64,
    idle: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// What to do with a new connection.
#[derive(Debug)]
enum Admission {
    /// Serve it; the receiver fires if it is displaced while idle.
    Admit(u64, oneshot::Receiver<()>),
    /// Close it at once.
    Refuse,
}

impl Slots {
    fn admit(&mut self, max: usize) -> (Admission, bool) {
        let mut evicted = false;
        if self.active >= max {
            match self.idle.pop_front() {
                Some((_, evict)) => {
                    // The displaced task frees its slot as it ends.
                    let _ = evict.send(());
                    evicted = true;
                }
                None => return (Admission::Refuse, false),
            }
        }
        self.active += 1;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.idle.push_back((self.next_id, tx));
        (Admission::Admit(self.next_id, rx), evicted)
    }

    fn busy(&mut self, id: u64) {
        self.idle.retain(|(i, _)| *i != id);
    }

    fn release(&mut self, id: u64) {
        self.busy(id);
        self.active = self.active.saturating_sub(1);
    }
}

/// Frees a connection's slot however its task ends.
struct SlotGuard {
    slots: Arc<Mutex<Slots>>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.slots.lock() {
            s.release(self.id);
        }
    }
}

/// A request line as read.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Up to and without the newline (or everything before EOF).
    Complete(Vec<u8>),
    /// More than the cap without a newline: nothing beyond it was read.
    TooLong,
    /// The client closed without sending anything.
    Empty,
}

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

/// Reads one line of at most `max` bytes (the newline not counted), never
/// buffering more than `max + 1`.
async fn read_line_capped<R: AsyncBufRead + Unpin>(r: R, max: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut limited = r.take(max as u64 + 1);
    limited.read_until(b'\n', &mut buf).await?;
    Ok(if buf.last() == Some(&b'\n') {
        buf.pop();
        Line::Complete(buf)
    } else if buf.len() > max {
        Line::TooLong
    } else if buf.is_empty() {
        Line::Empty
    } else {
        Line::Complete(buf)
    })
}

/// Serves CNI requests: one JSON line in, one out, per connection, within
/// [`SocketLimits::default`].
pub async fn serve_cni(
    listener: UnixListener,
    requests: mpsc::Sender<Request>,
    metrics: Arc<Metrics>,
) {
    serve_cni_with(listener, requests, metrics, SocketLimits::default()).await
}

/// [`serve_cni`] with explicit limits.
pub async fn serve_cni_with(
    listener: UnixListener,
    requests: mpsc::Sender<Request>,
    metrics: Arc<Metrics>,
    limits: SocketLimits,
) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accepting on the CNI socket");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let admission = match slots.lock() {
            Ok(mut s) => {
                let (a, evicted) = s.admit(limits.max_connections);
                if evicted {
                    metrics.cni_refused(Refusal::Evicted);
                }
                a
            }
            Err(_) => Admission::Refuse,
        };
        let (id, evicted) = match admission {
            Admission::Admit(id, rx) => (id, rx),
            Admission::Refuse => {
                // Dropping the stream closes it: the descriptor is back at once.
                metrics.cni_refused(Refusal::Busy);
                debug!("CNI socket at its connection cap; closing a new connection");
                continue;
            }
        };
        let guard = SlotGuard {
            slots: slots.clone(),
            id,
        };
        let requests = requests.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Held until the task ends, however it ends.
            let guard = guard;
            let (read, mut write) = stream.into_split();
            let line = tokio::select! {
                _ = evicted => {
                    debug!("closing an idle CNI connection to make room");
                    return;
                }
                r = tokio::time::timeout(
                    limits.idle_timeout,
                    read_line_capped(BufReader::new(read), limits.max_line),
                ) => r,
            };
            if let Ok(mut s) = guard.slots.lock() {
                s.busy(id);
            }
            let answer = match line {
                Ok(Ok(Line::Complete(bytes))) => handle(&bytes, &requests).await,
                Ok(Ok(Line::TooLong)) => {
                    metrics.cni_refused(Refusal::TooLong);
                    AgentResponse::refused(format!(
                        "request line longer than {} bytes",
                        limits.max_line
                    ))
                }
                Ok(Ok(Line::Empty)) | Ok(Err(_)) => return,
                Err(_) => {
                    metrics.cni_refused(Refusal::Idle);
                    debug!("closing a CNI connection that sent no complete line in time");
                    return;
                }
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

/// Parses one request and has the agent carry it out.
async fn handle(line: &[u8], requests: &mpsc::Sender<Request>) -> AgentResponse {
    let req = match serde_json::from_slice::<AgentRequest>(line) {
        Ok(r) => r,
        Err(e) => return AgentResponse::refused(format!("bad request: {e}")),
    };
    let (tx, rx) = oneshot::channel();
    if requests.send((req, tx)).await.is_err() {
        return AgentResponse::refused("the agent is shutting down");
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Ok(Ok(resp)) => resp,
        _ => AgentResponse::refused("the agent did not finish in time"),
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/status` (JSON) over HTTP/1.1.
pub async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accepting on the metrics port");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, ReadBuf};
    use tokio::net::UnixStream;

    #[test]
    fn at_the_cap_a_newcomer_displaces_the_oldest_idle_connection() {
        let mut s = Slots::default();
        let mut rxs = Vec::new();
        for _ in 0..3 {
            match s.admit(3) {
                (Admission::Admit(id, rx), false) => rxs.push((id, rx)),
                other => panic!("{other:?}"),
            }
        }
        // The first one became busy (its line arrived): the second is the oldest idle.
        s.busy(rxs[0].0);
        let (a, evicted) = s.admit(3);
        assert!(matches!(a, Admission::Admit(..)) && evicted);
        assert!(
            rxs[1].1.try_recv().is_ok(),
            "the oldest idle one is told to go"
        );
        assert!(rxs[2].1.try_recv().is_err(), "the younger one stays");
        assert!(
            rxs[0].1.try_recv().is_err(),
            "a busy one is never displaced"
        );
    }

    #[test]
    fn at_the_cap_with_every_connection_busy_a_newcomer_is_refused() {
        let mut s = Slots::default();
        let ids: Vec<u64> = (0..2)
            .map(|_| match s.admit(2).0 {
                Admission::Admit(id, _) => id,
                Admission::Refuse => panic!("refused below the cap"),
            })
            .collect();
        for id in &ids {
            s.busy(*id);
        }
        assert!(matches!(s.admit(2), (Admission::Refuse, false)));
        s.release(ids[0]);
        assert!(matches!(s.admit(2), (Admission::Admit(..), false)));
    }

    /// An endless stream of bytes without a newline, counting what is read.
    struct Endless(usize);

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = buf.remaining();
            buf.put_slice(&vec![b'a'; n]);
            self.0 += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_line_over_the_cap_is_refused_after_reading_no_more_than_the_cap() {
        let mut src = Endless(0);
        let line = read_line_capped(BufReader::with_capacity(4096, &mut src), 64 * 1024)
            .await
            .unwrap();
        assert_eq!(line, Line::TooLong);
        assert!(src.0 <= 64 * 1024 + 4096, "read {} bytes", src.0);
        let ok = read_line_capped(&b"{\"op\":\"status\"}\nrest"[..], 64)
            .await
            .unwrap();
        assert_eq!(ok, Line::Complete(b"{\"op\":\"status\"}".to_vec()));
        let exact = [vec![b'x'; 64], vec![b'\n']].concat();
        assert!(matches!(
            read_line_capped(&exact[..], 64).await.unwrap(),
            Line::Complete(_)
        ));
        let over = [vec![b'x'; 65], vec![b'\n']].concat();
        assert_eq!(
            read_line_capped(&over[..], 64).await.unwrap(),
            Line::TooLong
        );
        assert_eq!(read_line_capped(&b""[..], 64).await.unwrap(), Line::Empty);
    }

    /// The socket with a fake agent that answers every request at once.
    async fn serve(limits: SocketLimits) -> (tempfile::TempDir, std::path::PathBuf, Arc<Metrics>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = bind_cni_socket(&path).unwrap();
        let (tx, mut rx) = mpsc::channel::<Request>(8);
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(AgentResponse::ok());
            }
        });
        let metrics = Arc::new(Metrics::default());
        tokio::spawn(serve_cni_with(listener, tx, metrics.clone(), limits));
        (dir, path, metrics)
    }

    async fn status(path: &Path) -> std::io::Result<String> {
        let mut s = UnixStream::connect(path).await?;
        s.write_all(b"{\"op\":\"status\"}\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    async fn closed(s: &mut UnixStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn idle_connections_at_the_cap_never_lock_out_a_real_request() {
        let limits = SocketLimits {
            max_line: 1024,
            max_connections: 4,
            idle_timeout: Duration::from_secs(60),
        };
        let (_dir, path, metrics) = serve(limits).await;
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(UnixStream::connect(&path).await.unwrap());
        }
        let answer = tokio::time::timeout(Duration::from_secs(20), status(&path))
            .await
            .expect("a real request waited behind idle connections")
            .unwrap();
        assert_eq!(answer, "{\"ok\":true}\n");
        // The oldest idle ones were closed to make room, the newest kept.
        assert!(closed(&mut idle[0]).await);
        assert!(metrics.cni_refused_count(Refusal::Evicted) >= 7);
    }

    #[tokio::test]
    async fn a_long_line_gets_an_error_and_a_silent_client_is_closed() {
        let limits = SocketLimits {
            max_line: 1024,
            max_connections: 4,
            idle_timeout: Duration::from_millis(300),
        };
        let (_dir, path, metrics) = serve(limits).await;
        let mut s = UnixStream::connect(&path).await.unwrap();
        let _ = s.write_all(&[b'a'; 4096]).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(out.contains("longer than 1024 bytes"), "{out:?}");
        assert_eq!(metrics.cni_refused_count(Refusal::TooLong), 1);

        let mut silent = UnixStream::connect(&path).await.unwrap();
        silent.write_all(b"{\"op\":").await.unwrap();
        assert!(closed(&mut silent).await);
        assert_eq!(metrics.cni_refused_count(Refusal::Idle), 1);
        assert_eq!(status(&path).await.unwrap(), "{\"ok\":true}\n");
    }
}
