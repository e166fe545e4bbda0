//! A one-node cluster for agent tests: a node namespace with an uplink, the
//! real `tabby-agent` running in it against a manifest directory, and pods
//! wired by the real `tabby` plugin with `agentSocket` set.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tabby_tests::{Netns, http_get, require_tool, run_plugin, scratch, wait_for, workspace_bin};

pub const AGENT: &str = env!("CARGO_BIN_EXE_tabby-agent");
pub const METRICS: &str = "127.0.0.1:9099";

pub struct Cluster {
    pub node: Netns,
    pub ext: Netns,
    pub dir: tempfile::TempDir,
    pub agent: Option<Child>,
    pub pods: Vec<(String, Netns, IpAddr)>,
}

impl Cluster {
    pub fn new(tag: &str) -> Cluster {
        require_tool("nft");
        let node = Netns::new(&format!("{tag}-n"));
        let ext = Netns::new(&format!("{tag}-x"));
        node.ok(&format!(
            "ip link add up0 type veth peer name up0 netns {}",
            ext.name()
        ));
        node.ok("ip addr add 192.168.100.1/24 dev up0 && ip link set up0 up && ip route add default via 192.168.100.2");
        ext.ok("ip addr add 192.168.100.2/24 dev up0 && ip link set up0 up && ip route add 10.244.0.0/16 via 192.168.100.1");
        let c = Cluster {
            node,
            ext,
            dir: scratch(),
            agent: None,
            pods: Vec::new(),
        };
        std::fs::create_dir_all(c.manifests()).unwrap();
        c.write("00-node.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\nspec: {podCIDRs: [10.244.1.0/26]}\n");
        c
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn write(&self, file: &str, yaml: &str) {
        // Write then rename, as `kubectl apply` tooling would: the agent
        // never sees half a file.
        tabby_common::atomic::write_atomic(&self.manifests().join(file), yaml.as_bytes(), 0o644)
            .unwrap();
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.manifests().join(file)).unwrap();
    }

    pub fn start_agent(&mut self) {
        self.agent = Some(spawn_agent(&self.node, self.dir.path(), "node1"));
        self.wait_ready();
    }

    pub fn wait_ready(&self) {
        wait_ready(&self.node);
    }

    /// SIGTERM, as a DaemonSet rollout would do.
    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Adds pod `ns/name` with labels and wires it (CNI ADD with agentSocket);
    /// serves TCP 80 and UDP 81 inside it.
    pub fn add_pod(&mut self, ns: &str, name: &str, labels: &str) -> IpAddr {
        self.write(
            &format!("pod-{ns}-{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{nodeName: node1, containers: [{{name: c, image: x, ports: [{{containerPort: 80, name: http}}]}}]}}\n"
            ),
        );
        // The agent must know the Pod before the runtime asks for it.
        wait_for("the agent to see the pod", Duration::from_secs(30), || {
            self.metric("tabby_pods")
                .is_some_and(|n| n > self.pods.len() as u64)
        });
        let pod = Netns::new(&format!("{ns}{name}"));
        let res = self.cni("ADD", ns, name, &pod);
        assert_eq!(
            res.code,
            0,
            "ADD failed: {}\n{}",
            res.stdout,
            self.agent_log()
        );
        let v: serde_json::Value = serde_json::from_str(&res.stdout).unwrap();
        let ip: IpAddr = v["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        serve(&pod);
        self.pods.push((format!("{ns}/{name}"), pod, ip));
        ip
    }

    pub fn cni(&self, cmd: &str, ns: &str, name: &str, pod: &Netns) -> tabby_tests::PluginRun {
        let conf = json!({
            "cniVersion": "1.1.0", "name": "k8s", "type": "tabby",
            "dataDir": self.data_dir(), "runDir": self.run_dir(),
            "agentSocket": self.run_dir().join("agent.sock"),
            "ipam": {"type": "tabby-ipam"}
        });
        let env = vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", format!("{ns}-{name}")),
            ("CNI_NETNS", pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
            (
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
            ),
        ];
        run_plugin(&workspace_bin("tabby"), &self.node, &env, &conf.to_string())
    }

    pub fn pod(&self, id: &str) -> (&Netns, IpAddr) {
        let (_, ns, ip) = self.pods.iter().find(|(n, _, _)| n == id).unwrap();
        (ns, *ip)
    }

    /// One TCP connection attempt from pod `from` to pod `to` on port 80.
    pub fn tcp(&self, from: &str, to: &str) -> bool {
        let (src, _) = self.pod(from);
        let (_, ip) = self.pod(to);
        tcp_probe(src, SocketAddr::new(ip, 80))
    }

    /// Waits until every listed reachability holds (policy programming is
    /// asynchronous to the manifest change).
    pub fn expect(&self, what: &str, cases: &[(&str, &str, bool)]) {
        wait_for(what, Duration::from_secs(30), || {
            cases.iter().all(|(f, t, want)| self.tcp(f, t) == *want)
        });
    }

    pub fn metric(&self, name: &str) -> Option<u64> {
        let (_, body) = http_get(&self.node, METRICS.parse().unwrap(), "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

/// Starts `tabby-agent` in `ns` on the manifests under `base/manifests`
/// (run and data dirs under `base` too), logging to `base/agent.log`.
pub fn spawn_agent(ns: &Netns, base: &Path, node_name: &str) -> Child {
    let args = [
        format!("--datastore=dir:{}", base.join("manifests").display()),
        format!("--node-name={node_name}"),
        format!("--run-dir={}", base.join("run").display()),
        format!("--data-dir={}", base.join("data").display()),
        format!("--metrics-addr={METRICS}"),
    ];
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.join("agent.log"))
        .unwrap();
    ns.run(|| {
        Command::new(AGENT)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    })
}

/// Waits until the agent in `ns` reports ready.
pub fn wait_ready(ns: &Netns) {
    let addr: SocketAddr = METRICS.parse().unwrap();
    wait_for("agent /readyz", Duration::from_secs(60), || {
        matches!(http_get(ns, addr, "/readyz"), Some((200, _)))
    });
}

/// The first address of a CNI result.
pub fn first_ip(result: &str) -> IpAddr {
    let v: serde_json::Value = serde_json::from_str(result).unwrap();
    v["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// TCP echo on 80 and UDP echo on 81, in threads that live as long as the
/// test process (the namespace's deletion ends them).
pub fn serve(pod: &Netns) {
    let tcp = pod.run(|| TcpListener::bind("0.0.0.0:80").unwrap());
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let udp = pod.run(|| UdpSocket::bind("0.0.0.0:81").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
}

/// A connection with a 1 s deadline: a dropped SYN shows as a timeout.
pub fn tcp_probe(from: &Netns, to: SocketAddr) -> bool {
    from.run(|| {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok()
    })
}

pub fn nft_list(ns: &Netns, what: &str) -> String {
    String::from_utf8_lossy(&ns.sh(&format!("nft list {what}")).stdout).into_owned()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
