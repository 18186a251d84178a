//! Backstop's pure core: the statistics the gateway records and the analysis
//! reads, the rollout policies, the sequential tests behind triggers, the
//! rollout controller, and the simulator that drives it on a virtual clock.
//!
//! Nothing in this crate does I/O, sleeps, reads a clock or draws random
//! numbers: callers pass time in. `clippy.toml` turns a stray `Instant::now`
//! or `HashMap` into a lint error, so the same code runs live and in the
//! deterministic simulator.

pub mod analysis;
pub mod controller;
pub mod policy;
pub mod sim;
