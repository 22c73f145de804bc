//! Names of the maps the kernel programs define, in one place. The `_v1` suffix is bumped when a
//! layout changes, so a controller never reads a map of the wrong shape.

pub const ACTIVE_POLICY: &str = "ACTIVE_V1";
pub const SETTINGS: &str = "SETTINGS_V1";
pub const ACL_V4_ROOT: &str = "ACL4_ROOT_V1";
pub const ACL_V4_CHUNKS: &str = "ACL4_CHUNK_V1";
pub const ACL_V6: &str = "ACL6_V1";
pub const ACL_PORT_CLASS: &str = "ACL_PORT_V1";
pub const ACL_VERDICT: &str = "ACL_VERDICT_V1";
/// Pinned: flows outlive a restart of the controller. An array of buckets (`buckets`), with
/// its shape (bucket count, hash seed) beside it.
pub const CONNTRACK: &str = "CT_V2";
pub const CONNTRACK_SHAPE: &str = "CT_SHAPE_V1";
/// The conntrack table of earlier releases (an LRU hash map, keyed as the V2 table's ways
/// are): an adopting controller moves its flows into the V2 table and unpins it.
pub const CONNTRACK_V1_LRU: &str = "CT_V1";
pub const FRAGMENTS: &str = "FRAG_V1";
pub const STATS: &str = "STATS_V1";
/// Live flows and translations the flow tables gave up for new ones (`stats::evicted`).
pub const EVICTED: &str = "EVICTED_V1";
pub const RULE_STATS: &str = "RULE_STATS_V1";
pub const FORWARD_PORTS: &str = "FWD_PORTS_V1";
/// Not pinned: a cache of XDP forwarding's routes, learnt again in a second. (Its pinned
/// predecessor, FIB_CACHE_V1, keyed routes by destination alone; `Dataplane::load` unpins it.)
pub const FIB_CACHE: &str = "FIB_CACHE_V2";
pub const FIB_CACHE_V1_UNPINNED: &str = "FIB_CACHE_V1";
pub const FORWARD_SLOTS: &str = "FWD_SLOTS_V1";
/// Not pinned: a cache of TC forwarding's routes, learnt again in a second.
pub const TC_FIB_CACHE: &str = "TC_FIB_CACHE_V1";
/// Not pinned: a cache, valid only for the generation it was filled under.
pub const VERDICT_CACHE: &str = "VERDICT_CACHE_V1";
/// Not pinned: the LAN hook's per-flow shortcut (`lan_flow`), valid only for the policy
/// generation and the second it was filled for; `LAN_FLOW_SLOTS` entries per possible CPU.
pub const LAN_FLOWS: &str = "LAN_FLOWS_V1";
/// Not pinned: the tunnel's per-flow shortcut (`tunnel_flow`), valid only for the policy
/// generation and the tick it was filled in; `TUNNEL_FLOW_SLOTS` entries per possible CPU.
pub const TUNNEL_FLOWS: &str = "TUNNEL_FLOWS_V1";
/// Not pinned: written from the configuration whenever a tunnel interface is attached.
pub const TUNNEL_MSS: &str = "TUNNEL_MSS_V1";
/// Not pinned: written from the configuration when LAN interfaces are attached.
pub const NAT_INTERFACES: &str = "NAT_IFACES_V1";
pub const NAT_NETWORKS: &str = "NAT_NETS_V1";
pub const NAT_SETTINGS: &str = "NAT_SETTINGS_V1";
/// Pinned: translations outlive a restart of the controller, as flows do. Arrays of buckets
/// (`nat_table`) with twice the ways the configured translations need, with their shape
/// (bucket count, hash seed) beside them.
pub const NAT_FORWARD: &str = "NAT_FWD_V3";
pub const NAT_REVERSE: &str = "NAT_REV_V3";
pub const NAT_TABLE_SHAPE: &str = "NAT_SHAPE_V2";
/// The translation tables of earlier releases, keyed as the V3 tables' ways are: LRU hash maps
/// (V1), then bucket tables with one way per configured translation (V2, under the V1 shape).
/// An adopting controller moves their translations into the V3 tables and unpins them.
pub const NAT_FORWARD_V1_LRU: &str = "NAT_FWD_V1";
pub const NAT_REVERSE_V1_LRU: &str = "NAT_REV_V1";
pub const NAT_FORWARD_V2_TIGHT: &str = "NAT_FWD_V2";
pub const NAT_REVERSE_V2_TIGHT: &str = "NAT_REV_V2";
pub const NAT_TABLE_SHAPE_V1: &str = "NAT_SHAPE_V1";
pub const NAT_INTERFACES_MAX: u32 = 64;
/// Not pinned: the LAN interfaces tunnel traffic may be forwarded to in TC, by ifindex.
pub const LAN_PORTS: &str = "LAN_PORTS_V1";
pub const DEFAULT_NAT_ENTRIES: u32 = 128 * 1024;
/// Tunnel interfaces one data plane serves, at most.
pub const TUNNEL_INTERFACES_MAX: u32 = 64;

