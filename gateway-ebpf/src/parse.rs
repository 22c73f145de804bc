//! Header walk: Ethernet, up to two VLAN tags, IPv4 (with options) or IPv6 (with a bounded walk
//! over extension headers), then TCP, UDP, ICMP or ICMPv6. Anything malformed or truncated is an
//! error carrying the drop reason: the caller fails closed.

use gateway_common::{
    conntrack::{FAMILY_V4, FAMILY_V6},
    stats::reason,
};

use crate::packet::Bytes;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// No link header: the first byte is the IP version (WireGuard and TUN devices).
    L3,
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IGMP: u8 = 2;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const MAX_VLAN_TAGS: usize = 2;
/// Extension headers a packet may carry; one more fails closed.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// No legitimate header chain reaches this far; keeps every offset bounded for the verifier.
const MAX_L4_OFFSET: usize = 512;

pub const FRAG_NONE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;

pub const ICMP_NONE: u8 = 0;
pub const ICMP_ECHO: u8 = 1;
pub const ICMP_ERROR: u8 = 2;
/// ICMP that is neither echo nor an error: not a flow, judged by the policy message by message.
pub const ICMP_OTHER: u8 = 3;
/// IPv6 neighbour discovery (router/neighbour solicitation and advertisement) on an Ethernet
/// link, from the link itself (hop limit 255, RFC 4861) and to a link-local or link-scope
/// multicast address, or to a unicast address the kernel would not forward it from (the
/// host's own): the IPv6 counterpart of ARP. Anywhere else it is [`ICMP_OTHER`]. The other
/// link control passes under the same name: MLD ([`ICMP_MULTICAST_LISTENER`]) and its IPv4
/// counterpart IGMP (see `parse_ipv4`), though IGMP is not ICMP.
pub const ICMP_NEIGHBOR_DISCOVERY: u8 = 4;
/// Only inside the parse: an MLD message (multicast listener query, report or done; RFC 2710,
/// RFC 3810), which ends up as [`ICMP_NEIGHBOR_DISCOVERY`] when it is link control like ND:
/// on an Ethernet link, hop limit 1 (the kernel forwards none), from a link-local or the
/// unspecified address (RFC 3810 5.2.13), to a link-scope multicast address. Every IPv6 host
/// sends reports for its solicited-node groups when an interface comes up. Anywhere else it is
/// [`ICMP_OTHER`].
const ICMP_MULTICAST_LISTENER: u8 = 5;

/// Which end of an ICMP echo exchange sent the packet ([`Flow::echo`]).
pub const ECHO_NONE: u8 = 0;
pub const ECHO_FROM_REQUESTER: u8 = 1;
pub const ECHO_FROM_RESPONDER: u8 = 2;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The tuple policy and conntrack look at. For ICMP echo both ports hold the echo identifier
/// and `echo` says whether the sender asked or answered, so a request and its reply map to one
/// flow and a request in the other direction to another.
///
/// The addresses come first and the struct is 8-aligned, so that copying or clearing an address
/// compiles to word moves: at alignment 1 the compiler calls `memcpy`/`memset`, which in BPF
/// move one byte per loop turn.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub echo: u8,
}

