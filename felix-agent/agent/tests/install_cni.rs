//! `tabby-agent install-cni`, the DaemonSet's init container, run for real
//! into scratch directories: what it writes, that a second run changes
//! nothing, that other networks' files are left alone, and that the conflist
//! it writes works: the installed plugin wires a pod with it, acknowledged
//! by a real agent, and `portmap` chained after it forwards a hostPort.
//! Needs root, nft, iproute2, iptables and the reference plugins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agentkit;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agentkit::*;
use serde_json::{Value, json};
use tabby_tests::{Netns, require_tool, run_plugin, wait_for, workspace_bin};

/// The scratch layout of one installation.
struct Dirs {
    bin: PathBuf,
    conf: PathBuf,
    run: PathBuf,
    data: PathBuf,
}

impl Dirs {
    fn under(base: &Path) -> Dirs {
        Dirs {
            bin: base.join("opt/cni/bin"),
            conf: base.join("etc/cni/net.d"),
            run: base.join("run"),
            data: base.join("data"),
        }
    }

    fn install(&self, extra: &[&str]) -> String {
        let out = Command::new(AGENT)
            .arg("install-cni")
            .arg(format!("--plugin={}", workspace_bin("tabby").display()))
            .arg(format!("--cni-bin-dir={}", self.bin.display()))
            .arg(format!("--cni-conf-dir={}", self.conf.display()))
            .arg(format!("--run-dir={}", self.run.display()))
            .arg(format!("--data-dir={}", self.data.display()))
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "install-cni failed: {stderr}");
        stderr
    }

    fn conflist_path(&self) -> PathBuf {
        self.conf.join("10-tabby.conflist")
    }

    fn conflist(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.conflist_path()).unwrap()).unwrap()
    }
}

/// (mtime in ns, inode): a rewrite by rename changes both.
fn stamp(path: &Path) -> (i64, i64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec(), m.ino())
}

