//! Masquerade (source NAT toward the LAN) and its reverse, by BPF_PROG_TEST_RUN: exact bytes out,
//! compared with the packet the test's builder makes with the translated addresses and ports and
//! a checksum it computes in full (never the kernel's incremental update). The LAN interface is
//! the test-run device (lo, ifindex 1), given a masquerade address without attaching anything.

use gateway_common::{
    maps as names,
    nat::{NatInterface, NatSettings},
    stats::{HOOK_LAN, HOOK_TUNNEL_INGRESS, reason::*},
};
use gateway_dataplane::Masquerade;
use gateway_testkit::{
    harness::{Harness, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    packets::{L4, Spec, TCP_ACK, TCP_SYN},
};

const POLICY: &str = r#"
groups:
  peers: ["100.64.10.0/24", "100.64.20.0/24", "fd00:10::/64"]
  lan: ["198.18.10.0/24", "198.19.0.0/24", "fd00:18::/64"]
policies:
  - name: peers-to-lan
    source_groups: [peers]
    destination_groups: [lan]
    action: accept
    protocol: all
"#;

const P1: &str = "100.64.10.1";
const P2: &str = "100.64.20.1";
const HOST: &str = "198.18.10.10";
const NAT: &str = "198.18.10.1";
const PORTS: (u16, u16) = (40_000, 40_099);

fn harness() -> Harness {
    // The IPv6 overlay is fd00:10::/64 here (the LAN's IPv6 network is outside it).
    let opts = gateway_dataplane::LoadOptions {
        overlay_v6: Some("fd00:10::/64".parse().unwrap()),
        ..Default::default()
    };
    let mut h = Harness::with_options(POLICY, opts);
    let settings = NatSettings {
        port_min: PORTS.0,
        port_max: PORTS.1,
        ..Default::default()
    };
    h.dp.set_masquerade(&Masquerade {
        networks: vec![
            "198.18.10.0/24".parse().unwrap(),
            "fd00:18::/64".parse().unwrap(),
        ],
        settings,
    })
    .unwrap();
    let v6: std::net::Ipv6Addr = "fd00:18::1".parse().unwrap();
    h.dp.set_nat_interface(
        1,
        NatInterface {
            v4: [198, 18, 10, 1],
            v6: v6.octets(),
            has_v4: 1,
            has_v6: 1,
            _pad: [0; 2],
        },
    )
    .unwrap();
    h
}

/// A packet with full checksums.
fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Spec {
    Spec {
        l4_checksum: true,
        payload_len: 20,
        ..Spec::tcp(src, dst, sport, dport, flags)
    }
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Spec {
    Spec {
        l4_checksum: true,
        payload_len: 32,
        ..Spec::udp(src, dst, sport, dport)
    }
}

/// The peer's packet enters through the tunnel (policy, conntrack) and leaves the LAN
/// interface (masquerade); returns the bytes that left.
#[track_caller]
fn out_through(h: &mut Harness, packet: &Spec) -> Vec<u8> {
    frame_out_through(h, &packet.build())
}

/// As [`out_through`], for a frame built otherwise (an ICMP error).
#[track_caller]
fn frame_out_through(h: &mut Harness, frame: &[u8]) -> Vec<u8> {
    let (action, _) = h.tc_bytes(true, frame);
    assert_eq!(
        action,
        TC_ACT_OK,
        "tunnel ingress dropped it: {}",
        h.hook_counters(HOOK_TUNNEL_INGRESS)
    );
    let before = h.count(HOOK_LAN, NAT_MASQUERADED);
    let (action, out) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, frame);
    assert_eq!(
        action,
        TC_ACT_OK,
        "LAN egress dropped it: {}",
        h.hook_counters(HOOK_LAN)
    );
    assert_eq!(
        h.count(HOOK_LAN, NAT_MASQUERADED) - before,
        1,
        "not counted as masqueraded"
    );
    out
}

/// A packet that already carries the masquerade address (translated by the tunnel's TC
/// forwarding on its way out) leaves the LAN interface as it is, not counted again.
#[track_caller]
fn leaves_as_translated(h: &mut Harness, packet: &Spec) {
    let frame = packet.build();
    let before = h.count(HOOK_LAN, NAT_MASQUERADED);
    let (action, out) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, &frame);
    assert_eq!(action, TC_ACT_OK, "{}", h.hook_counters(HOOK_LAN));
    same(&out, packet, "translated already");
    assert_eq!(h.count(HOOK_LAN, NAT_MASQUERADED), before);
}

fn ports_of(frame: &[u8], v6: bool) -> (u16, u16) {
    let l4 = 14 + if v6 { 40 } else { 20 };
    (
        u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
        u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
    )
}

#[track_caller]
fn same(got: &[u8], want: &Spec, what: &str) {
    assert_eq!(
        gateway_testkit::harness::hex(got),
        gateway_testkit::harness::hex(&want.build()),
        "{what}"
    );
}

#[test]
fn tcp_leaves_with_the_lan_address_and_its_replies_come_back_translated() {
    let mut h = harness();
    // The original port is in the range and free: kept.
    let out = out_through(&mut h, &tcp(P1, HOST, 40_010, 443, TCP_SYN));
    same(&out, &tcp(NAT, HOST, 40_010, 443, TCP_SYN), "SYN out");
    // The LAN host's reply, translated back before the policy: the flow is established.
    let before = h.count(HOOK_LAN, ACCEPT_ESTABLISHED);
    let (action, back) = h.xdp_bytes(&tcp(HOST, NAT, 443, 40_010, TCP_SYN | TCP_ACK).build());
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    same(
        &back,
        &tcp(HOST, P1, 443, 40_010, TCP_SYN | TCP_ACK),
        "SYN-ACK back",
    );
    assert_eq!(h.count(HOOK_LAN, ACCEPT_ESTABLISHED) - before, 1);
    assert_eq!(h.count(HOOK_LAN, NAT_UNMASQUERADED), 1);
    // Later packets keep the translation.
    let out = out_through(&mut h, &tcp(P1, HOST, 40_010, 443, TCP_ACK));
    same(&out, &tcp(NAT, HOST, 40_010, 443, TCP_ACK), "ACK out");
    leaves_as_translated(&mut h, &tcp(NAT, HOST, 40_010, 443, TCP_ACK));
    assert_eq!(h.dp.nat_entries().unwrap(), 1);
}

#[test]
fn two_peers_with_the_same_source_port_get_two_translations() {
    let mut h = harness();
    let first = out_through(&mut h, &tcp(P1, HOST, 40_020, 443, TCP_SYN));
    same(
        &first,
        &tcp(NAT, HOST, 40_020, 443, TCP_SYN),
        "first peer keeps its port",
    );
    let second = out_through(&mut h, &tcp(P2, HOST, 40_020, 443, TCP_SYN));
    let (port, _) = ports_of(&second, false);
    assert!(
        port != 40_020 && (PORTS.0..=PORTS.1).contains(&port),
        "second peer got port {port}"
    );
    same(
        &second,
        &tcp(NAT, HOST, port, 443, TCP_SYN),
        "second peer's SYN",
    );
    // Each reply finds its own peer.
    let (_, back) = h.xdp_bytes(&tcp(HOST, NAT, 443, 40_020, TCP_SYN | TCP_ACK).build());
    same(
        &back,
        &tcp(HOST, P1, 443, 40_020, TCP_SYN | TCP_ACK),
        "reply to the first",
    );
    let (_, back) = h.xdp_bytes(&tcp(HOST, NAT, 443, port, TCP_SYN | TCP_ACK).build());
    same(
        &back,
        &tcp(HOST, P2, 443, 40_020, TCP_SYN | TCP_ACK),
        "reply to the second",
    );
    // A port outside the range is replaced by one inside it.
    let out = out_through(&mut h, &tcp(P1, HOST, 51_000, 443, TCP_SYN));
    let (port, _) = ports_of(&out, false);
    assert!((PORTS.0..=PORTS.1).contains(&port), "port {port}");
}

#[test]
fn udp_checksums_are_updated_and_a_zero_checksum_stays_zero() {
    let mut h = harness();
    let out = out_through(&mut h, &udp(P1, HOST, 40_030, 53));
    same(&out, &udp(NAT, HOST, 40_030, 53), "UDP out");
    let (_, back) = h.xdp_bytes(&udp(HOST, NAT, 53, 40_030).build());
    same(&back, &udp(HOST, P1, 53, 40_030), "UDP back");
    // No checksum (IPv4 allows it): none after translation either.
    let bare = |s: &str, d: &str, sp, dp| Spec {
        payload_len: 32,
        ..Spec::udp(s, d, sp, dp)
    };
    let out = out_through(&mut h, &bare(P1, HOST, 40_031, 53));
    same(
        &out,
        &bare(NAT, HOST, 40_031, 53),
        "UDP without checksum out",
    );
    let (_, back) = h.xdp_bytes(&bare(HOST, NAT, 53, 40_031).build());
    same(
        &back,
        &bare(HOST, P1, 53, 40_031),
        "UDP without checksum back",
    );
}

#[test]
fn icmp_echo_is_translated_by_its_identifier() {
    echo_is_translated_by_its_identifier(P1, HOST, NAT);
}

#[test]
fn icmpv6_echo_is_translated_by_its_identifier() {
    echo_is_translated_by_its_identifier(P1_V6, HOST_V6, NAT_V6);
}

/// The peer `peer` pings `host` through the masquerade (address `nat`) with an identifier
/// outside the range: it changes, into the range, and the reply finds the peer's identifier.
fn echo_is_translated_by_its_identifier(peer: &str, host: &str, nat: &str) {
    let mut h = harness();
    let v6 = peer.contains(':');
    let echo = |src: &str, dst: &str, id: u16, reply: bool| {
        let l4 = if reply {
            L4::echo_reply(v6, id)
        } else {
            L4::echo_request(v6, id)
        };
        if v6 {
            return icmpv6(src, dst, l4);
        }
        let mut frame = Spec::new(src, dst, l4).build();
        // ICMP's checksum covers the ICMP message only.
        let sum = gateway_testkit::packets::checksum(&frame[34..]);
        frame[36..38].copy_from_slice(&sum.to_be_bytes());
        frame
    };
    let out = frame_out_through(&mut h, &echo(peer, host, 0x1234, false));
    let at = if v6 { 58 } else { 38 };
    let id = u16::from_be_bytes([out[at], out[at + 1]]);
    assert!((PORTS.0..=PORTS.1).contains(&id), "identifier {id}");
    assert_eq!(
        gateway_testkit::harness::hex(&out),
        gateway_testkit::harness::hex(&echo(nat, host, id, false)),
        "request out"
    );
    let before = h.count(HOOK_LAN, ACCEPT_ESTABLISHED);
    let (action, back) = h.xdp_bytes(&echo(host, nat, id, true));
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    assert_eq!(
        gateway_testkit::harness::hex(&back),
        gateway_testkit::harness::hex(&echo(host, peer, 0x1234, true)),
        "reply back"
    );
    assert_eq!(h.count(HOOK_LAN, ACCEPT_ESTABLISHED) - before, 1);
}

