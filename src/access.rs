//! Access control for the admin API: roles, what each endpoint requires,
//! and bearer tokens.
//!
//! A token is `bst_` followed by 64 hex digits (32 bytes from the OS's
//! random source). Only its SHA-256 is stored; the secret is shown once,
//! when it is created. A token carries one [`Role`]; [`required`] says, in
//! one table, which role each admin endpoint needs.

use crate::store::{AuditDraft, Store, StoreError, TokenRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do.
///
/// Viewer < deployer < approver < admin: each may do everything the ones
/// before it may. Breakglass stands apart: it may do what a deployer may
/// (for emergency rollbacks), and every request made with it is audited.
/// Reporter stands apart too: an application's token that may only post
/// feedback (deployers and above may as well), and read nothing.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything: routes, statistics, versions, audit log, metrics.
    Viewer,
    /// Registers versions and bundles, uploads artifacts, replaces routing
    /// tables, deprecates and pins versions.
    Deployer,
    /// Approves paused rollout steps and promotes bundles to last-known-good.
    Approver,
    /// Manages tokens; may do everything else too.
    Admin,
    /// Emergency access with a deployer's powers, always audited.
    Breakglass,
    /// Posts feedback (business outcomes) and nothing else: what an
    /// application's token needs.
    Reporter,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Viewer,
        Role::Deployer,
        Role::Approver,
        Role::Admin,
        Role::Breakglass,
        Role::Reporter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Breakglass => "breakglass",
            Role::Reporter => "reporter",
        }
    }

    /// Whether a token with this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            // Nothing requires breakglass as such; asking is a mistake
            // that must fail closed.
            (_, Role::Breakglass) => false,
            // A reporter reports, and those who run rollouts may too.
            (Role::Reporter, needed) => needed == Role::Reporter,
            (role, Role::Reporter) => role.rank() >= Role::Deployer.rank(),
            (Role::Breakglass, needed) => needed.rank() <= Role::Deployer.rank(),
            (role, needed) => role.rank() >= needed.rank(),
        }
    }

    /// Place in the viewer < deployer < approver < admin order; breakglass
    /// is ranked as a deployer, a reporter below a viewer (it reads
    /// nothing).
    fn rank(self) -> u8 {
        match self {
            Role::Viewer | Role::Reporter => 0,
            Role::Deployer | Role::Breakglass => 1,
            Role::Approver => 2,
            Role::Admin => 3,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                format!("unknown role {text:?}: expected viewer, deployer, approver, admin, breakglass or reporter")
            })
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone: liveness probes, Prometheus scrapes and readers of the
    /// OpenAPI document carry no token.
    Open,
    /// A token whose role [`Role::allows`] this one.
    Role(Role),
}

/// A method class in [`RULES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum On {
    /// GET and HEAD.
    Read,
    Put,
    Post,
    Delete,
    Any,
}

