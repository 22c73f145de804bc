//! The kernel side from the controller's view: loads the embedded programs with maps sized from
//! the configuration, writes compiled policies into the inactive slot and flips to it, attaches
//! programs to interfaces, and reads counters back.

pub mod attach;
mod batch;
pub mod buckets;
pub mod carry;
mod mmap;
mod nat;
pub mod nat_sweep;
pub mod nat_table;
mod options;
pub mod pins;
pub mod sweep;
mod turn;
mod underlay;
pub mod xdp_features;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{ProgramError, SchedClassifier, Xdp},
    util::nr_cpus,
};
use gateway_common::{
    acl::{
        AddrClass, PORT_TABLES_PER_SLOT, PORTS, V4_CHUNK_ENTRIES, V4_ROOT_ENTRIES,
        V6_SLOT_PREFIX_BITS, V6KeyData, Verdict, VerdictKey,
    },
    maps as names,
    mss::MssClamp,
    settings::{ActivePolicy, FLAG_CONNTRACK, Settings, Timeouts},
    stats::{Counter, STATS_ENTRIES},
};
use ipnet::{Ipv4Net, Ipv6Net};

pub use attach::{Attachment, LinkKind, TunnelMss};
use mmap::MmapArray;
pub use nat::Masquerade;
pub use options::{LanAttach, LimitsConfig};
pub use sweep::SweepReport;
pub use turn::TurnChain;

use gateway_policy::{
    RuleInfo,
    compile::{CompileStats, Compiled},
};

/// The policy label under which everything policies no longer in force counted is reported.
pub const RETIRED_POLICIES: &str = "(retired)";

/// The kernel programs, built by build.rs and embedded: never loaded from a path.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// How long a retired slot is left alone before it is rewritten. Programs run with preemption
/// off for microseconds; a packet that read the old slot index is long done after this.
const SLOT_GRACE: Duration = Duration::from_millis(10);

/// Every program the data plane loads.
pub const PROGRAMS: [&str; 10] = [
    names::PROG_XDP_LAN,
    names::PROG_TC_LAN_INGRESS,
    names::PROG_TC_LAN_EGRESS,
    names::PROG_TC_TUNNEL_INGRESS_ETH,
    names::PROG_TC_TUNNEL_EGRESS_ETH,
    names::PROG_TC_TUNNEL_INGRESS_L3,
    names::PROG_TC_TUNNEL_EGRESS_L3,
    names::PROG_XDP_WG_UNDERLAY,
    names::PROG_TC_WG_UNDERLAY,
    names::PROG_XDP_TURN,
];

/// The most instructions the kernel's verifier walks for one program
/// (BPF_COMPLEXITY_LIMIT_INSNS) before it refuses the program with E2BIG.
pub const VERIFIER_INSN_LIMIT: u32 = 1_000_000;

/// Above this share of [`VERIFIER_INSN_LIMIT`] (in percent) the load warns: how far the
/// verifier walks depends on the kernel's version, and another kernel may walk further.
pub const VERIFIER_WARN_SHARE: f64 = 50.0;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub limits: LimitsConfig,
    pub conntrack: bool,
    pub timeouts: Timeouts,
    pub overlay_v4: Ipv4Net,
    pub overlay_v6: Option<Ipv6Net>,
    /// Pin root (maps and links outlive the process, and a pinned data plane is adopted);
    /// `None` for one that lives and dies with this process (tests, benchmarks).
    pub pin_root: Option<std::path::PathBuf>,
    /// How TC programs attach: tcx links where the kernel has them, or cls_bpf filters.
    pub tc_links: attach::TcLinks,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            limits: LimitsConfig::default(),
            conntrack: true,
            timeouts: Timeouts::default(),
            overlay_v4: "100.64.0.0/10".parse().expect("constant"),
            overlay_v6: None,
            pin_root: None,
            tc_links: attach::TcLinks::Auto,
        }
    }
}

#[derive(Default)]
struct SlotContents {
    /// The verdict entries and IPv6 prefixes the kernel maps hold for this slot, as written.
    verdicts: HashMap<VerdictKey, Verdict>,
    v6_prefixes: HashMap<(u8, [u8; 16]), AddrClass>,
    rules: Vec<RuleInfo>,
    stats: CompileStats,
    /// Adopted from a pinned data plane: the rule counters belong to policies this process never
    /// saw, and are zeroed whole before the slot is used.
    foreign_counters: bool,
}

/// What an apply did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub generation: u32,
    pub slot: u32,
    pub rules: usize,
    pub write_time: Duration,
    pub stats: CompileStats,
    /// What went into the verdict and IPv6 prefix maps for the slot.
    pub entries: EntryWrites,
}

/// What an apply did to the entries of its slot in the verdict and IPv6 prefix maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EntryWrites {
    /// New entries, and entries whose value changed.
    pub written: usize,
    /// Entries of the slot's previous policy that this one does not have.
    pub removed: usize,
    /// Entries that already held what this policy wants.
    pub unchanged: usize,
    /// Of the writes and removals, those done in batches (many per system call).
    pub batched: usize,
}

