//! The store against real files: locking between threads and between
//! processes, `kill -9` at arbitrary instants, reboot discard, corruption,
//! the journal (replay, torn and damaged lines) and compaction with its
//! crash windows.
//!
//! Cross-process tests re-run this test binary with `TABBY_IPAM_CHILD` set,
//! which makes [`child_process_entry`] act as a CNI invocation would.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

use super::*;
use crate::ipam::state::{AttachmentKey, IpFamily, OwnerMeta};

const NETWORK: &str = "k8s-pod-network";
const BOOT: &str = "boot-a";
const CHILD_ENV: &str = "TABBY_IPAM_CHILD";

fn blocks() -> Vec<IpNet> {
    vec![
        "10.9.0.0/26".parse().unwrap(),
        "fd00:9::/122".parse().unwrap(),
    ]
}

fn key(id: &str) -> AttachmentKey {
    AttachmentKey::new(id, "eth0")
}

fn open(dir: &Path, boot: &str) -> IpamStore {
    open_timeout(dir, boot, DEFAULT_LOCK_TIMEOUT)
}

fn open_timeout(dir: &Path, boot: &str, lock_timeout: Duration) -> IpamStore {
    let options = StoreOptions {
        lock_timeout,
        boot_id: Some(boot.to_owned()),
    };
    IpamStore::open_with(dir, NETWORK, options).unwrap()
}

/// A store that compacts after `records` journal lines.
fn open_compacting_after(dir: &Path, records: usize) -> IpamStore {
    let mut store = open(dir, BOOT);
    store.max_journal_records = records;
    store
}

/// The snapshot's `journalGen`.
fn generation(store: &IpamStore) -> u64 {
    let doc: serde_json::Value =
        serde_json::from_slice(&fs::read(store.state_path()).unwrap()).unwrap();
    doc["journalGen"].as_u64().unwrap()
}

/// The live journal's bytes; empty when it does not exist.
fn journal_bytes(store: &IpamStore) -> Vec<u8> {
    fs::read(store.journal_path(generation(store))).unwrap_or_default()
}

