//! Fault rules: what to break, for which paths, and when.
//!
//! Invariant: this module does no I/O. A decision takes the request's store key, the kind of
//! object it names, `now` and a source of random rolls, and returns the action to take; the
//! server carries it out. So the schedule (flapping, probability, first match) is tested here
//! without sockets or clocks.
//!
//! # JSON
//!
//! The rule list is a JSON array, the same for `--rules FILE`, `PUT /_chaos/rules` and
//! `GET /_chaos/rules`. Rules are tried in order; the first one that *applies* wins, and a
//! request no rule applies to is served normally. A rule applies when all of these hold:
//!
//! - `path` (optional): the request's store key starts with it (`objects/`,
//!   `sites/docs/current`; a leading `/` is ignored). Absent: every path.
//! - `kind` (optional): `blob`, `tree` (an object whose bytes start with the tree magic
//!   `EDGT`), `pointer` (`hosts/<host>`, `sites/<site>/current`) or `record`
//!   (`sites/<site>/deploys/<id>`, `sites/<site>/history`). An object that is not in the store
//!   has no kind, so only rules without `kind` apply to it. Absent: every kind.
//! - `flap` (optional): `{"on_ms": A, "off_ms": B}`: the rule is on for A ms, then off for B
//!   ms, repeating, counted from when the rule list was installed. Absent: always on.
//! - `probability` (optional, 0.0 to 1.0, default 1.0): the share of requests it applies to.
//!
//! A rule that is off or loses its roll does not stop the search: the next rule is tried.
//!
//! `action` is one of:
//!
//! | `type` | fields | effect |
//! | --- | --- | --- |
//! | `latency` | `ms`, `jitter_ms` (default 0) | waits `ms` plus a uniform 0..=`jitter_ms`, then serves normally |
//! | `status` | `code` (200 to 599), `body` (default: the reason phrase) | answers that status instead |
//! | `reset` | | closes the TCP connection with a reset, before any response byte |
//! | `hang` | `max_ms` (default and at most 600000) | never answers; after `max_ms` the connection is reset |
//! | `truncate` | `bytes` or `fraction` (default `fraction` 0.5) | sends the headers with the full `Content-Length`, then only that many body bytes, then closes |
//! | `flip` | `offset` (default: the middle of the body) | inverts one body byte; the length stays the same. An offset past the end changes nothing |
//!
//! `truncate` and `flip` act on found objects and records (200 answers to GET); other answers
//! pass unchanged. Example:
//!
//! ```json
//! [
//!   {"path": "sites/docs/current", "flap": {"on_ms": 300, "off_ms": 700},
//!    "action": {"type": "status", "code": 503, "body": "origin busy"}},
//!   {"kind": "tree", "probability": 0.1, "action": {"type": "reset"}},
//!   {"path": "objects/", "kind": "blob", "action": {"type": "truncate", "fraction": 0.5}},
//!   {"path": "objects/", "action": {"type": "latency", "ms": 50, "jitter_ms": 20}}
//! ]
//! ```

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Longest a `hang` lasts, and the longest `latency` (plus jitter) a rule may ask for: nothing a
/// rule starts outlives this.
pub const MAX_DELAY: Duration = Duration::from_secs(600);
/// Most rules in one list.
pub const MAX_RULES: usize = 1000;

/// What a request's path names, as far as rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Kind {
    /// An object that is not a tree node.
    Blob,
    /// An object whose bytes start with [`origin_client::tree::MAGIC`].
    Tree,
    /// `hosts/<host>` and `sites/<site>/current`.
    Pointer,
    /// `sites/<site>/deploys/<id>` and `sites/<site>/history`.
    Record,
}

/// An on/off schedule, from the time the rule list was installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flap {
    pub on_ms: u64,
    pub off_ms: u64,
}

/// What a rule does to a request it applies to. See the module docs for the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    Latency {
        ms: u64,
        #[serde(default)]
        jitter_ms: u64,
    },
    Status {
        code: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    Reset,
    Hang {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_ms: Option<u64>,
    },
    Truncate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fraction: Option<f64>,
    },
    Flip {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
}

