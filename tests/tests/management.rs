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
    let mgmt = ManagementProcess::start(
        &bin,
        &lab.gw,
        &data,
        addr,
        TOKEN,
        &["--plain-http"],
        &mgmt_log,
    )
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
    let mgmt = ManagementProcess::start(
        &bin,
        &lab.gw,
        &data,
        addr,
        TOKEN,
        &["--plain-http"],
        &mgmt_log,
    )
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

/// Runs `program args` and returns its stdout; panics with its stderr when it fails.
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A private CA and a certificate it signs for `ip`, made with openssl as an operator would.
/// Returns (CA certificate, server certificate, server key).
fn operator_certificates(
    dir: &std::path::Path,
    ip: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=lab CA"];
    ca.extend(ec);
    let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run_ok("openssl", &ca);
    let (key, csr, cert, ext) = (
        p("server.key"),
        p("server.csr"),
        p("server.pem"),
        p("san.ext"),
    );
    let mut req = vec!["req", "-subj", "/CN=management"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr]);
    run_ok("openssl", &req);
    std::fs::write(&ext, format!("subjectAltName=IP:{ip}\n")).unwrap();
    run_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ],
    );
    (ca_pem.into(), cert.into(), key.into())
}

/// curl inside `ns`: (exit code, body).
fn curl(ns: &Netns, args: &[&str]) -> (i32, String) {
    let out = ns
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-H",
            &format!("Authorization: Token {TOKEN}"),
        ])
        .args(args)
        .output()
        .expect("curl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The management service over TLS with an operator's certificate (openssl, a private CA):
/// curl and the gateway's own gRPC client work when they trust the CA and get nothing when
/// they do not; plain HTTP gets no answer; without a certificate the service refuses to start
/// unless plain HTTP is asked for by name.
#[test]
fn management_over_tls_with_an_operators_certificate() {
    let lab = Lab::seed().expect("lab");
    let bin = gateway_binary();

    // Neither a certificate nor --plain-http: refused, saying what to give.
    let out = std::process::Command::new(&bin)
        .args(["management", "serve", "--data-dir"])
        .arg(lab.dir.join("refused"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--tls-cert") && said.contains("--plain-http"),
        "{said}"
    );

    let (ca, cert, key) = operator_certificates(&lab.dir, "127.0.0.1");
    let addr: SocketAddr = "127.0.0.1:33443".parse().unwrap();
    let mgmt_log = lab.dir.join("management.log");
    let (cert_s, key_s, ca_s) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    let _mgmt = ManagementProcess::start(
        &bin,
        &lab.gw,
        &lab.dir.join("management"),
        addr,
        TOKEN,
        &["--tls-cert", cert_s, "--tls-key", key_s],
        &mgmt_log,
    )
    .expect("management starts with TLS");
    let url = format!("https://{addr}");

    // REST over HTTPS with curl, trusting the CA.
    let (code, body) = curl(&lab.gw, &["--cacert", ca_s, &format!("{url}/api/groups")]);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("\"All\""), "{body}");
    let (code, body) = curl(
        &lab.gw,
        &[
            "--cacert",
            ca_s,
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"name":"gw","type":"one-off","expires_in":3600,"auto_groups":[]}"#,
            &format!("{url}/api/setup-keys"),
        ],
    );
    assert_eq!(code, 0, "{body}");
    let setup_key = serde_json::from_str::<Value>(&body).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    // Without the CA curl refuses the certificate (60); plain HTTP gets no HTTP answer.
    assert_eq!(curl(&lab.gw, &[&format!("{url}/api/groups")]).0, 60);
    let (code, body) = curl(&lab.gw, &[&format!("http://{addr}/api/groups")]);
    assert!(
        code != 0 && body.is_empty(),
        "plain HTTP: curl {code}, {body:?}"
    );

    // The gateway without the CA does not connect (and so does not register) ...
    let config = lab.write_management_config(LAB_METRICS_ADDR).unwrap();
    let state = lab.dir.join("gateway-state");
    let state_s = state.to_str().unwrap();
    let args = [
        "--management-url",
        &url,
        "--setup-key",
        &setup_key,
        "--state-dir",
        state_s,
    ];
    let untrusting = GatewayProcess::start_with(
        &bin,
        &lab.gw,
        &config,
        &lab.dir.join("gateway-1.log"),
        &args,
    )
    .expect("gateway starts");
    let started = Instant::now();
    while !untrusting.log_text().contains("certificate") {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the gateway reports the unknown certificate:\n{}",
            untrusting.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&untrusting, &lab.gw, "gateway_management_connected "),
        0.0
    );
    let (_, peers) = curl(&lab.gw, &["--cacert", ca_s, &format!("{url}/api/peers")]);
    assert_eq!(peers.trim(), "[]", "nobody registered");
    untrusting.stop().unwrap();

    // ... and with --management-ca it registers, syncs and applies its map over TLS.
    let mut with_ca = args.to_vec();
    with_ca.extend(["--management-ca", ca_s]);
    let gw = GatewayProcess::start_with(
        &bin,
        &lab.gw,
        &config,
        &lab.dir.join("gateway-2.log"),
        &with_ca,
    )
    .expect("gateway starts");
    wait_until("gateway syncing over TLS", Duration::from_secs(15), || {
        metric(&gw, &lab.gw, "gateway_management_connected ") == 1.0
    });
    wait_applied(&gw, &lab.gw, 0.0);
    let (_, peers) = curl(&lab.gw, &["--cacert", ca_s, &format!("{url}/api/peers")]);
    let peers: Value = serde_json::from_str(&peers).unwrap();
    assert_eq!(peers.as_array().unwrap().len(), 1);
    assert_eq!(peers[0]["connection_ip"], "127.0.0.1");
}
