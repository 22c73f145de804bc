//! Kernel programs: one entry per hook, each a thin wrapper around the parse
//! (`judge::parse_packet`) and the decision (`judge::judge`); the TC ones in three calls
//! (`tc_run`).
//!
//! Each entry is `#[inline(always)]`: aya's macro wraps it in the section's function, and a
//! body left as a call of its own is one more BPF-to-BPF frame. 6.1's verifier counts every
//! frame as at least 32 bytes, even an empty one, so that frame took `xdp_lan` over the 512-byte
//! stack limit on Debian 12's kernel.
#![no_std]
#![no_main]
// `asm!` on BPF: the verifier's bound hints in `packet` (the crate builds with nightly).
#![feature(asm_experimental_arch)]

mod acl;
mod buckets;
mod clock;
mod conntrack;
mod copy;
mod forward;
mod fragment;
mod judge;
mod lan_flow;
mod maps;
mod mss;
mod nat;
mod nat_table;
mod packet;
mod parse;
mod stats;
mod tunnel_flow;
mod turn;
mod turn_flow;
mod underlay;

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{error, info};
use gateway_common::{
    forward::{TC_PORT_LAN, TC_PORT_TUNNEL},
    settings::{FLAG_TC_FORWARD, FLAG_XDP_FORWARD},
    stats::{HOOK_LAN, HOOK_TUNNEL_EGRESS, HOOK_TUNNEL_INGRESS, reason},
};

use crate::{judge::Decision, packet::Bytes, parse::Link};

/// Bytes a TC program makes linear before parsing (headers of any chain we accept fit).
const TC_PULL_BYTES: u32 = 256;

/// Counts the decision, and logs the rare events an operator wants to read about (never
/// per-packet verdicts: those are counters).
#[inline(always)]
fn account<C: EbpfContext>(ctx: &C, hook: u32, d: &Decision, len: u64) {
    stats::count(hook, d.reason, len);
    if let Some(s) = maps::SETTINGS.get(0) {
        stats::count_rule(d.slot, s.rules_per_slot, d.rule, len);
    }
    if d.reason == reason::DROP_REVOKED {
        info!(
            ctx,
            "flow ended: the new policy no longer allows it (hook {})", hook
        );
    } else if d.reason == reason::DROP_INTERNAL {
        error!(
            ctx,
            "policy maps unreadable, packet dropped (hook {})", hook
        );
    }
}

/// LAN interfaces: replies to overlay flows and LAN-initiated traffic toward the overlay.
/// Multi-buffer frames (jumbo MTUs, GRO on some drivers) are accepted: headers are in the first
/// buffer, and lengths are checked against the whole frame.
#[xdp(frags)]
#[inline(always)]
pub fn xdp_lan(ctx: XdpContext) -> u32 {
    // A flow the full path below accepted and redirected leaves from its slot (lan_flow.rs).
    if let Some(action) = lan_flow::forward(&ctx) {
        return action;
    }
    let bytes = Bytes {
        start: ctx.data(),
        end: ctx.data_end(),
        len: ctx.data_end() - ctx.data(),
        xdp: ctx.ctx,
        skb: core::ptr::null_mut(),
    };
    let d = match judge::parse_packet(&bytes, Link::Ethernet) {
        Ok(pkt) => {
            let rw = nat::XdpRewrite::new(&ctx);
            lan_ingress(
                nat::unmasquerade(&rw, pkt, ctx.ingress_ifindex() as u32),
                pkt,
                bytes.len,
            )
        }
        Err(d) => d,
    };
    let pkt = maps::SCRATCH.get(0);
    // Counted by the frame's whole length: an IP packet's is its headers and datagram, which a
    // multi-buffer frame keeps partly outside the first buffer.
    let len = match pkt {
        // (`ip_len` is 0 unless the parse got as far as the datagram's length.)
        Some(p) if p.ip_len != 0 => {
            let ip_end = (p.l3 + p.ip_len) as usize;
            if ip_end > bytes.len {
                ip_end
            } else {
                bytes.len
            }
        }
        _ => bytes.len,
    };
    account(&ctx, HOOK_LAN, &d, len as u64);
    if !d.passes() {
        return xdp_action::XDP_DROP;
    }
    // Only traffic the policy judged is forwarded here; other traffic is the kernel's.
    let judged = d.reason == reason::ACCEPT_POLICY || d.reason == reason::ACCEPT_ESTABLISHED;
    let enabled = maps::SETTINGS
        .get(0)
        .is_some_and(|s| s.flags & FLAG_XDP_FORWARD != 0);
    if judged && enabled {
        // The parse is still in this CPU's scratch: forwarding works from it.
        match pkt.map(|pkt| forward::forward(&ctx, pkt)) {
            Some(forward::Forward::Redirect(action, route)) => {
                stats::count(HOOK_LAN, reason::XDP_FORWARDED, len as u64);
                if let Some(pkt) = pkt {
                    lan_flow::remember(&ctx, pkt, &d, &route);
                }
                return action;
            }
            Some(forward::Forward::PartialChecksum) => stats::count(
                HOOK_LAN,
                reason::KERNEL_FORWARDED_PARTIAL_CHECKSUM,
                len as u64,
            ),
            Some(forward::Forward::Kernel) => {
                stats::count(HOOK_LAN, reason::LEFT_TO_KERNEL, len as u64)
            }
            None => {}
        }
    }
    xdp_action::XDP_PASS
}

