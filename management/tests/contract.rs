//! Contract tests: per endpoint, request bodies in the shapes NetBird's API clients send (Go
//! clients write `null` for nil slices, leave false booleans and optional fields out, and carry
//! fields this server does not know), over real HTTP; and every response field NetBird's OpenAPI
//! marks required, present and of the right JSON type, date-times in RFC 3339. The tables are
//! this project's own, written from the OpenAPI's `required` lists.

mod common;

use common::*;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum T {
    Str,
    Bool,
    Num,
    Arr,
    Obj,
    /// RFC 3339 date-time.
    Time,
}

const GROUP_MINIMUM: &[(&str, T)] = &[
    ("id", T::Str),
    ("name", T::Str),
    ("peers_count", T::Num),
    ("resources_count", T::Num),
];
const GROUP: &[(&str, T)] = &[
    ("id", T::Str),
    ("name", T::Str),
    ("peers_count", T::Num),
    ("resources_count", T::Num),
    ("peers", T::Arr),
    ("resources", T::Arr),
];
const PEER: &[(&str, T)] = &[
    ("id", T::Str),
    ("name", T::Str),
    ("created_at", T::Time),
    ("ip", T::Str),
    ("connection_ip", T::Str),
    ("connected", T::Bool),
    ("last_seen", T::Time),
    ("os", T::Str),
    ("kernel_version", T::Str),
    ("geoname_id", T::Num),
    ("version", T::Str),
    ("groups", T::Arr),
    ("ssh_enabled", T::Bool),
    ("user_id", T::Str),
    ("hostname", T::Str),
    ("ui_version", T::Str),
    ("dns_label", T::Str),
    ("login_expiration_enabled", T::Bool),
    ("login_expired", T::Bool),
    ("last_login", T::Time),
    ("inactivity_expiration_enabled", T::Bool),
    ("approval_required", T::Bool),
    ("country_code", T::Str),
    ("city_name", T::Str),
    ("serial_number", T::Str),
    ("extra_dns_labels", T::Arr),
    ("ephemeral", T::Bool),
];
const PEER_BATCH_EXTRA: &[(&str, T)] = &[("accessible_peers_count", T::Num)];
const SETUP_KEY: &[(&str, T)] = &[
    ("id", T::Str),
    ("key", T::Str),
    ("name", T::Str),
    ("expires", T::Time),
    ("type", T::Str),
    ("valid", T::Bool),
    ("revoked", T::Bool),
    ("used_times", T::Num),
    ("last_used", T::Time),
    ("state", T::Str),
    ("auto_groups", T::Arr),
    ("updated_at", T::Time),
    ("usage_limit", T::Num),
    ("ephemeral", T::Bool),
    ("allow_extra_dns_labels", T::Bool),
];
const POLICY: &[(&str, T)] = &[
    ("id", T::Str),
    ("name", T::Str),
    ("enabled", T::Bool),
    ("source_posture_checks", T::Arr),
    ("rules", T::Arr),
];
const POLICY_RULE: &[(&str, T)] = &[
    ("name", T::Str),
    ("enabled", T::Bool),
    ("action", T::Str),
    ("bidirectional", T::Bool),
    ("protocol", T::Str),
];
const NETWORK: &[(&str, T)] = &[
    ("id", T::Str),
    ("name", T::Str),
    ("routers", T::Arr),
    ("routing_peers_count", T::Num),
    ("resources", T::Arr),
    ("policies", T::Arr),
];
const RESOURCE: &[(&str, T)] = &[
    ("id", T::Str),
    ("type", T::Str),
    ("groups", T::Arr),
    ("name", T::Str),
    ("address", T::Str),
    ("enabled", T::Bool),
];
const ROUTER: &[(&str, T)] = &[
    ("id", T::Str),
    ("peer", T::Str),
    ("metric", T::Num),
    ("masquerade", T::Bool),
    ("enabled", T::Bool),
];

/// NetBird's Event: every field required.
const EVENT: &[(&str, T)] = &[
    ("id", T::Str),
    ("timestamp", T::Time),
    ("activity", T::Str),
    ("activity_code", T::Str),
    ("initiator_id", T::Str),
    ("initiator_name", T::Str),
    ("initiator_email", T::Str),
    ("target_id", T::Str),
    ("meta", T::Obj),
];

