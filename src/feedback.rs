//! The feedback API's engine: business outcomes reported by the application,
//! joined to the (model, version) that answered the request.
//!
//! The gateway gives every request an id (`x-backstop-request-id`). When a
//! version's answer reaches the client successfully, [`Feedback::record`]
//! remembers `id -> (version, answered_at, prediction)` in a bounded join
//! table. Later the application posts what happened (the true label, KPIs
//! such as `conversion` or `revenue`) keyed by that id; [`Feedback::apply`]
//! finds the version and adds the figures to its bucket of the feedback's
//! *arrival* time, aligned with the gateway's statistics buckets
//! (`stats.bucket_ms`, epochs `unix_ms / bucket_ms`). KPI triggers compare
//! a candidate's [`KpiWindow`] with the last-known-good's over the same
//! range of buckets.
//!
//! Only answers that ended in success are recorded: a failed request is no
//! prediction anyone acts on, and its failure already counts against the
//! version in the request statistics. Shadow copies never answered the
//! user and are not recorded either.
//!
//! Bounds:
//! - The join table holds at most `feedback.capacity` entries (oldest
//!   evicted first) and forgets an entry two join windows after its answer
//!   (the second window only so that late feedback is told `expired`
//!   rather than `unknown`). An entry costs about 100 bytes: the 16-byte
//!   key twice (map and expiry queue), a version pointer, the answer time,
//!   the prediction pointer and the applied-KPI bit set (56 bytes in the
//!   map slot, which hashbrown keeps at most 7/8 full, plus a control byte),
//!   so the default 1,000,000 entries stay under about 100 MiB.
//! - It is split in [`SHARDS`] shards by the id's first byte, each its own
//!   mutex: recording costs one short, rarely contended lock.
//! - At most [`KPI_NAMES_MAX`] distinct KPI names per model, each at most
//!   [`KPI_NAME_MAX_LEN`] characters of `[A-Za-z0-9_.:-]`; others are
//!   refused with a reason, so accumulators stay bounded whatever the
//!   application sends.
//!
//! Duplicates: each entry remembers which KPI names (and whether the label)
//! it has taken. An item naming any of them again is refused as a whole as
//! `duplicate`, so an application that retries a post never counts twice;
//! different KPI names for the same request may come in separate posts.

use crate::config::FeedbackConfig;
use crate::gateway::request_id::RequestId;
use backstop_core::analysis::{KpiWindow, Moments};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Shards of the join table.
pub const SHARDS: usize = 16;
/// Distinct KPI names one model may have.
pub const KPI_NAMES_MAX: usize = 32;
/// Longest KPI name.
pub const KPI_NAME_MAX_LEN: usize = 64;
/// Longest label, in bytes of its string form.
pub const LABEL_MAX_LEN: usize = 256;

/// The applied-set bit that stands for the label (KPIs use bits 0..32).
const LABEL_BIT: u64 = 1 << 63;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The true label of a request, as the application sends it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Label {
    Bool(bool),
    Number(serde_json::Number),
    Text(String),
}

impl Label {
    /// What a prediction is compared with: the string as is, booleans and
    /// numbers as [`number_text`] writes them (`true`, `1`, `0.5`).
    pub fn as_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Label::Bool(b) => b.to_string().into(),
            Label::Number(n) => number_text(n).into(),
            Label::Text(t) => t.as_str().into(),
        }
    }
}

/// A number as labels compare it: a whole number without a fraction
/// (`1.0` and `1` are the same label), others as JSON writes them.
pub fn number_text(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
        _ => n.to_string(),
    }
}

/// What became of an item's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    /// Compared with the prediction recorded for the answer.
    Label {
        correct: bool,
    },
    /// The answer's prediction was not read: nothing to compare with.
    Unjudged,
    NoLabel,
}

/// One reported outcome.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedbackItem {
    /// The `x-backstop-request-id` the gateway answered with.
    pub request_id: String,
    /// The true label (for accuracy): a string, number or boolean.
    #[serde(default)]
    pub label: Option<Label>,
    /// KPI values by name (`conversion`, `click`, `revenue`, ...).
    #[serde(default)]
    pub kpis: BTreeMap<String, f64>,
}

