//! Medians, ratios and the printed tables. Pure.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Cell, SCENARIOS, ServerKind, Specials};

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

struct Row {
    label: String,
    values: BTreeMap<ServerKind, f64>,
    decimals: usize,
}

fn cell_row(
    cells: &BTreeMap<String, BTreeMap<ServerKind, Cell>>,
    scenario: &str,
    label: String,
    decimals: usize,
    f: fn(&Cell) -> f64,
) -> Row {
    let values = cells
        .get(scenario)
        .map(|by| by.iter().map(|(k, c)| (*k, f(c))).collect())
        .unwrap_or_default();
    Row {
        label,
        values,
        decimals,
    }
}

/// The comparison table: medians over rounds per server, and the edge's ratios to the others
/// (for p99 and RSS, lower is better).
pub fn render(
    cells: &BTreeMap<String, BTreeMap<ServerKind, Cell>>,
    rss_kib: &BTreeMap<ServerKind, u64>,
    open_rate: f64,
    servers: &[ServerKind],
) -> String {
    let rows = vec![
        cell_row(
            cells,
            "h1-small",
            "small-file hits h1 req/s".into(),
            0,
            |c| c.req_per_s,
        ),
        cell_row(
            cells,
            "h1-small",
            "small-file hits h1 p99 ms".into(),
            3,
            |c| c.p99_ms,
        ),
        cell_row(
            cells,
            "h2-small",
            "small-file hits h2 req/s".into(),
            0,
            |c| c.req_per_s,
        ),
        cell_row(
            cells,
            "h2-small",
            "small-file hits h2 p99 ms".into(),
            3,
            |c| c.p99_ms,
        ),
        cell_row(cells, "h1-mixed", "mixed sizes h1 MiB/s".into(), 1, |c| {
            c.mib_per_s
        }),
        cell_row(
            cells,
            "h1-small-open",
            format!("open loop h1 {open_rate:.0} req/s p99 ms"),
            3,
            |c| c.p99_ms,
        ),
        Row {
            label: "peak RSS MiB (VmHWM)".into(),
            values: rss_kib
                .iter()
                .map(|(k, v)| (*k, *v as f64 / 1024.0))
                .collect(),
            decimals: 1,
        },
    ];
    let mut out = String::new();
    let _ = write!(out, "{:<34}", "medians over rounds");
    for s in servers {
        let _ = write!(out, "{:>11}", s.as_str());
    }
    let others: Vec<ServerKind> = servers
        .iter()
        .copied()
        .filter(|s| *s != ServerKind::Edge)
        .collect();
    let has_edge = servers.contains(&ServerKind::Edge);
    if has_edge {
        for o in &others {
            let _ = write!(out, "{:>14}", format!("edge/{}", o.as_str()));
        }
    }
    out.push('\n');
    for row in &rows {
        let _ = write!(out, "{:<34}", row.label);
        for s in servers {
            match row.values.get(s) {
                Some(v) => {
                    let _ = write!(out, "{:>11.*}", row.decimals, v);
                }
                None => {
                    let _ = write!(out, "{:>11}", "-");
                }
            }
        }
        if has_edge {
            for o in &others {
                match (row.values.get(&ServerKind::Edge), row.values.get(o)) {
                    (Some(e), Some(v)) if *v > 0.0 => {
                        let _ = write!(out, "{:>14.2}", e / v);
                    }
                    _ => {
                        let _ = write!(out, "{:>14}", "-");
                    }
                }
            }
        }
        out.push('\n');
    }
    let problems: Vec<String> = cells
        .iter()
        .flat_map(|(scenario, by)| {
            by.iter()
                .filter(|(_, c)| c.errors > 0 || c.non_200 > 0)
                .map(move |(k, c)| {
                    format!(
                        "{scenario} {}: {} errors, {} non-200",
                        k.as_str(),
                        c.errors,
                        c.non_200
                    )
                })
        })
        .collect();
    if problems.is_empty() {
        out.push_str("every measured request got a 200\n");
    } else {
        let _ = writeln!(out, "WARNING: {}", problems.join("; "));
    }
    out
}

/// What the issue table's labels and targets name.
#[derive(Debug, Clone)]
pub struct IssueParams {
    pub burst_clients: usize,
    pub miss_clients: usize,
    pub idle_connections: usize,
    pub origin_delay_ms: f64,
}

/// One row of the issue table: per-server values, the target in words, whether the edge meets
/// it (`None`: no target, or a value is missing).
struct IssueRow {
    label: String,
    values: BTreeMap<ServerKind, f64>,
    decimals: usize,
    target: String,
    met: Option<bool>,
}

fn steady(
    cells: &BTreeMap<String, BTreeMap<ServerKind, Cell>>,
    scenario: &str,
    f: fn(&Cell) -> f64,
) -> BTreeMap<ServerKind, f64> {
    cells
        .get(scenario)
        .map(|by| by.iter().map(|(k, c)| (*k, f(c))).collect())
        .unwrap_or_default()
}

