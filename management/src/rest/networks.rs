//! `/api/networks`, with their resources and routers.

use axum::{
    body::Bytes,
    extract::{Path, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

fn network_json(a: &Account, n: &Network) -> Value {
    let resources: Vec<&str> = a
        .resources
        .values()
        .filter(|r| r.network_id == n.id)
        .map(|r| r.id.as_str())
        .collect();
    let routers: Vec<&str> = a
        .routers
        .values()
        .filter(|r| r.network_id == n.id)
        .map(|r| r.id.as_str())
        .collect();
    let routing_peers: std::collections::BTreeSet<&str> = a
        .routers
        .values()
        .filter(|r| r.network_id == n.id)
        .flat_map(|r| {
            r.peer.iter().map(String::as_str).chain(
                r.peer_groups
                    .iter()
                    .filter_map(|g| a.groups.get(g))
                    .flat_map(|g| g.peers.iter().map(String::as_str)),
            )
        })
        .collect();
    // Policies that give access to any of the network's resources.
    let policies: Vec<&str> = a
        .policies
        .values()
        .filter(|p| {
            p.rules.iter().any(|r| {
                let via_group = r
                    .destinations
                    .iter()
                    .filter_map(|g| a.groups.get(g))
                    .flat_map(|g| &g.resources)
                    .any(|x| resources.contains(&x.id.as_str()));
                via_group
                    || r.destination_resource
                        .as_ref()
                        .is_some_and(|x| resources.contains(&x.id.as_str()))
            })
        })
        .map(|p| p.id.as_str())
        .collect();
    json!({
        "id": n.id, "name": n.name, "description": n.description, "resources": resources, "routers": routers,
        "routing_peers_count": routing_peers.len(), "policies": policies,
    })
}

#[derive(Deserialize)]
struct NetworkRequest {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    description: String,
}

pub(super) async fn list_networks(State(m): State<AppState>) -> ApiResult {
    ok(m.read(|a| Value::Array(a.networks.values().map(|n| network_json(a, n)).collect())))
}

pub(super) async fn get_network(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| a.networks.get(&id).map(|n| network_json(a, n)))
        .map_or_else(|| not_found("network", &id), ok)
}

pub(super) async fn put_network(m: AppState, id: String, body: Bytes, create: bool) -> ApiResult {
    let r: NetworkRequest = parse(&body)?;
    let shown = m.change(Initiator::Api, |a| {
        if !create && !a.networks.contains_key(&id) {
            return not_found("network", &id);
        }
        let t = a.put_network(Network {
            id: id.clone(),
            name: r.name,
            description: r.description,
        })?;
        Ok((network_json(a, &a.networks[&id]), t))
    })?;
    ok(shown)
}

pub(super) async fn create_network(State(m): State<AppState>, body: Bytes) -> ApiResult {
    put_network(m, new_id(), body, true).await
}

pub(super) async fn update_network(
    State(m): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    put_network(m, id, body, false).await
}

pub(super) async fn delete_network(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(Initiator::Api, |a| a.delete_network(&id).map(|t| ((), t)))?;
    ok(json!({}))
}

fn resource_json(a: &Account, r: &NetworkResource) -> Value {
    let groups: Vec<Value> = a
        .groups
        .values()
        .filter(|g| g.resources.iter().any(|x| x.id == r.id))
        .map(|g| group_ref(a, &g.id))
        .collect();
    json!({
        "id": r.id, "type": r.kind(), "name": r.name, "description": r.description, "address": r.address,
        "enabled": r.enabled, "groups": groups,
    })
}

#[derive(Deserialize)]
struct ResourceRequest {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    description: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    enabled: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    groups: Vec<String>,
}

pub(super) async fn list_resources(
    State(m): State<AppState>,
    Path(network): Path<String>,
) -> ApiResult {
    m.read(|a| {
        if !a.networks.contains_key(&network) {
            return not_found("network", &network);
        }
        ok(Value::Array(
            a.resources
                .values()
                .filter(|r| r.network_id == network)
                .map(|r| resource_json(a, r))
                .collect(),
        ))
    })
}

pub(super) async fn get_resource(
    State(m): State<AppState>,
    Path((network, id)): Path<(String, String)>,
) -> ApiResult {
    m.read(|a| {
        a.resources
            .get(&id)
            .filter(|r| r.network_id == network)
            .map(|r| resource_json(a, r))
    })
    .map_or_else(|| not_found("resource", &id), ok)
}

pub(super) async fn put_resource(
    m: AppState,
    network: String,
    id: String,
    body: Bytes,
    create: bool,
) -> ApiResult {
    let r: ResourceRequest = parse(&body)?;
    let parsed = parse_resource_address(&r.address)?;
    let shown = m.change(Initiator::Api, |a| {
        if !create && a.resources.get(&id).is_none_or(|x| x.network_id != network) {
            return not_found("resource", &id);
        }
        let resource = NetworkResource {
            id: id.clone(),
            network_id: network,
            name: r.name,
            description: r.description,
            address: r.address.trim().to_string(),
            parsed,
            enabled: r.enabled,
        };
        let t = a.put_resource(resource, &r.groups)?;
        Ok((resource_json(a, &a.resources[&id]), t))
    })?;
    ok(shown)
}

pub(super) async fn create_resource(
    State(m): State<AppState>,
    Path(network): Path<String>,
    body: Bytes,
) -> ApiResult {
    put_resource(m, network, new_id(), body, true).await
}

pub(super) async fn update_resource(
    State(m): State<AppState>,
    Path((network, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    put_resource(m, network, id, body, false).await
}

pub(super) async fn delete_resource(
    State(m): State<AppState>,
    Path((network, id)): Path<(String, String)>,
) -> ApiResult {
    m.change(Initiator::Api, |a| {
        a.delete_resource(&network, &id).map(|t| ((), t))
    })?;
    ok(json!({}))
}

fn router_json(r: &NetworkRouter) -> Value {
    json!({ "id": r.id, "peer": r.peer.as_deref().unwrap_or(""), "peer_groups": r.peer_groups, "metric": r.metric, "masquerade": r.masquerade, "enabled": r.enabled })
}

/// `GET /api/networks/routers`: every network's routers in one list.
pub(super) async fn list_all_routers(State(m): State<AppState>) -> ApiResult {
    ok(m.read(|a| Value::Array(a.routers.values().map(router_json).collect())))
}

#[derive(Deserialize)]
struct RouterRequest {
    #[serde(default)]
    peer: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    peer_groups: Vec<String>,
    #[serde(default)]
    metric: i64,
    #[serde(default)]
    masquerade: bool,
    #[serde(default)]
    enabled: bool,
}

pub(super) async fn list_routers(
    State(m): State<AppState>,
    Path(network): Path<String>,
) -> ApiResult {
    m.read(|a| {
        if !a.networks.contains_key(&network) {
            return not_found("network", &network);
        }
        ok(Value::Array(
            a.routers
                .values()
                .filter(|r| r.network_id == network)
                .map(router_json)
                .collect(),
        ))
    })
}

pub(super) async fn get_router(
    State(m): State<AppState>,
    Path((network, id)): Path<(String, String)>,
) -> ApiResult {
    m.read(|a| {
        a.routers
            .get(&id)
            .filter(|r| r.network_id == network)
            .map(router_json)
    })
    .map_or_else(|| not_found("router", &id), ok)
}

pub(super) async fn put_router(
    m: AppState,
    network: String,
    id: String,
    body: Bytes,
    create: bool,
) -> ApiResult {
    let r: RouterRequest = parse(&body)?;
    if !(1..=9999).contains(&r.metric) {
        return invalid(format!("metric {} is not within 1-9999", r.metric));
    }
    let shown = m.change(Initiator::Api, |a| {
        if !create && a.routers.get(&id).is_none_or(|x| x.network_id != network) {
            return not_found("router", &id);
        }
        let router = NetworkRouter {
            id: id.clone(),
            network_id: network,
            peer: r.peer.filter(|p| !p.is_empty()),
            peer_groups: r.peer_groups,
            metric: r.metric as u16,
            masquerade: r.masquerade,
            enabled: r.enabled,
        };
        let shown = router_json(&router);
        a.put_router(router).map(|t| (shown, t))
    })?;
    ok(shown)
}

pub(super) async fn create_router(
    State(m): State<AppState>,
    Path(network): Path<String>,
    body: Bytes,
) -> ApiResult {
    put_router(m, network, new_id(), body, true).await
}

pub(super) async fn update_router(
    State(m): State<AppState>,
    Path((network, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    put_router(m, network, id, body, false).await
}

pub(super) async fn delete_router(
    State(m): State<AppState>,
    Path((network, id)): Path<(String, String)>,
) -> ApiResult {
    m.change(Initiator::Api, |a| {
        a.delete_router(&network, &id).map(|t| ((), t))
    })?;
    ok(json!({}))
}
