//! MSS clamping on the tunnel: a TCP SYN or SYN-ACK crossing a tunnel interface (either way)
//! announces at most what the tunnel carries without fragmenting, so hosts on a 1500-byte LAN
//! and peers behind other links agree on segments that fit the tunnel's MTU. Only ever lowered.

use aya_ebpf::{
    helpers::generated::{bpf_l4_csum_replace, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use gateway_common::{
    conntrack::FAMILY_V4,
    mss::{MAX_TCP_OPTIONS, find_mss},
};

use crate::{
    maps,
    parse::{FRAG_NONE, PROTO_TCP, Packet, TCP_SYN},
};

const TCP_HEADER: usize = 20;
const TCP_CHECKSUM_AT: usize = 16;
/// bpf_l4_csum_replace: the low bits give the size of the replaced field.
const CSUM_FIELD_2_BYTES: u64 = 2;

pub enum Clamp {
    /// Not a SYN, no clamp on this interface, no MSS option, or one already small enough.
    Untouched,
    Lowered,
    /// The options could not be read or written (counted; the SYN passes as it was).
    Failed,
}

/// Lowers the MSS option of a SYN leaving or entering through this tunnel interface.
#[inline(always)]
pub fn clamp(ctx: &TcContext, pkt: &Packet) -> Clamp {
    if pkt.flow.proto != PROTO_TCP || pkt.tcp_flags & TCP_SYN == 0 || pkt.frag != FRAG_NONE {
        return Clamp::Untouched;
    }
    // SAFETY: the context's own skb pointer.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once.
    let Some(limits) = (unsafe { maps::TUNNEL_MSS.get(&ifindex) }).copied() else {
        return Clamp::Untouched;
    };
    let limit = if pkt.flow.family == FAMILY_V4 {
        limits.v4
    } else {
        limits.v6
    };
    let l4 = pkt.l4 as usize;
    // (Bounds for the verifier: the parse never goes past 512 bytes.)
    if limit == 0 || l4 == 0 || l4 > 512 {
        return Clamp::Untouched;
    }
    let Ok(offset_byte) = ctx.load::<u8>(l4 + 12) else {
        return Clamp::Failed;
    };
    let header = ((offset_byte >> 4) as usize) * 4;
    if header <= TCP_HEADER {
        return Clamp::Untouched;
    }
    let len = header - TCP_HEADER;
    if len > MAX_TCP_OPTIONS {
        return Clamp::Failed;
    }
    let mut opts = [0u8; MAX_TCP_OPTIONS];
    // SAFETY: `len` is 1..=40 and `opts` holds 40 bytes.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            (l4 + TCP_HEADER) as u32,
            opts.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if rc != 0 {
        return Clamp::Failed;
    }
    let Some((at, mss)) = find_mss(&opts, len) else {
        return Clamp::Untouched;
    };
    if mss <= limit {
        return Clamp::Untouched;
    }
    let (old, new) = (mss.to_be(), limit.to_be());
    let field = (l4 + TCP_HEADER + at + 2) as u32;
    // SAFETY: helper calls on the program's own skb with a 2-byte local; the store makes the
    // skb writable (unclones it) if it has to. The checksum update is the kernel's, which also
    // handles skbs whose checksum is left to offload (CHECKSUM_PARTIAL: nothing to change).
    unsafe {
        if bpf_skb_store_bytes(ctx.skb.skb.cast(), field, (&new as *const u16).cast(), 2, 0) != 0 {
            return Clamp::Failed;
        }
        if bpf_l4_csum_replace(
            ctx.skb.skb.cast(),
            (l4 + TCP_CHECKSUM_AT) as u32,
            old as u64,
            new as u64,
            CSUM_FIELD_2_BYTES,
        ) != 0
        {
            return Clamp::Failed;
        }
    }
    Clamp::Lowered
}
