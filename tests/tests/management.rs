//! Management end to end in namespaces: the real `gateway management serve`, the real
//! `gateway run --management-url`, REST calls, a peer speaking gRPC, and traffic through the lab.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use gateway::{demo, status::Report};
use gateway_testkit::harness::gateway_binary;
use gateway_testkit::{
    management::{self, Api, ManagementProcess},
    netns::Netns,
    process::{GatewayProcess, LAB_METRICS_ADDR},
    topology::{GATEWAY_LAN_ADDR, GATEWAY_OVERLAY_ADDR, Lab},
    traffic,
};
use management_proto::{WgKey, pb};
use serde_json::{Value, json};

const TOKEN: &str = "lab-token-5f2a9c";
const MGMT_ADDR: &str = "127.0.0.1:33073";

fn api(ns: &Netns) -> Api<'_> {
    Api {
        ns,
        addr: MGMT_ADDR,
        token: TOKEN,
    }
}

/// Logs a fresh peer (a new key) in over gRPC with `setup_key`, from inside `ns`.
fn grpc_login(ns: &Netns, setup_key: &str) -> Result<pb::LoginResponse, tonic::Status> {
    management::grpc_login(
        ns,
        &format!("http://{MGMT_ADDR}"),
        setup_key,
        WgKey::generate(),
        "lab-client",
    )
}

