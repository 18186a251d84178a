//! The store: registry, audit log (and later rollout state and incidents)
//! behind one interface.
//!
//! [`Store`] is synchronous: the embedded SQLite engine is, and callers on
//! the async side run it on the blocking pool. Every change is one
//! transaction that also appends its audit entry, so a change is never
//! recorded without its audit entry or the other way round, and a write is
//! durable (fsynced) before the call returns. PostgreSQL, for several
//! replicas, is meant to be a second implementation of the same trait.

pub mod artifacts;
pub mod audit;
pub mod faulty;
pub mod sqlite;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A registered, immutable model version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl VersionRecord {
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
    }
}

/// An admin API access token. The secret itself is never stored: `hash`
/// is its SHA-256 (hex), and serialising a record leaves the hash out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    /// Short random public id (names the token in lists and revocations).
    pub id: String,
    #[serde(skip_serializing)]
    pub hash: String,
    /// Who holds it; audit entries name the holder by it.
    pub name: String,
    pub role: crate::access::Role,
    pub created_at_ms: u64,
    pub created_by: String,
    pub revoked: bool,
}

/// What an audited change did, who did it and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A stored audit entry: the draft, its place in the chain and its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Stored data fails its own checks.
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

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
}
