//! What a configuration reload (SIGHUP) can change in a running node, and what waits for a
//! restart. Pure: two configurations in, a plan out; the node applies it.

use crate::Config;

/// The difference between the running configuration and the one just read, as a node
/// reloading in place sees it.
///
/// Applied at once (by the node, whatever the plan says, since setting an unchanged value is
/// harmless): `log.level`, `http.cache_control_*`, `server.yield_after`,
/// `pointers.refresh_interval`/`negative_ttl`, `origin.site_concurrency`/`site_queue`; the
/// TLS certificates reload by themselves. Everything in [`ReloadPlan::needs_restart`] keeps
/// its running value until the process restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadPlan {
    /// The log filter changed (`log.level`).
    pub log_level: bool,
    /// The settings that changed but take effect only after a restart, named as in the
    /// file (a group of keys joined by `/`, a section as `name.*`).
    pub needs_restart: Vec<&'static str>,
}

impl Config {
    /// Compares `self` (running) with `next` (just read) key by key.
    pub fn reload_plan(&self, next: &Config) -> ReloadPlan {
        let mut restart = Vec::new();
        if next.listen != self.listen {
            restart.push("server.listen");
        }
        if next.store != self.store {
            restart.push("store.location");
        }
        if next.store_s3 != self.store_s3 {
            restart.push("store.s3.*");
        }
        if next.cache_dir != self.cache_dir || next.disk_size != self.disk_size {
            restart.push("cache.dir/disk_size");
        }
        if next.disk_scrub_rate != self.disk_scrub_rate {
            restart.push("cache.disk_scrub_rate");
        }
        // The per-site limits reload; every other `[origin]` key shapes the origin client.
        let mut origin_now = next.origin.clone();
        origin_now.site_concurrency = self.origin.site_concurrency;
        origin_now.site_queue = self.origin.site_queue;
        if origin_now != self.origin {
            restart.push("origin (except site_concurrency, site_queue)");
        }
        if next.memory_size != self.memory_size
            || next.memory_max_object != self.memory_max_object
            || next.tree_size != self.tree_size
        {
            restart.push("cache.memory_size/memory_max_object/tree_size");
        }
        if next.limits != self.limits {
            restart.push(
                "server.max_buffered/send_timeout/idle_timeout/max_connections/max_header_bytes",
            );
        }
        if next.default_site != self.default_site {
            restart.push("server.default_site");
        }
        if next.admin_listen != self.admin_listen {
            restart.push("admin.listen");
        }
        // Certificates reload by themselves on SIGHUP; the listeners and folder do not.
        if next.tls != self.tls || next.http3 != self.http3 {
            restart.push("tls.*/http3.*");
        }
        if next.notify != self.notify {
            restart.push("notify.*");
        }
        if next.tiers != self.tiers {
            restart.push("tiers.*");
        }
        ReloadPlan {
            log_level: next.log_level != self.log_level,
            needs_restart: restart,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Config;

    fn plan_for(text: &str) -> super::ReloadPlan {
        let next = Config::parse(text, None).unwrap();
        Config::default().reload_plan(&next)
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let c = Config::default();
        assert_eq!(c.reload_plan(&c.clone()), super::ReloadPlan::default());
    }

    #[test]
    fn each_restart_key_is_detected() {
        let cases = [
            ("[server]\nlisten = \"127.0.0.1:8081\"\n", "server.listen"),
            ("[store]\nlocation = \"other\"\n", "store.location"),
            ("[cache]\ndir = \"elsewhere\"\n", "cache.dir/disk_size"),
            ("[cache]\ndir = \"\"\n", "cache.dir/disk_size"),
            ("[cache]\ndisk_size = \"1GiB\"\n", "cache.dir/disk_size"),
            (
                "[origin]\nconnect_timeout = \"9s\"\n",
                "origin (except site_concurrency, site_queue)",
            ),
            (
                "[origin]\nconcurrency = 7\n",
                "origin (except site_concurrency, site_queue)",
            ),
            (
                "[origin]\nbreaker_failures = 99\n",
                "origin (except site_concurrency, site_queue)",
            ),
            (
                "[cache]\nmemory_size = \"8MiB\"\n",
                "cache.memory_size/memory_max_object/tree_size",
            ),
            (
                "[cache]\nmemory_max_object = \"1KiB\"\n",
                "cache.memory_size/memory_max_object/tree_size",
            ),
            (
                "[cache]\ntree_size = \"1MiB\"\n",
                "cache.memory_size/memory_max_object/tree_size",
            ),
            ("[server]\ndefault_site = \"docs\"\n", "server.default_site"),
            ("[admin]\nlisten = \"127.0.0.1:9902\"\n", "admin.listen"),
            ("[admin]\nlisten = \"\"\n", "admin.listen"),
            (
                "[tls]\nlisten = \"127.0.0.1:8443\"\ncert_dir = \"certs\"\n",
                "tls.*/http3.*",
            ),
            ("[http3]\nmax_streams = 7\n", "tls.*/http3.*"),
            ("[notify]\nnats = \"nats://127.0.0.1:4222\"\n", "notify.*"),
            ("[tiers]\nparents = [\"http://10.0.0.5:8080\"]\n", "tiers.*"),
            ("[tiers]\nserve_children = true\n", "tiers.*"),
        ];
        for (text, key) in cases {
            let plan = plan_for(text);
            assert_eq!(plan.needs_restart, [key], "{text}");
            assert!(!plan.log_level, "{text}");
        }
    }

    #[test]
    fn reloadable_keys_are_not_listed() {
        for text in [
            "[log]\nlevel = \"debug\"\n",
            "[http]\ncache_control_html = \"no-store\"\n",
            "[http]\ncache_control_other = \"no-cache\"\n",
            "[server]\nyield_after = \"5ms\"\n",
            "[pointers]\nrefresh_interval = \"30s\"\n",
            "[pointers]\nnegative_ttl = \"1m\"\n",
            "[origin]\nsite_concurrency = 3\nsite_queue = 4\n",
        ] {
            assert_eq!(plan_for(text).needs_restart, Vec::<&str>::new(), "{text}");
        }
    }

    #[test]
    fn the_log_level_is_flagged_only_when_it_changes() {
        assert!(plan_for("[log]\nlevel = \"debug\"\n").log_level);
        let c = Config::default();
        let mut same = c.clone();
        same.refresh_interval = Duration::from_secs(60);
        assert!(!c.reload_plan(&same).log_level);
    }

    #[test]
    fn several_changes_are_listed_in_key_order() {
        let plan = plan_for(
            "[server]\nlisten = \"127.0.0.1:1\"\ndefault_site = \"a\"\n[store]\nlocation = \"s\"\n[log]\nlevel = \"warn\"\n",
        );
        assert_eq!(
            plan.needs_restart,
            ["server.listen", "store.location", "server.default_site"]
        );
        assert!(plan.log_level);
    }
}
