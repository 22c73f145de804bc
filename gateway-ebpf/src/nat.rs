//! Masquerade toward the LAN and its reverse.
//!
//! - [`masquerade`] (tunnel TC ingress when it forwards to the LAN interface, else the LAN
//!   interface's TC egress): a flow from the overlay to a masqueraded network leaves with the
//!   interface's address and a port of the range (the original port when free); the
//!   translation is recorded both ways before the first packet leaves.
//! - [`unmasquerade`] (LAN interface, ingress, before the policy): a packet to the interface's
//!   address on a translated flow gets its original destination back, so policy and conntrack
//!   judge the flow as the peer opened it.
//!
//! Rewrites go through a [`Rewrite`]: TC uses the kernel's store and checksum helpers; XDP writes
//! the frame directly and updates checksums incrementally, including a local sender's
//! CHECKSUM_PARTIAL field (only the pseudo-header sum, see `forward::partial_checksum`).

use aya_ebpf::{
    helpers::generated::{
        bpf_get_prandom_u32, bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_skb_load_bytes,
        bpf_skb_store_bytes,
    },
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    checksum,
    conntrack::{CtEntry, FAMILY_V4, NatMemo},
    fragment::FragKey,
    nat::{
        NatKey, NatPrefix, NatSettings, NatTarget, PORT_ATTEMPTS, V4_MAPPED_PREFIX_BITS,
        candidate_port, mapped, timeout_ns,
    },
    settings::Settings,
};

use crate::{
    judge, maps,
    nat_table::{self, Claim, Found},
    parse::{
        ECHO_NONE, FRAG_FIRST, FRAG_LATER, FRAG_NONE, ICMP_ECHO, ICMP_ERROR, PROTO_ICMP,
        PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Packet, TCP_ACK, TCP_SYN,
    },
};

/// Per-CPU room for the keys and targets of one translation: on the stack they would not fit
/// beside the LAN programs' own frames (512 bytes for the whole call chain).
pub struct Scratch {
    /// The datagram of a fragmented reply (its later fragments carry no ports).
    frag: FragKey,
    key: NatKey,
    reverse: NatKey,
    /// The forward or reverse key of another translation, when one is checked.
    holder: NatKey,
    original: NatTarget,
    target: NatTarget,
    /// What a translation's entry in the other table holds, when one is checked.
    other: NatTarget,
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU, used by one program run at a time on this CPU.
    maps::NAT_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// What translation did to a packet.
pub enum Nat {
    /// Not a packet of a masqueraded flow.
    Untouched,
    Translated,
    /// Dropped, with the reason.
    Drop(u32),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// Writes an address or port of the parsed packet and keeps its checksums right.
pub trait Rewrite {
    fn set_addr(&self, pkt: &Packet, end: End, old: &[u8; 16], new: &[u8; 16]) -> bool;
    /// TCP/UDP port, or the ICMP echo identifier (for which `end` does not matter).
    fn set_port(&self, pkt: &Packet, end: End, old: u16, new: u16) -> bool;
    /// In an ICMP error, the quoted packet's address and port at `end` (RFC 5508), with the
    /// quoted IPv4 header's checksum, the quoted TCP/UDP checksum (when the error carries it)
    /// and the ICMP checksum kept right.
    fn set_quoted(
        &self,
        pkt: &Packet,
        end: End,
        old: &[u8; 16],
        new: &[u8; 16],
        old_port: u16,
        new_port: u16,
    ) -> bool;
}

/// Where the quoted packet's port (or echo identifier) at `end` is.
#[inline(always)]
fn quoted_port_at(pkt: &Packet, end: End) -> usize {
    let off = if pkt.quoted.echo != ECHO_NONE {
        4
    } else if end == End::Src {
        0
    } else {
        2
    };
    pkt.quoted_l4 as usize + off
}

/// Where the quoted packet's TCP/UDP checksum is, when the error carries all of it (an ICMPv4
/// error quotes 8 bytes of the transport header: UDP's checksum, not TCP's).
#[inline(always)]
fn quoted_check_at(pkt: &Packet) -> Option<usize> {
    let off = match pkt.quoted.proto {
        _ if pkt.quoted.echo != ECHO_NONE => return None,
        PROTO_UDP => 6,
        PROTO_TCP => 16,
        _ => return None,
    };
    let at = pkt.quoted_l4 as usize + off;
    (at + 2 <= (pkt.l3 + pkt.ip_len) as usize).then_some(at)
}

const BPF_F_PSEUDO_HDR: u64 = 0x10;
/// How long a fragmented reply's first fragment speaks for its later ones.
const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;

/// Where the L4 checksum field is, and whether the protocol has one we keep.
#[inline(always)]
fn l4_check_at(pkt: &Packet) -> Option<usize> {
    match pkt.flow.proto {
        PROTO_TCP => Some(16),
        PROTO_UDP => Some(6),
        PROTO_ICMP | PROTO_ICMPV6 => Some(2),
        _ => None,
    }
}

/// Whether the packet carries its L4 header (not a later fragment).
#[inline(always)]
fn has_l4(pkt: &Packet) -> bool {
    pkt.frag != FRAG_LATER && pkt.l4 != 0
}

/// Where an end's port (or the echo identifier) is, from the L4 header.
#[inline(always)]
fn port_at(pkt: &Packet, end: End) -> usize {
    if pkt.icmp == ICMP_ECHO {
        4
    } else if end == End::Src {
        0
    } else {
        2
    }
}

/// Where an end's address is, from the IP header.
#[inline(always)]
fn addr_at(v4: bool, end: End) -> usize {
    match (v4, end) {
        (true, End::Src) => 12,
        (true, End::Dst) => 16,
        (false, End::Src) => 8,
        (false, End::Dst) => 24,
    }
}

/// A pointer to `N` bytes at `offset` of the packet's directly readable area `[data, end)`, if
/// they are there.
#[inline(always)]
fn linear_at<const N: usize>(data: usize, end: usize, offset: usize) -> Option<*mut [u8; N]> {
    // (Bounds for the verifier: the parse never goes past 512 bytes.)
    if offset > 600 {
        return None;
    }
    let p = data + crate::packet::bounded_for_verifier(offset);
    if p + N > end {
        return None;
    }
    Some(p as *mut [u8; N])
}

pub struct TcRewrite<'a>(pub &'a TcContext);

impl Rewrite for TcRewrite<'_> {
    #[inline(always)]
    fn set_quoted(
        &self,
        pkt: &Packet,
        end: End,
        old: &[u8; 16],
        new: &[u8; 16],
        old_port: u16,
        new_port: u16,
    ) -> bool {
        self.quoted(pkt, end, old, new, old_port, new_port)
    }

