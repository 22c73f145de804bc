//! The tunnel's per-flow shortcut at TC ingress against the full path it stands for. Packets run
//! through BPF_PROG_TEST_RUN as arriving on the tunnel interface of a namespace whose FIB
//! forwards them to a LAN interface (TC forwarding, connection tracking on, masquerade toward
//! one LAN network and not another): the shortcut's packets leave with the bytes and the
//! counters of the full path's; it stands only within the tick in which the full path confirmed
//! the flow and under the policy generation it did, and packets that open or close connections
//! or that the forwarding hands to the kernel take the full path. Expected packets are built
//! here from the input, with checksums computed in full, not by the data plane's code.

use gateway_common::{
    maps as names,
    nat::{NatKey, NatSettings},
    stats::{HOOK_LAN, HOOK_TUNNEL_INGRESS, reason::*},
    tunnel_flow::{TunnelFlow, slot, tick},
};
use gateway_dataplane::Masquerade;
use gateway_testkit::{
    harness::{Harness, TC_ACT_OK, TC_ACT_SHOT, hex, pin_thread_to_cpu},
    netns::{Netns, permanent_neighbour, tunnel_and_lan},
    packets::{Spec, TCP_ACK, TCP_FIN},
};

const TC_ACT_REDIRECT: u32 = 7;
const TICK: std::time::Duration = std::time::Duration::from_nanos(1 << 28);

const POLICY: &str = r#"
groups:
  peers: ["100.64.10.0/24"]
  lan: ["198.18.10.0/24", "198.19.0.0/24"]
policies:
  - name: peers-to-lan
    source_groups: [peers]
    destination_groups: [lan]
    action: accept
    protocol: all
"#;
/// The same without UDP: a UDP flow admitted by the first is revoked by this one.
const POLICY_TCP_ONLY: &str = r#"
groups:
  peers: ["100.64.10.0/24"]
  lan: ["198.18.10.0/24", "198.19.0.0/24"]
policies:
  - name: peers-to-lan-tcp
    source_groups: [peers]
    destination_groups: [lan]
    action: accept
    protocol: tcp
"#;

const PEER: &str = "100.64.10.1";
/// On the masqueraded network, and on one that is routed with the peer's source.
const HOST: &str = "198.18.10.10";
const PLAIN_HOST: &str = "198.19.0.10";
const NAT: &str = "198.18.10.1";
const PORTS: (u16, u16) = (40_000, 40_099);

/// The gateway's namespace (tunnel t0, LAN l0 on both LAN networks, both LAN hosts permanent
/// neighbours) and the namespace holding the veths' other ends.
struct Lab {
    gw: Netns,
    _other: Netns,
}

fn lab(tag: &str) -> Lab {
    gateway_testkit::netns::remove_stale(&format!("gwtf{tag}"));
    let (gw, other) = tunnel_and_lan(&format!("gwtf{tag}{}", std::process::id())).unwrap();
    gw.ip(&["addr", "add", "198.19.0.1/24", "dev", "l0"])
        .unwrap();
    permanent_neighbour(&gw, HOST, "02:00:00:00:0a:0a", "l0").unwrap();
    permanent_neighbour(&gw, PLAIN_HOST, "02:00:00:00:0a:0b", "l0").unwrap();
    Lab { gw, _other: other }
}

