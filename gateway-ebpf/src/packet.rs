//! Bounds-checked reads from packet memory, the one place that touches raw packet pointers.

use gateway_common::stats::reason;

/// The bytes of one packet: `[start, end)` as the kernel gave them.
#[derive(Clone, Copy)]
pub struct Bytes {
    pub start: usize,
    pub end: usize,
}

impl Bytes {
    /// Reads `N` bytes at `offset`, or says the packet is truncated.
    #[inline(always)]
    pub fn array<const N: usize>(&self, offset: usize) -> Result<[u8; N], u32> {
        let at = self.start + offset;
        if at + N > self.end {
            return Err(reason::DROP_TRUNCATED);
        }
        // SAFETY: [at, at + N) lies inside the packet, checked above (and by the verifier).
        Ok(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }

    #[inline(always)]
    pub fn u8_at(&self, offset: usize) -> Result<u8, u32> {
        Ok(self.array::<1>(offset)?[0])
    }

    #[inline(always)]
    pub fn be16_at(&self, offset: usize) -> Result<u16, u32> {
        Ok(u16::from_be_bytes(self.array::<2>(offset)?))
    }

    /// Whether the packet holds at least `len` bytes from `offset` on. A length check only: it
    /// reads the bounds through volatile loads so the compiler cannot use it to drop the
    /// per-read checks in [`Bytes::array`] that the verifier needs to see.
    #[inline(always)]
    pub fn has(&self, offset: usize, len: usize) -> bool {
        // SAFETY: reads of two plain fields of `self`.
        let (start, end) = unsafe { (core::ptr::read_volatile(&self.start), core::ptr::read_volatile(&self.end)) };
        start + offset + len <= end
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}