impl Flow {
    #[inline(always)]
    pub fn reversed(&self) -> Flow {
        let echo = match self.echo {
            ECHO_FROM_REQUESTER => ECHO_FROM_RESPONDER,
            ECHO_FROM_RESPONDER => ECHO_FROM_REQUESTER,
            _ => ECHO_NONE,
        };
        Flow {
            family: self.family,
            proto: self.proto,
            echo,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

#[repr(C)]
pub struct Packet {
    pub flow: Flow,
    pub tcp_flags: u8,
    pub frag: u8,
    /// IPv4's type-of-service byte or IPv6's traffic class, without the ECN bits, which the FIB
    /// ignores: the forwarding paths' FIB lookups pass it (rules may route by DSCP), and their
    /// route caches key by it (ECN bits that change within a flow, a congestion mark, must not
    /// make a cached route miss).
    pub tos: u8,
    pub frag_id: u32,
    pub icmp: u8,
    /// For ICMP errors: the flow of the packet the error quotes.
    pub quoted: Flow,
    /// Where the IP header starts, and the IP datagram's length (header included): the
    /// forwarding path works from these instead of parsing the headers again.
    pub l3: u32,
    pub ip_len: u32,
    /// Where the TCP/UDP/ICMP header starts (0 when the parse did not get there).
    pub l4: u32,
    /// For ICMP errors: where the quoted packet's IP header and its transport header start.
    pub quoted_l3: u32,
    pub quoted_l4: u32,
    /// The clock for this packet ([`Packet::now`]); 0 until something asks for it.
    pub clock: core::cell::Cell<u64>,
    /// A TC program's decision, handed from its judging step to what follows (main.rs,
    /// `tc_run`): written by every run before it is read.
    pub decided: u64,
}

// SAFETY: a `Packet` lives in a per-CPU scratch map and is used by one program run at a time on
// its CPU (XDP and TC runs do not nest), so its clock cell is never shared between threads.
unsafe impl Sync for Packet {}

impl Packet {
    /// The coarse monotonic clock, read at most once per packet: conntrack, the masquerade and
    /// the route caches all ask for it, and each read is a helper call (about 13 ns in this VM).
    /// A packet that no stateful path asks about never pays for it.
    #[inline(always)]
    pub fn now(&self) -> u64 {
        let t = self.clock.get();
        if t != 0 {
            return t;
        }
        let t = crate::conntrack::now_ns();
        self.clock.set(t);
        t
    }
}

pub enum Parsed {
    NonIp,
    Ip,
}

/// Parses the packet into `pkt` (which lives in a per-CPU scratch map: the BPF stack is only
/// 512 bytes).
#[inline(always)]
pub fn parse(b: &Bytes, link: Link, pkt: &mut Packet) -> Result<Parsed, u32> {
    // Read by the accounting whatever happens below: never a length from an earlier packet.
    pkt.ip_len = 0;
    pkt.clock.set(0);
    pkt.l3 = 0;
    pkt.l4 = 0;
    let (l3, is_v6) = match link {
        Link::Ethernet => {
            let mut ethertype = b.be16_at(12)?;
            let mut off = 14usize;
            let mut tags = 0;
            while tags < MAX_VLAN_TAGS {
                if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
                    break;
                }
                ethertype = b.be16_at(off + 2)?;
                off += 4;
                tags += 1;
            }
            match ethertype {
                ETH_P_IP => (off, false),
                ETH_P_IPV6 => (off, true),
                ETH_P_8021Q | ETH_P_8021AD => return Err(reason::DROP_VLAN_DEPTH),
                _ => return Ok(Parsed::NonIp),
            }
        }
        Link::L3 => match b.u8_at(0)? >> 4 {
            4 => (0, false),
            6 => (0, true),
            _ => return Err(reason::DROP_BAD_HEADER),
        },
    };
    pkt.tcp_flags = 0;
    pkt.frag = FRAG_NONE;
    pkt.tos = 0;
    pkt.frag_id = 0;
    pkt.icmp = ICMP_NONE;
    pkt.flow.sport = 0;
    pkt.flow.dport = 0;
    pkt.flow.echo = ECHO_NONE;
    pkt.l3 = l3 as u32;
    if is_v6 {
        parse_ipv6(b, l3, link, pkt)?
    } else {
        parse_ipv4(b, l3, link, pkt)?
    };
    Ok(Parsed::Ip)
}

#[inline(always)]
fn parse_ipv4(b: &Bytes, l3: usize, link: Link, pkt: &mut Packet) -> Result<(), u32> {
    let h = b.array::<20>(l3)?;
    if h[0] >> 4 != 4 {
        return Err(reason::DROP_BAD_HEADER);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let mut total = u16::from_be_bytes([h[2], h[3]]) as usize;
    if total == 0 && b.len > l3 + 0xffff {
        // A BIG TCP aggregate: more than 64 KiB, so the length lives in the skb alone.
        total = b.len - l3;
    }
    if ihl < 20 || total < ihl {
        return Err(reason::DROP_BAD_HEADER);
    }
    if !b.has(l3, total) {
        return Err(reason::DROP_TRUNCATED);
    }
    pkt.ip_len = total as u32;
    let frag_field = u16::from_be_bytes([h[6], h[7]]);
    let more_fragments = frag_field & 0x2000 != 0;
    let frag_offset = (frag_field & 0x1fff) as usize * 8;
    pkt.flow.family = FAMILY_V4;
    pkt.flow.proto = h[9];
    pkt.tos = h[1] & 0xfc;
    pkt.flow.src = v4_address([h[12], h[13], h[14], h[15]]);
    pkt.flow.dst = v4_address([h[16], h[17], h[18], h[19]]);
    pkt.frag_id = u16::from_be_bytes([h[4], h[5]]) as u32;
    let l4 = l3 + ihl;
    let l4_len = total - ihl;
    if frag_offset != 0 {
        pkt.frag = FRAG_LATER;
        return check_later_fragment(pkt, frag_offset);
    }
    if more_fragments {
        pkt.frag = FRAG_FIRST;
    }
    parse_l4(b, pkt, l4, l4_len)?;
    // IGMP (membership queries, reports and leaves; RFC 2236, RFC 3376) is IPv4's MLD: the
    // link's control traffic when it stays on an Ethernet link (TTL 1: the kernel forwards
    // none) to a multicast address, whole (an IGMP message is at least 8 bytes). Any host
    // whose applications join a group (mDNS, SSDP) reports it. Anywhere else, the policy's.
    if pkt.flow.proto == PROTO_IGMP
        && link == Link::Ethernet
        && h[8] == 1
        && pkt.frag == FRAG_NONE
        && l4_len >= 8
        && h[16] & 0xf0 == 0xe0
    {
        pkt.icmp = ICMP_NEIGHBOR_DISCOVERY;
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(b: &Bytes, l3: usize, link: Link, pkt: &mut Packet) -> Result<(), u32> {
    let h = b.array::<8>(l3)?;
    if h[0] >> 4 != 6 {
        return Err(reason::DROP_BAD_HEADER);
    }
    // The traffic class's DSCP bits, as IPv4's TOS above.
    pkt.tos = ((h[0] << 4) | (h[1] >> 4)) & 0xfc;
    let mut payload = u16::from_be_bytes([h[4], h[5]]) as usize;
    if payload == 0 {
        // An empty payload is malformed, unless this is a BIG TCP aggregate (over 64 KiB, the
        // length in the skb alone).
        if b.len <= l3 + 40 + 0xffff {
            return Err(reason::DROP_BAD_HEADER);
        }
        payload = b.len - l3 - 40;
    }
    if !b.has(l3 + 40, payload) {
        return Err(reason::DROP_TRUNCATED);
    }
    pkt.ip_len = (40 + payload) as u32;
    pkt.flow.family = FAMILY_V6;
    pkt.flow.src = b.address(l3 + 8)?;
    pkt.flow.dst = b.address(l3 + 24)?;
    let l3_end = l3 + 40 + payload;
    let mut next = h[6];
    let mut off = l3 + 40;
    let mut seen_fragment = false;
    let mut walked = 0;
    loop {
        // `walked` headers are behind us: a chain of exactly the maximum still reaches its L4.
        if walked > MAX_IPV6_EXT_HEADERS {
            return Err(reason::DROP_EXT_LIMIT);
        }
        match next {
            0 | 43 | 60 => {
                if next == 0 && walked != 0 {
                    // Hop-by-hop options must follow the IPv6 header directly.
                    return Err(reason::DROP_BAD_HEADER);
                }
                let e = b.array::<2>(off)?;
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            51 => {
                let e = b.array::<2>(off)?;
                next = e[0];
                off += (e[1] as usize + 2) * 4;
            }
            44 => {
                if seen_fragment {
                    return Err(reason::DROP_BAD_HEADER);
                }
                seen_fragment = true;
                let f = b.array::<8>(off)?;
                next = f[0];
                off += 8;
                let field = u16::from_be_bytes([f[2], f[3]]);
                let frag_offset = (field >> 3) as usize * 8;
                let more = field & 1 != 0;
                pkt.frag_id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                if frag_offset != 0 {
                    pkt.frag = FRAG_LATER;
                    pkt.flow.proto = next;
                    return check_later_fragment(pkt, frag_offset);
                }
                if more {
                    pkt.frag = FRAG_FIRST;
                }
            }
            // Mobility, HIP, Shim6 and the experimental values: headers we cannot judge.
            135 | 139 | 140 | 253 | 254 => return Err(reason::DROP_EXT_UNKNOWN),
            _ => break,
        }
        if off > MAX_L4_OFFSET {
            return Err(reason::DROP_EXT_LIMIT);
        }
        if off > l3_end {
            return Err(reason::DROP_BAD_HEADER);
        }
        walked += 1;
    }
    pkt.flow.proto = next;
    parse_l4(b, pkt, off, l3_end - off)?;
    if pkt.icmp == ICMP_NEIGHBOR_DISCOVERY
        && (link != Link::Ethernet
            || h[7] != 255
            || pkt.frag != FRAG_NONE
            || !(link_scope_v6(&pkt.flow.dst) || stays_on_host(b, pkt)))
    {
        pkt.icmp = ICMP_OTHER;
    }
    if pkt.icmp == ICMP_MULTICAST_LISTENER {
        let src = &pkt.flow.src;
        let link_control = link == Link::Ethernet
            && h[7] == 1
            && pkt.frag == FRAG_NONE
            && link_multicast_v6(&pkt.flow.dst)
            && (link_local_v6(src) || *src == [0; 16]);
        pkt.icmp = if link_control {
            ICMP_NEIGHBOR_DISCOVERY
        } else {
            ICMP_OTHER
        };
    }
    Ok(())
}

/// Whether the kernel would keep `pkt` (IPv6) on this host rather than forward it: its route
/// is local (or there is none, forwarding is off, or the source is link-local, which is never
/// forwarded), as the FIB answers for the arrival interface. Neighbour discovery addressed to a
/// unicast address (unreachability probes, solicited advertisements answering a global source)
/// is the host's own business only then; anything the kernel would forward meets the policy.
#[inline(always)]
fn stays_on_host(b: &Bytes, pkt: &Packet) -> bool {
    use aya_ebpf::{
        bindings::{BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NOT_FWDED, bpf_fib_lookup},
        helpers::generated::bpf_fib_lookup as fib_lookup,
    };
    // SAFETY: each pointer is null or the program's own context.
    let (ctx, ifindex): (*mut core::ffi::c_void, u32) = unsafe {
        if !b.xdp.is_null() {
            (b.xdp.cast(), (*b.xdp).ingress_ifindex)
        } else if !b.skb.is_null() {
            (b.skb.cast(), (*b.skb).ifindex)
        } else {
            return false;
        }
    };
    let mut fib = crate::forward::fib_params(ifindex, pkt, pkt.ip_len);
    // SAFETY: plain helper call on the program's context with a properly sized parameter block.
    let rc = unsafe {
        fib_lookup(
            ctx,
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 || rc == BPF_FIB_LKUP_RET_FWD_DISABLED as i64
}

/// fe80::/10 (link-local unicast) or ff02::/16 (link-scope multicast): where neighbour
/// discovery is addressed.
#[inline(always)]
fn link_scope_v6(a: &[u8; 16]) -> bool {
    link_local_v6(a) || link_multicast_v6(a)
}

/// fe80::/10.
#[inline(always)]
fn link_local_v6(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

/// ff02::/16.
#[inline(always)]
fn link_multicast_v6(a: &[u8; 16]) -> bool {
    a[0] == 0xff && a[1] == 0x02
}

/// A later fragment has no L4 header; one that would overlap the first fragment's L4 header
/// (the "tiny fragment" rewrite of ports, RFC 1858) is dropped.
#[inline(always)]
fn check_later_fragment(pkt: &Packet, frag_offset: usize) -> Result<(), u32> {
    if frag_offset < min_l4_header(pkt.flow.proto) {
        return Err(reason::DROP_FRAG_TINY);
    }
    Ok(())
}

#[inline(always)]
fn min_l4_header(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 20,
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => 8,
        _ => 0,
    }
}

#[inline(always)]
fn parse_l4(b: &Bytes, pkt: &mut Packet, l4: usize, l4_len: usize) -> Result<(), u32> {
    let need = min_l4_header(pkt.flow.proto);
    if l4_len < need {
        return Err(if pkt.frag == FRAG_FIRST {
            reason::DROP_FRAG_TINY
        } else {
            reason::DROP_TRUNCATED
        });
    }
    pkt.l4 = l4 as u32;
    match pkt.flow.proto {
        PROTO_TCP => {
            let t = b.array::<14>(l4)?;
            if t[12] >> 4 < 5 {
                return Err(reason::DROP_BAD_HEADER);
            }
            pkt.flow.sport = u16::from_be_bytes([t[0], t[1]]);
            pkt.flow.dport = u16::from_be_bytes([t[2], t[3]]);
            pkt.tcp_flags = t[13];
        }
        PROTO_UDP => {
            let u = b.array::<4>(l4)?;
            pkt.flow.sport = u16::from_be_bytes([u[0], u[1]]);
            pkt.flow.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => parse_icmp(b, pkt, l4)?,
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn parse_icmp(b: &Bytes, pkt: &mut Packet, l4: usize) -> Result<(), u32> {
    let c = b.array::<8>(l4)?;
    let v6 = pkt.flow.proto == PROTO_ICMPV6;
    let is_error = if v6 {
        c[0] >= 1 && c[0] <= 4
    } else {
        c[0] == 3 || c[0] == 11 || c[0] == 12
    };
    let echo = echo_role(c[0], v6);
    if echo != ECHO_NONE {
        let id = u16::from_be_bytes([c[4], c[5]]);
        pkt.icmp = ICMP_ECHO;
        pkt.flow.sport = id;
        pkt.flow.dport = id;
        pkt.flow.echo = echo;
    } else if v6 && (133..=136).contains(&c[0]) {
        pkt.icmp = ICMP_NEIGHBOR_DISCOVERY;
    } else if v6 && matches!(c[0], 130 | 131 | 132 | 143) {
        pkt.icmp = ICMP_MULTICAST_LISTENER;
    } else if is_error {
        pkt.icmp = ICMP_ERROR;
        pkt.quoted_l3 = (l4 + 8) as u32;
        pkt.quoted_l4 = if v6 {
            quoted_ipv6(b, l4 + 8, &mut pkt.quoted)?
        } else {
            quoted_ipv4(b, l4 + 8, &mut pkt.quoted)?
        } as u32;
    } else {
        pkt.icmp = ICMP_OTHER;
    }
    Ok(())
}

/// An echo request comes from the requester, a reply from the responder; anything else is not
/// echo.
#[inline(always)]
fn echo_role(icmp_type: u8, v6: bool) -> u8 {
    let (request, reply) = if v6 { (128, 129) } else { (8, 0) };
    if icmp_type == request {
        ECHO_FROM_REQUESTER
    } else if icmp_type == reply {
        ECHO_FROM_RESPONDER
    } else {
        ECHO_NONE
    }
}

/// The flow of the IPv4 packet an ICMP error quotes (its header and first 8 payload bytes);
/// returns where its transport header starts.
#[inline(always)]
fn quoted_ipv4(b: &Bytes, at: usize, flow: &mut Flow) -> Result<usize, u32> {
    let h = b.array::<20>(at)?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(reason::DROP_BAD_HEADER);
    }
    flow.family = FAMILY_V4;
    flow.proto = h[9];
    flow.src = v4_address([h[12], h[13], h[14], h[15]]);
    flow.dst = v4_address([h[16], h[17], h[18], h[19]]);
    quoted_ports(b, flow, at + ihl)?;
    Ok(at + ihl)
}

#[inline(always)]
fn quoted_ipv6(b: &Bytes, at: usize, flow: &mut Flow) -> Result<usize, u32> {
    let h = b.array::<8>(at)?;
    if h[0] >> 4 != 6 {
        return Err(reason::DROP_BAD_HEADER);
    }
    flow.family = FAMILY_V6;
    flow.proto = h[6];
    flow.src = b.address(at + 8)?;
    flow.dst = b.address(at + 24)?;
    quoted_ports(b, flow, at + 40)?;
    Ok(at + 40)
}

#[inline(always)]
fn quoted_ports(b: &Bytes, flow: &mut Flow, at: usize) -> Result<(), u32> {
    let p = b.array::<8>(at)?;
    // Every field is written: `flow` lives in per-CPU scratch and still holds the last packet's.
    flow.sport = 0;
    flow.dport = 0;
    flow.echo = ECHO_NONE;
    match flow.proto {
        PROTO_TCP | PROTO_UDP => {
            flow.sport = u16::from_be_bytes([p[0], p[1]]);
            flow.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            flow.echo = echo_role(p[0], flow.proto == PROTO_ICMPV6);
            if flow.echo != ECHO_NONE {
                let id = u16::from_be_bytes([p[4], p[5]]);
                flow.sport = id;
                flow.dport = id;
            }
        }
        _ => {}
    }
    Ok(())
}

/// An IPv4 address in a 16-byte address field (the rest zero), built as words so that it is
/// stored with word moves rather than a byte-at-a-time `memset` of the zeros.
#[inline(always)]
pub fn v4_address(a: [u8; 4]) -> [u8; 16] {
    let words = [u32::from_ne_bytes(a), 0, 0, 0];
    // SAFETY: [u32; 4] and [u8; 16] have the same size, and every bit pattern is a valid [u8; 16].
    unsafe { core::mem::transmute(words) }
}
