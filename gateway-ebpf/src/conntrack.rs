//! Connection tracking: one entry per flow under a canonical key in a bucket table
//! (buckets.rs), TCP state, idle expiry, and re-checking of policy-admitted flows when the
//! policy generation changes.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use gateway_common::{conntrack::*, settings::Settings};

use crate::{
    buckets::{self, Evict, Found},
    maps,
    parse::{ECHO_FROM_REQUESTER, ECHO_NONE, Flow, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// A flow's key, and whether the packet's sender is endpoint a of the key.
#[inline(always)]
pub fn key_of(flow: &Flow) -> (CtKey, bool) {
    let echo = match flow.echo {
        ECHO_NONE => None,
        e => Some(e == ECHO_FROM_REQUESTER),
    };
    flow_key(
        &flow.src,
        flow.sport,
        &flow.dst,
        flow.dport,
        flow.proto,
        flow.family,
        echo,
    )
}

/// CLOCK_MONOTONIC at tick resolution: idle timeouts are seconds, and the coarse clock costs a
/// load where the precise one costs a clock-source read (tens of ns in a VM).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn is_live(key: &CtKey, entry: &CtEntry, settings: &Settings, now: u64) -> bool {
    gateway_common::conntrack::is_live(key, entry, &settings.timeouts, now)
}

/// Whether this packet starts a new TCP connection over a finished one (the old entry is ignored).
#[inline(always)]
pub fn reopens(key: &CtKey, entry: &CtEntry, tcp_flags: u8) -> bool {
    key.proto == PROTO_TCP
        && entry.state >= STATE_TCP_CLOSING
        && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
pub fn initial_state(proto: u8, tcp_flags: u8) -> u8 {
    if proto != PROTO_TCP {
        return STATE_NEW;
    }
    if tcp_flags & TCP_RST != 0 {
        STATE_TCP_CLOSED
    } else if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        STATE_TCP_SYN_SENT
    } else {
        // Mid-stream pickup (the gateway restarted, or the entry was evicted).
        STATE_TCP_ESTABLISHED
    }
}

/// Advances an entry for a packet of the flow.
#[inline(always)]
pub fn update(entry: &mut CtEntry, proto: u8, tcp_flags: u8, from_initiator: bool, now: u64) {
    NatMemo::forget_past_tick(entry, now);
    entry.last_seen_ns = now;
    if !from_initiator {
        entry.replied = 1;
    }
    if proto != PROTO_TCP {
        return;
    }
    if tcp_flags & TCP_RST != 0 {
        entry.state = STATE_TCP_CLOSED;
    } else if tcp_flags & TCP_FIN != 0 {
        if entry.state < STATE_TCP_CLOSING {
            entry.state = STATE_TCP_CLOSING;
        }
    } else if entry.state == STATE_TCP_SYN_SENT
        && (!from_initiator || entry.replied != 0)
        && tcp_flags & TCP_ACK != 0
    {
        entry.state = STATE_TCP_ESTABLISHED;
    }
}

/// Records a flow, replacing whatever its key held (the caller found it not live, or ended
/// and being opened again). A full bucket gives up a flow that is no longer live, failing that
/// its oldest unanswered flow, failing that its oldest. A failure (a bucket another CPU is
/// writing) leaves the packet's verdict as is: its next packet records the flow.
#[inline(always)]
pub fn insert(key: &CtKey, entry: &CtEntry, settings: &Settings, now: u64) {
    let mut unused = CtEntry::default();
    let _ = buckets::claim(
        &maps::CONNTRACK,
        &maps::CONNTRACK_SHAPE,
        key,
        entry,
        &mut unused,
        false,
        Evict::Oldest,
        gateway_common::stats::evicted::CONNTRACK,
        |k, e| is_live(k, e, settings, now),
    );
}

/// The flow's entry, in place in the table (its packets update it there), or that there is
/// none, or that another CPU was writing its bucket (then nothing can be said: the caller
/// must not take the flow for a new one, which could replace a tombstone).
#[inline(always)]
pub fn look_up(key: &CtKey) -> Found<CtEntry> {
    buckets::look_up(&maps::CONNTRACK, &maps::CONNTRACK_SHAPE, key, |_| {})
}

/// [`look_up`] for callers to whom a bucket being written is as good as no entry (they then
/// drop the packet, or hand it to the full path, which looks again).
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut CtEntry> {
    look_up(key).at()
}
