//! Hand-worked network maps for a small account:
//!
//! peers A 100.64.0.1 (group clients), B 100.64.0.2 (group servers), C 100.64.0.3 (no group),
//! R 100.64.0.4 (group routers, routes network "lan" with resource db 198.18.10.10/32 in group
//! db-res).

use super::*;
use pb::{RuleAction as A, RuleDirection as D, RuleProtocol as P};

fn settings() -> MapSettings {
    MapSettings {
        network: "100.64.0.0/10".parse().unwrap(),
        dns_domain: "test".into(),
    }
}

fn peer(id: &str, last_octet: u8) -> Peer {
    Peer {
        id: id.into(),
        name: id.into(),
        wg_pub_key: format!("key-{id}"),
        ip: std::net::Ipv4Addr::new(100, 64, 0, last_octet),
        hostname: id.into(),
        dns_label: id.to_lowercase(),
        ..Peer::blank()
    }
}

fn group(id: &str, peers: &[&str]) -> Group {
    Group {
        id: id.into(),
        name: id.into(),
        peers: peers.iter().map(|s| s.to_string()).collect(),
        resources: vec![],
    }
}

fn rule(
    sources: &[&str],
    destinations: &[&str],
    protocol: RuleProtocol,
    ports: &[u16],
) -> PolicyRule {
    PolicyRule {
        id: "rule".into(),
        name: "rule".into(),
        description: String::new(),
        enabled: true,
        action: RuleAction::Accept,
        bidirectional: false,
        protocol,
        ports: ports.to_vec(),
        port_ranges: vec![],
        sources: sources.iter().map(|s| s.to_string()).collect(),
        destinations: destinations.iter().map(|s| s.to_string()).collect(),
        source_resource: None,
        destination_resource: None,
        authorized_groups: Default::default(),
    }
}

fn account(rules: Vec<PolicyRule>) -> Account {
    let mut a = Account::default();
    for (id, n) in [("A", 1), ("B", 2), ("C", 3), ("R", 4)] {
        a.peers.insert(id.into(), peer(id, n));
    }
    for g in [
        group("clients", &["A"]),
        group("servers", &["B"]),
        group("routers", &["R"]),
    ] {
        a.groups.insert(g.id.clone(), g);
    }
    let mut db = group("db-res", &[]);
    db.resources.push(ResourceRef {
        id: "db".into(),
        kind: ResourceKind::Host,
    });
    a.groups.insert(db.id.clone(), db);
    a.networks.insert(
        "lan".into(),
        Network {
            id: "lan".into(),
            name: "lan".into(),
            description: String::new(),
        },
    );
    a.resources.insert(
        "db".into(),
        NetworkResource {
            id: "db".into(),
            network_id: "lan".into(),
            name: "db".into(),
            description: String::new(),
            address: "198.18.10.10".into(),
            parsed: ResourceAddress::Prefix("198.18.10.10/32".parse().unwrap()),
            enabled: true,
        },
    );
    a.routers.insert(
        "rt".into(),
        NetworkRouter {
            id: "rt".into(),
            network_id: "lan".into(),
            peer: None,
            peer_groups: vec!["routers".into()],
            metric: 100,
            masquerade: true,
            enabled: true,
        },
    );
    a.policies.insert(
        "pol".into(),
        Policy {
            id: "pol".into(),
            name: "pol".into(),
            description: String::new(),
            enabled: true,
            rules,
        },
    );
    a.serial = 42;
    a
}

fn fw(peer_ip: &str, direction: D, action: A, protocol: P, port: &str) -> pb::FirewallRule {
    pb::FirewallRule {
        peer_ip: peer_ip.into(),
        direction: direction as i32,
        action: action as i32,
        protocol: protocol as i32,
        port: port.into(),
        port_info: None,
        policy_id: b"rule".to_vec(),
        custom_protocol: 0,
        source_prefixes: if direction == D::In {
            vec![vec![
                100,
                64,
                0,
                peer_ip.rsplit('.').next().unwrap().parse().unwrap(),
                32,
            ]]
        } else {
            vec![]
        },
    }
}

