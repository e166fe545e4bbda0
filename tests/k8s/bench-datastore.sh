#!/usr/bin/env bash
# The agent on a real API server vs the `dir:` datastore, in the same run:
# 10,000 Pods (with addresses) and 1,000 NetworkPolicies created through the
# API of a `tabbyctl lab up --kubernetes` lab; then, for each datastore, a
# fresh agent in its own node namespace, timed from start to ready (first
# full sync programmed into nftables) with its peak RSS (VmHWM). The `dir:`
# agent reads the very objects the API server holds (exported with kubectl).
# Needs root, the debug or release binaries and target/k8s/bin.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${TABBY_BIN_DIR:-$root/target/release}"
[ -x "$bin/tabbyctl" ] || bin="$root/target/debug"
ctl="$bin/tabbyctl"
name=dsbench
pods="${PODS:-10000}"
policies="${POLICIES:-1000}"
work="$(mktemp -d)"
cleanup() { "$ctl" lab down --name "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

"$ctl" lab up --kubernetes --name "$name" --nodes 1 --timeout 300
kc() { "$ctl" lab kubectl --name "$name" -- "$@"; }
cp_ns="tl.$name.cp"

# The pods live on a node of their own (no agent, no runtime), so nothing
# wires them; their addresses are patched in as kubelet would.
kc create -f - <<'EOF'
{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "far"},
 "status": {"addresses": [{"type": "InternalIP", "address": "10.99.0.200"}],
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "20000"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Bench"}]}}
EOF
# Keep "far" Ready as its kubelet would (heartbeat and Lease), or the node
# lifecycle controller taints it unreachable and evicts the pods after 300 s.
heartbeat() {
  while true; do
    local now micro
    now=$(date -u +%Y-%m-%dT%H:%M:%SZ); micro=$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)
    kc patch node far --subresource=status --type=strategic -p \
      "{\"status\":{\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"Bench\",\"lastHeartbeatTime\":\"$now\",\"lastTransitionTime\":\"$now\"}]}}" >/dev/null 2>&1 || true
    echo "{\"apiVersion\":\"coordination.k8s.io/v1\",\"kind\":\"Lease\",\"metadata\":{\"name\":\"far\",\"namespace\":\"kube-node-lease\"},\"spec\":{\"holderIdentity\":\"far\",\"leaseDurationSeconds\":40,\"renewTime\":\"$micro\"}}" \
      | kc apply --server-side --force-conflicts -f - >/dev/null 2>&1 || true
    sleep 10
  done
}
heartbeat &
beat=$!
kc proxy --port 8001 >/dev/null 2>&1 &
proxy=$!
trap 'kill $proxy $beat 2>/dev/null; cleanup' EXIT
sleep 1
start=$(date +%s.%N)
ip netns exec "$cp_ns" python3 - "$pods" "$policies" <<'EOF'
import http.client, json, sys
pods, policies = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", 8001)
def req(method, path, body, ctype="application/json"):
    c.request(method, path, json.dumps(body), {"Content-Type": ctype})
    r = c.getresponse(); data = r.read()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {data[:300]}")
for n in range(10):
    req("POST", "/api/v1/namespaces", {"metadata": {"name": f"b{n}", "labels": {"team": f"t{n % 3}"}}})
for i in range(pods):
    ns = f"b{i % 10}"
    name = f"p{i}"
    req("POST", f"/api/v1/namespaces/{ns}/pods", {
        "metadata": {"name": name, "labels": {"app": f"a{i % 100}", "tier": f"t{i % 5}"}},
        "spec": {"nodeName": "far", "containers": [{"name": "c", "image": "i",
                 "ports": [{"containerPort": 8080, "name": "http"}]}]}})
    ip = f"10.{200 + i // 65536}.{(i // 256) % 256}.{i % 256}"
    req("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status",
        {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}},
        "application/merge-patch+json")
for j in range(policies):
    ns = f"b{j % 10}"
    req("POST", f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies", {
        "metadata": {"name": f"np{j}"},
        "spec": {"podSelector": {"matchLabels": {"app": f"a{j % 100}"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{j % 3}"}},
                                        "podSelector": {"matchLabels": {"tier": f"t{j % 5}"}}}],
                              "ports": [{"port": "http"}]}]}})
EOF
echo "== created $pods pods and $policies policies through the API in $(echo "$(date +%s.%N) - $start" | bc) s"

# The same objects for the dir: datastore.
mkdir -p "$work/manifests"
kc get namespaces,nodes,pods,networkpolicies -A -o json > "$work/all.json"
python3 - "$work/all.json" "$work/manifests" <<'EOF'
import json, sys
items = json.load(open(sys.argv[1]))["items"]
for i, o in enumerate(items):
    o["metadata"].pop("managedFields", None)
    o.setdefault("apiVersion", "v1")
    json.dump(o, open(f"{sys.argv[2]}/{o['kind'].lower()}_{o['metadata'].get('namespace','')}_{o['metadata']['name']}.json", "w"))
EOF

# One fresh agent per datastore, each in a namespace of its own acting as
# node-1 (the Node it reads), one after the other, twice (the first round
# warms the API server's watch cache and the page cache).
measure() {
  local label=$1; shift
  local ns="tl.$name.bench-$label" dir="$work/run-$label"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  if [ "$label" = kubernetes ]; then
    # It reaches the API server over the fabric.
    ip -n "tl.$name.fabric" link add bk type veth peer name eth0 netns "$ns"
    ip -n "tl.$name.fabric" link set bk master br0 up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" addr add 10.99.0.199/24 dev eth0
  fi
  rm -rf "$dir"; mkdir -p "$dir/run" "$dir/data"
  local t0; t0=$(date +%s.%N)
  ip netns exec "$ns" "$bin/tabby-agent" "$@" --node-name node-1 \
    --run-dir "$dir/run" --data-dir "$dir/data" --metrics-addr 127.0.0.1:9099 --no-bgp \
    > "$dir/agent.log" 2>&1 &
  local pid=$!
  until python3 -c "import json,sys; sys.exit(0 if json.load(open('$dir/run/status.json'))['ready'] else 1)" 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { tail "$dir/agent.log"; exit 1; }
    sleep 0.1
  done
  local t1; t1=$(date +%s.%N)
  local hwm; hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill $pid; wait $pid 2>/dev/null || true
  ip netns delete "$ns"
  printf '%-11s ready in %6.2f s, peak RSS %6.1f MB\n' "$label" \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$hwm / 1024" | bc -l)"
}
for round in 1 2; do
  echo "== round $round"
  measure kubernetes --datastore kubernetes --kubeconfig "/run/tabby-lab/$name/cp/agent.kubeconfig"
  measure dir --datastore "dir:$work/manifests"
done
