#!/usr/bin/env bash
# Builds the upstream Kubernetes control plane the lab runs (`tabbyctl lab up
# --kubernetes`) from the Go modules pinned in tests/k8s/go.mod into
# target/k8s/bin/. Idempotent: skipped when the binaries were built from the
# same go.mod/go.sum/build.sh; otherwise the Go build cache makes a rebuild
# take seconds. A cold build takes many minutes on 2 cores (see README).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/k8s/bin"
version=v1.34.4
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

stamp="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$here/cmd/etcd/main.go" | sha256sum | cut -d' ' -f1)"
up_to_date=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || up_to_date=0; done
if [ "$up_to_date" = 1 ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "== tests/k8s/build.sh: $out up to date"
  exit 0
fi

command -v go >/dev/null || { echo "tests/k8s/build.sh: no go on PATH" >&2; exit 1; }
mkdir -p "$out"
# -p keeps the build from taking every core of a machine shared with Rust builds.
jobs="${TABBY_GO_JOBS:-2}"
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=34 -X $p.gitTreeState=clean"
done
start=$(date +%s)
cd "$here"
echo "== tests/k8s/build.sh: building ${bins[*]} ($version) with -p $jobs"
CGO_ENABLED=0 nice -n 10 go build -p "$jobs" -ldflags "$ldflags" -o "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl \
  ./cmd/etcd
echo "$stamp" > "$out/.stamp"
echo "== tests/k8s/build.sh: done in $(( $(date +%s) - start )) s"
