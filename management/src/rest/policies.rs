//! `/api/policies`: NetBird's access policies, rules between groups or single resources.

use std::collections::BTreeMap;

use axum::{
    body::Bytes,
    extract::{Path, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

#[derive(Deserialize)]
struct PolicyRequest {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    description: String,
    #[serde(default)]
    enabled: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    rules: Vec<RuleRequest>,
    /// NetBird's posture checks: this server has none, so a policy that names any is refused.
    #[serde(default, deserialize_with = "null_as_default")]
    source_posture_checks: Vec<String>,
}

#[derive(Deserialize)]
struct RuleRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    description: String,
    #[serde(default)]
    enabled: bool,
    action: RuleAction,
    #[serde(default)]
    bidirectional: bool,
    protocol: RuleProtocol,
    #[serde(default, deserialize_with = "null_as_default")]
    ports: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    port_ranges: Vec<PortRangeRequest>,
    #[serde(default)]
    sources: Option<Vec<String>>,
    #[serde(default)]
    destinations: Option<Vec<String>>,
    #[serde(default, rename = "sourceResource")]
    source_resource: Option<ResourceRef>,
    #[serde(default, rename = "destinationResource")]
    destination_resource: Option<ResourceRef>,
    #[serde(default, deserialize_with = "null_as_default")]
    authorized_groups: BTreeMap<String, Vec<String>>,
}

/// Ranges come in as JSON numbers; taken wide so an out-of-range value gets a clear message
/// instead of a type error.
#[derive(Deserialize)]
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
    let mut rules = Vec::with_capacity(r.rules.len());
    for (i, rule) in r.rules.into_iter().enumerate() {
        if rule.sources.as_ref().is_some_and(|s| !s.is_empty()) && rule.source_resource.is_some() {
            return invalid(format!(
                "rules[{i}]: specify either sources or sourceResource, not both"
            ));
        }
        if rule.destinations.as_ref().is_some_and(|s| !s.is_empty())
            && rule.destination_resource.is_some()
        {
            return invalid(format!(
                "rules[{i}]: specify either destinations or destinationResource, not both"
            ));
        }
        if !rule.ports.is_empty() && !rule.port_ranges.is_empty() {
            return invalid(format!(
                "rules[{i}]: specify either individual ports or port ranges, not both"
            ));
        }
        let sources = rule.sources.unwrap_or_default();
        if rule.protocol == RuleProtocol::NetbirdSsh
            && !rule.authorized_groups.is_empty()
            && let Some(g) = sources
                .iter()
                .find(|g| !rule.authorized_groups.contains_key(*g))
        {
            return invalid(format!(
                "rules[{i}].authorized_groups: source group {g} has no entry (netbird-ssh needs one per source group)"
            ));
        }
        let ports = rule
            .ports
            .iter()
            .map(|p| parse_port(p, &format!("rules[{i}].ports")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut port_ranges = Vec::new();
        for pr in &rule.port_ranges {
            let in_range = |v: i64| (1..=65535).contains(&v);
            if !in_range(pr.start) || !in_range(pr.end) || pr.start > pr.end {
                return invalid(format!(
                    "rules[{i}].port_ranges: {}-{} is not a range within 1-65535 with start <= end",
                    pr.start, pr.end
                ));
            }
            port_ranges.push(PortRange {
                start: pr.start as u16,
                end: pr.end as u16,
            });
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
            sources,
            destinations: rule.destinations.unwrap_or_default(),
            source_resource: rule.source_resource,
            destination_resource: rule.destination_resource,
            authorized_groups: rule.authorized_groups,
        });
    }
    Ok(Policy {
        id,
        name: r.name,
        description: r.description,
        enabled: r.enabled,
        rules,
    })
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
                "authorized_groups": r.authorized_groups,
            })
        })
        .collect();
    json!({ "id": p.id, "name": p.name, "description": p.description, "enabled": p.enabled, "rules": rules, "source_posture_checks": [] })
}

pub(super) async fn list_policies(State(m): State<AppState>) -> ApiResult {
    ok(m.read(|a| Value::Array(a.policies.values().map(|p| policy_json(a, p)).collect())))
}

pub(super) async fn get_policy(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| a.policies.get(&id).map(|p| policy_json(a, p)))
        .map_or_else(|| not_found("policy", &id), ok)
}

pub(super) async fn put_policy(m: AppState, id: String, body: Bytes, create: bool) -> ApiResult {
    let policy = policy_from_request(id.clone(), parse(&body)?)?;
    let shown = m.change(Initiator::Api, |a| {
        if !create && !a.policies.contains_key(&id) {
            return not_found("policy", &id);
        }
        let t = a.put_policy(policy)?;
        Ok((policy_json(a, &a.policies[&id]), t))
    })?;
    ok(shown)
}

pub(super) async fn create_policy(State(m): State<AppState>, body: Bytes) -> ApiResult {
    put_policy(m, new_id(), body, true).await
}

pub(super) async fn update_policy(
    State(m): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    put_policy(m, id, body, false).await
}

pub(super) async fn delete_policy(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(Initiator::Api, |a| a.delete_policy(&id).map(|t| ((), t)))?;
    ok(json!({}))
}
