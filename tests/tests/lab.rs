//! The seed-000 lab end to end: real namespaces, real sockets, the real `gateway run`.

use gateway::status::Report;
use std::net::IpAddr;

use gateway::demo::{self, SEED_MATRIX};
use gateway_testkit::harness::gateway_binary;
use gateway_testkit::{
    process::{GatewayProcess, LAB_METRICS_ADDR},
    topology::Lab,
    topology::{GATEWAY_OVERLAY_ADDR6, SEED_POLICY},
    traffic,
};

fn start(lab: &Lab, policy: &str) -> GatewayProcess {
    let config = lab.write_config(policy, LAB_METRICS_ADDR).expect("config");
    GatewayProcess::start(
        &gateway_binary(),
        &lab.gw,
        &config,
        &lab.dir.join("gateway.log"),
    )
    .expect("gateway starts")
}

#[test]
fn seed_matrix_return_traffic_and_live_policy_change() {
    let lab = Lab::seed().expect("lab");
    let _servers = demo::start_servers(&lab).expect("servers");
    let gw = start(&lab, SEED_POLICY);

    // Programs attached as configured: tc on every tunnel link (a tcx link, or a cls_bpf filter
    // on kernels before 6.6, which the mode then says), native XDP on the LAN.
    let st = gw.status::<Report>(&lab.gw).unwrap();
    assert_eq!(st.generation, 1);
    assert_eq!(st.rules, 4);
    assert_eq!(
        st.attachments
            .iter()
            .filter(|a| a.mode.starts_with("tc ingress"))
            .count(),
        6
    );
    assert_eq!(
        st.attachments
            .iter()
            .filter(|a| a.mode.starts_with("tc egress"))
            .count(),
        6
    );
    assert!(
        st.attachments
            .iter()
            .any(|a| a.interface == "lan0" && a.mode == "xdp native")
    );

    // The full verdict matrix. TCP and UDP probes only succeed when the echo returns, so every
    // accepted case also proves the return traffic passed without a reverse rule.
    let mut wrong = Vec::new();
    for c in SEED_MATRIX {
        if demo::probe(&lab, c) != c.accept {
            wrong.push(format!(
                "{} -> {} {} expected {}",
                c.from,
                c.to,
                c.probe,
                if c.accept { "accept" } else { "drop" }
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong verdicts: {wrong:#?}\n{}",
        gw.log_text()
    );

    // Counters saw it: every policy decided packets, drops are counted by reason.
    let st = gw.status::<Report>(&lab.gw).unwrap();
    for p in [
        "control-plane-full-access",
        "orchestration-to-containers",
        "demo-isolation",
        "demo-no-internet",
    ] {
        assert!(
            st.policies.iter().any(|c| c.policy == p && c.packets > 0),
            "no packets for {p}: {:?}",
            st.policies
        );
    }
    let drops = |reason: &str| {
        st.counters
            .iter()
            .filter(|c| c.verdict == "drop" && c.reason == reason)
            .map(|c| c.packets)
            .sum::<u64>()
    };
    assert!(drops("policy") > 0 && drops("default_deny") > 0);
    assert!(
        st.counters
            .iter()
            .any(|c| c.direction == "lan" && c.verdict == "drop"),
        "LAN-initiated drop not counted at XDP"
    );

    // The `gateway status` command reads the same endpoint, as a table and as JSON.
    let bin = gateway_binary();
    let out = lab
        .gw
        .command(bin.to_str().unwrap())
        .args(["status", "--addr", LAB_METRICS_ADDR])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("(generation 1, 4 enabled policies)")
            && text.contains("xdp native"),
        "{text}"
    );
    assert!(
        text.contains("data plane: pinned under")
            && text.contains("stays in force if this process exits"),
        "{text}"
    );
    assert!(text.contains("demo-isolation"), "{text}");
    let out = lab
        .gw
        .command(bin.to_str().unwrap())
        .args(["status", "--json", "--addr", LAB_METRICS_ADDR])
        .output()
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(json["generation"], 1);
    // The conntrack fill level is what the last sweep counted (counting takes a walk of the
    // map, which the controller does only there, off its runtime): the sweep every 10 s sees
    // the matrix's flows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !gw
        .status::<Report>(&lab.gw)
        .unwrap()
        .maps
        .iter()
        .any(|m| m.map == "conntrack" && m.entries > 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no conntrack entries counted by a sweep"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Prometheus exposition with the documented names and labels.
    let m = gw.metrics(&lab.gw).unwrap();
    assert!(
        m.contains(
            "gateway_packets_total{direction=\"tunnel_ingress\",reason=\"policy\",verdict=\"drop\"}"
        ),
        "{m}"
    );
    assert!(m.contains("gateway_policy_packets_total{policy=\"demo-isolation\"}"));
    assert!(m.contains("gateway_policy_generation 1"));

    // A live connection orchestration -> demo-linux:443, allowed now.
    let orch = &lab.host("orch1").ns;
    let lin1 = IpAddr::V4(lab.host("lin1").addr);
    let mut live = traffic::tcp_open(orch, lin1, 443).expect("connect orch1 -> lin1:443");
    assert!(live.exchange(b"before"));

    // A malformed policy is rejected whole on SIGHUP: generation and verdicts stay.
    std::fs::write(
        lab.policy_path(),
        "policies:\n  - name: broken\n    source_groups: [nope]\n",
    )
    .unwrap();
    let st = gw.reload::<Report>(&lab.gw).unwrap();
    assert_eq!(st.generation, 1);
    assert!(st.last_reload.starts_with("rejected"), "{}", st.last_reload);
    assert!(
        st.last_reload.contains("policy.yaml:3"),
        "error names file and line: {}",
        st.last_reload
    );
    assert!(live.exchange(b"still allowed"));

    // A policy without orchestration-to-containers: the live flow is cut, new ones refused,
    // and the control plane is unaffected.
    let without: String = SEED_POLICY.replace(
        "  - name: orchestration-to-containers\n    enabled: true",
        "  - name: orchestration-to-containers\n    enabled: false",
    );
    assert_ne!(without, SEED_POLICY);
    std::fs::write(lab.policy_path(), &without).unwrap();
    let st = gw.reload::<Report>(&lab.gw).unwrap();
    assert_eq!(st.generation, 2, "{}", st.last_reload);
    assert!(
        !live.exchange(b"after revoke"),
        "a revoked flow kept passing"
    );
    assert!(!traffic::tcp_exchange(orch, lin1, 443));
    assert!(traffic::tcp_exchange(&lab.host("cp1").ns, lin1, 443));
    let st = gw.status::<Report>(&lab.gw).unwrap();
    assert!(
        st.counters
            .iter()
            .any(|c| c.reason == "revoked" && c.packets > 0),
        "{:?}",
        st.counters
    );
    // The kernel program's log (aya-log) reaches the gateway's log through tracing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gw
        .log_text()
        .contains("flow ended: the new policy no longer allows it")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel log line for the revoked flow:\n{}",
            gw.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // And back: allowed again.
    std::fs::write(lab.policy_path(), SEED_POLICY).unwrap();
    assert_eq!(gw.reload::<Report>(&lab.gw).unwrap().generation, 3);
    assert!(traffic::tcp_exchange(orch, lin1, 443));

    let exit = gw.stop().unwrap();
    assert!(exit.success(), "gateway exit {exit}");
    // Fail-static: with the controller gone the pinned data plane keeps enforcing the last
    // policy: demo isolation holds, allowed flows still open.
    let (lin1_ns, web1) = (&lab.host("lin1").ns, IpAddr::V4(lab.host("web1").addr));
    assert!(
        !traffic::tcp_exchange(lin1_ns, web1, 443),
        "demo isolation must hold after the gateway exited"
    );
    assert!(
        traffic::tcp_exchange(orch, lin1, 443),
        "allowed flows keep opening after the gateway exited"
    );
    // Removing it is an explicit act; then traffic is no longer policed.
    let out = gateway_testkit::process::detach(&gateway_binary(), &lab.gw, &lab.pin_dir())
        .expect("gateway detach");
    assert!(out.contains("the data plane is detached"), "{out}");
    // The kernel releases an unpinned link from a work queue: allow it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !traffic::tcp_exchange(lin1_ns, web1, 443) {
        assert!(
            std::time::Instant::now() < deadline,
            "after `gateway detach` the traffic is still policed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let links =
        String::from_utf8_lossy(&lab.gw.ip(&["-d", "link", "show", "lan0"]).unwrap().stdout)
            .to_string();
    assert!(
        !links.contains("xdp"),
        "XDP still attached to lan0 after detach:\n{links}"
    );
}

#[test]
fn bad_input_is_one_clear_error_and_nothing_attached() {
    let lab = Lab::seed().expect("lab");
    let bin = gateway_binary();
    // Missing interface.
    let cfg = lab.dir.join("missing-if.yaml");
    std::fs::write(lab.dir.join("p.yaml"), SEED_POLICY).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "policy: {}\ninterfaces:\n  tunnel:\n    - name: t-cp1\n    - name: nosuch0\n",
            lab.dir.join("p.yaml").display()
        ),
    )
    .unwrap();
    let out = lab
        .gw
        .command(bin.to_str().unwrap())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interface \"nosuch0\" not found"), "{err}");
    // Bad policy.
    std::fs::write(
        lab.dir.join("bad.yaml"),
        "policies:\n  - name: x\n    action: maybe\n",
    )
    .unwrap();
    std::fs::write(
        &cfg,
        format!(
            "policy: {}\ninterfaces:\n  tunnel:\n    - name: t-cp1\n",
            lab.dir.join("bad.yaml").display()
        ),
    )
    .unwrap();
    let out = lab
        .gw
        .command(bin.to_str().unwrap())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:3") && err.contains("action"),
        "{err}"
    );
    // Unreadable config.
    let out = lab
        .gw
        .command(bin.to_str().unwrap())
        .args(["run", "--config", "/nonexistent/gw.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gw.yaml"));
    // Nothing was left attached on t-cp1.
    let links = lab.gw.exec(&["ip", "-d", "link", "show", "t-cp1"]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("xdp"));
    let tc = lab
        .gw
        .exec(&["tc", "filter", "show", "dev", "t-cp1", "ingress"])
        .unwrap();
    assert!(String::from_utf8_lossy(&tc.stdout).trim().is_empty());
}

