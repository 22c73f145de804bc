//! Priorities hold on every peer: random accounts with NetBird policies and prioritised ACLs, every
//! packet between every two peers judged twice — by a reference written here from the rules'
//! meaning (first level with a match decides, a drop wins within a level, no match is denied),
//! and by NetBird's client semantics (any matching drop drops, else any matching accept accepts,
//! else deny) over the FirewallRules in the destination peer's network map. The reference shares
//! nothing with the compiler but the account's data types.

use std::{collections::BTreeSet, net::Ipv4Addr};

use management::{
    model::*,
    netmap::{MapSettings, network_map},
};
use management_proto::pb;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

const PEERS: usize = 7;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const GRE: u8 = 47;

fn settings() -> MapSettings {
    MapSettings {
        network: "100.64.0.0/10".parse().unwrap(),
        dns_domain: "test".into(),
    }
}

fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, (i / 4) as u8, 1 + (i % 4) as u8 * 10)
}

/// Port choices rules are made of; the packets probe each bound and its neighbours.
const PORT_POOL: [(u16, u16); 7] = [
    (22, 22),
    (80, 80),
    (443, 443),
    (1000, 2000),
    (6900, 6900),
    (1, 65535),
    (1500, 7000),
];

fn random_ports(rng: &mut StdRng) -> Vec<PortRange> {
    let n = rng.random_range(0..3);
    (0..n)
        .map(|_| *PORT_POOL.choose(rng).unwrap())
        .map(|(start, end)| PortRange { start, end })
        .collect()
}

fn random_protocol(rng: &mut StdRng) -> RuleProtocol {
    *[
        RuleProtocol::All,
        RuleProtocol::Tcp,
        RuleProtocol::Udp,
        RuleProtocol::Icmp,
        RuleProtocol::NetbirdSsh,
    ]
    .choose(rng)
    .unwrap()
}

fn random_account(seed: u64) -> Account {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut a = Account::default();
    for i in 0..PEERS {
        let id = format!("p{i}");
        a.peers.insert(
            id.clone(),
            Peer {
                id: id.clone(),
                name: id.clone(),
                wg_pub_key: format!("key{i}"),
                ip: ip(i),
                dns_label: id,
                ..Peer::blank()
            },
        );
    }
    let peer_ids: Vec<String> = a.peers.keys().cloned().collect();
    for g in 0..4 {
        let members: Vec<String> = peer_ids
            .iter()
            .filter(|_| rng.random_bool(0.4))
            .cloned()
            .collect();
        a.groups.insert(
            format!("g{g}"),
            Group {
                id: format!("g{g}"),
                name: format!("g{g}"),
                peers: members,
                resources: vec![],
            },
        );
    }
    let group_ids: Vec<String> = a.groups.keys().cloned().collect();
    let action = |rng: &mut StdRng| {
        if rng.random_bool(0.5) {
            RuleAction::Accept
        } else {
            RuleAction::Drop
        }
    };
    for p in 0..rng.random_range(0..3) {
        let rules = (0..rng.random_range(1..3))
            .map(|r| {
                let protocol = random_protocol(&mut rng);
                let ports = if protocol.has_ports() {
                    random_ports(&mut rng)
                } else {
                    vec![]
                };
                PolicyRule {
                    id: format!("pol{p}r{r}"),
                    name: "r".into(),
                    description: String::new(),
                    enabled: rng.random_bool(0.9),
                    action: action(&mut rng),
                    bidirectional: rng.random_bool(0.3),
                    protocol,
                    ports: ports
                        .iter()
                        .filter(|r| r.start == r.end)
                        .map(|r| r.start)
                        .collect(),
                    port_ranges: ports.into_iter().filter(|r| r.start != r.end).collect(),
                    sources: vec![group_ids.choose(&mut rng).unwrap().clone()],
                    destinations: vec![group_ids.choose(&mut rng).unwrap().clone()],
                    source_resource: None,
                    destination_resource: None,
                    authorized_groups: Default::default(),
                }
            })
            .collect();
        a.policies.insert(
            format!("pol{p}"),
            Policy {
                id: format!("pol{p}"),
                name: "p".into(),
                description: String::new(),
                enabled: true,
                rules,
            },
        );
    }
    for x in 0..rng.random_range(1..4) {
        let rules = (0..rng.random_range(1..4))
            .map(|r| {
                let protocol = random_protocol(&mut rng);
                let some_peers = |rng: &mut StdRng| {
                    peer_ids
                        .iter()
                        .filter(|_| rng.random_bool(0.3))
                        .cloned()
                        .collect::<Vec<_>>()
                };
                let destination_ips = match rng.random_range(0..4) {
                    0 => vec!["100.64.0.0/10".parse().unwrap()],
                    1 => vec![ipnet::Ipv4Net::new(ip(rng.random_range(0..PEERS)), 32).unwrap()],
                    2 => vec!["100.64.1.0/24".parse().unwrap()],
                    _ => vec![],
                };
                AclRule {
                    id: format!("acl{x}r{r}"),
                    name: "r".into(),
                    description: String::new(),
                    enabled: rng.random_bool(0.9),
                    action: action(&mut rng),
                    protocol,
                    bidirectional: rng.random_bool(0.2),
                    ports: if protocol.has_ports() {
                        random_ports(&mut rng)
                    } else {
                        vec![]
                    },
                    priority: *[0u32, 0, 10, 500, 1000, 1000].choose(&mut rng).unwrap(),
                    source_peers: some_peers(&mut rng),
                    source_groups: if rng.random_bool(0.3) {
                        vec![group_ids.choose(&mut rng).unwrap().clone()]
                    } else {
                        vec![]
                    },
                    destination_peers: if rng.random_bool(0.3) {
                        some_peers(&mut rng)
                    } else {
                        vec![]
                    },
                    destination_groups: if rng.random_bool(0.2) {
                        vec![group_ids.choose(&mut rng).unwrap().clone()]
                    } else {
                        vec![]
                    },
                    destination_ips,
                }
            })
            .collect();
        let acl = Acl {
            id: format!("acl{x}"),
            name: "a".into(),
            description: String::new(),
            enabled: true,
            rules,
            metadata: Default::default(),
            expires_at: 0,
            auto_cleanup: false,
            created_at: 0,
        };
        a.acls.insert(acl.id.clone(), acl);
    }
    a
}

