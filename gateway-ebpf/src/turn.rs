//! The TURN relay's fast path (gateway_common::turn): ChannelData from a client on a bound
//! channel leaves as UDP from the allocation's address to the peer; a bound peer's UDP to an
//! allocation leaves as ChannelData to the client. The route comes from the kernel's FIB. What
//! is not exactly that (all STUN, indications, unbound channels, IP options, fragments, IPv6)
//! goes to the relay's userspace unchanged.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::{
        bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    programs::XdpContext,
};
use gateway_common::{
    forward::{FIB_CACHE_NS, FibKey, FibRoute, fib_slot},
    stats::Counter,
    turn::{
        ChannelKey, DIRECTION_TO_CLIENT, DIRECTION_TO_PEER, PeerKey, addr_words, counter_index,
        reason, udp_checksum_update,
    },
};

use crate::maps;

const ETH: usize = 14;
/// Ethernet, IPv4 without options, UDP.
const HEADERS: usize = 42;
const AF_INET: u8 = 2;

/// The fields of the frame's headers this path needs.
struct Udp4 {
    tos: u8,
    id: u16,
    frag: u16,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    /// The UDP length field.
    ulen: u16,
    check: u16,
}

#[inline(always)]
fn be16(p: usize) -> u16 {
    // SAFETY: callers checked that [p, p + 2) is inside the packet.
    u16::from_be(unsafe { core::ptr::read_unaligned(p as *const u16) })
}

#[inline(always)]
fn addr(p: usize) -> [u8; 4] {
    // SAFETY: callers checked that [p, p + 4) is inside the packet.
    unsafe { core::ptr::read_unaligned(p as *const [u8; 4]) }
}

/// The headers of an Ethernet/IPv4/UDP frame that is neither fragmented nor has IP options.
#[inline(always)]
fn headers(ctx: &XdpContext) -> Option<Udp4> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + HEADERS > end {
        return None;
    }
    let ip = data + ETH;
    // SAFETY: inside the checked range.
    let (ethertype, ver_ihl, proto) = unsafe {
        (
            be16(data + 12),
            *(ip as *const u8),
            *((ip + 9) as *const u8),
        )
    };
    if ethertype != 0x0800 || ver_ihl != 0x45 || proto != 17 {
        return None;
    }
    let frag = be16(ip + 6);
    if frag & 0x3fff != 0 {
        return None;
    }
    let udp = ip + 20;
    let u = Udp4 {
        // SAFETY: inside the checked range.
        tos: unsafe { *((ip + 1) as *const u8) },
        id: be16(ip + 4),
        frag,
        src: addr(ip + 12),
        dst: addr(ip + 16),
        sport: be16(udp),
        dport: be16(udp + 2),
        ulen: be16(udp + 4),
        check: be16(udp + 6),
    };
    // The datagram must be whole in the frame (Ethernet padding may follow it).
    if (u.ulen as usize) < 8
        || be16(ip + 2) as usize != 20 + u.ulen as usize
        || data + ETH + 20 + u.ulen as usize > end
    {
        return None;
    }
    Some(u)
}

/// The new frame's Ethernet, IPv4 and UDP headers.
#[inline(always)]
fn build(
    out: &mut [u8; HEADERS],
    fib: &FibRoute,
    u: &Udp4,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    ulen: u16,
    check: u16,
) {
    out[0..6].copy_from_slice(&fib.dmac);
    out[6..12].copy_from_slice(&fib.smac);
    out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let tot = 20 + ulen;
    out[14] = 0x45;
    out[15] = u.tos;
    out[16..18].copy_from_slice(&tot.to_be_bytes());
    out[18..20].copy_from_slice(&u.id.to_be_bytes());
    out[20..22].copy_from_slice(&u.frag.to_be_bytes());
    out[22] = 64;
    out[23] = 17;
    out[24] = 0;
    out[25] = 0;
    out[26..30].copy_from_slice(&src);
    out[30..34].copy_from_slice(&dst);
    let mut sum: u32 = 0;
    let mut i = 14;
    while i < 34 {
        sum += u16::from_be_bytes([out[i], out[i + 1]]) as u32;
        i += 2;
    }
    let ip_check = !gateway_common::checksum::fold(sum);
    out[24..26].copy_from_slice(&ip_check.to_be_bytes());
    out[34..36].copy_from_slice(&sport.to_be_bytes());
    out[36..38].copy_from_slice(&dport.to_be_bytes());
    out[38..40].copy_from_slice(&ulen.to_be_bytes());
    out[40..42].copy_from_slice(&check.to_be_bytes());
}

