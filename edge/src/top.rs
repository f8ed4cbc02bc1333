//! `edge top [--admin URL] [--once]`: a live terminal view of a running node, like
//! `varnishstat` or `htop`, from its admin listener's `/status` (the node's per-second
//! samples): request and byte rates, hit ratios by tier, latency, origin faces and breakers,
//! the busiest sites. `q` (or Esc, Ctrl-C) quits. `--once` prints one plain-text snapshot
//! and exits (scriptable: one figure per `key value` pair, rates as plain decimals).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Sparkline, Table};
use serde_json::Value;

use crate::samples::{human_age, human_bytes, human_ms, human_pct};

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// The node's admin listener: a URL or HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    pub admin: String,
    /// Print one plain-text snapshot and exit.
    #[arg(long)]
    pub once: bool,
}

/// How long one `/status` request may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The most of a `/status` body read.
const MAX_STATUS: usize = 16 << 20;
/// Sites listed.
const TOP_SITES: usize = 20;

/// The `/status` URL of an admin address given as a URL or HOST:PORT.
pub fn status_url(admin: &str) -> anyhow::Result<http::Uri> {
    let base = if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    };
    let url = format!("{}/status", base.trim_end_matches('/'));
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--admin {admin:?} is not a URL or HOST:PORT"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("--admin {admin:?}: only http:// admin listeners are supported");
    }
    Ok(uri)
}