    #[inline(always)]
    fn set_addr(&self, pkt: &Packet, end: End, old: &[u8; 16], new: &[u8; 16]) -> bool {
        let skb = self.0.skb.skb.cast();
        let v4 = pkt.flow.family == FAMILY_V4;
        let at = pkt.l3 as usize + addr_at(v4, end);
        // A later fragment has no L4 header (its checksum is in the first fragment). 0: no
        // checksum to keep (a plain integer, not an `Option`: the payload of a `None` is undefined,
        // and the verifier refuses a register spilled with it).
        let check = if has_l4(pkt) {
            l4_check_at(pkt).map_or(0, |c| pkt.l4 as usize + c)
        } else {
            0
        };
        // ICMPv4 has no pseudo-header; UDP over IPv4 may carry no checksum (the kernel helper
        // keeps a zero field zero with BPF_F_MARK_MANGLED_0).
        let pseudo = pkt.flow.proto != PROTO_ICMP;
        let udp = if pkt.flow.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0
        } else {
            0
        };
        let words = if v4 { 1 } else { 4 };
        let mut i = 0;
        while i < 4 {
            if i < words {
                let o = u32::from_ne_bytes([
                    old[4 * i],
                    old[4 * i + 1],
                    old[4 * i + 2],
                    old[4 * i + 3],
                ]);
                let n = u32::from_ne_bytes([
                    new[4 * i],
                    new[4 * i + 1],
                    new[4 * i + 2],
                    new[4 * i + 3],
                ]);
                if !self.write(at + 4 * i, n.to_ne_bytes()) {
                    return false;
                }
                // SAFETY: helper calls on the program's own skb.
                unsafe {
                    if v4
                        && bpf_l3_csum_replace(skb, (pkt.l3 + 10) as u32, o as u64, n as u64, 4)
                            != 0
                    {
                        return false;
                    }
                    if check != 0 {
                        if pseudo
                            && bpf_l4_csum_replace(
                                skb,
                                check as u32,
                                o as u64,
                                n as u64,
                                BPF_F_PSEUDO_HDR | udp | 4,
                            ) != 0
                        {
                            return false;
                        }
                    }
                }
            }
            i += 1;
        }
        true
    }

    #[inline(always)]
    fn set_port(&self, pkt: &Packet, end: End, old: u16, new: u16) -> bool {
        let skb = self.0.skb.skb.cast();
        let at = pkt.l4 as usize + port_at(pkt, end);
        let (o, n) = (old.to_be(), new.to_be());
        let udp = if pkt.flow.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0
        } else {
            0
        };
        if !self.write(at, n.to_ne_bytes()) {
            return false;
        }
        // SAFETY: a helper call on the program's own skb.
        unsafe {
            match l4_check_at(pkt) {
                Some(c) => {
                    bpf_l4_csum_replace(
                        skb,
                        (pkt.l4 as usize + c) as u32,
                        o as u64,
                        n as u64,
                        udp | 2,
                    ) == 0
                }
                None => true,
            }
        }
    }
}

