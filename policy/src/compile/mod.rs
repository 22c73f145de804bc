//! The policy compiler: turns a [`PolicySet`] into the tables of `gateway_common::acl`, whose
//! lookup cost does not grow with the number of rules.
//!
//! 1. Every distinct address list a rule uses (a group union, destination_ips, an exception's
//!    destinations) becomes an "atom". Address regions get a source class and a destination
//!    class: the atoms containing them ([`addr`]).
//! 2. Ports of TCP and UDP are cut into classes at every rule boundary ([`ports`]).
//! 3. Each rule term expands to the (source class, destination class) pairs it matches; for each
//!    pair the compiler resolves the verdict per protocol class and port class, with the same
//!    precedence as the reference evaluator, and emits it as a verdict entry.

pub mod addr;
pub mod ports;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;

use gateway_common::acl::{
    self, ACTION_ACCEPT, ACTION_DROP, AclTables, AddrClass, PORT_CLASS_ANY, PORTS,
    PROTO_CLASS_ICMP, PROTO_CLASS_OTHER, PROTO_CLASS_TCP, PROTO_CLASS_UDP, PROTO_CLASSES,
    V6KeyData, Verdict, VerdictKey,
};
use ipnet::IpNet;

use crate::{
    Action, PolicySet, PortSet, Protocol, RuleInfo, Term, proto_ports_match,
    reference::{Judgement, precedence},
};
use addr::{Classes, SIDE_DST, SIDE_SRC, Trie, mark, net_bits};
use ports::PortClasses;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub chunks_per_slot: u32,
    pub verdicts_per_slot: u32,
    pub v6_per_slot: u32,
    pub rules_per_slot: u32,
}

impl Default for Limits {
    fn default() -> Self {
        use gateway_common::maps::*;
        Limits {
            chunks_per_slot: DEFAULT_CHUNKS_PER_SLOT,
            verdicts_per_slot: DEFAULT_VERDICT_ENTRIES / 2,
            v6_per_slot: DEFAULT_V6_ENTRIES / 2,
            rules_per_slot: DEFAULT_RULES_PER_SLOT,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "the policy needs more than {limit} IPv4 trie chunks (limits.acl_chunks): too many distinct long prefixes"
    )]
    TooManyChunks { limit: u32 },
    #[error(
        "the policy needs {need} verdict entries, more than the {limit} configured (limits.acl_verdicts)"
    )]
    TooManyVerdicts { need: u64, limit: u32 },
    #[error(
        "the policy needs {need} IPv6 prefixes, more than the {limit} configured (limits.acl_v6_prefixes)"
    )]
    TooManyV6 { need: usize, limit: u32 },
    #[error(
        "the policy has {need} enabled policies, more than the {limit} configured (limits.rules)"
    )]
    TooManyRules { need: usize, limit: u32 },
}

/// Rough sizes, for status output and the benchmark's memory report.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CompileStats {
    pub terms: usize,
    pub src_classes: usize,
    pub dst_classes: usize,
    pub class_pairs: usize,
    pub v4_chunks: usize,
    pub v6_prefixes: usize,
    pub verdicts: usize,
    pub port_classes_tcp: usize,
    pub port_classes_udp: usize,
}

/// One compiled policy, in memory, for slot 0; the loader writes it into either slot.
pub struct Compiled {
    pub rules: Vec<RuleInfo>,
    pub v4_root: Vec<AddrClass>,
    pub v4_chunks: Vec<AddrClass>,
    pub v6: Vec<(u8, [u8; 16], AddrClass)>,
    /// TCP port classes, then UDP: `acl::port_class_index(0, ..)` indexes it.
    pub ports: Vec<u32>,
    pub verdicts: HashMap<VerdictKey, Verdict>,
    pub stats: CompileStats,
}

#[derive(Default)]
struct Atoms {
    ids: HashMap<Vec<IpNet>, u32>,
    lists: Vec<Vec<IpNet>>,
}

impl Atoms {
    fn id(&mut self, nets: &[IpNet]) -> u32 {
        let mut key = nets.to_vec();
        key.sort();
        key.dedup();
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let id = self.lists.len() as u32;
        self.lists.push(key.clone());
        self.ids.insert(key, id);
        id
    }
}

