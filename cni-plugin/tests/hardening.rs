//! Inputs a runtime should never send, or an attacker with write access to
//! the run directory could forge, and what the plugin does with them: the
//! node's own namespace on every verb, paths that are not namespaces,
//! environment variables that are not UTF-8, subnets that are not pools,
//! and endpoint records that name someone else's interface.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;
use tabby_common::endpoint::EndpointStore;
use tabby_tests::{Netns, PluginRun};

fn has_link(ns: &Netns, name: &str) -> bool {
    ns.succeeds(&format!("ip link show dev {name}"))
}

fn link_index(ns: &Netns, name: &str) -> u32 {
    ns.ok(&format!("cat /sys/class/net/{name}/ifindex"))
        .trim()
        .parse()
        .unwrap()
}

/// Runs the plugin in the node with `CNI_*` variables plus `extra`, which
/// may be any bytes (not only UTF-8).
fn run_with_raw_env(
    n: &Node,
    env: &[(&str, String)],
    extra: &[(OsString, OsString)],
    stdin: &str,
) -> PluginRun {
    use std::io::Write;
    let mut child = n.node.run(|| {
        let mut cmd = Command::new(TABBY);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    PluginRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn not_utf8() -> OsString {
    OsString::from_vec(vec![b'a', 0xff, 0xfe, b'z'])
}

#[test]
fn del_refuses_the_nodes_own_namespace_and_leaves_its_uplink() {
    let n = Node::new("ownd");
    let conf = n.conf("1.1.0");
    for own in [
        n.node.path().display().to_string(),
        "/proc/self/ns/net".to_string(),
        "/proc/thread-self/ns/net".to_string(),
    ] {
        let mut env = n.env("DEL", "victim", Some(Path::new(&own)), None);
        env.retain(|(k, _)| *k != "CNI_IFNAME");
        env.push(("CNI_IFNAME", "up0".to_string()));
        let run = tabby_tests::run_plugin(Path::new(TABBY), &n.node, &env, &conf.to_string());
        let err = run.expect_err(8);
        assert!(err["msg"].as_str().unwrap().contains("own"), "{err}");
        assert!(
            has_link(&n.node, "up0"),
            "DEL with {own} deleted the uplink"
        );
    }
    assert_ping(&n.node, EXT_V4);
}

#[test]
fn every_verb_refuses_the_nodes_own_namespace() {
    let n = Node::new("ownv");
    let mut conf = n.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    let own = n.node.path();
    for verb in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
        let mut c = conf.clone();
        if verb == "CHECK" {
            c["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": own}], "ips": []});
        }
        n.cni(verb, "o1", Some(&own), &c).expect_err(8);
    }
    assert!(has_link(&n.node, "up0"));
    n.assert_clean();
}

#[test]
fn a_path_that_is_not_a_namespace_is_code_8_on_every_verb_and_del_still_releases() {
    let n = Node::new("notns");
    let file = n.dir.path().join("not-a-netns");
    std::fs::write(&file, "plain file").unwrap();
    let dir = n.dir.path().to_path_buf();
    let mut conf = n.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    for verb in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
        for path in [&file, &dir] {
            let mut c = conf.clone();
            if verb == "CHECK" {
                c["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": path}], "ips": []});
            }
            n.cni(verb, "f1", Some(path), &c).expect_err(8);
        }
    }

    // A pod that exists, deleted with a wrong path: its address, record and
    // interfaces are released all the same, and the runtime is told (8).
    let (pod, res) = n.add_pod("f2");
    let host = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(n.allocations().len(), 2);
    n.cni("DEL", "f2", Some(&file), &n.conf("1.1.0"))
        .expect_err(8);
    assert!(n.allocations().is_empty(), "DEL kept the allocation");
    assert!(!has_link(&n.node, &host), "DEL kept the host end");
    assert!(
        !pod.ok("ip -o link").contains("eth0"),
        "DEL kept the pod end"
    );
    // Again: nothing left to release, still 8.
    n.cni("DEL", "f2", Some(&file), &n.conf("1.1.0"))
        .expect_err(8);
    n.assert_clean();
}

