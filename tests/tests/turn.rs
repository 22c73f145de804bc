//! The TURN fast path by BPF_PROG_TEST_RUN, run inside a namespace whose FIB knows the client
//! and the peer (addresses, static neighbours): ChannelData in → UDP out and UDP in →
//! ChannelData out, bytes exact against frames the test builds with checksums computed in full;
//! padded ChannelData; unbound channels, STUN and malformed ChannelData to userspace untouched.

use gateway_common::{
    maps as names,
    turn::{ChannelKey, PeerKey, ToClient, ToPeer, reason::*},
};
use gateway_testkit::{
    harness::{Harness, XDP_PASS, hex, pin_thread_to_cpu},
    netns::{Netns, veth},
};
use std::net::Ipv6Addr;

const CLIENT: [u8; 4] = [198, 18, 30, 2];
const LISTEN: [u8; 4] = [198, 18, 30, 1];
const RELAY: [u8; 4] = [198, 18, 31, 1];
const PEER: [u8; 4] = [198, 18, 31, 2];
const CLIENT_MAC: [u8; 6] = [0x02, 0x74, 0, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0x74, 0, 0, 0, 0x12];
const C0_MAC: [u8; 6] = [0x02, 0x74, 0, 0, 0, 0x01];
const P0_MAC: [u8; 6] = [0x02, 0x74, 0, 0, 0, 0x11];
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The relay's namespace: c0 toward the client, p0 toward the peer, both neighbours known.
fn relay_ns() -> (Netns, Netns) {
    gateway_testkit::netns::remove_stale("gwturnfx");
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!(
        "gwturnfx{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let (ns, other) = (
        Netns::create(&format!("{id}-r")).unwrap(),
        Netns::create(&format!("{id}-o")).unwrap(),
    );
    // The fast path's FIB lookup is an input lookup: the arrival interface (here, as in every
    // test run, the namespace's loopback) must forward.
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    veth(&ns, "c0", &other, "c1").unwrap();
    veth(&ns, "p0", &other, "p1").unwrap();
    for (dev, m, a, n, nm) in [
        ("c0", C0_MAC, "198.18.30.1/24", "198.18.30.2", CLIENT_MAC),
        ("p0", P0_MAC, "198.18.31.1/24", "198.18.31.2", PEER_MAC),
        ("c0", C0_MAC, "fd00:30::1/64", "fd00:30::2", CLIENT_MAC),
        ("p0", P0_MAC, "fd00:31::1/64", "fd00:31::2", PEER_MAC),
    ] {
        // (Setting an address again, even the same one, flushes the device's neighbours.)
        if !a.contains(':') {
            ns.ip(&["link", "set", dev, "address", &mac(m)]).unwrap();
        }
        let dad: &[&str] = if a.contains(':') { &["nodad"] } else { &[] };
        ns.ip(&[&["addr", "add", a, "dev", dev][..], dad].concat())
            .unwrap();
        ns.ip(&[
            "neigh",
            "replace",
            n,
            "lladdr",
            &mac(nm),
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    (ns, other)
}

fn sum16(bytes: &[u8]) -> u16 {
    let mut b = bytes.to_vec();
    if b.len() % 2 == 1 {
        b.push(0);
    }
    let mut s: u32 = b
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An Ethernet/IPv4/UDP frame with every checksum computed in full.
// One argument per header field the tests vary.
#[allow(clippy::too_many_arguments)]
fn frame(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ulen = (8 + payload.len()) as u16;
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0x00, ttl, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + ulen).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = sum16(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&ulen.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&ulen.to_be_bytes());
    pseudo.extend_from_slice(&udp);
    let mut c = sum16(&pseudo);
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

fn channel_data(channel: u16, data: &[u8], pad: &[u8]) -> Vec<u8> {
    let mut p = channel.to_be_bytes().to_vec();
    p.extend_from_slice(&(data.len() as u16).to_be_bytes());
    p.extend_from_slice(data);
    p.extend_from_slice(pad);
    p
}

/// A data plane whose relay has just said it is alive.
fn live() -> Harness {
    let mut h = Harness::new("groups: {}\npolicies: []\n");
    h.dp.stamp_turn_alive().unwrap();
    h
}

fn harness() -> Harness {
    let mut h = live();
    let channel = ChannelKey {
        client: CLIENT,
        listen: LISTEN,
        client_port: 40000,
        listen_port: 3478,
        channel: 0x4001,
        _pad: 0,
    };
    let to_peer = ToPeer {
        peer: PEER,
        relay: RELAY,
        peer_port: 5000,
        relay_port: 50001,
        slot: 7,
    };
    let peer = PeerKey {
        peer: PEER,
        relay: RELAY,
        peer_port: 5000,
        relay_port: 50001,
    };
    let to_client = ToClient {
        client: CLIENT,
        listen: LISTEN,
        client_port: 40000,
        listen_port: 3478,
        channel: 0x4001,
        _pad: 0,
        slot: 7,
    };
    h.dp.set_turn_binding(channel, to_peer, peer, to_client)
        .unwrap();
    h
}

fn reason_count(h: &Harness, r: u32) -> u64 {
    h.dp.turn_counters().unwrap()[r as usize].packets
}

/// `f` (an Ethernet/IPv4 frame) with another type of service and identification, its header
/// checksum computed again.
fn with_tos_id(mut f: Vec<u8>, tos: u8, id: u16) -> Vec<u8> {
    f[15] = tos;
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = sum16(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// Every frame is relayed three times, on one CPU: the first run takes the full path (which
/// fills the flow's slot of the per-flow shortcut), the next two the shortcut where it stands
/// for the full path (unpadded ChannelData, datagrams that fill their frame); the bytes must
/// be the same each time.
#[test]
fn bound_channels_are_forwarded_both_ways_with_exact_bytes() {
    let (ns, _other) = relay_ns();
    let mut h = harness();
    let data: Vec<u8> = (0..1199).map(|i| (i * 13 + 5) as u8).collect();
    const RUNS: u64 = 3;
    ns.run_scoped(|| {
        pin_thread_to_cpu(0);
        let mut relay = |input: &[u8], want: &[u8], what: &str| {
            for run in 0..RUNS {
                let (action, out) = h.xdp_program_bytes(names::PROG_XDP_TURN, input);
                assert!(
                    action == XDP_REDIRECT || action == XDP_TX,
                    "{what}, run {run}: action {action}, reasons {:?}",
                    h.dp.turn_counters().unwrap()
                );
                assert_eq!(hex(&out), hex(want), "{what}, run {run}");
            }
        };
        // Client → peer: unwrapped, from the allocation's address, toward the peer's neighbour.
        for (len, pad, (tos, id)) in [
            (1197, &[][..], (0, 0x1234)),
            (1197, &[0, 0, 0][..], (0, 0x1234)),
            (1197, &[0xde, 0xad, 0xbe][..], (0, 0x1234)),
            (64, &[][..], (0, 0x1234)),
            (1, &[0, 0, 0][..], (0, 0x1234)),
            (120, &[][..], (0, 0x1234)),
            (120, &[][..], (0xb8, 0xfedc)),
        ] {
            let input = frame(
                C0_MAC,
                CLIENT_MAC,
                CLIENT,
                LISTEN,
                40000,
                3478,
                61,
                &channel_data(0x4001, &data[..len], pad),
            );
            let want = frame(PEER_MAC, P0_MAC, RELAY, PEER, 50001, 5000, 64, &data[..len]);
            relay(
                &with_tos_id(input, tos, id),
                &with_tos_id(want, tos, id),
                &format!("client → peer, {len} bytes, padding {pad:?}, tos {tos:#x}"),
            );
        }
        // Peer → client: wrapped in ChannelData, from the listening address.
        for (len, (tos, id)) in [
            (0usize, (0, 0x1234)),
            (1, (0, 0x1234)),
            (64, (0, 0x1234)),
            (1199, (0, 0x1234)),
            (1199, (0x2e, 0x0001)),
        ] {
            let input = frame(P0_MAC, PEER_MAC, PEER, RELAY, 5000, 50001, 63, &data[..len]);
            let want = frame(
                CLIENT_MAC,
                C0_MAC,
                LISTEN,
                CLIENT,
                3478,
                40000,
                64,
                &channel_data(0x4001, &data[..len], &[]),
            );
            relay(
                &with_tos_id(input, tos, id),
                &with_tos_id(want, tos, id),
                &format!("peer → client, {len} bytes, tos {tos:#x}"),
            );
        }
    })
    .unwrap();
    assert_eq!(reason_count(&h, TO_PEER), 7 * RUNS);
    assert_eq!(reason_count(&h, TO_CLIENT), 5 * RUNS);
    let (to_peer, to_client) = h.dp.turn_binding_counters(7).unwrap();
    assert_eq!(
        (to_peer.packets, to_peer.bytes),
        (7 * RUNS, (3 * 1197 + 64 + 1 + 2 * 120) * RUNS)
    );
    assert_eq!(
        (to_client.packets, to_client.bytes),
        (5 * RUNS, (64 + 1 + 2 * 1199) * RUNS)
    );
    // The shortcut relayed every run of the unpadded ChannelData (four frames) but the flow's
    // very first (which filled the slot; padded frames took the full path and kept it), and
    // the runs of the peer's datagrams long enough to fill a ChannelData header's room (three
    // frames) but the first of each size longer than any before it: the shorter ones, relayed
    // by the full path, filled the slot, and a datagram longer than the route was looked up
    // for goes to the FIB again (the MTU check stays the kernel's).
    let flows = h.turn_flows();
    let hits = |channel: u16| -> u64 {
        flows
            .iter()
            .filter(|f| f.channel == channel)
            .map(|f| f.hits as u64)
            .sum()
    };
    assert_eq!(hits(0x4001), 4 * RUNS - 1, "{flows:?}");
    assert_eq!(hits(0), 3 * RUNS - 2, "{flows:?}");
}

#[test]
fn everything_else_goes_to_userspace_untouched() {
    let (ns, _other) = relay_ns();
    let mut h = harness();
    ns.run_scoped(|| {
        let cases = [
            // An unbound channel, a channel of another client, a STUN request, an unbound peer.
            (
                frame(
                    C0_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    LISTEN,
                    40000,
                    3478,
                    64,
                    &channel_data(0x4002, b"x", &[0; 3]),
                ),
                PASS_OTHER,
            ),
            (
                frame(
                    C0_MAC,
                    CLIENT_MAC,
                    [198, 18, 30, 3],
                    LISTEN,
                    40000,
                    3478,
                    64,
                    &channel_data(0x4001, b"x", &[0; 3]),
                ),
                PASS_OTHER,
            ),
            (
                frame(
                    C0_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    LISTEN,
                    40000,
                    3478,
                    64,
                    &[
                        0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                    ],
                ),
                PASS_OTHER,
            ),
            (
                frame(P0_MAC, PEER_MAC, PEER, RELAY, 5001, 50001, 64, b"who"),
                PASS_OTHER,
            ),
            // ChannelData whose length says more than the datagram holds, or junk past padding.
            (
                frame(
                    C0_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    LISTEN,
                    40000,
                    3478,
                    64,
                    &[0x40, 0x01, 0, 50, 1, 2, 3, 4],
                ),
                PASS_MALFORMED,
            ),
            (
                frame(
                    C0_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    LISTEN,
                    40000,
                    3478,
                    64,
                    &channel_data(0x4001, b"ab", &[0; 6]),
                ),
                PASS_MALFORMED,
            ),
        ];
        // A bound channel whose UDP checksum was only begun by a local sender (the field holds
        // the pseudo-header sum, as over a veth with offload on).
        let mut begun = frame(
            C0_MAC,
            CLIENT_MAC,
            CLIENT,
            LISTEN,
            40000,
            3478,
            64,
            &channel_data(0x4001, b"data", &[]),
        );
        let ulen = (begun.len() - 34) as u32;
        let mut sum: u32 = [CLIENT, LISTEN]
            .iter()
            .flat_map(|a| {
                [
                    u16::from_be_bytes([a[0], a[1]]) as u32,
                    u16::from_be_bytes([a[2], a[3]]) as u32,
                ]
            })
            .sum::<u32>()
            + 17
            + ulen;
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        begun[40..42].copy_from_slice(&(sum as u16).to_be_bytes());
        let mut cases = cases.to_vec();
        cases.push((begun, PASS_PARTIAL_CHECKSUM));
        for (i, (input, why)) in cases.iter().enumerate() {
            let before = reason_count(&h, *why);
            let (action, out) = h.xdp_program_bytes(names::PROG_XDP_TURN, input);
            assert_eq!(action, XDP_PASS, "case {i}");
            assert_eq!(&out, input, "case {i} untouched");
            assert_eq!(reason_count(&h, *why) - before, 1, "case {i}");
        }
    })
    .unwrap();
    // Relayed while bound, the frame leaves a copy of its binding in the CPU's binding cache
    // and its flow in the CPU's shortcut slot (unpadded: the second run takes the shortcut).
    // The runs before and after the removal share one CPU, so the removal must reach both.
    let bound = || {
        frame(
            C0_MAC,
            CLIENT_MAC,
            CLIENT,
            LISTEN,
            40000,
            3478,
            64,
            &channel_data(0x4001, b"wxyz", &[]),
        )
    };
    ns.run_scoped(|| {
        pin_thread_to_cpu(0);
        for _ in 0..2 {
            let (action, _) = h.xdp_program_bytes(names::PROG_XDP_TURN, &bound());
            assert!(action == XDP_REDIRECT || action == XDP_TX, "{action}");
        }
    })
    .unwrap();
    let hits = shortcut_hits(&h);
    assert_eq!(hits, 1, "the second run took the shortcut");
    // With the binding removed, its traffic is userspace's again.
    h.dp.remove_turn_binding(
        &ChannelKey {
            client: CLIENT,
            listen: LISTEN,
            client_port: 40000,
            listen_port: 3478,
            channel: 0x4001,
            _pad: 0,
        },
        &PeerKey {
            peer: PEER,
            relay: RELAY,
            peer_port: 5000,
            relay_port: 50001,
        },
    )
    .unwrap();
    ns.run_scoped(|| {
        pin_thread_to_cpu(0);
        assert_eq!(
            h.xdp_program_bytes(names::PROG_XDP_TURN, &bound()).0,
            XDP_PASS
        );
    })
    .unwrap();
}

fn v6(a: &str) -> [u8; 16] {
    a.parse::<Ipv6Addr>().unwrap().octets()
}

/// An Ethernet/IPv6/UDP frame with its checksum computed in full (RFC 8200 pseudo-header),
/// traffic class `tclass`, and `hops` as hop limit.
fn frame6(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    (sport, dport): (u16, u16),
    (tclass, flow, hops): (u8, u32, u8),
    payload: &[u8],
) -> Vec<u8> {
    let ulen = (8 + payload.len()) as u16;
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x86, 0xdd]);
    let first = (6u32 << 28) | ((tclass as u32) << 20) | (flow & 0xfffff);
    f.extend_from_slice(&first.to_be_bytes());
    f.extend_from_slice(&ulen.to_be_bytes());
    f.extend_from_slice(&[17, hops]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&ulen.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(ulen as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&udp);
    let mut c = sum16(&pseudo);
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

/// A binding of IPv6 addresses throughout, in the IPv6 maps; counter slot 9.
fn bind6(h: &mut Harness) -> (ChannelKey<[u8; 16]>, PeerKey<[u8; 16]>) {
    let (client, listen, relay, peer) = (
        v6("fd00:30::2"),
        v6("fd00:30::1"),
        v6("fd00:31::1"),
        v6("fd00:31::2"),
    );
    let channel = ChannelKey {
        client,
        listen,
        client_port: 40000,
        listen_port: 3478,
        channel: 0x7ffe,
        _pad: 0,
    };
    let peer_key = PeerKey {
        peer,
        relay,
        peer_port: 5000,
        relay_port: 50001,
    };
    h.dp.set_turn_binding(
        channel,
        ToPeer {
            peer,
            relay,
            peer_port: 5000,
            relay_port: 50001,
            slot: 9,
        },
        peer_key,
        ToClient {
            client,
            listen,
            client_port: 40000,
            listen_port: 3478,
            channel: 0x7ffe,
            _pad: 0,
            slot: 9,
        },
    )
    .unwrap();
    (channel, peer_key)
}

/// IPv6: ChannelData in → UDP out and back, bytes exact (hop limit 64, traffic class kept, no
/// flow label: a datagram the relay originates), padded input, counted on the binding.
#[test]
fn ipv6_bound_channels_are_forwarded_both_ways_with_exact_bytes() {
    let (ns, _other) = relay_ns();
    let mut h = live();
    bind6(&mut h);
    let (client, listen, relay, peer) = (
        v6("fd00:30::2"),
        v6("fd00:30::1"),
        v6("fd00:31::1"),
        v6("fd00:31::2"),
    );
    let data: Vec<u8> = (0..1199).map(|i| (i * 7 + 1) as u8).collect();
    ns.run_scoped(|| {
        // One CPU, so every frame after the first of each direction takes its route from the
        // per-CPU cache (filled by the longest frame, sent first): its bytes are checked too.
        gateway_testkit::harness::pin_thread_to_cpu(0);
        for (len, pad) in [
            (1197, &[][..]),
            (1197, &[0x11, 0x22, 0x33][..]),
            (64, &[][..]),
            (1, &[0, 0, 0][..]),
            (0, &[][..]),
        ] {
            let input = frame6(
                C0_MAC,
                CLIENT_MAC,
                client,
                listen,
                (40000, 3478),
                (0xb8, 0x12345, 57),
                &channel_data(0x7ffe, &data[..len], pad),
            );
            let (action, out) = h.xdp_program_bytes(names::PROG_XDP_TURN, &input);
            assert!(
                action == XDP_REDIRECT || action == XDP_TX,
                "action {action}, reasons {:?}",
                h.dp.turn_counters().unwrap()
            );
            let want = frame6(
                PEER_MAC,
                P0_MAC,
                relay,
                peer,
                (50001, 5000),
                (0xb8, 0, 64),
                &data[..len],
            );
            assert_eq!(
                hex(&out),
                hex(&want),
                "client → peer, {len} bytes, padding {pad:?}"
            );
        }
        for len in [1199usize, 0, 1, 64] {
            let input = frame6(
                P0_MAC,
                PEER_MAC,
                peer,
                relay,
                (5000, 50001),
                (0, 0xabcde, 60),
                &data[..len],
            );
            let (action, out) = h.xdp_program_bytes(names::PROG_XDP_TURN, &input);
            assert!(
                action == XDP_REDIRECT || action == XDP_TX,
                "action {action}"
            );
            let want = frame6(
                CLIENT_MAC,
                C0_MAC,
                listen,
                client,
                (3478, 40000),
                (0, 0, 64),
                &channel_data(0x7ffe, &data[..len], &[]),
            );
            assert_eq!(hex(&out), hex(&want), "peer → client, {len} bytes");
        }
    })
    .unwrap();
    assert_eq!(reason_count(&h, TO_PEER), 5);
    assert_eq!(reason_count(&h, TO_CLIENT), 4);
    let (to_peer, to_client) = h.dp.turn_binding_counters(9).unwrap();
    assert_eq!((to_peer.packets, to_peer.bytes), (5, 2 * 1197 + 64 + 1));
    assert_eq!((to_client.packets, to_client.bytes), (4, 1 + 64 + 1199));
}

/// IPv6 frames the path does not take go to userspace untouched, each counted: an extension
/// header before UDP, a zero UDP checksum (invalid over IPv6), a payload length that disagrees
/// with UDP's, an unbound channel, the IPv4 binding's ports from IPv6 addresses; and once the
/// binding is removed, its own traffic.
#[test]
fn ipv6_frames_the_path_does_not_take_go_to_userspace_untouched() {
    let (ns, _other) = relay_ns();
    let mut h = harness();
    let (channel, peer_key) = bind6(&mut h);
    let (client, listen, peer, relay) = (
        v6("fd00:30::2"),
        v6("fd00:30::1"),
        v6("fd00:31::2"),
        v6("fd00:31::1"),
    );
    let good = || {
        frame6(
            C0_MAC,
            CLIENT_MAC,
            client,
            listen,
            (40000, 3478),
            (0, 0, 64),
            &channel_data(0x7ffe, b"data", &[]),
        )
    };
    // A hop-by-hop options header (8 bytes of padding options) between IPv6 and UDP.
    let mut ext = good();
    ext[20] = 0;
    let plen = u16::from_be_bytes([ext[18], ext[19]]) + 8;
    ext[18..20].copy_from_slice(&plen.to_be_bytes());
    ext.splice(54..54, [17, 0, 1, 4, 0, 0, 0, 0]);
    let mut zero = good();
    zero[60..62].copy_from_slice(&[0, 0]);
    let mut short = good();
    short[19] -= 1;
    let cases = [
        (ext, PASS_OTHER),
        (zero, PASS_OTHER),
        (short, PASS_OTHER),
        (
            frame6(
                C0_MAC,
                CLIENT_MAC,
                client,
                listen,
                (40000, 3478),
                (0, 0, 64),
                &channel_data(0x7ffd, b"data", &[]),
            ),
            PASS_OTHER,
        ),
        (
            frame6(
                P0_MAC,
                PEER_MAC,
                peer,
                relay,
                (5001, 50001),
                (0, 0, 64),
                b"who",
            ),
            PASS_OTHER,
        ),
        (
            frame6(
                C0_MAC,
                CLIENT_MAC,
                client,
                listen,
                (40000, 3478),
                (0, 0, 64),
                &[0x7f, 0xfe, 0, 50, 1, 2, 3, 4],
            ),
            PASS_MALFORMED,
        ),
    ];
    ns.run_scoped(|| {
        for (i, (input, why)) in cases.iter().enumerate() {
            let before = reason_count(&h, *why);
            let (action, out) = h.xdp_program_bytes(names::PROG_XDP_TURN, input);
            assert_eq!(action, XDP_PASS, "case {i}");
            assert_eq!(&out, input, "case {i} untouched");
            assert_eq!(reason_count(&h, *why) - before, 1, "case {i}");
        }
        // The good frame is taken while bound (which caches the binding on this CPU: the
        // runs before and after the removal share one).
        pin_thread_to_cpu(0);
        let (action, _) = h.xdp_program_bytes(names::PROG_XDP_TURN, &good());
        assert!(action == XDP_REDIRECT || action == XDP_TX, "{action}");
    })
    .unwrap();
    h.dp.remove_turn_binding(&channel, &peer_key).unwrap();
    ns.run_scoped(|| {
        pin_thread_to_cpu(0);
        let (action, out) = h.xdp_program_bytes(names::PROG_XDP_TURN, &good());
        assert_eq!((action, out), (XDP_PASS, good()));
    })
    .unwrap();
}

/// Frames relayed from the shortcut's slots (all CPUs, all flows).
fn shortcut_hits(h: &Harness) -> u32 {
    h.turn_flows().iter().map(|f| f.hits).sum()
}

/// The client's ChannelData on the bound channel 0x4001 (7 bytes of data, then `pad`).
fn client_channel_data(pad: &[u8]) -> Vec<u8> {
    frame(
        C0_MAC,
        CLIENT_MAC,
        CLIENT,
        LISTEN,
        40000,
        3478,
        64,
        &channel_data(0x4001, b"payload", pad),
    )
}

/// A flow's shortcut slot stands for the full path's sign-of-life check too: a relay whose
/// window ends half a second after the flow's slot was filled (sooner than the route cache's
/// second) has the flow's next frame passed to the stack once the window is over, counted as
/// the full path counts it, not relayed from the slot.
#[test]
fn a_flows_slot_does_not_outlive_the_relays_sign_of_life() {
    let (ns, _other) = relay_ns();
    let mut h = harness();
    let input = client_channel_data(&[]);
    let now = gateway_dataplane::sweep::monotonic_coarse_ns();
    h.dp.set_turn_alive(now - gateway_common::turn::ALIVE_WINDOW_NS + 500_000_000)
        .unwrap();
    ns.run_scoped(|| {
        pin_thread_to_cpu(0);
        for _ in 0..2 {
            let (action, _) = h.xdp_program_bytes(names::PROG_XDP_TURN, &input);
            assert!(action == XDP_REDIRECT || action == XDP_TX, "{action}");
        }
    })
    .unwrap();
    let hits = shortcut_hits(&h);
    assert_eq!(hits, 1, "the second frame took the slot");
    std::thread::sleep(std::time::Duration::from_millis(700));
    ns.run_scoped(|| {
        pin_thread_to_cpu(0);
        let (action, out) = h.xdp_program_bytes(names::PROG_XDP_TURN, &input);
        assert_eq!((action, &out), (XDP_PASS, &input));
    })
    .unwrap();
    assert_eq!(reason_count(&h, PASS_RELAY_GONE), 1);
    assert_eq!(reason_count(&h, TO_PEER), 2);
    let hits = shortcut_hits(&h);
    assert_eq!(hits, 1, "nothing more from the slot");
}

/// The bindings are trusted only while the relay says it is alive: a stamp older than the
/// window (a relay that died) makes the program pass its bound channels to the stack, counted;
/// a fresh stamp brings the fast path back.
#[test]
fn a_relay_that_stopped_saying_it_is_alive_has_nothing_relayed_in_the_kernel() {
    let (ns, _other) = relay_ns();
    let mut h = harness();
    let input = client_channel_data(&[0]);
    let now = gateway_dataplane::sweep::monotonic_coarse_ns();
    h.dp.set_turn_alive(now - gateway_common::turn::ALIVE_WINDOW_NS - 1_000_000_000)
        .unwrap();
    ns.run_scoped(|| {
        let (action, out) = h.xdp_program_bytes(names::PROG_XDP_TURN, &input);
        assert_eq!((action, &out), (XDP_PASS, &input));
    })
    .unwrap();
    assert_eq!(reason_count(&h, PASS_RELAY_GONE), 1);
    assert_eq!(reason_count(&h, TO_PEER), 0);
    h.dp.stamp_turn_alive().unwrap();
    ns.run_scoped(|| {
        let (action, _) = h.xdp_program_bytes(names::PROG_XDP_TURN, &input);
        assert!(action == XDP_REDIRECT || action == XDP_TX, "{action}");
    })
    .unwrap();
    assert_eq!(reason_count(&h, TO_PEER), 1);
}
