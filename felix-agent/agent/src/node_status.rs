//! The `NetworkUnavailable` condition of this node's Node, in the
//! Kubernetes datastore mode.
//!
//! Cloud node controllers (and some kubelets) start a node with
//! `NetworkUnavailable=True`, which taints it `node.kubernetes.io/network-unavailable`
//! until the network plugin says otherwise. Once the agent has programmed
//! this node's routes after a full sync (the agent core signals it through
//! [`Metrics::network_ready`](crate::metrics::Metrics::network_ready)), this
//! module PATCHes `/api/v1/nodes/<name>/status` with
//! `NetworkUnavailable=False`, reason [`REASON`], retrying with backoff. It
//! does so once per start, and again when the Node as watched shows the
//! condition missing or not `False` (someone reset it).
//!
//! No extra watch: [`tee_own_node`] sits between the datastore and the agent
//! and looks at the Node events already flowing, so this costs the API server
//! one PATCH per agent start.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::DefaultBackoff;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::datastore::{Event, Object};

/// The condition's type.
pub const CONDITION: &str = "NetworkUnavailable";

/// The condition's reason when tabby has set it, as other plugins use
/// `CalicoIsUp` or `FlannelIsUp`.
pub const REASON: &str = "TabbyIsUp";

/// The condition's message.
pub const MESSAGE: &str = "tabby-agent is running on this node and its routes are programmed";

/// The least time between two PATCHes, so that a Node event from before a
/// PATCH cannot cause a burst of them.
const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// What the datastore last showed of this node's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The Node has not been seen yet.
    NotYet,
    /// The Node has no `NetworkUnavailable` condition.
    Missing,
    /// The condition's status (`True`, `False` or `Unknown`).
    Status(String),
}

impl Seen {
    /// What `node` shows.
    pub fn of(node: &Node) -> Seen {
        let condition = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == CONDITION));
        match condition {
            Some(c) => Seen::Status(c.status.clone()),
            None => Seen::Missing,
        }
    }

    /// True when the condition must be (re)set.
    pub fn needs_patch(&self) -> bool {
        match self {
            Seen::NotYet => false,
            Seen::Missing => true,
            Seen::Status(s) => s != "False",
        }
    }
}

/// What the datastore event says of the Node `name`, if anything.
pub fn observe(name: &str, event: &Event) -> Option<Seen> {
    let own = |o: &Object| match o {
        Object::Node(n) if n.metadata.name.as_deref() == Some(name) => Some(Seen::of(n)),
        _ => None,
    };
    match event {
        Event::Apply(o) => own(o),
        Event::Reset(_, objects) => objects.iter().find_map(own),
        // A deleted Node is not ours to write; a Prune carries no object.
        Event::Delete(_) | Event::Prune(..) | Event::Barrier(_) | Event::Progress(_) => None,
    }
}

/// The strategic merge patch: `conditions` merge by `type`, so the other
/// conditions (kubelet's) are left alone.
pub fn patch_body(now: Time) -> Value {
    let condition = NodeCondition {
        type_: CONDITION.into(),
        status: "False".into(),
        reason: Some(REASON.into()),
        message: Some(MESSAGE.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now),
    };
    json!({"status": {"conditions": [condition]}})
}

/// Forwards datastore events from `from` to `to` (the agent), reporting
/// what each shows of Node `name` into `seen`. Returns when either side
/// closes.
pub async fn tee_own_node(
    name: String,
    mut from: mpsc::Receiver<Event>,
    to: mpsc::Sender<Event>,
    seen: watch::Sender<Seen>,
) {
    while let Some(event) = from.recv().await {
        if let Some(s) = observe(&name, &event) {
            seen.send_replace(s);
        }
        if to.send(event).await.is_err() {
            return;
        }
    }
}

