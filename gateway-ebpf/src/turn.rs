//! The TURN relay's fast path (gateway_common::turn): ChannelData from a client on a bound
//! channel leaves as UDP from the allocation's address to the peer; a bound peer's UDP to an
//! allocation leaves as ChannelData to the client. IPv4 and IPv6 alike (one pair of maps per
//! family); the route comes from the kernel's FIB. What is not exactly that (all STUN,
//! indications, unbound channels, IP options, IPv6 extension headers, fragments) goes to the
//! relay's userspace unchanged.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action, xdp_md},
    helpers::generated::{
        bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
    },
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::{
    forward::{FIB_CACHE_NS, FibRoute, addr_words, route_slot},
    stats::Counter,
    turn::{
        ALIVE_WINDOW_NS, CachedBinding, ChannelKey, ChecksumUpdate, DIRECTION_TO_CLIENT,
        DIRECTION_TO_PEER, PeerKey, ToClient, ToPeer, TurnAddr, begun_checksum, channel_cache_slot,
        counter_index, peer_cache_slot, reason, trailing_word,
    },
};

use crate::{
    maps,
    parse::v4_address,
    turn_flow::{self, Relayed},
};

const ETH: usize = 14;
const UDP: usize = 8;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// The relay originates the datagrams it forwards, as its sockets would (TTL / hop limit 64).
pub(crate) const HOPS: u8 = 64;

/// The fields of the frame's headers this path needs. The addresses only as the sum of their
/// words (all the checksum update needs): an IPv6 pair kept whole would not fit the stack.
struct Udp {
    /// Type of service (IPv4) or traffic class (IPv6), kept.
    tos: u8,
    /// IPv4's identification and flags (don't-fragment kept); zero for IPv6.
    id: u16,
    frag: u16,
    /// The source and destination addresses' 16-bit words, summed.
    addrs: u32,
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
fn read<const N: usize>(p: usize) -> [u8; N] {
    // SAFETY: callers checked that [p, p + N) is inside the packet.
    unsafe { core::ptr::read_unaligned(p as *const [u8; N]) }
}

/// The sum of the `n` big-endian 16-bit words of two `n`-byte addresses back to back at `p`.
#[inline(always)]
fn word_sum(p: usize, n: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < n {
        sum += be16(p + 2 * i) as u32;
        i += 1;
    }
    sum
}

#[inline(always)]
fn byte(p: usize) -> u8 {
    // SAFETY: callers checked that p is inside the packet.
    unsafe { *(p as *const u8) }
}

/// What differs between the families: the IP header, the route lookup, the maps.
trait Family {
    type A: TurnAddr + 'static;
    /// The IP header's length (IPv4 without options, IPv6 without extension headers).
    const IP: usize;
    /// The headers of a frame of this family that carries one whole, unfragmented UDP datagram.
    fn headers(ctx: &XdpContext) -> Option<Udp>;
    /// The frame's (source, destination) addresses, once [`Family::headers`] accepted it.
    fn addresses(ctx: &XdpContext) -> Option<(Self::A, Self::A)>;
    /// Writes the IP header of a datagram of UDP length `ulen` after the Ethernet header.
    fn write_ip(ctx: &XdpContext, u: &Udp, src: &Self::A, dst: &Self::A, ulen: u16) -> bool;
    /// The route to `dst` from `src` for a packet of IP length `len`, at `now` (ns).
    fn route(
        ctx: &XdpContext,
        src: &Self::A,
        dst: &Self::A,
        len: u16,
        now: u64,
    ) -> Option<FibRoute>;
    /// The binding's entries (see [`cached`]).
    fn channel(key: &ChannelKey<Self::A>, tag: u64) -> Option<&'static ToPeer<Self::A>>;
    fn peer(key: &PeerKey<Self::A>, tag: u64) -> Option<&'static ToClient<Self::A>>;
    /// Fills the flow's slot of the per-flow shortcut (IPv4 only) after a frame was relayed.
    fn remember(ctx: &XdpContext, r: &Relayed<Self::A>);
}

struct V4;
struct V6;

impl Family for V4 {
    type A = [u8; 4];
    const IP: usize = 20;

