//! Host tests of the compiler: the compiled tables, looked up the way the kernel looks them up,
//! agree with the reference evaluator on random policies; hand-worked address and port classes;
//! the limits; and a large policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use gateway_common::acl::{
    self, AclTables, AddrClass, V4_CHUNK_ENTRIES, V4_ROOT_ENTRIES, V6KeyData, Verdict, VerdictKey,
};
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::addr::{self, Classes, SIDE_DST, SIDE_SRC, Trie, mark, net_bits};
use super::ports::PortClasses;
use super::*;
use crate::reference::{self, Judgement};
use crate::{Exception, Group, GroupRef, Policy, PortRange};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn range(start: u16, end: u16) -> PortRange {
    PortRange { start, end }
}

fn group(name: &str, members: &[&str]) -> Group {
    Group {
        name: name.into(),
        members: members.iter().map(|m| net(m)).collect(),
    }
}

fn named(names: &[&str]) -> Vec<GroupRef> {
    names
        .iter()
        .map(|n| {
            if *n == "*" {
                GroupRef::Any
            } else {
                GroupRef::Named(n.to_string())
            }
        })
        .collect()
}

fn policy(name: &str, src: &[&str], dst: &[&str], action: Action) -> Policy {
    Policy {
        name: name.into(),
        enabled: true,
        description: String::new(),
        source_groups: named(src),
        destination_groups: named(dst),
        bidirectional: false,
        action,
        protocol: Protocol::All,
        ports: PortSet::Any,
        destination_ips: Vec::new(),
        exceptions: Vec::new(),
        priority: crate::DEFAULT_PRIORITY,
    }
}

fn tcp(mut p: Policy, ports: &[(u16, u16)]) -> Policy {
    p.protocol = Protocol::Tcp;
    p.ports = PortSet::from_ranges(ports.iter().map(|&(a, b)| range(a, b)).collect());
    p
}

fn compile_ok(set: &PolicySet) -> Compiled {
    compile(set, &Limits::default()).unwrap_or_else(|e| panic!("compile: {e}\n{set:#?}"))
}

/// Compiled lookup and reference agree on one packet; returns the judgement.
#[track_caller]
fn agree(c: &Compiled, set: &PolicySet, src: &str, dst: &str, proto: u8, dport: u16) -> Judgement {
    let (s, d) = (ip(src), ip(dst));
    let want = reference::evaluate(&set.terms(), s, d, proto, dport);
    let got = c.lookup(s, d, proto, dport).judgement;
    assert_eq!(got, want, "{src} -> {dst} proto {proto} dport {dport}");
    got
}

const DENY: Judgement = Judgement {
    action: Action::Drop,
    rule: None,
};

// ---------------------------------------------------------------------------------------------
// (a) Random policies: compiled tables against the reference evaluator.

fn seed() -> u64 {
    match std::env::var("GATEWAY_TEST_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("GATEWAY_TEST_SEED={s:?} is not a number"))
        }
        Err(_) => 0x6a7e_3a11_5eed_0001,
    }
}

const V4_ANCHORS: [u32; 12] = [
    0x0a01_0203, // 10.1.2.3
    0x0a01_024d, // 10.1.2.77
    0x0a01_03c8, // 10.1.3.200
    0x0a01_8001, // 10.1.128.1
    0x0ac8_0505, // 10.200.5.5
    0x0a01_0200, // 10.1.2.0
    0xac10_0001, // 172.16.0.1
    0xc0a8_ffff, // 192.168.255.255
    0x6440_0135, // 100.64.1.53
    0x0000_0000,
    0xffff_ffff,
    0x0a01_ffff, // 10.1.255.255
];

const V6_ANCHORS: [u128; 6] = [
    0x2001_0db8_0000_0000_0000_0000_0000_0001,
    0x2001_0db8_0000_0001_0000_0000_0000_0005,
    0x2001_0db8_ffff_0000_0000_0000_0000_0001,
    0xfd00_0000_0000_0000_0000_0000_0000_0001,
    0x0000_0000_0000_0000_0000_0000_0000_0001,
    0x0000_0000_0000_0000_0000_ffff_0a01_0203,
];

/// Ports at and around which rule ranges start and end.
const PORT_POOL: [u16; 14] = [
    1, 2, 21, 22, 23, 53, 80, 443, 1000, 1023, 1024, 32768, 65534, 65535,
];

const PROTOS: [u8; 9] = [6, 6, 6, 17, 17, 1, 58, 47, 0];

struct Gen {
    rng: StdRng,
    v4: Vec<IpNet>,
    v6: Vec<IpNet>,
}

