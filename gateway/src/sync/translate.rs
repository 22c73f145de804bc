//! A NetBird network map → the gateway's policy, with the semantics of NetBird's Linux client:
//! - default deny for traffic from the tunnel, to the gateway itself (input) and through it
//!   (forward); return traffic passes by conntrack;
//! - FirewallRules of direction IN become input rules (destination: the gateway's own overlay
//!   addresses, IPv4 and IPv6); OUT rules are covered by state and skipped;
//! - RouteFirewallRules become forward rules (destination: the route's network);
//! - a drop decides before an accept (every rule gets the same priority, and at equal priority the
//!   compiler lets drops win);
//! - an empty rule list with its *IsEmpty flag unset comes from an old server and means allow-all
//!   (for forward: to the routes this peer serves).
//!
//! Anything malformed rejects the whole map, so the last good policy stays in force. Policies are
//! named `input:<policy id>` and `forward:<policy id>`, so per-policy counters stay one series per
//! NetBird policy.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use management_proto::pb;

use gateway_policy::{
    Action, DEFAULT_PRIORITY, Group, GroupRef, Policy, PolicySet, PortRange, PortSet, Protocol,
};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MapError {
    #[error("network map has no peerConfig.address")]
    NoAddress,
    #[error("peerConfig.address {0:?} is not an address with a prefix length")]
    BadAddress(String),
    #[error("{field}: {reason}")]
    BadRule { field: String, reason: String },
}

/// Where a value sits in the map, as `FirewallRules[3].PortInfo.range`. Written out only for an
/// error: a map of 25,000 rules would otherwise format a dozen names per rule.
#[derive(Clone, Copy)]
struct Field {
    list: &'static str,
    index: usize,
    path: [&'static str; 2],
}

impl Field {
    fn at(list: &'static str, index: usize) -> Field {
        Field {
            list,
            index,
            path: ["", ""],
        }
    }

    fn sub(mut self, name: &'static str) -> Field {
        let free = usize::from(!self.path[0].is_empty());
        self.path[free] = name;
        self
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.list, self.index)?;
        for name in self.path.iter().filter(|n| !n.is_empty()) {
            write!(f, ".{name}")?;
        }
        Ok(())
    }
}

fn bad(field: impl std::fmt::Display, reason: impl Into<String>) -> MapError {
    MapError::BadRule {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// What a translated map leaves out, for the log.
#[derive(Debug, Default, PartialEq)]
pub struct Skipped {
    /// Domain (dynamic) route rules: their addresses are resolved by DNS, not known here.
    pub dynamic_route_rules: usize,
    /// Accept rules for protocols the data plane cannot tell apart (custom, NetBird SSH).
    pub unsupported_accepts: usize,
}

#[derive(Debug)]
pub struct Translated {
    pub serial: u64,
    pub own_address: IpAddr,
    pub policy: PolicySet,
    pub skipped: Skipped,
    /// Networks of the routes this peer serves with `Masquerade` set: traffic from the overlay
    /// to them leaves the LAN with the gateway's address.
    pub masquerade: Vec<IpNet>,
    /// The WireGuard interface's addresses, with the overlay's prefix length (PeerConfig
    /// `address` and `address_v6`).
    pub interface_addresses: Vec<IpNet>,
    /// PeerConfig.mtu when the server sets one.
    pub mtu: Option<u32>,
    /// One WireGuard peer per RemotePeerConfig (offline peers are left out), checked whole.
    /// Their endpoints are learned from their handshakes.
    pub peers: gateway_wireguard::PeerSet,
}

/// What makes two rules one policy: everything but the source addresses. NetBird sends one rule
/// per (peer, port); merging them keeps the compiled policy (and its counters) per NetBird rule.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Shape {
    name: String,
    destination: Vec<IpNet>,
    action: Action,
    protocol: ProtocolKey,
    ports: Vec<PortRange>,
}

/// `Protocol` has no ordering; this mirrors it for use in a map key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ProtocolKey {
    All,
    Tcp,
    Udp,
    Icmp,
}

impl ProtocolKey {
    fn of(p: Protocol) -> ProtocolKey {
        match p {
            Protocol::All => ProtocolKey::All,
            Protocol::Tcp => ProtocolKey::Tcp,
            Protocol::Udp => ProtocolKey::Udp,
            Protocol::Icmp => ProtocolKey::Icmp,
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            ProtocolKey::All => Protocol::All,
            ProtocolKey::Tcp => Protocol::Tcp,
            ProtocolKey::Udp => Protocol::Udp,
            ProtocolKey::Icmp => Protocol::Icmp,
        }
    }
}

