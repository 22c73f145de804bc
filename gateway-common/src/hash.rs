//! Slot hashing for the kernel's direct-mapped per-CPU caches (verdicts, FIB routes): cheap
//! enough for every packet, and every input bit moves the slot bits.

/// The four 32-bit words of an address XORed together (an IPv4 address is the first word).
#[inline(always)]
pub fn fold_addr(a: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    w(0) ^ w(4) ^ w(8) ^ w(12)
}

/// MurmurHash3's 32-bit finaliser: a bijection that spreads each input bit over the output.
#[inline(always)]
pub fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}