    #[inline(always)]
    fn headers(ctx: &XdpContext) -> Option<Udp> {
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + ETH + Self::IP + UDP > end {
            return None;
        }
        let ip = data + ETH;
        if byte(ip) != 0x45 || byte(ip + 9) != 17 {
            return None;
        }
        let frag = be16(ip + 6);
        if frag & 0x3fff != 0 {
            return None;
        }
        let udp = ip + Self::IP;
        let u = Udp {
            tos: byte(ip + 1),
            id: be16(ip + 4),
            frag,
            addrs: word_sum(ip + 12, 4),
            sport: be16(udp),
            dport: be16(udp + 2),
            ulen: be16(udp + 4),
            check: be16(udp + 6),
        };
        // The datagram must be whole in the frame (Ethernet padding may follow it).
        if (u.ulen as usize) < UDP
            || be16(ip + 2) as usize != Self::IP + u.ulen as usize
            || udp + crate::packet::u16_for_verifier(u.ulen) > end
        {
            return None;
        }
        Some(u)
    }

    #[inline(always)]
    fn addresses(ctx: &XdpContext) -> Option<([u8; 4], [u8; 4])> {
        let ip = ctx.data() + ETH;
        (ip + Self::IP <= ctx.data_end()).then(|| (read(ip + 12), read(ip + 16)))
    }

    #[inline(always)]
    fn write_ip(ctx: &XdpContext, u: &Udp, src: &[u8; 4], dst: &[u8; 4], ulen: u16) -> bool {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[1] = u.tos;
        h[2..4].copy_from_slice(&(20 + ulen).to_be_bytes());
        h[4..6].copy_from_slice(&u.id.to_be_bytes());
        h[6..8].copy_from_slice(&u.frag.to_be_bytes());
        h[8] = HOPS;
        h[9] = 17;
        h[12..16].copy_from_slice(src);
        h[16..20].copy_from_slice(dst);
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < 20 {
            sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
            i += 2;
        }
        h[10..12].copy_from_slice(&(!gateway_common::checksum::fold(sum)).to_be_bytes());
        write_front(ctx, ETH, &h)
    }

    #[inline(always)]
    fn route(
        ctx: &XdpContext,
        src: &[u8; 4],
        dst: &[u8; 4],
        len: u16,
        now: u64,
    ) -> Option<FibRoute> {
        // (The route cache keys an IPv4 address in its first word.)
        cached_route(ctx, AF_INET, &v4_address(*src), &v4_address(*dst), len, now)
    }

    #[inline(always)]
    fn channel(key: &ChannelKey<[u8; 4]>, tag: u64) -> Option<&'static ToPeer<[u8; 4]>> {
        cached(
            &maps::TURN_CHANNEL_CACHE,
            &maps::TURN_CHANNELS,
            channel_cache_slot(key),
            tag,
            key,
        )
    }

    #[inline(always)]
    fn peer(key: &PeerKey<[u8; 4]>, tag: u64) -> Option<&'static ToClient<[u8; 4]>> {
        cached(
            &maps::TURN_PEER_CACHE,
            &maps::TURN_PEERS,
            peer_cache_slot(key),
            tag,
            key,
        )
    }

    #[inline(always)]
    fn remember(ctx: &XdpContext, r: &Relayed<[u8; 4]>) {
        turn_flow::remember(ctx, r);
    }
}

impl Family for V6 {
    type A = [u8; 16];
    const IP: usize = 40;

