//! The relay's kernel fast path, as the server sees it: bound channels handed to it and taken
//! back. The server stays the only writer; what implements it (the gateway's XDP program) lives
//! outside this crate.

use std::net::SocketAddrV4;

/// One bound channel, both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub client: SocketAddrV4,
    /// The listening address the client's ChannelData arrives at.
    pub listen: SocketAddrV4,
    pub channel: u16,
    pub peer: SocketAddrV4,
    /// The allocation's local address (its socket's), where peers send.
    pub relay: SocketAddrV4,
    /// The binding's counter slot.
    pub slot: u32,
}

/// What the kernel relayed: (packets, payload bytes) to peers and to clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

pub trait FastPath: Send + Sync {
    fn bind(&self, b: &Binding) -> anyhow::Result<()>;
    fn unbind(&self, b: &Binding);
    fn totals(&self) -> Totals;
}
