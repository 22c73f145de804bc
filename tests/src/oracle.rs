//! An oracle for the differential tests, written from the policy file's documented semantics
//! (README, "Policy semantics") and nothing of the compiler: it reads the parsed YAML structs and
//! decides rule by rule, and it models connection tracking as the README describes it. It shares
//! no code with what it checks (not `PolicySet::terms`, `proto_ports_match`, `precedence` or
//! `PortSet::contains`), so a mistake there shows up as a disagreement.

use std::{collections::HashMap, net::IpAddr};

use gateway_policy::{Action, GroupRef, PolicySet, PortSet, Protocol};
use ipnet::IpNet;

/// What the policy decides for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub accept: bool,
    /// Index of the deciding policy among the enabled ones (None: the default deny).
    pub rule: Option<u32>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

/// Whether `refs` (group names, or "*") name `ip`.
fn named(set: &PolicySet, refs: &[GroupRef], ip: IpAddr) -> bool {
    refs.iter().any(|r| match r {
        GroupRef::Any => true,
        GroupRef::Named(name) => set
            .groups
            .iter()
            .filter(|g| &g.name == name)
            .any(|g| in_any(&g.members, ip)),
    })
}

/// "A port list covering 1-65535 means any port."
fn port_in(ports: &PortSet, port: u16) -> bool {
    match ports {
        PortSet::Any => true,
        PortSet::Ranges(ranges) => {
            let mut covered = vec![false; 65536];
            for r in ranges {
                for p in r.start..=r.end {
                    covered[p as usize] = true;
                }
            }
            covered[1..].iter().all(|c| *c) || covered[port as usize]
        }
    }
}

fn any_port(ports: &PortSet) -> bool {
    match ports {
        PortSet::Any => true,
        PortSet::Ranges(rs) => {
            (1..=65535u16).all(|p| rs.iter().any(|r| r.start <= p && p <= r.end))
        }
    }
}

/// "Ports restrict TCP and UDP only: a protocol-`all` policy with specific ports matches TCP and
/// UDP on those ports; with any port it matches every protocol, ICMP included."
fn protocol_matches(protocol: Protocol, ports: &PortSet, ip_proto: u8, dport: u16) -> bool {
    match protocol {
        Protocol::Tcp => ip_proto == TCP && port_in(ports, dport),
        Protocol::Udp => ip_proto == UDP && port_in(ports, dport),
        Protocol::Icmp => ip_proto == 1 || ip_proto == 58,
        Protocol::All if ip_proto == TCP || ip_proto == UDP => port_in(ports, dport),
        Protocol::All => any_port(ports),
    }
}

/// The policy's decision for a packet from `src` to `dst` (IP protocol `proto`, destination
/// port or echo identifier `dport`).
pub fn decide(set: &PolicySet, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Decision {
    // (priority, drop first, file order) of every enabled policy that has something to say.
    let mut best: Option<((u32, u8, u32), bool)> = None;
    for (rule, p) in set.policies.iter().filter(|p| p.enabled).enumerate() {
        if !protocol_matches(p.protocol, &p.ports, proto, dport) {
            continue;
        }
        // destination_ips narrows the destination side, in whichever direction it is used.
        let narrowed = |ip: IpAddr| p.destination_ips.is_empty() || in_any(&p.destination_ips, ip);
        let forward = named(set, &p.source_groups, src)
            && named(set, &p.destination_groups, dst)
            && narrowed(dst);
        let backward = p.bidirectional
            && named(set, &p.destination_groups, src)
            && narrowed(src)
            && named(set, &p.source_groups, dst);
        if !forward && !backward {
            continue;
        }
        // An exception of a drop policy lets the packet through, at the policy's priority.
        let excepted = p.action == Action::Drop
            && p.exceptions.iter().any(|e| {
                (e.destination_ips.is_empty() || in_any(&e.destination_ips, dst))
                    && protocol_matches(e.protocol, &e.ports, proto, dport)
            });
        let accept = p.action == Action::Accept || excepted;
        let order = (p.priority, u8::from(accept), rule as u32);
        if best.is_none_or(|(b, _)| order < b) {
            best = Some((order, accept));
        }
    }
    match best {
        Some(((_, _, rule), accept)) => Decision {
            accept,
            rule: Some(rule),
        },
        None => Decision {
            accept: false,
            rule: None,
        },
    }
}

/// One packet of a flow, as the conntrack model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// TCP/UDP ports; for ICMP echo both are the identifier.
    pub sport: u16,
    pub dport: u16,
    /// ICMP echo: a request (true) or a reply (false). Ignored for other protocols.
    pub echo_request: bool,
    /// TCP: SYN without ACK (a connection attempt).
    pub syn_only: bool,
}

/// What the data plane should count for a packet at a policing hook, with conntrack on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    AcceptPolicy(u32),
    Established,
    DropPolicy(u32),
    DropDefault,
    Revoked,
}

impl Expect {
    pub fn passes(self) -> bool {
        matches!(self, Expect::AcceptPolicy(_) | Expect::Established)
    }
}

/// A flow as the README describes it: which end opened it, and whether the policy ended it.
#[derive(Clone, Copy, Debug)]
struct Flow {
    /// The first packet came from end `a` of the key.
    initiator_is_a: bool,
    /// The generation it was last checked against.
    generation: u32,
    revoked: bool,
}

