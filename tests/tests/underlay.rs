//! The WireGuard-aware underlay filter by BPF_PROG_TEST_RUN: datagrams to the WireGuard port
//! built byte by byte from the protocol's message sizes (initiation 148, response 92, cookie
//! reply 64, transport data at least 32 and a multiple of 16), and the verdicts and counters the
//! filter gives them.

use gateway_common::{
    maps as names,
    underlay::{Rate, UnderlaySettings, reason::*},
};
use gateway_testkit::{
    harness::{Harness, XDP_DROP, XDP_PASS, pin_thread_to_cpu},
    packets::{L4, Spec},
};

const POLICY: &str = "groups: {}\npolicies: []\n";
const PORT: u16 = 51820;
const GW: &str = "198.51.100.1";

/// A UDP datagram from `src` to the gateway's `dport` whose payload is `len` bytes starting
/// with `head`.
fn udp(src: &str, dport: u16, len: usize, head: [u8; 4]) -> Spec {
    let dst = if src.contains(':') { "2001:db8::1" } else { GW };
    let mut b = Vec::with_capacity(8 + len);
    b.extend_from_slice(&40_000u16.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b.extend_from_slice(&((8 + len) as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend(head.iter().take(len.min(4)));
    b.resize(8 + len, 0x5a);
    Spec::new(
        src,
        dst,
        L4::Raw {
            proto: 17,
            payload: b,
        },
    )
}

fn wg(src: &str, len: usize, kind: u8) -> Vec<u8> {
    udp(src, PORT, len, [kind, 0, 0, 0]).build()
}

fn harness(settings: UnderlaySettings) -> Harness {
    let mut h = Harness::new(POLICY);
    h.dp.set_underlay(&[PORT], settings)
        .expect("underlay settings");
    h
}

fn default_rates() -> UnderlaySettings {
    UnderlaySettings {
        per_source: Rate::new(20, 5),
        per_cpu: Rate::new(2_000, 200),
    }
}

fn run(h: &mut Harness, frame: &[u8]) -> u32 {
    let (action, out) = h.xdp_program_bytes(names::PROG_XDP_WG_UNDERLAY, frame);
    assert_eq!(out, frame, "the filter never rewrites");
    action
}

fn count(h: &Harness, r: u32) -> u64 {
    h.dp.underlay_counters().unwrap()[r as usize].packets
}

#[test]
fn only_wireguard_messages_reach_the_port() {
    let mut h = harness(default_rates());
    for (len, kind, r) in [
        (148, 1, INITIATION),
        (92, 2, RESPONSE),
        (64, 3, COOKIE_REPLY),
        (32, 4, TRANSPORT),
        (1424, 4, TRANSPORT),
    ] {
        let before = count(&h, r);
        assert_eq!(
            run(&mut h, &wg("203.0.113.7", len, kind)),
            XDP_PASS,
            "type {kind}, {len} bytes"
        );
        assert_eq!(count(&h, r) - before, 1);
    }
    assert_eq!(run(&mut h, &wg("2001:db8::7", 148, 1)), XDP_PASS, "IPv6");
    // Sizes no message of its type has, unknown types, reserved bytes set, an empty datagram.
    let malformed = [
        wg("203.0.113.7", 149, 1),
        wg("203.0.113.7", 147, 1),
        wg("203.0.113.7", 148, 2),
        wg("203.0.113.7", 16, 4),
        wg("203.0.113.7", 40, 4),
        wg("203.0.113.7", 148, 9),
        udp("203.0.113.7", PORT, 148, [1, 0, 1, 0]).build(),
        udp("203.0.113.7", PORT, 0, [0; 4]).build(),
    ];
    for (i, frame) in malformed.iter().enumerate() {
        let before = count(&h, DROP_MALFORMED) + count(&h, DROP_TRUNCATED);
        assert_eq!(run(&mut h, frame), XDP_DROP, "malformed #{i}");
        assert_eq!(
            count(&h, DROP_MALFORMED) + count(&h, DROP_TRUNCATED) - before,
            1,
            "malformed #{i}"
        );
    }
    // Other ports and protocols are not the filter's business.
    let before = count(&h, PASS_OTHER);
    assert_eq!(
        run(&mut h, &udp("203.0.113.7", 53, 148, [9, 9, 9, 9]).build()),
        XDP_PASS
    );
    assert_eq!(
        run(
            &mut h,
            &Spec::tcp("203.0.113.7", GW, 40_000, PORT, 0x02).build()
        ),
        XDP_PASS
    );
    assert_eq!(count(&h, PASS_OTHER) - before, 2);
}

#[test]
fn fragments_are_judged_by_their_first() {
    let mut h = harness(default_rates());
    // A 1424-byte transport message split by the path: the first fragment carries the UDP
    // header, whose length is the whole datagram's.
    let mut first = udp("203.0.113.7", PORT, 1424, [4, 0, 0, 0]);
    first.frag = Some((0, true));
    first.frag_id = 77;
    let full = first.clone().build();
    let cut = 14 + 20 + 8 + 600;
    let mut frame = full[..cut].to_vec();
    // The IP header says what this fragment holds.
    let total = (cut - 14) as u16;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum = gateway_testkit::packets::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
    let before = count(&h, TRANSPORT);
    assert_eq!(run(&mut h, &frame), XDP_PASS);
    assert_eq!(count(&h, TRANSPORT) - before, 1);
    let mut later = Spec {
        frag: Some((76, false)),
        frag_id: 77,
        raw_l4: Some(vec![0x5a; 832]),
        ..udp("203.0.113.7", PORT, 0, [0; 4])
    };
    later.payload_len = 0;
    let before = count(&h, PASS_FRAGMENT);
    assert_eq!(run(&mut h, &later.build()), XDP_PASS);
    assert_eq!(count(&h, PASS_FRAGMENT) - before, 1);
    // A first fragment of something no WireGuard message is.
    let mut bad = udp("203.0.113.7", PORT, 1000, [1, 0, 0, 0]);
    bad.frag = Some((0, true));
    assert_eq!(run(&mut h, &bad.build()), XDP_DROP);
}

#[test]
fn handshake_initiations_are_rate_limited_per_source_then_in_total() {
    // BPF_PROG_TEST_RUN runs on the caller's CPU: one CPU's total rate applies throughout.
    pin_thread_to_cpu(0);
    let mut h = harness(default_rates());
    for i in 0..5 {
        assert_eq!(
            run(&mut h, &wg("203.0.113.8", 148, 1)),
            XDP_PASS,
            "initiation {i} of the burst"
        );
    }
    let before = count(&h, DROP_RATE_SOURCE);
    assert_eq!(
        run(&mut h, &wg("203.0.113.8", 148, 1)),
        XDP_DROP,
        "the sixth at once"
    );
    assert_eq!(count(&h, DROP_RATE_SOURCE) - before, 1);
    assert_eq!(
        run(&mut h, &wg("203.0.113.9", 148, 1)),
        XDP_PASS,
        "another source has its own allowance"
    );
    assert_eq!(
        run(&mut h, &wg("203.0.113.8", 1424, 4)),
        XDP_PASS,
        "transport data is never limited"
    );
    assert_eq!(
        run(&mut h, &wg("203.0.113.8", 92, 2)),
        XDP_PASS,
        "nor responses"
    );

    // The total: three at once from anyone, then none, whatever the source.
    let mut h = harness(UnderlaySettings {
        per_source: Rate::new(0, 0),
        per_cpu: Rate::new(10, 3),
    });
    for i in 0..3 {
        assert_eq!(
            run(&mut h, &wg(&format!("203.0.113.{}", 20 + i), 148, 1)),
            XDP_PASS,
            "initiation {i}"
        );
    }
    let before = count(&h, DROP_RATE_TOTAL);
    assert_eq!(
        run(&mut h, &wg("203.0.113.30", 148, 1)),
        XDP_DROP,
        "a new source past the total"
    );
    assert_eq!(count(&h, DROP_RATE_TOTAL) - before, 1);
    std::thread::sleep(std::time::Duration::from_millis(120));
    assert_eq!(
        run(&mut h, &wg("203.0.113.31", 148, 1)),
        XDP_PASS,
        "the rate refills (10 a second)"
    );
}

/// The TC variant (what `auto` attaches on a veth, where XDP would take the peer's UDP GSO
/// away) gives every frame the XDP program's verdict and counts it under the same reason.
#[test]
fn the_tc_variant_judges_as_the_xdp_program_does() {
    const TC_ACT_OK: u32 = 0;
    const TC_ACT_SHOT: u32 = 2;
    let mut h = harness(default_rates());
    let frames = [
        wg("203.0.113.7", 148, 1),
        wg("203.0.113.7", 92, 2),
        wg("203.0.113.7", 64, 3),
        wg("203.0.113.7", 32, 4),
        wg("203.0.113.7", 1424, 4),
        wg("2001:db8::7", 148, 1),
        wg("203.0.113.7", 149, 1),
        wg("203.0.113.7", 40, 4),
        wg("203.0.113.7", 148, 9),
        udp("203.0.113.7", PORT, 148, [1, 0, 1, 0]).build(),
        udp("203.0.113.7", PORT, 0, [0; 4]).build(),
        udp("203.0.113.7", 53, 148, [9, 9, 9, 9]).build(),
        Spec::tcp("203.0.113.7", GW, 40_000, PORT, 0x02).build(),
    ];
    let packets = |h: &Harness| -> Vec<u64> {
        h.dp.underlay_counters()
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .collect()
    };
    for (i, frame) in frames.iter().enumerate() {
        let before = packets(&h);
        let xdp = run(&mut h, frame);
        let mid = packets(&h);
        let (tc, out) = h.tc_program_bytes(names::PROG_TC_WG_UNDERLAY, frame);
        let after = packets(&h);
        assert_eq!(&out, frame, "#{i}: the filter never rewrites");
        assert!(tc == TC_ACT_OK || tc == TC_ACT_SHOT, "#{i}: {tc}");
        assert_eq!(xdp == XDP_PASS, tc == TC_ACT_OK, "#{i}: XDP {xdp}, TC {tc}");
        assert_eq!(xdp == XDP_DROP, tc == TC_ACT_SHOT, "#{i}");
        let by_xdp: Vec<u64> = mid.iter().zip(&before).map(|(m, b)| m - b).collect();
        let by_tc: Vec<u64> = after.iter().zip(&mid).map(|(a, m)| a - m).collect();
        assert_eq!(by_xdp, by_tc, "#{i}: counted under the same reason");
        assert_eq!(by_tc.iter().sum::<u64>(), 1, "#{i}");
    }
}

/// Taking the filter off its interfaces (XDP and TC) detaches each link through the program that
/// holds it, with no error: XDP links belong to the program they run, not to the LAN program.
/// (This host's bpftool predates tcx and cannot list the TC link; the XDP one is checked.)
#[test]
fn detaching_takes_the_filter_off_its_interfaces_without_errors() {
    let (ns, _other) = two_veths("gwundet");
    let link = |dev: &str| {
        String::from_utf8_lossy(&ns.exec(&["ip", "link", "show", dev]).unwrap().stdout).into_owned()
    };
    let mut h = harness(default_rates());
    ns.run_scoped(|| {
        use gateway_dataplane::LanAttach;
        h.dp.attach_underlay("u0", LanAttach::XdpGeneric).unwrap();
        assert_eq!(
            h.dp.attach_underlay("u1", LanAttach::Auto).unwrap(),
            "tc ingress (auto: a veth, where XDP would switch off its peer's UDP GSO)"
        );
    })
    .unwrap();
    assert!(link("u0").contains("xdpgeneric"), "{}", link("u0"));
    assert!(!link("u1").contains("xdp"), "{}", link("u1"));
    let errors = ns.run_scoped(|| h.dp.detach_all()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!link("u0").contains("xdp"), "{}", link("u0"));
}

/// An interface in two roles whose programs want the same hook (a single-NIC host listing eth0
/// as LAN and underlay, both at TC on a veth): the second attach is refused, rather than taking
/// the first one's link and ending what it enforces; at different hooks both hold.
#[test]
fn a_second_program_at_an_interfaces_hook_is_refused() {
    use gateway_dataplane::LanAttach;
    let (ns, _other) = two_veths("gwunhook");
    let mut h = harness(default_rates());
    ns.run_scoped(|| {
        h.dp.attach_lan("u0", LanAttach::Tc).unwrap();
        let e = h.dp.attach_underlay("u0", LanAttach::Tc).unwrap_err();
        assert!(
            format!("{e:#}").contains("u0 has tc_lan_ingress at tc ingress"),
            "{e:#}"
        );
        let programs: Vec<_> =
            h.dp.attachments()
                .iter()
                .filter(|a| a.interface == "u0")
                .map(|a| a.program)
                .collect();
        assert_eq!(programs, ["tc_lan_ingress"], "the LAN program stays alone");
        // The LAN program at TC and the underlay filter in XDP: two hooks, both attached.
        h.dp.attach_lan("u1", LanAttach::Tc).unwrap();
        h.dp.attach_underlay("u1", LanAttach::XdpGeneric).unwrap();
        assert!(h.dp.detach_all().is_empty());
    })
    .unwrap();
}

/// Two namespaces (`prefix<pid>-a`, `-b`) joined by two veth pairs, u0–v0 and u1–v1.
fn two_veths(prefix: &str) -> (gateway_testkit::netns::Netns, gateway_testkit::netns::Netns) {
    use gateway_testkit::netns::{Netns, remove_stale, veth};
    remove_stale(prefix);
    let id = format!("{prefix}{}", std::process::id());
    let (ns, other) = (
        Netns::create(&format!("{id}-a")).unwrap(),
        Netns::create(&format!("{id}-b")).unwrap(),
    );
    veth(&ns, "u0", &other, "v0").unwrap();
    veth(&ns, "u1", &other, "v1").unwrap();
    (ns, other)
}