/// Who may call what, first match wins. In paths, `*` is one segment and
/// `**` the rest of the path (possibly nothing). Whatever no rule names
/// needs an admin, so an endpoint added without a rule is closed rather
/// than open.
const RULES: &[(On, &str, Need)] = &[
    (On::Read, "/healthz", Need::Open),
    (On::Read, "/metrics", Need::Open),
    // What the code says, not what the gateway holds.
    (On::Read, "/api/v1/openapi.json", Need::Open),
    (On::Any, "/api/v1/tokens/**", Need::Role(Role::Admin)),
    // Applications report outcomes with a reporter's token.
    (On::Post, "/api/v1/feedback", Need::Role(Role::Reporter)),
    // Samples carry payloads (redacted, still): those who run rollouts.
    (
        On::Read,
        "/api/v1/models/*/samples",
        Need::Role(Role::Deployer),
    ),
    // An incident holds samples too; its list and the report do not.
    (On::Read, "/api/v1/incidents/*", Need::Role(Role::Deployer)),
    (
        On::Read,
        "/api/v1/incidents/*/**",
        Need::Role(Role::Deployer),
    ),
    (On::Read, "/**", Need::Role(Role::Viewer)),
    // Re-hashing artifacts changes nothing but the audit log.
    (
        On::Post,
        "/api/v1/artifacts/verify",
        Need::Role(Role::Viewer),
    ),
    (On::Put, "/api/v1/artifacts", Need::Role(Role::Deployer)),
    (
        On::Post,
        "/api/v1/models/*/versions",
        Need::Role(Role::Deployer),
    ),
    (
        On::Put,
        "/api/v1/models/*/routes",
        Need::Role(Role::Deployer),
    ),
    (
        On::Post,
        "/api/v1/models/*/bundles",
        Need::Role(Role::Deployer),
    ),
    (
        On::Post,
        "/api/v1/models/*/versions/*/deprecate",
        Need::Role(Role::Deployer),
    ),
    // Pins are set and lifted by rollouts and incidents, which deployers
    // run.
    (
        On::Post,
        "/api/v1/models/*/versions/*/retain",
        Need::Role(Role::Deployer),
    ),
    (
        On::Delete,
        "/api/v1/models/*/versions/*/retain",
        Need::Role(Role::Deployer),
    ),
    // What a rollback returns to is the approver's call.
    (
        On::Post,
        "/api/v1/models/*/promote",
        Need::Role(Role::Approver),
    ),
    // Gameday faults go only into rehearsal versions, and a rehearsal
    // is run by those who run rollouts.
    (
        On::Put,
        "/api/v1/models/*/versions/*/fault",
        Need::Role(Role::Deployer),
    ),
    (
        On::Delete,
        "/api/v1/models/*/versions/*/fault",
        Need::Role(Role::Deployer),
    ),
    // Rollouts: deployers start and steer them, and may always send
    // traffic back (breakglass too); widening past a gate or promoting
    // now is the approver's call.
    (On::Post, "/api/v1/rollouts", Need::Role(Role::Deployer)),
    (
        On::Post,
        "/api/v1/rollouts/*/pause",
        Need::Role(Role::Deployer),
    ),
    (
        On::Post,
        "/api/v1/rollouts/*/resume",
        Need::Role(Role::Deployer),
    ),
    (
        On::Post,
        "/api/v1/rollouts/*/abort",
        Need::Role(Role::Deployer),
    ),
    (
        On::Post,
        "/api/v1/rollouts/*/rollback",
        Need::Role(Role::Deployer),
    ),
    (
        On::Post,
        "/api/v1/rollouts/*/approve",
        Need::Role(Role::Approver),
    ),
    (
        On::Post,
        "/api/v1/rollouts/*/promote",
        Need::Role(Role::Approver),
    ),
    // Deleting versions and collecting artifacts destroy data: admin only
    // (also the default; named here so the table says so).
    (
        On::Delete,
        "/api/v1/models/*/versions/*",
        Need::Role(Role::Admin),
    ),
    (On::Post, "/api/v1/gc", Need::Role(Role::Admin)),
];

/// What a request with this method and path needs.
pub fn required(method: &http::Method, path: &str) -> Need {
    RULES
        .iter()
        .find(|(on, pattern, _)| method_matches(*on, method) && path_matches(pattern, path))
        .map_or(Need::Role(Role::Admin), |(_, _, need)| *need)
}

fn method_matches(on: On, method: &http::Method) -> bool {
    match on {
        On::Read => method == http::Method::GET || method == http::Method::HEAD,
        On::Put => method == http::Method::PUT,
        On::Post => method == http::Method::POST,
        On::Delete => method == http::Method::DELETE,
        On::Any => true,
    }
}

/// Segment-wise match; `*` matches one non-empty segment, `**` the rest.
/// Bounded by the pattern's few segments.
fn path_matches(pattern: &str, path: &str) -> bool {
    let mut path_segments = path.split('/');
    for expected in pattern.split('/') {
        if expected == "**" {
            return true;
        }
        match path_segments.next() {
            Some(segment) if expected == "*" && !segment.is_empty() => {}
            Some(segment) if segment == expected => {}
            _ => return false,
        }
    }
    path_segments.next().is_none()
}

/// Prefix of every token secret.
pub const TOKEN_PREFIX: &str = "bst_";

/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;

/// Random bytes in a token's public id.
const ID_BYTES: usize = 6;

