//! The WireGuard-aware underlay filter (gateway_common::underlay): in front of the gateway's
//! WireGuard port, only well-formed WireGuard messages pass, and handshake initiations only at
//! the configured rates. Everything not addressed to a protected port passes untouched.

use gateway_common::{
    stats::Counter,
    underlay::{Message, SourceKey, admit, classify, reason},
};

use crate::{
    conntrack, maps,
    packet::Bytes,
    parse::{self, FRAG_LATER, Link, PROTO_UDP, Parsed},
};

/// The filter's verdict for one frame, as a reason (see `underlay::drops`).
#[inline(always)]
pub fn filter(bytes: &Bytes) -> u32 {
    let Some(scratch) = maps::SCRATCH.get_ptr_mut(0) else {
        return reason::PASS_OTHER;
    };
    // SAFETY: per-CPU scratch, used by one program run at a time on this CPU.
    let pkt = unsafe { &mut *scratch };
    // Not IP, or IP the kernel will refuse on its own: not this filter's business.
    let Ok(Parsed::Ip) = parse::parse(bytes, Link::Ethernet, pkt) else {
        return reason::PASS_OTHER;
    };
    if pkt.flow.proto != PROTO_UDP {
        return reason::PASS_OTHER;
    }
    if pkt.frag == FRAG_LATER {
        return reason::PASS_FRAGMENT;
    }
    // SAFETY: copied out at once.
    if unsafe { maps::UNDERLAY_PORTS.get(&pkt.flow.dport) }.is_none() {
        return reason::PASS_OTHER;
    }
    let l4 = pkt.l4 as usize;
    if l4 == 0 || l4 > 128 {
        return reason::DROP_TRUNCATED;
    }
    // The UDP length is the whole datagram's, also in a first fragment.
    let (Ok(udp_len), Ok(head)) = (bytes.be16_at(l4 + 4), bytes.array::<4>(l4 + 8)) else {
        return reason::DROP_TRUNCATED;
    };
    if udp_len < 8 {
        return reason::DROP_MALFORMED;
    }
    match classify(udp_len as u32 - 8, head) {
        Message::Initiation => initiation(pkt.flow.src, pkt.flow.family),
        Message::Response => reason::RESPONSE,
        Message::CookieReply => reason::COOKIE_REPLY,
        Message::Transport => reason::TRANSPORT,
        Message::Malformed => reason::DROP_MALFORMED,
    }
}

/// A handshake initiation, admitted at the source's rate and then at this CPU's total rate. A
/// refusal by the total does not count against the source.
#[inline(always)]
fn initiation(src: [u8; 16], family: u8) -> u32 {
    let (Some(s), Some(cpu)) = (
        maps::UNDERLAY_SETTINGS.get(0),
        maps::UNDERLAY_CPU.get_ptr_mut(0),
    ) else {
        return reason::INITIATION;
    };
    let now = conntrack::now_ns();
    let key = SourceKey {
        addr: src,
        family,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once; concurrent updates of one source only race on its timestamp.
    let tat = unsafe { maps::UNDERLAY_SOURCES.get(&key) }
        .copied()
        .unwrap_or(0);
    let Some(next) = admit(tat, now, s.per_source) else {
        return reason::DROP_RATE_SOURCE;
    };
    // SAFETY: this CPU's own entry.
    let cpu = unsafe { &mut *cpu };
    let Some(total) = admit(*cpu, now, s.per_cpu) else {
        return reason::DROP_RATE_TOTAL;
    };
    *cpu = total;
    let _ = maps::UNDERLAY_SOURCES.insert(&key, &next, 0);
    reason::INITIATION
}

#[inline(always)]
pub fn count(r: u32, len: u64) {
    if let Some(c) = maps::UNDERLAY_STATS.get_ptr_mut(r) {
        // SAFETY: this CPU's own counter.
        let c: &mut Counter = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += len;
    }
}