#[test]
fn ipv6_is_masqueraded_too() {
    let mut h = harness();
    let out = out_through(
        &mut h,
        &tcp("fd00:10::1", "fd00:18::10", 40_040, 443, TCP_SYN),
    );
    same(
        &out,
        &tcp("fd00:18::1", "fd00:18::10", 40_040, 443, TCP_SYN),
        "IPv6 SYN out",
    );
    let (action, back) =
        h.xdp_bytes(&tcp("fd00:18::10", "fd00:18::1", 443, 40_040, TCP_SYN | TCP_ACK).build());
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    same(
        &back,
        &tcp("fd00:18::10", "fd00:10::1", 443, 40_040, TCP_SYN | TCP_ACK),
        "IPv6 SYN-ACK back",
    );
    leaves_as_translated(
        &mut h,
        &tcp("fd00:18::1", "fd00:18::10", 40_040, 443, TCP_ACK),
    );
}

const P1_V6: &str = "fd00:10::1";
const HOST_V6: &str = "fd00:18::10";
const NAT_V6: &str = "fd00:18::1";

/// An ICMPv6 frame with its checksum computed in full (ICMPv6's covers a pseudo-header of the
/// addresses, the length and next header 58, then the whole message).
fn icmpv6(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    let mut frame = Spec::new(src, dst, l4).build();
    let message = frame[54..].to_vec();
    let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        (src.parse().unwrap(), dst.parse().unwrap());
    let mut sum = [&s.octets()[..], &d.octets()[..]].concat();
    sum.extend((message.len() as u32).to_be_bytes());
    sum.extend([0, 0, 0, 58]);
    sum.extend(&message);
    let check = gateway_testkit::packets::checksum(&sum);
    frame[56..58].copy_from_slice(&check.to_be_bytes());
    frame
}

/// An ICMPv6 destination unreachable (type 1, code 4: port unreachable) quoting `quoted` from
/// its IPv6 header on, as much as `quote` bytes of it.
fn unreachable_v6(src: &str, dst: &str, quoted: &Spec, quote: usize) -> Vec<u8> {
    let q = quoted.build();
    let body = q[14..(14 + quote).min(q.len())].to_vec();
    icmpv6(
        src,
        dst,
        L4::Icmp {
            kind: 1,
            code: 4,
            rest: [0; 4],
            body,
        },
    )
}

#[test]
fn icmpv6_errors_about_translated_flows_are_translated_inside_and_out() {
    let mut h = harness();
    // A UDP flow whose port had to change (outside the range): the error must carry it back,
    // with the quoted datagram's checksum (mandatory in IPv6) following the translation.
    let out = out_through(&mut h, &udp(P1_V6, HOST_V6, 51_000, 53));
    let (port, _) = ports_of(&out, true);
    assert_ne!(port, 51_000);
    // The whole datagram quoted (40 + 8 + 32 bytes), as an error that fits in 1280 bytes does.
    let error = unreachable_v6(HOST_V6, NAT_V6, &udp(NAT_V6, HOST_V6, port, 53), 80);
    let before = h.count(HOOK_LAN, ACCEPT_RELATED);
    let (action, back) = h.xdp_bytes(&error);
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    let want = unreachable_v6(HOST_V6, P1_V6, &udp(P1_V6, HOST_V6, 51_000, 53), 80);
    assert_eq!(
        gateway_testkit::harness::hex(&back),
        gateway_testkit::harness::hex(&want),
        "error in"
    );
    assert_eq!(h.count(HOOK_LAN, ACCEPT_RELATED) - before, 1);
    // The peer's error about the LAN host's reply leaves as the masquerade's, quoting the reply
    // as the LAN host sent it.
    let (action, _) = h.xdp_bytes(&udp(HOST_V6, NAT_V6, 53, port).build());
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    let error = unreachable_v6(P1_V6, HOST_V6, &udp(HOST_V6, P1_V6, 53, 51_000), 80);
    let out = frame_out_through(&mut h, &error);
    let want = unreachable_v6(NAT_V6, HOST_V6, &udp(HOST_V6, NAT_V6, 53, port), 80);
    assert_eq!(
        gateway_testkit::harness::hex(&out),
        gateway_testkit::harness::hex(&want),
        "error out"
    );
    // An error about something no translation sent is the host's own business.
    let own = unreachable_v6(HOST_V6, NAT_V6, &udp(NAT_V6, HOST_V6, 33_000, 53), 80);
    let (action, back) = h.xdp_bytes(&own);
    assert_eq!(action, XDP_PASS);
    assert_eq!(back, own);
}

#[test]
fn a_local_senders_partial_checksum_stays_a_correct_partial_checksum() {
    let mut h = harness();
    out_through(&mut h, &tcp(P1, HOST, 40_050, 443, TCP_SYN));
    // The LAN host's kernel left only the pseudo-header sum in the field (CHECKSUM_PARTIAL).
    let partial = |src: &str, dst: &str| {
        let mut frame = Spec {
            payload_len: 20,
            ..Spec::tcp(src, dst, 443, 40_050, TCP_SYN | TCP_ACK)
        }
        .build();
        let mut pseudo = frame[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 40]);
        let sum = !gateway_testkit::packets::checksum(&pseudo);
        frame[50..52].copy_from_slice(&sum.to_be_bytes());
        frame
    };
    let (action, back) = h.xdp_bytes(&partial(HOST, NAT));
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    assert_eq!(
        gateway_testkit::harness::hex(&back),
        gateway_testkit::harness::hex(&partial(HOST, P1))
    );
}

#[test]
fn fragments_follow_their_first_fragment_both_ways() {
    fragments_follow_their_first_fragment(P1, HOST, NAT);
}

#[test]
fn ipv6_fragments_follow_their_first_fragment_both_ways() {
    fragments_follow_their_first_fragment(P1_V6, HOST_V6, NAT_V6);
}

/// The peer `peer` talks to `host` in fragmented UDP through the masquerade (address `nat`).
fn fragments_follow_their_first_fragment(peer: &str, host: &str, nat: &str) {
    let mut h = harness();
    let first = |s: &str, d: &str, sport, dport, id| Spec {
        frag: Some((0, true)),
        frag_id: id,
        l4_checksum: true,
        payload_len: 64,
        ..Spec::udp(s, d, sport, dport)
    };
    let later = |s: &str, d: &str, id| Spec {
        frag: Some((9, false)),
        frag_id: id,
        raw_l4: Some(vec![0xcd; 40]),
        ..Spec::udp(s, d, 1, 1)
    };
    // Out: the first fragment is translated with its ports, later ones by address alone.
    let out = out_through(&mut h, &first(peer, host, 40_090, 53, 0x4242));
    same(
        &out,
        &first(nat, host, 40_090, 53, 0x4242),
        "first fragment out",
    );
    let out = out_through(&mut h, &later(peer, host, 0x4242));
    same(&out, &later(nat, host, 0x4242), "later fragment out");
    // Back: the reply's first fragment names the peer, its later fragments follow it, and the
    // policy lets them through as fragments of an accepted datagram.
    let (action, back) = h.xdp_bytes(&first(host, nat, 53, 40_090, 0x7777).build());
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    same(
        &back,
        &first(host, peer, 53, 40_090, 0x7777),
        "first fragment back",
    );
    let before = h.count(HOOK_LAN, ACCEPT_FRAGMENT);
    let (action, back) = h.xdp_bytes(&later(host, nat, 0x7777).build());
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    same(&back, &later(host, peer, 0x7777), "later fragment back");
    assert_eq!(h.count(HOOK_LAN, ACCEPT_FRAGMENT) - before, 1);
    // A later fragment of a datagram no translation saw is the host's own business.
    let own = later(host, nat, 0x9999);
    let (action, back) = h.xdp_bytes(&own.build());
    assert_eq!(action, XDP_PASS);
    same(&back, &own, "the host's own fragment");
}

#[test]
fn what_is_not_masqueraded_is_left_alone() {
    let mut h = harness();
    // A TCP connection under way before the masquerade covered it keeps its addresses: only a
    // SYN starts a translation.
    let midstream = tcp(P1, HOST, 40_061, 443, TCP_ACK);
    let (action, _) = h.tc_bytes(true, &midstream.build());
    assert_eq!(action, TC_ACT_OK);
    let (action, out) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, &midstream.build());
    assert_eq!(action, TC_ACT_OK);
    same(&out, &midstream, "a connection already under way");
    // A destination outside the masqueraded networks keeps the peer's source.
    let other = tcp(P1, "198.19.0.5", 40_060, 443, TCP_SYN);
    let (action, _) = h.tc_bytes(true, &other.build());
    assert_eq!(action, TC_ACT_OK);
    let (action, out) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, &other.build());
    assert_eq!(action, TC_ACT_OK);
    same(&out, &other, "unmasqueraded network");
    // The host's own traffic (not from the overlay) is not touched.
    let own = tcp("198.18.10.1", HOST, 33_000, 22, TCP_SYN);
    let (_, out) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, &own.build());
    same(&out, &own, "the host's own connection");
    assert_eq!(h.count(HOOK_LAN, NAT_MASQUERADED), 0);
}

#[test]
fn unsolicited_lan_packets_to_nat_ports_are_dropped() {
    let mut h = harness();
    // TCP and UDP to a port of the range that no translation holds.
    h.expect(
        HOOK_LAN,
        &tcp(HOST, NAT, 443, 40_070, TCP_SYN).build(),
        DROP_NAT_NO_MAPPING,
    );
    h.expect(
        HOOK_LAN,
        &udp(HOST, NAT, 53, 40_071).build(),
        DROP_NAT_NO_MAPPING,
    );
    // A translation answers only its own LAN host and port.
    out_through(&mut h, &tcp(P1, HOST, 40_072, 443, TCP_SYN));
    h.expect(
        HOOK_LAN,
        &tcp("198.18.10.11", NAT, 443, 40_072, TCP_SYN | TCP_ACK).build(),
        DROP_NAT_NO_MAPPING,
    );
    h.expect(
        HOOK_LAN,
        &tcp(HOST, NAT, 8443, 40_072, TCP_SYN | TCP_ACK).build(),
        DROP_NAT_NO_MAPPING,
    );
    // Outside the range: the host's own business (not toward the overlay).
    h.expect(
        HOOK_LAN,
        &tcp(HOST, NAT, 443, 22, TCP_SYN).build(),
        PASS_NOT_OVERLAY,
    );
    assert_eq!(
        h.xdp(&tcp(HOST, NAT, 443, 40_073, TCP_SYN).build()),
        XDP_DROP
    );
}

/// A gateway masquerading 198.18.10.0/24 (IPv4 only) through a range of the one `port`, with
/// `settings`' timeouts.
fn one_port(port: u16, settings: NatSettings) -> Harness {
    masquerading_v4(
        Harness::new(POLICY),
        NatSettings {
            port_min: port,
            port_max: port,
            ..settings
        },
    )
}

/// A harness loaded with `opts`, masquerading 198.18.10.0/24 with the ports `PORTS`.
fn masquerading_ports(opts: gateway_dataplane::LoadOptions) -> Harness {
    masquerading_v4(
        Harness::with_options(POLICY, opts),
        NatSettings {
            port_min: PORTS.0,
            port_max: PORTS.1,
            ..Default::default()
        },
    )
}

