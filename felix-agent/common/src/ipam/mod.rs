//! Node-local IPAM.
