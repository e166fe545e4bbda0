//! Kernel access for tabby: network namespaces, netlink, sysctls and socket
//! options. Every syscall the project makes goes through this crate.

pub mod tcp_md5;