impl std::ops::Add for EntryWrites {
    type Output = EntryWrites;
    fn add(self, o: EntryWrites) -> EntryWrites {
        EntryWrites {
            written: self.written + o.written,
            removed: self.removed + o.removed,
            unchanged: self.unchanged + o.unchanged,
            batched: self.batched + o.batched,
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    limits: LimitsConfig,
    root: MmapArray,
    chunks: MmapArray,
    ports: MmapArray,
    active: ActivePolicy,
    slots: [SlotContents; 2],
    last_flip: Option<Instant>,
    /// Counters that policies still in force (in either slot) counted in slots since rewritten,
    /// by name, so their totals never go backwards.
    carried_rule_totals: HashMap<String, Counter>,
    /// What policies no longer in force counted, folded into one total: the per-name series
    /// stay bounded by the policies in force, however many come and go.
    retired_rule_total: Counter,
    /// Conntrack entries found by the last sweep (counting them takes a walk of the map).
    conntrack_entries: u64,
    /// Translations in force at the last sweep.
    nat_translations: u64,
    /// Ports of the masquerade's range in use toward its busiest destination, and the range's
    /// size, at the last sweep (a port is taken per destination: the busiest one runs out
    /// first).
    nat_busiest_destination: u64,
    nat_port_range: u64,
    attachments: Vec<Attachment>,
    /// Whether TC programs go into cls_bpf filters (see [`attach::TcLinks`]) rather than tcx
    /// links.
    tc_filters: bool,
    timeouts: Timeouts,
    pins: Option<pins::PinDir>,
    /// Generation of the pinned policy this process found in force, if it adopted one.
    adopted: Option<u32>,
    /// Instructions the kernel's verifier walked for each program (where it says).
    verified: Vec<(&'static str, Option<u32>)>,
}

impl Dataplane {
    /// Loads maps and programs (verifying them) without attaching anything.
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Dataplane> {
        let l = &opts.limits;
        // Flow tables get twice the ways the configured entries need: a bucket table gives up
        // an entry when its bucket is full, not when the table is. With half the configured
        // entries live a new one finds its bucket full about 2% of the time (a Poisson load of
        // 1 per 4-way bucket), with all of them 14%; an LRU map at its capacity gives one up
        // for every new entry.
        let roomy = |entries: u32| gateway_common::buckets::buckets_for(entries.saturating_mul(2));
        let nat_buckets = roomy(l.nat_entries);
        let conntrack_buckets = roomy(l.conntrack_entries);
        let sizes = [
            (names::ACL_V4_CHUNKS, 2 * l.acl_chunks * V4_CHUNK_ENTRIES),
            (names::ACL_V6, 2 * l.acl_v6_prefixes),
            (names::ACL_VERDICT, 2 * l.acl_verdicts),
            (names::CONNTRACK, conntrack_buckets),
            (names::FRAGMENTS, l.fragment_entries),
            (names::RULE_STATS, 2 * l.rules),
            (names::NAT_FORWARD, nat_buckets),
            (names::NAT_REVERSE, nat_buckets),
        ];
        // Not a configured capacity: the shortcuts' slots for every possible CPU (each CPU
        // indexes its own range by its id).
        let cpus = nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))? as u32;
        let ns_per_jiffy = sweep::monotonic_coarse_tick_ns();
        let mut loader = EbpfLoader::new();
        // The shortcuts keep their deadlines in jiffies (gateway_common::clock).
        loader.override_global("NS_PER_JIFFY", &ns_per_jiffy, true);
        for (name, entries) in sizes {
            loader.map_max_entries(name, entries);
        }
        loader.map_max_entries(
            names::LAN_FLOWS,
            gateway_common::lan_flow::LAN_FLOW_SLOTS * cpus,
        );
        loader.map_max_entries(
            names::TUNNEL_FLOWS,
            gateway_common::tunnel_flow::TUNNEL_FLOW_SLOTS * cpus,
        );
        loader.map_max_entries(
            names::TURN_FLOWS,
            gateway_common::turn_flow::TURN_FLOW_SLOTS * cpus,
        );
        let pins = opts.pin_root.as_deref().map(pins::PinDir::new);
        let mut adopt = false;
        let map_paths: Vec<(&str, std::path::PathBuf)> = match &pins {
            Some(p) => {
                adopt = p.prepare()?;
                // The route cache of earlier releases, pinned then: programs that still use it
                // hold it, and nothing of this release does.
                let _ = std::fs::remove_file(p.map(names::FIB_CACHE_V1_UNPINNED));
                names::PINNED_MAPS.iter().map(|n| (*n, p.map(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            // An existing pin is opened (the adopted data plane's map); a missing one is created
            // and pinned.
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object (are you root?)")?;
        if adopt {
            check_adopted_sizes(
                &ebpf,
                &sizes,
                pins.as_ref()
                    .map(|p| p.root())
                    .unwrap_or(std::path::Path::new("")),
            )?;
        }
        let mut verified = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            let prog = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
            // The verifier gives up with EAGAIN when a signal arrives for the loading process
            // while it works (a child exiting, a Ctrl-C); libbpf retries that, and so does this.
            let mut attempts = 0;
            loop {
                attempts += 1;
                let result = match &mut *prog {
                    aya::programs::Program::Xdp(p) => p.load(),
                    aya::programs::Program::SchedClassifier(p) => p.load(),
                    _ => Err(ProgramError::UnexpectedProgramType),
                };
                match result {
                    Err(ProgramError::LoadError { io_error, .. })
                        if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts < 5 => {}
                    other => break other.map_err(|e| verifier_error(name, e))?,
                }
            }
            let count = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count());
            if let Some(n) = count {
                let share = 100.0 * n as f64 / VERIFIER_INSN_LIMIT as f64;
                if share > VERIFIER_WARN_SHARE {
                    tracing::warn!(
                        "program {name}: the verifier walked {n} instructions, {share:.0}% of its \
                         {VERIFIER_INSN_LIMIT} limit (an older or stricter kernel may refuse it)"
                    );
                } else {
                    tracing::debug!("program {name}: the verifier walked {n} instructions");
                }
            }
            verified.push((name, count));
        }
        fn map<'e>(ebpf: &'e Ebpf, name: &str) -> anyhow::Result<&'e aya::maps::Map> {
            ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))
        }
        let root = MmapArray::new(map(&ebpf, names::ACL_V4_ROOT)?, size_of::<AddrClass>())?;
        let chunks = MmapArray::new(map(&ebpf, names::ACL_V4_CHUNKS)?, size_of::<AddrClass>())?;
        let ports = MmapArray::new(map(&ebpf, names::ACL_PORT_CLASS)?, size_of::<u32>())?;

        let settings_map: Array<_, Settings> =
            Array::try_from(ebpf.map(names::SETTINGS).context("settings map")?)?;
        let adopted_flags = if adopt {
            settings_map.get(&0, 0)?.flags
        } else {
            0
        };
        let mut settings = Settings {
            flags: if opts.conntrack { FLAG_CONNTRACK } else { 0 },
            chunks_per_slot: l.acl_chunks,
            rules_per_slot: l.rules,
            overlay_v4_net: u32::from(opts.overlay_v4.network()),
            overlay_v4_mask: u32::from(opts.overlay_v4.netmask()),
            timeouts: opts.timeouts,
            ..Default::default()
        };
        if let Some(v6) = opts.overlay_v6 {
            settings.overlay_v6_enabled = 1;
            settings.overlay_v6_net = v6.network().octets();
            settings.overlay_v6_mask = v6.netmask().octets();
        }
        // XDP forwarding stays as the adopted data plane had it until the config is applied.
        settings.flags |= adopted_flags & gateway_common::settings::FLAG_XDP_FORWARD;
        Array::<_, Settings>::try_from(ebpf.map_mut(names::SETTINGS).context("settings map")?)?
            .set(0, settings, 0)?;
        buckets::init_shape(
            ebpf.map_mut(names::NAT_TABLE_SHAPE)
                .context("NAT shape map")?,
            nat_buckets,
            "NAT",
        )?;
        buckets::init_shape(
            ebpf.map_mut(names::CONNTRACK_SHAPE)
                .context("conntrack shape map")?,
            conntrack_buckets,
            "conntrack",
        )?;
        if let Some(p) = &pins {
            // The first pass; `finish_carry_over` makes the second once the programs are
            // attached.
            carry::copy(&ebpf, p, &opts.timeouts);
        }
        let mut slots: [SlotContents; 2] = Default::default();
        let (active, adopted) = if adopt {
            // The pinned policy stays in force; this process learns what each slot holds so
            // its first apply writes the other slot cleanly.
            let active = Array::<_, ActivePolicy>::try_from(
                ebpf.map(names::ACTIVE_POLICY).context("active map")?,
            )?
            .get(&0, 0)?;
            adopt_slots(&ebpf, &mut slots)?;
            (active, Some(active.generation))
        } else {
            let active = ActivePolicy {
                slot: 0,
                generation: 0,
            };
            Array::<_, ActivePolicy>::try_from(
                ebpf.map_mut(names::ACTIVE_POLICY).context("active map")?,
            )?
            .set(0, active, 0)?;
            (active, None)
        };
        Ok(Dataplane {
            ebpf,
            limits: l.clone(),
            root,
            chunks,
            ports,
            active,
            slots,
            last_flip: adopted.map(|_| Instant::now()),
            carried_rule_totals: HashMap::new(),
            retired_rule_total: Counter::default(),
            conntrack_entries: 0,
            nat_translations: 0,
            nat_busiest_destination: 0,
            nat_port_range: 0,
            attachments: Vec::new(),
            tc_filters: opts.tc_links.filters(),
            timeouts: opts.timeouts,
            pins,
            adopted,
            verified,
        })
    }

