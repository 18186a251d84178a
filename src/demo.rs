//! `backstop demo`: placeholder until the demo is written.
use serde::Serialize;
use std::time::Duration;

pub struct DemoOptions {
    pub duration: Duration,
    pub rate_per_s: u64,
    pub json: bool,
}

#[derive(Serialize)]
pub struct DemoReport {}

pub async fn run(_options: DemoOptions) -> anyhow::Result<DemoReport> {
    Ok(DemoReport {})
}
