//! The conntrack table's buckets: which flow a full bucket gives up for a new one.

use gateway_common::conntrack::{CtKey, FAMILY_V4, flow_key};
use gateway_dataplane::LoadOptions;
use gateway_testkit::harness::Harness;
use gateway_testkit::packets::Spec;

const ALLOW_DNS: &str = "groups:\n  a: [100.64.10.0/24]\n  b: [100.64.20.0/24]\npolicies:\n  - name: a-dns\n    source_groups: [a]\n    destination_groups: [b]\n    action: accept\n    protocol: udp\n    ports: [53]\n";
const A: [u8; 4] = [100, 64, 10, 1];
const B: [u8; 4] = [100, 64, 20, 1];

fn key(sport: u16) -> CtKey {
    let wide = |a: [u8; 4]| {
        let mut w = [0u8; 16];
        w[..4].copy_from_slice(&a);
        w
    };
    flow_key(&wide(A), sport, &wide(B), 53, 17, FAMILY_V4, None).0
}

fn query(sport: u16) -> Vec<u8> {
    Spec::udp("100.64.10.1", "100.64.20.1", sport, 53).build()
}

fn answer(sport: u16) -> Vec<u8> {
    Spec::udp("100.64.20.1", "100.64.10.1", 53, sport).build()
}

#[test]
fn a_full_bucket_gives_up_its_oldest_unanswered_flow_then_its_oldest() {
    // Two flows configured: the table has twice their ways, one bucket of four, so every flow
    // meets every other.
    let opts = LoadOptions {
        limits: gateway_dataplane::LimitsConfig {
            conntrack_entries: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut h = Harness::with_options(ALLOW_DNS, opts);
    let table = h.dp.conntrack_table().unwrap();
    let age = |sport: u16, seconds: u64| {
        let now = gateway_dataplane::sweep::monotonic_coarse_ns();
        assert!(
            table
                .update(&key(sport), |e| {
                    e.last_seen_ns = now - seconds * 1_000_000_000;
                    true
                })
                .unwrap(),
            "flow {sport} is in the table"
        );
    };
    let tracked = |sport: u16| table.get(&key(sport)).is_some();

    for sport in 40_001..=40_004 {
        assert!(h.ingress_passes(&query(sport)), "query {sport}");
    }
    // Answers: the policy allows only a's queries, so they pass as their flows' packets.
    for sport in [40_001, 40_002] {
        assert!(h.ingress_passes(&answer(sport)), "answer {sport}");
    }
    assert_eq!(table.count(), 4);

    // The oldest flow was answered; the oldest unanswered one goes.
    age(40_001, 30);
    age(40_003, 20);
    age(40_002, 10);
    age(40_004, 10);
    let evicted =
        |h: &Harness| -> Vec<u64> { h.dp.evictions().unwrap().iter().map(|e| e.2).collect() };
    assert_eq!(evicted(&h), [0, 0, 0, 0], "four flows in four ways");
    assert!(h.ingress_passes(&query(40_005)));
    assert!(tracked(40_005), "the new flow is tracked");
    assert!(!tracked(40_003), "the oldest unanswered flow was given up");
    // Counted as conntrack's unanswered eviction.
    assert_eq!(evicted(&h), [1, 0, 0, 0]);
    assert!(
        tracked(40_001),
        "an answered flow stays while unanswered ones are there"
    );
    // The given-up flow's answer is now judged as a flow of its own: b may not start one.
    assert!(!h.ingress_passes(&answer(40_003)));

    // Every flow answered: the oldest goes, as an LRU table would drop it.
    for sport in [40_004, 40_005] {
        assert!(h.ingress_passes(&answer(sport)), "answer {sport}");
    }
    age(40_001, 5);
    age(40_002, 40);
    age(40_004, 30);
    age(40_005, 1);
    assert!(h.ingress_passes(&query(40_006)));
    assert!(tracked(40_006), "the new flow is tracked");
    assert!(!tracked(40_002), "the oldest flow was given up");
    assert_eq!(evicted(&h), [1, 1, 0, 0], "an answered flow given up");
    for sport in [40_001, 40_004, 40_005] {
        assert!(tracked(sport), "flow {sport} stays");
        assert!(h.ingress_passes(&answer(sport)), "answer {sport}");
    }
    assert!(!h.ingress_passes(&answer(40_002)));
}

#[test]
fn a_bucket_being_written_drops_its_flows_packets_and_one_left_taken_is_released() {
    use aya::maps::Array;
    use gateway_common::{
        buckets::{TableShape, bucket_of},
        conntrack::CtBucket,
        maps as names,
        stats::{HOOK_TUNNEL_INGRESS, reason},
    };

    let mut h = Harness::new(ALLOW_DNS);
    assert!(h.ingress_passes(&query(40_001)));
    let shape: TableShape = Array::try_from(h.dp.ebpf().map(names::CONNTRACK_SHAPE).unwrap())
        .unwrap()
        .get(&0, 0)
        .unwrap();
    let index = bucket_of(&key(40_001), &shape);
    // The flow's bucket taken, as by a writer (a controller killed mid-write) that never
    // releases it.
    {
        let mut table: Array<_, CtBucket> =
            Array::try_from(h.dp.ebpf_mut().map_mut(names::CONNTRACK).unwrap()).unwrap();
        let mut bucket = table.get(&index, 0).unwrap();
        assert_eq!(bucket.seq & 1, 0);
        bucket.seq += 1;
        table.set(index, bucket, 0).unwrap();
    }
    // Whether the flow lives cannot be told: its answer is a counted drop, not a new flow
    // (b may not start one) and not its flow's packet.
    let dropped = h.delta(HOOK_TUNNEL_INGRESS, reason::DROP_INTERNAL, |h| {
        assert!(!h.ingress_passes(&answer(40_001)));
    });
    assert_eq!(dropped, 1);
    // The controller's sweep finds the bucket left taken and releases it; the flow is as it was.
    let r = h.dp.sweep_conntrack(None).unwrap();
    assert_eq!(r.live, 1);
    let established = h.delta(HOOK_TUNNEL_INGRESS, reason::ACCEPT_ESTABLISHED, |h| {
        assert!(h.ingress_passes(&answer(40_001)));
    });
    assert_eq!(established, 1);
}
