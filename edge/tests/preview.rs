//! `edge preview DIR` as a real process: prints its URL, serves the folder, and picks up
//! changes, additions and deletions.

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

/// GET over a fresh connection; returns (status, body).
fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, buf[split + 4..].to_vec())
}

fn wait_for(addr: &str, path: &str, want: (u16, &[u8])) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = get(addr, path);
        if status == want.0 && body == want.1 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{path}: still {status} {:?}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn preview_serves_a_folder_and_follows_edits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "v1").unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("docs/index.html"), "docs").unwrap();
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
    assert!(line.starts_with("previewing "), "{line}");
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    assert_eq!(get(&addr, "/"), (200, b"v1".to_vec()));
    assert_eq!(get(&addr, "/docs/"), (200, b"docs".to_vec()));
    assert_eq!(get(&addr, "/docs").0, 301);

    std::fs::write(dir.path().join("index.html"), "v2").unwrap();
    let changed = wait_for(&addr, "/", (200, b"v2"));
    std::fs::write(dir.path().join("new.txt"), "new").unwrap();
    let added = wait_for(&addr, "/new.txt", (200, b"new"));
    std::fs::remove_file(dir.path().join("new.txt")).unwrap();
    let removed = wait_for(
        &addr,
        "/new.txt",
        (404, b"404 Not Found: no such file in this deploy\n"),
    );
    eprintln!("preview picked up: change {changed:?}, addition {added:?}, deletion {removed:?}");

    // Idle, it does not rebuild (its own reads of the folder are not changes).
    let rebuilds = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("preview rebuilt")
            .count()
    };
    std::thread::sleep(Duration::from_millis(600));
    let before = rebuilds();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(rebuilds(), before, "rebuilding while nothing changes");
}
