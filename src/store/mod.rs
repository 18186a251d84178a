//! The store: registry, audit log, rollout state, the notification outbox
//! (and later incidents) behind one interface.
//!
//! [`Store`] is synchronous: the embedded SQLite engine is, and callers on
//! the async side run it on the blocking pool. Every change is one
//! transaction that also appends its audit entry, so a change is never
//! recorded without its audit entry or the other way round, and a write is
//! durable (fsynced) before the call returns. The notification outbox is
//! the one exception to the audit rule: a delivery attempt changes nothing
//! users audit, and the outbox row is its own record. PostgreSQL, for
//! several replicas, is meant to be a second implementation of the same
//! trait.

pub mod artifacts;
pub mod audit;
pub mod faulty;
pub mod sqlite;

use backstop_core::analysis::Profile;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A registered, immutable model version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionRecord {
    pub model: String,
    pub id: String,
    /// `sha256:<hex>` of the artifact.
    pub digest: String,
    /// Input/output signature (OIP tensors or a JSON Schema), as given.
    pub signature: serde_json::Value,
    /// Free-form labels and changelog.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Training data reference, code commit, who registered it.
    #[serde(default)]
    pub provenance: BTreeMap<String, String>,
    /// Upstream endpoints that serve this version.
    #[serde(default)]
    pub upstreams: Vec<String>,
    pub registered_at_ms: u64,
    pub registered_by: String,
    #[serde(default)]
    pub deprecated: bool,
    /// The reference profile given at registration (sketches of the input
    /// features, e.g. of the training data), for `drift_psi` triggers with
    /// `reference: profile`. API answers show only its feature names, as
    /// `profile_features` (absent: it has none); `GET
    /// .../versions/{id}/profile` has it whole.
    #[serde(
        rename = "profile_features",
        default,
        skip_deserializing,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_feature_names"
    )]
    #[schema(value_type = Option<Vec<String>>)]
    pub profile: Option<Profile>,
}

fn serialize_feature_names<S: serde::Serializer>(
    profile: &Option<Profile>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    profile
        .as_ref()
        .map(Profile::feature_names)
        .serialize(serializer)
}

impl VersionRecord {
    /// Sets the reference profile.
    pub fn with_profile(mut self, profile: Option<Profile>) -> Self {
        self.profile = profile;
        self
    }

    /// The features of the version's reference profile; `None`: it has none.
    pub fn profile_features(&self) -> Option<Vec<String>> {
        self.profile.as_ref().map(Profile::feature_names)
    }

    /// Two registrations are the same version when everything but the
    /// registration time, the registrant and the lifecycle flag agrees.
    pub fn same_content(&self, other: &VersionRecord) -> bool {
        self.model == other.model
            && self.id == other.id
            && self.digest == other.digest
            && self.signature == other.signature
            && self.metadata == other.metadata
            && self.provenance == other.provenance
            && self.upstreams == other.upstreams
            && self.profile == other.profile
    }
}

/// One version in a bundle, with the digest it had when the bundle was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BundleMember {
    pub model: String,
    pub version: String,
    pub digest: String,
}

/// Versions that must move together (model, feature encoder, config),
/// stored under its home model. Immutable, like versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BundleRecord {
    /// The home model: the one whose last-known-good it can become.
    pub model: String,
    pub id: String,
    /// In order: each producer before its consumer.
    pub members: Vec<BundleMember>,
    pub created_at_ms: u64,
    pub created_by: String,
}

impl BundleRecord {
    /// Two bundles are the same when they name the same versions in order.
    pub fn same_members(&self, other: &BundleRecord) -> bool {
        let names = |b: &BundleRecord| -> Vec<(String, String)> {
            b.members
                .iter()
                .map(|m| (m.model.clone(), m.version.clone()))
                .collect()
        };
        names(self) == names(other)
    }
}

/// A model's last-known-good bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lkg {
    pub model: String,
    pub bundle: String,
    pub promoted_at_ms: u64,
    pub promoted_by: String,
}

/// Outcome of a promotion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Promoted {
    /// The bundle that was last-known-good before, if any.
    pub before: Option<String>,
    /// False when the bundle already was the last-known-good (nothing
    /// changed, nothing audited).
    pub changed: bool,
}

/// A pin on a version that keeps it from deletion (`rollout:<id>`,
/// `incident:<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Retention {
    pub model: String,
    pub version: String,
    pub reason: String,
    pub created_at_ms: u64,
    pub created_by: String,
}