    /// The instructions the kernel's verifier walked for each program it loaded, where the
    /// kernel says (5.16 and later): how close each program is to the verifier's limit
    /// ([`VERIFIER_INSN_LIMIT`]) on this kernel.
    pub fn verified_instructions(&self) -> &[(&'static str, Option<u32>)] {
        &self.verified
    }

    /// The generation of the pinned policy found in force at load, if this process adopted one.
    pub fn adopted(&self) -> Option<u32> {
        self.adopted
    }

    /// Where the data plane is pinned, if it is.
    pub fn pin_root(&self) -> Option<&std::path::Path> {
        self.pins.as_ref().map(|p| p.root())
    }

    pub fn generation(&self) -> u32 {
        self.active.generation
    }

    pub fn active_rules(&self) -> &[RuleInfo] {
        &self.slots[self.active.slot as usize].rules
    }

    pub fn active_stats(&self) -> CompileStats {
        self.slots[self.active.slot as usize].stats
    }

    /// Writes `c` into the inactive slot, then makes it active with one store.
    pub fn apply(&mut self, c: &Compiled) -> anyhow::Result<ApplyReport> {
        let started = Instant::now();
        let slot = 1 - self.active.slot;
        if let Some(flip) = self.last_flip {
            let since = flip.elapsed();
            if since < SLOT_GRACE {
                std::thread::sleep(SLOT_GRACE - since);
            }
        }
        let l = &self.limits;
        if c.v4_chunks.len() > (l.acl_chunks * V4_CHUNK_ENTRIES) as usize
            || c.rules.len() > l.rules as usize
            || c.verdicts.len() > l.acl_verdicts as usize
            || c.v6.len() > l.acl_v6_prefixes as usize
        {
            return Err(anyhow!(
                "compiled policy exceeds the configured limits ({} rules, {} verdicts, {} IPv4 chunks, {} IPv6 prefixes; limits {}, {}, {}, {})",
                c.rules.len(),
                c.verdicts.len(),
                c.v4_chunks.len() / V4_CHUNK_ENTRIES as usize,
                c.v6.len(),
                l.rules,
                l.acl_verdicts,
                l.acl_chunks,
                l.acl_v6_prefixes
            ));
        }
        self.root.write(slot * V4_ROOT_ENTRIES, &c.v4_root)?;
        self.chunks
            .write(slot * l.acl_chunks * V4_CHUNK_ENTRIES, &c.v4_chunks)?;
        self.ports
            .write(slot * PORT_TABLES_PER_SLOT * PORTS, &c.ports)?;
        let entries = self.write_verdicts(slot, c)? + self.write_v6(slot, c)?;
        self.retire_rule_counters(slot)?;
        self.slots[slot as usize].rules = c.rules.clone();
        self.slots[slot as usize].stats = c.stats;
        self.fold_retired_rule_totals();

        let next = ActivePolicy {
            slot,
            generation: self.active.generation.wrapping_add(1),
        };
        Array::<_, ActivePolicy>::try_from(
            self.ebpf
                .map_mut(names::ACTIVE_POLICY)
                .context("active map")?,
        )?
        .set(0, next, 0)?;
        self.active = next;
        self.last_flip = Some(Instant::now());
        Ok(ApplyReport {
            generation: next.generation,
            slot,
            rules: c.rules.len(),
            write_time: started.elapsed(),
            stats: c.stats,
            entries,
        })
    }

    /// Replaces the slot's verdict entries (the slot is inactive until an apply completes).
    fn write_verdicts(&mut self, slot: u32, c: &Compiled) -> anyhow::Result<EntryWrites> {
        let mut map: BpfHashMap<_, VerdictKey, Verdict> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::ACL_VERDICT)
                .context("verdict map")?,
        )?;
        let written = &mut self.slots[slot as usize].verdicts;
        let wanted: HashMap<VerdictKey, Verdict> = c
            .verdicts
            .iter()
            .map(|(k, v)| {
                (
                    VerdictKey {
                        slot: slot as u8,
                        ..*k
                    },
                    *v,
                )
            })
            .collect();
        replace_entries(written, &wanted, &mut VerdictSlot(&mut map))
    }

    /// As [`Dataplane::write_verdicts`], for the IPv6 prefixes.
    fn write_v6(&mut self, slot: u32, c: &Compiled) -> anyhow::Result<EntryWrites> {
        let mut trie: LpmTrie<_, V6KeyData, AddrClass> =
            LpmTrie::try_from(self.ebpf.map_mut(names::ACL_V6).context("v6 map")?)?;
        let written = &mut self.slots[slot as usize].v6_prefixes;
        let wanted: HashMap<(u8, [u8; 16]), AddrClass> =
            c.v6.iter()
                .map(|(l, a, class)| ((*l, *a), *class))
                .collect();
        replace_entries(
            written,
            &wanted,
            &mut V6Slot {
                trie: &mut trie,
                slot,
            },
        )
    }

    /// Moves the counters of the policy that last used `slot` into the carried totals and zeroes
    /// them for the new policy.
    fn retire_rule_counters(&mut self, slot: u32) -> anyhow::Result<()> {
        let rules = std::mem::take(&mut self.slots[slot as usize].rules);
        let per_slot = self.limits.rules;
        let cpus = nr_cpus().map_err(|(_, e)| e)?;
        let mut map: PerCpuArray<_, Counter> = PerCpuArray::try_from(
            self.ebpf
                .map_mut(names::RULE_STATS)
                .context("rule stats map")?,
        )?;
        if std::mem::take(&mut self.slots[slot as usize].foreign_counters) {
            for i in 0..per_slot {
                map.set(
                    slot * per_slot + i,
                    PerCpuValues::try_from(vec![Counter::default(); cpus])?,
                    0,
                )?;
            }
            return Ok(());
        }
        for (i, rule) in rules.iter().enumerate() {
            let index = slot * per_slot + i as u32;
            let sum = sum_counters(&map.get(&index, 0)?);
            let total = self
                .carried_rule_totals
                .entry(rule.name.clone())
                .or_default();
            total.packets += sum.packets;
            total.bytes += sum.bytes;
            map.set(
                index,
                PerCpuValues::try_from(vec![Counter::default(); cpus])?,
                0,
            )?;
        }
        Ok(())
    }

    /// Counters by (hook, reason) index, summed over CPUs.
    pub fn verdict_counters(&self) -> anyhow::Result<Vec<Counter>> {
        let map: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.ebpf.map(names::STATS).context("stats map")?)?;
        (0..STATS_ENTRIES)
            .map(|i| Ok(sum_counters(&map.get(&i, 0)?)))
            .collect()
    }

    /// Takes over what an earlier release's flow tables of another layout gained since this
    /// process loaded (its programs kept running on them until this process's replaced them),
    /// then unpins them ([`carry`]). Call once every interface runs this process's programs.
    pub fn finish_carry_over(&self) -> anyhow::Result<()> {
        match &self.pins {
            Some(p) => carry::finish(&self.ebpf, p, &self.timeouts),
            None => Ok(()),
        }
    }

    /// Live entries the flow tables gave up for new ones, summed over CPUs: (table, entry,
    /// count) per `gateway_common::stats::evicted::NAMES`.
    pub fn evictions(&self) -> anyhow::Result<Vec<(&'static str, &'static str, u64)>> {
        use gateway_common::stats::evicted;
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::EVICTED).context("evicted map")?)?;
        (0..evicted::SLOTS)
            .map(|i| {
                let (table, entry) = evicted::NAMES[i as usize];
                Ok((table, entry, map.get(&i, 0)?.iter().sum()))
            })
            .collect()
    }

    /// Folds the carried totals of policies in neither slot into the retired total.
    fn fold_retired_rule_totals(&mut self) {
        let in_force: std::collections::HashSet<&str> = self
            .slots
            .iter()
            .flat_map(|s| s.rules.iter().map(|r| r.name.as_str()))
            .collect();
        let gone: Vec<String> = self
            .carried_rule_totals
            .keys()
            .filter(|n| !in_force.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(c) = self.carried_rule_totals.remove(&name) {
                self.retired_rule_total.packets += c.packets;
                self.retired_rule_total.bytes += c.bytes;
            }
        }
    }

    /// Counters per policy name for the policies in either slot (the active one, and the
    /// previous one until the next apply rewrites its slot), with what they counted before;
    /// then [`RETIRED_POLICIES`] for everything policies no longer in force counted.
    pub fn rule_counters(&self) -> anyhow::Result<Vec<(String, Counter)>> {
        let map: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.ebpf.map(names::RULE_STATS).context("rule stats map")?)?;
        let mut totals = self.carried_rule_totals.clone();
        for slot in 0..2u32 {
            for (i, rule) in self.slots[slot as usize].rules.iter().enumerate() {
                let c = sum_counters(&map.get(&(slot * self.limits.rules + i as u32), 0)?);
                let t = totals.entry(rule.name.clone()).or_default();
                t.packets += c.packets;
                t.bytes += c.bytes;
            }
        }
        let mut out: Vec<_> = totals.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        if self.retired_rule_total != Counter::default() {
            out.push((RETIRED_POLICIES.to_string(), self.retired_rule_total));
        }
        Ok(out)
    }

    /// (entries in use, capacity) of the maps that fill up. Cheap: the conntrack figure is the
    /// last sweep's count, the others are known from the last apply.
    pub fn fill_levels(&self) -> Vec<(&'static str, u64, u64)> {
        let s = &self.slots[self.active.slot as usize];
        let l = &self.limits;
        vec![
            (
                "conntrack",
                self.conntrack_entries,
                l.conntrack_entries as u64,
            ),
            (
                "acl_verdicts",
                s.verdicts.len() as u64,
                l.acl_verdicts as u64,
            ),
            ("acl_chunks", s.stats.v4_chunks as u64, l.acl_chunks as u64),
            (
                "acl_v6_prefixes",
                s.v6_prefixes.len() as u64,
                l.acl_v6_prefixes as u64,
            ),
            // As the last sweep counted them: no map walk on a scrape.
            (
                "nat_translations",
                self.nat_translations,
                l.nat_entries as u64,
            ),
        ]
    }

    /// The masquerade's ports in use toward its busiest destination, and the port range's size,
    /// as the last sweep counted them; None before a sweep found a range (masquerade off).
    pub fn nat_port_occupancy(&self) -> Option<(u64, u64)> {
        (self.nat_port_range > 1).then_some((self.nat_busiest_destination, self.nat_port_range))
    }

    /// Lets accepted traffic from the tunnel be forwarded in TC to these LAN interfaces, and
    /// accepted traffic arriving on a LAN interface attached at TC to these tunnels (FIB lookup,
    /// the kernel's neighbour entry, redirect), skipping the kernel's IP forwarding. (The XDP
    /// LAN program leaves LAN → tunnel to the kernel: no tunnel device takes XDP redirects, see
    /// [`xdp_features::takes_redirects`].)
    pub fn enable_tc_forward(&mut self, lan: &[String], tunnels: &[String]) -> anyhow::Result<()> {
        use gateway_common::forward::{TC_PORT_LAN, TC_PORT_TUNNEL};
        let mut ports: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::LAN_PORTS)
                .context("LAN ports map")?,
        )?;
        for name in lan {
            ports.insert(attach::if_index(name)?, TC_PORT_LAN, 0)?;
        }
        for name in tunnels {
            ports.insert(attach::if_index(name)?, TC_PORT_TUNNEL, 0)?;
        }
        let mut map: Array<_, Settings> =
            Array::try_from(self.ebpf.map_mut(names::SETTINGS).context("settings map")?)?;
        let mut s = map.get(&0, 0)?;
        s.flags |= gateway_common::settings::FLAG_TC_FORWARD;
        map.set(0, s, 0)?;
        Ok(())
    }

    /// Lets accepted LAN traffic be forwarded in XDP to these interfaces (each gets a slot in
    /// the forward-ports devmap; the programs find it by ifindex on a FIB cache miss). Each slot
    /// also says whether the interface takes multi-buffer (jumbo) frames redirected in XDP
    /// ([`xdp_features`]); the programs hand such frames for the others to the kernel, and the
    /// log names those interfaces.
    pub fn enable_xdp_forward(&mut self, interfaces: &[String]) -> anyhow::Result<()> {
        use gateway_common::forward::FORWARD_PORTS_MAX;
        anyhow::ensure!(
            interfaces.len() <= FORWARD_PORTS_MAX as usize,
            "at most {FORWARD_PORTS_MAX} interfaces can forward in XDP"
        );
        let indexes: Vec<u32> = interfaces
            .iter()
            .map(|n| attach::if_index(n))
            .collect::<anyhow::Result<_>>()?;
        let mut ports: aya::maps::DevMap<_> = aya::maps::DevMap::try_from(
            self.ebpf
                .map_mut(names::FORWARD_PORTS)
                .context("forward ports map")?,
        )?;
        for (slot, (index, name)) in indexes.iter().zip(interfaces).enumerate() {
            ports
                .set(slot as u32, *index, None, 0)
                .map_err(|e| anyhow!("adding {name} to the XDP forward ports: {e}"))?;
        }
        let mut slots: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::FORWARD_SLOTS)
                .context("forward slots map")?,
        )?;
        // Interfaces an adopted data plane forwarded to and this configuration does not.
        let stale: Vec<u32> = slots
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !indexes.contains(k))
            .collect();
        for k in stale {
            slots.remove(&k)?;
        }
        for (slot, (index, name)) in indexes.iter().zip(interfaces).enumerate() {
            // Unanswered, the safe side: jumbo frames toward it go to the kernel stack.
            let takes = xdp_features::takes_multi_buffer_redirects(*index).unwrap_or_else(|e| {
                tracing::warn!(
                    interface = %name,
                    "cannot read the interface's XDP features ({e:#}): multi-buffer frames toward it go to the kernel stack"
                );
                false
            });
            let flag = if takes {
                gateway_common::forward::SLOT_TAKES_MULTI_BUFFER
            } else {
                tracing::info!(
                    interface = %name,
                    "the kernel does not redirect multi-buffer XDP frames (a jumbo MTU's, larger than a page) \
                     to this interface (its driver lacks NDO_XMIT_SG, or the kernel is older than 6.3): \
                     such frames toward it go to the kernel stack, counted as left_to_kernel"
                );
                0
            };
            slots.insert(index, slot as u32 | flag, 0)?;
        }
        let mut map: Array<_, Settings> =
            Array::try_from(self.ebpf.map_mut(names::SETTINGS).context("settings map")?)?;
        let mut s = map.get(&0, 0)?;
        s.flags |= gateway_common::settings::FLAG_XDP_FORWARD;
        map.set(0, s, 0)?;
        Ok(())
    }

    /// Turns connection tracking on or off (the benchmarks measure both paths).
    pub fn set_conntrack(&mut self, on: bool) -> anyhow::Result<()> {
        let mut map: Array<_, Settings> =
            Array::try_from(self.ebpf.map_mut(names::SETTINGS).context("settings map")?)?;
        let mut s = map.get(&0, 0)?;
        s.flags = if on {
            s.flags | FLAG_CONNTRACK
        } else {
            s.flags & !FLAG_CONNTRACK
        };
        map.set(0, s, 0)?;
        Ok(())
    }

    /// Sets (or with `None` removes) the MSS clamp of TCP SYNs crossing a tunnel interface.
    pub fn set_mss_clamp(&mut self, iface: &str, clamp: Option<MssClamp>) -> anyhow::Result<()> {
        let ifindex = attach::if_index(iface)?;
        let mut map: BpfHashMap<_, u32, MssClamp> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::TUNNEL_MSS)
                .context("tunnel MSS map")?,
        )?;
        match clamp {
            Some(c) if c != MssClamp::default() => map
                .insert(ifindex, c, 0)
                .with_context(|| format!("MSS clamp for {iface}"))?,
            _ => match map.remove(&ifindex) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("MSS clamp for {iface}")),
            },
        }
        Ok(())
    }

    /// The MSS clamp in force on an interface.
    pub fn mss_clamp(&self, iface: &str) -> anyhow::Result<Option<MssClamp>> {
        let ifindex = attach::if_index(iface)?;
        let map: BpfHashMap<_, u32, MssClamp> =
            BpfHashMap::try_from(self.ebpf.map(names::TUNNEL_MSS).context("tunnel MSS map")?)?;
        match map.get(&ifindex, 0) {
            Ok(c) => Ok(Some(c)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Kernel memory charged to the policy maps (both slots), from /proc/self/fdinfo.
    pub fn policy_map_memory(&self) -> anyhow::Result<u64> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let mut total = 0;
        for name in [
            names::ACL_V4_ROOT,
            names::ACL_V4_CHUNKS,
            names::ACL_V6,
            names::ACL_PORT_CLASS,
            names::ACL_VERDICT,
        ] {
            let map = self.ebpf.map(name).with_context(|| format!("map {name}"))?;
            let fd = match map {
                aya::maps::Map::Array(d)
                | aya::maps::Map::HashMap(d)
                | aya::maps::Map::LpmTrie(d) => d.fd().as_fd().as_raw_fd(),
                _ => continue,
            };
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            total += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total)
    }

    pub fn xdp_program(&mut self) -> anyhow::Result<&mut Xdp> {
        self.xdp_program_named(names::PROG_XDP_LAN)
    }

    pub fn xdp_program_named(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        let p = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name}"))?;
        Ok(p.try_into()?)
    }

    pub fn tc_program(&mut self, name: &str) -> anyhow::Result<&mut SchedClassifier> {
        let p = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name}"))?;
        Ok(p.try_into()?)
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }
}

