//! XDP forwarding for accepted traffic between LAN interfaces: the kernel's FIB picks the egress
//! interface and neighbour (cached per destination for a second: the lookup costs more than
//! the whole policy decision), this rewrites the Ethernet header, decrements TTL / hop limit
//! and redirects. Routing is by destination only on this path. Anything it cannot finish (no route or neighbour yet, TTL about to expire, VLAN
//! tags, an egress interface not enabled for it) goes to the kernel stack unchanged.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};

use gateway_common::forward::{FIB_CACHE_NS, FibKey, FibRoute};

use crate::{conntrack, maps};

const ETH_LEN: usize = 14;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Forwards the frame if it can; `None` means "let the kernel have it".
#[inline(always)]
pub fn try_forward(ctx: &XdpContext) -> Option<u32> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_LEN + 40 > end {
        return None;
    }
    // SAFETY: reads and writes below stay inside [start, start + 54), checked above.
    unsafe {
        let ethertype = u16::from_be(core::ptr::read_unaligned((start + 12) as *const u16));
        let ip = start + ETH_LEN;
        // SAFETY: an all-zero bpf_fib_lookup is a valid value of this plain C struct.
        let mut fib: FibParams = core::mem::zeroed();
        fib.ifindex = ctx.ingress_ifindex() as u32;
        match ethertype {
            0x0800 => {
                if *((ip + 8) as *const u8) <= 1 {
                    return None;
                }
                fib.family = AF_INET;
                fib.l4_protocol = *((ip + 9) as *const u8);
                fib.__bindgen_anon_1.tot_len = u16::from_be(core::ptr::read_unaligned((ip + 2) as *const u16));
                fib.__bindgen_anon_2.tos = *((ip + 1) as *const u8);
                fib.__bindgen_anon_3.ipv4_src = core::ptr::read_unaligned((ip + 12) as *const u32);
                fib.__bindgen_anon_4.ipv4_dst = core::ptr::read_unaligned((ip + 16) as *const u32);
            }
            0x86DD => {
                if *((ip + 7) as *const u8) <= 1 {
                    return None;
                }
                fib.family = AF_INET6;
                fib.l4_protocol = *((ip + 6) as *const u8);
                fib.__bindgen_anon_1.tot_len = u16::from_be(core::ptr::read_unaligned((ip + 4) as *const u16)) + 40;
                fib.__bindgen_anon_3.ipv6_src = core::ptr::read_unaligned((ip + 8) as *const [u32; 4]);
                fib.__bindgen_anon_4.ipv6_dst = core::ptr::read_unaligned((ip + 24) as *const [u32; 4]);
            }
            _ => return None,
        }
        let v4 = ethertype == 0x0800;
        let tot_len = fib.__bindgen_anon_1.tot_len;
        let mut key = FibKey { ifindex: fib.ifindex, family: fib.family as u32, dst: [0; 16] };
        key.dst = if v4 {
            let mut d = [0u8; 16];
            d[..4].copy_from_slice(&core::ptr::read_unaligned((ip + 16) as *const [u8; 4]));
            d
        } else {
            core::ptr::read_unaligned((ip + 24) as *const [u8; 16])
        };
        let now = conntrack::now_ns();
        let route = match maps::FIB_CACHE.get(&key) {
            // A route seen for this destination within the last second, for a packet at least
            // this long (the FIB lookup also checks the MTU).
            Some(r) if now < r.expires_ns && tot_len <= r.max_len => *r,
            _ => {
                let rc = bpf_fib_lookup(ctx.ctx.cast(), &mut fib, size_of::<FibParams>() as i32, 0);
                if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
                    return None;
                }
                maps::FORWARD_PORTS.get(fib.ifindex)?;
                let r = FibRoute { expires_ns: now + FIB_CACHE_NS, egress: fib.ifindex, max_len: tot_len, _pad: 0, dmac: fib.dmac, smac: fib.smac, _pad2: [0; 4] };
                let _ = maps::FIB_CACHE.insert(&key, &r, 0);
                r
            }
        };
        if ethertype == 0x0800 {
            decrement_ipv4_ttl(ip);
        } else {
            *((ip + 7) as *mut u8) -= 1;
        }
        core::ptr::write_unaligned(start as *mut [u8; 6], route.dmac);
        core::ptr::write_unaligned((start + 6) as *mut [u8; 6], route.smac);
        Some(match maps::FORWARD_PORTS.redirect(route.egress, 0) {
            Ok(action) | Err(action) => action,
        })
    }
}

/// TTL minus one with the incremental checksum update of RFC 1624 (as the kernel's
/// ip_decrease_ttl does).
///
/// # Safety
/// `ip` must point at a whole IPv4 header inside the packet.
#[inline(always)]
unsafe fn decrement_ipv4_ttl(ip: usize) {
    // SAFETY: the caller guarantees the header is there.
    unsafe {
        let csum_ptr = (ip + 10) as *mut u16;
        let mut check = u16::from_be(core::ptr::read_unaligned(csum_ptr)) as u32;
        check += 0x0100;
        check = (check & 0xffff) + (check >> 16);
        core::ptr::write_unaligned(csum_ptr, (check as u16).to_be());
        *((ip + 8) as *mut u8) -= 1;
    }
}