    #[inline(always)]
    fn headers(ctx: &XdpContext) -> Option<Udp> {
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + ETH + Self::IP + UDP > end {
            return None;
        }
        let ip = data + ETH;
        let (b0, b1) = (byte(ip), byte(ip + 1));
        // UDP right after the fixed header: an extension header (a fragment header included)
        // sends the frame to userspace.
        if b0 >> 4 != 6 || byte(ip + 6) != 17 {
            return None;
        }
        let udp = ip + Self::IP;
        let u = Udp {
            tos: (b0 << 4) | (b1 >> 4),
            id: 0,
            frag: 0,
            addrs: word_sum(ip + 8, 16),
            sport: be16(udp),
            dport: be16(udp + 2),
            ulen: be16(udp + 4),
            check: be16(udp + 6),
        };
        // A zero checksum is not allowed over IPv6 (RFC 8200): the kernel drops it, not us.
        if (u.ulen as usize) < UDP
            || u.check == 0
            || be16(ip + 4) != u.ulen
            || udp + crate::packet::u16_for_verifier(u.ulen) > end
        {
            return None;
        }
        Some(u)
    }

    #[inline(always)]
    fn addresses(ctx: &XdpContext) -> Option<([u8; 16], [u8; 16])> {
        let ip = ctx.data() + ETH;
        (ip + Self::IP <= ctx.data_end()).then(|| (read(ip + 8), read(ip + 24)))
    }

    #[inline(always)]
    fn write_ip(ctx: &XdpContext, u: &Udp, src: &[u8; 16], dst: &[u8; 16], ulen: u16) -> bool {
        let (data, end) = (ctx.data(), ctx.data_end());
        let ip = data + ETH;
        if ip + Self::IP > end {
            return false;
        }
        // Version, traffic class kept, flow label none (a new datagram of the relay's).
        let head: [u8; 8] = [
            0x60 | (u.tos >> 4),
            u.tos << 4,
            0,
            0,
            (ulen >> 8) as u8,
            ulen as u8,
            17,
            HOPS,
        ];
        // SAFETY: [ip, ip + 40) is inside the packet, checked above. Written in place: a
        // 40-byte header on the stack would not fit beside the IPv6 keys.
        unsafe {
            core::ptr::write_unaligned(ip as *mut [u8; 8], head);
            core::ptr::write_unaligned((ip + 8) as *mut [u8; 16], *src);
            core::ptr::write_unaligned((ip + 24) as *mut [u8; 16], *dst);
        }
        true
    }

    #[inline(always)]
    fn route(
        ctx: &XdpContext,
        src: &[u8; 16],
        dst: &[u8; 16],
        len: u16,
        now: u64,
    ) -> Option<FibRoute> {
        cached_route(ctx, AF_INET6, src, dst, len, now)
    }

    #[inline(always)]
    fn channel(key: &ChannelKey<[u8; 16]>, tag: u64) -> Option<&'static ToPeer<[u8; 16]>> {
        cached(
            &maps::TURN_CHANNEL6_CACHE,
            &maps::TURN_CHANNELS6,
            channel_cache_slot(key),
            tag,
            key,
        )
    }

    #[inline(always)]
    fn peer(key: &PeerKey<[u8; 16]>, tag: u64) -> Option<&'static ToClient<[u8; 16]>> {
        cached(
            &maps::TURN_PEER6_CACHE,
            &maps::TURN_PEERS6,
            peer_cache_slot(key),
            tag,
            key,
        )
    }

    /// IPv6 has no shortcut: its frames all take this path.
    #[inline(always)]
    fn remember(_: &XdpContext, _: &Relayed<[u8; 16]>) {}
}

