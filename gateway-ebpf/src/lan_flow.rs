//! The LAN hook's per-flow shortcut (`gateway_common::lan_flow`): a packet of an IPv4 TCP/UDP
//! flow that the full path accepted and redirected is forwarded from its flow's slot, after a
//! header check of its own, as the full path would have forwarded it: the same verdict, the
//! same counters, the same rewrite and redirect. With connection tracking on, the packet's own
//! conntrack entry is looked up and moved on as the full path moves it, and only a live flow
//! that the current policy admitted, and no TCP packet that opens or closes a connection, is
//! served. Anything the slot cannot stand for (another shape of packet, another policy
//! generation, an expired route, a checksum left to offload, the masquerade) takes the full
//! path.

use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use gateway_common::{
    checksum::v4_pseudo_header_fold_ne,
    conntrack::{FAMILY_V4, ORIGIN_POLICY, flow_key},
    forward::FibRoute,
    lan_flow::{LAN_FLOW_SLOTS, LanFlow, selector, slot},
    settings::{FLAG_CONNTRACK, FLAG_MASQUERADE, FLAG_XDP_FORWARD, Settings},
    stats::{HOOK_LAN, reason},
};

use crate::{
    clock, conntrack, forward,
    judge::Decision,
    maps,
    packet::{load_u16, load_u32, mac_words, write_macs},
    parse::{FRAG_NONE, PROTO_TCP, PROTO_UDP, Packet, TCP_FIN, TCP_RST, TCP_SYN, v4_address},
    stats,
};

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
/// What the shortcut reads: Ethernet, an IPv4 header without options, a TCP header (a UDP
/// frame shorter than this takes the full path).
const HEADERS: usize = ETH_LEN + IP_LEN + 20;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];

/// Whether the shortcut can stand for the full path under these settings: XDP forwarding on,
/// the masquerade (whose reverse translation the full path looks for) off.
#[inline(always)]
fn applies(s: &Settings) -> bool {
    s.flags & (FLAG_XDP_FORWARD | FLAG_MASQUERADE) == FLAG_XDP_FORWARD
}

/// With connection tracking on, what the full path does for a packet of an established flow
/// (judge.rs, `existing_flow`), where nothing but the entry's clock and state moves: the flow's
/// entry must be live, admitted by a policy rule under the current generation (a flow to
/// re-check, a tombstone, a local flow are the full path's), and a TCP packet must neither open
/// nor close a connection. The entry is then moved on as the full path moves it; the deciding
/// rule is returned.
#[inline(always)]
fn track(
    (src, sport): (u32, u16),
    (dst, dport): (u32, u16),
    (proto, tcp_flags): (u8, u8),
    settings: &Settings,
    generation: u32,
    now: u64,
) -> Option<u32> {
    if proto == PROTO_TCP && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        return None;
    }
    let (src, dst) = (v4_address(src.to_ne_bytes()), v4_address(dst.to_ne_bytes()));
    let (key, sender_is_a) = flow_key(&src, sport, &dst, dport, proto, FAMILY_V4, None);
    // SAFETY: a valid map value; concurrent updates of the same flow only race on timestamps
    // (as on the full path).
    let entry = unsafe { &mut *conntrack::lookup(&key)? };
    if !conntrack::is_live(&key, entry, settings, now)
        || entry.origin != ORIGIN_POLICY
        || entry.generation != generation
    {
        return None;
    }
    let from_initiator = sender_is_a == (entry.initiator == 0);
    conntrack::update(entry, proto, tcp_flags, from_initiator, now);
    Some(entry.rule)
}

/// This CPU's slot for a flow.
#[inline(always)]
fn slot_of(src: u32, dst: u32, selector: u32, ifindex: u32) -> Option<*mut LanFlow> {
    let slot = slot(src, dst, selector, ifindex);
    maps::this_cpus(&maps::LAN_FLOWS, LAN_FLOW_SLOTS, slot)
}

