//! The controller's conntrack sweep: expiry, and flows a new policy no longer allows.

use gateway_common::{
    settings::Timeouts,
    stats::{HOOK_TUNNEL_INGRESS, reason},
};
use gateway_dataplane::LoadOptions;
use gateway_policy::{self as policy, compile};
use gateway_testkit::harness::Harness;
use gateway_testkit::packets::{Spec, TCP_SYN};

const ALLOW_BOTH: &str = "groups:\n  a: [100.64.10.0/24]\n  b: [100.64.20.0/24]\npolicies:\n  - name: a-web\n    source_groups: [a]\n    destination_groups: [b]\n    action: accept\n    protocol: tcp\n    ports: [443]\n  - name: a-dns\n    source_groups: [a]\n    destination_groups: [b]\n    action: accept\n    protocol: udp\n    ports: [53]\n";
const ALLOW_DNS_ONLY: &str = "groups:\n  a: [100.64.10.0/24]\n  b: [100.64.20.0/24]\npolicies:\n  - name: a-dns\n    source_groups: [a]\n    destination_groups: [b]\n    action: accept\n    protocol: udp\n    ports: [53]\n";

#[test]
fn sweep_removes_revoked_flows_and_keeps_allowed_ones() {
    let mut h = Harness::new(ALLOW_BOTH);
    assert!(
        h.ingress_passes(&Spec::tcp("100.64.10.1", "100.64.20.1", 40000, 443, TCP_SYN).build())
    );
    assert!(h.ingress_passes(&Spec::udp("100.64.10.1", "100.64.20.1", 40001, 53).build()));
    let set = policy::parse_str(ALLOW_DNS_ONLY, "p.yaml").unwrap();
    let compiled = compile::compile(&set, &compile::Limits::default()).unwrap();
    h.dp.apply(&compiled).unwrap();
    let r = h.dp.sweep_conntrack(Some(&compiled)).unwrap();
    assert_eq!((r.scanned, r.revoked, r.expired), (2, 1, 0));
    // The swept TCP flow is ended, as the kernel ends one: its packets are dropped as revoked,
    // and its reply leaving through the tunnel does not revive it.
    let revoked = h.delta(HOOK_TUNNEL_INGRESS, reason::DROP_REVOKED, |h| {
        assert!(
            !h.ingress_passes(&Spec::tcp("100.64.20.1", "100.64.10.1", 443, 40000, 0x12).build())
        );
    });
    assert_eq!(revoked, 1);
    assert!(!h.ingress_passes(&Spec::tcp("100.64.10.1", "100.64.20.1", 40000, 443, 0x10).build()));
    // The DNS flow's reply still passes as established.
    assert!(h.ingress_passes(&Spec::udp("100.64.20.1", "100.64.10.1", 53, 40001).build()));
    // The ended flow stays (as a tombstone) until its idle timeout; it is not revoked twice.
    let r = h.dp.sweep_conntrack(None).unwrap();
    assert_eq!((r.scanned, r.revoked, r.expired), (2, 0, 0));
}

#[test]
fn sweep_removes_expired_flows() {
    let opts = LoadOptions {
        timeouts: Timeouts {
            udp: 0,
            ..Timeouts::default()
        },
        ..Default::default()
    };
    let mut h = Harness::with_options(ALLOW_BOTH, opts);
    assert!(h.ingress_passes(&Spec::udp("100.64.10.1", "100.64.20.1", 40001, 53).build()));
    assert!(
        h.ingress_passes(&Spec::tcp("100.64.10.1", "100.64.20.1", 40000, 443, TCP_SYN).build())
    );
    // The coarse clock ticks every few milliseconds; a zero timeout expires at the next tick.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let r = h.dp.sweep_conntrack(None).unwrap();
    assert_eq!(
        (r.scanned, r.expired),
        (2, 1),
        "only the UDP flow has expired"
    );
}