/// Collects rules merged by shape, then gives each distinct address list one group.
#[derive(Default)]
struct Builder {
    /// Shape → sources, in first-seen order.
    shapes: Vec<(Shape, Vec<IpNet>)>,
    index: std::collections::HashMap<Shape, usize>,
}

impl Builder {
    fn add(
        &mut self,
        name: String,
        src: Vec<IpNet>,
        dst: Vec<IpNet>,
        action: Action,
        protocol: Protocol,
        ports: PortSet,
    ) {
        let ports = match ports {
            PortSet::Any => vec![],
            PortSet::Ranges(r) => r,
        };
        let shape = Shape {
            name,
            destination: dst,
            action,
            protocol: ProtocolKey::of(protocol),
            ports,
        };
        match self.index.get(&shape) {
            Some(&i) => self.shapes[i].1.extend(src),
            None => {
                self.index.insert(shape.clone(), self.shapes.len());
                self.shapes.push((shape, src));
            }
        }
    }

    fn finish(self) -> PolicySet {
        let mut groups: BTreeMap<Vec<IpNet>, String> = BTreeMap::new();
        let mut group = |mut nets: Vec<IpNet>| {
            nets.sort();
            nets.dedup();
            let next = groups.len();
            GroupRef::Named(
                groups
                    .entry(nets)
                    .or_insert_with(|| format!("nets-{next}"))
                    .clone(),
            )
        };
        let mut policies = Vec::with_capacity(self.shapes.len());
        for (shape, sources) in self.shapes {
            policies.push(Policy {
                name: shape.name,
                enabled: true,
                description: String::new(),
                source_groups: vec![group(sources)],
                destination_groups: vec![group(shape.destination)],
                bidirectional: false,
                action: shape.action,
                protocol: shape.protocol.protocol(),
                ports: if shape.ports.is_empty() {
                    PortSet::Any
                } else {
                    PortSet::Ranges(shape.ports)
                },
                destination_ips: vec![],
                exceptions: vec![],
                priority: DEFAULT_PRIORITY,
            });
        }
        let groups = groups
            .into_iter()
            .map(|(members, name)| Group { name, members })
            .collect();
        PolicySet { groups, policies }
    }
}

fn action(value: i32, field: Field) -> Result<Action, MapError> {
    match pb::RuleAction::try_from(value) {
        Ok(pb::RuleAction::Accept) => Ok(Action::Accept),
        Ok(pb::RuleAction::Drop) => Ok(Action::Drop),
        Err(_) => Err(bad(field.sub("action"), format!("unknown action {value}"))),
    }
}

/// The data plane's protocol for a rule; `None`: a protocol it cannot tell apart.
fn protocol(value: i32, field: Field) -> Result<Option<Protocol>, MapError> {
    match pb::RuleProtocol::try_from(value) {
        Ok(pb::RuleProtocol::All) => Ok(Some(Protocol::All)),
        Ok(pb::RuleProtocol::Tcp) => Ok(Some(Protocol::Tcp)),
        Ok(pb::RuleProtocol::Udp) => Ok(Some(Protocol::Udp)),
        Ok(pb::RuleProtocol::Icmp) => Ok(Some(Protocol::Icmp)),
        Ok(pb::RuleProtocol::Custom | pb::RuleProtocol::NetbirdSsh) => Ok(None),
        Ok(pb::RuleProtocol::Unknown) | Err(_) => Err(bad(
            field.sub("protocol"),
            format!("unknown protocol {value}"),
        )),
    }
}

/// What the data plane enforces for a rule's protocol and ports; `None` leaves the rule out.
/// A drop of a protocol it cannot single out drops all of it (fail closed); such an accept is
/// left out (its traffic stays denied). Ports restrict only TCP and UDP.
fn enforceable(
    proto: Option<Protocol>,
    act: Action,
    ports: PortSet,
    skipped: &mut Skipped,
) -> Option<(Protocol, PortSet)> {
    let proto = match (proto, act) {
        (Some(p), _) => p,
        (None, Action::Drop) => Protocol::All,
        (None, Action::Accept) => {
            skipped.unsupported_accepts += 1;
            return None;
        }
    };
    let ports = if matches!(proto, Protocol::Tcp | Protocol::Udp) {
        ports
    } else {
        PortSet::Any
    };
    Some((proto, ports))
}

fn port_number(value: u32, field: Field) -> Result<u16, MapError> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(bad(field, format!("port {value} is not in 1-65535"))),
    }
}

