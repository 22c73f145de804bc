//! The REST API under /api, shaped like NetBird's: peers, setup keys, groups, policies, and
//! networks with resources and routers. JSON in and out; errors are `{"message", "code"}`.
//!
//! Token auth: `Authorization: Token <t>` or `Bearer <t>`; no token and a wrong one are both 401
//! (as NetBird answers; its API clients treat 403 as "authenticated but not allowed").
//! Bodies are parsed strictly (unknown fields, wrong types and bad values are 400 with the reason)
//! and validated whole before anything is stored.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    account::{new_id, new_setup_key_secret, parse_resource_address},
    error::{Error, invalid, not_found},
    model::*,
    service::Management,
};

/// Larger bodies get 413 before they are read.
pub const BODY_LIMIT: usize = 1 << 20;

type AppState = Arc<Management>;
type ApiResult = Result<Response, Error>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Invalid(_) | Error::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
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
    (status, axum::Json(json!({ "message": message, "code": status.as_u16() }))).into_response()
}

fn ok(value: Value) -> ApiResult {
    Ok(axum::Json(value).into_response())
}

/// Parses a JSON body into `T`, turning every problem into a 400 that says what and where.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    if body.is_empty() {
        return invalid("request body is empty; expected JSON");
    }
    serde_json::from_slice(body).map_err(|e| Error::Invalid(format!("invalid request body: {e}")))
}

