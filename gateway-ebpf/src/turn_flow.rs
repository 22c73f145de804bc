//! The relay's per-flow shortcut (`gateway_common::turn_flow`): a frame of an IPv4 flow that
//! the full fast path (`turn`) relayed is relayed from its flow's slot, after a header check of
//! its own, as the full path would have relayed it: the same bytes, the same counters, the same
//! action. Anything the slot cannot stand for (another shape of frame, padded ChannelData,
//! Ethernet padding, a checksum only begun, another bindings generation, an expired route)
//! takes the full path.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext,
};
use gateway_common::{
    forward::FibRoute,
    turn::{ALIVE_WINDOW_NS, DIRECTION_TO_CLIENT, DIRECTION_TO_PEER, begun_checksum, reason},
    turn_flow::{
        TURN_FLOW_SLOTS, TurnFlow, halves, ip_base, ip_check, slot, to_client_check, to_peer_check,
        udp_delta,
    },
};

use crate::{
    clock, maps,
    packet::{load_u16, load_u32, mac_words, store_u16, store_u32},
    turn::{HOPS, count, send},
};

const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
/// What the shortcut reads: Ethernet, IPv4 without options, UDP, a ChannelData header's room
/// (a shorter frame takes the full path).
const HEADERS: usize = ETH + IP + UDP + 4;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];

/// This CPU's slot for a flow.
#[inline(always)]
fn slot_of(src: u32, dst: u32, ports: u32, channel: u16, ifindex: u32) -> Option<*mut TurnFlow> {
    let slot = slot(src, dst, ports, channel, ifindex);
    maps::this_cpus(&maps::TURN_FLOWS, TURN_FLOW_SLOTS, slot)
}

/// Relays the frame from its flow's slot: the XDP action and the reason; `None`: the full path
/// decides it. `tag`: the bindings' generation plus one.
#[inline(always)]
pub fn relay(ctx: &XdpContext, tag: u64) -> Option<(u32, u32)> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + HEADERS > end {
        return None;
    }
    let ip = start + ETH;
    let udp = ip + IP;
    // SAFETY: every load lies inside [start, start + HEADERS), checked above.
    let (ethertype, w0, w1, w2, src, dst, ports_ne, len_check, cd) = unsafe {
        (
            load_u16(start + 12),
            u32::from_be(load_u32(ip)),
            load_u32(ip + 4),
            u32::from_be(load_u32(ip + 8)),
            load_u32(ip + 12),
            load_u32(ip + 16),
            load_u32(udp),
            u32::from_be(load_u32(udp + 4)),
            u32::from_be(load_u32(udp + 8)),
        )
    };
    let id_frag = u32::from_be(w1);
    // IPv4 without options, UDP, not a fragment; the datagram fills the frame exactly (no
    // Ethernet padding to trim).
    let total = w0 & 0xffff;
    let ulen = len_check >> 16;
    if ethertype != u16::from_ne_bytes(ETH_P_IP)
        || w0 >> 24 != 0x45
        || (w2 >> 16) & 0xff != 17
        || id_frag & 0x3fff != 0
        || total != IP as u32 + ulen
        || ETH + total as usize != end - start
    {
        return None;
    }
    // ChannelData (its first byte 0x40–0x7f) keys on its channel, a peer's datagram on 0: the
    // order in which the full path tries the two bindings.
    let channel = if (0x40..=0x7f).contains(&(cd >> 24)) {
        (cd >> 16) as u16
    } else {
        0
    };
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: a valid map value in this CPU's range; nothing else writes it while this runs.
    let e = unsafe { &mut *slot_of(src, dst, ports_ne, channel, ifindex)? };
    if e.src != src
        || e.dst != dst
        || e.ports != ports_ne
        || e.channel != channel
        || e.ifindex != ifindex
        || e.tag != tag
        || clock::jiffies() >= e.expires_jiffies
    {
        return None;
    }
    let check = len_check as u16;
    let (src_h, dst_h) = (u32::from_be(src), u32::from_be(dst));
    if begun_checksum(check, halves(src_h) + halves(dst_h), ulen as u16) {
        return None;
    }
    // The new UDP length and checksum, the bytes the binding counts, the head's move.
    let (new_ulen, new_check, bytes, head) = if channel != 0 {
        let clen = cd & 0xffff;
        // Padded (or malformed) ChannelData: the full path's.
        if ulen != clen + 12 {
            return None;
        }
        let c = to_peer_check(check, e.udp_delta, clen as u16, ulen as u16);
        (clen + 8, c, clen, 4)
    } else {
        let c = to_client_check(check, e.udp_delta, ulen as u16);
        (ulen + 4, c, ulen - 8, -4)
    };
    let new_total = IP as u32 + new_ulen;
    if new_total > e.max_len as u32 {
        return None;
    }
    let tos = (w0 >> 16) as u8;
    let ip_sum = ip_check(
        e.ip_base,
        tos,
        new_total as u16,
        (id_frag >> 16) as u16,
        id_frag as u16,
    );
    // SAFETY: plain helper call on this program's frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, head) } != 0 {
        return Some((xdp_action::XDP_DROP, reason::DROP_REWRITE));
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + HEADERS > end {
        return Some((xdp_action::XDP_DROP, reason::DROP_REWRITE));
    }
    let ip = start + ETH;
    let udp = ip + IP;
    // SAFETY: every store lies inside [start, start + HEADERS), checked above.
    unsafe {
        store_u32(start, e.macs[0]);
        store_u32(start + 4, e.macs[1]);
        store_u32(start + 8, e.macs[2]);
        store_u16(start + 12, u16::from_ne_bytes(ETH_P_IP));
        store_u32(ip, (0x4500_0000 | (tos as u32) << 16 | new_total).to_be());
        store_u32(ip + 4, w1);
        store_u32(
            ip + 8,
            ((HOPS as u32) << 24 | 17 << 16 | ip_sum as u32).to_be(),
        );
        store_u32(ip + 12, e.new_src);
        store_u32(ip + 16, e.new_dst);
        store_u32(udp, e.new_ports);
        store_u32(udp + 4, (new_ulen << 16 | new_check as u32).to_be());
        if channel == 0 {
            store_u32(udp + 8, ((e.out_channel as u32) << 16 | bytes).to_be());
        }
    }
    let direction = if channel != 0 {
        DIRECTION_TO_PEER
    } else {
        DIRECTION_TO_CLIENT
    };
    count(e.binding, direction, bytes as u64);
    e.hits = e.hits.wrapping_add(1);
    let why = if channel != 0 {
        reason::TO_PEER
    } else {
        reason::TO_CLIENT
    };
    Some((send(ctx, e.egress), why))
}

