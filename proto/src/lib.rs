//! NetBird-compatible management protocol: the generated gRPC types (`pb`) and the NaCl box that
//! seals every Login and Sync body (`seal`).

pub mod seal;

/// Messages, client and server generated from proto/management.proto.
pub mod pb {
    #![allow(clippy::all, non_snake_case, non_camel_case_types)]
    tonic::include_proto!("management");
}

pub use seal::{KeyError, OpenError, WgKey, WgPublicKey};

/// Largest gRPC message either side accepts: room for the network map of a 10,000-peer account
/// (tonic's default, 4 MiB, is not).
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;