/// A binding through this CPU's cache: the slot's copy when it holds `key` under `tag` (the
/// bindings' generation plus one, read before the lookup), else `map`'s entry in place
/// (userspace replaces an entry whole), which then fills the slot. The tag is written last and
/// cleared first: XDP runs of one CPU do not nest (NAPI, softirq), so a later run on this CPU
/// finds a slot written whole or not matching.
#[inline(always)]
fn cached<K: Copy + PartialEq, V: Copy>(
    cache: &'static PerCpuArray<CachedBinding<K, V>>,
    map: &'static HashMap<K, V>,
    slot: u32,
    tag: u64,
    key: &K,
) -> Option<&'static V> {
    // SAFETY: read-only; the map's elements live while the program runs.
    let lookup = || unsafe { map.get(key) };
    let Some(e) = cache.get_ptr_mut(slot) else {
        return lookup();
    };
    // SAFETY: this CPU's slot of a per-CPU array, alive while the program runs; see above for
    // why no other run writes it meanwhile.
    let e = unsafe { &mut *e };
    if e.tag == tag && e.key == *key {
        return Some(&e.value);
    }
    let v = lookup()?;
    e.tag = 0;
    // Copied as what they are, non-overlapping: assigned, the compiler cannot tell a map value
    // from the cache slot apart and calls the builtin `memmove`, which 6.1's verifier counts as
    // one more stack frame (over the 512-byte limit on the IPv6 path).
    // SAFETY: `key` and `v` are not in this CPU's cache slot: the key is the caller's, the
    // value the map's.
    unsafe {
        core::ptr::copy_nonoverlapping(key, &mut e.key, 1);
        core::ptr::copy_nonoverlapping(v, &mut e.value, 1);
    }
    e.tag = tag;
    Some(v)
}

/// The route from `src` to `dst` (IPv4 in the first word) for a UDP packet of IP length `len`:
/// from this CPU's route cache while it is fresh (a second, as the gateway's XDP forwarding
/// keeps its own) and the packet is no longer than one the FIB accepted on it (so the MTU check
/// stays the kernel's), else from the kernel's FIB. The key holds the source too, so
/// source-specific routes are never confused. Compared and filled in place: the IPv6 path has
/// no stack room for a key.
#[inline(always)]
fn cached_route(
    ctx: &XdpContext,
    family: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    len: u16,
    now: u64,
) -> Option<FibRoute> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let slot = maps::TURN_ROUTES.get_ptr_mut(route_slot(ifindex, family, src, dst));
    if let Some(slot) = slot {
        // SAFETY: this CPU's slot; nothing else writes it while this program runs here.
        let slot = unsafe { &*slot };
        if slot.key.holds(ifindex, family, 0, src, dst)
            && now < slot.route.expires_ns
            && len <= slot.route.max_len
        {
            return Some(slot.route);
        }
    }
    let fib = fib_params(ctx, family, len)?;
    if family == AF_INET {
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        fib.__bindgen_anon_3.ipv6_src = addr_words(src);
        fib.__bindgen_anon_4.ipv6_dst = addr_words(dst);
    }
    let route = lookup(ctx, fib, now, len)?;
    if let Some(slot) = slot {
        // SAFETY: as above.
        let slot = unsafe { &mut *slot };
        slot.key.set(ifindex, family, 0, src, dst);
        slot.route = route;
    }
    Some(route)
}

/// An input lookup's parameters for a UDP packet of IP length `len` on the arrival interface,
/// in this CPU's slot of `TURN_FIB_PARAMS` (not on the stack: see there).
#[inline(always)]
fn fib_params(ctx: &XdpContext, family: u8, len: u16) -> Option<&'static mut FibParams> {
    let fib = maps::TURN_FIB_PARAMS.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; runs of the program on one CPU do not nest.
    let fib = unsafe { &mut *fib };
    // Zeroed word by word: a zeroed struct assigned whole is a call to the builtin `memset`,
    // one more stack frame to 6.1's verifier. (All zeros is a valid bpf_fib_lookup.)
    const WORDS: usize = size_of::<FibParams>() / 8;
    const _: () = assert!(size_of::<FibParams>() == WORDS * 8);
    let words = (fib as *mut FibParams).cast::<u64>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: inside this CPU's slot, which is WORDS words long and 8-byte aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    fib.family = family;
    fib.l4_protocol = 17;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = len;
    Some(fib)
}

