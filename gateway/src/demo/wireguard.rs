//! `gateway demo` on the embedded default: the seed-000 lab made real. The embedded management
//! service; the seed's groups and four policies created through its REST API as an operator
//! would; the gateway enrolled with a setup key as the routing peer of a Network with a LAN
//! resource (masquerade on); the control-plane, orchestration and demo hosts as real WireGuard
//! peers (wireguard-go + wg), each enrolled through the real Login with its own key over its
//! underlay link. For each flow through the gateway: expected and observed verdict, the bytes it
//! put through the peer's encrypted tunnel, and what the gateway counted.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use management_proto::WgKey;
use serde_json::json;

use gateway_testkit::{
    management::{Api, ManagementProcess, grpc_login},
    process::{GatewayProcess, LAB_METRICS_ADDR},
    traffic::{self, Servers},
    wireguard::{WG_GW_LAN, WG_GW_OVERLAY, WG_LAN_HOST, WgLab, wait_for},
};

use super::{Probe, totals};
use crate::status::Report;

const MGMT_PORT: u16 = 33073;

/// The seed's overlay hosts: name, group, address.
const PEERS: [(&str, &str, &str); 5] = [
    ("cp1", "control-plane", "100.64.10.1"),
    ("orch1", "orchestration", "100.64.20.1"),
    ("win1", "demo-windows", "100.64.100.1"),
    ("lin1", "demo-linux", "100.64.101.1"),
    ("web1", "demo-webapp", "100.64.102.1"),
];

/// Where a flow goes: the LAN resource behind the gateway, or the gateway itself.
#[derive(Clone, Copy)]
enum Target {
    Lan,
    Gateway,
}

struct Flow {
    from: &'static str,
    to: Target,
    probe: Probe,
    accept: bool,
    why: &'static str,
}

const fn flow(
    from: &'static str,
    to: Target,
    probe: Probe,
    accept: bool,
    why: &'static str,
) -> Flow {
    Flow {
        from,
        to,
        probe,
        accept,
        why,
    }
}

/// What the seed's policies say about traffic through (and to) the routing peer.
const FLOWS: &[Flow] = &[
    flow(
        "cp1",
        Target::Lan,
        Probe::Tcp(80),
        true,
        "control-plane-full-access",
    ),
    flow(
        "cp1",
        Target::Lan,
        Probe::Udp(53),
        true,
        "control-plane-full-access",
    ),
    flow(
        "cp1",
        Target::Lan,
        Probe::Ping,
        true,
        "control-plane-full-access",
    ),
    flow(
        "cp1",
        Target::Gateway,
        Probe::Tcp(8443),
        true,
        "control-plane-full-access (to the gateway)",
    ),
    flow(
        "orch1",
        Target::Lan,
        Probe::Tcp(80),
        false,
        "default deny (orchestration reaches the demo groups only)",
    ),
    flow(
        "orch1",
        Target::Gateway,
        Probe::Tcp(8443),
        false,
        "default deny",
    ),
    flow(
        "win1",
        Target::Lan,
        Probe::Tcp(80),
        false,
        "demo-no-internet",
    ),
    flow("lin1", Target::Lan, Probe::Ping, false, "demo-no-internet"),
    flow(
        "web1",
        Target::Lan,
        Probe::Udp(53),
        false,
        "demo-no-internet",
    ),
    flow(
        "web1",
        Target::Gateway,
        Probe::Tcp(8443),
        false,
        "demo-no-internet",
    ),
];

fn api(lab: &WgLab) -> Api<'_> {
    Api {
        ns: &lab.gw,
        addr: "127.0.0.1:33073",
        token: TOKEN,
    }
}

/// A lab-only token: the service listens inside the lab's namespaces alone.
const TOKEN: &str = "demo-lab-token";

