//! XDP forwarding for accepted traffic between LAN interfaces: the kernel's FIB picks the egress
//! interface and neighbour (cached for a second in a direct-mapped per-CPU table: the lookup
//! costs more than the whole policy decision), this rewrites the Ethernet header, decrements
//! TTL / hop limit and redirects. It works from the parse the policy decision already made. The
//! cache holds a route per (ingress, source, destination, DSCP), as the FIB lookup it stands for
//! was asked, so rules that route by source or DSCP apply. Anything it cannot
//! finish (no route or neighbour yet, TTL about to expire, VLAN tags, an egress interface not
//! enabled for it) goes to the kernel stack unchanged.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::generated::{bpf_fib_lookup, bpf_xdp_get_buff_len},
    programs::XdpContext,
};

use gateway_common::{
    checksum,
    conntrack::FAMILY_V4,
    forward::{FIB_CACHE_NS, FibRoute, SLOT_TAKES_MULTI_BUFFER, TcRoute, addr_words, route_slot},
    stats::reason,
};

use crate::{
    maps,
    packet::Bytes,
    parse::{FRAG_NONE, PROTO_TCP, PROTO_UDP, Packet},
};

/// What became of an accepted frame on an XDP-forwarding interface.
pub enum Forward {
    /// Redirected in XDP; the program's action, and the route it took.
    Redirect(u32, FibRoute),
    /// Left to the kernel: its TCP/UDP checksum is only begun (see [`partial_checksum`]).
    PartialChecksum,
    /// Left to the kernel for another reason (no route or neighbour yet, TTL, VLAN tags).
    Kernel,
}

const ETH_LEN: usize = 14;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Forwards the frame if it can.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet) -> Forward {
    if partial_checksum(ctx, pkt) {
        return Forward::PartialChecksum;
    }
    match try_forward(ctx, pkt) {
        Some((action, route)) => Forward::Redirect(action, route),
        None => Forward::Kernel,
    }
}

/// Whether the frame's TCP/UDP checksum field holds only the pseudo-header sum, as a sender on
/// this host leaves it for checksum offload (CHECKSUM_PARTIAL, a veth's default). The kernel
/// path completes such a checksum; bytes redirected in XDP would reach the receiver with it
/// unfinished, and be dropped there. A full checksum equals that sum by coincidence once in
/// 65,536 frames, and then the kernel forwards it: correct either way. Frames from a physical
/// wire always carry full checksums.
#[inline(always)]
pub fn partial_checksum(ctx: &XdpContext, pkt: &Packet) -> bool {
    let field = match pkt.flow.proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return false,
    };
    let (l3, l4) = (pkt.l3 as usize, pkt.l4 as usize);
    // (Bounds for the verifier: the parse never goes past 512 bytes.)
    if pkt.frag != FRAG_NONE || l4 == 0 || l4 > 512 || l3 > l4 {
        return false;
    }
    let b = Bytes {
        start: ctx.data(),
        end: ctx.data_end(),
        len: ctx.data_end() - ctx.data(),
        xdp: core::ptr::null_mut(),
        skb: core::ptr::null_mut(),
    };
    let Ok(check) = b.be16_at(l4 + field) else {
        return false;
    };
    if pkt.flow.proto == PROTO_UDP && check == 0 {
        // No checksum at all (IPv4 UDP may say so).
        return false;
    }
    let l4_len = pkt.ip_len - (l4 - l3) as u32;
    let v4 = pkt.flow.family == FAMILY_V4;
    check
        == checksum::fold(checksum::pseudo_header_sum(
            v4,
            &pkt.flow.src,
            &pkt.flow.dst,
            pkt.flow.proto,
            l4_len,
        ))
}