fn metric(gw: &GatewayProcess, ns: &Netns, name: &str) -> f64 {
    let text = gw.metrics(ns).expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// Waits for the gateway to apply a network map newer than `after`; returns the new serial and
/// how long it took.
fn wait_applied(gw: &GatewayProcess, ns: &Netns, after: f64) -> (f64, Duration) {
    let took = wait_until("network map applied", Duration::from_secs(5), || {
        metric(gw, ns, "gateway_management_serial ") > after
    });
    (metric(gw, ns, "gateway_management_serial "), took)
}

#[test]
fn gateway_enforces_what_management_says_through_trouble() {
    let lab = Lab::seed().expect("lab");
    let _servers = demo::start_servers(&lab).expect("servers");
    let _gw_server = traffic::Servers::start(&lab.gw, &[8443], &[]).expect("server on the gateway");
    let bin = gateway_binary();
    let addr: SocketAddr = MGMT_ADDR.parse().unwrap();
    let data = lab.dir.join("management");
    let mgmt_log = lab.dir.join("management.log");
    let mgmt = ManagementProcess::start(&bin, &lab.gw, &data, addr, TOKEN, &[], &mgmt_log)
        .expect("management starts");
    let api = api(&lab.gw);

    // Groups and keys, as an operator would create them.
    let gateways = api.id("/api/groups", json!({"name": "gateways"}));
    let clients = api.id("/api/groups", json!({"name": "clients"}));
    let gw_key = api.ok("POST", "/api/setup-keys", json!({"name": "gateway", "type": "one-off", "expires_in": 3600, "auto_groups": [gateways]}))["key"].as_str().unwrap().to_string();
    let client_key = api.ok(
        "POST",
        "/api/setup-keys",
        json!({"name": "clients", "type": "reusable", "auto_groups": [clients]}),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();

    // lin1 joins as a client peer (a real gRPC login); its overlay address is the lab's.
    grpc_login(&lab.gw, &client_key).expect("client registers");
    let client_id = api.peers()[0]["id"].as_str().unwrap().to_string();
    api.set_ip(&client_id, "100.64.101.1");

    // The gateway registers itself with its one-off key.
    let config = lab.write_management_config(LAB_METRICS_ADDR).unwrap();
    let state = lab.dir.join("gateway-state");
    let url = format!("http://{MGMT_ADDR}");
    let mut gw = GatewayProcess::start_with(
        &bin,
        &lab.gw,
        &config,
        &lab.dir.join("gateway.log"),
        &[
            "--management-url",
            &url,
            "--setup-key",
            &gw_key,
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )
    .expect("gateway starts");
    wait_until("gateway registered", Duration::from_secs(10), || {
        api.peers().len() == 2
    });
    let gw_id = api
        .peers()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .find(|id| *id != client_id)
        .unwrap();
    // The server knows the peer before the gateway has read the Login answer and recorded it.
    wait_until("registration recorded", Duration::from_secs(5), || {
        state.join("wg.key").exists() && state.join("registered").exists()
    });
    api.set_ip(&gw_id, GATEWAY_OVERLAY_ADDR);
    wait_until("gateway syncing", Duration::from_secs(10), || {
        metric(&gw, &lab.gw, "gateway_management_connected ") == 1.0
    });

    // The LAN host as a network resource routed by the gateway.
    let lan_res = api.id("/api/groups", json!({"name": "lan-resources"}));
    let network = api.id("/api/networks", json!({"name": "lab-lan"}));
    api.ok(
        "POST",
        &format!("/api/networks/{network}/resources"),
        json!({"name": "lan1", "address": "198.18.10.10", "enabled": true, "groups": [lan_res]}),
    );
    api.ok(
        "POST",
        &format!("/api/networks/{network}/routers"),
        json!({"peer": gw_id, "metric": 100, "masquerade": false, "enabled": true}),
    );

    let lin1 = &lab.host("lin1").ns;
    let win1 = &lab.host("win1").ns;
    let lan1: IpAddr = "198.18.10.10".parse().unwrap();
    let me: IpAddr = GATEWAY_OVERLAY_ADDR.parse().unwrap();
    // Default deny before any policy.
    // Wait for the map that carries the lab address; from here on each change is one new map.
    wait_until("address applied", Duration::from_secs(5), || {
        gw.status::<Report>(&lab.gw)
            .unwrap()
            .management
            .unwrap()
            .overlay_address
            .as_deref()
            == Some(GATEWAY_OVERLAY_ADDR)
    });
    let serial0 = gw
        .status::<Report>(&lab.gw)
        .unwrap()
        .management
        .unwrap()
        .serial as f64;
    assert_eq!(metric(&gw, &lab.gw, "gateway_management_serial "), serial0);
    assert!(!traffic::tcp_exchange(lin1, lan1, 80));
    assert!(!traffic::tcp_exchange(lin1, me, 8443));

    // One policy, two rules: forward to the LAN resource on 80, input to the gateway on 8443.
    let session = json!({"name": "session", "enabled": true, "rules": [
        {"name": "to-lan", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "tcp", "ports": ["80"], "sources": [clients], "destinations": [lan_res]},
        {"name": "to-gateway", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "tcp", "ports": ["8443"], "sources": [clients], "destinations": [gateways]},
    ]});
    let policy = api.id("/api/policies", session.clone());
    let (serial1, took) = wait_applied(&gw, &lab.gw, serial0);
    assert!(
        took < Duration::from_secs(1),
        "REST change to policy in force took {took:?}"
    );
    assert!(
        traffic::tcp_exchange(lin1, lan1, 80),
        "allowed forward flow\n{}",
        gw.log_text()
    );
    assert!(traffic::tcp_exchange(lin1, me, 8443), "allowed input flow");
    assert!(!traffic::tcp_exchange(lin1, lan1, 22), "other port");
    assert!(
        !traffic::tcp_exchange(win1, lan1, 80),
        "peer outside the source group"
    );

    // Delete it: denied again within a second.
    api.ok("DELETE", &format!("/api/policies/{policy}"), Value::Null);
    let (serial2, took) = wait_applied(&gw, &lab.gw, serial1);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(!traffic::tcp_exchange(lin1, lan1, 80));
    assert!(!traffic::tcp_exchange(lin1, me, 8443));

    // Back on, with a live connection through the gateway.
    api.id("/api/policies", session);
    let (serial3, _) = wait_applied(&gw, &lab.gw, serial2);
    let mut live = traffic::tcp_open(lin1, lan1, 80).expect("live connection");
    assert!(live.exchange(b"before"));

    // Management dies: the gateway notices, and every verdict stays as it was.
    mgmt.kill();
    wait_until("gateway notices", Duration::from_secs(20), || {
        metric(&gw, &lab.gw, "gateway_management_connected ") == 0.0
    });
    assert!(live.exchange(b"during"), "live traffic unchanged");
    assert!(traffic::tcp_exchange(lin1, lan1, 80));
    assert!(traffic::tcp_exchange(lin1, me, 8443));
    assert!(!traffic::tcp_exchange(win1, lan1, 80));
    assert!(!traffic::tcp_exchange(lin1, lan1, 22));
    assert_eq!(metric(&gw, &lab.gw, "gateway_management_serial "), serial3);

    // The gateway is killed too and starts again while management is still down: it adopts its
    // pinned data plane, whose policy stays in force (nothing newer to replace it), and the live
    // flow carries on through both.
    let generation = gw.status::<Report>(&lab.gw).unwrap().generation;
    gw.crash().unwrap();
    assert!(
        live.exchange(b"no controller"),
        "live traffic without the gateway process"
    );
    assert!(
        !traffic::tcp_exchange(win1, lan1, 80),
        "still denied without the gateway process"
    );
    gw = GatewayProcess::start_with(
        &bin,
        &lab.gw,
        &config,
        &lab.dir.join("gateway2.log"),
        &[
            "--management-url",
            &url,
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )
    .expect("gateway restarts");
    let st = gw.status::<Report>(&lab.gw).unwrap();
    assert!(
        st.last_reload.starts_with("adopted generation"),
        "{}",
        st.last_reload
    );
    assert_eq!(
        st.generation, generation,
        "the adopted policy is the one in force"
    );
    assert!(live.exchange(b"after the gateway's restart"));
    assert!(traffic::tcp_exchange(lin1, lan1, 80));
    assert!(traffic::tcp_exchange(lin1, me, 8443));
    assert!(!traffic::tcp_exchange(win1, lan1, 80));
    assert!(!traffic::tcp_exchange(lin1, lan1, 22));

    // Restarted on the same data: the gateway reconnects, and serials go on from where they were.
    let mgmt = ManagementProcess::start(&bin, &lab.gw, &data, addr, TOKEN, &[], &mgmt_log)
        .expect("management restarts");
    wait_until("gateway reconnects", Duration::from_secs(20), || {
        metric(&gw, &lab.gw, "gateway_management_connected ") == 1.0
    });
    assert!(live.exchange(b"after"));
    let policies = api.ok("GET", "/api/policies", Value::Null);
    let pid = policies[0]["id"].as_str().unwrap().to_string();
    api.ok("DELETE", &format!("/api/policies/{pid}"), Value::Null);
    let (serial4, _) = wait_applied(&gw, &lab.gw, serial3);
    assert!(serial4 > serial3);
    assert!(!traffic::tcp_exchange(lin1, lan1, 80));

    // The one-off key is spent.
    let refused = grpc_login(&lab.gw, &gw_key).expect_err("second use of a one-off key");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // Allowed again, with a live connection, so that what a refusal does is visible.
    let policy = api.id("/api/policies", json!({"name": "session2", "enabled": true, "rules": [
        {"name": "to-lan", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "tcp", "ports": ["80"], "sources": [clients], "destinations": [lan_res]},
    ]}));
    let (serial5, _) = wait_applied(&gw, &lab.gw, serial4);
    assert!(!policy.is_empty() && serial5 > serial4);
    let mut live = traffic::tcp_open(lin1, lan1, 80).expect("live connection");
    assert!(live.exchange(b"before the peer is deleted"));

    // The router masquerades (NetBird's Route.Masquerade): new connections reach lan1 from the
    // gateway's LAN address; the connection already under way keeps its addresses.
    let routers = api.ok(
        "GET",
        &format!("/api/networks/{network}/routers"),
        Value::Null,
    );
    let rid = routers[0]["id"].as_str().unwrap().to_string();
    api.ok(
        "PUT",
        &format!("/api/networks/{network}/routers/{rid}"),
        json!({"peer": gw_id, "metric": 100, "masquerade": true, "enabled": true}),
    );
    let (serial6, _) = wait_applied(&gw, &lab.gw, serial5);
    assert!(serial6 > serial5);
    let mut masqueraded = traffic::tcp_open(lin1, lan1, 80).expect("masqueraded connection");
    assert!(masqueraded.exchange(b"masqueraded"), "{}", gw.log_text());
    assert!(
        live.exchange(b"still as it began"),
        "the connection under way broke"
    );
    let lan1_ns = &lab.host("lan1").ns;
    let seen = String::from_utf8_lossy(
        &lan1_ns
            .exec(&["ss", "-tnH", "state", "established", "( sport = :80 )"])
            .unwrap()
            .stdout,
    )
    .to_string();
    assert!(
        seen.contains(&format!("{GATEWAY_LAN_ADDR}:")),
        "lan1 does not see the gateway's address:\n{seen}"
    );
    assert!(
        seen.contains("100.64.101.1:"),
        "the earlier connection is still the peer's:\n{seen}"
    );

    // Deleting the gateway's peer: the management service refuses it. Enforcement continues
    // with nothing allowed (never with no filter), and the gateway stays up to say why.
    api.ok("DELETE", &format!("/api/peers/{gw_id}"), Value::Null);
    wait_until("refusal in force", Duration::from_secs(15), || {
        metric(&gw, &lab.gw, "gateway_management_refused ") == 1.0
    });
    let st = gw.status::<Report>(&lab.gw).unwrap();
    let m = st.management.clone().unwrap();
    assert!(m.refused.is_some() && !m.connected, "{m:?}");
    assert!(
        st.last_reload.contains("deny-all in force"),
        "{}",
        st.last_reload
    );
    assert!(!live.exchange(b"after"), "the live flow must end");
    assert!(
        !traffic::tcp_exchange(lin1, lan1, 80),
        "forward traffic denied, not unfiltered"
    );
    assert!(!traffic::tcp_exchange(lin1, me, 8443));
    assert!(
        gw.log_text().contains("refused this gateway"),
        "{}",
        gw.log_text()
    );
    assert!(
        gw.wait_exit(Duration::from_millis(200)).unwrap().is_none(),
        "the gateway stays up"
    );
    drop(mgmt);
}