#[test]
fn installs_once_leaves_other_files_alone_and_rewrites_only_on_change() {
    let base = tabby_tests::scratch();
    let d = Dirs::under(base.path());
    // Another network's configuration and plugin, present before us.
    std::fs::create_dir_all(&d.conf).unwrap();
    std::fs::create_dir_all(&d.bin).unwrap();
    let other_conf = d.conf.join("05-other.conflist");
    let other_bin = d.bin.join("other");
    std::fs::write(&other_conf, "{\"name\":\"other\"}").unwrap();
    std::fs::write(&other_bin, "#!/bin/sh\n").unwrap();
    let others = [stamp(&other_conf), stamp(&other_bin)];

    let log = d.install(&[]);
    assert!(log.contains("installed"), "{log}");
    let plugin = d.bin.join("tabby");
    assert_eq!(
        std::fs::read(&plugin).unwrap(),
        std::fs::read(workspace_bin("tabby")).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&plugin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        d.conflist(),
        json!({
            "cniVersion": "1.0.0",
            "name": "tabby",
            "plugins": [
                {
                    "type": "tabby",
                    "agentSocket": d.run.join("agent.sock"),
                    "dataDir": d.data,
                    "runDir": d.run,
                    "ipam": {"type": "tabby-ipam"},
                    "capabilities": {"bandwidth": true}
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        })
    );

    // A restarted init container: nothing rewritten.
    let before = [stamp(&plugin), stamp(&d.conflist_path())];
    let log = d.install(&[]);
    assert_eq!(log.matches("unchanged").count(), 2, "{log}");
    assert_eq!([stamp(&plugin), stamp(&d.conflist_path())], before);

    // A changed setting rewrites the conflist only.
    d.install(&["--mtu=1400", "--no-portmap"]);
    assert_eq!(stamp(&plugin), before[0]);
    assert_ne!(stamp(&d.conflist_path()), before[1]);
    let v = d.conflist();
    assert_eq!(v["plugins"][0]["mtu"], 1400);
    assert_eq!(v["plugins"].as_array().unwrap().len(), 1);

    // Other files untouched, and no temporary file left anywhere.
    assert_eq!([stamp(&other_conf), stamp(&other_bin)], others);
    let mut names: Vec<String> = std::fs::read_dir(&d.conf)
        .unwrap()
        .chain(std::fs::read_dir(&d.bin).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["05-other.conflist", "10-tabby.conflist", "other", "tabby"]
    );
}

#[test]
fn refuses_a_relative_path_and_writes_nothing() {
    let base = tabby_tests::scratch();
    let out = Command::new(AGENT)
        .args(["install-cni", "--run-dir=run/tabby"])
        .arg(format!(
            "--cni-bin-dir={}",
            base.path().join("bin").display()
        ))
        .arg(format!(
            "--cni-conf-dir={}",
            base.path().join("conf").display()
        ))
        .arg(format!("--plugin={}", workspace_bin("tabby").display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--run-dir"));
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
}

/// Runs one plugin of the installed conflist the way libcni does: the
/// plugin's own object plus the list's `name` and `cniVersion`, and what
/// the runtime adds (`extra`: `prevResult`, `runtimeConfig`).
fn run_chained(
    c: &Cluster,
    bin_dir: &Path,
    conflist: &Value,
    index: usize,
    cmd: &str,
    pod: &Netns,
    extra: Value,
) -> tabby_tests::PluginRun {
    let mut conf = conflist["plugins"][index].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    let plugin = conf["type"].as_str().unwrap().to_owned();
    // The reference plugins come from the Debian package; tabby from
    // where the installer put it.
    let binary = if plugin == "tabby" {
        bin_dir.join("tabby")
    } else {
        PathBuf::from(format!("/usr/lib/cni/{plugin}"))
    };
    let env = vec![
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", "inst-web".to_string()),
        ("CNI_NETNS", pod.path().display().to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", format!("{}:/usr/lib/cni", bin_dir.display())),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=web".to_string(),
        ),
    ];
    run_plugin(&binary, &c.node, &env, &conf.to_string())
}

#[test]
fn the_installed_conflist_wires_a_pod_through_the_agent_and_portmap() {
    require_tool("/usr/lib/cni/portmap");
    require_tool("iptables");
    let mut c = Cluster::new("inst");
    c.write(
        "01-ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    );
    c.write(
        "02-pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: x}\nspec: {nodeName: node1, containers: [{name: c, image: x}]}\n",
    );
    c.start_agent();
    wait_for("the agent to see the pod", Duration::from_secs(30), || {
        c.metric("tabby_pods").is_some_and(|n| n >= 1)
    });
    // The installer pointed at the agent's directories, as the DaemonSet does.
    let d = Dirs {
        run: c.run_dir(),
        data: c.data_dir(),
        ..Dirs::under(c.dir.path())
    };
    d.install(&[]);
    let conflist = d.conflist();

    let pod = Netns::new("instweb");
    let ports =
        json!({"portMappings": [{"hostPort": 30080, "containerPort": 80, "protocol": "tcp"}]});
    let add = run_chained(&c, &d.bin, &conflist, 0, "ADD", &pod, json!({})).expect_ok();
    let ip = first_ip(&add.to_string());
    assert!(
        ip.to_string().starts_with("10.244.1."),
        "an address of the node's block from the agent's blocks file: {add}"
    );
    let chained = json!({"prevResult": add, "runtimeConfig": ports});
    let add = run_chained(&c, &d.bin, &conflist, 1, "ADD", &pod, chained).expect_ok();
    // The ADD waited for the agent (agentSocket): the pod's chains exist.
    assert!(
        c.agent_log().contains("endpoint programmed"),
        "{}",
        c.agent_log()
    );
    serve(&pod);
    assert!(tcp_probe(&c.node, SocketAddr::new(ip, 80)), "node to pod");
    // portmap, chained by the conflist: the node's port reaches the pod.
    wait_for(
        "hostPort 30080 to reach the pod",
        Duration::from_secs(10),
        || tcp_probe(&c.ext, "192.168.100.1:30080".parse().unwrap()),
    );

    let del = json!({"prevResult": add, "runtimeConfig": ports});
    run_chained(&c, &d.bin, &conflist, 1, "DEL", &pod, del.clone()).expect_ok();
    run_chained(&c, &d.bin, &conflist, 0, "DEL", &pod, del).expect_ok();
    let links = c.node.ok("ip -o link show");
    assert!(!links.contains(": tab"), "{links}");
}
