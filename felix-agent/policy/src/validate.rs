//! Validation of the Kubernetes objects the agent reads, as the API server
//! validates them (`ValidateNetworkPolicy`, `ValidateObjectMeta`,
//! `ValidateLabelSelector`, the IP, CIDR, port and name rules of
//! `k8s.io/apimachinery/pkg/util/validation`), with the API server's field
//! paths and messages, so that a refused object reads the same wherever it is
//! refused:
//!
//! ```text
//! spec.ingress[0].ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive
//! ```
//!
//! Pure: every function takes an object and returns its field errors (empty
//! when the object is valid). The agent refuses an object with errors and
//! keeps the last valid version of it in force.
//!
//! Two deliberate choices: CIDRs and IPs are checked strictly (the API
//! server's `StrictIPCIDRValidation`: no leading zeros, no IPv4-mapped IPv6,
//! no bits beyond the prefix length), because a value two parsers read
//! differently must not reach a dataplane; and only what the agent uses is
//! checked of Pods and Nodes (names, labels, container ports, pod IPs, pod
//! CIDRs), not their whole spec.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A field path as the API server prints it: `spec.ingress[0].ports[0].port`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Path(String);

impl Path {
    /// The root of a path (`metadata`, `spec`).
    pub fn new(root: &str) -> Self {
        Path(root.to_string())
    }

    /// `self.name`.
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }

    /// `self[i]`.
    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{i}]", self.0))
    }

    /// `self[key]` (a map entry).
    pub fn key(&self, key: &str) -> Self {
        Path(format!("{}[{key}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The API server's error types (`field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// `Required value`.
    Required,
    /// `Invalid value`.
    Invalid,
    /// `Unsupported value`.
    NotSupported,
    /// `Forbidden`.
    Forbidden,
    /// `Duplicate value`.
    Duplicate,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::Required => "Required value",
            ErrorType::Invalid => "Invalid value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::Duplicate => "Duplicate value",
        }
    }
}

/// The offending value, printed as the API server prints it (numbers bare,
/// strings quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadValue {
    /// A number.
    Int(i64),
    /// A string (printed quoted).
    Str(String),
    /// Printed as is (lists, structures).
    Raw(String),
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadValue::Int(n) => write!(f, "{n}"),
            BadValue::Str(s) => write!(f, "{}", go_quote(s)),
            BadValue::Raw(s) => f.write_str(s),
        }
    }
}

/// Go's `%q` for the strings we meet (ASCII escapes; other characters kept).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One refused field: `<path>: <type>[: <value>][: <detail>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where.
    pub path: Path,
    /// What kind of error.
    pub kind: ErrorType,
    /// The value refused (none for `Required` and `Forbidden`).
    pub value: Option<BadValue>,
    /// Why.
    pub detail: String,
}

impl FieldError {
    /// `Required value: <detail>`.
    pub fn required(path: Path, detail: &str) -> Self {
        FieldError {
            path,
            kind: ErrorType::Required,
            value: None,
            detail: detail.to_string(),
        }
    }

    /// `Invalid value: <value>: <detail>`.
    pub fn invalid(path: Path, value: BadValue, detail: impl Into<String>) -> Self {
        FieldError {
            path,
            kind: ErrorType::Invalid,
            value: Some(value),
            detail: detail.into(),
        }
    }

    /// `Unsupported value: <value>: supported values: "A", "B"`.
    pub fn not_supported(path: Path, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        FieldError {
            path,
            kind: ErrorType::NotSupported,
            value: Some(BadValue::Str(value.to_string())),
            detail: format!("supported values: {}", list.join(", ")),
        }
    }

    /// `Forbidden: <detail>`.
    pub fn forbidden(path: Path, detail: &str) -> Self {
        FieldError {
            path,
            kind: ErrorType::Forbidden,
            value: None,
            detail: detail.to_string(),
        }
    }

    /// `Duplicate value: <value>`.
    pub fn duplicate(path: Path, value: BadValue) -> Self {
        FieldError {
            path,
            kind: ErrorType::Duplicate,
            value: Some(value),
            detail: String::new(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.kind.as_str())?;
        if let Some(v) = &self.value {
            write!(f, ": {v}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Every error of one object, displayed as `kubectl` shows the API server's
/// refusal: `The NetworkPolicy "x" is invalid: <error>` (one per line when
/// there are several).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// The object's kind (`NetworkPolicy`).
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// Its errors (never empty).
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "The {} {} is invalid: ", self.kind, go_quote(&self.name))?;
        match self.errors.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                for e in many {
                    write!(f, "\n* {e}")?;
                }
                Ok(())
            }
        }
    }
}

