//! The compiled access-control tables and the lookup over them.
//!
//! A policy compiles into four tables whose lookup cost does not depend on the number of rules:
//!
//! 1. an IPv4 multibit trie (a 2^16-entry root array, then up to four 16-entry chunks) from an
//!    address to its [`AddrClass`]: the class of the address as a source and as a destination
//!    (addresses in the same class are matched by exactly the same rules);
//! 2. an IPv6 LPM trie to the same classes (IPv6 rule sets are small in practice);
//! 3. a per-protocol port array from a TCP/UDP port to its port class;
//! 4. one hash from (source class, destination class, protocol class, port class) to the
//!    [`Verdict`], with a second probe for the "any port" entry.
//!
//! Every table exists twice ("slots"): the controller writes the inactive slot, then flips
//! [`crate::settings::ActivePolicy`] with one 8-byte store, so a packet sees one policy whole.
//! The lookup is written once, against [`AclTables`], and used by the kernel (maps) and by the
//! controller's `policy explain` (the same compiled tables in memory).

use crate::{assert_size, user_pod};

pub const POLICY_SLOTS: u32 = 2;
pub const V4_ROOT_BITS: u32 = 16;
pub const V4_ROOT_ENTRIES: u32 = 1 << V4_ROOT_BITS;
pub const V4_CHUNK_BITS: u32 = 4;
pub const V4_CHUNK_ENTRIES: u32 = 1 << V4_CHUNK_BITS;
/// 16 root bits + 4 levels x 4 bits = 32.
pub const V4_CHUNK_LEVELS: u32 = (32 - V4_ROOT_BITS) / V4_CHUNK_BITS;

/// Protocol classes: the part of the protocol a rule can distinguish.
pub const PROTO_CLASS_OTHER: u8 = 0;
pub const PROTO_CLASS_TCP: u8 = 1;
pub const PROTO_CLASS_UDP: u8 = 2;
pub const PROTO_CLASS_ICMP: u8 = 3;
pub const PROTO_CLASSES: u8 = 4;
/// TCP and UDP have port tables.
pub const PORT_TABLES_PER_SLOT: u32 = 2;
pub const PORTS: u32 = 1 << 16;
/// The verdict entry that holds the resolution for ports no narrower rule covers.
pub const PORT_CLASS_ANY: u32 = u32::MAX;

pub const ACTION_ACCEPT: u32 = 1;
pub const ACTION_DROP: u32 = 2;
/// Rule index of the implicit default deny.
pub const RULE_DEFAULT: u32 = u32::MAX;

/// The classes of one address region. When `src == ADDR_CLASS_LINK` the entry is an interior
/// node of the trie and `dst` is the index of the next chunk within the slot's chunk pool.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrClass {
    pub src: u32,
    pub dst: u32,
}
assert_size!(AddrClass, 8);

pub const ADDR_CLASS_LINK: u32 = u32::MAX;

impl AddrClass {
    pub const fn link(chunk: u32) -> Self {
        Self {
            src: ADDR_CLASS_LINK,
            dst: chunk,
        }
    }
    pub const fn is_link(&self) -> bool {
        self.src == ADDR_CLASS_LINK
    }
}

/// Key of the IPv6 LPM trie: the slot as a 4-byte big-endian prefix, then the address, so one trie
/// holds both slots. The prefix length always covers the 32 slot bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6KeyData {
    pub slot_be: [u8; 4],
    pub addr: [u8; 16],
}
assert_size!(V6KeyData, 20);
pub const V6_SLOT_PREFIX_BITS: u32 = 32;

