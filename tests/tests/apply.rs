//! What an apply writes to the kernel's policy maps. The inactive slot still holds the policy
//! before last, so an apply writes only the entries that differ from it; and what it skips must
//! still be enforced, as the packets below check.

use gateway_dataplane::EntryWrites;
use gateway_testkit::harness::Harness;
use gateway_testkit::packets::{Spec, TCP_SYN};

/// Peers (IPv4 and IPv6) to a web group on `port`, and DNS to it with `dns` (accept or drop).
fn policy(port: u16, dns: &str) -> String {
    format!(
        r#"
groups:
  peers: ["100.64.10.0/24", "fd00:10::/64"]
  web: ["100.64.20.0/24", "fd00:20::/64"]
policies:
  - name: web
    source_groups: [peers]
    destination_groups: [web]
    action: accept
    protocol: tcp
    ports: ["{port}"]
  - name: dns
    source_groups: [peers]
    destination_groups: [web]
    action: {dns}
    protocol: udp
    ports: ["53"]
"#
    )
}

fn apply(h: &mut Harness, yaml: &str) -> EntryWrites {
    let set = gateway_policy::parse_str(yaml, "test.yaml").expect("test policy");
    let compiled = gateway_policy::compile::compile(&set, &Default::default()).expect("compile");
    let report = h.dp.apply(&compiled).expect("apply");
    h.slot = report.slot;
    report.entries
}

/// Whether a SYN from a peer to the web group on `port` passes, over IPv4 and over IPv6 (the
/// two answers must agree).
fn web_open(h: &mut Harness, port: u16, sport: u16) -> bool {
    let v4 =
        h.ingress_passes(&Spec::tcp("100.64.10.1", "100.64.20.1", sport, port, TCP_SYN).build());
    let v6 = h.ingress_passes(&Spec::tcp("fd00:10::1", "fd00:20::1", sport, port, TCP_SYN).build());
    assert_eq!(v4, v6, "IPv4 and IPv6 disagree on port {port}");
    v4
}

#[test]
fn an_apply_writes_only_what_its_slot_does_not_hold_and_enforces_all_of_it() {
    let mut h = Harness::new(&policy(443, "accept"));
    // Slot 1 is empty: the second policy is written whole, in batches (this kernel has
    // BPF_MAP_UPDATE_BATCH for hash and LPM maps).
    let first = apply(&mut h, &policy(8443, "accept"));
    assert!(first.written > 0, "{first:?}");
    assert_eq!((first.removed, first.unchanged), (0, 0), "{first:?}");
    assert_eq!(
        first.batched, first.written,
        "every write went in a batch: {first:?}"
    );
    assert!(web_open(&mut h, 8443, 40000) && !web_open(&mut h, 443, 40001));

    // Back to 443: its slot still holds exactly that policy, so nothing is written, and it is
    // in force.
    let back = apply(&mut h, &policy(443, "accept"));
    assert_eq!((back.written, back.removed), (0, 0), "{back:?}");
    assert!(back.unchanged > 0, "{back:?}");
    assert!(web_open(&mut h, 443, 40002) && !web_open(&mut h, 8443, 40003));
    assert!(h.ingress_passes(&Spec::udp("100.64.10.1", "100.64.20.1", 40012, 53).build()));

    // Another port only moves the port table: the verdicts of 8443's slot serve port 22 as
    // they are.
    let port_only = apply(&mut h, &policy(22, "accept"));
    assert_eq!(
        (port_only.written, port_only.removed),
        (0, 0),
        "{port_only:?}"
    );
    assert!(web_open(&mut h, 22, 40004));
    assert!(!web_open(&mut h, 443, 40005) && !web_open(&mut h, 8443, 40006));

    // DNS dropped, into the slot of 443: only the verdicts that differ are written, and the
    // slot then enforces the new policy, not a mix of the two.
    let third = apply(&mut h, &policy(22, "drop"));
    assert!(third.written > 0 && third.unchanged > 0, "{third:?}");
    assert_eq!(
        third.batched,
        third.written + third.removed,
        "every write and removal went in a batch: {third:?}"
    );
    assert!(web_open(&mut h, 22, 40007));
    assert!(!web_open(&mut h, 443, 40008) && !web_open(&mut h, 8443, 40009));
    assert!(!h.ingress_passes(&Spec::udp("100.64.10.1", "100.64.20.1", 40010, 53).build()));
    assert!(!h.ingress_passes(&Spec::udp("fd00:10::1", "fd00:20::1", 40011, 53).build()));
}
