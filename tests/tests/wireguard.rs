//! The gateway terminating real WireGuard: its own interface (the userspace backend here, as this
//! kernel has no WireGuard, and `auto` must find that out; the kernel backend in a guest kernel
//! that has it), wireguard-go peers that someone else wrote, default offloads, and traffic
//! through encrypted tunnels to a LAN host that only masquerade can answer. File mode: the peers
//! are static in the gateway's config.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4, TcpListener},
    time::Duration,
};

use gateway::status::Report;
use gateway_testkit::{
    harness::gateway_binary,
    iperf::{self, Run, Transfer},
    process::{GatewayProcess, LAB_METRICS_ADDR},
    traffic,
    wireguard::{WG_GW_LAN, WG_GW_OVERLAY, WG_LAN_HOST, WgLab, wait_for},
};

const POLICY: &str = r#"
groups:
  full: ["100.64.0.2/32"]
  ping-only: ["100.64.0.3/32"]
  lan: ["198.18.10.0/24"]
policies:
  - name: full-to-lan
    source_groups: [full]
    destination_groups: [lan]
    action: accept
    protocol: all
  - name: ping-only
    source_groups: [ping-only]
    destination_groups: [lan]
    action: accept
    protocol: icmp
"#;

fn public_key(lab: &WgLab) -> String {
    let out = std::process::Command::new(gateway_binary())
        .args([
            "wireguard",
            "public-key",
            "--state-dir",
            lab.state_dir().to_str().unwrap(),
        ])
        .output()
        .expect("gateway wireguard public-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The dual-stack tests' IPv6 plan: the overlay (the gateway ::1, each peer at the last byte
/// of its IPv4 address) and the LAN, masqueraded like its IPv4 network.
const OVERLAY6: &str = "fd00:64::";
const LAN6_NET: &str = "fd00:18:10::/64";

/// The gateway's config: its WireGuard interface with the lab's peers, the LAN, masquerade, and
/// `interfaces_extra` under `interfaces:`; with `ipv6`, the IPv6 plan beside the IPv4 one (in
/// the policy too).
fn config_with(
    lab: &WgLab,
    backend: &str,
    interfaces_extra: &str,
    ipv6: bool,
) -> std::path::PathBuf {
    let policy = if ipv6 {
        POLICY
            .replace(
                "[\"100.64.0.2/32\"]",
                &format!("[\"100.64.0.2/32\", \"{OVERLAY6}2/128\"]"),
            )
            .replace(
                "[\"198.18.10.0/24\"]",
                &format!("[\"198.18.10.0/24\", \"{LAN6_NET}\"]"),
            )
    } else {
        POLICY.to_string()
    };
    std::fs::write(lab.dir.join("policy.yaml"), policy).unwrap();
    let mut peers = String::new();
    for h in &lab.peers {
        let v6 = if ipv6 {
            format!(", \"{OVERLAY6}{}/128\"", h.overlay.octets()[3])
        } else {
            String::new()
        };
        peers.push_str(&format!(
            "    - public_key: {}\n      allowed_ips: [{}/32{v6}]\n",
            h.peer.public_key, h.overlay
        ));
    }
    let (overlay, address6, masquerade6) = if ipv6 {
        (
            format!("overlay:\n  ipv4: 100.64.0.0/10\n  ipv6: {OVERLAY6}/64\n"),
            format!("  address_v6: {OVERLAY6}1/64\n"),
            format!(", \"{LAN6_NET}\""),
        )
    } else {
        Default::default()
    };
    let cfg = format!(
        "policy: policy.yaml\nmetrics_addr: {LAB_METRICS_ADDR}\npin_dir: {}\n{overlay}\
         wireguard:\n  backend: {backend}\n  interface: {}\n  address: {WG_GW_OVERLAY}/10\n{address6}  peers:\n{peers}\
         interfaces:\n{interfaces_extra}  lan:\n    - name: lan0\n\
         masquerade:\n  networks: [198.18.10.0/24{masquerade6}]\n",
        lab.pin_dir().display(),
        lab.gw_interface,
    );
    let path = lab.dir.join("gateway.yaml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn start(lab: &WgLab, backend: &str, log: &str) -> GatewayProcess {
    start_with(lab, backend, "", log)
}

fn start_with(lab: &WgLab, backend: &str, interfaces_extra: &str, log: &str) -> GatewayProcess {
    start_config(
        lab,
        &config_with(lab, backend, interfaces_extra, false),
        log,
    )
}

/// The gateway with the config at `cfg` and the lab's state folder.
fn start_config(lab: &WgLab, cfg: &std::path::Path, log: &str) -> GatewayProcess {
    GatewayProcess::start_with(
        &gateway_binary(),
        &lab.gw,
        cfg,
        &lab.dir.join(log),
        &["--state-dir", lab.state_dir().to_str().unwrap()],
    )
    .expect("gateway starts")
}

/// One peer, the gateway (with `interfaces_extra` under `interfaces:`), the tunnel up: ping
/// through it answered.
fn one_peer(backend: &str, interfaces_extra: &str) -> (WgLab, GatewayProcess, IpAddr) {
    let lab = WgLab::new(1).expect("lab");
    let key = public_key(&lab);
    let gw = start_with(&lab, backend, interfaces_extra, "gateway.log");
    lab.connect_peers(&key).unwrap();
    let lan: IpAddr = WG_LAN_HOST.parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || traffic::ping(
            &lab.peers[0].ns,
            lan
        )),
        "{}",
        gw.log_text()
    );
    (lab, gw, lan)
}

/// The gateway's interface as its config and NetBird's defaults make it: the lab's name, the
/// gateway's key, port 51820, MTU 1280, the overlay address, one peer per lab peer.
fn assert_device_as_configured(wg: &gateway_wireguard::TunnelReport, lab: &WgLab, key: &str) {
    assert_eq!(wg.interface, lab.gw_interface);
    assert_eq!(wg.public_key.as_deref(), Some(key));
    assert_eq!(wg.listen_port, 51820);
    assert_eq!(wg.mtu, Some(1280), "NetBird's MTU");
    assert!(
        wg.addresses
            .iter()
            .any(|a| a.to_string() == format!("{WG_GW_OVERLAY}/10")),
        "{:?}",
        wg.addresses
    );
    assert_eq!(wg.peers.len(), lab.peers.len());
}

/// iperf3 TCP from the peer to the LAN host and back, at default offloads.
fn bulk_tcp_both_ways(lab: &WgLab, gw: &GatewayProcess, lan: IpAddr, seconds: u32, at_least: u64) {
    for reverse in [false, true] {
        let out = iperf::run(
            &lab.peers[0].ns,
            &lab.lan,
            lan,
            Run {
                transfer: Transfer::Tcp,
                reverse,
                seconds,
                port: 5201,
            },
        )
        .expect("iperf3 tcp");
        assert!(
            out.bytes_received > at_least,
            "reverse={reverse}: {out:?}\n{}",
            gw.log_text()
        );
    }
}

#[test]
fn peers_reach_the_lan_through_encrypted_tunnels_as_the_gateway() {
    let lab = WgLab::new(2).expect("lab");
    let key = public_key(&lab);
    assert_eq!(public_key(&lab), key, "the key is made once and kept");
    let gw = start(&lab, "auto", "gateway.log");
    lab.connect_peers(&key).unwrap();
    let lan: IpAddr = WG_LAN_HOST.parse().unwrap();
    let (p1, p2) = (&lab.peers[0], &lab.peers[1]);

    // What the gateway reports: auto found no kernel WireGuard and runs the userspace device.
    let st: Report = gw.status(&lab.gw).unwrap();
    let wg = st.wireguard.as_ref().expect("wireguard in status");
    assert_eq!(wg.backend.label(), "userspace", "{}", wg.chosen);
    assert!(
        wg.chosen.starts_with("auto: no kernel WireGuard"),
        "{}",
        wg.chosen
    );
    assert_device_as_configured(wg, &lab, &key);

    // p1 may do anything to the LAN; the LAN host has no route to the overlay, so only
    // masqueraded traffic can be answered.
    let servers = traffic::Servers::start(&lab.lan, &[80], &[53]).expect("servers");
    assert!(traffic::ping(&p1.ns, lan), "{}", gw.log_text());
    assert!(traffic::tcp_exchange(&p1.ns, lan, 80), "{}", gw.log_text());
    assert!(traffic::udp_exchange(&p1.ns, lan, 53));
    // p2 may only ping.
    assert!(traffic::ping(&p2.ns, lan));
    assert!(!traffic::tcp_exchange(&p2.ns, lan, 80));
    assert!(!traffic::udp_exchange(&p2.ns, lan, 53));
    drop(servers);

    // The LAN host sees the gateway's address.
    let listener = lab
        .lan
        .run_scoped(|| TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .expect("listen");
    let _c = p1
        .ns
        .run_scoped(|| {
            std::net::TcpStream::connect_timeout(
                &SocketAddr::V4(SocketAddrV4::new(WG_LAN_HOST.parse().unwrap(), 8080)),
                Duration::from_secs(3),
            )
        })
        .unwrap()
        .expect("connect");
    let (_s, seen) = listener.accept().unwrap();
    assert_eq!(seen.ip().to_string(), WG_GW_LAN);

    // Both sides saw a handshake and encrypted bytes.
    for h in &lab.peers {
        assert!(
            h.peer.handshake_age(&key).unwrap().is_some(),
            "peer {} has no handshake",
            h.overlay
        );
        let (rx, tx) = h.peer.transfer(&key).unwrap();
        assert!(rx > 0 && tx > 0, "peer {}: rx {rx} tx {tx}", h.overlay);
    }
    let st: Report = gw.status(&lab.gw).unwrap();
    for p in &st.wireguard.as_ref().unwrap().peers {
        assert!(p.handshake_age_secs.is_some(), "{p:?}");
        assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{p:?}");
        assert!(
            p.endpoint.is_some(),
            "endpoint learned from the handshake: {p:?}"
        );
    }
    assert!(st.packets("lan", "masqueraded") > 0, "{:?}", st.counters);
    let metrics = gw.metrics(&lab.gw).unwrap();
    for line in [
        format!(
            "gateway_wireguard_backend_info{{backend=\"userspace\",interface=\"{}\"}} 1",
            lab.gw_interface
        ),
        "gateway_wireguard_peers 2".into(),
        "gateway_wireguard_peers_with_recent_handshake 2".into(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    assert!(
        st.packets("tunnel_ingress", "default_deny") > 0,
        "p2's flows were dropped by the policy: {:?}",
        st.counters
    );
}

#[test]
fn bulk_tcp_both_ways_and_full_size_udp_cross_the_tunnel() {
    let (lab, gw, lan) = one_peer("userspace", "");
    let p1 = &lab.peers[0];
    // Default offloads everywhere: the peers' and the LAN host's TSO/GSO/GRO stay on. The MSS
    // clamp keeps full-size segments inside the 1280-byte tunnel.
    bulk_tcp_both_ways(&lab, &gw, lan, 3, 5_000_000);
    fragmented_datagrams_from_the_peer(&lab, &gw, lan);
    // LAN → peer, the largest datagrams that fit, as iperf3 sends them (don't fragment).
    let socket_drops = gateway_testkit::traffic::udp_socket_drops(&p1.ns);
    let out = iperf::run(
        &p1.ns,
        &lab.lan,
        lan,
        Run {
            transfer: Transfer::Udp {
                payload: 1200,
                mbit_per_s: 20,
            },
            reverse: true,
            seconds: 3,
            port: 5203,
        },
    )
    .expect("iperf3 udp reverse");
    let socket_drops = gateway_testkit::traffic::udp_socket_drops(&p1.ns) - socket_drops;
    assert!(
        out.packets > 1000
            && out.lost_packets.saturating_sub(socket_drops) * 100 <= out.packets * 3,
        "{out:?}, {socket_drops} at the socket"
    );
    // LAN → peer, 1400-byte answers: the LAN host sends them whole with don't-fragment, the
    // gateway answers "fragmentation needed" from its LAN address, and the masquerade puts the
    // LAN host's own packet in the quote (RFC 5508), so the LAN host learns the path MTU toward
    // the address it actually talks to and fragments the next answers. Without that it keeps
    // sending what cannot pass: a black hole.
    large_answers_from_the_lan(&lab, &gw, lan);
    let route = String::from_utf8_lossy(&lab.lan.ip(&["route", "get", WG_GW_LAN]).unwrap().stdout)
        .to_string();
    assert!(
        route.contains("mtu 1280"),
        "the LAN host learned the tunnel's MTU for the gateway's address: {route}"
    );
    let st: Report = gw.status(&lab.gw).unwrap();
    assert!(
        st.counters
            .iter()
            .any(|c| c.reason == "mss_clamped" && c.packets > 0),
        "{:?}",
        st.counters
    );
}

#[test]
fn forwarding_in_tc_from_the_wireguard_interface_reaches_the_lan() {
    // The WireGuard interface has no link header: the redirect toward the LAN's Ethernet
    // must give the packet one first, or the kernel drops it (every packet, silently). The
    // other way, the LAN's TC program (`auto` on this veth) redirects the LAN host's packets
    // into the interface as bare IP packets.
    let (lab, gw, lan) = one_peer("userspace", "  tunnel_forward: tc\n");
    bulk_tcp_both_ways(&lab, &gw, lan, 2, 2_000_000);
    let st: Report = gw.status(&lab.gw).unwrap();
    assert!(
        st.packets("tunnel_ingress", "tc_forwarded") > 1000,
        "{:?}",
        st.counters
    );
    assert!(
        st.packets("lan", "tc_forwarded") > 1000,
        "{:?}",
        st.counters
    );
    // Translated by the tunnel's program on the way out, before the link header goes on.
    assert!(st.packets("lan", "masqueraded") > 1000, "{:?}", st.counters);
    assert_eq!(
        st.packets("tunnel_ingress", "internal"),
        0,
        "{:?}",
        st.counters
    );
    // Most of it through the tunnel's per-flow shortcut, read from the running gateway's own
    // program on the interface: the first packet of each tick per flow takes the full path.
    let slots = gateway_testkit::harness::tunnel_flows_on(&lab.gw, &lab.gw_interface).unwrap();
    let hits: u64 = slots.iter().map(|e| e.hits as u64).sum();
    let forwarded = st.packets("tunnel_ingress", "tc_forwarded");
    eprintln!("tunnel shortcut: {hits} of {forwarded} packets forwarded in TC");
    assert!(
        hits * 2 >= forwarded,
        "{hits} of {forwarded} packets took the shortcut: {slots:?}"
    );
}

#[test]
fn a_restart_of_the_userspace_device_ends_its_sessions_and_peers_reconnect() {
    let (lab, gw, lan) = one_peer("userspace", "");
    let p1 = &lab.peers[0];
    gw.stop().unwrap();
    // The in-process device ends with the process: no tunnel, nothing passes (the pinned
    // programs on the old interface are gone with it).
    assert!(
        lab.gw.ip(&["link", "show", &lab.gw_interface]).is_err(),
        "the userspace interface outlived its process"
    );
    assert!(!traffic::ping(&p1.ns, lan));
    // A new process has the same key; the peer's old session is unknown to it, so the peer
    // starts a new handshake when its packets go unanswered (WireGuard's 15 s rule).
    let gw = start(&lab, "userspace", "gateway2.log");
    assert!(
        wait_for(Duration::from_secs(40), || traffic::ping(&p1.ns, lan)),
        "{}",
        gw.log_text()
    );
    let st: Report = gw.status(&lab.gw).unwrap();
    assert!(st.wireguard.unwrap().peers[0].handshake_age_secs.is_some());
}

/// IPv6 through real WireGuard, the kernel forwarding (the LAN's XDP program and the tunnel's
/// TC programs judging and translating).
#[test]
fn ipv6_crosses_the_tunnel_masqueraded_both_ways() {
    ipv6_through_the_tunnel("");
}

/// The same with the tunnel's traffic forwarded in TC: the bare IPv6 packet gets its link
/// header there.
#[test]
fn ipv6_crosses_the_tunnel_masqueraded_both_ways_forwarded_in_tc() {
    ipv6_through_the_tunnel("  tunnel_forward: tc\n");
}

/// The gateway's interface gets fd00:64::1/64 beside its IPv4 address, the peer fd00:64::2,
/// and the LAN's fd00:18:10::/64 is masqueraded. TCP both ways at default offloads; 1400-byte
/// datagrams from the peer (fragmented by the peer at the tunnel's 1280-byte MTU: IPv6 leaves
/// fragmentation to the sender); 1400-byte answers from the LAN host, which only arrive once
/// the gateway's "packet too big" reached it through the masquerade, quoting what the LAN host
/// sent.
fn ipv6_through_the_tunnel(interfaces_extra: &str) {
    const LAN6: &str = "fd00:18:10::10";
    const GW_LAN6: &str = "fd00:18:10::1";
    let peer6 = format!("{OVERLAY6}2");
    let lab = WgLab::new(1).expect("lab");
    let p1 = &lab.peers[0];
    lab.gw.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    lab.gw
        .ip_line(&format!("-6 addr add {GW_LAN6}/64 dev lan0 nodad"))
        .unwrap();
    lab.lan
        .ip_line(&format!("-6 addr add {LAN6}/64 dev eth0 nodad"))
        .unwrap();
    lab.lan
        .ip_line(&format!("-6 route add default via {GW_LAN6}"))
        .unwrap();
    let wg = &p1.peer.interface;
    p1.ns
        .ip_line(&format!("-6 addr add {peer6}/64 dev {wg} nodad"))
        .unwrap();
    p1.ns
        .ip_line(&format!("-6 route add {LAN6_NET} dev {wg}"))
        .unwrap();
    let gw = start_config(
        &lab,
        &config_with(&lab, "userspace", interfaces_extra, true),
        "gateway.log",
    );
    p1.peer
        .add_peer(
            &public_key(&lab),
            Some(&format!("{}:51820", p1.gw_underlay)),
            &format!("100.64.0.0/10,198.18.10.0/24,{OVERLAY6}/64,{LAN6_NET}"),
            25,
        )
        .unwrap();
    let lan: IpAddr = LAN6.parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || traffic::ping(&p1.ns, lan)),
        "ping6 through the tunnel\n{}",
        gw.log_text()
    );
    // The LAN host sees the gateway's LAN address.
    let listener = lab
        .lan
        .run(move || TcpListener::bind(SocketAddr::new(lan, 443)))
        .unwrap()
        .expect("listen");
    let _client = p1
        .ns
        .run(move || {
            std::net::TcpStream::connect_timeout(&SocketAddr::new(lan, 443), Duration::from_secs(5))
        })
        .unwrap()
        .expect("connect over IPv6");
    let (_, seen) = listener.accept().unwrap();
    assert_eq!(seen.ip(), GW_LAN6.parse::<IpAddr>().unwrap());
    bulk_tcp_both_ways(&lab, &gw, lan, 3, 5_000_000);
    fragmented_datagrams_from_the_peer(&lab, &gw, lan);
    large_answers_from_the_lan(&lab, &gw, lan);
    let st: Report = gw.status(&lab.gw).unwrap();
    assert!(st.packets("lan", "masqueraded") > 1000, "{:?}", st.counters);
    // Every TCP connection of this test is IPv6: the LAN host's SYN-ACKs (MSS 1440) were
    // lowered on their way into the tunnel (to its MTU − 60).
    assert!(
        st.packets("tunnel_egress", "mss_clamped") > 0,
        "{:?}",
        st.counters
    );
    if !interfaces_extra.is_empty() {
        assert!(
            st.packets("tunnel_ingress", "tc_forwarded") > 1000,
            "{:?}",
            st.counters
        );
    }
    for r in ["truncated", "headers_not_linear", "internal"] {
        assert_eq!(st.packets_for(r), 0, "{r}: {:?}", st.counters);
    }
}

/// 1400-byte datagrams from the first peer to `lan` do not fit the tunnel's 1280-byte MTU: the
/// peer fragments them, the gateway forwards (and masquerades) the fragments, the LAN host
/// reassembles. (Losses: a black hole loses everything; the userspace crypto of both ends,
/// iperf3 and the tests running beside this one share two cores, so a few percent may go
/// missing in their queues and the receiving socket, which is counted apart.)
fn fragmented_datagrams_from_the_peer(lab: &WgLab, gw: &GatewayProcess, lan: IpAddr) {
    let socket_drops = traffic::udp_socket_drops(&lab.lan);
    let out = iperf::run(
        &lab.peers[0].ns,
        &lab.lan,
        lan,
        Run {
            transfer: Transfer::Udp {
                payload: 1400,
                mbit_per_s: 20,
            },
            reverse: false,
            seconds: 3,
            port: 5202,
        },
    )
    .unwrap_or_else(|e| panic!("iperf3 udp: {e:#}\n{}", gw.log_text()));
    let socket_drops = traffic::udp_socket_drops(&lab.lan) - socket_drops;
    assert!(
        out.packets > 1000,
        "{out:?}\n{:?}",
        gw.status::<Report>(&lab.gw).map(|s| s.counters)
    );
    assert!(
        out.lost_packets.saturating_sub(socket_drops) * 100 <= out.packets * 3,
        "more than 3% lost: {out:?}, {socket_drops} at the socket"
    );
}

/// 1400-byte answers from `lan` to the first peer: the LAN host sends them whole, the gateway
/// answers that they are too big for the tunnel, and only once that answer reached the LAN
/// host through the masquerade (quoting what the LAN host sent) do the retries fit.
fn large_answers_from_the_lan(lab: &WgLab, gw: &GatewayProcess, lan: IpAddr) {
    let echo = udp_echo(&lab.lan, SocketAddr::new(lan, 7));
    let answered = exchange_large(&lab.peers[0].ns, SocketAddr::new(lan, 7), 1400, 20);
    drop(echo);
    assert_eq!(
        answered,
        20,
        "1400-byte answers through the tunnel\n{:?}",
        gw.status::<Report>(&lab.gw).map(|s| s.counters)
    );
}

/// A UDP echo server (an unconnected socket, as DNS servers run) in `ns`; stops when dropped.
fn udp_echo(ns: &gateway_testkit::netns::Netns, at: SocketAddr) -> EchoServer {
    let sock = ns
        .run(move || std::net::UdpSocket::bind(at))
        .unwrap()
        .expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    EchoServer {
        stop,
        thread: Some(thread),
    }
}

struct EchoServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `count` distinct `size`-byte datagrams from `ns`, each until its exact echo comes back
/// (at most 5 tries of 500 ms); returns how many came back.
fn exchange_large(
    ns: &gateway_testkit::netns::Netns,
    to: SocketAddr,
    size: usize,
    count: usize,
) -> usize {
    ns.run(move || {
        let any: IpAddr = if to.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let sock = std::net::UdpSocket::bind((any, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut answered = 0;
        for i in 0..count {
            let msg: Vec<u8> = (0..size).map(|j| (i * 7 + j) as u8).collect();
            let mut buf = vec![0u8; 65536];
            for _ in 0..5 {
                let _ = sock.send_to(&msg, to);
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) if buf[..n] == msg[..] => {
                        answered += 1;
                        break;
                    }
                    _ => {}
                }
            }
        }
        answered
    })
    .expect("namespace thread")
}

#[test]
fn an_external_interface_and_its_sessions_outlive_the_gateway_which_keeps_enforcing() {
    // wireguard-go runs the gateway's interface (as wg-quick or NetBird's own client would); the
    // gateway only filters it. Killed, it leaves the tunnel up and the pinned policy in force.
    let lab = WgLab::new(2).expect("lab");
    let (private, public) = gateway_testkit::wireguard::keypair().unwrap();
    let device = gateway_testkit::wireguard::WgPeer::start_with_key(
        &lab.gw,
        &lab.gw_interface,
        &format!("{WG_GW_OVERLAY}/10"),
        1280,
        &private,
    )
    .expect("wireguard-go on the gateway");
    device.set_listen_port(51820).unwrap();
    for h in &lab.peers {
        device
            .add_peer(&h.peer.public_key, None, &format!("{}/32", h.overlay), 0)
            .unwrap();
    }
    std::fs::write(lab.dir.join("policy.yaml"), POLICY).unwrap();
    let cfg = lab.dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policy: policy.yaml\nmetrics_addr: {LAB_METRICS_ADDR}\npin_dir: {}\nwireguard:\n  backend: external\n  interface: {}\ninterfaces:\n  lan:\n    - name: lan0\nmasquerade:\n  networks: [198.18.10.0/24]\n",
            lab.pin_dir().display(),
            lab.gw_interface
        ),
    )
    .unwrap();
    let state = lab.state_dir();
    let args = ["--state-dir", state.to_str().unwrap()];
    let gw = GatewayProcess::start_with(
        &gateway_binary(),
        &lab.gw,
        &cfg,
        &lab.dir.join("gateway.log"),
        &args,
    )
    .expect("gateway starts");
    let wg = gw
        .status::<Report>(&lab.gw)
        .unwrap()
        .wireguard
        .expect("wireguard status");
    assert_eq!(wg.backend.label(), "external");
    assert_eq!(
        wg.public_key.as_deref(),
        Some(public.as_str()),
        "read from wireguard-go, not the gateway's own key"
    );
    assert_eq!(wg.peers.len(), 2);
    lab.connect_peers(&public).unwrap();
    let lan: IpAddr = WG_LAN_HOST.parse().unwrap();
    let (p1, p2) = (&lab.peers[0], &lab.peers[1]);
    let _servers = traffic::Servers::start(&lab.lan, &[80], &[]).expect("servers");
    assert!(
        wait_for(Duration::from_secs(10), || traffic::ping(&p1.ns, lan)),
        "{}",
        gw.log_text()
    );
    assert!(traffic::tcp_exchange(&p1.ns, lan, 80));
    assert!(!traffic::tcp_exchange(&p2.ns, lan, 80));
    let mut live = traffic::tcp_open(&p1.ns, lan, 80).expect("live connection");
    assert!(live.exchange(b"before"));
    let handshake = p1.peer.handshake_age(&public).unwrap().expect("handshake");

    crash_keeps_interface_and_live_flow(&lab, gw, &mut live, "external");
    assert!(
        traffic::tcp_exchange(&p1.ns, lan, 80),
        "the pinned policy stopped allowing p1"
    );
    assert!(
        !traffic::tcp_exchange(&p2.ns, lan, 80),
        "fail open: p2 passes without the gateway process"
    );
    assert!(
        p1.peer.handshake_age(&public).unwrap().expect("handshake") >= handshake,
        "the session was renewed"
    );

    let gw = GatewayProcess::start_with(
        &gateway_binary(),
        &lab.gw,
        &cfg,
        &lab.dir.join("gateway2.log"),
        &args,
    )
    .expect("gateway restarts");
    assert!(
        gw.status::<Report>(&lab.gw)
            .unwrap()
            .adopted_generation
            .is_some(),
        "the pinned data plane is adopted"
    );
    assert!(live.exchange(b"after the restart"));
    assert!(!traffic::tcp_exchange(&p2.ns, lan, 80));
    drop(device);
}