/// A LAN packet after reverse translation: judged as the flow's own packet, or dropped.
#[inline(always)]
fn lan_ingress(n: nat::Nat, pkt: &parse::Packet, len: usize) -> Decision {
    match n {
        nat::Nat::Drop(r) => judge::plain(r),
        nat::Nat::Translated => judge_lan(true, pkt, len),
        nat::Nat::Untouched => judge_lan(false, pkt, len),
    }
}

/// A LAN packet that its reverse translation passed, `translated` or untouched: counted, judged.
#[inline(always)]
fn judge_lan(translated: bool, pkt: &parse::Packet, len: usize) -> Decision {
    if translated {
        stats::count(HOOK_LAN, reason::NAT_UNMASQUERADED, len as u64);
    }
    judge::judge(pkt, HOOK_LAN)
}

/// The TC programs see skbs as the stack holds them: GSO/GRO aggregates up to 64 KiB and paged
/// buffers whose linear part ends early. Only the headers are made linear; the parser checks
/// lengths against the skb's real length.
#[inline(always)]
fn tc_bytes(ctx: &TcContext) -> Bytes {
    let len = ctx.len();
    let want = if len < TC_PULL_BYTES {
        len
    } else {
        TC_PULL_BYTES
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // If this fails, the parser reads what is linear and says which header it could not.
        let _ = ctx.pull_data(want);
    }
    Bytes {
        start: ctx.data(),
        end: ctx.data_end(),
        len: len as usize,
        xdp: core::ptr::null_mut(),
        skb: ctx.skb.skb,
    }
}

/// A TC hook's program in three BPF-to-BPF calls, each made from here: the parse (and, on a
/// LAN interface, the reverse translation), the decision, and what follows it for a packet that
/// passes. The verifier walks each from a narrow state (the packet is in this CPU's scratch; the
/// rest is a register or two) instead of walking each later step once for every way through the
/// earlier ones: inlined into one, the tunnel's ingress programs took 73% (Ethernet) and 97%
/// (L3) of the verifier's 1M-instruction limit. And the calls are siblings, so their stack
/// frames are never live together: 6.1's verifier counts a frame of at least 32 bytes for this
/// function, and one step's 488 bytes under it was over the 512-byte limit.
#[inline(always)]
fn tc_run(ctx: &TcContext, link: Link, hook: u32) -> i32 {
    if hook == HOOK_TUNNEL_INGRESS {
        let served = tunnel_flow::forward(ctx.skb.skb, link == Link::L3);
        if served != tunnel_flow::NOT_SERVED {
            return served;
        }
    }
    let parsed = tc_parse(ctx.skb.skb, link == Link::L3, hook);
    let flow = tc_judge(ctx.skb.skb, hook, parsed);
    let Some(pkt) = maps::SCRATCH.get(0) else {
        return TC_ACT_SHOT;
    };
    let decided = pkt.decided;
    if decided == SHOT {
        return TC_ACT_SHOT;
    }
    let action = tc_after_decision(ctx.skb.skb, flow, decided);
    // A call of its own beside the others (not from within the forwarding's, whose stack
    // frame and this one's would then count together against 6.1's 512 bytes).
    if hook == HOOK_TUNNEL_INGRESS && action == TC_ACT_REDIRECT as i32 {
        tunnel_flow::remember(ctx.skb.skb, flow, After::unpack(decided).sender_is_a);
    }
    action
}

