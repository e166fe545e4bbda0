//! The Secrets that hold BGP passwords, and the lookup of a BGPPeer's
//! password in them. The datastore delivers only Secrets of the agent's
//! namespace, already reduced to [`SecretPasswords`], so a password is a
//! [`Password`] from the moment it is read and never prints.

use std::collections::{BTreeMap, BTreeSet};

use tabby_crds::password::{BgpPassword, Password, SecretPasswords};

/// Why a BGPPeer's password cannot be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MissingPassword {
    /// The Secret is not there (or not readable).
    #[error("Secret {0:?} (spec.password.secretKeyRef.name) is not in the agent's namespace")]
    Secret(String),
    /// The Secret has no such key.
    #[error("Secret {secret:?} has no key {key:?} (spec.password.secretKeyRef.key)")]
    Key {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
    },
}

/// The Secrets of the agent's namespace, by name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PeerSecrets {
    secrets: BTreeMap<String, SecretPasswords>,
}

impl PeerSecrets {
    /// Adds or replaces a Secret.
    pub fn apply(&mut self, s: SecretPasswords) {
        self.secrets
            .insert(s.metadata.name.clone().unwrap_or_default(), s);
    }

    /// Forgets a Secret.
    pub fn remove(&mut self, name: &str) {
        self.secrets.remove(name);
    }

    /// Forgets every Secret not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<String>) {
        self.secrets.retain(|n, _| keep.contains(n));
    }

    /// The password a BGPPeer asks for: none, the inline one (deprecated),
    /// or the Secret's key. An empty password is no password.
    pub fn resolve(&self, pw: Option<&BgpPassword>) -> Result<Option<Password>, MissingPassword> {
        let found = match pw {
            None => return Ok(None),
            Some(BgpPassword::Inline(p)) => p.clone(),
            Some(BgpPassword::SecretKeyRef { secret_key_ref: r }) => {
                let secret = self
                    .secrets
                    .get(&r.name)
                    .ok_or_else(|| MissingPassword::Secret(r.name.clone()))?;
                secret
                    .keys
                    .get(&r.key)
                    .cloned()
                    .ok_or_else(|| MissingPassword::Key {
                        secret: r.name.clone(),
                        key: r.key.clone(),
                    })?
            }
        };
        Ok(Some(found).filter(|p| !p.expose().is_empty()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use k8s_openapi::api::core::v1::Secret;

    fn secret(yaml: &str) -> SecretPasswords {
        let s: Secret = serde_yaml::from_str(yaml).unwrap();
        SecretPasswords::from_secret(&s).unwrap()
    }

    fn password(yaml: &str) -> BgpPassword {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_secret_key_ref_finds_its_key_and_says_what_is_missing() {
        let mut s = PeerSecrets::default();
        let r = password("{secretKeyRef: {name: bgp, key: tor}}");
        assert_eq!(
            s.resolve(Some(&r)),
            Err(MissingPassword::Secret("bgp".into()))
        );
        s.apply(secret(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bgp, namespace: kube-system}\nstringData: {other: x}\n",
        ));
        assert!(matches!(
            s.resolve(Some(&r)),
            Err(MissingPassword::Key { .. })
        ));
        s.apply(secret(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bgp, namespace: kube-system}\nstringData: {tor: s3cret}\n",
        ));
        assert_eq!(s.resolve(Some(&r)).unwrap().unwrap().expose(), "s3cret");
        s.retain(&BTreeSet::new());
        assert!(s.resolve(Some(&r)).is_err());
    }

    #[test]
    fn inline_and_absent_passwords_still_work() {
        let s = PeerSecrets::default();
        assert_eq!(s.resolve(None), Ok(None));
        assert_eq!(
            s.resolve(Some(&password("s3cret")))
                .unwrap()
                .unwrap()
                .expose(),
            "s3cret"
        );
        assert_eq!(s.resolve(Some(&password("\"\""))), Ok(None));
    }
}
