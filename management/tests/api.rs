//! The REST API: auth, hostile input (each a clear 4xx and no state change), NetBird-shaped JSON,
//! and persistence across a restart.

mod common;

use common::*;
use serde_json::{Value, json};

async fn setup(m: &std::sync::Arc<management::Management>) -> (String, String) {
    let g = ok(m, "POST", "/api/groups", json!({"name": "demo-linux"})).await;
    let n = ok(m, "POST", "/api/networks", json!({"name": "lan"})).await;
    (
        g["id"].as_str().unwrap().into(),
        n["id"].as_str().unwrap().into(),
    )
}

#[tokio::test]
async fn token_auth_401_without_or_wrong_and_both_schemes_work() {
    let dir = TempDir::new("auth");
    let m = open(&dir);
    assert_eq!(call_raw(&m, "GET", "/api/peers", None, vec![]).await.0, 401);
    assert_eq!(
        call_raw(&m, "GET", "/api/peers", Some("Token nope"), vec![])
            .await
            .0,
        401
    );
    assert_eq!(
        call_raw(&m, "GET", "/api/peers", Some("Basic abc"), vec![])
            .await
            .0,
        401
    );
    assert_eq!(
        call_raw(
            &m,
            "GET",
            "/api/peers",
            Some(&format!("Token {TOKEN}")),
            vec![]
        )
        .await,
        (200, json!([]))
    );
    assert_eq!(
        call_raw(
            &m,
            "GET",
            "/api/peers",
            Some(&format!("Bearer {TOKEN}")),
            vec![]
        )
        .await
        .0,
        200
    );
    let (status, body) = call(&m, "GET", "/api/nothing-here", None).await;
    assert_eq!((status, body["code"].clone()), (404, json!(404)));
}