/// One fault rule. See the module docs for the JSON and the matching order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(default = "always")]
    pub probability: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap: Option<Flap>,
    pub action: Action,
}

fn always() -> f64 {
    1.0
}

/// A rule list that cannot be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    #[error("rules are not a valid JSON rule list")]
    Json(#[source] serde_json::Error),
    #[error("rule {index}: {why}")]
    Invalid { index: usize, why: String },
    #[error("{count} rules is more than the limit of {limit}")]
    TooMany { count: usize, limit: usize },
}

impl Rule {
    /// A rule for every path and kind, always on, that does `action`.
    pub fn new(action: Action) -> Rule {
        Rule {
            path: None,
            kind: None,
            probability: 1.0,
            flap: None,
            action,
        }
    }

    /// Only for store keys starting with `prefix`.
    pub fn path(mut self, prefix: &str) -> Rule {
        self.path = Some(prefix.to_owned());
        self
    }

    /// Only for this kind of object.
    pub fn kind(mut self, kind: Kind) -> Rule {
        self.kind = Some(kind);
        self
    }

    pub fn probability(mut self, p: f64) -> Rule {
        self.probability = p;
        self
    }

    /// On for `on`, off for `off`, repeating.
    pub fn flap(mut self, on: Duration, off: Duration) -> Rule {
        self.flap = Some(Flap {
            on_ms: on.as_millis().try_into().unwrap_or(u64::MAX),
            off_ms: off.as_millis().try_into().unwrap_or(u64::MAX),
        });
        self
    }

    fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(format!(
                "probability {} is not between 0.0 and 1.0",
                self.probability
            ));
        }
        if let Some(f) = self.flap {
            if f.on_ms == 0 {
                return Err("flap.on_ms must be at least 1".into());
            }
            if f.on_ms.checked_add(f.off_ms).is_none() {
                return Err("flap period is too long".into());
            }
        }
        if let Some(p) = &self.path
            && p.len() > 4096
        {
            return Err("path prefix is longer than 4096 bytes".into());
        }
        let max_ms = MAX_DELAY.as_millis() as u64;
        match &self.action {
            Action::Latency { ms, jitter_ms } => {
                if ms.saturating_add(*jitter_ms) > max_ms {
                    return Err(format!(
                        "latency ms + jitter_ms is more than the {max_ms} ms limit"
                    ));
                }
            }
            Action::Status { code, body } => {
                if !(200..=599).contains(code) {
                    return Err(format!("status code {code} is not between 200 and 599"));
                }
                if body.as_ref().is_some_and(|b| b.len() > 1024 * 1024) {
                    return Err("status body is larger than 1 MiB".into());
                }
            }
            Action::Reset => {}
            Action::Hang { max_ms: Some(m) } if *m > max_ms => {
                return Err(format!(
                    "hang max_ms {m} is more than the {max_ms} ms limit"
                ));
            }
            Action::Hang { .. } => {}
            Action::Truncate { bytes, fraction } => match (bytes, fraction) {
                (Some(_), Some(_)) => {
                    return Err("truncate takes `bytes` or `fraction`, not both".into());
                }
                (None, Some(f)) if !(0.0..1.0).contains(f) => {
                    return Err(format!(
                        "truncate fraction {f} is not in 0.0 (inclusive) to 1.0 (exclusive)"
                    ));
                }
                _ => {}
            },
            Action::Flip { .. } => {}
        }
        Ok(())
    }

    fn prefix(&self) -> &str {
        self.path
            .as_deref()
            .map_or("", |p| p.strip_prefix('/').unwrap_or(p))
    }

    fn matches_path(&self, key: &str) -> bool {
        key.starts_with(self.prefix())
    }

    fn matches_kind(&self, kind: Option<Kind>) -> bool {
        match self.kind {
            None => true,
            Some(want) => kind == Some(want),
        }
    }

    /// Whether the flap schedule has the rule on, `since` after installation.
    fn on_at(&self, since: Duration) -> bool {
        let Some(f) = self.flap else { return true };
        let period = u128::from(f.on_ms) + u128::from(f.off_ms);
        since.as_millis() % period < u128::from(f.on_ms)
    }
}