#[test]
fn a_variable_that_is_not_utf8_is_an_error_object_not_a_panic() {
    let n = Node::new("utf8");
    let pod = Netns::new("u1");
    let env = n.env("ADD", "u1", Some(&pod.path()), Some("u1"));
    let conf = n.conf("1.1.0").to_string();

    // A CNI variable: code 4, naming it.
    for var in ["CNI_ARGS", "CNI_IFNAME", "CNI_COMMAND"] {
        let env: Vec<_> = env.iter().filter(|(k, _)| *k != var).cloned().collect();
        let run = run_with_raw_env(&n, &env, &[(var.into(), not_utf8())], &conf);
        assert!(!run.stderr.contains("panicked"), "{var}: {}", run.stderr);
        let err = run.expect_err(4);
        assert!(err["msg"].as_str().unwrap().contains(var), "{err}");
    }
    // Any other variable is not ours: ADD works and DEL too.
    let extra = [
        (OsString::from("LANG_X"), not_utf8()),
        (OsString::from_vec(vec![b'K', 0xff]), OsString::from("v")),
    ];
    let run = run_with_raw_env(&n, &env, &extra, &conf);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    let res = run.expect_ok();
    assert_ping(&n.node, &ipv4_of(&res));
    let del = n.env("DEL", "u1", Some(&pod.path()), Some("u1"));
    run_with_raw_env(&n, &del, &extra, &conf).expect_ok();
    n.assert_clean();
}

#[test]
fn subnets_that_are_not_pod_pools_are_refused_with_the_field_named() {
    let n = Node::new("pools");
    let pod = Netns::new("pl");
    for subnet in [
        "0.0.0.0/0",
        "::/0",
        "0.0.0.0/8",
        "127.0.0.0/8",
        "224.0.0.0/24",
        "169.254.0.0/16",
        "255.255.255.255/32",
        "10.244.0.0/31",
        "10.244.0.1/32",
        "fe80::/64",
        "ff02::/16",
        "::1/128",
        "fd00::/127",
    ] {
        let mut conf = n.conf("1.1.0");
        conf["ipam"]["subnets"] = json!(["10.244.1.0/26", subnet]);
        let err = n.cni("ADD", "pl", Some(&pod.path()), &conf).expect_err(7);
        assert!(
            err["msg"].as_str().unwrap().contains("ipam.subnets[1]"),
            "{subnet}: {err}"
        );
        assert!(!pod.ok("ip -o link").contains("eth0"), "{subnet}");
    }
    // The smallest pools that still hold an address are fine.
    let mut conf = n.conf("1.1.0");
    conf["ipam"]["subnets"] = json!(["10.244.3.0/30", "fd00:244:3::/126"]);
    let res = n.cni("ADD", "pl", Some(&pod.path()), &conf).expect_ok();
    assert_eq!(ipv4_of(&res), "10.244.3.1");
    n.cni("DEL", "pl", Some(&pod.path()), &conf).expect_ok();
    n.assert_clean();
}

/// Writes a record as a forger with access to the run directory would.
fn forge(n: &Node, cid: &str, ifname: &str, netns: &Path, host_iface: &str, index: u32) {
    write_record(n, cid, cid, ifname, netns, host_iface, index)
}

/// A forged record for attachment `cid` claiming to be pod `default/pod`.
fn forge_as(n: &Node, cid: &str, pod: &str, netns: &Path, host_iface: &str, index: u32) {
    write_record(n, cid, pod, "eth0", netns, host_iface, index)
}

