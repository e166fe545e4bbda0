//! Helpers for system tests that run in real network namespaces.
