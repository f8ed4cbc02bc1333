//! What to request: a fixed list of URLs (taken in order, round robin) or a synthetic workload
//! with Zipf popularity over sites (Host headers) and paths. Pure: parsing and picking, no I/O.

use http::uri::{Authority, PathAndQuery};

use super::site::{self, SizeMix};
use super::zipf::{Zipf, ZipfError};

/// One request target: the Host (`:authority` in HTTP/2) and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub authority: Authority,
    pub path: PathAndQuery,
}

/// The host name of synthetic site `k`: `site{k}.{domain}`.
pub fn site_host(k: usize, domain: &str) -> String {
    format!("site{k}.{domain}")
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
    #[error("the URL list is empty")]
    Empty,
    #[error("the synthetic workload needs at least one site and one file")]
    NoFiles,
    #[error("invalid host name {0:?}")]
    Host(String),
    #[error(transparent)]
    Zipf(#[from] ZipfError),
}

/// The synthetic workload's parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Synthetic {
    /// Files in the site, as `gen-site --files` wrote them.
    pub files: usize,
    pub sizes: SizeMix,
    /// Number of sites; with one, the Host is the target's (or `--host`).
    pub sites: usize,
    /// Host names are `site{k}.{domain}` when there are several sites.
    pub site_domain: String,
    /// Zipf exponent over paths.
    pub path_exponent: f64,
    /// Zipf exponent over sites.
    pub site_exponent: f64,
}

/// A request mix, ready to draw from.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Taken in order: request `i` gets `targets[i % len]`.
    List(Vec<Target>),
    /// Site and path drawn independently, each by Zipf rank (rank 0 most popular).
    Zipf {
        hosts: Vec<Authority>,
        sites: Zipf,
        paths: Vec<PathAndQuery>,
        popularity: Zipf,
    },
}

impl Workload {
    /// Parses a URL list: one absolute URL (`http://host/path`, whose authority becomes the
    /// Host) or path (`/path`, sent with `default_host`) per line; blank lines and lines
    /// starting with `#` are skipped. The connection always goes to the run's target.
    pub fn from_list(text: &str, default_host: &Authority) -> Result<Workload, WorkloadError> {
        let mut targets = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason| WorkloadError::Line {
                line: n + 1,
                reason,
            };
            let target = if line.starts_with('/') {
                Target {
                    authority: default_host.clone(),
                    path: line.parse().map_err(|_| bad("not a valid path"))?,
                }
            } else {
                let uri: http::Uri = line.parse().map_err(|_| bad("not a valid URL or path"))?;
                match uri.scheme_str() {
                    Some("http" | "https") => {}
                    _ => return Err(bad("only http:// and https:// URLs")),
                }
                Target {
                    authority: uri.authority().cloned().ok_or(bad("URL without a host"))?,
                    path: uri
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/")),
                }
            };
            targets.push(target);
        }
        if targets.is_empty() {
            return Err(WorkloadError::Empty);
        }
        Ok(Workload::List(targets))
    }

    /// The synthetic workload over a `gen-site` folder's paths.
    pub fn synthetic(
        spec: &Synthetic,
        default_host: &Authority,
    ) -> Result<Workload, WorkloadError> {
        if spec.files == 0 || spec.sites == 0 {
            return Err(WorkloadError::NoFiles);
        }
        let hosts = if spec.sites == 1 {
            vec![default_host.clone()]
        } else {
            (0..spec.sites)
                .map(|k| {
                    let h = site_host(k, &spec.site_domain);
                    h.parse().map_err(|_| WorkloadError::Host(h))
                })
                .collect::<Result<_, _>>()?
        };
        let paths = site::paths(spec.sizes, spec.files)
            .into_iter()
            .map(|p| PathAndQuery::from_maybe_shared(p.clone()).map_err(|_| WorkloadError::Host(p)))
            .collect::<Result<_, _>>()?;
        Ok(Workload::Zipf {
            hosts,
            sites: Zipf::new(spec.sites, spec.site_exponent)?,
            paths,
            popularity: Zipf::new(spec.files, spec.path_exponent)?,
        })
    }

    /// The target of request number `i`, drawing from `rng` where the workload is random.
    pub fn pick(&self, i: u64, rng: &mut fastrand::Rng) -> (&Authority, &PathAndQuery) {
        match self {
            Workload::List(t) => {
                let t = &t[(i % t.len() as u64) as usize];
                (&t.authority, &t.path)
            }
            Workload::Zipf {
                hosts,
                sites,
                paths,
                popularity,
            } => (
                &hosts[sites.sample(rng.f64())],
                &paths[popularity.sample(rng.f64())],
            ),
        }
    }

    /// Every distinct target once: for warming caches.
    pub fn all_targets(&self) -> Vec<Target> {
        match self {
            Workload::List(t) => {
                let mut seen = std::collections::HashSet::new();
                t.iter()
                    .filter(|t| seen.insert((t.authority.clone(), t.path.clone())))
                    .cloned()
                    .collect()
            }
            Workload::Zipf { hosts, paths, .. } => hosts
                .iter()
                .flat_map(|h| {
                    paths.iter().map(|p| Target {
                        authority: h.clone(),
                        path: p.clone(),
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Authority {
        Authority::from_static("127.0.0.1:8080")
    }

    #[test]
    fn parses_urls_and_paths() {
        let w = Workload::from_list(
            "# comment\n/a.css\n\nhttp://docs.example/b?x=1\nhttps://other:8443/\n",
            &host(),
        )
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let (h, p) = w.pick(0, &mut rng);
        assert_eq!((h.as_str(), p.as_str()), ("127.0.0.1:8080", "/a.css"));
        let (h, p) = w.pick(1, &mut rng);
        assert_eq!((h.as_str(), p.as_str()), ("docs.example", "/b?x=1"));
        let (h, p) = w.pick(2, &mut rng);
        assert_eq!((h.as_str(), p.as_str()), ("other:8443", "/"));
        let (_, p) = w.pick(3, &mut rng);
        assert_eq!(p.as_str(), "/a.css");
    }

    #[test]
    fn rejects_bad_lists() {
        assert!(matches!(
            Workload::from_list("\n# only a comment\n", &host()),
            Err(WorkloadError::Empty)
        ));
        assert!(matches!(
            Workload::from_list("/ok\nftp://x/y\n", &host()),
            Err(WorkloadError::Line { line: 2, .. })
        ));
        assert!(matches!(
            Workload::from_list("not a url\n", &host()),
            Err(WorkloadError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn synthetic_draws_popular_paths_more_often() {
        let spec = Synthetic {
            files: 100,
            sizes: SizeMix::Small,
            sites: 3,
            site_domain: "bench.test".into(),
            path_exponent: 1.0,
            site_exponent: 1.0,
        };
        let w = Workload::synthetic(&spec, &host()).unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut first = 0;
        let mut site0 = 0;
        for i in 0..10_000 {
            let (h, p) = w.pick(i, &mut rng);
            if p.as_str() == site::file_path(SizeMix::Small, 0) {
                first += 1;
            }
            if h.as_str() == "site0.bench.test" {
                site0 += 1;
            }
        }
        // Rank 0 of 100 at s=1 has p = 1/H(100) ~ 0.19; of 3 sites, 1/H(3) ~ 0.55.
        assert!((1500..2400).contains(&first), "{first}");
        assert!((5000..6000).contains(&site0), "{site0}");
        assert_eq!(w.all_targets().len(), 300);
    }
}
