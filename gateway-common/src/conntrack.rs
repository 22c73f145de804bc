//! Connection tracking entries. One entry per flow, under a canonical key (the lower
//! (address, port) endpoint first), so both directions find it with one lookup. The table is
//! a bucket table (`buckets`) with twice the ways the configured flows need: a new flow whose
//! bucket is full takes the way of its oldest flow that never saw a reply, failing that of its
//! oldest flow.

use crate::{
    assert_size,
    buckets::{Bucket, WAYS, Way},
    settings::Timeouts,
    user_pod,
};

/// 8-aligned: the tables compare and hash it a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Addresses as on the wire; IPv4 uses the first four bytes, the rest are zero.
    pub addr_a: [u8; 16],
    pub addr_b: [u8; 16],
    pub port_a: u16,
    pub port_b: u16,
    pub proto: u8,
    pub family: u8,
    /// ICMP echo: which endpoint asked ([`ECHO_REQUESTER_A`] or [`ECHO_REQUESTER_B`]), so A
    /// pinging B and B pinging A with the same identifier are two flows. 0 otherwise.
    pub echo: u8,
    pub _pad: u8,
}
assert_size!(CtKey, 40);

pub const ECHO_REQUESTER_A: u8 = 1;
pub const ECHO_REQUESTER_B: u8 = 2;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub last_seen_ns: u64,
    /// Policy generation the flow was last checked against.
    pub generation: u32,
    /// Rule that accepted the flow (RULE_DEFAULT for locally originated flows).
    pub rule: u32,
    pub state: u8,
    /// 0: endpoint a opened the flow; 1: endpoint b did.
    pub initiator: u8,
    pub origin: u8,
    /// 1 once the responder has sent a packet.
    pub replied: u8,
    /// The source port masquerade gave this flow, remembered for a moment so that its next
    /// packets need no translation lookup (see [`NatMemo`]); 0: none remembered.
    pub nat_port: u16,
    /// When and for which sender `nat_port` was confirmed ([`NatMemo::stamp`]).
    pub nat_stamp: u16,
}
assert_size!(CtEntry, 24);

/// A flow's masquerade port as its conntrack entry remembers it. The translation tables stay
/// the authority: the memo lives only within the tick (a quarter second) in which a packet of
/// the flow found its translation there and refreshed it. The first packet of each later tick
/// looks it up again, so a translation in use is still refreshed several times a second, and
/// nothing else (the sweep, a translation freed or changed) needs to know of the memo. (An
/// upgrade that carries the translation tables over: for up to one tick after the new programs
/// are attached, a memo may still stand for what the old tables said.) The stamp holds the tick's low 15 bits and, in the top bit, which endpoint of the key
/// sent: a flow between two overlay peers through an exit node is masqueraded both ways, each
/// direction with a port of its own.
pub struct NatMemo;

impl NatMemo {
    /// log2 of a tick in nanoseconds (2^28 ns, 0.27 s).
    pub const TICK_SHIFT: u32 = 28;
    /// Translations that go idle sooner than this are never remembered: their tables must see
    /// every packet's refresh.
    pub const MIN_TIMEOUT_NS: u64 = 8 << Self::TICK_SHIFT;

    /// The stamp of a confirmation at `now` for a packet whose sender is endpoint a (or b).
    #[inline(always)]
    pub const fn stamp(now: u64, sender_is_a: bool) -> u16 {
        ((now >> Self::TICK_SHIFT) as u16 & 0x7fff) | if sender_is_a { 0x8000 } else { 0 }
    }

    /// The remembered port, if it may be used for this packet.
    #[inline(always)]
    pub fn port(entry: &CtEntry, now: u64, sender_is_a: bool) -> Option<u16> {
        (entry.nat_port != 0 && entry.nat_stamp == Self::stamp(now, sender_is_a))
            .then_some(entry.nat_port)
    }