/// A token as created: its record and the secret, which exists only here.
pub struct NewToken {
    pub record: TokenRecord,
    pub secret: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no OS randomness: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// SHA-256 hex of a secret: what the store keeps and looks tokens up by.
///
/// The lookup by hash is not constant-time, and need not be: the secret has
/// 256 random bits, so timing that leaks how much of a stored hash a guess
/// matched gives nothing towards a secret that hashes to it.
pub fn secret_hash(secret: &str) -> String {
    crate::store::audit::hex(&Sha256::digest(secret.as_bytes()))
}

/// Whether `text` looks like a secret this module made (cheap; decides
/// nothing on its own, the store lookup does).
pub fn looks_like_secret(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == 2 * SECRET_BYTES
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn random_hex(bytes: usize) -> Result<String, TokenError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(crate::store::audit::hex(&buffer))
}

/// Token names are what audit entries call their holders: 1-64 characters
/// of `[A-Za-z0-9._@-]`, so they read unambiguously in logs.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(fine) {
        return Err(format!(
            "token names are 1-64 characters of [A-Za-z0-9._@-], got {name:?}"
        ));
    }
    Ok(())
}

/// The actor audit entries name for a token's holder.
pub fn actor_of(token: &TokenRecord) -> String {
    format!("{} ({})", token.name, token.role)
}

/// Creates a token and its audit entry (`token.create`) in one transaction.
pub fn create_token(
    store: &dyn Store,
    name: &str,
    role: Role,
    actor: &str,
    reason: &str,
    now_ms: u64,
) -> Result<NewToken, TokenError> {
    check_token_name(name).map_err(|message| TokenError::Invalid {
        field: "name",
        message,
    })?;
    let secret = format!("{TOKEN_PREFIX}{}", random_hex(SECRET_BYTES)?);
    let record = TokenRecord {
        id: random_hex(ID_BYTES)?,
        hash: secret_hash(&secret),
        name: name.to_string(),
        role,
        created_at_ms: now_ms,
        created_by: actor.to_string(),
        revoked: false,
    };
    let draft = AuditDraft {
        actor: actor.to_string(),
        action: "token.create".into(),
        target: token_target(&record.id),
        reason: reason.to_string(),
        before: None,
        after: Some(serde_json::json!({ "name": record.name, "role": record.role })),
    };
    store.create_token(&record, draft)?;
    Ok(NewToken { record, secret })
}

/// Revokes a token (audited as `token.revoke` when it was still active).
pub fn revoke_token(
    store: &dyn Store,
    id: &str,
    actor: &str,
    reason: &str,
) -> Result<TokenRecord, StoreError> {
    let draft = AuditDraft {
        actor: actor.to_string(),
        action: "token.revoke".into(),
        target: token_target(id),
        reason: reason.to_string(),
        before: Some(serde_json::json!({ "revoked": false })),
        after: Some(serde_json::json!({ "revoked": true })),
    };
    store.revoke_token(id, draft)
}