/// The data plane with the masquerade toward 198.18.10.0/24 on l0 and TC forwarding from t0;
/// returns it and t0's index. Must run inside the lab's namespace.
fn gateway() -> (Harness, u32) {
    let mut h = Harness::new(POLICY);
    h.dp.set_masquerade(&Masquerade {
        networks: vec!["198.18.10.0/24".parse().unwrap()],
        settings: NatSettings {
            port_min: PORTS.0,
            port_max: PORTS.1,
            ..Default::default()
        },
    })
    .unwrap();
    let t0 = h.forward_from_t0_masquerading_on_l0();
    (h, t0)
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Spec {
    Spec {
        l4_checksum: true,
        payload_len: 32,
        ..Spec::udp(src, dst, sport, dport)
    }
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Spec {
    Spec {
        l4_checksum: true,
        payload_len: 100,
        ..Spec::tcp(src, dst, sport, dport, flags)
    }
}

/// One hop fewer.
fn forwarded(s: Spec) -> Spec {
    Spec { ttl: 63, ..s }
}

/// Runs the tunnel's program on `packet` arriving on t0; returns the action and the bytes out.
fn send(h: &mut Harness, t0: u32, packet: &Spec) -> (u32, Vec<u8>) {
    h.tc_program_bytes_on(names::PROG_TC_TUNNEL_INGRESS_ETH, &packet.build(), t0)
}

/// The packet is forwarded, its IP packet as `want` (the neighbour redirect writes the link
/// header after the program).
#[track_caller]
fn forwards_as(h: &mut Harness, t0: u32, packet: &Spec, want: &Spec, what: &str) {
    let (action, out) = send(h, t0, packet);
    assert_eq!(
        action,
        TC_ACT_REDIRECT,
        "{what}: {}",
        h.hook_counters(HOOK_TUNNEL_INGRESS)
    );
    assert_eq!(hex(&out[14..]), hex(&want.build()[14..]), "{what}");
}

/// The slot of `packet`'s flow arriving on `t0`, on CPU 0 (where the tests run), if it holds
/// the flow. Read on its own: the whole array is a syscall per slot, longer than a tick under
/// software emulation (the 6.1 guest).
fn slot_of(h: &Harness, packet: &Spec, t0: u32) -> Option<TunnelFlow> {
    let frame = packet.build();
    let word = |at: usize| u32::from_ne_bytes(frame[at..at + 4].try_into().unwrap());
    let (src, dst, ports) = (word(26), word(30), word(34));
    let e = h.tunnel_flow(slot(src, dst, ports, t0));
    (e.generation != 0 && e.src == src && e.dst == dst && e.ports == ports).then_some(e)
}

fn hits(h: &Harness, packet: &Spec, t0: u32) -> u32 {
    slot_of(h, packet, t0).map_or(0, |e| e.hits)
}

fn now_tick() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    tick(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Counters the full path and the shortcut both move.
fn counts(h: &Harness) -> [u64; 5] {
    [
        h.count(HOOK_TUNNEL_INGRESS, ACCEPT_POLICY),
        h.count(HOOK_TUNNEL_INGRESS, ACCEPT_ESTABLISHED),
        h.count(HOOK_TUNNEL_INGRESS, TC_FORWARDED),
        h.count(HOOK_LAN, NAT_MASQUERADED),
        h.count(HOOK_TUNNEL_INGRESS, DROP_INTERNAL) + h.count(HOOK_LAN, DROP_NOT_LINEAR),
    ]
}

/// A masqueraded UDP flow, a UDP flow routed with the peer's source and a TCP connection picked
/// up mid-stream (kept untranslated, as it began before the masquerade could see it): five
/// packets each, every one forwarded with the bytes the full path gives; the first two take the
/// full path (the first creates the flow, the second fills the slot), the other three the
/// slot (on a retry, the slot may serve from the first), and the counters are the full path's
/// for all five.
#[test]
fn established_flows_leave_the_slot_with_the_full_paths_bytes_and_counters() {
    let lab = lab("b");
    lab.gw
        .run_scoped(|| {
            // One CPU: the slots are per CPU.
            pin_thread_to_cpu(0);
            let (mut h, t0) = gateway();
            let cases = [
                (
                    "masqueraded udp",
                    udp(PEER, HOST, PORTS.0 + 7, 53),
                    forwarded(udp(NAT, HOST, PORTS.0 + 7, 53)),
                    true,
                ),
                (
                    "udp with the peer's source",
                    udp(PEER, PLAIN_HOST, 40_123, 53),
                    forwarded(udp(PEER, PLAIN_HOST, 40_123, 53)),
                    false,
                ),
                (
                    "tcp picked up mid-stream",
                    tcp(PEER, HOST, 40_200, 443, TCP_ACK),
                    forwarded(tcp(PEER, HOST, 40_200, 443, TCP_ACK)),
                    false,
                ),
            ];
            for (what, packet, want, translated) in cases {
                // Retried where a tick boundary fell among the five packets (the slot then
                // stands for fewer of them).
                let mut done = false;
                for _ in 0..5 {
                    let before = counts(&h);
                    let (t_start, hits_before) = (now_tick(), hits(&h, &packet, t0));
                    // A slot filled in this tick already (by the last try) serves the first
                    // packet too.
                    let current = slot_of(&h, &packet, t0).is_some_and(|e| e.tick == t_start);
                    for n in 0..5 {
                        forwards_as(&mut h, t0, &packet, &want, &format!("{what}, packet {n}"));
                    }
                    if now_tick() != t_start {
                        continue;
                    }
                    let after = counts(&h);
                    let new_flow = (before[0] != after[0]) as u64;
                    assert_eq!(
                        hits(&h, &packet, t0) - hits_before,
                        match (new_flow, current) {
                            (1, _) => 3,
                            (_, false) => 4,
                            (_, true) => 5,
                        },
                        "{what}: packets the slot forwarded"
                    );
                    assert_eq!(after[0] - before[0], new_flow, "{what}: accepted by policy");
                    assert_eq!(after[1] - before[1], 5 - new_flow, "{what}: established");
                    assert_eq!(after[2] - before[2], 5, "{what}: forwarded in TC");
                    assert_eq!(
                        after[3] - before[3],
                        if translated { 5 } else { 0 },
                        "{what}: masqueraded"
                    );
                    assert_eq!(after[4], before[4], "{what}: dropped");
                    let e = slot_of(&h, &packet, t0).unwrap();
                    assert_eq!(e.translated != 0, translated, "{what}");
                    done = true;
                    break;
                }
                assert!(done, "{what}: every try crossed a tick");
            }
        })
        .unwrap();
}

/// The slot stands for the full path only within the tick in which the full path confirmed the
/// flow, and only under that policy generation: a packet of a later tick asks the translation
/// tables again (the translation is refreshed) and refills the slot; after a policy change that
/// revokes the flow, its next packet is dropped as revoked.
#[test]
fn the_slot_stands_only_within_its_tick_and_its_policy_generation() {
    let lab = lab("t");
    lab.gw
        .run_scoped(|| {
            // One CPU: the slots are per CPU.
            pin_thread_to_cpu(0);
            let (mut h, t0) = gateway();
            let sport = PORTS.0 + 9;
            let packet = udp(PEER, HOST, sport, 53);
            let want = forwarded(udp(NAT, HOST, sport, 53));
            let fwd_key = NatKey {
                local: addr16(PEER),
                remote: addr16(HOST),
                local_port: sport,
                remote_port: 53,
                proto: 17,
                family: gateway_common::conntrack::FAMILY_V4,
                _pad: [0; 2],
            };
            let set_refreshed =
                |h: &mut Harness, ns: u64| h.set_nat_forward_last_seen(&fwd_key, ns);
            let refreshed = |h: &mut Harness| -> u64 { h.nat_forward_last_seen(&fwd_key) };
            forwards_as(&mut h, t0, &packet, &want, "first packet");
            // Within one tick: a packet fills the slot, the next is the slot's and leaves the
            // translation's timestamp alone. (Retried when a tick boundary fell between them.)
            let mut within_a_tick = false;
            for _ in 0..20 {
                let t = now_tick();
                forwards_as(&mut h, t0, &packet, &want, "a packet that fills the slot");
                set_refreshed(&mut h, 1);
                let before = hits(&h, &packet, t0);
                forwards_as(&mut h, t0, &packet, &want, "a packet from the slot");
                if now_tick() == t {
                    assert_eq!(
                        hits(&h, &packet, t0),
                        before + 1,
                        "not forwarded from the slot"
                    );
                    assert_eq!(refreshed(&mut h), 1, "the slot's packet asked the tables");
                    within_a_tick = true;
                    break;
                }
            }
            assert!(within_a_tick, "no two packets within a tick");
            // Two ticks later: the full path, which refreshes the translation.
            std::thread::sleep(TICK * 2);
            let before = hits(&h, &packet, t0);
            forwards_as(
                &mut h,
                t0,
                &packet,
                &want,
                "the first packet of a later tick",
            );
            assert_eq!(
                hits(&h, &packet, t0),
                before,
                "a later tick's first packet took the slot"
            );
            assert!(refreshed(&mut h) > 1, "the tables were not asked");
            // A policy that no longer admits a flow whose slot was filled in this tick: the
            // flow's next packet is the full path's, and dropped as revoked. (A flow of its own
            // per try: a revoked flow stays revoked. Retried when the apply crossed a tick.)
            let mut revoked = false;
            for attempt in 0..10u16 {
                h.apply(POLICY);
                let sport = PORTS.0 + 20 + attempt;
                let packet = udp(PEER, HOST, sport, 53);
                let want = forwarded(udp(NAT, HOST, sport, 53));
                let t = now_tick();
                forwards_as(&mut h, t0, &packet, &want, "a new flow");
                forwards_as(&mut h, t0, &packet, &want, "a packet that fills the slot");
                h.apply(POLICY_TCP_ONLY);
                let before = (
                    hits(&h, &packet, t0),
                    h.count(HOOK_TUNNEL_INGRESS, DROP_REVOKED),
                );
                let (action, _) = send(&mut h, t0, &packet);
                if now_tick() != t {
                    continue;
                }
                assert!(
                    slot_of(&h, &packet, t0).is_some(),
                    "the slot was not filled"
                );
                assert_eq!(
                    action,
                    TC_ACT_SHOT,
                    "{}",
                    h.hook_counters(HOOK_TUNNEL_INGRESS)
                );
                assert_eq!(hits(&h, &packet, t0), before.0);
                assert_eq!(h.count(HOOK_TUNNEL_INGRESS, DROP_REVOKED), before.1 + 1);
                revoked = true;
                break;
            }
            assert!(revoked, "every try crossed a tick");
        })
        .unwrap();
}

/// A FIN (which moves the connection's state) and a packet whose TTL the forwarding may not
/// lower (the kernel answers it) take the full path, whatever the slot holds. (A closing
/// connection's later packets within the tick may still take the slot: the full path would
/// pass them the same way, and only their entry's clock would move.)
#[test]
fn packets_that_close_connections_or_leave_for_the_kernel_take_the_full_path() {
    let lab = lab("f");
    lab.gw
        .run_scoped(|| {
            // One CPU: the slots are per CPU.
            pin_thread_to_cpu(0);
            let (mut h, t0) = gateway();
            let sport = 40_300;
            let ack = tcp(PEER, PLAIN_HOST, sport, 443, TCP_ACK);
            let want = forwarded(ack.clone());
            let mut served = false;
            for _ in 0..5 {
                let t = now_tick();
                for n in 0..3 {
                    forwards_as(&mut h, t0, &ack, &want, &format!("ack {n}"));
                }
                if now_tick() == t && hits(&h, &ack, t0) > 0 {
                    served = true;
                    // TTL 1: handed to the kernel (which sends the time-exceeded), unchanged.
                    let before = hits(&h, &ack, t0);
                    let expiring = Spec {
                        ttl: 1,
                        ..ack.clone()
                    };
                    let (action, out) = send(&mut h, t0, &expiring);
                    assert_eq!(action, TC_ACT_OK);
                    assert_eq!(hex(&out), hex(&expiring.build()));
                    // A FIN: the full path moves the connection to closing.
                    let fin = tcp(PEER, PLAIN_HOST, sport, 443, TCP_ACK | TCP_FIN);
                    forwards_as(&mut h, t0, &fin, &forwarded(fin.clone()), "fin");
                    assert_eq!(hits(&h, &ack, t0), before, "taken by the slot");
                    break;
                }
            }
            assert!(served, "the slot never served the connection");
        })
        .unwrap();
}

fn addr16(a: &str) -> [u8; 16] {
    let v4: std::net::Ipv4Addr = a.parse().unwrap();
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&v4.octets());
    out
}
