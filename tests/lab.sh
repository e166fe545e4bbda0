#!/usr/bin/env bash
# tabby's main command: builds the binaries, starts a 3-node lab (every node
# and pod a network namespace, the real tabby-agent, BGP and CNI plugin in
# it), runs a small multi-tenant workload, shows who can reach whom before
# and after the tenant-isolation NetworkPolicies, and leaves the lab running
# for you to explore. Touches nothing outside the lab's namespaces. Root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --release --bins
T="$PWD/target/release/tabbyctl"

"$T" lab up --nodes 3 -f manifests/crds.yaml -f tests/lab-demo.yaml
echo
"$T" lab status
echo
echo "== who reaches whom on TCP 80, no policy yet"
"$T" lab probe --port 80
echo
echo "== kubectl-style apply of manifests/examples/tenant-isolation.yaml"
"$T" lab apply -f manifests/examples/tenant-isolation.yaml
echo
echo "== TCP 80 again: tenant-a only talks to itself and is reachable from monitoring"
"$T" lab probe --port 80
echo "== DNS (UDP 53): tenant-a may still resolve names"
"$T" lab probe --port 53 --protocol UDP --to kube-system
cat <<MSG

The lab is still running. Try:
  $T lab status
  $T lab probe --port 80 -o json
  $T lab apply -f your-pods-and-policies.yaml
  $T lab down
MSG
