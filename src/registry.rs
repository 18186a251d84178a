//! The model registry: immutable, content-addressed versions, the bundles
//! that move together, the last-known-good of each model, and the audit
//! log of who changed what.
//!
//! It checks requests, streams artifacts into the artifact store, and
//! writes through the [`Store`], whose calls run on the blocking pool.
//! Nothing a last-known-good bundle, a retention pin or any bundle names can
//! be deleted, and GC only removes artifacts no version names.

use crate::store::artifacts::{ArtifactError, ArtifactStore, Stored, VerifyReport};
use crate::store::audit::{self, Broken};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    AuditDraft, AuditEntry, AuditFilter, BundleMember, BundleRecord, Deletion, Lkg, Promoted,
    Registered, Retention, Store, StoreError, VersionRecord,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A request to register a version, as the API and CLI send it.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
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
    /// A reference profile of the input features (`{"features": {NAME:
    /// SKETCH}}`, as `backstop profile build` writes it), for `drift_psi`
    /// triggers with `reference: profile`. Given here only: a version is
    /// immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub profile: Option<serde_json::Value>,
}

/// Most versions a bundle may name.
pub const BUNDLE_MEMBERS_MAX: usize = 16;

/// A version a bundle names, as the API and CLI send it.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRef {
    pub model: String,
    pub version: String,
}

/// A request to create a bundle under a model.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleRequest {
    pub id: String,
    /// In order: each producer before its consumer.
    pub members: Vec<MemberRef>,
    #[serde(default)]
    pub reason: String,
}

/// A request to make a bundle the model's last-known-good.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub bundle: String,
    #[serde(default)]
    pub reason: String,
}

/// A last-known-good with the versions it names.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LkgView {
    #[serde(flatten)]
    pub lkg: Lkg,
    pub members: Vec<BundleMember>,
}

/// What a version deletion did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub model: String,
    pub id: String,
    pub digest: String,
    /// False when another version still names the same artifact.
    pub artifact_removed: bool,
}

