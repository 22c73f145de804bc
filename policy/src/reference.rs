//! The reference evaluator: a straightforward rule-by-rule reading of the policy semantics, with
//! no classes or tables. The compiled tables (and so the kernel) must agree with it on every
//! packet; the differential tests check that.

use std::net::IpAddr;

use super::{Action, Term, net_contains, proto_ports_match};

/// What the policy says about one packet: the action and the deciding rule (None: default deny).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub action: Action,
    pub rule: Option<u32>,
}

/// The outcome of one term for a packet, if the term matches it. A drop term whose exception
/// matches lets the packet through: the exception is an allowed carve-out of the drop (under a
/// default deny, an exemption that only skipped the drop would change nothing).
pub fn term_outcome(t: &Term, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Option<Action> {
    if !(t.src.contains(src)
        && t.dst.contains(dst)
        && proto_ports_match(t.protocol, &t.ports, proto, dport))
    {
        return None;
    }
    if t.action == Action::Drop
        && t.exceptions.iter().any(|e| {
            e.destination.as_ref().is_none_or(|d| net_contains(d, dst))
                && proto_ports_match(e.protocol, &e.ports, proto, dport)
        })
    {
        return Some(Action::Accept);
    }
    Some(t.action)
}

/// Orders candidate decisions: lower priority number first, drop before accept, then file order.
pub fn precedence(priority: u32, action: Action, rule: u32) -> (u32, u8, u32) {
    (priority, if action == Action::Drop { 0 } else { 1 }, rule)
}

pub fn evaluate(terms: &[Term], src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Judgement {
    terms
        .iter()
        .filter_map(|t| {
            term_outcome(t, src, dst, proto, dport)
                .map(|a| (precedence(t.priority, a, t.rule), a, t.rule))
        })
        .min_by_key(|(order, _, _)| *order)
        .map(|(_, action, rule)| Judgement {
            action,
            rule: Some(rule),
        })
        .unwrap_or(Judgement {
            action: Action::Drop,
            rule: None,
        })
}