/// Kills the gateway: an interface that the `backend` runs outside its process stays, and the
/// live connection through it.
fn crash_keeps_interface_and_live_flow(
    lab: &WgLab,
    gw: GatewayProcess,
    live: &mut traffic::Conn,
    backend: &str,
) {
    gw.crash().unwrap();
    assert!(
        lab.gw.ip(&["link", "show", &lab.gw_interface]).is_ok(),
        "the {backend} interface went with the gateway"
    );
    assert!(
        live.exchange(b"without the gateway process"),
        "the live connection broke"
    );
}

/// The kernel backend, which this VM's kernel cannot run (it has no WireGuard module): `cargo
/// xtask kernel-check` runs this test in a guest booted with Debian 12's kernel, whose module
/// it loads. `auto` must find the kernel's WireGuard there; the interface the gateway creates
/// carries real traffic, outlives the process with its sessions, and a restart with one peer
/// fewer in the config removes that peer alone.
#[test]
#[ignore = "needs the kernel's WireGuard module: `cargo xtask kernel-check` runs it in a guest kernel that has one"]
fn the_kernel_backend_creates_the_interface_whose_sessions_outlive_the_gateway() {
    let lab = WgLab::new(2).expect("lab");
    let key = public_key(&lab);
    let gw = start(&lab, "auto", "gateway.log");
    let st: Report = gw.status(&lab.gw).unwrap();
    let wg = st.wireguard.as_ref().expect("wireguard in status");
    assert_eq!(wg.backend.label(), "kernel", "{}", wg.chosen);
    assert_eq!(wg.chosen, "auto: the kernel has WireGuard");
    assert_device_as_configured(wg, &lab, &key);
    let link = lab
        .gw
        .ip(&["-d", "link", "show", &lab.gw_interface])
        .expect("the interface");
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("wireguard"),
        "not a kernel WireGuard link: {}",
        String::from_utf8_lossy(&link.stdout)
    );
    let metrics = gw.metrics(&lab.gw).unwrap();
    let info = format!(
        "gateway_wireguard_backend_info{{backend=\"kernel\",interface=\"{}\"}} 1",
        lab.gw_interface
    );
    assert!(
        metrics.lines().any(|l| l == info),
        "no {info:?} in\n{metrics}"
    );

    lab.connect_peers(&key).unwrap();
    let lan: IpAddr = WG_LAN_HOST.parse().unwrap();
    let (p1, p2) = (&lab.peers[0], &lab.peers[1]);
    let _servers = traffic::Servers::start(&lab.lan, &[80], &[53]).expect("servers");
    assert!(
        wait_for(Duration::from_secs(20), || traffic::ping(&p1.ns, lan)),
        "{}",
        gw.log_text()
    );
    assert!(traffic::tcp_exchange(&p1.ns, lan, 80), "{}", gw.log_text());
    assert!(traffic::udp_exchange(&p1.ns, lan, 53));
    assert!(
        wait_for(Duration::from_secs(20), || traffic::ping(&p2.ns, lan)),
        "p2 may ping"
    );
    assert!(!traffic::tcp_exchange(&p2.ns, lan, 80), "p2 may only ping");
    // Default offloads; a low bar, as the guest runs in software emulation.
    bulk_tcp_both_ways(&lab, &gw, lan, 2, 200_000);
    let st: Report = gw.status(&lab.gw).unwrap();
    for p in &st.wireguard.as_ref().unwrap().peers {
        assert!(p.handshake_age_secs.is_some(), "{p:?}");
        assert!(p.rx_bytes > 0 && p.tx_bytes > 0, "{p:?}");
    }
    assert!(st.packets("lan", "masqueraded") > 0, "{:?}", st.counters);
    let mut live = traffic::tcp_open(&p1.ns, lan, 80).expect("live connection");
    assert!(live.exchange(b"before"));
    let handshake = p1.peer.handshake_age(&key).unwrap().expect("handshake");

    // Killed: the kernel's interface and its sessions stay, and the pinned policy with them.
    crash_keeps_interface_and_live_flow(&lab, gw, &mut live, "kernel");
    assert!(
        !traffic::tcp_exchange(&p2.ns, lan, 80),
        "fail open: p2 passes without the gateway process"
    );

    // Started again with p2 gone from its config: the interface is adopted, p2's peer removed,
    // p1's session untouched (no new handshake).
    let cfg = lab.dir.join("gateway.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let p2_lines = format!(
        "    - public_key: {}\n      allowed_ips: [{}/32]\n",
        p2.peer.public_key, p2.overlay
    );
    assert!(text.contains(&p2_lines), "{text}");
    std::fs::write(&cfg, text.replace(&p2_lines, "")).unwrap();
    let gw = start_config(&lab, &cfg, "gateway2.log");
    let st: Report = gw.status(&lab.gw).unwrap();
    assert!(
        st.adopted_generation.is_some(),
        "the pinned data plane is adopted"
    );
    let wg = st.wireguard.as_ref().expect("wireguard in status");
    assert_eq!(wg.backend.label(), "kernel");
    let keys: Vec<&str> = wg.peers.iter().map(|p| p.public_key.as_str()).collect();
    assert_eq!(keys, [p1.peer.public_key.as_str()]);
    assert!(live.exchange(b"after the restart"), "{}", gw.log_text());
    assert!(
        p1.peer.handshake_age(&key).unwrap().expect("handshake") >= handshake,
        "p1's session was renewed by the restart"
    );
    assert!(
        !traffic::ping(&p2.ns, lan),
        "p2's peer is still on the interface"
    );
}

