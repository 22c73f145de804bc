//! Traffic as hosts send it, through every hook: bulk TCP (iperf3) and 1400-byte UDP in both
//! directions at the hosts' default offloads (TSO/GSO/GRO on), so the TC programs meet GSO/GRO
//! aggregates of up to 64 KiB whose payload is not in the linear area. Asserts the bytes that
//! arrived and that the gateway counted no packet as truncated or unreadable.

use std::net::IpAddr;

use gateway::status::Report;
use gateway_testkit::harness::gateway_binary;
use gateway_testkit::{
    iperf::{self, Outcome, Run, Transfer},
    netns::Netns,
    process::{GatewayProcess, LAB_METRICS_ADDR},
    topology::Lab,
    topology::SEED_POLICY,
};

const SECONDS: u32 = 2;
const UDP: Transfer = Transfer::Udp {
    payload: 1400,
    mbit_per_s: 150,
};

/// Drops that would mean the data plane misread a well-formed packet.
const MISREAD: [&str; 4] = ["truncated", "headers_not_linear", "bad_header", "internal"];

fn misread_drops(st: &Report) -> Vec<String> {
    st.counters
        .iter()
        .filter(|c| c.verdict == "drop" && MISREAD.contains(&c.reason.as_str()) && c.packets > 0)
        .map(|c| format!("{}/{}: {} packets", c.direction, c.reason, c.packets))
        .collect()
}

fn counted(st: &Report, direction: &str, reason: &str) -> (u64, u64) {
    st.counters
        .iter()
        .filter(|c| c.direction == direction && c.reason == reason)
        .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
}

/// Runs every transfer between `client` and `server` in both directions and checks what arrived.
fn transfers(
    client: &Netns,
    server: &Netns,
    server_addr: IpAddr,
    what: &str,
) -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    for run in iperf::both_ways(UDP, SECONDS, 5201) {
        let Run {
            transfer, reverse, ..
        } = run;
        let label = format!(
            "{what}: {transfer:?} {}",
            if reverse {
                "server to client"
            } else {
                "client to server"
            }
        );
        let receiver = if reverse { client } else { server };
        let socket_drops_before = gateway_testkit::traffic::udp_socket_drops(receiver);
        let o = iperf::run(client, server, server_addr, run)
            .unwrap_or_else(|e| panic!("{label}: {e:#}"));
        // Datagrams the receiving socket itself dropped (its buffer was full): the receiving
        // host's loss on a loaded 2-core VM, not the path's.
        let socket_drops = gateway_testkit::traffic::udp_socket_drops(receiver)
            .saturating_sub(socket_drops_before);
        match transfer {
            // Tens of MB at the very least, even on a loaded 2-core VM (about 15 Gbit/s without a
            // gateway); before the fix it was 0 bytes.
            Transfer::Tcp => assert!(
                o.bytes_received >= 20_000_000,
                "{label}: only {} bytes arrived ({o:?})",
                o.bytes_received
            ),
            // 150 Mbit/s of 1400-byte datagrams: almost all must arrive, apart from those the
            // receiving socket dropped; the gateway itself must drop none, which its counters
            // show below.
            Transfer::Udp { .. } => assert!(
                o.packets > 10_000
                    && o.lost_packets.saturating_sub(socket_drops) * 100 <= o.packets * 5,
                "{label}: {} of {} datagrams lost, {socket_drops} of them by the receiving socket ({o:?})",
                o.lost_packets,
                o.packets
            ),
        }
        eprintln!(
            "{label}: {:.2} Gbit/s, {} bytes received",
            o.bits_per_second / 1e9,
            o.bytes_received
        );
        out.push((label, o));
    }
    out
}

/// Tunnel side (TC on an Ethernet "tunnel" veth) to a LAN host behind native XDP, and back; then
/// the LAN hook's default (auto: TC on this veth) and its configured fallbacks (tc, xdp-generic)
/// with the same traffic.
#[test]
fn bulk_tcp_and_udp_cross_every_hook_at_default_offloads() {
    let lab = Lab::seed().expect("lab");
    let cp1 = &lab.host("cp1").ns;
    let lan1 = lab.host("lan1");
    // The hosts keep their defaults; show they are what this test claims.
    let features =
        String::from_utf8_lossy(&cp1.exec(&["ethtool", "-k", "eth0"]).unwrap().stdout).to_string();
    for f in [
        "tcp-segmentation-offload: on",
        "generic-segmentation-offload: on",
        "tx-checksumming: on",
    ] {
        assert!(
            features.contains(f),
            "cp1 eth0 should have {f}:\n{features}"
        );
    }
    let lan_tso = || {
        let k = lan1.ns.exec(&["ethtool", "-k", "eth0"]).unwrap().stdout;
        String::from_utf8_lossy(&k).contains("tcp-segmentation-offload: on")
    };
    for attach in ["xdp-native", "auto", "tc", "xdp-generic"] {
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
        // Native XDP on the LAN veth switches off segmentation offload on its peer (the LAN
        // host's eth0): the reason `auto` attaches a veth at TC, where the host keeps it.
        let mode = gw
            .status::<Report>(&lab.gw)
            .unwrap()
            .attachments
            .into_iter()
            .find(|a| a.interface == "lan0")
            .map(|a| a.mode)
            .unwrap_or_default();
        match attach {
            "xdp-native" => assert!(!lan_tso(), "XDP on the veth left its peer's TSO on"),
            "auto" => {
                assert!(mode.starts_with("tc ingress (auto: a veth"), "{mode}");
                assert!(lan_tso(), "auto: the LAN host lost its TSO ({mode})");
            }
            "tc" => assert!(lan_tso(), "tc: the LAN host lost its TSO"),
            _ => {}
        }
        let results = transfers(
            cp1,
            &lan1.ns,
            IpAddr::V4(lan1.addr),
            &format!("lan {attach}"),
        );
        let st = gw.status::<Report>(&lab.gw).unwrap();
        let bad = misread_drops(&st);
        assert!(
            bad.is_empty(),
            "lan {attach}: well-formed packets dropped as unreadable: {bad:?}\n{results:#?}"
        );
        // The tunnel hooks judged aggregates, not only MTU-sized packets: that is what the test
        // is for. (Packets are counted once per skb, bytes by its full length.)
        let (packets, bytes) = counted(&st, "tunnel_ingress", "established");
        assert!(
            packets > 0 && bytes / packets > 1514,
            "lan {attach}: no GSO aggregate reached the tunnel ingress ({packets} skbs, {bytes} bytes)"
        );
        assert!(gw.stop().unwrap().success());
    }
}
