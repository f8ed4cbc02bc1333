#!/usr/bin/env bash
# What an idle connection costs the node (issue 14 item 5): the node's resident memory
# (VmRSS from /proc/PID/status) before and after N idle connections (default 10,000), in
# KiB per connection, for each state:
#
#   accepted   TCP connected, no byte sent yet;
#   h1         HTTP/1.1 keep-alive after one complete request and response;
#   h2c        HTTP/2 with prior knowledge after one request, its stream closed.
#
# Each state gets a fresh `edge serve` (one small site on a local store, warmed with a few
# requests of each protocol first), so memory one state freed cannot hide another's. The
# node's own gauges (edge_connections_open / _idle) must show all N open and idle before the
# sample is taken, so the figure is of connections the node holds, not of a listen backlog.
#
#   scripts/bench-idle.sh [N] [HOLD_SECONDS] [STATES]
#
# HOLD (default 3 s) must exceed the node's PARK_AFTER (1 s, listen/conn.rs) plus the
# memory release's 1 s sample: an HTTP/1 connection is parked only after a second idle, and
# the freed buffers go back to the OS only at the next `malloc_trim`. All N connections
# arrive within that second here, so h1 measures what is left after N hyper connections
# were held at once and then parked (freed heap between live allocations stays resident).
# STATES is a comma list (default accepted,h1,h2c). EDGE_BIN overrides the binary. Needs a
# release build of `edge` (built when missing) and python3; run as a user that may raise
# its descriptor limit to N + 1000 (prlimit). Everything listens on 127.0.0.1; every process
# started is stopped by PID; each state is bounded (120 s to open, HOLD to hold). Figures on
# a shared 2-core machine: run it when nothing else is benchmarking.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-10000}
HOLD=${2:-3}
STATES=${3:-accepted,h1,h2c}
EDGE=${EDGE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edge}
[ -x "$EDGE" ] || (cd "$ROOT" && cargo build --release -p edge)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 - "$EDGE" "$WORK" "$N" "$HOLD" "$STATES" <<'EOF'
import http.client, os, re, resource, selectors, socket, subprocess, sys, time

edge, work, n, hold, states = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5].split(",")
fds = n + 1000
resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait(what, check, limit):
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"{what}: not within {limit}s")
        time.sleep(0.05)

os.makedirs(f"{work}/site")
open(f"{work}/site/index.html", "w").write("<!doctype html><title>idle</title><p>" + "x" * 600 + "\n")
subprocess.run([edge, "publish", f"{work}/site", "--site", "main", "--store", f"{work}/store"],
               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
open(f"{work}/edge.toml", "w").write(f"[server]\nmax_connections = {n + 500}\n")

H1_REQ = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
# Preface, an empty SETTINGS, and HEADERS (END_STREAM | END_HEADERS) on stream 1:
# :method GET, :scheme http, :path / (static table 2, 6, 4) and :authority localhost
# (literal without indexing, name index 1).
_block = b"\x82\x86\x84\x01\x09localhost"
H2_REQ = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
          + len(_block).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + _block)
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"

def h1_done(buf):
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buf[:end])
    if not buf.startswith(b"HTTP/1.1 200") or not m:
        raise RuntimeError(f"unexpected h1 response {buf[:80]!r}")
    return len(buf) >= end + 4 + int(m.group(1))

def h2_step(c):
    """Parses whole frames; answers SETTINGS; True once stream 1 ended."""
    buf = c["buf"]
    while len(buf) >= 9:
        length = int.from_bytes(buf[0:3], "big")
        if len(buf) < 9 + length:
            break
        kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        buf = buf[9 + length:]
        if kind == 4 and not flags & 1:
            c["sock"].sendall(SETTINGS_ACK)
        if kind == 7:
            raise RuntimeError("GOAWAY from the node")
        if stream == 1 and kind in (0, 1) and flags & 1:
            c["buf"] = buf
            return True
    c["buf"] = buf
    return False

def open_idle(port, state):
    """Opens n connections to `port` and brings each to `state`; at most 512 in progress."""
    sel = selectors.DefaultSelector()
    socks, started, done = [], 0, 0
    deadline = time.monotonic() + 120
    req = {"h1": H1_REQ, "h2c": H2_REQ}.get(state)
    while done < n:
        if time.monotonic() > deadline:
            sys.exit(f"{state}: only {done} of {n} connections ready within 120 s")
        while started < n and started - done < 512:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            c = {"sock": s, "buf": b""}
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE, c)
            started += 1
        for key, ev in sel.select(timeout=1):
            c, s = key.data, key.fileobj
            if ev & selectors.EVENT_WRITE:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sys.exit(f"connect failed: {os.strerror(err)}")
                if req is None:
                    sel.unregister(s); done += 1
                    continue
                s.setblocking(True); s.sendall(req); s.setblocking(False)
                sel.modify(s, selectors.EVENT_READ, c)
                continue
            data = s.recv(65536)
            if not data:
                sys.exit(f"{state}: the node closed a connection before its response")
            c["buf"] += data
            if state == "h1":
                finished = h1_done(c["buf"])
            else:
                s.setblocking(True); finished = h2_step(c); s.setblocking(False)
            if finished:
                sel.unregister(s); done += 1
    sel.close()
    return socks

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def gauges(admin):
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    get = lambda name: int(float(re.search(rf"^{name} (\S+)$", text, re.M).group(1)))
    return get("edge_connections_open"), get("edge_connections_idle"), get("edge_connections_parked")

def warm(port):
    for _ in range(3):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/", headers={"Host": "localhost"})
        assert c.getresponse().read()
        c.close()
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        c = {"sock": s, "buf": b""}
        s.sendall(H2_REQ)
        while not h2_step(c):
            c["buf"] += s.recv(65536)
        s.close()

def measure(state):
    port, admin = free_port(), free_port()
    log = open(f"{work}/edge-{state}.log", "ab")
    proc = subprocess.Popen(
        ["prlimit", f"--nofile={fds}:{fds}", edge, "serve", "--config", f"{work}/edge.toml",
         "--store", f"{work}/store", "--cache-dir", f"{work}/cache-{state}",
         "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
         "--default-site", "main"],
        stdout=subprocess.DEVNULL, stderr=log)
    socks = []
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait("edge serve", up, 30)
        warm(port)
        wait("warm-up connections closed", lambda: gauges(admin)[0] == 0, 10)
        time.sleep(1)
        before = rss_kib(proc.pid)
        t0 = time.monotonic()
        socks = open_idle(port, state)
        opened = time.monotonic() - t0
        wait(f"{state}: {n} connections open and idle at the node",
             lambda: gauges(admin)[:2] == (n, n), 30)
        time.sleep(hold)
        after = rss_kib(proc.pid)
        g = gauges(admin)
        if g[:2] != (n, n):
            sys.exit(f"{state}: connections closed during the hold: {g}")
        per = (after - before) / n
        print(f"{state:>9}: {n} idle connections ({g[2]} parked), VmRSS {before} -> {after} KiB: "
              f"{per:.2f} KiB per connection (opened in {opened:.1f} s)", flush=True)
        return per
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait()

results = {s: measure(s) for s in states}
print("KiB per idle connection: " + ", ".join(f"{s} {v:.2f}" for s, v in results.items()))
EOF
