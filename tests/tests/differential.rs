//! Differential test: random policies and random packets, where the kernel's verdict (through
//! the compiled tables in the maps) must equal the independent oracle's reading of the policy
//! (`gateway_tests::oracle`, written from the documented semantics, sharing no code with the
//! compiler), rule for rule, and so must the controller's userspace lookup over the same tables.
//! Hostile shapes (truncated, malformed) are mixed in, and a second run sends stateful sequences
//! (handshake, replies, policy changes that revoke flows, flows that come back) with conntrack on.
//!
//! Seeded and deterministic: the seed is printed; `GATEWAY_DIFF_SEED=<n>` replays a run and
//! `GATEWAY_DIFF_POLICIES=<n>` changes how many random policies it tries.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use gateway_common::stats::{HOOK_LAN, HOOK_TUNNEL_INGRESS, reason};
use gateway_dataplane::LoadOptions;
use gateway_policy::{self as policy, Action};
use gateway_testkit::harness::Harness;
use gateway_testkit::packets::{L4, Spec, TCP_ACK, TCP_SYN};
use gateway_tests::oracle::{self, Decision, Expect, Pkt, Tracker};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

const DEFAULT_SEED: u64 = 0x6761_7465_7761_7901;
const DEFAULT_POLICIES: usize = 100;
/// Cases of each policy sent again after the next apply.
const CARRIED_CASES: usize = 20;
const PACKETS_PER_POLICY: usize = 120;

