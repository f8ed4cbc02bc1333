#!/usr/bin/env bash
# Publishing at scale: a generated folder of FILES small files (default 100,000; nested as
# aNN/bNN/fileN.txt, 100 per folder) published to a fresh local store and to S3 (s3s-fs on
# 127.0.0.1): cold, unchanged again, and with 3 files changed. Prints wall time and the store
# operations `edge publish` counted (for S3 also the HTTP requests sent) for each.
#
#   scripts/publish-scale.sh [FILES] [EDGE_BIN]      # EDGE_BIN default target/release/edge
#
# Needs python3 (to generate the folder) and s3s-fs (cargo install s3s-fs@0.14.1 --features
# binary --locked). Everything it starts listens on 127.0.0.1 and is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-100000}
EDGE=${2:-target/release/edge}
[ -x "$EDGE" ] || { echo "no $EDGE: cargo build --release -p edge" >&2; exit 1; }
S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
[ -x "$S3S" ] || { echo "no s3s-fs: cargo install s3s-fs@0.14.1 --features binary --locked" >&2; exit 1; }

work=$(mktemp -d)
s3pid=""
cleanup() {
  if [ -n "$s3pid" ]; then kill "$s3pid" 2>/dev/null || true; wait "$s3pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "generating $FILES files in $work/site"
python3 - "$work/site" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "a%02d" % (i // 10000), "b%02d" % ((i // 100) % 100))
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "file%06d.txt" % i), "w") as f:
        f.write(("file %d\n" % i) * (1 + i % 40))
PY

run() { # label store
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$("$EDGE" publish "$work/site" --site scale --store "$2")
  t1=$(date +%s.%N)
  printf '%-28s %7.2f s   %s\n' "$1" "$(awk "BEGIN{print $t1 - $t0}")" \
    "$(echo "$out" | grep '^store operations' | sed 's/; [0-9.]*s$//')"
}

path_of() { printf '%s/site/a%02d/b%02d/file%06d.txt' "$work" $(($1 / 10000)) $((($1 / 100) % 100)) "$1"; }
change3() { # edits the first, the middle and the last file
  for i in 0 $((FILES / 2)) $((FILES - 1)); do echo "edit $1" >> "$(path_of "$i")"; done
}

echo "== local store"
run "cold" "$work/store"
run "unchanged" "$work/store"
change3 local
run "3 files changed" "$work/store"

echo "== S3 (s3s-fs)"
mkdir -p "$work/s3/bench"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$S3S" --access-key bench --secret-key benchsecret --host 127.0.0.1 --port "$port" "$work/s3" \
  >/dev/null 2>&1 &
s3pid=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 \
  AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true
run "cold" "s3://bench/p"
run "unchanged" "s3://bench/p"
change3 s3
run "3 files changed" "s3://bench/p"
