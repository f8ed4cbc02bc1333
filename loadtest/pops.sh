#!/usr/bin/env bash
# The multi-PoP rig (issue 13 item 4): one S3 origin (s3s-fs behind a counting proxy), one
# nats-server, one parent edge and CHILDREN child edges (default 8), each its own process on
# 127.0.0.1, plus two network namespaces (a "core" one with two more parents and bridges to
# the origin and NATS, and a "pop" one with one more child) for the loss and partition
# scenarios. It runs the acceptance scenarios of issue 13 and prints one line (or table) per
# figure:
#
#   1  CHILDREN x CLIENTS clients ask for one cold BIG_MIB MiB object at once: origin fetches
#      of it (from the origin's side), every body compared (sha256) with the source file
#   2  the parent SIGKILLed while children serve cold objects: non-200s, the parent's breaker
#      opened in every child; the parent restarted: new cold objects go through it again
#   3  a byte-flipping proxy in front of the parent: wrong bytes served, wrong_bytes counted,
#      origin fetches per object (the children's fallback)
#   4  PUBLISHES publishes with refresh_interval = 60s: publish exit -> all children serve it
#   5  NATS stopped: OUTAGE publishes by fallback polling; NATS back: pushed again, no restart
#   6  LOSS % packet loss (nftables, both directions) between the namespaced child and its
#      parent A (parent B clean): cold objects, client errors, latency against no loss
#   7  the namespaced child cut off from NATS, origin and parents (nftables drop) for CUT s:
#      200s from last-known-good, a publish made during the cut served after the cut is lifted
#   8  origin pointer requests per minute, CHILDREN edges x SITES sites: polling only (5 s)
#      and with notifications (60 s), each counted over WINDOW seconds and extrapolated
#
#   loadtest/pops.sh                 # everything, full size (about 10 minutes)
#   QUICK=1 loadtest/pops.sh         # a smoke run: 2 MiB object, 10 clients, 100 sites, 15 s windows
#                                    # (a 15 s window is shorter than the 60 s interval: scenario 8's
#                                    # notifications figure is then 0 or one round)
#   SCENARIOS="1 4" loadtest/pops.sh # a subset (setup always runs)
#
# Variables (defaults; QUICK=1 in brackets): CHILDREN 8, CLIENTS 50 [10], BIG_MIB 10 [2],
# COLD 240 [60] (scenario 2 objects), PUBLISHES 50 [10], OUTAGE 5 [2], LOSS 20, LOSS_OBJECTS
# 40 [10], CUT 20 [8], SITES 1000 [100], WINDOW 60 [15], TIME_LIMIT 1500 (seconds, the whole
# run), EDGE_BIN (default $CARGO_TARGET_DIR/release/edge or target/release/edge), S3S_BIN.
# Needs root (ip netns, nft), python3, Debian's nats-server and s3s-fs (cargo install
# s3s-fs@0.14.1 --features binary --locked). Every server listens on 127.0.0.1 or inside the
# namespaces this script creates; every process it starts is stopped by PID and the
# namespaces are deleted on exit. On a shared machine figures are relative: run it when
# nothing else is benchmarking.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EDGE=${EDGE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/edge}
S3S=${S3S_BIN:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
[ -x "$EDGE" ] || { echo "no $EDGE: cargo build --release -p edge (or set EDGE_BIN)" >&2; exit 1; }
[ -x "$S3S" ] || { echo "no s3s-fs: cargo install s3s-fs@0.14.1 --features binary --locked" >&2; exit 1; }
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (ip netns, nft)" >&2; exit 1; }

TIME_LIMIT=${TIME_LIMIT:-1500}
WORK=$(mktemp -d /tmp/pops.XXXXXX)
NSC=popsc$$ # the PoP: one child edge, 10.77.0.1
NSP=popsp$$ # the core: parents A and B, bridges to origin and NATS, 10.77.0.2
VC=vpc$$
VP=vpp$$

cleanup() {
  # Every process the python side started, by PID (it records them; a PID is only killed
  # while its command line still names this run's folder).
  if [ -f "$WORK/pids" ]; then
    while read -r pid; do
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$WORK"; then
        kill -9 "$pid" 2>/dev/null || true
      fi
    done <"$WORK/pids"
    for _ in $(seq 50); do
      alive=0
      while read -r pid; do [ -d "/proc/$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$WORK" && alive=1; done <"$WORK/pids"
      [ $alive = 0 ] && break
      sleep 0.1
    done
  fi
  ip netns del "$NSC" 2>/dev/null || true
  ip netns del "$NSP" 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "work folder kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
PY=""
trap cleanup EXIT
# A signal stops the python side (it stops what it started), then cleanup runs.
trap 'if [ -n "$PY" ]; then kill -TERM "$PY" 2>/dev/null || true; wait "$PY" || true; fi; exit 130' INT TERM

ip netns add "$NSC"
ip netns add "$NSP"
ip link add "$VC" type veth peer name "$VP"
ip link set "$VC" netns "$NSC"
ip link set "$VP" netns "$NSP"
ip -n "$NSC" addr add 10.77.0.1/24 dev "$VC"
ip -n "$NSP" addr add 10.77.0.2/24 dev "$VP"
for ns in "$NSC" "$NSP"; do ip -n "$ns" link set lo up; done
ip -n "$NSC" link set "$VC" up
ip -n "$NSP" link set "$VP" up
ip netns exec "$NSC" nft add table inet pops

export EDGE S3S WORK NSC NSP TIME_LIMIT
timeout -k 10 $((TIME_LIMIT + 30)) python3 - <<'EOF' &
import base64, ctypes, hashlib, http.client, http.server, json, os, random, re, signal
import socket, socketserver, subprocess, sys, threading, time

E = os.environ
EDGE, S3S, WORK, NSC, NSP = E["EDGE"], E["S3S"], E["WORK"], E["NSC"], E["NSP"]
QUICK = E.get("QUICK", "") not in ("", "0")
def knob(name, full, quick):
    return int(E.get(name, quick if QUICK else full))
CHILDREN = knob("CHILDREN", 8, 8)
CLIENTS = knob("CLIENTS", 50, 10)
BIG_MIB = knob("BIG_MIB", 10, 2)
COLD = knob("COLD", 240, 60)
PUBLISHES = knob("PUBLISHES", 50, 10)
OUTAGE = knob("OUTAGE", 5, 2)
LOSS = knob("LOSS", 20, 20)
LOSS_OBJECTS = knob("LOSS_OBJECTS", 40, 10)
CUT = knob("CUT", 20, 8)
SITES = knob("SITES", 1000, 100)
WINDOW = knob("WINDOW", 60, 15)
SCENARIOS = set(E.get("SCENARIOS", "1 2 3 4 5 6 7 8").split())
TOKEN = "pops-rig-shared-secret-0123456789"
BUCKET, PREFIX = "pops", "p"
STORE = f"s3://{BUCKET}/{PREFIX}"
CREDS = {"AWS_ACCESS_KEY_ID": "rig", "AWS_SECRET_ACCESS_KEY": "rigsecret", "AWS_REGION": "us-east-1",
         "AWS_ALLOW_HTTP": "true"}

class Abort(Exception):
    pass

class Stop(Abort):
    """The whole run ends: its time limit, or a signal."""

def on_alarm(*_):
    raise Stop(f"time limit ({E['TIME_LIMIT']} s) reached")
def on_term(*_):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # timeout(1) signals its whole group too
    raise Stop("stopped by a signal")
signal.signal(signal.SIGALRM, on_alarm)
signal.signal(signal.SIGTERM, on_term)
signal.alarm(int(E["TIME_LIMIT"]))

T0 = time.monotonic()
def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)

def figure(msg):
    print(msg, flush=True)
    with open(f"{WORK}/figures", "a") as f:
        f.write(msg + "\n")

# ---------------------------------------------------------------- namespaces (per thread)
libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000
ROOT_NS = os.open("/proc/self/ns/net", os.O_RDONLY)
NS_FD = {}
def enter(ns):
    """Moves the calling thread into network namespace ns (None: the root one). Sockets made
    afterwards live there for good."""
    fd = ROOT_NS if ns is None else NS_FD.setdefault(ns, os.open(f"/run/netns/{ns}", os.O_RDONLY))
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns {ns}")

class InNs:
    def __init__(self, ns): self.ns = ns
    def __enter__(self):
        if self.ns: enter(self.ns)
    def __exit__(self, *a):
        if self.ns: enter(None)

# ---------------------------------------------------------------- processes, by PID
procs = {}
def spawn(name, argv, env=None, ns=None):
    if ns:
        argv = ["ip", "netns", "exec", ns] + argv  # ip execs the command: same PID
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/{name}.log", "ab"),
                         env=env, stdin=subprocess.DEVNULL)
    with open(f"{WORK}/pids", "a") as f:
        f.write(f"{p.pid}\n")
    procs[name] = p
    return p

def kill(name, sig=signal.SIGKILL):
    p = procs.pop(name, None)
    if p and p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill(); p.wait()

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait(what, check, limit, every=0.02):
    deadline = time.monotonic() + limit
    while True:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise Abort(f"{what}: not within {limit}s")
        time.sleep(every)

def port_open(host, port, ns=None):
    with InNs(ns):
        s = socket.socket()
    s.settimeout(1)
    try:
        s.connect((host, port)); return True
    except OSError:
        return False
    finally:
        s.close()

def http_get(host, port, path, hdrs=None, ns=None, timeout=30):
    """(status, body, headers)"""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    with InNs(ns):
        c.connect()
    try:
        c.request("GET", path, headers=hdrs or {"Host": "localhost"})
        r = c.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        c.close()

# ---------------------------------------------------------------- the origin's side: counting proxy
class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.objects = {}        # hash -> GETs
        self.pointers = 0        # GET sites/*/current
        self.host_index = 0      # GET host-index
        self.hosts = 0           # GET hosts/*
        self.other = 0
    def snapshot(self):
        with self.lock:
            return dict(objects=dict(self.objects), pointers=self.pointers, host_index=self.host_index,
                        hosts=self.hosts, other=self.other)
COUNTS = Counts()
OBJ_RE = re.compile(rf"^/{BUCKET}/{PREFIX}/objects/[0-9a-f]{{2}}/([0-9a-f]{{64}})$")
PTR_RE = re.compile(rf"^/{BUCKET}/{PREFIX}/sites/[^/]+/current$")
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}