fn check(what: &str, v: &Value, fields: &[(&str, T)]) {
    for (name, t) in fields {
        let f = v
            .get(*name)
            .unwrap_or_else(|| panic!("{what}: required field {name} missing in {v}"));
        let good = match t {
            T::Str => f.is_string(),
            T::Bool => f.is_boolean(),
            T::Num => f.is_number(),
            T::Arr => f.is_array(),
            T::Obj => f.is_object(),
            T::Time => f.as_str().is_some_and(|s| {
                humantime::parse_rfc3339(s).is_ok() || s == "0001-01-01T00:00:00Z"
            }),
        };
        assert!(good, "{what}: field {name} should be {t:?}, is {f}");
    }
}

fn each<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v}"));
    assert!(!list.is_empty(), "{what}: empty list");
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_accepts_netbird_client_bodies_and_answers_every_required_field() {
    let dir = TempDir::new("contract");
    let m = std::sync::Arc::new(management::Management::open(&options(&dir)).unwrap());
    let (api, _server) = serve(m.clone()).await;
    let post = |path: &'static str, body: Value| {
        let api = api.clone();
        async move {
            let (status, v) = http(&api, "POST", path, Some(body)).await;
            assert_eq!(status, 200, "POST {path}: {v}");
            v
        }
    };

    // Groups: a Go client's nil slices as null, an unknown field.
    let group = post(
        "/api/groups",
        json!({"name": "g", "peers": null, "resources": null, "issued": "api"}),
    )
    .await;
    check("POST /api/groups", &group, GROUP);
    let gid = group["id"].as_str().unwrap().to_string();
    // Setup keys: optional booleans left out.
    let key = post("/api/setup-keys", json!({"name": "k", "type": "reusable", "expires_in": 86400, "auto_groups": [gid], "usage_limit": 0})).await;
    check("POST /api/setup-keys", &key, SETUP_KEY);
    let kid = key["id"].as_str().unwrap().to_string();
    // Peers come from Login and from POST /api/peers.
    let mut p = TestPeer::connect(&api).await;
    p.login(key["key"].as_str().unwrap()).await.unwrap();
    let provisioned = post("/api/peers", json!({"name": "ws", "groups": [gid]})).await;
    check("POST /api/peers", &provisioned, PEER);
    let pid = provisioned["id"].as_str().unwrap().to_string();
    // Policies: the rule shape of NetBird's PolicyRuleUpdate, booleans omitted when false.
    let policy = post("/api/policies", json!({"name": "p", "enabled": true, "source_posture_checks": null, "rules": [
        {"name": "r", "enabled": true, "action": "accept", "protocol": "tcp", "ports": ["22"], "port_ranges": null, "sources": [gid], "destinations": [gid]},
        {"name": "ssh", "enabled": true, "action": "accept", "protocol": "netbird-ssh", "sources": [gid], "destinations": [gid], "authorized_groups": {gid.clone(): ["root"]}},
    ]})).await;
    check("POST /api/policies", &policy, POLICY);
    for r in each(&policy["rules"], "policy rules") {
        check("policy rule", r, POLICY_RULE);
        for g in each(&r["sources"], "rule sources") {
            check("rule source", g, GROUP_MINIMUM);
        }
    }
    let network = post("/api/networks", json!({"name": "lan", "description": null})).await;
    check("POST /api/networks", &network, NETWORK);
    let nid = network["id"].as_str().unwrap().to_string();
    let (status, resource) = http(
        &api,
        "POST",
        &format!("/api/networks/{nid}/resources"),
        Some(json!({"name": "db", "address": "198.18.10.10/32", "enabled": true, "groups": [gid]})),
    )
    .await;
    assert_eq!(status, 200, "{resource}");
    check("POST resources", &resource, RESOURCE);
    let (status, router) = http(&api, "POST", &format!("/api/networks/{nid}/routers"), Some(json!({"peer": pid, "peer_groups": null, "metric": 100, "masquerade": true, "enabled": true}))).await;
    assert_eq!(status, 200, "{router}");
    check("POST routers", &router, ROUTER);

    // Every read, list and single.
    let get = |path: String| {
        let api = api.clone();
        async move {
            let (status, v) = http(&api, "GET", &path, None).await;
            assert_eq!(status, 200, "GET {path}: {v}");
            v
        }
    };
    for peer in each(&get("/api/peers".into()).await, "peers") {
        check("GET /api/peers", peer, PEER);
        check("GET /api/peers", peer, PEER_BATCH_EXTRA);
        for g in each(&peer["groups"], "peer groups") {
            check("peer group", g, GROUP_MINIMUM);
        }
    }
    check("GET peer", &get(format!("/api/peers/{pid}")).await, PEER);
    for g in each(&get("/api/groups".into()).await, "groups") {
        check("GET /api/groups", g, GROUP);
    }
    check("GET group", &get(format!("/api/groups/{gid}")).await, GROUP);
    for k in each(&get("/api/setup-keys".into()).await, "setup keys") {
        check("GET /api/setup-keys", k, SETUP_KEY);
    }
    check(
        "GET setup key",
        &get(format!("/api/setup-keys/{kid}")).await,
        SETUP_KEY,
    );
    for p in each(&get("/api/policies".into()).await, "policies") {
        check("GET /api/policies", p, POLICY);
    }
    let n = get(format!("/api/networks/{nid}")).await;
    check("GET network", &n, NETWORK);
    assert_eq!(
        n["policies"],
        json!([policy["id"]]),
        "the network shows the policy that reaches its resource"
    );
    for r in each(
        &get(format!("/api/networks/{nid}/resources")).await,
        "resources",
    ) {
        check("GET resources", r, RESOURCE);
    }
    for r in each(&get("/api/networks/routers".into()).await, "all routers") {
        check("GET /api/networks/routers", r, ROUTER);
    }

    // PUT replaces: a group PUT without peers empties it; the All group is read-only.
    let (status, g) = http(
        &api,
        "PUT",
        &format!("/api/groups/{gid}"),
        Some(json!({"name": "g2"})),
    )
    .await;
    assert_eq!((status, g["peers_count"].as_u64()), (200, Some(0)), "{g}");
    let all = get("/api/groups?name=All".into()).await;
    assert_eq!(all[0]["peers_count"], 2, "All holds every peer");
    let all_id = all[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        http(
            &api,
            "PUT",
            &format!("/api/groups/{all_id}"),
            Some(json!({"name": "All", "peers": []}))
        )
        .await
        .0,
        422
    );
    assert_eq!(
        http(&api, "DELETE", &format!("/api/groups/{all_id}"), None)
            .await
            .0,
        422
    );
    assert_eq!(
        http(&api, "GET", "/api/groups?name=nope", None).await.0,
        404
    );
    // Filters.
    assert_eq!(
        get("/api/peers?name=w".into())
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let ip = provisioned["ip"].as_str().unwrap();
    assert_eq!(
        get(format!("/api/peers?ip={ip}")).await[0]["id"],
        pid.as_str()
    );
    // A setup-key PUT without auto_groups is refused, not a silent wipe.
    let (status, e) = http(
        &api,
        "PUT",
        &format!("/api/setup-keys/{kid}"),
        Some(json!({"revoked": false})),
    )
    .await;
    assert_eq!((status, e["code"].as_u64()), (422, Some(422)), "{e}");
    // Status codes: unreadable 400, invalid 422, clash 409, missing 404, wrong token 401.
    assert_eq!(
        http(&api, "POST", "/api/groups", Some(json!({"name": 5})))
            .await
            .0,
        400
    );
    assert_eq!(
        http(&api, "POST", "/api/groups", Some(json!({"name": ""})))
            .await
            .0,
        422
    );
    assert_eq!(
        http(&api, "POST", "/api/groups", Some(json!({"name": "g2"})))
            .await
            .0,
        409
    );
    assert_eq!(http(&api, "GET", "/api/policies/nope", None).await.0, 404);
    // The activity log of all the above.
    for path in ["/api/events", "/api/events/audit"] {
        let (status, events) = http(&api, "GET", path, None).await;
        assert_eq!(status, 200, "{events}");
        for e in each(&events, path) {
            check(path, e, EVENT);
        }
    }
}
