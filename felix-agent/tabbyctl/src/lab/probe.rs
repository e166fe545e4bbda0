//! `tabbyctl lab probe`: real connections from pod namespaces to pod
//! addresses, all pairs in parallel, as a reachability matrix.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tabby_sys::NetNs;

use super::PodRecord;

/// How many source pods probe at once (each runs all its targets at once).
const PARALLEL_ROWS: usize = 8;

/// One probe target or source: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// `namespace/name`.
    pub id: String,
    /// The pod's namespace file.
    pub netns: PathBuf,
    /// The address probed (its first IPv4 address, else its first).
    pub ip: IpAddr,
}

impl Endpoint {
    /// The endpoint of a lab pod.
    pub fn of(p: &PodRecord) -> anyhow::Result<Endpoint> {
        let ips: Vec<IpAddr> = p.ips.iter().filter_map(|i| i.parse().ok()).collect();
        let ip = ips
            .iter()
            .find(|i| i.is_ipv4())
            .or(ips.first())
            .copied()
            .ok_or_else(|| anyhow!("{}/{} has no address", p.namespace, p.name))?;
        Ok(Endpoint {
            id: format!("{}/{}", p.namespace, p.name),
            netns: PathBuf::from("/run/netns").join(&p.netns),
            ip,
        })
    }
}

/// The matrix: from → to → connected.
pub type Matrix = BTreeMap<String, BTreeMap<String, bool>>;

/// Probes every pair of `from` × `to` on `port`.
pub fn run(
    from: &[Endpoint],
    to: &[Endpoint],
    port: u16,
    udp: bool,
    timeout: Duration,
) -> anyhow::Result<Matrix> {
    let rows = std::sync::Mutex::new(from.iter());
    let matrix = std::sync::Mutex::new(Matrix::new());
    let errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_ROWS.min(from.len()) {
            s.spawn(|| {
                loop {
                    let next = rows.lock().ok().and_then(|mut r| r.next());
                    let Some(src) = next else { break };
                    match probe_row(src, to, port, udp, timeout) {
                        Ok(row) => {
                            if let Ok(mut m) = matrix.lock() {
                                m.insert(src.id.clone(), row);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut errs) = errors.lock() {
                                errs.push(format!("{}: {e:#}", src.id));
                            }
                        }
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_default();
    if !errors.is_empty() {
        bail!("probing failed:\n{}", errors.join("\n"));
    }
    Ok(matrix.into_inner().unwrap_or_default())
}

fn probe_row(
    src: &Endpoint,
    to: &[Endpoint],
    port: u16,
    udp: bool,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, bool>> {
    let ns = NetNs::open(&src.netns).with_context(|| format!("opening {}", src.netns.display()))?;
    // A fresh thread inside the pod's namespace, with a runtime of its
    // own, so every socket is created in that namespace.
    ns.run(|| -> anyhow::Result<BTreeMap<String, bool>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime")?;
        Ok(rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for dst in to {
                let id = dst.id.clone();
                let addr = SocketAddr::new(dst.ip, port);
                set.spawn(async move {
                    let ok = tokio::time::timeout(timeout, connect(addr, udp))
                        .await
                        .unwrap_or(false);
                    (id, ok)
                });
            }
            let mut row = BTreeMap::new();
            while let Some(r) = set.join_next().await {
                if let Ok((id, ok)) = r {
                    row.insert(id, ok);
                }
            }
            row
        }))
    })
    .map_err(|e| anyhow!("entering {}: {e}", src.netns.display()))?
}

/// True when a TCP connection is established, or a UDP datagram comes back.
async fn connect(addr: SocketAddr, udp: bool) -> bool {
    if udp {
        let bind: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
            return false;
        };
        if sock.connect(addr).await.is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        // A lost datagram is retried: UDP has no handshake to do it.
        loop {
            if sock.send(b"tabby-probe").await.is_err() {
                return false;
            }
            match tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await {
                Ok(Ok(n)) => return &buf[..n] == b"tabby-probe",
                Ok(Err(_)) => return false,
                Err(_) => continue,
            }
        }
    } else {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    }
}

/// The matrix as a table a person can read at a glance: `.` connected,
/// `X` not.
pub fn render(matrix: &Matrix, port: u16, protocol: &str) -> String {
    let cols: Vec<&String> = {
        let mut c: Vec<&String> = matrix.values().flat_map(|r| r.keys()).collect();
        c.sort();
        c.dedup();
        c
    };
    let mut rows = vec![{
        let mut h = vec![format!("{protocol}/{port}")];
        h.extend(cols.iter().map(|c| (*c).clone()));
        h
    }];
    for (from, row) in matrix {
        let mut r = vec![from.clone()];
        for c in &cols {
            r.push(
                match row.get(*c) {
                    Some(true) => ".",
                    Some(false) => "X",
                    None => "?",
                }
                .to_string(),
            );
        }
        rows.push(r);
    }
    let mut out = super::table(&rows);
    out.push_str(". = connected, X = no connection (rows: from, columns: to)\n");
    out
}

/// The JSON form: `{"port", "protocol", "matrix"}`.
pub fn to_json(matrix: &Matrix, port: u16, protocol: &str) -> serde_json::Value {
    serde_json::json!({"port": port, "protocol": protocol, "matrix": matrix})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn matrix() -> Matrix {
        let mut m = Matrix::new();
        m.insert(
            "x/a".into(),
            [("x/a".to_string(), true), ("x/b".to_string(), false)].into(),
        );
        m.insert(
            "x/b".into(),
            [("x/a".to_string(), true), ("x/b".to_string(), true)].into(),
        );
        m
    }

    #[test]
    fn the_table_has_a_row_per_source_and_a_column_per_target() {
        let t = render(&matrix(), 80, "TCP");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "TCP/80  x/a  x/b");
        assert_eq!(lines[1], "x/a     .    X");
        assert_eq!(lines[2], "x/b     .    .");
    }

    #[test]
    fn the_json_has_exactly_the_documented_keys() {
        let j = to_json(&matrix(), 80, "TCP");
        assert_eq!(
            j,
            serde_json::json!({"port": 80, "protocol": "TCP", "matrix": {
                "x/a": {"x/a": true, "x/b": false},
                "x/b": {"x/a": true, "x/b": true},
            }})
        );
    }
}