/// Parses and checks a JSON rule list.
pub fn parse_rules(json: &[u8]) -> Result<Vec<Rule>, RuleError> {
    let rules: Vec<Rule> = serde_json::from_slice(json).map_err(RuleError::Json)?;
    check_rules(&rules)?;
    Ok(rules)
}

/// Checks every rule of a list; the first problem wins.
pub fn check_rules(rules: &[Rule]) -> Result<(), RuleError> {
    if rules.len() > MAX_RULES {
        return Err(RuleError::TooMany {
            count: rules.len(),
            limit: MAX_RULES,
        });
    }
    for (index, rule) in rules.iter().enumerate() {
        rule.check()
            .map_err(|why| RuleError::Invalid { index, why })?;
    }
    Ok(())
}

/// An installed rule list: checked rules and the instant their flap schedules start from.
#[derive(Debug, Clone)]
pub(crate) struct RuleSet {
    rules: Vec<Rule>,
    installed: Instant,
}

impl RuleSet {
    pub(crate) fn new(rules: Vec<Rule>, now: Instant) -> Result<RuleSet, RuleError> {
        check_rules(&rules)?;
        Ok(RuleSet {
            rules,
            installed: now,
        })
    }

    pub(crate) fn empty(now: Instant) -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            installed: now,
        }
    }

    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether deciding for `key` may need to know if an object is a blob or a tree (so the
    /// server must look at its first bytes).
    pub(crate) fn needs_object_kind(&self, key: &str) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.kind, Some(Kind::Blob | Kind::Tree)) && r.matches_path(key))
    }

    /// The action of the first rule that applies to `key` (of `kind`) at `now`. `roll` gives
    /// uniform numbers in `0.0..1.0`; it is called only for rules with a probability below 1.
    pub(crate) fn select(
        &self,
        key: &str,
        kind: Option<Kind>,
        now: Instant,
        roll: &mut dyn FnMut() -> f64,
    ) -> Option<&Action> {
        let since = now.saturating_duration_since(self.installed);
        self.rules
            .iter()
            .find(|r| {
                r.matches_path(key)
                    && r.matches_kind(kind)
                    && r.on_at(since)
                    && (r.probability >= 1.0 || roll() < r.probability)
            })
            .map(|r| &r.action)
    }
}

/// The delay of a latency action, given a uniform roll in `0.0..1.0` for the jitter.
pub(crate) fn latency(ms: u64, jitter_ms: u64, roll: f64) -> Duration {
    let jitter = ((jitter_ms as f64 + 1.0) * roll).floor() as u64;
    Duration::from_millis(ms.saturating_add(jitter.min(jitter_ms)))
}

/// How a body fault changes a body of `len` bytes (`None`: unknown length).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BodyFault {
    /// Send only this many bytes, then close the connection.
    pub(crate) truncate_at: Option<u64>,
    /// Invert the byte at this offset.
    pub(crate) flip_at: Option<u64>,
}

