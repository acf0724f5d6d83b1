#!/usr/bin/env bash
# Local orchestration stack on loopback: Prefect server, a process worker for the
# audio-wgan-local pool, and the MLflow UI over ./mlflow.db. Ctrl-C stops all of it.
#
#   bash scripts/serve.sh            # or: make serve
#   bash scripts/serve.sh --deploy   # also run `prefect deploy --all` once the server is up
#   bash scripts/serve.sh --tracking-server [--mlflow-only]
#       MLflow as a tracking server on a database and an artifact store instead of the
#       SQLite UI: `mlflow server --backend-store-uri $MLFLOW_BACKEND_STORE_URI
#       --artifacts-destination $MLFLOW_ARTIFACTS_DESTINATION`, e.g.
#         MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://USER:PASSWORD@HOST:5432/mlflow
#         MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/mlartifacts
#       (psycopg2 and boto3: pip install -e '.[scale]'). Artifacts are proxied: only this
#       server needs the S3 credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and
#       MLFLOW_S3_ENDPOINT_URL for S3-compatible stores); clients, and the worker's flows,
#       get MLFLOW_TRACKING_URI=http://MLFLOW_HOST:MLFLOW_PORT. --mlflow-only starts the
#       tracking server alone (no Prefect server or worker), e.g. on its own machine with
#       MLFLOW_HOST=0.0.0.0 (then also set MLFLOW_ALLOWED_HOSTS to the names clients use).
#
# Settings (environment): PREFECT_PORT (4200), MLFLOW_PORT (5000), MLFLOW_WORKERS (1),
# MLFLOW_HOST (127.0.0.1), AUDIO_WGAN_POOL (audio-wgan-local), AUDIO_WGAN_LOG_DIR
# (work/logs), PREFECT_HOME (Prefect's default, ~/.prefect), MLFLOW_TRACKING_URI (default
# sqlite:///<project>/mlflow.db; the worker's flows and the UI both use it; with
# --tracking-server it is the server's URL).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
[[ -x "$BIN/prefect" ]] || { echo "serve.sh: $BIN/prefect missing; run 'make venv' first" >&2; exit 2; }
export PATH="$BIN:$PATH"

DEPLOY=0
TRACKING_SERVER=0
MLFLOW_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --deploy) DEPLOY=1 ;;
    --tracking-server) TRACKING_SERVER=1 ;;
    --mlflow-only) MLFLOW_ONLY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "serve.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

HOST=127.0.0.1
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
MLFLOW_HOST="${MLFLOW_HOST:-$HOST}"
POOL="${AUDIO_WGAN_POOL:-audio-wgan-local}"
LOG_DIR="${AUDIO_WGAN_LOG_DIR:-$ROOT/work/logs}"
mkdir -p "$LOG_DIR"

export PREFECT_API_URL="http://$HOST:$PREFECT_PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
if [[ $MLFLOW_ONLY == 1 && $TRACKING_SERVER == 0 ]]; then
  echo "serve.sh: --mlflow-only goes with --tracking-server" >&2; exit 2
fi
if [[ $MLFLOW_ONLY == 1 && $DEPLOY == 1 ]]; then
  echo "serve.sh: --deploy needs the Prefect server, which --mlflow-only does not start" >&2
  exit 2
fi
if [[ $TRACKING_SERVER == 1 ]]; then
  if [[ -z ${MLFLOW_BACKEND_STORE_URI:-} ]]; then
    echo "serve.sh: --tracking-server needs MLFLOW_BACKEND_STORE_URI" \
      "(e.g. postgresql+psycopg2://user:password@host:5432/mlflow)" >&2; exit 2
  fi
  if [[ -z ${MLFLOW_ARTIFACTS_DESTINATION:-} ]]; then
    echo "serve.sh: --tracking-server needs MLFLOW_ARTIFACTS_DESTINATION" \
      "(e.g. s3://bucket/mlartifacts)" >&2; exit 2
  fi
  if [[ $MLFLOW_BACKEND_STORE_URI == postgresql* ]] && ! "$BIN/python" -c "import psycopg2" 2>/dev/null; then
    echo "serve.sh: a postgresql backend store needs psycopg2: pip install -e '.[scale]'" >&2; exit 2
  fi
  if [[ $MLFLOW_ARTIFACTS_DESTINATION == s3://* ]] && ! "$BIN/python" -c "import boto3" 2>/dev/null; then
    echo "serve.sh: an s3:// artifact store needs boto3: pip install -e '.[scale]'" >&2; exit 2
  fi
  CLIENT_HOST="$MLFLOW_HOST"
  [[ $CLIENT_HOST == 0.0.0.0 ]] && CLIENT_HOST=$HOST
  export MLFLOW_TRACKING_URI="http://$CLIENT_HOST:$MLFLOW_PORT"
else
  export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$ROOT/mlflow.db}"
fi
# a UI for one person: one web worker, no background job runners (GenAI scorer jobs)
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
MLFLOW_WORKERS="${MLFLOW_WORKERS:-1}"
# flow runs send a heartbeat every 30 s, so the zombie automation below can mark a run
# Crashed 90 s after its worker or machine is lost (otherwise it would show Running forever)
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY="${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}"
export PWD="$ROOT"

PIDS=()
descendants() {  # flow-run processes live in sessions of their own: find them by parent
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}
stop_group() {  # stop_group PID: TERM its process group, KILL it after 10 s
  local pid="$1"
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
cleanup() {
  trap - INT TERM HUP EXIT
  echo
  echo "serve.sh: stopping ${#PIDS[@]} services..."
  local i pid kids=()
  for pid in "${PIDS[@]}"; do kids+=($(descendants "$pid")); done
  # newest first: the worker while the server can still hear it, the server last
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_group "${PIDS[$i]}"; done
  for pid in "${kids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "serve.sh: stopped."
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

start_bg() {  # start_bg LOG CMD...: run CMD in its own process group, so it can be stopped whole
  local log="$1"; shift
  set -m
  "$@" >"$log" 2>&1 &
  LAST_PID=$!
  set +m
  PIDS+=("$LAST_PID")
}

wait_http() {  # wait_http NAME URL PID: poll until URL answers 200 (python: curl may be absent)
  "$BIN/python" - "$1" "$2" "$3" <<'PY'
import os, sys, time, urllib.request
name, url, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 180
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"serve.sh: {name} exited during start-up (see its log)")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"serve.sh: {name} did not answer {url} within 180 s")
PY
}

port_free() {
  "$BIN/python" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('$HOST', $1)) == 0)"
}
if [[ $MLFLOW_ONLY == 0 ]]; then
  port_free "$PREFECT_PORT" || { echo "serve.sh: port $PREFECT_PORT is busy (set PREFECT_PORT)" >&2; exit 2; }
