#!/usr/bin/env bash
# A one-node tabby demo in network namespaces: builds the plugin, wires two
# pods into a "node" namespace exactly as kubelet would (CNI ADD), shows what
# was made, pings pod to pod and node to pod, then tears everything down
# (CNI DEL). Touches nothing outside its own namespaces. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --release -p tabby-cni
TABBY=$PWD/target/release/tabby

p="tabbydemo$$"
node="$p-node"
work=$(mktemp -d)
cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$p-" || true); do ip netns del "$ns"; done
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$node"
ip -n "$node" link set lo up
ip -n "$node" link add up0 type veth peer name up1
ip -n "$node" addr add 192.168.50.1/24 dev up0
ip -n "$node" link set up0 up
ip -n "$node" link set up1 up

cat > "$work/conf.json" <<JSON
{"cniVersion": "1.1.0", "name": "demo", "type": "tabby",
 "dataDir": "$work/data", "runDir": "$work/run",
 "ipam": {"type": "tabby-ipam", "subnets": ["10.244.1.0/26", "fd00:244:1::/122"]}}
JSON

cni() { # cmd pod
  ip netns exec "$node" env CNI_COMMAND="$1" CNI_CONTAINERID="ctr-$2" CNI_NETNS="/var/run/netns/$p-$2" \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$2" \
    "$TABBY" < "$work/conf.json"
}
addr_of() { ip -n "$p-$1" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1; }

for pod in web db; do
  ip netns add "$p-$pod"
  echo "== CNI ADD $pod"
  cni ADD "$pod" | python3 -m json.tool
done
echo "== routes on the node (tabby's are proto 150)"
ip -n "$node" route show proto 150
ip -n "$node" -6 route show proto 150
echo "== web -> db ($(addr_of db))"
ip netns exec "$p-web" ping -c 3 -i 0.2 "$(addr_of db)"
echo "== node -> web ($(addr_of web))"
ip netns exec "$node" ping -c 3 -i 0.2 "$(addr_of web)"
for pod in web db; do
  echo "== CNI DEL $pod"
  cni DEL "$pod"
done
echo "== left on the node after DEL (expect nothing):"
ip -n "$node" -o link show | grep ': tab' || echo "   no workload interfaces"
