//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a commit is fsynced before the call returns.
//!
//! Migrations are numbered and recorded in `PRAGMA user_version`; they run
//! at open, each in its own transaction. Writers are serialised by a mutex
//! around the one connection (SQLite allows one writer anyway), and every
//! change runs in an `IMMEDIATE` transaction together with its audit entry.

use super::audit::entry_hash;
use super::{
    Attempt, AuditDraft, AuditEntry, AuditFilter, BundleMember, BundleRecord, Deletion, Enqueued,
    IncidentRecord, Lkg, OutboxRecord, OutboxState, Promoted, Registered, Retention, RolloutRecord,
    Store, StoreError, StoreResult, TokenRecord, VersionRecord,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Schema migrations, in order; migration N brings the schema to version N.
const MIGRATIONS: &[&str] = &[
    // 1: registry and audit log.
    r#"
    CREATE TABLE versions (
        model TEXT NOT NULL,
        id TEXT NOT NULL,
        digest TEXT NOT NULL,
        signature TEXT NOT NULL,
        metadata TEXT NOT NULL,
        provenance TEXT NOT NULL,
        upstreams TEXT NOT NULL,
        registered_at_ms INTEGER NOT NULL,
        registered_by TEXT NOT NULL,
        deprecated INTEGER NOT NULL DEFAULT 0,
        seq INTEGER NOT NULL,
        PRIMARY KEY (model, id)
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        reason TEXT NOT NULL,
        before TEXT,
        after TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_target ON audit (target);
    CREATE INDEX audit_time ON audit (at_ms);
    "#,
    // 2: admin API access tokens (only the SHA-256 of each secret). Names
    // of active tokens are unique, so an actor in the audit log names one
    // holder.
    r#"
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX tokens_active_name ON tokens (name) WHERE revoked = 0;
    "#,
    // 3: bundles, last-known-good and retention pins. Members and pins
    // reference versions by foreign key, so even a bug above this layer
    // cannot delete a version something still names.
    r#"
    CREATE TABLE bundles (
        model TEXT NOT NULL,
        id TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (model, id)
    );
    CREATE TABLE bundle_members (
        model TEXT NOT NULL,
        bundle TEXT NOT NULL,
        position INTEGER NOT NULL,
        member_model TEXT NOT NULL,
        member_version TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (model, bundle, position),
        FOREIGN KEY (model, bundle) REFERENCES bundles (model, id),
        FOREIGN KEY (member_model, member_version) REFERENCES versions (model, id)
    );
    CREATE INDEX bundle_members_version ON bundle_members (member_model, member_version);
    CREATE TABLE lkg (
        model TEXT PRIMARY KEY,
        bundle TEXT NOT NULL,
        promoted_at_ms INTEGER NOT NULL,
        promoted_by TEXT NOT NULL,
        FOREIGN KEY (model, bundle) REFERENCES bundles (model, id)
    );
    CREATE TABLE retentions (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (model, version, reason),
        FOREIGN KEY (model, version) REFERENCES versions (model, id)
    );
    "#,
    // 4: rollouts (the controller's state per rollout), so a restarted
    // process finds the open ones. The partial unique index keeps a model
    // to one open rollout whatever the code above does.
    r#"
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        candidate TEXT NOT NULL,
        baseline TEXT NOT NULL,
        phase TEXT NOT NULL,
        open INTEGER NOT NULL CHECK (open IN (0, 1)),
        policy_json TEXT NOT NULL,
        state_json TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        updated_unix_ms INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX rollouts_open_model ON rollouts (model) WHERE open = 1;
    CREATE INDEX rollouts_model_created ON rollouts (model, created_unix_ms);
    "#,
    // 5: incidents. The evidence is frozen at the verdict: a trigger
    // refuses any change to it, whatever the code above does.
    r#"
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        rollout TEXT NOT NULL,
        severity TEXT NOT NULL,
        state TEXT NOT NULL,
        opened_unix_ms INTEGER NOT NULL,
        updated_unix_ms INTEGER NOT NULL,
        evidence_json TEXT NOT NULL,
        record_json TEXT NOT NULL
    );
    CREATE INDEX incidents_model_opened ON incidents (model, opened_unix_ms);
    CREATE TRIGGER incidents_evidence_frozen BEFORE UPDATE OF evidence_json ON incidents
    WHEN NEW.evidence_json IS NOT OLD.evidence_json
    BEGIN
        SELECT RAISE(ABORT, 'incident evidence is frozen');
    END;
    "#,
    // 6: the notification outbox. A row is written
    // before anyone is told, so a crash or restart loses no notification;
    // the unique group key queues one incident+receiver+kind once.
    // `incident` is plain text, not a foreign key, so this migration does
    // not depend on the incidents table.
    r#"
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        incident TEXT NOT NULL,
        model TEXT NOT NULL,
        receiver TEXT NOT NULL,
        format TEXT NOT NULL,
        url TEXT,
        url_env TEXT,
        severity TEXT NOT NULL,
        kind TEXT NOT NULL,
        group_key TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_unix_ms INTEGER NOT NULL,
        last_error TEXT,
        created_unix_ms INTEGER NOT NULL,
        delivered_unix_ms INTEGER
    );
    CREATE UNIQUE INDEX outbox_group ON outbox (group_key);
    CREATE INDEX outbox_due ON outbox (state, next_attempt_unix_ms);
    CREATE INDEX outbox_incident ON outbox (incident, id);
    "#,
    // 7: a reference profile stored with a version (JSON, as given at
    // registration; NULL: none). Like the rest of a version, never updated.
    r#"
    ALTER TABLE versions ADD COLUMN profile TEXT;
    "#,
];

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SqliteStore {
    /// Opens (creating if needed) the store file and brings its schema up
    /// to date.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let conn = Connection::open(path).map_err(unavailable)?;
        // WAL: readers never block the writer; FULL: every commit is
        // fsynced (the WAL file) before it returns.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(unavailable)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(unavailable)?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> StoreResult<()> {
        let mut conn = self.lock();
        let current: usize = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(unavailable)?;
        if current > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the store's schema version {current} is newer than this backstop ({})",
                MIGRATIONS.len()
            )));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            tx.execute_batch(sql).map_err(unavailable)?;
            tx.pragma_update(None, "user_version", index + 1)
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SQLite's own consistency check ("ok" when sound).
    pub fn integrity_check(&self) -> StoreResult<String> {
        self.lock()
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .map_err(unavailable)
    }
}

/// Appends an audit entry inside `tx`, chained to the last one.
fn append(tx: &rusqlite::Transaction<'_>, draft: AuditDraft) -> StoreResult<AuditEntry> {
    let last: Option<(u64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(unavailable)?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, String::new()),
    };
    let at_ms = now_ms();
    let hash = entry_hash(seq, at_ms, &draft, &prev_hash);
    let json = |value: &Option<serde_json::Value>| value.as_ref().map(|v| v.to_string());
    tx.execute(
        "INSERT INTO audit (seq, at_ms, actor, action, target, reason, before, after, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            seq,
            at_ms,
            draft.actor,
            draft.action,
            draft.target,
            draft.reason,
            json(&draft.before),
            json(&draft.after),
            prev_hash,
            hash
        ],
    )
    .map_err(unavailable)?;
    Ok(AuditEntry {
        seq,
        at_ms,
        draft,
        prev_hash,
        hash,
    })
}

fn read_version(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<VersionRecord, StoreError>> {
    let text = |i: usize| row.get::<_, String>(i);
    let (signature, metadata, provenance, upstreams) = (text(3)?, text(4)?, text(5)?, text(6)?);
    let profile: Option<String> = row.get(10)?;
    let parsed = (|| {
        Ok(VersionRecord {
            model: text(0).map_err(|e| corrupt("model", e))?,
            id: text(1).map_err(|e| corrupt("id", e))?,
            digest: text(2).map_err(|e| corrupt("digest", e))?,
            signature: serde_json::from_str(&signature).map_err(|e| corrupt("signature", e))?,
            metadata: serde_json::from_str(&metadata).map_err(|e| corrupt("metadata", e))?,
            provenance: serde_json::from_str(&provenance).map_err(|e| corrupt("provenance", e))?,
            upstreams: serde_json::from_str(&upstreams).map_err(|e| corrupt("upstreams", e))?,
            registered_at_ms: row.get(7).map_err(|e| corrupt("registered_at_ms", e))?,
            registered_by: text(8).map_err(|e| corrupt("registered_by", e))?,
            deprecated: row.get::<_, i64>(9).map_err(|e| corrupt("deprecated", e))? != 0,
            profile: None,
        }
        .with_profile(match &profile {
            None => None,
            Some(text) => Some(serde_json::from_str(text).map_err(|e| corrupt("profile", e))?),
        }))
    })();
    Ok(parsed)
}

fn read_token(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TokenRecord, StoreError>> {
    let role: String = row.get(3)?;
    let record = TokenRecord {
        id: row.get(0)?,
        hash: row.get(1)?,
        name: row.get(2)?,
        role: crate::access::Role::Viewer,
        created_at_ms: row.get(4)?,
        created_by: row.get(5)?,
        revoked: row.get::<_, i64>(6)? != 0,
    };
    Ok(match role.parse() {
        Ok(role) => Ok(TokenRecord { role, ..record }),
        Err(e) => Err(corrupt(&format!("token {} role", record.id), e)),
    })
}

const TOKEN_COLUMNS: &str = "id, hash, name, role, created_at_ms, created_by, revoked";

/// The token with this id, inside `tx`.
fn token_by_id(tx: &rusqlite::Transaction<'_>, id: &str) -> StoreResult<Option<TokenRecord>> {
    tx.query_row(
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
        params![id],
        read_token,
    )
    .optional()
    .map_err(unavailable)?
    .transpose()
}

/// A unique index refused the row: a conflict, not an outage.
fn constraint_or_unavailable(error: rusqlite::Error, what: &str) -> StoreError {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::Conflict(what.to_string()),
        _ => unavailable(error),
    }
}

/// Opens an `IMMEDIATE` transaction: it takes the write lock up front, so
/// the checks it makes hold until it commits.
fn immediate(conn: &mut Connection) -> StoreResult<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)
}