// ---- the reference: the rules' meaning, read off the account ----

fn members(a: &Account, groups: &[String]) -> BTreeSet<String> {
    groups
        .iter()
        .filter_map(|g| a.groups.get(g))
        .flat_map(|g| g.peers.iter().cloned())
        .collect()
}

/// (level, action, sources, destinations, bidirectional, protocol, ports) of every enabled rule.
type Rule = (
    u32,
    RuleAction,
    BTreeSet<String>,
    BTreeSet<String>,
    bool,
    RuleProtocol,
    Vec<PortRange>,
);

fn reference_rules(a: &Account) -> Vec<Rule> {
    let mut out = Vec::new();
    for p in a.policies.values().filter(|p| p.enabled) {
        for r in p.rules.iter().filter(|r| r.enabled) {
            let ports: Vec<PortRange> = r
                .ports
                .iter()
                .map(|p| PortRange { start: *p, end: *p })
                .chain(r.port_ranges.iter().copied())
                .collect();
            out.push((
                0,
                r.action,
                members(a, &r.sources),
                members(a, &r.destinations),
                r.bidirectional,
                r.protocol,
                ports,
            ));
        }
    }
    for x in a.acls.values().filter(|x| x.enabled) {
        for r in x.rules.iter().filter(|r| r.enabled) {
            let mut sources = members(a, &r.source_groups);
            sources.extend(r.source_peers.iter().cloned());
            let mut destinations = members(a, &r.destination_groups);
            destinations.extend(r.destination_peers.iter().cloned());
            destinations.extend(
                a.peers
                    .values()
                    .filter(|p| r.destination_ips.iter().any(|n| n.contains(&p.ip)))
                    .map(|p| p.id.clone()),
            );
            out.push((
                r.priority,
                r.action,
                sources,
                destinations,
                r.bidirectional,
                r.protocol,
                r.ports.clone(),
            ));
        }
    }
    out
}

fn rule_matches(r: &Rule, from: &str, to: &str, proto: u8, port: u16) -> bool {
    let (_, _, s, d, bidi, protocol, ports) = r;
    let ends =
        (s.contains(from) && d.contains(to)) || (*bidi && d.contains(from) && s.contains(to));
    let in_ports = |ports: &[PortRange]| {
        ports.is_empty() || ports.iter().any(|r| r.start <= port && port <= r.end)
    };
    ends && match protocol {
        RuleProtocol::All => true,
        RuleProtocol::Tcp => proto == TCP && in_ports(ports),
        RuleProtocol::Udp => proto == UDP && in_ports(ports),
        RuleProtocol::Icmp => proto == ICMP,
        RuleProtocol::NetbirdSsh => proto == TCP && port == NETBIRD_SSH_PORT,
    }
}

