//! `tabby-agent`: the per-node daemon.

fn main() {}
