//! The RIB: Adj-RIB-In per peer and Loc-RIB in one table keyed by prefix
//! (each prefix holds the paths every peer sent, best first), the RFC 4271
//! §9.1 decision process, Adj-RIB-Out per peer with iBGP split horizon and
//! route reflection (RFC 4456), and graceful restart stale handling
//! (RFC 4724).
//!
//! Memory matters (100k routes in a few MB): path attributes are interned
//! and shared with `Arc`, prefixes are `Ipv4Net`/`Ipv6Net` keys in one map
//! per family, and a prefix with a single path stores it inline.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::packet::attribute::{FLAG_PARTIAL, FLAG_TRANSITIVE};
use crate::packet::update::{encode_announce, encode_withdraw};
use crate::packet::{Ctx, Family, Message, PathAttrs, Update};
use crate::policy::{PeerPolicy, PrefixCommunities, RejectReason, communities_for};

/// Index of a peer in the RIB; [`LOCAL`] is this speaker.
pub type PeerIdx = u16;
/// The source of locally originated routes.
pub const LOCAL: PeerIdx = 0;

/// What the RIB needs to know about a peer with an Established session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address (last decision tie-break).
    pub address: IpAddr,
    /// The peer's AS.
    pub asn: u32,
    /// The peer's BGP identifier.
    pub router_id: Ipv4Addr,
    /// Route reflector client of ours.
    pub rr_client: bool,
    /// Always advertise ourselves as next hop, also to iBGP.
    pub next_hop_self: bool,
    /// Export only locally originated routes to this peer.
    pub export_local_only: bool,
    /// Our IPv4 address on this session (next hop for IPv4 routes).
    pub local_v4: Option<Ipv4Addr>,
    /// Our IPv6 address for this session (next hop for IPv6 routes).
    pub local_v6: Option<Ipv6Addr>,
    /// Our link-local IPv6 address on the session's interface, sent next to
    /// `local_v6` to eBGP peers (RFC 2545).
    pub local_link_local: Option<Ipv6Addr>,
    /// Negotiated families.
    pub families: Vec<Family>,
    /// Encoding context of the session.
    pub ctx: Ctx,
}

/// Speaker-wide RIB settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Cluster ID when reflecting routes (defaults to the router ID).
    pub cluster_id: Ipv4Addr,
    /// LOCAL_PREF for routes without one.
    pub default_local_pref: u32,
    /// Install all equally good next hops (ECMP), not just the best.
    pub multipath: bool,
}

/// A route's attributes together with its next hop; interned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteAttrs {
    /// Next hop for this family (unspecified for local routes).
    pub next_hop: IpAddr,
    /// Path attributes (NEXT_HOP field unused here).
    pub attrs: PathAttrs,
}

#[derive(Debug, Clone)]
struct Path {
    attrs: Arc<RouteAttrs>,
    peer: PeerIdx,
    stale: bool,
}

/// The paths of one prefix, best first: inline when there is one (the
/// common case, no allocation), boxed otherwise; 16 bytes either way.
#[derive(Debug, Clone, Default)]
enum Paths {
    #[default]
    Empty,
    One(Path),
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps Paths at 16 bytes; several paths per prefix are rare"
    )]
    Many(Box<Vec<Path>>),
}

impl Paths {
    fn as_slice(&self) -> &[Path] {
        match self {
            Self::Empty => &[],
            Self::One(p) => std::slice::from_ref(p),
            Self::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Path] {
        match self {
            Self::Empty => &mut [],
            Self::One(p) => std::slice::from_mut(p),
            Self::Many(v) => v,
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, Path> {
        self.as_slice().iter()
    }

    fn iter_mut(&mut self) -> std::slice::IterMut<'_, Path> {
        self.as_mut_slice().iter_mut()
    }

    fn first(&self) -> Option<&Path> {
        self.as_slice().first()
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }

    fn push(&mut self, p: Path) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(p),
            Self::One(x) => Self::Many(Box::new(vec![x, p])),
            Self::Many(mut v) => {
                v.push(p);
                Self::Many(v)
            }
        };
    }

    fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        *self = match std::mem::take(self) {
            Self::One(p) if keep(&p) => Self::One(p),
            Self::Many(mut v) => {
                v.retain(|p| keep(p));
                match v.len() {
                    0 => Self::Empty,
                    1 => v.pop().map_or(Self::Empty, Self::One),
                    _ => Self::Many(v),
                }
            }
            _ => Self::Empty,
        };
    }
}

