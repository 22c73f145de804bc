//! Slot hashing for the kernel's direct-mapped per-CPU caches (verdicts, FIB routes): cheap
//! enough for every packet, and every input bit moves the slot bits.

/// The four 32-bit words of an address XORed together (an IPv4 address is the first word).
#[inline(always)]
pub fn fold_addr(a: &[u8; 16]) -> u32 {
    addr_word(a, 0) ^ addr_word(a, 1) ^ addr_word(a, 2) ^ addr_word(a, 3)
}

/// Word `i` (0–3) of an address, in memory order.
#[inline(always)]
pub fn addr_word(a: &[u8; 16], i: usize) -> u32 {
    let at = 4 * i;
    u32::from_ne_bytes([a[at], a[at + 1], a[at + 2], a[at + 3]])
}

/// The words the kernel's caches key an address by: an IPv4 address (`v4`) is its first word,
/// the rest zero (all the FIB and the policy read of it, and all a parsed IPv4 address holds),
/// so its lookups compare one word where sixteen bytes would cost sixteen byte loads.
#[inline(always)]
pub fn key_words(v4: bool, a: &[u8; 16]) -> [u32; 4] {
    if v4 {
        [addr_word(a, 0), 0, 0, 0]
    } else {
        [
            addr_word(a, 0),
            addr_word(a, 1),
            addr_word(a, 2),
            addr_word(a, 3),
        ]
    }
}

/// Writes `a`'s key words (see [`key_words`]) into `k` in place: no array on the stack, where
/// the kernel programs have no room to spare.
#[inline(always)]
pub fn set_key_words(v4: bool, k: &mut [u32; 4], a: &[u8; 16]) {
    k[0] = addr_word(a, 0);
    if v4 {
        k[1] = 0;
        k[2] = 0;
        k[3] = 0;
    } else {
        k[1] = addr_word(a, 1);
        k[2] = addr_word(a, 2);
        k[3] = addr_word(a, 3);
    }
}

/// Whether `a` has the key words `k` (see [`key_words`]).
#[inline(always)]
pub fn has_key_words(v4: bool, k: &[u32; 4], a: &[u8; 16]) -> bool {
    if v4 {
        return k[0] == addr_word(a, 0);
    }
    k[0] == addr_word(a, 0)
        && k[1] == addr_word(a, 1)
        && k[2] == addr_word(a, 2)
        && k[3] == addr_word(a, 3)
}

/// The words of `a` XORed together, as [`key_words`] has them.
#[inline(always)]
pub fn fold_key(v4: bool, a: &[u8; 16]) -> u32 {
    if v4 { addr_word(a, 0) } else { fold_addr(a) }
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