fn append_raw(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// A journal line as the store writes it, around any JSON.
fn line(json: &str) -> Vec<u8> {
    format!("{:08x} {json}\n", journal::crc32c(json.as_bytes())).into_bytes()
}

/// No address is held twice (the load would refuse it, but say so).
fn assert_no_duplicate(state: &IpamState) {
    let mut seen = HashSet::new();
    for (addr, key) in state.allocations() {
        assert!(seen.insert(addr), "{addr} held twice, again by {key}");
    }
}

fn allocate(store: &IpamStore, id: &str) -> StoreOutcome<Vec<IpNet>> {
    store
        .transact(|s| s.allocate(&key(id), &blocks(), OwnerMeta::default()))
        .unwrap()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Each attachment holds at most one address per family.
fn assert_consistent(state: &IpamState) {
    let mut seen = HashSet::new();
    for (addr, key) in state.allocations() {
        assert!(
            seen.insert((key.clone(), IpFamily::of_addr(&addr))),
            "{key} holds two addresses"
        );
    }
}

/// Runs this test binary's [`child_process_entry`] with `spec` as its task.
fn child(spec: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "ipam::store::tests::child_process_entry",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, spec)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

/// Inert in a normal test run. As a child: `alloc <dir> <id>` allocates once
/// and prints `ADDR <addr>...`; `loop <dir> <id> [<records>]` allocates and
/// releases forever (compacting after `<records>` journal lines), printing
/// `tick` after each transaction, until killed.
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let (mode, dir, id) = (parts[0], Path::new(parts[1]), parts[2]);
    let mut store = open(dir, BOOT);
    if let Some(records) = parts.get(3) {
        store.max_journal_records = records.parse().unwrap();
    }
    let mut out = std::io::stdout().lock();
    // libtest has printed "test <name> ... " without a newline.
    writeln!(out).unwrap();
    match mode {
        "alloc" => {
            let addrs = allocate(&store, id).value;
            let addrs: Vec<String> = addrs.iter().map(|a| a.addr().to_string()).collect();
            writeln!(out, "ADDR {}", addrs.join(" ")).unwrap();
        }
        "loop" => {
            for n in 0u64.. {
                allocate(&store, &format!("{id}-{n}"));
                writeln!(out, "tick").unwrap();
                out.flush().unwrap();
                store
                    .transact(|s| Ok(s.release(&key(&format!("{id}-{}", n / 2)))))
                    .unwrap();
                writeln!(out, "tick").unwrap();
                out.flush().unwrap();
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[test]
fn network_names_follow_the_cni_rule() {
    let dir = tempfile::tempdir().unwrap();
    for good in ["k8s-pod-network", "net_1.v2", "A", "0"] {
        assert!(
            IpamStore::open_with(dir.path(), good, StoreOptions::default()).is_ok(),
            "{good}"
        );
    }
    for bad in [
        "", ".", "..", "../x", "a/b", "-a", "_a", ".hidden", "a b", "né",
    ] {
        let err = IpamStore::open_with(dir.path(), bad, StoreOptions::default()).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidNetwork { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn kernel_boot_id_is_read_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let store = IpamStore::open(dir.path(), NETWORK).unwrap();
    assert_eq!(store.boot_id().len(), 36, "{}", store.boot_id());
}

#[test]
fn files_are_private_and_where_documented() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("data"), BOOT);
    allocate(&store, "a");
    allocate(&store, "b");
    let ipam = dir.path().join("data/ipam");
    assert_eq!(store.state_path(), ipam.join("k8s-pod-network.json"));
    assert_eq!(store.lock_path(), ipam.join("k8s-pod-network.lock"));
    assert_eq!(store.marker_path(), ipam.join("k8s-pod-network.boot"));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ipam), 0o700);
    assert_eq!(mode(store.state_path()), 0o600);
    assert_eq!(mode(store.marker_path()), 0o600);
    assert_eq!(mode(&ipam.join("k8s-pod-network.journal.1")), 0o600);
    assert_eq!(fs::read_to_string(store.marker_path()).unwrap(), "boot-a\n");
    // The first save compacted (there was no snapshot); the second appended.
    assert_eq!(generation(&store), 1);
    assert_eq!(
        file_names(&ipam),
        [
            "k8s-pod-network.boot",
            "k8s-pod-network.journal.1",
            "k8s-pod-network.json",
            "k8s-pod-network.lock"
        ]
    );
}

#[test]
fn retried_allocation_is_idempotent_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    allocate(&store, "z");
    let first = allocate(&store, "a");
    assert_eq!(first.discarded, None);
    let inode = fs::metadata(store.state_path()).unwrap().ino();
    let journal = journal_bytes(&store);
    assert_eq!(allocate(&store, "a").value, first.value);
    // Unchanged state, no rewrite: the file is still the same inode.
    assert_eq!(fs::metadata(store.state_path()).unwrap().ino(), inode);
    assert_eq!(journal_bytes(&store), journal);
    assert_eq!(store.read().unwrap().lookup(&key("a")).len(), 2);
}

#[test]
fn transaction_that_changes_nothing_creates_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    let released = store.transact(|s| Ok(s.release(&key("ghost")))).unwrap();
    assert!(released.value.is_empty());
    assert!(!store.state_path().exists());
    assert!(store.read().unwrap().is_empty());
}

#[test]
fn failed_transaction_leaves_the_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    let tiny: Vec<IpNet> = vec!["10.0.0.0/32".parse().unwrap()];
    store
        .transact(|s| s.allocate(&key("a"), &tiny, OwnerMeta::default()))
        .unwrap();
    allocate(&store, "c");
    let before = fs::read(store.state_path()).unwrap();
    let journal = journal_bytes(&store);
    assert!(!journal.is_empty());
    let err = store
        .transact(|s| {
            s.release(&key("a"));
            s.allocate(&key("b"), &[], OwnerMeta::default())
        })
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Ipam(IpamError::NoBlocks)),
        "{err}"
    );
    assert_eq!(fs::read(store.state_path()).unwrap(), before);
    assert_eq!(journal_bytes(&store), journal);
}

#[test]
fn release_and_gc_persist() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    for id in ["a", "b", "c"] {
        allocate(&store, id);
    }
    let released = store.transact(|s| Ok(s.release(&key("a")))).unwrap().value;
    assert_eq!(released.len(), 2);
    let valid = HashSet::from([key("b")]);
    let gc = store.transact(|s| Ok(s.retain(&valid))).unwrap().value;
    assert_eq!(gc.len(), 2);
    let state = open(dir.path(), BOOT).read().unwrap();
    assert_eq!(state.len(), 2);
    assert_eq!(state.lookup(&key("b")).len(), 2);
}