/// The configured fallbacks for LAN interfaces behave like native XDP and are reported.
#[test]
fn lan_fallback_modes_enforce_the_same_policy() {
    let lab = Lab::seed().expect("lab");
    let _servers = demo::start_servers(&lab).expect("servers");
    for (attach, mode) in [
        ("tc", "tc ingress (configured fallback)"),
        ("xdp-generic", "xdp generic (configured fallback)"),
    ] {
        let config = lab
            .write_config_with(SEED_POLICY, LAB_METRICS_ADDR, attach)
            .unwrap();
        let gw = GatewayProcess::start(
            &gateway_binary(),
            &lab.gw,
            &config,
            &lab.dir.join("gateway.log"),
        )
        .expect("gateway starts");
        let st = gw.status::<Report>(&lab.gw).unwrap();
        assert!(
            st.attachments
                .iter()
                .any(|a| a.interface == "lan0" && a.mode.starts_with(mode)),
            "{attach}: {:?}",
            st.attachments
        );
        let lan1 = IpAddr::V4(lab.host("lan1").addr);
        let cp1 = IpAddr::V4(lab.host("cp1").addr);
        assert!(
            traffic::tcp_exchange(&lab.host("cp1").ns, lan1, 80),
            "{attach}: control plane to LAN, replies through the LAN hook"
        );
        assert!(
            !traffic::tcp_exchange(&lab.host("lan1").ns, cp1, 443),
            "{attach}: LAN-initiated must be dropped"
        );
        let st = gw.status::<Report>(&lab.gw).unwrap();
        assert!(
            st.counters
                .iter()
                .any(|c| c.direction == "lan" && c.reason == "established" && c.packets > 0),
            "{attach}: {:?}",
            st.counters
        );
        assert!(
            st.counters
                .iter()
                .any(|c| c.direction == "lan" && c.reason == "default_deny" && c.packets > 0),
            "{attach}: {:?}",
            st.counters
        );
        assert!(gw.stop().unwrap().success());
    }
}