impl BodyFault {
    pub(crate) fn of(action: &Action, len: Option<u64>) -> BodyFault {
        match *action {
            Action::Truncate { bytes, fraction } => {
                let at = match (bytes, len) {
                    (Some(b), _) => Some(b),
                    (None, Some(len)) => {
                        Some((len as f64 * fraction.unwrap_or(0.5)).floor() as u64)
                    }
                    (None, None) => None,
                };
                BodyFault {
                    // Cutting at or past the end would change nothing.
                    truncate_at: at.filter(|&at| len.is_none_or(|len| at < len)),
                    flip_at: None,
                }
            }
            Action::Flip { offset } => BodyFault {
                truncate_at: None,
                flip_at: offset.or(len.map(|l| l / 2)),
            },
            _ => BodyFault::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Action {
        Action::Status { code, body: None }
    }

    fn no_roll() -> f64 {
        panic!("no roll expected")
    }

    #[test]
    fn the_documented_example_parses_and_round_trips() {
        let json = br#"[
          {"path": "sites/docs/current", "flap": {"on_ms": 300, "off_ms": 700},
           "action": {"type": "status", "code": 503, "body": "origin busy"}},
          {"kind": "tree", "probability": 0.1, "action": {"type": "reset"}},
          {"path": "objects/", "kind": "blob", "action": {"type": "truncate", "fraction": 0.5}},
          {"path": "objects/", "action": {"type": "latency", "ms": 50, "jitter_ms": 20}}
        ]"#;
        let rules = parse_rules(json).unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[0].flap,
            Some(Flap {
                on_ms: 300,
                off_ms: 700
            })
        );
        assert_eq!(rules[1].kind, Some(Kind::Tree));
        assert_eq!(rules[1].action, Action::Reset);
        assert_eq!(rules[3].probability, 1.0);
        let again = parse_rules(&serde_json::to_vec(&rules).unwrap()).unwrap();
        assert_eq!(again, rules);
    }

