//! Benchmark programs.
//!
//! - `xdp_gen` runs under BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: for every repetition it
//!   rewrites the frame's source address, source port and destination port from a template
//!   table and transmits it (XDP_TX) out of the generator's veth. Live frames come back to the
//!   page pool as the path left them (a forwarder rewrites MACs and TTL), so every repetition
//!   first restores the header from a template.
//! - `xdp_sink` counts what arrives and drops it: packets are counted where they arrive.
//! - `xdp_sink_pass` is the sink on the generator's own veth (the relay's one-interface
//!   layout): it counts and drops the generator's frames and hands anything else to the kernel.
//! - `xdp_redirect` is the no-op ceiling: redirect everything to the egress veth.
//! - `xdp_redirect_writing` is the same redirect after rewriting what a router rewrites (MACs,
//!   TTL, header checksum).
//! - `xdp_tx` is the no-op ceiling of a one-interface path: every frame back out (XDP_TX).
//! - `xdp_tx_unwrapping` is the same XDP_TX after doing to a client's ChannelData what any TURN
//!   relay must before sending the datagram on: the floor of a relay on one interface.
//! - `xdp_pass` lets a veth receive XDP frames and hand them to the kernel stack (the path the
//!   kernel-forwarding contenders take).
//! - `tc_redirect` is the ceiling of a data path in TC: redirect everything from TC ingress to
//!   the egress interface's next hop (`bpf_redirect_neigh`, as the gateway's TC forwarding
//!   does), no parse, no lookup.
//! - `tc_redirect_tracking` is the same redirect after the least table work any stateful
//!   translator does for a flow it has not seen: one lookup of the flow (a miss), then its
//!   state recorded under the original tuple and under the translated one (two inserts), in
//!   the kernel's LRU hash maps at the gateway's default capacities. No policy, no clock, no
//!   rewrite: the floor of a translating data path in TC that keeps its state in those maps.
//! - `tc_redirect_slotted` does the same work in direct-mapped arrays of the same capacities (a
//!   flow's slot is its tuple's hash; a new flow overwrites whatever held its slot), without
//!   the per-slot synchronisation a real store shared between CPUs needs: an upper bound on
//!   what a flow store outside the kernel's hash maps could reach.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK, xdp_action},
    helpers::generated::{bpf_redirect_neigh, bpf_xdp_adjust_head},
    macros::{classifier, map, xdp},
    maps::{Array, DevMap, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use bench_common::{
    GEN_HEADER_LEN, GEN_SIGNATURE, GEN_SIGNATURE_AT, GenConfig, GenFlow, GenHeader, MAX_GEN_FLOWS,
    SINK_OURS, SINK_STRAY, SinkCount, TcEgress,
};

#[map(name = "GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

#[map(name = "GEN_FLOWS")]
static GEN_FLOWS: Array<GenFlow> = Array::with_max_entries(MAX_GEN_FLOWS, 0);

#[map(name = "GEN_HEADER")]
static GEN_HEADER: Array<GenHeader> = Array::with_max_entries(1, 0);

#[map(name = "GEN_COUNTER")]
static GEN_COUNTER: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Pacing: when (picoseconds of the monotonic clock) the next frame may leave.
#[map(name = "GEN_PACE")]
static GEN_PACE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Pacing: a generator that fell behind (a batch's flush, an interrupt) catches up by at most
/// this many frames back to back (a quarter of a veth's ring).
const PACE_BURST: u64 = 64;

#[map(name = "SINK")]
static SINK: PerCpuArray<SinkCount> = PerCpuArray::with_max_entries(2, 0);

#[map(name = "EGRESS")]
static EGRESS: DevMap = DevMap::with_max_entries(1, 0);

#[map(name = "TC_EGRESS")]
static TC_EGRESS: Array<TcEgress> = Array::with_max_entries(1, 0);

/// An IPv4 flow's tuple, as a translator keys it (16 bytes: smaller than the gateway's keys,
/// which hold IPv6 addresses too, so the floor is not charged for their size).
#[repr(C)]
#[derive(Clone, Copy)]
struct TrackKey {
    src: u32,
    dst: u32,
    ports: u32,
    proto: u32,
}

/// What a translator keeps per direction: the other side's address and port, when last seen.
#[repr(C)]
#[derive(Clone, Copy)]
struct TrackValue {
    addr: u32,
    port: u32,
    last_seen: u64,
}

/// Sized at load (the gateway's default conntrack and NAT capacities).
#[map(name = "TRACK_FLOWS")]
static TRACK_FLOWS: LruHashMap<TrackKey, TrackValue> = LruHashMap::with_max_entries(1, 0);

#[map(name = "TRACK_REVERSE")]
static TRACK_REVERSE: LruHashMap<TrackKey, TrackValue> = LruHashMap::with_max_entries(1, 0);

/// A direct-mapped slot: the flow it holds and what is kept for it (32 bytes, two to a line).
#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    key: TrackKey,
    value: TrackValue,
}

#[map(name = "SLOTTED_FLOWS")]
static SLOTTED_FLOWS: Array<Slot> = Array::with_max_entries(SLOTTED_FLOWS_SLOTS, 0);

#[map(name = "SLOTTED_REVERSE")]
static SLOTTED_REVERSE: Array<Slot> = Array::with_max_entries(SLOTTED_REVERSE_SLOTS, 0);

/// The gateway's default conntrack and NAT capacities (powers of two: a slot is the hash's low
/// bits; bench's tests hold them to that).
const SLOTTED_FLOWS_SLOTS: u32 = gateway_common::maps::DEFAULT_CONNTRACK_ENTRIES;
const SLOTTED_REVERSE_SLOTS: u32 = gateway_common::maps::DEFAULT_NAT_ENTRIES;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;

/// The frame must be Ethernet + IPv4 (no options) + UDP or TCP; anything else goes out as is.
#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + GEN_HEADER_LEN > end {
        return xdp_action::XDP_ABORTED;
    }
    let (Some(cfg), Some(counter), Some(header)) = (
        GEN_CONFIG.get(0),
        GEN_COUNTER.get_ptr_mut(0),
        GEN_HEADER.get(0),
    ) else {
        return xdp_action::XDP_ABORTED;
    };
    if cfg.gap_ps != 0 && !pace(cfg.gap_ps as u64) {
        // Held back: the run recycles a dropped frame at once, on this CPU. (A frame that a
        // full veth ring refuses goes back through its page pool's shared ring, under a lock
        // that the DUT's core also takes for every frame it frees.)
        return xdp_action::XDP_DROP;
    }
    // SAFETY: [start, start + GEN_HEADER_LEN) is inside the frame, checked above.
    unsafe { core::ptr::write_unaligned(start as *mut [u8; GEN_HEADER_LEN], header.bytes) };
    // SAFETY: per-CPU counter (of the frames let out: flows stay new in a paced run).
    let n = unsafe {
        let v = *counter;
        *counter = v + 1;
        v
    };
    let flows = if cfg.flows == 0 { 1 } else { cfg.flows };
    let sports = if cfg.sports == 0 { 1 } else { cfg.sports };
    let Some(flow) = GEN_FLOWS.get((n % flows as u64) as u32) else {
        return xdp_action::XDP_ABORTED;
    };
    let sport = (cfg.sport_base + ((n / flows as u64) % sports as u64) as u32) as u16;
    let ip = start + ETH_LEN;
    let l4 = ip + IPV4_LEN;
    // SAFETY: all writes are inside [start, end), checked above.
    unsafe {
        core::ptr::write_unaligned((ip + 12) as *mut u32, flow.saddr_be);
        core::ptr::write_unaligned(l4 as *mut u16, sport.to_be());
        core::ptr::write_unaligned((l4 + 2) as *mut u16, flow.dport_be);
        // The IPv4 header checksum, recomputed over the 20 bytes.
        core::ptr::write_unaligned((ip + 10) as *mut u16, 0);
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < IPV4_LEN {
            sum += u16::from_be(core::ptr::read_unaligned((ip + i) as *const u16)) as u32;
            i += 2;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        core::ptr::write_unaligned((ip + 10) as *mut u16, (!(sum as u16)).to_be());
    }
    xdp_action::XDP_TX
}

