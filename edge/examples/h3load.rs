//! A small closed-loop HTTP/3 load generator (quinn + h3), for benchmarking the edge's HTTP/3
//! listener next to h2load for HTTP/1.1 and HTTP/2:
//!
//! ```sh
//! cargo run --release -p edge --example h3load -- 127.0.0.1:8443 /index.html -c 4 -m 16 -d 10
//! ```
//!
//! `-c` connections, each with `-m` requests in flight, for `-d` seconds (after a one-second
//! warm-up). The server's certificate is not checked (benchmark use only). Prints requests
//! per second, bytes, and latency percentiles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct Args {
    addr: SocketAddr,
    path: String,
    sni: String,
    connections: usize,
    streams: usize,
    seconds: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: h3load ADDR PATH [-c CONNS] [-m STREAMS] [-d SECONDS] [--sni NAME]";
    let addr = it.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let path = it.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let mut a = Args {
        addr,
        path,
        sni: "localhost".into(),
        connections: 4,
        streams: 16,
        seconds: 10,
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| anyhow::anyhow!(usage))?;
        match flag.as_str() {
            "-c" => a.connections = v.parse()?,
            "-m" => a.streams = v.parse()?,
            "-d" => a.seconds = v.parse()?,
            "--sni" => a.sni = v,
            _ => anyhow::bail!(usage),
        }
    }
    Ok(a)
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    bytes: u64,
    micros: Vec<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let udp = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let sock = socket2::SockRef::from(&udp);
    sock.set_recv_buffer_size(4 << 20)?;
    sock.set_send_buffer_size(4 << 20)?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));

    let uri: http::Uri = format!("https://{}{}", args.sni, args.path).parse()?;
    let warmup = Instant::now() + Duration::from_secs(1);
    let end = warmup + Duration::from_secs(args.seconds);
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let conn = ep.connect(args.addr, &args.sni)?.await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        for _ in 0..args.streams {
            let mut send = send.clone();
            let uri = uri.clone();
            workers.push(tokio::spawn(async move {
                let mut t = Tally::default();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return t;
                    }
                    let req = http::Request::get(uri.clone()).body(()).expect("request");
                    let r = async {
                        let mut s = send.send_request(req).await?;
                        s.finish().await?;
                        let resp = s.recv_response().await?;
                        let mut n = 0u64;
                        while let Some(mut c) = s.recv_data().await? {
                            n += c.remaining() as u64;
                            c.advance(c.remaining());
                        }
                        Ok::<_, h3::error::StreamError>((resp.status(), n))
                    }
                    .await;
                    if started < warmup && r.is_ok() {
                        continue;
                    }
                    match r {
                        Ok((status, n)) if status.is_success() => {
                            t.ok += 1;
                            t.bytes += n;
                            t.micros.push(started.elapsed().as_micros() as u32);
                        }
                        Ok(_) => t.failed += 1,
                        // The connection or stream broke: this worker stops (a healthy
                        // server never does this, so one failure is already the finding).
                        Err(_) => {
                            t.failed += 1;
                            return t;
                        }
                    }
                }
            }));
        }
    }
    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.ok += t.ok;
        all.failed += t.failed;
        all.bytes += t.bytes;
        all.micros.extend(t.micros);
    }
    all.micros.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.micros.is_empty() {
            return 0.0;
        }
        let i = ((all.micros.len() as f64 * p).ceil() as usize).clamp(1, all.micros.len()) - 1;
        all.micros[i] as f64 / 1000.0
    };
    let secs = args.seconds as f64;
    println!(
        "h3 {} x{} conns x{} streams, {}s: {} ok, {} failed, {:.0} req/s, {:.1} MB/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        args.path,
        args.connections,
        args.streams,
        args.seconds,
        all.ok,
        all.failed,
        all.ok as f64 / secs,
        all.bytes as f64 / secs / 1e6,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
    );
    Ok(())
}
