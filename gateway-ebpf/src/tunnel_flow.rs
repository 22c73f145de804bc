//! The tunnel's per-flow shortcut at TC ingress (`gateway_common::tunnel_flow`): a packet of an
//! established IPv4 TCP/UDP flow that the full path forwarded out of a LAN interface within this
//! tick (masqueraded or not) is forwarded from its flow's slot, after a header check of its own,
//! as the full path would have forwarded it: the same verdict and counters, the same rewrite
//! (source address and port, checksums, TTL) and the same neighbour redirect. Anything the slot
//! cannot stand for (another tick, another policy generation, an expired route, a TCP packet
//! that opens or closes a connection, GSO aggregates, IP options, fragments, VLAN tags) takes the
//! full path, which refills the slot.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::{bpf_l4_csum_replace, bpf_redirect_neigh, bpf_skb_change_head},
    programs::TcContext,
};
use gateway_common::{
    conntrack::{CtEntry, FAMILY_V4, NatMemo, ORIGIN_POLICY, STATE_TCP_ESTABLISHED},
    forward::TC_PORT_LAN,
    settings::{FLAG_CONNTRACK, FLAG_MASQUERADE, FLAG_TC_FORWARD, Settings},
    stats::{HOOK_LAN, HOOK_TUNNEL_INGRESS, reason},
    tunnel_flow::{TUNNEL_FLOW_SLOTS, TunnelFlow, addr_delta, apply_delta, selector, slot, tick},
};

use crate::{
    conntrack, forward, maps,
    packet::{load_u16, load_u32, store_u16, store_u32},
    parse::{FRAG_NONE, PROTO_TCP, PROTO_UDP, TCP_FIN, TCP_RST, TCP_SYN},
    stats,
};

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const TCP_LEN: usize = 20;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const AF_INET: u8 = 2;

/// [`forward`]: the full path decides the packet.
pub const NOT_SERVED: i32 = -1;

/// Whether the shortcut can stand for the full path under these settings: connection tracking
/// (whose entry the slot's tick stands for) and TC forwarding on.
#[inline(always)]
fn applies(s: &Settings) -> bool {
    s.flags & (FLAG_CONNTRACK | FLAG_TC_FORWARD) == FLAG_CONNTRACK | FLAG_TC_FORWARD
}

/// This CPU's slot for a flow.
#[inline(always)]
fn slot_of(src: u32, dst: u32, ports: u32, ifindex: u32) -> Option<*mut TunnelFlow> {
    maps::this_cpus(
        &maps::TUNNEL_FLOWS,
        TUNNEL_FLOW_SLOTS,
        slot(src, dst, ports, ifindex),
    )
}

/// Forwards the packet from its flow's slot and returns the TC action, or [`NOT_SERVED`].
/// `l3`: the tunnel has no link header (wg0, a TUN device). A call of its own: the verifier
/// walks it once, from the program's start, apart from the full path's steps.
#[inline(never)]
pub fn forward(skb: *mut __sk_buff, l3: bool) -> i32 {
    serve(skb, l3).unwrap_or(NOT_SERVED)
}