async fn authenticate(State(m): State<AppState>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token ").or_else(|| v.strip_prefix("Bearer ")))
        .map(str::trim);
    match presented {
        None => error_response(StatusCode::UNAUTHORIZED, "missing Authorization header (Token <token> or Bearer <token>)"),
        Some(t) if !constant_time_eq(t.as_bytes(), m.api_token.as_bytes()) => error_response(StatusCode::UNAUTHORIZED, "invalid token"),
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
        .route("/api/peers", get(list_peers))
        .route("/api/peers/{id}", get(get_peer).put(update_peer).delete(delete_peer))
        .route("/api/setup-keys", get(list_setup_keys).post(create_setup_key))
        .route("/api/setup-keys/{id}", get(get_setup_key).put(update_setup_key).delete(delete_setup_key))
        .route("/api/groups", get(list_groups).post(create_group))
        .route("/api/groups/{id}", get(get_group).put(update_group).delete(delete_group))
        .route("/api/policies", get(list_policies).post(create_policy))
        .route("/api/policies/{id}", get(get_policy).put(update_policy).delete(delete_policy))
        .route("/api/networks", get(list_networks).post(create_network))
        .route("/api/networks/{id}", get(get_network).put(update_network).delete(delete_network))
        .route("/api/networks/{id}/resources", get(list_resources).post(create_resource))
        .route("/api/networks/{id}/resources/{rid}", get(get_resource).put(update_resource).delete(delete_resource))
        .route("/api/networks/{id}/routers", get(list_routers).post(create_router))
        .route("/api/networks/{id}/routers/{rid}", get(get_router).put(update_router).delete(delete_router))
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

fn group_ref(a: &Account, id: &str) -> Value {
    match a.groups.get(id) {
        Some(g) => json!({ "id": g.id, "name": g.name, "peers_count": g.peers.len(), "resources_count": g.resources.len() }),
        None => json!({ "id": id }),
    }
}

// ---- peers ----

fn peer_json(m: &Management, a: &Account, p: &Peer) -> Value {
    let groups: Vec<Value> = a.groups.values().filter(|g| g.peers.contains(&p.id)).map(|g| group_ref(a, &g.id)).collect();
    json!({
        "id": p.id, "name": p.name, "ip": p.ip.to_string(), "connected": m.is_connected(&p.id),
        "last_seen": rfc3339(p.last_seen), "os": p.os, "kernel_version": p.kernel_version, "version": p.version,
        "hostname": p.hostname, "dns_label": format!("{}.{}", p.dns_label, m.settings.dns_domain), "groups": groups,
        "ssh_enabled": p.ssh_enabled, "login_expiration_enabled": p.login_expiration_enabled,
        "inactivity_expiration_enabled": p.inactivity_expiration_enabled, "approval_required": p.approval_required,
        "ephemeral": p.ephemeral, "created_at": rfc3339(p.created_at),
    })
}

async fn list_peers(State(m): State<AppState>) -> ApiResult {
    ok(m.read(|a| Value::Array(a.peers.values().map(|p| peer_json(&m, a, p)).collect())))
}

async fn get_peer(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| match a.peers.get(&id) {
        Some(p) => ok(peer_json(&m, a, p)),
        None => not_found("peer", &id),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerUpdate {
    name: String,
    ssh_enabled: bool,
    login_expiration_enabled: bool,
    inactivity_expiration_enabled: bool,
    #[serde(default)]
    approval_required: Option<bool>,
    #[serde(default)]
    ip: Option<std::net::Ipv4Addr>,
}

async fn update_peer(State(m): State<AppState>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let u: PeerUpdate = parse(&body)?;
    let network = m.settings.network;
    if let Some(ip) = u.ip.filter(|ip| !network.contains(ip)) {
        return invalid(format!("ip {ip} is outside the overlay network {network}"));
    }
    m.change(|a| {
        let Some(mut p) = a.peers.get(&id).cloned() else { return not_found("peer", &id) };
        p.name = u.name;
        p.ssh_enabled = u.ssh_enabled;
        p.login_expiration_enabled = u.login_expiration_enabled;
        p.inactivity_expiration_enabled = u.inactivity_expiration_enabled;
        p.approval_required = u.approval_required.unwrap_or(p.approval_required);
        p.ip = u.ip.unwrap_or(p.ip);
        a.update_peer(p).map(|t| ((), t))
    })?;
    get_peer(State(m), Path(id)).await
}

async fn delete_peer(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(|a| a.delete_peer(&id).map(|t| ((), t)))?;
    ok(json!({}))
}

// ---- setup keys ----

fn setup_key_json(k: &SetupKey, reveal: bool) -> Value {
    let state = k.state(now());
    let key = if reveal { k.key.clone() } else { format!("{}****", &k.key[..k.key.len().min(5)]) };
    json!({
        "id": k.id, "key": key, "name": k.name, "expires": rfc3339(k.expires_at),
        "type": match k.kind { SetupKeyType::OneOff => "one-off", SetupKeyType::Reusable => "reusable" },
        "valid": state == SetupKeyState::Valid, "revoked": k.revoked, "used_times": k.used_times,
        "last_used": rfc3339(k.last_used), "state": state.as_str(), "auto_groups": k.auto_groups,
        "updated_at": rfc3339(k.updated_at), "usage_limit": k.usage_limit, "ephemeral": k.ephemeral,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSetupKey {
    name: String,
    #[serde(rename = "type")]
    kind: SetupKeyType,
    /// Seconds; 0 or absent: never expires.
    #[serde(default)]
    expires_in: u64,
    #[serde(default)]
    auto_groups: Vec<String>,
    #[serde(default)]
    usage_limit: u32,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    allow_extra_dns_labels: bool,
}

/// Longest expiry accepted: ten years.
const MAX_EXPIRES_IN: u64 = 10 * 365 * 24 * 3600;

async fn create_setup_key(State(m): State<AppState>, body: Bytes) -> ApiResult {
    let n: NewSetupKey = parse(&body)?;
    let _ = n.allow_extra_dns_labels;
    if n.expires_in > MAX_EXPIRES_IN {
        return invalid(format!("expires_in {} is longer than {MAX_EXPIRES_IN} seconds", n.expires_in));
    }
    let t = now();
    let key = SetupKey {
        id: new_id(),
        key: new_setup_key_secret(),
        name: n.name,
        kind: n.kind,
        created_at: t,
        expires_at: if n.expires_in == 0 { 0 } else { t + n.expires_in },
        updated_at: t,
        last_used: 0,
        revoked: false,
        used_times: 0,
        usage_limit: if n.kind == SetupKeyType::OneOff { 1 } else { n.usage_limit },
        auto_groups: n.auto_groups,
        ephemeral: n.ephemeral,
    };
    let shown = setup_key_json(&key, true);
    m.change(|a| a.put_setup_key(key).map(|t| ((), t)))?;
    ok(shown)
}

async fn list_setup_keys(State(m): State<AppState>) -> ApiResult {
    ok(m.read(|a| Value::Array(a.setup_keys.values().map(|k| setup_key_json(k, false)).collect())))
}

async fn get_setup_key(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| a.setup_keys.get(&id).map(|k| setup_key_json(k, false))).map_or_else(|| not_found("setup key", &id), ok)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupKeyUpdate {
    revoked: bool,
    #[serde(default)]
    auto_groups: Vec<String>,
    /// NetBird clients send the whole object back; these are accepted and must not change.
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<SetupKeyType>,
}

async fn update_setup_key(State(m): State<AppState>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let u: SetupKeyUpdate = parse(&body)?;
    let shown = m.change(|a| {
        let Some(mut k) = a.setup_keys.get(&id).cloned() else { return not_found("setup key", &id) };
        if u.name.as_ref().is_some_and(|n| *n != k.name) || u.kind.is_some_and(|t| t != k.kind) {
            return invalid("only revoked and auto_groups of a setup key can change");
        }
        if k.revoked && !u.revoked {
            return invalid("a revoked setup key cannot be reinstated");
        }
        k.revoked = u.revoked;
        k.auto_groups = u.auto_groups;
        k.updated_at = now();
        let shown = setup_key_json(&k, false);
        a.put_setup_key(k).map(|t| (shown, t))
    })?;
    ok(shown)
}

async fn delete_setup_key(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(|a| a.delete_setup_key(&id).map(|t| ((), t)))?;
    ok(json!({}))
}

// ---- groups ----

fn group_json(a: &Account, g: &Group) -> Value {
    let peers: Vec<Value> = g.peers.iter().filter_map(|p| a.peers.get(p)).map(|p| json!({ "id": p.id, "name": p.name })).collect();
    json!({
        "id": g.id, "name": g.name, "peers_count": g.peers.len(), "peers": peers,
        "resources_count": g.resources.len(), "resources": g.resources, "issued": "api",
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRequest {
    name: String,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default)]
    resources: Vec<ResourceRef>,
}

async fn list_groups(State(m): State<AppState>) -> ApiResult {
    ok(m.read(|a| Value::Array(a.groups.values().map(|g| group_json(a, g)).collect())))
}

async fn get_group(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| a.groups.get(&id).map(|g| group_json(a, g))).map_or_else(|| not_found("group", &id), ok)
}

async fn put_group(m: AppState, id: String, body: Bytes, create: bool) -> ApiResult {
    let r: GroupRequest = parse(&body)?;
    let shown = m.change(|a| {
        if !create && !a.groups.contains_key(&id) {
            return not_found("group", &id);
        }
        let g = Group { id: id.clone(), name: r.name, peers: r.peers, resources: r.resources };
        let t = a.put_group(g)?;
        Ok((group_json(a, &a.groups[&id]), t))
    })?;
    ok(shown)
}

async fn create_group(State(m): State<AppState>, body: Bytes) -> ApiResult {
    put_group(m, new_id(), body, true).await
}

async fn update_group(State(m): State<AppState>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    put_group(m, id, body, false).await
}

async fn delete_group(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(|a| a.delete_group(&id).map(|t| ((), t)))?;
    ok(json!({}))
}

// ---- policies ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRequest {
    name: String,
    #[serde(default)]
    description: String,
    enabled: bool,
    rules: Vec<RuleRequest>,
    /// NetBird's posture checks: accepted, not enforced by this server (it has none).
    #[serde(default)]
    source_posture_checks: Vec<String>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRequest {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    description: String,
    enabled: bool,
    action: RuleAction,
    bidirectional: bool,
    protocol: RuleProtocol,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    port_ranges: Vec<PortRangeRequest>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    destinations: Vec<String>,
    #[serde(default, rename = "sourceResource")]
    source_resource: Option<ResourceRef>,
    #[serde(default, rename = "destinationResource")]
    destination_resource: Option<ResourceRef>,
}

/// Ranges come in as JSON numbers; taken wide so an out-of-range value gets a clear message
/// instead of a type error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortRangeRequest {
    start: i64,
    end: i64,
}

fn parse_port(text: &str, at: &str) -> Result<u16, Error> {
    match text.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => invalid(format!("{at}: {text:?} is not a port in 1-65535")),
    }
}

fn policy_from_request(id: String, r: PolicyRequest) -> Result<Policy, Error> {
    if r.source_posture_checks.iter().any(|c| !c.is_empty()) {
        return invalid("source_posture_checks: posture checks are not supported by this server");
    }
    let _ = r.id;
    let mut rules = Vec::with_capacity(r.rules.len());
    for (i, rule) in r.rules.into_iter().enumerate() {
        let ports = rule.ports.iter().map(|p| parse_port(p, &format!("rules[{i}].ports"))).collect::<Result<Vec<_>, _>>()?;
        let mut port_ranges = Vec::new();
        for pr in &rule.port_ranges {
            let in_range = |v: i64| (1..=65535).contains(&v);
            if !in_range(pr.start) || !in_range(pr.end) || pr.start > pr.end {
                return invalid(format!("rules[{i}].port_ranges: {}-{} is not a range within 1-65535 with start <= end", pr.start, pr.end));
            }
            port_ranges.push(PortRange { start: pr.start as u16, end: pr.end as u16 });
        }
        rules.push(PolicyRule {
            id: rule.id.filter(|s| !s.is_empty()).unwrap_or_else(new_id),
            name: rule.name,
            description: rule.description,
            enabled: rule.enabled,
            action: rule.action,
            bidirectional: rule.bidirectional,
            protocol: rule.protocol,
            ports,
            port_ranges,
            sources: rule.sources,
            destinations: rule.destinations,
            source_resource: rule.source_resource,
            destination_resource: rule.destination_resource,
        });
    }
    Ok(Policy { id, name: r.name, description: r.description, enabled: r.enabled, rules })
}

fn policy_json(a: &Account, p: &Policy) -> Value {
    let rules: Vec<Value> = p
        .rules
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "name": r.name, "description": r.description, "enabled": r.enabled,
                "action": r.action, "bidirectional": r.bidirectional, "protocol": r.protocol,
                "ports": r.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(), "port_ranges": r.port_ranges,
                "sources": r.sources.iter().map(|g| group_ref(a, g)).collect::<Vec<_>>(),
                "destinations": r.destinations.iter().map(|g| group_ref(a, g)).collect::<Vec<_>>(),
                "sourceResource": r.source_resource, "destinationResource": r.destination_resource,
            })
        })
        .collect();
    json!({ "id": p.id, "name": p.name, "description": p.description, "enabled": p.enabled, "rules": rules, "source_posture_checks": [] })
}

async fn list_policies(State(m): State<AppState>) -> ApiResult {
    ok(m.read(|a| Value::Array(a.policies.values().map(|p| policy_json(a, p)).collect())))
}

async fn get_policy(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| a.policies.get(&id).map(|p| policy_json(a, p))).map_or_else(|| not_found("policy", &id), ok)
}

