//! The XDP forwarding path between LAN interfaces, with real sockets: accepted traffic is
//! forwarded in XDP (and arrives intact: TTL and checksum rewritten right, or the receiving
//! kernel would drop it), denied traffic is dropped, anything else is left to the kernel.

use gateway::status::Report;
use std::net::IpAddr;

use gateway_testkit::harness::gateway_binary;
use gateway_testkit::{
    iperf::{self, Run, Transfer},
    netns::{Netns, veth},
    process::{GatewayProcess, LAB_METRICS_ADDR},
    traffic::{self, Servers},
};

const POLICY: &str = "groups:\n  lan-a: [198.18.1.0/24]\n  lan-b: [198.19.1.0/24]\npolicies:\n  - name: a-to-b-web\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: tcp\n    ports: [443]\n  - name: a-to-b-dns\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: udp\n    ports: [53]\n";

/// Two LAN namespaces on either side of the gateway, with XDP forwarding between them.
struct ForwardLab {
    gw: Netns,
    a: Netns,
    b: Netns,
    dir: std::path::PathBuf,
}

impl ForwardLab {
    /// `fill_checksums`: whether the hosts fill in TCP/UDP checksums themselves (see below).
    fn new(tag: &str, fill_checksums: bool) -> ForwardLab {
        let id = format!("gwfwd{tag}{}", std::process::id());
        let gw = Netns::create(&format!("{id}-gw")).unwrap();
        let a = Netns::create(&format!("{id}-a")).unwrap();
        let b = Netns::create(&format!("{id}-b")).unwrap();
        veth(&gw, "lan-a", &a, "eth0").unwrap();
        veth(&gw, "lan-b", &b, "eth0").unwrap();
        gw.sysctl("net.ipv4.ip_forward", "1").unwrap();
        for (ns, addr, router) in [
            (&a, "198.18.1.10/24", "198.18.1.1"),
            (&b, "198.19.1.10/24", "198.19.1.1"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", "eth0"]).unwrap();
            ns.ip(&["route", "add", "default", "via", router]).unwrap();
            // A veth takes XDP-redirected frames only when its peer has a NAPI instance: GRO on the
            // host end gives it one (a physical NIC needs nothing of the kind).
            ns.exec(&["ethtool", "-K", "eth0", "gro", "on"]).unwrap();
            if fill_checksums {
                // Veth leaves TCP/UDP checksums to "hardware" (CHECKSUM_PARTIAL), which only the
                // kernel path carries along; frames forwarded as bytes need them filled in, as a
                // wire would. Turned off only to isolate the XDP path; see the bulk test.
                ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
            }
        }
        gw.ip(&["addr", "add", "198.18.1.1/24", "dev", "lan-a"])
            .unwrap();
        gw.ip(&["addr", "add", "198.19.1.1/24", "dev", "lan-b"])
            .unwrap();
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        ForwardLab { gw, a, b, dir }
    }

    fn start(&self, policy: &str) -> GatewayProcess {
        std::fs::write(self.dir.join("policy.yaml"), policy).unwrap();
        let cfg = format!(
            "policy: {}\nmetrics_addr: {LAB_METRICS_ADDR}\noverlay:\n  ipv4: 198.19.0.0/16\ninterfaces:\n  lan:\n    - name: lan-a\n      forward: xdp\n    - name: lan-b\n      forward: xdp\n",
            self.dir.join("policy.yaml").display()
        );
        std::fs::write(self.dir.join("gateway.yaml"), cfg).unwrap();
        GatewayProcess::start(
            &gateway_binary(),
            &self.gw,
            &self.dir.join("gateway.yaml"),
            &self.dir.join("gateway.log"),
        )
        .expect("gateway")
    }
}

impl Drop for ForwardLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn accepted_lan_traffic_is_forwarded_in_xdp() {
    let lab = ForwardLab::new("s", true);
    let (gw, a, b) = (&lab.gw, &lab.a, &lab.b);
    let _servers = Servers::start(b, &[443, 22], &[53]).unwrap();
    let p = lab.start(POLICY);

