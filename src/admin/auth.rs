//! Who may call the admin API: the bearer-token middleware.
//!
//! Three modes, decided per request from the store:
//!
//! - tokens exist: every request but the open paths needs
//!   `Authorization: Bearer <token>` whose role allows the endpoint
//!   ([`crate::access::required`]); otherwise 401 `unauthenticated` or 403
//!   `forbidden`, each with an audit entry;
//! - no tokens, admin listener on loopback: open, every caller acts as
//!   `local-operator` (the embedded default; said once in the startup log);
//! - no tokens, admin listener elsewhere: everything but the open paths
//!   is refused with 401 (also said at startup).
//!
//! The open paths, `/healthz`, `/metrics` and `/api/v1/openapi.json`, need
//! no token: probes and Prometheus scrapes carry none, and none of them
//! tells anything beyond what the data plane serves or the code says.

use super::{AdminState, ApiError};
use crate::access::{self, Need, Role};
use crate::store::{AuditDraft, Store, TokenRecord};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Who made a request, as audit entries name them: `alice (deployer)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

/// The actor of every request in open loopback mode.
pub const LOCAL_OPERATOR: &str = "local-operator";

/// The actor of requests without a usable token.
const ANONYMOUS: &str = "anonymous";

/// Audit targets carry at most this much of a request path, so a caller
/// cannot make audit entries arbitrarily large.
const TARGET_PATH_MAX_BYTES: usize = 256;

/// How the admin API decides who may do what.
pub struct AccessPolicy {
    /// Where tokens live; `None` when the gateway has no data directory
    /// (then no token can exist).
    store: Option<Arc<dyn Store>>,
    /// Whether the admin listener is on a loopback address.
    loopback: bool,
    /// Tokens are never deleted, so once one exists it always will: this
    /// saves the store a query per request after that.
    tokens_seen: AtomicBool,
}

/// The mode a request is judged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Tokens,
    OpenLoopback,
    ClosedNoTokens,
}

impl AccessPolicy {
    pub fn new(store: Option<Arc<dyn Store>>, loopback: bool) -> Arc<AccessPolicy> {
        Arc::new(AccessPolicy {
            store,
            loopback,
            tokens_seen: AtomicBool::new(false),
        })
    }

    /// The store tokens live in, if any.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// States the access mode once, at startup.
    pub fn log_startup(&self, admin_addr: SocketAddr) {
        let tokens = match &self.store {
            Some(store) => store.has_tokens(),
            None => Ok(false),
        };
        match tokens {
            Ok(true) => {
                self.tokens_seen.store(true, Ordering::Relaxed);
                tracing::info!(
                    %admin_addr,
                    "The admin API requires bearer tokens (/healthz, /metrics and \
                     /api/v1/openapi.json stay open)."
                );
            }
            Ok(false) if self.loopback => tracing::warn!(
                %admin_addr,
                "The admin API is open on loopback because no access tokens exist: every local \
                 caller acts as {LOCAL_OPERATOR}. Create one with \
                 `backstop token create --role admin --name NAME` to require tokens."
            ),
            Ok(false) => tracing::warn!(
                %admin_addr,
                "The admin API refuses every request except /healthz, /metrics and \
                 /api/v1/openapi.json with 401: it \
                 is not on loopback and no access tokens exist. Create one with \
                 `backstop token create --role admin --name NAME --data-dir DIR`."
            ),
            Err(error) => tracing::error!(
                %admin_addr,
                %error,
                "Cannot tell whether access tokens exist; admin requests are refused until the \
                 store answers."
            ),
        }
    }

    async fn mode(&self) -> Result<Mode, ApiError> {
        if self.tokens_seen.load(Ordering::Relaxed) {
            return Ok(Mode::Tokens);
        }
        let tokens = match &self.store {
            Some(store) => {
                let store = store.clone();
                blocking(move || store.has_tokens()).await?
            }
            None => false,
        };
        if tokens {
            if !self.tokens_seen.swap(true, Ordering::Relaxed) {
                tracing::info!("Access tokens exist now: the admin API requires bearer tokens.");
            }
            Ok(Mode::Tokens)
        } else if self.loopback {
            Ok(Mode::OpenLoopback)
        } else {
            Ok(Mode::ClosedNoTokens)
        }
    }

    async fn token(&self, secret: String) -> Result<Option<TokenRecord>, ApiError> {
        let Some(store) = self.store.clone() else {
            return Ok(None);
        };
        // Not a secret we could have made: no need to ask the store.
        if !access::looks_like_secret(&secret) {
            return Ok(None);
        }
        blocking(move || store.token_by_hash(&access::secret_hash(&secret))).await
    }

    /// Appends an audit entry; `Ok(false)` when there is no store.
    async fn audit(&self, draft: AuditDraft) -> Result<bool, ApiError> {
        let Some(store) = self.store.clone() else {
            return Ok(false);
        };
        blocking(move || store.append_audit(draft)).await?;
        Ok(true)
    }

    /// Audits a refusal. The refusal stands whether or not the entry could
    /// be written, so a failure is only logged.
    async fn audit_refusal(&self, draft: AuditDraft) {
        let action = draft.action.clone();
        if let Err(error) = self.audit(draft).await {
            tracing::error!(action, error = %error.message, "Cannot audit a refused admin request.");
        }
    }
}

/// Runs blocking work (store calls) on the blocking pool.
pub(super) async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("store task failed: {e}"),
        )
    })
}

/// Runs a store call on the blocking pool; any store error is a 503.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::store::StoreResult<T> + Send + 'static,
) -> Result<T, ApiError> {
    on_blocking_pool(work).await?.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    })
}

/// A request to check, by method and path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CheckQuery {
    /// e.g. `PUT`
    method: String,
    /// e.g. `/api/v1/artifacts`
    path: String,
}

/// The caller may make that request.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AccessCheck {
    pub allowed: bool,
    pub actor: String,
    pub method: String,
    pub path: String,
}

/// Whether the caller may make a request, without making it. Clients ask
/// before a long upload: a refusal that arrives mid-upload reaches them as
/// a broken pipe, not as the 401/403 it is.
#[utoipa::path(
    get,
    path = "/api/v1/access/check",
    tag = "access",
    params(CheckQuery),
    description = "Role: viewer. Answers 200 when the caller may make the request, or the 401/403 that request would get (audited like the request itself).",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Allowed", body = AccessCheck),
        (status = 400, description = "`invalid_query`", body = super::ErrorBody),
        (status = 401, description = "`unauthenticated`", body = super::ErrorBody),
        (status = 403, description = "`forbidden`", body = super::ErrorBody),
        (status = 503, description = "`store_unavailable`", body = super::ErrorBody),
    )
)]
pub async fn check(
    State(state): State<AdminState>,
    query: Result<axum::extract::Query<CheckQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<axum::Json<AccessCheck>, ApiError> {
    let axum::extract::Query(query) = query?;
    let method = Method::from_bytes(query.method.as_bytes()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("method: {:?} is not an HTTP method", query.method),
        )
    })?;
    if !query.path.starts_with('/') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "path: must start with '/'",
        ));
    }
    let Actor(actor) = authorize(&state.access, &method, &query.path, &headers).await?;
    Ok(axum::Json(AccessCheck {
        allowed: true,
        actor,
        method: method.to_string(),
        path: query.path,
    }))
}

/// The middleware: decides, audits refusals, and hands the handler its
/// [`Actor`].
pub async fn guard(State(state): State<AdminState>, mut request: Request, next: Next) -> Response {
    let decision = authorize(
        &state.access,
        request.method(),
        request.uri().path(),
        request.headers(),
    )
    .await;
    match decision {
        Ok(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(error) => {
            let unauthenticated = error.status == StatusCode::UNAUTHORIZED;
            let mut response = error.into_response();
            if unauthenticated {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

async fn authorize(
    access: &AccessPolicy,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Actor, ApiError> {
    let Need::Role(needed) = access::required(method, path) else {
        return Ok(Actor(ANONYMOUS.into()));
    };
    let target = target(method, path);
    match access.mode().await? {
        Mode::Tokens => {}
        Mode::OpenLoopback => return Ok(Actor(LOCAL_OPERATOR.into())),
        Mode::ClosedNoTokens => {
            let why = "no access tokens exist and the admin API is not on loopback";
            return Err(refuse_unauthenticated(access, ANONYMOUS, target, why).await);
        }
    }
    let secret = match bearer(headers) {
        Ok(secret) => secret,
        Err(why) => return Err(refuse_unauthenticated(access, ANONYMOUS, target, why).await),
    };
    let token = match access.token(secret).await? {
        Some(token) if !token.revoked => token,
        Some(token) => {
            let actor = access::actor_of(&token);
            return Err(refuse_unauthenticated(access, &actor, target, "revoked token").await);
        }
        None => {
            return Err(refuse_unauthenticated(access, ANONYMOUS, target, "unknown token").await)
        }
    };
    let actor = access::actor_of(&token);
    if !token.role.allows(needed) {
        let why = format!("requires the {needed} role; this token has {}", token.role);
        access
            .audit_refusal(draft(&actor, "access.denied", target, &why))
            .await;
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", why));
    }
    if token.role == Role::Breakglass {
        // Breakglass use is always audited; when that cannot be written
        // the request does not go ahead.
        access
            .audit(draft(&actor, "breakglass.use", target, ""))
            .await?;
    }
    Ok(Actor(actor))
}

/// The token in `Authorization: Bearer <token>` (scheme case-insensitive,
/// RFC 9110), or why there is none. The token itself never goes into an
/// error, a log line or an audit entry.
fn bearer(headers: &HeaderMap) -> Result<String, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or("missing Authorization header")?;
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let text = value
        .to_str()
        .map_err(|_| "Authorization header is not text")?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or("Authorization header is not `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("Authorization header is not `Bearer <token>`");
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("empty bearer token");
    }
    Ok(token.to_string())
}

