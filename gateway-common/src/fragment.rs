//! Verdicts of first fragments, which later fragments of the same datagram follow.

use crate::{assert_size, user_pod};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Addresses as on the wire; IPv4 uses the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
assert_size!(FragKey, 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragVerdict {
    pub expires_ns: u64,
    pub action: u32,
    pub rule: u32,
}
assert_size!(FragVerdict, 16);

user_pod!(FragKey, FragVerdict);
