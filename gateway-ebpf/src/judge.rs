//! The decision for one packet at one hook, from parse to verdict. Every path ends in a
//! [`Decision`] with an explicit reason; nothing is passed or dropped without being counted.

use gateway_common::{
    acl::{ACTION_ACCEPT, ACTION_DROP, RULE_DEFAULT},
    conntrack::{CtEntry, CtKey, FAMILY_V4, ORIGIN_LOCAL, ORIGIN_POLICY, ORIGIN_REVOKED},
    settings::{ActivePolicy, FLAG_CONNTRACK, Settings},
    stats::{HOOK_LAN, HOOK_TUNNEL_EGRESS, reason},
};

use crate::{
    acl,
    buckets::Found,
    conntrack, fragment, maps,
    packet::Bytes,
    parse::{
        self, FRAG_FIRST, FRAG_LATER, FRAG_NONE, Flow, ICMP_ERROR, ICMP_NEIGHBOR_DISCOVERY,
        ICMP_OTHER, Link, Packet, Parsed,
    },
};

#[derive(Clone, Copy)]
pub struct Decision {
    pub reason: u32,
    /// The deciding rule (RULE_DEFAULT when none did).
    pub rule: u32,
    pub slot: u32,
    /// The policy generation the decision was made under (0 where no policy was read).
    pub generation: u32,
    /// The conntrack entry of an established flow's packet, in place in the map (null for
    /// every other decision), and whether the packet's sender is endpoint a of its key: what
    /// the masquerade needs to use and keep the flow's `NatMemo`.
    pub flow: *mut CtEntry,
    pub sender_is_a: bool,
}

impl Decision {
    #[inline(always)]
    pub fn passes(&self) -> bool {
        self.reason < reason::FIRST_DROP_REASON
    }
}

#[inline(always)]
pub fn plain(reason: u32) -> Decision {
    Decision {
        reason,
        rule: RULE_DEFAULT,
        slot: 0,
        generation: 0,
        flow: core::ptr::null_mut(),
        sender_is_a: false,
    }
}

/// Parses the packet into this CPU's scratch; a packet that is not IP, or is malformed, is
/// decided here.
#[inline(always)]
pub fn parse_packet(bytes: &Bytes, link: Link) -> Result<&'static mut Packet, Decision> {
    let Some(scratch) = maps::SCRATCH.get_ptr_mut(0) else {
        return Err(plain(reason::DROP_INTERNAL));
    };
    // SAFETY: per-CPU scratch, used by one program run at a time on this CPU.
    let pkt = unsafe { &mut *scratch };
    match parse::parse(bytes, link, pkt) {
        Ok(Parsed::Ip) => Ok(pkt),
        Ok(Parsed::NonIp) => Err(plain(reason::PASS_NON_IP)),
        Err(r) => Err(plain(r)),
    }
}

/// The decision for a parsed IP packet.
#[inline(always)]
pub fn judge(pkt: &Packet, hook: u32) -> Decision {
    if pkt.icmp == ICMP_NEIGHBOR_DISCOVERY {
        return plain(reason::PASS_NEIGHBOR_DISCOVERY);
    }
    let (Some(active), Some(settings)) = (maps::ACTIVE.get(0), maps::SETTINGS.get(0)) else {
        return plain(reason::DROP_INTERNAL);
    };
    let active = *active;
    let mut d = match hook {
        HOOK_TUNNEL_EGRESS => outbound(pkt, &active, settings),
        HOOK_LAN if !in_overlay(&pkt.flow.dst, pkt.flow.family, settings) => {
            plain(reason::PASS_NOT_OVERLAY)
        }
        _ => police(pkt, &active, settings),
    };
    d.slot = active.slot;
    d.generation = active.generation;
    d
}

/// Traffic arriving from the tunnel, or from the LAN toward the overlay: policy and state.
#[inline(always)]
fn police(pkt: &Packet, active: &ActivePolicy, settings: &Settings) -> Decision {
    let stateful = settings.flags & FLAG_CONNTRACK != 0;
    // The clock is only read where state is kept: a stateless lookup does not pay for it.
    let now = if stateful || pkt.frag != FRAG_NONE {
        pkt.now()
    } else {
        0
    };
    if pkt.frag == FRAG_LATER {
        return follow_first_fragment(pkt, now);
    }
    let d = if pkt.icmp == ICMP_ERROR && stateful {
        related(pkt, active, settings, now)
    } else if stateful && pkt.icmp != ICMP_OTHER {
        track_policed(pkt, active, settings, now)
    } else {
        by_policy(&pkt.flow, active, settings)
    };
    if pkt.frag == FRAG_FIRST {
        let action = if d.passes() {
            ACTION_ACCEPT
        } else {
            ACTION_DROP
        };
        fragment::record(pkt, action, d.rule, now, settings.timeouts.fragment);
    }
    d
}

