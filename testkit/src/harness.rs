//! A loaded data plane with a policy, and runs of its programs through BPF_PROG_TEST_RUN, for
//! the privileged tests: verdicts, the exact counters that moved, bytes out.

use aya::{
    maps::PerCpuArray,
    programs::{ProgramError, TestRun, TestRunOptions, TestRunResult},
};
use gateway_common::{
    lan_flow::LanFlow,
    maps as names,
    stats::{
        self, Counter, HOOK_LAN, HOOK_NAMES, HOOK_TUNNEL_EGRESS, HOOK_TUNNEL_INGRESS, REASON_NAMES,
        reason,
    },
    tunnel_flow::TunnelFlow,
    turn_flow::TurnFlow,
};
use gateway_dataplane::{Dataplane, LoadOptions, nat_table::Direction};
use gateway_policy::{
    self as policy, PolicySet,
    compile::{self, Compiled, Limits},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

pub struct Harness {
    pub dp: Dataplane,
    /// The policy slot the last apply made active.
    pub slot: u32,
    /// Rule-counter entries per slot (the loaded `limits.rules`).
    pub rules_per_slot: u32,
}

/// Ethernet header length: the smallest frame BPF_PROG_TEST_RUN accepts as packet data.
pub const ETH_HLEN: usize = 14;

impl Harness {
    pub fn new(policy_yaml: &str) -> Harness {
        Self::with_options(policy_yaml, LoadOptions::default())
    }

    pub fn with_options(policy_yaml: &str, opts: LoadOptions) -> Harness {
        let rules_per_slot = opts.limits.rules;
        let dp = Dataplane::load(&opts).expect("load data plane (run the tests as root)");
        let mut h = Harness {
            dp,
            slot: 0,
            rules_per_slot,
        };
        h.apply(policy_yaml);
        h
    }

    pub fn apply(&mut self, policy_yaml: &str) {
        let set = policy::parse_str(policy_yaml, "test.yaml").expect("test policy");
        self.apply_set(&set);
    }

    /// Compiles and applies a policy set; returns the compiled tables (for `Compiled::lookup`).
    pub fn apply_set(&mut self, set: &PolicySet) -> Compiled {
        let compiled = compile::compile(set, &Limits::default()).expect("compile");
        let report = self.dp.apply(&compiled).expect("apply");
        self.slot = report.slot;
        compiled
    }

    /// Runs the LAN XDP program once; returns the XDP action.
    pub fn xdp(&mut self, packet: &[u8]) -> u32 {
        self.try_xdp(packet).expect("test run")
    }

    /// Like [`Harness::xdp`], but returns the kernel's refusal as an error. BPF_PROG_TEST_RUN
    /// refuses frames shorter than an Ethernet header for XDP and TC alike (and a driver never
    /// hands a program one), so those never reach the parser.
    pub fn try_xdp(&mut self, packet: &[u8]) -> Result<u32, ProgramError> {
        let prog = self.dp.xdp_program().expect("xdp program");
        run_out(prog, packet, None).map(|(action, _)| action)
    }

    /// Runs the LAN XDP program once; returns the XDP action and the frame as it left.
    pub fn xdp_bytes(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        let prog = self.dp.xdp_program().expect("xdp program");
        run_out(prog, packet, None).expect("test run")
    }

    /// Runs the LAN XDP program once on a frame that arrived on interface `ifindex` (of the
    /// calling thread's namespace), as the forwarding path's FIB lookups need; returns the XDP
    /// action and the frame as it left.
    pub fn xdp_bytes_on(&mut self, packet: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end (the frame's length, as the test run requires),
        // data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let prog = self.dp.xdp_program().expect("xdp program");
        run_out(prog, packet, Some(&ctx)).expect("test run")
    }

    /// The LAN hook's per-flow shortcut slot at `index` (CPU × LAN_FLOW_SLOTS + slot).
    pub fn lan_flow(&self, index: u32) -> LanFlow {
        let map: aya::maps::Array<_, LanFlow> =
            aya::maps::Array::try_from(self.dp.ebpf().map(names::LAN_FLOWS).expect("lan flows"))
                .expect("lan flows map type");
        map.get(&index, 0).expect("lan flow slot")
    }

    /// In the calling thread's namespace ([`crate::netns::tunnel_and_lan`]): l0 masquerades
    /// with its address 198.18.10.1, and the tunnel's TC program forwards from t0 out of it.
    /// Returns t0's index (the test runs' arrival interface).
    pub fn forward_from_t0_masquerading_on_l0(&mut self) -> u32 {
        let (t0, l0) = (
            gateway_dataplane::attach::if_index("t0").expect("t0"),
            gateway_dataplane::attach::if_index("l0").expect("l0"),
        );
        self.dp
            .set_nat_interface(
                l0,
                gateway_common::nat::NatInterface {
                    v4: [198, 18, 10, 1],
                    has_v4: 1,
                    ..Default::default()
                },
            )
            .expect("masquerade address");
        self.dp
            .enable_tc_forward(&["l0".to_string()], &["t0".to_string()])
            .expect("TC forwarding");
        t0
    }

    /// The tunnel's per-flow shortcut slot at `index` (CPU × TUNNEL_FLOW_SLOTS + slot).
    pub fn tunnel_flow(&self, index: u32) -> TunnelFlow {
        let map: aya::maps::Array<_, TunnelFlow> = aya::maps::Array::try_from(
            self.dp
                .ebpf()
                .map(names::TUNNEL_FLOWS)
                .expect("tunnel flows"),
        )
        .expect("tunnel flows map type");
        map.get(&index, 0).expect("tunnel flow slot")
    }

    /// When the translation of the flow `key` names (the forward direction's entry) was last
    /// refreshed.
    pub fn nat_forward_last_seen(&self, key: &gateway_common::nat::NatKey) -> u64 {
        self.dp
            .nat_tables()
            .expect("NAT tables")
            .get(Direction::Forward, key)
            .expect("the flow's translation")
            .last_seen_ns
    }

    /// Marks that translation's timestamp (a test then sees whether a packet refreshed it).
    pub fn set_nat_forward_last_seen(&mut self, key: &gateway_common::nat::NatKey, ns: u64) {
        let set = self
            .dp
            .nat_tables()
            .expect("NAT tables")
            .set_last_seen(Direction::Forward, key, ns)
            .expect("NAT bucket");
        assert!(set, "the flow's translation");
    }

    /// The relay's per-flow shortcut slots that hold a flow, on any CPU.
    pub fn turn_flows(&self) -> Vec<TurnFlow> {
        let map: aya::maps::Array<_, TurnFlow> =
            aya::maps::Array::try_from(self.dp.ebpf().map(names::TURN_FLOWS).expect("turn flows"))
                .expect("turn flows map type");
        entries(&map).into_iter().filter(|e| e.tag != 0).collect()
    }

    /// Runs a named XDP program once; returns the XDP action and the frame as it left.
    pub fn xdp_program_bytes(&mut self, name: &str, packet: &[u8]) -> (u32, Vec<u8>) {
        let prog = self.dp.xdp_program_named(name).expect("xdp program");
        run_out(prog, packet, None).expect("test run")
    }

    /// Runs a named TC program once; returns the TC action and the packet as it left.
    pub fn tc_program_bytes(&mut self, name: &str, packet: &[u8]) -> (u32, Vec<u8>) {
        self.run_tc_out(name, packet).expect("test run")
    }

    /// Runs a TC program (Ethernet variant) once; returns the TC action.
    pub fn tc(&mut self, ingress: bool, packet: &[u8]) -> u32 {
        self.try_tc(ingress, packet).expect("test run")
    }

    /// Like [`Harness::tc`], but returns the kernel's refusal (frames under 14 bytes) as an error.
    pub fn try_tc(&mut self, ingress: bool, packet: &[u8]) -> Result<u32, ProgramError> {
        let name = if ingress {
            names::PROG_TC_TUNNEL_INGRESS_ETH
        } else {
            names::PROG_TC_TUNNEL_EGRESS_ETH
        };
        self.run_tc(name, packet)
    }

    /// Runs a TC program of the L3 variant (tunnels without a link header: `packet` starts at
    /// the IP header).
    pub fn tc_l3(&mut self, ingress: bool, packet: &[u8]) -> u32 {
        let name = if ingress {
            names::PROG_TC_TUNNEL_INGRESS_L3
        } else {
            names::PROG_TC_TUNNEL_EGRESS_L3
        };
        self.run_tc(name, packet).expect("test run")
    }

    fn run_tc(&mut self, name: &str, packet: &[u8]) -> Result<u32, ProgramError> {
        self.run_tc_out(name, packet).map(|(action, _)| action)
    }

    /// Runs a tunnel TC program (Ethernet variant) once; returns the TC action and the packet
    /// as the program left it.
    pub fn tc_bytes(&mut self, ingress: bool, packet: &[u8]) -> (u32, Vec<u8>) {
        let name = if ingress {
            names::PROG_TC_TUNNEL_INGRESS_ETH
        } else {
            names::PROG_TC_TUNNEL_EGRESS_ETH
        };
        self.run_tc_out(name, packet).expect("test run")
    }

    /// Runs a named TC program once on a packet that arrived on interface `ifindex` (of the
    /// calling thread's namespace), as the forwarding paths' FIB lookups need; returns the TC
    /// action and the packet as it left.
    pub fn tc_program_bytes_on(
        &mut self,
        name: &str,
        packet: &[u8],
        ifindex: u32,
    ) -> (u32, Vec<u8>) {
        // struct __sk_buff up to `ifindex`: the test run takes `ingress_ifindex` (offset 36) as
        // the arrival interface and `ifindex` (offset 40) as the device; the rest stays zero.
        let mut ctx = [0u8; 44];
        ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let prog = self.dp.tc_program(name).expect("tc program");
        run_out(prog, packet, Some(&ctx)).expect("test run")
    }

    fn run_tc_out(&mut self, name: &str, packet: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        let prog = self.dp.tc_program(name).expect("tc program");
        run_out(prog, packet, None)
    }

    /// Runs the Ethernet program of `hook` once; returns whether the packet passed.
    pub fn run_hook(&mut self, hook: u32, packet: &[u8]) -> bool {
        match hook {
            HOOK_TUNNEL_INGRESS | HOOK_TUNNEL_EGRESS => {
                match self.tc(hook == HOOK_TUNNEL_INGRESS, packet) {
                    TC_ACT_OK => true,
                    TC_ACT_SHOT => false,
                    other => panic!("unexpected TC action {other}"),
                }
            }
            HOOK_LAN => match self.xdp(packet) {
                XDP_PASS => true,
                XDP_DROP => false,
                other => panic!("unexpected XDP action {other}"),
            },
            other => panic!("unknown hook {other}"),
        }
    }

    /// Runs `packet` through `hook` and asserts the verdict and its reason exactly: the packet
    /// passes iff `want` is a passing reason, and the only counter that moved is (hook, want),
    /// by one packet.
    #[track_caller]
    pub fn expect(&mut self, hook: u32, packet: &[u8], want: u32) {
        self.expect_ctx(hook, packet, want, "");
    }

    /// [`Harness::expect`] with a label for the failure message.
    #[track_caller]
    pub fn expect_ctx(&mut self, hook: u32, packet: &[u8], want: u32, what: &str) {
        let before = self.counters();
        let passed = self.run_hook(hook, packet);
        let after = self.counters();
        let moved: Vec<(u32, u32, u64)> = (0..stats::STATS_ENTRIES)
            .filter(|i| after[*i as usize].packets != before[*i as usize].packets)
            .map(|i| {
                (
                    i / reason::SLOTS,
                    i % reason::SLOTS,
                    after[i as usize].packets - before[i as usize].packets,
                )
            })
            .collect();
        let show = |m: &[(u32, u32, u64)]| {
            m.iter()
                .map(|(h, r, n)| {
                    format!(
                        "{}/{}({r})x{n}",
                        HOOK_NAMES[*h as usize], REASON_NAMES[*r as usize]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let expected = [(hook, want, 1u64)];
        assert!(
            moved == expected && passed == (want < reason::FIRST_DROP_REASON),
            "{what}: expected {} ({}), got {} with counters [{}]\npacket ({} bytes): {}",
            show(&expected),
            if want < reason::FIRST_DROP_REASON {
                "pass"
            } else {
                "drop"
            },
            if passed { "pass" } else { "drop" },
            show(&moved),
            packet.len(),
            hex(packet),
        );
    }

    /// The non-zero counters of one hook, as `reason(n)=packets`, for failure messages.
    pub fn hook_counters(&self, hook: u32) -> String {
        self.counters()
            .iter()
            .enumerate()
            .filter(|(i, c)| *i as u32 / reason::SLOTS == hook && c.packets != 0)
            .map(|(i, c)| {
                let r = i % reason::SLOTS as usize;
                format!("{}({r})={}", REASON_NAMES[r], c.packets)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// All (hook, reason) counters, summed over CPUs.
    pub fn counters(&self) -> Vec<Counter> {
        self.dp.verdict_counters().expect("counters")
    }

    /// Packets a (hook, reason) counter holds, read with one lookup.
    pub fn reason_count(&self, hook: u32, reason: u32) -> u64 {
        let map: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.dp.ebpf().map(names::STATS).expect("stats map"))
                .expect("stats map type");
        map.get(&stats::stats_index(hook, reason), 0)
            .expect("stats read")
            .iter()
            .map(|c| c.packets)
            .sum()
    }

    /// Packets counted for rule `rule` of the active policy (not including retired totals).
    pub fn rule_count(&self, rule: u32) -> u64 {
        let map: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.dp.ebpf().map(names::RULE_STATS).expect("rule map"))
                .expect("rule map type");
        map.get(&(self.slot * self.rules_per_slot + rule), 0)
            .expect("rule stats read")
            .iter()
            .map(|c| c.packets)
            .sum()
    }

    /// Packets counted per policy name (`Dataplane::rule_counters`).
    pub fn rule_packets(&self, name: &str) -> u64 {
        self.dp
            .rule_counters()
            .expect("rule counters")
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.packets)
            .unwrap_or_else(|| panic!("no counter for policy {name:?}"))
    }

    pub fn ingress_passes(&mut self, packet: &[u8]) -> bool {
        match self.tc(true, packet) {
            TC_ACT_OK => true,
            TC_ACT_SHOT => false,
            other => panic!("unexpected TC action {other}"),
        }
    }

    /// Packets counted for a hook and reason so far.
    pub fn count(&self, hook: u32, reason: u32) -> u64 {
        self.dp.verdict_counters().expect("counters")[stats::stats_index(hook, reason) as usize]
            .packets
    }

    /// Runs `f` and returns how much the (hook, reason) counter grew.
    pub fn delta(&mut self, hook: u32, reason: u32, f: impl FnOnce(&mut Self)) -> u64 {
        let before = self.count(hook, reason);
        f(self);
        self.count(hook, reason) - before
    }
}

/// The seed's four policies, as shipped in examples/policy.yaml.
/// Keeps the calling thread on one CPU: BPF_PROG_TEST_RUN runs a program on the caller's CPU,
/// so a test of per-CPU state (caches, scratch) must not migrate between runs.
pub fn pin_thread_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub fn seed_policy() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy.yaml"
    ))
    .expect("examples/policy.yaml")
}

/// The environment variable that stretches the test kit's deadlines by a whole factor, for a
/// guest kernel in software emulation (`cargo xtask kernel-check` sets it), where loading the
/// data plane alone takes the verifier minutes.
pub const SLOWDOWN_ENV: &str = "GATEWAY_TEST_SLOWDOWN";

/// `d` stretched by [`SLOWDOWN_ENV`] (1 when unset or not a number).
pub fn deadline(d: std::time::Duration) -> std::time::Duration {
    let factor = std::env::var(SLOWDOWN_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * factor
}

/// The `gateway` binary the integration tests start (`cargo xtask test` builds it first).
pub fn gateway_binary() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_BIN") {
        return p.into();
    }
    // Test executables live in target/<profile>/deps; the binary in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("gateway");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p gateway` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Bytes as hex, for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

/// One BPF_PROG_TEST_RUN of `prog` on `packet`, with `ctx` as the program's context when given:
/// the program's return value and the packet as it left.
fn run_out<P>(prog: &P, packet: &[u8], ctx: Option<&[u8]>) -> Result<(u32, Vec<u8>), ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: ctx,
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

fn entries<V: aya::Pod, T: std::borrow::Borrow<aya::maps::MapData>>(
    map: &aya::maps::Array<T, V>,
) -> Vec<V> {
    map.iter().map(|e| e.expect("array read")).collect()
}

/// The entries of array map `name` of the XDP program attached to `dev` in `ns` (by a running
/// gateway or relay, say). Maps the process did not pin are found through the program's own
/// map ids, so that another process's program of the same name cannot answer.
pub fn array_of_xdp_program<V: aya::Pod>(
    ns: &crate::netns::Netns,
    dev: &str,
    name: &str,
) -> anyhow::Result<Vec<V>> {
    let program_id = ns
        .xdp_program_id(dev)?
        .ok_or_else(|| anyhow::anyhow!("no XDP program on {dev}"))?;
    let program = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == program_id)
        .ok_or_else(|| anyhow::anyhow!("no loaded program with id {program_id}"))?;
    array_of_program(&program, name)
}

/// As [`array_of_xdp_program`], for the program at the TC ingress hook (a tcx link) of `dev`.
pub fn array_of_tc_ingress_program<V: aya::Pod>(
    ns: &crate::netns::Netns,
    dev: &str,
    name: &str,
) -> anyhow::Result<Vec<V>> {
    use aya::programs::{SchedClassifier, tc::TcAttachType};
    let dev = dev.to_string();
    let (_, programs) =
        ns.run_scoped(move || SchedClassifier::query_tcx(&dev, TcAttachType::Ingress))??;
    let program = programs
        .first()
        .ok_or_else(|| anyhow::anyhow!("no TC ingress program"))?;
    array_of_program(program, name)
}

fn array_of_program<V: aya::Pod>(
    program: &aya::programs::ProgramInfo,
    name: &str,
) -> anyhow::Result<Vec<V>> {
    for id in program.map_ids()?.unwrap_or_default() {
        let info = aya::maps::MapInfo::from_id(id)?;
        if info.name_as_str() == Some(name) {
            let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_id(id)?)?;
            let map: aya::maps::Array<_, V> = aya::maps::Array::try_from(map)?;
            return Ok(entries(&map));
        }
    }
    anyhow::bail!("program {} has no {name} map", program.id())
}

/// The LAN shortcut's slots that hold a flow, of the XDP program on `dev` in `ns`, on any CPU.
pub fn lan_flows_on(ns: &crate::netns::Netns, dev: &str) -> anyhow::Result<Vec<LanFlow>> {
    let all: Vec<LanFlow> = array_of_xdp_program(ns, dev, names::LAN_FLOWS)?;
    Ok(all.into_iter().filter(|e| e.generation != 0).collect())
}

/// The tunnel shortcut's slots that hold a flow, of the TC ingress program on `dev` in `ns`, on
/// any CPU.
pub fn tunnel_flows_on(ns: &crate::netns::Netns, dev: &str) -> anyhow::Result<Vec<TunnelFlow>> {
    let all: Vec<TunnelFlow> = array_of_tc_ingress_program(ns, dev, names::TUNNEL_FLOWS)?;
    Ok(all.into_iter().filter(|e| e.generation != 0).collect())
}

/// The relay shortcut's slots that hold a flow, of the XDP program on `dev` in `ns`, on any CPU.
pub fn turn_flows_on(ns: &crate::netns::Netns, dev: &str) -> anyhow::Result<Vec<TurnFlow>> {
    let all: Vec<TurnFlow> = array_of_xdp_program(ns, dev, names::TURN_FLOWS)?;
    Ok(all.into_iter().filter(|e| e.tag != 0).collect())
}