/// The kernel's FIB (and neighbour table). An input lookup from the interface the frame
/// arrived on: the kernel answers it only where that interface forwards
/// (net.ipv{4,6}.conf.<if>.forwarding). An output lookup would need the egress interface,
/// which is what is being looked up.
#[inline(always)]
fn lookup(ctx: &XdpContext, fib: &mut FibParams, now: u64, len: u16) -> Option<FibRoute> {
    // SAFETY: plain helper call with a properly sized parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), fib, size_of::<FibParams>() as i32, 0) };
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64).then_some(FibRoute {
        expires_ns: now + FIB_CACHE_NS,
        egress: fib.ifindex,
        max_len: len,
        // (Unread: the relay's redirects are its own.)
        multi_buffer: 0,
        dmac: fib.dmac,
        smac: fib.smac,
        port: 0,
    })
}

/// Sends the rewritten frame out of interface `egress`.
#[inline(always)]
pub(crate) fn send(ctx: &XdpContext, egress: u32) -> u32 {
    if egress == ctx.ingress_ifindex() as u32 {
        return xdp_action::XDP_TX;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(egress, 0) as u32 }
}

/// Writes `bytes` at `at` from the start of the frame.
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

/// Writes the Ethernet header toward the route's next hop.
#[inline(always)]
fn write_eth(ctx: &XdpContext, fib: &FibRoute, ethertype: u16) -> bool {
    let mut h = [0u8; ETH];
    h[0..6].copy_from_slice(&fib.dmac);
    h[6..12].copy_from_slice(&fib.smac);
    h[12..14].copy_from_slice(&ethertype.to_be_bytes());
    write_front(ctx, 0, &h)
}

/// Writes the UDP header at `at`.
#[inline(always)]
fn write_udp(ctx: &XdpContext, at: usize, sport: u16, dport: u16, ulen: u16, check: u16) -> bool {
    let mut h = [0u8; UDP];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&ulen.to_be_bytes());
    h[6..8].copy_from_slice(&check.to_be_bytes());
    write_front(ctx, at, &h)
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
pub(crate) fn count(slot: u32, direction: u32, bytes: u64) {
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
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH > end {
        return (xdp_action::XDP_PASS, reason::PASS_OTHER);
    }
    // Read before any binding is: a copy cached under an older generation must not match.
    let tag = maps::TURN_GENERATION
        .get(0)
        .copied()
        .unwrap_or(0)
        .wrapping_add(1);
    // A flow's slot stands for the full path below, the check of the relay's sign of life
    // included: it expires no later than the window its filling frame was relayed in.
    if let Some(done) = turn_flow::relay(ctx, tag) {
        return done;
    }
    // Bindings are trusted only while the relay says it is alive: a relay that died without
    // taking its program out of a chain (see dataplane::TurnChain) relays nothing more.
    let alive = maps::TURN_ALIVE.get(0).copied().unwrap_or(0);
    let now = crate::conntrack::now_ns();
    if now > alive.saturating_add(ALIVE_WINDOW_NS) {
        return (xdp_action::XDP_PASS, reason::PASS_RELAY_GONE);
    }
    // One BPF-to-BPF call per family: each gets its own stack frame (inlined together, the
    // two would not fit the 512-byte stack).
    let packed = match be16(data + 12) {
        ETH_P_IP => relay_family::<V4>(ctx.ctx, ETH_P_IP, now, tag),
        ETH_P_IPV6 => relay_family::<V6>(ctx.ctx, ETH_P_IPV6, now, tag),
        _ => return (xdp_action::XDP_PASS, reason::PASS_OTHER),
    };
    ((packed >> 32) as u32, packed as u32)
}

/// The verdict and reason of a frame of family `F`, packed into one register (verdict high).
#[inline(never)]
fn relay_family<F: Family>(raw: *mut xdp_md, ethertype: u16, now: u64, tag: u64) -> u64 {
    let ctx = XdpContext::new(raw);
    let (action, why) = judge_family::<F>(&ctx, ethertype, now, tag);
    ((action as u64) << 32) | why as u64
}

