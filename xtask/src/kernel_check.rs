//! `cargo xtask kernel-check`: does the gateway work on another kernel? Boots a kernel (by
//! default Debian 12's own, the one an operator's routing peer on bookworm runs) under QEMU with
//! virtme-ng, over this machine's root filesystem, and runs there:
//! - the verifier tests: how far a verifier walks, and what it accepts, changes between kernel
//!   versions, so a program that loads on the development kernel may not load on the operator's;
//! - the seed lab end to end (the gateway's main job), XDP forwarding with jumbo frames (what a
//!   kernel redirects in XDP changed in 6.3), the LAN shortcut against the full path, and the
//!   kernel WireGuard backend's test:
//!   this machine's kernel has no WireGuard module, Debian's has (its modules are installed with
//!   its image), so only a guest can run that backend.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::deps;

/// Debian packages the check needs, and the commands that show they are installed.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    // virtme-ng's init inside the guest.
    ("busybox-static", "busybox"),
];

/// Debian's kernel meta-package: on bookworm, the current 6.1 kernel.
const DEBIAN_KERNEL_PACKAGE: &str = "linux-image-amd64";

pub fn run(kernel: Option<PathBuf>, kvm: bool) -> anyhow::Result<()> {
    deps::apt(PACKAGES)?;
    let kernel = match kernel {
        Some(k) => k,
        None => debian_kernel()?,
    };
    virtme_ng()?;
    let test = test_binary("verifier")?;
    let root = std::env::current_dir()?;
    eprintln!(
        "xtask: booting {} under QEMU ({}) and loading every program there",
        kernel.display(),
        if kvm { "KVM" } else { "software emulation" }
    );
    // Loading must succeed; the headroom test's verdict is reported, not required (the 50%
    // it holds programs to is this project's margin on its own kernel).
    let loads = in_guest(&kernel, kvm, &root, &test, "every_program_loads", false)?;
    let headroom = in_guest(
        &kernel,
        kvm,
        &root,
        &test,
        "every_program_verifies_with_headroom",
        false,
    )?;
    if !headroom {
        eprintln!("xtask: warning: a program takes more than half of this kernel's verifier limit");
    }
    if !loads {
        bail!("the kernel programs do not load on {}", kernel.display());
    }
    eprintln!("xtask: every program loads on {}", kernel.display());
    for t in GUEST_TESTS {
        let binary = test_binary(t.target)?;
        eprintln!("xtask: {}, in the same guest kernel", t.what);
        if !in_guest(&kernel, kvm, &root, &binary, t.name, t.ignored)? {
            bail!("{}: failed on {}", t.what, kernel.display());
        }
        eprintln!("xtask: {}: works on {}", t.what, kernel.display());
    }
    Ok(())
}

/// A test the guest runs after the verifier's.
struct GuestTest {
    /// The test target (tests/<target>.rs) and the test's name in it.
    target: &'static str,
    name: &'static str,
    /// Marked ignored, for want of what only the guest has.
    ignored: bool,
    what: &'static str,
}

const GUEST_TESTS: &[GuestTest] = &[
    GuestTest {
        target: "lab",
        name: "seed_matrix_return_traffic_and_live_policy_change",
        ignored: false,
        what: "the seed lab end to end (the gateway's main job: policy, conntrack, live change)",
    },
    // Before 6.3 the kernel redirects no multi-buffer XDP frame: jumbo frames must reach the
    // kernel stack instead (on 6.1 they were dropped after the program's redirect).
    GuestTest {
        target: "xdp_forward",
        name: "bulk_transfers_through_xdp_forwarding",
        ignored: false,
        what: "bulk TCP and UDP through XDP forwarding at MTU 1500 and 9000 (multi-buffer frames)",
    },
    // The LAN shortcut's word loads at any alignment and its per-CPU slots (the CPU id is a
    // helper call before 6.10, inlined after) against the full path, on the older verifier.
    GuestTest {
        target: "lan_flow",
        name: "the_shortcut_forwards_as_the_full_path_and_leaves_it_whatever_it_cannot_stand_for",
        ignored: false,
        what: "the LAN hook's per-flow shortcut against the full path",
    },
    GuestTest {
        target: "lan_flow",
        name: "with_connection_tracking_the_slot_serves_live_flows_and_moves_their_entries",
        ignored: false,
        what: "the LAN hook's per-flow shortcut with connection tracking",
    },
    // The tunnel's shortcut: its checksum helpers and neighbour redirect from a call of its
    // own, on the older verifier and kernel.
    GuestTest {
        target: "tunnel_flow",
        name: "established_flows_leave_the_slot_with_the_full_paths_bytes_and_counters",
        ignored: false,
        what: "the tunnel's per-flow shortcut against the full path",
    },
    // The relay's per-flow shortcut (word loads and stores, bpf_xdp_adjust_head) against the
    // full fast path, byte for byte, on the older verifier.
    GuestTest {
        target: "turn",
        name: "bound_channels_are_forwarded_both_ways_with_exact_bytes",
        ignored: false,
        what: "the relay's fast path and its per-flow shortcut, bytes exact",
    },
    // Ignored elsewhere: it needs the kernel's WireGuard, which Debian's kernel has as a
    // module and this machine's has not.
    GuestTest {
        target: "wireguard",
        name: "the_kernel_backend_creates_the_interface_whose_sessions_outlive_the_gateway",
        ignored: true,
        what: "the kernel WireGuard backend with real peers, a crash and a restart",
    },
];