/// What GC did.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct GcReport {
    /// Artifacts looked at.
    pub checked: u64,
    /// Digests of the artifacts removed (no version named them).
    pub removed: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Bundle members whose signatures do not fit; `message` names `field`.
    #[error("{message}")]
    SignatureMismatch { field: String, message: String },
    #[error("{0}")]
    BundleNotFound(String),
    #[error("{0}")]
    BundleConflict(String),
    #[error("{0}")]
    LkgNotFound(String),
    #[error("{0}")]
    Deprecated(String),
    /// Something still references the version; the message names what.
    #[error("{0}")]
    Retained(String),
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
            StoreError::Refused(m) => RegistryError::Deprecated(m),
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    /// Registrations hold it shared from "the artifact is there" until their
    /// commit; deletion and GC hold it exclusively, so they never remove an
    /// artifact a registration has just checked.
    removal: tokio::sync::RwLock<()>,
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
            removal: tokio::sync::RwLock::new(()),
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
        let _removal = self.removal.read().await;
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
        let profile = match request.profile {
            None => None,
            Some(value) => {
                let profile =
                    crate::profile::parse_value(value).map_err(|e| invalid(&e.field, e.message))?;
                // Its features are the signature's inputs, when the
                // signature lists them.
                if let Ok(signature) =
                    crate::signature::InputSignature::from_registered(&request.signature)
                {
                    let names = signature.feature_names();
                    if let Some(name) = profile
                        .features
                        .keys()
                        .find(|n| !names.contains(&n.as_str()))
                    {
                        return Err(invalid(
                            &format!("profile.features.{name}"),
                            format!(
                                "the signature has no input feature {name:?} (it has: {})",
                                names.join(", ")
                            ),
                        ));
                    }
                }
                Some(profile)
            }
        };
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
            profile: None,
        }
        .with_profile(profile);
        let mut after = serde_json::json!({ "digest": version.digest });
        if let Some(features) = version.profile_features() {
            after["profile_features"] = serde_json::json!(features);
        }
        let draft = AuditDraft {
            actor: actor.to_string(),
            action: "version.register".into(),
            target: format!("{model}/{}", version.id),
            reason: request.reason,
            before: None,
            after: Some(after),
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

    /// Creates a bundle under `model`: members exist, are not deprecated,
    /// include a version of `model`, and their signatures fit in order.
    pub async fn create_bundle(
        &self,
        model: &str,
        request: BundleRequest,
        actor: &str,
    ) -> Result<(BundleRecord, Registered), RegistryError> {
        check_name("model", model)?;
        check_name("id", &request.id)?;
        if request.members.is_empty() || request.members.len() > BUNDLE_MEMBERS_MAX {
            return Err(invalid(
                "members",
                format!("a bundle names 1-{BUNDLE_MEMBERS_MAX} versions"),
            ));
        }
        for (i, member) in request.members.iter().enumerate() {
            check_name(&format!("members[{i}].model"), &member.model)?;
            check_name(&format!("members[{i}].version"), &member.version)?;
            if request.members[..i].iter().any(|m| m.model == member.model) {
                return Err(invalid(
                    &format!("members[{i}].model"),
                    format!(
                        "{} appears twice; a bundle moves one version of each model",
                        member.model
                    ),
                ));
            }
        }
        if !request.members.iter().any(|m| m.model == model) {
            return Err(invalid(
                "members",
                format!("a bundle of {model} must name one of its versions"),
            ));
        }
        let mut versions = Vec::with_capacity(request.members.len());
        for (i, member) in request.members.iter().enumerate() {
            let (m, v) = (member.model.clone(), member.version.clone());
            let version = self
                .with_store(move |store| store.version(&m, &v))
                .await?
                .ok_or_else(|| {
                    RegistryError::VersionNotFound(format!(
                        "members[{i}]: no version {}/{}",
                        member.model, member.version
                    ))
                })?;
            if version.deprecated {
                return Err(RegistryError::Deprecated(format!(
                    "members[{i}]: {}/{} is deprecated and cannot join a new bundle",
                    member.model, member.version
                )));
            }
            versions.push(version);
        }
        check_fit(&versions)?;
        let bundle = BundleRecord {
            model: model.to_string(),
            id: request.id.clone(),
            members: versions
                .iter()
                .map(|v| BundleMember {
                    model: v.model.clone(),
                    version: v.id.clone(),
                    digest: v.digest.clone(),
                })
                .collect(),
            created_at_ms: crate::gateway::unix_ms(),
            created_by: actor.to_string(),
        };
        let draft = AuditDraft {
            actor: actor.to_string(),
            action: "bundle.create".into(),
            target: format!("{model}/{}", bundle.id),
            reason: request.reason,
            before: None,
            after: Some(serde_json::json!({ "members": bundle.members })),
        };
        let stored = bundle.clone();
        let outcome = self
            .with_store(move |store| store.create_bundle(&stored, draft))
            .await
            .map_err(|e| match e {
                RegistryError::Conflict(m) => RegistryError::BundleConflict(m),
                other => other,
            })?;
        let bundle = match outcome {
            Registered::Created => bundle,
            Registered::AlreadyExists => self.bundle(model, &request.id).await?,
        };
        Ok((bundle, outcome))
    }

    pub async fn bundle(&self, model: &str, id: &str) -> Result<BundleRecord, RegistryError> {
        let (model, id) = (model.to_string(), id.to_string());
        let label = format!("{model}/{id}");
        self.with_store(move |store| store.bundle(&model, &id))
            .await?
            .ok_or_else(|| RegistryError::BundleNotFound(format!("no bundle {label}")))
    }

    pub async fn bundles(&self, model: &str) -> Result<Vec<BundleRecord>, RegistryError> {
        let model = model.to_string();
        self.with_store(move |store| store.bundles(&model)).await
    }

    /// Makes a bundle of `model` its last-known-good (audited with the
    /// bundle before and after).
    pub async fn promote(
        &self,
        model: &str,
        request: PromoteRequest,
        actor: &str,
    ) -> Result<Promoted, RegistryError> {
        check_name("model", model)?;
        check_name("bundle", &request.bundle)?;
        let draft = AuditDraft {
            actor: actor.to_string(),
            action: "model.promote".into(),
            target: model.to_string(),
            reason: request.reason,
            before: None,
            after: None,
        };
        let (m, bundle) = (model.to_string(), request.bundle);
        self.with_store(move |store| store.promote(&m, &bundle, draft))
            .await
            .map_err(|e| match e {
                RegistryError::VersionNotFound(m) => RegistryError::BundleNotFound(m),
                other => other,
            })
    }

    pub async fn lkg(&self, model: &str) -> Result<LkgView, RegistryError> {
        let m = model.to_string();
        let lkg = self
            .with_store(move |store| store.lkg(&m))
            .await?
            .ok_or_else(|| {
                RegistryError::LkgNotFound(format!("{model} has no last-known-good bundle"))
            })?;
        let members = self.bundle(model, &lkg.bundle).await?.members;
        Ok(LkgView { lkg, members })
    }

    /// Marks a version deprecated: still readable, never in a new bundle.
    pub async fn deprecate(
        &self,
        model: &str,
        id: &str,
        reason: String,
        actor: &str,
    ) -> Result<VersionRecord, RegistryError> {
        let draft = version_draft(actor, "version.deprecate", model, id, reason);
        let (model, id) = (model.to_string(), id.to_string());
        self.with_store(move |store| store.deprecate_version(&model, &id, draft))
            .await
    }

    /// Pins a version (`rollout:<id>`, `incident:<id>`) so it cannot be
    /// deleted; true when the pin is new.
    pub async fn retain(
        &self,
        model: &str,
        id: &str,
        reason: String,
        actor: &str,
    ) -> Result<bool, RegistryError> {
        check_retention_reason(&reason)?;
        let mut draft = version_draft(actor, "version.retain", model, id, reason.clone());
        draft.after = Some(serde_json::json!({ "retained": reason }));
        let retention = Retention {
            model: model.to_string(),
            version: id.to_string(),
            reason,
            created_at_ms: crate::gateway::unix_ms(),
            created_by: actor.to_string(),
        };
        self.with_store(move |store| store.retain(&retention, draft))
            .await
    }

    /// Removes a pin; true when there was one.
    pub async fn release(
        &self,
        model: &str,
        id: &str,
        reason: String,
        actor: &str,
    ) -> Result<bool, RegistryError> {
        check_retention_reason(&reason)?;
        let mut draft = version_draft(actor, "version.release", model, id, reason.clone());
        draft.before = Some(serde_json::json!({ "retained": reason }));
        let (model, id) = (model.to_string(), id.to_string());
        self.with_store(move |store| store.release(&model, &id, &reason, draft))
            .await
    }

    pub async fn retentions(&self, model: &str, id: &str) -> Result<Vec<Retention>, RegistryError> {
        self.version(model, id).await?;
        let (model, id) = (model.to_string(), id.to_string());
        self.with_store(move |store| store.retentions(&model, &id))
            .await
    }

    /// Deletes a version's record, and its artifact when no other version
    /// names it, unless something references the version: then the
    /// refusal (audited as `version.delete.refused`) names what does.
    pub async fn delete_version(
        &self,
        model: &str,
        id: &str,
        reason: String,
        actor: &str,
    ) -> Result<Deleted, RegistryError> {
        let _removal = self.removal.write().await;
        let draft = version_draft(actor, "version.delete", model, id, reason);
        let (m, i) = (model.to_string(), id.to_string());
        let version = match self
            .with_store(move |store| store.delete_version(&m, &i, draft))
            .await?
        {
            Deletion::Deleted(version) => *version,
            Deletion::Refused(reasons) => {
                return Err(RegistryError::Retained(format!(
                    "{model}/{id} is still referenced: {}",
                    reasons.join(", ")
                )))
            }
        };
        // The record is gone first: a crash here leaves an artifact nothing
        // names, which GC removes, never a version without its artifact.
        let referenced = self.with_store(|store| store.referenced_digests()).await?;
        let artifact_removed =
            !referenced.contains(&version.digest) && self.remove_artifact(&version.digest).await?;
        Ok(Deleted {
            model: version.model,
            id: version.id,
            digest: version.digest,
            artifact_removed,
        })
    }

    /// Removes every artifact no version names (audited as `artifact.gc`).
    /// An upload not yet registered counts as unnamed: register right after
    /// uploading, or upload again.
    pub async fn gc(&self, actor: &str) -> Result<GcReport, RegistryError> {
        let _removal = self.removal.write().await;
        let artifacts = self.artifacts.clone();
        let stored = tokio::task::spawn_blocking(move || artifacts.digests())
            .await
            .map_err(|e| RegistryError::Unavailable(format!("gc task failed: {e}")))??;
        let referenced = self.with_store(|store| store.referenced_digests()).await?;
        let mut report = GcReport {
            checked: stored.len() as u64,
            removed: Vec::new(),
        };
        for digest in stored {
            if !referenced.contains(&digest) && self.remove_artifact(&digest).await? {
                report.removed.push(digest);
            }
        }
        let draft = AuditDraft {
            actor: actor.into(),
            action: "artifact.gc".into(),
            target: "artifacts".into(),
            reason: String::new(),
            before: None,
            after: Some(serde_json::json!({ "removed": report.removed })),
        };
        self.with_store(move |store| store.append_audit(draft))
            .await?;
        Ok(report)
    }

    async fn remove_artifact(&self, digest: &str) -> Result<bool, RegistryError> {
        let (artifacts, digest) = (self.artifacts.clone(), digest.to_string());
        Ok(
            tokio::task::spawn_blocking(move || artifacts.remove(&digest))
                .await
                .map_err(|e| RegistryError::Unavailable(format!("remove task failed: {e}")))??,
        )
    }
}

