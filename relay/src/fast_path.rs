//! The relay's kernel fast path, as the server sees it: bound channels handed to it and taken
//! back. The server stays the only writer; what implements it (the gateway's XDP program) lives
//! outside this crate.

use std::net::SocketAddr;

/// One bound channel, both directions. Its four addresses are of one family (the kernel
/// forwards within a family; a channel that crosses families stays in userspace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub client: SocketAddr,
    /// The listening address the client's ChannelData arrives at.
    pub listen: SocketAddr,
    pub channel: u16,
    pub peer: SocketAddr,
    /// The allocation's local address (its socket's), where peers send.
    pub relay: SocketAddr,
    /// The binding's counter slot.
    pub slot: u32,
}

/// What was relayed: (packets, payload bytes) to peers and to clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

impl Totals {
    pub fn plus(self, o: Totals) -> Totals {
        Totals {
            to_peer_packets: self.to_peer_packets + o.to_peer_packets,
            to_peer_bytes: self.to_peer_bytes + o.to_peer_bytes,
            to_client_packets: self.to_client_packets + o.to_client_packets,
            to_client_bytes: self.to_client_bytes + o.to_client_bytes,
        }
    }

    /// What was added since `earlier` (a counter slot read at two times).
    pub fn since(self, earlier: Totals) -> Totals {
        Totals {
            to_peer_packets: self.to_peer_packets.saturating_sub(earlier.to_peer_packets),
            to_peer_bytes: self.to_peer_bytes.saturating_sub(earlier.to_peer_bytes),
            to_client_packets: self
                .to_client_packets
                .saturating_sub(earlier.to_client_packets),
            to_client_bytes: self.to_client_bytes.saturating_sub(earlier.to_client_bytes),
        }
    }
}

pub trait FastPath: Send + Sync {
    fn bind(&self, b: &Binding) -> anyhow::Result<()>;
    fn unbind(&self, b: &Binding);
    /// Everything the kernel relayed.
    fn totals(&self) -> Totals;
    /// What the kernel relayed in a counter slot so far (slots are reused: a binding counts
    /// from its value when it was bound).
    fn slot_totals(&self, slot: u32) -> Totals;
}
