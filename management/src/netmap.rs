//! A peer's network map, computed from the account: the peers it may talk to, FirewallRules for
//! traffic to it (input), and, when it routes a network, Routes and RouteFirewallRules for traffic
//! through it (forward).
//!
//! For each enabled rule of each enabled policy, with S the rule's source peers and D its
//! destination peers:
//! - P in D: every s in S (not P) is a remote peer, with an IN rule from s (and, bidirectional, an
//!   OUT rule to s); P in S: every d in D is a remote peer with an OUT rule to d (and,
//!   bidirectional, an IN rule from d).
//! - Network resources among the destinations: a routing peer of the resource's network gets a
//!   Route it serves and a RouteFirewallRule from S's addresses to the resource; a peer in S gets a
//!   Route through each routing peer, which becomes its remote peer.
//! - Several ports become several rules (one per port, one per range); no ports means any port.
//! - The *IsEmpty flags say "really nothing", so clients never mistake an empty list for an old
//!   server's "allow everything".

use std::collections::{BTreeMap, BTreeSet, HashSet};

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use management_proto::pb;

use crate::model::*;

mod priority;
use priority::{Compiled, Grant, Proto};

/// Account-wide settings a network map needs besides the account itself.
#[derive(Clone, Debug)]
pub struct MapSettings {
    /// The overlay network addresses come from; its prefix length goes into PeerConfig.address.
    pub network: Ipv4Net,
    /// Peers' DNS names are `<dns_label>.<dns_domain>`.
    pub dns_domain: String,
}

/// NetBird's placeholder Network for a domain route (a TEST-NET-1 host; the domains are what count).
pub const DOMAIN_ROUTE_NETWORK: &str = "192.0.2.0/32";

const DIRECTION_IN: i32 = pb::RuleDirection::In as i32;
const DIRECTION_OUT: i32 = pb::RuleDirection::Out as i32;

fn pb_action(a: RuleAction) -> i32 {
    match a {
        RuleAction::Accept => pb::RuleAction::Accept as i32,
        RuleAction::Drop => pb::RuleAction::Drop as i32,
    }
}

fn pb_protocol(p: RuleProtocol) -> i32 {
    (match p {
        RuleProtocol::All => pb::RuleProtocol::All,
        RuleProtocol::Tcp | RuleProtocol::NetbirdSsh => pb::RuleProtocol::Tcp,
        RuleProtocol::Udp => pb::RuleProtocol::Udp,
        RuleProtocol::Icmp => pb::RuleProtocol::Icmp,
    }) as i32
}

fn proto_of(p: RuleProtocol) -> Proto {
    match p {
        RuleProtocol::All => Proto::All,
        RuleProtocol::Tcp | RuleProtocol::NetbirdSsh => Proto::Tcp,
        RuleProtocol::Udp => Proto::Udp,
        RuleProtocol::Icmp => Proto::Icmp,
    }
}

/// A policy rule between two peers: level 0, single ports and ranges together (`netbird-ssh`
/// is TCP to NetBird's SSH port).
fn policy_grant(rule: &PolicyRule) -> Grant<'_> {
    let ports = rule
        .ports
        .iter()
        .map(|p| PortRange { start: *p, end: *p })
        .chain(rule.port_ranges.iter().copied())
        .collect();
    Grant {
        rule_id: &rule.id,
        action: rule.action,
        proto: proto_of(rule.protocol),
        ports: ports_of(rule.protocol, ports),
        level: 0,
    }
}

fn acl_grant(rule: &AclRule) -> Grant<'_> {
    Grant {
        rule_id: &rule.id,
        action: rule.action,
        proto: proto_of(rule.protocol),
        ports: ports_of(rule.protocol, rule.ports.clone()),
        level: rule.priority,
    }
}

/// The ports a rule of `protocol` restricts: its own for TCP and UDP, NetBird's SSH port for
/// `netbird-ssh`, none (any) for the rest.
fn ports_of(protocol: RuleProtocol, ports: Vec<PortRange>) -> Vec<PortRange> {
    match protocol {
        RuleProtocol::NetbirdSsh => vec![PortRange {
            start: NETBIRD_SSH_PORT,
            end: NETBIRD_SSH_PORT,
        }],
        p if p.has_ports() => ports,
        _ => vec![],
    }
}