/// Whether a frame may leave now, `gap` picoseconds after the last one.
#[inline(always)]
fn pace(gap: u64) -> bool {
    let Some(next) = GEN_PACE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: plain helper call.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } * 1000;
    // SAFETY: this CPU's slot; runs of the program on one CPU do not nest.
    let next = unsafe { &mut *next };
    if now < *next {
        return false;
    }
    let earliest = now.saturating_sub(PACE_BURST * gap);
    *next = if *next < earliest { earliest } else { *next } + gap;
    true
}

/// Counts the generator's frames (IPv4 with the signature after the UDP/TCP ports) apart from
/// anything else that arrives.
#[xdp]
pub fn xdp_sink(ctx: XdpContext) -> u32 {
    let ours = signature_at(&ctx, GEN_SIGNATURE_AT);
    sink_count(&ctx, if ours { SINK_OURS } else { SINK_STRAY });
    xdp_action::XDP_DROP
}

/// The sink where the generator's frames share the interface with other traffic: a frame with
/// the signature where a relay leaves it (the unwrapped datagram) counts as ours, one with the
/// signature four bytes on (ChannelData as the generator sent it, bounced by a ceiling) as a
/// stray; both are dropped. Anything else (the TURN client's replies) goes to the kernel.
#[xdp]
pub fn xdp_sink_pass(ctx: XdpContext) -> u32 {
    if signature_at(&ctx, GEN_SIGNATURE_AT) {
        sink_count(&ctx, SINK_OURS);
    } else if signature_at(&ctx, GEN_SIGNATURE_AT + 4) {
        sink_count(&ctx, SINK_STRAY);
    } else {
        return xdp_action::XDP_PASS;
    }
    xdp_action::XDP_DROP
}