/// Forwards the frame if it can, and says along which route; `None` means "let the kernel
/// have it".
#[inline(always)]
fn try_forward(ctx: &XdpContext, pkt: &Packet) -> Option<(u32, FibRoute)> {
    // Untagged frames only: a VLAN tag would need its own rewrite.
    if pkt.l3 as usize != ETH_LEN {
        return None;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    // What is rewritten below: the MACs, and the TTL (with the IPv4 header checksum) or the hop
    // limit, all in the first 20 bytes of the IP header. (Not "a minimum-size frame": a veth
    // does not pad, and a short datagram is as forwardable as any.)
    if start + ETH_LEN + 20 > end {
        return None;
    }
    let v4 = pkt.flow.family == FAMILY_V4;
    let ip = start + ETH_LEN;
    let hop_at = ip + if v4 { 8 } else { 7 };
    // SAFETY: inside [start, start + 34), checked above.
    if unsafe { *(hop_at as *const u8) } <= 1 {
        return None;
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    let (src, dst) = (&pkt.flow.src, &pkt.flow.dst);
    let family = if v4 { AF_INET } else { AF_INET6 };
    let slot = maps::FIB_CACHE.get_ptr_mut(route_slot(ifindex, family, src, dst))?;
    // SAFETY: this CPU's slot; nothing else writes it while this program runs here.
    let slot = unsafe { &mut *slot };
    let now = pkt.now();
    let fresh = slot.key.holds(ifindex, family, pkt.tos, src, dst)
        && now < slot.route.expires_ns
        && pkt.ip_len <= slot.route.max_len as u32;
    if !fresh {
        slot.route = lookup(ctx, pkt, now)?;
        slot.key.set(ifindex, family, pkt.tos, src, dst);
    }
    let route = slot.route;
    // A multi-buffer frame (a jumbo MTU's) goes to the kernel unless the egress interface
    // takes it: the kernel would drop the redirect after this program returns.
    // SAFETY: plain helper call on the program's own XDP context.
    if route.multi_buffer == 0 && unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize > end - start {
        return None;
    }
    // SAFETY: writes inside [start, start + 34), checked above.
    unsafe {
        if v4 {
            decrement_ipv4_ttl(ip);
        } else {
            *(hop_at as *mut u8) -= 1;
        }
        crate::packet::write_macs(start, &crate::packet::mac_words(&route.dmac, &route.smac));
    }
    let action = match maps::FORWARD_PORTS.redirect(route.port, 0) {
        Ok(action) | Err(action) => action,
    };
    Some((action, route))
}

/// Asks the kernel's FIB (and neighbour table) for the packet's route.
#[inline(always)]
fn lookup(ctx: &XdpContext, pkt: &Packet, now: u64) -> Option<FibRoute> {
    let fib = &mut fib_params(ctx.ingress_ifindex() as u32, pkt, pkt.ip_len);
    // SAFETY: plain helper call with a properly sized parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), fib, size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    // SAFETY: copied out at once.
    let slot = unsafe { maps::FORWARD_SLOTS.get(&fib.ifindex) }.copied()?;
    Some(FibRoute {
        expires_ns: now + FIB_CACHE_NS,
        egress: fib.ifindex,
        max_len: pkt.ip_len as u16,
        multi_buffer: u16::from(slot & SLOT_TAKES_MULTI_BUFFER != 0),
        dmac: fib.dmac,
        smac: fib.smac,
        port: slot & !SLOT_TAKES_MULTI_BUFFER,
    })
}

/// A FIB lookup's parameters for the packet's destination (and source), arriving on `ifindex`,
/// `tot_len` bytes long (the FIB checks the egress MTU against it).
#[inline(always)]
pub fn fib_params(ifindex: u32, pkt: &Packet, tot_len: u32) -> FibParams {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value of this plain C struct.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.ifindex = ifindex;
    fib.l4_protocol = pkt.flow.proto;
    fib.__bindgen_anon_1.tot_len = length_field(tot_len);
    if pkt.flow.family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = pkt.tos;
        let a = |b: &[u8; 16]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        fib.__bindgen_anon_3.ipv4_src = a(&pkt.flow.src);
        fib.__bindgen_anon_4.ipv4_dst = a(&pkt.flow.dst);
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = addr_words(&pkt.flow.src);
        fib.__bindgen_anon_4.ipv6_dst = addr_words(&pkt.flow.dst);
        // The traffic class where the header has it (no flow label: the route must not depend
        // on it, or the cache would hold a route per flow label).
        fib.__bindgen_anon_2.flowinfo = ((pkt.tos as u32) << 20).to_be();
    }
    fib
}

/// A length in a 16-bit field: a GSO aggregate's may not fit, and is capped.
#[inline(always)]
fn length_field(len: u32) -> u16 {
    if len > 0xffff { 0xffff } else { len as u16 }
}

/// TTL minus one, with the header checksum updated incrementally (RFC 1624).
///
/// # Safety
/// `ip` must point at a whole IPv4 header inside the packet.
#[inline(always)]
pub unsafe fn decrement_ipv4_ttl(ip: usize) {
    // SAFETY: the caller guarantees the header is there.
    unsafe {
        let word = (ip + 8) as *mut u16;
        let csum = (ip + 10) as *mut u16;
        let old = u16::from_be(core::ptr::read_unaligned(word));
        let new = old - 0x0100;
        let check = checksum::update16(u16::from_be(core::ptr::read_unaligned(csum)), old, new);
        core::ptr::write_unaligned(word, new.to_be());
        core::ptr::write_unaligned(csum, check.to_be());
    }
}

/// What TC forwarding did with a packet.
pub enum TcForward {
    /// Left to the kernel: no route out of an interface of the wanted kind, TTL about to
    /// expire, a packet larger than the egress MTU (the kernel sends the ICMP errors those
    /// need). The packet is as it came.
    Kernel,
    /// Redirected (translated first when `translate` said so).
    Redirected,
    /// Dropped, with the reason.
    Dropped(u32),
}

/// A rewrite TC forwarding applies just before the redirect, once the egress interface is
/// known: `Ok(true)` when it rewrote the packet, `Err(reason)` to drop it.
pub trait Translate {
    fn translate(&self, egress: u32) -> Result<bool, u32>;
}

/// Forwarding without a rewrite.
pub struct NoTranslation;

impl Translate for NoTranslation {
    #[inline(always)]
    fn translate(&self, _egress: u32) -> Result<bool, u32> {
        Ok(false)
    }
}

/// Forwarding in TC: accepted traffic whose route leads out of an interface of kind `to`
/// (`TC_PORT_LAN` for tunnel traffic, `TC_PORT_TUNNEL` for LAN traffic) is sent there directly
/// (the kernel fills in the neighbour's address, `bpf_redirect_neigh`; a tunnel without a link
/// layer gets the bare IP packet), skipping the kernel's IP input and forwarding. The egress
/// interface's own TC programs still run (the tunnel's MSS clamp; the LAN's masquerade, which
/// finds nothing left to do in what `translate` rewrote).
///
/// `translate` gets the egress interface just before the redirect. A translated packet is never
/// handed back to the kernel: its input path would take the gateway's own source address for a
/// spoofed one.
#[inline(always)]
pub fn tc_forward(
    ctx: &aya_ebpf::programs::TcContext,
    pkt: &Packet,
    to: u8,
    translate: &impl Translate,
) -> TcForward {
    use aya_ebpf::{
        bindings::TC_ACT_REDIRECT,
        helpers::generated::{
            bpf_redirect_neigh, bpf_skb_change_head, bpf_skb_load_bytes, bpf_skb_store_bytes,
        },
    };
    let v4 = pkt.flow.family == FAMILY_V4;
    let l3 = pkt.l3 as usize;
    let skb = ctx.skb.skb;
    // (Bounds for the verifier: the parse never goes past 512 bytes.)
    if l3 > 64 {
        return TcForward::Kernel;
    }
    // The parse found the IP header in the linear data: read there, not through a helper.
    // (Bounds as the verifier follows them: the header's first 20 bytes, from its start.)
    let ip = ctx.data() + crate::packet::bounded_for_verifier(l3);
    if ip + 20 > ctx.data_end() {
        return TcForward::Kernel;
    }
    // SAFETY: the TTL or hop limit is inside [ip, ip + 20), checked above.
    let hop = unsafe { *((ip + if v4 { 8 } else { 7 }) as *const u8) };
    if hop <= 1 {
        return TcForward::Kernel;
    }
    // The FIB checks the egress MTU against this length. A GSO aggregate leaves as segments of
    // gso_size payload bytes: the length that matters is one segment's.
    // SAFETY: the context's own skb.
    let gso_size = unsafe { (*skb).gso_size };
    let tot_len = if gso_size == 0 {
        pkt.ip_len
    } else {
        let l4_header = match pkt.flow.proto {
            PROTO_TCP => {
                let mut doff = 0u8;
                // SAFETY: helper call with a 1-byte local.
                if pkt.l4 == 0
                    || pkt.l4 > 512
                    || unsafe {
                        bpf_skb_load_bytes(
                            skb.cast(),
                            pkt.l4 + 12,
                            (&mut doff as *mut u8).cast(),
                            1,
                        )
                    } != 0
                {
                    return TcForward::Kernel;
                }
                ((doff >> 4) as u32) * 4
            }
            PROTO_UDP => 8,
            _ => return TcForward::Kernel,
        };
        (pkt.l4 - pkt.l3) + l4_header + gso_size
    };
    // SAFETY: the context's own skb.
    let ingress = unsafe { (*skb).ingress_ifindex };
    let Some(route) = tc_route(ctx, pkt, ingress, tot_len) else {
        return TcForward::Kernel;
    };
    // Only toward the gateway's own interfaces of that kind (anything else, e.g. tunnel traffic
    // back into a tunnel, is the kernel's to route).
    if route.kind != to {
        return TcForward::Kernel;
    }
    // The next hop the FIB chose: with it the neighbour redirect resolves the link address
    // without a route lookup of its own.
    let mut nh = RedirectNeighbour {
        nh_family: route.nh_family as u32,
        addr: route.nh,
    };
    let nh_ptr = (&mut nh as *mut RedirectNeighbour).cast();
    let nh_len = size_of::<RedirectNeighbour>() as i32;
    let translated = match translate.translate(route.egress) {
        Ok(t) => t,
        Err(reason) => return TcForward::Dropped(reason),
    };
    // SAFETY: helper calls on the program's own skb with small locals; the TTL write is inside
    // [ip, ip + 20), checked just before it.
    unsafe {
        // Where the IP header is once the packet is ready to leave.
        let at = if l3 == 0 {
            // A tunnel without a link header (wg0, a TUN): the kernel's neighbour redirect
            // expects a MAC header in front of the IP header to replace, and drops a packet
            // that has none. A blank one (not multicast) with the packet's ethertype is enough.
            if bpf_skb_change_head(skb.cast(), 14, 0) != 0 {
                // The packet is as it came, unless translated: a translated packet is never
                // handed back to the kernel (see above).
                return if translated {
                    TcForward::Dropped(reason::DROP_INTERNAL)
                } else {
                    TcForward::Kernel
                };
            }
            let ethertype: u16 = if v4 {
                0x0800u16.to_be()
            } else {
                0x86ddu16.to_be()
            };
            // From here the packet has a header the tunnel's stack would misread: it is
            // redirected or dropped, never handed back.
            if bpf_skb_store_bytes(skb.cast(), 12, (&ethertype as *const u16).cast(), 2, 0) != 0 {
                return TcForward::Dropped(reason::DROP_INTERNAL);
            }
            14
        } else {
            l3
        };
        // The TTL or hop limit is lowered last, once nothing can hand the packet back to the
        // kernel, whose forwarding lowers it again. In place, as the XDP path does: the IPv4
        // header checksum is always whole (no offload state to respect), so no helper is
        // needed; the verifier made the skb writable at the program's start. (The header was
        // checked above; the rewrites since keep it in the linear data, so this check fails
        // only if the kernel broke that.)
        let ip = ctx.data() + crate::packet::bounded_for_verifier(at);
        if ip + 20 > ctx.data_end() {
            return TcForward::Dropped(reason::DROP_INTERNAL);
        }
        if v4 {
            decrement_ipv4_ttl(ip);
        } else {
            *((ip + 7) as *mut u8) = hop - 1;
        }
        if bpf_redirect_neigh(route.egress, nh_ptr, nh_len, 0) != TC_ACT_REDIRECT as i64 {
            return TcForward::Dropped(reason::DROP_INTERNAL);
        }
    }
    TcForward::Redirected
}

/// `struct bpf_redir_neigh`: the next hop handed to `bpf_redirect_neigh`.
#[repr(C)]
pub struct RedirectNeighbour {
    pub nh_family: u32,
    pub addr: [u32; 4],
}

/// The route TC forwarding just took for a packet that arrived on `ingress`: this CPU's cache
/// entry for it (which the forwarding filled or used), if it still holds it.
#[inline(always)]
pub fn tc_route_taken(pkt: &Packet, ingress: u32) -> Option<TcRoute> {
    let (family, index) = tc_route_slot(pkt, ingress);
    let slot = maps::TC_FIB_CACHE.get(index)?;
    slot.key
        .holds(ingress, family, pkt.tos, &pkt.flow.src, &pkt.flow.dst)
        .then_some(slot.route)
}

/// The packet's address family as the FIB names it, and its slot in this CPU's TC route cache.
#[inline(always)]
fn tc_route_slot(pkt: &Packet, ingress: u32) -> (u8, u32) {
    let family = if pkt.flow.family == FAMILY_V4 {
        AF_INET
    } else {
        AF_INET6
    };
    (
        family,
        route_slot(ingress, family, &pkt.flow.src, &pkt.flow.dst),
    )
}

/// The route of a packet forwarded in TC, from this CPU's cache when it holds the packet's
/// source, destination and DSCP (learnt within the last second, for packets at least this
/// long), else from the FIB.
/// `None`: the FIB has no usable route (the kernel forwards, and sends what errors it needs).
#[inline(always)]
fn tc_route(
    ctx: &aya_ebpf::programs::TcContext,
    pkt: &Packet,
    ingress: u32,
    tot_len: u32,
) -> Option<TcRoute> {
    use aya_ebpf::{EbpfContext as _, bindings::BPF_FIB_LOOKUP_SKIP_NEIGH};
    let (family, index) = tc_route_slot(pkt, ingress);
    let (src, dst) = (&pkt.flow.src, &pkt.flow.dst);
    let slot = maps::TC_FIB_CACHE.get_ptr_mut(index)?;
    // SAFETY: this CPU's slot; nothing else writes it while this program runs here.
    let slot = unsafe { &mut *slot };
    let now = pkt.now();
    if slot.key.holds(ingress, family, pkt.tos, src, dst)
        && now < slot.route.expires_ns
        && tot_len <= slot.route.max_len as u32
    {
        return Some(slot.route);
    }
    let mut fib = fib_params(ingress, pkt, tot_len);
    // SAFETY: plain helper call with a properly sized parameter block.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    // SAFETY: the lookup filled in the next hop of the family it names.
    let nh = unsafe {
        if fib.family == AF_INET {
            [fib.__bindgen_anon_4.ipv4_dst, 0, 0, 0]
        } else {
            fib.__bindgen_anon_4.ipv6_dst
        }
    };
    let route = TcRoute {
        expires_ns: now + FIB_CACHE_NS,
        egress: fib.ifindex,
        max_len: length_field(tot_len),
        // SAFETY: copied out at once.
        kind: unsafe { maps::LAN_PORTS.get(&fib.ifindex) }
            .copied()
            .unwrap_or(0),
        nh_family: fib.family,
        nh,
    };
    slot.key.set(ingress, family, pkt.tos, src, dst);
    slot.route = route;
    Some(route)
}
