//! The benchmark topology: generator → device under test → sink, over veth, in namespaces
//! the benchmark creates and removes (also on Ctrl-C: the guards drop).
//!
//! ```text
//!  gen: g0 198.18.0.1 ──── d0 198.18.0.254 [dut] d1 198.19.0.254 ──── s0 198.19.0.1 :sink
//! ```

use anyhow::Context as _;
use gateway_testkit::netns::{Netns, sh, veth};

pub const GEN_ADDR: &str = "198.18.0.1";
pub const SINK_ADDR: &str = "198.19.0.1";
pub const MAC_G0: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x01];
pub const MAC_D0: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x02];
pub const MAC_D1: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x03];
pub const MAC_S0: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x04];

/// The CPU of the device under test (the generator runs on CPU 0).
pub const DUT_CPU: usize = 1;

pub struct Topo {
    pub gen_ns: Netns,
    pub dut: Netns,
    pub sink: Netns,
}

pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Topo {
    pub fn create() -> anyhow::Result<Topo> {
        gateway_testkit::netns::remove_stale("gwbench");
        let id = format!("gwbench{}", std::process::id());
        let t = Topo {
            gen_ns: Netns::create(&format!("{id}-gen"))?,
            dut: Netns::create(&format!("{id}-dut"))?,
            sink: Netns::create(&format!("{id}-sink"))?,
        };
        veth(&t.gen_ns, "g0", &t.dut, "d0")?;
        veth(&t.dut, "d1", &t.sink, "s0")?;
        for (ns, dev, m) in [
            (&t.gen_ns, "g0", MAC_G0),
            (&t.dut, "d0", MAC_D0),
            (&t.dut, "d1", MAC_D1),
            (&t.sink, "s0", MAC_S0),
        ] {
            ns.ip(&["link", "set", dev, "address", &mac(m)])?;
        }
        t.gen_ns
            .ip(&["addr", "add", &format!("{GEN_ADDR}/24"), "dev", "g0"])?;
        t.dut.ip(&["addr", "add", "198.18.0.254/24", "dev", "d0"])?;
        t.dut.ip(&["addr", "add", "198.19.0.254/24", "dev", "d1"])?;
        t.sink
            .ip(&["addr", "add", &format!("{SINK_ADDR}/24"), "dev", "s0"])?;
        t.gen_ns
            .ip(&["route", "add", "default", "via", "198.18.0.254"])?;
        t.sink
            .ip(&["route", "add", "default", "via", "198.19.0.254"])?;
        // The generator's sources are the rules' prefixes: no reverse-path check, and the sink's
        // neighbour is known (its XDP program drops ARP along with everything else).
        t.dut.sysctl("net.ipv4.ip_forward", "1")?;
        for key in ["all", "default", "d0", "d1"] {
            t.dut
                .sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        // One frame, one packet: no GRO merging on the way in (it would hand the stack
        // aggregates, and the sink's XDP cannot take them back out).
        for (ns, dev) in [(&t.dut, "d0"), (&t.dut, "d1"), (&t.sink, "s0")] {
            ns.exec(&["ethtool", "-K", dev, "gro", "off"])?;
        }
        t.dut.ip(&[
            "neigh",
            "replace",
            SINK_ADDR,
            "lladdr",
            &mac(MAC_S0),
            "dev",
            "d1",
            "nud",
            "permanent",
        ])?;
        t.gen_ns.ip(&[
            "neigh",
            "replace",
            "198.18.0.254",
            "lladdr",
            &mac(MAC_D0),
            "dev",
            "g0",
            "nud",
            "permanent",
        ])?;
        t.sink.ip(&[
            "neigh",
            "replace",
            "198.19.0.254",
            "lladdr",
            &mac(MAC_D1),
            "dev",
            "s0",
            "nud",
            "permanent",
        ])?;
        Ok(t)
    }

    /// Gives the device under test a core of its own: the receive processing of d0 (where every
    /// contender's work happens) runs in a NAPI thread pinned to CPU 1, away from the generator
    /// on CPU 0. The sink's NAPI thread runs on CPU 1 too: beside the generator it held every
    /// contender, the no-op ceilings included, to about 1 Mpps (relay-pps, measured), so CPU 1
    /// also pays for the sink's count of each frame (the same program for every contender; under
    /// a contender that never reads the frame, the sink pays its first read). Called after each
    /// install: attaching XDP re-creates the NAPI instance.
    pub fn dedicate_dut_core(&self) -> anyhow::Result<()> {
        self.pin_receive_to_dut_core((&self.dut, "d0"), (&self.sink, "s0"))
    }

    /// As [`Topo::dedicate_dut_core`], for paths that send back out of d0: the receive
    /// processing of g0, where the sink then counts (`Generator::attach_gen_sink`), runs on the
    /// DUT's core as the sink's on s0 does.
    pub fn dedicate_dut_core_one_link(&self) -> anyhow::Result<()> {
        self.pin_receive_to_dut_core((&self.dut, "d0"), (&self.gen_ns, "g0"))
    }

    /// Pins both NAPI threads to the DUT's core, and runs the sink's at a real-time priority
    /// above the DUT's: the sink is apparatus (on a test bed, another machine that never
    /// drops), so it takes the core whenever frames wait for it. Without that the two threads
    /// share the core as equals, and a DUT thread that always has work (any DUT at its limit)
    /// keeps the sink waiting for its time slice while the sink's 256-frame ring overflows:
    /// frames the DUT had forwarded were lost after its work, the more the slower the DUT
    /// (measured: at the same 2.6 Mpps offered, 15% of the gateway's frames refused at d1's
    /// transmit, 2% of the no-op redirect's; 1% and 0.5% with the sink first).
    fn pin_receive_to_dut_core(
        &self,
        dut: (&Netns, &str),
        sink: (&Netns, &str),
    ) -> anyhow::Result<()> {
        for ((ns, dev), priority) in [(dut, None), (sink, Some(SINK_PRIORITY))] {
            ns.exec(&[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{dev}/threaded"),
            ])?;
            for pid in napi_threads(dev)? {
                pin(pid, DUT_CPU)?;
                if let Some(priority) = priority {
                    realtime(pid, priority)?;
                }
            }
        }
        Ok(())
    }

    /// Runs a shell command inside the DUT namespace.
    pub fn dut_sh(&self, script: &str) -> anyhow::Result<String> {
        let out = sh(&["ip", "netns", "exec", &self.dut.name, "sh", "-c", script])
            .with_context(|| script.chars().take(200).collect::<String>())?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Pins a task (0: the calling thread) to one CPU.
pub fn pin(pid: i32, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!(
                "pinning task {pid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The sink's NAPI thread's SCHED_FIFO priority (any real-time priority is above the DUT's
/// normal-priority thread; a low one leaves the kernel's own real-time threads first).
const SINK_PRIORITY: i32 = 10;

/// The NAPI threads of a device (`napi/<dev>-<id>`), by task id.
fn napi_threads(dev: &str) -> anyhow::Result<Vec<i32>> {
    let prefix = format!("napi/{dev}-");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        // (Never task 0: to the scheduler calls that is the calling thread, the bench itself.)
        if comm.trim().starts_with(&prefix)
            && let Ok(pid) = entry.file_name().to_string_lossy().parse()
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Runs a task at a SCHED_FIFO priority.
fn realtime(pid: i32, priority: i32) -> anyhow::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a valid sched_param for the call's duration.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0 {
        anyhow::bail!(
            "making task {pid} SCHED_FIFO {priority}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