/// Audits a failed login and builds its 401.
async fn refuse_unauthenticated(
    access: &AccessPolicy,
    actor: &str,
    target: String,
    why: &str,
) -> ApiError {
    access
        .audit_refusal(draft(actor, "login.failed", target, why))
        .await;
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        format!("{why}: send `Authorization: Bearer <token>` with a valid token"),
    )
}

fn draft(actor: &str, action: &str, target: String, reason: &str) -> AuditDraft {
    AuditDraft {
        actor: actor.to_string(),
        action: action.to_string(),
        target,
        reason: reason.to_string(),
        before: None,
        after: None,
    }
}

/// `METHOD /path` for audit entries, the path cut at a character boundary.
fn target(method: &Method, path: &str) -> String {
    let mut end = path.len().min(TARGET_PATH_MAX_BYTES);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{method} {}", &path[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::Gateway;
    use crate::registry::Registry;
    use crate::store::{AuditEntry, AuditFilter};
    use axum::body::Body;
    use axum::Router;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    /// An admin API over a fresh data directory, driven with `oneshot`.
    struct Fixture {
        _dir: tempfile::TempDir,
        app: Router,
        store: Arc<dyn Store>,
    }

    impl Fixture {
        fn new(loopback: bool) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let config = crate::config::Config::parse(
                std::path::Path::new("t.yaml"),
                r#"
models:
  m:
    versions:
      - { name: v1, weight: 1, endpoints: ["http://127.0.0.1:9"] }
"#,
            )
            .unwrap();
            let registry = Arc::new(Registry::open(dir.path(), 1024).unwrap());
            let store = registry.store();
            let access = AccessPolicy::new(Some(store.clone()), loopback);
            let app =
                super::super::router(Gateway::new(config).unwrap(), Some(registry), None, access);
            Fixture {
                _dir: dir,
                app,
                store,
            }
        }

        /// Makes a token the way `backstop token create` does.
        fn token(&self, name: &str, role: Role) -> String {
            access::create_token(self.store.as_ref(), name, role, "test", "", 1)
                .unwrap()
                .secret
        }

        async fn call(
            &self,
            method: &str,
            uri: &str,
            token: Option<&str>,
            body: Option<Value>,
        ) -> (StatusCode, Value, HeaderMap) {
            let mut request = axum::http::Request::builder().method(method).uri(uri);
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let body = match body {
                Some(value) => {
                    request = request.header(header::CONTENT_TYPE, "application/json");
                    Body::from(value.to_string())
                }
                None => Body::empty(),
            };
            let response = self
                .app
                .clone()
                .oneshot(request.body(body).unwrap())
                .await
                .unwrap();
            let (status, headers) = (response.status(), response.headers().clone());
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (status, value, headers)
        }

        async fn status(&self, method: &str, uri: &str, token: Option<&str>) -> StatusCode {
            self.call(method, uri, token, None).await.0
        }

        fn audit(&self) -> Vec<AuditEntry> {
            self.store.audit(&AuditFilter::default()).unwrap()
        }

        fn last_audit(&self) -> AuditEntry {
            self.audit().pop().expect("an audit entry")
        }
    }

    fn register_body(digest: &str) -> Value {
        json!({"id": "v2", "digest": digest, "signature": {"inputs": []}})
    }

    fn routes_body() -> Value {
        json!({"versions": [{"name": "v1", "weight": 1, "endpoints": ["http://127.0.0.1:9"]}]})
    }

    #[tokio::test]
    async fn a_viewer_reads_but_cannot_change_and_a_deployer_can() {
        let fixture = Fixture::new(true);
        let viewer = fixture.token("bob", Role::Viewer);
        let deployer = fixture.token("alice", Role::Deployer);
        for uri in [
            "/api/v1/models",
            "/api/v1/models/m/routes",
            "/api/v1/models/m/stats",
            "/api/v1/events",
            "/api/v1/models/m/versions",
            "/api/v1/audit",
            "/api/v1/audit/verify",
        ] {
            assert_eq!(
                fixture.status("GET", uri, Some(&viewer)).await,
                StatusCode::OK,
                "{uri}"
            );
        }
        assert_eq!(
            fixture
                .status("POST", "/api/v1/artifacts/verify", Some(&viewer))
                .await,
            StatusCode::OK
        );

        let (status, error, _) = fixture
            .call("PUT", "/api/v1/artifacts", Some(&viewer), None)
            .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
        let denied = fixture.last_audit();
        assert_eq!(
            (
                denied.draft.actor.as_str(),
                denied.draft.action.as_str(),
                denied.draft.target.as_str()
            ),
            ("bob (viewer)", "access.denied", "PUT /api/v1/artifacts")
        );
        assert!(
            denied.draft.reason.contains("deployer"),
            "{}",
            denied.draft.reason
        );
        for (method, uri, body) in [
            (
                "POST",
                "/api/v1/models/m/versions",
                register_body("sha256:00"),
            ),
            ("PUT", "/api/v1/models/m/routes", routes_body()),
        ] {
            let (status, _, _) = fixture.call(method, uri, Some(&viewer), Some(body)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}");
        }

        let (status, stored, _) = fixture
            .call("PUT", "/api/v1/artifacts", Some(&deployer), None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{stored}");
        let digest = stored["digest"].as_str().unwrap();
        let (status, version, _) = fixture
            .call(
                "POST",
                "/api/v1/models/m/versions",
                Some(&deployer),
                Some(register_body(digest)),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{version}");
        assert_eq!(version["registered_by"], "alice (deployer)");
        let (status, _, _) = fixture
            .call(
                "PUT",
                "/api/v1/models/m/routes",
                Some(&deployer),
                Some(routes_body()),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let swap = fixture.last_audit();
        assert_eq!(
            (
                swap.draft.actor.as_str(),
                swap.draft.action.as_str(),
                swap.draft.target.as_str()
            ),
            ("alice (deployer)", "routes.replace", "m")
        );
        assert_eq!(swap.draft.before.as_ref().unwrap()["generation"], 1);
        assert_eq!(swap.draft.after.as_ref().unwrap()["generation"], 2);
        assert_eq!(
            swap.draft.after.as_ref().unwrap()["spec"]["versions"][0]["name"],
            "v1"
        );
        // Tokens are for admins only.
        assert_eq!(
            fixture
                .status("GET", "/api/v1/tokens", Some(&deployer))
                .await,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn the_registry_lifecycle_needs_its_roles() {
        let fixture = Fixture::new(true);
        let viewer = fixture.token("vic", Role::Viewer);
        let deployer = fixture.token("dee", Role::Deployer);
        let approver = fixture.token("ann", Role::Approver);
        let admin = fixture.token("root", Role::Admin);
        let breakglass = fixture.token("bg", Role::Breakglass);
        let (_, stored, _) = fixture
            .call("PUT", "/api/v1/artifacts", Some(&deployer), None)
            .await;
        let (status, _, _) = fixture
            .call(
                "POST",
                "/api/v1/models/m/versions",
                Some(&deployer),
                Some(register_body(stored["digest"].as_str().unwrap())),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let bundle = json!({"id": "b1", "members": [{"model": "m", "version": "v2"}]});
        let promote = json!({"bundle": "b1"});
        let pin = json!({"reason": "incident:i1"});
        let reason = json!({"reason": "old"});
        // (method, path, body, the least role that may, expected success)
        let cases = [
            (
                "POST",
                "/api/v1/models/m/bundles",
                Some(bundle),
                Role::Deployer,
                StatusCode::CREATED,
            ),
            (
                "GET",
                "/api/v1/models/m/bundles",
                None,
                Role::Viewer,
                StatusCode::OK,
            ),
            (
                "POST",
                "/api/v1/models/m/promote",
                Some(promote),
                Role::Approver,
                StatusCode::OK,
            ),
            (
                "GET",
                "/api/v1/models/m/lkg",
                None,
                Role::Viewer,
                StatusCode::OK,
            ),
            (
                "POST",
                "/api/v1/models/m/versions/v2/retain",
                Some(pin.clone()),
                Role::Deployer,
                StatusCode::CREATED,
            ),
            (
                "DELETE",
                "/api/v1/models/m/versions/v2/retain",
                Some(pin),
                Role::Deployer,
                StatusCode::OK,
            ),
            (
                "POST",
                "/api/v1/models/m/versions/v2/deprecate",
                Some(reason),
                Role::Deployer,
                StatusCode::OK,
            ),
            // Refused for its bundle, but past the guard.
            (
                "DELETE",
                "/api/v1/models/m/versions/v2",
                None,
                Role::Admin,
                StatusCode::CONFLICT,
            ),
            ("POST", "/api/v1/gc", None, Role::Admin, StatusCode::OK),
        ];
        let tokens = [
            (Role::Viewer, &viewer),
            (Role::Deployer, &deployer),
            (Role::Breakglass, &breakglass),
            (Role::Approver, &approver),
            (Role::Admin, &admin),
        ];
        for (method, uri, body, least, success) in cases {
            for (role, token) in tokens {
                if role.allows(least) {
                    continue;
                }
                let (status, error, _) = fixture.call(method, uri, Some(token), body.clone()).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role} {method} {uri}: {error}"
                );
                let denied = fixture.last_audit();
                assert_eq!(
                    denied.draft.action, "access.denied",
                    "{role} {method} {uri}"
                );
                assert!(
                    denied.draft.reason.contains(least.as_str()),
                    "{}",
                    denied.draft.reason
                );
            }
            // The least role that may gets through.
            let token = tokens.iter().find(|(r, _)| *r == least).unwrap().1;
            let (status, answer, _) = fixture.call(method, uri, Some(token), body).await;
            assert_eq!(status, success, "{least} {method} {uri}: {answer}");
        }
    }

    #[tokio::test]
    async fn admins_manage_tokens_and_secrets_are_shown_once() {
        let fixture = Fixture::new(true);
        let admin = fixture.token("root", Role::Admin);
        let (status, created, _) = fixture
            .call(
                "POST",
                "/api/v1/tokens",
                Some(&admin),
                Some(json!({"name": "ci", "role": "deployer", "reason": "pipeline"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(
            (created["name"].as_str(), created["role"].as_str()),
            (Some("ci"), Some("deployer"))
        );
        let secret = created["token"].as_str().unwrap().to_string();
        let id = created["id"].as_str().unwrap().to_string();
        assert!(access::looks_like_secret(&secret));
        let entry = fixture.last_audit();
        assert_eq!(
            (
                entry.draft.actor.as_str(),
                entry.draft.action.as_str(),
                entry.draft.reason.as_str()
            ),
            ("root (admin)", "token.create", "pipeline")
        );
        assert_eq!(
            fixture.status("GET", "/api/v1/models", Some(&secret)).await,
            StatusCode::OK
        );

        let (status, listed, _) = fixture
            .call("GET", "/api/v1/tokens", Some(&admin), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        let text = listed.to_string();
        assert!(!text.contains(&secret) && !text.contains(&access::secret_hash(&secret)));
        let tokens = listed["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens
            .iter()
            .all(|t| t.get("hash").is_none() && t.get("token").is_none()));

        let cases = [
            (
                json!({"name": "ci", "role": "viewer"}),
                StatusCode::CONFLICT,
                "token_conflict",
            ),
            (
                json!({"name": "x y", "role": "viewer"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                json!({"name": "x", "role": "root"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
            (
                json!({"name": "x"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
            ),
        ];
        for (body, status, code) in cases {
            let (got, error, _) = fixture
                .call("POST", "/api/v1/tokens", Some(&admin), Some(body.clone()))
                .await;
            assert_eq!(
                (got, error["error"]["code"].as_str()),
                (status, Some(code)),
                "{body}"
            );
        }

        let (status, revoked, _) = fixture
            .call(
                "DELETE",
                &format!("/api/v1/tokens/{id}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(
            (status, revoked["revoked"].as_bool()),
            (StatusCode::OK, Some(true))
        );
        assert_eq!(fixture.last_audit().draft.action, "token.revoke");
        let (status, error, _) = fixture
            .call("DELETE", "/api/v1/tokens/nope", Some(&admin), None)
            .await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("token_not_found"))
        );
    }

    #[tokio::test]
    async fn missing_unknown_and_revoked_tokens_get_401_and_an_audit_entry() {
        let fixture = Fixture::new(true);
        let admin = fixture.token("root", Role::Admin);
        let unknown = format!("bst_{}", "0".repeat(64));
        let cases: [(Option<&str>, &str, &str); 3] = [
            (None, "anonymous", "missing Authorization header"),
            (Some(&unknown), "anonymous", "unknown token"),
            (Some("not-a-token"), "anonymous", "unknown token"),
        ];
        for (token, actor, reason) in cases {
            let (status, error, headers) = fixture.call("GET", "/api/v1/models", token, None).await;
            assert_eq!(
                (status, error["error"]["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthenticated")),
                "{token:?}"
            );
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            let entry = fixture.last_audit();
            assert_eq!(
                (
                    entry.draft.actor.as_str(),
                    entry.draft.action.as_str(),
                    entry.draft.target.as_str(),
                    entry.draft.reason.as_str()
                ),
                (actor, "login.failed", "GET /api/v1/models", reason)
            );
        }
        // Unknown paths are guarded too: no probing without a token.
        assert_eq!(
            fixture.status("GET", "/nope", None).await,
            StatusCode::UNAUTHORIZED
        );

        let viewer = fixture.token("bob", Role::Viewer);
        let bob = fixture
            .store
            .tokens()
            .unwrap()
            .into_iter()
            .find(|t| t.name == "bob")
            .unwrap();
        access::revoke_token(fixture.store.as_ref(), &bob.id, "test", "").unwrap();
        assert_eq!(
            fixture.status("GET", "/api/v1/models", Some(&viewer)).await,
            StatusCode::UNAUTHORIZED
        );
        let entry = fixture.last_audit();
        assert_eq!(
            (entry.draft.actor.as_str(), entry.draft.reason.as_str()),
            ("bob (viewer)", "revoked token")
        );
        // No secret ever reaches the audit log.
        let all = serde_json::to_string(&fixture.audit()).unwrap();
        for secret in [&admin, &viewer, &unknown] {
            assert!(!all.contains(secret.as_str()));
        }
    }

    #[tokio::test]
    async fn breakglass_acts_as_a_deployer_and_every_request_is_audited() {
        let fixture = Fixture::new(true);
        let breakglass = fixture.token("oncall", Role::Breakglass);
        assert_eq!(
            fixture
                .status("GET", "/api/v1/models", Some(&breakglass))
                .await,
            StatusCode::OK
        );
        let entry = fixture.last_audit();
        assert_eq!(
            (
                entry.draft.actor.as_str(),
                entry.draft.action.as_str(),
                entry.draft.target.as_str()
            ),
            (
                "oncall (breakglass)",
                "breakglass.use",
                "GET /api/v1/models"
            )
        );
        let (status, _, _) = fixture
            .call(
                "PUT",
                "/api/v1/models/m/routes",
                Some(&breakglass),
                Some(routes_body()),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let actions: Vec<_> = fixture
            .audit()
            .into_iter()
            .map(|e| e.draft.action)
            .collect();
        assert_eq!(
            actions[actions.len() - 2..],
            ["breakglass.use", "routes.replace"]
        );
        assert_eq!(
            fixture
                .status("GET", "/api/v1/tokens", Some(&breakglass))
                .await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(fixture.last_audit().draft.action, "access.denied");
    }

    #[tokio::test]
    async fn breakglass_does_not_go_ahead_without_its_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::store::sqlite::SqliteStore::open(&dir.path().join("b.db")).unwrap();
        // The token's creation is the one write that succeeds.
        let store: Arc<dyn Store> =
            Arc::new(crate::store::faulty::FaultyStore::new(sqlite, 1, true));
        let secret = access::create_token(store.as_ref(), "oncall", Role::Breakglass, "t", "", 1)
            .unwrap()
            .secret;
        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), "{}").unwrap();
        let app = super::super::router(
            Gateway::new(config).unwrap(),
            None,
            None,
            AccessPolicy::new(Some(store), true),
        );
        let request = axum::http::Request::get("/api/v1/models")
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn health_metrics_and_openapi_stay_open_when_tokens_exist() {
        let fixture = Fixture::new(true);
        fixture.token("root", Role::Admin);
        let before = fixture.audit().len();
        for uri in ["/healthz", "/metrics", "/api/v1/openapi.json"] {
            assert_eq!(
                fixture.status("GET", uri, None).await,
                StatusCode::OK,
                "{uri}"
            );
        }
        assert_eq!(fixture.audit().len(), before, "open paths are not audited");
    }

    #[tokio::test]
    async fn without_tokens_loopback_is_open_until_the_first_token_exists() {
        let fixture = Fixture::new(true);
        assert_eq!(
            fixture.status("GET", "/api/v1/models", None).await,
            StatusCode::OK
        );
        let (status, created, _) = fixture
            .call(
                "POST",
                "/api/v1/tokens",
                None,
                Some(json!({"name": "root", "role": "admin"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(fixture.last_audit().draft.actor, LOCAL_OPERATOR);
        // From the first token on, access control is on.
        assert_eq!(
            fixture.status("GET", "/api/v1/models", None).await,
            StatusCode::UNAUTHORIZED
        );
        let secret = created["token"].as_str().unwrap();
        assert_eq!(
            fixture.status("GET", "/api/v1/tokens", Some(secret)).await,
            StatusCode::OK
        );
        // Revoking every token does not open the API again.
        let id = created["id"].as_str().unwrap();
        access::revoke_token(fixture.store.as_ref(), id, "test", "").unwrap();
        assert_eq!(
            fixture.status("GET", "/api/v1/models", None).await,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn without_tokens_off_loopback_only_the_open_paths_answer() {
        let fixture = Fixture::new(false);
        for uri in ["/healthz", "/metrics", "/api/v1/openapi.json"] {
            assert_eq!(
                fixture.status("GET", uri, None).await,
                StatusCode::OK,
                "{uri}"
            );
        }
        for (method, uri) in [("GET", "/api/v1/models"), ("POST", "/api/v1/tokens")] {
            assert_eq!(
                fixture.status(method, uri, None).await,
                StatusCode::UNAUTHORIZED,
                "{method} {uri}"
            );
        }
        let entry = fixture.last_audit();
        assert_eq!(
            (entry.draft.action.as_str(), entry.draft.target.as_str()),
            ("login.failed", "POST /api/v1/tokens")
        );

        // Without a store there is nothing to audit into, and no way in.
        let config = crate::config::Config::parse(std::path::Path::new("t.yaml"), "{}").unwrap();
        let app = super::super::router(
            Gateway::new(config).unwrap(),
            None,
            None,
            AccessPolicy::new(None, false),
        );
        let response = app
            .oneshot(
                axum::http::Request::get("/api/v1/models")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer(&headers("Bearer bst_abc")).as_deref(), Ok("bst_abc"));
        assert_eq!(
            bearer(&headers("bearer  bst_abc ")).as_deref(),
            Ok("bst_abc")
        );
        assert!(bearer(&HeaderMap::new()).is_err());
        assert!(bearer(&headers("Basic YWxpY2U6cHc=")).is_err());
        assert!(bearer(&headers("Bearer ")).is_err());
        assert!(bearer(&headers("bst_abc")).is_err());
        let mut two = headers("Bearer a");
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(bearer(&two).is_err());
    }

    #[test]
    fn audit_targets_are_bounded() {
        assert_eq!(target(&Method::GET, "/api/v1/models"), "GET /api/v1/models");
        let long = format!("/{}", "é".repeat(500));
        assert!(target(&Method::GET, &long).len() <= 4 + TARGET_PATH_MAX_BYTES);
    }

    #[tokio::test]
    async fn access_can_be_checked_before_a_request_is_made() {
        let fixture = Fixture::new(true);
        let viewer = fixture.token("bob", Role::Viewer);
        let deployer = fixture.token("carol", Role::Deployer);
        let check = "/api/v1/access/check?method=PUT&path=/api/v1/artifacts";
        let (status, body, _) = fixture.call("GET", check, Some(&deployer), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (body["allowed"].as_bool(), body["actor"].as_str()),
            (Some(true), Some("carol (deployer)"))
        );
        let (status, body, _) = fixture.call("GET", check, Some(&viewer), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
        let (status, _, _) = fixture.call("GET", check, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body, _) = fixture
            .call(
                "GET",
                "/api/v1/access/check?method=P%20UT&path=/x",
                Some(&viewer),
                None,
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_query"))
        );
    }
}