/// A term with its address sets as atoms.
struct TermAtoms {
    src: u32,
    src_and: Option<u32>,
    dst: u32,
    dst_and: Option<u32>,
    exceptions: Vec<Option<u32>>,
}

/// Protocol number standing for each protocol class when matching.
const REPRESENTATIVE_PROTO: [u8; PROTO_CLASSES as usize] = [0, 6, 17, 1];

pub fn compile(set: &PolicySet, limits: &Limits) -> Result<Compiled, CompileError> {
    let rules = set.rules();
    if rules.len() > limits.rules_per_slot as usize {
        return Err(CompileError::TooManyRules {
            need: rules.len(),
            limit: limits.rules_per_slot,
        });
    }
    let terms = set.terms();

    // 1. Atoms and address classes.
    let mut atoms = Atoms::default();
    let term_atoms: Vec<TermAtoms> = terms
        .iter()
        .map(|t| TermAtoms {
            src: atoms.id(&t.src.any_of),
            src_and: t.src.and_in.as_deref().map(|n| atoms.id(n)),
            dst: atoms.id(&t.dst.any_of),
            dst_and: t.dst.and_in.as_deref().map(|n| atoms.id(n)),
            exceptions: t
                .exceptions
                .iter()
                .map(|e| e.destination.as_deref().map(|n| atoms.id(n)))
                .collect(),
        })
        .collect();
    let mut sides: HashMap<u32, [bool; 2]> = HashMap::new();
    for ta in &term_atoms {
        for a in [Some(ta.src), ta.src_and].into_iter().flatten() {
            sides.entry(a).or_default()[SIDE_SRC as usize] = true;
        }
        for a in [Some(ta.dst), ta.dst_and]
            .into_iter()
            .flatten()
            .chain(ta.exceptions.iter().flatten().copied())
        {
            sides.entry(a).or_default()[SIDE_DST as usize] = true;
        }
    }
    let mut trie4 = Trie::new();
    let mut trie6 = Trie::new();
    for (atom, used) in &sides {
        for net in &atoms.lists[*atom as usize] {
            let (bits, len, v4) = net_bits(net);
            for side in [SIDE_SRC, SIDE_DST] {
                if used[side as usize] {
                    let trie = if v4 { &mut trie4 } else { &mut trie6 };
                    trie.insert(bits, len, mark(*atom, side));
                }
            }
        }
    }
    let mut classes = Classes::new();
    let v4 = addr::build_v4(&trie4, &mut classes, limits.chunks_per_slot)?;
    let v6 = addr::build_v6(&trie6, &mut classes);
    if v6.len() > limits.v6_per_slot as usize {
        return Err(CompileError::TooManyV6 {
            need: v6.len(),
            limit: limits.v6_per_slot,
        });
    }

    // Which classes contain each atom.
    let mut src_classes_of: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut dst_classes_of: HashMap<u32, Vec<u32>> = HashMap::new();
    for (class, list) in classes.src_lists.iter().enumerate() {
        for a in list {
            src_classes_of.entry(*a).or_default().push(class as u32);
        }
    }
    for (class, list) in classes.dst_lists.iter().enumerate() {
        for a in list {
            dst_classes_of.entry(*a).or_default().push(class as u32);
        }
    }
    let matching =
        |of: &HashMap<u32, Vec<u32>>, a: u32, b: Option<u32>, lists: &[Vec<u32>]| -> Vec<u32> {
            let base = of.get(&a).cloned().unwrap_or_default();
            match b {
                None => base,
                Some(b) => base
                    .into_iter()
                    .filter(|c| lists[*c as usize].binary_search(&b).is_ok())
                    .collect(),
            }
        };

    // 2. Port classes.
    let port_sets_for = |pc: u8| {
        let wanted = move |p: Protocol| {
            matches!(
                (p, pc),
                (Protocol::All, _)
                    | (Protocol::Tcp, PROTO_CLASS_TCP)
                    | (Protocol::Udp, PROTO_CLASS_UDP)
            )
        };
        terms
            .iter()
            .flat_map(move |t| {
                std::iter::once((t.protocol, &t.ports))
                    .chain(t.exceptions.iter().map(|e| (e.protocol, &e.ports)))
            })
            .filter(move |(p, _)| wanted(*p))
            .map(|(_, s)| s)
    };
    let port_classes = [
        PortClasses::build(port_sets_for(PROTO_CLASS_TCP)),
        PortClasses::build(port_sets_for(PROTO_CLASS_UDP)),
    ];
    let mut ports = Vec::with_capacity(2 * PORTS as usize);
    ports.extend_from_slice(&port_classes[0].class_of);
    ports.extend_from_slice(&port_classes[1].class_of);

    // 3. Class pairs and their verdicts.
    // Every class pair gets at least one verdict entry (each of its terms matches some protocol
    // and port), so more pairs than verdict entries cannot fit. A term's own pairs are distinct,
    // so one term expanding past the limit fails before its pairs are built.
    let mut pairs: HashMap<(u32, u32), Vec<u32>> = HashMap::new();
    for (i, ta) in term_atoms.iter().enumerate() {
        let srcs = matching(&src_classes_of, ta.src, ta.src_and, &classes.src_lists);
        let dsts = matching(&dst_classes_of, ta.dst, ta.dst_and, &classes.dst_lists);
        let expansion = srcs.len() as u64 * dsts.len() as u64;
        if expansion > limits.verdicts_per_slot as u64 {
            return Err(CompileError::TooManyVerdicts {
                need: expansion,
                limit: limits.verdicts_per_slot,
            });
        }
        for s in &srcs {
            for d in &dsts {
                pairs.entry((*s, *d)).or_default().push(i as u32);
            }
        }
        if pairs.len() > limits.verdicts_per_slot as usize {
            return Err(CompileError::TooManyVerdicts {
                need: pairs.len() as u64,
                limit: limits.verdicts_per_slot,
            });
        }
    }
    let mut verdicts = HashMap::new();
    for (&(sc, dc), term_ids) in &pairs {
        let dst_atoms = &classes.dst_lists[dc as usize];
        let resolver = Resolver {
            terms: &terms,
            term_atoms: &term_atoms,
            term_ids,
            dst_atoms,
        };
        for pc in 0..PROTO_CLASSES {
            let key = |port_class| VerdictKey {
                src_class: sc,
                dst_class: dc,
                port_class,
                proto_class: pc,
                slot: 0,
                _pad: [0; 2],
            };
            if let Some(v) = resolver.resolve(pc, None) {
                verdicts.insert(key(PORT_CLASS_ANY), v);
            }
            if pc != PROTO_CLASS_TCP && pc != PROTO_CLASS_UDP {
                continue;
            }
            let pcs = &port_classes[(pc - PROTO_CLASS_TCP) as usize];
            let mut covered: Vec<u32> = Vec::new();
            for &t in term_ids {
                let term = &terms[t as usize];
                let sets = std::iter::once((term.protocol, &term.ports))
                    .chain(term.exceptions.iter().map(|e| (e.protocol, &e.ports)));
                for (protocol, set) in sets {
                    if let PortSet::Ranges(ranges) = set
                        && proto_ports_match(
                            protocol,
                            &PortSet::Any,
                            REPRESENTATIVE_PROTO[pc as usize],
                            0,
                        )
                    {
                        for r in ranges {
                            covered.extend(pcs.classes_in(r));
                        }
                    }
                }
            }
            covered.sort_unstable();
            covered.dedup();
            for class in covered {
                if let Some(v) = resolver.resolve(pc, Some(pcs.first_port[class as usize])) {
                    verdicts.insert(key(class), v);
                }
            }
        }
        // After every protocol class, ICMP and "other" included.
        if verdicts.len() > limits.verdicts_per_slot as usize {
            return Err(CompileError::TooManyVerdicts {
                need: verdicts.len() as u64,
                limit: limits.verdicts_per_slot,
            });
        }
    }

    let stats = CompileStats {
        terms: terms.len(),
        src_classes: classes.src_lists.len(),
        dst_classes: classes.dst_lists.len(),
        class_pairs: pairs.len(),
        v4_chunks: v4.chunks.len() / acl::V4_CHUNK_ENTRIES as usize,
        v6_prefixes: v6.len(),
        verdicts: verdicts.len(),
        port_classes_tcp: port_classes[0].first_port.len(),
        port_classes_udp: port_classes[1].first_port.len(),
    };
    Ok(Compiled {
        rules,
        v4_root: v4.root,
        v4_chunks: v4.chunks,
        v6,
        ports,
        verdicts,
        stats,
    })
}

