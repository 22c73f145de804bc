//! `/api/peers`: peers that registered through gRPC Login, and peers an operator provisions
//! before any client runs (`POST`, the seed's backend workflow).
//!
//! A provisioned peer needs a WireGuard key. The operator may send the public half of a key the
//! workspace made itself (`public_key`); otherwise the server generates the pair and returns the
//! private half once, in the creation response (as a setup key is shown once), keeping only the
//! public half. The workspace then brings the peer up with that key (NetBird client:
//! `PrivateKey` in its config; this gateway: `wg.key` in its state directory) and logs in without
//! a setup key: the server already knows it by its public key.

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
};
use management_proto::{WgKey, WgPublicKey};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;
use crate::account::ProvisionedPeer;

fn peer_json(m: &Management, a: &Account, p: &Peer) -> Value {
    // The built-in All last: clients that read the first group (the seed's metrics loop) get
    // the one an operator chose.
    let mut member: Vec<&Group> = a
        .groups
        .values()
        .filter(|g| g.peers.contains(&p.id))
        .collect();
    member.sort_by_key(|g| g.name == crate::account::ALL_GROUP);
    let groups: Vec<Value> = member.iter().map(|g| group_ref(a, &g.id)).collect();
    let mut shown = json!({
        "id": p.id, "name": p.name, "ip": p.ip.to_string(), "connection_ip": p.connection_ip,
        "connected": m.is_connected(&p.id), "last_seen": rfc3339_or_zero(p.last_seen),
        "os": p.os, "kernel_version": p.kernel_version, "geoname_id": 0, "version": p.version,
        "groups": groups, "ssh_enabled": p.ssh_enabled, "user_id": "", "hostname": p.hostname,
        "ui_version": "", "dns_label": format!("{}.{}", p.dns_label, m.settings.dns_domain),
        "login_expiration_enabled": p.login_expiration_enabled, "login_expired": p.login_expired,
        "login_expiration": rfc3339(p.login_expires_at), "last_login": rfc3339_or_zero(p.last_login),
        "inactivity_expiration_enabled": p.inactivity_expiration_enabled, "approval_required": p.approval_required,
        "country_code": "", "city_name": "", "serial_number": p.serial_number, "extra_dns_labels": [],
        "ephemeral": p.ephemeral, "created_at": rfc3339_or_zero(p.created_at), "accessible_peers_count": 0,
        "public_key": p.wg_pub_key, "labels": p.labels,
    });
    // Omitted without an IPv6 overlay, as NetBird's.
    if let Some(v6) = p
        .ipv6
        .filter(|v6| a.network_v6.is_some_and(|n| n.contains(v6)))
    {
        shown["ipv6"] = Value::String(v6.to_string());
    }
    shown
}

/// `?name=` and `?ip=` are substring matches, as NetBird's.
pub(super) async fn list_peers(
    State(m): State<AppState>,
    Query(filter): Query<ListFilter>,
) -> ApiResult {
    ok(m.read(|a| {
        let wanted = |p: &&Peer| {
            filter
                .name
                .as_ref()
                .is_none_or(|n| p.name.contains(n.as_str()))
                && filter
                    .ip
                    .as_ref()
                    .is_none_or(|ip| p.ip.to_string().contains(ip.as_str()))
        };
        Value::Array(
            a.peers
                .values()
                .filter(wanted)
                .map(|p| peer_json(&m, a, p))
                .collect(),
        )
    }))
}

pub(super) async fn get_peer(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.read(|a| match a.peers.get(&id) {
        Some(p) => ok(peer_json(&m, a, p)),
        None => not_found("peer", &id),
    })
}

#[derive(Deserialize)]
struct NewPeer {
    #[serde(default)]
    name: String,
    #[serde(default)]
    host_name: String,
    /// Group ids or names.
    #[serde(default, deserialize_with = "null_as_default")]
    groups: Vec<String>,
    #[serde(default)]
    ssh_enabled: bool,
    #[serde(default)]
    login_expiration_enabled: bool,
    /// RFC 3339 (a naive time is UTC).
    #[serde(default)]
    login_expiration: Option<String>,
    #[serde(default)]
    approval_required: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    labels: std::collections::BTreeMap<String, String>,
    /// Base64 WireGuard public key; absent: the server generates the pair.
    #[serde(default)]
    public_key: Option<String>,
}

