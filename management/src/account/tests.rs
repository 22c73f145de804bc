use super::*;

const NET: &str = "100.64.0.0/10";

fn key(
    kind: SetupKeyType,
    usage_limit: u32,
    expires_at: UnixTime,
    auto_groups: Vec<String>,
) -> SetupKey {
    let secret = new_setup_key_secret();
    let mut k = SetupKey {
        id: new_id(),
        hashed_key: String::new(),
        key_prefix: String::new(),
        legacy_key: None,
        name: "k".into(),
        kind,
        created_at: 1000,
        expires_at,
        updated_at: 1000,
        last_used: 0,
        revoked: false,
        used_times: 0,
        usage_limit,
        auto_groups,
        ephemeral: false,
        allow_extra_dns_labels: false,
    };
    k.set_secret(&secret);
    // Kept beside the hash so the tests can present the secret.
    k.legacy_key = Some(secret);
    k
}

fn secret(k: &SetupKey) -> String {
    k.legacy_key.clone().expect("test keys keep their secret")
}

fn meta(host: &str) -> PeerMeta {
    PeerMeta {
        hostname: host.into(),
        os: "linux".into(),
        ..Default::default()
    }
}

fn register(a: &mut Account, secret: &str, wg: &str, now: UnixTime) -> Result<Peer> {
    a.register_peer(secret, wg, &meta(wg), NET.parse().unwrap(), now)
        .map(|(p, _)| p)
}

