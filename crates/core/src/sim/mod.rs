//! Building blocks of the deterministic rollout simulator.
//!
//! Everything here is seeded: the same seed replays the same run, bit for
//! bit. No OS randomness and no clock: the simulator owns time and passes
//! tick lengths in.

pub mod quality;
pub mod scenario;
pub mod traffic;