pub(super) async fn create_peer(State(m): State<AppState>, body: Bytes) -> ApiResult {
    let n: NewPeer = parse(&body)?;
    let login_expires_at = n
        .login_expiration
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| parse_time(s, "login_expiration"))
        .transpose()?
        .unwrap_or(0);
    if n.login_expiration_enabled && login_expires_at == 0 {
        return invalid("login_expiration_enabled needs login_expiration (an RFC 3339 time)");
    }
    let (public_key, private_key) = match n.public_key.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => match WgPublicKey::from_base64(k) {
            Ok(key) => (key.to_base64(), None),
            Err(e) => return invalid(format!("public_key: {e}")),
        },
        None => {
            let key = WgKey::generate();
            (key.public().to_base64(), Some(key.to_base64()))
        }
    };
    let request = ProvisionedPeer {
        name: n.name,
        hostname: n.host_name,
        wg_pub_key: public_key,
        groups: n.groups,
        ssh_enabled: n.ssh_enabled,
        login_expiration_enabled: n.login_expiration_enabled,
        login_expires_at,
        approval_required: n.approval_required,
        labels: n.labels,
    };
    let network = m.settings.network;
    let mut shown = m.change(Initiator::Api, |a| {
        let (peer, t) = a.provision_peer(request, network, now())?;
        Ok((peer_json(&m, a, &peer), t))
    })?;
    if let Some(private) = private_key {
        shown["private_key"] = Value::String(private);
    }
    ok(shown)
}

#[derive(Deserialize)]
struct PeerUpdate {
    #[serde(default)]
    name: String,
    #[serde(default)]
    ssh_enabled: bool,
    #[serde(default)]
    login_expiration_enabled: bool,
    #[serde(default)]
    inactivity_expiration_enabled: bool,
    #[serde(default)]
    approval_required: Option<bool>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    ipv6: Option<String>,
    /// Not in NetBird's PeerRequest: moving it forward renews an expired login.
    #[serde(default)]
    login_expiration: Option<String>,
    /// Not in NetBird's PeerRequest: absent keeps the labels.
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

pub(super) async fn update_peer(
    State(m): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let u: PeerUpdate = parse(&body)?;
    let network = m.settings.network;
    let ip = match u.ip.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match text.parse::<std::net::Ipv4Addr>() {
            Ok(ip) if network.contains(&ip) => Some(ip),
            Ok(ip) => return invalid(format!("ip {ip} is outside the overlay network {network}")),
            Err(_) => return invalid(format!("invalid IP address {text:?}")),
        },
    };
    let ipv6 = match u.ipv6.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match (text.parse::<std::net::Ipv6Addr>(), m.read(|a| a.network_v6)) {
            (Ok(ip), Some(n)) if n.contains(&ip) && ip != n.network() => Some(ip),
            (Ok(ip), Some(n)) => {
                return invalid(format!(
                    "ipv6 {ip} is not a host of the IPv6 overlay network {n}"
                ));
            }
            (Ok(_), None) => return invalid("this service has no IPv6 overlay"),
            (Err(_), _) => return invalid(format!("invalid IPv6 address {text:?}")),
        },
    };
    let expires = u
        .login_expiration
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| parse_time(s, "login_expiration"))
        .transpose()?;
    let at = now();
    m.change(Initiator::Api, |a| {
        let Some(mut p) = a.peers.get(&id).cloned() else {
            return not_found("peer", &id);
        };
        p.name = u.name;
        p.ssh_enabled = u.ssh_enabled;
        p.login_expiration_enabled = u.login_expiration_enabled;
        p.inactivity_expiration_enabled = u.inactivity_expiration_enabled;
        p.approval_required = u.approval_required.unwrap_or(p.approval_required);
        p.ip = ip.unwrap_or(p.ip);
        p.ipv6 = ipv6.or(p.ipv6);
        if let Some(t) = expires {
            p.login_expires_at = t;
        }
        if let Some(labels) = u.labels {
            p.labels = labels;
        }
        // Disabling expiry, or moving it into the future, renews the login.
        if !p.login_expiration_enabled || (p.login_expires_at != 0 && p.login_expires_at > at) {
            p.login_expired = false;
        }
        a.update_peer(p).map(|t| ((), t))
    })?;
    get_peer(State(m), Path(id)).await
}

pub(super) async fn delete_peer(State(m): State<AppState>, Path(id): Path<String>) -> ApiResult {
    m.change(Initiator::Api, |a| a.delete_peer(&id).map(|t| ((), t)))?;
    ok(json!({}))
}