fn special(specials: &Specials, scenario: &str, figure: &str) -> BTreeMap<ServerKind, f64> {
    specials
        .get(scenario)
        .map(|by| {
            by.iter()
                .filter_map(|(k, figs)| figs.get(figure).map(|v| (*k, *v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The table of issue 14: every row it names, edge vs nginx vs Varnish, with its target and
/// whether the edge meets it. For the cold-file rows nginx is its `proxy_cache`.
pub fn render_issue(
    cells: &BTreeMap<String, BTreeMap<ServerKind, Cell>>,
    specials: &Specials,
    servers: &[ServerKind],
    p: &IssueParams,
) -> String {
    let edge = |v: &BTreeMap<ServerKind, f64>| v.get(&ServerKind::Edge).copied();
    let vs = |v: &BTreeMap<ServerKind, f64>, k: ServerKind| v.get(&k).copied();
    let at_least =
        |v: &BTreeMap<ServerKind, f64>, k: ServerKind, x: f64| Some(edge(v)? >= x * vs(v, k)?);
    let mut rows = Vec::new();
    for (scenario, label, decimals, f) in [
        (
            "h1-large",
            "all files (PoP-sized site), h1, MiB/s",
            1,
            (|c: &Cell| c.mib_per_s) as fn(&Cell) -> f64,
        ),
        ("h1-small", "small hot files, h1, req/s", 0, |c: &Cell| {
            c.req_per_s
        }),
        ("h2-small", "small hot files, h2c, req/s", 0, |c: &Cell| {
            c.req_per_s
        }),
    ] {
        let values = steady(cells, scenario, f);
        let met = at_least(&values, ServerKind::Nginx, 1.2);
        rows.push(IssueRow {
            label: label.into(),
            values,
            decimals,
            target: ">= 1.2x nginx".into(),
            met,
        });
    }
    let values = special(specials, "burst", "p50_ms");
    let met = (|| Some(edge(&values)? <= vs(&values, ServerKind::Varnish)?))();
    rows.push(IssueRow {
        label: format!(
            "{} clients on a cold 13.6 MiB file, p50 ms",
            p.burst_clients
        ),
        values,
        decimals: 0,
        target: "<= varnish".into(),
        met,
    });
    let alone = special(specials, "isolation", "hits_alone_p99_ms");
    let with = special(specials, "isolation", "hits_p99_ms");
    let met = (|| Some(edge(&with)? <= 2.0 * edge(&alone)?))();
    rows.push(IssueRow {
        label: "hot hits p99 ms, alone".into(),
        values: alone,
        decimals: 1,
        target: "-".into(),
        met: None,
    });
    rows.push(IssueRow {
        label: format!("hot hits p99 ms, while {} misses wait", p.miss_clients),
        values: with,
        decimals: 1,
        target: "<= 2x alone".into(),
        met,
    });
    let values = special(specials, "isolation", "misses_p50_ms");
    let met = edge(&values).map(|e| e <= 1.3 * p.origin_delay_ms);
    rows.push(IssueRow {
        label: format!("those misses p50 ms ({:.0} ms origin)", p.origin_delay_ms),
        values,
        decimals: 0,
        target: format!("<= {:.0}", 1.3 * p.origin_delay_ms),
        met,
    });
    for (scenario, label) in [
        ("idle-h1", "KiB per idle h1 keep-alive connection"),
        ("idle-h2", "KiB per idle h2c connection"),
    ] {
        let values = special(specials, scenario, "kib_per_connection");
        let met = edge(&values).map(|e| e <= 2.0);
        rows.push(IssueRow {
            label: format!("{label} ({} open)", p.idle_connections),
            values,
            decimals: 2,
            target: "<= 2".into(),
            met,
        });
    }
    for (scenario, label) in [
        ("h1-tls-small", "small hot files, h1 over TLS, req/s"),
        ("h2-tls-small", "small hot files, h2 over TLS, req/s"),
    ] {
        let values = steady(cells, scenario, |c| c.req_per_s);
        let met = at_least(&values, ServerKind::Nginx, 1.2);
        rows.push(IssueRow {
            label: label.into(),
            values,
            decimals: 0,
            target: ">= 1.2x nginx".into(),
            met,
        });
    }
    let h3 = steady(cells, "h3-small", |c| c.req_per_s);
    let h2_tls = steady(cells, "h2-tls-small", |c| c.req_per_s);
    let met = (|| Some(edge(&h3)? >= 0.8 * edge(&h2_tls)?))();
    rows.push(IssueRow {
        label: "small hot files, h3, req/s".into(),
        values: h3,
        decimals: 0,
        target: ">= 0.8x edge h2 TLS".into(),
        met,
    });

    let mut out = String::new();
    let _ = write!(out, "{:<48}", "issue 14 table (medians over rounds)");
    for s in servers {
        let _ = write!(out, "{:>10}", s.as_str());
    }
    let _ = writeln!(out, "  {:<22}met", "target");
    for row in &rows {
        let _ = write!(out, "{:<48}", row.label);
        for s in servers {
            match row.values.get(s) {
                Some(v) if v.is_finite() => {
                    let _ = write!(out, "{:>10.*}", row.decimals, v);
                }
                _ => {
                    let _ = write!(out, "{:>10}", "-");
                }
            }
        }
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let _ = writeln!(out, "  {:<22}{met}", row.target);
    }
    out
}

/// The numbers behind the chart: each scenario's merged latency percentiles per server.
pub fn render_chart_data(
    cells: &BTreeMap<String, BTreeMap<ServerKind, Cell>>,
    servers: &[ServerKind],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15}{:<9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}   (ms, all rounds merged)",
        "scenario", "server", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    for s in &SCENARIOS {
        let Some(by) = cells.get(s.name) else {
            continue;
        };
        for k in servers {
            let Some(c) = by.get(k) else { continue };
            let l = &c.latency_ms;
            let _ = writeln!(
                out,
                "{:<15}{:<9}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}",
                s.name,
                k.as_str(),
                l.p50,
                l.p90,
                l.p99,
                l.p99_9,
                l.p99_99,
                l.max
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::report::Latency;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    fn cell(rps: f64, p99: f64) -> Cell {
        let l = Latency {
            min: 0.1,
            mean: 0.5,
            p50: 0.4,
            p90: 0.8,
            p99,
            p99_9: p99 * 2.0,
            p99_99: p99 * 3.0,
            max: p99 * 4.0,
        };
        Cell {
            req_per_s: rps,
            p99_ms: p99,
            mib_per_s: rps / 100.0,
            errors: 0,
            non_200: 0,
            latency_ms: l,
            curve: Vec::new(),
        }
    }

    #[test]
    fn table_has_ratios() {
        let mut cells = BTreeMap::new();
        let by: BTreeMap<ServerKind, Cell> = [
            (ServerKind::Edge, cell(30000.0, 2.0)),
            (ServerKind::Nginx, cell(20000.0, 4.0)),
            (ServerKind::Varnish, cell(10000.0, 1.0)),
        ]
        .into();
        cells.insert("h1-small".to_string(), by);
        let rss = [(ServerKind::Edge, 102400), (ServerKind::Nginx, 10240)].into();
        let t = render(&cells, &rss, 5000.0, &ServerKind::ALL);
        let line = t
            .lines()
            .find(|l| l.starts_with("small-file hits h1 req/s"))
            .unwrap();
        let nums: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &nums[nums.len() - 5..],
            ["30000", "20000", "10000", "1.50", "3.00"]
        );
        let rss_line = t.lines().find(|l| l.starts_with("peak RSS")).unwrap();
        assert!(
            rss_line.contains("100.0") && rss_line.contains("10.00"),
            "{rss_line}"
        );
        assert!(t.contains("every measured request got a 200"));
        let d = render_chart_data(&cells, &ServerKind::ALL);
        assert_eq!(d.lines().count(), 4);
    }

    #[test]
    fn issue_table_says_which_targets_are_met() {
        let mut cells = BTreeMap::new();
        cells.insert(
            "h1-small".to_string(),
            [
                (ServerKind::Edge, cell(30000.0, 2.0)),
                (ServerKind::Nginx, cell(20000.0, 4.0)),
            ]
            .into(),
        );
        cells.insert(
            "h2-small".to_string(),
            [
                (ServerKind::Edge, cell(21000.0, 2.0)),
                (ServerKind::Nginx, cell(20000.0, 4.0)),
            ]
            .into(),
        );
        let mut specials = Specials::new();
        let fig = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        specials.insert(
            "burst".into(),
            [
                (ServerKind::Edge, fig(&[("p50_ms", 900.0)])),
                (ServerKind::Varnish, fig(&[("p50_ms", 1000.0)])),
            ]
            .into(),
        );
        specials.insert(
            "isolation".into(),
            [(
                ServerKind::Edge,
                fig(&[
                    ("hits_alone_p99_ms", 4.0),
                    ("hits_p99_ms", 9.0),
                    ("misses_p50_ms", 2100.0),
                ]),
            )]
            .into(),
        );
        let t = render_issue(
            &cells,
            &specials,
            &ServerKind::ALL,
            &IssueParams {
                burst_clients: 200,
                miss_clients: 100,
                idle_connections: 5000,
                origin_delay_ms: 2000.0,
            },
        );
        let line = |start: &str| {
            t.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no {start:?} in\n{t}"))
                .to_string()
        };
        assert!(line("small hot files, h1,").ends_with("yes"), "{t}");
        assert!(line("small hot files, h2c,").ends_with("NO"), "{t}");
        assert!(line("200 clients").ends_with("yes"), "{t}");
        assert!(line("hot hits p99 ms, while").ends_with("NO"), "{t}");
        assert!(line("those misses").ends_with("yes"), "{t}");
        // No figures: no verdict.
        assert!(line("KiB per idle h1").ends_with("-"), "{t}");
        assert!(line("all files").ends_with("-"), "{t}");
    }
}
