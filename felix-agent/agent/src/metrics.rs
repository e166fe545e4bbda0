//! Prometheus metrics, rendered in the text exposition format.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::server::Refusal;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters by a label value (`tabby_invalid_objects_total{kind}`).
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<std::collections::BTreeMap<String, u64>>);

impl LabeledCounter {
    /// Adds one to `label`'s count.
    pub fn inc(&self, label: &str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(label.to_string()).or_default() += 1;
        }
    }

    /// The count of `label`.
    pub fn get(&self, label: &str) -> u64 {
        self.0
            .lock()
            .map(|m| m.get(label).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// The kinds `tabby_invalid_objects_total` always shows, at 0 until one is
/// refused (so that a rate over them exists from the start).
const OBJECT_KINDS: [&str; 10] = [
    "BGPConfiguration",
    "BGPFilter",
    "BGPPeer",
    "EndpointSlice",
    "Namespace",
    "NetworkPolicy",
    "Node",
    "Pod",
    "Secret",
    "Service",
];

/// Upper bounds (seconds) of the programming latency histogram.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Ok(mut g) = self.inner.lock() {
            if g.0.is_empty() {
                g.0 = vec![0; BUCKETS.len()];
            }
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    g.0[i] += 1;
                }
            }
            g.1 += secs;
            g.2 += 1;
        }
    }

    fn render(&self, name: &str, out: &mut String) {
        let Ok(g) = self.inner.lock() else { return };
        out.push_str(&format!("# TYPE {name} histogram\n"));
        for (i, b) in BUCKETS.iter().enumerate() {
            let n = g.0.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {n}\n"));
        }
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {}\n", g.2));
        out.push_str(&format!("{name}_sum {}\n{name}_count {}\n", g.1, g.2));
    }
}

/// Everything the agent exports.
#[derive(Debug, Default)]
pub struct Metrics {
    gauges: Mutex<[usize; 4]>,
    ready: AtomicBool,
    /// True once this node's routes are programmed after a full sync; a
    /// watch channel, because the Kubernetes layer reports it on the Node.
    network_ready: tokio::sync::watch::Sender<bool>,
    /// Time from a change to "programmed in the kernel".
    pub programming: Histogram,
    /// nft transactions or netlink calls that failed.
    pub dataplane_errors: Counter,
    /// Full resyncs after the table was tampered with.
    pub resyncs: Counter,
    /// Endpoint records refused, per reason.
    endpoints_refused: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Objects refused at the datastore boundary, by kind.
    pub invalid_objects: LabeledCounter,
    /// CNI connections closed unserved, per [`Refusal`] (in `Refusal::ALL` order).
    cni_refused: [Counter; 4],
    status: Mutex<String>,
}

