//! Drives `tabbyctl lab` as a user would: a lab per test, named uniquely,
//! brought down on drop (also when the test fails).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tabby_tests::{Netns, require_root, require_tool, workspace_bin};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Labs of test processes that died (SIGKILL, a crash) are removed before
/// a new one starts: their names carry the pid of the test process.
fn clean_stale_labs() {
    let Ok(entries) = std::fs::read_dir("/run/tabby-lab") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("e2e")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new(workspace_bin("tabbyctl"))
                .args(["lab", "down", "--name", &name])
                .output();
        }
    }
}

/// The lab's datastore: the two control planes every end-to-end test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The `dir:` datastore (`tabbyctl lab up`).
    Dir,
    /// A real control plane (`tabbyctl lab up --kubernetes`).
    Kubernetes,
}

/// Instantiates each test `fn name(mode: Mode)` once per mode, as
/// `dir::name` and `kubernetes::name`.
#[macro_export]
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod dir {
            $( #[test] fn $name() { super::$name($crate::lab::Mode::Dir) } )*
        }
        mod kubernetes {
            $( #[test] fn $name() { super::$name($crate::lab::Mode::Kubernetes) } )*
        }
    };
}

/// A running lab.
pub struct Lab {
    pub name: String,
    pub mode: Mode,
    bin: PathBuf,
}

impl Lab {
    /// Starts a `dir:` lab of `nodes` nodes.
    pub fn up(nodes: usize) -> Lab {
        Lab::up_in(Mode::Dir, nodes)
    }

    /// Starts a lab of `nodes` nodes on `mode`'s control plane.
    pub fn up_in(mode: Mode, nodes: usize) -> Lab {
        require_root();
        for t in ["ip", "nft"] {
            require_tool(t);
        }
        clean_stale_labs();
        let name = format!(
            "e2e{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            name,
            mode,
            bin: workspace_bin("tabbyctl"),
        };
        let n = nodes.to_string();
        match mode {
            Mode::Dir => lab.ok(&["up", "--nodes", &n]),
            Mode::Kubernetes => {
                let bins = repo_root().join("target/k8s/bin");
                assert!(
                    bins.join("kube-apiserver").is_file(),
                    "no Kubernetes binaries in {}: run `bash tests/k8s/build.sh` (tests/setup.sh does)",
                    bins.display()
                );
                lab.ok(&["up", "--kubernetes", "--nodes", &n, "--timeout", "300"])
            }
        };
        lab
    }

    /// `tabbyctl lab kubectl -- <args>` output (fails the test on error).
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["kubectl", "--name", &self.name, "--"];
        all.extend_from_slice(args);
        let out = Command::new(&self.bin)
            .arg("lab")
            .args(&all)
            .output()
            .expect("running tabbyctl");
        assert!(
            out.status.success(),
            "tabbyctl lab kubectl {}:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pod CIDRs of `node` (IPv4 first) from `lab status`.
    pub fn pod_cidrs(&self, node: &str) -> Vec<String> {
        self.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .unwrap_or_else(|| panic!("no node {node}"))["podCIDRs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    }

    /// Runs `tabbyctl lab <args> --name <lab>`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("lab")
            .args(args)
            .args(["--name", &self.name])
            .output()
            .expect("running tabbyctl")
    }

    /// Like `run`, and fails the test when the command fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tabbyctl lab {} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn file(&self, yaml: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(f.path(), yaml).unwrap();
        f
    }

    /// `lab apply -f` of `yaml`.
    pub fn apply(&self, yaml: &str) -> String {
        let f = self.file(yaml);
        self.ok(&["apply", "-f", f.path().to_str().unwrap()])
    }

    /// `lab delete -f` of `yaml`.
    pub fn delete(&self, yaml: &str) -> String {
        let f = self.file(yaml);
        self.ok(&["delete", "-f", f.path().to_str().unwrap()])
    }

    /// `lab status -o json`.
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "-o", "json"])).unwrap()
    }

    /// `lab probe -o json` on `port`/`protocol` (all pairs).
    pub fn probe(&self, port: u16, protocol: &str) -> Value {
        serde_json::from_str(&self.ok(&[
            "probe",
            "--port",
            &port.to_string(),
            "--protocol",
            protocol,
            "-o",
            "json",
        ]))
        .unwrap()
    }

    /// The pod `ns/name` from status.
    pub fn pod(&self, id: &str) -> Value {
        let (ns, name) = id.split_once('/').unwrap();
        self.status()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["namespace"] == ns && p["name"] == name)
            .unwrap_or_else(|| panic!("no pod {id}"))
            .clone()
    }

    /// The netns of node `name`.
    pub fn node_netns(&self, node: &str) -> String {
        format!("tl.{}.{node}", self.name)
    }

    /// The fabric namespace.
    pub fn fabric_netns(&self) -> String {
        format!("tl.{}.fabric", self.name)
    }

    /// The lab's directory.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from("/run/tabby-lab").join(&self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// `ip -n <netns> <args>` output.
