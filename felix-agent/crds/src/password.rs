//! BGP passwords: `spec.password` of a BGPPeer names a key of a Secret in
//! the agent's namespace (`{secretKeyRef: {name, key}}`, as Calico does); the
//! inline string of earlier versions is still read, but deprecated. A
//! password is a [`Password`], which never prints: its `Debug` and `Display`
//! are `<redacted>`, so no log line, status document or `Debug` of a value
//! holding one can show it.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tabby_policy::validate::{BadValue, FieldError, NameRule, Path, config_map_key, object_meta};

/// A secret string. Only [`Password::expose`] gives it out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }

    /// The password itself, for the one place that hands it to the kernel.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A key of a Secret in the agent's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in its `data` (or `stringData`).
    pub key: String,
}

/// `spec.password` of a BGPPeer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BgpPassword {
    /// `{secretKeyRef: {name, key}}`.
    SecretKeyRef {
        /// The Secret and key holding the password.
        #[serde(rename = "secretKeyRef")]
        secret_key_ref: SecretKeyRef,
    },
    /// The password itself, in the BGPPeer (deprecated: anyone who can read
    /// BGPPeers can read it).
    Inline(Password),
}

/// The schema of `spec.password`: a string or an object. A structural
/// schema cannot say "one of two types", so the API server keeps the value
/// as it is and the agent checks it ([`crate::validate`]).
pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "TCP MD5 password (RFC 2385): {secretKeyRef: {name, key}} naming a key of a Secret in the agent's namespace. An inline string is still accepted but deprecated.",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The passwords a Secret holds, parsed where it enters the agent: only its
/// name, namespace and values, each a [`Password`].
#[derive(Clone, Debug, PartialEq)]
pub struct SecretPasswords {
    /// The Secret's name and namespace, nothing else: its annotations may
    /// hold the data again (`kubectl.kubernetes.io/last-applied-configuration`).
    pub metadata: ObjectMeta,
    /// Its keys (from `data` and `stringData`; `stringData` wins, as in
    /// the API server).
    pub keys: BTreeMap<String, Password>,
}

impl SecretPasswords {
    /// Checks a Secret as the API server does (name, namespace, keys) and
    /// keeps what the agent needs. A value that is not UTF-8 cannot be a
    /// password here and is refused.
    pub fn from_secret(secret: &Secret) -> Result<Self, Vec<FieldError>> {
        let mut errs = object_meta(
            &secret.metadata,
            true,
            NameRule::Subdomain,
            &Path::new("metadata"),
        );
        let mut keys = BTreeMap::new();
        for (k, v) in secret.data.iter().flatten() {
            for m in config_map_key(k) {
                errs.push(FieldError::invalid(
                    Path::new("data").key(k),
                    BadValue::Str(k.clone()),
                    m,
                ));
            }
            match String::from_utf8(v.0.clone()) {
                Ok(s) => {
                    keys.insert(k.clone(), Password(s));
                }
                Err(_) => errs.push(FieldError::invalid(
                    Path::new("data").key(k),
                    BadValue::Raw("<redacted>".into()),
                    "a BGP password must be UTF-8 text",
                )),
            }
        }
        for (k, v) in secret.string_data.iter().flatten() {
            for m in config_map_key(k) {
                errs.push(FieldError::invalid(
                    Path::new("stringData").key(k),
                    BadValue::Str(k.clone()),
                    m,
                ));
            }
            keys.insert(k.clone(), Password(v.clone()));
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(SecretPasswords {
            metadata: ObjectMeta {
                name: secret.metadata.name.clone(),
                namespace: secret.metadata.namespace.clone(),
                ..ObjectMeta::default()
            },
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_password_never_prints() {
        let p = Password::new("s3cret");
        assert_eq!(
            format!("{p} {p:?} {:?}", Some(&p)),
            "<redacted> <redacted> Some(<redacted>)"
        );
        assert_eq!(p.expose(), "s3cret");
        let inline = BgpPassword::Inline(p);
        assert!(!format!("{inline:?}").contains("s3cret"));
    }

    #[test]
    fn both_forms_of_spec_password_parse() {
        let r: BgpPassword = serde_yaml::from_str("{secretKeyRef: {name: bgp, key: tor}}").unwrap();
        assert_eq!(
            r,
            BgpPassword::SecretKeyRef {
                secret_key_ref: SecretKeyRef {
                    name: "bgp".into(),
                    key: "tor".into()
                }
            }
        );
        let i: BgpPassword = serde_yaml::from_str("s3cret").unwrap();
        assert_eq!(i, BgpPassword::Inline(Password::new("s3cret")));
        assert!(serde_yaml::from_str::<BgpPassword>("{secretKeyRef: {name: bgp}}").is_err());
        assert_eq!(serde_json::to_string(&i).unwrap(), "\"s3cret\"");
    }

    #[test]
    fn a_secret_becomes_its_passwords_and_string_data_wins() {
        let s: Secret = serde_yaml::from_str(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bgp, namespace: kube-system}\ndata: {tor: czNjcmV0, other: eA==}\nstringData: {other: y}\n",
        )
        .unwrap();
        let p = SecretPasswords::from_secret(&s).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("bgp"));
        assert_eq!(p.keys["tor"].expose(), "s3cret");
        assert_eq!(p.keys["other"].expose(), "y");
        assert!(!format!("{p:?}").contains("s3cret"));
        let bad: Secret = serde_yaml::from_str(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: Bad, namespace: kube-system}\ndata: {\"a/b\": eA==}\n",
        )
        .unwrap();
        let errs = SecretPasswords::from_secret(&bad).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
    }
}
