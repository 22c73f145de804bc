use super::*;
use gateway_policy::compile::{Limits, compile};
use pb::{RuleAction as A, RuleDirection as D, RuleProtocol as P};

const ME: &str = "100.64.0.1";
const MY_KEY: &str = "bXkta2V5";

fn map(firewall: Vec<pb::FirewallRule>, routes_fw: Vec<pb::RouteFirewallRule>) -> pb::NetworkMap {
    pb::NetworkMap {
        serial: 9,
        peer_config: Some(pb::PeerConfig {
            address: format!("{ME}/10"),
            ..Default::default()
        }),
        firewall_rules_is_empty: firewall.is_empty(),
        routes_firewall_rules_is_empty: routes_fw.is_empty(),
        firewall_rules: firewall,
        routes_firewall_rules: routes_fw,
        ..Default::default()
    }
}

fn fw(peer: &str, direction: D, action: A, protocol: P, port: &str) -> pb::FirewallRule {
    pb::FirewallRule {
        peer_ip: peer.into(),
        direction: direction as i32,
        action: action as i32,
        protocol: protocol as i32,
        port: port.into(),
        policy_id: b"p1".to_vec(),
        ..Default::default()
    }
}

fn route_fw(
    sources: &[&str],
    destination: &str,
    action: A,
    protocol: P,
    port: Option<u32>,
) -> pb::RouteFirewallRule {
    pb::RouteFirewallRule {
        source_ranges: sources.iter().map(|s| s.to_string()).collect(),
        action: action as i32,
        destination: destination.into(),
        protocol: protocol as i32,
        port_info: port.map(|p| pb::PortInfo {
            port_selection: Some(pb::port_info::PortSelection::Port(p)),
        }),
        policy_id: b"p2".to_vec(),
        route_id: "res:me".into(),
        ..Default::default()
    }
}

/// The verdict the compiled tables give one packet: true for accept.
fn verdict(t: &Translated, src: &str, dst: &str, proto: u8, dport: u16) -> bool {
    let c = compile(&t.policy, &Limits::default()).expect("compiles");
    c.lookup(src.parse().unwrap(), dst.parse().unwrap(), proto, dport)
        .judgement
        .action
        == Action::Accept
}

fn ok(m: &pb::NetworkMap) -> Translated {
    translate(m, None, MY_KEY).expect("translates")
}

#[test]
fn input_rules_allow_exactly_what_they_name_and_out_rules_are_skipped() {
    let t = ok(&map(
        vec![
            fw("100.64.0.7", D::In, A::Accept, P::Tcp, "22"),
            fw("100.64.0.8", D::Out, A::Accept, P::All, ""),
        ],
        vec![],
    ));
    assert_eq!(t.serial, 9);
    assert_eq!(t.own_address, ME.parse::<IpAddr>().unwrap());
    assert_eq!(
        t.policy.policies.len(),
        1,
        "OUT rules are covered by conntrack"
    );
    assert_eq!(t.policy.policies[0].name, "input:p1");
    assert!(verdict(&t, "100.64.0.7", ME, 6, 22));
    assert!(!verdict(&t, "100.64.0.7", ME, 6, 23), "other port");
    assert!(!verdict(&t, "100.64.0.7", ME, 17, 22), "other protocol");
    assert!(!verdict(&t, "100.64.0.9", ME, 6, 22), "other peer");
    assert!(
        !verdict(&t, "100.64.0.7", "198.18.10.10", 6, 22),
        "input rules do not open forwarding"
    );
    assert!(
        !verdict(&t, "100.64.0.8", ME, 1, 0),
        "the OUT rule opens nothing inbound"
    );
}

#[test]
fn drop_decides_before_accept_whatever_the_order() {
    let accept_all = fw("100.64.0.7", D::In, A::Accept, P::All, "");
    let drop_ssh = fw("100.64.0.7", D::In, A::Drop, P::Tcp, "22");
    for rules in [
        vec![accept_all.clone(), drop_ssh.clone()],
        vec![drop_ssh, accept_all],
    ] {
        let t = ok(&map(rules, vec![]));
        assert!(!verdict(&t, "100.64.0.7", ME, 6, 22));
        assert!(verdict(&t, "100.64.0.7", ME, 6, 80));
        assert!(verdict(&t, "100.64.0.7", ME, 1, 0));
    }
}