impl TcRewrite<'_> {
    /// Writes `bytes` at `offset` of the linear area, if they are there: a store in place,
    /// where `bpf_skb_store_bytes` costs a helper call, a writability check and a `memcpy`
    /// (three per translated and forwarded packet). The verifier makes the skb writable at the
    /// program's start (it unclones a cloned skb there) once a program writes directly.
    #[inline(always)]
    fn write<const N: usize>(&self, offset: usize, bytes: [u8; N]) -> bool {
        // Read again for every write: the checksum helpers invalidate packet pointers.
        let Some(p) = linear_at::<N>(self.0.data(), self.0.data_end(), offset) else {
            return false;
        };
        // SAFETY: [p, p + N) is inside the linear area, checked by `linear_at`.
        unsafe { core::ptr::write_unaligned(p, bytes) };
        true
    }

    #[inline(always)]
    fn quoted(
        &self,
        pkt: &Packet,
        end: End,
        old: &[u8; 16],
        new: &[u8; 16],
        old_port: u16,
        new_port: u16,
    ) -> bool {
        let skb = self.0.skb.skb.cast();
        let v4 = pkt.flow.family == FAMILY_V4;
        let (q3, icmp_check) = (pkt.quoted_l3 as usize, (pkt.l4 + 2) as u32);
        let at = q3 + addr_at(v4, end);
        let words = if v4 { 1 } else { 4 };
        let mut i = 0;
        while i < 4 {
            if i < words {
                let o = u32::from_ne_bytes([
                    old[4 * i],
                    old[4 * i + 1],
                    old[4 * i + 2],
                    old[4 * i + 3],
                ]);
                let n = u32::from_ne_bytes([
                    new[4 * i],
                    new[4 * i + 1],
                    new[4 * i + 2],
                    new[4 * i + 3],
                ]);
                // SAFETY: helper calls on the program's own skb with 4-byte locals.
                unsafe {
                    if bpf_skb_store_bytes(
                        skb,
                        (at + 4 * i) as u32,
                        (&n as *const u32).cast(),
                        4,
                        0,
                    ) != 0
                    {
                        return false;
                    }
                    // IPv4: the quoted header's checksum absorbs the change, so the ICMP checksum
                    // (which covers both) does not move. IPv6 has no header checksum.
                    let rc = if v4 {
                        bpf_l3_csum_replace(skb, (q3 + 10) as u32, o as u64, n as u64, 4)
                    } else {
                        bpf_l4_csum_replace(skb, icmp_check, o as u64, n as u64, 4)
                    };
                    if rc != 0 {
                        return false;
                    }
                }
            }
            i += 1;
        }
        let (o, n) = (old_port.to_be(), new_port.to_be());
        // SAFETY: helper calls on the program's own skb with a 2-byte local.
        let port_written = unsafe {
            bpf_skb_store_bytes(
                skb,
                quoted_port_at(pkt, end) as u32,
                (&n as *const u16).cast(),
                2,
                0,
            ) == 0
                && bpf_l4_csum_replace(skb, icmp_check, o as u64, n as u64, 2) == 0
        };
        if !port_written {
            return false;
        }
        let Some(at) = quoted_check_at(pkt) else {
            return true;
        };
        let mut raw = [0u8; 2];
        // SAFETY: helper calls on the program's own skb with 2-byte locals.
        unsafe {
            if bpf_skb_load_bytes(skb as *const _, at as u32, raw.as_mut_ptr().cast(), 2) != 0 {
                return true;
            }
            let c = u16::from_be_bytes(raw);
            let udp = pkt.quoted.proto == PROTO_UDP;
            let updated =
                checksum::quoted_transport_check(c, udp, v4, old, new, old_port, new_port)
                    .to_be_bytes();
            bpf_skb_store_bytes(skb, at as u32, updated.as_ptr().cast(), 2, 0) == 0
                && bpf_l4_csum_replace(
                    skb,
                    icmp_check,
                    u16::from_ne_bytes(raw) as u64,
                    u16::from_ne_bytes(updated) as u64,
                    2,
                ) == 0
        }
    }
}

pub struct XdpRewrite<'a> {
    ctx: &'a XdpContext,
    /// Whether the TCP/UDP checksum field holds only the pseudo-header sum (CHECKSUM_PARTIAL):
    /// worked out once, before the first rewrite, and only for packets that are rewritten
    /// (0: not yet, 1: partial, 2: full).
    partial: core::cell::Cell<u8>,
}

impl<'a> XdpRewrite<'a> {
    pub fn new(ctx: &'a XdpContext) -> Self {
        XdpRewrite {
            ctx,
            partial: core::cell::Cell::new(0),
        }
    }

    #[inline(always)]
    fn partial(&self, pkt: &Packet) -> bool {
        if self.partial.get() == 0 {
            self.partial
                .set(if crate::forward::partial_checksum(self.ctx, pkt) {
                    1
                } else {
                    2
                });
        }
        self.partial.get() == 1
    }

    /// A pointer to `N` bytes at `offset` of the first buffer, if they are there.
    #[inline(always)]
    fn at<const N: usize>(&self, offset: usize) -> Option<*mut [u8; N]> {
        linear_at::<N>(self.ctx.data(), self.ctx.data_end(), offset)
    }

    /// Rewrites an address of the IPv4 header at `l3` and updates its checksum, through one
    /// bounds-checked pointer to the whole header (the verifier cannot relate two checks of
    /// offsets the compiler derived from each other).
    #[inline(always)]
    fn ipv4_addr(&self, l3: usize, end: End, old: &[u8; 16], new: &[u8; 16]) -> bool {
        let Some(h) = self.at::<20>(l3) else {
            return false;
        };
        let h = h as *mut u8;
        let w = |a: &[u8; 16]| u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        // SAFETY: all offsets are inside the 20-byte header checked by `at`.
        unsafe {
            let hc = u16::from_be_bytes([*h.add(10), *h.add(11)]);
            core::ptr::write_unaligned(
                h.add(addr_at(true, end)) as *mut [u8; 4],
                [new[0], new[1], new[2], new[3]],
            );
            core::ptr::write_unaligned(
                h.add(10) as *mut [u8; 2],
                checksum::update32(hc, w(old), w(new)).to_be_bytes(),
            );
        }
        true
    }

    #[inline(always)]
    fn read16(&self, offset: usize) -> Option<u16> {
        // SAFETY: inside the frame, checked by `at`.
        self.at::<2>(offset)
            .map(|p| u16::from_be_bytes(unsafe { core::ptr::read_unaligned(p) }))
    }

    #[inline(always)]
    fn write16(&self, offset: usize, v: u16) -> bool {
        match self.at::<2>(offset) {
            // SAFETY: inside the frame, checked by `at`.
            Some(p) => {
                unsafe { core::ptr::write_unaligned(p, v.to_be_bytes()) };
                true
            }
            None => false,
        }
    }
}