#[inline(always)]
fn judge_family<F: Family>(ctx: &XdpContext, ethertype: u16, now: u64, tag: u64) -> (u32, u32) {
    let Some(u) = F::headers(ctx) else {
        return (xdp_action::XDP_PASS, reason::PASS_OTHER);
    };
    let end = ctx.data_end();
    // (Checked before any map lookup would be wasted, but only frames of bindings count it.)
    let partial = begun_checksum(u.check, u.addrs, u.ulen);
    let Some((src, dst)) = F::addresses(ctx) else {
        return (xdp_action::XDP_PASS, reason::PASS_OTHER);
    };
    let payload = ctx.data() + ETH + F::IP + UDP;
    if payload + 4 <= end && (0x40..=0x7f).contains(&byte(payload)) {
        let channel = be16(payload);
        let clen = be16(payload + 2);
        let key = ChannelKey {
            client: src,
            listen: dst,
            client_port: u.sport,
            listen_port: u.dport,
            channel,
            _pad: 0,
        };
        if let Some(to) = F::channel(&key, tag) {
            if partial {
                return (xdp_action::XDP_PASS, reason::PASS_PARTIAL_CHECKSUM);
            }
            let flow = (&src, &dst, tag);
            return to_peer::<F>(ctx, ethertype, &u, channel, clen, to, now, flow);
        }
    }
    let key = PeerKey {
        peer: src,
        relay: dst,
        peer_port: u.sport,
        relay_port: u.dport,
    };
    match F::peer(&key, tag) {
        Some(_) if partial => (xdp_action::XDP_PASS, reason::PASS_PARTIAL_CHECKSUM),
        Some(to) => to_client::<F>(ctx, ethertype, &u, to, now, (&src, &dst, tag)),
        None => (xdp_action::XDP_PASS, reason::PASS_OTHER),
    }
}

/// ChannelData → UDP: the 4-byte header and any padding go, the addresses and ports become the
/// allocation's and the peer's.
#[inline(always)]
fn to_peer<F: Family>(
    ctx: &XdpContext,
    ethertype: u16,
    u: &Udp,
    channel: u16,
    clen: u16,
    to: &ToPeer<F::A>,
    now: u64,
    (src, dst, tag): (&F::A, &F::A, u64),
) -> (u32, u32) {
    let ulen = u.ulen as usize;
    if 12 + clen as usize > ulen || ulen - 12 - clen as usize > 3 {
        return (xdp_action::XDP_PASS, reason::PASS_MALFORMED);
    }
    let pad = ulen - 12 - clen as usize;
    let new_ulen = 8 + clen;
    let Some(fib) = F::route(ctx, &to.relay, &to.peer, F::IP as u16 + new_ulen, now) else {
        return (xdp_action::XDP_PASS, reason::PASS_NO_ROUTE);
    };
    let mut check = ChecksumUpdate::new(u.check);
    for w in [channel, clen, u.ulen, u.ulen, u.sport, u.dport] {
        check.remove(w);
    }
    check.remove_sum(u.addrs, 2 * F::A::WORDS as u32);
    // The padding's bytes leave the checksum with it. (Read one by one into a plain local: a
    // zeroed array here costs a byte-at-a-time memset call per packet.)
    let mut i = 0;
    while i < 3 {
        if i < pad {
            let at = ETH + F::IP + UDP + 4 + clen as usize + i;
            let mut b = 0u8;
            // SAFETY: helper call with a 1-byte local.
            if unsafe { bpf_xdp_load_bytes(ctx.ctx, at as u32, (&mut b as *mut u8).cast(), 1) } != 0
            {
                return (xdp_action::XDP_PASS, reason::PASS_MALFORMED);
            }
            check.remove(trailing_word(12 + clen as usize + i, b));
        }
        i += 1;
    }
    for w in [new_ulen, new_ulen, to.relay_port, to.peer_port] {
        check.add(w);
    }
    check.add_addr(&to.relay);
    check.add_addr(&to.peer);
    let check = check.finish();
    // SAFETY: plain helper call on this program's frame: 4 bytes fewer at the front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, 4) } != 0
        || !write_eth(ctx, &fib, ethertype)
        || !F::write_ip(ctx, u, &to.relay, &to.peer, new_ulen)
        || !write_udp(
            ctx,
            ETH + F::IP,
            to.relay_port,
            to.peer_port,
            new_ulen,
            check,
        )
        || !set_len(ctx, ETH + F::IP + UDP + clen as usize)
    {
        return (xdp_action::XDP_DROP, reason::DROP_REWRITE);
    }
    count(to.slot, DIRECTION_TO_PEER, clen as u64);
    F::remember(
        ctx,
        &Relayed {
            src,
            dst,
            sport: u.sport,
            dport: u.dport,
            channel,
            new_src: &to.relay,
            new_dst: &to.peer,
            new_sport: to.relay_port,
            new_dport: to.peer_port,
            out_channel: 0,
            binding: to.slot,
            route: &fib,
            tag,
            now,
        },
    );
    (send(ctx, fib.egress), reason::TO_PEER)
}