/// The route to `dst` from `src` (egress interface and MAC addresses): from this CPU's route
/// cache while it is fresh (a second, as the gateway's own XDP forwarding keeps it) and the
/// packet is no longer than one the FIB accepted on it (so the MTU check stays the kernel's),
/// else from the kernel's FIB. The cache is the forwarding path's map; the source's address in
/// the key's otherwise unused bytes keeps source-specific routes apart.
#[inline(always)]
fn route(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4], tot_len: u16) -> Option<FibRoute> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let mut key_dst = [0u8; 16];
    key_dst[..4].copy_from_slice(&dst);
    key_dst[4..8].copy_from_slice(&src);
    let key = FibKey {
        ifindex,
        family: AF_INET as u32,
        dst: key_dst,
    };
    let now = crate::conntrack::now_ns();
    let slot = maps::FIB_CACHE.get_ptr_mut(fib_slot(ifindex, &key.dst));
    if let Some(slot) = slot {
        // SAFETY: this CPU's slot; nothing else writes it while this program runs here.
        let slot = unsafe { &*slot };
        if slot.key == key && now < slot.route.expires_ns && tot_len <= slot.route.max_len {
            return Some(slot.route);
        }
    }
    let fib = lookup(ctx, src, dst, tot_len)?;
    let route = FibRoute {
        expires_ns: now + FIB_CACHE_NS,
        egress: fib.ifindex,
        max_len: tot_len,
        _pad: 0,
        dmac: fib.dmac,
        smac: fib.smac,
        port: 0,
    };
    if let Some(slot) = slot {
        // SAFETY: as above.
        let slot = unsafe { &mut *slot };
        slot.key = key;
        slot.route = route;
    }
    Some(route)
}

/// The kernel's FIB (and neighbour table) for `dst` from `src`.
#[inline(always)]
fn lookup(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4], tot_len: u16) -> Option<FibParams> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value of this plain C struct.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = 17;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // An input lookup from the interface the frame arrived on: the kernel answers it only where
    // that interface forwards (net.ipv4.conf.<if>.forwarding). An output lookup would need the
    // egress interface, which is what is being looked up.
    // SAFETY: plain helper call with a properly sized parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, size_of::<FibParams>() as i32, 0) };
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64).then_some(fib)
}

/// Sends the rewritten frame out of the route's interface.
#[inline(always)]
fn send(ctx: &XdpContext, route: &FibRoute) -> u32 {
    if route.egress == ctx.ingress_ifindex() as u32 {
        return xdp_action::XDP_TX;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(route.egress, 0) as u32 }
}

/// Writes `bytes` at the start of the frame.
#[inline(always)]
fn write_front<const N: usize>(ctx: &XdpContext, at: usize, bytes: &[u8; N]) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + at + N > end {
        return false;
    }
    // SAFETY: [data + at, data + at + N) is inside the packet, checked above.
    unsafe { core::ptr::write_unaligned((data + at) as *mut [u8; N], *bytes) };
    true
}

/// Sets the frame's length to `len` (dropping Ethernet padding or ChannelData padding).
#[inline(always)]
fn set_len(ctx: &XdpContext, len: usize) -> bool {
    let cur = (ctx.data_end() - ctx.data()) as i32;
    let delta = len as i32 - cur;
    // SAFETY: plain helper call on this program's frame.
    delta == 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } == 0
}

#[inline(always)]
fn count(slot: u32, direction: u32, bytes: u64) {
    if let Some(c) = maps::TURN_STATS.get_ptr_mut(counter_index(slot, direction)) {
        // SAFETY: this CPU's own counter.
        let c: &mut Counter = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += bytes;
    }
}

