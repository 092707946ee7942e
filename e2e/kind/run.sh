#!/usr/bin/env bash
# Run the e2e suite against a kind cluster (needs Docker, kind, kubectl). Extra args go to pytest.
# Builds the image, loads it into kind, installs the Helm chart (with reference workers) and
# waits for it, then runs the suite against that cluster; e2e/kind/test_helm_release.py checks
# the installed release itself.
#   KIND_NODE_IMAGE=kindest/node:vX.Y.Z  pin the node image (default: kind's own)
#   KEEP_CLUSTER=1                        keep a cluster this script created
#   SIE_IMAGE=sie-operator:e2e            image name:tag to build and load
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=sie-operator-e2e
IMAGE=${SIE_IMAGE:-sie-operator:e2e}
RELEASE=sie-operator
NAMESPACE=sie-system
HELM=$(command -v helm || echo "$(e2e/controlplane/ensure-bins)/helm")
export KUBECONFIG="$PWD/.run/kind/kubeconfig"
mkdir -p "$(dirname "$KUBECONFIG")"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
else
  kind create cluster --name "$CLUSTER" --config e2e/kind/kind-config.yaml --kubeconfig "$KUBECONFIG" \
    --wait 120s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
  [ -n "${KEEP_CLUSTER:-}" ] || trap 'kind delete cluster --name "$CLUSTER"' EXIT
fi

docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"
"$HELM" upgrade --install "$RELEASE" charts/sie-operator --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set workers.enabled=true --set-json 'workers.bundles={"default":2,"sglang":1}' \
  --wait --timeout 5m
for w in deployment/"$RELEASE" deployment/"$RELEASE"-gateway deployment/"$RELEASE"-nats \
         statefulset/"$RELEASE"-worker-default statefulset/"$RELEASE"-worker-sglang; do
  kubectl -n "$NAMESPACE" rollout status "$w" --timeout=180s
done

SIE_E2E_RELEASE="$RELEASE" SIE_E2E_RELEASE_NAMESPACE="$NAMESPACE" \
  E2E_CLUSTER=existing "${PYTHON:-python}" -m pytest e2e -m k8s "$@"