    #[inline(always)]
    pub fn remember(entry: &mut CtEntry, port: u16, now: u64, sender_is_a: bool) {
        entry.nat_port = port;
        entry.nat_stamp = Self::stamp(now, sender_is_a);
    }

    /// Forgets the memo when a packet of the flow arrives in a later tick than the flow's last
    /// one (called before the entry's timestamp moves on). A memo therefore never outlives its
    /// tick, whatever the flow does meanwhile, and the stamp's tick count cannot wrap round
    /// into a false match.
    #[inline(always)]
    pub fn forget_past_tick(entry: &mut CtEntry, now: u64) {
        if (now ^ entry.last_seen_ns) >> Self::TICK_SHIFT != 0 && entry.nat_port != 0 {
            entry.nat_port = 0;
            entry.nat_stamp = 0;
        }
    }
}

/// The flow was accepted by a policy rule: re-checked when the policy changes.
pub const ORIGIN_POLICY: u8 = 0;
/// The flow left through the tunnel's egress (local or already-policed traffic): never re-checked.
pub const ORIGIN_LOCAL: u8 = 1;
/// A flow the policy ended: its packets are dropped (and keep the entry fresh) until it has been
/// quiet for its idle timeout, so neither side can bring it back as a new local flow. Only a new
/// connection the policy allows (or, for TCP, a new SYN from the gateway) replaces it.
pub const ORIGIN_REVOKED: u8 = 2;

pub const STATE_NEW: u8 = 0;
pub const STATE_TCP_SYN_SENT: u8 = 1;
pub const STATE_TCP_ESTABLISHED: u8 = 2;
pub const STATE_TCP_CLOSING: u8 = 3;
pub const STATE_TCP_CLOSED: u8 = 4;

pub const STATE_NAMES: [&str; 5] = ["new", "syn_sent", "established", "closing", "closed"];

pub type CtWay = Way<CtKey, CtEntry>;
assert_size!(CtWay, 64);

pub type CtBucket = Bucket<CtWay>;
assert_size!(CtBucket, 8 + 64 * WAYS);

user_pod!(CtKey, CtEntry, CtWay, CtBucket);

crate::flow_table_entry!(CtKey, CtEntry);

pub const NS_PER_SEC: u64 = 1_000_000_000;

/// A flow's canonical key from one packet's sender (`src`, `sport`) and receiver, and whether
/// the sender is endpoint a of the key. `echo`: for ICMP echo, whether the sender is the one that
/// asked (a request) or answers (a reply); `None` for other flows. The kernel keys every packet
/// with it; the controller finds a translated flow's entry with it.
#[inline(always)]
pub fn flow_key(
    src: &[u8; 16],
    sport: u16,
    dst: &[u8; 16],
    dport: u16,
    proto: u8,
    family: u8,
    echo: Option<bool>,
) -> (CtKey, bool) {
    let sender_is_a = endpoint_le(src, sport, dst, dport);
    let (a, pa, b, pb) = if sender_is_a {
        (*src, sport, *dst, dport)
    } else {
        (*dst, dport, *src, sport)
    };
    let echo = match echo {
        None => 0,
        // The requester is the sender of a request and the receiver of a reply.
        Some(from_requester) => {
            if from_requester == sender_is_a {
                ECHO_REQUESTER_A
            } else {
                ECHO_REQUESTER_B
            }
        }
    };
    let key = CtKey {
        addr_a: a,
        addr_b: b,
        port_a: pa,
        port_b: pb,
        proto,
        family,
        echo,
        _pad: 0,
    };
    (key, sender_is_a)
}

#[inline(always)]
fn endpoint_le(a: &[u8; 16], pa: u16, b: &[u8; 16], pb: u16) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    pa <= pb
}