impl Rewrite for XdpRewrite<'_> {
    #[inline(always)]
    fn set_quoted(
        &self,
        pkt: &Packet,
        end: End,
        old: &[u8; 16],
        new: &[u8; 16],
        old_port: u16,
        new_port: u16,
    ) -> bool {
        let v4 = pkt.flow.family == FAMILY_V4;
        let q3 = pkt.quoted_l3 as usize;
        let icmp_check = pkt.l4 as usize + 2;
        let Some(mut ic) = self.read16(icmp_check) else {
            return false;
        };
        if v4 {
            // The quoted header's checksum absorbs the change: the ICMP checksum (over both)
            // does not move.
            if !self.ipv4_addr(q3, end, old, new) {
                return false;
            }
        } else {
            let Some(p) = self.at::<16>(q3 + addr_at(false, end)) else {
                return false;
            };
            // SAFETY: inside the frame, checked by `at`.
            unsafe { core::ptr::write_unaligned(p, *new) };
            ic = checksum::update128(ic, old, new);
        }
        if !self.write16(quoted_port_at(pkt, end), new_port) {
            return false;
        }
        ic = checksum::update16(ic, old_port, new_port);
        if let Some(at) = quoted_check_at(pkt) {
            if let Some(c) = self.read16(at) {
                let udp = pkt.quoted.proto == PROTO_UDP;
                let updated =
                    checksum::quoted_transport_check(c, udp, v4, old, new, old_port, new_port);
                if !self.write16(at, updated) {
                    return false;
                }
                ic = checksum::update16(ic, c, updated);
            }
        }
        self.write16(icmp_check, ic)
    }

    #[inline(always)]
    fn set_addr(&self, pkt: &Packet, end: End, old: &[u8; 16], new: &[u8; 16]) -> bool {
        // Before any byte changes: the test compares the field with the packet's own pseudo-header.
        let partial = self.partial(pkt);
        let v4 = pkt.flow.family == FAMILY_V4;
        let (l3, l4) = (pkt.l3 as usize, pkt.l4 as usize);
        let w = |a: &[u8; 16]| u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        if v4 {
            if !self.ipv4_addr(l3, end, old, new) {
                return false;
            }
        } else {
            let Some(p) = self.at::<16>(l3 + addr_at(false, end)) else {
                return false;
            };
            // SAFETY: inside the frame, checked by `at`.
            unsafe { core::ptr::write_unaligned(p, *new) };
        }
        if pkt.flow.proto == PROTO_ICMP || !has_l4(pkt) {
            return true;
        }
        let Some(c) = l4_check_at(pkt) else {
            return true;
        };
        let Some(field) = self.read16(l4 + c) else {
            return false;
        };
        if pkt.flow.proto == PROTO_UDP && v4 && field == 0 {
            return true;
        }
        let updated = match (partial, v4) {
            (true, true) => checksum::update_partial32(field, w(old), w(new)),
            (true, false) => checksum::update_partial128(field, old, new),
            (false, true) => checksum::update32(field, w(old), w(new)),
            (false, false) => checksum::update128(field, old, new),
        };
        let updated = if pkt.flow.proto == PROTO_UDP && !partial {
            checksum::udp_field(field, updated)
        } else {
            updated
        };
        self.write16(l4 + c, updated)
    }

    #[inline(always)]
    fn set_port(&self, pkt: &Packet, end: End, old: u16, new: u16) -> bool {
        let l4 = pkt.l4 as usize;
        if !self.write16(l4 + port_at(pkt, end), new) {
            return false;
        }
        // A partial field does not cover the ports yet: the transmit side sums them.
        if pkt.icmp != ICMP_ECHO && self.partial(pkt) {
            return true;
        }
        let Some(c) = l4_check_at(pkt) else {
            return true;
        };
        let Some(field) = self.read16(l4 + c) else {
            return false;
        };
        if pkt.flow.proto == PROTO_UDP && pkt.flow.family == FAMILY_V4 && field == 0 {
            return true;
        }
        let updated = checksum::update16(field, old, new);
        let updated = if pkt.flow.proto == PROTO_UDP {
            checksum::udp_field(field, updated)
        } else {
            updated
        };
        self.write16(l4 + c, updated)
    }
}

/// Whether the flow is one the masquerade handles: TCP, UDP, or ICMP echo, with its L4 header
/// (a whole datagram or its first fragment; later fragments are handled by address alone).
#[inline(always)]
fn translatable(pkt: &Packet) -> bool {
    pkt.frag != FRAG_LATER
        && pkt.l4 != 0
        && (pkt.flow.proto == PROTO_TCP
            || pkt.flow.proto == PROTO_UDP
            || (pkt.icmp == ICMP_ECHO && pkt.flow.echo != ECHO_NONE))
}

/// The LAN interface's masquerade address for the packet's family, if it masquerades.
#[inline(always)]
fn interface_addr(ifindex: u32, v4: bool) -> Option<[u8; 16]> {
    if !maps::SETTINGS
        .get(0)
        .is_some_and(|s| s.flags & gateway_common::settings::FLAG_MASQUERADE != 0)
    {
        return None;
    }
    // SAFETY: copied out at once.
    let iface = unsafe { maps::NAT_INTERFACES.get(&ifindex) }.copied()?;
    let mut a = [0u8; 16];
    if v4 {
        if iface.has_v4 == 0 {
            return None;
        }
        a[0] = iface.v4[0];
        a[1] = iface.v4[1];
        a[2] = iface.v4[2];
        a[3] = iface.v4[3];
    } else {
        if iface.has_v6 == 0 {
            return None;
        }
        a = iface.v6;
    }
    Some(a)
}

#[inline(always)]
fn masqueraded_network(v4: bool, dst: &[u8; 16]) -> bool {
    let bits = if v4 { V4_MAPPED_PREFIX_BITS + 32 } else { 128 };
    maps::NAT_NETWORKS
        .get(Key::new(
            bits,
            NatPrefix {
                addr: mapped(v4, dst),
            },
        ))
        .is_some()
}

#[inline(always)]
fn fresh(t: &NatTarget, s: &NatSettings, proto: u8, now: u64) -> bool {
    now.saturating_sub(t.last_seen_ns) <= timeout_ns(s, proto, true)
}