/// `Ok(())` when `errors` is empty, else the object's refusal.
pub fn check(kind: &str, name: &str, errors: Vec<FieldError>) -> Result<(), Invalid> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid {
            kind: kind.to_string(),
            name: name.to_string(),
            errors,
        })
    }
}

// ---------------------------------------------------------------------------
// The string rules of k8s.io/apimachinery/pkg/util/validation. Each returns
// the API server's messages (empty: valid).

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";

/// The API server's "(e.g. 'a',  or 'b', regex used for validation is '...')"
/// suffix, double space included.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{e}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn matches_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => {
            is_alnum_lower(f)
                && is_alnum_lower(l)
                && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        }
        _ => false,
    }
}

fn matches_dns_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns_label)
}

/// `IsDNS1123Label`: namespace names.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !matches_dns_label(s) {
        if matches_dns_subdomain(s) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `IsDNS1123Subdomain`: names of most objects.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !matches_dns_subdomain(s) {
        errs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

fn matches_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        }
        _ => false,
    }
}

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// `IsQualifiedName`: label keys (`[prefix/]name`).
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                for m in dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {m}"));
                }
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !matches_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `IsValidLabelValue`.
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !s.is_empty() && !matches_qualified_name_part(s) {
        errs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsValidPortNum`.
pub fn port_num(n: i64) -> Vec<String> {
    if (1..=65535).contains(&n) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".to_string()]
    }
}

/// `IsValidPortName`: an IANA service name (at most 15 characters, lower-case
/// letters, digits and '-', at least one letter, no '-' at either end or
/// twice in a row).
pub fn port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 15 {
        errs.push(max_len_error(15));
    }
    if s.is_empty() || !s.bytes().all(|b| is_alnum_lower(b) || b == b'-') {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// `IsConfigMapKey`: keys of Secret data.
pub fn config_map_key(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        errs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            "[-._a-zA-Z0-9]+",
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if s == "." {
        errs.push("must not be '.'".to_string());
    } else if s == ".." {
        errs.push("must not be '..'".to_string());
    } else if s.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// Parses an IP the way Go's lenient parser would, leading zeros in IPv4
/// octets allowed: tells "malformed" from "ambiguous".
fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let octets: Vec<&str> = s.split('.').collect();
    if octets.len() != 4 {
        return None;
    }
    let mut out = [0u8; 4];
    for (o, part) in out.iter_mut().zip(&octets) {
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = part.parse().ok()?;
    }
    Some(IpAddr::from(out))
}

fn is_4in6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// A valid IP address (strict): the errors, or the address.
pub fn ip(path: &Path, value: &str) -> Result<IpAddr, Vec<FieldError>> {
    let bad = |msg: &str| {
        vec![FieldError::invalid(
            path.clone(),
            BadValue::Str(value.to_string()),
            msg,
        )]
    };
    match value.parse::<IpAddr>() {
        Ok(ip) if is_4in6(&ip) => Err(bad("must not be an IPv4-mapped IPv6 address")),
        Ok(ip) => Ok(ip),
        Err(_) if parse_ip_sloppy(value).is_some() => Err(bad("must not have leading 0s")),
        Err(_) => Err(bad(
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        )),
    }
}

/// A valid CIDR (strict): the errors, or the network.
pub fn cidr(path: &Path, value: &str) -> Result<IpNet, Vec<FieldError>> {
    let bad = |msg: &str| {
        vec![FieldError::invalid(
            path.clone(),
            BadValue::Str(value.to_string()),
            msg,
        )]
    };
    let malformed = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
    let Some((addr, len)) = value.split_once('/') else {
        return Err(bad(malformed));
    };
    let Some(sloppy_ip) = parse_ip_sloppy(addr) else {
        return Err(bad(malformed));
    };
    let max = if sloppy_ip.is_ipv4() { 32 } else { 128 };
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(malformed));
    }
    let Ok(prefix) = len.parse::<u8>() else {
        return Err(bad(malformed));
    };
    if prefix > max {
        return Err(bad(malformed));
    }
    let strict_ip = addr.parse::<IpAddr>().ok();
    if strict_ip.is_none() || (len.len() > 1 && len.starts_with('0')) {
        return Err(bad("must not have leading 0s in IP or prefix length"));
    }
    if is_4in6(&sloppy_ip) {
        return Err(bad("must not have an IPv4-mapped IPv6 address"));
    }
    let net = IpNet::new(sloppy_ip, prefix).map_err(|_| bad(malformed))?;
    if net.network() != sloppy_ip {
        return Err(bad("must not have bits set beyond the prefix length"));
    }
    Ok(net)
}

// ---------------------------------------------------------------------------
// Metadata, labels, selectors.

/// Which name rule an object's `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most objects).
    Subdomain,
    /// A DNS-1123 label (Namespaces).
    Label,
}