/// Turns a live entry into a tombstone (see [`ORIGIN_REVOKED`]): the kernel's rule when a
/// packet finds its flow revoked, and the controller's sweep. A TCP tombstone counts as closed:
/// its short timeout applies, and a new SYN may open the connection again.
#[inline(always)]
pub fn revoke(entry: &mut CtEntry, proto: u8, now_ns: u64) {
    entry.origin = ORIGIN_REVOKED;
    entry.last_seen_ns = now_ns;
    entry.nat_port = 0;
    entry.nat_stamp = 0;
    if proto == 6 {
        entry.state = STATE_TCP_CLOSED;
    }
}

/// Idle timeout of an entry in nanoseconds: the kernel and the controller's sweep use this one rule.
#[inline(always)]
pub fn timeout_ns(key: &CtKey, entry: &CtEntry, t: &Timeouts) -> u64 {
    let secs = match key.proto {
        6 => match entry.state {
            STATE_TCP_SYN_SENT => t.tcp_syn,
            STATE_TCP_ESTABLISHED => t.tcp_established,
            _ => t.tcp_closing,
        },
        17 => {
            if entry.replied != 0 {
                t.udp_stream
            } else {
                t.udp
            }
        }
        1 | 58 => t.icmp,
        _ => t.other,
    };
    secs as u64 * NS_PER_SEC
}

#[inline(always)]
pub fn is_live(key: &CtKey, entry: &CtEntry, t: &Timeouts, now_ns: u64) -> bool {
    now_ns.saturating_sub(entry.last_seen_ns) <= timeout_ns(key, entry, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: u64 = 1 << NatMemo::TICK_SHIFT;

    fn entry_seen_at(ns: u64) -> CtEntry {
        CtEntry {
            last_seen_ns: ns,
            ..Default::default()
        }
    }

    #[test]
    fn a_nat_memo_serves_its_own_sender_within_its_tick_only() {
        let t0 = 1_000 * TICK + 5;
        let mut e = entry_seen_at(t0);
        assert_eq!(NatMemo::port(&e, t0, true), None, "nothing remembered yet");
        NatMemo::remember(&mut e, 40_001, t0, true);
        assert_eq!(NatMemo::port(&e, t0 + TICK - 6, true), Some(40_001));
        // The other endpoint's packets have a translation of their own.
        assert_eq!(NatMemo::port(&e, t0, false), None);
        // The next tick asks the tables again.
        assert_eq!(NatMemo::port(&e, t0 + TICK, true), None);
        // A port of 0 is no memo, whatever the stamp.
        NatMemo::remember(&mut e, 0, t0, true);
        assert_eq!(NatMemo::port(&e, t0, true), None);
    }

    #[test]
    fn a_nat_memo_is_forgotten_by_the_first_packet_of_a_later_tick() {
        let t0 = 7 * TICK + 100;
        let mut e = entry_seen_at(t0);
        NatMemo::remember(&mut e, 40_001, t0, false);
        // Within the tick: kept.
        NatMemo::forget_past_tick(&mut e, t0 + 10);
        assert_eq!(
            (e.nat_port, NatMemo::port(&e, t0 + 10, false)),
            (40_001, Some(40_001))
        );
        // A packet one tick later, even after less than a tick of silence: forgotten.
        NatMemo::forget_past_tick(&mut e, 8 * TICK);
        assert_eq!((e.nat_port, e.nat_stamp), (0, 0));
        // 2^15 ticks later the stamp's tick would match again; the memo is gone by then.
        NatMemo::remember(&mut e, 40_002, t0, false);
        let wrapped = t0 + (1 << 15) * TICK;
        assert_eq!(NatMemo::stamp(wrapped, false), e.nat_stamp);
        NatMemo::forget_past_tick(&mut e, wrapped);
        assert_eq!(NatMemo::port(&e, wrapped, false), None);
    }

    #[test]
    fn a_revoked_flow_keeps_no_nat_memo() {
        let mut e = entry_seen_at(TICK);
        NatMemo::remember(&mut e, 40_001, TICK, true);
        revoke(&mut e, 17, TICK + 1);
        assert_eq!(NatMemo::port(&e, TICK + 1, true), None);
    }
}
