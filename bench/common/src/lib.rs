//! Map types of the benchmark programs, shared by kernel and driver.
#![no_std]

/// One template flow the generator cycles through: the source address and destination port it
/// writes into the frame (network byte order), so traffic hits chosen rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenFlow {
    pub saddr_be: u32,
    pub dport_be: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<GenFlow>() == 8);

/// Generator settings: how many template flows, and how many source ports each spreads over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    pub flows: u32,
    pub sports: u32,
    pub sport_base: u32,
    /// Pacing: picoseconds between the frames the generator lets out (0: as fast as it runs).
    /// A frame held back is dropped in the generator, before any queue (see `xdp_gen`).
    pub gap_ps: u32,
}
const _: () = assert!(core::mem::size_of::<GenConfig>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCount {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<SinkCount>() == 16);

/// The TC ceiling's egress: the interface and the IPv4 next hop (network byte order) it
/// redirects every packet to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcEgress {
    pub ifindex: u32,
    pub nexthop_be: u32,
}
const _: () = assert!(core::mem::size_of::<TcEgress>() == 8);

pub const MAX_GEN_FLOWS: u32 = 4096;

/// The first payload bytes of every generated frame (inside the restored header): the sink
/// counts only frames that carry it, so a stray frame (ARP, neighbour discovery, a kernel
/// retransmit) never offsets a count and "0 lost" is exact.
pub const GEN_SIGNATURE: [u8; 6] = *b"gwbnch";
/// Offset of the signature: after Ethernet, IPv4 and the UDP header.
pub const GEN_SIGNATURE_AT: usize = 14 + 20 + 8;
/// Sink counter slots: the generator's frames, and everything else.
pub const SINK_OURS: u32 = 0;
pub const SINK_STRAY: u32 = 1;

/// The Ethernet + IPv4 + UDP/TCP header bytes the generator restores in every frame before
/// writing the flow: live frames come back to the generator's page pool as the path left them
/// (MACs rewritten, TTL decremented by a forwarder).
pub const GEN_HEADER_LEN: usize = 48;
const _: () = assert!(GEN_SIGNATURE_AT + GEN_SIGNATURE.len() <= GEN_HEADER_LEN);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenHeader {
    pub bytes: [u8; GEN_HEADER_LEN],
}
const _: () = assert!(core::mem::size_of::<GenHeader>() == GEN_HEADER_LEN);

pub const PROG_GEN: &str = "xdp_gen";
pub const PROG_SINK: &str = "xdp_sink";
pub const PROG_SINK_PASS: &str = "xdp_sink_pass";
pub const PROG_TX: &str = "xdp_tx";
pub const PROG_REDIRECT: &str = "xdp_redirect";
pub const PROG_REDIRECT_READING: &str = "xdp_redirect_reading";
pub const PROG_REDIRECT_WRITING: &str = "xdp_redirect_writing";
pub const PROG_TX_UNWRAPPING: &str = "xdp_tx_unwrapping";
pub const PROG_PASS: &str = "xdp_pass";
pub const PROG_TC_REDIRECT: &str = "tc_redirect";
pub const MAP_TC_EGRESS: &str = "TC_EGRESS";
pub const PROG_TC_REDIRECT_TRACKING: &str = "tc_redirect_tracking";
/// The tracking floor's tables (sized at load: see `Generator::attach_tc_floor`).
pub const MAP_TRACK_FLOWS: &str = "TRACK_FLOWS";
pub const MAP_TRACK_REVERSE: &str = "TRACK_REVERSE";
pub const PROG_TC_REDIRECT_SLOTTED: &str = "tc_redirect_slotted";
pub const MAP_GEN_CONFIG: &str = "GEN_CONFIG";
pub const MAP_GEN_COUNTER: &str = "GEN_COUNTER";
pub const MAP_GEN_FLOWS: &str = "GEN_FLOWS";
pub const MAP_GEN_HEADER: &str = "GEN_HEADER";
pub const MAP_SINK: &str = "SINK";
pub const MAP_EGRESS: &str = "EGRESS";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], padding-free (asserted above), any bit pattern valid.
    unsafe impl aya::Pod for super::GenFlow {}
    unsafe impl aya::Pod for super::GenConfig {}
    unsafe impl aya::Pod for super::SinkCount {}
    unsafe impl aya::Pod for super::GenHeader {}
    unsafe impl aya::Pod for super::TcEgress {}
}