/// One slot's entries in a kernel map, written in batches where the kernel can and one by one
/// for what a batch left (see [`batch`]).
trait SlotMap<K, V> {
    /// How many of `keys`, from the start, a batch removed.
    fn remove_batch(&mut self, keys: &[K]) -> usize;
    /// How many of the entries, from the start, a batch wrote.
    fn insert_batch(&mut self, keys: &[K], values: &[V]) -> usize;
    fn remove(&mut self, key: &K) -> anyhow::Result<()>;
    fn insert(&mut self, key: &K, value: &V) -> anyhow::Result<()>;
}

/// Makes a map's entries for one slot exactly `wanted`, given `written`: what the map holds for
/// that slot. Stale entries go first, so the slot never needs more than its share of the map;
/// an entry that already holds the wanted value is not written again (the inactive slot holds
/// the policy before last: a map that changed peers but not policy writes nothing). A kernel map
/// update either happens whole or not at all, so `written` follows each one that succeeded and
/// a failure part way leaves it exact: the next call finishes the job.
fn replace_entries<K: Copy + Eq + std::hash::Hash, V: Copy + PartialEq>(
    written: &mut HashMap<K, V>,
    wanted: &HashMap<K, V>,
    map: &mut impl SlotMap<K, V>,
) -> anyhow::Result<EntryWrites> {
    let stale: Vec<K> = written
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    let removed_in_batch = map.remove_batch(&stale);
    for (i, k) in stale.iter().enumerate() {
        if i >= removed_in_batch {
            map.remove(k)?;
        }
        written.remove(k);
    }
    let (keys, values): (Vec<K>, Vec<V>) = wanted
        .iter()
        .filter(|(k, v)| written.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .unzip();
    let written_in_batch = map.insert_batch(&keys, &values);
    for (i, (k, v)) in keys.iter().zip(&values).enumerate() {
        if i >= written_in_batch {
            map.insert(k, v)?;
        }
        written.insert(*k, *v);
    }
    Ok(EntryWrites {
        written: keys.len(),
        removed: stale.len(),
        unchanged: wanted.len() - keys.len(),
        batched: removed_in_batch + written_in_batch,
    })
}

struct VerdictSlot<'a, 'm>(&'a mut BpfHashMap<&'m mut aya::maps::MapData, VerdictKey, Verdict>);

impl SlotMap<VerdictKey, Verdict> for VerdictSlot<'_, '_> {
    fn remove_batch(&mut self, keys: &[VerdictKey]) -> usize {
        batch::delete(map_fd(self.0), keys)
    }
    fn insert_batch(&mut self, keys: &[VerdictKey], values: &[Verdict]) -> usize {
        batch::update(map_fd(self.0), keys, values)
    }
    fn remove(&mut self, key: &VerdictKey) -> anyhow::Result<()> {
        gone(self.0.remove(key)).context("removing a stale verdict")
    }
    fn insert(&mut self, key: &VerdictKey, value: &Verdict) -> anyhow::Result<()> {
        self.0.insert(key, value, 0).context("writing a verdict")
    }
}

/// The IPv6 prefixes of one slot: (prefix length, address) under the slot's key prefix.
struct V6Slot<'a, 'm> {
    trie: &'a mut LpmTrie<&'m mut aya::maps::MapData, V6KeyData, AddrClass>,
    slot: u32,
}

impl V6Slot<'_, '_> {
    fn key(&self, (len, addr): &(u8, [u8; 16])) -> Key<V6KeyData> {
        Key::new(
            V6_SLOT_PREFIX_BITS + *len as u32,
            V6KeyData::new(self.slot, *addr),
        )
    }
}

impl SlotMap<(u8, [u8; 16]), AddrClass> for V6Slot<'_, '_> {
    fn remove_batch(&mut self, keys: &[(u8, [u8; 16])]) -> usize {
        let keys: Vec<Key<V6KeyData>> = keys.iter().map(|k| self.key(k)).collect();
        batch::delete(map_fd(self.trie), &keys)
    }
    fn insert_batch(&mut self, keys: &[(u8, [u8; 16])], values: &[AddrClass]) -> usize {
        let keys: Vec<Key<V6KeyData>> = keys.iter().map(|k| self.key(k)).collect();
        batch::update(map_fd(self.trie), &keys, values)
    }
    fn remove(&mut self, key: &(u8, [u8; 16])) -> anyhow::Result<()> {
        let key = self.key(key);
        gone(self.trie.remove(&key)).context("removing a stale IPv6 prefix")
    }
    fn insert(&mut self, key: &(u8, [u8; 16]), value: &AddrClass) -> anyhow::Result<()> {
        let key = self.key(key);
        self.trie
            .insert(&key, value, 0)
            .context("writing an IPv6 prefix")
    }
}

fn map_fd<K: aya::Pod, V>(map: &impl aya::maps::IterableMap<K, V>) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd as _;
    map.map().fd().as_fd()
}

