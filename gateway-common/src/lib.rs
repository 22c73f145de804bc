//! Types and constants shared by the kernel programs (`gateway-ebpf`) and the controller
//! (`gateway`). Every map key and value is `#[repr(C)]`, padding-free, with explicit integer
//! widths and a compile-time size assertion, so both sides agree on the bytes.
#![no_std]

pub mod acl;
pub mod buckets;
pub mod checksum;
pub mod clock;
pub mod conntrack;
pub mod forward;
pub mod fragment;
pub mod hash;
pub mod lan_flow;
pub mod maps;
pub mod mss;
pub mod nat;
pub mod nat_table;
pub mod settings;
pub mod stats;
#[cfg(test)]
mod test_kit;
pub mod tunnel_flow;
pub mod turn;
pub mod turn_flow;
pub mod underlay;

/// Asserts at compile time that a map type has the given size (no hidden padding, no drift).
#[macro_export]
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

/// Implements `aya::Pod` for map types when built for the controller.
#[macro_export]
macro_rules! user_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], has no padding (asserted with assert_size!) and every
            // bit pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )+
    };
}