/// `h` masquerading 198.18.10.0/24 as 198.18.10.1 on the test-run device, with `settings`.
fn masquerading_v4(mut h: Harness, settings: NatSettings) -> Harness {
    h.dp.set_masquerade(&Masquerade {
        networks: vec!["198.18.10.0/24".parse().unwrap()],
        settings,
    })
    .unwrap();
    h.dp.set_nat_interface(
        1,
        NatInterface {
            v4: [198, 18, 10, 1],
            has_v4: 1,
            ..Default::default()
        },
    )
    .unwrap();
    h
}

#[test]
fn exhaustion_is_a_counted_drop_never_a_shared_port() {
    // A one-port range: the first flow takes it, the second has nowhere to go.
    let mut h = one_port(40_080, NatSettings::default());
    out_through(&mut h, &tcp(P1, HOST, 40_080, 443, TCP_SYN));
    let second = tcp(P2, HOST, 40_080, 443, TCP_SYN).build();
    let (action, _) = h.tc_bytes(true, &second);
    assert_eq!(action, TC_ACT_OK);
    let (action, _) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, &second);
    assert_eq!(action, TC_ACT_SHOT);
    assert_eq!(h.count(HOOK_LAN, DROP_NAT_EXHAUSTED), 1);
    assert_eq!(h.dp.nat_entries().unwrap(), 1);
}

#[test]
fn a_translation_lives_while_either_side_speaks_and_gives_its_port_back_when_idle() {
    // A one-port range and a one-second UDP timeout.
    let mut h = one_port(
        40_090,
        NatSettings {
            udp: 1,
            ..Default::default()
        },
    );
    let pause = || std::thread::sleep(std::time::Duration::from_millis(450));
    let first = out_through(&mut h, &udp(P1, HOST, 40_090, 53));
    same(
        &first,
        &udp(NAT, HOST, 40_090, 53),
        "the first flow takes the port",
    );
    let second = udp(P2, HOST, 40_090, 53).build();
    let refused = |h: &mut Harness, n: u64, when: &str| {
        let (action, _) = h.tc_bytes(true, &second);
        assert_eq!(action, TC_ACT_OK);
        let (action, _) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, &second);
        assert_eq!(action, TC_ACT_SHOT, "{when}: {}", h.hook_counters(HOOK_LAN));
        assert_eq!(h.count(HOOK_LAN, DROP_NAT_EXHAUSTED), n, "{when}");
    };
    // The peer keeps sending and the LAN host never answers: past the timeout, the port is
    // still the first flow's.
    for _ in 0..3 {
        pause();
        let out = out_through(&mut h, &udp(P1, HOST, 40_090, 53));
        same(&out, &udp(NAT, HOST, 40_090, 53), "the peer keeps its port");
    }
    refused(&mut h, 1, "while the peer speaks");
    // An error from the LAN host about the peer's datagrams still finds the peer.
    let error = unreachable(HOST, NAT, &udp(NAT, HOST, 40_090, 53));
    let (action, back) = h.xdp_bytes(&error);
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    assert_eq!(
        gateway_testkit::harness::hex(&back),
        gateway_testkit::harness::hex(&unreachable(HOST, P1, &udp(P1, HOST, 40_090, 53))),
        "the LAN host's error reaches the peer"
    );
    // The LAN host does the talking and the peer is silent past the timeout: the same.
    for _ in 0..3 {
        pause();
        let (_, back) = h.xdp_bytes(&udp(HOST, NAT, 53, 40_090).build());
        same(
            &back,
            &udp(HOST, P1, 53, 40_090),
            "the LAN host's packets reach the peer",
        );
    }
    refused(&mut h, 2, "while the LAN host speaks");
    // An error from the peer about the LAN host's datagrams still leaves as the masquerade's.
    let out = frame_out_through(&mut h, &unreachable(P1, HOST, &udp(HOST, P1, 53, 40_090)));
    assert_eq!(
        gateway_testkit::harness::hex(&out),
        gateway_testkit::harness::hex(&unreachable(NAT, HOST, &udp(HOST, NAT, 53, 40_090))),
        "the peer's error leaves translated"
    );
    // The controller's sweep agrees: a translation whose LAN host still speaks is in use.
    let swept = h.dp.sweep_conntrack(None).unwrap();
    assert_eq!(swept.nat.idle, 0, "{swept:?}");
    assert_eq!(h.dp.nat_entries().unwrap(), 1);
    let out = out_through(&mut h, &udp(P1, HOST, 40_090, 53));
    same(
        &out,
        &udp(NAT, HOST, 40_090, 53),
        "the peer speaks again on its translation",
    );
    // Both silent past the timeout: the port is free. The second flow gets it, and the LAN
    // host's packets to it go to the second peer.
    std::thread::sleep(std::time::Duration::from_millis(1_300));
    let again = out_through(&mut h, &udp(P2, HOST, 40_090, 53));
    same(
        &again,
        &udp(NAT, HOST, 40_090, 53),
        "the second flow takes the freed port",
    );
    let (_, back) = h.xdp_bytes(&udp(HOST, NAT, 53, 40_090).build());
    same(
        &back,
        &udp(HOST, P2, 53, 40_090),
        "the reply goes to the port's new holder",
    );
}

// ---------------------------------------------------------------------------------------------
// Real traffic in namespaces, default offloads: peers on the tunnel side, lan1 behind lan0.

mod lab {
    use std::{
        io::{Read as _, Write as _},
        net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
        os::fd::FromRawFd as _,
        time::Duration,
    };

    use gateway::status::Report;
    use gateway_testkit::{
        harness::gateway_binary,
        iperf::{self, Run, Transfer},
        netns::Netns,
        process::{GatewayProcess, LAB_METRICS_ADDR},
        topology::{GATEWAY_LAN_ADDR, Lab},
        traffic,
    };

    /// Every overlay peer may reach lan1, on anything.
    const OPEN: &str = "groups:\n  peers: [\"100.64.0.0/10\"]\n  lan: [\"198.18.10.0/24\"]\npolicies:\n  - name: peers-to-lan\n    source_groups: [peers]\n    destination_groups: [lan]\n    action: accept\n    protocol: all\n";
    /// The same without cp1.
    const WITHOUT_CP1: &str = "groups:\n  peers: [\"100.64.20.0/24\"]\n  lan: [\"198.18.10.0/24\"]\npolicies:\n  - name: peers-to-lan\n    source_groups: [peers]\n    destination_groups: [lan]\n    action: accept\n    protocol: all\n";
    const MASQUERADE: &str = "masquerade:\n  networks: [198.18.10.0/24]\n  ports: 25000-25999\n";

    fn start(lab: &Lab, extra: &str) -> GatewayProcess {
        start_attached(lab, extra, "xdp-native")
    }

    /// As [`start`], with the LAN interface attached as `lan_attach`.
    fn start_attached(lab: &Lab, extra: &str, lan_attach: &str) -> GatewayProcess {
        start_with_policy(lab, OPEN, extra, lan_attach)
    }

