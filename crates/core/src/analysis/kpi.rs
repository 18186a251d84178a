//! Business KPIs fed back by the application, per version and window.
//!
//! The gateway joins each reported outcome to the (model, version) that
//! answered the request and adds it to that version's bucket of the
//! feedback's arrival time. These are the plain, mergeable figures the
//! controller's KPI triggers read: [`Moments`] per KPI name and label
//! accuracy counts, summed over a range of buckets into a [`KpiWindow`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Count, sum and sum of squares of one KPI's values: enough for a mean,
/// a variance and a two-sample test, and mergeable by addition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Moments {
    pub fn add(&mut self, value: f64) {
        self.n += 1;
        self.sum += value;
        self.sum_sq += value * value;
    }

    pub fn merge(&mut self, other: &Moments) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The sample variance (n − 1 in the denominator); `None` below two
    /// values. Never negative, whatever the rounding.
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        let centred = self.sum_sq - self.sum * self.sum / n;
        Some((centred / (n - 1.0)).max(0.0))
    }
}

/// One version's feedback over a window of buckets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KpiWindow {
    /// By KPI name (the application's names, e.g. `conversion`, `revenue`).
    pub kpis: BTreeMap<String, Moments>,
    /// Feedback items that carried the true label.
    pub labeled: u64,
    /// Labelled items whose recorded prediction equals the label. Only
    /// requests with a recorded prediction can count here.
    pub correct: u64,
}

impl KpiWindow {
    pub fn merge(&mut self, other: &KpiWindow) {
        for (name, moments) in &other.kpis {
            self.kpis.entry(name.clone()).or_default().merge(moments);
        }
        self.labeled += other.labeled;
        self.correct += other.correct;
    }

    /// `correct / labeled`; `None` without labels.
    pub fn accuracy(&self) -> Option<f64> {
        (self.labeled > 0).then(|| self.correct as f64 / self.labeled as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_give_mean_and_sample_variance_and_merge_by_addition() {
        let mut a = Moments::default();
        for x in [1.0, 2.0, 3.0] {
            a.add(x);
        }
        let mut b = Moments::default();
        b.add(4.0);
        assert_eq!(a.mean(), Some(2.0));
        assert_eq!(a.variance(), Some(1.0));
        assert_eq!(b.variance(), None);
        assert_eq!(Moments::default().mean(), None);
        a.merge(&b);
        assert_eq!(a.n, 4);
        assert_eq!(a.mean(), Some(2.5));
        assert!((a.variance().unwrap() - 5.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn windows_merge_per_name() {
        let mut a = KpiWindow::default();
        a.kpis.entry("click".into()).or_default().add(1.0);
        a.labeled = 2;
        a.correct = 1;
        let mut b = KpiWindow::default();
        b.kpis.entry("click".into()).or_default().add(0.0);
        b.kpis.entry("revenue".into()).or_default().add(9.5);
        b.labeled = 2;
        b.correct = 2;
        a.merge(&b);
        assert_eq!(a.kpis["click"].n, 2);
        assert_eq!(a.kpis["revenue"].sum, 9.5);
        assert_eq!(a.accuracy(), Some(0.75));
        assert_eq!(KpiWindow::default().accuracy(), None);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<KpiWindow>(&json).unwrap(), a);
    }
}
