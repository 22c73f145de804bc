//! The REST API under /api, shaped like NetBird's: peers, setup keys, groups, policies, and
//! networks with resources and routers. JSON in and out; errors are `{"message", "code"}`.
//!
//! Token auth: `Authorization: Token <t>` or `Bearer <t>`; no token and a wrong one are both 401
//! (as NetBird answers; its API clients treat 403 as "authenticated but not allowed").
//!
//! Bodies are read as NetBird's Go handlers read them, because its clients rely on it: unknown
//! fields are ignored, absent booleans are false, `null` arrays are empty. A body that is not JSON
//! of the right types is 400; a request that is readable but invalid is 422; a clash with an
//! existing object 409. Every request is validated whole before anything is stored.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    account::{new_id, new_setup_key_secret, parse_resource_address},
    activity::Initiator,
    error::{Error, invalid, not_found},
    model::*,
    service::Management,
};

mod acls;
mod events;
mod groups;
mod networks;
mod peers;
mod policies;
mod setup_keys;

/// Larger bodies get 413 before they are read.
pub const BODY_LIMIT: usize = 1 << 20;

type AppState = Arc<Management>;
type ApiResult = Result<Response, Error>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::FailedPrecondition(_) => StatusCode::PRECONDITION_FAILED,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::Internal(e) => {
                tracing::error!("REST request failed: {e:#}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        error_response(status, &self.to_string())
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "message": message, "code": status.as_u16() })),
    )
        .into_response()
}

fn ok(value: Value) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

/// Parses a JSON body into `T`; a body that cannot be read is a 400 that says what and where.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    if body.is_empty() {
        return Err(Error::BadRequest(
            "couldn't parse JSON request: the body is empty".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("couldn't parse JSON request: {e}")))
}

/// For `#[serde(deserialize_with)]`: a JSON `null` reads as the empty value (Go clients send
/// `null` for nil slices and maps).
fn null_as_default<'de, D: serde::Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Query parameters of the list endpoints that filter (`/api/peers?name=&ip=`, `/api/groups?name=`,
/// `/api/acls?name=`).
#[derive(Deserialize, Default)]
struct ListFilter {
    name: Option<String>,
    ip: Option<String>,
}

async fn authenticate(
    State(m): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Token ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .map(str::trim);
    match presented {
        None => error_response(
            StatusCode::UNAUTHORIZED,
            "missing Authorization header (Token <token> or Bearer <token>)",
        ),
        Some(t) if !constant_time_eq(t.as_bytes(), m.api_token.as_bytes()) => {
            error_response(StatusCode::UNAUTHORIZED, "invalid token")
        }
        Some(_) => next.run(request).await,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unknown paths: a JSON 404 (gRPC clients read an HTTP 404 as UNIMPLEMENTED).
pub async fn not_found_fallback() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such path")
}

pub fn router(m: AppState) -> Router {
    let api = Router::new()
        .route(
            "/api/peers",
            get(peers::list_peers).post(peers::create_peer),
        )
        .route(
            "/api/peers/{id}",
            get(peers::get_peer)
                .put(peers::update_peer)
                .delete(peers::delete_peer),
        )
        .route(
            "/api/setup-keys",
            get(setup_keys::list_setup_keys).post(setup_keys::create_setup_key),
        )
        .route(
            "/api/setup-keys/{id}",
            get(setup_keys::get_setup_key)
                .put(setup_keys::update_setup_key)
                .delete(setup_keys::delete_setup_key),
        )
        .route(
            "/api/groups",
            get(groups::list_groups).post(groups::create_group),
        )
        .route(
            "/api/groups/{id}",
            get(groups::get_group)
                .put(groups::update_group)
                .delete(groups::delete_group),
        )
        .route(
            "/api/policies",
            get(policies::list_policies).post(policies::create_policy),
        )
        .route(
            "/api/policies/{id}",
            get(policies::get_policy)
                .put(policies::update_policy)
                .delete(policies::delete_policy),
        )
        .route("/api/networks/routers", get(networks::list_all_routers))
        .route("/api/events", get(events::list_events))
        .route("/api/events/audit", get(events::list_events))
        .route("/api/acls", get(acls::list_acls).post(acls::create_acl))
        .route(
            "/api/acls/{id}",
            get(acls::get_acl)
                .put(acls::update_acl)
                .delete(acls::delete_acl),
        )
        .route(
            "/api/networks",
            get(networks::list_networks).post(networks::create_network),
        )
        .route(
            "/api/networks/{id}",
            get(networks::get_network)
                .put(networks::update_network)
                .delete(networks::delete_network),
        )
        .route(
            "/api/networks/{id}/resources",
            get(networks::list_resources).post(networks::create_resource),
        )
        .route(
            "/api/networks/{id}/resources/{rid}",
            get(networks::get_resource)
                .put(networks::update_resource)
                .delete(networks::delete_resource),
        )
        .route(
            "/api/networks/{id}/routers",
            get(networks::list_routers).post(networks::create_router),
        )
        .route(
            "/api/networks/{id}/routers/{rid}",
            get(networks::get_router)
                .put(networks::update_router)
                .delete(networks::delete_router),
        )
        .layer(middleware::from_fn_with_state(m.clone(), authenticate));
    api.layer(DefaultBodyLimit::max(BODY_LIMIT)).with_state(m)
}

fn rfc3339(t: UnixTime) -> Value {
    if t == 0 {
        return Value::Null;
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
    Value::String(humantime::format_rfc3339_seconds(time).to_string())
}

/// For fields NetBird's OpenAPI requires: "never" is Go's zero time, as its server writes it.
fn rfc3339_or_zero(t: UnixTime) -> Value {
    if t == 0 {
        Value::String("0001-01-01T00:00:00Z".into())
    } else {
        rfc3339(t)
    }
}

/// An RFC 3339 time as clients write it: `2026-12-02T08:00:00Z`, with fractional seconds, with a
/// `+01:00` offset, or naive (Python's `isoformat()` of a naive datetime), which is taken as UTC.
fn parse_time(text: &str, field: &str) -> Result<UnixTime, Error> {
    let t = text.trim();
    let bad = || Error::Invalid(format!("{field}: {t:?} is not an RFC 3339 time"));
    // An offset can only follow the time part (after "YYYY-MM-DDTHH:MM").
    let (base, offset) = match t
        .get(16..)
        .and_then(|rest| rest.rfind(['+', '-']).map(|i| i + 16))
    {
        Some(i) => {
            let (h, m) = t[i + 1..].split_once(':').ok_or_else(bad)?;
            let secs = h.parse::<i64>().map_err(|_| bad())? * 3600
                + m.parse::<i64>().map_err(|_| bad())? * 60;
            (&t[..i], if t.as_bytes()[i] == b'-' { -secs } else { secs })
        }
        None => (t.trim_end_matches(['Z', 'z']), 0),
    };
    let time = humantime::parse_rfc3339_weak(base).map_err(|_| bad())?;
    let unix = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_secs() as i64
        - offset;
    u64::try_from(unix).map_err(|_| bad())
}

fn group_ref(a: &Account, id: &str) -> Value {
    match a.groups.get(id) {
        Some(g) => {
            json!({ "id": g.id, "name": g.name, "peers_count": g.peers.len(), "resources_count": g.resources.len() })
        }
        None => json!({ "id": id }),
    }
}