/// Address pools: prefixes and packets are drawn near these, so rules overlap and nest. All but
/// the last IPv4 pool lie in the LAN overlay (100.64.0.0/10), the last one outside it.
const V4_POOLS: [[u8; 4]; 5] = [
    [100, 64, 1, 0],
    [100, 64, 2, 0],
    [100, 70, 0, 0],
    [100, 127, 255, 0],
    [10, 1, 0, 0],
];
const V6_POOLS: [&str; 4] = ["fd00:1::", "fd00:1:0:1::", "fd00:2::", "2001:db8::"];
const COMMON_PORTS: [u16; 10] = [1, 22, 53, 80, 443, 1024, 3000, 8080, 32768, 65535];

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn v4_addr(&mut self) -> Ipv4Addr {
        if self.rng.random_ratio(1, 20) {
            return Ipv4Addr::from(self.rng.random::<u32>());
        }
        let base = u32::from(Ipv4Addr::from(*V4_POOLS.choose(&mut self.rng).unwrap()));
        Ipv4Addr::from(base.wrapping_add(self.rng.random_range(0..2048)))
    }

    fn v6_addr(&mut self) -> Ipv6Addr {
        if self.rng.random_ratio(1, 20) {
            return Ipv6Addr::from(self.rng.random::<u128>());
        }
        let base = u128::from(
            V6_POOLS
                .choose(&mut self.rng)
                .unwrap()
                .parse::<Ipv6Addr>()
                .unwrap(),
        );
        let low = self.rng.random_range(0..4096u128);
        let mid = if self.rng.random_ratio(1, 4) {
            (self.rng.random_range(0..4u128)) << 64
        } else {
            0
        };
        Ipv6Addr::from(base | mid | low)
    }

    fn net(&mut self, v6: bool) -> IpNet {
        if v6 {
            let len = if self.rng.random_ratio(1, 50) {
                0
            } else {
                *[16u8, 32, 48, 56, 63, 64, 65, 96, 112, 120, 124, 127, 128]
                    .choose(&mut self.rng)
                    .unwrap()
            };
            IpNet::V6(Ipv6Net::new(self.v6_addr(), len).unwrap().trunc())
        } else {
            let len = if self.rng.random_ratio(1, 50) {
                0
            } else {
                *[
                    8u8, 10, 12, 15, 16, 17, 19, 20, 21, 23, 24, 25, 27, 28, 29, 30, 31, 32,
                ]
                .choose(&mut self.rng)
                .unwrap()
            };
            IpNet::V4(Ipv4Net::new(self.v4_addr(), len).unwrap().trunc())
        }
    }

    fn nets(&mut self, max: usize) -> Vec<IpNet> {
        let n = self.rng.random_range(1..=max);
        (0..n)
            .map(|_| {
                let v6 = self.rng.random_ratio(1, 4);
                self.net(v6)
            })
            .collect()
    }

    fn port(&mut self) -> u16 {
        if self.rng.random_bool(0.5) {
            *COMMON_PORTS.choose(&mut self.rng).unwrap()
        } else {
            self.rng.random_range(1..=65535)
        }
    }

    /// A `ports:` list (None: the field is left out, any port).
    fn ports(&mut self) -> Option<Vec<String>> {
        match self.rng.random_range(0..20) {
            0..=4 => None,
            5..=6 => Some(vec!["1-65535".into()]),
            _ => {
                let n = self.rng.random_range(1..=3);
                Some(
                    (0..n)
                        .map(|_| {
                            let start = self.port();
                            if self.rng.random_bool(0.5) {
                                start.to_string()
                            } else {
                                let width: u32 = *[1u32, 2, 10, 100, 1000, 30000]
                                    .choose(&mut self.rng)
                                    .unwrap();
                                let end =
                                    (start as u32 + self.rng.random_range(0..=width)).min(65535);
                                format!("{start}-{end}")
                            }
                        })
                        .collect(),
                )
            }
        }
    }

    fn protocol(&mut self) -> &'static str {
        ["all", "all", "tcp", "tcp", "udp", "icmp"]
            .choose(&mut self.rng)
            .unwrap()
    }

    fn group_refs(&mut self, groups: usize) -> Vec<String> {
        if self.rng.random_ratio(1, 7) {
            return vec!["*".into()];
        }
        let mut refs: Vec<String> = (0..self.rng.random_range(1..=2))
            .map(|_| format!("g{}", self.rng.random_range(0..groups)))
            .collect();
        refs.dedup();
        refs
    }

    /// A random policy file.
    fn policy_yaml(&mut self) -> String {
        let mut y = String::from("groups:\n");
        let groups = self.rng.random_range(2..=5);
        for g in 0..groups {
            // Now and then an empty group: it names no address at all.
            let members: Vec<String> = if self.rng.random_ratio(1, 25) {
                Vec::new()
            } else {
                self.nets(4).iter().map(|n| format!("\"{n}\"")).collect()
            };
            writeln!(y, "  g{g}: [{}]", members.join(", ")).unwrap();
        }
        y.push_str("policies:\n");
        let quoted = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for i in 0..self.rng.random_range(1..=20) {
            writeln!(y, "  - name: p{i}").unwrap();
            if self.rng.random_ratio(1, 10) {
                y.push_str("    enabled: false\n");
            }
            let src = self.group_refs(groups);
            let dst = self.group_refs(groups);
            writeln!(y, "    source_groups: [{}]", quoted(&src)).unwrap();
            writeln!(y, "    destination_groups: [{}]", quoted(&dst)).unwrap();
            writeln!(y, "    bidirectional: {}", self.rng.random_ratio(1, 3)).unwrap();
            let drop = self.rng.random_ratio(2, 5);
            writeln!(y, "    action: {}", if drop { "drop" } else { "accept" }).unwrap();
            let protocol = self.protocol();
            writeln!(y, "    protocol: {protocol}").unwrap();
            if let Some(ports) = self.ports()
                && (protocol != "icmp" || ports == ["1-65535"])
            {
                writeln!(y, "    ports: [{}]", quoted(&ports)).unwrap();
            }
            if self.rng.random_ratio(1, 5) {
                let nets: Vec<String> = self.nets(2).iter().map(|n| n.to_string()).collect();
                writeln!(y, "    destination_ips: [{}]", quoted(&nets)).unwrap();
            }
            if drop && self.rng.random_ratio(2, 5) {
                y.push_str("    exceptions:\n");
                for _ in 0..self.rng.random_range(1..=2) {
                    let protocol = self.protocol();
                    writeln!(y, "      - protocol: {protocol}").unwrap();
                    if self.rng.random_bool(0.5) {
                        let nets: Vec<String> =
                            self.nets(2).iter().map(|n| n.to_string()).collect();
                        writeln!(y, "        destination_ips: [{}]", quoted(&nets)).unwrap();
                    }
                    if let Some(ports) = self.ports()
                        && protocol != "icmp"
                    {
                        writeln!(y, "        ports: [{}]", quoted(&ports)).unwrap();
                    }
                }
            }
            if self.rng.random_ratio(2, 3) {
                writeln!(
                    y,
                    "    priority: {}",
                    [10, 50, 100, 100, 200].choose(&mut self.rng).unwrap()
                )
                .unwrap();
            }
        }
        y
    }

    /// An address in, at the edge of, or just outside one of `nets`, or from the pools.
    fn addr(&mut self, nets: &[IpNet], v6: bool) -> IpAddr {
        let fam: Vec<&IpNet> = nets
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .collect();
        if !fam.is_empty() && self.rng.random_ratio(9, 10) {
            let net = **fam.choose(&mut self.rng).unwrap();
            return match net {
                IpNet::V4(n) => {
                    let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                    let a = match self.rng.random_range(0..10) {
                        0 => lo,
                        1 => hi,
                        2 => lo.wrapping_sub(1),
                        3 => hi.wrapping_add(1),
                        _ => lo.wrapping_add(self.rng.random_range(0..=(hi - lo).min(1 << 20))),
                    };
                    IpAddr::V4(Ipv4Addr::from(a))
                }
                IpNet::V6(n) => {
                    let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                    let a = match self.rng.random_range(0..10) {
                        0 => lo,
                        1 => hi,
                        2 => lo.wrapping_sub(1),
                        3 => hi.wrapping_add(1),
                        _ => lo | (self.rng.random::<u128>() & (hi - lo)),
                    };
                    IpAddr::V6(Ipv6Addr::from(a))
                }
            };
        }
        if v6 {
            IpAddr::V6(self.v6_addr())
        } else {
            IpAddr::V4(self.v4_addr())
        }
    }

    /// A destination port: mostly on or next to a boundary the policy names.
    fn dport(&mut self, boundaries: &[u16]) -> u16 {
        match self.rng.random_range(0..20) {
            0 => 0,
            1..=11 if !boundaries.is_empty() => *boundaries.choose(&mut self.rng).unwrap(),
            12..=14 => *COMMON_PORTS.choose(&mut self.rng).unwrap(),
            _ => self.rng.random(),
        }
    }
}