fn map(a: &Account, id: &str) -> pb::NetworkMap {
    network_map(a, id, &settings()).unwrap()
}

fn remote_keys(m: &pb::NetworkMap) -> Vec<&str> {
    m.remote_peers
        .iter()
        .map(|p| p.wg_pub_key.as_str())
        .collect()
}

#[test]
fn one_way_rule_gives_destination_in_rules_and_source_out_rules() {
    let a = account(vec![rule(
        &["clients"],
        &["servers"],
        RuleProtocol::Tcp,
        &[22, 443],
    )]);
    let b = map(&a, "B");
    assert_eq!(b.serial, 42);
    assert_eq!(b.peer_config.as_ref().unwrap().address, "100.64.0.2/10");
    assert_eq!(b.peer_config.as_ref().unwrap().fqdn, "b.test");
    assert_eq!(
        b.firewall_rules,
        vec![
            fw("100.64.0.1", D::In, A::Accept, P::Tcp, "22"),
            fw("100.64.0.1", D::In, A::Accept, P::Tcp, "443")
        ]
    );
    assert_eq!(remote_keys(&b), vec!["key-A"]);
    assert_eq!(b.remote_peers[0].allowed_ips, vec!["100.64.0.1/32"]);
    assert!(
        !b.firewall_rules_is_empty && b.routes_firewall_rules_is_empty && !b.remote_peers_is_empty
    );

    let a_map = map(&a, "A");
    assert_eq!(
        a_map.firewall_rules,
        vec![
            fw("100.64.0.2", D::Out, A::Accept, P::Tcp, "22"),
            fw("100.64.0.2", D::Out, A::Accept, P::Tcp, "443")
        ]
    );
    assert_eq!(remote_keys(&a_map), vec!["key-B"]);

    // C is in no rule: nothing at all, and the flags say so.
    let c = map(&a, "C");
    assert!(c.firewall_rules.is_empty() && c.remote_peers.is_empty() && c.routes.is_empty());
    assert!(
        c.firewall_rules_is_empty && c.remote_peers_is_empty && c.routes_firewall_rules_is_empty
    );
}

#[test]
fn bidirectional_drop_ranges_and_any_port() {
    let mut r = rule(&["clients"], &["servers"], RuleProtocol::Udp, &[]);
    r.bidirectional = true;
    r.action = RuleAction::Drop;
    r.port_ranges = vec![PortRange {
        start: 5000,
        end: 5100,
    }];
    let mut icmp = rule(&["clients"], &["servers"], RuleProtocol::Icmp, &[]);
    icmp.id = "icmp".into();
    let a = account(vec![r, icmp]);
    let b = map(&a, "B");
    let range = Some(pb::PortInfo {
        port_selection: Some(pb::port_info::PortSelection::Range(pb::port_info::Range {
            start: 5000,
            end: 5100,
        })),
    });
    let mut udp_in = fw("100.64.0.1", D::In, A::Drop, P::Udp, "");
    udp_in.port_info = range;
    let mut udp_out = fw("100.64.0.1", D::Out, A::Drop, P::Udp, "");
    udp_out.port_info = range;
    let mut icmp_in = fw("100.64.0.1", D::In, A::Accept, P::Icmp, "");
    icmp_in.policy_id = b"icmp".to_vec(); // the rule's id, as NetBird fills PolicyID
    for want in [&udp_in, &udp_out, &icmp_in] {
        assert!(
            b.firewall_rules.contains(want),
            "missing {want:?} in {:#?}",
            b.firewall_rules
        );
    }
    assert_eq!(b.firewall_rules.len(), 3, "{:#?}", b.firewall_rules);
    // The source side of a bidirectional rule gets both directions too.
    let a_map = map(&a, "A");
    assert!(
        a_map
            .firewall_rules
            .iter()
            .any(|r| r.direction == D::In as i32 && r.protocol == P::Udp as i32)
    );
    assert!(
        a_map
            .firewall_rules
            .iter()
            .any(|r| r.direction == D::Out as i32 && r.protocol == P::Udp as i32)
    );
}

