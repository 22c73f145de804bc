//! A small deterministic generator (xorshift) for the host tests: no dependency, and a failing
//! case can be named and replayed by its seed and index.

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    pub fn u32(&mut self) -> u32 {
        self.next() as u32
    }

    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.next() as u8;
        }
        out
    }
}