/// Forwards the frame from its flow's slot and returns the XDP action; `None`: the full path
/// decides it.
#[inline(always)]
pub fn forward(ctx: &XdpContext) -> Option<u32> {
    let settings = maps::SETTINGS.get(0)?;
    if !applies(settings) {
        return None;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + HEADERS > end {
        return None;
    }
    let ip = start + ETH_LEN;
    let l4 = ip + IP_LEN;
    // SAFETY: every load below lies inside [start, start + HEADERS), checked above.
    let (ethertype, w0, w1, w2, src, dst) = unsafe {
        (
            load_u16(start + 12),
            load_u32(ip),
            load_u32(ip + 4),
            load_u32(ip + 8),
            load_u32(ip + 12),
            load_u32(ip + 16),
        )
    };
    let [version_ihl, tos, len_hi, len_lo] = w0.to_ne_bytes();
    let [_, _, frag_hi, frag_lo] = w1.to_ne_bytes();
    let [ttl, proto, _, _] = w2.to_ne_bytes();
    // IPv4 without options, not a fragment (more-fragments and offset clear), a TTL the
    // forwarding may decrement, TCP or UDP.
    if ethertype != u16::from_ne_bytes(ETH_P_IP)
        || version_ihl != 0x45
        || frag_hi & 0x3f != 0
        || frag_lo != 0
        || ttl <= 1
        || (proto != PROTO_TCP && proto != PROTO_UDP)
    {
        return None;
    }
    // The datagram whole in the frame's first buffer, its transport header whole.
    let total = u16::from_be_bytes([len_hi, len_lo]) as usize;
    let transport = if proto == PROTO_TCP { 20 } else { 8 };
    if total < IP_LEN + transport || ETH_LEN + total > end - start {
        return None;
    }
    // SAFETY: inside [start, start + HEADERS).
    let (sport, dport, [offset, tcp_flags], check) = unsafe {
        (
            u16::from_be(load_u16(l4)),
            u16::from_be(load_u16(l4 + 2)),
            load_u16(l4 + 12).to_ne_bytes(),
            load_u16(l4 + if proto == PROTO_TCP { 16 } else { 6 }),
        )
    };
    let tcp_offset = offset >> 4;
    if proto == PROTO_TCP && tcp_offset < 5 {
        return None;
    }
    // Only LAN traffic toward the overlay is the policy's (the rest is the kernel's).
    if !settings.in_overlay_v4(u32::from_be(dst)) {
        return None;
    }
    let active = maps::ACTIVE.get(0)?;
    let sel = selector(dport, proto, tos);
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: a valid map value in this CPU's range; nothing else writes it while this runs.
    let e = unsafe { &mut *slot_of(src, dst, sel, ifindex)? };
    if e.src != src
        || e.dst != dst
        || e.selector != sel
        || e.ifindex != ifindex
        || e.generation != active.generation
        || total > e.max_len as usize
    {
        return None;
    }
    if clock::jiffies() >= e.expires_jiffies {
        return None;
    }
    // A checksum only begun (a local sender's offload) is the kernel path's to finish: the
    // full path counts it and hands it over.
    let l4_len = (total - IP_LEN) as u16;
    if !(proto == PROTO_UDP && check == 0)
        && check == v4_pseudo_header_fold_ne(src, dst, proto, l4_len)
    {
        return None;
    }
    // SAFETY: plain helper call on the program's own XDP context.
    if e.multi_buffer == 0 && unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize > end - start {
        return None;
    }
    // Last: once the flow's entry has moved, the packet is the shortcut's.
    let (reason, rule) = if settings.flags & FLAG_CONNTRACK != 0 {
        // The coarse clock (a helper call) only where the entry's clock moves.
        let now = conntrack::now_ns();
        let rule = track(
            (src, sport),
            (dst, dport),
            (proto, tcp_flags),
            settings,
            active.generation,
            now,
        )?;
        (reason::ACCEPT_ESTABLISHED, rule)
    } else {
        (reason::ACCEPT_POLICY, e.rule)
    };
    // SAFETY: writes inside [start, start + HEADERS).
    unsafe {
        forward::decrement_ipv4_ttl(ip);
        write_macs(start, &e.macs);
    }
    let len = (end - start) as u64;
    stats::count(HOOK_LAN, reason, len);
    stats::count_rule(active.slot, settings.rules_per_slot, rule, len);
    stats::count(HOOK_LAN, reason::XDP_FORWARDED, len);
    e.hits = e.hits.wrapping_add(1);
    Some(match maps::FORWARD_PORTS.redirect(e.port, 0) {
        Ok(action) | Err(action) => action,
    })
}

/// Fills the flow's slot after the full path accepted the packet (by policy, or as a tracked
/// flow's) and redirected it along `route`, when the shortcut can stand for the full path on
/// the flow's next packets.
#[inline(always)]
pub fn remember(ctx: &XdpContext, pkt: &Packet, d: &Decision, route: &FibRoute) {
    let Some(settings) = maps::SETTINGS.get(0) else {
        return;
    };
    let f = &pkt.flow;
    if !applies(settings)
        || (d.reason != reason::ACCEPT_POLICY && d.reason != reason::ACCEPT_ESTABLISHED)
        || f.family != FAMILY_V4
        || pkt.frag != FRAG_NONE
        || (f.proto != PROTO_TCP && f.proto != PROTO_UDP)
        || pkt.l3 as usize != ETH_LEN
        || pkt.l4 as usize != ETH_LEN + IP_LEN
    {
        return;
    }
    let src = u32::from_ne_bytes([f.src[0], f.src[1], f.src[2], f.src[3]]);
    let dst = u32::from_ne_bytes([f.dst[0], f.dst[1], f.dst[2], f.dst[3]]);
    let sel = selector(f.dport, f.proto, pkt.tos);
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(e) = slot_of(src, dst, sel, ifindex) else {
        return;
    };
    // SAFETY: a valid map value in this CPU's range; nothing else writes it while this runs.
    let e = unsafe { &mut *e };
    // A flow refilling its own slot (its route a second old, a new policy) keeps its count.
    if e.src != src || e.dst != dst || e.selector != sel || e.ifindex != ifindex {
        e.hits = 0;
    }
    e.src = src;
    e.dst = dst;
    e.selector = sel;
    e.ifindex = ifindex;
    e.generation = d.generation;
    e.rule = d.rule;
    e.expires_jiffies = clock::slot_deadline(pkt.now(), route.expires_ns);
    e.port = route.port;
    e.max_len = route.max_len;
    e.multi_buffer = route.multi_buffer;
    e.macs = mac_words(&route.dmac, &route.smac);
}