/// The version an item was joined to.
#[derive(Clone, Debug, PartialEq)]
pub struct Joined {
    pub model: Arc<str>,
    pub version: Arc<str>,
}

/// Why an item was not counted. Nothing of it was applied.
#[derive(Clone, Debug, PartialEq)]
pub enum Unjoined {
    /// No answered request has this id: never seen, evicted, or it failed.
    Unknown,
    /// The request was answered longer ago than the join window.
    Expired,
    /// This request already took one of the item's KPIs (or its label).
    Duplicate,
    /// The item itself is unusable; `code` is stable, `message` for people.
    Rejected { code: &'static str, message: String },
}

impl Unjoined {
    pub fn code(&self) -> &'static str {
        match self {
            Unjoined::Unknown => "unknown",
            Unjoined::Expired => "expired",
            Unjoined::Duplicate => "duplicate",
            Unjoined::Rejected { code, .. } => code,
        }
    }

    fn rejected(code: &'static str, message: impl Into<String>) -> Self {
        Unjoined::Rejected {
            code,
            message: message.into(),
        }
    }
}

/// A model's KPI names; a name's index is its place here, shared by every
/// version of the model so an entry's applied set can use bits.
#[derive(Default)]
pub struct KpiNames {
    names: Mutex<Vec<Arc<str>>>,
}

impl KpiNames {
    /// The names' indexes, adding the new ones when there is room for all
    /// of them (else nothing is added).
    fn indexes<'a>(&self, wanted: impl Iterator<Item = &'a str>) -> Result<Vec<usize>, Unjoined> {
        let mut names = lock(&self.names);
        let known = names.len();
        let mut indexes = Vec::new();
        for name in wanted {
            match names.iter().position(|n| &**n == name) {
                Some(i) => indexes.push(i),
                None if names.len() < KPI_NAMES_MAX => {
                    names.push(name.into());
                    indexes.push(names.len() - 1);
                }
                None => {
                    names.truncate(known);
                    return Err(Unjoined::rejected(
                        "too_many_kpis",
                        format!(
                            "the model already has {known} KPI names (at most {KPI_NAMES_MAX}); {name:?} would be one too many"
                        ),
                    ));
                }
            }
        }
        Ok(indexes)
    }

    fn snapshot(&self) -> Vec<Arc<str>> {
        lock(&self.names).clone()
    }
}

/// One bucket's (or a lifetime's) figures, KPIs by name index.
#[derive(Clone, Default)]
struct Bucket {
    epoch: u64,
    kpis: Vec<Moments>,
    labeled: u64,
    correct: u64,
}

impl Bucket {
    fn add(&mut self, kpis: &[(usize, f64)], labeled: bool, correct: bool) {
        for &(index, value) in kpis {
            if self.kpis.len() <= index {
                self.kpis.resize(index + 1, Moments::default());
            }
            self.kpis[index].add(value);
        }
        self.labeled += u64::from(labeled);
        self.correct += u64::from(correct);
    }

    fn add_to(&self, window: &mut KpiWindow, names: &[Arc<str>]) {
        for (index, moments) in self.kpis.iter().enumerate() {
            if moments.n == 0 {
                continue;
            }
            if let Some(name) = names.get(index) {
                window
                    .kpis
                    .entry(name.to_string())
                    .or_default()
                    .merge(moments);
            }
        }
        window.labeled += self.labeled;
        window.correct += self.correct;
    }
}

/// What happened to the feedback for one version, over its lifetime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FeedbackCounts {
    pub accepted: u64,
    pub duplicate: u64,
    pub expired: u64,
    /// Labels for answers whose prediction was not read (not sampled, or a
    /// fallback's): accepted, and left out of accuracy rather than counted
    /// wrong.
    pub unjudged_labels: u64,
}

struct VersionKpis {
    /// `buckets` slots, allocated with the first feedback.
    ring: Vec<Bucket>,
    lifetime: Bucket,
    counts: FeedbackCounts,
}

/// One (model, version)'s feedback accumulators. The gateway's
/// `VersionState` holds it, so recording needs no lookup by name.
pub struct VersionFeedback {
    pub model: Arc<str>,
    pub version: Arc<str>,
    names: Arc<KpiNames>,
    buckets: usize,
    inner: Mutex<VersionKpis>,
}