/// Every network a policy file names, and every port boundary (with its neighbours).
fn policy_material(set: &policy::PolicySet) -> (Vec<IpNet>, Vec<u16>) {
    let mut nets: Vec<IpNet> = set
        .groups
        .iter()
        .flat_map(|g| g.members.iter().copied())
        .collect();
    let mut ports = Vec::new();
    let mut add_ports = |p: &policy::PortSet| {
        if let policy::PortSet::Ranges(rs) = p {
            for r in rs {
                for v in [r.start as u32, r.end as u32] {
                    for d in [v.wrapping_sub(1), v, v + 1] {
                        if d <= 65535 {
                            ports.push(d as u16);
                        }
                    }
                }
            }
        }
    };
    for p in &set.policies {
        nets.extend(p.destination_ips.iter().copied());
        add_ports(&p.ports);
        for e in &p.exceptions {
            nets.extend(e.destination_ips.iter().copied());
            add_ports(&e.ports);
        }
    }
    (nets, ports)
}

#[derive(Clone)]
struct Case {
    spec: Spec,
    proto: u8,
    /// The port the kernel judges: the TCP/UDP destination port, the echo identifier, or 0.
    dport: u16,
    hook: u32,
}

fn random_case(g: &mut Gen, terms: &[policy::Term], nets: &[IpNet], boundaries: &[u16]) -> Case {
    let mut v6 = g.rng.random_ratio(1, 4);
    let target = terms.choose(&mut g.rng).filter(|_| g.rng.random_bool(0.5));
    if let Some(t) = target {
        // The family of one of the term's sources that it also names destinations in.
        let dst_fams: Vec<bool> = t
            .dst
            .any_of
            .iter()
            .map(|n| matches!(n, IpNet::V6(_)))
            .collect();
        let both: Vec<bool> = t
            .src
            .any_of
            .iter()
            .map(|n| matches!(n, IpNet::V6(_)))
            .filter(|f| dst_fams.contains(f))
            .collect();
        if let Some(f) = both.choose(&mut g.rng) {
            v6 = *f;
        }
    }
    let (src, dst) = match target {
        // Half the packets aim at one term: a source it names, a destination it names (inside
        // its destination_ips or an exception's when it has them), its protocol and a port it
        // names, so rules actually meet.
        Some(t) => {
            let mut dst_nets = match (&t.dst.and_in, g.rng.random_bool(0.5)) {
                (Some(restrict), true) => restrict.clone(),
                _ => t.dst.any_of.clone(),
            };
            if g.rng.random_ratio(1, 4)
                && let Some(e) = t.exceptions.choose(&mut g.rng)
            {
                dst_nets = e.destination.clone().unwrap_or(dst_nets);
            }
            (g.addr(&t.src.any_of, v6), g.addr(&dst_nets, v6))
        }
        None => (g.addr(nets, v6), g.addr(nets, v6)),
    };
    let sport = g.rng.random_range(1024..=65535);
    let kind = match target.map(|t| t.protocol) {
        Some(policy::Protocol::Tcp) if g.rng.random_ratio(3, 4) => 0,
        Some(policy::Protocol::Udp) if g.rng.random_ratio(3, 4) => 7,
        Some(policy::Protocol::Icmp) if g.rng.random_ratio(3, 4) => 13,
        _ => g.rng.random_range(0..20),
    };
    let mut boundaries = boundaries.to_vec();
    if let Some(policy::PortSet::Ranges(rs)) = target.map(|t| &t.ports) {
        // A port inside the term's ranges, most of the time.
        let r = rs.choose(&mut g.rng).unwrap();
        boundaries = vec![g.rng.random_range(r.start..=r.end); 8];
    }
    let (l4, dport) = match kind {
        0..=6 => {
            let d = g.dport(&boundaries);
            (
                L4::Tcp {
                    sport,
                    dport: d,
                    flags: TCP_SYN,
                },
                d,
            )
        }
        7..=12 => {
            let d = g.dport(&boundaries);
            (L4::Udp { sport, dport: d }, d)
        }
        13..=15 => {
            let id = g.rng.random();
            (L4::echo_request(v6, id), id)
        }
        16 => {
            // ICMP that is neither echo nor error: timestamp request, router solicitation.
            (
                L4::Icmp {
                    kind: if v6 { 133 } else { 13 },
                    code: 0,
                    rest: [0; 4],
                    body: vec![0; 12],
                },
                0,
            )
        }
        _ => {
            let proto = *[47u8, 50, 132, 89, 59].choose(&mut g.rng).unwrap();
            (
                L4::Raw {
                    proto,
                    payload: vec![0x5a; g.rng.random_range(1..24)],
                },
                0,
            )
        }
    };
    let proto = l4.proto(v6);
    let mut spec = Spec::new(&src.to_string(), &dst.to_string(), l4);
    spec.payload_len = g.rng.random_range(0..16);
    // The LAN program polices traffic toward the IPv4 overlay by the same tables.
    let to_overlay =
        matches!(dst, IpAddr::V4(d) if "100.64.0.0/10".parse::<Ipv4Net>().unwrap().contains(&d));
    let hook = if to_overlay && g.rng.random_ratio(1, 3) {
        HOOK_LAN
    } else {
        HOOK_TUNNEL_INGRESS
    };
    Case {
        spec,
        proto,
        dport,
        hook,
    }
}

