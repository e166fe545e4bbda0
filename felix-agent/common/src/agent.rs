//! The agent socket protocol: how the CNI plugin asks the node agent to
//! program a new endpoint's policy and waits until it is live.
//!
//! One request per connection on a Unix stream socket
//! (`<runDir>/agent.sock` by default), each message one line of JSON:
//!
//! ```text
//! plugin -> agent  {"op":"add","endpoint":{...EndpointRecord...}}
//! agent  -> plugin {"ok":true}
//!                  {"ok":false,"error":"why"}
//! plugin -> agent  {"op":"del","containerId":"...","ifname":"eth0"}
//! plugin -> agent  {"op":"status"}
//! ```
//!
//! The agent answers `add` only once the endpoint's rules are in the kernel,
//! so the plugin can return to the runtime (which then starts the
//! container) knowing that no packet flows before policy applies.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::endpoint::EndpointRecord;

/// Name of the file under `runDir` where the agent tells the plugin how to
/// wait for it (the agent's flags set it; the plugin reads it on ADD).
pub const CNI_SETTINGS_FILE: &str = "cni-settings.json";

/// How the plugin waits for the agent on ADD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CniSettings {
    /// How long ADD waits for the agent's acknowledgement.
    pub timeout_ms: u64,
    /// When the agent does not answer: false fails the ADD (the default),
    /// true lets the pod start without waiting for its policy.
    pub fail_open: bool,
}

impl Default for CniSettings {
    fn default() -> Self {
        CniSettings {
            timeout_ms: 10_000,
            fail_open: false,
        }
    }
}

impl CniSettings {
    /// Reads the settings under `run_dir`; the defaults when there are none
    /// (the agent has never run) or they do not parse.
    pub fn read(run_dir: &Path) -> Self {
        std::fs::read(run_dir.join(CNI_SETTINGS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the settings under `run_dir` atomically.
    pub fn write(&self, run_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(run_dir)?;
        crate::atomic::write_atomic(
            &run_dir.join(CNI_SETTINGS_FILE),
            &serde_json::to_vec(self).map_err(std::io::Error::other)?,
            0o644,
        )
    }

    /// The timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

/// A request from the plugin to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum AgentRequest {
    /// Program this new endpoint; answer once it is live.
    Add {
        /// The endpoint the plugin just wired.
        endpoint: EndpointRecord,
    },
    /// The endpoint is gone.
    #[serde(rename_all = "camelCase")]
    Del {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
    },
    /// Is the agent able to program endpoints?
    Status,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentResponse {
    /// True when the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AgentResponse {
    /// A success.
    pub fn ok() -> Self {
        AgentResponse {
            ok: true,
            error: None,
        }
    }

    /// A refusal with its reason.
    pub fn refused(why: impl Into<String>) -> Self {
        AgentResponse {
            ok: false,
            error: Some(why.into()),
        }
    }
}

/// Why a request to the agent did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nobody listens on the socket (agent not running or not ready).
    #[error("node agent is not reachable at {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not answer in time.
    #[error("node agent at {path} did not answer within {timeout:?}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// How long the plugin waited.
        timeout: Duration,
    },
    /// The agent answered that it could not do it.
    #[error("node agent refused: {0}")]
    Refused(String),
    /// The conversation broke down.
    #[error("node agent at {path}: {detail}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// Sends one request and waits for the answer, at most `timeout` in all.
pub fn call(path: &Path, req: &AgentRequest, timeout: Duration) -> Result<(), AgentError> {
    let stream = UnixStream::connect(path).map_err(|source| AgentError::Unreachable {
        path: path.to_path_buf(),
        source,
    })?;
    let proto = |detail: String| AgentError::Protocol {
        path: path.to_path_buf(),
        detail,
    };
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| proto(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| proto(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(|e| {
        if timed_out(&e) {
            AgentError::Timeout {
                path: path.to_path_buf(),
                timeout,
            }
        } else {
            proto(format!("sending request: {e}"))
        }
    })?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| {
            if timed_out(&e) {
                AgentError::Timeout {
                    path: path.to_path_buf(),
                    timeout,
                }
            } else {
                proto(format!("reading answer: {e}"))
            }
        })?;
    if answer.is_empty() {
        return Err(proto("connection closed without an answer".into()));
    }
    let resp: AgentResponse =
        serde_json::from_str(&answer).map_err(|e| proto(format!("bad answer {answer:?}: {e}")))?;
    if resp.ok {
        Ok(())
    } else {
        Err(AgentError::Refused(
            resp.error.unwrap_or_else(|| "no reason given".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn settings_default_when_absent_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CniSettings::read(dir.path()), CniSettings::default());
        let s = CniSettings {
            timeout_ms: 2500,
            fail_open: true,
        };
        s.write(dir.path()).unwrap();
        assert_eq!(CniSettings::read(dir.path()), s);
        std::fs::write(dir.path().join(CNI_SETTINGS_FILE), "{\"timeoutMs\": 7}").unwrap();
        assert_eq!(CniSettings::read(dir.path()).timeout_ms, 7);
    }

    #[test]
    fn requests_have_the_documented_wire_form() {
        let del = AgentRequest::Del {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(
            serde_json::to_string(&del).unwrap(),
            r#"{"op":"del","containerId":"c1","ifname":"eth0"}"#
        );
        assert_eq!(
            serde_json::to_string(&AgentRequest::Status).unwrap(),
            r#"{"op":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&AgentResponse::ok()).unwrap(),
            r#"{"ok":true}"#
        );
    }

    fn serve_once(
        answer: Option<&'static str>,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut req = String::new();
            BufReader::new(&s).read_line(&mut req).unwrap();
            match answer {
                Some(a) => {
                    (&s).write_all(a.as_bytes()).unwrap();
                }
                None => {
                    // Hold the connection open without answering until the
                    // client gives up and closes it.
                    let mut rest = String::new();
                    let _ = BufReader::new(&s).read_line(&mut rest);
                }
            }
            req
        });
        (dir, path, h)
    }

    #[test]
    fn an_acknowledged_request_succeeds() {
        let (_d, path, h) = serve_once(Some("{\"ok\":true}\n"));
        call(&path, &AgentRequest::Status, Duration::from_secs(30)).unwrap();
        assert_eq!(h.join().unwrap(), "{\"op\":\"status\"}\n");
    }

    #[test]
    fn a_refusal_carries_the_reason() {
        let (_d, path, _h) = serve_once(Some("{\"ok\":false,\"error\":\"not ready\"}\n"));
        let err = call(&path, &AgentRequest::Status, Duration::from_secs(30)).unwrap_err();
        assert!(
            matches!(err, AgentError::Refused(ref m) if m == "not ready"),
            "{err}"
        );
    }

    #[test]
    fn a_silent_agent_times_out() {
        let (_d, path, h) = serve_once(None);
        let err = call(&path, &AgentRequest::Status, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, AgentError::Timeout { .. }), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn a_missing_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let err = call(
            &dir.path().join("nope.sock"),
            &AgentRequest::Status,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, AgentError::Unreachable { .. }), "{err}");
    }
}
