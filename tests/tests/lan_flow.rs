//! The LAN hook's per-flow shortcut against the full path it stands for. Frames run through
//! BPF_PROG_TEST_RUN as arriving on a real interface of a namespace whose FIB routes them, with
//! the stateless policy and XDP forwarding on: the shortcut's packets leave with the bytes, the
//! verdict and the counters of the full path's, and everything the shortcut cannot stand for
//! (a policy change, another port, TTL 1, a checksum only begun, IP options, a truncated
//! datagram) is decided by the full path; with connection tracking on, only live flows the
//! current policy admitted take the slot, which moves their conntrack entries as the full path
//! does. Expected frames are built here from the input and the route, not by the data plane's
//! code.

use gateway_common::{
    conntrack::{CtEntry, CtKey, FAMILY_V4, STATE_TCP_CLOSING, flow_key},
    lan_flow::{selector, slot},
    stats::{HOOK_LAN, reason},
};
use gateway_dataplane::LoadOptions;
use gateway_testkit::{
    harness::{Harness, XDP_DROP, XDP_PASS, pin_thread_to_cpu},
    netns::{Netns, router_with_two_lans},
    packets::{Spec, checksum},
};

const XDP_REDIRECT: u32 = 4;
const POLICY: &str = "groups:\n  lan-a: [198.18.1.0/24]\n  lan-b: [198.19.1.0/24]\npolicies:\n  - name: a-to-b-dns\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: udp\n    ports: [53]\n  - name: a-to-b-web\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: tcp\n    ports: [443]\n";
const POLICY_WITHOUT_DNS: &str = "groups:\n  lan-a: [198.18.1.0/24]\n  lan-b: [198.19.1.0/24]\npolicies:\n  - name: a-to-b-web\n    source_groups: [lan-a]\n    destination_groups: [lan-b]\n    action: accept\n    protocol: tcp\n    ports: [443]\n";
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

/// (The LANs' namespaces are kept: deleting one would delete its veth, and the router's end.)
struct Lab {
    gw: Netns,
    _lans: [Netns; 2],
}

/// The gateway's namespace with LAN a (the frames' arrival) and LAN b (their way out), the
/// server on b known as a permanent neighbour (the FIB answers without ARP).
fn lab(tag: &str) -> Lab {
    let (gw, a, b) = router_with_two_lans(&format!("gwlf{tag}{}", std::process::id())).unwrap();
    let mac = SERVER_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    gw.ip(&[
        "neigh",
        "replace",
        "198.19.1.10",
        "lladdr",
        &mac,
        "dev",
        "lan-b",
        "nud",
        "permanent",
    ])
    .unwrap();
    Lab { gw, _lans: [a, b] }
}

fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns
        .exec(&["cat", &format!("/sys/class/net/{dev}/address")])
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// The frame as forwarding must leave it: the server's and LAN b's addresses, one hop fewer,
/// the header checksum computed again over the new header.
fn forwarded(frame: &[u8], lan_b: [u8; 6]) -> Vec<u8> {
    let mut want = frame.to_vec();
    want[..6].copy_from_slice(&SERVER_MAC);
    want[6..12].copy_from_slice(&lan_b);
    want[14 + 8] -= 1;
    let ihl = (want[14] & 0x0f) as usize * 4;
    want[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let sum = checksum(&want[14..14 + ihl]);
    want[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    want
}

fn dns(sport: u16) -> Spec {
    udp_to(sport, 53)
}

fn udp_to(sport: u16, dport: u16) -> Spec {
    Spec {
        payload_len: 18,
        l4_checksum: true,
        ..Spec::udp("198.18.1.10", "198.19.1.10", sport, dport)
    }
}

/// The hits of the slots of the tests' flows (a's UDP to port 53 and TCP to port 443 of b's
/// server) on CPU 0, where the tests run; `a`: lan-a's ifindex. Read slot by slot: the whole
/// array (16,384 slots per CPU, a syscall each) takes longer under software emulation
/// (kernel-check) than a route stays cached, and an expired route sends the next packet
/// through the full path.
fn hits(h: &Harness, a: u32) -> u32 {
    let (src, dst) = (
        u32::from_ne_bytes([198, 18, 1, 10]),
        u32::from_ne_bytes([198, 19, 1, 10]),
    );
    [selector(53, 17, 0), selector(443, 6, 0)]
        .into_iter()
        .map(|sel| h.lan_flow(slot(src, dst, sel, a)).hits)
        .sum()
}

/// Runs `test` with a data plane under POLICY (connection tracking `conntrack`), XDP
/// forwarding between the lab's LANs, inside the gateway's namespace, on one CPU (the slots
/// are per CPU); `test` gets the harness, lan-a's ifindex and lan-b's address.
fn in_lab(tag: &str, conntrack: bool, test: impl FnOnce(&mut Harness, u32, [u8; 6]) + Send) {
    let lab = lab(tag);
    let lan_b = mac_of(&lab.gw, "lan-b");
    let mut h = Harness::with_options(
        POLICY,
        LoadOptions {
            conntrack,
            overlay_v4: "198.19.0.0/16".parse().unwrap(),
            ..Default::default()
        },
    );
    lab.gw
        .run_scoped(|| {
            pin_thread_to_cpu(0);
            let a = gateway_dataplane::attach::if_index("lan-a").unwrap();
            h.dp.enable_xdp_forward(&["lan-a".to_string(), "lan-b".to_string()])
                .unwrap();
            test(&mut h, a, lan_b)
        })
        .unwrap();
}

#[test]
fn the_shortcut_forwards_as_the_full_path_and_leaves_it_whatever_it_cannot_stand_for() {
    in_lab("s", false, |h, a, lan_b| {
        let frame = dns(40000).build();
        let want = forwarded(&frame, lan_b);
        let lan = |h: &Harness, r: u32| h.reason_count(HOOK_LAN, r);

        // The first packet takes the full path and fills the flow's slot; the next ones
        // leave from the slot, byte for byte as the first, counted as it was.
        for n in 0..3u32 {
            let (action, out) = h.xdp_bytes_on(&frame, a);
            assert_eq!(
                action,
                XDP_REDIRECT,
                "packet {n}: {}",
                h.hook_counters(HOOK_LAN)
            );
            assert_eq!(out, want, "packet {n}");
            assert_eq!(hits(h, a), n, "packet {n}: taken from the slot");
        }
        assert_eq!(lan(h, reason::ACCEPT_POLICY), 3);
        assert_eq!(lan(h, reason::XDP_FORWARDED), 3);
        assert_eq!(h.rule_packets("a-to-b-dns"), 3);
        // The flow's slot holds it, the TCP flow's is still empty.
        let (src, dst) = (
            u32::from_ne_bytes([198, 18, 1, 10]),
            u32::from_ne_bytes([198, 19, 1, 10]),
        );
        let udp_slot = h.lan_flow(slot(src, dst, selector(53, 17, 0), a));
        assert_eq!(
            (udp_slot.src, udp_slot.dst, udp_slot.ifindex),
            (src, dst, a)
        );
        assert_eq!(
            h.lan_flow(slot(src, dst, selector(443, 6, 0), a))
                .generation,
            0
        );

        // TCP too, with its own slot.
        let web = Spec {
            payload_len: 100,
            l4_checksum: true,
            ..Spec::tcp("198.18.1.10", "198.19.1.10", 40001, 443, 0x10)
        }
        .build();
        for n in 0..2u32 {
            let (action, out) = h.xdp_bytes_on(&web, a);
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(out, forwarded(&web, lan_b), "TCP packet {n}");
        }
        assert_eq!(hits(h, a), 3, "one TCP packet from its slot");
        assert_eq!(h.rule_packets("a-to-b-web"), 2);

        // What the slot cannot stand for is the full path's, and the slot's count stays.
        let before = hits(h, a);
        let full_path = |h: &mut Harness, frame: &[u8], action: u32, r: u32, what: &str| {
            let counted = h.reason_count(HOOK_LAN, r);
            let (got, _) = h.xdp_bytes_on(frame, a);
            assert_eq!(got, action, "{what}: {}", h.hook_counters(HOOK_LAN));
            assert_eq!(h.reason_count(HOOK_LAN, r), counted + 1, "{what}");
            assert_eq!(hits(h, a), before, "{what}: not from the slot");
        };
        // Another port between the same hosts: the policy denies it.
        full_path(
            h,
            &udp_to(40000, 54).build(),
            XDP_DROP,
            reason::DROP_DEFAULT,
            "port 54",
        );
        // TTL 1: the kernel sends the time-exceeded error.
        full_path(
            h,
            &Spec {
                ttl: 1,
                ..dns(40000)
            }
            .build(),
            XDP_PASS,
            reason::LEFT_TO_KERNEL,
            "TTL 1",
        );
        // A checksum only begun (a local sender's offload): the kernel path finishes it.
        full_path(
            h,
            &partial_checksum(&frame),
            XDP_PASS,
            reason::KERNEL_FORWARDED_PARTIAL_CHECKSUM,
            "partial checksum",
        );
        // A datagram longer than the frame: truncated.
        let mut truncated = frame.clone();
        truncated.truncate(frame.len() - 4);
        full_path(h, &truncated, XDP_DROP, reason::DROP_TRUNCATED, "truncated");
        // IP options: the full path parses them, and forwards.
        let with_options = Spec {
            ipv4_options: vec![1, 1, 1, 0],
            ..dns(40000)
        }
        .build();
        full_path(
            h,
            &with_options,
            XDP_REDIRECT,
            reason::XDP_FORWARDED,
            "IP options",
        );
        // A new policy without the flow's rule: its next packet is dropped at once.
        h.apply(POLICY_WITHOUT_DNS);
        full_path(
            h,
            &frame,
            XDP_DROP,
            reason::DROP_DEFAULT,
            "after the rule is gone",
        );
        // Allowed again: the full path fills the slot for the new generation, which
        // serves the packets after it.
        h.apply(POLICY);
        let (action, out) = h.xdp_bytes_on(&frame, a);
        assert_eq!(action, XDP_REDIRECT, "allowed again");
        assert_eq!(out, want);
        let refilled = hits(h, a);
        let (_, out) = h.xdp_bytes_on(&frame, a);
        assert_eq!(out, want);
        assert_eq!(
            hits(h, a),
            refilled + 1,
            "the slot serves the new generation"
        );

        // Connection tracking turned on: the flow has no entry yet, so its next packet is the
        // full path's (which tracks it); the packets after that are the slot's again.
        h.dp.set_conntrack(true).unwrap();
        let before = hits(h, a);
        let established = lan(h, reason::ACCEPT_ESTABLISHED);
        for n in 0..3u32 {
            let (action, out) = h.xdp_bytes_on(&frame, a);
            assert_eq!(action, XDP_REDIRECT);
            assert_eq!(out, want);
            assert_eq!(hits(h, a), before + n, "tracked, packet {n}");
        }
        assert_eq!(lan(h, reason::ACCEPT_ESTABLISHED), established + 2);
    });
}

/// The frame with its UDP checksum field holding only the pseudo-header's folded sum, as a
/// sender that leaves the rest to offload (CHECKSUM_PARTIAL) sends it.
fn partial_checksum(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let l4 = 14 + 20;
    let len = (f.len() - l4) as u16;
    let mut pseudo = f[14 + 12..14 + 20].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    let sum = !checksum(&pseudo);
    f[l4 + 6..l4 + 8].copy_from_slice(&sum.to_be_bytes());
    f
}

/// A flow's conntrack key (IPv4, by the data plane's own canonical ordering: the key is how
/// the test finds the entry, not what it checks).
fn ct_key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> CtKey {
    let wide = |a: [u8; 4]| {
        let mut w = [0u8; 16];
        w[..4].copy_from_slice(&a);
        w
    };
    flow_key(&wide(src), sport, &wide(dst), dport, proto, FAMILY_V4, None).0
}

fn ct_entry(h: &Harness, key: &CtKey) -> Option<CtEntry> {
    h.dp.conntrack_table().unwrap().get(key)
}

/// With connection tracking on (the gateway's default), the slot serves the packets of a flow
/// whose conntrack entry is live and was admitted under the current policy, and moves that
/// entry on as the full path does; a flow without an entry, a revoked one, and TCP packets
/// that open or close a connection are the full path's.
#[test]
fn with_connection_tracking_the_slot_serves_live_flows_and_moves_their_entries() {
    in_lab("c", true, |h, a, lan_b| {
        let lan = |h: &Harness, r: u32| h.reason_count(HOOK_LAN, r);
        let (client, server) = ([198, 18, 1, 10], [198, 19, 1, 10]);
        let send = |h: &mut Harness, frame: &[u8], what: &str| {
            let (action, out) = h.xdp_bytes_on(frame, a);
            assert_eq!(
                action,
                XDP_REDIRECT,
                "{what}: {}",
                h.hook_counters(HOOK_LAN)
            );
            assert_eq!(out, forwarded(frame, lan_b), "{what}");
        };

        // The first packet is the policy's (and creates the entry); the next is the slot's,
        // counted as an established flow's, and moves the entry's clock.
        let frame = dns(40000).build();
        let key = ct_key(client, 40000, server, 53, 17);
        send(h, &frame, "first");
        assert_eq!((hits(h, a), lan(h, reason::ACCEPT_POLICY)), (0, 1));
        let seen = ct_entry(h, &key).expect("tracked").last_seen_ns;
        std::thread::sleep(std::time::Duration::from_millis(30));
        send(h, &frame, "second");
        assert_eq!((hits(h, a), lan(h, reason::ACCEPT_ESTABLISHED)), (1, 1));
        assert!(
            ct_entry(h, &key).unwrap().last_seen_ns > seen,
            "entry moved on"
        );
        assert_eq!(h.rule_packets("a-to-b-dns"), 2);

        // Another source port between the same hosts shares the slot but not the entry:
        // its first packet is the policy's, its second the slot's.
        let other = dns(40002).build();
        send(h, &other, "other flow, first");
        assert_eq!((hits(h, a), lan(h, reason::ACCEPT_POLICY)), (1, 2));
        send(h, &other, "other flow, second");
        assert_eq!((hits(h, a), lan(h, reason::ACCEPT_ESTABLISHED)), (2, 2));

        // The entry gone (idle expiry, eviction): the policy's again, which tracks it anew.
        assert!(
            h.dp.conntrack_table()
                .unwrap()
                .remove_if(&key, |_| true)
                .unwrap(),
            "the flow's entry removed"
        );
        send(h, &frame, "entry gone");
        assert_eq!((hits(h, a), lan(h, reason::ACCEPT_POLICY)), (2, 3));
        assert!(ct_entry(h, &key).is_some(), "tracked anew");
        send(h, &frame, "tracked anew");
        assert_eq!(hits(h, a), 3);

        // A new policy generation that still allows both flows: the other flow's next packet
        // is the full path's (the slot is of the old generation) and fills the slot anew;
        // this flow's entry is still of the old one, so its next packet is the full path's
        // too (which checks the flow against the new policy and stamps the entry), and
        // only the one after it is the slot's.
        h.apply(POLICY);
        send(h, &other, "other flow, new generation");
        assert_eq!(hits(h, a), 3);
        let stamped = ct_entry(h, &key).unwrap().generation;
        send(h, &frame, "new generation, entry of the old");
        assert_eq!(
            hits(h, a),
            3,
            "an entry of the old generation is the full path's"
        );
        assert_ne!(ct_entry(h, &key).unwrap().generation, stamped, "re-checked");
        send(h, &frame, "new generation, entry re-checked");
        assert_eq!(hits(h, a), 4);

        // A policy without the flow's rule: the flow is revoked on its next packet.
        h.apply(POLICY_WITHOUT_DNS);
        let revoked = lan(h, reason::DROP_REVOKED);
        assert_eq!(h.xdp_bytes_on(&frame, a).0, XDP_DROP);
        assert_eq!(lan(h, reason::DROP_REVOKED), revoked + 1);
        assert_eq!(hits(h, a), 4);

        // TCP: the SYN and the FIN are the full path's (they move the connection's state),
        // the ACK between them the slot's.
        let tcp = |flags: u8| {
            Spec {
                payload_len: 100,
                l4_checksum: true,
                ..Spec::tcp("198.18.1.10", "198.19.1.10", 40001, 443, flags)
            }
            .build()
        };
        let tcp_key = ct_key(client, 40001, server, 443, 6);
        send(h, &tcp(0x02), "SYN");
        assert_eq!(hits(h, a), 4, "SYN");
        send(h, &tcp(0x10), "ACK");
        assert_eq!(hits(h, a), 5, "ACK");
        send(h, &tcp(0x11), "FIN");
        assert_eq!(hits(h, a), 5, "FIN");
        assert_eq!(ct_entry(h, &tcp_key).unwrap().state, STATE_TCP_CLOSING);
        assert_eq!(h.rule_packets("a-to-b-web"), 3);
    });
}

/// The kernel's tick counter, as /proc/timer_list prints it (the counter the programs read).
fn kernel_jiffies() -> u64 {
    let list = std::fs::read_to_string("/proc/timer_list").unwrap();
    let line = list.lines().find(|l| l.starts_with("jiffies:")).unwrap();
    line["jiffies:".len()..].trim().parse().unwrap()
}

/// The kernel's tick in nanoseconds: the coarse monotonic clock's resolution.
fn tick_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to write.
    assert_eq!(
        unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) },
        0
    );
    res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64
}

