//! A node fixture for the plugin's kernel tests: a "node" namespace with an
//! uplink to an "ext" namespace (a router), and the real `tabby` binary run
//! inside the node as a runtime would run it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tabby_tests::{Netns, PluginRun, run_plugin, scratch, spawn_plugin, wait_for};

pub const TABBY: &str = env!("CARGO_BIN_EXE_tabby");
pub const NODE_V4: &str = "192.168.100.1";
pub const EXT_V4: &str = "192.168.100.2";
pub const NODE_V6: &str = "fd00:100::1";
pub const EXT_V6: &str = "fd00:100::2";
pub const NET: &str = "tabbynet";

pub struct Node {
    pub node: Netns,
    pub ext: Netns,
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new(tag: &str) -> Node {
        let node = Netns::new(&format!("{tag}-n"));
        let ext = Netns::new(&format!("{tag}-x"));
        node.ok(&format!(
            "ip link add up0 type veth peer name up0 netns {}",
            ext.name()
        ));
        node.ok(&format!(
            "ip addr add {NODE_V4}/24 dev up0 && ip addr add {NODE_V6}/64 dev up0 nodad && ip link set up0 up \
             && ip route add default via {EXT_V4} && ip -6 route add default via {EXT_V6}"
        ));
        ext.ok(&format!(
            "ip addr add {EXT_V4}/24 dev up0 && ip addr add {EXT_V6}/64 dev up0 nodad && ip link set up0 up \
             && ip route add 10.244.0.0/16 via {NODE_V4} && ip -6 route add fd00:244::/32 via {NODE_V6}"
        ));
        Node {
            node,
            ext,
            dir: scratch(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The plugin configuration (dual stack, explicit subnets).
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NET,
            "type": "tabby",
            "dataDir": self.data_dir(),
            "runDir": self.run_dir(),
            "ipam": {"type": "tabby-ipam", "subnets": ["10.244.1.0/26", "fd00:244:1::/122"]}
        })
    }

    pub fn env(
        &self,
        cmd: &str,
        cid: &str,
        netns: Option<&Path>,
        pod: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni:/opt/cni/bin".to_string()),
        ];
        if let Some(ns) = netns {
            env.push(("CNI_NETNS", ns.display().to_string()));
        }
        if let Some(p) = pod {
            env.push((
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={p}"),
            ));
        }
        env
    }

    pub fn cni(&self, cmd: &str, cid: &str, netns: Option<&Path>, conf: &Value) -> PluginRun {
        run_plugin(
            Path::new(TABBY),
            &self.node,
            &self.env(cmd, cid, netns, Some(cid)),
            &conf.to_string(),
        )
    }

    pub fn spawn(
        &self,
        cmd: &str,
        cid: &str,
        netns: Option<&Path>,
        conf: &Value,
    ) -> std::process::Child {
        spawn_plugin(
            Path::new(TABBY),
            &self.node,
            &self.env(cmd, cid, netns, Some(cid)),
            &conf.to_string(),
        )
    }

    /// Makes a pod namespace and ADDs it; returns the pod and the result.
    pub fn add_pod(&self, cid: &str) -> (Netns, Value) {
        let pod = Netns::new(cid);
        let res = self
            .cni("ADD", cid, Some(&pod.path()), &self.conf("1.1.0"))
            .expect_ok();
        (pod, res)
    }

    pub fn del_pod(&self, cid: &str, pod: &Netns) {
        self.cni("DEL", cid, Some(&pod.path()), &self.conf("1.1.0"))
            .expect_ok();
    }

    /// Asserts that no trace of any attachment is left on the node.
    pub fn assert_clean(&self) {
        let links = self.node.ok("ip -o link show");
        assert!(
            !links.contains(": tab"),
            "workload interfaces left behind:\n{links}"
        );
        let routes = self
            .node
            .ok("ip route show proto 150; ip -6 route show proto 150");
        assert!(
            routes.trim().is_empty(),
            "tabby routes left behind:\n{routes}"
        );
        let ipam = self.allocations();
        assert!(ipam.is_empty(), "IPAM allocations left behind: {ipam:?}");
        let records: Vec<_> = std::fs::read_dir(self.run_dir().join("endpoints"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            records.is_empty(),
            "endpoint records left behind: {records:?}"
        );
    }

    pub fn allocations(&self) -> Vec<std::net::IpAddr> {
        let store = tabby_common::ipam::IpamStore::open(&self.data_dir(), NET).unwrap();
        store
            .read()
            .unwrap()
            .allocations()
            .map(|(ip, _)| ip)
            .collect()
    }
}

/// The pod addresses of a result (without prefix).
pub fn result_ips(res: &Value) -> Vec<String> {
    res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

pub fn ipv4_of(res: &Value) -> String {
    result_ips(res)
        .into_iter()
        .find(|i| !i.contains(':'))
        .unwrap()
}

pub fn ipv6_of(res: &Value) -> String {
    result_ips(res)
        .into_iter()
        .find(|i| i.contains(':'))
        .unwrap()
}

/// Waits until `from` can ping `to` (ping's own -W is the per-try deadline).
pub fn assert_ping(from: &Netns, to: &str) {
    wait_for(
        &format!("ping {to} from {}", from.name()),
        Duration::from_secs(20),
        || from.succeeds(&format!("ping -c1 -W1 {to}")),
    );
}

/// Serves one TCP echo inside `ns` on `port` (all addresses, v4 and v6).
pub fn tcp_echo_server(ns: &Netns, port: u16) -> std::thread::JoinHandle<()> {
    let listener = ns.run(|| {
        TcpListener::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))).unwrap()
    });
    std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            s.write_all(&buf[..n]).unwrap();
        }
    })
}

/// Connects from `ns` to `addr`, sends a line and expects it back.
pub fn tcp_roundtrip(ns: &Netns, addr: SocketAddr) {
    let mut s = ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello tabby").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello tabby");
}
