//! Load and failure testing tools for the edge.
//!
//! - [`loadgen`]: `loadtest run`, an HTTP/1.1 and HTTP/2 load generator with closed-loop and
//!   open-loop (coordinated-omission-free) modes, and `loadtest gen-site`, the matching
//!   synthetic site.
//! - [`compare`]: `loadtest compare`, the edge against nginx and Varnish on this machine.
//! - [`chaos`]: `chaos-origin`, an origin that serves a store over HTTP and injects faults by
//!   rule, as a subcommand and as a library for in-process integration tests.

#![forbid(unsafe_code)]

pub mod chaos;
pub mod compare;
pub mod loadgen;
