//! The account model, shaped as NetBird's: peers, groups, policies with rules, setup keys, and
//! networks with resources and routers. Everything here is plain data that the store persists as
//! JSON; the rules that keep it consistent live in `account.rs`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch.
pub type UnixTime = u64;

pub fn now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
    /// Last successful Login.
    #[serde(default)]
    pub last_login: UnixTime,
    /// With `login_expiration_enabled`: when the peer's login stops being valid (0: never).
    #[serde(default)]
    pub login_expires_at: UnixTime,
    /// Set when `login_expires_at` passed: the peer is out of every map and its Login refused
    /// until an operator moves the expiry or disables it.
    #[serde(default)]
    pub login_expired: bool,
    /// Free-form operator labels (`POST /api/peers`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The address the peer's last Login came from.
    #[serde(default)]
    pub connection_ip: String,
    #[serde(default)]
    pub serial_number: String,
    /// IPv6 overlay address, when the service gives them (NetBird's IPv6 overlay).
    #[serde(default)]
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// The peer's last Login announced the IPv6 overlay capability without disabling IPv6:
    /// only then does its map carry IPv6 (NetBird's `SupportsIPv6`).
    #[serde(default)]
    pub supports_ipv6: bool,
}

impl Peer {
    /// A peer with every field empty, for filling in with struct update syntax.
    pub fn blank() -> Peer {
        Peer {
            id: String::new(),
            name: String::new(),
            wg_pub_key: String::new(),
            ip: Ipv4Addr::UNSPECIFIED,
            hostname: String::new(),
            os: String::new(),
            kernel_version: String::new(),
            version: String::new(),
            dns_label: String::new(),
            ephemeral: false,
            setup_key_id: String::new(),
            ssh_enabled: false,
            login_expiration_enabled: false,
            inactivity_expiration_enabled: false,
            approval_required: false,
            created_at: 0,
            last_seen: 0,
            last_login: 0,
            login_expires_at: 0,
            login_expired: false,
            labels: BTreeMap::new(),
            connection_ip: String::new(),
            serial_number: String::new(),
            ipv6: None,
            supports_ipv6: false,
        }
    }

    /// Its IPv6 overlay address when its map carries IPv6.
    pub fn ipv6_overlay(&self) -> Option<std::net::Ipv6Addr> {
        self.ipv6.filter(|_| self.supports_ipv6)
    }

    /// Whether the peer takes part in network maps: approved and with a valid login.
    pub fn active(&self) -> bool {
        !self.login_expired && !self.approval_required
    }
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
    /// NetBird's SSH server: TCP to port 22022 on the destination peers.
    #[serde(rename = "netbird-ssh")]
    NetbirdSsh,
}

/// NetBird's native SSH server port, which `netbird-ssh` rules open.
pub const NETBIRD_SSH_PORT: u16 = 22022;

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
    /// `netbird-ssh` rules: user group id → local user names. Stored and returned; this server
    /// has no users, so nothing maps them to SSH logins.
    #[serde(default)]
    pub authorized_groups: BTreeMap<String, Vec<String>>,
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
    /// base64(SHA-256(secret)), as NetBird stores it; the secret (an uppercase UUID) is shown
    /// once, when the key is created.
    #[serde(default)]
    pub hashed_key: String,
    /// The secret's first five characters, for the masked `key` the API shows.
    #[serde(default)]
    pub key_prefix: String,
    /// Only in databases written before keys were hashed: converted when the service opens.
    #[serde(default, rename = "key", skip_serializing_if = "Option::is_none")]
    pub legacy_key: Option<String>,
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
    #[serde(default)]
    pub allow_extra_dns_labels: bool,
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
            ResourceAddress::Prefix(p) if p.prefix_len() == p.max_prefix_len() => {
                ResourceKind::Host
            }
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
    pub acls: BTreeMap<String, Acl>,
    /// Raised on every change; network maps carry it as their Serial.
    pub serial: u64,
    /// The IPv6 overlay range (a ULA /64, NetBird's `NetV6`); `None`: no IPv6 overlay.
    pub network_v6: Option<ipnet::Ipv6Net>,
    /// What the change in progress did, for the activity log; `Management::change` takes it
    /// (with the change's objects, in one transaction), so it is empty between changes.
    pub journal: Vec<crate::activity::Record>,
}

/// An access list as the seed's backend writes it (`/api/acls`): rules over peers, groups and
/// overlay addresses, with priorities. NetBird has no such object; its clients only know
/// priority-free rules, so network maps carry ACLs compiled to rules with the same meaning
/// (netmap/priority.rs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Acl {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub rules: Vec<AclRule>,
    /// As the client sent it; `auto_cleanup` and `expires_at` in it are acted on.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// From `metadata.expires_at`: at this time the ACL stops applying (0: never).
    pub expires_at: UnixTime,
    /// From `metadata.auto_cleanup`: the ACL is deleted at its expiry (else only disabled).
    pub auto_cleanup: bool,
    pub created_at: UnixTime,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AclRule {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub action: RuleAction,
    pub protocol: RuleProtocol,
    pub bidirectional: bool,
    /// Destination ports; a single port is a range of one. Empty: every port.
    pub ports: Vec<PortRange>,
    /// Lower decides first; 0 (the default) is also the level of every NetBird policy.
    pub priority: u32,
    pub source_peers: Vec<String>,
    pub source_groups: Vec<String>,
    pub destination_peers: Vec<String>,
    pub destination_groups: Vec<String>,
    /// Overlay prefixes: every peer whose address is inside, now or later.
    pub destination_ips: Vec<ipnet::Ipv4Net>,
}
