#!/usr/bin/env bash
# Start a Docker engine in the background unless one already answers; wait until it does.
# Idempotent; used by CI and by the Docker tests' setup. The engine runs without a
# bridge network or iptables rules (replicas use host networking), which works in
# containers and VMs where neither is allowed.
set -euo pipefail

TIMEOUT_S="${SCHOONER_DOCKERD_TIMEOUT_S:-60}"
LOG="${SCHOONER_DOCKERD_LOG:-/tmp/schooner-dockerd.log}"

if docker info >/dev/null 2>&1; then
    echo "docker engine already running"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    echo "dockerd not found (apt-get install docker.io)" >&2
    exit 1
fi

echo "starting dockerd (log: $LOG)"
nohup dockerd --bridge=none --iptables=false >"$LOG" 2>&1 &
disown || true

for _ in $(seq 1 "$TIMEOUT_S"); do
    if docker info >/dev/null 2>&1; then
        echo "docker engine is up"
        exit 0
    fi
    sleep 1
done
echo "docker engine did not answer within ${TIMEOUT_S}s; last log lines:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
