//! Rules with priorities, compiled into NetBird's priority-free rules with the same meaning.
//!
//! NetBird's wire has no priority: a client drops a packet when any drop rule matches and
//! accepts it when an accept rule matches and no drop does. ACLs add priorities (lower decides
//! first; at one level drop wins). For one remote peer and one direction this module finds what
//! every packet's verdict is and writes rules a drop-first client evaluates the same way.
//!
//! The packet space of one (peer, direction) is small: TCP and UDP destination ports cut into
//! the intervals the rules' bounds make, ICMP, and every other IP protocol as one class (only
//! rules for all protocols reach it). Each piece takes the verdict of the first level with a
//! matching rule, or the default deny. If the other protocols are accepted, the output is one
//! accept for all protocols plus drops for the TCP, UDP and ICMP pieces that are denied;
//! otherwise only the accepted pieces are written as accepts (the default deny covers the rest).
//! Either way no rule needs a protocol number the wire cannot carry, and each rule names the
//! source rule that decided it.
//!
//! Ports are those of 1-65535; a rule over "any port" also covers port 0, which no ranged rule
//! on the wire can name.

use super::*;

/// The protocol classes a rule can cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    All,
    Tcp,
    Udp,
    Icmp,
}

/// One rule, reduced to what decides a packet between two peers.
#[derive(Clone, Debug)]
pub struct Grant<'a> {
    pub rule_id: &'a str,
    pub action: RuleAction,
    pub proto: Proto,
    /// Destination port ranges (TCP/UDP only); empty: every port.
    pub ports: Vec<PortRange>,
    /// Lower decides first.
    pub level: u32,
}

/// One rule of the compiled output.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Compiled<'a> {
    pub rule_id: &'a str,
    pub action: RuleAction,
    pub proto: Proto,
    /// `None`: every port.
    pub ports: Option<PortRange>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Atom {
    Ports(Proto, u16, u16),
    Icmp,
    Other,
}

fn covers(g: &Grant, atom: Atom) -> bool {
    match atom {
        Atom::Ports(p, lo, hi) => {
            (g.proto == Proto::All || g.proto == p)
                && (g.proto == Proto::All
                    || g.ports.is_empty()
                    || g.ports.iter().any(|r| r.start <= lo && hi <= r.end))
        }
        Atom::Icmp => matches!(g.proto, Proto::All | Proto::Icmp),
        Atom::Other => g.proto == Proto::All,
    }
}

/// The deciding rule of `atom`: the first level with a match; a drop there wins.
fn decide<'g, 'a>(grants: &'g [Grant<'a>], atom: Atom) -> Option<&'g Grant<'a>> {
    let level = grants
        .iter()
        .filter(|g| covers(g, atom))
        .map(|g| g.level)
        .min()?;
    let at_level = || {
        grants
            .iter()
            .filter(move |g| g.level == level && covers(g, atom))
    };
    at_level()
        .find(|g| g.action == RuleAction::Drop)
        .or_else(|| at_level().next())
}

/// Port intervals of 1-65535 that no rule bound of `proto` splits.
fn intervals(grants: &[Grant], proto: Proto) -> Vec<(u16, u16)> {
    let mut cuts: BTreeSet<u32> = [1, 65536].into();
    for g in grants.iter().filter(|g| g.proto == proto) {
        for r in &g.ports {
            cuts.insert(r.start.max(1) as u32);
            cuts.insert(r.end as u32 + 1);
        }
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    cuts.windows(2)
        .map(|w| (w[0] as u16, (w[1] - 1) as u16))
        .collect()
}

/// The priority-free rules that give every packet the verdict `grants` give it.
pub fn compile<'a>(grants: &[Grant<'a>]) -> Vec<Compiled<'a>> {
    let other = decide(grants, Atom::Other).map(|g| (g.action, g.rule_id));
    // With the other protocols accepted, write the exceptions as drops; else write the accepts.
    let (write, base) = match other {
        Some((RuleAction::Accept, id)) => (
            RuleAction::Drop,
            Some(Compiled {
                rule_id: id,
                action: RuleAction::Accept,
                proto: Proto::All,
                ports: None,
            }),
        ),
        _ => (RuleAction::Accept, None),
    };
    let mut out = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        // Adjacent intervals with the same deciding rule merge into one range.
        let mut runs: Vec<(u16, u16, &'a str)> = Vec::new();
        for (lo, hi) in intervals(grants, proto) {
            let verdict = decide(grants, Atom::Ports(proto, lo, hi));
            let action = verdict.map_or(RuleAction::Drop, |g| g.action);
            let Some(g) = verdict.filter(|_| action == write) else {
                continue;
            };
            match runs.last_mut() {
                Some((_, end, id)) if *end as u32 + 1 == lo as u32 && *id == g.rule_id => *end = hi,
                _ => runs.push((lo, hi, g.rule_id)),
            }
        }
        for (lo, hi, id) in runs {
            let ports = if (lo, hi) == (1, 65535) {
                None
            } else {
                Some(PortRange { start: lo, end: hi })
            };
            out.push(Compiled {
                rule_id: id,
                action: write,
                proto,
                ports,
            });
        }
    }
    if let Some(g) = decide(grants, Atom::Icmp).filter(|g| g.action == write) {
        out.push(Compiled {
            rule_id: g.rule_id,
            action: write,
            proto: Proto::Icmp,
            ports: None,
        });
    }
    out.extend(base);
    out
}

#[cfg(test)]
mod tests;