def relay_upstream(handler, port, transform=None):
    """Forwards handler's request to 127.0.0.1:port; returns False when upstream is down.
    transform(path, body) may rewrite a whole body."""
    n = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(n) if n else None
    for attempt in (0, 1):
        if handler.up is None:
            handler.up = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            handler.up.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
            for k, v in handler.headers.items():
                if k.lower() not in HOP and k.lower() != "content-length":
                    handler.up.putheader(k, v)
            if body is not None:
                handler.up.putheader("Content-Length", str(len(body)))
            handler.up.endheaders(body)
            r = handler.up.getresponse()
            break
        except (OSError, http.client.HTTPException):
            handler.up.close(); handler.up = None
            if attempt:
                return False
    handler.send_response_only(r.status, r.reason)
    length = r.getheader("Content-Length")
    whole = (transform is not None or length is None) and handler.command != "HEAD"
    data = r.read() if whole else None
    if transform is not None and r.status == 200 and handler.command == "GET":
        data = transform(handler.path, data)
    for k, v in r.getheaders():
        if k.lower() not in HOP and k.lower() != "content-length":
            handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)) if whole else (length or "0"))
    handler.end_headers()
    if handler.command == "HEAD":
        return True
    if whole:
        handler.wfile.write(data)
    else:
        while True:
            chunk = r.read(256 * 1024)
            if not chunk:
                break
            handler.wfile.write(chunk)
    return True

class OriginProxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms delayed-ACK stall
    def setup(self):
        super().setup(); self.up = None
    def log_message(self, *a):
        pass
    def handle_one(self):
        path = self.path.split("?", 1)[0]
        if self.command == "GET":
            with COUNTS.lock:
                m = OBJ_RE.match(path)
                if m:
                    COUNTS.objects[m.group(1)] = COUNTS.objects.get(m.group(1), 0) + 1
                elif PTR_RE.match(path):
                    COUNTS.pointers += 1
                elif path == f"/{BUCKET}/{PREFIX}/host-index":
                    COUNTS.host_index += 1
                elif path.startswith(f"/{BUCKET}/{PREFIX}/hosts/"):
                    COUNTS.hosts += 1
                else:
                    COUNTS.other += 1
        if not relay_upstream(self, S3_PORT):
            self.send_error(502)
    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_one

class FlipProxy(http.server.BaseHTTPRequestHandler):
    """In front of a parent: flips one byte in the middle of every object body it relays."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    flipped = 0
    def setup(self):
        super().setup(); self.up = None
    def log_message(self, *a):
        pass
    def do_GET(self):
        def flip(path, data):
            if "/.edge/objects/" in path and data:
                FlipProxy.flipped += 1
                i = len(data) // 2
                return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
            return data
        if not relay_upstream(self, FLIP_TO, flip):
            self.close_connection = True
    do_HEAD = do_GET

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 512
    def handle_error(self, request, client_address):
        pass  # a peer that went away (a killed parent, a reset connection): nothing to report

def serve_in_thread(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

def bridge(ns, addr, port, to_port):
    """A TCP listener inside namespace ns at addr:port piping to 127.0.0.1:to_port in the root
    namespace (the namespaced edges' way to the origin and NATS)."""
    enter(ns)
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port)); ls.listen(256)
    enter(None)
    def pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try: s.shutdown(socket.SHUT_RDWR)
                except OSError: pass
    def loop():
        while True:
            c, _ = ls.accept()
            try:
                u = socket.create_connection(("127.0.0.1", to_port), timeout=5)
                u.settimeout(None)
                for x in (c, u):
                    x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                c.close(); continue
            threading.Thread(target=pipe, args=(c, u), daemon=True).start()
            threading.Thread(target=pipe, args=(u, c), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()

# ---------------------------------------------------------------- nats, edges
NATS_PORT = free_port()
NATS_URL = f"nats://127.0.0.1:{NATS_PORT}"
def start_nats():
    spawn("nats", ["nats-server", "-a", "127.0.0.1", "-p", str(NATS_PORT), "-l", f"{WORK}/nats-server.log"])
    def up():
        with socket.create_connection(("127.0.0.1", NATS_PORT), timeout=1) as s:
            return s.recv(4).startswith(b"INFO")
    wait("nats-server", up, 10)

def metrics_text(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try: out[k] = float(v)
            except ValueError: pass
    return out

class Edge:
    def __init__(self, name, *, parents=(), serve_children=False, notify=None, refresh="60s",
                 listen=None, ns=None, origin=None, extra="", admin=None):
        self.name, self.ns, self.parents = name, ns, list(parents)
        self.host, self.port = listen or ("127.0.0.1", free_port())
        self.admin = admin or (9901 if ns else free_port())
        self.serve_children, self.notify, self.refresh, self.extra = serve_children, notify, refresh, extra
        self.origin = origin or f"http://127.0.0.1:{PROXY_PORT}"
        self.conn = None
        self.start()

    def start(self):
        cfg = f"{WORK}/{self.name}.toml"
        text = f'[pointers]\nrefresh_interval = "{self.refresh}"\n[tiers]\ntoken = "{TOKEN}"\n'
        if self.serve_children:
            text += "serve_children = true\n"
        if self.notify:
            text += f'[notify]\nnats = "{self.notify}"\n'
        open(cfg, "w").write(text + self.extra)
        argv = [EDGE, "serve", "--config", cfg, "--store", STORE, "--cache-dir", f"{WORK}/cache-{self.name}",
                "--listen", f"{self.host}:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin}",
                "--default-site", "main"]
        if self.parents:
            argv += ["--parent", ",".join(self.parents)]
        env = dict(os.environ, **CREDS, AWS_ENDPOINT_URL=self.origin)
        spawn(self.name, argv, env=env, ns=self.ns)
        self.conn = None
        wait(f"{self.name} ready", lambda: self.admin_get("/readyz")[0] == 200, 30, 0.05)

    def stop(self, sig=signal.SIGKILL):
        kill(self.name, sig)

    def restart(self, **kw):
        self.stop(signal.SIGTERM)
        for k, v in kw.items():
            setattr(self, k, v)
        self.start()

    def url(self):
        return f"http://{self.host}:{self.port}"

    def admin_get(self, path):
        return http_get("127.0.0.1", self.admin, path, ns=self.ns, timeout=10)

    def metrics(self):
        return metrics_text(self.admin_get("/metrics")[1].decode())

    def status(self):
        return json.loads(self.admin_get("/status")[1])

    def get(self, path, host="localhost", timeout=30):
        return http_get(self.host, self.port, path, {"Host": host}, ns=self.ns, timeout=timeout)

    def body(self, path="/"):
        # One keep-alive connection, reopened when the node closed it.
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                    with InNs(self.ns):
                        self.conn.connect()
                self.conn.request("GET", path, headers={"Host": "localhost"})
                return self.conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                self.conn = None
        return b""

def publish(content, notify=True):
    open(f"{WORK}/site/index.html", "w").write(content)
    argv = [EDGE, "publish", f"{WORK}/site", "--site", "main", "--store", STORE]
    if notify:
        argv += ["--notify", NATS_URL]
    env = dict(os.environ, **CREDS, AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}")  # not counted
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    exited = time.monotonic()
    if r.returncode != 0:
        raise Abort(f"publish failed: {r.stderr}")
    return exited, r

def all_serve(nodes, content, since, limit):
    want = content.encode()
    pending = set(range(len(nodes)))
    while pending:
        for i in list(pending):
            if nodes[i].body() == want:
                pending.discard(i)
        if time.monotonic() - since > limit:
            raise Abort(f"{content!r}: {[nodes[i].name for i in sorted(pending)]} did not serve it within {limit}s")
        if pending:
            time.sleep(0.001)
    return time.monotonic() - since

def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]

def dist(xs, unit="ms", scale=1000):
    v = [x * scale for x in xs]
    return f"n={len(v)} p50={quantile(v, .5):.1f} {unit} p99={quantile(v, .99):.1f} {unit} max={max(v):.1f} {unit}"

def sha(b):
    return hashlib.sha256(b).hexdigest()

def parent_row(st, url):
    for p in st.get("parents") or []:
        if p["url"].rstrip("/") == url.rstrip("/"):
            return p
    return None

def parallel(fns):
    out = [None] * len(fns)
    def run(i):
        try: out[i] = fns[i]()
        except Exception as e: out[i] = e
    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(fns))]
    for t in ts: t.start()
    for t in ts: t.join(120)
    return out