/// `ValidateObjectMeta` for what the agent reads: name, namespace (required
/// on namespaced kinds, forbidden on the others), labels and annotation keys.
pub fn object_meta(
    meta: &ObjectMeta,
    namespaced: bool,
    rule: NameRule,
    path: &Path,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = meta.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError::required(
            path.child("name"),
            "name or generateName is required",
        ));
    } else {
        let msgs = match rule {
            NameRule::Subdomain => dns1123_subdomain(name),
            NameRule::Label => dns1123_label(name),
        };
        for m in msgs {
            errs.push(FieldError::invalid(
                path.child("name"),
                BadValue::Str(name.to_string()),
                m,
            ));
        }
    }
    let ns = meta.namespace.as_deref().unwrap_or_default();
    if namespaced {
        if ns.is_empty() {
            errs.push(FieldError::required(path.child("namespace"), ""));
        } else {
            for m in dns1123_label(ns) {
                errs.push(FieldError::invalid(
                    path.child("namespace"),
                    BadValue::Str(ns.to_string()),
                    m,
                ));
            }
        }
    } else if !ns.is_empty() {
        errs.push(FieldError::forbidden(
            path.child("namespace"),
            "not allowed on this type",
        ));
    }
    if let Some(labels) = &meta.labels {
        errs.extend(labels_of(labels, &path.child("labels")));
    }
    for key in meta.annotations.iter().flat_map(|a| a.keys()) {
        for m in qualified_name(&key.to_lowercase()) {
            errs.push(FieldError::invalid(
                path.child("annotations"),
                BadValue::Str(key.clone()),
                m,
            ));
        }
    }
    errs
}

/// `ValidateLabels`: keys are qualified names, values label values.
pub fn labels_of(labels: &BTreeMap<String, String>, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        for m in qualified_name(k) {
            errs.push(FieldError::invalid(
                path.clone(),
                BadValue::Str(k.clone()),
                m,
            ));
        }
        for m in label_value(v) {
            errs.push(FieldError::invalid(
                path.clone(),
                BadValue::Str(v.clone()),
                m,
            ));
        }
    }
    errs
}

/// `ValidateLabelSelector`.
pub fn label_selector(sel: &LabelSelector, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(labels) = &sel.match_labels {
        errs.extend(labels_of(labels, &path.child("matchLabels")));
    }
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        errs.extend(selector_requirement(
            req,
            &path.child("matchExpressions").index(i),
        ));
    }
    errs
}

