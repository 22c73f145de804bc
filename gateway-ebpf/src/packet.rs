//! Bounds-checked reads from packet memory, the one place that touches raw packet pointers.
//!
//! A packet is longer than the bytes a program can read directly: a GSO/GRO aggregate or a paged
//! skb keeps most of its payload outside the linear area, and a multi-buffer XDP frame keeps it
//! in fragments. Headers are read from the linear area (the TC programs make them linear
//! first); lengths are checked against the packet's real length.

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    helpers::generated::bpf_xdp_get_buff_len,
};
use gateway_common::stats::reason;

/// The furthest offset a header read starts at (headers lie in the first few hundred bytes).
pub const MAX_OFFSET: usize = 0x7fff;

/// `v & MASK`, in assembly the compiler cannot drop as redundant: a bound restated where the
/// verifier sees it, right before pointer arithmetic, for a value the caller knows is within
/// `MASK` already. One instruction. Older verifiers (Debian 12's 6.1) lose bounds that 6.18's
/// keeps: on a copy the compiler spilled to the stack and reloaded, and after a byte swap; they
/// then refuse the arithmetic as possibly beyond 64 KiB.
#[inline(always)]
fn masked_for_verifier<const MASK: usize>(v: usize) -> usize {
    let mut v = v;
    // SAFETY: a register-only `and`; no memory is touched.
    unsafe {
        core::arch::asm!("{0} &= {1}", inout(reg) v, const MASK, options(pure, nomem, nostack));
    }
    v
}

/// `offset` (at most [`MAX_OFFSET`], checked by the caller), bounded for the verifier.
#[inline(always)]
pub fn bounded_for_verifier(offset: usize) -> usize {
    masked_for_verifier::<MAX_OFFSET>(offset)
}

/// A 16-bit field's value (a length converted from network order), bounded for the verifier.
#[inline(always)]
pub fn u16_for_verifier(v: u16) -> usize {
    masked_for_verifier::<0xffff>(v as usize)
}

/// The bytes of one packet: `[start, end)` is what the program can read; `len` how long the
/// packet is known to be from `start` on. For an skb that is its real length. For an XDP frame
/// it is the first buffer's: the rest of a multi-buffer frame is asked for (`xdp`) only when a
/// length check needs it, so a single-buffer frame pays no helper call.
#[derive(Clone, Copy)]
pub struct Bytes {
    pub start: usize,
    pub end: usize,
    pub len: usize,
    /// The XDP context, or null for an skb.
    pub xdp: *mut xdp_md,
    /// The TC context, or null for an XDP frame. (Either context, where set, also serves the
    /// parse's one route lookup: see `parse::stays_on_host`.)
    pub skb: *mut __sk_buff,
}

impl Bytes {
    /// Reads `N` bytes at `offset`, or says why it cannot: the packet is shorter (truncated), or
    /// the bytes exist but lie outside the readable linear area (headers the kernel could not
    /// make linear).
    #[inline(always)]
    pub fn array<const N: usize>(&self, offset: usize) -> Result<[u8; N], u32> {
        let at = self.readable::<N>(offset)?;
        // SAFETY: [at, at + N) lies inside the packet (checked by `readable`, and by the
        // verifier).
        Ok(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }

    /// The address of `N` readable bytes at `offset`, or why they cannot be read.
    #[inline(always)]
    fn readable<const N: usize>(&self, offset: usize) -> Result<usize, u32> {
        if offset > MAX_OFFSET {
            return Err(self.unreadable(offset, N));
        }
        let at = self.start + bounded_for_verifier(offset);
        // For one byte the compiler would rewrite `at + 1 > end` as `at >= end`, which does not
        // tell the verifier that the byte is readable: that end goes through memory. Wider
        // reads keep their comparison as written (and stay in registers).
        let last = if N == 1 {
            // SAFETY: a read of a local.
            unsafe { core::ptr::read_volatile(&(at + N)) }
        } else {
            at + N
        };
        if last > self.end {
            return Err(self.unreadable(offset, N));
        }
        Ok(at)
    }

    /// Why `n` bytes at `offset` cannot be read: not linear, or not in the packet at all.
    #[inline(always)]
    fn unreadable(&self, offset: usize, n: usize) -> u32 {
        if self.has(offset, n) {
            reason::DROP_NOT_LINEAR
        } else {
            reason::DROP_TRUNCATED
        }
    }

    /// Reads a 16-byte (IPv6) address at `offset` as four words. Read as an array, the copy
    /// into its destination becomes a call to the builtin `memmove`, which in BPF moves one
    /// byte per loop turn.
    #[inline(always)]
    pub fn address(&self, offset: usize) -> Result<[u8; 16], u32> {
        let at = self.readable::<16>(offset)? as *const u32;
        // SAFETY: [at, at + 16) lies inside the packet (checked by `readable`).
        let words = unsafe {
            [
                core::ptr::read_unaligned(at),
                core::ptr::read_unaligned(at.add(1)),
                core::ptr::read_unaligned(at.add(2)),
                core::ptr::read_unaligned(at.add(3)),
            ]
        };
        // SAFETY: [u32; 4] and [u8; 16] have the same size, and every bit pattern is valid.
        Ok(unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) })
    }

    #[inline(always)]
    pub fn u8_at(&self, offset: usize) -> Result<u8, u32> {
        Ok(self.array::<1>(offset)?[0])
    }

    #[inline(always)]
    pub fn be16_at(&self, offset: usize) -> Result<u16, u32> {
        Ok(u16::from_be_bytes(self.array::<2>(offset)?))
    }

    /// Whether the packet holds at least `n` bytes from `offset` on, linear or not. A length
    /// check only: it never lets a read skip its own check in [`Bytes::array`].
    #[inline(always)]
    pub fn has(&self, offset: usize, n: usize) -> bool {
        if offset + n <= self.len {
            return true;
        }
        // SAFETY: plain helper call on the program's own XDP context.
        !self.xdp.is_null() && offset + n <= unsafe { bpf_xdp_get_buff_len(self.xdp) } as usize
    }
}

