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