fn check_name(field: &str, name: &str) -> Result<(), RegistryError> {
    crate::config::check_model_name(name).map_err(|_| {
        invalid(
            field,
            "names and ids are 1-128 characters of [A-Za-z0-9._-]",
        )
    })
}

/// Retention reasons say who holds the pin: `kind:id`, such as
/// `rollout:r42` or `incident:i7`.
fn check_retention_reason(reason: &str) -> Result<(), RegistryError> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-' | ':');
    let shaped = reason
        .split_once(':')
        .is_some_and(|(kind, id)| !kind.is_empty() && !id.is_empty());
    if shaped && reason.len() <= 128 && reason.chars().all(fine) {
        Ok(())
    } else {
        Err(invalid(
            "reason",
            "a retention reason is KIND:ID (e.g. rollout:r42), at most 128 characters of [A-Za-z0-9._@:-]",
        ))
    }
}

fn version_draft(actor: &str, action: &str, model: &str, id: &str, reason: String) -> AuditDraft {
    AuditDraft {
        actor: actor.to_string(),
        action: action.into(),
        target: format!("{model}/{id}"),
        reason,
        before: None,
        after: None,
    }
}

/// An OIP tensor as a signature lists it (also read by
/// [`crate::signature`], which checks requests against it).
#[derive(Deserialize)]
pub(crate) struct Tensor {
    pub(crate) name: String,
    pub(crate) datatype: String,
    pub(crate) shape: Vec<i64>,
}

