//! The gRPC face over real loopback connections: sealed Login and Sync, setup-key refusals,
//! hostile messages, pushes within 100 ms, deleted and ephemeral peers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use management_proto::{WgKey, pb};
use serde_json::{Value, json};
use tonic::Code;

async fn key(m: &std::sync::Arc<management::Management>, body: Value) -> String {
    ok(m, "POST", "/api/setup-keys", body).await["key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_registers_once_and_refuses_what_it_must() {
    let dir = TempDir::new("login");
    let m = open(&dir);
    let (url, _server) = serve(m.clone()).await;
    let group = ok(&m, "POST", "/api/groups", json!({"name": "gateways"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let one_off = key(
        &m,
        json!({"name": "gw", "type": "one-off", "expires_in": 3600, "auto_groups": [group]}),
    )
    .await;

    let mut client =
        management_proto::pb::management_service_client::ManagementServiceClient::connect(
            url.clone(),
        )
        .await
        .unwrap();
    client.is_healthy(pb::Empty {}).await.expect("isHealthy");
    let server_key = client
        .get_server_key(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server_key.key, m.key.public().to_base64());
    assert!(server_key.expires_at.is_some());

    let mut peer = TestPeer::connect(&url).await;
    assert_eq!(
        peer.login("").await.unwrap_err().code(),
        Code::PermissionDenied,
        "unknown peer without a key"
    );
    let first = peer.login(&one_off).await.expect("registers");
    let address = first.peer_config.unwrap().address;
    assert!(
        address.ends_with("/10") && address.starts_with("100."),
        "{address}"
    );
    let peers = ok(&m, "GET", "/api/peers", Value::Null).await;
    assert_eq!(
        peers[0]["connection_ip"], "127.0.0.1",
        "where the Login came from"
    );
    assert_eq!(peers.as_array().unwrap().len(), 1);
    assert_eq!(peers[0]["groups"][0]["name"], "gateways");
    assert_eq!(format!("{}/10", peers[0]["ip"].as_str().unwrap()), address);

    // Later logins need no key and keep the address.
    assert_eq!(
        peer.login("").await.unwrap().peer_config.unwrap().address,
        address
    );
    // The one-off key is spent: a second peer is refused, and nothing changes.
    let before = m.read(|a| a.clone());
    let mut second = TestPeer::connect(&url).await;
    let refused = second.login(&one_off).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("overused"),
        "{}",
        refused.message()
    );
    assert_eq!(
        second
            .login("00000000-0000-4000-8000-000000000000")
            .await
            .unwrap_err()
            .message(),
        "invalid setup key"
    );
    let revocable = key(&m, json!({"name": "r", "type": "reusable"})).await;
    let id = m.read(|a| a.setup_key_by_secret(&revocable).unwrap().id.clone());
    ok(
        &m,
        "PUT",
        &format!("/api/setup-keys/{id}"),
        json!({"revoked": true, "auto_groups": []}),
    )
    .await;
    assert!(
        second
            .login(&revocable)
            .await
            .unwrap_err()
            .message()
            .contains("revoked")
    );
    ok(&m, "DELETE", &format!("/api/setup-keys/{id}"), Value::Null).await;
    assert_eq!(m.read(|a| a.peers.clone()), before.peers);

    // Meta is required.
    let no_meta = second.key.seal_message(
        &second.server,
        &pb::LoginRequest {
            setup_key: one_off.clone(),
            ..Default::default()
        },
    );
    assert_eq!(
        second.client.login(no_meta).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_wrongly_sealed_messages_are_refused_without_state_change() {
    let dir = TempDir::new("garbage");
    let m = open(&dir);
    let (url, _server) = serve(m.clone()).await;
    let reusable = key(&m, json!({"name": "k", "type": "reusable"})).await;
    let mut peer = TestPeer::connect(&url).await;
    let before = m.read(|a| a.clone());
    let login = pb::LoginRequest {
        setup_key: reusable.clone(),
        meta: Some(meta("x")),
        ..Default::default()
    };

    let cases: Vec<(&str, pb::EncryptedMessage)> = vec![
        (
            "empty body",
            pb::EncryptedMessage {
                wg_pub_key: peer.key.public().to_base64(),
                body: vec![],
                version: 0,
            },
        ),
        (
            "random body",
            pb::EncryptedMessage {
                wg_pub_key: peer.key.public().to_base64(),
                body: (0..200u8).collect(),
                version: 0,
            },
        ),
        (
            "bad sender key",
            pb::EncryptedMessage {
                wg_pub_key: "not-a-key".into(),
                body: vec![0; 64],
                version: 0,
            },
        ),
        (
            "sealed to another server",
            peer.key.seal_message(&WgKey::generate().public(), &login),
        ),
        (
            "claims another sender",
            pb::EncryptedMessage {
                wg_pub_key: WgKey::generate().public().to_base64(),
                ..peer.key.seal_message(&peer.server, &login)
            },
        ),
        (
            "opens but is not a LoginRequest",
            peer.key.seal_message(
                &peer.server,
                &pb::RouteFirewallRule {
                    source_ranges: vec!["x".repeat(40)],
                    action: 99,
                    ..Default::default()
                },
            ),
        ),
    ];
    for (what, msg) in cases {
        let err = peer.client.login(msg.clone()).await.expect_err(what);
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::FailedPrecondition),
            "{what}: {err:?}"
        );
        assert!(!err.message().is_empty(), "{what}");
        let err = peer.client.sync(msg).await.expect_err(what);
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::PermissionDenied),
            "{what}: {err:?}"
        );
    }
    assert_eq!(
        m.read(|a| a.clone()),
        before,
        "nothing registered or changed"
    );
    // The server is still fine afterwards.
    peer.login(&reusable)
        .await
        .expect("a proper login still works");
    // Sync from a key that never registered.
    let mut stranger = TestPeer::connect(&url).await;
    assert_eq!(
        stranger.sync().await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_open_streams_within_100ms_with_rising_serials() {
    let dir = TempDir::new("push");
    let m = open(&dir);
    let (url, _server) = serve(m.clone()).await;
    let clients = ok(&m, "POST", "/api/groups", json!({"name": "clients"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let servers = ok(&m, "POST", "/api/groups", json!({"name": "servers"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ck = key(
        &m,
        json!({"name": "c", "type": "reusable", "auto_groups": [clients]}),
    )
    .await;
    let sk = key(
        &m,
        json!({"name": "s", "type": "reusable", "auto_groups": [servers]}),
    )
    .await;
    let mut client = TestPeer::connect(&url).await;
    let client_ip = client
        .login(&ck)
        .await
        .unwrap()
        .peer_config
        .unwrap()
        .address
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut server = TestPeer::connect(&url).await;
    server.login(&sk).await.unwrap();

    let mut stream = server.sync().await.unwrap();
    let initial = server
        .next_map(&mut stream, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(initial.firewall_rules_is_empty && initial.remote_peers_is_empty);
    let peers = ok(&m, "GET", "/api/peers", Value::Null).await;
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["connected"] == true),
        "the syncing peer shows as connected"
    );

    let rule = json!({"name": "r", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "tcp", "ports": ["443"], "sources": [clients], "destinations": [servers]});
    let mut serial = initial.serial;
    let mut worst = Duration::ZERO;
    let mut policy_id = String::new();
    for round in 0..5 {
        let started = Instant::now();
        if round % 2 == 0 {
            policy_id = ok(
                &m,
                "POST",
                "/api/policies",
                json!({"name": "p", "enabled": true, "rules": [rule]}),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_string();
        } else {
            ok(
                &m,
                "DELETE",
                &format!("/api/policies/{policy_id}"),
                Value::Null,
            )
            .await;
        }
        let map = server
            .next_map(&mut stream, Duration::from_secs(2))
            .await
            .unwrap();
        worst = worst.max(started.elapsed());
        assert!(map.serial > serial, "serial {} after {serial}", map.serial);
        serial = map.serial;
        if round % 2 == 0 {
            assert_eq!(map.firewall_rules.len(), 1);
            assert_eq!(map.firewall_rules[0].peer_ip, client_ip);
            assert_eq!(map.firewall_rules[0].port, "443");
        } else {
            assert!(map.firewall_rules_is_empty);
        }
    }
    assert!(
        worst < Duration::from_millis(100),
        "slowest push took {worst:?}"
    );

    // A change that does not alter this peer's map sends nothing.
    key(&m, json!({"name": "unrelated", "type": "reusable"})).await;
    assert!(
        server
            .next_map(&mut stream, Duration::from_millis(300))
            .await
            .is_err()
    );

    // Deleting the peer: an empty map, then the stream ends with PermissionDenied.
    let id = m.read(|a| {
        a.peer_by_key(&server.key.public().to_base64())
            .unwrap()
            .id
            .clone()
    });
    ok(&m, "DELETE", &format!("/api/peers/{id}"), Value::Null).await;
    let last = server
        .next_map(&mut stream, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        last.firewall_rules_is_empty
            && last.routes_firewall_rules_is_empty
            && last.remote_peers_is_empty
            && last.serial > serial
    );
    let end = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .unwrap();
    assert_eq!(end.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(
        server.login("").await.unwrap_err().code(),
        Code::PermissionDenied,
        "a deleted peer cannot log in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_peers_go_a_set_time_after_disconnecting() {
    let dir = TempDir::new("ephemeral");
    let mut o = options(&dir);
    o.ephemeral_timeout = Duration::from_secs(1);
    let m = std::sync::Arc::new(management::Management::open(&o).unwrap());
    let (url, _server) = serve(m.clone()).await;
    let k = key(
        &m,
        json!({"name": "demo", "type": "one-off", "expires_in": 3600, "ephemeral": true}),
    )
    .await;
    let mut peer = TestPeer::connect(&url).await;
    peer.login(&k).await.unwrap();
    let mut stream = peer.sync().await.unwrap();
    peer.next_map(&mut stream, Duration::from_secs(2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(m.read(|a| a.peers.len()), 1, "stays while connected");
    drop(stream);
    drop(peer);
    let deadline = Instant::now() + Duration::from_secs(6);
    while m.read(|a| a.peers.len()) == 1 {
        assert!(Instant::now() < deadline, "ephemeral peer not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Gone for good, also after a restart.
    drop(m);
    assert_eq!(open(&dir).read(|a| a.peers.len()), 0);
}

/// An account of 10,000 peers, all allowed to reach each other on four TCP ports: one peer's
/// map (9,999 remote peers, a rule per peer, port and direction) is larger than gRPC's default
/// 4 MiB message limit. It reaches a client with the raised limit whole, over real gRPC; a client
/// that kept the default limit is refused, which shows the limit is what makes it work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_peer_map_crosses_grpc_whole() {
    use base64::Engine;
    use management::model::{Account, Peer};
    use management::store::{Kind, Store, Touched};
    const PEERS: u32 = 10_000;
    let dir = TempDir::new("10k");
    let me = WgKey::generate();
    // The account is written straight to the store: 10,000 registrations through the API would
    // only make the test slow.
    let mut account = Account::default();
    for i in 0..PEERS {
        let id = format!("peer{i:05}");
        let key = if i == 0 {
            me.public().to_base64()
        } else {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            base64::engine::general_purpose::STANDARD.encode(k)
        };
        let peer = Peer {
            id: id.clone(),
            name: id.clone(),
            wg_pub_key: key,
            ip: std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 1)) + i),
            hostname: id.clone(),
            dns_label: id.clone(),
            ..Peer::blank()
        };
        account.peers.insert(id, peer);
    }
    let touched: Touched = account
        .peers
        .keys()
        .map(|k| (Kind::Peer, k.clone()))
        .collect();
    Store::open(&dir.0.join(management::service::DB_FILE))
        .unwrap()
        .save(&account, &touched, &[])
        .unwrap();
    let m = open(&dir); // puts every peer into All
    let (url, _server) = serve(m.clone()).await;
    let (_, all) = call(&m, "GET", "/api/groups?name=All", None).await;
    let all = all[0]["id"].as_str().unwrap().to_string();
    assert_eq!(all_peers(&m, &all), PEERS as usize);
    ok(&m, "POST", "/api/policies", json!({"name": "mesh", "enabled": true, "rules": [
        {"name": "r", "enabled": true, "action": "accept", "bidirectional": true, "protocol": "tcp", "ports": ["22", "80", "443", "8443"], "sources": [all], "destinations": [all]}
    ]}))
    .await;

    let mut peer = TestPeer::connect_with_key(&url, me.clone()).await;
    peer.login("")
        .await
        .expect("the stored peer logs in with its key");
    let mut stream = peer.sync().await.unwrap();
    let started = Instant::now();
    let msg = tokio::time::timeout(Duration::from_secs(120), stream.message())
        .await
        .expect("a map within 120 s")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    let size = prost::Message::encoded_len(&msg);
    assert!(
        size > 4 << 20,
        "the map is past the default limit: {size} bytes"
    );
    let resp: pb::SyncResponse = peer.key.open_message(&peer.server, &msg).unwrap();
    let map = resp.network_map.unwrap();
    assert_eq!(map.remote_peers.len(), PEERS as usize - 1);
    // Every other peer, on each port, in each direction.
    assert_eq!(
        map.firewall_rules.len(),
        (PEERS as usize - 1) * 4 * 2,
        "rules"
    );
    let rule_ips: std::collections::BTreeSet<&str> = map
        .firewall_rules
        .iter()
        .map(|r| r.peer_ip.as_str())
        .collect();
    assert_eq!(rule_ips.len(), PEERS as usize - 1);
    eprintln!(
        "10,000-peer map: {size} bytes sealed, {} rules, first message after {took:?}",
        map.firewall_rules.len()
    );

    // A client that kept tonic's default 4 MiB decoding limit cannot take it.
    let mut client =
        management_proto::pb::management_service_client::ManagementServiceClient::connect(
            url.clone(),
        )
        .await
        .unwrap();
    let sealed = me.seal_message(
        &peer.server,
        &pb::SyncRequest {
            meta: Some(meta("default-limit")),
        },
    );
    let mut small = client.sync(sealed).await.unwrap().into_inner();
    let refused = tokio::time::timeout(Duration::from_secs(120), small.message())
        .await
        .unwrap()
        .expect_err("over the default limit");
    assert!(
        refused.message().contains("message length too large")
            || refused.code() == Code::OutOfRange,
        "{refused}"
    );
}

fn all_peers(m: &std::sync::Arc<management::Management>, group: &str) -> usize {
    m.read(|a| a.groups[group].peers.len())
}

/// Logs `key` in with the IPv6 overlay capability (or without); the PeerConfig it gets.
async fn login_v6(url: &str, key: &WgKey, setup_key: &str, capable: bool) -> pb::PeerConfig {
    let mut peer = TestPeer::connect_with_key(url, key.clone()).await;
    let mut m = meta("v6-peer");
    if capable {
        m.capabilities = vec![
            pb::PeerCapability::IPv6Overlay as i32,
            pb::PeerCapability::SourcePrefixes as i32,
        ];
    }
    let req = pb::LoginRequest {
        setup_key: setup_key.into(),
        meta: Some(m),
        ..Default::default()
    };
    let resp = peer
        .client
        .login(peer.key.seal_message(&peer.server, &req))
        .await
        .unwrap()
        .into_inner();
    let resp: pb::LoginResponse = peer.key.open_message(&peer.server, &resp).unwrap();
    resp.peer_config.unwrap()
}

/// The IPv6 overlay end to end: a range kept across restarts, an address per peer shown by
/// the API, address_v6 only for peers that announce the capability, operator-set addresses
/// checked, and the overlay switched off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_overlay_addresses_over_grpc_and_rest() {
    let dir = TempDir::new("v6");
    let mut o = options(&dir);
    o.ipv6 = management::Ipv6Overlay::Range("fd00:aa:bb:cc::/64".parse().unwrap());
    let m = std::sync::Arc::new(management::Management::open(&o).unwrap());
    let (url, server) = serve(m.clone()).await;
    let setup = key(
        &m,
        json!({"name": "k", "type": "reusable", "auto_groups": []}),
    )
    .await;
    let (capable, plain) = (WgKey::generate(), WgKey::generate());
    let config = login_v6(&url, &capable, &setup, true).await;
    assert_eq!(config.address_v6.len(), 17, "16 bytes and a prefix length");
    let bytes: [u8; 16] = config.address_v6[..16].try_into().unwrap();
    let v6 = std::net::Ipv6Addr::from(bytes);
    assert_eq!(config.address_v6[16], 64);
    assert!(
        "fd00:aa:bb:cc::/64"
            .parse::<ipnet::Ipv6Net>()
            .unwrap()
            .contains(&v6),
        "{v6}"
    );
    assert!(
        login_v6(&url, &plain, &setup, false)
            .await
            .address_v6
            .is_empty(),
        "no capability, no IPv6"
    );
    let peers = ok(&m, "GET", "/api/peers", Value::Null).await;
    let shown = |key: &WgKey, peers: &Value| {
        peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["public_key"] == key.public().to_base64())
            .unwrap()
            .clone()
    };
    assert_eq!(shown(&capable, &peers)["ipv6"], v6.to_string());
    let plain_v6 = shown(&plain, &peers)["ipv6"]
        .as_str()
        .expect("every peer has an address")
        .to_string();
    assert_ne!(plain_v6, v6.to_string());

    // An operator moves the capable peer: outside the range or taken is refused.
    let id = shown(&capable, &peers)["id"].as_str().unwrap().to_string();
    let put = |ipv6: &str| json!({"name": "v6-peer", "ssh_enabled": false, "login_expiration_enabled": false, "inactivity_expiration_enabled": false, "ipv6": ipv6});
    assert_eq!(
        call(
            &m,
            "PUT",
            &format!("/api/peers/{id}"),
            Some(put("fd00:99::1"))
        )
        .await
        .0,
        422
    );
    assert_eq!(
        call(&m, "PUT", &format!("/api/peers/{id}"), Some(put(&plain_v6)))
            .await
            .0,
        422
    );
    assert_eq!(
        ok(
            &m,
            "PUT",
            &format!("/api/peers/{id}"),
            put("fd00:aa:bb:cc::77")
        )
        .await["ipv6"],
        "fd00:aa:bb:cc::77"
    );

    // A restart on the default keeps the stored range and the addresses.
    server.abort();
    drop(m);
    let m = std::sync::Arc::new(management::Management::open(&options(&dir)).unwrap());
    let (url, server) = serve(m.clone()).await;
    let again = login_v6(&url, &capable, "", true).await;
    assert_eq!(
        again.address_v6[..16],
        "fd00:aa:bb:cc::77"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    // Switched off: no address_v6, and the API shows none.
    server.abort();
    drop(m);
    let mut off = options(&dir);
    off.ipv6 = management::Ipv6Overlay::Off;
    let m = std::sync::Arc::new(management::Management::open(&off).unwrap());
    let (url, _server) = serve(m.clone()).await;
    assert!(
        login_v6(&url, &capable, "", true)
            .await
            .address_v6
            .is_empty()
    );
    assert!(
        ok(&m, "GET", "/api/peers", Value::Null)
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p.get("ipv6").is_none())
    );

    // A new service picks a random unique-local /64 of its own.
    let fresh = open(&TempDir::new("v6-fresh"));
    let net = fresh.read(|a| a.network_v6).expect("on by default");
    assert_eq!((net.prefix_len(), net.network().octets()[0]), (64, 0xfd));
}