/// Whether the frame is IPv4 with the generator's signature at `at`.
#[inline(always)]
fn signature_at(ctx: &XdpContext, at: usize) -> bool {
    let (start, end) = (ctx.data(), ctx.data_end());
    start + at + GEN_SIGNATURE.len() <= end && {
        // SAFETY: the reads are inside [start, end), checked above.
        unsafe {
            core::ptr::read_unaligned((start + 12) as *const [u8; 2]) == [0x08, 0x00]
                && core::ptr::read_unaligned((start + at) as *const [u8; 6]) == GEN_SIGNATURE
        }
    }
}

#[inline(always)]
fn sink_count(ctx: &XdpContext, slot: u32) {
    if let Some(c) = SINK.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
}

#[xdp]
pub fn xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// ChannelData (Ethernet, IPv4 without options, UDP, the 4-byte ChannelData header) unwrapped
/// as any relay must before sending its datagram on, with nothing decided: the head moves past
/// the ChannelData header and the datagram's 42 bytes of headers are written in front of the
/// data, the frame's own with addresses and ports swapped, both lengths 4 less and the IP
/// header checksum updated for it (no UDP checksum); then back out (XDP_TX). Priced beside the
/// no-op XDP_TX: what a relay's target leaves it once it writes the frame at all.
#[xdp]
pub fn xdp_tx_unwrapping(ctx: XdpContext) -> u32 {
    const HEADERS: usize = 42;
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + HEADERS + 4 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: inside [start, start + 46), checked above.
    let h = unsafe { core::ptr::read_unaligned(start as *const [u8; HEADERS + 4]) };
    if h[12..14] != [0x08, 0x00] || h[14] != 0x45 || h[23] != 17 || h[42] & 0xc0 != 0x40 {
        return xdp_action::XDP_PASS;
    }
    let mut n = [0u8; HEADERS];
    n[..6].copy_from_slice(&h[6..12]);
    n[6..12].copy_from_slice(&h[..6]);
    n[12..26].copy_from_slice(&h[12..26]);
    n[26..30].copy_from_slice(&h[30..34]);
    n[30..34].copy_from_slice(&h[26..30]);
    n[34..36].copy_from_slice(&h[36..38]);
    n[36..38].copy_from_slice(&h[34..36]);
    let total = u16::from_be_bytes([h[16], h[17]]).wrapping_sub(4);
    n[16..18].copy_from_slice(&total.to_be_bytes());
    // The total length 4 less: 4 more in the ones'-complement checksum.
    let sum = u16::from_be_bytes([h[24], h[25]]) as u32 + 4;
    n[24..26].copy_from_slice(&((sum + (sum >> 16)) as u16).to_be_bytes());
    let udp_len = u16::from_be_bytes([h[38], h[39]]).wrapping_sub(4);
    n[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // SAFETY: plain helper call on the program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, 4) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + HEADERS > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: inside [start, start + 42), checked above.
    unsafe { core::ptr::write_unaligned(start as *mut [u8; HEADERS], n) };
    xdp_action::XDP_TX
}

#[xdp]
pub fn xdp_redirect(_ctx: XdpContext) -> u32 {
    match EGRESS.redirect(0, 0) {
        Ok(action) => action,
        Err(action) => action,
    }
}

/// The redirect of `xdp_redirect`, after reading what any router reads of an IPv4 frame: its
/// ethertype, TTL and destination. It touches each frame's header once, as every forwarder must
/// (the plain redirect never reads the frame): the floor of a forwarding data path.
#[xdp]
pub fn xdp_redirect_reading(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 34 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the reads are inside [start, start + 34), checked above.
    let (ethertype, ttl, dst) = unsafe {
        (
            core::ptr::read_volatile((start + 12) as *const u16),
            core::ptr::read_volatile((start + 22) as *const u8),
            core::ptr::read_unaligned((start + 30) as *const u32),
        )
    };
    if ethertype != 0x0800u16.to_be() || ttl <= 1 || dst == 0 {
        return xdp_action::XDP_PASS;
    }
    match EGRESS.redirect(0, 0) {
        Ok(action) => action,
        Err(action) => action,
    }
}

/// The redirect of `xdp_redirect`, after rewriting what a router rewrites in an IPv4 frame it
/// forwards: the MAC addresses (here each frame's own, swapped), the TTL (one less) and the
/// header checksum (updated for it, RFC 1624): what a forwarder must write, priced beside the
/// redirects that only read or do not touch the frame.
#[xdp]
pub fn xdp_redirect_writing(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 34 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the reads and writes are inside [start, start + 34), checked above.
    unsafe {
        if core::ptr::read_unaligned((start + 12) as *const u16) != 0x0800u16.to_be()
            || *((start + 22) as *const u8) <= 1
        {
            return xdp_action::XDP_PASS;
        }
        let macs = core::ptr::read_unaligned(start as *const [u8; 12]);
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&macs[6..]);
        swapped[6..].copy_from_slice(&macs[..6]);
        core::ptr::write_unaligned(start as *mut [u8; 12], swapped);
        // TTL is the high byte of the header's fifth word: one less there, one more in the
        // ones'-complement checksum.
        *((start + 22) as *mut u8) -= 1;
        let check = u16::from_be(core::ptr::read_unaligned((start + 24) as *const u16));
        let sum = check as u32 + 0x0100;
        let check = (sum + (sum >> 16)) as u16;
        core::ptr::write_unaligned((start + 24) as *mut u16, check.to_be());
    }
    match EGRESS.redirect(0, 0) {
        Ok(action) => action,
        Err(action) => action,
    }
}