#[test]
fn disabled_policies_and_rules_and_self_rules_produce_nothing() {
    let mut off = rule(&["clients"], &["servers"], RuleProtocol::All, &[]);
    off.enabled = false;
    let a = account(vec![off]);
    assert!(map(&a, "B").firewall_rules_is_empty);
    let mut a = account(vec![rule(
        &["clients"],
        &["servers"],
        RuleProtocol::All,
        &[],
    )]);
    a.policies.get_mut("pol").unwrap().enabled = false;
    assert!(map(&a, "B").firewall_rules_is_empty);
    // A peer in both ends gets no rule about itself.
    let mut a = account(vec![rule(
        &["clients"],
        &["clients"],
        RuleProtocol::All,
        &[],
    )]);
    a.groups.get_mut("clients").unwrap().peers.push("C".into());
    let m = map(&a, "A");
    assert!(
        m.firewall_rules.iter().all(|r| r.peer_ip == "100.64.0.3"),
        "{:#?}",
        m.firewall_rules
    );
    assert_eq!(remote_keys(&m), vec!["key-C"]);
    assert!(network_map(&a, "nobody", &settings()).is_none());
}

#[test]
fn network_resource_routes_and_route_firewall_rules() {
    let a = account(vec![rule(
        &["clients"],
        &["db-res"],
        RuleProtocol::Tcp,
        &[5432],
    )]);
    let r = map(&a, "R");
    let route = pb::Route {
        id: "db:R".into(),
        network: "198.18.10.10/32".into(),
        network_type: 1,
        peer: "key-R".into(),
        metric: 100,
        masquerade: true,
        net_id: "db".into(),
        domains: vec![],
        keep_route: true,
        skip_auto_apply: false,
    };
    assert_eq!(r.routes, vec![route.clone()]);
    assert_eq!(
        r.routes_firewall_rules,
        vec![pb::RouteFirewallRule {
            source_ranges: vec!["100.64.0.1/32".into()],
            action: A::Accept as i32,
            destination: "198.18.10.10/32".into(),
            protocol: P::Tcp as i32,
            port_info: Some(pb::PortInfo {
                port_selection: Some(pb::port_info::PortSelection::Port(5432))
            }),
            is_dynamic: false,
            domains: vec![],
            custom_protocol: 0,
            policy_id: b"pol".to_vec(),
            route_id: "db:R".into(),
        }]
    );
    assert!(!r.routes_firewall_rules_is_empty && r.firewall_rules_is_empty);
    assert_eq!(
        remote_keys(&r),
        vec!["key-A"],
        "the router talks to the resource's clients"
    );

    // The client gets the route through R and R as a peer; it enforces nothing itself.
    let c = map(&a, "A");
    assert_eq!(c.routes, vec![route]);
    assert_eq!(remote_keys(&c), vec!["key-R"]);
    assert!(c.routes_firewall_rules_is_empty);

    // Without a policy naming the resource, nobody gets a route.
    let none = account(vec![rule(
        &["clients"],
        &["servers"],
        RuleProtocol::Tcp,
        &[1],
    )]);
    assert!(map(&none, "R").routes.is_empty() && map(&none, "A").routes.is_empty());

    // A disabled router or resource takes the route away.
    let mut off = a.clone();
    off.routers.get_mut("rt").unwrap().enabled = false;
    assert!(map(&off, "R").routes.is_empty() && map(&off, "A").routes.is_empty());
    let mut off = a.clone();
    off.resources.get_mut("db").unwrap().enabled = false;
    assert!(map(&off, "R").routes_firewall_rules_is_empty);
}

