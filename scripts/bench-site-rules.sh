#!/usr/bin/env bash
# Figures for compression at publish and site rules (issue 15):
#
#   1. publish time of a 2,000-file site, with compression (br 11, zstd 19, gzip 9) and with
#      --no-compress (median of ROUNDS fresh publishes each);
#   2. bytes on the wire for its text files: without Accept-Encoding, and with
#      `Accept-Encoding: br, zstd, gzip` (what browsers send);
#   3. small-file hit req/s (HTTP/1.1, `loadtest run`, 32 connections) on a 200-file site with
#      no rules and with 10,000 `_redirects` rules (plus 1,000 forced ones on other paths),
#      interleaved over ROUNDS rounds, medians.
#
#   scripts/bench-site-rules.sh [ROUNDS] [SECONDS]
#
# EDGE_BIN and LOADTEST_BIN override the binaries, FILES the site's size (a smoke test of the
# script itself: FILES=100 EDGE_BIN=target/debug/edge LOADTEST_BIN=target/debug/loadtest).
#
# Needs release builds of `edge` and `loadtest` (built when missing), python3 and curl.
# Everything listens on 127.0.0.1; every process started is stopped by PID. Numbers on a
# shared 2-core machine are relative: run it when nothing else is benchmarking.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
SECS=${2:-8}
EDGE=${EDGE_BIN:-$ROOT/target/release/edge}
LOADTEST=${LOADTEST_BIN:-$ROOT/target/release/loadtest}
FILES=${FILES:-2000}
[ -x "$EDGE" ] || (cd "$ROOT" && cargo build --release -p edge)
[ -x "$LOADTEST" ] || (cd "$ROOT" && cargo build --release -p loadtest)

WORK=$(mktemp -d)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

# ---- a 2,000-file site: 1,500 text files (html, css, js, json, svg, txt) and 500 binaries --
# Text content is cut from this repository's own sources and docs, so it compresses as real
# text does (not as a generator's repetitions would).
python3 - "$WORK/site" "$FILES" "$ROOT" <<'EOF'
import glob, os, random, sys
root, files, repo = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rnd = random.Random(15)
corpus = "".join(
    open(f, encoding="utf-8", errors="replace").read()
    for pat in ("*/src/**/*.rs", "*.md", "config/*.toml")
    for f in sorted(glob.glob(os.path.join(repo, pat), recursive=True))
).encode()
kinds = ["pages/p{i}/index.html", "css/s{i}.css", "js/app.{i:04x}.js", "data/d{i}.json",
         "img/i{i}.svg", "docs/t{i}.txt"]
texts = open(root + ".texts", "w")
for i in range(files):
    n = 200 + (i * 977) % 24000
    if i % 4 == 3:
        path, data = (f"img/p{i}.png", b"\x89PNG\r\n\x1a\n" + rnd.randbytes(n)) if i % 8 == 3 else (f"fonts/f{i}.woff2", rnd.randbytes(n))
    else:
        path = kinds[i % len(kinds)].format(i=i)
        at = (i * 7919) % max(1, len(corpus) - n)
        data = corpus[at:at + n]
        texts.write("/" + path + "\n")
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    open(full, "wb").write(data)
open(os.path.join(root, "index.html"), "w").write("<h1>bench</h1>\n")
EOF

echo "== publish time, $FILES files (median of $ROUNDS)"
for mode in compress no-compress; do
  times=()
  for r in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/store-$mode"
    flag=()
    [ "$mode" = no-compress ] && flag=(--no-compress)
    t0=$(now)
    "$EDGE" publish "$WORK/site" --site big --store "$WORK/store-$mode" "${flag[@]}" >"$WORK/publish-$mode.txt"
    t1=$(now)
    times+=("$(echo "$t1 - $t0" | bc)")
  done
  printf '%-12s %6.2f s   (%s)\n' "$mode" "$(printf '%s\n' "${times[@]}" | median)" "$(grep -h new "$WORK/publish-$mode.txt")"
done

echo "== bytes on the wire for the text files"
port=$(free_port)
"$EDGE" serve --store "$WORK/store-compress" --cache-dir "" --default-site big \
  --listen "127.0.0.1:$port" --admin-listen "" >"$WORK/edge-big.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
# One curl for all the URLs (each with its own `output`); size_download is the bytes of the
# body as sent (curl decodes nothing without --compressed).
awk -v base="http://127.0.0.1:$port" '{print "url = " base $0; print "output = /dev/null"}' \
  "$WORK/site.texts" >"$WORK/urls.cfg"
plain=$(curl -s -K "$WORK/urls.cfg" -w '%{size_download}\n' | awk '{s+=$1} END {print s}')
for enc in "br, zstd, gzip" "gzip"; do
  packed=$(curl -s -K "$WORK/urls.cfg" -H "Accept-Encoding: $enc" -w '%{size_download}\n' | awk '{s+=$1} END {print s}')
  printf '%-16s %10d bytes, %.1f%% of %d (identity)\n' "$enc" "$packed" "$(echo "100 * $packed / $plain" | bc -l)" "$plain"
done
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=

echo "== small-file hits, HTTP/1.1, 0 vs 10,000 rules ($ROUNDS rounds of ${SECS}s, medians)"
"$LOADTEST" gen-site "$WORK/small0" --files 200 >/dev/null
cp -r "$WORK/small0" "$WORK/small1"
python3 - "$WORK/small1/_redirects" <<'EOF'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(1000):
        f.write(f"/forced-{i}/* /index.html 200!\n")
    for i in range(10000):
        f.write(f"/old-{i}/:page /new-{i}/:page 301\n")
    f.write("/* /index.html 200\n")
EOF
"$EDGE" publish "$WORK/small0" --site rules0 --store "$WORK/store-small" >/dev/null
"$EDGE" publish "$WORK/small1" --site rules10k --store "$WORK/store-small" >/dev/null
declare -A rps
for r in $(seq 1 "$ROUNDS"); do
  for site in rules0 rules10k; do
    port=$(free_port)
    "$EDGE" serve --store "$WORK/store-small" --cache-dir "" --default-site "$site" \
      --listen "127.0.0.1:$port" --admin-listen "" >"$WORK/edge-$site.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    "$LOADTEST" run "http://127.0.0.1:$port/" --files 200 -c 32 --warmup 2s -d "${SECS}s" >"$WORK/run.txt" 2>&1
    grep -q "errors 0" "$WORK/run.txt" || { cat "$WORK/run.txt" >&2; exit 1; }
    v=$(grep -oE '[0-9.]+ req/s' "$WORK/run.txt" | tail -1 | cut -d' ' -f1)
    rps[$site]="${rps[$site]:-} $v"
    echo "round $r $site: $v req/s"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  done
done
for site in rules0 rules10k; do
  printf '%-9s median %s req/s\n' "$site" "$(printf '%s\n' ${rps[$site]} | median)"
done