#[test]
fn allocations_of_an_earlier_boot_are_discarded_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let old = open(dir.path(), "boot-old");
    allocate(&old, "a");
    allocate(&old, "b");

    let new = open(dir.path(), "boot-new");
    // Reading reports the fresh view but leaves the file alone.
    assert!(new.read().unwrap().is_empty());
    assert_eq!(old.read().unwrap().len(), 4);

    let outcome = allocate(&new, "c");
    assert_eq!(
        outcome.discarded,
        Some(Discarded::StaleBoot {
            previous_boot_id: "boot-old".into(),
            allocations: 4
        })
    );
    // Cursors went too: the new boot starts at the bottom of the block.
    assert_eq!(outcome.value[0].to_string(), "10.9.0.1/32");
    assert_eq!(allocate(&new, "d").discarded, None);
    let state = new.read().unwrap();
    assert_eq!(state.boot_id(), "boot-new");
    assert_eq!(state.len(), 4);
    assert_eq!(fs::read_to_string(new.marker_path()).unwrap(), "boot-new\n");
}

#[test]
fn corrupt_state_of_this_boot_is_an_error_never_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    allocate(&store, "a");
    fs::write(store.state_path(), b"{\"bootId\":\"boot-a\",\"alloc").unwrap();
    let err = store.transact(|s| Ok(s.len())).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("k8s-pod-network.json"), "{err}");
    assert!(matches!(store.read(), Err(StoreError::Corrupt { .. })));
    // Still there for an operator to look at.
    assert_eq!(
        fs::read(store.state_path()).unwrap(),
        b"{\"bootId\":\"boot-a\",\"alloc"
    );
}

#[test]
fn corrupt_state_without_marker_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    fs::create_dir(dir.path().join("ipam")).unwrap();
    fs::write(store.state_path(), b"").unwrap();
    assert!(matches!(
        store.transact(|s| Ok(s.len())),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn state_emptied_by_a_power_cut_is_discarded_after_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let before = open(dir.path(), "boot-old");
    allocate(&before, "a");
    // Without fsync, a power cut may leave the renamed file empty.
    fs::write(before.state_path(), b"").unwrap();

    let after = open(dir.path(), "boot-new");
    let outcome = allocate(&after, "b");
    assert_eq!(
        outcome.discarded,
        Some(Discarded::UnreadableFromEarlierBoot {
            previous_boot_id: "boot-old".into()
        })
    );
    assert_eq!(after.read().unwrap().len(), 2);
}

#[test]
fn temp_files_of_killed_writers_are_ignored_then_removed_by_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_compacting_after(dir.path(), 1);
    allocate(&store, "a");
    let ipam = dir.path().join("ipam");
    for name in [
        "k8s-pod-network.json.tmp.4242.0",
        "k8s-pod-network.boot.tmp.1.7",
        "other.json.tmp.4242.0",
        "other.journal.3",
    ] {
        fs::write(ipam.join(name), b"{\"half").unwrap();
    }
    assert_eq!(store.read().unwrap().len(), 2);
    // An append does not list the directory.
    allocate(&store, "b");
    assert!(ipam.join("k8s-pod-network.json.tmp.4242.0").exists());
    assert_eq!(store.read().unwrap().len(), 4);
    // A compaction does, and leaves other networks' files alone.
    allocate(&store, "c");
    assert_eq!(generation(&store), 2);
    assert_eq!(
        file_names(&ipam),
        [
            "k8s-pod-network.boot",
            "k8s-pod-network.json",
            "k8s-pod-network.lock",
            "other.journal.3",
            "other.json.tmp.4242.0"
        ]
    );
    assert_eq!(store.read().unwrap().len(), 6);
}

#[test]
fn lock_held_elsewhere_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_timeout(dir.path(), BOOT, Duration::from_millis(30));
    fs::create_dir(dir.path().join("ipam")).unwrap();
    let lock_file = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(store.lock_path())
            .unwrap()
    };

    let exclusive = Flock::lock(lock_file(), FlockArg::LockExclusive).unwrap();
    let err = store.transact(|s| Ok(s.len())).unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    assert!(matches!(store.read(), Err(StoreError::LockTimeout { .. })));
    drop(exclusive);

    let shared = Flock::lock(lock_file(), FlockArg::LockShared).unwrap();
    assert!(store.read().is_ok(), "readers share");
    assert!(matches!(
        store.transact(|s| Ok(s.len())),
        Err(StoreError::LockTimeout { .. })
    ));
    drop(shared);
    assert!(store.transact(|s| Ok(s.len())).is_ok());
}

