//! The gateway as a NetBird routing peer over real WireGuard: the embedded management service,
//! the gateway enrolled with a setup key as the router of a Network with a LAN resource
//! (masquerade on), wireguard-go peers enrolled over the underlay with their own keys through the
//! real Login. The network map decides the gateway's interface address and its WireGuard peers;
//! REST changes flip live traffic; a peer deleted over REST loses its tunnel while the others'
//! sessions go on.

use std::{net::IpAddr, time::Duration};

use gateway::status::Report;
use gateway_testkit::{
    harness::gateway_binary,
    management::{Api, ManagementProcess, grpc_login},
    process::{GatewayProcess, LAB_METRICS_ADDR},
    traffic,
    wireguard::{WG_GW_OVERLAY, WG_LAN_HOST, WgLab, wait_for},
};
use management_proto::WgKey;
use serde_json::{Value, json};

const TOKEN: &str = "wg-lab-token-7d1e";
const MGMT_PORT: u16 = 33073;

fn status(gw: &GatewayProcess, lab: &WgLab) -> Report {
    gw.status(&lab.gw).expect("status")
}

fn serial(gw: &GatewayProcess, lab: &WgLab) -> u64 {
    status(gw, lab).management.map(|m| m.serial).unwrap_or(0)
}

/// Waits for a network map newer than `after` to be in force.
fn wait_newer(gw: &GatewayProcess, lab: &WgLab, after: u64) -> u64 {
    assert!(
        wait_for(Duration::from_secs(10), || serial(gw, lab) > after),
        "no map after serial {after}:\n{}",
        gw.log_text()
    );
    serial(gw, lab)
}

/// The embedded management service in the gateway's namespace, listening on every address (peers
/// reach it over the underlay), with `extra` flags; and its local address for the REST API.
fn management(lab: &WgLab, extra: &[&str]) -> (ManagementProcess, String) {
    let mut args = vec!["--plain-http"];
    args.extend_from_slice(extra);
    let mgmt = ManagementProcess::start(
        &gateway_binary(),
        &lab.gw,
        &lab.dir.join("management"),
        format!("0.0.0.0:{MGMT_PORT}").parse().unwrap(),
        TOKEN,
        &args,
        &lab.dir.join("management.log"),
    )
    .expect("management starts");
    (mgmt, format!("127.0.0.1:{MGMT_PORT}"))
}

/// `gateway run` enrolled with `setup_key`: a WireGuard section with neither address nor peers
/// (both come from the map) and the LAN interface.
fn start_gateway(lab: &WgLab, local: &str, setup_key: &str) -> GatewayProcess {
    let cfg = lab.dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "metrics_addr: {LAB_METRICS_ADDR}\npin_dir: {}\nwireguard:\n  interface: {}\ninterfaces:\n  lan:\n    - name: lan0\n",
            lab.pin_dir().display(),
            lab.gw_interface
        ),
    )
    .unwrap();
    GatewayProcess::start_with(
        &gateway_binary(),
        &lab.gw,
        &cfg,
        &lab.dir.join("gateway.log"),
        &[
            "--management-url",
            &format!("http://{local}"),
            "--setup-key",
            setup_key,
            "--state-dir",
            lab.state_dir().to_str().unwrap(),
        ],
    )
    .expect("gateway starts")
}

