//! A fake Kubernetes API server on 127.0.0.1 that answers LIST and WATCH for
//! the four resources the agent watches with recorded responses.
//!
//! Plain HTTP/1.1 over a tokio `TcpListener`, one request per connection
//! (`Connection: close`), so that the bytes on the wire are exactly what the
//! test says: a watch can end cleanly (terminating chunk), hang open, or be
//! cut in the middle of a chunk. Every request is recorded with its query
//! parameters and arrival time.
//!
//! A PATCH of a Node's status (`/api/v1/nodes/<name>/status`, what the
//! agent sends for its NetworkUnavailable condition) is recorded with its
//! body and answered with the Node's name, as the server answers with the
//! patched object.
//!
//! Replies are scripted per resource and verb (LIST or WATCH) and used in
//! order; when a queue is empty the resource's default reply is used (a
//! watch that stays open and silent; a LIST answered 500, so an unexpected
//! LIST is visible). A watch reply is an event log: like the real server it
//! sends only the events newer than the `resourceVersion` asked for.
// Shared by two test crates (kube_watch, kube_agent), each using a part.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// `v1/Pod`, all namespaces.
pub const PODS: &str = "/api/v1/pods";
/// `v1/Namespace`.
pub const NAMESPACES: &str = "/api/v1/namespaces";
/// `networking.k8s.io/v1/NetworkPolicy`, all namespaces.
pub const NETWORK_POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
/// `v1/Node`.
pub const NODES: &str = "/api/v1/nodes";
/// How long a test waits for a condition.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The four, in a fixed order.
pub const ALL: [&str; 4] = [PODS, NAMESPACES, NETWORK_POLICIES, NODES];

/// How a watch response ends once its events are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The terminating chunk, as the server does at `timeoutSeconds`.
    Close,
    /// Stay open and silent until the connection is dropped.
    Hold,
    /// Send half of the next event's chunk, then close the socket.
    Cut,
}

/// One scripted response.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this body.
    Body(String),
    /// 200 and a chunked stream of watch events (JSON lines): those newer
    /// than the requested `resourceVersion`, at most `send` of them.
    Watch {
        /// The event log.
        events: Vec<String>,
        /// How many events to send at most.
        send: usize,
        /// What happens after.
        end: End,
    },
    /// An error with a `metav1.Status` body.
    Status {
        /// HTTP status code.
        code: u16,
        /// `Status.reason`.
        reason: &'static str,
        /// `Status.message`.
        message: String,
    },
}

impl Reply {
    /// A watch that sends every (newer) event of `events` and then ends as `end`.
    pub fn watch(events: &str, end: End) -> Self {
        Self::watch_first(events, usize::MAX, end)
    }

    /// A watch that sends at most `send` (newer) events and then ends as `end`.
    pub fn watch_first(events: &str, send: usize, end: End) -> Self {
        Self::Watch {
            events: events.lines().map(str::to_owned).collect(),
            send,
            end,
        }
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body (empty for GETs).
    pub body: String,
    /// The path without the query.
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    /// When it arrived.
    pub at: Instant,
}

impl Request {
    /// True for a WATCH, false for a LIST (or a PATCH).
    pub fn is_watch(&self) -> bool {
        self.param("watch") == Some("true")
    }

    /// True for a PATCH.
    pub fn is_patch(&self) -> bool {
        self.method == "PATCH"
    }

    /// One query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

struct Script {
    lists: VecDeque<Reply>,
    watches: VecDeque<Reply>,
    list_default: Reply,
    watch_default: Reply,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            lists: VecDeque::new(),
            watches: VecDeque::new(),
            list_default: Reply::Status {
                code: 500,
                reason: "InternalError",
                message: "fake API server: no LIST scripted".into(),
            },
            watch_default: Reply::Watch {
                events: Vec::new(),
                send: 0,
                end: End::Hold,
            },
        }
    }
}

#[derive(Default)]
struct Shared {
    scripts: HashMap<String, Script>,
    requests: Vec<Request>,
    /// Answer every request with this status (an outage).
    failing: Option<u16>,
}

