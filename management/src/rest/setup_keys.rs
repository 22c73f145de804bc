//! `/api/setup-keys`: keys that register peers. The secret is shown once, in the creation
//! response; the store keeps only its hash.

use axum::{
    body::Bytes,
    extract::{Path, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

fn setup_key_json(k: &SetupKey, secret: Option<&str>) -> Value {
    let state = k.state(now());
    let key = secret.map_or_else(|| format!("{}****", k.key_prefix), str::to_string);
    json!({
        "id": k.id, "key": key, "name": k.name, "expires": rfc3339_or_zero(k.expires_at),
        "type": match k.kind { SetupKeyType::OneOff => "one-off", SetupKeyType::Reusable => "reusable" },
        "valid": state == SetupKeyState::Valid, "revoked": k.revoked, "used_times": k.used_times,
        "last_used": rfc3339_or_zero(k.last_used), "state": state.as_str(), "auto_groups": k.auto_groups,
        "updated_at": rfc3339_or_zero(k.updated_at), "usage_limit": k.usage_limit, "ephemeral": k.ephemeral,
        "allow_extra_dns_labels": k.allow_extra_dns_labels,
    })
}

/// `one-off`, `reusable`, and `one-time` (what the seed's backend sends) for one-off.
fn key_type(text: &str) -> Result<SetupKeyType, Error> {
    match text {
        "one-off" | "one-time" => Ok(SetupKeyType::OneOff),
        "reusable" => Ok(SetupKeyType::Reusable),
        other => invalid(format!(
            "unknown setup key type {other:?}: one-off (or one-time) or reusable"
        )),
    }
}

#[derive(Deserialize)]
struct NewSetupKey {
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    kind: String,
    /// Seconds; 0 or absent: never expires.
    #[serde(default)]
    expires_in: i64,
    /// Group ids or names.
    #[serde(default, deserialize_with = "null_as_default")]
    auto_groups: Vec<String>,
    #[serde(default)]
    usage_limit: i64,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    allow_extra_dns_labels: bool,
}

/// Longest expiry accepted: ten years.
const MAX_EXPIRES_IN: i64 = 10 * 365 * 24 * 3600;

pub(super) async fn create_setup_key(State(m): State<AppState>, body: Bytes) -> ApiResult {
    let n: NewSetupKey = parse(&body)?;
    let kind = key_type(&n.kind)?;
    if !(0..=MAX_EXPIRES_IN).contains(&n.expires_in) {
        return invalid(format!(
            "expires_in {} is not within 0-{MAX_EXPIRES_IN} seconds",
            n.expires_in
        ));
    }
    if n.usage_limit < 0 || n.usage_limit > u32::MAX as i64 {
        return invalid(format!("usage_limit {} is out of range", n.usage_limit));
    }
    if kind == SetupKeyType::OneOff && n.usage_limit > 1 {
        return invalid("a one-off key is used once: usage_limit must be 0 or 1");
    }
    let t = now();
    let secret = new_setup_key_secret();
    let shown = m.change(Initiator::Api, |a| {
        let mut key = SetupKey {
            id: new_id(),
            hashed_key: String::new(),
            key_prefix: String::new(),
            legacy_key: None,
            name: n.name,
            kind,
            created_at: t,
            expires_at: if n.expires_in == 0 {
                0
            } else {
                t + n.expires_in as u64
            },
            updated_at: t,
            last_used: 0,
            revoked: false,
            used_times: 0,
            usage_limit: if kind == SetupKeyType::OneOff {
                1
            } else {
                n.usage_limit as u32
            },
            auto_groups: a.resolve_groups(&n.auto_groups, "auto_groups")?,
            ephemeral: n.ephemeral,
            allow_extra_dns_labels: n.allow_extra_dns_labels,
        };
        key.set_secret(&secret);
        let shown = setup_key_json(&key, Some(&secret));
        a.put_setup_key(key).map(|t| (shown, t))
    })?;
    ok(shown)
}

pub(super) async fn list_setup_keys(State(m): State<AppState>) -> ApiResult {
    ok(m.read(|a| {
        Value::Array(
            a.setup_keys
                .values()
                .map(|k| setup_key_json(k, None))
                .collect(),
        )
    }))
}

pub(super) async fn get_setup_key(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| a.setup_keys.get(&id).map(|k| setup_key_json(k, None)))
        .map_or_else(|| not_found("setup key", &id), ok)
}

#[derive(Deserialize)]
struct SetupKeyUpdate {
    #[serde(default)]
    revoked: bool,
    /// Required, as in NetBird: an update without it would silently empty the key's groups.
    #[serde(default)]
    auto_groups: Option<Vec<String>>,
    /// NetBird clients send the whole object back; these are accepted and must not change.
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

pub(super) async fn update_setup_key(
    State(m): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let u: SetupKeyUpdate = parse(&body)?;
    let Some(auto_groups) = u.auto_groups else {
        return invalid(
            "setup key auto_groups field is invalid: it is required (send [] to clear it)",
        );
    };
    let kind = u.kind.as_deref().map(key_type).transpose()?;
    let shown = m.change(Initiator::Api, |a| {
        let Some(mut k) = a.setup_keys.get(&id).cloned() else {
            return not_found("setup key", &id);
        };
        if u.name.as_ref().is_some_and(|n| *n != k.name) || kind.is_some_and(|t| t != k.kind) {
            return invalid("only revoked and auto_groups of a setup key can change");
        }
        if k.revoked && !u.revoked {
            return invalid("a revoked setup key cannot be reinstated");
        }
        k.revoked = u.revoked;
        k.auto_groups = a.resolve_groups(&auto_groups, "auto_groups")?;
        k.updated_at = now();
        let shown = setup_key_json(&k, None);
        a.put_setup_key(k).map(|t| (shown, t))
    })?;
    ok(shown)
}

pub(super) async fn delete_setup_key(
    State(m): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult {
    m.change(Initiator::Api, |a| a.delete_setup_key(&id).map(|t| ((), t)))?;
    ok(json!({}))
}