fn ports(port: &str, info: Option<&pb::PortInfo>, field: Field) -> Result<PortSet, MapError> {
    use pb::port_info::PortSelection;
    if !port.is_empty() {
        let p: u32 = port
            .trim()
            .parse()
            .map_err(|_| bad(field.sub("Port"), format!("{port:?} is not a port")))?;
        let p = port_number(p, field.sub("Port"))?;
        return Ok(PortSet::from_ranges(vec![PortRange { start: p, end: p }]));
    }
    match info.and_then(|i| i.port_selection.as_ref()) {
        None => Ok(PortSet::Any),
        Some(PortSelection::Port(p)) => {
            let p = port_number(*p, field.sub("PortInfo").sub("port"))?;
            Ok(PortSet::from_ranges(vec![PortRange { start: p, end: p }]))
        }
        // NetBird servers send Range{0,0} for a TCP/UDP rule without ports.
        Some(PortSelection::Range(r)) if r.start == 0 && r.end == 0 => Ok(PortSet::Any),
        Some(PortSelection::Range(r)) => {
            let at = field.sub("PortInfo").sub("range");
            let (start, end) = (port_number(r.start, at)?, port_number(r.end, at)?);
            if start > end {
                return Err(bad(at, format!("{start}-{end} has start after end")));
            }
            Ok(PortSet::from_ranges(vec![PortRange { start, end }]))
        }
    }
}

/// A `sourcePrefixes` entry: 4 or 16 address bytes, then the prefix length.
fn source_prefix(bytes: &[u8], field: Field) -> Result<IpNet, MapError> {
    let err = |why: &str| bad(field, why.to_string());
    match bytes.len() {
        5 => {
            let a: [u8; 4] = bytes[..4].try_into().expect("length checked");
            Ipv4Net::new(a.into(), bytes[4])
                .map(|n| IpNet::V4(n.trunc()))
                .map_err(|_| err("IPv4 prefix length over 32"))
        }
        17 => {
            let a: [u8; 16] = bytes[..16].try_into().expect("length checked");
            Ipv6Net::new(a.into(), bytes[16])
                .map(|n| IpNet::V6(n.trunc()))
                .map_err(|_| err("IPv6 prefix length over 128"))
        }
        n => Err(err(&format!("{n} bytes; expected 5 (IPv4) or 17 (IPv6)"))),
    }
}

fn cidr(text: &str, field: Field) -> Result<IpNet, MapError> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    t.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| bad(field, format!("{text:?} is not a CIDR")))
}

/// The interface addresses from the PeerConfig: `address` (required) and `address_v6`.
fn own_addresses(config: Option<&pb::PeerConfig>) -> Result<Vec<IpNet>, MapError> {
    let config = config.ok_or(MapError::NoAddress)?;
    let address = Some(config.address.as_str())
        .filter(|a| !a.is_empty())
        .ok_or(MapError::NoAddress)?;
    let net: IpNet = address
        .parse()
        .map_err(|_| MapError::BadAddress(address.to_string()))?;
    let mut out = vec![net];
    if !config.address_v6.is_empty() {
        let b = &config.address_v6;
        if b.len() != 17 || b[16] > 128 {
            return Err(bad(
                "peerConfig.address_v6",
                format!(
                    "{} bytes, prefix {:?}: expected 16 address bytes and a prefix length up to 128",
                    b.len(),
                    b.last()
                ),
            ));
        }
        let a: [u8; 16] = b[..16].try_into().expect("length checked");
        out.push(IpNet::new(std::net::Ipv6Addr::from(a).into(), b[16]).expect("prefix checked"));
    }
    Ok(out)
}

fn remote_peers(map: &pb::NetworkMap) -> Result<Vec<gateway_wireguard::PeerSpec>, MapError> {
    map.remote_peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = Field::at("remotePeers", i).sub("allowedIps");
            let allowed_ips = p
                .allowed_ips
                .iter()
                .map(|a| cidr(a, field))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(gateway_wireguard::PeerSpec {
                public_key: p.wg_pub_key.clone(),
                allowed_ips,
                endpoint: None,
                keepalive: Some(gateway_wireguard::DEFAULT_KEEPALIVE_SECS),
            })
        })
        .collect()
}

