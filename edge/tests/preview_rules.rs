//! `edge preview DIR` applies `_redirects` and `_headers` and compresses, like a publish, and
//! rebuilds them when they change; a bad rules file keeps the previous version serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// GET over a fresh connection, with extra header lines.
fn get(addr: &str, path: &str, extra: &str) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    }
}

/// Polls until `check` accepts the answer to `path` (at most 10 s).
fn wait_for(addr: &str, path: &str, check: impl Fn(&Answer) -> bool) -> Answer {
    let start = Instant::now();
    loop {
        let a = get(addr, path, "");
        if check(&a) {
            return a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{path}: still {} {}",
            a.status,
            a.head
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn preview_applies_rules_compresses_and_rebuilds_them() {
    let dir = tempfile::tempdir().unwrap();
    let css = "body { margin: 0 } .row { padding: 1px }\n".repeat(100);
    std::fs::write(dir.path().join("index.html"), "spa shell").unwrap();
    std::fs::write(dir.path().join("site.css"), &css).unwrap();
    std::fs::write(dir.path().join("_redirects"), "/* /index.html 200\n").unwrap();
    std::fs::write(dir.path().join("_headers"), "/*\n  X-Frame-Options: DENY\n").unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("preview.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .arg("preview")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    let deep = get(&addr, "/dashboard/settings", "");
    assert_eq!((deep.status, &deep.body[..]), (200, &b"spa shell"[..]));
    assert_eq!(deep.header("x-frame-options").as_deref(), Some("DENY"));
    let packed = get(&addr, "/site.css", "Accept-Encoding: br\r\n");
    assert_eq!(packed.header("content-encoding").as_deref(), Some("br"));
    assert!(packed.body.len() < css.len() / 4);

    // A bad line: the rebuild fails, says why, and the previous version keeps serving.
    std::fs::write(dir.path().join("_redirects"), "/* /index.html 200\n/x\n").unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("_redirects:2: expected `FROM TO [STATUS]`")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no rebuild error logged:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&addr, "/dashboard/settings", "").status, 200);

    // Fixed, with a redirect added: picked up.
    std::fs::write(
        dir.path().join("_redirects"),
        "/old /new 301\n/* /index.html 200\n",
    )
    .unwrap();
    let moved = wait_for(&addr, "/old", |a| a.status == 301);
    assert_eq!(moved.header("location").as_deref(), Some("/new"));
}
