#!/usr/bin/env bash
# The lab benchmark: time of `tabbyctl lab up` (3 nodes) and of applying 100
# pods, then cross-node TCP throughput (iperf3, one stream) pod-to-pod over
# tabby's routed fabric, compared in the same run with node-to-node over the
# same fabric (the ceiling) and with a VXLAN overlay between the same two
# nodes (the encapsulated alternative). Rounds alternate the three paths so
# that machine noise hits them alike; medians and ratios are printed.
# Needs root. Everything happens inside the lab's own namespaces.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/setup.sh >/dev/null
cargo build --release --bins -q
BIN="$PWD/target/release"
LAB=bench
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-4}
ctl() { "$BIN/tabbyctl" lab "$@" --name "$LAB"; }
cleanup() { ctl down >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

now() { date +%s.%N; }
t0=$(now)
ctl up --nodes 3 2>/dev/null
t_up=$(echo "$(now) - $t0" | bc)

yaml=$(mktemp --suffix .yaml)
for i in $(seq 1 100); do
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: p%d, labels: {app: bench}}\nspec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}\n---\n' "$i"
done >"$yaml"
t0=$(now)
ctl apply -f "$yaml" >/dev/null
t_apply=$(echo "$(now) - $t0" | bc)
ctl delete -f "$yaml" >/dev/null
rm -f "$yaml"

cat <<'EOF' | ctl apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server}
spec: {nodeName: node-2, containers: [{name: c, image: i}]}
EOF
status=$(ctl status -o json)
pod_ns() { echo "$status" | python3 -c "import json,sys; print([p['netns'] for p in json.load(sys.stdin)['pods'] if p['name']=='$1'][0])"; }
pod_ip() { echo "$status" | python3 -c "import json,sys; print([p['ips'][0] for p in json.load(sys.stdin)['pods'] if p['name']=='$1'][0])"; }
N1="tl.$LAB.node-1"; N2="tl.$LAB.node-2"
PC=$(pod_ns client); PS=$(pod_ns server); PS_IP=$(pod_ip server)

# The overlay: VXLAN between the same two nodes, default MTU handling.
ip -n "$N1" link add vx0 type vxlan id 42 local 10.99.0.11 remote 10.99.0.12 dstport 4789 dev eth0
ip -n "$N2" link add vx0 type vxlan id 42 local 10.99.0.12 remote 10.99.0.11 dstport 4789 dev eth0
ip -n "$N1" addr add 192.168.77.1/24 dev vx0; ip -n "$N1" link set vx0 up
ip -n "$N2" addr add 192.168.77.2/24 dev vx0; ip -n "$N2" link set vx0 up

run() { # client-netns server-netns server-ip -> Gbit/s
  ip netns exec "$2" iperf3 -s -1 -p 5301 >/dev/null 2>&1 &
  local srv=$!
  for _ in $(seq 50); do ip netns exec "$2" ss -ltn | grep -q ':5301' && break; sleep 0.1; done
  ip netns exec "$1" iperf3 -c "$3" -p 5301 -t "$SECS" -J |
    python3 -c "import json,sys; print(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e9)"
  wait "$srv" 2>/dev/null || true
}
pod=(); node=(); vx=()
for r in $(seq 1 "$ROUNDS"); do
  pod+=("$(run "$PC" "$PS" "$PS_IP")")
  node+=("$(run "$N1" "$N2" 10.99.0.12)")
  vx+=("$(run "$N1" "$N2" 192.168.77.2)")
  echo "round $r: pod-to-pod ${pod[-1]} Gbit/s, node-to-node ${node[-1]}, vxlan ${vx[-1]}" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
mp=$(median "${pod[@]}"); mn=$(median "${node[@]}"); mv=$(median "${vx[@]}")
printf 'lab up (3 nodes, agents ready, BGP mesh up): %.2f s\n' "$t_up"
printf 'apply 100 pods (wired, served, programmed on every node): %.2f s\n' "$t_apply"
printf 'TCP throughput, one stream, median of %d x %ds:\n' "$ROUNDS" "$SECS"
printf '  pod-to-pod across nodes (tabby): %.2f Gbit/s\n' "$mp"
printf '  node-to-node (same fabric):      %.2f Gbit/s\n' "$mn"
printf '  VXLAN overlay (same nodes):      %.2f Gbit/s\n' "$mv"
printf '  tabby / node-to-node = %.3f (target >= 0.95), tabby / VXLAN = %.3f (target > 1)\n' \
  "$(echo "$mp / $mn" | bc -l)" "$(echo "$mp / $mv" | bc -l)"