/// Traffic leaving through the tunnel: already policed (or local); tracked so replies return.
/// Only a flow that is not known as ended may start here.
#[inline(always)]
fn outbound(pkt: &Packet, active: &ActivePolicy, settings: &Settings) -> Decision {
    if settings.flags & FLAG_CONNTRACK == 0
        || pkt.frag == FRAG_LATER
        || pkt.icmp == ICMP_ERROR
        || pkt.icmp == ICMP_OTHER
    {
        return plain(reason::ACCEPT_OUTBOUND);
    }
    let now = pkt.now();
    let (key, sender_is_a) = conntrack::key_of(&pkt.flow);
    match existing_flow(pkt, &key, sender_is_a, active, settings, now) {
        Existing::Live(d) => d,
        Existing::Revoked => plain(reason::DROP_REVOKED),
        Existing::Busy => plain(reason::DROP_INTERNAL),
        Existing::Untracked => {
            let entry = new_entry(pkt, sender_is_a, active, RULE_DEFAULT, ORIGIN_LOCAL, now);
            conntrack::insert(&key, &entry, settings, now);
            plain(reason::ACCEPT_OUTBOUND)
        }
    }
}

#[inline(always)]
fn by_policy(flow: &Flow, active: &ActivePolicy, settings: &Settings) -> Decision {
    let v = acl::judge(flow, active, settings);
    let reason = if v.accepts() {
        reason::ACCEPT_POLICY
    } else if v.rule == RULE_DEFAULT {
        reason::DROP_DEFAULT
    } else {
        reason::DROP_POLICY
    };
    Decision {
        rule: v.rule,
        ..plain(reason)
    }
}

/// A flow that is not live is judged as new; one that the policy ended stays ended unless the
/// policy allows this packet as the start of a new flow.
#[inline(always)]
fn track_policed(pkt: &Packet, active: &ActivePolicy, settings: &Settings, now: u64) -> Decision {
    let (key, sender_is_a) = conntrack::key_of(&pkt.flow);
    let existing = existing_flow(pkt, &key, sender_is_a, active, settings, now);
    match existing {
        Existing::Live(d) => return d,
        Existing::Busy => return plain(reason::DROP_INTERNAL),
        Existing::Untracked | Existing::Revoked => {}
    }
    let d = by_policy(&pkt.flow, active, settings);
    if d.passes() {
        let entry = new_entry(pkt, sender_is_a, active, d.rule, ORIGIN_POLICY, now);
        conntrack::insert(&key, &entry, settings, now);
    } else if let Existing::Revoked = existing {
        return Decision {
            reason: reason::DROP_REVOKED,
            ..d
        };
    }
    d
}

enum Existing {
    /// No entry, an expired one, or a finished TCP connection that this packet opens again.
    Untracked,
    /// The policy ended this flow (the tombstone was refreshed).
    Revoked,
    /// A packet of a live flow, with its decision (which may be the revocation of the flow).
    Live(Decision),
    /// Another CPU was writing the flow's bucket: whether the flow is live, ended or unknown
    /// cannot be told, and the packet is a counted drop (`drop_internal`; rare, as a bucket is
    /// written only when a flow hashed to it begins or ends). Taking it for a new flow could
    /// replace a tombstone.
    Busy,
}

/// Looks the packet's flow up. A live flow passes, unless the policy changed and no longer
/// allows the flow's original direction, which ends it.
#[inline(always)]
fn existing_flow(
    pkt: &Packet,
    key: &CtKey,
    sender_is_a: bool,
    active: &ActivePolicy,
    settings: &Settings,
    now: u64,
) -> Existing {
    let ptr = match conntrack::look_up(key) {
        Found::At(ptr) => ptr,
        Found::Absent => return Existing::Untracked,
        Found::Busy => return Existing::Busy,
    };
    // SAFETY: a valid map value; concurrent updates of the same flow only race on timestamps.
    let entry = unsafe { &mut *ptr };
    if !conntrack::is_live(key, entry, settings, now)
        || conntrack::reopens(key, entry, pkt.tcp_flags)
    {
        return Existing::Untracked;
    }
    if entry.origin == ORIGIN_REVOKED {
        entry.last_seen_ns = now;
        return Existing::Revoked;
    }
    let from_initiator = sender_is_a == (entry.initiator == 0);
    if let Some(revoked) = recheck(entry, &pkt.flow, from_initiator, active, settings, now) {
        return Existing::Live(revoked);
    }
    conntrack::update(entry, pkt.flow.proto, pkt.tcp_flags, from_initiator, now);
    Existing::Live(Decision {
        rule: entry.rule,
        flow: ptr,
        sender_is_a,
        ..plain(reason::ACCEPT_ESTABLISHED)
    })
}