/// Reads the node's `/status`.
pub async fn fetch(url: &http::Uri) -> anyhow::Result<Value> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())?;
    let get = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_STATUS)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_bytes();
        anyhow::ensure!(status.is_success(), "the admin listener answered {status}");
        Ok::<_, anyhow::Error>(serde_json::from_slice::<Value>(&body)?)
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {FETCH_TIMEOUT:?}"))?
        .with_context(|| format!("reading {url}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// A rate as a plain decimal.
fn rate(v: &Value) -> String {
    format!("{:.1}", f(v))
}

/// The summary lines of a status: rates, tiers, latency, origin.
pub fn summary_lines(v: &Value) -> Vec<String> {
    let r = &v["rates"];
    let l = &v["latency"];
    let mut lines = vec![
        format!(
            "uptime {}   ready {}   sample {}   requests {}",
            human_age(v["uptime_s"].as_u64().unwrap_or(0)),
            v["ready"],
            v["sample"]["seq"],
            v["requests"]
        ),
        format!(
            "requests/s {}   bytes/s {} ({})   hit ratio {}   shed/s {}",
            rate(&r["requests_per_s"]),
            rate(&r["bytes_per_s"]),
            human_bytes(f(&r["bytes_per_s"])),
            human_pct(r["hit_ratio"].as_f64()),
            rate(&r["shed_per_s"])
        ),
    ];
    let t = &v["tiers"];
    let mut tiers = format!(
        "tiers/s memory {} disk {} origin {}   memory {}",
        rate(&r["memory_per_s"]),
        rate(&r["disk_per_s"]),
        rate(&r["origin_per_s"]),
        human_bytes(f(&t["memory"]["bytes"]))
    );
    if t["disk"].is_object() {
        let _ = write!(
            tiers,
            "   disk {} of {}",
            human_bytes(f(&t["disk"]["bytes"])),
            human_bytes(f(&t["disk"]["capacity"]))
        );
    }
    lines.push(tiers);
    lines.push(format!(
        "latency p50 {}   p99 {}   (last {} s, {} requests)",
        human_ms(l["p50_ms"].as_f64().map(|ms| ms / 1000.0)),
        human_ms(l["p99_ms"].as_f64().map(|ms| ms / 1000.0)),
        l["window_s"],
        l["observations"]
    ));
    for face in ["meta", "objects"] {
        let o = &v["origin"][face];
        if o.is_object() {
            lines.push(format!(
                "origin {face:<7} breaker {:<9} opened {}   ok/s {}   failed/s {}   timeouts/s {}   shed {}",
                s(&o["state"]),
                o["opened"],
                rate(&o["success_per_s"]),
                rate(&o["failure_per_s"]),
                rate(&o["timeout_per_s"]),
                o["shed"]
            ));
        }
    }
    lines
}

const SITE_HEADER: [&str; 7] = [
    "SITE", "REQ/S", "BYTES/S", "HIT", "REFUSED", "DEPLOY", "AGE",
];

fn site_cells(site: &Value) -> [String; 7] {
    let stale = if site["stale"].as_bool() == Some(true) {
        " stale"
    } else {
        ""
    };
    [
        s(&site["site"]).to_owned(),
        rate(&site["requests_per_s"]),
        human_bytes(f(&site["bytes_per_s"])),
        human_pct(site["hit_ratio"].as_f64()),
        site["refused"].to_string(),
        s(&site["deploy"]).to_owned(),
        format!(
            "{}{stale}",
            human_age(site["pointer_age_s"].as_u64().unwrap_or(0))
        ),
    ]
}

fn sites(v: &Value) -> impl Iterator<Item = &Value> {
    v["sites"].as_array().into_iter().flatten().take(TOP_SITES)
}

/// One plain-text snapshot (what `--once` prints).
pub fn plain(v: &Value, admin: &str) -> String {
    let mut out = format!("edge top {admin}\n");
    for l in summary_lines(v) {
        out.push_str(&l);
        out.push('\n');
    }
    let _ = writeln!(out, "sites {} with a deploy", v["sites_total"]);
    let row = |c: &[String]| {
        format!(
            "  {:<20} {:>10} {:>11} {:>7} {:>8}  {:<24} {}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        )
    };
    out.push_str(&row(&SITE_HEADER.map(str::to_owned)));
    for site in sites(v) {
        out.push_str(&row(&site_cells(site)));
    }
    out
}

/// `edge top`.
pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let url = status_url(&args.admin)?;
    if args.once {
        let v = fetch(&url).await?;
        print!("{}", plain(&v, &args.admin));
        return Ok(());
    }
    live(&url, &args.admin).await
}

/// Restores the terminal when dropped, on every way out.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

async fn live(url: &http::Uri, admin: &str) -> anyhow::Result<()> {
    // Keys come from a thread of their own (crossterm's reads block), over a bounded channel.
    let (keys, mut key_rx) = tokio::sync::mpsc::channel(16);
    let mut term = ratatui::try_init().context("setting up the terminal")?;
    let _restore = Restore;
    std::thread::spawn(move || {
        while !keys.is_closed() {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                        if keys.blocking_send(k).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Result<Value, String> = Err("connecting".to_owned());
    loop {
        tokio::select! {
            _ = tick.tick() => {
                last = fetch(url).await.map_err(|e| format!("{e:#}"));
            }
            k = key_rx.recv() => match k {
                None => break,
                Some(k) if k.code == KeyCode::Char('q') || k.code == KeyCode::Esc => break,
                Some(k) if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) => break,
                Some(_) => {}
            },
        }
        term.draw(|frame| draw(frame, admin, &last))
            .context("drawing")?;
    }
    Ok(())
}

fn draw(frame: &mut ratatui::Frame<'_>, admin: &str, status: &Result<Value, String>) {
    let title = format!(" edge top {admin}   q quits ");
    let v = match status {
        Ok(v) => v,
        Err(e) => {
            let p = Paragraph::new(vec![
                Line::from(format!("no status: {e}")),
                Line::from("retrying every second"),
            ])
            .style(Style::default().fg(Color::Red))
            .block(Block::default().borders(Borders::ALL).title(title));
            frame.render_widget(p, frame.area());
            return;
        }
    };
    let summary = summary_lines(v);
    let [top, chart, table] = Layout::vertical([
        Constraint::Length(summary.len() as u16 + 2),
        Constraint::Length(6),
        Constraint::Min(3),
    ])
    .areas(frame.area());
    let lines: Vec<Line<'_>> = summary.into_iter().map(Line::from).collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        top,
    );
    let history: Vec<u64> = v["history"]["requests_per_s"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| f(x).round() as u64)
        .collect();
    let width = chart.width.saturating_sub(2) as usize;
    let shown = &history[history.len().saturating_sub(width)..];
    frame.render_widget(
        Sparkline::default()
            .block(Block::default().borders(Borders::ALL).title(format!(
                " requests/s, last {} s (max {}) ",
                shown.len(),
                shown.iter().max().copied().unwrap_or(0)
            )))
            .data(shown)
            .style(Style::default().fg(Color::Cyan)),
        chart,
    );
    let rows: Vec<Row<'_>> = sites(v).map(|s| Row::new(site_cells(s))).collect();
    let widths = [
        Constraint::Length(20),
        Constraint::Length(10),
        Constraint::Length(11),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(24),
        Constraint::Min(8),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(SITE_HEADER).style(Style::default().add_modifier(Modifier::BOLD)))
            .block(Block::default().borders(Borders::ALL).title(format!(
                " sites ({} with a deploy), busiest first ",
                v["sites_total"]
            ))),
        table,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn admin_addresses() {
        assert_eq!(
            status_url("127.0.0.1:9901").unwrap().to_string(),
            "http://127.0.0.1:9901/status"
        );
        assert_eq!(
            status_url("http://h:1/").unwrap().to_string(),
            "http://h:1/status"
        );
        assert!(status_url("https://h:1").is_err());
        assert!(status_url("not a url").is_err());
    }

    #[test]
    fn a_snapshot_shows_rates_tiers_latency_origin_and_sites() {
        let v = json!({
            "uptime_s": 75, "ready": true, "requests": 1000, "sample": {"seq": 75},
            "rates": {"requests_per_s": 512.25, "bytes_per_s": 2048.0, "hit_ratio": 0.995,
                      "memory_per_s": 500.0, "disk_per_s": 9.0, "origin_per_s": 3.0, "shed_per_s": 0.0},
            "latency": {"p50_ms": 0.21, "p99_ms": 12.0, "window_s": 10.0, "observations": 5000},
            "tiers": {"memory": {"bytes": 1367}, "disk": {"bytes": 1048576, "capacity": 10737418240u64}},
            "origin": {"meta": {"state": "closed", "opened": 0}, "objects": {"state": "open", "opened": 2}},
            "sites_total": 1,
            "sites": [{"site": "main", "requests_per_s": 512.25, "bytes_per_s": 2048.0,
                       "hit_ratio": 0.995, "refused": 0, "deploy": "d1", "pointer_age_s": 3, "stale": false}],
        });
        let out = plain(&v, "127.0.0.1:9901");
        for want in [
            "requests/s 512.2",
            "bytes/s 2048.0 (2.0 KiB)",
            "hit ratio 99.5%",
            "tiers/s memory 500.0 disk 9.0 origin 3.0",
            "disk 1.0 MiB of 10.0 GiB",
            "p50 0.21 ms   p99 12 ms",
            "origin objects breaker open",
            "uptime 1 m 15 s",
        ] {
            assert!(out.contains(want), "{want:?} in\n{out}");
        }
        assert!(
            out.lines().any(|l| l.trim_start().starts_with("main ")),
            "{out}"
        );
        // Anything missing reads as a dash or zero, never a panic.
        let empty = plain(&json!({}), "x");
        assert!(empty.contains("requests/s 0.0"), "{empty}");
    }
}