/// Whether a packet leaving LAN interface `ifindex` is TCP or UDP from the interface's own
/// masquerade address, read from its linear headers (Ethernet, then IPv4 or IPv6 without
/// extension headers): [`masquerade`] leaves such a packet untouched, and so it needs no parse.
/// Anything else (ICMP errors, which may quote a translated packet; extension headers; VLAN
/// tags; headers not linear) is `false` and goes the whole way.
#[inline(always)]
pub fn leaves_translated(ctx: &TcContext, ifindex: u32) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 14 + 20 > end {
        return false;
    }
    // SAFETY: every read below is inside [data, end), checked before it.
    let at = |off: usize| unsafe { *((data + off) as *const u8) };
    let v4 = match (at(12), at(13)) {
        (0x08, 0x00) => true,
        (0x86, 0xdd) => false,
        _ => return false,
    };
    let (proto, src) = if v4 { (at(23), 26) } else { (at(20), 22) };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return false;
    }
    let Some(nat_addr) = interface_addr(ifindex, v4) else {
        return false;
    };
    let len = if v4 { 4 } else { 16 };
    if data + src + len > end {
        return false;
    }
    let mut i = 0;
    while i < 16 {
        if i < len && at(src + i) != nat_addr[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// LAN egress: translates the source of a flow from the overlay to a masqueraded network.
///
/// `flow` is the packet's conntrack entry when the caller has it at hand (null otherwise), with
/// whether the sender is endpoint a of its key: within a tick in which the translation tables
/// confirmed the flow's port, its later packets take the port from the entry's [`NatMemo`]
/// and skip the table lookup.
#[inline(always)]
pub fn masquerade<R: Rewrite>(
    rw: &R,
    pkt: &Packet,
    ifindex: u32,
    settings: &Settings,
    flow: *mut CtEntry,
    sender_is_a: bool,
) -> Nat {
    if pkt.icmp == ICMP_ERROR && pkt.frag == FRAG_NONE {
        return masquerade_error(rw, pkt, ifindex, settings);
    }
    let later = pkt.frag == FRAG_LATER;
    if !later && !translatable(pkt) {
        return Nat::Untouched;
    }
    let v4 = pkt.flow.family == FAMILY_V4;
    let Some(nat_addr) = interface_addr(ifindex, v4) else {
        return Nat::Untouched;
    };
    let Some(s) = maps::NAT_SETTINGS.get(0) else {
        return Nat::Drop(gateway_common::stats::reason::DROP_INTERNAL);
    };
    // A memo is only written after the checks below passed for this flow and sender within
    // the current tick, so while it lasts they need not be made again (the network prefix
    // lookup among them): a change of the masqueraded networks, like any change of the tables,
    // reaches the flow's packets at the next tick.
    if !later {
        if let Some(port) = remembered_port(s, pkt, flow, sender_is_a) {
            return rewrite_source(rw, pkt, &nat_addr, port);
        }
    }
    // Leaving with the interface's address already: the host's own traffic, or a packet the
    // tunnel's TC forwarding translated on its way here.
    if pkt.flow.src == nat_addr
        || !judge::in_overlay(&pkt.flow.src, pkt.flow.family, settings)
        || !masqueraded_network(v4, &pkt.flow.dst)
    {
        return Nat::Untouched;
    }
    if later {
        // Every translation toward this network has the interface's address as source, and the
        // port is in the first fragment: a later fragment needs its address alone.
        if !rw.set_addr(pkt, End::Src, &pkt.flow.src, &nat_addr) {
            return Nat::Drop(gateway_common::stats::reason::DROP_NOT_LINEAR);
        }
        return Nat::Translated;
    }
    let Some(x) = scratch() else {
        return Nat::Drop(gateway_common::stats::reason::DROP_INTERNAL);
    };
    let now = pkt.now();
    let f = &pkt.flow;
    // SAFETY: null, or a valid map value; concurrent packets of the flow write the same memo.
    let memo = unsafe { flow.as_mut() }.filter(|_| rememberable(s, f.proto));
    x.key = NatKey {
        local: f.src,
        remote: f.dst,
        local_port: f.sport,
        remote_port: f.dport,
        proto: f.proto,
        family: f.family,
        _pad: [0; 2],
    };
    let port = match translation_of(x, &nat_addr, s, now, true) {
        Translation::Port(port) => port,
        // A bucket being written: what the flow's translation is cannot be told, and the
        // packet must not leave with the peer's own address.
        Translation::Busy => return Nat::Drop(gateway_common::stats::reason::DROP_INTERNAL),
        Translation::None => {
            // A TCP connection is translated from its first SYN: one that was already under
            // way (the masquerade was switched on since) keeps its addresses, as it began.
            if f.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
                return Nat::Untouched;
            }
            match allocate(x, &nat_addr, s, now) {
                Some(p) => p,
                None => return Nat::Drop(gateway_common::stats::reason::DROP_NAT_EXHAUSTED),
            }
        }
    };
    if let Some(e) = memo {
        NatMemo::remember(e, port, now, sender_is_a);
    }
    rewrite_source(rw, pkt, &nat_addr, port)
}

/// The port the flow's conntrack entry remembers for this sender in the current tick.
#[inline(always)]
fn remembered_port(
    s: &NatSettings,
    pkt: &Packet,
    flow: *mut CtEntry,
    sender_is_a: bool,
) -> Option<u16> {
    // SAFETY: null, or a valid map value.
    let entry = unsafe { flow.as_ref() }?;
    if !rememberable(s, pkt.flow.proto) {
        return None;
    }
    NatMemo::port(entry, pkt.now(), sender_is_a)
}

/// Whether translations of `proto` live long enough to be remembered ([`NatMemo`]).
#[inline(always)]
fn rememberable(s: &NatSettings, proto: u8) -> bool {
    timeout_ns(s, proto, false) >= NatMemo::MIN_TIMEOUT_NS
}

/// The packet leaves from the masquerade address and `port`.
#[inline(always)]
fn rewrite_source<R: Rewrite>(rw: &R, pkt: &Packet, nat_addr: &[u8; 16], port: u16) -> Nat {
    let f = &pkt.flow;
    if !rw.set_addr(pkt, End::Src, &f.src, nat_addr) || !rw.set_port(pkt, End::Src, f.sport, port) {
        return Nat::Drop(gateway_common::stats::reason::DROP_NOT_LINEAR);
    }
    Nat::Translated
}

/// The translation of the flow `x.key` (its original tuple) toward `nat_addr`, if it is in
/// force: its forward entry (copied into `x.target`) and its reverse entry (into `x.other`),
/// which must still lead back to the flow and be fresh. The peer's packets refresh both
/// entries, the LAN host's the reverse one (and the forward one once a tick, see
/// [`unmasquerade`]), so the reverse entry alone says whether a translation lives, and a table
/// that needs room judges each of its ways by its own timestamp (`nat_table::claim`). Refreshes
/// both entries when `refresh` says (a packet of the flow; not an error about one).
#[inline(always)]
fn translation_of(
    x: &mut Scratch,
    nat_addr: &[u8; 16],
    s: &NatSettings,
    now: u64,
    refresh: bool,
) -> Translation {
    let forward = match nat_table::look_up(&maps::NAT_FORWARD, &x.key, &mut x.target) {
        Found::At(t) => t,
        Found::Absent => return Translation::None,
        Found::Busy => return Translation::Busy,
    };
    if x.target.addr != *nat_addr {
        return Translation::None;
    }
    counterpart_into(&mut x.holder, &x.key, &x.target);
    let reverse = match nat_table::look_up(&maps::NAT_REVERSE, &x.holder, &mut x.other) {
        Found::At(t) => t,
        Found::Absent => return Translation::None,
        Found::Busy => return Translation::Busy,
    };
    if x.other.addr != x.key.local
        || x.other.port != x.key.local_port
        || !fresh(&x.other, s, x.key.proto, now)
    {
        return Translation::None;
    }
    if refresh {
        // SAFETY: ways of the tables; concurrent packets only race on the timestamps.
        unsafe {
            (*forward).last_seen_ns = now;
            (*reverse).last_seen_ns = now;
        }
    }
    Translation::Port(x.target.port)
}

/// What [`translation_of`] found.
enum Translation {
    Port(u16),
    /// None in force (a forward entry whose reverse no longer leads back is none: a new
    /// translation replaces it).
    None,
    /// A bucket was being written.
    Busy,
}

/// Finds a free port for a new translation and records it both ways: the reverse entry first,
/// which claims the port toward this LAN host (a port a live translation holds is a collision:
/// the next candidate), then the forward entry.
#[inline(always)]
fn allocate(x: &mut Scratch, nat_addr: &[u8; 16], s: &NatSettings, now: u64) -> Option<u16> {
    let echo = x.key.proto == PROTO_ICMP || x.key.proto == PROTO_ICMPV6;
    x.original = NatTarget {
        addr: x.key.local,
        port: x.key.local_port,
        replied: 0,
        _pad: [0; 5],
        last_seen_ns: now,
    };
    x.reverse = NatKey {
        local: *nat_addr,
        remote: x.key.remote,
        local_port: 0,
        remote_port: x.key.remote_port,
        proto: x.key.proto,
        family: x.key.family,
        _pad: [0; 2],
    };
    let mut attempt = 0;
    while attempt < PORT_ATTEMPTS {
        // SAFETY: plain helper call.
        let random = unsafe { bpf_get_prandom_u32() };
        let port = candidate_port(x.key.local_port, attempt, random, s.port_min, s.port_max);
        attempt += 1;
        x.reverse.local_port = port;
        if echo {
            x.reverse.remote_port = port;
        }
        if claim(x, CLAIM_REVERSE, s, now) != Claim::Claimed as u32 {
            continue;
        }
        x.target = NatTarget {
            addr: *nat_addr,
            port,
            replied: 0,
            _pad: [0; 5],
            last_seen_ns: now,
        };
        if claim(x, CLAIM_FORWARD, s, now) == Claim::Claimed as u32 {
            return Some(port);
        }
        // No room for the forward entry: this port goes back.
        let _ = nat_table::remove(
            &maps::NAT_REVERSE,
            &x.reverse,
            &x.key.local,
            x.key.local_port,
        );
        return None;
    }
    None
}

const CLAIM_REVERSE: u32 = 0;
const CLAIM_FORWARD: u32 = 1;

/// Records one entry of a new translation (`nat_table::claim`, its result as a number): the
/// reverse one (`x.reverse` → `x.original`; a live holder of the key is a collision, copied
/// into `x.target`) or the forward one (`x.key` → `x.target`, replacing whatever the flow's
/// forward entry held: this is only called when [`translation_of`] found no translation in
/// force, and a forward entry whose reverse no longer leads back must not stand; in the rare
/// race of two CPUs translating one flow at once, the last stands, and the other's reverse
/// entry still leads replies to its port back to the flow until it goes idle). Another way
/// is live while its own timestamp is fresh (see [`translation_of`]).
///
/// Inlined (a BPF-to-BPF call would overflow 6.1's stack for the chain of calls);
/// `buckets::opaque_index` keeps the verifier's paths through a bucket few.
#[inline(always)]
fn claim(x: &mut Scratch, which: u32, s: &NatSettings, now: u64) -> u32 {
    // One claim for either table (the pointers chosen first): the program holds its code once,
    // and the calling frame its locals once.
    let forward = which == CLAIM_FORWARD;
    let (table, key, value, found) = if forward {
        (
            &maps::NAT_FORWARD,
            &raw const x.key,
            &raw const x.target,
            &raw mut x.other,
        )
    } else {
        (
            &maps::NAT_REVERSE,
            &raw const x.reverse,
            &raw const x.original,
            &raw mut x.target,
        )
    };
    // SAFETY: distinct fields of this CPU's scratch.
    let (key, value, found) = unsafe { (&*key, &*value, &mut *found) };
    nat_table::claim(table, key, value, found, !forward, |k, t| {
        (!forward || same_addr(&t.addr, &value.addr)) && fresh(t, s, k.proto, now)
    }) as u32
}

/// Two targets' addresses compared a word at a time (an array `==` is a byte loop in BPF,
/// which the verifier walks byte by byte for every way of a bucket). Both lie at the start of
/// an 8-aligned `NatTarget`.
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    // SAFETY: 16 readable, 8-aligned bytes each.
    unsafe {
        crate::copy::same_words(
            a as *const [u8; 16] as *const u64,
            b as *const [u8; 16] as *const u64,
            2,
        )
    }
}

