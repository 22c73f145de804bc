//! What the data plane is told at load and attach: table capacities and how a LAN interface is
//! attached. Both are parts of the gateway's configuration file.

use gateway_common::maps;
use gateway_policy::compile::Limits;
use serde::{Deserialize, Serialize};

/// How a LAN interface is attached. `auto` (the default) takes native XDP, except on a veth:
/// there an XDP program switches off segmentation offload (TSO/GSO) on the veth's peer, so the
/// LAN hosts behind it (a container's, a lab's) would send every TCP segment as its own packet
/// and their uploads through the gateway would drop several-fold; a veth gets the TC program
/// (the same logic). The others name a mode outright.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LanAttach {
    #[default]
    Auto,
    XdpNative,
    XdpGeneric,
    Tc,
}

/// Table capacities (memory is reserved for two policy slots).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// 16-entry IPv4 trie chunks per policy slot (128 bytes each).
    pub acl_chunks: u32,
    /// Verdict entries per policy slot.
    pub acl_verdicts: u32,
    pub acl_v6_prefixes: u32,
    /// Enabled policies per slot.
    pub rules: u32,
    pub conntrack_entries: u32,
    pub fragment_entries: u32,
    /// Masquerade translations (each takes a forward and a reverse entry), held in buckets of
    /// four: rounded up to a power of two buckets.
    pub nat_entries: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            acl_chunks: maps::DEFAULT_CHUNKS_PER_SLOT,
            acl_verdicts: maps::DEFAULT_VERDICT_ENTRIES / 2,
            acl_v6_prefixes: maps::DEFAULT_V6_ENTRIES / 2,
            rules: maps::DEFAULT_RULES_PER_SLOT,
            conntrack_entries: maps::DEFAULT_CONNTRACK_ENTRIES,
            fragment_entries: maps::DEFAULT_FRAGMENT_ENTRIES,
            nat_entries: maps::DEFAULT_NAT_ENTRIES,
        }
    }
}

impl LimitsConfig {
    pub fn compile_limits(&self) -> Limits {
        Limits {
            chunks_per_slot: self.acl_chunks,
            verdicts_per_slot: self.acl_verdicts,
            v6_per_slot: self.acl_v6_prefixes,
            rules_per_slot: self.rules,
        }
    }
}
