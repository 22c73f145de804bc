//! The XDP forwarding path between LAN interfaces, with real sockets: accepted traffic is
//! forwarded in XDP (and arrives intact: TTL and checksum rewritten right, or the receiving
//! kernel would drop it), denied traffic is dropped, anything else is left to the kernel.

use gateway::status::Report;
use std::net::IpAddr;

use gateway_testkit::harness::{gateway_binary, lan_flows_on};
use gateway_testkit::{
    iperf::{self, Run, Transfer},
    netns::{Netns, router_with_two_lans, veth},
    process::{GatewayProcess, LAB_METRICS_ADDR},
    traffic::{self, Servers},
};

const POLICY: &str = "groups:\n  lan-a: [198.18.1.0/24]\n  lan-b: [198.19.1.0/24]\npolicies:\n  - name: a-to-b-web\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: tcp\n    ports: [443]\n  - name: a-to-b-dns\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: udp\n    ports: [53]\n";

/// Two LAN namespaces on either side of the gateway, with XDP forwarding between them.
struct ForwardLab {
    gw: Netns,
    a: Netns,
    b: Netns,
    /// A third LAN, when a test adds one (`with_lan_c`).
    c: Option<Netns>,
    dir: std::path::PathBuf,
}

impl ForwardLab {
    /// `fill_checksums`: whether the hosts fill in TCP/UDP checksums themselves (see below).
    fn new(tag: &str, fill_checksums: bool) -> ForwardLab {
        let id = format!("gwfwd{tag}{}", std::process::id());
        let (gw, a, b) = router_with_two_lans(&id).unwrap();
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
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        ForwardLab {
            gw,
            a,
            b,
            c: None,
            dir,
        }
    }

    /// Adds LAN c (198.19.2.0/24 on the gateway's lan-c), forwarded in XDP too.
    fn with_lan_c(mut self) -> ForwardLab {
        let c = Netns::create(&format!(
            "{}-c",
            self.dir.file_name().unwrap().to_string_lossy()
        ))
        .unwrap();
        veth(&self.gw, "lan-c", &c, "eth0").unwrap();
        c.ip(&["addr", "add", "198.19.2.10/24", "dev", "eth0"])
            .unwrap();
        c.ip(&["route", "add", "default", "via", "198.19.2.1"])
            .unwrap();
        c.exec(&["ethtool", "-K", "eth0", "gro", "on"]).unwrap();
        self.gw
            .ip(&["addr", "add", "198.19.2.1/24", "dev", "lan-c"])
            .unwrap();
        self.c = Some(c);
        self
    }

    fn start(&self, policy: &str) -> GatewayProcess {
        self.start_with(policy, "")
    }