/// Sets the condition once `network_ready` is true, and again whenever
/// `seen` shows it missing or not `False`. Returns when either sender is
/// dropped.
pub async fn run(
    client: Client,
    name: String,
    mut network_ready: watch::Receiver<bool>,
    mut seen: watch::Receiver<Seen>,
) {
    let api: Api<Node> = Api::all(client);
    if network_ready.wait_for(|up| *up).await.is_err() {
        return;
    }
    loop {
        // Only what is seen after this PATCH can say it needs repeating.
        seen.borrow_and_update();
        patch_until_done(&api, &name).await;
        tokio::time::sleep(MIN_INTERVAL).await;
        // Not `wait_for`, which would accept the value seen before the PATCH.
        loop {
            if seen.changed().await.is_err() {
                return;
            }
            if seen.borrow_and_update().needs_patch() {
                break;
            }
        }
        info!(node = %name, "{CONDITION} is no longer False; setting it again");
    }
}

/// PATCHes until the API server accepts, with backoff and jitter (0.8 s
/// doubling to 30 s, as the watches).
async fn patch_until_done(api: &Api<Node>, name: &str) {
    let mut backoff = DefaultBackoff::default();
    loop {
        let body = patch_body(Time(k8s_openapi::jiff::Timestamp::now()));
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&body))
            .await
        {
            Ok(_) => {
                info!(node = %name, "{CONDITION}=False set on the Node");
                return;
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                warn!(node = %name, error = %e, retry_in = ?delay, "cannot set {CONDITION} on the Node");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::datastore::{Kind, ObjectRef};
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, condition: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                conditions: Some(
                    [("Ready", Some("True")), (CONDITION, condition)]
                        .iter()
                        .filter_map(|(t, s)| {
                            Some(NodeCondition {
                                type_: (*t).into(),
                                status: (*s)?.into(),
                                ..NodeCondition::default()
                            })
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn apply(n: Node) -> Event {
        Event::Apply(Object::Node(Box::new(n)))
    }

    #[test]
    fn only_a_missing_or_non_false_condition_needs_a_patch() {
        assert!(Seen::of(&node("a", None)).needs_patch());
        assert!(Seen::of(&node("a", Some("True"))).needs_patch());
        assert!(Seen::of(&node("a", Some("Unknown"))).needs_patch());
        assert!(!Seen::of(&node("a", Some("False"))).needs_patch());
        assert!(!Seen::NotYet.needs_patch());
    }

    #[test]
    fn only_events_of_this_node_are_observed() {
        assert_eq!(
            observe("a", &apply(node("a", Some("True")))),
            Some(Seen::Status("True".into()))
        );
        assert_eq!(observe("a", &apply(node("b", None))), None);
        let reset = Event::Reset(
            Kind::Node,
            vec![
                Object::Node(Box::new(node("b", Some("True")))),
                Object::Node(Box::new(node("a", None))),
            ],
        );
        assert_eq!(observe("a", &reset), Some(Seen::Missing));
        let delete = Event::Delete(ObjectRef {
            kind: Kind::Node,
            namespace: None,
            name: "a".into(),
        });
        assert_eq!(observe("a", &delete), None);
    }

    #[test]
    fn the_patch_sets_only_the_network_condition() {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
        assert_eq!(
            patch_body(now),
            json!({"status": {"conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "TabbyIsUp",
                "message": MESSAGE,
                "lastHeartbeatTime": "2023-11-14T22:13:20Z",
                "lastTransitionTime": "2023-11-14T22:13:20Z",
            }]}})
        );
    }

    #[tokio::test]
    async fn the_tee_forwards_everything_and_reports_this_node() {
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let (seen_tx, seen_rx) = watch::channel(Seen::NotYet);
        let tee = tokio::spawn(tee_own_node("a".into(), in_rx, out_tx, seen_tx));
        in_tx.send(apply(node("b", None))).await.unwrap();
        in_tx.send(apply(node("a", Some("True")))).await.unwrap();
        assert_eq!(out_rx.recv().await, Some(apply(node("b", None))));
        assert_eq!(out_rx.recv().await, Some(apply(node("a", Some("True")))));
        assert_eq!(*seen_rx.borrow(), Seen::Status("True".into()));
        drop(in_tx);
        tee.await.unwrap();
    }
}