#[test]
fn routing_peer_terminates_the_tunnels_management_gives_it() {
    let lab = WgLab::new(2).expect("lab");
    let (mgmt, local) = management(&lab, &[]);
    let api = Api {
        ns: &lab.gw,
        addr: &local,
        token: TOKEN,
    };

    let gateways = api.id("/api/groups", json!({"name": "gateways"}));
    let clients = api.id("/api/groups", json!({"name": "clients"}));
    let lan_res = api.id("/api/groups", json!({"name": "lan-resources"}));
    let gw_key = api.ok("POST", "/api/setup-keys", json!({"name": "gateway", "type": "one-off", "expires_in": 3600, "auto_groups": [gateways]}))["key"].as_str().unwrap().to_string();
    let client_key = api.ok(
        "POST",
        "/api/setup-keys",
        json!({"name": "clients", "type": "reusable", "auto_groups": [clients]}),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();

    // Each peer enrols with its WireGuard key over its underlay link; the lab gives it the
    // overlay address its wireguard-go interface has.
    let mut peer_ids = Vec::new();
    for (i, h) in lab.peers.iter().enumerate() {
        let url = format!("http://{}:{MGMT_PORT}", h.gw_underlay);
        let hostname = format!("lab-peer-{i}");
        grpc_login(
            &h.ns,
            &url,
            &client_key,
            WgKey::from_base64(&h.peer.private_key).unwrap(),
            &hostname,
        )
        .expect("peer logs in");
        let id = api
            .peers()
            .iter()
            .find(|p| p["hostname"] == hostname.as_str())
            .expect("peer listed")["id"]
            .as_str()
            .unwrap()
            .to_string();
        api.set_ip(&id, &h.overlay.to_string());
        peer_ids.push(id);
    }

    // The gateway: its address and peers come from the map.
    let gw = start_gateway(&lab, &local, &gw_key);
    assert!(
        wait_for(Duration::from_secs(10), || api.peers().len() == 3),
        "gateway registered"
    );
    let gw_id = api
        .peers()
        .iter()
        .find(|p| !peer_ids.iter().any(|id| p["id"] == id.as_str()))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.set_ip(&gw_id, WG_GW_OVERLAY);

    // The LAN host is a resource of a Network the gateway routes, with masquerade.
    let network = api.id("/api/networks", json!({"name": "lab-lan"}));
    api.ok(
        "POST",
        &format!("/api/networks/{network}/resources"),
        json!({"name": "lan", "address": WG_LAN_HOST, "enabled": true, "groups": [lan_res]}),
    );
    api.ok(
        "POST",
        &format!("/api/networks/{network}/routers"),
        json!({"peer": gw_id, "metric": 100, "masquerade": true, "enabled": true}),
    );
    // Ping for every client: it keeps the clients in the gateway's map.
    api.id("/api/policies", json!({"name": "ping", "enabled": true, "rules": [
        {"name": "ping", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "icmp", "sources": [clients], "destinations": [lan_res]},
    ]}));

    // The map gives the interface its address and both clients as WireGuard peers.
    let gw_public = status(&gw, &lab)
        .wireguard
        .unwrap()
        .public_key
        .expect("public key");
    assert!(
        wait_for(Duration::from_secs(10), || {
            let w = status(&gw, &lab).wireguard.unwrap();
            // Only the IPv4 address management gives it now (its first map had another); the
            // IPv6 overlay has its own test below.
            w.peers.len() == 2
                && w.addresses
                    .iter()
                    .filter(|a| a.addr().is_ipv4())
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    == vec![format!("{WG_GW_OVERLAY}/10")]
        }),
        "{:?}\n{}",
        status(&gw, &lab).wireguard,
        gw.log_text()
    );
    let w = status(&gw, &lab).wireguard.unwrap();
    for h in &lab.peers {
        let p = w
            .peers
            .iter()
            .find(|p| p.public_key == h.peer.public_key)
            .expect("peer from the map");
        assert_eq!(
            p.allowed_ips
                .iter()
                .filter(|a| a.addr().is_ipv4())
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
            vec![format!("{}/32", h.overlay)]
        );
    }
    lab.connect_peers(&gw_public).unwrap();
    let lan: IpAddr = WG_LAN_HOST.parse().unwrap();
    let _web = traffic::Servers::start(&lab.lan, &[80], &[]).expect("web server");
    let (p1, p2) = (&lab.peers[0], &lab.peers[1]);
    for h in &lab.peers {
        assert!(
            wait_for(Duration::from_secs(10), || traffic::ping(&h.ns, lan)),
            "ping from {}\n{}",
            h.overlay,
            gw.log_text()
        );
        assert!(
            !traffic::tcp_exchange(&h.ns, lan, 80),
            "tcp from {} before any policy allows it",
            h.overlay
        );
    }

    // A policy created over REST lets the web traffic through.
    let before = serial(&gw, &lab);
    let web = api.id("/api/policies", json!({"name": "web", "enabled": true, "rules": [
        {"name": "web", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "tcp", "ports": ["80"], "sources": [clients], "destinations": [lan_res]},
    ]}));
    let after_web = wait_newer(&gw, &lab, before);
    assert!(traffic::tcp_exchange(&p1.ns, lan, 80), "{}", gw.log_text());
    assert!(traffic::tcp_exchange(&p2.ns, lan, 80));
    let mut live = traffic::tcp_open(&p1.ns, lan, 80).expect("live connection");
    assert!(live.exchange(b"before"));
    let p1_handshake = p1
        .peer
        .handshake_age(&gw_public)
        .unwrap()
        .expect("p1 handshake");

    // p2 is deleted over REST: the gateway drops its WireGuard peer, its traffic stops; p1's
    // session and its connection carry on.
    api.ok(
        "DELETE",
        &format!("/api/peers/{}", peer_ids[1]),
        Value::Null,
    );
    wait_newer(&gw, &lab, after_web);
    let w = status(&gw, &lab).wireguard.unwrap();
    assert_eq!(
        w.peers
            .iter()
            .map(|p| p.public_key.clone())
            .collect::<Vec<_>>(),
        vec![p1.peer.public_key.clone()]
    );
    assert!(
        !traffic::ping(&p2.ns, lan),
        "a deleted peer still reaches the LAN"
    );
    assert!(
        live.exchange(b"after the other peer left"),
        "p1's connection broke"
    );
    assert!(traffic::ping(&p1.ns, lan));
    let age = p1
        .peer
        .handshake_age(&gw_public)
        .unwrap()
        .expect("p1 handshake");
    assert!(
        age >= p1_handshake,
        "p1's session was reset (handshake {p1_handshake}s ago, now {age}s)"
    );

    // The web policy deleted: the live connection ends at its next packet, new ones are refused.
    let before = serial(&gw, &lab);
    api.ok("DELETE", &format!("/api/policies/{web}"), Value::Null);
    wait_newer(&gw, &lab, before);
    assert!(!live.exchange(b"after the policy went"));
    assert!(!traffic::tcp_exchange(&p1.ns, lan, 80));
    assert!(traffic::ping(&p1.ns, lan));
    let log = gw.log_text();
    let exit = gw.stop().unwrap_or_else(|e| panic!("{e:#}\n{log}"));
    assert!(exit.success(), "{exit}");
    drop(mgmt);
}

#[test]
fn the_demo_on_the_embedded_default_runs_green() {
    // `cargo xtask demo` runs exactly this: its own lab, management, WireGuard peers, verdicts.
    let out = std::process::Command::new(gateway_binary())
        .arg("demo")
        .output()
        .expect("gateway demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("masquerade works"), "{text}");
    assert!(text.contains("encrypted"), "{text}");
    assert!(!text.contains("MISMATCH"), "{text}");
}

/// The IPv6 overlay end to end: the gateway announces the capability, management gives it and
/// an IPv6-capable wireguard-go peer addresses of the account's IPv6 range, the gateway's
/// interface and WireGuard peer carry them, and policy decides IPv6 traffic to the gateway as it
/// does IPv4 (ping allowed, TCP refused until a policy names its port).
#[test]
fn the_ipv6_overlay_reaches_the_gateway_under_policy() {
    use management_proto::pb::PeerCapability;
    let lab = WgLab::new(1).expect("lab");
    let (mgmt, local) = management(&lab, &["--network-v6", "fd00:64::/64"]);
    let api = Api {
        ns: &lab.gw,
        addr: &local,
        token: TOKEN,
    };
    let gateways = api.id("/api/groups", json!({"name": "gateways"}));
    let clients = api.id("/api/groups", json!({"name": "clients"}));
    let gw_key = api.ok(
        "POST",
        "/api/setup-keys",
        json!({"name": "gateway", "type": "one-off", "auto_groups": [gateways]}),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let client_key = api.ok(
        "POST",
        "/api/setup-keys",
        json!({"name": "clients", "type": "one-off", "auto_groups": [clients]}),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();

    // The peer enrols announcing IPv6: its Login answer carries its IPv6 overlay address.
    let h = &lab.peers[0];
    let login = gateway_testkit::management::grpc_login_with(
        &h.ns,
        &format!("http://{}:{MGMT_PORT}", h.gw_underlay),
        &client_key,
        WgKey::from_base64(&h.peer.private_key).unwrap(),
        "lab-peer-v6",
        &[PeerCapability::IPv6Overlay],
    )
    .expect("peer logs in");
    let v6 = login.peer_config.unwrap().address_v6;
    assert_eq!(
        v6.len(),
        17,
        "an IPv6 overlay address and its prefix length"
    );
    let peer_v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&v6[..16]).unwrap());
    let peer_id = api.peers()[0]["id"].as_str().unwrap().to_string();
    api.set_ip(&peer_id, &h.overlay.to_string());
    h.ns.ip(&[
        "addr",
        "add",
        &format!("{peer_v6}/64"),
        "dev",
        &h.peer.interface,
        "nodad",
    ])
    .unwrap();

    let gw = start_gateway(&lab, &local, &gw_key);
    assert!(
        wait_for(Duration::from_secs(10), || api.peers().len() == 2),
        "gateway registered"
    );
    let gw_peer = api
        .peers()
        .into_iter()
        .find(|p| p["id"] != peer_id.as_str())
        .unwrap();
    let gw_id = gw_peer["id"].as_str().unwrap().to_string();
    let gw_v6: std::net::Ipv6Addr = gw_peer["ipv6"]
        .as_str()
        .expect("the gateway has an IPv6 overlay address: it announced the capability")
        .parse()
        .unwrap();
    api.set_ip(&gw_id, WG_GW_OVERLAY);
    api.id("/api/policies", json!({"name": "ping", "enabled": true, "rules": [
        {"name": "ping", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "icmp", "sources": [clients], "destinations": [gateways]},
    ]}));

    // Both addresses on the interface; the peer's IPv6 address among its AllowedIPs.
    let want_addresses = vec![format!("{WG_GW_OVERLAY}/10"), format!("{gw_v6}/64")];
    assert!(
        wait_for(Duration::from_secs(10), || {
            let w = status(&gw, &lab).wireguard.unwrap();
            let mut have: Vec<String> = w.addresses.iter().map(|a| a.to_string()).collect();
            have.sort();
            let mut want = want_addresses.clone();
            want.sort();
            have == want && w.peers.len() == 1 && w.peers[0].allowed_ips.len() == 2
        }),
        "{:?}\n{}",
        status(&gw, &lab).wireguard,
        gw.log_text()
    );
    let mut allowed: Vec<String> = status(&gw, &lab).wireguard.unwrap().peers[0]
        .allowed_ips
        .iter()
        .map(|a| a.to_string())
        .collect();
    allowed.sort();
    assert_eq!(
        allowed,
        vec![format!("{}/32", h.overlay), format!("{peer_v6}/128")]
    );

    let gw_public = status(&gw, &lab)
        .wireguard
        .unwrap()
        .public_key
        .expect("public key");
    h.peer
        .add_peer(
            &gw_public,
            Some(&format!(
                "{}:{}",
                h.gw_underlay,
                gateway_testkit::wireguard::WG_PORT
            )),
            "100.64.0.0/10,fd00:64::/64",
            25,
        )
        .unwrap();
    let gw_v6 = IpAddr::V6(gw_v6);
    assert!(
        wait_for(Duration::from_secs(10), || traffic::ping(&h.ns, gw_v6)),
        "ping over the IPv6 overlay\n{}",
        gw.log_text()
    );
    // TCP over IPv6 is refused until a policy names its port, then it passes.
    let _echo = traffic::Servers::start_on(&lab.gw, "::".parse().unwrap(), &[8080], &[])
        .expect("echo server");
    assert!(
        !traffic::tcp_exchange(&h.ns, gw_v6, 8080),
        "TCP over IPv6 without a policy"
    );
    let before = serial(&gw, &lab);
    api.id("/api/policies", json!({"name": "web", "enabled": true, "rules": [
        {"name": "web", "enabled": true, "action": "accept", "bidirectional": false, "protocol": "tcp", "ports": ["8080"], "sources": [clients], "destinations": [gateways]},
    ]}));
    wait_newer(&gw, &lab, before);
    assert!(
        traffic::tcp_exchange(&h.ns, gw_v6, 8080),
        "TCP over IPv6 with a policy\n{}",
        gw.log_text()
    );
    let log = gw.log_text();
    let exit = gw.stop().unwrap_or_else(|e| panic!("{e:#}\n{log}"));
    assert!(exit.success(), "{exit}");
    drop(mgmt);
}