fi
port_free "$MLFLOW_PORT" || { echo "serve.sh: port $MLFLOW_PORT is busy (set MLFLOW_PORT)" >&2; exit 2; }

if [[ $MLFLOW_ONLY == 0 ]]; then
  echo "serve.sh: starting Prefect server on $HOST:$PREFECT_PORT (log: $LOG_DIR/prefect-server.log)"
  start_bg "$LOG_DIR/prefect-server.log" prefect server start --host "$HOST" --port "$PREFECT_PORT"
  SERVER_PID=$LAST_PID
fi

if [[ $TRACKING_SERVER == 1 ]]; then
  # the backend URI may hold a password: log it without one
  echo "serve.sh: starting MLflow tracking server on $MLFLOW_HOST:$MLFLOW_PORT" \
    "(backend $(sed -E 's#//([^:/@]*):[^@]*@#//\1:***@#' <<<"$MLFLOW_BACKEND_STORE_URI")," \
    "artifacts $MLFLOW_ARTIFACTS_DESTINATION; log: $LOG_DIR/mlflow-server.log)"
  ALLOWED=()
  [[ -n ${MLFLOW_ALLOWED_HOSTS:-} ]] && ALLOWED=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
  start_bg "$LOG_DIR/mlflow-server.log" \
    mlflow server --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
    --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" "${ALLOWED[@]}"
else
  echo "serve.sh: starting MLflow UI on $HOST:$MLFLOW_PORT (log: $LOG_DIR/mlflow-ui.log)"
  start_bg "$LOG_DIR/mlflow-ui.log" \
    mlflow ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host "$HOST" --port "$MLFLOW_PORT" \
    --workers "$MLFLOW_WORKERS"
fi
MLFLOW_PID=$LAST_PID

if [[ $MLFLOW_ONLY == 0 ]]; then
  wait_http "Prefect server" "$PREFECT_API_URL/health" "$SERVER_PID"

  prefect --no-prompt work-pool inspect "$POOL" >/dev/null 2>&1 \
    || prefect --no-prompt work-pool create "$POOL" --type process >/dev/null
  echo "serve.sh: work pool '$POOL' ready"
  "$BIN/python" "$ROOT/scripts/zombie_automation.py" --within 90 | sed 's/^/serve.sh: /'

  echo "serve.sh: starting a process worker (log: $LOG_DIR/prefect-worker.log)"
  start_bg "$LOG_DIR/prefect-worker.log" \
    prefect worker start --pool "$POOL" --type process --install-policy never

  if [[ $DEPLOY == 1 ]]; then
    echo "serve.sh: prefect deploy --all"
    prefect --no-prompt deploy --all
  fi
fi

if [[ $TRACKING_SERVER == 1 ]]; then
  wait_http "MLflow tracking server" "$MLFLOW_TRACKING_URI/health" "$MLFLOW_PID"
else
  wait_http "MLflow UI" "http://$HOST:$MLFLOW_PORT/health" "$MLFLOW_PID"
fi

if [[ $MLFLOW_ONLY == 1 ]]; then
  cat <<EOF

  MLflow tracking server  $MLFLOW_TRACKING_URI (artifacts proxied to $MLFLOW_ARTIFACTS_DESTINATION)

  Clients need only:
    export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI

  serve.sh: ready. Ctrl-C stops it.
EOF
else
cat <<EOF

  Prefect UI     http://$HOST:$PREFECT_PORT
  MLflow UI      http://${CLIENT_HOST:-$HOST}:$MLFLOW_PORT
  worker         pool '$POOL' (runs flows in $ROOT)

  In another shell, from $ROOT:
    export PREFECT_API_URL=$PREFECT_API_URL
    export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI
    .venv/bin/prefect --no-prompt deploy --all
    .venv/bin/prefect deployment run 'precompute/demo'
    .venv/bin/prefect deployment run 'retrain/weekly'

  serve.sh: ready. Ctrl-C stops everything.
EOF
fi

# Exit (and clean up) as soon as any service dies; otherwise wait for Ctrl-C.
while true; do
  for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "serve.sh: a service (pid $pid) exited; see $LOG_DIR" >&2
      exit 1
    fi
  done
  # `wait` returns at once when a trapped signal arrives (a foreground `sleep` would defer
  # the INT trap until it ends, and bash may then treat the INT as handled by the child)
  sleep 2 &
  wait $! 2>/dev/null || true
done
