//! Streaming, bounded-memory statistics per model version.
//!
//! The gateway records every finished request into a [`VersionStats`]
//! (lock-free, no allocation); the analysis and the controller read
//! [`WindowSnapshot`]s over the windows they ask for.

pub mod drift;
pub mod histogram;
pub mod kpi;
pub mod profile;
pub mod sequential;
pub mod signals;
pub mod trigger;
pub mod window;

pub use drift::{
    chi_square, ks, psi, CategoricalSketch, ChiSquareResult, KsResult, NumericSketch, PsiBand,
};
pub use histogram::{AtomicHistogram, HistogramSnapshot};
pub use kpi::{KpiWindow, Moments};
pub use profile::{Profile, ProfileError};
pub use signals::{Signals, Sketch};
pub use trigger::{Reading, Sample};
pub use window::{Outcome, VersionStats, WindowSnapshot};