fn expected_reason(d: &Decision) -> u32 {
    match (d.accept, d.rule) {
        (true, _) => reason::ACCEPT_POLICY,
        (false, Some(_)) => reason::DROP_POLICY,
        (false, None) => reason::DROP_DEFAULT,
    }
}

/// A malformed variant of a well-formed frame, and the drop reason the README promises for it
/// ("malformed or truncated packets ... are dropped and counted by reason").
fn hostile(g: &mut Gen, frame: &[u8], v6: bool) -> (Vec<u8>, u32, &'static str) {
    let mut f = frame.to_vec();
    match g.rng.random_range(0..4) {
        // Cut anywhere after the Ethernet header: the IP length no longer fits.
        0 | 1 => {
            // (Cuts inside the IP header are in fixtures.rs: the kernel's skb test run refuses
            // most of them for TC.)
            let ip_header = if v6 { 40 } else { 20 };
            f.truncate(g.rng.random_range(14 + ip_header..frame.len()));
            (f, reason::DROP_TRUNCATED, "truncated")
        }
        // An IPv4 header length under 20 bytes, or the IPv6 version nibble wrong.
        2 => {
            if v6 {
                f[14] = 0x40 | (f[14] & 0x0f);
            } else {
                f[14] = 0x44;
            }
            (f, reason::DROP_BAD_HEADER, "bad IP header")
        }
        // An IP length that claims more than the frame holds.
        _ => {
            let at = if v6 { 14 + 4 } else { 14 + 2 };
            let claimed =
                u16::from_be_bytes([f[at], f[at + 1]]).saturating_add(g.rng.random_range(1..200));
            f[at..at + 2].copy_from_slice(&claimed.to_be_bytes());
            (f, reason::DROP_TRUNCATED, "length beyond the frame")
        }
    }
}

