#!/usr/bin/env bash
# Instructions the edge executes per small-file memory hit over HTTP/1.1 keep-alive, counted
# by valgrind's callgrind: unlike req/s on a shared 2-core machine, the figure repeats to
# within a fraction of a percent whatever else runs, so it shows what a hit-path change buys.
#
#   scripts/hit-instructions.sh [EDGE_BIN] [REQUESTS]
#
# Runs the edge under callgrind twice on 127.0.0.1 (each: start, fetch all 200 files of a
# generated site once, then REQUESTS more over 8 connections with `loadtest run`, SIGINT) and
# prints (total with REQUESTS - total with none) / REQUESTS: start-up, warm-up and shutdown
# cancel out. User-space instructions only (the kernel's share is not counted).
# Installs valgrind with apt-get when missing. Stops what it started by PID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EDGE=${1:-$ROOT/target/release/edge}
N=${2:-20000}
LOADTEST=$ROOT/target/release/loadtest

command -v valgrind >/dev/null || apt-get install -y valgrind >/dev/null
[ -x "$EDGE" ] || (cd "$ROOT" && cargo build --release -p edge)
[ -x "$LOADTEST" ] || (cd "$ROOT" && cargo build --release -p loadtest)

WORK=$(mktemp -d)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$LOADTEST" gen-site "$WORK/site" --files 200 >/dev/null
"$EDGE" publish "$WORK/site" --store "$WORK/store" --site bench0 >/dev/null 2>&1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# total_instructions REQUESTS
total_instructions() {
  local port admin out
  port=$(free_port)
  admin=$(free_port)
  out=$WORK/cg.$1
  rm -rf "$WORK/cache"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$EDGE" serve --store "$WORK/store" \
    --cache-dir "$WORK/cache" --default-site bench0 --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" >"$WORK/edge.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.2
  done
  for f in "$WORK"/site/small/*; do
    curl -s -o /dev/null "http://127.0.0.1:$port/small/$(basename "$f")"
  done
  if [ "$1" -gt 0 ]; then
    "$LOADTEST" run "http://127.0.0.1:$port/" --files 200 -c 8 --warmup 0 -d 300s \
      --max-requests "$1" >"$WORK/run.txt" 2>&1
    grep -q "errors 0" "$WORK/run.txt" || { cat "$WORK/run.txt" >&2; exit 1; }
  fi
  kill -INT "$PID"
  wait "$PID" || true
  PID=
  # awk reads to the end: exiting early would fail the pipe (pipefail) with SIGPIPE.
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'
}

base=$(total_instructions 0)
full=$(total_instructions "$N")
echo "edge: $EDGE"
echo "instructions: $base with no requests, $full with $N hits"
echo "per hit: $(( (full - base) / N )) instructions (user space, HTTP/1.1 keep-alive, 8 connections)"
