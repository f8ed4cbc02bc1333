//! The edge node: serving deploys from memory, disk and the origin.

#![forbid(unsafe_code)]

pub mod cli;