#[test]
fn empty_lists_follow_the_is_empty_flags() {
    // Flag set: really no rules, so default deny.
    let t = ok(&map(vec![], vec![]));
    assert!(t.policy.policies.is_empty());
    assert!(!verdict(&t, "100.64.0.7", ME, 6, 22));
    // Flag unset (an old server): allow-all input, and allow-all to the routes this peer serves.
    let mut legacy = map(vec![], vec![]);
    legacy.firewall_rules_is_empty = false;
    legacy.routes_firewall_rules_is_empty = false;
    legacy.routes = vec![
        pb::Route {
            id: "mine".into(),
            network: "198.18.10.0/24".into(),
            network_type: 1,
            peer: MY_KEY.into(),
            ..Default::default()
        },
        pb::Route {
            id: "theirs".into(),
            network: "198.18.20.0/24".into(),
            network_type: 1,
            peer: "other".into(),
            ..Default::default()
        },
        pb::Route {
            id: "domain".into(),
            network: "192.0.2.0/32".into(),
            network_type: 3,
            peer: MY_KEY.into(),
            ..Default::default()
        },
    ];
    let t = ok(&legacy);
    assert!(verdict(&t, "100.64.0.7", ME, 6, 22));
    assert!(verdict(&t, "100.64.0.7", "198.18.10.10", 17, 53));
    assert!(
        !verdict(&t, "100.64.0.7", "198.18.20.10", 17, 53),
        "a route another peer serves"
    );
    assert!(
        !verdict(&t, "100.64.0.7", "192.0.2.0", 17, 53),
        "domain routes are not addresses"
    );
}

#[test]
fn routes_this_peer_serves_with_masquerade_are_masqueraded() {
    let mut m = map(vec![], vec![]);
    let route = |id: &str, net: &str, kind: i64, peer: &str, masquerade: bool| pb::Route {
        id: id.into(),
        network: net.into(),
        network_type: kind,
        peer: peer.into(),
        masquerade,
        ..Default::default()
    };
    m.routes = vec![
        route("a", "198.18.10.0/24", 1, MY_KEY, true),
        route("a-again", "198.18.10.0/24", 1, MY_KEY, true),
        route("v6", "fd00:18::/64", 2, MY_KEY, true),
        route("plain", "198.18.30.0/24", 1, MY_KEY, false),
        route("theirs", "198.18.20.0/24", 1, "other", true),
        route("domain", "192.0.2.0/32", 3, MY_KEY, true),
    ];
    let t = ok(&m);
    let got: Vec<String> = t.masquerade.iter().map(|n| n.to_string()).collect();
    assert_eq!(got, ["198.18.10.0/24", "fd00:18::/64"]);
    // A masqueraded route's network must be an address range: a bad one rejects the map.
    m.routes = vec![route("bad", "nowhere", 1, MY_KEY, true)];
    let e = translate(&m, None, MY_KEY).unwrap_err().to_string();
    assert!(e.contains("Routes[0].Network"), "{e}");
}

#[test]
fn route_rules_police_forwarding() {
    let t = ok(&map(
        vec![],
        vec![route_fw(
            &["100.64.0.7/32", "100.64.1.0/24"],
            "198.18.10.10/32",
            A::Accept,
            P::Tcp,
            Some(5432),
        )],
    ));
    assert_eq!(t.policy.policies[0].name, "forward:p2");
    assert!(verdict(&t, "100.64.0.7", "198.18.10.10", 6, 5432));
    assert!(verdict(&t, "100.64.1.200", "198.18.10.10", 6, 5432));
    assert!(!verdict(&t, "100.64.0.8", "198.18.10.10", 6, 5432));
    assert!(!verdict(&t, "100.64.0.7", "198.18.10.11", 6, 5432));
    assert!(
        !verdict(&t, "100.64.0.7", ME, 6, 5432),
        "forward rules do not open input"
    );
    // NetBird's Range{0,0} is any port.
    let mut any = route_fw(
        &["100.64.0.7/32"],
        "198.18.10.0/24",
        A::Accept,
        P::Udp,
        None,
    );
    any.port_info = Some(pb::PortInfo {
        port_selection: Some(pb::port_info::PortSelection::Range(pb::port_info::Range {
            start: 0,
            end: 0,
        })),
    });
    let t = ok(&map(vec![], vec![any]));
    assert!(verdict(&t, "100.64.0.7", "198.18.10.99", 17, 9999));
}

#[test]
fn source_prefixes_take_precedence_over_peer_ip() {
    let mut r = fw("100.64.0.7", D::In, A::Accept, P::All, "");
    r.source_prefixes = vec![vec![100, 64, 2, 0, 24]];
    let t = ok(&map(vec![r], vec![]));
    assert!(verdict(&t, "100.64.2.77", ME, 17, 1));
    assert!(!verdict(&t, "100.64.0.7", ME, 17, 1));
}

