//! The Kubernetes backend: kube-rs watchers turned into [`super::Event`]s.