impl Metrics {
    /// Counts a CNI connection closed without being served.
    pub fn cni_refused(&self, why: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|r| *r == why) {
            self.cni_refused[i].inc();
        }
    }

    /// CNI connections closed for `why` so far.
    pub fn cni_refused_count(&self, why: Refusal) -> u64 {
        Refusal::ALL
            .iter()
            .position(|r| *r == why)
            .map(|i| self.cni_refused[i].get())
            .unwrap_or(0)
    }

    /// Sets the gauges: local endpoints, policies, sets, pods known.
    pub fn set_gauges(&self, endpoints: usize, policies: usize, sets: usize, pods: usize) {
        if let Ok(mut g) = self.gauges.lock() {
            *g = [endpoints, policies, sets, pods];
        }
    }

    /// Sets readiness (first full sync programmed).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Readiness.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sets the JSON served at `/status`.
    pub fn set_status(&self, json: String) {
        if let Ok(mut s) = self.status.lock() {
            *s = json;
        }
    }

    /// The JSON served at `/status` (`{}` before the first one).
    pub fn status(&self) -> String {
        match self.status.lock() {
            Ok(s) if !s.is_empty() => format!("{}\n", *s),
            _ => "{}\n".to_string(),
        }
    }

    /// Sets whether this node's network is up: first full sync programmed
    /// and the routes of its blocks installed.
    pub fn set_network_ready(&self, up: bool) {
        self.network_ready
            .send_if_modified(|v| std::mem::replace(v, up) != up);
    }

    /// Counts a refused endpoint record.
    pub fn endpoint_refused(&self, reason: crate::admission::RefusalReason) {
        if let Ok(mut m) = self.endpoints_refused.lock() {
            *m.entry(reason.as_str()).or_default() += 1;
        }
    }

    /// Refused endpoint records of one reason so far.
    pub fn endpoints_refused(&self, reason: crate::admission::RefusalReason) -> u64 {
        self.endpoints_refused
            .lock()
            .map(|m| m.get(reason.as_str()).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Follows [`Metrics::set_network_ready`].
    pub fn network_ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.network_ready.subscribe()
    }

    /// The exposition text; `drops` are per endpoint chain drop counters.
    pub fn render(&self, drops: &[(String, u64)]) -> String {
        let g = self.gauges.lock().map(|g| *g).unwrap_or_default();
        let mut out = String::new();
        for (name, help, v) in [
            (
                "tabby_endpoints",
                "Local endpoints programmed by this agent.",
                g[0],
            ),
            ("tabby_policies", "NetworkPolicies known.", g[1]),
            (
                "tabby_sets",
                "Address and named-port sets known to the policy index.",
                g[2],
            ),
            ("tabby_pods", "Pods known to the policy index.", g[3]),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        }
        out.push_str(&format!(
            "# HELP tabby_ready 1 once the first full sync is programmed.\n# TYPE tabby_ready gauge\ntabby_ready {}\n",
            u8::from(self.is_ready())
        ));
        out.push_str(&format!(
            "# HELP tabby_network_ready 1 once this node's routes are programmed after a full sync.\n# TYPE tabby_network_ready gauge\ntabby_network_ready {}\n",
            u8::from(*self.network_ready.borrow())
        ));
        out.push_str(
            "# HELP tabby_programming_seconds Time to program a change into the kernel.\n",
        );
        self.programming
            .render("tabby_programming_seconds", &mut out);
        out.push_str(&format!(
            "# HELP tabby_dataplane_errors_total Failed nft transactions and netlink calls.\n# TYPE tabby_dataplane_errors_total counter\ntabby_dataplane_errors_total {}\n",
            self.dataplane_errors.get()
        ));
        out.push_str(&format!(
            "# HELP tabby_resyncs_total Full resyncs after the table was changed by someone else.\n# TYPE tabby_resyncs_total counter\ntabby_resyncs_total {}\n",
            self.resyncs.get()
        ));
        out.push_str("# HELP tabby_endpoints_refused_total Endpoint records refused (never programmed), per reason.\n# TYPE tabby_endpoints_refused_total counter\n");
        for reason in crate::admission::RefusalReason::ALL {
            out.push_str(&format!(
                "tabby_endpoints_refused_total{{reason=\"{}\"}} {}\n",
                reason.as_str(),
                self.endpoints_refused(reason)
            ));
        }
        out.push_str("# HELP tabby_invalid_objects_total Objects refused by validation (the last valid version stays in force), by kind.\n# TYPE tabby_invalid_objects_total counter\n");
        if let Ok(counts) = self.invalid_objects.0.lock() {
            let mut kinds: std::collections::BTreeSet<&str> = OBJECT_KINDS.into_iter().collect();
            kinds.extend(counts.keys().map(String::as_str));
            for kind in kinds {
                let n = counts.get(kind).copied().unwrap_or(0);
                out.push_str(&format!(
                    "tabby_invalid_objects_total{{kind=\"{kind}\"}} {n}\n"
                ));
            }
        }
        self.render_bgp_rejected(&mut out);
        out.push_str("# HELP tabby_cni_connections_refused_total CNI socket connections closed without being served: busy (at the cap, all mid-request), evicted (idle, displaced by a newer one at the cap), too_long (request line over the cap), idle (no complete line in time).\n# TYPE tabby_cni_connections_refused_total counter\n");
        for why in Refusal::ALL {
            out.push_str(&format!(
                "tabby_cni_connections_refused_total{{reason=\"{}\"}} {}\n",
                why.as_str(),
                self.cni_refused_count(why)
            ));
        }
        out.push_str("# HELP tabby_dropped_packets_total Packets dropped by policy, per endpoint and direction.\n# TYPE tabby_dropped_packets_total counter\n");
        for (chain, n) in drops {
            let (dir, iface) = match chain.split_once('_') {
                Some(("in", i)) => ("ingress", i),
                Some(("out", i)) => ("egress", i),
                _ => continue,
            };
            out.push_str(&format!(
                "tabby_dropped_packets_total{{interface=\"{iface}\",direction=\"{dir}\"}} {n}\n"
            ));
        }
        out
    }
}

impl Metrics {
    /// `tabby_bgp_prefixes_rejected_total{peer,reason}`, from the BGP
    /// section of the status (the speaker counts, per peer and reason, the
    /// prefixes its import policy refused), so both always agree.
    fn render_bgp_rejected(&self, out: &mut String) {
        out.push_str("# HELP tabby_bgp_prefixes_rejected_total Prefixes a BGP peer sent that the import policy refused, per peer and reason.\n# TYPE tabby_bgp_prefixes_rejected_total counter\n");
        let status: serde_json::Value = match self.status.lock() {
            Ok(s) => serde_json::from_str(&s).unwrap_or_default(),
            Err(_) => return,
        };
        let Some(peers) = status["bgp"]["peers"].as_array() else {
            return;
        };
        for p in peers {
            let (Some(addr), Some(totals)) =
                (p["address"].as_str(), p["rejectedTotal"].as_object())
            else {
                continue;
            };
            for (reason, n) in totals {
                if let Some(n) = n.as_u64() {
                    out.push_str(&format!(
                        "tabby_bgp_prefixes_rejected_total{{peer=\"{addr}\",reason=\"{reason}\"}} {n}\n"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.set_gauges(3, 2, 5, 10);
        m.programming.observe(Duration::from_millis(3));
        m.dataplane_errors.inc();
        let text = m.render(&[("in_tab0123456789ab".into(), 7)]);
        assert!(text.contains("tabby_endpoints 3\n"));
        assert!(text.contains("tabby_programming_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("tabby_programming_seconds_bucket{le=\"0.002\"} 0\n"));
        assert!(text.contains("tabby_programming_seconds_count 1\n"));
        assert!(text.contains("tabby_dataplane_errors_total 1\n"));
        assert!(text.contains("tabby_invalid_objects_total{kind=\"NetworkPolicy\"} 0\n"));
        assert!(text.contains(
            "tabby_dropped_packets_total{interface=\"tab0123456789ab\",direction=\"ingress\"} 7\n"
        ));
    }

    #[test]
    fn refused_bgp_prefixes_are_counted_per_peer_and_reason() {
        let m = Metrics::default();
        m.set_status(
            r#"{"bgp":{"peers":[{"address":"10.99.0.250","rejectedTotal":{"default-route":1,"pod-space":3}}]}}"#
                .into(),
        );
        let text = m.render(&[]);
        assert!(text.contains(
            "tabby_bgp_prefixes_rejected_total{peer=\"10.99.0.250\",reason=\"pod-space\"} 3\n"
        ));
        assert!(text.contains("reason=\"default-route\"} 1\n"));
    }
}