fn selector_requirement(req: &LabelSelectorRequirement, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" | "NotIn" => {
            if values.is_empty() {
                errs.push(FieldError::required(
                    path.child("values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                ));
            }
        }
        "Exists" | "DoesNotExist" => {
            if !values.is_empty() {
                errs.push(FieldError::forbidden(
                    path.child("values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ));
            }
        }
        other => errs.push(FieldError::invalid(
            path.child("operator"),
            BadValue::Str(other.to_string()),
            "not a valid selector operator",
        )),
    }
    for m in qualified_name(&req.key) {
        errs.push(FieldError::invalid(
            path.child("key"),
            BadValue::Str(req.key.clone()),
            m,
        ));
    }
    for (i, v) in values.iter().enumerate() {
        for m in label_value(v) {
            errs.push(FieldError::invalid(
                path.child("values").index(i),
                BadValue::Str(v.clone()),
                m,
            ));
        }
    }
    errs
}

// ---------------------------------------------------------------------------
// NetworkPolicy.

/// `ValidateNetworkPolicy`: every field error of `np` (empty: valid).
pub fn network_policy(np: &NetworkPolicy) -> Vec<FieldError> {
    let mut errs = object_meta(
        &np.metadata,
        true,
        NameRule::Subdomain,
        &Path::new("metadata"),
    );
    let spec_path = Path::new("spec");
    let Some(spec) = &np.spec else {
        return errs;
    };
    if let Some(sel) = &spec.pod_selector {
        errs.extend(label_selector(sel, &spec_path.child("podSelector")));
    }
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let rule_path = spec_path.child("ingress").index(i);
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            errs.extend(policy_port(port, &rule_path.child("ports").index(j)));
        }
        for (j, peer) in rule.from.iter().flatten().enumerate() {
            errs.extend(policy_peer(peer, &rule_path.child("from").index(j)));
        }
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let rule_path = spec_path.child("egress").index(i);
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            errs.extend(policy_port(port, &rule_path.child("ports").index(j)));
        }
        for (j, peer) in rule.to.iter().flatten().enumerate() {
            errs.extend(policy_peer(peer, &rule_path.child("to").index(j)));
        }
    }
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.len() > 2 {
        let quoted: Vec<String> = types.iter().map(|t| go_quote(t)).collect();
        errs.push(FieldError::invalid(
            spec_path.child("policyTypes"),
            BadValue::Raw(format!("[]networking.PolicyType{{{}}}", quoted.join(", "))),
            "may not specify more than two policyTypes",
        ));
        return errs;
    }
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            errs.push(FieldError::not_supported(
                spec_path.child("policyTypes").index(i),
                t,
                &["Ingress", "Egress"],
            ));
        }
    }
    errs
}

/// `ValidateNetworkPolicyPort`.
fn policy_port(port: &NetworkPolicyPort, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(p) = &port.protocol
        && !matches!(p.as_str(), "TCP" | "UDP" | "SCTP")
    {
        errs.push(FieldError::not_supported(
            path.child("protocol"),
            p,
            &["TCP", "UDP", "SCTP"],
        ));
    }
    match (&port.port, port.end_port) {
        (Some(IntOrString::Int(n)), end) => {
            for m in port_num(i64::from(*n)) {
                errs.push(FieldError::invalid(
                    path.child("port"),
                    BadValue::Int(i64::from(*n)),
                    m,
                ));
            }
            if let Some(end) = end {
                if end < *n {
                    errs.push(FieldError::invalid(
                        path.child("endPort"),
                        BadValue::Int(i64::from(end)),
                        "must be greater than or equal to `port`",
                    ));
                }
                for m in port_num(i64::from(end)) {
                    errs.push(FieldError::invalid(
                        path.child("endPort"),
                        BadValue::Int(i64::from(end)),
                        m,
                    ));
                }
            }
        }
        (Some(IntOrString::String(name)), end) => {
            if let Some(end) = end {
                errs.push(FieldError::invalid(
                    path.child("endPort"),
                    BadValue::Int(i64::from(end)),
                    "may not be specified when `port` is non-numeric",
                ));
            }
            for m in port_name(name) {
                errs.push(FieldError::invalid(
                    path.child("port"),
                    BadValue::Str(name.clone()),
                    m,
                ));
            }
        }
        (None, Some(end)) => errs.push(FieldError::invalid(
            path.child("endPort"),
            BadValue::Int(i64::from(end)),
            "may not be specified when `port` is not specified",
        )),
        (None, None) => {}
    }
    errs
}

/// `ValidateNetworkPolicyPeer`.
fn policy_peer(peer: &NetworkPolicyPeer, path: &Path) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut n = 0;
    if let Some(sel) = &peer.pod_selector {
        n += 1;
        errs.extend(label_selector(sel, &path.child("podSelector")));
    }
    if let Some(sel) = &peer.namespace_selector {
        n += 1;
        errs.extend(label_selector(sel, &path.child("namespaceSelector")));
    }
    if let Some(block) = &peer.ip_block {
        n += 1;
        errs.extend(ip_block(block, &path.child("ipBlock")));
    }
    if n == 0 {
        errs.push(FieldError::required(path.clone(), "must specify a peer"));
    } else if n > 1 && peer.ip_block.is_some() {
        errs.push(FieldError::forbidden(
            path.clone(),
            "may not specify both ipBlock and another peer",
        ));
    }
    errs
}