/// Outcome of asking to delete a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// The record is gone; here is what it was.
    Deleted(Box<VersionRecord>),
    /// Something still references it: `lkg:<model>/<bundle>`,
    /// `retained:<reason>`, `bundle:<model>/<bundle>`.
    Refused(Vec<String>),
}

/// An admin API access token. The secret itself is never stored: `hash`
/// is its SHA-256 (hex), and serialising a record leaves the hash out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenRecord {
    /// Short random public id (names the token in lists and revocations).
    pub id: String,
    #[serde(skip_serializing)]
    #[schema(ignore)]
    pub hash: String,
    /// Who holds it; audit entries name the holder by it.
    pub name: String,
    pub role: crate::access::Role,
    pub created_at_ms: u64,
    pub created_by: String,
    pub revoked: bool,
}

/// One rollout as stored: the policy as the user wrote it and the
/// controller's state (JSON), both opaque here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// Chosen by the caller, e.g. `ro-<hex>`.
    pub id: String,
    pub model: String,
    pub candidate: String,
    pub baseline: String,
    /// `running`, `paused`, `awaiting_approval`, `rolling_back`, `promoted`,
    /// `rolled_back`, `aborted`, `shadow_passed`, `rejected`: opaque text to
    /// the store.
    pub phase: String,
    /// Open until it reaches a final phase; at most one open rollout per
    /// model.
    pub open: bool,
    pub policy_json: String,
    pub state_json: String,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
}

/// One incident as stored: what a rollback opened. `evidence_json` is
/// frozen when the incident is created (the schema refuses to change it);
/// `record_json` (timeline, verification, hooks) grows afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRecord {
    /// `inc-<hex>`.
    pub id: String,
    pub model: String,
    pub rollout: String,
    /// `critical` or `warning`.
    pub severity: String,
    /// `verifying`, `recovered`, `not_recovered`, `unverified`.
    pub state: String,
    pub opened_unix_ms: u64,
    pub updated_unix_ms: u64,
    pub evidence_json: String,
    pub record_json: String,
}

/// What an audited change did, who did it and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditDraft {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A stored audit entry: the draft, its place in the chain and its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub draft: AuditDraft,
    /// Hash of the previous entry (`""` for the first).
    pub prev_hash: String,
    pub hash: String,
}

/// Which audit entries to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Entries whose target is this model or starts with `model/`.
    pub model: Option<String>,
    pub since_ms: Option<u64>,
    pub limit: Option<usize>,
}

/// Where a queued notification stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its next attempt.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Every attempt failed; `last_error` says why the last one did.
    Failed,
}

impl OutboxState {
    pub fn name(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for OutboxState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "pending" => Ok(OutboxState::Pending),
            "delivered" => Ok(OutboxState::Delivered),
            "failed" => Ok(OutboxState::Failed),
            other => Err(format!("unknown outbox state {other:?}")),
        }
    }
}

/// One notification for one receiver in the durable outbox. The store
/// keeps the text fields opaque; the notifier gives them meaning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxRecord {
    /// Assigned by the store; ignored when enqueueing.
    pub id: u64,
    pub incident: String,
    pub model: String,
    /// The receiver's name in the policy.
    pub receiver: String,
    /// `json`, `slack` or `alertmanager`.
    pub format: String,
    /// The address, when the policy gives it directly.
    pub url: Option<String>,
    /// The environment variable that holds the address (resolved at send
    /// time, so a secret webhook never sits in the store).
    pub url_env: Option<String>,
    /// `critical` or `warning`.
    pub severity: String,
    /// `incident.opened`, `incident.not_recovered`, ...
    pub kind: String,
    /// `{incident}/{receiver}/{kind}`: unique, so a group is queued once.
    pub group_key: String,
    /// The notification as JSON, rendered per format at send time.
    pub payload: serde_json::Value,
    pub state: OutboxState,
    pub attempts: u32,
    pub next_attempt_unix_ms: u64,
    pub last_error: Option<String>,
    pub created_unix_ms: u64,
    pub delivered_unix_ms: Option<u64>,
}

/// Outcome of queueing a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// A new row with this id.
    Queued(u64),
    /// The group was already queued (this id); nothing changed.
    Grouped(u64),
}