#[test]
fn domain_resources_become_dynamic_routes() {
    let mut a = account(vec![rule(
        &["clients"],
        &["db-res"],
        RuleProtocol::All,
        &[],
    )]);
    let db = a.resources.get_mut("db").unwrap();
    db.address = "*.corp.example".into();
    db.parsed = ResourceAddress::Domain("*.corp.example".into());
    let r = map(&a, "R");
    assert_eq!(r.routes[0].network_type, 3);
    assert_eq!(r.routes[0].network, DOMAIN_ROUTE_NETWORK);
    assert_eq!(r.routes[0].domains, vec!["*.corp.example"]);
    assert!(r.routes_firewall_rules[0].is_dynamic);
    assert_eq!(r.routes_firewall_rules[0].domains, vec!["*.corp.example"]);
}

/// Source and destination resources name single peers directly.
#[test]
fn peer_resources_in_rules() {
    let mut r = rule(&[], &[], RuleProtocol::Tcp, &[80]);
    r.source_resource = Some(ResourceRef {
        id: "C".into(),
        kind: ResourceKind::Peer,
    });
    r.destination_resource = Some(ResourceRef {
        id: "B".into(),
        kind: ResourceKind::Peer,
    });
    let a = account(vec![r]);
    assert_eq!(
        map(&a, "B").firewall_rules,
        vec![fw("100.64.0.3", D::In, A::Accept, P::Tcp, "80")]
    );
    assert!(map(&a, "A").firewall_rules_is_empty);
}

/// The account with an IPv6 overlay: A ::a, B ::b, R ::4 announce it; C has an address but
/// did not announce the capability.
fn v6_account(rules: Vec<PolicyRule>) -> Account {
    let mut a = account(rules);
    a.network_v6 = Some("fd00:1:2:3::/64".parse().unwrap());
    for (id, suffix, supports) in [
        ("A", "a", true),
        ("B", "b", true),
        ("C", "c", false),
        ("R", "4", true),
    ] {
        let p = a.peers.get_mut(id).unwrap();
        p.ipv6 = Some(format!("fd00:1:2:3::{suffix}").parse().unwrap());
        p.supports_ipv6 = supports;
    }
    a
}

fn v6_bytes(text: &str, len: u8) -> Vec<u8> {
    let mut b = text
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    b.push(len);
    b
}

#[test]
fn ipv6_overlay_reaches_peers_that_take_it() {
    let a = v6_account(vec![rule(
        &["clients"],
        &["servers"],
        RuleProtocol::Tcp,
        &[22],
    )]);
    let b = map(&a, "B");
    assert_eq!(
        b.peer_config.as_ref().unwrap().address_v6,
        v6_bytes("fd00:1:2:3::b", 64)
    );
    assert_eq!(
        b.remote_peers[0].allowed_ips,
        vec!["100.64.0.1/32", "fd00:1:2:3::a/128"]
    );
    let mut v6_in = fw("100.64.0.1", D::In, A::Accept, P::Tcp, "22");
    v6_in.peer_ip = "fd00:1:2:3::a".into();
    v6_in.source_prefixes = vec![v6_bytes("fd00:1:2:3::a", 128)];
    assert_eq!(
        b.firewall_rules,
        vec![fw("100.64.0.1", D::In, A::Accept, P::Tcp, "22"), v6_in]
    );
    let a_map = map(&a, "A");
    let mut v6_out = fw("100.64.0.2", D::Out, A::Accept, P::Tcp, "22");
    v6_out.peer_ip = "fd00:1:2:3::b".into();
    assert_eq!(
        a_map.firewall_rules,
        vec![fw("100.64.0.2", D::Out, A::Accept, P::Tcp, "22"), v6_out]
    );

    // A peer that did not announce the capability gets IPv4 only, whoever it talks to.
    let mut quiet = a.clone();
    quiet.peers.get_mut("B").unwrap().supports_ipv6 = false;
    let b = map(&quiet, "B");
    assert!(b.peer_config.as_ref().unwrap().address_v6.is_empty());
    assert_eq!(b.remote_peers[0].allowed_ips, vec!["100.64.0.1/32"]);
    assert_eq!(
        b.firewall_rules,
        vec![fw("100.64.0.1", D::In, A::Accept, P::Tcp, "22")]
    );
    // Its address still reaches those that take IPv6 (NetBird's condition is the address).
    assert_eq!(map(&quiet, "A").firewall_rules.len(), 2);
    // Without an IPv6 overlay nobody gets IPv6, addresses or not.
    let mut off = a.clone();
    off.network_v6 = None;
    for id in ["A", "B"] {
        let m = map(&off, id);
        assert!(m.peer_config.as_ref().unwrap().address_v6.is_empty());
        assert!(
            m.firewall_rules.iter().all(|r| !r.peer_ip.contains(':')),
            "{id}: {:#?}",
            m.firewall_rules
        );
    }
}

