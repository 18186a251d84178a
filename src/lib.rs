//! Backstop: a gateway in front of model servers that moves traffic between
//! model versions, records what the analysis needs, and (in later issues)
//! rolls back by itself.
//!
//! Data flows one way: [`gateway`] → analysis (`backstop_core::analysis`) →
//! controller → actions. [`admin`] is the JSON API that reads the gateway
//! and replaces routing tables. `main.rs` is only the command line.

pub mod access;
pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod feedback;
pub mod gameday;
pub mod gateway;
pub mod incident;
pub mod loadgen;
pub mod notify;
pub mod policy;
pub mod profile;
pub mod prometheus;
pub mod redact;
pub mod registry;
pub mod report;
pub mod rollout;
pub mod runbook;
pub mod signature;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod toy;
pub mod yaml;