fn denied(r: Result<Peer>) -> String {
    match r {
        Err(Error::PermissionDenied(m)) => m,
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

#[test]
fn setup_key_rules_expired_exhausted_revoked_and_unknown() {
    let mut a = Account::default();
    let group = Group {
        id: "g1".into(),
        name: "gateways".into(),
        peers: vec![],
        resources: vec![],
    };
    a.put_group(group).unwrap();

    let one_off = key(SetupKeyType::OneOff, 1, 0, vec!["g1".into()]);
    let one_off_secret = secret(&one_off);
    a.put_setup_key(one_off.clone()).unwrap();
    let p = register(&mut a, &one_off_secret.to_lowercase(), "peer-a", 2000)
        .expect("a valid key registers (case-insensitive)");
    assert_eq!(
        a.groups["g1"].peers,
        vec![p.id.clone()],
        "auto groups applied"
    );
    assert_eq!(a.setup_keys[&one_off.id].used_times, 1);
    assert_eq!(a.setup_keys[&one_off.id].last_used, 2000);
    assert_eq!(
        denied(register(&mut a, &one_off_secret, "peer-b", 2001)),
        "setup key is overused"
    );

    let limited = key(SetupKeyType::Reusable, 2, 0, vec![]);
    a.put_setup_key(limited.clone()).unwrap();
    register(&mut a, &secret(&limited), "peer-c", 2000).unwrap();
    register(&mut a, &secret(&limited), "peer-d", 2000).unwrap();
    assert_eq!(
        denied(register(&mut a, &secret(&limited), "peer-e", 2000)),
        "setup key is overused"
    );

    let unlimited = key(SetupKeyType::Reusable, 0, 0, vec![]);
    a.put_setup_key(unlimited.clone()).unwrap();
    for i in 0..5 {
        register(&mut a, &secret(&unlimited), &format!("many-{i}"), 2000).unwrap();
    }

    let expiring = key(SetupKeyType::Reusable, 0, 3000, vec![]);
    a.put_setup_key(expiring.clone()).unwrap();
    register(&mut a, &secret(&expiring), "before", 2999).unwrap();
    assert_eq!(
        denied(register(&mut a, &secret(&expiring), "at", 3000)),
        "setup key is expired"
    );

    let mut revoked = key(SetupKeyType::Reusable, 0, 0, vec![]);
    revoked.revoked = true;
    a.put_setup_key(revoked.clone()).unwrap();
    assert_eq!(
        denied(register(&mut a, &secret(&revoked), "x", 2000)),
        "setup key is revoked"
    );

    assert_eq!(
        denied(register(
            &mut a,
            "00000000-0000-4000-8000-000000000000",
            "y",
            2000
        )),
        "invalid setup key"
    );
    // A refused registration changes nothing.
    let before = a.clone();
    let _ = register(&mut a, &secret(&revoked), "z", 2000);
    assert_eq!(a, before);
    // The same WireGuard key cannot register twice.
    assert!(matches!(
        register(&mut a, &secret(&unlimited), "peer-a", 2000),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn addresses_are_unique_inside_the_network_and_kept() {
    let mut a = Account::default();
    let k = key(SetupKeyType::Reusable, 0, 0, vec![]);
    a.put_setup_key(k.clone()).unwrap();
    let net: Ipv4Net = "100.64.0.0/29".parse().unwrap();
    let mut ips = BTreeSet::new();
    for i in 0..6 {
        let (p, _) = a
            .register_peer(&secret(&k), &format!("p{i}"), &meta("h"), net, 1)
            .unwrap();
        assert!(
            net.contains(&p.ip) && p.ip != net.network() && p.ip != net.broadcast(),
            "{}",
            p.ip
        );
        assert!(ips.insert(p.ip), "duplicate {}", p.ip);
    }
    assert!(
        a.register_peer(&secret(&k), "p7", &meta("h"), net, 1)
            .is_err(),
        "a full network says so"
    );
    // Login keeps the address.
    let id = a.peer_by_key("p3").unwrap().id.clone();
    let ip = a.peers[&id].ip;
    a.login_peer(&id, &meta("renamed"), 5).unwrap();
    assert_eq!(a.peers[&id].ip, ip);
    assert_eq!(a.peers[&id].last_seen, 5);
    // Same hostnames get distinct DNS labels.
    let labels: BTreeSet<&str> = a.peers.values().map(|p| p.dns_label.as_str()).collect();
    assert_eq!(labels.len(), a.peers.len());
}

#[test]
fn serial_rises_on_every_change_but_not_on_login() {
    let mut a = Account::default();
    let s0 = a.serial;
    a.put_group(Group {
        id: "g".into(),
        name: "g".into(),
        peers: vec![],
        resources: vec![],
    })
    .unwrap();
    assert_eq!(a.serial, s0 + 1);
    let k = key(SetupKeyType::Reusable, 0, 0, vec![]);
    a.put_setup_key(k.clone()).unwrap();
    let p = register(&mut a, &secret(&k), "p", 1).unwrap();
    let s = a.serial;
    a.login_peer(&p.id, &meta("p"), 2).unwrap();
    assert_eq!(a.serial, s);
    assert!(
        a.put_group(Group {
            id: "g2".into(),
            name: "".into(),
            peers: vec![],
            resources: vec![]
        })
        .is_err()
    );
    assert_eq!(a.serial, s, "a rejected change does not count");
}

fn rule(sources: &[&str], destinations: &[&str]) -> PolicyRule {
    PolicyRule {
        id: "r".into(),
        name: "r".into(),
        description: String::new(),
        enabled: true,
        action: RuleAction::Accept,
        bidirectional: false,
        protocol: RuleProtocol::Tcp,
        ports: vec![443],
        port_ranges: vec![],
        sources: sources.iter().map(|s| s.to_string()).collect(),
        destinations: destinations.iter().map(|s| s.to_string()).collect(),
        source_resource: None,
        destination_resource: None,
        authorized_groups: Default::default(),
    }
}

#[test]
fn references_are_checked_and_deletes_cascade() {
    let mut a = Account::default();
    let k = key(SetupKeyType::Reusable, 0, 0, vec![]);
    a.put_setup_key(k.clone()).unwrap();
    let p = register(&mut a, &secret(&k), "p", 1).unwrap();
    a.put_group(Group {
        id: "g".into(),
        name: "g".into(),
        peers: vec![p.id.clone()],
        resources: vec![],
    })
    .unwrap();
    assert!(
        a.put_group(Group {
            id: "h".into(),
            name: "h".into(),
            peers: vec!["nope".into()],
            resources: vec![]
        })
        .is_err()
    );
    assert!(
        a.put_group(Group {
            id: "h".into(),
            name: "g".into(),
            peers: vec![],
            resources: vec![]
        })
        .is_err(),
        "names are unique"
    );

    let policy = |rules| Policy {
        id: "pol".into(),
        name: "pol".into(),
        description: String::new(),
        enabled: true,
        rules,
    };
    assert!(
        matches!(a.put_policy(policy(vec![rule(&["g"], &["missing"])])), Err(Error::Invalid(m)) if m.contains("rules[0].destinations"))
    );
    let mut bad_ports = rule(&["g"], &["g"]);
    bad_ports.protocol = RuleProtocol::Icmp;
    assert!(
        a.put_policy(policy(vec![bad_ports])).is_err(),
        "ports with icmp"
    );
    let mut bad_range = rule(&["g"], &["g"]);
    bad_range.port_ranges = vec![PortRange { start: 90, end: 80 }];
    assert!(a.put_policy(policy(vec![bad_range])).is_err());
    assert!(a.put_policy(policy(vec![])).is_err());
    a.put_policy(policy(vec![rule(&["g"], &["g"])])).unwrap();

    assert!(
        matches!(a.delete_group("g"), Err(Error::BadRequest(m)) if m.contains("policy pol")),
        "a group in use stays"
    );
    a.put_network(Network {
        id: "n".into(),
        name: "n".into(),
        description: String::new(),
    })
    .unwrap();
    a.put_router(NetworkRouter {
        id: "r".into(),
        network_id: "n".into(),
        peer: Some(p.id.clone()),
        peer_groups: vec![],
        metric: 1,
        masquerade: false,
        enabled: true,
    })
    .unwrap();
    assert!(
        a.put_router(NetworkRouter {
            id: "r2".into(),
            network_id: "n".into(),
            peer: Some(p.id.clone()),
            peer_groups: vec!["g".into()],
            metric: 1,
            masquerade: false,
            enabled: true
        })
        .is_err()
    );
    let t = a.delete_peer(&p.id).unwrap();
    assert!(a.groups["g"].peers.is_empty());
    assert!(a.routers.is_empty(), "its router went with it");
    assert!(
        t.contains(&(Kind::Group, "g".to_string())) && t.contains(&(Kind::Router, "r".to_string()))
    );
    assert!(matches!(a.delete_peer(&p.id), Err(Error::NotFound(_))));
}

#[test]
fn resource_addresses() {
    let host = parse_resource_address("198.18.10.10").unwrap();
    assert_eq!(
        host,
        ResourceAddress::Prefix("198.18.10.10/32".parse().unwrap())
    );
    assert_eq!(
        parse_resource_address("10.0.0.0/8").unwrap(),
        ResourceAddress::Prefix("10.0.0.0/8".parse().unwrap())
    );
    assert_eq!(
        parse_resource_address("fd00::/64").unwrap(),
        ResourceAddress::Prefix("fd00::/64".parse().unwrap())
    );
    assert_eq!(
        parse_resource_address("Example.COM").unwrap(),
        ResourceAddress::Domain("example.com".into())
    );
    assert_eq!(
        parse_resource_address("*.corp.example").unwrap(),
        ResourceAddress::Domain("*.corp.example".into())
    );
    for bad in [
        "10.0.0.1/8",
        "10.0.0.0/33",
        "300.1.1.1/32",
        "no_dots",
        "-a.com",
        "a..com",
        "1.2.3",
        "",
        "*.",
        "a.b/c",
    ] {
        assert!(parse_resource_address(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn ephemeral_peers_expire_only_when_offline_long_enough() {
    let mut a = Account::default();
    let mut k = key(SetupKeyType::Reusable, 0, 0, vec![]);
    k.ephemeral = true;
    a.put_setup_key(k.clone()).unwrap();
    let p = register(&mut a, &secret(&k), "e", 100).unwrap();
    assert!(p.ephemeral);
    assert!(a.expired_ephemeral_peers(159, 60, &|_| false).is_empty());
    assert_eq!(
        a.expired_ephemeral_peers(160, 60, &|_| false),
        vec![p.id.clone()]
    );
    assert!(
        a.expired_ephemeral_peers(1000, 60, &|_| true).is_empty(),
        "connected peers stay"
    );
}
