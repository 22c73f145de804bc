//! Shared harness for the privileged tests: a loaded data plane with a policy, and runs of its
//! programs through BPF_PROG_TEST_RUN.

use aya::programs::{TestRun as _, TestRunOptions};
use gateway::{
    compile::{self, Limits},
    dataplane::{Dataplane, LoadOptions},
    policy,
};
use gateway_common::{maps as names, stats};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

pub struct Harness {
    pub dp: Dataplane,
}

impl Harness {
    pub fn new(policy_yaml: &str) -> Harness {
        Self::with_options(policy_yaml, LoadOptions::default())
    }

    pub fn with_options(policy_yaml: &str, opts: LoadOptions) -> Harness {
        let mut dp = Dataplane::load(&opts).expect("load data plane (run the tests as root)");
        let set = policy::parse_str(policy_yaml, "test.yaml").expect("test policy");
        let compiled = compile::compile(&set, &Limits::default()).expect("compile");
        dp.apply(&compiled).expect("apply");
        Harness { dp }
    }

    pub fn apply(&mut self, policy_yaml: &str) {
        let set = policy::parse_str(policy_yaml, "test.yaml").expect("test policy");
        let compiled = compile::compile(&set, &Limits::default()).expect("compile");
        self.dp.apply(&compiled).expect("apply");
    }

    /// Runs the LAN XDP program once; returns the XDP action.
    pub fn xdp(&mut self, packet: &[u8]) -> u32 {
        let prog = self.dp.xdp_program().expect("xdp program");
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), ..Default::default() };
        prog.test_run(opts).expect("test run").return_value
    }

    /// Runs a TC program (Ethernet variant) once; returns the TC action.
    pub fn tc(&mut self, ingress: bool, packet: &[u8]) -> u32 {
        let name = if ingress { names::PROG_TC_TUNNEL_INGRESS_ETH } else { names::PROG_TC_TUNNEL_EGRESS_ETH };
        let prog = self.dp.tc_program(name).expect("tc program");
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), ..Default::default() };
        prog.test_run(opts).expect("test run").return_value
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
        self.dp.verdict_counters().expect("counters")[stats::stats_index(hook, reason) as usize].packets
    }

    /// Runs `f` and returns how much the (hook, reason) counter grew.
    pub fn delta(&mut self, hook: u32, reason: u32, f: impl FnOnce(&mut Self)) -> u64 {
        let before = self.count(hook, reason);
        f(self);
        self.count(hook, reason) - before
    }
}

/// The seed's four policies, as shipped in examples/policy.yaml.
pub fn seed_policy() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policy.yaml")).expect("examples/policy.yaml")
}

/// The `gateway` binary the integration tests start (`cargo xtask test` builds it first).
pub fn gateway_binary() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_BIN") {
        return p.into();
    }
    // Test executables live in target/<profile>/deps; the binary in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let path = exe.parent().and_then(|d| d.parent()).expect("target dir").join("gateway");
    assert!(path.exists(), "{} is missing: build it with `cargo build -p gateway` (cargo xtask test does)", path.display());
    path
}
