#!/usr/bin/env bash
# The Debian package, end to end: build it with cargo-deb, install it with dpkg, check
# `edge --version`, the config, the `edge` user and `systemd-analyze verify` on the unit,
# run the installed node as the unit would (as `edge`, with its config) and read it with
# `edge top --once`, then purge the package and check that no process of it is left.
#
# CI packages the debug binary (`--profile dev --no-build`: cargo-deb warns that dev is not
# a release profile); a release package is `cargo deb -p edge` (5-8 minutes cold here).
set -euo pipefail
cd "$(dirname "$0")/.."

if dpkg-query -W -f='${Status}' edge 2>/dev/null | grep -q "install ok installed"; then
  echo "deb-check: a package named edge is installed already; not touching it" >&2
  exit 1
fi
cargo build -p edge --bin edge --locked
rm -rf target/debian
cargo deb -p edge --profile dev --no-build -o target/debian/ 2>target/deb-build.log \
  || { cat target/deb-build.log >&2; exit 1; }
deb=$(ls target/debian/edge_*.deb)
echo "deb-check: built $deb ($(du -h "$deb" | cut -f1))"

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  dpkg --purge edge >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

dpkg -i "$deb" >/dev/null
version=$(/usr/bin/edge --version)
echo "deb-check: installed: $version"
[[ "$version" == "edge $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ]]
getent passwd edge >/dev/null
/usr/bin/edge check-config /etc/edge/edge.toml
unit=$(dpkg -L edge | grep '/systemd/system/edge.service$')
systemd-analyze verify "$unit"
echo "deb-check: systemd-analyze verify $unit: ok"

# No systemd as PID 1 here: start it as the unit would, on ports of its own.
install -d -o edge -g edge -m 0750 /var/lib/edge /var/cache/edge
setpriv --reuid edge --regid edge --init-groups --no-new-privs \
  /usr/bin/edge serve --config /etc/edge/edge.toml \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do
  grep -q "^edge admin on" "$work/out" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
  sleep 0.1
done
admin=$(sed -n 's#^edge admin on http://\(.*\)/$#\1#p' "$work/out")
[ -n "$admin" ] || { echo "deb-check: the node did not start" >&2; cat "$work/err" >&2; exit 1; }
/usr/bin/edge top --once --admin "$admin" | grep -q "^requests/s "
echo "deb-check: the installed node runs as edge and answers on $admin"
kill -TERM "$pid"
wait "$pid"
pid=""

dpkg --purge edge >/dev/null
[ ! -e /usr/bin/edge ] && [ ! -e /etc/edge/edge.toml ] && [ ! -e "$unit" ]
left=""
for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null || true)
  case "$exe" in /usr/bin/edge*) left="$left ${p#/proc/}" ;; esac
done
[ -z "$left" ] || { echo "deb-check: processes of the package left:$left" >&2; exit 1; }
echo "deb-check: removed; no process of the package left"