    let to_b = IpAddr::from([198, 19, 1, 10]);
    let ok = traffic::tcp_exchange(a, to_b, 443);
    assert!(
        ok,
        "accepted TCP through the XDP path\n{:#?}\n{}",
        p.status::<Report>(gw).map(|s| s.counters),
        p.log_text()
    );
    assert!(
        traffic::udp_exchange(a, to_b, 53),
        "accepted UDP through the XDP path"
    );
    assert!(!traffic::tcp_exchange(a, to_b, 22), "denied by default");
    let st = p.status::<Report>(gw).unwrap();
    let count = |verdict: &str, reason: &str| {
        st.counters
            .iter()
            .filter(|c| c.direction == "lan" && c.verdict == verdict && c.reason == reason)
            .map(|c| c.packets)
            .sum::<u64>()
    };
    assert!(
        count("forwarded", "xdp_forwarded") >= 4,
        "{:?}",
        st.counters
    );
    assert!(count("drop", "default_deny") >= 1, "{:?}", st.counters);
    // Replies toward lan-a are not the overlay's: the kernel forwards them.
    assert!(count("pass", "not_overlay") >= 2, "{:?}", st.counters);
    // The veth caveat (see the bulk test) is in the log, once per interface.
    assert_eq!(
        p.log_text().matches("XDP forwarding from a veth").count(),
        2,
        "{}",
        p.log_text()
    );
    assert!(p.stop().unwrap().success());
}

/// Bulk TCP and 1400-byte UDP, both ways, through XDP forwarding with full-size frames, at MTU
/// 1500 and at a jumbo MTU of 9000 (frames larger than a page: multi-buffer XDP), with the bytes
/// counted at the receiver and no packet dropped by the gateway.
///
/// At the hosts' default offloads a veth sender on the same machine leaves TCP/UDP checksums to
/// "hardware" (CHECKSUM_PARTIAL), which only the kernel path completes: the gateway hands those
/// frames to the kernel (counted as partial_checksum) and the transfer still arrives whole. With
/// the hosts filling in their own checksums (`tx off`, which also turns TSO off), as a frame from
/// a physical wire always has them, the frames are forwarded in XDP.
#[test]
fn bulk_transfers_through_xdp_forwarding() {
    for (mtu, fill_checksums) in [("1500", false), ("1500", true), ("9000", true)] {
        bulk_through_xdp_forwarding(mtu, fill_checksums);
    }
}

fn bulk_through_xdp_forwarding(mtu: &str, fill_checksums: bool) {
    let lab = ForwardLab::new(
        &format!("b{mtu}{}", u8::from(fill_checksums)),
        fill_checksums,
    );
    for (ns, dev) in [
        (&lab.a, "eth0"),
        (&lab.b, "eth0"),
        (&lab.gw, "lan-a"),
        (&lab.gw, "lan-b"),
    ] {
        ns.ip(&["link", "set", dev, "mtu", mtu]).unwrap();
    }
    let policy = "groups:\n  lan-a: [198.18.1.0/24]\n  lan-b: [198.19.1.0/24]\npolicies:\n  - name: a-to-b\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: all\n";
    let p = lab.start(policy);
    let to_b = IpAddr::from([198, 19, 1, 10]);
    let udp = Transfer::Udp {
        payload: 1400,
        mbit_per_s: 150,
    };
    for (i, (transfer, reverse)) in [
        (Transfer::Tcp, false),
        (Transfer::Tcp, true),
        (udp, false),
        (udp, true),
    ]
    .into_iter()
    .enumerate()
    {
        let run = Run {
            transfer,
            reverse,
            seconds: 2,
            port: 5201 + i as u16,
        };
        let o = iperf::run(&lab.a, &lab.b, to_b, run).unwrap_or_else(|e| {
            panic!(
                "mtu {mtu} (own checksums: {fill_checksums}) {run:?}: {e:#}\n{:#?}",
                p.status::<Report>(&lab.gw).map(|s| s.counters)
            )
        });
        eprintln!(
            "mtu {mtu} (own checksums: {fill_checksums}) {run:?}: {:.2} Gbit/s, {} bytes received",
            o.bits_per_second / 1e9,
            o.bytes_received
        );
        match transfer {
            Transfer::Tcp => assert!(
                o.bytes_received >= 20_000_000,
                "mtu {mtu} (own checksums: {fill_checksums}) {run:?}: {o:?}"
            ),
            Transfer::Udp { .. } => assert!(
                o.packets > 10_000 && o.lost_packets * 100 <= o.packets * 5,
                "mtu {mtu} (own checksums: {fill_checksums}) {run:?}: {o:?}"
            ),
        }
    }
    let st = p.status::<Report>(&lab.gw).unwrap();
    let n = |reason: &str| {
        st.counters
            .iter()
            .filter(|c| c.reason == reason)
            .map(|c| c.packets)
            .sum::<u64>()
    };
    if fill_checksums {
        assert!(n("xdp_forwarded") > 10_000, "mtu {mtu}: {:?}", st.counters);
    } else {
        // Default offloads: the local senders' frames went to the kernel, each counted.
        assert!(
            n("partial_checksum") > 10_000,
            "mtu {mtu}, default offloads: {:?}",
            st.counters
        );
    }
    if mtu == "9000" {
        // Frames larger than a page reached the program as multi-buffer XDP and were forwarded.
        let (packets, bytes) = st
            .counters
            .iter()
            .filter(|c| c.reason == "xdp_forwarded")
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
        assert!(
            bytes / packets > 4096,
            "mtu 9000: {packets} frames, {bytes} bytes forwarded"
        );
    }
    // The policy allows everything a sends to b, and replies are not the overlay's: a lost
    // datagram above was the receiving socket's, never the gateway's.
    let drops: u64 = st
        .counters
        .iter()
        .filter(|c| c.verdict == "drop")
        .map(|c| c.packets)
        .sum();
    assert_eq!(
        drops, 0,
        "mtu {mtu}: the gateway dropped packets: {:?}",
        st.counters
    );
    assert!(p.stop().unwrap().success());
}
