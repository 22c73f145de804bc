//! Later fragments carry no ports: they follow the verdict of their datagram's first fragment.

use gateway_common::{
    conntrack::{FAMILY_V4, NS_PER_SEC},
    fragment::{FragKey, FragVerdict},
};

use crate::{maps, parse::Packet};

/// The datagram a fragment belongs to. IPv6 datagrams are (source, destination, id) alone
/// (RFC 8200 4.5): the fragment header's next header may name an extension header (AH,
/// destination options) that the first fragment's walk went past to its L4 protocol.
#[inline(always)]
fn key_of(pkt: &Packet) -> FragKey {
    FragKey {
        src: pkt.flow.src,
        dst: pkt.flow.dst,
        id: pkt.frag_id,
        proto: if pkt.flow.family == FAMILY_V4 {
            pkt.flow.proto
        } else {
            0
        },
        family: pkt.flow.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
pub fn record(pkt: &Packet, action: u32, rule: u32, now: u64, timeout_secs: u32) {
    let v = FragVerdict {
        expires_ns: now + timeout_secs as u64 * NS_PER_SEC,
        action,
        rule,
    };
    let _ = maps::FRAGMENTS.insert(key_of(pkt), v, 0);
}

/// The first fragment's verdict, while it is fresh.
#[inline(always)]
pub fn lookup(pkt: &Packet, now: u64) -> Option<FragVerdict> {
    // SAFETY: copied out at once.
    let v = unsafe { maps::FRAGMENTS.get(key_of(pkt)) }.copied()?;
    if now > v.expires_ns { None } else { Some(v) }
}
