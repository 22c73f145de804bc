//! Seed 000's "Backend Integration" and "Cleanup on Session End", run as written: the same
//! requests with the same bodies, over real HTTP, with a Bearer token, against the embedded
//! service. Then what the requests are for is checked: the provisioned workspace peer comes up
//! with the key the server handed out, the ACL's priorities hold in the container's map, the
//! metrics loop finds its fields, and the cleanup leaves nothing behind.

mod common;

use std::time::Duration;

use common::*;
use management_proto::{WgKey, pb};
use serde_json::{Value, json};

fn in_rules<'a>(map: &'a pb::NetworkMap, ip: &str) -> Vec<&'a pb::FirewallRule> {
    map.firewall_rules
        .iter()
        .filter(|r| r.peer_ip == ip && r.direction == pb::RuleDirection::In as i32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_backend_code_runs_as_written() {
    let dir = TempDir::new("seed-backend");
    let m = std::sync::Arc::new(management::Management::open(&options(&dir)).unwrap());
    let (api, _server) = serve(m.clone()).await;
    // Standing set-up an operator made earlier: the workspace group and a container peer.
    let netbird_group = "demo-linux";
    http(
        &api,
        "POST",
        "/api/groups",
        Some(json!({"name": netbird_group})),
    )
    .await;
    let (_, containers) = http(
        &api,
        "POST",
        "/api/groups",
        Some(json!({"name": "containers"})),
    )
    .await;
    let (_, ck) = http(
        &api,
        "POST",
        "/api/setup-keys",
        Some(json!({"name": "containers", "type": "reusable", "auto_groups": [containers["id"]]})),
    )
    .await;
    let mut container = TestPeer::connect(&api).await;
    let container_ip = container
        .login(ck["key"].as_str().unwrap())
        .await
        .unwrap()
        .peer_config
        .unwrap()
        .address
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let (_, other_key) = http(
        &api,
        "POST",
        "/api/setup-keys",
        Some(json!({"name": "other", "type": "reusable", "auto_groups": [netbird_group]})),
    )
    .await;
    let mut other = TestPeer::connect(&api).await;
    other
        .login(other_key["key"].as_str().unwrap())
        .await
        .unwrap();

    let session_id = "s42";
    let workspace_type = "linux";
    let expires_at =
        humantime::format_rfc3339_micros(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string()
            .replace('Z', "+00:00");

    // create_netbird_peer: 1. Generate one-time setup key
    let (status, setup_key_response) = http(
        &api,
        "POST",
        "/api/setup-keys",
        Some(json!({
            "name": format!("demo-{session_id}"),
            "type": "one-time",
            "expires_in": 3600,
            "auto_groups": [netbird_group],
            "usage_limit": 1,
            "ephemeral": true
        })),
    )
    .await;
    assert_eq!(status, 200, "{setup_key_response}");
    let setup_key = setup_key_response["key"].as_str().unwrap().to_string();
    assert_eq!(
        setup_key.len(),
        36,
        "the plain key, shown once: {setup_key}"
    );
    assert_eq!(
        (
            setup_key_response["type"].as_str(),
            setup_key_response["usage_limit"].as_u64()
        ),
        (Some("one-off"), Some(1))
    );
    // 2. Register peer
    let (status, peer) = http(&api, "POST", "/api/peers", Some(json!({
        "name": format!("demo-container-{session_id}"),
        "host_name": format!("{workspace_type}-{session_id}"),
        "groups": [netbird_group],
        "ssh_enabled": false,
        "login_expiration_enabled": true,
        "login_expiration": expires_at,
        "approval_required": false,
        "labels": {"session_id": session_id, "workspace_type": workspace_type, "demo": "true", "ephemeral": "true"}
    }))).await;
    assert_eq!(status, 200, "{peer}");
    let (peer_id, peer_ip, wg_public_key) = (
        peer["id"].as_str().unwrap().to_string(),
        peer["ip"].as_str().unwrap().to_string(),
        peer["public_key"].as_str().unwrap().to_string(),
    );
    assert!(
        "100.64.0.0/10"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&peer_ip.parse::<std::net::Ipv4Addr>().unwrap()),
        "IP in 100.64.0.0/10: {peer_ip}"
    );
    assert_eq!(peer["labels"]["workspace_type"], "linux");
    assert_eq!(peer["login_expiration_enabled"], true);
    assert_eq!(peer["groups"][0]["name"], netbird_group);
    // The private half, shown once, is the workspace's key: it logs in with it, no setup key.
    let private = WgKey::from_base64(peer["private_key"].as_str().unwrap()).unwrap();
    assert_eq!(private.public().to_base64(), wg_public_key);
    let (_, again) = http(&api, "GET", &format!("/api/peers/{peer_id}"), None).await;
    assert!(
        again.get("private_key").is_none(),
        "the private key is shown once"
    );

    // configure_session_acl
    let (status, acl) = http(&api, "POST", "/api/acls", Some(json!({
        "name": format!("demo-session-{session_id}"),
        "description": format!("Temporary ACL for demo {session_id}"),
        "enabled": true,
        "rules": [
            {
                "name": format!("allow-{session_id}-to-container"),
                "source_peers": [peer_id],
                "destination_ips": [container_ip],
                "protocol": "tcp",
                "ports": ["6900", "443"],
                "action": "accept"
            },
            {
                "name": format!("deny-{session_id}-lateral"),
                "source_peers": [peer_id],
                "destination_ips": ["100.64.0.0/10"],
                "protocol": "all",
                "ports": ["1-65535"],
                "action": "drop",
                "priority": 1000
            }
        ],
        "metadata": {"session_id": session_id, "workspace_type": workspace_type, "auto_cleanup": true, "expires_at": expires_at}
    }))).await;
    assert_eq!(status, 200, "{acl}");
    assert_eq!(acl["auto_cleanup"], true);

    // The workspace comes up with its key.
    let mut workspace = TestPeer::connect_with_key(&api, private).await;
    let login = workspace
        .login("")
        .await
        .expect("a provisioned peer logs in by its key");
    assert_eq!(
        login
            .peer_config
            .unwrap()
            .address
            .split('/')
            .next()
            .unwrap(),
        peer_ip
    );
    // The container accepts the session on 6900 and 443 only: the lower-priority drop is carved.
    let mut stream = container.sync().await.unwrap();
    let map = container
        .next_map(&mut stream, Duration::from_secs(2))
        .await
        .unwrap();
    let rules = in_rules(&map, &peer_ip);
    let mut ports: Vec<&str> = rules.iter().map(|r| r.port.as_str()).collect();
    ports.sort();
    assert_eq!(ports, vec!["443", "6900"], "{rules:#?}");
    assert!(
        rules
            .iter()
            .all(|r| r.action == pb::RuleAction::Accept as i32
                && r.protocol == pb::RuleProtocol::Tcp as i32)
    );
    // Every other peer of the overlay drops the session.
    let mut other_stream = other.sync().await.unwrap();
    let other_map = other
        .next_map(&mut other_stream, Duration::from_secs(2))
        .await
        .unwrap();
    let rules = in_rules(&other_map, &peer_ip);
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert_eq!(
        (rules[0].action, rules[0].protocol),
        (pb::RuleAction::Drop as i32, pb::RuleProtocol::All as i32)
    );

    // update_netbird_metrics reads groups[0] and connected.
    let (_, peers) = http(&api, "GET", "/api/peers", None).await;
    for p in peers.as_array().unwrap() {
        let group = p
            .get("groups")
            .and_then(|g| g.get(0))
            .map(|g| g["name"].clone())
            .unwrap_or(json!("unknown"));
        assert!(group.is_string() && p["connected"].is_boolean(), "{p}");
    }
    assert_eq!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == peer_id.as_str())
            .unwrap()["groups"][0]["name"],
        netbird_group
    );

    // cleanup_netbird_peer: 1. Delete peer
    let (status, _) = http(&api, "DELETE", &format!("/api/peers/{peer_id}"), None).await;
    assert_eq!(status, 200);
    // 2. Delete session-specific ACL
    let (_, acls) = http(
        &api,
        "GET",
        &format!("/api/acls?name=demo-session-{session_id}"),
        None,
    )
    .await;
    assert_eq!(acls.as_array().unwrap().len(), 1);
    for acl in acls.as_array().unwrap() {
        let (status, _) = http(
            &api,
            "DELETE",
            &format!("/api/acls/{}", acl["id"].as_str().unwrap()),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(http(&api, "GET", "/api/acls", None).await.1, json!([]));
    let mut map = container
        .next_map(&mut stream, Duration::from_secs(2))
        .await
        .unwrap();
    while !in_rules(&map, &peer_ip).is_empty() {
        map = container
            .next_map(&mut stream, Duration::from_secs(2))
            .await
            .unwrap();
    }
    assert!(
        map.firewall_rules_is_empty,
        "the container's map is back to nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_and_peer_logins_expire_on_time() {
    let dir = TempDir::new("seed-expiry");
    let mut o = options(&dir);
    o.ephemeral_timeout = Duration::from_secs(1); // the sweeper runs every 250 ms
    let m = std::sync::Arc::new(management::Management::open(&o).unwrap());
    let (api, _server) = serve(m.clone()).await;
    let soon = |s: u64| {
        humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(s)).to_string()
    };
    let (_, a) = http(&api, "POST", "/api/peers", Some(json!({"name": "a"}))).await;
    let (_, b) = http(
        &api,
        "POST",
        "/api/peers",
        Some(json!({"name": "b", "login_expiration_enabled": true, "login_expiration": soon(2)})),
    )
    .await;
    let rule = |id: &Value| json!({"name": "r", "source_peers": [id], "destination_peers": [a["id"]], "protocol": "tcp", "ports": ["22"], "action": "accept"});
    let (_, kept) = http(
        &api,
        "POST",
        "/api/acls",
        Some(
            json!({"name": "kept", "rules": [rule(&b["id"])], "metadata": {"expires_at": soon(2)}}),
        ),
    )
    .await;
    let (_, cleaned) = http(&api, "POST", "/api/acls", Some(json!({"name": "cleaned", "rules": [rule(&b["id"])], "metadata": {"expires_at": soon(2), "auto_cleanup": true}}))).await;
    assert_eq!(kept["enabled"], true);
    assert_eq!(http(&api, "POST", "/api/acls", Some(json!({"name": "late", "rules": [rule(&b["id"])], "metadata": {"expires_at": "2001-01-01T00:00:00Z"}}))).await.0, 422);

    let mut b_peer = TestPeer::connect_with_key(
        &api,
        WgKey::from_base64(b["private_key"].as_str().unwrap()).unwrap(),
    )
    .await;
    b_peer
        .login("")
        .await
        .expect("before its expiry the peer logs in");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let status = b_peer
        .login("")
        .await
        .expect_err("after its expiry it may not");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    let (_, b_now) = http(
        &api,
        "GET",
        &format!("/api/peers/{}", b["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(b_now["login_expired"], true);
    assert_eq!(
        http(
            &api,
            "GET",
            &format!("/api/acls/{}", cleaned["id"].as_str().unwrap()),
            None
        )
        .await
        .0,
        404,
        "auto_cleanup deletes it"
    );
    assert_eq!(
        http(
            &api,
            "GET",
            &format!("/api/acls/{}", kept["id"].as_str().unwrap()),
            None
        )
        .await
        .1["enabled"],
        false,
        "without it, it is disabled"
    );
    // The expired peer is in nobody's map; moving its expiry forward brings it back.
    let a_map = management::netmap::network_map(
        &m.read(|x| x.clone()),
        a["id"].as_str().unwrap(),
        &m.settings,
    )
    .unwrap();
    assert!(a_map.remote_peers.is_empty());
    let renew = json!({"name": "b", "ssh_enabled": false, "login_expiration_enabled": true, "inactivity_expiration_enabled": false, "login_expiration": soon(3600)});
    assert_eq!(
        http(
            &api,
            "PUT",
            &format!("/api/peers/{}", b["id"].as_str().unwrap()),
            Some(renew)
        )
        .await
        .1["login_expired"],
        false
    );
    b_peer.login("").await.expect("renewed");
}

/// The seed's `netbird_peers_total{group,status}`, served by the management service itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_peers_by_group_and_status() {
    let dir = TempDir::new("seed-metrics");
    let m = std::sync::Arc::new(management::Management::open(&options(&dir)).unwrap());
    let (api, _server) = serve(m.clone()).await;
    let (_, g) = http(
        &api,
        "POST",
        "/api/groups",
        Some(json!({"name": "demo-linux"})),
    )
    .await;
    let (_, key) = http(
        &api,
        "POST",
        "/api/setup-keys",
        Some(json!({"name": "k", "type": "reusable", "auto_groups": [g["id"]]})),
    )
    .await;
    http(
        &api,
        "POST",
        "/api/peers",
        Some(json!({"name": "offline-one", "groups": ["demo-linux"]})),
    )
    .await;
    let mut online = TestPeer::connect(&api).await;
    online.login(key["key"].as_str().unwrap()).await.unwrap();
    let _stream = online.sync().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = scrape(&api).await;
    for line in [
        "netbird_peers_total{group=\"demo-linux\",status=\"online\"} 1",
        "netbird_peers_total{group=\"demo-linux\",status=\"offline\"} 1",
        "netbird_peers_total{group=\"All\",status=\"online\"} 1",
        "management_setup_keys{state=\"valid\"} 1",
        "management_sync_streams 1",
        "management_logins_total{result=\"ok\"} 1",
        "management_network_map_pushes_total 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(text.contains("management_http_request_duration_seconds_count{method=\"POST\",route=\"/api/peers\",status=\"200\"} 1"), "{text}");
}

async fn scrape(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