/// [`tc_parse`]: the packet is decided already; the low 32 bits are the reason.
const PARSE_DECIDED: u64 = 1 << 63;
/// [`tc_parse`]: the LAN's reverse translation gave the packet its flow's original destination.
const PARSE_TRANSLATED: u64 = 1;

/// [`tc_judge`]'s decision for a packet that does not pass.
const SHOT: u64 = u64::MAX;

/// Parses the packet into this CPU's scratch and, arriving on a LAN interface, gives a packet of
/// a translated flow its original destination: [`PARSE_DECIDED`] with the reason where that
/// decides the packet (malformed, not IP, a translation's drop), else whether it was translated.
#[inline(never)]
fn tc_parse(skb: *mut aya_ebpf::bindings::__sk_buff, l3: bool, hook: u32) -> u64 {
    let ctx = &TcContext::new(skb);
    let link = if l3 { Link::L3 } else { Link::Ethernet };
    let bytes = tc_bytes(ctx);
    let pkt = match judge::parse_packet(&bytes, link) {
        Ok(pkt) => pkt,
        Err(d) => return PARSE_DECIDED | d.reason as u64,
    };
    if hook != HOOK_LAN {
        return 0;
    }
    // SAFETY: the context's own skb pointer.
    match nat::unmasquerade(&nat::TcRewrite(ctx), pkt, unsafe { (*skb).ifindex }) {
        nat::Nat::Drop(r) => PARSE_DECIDED | r as u64,
        nat::Nat::Translated => PARSE_TRANSLATED,
        nat::Nat::Untouched => 0,
    }
}

/// Judges the parsed packet and counts the decision. Leaves it in the scratch's `decided`
/// ([`SHOT`], or a passed packet's [`After`] packed) and returns its flow's conntrack entry
/// where what follows needs it (see `judge::Decision::flow`), else null.
#[inline(never)]
fn tc_judge(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    hook: u32,
    parsed: u64,
) -> *mut gateway_common::conntrack::CtEntry {
    let ctx = &TcContext::new(skb);
    let len = ctx.len() as usize;
    let Some(pkt) = maps::SCRATCH.get_ptr_mut(0) else {
        return core::ptr::null_mut();
    };
    // SAFETY: per-CPU scratch, used by one program run at a time on this CPU.
    let pkt = unsafe { &mut *pkt };
    // (Not through `lan_ingress`: a `Nat` made here has an unused payload, which, spilled
    // across a helper call, is a read of an uninitialised register to the verifier.)
    let d = if parsed & PARSE_DECIDED != 0 {
        judge::plain(parsed as u32)
    } else if hook == HOOK_LAN {
        judge_lan(parsed == PARSE_TRANSLATED, pkt, len)
    } else {
        judge::judge(pkt, hook)
    };
    account(ctx, hook, &d, len as u64);
    if !d.passes() {
        pkt.decided = SHOT;
        return core::ptr::null_mut();
    }
    // Only the masquerade on the tunnel's way out uses the flow: elsewhere it stays null, so
    // the verifier has fewer distinct states to walk what follows from.
    let masquerading = hook == HOOK_TUNNEL_INGRESS;
    pkt.decided = After {
        hook,
        judged: d.reason == reason::ACCEPT_POLICY || d.reason == reason::ACCEPT_ESTABLISHED,
        sender_is_a: masquerading && d.sender_is_a,
    }
    .pack();
    if masquerading {
        d.flow
    } else {
        core::ptr::null_mut()
    }
}

/// What [`tc_after_decision`] needs of the decision, packed into one register. (Not the
/// packet's length: read again from the skb, so the call's arguments are constants whatever
/// bounds the decision's paths learnt about it.)
struct After {
    hook: u32,
    judged: bool,
    sender_is_a: bool,
}

impl After {
    #[inline(always)]
    fn pack(&self) -> u64 {
        ((self.hook as u64 & 0xff) << 8) | ((self.judged as u64) << 1) | self.sender_is_a as u64
    }

    #[inline(always)]
    fn unpack(v: u64) -> After {
        After {
            hook: ((v >> 8) & 0xff) as u32,
            judged: v & 2 != 0,
            sender_is_a: v & 1 != 0,
        }
    }
}

