#!/usr/bin/env bash
# Pushed pointer changes (issue 13 item 3), a small version of the 8-child figure:
#
#   1. nats-server and EDGES `edge serve` nodes (default 3) on one local store, each with
#      `pointers.refresh_interval = "60s"` and `[notify] nats`;
#   2. PUBLISHES publishes (default 50) of a small change with `edge publish --notify`: the
#      time from the publish process exiting to every node answering the new content
#      (each node's `/` polled every millisecond); p50, p99, max;
#   3. NATS stopped: OUTAGE publishes (default 5) reach every node by polling within
#      `[notify] fallback_refresh_interval` (5 s); NATS started again on the same port: the
#      nodes reconnect by themselves (no restart) and OUTAGE more publishes are pushed.
#
#   scripts/bench-notify.sh [PUBLISHES] [EDGES] [OUTAGE]
#
# EDGE_BIN overrides the binary (a smoke test of the script itself: EDGE_BIN=target/debug/edge).
# Needs a release build of `edge` (built when missing), Debian's nats-server and python3.
# Everything listens on 127.0.0.1; every process started is stopped by PID. Figures on a
# shared 2-core machine are relative: run it when nothing else is benchmarking.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PUBLISHES=${1:-50}
EDGES=${2:-3}
OUTAGE=${3:-5}
EDGE=${EDGE_BIN:-$ROOT/target/release/edge}
[ -x "$EDGE" ] || (cd "$ROOT" && cargo build --release -p edge)
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 - "$EDGE" "$WORK" "$PUBLISHES" "$EDGES" "$OUTAGE" <<'EOF'
import http.client, json, os, socket, subprocess, sys, time

edge, work, publishes, edges, outage = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
procs = []  # (name, Popen): stopped by PID at the end

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait(what, check, limit):
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"{what}: not within {limit}s")
        time.sleep(0.01)

def start_nats(port):
    p = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port)],
                         stdout=subprocess.DEVNULL, stderr=open(f"{work}/nats.log", "ab"))
    procs.append(("nats", p))
    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False
    wait("nats-server", up, 10)
    return p

def stop(p):
    p.kill(); p.wait()

class Node:
    def __init__(self, i, nats_url):
        self.port, self.admin = free_port(), free_port()
        cfg = f"{work}/edge{i}.toml"
        open(cfg, "w").write(f'[pointers]\nrefresh_interval = "60s"\n[notify]\nnats = "{nats_url}"\n')
        self.proc = subprocess.Popen(
            [edge, "serve", "--config", cfg, "--store", f"{work}/store", "--cache-dir", f"{work}/cache{i}",
             "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin}",
             "--default-site", "main"],
            stdout=subprocess.DEVNULL, stderr=open(f"{work}/edge{i}.log", "ab"))
        procs.append((f"edge{i}", self.proc))
        self.conn = None

    def get(self, port, path):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            c.request("GET", path, headers={"Host": "localhost"})
            return c.getresponse().read()
        finally:
            c.close()

    def body(self):
        # One keep-alive connection per node, reopened when the node closed it.
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                self.conn.request("GET", "/", headers={"Host": "localhost"})
                return self.conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                self.conn = None
        return b""

    def notify(self):
        try:
            return json.loads(self.get(self.admin, "/status"))["notify"]
        except (OSError, ValueError, http.client.HTTPException):
            return None

def publish(content, url):
    open(f"{work}/site/index.html", "w").write(content)
    r = subprocess.run([edge, "publish", f"{work}/site", "--site", "main", "--store", f"{work}/store",
                        "--notify", url], capture_output=True, text=True)
    exited = time.monotonic()
    if r.returncode != 0:
        sys.exit(f"publish failed: {r.stderr}")
    return exited, r

def all_serve(nodes, content, exited, limit):
    want = content.encode()
    pending = set(range(len(nodes)))
    while pending:
        for i in list(pending):
            if nodes[i].body() == want:
                pending.discard(i)
        if time.monotonic() - exited > limit:
            sys.exit(f"{content!r}: nodes {sorted(pending)} did not serve it within {limit}s")
        if pending:
            time.sleep(0.001)
    return time.monotonic() - exited

def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]

def report(label, xs):
    ms = [x * 1000 for x in xs]
    print(f"{label}: n={len(ms)} p50={quantile(ms, .5):.1f} ms p99={quantile(ms, .99):.1f} ms max={max(ms):.1f} ms")

try:
    os.makedirs(f"{work}/site/assets")
    for i in range(20):
        open(f"{work}/site/assets/f{i}.css", "w").write(f"/* file {i} */ body {{ margin: {i}px }}\n" * 20)
    open(f"{work}/site/index.html", "w").write("v0")
    subprocess.run([edge, "publish", f"{work}/site", "--site", "main", "--store", f"{work}/store"],
                   check=True, capture_output=True)
    nats_port = free_port()
    url = f"nats://127.0.0.1:{nats_port}"
    nats = start_nats(nats_port)
    nodes = [Node(i, url) for i in range(edges)]
    for n in nodes:
        wait("a node serving v0", lambda: n.body() == b"v0", 30)
        wait("a node connected to NATS", lambda: (n.notify() or {}).get("connected") is True, 10)
    print(f"{edges} nodes, refresh_interval 60s, [notify] nats = {url}, {edge}")

    took = []
    for k in range(1, publishes + 1):
        content = f"pushed {k}"
        exited, _ = publish(content, url)
        took.append(all_serve(nodes, content, exited, 10))
    report(f"publish exit -> all {edges} nodes serve it (pushed)", took)

    if outage:
        stop(nats)
        wait("nodes see NATS gone", lambda: all((n.notify() or {}).get("connected") is False for n in nodes), 10)
        polled = []
        for k in range(1, outage + 1):
            content = f"polled {k}"
            exited, r = publish(content, url)
            assert "warning" in r.stderr, r.stderr
            polled.append(all_serve(nodes, content, exited, 15))
        report("NATS stopped: publish exit -> all serve it (fallback polling, 5 s)", polled)
        t0 = time.monotonic()
        nats = start_nats(nats_port)
        wait("nodes reconnect", lambda: all((n.notify() or {}).get("connected") is True for n in nodes), 30)
        print(f"NATS restarted: every node reconnected {time.monotonic() - t0:.2f}s after the server answered (no restart)")
        again = []
        for k in range(1, outage + 1):
            content = f"pushed again {k}"
            exited, _ = publish(content, url)
            again.append(all_serve(nodes, content, exited, 10))
        report("NATS back: publish exit -> all serve it (pushed)", again)
    for i, n in enumerate(nodes):
        s = n.notify()
        print(f"edge{i}: messages {s['messages']} refreshes {s['refreshes']} disconnects {s['disconnects']}")
finally:
    for name, p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
EOF