/// `-1` stands for any size.
fn shapes_fit(produced: &[i64], consumed: &[i64]) -> bool {
    produced.len() == consumed.len()
        && produced
            .iter()
            .zip(consumed)
            .all(|(a, b)| a == b || *a == -1 || *b == -1)
}

/// Checks that each member's inputs are produced by the member before it:
/// same name, same datatype, compatible shape. Pairs where the producer
/// lists no `outputs` or the consumer no `inputs` (JSON Schema signatures,
/// configs) are not checked.
pub fn check_fit(members: &[VersionRecord]) -> Result<(), RegistryError> {
    let tensors = |signature: &serde_json::Value, key: &str| {
        signature.get(key).and_then(|v| v.as_array()).cloned()
    };
    for (i, pair) in members.windows(2).enumerate() {
        let (producer, consumer) = (&pair[0], &pair[1]);
        let (Some(outputs), Some(inputs)) = (
            tensors(&producer.signature, "outputs"),
            tensors(&consumer.signature, "inputs"),
        ) else {
            continue;
        };
        let from = format!("{}/{}", producer.model, producer.id);
        let mismatch = |field: String, message: String| RegistryError::SignatureMismatch {
            message: format!("{field} {message}"),
            field,
        };
        let mut produced = BTreeMap::new();
        for (j, output) in outputs.into_iter().enumerate() {
            let tensor: Tensor = serde_json::from_value(output).map_err(|e| {
                mismatch(
                    format!("members[{i}].signature.outputs[{j}]"),
                    format!("is not an OIP tensor (name, datatype, shape): {e}"),
                )
            })?;
            produced.insert(tensor.name.clone(), tensor);
        }
        for (j, input) in inputs.into_iter().enumerate() {
            let field = format!("members[{}].signature.inputs[{j}]", i + 1);
            let input: Tensor = serde_json::from_value(input).map_err(|e| {
                mismatch(
                    field.clone(),
                    format!("is not an OIP tensor (name, datatype, shape): {e}"),
                )
            })?;
            let name = &input.name;
            let Some(output) = produced.get(name) else {
                let names: Vec<&str> = produced.keys().map(String::as_str).collect();
                return Err(mismatch(
                    field,
                    format!(
                        "({name}): {from} has no output {name} (it has: {})",
                        names.join(", ")
                    ),
                ));
            };
            if input.datatype != output.datatype {
                return Err(mismatch(
                    field,
                    format!(
                        "({name}): datatype {} does not match {from} output {name} of datatype {}",
                        input.datatype, output.datatype
                    ),
                ));
            }
            if !shapes_fit(&output.shape, &input.shape) {
                return Err(mismatch(
                    field,
                    format!(
                        "({name}): shape {:?} does not match {from} output {name} of shape {:?}",
                        input.shape, output.shape
                    ),
                ));
            }
        }
    }
    Ok(())
}