    /// As [`start_attached`], with `policy` in place of [`OPEN`].
    fn start_with_policy(lab: &Lab, policy: &str, extra: &str, lan_attach: &str) -> GatewayProcess {
        let config = lab
            .write_config_extra(policy, LAB_METRICS_ADDR, extra)
            .expect("config");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("attach: xdp-native", &format!("attach: {lan_attach}")),
        )
        .unwrap();
        start_config(lab, &config)
    }

    /// The lab's gateway with the config at `config`.
    fn start_config(lab: &Lab, config: &std::path::Path) -> GatewayProcess {
        GatewayProcess::start(
            &gateway_binary(),
            &lab.gw,
            config,
            &lab.dir.join("gateway.log"),
        )
        .expect("gateway starts")
    }

    /// A TCP connection from `ns`, from source port `sport`, to `to`.
    fn connect_from(ns: &Netns, sport: u16, to: SocketAddrV4) -> std::io::Result<TcpStream> {
        ns.run_scoped(move || -> std::io::Result<TcpStream> {
            // SAFETY: a fresh socket, bound and connected with properly sized sockaddrs; owned
            // by the TcpStream from here on.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let stream = TcpStream::from_raw_fd(fd);
                let one: libc::c_int = 1;
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as u32,
                );
                let sa = |a: SocketAddrV4| libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                let local = sa(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, sport));
                if libc::bind(
                    fd,
                    (&local as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                let remote = sa(to);
                if libc::connect(
                    fd,
                    (&remote as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(stream)
            }
        })
        .expect("netns")
    }

    /// No packet dropped as truncated, with headers that could not be read, for want of a
    /// translation port, or for an internal failure.
    #[track_caller]
    fn nothing_lost_on_the_way(st: &Report) {
        for r in [
            "truncated",
            "headers_not_linear",
            "nat_exhausted",
            "internal",
        ] {
            assert_eq!(st.packets_for(r), 0, "{r}: {:?}", st.counters);
        }
    }

    /// One iperf3 transfer between cp1 and lan1 at default offloads, and what it must carry.
    /// What the receiving socket itself drops (its buffer full while the two cores are busy) is
    /// the receiver's, not the path's: counted apart.
    fn bulk(
        cp1: &Netns,
        lan1: &Netns,
        lan1_addr: IpAddr,
        transfer: Transfer,
        reverse: bool,
        port: u16,
    ) {
        let receiver = if reverse { cp1 } else { lan1 };
        let socket_drops_before = gateway_testkit::traffic::udp_socket_drops(receiver);
        let o = iperf::run(
            cp1,
            lan1,
            lan1_addr,
            Run {
                transfer,
                reverse,
                seconds: 2,
                port,
            },
        )
        .expect("iperf3");
        let socket_drops =
            gateway_testkit::traffic::udp_socket_drops(receiver) - socket_drops_before;
        match transfer {
            Transfer::Tcp => assert!(
                o.bytes_received >= 20_000_000,
                "{transfer:?} reverse {reverse}: {o:?}"
            ),
            Transfer::Udp { .. } => assert!(
                o.packets > 5_000
                    && o.lost_packets.saturating_sub(socket_drops) * 100 <= o.packets * 5,
                "{transfer:?} reverse {reverse}: {o:?}, {socket_drops} dropped by the receiving socket"
            ),
        }
    }

    /// TCP both ways, then 1400-byte UDP both ways (150 Mbit/s), between cp1 and lan1 at
    /// `lan1_addr`, on four ports from `first_port` on.
    fn bulk_both_ways(cp1: &Netns, lan1: &Netns, lan1_addr: IpAddr, first_port: u16) {
        let udp = Transfer::Udp {
            payload: 1400,
            mbit_per_s: 150,
        };
        for run in iperf::both_ways(udp, 2, first_port) {
            bulk(cp1, lan1, lan1_addr, run.transfer, run.reverse, run.port);
        }
    }

    /// Sends `msg` on `from` and reads it on `to` (with a timeout).
    fn relay(from: &mut TcpStream, to: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
        from.write_all(msg)?;
        to.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = vec![0u8; msg.len()];
        to.read_exact(&mut buf)?;
        assert_eq!(buf, msg);
        Ok(())
    }

    #[test]
    fn peers_reach_the_lan_as_the_gateway_and_their_flows_end_with_the_policy() {
        let lab = Lab::seed().expect("lab");
        let (cp1, orch1, lan1) = (lab.host("cp1"), lab.host("orch1"), lab.host("lan1"));
        let gw = start(&lab, MASQUERADE);
        let gw_lan: Ipv4Addr = GATEWAY_LAN_ADDR.parse().unwrap();
        // The host's own sockets keep off the masquerade ports.
        let reserved = String::from_utf8_lossy(
            &lab.gw
                .exec(&["sysctl", "-n", "net.ipv4.ip_local_reserved_ports"])
                .unwrap()
                .stdout,
        )
        .to_string();
        assert!(
            reserved.contains("25000-25999"),
            "reserved ports: {reserved:?}"
        );

        let listener = lan1
            .ns
            .run_scoped(|| TcpListener::bind("0.0.0.0:443"))
            .unwrap()
            .expect("listen on lan1");
        let server = SocketAddrV4::new(lan1.addr, 443);
        // Two peers, the same source port (inside the range): two translations.
        let mut c1 = connect_from(&cp1.ns, 25_100, server).expect("cp1 connects");
        let (mut s1, seen1) = listener.accept().unwrap();
        let mut c2 = connect_from(&orch1.ns, 25_100, server).expect("orch1 connects");
        let (mut s2, seen2) = listener.accept().unwrap();
        assert_eq!(
            seen1.ip(),
            IpAddr::V4(gw_lan),
            "lan1 sees the gateway's LAN address"
        );
        assert_eq!(seen2.ip(), IpAddr::V4(gw_lan));
        assert_eq!(seen1.port(), 25_100, "the first keeps its port");
        assert!(
            seen2.port() != 25_100 && (25_000..=25_999).contains(&seen2.port()),
            "the second: {seen2}"
        );
        relay(&mut c1, &mut s1, b"from cp1").unwrap();
        relay(&mut s1, &mut c1, b"to cp1").unwrap();
        relay(&mut c2, &mut s2, b"from orch1").unwrap();
        relay(&mut s2, &mut c2, b"to orch1").unwrap();
        // Counted by the controller's sweep (every 10 s), not by a map walk per request.
        let translations = || {
            let st = gw.status::<Report>(&lab.gw).unwrap();
            st.map("nat_translations")
                .expect("nat_translations in /status")
                .entries
        };
        let started = std::time::Instant::now();
        while translations() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(25),
                "two translations counted: {}",
                translations()
            );
            std::thread::sleep(Duration::from_millis(200));
        }

        // Unsolicited from the LAN to a masquerade port: dropped, counted.
        let before = gw
            .status::<Report>(&lab.gw)
            .unwrap()
            .packets("lan", "nat_no_mapping");
        let probe = lan1
            .ns
            .run_scoped(move || {
                TcpStream::connect_timeout(
                    &SocketAddr::new(IpAddr::V4(gw_lan), 25_500),
                    Duration::from_millis(500),
                )
            })
            .unwrap();
        assert!(
            probe.is_err(),
            "a connection to an unused masquerade port got through"
        );
        let after = gw
            .status::<Report>(&lab.gw)
            .unwrap()
            .packets("lan", "nat_no_mapping");
        assert!(after > before, "nat_no_mapping did not move");

        // Bulk transfers both ways at default offloads, through the translation.
        // UDP datagrams of 3000 bytes leave their sender as IP fragments: translated by the
        // first fragment's flow, in both directions.
        let big = Transfer::Udp {
            payload: 3000,
            mbit_per_s: 100,
        };
        bulk_both_ways(&cp1.ns, &lan1.ns, IpAddr::V4(lan1.addr), 5201);
        for (reverse, port) in [(false, 5205), (true, 5206)] {
            bulk(&cp1.ns, &lan1.ns, IpAddr::V4(lan1.addr), big, reverse, port);
        }
        let st = gw.status::<Report>(&lab.gw).unwrap();
        // The 3000-byte datagrams crossed as fragments both ways (later fragments are accepted
        // as "fragment" once their first fragment was).
        assert!(
            st.packets("tunnel_ingress", "fragment") > 1_000
                && st.packets("lan", "fragment") > 1_000,
            "{:?}",
            st.counters
        );
        assert!(
            st.packets("lan", "masqueraded") > 10_000
                && st.packets("lan", "unmasqueraded") > 10_000,
            "{:?}",
            st.counters
        );
        nothing_lost_on_the_way(&st);

        // The policy no longer allows cp1: its translated flow ends, both ways; orch1's goes on.
        std::fs::write(lab.policy_path(), WITHOUT_CP1).unwrap();
        gw.reload::<Report>(&lab.gw).expect("reload");
        let revoked_before = gw
            .status::<Report>(&lab.gw)
            .unwrap()
            .packets("lan", "revoked");
        assert!(
            relay(&mut s1, &mut c1, b"after").is_err(),
            "cp1 still receives on a revoked flow"
        );
        let revoked_after = gw
            .status::<Report>(&lab.gw)
            .unwrap()
            .packets("lan", "revoked");
        assert!(
            revoked_after > revoked_before,
            "the LAN side of the revoked flow was not dropped as revoked"
        );
        relay(&mut s2, &mut c2, b"still allowed").unwrap();

        // The next sweep takes the revoked flow's translation away: its port is free at once,
        // not after the 2 h 4 min a live TCP translation keeps it. A LAN packet to it is then
        // one to a port without a translation; orch1's translation stays.
        let removed = || {
            metric(
                &gw,
                &lab.gw,
                "gateway_nat_removed_total{cause=\"flow_ended\"}",
            )
        };
        let started = std::time::Instant::now();
        while removed() < 1.0 {
            assert!(
                started.elapsed() < Duration::from_secs(25),
                "the revoked flow's translation was not removed"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let no_mapping = || {
            gw.status::<Report>(&lab.gw)
                .unwrap()
                .packets("lan", "nat_no_mapping")
        };
        let before = no_mapping();
        let _ = relay(&mut s1, &mut c1, b"after the sweep");
        let started = std::time::Instant::now();
        while no_mapping() <= before {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "lan1's packet to the freed port was not a nat_no_mapping drop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        relay(&mut s2, &mut c2, b"still translated").unwrap();
        relay(&mut c2, &mut s2, b"both ways").unwrap();
        assert_eq!(
            metric(&gw, &lab.gw, "gateway_nat_port_range_ports "),
            1000.0
        );
        assert!(metric(&gw, &lab.gw, "gateway_nat_busiest_destination_ports ") >= 1.0);
        // /status has the port range's occupancy too, and the flow tables' evictions: none
        // here (the tables have room for far more flows than the lab makes).
        let st = gw.status::<Report>(&lab.gw).unwrap();
        let ports = st
            .nat_ports
            .as_ref()
            .expect("the port range's occupancy in /status");
        assert_eq!(ports.range, 1000);
        assert!(ports.busiest_destination >= 1, "{ports:?}");
        let evicted: Vec<_> = st
            .evicted
            .iter()
            .map(|e| (e.table.as_str(), e.entry.as_str(), e.count))
            .collect();
        assert_eq!(
            evicted,
            [
                ("conntrack", "unanswered", 0),
                ("conntrack", "answered", 0),
                ("nat", "unanswered", 0),
                ("nat", "answered", 0)
            ]
        );
        let text = gw.metrics(&lab.gw).expect("metrics");
        assert!(
            text.lines()
                .any(|l| l.starts_with("gateway_flow_table_evictions_total{")
                    && l.contains("table=\"nat\"")
                    && l.contains("entry=\"unanswered\"")
                    && l.ends_with(" 0")),
            "{text}"
        );
        drop(gw);
    }

    /// SIGHUP reads the `masquerade:` section again: a new port range is in force for new
    /// connections and reserved from the host's sockets (the old one given back); a broken
    /// section is rejected whole and the range in force stays.
    #[test]
    fn masquerade_settings_reload_on_sighup() {
        let lab = Lab::seed().expect("lab");
        let (cp1, lan1) = (lab.host("cp1"), lab.host("lan1"));
        let gw = start(&lab, MASQUERADE);
        let listener = lan1
            .ns
            .run_scoped(|| TcpListener::bind("0.0.0.0:443"))
            .unwrap()
            .expect("listen on lan1");
        let server = SocketAddrV4::new(lan1.addr, 443);
        let seen_port = |sport: u16| {
            let _c = connect_from(&cp1.ns, sport, server).expect("cp1 connects");
            listener.accept().unwrap().1.port()
        };
        let reserved = || {
            String::from_utf8_lossy(
                &lab.gw
                    .exec(&["sysctl", "-n", "net.ipv4.ip_local_reserved_ports"])
                    .unwrap()
                    .stdout,
            )
            .to_string()
        };
        // A source port outside the range: the translation takes one of the range.
        assert!((25_000..=25_999).contains(&seen_port(41_000)));

        let config = lab
            .write_config_extra(
                OPEN,
                LAB_METRICS_ADDR,
                "masquerade:\n  networks: [198.18.10.0/24]\n  ports: 26000-26099\n",
            )
            .unwrap();
        let st = gw.reload::<Report>(&lab.gw).expect("reload");
        assert!(st.last_reload.starts_with("ok"), "{}", st.last_reload);
        for sport in 41_001..41_005 {
            let port = seen_port(sport);
            assert!(
                (26_000..=26_099).contains(&port),
                "a new connection after the reload: {port}"
            );
        }
        let now = reserved();
        assert!(
            now.contains("26000-26099") && !now.contains("25000-25999"),
            "reserved ports: {now:?}"
        );

        // Ports 0-10 are not a range of unprivileged ports: refused, 26000-26099 stays.
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("ports: 26000-26099", "ports: 0-10");
        std::fs::write(&config, text).unwrap();
        let st = gw.reload::<Report>(&lab.gw).expect("reload");
        assert!(st.last_reload.contains("rejected"), "{}", st.last_reload);
        assert!((26_000..=26_099).contains(&seen_port(41_010)));
        assert!(reserved().contains("26000-26099"));
        drop(gw);
    }

    /// A metric's value from the gateway's /metrics (`name` with its labels, as exposed).
    fn metric(gw: &GatewayProcess, ns: &Netns, name: &str) -> f64 {
        let text = gw.metrics(ns).expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// `tunnel_forward: tc`: the tunnel's TC program forwards to the LAN itself; masquerade,
    /// replies, bulk transfers (GSO aggregates forwarded by their segment size) all as before.
    #[test]
    fn tunnel_traffic_forwarded_in_tc_is_masqueraded_and_answered() {
        let lab = Lab::seed().expect("lab");
        // The LAN in XDP (replies to the tunnel by the kernel), then at TC (replies forwarded
        // by the LAN's TC program too).
        for (run, lan_attach) in ["xdp-native", "tc"].into_iter().enumerate() {
            forwarded_in_tc(&lab, lan_attach, run as u16 * 10);
        }
    }

    /// One gateway run; `offset` keeps its ports apart from the other run's.
    fn forwarded_in_tc(lab: &Lab, lan_attach: &str, offset: u16) {
        let (cp1, lan1) = (lab.host("cp1"), lab.host("lan1"));
        let gw = start_attached(
            lab,
            &format!("  tunnel_forward: tc\n{MASQUERADE}"),
            lan_attach,
        );
        let gw_lan: Ipv4Addr = GATEWAY_LAN_ADDR.parse().unwrap();
        let listener = lan1
            .ns
            .run_scoped(|| TcpListener::bind("0.0.0.0:443"))
            .unwrap()
            .expect("listen on lan1");
        let mut c = connect_from(&cp1.ns, 25_200 + offset, SocketAddrV4::new(lan1.addr, 443))
            .expect("cp1 connects");
        let (mut s, seen) = listener.accept().unwrap();
        assert_eq!(seen, SocketAddr::new(IpAddr::V4(gw_lan), 25_200 + offset));
        relay(&mut c, &mut s, b"forwarded in tc").unwrap();
        relay(&mut s, &mut c, b"and back").unwrap();
        bulk_both_ways(&cp1.ns, &lan1.ns, IpAddr::V4(lan1.addr), 5211 + offset);
        // Accepted traffic to the gateway itself is no route out of a LAN interface: the TC
        // program leaves it to the kernel, which delivers it, and counts it.
        let own = lab
            .gw
            .run_scoped(move || TcpListener::bind(SocketAddrV4::new(gw_lan, 8443 + offset)))
            .unwrap()
            .expect("listen on the gateway");
        let mut c = connect_from(
            &cp1.ns,
            25_210 + offset,
            SocketAddrV4::new(gw_lan, 8443 + offset),
        )
        .expect("cp1 connects to the gateway");
        let (mut s, _) = own.accept().unwrap();
        relay(&mut c, &mut s, b"to the gateway itself").unwrap();
        let st = gw.status::<Report>(&lab.gw).unwrap();
        assert!(
            st.packets("tunnel_ingress", "left_to_kernel") >= 3,
            "{:?}",
            st.counters
        );
        assert!(
            st.packets("tunnel_ingress", "tc_forwarded") > 10_000,
            "{:?}",
            st.counters
        );
        assert!(
            st.packets("lan", "masqueraded") > 10_000,
            "{:?}",
            st.counters
        );
        // Replies (the reverse bulk transfers' data) forwarded by the LAN's TC program when it
        // has one; never by the XDP program, which leaves that direction to the kernel.
        let lan_forwarded = st.packets("lan", "tc_forwarded");
        if lan_attach == "tc" {
            assert!(lan_forwarded > 10_000, "{lan_attach}: {:?}", st.counters);
        } else {
            assert_eq!(lan_forwarded, 0, "{lan_attach}: {:?}", st.counters);
        }
        nothing_lost_on_the_way(&st);
        assert!(gw.stop().unwrap().success());
    }

    /// IPv6 end to end, as IPv4 above: cp1 and lan1 get IPv6 addresses (overlay fd00:64::/48,
    /// LAN fd00:18:10::/64), and the gateway masquerades toward the LAN's IPv6 network and
    /// forwards in TC both ways (the LAN attached at TC). Neighbour discovery is the hosts' own.
    #[test]
    fn ipv6_peers_reach_the_lan_as_the_gateway_through_tc_forwarding() {
        let lab = Lab::seed().expect("lab");
        let (cp1, lan1) = (lab.host("cp1"), lab.host("lan1"));
        lab.add_ipv6_peer(cp1, "fd00:64::10:1").unwrap();
        // lan1 too, behind a forwarding gateway.
        lan1.ns
            .sysctl("net.ipv6.conf.all.disable_ipv6", "0")
            .unwrap();
        lab.gw.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
        lab.gw
            .ip_line("-6 addr add fd00:18:10::1/64 dev lan0 nodad")
            .unwrap();
        lan1.ns
            .ip_line("-6 addr add fd00:18:10::10/64 dev eth0 nodad")
            .unwrap();
        lan1.ns
            .ip_line("-6 route add default via fd00:18:10::1")
            .unwrap();
        let policy = OPEN
            .replace(
                "[\"100.64.0.0/10\"]",
                "[\"100.64.0.0/10\", \"fd00:64::/48\"]",
            )
            .replace(
                "[\"198.18.10.0/24\"]",
                "[\"198.18.10.0/24\", \"fd00:18:10::/64\"]",
            );
        assert_ne!(policy, OPEN);
        let gw = start_with_policy(
            &lab,
            &policy,
            "  tunnel_forward: tc\noverlay:\n  ipv4: 100.64.0.0/10\n  ipv6: fd00:64::/48\nmasquerade:\n  networks: [198.18.10.0/24, \"fd00:18:10::/64\"]\n  ports: 25000-25999\n",
            "tc",
        );
        let (lan1_v6, gw_lan_v6): (IpAddr, IpAddr) = (
            "fd00:18:10::10".parse().unwrap(),
            "fd00:18:10::1".parse().unwrap(),
        );
        let listener = lan1
            .ns
            .run_scoped(|| TcpListener::bind("[fd00:18:10::10]:443"))
            .unwrap()
            .expect("listen on lan1");
        let mut c = cp1
            .ns
            .run_scoped(|| {
                TcpStream::connect_timeout(&SocketAddr::new(lan1_v6, 443), Duration::from_secs(5))
            })
            .unwrap()
            .expect("cp1 connects over IPv6");
        let (mut s, seen) = listener.accept().unwrap();
        assert_eq!(seen.ip(), gw_lan_v6, "lan1 sees the gateway's LAN address");
        assert!(
            (25_000..=25_999).contains(&seen.port()),
            "a port of the masquerade's range: {seen}"
        );
        relay(&mut c, &mut s, b"over IPv6").unwrap();
        relay(&mut s, &mut c, b"and back").unwrap();
        bulk_both_ways(&cp1.ns, &lan1.ns, lan1_v6, 5231);
        let st = gw.status::<Report>(&lab.gw).unwrap();
        for (direction, reason) in [
            ("tunnel_ingress", "tc_forwarded"),
            ("lan", "masqueraded"),
            ("lan", "unmasqueraded"),
            ("lan", "tc_forwarded"),
        ] {
            assert!(
                st.packets(direction, reason) > 10_000,
                "{direction} {reason}: {:?}",
                st.counters
            );
        }
        nothing_lost_on_the_way(&st);
        assert!(gw.stop().unwrap().success());
    }

    /// A network behind a router on the LAN: TC forwarding hands its packets to the router, the
    /// FIB's next hop, whose link address the neighbour redirect resolves. The router answers
    /// ARP only for the addresses of the interface asked (arp_ignore=1), so a packet addressed
    /// at link level to the destination itself, as if it were on the LAN, would never arrive.
    #[test]
    fn tunnel_traffic_to_a_network_behind_a_lan_router_goes_to_the_router() {
        let lab = Lab::seed().expect("lab");
        let (cp1, lan1) = (lab.host("cp1"), lab.host("lan1"));
        let behind: Ipv4Addr = "198.18.11.1".parse().unwrap();
        lan1.ns
            .ip(&["addr", "add", "198.18.11.1/32", "dev", "lo"])
            .unwrap();
        for key in [
            "net.ipv4.conf.all.arp_ignore",
            "net.ipv4.conf.eth0.arp_ignore",
        ] {
            lan1.ns.sysctl(key, "1").unwrap();
        }
        lab.gw
            .ip(&[
                "route",
                "add",
                "198.18.11.0/24",
                "via",
                &lan1.addr.to_string(),
                "dev",
                &lan1.gw_if,
            ])
            .unwrap();
        let policy = OPEN.replace(
            "lan: [\"198.18.10.0/24\"]",
            "lan: [\"198.18.10.0/24\", \"198.18.11.0/24\"]",
        );
        assert_ne!(policy, OPEN);
        let gw = start_with_policy(
            &lab,
            &policy,
            &format!("  tunnel_forward: tc\n{MASQUERADE}"),
            "tc",
        );
        let listener = lan1
            .ns
            .run_scoped(move || TcpListener::bind(SocketAddrV4::new(behind, 443)))
            .unwrap()
            .expect("listen behind the router");
        let mut c =
            connect_from(&cp1.ns, 25_300, SocketAddrV4::new(behind, 443)).expect("cp1 connects");
        let (mut s, seen) = listener.accept().unwrap();
        // Not a masqueraded network: the peer's own address.
        assert_eq!(seen, SocketAddr::new(IpAddr::V4(cp1.addr), 25_300));
        relay(&mut c, &mut s, b"via the router").unwrap();
        relay(&mut s, &mut c, b"and back").unwrap();
        bulk(
            &cp1.ns,
            &lan1.ns,
            IpAddr::V4(behind),
            Transfer::Tcp,
            false,
            5311,
        );
        bulk(
            &cp1.ns,
            &lan1.ns,
            IpAddr::V4(behind),
            Transfer::Tcp,
            true,
            5312,
        );
        let st = gw.status::<Report>(&lab.gw).unwrap();
        assert!(
            st.packets("tunnel_ingress", "tc_forwarded") > 1_000,
            "{:?}",
            st.counters
        );
        assert!(gw.stop().unwrap().success());
    }

    /// TC forwarding's route cache honours rules that route by source, for peers behind one
    /// tunnel interface (as every peer is behind wg0): two sources of cp1 send to one address
    /// that sits behind both lan1 (the main table) and lan9 (a rule's table for the second
    /// source), alternating, from one CPU (one per-CPU cache), within the cache's second. Each
    /// datagram must arrive where the FIB routes its own source, forwarded in TC.
    #[test]
    fn tunnel_traffic_forwarded_in_tc_follows_routes_by_source() {
        use std::net::UdpSocket;
        let lab = Lab::seed().expect("lab");
        let (cp1, lan1) = (lab.host("cp1"), lab.host("lan1"));
        let lan9 = Netns::create(&format!(
            "{}-lan9",
            lab.dir.file_name().unwrap().to_string_lossy()
        ))
        .unwrap();
        gateway_testkit::netns::veth(&lab.gw, "lan9", &lan9, "eth0").unwrap();
        lab.gw.ip_line("addr add 198.18.20.1/24 dev lan9").unwrap();
        lan9.ip_line("addr add 198.18.20.10/24 dev eth0").unwrap();
        lan9.ip_line("link set lo up").unwrap();
        let second: Ipv4Addr = "100.64.10.2".parse().unwrap();
        cp1.ns.ip_line("addr add 100.64.10.2/32 dev eth0").unwrap();
        let far: Ipv4Addr = "198.18.11.1".parse().unwrap();
        for ns in [&lan1.ns, &lan9] {
            ns.ip_line("addr add 198.18.11.1/32 dev lo").unwrap();
        }
        lab.gw
            .ip_line(&format!(
                "route add 198.18.11.1 via {} dev {}",
                lan1.addr, lan1.gw_if
            ))
            .unwrap();
        lab.gw
            .ip_line("route add 198.18.11.1 via 198.18.20.10 dev lan9 table 100")
            .unwrap();
        lab.gw
            .ip_line("rule add from 100.64.10.2 lookup 100 priority 100")
            .unwrap();
        let policy = OPEN.replace(
            "lan: [\"198.18.10.0/24\"]",
            "lan: [\"198.18.10.0/24\", \"198.18.11.0/24\"]",
        );
        assert_ne!(policy, OPEN);
        let config = lab
            .write_config_extra(&policy, LAB_METRICS_ADDR, "  tunnel_forward: tc\n")
            .expect("config");
        let text = std::fs::read_to_string(&config).unwrap();
        let lan0 = "    - name: lan0\n      attach: xdp-native\n";
        assert!(text.contains(lan0), "{text}");
        std::fs::write(
            &config,
            text.replace(
                lan0,
                "    - name: lan0\n      attach: tc\n    - name: lan9\n      attach: tc\n",
            ),
        )
        .unwrap();
        let gw = start_config(&lab, &config);
        let sink = SocketAddr::new(IpAddr::V4(far), 5300);
        let (at_lan1, at_lan9) = (
            traffic::udp_sink(&lan1.ns, sink),
            traffic::udp_sink(&lan9, sink),
        );
        const ROUNDS: usize = 100;
        let (first_addr, second_addr) = cp1
            .ns
            .run_scoped(move || {
                gateway_testkit::harness::pin_thread_to_cpu(0);
                let first = UdpSocket::bind((Ipv4Addr::new(100, 64, 10, 1), 0)).unwrap();
                let second = UdpSocket::bind((second, 0)).unwrap();
                for _ in 0..ROUNDS {
                    first.send_to(b"first", (far, 5300)).unwrap();
                    second.send_to(b"second", (far, 5300)).unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
                (first.local_addr().unwrap(), second.local_addr().unwrap())
            })
            .unwrap();
        let (got_lan1, got_lan9) = (
            traffic::udp_senders(&at_lan1),
            traffic::udp_senders(&at_lan9),
        );
        let st = gw.status::<Report>(&lab.gw).unwrap();
        let expected = |sender: SocketAddr| std::collections::BTreeMap::from([(sender, ROUNDS)]);
        assert_eq!(
            got_lan1,
            expected(first_addr),
            "behind lan1 (main table); lan9 got {got_lan9:?}; {:?}",
            st.counters
        );
        assert_eq!(
            got_lan9,
            expected(second_addr),
            "behind lan9 (the rule's table)"
        );
        assert!(
            st.packets("tunnel_ingress", "tc_forwarded") >= 2 * ROUNDS as u64,
            "{:?}",
            st.counters
        );
        assert!(gw.stop().unwrap().success());
    }

    #[test]
    fn a_network_without_masquerade_sees_the_peers_own_address() {
        let lab = Lab::seed().expect("lab");
        let (cp1, lan1) = (lab.host("cp1"), lab.host("lan1"));
        // Masquerade configured, but for another network.
        let gw = start(&lab, "masquerade:\n  networks: [198.19.99.0/24]\n");
        let listener = lan1
            .ns
            .run_scoped(|| TcpListener::bind("0.0.0.0:443"))
            .unwrap()
            .expect("listen");
        let _c = connect_from(&cp1.ns, 25_101, SocketAddrV4::new(lan1.addr, 443)).expect("connect");
        let (_s, seen) = listener.accept().unwrap();
        assert_eq!(seen, SocketAddr::new(IpAddr::V4(cp1.addr), 25_101));
        let st = gw.status::<Report>(&lab.gw).unwrap();
        assert_eq!(st.packets("lan", "masqueraded"), 0);
    }
}

/// An ICMP error (IPv4 destination unreachable, port unreachable) from `src` to `dst` quoting
/// the first 28 bytes of `quoted` (its IP header and 8 bytes of transport header), with every
/// checksum computed in full by the test.
fn unreachable(src: &str, dst: &str, quoted: &Spec) -> Vec<u8> {
    dest_unreachable(src, dst, quoted, 3, [0; 4])
}

/// As [`unreachable`] with another code and rest of header (code 4: fragmentation needed, the
/// next-hop MTU in the last two bytes).
fn dest_unreachable(src: &str, dst: &str, quoted: &Spec, code: u8, rest: [u8; 4]) -> Vec<u8> {
    let q = quoted.build();
    let body = q[14..14 + 28].to_vec();
    let mut frame = Spec::new(
        src,
        dst,
        L4::Icmp {
            kind: 3,
            code,
            rest,
            body,
        },
    )
    .build();
    let sum = gateway_testkit::packets::checksum(&frame[34..]);
    frame[36..38].copy_from_slice(&sum.to_be_bytes());
    frame
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_inside_and_out() {
    let mut h = harness();
    // A flow whose port had to change (outside the range): the error must carry it back.
    let out = out_through(&mut h, &tcp(P1, HOST, 51_000, 443, TCP_SYN));
    let (port, _) = ports_of(&out, false);
    assert_ne!(port, 51_000);
    // The LAN host's error about the translated SYN reaches the peer quoting the peer's SYN,
    // and passes as related to the peer's flow.
    let error = unreachable(HOST, NAT, &tcp(NAT, HOST, port, 443, TCP_SYN));
    let before = h.count(HOOK_LAN, ACCEPT_RELATED);
    let (action, back) = h.xdp_bytes(&error);
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    let want = unreachable(HOST, P1, &tcp(P1, HOST, 51_000, 443, TCP_SYN));
    assert_eq!(
        gateway_testkit::harness::hex(&back),
        gateway_testkit::harness::hex(&want),
        "error in"
    );
    assert_eq!(h.count(HOOK_LAN, ACCEPT_RELATED) - before, 1);
    // The peer's error about the LAN host's reply leaves as the masquerade's, quoting the reply
    // as the LAN host sent it.
    let (_, _) = h.xdp_bytes(&tcp(HOST, NAT, 443, port, TCP_SYN | TCP_ACK).build());
    let error = unreachable(P1, HOST, &tcp(HOST, P1, 443, 51_000, TCP_SYN | TCP_ACK));
    let out = frame_out_through(&mut h, &error);
    let want = unreachable(NAT, HOST, &tcp(HOST, NAT, 443, port, TCP_SYN | TCP_ACK));
    assert_eq!(
        gateway_testkit::harness::hex(&out),
        gateway_testkit::harness::hex(&want),
        "error out"
    );
    // About a UDP datagram: the 8 quoted bytes hold its checksum, which follows the translation
    // back (the test sums the peer's datagram in full).
    let out = out_through(&mut h, &udp(P1, HOST, 51_002, 53));
    let (udp_port, _) = ports_of(&out, false);
    let error = unreachable(HOST, NAT, &udp(NAT, HOST, udp_port, 53));
    let (action, back) = h.xdp_bytes(&error);
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    let want = unreachable(HOST, P1, &udp(P1, HOST, 51_002, 53));
    assert_eq!(
        gateway_testkit::harness::hex(&back),
        gateway_testkit::harness::hex(&want),
        "UDP error in"
    );
    // An error about something no translation sent is the host's own business.
    let own = unreachable(HOST, NAT, &tcp(NAT, HOST, 33_000, 22, TCP_SYN));
    let (action, back) = h.xdp_bytes(&own);
    assert_eq!(action, XDP_PASS);
    assert_eq!(back, own);
}

#[test]
fn the_gateways_own_error_about_a_translated_reply_quotes_what_the_lan_host_sent() {
    let mut h = harness();
    let out = out_through(&mut h, &udp(P1, HOST, 51_000, 53));
    let (port, _) = ports_of(&out, false);
    // The LAN host's reply comes back translated toward the peer ...
    let (action, _) = h.xdp_bytes(&udp(HOST, NAT, 53, port).build());
    assert_eq!(action, XDP_PASS);
    // ... and does not fit the tunnel: the gateway's own "fragmentation needed" (from its LAN
    // address, MTU 1280) quotes the reply as translated. It must leave quoting the reply as the
    // LAN host sent it, or the LAN host caches the MTU for the peer's address, which it never
    // talks to, and keeps sending what cannot pass.
    let mtu = [0, 0, 0x05, 0x00];
    let error = dest_unreachable(NAT, HOST, &udp(HOST, P1, 53, 51_000), 4, mtu);
    let (action, out) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, &error);
    assert_eq!(action, TC_ACT_OK);
    // Every checksum, the quoted UDP one included, as the test computes it in full for the
    // reply the LAN host sent (RFC 5508; Linux's NAT does the same).
    let want = dest_unreachable(NAT, HOST, &udp(HOST, NAT, 53, port), 4, mtu);
    let quoted_udp_check = 14 + 20 + 8 + 20 + 6;
    assert_ne!(
        error[quoted_udp_check..quoted_udp_check + 2],
        want[quoted_udp_check..quoted_udp_check + 2],
        "the quoted UDP checksum had to change"
    );
    assert_eq!(
        gateway_testkit::harness::hex(&out),
        gateway_testkit::harness::hex(&want),
        "error out"
    );
    // An error of this host about a flow it did not translate is left alone.
    let other = dest_unreachable(NAT, HOST, &udp(HOST, P2, 53, 51_001), 4, mtu);
    let (_, out) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, &other);
    assert_eq!(out, other);
}

/// TC forwarding's masquerade remembers a flow's port in its conntrack entry (`NatMemo`), so
/// that the flow's later packets skip the translation lookup; the tables stay the authority:
/// they are consulted again, and the translation refreshed, by the first packet of each tick
/// (2^28 ns). Run in a namespace whose FIB forwards from the tunnel interface to the LAN's, the
/// tunnel program test-run as if the packet arrived on the tunnel.
#[test]
fn tc_forwarding_remembers_a_flows_port_for_a_tick_and_asks_the_tables_again_after() {
    use gateway_common::conntrack::{CtEntry, FAMILY_V4, flow_key};
    use gateway_testkit::netns::{permanent_neighbour, tunnel_and_lan};
    const TC_ACT_REDIRECT: u32 = 7;
    const TICK: std::time::Duration = std::time::Duration::from_nanos(1 << 28);

    gateway_testkit::netns::remove_stale("gwnatmemo");
    let id = format!("gwnatmemo{}", std::process::id());
    let (ns, other) = tunnel_and_lan(&id).unwrap();
    permanent_neighbour(&ns, HOST, "02:00:00:00:0a:0a", "l0").unwrap();

    // UDP timeouts long enough for the memo (at least 8 ticks), then too short for it.
    for (udp_timeout, remembered) in [(120, true), (1, false)] {
        let mut h = Harness::new(POLICY);
        h.dp.set_masquerade(&Masquerade {
            networks: vec!["198.18.10.0/24".parse().unwrap()],
            settings: NatSettings {
                port_min: PORTS.0,
                port_max: PORTS.1,
                udp: udp_timeout,
                ..Default::default()
            },
        })
        .unwrap();
        let sport = PORTS.0 + 7;
        let packet = udp(P1, HOST, sport, 53).build();
        // Forwarded: one hop fewer.
        let want = Spec {
            ttl: 63,
            ..udp(NAT, HOST, sport, 53)
        };
        let src = addr16(P1);
        let dst = addr16(HOST);
        let (ct_key, sender_is_a) = flow_key(&src, sport, &dst, 53, 17, FAMILY_V4, None);
        let fwd_key = udp_key(P1, sport, 53);
        ns.run_scoped(|| {
            let t0 = h.forward_from_t0_masquerading_on_l0();
            let send = |h: &mut Harness, what: &str| {
                let (action, out) =
                    h.tc_program_bytes_on(names::PROG_TC_TUNNEL_INGRESS_ETH, &packet, t0);
                assert_eq!(
                    action,
                    TC_ACT_REDIRECT,
                    "{what}: {}",
                    h.hook_counters(HOOK_TUNNEL_INGRESS)
                );
                // The neighbour redirect writes the link header on its way out: the IP packet is
                // what the program made.
                same_ip(&out, &want, what);
            };
            let entry = |h: &mut Harness| -> CtEntry {
                let ct = h.dp.conntrack_table().unwrap();
                ct.get(&ct_key).expect("the flow's conntrack entry")
            };
            let set_refreshed =
                |h: &mut Harness, ns: u64| h.set_nat_forward_last_seen(&fwd_key, ns);
            let refreshed = |h: &mut Harness| -> u64 { h.nat_forward_last_seen(&fwd_key) };
            // The first packet creates the conntrack entry and the translation; the masquerade
            // has no entry at hand yet.
            send(&mut h, "first packet");
            assert_eq!(entry(&mut h).nat_port, 0);
            if !remembered {
                for n in 0..3 {
                    send(&mut h, "a later packet");
                    assert_eq!(entry(&mut h).nat_port, 0, "packet {n}: a 1 s timeout");
                }
                return;
            }
            // Within one tick, packets after the second take the port from the entry: a mark
            // put on the translation's timestamp stays. (Retried when a tick boundary fell
            // between the packets, which asks the tables and so removes the mark.)
            let mut within_a_tick = false;
            for _ in 0..20 {
                send(&mut h, "a packet that leaves the memo");
                let e = entry(&mut h);
                assert_eq!(e.nat_port, sport, "remembered: the port the tables hold");
                assert_eq!(e.nat_stamp >> 15, sender_is_a as u16, "the sender's memo");
                set_refreshed(&mut h, 1);
                std::thread::sleep(std::time::Duration::from_millis(20));
                send(&mut h, "a packet on the memo");
                if refreshed(&mut h) == 1 && entry(&mut h).nat_stamp == e.nat_stamp {
                    within_a_tick = true;
                    break;
                }
            }
            assert!(within_a_tick, "no packet was translated from the memo");
            // A tick later the tables are asked again: the translation is refreshed (its
            // timestamp back to the clock) and stays the flow's.
            std::thread::sleep(TICK * 2);
            send(&mut h, "the first packet of a later tick");
            assert!(refreshed(&mut h) > 1, "the tables were not asked");
            assert_eq!(entry(&mut h).nat_port, sport);
        })
        .unwrap();
    }
    drop((ns, other));
}

/// The key of a UDP/IPv4 translation entry between `local`:`local_port` and
/// HOST:`remote_port`.
fn udp_key(local: &str, local_port: u16, remote_port: u16) -> gateway_common::nat::NatKey {
    gateway_common::nat::NatKey {
        local: addr16(local),
        remote: addr16(HOST),
        local_port,
        remote_port,
        proto: 17,
        family: 4,
        _pad: [0; 2],
    }
}

fn addr16(a: &str) -> [u8; 16] {
    let v4: std::net::Ipv4Addr = a.parse().unwrap();
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&v4.octets());
    out
}

/// The IP packet of `got` (after its Ethernet header) is `want`'s, checksums included.
#[track_caller]
fn same_ip(got: &[u8], want: &Spec, what: &str) {
    let want = want.build();
    assert_eq!(
        gateway_testkit::harness::hex(&got[14..]),
        gateway_testkit::harness::hex(&want[14..]),
        "{what}"
    );
}

/// The translation tables keep flows in buckets of four ways, twice the ways the configured
/// translations need; configured for two, they are one bucket each, so every flow competes for
/// the same ways. A new flow that finds
/// the bucket full takes the way of the oldest translation the LAN host never answered (its
/// replies are dropped from then on, never delivered to the new flow); a translation that was
/// answered is never evicted, and a bucket full of those makes the new flow a counted drop.
#[test]
fn a_full_bucket_evicts_the_oldest_unanswered_translation_never_an_answered_one() {
    let opts = gateway_dataplane::LoadOptions {
        limits: gateway_dataplane::LimitsConfig {
            nat_entries: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut h = masquerading_ports(opts);
    // Flow n: the peer's port 40_000 + n (in the range and free: kept) to the LAN host.
    let open = |h: &mut Harness, n: u16| {
        let out = out_through(h, &udp(P1, HOST, PORTS.0 + n, 53));
        same(&out, &udp(NAT, HOST, PORTS.0 + n, 53), "translated");
        // Apart by more than the coarse clock's tick, so that their ages differ.
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let reply = |h: &mut Harness, n: u16| h.xdp_bytes(&udp(HOST, NAT, 53, PORTS.0 + n).build());
    let answered = |h: &mut Harness, n: u16, what: &str| {
        let (action, back) = reply(h, n);
        assert_eq!(action, XDP_PASS, "{what}: {}", h.hook_counters(HOOK_LAN));
        same(&back, &udp(HOST, P1, 53, PORTS.0 + n), what);
    };
    let lost = |h: &mut Harness, n: u16, what: &str| {
        let before = h.count(HOOK_LAN, DROP_NAT_NO_MAPPING);
        let (action, _) = reply(h, n);
        assert_eq!(action, XDP_DROP, "{what}");
        assert_eq!(h.count(HOOK_LAN, DROP_NAT_NO_MAPPING), before + 1, "{what}");
    };
    for n in 1..=4 {
        open(&mut h, n);
    }
    assert_eq!(h.dp.nat_entries().unwrap(), 4);
    answered(&mut h, 1, "flow 1 answered");
    answered(&mut h, 2, "flow 2 answered");
    let nat_evicted = |h: &Harness| -> Vec<(&str, u64)> {
        h.dp.evictions()
            .unwrap()
            .into_iter()
            .filter(|e| e.0 == "nat")
            .map(|e| (e.1, e.2))
            .collect()
    };
    assert_eq!(nat_evicted(&h), [("unanswered", 0), ("answered", 0)]);
    // Flow 5 takes flow 3's ways (the oldest unanswered); flow 4 stays.
    open(&mut h, 5);
    assert_eq!(h.dp.nat_entries().unwrap(), 4);
    // Flow 3's forward entry and its reverse entry, each given up in its table.
    assert_eq!(nat_evicted(&h), [("unanswered", 2), ("answered", 0)]);
    lost(&mut h, 3, "flow 3's reply after its eviction");
    answered(&mut h, 4, "flow 4 answered");
    answered(&mut h, 5, "flow 5 answered");
    answered(&mut h, 1, "flow 1 still answered");
    // Every way holds an answered translation now: flow 6 is refused, none is evicted.
    let sixth = udp(P1, HOST, PORTS.0 + 6, 53).build();
    let (action, _) = h.tc_bytes(true, &sixth);
    assert_eq!(action, TC_ACT_OK);
    let (action, _) = h.tc_program_bytes(names::PROG_TC_LAN_EGRESS, &sixth);
    assert_eq!(action, TC_ACT_SHOT, "{}", h.hook_counters(HOOK_LAN));
    assert_eq!(h.count(HOOK_LAN, DROP_NAT_EXHAUSTED), 1);
    for n in [1, 2, 4, 5] {
        answered(&mut h, n, "an answered flow keeps its translation");
    }
    assert_eq!(h.dp.nat_entries().unwrap(), 4);
    assert_eq!(
        nat_evicted(&h),
        [("unanswered", 2), ("answered", 0)],
        "nothing given up for the refused flow"
    );
}

fn bpftool(args: &[&str]) {
    let out = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool runs");
    assert!(out.status.success(), "bpftool {args:?}: {out:?}");
}

/// The LAN host's UDP reply to the masquerade's port `kept` reaches P1's port `original`.
#[track_caller]
fn reply_finds_the_peer(h: &mut Harness, kept: u16, original: u16) {
    let (action, back) = h.xdp_bytes(&udp(HOST, NAT, 53, kept).build());
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    same(
        &back,
        &udp(HOST, P1, 53, original),
        "the reply, translated back",
    );
}

/// A pin root of a test's own, removed with everything pinned under it when the test ends.
struct TestPins {
    root: std::path::PathBuf,
    pins: gateway_dataplane::pins::PinDir,
}

impl TestPins {
    fn new(what: &str) -> TestPins {
        let root =
            std::path::PathBuf::from(format!("/sys/fs/bpf/gwtest-{what}-{}", std::process::id()));
        let pins = gateway_dataplane::pins::PinDir::new(&root);
        assert!(!pins.prepare().unwrap(), "a fresh pin root");
        TestPins { root, pins }
    }

    /// Pins a map made with bpftool, as an earlier release's loader made it, holding `entries`
    /// (key and value bytes). `kind` is bpftool's map type; `flags` its map flags.
    fn old_map(
        &self,
        name: &str,
        kind: &str,
        flags: u32,
        capacity: u32,
        entries: &[(Vec<u8>, Vec<u8>)],
    ) {
        let path = self.pins.map(name);
        let path = path.to_str().unwrap();
        let (key_size, value_size) = (
            entries[0].0.len().to_string(),
            entries[0].1.len().to_string(),
        );
        let (capacity, flags) = (capacity.to_string(), flags.to_string());
        bpftool(&[
            "map",
            "create",
            path,
            "type",
            kind,
            "key",
            &key_size,
            "value",
            &value_size,
            "entries",
            &capacity,
            "name",
            name,
            "flags",
            &flags,
        ]);
        for (k, v) in entries {
            self.update(name, k, v);
        }
    }

    /// Writes one entry of a pinned old map with bpftool, as the old programs would.
    fn update(&self, name: &str, key: &[u8], value: &[u8]) {
        let path = self.pins.map(name);
        let hex =
            |bytes: &[u8]| -> Vec<String> { bytes.iter().map(|b| format!("{b:02x}")).collect() };
        let (k, v) = (hex(key), hex(value));
        let mut args = vec![
            "map",
            "update",
            "pinned",
            path.to_str().unwrap(),
            "key",
            "hex",
        ];
        args.extend(k.iter().map(String::as_str));
        args.extend(["value", "hex"]);
        args.extend(v.iter().map(String::as_str));
        bpftool(&args);
    }

    fn load_options(&self) -> gateway_dataplane::LoadOptions {
        gateway_dataplane::LoadOptions {
            pin_root: Some(self.root.clone()),
            ..Default::default()
        }
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A translation table's key, byte by byte as the kernel lays it out (UDP, IPv4, to HOST).
fn old_nat_key(local: &str, local_port: u16, remote_port: u16) -> Vec<u8> {
    let mut k = addr16(local).to_vec();
    k.extend(addr16(HOST));
    k.extend(local_port.to_ne_bytes());
    k.extend(remote_port.to_ne_bytes());
    k.extend([17, 4, 0, 0]);
    k
}

/// A translation's target, byte by byte as the kernel lays it out.
fn old_nat_target(addr: &str, port: u16, last_seen_ns: u64) -> Vec<u8> {
    let mut t = addr16(addr).to_vec();
    t.extend(port.to_ne_bytes());
    t.extend([0; 6]);
    t.extend(last_seen_ns.to_ne_bytes());
    t
}

/// A gateway adopting the data plane of a release whose translation tables were LRU hash maps
/// (pinned as NAT_FWD_V1 and NAT_REV_V1) moves their translations into the bucket tables and
/// unpins the old maps: the flow's next packet leaves with the port the old tables gave it. The
/// old maps are made with bpftool, as that release's loader made them (40-byte keys, 32-byte
/// values, LRU hash), under a pin root of the test's own.
#[test]
fn an_upgrade_carries_the_old_tables_translations_over() {
    use gateway_common::conntrack::{CtEntry, FAMILY_V4, ORIGIN_POLICY, ORIGIN_REVOKED, flow_key};
    use gateway_dataplane::nat_table::Direction;

    let test_pins = TestPins::new("natv1");
    let pins = &test_pins.pins;
    let (original, kept) = (PORTS.0 + 50, PORTS.0 + 77);
    let now = gateway_dataplane::sweep::monotonic_coarse_ns();
    // The flow's conntrack entry, as the earlier release's LRU table held it (the same layout).
    let (ct_key, p1_is_a) = flow_key(
        &addr16(P1),
        original,
        &addr16(HOST),
        53,
        17,
        FAMILY_V4,
        None,
    );
    let ct_entry = CtEntry {
        last_seen_ns: now,
        initiator: if p1_is_a { 0 } else { 1 },
        origin: ORIGIN_POLICY,
        ..Default::default()
    };
    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: a padding-free #[repr(C)] map type, read as its bytes.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }.to_vec()
    }
    let old = [
        (
            names::NAT_FORWARD_V1_LRU,
            old_nat_key(P1, original, 53),
            old_nat_target(NAT, kept, now),
        ),
        (
            names::NAT_REVERSE_V1_LRU,
            old_nat_key(NAT, kept, 53),
            old_nat_target(P1, original, now),
        ),
        (names::CONNTRACK_V1_LRU, bytes(&ct_key), bytes(&ct_entry)),
    ];
    for (name, k, v) in &old {
        test_pins.old_map(name, "lru_hash", 0, 64, &[(k.clone(), v.clone())]);
    }

    let mut h = masquerading_ports(test_pins.load_options());
    // A second flow the old programs start between the passes, which a policy change has
    // ended in the new table already (its tombstone, written as the kernel writes one): the
    // second pass must not bring it back, however recently the old programs saw it.
    let (ended_key, _) = flow_key(
        &addr16(P1),
        original + 1,
        &addr16(HOST),
        53,
        17,
        FAMILY_V4,
        None,
    );
    let conntrack = h.dp.conntrack_table().unwrap();
    let tombstone = CtEntry {
        origin: ORIGIN_REVOKED,
        ..ct_entry
    };
    assert!(conntrack.insert(&ended_key, &tombstone).unwrap());
    let later = CtEntry {
        last_seen_ns: gateway_dataplane::sweep::monotonic_coarse_ns(),
        ..ct_entry
    };
    test_pins.update(names::CONNTRACK_V1_LRU, &bytes(&ended_key), &bytes(&later));
    // Once the new programs are attached (none here: the test runs them itself).
    h.dp.finish_carry_over().unwrap();
    for (name, _, _) in &old {
        assert!(!pins.map(name).exists(), "{name} is still pinned");
    }
    assert_eq!(conntrack.get(&ended_key), Some(tombstone));
    let forward = udp_key(P1, original, 53);
    let tables = h.dp.nat_tables().unwrap();
    assert_eq!(
        tables.get(Direction::Forward, &forward).map(|t| t.port),
        Some(kept)
    );
    assert_eq!(tables.count(Direction::Reverse), 1);
    assert_eq!(conntrack.get(&ct_key), Some(ct_entry));
    assert_eq!(conntrack.count(), 2);
    // The LAN host's reply, before the peer sends again: translated back and established by
    // the carried flow (without it, the policy would judge the reply as a new flow and drop it).
    let established = h.count(HOOK_LAN, ACCEPT_ESTABLISHED);
    reply_finds_the_peer(&mut h, kept, original);
    assert_eq!(
        h.count(HOOK_LAN, ACCEPT_ESTABLISHED) - established,
        1,
        "{}",
        h.hook_counters(HOOK_LAN)
    );
    // The flow keeps its port: without the old translation it would have left with its own
    // (free, and in the range).
    let out = out_through(&mut h, &udp(P1, HOST, original, 53));
    same(
        &out,
        &udp(NAT, HOST, kept, 53),
        "the carried translation's port",
    );
}

/// A gateway adopting the data plane of a release whose translation tables were bucket tables
/// with one way per configured translation (NAT_FWD_V2 and NAT_REV_V2 under NAT_SHAPE_V1)
/// moves their translations into the roomier tables (placed again: the bucket count differs)
/// in two passes: one as it loads, one once its programs are attached (what the old programs
/// did in between), the entry of a key last seen later standing; then it unpins all three. The old tables are made with bpftool as that release's loader made
/// them: mmapable arrays of 296-byte buckets (a sequence word, four 72-byte ways), here one
/// bucket under a shape of 1 bucket and seed 0, so that where a translation lies needs no hash.
#[test]
fn an_upgrade_carries_translations_out_of_tables_without_room_to_spare() {
    use gateway_dataplane::nat_table::Direction;

    const BPF_F_MMAPABLE: u32 = 1 << 10;
    let test_pins = TestPins::new("natv2");
    let pins = &test_pins.pins;
    let now = gateway_dataplane::sweep::monotonic_coarse_ns();
    // Last seen: at first, then by the old programs between the passes (both in the past: a
    // translation seen in the future would look idle for ages).
    let (first, between) = (now - 3_000_000_000, now - 1_000_000_000);
    // The bucket's ways in order, the rest vacant (all zeros).
    let bucket = |ways: &[(Vec<u8>, Vec<u8>)]| -> Vec<u8> {
        let mut b = vec![0u8; 8];
        for (key, target) in ways {
            b.extend(key);
            b.extend(target);
        }
        b.resize(8 + 4 * 72, 0);
        b
    };
    let forward = |original: u16, kept: u16, seen: u64| {
        (
            old_nat_key(P1, original, 53),
            old_nat_target(NAT, kept, seen),
        )
    };
    let reverse = |original: u16, kept: u16, seen: u64| {
        (
            old_nat_key(NAT, kept, 53),
            old_nat_target(P1, original, seen),
        )
    };
    // Flow n: the peer's port 40_050 + n, given port 40_070 + n by the old tables.
    let original = |n: u16| PORTS.0 + 50 + n;
    let kept = |n: u16| PORTS.0 + 70 + n;
    let index = 0u32.to_ne_bytes().to_vec();
    let shape = [1u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat();
    test_pins.old_map(
        names::NAT_TABLE_SHAPE_V1,
        "array",
        0,
        1,
        &[(index.clone(), shape)],
    );
    let write = |create: bool, name: &str, b: Vec<u8>| {
        if create {
            test_pins.old_map(name, "array", BPF_F_MMAPABLE, 1, &[(index.clone(), b)]);
        } else {
            test_pins.update(name, &index, &b);
        }
    };
    // Flows 1 and 3 translated.
    write(
        true,
        names::NAT_FORWARD_V2_TIGHT,
        bucket(&[
            forward(original(1), kept(1), first),
            forward(original(3), kept(3), first),
        ]),
    );
    write(
        true,
        names::NAT_REVERSE_V2_TIGHT,
        bucket(&[
            reverse(original(1), kept(1), first),
            reverse(original(3), kept(3), first),
        ]),
    );
    let old_names = [
        names::NAT_FORWARD_V2_TIGHT,
        names::NAT_REVERSE_V2_TIGHT,
        names::NAT_TABLE_SHAPE_V1,
    ];

    let mut h = masquerading_ports(test_pins.load_options());
    // The first pass copied; the old tables stay pinned while the old programs may still run.
    for name in old_names {
        assert!(
            pins.map(name).exists(),
            "{name} unpinned before the programs are attached"
        );
    }
    let tables = h.dp.nat_tables().unwrap();
    assert_eq!(tables.count(Direction::Forward), 2);
    // Meanwhile the old programs translate flow 2, give flow 1 another port (as after its
    // reverse entry was evicted) and flow 3 too; but the new programs saw flow 3 later still.
    write(
        false,
        names::NAT_FORWARD_V2_TIGHT,
        bucket(&[
            forward(original(1), kept(1) + 5, between),
            forward(original(3), kept(3) + 5, between),
            forward(original(2), kept(2), between),
        ]),
    );
    write(
        false,
        names::NAT_REVERSE_V2_TIGHT,
        bucket(&[
            reverse(original(1), kept(1), first),
            reverse(original(3), kept(3), first),
            reverse(original(1), kept(1) + 5, between),
            reverse(original(2), kept(2), between),
        ]),
    );
    assert!(
        tables
            .set_last_seen(Direction::Forward, &udp_key(P1, original(3), 53), now)
            .unwrap()
    );
    // The programs attached, the second pass carries what changed over and unpins. Of two
    // entries of one key, the one seen later stands.
    h.dp.finish_carry_over().unwrap();
    for name in old_names {
        assert!(!pins.map(name).exists(), "{name} is still pinned");
    }
    let port_of = |n: u16| {
        tables
            .get(Direction::Forward, &udp_key(P1, original(n), 53))
            .map(|t| t.port)
    };
    assert_eq!(
        port_of(2),
        Some(kept(2)),
        "the flow started between the passes"
    );
    assert_eq!(
        port_of(1),
        Some(kept(1) + 5),
        "the old programs' later port"
    );
    assert_eq!(port_of(3), Some(kept(3)), "the new programs' later use");
    assert_eq!(tables.count(Direction::Reverse), 4);
    // Flow 1 leaves with its later port (without the old translations it would have left with
    // its own: free, and in the range), and the LAN host's reply to it finds the peer.
    let out = out_through(&mut h, &udp(P1, HOST, original(1), 53));
    same(
        &out,
        &udp(NAT, HOST, kept(1) + 5, 53),
        "the carried translation's port",
    );
    reply_finds_the_peer(&mut h, kept(1) + 5, original(1));
}

/// A forward entry whose reverse entry is gone (evicted for a new flow, or swept) is no
/// translation: the flow's next packet gets one afresh, whose reverse entry leads the LAN
/// host's reply back, and never leaves on a port that no reverse entry holds (which another
/// flow could then claim toward the same host).
#[test]
fn a_flow_whose_reverse_entry_is_gone_is_translated_afresh() {
    use gateway_dataplane::nat_table::Direction;

    let mut h = harness();
    let sport = PORTS.0 + 33;
    let out = out_through(&mut h, &udp(P1, HOST, sport, 53));
    same(&out, &udp(NAT, HOST, sport, 53), "first packet");
    let reverse = udp_key(NAT, sport, 53);
    let tables = h.dp.nat_tables().unwrap();
    assert!(
        tables
            .remove(Direction::Reverse, &reverse, &addr16(P1), sport)
            .unwrap(),
        "the reverse entry removed"
    );
    assert_eq!(
        tables.count(Direction::Forward),
        1,
        "the forward entry stays"
    );
    let out = out_through(&mut h, &udp(P1, HOST, sport, 53));
    // The port it left with (its own again: free once more).
    let port = u16::from_be_bytes([out[34], out[35]]);
    let (action, back) = h.xdp_bytes(&udp(HOST, NAT, 53, port).build());
    assert_eq!(action, XDP_PASS, "{}", h.hook_counters(HOOK_LAN));
    same(&back, &udp(HOST, P1, 53, sport), "the reply finds the peer");
    assert_eq!(tables.count(Direction::Reverse), 1);
}