#[test]
fn kernel_matches_the_oracle() {
    let seed = env_number("GATEWAY_DIFF_SEED").unwrap_or(DEFAULT_SEED);
    let policies = env_number("GATEWAY_DIFF_POLICIES")
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_POLICIES);
    println!(
        "differential: seed {seed:#x} (GATEWAY_DIFF_SEED={seed:#x} replays), {policies} policies"
    );
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
    };
    // Without conntrack every packet is judged by the tables alone (or by the kernel's per-CPU
    // cache of their verdicts: one CPU throughout, so that cache is hit and must be right).
    gateway_testkit::harness::pin_thread_to_cpu(0);
    let mut h = Harness::with_options(
        "policies: []\n",
        LoadOptions {
            conntrack: false,
            ..Default::default()
        },
    );
    // Cases of the previous policy, sent again under the next one: a verdict cached under the
    // old policy must not decide them.
    let mut carried: Vec<Case> = Vec::new();

    let mut cases = 0usize;
    let mut hostile_cases = 0usize;
    let mut by_reason = [0usize; 3];
    let mut by_hook = [0usize; 2];
    let mut families = [0usize; 2];
    let started = std::time::Instant::now();
    for p in 0..policies {
        let yaml = g.policy_yaml();
        let set = policy::parse_str(&yaml, "random.yaml")
            .unwrap_or_else(|e| panic!("generated policy rejected: {e}\n{yaml}"));
        let terms = set.terms();
        let compiled = h.apply_set(&set);
        let rules = compiled.rules.len() as u32;
        for r in 0..rules {
            assert_eq!(
                h.rule_count(r),
                0,
                "policy {p}: rule {r}'s counter was not reset by the apply"
            );
        }
        let mut rule_mirror = vec![0u64; rules as usize];
        let (nets, boundaries) = policy_material(&set);
        let fail = |what: String, case: &Case| -> ! {
            panic!(
                "seed {seed:#x}, policy {p}: {what}\npacket: {} -> {} proto {} dport {} at {}\n{:?}\npolicy:\n{yaml}\nterms: {terms:#?}",
                case.spec.src,
                case.spec.dst,
                case.proto,
                case.dport,
                if case.hook == HOOK_LAN {
                    "lan (xdp)"
                } else {
                    "tunnel ingress (tc)"
                },
                case.spec,
            )
        };
        let replays = std::mem::take(&mut carried);
        for i in 0..replays.len() + PACKETS_PER_POLICY {
            let replay = i < replays.len();
            let case = if replay {
                replays[i].clone()
            } else {
                random_case(&mut g, &terms, &nets, &boundaries)
            };
            if !replay && carried.len() < CARRIED_CASES {
                carried.push(case.clone());
            }
            if !replay && g.rng.random_ratio(1, 12) {
                let (frame, want, what) =
                    hostile(&mut g, &case.spec.build(), case.spec.src.is_ipv6());
                let before = h.reason_count(case.hook, want);
                let ran = if case.hook == HOOK_LAN {
                    h.try_xdp(&frame)
                        .map(|a| a == gateway_testkit::harness::XDP_PASS)
                } else {
                    h.try_tc(true, &frame)
                        .map(|a| a == gateway_testkit::harness::TC_ACT_OK)
                };
                let passed = match ran {
                    Ok(p) => p,
                    Err(e) => fail(
                        format!(
                            "{what} frame {} refused by BPF_PROG_TEST_RUN: {e}",
                            gateway_testkit::harness::hex(&frame)
                        ),
                        &case,
                    ),
                };
                if passed || h.reason_count(case.hook, want) - before != 1 {
                    fail(
                        format!(
                            "{what} frame {}: expected a drop counted as reason {want}",
                            gateway_testkit::harness::hex(&frame)
                        ),
                        &case,
                    );
                }
                hostile_cases += 1;
                cases += 1;
                continue;
            }
            let want = oracle::decide(&set, case.spec.src, case.spec.dst, case.proto, case.dport);
            let looked = compiled
                .lookup(case.spec.src, case.spec.dst, case.proto, case.dport)
                .judgement;
            if (looked.action == Action::Accept, looked.rule) != (want.accept, want.rule) {
                fail(
                    format!("Compiled::lookup says {looked:?}, the oracle {want:?}"),
                    &case,
                );
            }
            let reason = expected_reason(&want);
            let before = h.reason_count(case.hook, reason);
            let passed = h.run_hook(case.hook, &case.spec.build());
            let counted = h.reason_count(case.hook, reason) - before;
            if passed != want.accept || counted != 1 {
                let got = h.hook_counters(case.hook);
                fail(
                    format!(
                        "kernel {} (reason {reason} counted {counted}x), oracle {want:?}; hook counters now {}",
                        if passed { "passed" } else { "dropped" },
                        got
                    ),
                    &case,
                );
            }
            if let Some(rule) = want.rule {
                rule_mirror[rule as usize] += 1;
                let n = h.rule_count(rule);
                if n != rule_mirror[rule as usize] {
                    let all: Vec<u64> = (0..rules).map(|r| h.rule_count(r)).collect();
                    fail(
                        format!(
                            "rule {rule} decided by the oracle; kernel rule counters {all:?}, expected {rule_mirror:?}"
                        ),
                        &case,
                    );
                }
            }
            cases += 1;
            by_reason[match reason {
                reason::ACCEPT_POLICY => 0,
                reason::DROP_POLICY => 1,
                _ => 2,
            }] += 1;
            by_hook[usize::from(case.hook == HOOK_LAN)] += 1;
            families[usize::from(case.spec.src.is_ipv6())] += 1;
        }
        // Nothing was counted for a rule the reference did not name.
        let all: Vec<u64> = (0..rules).map(|r| h.rule_count(r)).collect();
        assert_eq!(
            all, rule_mirror,
            "seed {seed:#x}, policy {p}: per-rule counters\n{yaml}"
        );
    }
    println!(
        "differential: {cases} cases in {:.1?}: {hostile_cases} hostile; {} accepted, {} dropped by a rule, {} by default; {} at tunnel ingress, {} at lan; {} IPv4, {} IPv6",
        started.elapsed(),
        by_reason[0],
        by_reason[1],
        by_reason[2],
        by_hook[0],
        by_hook[1],
        families[0],
        families[1],
    );
    assert!(
        cases >= 10_000 || policies < DEFAULT_POLICIES,
        "only {cases} cases"
    );
    // The generator must exercise every outcome, or the comparison proves little.
    for (i, n) in by_reason.iter().enumerate() {
        assert!(
            *n * 20 >= cases || policies < DEFAULT_POLICIES,
            "outcome {i} is rare: {by_reason:?}"
        );
    }
    assert!(
        hostile_cases * 20 >= cases || policies < DEFAULT_POLICIES,
        "too few hostile frames: {hostile_cases}"
    );
}