/// The version `model/id`, inside `conn` (a transaction or not).
fn version_in(conn: &Connection, model: &str, id: &str) -> StoreResult<Option<VersionRecord>> {
    conn.query_row(
        &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE model = ?1 AND id = ?2"),
        params![model, id],
        read_version,
    )
    .optional()
    .map_err(unavailable)?
    .transpose()
}

/// The bundle `model/id` with its members, inside `conn`.
fn bundle_in(conn: &Connection, model: &str, id: &str) -> StoreResult<Option<BundleRecord>> {
    let head: Option<(u64, String)> = conn
        .query_row(
            "SELECT created_at_ms, created_by FROM bundles WHERE model = ?1 AND id = ?2",
            params![model, id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(unavailable)?;
    let Some((created_at_ms, created_by)) = head else {
        return Ok(None);
    };
    let mut statement = conn
        .prepare(
            "SELECT member_model, member_version, digest FROM bundle_members
             WHERE model = ?1 AND bundle = ?2 ORDER BY position",
        )
        .map_err(unavailable)?;
    let members = statement
        .query_map(params![model, id], |row| {
            Ok(BundleMember {
                model: row.get(0)?,
                version: row.get(1)?,
                digest: row.get(2)?,
            })
        })
        .map_err(unavailable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    Ok(Some(BundleRecord {
        model: model.to_string(),
        id: id.to_string(),
        members,
        created_at_ms,
        created_by,
    }))
}

/// Strings from a one-column query.
fn strings(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> StoreResult<Vec<String>> {
    let mut statement = conn.prepare(sql).map_err(unavailable)?;
    let rows = statement
        .query_map(args, |row| row.get(0))
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Why `model/id` must stay: LKG bundles naming it, pins, bundles naming it.
fn references(conn: &Connection, model: &str, id: &str) -> StoreResult<Vec<String>> {
    let mut reasons = strings(
        conn,
        "SELECT DISTINCT 'lkg:' || l.model || '/' || l.bundle FROM lkg l
         JOIN bundle_members m ON m.model = l.model AND m.bundle = l.bundle
         WHERE m.member_model = ?1 AND m.member_version = ?2 ORDER BY 1",
        params![model, id],
    )?;
    reasons.extend(strings(
        conn,
        "SELECT 'retained:' || reason FROM retentions
         WHERE model = ?1 AND version = ?2 ORDER BY created_at_ms, reason",
        params![model, id],
    )?);
    reasons.extend(strings(
        conn,
        "SELECT DISTINCT 'bundle:' || model || '/' || bundle FROM bundle_members
         WHERE member_model = ?1 AND member_version = ?2 ORDER BY 1",
        params![model, id],
    )?);
    Ok(reasons)
}

const VERSION_COLUMNS: &str = "model, id, digest, signature, metadata, provenance, upstreams, \
                               registered_at_ms, registered_by, deprecated, profile";

impl Store for SqliteStore {
    fn register_version(
        &self,
        version: &VersionRecord,
        audit: AuditDraft,
    ) -> StoreResult<Registered> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let existing = tx
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE model = ?1 AND id = ?2"),
                params![version.model, version.id],
                read_version,
            )
            .optional()
            .map_err(unavailable)?
            .transpose()?;
        if let Some(existing) = existing {
            return if existing.same_content(version) {
                Ok(Registered::AlreadyExists)
            } else {
                Err(StoreError::Conflict(format!(
                    "{}/{} is already registered with digest {}; a version is immutable",
                    version.model, version.id, existing.digest
                )))
            };
        }
        let seq: u64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM versions WHERE model = ?1",
                params![version.model],
                |row| row.get(0),
            )
            .map_err(unavailable)?;
        tx.execute(
            "INSERT INTO versions (model, id, digest, signature, metadata, provenance, upstreams,
                                   registered_at_ms, registered_by, deprecated, seq, profile)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                version.model,
                version.id,
                version.digest,
                version.signature.to_string(),
                to_json(&version.metadata),
                to_json(&version.provenance),
                to_json(&version.upstreams),
                version.registered_at_ms,
                version.registered_by,
                version.deprecated as i64,
                seq,
                version.profile.as_ref().map(to_json)
            ],
        )
        .map_err(unavailable)?;
        append(&tx, audit)?;
        tx.commit().map_err(unavailable)?;
        Ok(Registered::Created)
    }

    fn version(&self, model: &str, id: &str) -> StoreResult<Option<VersionRecord>> {
        self.lock()
            .query_row(
                &format!("SELECT {VERSION_COLUMNS} FROM versions WHERE model = ?1 AND id = ?2"),
                params![model, id],
                read_version,
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
    }

    fn versions(&self, model: &str) -> StoreResult<Vec<VersionRecord>> {
        let conn = self.lock();
        let mut statement = conn
            .prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM versions WHERE model = ?1 ORDER BY seq"
            ))
            .map_err(unavailable)?;
        let rows = statement
            .query_map(params![model], read_version)
            .map_err(unavailable)?;
        rows.map(|row| row.map_err(unavailable)?).collect()
    }

    fn append_audit(&self, audit: AuditDraft) -> StoreResult<AuditEntry> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let entry = append(&tx, audit)?;
        tx.commit().map_err(unavailable)?;
        Ok(entry)
    }

    fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        let conn = self.lock();
        let mut statement = conn
            .prepare(
                "SELECT seq, at_ms, actor, action, target, reason, before, after, prev_hash, hash
                 FROM audit
                 WHERE (?1 IS NULL OR target = ?1
                        OR substr(target, 1, length(?1) + 1) = ?1 || '/')
                   AND (?2 IS NULL OR at_ms >= ?2)
                 ORDER BY seq
                 LIMIT ?3",
            )
            .map_err(unavailable)?;
        let limit = filter.limit.map_or(-1, |l| l as i64);
        let rows = statement
            .query_map(params![filter.model, filter.since_ms, limit], |row| {
                let json = |i: usize| -> rusqlite::Result<Option<String>> { row.get(i) };
                Ok((
                    row.get::<_, u64>(0)?,
                    row.get::<_, u64>(1)?,
                    AuditDraft {
                        actor: row.get(2)?,
                        action: row.get(3)?,
                        target: row.get(4)?,
                        reason: row.get(5)?,
                        before: None,
                        after: None,
                    },
                    json(6)?,
                    json(7)?,
                    row.get::<_, String>(8)?,
                    row.get::<_, String>(9)?,
                ))
            })
            .map_err(unavailable)?;
        let mut entries = Vec::new();
        for row in rows {
            let (seq, at_ms, mut draft, before, after, prev_hash, hash) =
                row.map_err(unavailable)?;
            let parse = |text: Option<String>| {
                text.map(|t| serde_json::from_str(&t))
                    .transpose()
                    .map_err(|e| corrupt(&format!("audit entry {seq}"), e))
            };
            draft.before = parse(before)?;
            draft.after = parse(after)?;
            entries.push(AuditEntry {
                seq,
                at_ms,
                draft,
                prev_hash,
                hash,
            });
        }
        Ok(entries)
    }

    fn create_token(&self, token: &TokenRecord, audit: AuditDraft) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let active: Option<String> = tx
            .query_row(
                "SELECT id FROM tokens WHERE name = ?1 AND revoked = 0",
                params![token.name],
                |row| row.get(0),
            )
            .optional()
            .map_err(unavailable)?;
        if let Some(id) = active {
            return Err(StoreError::Conflict(format!(
                "an active token named {:?} exists (id {id}); revoke it first or pick another name",
                token.name
            )));
        }
        tx.execute(
            &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![
                token.id,
                token.hash,
                token.name,
                token.role.as_str(),
                token.created_at_ms,
                token.created_by,
                token.revoked as i64
            ],
        )
        .map_err(|e| constraint_or_unavailable(e, "a token with this id or secret exists"))?;
        append(&tx, audit)?;
        tx.commit().map_err(unavailable)
    }

    fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        self.lock()
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"),
                params![hash],
                read_token,
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
    }

    fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let conn = self.lock();
        let mut statement = conn
            .prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at_ms, rowid"
            ))
            .map_err(unavailable)?;
        let rows = statement.query_map([], read_token).map_err(unavailable)?;
        rows.map(|row| row.map_err(unavailable)?).collect()
    }

    fn revoke_token(&self, id: &str, audit: AuditDraft) -> StoreResult<TokenRecord> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let token = token_by_id(&tx, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no token with id {id:?}")))?;
        if token.revoked {
            return Ok(token);
        }
        tx.execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", params![id])
            .map_err(unavailable)?;
        append(&tx, audit)?;
        tx.commit().map_err(unavailable)?;
        Ok(TokenRecord {
            revoked: true,
            ..token
        })
    }

    fn has_tokens(&self) -> StoreResult<bool> {
        self.lock()
            .query_row("SELECT EXISTS (SELECT 1 FROM tokens)", [], |row| row.get(0))
            .map_err(unavailable)
    }

    fn create_bundle(&self, bundle: &BundleRecord, audit: AuditDraft) -> StoreResult<Registered> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        if let Some(existing) = bundle_in(&tx, &bundle.model, &bundle.id)? {
            return if existing.same_members(bundle) {
                Ok(Registered::AlreadyExists)
            } else {
                Err(StoreError::Conflict(format!(
                    "bundle {}/{} exists with other members; a bundle is immutable",
                    bundle.model, bundle.id
                )))
            };
        }
        for (i, member) in bundle.members.iter().enumerate() {
            let label = format!("members[{i}]: {}/{}", member.model, member.version);
            let version = version_in(&tx, &member.model, &member.version)?
                .ok_or_else(|| StoreError::NotFound(format!("{label} is not registered")))?;
            if version.deprecated {
                return Err(StoreError::Refused(format!(
                    "{label} is deprecated and cannot join a new bundle"
                )));
            }
            if version.digest != member.digest {
                return Err(StoreError::Conflict(format!(
                    "{label} changed while the bundle was checked; try again"
                )));
            }
        }
        let seq: u64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM bundles WHERE model = ?1",
                params![bundle.model],
                |row| row.get(0),
            )
            .map_err(unavailable)?;
        tx.execute(
            "INSERT INTO bundles (model, id, created_at_ms, created_by, seq)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                bundle.model,
                bundle.id,
                bundle.created_at_ms,
                bundle.created_by,
                seq
            ],
        )
        .map_err(unavailable)?;
        for (position, member) in bundle.members.iter().enumerate() {
            tx.execute(
                "INSERT INTO bundle_members
                 (model, bundle, position, member_model, member_version, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    bundle.model,
                    bundle.id,
                    position as i64,
                    member.model,
                    member.version,
                    member.digest
                ],
            )
            .map_err(|e| constraint_or_unavailable(e, "a bundle names a version twice"))?;
        }
        append(&tx, audit)?;
        tx.commit().map_err(unavailable)?;
        Ok(Registered::Created)
    }

    fn bundle(&self, model: &str, id: &str) -> StoreResult<Option<BundleRecord>> {
        bundle_in(&self.lock(), model, id)
    }

    fn bundles(&self, model: &str) -> StoreResult<Vec<BundleRecord>> {
        let conn = self.lock();
        let ids = strings(
            &conn,
            "SELECT id FROM bundles WHERE model = ?1 ORDER BY seq",
            params![model],
        )?;
        let mut bundles = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(bundle) = bundle_in(&conn, model, &id)? {
                bundles.push(bundle);
            }
        }
        Ok(bundles)
    }

    fn promote(&self, model: &str, bundle: &str, audit: AuditDraft) -> StoreResult<Promoted> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        if bundle_in(&tx, model, bundle)?.is_none() {
            return Err(StoreError::NotFound(format!("no bundle {model}/{bundle}")));
        }
        let before = lkg_in(&tx, model)?.map(|lkg| lkg.bundle);
        if before.as_deref() == Some(bundle) {
            return Ok(Promoted {
                before,
                changed: false,
            });
        }
        tx.execute(
            "INSERT INTO lkg (model, bundle, promoted_at_ms, promoted_by) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (model) DO UPDATE SET bundle = excluded.bundle,
                 promoted_at_ms = excluded.promoted_at_ms, promoted_by = excluded.promoted_by",
            params![model, bundle, now_ms(), audit.actor],
        )
        .map_err(unavailable)?;
        append(
            &tx,
            AuditDraft {
                before: Some(serde_json::json!({ "lkg": before })),
                after: Some(serde_json::json!({ "lkg": bundle })),
                ..audit
            },
        )?;
        tx.commit().map_err(unavailable)?;
        Ok(Promoted {
            before,
            changed: true,
        })
    }

    fn lkg(&self, model: &str) -> StoreResult<Option<Lkg>> {
        lkg_in(&self.lock(), model)
    }

    fn deprecate_version(
        &self,
        model: &str,
        id: &str,
        audit: AuditDraft,
    ) -> StoreResult<VersionRecord> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        let version = version_in(&tx, model, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no version {model}/{id}")))?;
        if version.deprecated {
            return Ok(version);
        }
        tx.execute(
            "UPDATE versions SET deprecated = 1 WHERE model = ?1 AND id = ?2",
            params![model, id],
        )
        .map_err(unavailable)?;
        append(
            &tx,
            AuditDraft {
                before: Some(serde_json::json!({ "deprecated": false })),
                after: Some(serde_json::json!({ "deprecated": true })),
                ..audit
            },
        )?;
        tx.commit().map_err(unavailable)?;
        Ok(VersionRecord {
            deprecated: true,
            ..version
        })
    }

    fn retain(&self, retention: &Retention, audit: AuditDraft) -> StoreResult<bool> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        if version_in(&tx, &retention.model, &retention.version)?.is_none() {
            return Err(StoreError::NotFound(format!(
                "no version {}/{}",
                retention.model, retention.version
            )));
        }
        let added = tx
            .execute(
                "INSERT INTO retentions (model, version, reason, created_at_ms, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![
                    retention.model,
                    retention.version,
                    retention.reason,
                    retention.created_at_ms,
                    retention.created_by
                ],
            )
            .map_err(unavailable)?;
        if added == 0 {
            return Ok(false);
        }
        append(&tx, audit)?;
        tx.commit().map_err(unavailable)?;
        Ok(true)
    }

    fn release(
        &self,
        model: &str,
        version: &str,
        reason: &str,
        audit: AuditDraft,
    ) -> StoreResult<bool> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        let removed = tx
            .execute(
                "DELETE FROM retentions WHERE model = ?1 AND version = ?2 AND reason = ?3",
                params![model, version, reason],
            )
            .map_err(unavailable)?;
        if removed == 0 {
            return Ok(false);
        }
        append(&tx, audit)?;
        tx.commit().map_err(unavailable)?;
        Ok(true)
    }

    fn retentions(&self, model: &str, version: &str) -> StoreResult<Vec<Retention>> {
        let conn = self.lock();
        let mut statement = conn
            .prepare(
                "SELECT reason, created_at_ms, created_by FROM retentions
                 WHERE model = ?1 AND version = ?2 ORDER BY created_at_ms, reason",
            )
            .map_err(unavailable)?;
        let rows = statement
            .query_map(params![model, version], |row| {
                Ok(Retention {
                    model: model.to_string(),
                    version: version.to_string(),
                    reason: row.get(0)?,
                    created_at_ms: row.get(1)?,
                    created_by: row.get(2)?,
                })
            })
            .map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)
    }

    fn delete_version(&self, model: &str, id: &str, audit: AuditDraft) -> StoreResult<Deletion> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        let version = version_in(&tx, model, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no version {model}/{id}")))?;
        let reasons = references(&tx, model, id)?;
        if !reasons.is_empty() {
            // The refusal is committed too: attempts to delete what must
            // stay are worth knowing about.
            append(
                &tx,
                AuditDraft {
                    action: format!("{}.refused", audit.action),
                    after: Some(serde_json::json!({ "refused": reasons })),
                    ..audit
                },
            )?;
            tx.commit().map_err(unavailable)?;
            return Ok(Deletion::Refused(reasons));
        }
        tx.execute(
            "DELETE FROM versions WHERE model = ?1 AND id = ?2",
            params![model, id],
        )
        .map_err(|e| constraint_or_unavailable(e, "the version is still referenced"))?;
        append(
            &tx,
            AuditDraft {
                before: Some(serde_json::json!({ "digest": version.digest })),
                ..audit
            },
        )?;
        tx.commit().map_err(unavailable)?;
        Ok(Deletion::Deleted(Box::new(version)))
    }

    fn referenced_digests(&self) -> StoreResult<BTreeSet<String>> {
        let conn = self.lock();
        Ok(strings(&conn, "SELECT DISTINCT digest FROM versions", [])?
            .into_iter()
            .collect())
    }

    fn create_rollout(&self, rollout: &RolloutRecord, audit: AuditDraft) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        if rollout_in(&tx, &rollout.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "a rollout with id {} exists",
                rollout.id
            )));
        }
        if rollout.open {
            refuse_second_open(&tx, &rollout.model, &rollout.id)?;
        }
        tx.execute(
            &format!(
                "INSERT INTO rollouts ({ROLLOUT_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                rollout.id,
                rollout.model,
                rollout.candidate,
                rollout.baseline,
                rollout.phase,
                rollout.open as i64,
                rollout.policy_json,
                rollout.state_json,
                rollout.created_unix_ms,
                rollout.updated_unix_ms
            ],
        )
        .map_err(|e| constraint_or_unavailable(e, "the rollout's id or open model is taken"))?;
        append(&tx, audit)?;
        tx.commit().map_err(unavailable)
    }

    fn update_rollout(
        &self,
        rollout: &RolloutRecord,
        audit: Option<AuditDraft>,
    ) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        let stored = rollout_in(&tx, &rollout.id)?
            .ok_or_else(|| StoreError::NotFound(format!("no rollout {}", rollout.id)))?;
        if rollout.open {
            refuse_second_open(&tx, &stored.model, &stored.id)?;
        }
        tx.execute(
            "UPDATE rollouts SET phase = ?2, open = ?3, state_json = ?4, updated_unix_ms = ?5
             WHERE id = ?1",
            params![
                rollout.id,
                rollout.phase,
                rollout.open as i64,
                rollout.state_json,
                rollout.updated_unix_ms
            ],
        )
        .map_err(|e| constraint_or_unavailable(e, "the model has another open rollout"))?;
        if let Some(audit) = audit {
            append(&tx, audit)?;
        }
        tx.commit().map_err(unavailable)
    }

    fn rollout(&self, id: &str) -> StoreResult<Option<RolloutRecord>> {
        rollout_in(&self.lock(), id)
    }

    fn rollouts(
        &self,
        model: Option<&str>,
        open_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<RolloutRecord>> {
        let conn = self.lock();
        let mut statement = conn
            .prepare(&format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts
                 WHERE (?1 IS NULL OR model = ?1) AND (?2 = 0 OR open = 1)
                 ORDER BY created_unix_ms DESC, rowid DESC
                 LIMIT ?3"
            ))
            .map_err(unavailable)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(params![model, open_only as i64, limit], read_rollout)
            .map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)
    }

    fn create_incident(
        &self,
        incident: &IncidentRecord,
        pins: &[Retention],
        audit: AuditDraft,
    ) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        if incident_in(&tx, &incident.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "an incident with id {} exists",
                incident.id
            )));
        }
        tx.execute(
            &format!(
                "INSERT INTO incidents ({INCIDENT_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ),
            params![
                incident.id,
                incident.model,
                incident.rollout,
                incident.severity,
                incident.state,
                incident.opened_unix_ms,
                incident.updated_unix_ms,
                incident.evidence_json,
                incident.record_json
            ],
        )
        .map_err(unavailable)?;
        for pin in pins {
            if version_in(&tx, &pin.model, &pin.version)?.is_none() {
                continue;
            }
            tx.execute(
                "INSERT OR IGNORE INTO retentions (model, version, reason, created_at_ms, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    pin.model,
                    pin.version,
                    pin.reason,
                    pin.created_at_ms,
                    pin.created_by
                ],
            )
            .map_err(unavailable)?;
        }
        append(&tx, audit)?;
        tx.commit().map_err(unavailable)
    }

    fn update_incident(
        &self,
        incident: &IncidentRecord,
        audit: Option<AuditDraft>,
    ) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        let changed = tx
            .execute(
                "UPDATE incidents SET state = ?2, record_json = ?3, updated_unix_ms = ?4
                 WHERE id = ?1",
                params![
                    incident.id,
                    incident.state,
                    incident.record_json,
                    incident.updated_unix_ms
                ],
            )
            .map_err(unavailable)?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("no incident {}", incident.id)));
        }
        if let Some(audit) = audit {
            append(&tx, audit)?;
        }
        tx.commit().map_err(unavailable)
    }

    fn incident(&self, id: &str) -> StoreResult<Option<IncidentRecord>> {
        incident_in(&self.lock(), id)
    }

    fn incidents(&self, model: Option<&str>, limit: usize) -> StoreResult<Vec<IncidentRecord>> {
        let conn = self.lock();
        let mut statement = conn
            .prepare(
                "SELECT id, model, rollout, severity, state, opened_unix_ms, updated_unix_ms,
                        '' AS evidence_json, record_json
                 FROM incidents
                 WHERE (?1 IS NULL OR model = ?1)
                 ORDER BY opened_unix_ms DESC, rowid DESC
                 LIMIT ?2",
            )
            .map_err(unavailable)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(params![model, limit], read_incident)
            .map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)
    }

    fn enqueue_notification(&self, record: &OutboxRecord) -> StoreResult<Enqueued> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        // DO NOTHING on the group key: a duplicate is grouped, not an error.
        let inserted = tx
            .execute(
                &format!(
                    "INSERT INTO outbox ({OUTBOX_INSERT_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', 0, ?11, NULL,
                             ?12, NULL)
                     ON CONFLICT (group_key) DO NOTHING"
                ),
                params![
                    record.incident,
                    record.model,
                    record.receiver,
                    record.format,
                    record.url,
                    record.url_env,
                    record.severity,
                    record.kind,
                    record.group_key,
                    record.payload.to_string(),
                    record.next_attempt_unix_ms,
                    record.created_unix_ms
                ],
            )
            .map_err(unavailable)?;
        let outcome = if inserted == 1 {
            Enqueued::Queued(tx.last_insert_rowid() as u64)
        } else {
            let id: u64 = tx
                .query_row(
                    "SELECT id FROM outbox WHERE group_key = ?1",
                    params![record.group_key],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
            Enqueued::Grouped(id)
        };
        tx.commit().map_err(unavailable)?;
        Ok(outcome)
    }

    fn due_notifications(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<OutboxRecord>> {
        let conn = self.lock();
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        outbox_rows(
            &conn,
            &format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox
                 WHERE state = 'pending' AND next_attempt_unix_ms <= ?1
                   AND NOT EXISTS (
                       SELECT 1 FROM outbox AS earlier
                       WHERE earlier.incident = outbox.incident
                         AND earlier.receiver = outbox.receiver
                         AND earlier.state = 'pending'
                         AND earlier.id < outbox.id)
                 ORDER BY next_attempt_unix_ms, id LIMIT ?2"
            ),
            params![now, limit],
        )
    }

    fn record_attempt(&self, id: u64, outcome: &Attempt) -> StoreResult<OutboxRecord> {
        let mut conn = self.lock();
        let tx = immediate(&mut conn)?;
        let stored = outbox_in(&tx, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no notification {id}")))?;
        if stored.state != OutboxState::Pending {
            return Err(StoreError::Conflict(format!(
                "notification {id} is {}, not pending",
                stored.state.name()
            )));
        }
        // A delivery keeps the earlier error: it tells why it took retries.
        let (state, next, error, delivered) = match outcome {
            Attempt::Delivered { at_unix_ms } => (
                OutboxState::Delivered,
                stored.next_attempt_unix_ms,
                stored.last_error.clone(),
                Some(*at_unix_ms),
            ),
            Attempt::Retry {
                error,
                next_attempt_unix_ms,
            } => (
                OutboxState::Pending,
                *next_attempt_unix_ms,
                Some(error.clone()),
                None,
            ),
            Attempt::GaveUp { error } => (
                OutboxState::Failed,
                stored.next_attempt_unix_ms,
                Some(error.clone()),
                None,
            ),
        };
        let next = i64::try_from(next).unwrap_or(i64::MAX);
        let delivered = delivered.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX));
        tx.execute(
            "UPDATE outbox SET state = ?2, attempts = attempts + 1, next_attempt_unix_ms = ?3,
             last_error = ?4, delivered_unix_ms = ?5 WHERE id = ?1",
            params![id, state.name(), next, error, delivered],
        )
        .map_err(unavailable)?;
        let updated = outbox_in(&tx, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no notification {id}")))?;
        tx.commit().map_err(unavailable)?;
        Ok(updated)
    }

    fn notifications(
        &self,
        incident: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<OutboxRecord>> {
        let conn = self.lock();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        outbox_rows(
            &conn,
            &format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE (?1 IS NULL OR incident = ?1)
                 ORDER BY id DESC LIMIT ?2"
            ),
            params![incident, limit],
        )
    }
}