async fn put_policy(m: AppState, id: String, body: Bytes, create: bool) -> ApiResult {
    let policy = policy_from_request(id.clone(), parse(&body)?)?;
    let shown = m.change(|a| {
        if !create && !a.policies.contains_key(&id) {
            return not_found("policy", &id);
        }
        let t = a.put_policy(policy)?;
        Ok((policy_json(a, &a.policies[&id]), t))
    })?;
    ok(shown)
}

async fn create_policy(State(m): State<AppState>, body: Bytes) -> ApiResult {
    put_policy(m, new_id(), body, true).await
}

async fn update_policy(State(m): State<AppState>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    put_policy(m, id, body, false).await
}

async fn delete_policy(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(|a| a.delete_policy(&id).map(|t| ((), t)))?;
    ok(json!({}))
}

// ---- networks, resources, routers ----

fn network_json(a: &Account, n: &Network) -> Value {
    let resources: Vec<&str> = a.resources.values().filter(|r| r.network_id == n.id).map(|r| r.id.as_str()).collect();
    let routers: Vec<&str> = a.routers.values().filter(|r| r.network_id == n.id).map(|r| r.id.as_str()).collect();
    let routing_peers: std::collections::BTreeSet<&str> = a
        .routers
        .values()
        .filter(|r| r.network_id == n.id)
        .flat_map(|r| r.peer.iter().map(String::as_str).chain(r.peer_groups.iter().filter_map(|g| a.groups.get(g)).flat_map(|g| g.peers.iter().map(String::as_str))))
        .collect();
    json!({
        "id": n.id, "name": n.name, "description": n.description, "resources": resources, "routers": routers,
        "routing_peers_count": routing_peers.len(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkRequest {
    name: String,
    #[serde(default)]
    description: String,
}

async fn list_networks(State(m): State<AppState>) -> ApiResult {
    ok(m.read(|a| Value::Array(a.networks.values().map(|n| network_json(a, n)).collect())))
}

async fn get_network(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| a.networks.get(&id).map(|n| network_json(a, n))).map_or_else(|| not_found("network", &id), ok)
}

async fn put_network(m: AppState, id: String, body: Bytes, create: bool) -> ApiResult {
    let r: NetworkRequest = parse(&body)?;
    let shown = m.change(|a| {
        if !create && !a.networks.contains_key(&id) {
            return not_found("network", &id);
        }
        let t = a.put_network(Network { id: id.clone(), name: r.name, description: r.description })?;
        Ok((network_json(a, &a.networks[&id]), t))
    })?;
    ok(shown)
}

async fn create_network(State(m): State<AppState>, body: Bytes) -> ApiResult {
    put_network(m, new_id(), body, true).await
}

async fn update_network(State(m): State<AppState>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    put_network(m, id, body, false).await
}

async fn delete_network(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(|a| a.delete_network(&id).map(|t| ((), t)))?;
    ok(json!({}))
}

fn resource_json(a: &Account, r: &NetworkResource) -> Value {
    let groups: Vec<Value> = a.groups.values().filter(|g| g.resources.iter().any(|x| x.id == r.id)).map(|g| group_ref(a, &g.id)).collect();
    json!({
        "id": r.id, "type": r.kind(), "name": r.name, "description": r.description, "address": r.address,
        "enabled": r.enabled, "groups": groups,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceRequest {
    name: String,
    #[serde(default)]
    description: String,
    address: String,
    enabled: bool,
    #[serde(default)]
    groups: Vec<String>,
}

async fn list_resources(State(m): State<AppState>, Path(network): Path<String>) -> ApiResult {
    m.read(|a| {
        if !a.networks.contains_key(&network) {
            return not_found("network", &network);
        }
        ok(Value::Array(a.resources.values().filter(|r| r.network_id == network).map(|r| resource_json(a, r)).collect()))
    })
}

async fn get_resource(State(m): State<AppState>, Path((network, id)): Path<(String, String)>) -> ApiResult {
    m.read(|a| a.resources.get(&id).filter(|r| r.network_id == network).map(|r| resource_json(a, r))).map_or_else(|| not_found("resource", &id), ok)
}

async fn put_resource(m: AppState, network: String, id: String, body: Bytes, create: bool) -> ApiResult {
    let r: ResourceRequest = parse(&body)?;
    let parsed = parse_resource_address(&r.address)?;
    let shown = m.change(|a| {
        if !create && a.resources.get(&id).is_none_or(|x| x.network_id != network) {
            return not_found("resource", &id);
        }
        let resource = NetworkResource { id: id.clone(), network_id: network, name: r.name, description: r.description, address: r.address.trim().to_string(), parsed, enabled: r.enabled };
        let t = a.put_resource(resource, &r.groups)?;
        Ok((resource_json(a, &a.resources[&id]), t))
    })?;
    ok(shown)
}

async fn create_resource(State(m): State<AppState>, Path(network): Path<String>, body: Bytes) -> ApiResult {
    put_resource(m, network, new_id(), body, true).await
}

async fn update_resource(State(m): State<AppState>, Path((network, id)): Path<(String, String)>, body: Bytes) -> ApiResult {
    put_resource(m, network, id, body, false).await
}

async fn delete_resource(State(m): State<AppState>, Path((network, id)): Path<(String, String)>) -> ApiResult {
    m.change(|a| a.delete_resource(&network, &id).map(|t| ((), t)))?;
    ok(json!({}))
}

fn router_json(r: &NetworkRouter) -> Value {
    json!({ "id": r.id, "peer": r.peer, "peer_groups": r.peer_groups, "metric": r.metric, "masquerade": r.masquerade, "enabled": r.enabled })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterRequest {
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    peer_groups: Vec<String>,
    metric: i64,
    masquerade: bool,
    enabled: bool,
}

async fn list_routers(State(m): State<AppState>, Path(network): Path<String>) -> ApiResult {
    m.read(|a| {
        if !a.networks.contains_key(&network) {
            return not_found("network", &network);
        }
        ok(Value::Array(a.routers.values().filter(|r| r.network_id == network).map(router_json).collect()))
    })
}

async fn get_router(State(m): State<AppState>, Path((network, id)): Path<(String, String)>) -> ApiResult {
    m.read(|a| a.routers.get(&id).filter(|r| r.network_id == network).map(router_json)).map_or_else(|| not_found("router", &id), ok)
}

async fn put_router(m: AppState, network: String, id: String, body: Bytes, create: bool) -> ApiResult {
    let r: RouterRequest = parse(&body)?;
    if !(1..=9999).contains(&r.metric) {
        return invalid(format!("metric {} is not within 1-9999", r.metric));
    }
    let shown = m.change(|a| {
        if !create && a.routers.get(&id).is_none_or(|x| x.network_id != network) {
            return not_found("router", &id);
        }
        let router = NetworkRouter { id: id.clone(), network_id: network, peer: r.peer.filter(|p| !p.is_empty()), peer_groups: r.peer_groups, metric: r.metric as u16, masquerade: r.masquerade, enabled: r.enabled };
        let shown = router_json(&router);
        a.put_router(router).map(|t| (shown, t))
    })?;
    ok(shown)
}

async fn create_router(State(m): State<AppState>, Path(network): Path<String>, body: Bytes) -> ApiResult {
    put_router(m, network, new_id(), body, true).await
}

async fn update_router(State(m): State<AppState>, Path((network, id)): Path<(String, String)>, body: Bytes) -> ApiResult {
    put_router(m, network, id, body, false).await
}

async fn delete_router(State(m): State<AppState>, Path((network, id)): Path<(String, String)>) -> ApiResult {
    m.change(|a| a.delete_router(&network, &id).map(|t| ((), t)))?;
    ok(json!({}))
}
