#!/usr/bin/env bash
# Run the e2e suite against a kind cluster (needs Docker, kind, kubectl). Extra args go to pytest.
#   KIND_NODE_IMAGE=kindest/node:vX.Y.Z  pin the node image (default: kind's own)
#   KEEP_CLUSTER=1                        keep a cluster this script created
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=sie-operator-e2e
export KUBECONFIG="$PWD/.run/kind/kubeconfig"
mkdir -p "$(dirname "$KUBECONFIG")"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
else
  kind create cluster --name "$CLUSTER" --config e2e/kind/kind-config.yaml --kubeconfig "$KUBECONFIG" \
    --wait 120s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
  [ -n "${KEEP_CLUSTER:-}" ] || trap 'kind delete cluster --name "$CLUSTER"' EXIT
fi

E2E_CLUSTER=existing "${PYTHON:-python}" -m pytest e2e -m k8s "$@"
