//! Validation of tabby's resources where they enter the agent or the lab.
//! The CRD schemas check shapes, but the API server cannot check that
//! `peerIP` is an address or that a CIDR is one; these functions do, with
//! the API server's field paths and messages (see
//! [`tabby_policy::validate`]).

use tabby_policy::validate::{
    BadValue, FieldError, NameRule, Path, config_map_key, dns1123_subdomain, object_meta,
};

use crate::password::BgpPassword;
use crate::{BGPConfiguration, BGPFilter, BGPPeer, IPPool};

/// The longest TCP-MD5 key the kernel takes (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_PASSWORD_LEN: usize = 80;

fn as_number(n: u32, path: Path) -> Vec<FieldError> {
    if n == 0 {
        vec![FieldError::invalid(
            path,
            BadValue::Int(0),
            "must be between 1 and 4294967295, inclusive",
        )]
    } else {
        Vec::new()
    }
}

/// A required string: `Required value` when empty, else each message of
/// `check` as `Invalid value`.
fn required_and(path: Path, value: &str, check: fn(&str) -> Vec<String>) -> Vec<FieldError> {
    if value.is_empty() {
        return vec![FieldError::required(path, "")];
    }
    check(value)
        .into_iter()
        .map(|m| FieldError::invalid(path.clone(), BadValue::Str(value.to_string()), m))
        .collect()
}

/// A BGPPeer: name, `peerIP` an address, `asNumber` 1..4294967295, `node`
/// a node name, `password` an inline key of at most 80 bytes or a
/// `secretKeyRef` with a Secret name and key.
pub fn bgp_peer(p: &BGPPeer) -> Vec<FieldError> {
    let mut errs = object_meta(
        &p.metadata,
        false,
        NameRule::Subdomain,
        &Path::new("metadata"),
    );
    let spec = Path::new("spec");
    if let Err(e) = tabby_policy::validate::ip(&spec.child("peerIP"), &p.spec.peer_ip) {
        errs.extend(e);
    }
    errs.extend(as_number(p.spec.as_number, spec.child("asNumber")));
    if let Some(node) = &p.spec.node {
        for m in dns1123_subdomain(node) {
            errs.push(FieldError::invalid(
                spec.child("node"),
                BadValue::Str(node.clone()),
                m,
            ));
        }
    }
    match &p.spec.password {
        None => {}
        Some(BgpPassword::Inline(pw)) if pw.expose().len() > MAX_PASSWORD_LEN => {
            errs.push(FieldError::invalid(
                spec.child("password"),
                BadValue::Raw("<redacted>".into()),
                format!("must be no more than {MAX_PASSWORD_LEN} bytes"),
            ));
        }
        Some(BgpPassword::Inline(_)) => {}
        Some(BgpPassword::SecretKeyRef { secret_key_ref: r }) => {
            let path = spec.child("password").child("secretKeyRef");
            errs.extend(required_and(path.child("name"), &r.name, dns1123_subdomain));
            errs.extend(required_and(path.child("key"), &r.key, config_map_key));
        }
    }
    errs
}

/// A BGPConfiguration: name and `asNumber`.
pub fn bgp_configuration(c: &BGPConfiguration) -> Vec<FieldError> {
    let mut errs = object_meta(
        &c.metadata,
        false,
        NameRule::Subdomain,
        &Path::new("metadata"),
    );
    errs.extend(as_number(
        c.spec.as_number,
        Path::new("spec").child("asNumber"),
    ));
    if let Err(e) = c.spec.advertisements() {
        errs.push(refusal(e));
    }
    errs
}

/// A BGPFilter: name, and every rule's CIDR, family and prefix lengths.
pub fn bgp_filter(f: &BGPFilter) -> Vec<FieldError> {
    let mut errs = object_meta(
        &f.metadata,
        false,
        NameRule::Subdomain,
        &Path::new("metadata"),
    );
    if let Err(e) = f.spec.parse() {
        errs.push(refusal(e));
    }
    errs
}