/// `ValidateIPBlock`: a CIDR, and each `except` a strict subset of it.
fn ip_block(block: &IPBlock, path: &Path) -> Vec<FieldError> {
    if block.cidr.is_empty() {
        return vec![FieldError::required(path.child("cidr"), "")];
    }
    let outer = match cidr(&path.child("cidr"), &block.cidr) {
        Ok(net) => net,
        Err(errs) => return errs,
    };
    let mut errs = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let p = path.child("except").index(i);
        match cidr(&p, text) {
            Ok(inner) => {
                // Different families are never inside each other.
                if !outer.contains(&inner.network()) || inner.prefix_len() <= outer.prefix_len() {
                    errs.push(FieldError::invalid(
                        p,
                        BadValue::Str(text.clone()),
                        "must be a strict subset of `cidr`",
                    ));
                }
            }
            Err(e) => errs.extend(e),
        }
    }
    errs
}

// ---------------------------------------------------------------------------
// The other kinds, for the fields the agent uses.

/// A Namespace: its name (a DNS label) and labels.
pub fn namespace(ns: &Namespace) -> Vec<FieldError> {
    object_meta(&ns.metadata, false, NameRule::Label, &Path::new("metadata"))
}

/// A Node: name, labels and `spec.podCIDRs` (the node's blocks).
pub fn node(node: &Node) -> Vec<FieldError> {
    let mut errs = object_meta(
        &node.metadata,
        false,
        NameRule::Subdomain,
        &Path::new("metadata"),
    );
    let spec = Path::new("spec");
    if let Some(s) = &node.spec {
        if let Some(c) = &s.pod_cidr
            && !c.is_empty()
            && let Err(e) = cidr(&spec.child("podCIDR"), c)
        {
            errs.extend(e);
        }
        for (i, c) in s.pod_cidrs.iter().flatten().enumerate() {
            if let Err(e) = cidr(&spec.child("podCIDRs").index(i), c) {
                errs.extend(e);
            }
        }
    }
    errs
}

/// A Pod: name, namespace, labels, container ports (named ports are matched
/// by policies), `spec.nodeName`, and its IPs.
pub fn pod(pod: &Pod) -> Vec<FieldError> {
    let mut errs = object_meta(
        &pod.metadata,
        true,
        NameRule::Subdomain,
        &Path::new("metadata"),
    );
    let spec_path = Path::new("spec");
    if let Some(spec) = &pod.spec {
        if let Some(n) = &spec.node_name
            && !n.is_empty()
        {
            for m in dns1123_subdomain(n) {
                errs.push(FieldError::invalid(
                    spec_path.child("nodeName"),
                    BadValue::Str(n.clone()),
                    m,
                ));
            }
        }
        for (i, c) in spec.containers.iter().enumerate() {
            let mut names = std::collections::BTreeSet::new();
            for (j, p) in c.ports.iter().flatten().enumerate() {
                let path = spec_path
                    .child("containers")
                    .index(i)
                    .child("ports")
                    .index(j);
                if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                    for m in port_name(name) {
                        errs.push(FieldError::invalid(
                            path.child("name"),
                            BadValue::Str(name.to_string()),
                            m,
                        ));
                    }
                    if !names.insert(name.to_string()) {
                        errs.push(FieldError::duplicate(
                            path.child("name"),
                            BadValue::Str(name.to_string()),
                        ));
                    }
                }
                for m in port_num(i64::from(p.container_port)) {
                    errs.push(FieldError::invalid(
                        path.child("containerPort"),
                        BadValue::Int(i64::from(p.container_port)),
                        m,
                    ));
                }
                if let Some(proto) = &p.protocol
                    && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
                {
                    errs.push(FieldError::not_supported(
                        path.child("protocol"),
                        proto,
                        &["SCTP", "TCP", "UDP"],
                    ));
                }
            }
        }
    }
    if let Some(status) = &pod.status {
        let st = Path::new("status");
        if let Some(ip_text) = status.pod_ip.as_deref().filter(|s| !s.is_empty())
            && let Err(e) = ip(&st.child("podIP"), ip_text)
        {
            errs.extend(e);
        }
        for (i, p) in status.pod_ips.iter().flatten().enumerate() {
            if let Err(e) = ip(&st.child("podIPs").index(i).child("ip"), &p.ip) {
                errs.extend(e);
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests;