/// A slot keeps its route's deadline in the kernel's ticks, converted with the tick's length
/// the loader gives the programs: filled by a packet whose route was just looked up (the route
/// cache keeps a route a second), it stands for at most that second and for nearly all of it.
/// (Converted with the slowest tick Linux has instead of this kernel's, a slot would live 100
/// ticks: 0.4 s at HZ=250.)
#[test]
fn a_slot_stands_for_its_route_cache_second_in_the_kernels_ticks() {
    in_lab("j", false, |h, a, _| {
        let tick = tick_ns();
        let frame = dns(40000).build();
        let before = kernel_jiffies();
        let (action, _) = h.xdp_bytes_on(&frame, a);
        let after = kernel_jiffies();
        assert_eq!(action, XDP_REDIRECT);
        let (src, dst) = (
            u32::from_ne_bytes([198, 18, 1, 10]),
            u32::from_ne_bytes([198, 19, 1, 10]),
        );
        let e = h.lan_flow(slot(src, dst, selector(53, 17, 0), a));
        let second = 1_000_000_000;
        assert!(
            (e.expires_jiffies - before) * tick <= second + (after - before) * tick,
            "at most the route's second: {} ticks of {tick} ns from {before}",
            e.expires_jiffies - before
        );
        assert!(
            e.expires_jiffies.saturating_sub(after) * tick >= second * 9 / 10,
            "nearly all of it: {} ticks of {tick} ns from {after}",
            e.expires_jiffies.saturating_sub(after)
        );
    });
}
