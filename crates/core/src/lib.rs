//! Backstop's pure core: the statistics the gateway records and the analysis
//! reads, the rollout policies the controller will follow, and (in later
//! issues) the controller and its actions.
//!
//! Nothing in this crate does I/O, sleeps, reads a clock or draws random
//! numbers: callers pass time in. `clippy.toml` turns a stray `Instant::now`
//! or `HashMap` into a lint error, so the same code runs live and in the
//! deterministic simulator.

pub mod analysis;
pub mod policy;