/// The program's verdict and its reason.
#[inline(always)]
pub fn relay(ctx: &XdpContext) -> (u32, u32) {
    let Some(u) = headers(ctx) else {
        return (xdp_action::XDP_PASS, reason::PASS_OTHER);
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    // (Checked before any map lookup would be wasted, but only frames of bindings count it.)
    let partial = gateway_common::turn::partial_checksum(u.check, u.src, u.dst, u.ulen);
    let payload = data + HEADERS;
    // SAFETY: read only when the 4 bytes after the headers are inside the packet.
    if payload + 4 <= end && (0x40..=0x7f).contains(&unsafe { *(payload as *const u8) }) {
        let channel = be16(payload);
        let clen = be16(payload + 2);
        let key = ChannelKey {
            client: u.src,
            listen: u.dst,
            client_port: u.sport,
            listen_port: u.dport,
            channel,
            _pad: 0,
        };
        // SAFETY: copied out at once.
        if let Some(to) = unsafe { maps::TURN_CHANNELS.get(&key) }.copied() {
            if partial {
                return (xdp_action::XDP_PASS, reason::PASS_PARTIAL_CHECKSUM);
            }
            return to_peer(ctx, &u, channel, clen, to);
        }
    }
    let key = PeerKey {
        peer: u.src,
        relay: u.dst,
        peer_port: u.sport,
        relay_port: u.dport,
    };
    // SAFETY: copied out at once.
    match unsafe { maps::TURN_PEERS.get(&key) }.copied() {
        Some(_) if partial => (xdp_action::XDP_PASS, reason::PASS_PARTIAL_CHECKSUM),
        Some(to) => to_client(ctx, &u, to),
        None => (xdp_action::XDP_PASS, reason::PASS_OTHER),
    }
}

/// ChannelData → UDP: the 4-byte header and any padding go, the addresses and ports become the
/// allocation's and the peer's.
#[inline(always)]
fn to_peer(
    ctx: &XdpContext,
    u: &Udp4,
    channel: u16,
    clen: u16,
    to: gateway_common::turn::ToPeer,
) -> (u32, u32) {
    let ulen = u.ulen as usize;
    if 12 + clen as usize > ulen || ulen - 12 - clen as usize > 3 {
        return (xdp_action::XDP_PASS, reason::PASS_MALFORMED);
    }
    let pad = ulen - 12 - clen as usize;
    let new_ulen = 8 + clen;
    let Some(fib) = route(ctx, to.relay, to.peer, 20 + new_ulen) else {
        return (xdp_action::XDP_PASS, reason::PASS_NO_ROUTE);
    };
    // The padding's bytes leave the checksum with it.
    let mut pad_bytes = [0u8; 3];
    let mut i = 0;
    while i < 3 {
        if i < pad {
            let at = (HEADERS + 4 + clen as usize + i) as u32;
            // SAFETY: helper call with a 1-byte local.
            if unsafe { bpf_xdp_load_bytes(ctx.ctx, at, (&mut pad_bytes[i] as *mut u8).cast(), 1) }
                != 0
            {
                return (xdp_action::XDP_PASS, reason::PASS_MALFORMED);
            }
        }
        i += 1;
    }
    let mut tail = [0u16; 3];
    let n = gateway_common::turn::trailing_words(12 + clen as usize, &pad_bytes[..pad], &mut tail);
    let [s0, s1] = addr_words(u.src);
    let [d0, d1] = addr_words(u.dst);
    let removed = [
        channel, clen, u.ulen, u.ulen, u.sport, u.dport, s0, s1, d0, d1, tail[0], tail[1], tail[2],
    ];
    let [r0, r1] = addr_words(to.relay);
    let [p0, p1] = addr_words(to.peer);
    let added = [
        new_ulen,
        new_ulen,
        to.relay_port,
        to.peer_port,
        r0,
        r1,
        p0,
        p1,
    ];
    let check = udp_checksum_update(u.check, &removed[..10 + n], &added);
    let mut h = [0u8; HEADERS];
    build(
        &mut h,
        &fib,
        u,
        to.relay,
        to.peer,
        to.relay_port,
        to.peer_port,
        new_ulen,
        check,
    );
    // SAFETY: plain helper call on this program's frame: 4 bytes fewer at the front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, 4) } != 0
        || !write_front(ctx, 0, &h)
        || !set_len(ctx, HEADERS + clen as usize)
    {
        return (xdp_action::XDP_DROP, reason::DROP_REWRITE);
    }
    count(to.slot, DIRECTION_TO_PEER, clen as u64);
    (send(ctx, &fib), reason::TO_PEER)
}

/// UDP → ChannelData: 4 bytes in front of the data, addresses and ports the listening
/// address's and the client's.
#[inline(always)]
fn to_client(ctx: &XdpContext, u: &Udp4, to: gateway_common::turn::ToClient) -> (u32, u32) {
    let dlen = u.ulen - 8;
    let new_ulen = u.ulen + 4;
    let Some(fib) = route(ctx, to.listen, to.client, 20 + new_ulen) else {
        return (xdp_action::XDP_PASS, reason::PASS_NO_ROUTE);
    };
    let [s0, s1] = addr_words(u.src);
    let [d0, d1] = addr_words(u.dst);
    let removed = [u.ulen, u.ulen, u.sport, u.dport, s0, s1, d0, d1];
    let [l0, l1] = addr_words(to.listen);
    let [c0, c1] = addr_words(to.client);
    let added = [
        to.channel,
        dlen,
        new_ulen,
        new_ulen,
        to.listen_port,
        to.client_port,
        l0,
        l1,
        c0,
        c1,
    ];
    let check = udp_checksum_update(u.check, &removed, &added);
    let mut h = [0u8; HEADERS];
    build(
        &mut h,
        &fib,
        u,
        to.listen,
        to.client,
        to.listen_port,
        to.client_port,
        new_ulen,
        check,
    );
    let mut cd = [0u8; 4];
    cd[..2].copy_from_slice(&to.channel.to_be_bytes());
    cd[2..].copy_from_slice(&dlen.to_be_bytes());
    // SAFETY: plain helper call on this program's frame: 4 bytes more at the front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -4) } != 0
        || !write_front(ctx, 0, &h)
        || !write_front(ctx, HEADERS, &cd)
        || !set_len(ctx, HEADERS + 4 + dlen as usize)
    {
        return (xdp_action::XDP_DROP, reason::DROP_REWRITE);
    }
    count(to.slot, DIRECTION_TO_CLIENT, dlen as u64);
    (send(ctx, &fib), reason::TO_CLIENT)
}