/// A removal that finds no entry has nothing left to do.
fn gone(removed: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match removed {
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// An adopted data plane must have been sized as this configuration sizes it: the programs
/// index the maps by the configured capacities.
fn check_adopted_sizes(
    ebpf: &Ebpf,
    sizes: &[(&str, u32)],
    root: &std::path::Path,
) -> anyhow::Result<()> {
    for (name, want) in sizes {
        let map = ebpf.map(name).with_context(|| format!("map {name}"))?;
        let data = match map {
            aya::maps::Map::Array(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::LpmTrie(d)
            | aya::maps::Map::PerCpuArray(d) => d,
            _ => continue,
        };
        let have = data.info()?.max_entries();
        if have != *want {
            anyhow::bail!(
                "the data plane pinned under {} was sized by other limits ({name} holds {have} entries, this configuration asks \
                 for {want}); it keeps enforcing as it is. Restore the limits it was started with, or run `gateway detach` first",
                root.display()
            );
        }
    }
    Ok(())
}

/// Reads which verdicts and IPv6 prefixes each slot of an adopted data plane holds.
fn adopt_slots(ebpf: &Ebpf, slots: &mut [SlotContents; 2]) -> anyhow::Result<()> {
    let verdicts: BpfHashMap<_, VerdictKey, Verdict> =
        BpfHashMap::try_from(ebpf.map(names::ACL_VERDICT).context("verdict map")?)?;
    for entry in verdicts.iter() {
        let (key, verdict) = entry?;
        slots[(key.slot & 1) as usize].verdicts.insert(key, verdict);
    }
    let trie: LpmTrie<_, V6KeyData, AddrClass> =
        LpmTrie::try_from(ebpf.map(names::ACL_V6).context("v6 map")?)?;
    for entry in trie.iter() {
        let (key, class) = entry?;
        let data = key.data();
        let slot = u32::from_be_bytes(data.slot_be) & 1;
        slots[slot as usize].v6_prefixes.insert(
            ((key.prefix_len() - V6_SLOT_PREFIX_BITS) as u8, data.addr),
            class,
        );
    }
    for s in slots.iter_mut() {
        s.foreign_counters = true;
    }
    Ok(())
}

fn sum_counters(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |a, c| Counter {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}

fn verifier_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            anyhow!(
                "the kernel refused program {name}: {io_error}\nverifier log (tail):\n{}",
                tail(&verifier_log.to_string(), 60)
            )
        }
        other => anyhow!("loading program {name}: {other}"),
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use anyhow::bail;

    use super::{EntryWrites, SlotMap, replace_entries};

    /// A map that fails its `fail_at`-th write and all after it, as a full or memory-starved
    /// kernel map would (the entry keeps what it held); refuses to remove what it does not
    /// hold; and whose batches stop after `batch_limit` entries (0: no batch operation), or at
    /// a failing entry, as the kernel's do.
    struct FlakyMap {
        entries: HashMap<u32, u32>,
        writes: usize,
        fail_at: Option<usize>,
        batch_limit: usize,
    }

    impl FlakyMap {
        fn new(batch_limit: usize) -> FlakyMap {
            FlakyMap {
                entries: HashMap::new(),
                writes: 0,
                fail_at: None,
                batch_limit,
            }
        }

        fn replace(
            &mut self,
            written: &mut HashMap<u32, u32>,
            wanted: &HashMap<u32, u32>,
        ) -> anyhow::Result<EntryWrites> {
            replace_entries(written, wanted, self)
        }
    }

    impl SlotMap<u32, u32> for FlakyMap {
        fn remove_batch(&mut self, keys: &[u32]) -> usize {
            let mut done = 0;
            for k in keys.iter().take(self.batch_limit) {
                if self.remove(k).is_err() {
                    break;
                }
                done += 1;
            }
            done
        }
        fn insert_batch(&mut self, keys: &[u32], values: &[u32]) -> usize {
            let mut done = 0;
            for (k, v) in keys.iter().zip(values).take(self.batch_limit) {
                if self.insert(k, v).is_err() {
                    break;
                }
                done += 1;
            }
            done
        }
        fn remove(&mut self, key: &u32) -> anyhow::Result<()> {
            match self.entries.remove(key) {
                Some(_) => Ok(()),
                None => bail!("no entry {key}"),
            }
        }
        fn insert(&mut self, key: &u32, value: &u32) -> anyhow::Result<()> {
            self.writes += 1;
            if self.fail_at.is_some_and(|at| self.writes >= at) {
                bail!("write {} refused", self.writes);
            }
            self.entries.insert(*key, *value);
            Ok(())
        }
    }

    fn entries(keys: std::ops::Range<u32>, value: u32) -> HashMap<u32, u32> {
        keys.map(|k| (k, value)).collect()
    }

    #[test]
    fn a_failed_write_leaves_an_exact_record_the_next_write_finishes_from() {
        // Without batches, with batches that stop short, with batches that take everything.
        for batch_limit in [0, 3, usize::MAX] {
            let mut map = FlakyMap::new(batch_limit);
            let mut written = HashMap::new();
            map.replace(&mut written, &entries(0..10, 1)).unwrap();
            // Half of a very different policy goes in before a write fails (in a batch, it
            // stops the batch, and the same write fails again one by one).
            map.fail_at = Some(map.writes + 6);
            assert!(map.replace(&mut written, &entries(100..120, 1)).is_err());
            assert_eq!(written, map.entries, "the record follows the map");
            assert_eq!(
                map.entries.len(),
                5,
                "stale entries removed, five new ones written: {:?}",
                map.entries
            );
            // The next write to the slot leaves exactly its own entries, and removes nothing
            // twice.
            map.fail_at = None;
            map.replace(&mut written, &entries(200..203, 1)).unwrap();
            assert_eq!(map.entries, entries(200..203, 1));
            assert_eq!(written, map.entries);
        }
    }

    #[test]
    fn only_entries_that_change_are_written() {
        let mut map = FlakyMap::new(64);
        let mut written = HashMap::new();
        map.replace(&mut written, &entries(0..1000, 1)).unwrap();
        assert_eq!(map.writes, 1000);
        // Ten values change, ten entries go, five come: fifteen writes (and ten removals).
        let mut wanted = entries(10..1000, 1);
        wanted.extend(entries(500..510, 2));
        wanted.extend(entries(2000..2005, 1));
        let report = map.replace(&mut written, &wanted).unwrap();
        assert_eq!(map.writes, 1015);
        assert_eq!(
            report,
            EntryWrites {
                written: 15,
                removed: 10,
                unchanged: 980,
                batched: 25
            }
        );
        assert_eq!(map.entries, wanted);
        assert_eq!(written, wanted);
        // The same again: nothing to write.
        let report = map.replace(&mut written, &wanted).unwrap();
        assert_eq!(map.writes, 1015);
        assert_eq!((report.written, report.removed), (0, 0));
    }
}