/// A refusal of the BGP policy parsers as a field error (they stop at the
/// first bad field, which carries its own path).
fn refusal(e: crate::bgp::Invalid) -> FieldError {
    FieldError {
        path: Path::new(&e.field),
        kind: tabby_policy::validate::ErrorType::Invalid,
        value: None,
        detail: e.reason,
    }
}

/// An IPPool: name, `cidr` a network, `blockSize` between its prefix length
/// and the family's width.
pub fn ip_pool(p: &IPPool) -> Vec<FieldError> {
    let mut errs = object_meta(
        &p.metadata,
        false,
        NameRule::Subdomain,
        &Path::new("metadata"),
    );
    let spec = Path::new("spec");
    match tabby_policy::validate::cidr(&spec.child("cidr"), &p.spec.cidr) {
        Ok(net) => {
            if let Some(size) = p.spec.block_size {
                let (lo, hi) = (net.prefix_len(), net.max_prefix_len());
                if size < lo || size > hi {
                    errs.push(FieldError::invalid(
                        spec.child("blockSize"),
                        BadValue::Int(i64::from(size)),
                        format!("must be between {lo} and {hi}, inclusive"),
                    ));
                }
            }
        }
        Err(e) => errs.extend(e),
    }
    errs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn peer(spec: &str) -> Vec<String> {
        let p: BGPPeer = serde_yaml::from_str(&format!(
            "apiVersion: tabby.dev/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {spec}\n"
        ))
        .unwrap();
        bgp_peer(&p).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn bgp_peers_are_checked_field_by_field() {
        assert_eq!(
            peer("{peerIP: 10.0.0.254, asNumber: 65000}"),
            Vec::<String>::new()
        );
        assert_eq!(
            peer(
                "{peerIP: \"fd00::1\", asNumber: 4294967295, node: node-1, password: {secretKeyRef: {name: bgp, key: tor.pw}}}"
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            peer("{peerIP: 10.0.0.300, asNumber: 65000}"),
            [
                "spec.peerIP: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
            ]
        );
        assert_eq!(
            peer("{peerIP: 10.0.0.1, asNumber: 0}"),
            ["spec.asNumber: Invalid value: 0: must be between 1 and 4294967295, inclusive"]
        );
        let node = peer("{peerIP: 10.0.0.1, asNumber: 1, node: Node_1}");
        assert_eq!(node.len(), 1);
        assert!(
            node[0].starts_with("spec.node: Invalid value: \"Node_1\""),
            "{node:?}"
        );
        let long = "x".repeat(81);
        let pw = peer(&format!(
            "{{peerIP: 10.0.0.1, asNumber: 1, password: {long}}}"
        ));
        assert_eq!(
            pw,
            ["spec.password: Invalid value: <redacted>: must be no more than 80 bytes"]
        );
        assert_eq!(
            peer("{peerIP: 10.0.0.1, asNumber: 1, password: {secretKeyRef: {name: \"\", key: \"a/b\"}}}").len(),
            2
        );
    }

    #[test]
    fn configurations_and_pools_are_checked() {
        let c: BGPConfiguration = serde_yaml::from_str(
            "apiVersion: tabby.dev/v1alpha1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {asNumber: 0}\n",
        )
        .unwrap();
        assert_eq!(bgp_configuration(&c).len(), 1);
        let pool = |spec: &str| {
            let p: IPPool = serde_yaml::from_str(&format!(
                "apiVersion: tabby.dev/v1alpha1\nkind: IPPool\nmetadata: {{name: p}}\nspec: {spec}\n"
            ))
            .unwrap();
            ip_pool(&p)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pool("{cidr: 10.244.0.0/16, blockSize: 26}"),
            Vec::<String>::new()
        );
        assert_eq!(
            pool("{cidr: \"fd00:244::/48\", blockSize: 122}"),
            Vec::<String>::new()
        );
        assert_eq!(
            pool("{cidr: 10.244.0.0/16, blockSize: 33}"),
            ["spec.blockSize: Invalid value: 33: must be between 16 and 32, inclusive"]
        );
        assert_eq!(pool("{cidr: 10.244.0.300/16}").len(), 1);
    }
}