/// What the full path relayed, for its flow's slot: the frame's key as it arrived (addresses
/// and ports in network order), the binding's rewrite, the route.
pub struct Relayed<'a, A> {
    pub src: &'a A,
    pub dst: &'a A,
    pub sport: u16,
    pub dport: u16,
    /// The client's channel (ChannelData toward a peer); 0 for a peer's datagram.
    pub channel: u16,
    pub new_src: &'a A,
    pub new_dst: &'a A,
    pub new_sport: u16,
    pub new_dport: u16,
    /// The channel a peer's datagram leaves on; 0 toward a peer.
    pub out_channel: u16,
    pub binding: u32,
    pub route: &'a FibRoute,
    pub tag: u64,
    /// The coarse clock the full path read for this frame.
    pub now: u64,
}

/// Fills the flow's slot after the full path relayed a frame of it.
#[inline(always)]
pub fn remember(ctx: &XdpContext, r: &Relayed<[u8; 4]>) {
    let word = |a: &[u8; 4]| u32::from_ne_bytes(*a);
    let (src, dst) = (word(r.src), word(r.dst));
    let ports = (r.sport as u32) << 16 | r.dport as u32;
    let new_ports = (r.new_sport as u32) << 16 | r.new_dport as u32;
    // (As the key holds them: as their bytes lie in the header, read as a native word.)
    let ports_ne = ports.to_be();
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(e) = slot_of(src, dst, ports_ne, r.channel, ifindex) else {
        return;
    };
    // SAFETY: a valid map value in this CPU's range; nothing else writes it while this runs.
    let e = unsafe { &mut *e };
    // A flow refilling its own slot (a new generation, its route a second old) keeps its count.
    if e.src != src
        || e.dst != dst
        || e.ports != ports_ne
        || e.channel != r.channel
        || e.ifindex != ifindex
    {
        e.hits = 0;
    }
    let sum = |a: &[u8; 4]| halves(u32::from_be_bytes(*a));
    let addrs = sum(r.src) + sum(r.dst);
    let new_addrs = sum(r.new_src) + sum(r.new_dst);
    // Not past the relay's sign-of-life window either: the full path stops trusting bindings
    // there (turn::relay), so the slot must not outlast it.
    let alive = maps::TURN_ALIVE.get(0).copied().unwrap_or(0);
    let deadline = r
        .route
        .expires_ns
        .min(alive.saturating_add(ALIVE_WINDOW_NS));
    e.expires_jiffies = clock::slot_deadline(r.now, deadline);
    e.src = src;
    e.dst = dst;
    e.ports = ports_ne;
    e.ifindex = ifindex;
    e.channel = r.channel;
    e.max_len = r.route.max_len;
    e.egress = r.route.egress;
    e.new_src = word(r.new_src);
    e.new_dst = word(r.new_dst);
    e.new_ports = new_ports.to_be();
    e.macs = mac_words(&r.route.dmac, &r.route.smac);
    e.udp_delta = udp_delta(
        r.channel,
        r.out_channel,
        (ports, addrs),
        (new_ports, new_addrs),
    );
    e.ip_base = ip_base(HOPS, new_addrs);
    e.out_channel = r.out_channel;
    e.binding = r.binding;
    e.tag = r.tag;
}
