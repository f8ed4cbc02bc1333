//! The edge node: serving deploys from memory, disk and the origin.

#![forbid(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod cli;
pub mod coalesce;
pub mod error;
pub mod http;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod path;
pub mod pointers;
pub mod preview;
pub mod route;
pub mod samples;
pub mod sched;
#[cfg(test)]
mod testing;
pub mod tiers;
pub mod top;
pub mod trees;
