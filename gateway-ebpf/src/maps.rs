//! Every map the programs use. Sizes here are placeholders: the controller sets the real
//! capacities from its configuration when it loads the object. The large ACL arrays are
//! mmapable so the controller writes a whole policy slot with memory stores, not syscalls.

use aya_ebpf::bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC};
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use gateway_common::{
    acl::{AddrClass, CachedVerdict, V6KeyData, VERDICT_CACHE_SLOTS, Verdict, VerdictKey},
    buckets::TableShape,
    conntrack::CtBucket,
    forward::{FIB_SLOTS, FORWARD_PORTS_MAX, FibSlot, TcRouteSlot},
    fragment::{FragKey, FragVerdict},
    lan_flow::{LAN_FLOW_SLOTS, LanFlow},
    maps::{NAT_INTERFACES_MAX, TUNNEL_INTERFACES_MAX},
    mss::MssClamp,
    nat::{NatInterface, NatPrefix, NatSettings, NatTarget},
    nat_table::NatBucket,
    settings::{ActivePolicy, Settings},
    stats::{Counter, STATS_ENTRIES},
    tunnel_flow::{TUNNEL_FLOW_SLOTS, TunnelFlow},
    turn::{BINDING_CACHE_SLOTS, CachedBinding, ChannelKey, PeerKey, ToClient, ToPeer},
    turn_flow::{TURN_FLOW_SLOTS, TurnFlow},
};

#[map(name = "ACTIVE_V1")]
pub static ACTIVE: Array<ActivePolicy> = Array::with_max_entries(1, 0);

#[map(name = "SETTINGS_V1")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map(name = "ACL4_ROOT_V1")]
pub static ACL4_ROOT: Array<AddrClass> = Array::with_max_entries(2 * 65536, BPF_F_MMAPABLE);

#[map(name = "ACL4_CHUNK_V1")]
pub static ACL4_CHUNK: Array<AddrClass> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map(name = "ACL6_V1")]
pub static ACL6: LpmTrie<V6KeyData, AddrClass> = LpmTrie::with_max_entries(1, 0);

#[map(name = "ACL_PORT_V1")]
pub static ACL_PORT: Array<u32> = Array::with_max_entries(2 * 2 * 65536, BPF_F_MMAPABLE);

#[map(name = "ACL_VERDICT_V1")]
pub static ACL_VERDICT: HashMap<VerdictKey, Verdict> = HashMap::with_max_entries(1, 0);

/// Flows by canonical key, in buckets (buckets.rs; the controller sets the bucket count).
/// Mmapable: the controller's sweep takes and writes buckets in place, as the programs do.
#[map(name = "CT_V2")]
pub static CONNTRACK: Array<CtBucket> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The conntrack table's bucket count and hash seed.
#[map(name = "CT_SHAPE_V1")]
pub static CONNTRACK_SHAPE: Array<TableShape> = Array::with_max_entries(1, 0);

#[map(name = "FRAG_V1")]
pub static FRAGMENTS: LruHashMap<FragKey, FragVerdict> = LruHashMap::with_max_entries(1, 0);

#[map(name = "STATS_V1")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

/// Live entries the flow tables gave up for new ones (`gateway_common::stats::evicted`).
#[map(name = "EVICTED_V1")]
pub static EVICTED: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(gateway_common::stats::evicted::SLOTS, 0);

/// Per-CPU room for the parsed packet (the BPF stack is only 512 bytes).
#[map(name = "SCRATCH_V1")]
pub static SCRATCH: PerCpuArray<crate::parse::Packet> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "RULE_STATS_V1")]
pub static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

/// LAN interfaces that take XDP-forwarded traffic (`forward: xdp` in the config), by slot: an
/// array devmap, the cheapest redirect.
#[map(name = "FWD_PORTS_V1")]
pub static FORWARD_PORTS: DevMap = DevMap::with_max_entries(FORWARD_PORTS_MAX, 0);

/// An interface's slot in FORWARD_PORTS, by ifindex (read on a FIB cache miss only).
#[map(name = "FWD_SLOTS_V1")]
pub static FORWARD_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(FORWARD_PORTS_MAX, 0);

/// XDP forwarding's routes (forward.rs), per CPU.
#[map(name = "FIB_CACHE_V2")]
pub static FIB_CACHE: PerCpuArray<FibSlot> = PerCpuArray::with_max_entries(FIB_SLOTS, 0);

/// The TURN relay's routes (turn.rs), per CPU: its own, because a forwarding route names a
/// devmap slot the relay has no use for (the relay redirects by ifindex).
#[map(name = "TURN_ROUTES_V1")]
pub static TURN_ROUTES: PerCpuArray<FibSlot> = PerCpuArray::with_max_entries(FIB_SLOTS, 0);