/// LAN ingress, before the policy: gives a packet of a translated flow its original
/// destination. TCP/UDP to the masquerade address within the port range without a translation
/// is dropped (the range is reserved from the host's own sockets); anything else is untouched.
#[inline(always)]
pub fn unmasquerade<R: Rewrite>(rw: &R, pkt: &mut Packet, ifindex: u32) -> Nat {
    if pkt.icmp == ICMP_ERROR && pkt.frag == FRAG_NONE {
        return unmasquerade_error(rw, pkt, ifindex);
    }
    let later = pkt.frag == FRAG_LATER;
    if !later && !translatable(pkt) {
        return Nat::Untouched;
    }
    let v4 = pkt.flow.family == FAMILY_V4;
    let Some(nat_addr) = interface_addr(ifindex, v4) else {
        return Nat::Untouched;
    };
    if pkt.flow.dst != nat_addr {
        return Nat::Untouched;
    }
    let (Some(s), Some(x)) = (maps::NAT_SETTINGS.get(0), scratch()) else {
        return Nat::Untouched;
    };
    if later || pkt.frag == FRAG_FIRST {
        x.frag = FragKey {
            src: pkt.flow.src,
            dst: pkt.flow.dst,
            id: pkt.frag_id,
            proto: if v4 { pkt.flow.proto } else { 0 },
            family: pkt.flow.family,
            _pad: [0; 2],
        };
    }
    if later {
        // Its datagram's first fragment said whose it is (none: the host's own fragments).
        let now = pkt.now();
        // SAFETY: copied out at once.
        let Some(t) = (unsafe { maps::NAT_FRAGMENTS.get(&x.frag) }).copied() else {
            return Nat::Untouched;
        };
        if now.saturating_sub(t.last_seen_ns) > FRAGMENT_TIMEOUT_NS {
            return Nat::Untouched;
        }
        if !rw.set_addr(pkt, End::Dst, &nat_addr, &t.addr) {
            return Nat::Drop(gateway_common::stats::reason::DROP_NOT_LINEAR);
        }
        pkt.flow.dst = t.addr;
        return Nat::Translated;
    }
    let f = &pkt.flow;
    x.key = NatKey {
        local: f.dst,
        remote: f.src,
        local_port: f.dport,
        remote_port: f.sport,
        proto: f.proto,
        family: f.family,
        _pad: [0; 2],
    };
    let now = pkt.now();
    let in_range = f.dport >= s.port_min && f.dport <= s.port_max;
    match nat_table::find(&maps::NAT_REVERSE, &x.key, &mut x.target) {
        Some(t) if fresh(&x.target, s, f.proto, now) => {
            // SAFETY: a way of the table; concurrent packets only race on the timestamp.
            unsafe { (*t).last_seen_ns = now };
            // The forward entry too, once a tick (it is judged by its own timestamp when its
            // bucket needs room), and marked answered at the first reply.
            if x.target.replied == 0 || (x.target.last_seen_ns ^ now) >> NatMemo::TICK_SHIFT != 0 {
                touch_forward(x, t, now);
            }
        }
        _ => {
            // Echo replies to the host's own pings share the address and have no reserved range.
            return if in_range && pkt.icmp != ICMP_ECHO {
                Nat::Drop(gateway_common::stats::reason::DROP_NAT_NO_MAPPING)
            } else {
                Nat::Untouched
            };
        }
    };
    let dport = f.dport;
    if !rw.set_addr(pkt, End::Dst, &x.key.local, &x.target.addr)
        || !rw.set_port(pkt, End::Dst, dport, x.target.port)
    {
        return Nat::Drop(gateway_common::stats::reason::DROP_NOT_LINEAR);
    }
    if pkt.frag == FRAG_FIRST {
        x.target.last_seen_ns = now;
        let _ = maps::NAT_FRAGMENTS.insert(&x.frag, &x.target, 0);
    }
    pkt.flow.dst = x.target.addr;
    pkt.flow.dport = x.target.port;
    if pkt.icmp == ICMP_ECHO {
        pkt.flow.sport = x.target.port;
    }
    Nat::Translated
}