/// Resolves the verdict of one class pair for a protocol class and a port (None: a port no
/// narrower rule of the pair names).
struct Resolver<'a> {
    terms: &'a [Term],
    term_atoms: &'a [TermAtoms],
    term_ids: &'a [u32],
    dst_atoms: &'a [u32],
}

impl Resolver<'_> {
    fn matches(&self, protocol: Protocol, ports: &PortSet, pc: u8, port: Option<u16>) -> bool {
        let proto = REPRESENTATIVE_PROTO[pc as usize];
        match port {
            Some(p) => proto_ports_match(protocol, ports, proto, p),
            None => ports.is_any() && proto_ports_match(protocol, ports, proto, 0),
        }
    }

    fn resolve(&self, pc: u8, port: Option<u16>) -> Option<Verdict> {
        let mut best: Option<((u32, u8, u32), Action, u32)> = None;
        for &i in self.term_ids {
            let t = &self.terms[i as usize];
            if !self.matches(t.protocol, &t.ports, pc, port) {
                continue;
            }
            let excepted = t.action == Action::Drop
                && t.exceptions
                    .iter()
                    .zip(&self.term_atoms[i as usize].exceptions)
                    .any(|(e, atom)| {
                        atom.is_none_or(|a| self.dst_atoms.binary_search(&a).is_ok())
                            && self.matches(e.protocol, &e.ports, pc, port)
                    });
            let action = if excepted { Action::Accept } else { t.action };
            let order = precedence(t.priority, action, t.rule);
            if best.is_none_or(|(o, _, _)| order < o) {
                best = Some((order, action, t.rule));
            }
        }
        best.map(|(_, action, rule)| Verdict {
            action: action_code(action),
            rule,
        })
    }
}

