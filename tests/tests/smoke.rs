use gateway_common::stats::{HOOK_TUNNEL_INGRESS, reason};
use gateway_testkit::harness::Harness;
use gateway_testkit::packets::{Spec, TCP_SYN};

#[test]
fn loads_and_judges() {
    let mut h = Harness::new(
        "groups:\n  a: [100.64.10.0/24]\n  b: [100.64.20.0/24]\npolicies:\n  - name: a-to-b\n    source_groups: [a]\n    destination_groups: [b]\n    action: accept\n    protocol: tcp\n    ports: [443]\n",
    );
    let ok = Spec::tcp("100.64.10.1", "100.64.20.1", 40000, 443, TCP_SYN).build();
    let bad = Spec::tcp("100.64.10.1", "100.64.20.1", 40000, 444, TCP_SYN).build();
    assert!(h.ingress_passes(&ok));
    assert!(!h.ingress_passes(&bad));
    assert_eq!(h.count(HOOK_TUNNEL_INGRESS, reason::ACCEPT_POLICY), 1);
    assert_eq!(h.count(HOOK_TUNNEL_INGRESS, reason::DROP_DEFAULT), 1);
}