/// After a policy change, checks a policy-admitted flow again in its original direction
/// (`flow` as sent, by the initiator or not). A flow no longer allowed becomes a tombstone and
/// the packet is dropped; an allowed one is stamped with the new generation and deciding rule.
#[inline(always)]
fn recheck(
    entry: &mut CtEntry,
    flow: &Flow,
    from_initiator: bool,
    active: &ActivePolicy,
    settings: &Settings,
    now: u64,
) -> Option<Decision> {
    if entry.origin != ORIGIN_POLICY || entry.generation == active.generation {
        return None;
    }
    let original = if from_initiator {
        *flow
    } else {
        flow.reversed()
    };
    let v = acl::judge(&original, active, settings);
    if !v.accepts() {
        gateway_common::conntrack::revoke(entry, flow.proto, now);
        return Some(Decision {
            rule: v.rule,
            ..plain(reason::DROP_REVOKED)
        });
    }
    entry.generation = active.generation;
    entry.rule = v.rule;
    None
}

#[inline(always)]
fn new_entry(
    pkt: &Packet,
    sender_is_a: bool,
    active: &ActivePolicy,
    rule: u32,
    origin: u8,
    now: u64,
) -> CtEntry {
    CtEntry {
        last_seen_ns: now,
        generation: active.generation,
        rule,
        state: conntrack::initial_state(pkt.flow.proto, pkt.tcp_flags),
        initiator: if sender_is_a { 0 } else { 1 },
        origin,
        replied: 0,
        nat_port: 0,
        nat_stamp: 0,
    }
}

/// ICMP errors pass only when they quote a tracked flow and travel back along it (to the
/// quoted packet's sender, as Linux conntrack requires), and, like the flow's own packets, only
/// while the policy still allows a policy-admitted flow (re-checked after a policy change).
#[inline(always)]
fn related(pkt: &Packet, active: &ActivePolicy, settings: &Settings, now: u64) -> Decision {
    let quoted = &pkt.quoted;
    if quoted.family != pkt.flow.family || quoted.src != pkt.flow.dst {
        return plain(reason::DROP_ICMP_UNRELATED);
    }
    let (key, quoted_sender_is_a) = conntrack::key_of(quoted);
    if let Some(ptr) = conntrack::lookup(&key) {
        // SAFETY: a valid map value; concurrent updates of the same flow only race on timestamps.
        let entry = unsafe { &mut *ptr };
        if conntrack::is_live(&key, entry, settings, now) {
            if entry.origin == ORIGIN_REVOKED {
                return plain(reason::DROP_REVOKED);
            }
            let from_initiator = quoted_sender_is_a == (entry.initiator == 0);
            if let Some(revoked) = recheck(entry, quoted, from_initiator, active, settings, now) {
                return revoked;
            }
            return Decision {
                rule: entry.rule,
                ..plain(reason::ACCEPT_RELATED)
            };
        }
    }
    plain(reason::DROP_ICMP_UNRELATED)
}

#[inline(always)]
fn follow_first_fragment(pkt: &Packet, now: u64) -> Decision {
    match fragment::lookup(pkt, now) {
        Some(v) if v.action == ACTION_ACCEPT => plain(reason::ACCEPT_FRAGMENT),
        Some(_) => plain(reason::DROP_FRAG_DENIED),
        None => plain(reason::DROP_FRAG_NO_VERDICT),
    }
}

#[inline(always)]
pub fn in_overlay(dst: &[u8; 16], family: u8, s: &Settings) -> bool {
    if family == FAMILY_V4 {
        return s.in_overlay_v4(u32::from_be_bytes([dst[0], dst[1], dst[2], dst[3]]));
    }
    if s.overlay_v6_enabled == 0 {
        return false;
    }
    let mut i = 0;
    while i < 16 {
        if dst[i] & s.overlay_v6_mask[i] != s.overlay_v6_net[i] {
            return false;
        }
        i += 1;
    }
    true
}
