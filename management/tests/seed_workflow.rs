//! The seed-000 session workflow, as its text describes it (modulo NetBird's field names):
//! a one-off, ephemeral setup key per demo session; the session's peer registers with it; a
//! per-session policy allows that peer to its container on 6900 and 443 and drops the rest of the
//! demo workspaces; when the session ends both are torn down, and an ephemeral peer that just
//! disconnects disappears on its own.

mod common;

use std::time::Duration;

use common::*;
use management_proto::pb;
use serde_json::{Value, json};

fn rules_from<'a>(map: &'a pb::NetworkMap, ip: &str) -> Vec<&'a pb::FirewallRule> {
    map.firewall_rules
        .iter()
        .filter(|r| r.peer_ip == ip && r.direction == pb::RuleDirection::In as i32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_session_lifecycle() {
    let dir = TempDir::new("seed");
    let mut o = options(&dir);
    o.ephemeral_timeout = Duration::from_secs(1);
    let m = std::sync::Arc::new(management::Management::open(&o).unwrap());
    let (url, _server) = serve(m.clone()).await;

    // Standing set-up: the demo-linux group with one other workspace, and the containers.
    let demo = ok(&m, "POST", "/api/groups", json!({"name": "demo-linux"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let containers = ok(&m, "POST", "/api/groups", json!({"name": "containers"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let standing = ok(
        &m,
        "POST",
        "/api/setup-keys",
        json!({"name": "standing", "type": "reusable", "auto_groups": [demo]}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut other = TestPeer::connect(&url).await;
    let other_ip = other
        .login(&standing)
        .await
        .unwrap()
        .peer_config
        .unwrap()
        .address
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let ck = ok(
        &m,
        "POST",
        "/api/setup-keys",
        json!({"name": "containers", "type": "reusable", "auto_groups": [containers]}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut container = TestPeer::connect(&url).await;
    container.login(&ck).await.unwrap();
    let container_id = m.read(|a| {
        a.peer_by_key(&container.key.public().to_base64())
            .unwrap()
            .id
            .clone()
    });

    // 1. A one-off, ephemeral setup key for the session, valid for an hour.
    let key = ok(&m, "POST", "/api/setup-keys", json!({"name": "demo-s42", "type": "one-off", "expires_in": 3600, "auto_groups": [demo], "usage_limit": 1, "ephemeral": true})).await;
    assert_eq!(
        (
            key["type"].as_str(),
            key["ephemeral"].as_bool(),
            key["usage_limit"].as_u64()
        ),
        (Some("one-off"), Some(true), Some(1))
    );
    // 2. The session's peer registers with it: an overlay address, in demo-linux, ephemeral.
    let mut session = TestPeer::connect(&url).await;
    let session_ip = session
        .login(key["key"].as_str().unwrap())
        .await
        .unwrap()
        .peer_config
        .unwrap()
        .address
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // Connected for the whole session, as a session's client is: an ephemeral peer goes only
    // after it has been disconnected for the timeout (1 s here), which a slow run must not reach.
    let _session_stream = session.sync().await.unwrap();
    let peer = ok(&m, "GET", "/api/peers", Value::Null)
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["ip"] == session_ip.as_str())
        .unwrap()
        .clone();
    let session_id = peer["id"].as_str().unwrap().to_string();
    assert_eq!(peer["ephemeral"], true);
    assert_eq!(peer["groups"][0]["name"], "demo-linux");
    assert_eq!(
        key_state(&m, key["id"].as_str().unwrap()).await,
        "overused",
        "one use only"
    );

    // 3. The per-session policy: the peer to its container on 6900 and 443; the rest of the demo
    //    workspaces dropped (drop decides before accept, so "the rest" is named, not prioritised).
    let policy = ok(&m, "POST", "/api/policies", json!({
        "name": "demo-session-s42", "description": "Temporary policy for demo s42", "enabled": true,
        "rules": [
            {"name": "allow-s42-to-container", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "tcp",
             "ports": ["6900", "443"], "sourceResource": {"id": session_id, "type": "peer"}, "destinationResource": {"id": container_id, "type": "peer"}},
            {"name": "deny-s42-lateral", "enabled": true, "action": "drop", "bidirectional": false, "protocol": "all",
             "sourceResource": {"id": session_id, "type": "peer"}, "destinations": [demo]},
        ]
    })).await;
    let policy_id = policy["id"].as_str().unwrap().to_string();

    let mut container_stream = container.sync().await.unwrap();
    let map = container
        .next_map(&mut container_stream, Duration::from_secs(2))
        .await
        .unwrap();
    let ports: Vec<&str> = rules_from(&map, &session_ip)
        .iter()
        .map(|r| r.port.as_str())
        .collect();
    assert_eq!(ports, vec!["6900", "443"]);
    assert!(
        rules_from(&map, &session_ip)
            .iter()
            .all(|r| r.action == pb::RuleAction::Accept as i32
                && r.protocol == pb::RuleProtocol::Tcp as i32)
    );
    let mut other_stream = other.sync().await.unwrap();
    let map = other
        .next_map(&mut other_stream, Duration::from_secs(2))
        .await
        .unwrap();
    let lateral = rules_from(&map, &session_ip);
    assert_eq!(lateral.len(), 1);
    assert_eq!(
        (lateral[0].action, lateral[0].protocol),
        (pb::RuleAction::Drop as i32, pb::RuleProtocol::All as i32)
    );
    assert!(rules_from(&map, &other_ip).is_empty());

    // 4. The session ends: delete the peer and the session's policy; the container's map loses the rules.
    ok(
        &m,
        "DELETE",
        &format!("/api/peers/{session_id}"),
        Value::Null,
    )
    .await;
    ok(
        &m,
        "DELETE",
        &format!("/api/policies/{policy_id}"),
        Value::Null,
    )
    .await;
    let mut map = container
        .next_map(&mut container_stream, Duration::from_secs(2))
        .await
        .unwrap();
    while !rules_from(&map, &session_ip).is_empty() {
        map = container
            .next_map(&mut container_stream, Duration::from_secs(2))
            .await
            .unwrap();
    }
    assert!(map.firewall_rules_is_empty && map.remote_peers_is_empty);
    assert_eq!(ok(&m, "GET", "/api/policies", Value::Null).await, json!([]));

    // 5. A session that simply disconnects: its ephemeral peer goes by itself.
    let key = ok(&m, "POST", "/api/setup-keys", json!({"name": "demo-s43", "type": "one-off", "expires_in": 3600, "auto_groups": [demo], "ephemeral": true})).await;
    let mut s43 = TestPeer::connect(&url).await;
    s43.login(key["key"].as_str().unwrap()).await.unwrap();
    let stream = s43.sync().await.unwrap();
    assert_eq!(m.read(|a| a.peers.len()), 3);
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while m.read(|a| a.peers.len()) == 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "ephemeral session peer still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        m.read(|a| a.peers.values().all(|p| !p.ephemeral)),
        "only the standing peers remain"
    );
}

async fn key_state(m: &std::sync::Arc<management::Management>, id: &str) -> String {
    ok(m, "GET", &format!("/api/setup-keys/{id}"), Value::Null).await["state"]
        .as_str()
        .unwrap()
        .to_string()
}