/// The filter in native XDP on the gateway's veth to p1 (as on a NIC).
#[test]
fn a_handshake_flood_at_the_xdp_underlay_filter_does_not_starve_the_tunnel() {
    let (lab, gw, lan) = one_peer(
        "userspace",
        "  underlay:\n    - name: u1\n      attach: xdp-native\n",
    );
    flood_does_not_starve(&lab, &gw, lan);
    // (An XDP program on a veth takes its peer's UDP segmentation offload away.)
    assert!(
        !udp_gso(&lab.peers[0].ns),
        "XDP on the veth switched the peer's UDP GSO off"
    );
}

/// The filter as `auto` attaches it on a veth: at TC ingress, so the peer keeps its UDP GSO
/// (wireguard-go sends with it) and the filter judges GSO aggregates datagram by datagram.
#[test]
fn the_tc_underlay_filter_keeps_the_peers_udp_gso_and_judges_every_datagram_of_an_aggregate() {
    let (lab, gw, lan) = one_peer("userspace", "  underlay:\n    - name: u1\n");
    let st: Report = gw.status(&lab.gw).unwrap();
    assert!(
        format!("{:?}", st.attachments).contains("tc ingress (auto: a veth"),
        "{:?}",
        st.attachments
    );
    assert!(udp_gso(&lab.peers[0].ns), "the peer keeps UDP GSO");
    flood_does_not_starve(&lab, &gw, lan);
    // Aggregates as UDP GSO sends them (one skb, one UDP header, several datagrams): four
    // transport messages pass as four; three and a malformed fourth are dropped whole.
    let target = SocketAddr::new(lab.peers[0].gw_underlay.into(), 51820);
    let counts = |gw: &GatewayProcess| {
        let st: Report = gw.status(&lab.gw).unwrap();
        (
            underlay_count(&st, "transport"),
            underlay_count(&st, "malformed"),
        )
    };
    let send_gso = |segments: &[Vec<u8>]| {
        let buf: Vec<u8> = segments.concat();
        let size = segments[0].len() as libc::c_int;
        lab.peers[0]
            .ns
            .run(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                use std::os::fd::AsRawFd as _;
                // SAFETY: setsockopt(UDP_SEGMENT) with an int on an open UDP socket.
                let rc = unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_UDP,
                        libc::UDP_SEGMENT,
                        (&size as *const libc::c_int).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
                s.send_to(&buf, target).unwrap()
            })
            .unwrap()
    };
    let transport = |len: usize| {
        let mut m = vec![0u8; len];
        m[0] = 4;
        m
    };
    let (t0, m0) = counts(&gw);
    send_gso(&[transport(64), transport(64), transport(64), transport(64)]);
    let (t1, m1) = counts(&gw);
    assert_eq!(
        (t1 - t0, m1 - m0),
        (4, 0),
        "four transport messages in one aggregate"
    );
    send_gso(&[transport(64), transport(64), transport(64), vec![0x42; 40]]);
    let (t2, m2) = counts(&gw);
    assert_eq!(
        (t2 - t1, m2 - m1),
        (0, 4),
        "an aggregate with a malformed datagram is dropped whole"
    );
}