#[test]
fn fifty_threads_get_fifty_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    let results: Vec<Vec<IpNet>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let store = &store;
                scope.spawn(move || allocate(store, &format!("t{i}")).value)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<IpNet> = results.iter().flatten().copied().collect();
    assert_eq!(distinct.len(), 100);
    let state = store.read().unwrap();
    assert_eq!(state.len(), 100);
    assert_consistent(&state);
}

#[test]
fn fifty_processes_get_fifty_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..50)
        .map(|i| {
            child(&format!("alloc {} p{i}", dir.path().display()))
                .spawn()
                .unwrap()
        })
        .collect();
    let mut addrs = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{:?}", out.status);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ADDR "))
            .unwrap();
        addrs.extend(line.split(' ').map(|a| a.parse::<IpAddr>().unwrap()));
    }
    assert_eq!(addrs.len(), 100);
    assert_eq!(addrs.iter().collect::<HashSet<_>>().len(), 100);
    let state = open(dir.path(), BOOT).read().unwrap();
    assert_eq!(state.len(), 100);
    assert_consistent(&state);
    for i in 0..50 {
        assert_eq!(state.lookup(&key(&format!("p{i}"))).len(), 2);
    }
}

#[test]
fn kill_at_any_instant_leaves_a_valid_state() {
    let dir = tempfile::tempdir().unwrap();
    // Compacting every few lines, so that kills land in compactions too.
    let store = open_compacting_after(dir.path(), 3);
    // A small LCG: different instants every run, reproducible from the seed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    println!("seed {seed}");
    let mut rng = u64::from(seed);
    let mut next = move |bound: u64| {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) % bound
    };
    for round in 0..24u32 {
        let mut c = child(&format!("loop {} r{round} 3", dir.path().display()))
            .spawn()
            .unwrap();
        // Kept open until the kill, so that the child's next `tick` cannot
        // fail and end it at a transaction boundary instead.
        let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
        // Kill after a varying number of transactions and a random delay,
        // i.e. somewhere in the middle of the next ones (or between two).
        let ticks = 1 + next(23) as usize;
        let seen = lines
            .by_ref()
            .map(|l| l.unwrap())
            .filter(|l| l == "tick")
            .take(ticks)
            .count();
        assert_eq!(seen, ticks);
        std::thread::sleep(Duration::from_micros(next(400)));
        c.kill().unwrap();
        c.wait().unwrap();
        drop(lines);
        let state = store.read().unwrap();
        assert_consistent(&state);
        assert_no_duplicate(&state);
        // The writer that follows a kill copes with what it left.
        let n = state.len();
        allocate(&store, &format!("between-{round}"));
        assert_eq!(store.read().unwrap().len(), n + 2);
        // Room for the next round in the small test blocks.
        store.transact(|s| Ok(s.retain(&HashSet::new()))).unwrap();
    }
    // Compacts, and so removes any temp file a kill left.
    for i in 0..3 {
        allocate(&store, &format!("after-{i}"));
    }
    let temps: Vec<String> = file_names(&dir.path().join("ipam"))
        .into_iter()
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}

#[test]
fn journal_replay_equals_the_closures_result() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    // The same transactions, on the store and on a state in memory.
    let mut model = IpamState::new(BOOT);
    let mut run = |f: &dyn Fn(&mut IpamState) -> Result<(), IpamError>| {
        store.transact(|s| f(s)).unwrap();
        f(&mut model).unwrap();
    };
    let meta = |i: usize| OwnerMeta {
        host_iface: Some(format!("tab{i:012x}")),
        namespace: i.is_multiple_of(2).then(|| "default".to_owned()),
        name: Some(format!("web-{i} \"quoted\"\n")),
    };
    for i in 0..10 {
        run(&|s| {
            s.allocate(&key(&format!("p{i}")), &blocks(), meta(i))
                .map(drop)
        });
    }
    run(&|s| {
        s.release(&key("p3"));
        Ok(())
    });
    // Several changes in one transaction, an address moving between
    // attachments, and a v4-only block list that drops the v6 cursor.
    run(&|s| {
        let held = s.release(&key("p5"));
        s.release(&key("p6"));
        let v4: Vec<IpNet> = vec![IpNet::from(held[0]).trunc()];
        s.allocate(&key("moved"), &v4, OwnerMeta::default())?;
        s.allocate(&key("p3"), &blocks()[..1], meta(3)).map(drop)
    });
    run(&|s| {
        s.retain(&HashSet::from([
            key("p0"),
            key("p1"),
            key("moved"),
            key("p3"),
        ]));
        Ok(())
    });
    // Touched, then restored: recorded, harmless.
    run(&|s| {
        let before = s.clone();
        s.allocate(&key("gone"), &blocks(), OwnerMeta::default())?;
        *s = before;
        Ok(())
    });
    assert_eq!(model.lookup(&key("moved")).len(), 1);

    let snapshot = fs::read(store.state_path()).unwrap();
    let lines = journal_bytes(&store);
    assert_eq!(generation(&store), 1);
    assert_eq!(lines.iter().filter(|&&b| b == b'\n').count(), 12);
    let state = open(dir.path(), BOOT).read().unwrap();
    assert_eq!(state, model);
    for (k, a) in model.attachments() {
        assert_eq!(state.attachment(k).unwrap().meta, a.meta, "{k}");
    }
    for block in blocks() {
        assert_eq!(state.cursor(block), model.cursor(block), "{block}");
    }
    // Appends only: the snapshot was written once.
    assert_eq!(fs::read(store.state_path()).unwrap(), snapshot);
}