const STATEFUL_POLICIES: usize = 40;
const FLOWS_PER_POLICY: usize = 30;

/// One tracked flow of the stateful run: its first packet as the initiator sent it.
#[derive(Clone)]
struct Opened {
    spec: Spec,
    v6: bool,
}

fn pkt_of(spec: &Spec, proto: u8) -> Pkt {
    let (sport, dport, echo_request, syn_only) = match &spec.l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => (
            *sport,
            *dport,
            false,
            flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        ),
        L4::Udp { sport, dport } => (*sport, *dport, false, false),
        L4::Icmp { kind, rest, .. } => {
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            (id, id, *kind == 8 || *kind == 128, false)
        }
        L4::Raw { .. } => (0, 0, false, false),
    };
    Pkt {
        src: spec.src,
        dst: spec.dst,
        proto,
        sport,
        dport,
        echo_request,
        syn_only,
    }
}

/// The packet of `flow` going the other way (a reply), or the initiator's next one.
fn next_packet(g: &mut Gen, flow: &Opened, reply: bool) -> Spec {
    let s = &flow.spec;
    let (src, dst) = if reply {
        (s.dst, s.src)
    } else {
        (s.src, s.dst)
    };
    let l4 = match s.l4 {
        L4::Tcp { sport, dport, .. } => {
            // Now and then the initiator tries a new connection on the same ports.
            let flags = if reply {
                TCP_SYN | TCP_ACK
            } else if g.rng.random_ratio(1, 8) {
                TCP_SYN
            } else {
                TCP_ACK
            };
            if reply {
                L4::Tcp {
                    sport: dport,
                    dport: sport,
                    flags,
                }
            } else {
                L4::Tcp {
                    sport,
                    dport,
                    flags,
                }
            }
        }
        L4::Udp { sport, dport } => {
            if reply {
                L4::Udp {
                    sport: dport,
                    dport: sport,
                }
            } else {
                L4::Udp { sport, dport }
            }
        }
        L4::Icmp { rest, .. } => {
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            if reply {
                L4::echo_reply(flow.v6, id)
            } else {
                L4::echo_request(flow.v6, id)
            }
        }
        ref other => other.clone(),
    };
    Spec::new(&src.to_string(), &dst.to_string(), l4)
}

