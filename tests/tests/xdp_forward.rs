//! The XDP forwarding path between LAN interfaces, with real sockets: accepted traffic is
//! forwarded in XDP (and arrives intact: TTL and checksum rewritten right, or the receiving
//! kernel would drop it), denied traffic is dropped, anything else is left to the kernel.

use std::net::IpAddr;

use gateway::lab::{
    netns::{Netns, veth},
    process::{GatewayProcess, LAB_METRICS_ADDR},
    traffic::{self, Servers},
};
use gateway_tests::gateway_binary;

const POLICY: &str = "groups:\n  lan-a: [198.18.1.0/24]\n  lan-b: [198.19.1.0/24]\npolicies:\n  - name: a-to-b-web\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: tcp\n    ports: [443]\n  - name: a-to-b-dns\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: udp\n    ports: [53]\n";

#[test]
fn accepted_lan_traffic_is_forwarded_in_xdp() {
    let id = format!("gwfwd{}", std::process::id());
    let gw = Netns::create(&format!("{id}-gw")).unwrap();
    let a = Netns::create(&format!("{id}-a")).unwrap();
    let b = Netns::create(&format!("{id}-b")).unwrap();
    veth(&gw, "lan-a", &a, "eth0").unwrap();
    veth(&gw, "lan-b", &b, "eth0").unwrap();
    gw.sysctl("net.ipv4.ip_forward", "1").unwrap();
    for (ns, addr, router) in [(&a, "198.18.1.10/24", "198.18.1.1"), (&b, "198.19.1.10/24", "198.19.1.1")] {
        ns.ip(&["addr", "add", addr, "dev", "eth0"]).unwrap();
        ns.ip(&["route", "add", "default", "via", router]).unwrap();
        // A veth takes XDP-redirected frames only when its peer has a NAPI instance: GRO on the
        // host end gives it one (a physical NIC needs nothing of the kind).
        ns.exec(&["ethtool", "-K", "eth0", "gro", "on"]).unwrap();
        // Veth leaves TCP/UDP checksums to "hardware" (CHECKSUM_PARTIAL), which only the kernel
        // path carries along; frames forwarded as bytes need them filled in, as a wire would.
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    }
    gw.ip(&["addr", "add", "198.18.1.1/24", "dev", "lan-a"]).unwrap();
    gw.ip(&["addr", "add", "198.19.1.1/24", "dev", "lan-b"]).unwrap();
    let _servers = Servers::start(&b, &[443, 22], &[53]).unwrap();

    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    let cfg = format!(
        "policy: {}\nmetrics_addr: {LAB_METRICS_ADDR}\noverlay:\n  ipv4: 198.19.0.0/16\ninterfaces:\n  lan:\n    - name: lan-a\n      forward: xdp\n    - name: lan-b\n      forward: xdp\n",
        dir.join("policy.yaml").display()
    );
    std::fs::write(dir.join("gateway.yaml"), cfg).unwrap();
    let p = GatewayProcess::start(&gateway_binary(), &gw, &dir.join("gateway.yaml"), &dir.join("gateway.log")).expect("gateway");

    let to_b = IpAddr::from([198, 19, 1, 10]);
    let ok = traffic::tcp_exchange(&a, to_b, 443);
    assert!(ok, "accepted TCP through the XDP path\n{:#?}\n{}", p.status(&gw).map(|s| s.counters), p.log_text());
    assert!(traffic::udp_exchange(&a, to_b, 53), "accepted UDP through the XDP path");
    assert!(!traffic::tcp_exchange(&a, to_b, 22), "denied by default");
    let st = p.status(&gw).unwrap();
    let count = |verdict: &str, reason: &str| {
        st.counters.iter().filter(|c| c.direction == "lan" && c.verdict == verdict && c.reason == reason).map(|c| c.packets).sum::<u64>()
    };
    assert!(count("forwarded", "xdp_forwarded") >= 4, "{:?}", st.counters);
    assert!(count("drop", "default_deny") >= 1, "{:?}", st.counters);
    // Replies toward lan-a are not the overlay's: the kernel forwards them.
    assert!(count("pass", "not_overlay") >= 2, "{:?}", st.counters);
    assert!(p.stop().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