const INCIDENT_COLUMNS: &str = "id, model, rollout, severity, state, opened_unix_ms, \
                                updated_unix_ms, evidence_json, record_json";

fn read_incident(row: &rusqlite::Row<'_>) -> rusqlite::Result<IncidentRecord> {
    Ok(IncidentRecord {
        id: row.get(0)?,
        model: row.get(1)?,
        rollout: row.get(2)?,
        severity: row.get(3)?,
        state: row.get(4)?,
        opened_unix_ms: row.get(5)?,
        updated_unix_ms: row.get(6)?,
        evidence_json: row.get(7)?,
        record_json: row.get(8)?,
    })
}

fn incident_in(conn: &Connection, id: &str) -> StoreResult<Option<IncidentRecord>> {
    conn.query_row(
        &format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?1"),
        params![id],
        read_incident,
    )
    .optional()
    .map_err(unavailable)
}

const OUTBOX_INSERT_COLUMNS: &str = "incident, model, receiver, format, url, url_env, severity, \
                                     kind, group_key, payload, state, attempts, \
                                     next_attempt_unix_ms, last_error, created_unix_ms, \
                                     delivered_unix_ms";

const OUTBOX_COLUMNS: &str = "id, incident, model, receiver, format, url, url_env, severity, \
                              kind, group_key, payload, state, attempts, next_attempt_unix_ms, \
                              last_error, created_unix_ms, delivered_unix_ms";