/// The operator's part: groups, setup keys, the seed's four policies (the DNS exception of
/// demo-no-internet needs policy priorities on the wire, which NetBird's API has not; the drop is
/// expressed by naming what it drops).
fn create_account(
    lab: &WgLab,
) -> anyhow::Result<(
    String,
    std::collections::HashMap<&'static str, String>,
    String,
)> {
    let api = api(lab);
    let mut groups = std::collections::HashMap::new();
    for name in [
        "control-plane",
        "orchestration",
        "demo-windows",
        "demo-linux",
        "demo-webapp",
        "gateways",
        "lan-resources",
    ] {
        groups.insert(name, api.id("/api/groups", json!({ "name": name })));
    }
    let g = |n: &str| groups[n].clone();
    let gw_key = api.ok("POST", "/api/setup-keys", json!({"name": "gateway", "type": "one-off", "expires_in": 3600, "auto_groups": [g("gateways")]}))["key"]
        .as_str()
        .context("setup key")?
        .to_string();
    let everything = [
        "control-plane",
        "orchestration",
        "demo-windows",
        "demo-linux",
        "demo-webapp",
        "gateways",
        "lan-resources",
    ]
    .map(g);
    let demo = ["demo-windows", "demo-linux", "demo-webapp"].map(g);
    let rule = |name: &str,
                action: &str,
                protocol: &str,
                ports: Option<Vec<&str>>,
                sources: Vec<String>,
                destinations: Vec<String>| {
        let mut r = json!({"name": name, "enabled": true, "action": action, "bidirectional": false, "protocol": protocol, "sources": sources, "destinations": destinations});
        if let Some(p) = ports {
            r["ports"] = json!(p);
        }
        json!({"name": name, "enabled": true, "rules": [r]})
    };
    api.id(
        "/api/policies",
        rule(
            "control-plane-full-access",
            "accept",
            "all",
            None,
            vec![g("control-plane")],
            everything.to_vec(),
        ),
    );
    api.id(
        "/api/policies",
        rule(
            "orchestration-to-containers",
            "accept",
            "tcp",
            Some(vec!["2377", "7946", "443", "6900"]),
            vec![g("orchestration")],
            demo.to_vec(),
        ),
    );
    api.id(
        "/api/policies",
        rule(
            "demo-isolation",
            "drop",
            "all",
            None,
            demo.to_vec(),
            demo.to_vec(),
        ),
    );
    let not_demo = [
        "control-plane",
        "orchestration",
        "gateways",
        "lan-resources",
    ]
    .map(g);
    api.id(
        "/api/policies",
        rule(
            "demo-no-internet",
            "drop",
            "all",
            None,
            demo.to_vec(),
            not_demo.to_vec(),
        ),
    );
    let lan = g("lan-resources");
    Ok((gw_key, groups, lan))
}