/// `gateway_common::nat_table::counterpart` written into `dst` in place, the addresses a word
/// at a time: built as a value, the key lands on the stack first, a byte at a time, in frames
/// that have no room to spare.
#[inline(always)]
fn counterpart_into(dst: &mut NatKey, key: &NatKey, target: &NatTarget) {
    let (d, k, t) = (
        dst as *mut NatKey as *mut u64,
        key as *const NatKey as *const u64,
        target as *const NatTarget as *const u64,
    );
    // SAFETY: all three are 8-aligned; `local` and `addr` are the first 16 bytes of theirs,
    // `remote` the next 16 of a key.
    unsafe {
        core::ptr::write_volatile(d, core::ptr::read_volatile(t));
        core::ptr::write_volatile(d.add(1), core::ptr::read_volatile(t.add(1)));
        core::ptr::write_volatile(d.add(2), core::ptr::read_volatile(k.add(2)));
        core::ptr::write_volatile(d.add(3), core::ptr::read_volatile(k.add(3)));
    }
    let echo = key.proto == PROTO_ICMP || key.proto == PROTO_ICMPV6;
    dst.local_port = target.port;
    dst.remote_port = if echo { target.port } else { key.remote_port };
    dst.proto = key.proto;
    dst.family = key.family;
    dst._pad = [0; 2];
}