# ---------------------------------------------------------------- set-up
failed = []
def check(ok, what):
    if not ok:
        failed.append(what)
    return "ok" if ok else "FAIL"

try:
    S3_PORT = free_port()
    os.makedirs(f"{WORK}/s3/{BUCKET}")
    spawn("s3s-fs", [S3S, "--access-key", CREDS["AWS_ACCESS_KEY_ID"], "--secret-key", CREDS["AWS_SECRET_ACCESS_KEY"],
                     "--host", "127.0.0.1", "--port", str(S3_PORT), f"{WORK}/s3"])
    wait("s3s-fs", lambda: port_open("127.0.0.1", S3_PORT), 10)
    proxy = serve_in_thread(Server(("127.0.0.1", 0), OriginProxy))
    PROXY_PORT = proxy.server_address[1]

    # The site: index.html (the deploy marker), one big cold object, and cold small files
    # for each scenario, all in the first deploy (children prefetch its tree nodes, never
    # its blobs).
    rnd = random.Random(13)
    site = f"{WORK}/site"
    files = {}
    def put(rel, data):
        p = f"{site}/{rel}"
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").write(data)
        files[rel] = data
    put("big.bin", rnd.randbytes(BIG_MIB << 20))
    for i in range(COLD):
        put(f"s2/f{i:04d}.bin", rnd.randbytes(32 << 10))
    for i in range(16):
        put(f"s2b/f{i:04d}.bin", rnd.randbytes(32 << 10))
    for i in range(24):
        put(f"s3/f{i:04d}.bin", rnd.randbytes(1 + rnd.randrange(200 << 10)))
    for phase in ("s6base", "s6loss", "s6dead"):
        for i in range(LOSS_OBJECTS):
            put(f"{phase}/f{i:04d}.bin", rnd.randbytes(256 << 10))
    for i in range(8):
        put(f"s7/f{i:04d}.bin", rnd.randbytes(16 << 10))
    exited, r = publish("v0", notify=False)
    log(f"published the site: {len(files)} files, {sum(map(len, files.values())) >> 20} MiB")
    # which object is which file: blake3 names them; take it from the store's tree via a
    # child's... simpler: the origin's object files are matched by content hash below.
    by_sha = {}
    objdir = f"{WORK}/s3/{BUCKET}/{PREFIX}/objects"
    for hh in os.listdir(objdir):
        for h in os.listdir(f"{objdir}/{hh}"):
            by_sha[sha(open(f"{objdir}/{hh}/{h}", "rb").read())] = h
    key_of = {rel: by_sha[sha(data)] for rel, data in files.items()}

    # SITES more sites for scenario 8, all on one tiny deploy: pointers and the host index
    # written straight into s3s-fs's folder (with its ETag file), instead of SITES publishes.
    os.makedirs(f"{WORK}/tiny")
    open(f"{WORK}/tiny/index.html", "w").write("tiny")
    env = dict(os.environ, **CREDS, AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}")
    subprocess.run([EDGE, "publish", f"{WORK}/tiny", "--site", "tiny", "--store", STORE], env=env,
                   check=True, capture_output=True, timeout=60)
    tiny = json.load(open(f"{WORK}/s3/{BUCKET}/{PREFIX}/sites/tiny/current"))
    def s3_write(key, data):
        p = f"{WORK}/s3/{BUCKET}/{key}"
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").write(data)
        b = lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")
        meta = f"{WORK}/s3/.bucket-{b(BUCKET)}.object-{b(key)}"
        open(meta + ".internal.json", "w").write(json.dumps({"e_tag": hashlib.md5(data).hexdigest()}))
        open(meta + ".metadata.json", "w").write("{}")
    hosts = {}
    for i in range(SITES):
        s = f"s{i:04d}"
        s3_write(f"{PREFIX}/sites/{s}/current", json.dumps(dict(tiny, site=s)).encode())
        hosts[f"{s}.test"] = s
        s3_write(f"{PREFIX}/hosts/{s}.test", json.dumps({"host": f"{s}.test", "site": s}).encode())
    s3_write(f"{PREFIX}/host-index", json.dumps({"version": 1, "hosts": hosts}).encode())

    start_nats()
    parent = Edge("parent", serve_children=True)
    children = [Edge(f"child{i}", parents=[parent.url()], notify=NATS_URL) for i in range(CHILDREN)]
    for c in children:
        wait(f"{c.name} serving v0", lambda: c.body() == b"v0", 30)
        wait(f"{c.name} on NATS", lambda: (c.status().get("notify") or {}).get("connected") is True, 15)
    log(f"origin s3s-fs :{S3_PORT} behind counting proxy :{PROXY_PORT}, nats :{NATS_PORT}, "
        f"parent :{parent.port}, {CHILDREN} children (refresh 60s, notify), {EDGE}")

    # ------------------------------------------------------------ 1. one cold big object
    def s1():
        want = sha(files["big.bin"]); key = key_of["big.bin"]
        before = COUNTS.snapshot()["objects"].get(key, 0)
        barrier = threading.Barrier(CHILDREN * CLIENTS, timeout=60)
        def client(c):
            conn = http.client.HTTPConnection(c.host, c.port, timeout=120)
            conn.connect()
            barrier.wait()
            t = time.monotonic()
            conn.request("GET", "/big.bin", headers={"Host": "localhost"})
            r = conn.getresponse()
            h = hashlib.sha256(); n = 0
            while True:
                d = r.read(1 << 20)
                if not d: break
                h.update(d); n += len(d)
            conn.close()
            return r.status, n, h.hexdigest(), time.monotonic() - t
        res = parallel([lambda c=c: client(c) for c in children for _ in range(CLIENTS)])
        errs = [x for x in res if isinstance(x, Exception) or x is None]
        ok = [x for x in res if isinstance(x, tuple)]
        same = sum(1 for s, n, h, _ in ok if s == 200 and h == want)
        fetched = COUNTS.snapshot()["objects"].get(key, 0) - before
        served = sum(c.metrics().get('edge_child_requests_total{result="ok"}', 0) for c in [parent])
        figure(f"S1 {CHILDREN} children x {CLIENTS} clients, cold {BIG_MIB} MiB object at once: "
               f"origin GETs of it = {fetched} [{check(fetched == 1, 'S1 origin fetches')}]; "
               f"byte-identical (sha256) bodies = {same}/{CHILDREN * CLIENTS} "
               f"[{check(same == CHILDREN * CLIENTS, 'S1 identical bodies')}]; client errors {len(errs)}; "
               f"parent answered {served:.0f} child requests; time to last byte "
               + (dist([x[3] for x in ok], "s", 1) if ok else "-"))

    # ------------------------------------------------------------ 2. parent killed, restarted
    def s2():
        paths = [f"/s2/f{i:04d}.bin" for i in range(COLD)]
        done = [0]; lock = threading.Lock(); bad = []; wrong = [0]
        per_thread = 4
        def worker(c, mine):
            conn = None
            for p in mine:
                for attempt in (0, 1):
                    try:
                        if conn is None:
                            conn = http.client.HTTPConnection(c.host, c.port, timeout=30)
                        conn.request("GET", p, headers={"Host": "localhost"})
                        r = conn.getresponse(); b = r.read()
                        break
                    except (OSError, http.client.HTTPException) as e:
                        conn = None
                        if attempt:
                            r, b = None, repr(e)
                with lock:
                    done[0] += 1
                    if r is None or r.status != 200:
                        bad.append((c.name, p, r.status if r else b))
                    elif b != files[p[1:]]:
                        wrong[0] += 1
                time.sleep(0.005)
        fns = []
        for c in children:
            order = paths[:]; random.Random(c.name).shuffle(order)
            for t in range(per_thread):
                fns.append(lambda c=c, m=order[t::per_thread]: worker(c, m))
        total = len(fns) * (COLD // per_thread)
        killed_at = [None]
        def killer():
            wait("a third of the load", lambda: done[0] >= total // 3, 120, 0.005)
            killed_at[0] = done[0]
            parent.stop(signal.SIGKILL)
        kt = threading.Thread(target=killer, daemon=True); kt.start()
        t = time.monotonic()
        parallel(fns)
        took = time.monotonic() - t
        kt.join(5)
        opened = {}
        for c in children:
            row = parent_row(c.status(), parent.url()) or {}
            opened[c.name] = (row.get("opened", 0), row.get("breaker"), row.get("errors"))
        all_opened = all(v[0] >= 1 for v in opened.values())
        figure(f"S2 parent SIGKILLed after {killed_at[0]} of {done[0]} requests ({CHILDREN} children x {per_thread} "
               f"clients, {COLD} cold 32 KiB objects each, {took:.1f} s): non-200 = {len(bad)} "
               f"[{check(not bad, 'S2 non-200s')}], wrong bodies = {wrong[0]}; parent breaker opened in "
               f"{sum(v[0] >= 1 for v in opened.values())}/{CHILDREN} children [{check(all_opened, 'S2 breakers')}]")
        for name, (n, state, errors) in opened.items():
            figure(f"S2   {name}: breaker opened {n}x, now {state}, errors {errors}")
        if bad:
            figure(f"S2   first non-200s: {bad[:5]}")
        # Restart on the same port and cache folder; wait out breaker_open (5 s), then new
        # cold objects, each asked of every child at once.
        parent.start()
        time.sleep(5.5)
        before = COUNTS.snapshot()["objects"]
        b2 = [f"s2b/f{i:04d}.bin" for i in range(16)]
        bad2 = 0
        for rel in b2:
            res = parallel([lambda c=c: c.get("/" + rel) for c in children])
            bad2 += sum(1 for x in res if not isinstance(x, tuple) or x[0] != 200 or x[1] != files[rel])
        after = COUNTS.snapshot()["objects"]
        per = [after.get(key_of[r], 0) - before.get(key_of[r], 0) for r in b2]
        served = parent.metrics().get('edge_child_requests_total{result="ok"}', 0)
        states = [(parent_row(c.status(), parent.url()) or {}).get("breaker") for c in children]
        figure(f"S2 parent restarted: {len(b2)} new cold objects x {CHILDREN} children: bad answers {bad2}, "
               f"parent answered {served:.0f} child requests [{check(served >= len(b2), 'S2 parent used again')}], "
               f"origin GETs per object {min(per)}..{max(per)} [{check(max(per) == 1, 'S2 one fetch after restart')}], "
               f"children's breakers: {sorted(set(map(str, states)))}")

    # ------------------------------------------------------------ 3. a byte-flipping parent
    def s3():
        global FLIP_TO
        FLIP_TO = parent.port
        flipper = serve_in_thread(Server(("127.0.0.1", 0), FlipProxy))
        flip_url = f"http://127.0.0.1:{flipper.server_address[1]}"
        for c in children:
            c.restart(parents=[flip_url])
        m0 = [c.metrics() for c in children]
        before = COUNTS.snapshot()["objects"]
        s3 = [f"s3/f{i:04d}.bin" for i in range(24)]
        wrong_bytes = 0; bad = 0; answers = 0
        for rel in s3:
            for x in parallel([lambda c=c: c.get("/" + rel) for c in children]):
                answers += 1
                if not isinstance(x, tuple) or x[0] != 200:
                    bad += 1; continue
                src = files[rel]
                wrong_bytes += sum(a != b for a, b in zip(x[1], src)) + abs(len(x[1]) - len(src))
        key = f'edge_parent_errors_total{{parent="{flip_url}",kind="wrong_bytes"}}'
        counted = sum(c.metrics().get(key, 0) - m.get(key, 0) for c, m in zip(children, m0))
        after = COUNTS.snapshot()["objects"]
        per = [after.get(key_of[r], 0) - before.get(key_of[r], 0) for r in s3]
        figure(f"S3 flipping parent: {len(s3)} cold objects x {CHILDREN} children = {answers} answers, non-200 {bad}, "
               f"wrong bytes served = {wrong_bytes} [{check(wrong_bytes == 0 and bad == 0, 'S3 wrong bytes')}]; "
               f"bodies flipped by the proxy {FlipProxy.flipped}, children counted wrong_bytes {counted:.0f}; "
               f"origin GETs per object {min(per)}..{max(per)} (1 by the parent + 1 per child falling back = {1 + CHILDREN})")
        for c in children:
            c.restart(parents=[parent.url()])
        flipper.shutdown()
        for c in children:
            wait(f"{c.name} on NATS", lambda: (c.status().get("notify") or {}).get("connected") is True, 15)

    # ------------------------------------------------------------ 4. pushed publishes
    version = [0]
    def next_content(tag):
        version[0] += 1
        return f"{tag} {version[0]}"
    def s4():
        took = []
        for _ in range(PUBLISHES):
            content = next_content("pushed")
            exited, _ = publish(content)
            took.append(all_serve(children, content, exited, 10))
        p99 = quantile(took, .99)
        figure(f"S4 {PUBLISHES} publishes, refresh_interval 60s, publish exit -> all {CHILDREN} children serve it: "
               f"{dist(took)} [{check(p99 < 1, 'S4 p99 < 1 s')}]")

    # ------------------------------------------------------------ 5. NATS down and back
    def s5():
        kill("nats")
        wait("children see NATS gone", lambda: all((c.status().get("notify") or {}).get("connected") is False
                                                  for c in children), 30, 0.1)
        polled = []
        for _ in range(OUTAGE):
            content = next_content("polled")
            exited, r = publish(content)
            polled.append(all_serve(children, content, exited, 15))
        figure(f"S5 NATS stopped: {OUTAGE} publishes reached all {CHILDREN} children by fallback polling (5 s): "
               f"{dist(polled)} [{check(max(polled) <= 5.5, 'S5 within one polling interval')}]")
        t = time.monotonic()
        start_nats()
        wait("children reconnect", lambda: all((c.status().get("notify") or {}).get("connected") is True
                                              for c in children), 60, 0.05)
        back = time.monotonic() - t
        again = []
        for _ in range(OUTAGE):
            content = next_content("pushed again")
            exited, _ = publish(content)
            again.append(all_serve(children, content, exited, 10))
        figure(f"S5 NATS back on port {NATS_PORT}: all children reconnected {back:.2f} s after it started "
               f"(no restart); {OUTAGE} publishes pushed: {dist(again)} [{check(max(again) < 1, 'S5 pushes resume')}]")

    # ------------------------------------------------------------ 6, 7: the namespaces
    NSE = {}
    def ns_setup():
        # core (10.77.0.2): bridges to the origin proxy and NATS, parents A (:8081), B (:8082)
        bridge(NSP, "10.77.0.2", 9000, PROXY_PORT)
        bridge(NSP, "10.77.0.2", 4222, NATS_PORT)
        ns_origin = "http://10.77.0.2:9000"
        pa = Edge("parentA", serve_children=True, ns=NSP, admin=9901, listen=("10.77.0.2", 8081), origin=ns_origin)
        pb = Edge("parentB", serve_children=True, ns=NSP, admin=9902, listen=("10.77.0.2", 8082), origin=ns_origin)
        pop = Edge("popchild", parents=[pa.url(), pb.url()], notify="nats://10.77.0.2:4222", ns=NSC,
                   listen=("10.77.0.1", 8080), origin=ns_origin)
        wait("popchild serving", lambda: pop.get("/")[0] == 200, 30)
        wait("popchild on NATS", lambda: (pop.status().get("notify") or {}).get("connected") is True, 15)

        def nft(*rule):
            subprocess.run(["ip", "netns", "exec", NSC, "nft"] + list(rule), check=True, timeout=10)
        NSE.update(pop=pop, pa=pa, pb=pb, nft=nft)

    def s6():
        pop, pa, pb, nft = NSE["pop"], NSE["pa"], NSE["pb"], NSE["nft"]
        def cold_run(phase):
            lat, bad = [], 0
            for i in range(LOSS_OBJECTS):
                rel = f"{phase}/f{i:04d}.bin"
                t = time.monotonic()
                try:
                    s, b, _ = pop.get("/" + rel, timeout=60)
                    ok = s == 200 and b == files[rel]
                except (OSError, http.client.HTTPException):
                    ok = False
                lat.append(time.monotonic() - t)
                bad += not ok
            return lat, bad
        def prow():
            st = pop.status()
            return {n: parent_row(st, u) or {} for n, u in (("A", pa.url()), ("B", pb.url()))}
        def origin_gets(phase):
            snap = COUNTS.snapshot()["objects"]
            return sum(snap.get(key_of[f"{phase}/f{i:04d}.bin"], 0) for i in range(LOSS_OBJECTS))
        r0 = prow()
        base_lat, base_bad = cold_run("s6base")
        r1 = prow()
        nft("add", "chain", "inet", "pops", "loss_out", "{ type filter hook output priority 0; }")
        nft("add", "chain", "inet", "pops", "loss_in", "{ type filter hook input priority 0; }")
        nft("add", "rule", "inet", "pops", "loss_out", "ip", "daddr", "10.77.0.2", "tcp", "dport", "8081",
            "numgen", "random", "mod", "100", "<", str(LOSS), "drop")
        nft("add", "rule", "inet", "pops", "loss_in", "ip", "saddr", "10.77.0.2", "tcp", "sport", "8081",
            "numgen", "random", "mod", "100", "<", str(LOSS), "drop")
        loss_lat, loss_bad = cold_run("s6loss")
        r2 = prow()
        nft("delete", "chain", "inet", "pops", "loss_out")
        nft("delete", "chain", "inet", "pops", "loss_in")
        # For comparison: parent A unreachable (every packet dropped), so its objects must
        # come from their next parent, B.
        nft("add", "chain", "inet", "pops", "dead_out", "{ type filter hook output priority 0; }")
        nft("add", "rule", "inet", "pops", "dead_out", "ip", "daddr", "10.77.0.2", "tcp", "dport", "8081", "drop")
        dead_lat, dead_bad = cold_run("s6dead")
        r3 = prow()
        nft("delete", "chain", "inet", "pops", "dead_out")
        def delta(a, b, n):
            e = {k: b[n]["errors"].get(k, 0) - a[n]["errors"].get(k, 0) for k in b[n].get("errors", {})}
            return f"fetches {b[n]['fetches'] - a[n]['fetches']}, errors {({k: v for k, v in e.items() if v}) or 0}, breaker opened {b[n]['opened'] - a[n]['opened']}x"
        figure(f"S6 no loss: {LOSS_OBJECTS} cold 256 KiB objects through the namespaced child: client errors {base_bad}, "
               f"latency {dist(base_lat)}; parent A {delta(r0, r1, 'A')}; parent B {delta(r0, r1, 'B')}; "
               f"origin GETs {origin_gets('s6base')}")
        figure(f"S6 {LOSS}% loss both ways on the link to parent A: {LOSS_OBJECTS} cold objects: client errors {loss_bad} "
               f"[{check(loss_bad == 0, 'S6 client errors')}], latency {dist(loss_lat)}; parent A {delta(r1, r2, 'A')}; "
               f"parent B {delta(r1, r2, 'B')}; origin GETs {origin_gets('s6loss')} (1 per object: the parents' fills)")
        figure(f"S6 parent A unreachable (100% drop, for comparison): {LOSS_OBJECTS} cold objects: client errors {dead_bad} "
               f"[{check(dead_bad == 0, 'S6 blackhole client errors')}], latency {dist(dead_lat)}; parent A {delta(r2, r3, 'A')}; "
               f"parent B {delta(r2, r3, 'B')}; origin GETs {origin_gets('s6dead')}")
        figure(f"S6 added latency with loss: p50 {(quantile(loss_lat, .5) - quantile(base_lat, .5)) * 1000:+.1f} ms, "
               f"p99 {(quantile(loss_lat, .99) - quantile(base_lat, .99)) * 1000:+.1f} ms, "
               f"mean {(sum(loss_lat) / len(loss_lat) - sum(base_lat) / len(base_lat)) * 1000:+.1f} ms")

    def s7():
        pop, nft = NSE["pop"], NSE["nft"]
        warm = [f"/s7/f{i:04d}.bin" for i in range(8)]
        for p in warm:
            pop.get(p)
        current = pop.get("/")[1]
        nft("add", "chain", "inet", "pops", "cut_out", "{ type filter hook output priority 0; }")
        nft("add", "chain", "inet", "pops", "cut_in", "{ type filter hook input priority 0; }")
        nft("add", "rule", "inet", "pops", "cut_out", "ip", "daddr", "10.77.0.2", "drop")
        nft("add", "rule", "inet", "pops", "cut_in", "ip", "saddr", "10.77.0.2", "drop")
        cut_at = time.monotonic()
        content = next_content("during the cut")
        publish(content)
        ok = bad = stale = 0
        while time.monotonic() - cut_at < CUT:
            for p in ["/"] + warm:
                try:
                    s, b, _ = pop.get(p, timeout=10)
                except (OSError, http.client.HTTPException):
                    s, b = None, b""
                if s == 200 and (b == current if p == "/" else b == files[p[1:]]):
                    ok += 1
                else:
                    bad += 1
            time.sleep(0.05)
        nst = pop.status().get("notify") or {}
        nft("delete", "chain", "inet", "pops", "cut_out")
        nft("delete", "chain", "inet", "pops", "cut_in")
        lifted = time.monotonic()
        all_serve([pop], content, lifted, 90)
        caught = time.monotonic() - lifted
        nst2 = pop.status().get("notify") or {}
        figure(f"S7 cut off from NATS, origin and parents for {CUT} s (nft drop in the PoP namespace): "
               f"{ok} requests for cached paths answered 200 with the last-known-good deploy, {bad} otherwise "
               f"[{check(bad == 0, 'S7 serving while cut')}]; notify connected at the end of the cut: {nst.get('connected')}")
        # How it caught up: a pushed hint (accepted), the catch-up round after a NATS
        # reconnect (disconnects), or the refresh round that fell due (neither).
        figure(f"S7 rule lifted: the publish made during the cut served {caught:.2f} s later "
               f"[{check(caught < 65, 'S7 catch-up')}] (notify then: disconnects {nst2.get('disconnects')}, "
               f"accepted hints {(nst2.get('messages') or {}).get('accepted')}, hint refreshes {nst2.get('refreshes')})")
        time.sleep(8)
        nst3 = pop.status().get("notify") or {}
        figure(f"S7 8 s later: NATS connected {nst3.get('connected')}, disconnects {nst3.get('disconnects')}, "
               f"accepted hints {(nst3.get('messages') or {}).get('accepted')}")

    # ------------------------------------------------------------ 8. pointer load on the origin
    def s8():
        def cache_sites():
            def per(c):
                bad = 0
                for i in range(SITES):
                    s, b, _ = c.get("/", host=f"s{i:04d}.test")
                    bad += s != 200 or b != b"tiny"
                return bad
            bad = parallel([lambda c=c: per(c) for c in children])
            if any(bad):
                raise Abort(f"S8: sites not served: {bad}")
        def window(label):
            a = COUNTS.snapshot(); t = time.monotonic()
            time.sleep(WINDOW)
            b = COUNTS.snapshot(); dt = time.monotonic() - t
            ptr = b["pointers"] - a["pointers"]; hix = b["host_index"] - a["host_index"]; hst = b["hosts"] - a["hosts"]
            per_min = (ptr + hix + hst) * 60 / dt
            figure(f"S8 {label}: {CHILDREN} edges x {SITES} sites, {dt:.0f} s window: {ptr} pointer GETs + {hix} "
                   f"host-index GETs + {hst} host GETs at the origin = {per_min:,.0f} per minute (extrapolated)")
            return per_min
        cache_sites()
        notified = window("notifications on, refresh_interval 60s")
        for c in children:
            c.restart(notify=None, refresh="5s")
        cache_sites()
        polling = window("polling only, refresh_interval 5s (default)")
        figure(f"S8 polling / notifications = {polling / max(notified, 1):.1f}x "
               f"(expected about {CHILDREN * SITES * 12:,} vs {CHILDREN * SITES:,} per minute)")

    for n, fn in [("1", s1), ("2", s2), ("3", s3), ("4", s4), ("5", s5), ("6", s6), ("7", s7), ("8", s8)]:
        if n not in SCENARIOS:
            continue
        try:
            if n in "67" and not NSE:
                ns_setup()
            log(f"scenario {n}")
            fn()
        except Stop:
            raise
        except Abort as e:
            figure(f"S{n} FAILED: {e}")
            failed.append(f"S{n} aborted")
    log("done" + (f"; FAILED: {', '.join(failed)}" if failed else "; every check passed"))
    sys.exit(1 if failed else 0)
except Abort as e:
    log(f"aborted: {e}")
    sys.exit(2)
finally:
    signal.alarm(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for name in list(procs):
        kill(name)
EOF
PY=$!
wait "$PY"