    /// As [`ForwardLab::start`], with `extra` lines appended to the gateway's configuration.
    fn start_with(&self, policy: &str, extra: &str) -> GatewayProcess {
        std::fs::write(self.dir.join("policy.yaml"), policy).unwrap();
        let lan_c = if self.c.is_some() {
            "    - name: lan-c\n      forward: xdp\n"
        } else {
            ""
        };
        let cfg = format!(
            "policy: {}\nmetrics_addr: {LAB_METRICS_ADDR}\noverlay:\n  ipv4: 198.19.0.0/16\n  ipv6: fd00:50::/64\ninterfaces:\n  lan:\n    - name: lan-a\n      forward: xdp\n    - name: lan-b\n      forward: xdp\n{lan_c}{extra}",
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
        bulk_through_xdp_forwarding(mtu, fill_checksums, Filter::Stateful);
    }
}

/// As above with the stateless filter (conntrack off). With either filter the LAN hook's
/// per-flow shortcut forwards a flow's packets once the full path has accepted its first: the
/// transfers arrive whole, and most of their frames left through the shortcut's slots (read
/// from the running gateway's own program).
#[test]
fn bulk_transfers_through_the_stateless_lan_shortcut() {
    bulk_through_xdp_forwarding("1500", true, Filter::Stateless);
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Filter {
    /// The gateway's default: connection tracking on.
    Stateful,
    Stateless,
}

fn bulk_through_xdp_forwarding(mtu: &str, fill_checksums: bool, filter: Filter) {
    let lab = ForwardLab::new(
        &format!(
            "b{mtu}{}{}",
            u8::from(fill_checksums),
            u8::from(filter == Filter::Stateless)
        ),
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
    let p = match filter {
        Filter::Stateful => lab.start(policy),
        Filter::Stateless => lab.start_with(policy, "conntrack:\n  enabled: false\n"),
    };
    let to_b = IpAddr::from([198, 19, 1, 10]);
    let udp = Transfer::Udp {
        payload: 1400,
        mbit_per_s: 150,
    };
    for run in iperf::both_ways(udp, 2, 5201) {
        let Run {
            transfer, reverse, ..
        } = run;
        // Datagrams the receiving iperf3 could not take in time (its socket's buffer full, the
        // two cores busy) are the receiver's loss, not the path's: counted where it happens.
        let receiver = if reverse { &lab.a } else { &lab.b };
        let socket_drops_before = traffic::udp_socket_drops(receiver);
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
            Transfer::Udp { .. } => {
                let socket_drops = traffic::udp_socket_drops(receiver) - socket_drops_before;
                assert!(
                    o.packets > 10_000
                        && o.lost_packets.saturating_sub(socket_drops) * 100 <= o.packets * 5,
                    "mtu {mtu} (own checksums: {fill_checksums}) {run:?}: {o:?}, {socket_drops} dropped by the receiving socket"
                )
            }
        }
    }
    let st = p.status::<Report>(&lab.gw).unwrap();
    if fill_checksums {
        assert!(
            st.packets_for("xdp_forwarded") > 10_000,
            "mtu {mtu}: {:?}",
            st.counters
        );
    } else {
        // Default offloads: the local senders' frames went to the kernel, each counted.
        assert!(
            st.packets_for("partial_checksum") > 10_000,
            "mtu {mtu}, default offloads: {:?}",
            st.counters
        );
    }
    if mtu == "9000" {
        // Frames larger than a page reached the program as multi-buffer XDP: forwarded in XDP
        // where the kernel redirects such frames to a veth whose peer receives XDP frames (GRO
        // on, as here; Linux 6.3 on), else left to the kernel stack, which forwards them.
        let reason = if kernel_redirects_multi_buffer_frames() {
            "xdp_forwarded"
        } else {
            "left_to_kernel"
        };
        let (packets, bytes) = st
            .counters
            .iter()
            .filter(|c| c.reason == reason)
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
        assert!(
            packets > 0 && bytes / packets > 4096,
            "mtu 9000: {packets} frames, {bytes} bytes counted as {reason}: {:?}",
            st.counters
        );
    }
    // Frames with their checksums whole, at a page-sized MTU: the LAN shortcut's to forward,
    // stateless or tracked.
    if fill_checksums && mtu == "1500" {
        let flows = lan_flows_on(&lab.gw, "lan-a").unwrap();
        let hits: u64 = flows.iter().map(|f| f.hits as u64).sum();
        // (Counted after the slots were read: every frame a slot counts, the counters count.)
        let forwarded = p
            .status::<Report>(&lab.gw)
            .unwrap()
            .packets_for("xdp_forwarded");
        // a's data (TCP and UDP) and its ACKs of b's data, all toward b: the flows in the
        // slots are a's to b's address, and the frames they forwarded are most of what XDP
        // forwarded (a slot's first frame, and frames of flows that evicted each other, took
        // the full path).
        assert!(
            !flows.is_empty()
                && flows.iter().all(|f| f.src.to_ne_bytes() == [198, 18, 1, 10]
                    && f.dst.to_ne_bytes() == [198, 19, 1, 10]),
            "{flows:?}"
        );
        eprintln!("{hits} of {forwarded} frames forwarded in XDP took the shortcut");
        assert!(
            hits > 10_000 && hits * 10 >= forwarded * 9 && hits <= forwarded,
            "{hits} frames through the shortcut, {forwarded} forwarded in XDP: {:?}",
            st.counters
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

/// The route cache honours rules that route by source: two hosts behind lan-a send to one
/// destination that sits behind both lan-b and lan-c, and a rule sends the second host's traffic
/// through lan-c. Both send from one CPU (one per-CPU cache), alternating, within the cache's
/// second: each datagram must arrive where the FIB routes its own source, forwarded in XDP.
/// IPv4 and IPv6 (hop limit, 16-byte addresses in the key).
#[test]
fn xdp_forwarding_follows_routes_by_source() {
    follows_rules(false, Selector::Source);
    follows_rules(true, Selector::Source);
}

/// As above, with the rule selecting by DSCP (IPv4's TOS, IPv6's traffic class): one host, two
/// sockets, the second marking its datagrams.
#[test]
fn xdp_forwarding_follows_routes_by_dscp() {
    follows_rules(false, Selector::Dscp);
    follows_rules(true, Selector::Dscp);
}

/// Waits (up to 5 s) until `ns` has a resolved neighbour entry for each of `addrs`.
fn wait_for_neighbours(ns: &Netns, family: &str, addrs: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !addrs.iter().all(|a| ns.neighbour_resolved(family, a))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Selector {
    Source,
    Dscp,
}

fn follows_rules(v6: bool, by: Selector) {
    use std::net::{SocketAddr, UdpSocket};
    let tag = match (by, v6) {
        (Selector::Source, false) => "s4",
        (Selector::Source, true) => "s6",
        (Selector::Dscp, false) => "d4",
        (Selector::Dscp, true) => "d6",
    };
    let lab = ForwardLab::new(tag, true).with_lan_c();
    let (gw, a, b) = (&lab.gw, &lab.a, &lab.b);
    let c = lab.c.as_ref().unwrap();
    // (first host, second host, destination, next hop behind lan-b, next hop behind lan-c)
    let (ten, eleven, far, via_b, via_c): (IpAddr, IpAddr, IpAddr, &str, &str) = if v6 {
        (
            "fd00:1::10".parse().unwrap(),
            "fd00:1::11".parse().unwrap(),
            "fd00:50::1".parse().unwrap(),
            "fd00:2::10",
            "fd00:3::10",
        )
    } else {
        (
            "198.18.1.10".parse().unwrap(),
            "198.18.1.11".parse().unwrap(),
            "198.19.50.1".parse().unwrap(),
            "198.19.1.10",
            "198.19.2.10",
        )
    };
    let family = if v6 { "-6" } else { "-4" };
    let run = |ns: &Netns, cmd: String| {
        let mut args = vec![family];
        args.extend(cmd.split_whitespace());
        ns.ip(&args).unwrap();
    };
    if v6 {
        gw.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
        // No duplicate address detection: the addresses are usable at once.
        for (ns, dev, addr) in [
            (a, "eth0", "fd00:1::10/64"),
            (gw, "lan-a", "fd00:1::1/64"),
            (b, "eth0", "fd00:2::10/64"),
            (gw, "lan-b", "fd00:2::1/64"),
            (c, "eth0", "fd00:3::10/64"),
            (gw, "lan-c", "fd00:3::1/64"),
        ] {
            run(ns, format!("addr add {addr} dev {dev} nodad"));
        }
        run(a, "route add default via fd00:1::1".into());
    }
    let prefix = if v6 { 64 } else { 24 };
    run(
        a,
        format!(
            "addr add {eleven}/{prefix} dev eth0{}",
            if v6 { " nodad" } else { "" }
        ),
    );
    for ns in [b, c] {
        run(ns, format!("addr add {far} dev lo"));
    }
    // The main table routes the destination through lan-b; a rule sends .11's through lan-c.
    run(gw, format!("route add {far} via {via_b} dev lan-b"));
    run(
        gw,
        format!("route add {far} via {via_c} dev lan-c table 100"),
    );
    // IPv4's rules take the legacy TOS values only (the DSCP bits 0x1c); IPv6's any DSCP.
    let mark: u8 = if v6 { 0x28 } else { 0x08 };
    let selector = match by {
        Selector::Source => format!("from {eleven}"),
        Selector::Dscp => format!("tos {mark:#04x}"),
    };
    run(gw, format!("rule add {selector} lookup 100 priority 100"));
    let (lan_a, far_net) = if v6 {
        ("fd00:1::/64", "fd00:50::/64")
    } else {
        ("198.18.1.0/24", "198.19.50.0/24")
    };
    let policy = format!(
        "groups:\n  lan-a: [\"{lan_a}\"]\n  far: [\"{far_net}\"]\npolicies:\n  - name: a-to-far\n    source_groups: [lan-a]\n    destination_groups: [far]\n    action: accept\n    protocol: udp\n    ports: [5300]\n"
    );
    let p = lab.start(&policy);
    let sink = SocketAddr::new(far, 5300);
    let (at_b, at_c) = (traffic::udp_sink(b, sink), traffic::udp_sink(c, sink));
    const ROUNDS: usize = 200;
    let (first_addr, second_addr) = a
        .run_scoped(move || {
            gateway_testkit::harness::pin_thread_to_cpu(0);
            let from = |host: IpAddr| UdpSocket::bind(SocketAddr::new(host, 0)).unwrap();
            let (first, second) = match by {
                Selector::Source => (from(ten), from(eleven)),
                Selector::Dscp => {
                    let second = from(ten);
                    let mark = mark as libc::c_int;
                    let (level, name) = if v6 {
                        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
                    } else {
                        (libc::IPPROTO_IP, libc::IP_TOS)
                    };
                    // SAFETY: a valid socket and a pointer to a c_int of the size given.
                    let rc = unsafe {
                        libc::setsockopt(
                            std::os::fd::AsRawFd::as_raw_fd(&second),
                            level,
                            name,
                            (&mark as *const libc::c_int).cast(),
                            size_of::<libc::c_int>() as libc::socklen_t,
                        )
                    };
                    assert_eq!(rc, 0, "marking: {}", std::io::Error::last_os_error());
                    (from(ten), second)
                }
            };
            let to = SocketAddr::new(far, 5300);
            // The first datagrams find no neighbour entries yet: the kernel forwards them (and
            // resolves the next hops); the rest go through the XDP path and its cache, once
            // both entries are there (under a loaded CI machine resolving took longer than the
            // first rounds, and every datagram of one sender was left to the kernel).
            for round in 0..ROUNDS {
                first.send_to(b"first", to).unwrap();
                second.send_to(b"second", to).unwrap();
                if round < 5 {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                } else {
                    if round == 5 {
                        wait_for_neighbours(gw, family, &[via_b, via_c]);
                    }
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
            }
            (first.local_addr().unwrap(), second.local_addr().unwrap())
        })
        .unwrap();
    let (got_b, got_c) = (traffic::udp_senders(&at_b), traffic::udp_senders(&at_c));
    let st = p.status::<Report>(gw).unwrap();
    let count = |reasons: &[&str]| -> u64 {
        st.counters
            .iter()
            .filter(|c| c.direction == "lan" && reasons.contains(&c.reason.as_str()))
            .map(|c| c.packets)
            .sum()
    };
    let expected = |sender: SocketAddr| std::collections::BTreeMap::from([(sender, ROUNDS)]);
    assert_eq!(
        got_b,
        expected(first_addr),
        "behind lan-b (main table); lan-c got {got_c:?}; counters {:?}",
        st.counters
    );
    assert_eq!(
        got_c,
        expected(second_addr),
        "behind lan-c (the rule's table)"
    );
    let xdp_forwarded = count(&["xdp_forwarded"]);
    // Every datagram the policy let through was forwarded in XDP or, counted, left to the
    // kernel (the first ones, before the next hops' neighbour entries existed).
    assert_eq!(
        count(&["policy", "established"]),
        xdp_forwarded + count(&["left_to_kernel"]),
        "{:?}",
        st.counters
    );
    assert!(count(&["left_to_kernel"]) >= 1, "{:?}", st.counters);
    assert!(
        xdp_forwarded >= 2 * (ROUNDS as u64 - 10),
        "forwarded in XDP: {xdp_forwarded}; {:?}",
        st.counters
    );
    assert!(p.stop().unwrap().success());
}

/// Whether this kernel redirects multi-buffer XDP frames to devices that take them: from Linux
/// 6.3 on (before, `xdp_do_redirect` refused every one but to a CPU map). Read from the kernel's
/// release, independently of the gateway's own query of the interfaces' XDP features.
fn kernel_redirects_multi_buffer_frames() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().unwrap() >= KernelVersion::new(6, 3, 0)
}

/// The kernel's word on a veth as an XDP redirect target: it takes multi-buffer frames only
/// while its peer can receive XDP frames (here GRO on the peer; an XDP program there would do
/// too), and only from Linux 6.3 on. The gateway reads this once, as it sets up forwarding.
#[test]
fn the_kernel_says_which_interfaces_take_multi_buffer_redirects() {
    let id = format!("gwxf{}", std::process::id());
    let one = Netns::create(&format!("{id}-1")).unwrap();
    let two = Netns::create(&format!("{id}-2")).unwrap();
    veth(&one, "x0", &two, "x1").unwrap();
    for (ns, dev) in [(&one, "x0"), (&two, "x1")] {
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    two.exec(&["ethtool", "-K", "x1", "gro", "off"]).unwrap();
    let ask = || {
        one.run_scoped(|| {
            let index = gateway_dataplane::attach::if_index("x0").unwrap();
            gateway_dataplane::xdp_features::takes_multi_buffer_redirects(index).unwrap()
        })
        .unwrap()
    };
    assert!(
        !ask(),
        "x0 takes redirects while its peer receives no XDP frames"
    );
    two.exec(&["ethtool", "-K", "x1", "gro", "on"]).unwrap();
    assert_eq!(ask(), kernel_redirects_multi_buffer_frames());
}

/// The kernel's word on a TUN (the userspace WireGuard backend's device, wireguard-go's) as an
/// XDP redirect target, which the README's LAN → tunnel paragraph rests on: it announces no
/// `ndo-xmit` in its xdp-features, so the kernel (6.3 and later) would refuse every frame
/// redirected into it, and the LAN program leaves replies into a tunnel to the kernel stack. A
/// veth whose peer runs GRO does announce it (the same query, a device that says yes). Should a
/// kernel's TUN announce it one day, this fails: XDP redirects into tunnels are then worth
/// revisiting.
#[test]
fn a_tun_announces_no_xdp_redirects() {
    let id = format!("gwxt{}", std::process::id());
    let one = Netns::create(&format!("{id}-1")).unwrap();
    let two = Netns::create(&format!("{id}-2")).unwrap();
    one.ip(&["tuntap", "add", "dev", "t0", "mode", "tun"])
        .unwrap();
    veth(&one, "x0", &two, "x1").unwrap();
    for (ns, dev) in [(&one, "x0"), (&two, "x1"), (&one, "t0")] {
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    two.exec(&["ethtool", "-K", "x1", "gro", "on"]).unwrap();
    let takes = |dev: &str| {
        one.run_scoped(|| {
            let index = gateway_dataplane::attach::if_index(dev).unwrap();
            gateway_dataplane::xdp_features::takes_redirects(index).unwrap()
        })
        .unwrap()
    };
    // Before 6.3 the kernel has no xdp-features to ask (and no such check): it cannot say.
    let says = |yes: bool| kernel_redirects_multi_buffer_frames().then_some(yes);
    assert_eq!(takes("t0"), says(false), "a TUN announces ndo-xmit");
    assert_eq!(takes("x0"), says(true));
}