/// The LAN host answered the flow whose reverse entry is at `t` (its key in `x.key`, its
/// target in `x.target`): both entries say so from now on (a full bucket no longer evicts the
/// translation), and the forward entry is seen now. Only a forward entry that leads to this
/// reverse one is touched.
#[inline(always)]
fn touch_forward(x: &mut Scratch, t: *mut NatTarget, now: u64) {
    // SAFETY: a way of the table.
    unsafe { (*t).replied = 1 };
    counterpart_into(&mut x.holder, &x.key, &x.target);
    if let Some(f) = nat_table::find(&maps::NAT_FORWARD, &x.holder, &mut x.other)
        && x.other.addr == x.key.local
        && x.other.port == x.key.local_port
    {
        // SAFETY: as above; concurrent packets only race on these stores.
        unsafe {
            (*f).replied = 1;
            (*f).last_seen_ns = now;
        }
    }
}

/// An ICMP error from the LAN about a packet the masquerade sent (RFC 5508): the error goes to
/// the peer, quoting the packet as the peer sent it. Errors about anything else are untouched.
#[inline(always)]
fn unmasquerade_error<R: Rewrite>(rw: &R, pkt: &mut Packet, ifindex: u32) -> Nat {
    let v4 = pkt.flow.family == FAMILY_V4;
    let Some(nat_addr) = interface_addr(ifindex, v4) else {
        return Nat::Untouched;
    };
    let q = &pkt.quoted;
    if pkt.flow.dst != nat_addr || q.src != nat_addr || q.family != pkt.flow.family {
        return Nat::Untouched;
    }
    let (Some(s), Some(x)) = (maps::NAT_SETTINGS.get(0), scratch()) else {
        return Nat::Untouched;
    };
    x.key = NatKey {
        local: q.src,
        remote: q.dst,
        local_port: q.sport,
        remote_port: q.dport,
        proto: q.proto,
        family: q.family,
        _pad: [0; 2],
    };
    let now = pkt.now();
    // SAFETY: copied out at once.
    match nat_table::find(&maps::NAT_REVERSE, &x.key, &mut x.target) {
        Some(_) if fresh(&x.target, s, x.key.proto, now) => {}
        _ => return Nat::Untouched,
    }
    let old_port = q.sport;
    if !rw.set_addr(pkt, End::Dst, &nat_addr, &x.target.addr)
        || !rw.set_quoted(
            pkt,
            End::Src,
            &nat_addr,
            &x.target.addr,
            old_port,
            x.target.port,
        )
    {
        return Nat::Drop(gateway_common::stats::reason::DROP_NOT_LINEAR);
    }
    pkt.flow.dst = x.target.addr;
    pkt.quoted.src = x.target.addr;
    pkt.quoted.sport = x.target.port;
    if pkt.quoted.echo != ECHO_NONE {
        pkt.quoted.dport = x.target.port;
    }
    Nat::Translated
}

/// An ICMP error from a peer about a packet it got from a masqueraded flow (RFC 5508): it
/// leaves as the masquerade's, quoting the packet as the LAN host saw it.
#[inline(always)]
fn masquerade_error<R: Rewrite>(rw: &R, pkt: &Packet, ifindex: u32, settings: &Settings) -> Nat {
    let v4 = pkt.flow.family == FAMILY_V4;
    let q = &pkt.quoted;
    if q.family != pkt.flow.family
        || !judge::in_overlay(&q.dst, q.family, settings)
        || !masqueraded_network(v4, &pkt.flow.dst)
    {
        return Nat::Untouched;
    }
    let Some(nat_addr) = interface_addr(ifindex, v4) else {
        return Nat::Untouched;
    };
    // The error comes from the peer the quoted packet was for, or from this host on its way
    // there (fragmentation needed at the tunnel's smaller MTU, TTL exceeded): then its source is
    // this interface's address already, and only the quoted packet needs translating, or the
    // LAN host would never match it to its socket and keep sending what cannot pass.
    let from_gateway = pkt.flow.src == nat_addr;
    if !from_gateway && q.dst != pkt.flow.src {
        return Nat::Untouched;
    }
    let (Some(s), Some(x)) = (maps::NAT_SETTINGS.get(0), scratch()) else {
        return Nat::Untouched;
    };
    // The quoted packet went from the LAN host to the peer: its reverse is the flow's own tuple.
    x.key = NatKey {
        local: q.dst,
        remote: q.src,
        local_port: q.dport,
        remote_port: q.sport,
        proto: q.proto,
        family: q.family,
        _pad: [0; 2],
    };
    let now = pkt.now();
    // SAFETY: copied out at once.
    if !matches!(
        translation_of(x, &nat_addr, s, now, false),
        Translation::Port(_)
    ) {
        return Nat::Untouched;
    }
    if (!from_gateway && !rw.set_addr(pkt, End::Src, &pkt.flow.src, &nat_addr))
        || !rw.set_quoted(pkt, End::Dst, &q.dst, &nat_addr, q.dport, x.target.port)
    {
        return Nat::Drop(gateway_common::stats::reason::DROP_NOT_LINEAR);
    }
    Nat::Translated
}
