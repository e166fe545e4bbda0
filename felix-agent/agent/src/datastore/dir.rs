//! The directory backend: multi-document YAML manifests in a directory.