/// A change of the best route for a prefix, as the kernel should see it:
/// the next hops to forward to, empty when the prefix is gone (or is ours).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BestChange {
    /// The prefix.
    pub prefix: IpNet,
    /// ECMP next hops, sorted; empty means withdrawn.
    pub next_hops: Vec<IpAddr>,
}

/// Per-peer prefix counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerCounts {
    /// Prefixes received (accepted + rejected by loop checks or policy).
    pub received: u64,
    /// Prefixes the import policy refuses now.
    pub filtered: u64,
    /// Prefixes in Adj-RIB-In.
    pub accepted: u64,
    /// Prefixes in Adj-RIB-Out.
    pub advertised: u64,
}

/// A prefix the import policy just refused (reported once per refusal:
/// the same prefix sent again with the same verdict is not reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The peer that sent it.
    pub peer: PeerIdx,
    /// The prefix.
    pub prefix: IpNet,
    /// Why.
    pub reason: RejectReason,
}

/// The routing information base.
#[derive(Debug)]
pub struct Rib {
    cfg: RibConfig,
    peers: HashMap<PeerIdx, PeerInfo>,
    v4: HashMap<Ipv4Net, Paths>,
    v6: HashMap<Ipv6Net, Paths>,
    intern: HashSet<Arc<RouteAttrs>>,
    adj_out: HashMap<PeerIdx, HashMap<IpNet, Arc<RouteAttrs>>>,
    accepted: HashMap<PeerIdx, u64>,
    rejected: HashMap<PeerIdx, HashSet<IpNet>>,
    /// Per-peer policies (absent: [`PeerPolicy::default`], accept all).
    policies: HashMap<PeerIdx, PeerPolicy>,
    /// Routes the import policy refused, kept so that a policy change can
    /// let them in without asking the peer again.
    filtered: HashMap<PeerIdx, HashMap<IpNet, (Arc<RouteAttrs>, RejectReason)>>,
    refusals: Vec<Refusal>,
    /// Communities for our own prefixes.
    local_communities: Vec<PrefixCommunities>,
    dirty: Vec<IpNet>,
    changes: Vec<BestChange>,
}

fn local_info() -> PeerInfo {
    PeerInfo {
        address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        asn: 0,
        router_id: Ipv4Addr::UNSPECIFIED,
        rr_client: false,
        next_hop_self: false,
        export_local_only: false,
        local_v4: None,
        local_v6: None,
        local_link_local: None,
        families: Family::ALL.to_vec(),
        ctx: Ctx::default(),
    }
}

