#!/bin/sh
# Kubernetes lifecycle of a Linkrift StatefulSet pod (installed in the image as
# /usr/local/bin/linkrift-lifecycle).
#
#   linkrift-lifecycle certs     the init container: this pod's node certificate, signed by
#                                the cluster CA (the Secret mounted at CA_DIR, holding
#                                ca.pem and ca-key.pem), valid for the pod's IP and DNS
#                                name, written to PKI_DIR (an emptyDir the node reads as
#                                ca.pem, node.pem, node-key.pem); the CA key stays behind
#   linkrift-lifecycle start     the container's command: pod 0 starts (or bootstraps) the
#                                cluster; any other pod with an empty volume joins pod 0
#   linkrift-lifecycle prestop   the preStop hook: a pod whose ordinal is at or past the
#                                StatefulSet's replicas is being scaled away, so it leaves
#                                the cluster for good (its replicas move first, waiting as
#                                long as that takes; below the replication factor, shards
#                                keep fewer replicas); any other pod is restarting, and
#                                SIGTERM drains it (LINKRIFT_DRAIN_ON_SHUTDOWN)
#
# Needs POD_IP, POD_NAMESPACE, STS_NAME and PEERS_SERVICE in the environment, and a service
# account allowed to read its StatefulSet (deploy/k8s/linkrift.yaml). Overridable (for
# node/tests/lifecycle.rs, which runs this script against a stand-in API server):
# PEER_PORT, CLUSTER_PORT, SEED_ADDR (instead of resolving pod 0), KUBERNETES_API,
# SERVICE_ACCOUNT_DIR, LINKRIFT_URL.
set -eu
ordinal=${HOSTNAME##*-}
data=${LINKRIFT_DATA_DIR:-/var/lib/linkrift/data}
peer_port=${PEER_PORT:-7000}
cluster_port=${CLUSTER_PORT:-7001}

case "${1:-}" in
certs)
  ca=${CA_DIR:-/etc/linkrift/ca}
  pki=${PKI_DIR:-/etc/linkrift/pki}
  # A new pod has a new IP: a new certificate every start.
  rm -f "$pki/ca.pem" "$pki/ca-key.pem" "$pki/$HOSTNAME.pem" "$pki/$HOSTNAME-key.pem" \
    "$pki/node.pem" "$pki/node-key.pem"
  cp "$ca/ca.pem" "$ca/ca-key.pem" "$pki/"
  linkrift certs node "$pki" --name "$HOSTNAME" --host "$POD_IP" \
    --host "$HOSTNAME.$PEERS_SERVICE" --host "$HOSTNAME.$PEERS_SERVICE.$POD_NAMESPACE.svc"
  rm -f "$pki/ca-key.pem"
  mv "$pki/$HOSTNAME.pem" "$pki/node.pem"
  mv "$pki/$HOSTNAME-key.pem" "$pki/node-key.pem"
  ;;
start)
  set -- serve --peer "$POD_IP:$peer_port" --cluster "$POD_IP:$cluster_port"
  if [ "$ordinal" != 0 ] && [ ! -e "$data/linkrift.json" ]; then
    seed=${SEED_ADDR:-}
    while [ -z "$seed" ]; do
      seed=$(getent hosts "$STS_NAME-0.$PEERS_SERVICE" | awk '{print $1; exit}')
      [ -n "$seed" ] || { echo "waiting for $STS_NAME-0.$PEERS_SERVICE" >&2; sleep 2; }
    done
    set -- "$@" --join "$seed:$cluster_port"
  fi
  exec linkrift "$@"
  ;;
prestop)
  api=${KUBERNETES_API:-https://kubernetes.default.svc}
  sa=${SERVICE_ACCOUNT_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}
  set --
  [ -r "$sa/ca.crt" ] && set -- --cacert "$sa/ca.crt"
  [ -r "$sa/token" ] && set -- "$@" -H "Authorization: Bearer $(cat "$sa/token")"
  # The API answers pretty-printed JSON: spec.replicas is the first "replicas" at four
  # spaces (status.replicas comes after it).
  desired=$(curl -fsS "$@" \
      "$api/apis/apps/v1/namespaces/$POD_NAMESPACE/statefulsets/$STS_NAME" \
    | sed -n 's/^    "replicas": \([0-9]*\),*$/\1/p' | head -n 1)
  if [ -z "$desired" ]; then
    echo "could not read the StatefulSet's replicas; treating this stop as a restart" >&2
  elif [ "$desired" -eq 0 ]; then
    # Scaled to zero: the whole cluster stops; nobody leaves (the volumes keep the data).
    echo "scaled to zero: stopping without leaving" >&2
  elif [ "$ordinal" -ge "$desired" ]; then
    id=$(sed -n 's/.*"node_id": *\([0-9]*\).*/\1/p' "$data/linkrift.json")
    echo "scaled away: node $id leaves the cluster" >&2
    export LINKRIFT_URL="${LINKRIFT_URL:-http://127.0.0.1:8080}"
    # --force: scaling below the replication factor is the operator's decision (shards
    # then run with fewer replicas). A leave that would lose a quorum is still refused.
    exec linkrift cluster leave "$id" --wait --timeout 3600 --force
  fi
  # A restart: SIGTERM (after this hook) drains the node.
  ;;
*)
  echo "usage: linkrift-lifecycle certs|start|prestop" >&2
  exit 2
  ;;
esac