/// `struct bpf_redir_neigh` for an IPv4 next hop.
#[repr(C)]
struct RedirectNeighbour {
    nh_family: u32,
    addr: [u32; 4],
}

const AF_INET: u32 = 2;

#[classifier]
pub fn tc_redirect(_ctx: TcContext) -> i32 {
    redirect_to_next_hop()
}

#[classifier]
pub fn tc_redirect_tracking(ctx: TcContext) -> i32 {
    if let Some((key, reverse, original, translated)) = new_flow_records(&ctx) {
        // SAFETY: only compared with None.
        if unsafe { TRACK_FLOWS.get(&key) }.is_none() {
            let _ = TRACK_REVERSE.insert(&reverse, &original, BPF_NOEXIST as u64);
            let _ = TRACK_FLOWS.insert(&key, &translated, 0);
        }
    }
    redirect_to_next_hop()
}

#[classifier]
pub fn tc_redirect_slotted(ctx: TcContext) -> i32 {
    if let Some((key, reverse, original, translated)) = new_flow_records(&ctx)
        && let Some(slot) = SLOTTED_FLOWS.get_ptr_mut(slot_index(&key, SLOTTED_FLOWS_SLOTS))
    {
        // SAFETY: a valid map value; the floor leaves out the synchronisation between CPUs.
        let slot = unsafe { &mut *slot };
        if !same_key(&slot.key, &key) {
            if let Some(r) =
                SLOTTED_REVERSE.get_ptr_mut(slot_index(&reverse, SLOTTED_REVERSE_SLOTS))
            {
                // SAFETY: as above.
                unsafe {
                    *r = Slot {
                        key: reverse,
                        value: original,
                    }
                };
            }
            *slot = Slot {
                key,
                value: translated,
            };
        }
    }
    redirect_to_next_hop()
}