#[inline(always)]
fn serve(skb: *mut __sk_buff, l3: bool) -> Option<i32> {
    let ctx = &TcContext::new(skb);
    let settings = maps::SETTINGS.get(0)?;
    if !applies(settings) {
        return None;
    }
    // SAFETY: the context's own skb.
    let (len, gso_size, ifindex) = unsafe { ((*skb).len, (*skb).gso_size, (*skb).ingress_ifindex) };
    // A GSO aggregate's length is not its segments': the full path asks the route for those.
    if gso_size != 0 {
        return None;
    }
    let ip_at = if l3 { 0 } else { ETH_LEN };
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ip_at + IP_LEN + UDP_LEN > end {
        return None;
    }
    let ip = start + ip_at;
    let l4 = ip + IP_LEN;
    // SAFETY: every load below lies inside [start, ip + 28), checked above.
    let (w0, w1, w2, src, dst, ports) = unsafe {
        if !l3 && load_u16(start + 12) != u16::from_ne_bytes(ETH_P_IP) {
            return None;
        }
        (
            load_u32(ip),
            load_u32(ip + 4),
            load_u32(ip + 8),
            load_u32(ip + 12),
            load_u32(ip + 16),
            load_u32(l4),
        )
    };
    let [version_ihl, tos, len_hi, len_lo] = w0.to_ne_bytes();
    let [_, _, frag_hi, frag_lo] = w1.to_ne_bytes();
    let [ttl, proto, _, _] = w2.to_ne_bytes();
    // IPv4 without options, not a fragment, a TTL the forwarding may decrement, TCP or UDP, and
    // the packet exactly the datagram (no link padding; nothing but linear or paged payload).
    let total = u16::from_be_bytes([len_hi, len_lo]) as usize;
    if version_ihl != 0x45
        || frag_hi & 0x3f != 0
        || frag_lo != 0
        || ttl <= 1
        || (proto != PROTO_TCP && proto != PROTO_UDP)
        || ip_at + total != len as usize
        || total < IP_LEN + UDP_LEN
    {
        return None;
    }
    if proto == PROTO_TCP {
        if l4 + TCP_LEN > end || total < IP_LEN + TCP_LEN {
            return None;
        }
        // SAFETY: inside [l4, l4 + 20), checked just above.
        let [offset, flags] = unsafe { load_u16(l4 + 12) }.to_ne_bytes();
        if offset >> 4 < 5 || flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            return None;
        }
    }
    let active = maps::ACTIVE.get(0)?;
    // SAFETY: a valid map value in this CPU's range; nothing else writes it while this runs.
    let e = unsafe { &mut *slot_of(src, dst, ports, ifindex)? };
    let now = conntrack::now_ns();
    if e.src != src
        || e.dst != dst
        || e.ports != ports
        || e.selector != selector(proto, tos)
        || e.ifindex != ifindex
        || e.generation != active.generation
        || e.tick != tick(now)
        || now >= e.expires_ns
        || total > e.max_len as usize
        || (e.translated != 0 && settings.flags & FLAG_MASQUERADE == 0)
    {
        return None;
    }
    // A tunnel without a link header: the neighbour redirect needs one in front of the IP
    // header to replace (see `forward::tc_forward`). Made first, so that a failure leaves the
    // packet as it came, for the full path.
    // SAFETY: helper call on the program's own skb.
    if l3 && unsafe { bpf_skb_change_head(skb.cast(), ETH_LEN as u32, 0) } != 0 {
        return None;
    }
    // The packet is the shortcut's from here: counted as the full path counts it.
    let len = len as u64;
    stats::count(HOOK_TUNNEL_INGRESS, reason::ACCEPT_ESTABLISHED, len);
    stats::count_rule(active.slot, settings.rules_per_slot, e.rule, len);
    let check_at = (ETH_LEN + IP_LEN + if proto == PROTO_TCP { 16 } else { 6 }) as u32;
    let udp = if proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    // The transport checksum through the kernel's helpers, which know what the skb's checksum
    // state asks (a full checksum, one only begun for offload, the receive side's sum): the
    // address as part of the pseudo-header, the port as data.
    // SAFETY: helper calls on the program's own skb.
    if e.translated != 0
        && unsafe {
            bpf_l4_csum_replace(
                skb.cast(),
                check_at,
                src as u64,
                e.new_src as u64,
                (BPF_F_PSEUDO_HDR | udp | 4) as u64,
            ) != 0
                || bpf_l4_csum_replace(
                    skb.cast(),
                    check_at,
                    (ports & 0xffff) as u64,
                    e.new_sport as u64,
                    (udp | 2) as u64,
                ) != 0
        }
    {
        stats::count(HOOK_LAN, reason::DROP_NOT_LINEAR, len);
        return Some(TC_ACT_SHOT);
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_LEN + IP_LEN + UDP_LEN > end {
        stats::count(HOOK_TUNNEL_INGRESS, reason::DROP_INTERNAL, len);
        return Some(TC_ACT_SHOT);
    }
    let ip = start + ETH_LEN;
    // SAFETY: writes inside [start, ip + 28), checked above.
    unsafe {
        if l3 {
            store_u16(start + 12, u16::from_ne_bytes(ETH_P_IP));
        }
        if e.translated != 0 {
            store_u32(ip + 12, e.new_src);
            store_u16(ip + IP_LEN, e.new_sport);
            store_u16(ip + 10, apply_delta(load_u16(ip + 10), e.ip_delta));
        }
        forward::decrement_ipv4_ttl(ip);
    }
    if e.translated != 0 {
        stats::count(HOOK_LAN, reason::NAT_MASQUERADED, len);
    }
    let mut nh = forward::RedirectNeighbour {
        nh_family: AF_INET as u32,
        addr: [e.next_hop, 0, 0, 0],
    };
    // SAFETY: helper call with a properly sized local.
    let redirected = unsafe {
        bpf_redirect_neigh(
            e.egress,
            (&mut nh as *mut forward::RedirectNeighbour).cast(),
            size_of::<forward::RedirectNeighbour>() as i32,
            0,
        )
    };
    if redirected != TC_ACT_REDIRECT as i64 {
        stats::count(HOOK_TUNNEL_INGRESS, reason::DROP_INTERNAL, len);
        return Some(TC_ACT_SHOT);
    }
    stats::count(HOOK_TUNNEL_INGRESS, reason::TC_FORWARDED, len);
    e.hits = e.hits.wrapping_add(1);
    Some(TC_ACT_REDIRECT as i32)
}

