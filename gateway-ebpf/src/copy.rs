//! Copies of map values in 64-bit words. A plain `*dst = *src` of a struct becomes a call of
//! the builtin `memmove` in BPF, which moves one byte per loop turn (32 turns for a NAT
//! target, on every packet of a masqueraded flow); volatile word moves stay word moves.

/// Whether the `words` 64-bit words at `a` and at `b` are equal, read with volatile loads (an
/// array or struct `==` is a byte loop in BPF, which the verifier walks byte by byte).
///
/// # Safety
/// Both must point at `words` readable, 8-aligned words.
#[inline(always)]
pub unsafe fn same_words(a: *const u64, b: *const u64, words: usize) -> bool {
    let mut i = 0;
    while i < words {
        // SAFETY: i < words, which the caller vouches for.
        if unsafe { core::ptr::read_volatile(a.add(i)) != core::ptr::read_volatile(b.add(i)) } {
            return false;
        }
        i += 1;
    }
    true
}

/// Copies `*src` into `*dst` in 64-bit words (`T` must be 8-aligned, its size a multiple of 8:
/// checked when the program is built).
#[inline(always)]
pub fn copy_words<T: Copy>(dst: &mut T, src: &T) {
    const {
        assert!(align_of::<T>() >= 8 && size_of::<T>() % 8 == 0);
    }
    let (d, s) = (dst as *mut T as *mut u64, src as *const T as *const u64);
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: both are valid, 8-aligned and `size_of::<T>()` bytes long; every bit pattern
        // of a map value type is a valid value (they are plain C structs).
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}
