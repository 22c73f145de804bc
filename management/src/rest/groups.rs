//! `/api/groups`, with NetBird's built-in `All` group (every peer, read-only).

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

fn group_json(a: &Account, g: &Group) -> Value {
    let peers: Vec<Value> = g
        .peers
        .iter()
        .filter_map(|p| a.peers.get(p))
        .map(|p| json!({ "id": p.id, "name": p.name }))
        .collect();
    json!({
        "id": g.id, "name": g.name, "peers_count": g.peers.len(), "peers": peers,
        "resources_count": g.resources.len(), "resources": g.resources, "issued": "api",
    })
}

#[derive(Deserialize)]
struct GroupRequest {
    #[serde(default)]
    name: String,
    /// PUT replaces: absent or null peers and resources leave the group without them.
    #[serde(default, deserialize_with = "null_as_default")]
    peers: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    resources: Vec<ResourceRef>,
}

/// `?name=` is an exact match, as NetBird's: a list of one, or 404.
pub(super) async fn list_groups(
    State(m): State<AppState>,
    Query(filter): Query<ListFilter>,
) -> ApiResult {
    m.read(|a| match &filter.name {
        Some(name) => match a.groups.values().find(|g| g.name == *name) {
            Some(g) => ok(json!([group_json(a, g)])),
            None => not_found("group", name),
        },
        None => ok(Value::Array(
            a.groups.values().map(|g| group_json(a, g)).collect(),
        )),
    })
}

pub(super) async fn get_group(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| a.groups.get(&id).map(|g| group_json(a, g)))
        .map_or_else(|| not_found("group", &id), ok)
}

async fn put_group(m: AppState, id: String, body: Bytes, create: bool) -> ApiResult {
    let r: GroupRequest = parse(&body)?;
    let shown = m.change(Initiator::Api, |a| {
        if !create && !a.groups.contains_key(&id) {
            return not_found("group", &id);
        }
        if r.name == crate::account::ALL_GROUP {
            return invalid("the name All belongs to the built-in group of every peer");
        }
        let g = Group {
            id: id.clone(),
            name: r.name,
            peers: r.peers,
            resources: r.resources,
        };
        let t = a.put_group(g)?;
        Ok((group_json(a, &a.groups[&id]), t))
    })?;
    ok(shown)
}

pub(super) async fn create_group(State(m): State<AppState>, body: Bytes) -> ApiResult {
    put_group(m, new_id(), body, true).await
}

pub(super) async fn update_group(
    State(m): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    put_group(m, id, body, false).await
}

pub(super) async fn delete_group(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(Initiator::Api, |a| a.delete_group(&id).map(|t| ((), t)))?;
    ok(json!({}))
}