impl VersionFeedback {
    pub fn new(model: &str, version: &str, names: Arc<KpiNames>, buckets: usize) -> Self {
        Self {
            model: model.into(),
            version: version.into(),
            names,
            buckets: buckets.max(1),
            inner: Mutex::new(VersionKpis {
                ring: Vec::new(),
                lifetime: Bucket::default(),
                counts: FeedbackCounts::default(),
            }),
        }
    }

    /// `label`: the item's label was judged against a recorded prediction
    /// (`Some(correct)`), not judged (`Some` of nothing: `unjudged`), or absent.
    fn add(&self, epoch: u64, kpis: &[(usize, f64)], label: Judged) {
        let (labeled, correct) = match label {
            Judged::Label { correct } => (true, correct),
            Judged::Unjudged | Judged::NoLabel => (false, false),
        };
        let mut inner = lock(&self.inner);
        inner.counts.accepted += 1;
        inner.counts.unjudged_labels += u64::from(label == Judged::Unjudged);
        inner.lifetime.add(kpis, labeled, correct);
        if inner.ring.is_empty() {
            inner.ring = vec![
                Bucket {
                    epoch: u64::MAX,
                    ..Bucket::default()
                };
                self.buckets
            ];
        }
        let slot = &mut inner.ring[(epoch % self.buckets as u64) as usize];
        if slot.epoch != epoch {
            if slot.epoch != u64::MAX && slot.epoch > epoch {
                // Older than the ring (the clock went back): lifetime only.
                return;
            }
            *slot = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        slot.add(kpis, labeled, correct);
    }

    fn count(&self, result: Unjoined) {
        let mut inner = lock(&self.inner);
        match result {
            Unjoined::Duplicate => inner.counts.duplicate += 1,
            Unjoined::Expired => inner.counts.expired += 1,
            _ => {}
        }
    }

    /// Sum of the buckets with epochs in `from..=to` still held (the
    /// last `stats.buckets` epochs up to `to`).
    pub fn window(&self, from_epoch: u64, to_epoch: u64) -> KpiWindow {
        let names = self.names.snapshot();
        let inner = lock(&self.inner);
        let mut window = KpiWindow::default();
        if inner.ring.is_empty() || from_epoch > to_epoch {
            return window;
        }
        let ring = inner.ring.len() as u64;
        for epoch in from_epoch.max(to_epoch.saturating_sub(ring - 1))..=to_epoch {
            let slot = &inner.ring[(epoch % ring) as usize];
            if slot.epoch == epoch {
                slot.add_to(&mut window, &names);
            }
        }
        window
    }

    /// Everything accepted since the gateway started.
    pub fn lifetime(&self) -> KpiWindow {
        let names = self.names.snapshot();
        let inner = lock(&self.inner);
        let mut window = KpiWindow::default();
        inner.lifetime.add_to(&mut window, &names);
        window
    }

    pub fn counts(&self) -> FeedbackCounts {
        lock(&self.inner).counts
    }
}

/// A request id's 128 bits: the join table's key.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key([u8; 16]);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Ids are random and made by the gateway (feedback only looks
        // them up, never inserts): their bits are already a good hash.
        let mut half = [0u8; 8];
        half.copy_from_slice(&self.0[8..]);
        state.write_u64(u64::from_le_bytes(half));
    }
}

/// Passes [`Key`]'s random bits through.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

struct Entry {
    version: Arc<VersionFeedback>,
    answered_at_ms: u64,
    prediction: Option<Arc<str>>,
    /// KPI name indexes (bits 0..32) and the label (bit 63) applied.
    applied: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>,
    /// Keys in the order they were recorded: the oldest go first.
    order: VecDeque<Key>,
}

/// The process's feedback join table and accumulators. One per gateway.
pub struct Feedback {
    shards: Vec<Mutex<Shard>>,
    window_ms: u64,
    shard_capacity: usize,
    bucket_ms: u64,
    buckets: usize,
    models: Mutex<HashMap<String, Arc<KpiNames>>>,
    versions: Mutex<HashMap<(String, String), Arc<VersionFeedback>>>,
    unknown: AtomicU64,
    rejected: AtomicU64,
    evicted: AtomicU64,
}