/// What one delivery attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        at_unix_ms: u64,
    },
    /// Failed; try again at `next_attempt_unix_ms`.
    Retry {
        error: String,
        next_attempt_unix_ms: u64,
    },
    /// Failed, and no attempt is left: the row becomes `failed`.
    GaveUp {
        error: String,
    },
}

/// Outcome of registering a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A new version was stored.
    Created,
    /// The same version was already there; nothing changed.
    AlreadyExists,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write contradicts what is stored (same id, different content).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The store cannot be reached or written (disk full, I/O error).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The stored state forbids the write (a deprecated version in a new
    /// bundle).
    #[error("refused: {0}")]
    Refused(String),
    /// Stored data fails its own checks.
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Runs a store call on the blocking pool (the store is synchronous).
pub async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

/// A fresh record id: `prefix-` and 12 random hex digits (`ro-3f9a0c1b2e7d`).
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    format!("{prefix}-{}", audit::hex(&bytes))
}

/// Registry and audit log storage. Implementations must make every
/// acknowledged write durable and every change atomic with its audit entry.
pub trait Store: Send + Sync + 'static {
    /// Stores a version unless it exists; same content is idempotent,
    /// different content is a [`StoreError::Conflict`].
    fn register_version(
        &self,
        version: &VersionRecord,
        audit: AuditDraft,
    ) -> StoreResult<Registered>;

    fn version(&self, model: &str, id: &str) -> StoreResult<Option<VersionRecord>>;

    /// Versions of a model in registration order.
    fn versions(&self, model: &str) -> StoreResult<Vec<VersionRecord>>;

    /// Appends an audit entry on its own (for actions that change nothing
    /// else, such as a refused login).
    fn append_audit(&self, audit: AuditDraft) -> StoreResult<AuditEntry>;

    fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>>;

    /// Stores a new token. A [`StoreError::Conflict`] when an active token
    /// has the same name (or, astronomically unlikely, id or hash).
    fn create_token(&self, token: &TokenRecord, audit: AuditDraft) -> StoreResult<()>;

    /// The token whose secret hashes to `hash`, revoked or not.
    fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>>;

    /// Every token, revoked ones included, oldest first.
    fn tokens(&self) -> StoreResult<Vec<TokenRecord>>;

    /// Marks a token revoked and returns it; the audit entry is written only
    /// when it was active (revoking twice changes nothing). A
    /// [`StoreError::NotFound`] for an unknown id.
    fn revoke_token(&self, id: &str, audit: AuditDraft) -> StoreResult<TokenRecord>;

    /// Whether any token was ever created, revoked ones included: once
    /// access control is on, revoking every token does not turn it off.
    fn has_tokens(&self) -> StoreResult<bool>;

    /// Stores a bundle unless it exists: the same members are idempotent,
    /// other members a [`StoreError::Conflict`]. Every member must exist
    /// with the digest recorded ([`StoreError::NotFound`] /
    /// [`StoreError::Conflict`]) and not be deprecated
    /// ([`StoreError::Refused`]); checked in the write's transaction, so a
    /// concurrent deprecation or deletion cannot slip in between.
    fn create_bundle(&self, bundle: &BundleRecord, audit: AuditDraft) -> StoreResult<Registered>;

    fn bundle(&self, model: &str, id: &str) -> StoreResult<Option<BundleRecord>>;

    /// Bundles of a model in creation order.
    fn bundles(&self, model: &str) -> StoreResult<Vec<BundleRecord>>;

    /// Makes a bundle of `model` its last-known-good. The store fills the
    /// audit entry's before/after; promoting the current one changes
    /// nothing and is not audited. [`StoreError::NotFound`] for an unknown
    /// bundle.
    fn promote(&self, model: &str, bundle: &str, audit: AuditDraft) -> StoreResult<Promoted>;

    fn lkg(&self, model: &str) -> StoreResult<Option<Lkg>>;

    /// Marks a version deprecated and returns it; audited only when it was
    /// not already. [`StoreError::NotFound`] for an unknown version.
    fn deprecate_version(
        &self,
        model: &str,
        id: &str,
        audit: AuditDraft,
    ) -> StoreResult<VersionRecord>;

    /// Pins a version; false (and no audit entry) when that pin exists.
    /// [`StoreError::NotFound`] for an unknown version.
    fn retain(&self, retention: &Retention, audit: AuditDraft) -> StoreResult<bool>;

    /// Removes a pin; false (and no audit entry) when there was none.
    fn release(
        &self,
        model: &str,
        version: &str,
        reason: &str,
        audit: AuditDraft,
    ) -> StoreResult<bool>;

    /// Pins on a version, oldest first.
    fn retentions(&self, model: &str, version: &str) -> StoreResult<Vec<Retention>>;

    /// Deletes a version's record unless something references it. Either
    /// way an audit entry is written in the same transaction: `audit` on
    /// success, and on refusal `audit` with `.refused` appended to its
    /// action and the reasons as `after`. [`StoreError::NotFound`] for an
    /// unknown version.
    fn delete_version(&self, model: &str, id: &str, audit: AuditDraft) -> StoreResult<Deletion>;

    /// Every artifact digest a version names (what GC must keep).
    fn referenced_digests(&self) -> StoreResult<BTreeSet<String>>;

    /// Stores a new rollout with its audit entry. A [`StoreError::Conflict`]
    /// when the id is taken, or when the rollout is open and its model
    /// already has an open one (the message names that rollout's id);
    /// nothing is written or audited then.
    fn create_rollout(&self, rollout: &RolloutRecord, audit: AuditDraft) -> StoreResult<()>;

    /// Replaces the phase, `open`, state and update time of the stored
    /// rollout with this id (its other fields are immutable and ignored
    /// here), with the audit entry, if any, in the same transaction. A
    /// [`StoreError::NotFound`] for an unknown id; a
    /// [`StoreError::Conflict`] when reopening it would make a second open
    /// rollout of its model.
    fn update_rollout(&self, rollout: &RolloutRecord, audit: Option<AuditDraft>)
        -> StoreResult<()>;

    fn rollout(&self, id: &str) -> StoreResult<Option<RolloutRecord>>;

    /// At most `limit` rollouts, newest (by creation time) first, of one
    /// model or of all, and only open ones when `open_only`.
    fn rollouts(
        &self,
        model: Option<&str>,
        open_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<RolloutRecord>>;

    /// Stores a new incident, pins its versions against deletion and GC
    /// (pins on versions that are not registered are skipped) and appends
    /// its audit entry, all in one transaction. A [`StoreError::Conflict`]
    /// when the id is taken.
    fn create_incident(
        &self,
        incident: &IncidentRecord,
        pins: &[Retention],
        audit: AuditDraft,
    ) -> StoreResult<()>;

    /// Replaces the state, record and update time of an incident (its
    /// evidence never changes), with the audit entry, if any, in the same
    /// transaction. [`StoreError::NotFound`] for an unknown id.
    fn update_incident(
        &self,
        incident: &IncidentRecord,
        audit: Option<AuditDraft>,
    ) -> StoreResult<()>;

    fn incident(&self, id: &str) -> StoreResult<Option<IncidentRecord>>;

    /// At most `limit` incidents, newest first, of one model or of all,
    /// *without* their evidence (`evidence_json` is empty: it can be
    /// megabytes each); [`Store::incident`] has it.
    fn incidents(&self, model: Option<&str>, limit: usize) -> StoreResult<Vec<IncidentRecord>>;

    /// Queues a notification unless its `group_key` is queued already
    /// ([`Enqueued::Grouped`], nothing changed). Durable before it returns.
    /// Not audited: a notification changes no state users audit, and the
    /// outbox row is its own record.
    fn enqueue_notification(&self, record: &OutboxRecord) -> StoreResult<Enqueued>;

    /// At most `limit` pending notifications whose next attempt is due at
    /// `now_ms`, the longest-waiting first. Rows left pending by an earlier
    /// process are included: that is how none is lost across a restart.
    /// A row waits while an earlier row of its incident and receiver is
    /// still pending: a receiver hears of an incident in order (an alert's
    /// end never arrives before the alert).
    fn due_notifications(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<OutboxRecord>>;

    /// Records one attempt on a pending notification (counting it) and
    /// returns the row as it now is. [`StoreError::NotFound`] for an
    /// unknown id, [`StoreError::Conflict`] when it is no longer pending.
    /// Not audited, like the enqueue.
    fn record_attempt(&self, id: u64, outcome: &Attempt) -> StoreResult<OutboxRecord>;

    /// At most `limit` notifications, of one incident or of all, newest
    /// first.
    fn notifications(&self, incident: Option<&str>, limit: usize)
        -> StoreResult<Vec<OutboxRecord>>;
}
