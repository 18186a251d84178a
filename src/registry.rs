//! The model registry: immutable, content-addressed versions and the audit
//! log of who changed what.
//!
//! It checks requests, streams artifacts into the artifact store, and
//! writes through the [`Store`], whose calls run on the blocking pool.

use crate::store::artifacts::{ArtifactError, ArtifactStore, Stored, VerifyReport};
use crate::store::audit::{self, Broken};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    AuditDraft, AuditEntry, AuditFilter, Registered, Store, StoreError, VersionRecord,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A request to register a version, as the API and CLI send it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub id: String,
    /// `sha256:<hex>` of an artifact already uploaded.
    pub digest: String,
    /// Input/output signature: OIP tensors (`inputs`/`outputs`) or a JSON
    /// Schema for passthrough models.
    pub signature: serde_json::Value,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub provenance: BTreeMap<String, String>,
    #[serde(default)]
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    ArtifactNotFound(String),
    #[error("{0}")]
    VersionNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(m) => RegistryError::Conflict(m),
            StoreError::NotFound(m) => RegistryError::VersionNotFound(m),
            StoreError::Unavailable(m) | StoreError::Corrupt(m) => RegistryError::Unavailable(m),
        }
    }
}

impl From<ArtifactError> for RegistryError {
    fn from(error: ArtifactError) -> Self {
        match error {
            ArtifactError::TooLarge { .. } => RegistryError::TooLarge(error.to_string()),
            ArtifactError::InvalidDigest(_) => RegistryError::Invalid {
                field: "digest".into(),
                message: error.to_string(),
            },
            // The client's upload broke: its fault, not the store's.
            ArtifactError::Upload(_) => RegistryError::Invalid {
                field: "body".into(),
                message: error.to_string(),
            },
            other => RegistryError::Unavailable(other.to_string()),
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The audit chain's state: how many entries, and where it breaks if it does.
#[derive(Debug, Serialize)]
pub struct AuditVerdict {
    pub entries: u64,
    pub intact: bool,
    /// Hash of the newest entry: keep it elsewhere to detect a truncated tail.
    pub head_hash: Option<String>,
    pub broken_at_seq: Option<u64>,
    pub why: Option<String>,
}

pub struct Registry {
    store: Arc<dyn Store>,
    artifacts: ArtifactStore,
    /// Largest artifact accepted.
    pub artifact_max_bytes: u64,
}

impl Registry {
    /// Opens the store file and the artifact directory under `data_dir`.
    pub fn open(data_dir: &Path, artifact_max_bytes: u64) -> Result<Registry, RegistryError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            RegistryError::Unavailable(format!("creating {}: {e}", data_dir.display()))
        })?;
        let store = SqliteStore::open(&data_dir.join("backstop.db"))?;
        let artifacts = ArtifactStore::open(&data_dir.join("artifacts"))?;
        Ok(Self::new(Arc::new(store), artifacts, artifact_max_bytes))
    }

    pub fn new(store: Arc<dyn Store>, artifacts: ArtifactStore, artifact_max_bytes: u64) -> Self {
        Self {
            store,
            artifacts,
            artifact_max_bytes,
        }
    }

    /// The store behind the registry (tokens and the audit log share it).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Appends an audit entry for a change made outside the store, such as
    /// a routing-table swap.
    pub async fn record(&self, draft: AuditDraft) -> Result<AuditEntry, RegistryError> {
        self.with_store(move |store| store.append_audit(draft))
            .await
    }