/// Audit target of a token.
pub fn token_target(id: &str) -> String {
    format!("token:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn needs(method: Method, path: &str) -> Need {
        required(&method, path)
    }

    #[test]
    fn every_endpoint_needs_what_the_table_says() {
        use Need::{Open, Role as R};
        let cases = [
            (Method::GET, "/healthz", Open),
            (Method::HEAD, "/healthz", Open),
            (Method::GET, "/metrics", Open),
            (Method::GET, "/api/v1/openapi.json", Open),
            (Method::HEAD, "/api/v1/openapi.json", Open),
            (Method::PUT, "/api/v1/openapi.json", R(Role::Admin)),
            (Method::POST, "/healthz", R(Role::Admin)),
            (Method::GET, "/api/v1/models", R(Role::Viewer)),
            (Method::GET, "/api/v1/models/m/routes", R(Role::Viewer)),
            (Method::GET, "/api/v1/models/m/stats", R(Role::Viewer)),
            (Method::GET, "/api/v1/models/m/feedback", R(Role::Viewer)),
            (Method::POST, "/api/v1/feedback", R(Role::Reporter)),
            (Method::PUT, "/api/v1/feedback", R(Role::Admin)),
            (Method::GET, "/api/v1/models/m/samples", R(Role::Deployer)),
            (Method::GET, "/api/v1/incidents", R(Role::Viewer)),
            (Method::GET, "/api/v1/incidents/inc-1", R(Role::Deployer)),
            (
                Method::GET,
                "/api/v1/incidents/inc-1/export",
                R(Role::Deployer),
            ),
            (Method::GET, "/api/v1/report", R(Role::Viewer)),
            (Method::GET, "/api/v1/annotations", R(Role::Viewer)),
            (Method::GET, "/api/v1/models/m/versions", R(Role::Viewer)),
            (Method::GET, "/api/v1/models/m/versions/v1", R(Role::Viewer)),
            (Method::GET, "/api/v1/events", R(Role::Viewer)),
            (Method::GET, "/api/v1/audit", R(Role::Viewer)),
            (Method::GET, "/api/v1/audit/verify", R(Role::Viewer)),
            (Method::GET, "/nope", R(Role::Viewer)),
            (Method::POST, "/api/v1/artifacts/verify", R(Role::Viewer)),
            (Method::PUT, "/api/v1/artifacts", R(Role::Deployer)),
            (Method::POST, "/api/v1/models/m/versions", R(Role::Deployer)),
            (Method::PUT, "/api/v1/models/m/routes", R(Role::Deployer)),
            (Method::POST, "/api/v1/models/m/bundles", R(Role::Deployer)),
            (Method::GET, "/api/v1/models/m/bundles", R(Role::Viewer)),
            (Method::GET, "/api/v1/models/m/bundles/b1", R(Role::Viewer)),
            (
                Method::POST,
                "/api/v1/models/m/versions/v1/deprecate",
                R(Role::Deployer),
            ),
            (
                Method::POST,
                "/api/v1/models/m/versions/v1/retain",
                R(Role::Deployer),
            ),
            (
                Method::DELETE,
                "/api/v1/models/m/versions/v1/retain",
                R(Role::Deployer),
            ),
            (
                Method::GET,
                "/api/v1/models/m/versions/v1/retain",
                R(Role::Viewer),
            ),
            (Method::POST, "/api/v1/models/m/promote", R(Role::Approver)),
            (Method::GET, "/api/v1/models/m/lkg", R(Role::Viewer)),
            (
                Method::DELETE,
                "/api/v1/models/m/versions/v1",
                R(Role::Admin),
            ),
            (Method::POST, "/api/v1/gc", R(Role::Admin)),
            (Method::GET, "/api/v1/tokens", R(Role::Admin)),
            (Method::POST, "/api/v1/tokens", R(Role::Admin)),
            (Method::DELETE, "/api/v1/tokens/abc", R(Role::Admin)),
            (Method::GET, "/api/v1/rollouts", R(Role::Viewer)),
            (Method::GET, "/api/v1/rollouts/ro-1", R(Role::Viewer)),
            (Method::POST, "/api/v1/rollouts", R(Role::Deployer)),
            (
                Method::POST,
                "/api/v1/rollouts/ro-1/pause",
                R(Role::Deployer),
            ),
            (Method::POST, "/api/v1/rollouts/m/resume", R(Role::Deployer)),
            (
                Method::POST,
                "/api/v1/rollouts/ro-1/abort",
                R(Role::Deployer),
            ),
            (
                Method::POST,
                "/api/v1/rollouts/ro-1/rollback",
                R(Role::Deployer),
            ),
            (
                Method::POST,
                "/api/v1/rollouts/ro-1/approve",
                R(Role::Approver),
            ),
            (
                Method::POST,
                "/api/v1/rollouts/ro-1/promote",
                R(Role::Approver),
            ),
            // Not in the table: closed to all but admins.
            (Method::DELETE, "/api/v1/models/m", R(Role::Admin)),
            (
                Method::POST,
                "/api/v1/models/m/versions/v1/other",
                R(Role::Admin),
            ),
            (Method::PUT, "/api/v1/models/m/promote", R(Role::Admin)),
            (Method::POST, "/api/v1/models//versions", R(Role::Admin)),
            (Method::PUT, "/api/v1/models/m/routes/x", R(Role::Admin)),
            (Method::PUT, "/api/v1/artifacts/", R(Role::Admin)),
            (Method::PATCH, "/api/v1/models/m/routes", R(Role::Admin)),
            (
                Method::POST,
                "/api/v1/rollouts/ro-1/explode",
                R(Role::Admin),
            ),
            (Method::POST, "/api/v1/rollouts//pause", R(Role::Admin)),
            (Method::DELETE, "/api/v1/rollouts/ro-1", R(Role::Admin)),
            (Method::PUT, "/api/v1/rollouts", R(Role::Admin)),
        ];
        for (method, path, need) in cases {
            assert_eq!(needs(method.clone(), path), need, "{method} {path}");
        }
    }

    #[test]
    fn deployers_steer_rollouts_and_approvers_widen_them() {
        let may = |role: Role, command: &str| {
            let path = format!("/api/v1/rollouts/ro-1/{command}");
            match needs(Method::POST, &path) {
                Need::Role(needed) => role.allows(needed),
                Need::Open => panic!("{path} is open"),
            }
        };
        for command in ["pause", "resume", "abort", "rollback"] {
            for role in [
                Role::Deployer,
                Role::Breakglass,
                Role::Approver,
                Role::Admin,
            ] {
                assert!(may(role, command), "{role} {command}");
            }
            assert!(!may(Role::Viewer, command), "viewer {command}");
        }
        for command in ["approve", "promote"] {
            for role in [Role::Viewer, Role::Deployer, Role::Breakglass] {
                assert!(!may(role, command), "{role} {command}");
            }
            assert!(may(Role::Approver, command) && may(Role::Admin, command));
        }
    }

    #[test]
    fn roles_are_ordered_and_breakglass_acts_as_a_deployer() {
        use Role::*;
        let allowed = |role: Role| -> Vec<Role> {
            Role::ALL.into_iter().filter(|n| role.allows(*n)).collect()
        };
        assert_eq!(allowed(Viewer), [Viewer]);
        assert_eq!(allowed(Deployer), [Viewer, Deployer, Reporter]);
        assert_eq!(allowed(Approver), [Viewer, Deployer, Approver, Reporter]);
        assert_eq!(
            allowed(Admin),
            [Viewer, Deployer, Approver, Admin, Reporter]
        );
        assert_eq!(allowed(Breakglass), [Viewer, Deployer, Reporter]);
        assert_eq!(allowed(Reporter), [Reporter]);
    }

    #[test]
    fn roles_parse_and_print_in_lowercase() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::json!(role.as_str())
            );
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn secrets_are_random_and_only_their_hash_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("b.db")).unwrap();
        let a = create_token(&store, "alice", Role::Deployer, "t", "", 1).unwrap();
        let b = create_token(&store, "bob", Role::Viewer, "t", "", 1).unwrap();
        assert!(looks_like_secret(&a.secret), "{}", a.secret);
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.record.id, b.record.id);
        assert_eq!(a.record.id.len(), 2 * ID_BYTES);
        assert_eq!(a.record.hash, secret_hash(&a.secret));
        assert!(!a.record.hash.contains(&a.secret));
        let listed = serde_json::to_string(&store.tokens().unwrap()).unwrap();
        assert!(!listed.contains(&a.record.hash), "{listed}");
        assert!(!looks_like_secret("bst_xyz"));
        assert!(!looks_like_secret(&a.secret.to_uppercase()));
        let entries = store.audit(&crate::store::AuditFilter::default()).unwrap();
        let text = serde_json::to_string(&entries).unwrap();
        assert!(!text.contains(&a.secret) && !text.contains(&a.record.hash));
    }

    #[test]
    fn token_names_are_checked() {
        for good in ["alice", "ci-deploy", "ops@example.com", "a.b_c"] {
            assert!(check_token_name(good).is_ok(), "{good}");
        }
        for bad in ["", "alice smith", "x\n(admin)", &"a".repeat(65), "é"] {
            assert!(check_token_name(bad).is_err(), "{bad:?}");
        }
    }
}