impl Feedback {
    /// `bucket_ms` and `buckets` are the gateway's statistics settings.
    pub fn new(config: &FeedbackConfig, bucket_ms: u64, buckets: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            window_ms: config.window_ms,
            shard_capacity: config.capacity.div_ceil(SHARDS).max(1),
            bucket_ms: bucket_ms.max(1),
            buckets: buckets.max(1),
            models: Mutex::default(),
            versions: Mutex::default(),
            unknown: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    pub fn bucket_ms(&self) -> u64 {
        self.bucket_ms
    }

    /// The (model, version)'s accumulators, created on first use. Called
    /// when a version gets its gateway state, never per request.
    pub fn version(&self, model: &str, version: &str) -> Arc<VersionFeedback> {
        let mut versions = lock(&self.versions);
        versions
            .entry((model.to_string(), version.to_string()))
            .or_insert_with(|| {
                let names = lock(&self.models)
                    .entry(model.to_string())
                    .or_default()
                    .clone();
                Arc::new(VersionFeedback::new(model, version, names, self.buckets))
            })
            .clone()
    }

    /// The model's versions with accumulators, sorted by version.
    pub fn versions_of(&self, model: &str) -> Vec<Arc<VersionFeedback>> {
        let versions = lock(&self.versions);
        let mut found: Vec<_> = versions
            .iter()
            .filter(|((m, _), _)| m == model)
            .map(|(_, v)| v.clone())
            .collect();
        found.sort_by(|a, b| a.version.cmp(&b.version));
        found
    }

    /// Every version's accumulators, sorted by model and version.
    pub fn all_versions(&self) -> Vec<Arc<VersionFeedback>> {
        let versions = lock(&self.versions);
        let mut all: Vec<_> = versions.values().cloned().collect();
        all.sort_by(|a, b| (&a.model, &a.version).cmp(&(&b.model, &b.version)));
        all
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        lock(&self.shards[key.0[0] as usize % SHARDS])
    }

    /// Remembers that `version` answered request `id` at `now_ms` (Unix
    /// ms). `prediction` is what it predicted, when the gateway knows
    /// (compared with labels for accuracy). Evicts what the bounds require.
    pub fn record(
        &self,
        id: &RequestId,
        version: &Arc<VersionFeedback>,
        prediction: Option<Arc<str>>,
        now_ms: u64,
    ) {
        let key = Key(id.to_bytes());
        let forget_before = now_ms.saturating_sub(self.window_ms.saturating_mul(2));
        let mut evicted = 0;
        let mut shard = self.shard(&key);
        let shard = &mut *shard;
        while let Some(oldest) = shard.order.front() {
            let stale = shard
                .map
                .get(oldest)
                .is_none_or(|e| e.answered_at_ms < forget_before);
            if !stale && shard.order.len() < self.shard_capacity {
                break;
            }
            if !stale {
                evicted += 1;
            }
            shard.map.remove(oldest);
            shard.order.pop_front();
        }
        let entry = Entry {
            version: version.clone(),
            answered_at_ms: now_ms,
            prediction,
            applied: 0,
        };
        if shard.map.insert(key, entry).is_none() {
            shard.order.push_back(key);
        }
        if evicted > 0 {
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// Joins one item to the version that answered its request and adds
    /// it to that version's bucket of `now_ms` (Unix ms, the arrival).
    /// All or nothing: a refused item changes no figure.
    pub fn apply(&self, item: &FeedbackItem, now_ms: u64) -> Result<Joined, Unjoined> {
        let result = self.join(item, now_ms);
        match &result {
            Ok(_) => {}
            Err(Unjoined::Unknown) => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
            Err(Unjoined::Rejected { .. }) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
            // Counted on the version, in `join`.
            Err(Unjoined::Expired | Unjoined::Duplicate) => {}
        }
        result
    }

    fn join(&self, item: &FeedbackItem, now_ms: u64) -> Result<Joined, Unjoined> {
        let id = RequestId::parse(&item.request_id).ok_or_else(|| {
            Unjoined::rejected(
                "invalid_request_id",
                format!(
                    "request ids are the 32 hex digits of the x-backstop-request-id header, got {:?}",
                    truncate(&item.request_id, 40)
                ),
            )
        })?;
        check_item(item)?;
        let key = Key(id.to_bytes());
        let (version, prediction, kpis) = {
            let mut shard = self.shard(&key);
            let entry = shard.map.get_mut(&key).ok_or(Unjoined::Unknown)?;
            if now_ms.saturating_sub(entry.answered_at_ms) > self.window_ms {
                entry.version.count(Unjoined::Expired);
                return Err(Unjoined::Expired);
            }
            let indexes = entry
                .version
                .names
                .indexes(item.kpis.keys().map(String::as_str))?;
            let mut bits = 0u64;
            let mut kpis = Vec::with_capacity(indexes.len());
            for (index, value) in indexes.into_iter().zip(item.kpis.values()) {
                bits |= 1 << index;
                kpis.push((index, *value));
            }
            if item.label.is_some() {
                bits |= LABEL_BIT;
            }
            if entry.applied & bits != 0 {
                entry.version.count(Unjoined::Duplicate);
                return Err(Unjoined::Duplicate);
            }
            entry.applied |= bits;
            (entry.version.clone(), entry.prediction.clone(), kpis)
        };
        let label = match (&item.label, &prediction) {
            (Some(label), Some(prediction)) => Judged::Label {
                correct: label.as_text() == **prediction,
            },
            (Some(_), None) => Judged::Unjudged,
            (None, _) => Judged::NoLabel,
        };
        version.add(now_ms / self.bucket_ms, &kpis, label);
        Ok(Joined {
            model: version.model.clone(),
            version: version.version.clone(),
        })
    }

    /// The (model, version)'s figures over buckets `from..=to` (empty for a
    /// version without feedback).
    pub fn window(&self, model: &str, version: &str, from_epoch: u64, to_epoch: u64) -> KpiWindow {
        let found = lock(&self.versions)
            .get(&(model.to_string(), version.to_string()))
            .cloned();
        found.map_or_else(KpiWindow::default, |v| v.window(from_epoch, to_epoch))
    }

    /// Items whose request id was not (or no longer) in the table.
    pub fn unknown_total(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Items refused for their content.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Entries pushed out by the capacity before their time was up.
    pub fn evicted_total(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Entries in the join table now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// What can be refused without the join table.
fn check_item(item: &FeedbackItem) -> Result<(), Unjoined> {
    if item.label.is_none() && item.kpis.is_empty() {
        return Err(Unjoined::rejected(
            "empty_feedback",
            "an item needs a label, or kpis with at least one value",
        ));
    }
    if item.kpis.len() > KPI_NAMES_MAX {
        return Err(Unjoined::rejected(
            "too_many_kpis",
            format!("at most {KPI_NAMES_MAX} KPIs per item"),
        ));
    }
    for (name, value) in &item.kpis {
        let fine = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
        if name.is_empty() || name.len() > KPI_NAME_MAX_LEN || !name.bytes().all(fine) {
            return Err(Unjoined::rejected(
                "invalid_kpi_name",
                format!(
                    "KPI names are 1-{KPI_NAME_MAX_LEN} characters of [A-Za-z0-9_.:-], got {:?}",
                    truncate(name, KPI_NAME_MAX_LEN + 8)
                ),
            ));
        }
        if !value.is_finite() {
            return Err(Unjoined::rejected(
                "invalid_kpi_value",
                format!("KPI {name:?} is not a finite number"),
            ));
        }
    }
    if let Some(label) = &item.label {
        if label.as_text().len() > LABEL_MAX_LEN {
            return Err(Unjoined::rejected(
                "invalid_label",
                format!("labels are at most {LABEL_MAX_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BUCKET_MS: u64 = 1000;

    fn feedback(window_ms: u64, capacity: usize) -> Feedback {
        Feedback::new(
            &FeedbackConfig {
                window_ms,
                capacity,
            },
            BUCKET_MS,
            10,
        )
    }

    fn item(id: &RequestId, value: serde_json::Value) -> FeedbackItem {
        let mut value = value;
        value["request_id"] = json!(id.as_str());
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn feedback_joins_the_version_that_answered() {
        let fb = feedback(60_000, 1000);
        let (v1, v2) = (fb.version("m", "v1"), fb.version("m", "v2"));
        let (a, b) = (RequestId::new(), RequestId::new());
        fb.record(&a, &v1, None, 10_000);
        fb.record(&b, &v2, None, 10_000);
        let joined = fb
            .apply(&item(&a, json!({"kpis": {"conversion": 1}})), 12_000)
            .unwrap();
        assert_eq!((&*joined.model, &*joined.version), ("m", "v1"));
        fb.apply(
            &item(&b, json!({"kpis": {"conversion": 0, "revenue": 2.5}})),
            12_500,
        )
        .unwrap();
        let w1 = fb.window("m", "v1", 0, 20);
        assert_eq!(
            w1.kpis["conversion"],
            Moments {
                n: 1,
                sum: 1.0,
                sum_sq: 1.0
            }
        );
        assert!(!w1.kpis.contains_key("revenue"));
        let w2 = fb.window("m", "v2", 0, 20);
        assert_eq!(w2.kpis["conversion"].n, 1);
        assert_eq!(w2.kpis["revenue"].sum, 2.5);
        assert_eq!(v1.counts().accepted, 1);
        assert_eq!(v2.lifetime(), w2);
        assert_eq!(fb.window("m", "v9", 0, 20), KpiWindow::default());
    }

    #[test]
    fn unknown_ids_and_bad_items_are_refused_and_counted() {
        let fb = feedback(60_000, 1000);
        let v1 = fb.version("m", "v1");
        let id = RequestId::new();
        fb.record(&id, &v1, None, 0);
        let other = RequestId::new();
        assert_eq!(
            fb.apply(&item(&other, json!({"kpis": {"click": 1}})), 1),
            Err(Unjoined::Unknown)
        );
        assert_eq!(fb.unknown_total(), 1);
        let bad = |value: serde_json::Value| fb.apply(&item(&id, value), 1).unwrap_err().code();
        assert_eq!(bad(json!({})), "empty_feedback");
        assert_eq!(bad(json!({"kpis": {"bad name": 1}})), "invalid_kpi_name");
        assert_eq!(bad(json!({"kpis": {"": 1}})), "invalid_kpi_name");
        assert_eq!(bad(json!({"label": "x".repeat(300)})), "invalid_label");
        let mut not_an_id = item(&id, json!({"kpis": {"click": 1}}));
        not_an_id.request_id = "nope".into();
        assert_eq!(
            fb.apply(&not_an_id, 1).unwrap_err().code(),
            "invalid_request_id"
        );
        assert_eq!(fb.rejected_total(), 5);
        // None of it counted, and the id still takes good feedback.
        assert_eq!(v1.counts(), FeedbackCounts::default());
        assert!(fb
            .apply(&item(&id, json!({"kpis": {"click": 1}})), 1)
            .is_ok());
    }

    #[test]
    fn feedback_after_the_window_is_expired_then_forgotten() {
        let fb = feedback(1000, 1000);
        let v1 = fb.version("m", "v1");
        let (a, b) = (RequestId::new(), RequestId::new());
        fb.record(&a, &v1, None, 10_000);
        fb.record(&b, &v1, None, 10_000);
        assert!(fb
            .apply(&item(&a, json!({"kpis": {"click": 1}})), 11_000)
            .is_ok());
        assert_eq!(
            fb.apply(&item(&b, json!({"kpis": {"click": 1}})), 11_001),
            Err(Unjoined::Expired)
        );
        assert_eq!(v1.counts().expired, 1);
        // Two windows on, the next record in its shard forgets it.
        let same_shard = format!("{}{}", &b.as_str()[..2], "0".repeat(30));
        fb.record(&RequestId::parse(&same_shard).unwrap(), &v1, None, 12_001);
        assert_eq!(
            fb.apply(&item(&b, json!({"kpis": {"click": 1}})), 12_002),
            Err(Unjoined::Unknown)
        );
        assert_eq!(fb.evicted_total(), 0, "time, not capacity, removed it");
    }

    #[test]
    fn the_oldest_entries_go_first_when_full() {
        let fb = feedback(3_600_000, 16 * 4);
        let v1 = fb.version("m", "v1");
        let ids: Vec<RequestId> = (0..2000).map(|_| RequestId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            fb.record(id, &v1, None, i as u64);
        }
        assert!(fb.len() <= 16 * 4, "{}", fb.len());
        assert_eq!(fb.evicted_total() as usize, 2000 - fb.len());
        assert_eq!(
            fb.apply(&item(&ids[0], json!({"kpis": {"click": 1}})), 2000),
            Err(Unjoined::Unknown)
        );
        assert!(fb
            .apply(&item(&ids[1999], json!({"kpis": {"click": 1}})), 2000)
            .is_ok());
    }

    #[test]
    fn a_second_post_of_the_same_kpi_is_a_duplicate() {
        let fb = feedback(60_000, 1000);
        let v1 = fb.version("m", "v1");
        let id = RequestId::new();
        fb.record(&id, &v1, Some(Arc::from("ok")), 0);
        let conversion = item(&id, json!({"kpis": {"conversion": 1}}));
        assert!(fb.apply(&conversion, 10).is_ok());
        assert_eq!(fb.apply(&conversion, 20), Err(Unjoined::Duplicate));
        // An item that repeats one KPI is refused whole.
        assert_eq!(
            fb.apply(
                &item(&id, json!({"kpis": {"conversion": 1, "revenue": 3}})),
                20
            ),
            Err(Unjoined::Duplicate)
        );
        // Another KPI, and the label, in separate posts are fine (once).
        assert!(fb
            .apply(&item(&id, json!({"kpis": {"revenue": 3}})), 30)
            .is_ok());
        assert!(fb.apply(&item(&id, json!({"label": "fraud"})), 30).is_ok());
        assert_eq!(
            fb.apply(&item(&id, json!({"label": "fraud"})), 40),
            Err(Unjoined::Duplicate)
        );
        let window = v1.window(0, 0);
        assert_eq!(window.kpis["conversion"].n, 1);
        assert_eq!(window.kpis["revenue"].n, 1);
        assert_eq!(window.labeled, 1);
        assert_eq!(
            v1.counts(),
            FeedbackCounts {
                accepted: 3,
                duplicate: 3,
                expired: 0,
                unjudged_labels: 0,
            }
        );
    }

    #[test]
    fn feedback_counts_in_the_bucket_of_its_arrival_and_windows_merge_ranges() {
        let fb = feedback(3_600_000, 1000);
        let v1 = fb.version("m", "v1");
        // Answered in bucket 5; feedback arrives in buckets 7, 7 and 9.
        let ids: Vec<RequestId> = (0..3).map(|_| RequestId::new()).collect();
        for id in &ids {
            fb.record(id, &v1, None, 5_500);
        }
        for (id, (at, value)) in ids.iter().zip([(7_100, 1.0), (7_900, 3.0), (9_000, 10.0)]) {
            fb.apply(&item(id, json!({"kpis": {"revenue": value}})), at)
                .unwrap();
        }
        assert_eq!(v1.window(5, 6), KpiWindow::default());
        assert_eq!(
            v1.window(7, 7).kpis["revenue"],
            Moments {
                n: 2,
                sum: 4.0,
                sum_sq: 10.0
            }
        );
        assert_eq!(v1.window(8, 8), KpiWindow::default());
        assert_eq!(
            v1.window(0, 100).kpis.get("revenue"),
            None,
            "bucket 100's ring (10 slots) no longer holds 7 and 9"
        );
        let all = v1.window(7, 9);
        assert_eq!(
            all.kpis["revenue"],
            Moments {
                n: 3,
                sum: 14.0,
                sum_sq: 110.0
            }
        );
        // A later bucket reuses the slot of epoch 7 (17 % 10): 7 is gone
        // from the ring, not from the lifetime totals.
        let late = RequestId::new();
        fb.record(&late, &v1, None, 17_000);
        fb.apply(&item(&late, json!({"kpis": {"revenue": 100}})), 17_000)
            .unwrap();
        assert_eq!(v1.window(7, 7), KpiWindow::default());
        assert_eq!(v1.window(9, 17).kpis["revenue"].sum, 110.0);
        assert_eq!(v1.lifetime().kpis["revenue"].n, 4);
    }

    #[test]
    fn labels_count_and_match_the_prediction_as_text() {
        let fb = feedback(60_000, 1000);
        let v1 = fb.version("m", "v1");
        let cases = [
            (Some("fraud"), json!("fraud"), true),
            (Some("fraud"), json!("ok"), false),
            (Some("1"), json!(1), true),
            (Some("true"), json!(true), true),
            (Some("0.5"), json!(0.5), true),
            // A model that writes 1.0 and an application that sends 1.
            (Some("1"), json!(1.0), true),
            (Some("2"), json!(3), false),
        ];
        for (prediction, label, _) in &cases {
            let id = RequestId::new();
            fb.record(&id, &v1, prediction.map(Arc::from), 0);
            fb.apply(&item(&id, json!({ "label": label })), 0).unwrap();
        }
        // An answer whose prediction was not read (not sampled, or a
        // fallback's): its label is accepted and left out of accuracy.
        let unread = RequestId::new();
        fb.record(&unread, &v1, None, 0);
        fb.apply(&item(&unread, json!({ "label": "fraud" })), 0)
            .unwrap();
        let window = v1.window(0, 0);
        assert_eq!(window.labeled, cases.len() as u64);
        assert_eq!(window.correct, cases.iter().filter(|c| c.2).count() as u64);
        assert_eq!(v1.counts().unjudged_labels, 1);
        assert_eq!(v1.counts().accepted, cases.len() as u64 + 1);
        assert!(window.kpis.is_empty());
    }

    #[test]
    fn a_model_has_a_bounded_number_of_kpi_names() {
        let fb = feedback(60_000, 1000);
        let (v1, v2) = (fb.version("m", "v1"), fb.version("m", "v2"));
        for i in 0..KPI_NAMES_MAX {
            let id = RequestId::new();
            fb.record(&id, if i % 2 == 0 { &v1 } else { &v2 }, None, 0);
            let name = format!("k{i}");
            fb.apply(&item(&id, json!({"kpis": {name: 1}})), 0).unwrap();
        }
        let id = RequestId::new();
        fb.record(&id, &v1, None, 0);
        let error = fb
            .apply(&item(&id, json!({"kpis": {"k0": 1, "one_more": 1}})), 0)
            .unwrap_err();
        assert_eq!(error.code(), "too_many_kpis");
        assert_eq!(v1.window(0, 0).kpis["k0"].n, 1, "nothing of it applied");
        assert_eq!(v1.names.snapshot().len(), KPI_NAMES_MAX);
        // Room for one of two new names: neither is taken.
        let names = KpiNames::default();
        names
            .indexes(
                (0..31)
                    .map(|i| ["k", &i.to_string()].concat())
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str),
            )
            .unwrap();
        assert!(names.indexes(["x", "y"].into_iter()).is_err());
        assert_eq!(names.snapshot().len(), 31);
        assert_eq!(names.indexes(["k3", "y"].into_iter()).unwrap(), [3, 31]);
        // Known names still work, and another model has its own names.
        assert!(fb.apply(&item(&id, json!({"kpis": {"k1": 1}})), 0).is_ok());
        let other = fb.version("n", "v1");
        let id = RequestId::new();
        fb.record(&id, &other, None, 0);
        assert!(fb
            .apply(&item(&id, json!({"kpis": {"one_more": 1}})), 0)
            .is_ok());
    }

    /// Not a benchmark that asserts: prints what recording costs, for the
    /// record (`cargo test --release --lib feedback::tests::record_cost -- --nocapture`).
    #[test]
    fn record_cost() {
        let fb = feedback(3_600_000, 100_000);
        let v1 = fb.version("m", "v1");
        let ids: Vec<RequestId> = (0..400_000).map(|_| RequestId::new()).collect();
        let (fill, steady) = ids.split_at(100_000);
        for (phase, ids) in [("filling", fill), ("full, evicting", steady)] {
            let start = std::time::Instant::now();
            for (i, id) in ids.iter().enumerate() {
                fb.record(id, &v1, None, i as u64);
            }
            println!(
                "feedback record ({phase}): {:.0} ns/op",
                start.elapsed().as_nanos() as f64 / ids.len() as f64
            );
        }
        assert!(fb.len() <= 100_000 + SHARDS);
        assert_eq!(fb.evicted_total() as usize, 400_000 - fb.len());
    }
}