type Key = (IpAddr, u16, IpAddr, u16, u8);

/// The oracle's connection tracking: "Return traffic of an accepted flow passes without a
/// reverse rule"; "a policy change also ends flows the new policy no longer allows: the next
/// packet of such a flow, in either direction, is dropped (revoked). The flow stays ended ...
/// only a packet the policy admits as a new flow (or, for TCP, a new SYN) starts one"; "ICMP
/// echo is tracked with its direction". Idle timeouts are not modelled (the sequences are far
/// shorter than any timeout).
#[derive(Default)]
pub struct Tracker {
    /// TCP/UDP by (first sender, its port, receiver, its port, protocol); ICMP echo by
    /// (requester, id, responder, id, protocol).
    flows: HashMap<Key, Flow>,
    pub generation: u32,
}

impl Tracker {
    /// The keys a packet may belong to, with whether its sender is end `a`.
    fn keys(p: &Pkt) -> Vec<(Key, bool)> {
        let as_sent = (p.src, p.sport, p.dst, p.dport, p.proto);
        let reversed = (p.dst, p.dport, p.src, p.sport, p.proto);
        if p.proto == 1 || p.proto == 58 {
            // A request comes from the requester, a reply goes to it.
            vec![if p.echo_request {
                (as_sent, true)
            } else {
                (reversed, false)
            }]
        } else {
            vec![(as_sent, true), (reversed, false)]
        }
    }

    /// The expected outcome for `p` arriving at a policing hook under `set`, and the model's
    /// state after it.
    pub fn packet(&mut self, set: &PolicySet, p: &Pkt) -> Expect {
        let keys = Self::keys(p);
        let found = keys
            .iter()
            .copied()
            .find(|(k, _)| self.flows.contains_key(k));
        let generation = self.generation;
        let judge_new = |flows: &mut HashMap<Key, Flow>| {
            let d = decide(set, p.src, p.dst, p.proto, p.dport);
            if d.accept {
                let (key, sender_is_a) = keys[0];
                for (k, _) in &keys {
                    flows.remove(k);
                }
                flows.insert(
                    key,
                    Flow {
                        initiator_is_a: sender_is_a,
                        generation,
                        revoked: false,
                    },
                );
                return Expect::AcceptPolicy(d.rule.expect("an accept names its rule"));
            }
            match d.rule {
                Some(r) => Expect::DropPolicy(r),
                None => Expect::DropDefault,
            }
        };
        let Some((key, _)) = found else {
            return judge_new(&mut self.flows);
        };
        let flow = self.flows[&key];
        if flow.revoked {
            // Only a packet the policy admits as a new flow replaces an ended one.
            let e = judge_new(&mut self.flows);
            // A new TCP connection attempt is judged as one: its drop is the policy's own (the
            // ended flow stays ended).
            return if e.passes() || (p.proto == TCP && p.syn_only) {
                e
            } else {
                Expect::Revoked
            };
        }
        if flow.generation != self.generation {
            // Checked again in its original direction against the policy now in force.
            let (a, pa, b, pb, proto) = key;
            let (src, dst, dport) = if flow.initiator_is_a {
                (a, b, pb)
            } else {
                (b, a, pa)
            };
            if !decide(set, src, dst, proto, dport).accept {
                self.flows.insert(
                    key,
                    Flow {
                        revoked: true,
                        ..flow
                    },
                );
                return Expect::Revoked;
            }
            self.flows.insert(
                key,
                Flow {
                    generation: self.generation,
                    ..flow
                },
            );
        }
        Expect::Established
    }

    /// A new policy is in force.
    pub fn policy_changed(&mut self) {
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> PolicySet {
        gateway_policy::parse_str(yaml, "t.yaml").unwrap()
    }

    #[test]
    fn the_oracle_reads_the_documented_rules() {
        let s = set(
            "groups:\n  a: [10.0.0.0/24]\n  b: [10.0.1.0/24]\npolicies:\n  - name: web\n    source_groups: [a]\n    destination_groups: [b]\n    action: accept\n    protocol: tcp\n    ports: [\"443\"]\n  - name: no-b\n    source_groups: [a]\n    destination_groups: [b]\n    action: drop\n    protocol: all\n    priority: 200\n    exceptions:\n      - protocol: udp\n        ports: [\"53\"]\n",
        );
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.1.1".parse().unwrap());
        assert_eq!(
            decide(&s, a, b, TCP, 443),
            Decision {
                accept: true,
                rule: Some(0)
            }
        );
        assert_eq!(
            decide(&s, a, b, TCP, 80),
            Decision {
                accept: false,
                rule: Some(1)
            }
        );
        assert_eq!(
            decide(&s, a, b, UDP, 53),
            Decision {
                accept: true,
                rule: Some(1)
            },
            "the exception"
        );
        assert_eq!(
            decide(&s, b, a, TCP, 443),
            Decision {
                accept: false,
                rule: None
            }
        );
        assert_eq!(
            decide(&s, a, b, 47, 0),
            Decision {
                accept: false,
                rule: Some(1)
            },
            "all with any port covers GRE"
        );
    }
}