pub fn run() -> anyhow::Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let check = || {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted; the lab has been removed")
        } else {
            Ok(())
        }
    };
    println!(
        "Building the seed-000 lab in network namespaces: five WireGuard peers (wireguard-go), the gateway, a LAN resource..."
    );
    let hosts: Vec<(&str, &str)> = PEERS.iter().map(|(n, _, a)| (*n, *a)).collect();
    let lab = WgLab::with_hosts(&hosts)?;
    let binary = std::env::current_exe()?;
    let mgmt = ManagementProcess::start(
        &binary,
        &lab.gw,
        &lab.dir.join("management"),
        format!("0.0.0.0:{MGMT_PORT}").parse()?,
        TOKEN,
        // The lab's traffic stays inside its namespaces; an operator's service serves TLS
        // (--tls-cert/--tls-key, see the README).
        &["--plain-http"],
        &lab.dir.join("management.log"),
    )?;
    let api = api(&lab);
    let (gw_key, groups, lan_group) = create_account(&lab)?;
    println!(
        "Management service up; groups, setup keys and the seed's four policies created over its REST API."
    );

    // Each peer enrols over its own underlay link with its WireGuard key and its group's key.
    for (name, group, addr) in PEERS {
        check()?;
        let h = lab.host(name);
        let key = api.ok(
            "POST",
            "/api/setup-keys",
            json!({"name": name, "type": "one-off", "auto_groups": [groups[group]]}),
        )["key"]
            .as_str()
            .context("key")?
            .to_string();
        grpc_login(
            &h.ns,
            &format!("http://{}:{MGMT_PORT}", h.gw_underlay),
            &key,
            WgKey::from_base64(&h.peer.private_key)?,
            name,
        )
        .map_err(|s| anyhow::anyhow!("{name} login: {s}"))?;
        let id = api
            .peers()
            .iter()
            .find(|p| p["hostname"] == name)
            .and_then(|p| p["id"].as_str().map(String::from))
            .context("peer listed")?;
        api.set_ip(&id, addr);
    }
    println!(
        "Peers enrolled through Login, each with its own key: {}",
        PEERS.map(|p| p.0).join(", ")
    );

    // The gateway: WireGuard and LAN from its config; address, peers and policy from management.
    let config = lab.dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "metrics_addr: {LAB_METRICS_ADDR}\npin_dir: {}\nwireguard:\n  interface: {}\ninterfaces:\n  lan:\n    - name: lan0\n",
            lab.pin_dir().display(),
            lab.gw_interface
        ),
    )?;
    let state = lab.dir.join("state");
    let url = format!("http://127.0.0.1:{MGMT_PORT}");
    let gw = GatewayProcess::start_with(
        &binary,
        &lab.gw,
        &config,
        &lab.dir.join("gateway.log"),
        &[
            "--management-url",
            &url,
            "--setup-key",
            &gw_key,
            "--state-dir",
            state.to_str().context("path")?,
        ],
    )?;
    if !wait_for(Duration::from_secs(10), || {
        api.peers().len() == PEERS.len() + 1
    }) {
        bail!("the gateway did not register:\n{}", gw.log_text());
    }
    let gw_id = api
        .peers()
        .iter()
        .find(|p| {
            p["hostname"]
                .as_str()
                .is_none_or(|h| !PEERS.iter().any(|(n, _, _)| *n == h))
        })
        .and_then(|p| p["id"].as_str().map(String::from))
        .context("gateway peer")?;
    api.set_ip(&gw_id, WG_GW_OVERLAY);
    let network = api.id("/api/networks", json!({"name": "lab-lan"}));
    api.ok(
        "POST",
        &format!("/api/networks/{network}/resources"),
        json!({"name": "lan1", "address": WG_LAN_HOST, "enabled": true, "groups": [lan_group]}),
    );
    api.ok(
        "POST",
        &format!("/api/networks/{network}/routers"),
        json!({"peer": gw_id, "metric": 100, "masquerade": true, "enabled": true}),
    );
    // The map that carries the route: its resource's policies make their sources the gateway's
    // WireGuard peers. A peer no policy connects to the gateway is not one (as in NetBird).
    let applied = wait_for(Duration::from_secs(10), || {
        gw.status::<Report>(&lab.gw).ok().is_some_and(|r| {
            let wg_ready = r.wireguard.is_some_and(|w| {
                !w.peers.is_empty()
                    && w.addresses
                        .iter()
                        .any(|a| a.addr().to_string() == WG_GW_OVERLAY)
            });
            wg_ready && r.rules > 0
        })
    });
    if !applied {
        bail!(
            "the gateway did not apply the network map:\n{}",
            gw.log_text()
        );
    }
    // Later maps of the same burst of changes (each REST call is one) settle within a moment.
    std::thread::sleep(Duration::from_secs(1));
    let st: Report = gw.status(&lab.gw)?;
    let wg = st.wireguard.clone().context("wireguard status")?;
    let public = wg.public_key.clone().context("gateway key")?;
    lab.connect_peers(&public)?;
    println!(
        "\nGateway in namespace {}: WireGuard {} on {} ({}), {} {} peers from the network map, masquerading toward the LAN; policy generation {}.",
        lab.gw.name,
        wg.backend.label(),
        wg.interface,
        wg.chosen,
        WG_GW_OVERLAY,
        wg.peers.len(),
        st.generation
    );

    let wg_peers: Vec<String> = gw
        .status::<Report>(&lab.gw)?
        .wireguard
        .context("wireguard")?
        .peers
        .into_iter()
        .map(|p| p.public_key)
        .collect();
    let outside: Vec<&str> = lab
        .peers
        .iter()
        .filter(|h| !wg_peers.contains(&h.peer.public_key))
        .map(|h| h.name.as_str())
        .collect();
    if !outside.is_empty() {
        println!(
            "Not peers of the gateway (no policy connects them to it or its routes): {}",
            outside.join(", ")
        );
    }
    let _lan_servers = Servers::start(&lab.lan, &[80], &[53])?;
    let _gw_servers = Servers::start(&lab.gw, &[8443], &[])?;
    for h in &lab.peers {
        // The first packet starts the handshake; a ping that policy drops still completes it.
        let _ = traffic::ping(&h.ns, WG_LAN_HOST.parse()?);
    }
    println!();
    println!(
        "{:<18} {:<9} {:<9} {:<9} {:<16} {:<12} why",
        "flow", "probe", "expected", "observed", "tunnel (bytes)", "gw acc/drop"
    );
    let mut failures = 0;
    for f in FLOWS {
        check()?;
        let h = lab.host(f.from);
        let (to_name, to): (&str, IpAddr) = match f.to {
            Target::Lan => ("lan1", WG_LAN_HOST.parse()?),
            Target::Gateway => ("gateway", WG_GW_OVERLAY.parse()?),
        };
        let sent_before = h.peer.transfer(&public).map(|t| t.1).unwrap_or(0);
        let (Ok(before), ok, Ok(after)) = (
            gw.status::<Report>(&lab.gw),
            super::probe_addr(&h.ns, to, f.probe),
            gw.status::<Report>(&lab.gw),
        ) else {
            check()?;
            bail!("the gateway stopped answering:\n{}", gw.log_text());
        };
        let is_peer = wg_peers.contains(&h.peer.public_key);
        let sent = h.peer.transfer(&public).map(|t| t.1).unwrap_or(0) - sent_before;
        let tunnel = if is_peer {
            format!("{sent} encrypted")
        } else {
            "no tunnel".to_string()
        };
        let (before, after) = (totals(&before), totals(&after));
        let verdict = |a: bool| if a { "accept" } else { "drop" };
        let mark = if ok == f.accept { "" } else { "  <-- MISMATCH" };
        failures += usize::from(ok != f.accept);
        println!(
            "{:<18} {:<9} {:<9} {:<9} {:<16} {:<12} {}{}",
            format!("{} -> {to_name}", f.from),
            f.probe.to_string(),
            verdict(f.accept),
            verdict(ok),
            tunnel,
            format!("{}/{}", after.0 - before.0, after.1 - before.1),
            f.why,
            mark
        );
    }

    // What the LAN resource sees: the gateway's LAN address, not the peer's.
    let listener = lab.lan.run(|| TcpListener::bind("0.0.0.0:8080"))??;
    let cp1 = lab.host("cp1");
    let _conn = cp1.ns.run(|| {
        TcpStream::connect_timeout(
            &SocketAddr::new(WG_LAN_HOST.parse().expect("constant"), 8080),
            Duration::from_secs(3),
        )
    })?;
    // The listener accepts only if the policy let the connection through (cp1 may do anything).
    listener.set_nonblocking(true)?;
    let seen = (0..30).find_map(|_| match listener.accept() {
        Ok((_, from)) => Some(from.ip().to_string()),
        Err(_) => {
            std::thread::sleep(Duration::from_millis(100));
            None
        }
    });
    let masquerade_ok = seen.as_deref() == Some(WG_GW_LAN);
    println!(
        "\nlan1 sees cp1's connection coming from {} (the gateway's LAN address {WG_GW_LAN}: masquerade {})",
        seen.as_deref().unwrap_or("nowhere"),
        if masquerade_ok { "works" } else { "FAILED" }
    );

    let st: Report = gw.status(&lab.gw)?;
    println!("\nWireGuard peers on the gateway:");
    for p in &st.wireguard.as_ref().context("wireguard")?.peers {
        let name = lab
            .peers
            .iter()
            .find(|h| h.peer.public_key == p.public_key)
            .map(|h| h.name.as_str())
            .unwrap_or("?");
        let hs = p
            .handshake_age_secs
            .map(|s| format!("{s}s ago"))
            .unwrap_or_else(|| "never".into());
        println!(
            "  {name:<6} {:<18} handshake {hs:<8} rx {:>8} B  tx {:>8} B",
            p.endpoint
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            p.rx_bytes,
            p.tx_bytes
        );
    }
    println!("\nDrops by reason:");
    for c in st.counters.iter().filter(|c| c.verdict == "drop") {
        println!(
            "  {:<16} {:<22} {:>6} packets",
            c.direction, c.reason, c.packets
        );
    }
    let exit = gw.stop()?;
    drop(mgmt);
    println!("\nGateway stopped ({exit}); removing the lab.");
    drop(lab);
    if failures > 0 || !masquerade_ok {
        bail!(
            "{failures} flows did not get the expected verdict{}",
            if masquerade_ok {
                ""
            } else {
                "; masquerade not seen"
            }
        );
    }
    println!(
        "All {} flows got the verdict the policies give them; those of the gateway's peers crossed encrypted tunnels.",
        FLOWS.len()
    );
    Ok(())
}
