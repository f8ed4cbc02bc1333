//! `Config::parse` on arbitrary text (the `edge.toml` an operator writes): no panic, errors
//! that name a line inside the text, and a valid config that reloads onto itself as "no
//! change".
#![no_main]

use edge_config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Some("fuzz.toml")) {
        Ok(c) => {
            let plan = c.reload_plan(&c);
            assert!(plan.needs_restart.is_empty() && !plan.log_level, "{plan:?}");
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.key();
            if let Some(line) = e.line() {
                assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "{e}");
            }
        }
    }
});