/// A passed packet's MSS clamp and TC forwarding (with the masquerade on the way).
#[inline(never)]
fn tc_after_decision(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    flow: *mut gateway_common::conntrack::CtEntry,
    packed: u64,
) -> i32 {
    let ctx = &TcContext::new(skb);
    let After {
        hook,
        judged,
        sender_is_a,
    } = After::unpack(packed);
    let len = ctx.len() as usize;
    let Some(pkt) = maps::SCRATCH.get(0) else {
        return TC_ACT_OK;
    };
    if hook != HOOK_LAN {
        match mss::clamp(ctx, pkt) {
            mss::Clamp::Lowered => stats::count(hook, reason::MSS_CLAMPED, len as u64),
            mss::Clamp::Failed => stats::count(hook, reason::MSS_NOT_CLAMPED, len as u64),
            mss::Clamp::Untouched => {}
        }
    }
    // Tunnel → LAN and, from a LAN interface attached at TC, LAN → tunnel: forwarded here when
    // enabled (`tunnel_forward: tc`), the rest by the kernel.
    if hook != HOOK_TUNNEL_INGRESS && hook != HOOK_LAN {
        return TC_ACT_OK;
    }
    let Some(settings) = maps::SETTINGS.get(0) else {
        return TC_ACT_OK;
    };
    if !judged || settings.flags & FLAG_TC_FORWARD == 0 {
        return TC_ACT_OK;
    }
    let forwarded = if hook == HOOK_TUNNEL_INGRESS {
        // Tunnel traffic leaving a masquerading LAN interface is translated here, on its way
        // out, rather than by that interface's egress program: one parse and one program run
        // fewer.
        forward::tc_forward(
            ctx,
            pkt,
            TC_PORT_LAN,
            &MasqueradeOnTheWay {
                ctx,
                pkt,
                settings,
                len,
                flow,
                sender_is_a,
            },
        )
    } else {
        forward::tc_forward(ctx, pkt, TC_PORT_TUNNEL, &forward::NoTranslation)
    };
    match forwarded {
        forward::TcForward::Redirected => {
            stats::count(hook, reason::TC_FORWARDED, len as u64);
            TC_ACT_REDIRECT as i32
        }
        forward::TcForward::Dropped(r) => {
            // The masquerade's drops are the LAN interface's, as its egress program counts
            // them; a redirect that failed is this hook's.
            let at = if r == reason::DROP_INTERNAL {
                hook
            } else {
                HOOK_LAN
            };
            stats::count(at, r, len as u64);
            TC_ACT_SHOT
        }
        forward::TcForward::Kernel => {
            stats::count(hook, reason::LEFT_TO_KERNEL, len as u64);
            TC_ACT_OK
        }
    }
}

/// The masquerade of tunnel traffic that TC forwarding sends out of a LAN interface.
struct MasqueradeOnTheWay<'a> {
    ctx: &'a TcContext,
    pkt: &'a parse::Packet,
    settings: &'a gateway_common::settings::Settings,
    len: usize,
    /// The flow's conntrack entry (see `judge::Decision::flow`).
    flow: *mut gateway_common::conntrack::CtEntry,
    sender_is_a: bool,
}

impl forward::Translate for MasqueradeOnTheWay<'_> {
    #[inline(always)]
    fn translate(&self, egress: u32) -> Result<bool, u32> {
        match nat::masquerade(
            &nat::TcRewrite(self.ctx),
            self.pkt,
            egress,
            self.settings,
            self.flow,
            self.sender_is_a,
        ) {
            nat::Nat::Translated => {
                stats::count(HOOK_LAN, reason::NAT_MASQUERADED, self.len as u64);
                Ok(true)
            }
            nat::Nat::Drop(r) => Err(r),
            nat::Nat::Untouched => Ok(false),
        }
    }
}

/// LAN interfaces whose driver has no native XDP, when configured (`attach: tc`): same logic.
#[classifier]
#[inline(always)]
pub fn tc_lan_ingress(ctx: TcContext) -> i32 {
    tc_run(&ctx, Link::Ethernet, HOOK_LAN)
}