/// The relay's FIB lookup parameters, per CPU: 64 bytes kept off the IPv6 relay path's stack,
/// which 6.1's verifier otherwise counts over the 512-byte limit (turn.rs, `cached_route`).
#[map(name = "TURN_FIB_PARAMS")]
pub static TURN_FIB_PARAMS: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

#[map(name = "TC_FIB_CACHE_V1")]
pub static TC_FIB_CACHE: PerCpuArray<TcRouteSlot> = PerCpuArray::with_max_entries(FIB_SLOTS, 0);

/// The LAN hook's per-flow shortcut (lan_flow.rs): `LAN_FLOW_SLOTS` per possible CPU, the
/// controller sets the size. Mmapable only for its layout: the slots then start on a page, so
/// that each 64-byte slot is one cache line.
#[map(name = "LAN_FLOWS_V1")]
pub static LAN_FLOWS: Array<LanFlow> = Array::with_max_entries(LAN_FLOW_SLOTS, BPF_F_MMAPABLE);

/// The last verdicts of the policy lookup, per CPU (see `CachedVerdict`).
#[map(name = "VERDICT_CACHE_V1")]
pub static VERDICT_CACHE: PerCpuArray<CachedVerdict> =
    PerCpuArray::with_max_entries(VERDICT_CACHE_SLOTS, 0);

/// The MSS each tunnel interface allows, by ifindex (absent: not clamped).
#[map(name = "TUNNEL_MSS_V1")]
pub static TUNNEL_MSS: HashMap<u32, MssClamp> = HashMap::with_max_entries(TUNNEL_INTERFACES_MAX, 0);

/// Masquerading LAN interfaces and their addresses, by ifindex.
#[map(name = "NAT_IFACES_V1")]
pub static NAT_INTERFACES: HashMap<u32, NatInterface> =
    HashMap::with_max_entries(NAT_INTERFACES_MAX, 0);

/// Destination networks whose traffic from the overlay is masqueraded (IPv4 mapped into IPv6).
#[map(name = "NAT_NETS_V1")]
pub static NAT_NETWORKS: LpmTrie<NatPrefix, u8> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

#[map(name = "NAT_SETTINGS_V1")]
pub static NAT_SETTINGS: Array<NatSettings> = Array::with_max_entries(1, 0);

/// Translations by original tuple (the peer's source, the LAN host), in buckets (nat_table.rs;
/// the controller sets the bucket count). Mmapable: the controller's sweep takes and writes
/// buckets in place, as the programs do.
#[map(name = "NAT_FWD_V3")]
pub static NAT_FORWARD: Array<NatBucket> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Translations by translated tuple (the masquerade address and port, the LAN host).
#[map(name = "NAT_REV_V3")]
pub static NAT_REVERSE: Array<NatBucket> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The two tables' bucket count and hash seed.
#[map(name = "NAT_SHAPE_V2")]
pub static NAT_TABLE_SHAPE: Array<TableShape> = Array::with_max_entries(1, 0);

#[map(name = "NAT_SCRATCH_V1")]
pub static NAT_SCRATCH: PerCpuArray<crate::nat::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Fragmented replies to masqueraded flows: their datagram (as it arrived) → the peer it goes to.
#[map(name = "NAT_FRAGS_V1")]
pub static NAT_FRAGMENTS: LruHashMap<FragKey, NatTarget> = LruHashMap::with_max_entries(8192, 0);

/// Interfaces (by ifindex) that accepted traffic may be forwarded to in TC: LAN interfaces
/// for tunnel traffic, tunnels for LAN traffic (`forward::TC_PORT_*`).
#[map(name = "LAN_PORTS_V1")]
pub static LAN_PORTS: HashMap<u32, u8> = HashMap::with_max_entries(NAT_INTERFACES_MAX, 0);

#[map(name = "WGU_PORTS_V1")]
pub static UNDERLAY_PORTS: HashMap<u16, u8> =
    HashMap::with_max_entries(gateway_common::underlay::PORTS_MAX, 0);

#[map(name = "WGU_SETTINGS_V1")]
pub static UNDERLAY_SETTINGS: Array<gateway_common::underlay::UnderlaySettings> =
    Array::with_max_entries(1, 0);

#[map(name = "WGU_SOURCES_V1")]
pub static UNDERLAY_SOURCES: LruHashMap<gateway_common::underlay::SourceKey, u64> =
    LruHashMap::with_max_entries(gateway_common::underlay::SOURCES_MAX, 0);

#[map(name = "WGU_CPU_V1")]
pub static UNDERLAY_CPU: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "WGU_STATS_V1")]
pub static UNDERLAY_STATS: PerCpuArray<gateway_common::stats::Counter> =
    PerCpuArray::with_max_entries(gateway_common::underlay::reason::SLOTS, 0);