#[tokio::test]
async fn hostile_bodies_are_rejected_with_reasons_and_change_nothing() {
    let dir = TempDir::new("hostile");
    let m = open(&dir);
    let (group, network) = setup(&m).await;
    let before = m.read(|a| a.clone());
    let rule = |extra: Value| {
        let mut r = json!({"name": "r", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "tcp", "sources": [group], "destinations": [group]});
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"name": "p", "enabled": true, "rules": [r]})
    };
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("POST", "/api/groups".into(), b"{\"name\": ".to_vec(), 400, "EOF"),
        ("POST", "/api/groups".into(), b"not json".to_vec(), 400, "expected"),
        ("POST", "/api/groups".into(), vec![], 400, "empty"),
        ("POST", "/api/groups".into(), br#"{"name": 7}"#.to_vec(), 400, "invalid type"),
        ("POST", "/api/groups".into(), br#"{"name": "x", "peers": "all"}"#.to_vec(), 400, "invalid type"),
        ("POST", "/api/groups".into(), br#"{"name": "x", "peers": ["ghost"]}"#.to_vec(), 422, "peer ghost does not exist"),
        ("POST", "/api/groups".into(), br#"{"name": "demo-linux"}"#.to_vec(), 409, "already exists"),
        ("POST", "/api/groups".into(), format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20)).into_bytes(), 413, ""),
        ("POST", "/api/setup-keys".into(), br#"{"name": "k", "type": "one-twice"}"#.to_vec(), 422, "unknown setup key type"),
        ("POST", "/api/setup-keys".into(), br#"{"name": "k", "type": "reusable", "expires_in": -5}"#.to_vec(), 422, "not within"),
        ("POST", "/api/setup-keys".into(), br#"{"name": "k", "type": "reusable", "auto_groups": ["ghost"]}"#.to_vec(), 422, "group ghost does not exist"),
        ("POST", "/api/policies".into(), rule(json!({"ports": ["0"]})).to_string().into_bytes(), 422, "not a port"),
        ("POST", "/api/policies".into(), rule(json!({"ports": ["70000"]})).to_string().into_bytes(), 422, "not a port"),
        ("POST", "/api/policies".into(), rule(json!({"ports": ["80-90"]})).to_string().into_bytes(), 422, "not a port"),
        ("POST", "/api/policies".into(), rule(json!({"port_ranges": [{"start": 900, "end": 80}]})).to_string().into_bytes(), 422, "start <= end"),
        ("POST", "/api/policies".into(), rule(json!({"port_ranges": [{"start": 1, "end": 65536}]})).to_string().into_bytes(), 422, "within 1-65535"),
        ("POST", "/api/policies".into(), rule(json!({"protocol": "icmp", "ports": ["80"]})).to_string().into_bytes(), 422, "only to tcp and udp"),
        ("POST", "/api/policies".into(), rule(json!({"protocol": "gre"})).to_string().into_bytes(), 400, "unknown variant"),
        ("POST", "/api/policies".into(), rule(json!({"action": "maybe"})).to_string().into_bytes(), 400, "unknown variant"),
        ("POST", "/api/policies".into(), rule(json!({"destinations": ["ghost"]})).to_string().into_bytes(), 422, "rules[0].destinations"),
        ("POST", "/api/policies".into(), br#"{"name": "p", "enabled": true, "rules": []}"#.to_vec(), 422, "at least one rule"),
        ("POST", format!("/api/networks/{network}/resources"), br#"{"name": "r", "address": "10.0.0.1/8", "enabled": true}"#.to_vec(), 422, "host bits"),
        ("POST", format!("/api/networks/{network}/resources"), br#"{"name": "r", "address": "10.0.0.0/40", "enabled": true}"#.to_vec(), 422, "not a valid"),
        ("POST", format!("/api/networks/{network}/resources"), br#"{"name": "r", "address": "not a host", "enabled": true}"#.to_vec(), 422, "not a valid"),
        ("POST", "/api/networks/ghost/resources".into(), br#"{"name": "r", "address": "10.0.0.0/8", "enabled": true}"#.to_vec(), 404, "network ghost"),
        ("POST", format!("/api/networks/{network}/routers"), br#"{"metric": 1, "masquerade": true, "enabled": true}"#.to_vec(), 422, "peer or peer_groups"),
        ("POST", format!("/api/networks/{network}/routers"), br#"{"peer": "ghost", "metric": 1, "masquerade": true, "enabled": true}"#.to_vec(), 422, "peer ghost"),
        ("POST", format!("/api/networks/{network}/routers"), format!("{{\"peer_groups\": [\"{group}\"], \"metric\": 0, \"masquerade\": true, \"enabled\": true}}").into_bytes(), 422, "metric"),
        ("PUT", "/api/groups/ghost".into(), br#"{"name": "x"}"#.to_vec(), 404, "group ghost not found"),
        ("DELETE", "/api/policies/ghost".into(), vec![], 404, "policy ghost not found"),
        ("GET", "/api/peers/ghost".into(), vec![], 404, "peer ghost not found"),
    ];
    for (method, path, body, want, message) in cases {
        let (status, json) =
            call_raw(&m, method, &path, Some(&format!("Token {TOKEN}")), body).await;
        assert_eq!(status, want, "{method} {path}: {json}");
        if !message.is_empty() {
            let text = json["message"].as_str().unwrap_or_default();
            assert!(
                text.contains(message),
                "{method} {path}: message {text:?} lacks {message:?}"
            );
            assert_eq!(json["code"], json!(want));
        }
        assert_eq!(
            m.read(|a| a.clone()),
            before,
            "{method} {path} changed the account"
        );
    }
}

#[tokio::test]
async fn objects_round_trip_in_netbird_shapes_and_survive_a_restart() {
    let dir = TempDir::new("shapes");
    let m = open(&dir);
    let (group, network) = setup(&m).await;
    let key = ok(&m, "POST", "/api/setup-keys", json!({"name": "demo-s1", "type": "one-off", "expires_in": 3600, "auto_groups": [group], "usage_limit": 1, "ephemeral": true})).await;
    assert_eq!(key["type"], "one-off");
    assert_eq!(key["state"], "valid");
    assert_eq!(key["valid"], true);
    assert_eq!(key["usage_limit"], 1);
    assert_eq!(
        key["key"].as_str().unwrap().len(),
        36,
        "the secret is shown once, in full"
    );
    let key_id = key["id"].as_str().unwrap();
    let listed = ok(&m, "GET", &format!("/api/setup-keys/{key_id}"), Value::Null).await;
    assert!(
        listed["key"].as_str().unwrap().ends_with("****"),
        "later reads mask it"
    );

    let policy = ok(&m, "POST", "/api/policies", json!({
        "name": "web", "description": "d", "enabled": true,
        "rules": [{"name": "r", "enabled": true, "action": "accept", "bidirectional": true, "protocol": "tcp",
                   "ports": ["443", "6900"], "sources": [group], "destinations": [group]},
                  {"name": "r2", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "udp",
                   "port_ranges": [{"start": 8000, "end": 8080}], "sources": [group], "destinations": [group]}]
    })).await;
    assert_eq!(policy["rules"][0]["ports"], json!(["443", "6900"]));
    assert_eq!(
        policy["rules"][1]["port_ranges"],
        json!([{"start": 8000, "end": 8080}])
    );
    assert_eq!(policy["rules"][0]["sources"][0]["name"], "demo-linux");
    let resource = ok(
        &m,
        "POST",
        &format!("/api/networks/{network}/resources"),
        json!({"name": "db", "address": "198.18.10.10", "enabled": true, "groups": [group]}),
    )
    .await;
    assert_eq!(resource["type"], "host");
    let subnet = ok(
        &m,
        "POST",
        &format!("/api/networks/{network}/resources"),
        json!({"name": "lan", "address": "198.18.10.0/24", "enabled": true}),
    )
    .await;
    assert_eq!(subnet["type"], "subnet");
    let domain = ok(
        &m,
        "POST",
        &format!("/api/networks/{network}/resources"),
        json!({"name": "wiki", "address": "*.wiki.example", "enabled": false}),
    )
    .await;
    assert_eq!(domain["type"], "domain");
    let router = ok(
        &m,
        "POST",
        &format!("/api/networks/{network}/routers"),
        json!({"peer_groups": [group], "metric": 100, "masquerade": true, "enabled": true}),
    )
    .await;
    let net = ok(&m, "GET", &format!("/api/networks/{network}"), Value::Null).await;
    assert_eq!(net["resources"].as_array().unwrap().len(), 3);
    assert_eq!(net["routers"], json!([router["id"]]));
    let g = ok(&m, "GET", &format!("/api/groups/{group}"), Value::Null).await;
    assert_eq!(
        g["resources"],
        json!([{"id": resource["id"], "type": "host"}])
    );

    // A group still in use cannot go; revocation sticks.
    assert_eq!(
        call(&m, "DELETE", &format!("/api/groups/{group}"), None)
            .await
            .0,
        400
    );
    let revoked = ok(
        &m,
        "PUT",
        &format!("/api/setup-keys/{key_id}"),
        json!({"revoked": true, "auto_groups": [group]}),
    )
    .await;
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(
        call(
            &m,
            "PUT",
            &format!("/api/setup-keys/{key_id}"),
            Some(json!({"revoked": false, "auto_groups": [group]}))
        )
        .await
        .0,
        422
    );

    // Restart: the same objects, the same serial, the same server key.
    let (serial, server_key) = (m.read(|a| a.serial), m.key.public());
    let snapshot = m.read(|a| a.clone());
    let policy = ok(
        &m,
        "GET",
        &format!("/api/policies/{}", policy["id"].as_str().unwrap()),
        Value::Null,
    )
    .await;
    drop(m);
    let m = open(&dir);
    assert_eq!(m.read(|a| a.clone()), snapshot);
    assert_eq!(m.read(|a| a.serial), serial);
    assert_eq!(m.key.public(), server_key);
    assert_eq!(
        ok(
            &m,
            "GET",
            &format!("/api/policies/{}", policy["id"].as_str().unwrap()),
            Value::Null
        )
        .await,
        policy
    );
    // Deleting the network takes its resources and routers along.
    ok(
        &m,
        "DELETE",
        &format!("/api/networks/{network}"),
        Value::Null,
    )
    .await;
    assert!(m.read(|a| a.resources.is_empty() && a.routers.is_empty()));
    assert!(
        ok(&m, "GET", &format!("/api/groups/{group}"), Value::Null).await["resources"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_api_token_file_is_created_once_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("token");
    let mut o = options(&dir);
    o.api_token = None;
    let first = management::Management::open(&o).unwrap().api_token.clone();
    let path = dir.0.join("api-token");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(management::Management::open(&o).unwrap().api_token, first);
    assert_eq!(
        std::fs::metadata(dir.0.join("server.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[tokio::test]
async fn backup_while_serving_then_restore_gives_the_same_maps() {
    let dir = TempDir::new("backup");
    let m = open(&dir);
    let (group, _) = setup(&m).await;
    ok(
        &m,
        "POST",
        "/api/peers",
        json!({"name": "a", "groups": [group]}),
    )
    .await;
    ok(
        &m,
        "POST",
        "/api/peers",
        json!({"name": "b", "groups": [group]}),
    )
    .await;
    ok(&m, "POST", "/api/policies", json!({"name": "p", "enabled": true, "rules": [{"name": "r", "enabled": true, "action": "accept", "protocol": "tcp", "ports": ["22"], "sources": [group], "destinations": [group]}]})).await;
    let maps = |m: &std::sync::Arc<management::Management>| {
        m.read(|a| {
            a.peers
                .keys()
                .map(|id| management::netmap::network_map(a, id, &m.settings).unwrap())
                .collect::<Vec<_>>()
        })
    };
    let (snapshot, before) = (m.read(|a| a.clone()), maps(&m));
    let out = TempDir::new("backup-out");
    let target = out.0.join("snap");
    management::backup::backup(&dir.0, &target).unwrap();
    // Changes after the backup are not in it.
    ok(&m, "POST", "/api/groups", json!({"name": "later"})).await;
    assert!(
        management::backup::backup(&dir.0, &target).is_err(),
        "a backup is never overwritten"
    );

    let restored = TempDir::new("restored");
    management::backup::restore(&target, &restored.0, false).unwrap();
    assert!(
        management::backup::restore(&target, &restored.0, false).is_err(),
        "a live database is not replaced unasked"
    );
    let r = open(&restored);
    assert_eq!(r.read(|a| a.clone()), snapshot);
    assert_eq!(maps(&r), before);
    assert_eq!(
        r.key.public(),
        m.key.public(),
        "the same server to its peers"
    );
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [
        (restored.0.clone(), 0o700),
        (restored.0.join("management.db"), 0o600),
        (restored.0.join("server.key"), 0o600),
        (dir.0.join("management.db"), 0o600),
    ] {
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            mode,
            "{}",
            path.display()
        );
    }
}

#[tokio::test]
async fn an_api_token_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("token-mode");
    std::fs::write(dir.0.join("api-token"), "a-token-others-saw\n").unwrap();
    std::fs::set_permissions(
        dir.0.join("api-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut o = options(&dir);
    o.api_token = None;
    let error = management::Management::open(&o)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("mode 644"), "{error}");
}

#[tokio::test]
async fn setup_keys_are_stored_hashed_and_still_register_after_a_restart() {
    let dir = TempDir::new("hashed");
    let m = open(&dir);
    let key = ok(
        &m,
        "POST",
        "/api/setup-keys",
        json!({"name": "k", "type": "reusable"}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    drop(m);
    let db = std::fs::read(dir.0.join("management.db")).unwrap();
    let wal = std::fs::read(dir.0.join("management.db-wal")).unwrap_or_default();
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !contains(&db, &key) && !contains(&wal, &key),
        "the secret is not on disk"
    );
    let m = open(&dir);
    let p = m
        .change(management::activity::Initiator::System, |a| {
            a.register_peer(
                &key,
                "peer-key",
                &Default::default(),
                "100.64.0.0/10".parse().unwrap(),
                1,
            )
        })
        .unwrap();
    assert!(
        m.read(|a| a
            .groups
            .values()
            .any(|g| g.name == "All" && g.peers.contains(&p.id))),
        "in All"
    );
}
