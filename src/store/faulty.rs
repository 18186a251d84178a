//! Fault injection for tests: a [`Store`] wrapper that fails writes after a
//! countdown, the way SQLite's `sqlite3_io_error_pending` and redb's
//! fuzzer backend do. Only tests construct it.

use super::{
    Attempt, AuditDraft, AuditEntry, AuditFilter, BundleRecord, Deletion, Enqueued, IncidentRecord,
    Lkg, OutboxRecord, Promoted, Registered, Retention, RolloutRecord, Store, StoreError,
    StoreResult, TokenRecord, VersionRecord,
};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};

pub struct FaultyStore<S> {
    inner: S,
    /// Writes left before the first failure; negative: never fail.
    countdown: AtomicI64,
    /// After the first failure, keep failing (a dead disk) or not (a blip).
    persistent: bool,
}

impl<S: Store> FaultyStore<S> {
    /// Fails the write after `writes_ok` successful ones.
    pub fn new(inner: S, writes_ok: i64, persistent: bool) -> Self {
        Self {
            inner,
            countdown: AtomicI64::new(writes_ok),
            persistent,
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Whether this write fails (named like a failpoint for messages).
    fn fail(&self, failpoint: &str) -> StoreResult<()> {
        let left = self.countdown.fetch_sub(1, Ordering::SeqCst);
        let failing = left == 0 || (self.persistent && left < 0 && left != i64::MIN);
        if left < 0 && !self.persistent {
            // Past a one-off fault: stay below zero without wrapping.
            self.countdown.store(-1, Ordering::SeqCst);
        }
        if failing {
            Err(StoreError::Unavailable(format!(
                "injected I/O error at {failpoint}"
            )))
        } else {
            Ok(())
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn register_version(
        &self,
        version: &VersionRecord,
        audit: AuditDraft,
    ) -> StoreResult<Registered> {
        self.fail("register_version commit")?;
        self.inner.register_version(version, audit)
    }

    fn version(&self, model: &str, id: &str) -> StoreResult<Option<VersionRecord>> {
        self.inner.version(model, id)
    }

    fn versions(&self, model: &str) -> StoreResult<Vec<VersionRecord>> {
        self.inner.versions(model)
    }

    fn append_audit(&self, audit: AuditDraft) -> StoreResult<AuditEntry> {
        self.fail("audit append commit")?;
        self.inner.append_audit(audit)
    }

    fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        self.inner.audit(filter)
    }

    fn create_token(&self, token: &TokenRecord, audit: AuditDraft) -> StoreResult<()> {
        self.fail("create_token commit")?;
        self.inner.create_token(token, audit)
    }

    fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        self.inner.token_by_hash(hash)
    }

    fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.inner.tokens()
    }

    fn revoke_token(&self, id: &str, audit: AuditDraft) -> StoreResult<TokenRecord> {
        self.fail("revoke_token commit")?;
        self.inner.revoke_token(id, audit)
    }

    fn has_tokens(&self) -> StoreResult<bool> {
        self.inner.has_tokens()
    }

    fn create_bundle(&self, bundle: &BundleRecord, audit: AuditDraft) -> StoreResult<Registered> {
        self.fail("create_bundle commit")?;
        self.inner.create_bundle(bundle, audit)
    }

    fn bundle(&self, model: &str, id: &str) -> StoreResult<Option<BundleRecord>> {
        self.inner.bundle(model, id)
    }

    fn bundles(&self, model: &str) -> StoreResult<Vec<BundleRecord>> {
        self.inner.bundles(model)
    }

    fn promote(&self, model: &str, bundle: &str, audit: AuditDraft) -> StoreResult<Promoted> {
        self.fail("promote commit")?;
        self.inner.promote(model, bundle, audit)
    }

    fn lkg(&self, model: &str) -> StoreResult<Option<Lkg>> {
        self.inner.lkg(model)
    }

    fn deprecate_version(
        &self,
        model: &str,
        id: &str,
        audit: AuditDraft,
    ) -> StoreResult<VersionRecord> {
        self.fail("deprecate_version commit")?;
        self.inner.deprecate_version(model, id, audit)
    }

    fn retain(&self, retention: &Retention, audit: AuditDraft) -> StoreResult<bool> {
        self.fail("retain commit")?;
        self.inner.retain(retention, audit)
    }

    fn release(
        &self,
        model: &str,
        version: &str,
        reason: &str,
        audit: AuditDraft,
    ) -> StoreResult<bool> {
        self.fail("release commit")?;
        self.inner.release(model, version, reason, audit)
    }

    fn retentions(&self, model: &str, version: &str) -> StoreResult<Vec<Retention>> {
        self.inner.retentions(model, version)
    }

    fn delete_version(&self, model: &str, id: &str, audit: AuditDraft) -> StoreResult<Deletion> {
        self.fail("delete_version commit")?;
        self.inner.delete_version(model, id, audit)
    }

    fn referenced_digests(&self) -> StoreResult<BTreeSet<String>> {
        self.inner.referenced_digests()
    }

    fn create_rollout(&self, rollout: &RolloutRecord, audit: AuditDraft) -> StoreResult<()> {
        self.fail("create_rollout commit")?;
        self.inner.create_rollout(rollout, audit)
    }

    fn update_rollout(
        &self,
        rollout: &RolloutRecord,
        audit: Option<AuditDraft>,
    ) -> StoreResult<()> {
        self.fail("update_rollout commit")?;
        self.inner.update_rollout(rollout, audit)
    }

    fn rollout(&self, id: &str) -> StoreResult<Option<RolloutRecord>> {
        self.inner.rollout(id)
    }

    fn rollouts(
        &self,
        model: Option<&str>,
        open_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<RolloutRecord>> {
        self.inner.rollouts(model, open_only, limit)
    }

    fn create_incident(
        &self,
        incident: &IncidentRecord,
        pins: &[Retention],
        audit: AuditDraft,
    ) -> StoreResult<()> {
        self.fail("create_incident commit")?;
        self.inner.create_incident(incident, pins, audit)
    }

    fn update_incident(
        &self,
        incident: &IncidentRecord,
        audit: Option<AuditDraft>,
    ) -> StoreResult<()> {
        self.fail("update_incident commit")?;
        self.inner.update_incident(incident, audit)
    }

    fn incident(&self, id: &str) -> StoreResult<Option<IncidentRecord>> {
        self.inner.incident(id)
    }

    fn incidents(&self, model: Option<&str>, limit: usize) -> StoreResult<Vec<IncidentRecord>> {
        self.inner.incidents(model, limit)
    }

    fn enqueue_notification(&self, record: &OutboxRecord) -> StoreResult<Enqueued> {
        self.fail("enqueue_notification commit")?;
        self.inner.enqueue_notification(record)
    }

    fn due_notifications(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<OutboxRecord>> {
        self.inner.due_notifications(now_ms, limit)
    }

    fn record_attempt(&self, id: u64, outcome: &Attempt) -> StoreResult<OutboxRecord> {
        self.fail("record_attempt commit")?;
        self.inner.record_attempt(id, outcome)
    }

    fn notifications(
        &self,
        incident: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxRecord>> {
        self.inner.notifications(incident, limit)
    }
}