/// Layout of the pinned data plane (maps and links): bumped together with the `_V1` suffixes
/// whenever a map's key, value or meaning changes. A gateway adopts only a pinned data plane of
/// its own layout; any other is an explicit decision for the operator (`gateway detach`).
pub const LAYOUT_VERSION: &str = "v1";
/// Where `gateway run` pins its maps and links unless the config says otherwise: the data plane
/// outlives the process (crash, restart, upgrade) and keeps enforcing the last policy.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/gateway";
/// Subfolders of `<pin root>/<LAYOUT_VERSION>/`.
pub const PIN_MAPS_DIR: &str = "maps";
pub const PIN_LINKS_DIR: &str = "links";
/// The maps that carry state across a restart: the policy slots and the active one, settings,
/// flows, fragments, counters and forwarding state. (The per-CPU parse scratch is not state.)
pub const PINNED_MAPS: [&str; 19] = [
    ACTIVE_POLICY,
    SETTINGS,
    ACL_V4_ROOT,
    ACL_V4_CHUNKS,
    ACL_V6,
    ACL_PORT_CLASS,
    ACL_VERDICT,
    CONNTRACK,
    CONNTRACK_SHAPE,
    FRAGMENTS,
    STATS,
    EVICTED,
    RULE_STATS,
    FORWARD_PORTS,
    FORWARD_SLOTS,
    NAT_FORWARD,
    NAT_REVERSE,
    NAT_TABLE_SHAPE,
    XDP_NEXT,
];

/// The WireGuard-aware underlay filter (underlay.rs): protected ports, settings, per-source and
/// per-CPU rate state, counters by reason.
pub const UNDERLAY_PORTS: &str = "WGU_PORTS_V1";
pub const UNDERLAY_SETTINGS: &str = "WGU_SETTINGS_V1";
pub const UNDERLAY_SOURCES: &str = "WGU_SOURCES_V1";
pub const UNDERLAY_CPU: &str = "WGU_CPU_V1";
pub const UNDERLAY_STATS: &str = "WGU_STATS_V1";

/// What runs after the underlay filter on the frames it passes (slot 0, by tail call): the TURN
/// relay's program when a relay shares the filter's interfaces (`xdp.behind_gateway`). Pinned,
/// so that another process (the relay) can fill the slot; the relay empties it when it stops.
pub const XDP_NEXT: &str = "XDP_NEXT_V1";
pub const XDP_NEXT_SLOT: u32 = 0;

/// The TURN relay's fast path (turn.rs).
/// Not pinned: the relay's per-CPU route cache.
pub const TURN_ROUTES: &str = "TURN_ROUTES_V1";
pub const TURN_CHANNELS: &str = "TURN_CHANNELS_V1";
pub const TURN_PEERS: &str = "TURN_PEERS_V1";
pub const TURN_CHANNELS6: &str = "TURN_CHANNELS6_V1";
pub const TURN_PEERS6: &str = "TURN_PEERS6_V1";
pub const TURN_STATS: &str = "TURN_STATS_V1";
pub const TURN_REASONS: &str = "TURN_REASONS_V1";
/// Not pinned: the relay's per-flow shortcut (`turn_flow`), valid only for the bindings'
/// generation and the second it was filled for; `TURN_FLOW_SLOTS` entries per possible CPU.
pub const TURN_FLOWS: &str = "TURN_FLOWS_V1";
/// The relay's last sign of life (gateway_common::turn::ALIVE_WINDOW_NS).
pub const TURN_ALIVE: &str = "TURN_ALIVE_V1";
/// The bindings' generation: bumped by userspace after every change to the binding maps (see
/// gateway_common::turn::CachedBinding). Not pinned, like the maps it stands for.
pub const TURN_GENERATION: &str = "TURN_GEN_V1";

/// Program names (the function names in gateway-ebpf).
pub const PROG_XDP_LAN: &str = "xdp_lan";
pub const PROG_TC_LAN_INGRESS: &str = "tc_lan_ingress";
pub const PROG_TC_LAN_EGRESS: &str = "tc_lan_egress";
pub const PROG_TC_TUNNEL_INGRESS_ETH: &str = "tc_tunnel_ingress_eth";
pub const PROG_TC_TUNNEL_EGRESS_ETH: &str = "tc_tunnel_egress_eth";
pub const PROG_TC_TUNNEL_INGRESS_L3: &str = "tc_tunnel_ingress_l3";
pub const PROG_TC_TUNNEL_EGRESS_L3: &str = "tc_tunnel_egress_l3";
pub const PROG_XDP_WG_UNDERLAY: &str = "xdp_wg_underlay";
pub const PROG_TC_WG_UNDERLAY: &str = "tc_wg_underlay";
pub const PROG_XDP_TURN: &str = "xdp_turn";

/// Default capacities; the controller sizes maps from its configuration at load time.
pub const DEFAULT_CHUNKS_PER_SLOT: u32 = 16 * 1024;
pub const DEFAULT_VERDICT_ENTRIES: u32 = 256 * 1024;
pub const DEFAULT_V6_ENTRIES: u32 = 16 * 1024;
pub const DEFAULT_RULES_PER_SLOT: u32 = 16 * 1024;
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 256 * 1024;
pub const DEFAULT_FRAGMENT_ENTRIES: u32 = 16 * 1024;