pub fn ip_in(netns: &str, args: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", netns])
        .args(args.split_whitespace())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every netns whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Namespaces x, y, z (labelled `ns: <name>`) with pods a, b, c each
/// (labelled `pod: <name>`, serving 80/TCP named http and 81/UDP), spread
/// round-robin over the nodes: the upstream e2e suite's layout.
pub fn xyz() -> String {
    let mut docs = Vec::new();
    for ns in ["x", "y", "z"] {
        docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"
        ));
        for p in ["a", "b", "c"] {
            docs.push(format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, namespace: {ns}, labels: {{pod: {p}}}}}\n\
                 spec:\n  containers:\n  - name: c\n    image: registry.k8s.io/e2e-test-images/agnhost:2.47\n    \
                 ports: [{{containerPort: 80, name: http}}, {{containerPort: 81, protocol: UDP}}]\n"
            ));
        }
    }
    docs.join("---\n")
}

/// The nine pods of [`xyz`].
pub const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

/// Namespace of `ns/name`.
pub fn ns(p: &str) -> &str {
    p.split('/').next().unwrap()
}

/// The differences between a probe's matrix and `expect(from, to)`.
pub fn mismatches(probe: &Value, expect: impl Fn(&str, &str) -> bool) -> Vec<String> {
    mismatches_of(probe, &PODS, expect)
}

/// The differences between a probe's matrix over `pods` and `expect(from, to)`.
pub fn mismatches_of(
    probe: &Value,
    pods: &[&str],
    expect: impl Fn(&str, &str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for &f in pods {
        for &t in pods {
            let got = probe["matrix"][f][t].as_bool();
            if got != Some(expect(f, t)) {
                out.push(format!("{f} -> {t}: got {got:?}, want {}", expect(f, t)));
            }
        }
    }
    out
}

/// The repository's root (for the manifests under test).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Polls `cond` every 100 ms until it holds or `secs` pass.
pub fn eventually(what: &str, secs: u64, cond: impl FnMut() -> bool) {
    tabby_tests::wait_for(what, Duration::from_secs(secs), cond);
}

/// A BIRD router in its own namespace, plugged into the lab's fabric.
pub struct Router {
    ns: Netns,
    bird: std::process::Child,
    ctl: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Router {
    pub fn attach(lab: &Lab, conf: &str) -> Router {
        require_tool("bird");
        require_tool("birdc");
        let ns = Netns::new("router");
        let fabric = lab.fabric_netns();
        let out = Command::new("ip")
            .args(["-n", &fabric, "link", "add", "rtr0", "type", "veth", "peer"])
            .args(["name", "eth0", "netns", ns.name()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        ip_in(&fabric, "link set rtr0 master br0 up");
        ns.ok("ip link set eth0 up");
        ns.ok("ip addr add 10.99.0.250/24 dev eth0");
        let dir = tempfile::tempdir().unwrap();
        let conf_path = dir.path().join("bird.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let ctl = dir.path().join("bird.ctl");
        let bird = Command::new("ip")
            .args(["netns", "exec", ns.name(), "bird", "-f", "-c"])
            .arg(&conf_path)
            .arg("-s")
            .arg(&ctl)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Router {
            ns,
            bird,
            ctl,
            _dir: dir,
        };
        eventually("BIRD is up", 30, || {
            r.cmd("show status").contains("Daemon is up")
        });
        r
    }

    pub fn cmd(&self, c: &str) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.ctl)
            .args(c.split_whitespace())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.bird.kill();
        let _ = self.bird.wait();
        let _ = &self.ns;
    }
}
