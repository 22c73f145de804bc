//! Policy lookup for one flow over the compiled tables in the maps.

use aya_ebpf::maps::lpm_trie::Key;
use gateway_common::{
    acl::{
        self, AclTables, AddrClass, V6_SLOT_PREFIX_BITS, V6KeyData, Verdict, VerdictKey,
        cached_port, verdict_cache_slot,
    },
    conntrack::FAMILY_V4,
    settings::{ActivePolicy, Settings},
};

use crate::{maps, parse::Flow};

struct MapTables;

impl AclTables for MapTables {
    #[inline(always)]
    fn root(&self, index: u32) -> Option<AddrClass> {
        maps::ACL4_ROOT.get(index).copied()
    }
    #[inline(always)]
    fn chunk(&self, index: u32) -> Option<AddrClass> {
        maps::ACL4_CHUNK.get(index).copied()
    }
    #[inline(always)]
    fn v6(&self, key: &V6KeyData) -> Option<AddrClass> {
        maps::ACL6
            .get(Key::new(V6_SLOT_PREFIX_BITS + 128, *key))
            .copied()
    }
    #[inline(always)]
    fn port_class(&self, index: u32) -> Option<u32> {
        maps::ACL_PORT.get(index).copied()
    }
    #[inline(always)]
    fn verdict(&self, key: &VerdictKey) -> Option<Verdict> {
        // SAFETY: the value is copied out at once; entries are only replaced between generations.
        unsafe { maps::ACL_VERDICT.get(key).copied() }
    }
}

/// The verdict of the active policy for a flow in its own direction: from this CPU's verdict
/// cache when it holds the same key under the same policy generation, else from the tables.
#[inline(always)]
pub fn judge(flow: &Flow, active: &ActivePolicy, settings: &Settings) -> Verdict {
    let port = cached_port(flow.proto, flow.dport);
    let Some(cached) =
        maps::VERDICT_CACHE.get_ptr_mut(verdict_cache_slot(&flow.src, &flow.dst, flow.proto, port))
    else {
        return lookup(flow, active, settings);
    };
    // SAFETY: this CPU's slot; nothing else writes it while this program runs here.
    let cached = unsafe { &mut *cached };
    if cached.generation == active.generation
        && cached.family == flow.family
        && cached.proto == flow.proto
        && cached.dport == port
        && cached.src == flow.src
        && cached.dst == flow.dst
    {
        return cached.verdict;
    }
    let verdict = lookup(flow, active, settings);
    cached.src = flow.src;
    cached.dst = flow.dst;
    cached.dport = port;
    cached.proto = flow.proto;
    cached.family = flow.family;
    cached.generation = active.generation;
    cached.verdict = verdict;
    verdict
}

/// The verdict from the compiled tables.
#[inline(always)]
fn lookup(flow: &Flow, active: &ActivePolicy, settings: &Settings) -> Verdict {
    let slot = active.slot & 1;
    // Each address's class is unwrapped as soon as it is known: an `Option` kept across the
    // other address's map lookups is spilled whole, and its payload, undefined when it is None,
    // is then a read of an uninitialised register to the verifier.
    // No class means no policy was ever loaded (or a dangling link): default deny.
    let (src, dst) = if flow.family == FAMILY_V4 {
        let src = u32::from_be_bytes([flow.src[0], flow.src[1], flow.src[2], flow.src[3]]);
        let dst = u32::from_be_bytes([flow.dst[0], flow.dst[1], flow.dst[2], flow.dst[3]]);
        let Some(src) = acl::classify_v4(&MapTables, slot, settings.chunks_per_slot, src) else {
            return Verdict::DEFAULT_DENY;
        };
        let Some(dst) = acl::classify_v4(&MapTables, slot, settings.chunks_per_slot, dst) else {
            return Verdict::DEFAULT_DENY;
        };
        (src, dst)
    } else {
        let Some(src) = acl::classify_v6(&MapTables, slot, flow.src) else {
            return Verdict::DEFAULT_DENY;
        };
        let Some(dst) = acl::classify_v6(&MapTables, slot, flow.dst) else {
            return Verdict::DEFAULT_DENY;
        };
        (src, dst)
    };
    acl::lookup_verdict(
        &MapTables,
        slot,
        src,
        dst,
        acl::proto_class(flow.proto),
        flow.dport,
    )
}