/// Slot 0: the program that sees what the underlay filter passes (gateway_common::maps::XDP_NEXT).
#[map(name = "XDP_NEXT_V1")]
pub static XDP_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map(name = "TURN_CHANNELS_V1")]
pub static TURN_CHANNELS: HashMap<ChannelKey, ToPeer> =
    HashMap::with_max_entries(gateway_common::turn::BINDING_SLOTS, 0);

#[map(name = "TURN_PEERS_V1")]
pub static TURN_PEERS: HashMap<PeerKey, ToClient> =
    HashMap::with_max_entries(gateway_common::turn::BINDING_SLOTS, 0);

#[map(name = "TURN_CHANNELS6_V1")]
pub static TURN_CHANNELS6: HashMap<ChannelKey<[u8; 16]>, ToPeer<[u8; 16]>> =
    HashMap::with_max_entries(gateway_common::turn::BINDING_SLOTS, 0);

#[map(name = "TURN_PEERS6_V1")]
pub static TURN_PEERS6: HashMap<PeerKey<[u8; 16]>, ToClient<[u8; 16]>> =
    HashMap::with_max_entries(gateway_common::turn::BINDING_SLOTS, 0);

#[map(name = "TURN_STATS_V1")]
pub static TURN_STATS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(2 * gateway_common::turn::BINDING_SLOTS, 0);

#[map(name = "TURN_ALIVE_V1")]
pub static TURN_ALIVE: Array<u64> = Array::with_max_entries(1, 0);

/// The bindings' generation (gateway_common::maps::TURN_GENERATION).
#[map(name = "TURN_GEN_V1")]
pub static TURN_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU copies of the bindings the maps above gave (gateway_common::turn::CachedBinding):
/// a channel's packets find theirs with an array lookup and a compare, not a hash.
type ChannelCache<A> = PerCpuArray<CachedBinding<ChannelKey<A>, ToPeer<A>>>;
type PeerCache<A> = PerCpuArray<CachedBinding<PeerKey<A>, ToClient<A>>>;

#[map(name = "TURN_CH_CACHE_V1")]
pub static TURN_CHANNEL_CACHE: ChannelCache<[u8; 4]> =
    PerCpuArray::with_max_entries(BINDING_CACHE_SLOTS, 0);

#[map(name = "TURN_PEER_CACHE_V1")]
pub static TURN_PEER_CACHE: PeerCache<[u8; 4]> =
    PerCpuArray::with_max_entries(BINDING_CACHE_SLOTS, 0);

#[map(name = "TURN_CH6_CACHE_V1")]
pub static TURN_CHANNEL6_CACHE: ChannelCache<[u8; 16]> =
    PerCpuArray::with_max_entries(BINDING_CACHE_SLOTS, 0);

#[map(name = "TURN_PEER6_CACHE_V1")]
pub static TURN_PEER6_CACHE: PeerCache<[u8; 16]> =
    PerCpuArray::with_max_entries(BINDING_CACHE_SLOTS, 0);

/// The relay's per-flow shortcut: `TURN_FLOW_SLOTS` slots per possible CPU (the loader sizes
/// it), each CPU in its own range; mmapable only so that slots start on a page.
#[map(name = "TURN_FLOWS_V1")]
pub static TURN_FLOWS: Array<TurnFlow> = Array::with_max_entries(TURN_FLOW_SLOTS, BPF_F_MMAPABLE);

/// The tunnel's per-flow shortcut (tunnel_flow.rs): `TUNNEL_FLOW_SLOTS` slots per possible CPU
/// (the loader sizes it), each CPU in its own range; mmapable only so that slots start on a page.
#[map(name = "TUNNEL_FLOWS_V1")]
pub static TUNNEL_FLOWS: Array<TunnelFlow> =
    Array::with_max_entries(TUNNEL_FLOW_SLOTS, BPF_F_MMAPABLE);

/// Slot `slot` of this CPU's range in `map`, a plain array of `per_cpu` slots for each possible
/// CPU (the shortcuts' `LAN_FLOWS`, `TUNNEL_FLOWS`, `TURN_FLOWS`): as a per-CPU array without the load of the
/// value's per-CPU pointer first.
#[inline(always)]
pub fn this_cpus<T>(map: &'static Array<T>, per_cpu: u32, slot: u32) -> Option<*mut T> {
    // SAFETY: plain helper call.
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    map.get_ptr_mut(cpu * per_cpu + slot)
}

#[map(name = "TURN_REASONS_V1")]
pub static TURN_REASONS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(gateway_common::turn::reason::SLOTS, 0);