impl Rib {
    /// An empty RIB.
    pub fn new(cfg: RibConfig) -> Self {
        let mut peers = HashMap::new();
        peers.insert(LOCAL, local_info());
        Self {
            cfg,
            peers,
            v4: HashMap::new(),
            v6: HashMap::new(),
            intern: HashSet::new(),
            adj_out: HashMap::new(),
            accepted: HashMap::new(),
            rejected: HashMap::new(),
            policies: HashMap::new(),
            filtered: HashMap::new(),
            refusals: Vec::new(),
            local_communities: Vec::new(),
            dirty: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// Settings in use.
    pub fn config(&self) -> &RibConfig {
        &self.cfg
    }

    /// Number of prefixes in the Loc-RIB.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the Loc-RIB is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters for a peer.
    pub fn counts(&self, peer: PeerIdx) -> PeerCounts {
        let accepted = self.accepted.get(&peer).copied().unwrap_or(0);
        let rejected = self.rejected.get(&peer).map_or(0, |r| r.len() as u64);
        let filtered = self.filtered.get(&peer).map_or(0, |r| r.len() as u64);
        PeerCounts {
            received: accepted + rejected + filtered,
            filtered,
            accepted,
            advertised: self.adj_out.get(&peer).map_or(0, |m| m.len() as u64),
        }
    }

    fn intern(&mut self, ra: RouteAttrs) -> Arc<RouteAttrs> {
        if let Some(a) = self.intern.get(&ra) {
            return a.clone();
        }
        let a = Arc::new(ra);
        self.intern.insert(a.clone());
        a
    }

    /// Drops interned attribute sets no route uses any more.
    pub fn gc(&mut self) {
        self.intern.retain(|a| Arc::strong_count(a) > 1);
    }

    /// Registers a peer whose session just reached Established and returns
    /// the UPDATEs of the initial advertisement (End-of-RIB included).
    pub fn peer_up(&mut self, peer: PeerIdx, info: PeerInfo) -> Vec<Vec<u8>> {
        let families = info.families.clone();
        let ctx = info.ctx;
        self.peers.insert(peer, info);
        self.adj_out.insert(peer, HashMap::new());
        let all: Vec<IpNet> = self
            .v4
            .keys()
            .map(|p| IpNet::V4(*p))
            .chain(self.v6.keys().map(|p| IpNet::V6(*p)))
            .collect();
        let mut msgs = self.export_to(peer, &all);
        for f in families {
            msgs.push(Message::Update(Update::end_of_rib(f)).encode(&ctx));
        }
        msgs
    }

    /// The session with `peer` went down. With `graceful` (RFC 4724 helper)
    /// its routes stay, marked stale, until End-of-RIB or
    /// [`Rib::sweep_stale`]; otherwise they are removed now.
    pub fn peer_down(&mut self, peer: PeerIdx, graceful: bool) {
        self.adj_out.remove(&peer);
        self.rejected.remove(&peer);
        self.filtered.remove(&peer);
        if graceful {
            for paths in self.v4.values_mut().chain(self.v6.values_mut()) {
                for p in paths.iter_mut().filter(|p| p.peer == peer) {
                    p.stale = true;
                }
            }
        } else {
            self.remove_paths(|p| p.peer == peer, None);
        }
    }

    /// Marks the routes of `peer` for `family` stale: a Beginning-of-RIB
    /// refresh (RFC 7313) is starting; [`Rib::sweep_stale`] at its end
    /// removes what the peer did not send again.
    pub fn mark_stale(&mut self, peer: PeerIdx, family: Family) {
        let mark = |paths: &mut Paths| {
            for p in paths.iter_mut().filter(|p| p.peer == peer) {
                p.stale = true;
            }
        };
        match family {
            Family::Ipv4Unicast => self.v4.values_mut().for_each(mark),
            Family::Ipv6Unicast => self.v6.values_mut().for_each(mark),
        }
    }

    /// Forgets a peer entirely (de-configured).
    pub fn remove_peer(&mut self, peer: PeerIdx) {
        self.peer_down(peer, false);
        self.peers.remove(&peer);
        self.accepted.remove(&peer);
        self.policies.remove(&peer);
    }

    /// Sets a peer's policies (before or after its session is up). Routes
    /// it sent are checked again: newly refused ones leave the Loc-RIB,
    /// newly accepted ones (kept since their refusal) enter it; an export
    /// change re-evaluates what every peer is sent.
    pub fn set_policy(&mut self, peer: PeerIdx, policy: PeerPolicy) {
        let old = self.policies.get(&peer).cloned().unwrap_or_default();
        if old == policy {
            return;
        }
        let export_changed = old.export != policy.export || old.readvertise != policy.readvertise;
        let import_changed = old.import != policy.import;
        self.policies.insert(peer, policy);
        if import_changed && let Some(info) = self.peers.get(&peer).cloned() {
            self.reimport(peer, &info);
        }
        if export_changed {
            self.dirty.extend(self.v4.keys().map(|p| IpNet::V4(*p)));
            self.dirty.extend(self.v6.keys().map(|p| IpNet::V6(*p)));
        }
    }

    fn policy(&self, peer: PeerIdx) -> Option<&PeerPolicy> {
        self.policies.get(&peer)
    }

    /// Checks the routes of `peer` against its (new) import policy.
    fn reimport(&mut self, peer: PeerIdx, info: &PeerInfo) {
        let Some(import) = self.policy(peer).map(|p| p.import.clone()) else {
            return;
        };
        let origin = |ra: &RouteAttrs| ra.attrs.originator_id.map_or(info.address, IpAddr::V4);
        let held: Vec<(IpNet, Arc<RouteAttrs>)> = self
            .v4
            .iter()
            .map(|(p, ps)| (IpNet::V4(*p), ps))
            .chain(self.v6.iter().map(|(p, ps)| (IpNet::V6(*p), ps)))
            .filter_map(|(prefix, ps)| {
                ps.iter()
                    .find(|p| p.peer == peer)
                    .map(|p| (prefix, p.attrs.clone()))
            })
            .collect();
        for (prefix, ra) in held {
            if let Err(reason) = import.check(&prefix, origin(&ra)) {
                self.refuse(peer, prefix, ra, reason);
            }
        }
        let kept: Vec<(IpNet, Arc<RouteAttrs>, RejectReason)> = self
            .filtered
            .get(&peer)
            .map(|f| f.iter().map(|(p, (a, r))| (*p, a.clone(), *r)).collect())
            .unwrap_or_default();
        for (prefix, ra, was) in kept {
            match import.check(&prefix, origin(&ra)) {
                Ok(()) => {
                    if let Some(f) = self.filtered.get_mut(&peer) {
                        f.remove(&prefix);
                    }
                    self.insert_path(peer, prefix, ra);
                }
                Err(reason) if reason != was => self.refuse(peer, prefix, ra, reason),
                Err(_) => {}
            }
        }
    }

    /// Takes `prefix` of `peer` out of the Loc-RIB into the refused routes,
    /// reporting the refusal unless it is already refused for that reason.
    fn refuse(&mut self, peer: PeerIdx, prefix: IpNet, ra: Arc<RouteAttrs>, reason: RejectReason) {
        let again = self
            .filtered
            .get(&peer)
            .and_then(|f| f.get(&prefix))
            .is_some_and(|(_, r)| *r == reason);
        self.withdraw_path(peer, prefix);
        self.filtered
            .entry(peer)
            .or_default()
            .insert(prefix, (ra, reason));
        if !again {
            self.refusals.push(Refusal {
                peer,
                prefix,
                reason,
            });
        }
    }

    /// Refusals since the last call.
    pub fn take_refusals(&mut self) -> Vec<Refusal> {
        std::mem::take(&mut self.refusals)
    }

    /// Removes the stale routes of `peer` for `family` (End-of-RIB received),
    /// or for every family when `family` is `None` (restart timer expired).
    pub fn sweep_stale(&mut self, peer: PeerIdx, family: Option<Family>) {
        self.remove_paths(|p| p.peer == peer && p.stale, family);
    }

    /// Whether `peer` still has stale routes.
    pub fn has_stale(&self, peer: PeerIdx) -> bool {
        self.v4
            .values()
            .chain(self.v6.values())
            .any(|ps| ps.iter().any(|p| p.peer == peer && p.stale))
    }

    fn remove_paths(&mut self, pred: impl Fn(&Path) -> bool, family: Option<Family>) {
        let mut hit: Vec<IpNet> = Vec::new();
        if family != Some(Family::Ipv6Unicast) {
            hit.extend(
                self.v4
                    .iter()
                    .filter(|(_, ps)| ps.iter().any(&pred))
                    .map(|(p, _)| IpNet::V4(*p)),
            );
        }
        if family != Some(Family::Ipv4Unicast) {
            hit.extend(
                self.v6
                    .iter()
                    .filter(|(_, ps)| ps.iter().any(&pred))
                    .map(|(p, _)| IpNet::V6(*p)),
            );
        }
        for prefix in hit {
            self.modify(prefix, |paths, counts| {
                paths.retain(|p| {
                    let drop = pred(p);
                    if drop {
                        dec(counts, p.peer);
                    }
                    !drop
                });
            });
        }
    }

    /// Applies an UPDATE received from `peer`.
    pub fn apply_update(&mut self, peer: PeerIdx, update: Update) {
        let Some(info) = self.peers.get(&peer).cloned() else {
            return;
        };
        let mut withdrawn: Vec<IpNet> = update.withdrawn.iter().map(|p| IpNet::V4(*p)).collect();
        if let Some(u) = &update.mp_unreach {
            withdrawn.extend(u.withdrawn.iter().copied());
        }
        // Without a NEXT_HOP the decoder has already set treat-as-withdraw,
        // so the unspecified placeholder is never installed.
        let nh4 = update
            .attrs
            .as_ref()
            .and_then(|a| a.next_hop)
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4);
        let mut announced: Vec<(IpNet, IpAddr)> =
            update.nlri.iter().map(|p| (IpNet::V4(*p), nh4)).collect();
        if let Some(r) = &update.mp_reach {
            announced.extend(r.nlri.iter().map(|p| (*p, r.next_hop)));
        }
        let attrs = update.attrs.map(|a| self.import_attrs(&info, a));
        let usable = !update.treat_as_withdraw && attrs.is_some();
        for p in withdrawn {
            self.withdraw_path(peer, p);
        }
        let Some(Some(attrs)) = attrs.filter(|_| usable) else {
            // Treat-as-withdraw, or rejected by the loop checks.
            let loop_rejected = !update.treat_as_withdraw;
            for (p, _) in announced {
                self.withdraw_path(peer, p);
                if loop_rejected {
                    self.rejected.entry(peer).or_default().insert(p);
                }
            }
            return;
        };
        let import = self.policy(peer).map(|p| p.import.clone());
        let origin = attrs.originator_id.map_or(info.address, IpAddr::V4);
        let mut last: Option<Arc<RouteAttrs>> = None;
        for (prefix, nh) in announced {
            let ra = match &last {
                Some(a) if a.next_hop == nh => a.clone(),
                _ => {
                    let a = self.intern(RouteAttrs {
                        next_hop: nh,
                        attrs: attrs.clone(),
                    });
                    last = Some(a.clone());
                    a
                }
            };
            if let Some(r) = self.rejected.get_mut(&peer) {
                r.remove(&prefix);
            }
            if let Some(Err(reason)) = import.as_ref().map(|i| i.check(&prefix, origin)) {
                self.refuse(peer, prefix, ra, reason);
                continue;
            }
            if let Some(f) = self.filtered.get_mut(&peer) {
                f.remove(&prefix);
            }
            self.insert_path(peer, prefix, ra);
        }
    }

    /// Inbound policy: loop checks (RFC 4271 §9.1.2, RFC 4456 §8) and
    /// attributes that do not cross an AS boundary. `None` rejects.
    fn import_attrs(&self, info: &PeerInfo, mut a: PathAttrs) -> Option<PathAttrs> {
        let ebgp = info.asn != self.cfg.local_as;
        if ebgp {
            if a.as_path.contains(self.cfg.local_as) {
                return None;
            }
            a.local_pref = None;
            a.originator_id = None;
            a.cluster_list.clear();
        } else {
            if a.originator_id == Some(self.cfg.router_id) {
                return None;
            }
            if a.cluster_list.contains(&self.cfg.cluster_id) {
                return None;
            }
        }
        a.next_hop = None;
        Some(a)
    }

    fn withdraw_path(&mut self, peer: PeerIdx, prefix: IpNet) {
        if let Some(r) = self.rejected.get_mut(&peer) {
            r.remove(&prefix);
        }
        if let Some(f) = self.filtered.get_mut(&peer) {
            f.remove(&prefix);
        }
        self.modify(prefix, |paths, counts| {
            let before = paths.len();
            paths.retain(|p| p.peer != peer);
            if paths.len() != before {
                dec(counts, peer);
            }
        });
    }

    fn insert_path(&mut self, peer: PeerIdx, prefix: IpNet, attrs: Arc<RouteAttrs>) {
        self.modify(prefix, |paths, counts| {
            if let Some(p) = paths.iter_mut().find(|p| p.peer == peer) {
                p.attrs = attrs;
                p.stale = false;
            } else {
                paths.push(Path {
                    attrs,
                    peer,
                    stale: false,
                });
                *counts.entry(peer).or_default() += 1;
            }
        });
    }

    /// Originates `prefix` from this speaker.
    pub fn announce_local(&mut self, prefix: IpNet) {
        let unspecified = match prefix {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let prefix = prefix.trunc();
        let (communities, large_communities) = communities_for(&self.local_communities, &prefix);
        let ra = self.intern(RouteAttrs {
            next_hop: unspecified,
            attrs: PathAttrs {
                communities,
                large_communities,
                ..PathAttrs::default()
            },
        });
        self.insert_path(LOCAL, prefix, ra);
    }

    /// Sets the communities of our own prefixes; those already originated
    /// are announced again with theirs.
    pub fn set_local_communities(&mut self, table: Vec<PrefixCommunities>) {
        if table == self.local_communities {
            return;
        }
        self.local_communities = table;
        let ours: Vec<IpNet> = self
            .v4
            .iter()
            .filter(|(_, ps)| ps.iter().any(|p| p.peer == LOCAL))
            .map(|(p, _)| IpNet::V4(*p))
            .chain(
                self.v6
                    .iter()
                    .filter(|(_, ps)| ps.iter().any(|p| p.peer == LOCAL))
                    .map(|(p, _)| IpNet::V6(*p)),
            )
            .collect();
        for p in ours {
            self.announce_local(p);
        }
    }

    /// Stops originating `prefix`.
    pub fn withdraw_local(&mut self, prefix: IpNet) {
        self.withdraw_path(LOCAL, prefix.trunc());
    }

    /// Runs `f` on the paths of `prefix`, then the decision process, and
    /// records what changed for the kernel and for the peers.
    fn modify(&mut self, prefix: IpNet, f: impl FnOnce(&mut Paths, &mut HashMap<PeerIdx, u64>)) {
        let Self {
            cfg,
            peers,
            v4,
            v6,
            accepted,
            dirty,
            changes,
            ..
        } = self;
        let run = |paths: &mut Paths| {
            let old_best = paths.first().map(|p| (p.peer, Arc::as_ptr(&p.attrs)));
            let old_nh = next_hops(cfg, peers, paths);
            f(paths, accepted);
            rank(cfg, peers, paths);
            let new_best = paths.first().map(|p| (p.peer, Arc::as_ptr(&p.attrs)));
            if old_best != new_best {
                dirty.push(prefix);
            }
            let new_nh = next_hops(cfg, peers, paths);
            if old_nh != new_nh {
                changes.push(BestChange {
                    prefix,
                    next_hops: new_nh,
                });
            }
            paths.is_empty()
        };
        match prefix {
            IpNet::V4(p) => {
                let paths = v4.entry(p).or_default();
                if run(paths) {
                    v4.remove(&p);
                }
            }
            IpNet::V6(p) => {
                let paths = v6.entry(p).or_default();
                if run(paths) {
                    v6.remove(&p);
                }
            }
        }
    }

    /// Best-route changes for the kernel since the last call.
    pub fn take_changes(&mut self) -> Vec<BestChange> {
        std::mem::take(&mut self.changes)
    }

    /// The full Loc-RIB as the kernel should see it (for a new subscriber).
    pub fn snapshot(&self) -> Vec<BestChange> {
        let v4 = self.v4.iter().map(|(p, ps)| (IpNet::V4(*p), ps));
        let v6 = self.v6.iter().map(|(p, ps)| (IpNet::V6(*p), ps));
        v4.chain(v6)
            .filter_map(|(prefix, ps)| {
                let next_hops = next_hops(&self.cfg, &self.peers, ps);
                (!next_hops.is_empty()).then_some(BestChange { prefix, next_hops })
            })
            .collect()
    }

    /// UPDATEs for every established peer for the prefixes whose best path
    /// changed since the last call.
    pub fn take_exports(&mut self) -> Vec<(PeerIdx, Vec<Vec<u8>>)> {
        let mut dirty = std::mem::take(&mut self.dirty);
        if dirty.is_empty() || self.adj_out.is_empty() {
            return Vec::new();
        }
        dirty.sort_unstable();
        dirty.dedup();
        let peers: Vec<PeerIdx> = self.adj_out.keys().copied().collect();
        peers
            .into_iter()
            .map(|p| (p, self.export_to(p, &dirty)))
            .filter(|(_, m)| !m.is_empty())
            .collect()
    }

    /// Re-sends everything advertised to `peer` for `family` (ROUTE-REFRESH).
    pub fn refresh(&mut self, peer: PeerIdx, family: Family) -> Vec<Vec<u8>> {
        let Some(out) = self.adj_out.get_mut(&peer) else {
            return Vec::new();
        };
        let prefixes: Vec<IpNet> = out
            .keys()
            .filter(|p| Family::of(p) == family)
            .copied()
            .collect();
        for p in &prefixes {
            out.remove(p);
        }
        self.export_to(peer, &prefixes)
    }

    fn best(&self, prefix: &IpNet) -> Option<&Path> {
        match prefix {
            IpNet::V4(p) => self.v4.get(p).and_then(|ps| ps.first()),
            IpNet::V6(p) => self.v6.get(p).and_then(|ps| ps.first()),
        }
    }

    /// Computes what `peer` should now have for `prefixes`, diffs it with its
    /// Adj-RIB-Out and encodes the difference.
    fn export_to(&mut self, peer: PeerIdx, prefixes: &[IpNet]) -> Vec<Vec<u8>> {
        let Some(info) = self.peers.get(&peer).cloned() else {
            return Vec::new();
        };
        let mut groups: HashMap<Arc<RouteAttrs>, Vec<IpNet>> = HashMap::new();
        let mut withdraw: HashMap<Family, Vec<IpNet>> = HashMap::new();
        let mut out_intern: HashSet<Arc<RouteAttrs>> = HashSet::new();
        let mut wanted: Vec<(IpNet, Option<Arc<RouteAttrs>>)> = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            if !info.families.contains(&Family::of(prefix)) {
                continue;
            }
            let want = self
                .best(prefix)
                .and_then(|b| self.export_attrs(peer, &info, prefix, b))
                .map(|ra| match out_intern.get(&ra) {
                    Some(a) => a.clone(),
                    None => {
                        let a = Arc::new(ra);
                        out_intern.insert(a.clone());
                        a
                    }
                });
            wanted.push((*prefix, want));
        }
        let Some(out) = self.adj_out.get_mut(&peer) else {
            return Vec::new();
        };
        for (prefix, want) in wanted {
            match (want, out.get(&prefix)) {
                (Some(w), Some(have)) if **have == *w => {}
                (Some(w), _) => {
                    out.insert(prefix, w.clone());
                    groups.entry(w).or_default().push(prefix);
                }
                (None, Some(_)) => {
                    out.remove(&prefix);
                    withdraw
                        .entry(Family::of(&prefix))
                        .or_default()
                        .push(prefix);
                }
                (None, None) => {}
            }
        }
        let mut msgs = Vec::new();
        for family in Family::ALL {
            if let Some(w) = withdraw.get(&family) {
                msgs.extend(encode_withdraw(family, w, &info.ctx));
            }
        }
        for (ra, prefixes) in groups {
            for family in Family::ALL {
                let ps: Vec<IpNet> = prefixes
                    .iter()
                    .filter(|p| Family::of(p) == family)
                    .copied()
                    .collect();
                if ps.is_empty() {
                    continue;
                }
                let mut attrs = ra.attrs.clone();
                if let IpAddr::V4(nh) = ra.next_hop {
                    attrs.next_hop = Some(nh);
                }
                // RFC 2545: our link-local address goes along when we are
                // the next hop for a directly connected (eBGP) peer.
                let ebgp = info.asn != self.cfg.local_as;
                let link_local = match ra.next_hop {
                    IpAddr::V6(nh) if ebgp && Some(nh) == info.local_v6 => info.local_link_local,
                    _ => None,
                };
                msgs.extend(encode_announce(
                    &attrs,
                    family,
                    ra.next_hop,
                    link_local,
                    &ps,
                    &info.ctx,
                ));
            }
        }
        msgs
    }

    /// Outbound policy for one route to one peer: split horizon, RFC 4456
    /// reflection rules and the attribute changes at the AS boundary.
    fn export_attrs(
        &self,
        peer: PeerIdx,
        info: &PeerInfo,
        prefix: &IpNet,
        best: &Path,
    ) -> Option<RouteAttrs> {
        if best.peer == peer {
            return None;
        }
        let src = self.peers.get(&best.peer)?;
        let local = best.peer == LOCAL;
        if info.export_local_only && !local {
            return None;
        }
        if !local && self.policy(best.peer).is_some_and(|p| !p.readvertise) {
            return None;
        }
        if self.policy(peer).is_some_and(|p| !p.export.allows(prefix)) {
            return None;
        }
        let to_ebgp = info.asn != self.cfg.local_as;
        let from_ibgp = !local && src.asn == self.cfg.local_as;
        let reflect = from_ibgp && !to_ebgp;
        if reflect {
            // RFC 4456 §6: routes from non-clients go to clients only; routes
            // from clients go to everyone; never back to the originator.
            if !src.rr_client && !info.rr_client {
                return None;
            }
            if best.attrs.attrs.originator_id == Some(info.router_id) {
                return None;
            }
        }
        let mut a = best.attrs.attrs.clone();
        a.unknown.retain(|u| u.flags & FLAG_TRANSITIVE != 0);
        for u in &mut a.unknown {
            u.flags |= FLAG_PARTIAL;
        }
        let self_nh = match prefix {
            IpNet::V4(_) => info.local_v4.map(IpAddr::V4),
            IpNet::V6(_) => info.local_v6.map(IpAddr::V6),
        };
        let next_hop = if to_ebgp {
            a.as_path.prepend(self.cfg.local_as);
            a.local_pref = None;
            a.originator_id = None;
            a.cluster_list.clear();
            if !local {
                // RFC 4271 §5.1.4: MED is not passed on to other ASes.
                a.med = None;
            }
            self_nh?
        } else {
            a.local_pref = Some(a.local_pref.unwrap_or(self.cfg.default_local_pref));
            if reflect {
                a.originator_id = Some(a.originator_id.unwrap_or(src.router_id));
                a.cluster_list.insert(0, self.cfg.cluster_id);
            }
            if local || info.next_hop_self || best.attrs.next_hop.is_unspecified() {
                self_nh?
            } else {
                best.attrs.next_hop
            }
        };
        a.next_hop = None;
        Some(RouteAttrs { next_hop, attrs: a })
    }
}

fn dec(counts: &mut HashMap<PeerIdx, u64>, peer: PeerIdx) {
    if let Some(c) = counts.get_mut(&peer) {
        *c = c.saturating_sub(1);
    }
}

/// The kernel's view of a prefix: the next hops of the best path and of
/// every path equally good up to the router-ID step (multipath). Locally
/// originated prefixes have none: the host routes them itself. Expects
/// `paths` in [`rank`] order.
fn next_hops(cfg: &RibConfig, peers: &HashMap<PeerIdx, PeerInfo>, paths: &Paths) -> Vec<IpAddr> {
    let Some(best) = paths.first() else {
        return Vec::new();
    };
    if best.peer == LOCAL {
        return Vec::new();
    }
    if !cfg.multipath || paths.len() == 1 {
        return vec![best.attrs.next_hop];
    }
    let alive = survivors(cfg, peers, paths.as_slice());
    let mut out: Vec<IpAddr> = Vec::new();
    for (p, _) in paths.iter().zip(&alive).filter(|(_, a)| **a) {
        if !out.contains(&p.attrs.next_hop) {
            out.push(p.attrs.next_hop);
        }
    }
    out.sort();
    out
}

fn local_pref(cfg: &RibConfig, p: &Path) -> u32 {
    p.attrs.attrs.local_pref.unwrap_or(cfg.default_local_pref)
}

fn is_ebgp(cfg: &RibConfig, peers: &HashMap<PeerIdx, PeerInfo>, p: &Path) -> bool {
    p.peer != LOCAL && peers.get(&p.peer).is_some_and(|i| i.asn != cfg.local_as)
}

/// Keeps alive only the paths with the highest `key` among those alive.
fn keep_highest(paths: &[Path], alive: &mut [bool], key: impl Fn(&Path) -> i64) {
    let best = paths
        .iter()
        .zip(alive.iter())
        .filter(|(_, a)| **a)
        .map(|(p, _)| key(p))
        .max();
    if let Some(best) = best {
        for (p, a) in paths.iter().zip(alive.iter_mut()) {
            *a = *a && key(p) == best;
        }
    }
}

/// RFC 4271 §9.1.2.2 steps a–e (after local routes first) as elimination
/// rounds: which paths are still in the running before the tie-breaks.
/// Elimination, unlike a comparator, stays well defined for MED, which only
/// compares routes from the same neighbouring AS and so is no total order.
fn survivors(cfg: &RibConfig, peers: &HashMap<PeerIdx, PeerInfo>, paths: &[Path]) -> Vec<bool> {
    let mut alive = vec![true; paths.len()];
    keep_highest(paths, &mut alive, |p| i64::from(p.peer == LOCAL));
    keep_highest(paths, &mut alive, |p| i64::from(local_pref(cfg, p)));
    keep_highest(paths, &mut alive, |p| {
        -i64::try_from(p.attrs.attrs.as_path.len()).unwrap_or(i64::MAX)
    });
    keep_highest(paths, &mut alive, |p| -(p.attrs.attrs.origin as i64));
    // MED: per neighbouring AS, only the lowest survives (missing MED = 0).
    let neighbour = |p: &Path| p.attrs.attrs.as_path.first_as();
    let med = |p: &Path| p.attrs.attrs.med.unwrap_or(0);
    let lowest: Vec<(Option<u32>, u32)> =
        paths
            .iter()
            .zip(alive.iter())
            .filter(|(_, a)| **a)
            .fold(Vec::new(), |mut acc, (p, _)| {
                match acc.iter_mut().find(|(n, _)| *n == neighbour(p)) {
                    Some((_, m)) => *m = (*m).min(med(p)),
                    None => acc.push((neighbour(p), med(p))),
                }
                acc
            });
    for (p, a) in paths.iter().zip(alive.iter_mut()) {
        let min = lowest
            .iter()
            .find(|(n, _)| *n == neighbour(p))
            .map_or(0, |(_, m)| *m);
        *a = *a && med(p) == min;
    }
    keep_highest(paths, &mut alive, |p| i64::from(is_ebgp(cfg, peers, p)));
    alive
}

/// The tie-breaks after step e, a total order (smaller is better): fresh
/// over stale, lowest ORIGINATOR_ID or router ID, shortest CLUSTER_LIST,
/// lowest peer address.
fn tiebreak(peers: &HashMap<PeerIdx, PeerInfo>, p: &Path) -> (bool, u32, usize, Option<IpAddr>) {
    let info = peers.get(&p.peer);
    let id = p
        .attrs
        .attrs
        .originator_id
        .or_else(|| info.map(|i| i.router_id))
        .map_or(0, u32::from);
    (
        p.stale,
        id,
        p.attrs.attrs.cluster_list.len(),
        info.map(|i| i.address),
    )
}

/// Puts the best path first, then the other survivors of the elimination
/// rounds (the multipath set), then the rest, each group in tie-break order.
fn rank(cfg: &RibConfig, peers: &HashMap<PeerIdx, PeerInfo>, paths: &mut Paths) {
    if paths.len() < 2 {
        return;
    }
    let alive = survivors(cfg, peers, paths.as_slice());
    let slice = paths.as_slice();
    let mut order: Vec<usize> = (0..slice.len()).collect();
    order.sort_by(|&i, &j| {
        alive[j]
            .cmp(&alive[i])
            .then_with(|| tiebreak(peers, &slice[i]).cmp(&tiebreak(peers, &slice[j])))
    });
    let ranked: Vec<Path> = order.iter().map(|&i| slice[i].clone()).collect();
    for (dst, src) in paths.iter_mut().zip(ranked) {
        *dst = src;
    }
}

#[cfg(test)]
mod tests;
