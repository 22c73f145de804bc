//! Copies of map values in 64-bit words. A plain `*dst = *src` of a struct becomes a call of
//! the builtin `memmove` in BPF, which moves one byte per loop turn (32 turns for a NAT
//! target, on every packet of a masqueraded flow); volatile word moves stay word moves.

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