/// A UDP/TCP-over-IPv4 packet's records as a translator keeps them: its tuple, the reply's
/// tuple after translation (from the egress address, the next hop's standing in for it, the
/// source port kept), and what each direction's record holds.
#[inline(always)]
fn new_flow_records(ctx: &TcContext) -> Option<(TrackKey, TrackKey, TrackValue, TrackValue)> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_LEN + IPV4_LEN + 8 > end {
        return None;
    }
    let ip = start + ETH_LEN;
    // SAFETY: every read lies inside [start, start + 42), checked above.
    let (proto, src, dst, ports) = unsafe {
        (
            *((ip + 9) as *const u8) as u32,
            core::ptr::read_unaligned((ip + 12) as *const u32),
            core::ptr::read_unaligned((ip + 16) as *const u32),
            core::ptr::read_unaligned((ip + IPV4_LEN) as *const u32),
        )
    };
    let nat_addr = TC_EGRESS.get(0).map_or(0, |e| e.nexthop_be);
    let port = ports & 0xffff;
    Some((
        TrackKey {
            src,
            dst,
            ports,
            proto,
        },
        TrackKey {
            src: dst,
            dst: nat_addr,
            ports: ports.rotate_left(16),
            proto,
        },
        TrackValue {
            addr: src,
            port,
            last_seen: 0,
        },
        TrackValue {
            addr: nat_addr,
            port,
            last_seen: 0,
        },
    ))
}

/// The slot of a tuple in a table of `slots` (a power of two): a multiplicative mix of its
/// words, as cheap as a hash that spreads sequential ports can be.
#[inline(always)]
fn slot_index(k: &TrackKey, slots: u32) -> u32 {
    let mut h = k.src ^ k.dst.rotate_left(11) ^ k.ports.rotate_left(22) ^ k.proto;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h & (slots - 1)
}

#[inline(always)]
fn same_key(a: &TrackKey, b: &TrackKey) -> bool {
    a.src == b.src && a.dst == b.dst && a.ports == b.ports && a.proto == b.proto
}

#[inline(always)]
fn redirect_to_next_hop() -> i32 {
    let Some(egress) = TC_EGRESS.get(0) else {
        return TC_ACT_OK as i32;
    };
    let nh = RedirectNeighbour {
        nh_family: AF_INET,
        addr: [egress.nexthop_be, 0, 0, 0],
    };
    // SAFETY: a helper call with a local of the size it is told.
    unsafe {
        bpf_redirect_neigh(
            egress.ifindex,
            (&nh as *const RedirectNeighbour).cast_mut().cast(),
            core::mem::size_of::<RedirectNeighbour>() as i32,
            0,
        ) as i32
    }
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