fn read_outbox(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OutboxRecord, StoreError>> {
    let id: u64 = row.get(0)?;
    let payload: String = row.get(10)?;
    let state: String = row.get(11)?;
    let record = OutboxRecord {
        id,
        incident: row.get(1)?,
        model: row.get(2)?,
        receiver: row.get(3)?,
        format: row.get(4)?,
        url: row.get(5)?,
        url_env: row.get(6)?,
        severity: row.get(7)?,
        kind: row.get(8)?,
        group_key: row.get(9)?,
        payload: serde_json::Value::Null,
        state: OutboxState::Pending,
        attempts: row.get(12)?,
        next_attempt_unix_ms: row.get(13)?,
        last_error: row.get(14)?,
        created_unix_ms: row.get(15)?,
        delivered_unix_ms: row.get(16)?,
    };
    let parsed = (|| {
        Ok(OutboxRecord {
            payload: serde_json::from_str(&payload)
                .map_err(|e| corrupt(&format!("notification {id} payload"), e))?,
            state: state
                .parse()
                .map_err(|e| corrupt(&format!("notification {id} state"), e))?,
            ..record
        })
    })();
    Ok(parsed)
}

/// Outbox rows from a query over [`OUTBOX_COLUMNS`].
fn outbox_rows(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> StoreResult<Vec<OutboxRecord>> {
    let mut statement = conn.prepare(sql).map_err(unavailable)?;
    let rows = statement
        .query_map(args, read_outbox)
        .map_err(unavailable)?;
    rows.map(|row| row.map_err(unavailable)?).collect()
}

/// The outbox row with this id, inside `conn`.
fn outbox_in(conn: &Connection, id: u64) -> StoreResult<Option<OutboxRecord>> {
    conn.query_row(
        &format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ?1"),
        params![id],
        read_outbox,
    )
    .optional()
    .map_err(unavailable)?
    .transpose()
}

/// The last-known-good of `model`, inside `conn`.
fn lkg_in(conn: &Connection, model: &str) -> StoreResult<Option<Lkg>> {
    conn.query_row(
        "SELECT bundle, promoted_at_ms, promoted_by FROM lkg WHERE model = ?1",
        params![model],
        |row| {
            Ok(Lkg {
                model: model.to_string(),
                bundle: row.get(0)?,
                promoted_at_ms: row.get(1)?,
                promoted_by: row.get(2)?,
            })
        },
    )
    .optional()
    .map_err(unavailable)
}

const ROLLOUT_COLUMNS: &str = "id, model, candidate, baseline, phase, open, policy_json, \
                               state_json, created_unix_ms, updated_unix_ms";

fn read_rollout(row: &rusqlite::Row<'_>) -> rusqlite::Result<RolloutRecord> {
    Ok(RolloutRecord {
        id: row.get(0)?,
        model: row.get(1)?,
        candidate: row.get(2)?,
        baseline: row.get(3)?,
        phase: row.get(4)?,
        open: row.get::<_, i64>(5)? != 0,
        policy_json: row.get(6)?,
        state_json: row.get(7)?,
        created_unix_ms: row.get(8)?,
        updated_unix_ms: row.get(9)?,
    })
}

/// The rollout with this id, inside `conn`.
fn rollout_in(conn: &Connection, id: &str) -> StoreResult<Option<RolloutRecord>> {
    conn.query_row(
        &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
        params![id],
        read_rollout,
    )
    .optional()
    .map_err(unavailable)
}

/// Refuses to make `id` a second open rollout of `model`: a conflict naming
/// the open one, checked inside the write's transaction.
fn refuse_second_open(conn: &Connection, model: &str, id: &str) -> StoreResult<()> {
    let open: Option<String> = conn
        .query_row(
            "SELECT id FROM rollouts WHERE model = ?1 AND open = 1 AND id <> ?2",
            params![model, id],
            |row| row.get(0),
        )
        .optional()
        .map_err(unavailable)?;
    match open {
        Some(open) => Err(StoreError::Conflict(format!(
            "model {model:?} already has an open rollout {open}; finish or abort it first"
        ))),
        None => Ok(()),
    }
}

/// What [`write_versions`] did.
#[derive(serde::Serialize)]
pub struct WriteSummary {
    pub writes: u64,
    pub elapsed_ms: f64,
    pub writes_per_s: f64,
}

/// Registers versions `start..start+count` of model `torture` one durable
/// write at a time, printing `ack <id>` after each commit returns. Used by
/// the crash test (which kills the process at random points) and as the
/// store's write benchmark.
pub fn write_versions(path: &Path, start: u64, count: u64) -> StoreResult<WriteSummary> {
    use std::io::Write;
    let store = SqliteStore::open(path)?;
    let started = std::time::Instant::now();
    let mut stdout = std::io::stdout().lock();
    for n in start..start + count {
        let id = format!("v{n}");
        let version = VersionRecord {
            model: "torture".into(),
            id: id.clone(),
            digest: format!("sha256:{}", super::audit::hex(&n.to_be_bytes()).repeat(4)),
            signature: serde_json::json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}),
            metadata: Default::default(),
            provenance: Default::default(),
            upstreams: vec!["http://127.0.0.1:9001".into()],
            registered_at_ms: now_ms(),
            registered_by: "store-writer".into(),
            deprecated: false,
            profile: None,
        };
        let audit = AuditDraft {
            actor: "store-writer".into(),
            action: "version.register".into(),
            target: format!("torture/{id}"),
            ..Default::default()
        };
        store.register_version(&version, audit)?;
        // The acknowledgement goes out only after the commit returned.
        let _ = writeln!(stdout, "ack {id}");
        let _ = stdout.flush();
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(WriteSummary {
        writes: count,
        elapsed_ms: elapsed * 1000.0,
        writes_per_s: if elapsed > 0.0 {
            count as f64 / elapsed
        } else {
            0.0
        },
    })
}

/// JSON text of the map and list columns.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps and lists of strings serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit;

    fn version(id: &str, digest: &str) -> VersionRecord {
        VersionRecord {
            model: "fraud".into(),
            id: id.into(),
            digest: format!("sha256:{digest}"),
            signature: serde_json::json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}),
            metadata: [("changelog".to_string(), "first".to_string())].into(),
            provenance: [("commit".to_string(), "abc123".to_string())].into(),
            upstreams: vec!["http://127.0.0.1:9001".into()],
            registered_at_ms: 1,
            registered_by: "alice".into(),
            deprecated: false,
            profile: None,
        }
    }

    fn draft(target: &str) -> AuditDraft {
        AuditDraft {
            actor: "alice".into(),
            action: "version.register".into(),
            target: target.into(),
            ..Default::default()
        }
    }

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("backstop.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn registering_is_idempotent_and_immutable() {
        let (_dir, store) = open();
        let v1 = version("v1", "aa");
        assert_eq!(
            store.register_version(&v1, draft("fraud/v1")).unwrap(),
            Registered::Created
        );
        let mut again = v1.clone();
        again.registered_at_ms = 99;
        assert_eq!(
            store.register_version(&again, draft("fraud/v1")).unwrap(),
            Registered::AlreadyExists
        );
        let conflicting = version("v1", "bb");
        let error = store
            .register_version(&conflicting, draft("fraud/v1"))
            .unwrap_err();
        assert!(matches!(error, StoreError::Conflict(_)), "{error}");
        assert_eq!(
            store.version("fraud", "v1").unwrap().unwrap().digest,
            "sha256:aa"
        );
        // Only the first registration was audited: refusals change nothing.
        assert_eq!(store.audit(&AuditFilter::default()).unwrap().len(), 1);
    }

    #[test]
    fn versions_list_in_registration_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backstop.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            for id in ["v3", "v1", "v2"] {
                store
                    .register_version(&version(id, id), draft(&format!("fraud/{id}")))
                    .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let ids: Vec<_> = store
            .versions("fraud")
            .unwrap()
            .into_iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(ids, ["v3", "v1", "v2"]);
        assert_eq!(store.versions("other").unwrap(), vec![]);
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn concurrent_registrations_of_one_id_store_it_once() {
        let (_dir, store) = open();
        let store = std::sync::Arc::new(store);
        let outcomes: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let digest = if i % 2 == 0 { "aa" } else { "bb" };
                    store.register_version(&version("v1", digest), draft("fraud/v1"))
                })
            })
            .map(|t| t.join().unwrap())
            .collect();
        let created = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(Registered::Created)))
            .count();
        assert_eq!(created, 1, "{outcomes:?}");
        let stored = store.version("fraud", "v1").unwrap().unwrap();
        for outcome in outcomes {
            match outcome {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert!(stored.digest == "sha256:aa" || stored.digest == "sha256:bb");
        assert_eq!(store.audit(&AuditFilter::default()).unwrap().len(), 1);
    }

    #[test]
    fn the_audit_chain_verifies_and_filters() {
        let (_dir, store) = open();
        for id in ["v1", "v2"] {
            store
                .register_version(&version(id, id), draft(&format!("fraud/{id}")))
                .unwrap();
        }
        store
            .append_audit(AuditDraft {
                actor: "anonymous".into(),
                action: "login.failed".into(),
                target: "api".into(),
                reason: "bad token".into(),
                ..Default::default()
            })
            .unwrap();
        let all = store.audit(&AuditFilter::default()).unwrap();
        assert_eq!(audit::verify(&all), Ok(3));
        let fraud = store
            .audit(&AuditFilter {
                model: Some("fraud".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(fraud.len(), 2);
        let limited = store
            .audit(&AuditFilter {
                limit: Some(1),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(limited.len(), 1);
    }

    #[test]
    fn tampering_with_the_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backstop.db");
        let store = SqliteStore::open(&path).unwrap();
        for id in ["v1", "v2", "v3"] {
            store
                .register_version(&version(id, id), draft(&format!("fraud/{id}")))
                .unwrap();
        }
        drop(store);
        // Someone edits the file with the sqlite tools.
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2", [])
            .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        let broken = audit::verify(&store.audit(&AuditFilter::default()).unwrap()).unwrap_err();
        assert_eq!(broken.seq, 2);
        drop(store);
        let conn = Connection::open(&path).unwrap();
        conn.execute("DELETE FROM audit WHERE seq = 1", []).unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        let broken = audit::verify(&store.audit(&AuditFilter::default()).unwrap()).unwrap_err();
        assert_eq!(broken.seq, 1);
    }

    fn token(id: &str, name: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            hash: format!("{id:0>64}"),
            name: name.into(),
            role: crate::access::Role::Deployer,
            created_at_ms: 1,
            created_by: "root (admin)".into(),
            revoked: false,
        }
    }

    fn token_draft(action: &str, id: &str) -> AuditDraft {
        AuditDraft {
            actor: "root (admin)".into(),
            action: action.into(),
            target: format!("token:{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn tokens_are_created_found_by_hash_and_revoked_with_audit_entries() {
        let (_dir, store) = open();
        assert!(!store.has_tokens().unwrap());
        let alice = token("a1", "alice");
        store
            .create_token(&alice, token_draft("token.create", "a1"))
            .unwrap();
        assert!(store.has_tokens().unwrap());
        assert_eq!(
            store.token_by_hash(&alice.hash).unwrap(),
            Some(alice.clone())
        );
        assert_eq!(store.token_by_hash("nope").unwrap(), None);

        // One active token per name; ids and hashes are unique.
        let error = store
            .create_token(&token("a2", "alice"), token_draft("token.create", "a2"))
            .unwrap_err();
        assert!(matches!(error, StoreError::Conflict(_)), "{error}");
        let error = store
            .create_token(&token("a1", "bob"), token_draft("token.create", "a1"))
            .unwrap_err();
        assert!(matches!(error, StoreError::Conflict(_)), "{error}");

        let revoked = store
            .revoke_token("a1", token_draft("token.revoke", "a1"))
            .unwrap();
        assert!(revoked.revoked);
        // Revoking again changes nothing and is not audited again.
        assert!(
            store
                .revoke_token("a1", token_draft("token.revoke", "a1"))
                .unwrap()
                .revoked
        );
        assert!(matches!(
            store.revoke_token("zz", token_draft("token.revoke", "zz")),
            Err(StoreError::NotFound(_))
        ));
        // The name is free again; revoked tokens still count as tokens.
        store
            .create_token(&token("a2", "alice"), token_draft("token.create", "a2"))
            .unwrap();
        let listed = store.tokens().unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|t| (t.id.as_str(), t.revoked))
                .collect::<Vec<_>>(),
            [("a1", true), ("a2", false)]
        );
        let actions: Vec<_> = store
            .audit(&AuditFilter::default())
            .unwrap()
            .into_iter()
            .map(|e| e.draft.action)
            .collect();
        assert_eq!(actions, ["token.create", "token.revoke", "token.create"]);
    }

    /// A store file as an older backstop left it: the first `version`
    /// migrations applied, and `prepare` run on it.
    fn at_schema(version: usize, prepare: impl FnOnce(&Connection)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("backstop.db")).unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version).unwrap();
        prepare(&conn);
        dir
    }

    fn schema_version(store: &SqliteStore) -> usize {
        store
            .lock()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_store_from_before_tokens_is_migrated() {
        let dir = at_schema(1, |_| {});
        let store = SqliteStore::open(&dir.path().join("backstop.db")).unwrap();
        assert!(!store.has_tokens().unwrap());
        store
            .create_token(&token("a1", "alice"), token_draft("token.create", "a1"))
            .unwrap();
        assert_eq!(schema_version(&store), MIGRATIONS.len());
    }

    fn bundle(model: &str, id: &str, members: &[(&str, &str)]) -> BundleRecord {
        BundleRecord {
            model: model.into(),
            id: id.into(),
            members: members
                .iter()
                .map(|(m, v)| BundleMember {
                    model: m.to_string(),
                    version: v.to_string(),
                    digest: format!("sha256:{v}"),
                })
                .collect(),
            created_at_ms: 1,
            created_by: "alice".into(),
        }
    }

    fn actions(store: &SqliteStore) -> Vec<String> {
        store
            .audit(&AuditFilter::default())
            .unwrap()
            .into_iter()
            .map(|e| e.draft.action)
            .collect()
    }

    /// `fraud/v1`, `fraud/v2` and `enc/e1`, each digest `sha256:<id>`.
    fn with_versions() -> (tempfile::TempDir, SqliteStore) {
        let (dir, store) = open();
        for id in ["v1", "v2"] {
            store
                .register_version(&version(id, id), draft(&format!("fraud/{id}")))
                .unwrap();
        }
        let encoder = VersionRecord {
            model: "enc".into(),
            ..version("e1", "e1")
        };
        store.register_version(&encoder, draft("enc/e1")).unwrap();
        (dir, store)
    }

    #[test]
    fn bundles_are_immutable_and_name_live_versions() {
        let (_dir, store) = with_versions();
        let b1 = bundle("fraud", "b1", &[("enc", "e1"), ("fraud", "v1")]);
        assert_eq!(
            store.create_bundle(&b1, draft("fraud/b1")).unwrap(),
            Registered::Created
        );
        assert_eq!(
            store.create_bundle(&b1, draft("fraud/b1")).unwrap(),
            Registered::AlreadyExists
        );
        let other = bundle("fraud", "b1", &[("enc", "e1"), ("fraud", "v2")]);
        assert!(matches!(
            store.create_bundle(&other, draft("fraud/b1")),
            Err(StoreError::Conflict(_))
        ));
        let missing = bundle("fraud", "b2", &[("enc", "e9"), ("fraud", "v1")]);
        assert!(matches!(
            store.create_bundle(&missing, draft("fraud/b2")),
            Err(StoreError::NotFound(_))
        ));
        let mut stale = bundle("fraud", "b2", &[("fraud", "v2")]);
        stale.members[0].digest = "sha256:other".into();
        assert!(matches!(
            store.create_bundle(&stale, draft("fraud/b2")),
            Err(StoreError::Conflict(_))
        ));
        let deprecated = store
            .deprecate_version("fraud", "v2", draft("fraud/v2"))
            .unwrap();
        assert!(deprecated.deprecated);
        // Deprecating again changes nothing and is not audited again.
        store
            .deprecate_version("fraud", "v2", draft("fraud/v2"))
            .unwrap();
        assert!(store.version("fraud", "v2").unwrap().unwrap().deprecated);
        assert!(matches!(
            store.create_bundle(
                &bundle("fraud", "b2", &[("fraud", "v2")]),
                draft("fraud/b2")
            ),
            Err(StoreError::Refused(_))
        ));
        assert!(matches!(
            store.deprecate_version("fraud", "v9", draft("fraud/v9")),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.bundle("fraud", "b1").unwrap(), Some(b1.clone()));
        assert_eq!(store.bundles("fraud").unwrap(), vec![b1]);
        assert_eq!(store.bundles("enc").unwrap(), vec![]);
        assert_eq!(store.audit(&AuditFilter::default()).unwrap().len(), 5);
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn promoting_records_the_last_known_good_before_and_after() {
        let (_dir, store) = with_versions();
        for (id, v) in [("b1", "v1"), ("b2", "v2")] {
            store
                .create_bundle(&bundle("fraud", id, &[("fraud", v)]), draft(id))
                .unwrap();
        }
        assert_eq!(store.lkg("fraud").unwrap(), None);
        let promote = |b: &str| store.promote("fraud", b, draft("fraud"));
        assert_eq!(
            promote("b1").unwrap(),
            Promoted {
                before: None,
                changed: true
            }
        );
        assert!(!promote("b1").unwrap().changed);
        assert_eq!(
            promote("b2").unwrap(),
            Promoted {
                before: Some("b1".into()),
                changed: true
            }
        );
        assert!(matches!(promote("b9"), Err(StoreError::NotFound(_))));
        // Another model's bundle is not this model's to promote.
        assert!(matches!(
            store.promote("enc", "b1", draft("enc")),
            Err(StoreError::NotFound(_))
        ));
        let lkg = store.lkg("fraud").unwrap().unwrap();
        assert_eq!(
            (lkg.bundle.as_str(), lkg.promoted_by.as_str()),
            ("b2", "alice")
        );
        let last = store.audit(&AuditFilter::default()).unwrap().pop().unwrap();
        assert_eq!(last.draft.before, Some(serde_json::json!({"lkg": "b1"})));
        assert_eq!(last.draft.after, Some(serde_json::json!({"lkg": "b2"})));
        assert_eq!(store.audit(&AuditFilter::default()).unwrap().len(), 7);
    }

    #[test]
    fn deleting_a_referenced_version_is_refused_and_audited() {
        let (_dir, store) = with_versions();
        store
            .create_bundle(
                &bundle("fraud", "b1", &[("enc", "e1"), ("fraud", "v1")]),
                draft("b1"),
            )
            .unwrap();
        store.promote("fraud", "b1", draft("fraud")).unwrap();
        let delete = |model: &str, id: &str| {
            store.delete_version(
                model,
                id,
                AuditDraft {
                    action: "version.delete".into(),
                    ..draft(&format!("{model}/{id}"))
                },
            )
        };
        assert_eq!(
            delete("enc", "e1").unwrap(),
            Deletion::Refused(vec!["lkg:fraud/b1".into(), "bundle:fraud/b1".into()])
        );
        let pin = Retention {
            model: "fraud".into(),
            version: "v2".into(),
            reason: "rollout:r1".into(),
            created_at_ms: 1,
            created_by: "alice".into(),
        };
        assert!(store.retain(&pin, draft("fraud/v2")).unwrap());
        assert!(!store.retain(&pin, draft("fraud/v2")).unwrap());
        assert_eq!(store.retentions("fraud", "v2").unwrap(), vec![pin.clone()]);
        assert!(matches!(
            store.retain(
                &Retention {
                    version: "v9".into(),
                    ..pin.clone()
                },
                draft("fraud/v9")
            ),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            delete("fraud", "v2").unwrap(),
            Deletion::Refused(vec!["retained:rollout:r1".into()])
        );
        assert!(store
            .release("fraud", "v2", "rollout:r1", draft("fraud/v2"))
            .unwrap());
        assert!(!store
            .release("fraud", "v2", "rollout:r1", draft("fraud/v2"))
            .unwrap());
        let Deletion::Deleted(gone) = delete("fraud", "v2").unwrap() else {
            panic!("not deleted");
        };
        assert_eq!(gone.digest, "sha256:v2");
        assert_eq!(store.version("fraud", "v2").unwrap(), None);
        assert!(matches!(
            delete("fraud", "v2"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            store.referenced_digests().unwrap(),
            ["sha256:e1", "sha256:v1"].map(String::from).into()
        );
        let all = store.audit(&AuditFilter::default()).unwrap();
        let refused: Vec<_> = all
            .iter()
            .filter(|e| e.draft.action == "version.delete.refused")
            .collect();
        assert_eq!(refused.len(), 2);
        assert_eq!(
            refused[1].draft.after,
            Some(serde_json::json!({"refused": ["retained:rollout:r1"]}))
        );
        let deletions: Vec<_> = actions(&store)
            .into_iter()
            .filter(|a| a.starts_with("version.delete"))
            .collect();
        assert_eq!(
            deletions,
            [
                "version.delete.refused",
                "version.delete.refused",
                "version.delete"
            ]
        );
        assert_eq!(audit::verify(&all), Ok(all.len() as u64));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backstop.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Corrupt(_))
        ));
    }

    fn rollout(id: &str, model: &str, created: u64) -> RolloutRecord {
        RolloutRecord {
            id: id.into(),
            model: model.into(),
            candidate: "v2".into(),
            baseline: "v1".into(),
            phase: "running".into(),
            open: true,
            policy_json: r#"{"steps":[1,5,25,100]}"#.into(),
            state_json: r#"{"step":0}"#.into(),
            created_unix_ms: created,
            updated_unix_ms: created,
        }
    }

    fn rollout_draft(action: &str, id: &str) -> AuditDraft {
        AuditDraft {
            actor: "alice".into(),
            action: action.into(),
            target: format!("fraud/rollout:{id}"),
            ..Default::default()
        }
    }

    fn ids(rollouts: Vec<RolloutRecord>) -> Vec<String> {
        rollouts.into_iter().map(|r| r.id).collect()
    }

    #[test]
    fn rollouts_round_trip_list_newest_first_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backstop.db");
        let r1 = rollout("ro-1", "fraud", 10);
        let r2 = rollout("ro-2", "churn", 20);
        let r3 = RolloutRecord {
            open: false,
            phase: "aborted".into(),
            ..rollout("ro-3", "fraud", 5)
        };
        {
            let store = SqliteStore::open(&path).unwrap();
            for r in [&r1, &r2, &r3] {
                store
                    .create_rollout(r, rollout_draft("rollout.create", &r.id))
                    .unwrap();
            }
            assert_eq!(store.rollout("ro-1").unwrap(), Some(r1.clone()));
            assert_eq!(store.rollout("ro-9").unwrap(), None);
            let updated = RolloutRecord {
                phase: "paused".into(),
                state_json: r#"{"step":2}"#.into(),
                updated_unix_ms: 30,
                // Immutable fields are not the update's to change.
                candidate: "v9".into(),
                ..r1.clone()
            };
            store.update_rollout(&updated, None).unwrap();
            store
                .update_rollout(&updated, Some(rollout_draft("rollout.pause", "ro-1")))
                .unwrap();
        }
        // A restarted process finds the open rollouts and their state.
        let store = SqliteStore::open(&path).unwrap();
        let stored = store.rollout("ro-1").unwrap().unwrap();
        assert_eq!(
            stored,
            RolloutRecord {
                phase: "paused".into(),
                state_json: r#"{"step":2}"#.into(),
                updated_unix_ms: 30,
                ..r1
            }
        );
        assert_eq!(
            ids(store.rollouts(None, false, 10).unwrap()),
            ["ro-2", "ro-1", "ro-3"]
        );
        assert_eq!(
            ids(store.rollouts(None, true, 10).unwrap()),
            ["ro-2", "ro-1"]
        );
        assert_eq!(
            ids(store.rollouts(Some("fraud"), false, 10).unwrap()),
            ["ro-1", "ro-3"]
        );
        assert_eq!(
            ids(store.rollouts(Some("fraud"), true, 10).unwrap()),
            ["ro-1"]
        );
        assert_eq!(ids(store.rollouts(None, false, 1).unwrap()), ["ro-2"]);
        assert_eq!(store.rollouts(Some("none"), false, 10).unwrap(), vec![]);
        assert_eq!(store.rollouts(None, false, usize::MAX).unwrap().len(), 3);
        assert_eq!(
            actions(&store),
            [
                "rollout.create",
                "rollout.create",
                "rollout.create",
                "rollout.pause"
            ]
        );
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn a_second_open_rollout_of_a_model_is_refused_until_the_first_closes() {
        let (_dir, store) = open();
        let r1 = rollout("ro-1", "fraud", 10);
        store
            .create_rollout(&r1, rollout_draft("rollout.create", "ro-1"))
            .unwrap();
        let r2 = rollout("ro-2", "fraud", 20);
        let error = store
            .create_rollout(&r2, rollout_draft("rollout.create", "ro-2"))
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::Conflict(m) if m.contains("ro-1")),
            "{error}"
        );
        // A duplicate id is refused too, open or not.
        let duplicate = RolloutRecord {
            model: "churn".into(),
            open: false,
            ..r1.clone()
        };
        let error = store
            .create_rollout(&duplicate, rollout_draft("rollout.create", "ro-1"))
            .unwrap_err();
        assert!(matches!(error, StoreError::Conflict(_)), "{error}");
        // Nothing changed and nothing was audited.
        assert_eq!(store.rollout("ro-2").unwrap(), None);
        assert_eq!(store.rollout("ro-1").unwrap(), Some(r1.clone()));
        assert_eq!(actions(&store), ["rollout.create"]);

        let closed = RolloutRecord {
            phase: "rolled_back".into(),
            open: false,
            updated_unix_ms: 15,
            ..r1.clone()
        };
        store
            .update_rollout(&closed, Some(rollout_draft("rollout.rollback", "ro-1")))
            .unwrap();
        store
            .create_rollout(&r2, rollout_draft("rollout.create", "ro-2"))
            .unwrap();
        // Reopening the closed one would make two open: refused, unaudited.
        let error = store
            .update_rollout(&r1, Some(rollout_draft("rollout.resume", "ro-1")))
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::Conflict(m) if m.contains("ro-2")),
            "{error}"
        );
        assert_eq!(store.rollout("ro-1").unwrap(), Some(closed));
        // The index holds even against a write that skips the check.
        let raw = store
            .lock()
            .execute("UPDATE rollouts SET open = 1 WHERE id = 'ro-1'", []);
        assert!(raw.is_err());
        // An open rollout may be updated and stay open.
        store
            .update_rollout(
                &RolloutRecord {
                    state_json: r#"{"step":1}"#.into(),
                    ..r2.clone()
                },
                Some(rollout_draft("rollout.step", "ro-2")),
            )
            .unwrap();
        let all = store.audit(&AuditFilter::default()).unwrap();
        assert_eq!(
            actions(&store),
            [
                "rollout.create",
                "rollout.rollback",
                "rollout.create",
                "rollout.step"
            ]
        );
        assert_eq!(audit::verify(&all), Ok(4));
    }

    #[test]
    fn updating_an_unknown_rollout_is_not_found_and_unaudited() {
        let (_dir, store) = open();
        let error = store
            .update_rollout(
                &rollout("ro-9", "fraud", 1),
                Some(rollout_draft("rollout.step", "ro-9")),
            )
            .unwrap_err();
        assert!(matches!(error, StoreError::NotFound(_)), "{error}");
        assert_eq!(store.rollout("ro-9").unwrap(), None);
        assert!(actions(&store).is_empty());
    }

    #[test]
    fn a_store_from_before_rollouts_is_migrated() {
        let dir = at_schema(3, |conn| {
            conn.execute(
                "INSERT INTO audit (seq, at_ms, actor, action, target, reason, prev_hash, hash)
                 VALUES (1, 1, 'alice', 'login.failed', 'api', '', '', 'x')",
                [],
            )
            .unwrap();
        });
        let path = dir.path().join("backstop.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(schema_version(&store), MIGRATIONS.len());
            assert_eq!(store.rollouts(None, false, 10).unwrap(), vec![]);
            store
                .create_rollout(
                    &rollout("ro-1", "fraud", 1),
                    rollout_draft("rollout.create", "ro-1"),
                )
                .unwrap();
            // The older rows are still there, the new entry chained to them.
            let all = store.audit(&AuditFilter::default()).unwrap();
            assert_eq!(all.len(), 2);
            assert_eq!(all[1].prev_hash, "x");
        }
        // Opening again runs no migration twice.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(schema_version(&store), MIGRATIONS.len());
        assert_eq!(ids(store.rollouts(None, true, 10).unwrap()), ["ro-1"]);
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    fn incident(id: &str) -> IncidentRecord {
        IncidentRecord {
            id: id.into(),
            model: "fraud".into(),
            rollout: "ro-1".into(),
            severity: "critical".into(),
            state: "verifying".into(),
            opened_unix_ms: 5,
            updated_unix_ms: 5,
            evidence_json: r#"{"samples":[]}"#.into(),
            record_json: r#"{"timeline":[]}"#.into(),
        }
    }

    fn pin(version: &str) -> Retention {
        Retention {
            model: "fraud".into(),
            version: version.into(),
            reason: "incident:inc-1".into(),
            created_at_ms: 5,
            created_by: "controller".into(),
        }
    }

    #[test]
    fn an_incident_pins_registered_versions_and_its_evidence_is_frozen() {
        let (_dir, store) = open();
        store
            .register_version(&version("v2", "cc"), draft("fraud/v2"))
            .unwrap();
        let opened = incident("inc-1");
        // `ghost` is only in a routing table: nothing to pin, not an error.
        store
            .create_incident(&opened, &[pin("v2"), pin("ghost")], draft("fraud/inc-1"))
            .unwrap();
        assert_eq!(store.retentions("fraud", "v2").unwrap().len(), 1);
        assert!(matches!(
            store
                .delete_version("fraud", "v2", draft("fraud/v2"))
                .unwrap(),
            Deletion::Refused(_)
        ));
        let again = store.create_incident(&opened, &[], draft("fraud/inc-1"));
        assert!(matches!(again, Err(StoreError::Conflict(_))));

        let mut verified = opened.clone();
        verified.state = "recovered".into();
        verified.record_json = r#"{"timeline":[1]}"#.into();
        // Evidence passed to an update is ignored.
        verified.evidence_json = "{}".into();
        store.update_incident(&verified, None).unwrap();
        let stored = store.incident("inc-1").unwrap().unwrap();
        assert_eq!(stored.state, "recovered");
        assert_eq!(stored.evidence_json, opened.evidence_json);
        // Even a direct write cannot change it.
        let refused = store.lock().execute(
            "UPDATE incidents SET evidence_json = '{}' WHERE id = 'inc-1'",
            [],
        );
        assert!(refused.unwrap_err().to_string().contains("frozen"));
        assert_eq!(store.incidents(Some("fraud"), 10).unwrap().len(), 1);
        assert_eq!(store.incidents(Some("other"), 10).unwrap().len(), 0);
        let missing = store.update_incident(&incident("inc-9"), None);
        assert!(matches!(missing, Err(StoreError::NotFound(_))));
    }

    fn outbox(incident: &str, receiver: &str, next: u64) -> OutboxRecord {
        OutboxRecord {
            id: 0,
            incident: incident.into(),
            model: "fraud".into(),
            receiver: receiver.into(),
            format: "json".into(),
            url: Some("http://127.0.0.1:9/hook".into()),
            url_env: None,
            severity: "critical".into(),
            kind: "incident.opened".into(),
            group_key: format!("{incident}/{receiver}/incident.opened"),
            payload: serde_json::json!({"incident": incident, "title": "rolled back"}),
            state: OutboxState::Pending,
            attempts: 0,
            next_attempt_unix_ms: next,
            last_error: None,
            created_unix_ms: next,
            delivered_unix_ms: None,
        }
    }

    fn outbox_ids(rows: Vec<OutboxRecord>) -> Vec<u64> {
        rows.into_iter().map(|r| r.id).collect()
    }

    /// A receiver hears of an incident in order: a later row (the alert's
    /// end) waits while an earlier one is still being retried.
    #[test]
    fn a_later_notification_waits_for_the_earlier_one_to_the_same_receiver() {
        let (_dir, store) = open();
        store
            .enqueue_notification(&outbox("inc-1", "pager", 500))
            .unwrap();
        let mut recovered = outbox("inc-1", "pager", 10);
        recovered.kind = "incident.recovered".into();
        recovered.group_key = "inc-1/pager/incident.recovered".into();
        store.enqueue_notification(&recovered).unwrap();
        // Another receiver is not held up.
        store
            .enqueue_notification(&outbox("inc-1", "slack", 10))
            .unwrap();
        assert_eq!(outbox_ids(store.due_notifications(100, 10).unwrap()), [3]);
        assert_eq!(
            outbox_ids(store.due_notifications(500, 10).unwrap()),
            [3, 1]
        );
        store
            .record_attempt(1, &Attempt::Delivered { at_unix_ms: 501 })
            .unwrap();
        assert_eq!(
            outbox_ids(store.due_notifications(600, 10).unwrap()),
            [2, 3]
        );
    }

    #[test]
    fn the_outbox_queues_a_group_once_lists_due_rows_and_survives_reopening() {
        let (dir, store) = open();
        let first = outbox("inc-1", "pager", 100);
        assert_eq!(
            store.enqueue_notification(&first).unwrap(),
            Enqueued::Queued(1)
        );
        // The same group again, even with other content, changes nothing.
        let mut again = first.clone();
        again.payload = serde_json::json!({"other": true});
        again.next_attempt_unix_ms = 0;
        assert_eq!(
            store.enqueue_notification(&again).unwrap(),
            Enqueued::Grouped(1)
        );
        let mut second = outbox("inc-1", "slack", 50);
        second.url = None;
        second.url_env = Some("SLACK_URL".into());
        assert_eq!(
            store.enqueue_notification(&second).unwrap(),
            Enqueued::Queued(2)
        );
        assert_eq!(
            store
                .enqueue_notification(&outbox("inc-2", "pager", 10))
                .unwrap(),
            Enqueued::Queued(3)
        );

        // Due: the longest-waiting first, none before its time.
        assert_eq!(
            outbox_ids(store.due_notifications(100, 10).unwrap()),
            [3, 2, 1]
        );
        assert_eq!(outbox_ids(store.due_notifications(60, 10).unwrap()), [3, 2]);
        assert_eq!(outbox_ids(store.due_notifications(60, 1).unwrap()), [3]);
        assert!(store.due_notifications(9, 10).unwrap().is_empty());

        assert_eq!(
            outbox_ids(store.notifications(Some("inc-1"), 10).unwrap()),
            [2, 1]
        );
        assert_eq!(outbox_ids(store.notifications(None, 2).unwrap()), [3, 2]);
        assert!(store.notifications(Some("inc-9"), 10).unwrap().is_empty());
        // The outbox writes no audit entries (see the trait).
        assert!(actions(&store).is_empty());

        drop(store);
        let store = SqliteStore::open(&dir.path().join("backstop.db")).unwrap();
        let rows = store.notifications(Some("inc-1"), 10).unwrap();
        let stored = rows.iter().find(|r| r.id == 1).unwrap();
        assert_eq!(stored, &OutboxRecord { id: 1, ..first });
        let by_env = rows.iter().find(|r| r.id == 2).unwrap();
        assert_eq!(
            (by_env.url.as_deref(), by_env.url_env.as_deref()),
            (None, Some("SLACK_URL"))
        );
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn attempts_are_counted_until_delivered_or_given_up() {
        let (_dir, store) = open();
        store
            .enqueue_notification(&outbox("inc-1", "pager", 100))
            .unwrap();
        store
            .enqueue_notification(&outbox("inc-1", "slack", 100))
            .unwrap();

        let retried = store
            .record_attempt(
                1,
                &Attempt::Retry {
                    error: "HTTP 500".into(),
                    next_attempt_unix_ms: 500,
                },
            )
            .unwrap();
        assert_eq!(retried.state, OutboxState::Pending);
        assert_eq!(retried.attempts, 1);
        assert_eq!(retried.next_attempt_unix_ms, 500);
        assert_eq!(retried.last_error.as_deref(), Some("HTTP 500"));
        assert_eq!(outbox_ids(store.due_notifications(499, 10).unwrap()), [2]);

        let delivered = store
            .record_attempt(1, &Attempt::Delivered { at_unix_ms: 600 })
            .unwrap();
        assert_eq!(delivered.state, OutboxState::Delivered);
        assert_eq!(delivered.attempts, 2);
        assert_eq!(delivered.delivered_unix_ms, Some(600));
        // The error that cost a retry stays on record.
        assert_eq!(delivered.last_error.as_deref(), Some("HTTP 500"));

        let failed = store
            .record_attempt(
                2,
                &Attempt::GaveUp {
                    error: "timed out".into(),
                },
            )
            .unwrap();
        assert_eq!(failed.state, OutboxState::Failed);
        assert_eq!(failed.attempts, 1);
        assert_eq!(failed.last_error.as_deref(), Some("timed out"));
        assert!(store.due_notifications(u64::MAX, 10).unwrap().is_empty());

        // Finished rows take no more attempts; unknown ids are not found.
        assert!(matches!(
            store.record_attempt(1, &Attempt::Delivered { at_unix_ms: 700 }),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.record_attempt(9, &Attempt::Delivered { at_unix_ms: 700 }),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.notifications(None, 10).unwrap()[1].attempts, 2);
        assert!(actions(&store).is_empty());
    }

    #[test]
    fn an_unreadable_outbox_row_is_corrupt_not_a_panic() {
        let (_dir, store) = open();
        store
            .enqueue_notification(&outbox("inc-1", "pager", 1))
            .unwrap();
        store
            .lock()
            .execute("UPDATE outbox SET payload = '{not json'", [])
            .unwrap();
        assert!(matches!(
            store.due_notifications(10, 10),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_store_from_before_the_outbox_is_migrated() {
        let dir = at_schema(4, |_| {});
        let path = dir.path().join("backstop.db");
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(schema_version(&store), MIGRATIONS.len());
        assert_eq!(
            store
                .enqueue_notification(&outbox("inc-1", "pager", 1))
                .unwrap(),
            Enqueued::Queued(1)
        );
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.notifications(None, 10).unwrap().len(), 1);
    }

    /// Migration 7: versions registered before it have no profile (NULL);
    /// one given at registration is stored whole, read back, and part of
    /// the version's immutable content.
    #[test]
    fn a_store_from_before_profiles_is_migrated_and_stores_them() {
        let dir = at_schema(6, |conn| {
            conn.execute(
                "INSERT INTO versions (model, id, digest, signature, metadata, provenance,
                                       upstreams, registered_at_ms, registered_by, deprecated, seq)
                 VALUES ('fraud', 'old', 'sha256:old', '{}', '{}', '{}', '[]', 1, 'alice', 0, 1)",
                [],
            )
            .unwrap();
        });
        let store = SqliteStore::open(&dir.path().join("backstop.db")).unwrap();
        assert_eq!(schema_version(&store), MIGRATIONS.len());
        let old = store.version("fraud", "old").unwrap().unwrap();
        assert_eq!((old.profile_features(), old.profile), (None, None));
        let null: Option<String> = store
            .lock()
            .query_row("SELECT profile FROM versions WHERE id = 'old'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(null, None);

        let mut signals = backstop_core::analysis::Signals::default();
        for i in 0..100 {
            signals.sketch_number("amount", i as f64);
            signals.sketch_category("country", if i % 2 == 0 { "fr" } else { "de" });
        }
        let profile = backstop_core::analysis::Profile {
            features: signals.features,
        };
        let v2 = version("v2", "v2").with_profile(Some(profile.clone()));
        assert_eq!(
            v2.profile_features(),
            Some(vec!["amount".to_string(), "country".to_string()])
        );
        assert_eq!(
            store.register_version(&v2, draft("fraud/v2")).unwrap(),
            Registered::Created
        );
        let read = store.version("fraud", "v2").unwrap().unwrap();
        assert_eq!(read, v2);
        assert_eq!(read.profile.as_ref(), Some(&profile));
        let listed = store.versions("fraud").unwrap();
        assert_eq!(listed.last().unwrap().profile.as_ref(), Some(&profile));
        // The API's JSON names the features, never the bins.
        let shown = serde_json::to_string(&read).unwrap();
        assert!(
            shown.contains("\"profile_features\":[\"amount\",\"country\"]"),
            "{shown}"
        );
        assert!(!shown.contains("bins"), "{shown}");
        // The same registration again is idempotent; another profile is
        // another version, refused.
        assert_eq!(
            store.register_version(&v2, draft("fraud/v2")).unwrap(),
            Registered::AlreadyExists
        );
        let other = version("v2", "v2").with_profile(None);
        assert!(matches!(
            store.register_version(&other, draft("fraud/v2")),
            Err(StoreError::Conflict(_))
        ));
    }
}
