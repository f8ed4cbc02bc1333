#!/usr/bin/env bash
# Small-file cache hits: edge vs nginx serving the same files statically, same run, same
# machine. HTTP/1.1 keep-alive with wrk, HTTP/2 (cleartext, prior knowledge) with h2load.
# Rounds are interleaved (edge, nginx, edge, nginx, ...) and medians printed.
#
#   scripts/bench-vs-nginx.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Installs nginx, wrk and h2load (nghttp2-client) with apt-get when missing. Binds 127.0.0.1
# only; stops what it started by PID.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-8}
CONNS=${3:-64}
FILES=200
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p edge
EDGE=target/release/edge

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# A site of small files (0.5 to 4 KiB).
mkdir -p "$WORK/site/assets"
for i in $(seq 1 $FILES); do
  head -c $(( 512 + (i * 37) % 3584 )) /dev/urandom | base64 > "$WORK/site/assets/f$i.txt"
done
echo "<h1>bench</h1>" > "$WORK/site/index.html"
"$EDGE" publish "$WORK/site" --site bench --store "$WORK/store" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EPORT=$(free_port); NPORT=$(free_port); N2PORT=$(free_port)

RUST_LOG=warn "$EDGE" serve --store "$WORK/store" --cache-dir "$WORK/cache" \
  --listen 127.0.0.1:$EPORT --default-site bench >"$WORK/edge.out" 2>"$WORK/edge.err" &
PIDS+=($!); EDGE_PID=$!

mkdir -p "$WORK/nginx/logs"
cat > "$WORK/nginx/nginx.conf" <<NGX
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  open_file_cache max=10000 inactive=60s;
  keepalive_requests 1000000;
  types { text/plain txt; text/html html; }
  etag on;
  server { listen 127.0.0.1:$NPORT; root $WORK/site; }
  server { listen 127.0.0.1:$N2PORT http2; root $WORK/site; }
}
NGX
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!); NGINX_PID=$!

for port in $EPORT $NPORT; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

# Warm both: every file once.
for i in $(seq 1 $FILES); do
  curl -s -o /dev/null "http://127.0.0.1:$EPORT/assets/f$i.txt"
  curl -s -o /dev/null "http://127.0.0.1:$NPORT/assets/f$i.txt"
done

cat > "$WORK/paths.lua" <<LUA
local n = 0
request = function()
  n = n % $FILES + 1
  return wrk.format("GET", "/assets/f" .. n .. ".txt")
end
LUA

h1() { # port -> "reqs p99ms"
  wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s "$WORK/paths.lua" "http://127.0.0.1:$1/" > "$WORK/wrk.txt" 2>&1
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' "$WORK/wrk.txt")
  echo "$rps $p99"
}
h2() { # port -> "reqs p99ms" (h2load reports mean/max per request; p99 from its log)
  for i in $(seq 1 $FILES); do echo "http://127.0.0.1:$1/assets/f$i.txt"; done > "$WORK/urls.txt"
  h2load -c"$CONNS" -t2 -m10 -D"$SECS" -i "$WORK/urls.txt" --log-file="$WORK/h2.log" > "$WORK/h2.txt" 2>&1
  local rps p99
  rps=$(awk '/^finished in/ {gsub(",","",$4); print $4}' "$WORK/h2.txt")
  p99=$(awk '{print $3}' "$WORK/h2.log" | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", a[i]/1000}')
  echo "$rps $p99"
}

rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

declare -a E1 N1 E2 N2
for r in $(seq 1 "$ROUNDS"); do
  E1+=("$(h1 $EPORT)"); N1+=("$(h1 $NPORT)")
  E2+=("$(h2 $EPORT)"); N2+=("$(h2 $N2PORT)")
  echo "round $r: h1 edge ${E1[-1]} nginx ${N1[-1]} | h2 edge ${E2[-1]} nginx ${N2[-1]}" >&2
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { local -n arr=$1; for x in "${arr[@]}"; do echo "$x" | awk -v c="$2" '{print $c}'; done | median; }

printf '\n%-28s %12s %12s %8s\n' "small-file hits, $CONNS conns" "edge" "nginx" "ratio"
for proto in 1 2; do
  eref="E$proto"; nref="N$proto"
  er=$(col "$eref" 1); nr=$(col "$nref" 1); ep=$(col "$eref" 2); np=$(col "$nref" 2)
  printf '%-28s %12s %12s %8.2f\n' "h$proto req/s (median)" "$er" "$nr" "$(echo "$er $nr" | awk '{print $1/$2}')"
  printf '%-28s %12s %12s %8.2f\n' "h$proto p99 ms (median)" "$ep" "$np" "$(echo "$ep $np" | awk '{print ($2>0)?$1/$2:0}')"
done
printf '%-28s %12s %12s\n' "peak RSS KiB" "$(rss_kb $EDGE_PID)" "$(for p in $(pgrep -P "$NGINX_PID") $NGINX_PID; do rss_kb "$p"; done | awk '{s+=$1} END {print s}')"