    /// Runs a store call on the blocking pool.
    async fn with_store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || call(store.as_ref()))
            .await
            .map_err(|e| RegistryError::Unavailable(format!("store task failed: {e}")))?
            .map_err(Into::into)
    }

    /// Streams an artifact into the content-addressed store.
    pub async fn put_artifact<S, E>(&self, stream: S, actor: &str) -> Result<Stored, RegistryError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stored = self
            .artifacts
            .put_stream(stream, self.artifact_max_bytes)
            .await?;
        if stored.created {
            let draft = AuditDraft {
                actor: actor.into(),
                action: "artifact.upload".into(),
                target: stored.digest.clone(),
                reason: String::new(),
                before: None,
                after: Some(serde_json::json!({ "size": stored.size })),
            };
            self.with_store(move |store| store.append_audit(draft))
                .await?;
        }
        Ok(stored)
    }

    /// Registers a version: checks it, then stores it with its audit entry.
    pub async fn register(
        &self,
        model: &str,
        request: RegisterRequest,
        actor: &str,
    ) -> Result<(VersionRecord, Registered), RegistryError> {
        crate::config::check_model_name(model).map_err(|m| invalid("model", m))?;
        crate::config::check_model_name(&request.id)
            .map_err(|_| invalid("id", "version ids are 1-128 characters of [A-Za-z0-9._-]"))?;
        self.artifacts.path_of(&request.digest)?;
        if !self.artifacts.contains(&request.digest) {
            return Err(RegistryError::ArtifactNotFound(format!(
                "no artifact {} in the store: upload it first",
                request.digest
            )));
        }
        if !request.signature.is_object() {
            return Err(invalid(
                "signature",
                "expected an object (OIP inputs/outputs or a JSON Schema)",
            ));
        }
        for (i, upstream) in request.upstreams.iter().enumerate() {
            crate::config::parse_endpoint(upstream)
                .map_err(|m| invalid(&format!("upstreams[{i}]"), m))?;
        }
        let version = VersionRecord {
            model: model.to_string(),
            id: request.id.clone(),
            digest: request.digest,
            signature: request.signature,
            metadata: request.metadata,
            provenance: request.provenance,
            upstreams: request.upstreams,
            registered_at_ms: crate::gateway::unix_ms(),
            registered_by: actor.to_string(),
            deprecated: false,
        };
        let draft = AuditDraft {
            actor: actor.to_string(),
            action: "version.register".into(),
            target: format!("{model}/{}", version.id),
            reason: request.reason,
            before: None,
            after: Some(serde_json::json!({ "digest": version.digest })),
        };
        let stored = version.clone();
        let outcome = self
            .with_store(move |store| store.register_version(&stored, draft))
            .await?;
        let version = match outcome {
            Registered::Created => version,
            // Report what is stored (its original time and registrant).
            Registered::AlreadyExists => {
                let (model, id) = (version.model.clone(), version.id.clone());
                self.with_store(move |store| store.version(&model, &id))
                    .await?
                    .unwrap_or(version)
            }
        };
        Ok((version, outcome))
    }

    pub async fn versions(&self, model: &str) -> Result<Vec<VersionRecord>, RegistryError> {
        let model = model.to_string();
        self.with_store(move |store| store.versions(&model)).await
    }

    pub async fn version(&self, model: &str, id: &str) -> Result<VersionRecord, RegistryError> {
        let (model, id) = (model.to_string(), id.to_string());
        let label = format!("{model}/{id}");
        self.with_store(move |store| store.version(&model, &id))
            .await?
            .ok_or_else(|| RegistryError::VersionNotFound(format!("no version {label}")))
    }

    pub async fn audit(&self, filter: AuditFilter) -> Result<Vec<AuditEntry>, RegistryError> {
        self.with_store(move |store| store.audit(&filter)).await
    }

    pub async fn verify_audit(&self) -> Result<AuditVerdict, RegistryError> {
        let entries = self.audit(AuditFilter::default()).await?;
        let head_hash = entries.last().map(|e| e.hash.clone());
        Ok(match audit::verify(&entries) {
            Ok(count) => AuditVerdict {
                entries: count,
                intact: true,
                head_hash,
                broken_at_seq: None,
                why: None,
            },
            Err(Broken { seq, why }) => AuditVerdict {
                entries: entries.len() as u64,
                intact: false,
                head_hash,
                broken_at_seq: Some(seq),
                why: Some(why),
            },
        })
    }

    /// Re-hashes stored artifacts; those that no longer match their digest
    /// are reported (and the check itself is audited).
    pub async fn verify_artifacts(&self, actor: &str) -> Result<VerifyReport, RegistryError> {
        let artifacts = self.artifacts.clone();
        let report = tokio::task::spawn_blocking(move || artifacts.verify(None))
            .await
            .map_err(|e| RegistryError::Unavailable(format!("verify task failed: {e}")))??;
        let draft = AuditDraft {
            actor: actor.into(),
            action: "artifact.verify".into(),
            target: "artifacts".into(),
            reason: String::new(),
            before: None,
            after: Some(serde_json::json!({
                "checked": report.checked,
                "mismatched": report.mismatched.len(),
            })),
        };
        self.with_store(move |store| store.append_audit(draft))
            .await?;
        Ok(report)
    }
}