#[test]
fn torn_last_line_is_ignored_then_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    allocate(&store, "a");
    allocate(&store, "b");
    let good = journal_bytes(&store);
    let path = store.journal_path(generation(&store));
    // A writer killed in its `write`: a prefix of a line that would have
    // given "c" the next addresses.
    let whole = line(r#"{"put":[{"containerId":"c","ifname":"eth0","ips":["10.9.0.3"]}]}"#);
    append_raw(&path, &whole[..40]);
    let state = store.read().unwrap();
    assert_eq!(state.len(), 4);
    assert!(state.lookup(&key("c")).is_empty());
    // Still there after a read, and after a transaction that writes nothing.
    store.transact(|s| Ok(s.len())).unwrap();
    assert_eq!(fs::read(&path).unwrap().len(), good.len() + 40);

    let c = allocate(&store, "c").value;
    let bytes = fs::read(&path).unwrap();
    assert!(bytes.starts_with(&good));
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 2);
    assert!(bytes.ends_with(b"\n"));
    assert_eq!(store.read().unwrap().lookup(&key("c")).len(), 2);
    assert_eq!(c[0].to_string(), "10.9.0.3/32");
}

#[test]
fn complete_last_line_failing_its_checksum_is_ignored_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    allocate(&store, "a");
    allocate(&store, "b");
    let path = store.journal_path(generation(&store));
    let mut bad = line(r#"{"remove":[{"containerId":"a","ifname":"eth0"}]}"#);
    bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
    append_raw(&path, &bad);
    assert_eq!(store.read().unwrap().len(), 4);
    allocate(&store, "c");
    assert_eq!(store.read().unwrap().len(), 6);
}

#[test]
fn damaged_line_before_the_last_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    allocate(&store, "a");
    allocate(&store, "b");
    allocate(&store, "c");
    let path = store.journal_path(generation(&store));
    let mut bytes = fs::read(&path).unwrap();
    // Flip one byte of the first line's JSON: its checksum fails, and a
    // good line follows, which a kill cannot produce.
    let pos = bytes.iter().position(|&b| b == b'"').unwrap();
    bytes[pos + 1] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let err = store.transact(|s| Ok(s.len())).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("journal.1"), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("journal line 1"), "{source}");
    assert!(matches!(store.read(), Err(StoreError::Corrupt { .. })));
    // Nothing was cut off or appended.
    assert_eq!(fs::read(&path).unwrap(), bytes);

    // A torn line followed by a good one is no kill either.
    fs::write(&path, b"0badc0de {\"pu").unwrap();
    append_raw(&path, b"\n");
    append_raw(&path, &line(r#"{"remove":[]}"#));
    assert!(matches!(store.read(), Err(StoreError::Corrupt { .. })));
}

#[test]
fn checksummed_line_that_does_not_apply_is_corrupt_even_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    let a = allocate(&store, "a").value;
    allocate(&store, "b");
    let path = store.journal_path(generation(&store));
    // Written with a valid checksum, so not torn: another owner for a's address.
    let json = format!(
        r#"{{"put":[{{"containerId":"x","ifname":"eth0","ips":["{}"]}}]}}"#,
        a[0].addr()
    );
    append_raw(&path, &line(&json));
    let err = store.read().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    fs::write(&path, line("[1,2]")).unwrap();
    assert!(matches!(store.read(), Err(StoreError::Corrupt { .. })));
}

