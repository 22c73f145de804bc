//! The account model, shaped as NetBird's: peers, groups, policies with rules, setup keys, and
//! networks with resources and routers. Everything here is plain data that the store persists as
//! JSON; the rules that keep it consistent live in `account.rs`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch.
pub type UnixTime = u64;

pub fn now() -> UnixTime {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub id: String,
    pub name: String,
    /// Base64 WireGuard public key: the peer's identity on the gRPC side.
    pub wg_pub_key: String,
    /// Overlay address, allocated once and kept across logins.
    pub ip: Ipv4Addr,
    pub hostname: String,
    pub os: String,
    pub kernel_version: String,
    pub version: String,
    pub dns_label: String,
    pub ephemeral: bool,
    pub setup_key_id: String,
    pub ssh_enabled: bool,
    pub login_expiration_enabled: bool,
    pub inactivity_expiration_enabled: bool,
    pub approval_required: bool,
    pub created_at: UnixTime,
    /// Last time the peer logged in or its Sync stream closed.
    pub last_seen: UnixTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Peer,
    Host,
    Subnet,
    Domain,
}

/// A group member that is not a peer, or a rule's `sourceResource`/`destinationResource`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRef {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: ResourceKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// Peer ids.
    pub peers: Vec<String>,
    pub resources: Vec<ResourceRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Accept,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleProtocol {
    All,
    Tcp,
    Udp,
    Icmp,
}

impl RuleProtocol {
    /// Ports restrict only TCP and UDP.
    pub fn has_ports(self) -> bool {
        matches!(self, RuleProtocol::Tcp | RuleProtocol::Udp)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRule {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub action: RuleAction,
    pub bidirectional: bool,
    pub protocol: RuleProtocol,
    pub ports: Vec<u16>,
    pub port_ranges: Vec<PortRange>,
    /// Group ids.
    pub sources: Vec<String>,
    pub destinations: Vec<String>,
    pub source_resource: Option<ResourceRef>,
    pub destination_resource: Option<ResourceRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub rules: Vec<PolicyRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetupKeyType {
    OneOff,
    Reusable,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetupKey {
    pub id: String,
    /// The secret a peer presents (an uppercase UUID, as NetBird's).
    pub key: String,
    pub name: String,
    pub kind: SetupKeyType,
    pub created_at: UnixTime,
    /// 0: never expires.
    pub expires_at: UnixTime,
    pub updated_at: UnixTime,
    pub last_used: UnixTime,
    pub revoked: bool,
    pub used_times: u32,
    /// 0: unlimited (one-off keys always have 1).
    pub usage_limit: u32,
    pub auto_groups: Vec<String>,
    pub ephemeral: bool,
}

/// Why a setup key cannot register a peer now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupKeyState {
    Valid,
    Expired,
    Revoked,
    Overused,
}

impl SetupKeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            SetupKeyState::Valid => "valid",
            SetupKeyState::Expired => "expired",
            SetupKeyState::Revoked => "revoked",
            SetupKeyState::Overused => "overused",
        }
    }
}

impl SetupKey {
    pub fn state(&self, now: UnixTime) -> SetupKeyState {
        if self.revoked {
            SetupKeyState::Revoked
        } else if self.expires_at != 0 && now >= self.expires_at {
            SetupKeyState::Expired
        } else if self.usage_limit != 0 && self.used_times >= self.usage_limit {
            SetupKeyState::Overused
        } else {
            SetupKeyState::Valid
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub description: String,
}

/// What a resource's address turned out to be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ResourceAddress {
    /// A single IP (host) or a CIDR (subnet).
    Prefix(IpNet),
    /// `example.com` or `*.example.com`.
    Domain(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkResource {
    pub id: String,
    pub network_id: String,
    pub name: String,
    pub description: String,
    /// As the operator wrote it.
    pub address: String,
    pub parsed: ResourceAddress,
    pub enabled: bool,
}

impl NetworkResource {
    pub fn kind(&self) -> ResourceKind {
        match &self.parsed {
            ResourceAddress::Prefix(p) if p.prefix_len() == p.max_prefix_len() => ResourceKind::Host,
            ResourceAddress::Prefix(_) => ResourceKind::Subnet,
            ResourceAddress::Domain(_) => ResourceKind::Domain,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkRouter {
    pub id: String,
    pub network_id: String,
    /// Either one routing peer or groups of them.
    pub peer: Option<String>,
    pub peer_groups: Vec<String>,
    pub metric: u16,
    pub masquerade: bool,
    pub enabled: bool,
}

/// Everything one management service holds. Maps are ordered by id so that network maps and API
/// listings come out in a stable order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Account {
    pub peers: BTreeMap<String, Peer>,
    pub groups: BTreeMap<String, Group>,
    pub policies: BTreeMap<String, Policy>,
    pub setup_keys: BTreeMap<String, SetupKey>,
    pub networks: BTreeMap<String, Network>,
    pub resources: BTreeMap<String, NetworkResource>,
    pub routers: BTreeMap<String, NetworkRouter>,
    /// Raised on every change; network maps carry it as their Serial.
    pub serial: u64,
}