/// A 32-bit load from packet memory at `at`, which the caller has checked lies inside the
/// packet: one instruction at any alignment. (`read_unaligned` compiles to four byte loads and
/// the shifts joining them: BPF's compiler assumes strict alignment. The verifier lets packet
/// loads be unaligned on x86-64, where the kernel has efficient unaligned access.)
///
/// # Safety
/// `[at, at + 4)` must be inside the packet, checked against its end where the verifier sees it.
#[inline(always)]
pub unsafe fn load_u32(at: usize) -> u32 {
    let v: u64;
    // SAFETY: the caller's contract; a plain load.
    unsafe {
        core::arch::asm!("{0} = *(u32 *)({1} + 0)", lateout(reg) v, in(reg) at,
            options(readonly, nostack, preserves_flags));
    }
    v as u32
}

/// A 16-bit load from packet memory at `at`, as [`load_u32`].
///
/// # Safety
/// `[at, at + 2)` must be inside the packet, checked against its end where the verifier sees it.
#[inline(always)]
pub unsafe fn load_u16(at: usize) -> u16 {
    let v: u64;
    // SAFETY: the caller's contract; a plain load.
    unsafe {
        core::arch::asm!("{0} = *(u16 *)({1} + 0)", lateout(reg) v, in(reg) at,
            options(readonly, nostack, preserves_flags));
    }
    v as u16
}

/// A 32-bit store to packet memory at `at`, as [`load_u32`] loads.
///
/// # Safety
/// `[at, at + 4)` must be inside the packet, checked against its end where the verifier sees it.
#[inline(always)]
pub unsafe fn store_u32(at: usize, v: u32) {
    // SAFETY: the caller's contract; a plain store.
    unsafe {
        core::arch::asm!("*(u32 *)({0} + 0) = {1}", in(reg) at, in(reg) v as u64,
            options(nostack, preserves_flags));
    }
}

/// A 16-bit store to packet memory at `at`, as [`store_u32`].
///
/// # Safety
/// `[at, at + 2)` must be inside the packet, checked against its end where the verifier sees it.
#[inline(always)]
pub unsafe fn store_u16(at: usize, v: u16) {
    // SAFETY: the caller's contract; a plain store.
    unsafe {
        core::arch::asm!("*(u16 *)({0} + 0) = {1}", in(reg) at, in(reg) v as u64,
            options(nostack, preserves_flags));
    }
}

/// The Ethernet header's two addresses (destination, then source) as three native words of
/// their 12 bytes.
#[inline(always)]
pub fn mac_words(dst: &[u8; 6], src: &[u8; 6]) -> [u32; 3] {
    [
        u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]),
        u32::from_ne_bytes([dst[4], dst[5], src[0], src[1]]),
        u32::from_ne_bytes([src[2], src[3], src[4], src[5]]),
    ]
}

/// Writes the Ethernet addresses ([`mac_words`]) at the frame's start in three stores, where
/// copying two 6-byte arrays compiles to two calls of a byte-by-byte `memmove`.
///
/// # Safety
/// `[start, start + 12)` must be inside the packet, checked where the verifier sees it.
#[inline(always)]
pub unsafe fn write_macs(start: usize, macs: &[u32; 3]) {
    // SAFETY: the caller's contract.
    unsafe {
        store_u32(start, macs[0]);
        store_u32(start + 4, macs[1]);
        store_u32(start + 8, macs[2]);
    }
}
