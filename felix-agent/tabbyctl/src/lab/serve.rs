//! `tabbyctl lab serve`: what runs "in" a lab pod. It serves the pod's
//! `containerPorts` inside the pod's namespace: TCP connections are
//! accepted (and echoed), UDP datagrams are echoed back.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;

use anyhow::{Context, bail};
use tabby_sys::NetNs;

/// The line the server prints once every port is bound.
pub const READY: &str = "ready";

/// A `PORT/PROTOCOL` argument.
pub fn parse_port(s: &str) -> anyhow::Result<(u16, bool)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("bad port {port:?}"))?;
    match proto.to_ascii_uppercase().as_str() {
        "TCP" => Ok((port, false)),
        "UDP" => Ok((port, true)),
        other => bail!("protocol {other:?} is not TCP or UDP"),
    }
}

/// Serves `ports` (port, is UDP) in the namespace at `netns` until killed.
pub fn serve(netns: &Path, ports: &[(u16, bool)]) -> anyhow::Result<()> {
    let ns = NetNs::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // The main thread stays in the pod's namespace for the life of the
    // process; threads spawned later start in it too.
    let _inside = ns
        .enter()
        .with_context(|| format!("entering {}", netns.display()))?;
    let mut threads = Vec::new();
    for &(port, udp) in ports {
        // `[::]` takes IPv4 too (bindv6only is 0 in a new namespace).
        if udp {
            let sock =
                UdpSocket::bind(("::", port)).with_context(|| format!("binding UDP {port}"))?;
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }));
        } else {
            let listener =
                TcpListener::bind(("::", port)).with_context(|| format!("binding TCP {port}"))?;
            threads.push(std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = conn.read(&mut buf) {
                            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
            }));
        }
    }
    println!("{READY}");
    std::io::stdout().flush().context("writing to stdout")?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(parse_port("80").unwrap(), (80, false));
        assert_eq!(parse_port("53/udp").unwrap(), (53, true));
        assert_eq!(parse_port("81/TCP").unwrap(), (81, false));
        assert!(parse_port("0").is_err());
        assert!(parse_port("80/SCTP").is_err());
        assert!(parse_port("x").is_err());
    }
}
