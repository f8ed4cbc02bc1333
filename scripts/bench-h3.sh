#!/usr/bin/env bash
# Small-file hit req/s over HTTP/3 against HTTPS (HTTP/2 and HTTP/1.1 over TLS), one node,
# the project's own generator (issue 14, item 6: HTTP/3 on every serving thread):
#
#   scripts/bench-h3.sh [ROUNDS] [SECONDS]
#
# A FILES-file site (`loadtest gen-site`, 512 B-8 KiB) is published and served with TLS and
# HTTP/3 on; every file is fetched once (so all are hits); then ROUNDS rounds of h2, h3 and
# h1 runs of SECONDS each, interleaved (h2, h3, h1, h2, h3, h1, ...), and the medians and
# the h3/h2 ratio are printed. h2 and h3 run CONNS connections x STREAMS streams each, h1
# CONNS x STREAMS connections (the same requests in flight).
#
# EDGE_BIN and LOADTEST_BIN choose the binaries (default: target/release/, built when
# missing); FILES (1000), CONNS (16), STREAMS (4), PROTOS ("h2 h3 h1") the workload.
# Run it under the machine's benchmark lock when it is shared, e.g.
#   flock /tmp/heavy.lock scripts/bench-h3.sh 3 8
#
# Needs openssl (a self-signed certificate for 127.0.0.1), curl and python3. Everything
# listens on 127.0.0.1; the node is stopped by its PID; each run is bounded by `timeout`.
# Numbers on a shared 2-core machine (the generator on the same cores) are relative.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
SECS=${2:-8}
EDGE=${EDGE_BIN:-$ROOT/target/release/edge}
LOADTEST=${LOADTEST_BIN:-$ROOT/target/release/loadtest}
FILES=${FILES:-1000}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-4}
PROTOS=${PROTOS:-h2 h3 h1}
[ -x "$EDGE" ] || (cd "$ROOT" && cargo build --release -p edge)
[ -x "$LOADTEST" ] || (cd "$ROOT" && cargo build --release -p loadtest)

WORK=$(mktemp -d)
PID=
cleanup() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

"$LOADTEST" gen-site "$WORK/site" --files "$FILES" >/dev/null
"$EDGE" publish "$WORK/site" --site s --store "$WORK/store" >/dev/null
mkdir "$WORK/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$WORK/certs/default.key" -out "$WORK/certs/default.crt" 2>/dev/null

http=$(free_port)
https=$(free_port)
"$EDGE" serve --store "$WORK/store" --cache-dir "$WORK/cache" --default-site s \
  --listen "127.0.0.1:$http" --tls-listen "127.0.0.1:$https" --cert-dir "$WORK/certs" \
  --admin-listen "" >"$WORK/edge.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  curl -s -o /dev/null --cacert "$WORK/certs/default.crt" "https://127.0.0.1:$https/" && break
  sleep 0.1
done
echo "edge $("$EDGE" --version 2>/dev/null || echo "$EDGE") pid $PID, https://127.0.0.1:$https/ (TCP and UDP)"
echo "serving threads: $(ls /proc/$PID/task | while read -r t; do cat /proc/$PID/task/$t/comm; done | grep -c '^edge-worker-')," \
  "UDP sockets on $https: $(awk -v p="$(printf ':%04X' "$https")" '$2 ~ p"$"' /proc/net/udp | wc -l)"

run() { # proto seconds warmup -> req/s
  local proto=$1 secs=$2 warm=$3 shape
  if [ "$proto" = h1 ]; then
    shape=(-c "$((CONNS * STREAMS))")
  else
    shape=(-c "$CONNS" --streams "$STREAMS")
  fi
  timeout "$((secs + 60))" "$LOADTEST" run "https://127.0.0.1:$https/" --proto "$proto" \
    --cacert "$WORK/certs/default.crt" --files "$FILES" "${shape[@]}" \
    --warmup "$warm" -d "${secs}s" >"$WORK/run.txt" 2>&1 || { cat "$WORK/run.txt" >&2; return 1; }
  grep -q "errors 0" "$WORK/run.txt" || { cat "$WORK/run.txt" >&2; return 1; }
  grep -oE '[0-9.]+ req/s' "$WORK/run.txt" | tail -1 | cut -d' ' -f1
}

# Every file once, so the measured runs are all hits (the generator draws by Zipf rank).
run h1 5 0s >/dev/null

echo "== small-file hits: $FILES files, $ROUNDS rounds of ${SECS}s, h2/h3 $CONNS conns x $STREAMS streams, h1 $((CONNS * STREAMS)) conns"
declare -A rps
for r in $(seq 1 "$ROUNDS"); do
  for p in $PROTOS; do
    v=$(run "$p" "$SECS" 2s)
    rps[$p]="${rps[$p]:-} $v"
    echo "round $r $p: $v req/s"
  done
done
declare -A med
for p in $PROTOS; do
  med[$p]=$(printf '%s\n' ${rps[$p]} | median)
  printf '%-3s median %10s req/s   (%s)\n' "$p" "${med[$p]}" "${rps[$p]# }"
done
if [ -n "${med[h2]:-}" ] && [ -n "${med[h3]:-}" ]; then
  printf 'h3/h2 = %.2f\n' "$(echo "${med[h3]} / ${med[h2]}" | bc -l)"
fi
kill "$PID"
wait "$PID" 2>/dev/null || true
PID=
