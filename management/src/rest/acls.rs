//! `/api/acls`: access lists in the shape the seed's backend writes them, with rule priorities
//! (lower decides first; absent is 0, the level of every NetBird policy; at one level a drop
//! wins, as in NetBird). Not a NetBird endpoint: here `enabled` (of the ACL and of each rule)
//! defaults to true, because the seed's rules leave it out.
//!
//! `metadata` is stored as sent; `metadata.expires_at` (RFC 3339) ends the ACL at that time and
//! `metadata.auto_cleanup: true` deletes it then (otherwise it is disabled).

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

fn acl_json(a: &Account, acl: &Acl) -> Value {
    let rules: Vec<Value> = acl
        .rules
        .iter()
        .map(|r| {
            let ports: Vec<String> = r.ports.iter().map(|p| if p.start == p.end { p.start.to_string() } else { format!("{}-{}", p.start, p.end) }).collect();
            json!({
                "id": r.id, "name": r.name, "description": r.description, "enabled": r.enabled, "action": r.action,
                "protocol": r.protocol, "bidirectional": r.bidirectional, "ports": ports, "priority": r.priority,
                "source_peers": r.source_peers, "destination_peers": r.destination_peers,
                "source_groups": r.source_groups.iter().map(|g| group_ref(a, g)).collect::<Vec<_>>(),
                "destination_groups": r.destination_groups.iter().map(|g| group_ref(a, g)).collect::<Vec<_>>(),
                "destination_ips": r.destination_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "id": acl.id, "name": acl.name, "description": acl.description, "enabled": acl.enabled, "rules": rules,
        "metadata": acl.metadata, "expires_at": rfc3339(acl.expires_at), "auto_cleanup": acl.auto_cleanup,
        "created_at": rfc3339_or_zero(acl.created_at),
    })
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct AclRequest {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    description: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    rules: Vec<AclRuleRequest>,
    #[serde(default, deserialize_with = "null_as_default")]
    metadata: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct AclRuleRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    description: String,
    #[serde(default = "yes")]
    enabled: bool,
    action: RuleAction,
    #[serde(default = "all_protocols")]
    protocol: RuleProtocol,
    #[serde(default)]
    bidirectional: bool,
    /// "443" or "1-65535".
    #[serde(default, deserialize_with = "null_as_default")]
    ports: Vec<String>,
    #[serde(default)]
    priority: i64,
    #[serde(default, deserialize_with = "null_as_default")]
    source_peers: Vec<String>,
    /// Group ids or names.
    #[serde(default, deserialize_with = "null_as_default")]
    source_groups: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    destination_peers: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    destination_groups: Vec<String>,
    /// Overlay addresses or prefixes ("100.64.3.7", "100.64.0.0/10").
    #[serde(default, deserialize_with = "null_as_default")]
    destination_ips: Vec<String>,
}

fn all_protocols() -> RuleProtocol {
    RuleProtocol::All
}

fn port_range(text: &str, at: &str) -> Result<PortRange, Error> {
    let bad = || {
        Error::Invalid(format!(
            "{at}: {text:?} is not a port or a range within 1-65535"
        ))
    };
    let (a, b) = text
        .trim()
        .split_once('-')
        .unwrap_or((text.trim(), text.trim()));
    let (start, end) = (
        a.trim().parse::<u16>().map_err(|_| bad())?,
        b.trim().parse::<u16>().map_err(|_| bad())?,
    );
    if start == 0 || start > end {
        return Err(bad());
    }
    Ok(PortRange { start, end })
}

fn acl_from_request(
    a: &Account,
    id: String,
    r: AclRequest,
    created_at: UnixTime,
) -> Result<Acl, Error> {
    let mut rules = Vec::with_capacity(r.rules.len());
    for (i, rule) in r.rules.into_iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        let ports = rule
            .ports
            .iter()
            .map(|p| port_range(p, &at("ports")))
            .collect::<Result<Vec<_>, _>>()?;
        let destination_ips = rule
            .destination_ips
            .iter()
            .map(|t| {
                let t = t.trim();
                t.parse::<ipnet::Ipv4Net>()
                    .or_else(|_| t.parse::<std::net::Ipv4Addr>().map(ipnet::Ipv4Net::from))
                    .map_err(|_| {
                        Error::Invalid(format!(
                            "{}: {t:?} is not an IPv4 address or prefix",
                            at("destination_ips")
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let priority = u32::try_from(rule.priority).map_err(|_| {
            Error::Invalid(format!(
                "{}: {} is not within 0-{}",
                at("priority"),
                rule.priority,
                u32::MAX
            ))
        })?;
        rules.push(AclRule {
            id: rule.id.filter(|s| !s.is_empty()).unwrap_or_else(new_id),
            name: rule.name,
            description: rule.description,
            enabled: rule.enabled,
            action: rule.action,
            protocol: rule.protocol,
            bidirectional: rule.bidirectional,
            ports,
            priority,
            source_peers: rule.source_peers,
            source_groups: a.resolve_groups(&rule.source_groups, &at("source_groups"))?,
            destination_peers: rule.destination_peers,
            destination_groups: a
                .resolve_groups(&rule.destination_groups, &at("destination_groups"))?,
            destination_ips,
        });
    }
    let expires_at = match r.metadata.get("expires_at") {
        None | Some(Value::Null) => 0,
        Some(Value::String(s)) if s.is_empty() => 0,
        Some(Value::String(s)) => parse_time(s, "metadata.expires_at")?,
        Some(other) => {
            return invalid(format!(
                "metadata.expires_at: {other} is not an RFC 3339 time"
            ));
        }
    };
    let auto_cleanup = match r.metadata.get("auto_cleanup") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s))
            if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") =>
        {
            s.eq_ignore_ascii_case("true")
        }
        Some(other) => return invalid(format!("metadata.auto_cleanup: {other} is not a boolean")),
    };
    if expires_at != 0 && expires_at <= now() {
        return invalid("metadata.expires_at is in the past");
    }
    Ok(Acl {
        id,
        name: r.name,
        description: r.description,
        enabled: r.enabled,
        rules,
        metadata: r.metadata,
        expires_at,
        auto_cleanup,
        created_at,
    })
}

/// `?name=` is an exact match; no match is an empty list (the seed's cleanup iterates it).
pub(super) async fn list_acls(
    State(m): State<AppState>,
    Query(filter): Query<ListFilter>,
) -> ApiResult {
    ok(m.read(|a| {
        Value::Array(
            a.acls
                .values()
                .filter(|x| filter.name.as_ref().is_none_or(|n| x.name == *n))
                .map(|x| acl_json(a, x))
                .collect(),
        )
    }))
}

pub(super) async fn get_acl(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| a.acls.get(&id).map(|x| acl_json(a, x)))
        .map_or_else(|| not_found("acl", &id), ok)
}

async fn put_acl(m: AppState, id: String, body: Bytes, create: bool) -> ApiResult {
    let r: AclRequest = parse(&body)?;
    let network = m.settings.network;
    let shown = m.change(Initiator::Api, |a| {
        let created_at = match a.acls.get(&id) {
            Some(old) => old.created_at,
            None if create => now(),
            None => return not_found("acl", &id),
        };
        let acl = acl_from_request(a, id.clone(), r, created_at)?;
        let t = a.put_acl(acl, network)?;
        Ok((acl_json(a, &a.acls[&id]), t))
    })?;
    ok(shown)
}

pub(super) async fn create_acl(State(m): State<AppState>, body: Bytes) -> ApiResult {
    put_acl(m, new_id(), body, true).await
}

pub(super) async fn update_acl(
    State(m): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    put_acl(m, id, body, false).await
}

pub(super) async fn delete_acl(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(Initiator::Api, |a| a.delete_acl(&id).map(|t| ((), t)))?;
    ok(json!({}))
}