#[test]
fn rules_the_data_plane_cannot_single_out_fail_closed() {
    let mut custom_accept = fw("100.64.0.7", D::In, A::Accept, P::Custom, "");
    custom_accept.custom_protocol = 47;
    let mut custom_drop = fw("100.64.0.8", D::In, A::Drop, P::Custom, "");
    custom_drop.custom_protocol = 47;
    let accept_8 = fw("100.64.0.8", D::In, A::Accept, P::Tcp, "80");
    let mut dynamic = route_fw(&["100.64.0.7/32"], "", A::Accept, P::All, None);
    dynamic.is_dynamic = true;
    dynamic.domains = vec!["example.com".into()];
    let t = ok(&map(
        vec![custom_accept, custom_drop, accept_8],
        vec![dynamic],
    ));
    assert_eq!(
        t.skipped,
        Skipped {
            dynamic_route_rules: 1,
            unsupported_accepts: 1
        }
    );
    assert!(
        !verdict(&t, "100.64.0.7", ME, 47, 0),
        "custom accept left out: denied"
    );
    assert!(
        !verdict(&t, "100.64.0.8", ME, 6, 80),
        "custom drop widened to all protocols"
    );
}

#[test]
fn malformed_maps_are_rejected_whole() {
    let good = fw("100.64.0.7", D::In, A::Accept, P::Tcp, "22");
    let cases: Vec<(pb::NetworkMap, &str)> = vec![
        (
            map(
                vec![
                    good.clone(),
                    fw("not-an-ip", D::In, A::Accept, P::Tcp, "22"),
                ],
                vec![],
            ),
            "FirewallRules[1].PeerIP",
        ),
        (
            map(
                vec![fw("100.64.0.7", D::In, A::Accept, P::Tcp, "http")],
                vec![],
            ),
            "FirewallRules[0].Port",
        ),
        (
            map(
                vec![fw("100.64.0.7", D::In, A::Accept, P::Tcp, "70000")],
                vec![],
            ),
            "FirewallRules[0].Port",
        ),
        (
            map(
                vec![pb::FirewallRule {
                    action: 7,
                    ..good.clone()
                }],
                vec![],
            ),
            "FirewallRules[0].action",
        ),
        (
            map(
                vec![pb::FirewallRule {
                    protocol: 0,
                    ..good.clone()
                }],
                vec![],
            ),
            "FirewallRules[0].protocol",
        ),
        (
            map(
                vec![pb::FirewallRule {
                    direction: 3,
                    ..good.clone()
                }],
                vec![],
            ),
            "FirewallRules[0].Direction",
        ),
        (
            map(
                vec![pb::FirewallRule {
                    source_prefixes: vec![vec![1, 2, 3]],
                    ..good.clone()
                }],
                vec![],
            ),
            "FirewallRules[0].sourcePrefixes",
        ),
        (
            map(
                vec![pb::FirewallRule {
                    source_prefixes: vec![vec![1, 2, 3, 4, 40]],
                    ..good.clone()
                }],
                vec![],
            ),
            "FirewallRules[0].sourcePrefixes",
        ),
        (
            map(
                vec![],
                vec![route_fw(
                    &["100.64.0.0/33"],
                    "198.18.10.0/24",
                    A::Accept,
                    P::All,
                    None,
                )],
            ),
            "routesFirewallRules[0].sourceRanges",
        ),
        (
            map(
                vec![],
                vec![route_fw(
                    &["100.64.0.7/32"],
                    "nowhere",
                    A::Accept,
                    P::All,
                    None,
                )],
            ),
            "routesFirewallRules[0].destination",
        ),
        (
            map(
                vec![],
                vec![route_fw(
                    &["100.64.0.7/32"],
                    "198.18.10.0/24",
                    A::Accept,
                    P::Tcp,
                    Some(0),
                )],
            ),
            "routesFirewallRules[0].PortInfo.port",
        ),
    ];
    for (m, field) in cases {
        match translate(&m, None, MY_KEY) {
            Err(MapError::BadRule { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected an error at {field}, got {other:?}"),
        }
    }
    let mut no_address = map(vec![good.clone()], vec![]);
    no_address.peer_config = None;
    assert_eq!(
        translate(&no_address, None, MY_KEY).unwrap_err(),
        MapError::NoAddress
    );
    // The address from Login fills in for a map without one.
    let login = pb::PeerConfig {
        address: "100.64.0.1/10".into(),
        ..Default::default()
    };
    assert!(translate(&no_address, Some(&login), MY_KEY).is_ok());
    let mut bad_address = map(vec![good], vec![]);
    bad_address.peer_config.as_mut().unwrap().address = "100.64.0.1".into();
    assert!(matches!(
        translate(&bad_address, None, MY_KEY),
        Err(MapError::BadAddress(_))
    ));
}

#[test]
fn rules_differing_only_in_source_merge_and_address_lists_are_shared() {
    // NetBird sends one rule per (peer, port): 20 peers x 3 ports become 3 policies.
    let mut rules = Vec::new();
    for peer in 0..20 {
        for port in ["22", "80", "443"] {
            rules.push(fw(
                &format!("100.64.1.{peer}"),
                D::In,
                A::Accept,
                P::Tcp,
                port,
            ));
        }
    }
    let t = ok(&map(rules, vec![]));
    assert_eq!(t.policy.policies.len(), 3);
    assert_eq!(
        t.policy.groups.len(),
        2,
        "one source list (shared by all three), one destination"
    );
    assert!(verdict(&t, "100.64.1.19", ME, 6, 443));
    assert!(!verdict(&t, "100.64.1.20", ME, 6, 443));
    // A different action or policy id keeps rules apart.
    let mut other = fw("100.64.1.1", D::In, A::Drop, P::Tcp, "22");
    other.policy_id = b"p9".to_vec();
    let t = ok(&map(
        vec![fw("100.64.1.1", D::In, A::Accept, P::Tcp, "22"), other],
        vec![],
    ));
    assert_eq!(t.policy.policies.len(), 2);
}

#[test]
fn the_map_gives_the_interface_its_addresses_mtu_and_peers() {
    let peer_key = |n: u8| management_proto::WgPublicKey::from_bytes([n; 32]).to_base64();
    let mut m = map(vec![], vec![]);
    let mut v6 = "fd00:1::7"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    v6.push(64);
    m.peer_config = Some(pb::PeerConfig {
        address: format!("{ME}/10"),
        address_v6: v6,
        mtu: 1400,
        ..Default::default()
    });
    m.remote_peers = vec![
        pb::RemotePeerConfig {
            wg_pub_key: peer_key(1),
            allowed_ips: vec!["100.64.0.2/32".into()],
            ..Default::default()
        },
        pb::RemotePeerConfig {
            wg_pub_key: peer_key(2),
            allowed_ips: vec!["100.64.0.3".into()],
            ..Default::default()
        },
    ];
    m.offline_peers = vec![pb::RemotePeerConfig {
        wg_pub_key: peer_key(3),
        allowed_ips: vec!["100.64.0.4/32".into()],
        ..Default::default()
    }];
    let t = translate(&m, None, MY_KEY).unwrap();
    assert_eq!(
        t.interface_addresses,
        vec![
            "100.64.0.1/10".parse::<IpNet>().unwrap(),
            "fd00:1::7/64".parse().unwrap()
        ]
    );
    assert_eq!(t.mtu, Some(1400));
    let peers: Vec<(String, Vec<String>)> = t
        .peers
        .specs()
        .map(|p| {
            (
                p.public_key.clone(),
                p.allowed_ips.iter().map(|a| a.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        peers,
        vec![
            (peer_key(1), vec!["100.64.0.2/32".to_string()]),
            (peer_key(2), vec!["100.64.0.3/32".to_string()])
        ],
        "offline peers are left out"
    );
    assert!(
        t.peers
            .specs()
            .all(|p| p.keepalive == Some(25) && p.endpoint.is_none())
    );

    // A peer list that cannot be applied rejects the whole map.
    let mut bad = m.clone();
    bad.remote_peers[1].allowed_ips = vec!["100.64.0.300/32".into()];
    assert!(matches!(
        translate(&bad, None, MY_KEY),
        Err(MapError::BadRule { .. })
    ));
    let mut bad = m.clone();
    bad.remote_peers[1].wg_pub_key = "short".into();
    assert!(matches!(
        translate(&bad, None, MY_KEY),
        Err(MapError::BadRule { .. })
    ));
    let mut bad = m;
    bad.peer_config.as_mut().unwrap().address_v6 = vec![0; 5];
    assert!(matches!(
        translate(&bad, None, MY_KEY),
        Err(MapError::BadRule { .. })
    ));
}

#[test]
fn input_rules_cover_the_ipv6_overlay_address_too() {
    let mut m = map(
        vec![
            fw("100.64.0.7", D::In, A::Accept, P::Icmp, ""),
            fw("fd00:1::7", D::In, A::Accept, P::Icmp, ""),
        ],
        vec![],
    );
    let mut v6 = "fd00:1::1"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .to_vec();
    v6.push(64);
    m.peer_config.as_mut().unwrap().address_v6 = v6;
    let t = ok(&m);
    assert!(verdict(&t, "100.64.0.7", ME, 1, 0));
    assert!(
        verdict(&t, "fd00:1::7", "fd00:1::1", 58, 0),
        "IPv6 to the IPv6 address"
    );
    assert!(
        !verdict(&t, "fd00:1::8", "fd00:1::1", 58, 0),
        "another IPv6 peer"
    );
    assert!(
        !verdict(&t, "fd00:1::7", "fd00:1::9", 58, 0),
        "another IPv6 destination"
    );
}