/// A rule as written: one wire rule per port selection.
fn as_written<'a>(g: &Grant<'a>) -> Vec<Compiled<'a>> {
    if g.ports.is_empty() || !matches!(g.proto, Proto::Tcp | Proto::Udp) {
        return vec![Compiled {
            rule_id: g.rule_id,
            action: g.action,
            proto: g.proto,
            ports: None,
        }];
    }
    g.ports
        .iter()
        .map(|r| Compiled {
            rule_id: g.rule_id,
            action: g.action,
            proto: g.proto,
            ports: Some(*r),
        })
        .collect()
}

/// The wire rule about the other peer at `ip`: a single port travels in `Port`, a range in
/// `PortInfo` (as NetBird writes them); `PolicyID` is the deciding rule's id, as NetBird's.
fn firewall_rule(ip: IpAddr, direction: i32, c: &Compiled) -> pb::FirewallRule {
    use pb::port_info::{PortSelection, Range};
    let (port, port_info) = match c.ports {
        None => (String::new(), None),
        Some(r) if r.start == r.end => (r.start.to_string(), None),
        Some(r) => (
            String::new(),
            Some(pb::PortInfo {
                port_selection: Some(PortSelection::Range(Range {
                    start: r.start as u32,
                    end: r.end as u32,
                })),
            }),
        ),
    };
    let protocol = match c.proto {
        Proto::All => pb::RuleProtocol::All,
        Proto::Tcp => pb::RuleProtocol::Tcp,
        Proto::Udp => pb::RuleProtocol::Udp,
        Proto::Icmp => pb::RuleProtocol::Icmp,
    };
    pb::FirewallRule {
        peer_ip: ip.to_string(),
        direction,
        action: pb_action(c.action),
        protocol: protocol as i32,
        port,
        port_info,
        policy_id: c.rule_id.as_bytes().to_vec(),
        custom_protocol: 0,
        source_prefixes: if direction == DIRECTION_IN {
            vec![host_prefix(ip)]
        } else {
            vec![]
        },
    }
}

/// The port selections a rule expands into: `None` is any port. Unlike NetBird, which uses the
/// ranges only when a rule has no single ports, both are expanded: the rule means all of them.
fn port_selections(rule: &PolicyRule) -> Vec<Option<pb::PortInfo>> {
    use pb::port_info::{PortSelection, Range};
    if !rule.protocol.has_ports() || (rule.ports.is_empty() && rule.port_ranges.is_empty()) {
        return vec![None];
    }
    let ports = rule.ports.iter().map(|p| PortSelection::Port(*p as u32));
    let ranges = rule.port_ranges.iter().map(|r| {
        PortSelection::Range(Range {
            start: r.start as u32,
            end: r.end as u32,
        })
    });
    ports
        .chain(ranges)
        .map(|s| {
            Some(pb::PortInfo {
                port_selection: Some(s),
            })
        })
        .collect()
}

/// An address and its prefix length as NetBird's wire packs them: 4 or 16 bytes, then one.
fn encode_prefix(ip: IpAddr, len: u8) -> Vec<u8> {
    let mut b = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    b.push(len);
    b
}

fn host_prefix(ip: IpAddr) -> Vec<u8> {
    encode_prefix(ip, if ip.is_ipv4() { 32 } else { 128 })
}

/// A peer's IPv6 overlay address, when the account has an IPv6 overlay and it is in it.
fn overlay_v6(peer: &Peer, network_v6: Option<Ipv6Net>) -> Option<Ipv6Addr> {
    peer.ipv6
        .filter(|a| network_v6.is_some_and(|n| n.contains(a)))
}

/// Whether `peer`'s own map carries IPv6: an address, and it announced the capability.
fn receives_v6(peer: &Peer, network_v6: Option<Ipv6Net>) -> bool {
    peer.supports_ipv6 && overlay_v6(peer, network_v6).is_some()
}

/// Who a rule's two ends are, resolved against the account.
struct RuleEnds<'a> {
    sources: BTreeSet<&'a str>,
    destinations: BTreeSet<&'a str>,
    /// Network resources among the destinations (enabled ones only).
    resources: BTreeSet<&'a str>,
}

struct Resolver<'a> {
    account: &'a Account,
    /// Peers by id: hashed, because every rule end and remote peer is looked up here.
    peers: std::collections::HashMap<&'a str, &'a Peer>,
    /// Enabled routers' peers per network id.
    routing_peers: BTreeMap<&'a str, Vec<(&'a str, &'a NetworkRouter)>>,
}

