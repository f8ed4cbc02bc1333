//! Load and failure testing tools for the edge.
//!
//! - [`chaos`]: `chaos-origin`, an origin that serves a store over HTTP and injects faults by
//!   rule, as a subcommand and as a library for in-process integration tests.

#![forbid(unsafe_code)]

pub mod chaos;
