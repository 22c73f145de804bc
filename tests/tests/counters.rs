//! Per-policy counters as policies come and go (the seed's per-session policies are created and
//! deleted all day): totals never go backwards, and the series stay bounded by the policies in
//! force, with everything the others counted under "(retired)".

use gateway::metrics::Metrics;
use gateway_dataplane::RETIRED_POLICIES;
use gateway_testkit::harness::Harness;
use gateway_testkit::packets::{Spec, TCP_SYN};

fn session_policy(i: u32) -> String {
    format!(
        "groups:\n  peers: [100.64.10.0/24]\npolicies:\n  - name: session-{i}\n    source_groups: [peers]\n    destination_groups: [\"*\"]\n    action: accept\n    protocol: tcp\n    ports: [443]\n  - name: base\n    source_groups: [peers]\n    destination_groups: [\"*\"]\n    action: accept\n    protocol: udp\n    ports: [53]\n"
    )
}

#[test]
fn policy_series_stay_bounded_as_policies_come_and_go() {
    let mut h = Harness::new(&session_policy(0));
    let mut metrics = Metrics::new().unwrap();
    let sessions = 30u32;
    for i in 0..sessions {
        if i > 0 {
            h.apply(&session_policy(i));
        }
        // Two packets per session policy, one for the policy every version keeps.
        for port in [40000, 40001] {
            assert!(
                h.ingress_passes(
                    &Spec::tcp(
                        "100.64.10.1",
                        "100.64.20.1",
                        port + i as u16 * 2,
                        443,
                        TCP_SYN
                    )
                    .build()
                )
            );
        }
        assert!(h.ingress_passes(
            &Spec::udp("100.64.10.1", "100.64.20.1", 41000 + i as u16, 53).build()
        ));
        metrics.refresh(&h.dp).unwrap();
    }
    let counters = h.dp.rule_counters().unwrap();
    let names: Vec<&str> = counters.iter().map(|(n, _)| n.as_str()).collect();
    // In force: the last two session policies (active and previous slot), base, and the fold.
    assert_eq!(
        names,
        vec![
            "base",
            &format!("session-{}", sessions - 2),
            &format!("session-{}", sessions - 1),
            RETIRED_POLICIES
        ],
        "{counters:?}"
    );
    let packets = |name: &str| {
        counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.packets)
            .unwrap()
    };
    assert_eq!(
        packets("base"),
        sessions as u64,
        "a policy in force keeps its whole history"
    );
    assert_eq!(
        packets(RETIRED_POLICIES),
        2 * (sessions as u64 - 2),
        "every retired session's packets, folded"
    );
    assert_eq!(
        counters.iter().map(|(_, c)| c.packets).sum::<u64>(),
        3 * sessions as u64,
        "nothing lost"
    );

    let text = metrics.render().unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gateway_policy_packets_total{"))
        .collect();
    assert_eq!(series.len(), 4, "{series:#?}");
    assert!(
        text.contains(&format!(
            "gateway_policy_packets_total{{policy=\"{RETIRED_POLICIES}\"}} {}",
            2 * (sessions - 2)
        )),
        "{text}"
    );
    assert!(
        !text.contains("policy=\"session-0\""),
        "a retired policy's series must go"
    );
}
