//! The WireGuard-aware underlay filter (gateway_common::underlay): in front of the gateway's
//! WireGuard port, only well-formed WireGuard messages pass, and handshake initiations only at
//! the configured rates. Everything not addressed to a protected port passes untouched.

use aya_ebpf::{
    bindings::__sk_buff,
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
};
use gateway_common::{
    stats::Counter,
    underlay::{Message, SourceKey, admit, classify, drops, reason},
};

use crate::{
    conntrack, maps,
    packet::Bytes,
    parse::{self, FRAG_LATER, Link, PROTO_UDP, Parsed},
};

/// Most datagrams one GSO/GRO aggregate may carry: each is checked, and an aggregate of more
/// (only tiny messages merged by the dozen would make one) is dropped as malformed rather than
/// let through unchecked.
pub const SEGMENTS_MAX: u32 = 64;

/// A datagram to a protected port: where its UDP header is, and its payload's length (an
/// aggregate's: all of its datagrams).
struct Target {
    l4: usize,
    payload: u32,
}

/// The datagram the filter has to judge, or the verdict for a frame it does not.
#[inline(always)]
fn target(bytes: &Bytes, pkt: &mut parse::Packet) -> Result<Target, u32> {
    // Not IP, or IP the kernel will refuse on its own: not this filter's business.
    let Ok(Parsed::Ip) = parse::parse(bytes, Link::Ethernet, pkt) else {
        return Err(reason::PASS_OTHER);
    };
    if pkt.flow.proto != PROTO_UDP {
        return Err(reason::PASS_OTHER);
    }
    if pkt.frag == FRAG_LATER {
        return Err(reason::PASS_FRAGMENT);
    }
    // SAFETY: copied out at once.
    if unsafe { maps::UNDERLAY_PORTS.get(&pkt.flow.dport) }.is_none() {
        return Err(reason::PASS_OTHER);
    }
    let l4 = pkt.l4 as usize;
    if l4 == 0 || l4 > 128 {
        return Err(reason::DROP_TRUNCATED);
    }
    // The UDP length is the whole datagram's, also in a first fragment (and an aggregate's
    // whole length in a GSO/GRO skb).
    let Ok(udp_len) = bytes.be16_at(l4 + 4) else {
        return Err(reason::DROP_TRUNCATED);
    };
    if udp_len < 8 {
        return Err(reason::DROP_MALFORMED);
    }
    Ok(Target {
        l4,
        payload: udp_len as u32 - 8,
    })
}

/// The per-CPU parse scratch.
#[inline(always)]
fn scratch() -> Option<&'static mut parse::Packet> {
    let p = maps::SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by one program run at a time on this CPU.
    Some(unsafe { &mut *p })
}

/// The filter's verdict for one frame, as a reason (see `underlay::drops`).
#[inline(always)]
pub fn filter(bytes: &Bytes) -> u32 {
    let Some(pkt) = scratch() else {
        return reason::PASS_OTHER;
    };
    match target(bytes, pkt) {
        Ok(t) => single(bytes, &t, pkt),
        Err(r) => r,
    }
}

/// The verdict for a datagram that is not an aggregate.
#[inline(always)]
fn single(bytes: &Bytes, t: &Target, pkt: &parse::Packet) -> u32 {
    let Ok(head) = bytes.array::<4>(t.l4 + 8) else {
        return reason::DROP_TRUNCATED;
    };
    message(t.payload, head, pkt.flow.src, pkt.flow.family)
}

/// The verdict for an skb at TC, and how many datagrams it carries. A GSO/GRO aggregate
/// (`gso_size` set: a sender's UDP segmentation offload crossing a veth, or the receive side's
/// UDP GRO) holds several datagrams under one UDP header, each `gso_size` bytes of payload but
/// the last: every one is judged, and one that would be dropped drops the aggregate.
#[inline(always)]
pub fn filter_skb(bytes: &Bytes, skb: *mut __sk_buff, gso_size: u32) -> (u32, u32) {
    let Some(pkt) = scratch() else {
        return (reason::PASS_OTHER, 1);
    };
    // One parse for both kinds of skb: inlined twice, it doubled what the verifier walks
    // (64% of its limit on 6.1).
    let t = match target(bytes, pkt) {
        Ok(t) => t,
        Err(r) => return (r, 1),
    };
    if gso_size == 0 {
        return (single(bytes, &t, pkt), 1);
    }
    // Every datagram of the aggregate is counted under its verdict.
    let datagrams = (t.payload + gso_size - 1) / gso_size;
    if datagrams > SEGMENTS_MAX {
        return (reason::DROP_MALFORMED, datagrams);
    }
    let mut a = Aggregate {
        skb,
        src: pkt.flow.src,
        family: pkt.flow.family as u32,
        at: (t.l4 + 8) as u32,
        payload: t.payload,
        gso_size,
        first: reason::PASS_OTHER,
        dropped: NOT_DROPPED,
    };
    // bpf_loop, not a bounded loop: the verifier checks the body once instead of once per
    // datagram, which kept loading this program slow enough to be interrupted.
    // SAFETY: the callback reads and writes only `a`, on this stack frame, for the call's length.
    unsafe {
        bpf_loop(
            datagrams,
            judge_datagram as *mut c_void,
            (&mut a as *mut Aggregate).cast(),
            0,
        )
    };
    if a.dropped != NOT_DROPPED {
        return (a.dropped, datagrams);
    }
    (a.first, datagrams)
}

const NOT_DROPPED: u32 = u32::MAX;

/// What the datagrams of one aggregate are judged with, and what came of it.
#[repr(C)]
struct Aggregate {
    skb: *mut __sk_buff,
    src: [u8; 16],
    family: u32,
    /// Offset of the first datagram's payload.
    at: u32,
    payload: u32,
    gso_size: u32,
    /// The first datagram's reason.
    first: u32,
    /// The reason that drops the aggregate, if one did.
    dropped: u32,
}

/// Judges datagram `k` of the aggregate at `ctx` (an [`Aggregate`]); 1 stops the loop.
#[inline(never)]
extern "C" fn judge_datagram(k: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer filter_skb gave it, to its live Aggregate.
    let a = unsafe { &mut *(ctx as *mut Aggregate) };
    let off = k as u32 * a.gso_size;
    if off >= a.payload {
        return 1;
    }
    let rest = a.payload - off;
    let len = if rest < a.gso_size { rest } else { a.gso_size };
    let mut head = [0u8; 4];
    // SAFETY: helper call into a 4-byte local; the offset is checked by the kernel.
    let rc =
        unsafe { bpf_skb_load_bytes(a.skb as *const _, a.at + off, head.as_mut_ptr().cast(), 4) };
    if rc != 0 {
        a.dropped = reason::DROP_TRUNCATED;
        return 1;
    }
    let r = message(len, head, a.src, a.family as u8);
    if drops(r) {
        a.dropped = r;
        return 1;
    }
    if k == 0 {
        a.first = r;
    }
    0
}

/// One WireGuard message of `len` bytes whose first four are `head`, from `src`.
#[inline(always)]
fn message(len: u32, head: [u8; 4], src: [u8; 16], family: u8) -> u32 {
    match classify(len, head) {
        Message::Initiation => initiation(src, family),
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

/// Counts `packets` datagrams of `len` bytes in all under reason `r`.
#[inline(always)]
pub fn count(r: u32, packets: u32, len: u64) {
    if let Some(c) = maps::UNDERLAY_STATS.get_ptr_mut(r) {
        // SAFETY: this CPU's own counter.
        let c: &mut Counter = unsafe { &mut *c };
        c.packets += packets as u64;
        c.bytes += len;
    }
}