/// Whether a flow's conntrack entry stands for its next plain packets within the tick: live
/// (the full path just passed it), admitted by a policy rule under the current generation, and
/// in a state such a packet does not move (a reply seen or not needed; a TCP connection
/// established), with an idle timeout far longer than a tick, so that its clock moving once a
/// tick is as good as once a packet.
#[inline(always)]
fn steady(
    entry: &CtEntry,
    proto: u8,
    sender_is_a: bool,
    settings: &Settings,
    generation: u32,
) -> bool {
    let from_initiator = sender_is_a == (entry.initiator == 0);
    let t = &settings.timeouts;
    let timeout_s = if proto == PROTO_UDP {
        if entry.replied != 0 {
            t.udp_stream
        } else {
            t.udp
        }
    } else {
        t.tcp_established
    };
    entry.origin == ORIGIN_POLICY
        && entry.generation == generation
        && (from_initiator || entry.replied != 0)
        && (proto == PROTO_UDP || entry.state == STATE_TCP_ESTABLISHED)
        && timeout_s as u64 * 1_000_000_000 >= NatMemo::MIN_TIMEOUT_NS
}

/// Fills the flow's slot after the full path forwarded a packet of an established flow from
/// the tunnel out of a LAN interface (translated on the way, or not), when the shortcut can
/// stand for the full path on the flow's next packets within this tick. `flow` is the packet's
/// conntrack entry (null: none at hand); the parse is in this CPU's scratch, the route in its
/// TC route cache.
#[inline(never)]
pub fn remember(skb: *mut __sk_buff, flow: *mut CtEntry, sender_is_a: bool) {
    let ctx = &TcContext::new(skb);
    let (Some(settings), Some(active), Some(pkt)) = (
        maps::SETTINGS.get(0),
        maps::ACTIVE.get(0),
        maps::SCRATCH.get(0),
    ) else {
        return;
    };
    // SAFETY: null, or a valid map value.
    let Some(entry) = (unsafe { flow.as_ref() }) else {
        return;
    };
    // SAFETY: the context's own skb.
    let ifindex = unsafe { (*skb).ingress_ifindex };
    let Some(route) = forward::tc_route_taken(pkt, ifindex) else {
        return;
    };
    let f = &pkt.flow;
    if !applies(settings)
        || f.family != FAMILY_V4
        || pkt.frag != FRAG_NONE
        || (f.proto != PROTO_TCP && f.proto != PROTO_UDP)
        || (pkt.l3 != 0 && pkt.l3 as usize != ETH_LEN)
        || pkt.l4 != pkt.l3 + IP_LEN as u32
        || route.nh_family != AF_INET
        || route.kind != TC_PORT_LAN
        || !steady(entry, f.proto, sender_is_a, settings, active.generation)
    {
        return;
    }
    // The packet as it leaves: a link header in front (the tunnel's own, or the blank one the
    // forwarding gave an L3 tunnel's packet), then what the masquerade made of the source.
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_LEN + IP_LEN + UDP_LEN > end {
        return;
    }
    // SAFETY: inside [start, start + 42), checked above.
    let (new_src, new_sport) = unsafe {
        (
            load_u32(start + ETH_LEN + 12),
            load_u16(start + ETH_LEN + IP_LEN),
        )
    };
    let src = u32::from_ne_bytes([f.src[0], f.src[1], f.src[2], f.src[3]]);
    let dst = u32::from_ne_bytes([f.dst[0], f.dst[1], f.dst[2], f.dst[3]]);
    let [s0, s1] = f.sport.to_be_bytes();
    let [d0, d1] = f.dport.to_be_bytes();
    let ports = u32::from_ne_bytes([s0, s1, d0, d1]);
    let translated = new_src != src || new_sport != (ports & 0xffff) as u16;
    let now = pkt.now();
    // A translation stands only while the tables confirmed it within this tick (the memo the
    // masquerade left in the entry says so).
    if translated && NatMemo::port(entry, now, sender_is_a) != Some(u16::from_be(new_sport)) {
        return;
    }
    let Some(e) = slot_of(src, dst, ports, ifindex) else {
        return;
    };
    // SAFETY: a valid map value in this CPU's range; nothing else writes it while this runs.
    let e = unsafe { &mut *e };
    let sel = selector(f.proto, pkt.tos);
    // A flow refilling its own slot (a tick later) keeps its count.
    if e.src != src || e.dst != dst || e.ports != ports || e.selector != sel || e.ifindex != ifindex
    {
        e.hits = 0;
    }
    e.expires_ns = route.expires_ns;
    e.src = src;
    e.dst = dst;
    e.ports = ports;
    e.selector = sel;
    e.ifindex = ifindex;
    e.generation = active.generation;
    e.tick = tick(now);
    e.rule = entry.rule;
    e.egress = route.egress;
    e.next_hop = route.nh[0];
    e.new_src = new_src;
    e.new_sport = new_sport;
    e.max_len = route.max_len;
    e.ip_delta = addr_delta(src, new_src);
    e.translated = translated as u16;
}
