#!/bin/sh
# Kubernetes lifecycle of a Linkrift StatefulSet pod (installed in the image as
# /usr/local/bin/linkrift-lifecycle).
#
#   linkrift-lifecycle start     the container's command: pod 0 starts (or bootstraps) the
#                                cluster; any other pod with an empty volume joins pod 0
#   linkrift-lifecycle prestop   the preStop hook: a pod whose ordinal is at or past the
#                                StatefulSet's replicas is being scaled away, so it leaves
#                                the cluster for good (its replicas move first, waiting as
#                                long as that takes); any other pod is restarting, and
#                                SIGTERM drains it (LINKRIFT_DRAIN_ON_SHUTDOWN)
#
# Needs POD_IP, POD_NAMESPACE, STS_NAME and PEERS_SERVICE in the environment, and a service
# account allowed to read its StatefulSet (deploy/k8s/linkrift.yaml).
set -eu
ordinal=${HOSTNAME##*-}
data=${LINKRIFT_DATA_DIR:-/var/lib/linkrift/data}

case "${1:-}" in
start)
  set -- serve --peer "$POD_IP:7000" --cluster "$POD_IP:7001"
  if [ "$ordinal" != 0 ] && [ ! -e "$data/linkrift.json" ]; then
    seed=""
    while [ -z "$seed" ]; do
      seed=$(getent hosts "$STS_NAME-0.$PEERS_SERVICE" | awk '{print $1; exit}')
      [ -n "$seed" ] || { echo "waiting for $STS_NAME-0.$PEERS_SERVICE" >&2; sleep 2; }
    done
    set -- "$@" --join "$seed:7001"
  fi
  exec linkrift "$@"
  ;;
prestop)
  sa=/var/run/secrets/kubernetes.io/serviceaccount
  desired=$(curl -fsS --cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")" \
      "https://kubernetes.default.svc/apis/apps/v1/namespaces/$POD_NAMESPACE/statefulsets/$STS_NAME" \
    | sed -n 's/^    "replicas": \([0-9]*\),*$/\1/p' | head -n 1)
  if [ -n "$desired" ] && [ "$ordinal" -ge "$desired" ]; then
    id=$(sed -n 's/.*"node_id": *\([0-9]*\).*/\1/p' "$data/linkrift.json")
    echo "scaled away: node $id leaves the cluster" >&2
    LINKRIFT_URL=http://127.0.0.1:8080 exec linkrift cluster leave "$id" --wait --timeout 3600
  fi
  # A restart: SIGTERM (after this hook) drains the node.
  ;;
*)
  echo "usage: linkrift-lifecycle start|prestop" >&2
  exit 2
  ;;
esac