impl Gen {
    fn v4_net(&mut self) -> IpNet {
        let mut a = V4_ANCHORS[self.rng.random_range(0..V4_ANCHORS.len())];
        if self.rng.random_bool(0.3) {
            a ^= self.rng.random::<u32>() & 0xffff;
        }
        // Mostly long prefixes, so that every chunk level gets work.
        let len = if self.rng.random_bool(0.65) {
            self.rng.random_range(17..=32)
        } else {
            self.rng.random_range(0..=16)
        };
        IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc())
    }

    fn v6_net(&mut self) -> IpNet {
        let mut a = V6_ANCHORS[self.rng.random_range(0..V6_ANCHORS.len())];
        if self.rng.random_bool(0.3) {
            a ^= self.rng.random::<u128>() & 0xffff_ffff;
        }
        let len = match self.rng.random_range(0..4) {
            0 => self.rng.random_range(0..=32),
            1 => self.rng.random_range(33..=64),
            2 => self.rng.random_range(65..=127),
            _ => 128,
        };
        IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc())
    }

    fn pool_net(&mut self) -> IpNet {
        if self.rng.random_bool(0.8) {
            self.v4[self.rng.random_range(0..self.v4.len())]
        } else {
            self.v6[self.rng.random_range(0..self.v6.len())]
        }
    }

    fn nets(&mut self, max: usize) -> Vec<IpNet> {
        let n = self.rng.random_range(1..=max);
        (0..n).map(|_| self.pool_net()).collect()
    }

    fn port(&mut self) -> u16 {
        match self.rng.random_range(0..4) {
            0 => self.rng.random_range(1..=u16::MAX),
            _ => PORT_POOL[self.rng.random_range(0..PORT_POOL.len())],
        }
    }

    fn ports(&mut self) -> PortSet {
        if self.rng.random_bool(0.35) {
            return PortSet::Any;
        }
        let n = self.rng.random_range(1..=3);
        let ranges = (0..n)
            .map(|_| {
                let a = self.port();
                if self.rng.random_bool(0.5) {
                    range(a, a)
                } else {
                    let b = self.port();
                    range(a.min(b), a.max(b))
                }
            })
            .collect();
        PortSet::from_ranges(ranges)
    }

    fn protocol(&mut self) -> Protocol {
        [
            Protocol::All,
            Protocol::All,
            Protocol::Tcp,
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Icmp,
        ][self.rng.random_range(0..6)]
    }

    fn proto_ports(&mut self) -> (Protocol, PortSet) {
        let p = self.protocol();
        let ports = if p == Protocol::Icmp {
            PortSet::Any
        } else {
            self.ports()
        };
        (p, ports)
    }

    fn group_refs(&mut self, groups: &[Group]) -> Vec<GroupRef> {
        let n = self.rng.random_range(1..=2);
        (0..n)
            .map(|_| {
                if self.rng.random_bool(0.12) {
                    GroupRef::Any
                } else {
                    GroupRef::Named(groups[self.rng.random_range(0..groups.len())].name.clone())
                }
            })
            .collect()
    }

    fn policy_set(&mut self) -> PolicySet {
        let nv4 = self.rng.random_range(3..=8);
        self.v4 = (0..nv4).map(|_| self.v4_net()).collect();
        let nv6 = self.rng.random_range(1..=4);
        self.v6 = (0..nv6).map(|_| self.v6_net()).collect();
        let groups: Vec<Group> = (0..self.rng.random_range(1..=5))
            .map(|i| {
                let members = if self.rng.random_bool(0.05) {
                    Vec::new()
                } else {
                    self.nets(3)
                };
                Group {
                    name: format!("g{i}"),
                    members,
                }
            })
            .collect();
        let policies = (0..self.rng.random_range(1..=7))
            .map(|i| {
                let action = if self.rng.random_bool(0.5) {
                    Action::Accept
                } else {
                    Action::Drop
                };
                let (protocol, ports) = self.proto_ports();
                let exceptions = if action == Action::Drop {
                    (0..self.rng.random_range(0..=2))
                        .map(|_| {
                            let (protocol, ports) = self.proto_ports();
                            let destination_ips = if self.rng.random_bool(0.6) {
                                self.nets(2)
                            } else {
                                Vec::new()
                            };
                            Exception {
                                destination_ips,
                                protocol,
                                ports,
                            }
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Policy {
                    name: format!("p{i}"),
                    enabled: self.rng.random_bool(0.9),
                    description: String::new(),
                    source_groups: self.group_refs(&groups),
                    destination_groups: self.group_refs(&groups),
                    bidirectional: self.rng.random_bool(0.3),
                    action,
                    protocol,
                    ports,
                    destination_ips: if self.rng.random_bool(0.25) {
                        self.nets(2)
                    } else {
                        Vec::new()
                    },
                    exceptions,
                    priority: [1, 50, 100, 100, 100, 200][self.rng.random_range(0..6)],
                }
            })
            .collect();
        PolicySet { groups, policies }
    }

    /// An address near the edges of the pool's prefixes (or anywhere).
    fn addr(&mut self, v4: bool) -> IpAddr {
        let n = if v4 {
            self.v4[self.rng.random_range(0..self.v4.len())]
        } else {
            self.v6[self.rng.random_range(0..self.v6.len())]
        };
        self.addr_near(n)
    }

    /// An address at, just outside, or inside the edges of `n` (or, sometimes, anywhere).
    fn addr_near(&mut self, n: IpNet) -> IpAddr {
        let edge = self.rng.random_range(0..6);
        self.addr_at(n, edge)
    }

    /// Mostly inside `n`, at its edges.
    fn addr_inside(&mut self, n: IpNet) -> IpAddr {
        let edge = [0, 1, 4, 4, 0, 1, 4, 2, 3, 5][self.rng.random_range(0..10)];
        self.addr_at(n, edge)
    }

    /// 0: first address, 1: last, 2: just below, 3: just above, 4: inside, 5: elsewhere.
    fn addr_at(&mut self, n: IpNet, edge: u32) -> IpAddr {
        if let IpNet::V4(n) = n {
            let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
            let a = match edge {
                0 => lo,
                1 => hi,
                2 => lo.wrapping_sub(1),
                3 => hi.wrapping_add(1),
                4 => self.rng.random_range(lo..=hi),
                _ => {
                    if self.rng.random_bool(0.5) {
                        self.rng.random()
                    } else {
                        V4_ANCHORS[self.rng.random_range(0..V4_ANCHORS.len())]
                    }
                }
            };
            IpAddr::V4(Ipv4Addr::from(a))
        } else if let IpNet::V6(n) = n {
            let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
            let a = match edge {
                0 => lo,
                1 => hi,
                2 => lo.wrapping_sub(1),
                3 => hi.wrapping_add(1),
                4 => lo + (self.rng.random::<u128>() & (hi - lo)),
                _ => V6_ANCHORS[self.rng.random_range(0..V6_ANCHORS.len())],
            };
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            unreachable!()
        }
    }

    /// A packet aimed at one policy: addresses near its groups' members (or its destination_ips
    /// or an exception's), protocol and port near what it names. None if it has no addresses.
    fn packet_for(&mut self, set: &PolicySet) -> Option<(IpAddr, IpAddr, u8, u16)> {
        let p = &set.policies[self.rng.random_range(0..set.policies.len())];
        let members = |refs: &[GroupRef]| -> Vec<IpNet> {
            refs.iter()
                .flat_map(|r| match r {
                    GroupRef::Any => crate::any_nets(),
                    GroupRef::Named(n) => set
                        .groups
                        .iter()
                        .find(|g| &g.name == n)
                        .map(|g| g.members.clone())
                        .unwrap_or_default(),
                })
                .collect()
        };
        let (mut a, mut b) = (members(&p.source_groups), members(&p.destination_groups));
        let mut dst_choices = p.destination_ips.clone();
        dst_choices.extend(
            p.exceptions
                .iter()
                .flat_map(|e| e.destination_ips.iter().copied()),
        );
        if !dst_choices.is_empty() && self.rng.random_bool(0.5) {
            b = dst_choices;
        }
        if p.bidirectional && self.rng.random_bool(0.5) {
            std::mem::swap(&mut a, &mut b);
        }
        if a.is_empty() || b.is_empty() {
            return None;
        }
        let src_net = a[self.rng.random_range(0..a.len())];
        let src = self.addr_inside(src_net);
        let dst_net = b[self.rng.random_range(0..b.len())];
        let dst = self.addr_inside(dst_net);
        // Same family as the source, mostly.
        let dst = if src.is_ipv4() != dst.is_ipv4() && self.rng.random_bool(0.9) {
            let same: Vec<IpNet> = b
                .iter()
                .copied()
                .filter(|n| matches!(n, IpNet::V4(_)) == src.is_ipv4())
                .collect();
            if same.is_empty() {
                dst
            } else {
                let n = same[self.rng.random_range(0..same.len())];
                self.addr_inside(n)
            }
        } else {
            dst
        };
        let (protocol, ports) = match p.exceptions.first() {
            Some(e) if self.rng.random_bool(0.5) => (e.protocol, &e.ports),
            _ => (p.protocol, &p.ports),
        };
        let proto = match protocol {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => [1, 58][self.rng.random_range(0..2)],
            Protocol::All => PROTOS[self.rng.random_range(0..PROTOS.len())],
        };
        let dport = match ports {
            PortSet::Ranges(r) if self.rng.random_bool(0.8) => {
                let r = r[self.rng.random_range(0..r.len())];
                match self.rng.random_range(0..4) {
                    0 => r.start.saturating_sub(1),
                    1 => r.end.saturating_add(1),
                    2 => r.end,
                    _ => r.start,
                }
            }
            _ => self.dport(),
        };
        Some((src, dst, proto, dport))
    }

    fn dport(&mut self) -> u16 {
        match self.rng.random_range(0..5) {
            0 => 0,
            1 => self.rng.random(),
            _ => {
                let p = PORT_POOL[self.rng.random_range(0..PORT_POOL.len())];
                match self.rng.random_range(0..3) {
                    0 => p.saturating_sub(1),
                    1 => p,
                    _ => p.saturating_add(1),
                }
            }
        }
    }
}

#[test]
fn random_policies_agree_with_reference() {
    const SETS: usize = 400;
    const PACKETS: usize = 100;
    let seed = seed();
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        v4: Vec::new(),
        v6: Vec::new(),
    };
    let mut cases = 0usize;
    let mut decided = [0usize; 3]; // accepted by a rule, dropped by a rule, default deny
    let start = Instant::now();
    for set_index in 0..SETS {
        let set = g.policy_set();
        let compiled = compile(&set, &Limits::default()).unwrap_or_else(|e| {
            panic!("GATEWAY_TEST_SEED={seed} set {set_index}: compile failed: {e}\n{set:#?}")
        });
        let terms = set.terms();
        for _ in 0..PACKETS {
            let aimed = if g.rng.random_bool(0.6) {
                g.packet_for(&set)
            } else {
                None
            };
            let (src, dst, proto, dport) = match aimed {
                Some(packet) => packet,
                None => {
                    let v4 = g.rng.random_bool(0.75);
                    let src = g.addr(v4);
                    // Mostly the same family; occasionally mixed (nonsense, but both must agree).
                    let same_family = g.rng.random_bool(0.97);
                    let dst = g.addr(if same_family { v4 } else { !v4 });
                    (
                        src,
                        dst,
                        PROTOS[g.rng.random_range(0..PROTOS.len())],
                        g.dport(),
                    )
                }
            };
            let want = reference::evaluate(&terms, src, dst, proto, dport);
            let got = compiled.lookup(src, dst, proto, dport);
            if got.judgement != want {
                panic!(
                    "GATEWAY_TEST_SEED={seed} set {set_index}: {src} -> {dst} proto {proto} dport {dport}: \
                     compiled {:?} (classes src {:?} dst {:?}), reference {want:?}\nrules {:?}\n{set:#?}",
                    got.judgement,
                    got.src_class,
                    got.dst_class,
                    set.rules().iter().map(|r| &r.name).collect::<Vec<_>>(),
                );
            }
            decided[match want {
                Judgement { rule: None, .. } => 2,
                Judgement {
                    action: Action::Accept,
                    ..
                } => 0,
                Judgement {
                    action: Action::Drop,
                    ..
                } => 1,
            }] += 1;
            cases += 1;
        }
    }
    eprintln!(
        "GATEWAY_TEST_SEED={seed}: {cases} packets over {SETS} policies agree ({} accepted by a rule, {} dropped by a rule, {} default deny) in {:?}",
        decided[0],
        decided[1],
        decided[2],
        start.elapsed()
    );
    assert!(cases >= 20_000);
    // The generator is not degenerate: every outcome occurs often.
    for d in decided {
        assert!(
            d > cases / 20,
            "outcomes {decided:?}: the generator should exercise every outcome"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Hand-worked examples.

/// The IPv4 tables alone, for classify_v4.
struct V4Only<'a>(&'a addr::V4Tables);

impl AclTables for V4Only<'_> {
    fn root(&self, index: u32) -> Option<AddrClass> {
        self.0.root.get(index as usize).copied()
    }
    fn chunk(&self, index: u32) -> Option<AddrClass> {
        self.0.chunks.get(index as usize).copied()
    }
    fn v6(&self, _: &V6KeyData) -> Option<AddrClass> {
        None
    }
    fn port_class(&self, _: u32) -> Option<u32> {
        None
    }
    fn verdict(&self, _: &VerdictKey) -> Option<Verdict> {
        None
    }
}

fn v4(s: &str) -> u32 {
    u32::from(s.parse::<Ipv4Addr>().unwrap())
}

#[test]
fn nested_v4_prefixes_make_chunks_and_classes() {
    // Atoms 0-3: /8, /16, /24, /32, nested. All are sources; /8 and /32 are also destinations.
    let nets = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32"];
    let mut trie = Trie::new();
    for (atom, n) in nets.iter().enumerate() {
        let (bits, len, is_v4) = net_bits(&net(n));
        assert!(is_v4);
        trie.insert(bits, len, mark(atom as u32, SIDE_SRC));
        if atom == 0 || atom == 3 {
            trie.insert(bits, len, mark(atom as u32, SIDE_DST));
        }
    }
    let mut classes = Classes::new();
    let t = addr::build_v4(&trie, &mut classes, 100).unwrap();
    assert_eq!(t.root.len(), V4_ROOT_ENTRIES as usize);
    // /24 and /32 below a /16 root entry: one chunk per 4 bits from bit 16 to bit 32.
    assert_eq!(t.chunks.len(), 4 * V4_CHUNK_ENTRIES as usize);

    let class = |a: &str| {
        acl::classify_v4(&V4Only(&t), 0, 0, v4(a)).unwrap_or_else(|| panic!("{a}: dangling link"))
    };
    let lists = |a: &str| {
        let c = class(a);
        (
            classes.src_lists[c.src as usize].clone(),
            classes.dst_lists[c.dst as usize].clone(),
        )
    };
    let cases: [(&str, &[u32], &[u32]); 17] = [
        ("10.1.2.3", &[0, 1, 2, 3], &[0, 3]),
        ("10.1.2.2", &[0, 1, 2], &[0]),
        ("10.1.2.4", &[0, 1, 2], &[0]),
        ("10.1.2.0", &[0, 1, 2], &[0]),
        ("10.1.2.255", &[0, 1, 2], &[0]),
        ("10.1.2.19", &[0, 1, 2], &[0]),
        ("10.1.1.255", &[0, 1], &[0]),
        ("10.1.3.0", &[0, 1], &[0]),
        ("10.1.18.3", &[0, 1], &[0]),
        ("10.1.0.0", &[0, 1], &[0]),
        ("10.1.255.255", &[0, 1], &[0]),
        ("10.0.255.255", &[0], &[0]),
        ("10.2.0.0", &[0], &[0]),
        ("10.0.0.0", &[0], &[0]),
        ("10.255.255.255", &[0], &[0]),
        ("9.255.255.255", &[], &[]),
        ("11.0.0.0", &[], &[]),
    ];
    for (a, src, dst) in cases {
        assert_eq!(lists(a), (src.to_vec(), dst.to_vec()), "{a}");
    }
    // Outside every prefix: class 0 on both sides.
    assert_eq!(class("11.0.0.0"), AddrClass { src: 0, dst: 0 });
    assert_eq!(class("0.0.0.0"), AddrClass { src: 0, dst: 0 });
    // Five source classes (with the empty one), three destination classes.
    assert_eq!(classes.src_lists.len(), 5);
    assert_eq!(classes.dst_lists.len(), 3);

    // The root: 10.0/16 and 10.255/16 hold the /8's class, 10.1/16 links to a chunk.
    let root = |a: &str| t.root[(v4(a) >> 16) as usize];
    assert!(!root("10.0.0.0").is_link());
    assert_eq!(root("10.0.0.0"), root("10.255.0.0"));
    assert!(root("10.1.0.0").is_link());
    assert_eq!(root("9.255.0.0"), AddrClass::default());
    assert_eq!(root("11.0.0.0"), AddrClass::default());
    assert_eq!(t.root.iter().filter(|e| e.is_link()).count(), 1);
    // Chunk path for 10.1.2.3: nibbles 0, 2, 0, 3; each chunk links once, the last none.
    let mut entry = root("10.1.0.0");
    for (level, nibble) in [0usize, 2, 0, 3].into_iter().enumerate() {
        assert!(entry.is_link());
        let chunk = entry.dst as usize;
        let entries = &t.chunks[chunk * 16..chunk * 16 + 16];
        let expect_links = usize::from(level < 3);
        assert_eq!(
            entries.iter().filter(|e| e.is_link()).count(),
            expect_links,
            "chunk {chunk}"
        );
        entry = entries[nibble];
    }
    assert!(!entry.is_link());
    assert_eq!(entry, class("10.1.2.3"));
}

#[test]
fn chunks_needed_per_prefix_length() {
    for len in 0..=32u8 {
        let n = IpNet::V4(
            ipnet::Ipv4Net::new(Ipv4Addr::new(10, 1, 2, 3), len)
                .unwrap()
                .trunc(),
        );
        let mut trie = Trie::new();
        let (bits, l, _) = net_bits(&n);
        trie.insert(bits, l, mark(0, SIDE_SRC));
        let mut classes = Classes::new();
        let t = addr::build_v4(&trie, &mut classes, 100).unwrap();
        let want = if len <= 16 {
            0
        } else {
            (len as usize - 16).div_ceil(4)
        };
        assert_eq!(t.chunks.len(), want * V4_CHUNK_ENTRIES as usize, "/{len}");
        // Inside and just outside the prefix.
        let lo = u32::from(match n {
            IpNet::V4(n) => n.network(),
            _ => unreachable!(),
        });
        let hi = u32::from(match n {
            IpNet::V4(n) => n.broadcast(),
            _ => unreachable!(),
        });
        let tables = V4Only(&t);
        let inside = |a: u32| {
            classes.src_lists[acl::classify_v4(&tables, 0, 0, a).unwrap().src as usize] == [0]
        };
        assert!(inside(lo) && inside(hi), "/{len}");
        if lo > 0 {
            assert!(!inside(lo - 1), "/{len}");
        }
        if hi < u32::MAX {
            assert!(!inside(hi + 1), "/{len}");
        }
        // Exceeding the chunk limit by one.
        if want > 0 {
            let mut classes = Classes::new();
            assert_eq!(
                addr::build_v4(&trie, &mut classes, want as u32 - 1).err(),
                Some(CompileError::TooManyChunks {
                    limit: want as u32 - 1
                }),
                "/{len}"
            );
        }
    }
}

#[test]
fn nested_prefixes_through_the_compiler() {
    let set = PolicySet {
        groups: vec![
            group("g8", &["10.0.0.0/8"]),
            group("g16", &["10.1.0.0/16"]),
            group("g24", &["10.1.2.0/24"]),
            group("g32", &["10.1.2.3/32"]),
            group(
                "v6",
                &["2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::1/128"],
            ),
        ],
        policies: vec![
            // Each to itself, the most specific first; the /8 drops.
            policy("p32", &["g32"], &["g8"], Action::Accept),
            tcp(
                policy("p24", &["g24"], &["g8"], Action::Accept),
                &[(443, 443)],
            ),
            tcp(
                policy("p16", &["g16"], &["g8"], Action::Accept),
                &[(22, 22)],
            ),
            policy("p8", &["g8"], &["g8"], Action::Drop),
            policy("p6", &["v6"], &["v6"], Action::Accept),
        ],
    };
    let c = compile_ok(&set);
    assert_eq!(c.stats.v4_chunks, 4);
    // Sources: /32, /24, /16 and /8 regions, the IPv6 group, and the empty class.
    assert_eq!(
        (c.stats.src_classes, c.stats.dst_classes),
        (6, 3),
        "{:?}",
        c.stats
    );
    // ::/0 plus the three prefixes (the group is one atom, so they share one class).
    assert_eq!(c.v6.len(), 4);
    // p8 has drop at equal priority, so it wins over every accept: make that visible.
    for (src, j) in [
        ("10.1.2.3", Action::Drop),
        ("10.1.2.4", Action::Drop),
        ("10.9.0.1", Action::Drop),
    ] {
        assert_eq!(agree(&c, &set, src, "10.200.0.1", 6, 443).action, j);
    }
    assert_eq!(
        agree(&c, &set, "10.1.2.3", "10.200.0.1", 6, 443),
        Judgement {
            action: Action::Drop,
            rule: Some(3)
        }
    );
    assert_eq!(agree(&c, &set, "11.1.2.3", "10.200.0.1", 6, 443), DENY);
    assert_eq!(
        agree(&c, &set, "2001:db8:1::1", "2001:db8:ffff::", 47, 0),
        Judgement {
            action: Action::Accept,
            rule: Some(4)
        }
    );
    assert_eq!(agree(&c, &set, "2001:db9::1", "2001:db8::", 47, 0), DENY);
    let class = |a: &str| c.lookup(ip(a), ip("10.0.0.1"), 6, 0).src_class;
    assert_eq!(class("10.1.2.2"), class("10.1.2.200"));
    assert_ne!(class("10.1.2.2"), class("10.1.2.3"));
    assert_ne!(class("10.1.2.2"), class("10.1.3.2"));
    assert_ne!(class("10.1.3.2"), class("10.2.3.2"));
    assert_eq!(class("11.0.0.0"), AddrClass::default());

    // With the /8 lower down, the narrower accepts decide.
    let mut set = set;
    set.policies[3].priority = 200;
    let c = compile_ok(&set);
    let j = |a: u32| Judgement {
        action: Action::Accept,
        rule: Some(a),
    };
    assert_eq!(agree(&c, &set, "10.1.2.3", "10.200.0.1", 47, 0), j(0));
    assert_eq!(agree(&c, &set, "10.1.2.4", "10.200.0.1", 6, 443), j(1));
    assert_eq!(agree(&c, &set, "10.1.2.4", "10.200.0.1", 6, 22), j(2));
    assert_eq!(
        agree(&c, &set, "10.1.2.4", "10.200.0.1", 6, 444).rule,
        Some(3)
    );
    assert_eq!(
        agree(&c, &set, "10.1.3.4", "10.200.0.1", 6, 443).rule,
        Some(3)
    );
    assert_eq!(agree(&c, &set, "10.1.3.4", "10.200.0.1", 6, 22), j(2));
    assert_eq!(
        agree(&c, &set, "10.2.3.4", "10.200.0.1", 6, 22).rule,
        Some(3)
    );
}

#[test]
fn port_classes_cut_at_range_boundaries() {
    let sets = [
        PortSet::Ranges(vec![range(22, 22)]),
        PortSet::Ranges(vec![range(80, 443)]),
        PortSet::Ranges(vec![range(443, 1000), range(65535, 65535)]),
        PortSet::Any,
    ];
    let pc = PortClasses::build(sets.iter());
    assert_eq!(pc.class_of.len(), 65536);
    assert_eq!(pc.first_port, [0, 22, 23, 80, 443, 444, 1001, 65535]);
    let expect: [(u16, u32); 17] = [
        (0, 0),
        (1, 0),
        (21, 0),
        (22, 1),
        (23, 2),
        (79, 2),
        (80, 3),
        (200, 3),
        (442, 3),
        (443, 4),
        (444, 5),
        (1000, 5),
        (1001, 6),
        (30000, 6),
        (65534, 6),
        (65535, 7),
        (443, 4),
    ];
    for (port, class) in expect {
        assert_eq!(pc.class_of[port as usize], class, "port {port}");
    }
    // Classes are ordered intervals starting at their first port.
    for (class, &first) in pc.first_port.iter().enumerate() {
        assert_eq!(pc.class_of[first as usize], class as u32);
        if first > 0 {
            assert_eq!(pc.class_of[first as usize - 1], class as u32 - 1);
        }
    }
    assert_eq!(pc.classes_in(&range(80, 443)), 3..=4);
    assert_eq!(pc.classes_in(&range(22, 22)), 1..=1);
    assert_eq!(pc.classes_in(&range(443, 1000)), 4..=5);
    assert_eq!(pc.classes_in(&range(65535, 65535)), 7..=7);
    // No ranges: one class for every port.
    let pc = PortClasses::build([PortSet::Any].iter());
    assert_eq!(pc.first_port, [0]);
    assert!(pc.class_of.iter().all(|c| *c == 0));
    // A range from 1: port 0 keeps a class of its own.
    let pc = PortClasses::build([PortSet::Ranges(vec![range(1, 5)])].iter());
    assert_eq!(pc.first_port, [0, 1, 6]);
}

#[test]
fn port_boundaries_through_the_compiler() {
    let mut dns = policy("dns", &["a"], &["b"], Action::Accept);
    dns.protocol = Protocol::Udp;
    dns.ports = PortSet::Ranges(vec![range(53, 53)]);
    let mut all_web = policy("web", &["a"], &["b"], Action::Accept);
    all_web.ports = PortSet::Ranges(vec![range(80, 80), range(8000, 8080)]);
    let mut deny = policy("deny-high", &["a"], &["b"], Action::Drop);
    deny.protocol = Protocol::Tcp;
    deny.ports = PortSet::Ranges(vec![range(8080, 65535)]);
    let set = PolicySet {
        groups: vec![group("a", &["10.0.0.0/8"]), group("b", &["192.168.0.0/16"])],
        policies: vec![dns, all_web, deny],
    };
    let c = compile_ok(&set);
    let j = |action, rule| Judgement {
        action,
        rule: Some(rule),
    };
    let at = |proto, port| agree(&c, &set, "10.0.0.1", "192.168.0.1", proto, port);
    assert_eq!(at(17, 52), DENY);
    assert_eq!(at(17, 53), j(Action::Accept, 0));
    assert_eq!(at(17, 54), DENY);
    assert_eq!(at(6, 53), DENY);
    assert_eq!(at(6, 79), DENY);
    assert_eq!(at(6, 80), j(Action::Accept, 1));
    assert_eq!(at(17, 80), j(Action::Accept, 1));
    assert_eq!(at(6, 81), DENY);
    assert_eq!(at(6, 7999), DENY);
    assert_eq!(at(6, 8000), j(Action::Accept, 1));
    assert_eq!(at(6, 8079), j(Action::Accept, 1));
    assert_eq!(at(6, 8080), j(Action::Drop, 2));
    assert_eq!(at(17, 8080), j(Action::Accept, 1));
    assert_eq!(at(6, 8081), j(Action::Drop, 2));
    assert_eq!(at(6, 65535), j(Action::Drop, 2));
    assert_eq!(at(17, 8081), DENY);
    assert_eq!(at(6, 0), DENY);
    // Protocol all with ports does not match ICMP or others.
    assert_eq!(at(1, 80), DENY);
    assert_eq!(at(47, 80), DENY);
    // TCP classes start at 0, 80, 81, 8000, 8080, 8081 (53 is UDP only); UDP ones at 0, 53, 54,
    // 80, 81, 8000, 8081 (8080 starts a TCP-only range).
    assert_eq!(c.stats.port_classes_tcp, 6);
    assert_eq!(c.stats.port_classes_udp, 7);
}

#[test]
fn seed_policy_compiles_and_agrees() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.yaml");
    let set = crate::load_file(&path).unwrap();
    let c = compile_ok(&set);
    let j = |action, rule| Judgement {
        action,
        rule: Some(rule),
    };
    assert_eq!(
        agree(&c, &set, "100.64.10.5", "8.8.8.8", 1, 0),
        j(Action::Accept, 0)
    );
    assert_eq!(
        agree(&c, &set, "100.64.20.5", "100.64.101.7", 6, 443),
        j(Action::Accept, 1)
    );
    assert_eq!(agree(&c, &set, "100.64.20.5", "100.64.101.7", 6, 22), DENY);
    assert_eq!(
        agree(&c, &set, "100.64.101.7", "100.64.100.3", 6, 443),
        j(Action::Drop, 2)
    );
    assert_eq!(
        agree(&c, &set, "100.64.100.3", "100.64.101.7", 17, 53),
        j(Action::Drop, 2)
    );
    assert_eq!(
        agree(&c, &set, "100.64.101.7", "100.64.1.53", 17, 53),
        j(Action::Accept, 3)
    );
    assert_eq!(
        agree(&c, &set, "100.64.101.7", "100.64.1.53", 17, 54),
        j(Action::Drop, 3)
    );
    assert_eq!(
        agree(&c, &set, "100.64.101.7", "100.64.1.53", 6, 53),
        j(Action::Drop, 3)
    );
    assert_eq!(
        agree(&c, &set, "100.64.101.7", "8.8.8.8", 6, 443),
        j(Action::Drop, 3)
    );
    assert_eq!(c.rules.len(), 4);
    assert_eq!(c.rules[3].name, "demo-no-internet");
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

#[test]
fn limit_chunks() {
    let set = PolicySet {
        groups: vec![
            group("host", &["10.1.2.3/32"]),
            group("net", &["192.168.0.0/16"]),
        ],
        policies: vec![policy("p", &["host"], &["net"], Action::Accept)],
    };
    assert_eq!(
        compile(&set, &limits(|l| l.chunks_per_slot = 3)).err(),
        Some(CompileError::TooManyChunks { limit: 3 })
    );
    assert_eq!(
        compile(&set, &limits(|l| l.chunks_per_slot = 0)).err(),
        Some(CompileError::TooManyChunks { limit: 0 })
    );
    let c = compile(&set, &limits(|l| l.chunks_per_slot = 4)).unwrap();
    assert_eq!(c.stats.v4_chunks, 4);
    assert_eq!(
        agree(&c, &set, "10.1.2.3", "192.168.3.4", 6, 1).rule,
        Some(0)
    );
    assert_eq!(agree(&c, &set, "10.1.2.2", "192.168.3.4", 6, 1), DENY);
}

#[test]
fn limit_verdicts() {
    let groups = vec![group("a", &["10.0.0.0/8"]), group("b", &["192.168.0.0/16"])];
    // Protocol all, any port: one "any port" entry per protocol class (other, TCP, UDP, ICMP).
    let set = PolicySet {
        groups: groups.clone(),
        policies: vec![policy("all", &["a"], &["b"], Action::Accept)],
    };
    let c = compile(&set, &limits(|l| l.verdicts_per_slot = 4)).unwrap();
    assert_eq!(c.stats.verdicts, 4);
    assert_eq!(c.verdicts.len(), 4);
    assert_eq!(
        compile(&set, &limits(|l| l.verdicts_per_slot = 3)).err(),
        Some(CompileError::TooManyVerdicts { need: 4, limit: 3 })
    );

    // Two policies over the same pair of classes, both on TCP 443: one entry, and it fits.
    let mut low = tcp(policy("low", &["a"], &["b"], Action::Drop), &[(443, 443)]);
    low.priority = 200;
    let set = PolicySet {
        groups: groups.clone(),
        policies: vec![
            tcp(
                policy("high", &["a"], &["b"], Action::Accept),
                &[(443, 443)],
            ),
            low,
        ],
    };
    let c = compile(&set, &limits(|l| l.verdicts_per_slot = 1)).unwrap();
    assert_eq!((c.stats.class_pairs, c.stats.verdicts), (1, 1));
    assert_eq!(
        agree(&c, &set, "10.0.0.1", "192.168.0.1", 6, 443),
        Judgement {
            action: Action::Accept,
            rule: Some(0)
        }
    );
    assert_eq!(
        compile(&set, &limits(|l| l.verdicts_per_slot = 0)).err(),
        Some(CompileError::TooManyVerdicts { need: 1, limit: 0 })
    );

    // Three source and three destination classes, all connected by one policy: 9 pairs of one
    // entry each (TCP 80).
    let groups = vec![
        group("x1", &["10.1.0.0/16"]),
        group("x2", &["10.2.0.0/16"]),
        group("x3", &["10.3.0.0/16"]),
        group("y1", &["192.168.1.0/24"]),
        group("y2", &["192.168.2.0/24"]),
        group("y3", &["192.168.3.0/24"]),
    ];
    let web = |name: &str, src: &[&str], dst: &[&str]| {
        tcp(policy(name, src, dst, Action::Accept), &[(80, 80)])
    };
    let set = PolicySet {
        groups,
        policies: vec![
            web("p1", &["x1"], &["y1"]),
            web("p2", &["x2"], &["y2"]),
            web("p3", &["x3"], &["y3"]),
            web("all", &["x1", "x2", "x3"], &["y1", "y2", "y3"]),
        ],
    };
    let c = compile(&set, &limits(|l| l.verdicts_per_slot = 9)).unwrap();
    assert_eq!(
        (c.stats.src_classes, c.stats.dst_classes),
        (4, 4),
        "three each and the empty class"
    );
    assert_eq!((c.stats.class_pairs, c.stats.verdicts), (9, 9));
    assert_eq!(
        agree(&c, &set, "10.2.0.1", "192.168.2.1", 6, 80).rule,
        Some(1)
    );
    assert_eq!(
        agree(&c, &set, "10.2.0.1", "192.168.3.1", 6, 80).rule,
        Some(3)
    );
    assert_eq!(
        compile(&set, &limits(|l| l.verdicts_per_slot = 8)).err(),
        Some(CompileError::TooManyVerdicts { need: 9, limit: 8 })
    );
}

#[test]
fn limit_rules_and_v6() {
    let groups = vec![
        group("a", &["10.0.0.0/8", "2001:db8::/32", "2001:db8:1::/48"]),
        group("b", &["192.168.0.0/16"]),
    ];
    let mut off = policy("off", &["a"], &["b"], Action::Drop);
    off.enabled = false;
    let set = PolicySet {
        groups,
        policies: vec![
            policy("one", &["a"], &["b"], Action::Accept),
            off,
            policy("two", &["b"], &["a"], Action::Accept),
            policy("three", &["a"], &["a"], Action::Drop),
        ],
    };
    assert_eq!(
        compile(&set, &limits(|l| l.rules_per_slot = 2)).err(),
        Some(CompileError::TooManyRules { need: 3, limit: 2 })
    );
    // The disabled policy does not count.
    let c = compile(&set, &limits(|l| l.rules_per_slot = 3)).unwrap();
    assert_eq!(
        c.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    // ::/0 and the two prefixes.
    assert_eq!(c.stats.v6_prefixes, 3);
    assert_eq!(
        compile(&set, &limits(|l| l.v6_per_slot = 2)).err(),
        Some(CompileError::TooManyV6 { need: 3, limit: 2 })
    );
    assert!(compile(&set, &limits(|l| l.v6_per_slot = 3)).is_ok());
}

#[test]
fn empty_policy_is_default_deny() {
    let mut disabled = policy("off", &["*"], &["*"], Action::Accept);
    disabled.enabled = false;
    let empty_group = PolicySet {
        groups: vec![group("nobody", &[])],
        policies: vec![policy("to-nobody", &["*"], &["nobody"], Action::Accept)],
    };
    for (i, set) in [
        PolicySet::default(),
        PolicySet {
            groups: vec![],
            policies: vec![disabled],
        },
        empty_group,
    ]
    .into_iter()
    .enumerate()
    {
        let c = compile_ok(&set);
        assert!(c.verdicts.is_empty(), "{set:?}");
        assert_eq!(c.stats.v4_chunks, 0);
        assert!(c.v4_chunks.is_empty());
        assert!(c.v4_root.iter().all(|e| !e.is_link()));
        if i < 2 {
            // Nothing marked at all: every address is in class 0.
            assert!(c.v4_root.iter().all(|e| *e == AddrClass::default()));
            assert_eq!(c.v6, [(0, [0; 16], AddrClass::default())]);
        }
        assert_eq!(c.v6.len(), 1, "only ::/0");
        for (src, dst) in [
            ("10.0.0.1", "10.0.0.2"),
            ("0.0.0.0", "255.255.255.255"),
            ("2001:db8::1", "::1"),
        ] {
            for (proto, port) in [(6, 80), (17, 53), (1, 0), (58, 0), (47, 0), (6, 0)] {
                assert_eq!(agree(&c, &set, src, dst, proto, port), DENY);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) A large policy.

#[test]
fn ten_thousand_rules_compile() {
    const RULES: usize = 10_000;
    const GROUPS: usize = 500;
    // Groups of /24s (some with an extra /32 and an IPv6 prefix), in 10.0.0.0/8.
    let groups: Vec<Group> = (0..GROUPS)
        .map(|i| {
            let mut members = vec![net(&format!("10.{}.{}.0/24", i / 256, i % 256))];
            if i % 7 == 0 {
                members.push(net(&format!("172.16.{}.{}/32", i / 256, i % 256)));
            }
            if i % 50 == 0 {
                members.push(net(&format!("2001:db8:{i:x}::/48")));
            }
            Group {
                name: format!("g{i}"),
                members,
            }
        })
        .collect();
    let policies: Vec<Policy> = (0..RULES)
        .map(|i| {
            let src = format!("g{}", i % GROUPS);
            let dst = format!("g{}", (i * 7 + 3) % GROUPS);
            let action = if i % 3 == 0 {
                Action::Drop
            } else {
                Action::Accept
            };
            let mut p = policy(&format!("r{i}"), &[&src], &[&dst], action);
            p.protocol = [Protocol::Tcp, Protocol::Udp, Protocol::All, Protocol::Icmp][i % 4];
            if p.protocol != Protocol::Icmp && i % 5 != 0 {
                let port = 1000 + (i % 3000) as u16;
                p.ports = PortSet::from_ranges(vec![range(port, port + (i % 4) as u16)]);
            }
            p.priority = [100, 50, 100, 200][i % 4];
            p.bidirectional = i % 11 == 0;
            p
        })
        .collect();
    let set = PolicySet { groups, policies };
    let start = Instant::now();
    let c = compile_ok(&set);
    eprintln!(
        "compiled {RULES} rules in {:?}: {:?}",
        start.elapsed(),
        c.stats
    );
    assert_eq!(c.rules.len(), RULES);
    assert!(c.stats.verdicts > 0);

    // A sample of packets agrees with the reference.
    let terms = set.terms();
    let mut rng = StdRng::seed_from_u64(seed());
    let mut decided = 0;
    for _ in 0..400 {
        // Between the groups of a random rule, or of random groups.
        let i = rng.random_range(0..RULES);
        let (a, b) = if rng.random_bool(0.8) {
            if i % 11 == 0 && rng.random_bool(0.5) {
                ((i * 7 + 3) % GROUPS, i % GROUPS)
            } else {
                (i % GROUPS, (i * 7 + 3) % GROUPS)
            }
        } else {
            (rng.random_range(0..GROUPS), rng.random_range(0..GROUPS))
        };
        let src = IpAddr::V4(Ipv4Addr::new(
            10,
            (a / 256) as u8,
            (a % 256) as u8,
            rng.random(),
        ));
        let dst = IpAddr::V4(Ipv4Addr::new(
            10,
            (b / 256) as u8,
            (b % 256) as u8,
            rng.random(),
        ));
        // The rule's protocol and ports, mostly.
        let p = &set.policies[i];
        let proto = match p.protocol {
            Protocol::Tcp if rng.random_bool(0.9) => 6,
            Protocol::Udp if rng.random_bool(0.9) => 17,
            Protocol::Icmp if rng.random_bool(0.9) => 1,
            _ => PROTOS[rng.random_range(0..PROTOS.len())],
        };
        let dport = match &p.ports {
            PortSet::Ranges(r) if rng.random_bool(0.8) => {
                [r[0].start - 1, r[0].start, r[0].end, r[0].end + 1][rng.random_range(0..4)]
            }
            _ => rng.random(),
        };
        let want = reference::evaluate(&terms, src, dst, proto, dport);
        assert_eq!(
            c.lookup(src, dst, proto, dport).judgement,
            want,
            "{src} -> {dst} {proto}/{dport}"
        );
        decided += usize::from(want.rule.is_some());
    }
    // Every rule's own packet is decided by a rule (itself or one that beats it).
    for (i, p) in set.policies.iter().enumerate().step_by(97) {
        let src = IpAddr::V4(Ipv4Addr::new(
            10,
            ((i % GROUPS) / 256) as u8,
            ((i % GROUPS) % 256) as u8,
            9,
        ));
        let d = (i * 7 + 3) % GROUPS;
        let dst = IpAddr::V4(Ipv4Addr::new(10, (d / 256) as u8, (d % 256) as u8, 9));
        let (proto, dport) = match (&p.protocol, &p.ports) {
            (Protocol::Icmp, _) => (1, 0),
            (Protocol::Udp, PortSet::Ranges(r)) => (17, r[0].start),
            (_, PortSet::Ranges(r)) => (6, r[0].start),
            (Protocol::Udp, PortSet::Any) => (17, 7),
            (_, PortSet::Any) => (6, 7),
        };
        let want = reference::evaluate(&terms, src, dst, proto, dport);
        assert!(want.rule.is_some(), "rule {i}");
        assert_eq!(
            c.lookup(src, dst, proto, dport).judgement,
            want,
            "rule {i}: {src} -> {dst} {proto}/{dport}"
        );
    }
    eprintln!("ten_thousand_rules_compile: {decided} of 400 random packets decided by a rule");
}