fn write_record(
    n: &Node,
    cid: &str,
    pod: &str,
    ifname: &str,
    netns: &Path,
    host_iface: &str,
    index: u32,
) {
    // Raw JSON: a forged record may name what `HostIface` cannot hold.
    let store = EndpointStore::new(&n.run_dir());
    std::fs::create_dir_all(store.dir()).unwrap();
    let rec = json!({
        "network": NET,
        "containerId": cid,
        "ifname": ifname,
        "podNamespace": "default",
        "podName": pod,
        "netns": netns.display().to_string(),
        "hostIface": host_iface,
        "hostIfindex": index,
        "mac": "",
        "ips": [],
    });
    std::fs::write(
        store.path_of(cid, ifname),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();
}

#[test]
fn gc_never_deletes_the_nodes_interfaces_or_another_pods_for_a_forged_record() {
    let n = Node::new("gcf");
    let (victim, vres) = n.add_pod("v1");
    let victim_host = vres["interfaces"][0]["name"].as_str().unwrap().to_string();
    let victim_index = link_index(&n.node, &victim_host);
    let uplink_index = link_index(&n.node, "up0");

    // The node's uplink, through its own namespace and as a host end.
    forge(&n, "f1", "up0", &n.node.path(), "up0", uplink_index);
    forge(&n, "f2", "eth0", &n.ext.path(), "up0", uplink_index);
    // The victim pod's interfaces, under another attachment's identity,
    // then under the victim pod's own name.
    forge(&n, "f3", "eth0", &victim.path(), &victim_host, victim_index);
    forge_as(&n, "f4", "v1", &victim.path(), &victim_host, victim_index);

    let mut conf = n.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "v1", "ifname": "eth0"}]);
    n.cni("GC", "gc", None, &conf).expect_ok();

    assert!(has_link(&n.node, "up0"), "GC deleted the node's uplink");
    assert!(
        has_link(&n.node, &victim_host),
        "GC deleted the victim's host end"
    );
    assert!(
        victim.ok("ip -o link").contains("eth0"),
        "GC deleted the victim's pod end"
    );
    assert_ping(&n.node, &ipv4_of(&vres));
    assert_ping(&n.node, EXT_V4);
    // The forged records naming a workload interface are gone: they were
    // not valid. Those naming the uplink never parse as records at all.
    for cid in ["f3", "f4"] {
        assert!(
            EndpointStore::new(&n.run_dir())
                .read(cid, "eth0")
                .unwrap()
                .is_none(),
            "{cid}"
        );
    }
    for (cid, ifname) in [("f1", "up0"), ("f2", "eth0")] {
        assert!(
            EndpointStore::new(&n.run_dir()).read(cid, ifname).is_err(),
            "{cid}"
        );
        // GC leaves files it cannot read as records alone.
        std::fs::remove_file(EndpointStore::new(&n.run_dir()).path_of(cid, ifname)).unwrap();
    }
    n.del_pod("v1", &victim);
    n.assert_clean();
}

#[test]
fn del_with_a_forged_record_deletes_only_its_own_attachment() {
    let n = Node::new("delf");
    let (victim, vres) = n.add_pod("w1");
    let victim_host = vres["interfaces"][0]["name"].as_str().unwrap().to_string();
    let victim_index = link_index(&n.node, &victim_host);
    // A record for an attachment that never existed, naming the victim's
    // host end; DEL of it with a namespace that is already gone.
    let gone = n.dir.path().join("gone");
    forge(&n, "w2", "eth0", &gone, &victim_host, victim_index);
    n.cni("DEL", "w2", Some(&gone), &n.conf("1.1.0"))
        .expect_ok();
    // The same under the victim pod's own name.
    forge_as(&n, "w3", "w1", &gone, &victim_host, victim_index);
    n.cni("DEL", "w3", Some(&gone), &n.conf("1.1.0"))
        .expect_ok();
    assert!(
        has_link(&n.node, &victim_host),
        "DEL deleted another pod's host end"
    );
    assert_ping(&n.node, &ipv4_of(&vres));
    n.del_pod("w1", &victim);
    n.assert_clean();
}