impl<'a> Resolver<'a> {
    fn new(account: &'a Account) -> Resolver<'a> {
        // Peers whose login expired or that await approval are in nobody's map.
        let peers: std::collections::HashMap<&str, &Peer> = account
            .peers
            .iter()
            .filter(|(_, p)| p.active())
            .map(|(id, p)| (id.as_str(), p))
            .collect();
        let mut routing_peers: BTreeMap<&str, Vec<(&str, &NetworkRouter)>> = BTreeMap::new();
        for router in account.routers.values().filter(|r| r.enabled) {
            let entry = routing_peers.entry(router.network_id.as_str()).or_default();
            if let Some(p) = &router.peer {
                entry.push((p.as_str(), router));
            }
            for g in &router.peer_groups {
                if let Some(g) = account.groups.get(g) {
                    entry.extend(g.peers.iter().map(|p| (p.as_str(), router)));
                }
            }
            entry.retain(|(p, _)| peers.contains_key(p));
        }
        Resolver {
            account,
            peers,
            routing_peers,
        }
    }

    fn group_peers(&self, groups: &'a [String], out: &mut BTreeSet<&'a str>) {
        for g in groups {
            if let Some(g) = self.account.groups.get(g) {
                out.extend(g.peers.iter().map(String::as_str));
                out.extend(
                    g.resources
                        .iter()
                        .filter(|r| r.kind == ResourceKind::Peer)
                        .map(|r| r.id.as_str()),
                );
            }
        }
    }

    fn ends(&self, rule: &'a PolicyRule) -> RuleEnds<'a> {
        let mut sources = BTreeSet::new();
        let mut destinations = BTreeSet::new();
        let mut resources = BTreeSet::new();
        self.group_peers(&rule.sources, &mut sources);
        self.group_peers(&rule.destinations, &mut destinations);
        for g in rule
            .destinations
            .iter()
            .filter_map(|g| self.account.groups.get(g))
        {
            resources.extend(
                g.resources
                    .iter()
                    .filter(|r| r.kind != ResourceKind::Peer)
                    .map(|r| r.id.as_str()),
            );
        }
        for (end, set) in [
            (&rule.source_resource, &mut sources),
            (&rule.destination_resource, &mut destinations),
        ] {
            if let Some(r) = end.as_ref().filter(|r| r.kind == ResourceKind::Peer) {
                set.insert(r.id.as_str());
            }
        }
        if let Some(r) = rule
            .destination_resource
            .as_ref()
            .filter(|r| r.kind != ResourceKind::Peer)
        {
            resources.insert(r.id.as_str());
        }
        sources.retain(|p| self.peers.contains_key(*p));
        destinations.retain(|p| self.peers.contains_key(*p));
        resources.retain(|r| {
            self.account
                .resources
                .get(*r)
                .is_some_and(|r| r.enabled && self.account.networks.contains_key(&r.network_id))
        });
        RuleEnds {
            sources,
            destinations,
            resources,
        }
    }

    /// An ACL rule's source and destination peers; destination_ips take every peer inside.
    fn acl_ends(&self, rule: &'a AclRule) -> (BTreeSet<&'a str>, BTreeSet<&'a str>) {
        let mut sources: BTreeSet<&str> = rule.source_peers.iter().map(String::as_str).collect();
        let mut destinations: BTreeSet<&str> =
            rule.destination_peers.iter().map(String::as_str).collect();
        self.group_peers(&rule.source_groups, &mut sources);
        self.group_peers(&rule.destination_groups, &mut destinations);
        if !rule.destination_ips.is_empty() {
            destinations.extend(
                self.peers
                    .values()
                    .filter(|p| rule.destination_ips.iter().any(|n| n.contains(&p.ip)))
                    .map(|p| p.id.as_str()),
            );
        }
        sources.retain(|p| self.peers.contains_key(*p));
        destinations.retain(|p| self.peers.contains_key(*p));
        (sources, destinations)
    }

    /// Whether `peer` can be in a rule end at all: cheap test before resolving the whole rule.
    fn may_involve(
        &self,
        rule: &PolicyRule,
        peer_groups: &HashSet<&str>,
        peer_id: &str,
        routed_networks: &HashSet<&str>,
    ) -> bool {
        let in_groups = |gs: &[String]| gs.iter().any(|g| peer_groups.contains(g.as_str()));
        let is_ref = |r: &Option<ResourceRef>| {
            r.as_ref()
                .is_some_and(|r| r.kind == ResourceKind::Peer && r.id == peer_id)
        };
        in_groups(&rule.sources)
            || in_groups(&rule.destinations)
            || is_ref(&rule.source_resource)
            || is_ref(&rule.destination_resource)
            || (!routed_networks.is_empty()
                && self
                    .destination_networks(rule)
                    .any(|n| routed_networks.contains(n)))
    }

    fn destination_networks<'b>(
        &'b self,
        rule: &'b PolicyRule,
    ) -> impl Iterator<Item = &'b str> + 'b {
        let from_groups = rule
            .destinations
            .iter()
            .filter_map(|g| self.account.groups.get(g))
            .flat_map(|g| g.resources.iter());
        from_groups
            .chain(rule.destination_resource.iter())
            .filter(|r| r.kind != ResourceKind::Peer)
            .filter_map(|r| self.account.resources.get(&r.id))
            .map(|r| r.network_id.as_str())
    }
}

fn route_for(resource: &NetworkResource, router_peer: &Peer, router: &NetworkRouter) -> pb::Route {
    let (network, network_type, domains) = match &resource.parsed {
        ResourceAddress::Prefix(IpNet::V4(n)) => (n.to_string(), 1, vec![]),
        ResourceAddress::Prefix(IpNet::V6(n)) => (n.to_string(), 2, vec![]),
        ResourceAddress::Domain(d) => (DOMAIN_ROUTE_NETWORK.to_string(), 3, vec![d.clone()]),
    };
    pb::Route {
        id: format!("{}:{}", resource.id, router_peer.id),
        network,
        network_type,
        peer: router_peer.wg_pub_key.clone(),
        metric: router.metric as i64,
        masquerade: router.masquerade,
        net_id: resource.name.clone(),
        domains,
        keep_route: true,
        skip_auto_apply: false,
    }
}

/// Builds the map as it stands at `account.serial`. `None` if the peer does not exist.
pub fn network_map<'a>(
    account: &'a Account,
    peer_id: &str,
    settings: &MapSettings,
) -> Option<pb::NetworkMap> {
    let me = account.peers.get(peer_id)?;
    let net6 = account.network_v6;
    if !me.active() {
        return Some(empty_map(account.serial, me, settings, net6));
    }
    // IPv6 goes to peers that take it (NetBird's includeIPv6), about peers that have an address.
    let with_v6 = receives_v6(me, net6);
    let resolver = Resolver::new(account);
    let my_groups: HashSet<&str> = account
        .groups
        .values()
        .filter(|g| g.peers.iter().any(|p| p == peer_id))
        .map(|g| g.id.as_str())
        .collect();
    let routed_networks: HashSet<&str> = resolver
        .routing_peers
        .iter()
        .filter(|(_, peers)| peers.iter().any(|(p, _)| *p == peer_id))
        .map(|(n, _)| *n)
        .collect();

    let mut remote: BTreeSet<&str> = BTreeSet::new();
    // What decides traffic between this peer and each other peer, per direction, in first-seen
    // order; written out below.
    let mut pairs: Vec<((&str, i32), Vec<Grant>)> = Vec::new();
    let mut pair_index: std::collections::HashMap<(&str, i32), usize> =
        std::collections::HashMap::new();
    let mut routes: BTreeMap<String, pb::Route> = BTreeMap::new();
    let mut route_rules: BTreeMap<Vec<u8>, pb::RouteFirewallRule> = BTreeMap::new();
    // Each source peer's overlay prefixes as route rules list them, written once: a routed
    // network's rules name thousands of sources, mostly the same peers rule after rule.
    let mut source_prefixes: std::collections::HashMap<&str, (String, Option<String>)> =
        std::collections::HashMap::new();

    let mut add_pairs = |others: &BTreeSet<&'a str>, direction: i32, grant: &Grant<'a>| {
        for other in others.iter().filter(|p| **p != peer_id) {
            let i = *pair_index.entry((*other, direction)).or_insert_with(|| {
                pairs.push(((*other, direction), Vec::new()));
                pairs.len() - 1
            });
            pairs[i].1.push(grant.clone());
        }
    };

    for policy in account.policies.values().filter(|p| p.enabled) {
        for rule in policy.rules.iter().filter(|r| r.enabled) {
            if !resolver.may_involve(rule, &my_groups, peer_id, &routed_networks) {
                continue;
            }
            let ends = resolver.ends(rule);
            let grant = policy_grant(rule);
            let in_src = ends.sources.contains(peer_id);
            let in_dst = ends.destinations.contains(peer_id);
            if in_dst {
                add_pairs(&ends.sources, DIRECTION_IN, &grant);
                if rule.bidirectional {
                    add_pairs(&ends.sources, DIRECTION_OUT, &grant);
                }
                remote.extend(ends.sources.iter().copied().filter(|p| *p != peer_id));
            }
            if in_src {
                add_pairs(&ends.destinations, DIRECTION_OUT, &grant);
                if rule.bidirectional {
                    add_pairs(&ends.destinations, DIRECTION_IN, &grant);
                }
                remote.extend(ends.destinations.iter().copied().filter(|p| *p != peer_id));
            }

            let ports = port_selections(rule);
            for resource in ends.resources.iter().map(|r| &account.resources[*r]) {
                let Some(routers) = resolver.routing_peers.get(resource.network_id.as_str()) else {
                    continue;
                };
                if let Some((_, router)) = routers.iter().find(|(p, _)| *p == peer_id) {
                    // This peer routes the resource: it serves the route and enforces who may use it.
                    let route = route_for(resource, me, router);
                    remote.extend(ends.sources.iter().copied().filter(|p| *p != peer_id));
                    let mut v4_sources = Vec::with_capacity(ends.sources.len());
                    let mut v6_sources = Vec::with_capacity(ends.sources.len());
                    for id in &ends.sources {
                        let Some(p) = resolver.peers.get(*id) else {
                            continue;
                        };
                        let (v4, v6) = source_prefixes.entry(*id).or_insert_with(|| {
                            (
                                format!("{}/32", p.ip),
                                overlay_v6(p, net6).map(|a| format!("{a}/128")),
                            )
                        });
                        v4_sources.push(v4.clone());
                        v6_sources.extend(v6.clone());
                    }
                    // Sources of the destination's family only, as NetBird: an IPv6 resource
                    // gets the sources' IPv6 overlay addresses, and nothing (denied) when this
                    // router takes no IPv6. A domain, or the IPv4 default route, also gets an
                    // IPv6 counterpart.
                    let (destination, is_dynamic, domains) = match &resource.parsed {
                        ResourceAddress::Prefix(n) => (n.to_string(), false, vec![]),
                        ResourceAddress::Domain(d) => (String::new(), true, vec![d.clone()]),
                    };
                    let mut families: Vec<(String, Vec<String>)> = Vec::new();
                    match &resource.parsed {
                        ResourceAddress::Prefix(IpNet::V6(_)) if with_v6 => {
                            families.push((destination, v6_sources))
                        }
                        ResourceAddress::Prefix(IpNet::V6(_)) => {}
                        ResourceAddress::Prefix(IpNet::V4(n)) if n.prefix_len() == 0 => {
                            families.push((destination, v4_sources));
                            if with_v6 {
                                families.push(("::/0".into(), v6_sources));
                            }
                        }
                        ResourceAddress::Prefix(IpNet::V4(_)) => {
                            families.push((destination, v4_sources))
                        }
                        ResourceAddress::Domain(_) => {
                            families.push((destination.clone(), v4_sources));
                            if with_v6 {
                                families.push((destination, v6_sources));
                            }
                        }
                    }
                    for (destination, mut sources) in families {
                        sources.sort();
                        sources.dedup();
                        if sources.is_empty() {
                            continue;
                        }
                        for sel in &ports {
                            let r = pb::RouteFirewallRule {
                                source_ranges: sources.clone(),
                                action: pb_action(rule.action),
                                destination: destination.clone(),
                                protocol: pb_protocol(rule.protocol),
                                port_info: *sel,
                                is_dynamic,
                                domains: domains.clone(),
                                custom_protocol: 0,
                                policy_id: policy.id.as_bytes().to_vec(),
                                route_id: route.id.clone(),
                            };
                            route_rules
                                .entry(prost::Message::encode_to_vec(&r))
                                .or_insert(r);
                        }
                    }
                    routes.insert(route.id.clone(), route);
                }
                if in_src {
                    // A client of the resource: a route through each of its routing peers.
                    for (router_peer, router) in routers.iter().filter(|(p, _)| *p != peer_id) {
                        let Some(rp) = resolver.peers.get(*router_peer) else {
                            continue;
                        };
                        let route = route_for(resource, rp, router);
                        routes.insert(route.id.clone(), route);
                        remote.insert(router_peer);
                    }
                }
            }
        }
    }

    for acl in account.acls.values().filter(|a| a.enabled) {
        for rule in acl.rules.iter().filter(|r| r.enabled) {
            let (sources, destinations) = resolver.acl_ends(rule);
            let (in_src, in_dst) = (sources.contains(peer_id), destinations.contains(peer_id));
            if !in_src && !in_dst {
                continue;
            }
            let grant = acl_grant(rule);
            if in_dst {
                add_pairs(&sources, DIRECTION_IN, &grant);
                if rule.bidirectional {
                    add_pairs(&sources, DIRECTION_OUT, &grant);
                }
                remote.extend(sources.iter().copied().filter(|p| *p != peer_id));
            }
            if in_src {
                add_pairs(&destinations, DIRECTION_OUT, &grant);
                if rule.bidirectional {
                    add_pairs(&destinations, DIRECTION_IN, &grant);
                }
                remote.extend(destinations.iter().copied().filter(|p| *p != peer_id));
            }
        }
    }

    let mut firewall: Vec<pb::FirewallRule> = Vec::new();
    for ((other, direction), grants) in &pairs {
        let peer = resolver.peers[*other];
        let single_level = grants.iter().all(|g| g.level == grants[0].level);
        // One level: NetBird's own semantics already; each rule as it is. Several: compiled.
        let compiled: Vec<Compiled> = if single_level {
            grants.iter().flat_map(as_written).collect()
        } else {
            priority::compile(grants)
        };
        let mut seen = HashSet::new();
        let compiled: Vec<Compiled> = compiled
            .into_iter()
            .filter(|c| seen.insert(c.clone()))
            .collect();
        for c in &compiled {
            firewall.push(firewall_rule(IpAddr::V4(peer.ip), *direction, c));
        }
        // The same rules about the other peer's IPv6 overlay address.
        if let Some(v6) = overlay_v6(peer, net6).filter(|_| with_v6) {
            for c in &compiled {
                firewall.push(firewall_rule(IpAddr::V6(v6), *direction, c));
            }
        }
    }
    let remote_peers: Vec<pb::RemotePeerConfig> = remote
        .iter()
        .filter_map(|id| resolver.peers.get(*id))
        .map(|p| pb::RemotePeerConfig {
            wg_pub_key: p.wg_pub_key.clone(),
            allowed_ips: std::iter::once(format!("{}/32", p.ip))
                .chain(
                    overlay_v6(p, net6)
                        .filter(|_| with_v6)
                        .map(|a| format!("{a}/128")),
                )
                .collect(),
            ssh_config: None,
            fqdn: format!("{}.{}", p.dns_label, settings.dns_domain),
            agent_version: p.version.clone(),
        })
        .collect();
    let firewall_rules = firewall;
    let routes_firewall_rules: Vec<pb::RouteFirewallRule> = route_rules.into_values().collect();
    Some(pb::NetworkMap {
        serial: account.serial,
        peer_config: Some(peer_config(me, settings, net6)),
        remote_peers_is_empty: remote_peers.is_empty(),
        remote_peers,
        routes: routes.into_values().collect(),
        dns_config: None,
        offline_peers: vec![],
        firewall_rules_is_empty: firewall_rules.is_empty(),
        firewall_rules,
        routes_firewall_rules_is_empty: routes_firewall_rules.is_empty(),
        routes_firewall_rules,
        forwarding_rules: vec![],
        ssh_auth: None,
    })
}

/// The map of a peer that may reach nobody: every list empty and said to be so.
pub fn empty_map(
    serial: u64,
    me: &Peer,
    settings: &MapSettings,
    network_v6: Option<Ipv6Net>,
) -> pb::NetworkMap {
    pb::NetworkMap {
        serial,
        peer_config: Some(peer_config(me, settings, network_v6)),
        remote_peers_is_empty: true,
        firewall_rules_is_empty: true,
        routes_firewall_rules_is_empty: true,
        ..Default::default()
    }
}

/// The peer's own configuration; `address_v6` (16 bytes and the range's prefix length) when its
/// map carries IPv6.
pub fn peer_config(
    peer: &Peer,
    settings: &MapSettings,
    network_v6: Option<Ipv6Net>,
) -> pb::PeerConfig {
    let address_v6 = match (receives_v6(peer, network_v6), peer.ipv6, network_v6) {
        (true, Some(a), Some(n)) => encode_prefix(IpAddr::V6(a), n.prefix_len()),
        _ => vec![],
    };
    pb::PeerConfig {
        address: format!("{}/{}", peer.ip, settings.network.prefix_len()),
        fqdn: format!("{}.{}", peer.dns_label, settings.dns_domain),
        address_v6,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