/// IGMP on an Ethernet tunnel interface: a peer whose application joins a multicast group
/// (here `ip address ... autojoin`, as VXLAN does; mDNS responders join 224.0.0.251 the same
/// way) reports it from its own kernel, twice (IGMPv3, TTL 1, to 224.0.0.22, with the router
/// alert). That is the link's control traffic: it passes, counted with neighbour discovery, and
/// no report is a default deny. (IPv6 is off on the lab's hosts, so no MLD report counts here.)
#[test]
fn a_peers_igmp_reports_pass_as_link_control_on_an_ethernet_tunnel() {
    let lab = Lab::seed().expect("lab");
    let cp1 = lab.host("cp1");
    let gw = start(&lab, SEED_POLICY);
    let before: Report = gw.status(&lab.gw).unwrap();
    cp1.ns
        .ip_line("addr add 224.0.0.251/32 dev eth0 autojoin")
        .unwrap();
    let reports = || -> u64 {
        let st: Report = gw.status(&lab.gw).unwrap();
        st.packets("tunnel_ingress", "neighbor_discovery")
            - before.packets("tunnel_ingress", "neighbor_discovery")
    };
    // The report and its retransmission, within the unsolicited report interval (1 s).
    let both =
        gateway_testkit::wireguard::wait_for(std::time::Duration::from_secs(10), || reports() >= 2);
    let st: Report = gw.status(&lab.gw).unwrap();
    assert!(both, "{:?}", st.counters);
    assert_eq!(
        st.packets("tunnel_ingress", "default_deny"),
        before.packets("tunnel_ingress", "default_deny"),
        "{:?}",
        st.counters
    );
    assert!(gw.stop().unwrap().success());
}