pub fn action_code(a: Action) -> u32 {
    match a {
        Action::Accept => ACTION_ACCEPT,
        Action::Drop => ACTION_DROP,
    }
}

impl AclTables for Compiled {
    fn root(&self, index: u32) -> Option<AddrClass> {
        self.v4_root.get(index as usize).copied()
    }
    fn chunk(&self, index: u32) -> Option<AddrClass> {
        self.v4_chunks.get(index as usize).copied()
    }
    fn v6(&self, key: &V6KeyData) -> Option<AddrClass> {
        let addr = u128::from_be_bytes(key.addr);
        self.v6
            .iter()
            .filter(|(len, net, _)| {
                let mask = if *len == 0 {
                    0
                } else {
                    u128::MAX << (128 - *len as u32)
                };
                addr & mask == u128::from_be_bytes(*net)
            })
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, _, c)| *c)
    }
    fn port_class(&self, index: u32) -> Option<u32> {
        self.ports.get(index as usize).copied()
    }
    fn verdict(&self, key: &VerdictKey) -> Option<Verdict> {
        self.verdicts.get(key).copied()
    }
}

/// The verdict the compiled tables give a packet, by the same lookup the kernel runs.
pub struct Explanation {
    pub judgement: Judgement,
    pub src_class: AddrClass,
    pub dst_class: AddrClass,
}

impl Compiled {
    pub fn lookup(&self, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Explanation {
        let classify = |ip: IpAddr| match ip {
            IpAddr::V4(a) => acl::classify_v4(self, 0, 0, u32::from(a)),
            IpAddr::V6(a) => acl::classify_v6(self, 0, a.octets()),
        };
        let (Some(s), Some(d)) = (classify(src), classify(dst)) else {
            return Explanation {
                judgement: Judgement {
                    action: Action::Drop,
                    rule: None,
                },
                src_class: AddrClass::default(),
                dst_class: AddrClass::default(),
            };
        };
        let v = acl::lookup_verdict(self, 0, s, d, acl::proto_class(proto), dport);
        let action = if v.action == ACTION_ACCEPT {
            Action::Accept
        } else {
            Action::Drop
        };
        let rule = (v.rule != acl::RULE_DEFAULT).then_some(v.rule);
        Explanation {
            judgement: Judgement { action, rule },
            src_class: s,
            dst_class: d,
        }
    }
}

#[allow(dead_code)]
const _: () = assert!(PROTO_CLASS_OTHER == 0 && PROTO_CLASS_ICMP == 3);