#[test]
fn compaction_at_the_threshold_keeps_the_state_and_advances_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_compacting_after(dir.path(), 4);
    let ipam = dir.path().join("ipam");
    allocate(&store, "p0");
    assert_eq!(generation(&store), 1);
    for i in 1..=4 {
        allocate(&store, &format!("p{i}"));
    }
    // Four lines: full.
    assert_eq!(generation(&store), 1);
    assert_eq!(journal_bytes(&store).split(|&b| b == b'\n').count() - 1, 4);
    let before = store.read().unwrap();

    // The fifth change compacts instead of appending.
    store.transact(|s| Ok(s.release(&key("p2")))).unwrap();
    assert_eq!(generation(&store), 2);
    assert!(!ipam.join("k8s-pod-network.journal.1").exists());
    assert!(!ipam.join("k8s-pod-network.journal.2").exists());
    let mut expected = before.clone();
    expected.release(&key("p2"));
    let after = store.read().unwrap();
    assert_eq!(after, expected);
    // The snapshot alone holds it all, cursors included.
    let snapshot: Snapshot =
        serde_json::from_slice(&fs::read(store.state_path()).unwrap()).unwrap();
    assert_eq!(snapshot.state, expected);
    assert_eq!(snapshot.state.cursor_map(), before.cursor_map());

    // And appending resumes on the new generation.
    allocate(&store, "p5");
    assert_eq!(generation(&store), 2);
    assert!(ipam.join("k8s-pod-network.journal.2").exists());
    assert_eq!(store.read().unwrap().len(), 10);
}

#[test]
fn compaction_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), BOOT);
    store.max_journal_bytes = 1024;
    allocate(&store, "p0");
    for i in 1..20 {
        allocate(&store, &format!("p{i}"));
        assert!(journal_bytes(&store).len() <= 1024);
    }
    assert!(generation(&store) > 1);
    assert_eq!(store.read().unwrap().len(), 40);
}

#[test]
fn crash_after_the_rename_leaves_an_old_journal_that_is_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_compacting_after(dir.path(), 2);
    allocate(&store, "a");
    allocate(&store, "b");
    allocate(&store, "c");
    let old = store.journal_path(1);
    let old_bytes = fs::read(&old).unwrap();
    // Compacts into generation 2 and deletes journal 1 ...
    store.transact(|s| Ok(s.release(&key("a")))).unwrap();
    assert_eq!(generation(&store), 2);
    // ... which a kill between the rename and the unlink would have left.
    fs::write(&old, &old_bytes).unwrap();
    let state = store.read().unwrap();
    assert_eq!(state.len(), 4);
    assert!(state.lookup(&key("a")).is_empty());
    allocate(&store, "d");
    allocate(&store, "e");
    assert!(old.exists(), "only a compaction lists the directory");
    allocate(&store, "f");
    assert_eq!(generation(&store), 3);
    assert!(!old.exists());
    assert_eq!(store.read().unwrap().len(), 10);
}

#[test]
fn crash_before_the_rename_leaves_a_temp_snapshot_that_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_compacting_after(dir.path(), 2);
    allocate(&store, "a");
    allocate(&store, "b");
    // A compaction killed before its rename: the new snapshot, complete or not.
    let mut next = store.read().unwrap();
    next.release(&key("a"));
    let full = serde_json::to_vec(&SnapshotRef {
        state: &next,
        journal_gen: 2,
    })
    .unwrap();
    let ipam = dir.path().join("ipam");
    fs::write(ipam.join("k8s-pod-network.json.tmp.77.0"), &full).unwrap();
    fs::write(ipam.join("k8s-pod-network.json.tmp.77.1"), &full[..10]).unwrap();
    assert_eq!(store.read().unwrap().len(), 4);
    allocate(&store, "c");
    allocate(&store, "d");
    assert_eq!(generation(&store), 2);
    assert!(file_names(&ipam).iter().all(|n| !n.contains(".tmp.")));
    assert_eq!(store.read().unwrap().len(), 8);
}