fn reference_verdict(rules: &[Rule], from: &str, to: &str, proto: u8, port: u16) -> bool {
    let matching: Vec<&Rule> = rules
        .iter()
        .filter(|r| rule_matches(r, from, to, proto, port))
        .collect();
    let Some(level) = matching.iter().map(|r| r.0).min() else {
        return false;
    };
    !matching
        .iter()
        .any(|r| r.0 == level && r.1 == RuleAction::Drop)
}

// ---- a stock client: NetBird's semantics over the map's FirewallRules ----

fn wire_matches(r: &pb::FirewallRule, from: Ipv4Addr, proto: u8, port: u16) -> bool {
    let in_ports = || match (&r.port, r.port_info.as_ref().and_then(|p| p.port_selection)) {
        (p, _) if !p.is_empty() => p.parse::<u16>().unwrap() == port,
        (_, Some(pb::port_info::PortSelection::Range(range))) => {
            range.start <= port as u32 && port as u32 <= range.end
        }
        (_, Some(pb::port_info::PortSelection::Port(p))) => p == port as u32,
        (_, None) => true,
    };
    r.direction == pb::RuleDirection::In as i32
        && r.peer_ip == from.to_string()
        && match pb::RuleProtocol::try_from(r.protocol).unwrap() {
            pb::RuleProtocol::All => true,
            pb::RuleProtocol::Tcp => proto == TCP && in_ports(),
            pb::RuleProtocol::Udp => proto == UDP && in_ports(),
            pb::RuleProtocol::Icmp => proto == ICMP,
            other => panic!("the compiler wrote a rule a client cannot read: {other:?}"),
        }
}

fn client_verdict(map: &pb::NetworkMap, from: Ipv4Addr, proto: u8, port: u16) -> bool {
    let matching: Vec<&pb::FirewallRule> = map
        .firewall_rules
        .iter()
        .filter(|r| wire_matches(r, from, proto, port))
        .collect();
    !matching
        .iter()
        .any(|r| r.action == pb::RuleAction::Drop as i32)
        && matching
            .iter()
            .any(|r| r.action == pb::RuleAction::Accept as i32)
}

#[test]
fn compiled_maps_judge_every_packet_as_the_priorities_say() {
    let mut probe_ports: BTreeSet<u16> = [1, 65535, NETBIRD_SSH_PORT, NETBIRD_SSH_PORT - 1].into();
    for (s, e) in PORT_POOL {
        for p in [
            s.saturating_sub(1),
            s,
            s.saturating_add(1),
            e.saturating_sub(1),
            e,
            e.saturating_add(1),
        ] {
            probe_ports.insert(p.max(1));
        }
    }
    let mut cases = 0u64;
    let mut accepted = 0u64;
    let mut multi_level = 0u64;
    for seed in 0..150 {
        let a = random_account(seed);
        let rules = reference_rules(&a);
        if rules.iter().map(|r| r.0).collect::<BTreeSet<_>>().len() > 1 {
            multi_level += 1;
        }
        for to in a.peers.values() {
            let map = network_map(&a, &to.id, &settings()).unwrap();
            for from in a.peers.values().filter(|p| p.id != to.id) {
                let packets = probe_ports
                    .iter()
                    .flat_map(|p| [(TCP, *p), (UDP, *p)])
                    .chain([(ICMP, 0), (GRE, 0)]);
                for (proto, port) in packets {
                    let want = reference_verdict(&rules, &from.id, &to.id, proto, port);
                    let got = client_verdict(&map, from.ip, proto, port);
                    assert_eq!(
                        got, want,
                        "seed {seed}: {} -> {} proto {proto} port {port}: reference says {want}\nrules: {rules:#?}\nmap: {:#?}",
                        from.id, to.id, map.firewall_rules
                    );
                    cases += 1;
                    accepted += want as u64;
                }
            }
        }
    }
    // The run must have exercised both verdicts and many accounts with several levels.
    assert!(
        cases > 100_000 && accepted > cases / 50 && multi_level > 50,
        "cases {cases}, accepted {accepted}, multi-level accounts {multi_level}"
    );
}