/// LAN interfaces that masquerade: traffic leaving toward a masqueraded network gets the
/// interface's address as source. Judged already (at the tunnel); nothing else is touched.
#[classifier]
#[inline(always)]
pub fn tc_lan_egress(ctx: TcContext) -> i32 {
    // SAFETY: the context's own skb pointer.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // What the tunnel's TC forwarding translated on its way here: passed on a look at its
    // first headers, without the full parse.
    if nat::leaves_translated(&ctx, ifindex) {
        return TC_ACT_OK;
    }
    let bytes = tc_bytes(&ctx);
    let (Ok(pkt), Some(settings)) = (
        judge::parse_packet(&bytes, Link::Ethernet),
        maps::SETTINGS.get(0),
    ) else {
        return TC_ACT_OK;
    };
    // No conntrack entry at hand here (this hook does not judge): the tables decide.
    match nat::masquerade(
        &nat::TcRewrite(&ctx),
        pkt,
        ifindex,
        settings,
        core::ptr::null_mut(),
        false,
    ) {
        nat::Nat::Translated => {
            stats::count(HOOK_LAN, reason::NAT_MASQUERADED, bytes.len as u64);
            TC_ACT_OK
        }
        nat::Nat::Drop(r) => {
            stats::count(HOOK_LAN, r, bytes.len as u64);
            TC_ACT_SHOT
        }
        nat::Nat::Untouched => TC_ACT_OK,
    }
}

/// The underlay interface in front of the gateway's WireGuard port: only well-formed WireGuard
/// messages reach it, handshake initiations at bounded rates.
#[xdp(frags)]
#[inline(always)]
pub fn xdp_wg_underlay(ctx: XdpContext) -> u32 {
    let bytes = Bytes {
        start: ctx.data(),
        end: ctx.data_end(),
        len: ctx.data_end() - ctx.data(),
        xdp: ctx.ctx,
        skb: core::ptr::null_mut(),
    };
    let r = underlay::filter(&bytes);
    underlay::count(r, 1, bytes.len as u64);
    if gateway_common::underlay::drops(r) {
        return xdp_action::XDP_DROP;
    }
    // What passes goes on to the program that shares this interface (a TURN relay's), when one
    // is in the slot; an empty slot makes the call fail and the frame passes.
    // SAFETY: a tail call; nothing of this program runs after it succeeds.
    unsafe { maps::XDP_NEXT.tail_call(&ctx, gateway_common::maps::XDP_NEXT_SLOT) };
    xdp_action::XDP_PASS
}

/// The underlay filter at TC ingress, where XDP would cost more than it saves: on a veth, an
/// XDP program switches off its peer's segmentation offload (UDP GSO, which wireguard-go
/// uses). GSO/GRO aggregates are judged datagram by datagram.
#[classifier]
#[inline(always)]
pub fn tc_wg_underlay(ctx: TcContext) -> i32 {
    let bytes = tc_bytes(&ctx);
    // SAFETY: the context's own skb.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    let (r, datagrams) = underlay::filter_skb(&bytes, ctx.skb.skb, gso_size);
    underlay::count(r, datagrams, bytes.len as u64);
    if gateway_common::underlay::drops(r) {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

/// The TURN relay's interfaces: bound channels forwarded in the kernel. Frags-aware, as the
/// underlay filter is, so it can run in the filter's slot (a tail call needs both programs
/// alike); a datagram not whole in the first buffer goes to userspace.
#[xdp(frags)]
#[inline(always)]
pub fn xdp_turn(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, why) = turn::relay(&ctx);
    if let Some(c) = maps::TURN_REASONS.get_ptr_mut(why) {
        // SAFETY: this CPU's own counter.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += len;
    }
    action
}

/// Tunnel interface with an Ethernet header (veth in labs), traffic from peers.
#[classifier]
#[inline(always)]
pub fn tc_tunnel_ingress_eth(ctx: TcContext) -> i32 {
    tc_run(&ctx, Link::Ethernet, HOOK_TUNNEL_INGRESS)
}

#[classifier]
#[inline(always)]
pub fn tc_tunnel_egress_eth(ctx: TcContext) -> i32 {
    tc_run(&ctx, Link::Ethernet, HOOK_TUNNEL_EGRESS)
}

/// Tunnel interface without a link header (wg0, boringtun's TUN).
#[classifier]
#[inline(always)]
pub fn tc_tunnel_ingress_l3(ctx: TcContext) -> i32 {
    tc_run(&ctx, Link::L3, HOOK_TUNNEL_INGRESS)
}

#[classifier]
#[inline(always)]
pub fn tc_tunnel_egress_l3(ctx: TcContext) -> i32 {
    tc_run(&ctx, Link::L3, HOOK_TUNNEL_EGRESS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