/// IPv6 on an Ethernet tunnel interface: the gateway resolves a peer's address itself for its
/// own traffic (a ping from its overlay address). The peer's advertisement answers the
/// gateway's global address; dropped there, the neighbour entry fails and the gateway cannot
/// reach the peer at all.
#[test]
fn the_gateway_resolves_a_peers_ipv6_address_on_an_ethernet_tunnel() {
    let lab = Lab::seed().expect("lab");
    let cp1 = lab.host("cp1");
    lab.add_ipv6_peer(cp1, "fd00:64::10:1").unwrap();
    let gw = start(&lab, SEED_POLICY);
    let ping = lab
        .gw
        .command("ping")
        .args([
            "-6",
            "-c",
            "3",
            "-W",
            "2",
            "-I",
            GATEWAY_OVERLAY_ADDR6,
            "fd00:64::10:1",
        ])
        .output()
        .expect("ping");
    let st: Report = gw.status(&lab.gw).unwrap();
    assert!(
        ping.status.success(),
        "{}\n{:?}",
        String::from_utf8_lossy(&ping.stdout),
        st.counters
    );
    assert!(
        st.packets("tunnel_ingress", "neighbor_discovery") >= 1,
        "{:?}",
        st.counters
    );
    // The gateway's own neighbour entry for the peer: resolved (not FAILED or INCOMPLETE).
    // (Not "nothing denied at the tunnel": the peer's MLD listener reports, sent as its new
    // address joins its multicast groups, are no neighbour discovery and no policy allows
    // them; whether they come before or after the gateway starts is the kernel's timing.)
    assert!(
        lab.gw.neighbour_resolved("-6", "fd00:64::10:1"),
        "neighbour entry: {:?}; {:?}",
        lab.gw
            .ip(&["-6", "neigh", "show", "fd00:64::10:1"])
            .map(|o| o.stdout),
        st.counters
    );
}