    #[test]
    fn bad_rules_are_refused_with_their_index() {
        for (json, want) in [
            (r#"[{"action": {"type": "status", "code": 99}}]"#, "rule 0"),
            (
                r#"[{"action": {"type": "reset"}}, {"probability": 1.5, "action": {"type": "reset"}}]"#,
                "rule 1",
            ),
            (
                r#"[{"flap": {"on_ms": 0, "off_ms": 5}, "action": {"type": "reset"}}]"#,
                "rule 0",
            ),
            (
                r#"[{"action": {"type": "truncate", "bytes": 1, "fraction": 0.5}}]"#,
                "rule 0",
            ),
            (
                r#"[{"action": {"type": "hang", "max_ms": 600001}}]"#,
                "rule 0",
            ),
            (
                r#"[{"action": {"type": "latency", "ms": 600000, "jitter_ms": 1}}]"#,
                "rule 0",
            ),
        ] {
            let err = parse_rules(json.as_bytes()).unwrap_err();
            assert!(err.to_string().starts_with(want), "{json}: {err}");
        }
        for json in [
            r#"[{"action": {"type": "explode"}}]"#,
            r#"[{"pth": "objects/", "action": {"type": "reset"}}]"#,
            r#"{"action": {"type": "reset"}}"#,
        ] {
            assert!(
                matches!(parse_rules(json.as_bytes()), Err(RuleError::Json(_))),
                "{json}"
            );
        }
        let many = vec![Rule::new(Action::Reset); MAX_RULES + 1];
        assert!(matches!(check_rules(&many), Err(RuleError::TooMany { .. })));
    }

    #[test]
    fn first_applying_rule_wins() {
        let t0 = Instant::now();
        let set = RuleSet::new(
            vec![
                Rule::new(status(500)).path("/sites/docs/current"),
                Rule::new(status(503)).path("sites/"),
                Rule::new(Action::Reset),
            ],
            t0,
        )
        .unwrap();
        let pick = |key: &str| set.select(key, None, t0, &mut no_roll).cloned();
        assert_eq!(pick("sites/docs/current"), Some(status(500)));
        assert_eq!(pick("sites/docs/history"), Some(status(503)));
        assert_eq!(pick("hosts/a.example"), Some(Action::Reset));
        assert!(
            RuleSet::empty(t0)
                .select("x", None, t0, &mut no_roll)
                .is_none()
        );
    }

    #[test]
    fn kind_rules_need_a_known_kind() {
        let t0 = Instant::now();
        let set = RuleSet::new(vec![Rule::new(status(500)).kind(Kind::Tree)], t0).unwrap();
        let key = "objects/ab/ab00";
        assert!(set.needs_object_kind(key));
        assert!(
            set.select(key, Some(Kind::Tree), t0, &mut no_roll)
                .is_some()
        );
        assert!(
            set.select(key, Some(Kind::Blob), t0, &mut no_roll)
                .is_none()
        );
        assert!(set.select(key, None, t0, &mut no_roll).is_none());
        let pointers = RuleSet::new(vec![Rule::new(status(500)).kind(Kind::Pointer)], t0).unwrap();
        assert!(!pointers.needs_object_kind(key));
        let scoped = RuleSet::new(
            vec![Rule::new(status(500)).kind(Kind::Blob).path("sites/")],
            t0,
        )
        .unwrap();
        assert!(!scoped.needs_object_kind(key), "the path rules it out");
    }

    #[test]
    fn flapping_follows_the_schedule_from_installation() {
        let t0 = Instant::now();
        let set = RuleSet::new(
            vec![
                Rule::new(status(503)).flap(Duration::from_millis(300), Duration::from_millis(200)),
            ],
            t0,
        )
        .unwrap();
        let on = |ms: u64| {
            set.select("k", None, t0 + Duration::from_millis(ms), &mut no_roll)
                .is_some()
        };
        for (ms, want) in [
            (0, true),
            (299, true),
            (300, false),
            (499, false),
            (500, true),
            (799, true),
            (800, false),
            (5_000 + 100, true),
        ] {
            assert_eq!(on(ms), want, "at {ms} ms");
        }
        // A clock read before installation counts as the start.
        assert!(
            set.select("k", None, t0 - Duration::from_millis(1), &mut no_roll)
                .is_some()
        );
    }

    #[test]
    fn probability_rolls_and_falls_through() {
        let t0 = Instant::now();
        let set = RuleSet::new(
            vec![
                Rule::new(status(500)).probability(0.25),
                Rule::new(status(503)),
            ],
            t0,
        )
        .unwrap();
        let mut rolls = [0.1, 0.25, 0.9].into_iter();
        let mut roll = || rolls.next().unwrap();
        assert_eq!(set.select("k", None, t0, &mut roll), Some(&status(500)));
        assert_eq!(set.select("k", None, t0, &mut roll), Some(&status(503)));
        assert_eq!(set.select("k", None, t0, &mut roll), Some(&status(503)));
        let never = RuleSet::new(vec![Rule::new(status(500)).probability(0.0)], t0).unwrap();
        assert!(never.select("k", None, t0, &mut || 0.0).is_none());
    }

    #[test]
    fn latency_adds_bounded_jitter() {
        assert_eq!(latency(100, 0, 0.99), Duration::from_millis(100));
        assert_eq!(latency(100, 50, 0.0), Duration::from_millis(100));
        assert_eq!(latency(100, 50, 0.999_999), Duration::from_millis(150));
        assert_eq!(latency(100, 50, 0.5), Duration::from_millis(125));
    }

    #[test]
    fn body_faults_by_length() {
        let trunc = |bytes, fraction| Action::Truncate { bytes, fraction };
        assert_eq!(
            BodyFault::of(&trunc(None, None), Some(10)).truncate_at,
            Some(5)
        );
        assert_eq!(
            BodyFault::of(&trunc(Some(3), None), Some(10)).truncate_at,
            Some(3)
        );
        assert_eq!(
            BodyFault::of(&trunc(Some(10), None), Some(10)).truncate_at,
            None
        );
        assert_eq!(
            BodyFault::of(&trunc(None, Some(0.0)), Some(10)).truncate_at,
            Some(0)
        );
        assert_eq!(
            BodyFault::of(&trunc(Some(3), None), None).truncate_at,
            Some(3)
        );
        assert_eq!(BodyFault::of(&trunc(None, None), None).truncate_at, None);
        let flip = |offset| Action::Flip { offset };
        assert_eq!(BodyFault::of(&flip(None), Some(10)).flip_at, Some(5));
        assert_eq!(BodyFault::of(&flip(Some(2)), Some(10)).flip_at, Some(2));
        assert_eq!(
            BodyFault::of(&Action::Reset, Some(10)),
            BodyFault::default()
        );
    }
}