/// UDP → ChannelData: 4 bytes in front of the data, addresses and ports the listening
/// address's and the client's.
#[inline(always)]
fn to_client<F: Family>(
    ctx: &XdpContext,
    ethertype: u16,
    u: &Udp,
    to: &ToClient<F::A>,
    now: u64,
    (src, dst, tag): (&F::A, &F::A, u64),
) -> (u32, u32) {
    let dlen = u.ulen - 8;
    let new_ulen = u.ulen + 4;
    let Some(fib) = F::route(ctx, &to.listen, &to.client, F::IP as u16 + new_ulen, now) else {
        return (xdp_action::XDP_PASS, reason::PASS_NO_ROUTE);
    };
    let mut check = ChecksumUpdate::new(u.check);
    for w in [u.ulen, u.ulen, u.sport, u.dport] {
        check.remove(w);
    }
    check.remove_sum(u.addrs, 2 * F::A::WORDS as u32);
    for w in [
        to.channel,
        dlen,
        new_ulen,
        new_ulen,
        to.listen_port,
        to.client_port,
    ] {
        check.add(w);
    }
    check.add_addr(&to.listen);
    check.add_addr(&to.client);
    let check = check.finish();
    let mut cd = [0u8; 4];
    cd[..2].copy_from_slice(&to.channel.to_be_bytes());
    cd[2..].copy_from_slice(&dlen.to_be_bytes());
    // SAFETY: plain helper call on this program's frame: 4 bytes more at the front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -4) } != 0
        || !write_eth(ctx, &fib, ethertype)
        || !F::write_ip(ctx, u, &to.listen, &to.client, new_ulen)
        || !write_udp(
            ctx,
            ETH + F::IP,
            to.listen_port,
            to.client_port,
            new_ulen,
            check,
        )
        || !write_front(ctx, ETH + F::IP + UDP, &cd)
        || !set_len(ctx, ETH + F::IP + UDP + 4 + dlen as usize)
    {
        return (xdp_action::XDP_DROP, reason::DROP_REWRITE);
    }
    count(to.slot, DIRECTION_TO_CLIENT, dlen as u64);
    F::remember(
        ctx,
        &Relayed {
            src,
            dst,
            sport: u.sport,
            dport: u.dport,
            channel: 0,
            new_src: &to.listen,
            new_dst: &to.client,
            new_sport: to.listen_port,
            new_dport: to.client_port,
            out_channel: to.channel,
            binding: to.slot,
            route: &fib,
            tag,
            now,
        },
    );
    (send(ctx, fib.egress), reason::TO_CLIENT)
}