/// The underlay filter's count of datagrams under `reason`.
fn underlay_count(st: &Report, reason: &str) -> u64 {
    st.underlay
        .iter()
        .find(|c| c.reason == reason)
        .map(|c| c.packets)
        .unwrap_or(0)
}

/// Whether UDP segmentation offload is on at the peer's underlay veth (`ethtool -k`).
fn udp_gso(ns: &gateway_testkit::netns::Netns) -> bool {
    let out = ns.exec(&["ethtool", "-k", "eth0"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim_start().starts_with("tx-udp-segmentation: on"))
}

/// 4,000 handshake initiations and 500 datagrams that are no WireGuard message at all, from the
/// peer's own address, while a bulk transfer runs through the tunnel: the tunnel keeps carrying
/// it, the garbage is counted as malformed, the initiations as rate-limited.
fn flood_does_not_starve(lab: &WgLab, gw: &GatewayProcess, lan: IpAddr) {
    let p1 = &lab.peers[0];
    let target = SocketAddr::new(lab.peers[0].gw_underlay.into(), 51820);
    let flood = p1.ns.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut initiation = vec![0u8; 148];
        initiation[0] = 1;
        let garbage = vec![0x42u8; 100];
        let mut sent = (0, 0);
        for i in 0..4_000 {
            initiation[4..8].copy_from_slice(&(i as u32).to_le_bytes());
            sent.0 += s.send_to(&initiation, target).is_ok() as u32;
            if i % 8 == 0 {
                sent.1 += s.send_to(&garbage, target).is_ok() as u32;
            }
        }
        sent
    });
    let out = iperf::run(
        &p1.ns,
        &lab.lan,
        lan,
        Run {
            transfer: Transfer::Tcp,
            reverse: false,
            seconds: 2,
            port: 5201,
        },
    )
    .expect("iperf3 during the flood");
    let (initiations, garbage) = flood.unwrap();
    assert!(out.bytes_received > 2_000_000, "{out:?}");
    assert!(traffic::ping(&p1.ns, lan), "the tunnel after the flood");
    let st: Report = gw.status(&lab.gw).unwrap();
    let c = |r: &str| underlay_count(&st, r);
    assert_eq!(c("malformed"), garbage as u64, "{:?}", st.underlay);
    assert!(
        c("rate_limited_source") + c("rate_limited_total") >= initiations as u64 - 100,
        "{:?}",
        st.underlay
    );
    assert!(c("transport") > 1000, "{:?}", st.underlay);
    let metrics = gw.metrics(&lab.gw).unwrap();
    assert!(
        metrics.contains("gateway_underlay_packets_total{reason=\"malformed\",verdict=\"drop\"}"),
        "{metrics}"
    );
}