/// Makes the unbound socket the server listens on (a test may make it in
/// another network namespace: a socket stays in the namespace it was made in).
pub type SocketMaker = Arc<dyn Fn() -> TcpSocket + Send + Sync>;

/// The server. Dropping it closes the listener and every connection.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    arrived: Arc<Notify>,
    accept: Option<JoinHandle<()>>,
    /// While stopped: the port, bound but not listening, so connections are
    /// refused and no other socket can take the port.
    reserved: Option<TcpSocket>,
    make_socket: SocketMaker,
}

impl FakeApiServer {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> Self {
        Self::start_with(Arc::new(|| TcpSocket::new_v4().unwrap())).await
    }

    /// Binds 127.0.0.1 on a free port of the sockets `make_socket` makes,
    /// and starts serving.
    pub async fn start_with(make_socket: SocketMaker) -> Self {
        let socket = make_socket();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Self {
            addr,
            shared: Arc::default(),
            arrived: Arc::default(),
            accept: None,
            reserved: None,
            make_socket,
        };
        server.serve(listener);
        server
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client pointed at the server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Queues a LIST reply for `path`.
    pub fn list(&self, path: &str, reply: Reply) {
        self.script(path, |s| s.lists.push_back(reply));
    }

    /// Queues a WATCH reply for `path`.
    pub fn watch(&self, path: &str, reply: Reply) {
        self.script(path, |s| s.watches.push_back(reply));
    }

    /// The LIST reply for `path` once its queue is empty.
    pub fn list_default(&self, path: &str, reply: Reply) {
        self.script(path, |s| s.list_default = reply);
    }

    /// The WATCH reply for `path` once its queue is empty.
    pub fn watch_default(&self, path: &str, reply: Reply) {
        self.script(path, |s| s.watch_default = reply);
    }

    /// Answers every request with `code` (or serves normally again with `None`).
    pub fn fail_with(&self, code: Option<u16>) {
        self.shared.lock().unwrap().failing = code;
    }

    /// Closes the listener and every open connection: connections are
    /// refused until [`FakeApiServer::restart`].
    pub async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            // Wait for the listener and connections to be dropped.
            let _ = accept.await;
            let socket = (self.make_socket)();
            socket.set_reuseaddr(true).unwrap();
            socket.bind(self.addr).unwrap();
            self.reserved = Some(socket);
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let socket = self.reserved.take().unwrap();
        self.serve(socket.listen(1024).unwrap());
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// The requests for `path`, LISTs (`watch == false`) or WATCHes.
    pub fn requests_for(&self, path: &str, watch: bool) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path && r.is_watch() == watch)
            .collect()
    }

    /// Waits until `done` holds for the requests received, or fails after
    /// `deadline`.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        what: &str,
        done: impl Fn(&[Request]) -> bool,
    ) {
        let waited = tokio::time::timeout(deadline, async {
            loop {
                let arrived = self.arrived.notified();
                tokio::pin!(arrived);
                // Registered before checking, so a request in between is not missed.
                arrived.as_mut().enable();
                if done(&self.requests()) {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        if waited.is_err() {
            panic!(
                "timed out waiting for {what}; requests: {:#?}",
                self.requests()
            );
        }
    }

    /// The `resourceVersion` each WATCH of `path` asked for, in order.
    pub fn watch_versions(&self, path: &str) -> Vec<String> {
        self.requests_for(path, true)
            .iter()
            .map(|r| r.param("resourceVersion").unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits until `n` LISTs (`watch == false`) or WATCHes of `path` arrived.
    pub async fn wait_for_requests(&self, path: &str, watch: bool, n: usize) {
        let verb = if watch { "WATCH" } else { "LIST" };
        self.wait_for(DEADLINE, &format!("{n} {verb} of {path}"), |reqs| {
            reqs.iter()
                .filter(|r| r.path == path && r.is_watch() == watch)
                .count()
                >= n
        })
        .await;
    }

    fn script(&self, path: &str, f: impl FnOnce(&mut Script)) {
        f(self
            .shared
            .lock()
            .unwrap()
            .scripts
            .entry(path.into())
            .or_default());
    }

    fn serve(&mut self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let arrived = Arc::clone(&self.arrived);
        self.accept = Some(tokio::spawn(async move {
            // Owned by the accept task: aborting it drops every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        connections.spawn(serve_connection(stream, Arc::clone(&shared), Arc::clone(&arrived)));
                    }
                    Some(_) = connections.join_next() => {}
                }
            }
        }));
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Mutex<Shared>>, arrived: Arc<Notify>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let reply = {
        let mut shared = shared.lock().unwrap();
        shared.requests.push(request.clone());
        match shared.failing {
            Some(code) => Reply::Status {
                code,
                reason: "InternalError",
                message: "etcdserver: request timed out".into(),
            },
            None if request.is_patch() => patched_node(&request.path),
            None => {
                let script = shared.scripts.entry(request.path.clone()).or_default();
                if request.is_watch() {
                    script
                        .watches
                        .pop_front()
                        .unwrap_or_else(|| script.watch_default.clone())
                } else {
                    script
                        .lists
                        .pop_front()
                        .unwrap_or_else(|| script.list_default.clone())
                }
            }
        }
    };
    arrived.notify_waiters();
    // Write errors mean the client went away: nothing to do.
    let _ = respond(&mut stream, &request, reply).await;
}

async fn respond(stream: &mut TcpStream, request: &Request, reply: Reply) -> std::io::Result<()> {
    match reply {
        Reply::Body(body) => write_body(stream, 200, "OK", &body).await,
        Reply::Status {
            code,
            reason,
            message,
        } => {
            let body = serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            });
            write_body(stream, code, reason, &body.to_string()).await
        }
        Reply::Watch { events, send, end } => {
            let since: u64 = request
                .param("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut newer = events.iter().filter(|e| is_newer(e, since));
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                      Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )
                .await?;
            for event in newer.by_ref().take(send) {
                let chunk = format!("{event}\n");
                stream
                    .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
                    .await?;
                stream.flush().await?;
            }
            match end {
                End::Close => stream.write_all(b"0\r\n\r\n").await?,
                End::Hold => std::future::pending::<()>().await,
                End::Cut => {
                    if let Some(event) = newer.next() {
                        let chunk = format!("{event}\n");
                        let half = &chunk.as_bytes()[..chunk.len() / 2];
                        stream
                            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .await?;
                        stream.write_all(half).await?;
                    }
                }
            }
            stream.flush().await?;
            stream.shutdown().await
        }
    }
}

async fn write_body(
    stream: &mut TcpStream,
    code: u16,
    reason: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// The answer to a PATCH of `/api/v1/nodes/<name>/status`: the Node, of
/// which the client only needs the shape.
fn patched_node(path: &str) -> Reply {
    let name = path
        .strip_prefix("/api/v1/nodes/")
        .and_then(|p| p.strip_suffix("/status"));
    match name {
        Some(name) => Reply::Body(
            serde_json::json!({
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {"name": name},
            })
            .to_string(),
        ),
        None => Reply::Status {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("fake API server: no PATCH of {path}"),
        },
    }
}

/// True if the event is newer than `since` (ERROR events have no version
/// and are always sent).
fn is_newer(event: &str, since: u64) -> bool {
    let value: serde_json::Value = serde_json::from_str(event).unwrap();
    match value["object"]["metadata"]["resourceVersion"].as_str() {
        Some(rv) => rv.parse::<u64>().unwrap() > since,
        None => true,
    }
}

/// Reads a request: the head, and the body when `Content-Length` says
/// there is one (a PATCH).
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || data.len() > 64 * 1024 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(data[..end].to_vec()).ok()?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = data[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let mut request_line = head.lines().next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request {
        method,
        content_type: header("content-type"),
        body: String::from_utf8(body).ok()?,
        path: path.into(),
        query,
        at: Instant::now(),
    })
}

/// `application/x-www-form-urlencoded` decoding, as kube encodes queries.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}