impl V6KeyData {
    pub const fn new(slot: u32, addr: [u8; 16]) -> Self {
        Self {
            slot_be: slot.to_be_bytes(),
            addr,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    pub src_class: u32,
    pub dst_class: u32,
    pub port_class: u32,
    pub proto_class: u8,
    pub slot: u8,
    pub _pad: [u8; 2],
}
assert_size!(VerdictKey, 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub action: u32,
    /// Index of the deciding rule in the compiled policy, or [`RULE_DEFAULT`].
    pub rule: u32,
}
assert_size!(Verdict, 8);

impl Verdict {
    pub const DEFAULT_DENY: Verdict = Verdict {
        action: ACTION_DROP,
        rule: RULE_DEFAULT,
    };
    pub const fn accepts(&self) -> bool {
        self.action == ACTION_ACCEPT
    }
}

user_pod!(AddrClass, V6KeyData, VerdictKey, Verdict, CachedVerdict);

/// Index of `port` in the port-class array.
#[inline(always)]
pub const fn port_class_index(slot: u32, proto_class: u8, port: u16) -> u32 {
    let table = slot * PORT_TABLES_PER_SLOT + (proto_class as u32 - PROTO_CLASS_TCP as u32);
    table * PORTS + port as u32
}

/// Index of a root entry.
#[inline(always)]
pub const fn root_index(slot: u32, addr: u32) -> u32 {
    slot * V4_ROOT_ENTRIES + (addr >> (32 - V4_ROOT_BITS))
}

/// Index of an entry in the chunk pool (`chunk` is relative to the slot).
#[inline(always)]
pub const fn chunk_index(slot: u32, chunks_per_slot: u32, chunk: u32, nibble: u32) -> u32 {
    (slot * chunks_per_slot + chunk) * V4_CHUNK_ENTRIES + nibble
}

/// Read access to one slot's compiled tables.
pub trait AclTables {
    fn root(&self, index: u32) -> Option<AddrClass>;
    fn chunk(&self, index: u32) -> Option<AddrClass>;
    fn v6(&self, key: &V6KeyData) -> Option<AddrClass>;
    fn port_class(&self, index: u32) -> Option<u32>;
    fn verdict(&self, key: &VerdictKey) -> Option<Verdict>;
}

/// Walks the IPv4 trie. `addr` in host byte order. `None` means the tables are inconsistent
/// (a dangling link), which the caller treats as a drop.
#[inline(always)]
pub fn classify_v4<T: AclTables>(
    t: &T,
    slot: u32,
    chunks_per_slot: u32,
    addr: u32,
) -> Option<AddrClass> {
    let mut entry = t.root(root_index(slot, addr))?;
    let mut shift = 32 - V4_ROOT_BITS;
    let mut level = 0;
    while level < V4_CHUNK_LEVELS {
        if !entry.is_link() {
            return Some(entry);
        }
        shift -= V4_CHUNK_BITS;
        let nibble = (addr >> shift) & (V4_CHUNK_ENTRIES - 1);
        entry = t.chunk(chunk_index(slot, chunks_per_slot, entry.dst, nibble))?;
        level += 1;
    }
    if entry.is_link() { None } else { Some(entry) }
}

#[inline(always)]
pub fn classify_v6<T: AclTables>(t: &T, slot: u32, addr: [u8; 16]) -> Option<AddrClass> {
    t.v6(&V6KeyData::new(slot, addr))
}

/// The verdict for a flow between two classified addresses: first the entry of the port's class,
/// then the slot's "any port" entry, else the default deny.
#[inline(always)]
pub fn lookup_verdict<T: AclTables>(
    t: &T,
    slot: u32,
    src: AddrClass,
    dst: AddrClass,
    proto_class: u8,
    dport: u16,
) -> Verdict {
    let mut key = VerdictKey {
        src_class: src.src,
        dst_class: dst.dst,
        port_class: PORT_CLASS_ANY,
        proto_class,
        slot: slot as u8,
        _pad: [0; 2],
    };
    if (proto_class == PROTO_CLASS_TCP || proto_class == PROTO_CLASS_UDP)
        && let Some(port_class) = t.port_class(port_class_index(slot, proto_class, dport))
    {
        key.port_class = port_class;
        if let Some(v) = t.verdict(&key) {
            return v;
        }
        key.port_class = PORT_CLASS_ANY;
    }
    match t.verdict(&key) {
        Some(v) => v,
        None => Verdict::DEFAULT_DENY,
    }
}

/// Maps an IP protocol number to its class.
#[inline(always)]
pub const fn proto_class(ip_proto: u8) -> u8 {
    match ip_proto {
        6 => PROTO_CLASS_TCP,
        17 => PROTO_CLASS_UDP,
        1 | 58 => PROTO_CLASS_ICMP,
        _ => PROTO_CLASS_OTHER,
    }
}

/// One slot of the kernel's per-CPU verdict cache: the last verdict computed for a
/// (source, destination, protocol, destination port) in this slot. The verdict depends on
/// nothing else (not the source port), so every connection a client opens to a service shares
/// it. The policy lookup costs a hash of the verdict key and a bucket walk; a hit costs an array
/// index and a compare.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedVerdict {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// 0 for protocols without ports (the policy does not look at the ICMP echo identifier).
    pub dport: u16,
    pub proto: u8,
    /// FAMILY_V4 or FAMILY_V6; 0 in a slot never filled, which no packet matches.
    pub family: u8,
    /// The policy generation the verdict was computed under: any other generation is a miss,
    /// so a policy change needs no flush. (A slot untouched across 2^32 applies could match a
    /// stale verdict; at one apply per second that is 136 years.)
    pub generation: u32,
    pub verdict: Verdict,
}
assert_size!(CachedVerdict, 48);

/// Verdict-cache slots per CPU (a power of two). Colliding keys evict each other, which costs a
/// policy lookup, never a wrong verdict: the key is compared in full.
pub const VERDICT_CACHE_SLOTS: u32 = 4096;

/// The port the verdict cache keys on: the policy reads ports of TCP and UDP only.
#[inline(always)]
pub const fn cached_port(ip_proto: u8, dport: u16) -> u16 {
    match proto_class(ip_proto) {
        PROTO_CLASS_TCP | PROTO_CLASS_UDP => dport,
        _ => 0,
    }
}

/// The cache slot of a key.
#[inline(always)]
pub fn verdict_cache_slot(src: &[u8; 16], dst: &[u8; 16], ip_proto: u8, port: u16) -> u32 {
    use crate::hash::{fold_addr, mix32};
    let key = fold_addr(src)
        ^ fold_addr(dst).rotate_left(16)
        ^ ((port as u32) << 8 | ip_proto as u32).rotate_left(8);
    mix32(key) & (VERDICT_CACHE_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn verdict_cache_spreads_one_clients_neighbours_over_the_slots() {
        let dst = [198, 19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut used = std::collections::HashSet::new();
        for i in 0..4096u32 {
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&(0x6440_0000u32 + i).to_be_bytes());
            let slot = verdict_cache_slot(&src, &dst, 17, 443);
            assert!(slot < VERDICT_CACHE_SLOTS);
            used.insert(slot);
        }
        // A random function fills 1 - 1/e of the slots (about 2,589 of 4,096).
        assert!(used.len() > 2_400, "{} slots used", used.len());
        // Ports of one pair of addresses spread as well.
        let src = [100, 64, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let ports: std::collections::HashSet<u32> = (1..=1024u16)
            .map(|p| verdict_cache_slot(&src, &dst, 6, p))
            .collect();
        assert!(ports.len() > 600, "{} slots used", ports.len());
    }

    #[test]
    fn verdict_cache_keys_on_ports_only_where_the_policy_reads_them() {
        assert_eq!(cached_port(6, 443), 443);
        assert_eq!(cached_port(17, 53), 53);
        // ICMP echo identifiers and ports of other protocols do not split the cache.
        assert_eq!(cached_port(1, 0x1234), 0);
        assert_eq!(cached_port(58, 0x1234), 0);
        assert_eq!(cached_port(47, 99), 0);
    }
}