/// Translates one network map. `login` is the PeerConfig from Login, used when the map has none;
/// `own_key` is this peer's public key (base64), which picks the routes it serves.
pub fn translate(
    map: &pb::NetworkMap,
    login: Option<&pb::PeerConfig>,
    own_key: &str,
) -> Result<Translated, MapError> {
    let peer_config = map.peer_config.as_ref().or(login);
    let interface_addresses = own_addresses(peer_config)?;
    let me = interface_addresses[0].addr();
    let peers = gateway_wireguard::PeerSet::check(&remote_peers(map)?, Some(own_key))
        .map_err(|e| bad("remotePeers", e.to_string()))?;
    let mtu = peer_config
        .map(|c| c.mtu)
        .filter(|m| *m > 0)
        .map(|m| m as u32);
    // Input rules protect every overlay address of this peer: the IPv4 one and, with an IPv6
    // overlay, the IPv6 one (a rule's IPv6 sources only ever meet the IPv6 address).
    let me_net: Vec<IpNet> = interface_addresses
        .iter()
        .map(|a| IpNet::from(a.addr()))
        .collect();
    let any = gateway_policy::any_nets();
    let mut b = Builder::default();
    let mut skipped = Skipped::default();

    for (i, r) in map.firewall_rules.iter().enumerate() {
        let field = Field::at("FirewallRules", i);
        let act = action(r.action, field)?;
        let Ok(direction) = pb::RuleDirection::try_from(r.direction) else {
            return Err(bad(
                field.sub("Direction"),
                format!("unknown direction {}", r.direction),
            ));
        };
        let sources = if r.source_prefixes.is_empty() {
            vec![cidr(&r.peer_ip, field.sub("PeerIP"))?]
        } else {
            r.source_prefixes
                .iter()
                .map(|p| source_prefix(p, field.sub("sourcePrefixes")))
                .collect::<Result<_, _>>()?
        };
        let ports = ports(&r.port, r.port_info.as_ref(), field)?;
        let proto = protocol(r.protocol, field)?;
        if direction == pb::RuleDirection::Out {
            continue;
        }
        let Some((proto, ports)) = enforceable(proto, act, ports, &mut skipped) else {
            continue;
        };
        b.add(
            format!("input:{}", String::from_utf8_lossy(&r.policy_id)),
            sources,
            me_net.clone(),
            act,
            proto,
            ports,
        );
    }
    if map.firewall_rules.is_empty() && !map.firewall_rules_is_empty {
        b.add(
            "input:allow-all (legacy server)".into(),
            any.clone(),
            me_net.clone(),
            Action::Accept,
            Protocol::All,
            PortSet::Any,
        );
    }

    for (i, r) in map.routes_firewall_rules.iter().enumerate() {
        let field = Field::at("routesFirewallRules", i);
        let act = action(r.action, field)?;
        let proto = protocol(r.protocol, field)?;
        let ports = ports("", r.port_info.as_ref(), field)?;
        if r.is_dynamic {
            skipped.dynamic_route_rules += 1;
            continue;
        }
        let sources: Vec<IpNet> = r
            .source_ranges
            .iter()
            .map(|s| cidr(s, field.sub("sourceRanges")))
            .collect::<Result<_, _>>()?;
        let destination = cidr(&r.destination, field.sub("destination"))?;
        let Some((proto, ports)) = enforceable(proto, act, ports, &mut skipped) else {
            continue;
        };
        if sources.is_empty() {
            continue;
        }
        b.add(
            format!("forward:{}", String::from_utf8_lossy(&r.policy_id)),
            sources,
            vec![destination],
            act,
            proto,
            ports,
        );
    }
    if map.routes_firewall_rules.is_empty() && !map.routes_firewall_rules_is_empty {
        for (i, route) in map
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.peer == own_key && (r.network_type == 1 || r.network_type == 2))
        {
            let destination = cidr(&route.network, Field::at("Routes", i).sub("Network"))?;
            b.add(
                format!("forward:allow-all {} (legacy server)", route.id),
                any.clone(),
                vec![destination],
                Action::Accept,
                Protocol::All,
                PortSet::Any,
            );
        }
    }
    let mut masquerade = Vec::new();
    for (i, route) in map.routes.iter().enumerate().filter(|(_, r)| {
        r.peer == own_key && r.masquerade && (r.network_type == 1 || r.network_type == 2)
    }) {
        let network = cidr(&route.network, Field::at("Routes", i).sub("Network"))?;
        if !masquerade.contains(&network) {
            masquerade.push(network);
        }
    }
    Ok(Translated {
        serial: map.serial,
        own_address: me,
        policy: b.finish(),
        skipped,
        masquerade,
        interface_addresses,
        mtu,
        peers,
    })
}

#[cfg(test)]
mod tests;
