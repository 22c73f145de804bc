//! The activity log over real HTTP and gRPC: every kind of change an operator, a peer or the
//! service itself makes shows up once, with NetBird's codes, the right initiator and target,
//! newest first; refused changes leave no trace; the log survives a restart.

mod common;

use std::time::Duration;

use common::*;
use management_proto::WgKey;
use serde_json::{Value, json};

/// The log as `/api/events` lists it, after checking every field NetBird's OpenAPI requires.
async fn events(api: &str) -> Vec<Value> {
    let (status, list) = http(api, "GET", "/api/events", None).await;
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().expect("an array").clone();
    for e in &list {
        for field in [
            "id",
            "timestamp",
            "activity",
            "activity_code",
            "initiator_id",
            "initiator_name",
            "initiator_email",
            "target_id",
        ] {
            assert!(e[field].is_string(), "{field} is a string in {e}");
        }
        assert!(
            e["meta"]
                .as_object()
                .expect("meta is an object")
                .values()
                .all(Value::is_string),
            "meta holds strings: {e}"
        );
        humantime::parse_rfc3339(e["timestamp"].as_str().unwrap())
            .unwrap_or_else(|err| panic!("timestamp is RFC 3339: {e}: {err}"));
    }
    list
}

/// (code, initiator_id, target_id) of each event, oldest first.
fn codes(list: &[Value]) -> Vec<(String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap().to_string();
    list.iter()
        .rev()
        .map(|e| {
            (
                s(&e["activity_code"]),
                s(&e["initiator_id"]),
                s(&e["target_id"]),
            )
        })
        .collect()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_changed_what_and_when() {
    let dir = TempDir::new("events");
    let mut o = options(&dir);
    o.ephemeral_timeout = Duration::from_secs(1); // the sweeper runs every 250 ms
    let m = std::sync::Arc::new(management::Management::open(&o).unwrap());
    let (api, server) = serve(m.clone()).await;
    let api_ = "api-token".to_string();
    let started = std::time::SystemTime::now() - Duration::from_secs(1);

    // An operator sets up; one refused request in the middle leaves nothing behind.
    let (_, group) = http(&api, "POST", "/api/groups", Some(json!({"name": "devs"}))).await;
    let (_, key) = http(
        &api,
        "POST",
        "/api/setup-keys",
        Some(json!({"name": "laptops", "type": "reusable", "auto_groups": ["devs"]})),
    )
    .await;
    let rule = json!({"name": "r", "enabled": true, "action": "accept", "bidirectional": true, "protocol": "all", "sources": [id(&group)], "destinations": [id(&group)]});
    let (_, policy) = http(
        &api,
        "POST",
        "/api/policies",
        Some(json!({"name": "devs-mesh", "enabled": true, "rules": [rule.clone()]})),
    )
    .await;
    let refused = http(&api, "POST", "/api/policies", Some(json!({"name": "broken", "enabled": true, "rules": [{"name": "r", "action": "accept", "protocol": "all", "sources": ["nope"], "destinations": [id(&group)]}]}))).await;
    assert_eq!(refused.0, 422, "{}", refused.1);
    assert_eq!(
        http(
            &api,
            "PUT",
            &format!("/api/policies/{}", id(&policy)),
            Some(json!({"name": "devs-mesh-2", "enabled": true, "rules": [rule]}))
        )
        .await
        .0,
        200
    );

    // A peer registers with the key and logs in again (as a client does at every start).
    let mut laptop = TestPeer::connect(&api).await;
    laptop.login(key["key"].as_str().unwrap()).await.unwrap();
    laptop.login("").await.unwrap();
    let laptop_id = m.read(|a| {
        a.peer_by_key(&laptop.key.public().to_base64())
            .unwrap()
            .id
            .clone()
    });

    // A provisioned peer: renamed, then its login expires while nobody acts.
    let soon = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(2))
        .to_string();
    let (_, ws) = http(
        &api,
        "POST",
        "/api/peers",
        Some(json!({"name": "ws-1", "login_expiration_enabled": true, "login_expiration": soon})),
    )
    .await;
    let mut workspace = TestPeer::connect_with_key(
        &api,
        WgKey::from_base64(ws["private_key"].as_str().unwrap()).unwrap(),
    )
    .await;
    let renamed = json!({"name": "ws-renamed", "ssh_enabled": true, "login_expiration_enabled": true, "inactivity_expiration_enabled": false});
    assert_eq!(
        http(
            &api,
            "PUT",
            &format!("/api/peers/{}", id(&ws)),
            Some(renamed)
        )
        .await
        .0,
        200
    );
    // An ACL that cleans itself up.
    let acl_rule = json!({"name": "r", "source_peers": [id(&ws)], "destination_peers": [laptop_id], "protocol": "tcp", "ports": ["22"], "action": "accept"});
    let (_, acl) = http(&api, "POST", "/api/acls", Some(json!({"name": "session", "rules": [acl_rule], "metadata": {"expires_at": soon, "auto_cleanup": true}}))).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(workspace.login("").await.is_err(), "expired");

    // Revoke the key, delete the laptop and the policy.
    let revoke =
        json!({"name": "laptops", "type": "reusable", "auto_groups": ["devs"], "revoked": true});
    assert_eq!(
        http(
            &api,
            "PUT",
            &format!("/api/setup-keys/{}", id(&key)),
            Some(revoke)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        http(&api, "DELETE", &format!("/api/peers/{laptop_id}"), None)
            .await
            .0,
        200
    );
    assert_eq!(
        http(
            &api,
            "DELETE",
            &format!("/api/policies/{}", id(&policy)),
            None
        )
        .await
        .0,
        200
    );

    let list = events(&api).await;
    let sys = "sys".to_string();
    let (key_id, ws_id) = (id(&key), id(&ws));
    let expected = vec![
        ("group.add".to_string(), api_.clone(), id(&group)),
        ("setupkey.add".into(), api_.clone(), key_id.clone()),
        ("policy.add".into(), api_.clone(), id(&policy)),
        ("policy.update".into(), api_.clone(), id(&policy)),
        (
            "peer.setupkey.add".into(),
            key_id.clone(),
            laptop_id.clone(),
        ),
        (
            "user.peer.login".into(),
            laptop_id.clone(),
            laptop_id.clone(),
        ),
        ("peer.user.add".into(), api_.clone(), ws_id.clone()),
        ("peer.rename".into(), api_.clone(), ws_id.clone()),
        ("peer.ssh.enable".into(), api_.clone(), ws_id.clone()),
        ("rule.add".into(), api_.clone(), id(&acl)),
    ];
    let got = codes(&list);
    assert_eq!(got[..expected.len()], expected[..], "in order: {got:#?}");
    // Expiries happen on the sweeper's schedule, in either order; then the last three requests.
    let mut expiries = got[expected.len()..expected.len() + 2].to_vec();
    expiries.sort();
    assert_eq!(
        expiries,
        vec![
            ("peer.login.expire".into(), sys.clone(), ws_id.clone()),
            ("rule.delete".into(), sys.clone(), id(&acl))
        ]
    );
    let tail = [
        ("setupkey.revoke".to_string(), api_.clone(), key_id.clone()),
        ("user.peer.delete".into(), api_.clone(), laptop_id.clone()),
        ("policy.delete".into(), api_.clone(), id(&policy)),
    ];
    assert_eq!(got[expected.len() + 2..], tail[..], "{got:#?}");

    // Details: messages and meta as NetBird words them; ids fall, times do not rise, down the list.
    let find = |code: &str| {
        list.iter()
            .find(|e| e["activity_code"] == code)
            .unwrap()
            .clone()
    };
    assert_eq!(find("peer.setupkey.add")["activity"], "Peer added");
    assert_eq!(find("peer.setupkey.add")["initiator_name"], "laptops");
    assert_eq!(find("peer.rename")["meta"]["old_name"], "ws-1");
    assert_eq!(find("peer.rename")["meta"]["name"], "ws-renamed");
    assert_eq!(find("peer.user.add")["meta"]["ip"], ws["ip"]);
    assert_eq!(find("policy.update")["meta"]["name"], "devs-mesh-2");
    assert_eq!(find("rule.delete")["meta"]["reason"], "expired");
    assert!(
        list.iter().all(|e| e["meta"]["name"] != "broken"),
        "a refused change is not logged"
    );
    let ids: Vec<u64> = list
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let times: Vec<std::time::SystemTime> = list
        .iter()
        .map(|e| humantime::parse_rfc3339(e["timestamp"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(
        times
            .iter()
            .all(|t| *t >= started && *t <= std::time::SystemTime::now()),
        "{times:?}"
    );
    assert_eq!(
        http(&api, "GET", "/api/events/audit", None).await.1,
        Value::Array(list.clone()),
        "both paths list the same"
    );

    // The log is the service's own state: it survives a restart, and the token guards it.
    server.abort();
    drop(m);
    let m = std::sync::Arc::new(management::Management::open(&o).unwrap());
    let (status, _) = call_raw(&m, "GET", "/api/events", None, vec![]).await;
    assert_eq!(status, 401);
    assert_eq!(
        call(&m, "GET", "/api/events", None).await.1,
        Value::Array(list)
    );
}
