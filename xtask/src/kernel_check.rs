//! `cargo xtask kernel-check`: do the kernel programs pass another kernel's verifier? Boots a
//! kernel (by default Debian 12's own, the one an operator's routing peer on bookworm runs)
//! under QEMU with virtme-ng, over this machine's root filesystem, and runs the verifier tests
//! there. How far a verifier walks, and what it accepts, changes between kernel versions: a
//! program that loads on the development kernel may not load on the operator's.

use std::{
    path::{Path, PathBuf},
    process::Command,
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
    let test = verifier_test_binary()?;
    let root = std::env::current_dir()?;
    eprintln!(
        "xtask: booting {} under QEMU ({}) and loading every program there",
        kernel.display(),
        if kvm { "KVM" } else { "software emulation" }
    );
    // Loading must succeed; the headroom test's verdict is reported, not required (the 50%
    // it holds programs to is this project's margin on its own kernel).
    let loads = in_guest(&kernel, kvm, &root, &test, "every_program_loads")?;
    let headroom = in_guest(
        &kernel,
        kvm,
        &root,
        &test,
        "every_program_verifies_with_headroom",
    )?;
    if !headroom {
        eprintln!("xtask: warning: a program takes more than half of this kernel's verifier limit");
    }
    if !loads {
        bail!("the kernel programs do not load on {}", kernel.display());
    }
    eprintln!("xtask: every program loads on {}", kernel.display());
    Ok(())
}

/// Runs one verifier test in the guest; whether it passed.
fn in_guest(
    kernel: &Path,
    kvm: bool,
    root: &Path,
    test: &Path,
    name: &str,
) -> anyhow::Result<bool> {
    let mut cmd = Command::new("vng");
    cmd.arg("--run")
        .arg(kernel)
        .args(["--memory", "4G", "--cpus", "2", "--cwd"])
        .arg(root)
        .arg("--exec")
        .arg(format!("{} --exact {name} --nocapture", test.display()));
    if !kvm {
        cmd.arg("--disable-kvm");
    }
    let status = cmd.status().context("running vng (virtme-ng)")?;
    Ok(status.success())
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

/// Builds the verifier tests and returns their executable.
fn verifier_test_binary() -> anyhow::Result<PathBuf> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--package",
            "gateway-tests",
            "--test",
            "verifier",
            "--no-run",
        ])
        .output()
        .context("building the verifier tests")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("building the verifier tests failed:\n{stderr}");
    }
    // cargo names it on stderr: "Executable tests/verifier.rs (target/debug/deps/verifier-…)".
    let path = stderr
        .lines()
        .filter(|l| l.contains("Executable") && l.contains("verifier"))
        .find_map(|l| l.rsplit_once('(')?.1.strip_suffix(')'))
        .context("cargo did not name the verifier test executable")?;
    Ok(std::env::current_dir()?.join(path))
}