#[test]
fn journals_left_without_their_snapshot_are_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    allocate(&store, "a");
    allocate(&store, "b");
    // The snapshot was removed (say, by an operator); journal 1 stays, and
    // a stray journal 2 too.
    fs::remove_file(store.state_path()).unwrap();
    fs::copy(store.journal_path(1), store.journal_path(2)).unwrap();
    assert!(store.read().unwrap().is_empty());
    allocate(&store, "c");
    // Generations restart above every journal seen, which are removed.
    assert_eq!(generation(&store), 3);
    assert!(!store.journal_path(1).exists());
    assert!(!store.journal_path(2).exists());
    allocate(&store, "d");
    let state = store.read().unwrap();
    assert_eq!(state.len(), 4);
    assert!(state.lookup(&key("a")).is_empty());
}

#[test]
fn snapshot_without_a_generation_loads_and_is_compacted_by_the_first_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), BOOT);
    let mut legacy = IpamState::new(BOOT);
    legacy
        .allocate(&key("old"), &blocks(), OwnerMeta::default())
        .unwrap();
    fs::create_dir_all(dir.path().join("ipam")).unwrap();
    fs::write(store.state_path(), serde_json::to_vec(&legacy).unwrap()).unwrap();
    // A journal 0 is never read: no version wrote one.
    append_raw(
        &store.journal_path(0),
        &line(r#"{"remove":[{"containerId":"old","ifname":"eth0"}]}"#),
    );
    assert_eq!(store.read().unwrap(), legacy);
    store.transact(|s| Ok(s.len())).unwrap();
    assert!(
        fs::read_to_string(store.state_path())
            .unwrap()
            .find("journalGen")
            .is_none()
    );
    allocate(&store, "new");
    assert_eq!(generation(&store), 1);
    assert!(!store.journal_path(0).exists());
    assert_eq!(store.read().unwrap().len(), 4);
    // Not the first save of this boot: the marker is not rewritten.
    assert!(!store.marker_path().exists());
}

#[test]
fn boot_change_discards_the_journal_too_and_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let old = open(dir.path(), "boot-old");
    for id in ["a", "b", "c"] {
        allocate(&old, id);
    }
    old.transact(|s| Ok(s.release(&key("a")))).unwrap();
    assert_eq!(generation(&old), 1);
    assert!(old.journal_path(1).exists());

    let new = open(dir.path(), "boot-new");
    assert!(new.read().unwrap().is_empty());
    // Even a transaction that changes nothing saves the discard.
    let outcome = new.transact(|s| Ok(s.len())).unwrap();
    assert_eq!(outcome.value, 0);
    assert_eq!(
        outcome.discarded,
        Some(Discarded::StaleBoot {
            previous_boot_id: "boot-old".into(),
            allocations: 4
        })
    );
    assert_eq!(generation(&new), 2);
    assert!(!new.journal_path(1).exists());
    assert_eq!(fs::read_to_string(new.marker_path()).unwrap(), "boot-new\n");
    assert_eq!(new.transact(|s| Ok(s.len())).unwrap().discarded, None);
    assert_eq!(allocate(&new, "d").value[0].to_string(), "10.9.0.1/32");
    assert_eq!(new.read().unwrap().len(), 2);
}

#[test]
fn garbage_journal_of_an_earlier_boot_does_not_matter() {
    let dir = tempfile::tempdir().unwrap();
    let old = open(dir.path(), "boot-old");
    allocate(&old, "a");
    allocate(&old, "b");
    // A power cut may leave anything in an unsynced journal.
    let path = old.journal_path(1);
    fs::write(&path, b"\0\0\0\0\0\0\0\0\0\0\0\0\n\0\0\0\n").unwrap();
    let new = open(dir.path(), "boot-new");
    let outcome = allocate(&new, "c");
    assert_eq!(
        outcome.discarded,
        Some(Discarded::StaleBoot {
            previous_boot_id: "boot-old".into(),
            allocations: 2
        })
    );
    assert!(!path.exists());
    assert_eq!(new.read().unwrap().len(), 2);
}

#[test]
fn missing_directory_is_created_by_the_first_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a/b");
    let store = open(&data, BOOT);
    assert!(!data.exists(), "open touches nothing");
    allocate(&store, "a");
    assert!(data.join("ipam").is_dir());
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = open(&file, BOOT).read().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OpenLock { .. } | StoreError::CreateDir { .. }
        ),
        "{err}"
    );
}

