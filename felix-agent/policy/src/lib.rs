//! The NetworkPolicy index: Pods, Namespaces and NetworkPolicies in, per
//! endpoint rule sets and named address sets out. Pure: no I/O, no clocks,
//! no async; fed by `reset`/`apply_*`/`delete_*` and queried by the
//! dataplanes.

pub mod index;
pub mod model;
pub mod validate;

pub use index::{IndexStats, PolicyIndex, pod_key};
pub use model::*;