/// gateway_testkit::harness::SLOWDOWN_ENV (xtask builds before the workspace's crates can: it
/// installs what they need).
const SLOWDOWN_ENV: &str = "GATEWAY_TEST_SLOWDOWN";

/// How much longer the test kit waits in the guest than on this machine: under software
/// emulation the gateway took over 30 s (the test kit's usual deadline) to load the data plane.
const GUEST_SLOWDOWN: u32 = 20;

/// The longest one guest run may take (timeout(1)'s syntax).
const GUEST_TIMEOUT: &str = "15m";

/// Runs one test in the guest (`ignored`: one marked so, for want of what the guest has);
/// whether it passed.
fn in_guest(
    kernel: &Path,
    kvm: bool,
    root: &Path,
    test: &Path,
    name: &str,
    ignored: bool,
) -> anyhow::Result<bool> {
    // A guest that hangs (a boot that never finishes, a test stuck on the network) must not
    // hold CI until its own limit: each run here takes GUEST_TIMEOUT at most.
    let mut cmd = Command::new("timeout");
    cmd.arg(GUEST_TIMEOUT)
        .arg("vng")
        .arg("--run")
        .arg(kernel)
        .args(["--memory", "4G", "--cpus", "2", "--cwd"])
        .arg(root)
        .arg("--exec")
        // The guest has no static device nodes: /dev/net/tun (wireguard-go's) appears once the
        // module is loaded. And software emulation is slow: the test kit's deadlines stretch.
        .arg(format!(
            "modprobe tun; {SLOWDOWN_ENV}={GUEST_SLOWDOWN} {} --exact {name} --nocapture{}",
            test.display(),
            if ignored { " --ignored" } else { "" }
        ));
    if !kvm {
        cmd.arg("--disable-kvm");
    }
    // QEMU opens the guest's output by the path /proc/self/fd/1 (and 2): where that is a file
    // (CI's log), the open truncates it and the log loses what ran before. Through pipes it
    // cannot; the output is passed on here.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running vng (virtme-ng)")?;
    let mut err = child.stderr.take().context("vng stderr")?;
    let err_copy = std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::stderr()));
    let mut out = child.stdout.take().context("vng stdout")?;
    let _ = std::io::copy(&mut out, &mut std::io::stdout());
    let _ = err_copy.join();
    Ok(child.wait()?.success())
}

/// The newest 6.1 kernel in /boot, installing Debian's kernel package when there is none.
fn debian_kernel() -> anyhow::Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-6.1."))
            })
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(k) = find() {
        return Ok(k);
    }
    eprintln!("xtask: installing Debian's kernel ({DEBIAN_KERNEL_PACKAGE}) for the check");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", DEBIAN_KERNEL_PACKAGE])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {DEBIAN_KERNEL_PACKAGE} failed");
    }
    find().context("no /boot/vmlinuz-6.1.* after installing Debian's kernel")
}

/// virtme-ng (`vng`), from PyPI, when it is missing.
fn virtme_ng() -> anyhow::Result<()> {
    if deps::have("vng") {
        return Ok(());
    }
    eprintln!("xtask: installing virtme-ng (pip)");
    for extra in [&[][..], &["--break-system-packages"][..]] {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "virtme-ng"])
            .args(extra)
            .status()
            .context("running pip")?;
        if status.success() {
            return Ok(());
        }
    }
    bail!("pip could not install virtme-ng")
}

/// Builds the test target `name` of the tests package and returns its executable.
fn test_binary(name: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--package",
            "gateway-tests",
            "--test",
            name,
            "--no-run",
        ])
        .output()
        .with_context(|| format!("building the {name} tests"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("building the {name} tests failed:\n{stderr}");
    }
    // cargo names it on stderr: "Executable tests/verifier.rs (target/debug/deps/verifier-…)".
    let source = format!("tests/{name}.rs");
    let path = stderr
        .lines()
        .filter(|l| l.contains("Executable") && l.contains(&source))
        .find_map(|l| l.rsplit_once('(')?.1.strip_suffix(')'))
        .with_context(|| format!("cargo did not name the {name} test executable"))?;
    Ok(std::env::current_dir()?.join(path))
}