/// The store as it was before the journal, for the benchmark: every
/// transaction lists the directory for temp files, parses the whole file
/// and rewrites it by temp file and rename.
fn legacy_transact<T>(store: &IpamStore, f: impl FnOnce(&mut IpamState) -> T) -> T {
    let _lock = store.lock(FlockArg::LockExclusiveNonblock).unwrap();
    for entry in fs::read_dir(&store.dir).unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_str().unwrap();
        if crate::atomic::is_temp_of(name, "k8s-pod-network.json")
            || crate::atomic::is_temp_of(name, "k8s-pod-network.boot")
        {
            fs::remove_file(entry.path()).unwrap();
        }
    }
    let mut state: IpamState =
        serde_json::from_slice(&fs::read(store.state_path()).unwrap()).unwrap();
    let revision = state.revision();
    let value = f(&mut state);
    if state.revision() != revision {
        let mut bytes = serde_json::to_vec(&state).unwrap();
        bytes.push(b'\n');
        crate::atomic::write_atomic(store.state_path(), &bytes, 0o600).unwrap();
    }
    value
}

/// Median and mean, in microseconds: the median shows the usual path, the
/// mean includes the compactions (and any noise of a shared machine).
fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap();
    let median = times[times.len() / 2];
    format!(
        "{:>4.0} µs (mean {:>4.0})",
        median.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    )
}

/// Run with `cargo test --release -p tabby-common --lib -- --ignored
/// --nocapture transact_micro_benchmark`. For 1, 20, 110 (kubelet's default
/// maxPods) and 250 dual-stack attachments with realistic IDs and details,
/// prints the time of an allocating transaction, of one that changes
/// nothing, and of a releasing one, with the journal (compactions included,
/// amortized) and with the whole-file rewrite the store did before it.
/// `TABBY_BENCH_RECORDS=16,32,64` compares compaction thresholds.
#[test]
#[ignore = "micro-benchmark; prints figures, asserts nothing"]
fn transact_micro_benchmark() {
    let blocks: Vec<IpNet> = vec![
        "10.9.0.0/22".parse().unwrap(),
        "fd00:9::/64".parse().unwrap(),
    ];
    let meta = |i: u128| OwnerMeta {
        host_iface: Some(format!("tab{i:012x}")),
        namespace: Some("default".into()),
        name: Some(format!("web-{i}-7d9f8c6b5-x2k4q")),
    };
    let rounds = 1000u32;
    let records: Vec<usize> = std::env::var("TABBY_BENCH_RECORDS").map_or_else(
        |_| vec![MAX_JOURNAL_RECORDS],
        |v| v.split(',').map(|r| r.parse().unwrap()).collect(),
    );
    for pods in [1u128, 20, 110, 250] {
        let mut variants: Vec<(String, Option<usize>)> = vec![("before (rewrite)".into(), None)];
        variants.extend(
            records
                .iter()
                .map(|r| (format!("journal, {r} lines"), Some(*r))),
        );
        for (label, records) in variants {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path(), BOOT);
            if let Some(records) = records {
                store.max_journal_records = records;
            }
            store
                .transact(|s| {
                    for i in 0..pods {
                        let id = format!("{:064x}", 0x9e37_79b9_7f4a_7c15_u128.wrapping_mul(i + 1));
                        s.allocate(&AttachmentKey::new(id, "eth0"), &blocks, meta(i))?;
                    }
                    Ok(())
                })
                .unwrap();
            let size = fs::metadata(store.state_path()).unwrap().len();
            let (mut alloc, mut noop, mut release) = (Vec::new(), Vec::new(), Vec::new());
            for n in 0..rounds {
                let k = AttachmentKey::new(format!("{n:064x}"), "eth0");
                let m = meta(u128::from(n) + 1000);
                let t = Instant::now();
                match records {
                    Some(_) => drop(store.transact(|s| s.allocate(&k, &blocks, m)).unwrap()),
                    None => drop(legacy_transact(&store, |s| s.allocate(&k, &blocks, m))),
                }
                alloc.push(t.elapsed());
                let t = Instant::now();
                match records {
                    Some(_) => drop(store.transact(|s| Ok(s.lookup(&k))).unwrap()),
                    None => drop(legacy_transact(&store, |s| s.lookup(&k))),
                }
                noop.push(t.elapsed());
                let t = Instant::now();
                match records {
                    Some(_) => drop(store.transact(|s| Ok(s.release(&k))).unwrap()),
                    None => drop(legacy_transact(&store, |s| s.release(&k))),
                }
                release.push(t.elapsed());
            }
            println!(
                "{pods:>3} pods ({size:>5} B), {label:<18}: allocate {}, no-op {}, release {}",
                summary(&mut alloc),
                summary(&mut noop),
                summary(&mut release),
            );
        }
    }
}