fn expect_reason(e: Expect) -> u32 {
    match e {
        Expect::AcceptPolicy(_) => reason::ACCEPT_POLICY,
        Expect::Established => reason::ACCEPT_ESTABLISHED,
        Expect::DropPolicy(_) => reason::DROP_POLICY,
        Expect::DropDefault => reason::DROP_DEFAULT,
        Expect::Revoked => reason::DROP_REVOKED,
    }
}

/// With conntrack on: flows are opened, answered and continued, and every few packets the
/// policy changes under them; the oracle's model of tracking and revocation says what each
/// packet gets.
#[test]
fn stateful_sequences_match_the_oracle() {
    let seed = env_number("GATEWAY_DIFF_SEED").unwrap_or(DEFAULT_SEED) ^ 0x5747;
    println!("stateful differential: seed {seed:#x}");
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
    };
    let mut h = Harness::new("policies: []\n");
    let mut tracker = Tracker::default();
    let mut open: Vec<Opened> = Vec::new();
    let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut cases = 0usize;
    for p in 0..STATEFUL_POLICIES {
        let yaml = g.policy_yaml();
        let set = policy::parse_str(&yaml, "random.yaml").unwrap();
        let terms = set.terms();
        h.apply_set(&set);
        tracker.policy_changed();
        let (nets, boundaries) = policy_material(&set);
        let mut send = |g: &mut Gen,
                        h: &mut Harness,
                        tracker: &mut Tracker,
                        spec: &Spec,
                        what: &str| {
            let proto = spec.l4.proto(spec.src.is_ipv6());
            let want = tracker.packet(&set, &pkt_of(spec, proto));
            let to_overlay = matches!(spec.dst, IpAddr::V4(d) if "100.64.0.0/10".parse::<Ipv4Net>().unwrap().contains(&d));
            let hook = if to_overlay && g.rng.random_ratio(1, 3) {
                HOOK_LAN
            } else {
                HOOK_TUNNEL_INGRESS
            };
            let r = expect_reason(want);
            let before = h.reason_count(hook, r);
            let passed = h.run_hook(hook, &spec.build());
            if passed != want.passes() || h.reason_count(hook, r) - before != 1 {
                let got = h.hook_counters(hook);
                panic!(
                    "seed {seed:#x}, policy {p}, {what}: {} -> {} {:?}: oracle {want:?}, kernel {} (counters {})\npolicy:\n{yaml}",
                    spec.src,
                    spec.dst,
                    spec.l4,
                    if passed { "passed" } else { "dropped" },
                    got
                );
            }
            *counts
                .entry(match want {
                    Expect::AcceptPolicy(_) => "accept",
                    Expect::Established => "established",
                    Expect::DropPolicy(_) => "drop rule",
                    Expect::DropDefault => "drop default",
                    Expect::Revoked => "revoked",
                })
                .or_default() += 1;
        };
        // Flows opened under earlier policies carry on, in either direction: some are revoked
        // by this policy, some come back as new flows.
        for _ in 0..open.len().min(3 * FLOWS_PER_POLICY) {
            let flow = open.choose(&mut g.rng).unwrap().clone();
            let reply = g.rng.random_bool(0.5);
            let spec = next_packet(&mut g, &flow, reply);
            send(&mut g, &mut h, &mut tracker, &spec, "an older flow");
            cases += 1;
        }
        // New flows: opened, answered, continued.
        for _ in 0..FLOWS_PER_POLICY {
            let mut case = random_case(&mut g, &terms, &nets, &boundaries);
            if case.spec.src == case.spec.dst {
                // A host talking to itself never crosses the gateway (and has no direction).
                continue;
            }
            let v6 = case.spec.src.is_ipv6();
            if matches!(case.spec.l4, L4::Raw { .. })
                || matches!(case.spec.l4, L4::Icmp { kind, .. } if kind != 8 && kind != 128)
            {
                let id = g.rng.random();
                case.spec.l4 = L4::echo_request(v6, id);
            }
            let flow = Opened {
                spec: case.spec.clone(),
                v6,
            };
            send(&mut g, &mut h, &mut tracker, &flow.spec, "first packet");
            let reply = next_packet(&mut g, &flow, true);
            send(&mut g, &mut h, &mut tracker, &reply, "reply");
            let more = next_packet(&mut g, &flow, false);
            send(&mut g, &mut h, &mut tracker, &more, "continuation");
            cases += 3;
            open.push(flow);
        }
    }
    println!("stateful differential: {cases} packets: {counts:?}");
    for outcome in ["accept", "established", "drop default", "revoked"] {
        assert!(
            counts.get(outcome).copied().unwrap_or(0) * 50 >= cases,
            "outcome {outcome} is rare: {counts:?}"
        );
    }
}