#[test]
fn routed_resources_get_sources_of_their_own_family() {
    let route_rules = |a: &Account| -> Vec<(String, Vec<String>)> {
        map(a, "R")
            .routes_firewall_rules
            .iter()
            .map(|r| (r.destination.clone(), r.source_ranges.clone()))
            .collect()
    };
    let set = |a: &mut Account, address: &str| {
        let db = a.resources.get_mut("db").unwrap();
        db.address = address.into();
        db.parsed = crate::account::parse_resource_address(address).unwrap();
    };
    let mut a = v6_account(vec![rule(
        &["clients"],
        &["db-res"],
        RuleProtocol::Tcp,
        &[443],
    )]);
    // An IPv6 resource: the clients' IPv6 overlay addresses, never IPv4 ones.
    set(&mut a, "2001:db8:5::/64");
    assert_eq!(
        route_rules(&a),
        vec![(
            "2001:db8:5::/64".to_string(),
            vec!["fd00:1:2:3::a/128".to_string()]
        )]
    );
    // A router that takes no IPv6, or clients without an IPv6 address: no rule, so denied.
    let mut no_v6_router = a.clone();
    no_v6_router.peers.get_mut("R").unwrap().supports_ipv6 = false;
    assert!(
        route_rules(&no_v6_router).is_empty()
            && map(&no_v6_router, "R").routes_firewall_rules_is_empty
    );
    let mut no_v6_client = a.clone();
    no_v6_client.peers.get_mut("A").unwrap().ipv6 = None;
    assert!(route_rules(&no_v6_client).is_empty());
    // An IPv4 resource: IPv4 sources only.
    set(&mut a, "198.18.10.0/24");
    assert_eq!(
        route_rules(&a),
        vec![(
            "198.18.10.0/24".to_string(),
            vec!["100.64.0.1/32".to_string()]
        )]
    );
    // A domain, and the IPv4 default route, get an IPv6 counterpart.
    set(&mut a, "*.corp.example");
    let rules = map(&a, "R").routes_firewall_rules;
    let sources: BTreeSet<Vec<String>> = rules.iter().map(|r| r.source_ranges.clone()).collect();
    assert_eq!(
        sources,
        BTreeSet::from([
            vec!["100.64.0.1/32".to_string()],
            vec!["fd00:1:2:3::a/128".to_string()]
        ])
    );
    assert!(
        rules
            .iter()
            .all(|r| r.is_dynamic && r.domains == ["*.corp.example"])
    );
    set(&mut a, "0.0.0.0/0");
    let mut got = route_rules(&a);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("0.0.0.0/0".to_string(), vec!["100.64.0.1/32".to_string()]),
            ("::/0".to_string(), vec!["fd00:1:2:3::a/128".to_string()])
        ]
    );
}
