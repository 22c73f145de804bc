//! Installs prerequisites, checking each first so a second run costs almost nothing.
//! bpf-linker is linked against the nightly toolchain's own LLVM (a plain `cargo install`
//! looks for a system LLVM that Debian does not ship in the right version).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Debian packages and the commands that show they are installed.
const LAB_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    ("ethtool", "ethtool"),
    ("wireguard-tools", "wg"),
    ("wireguard-go", "wireguard-go"),
    ("coturn", "turnutils_uclient"),
    // The management TLS test makes its certificates and calls the API as an operator would.
    ("openssl", "openssl"),
    ("curl", "curl"),
];
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("nftables", "nft"),
    ("iptables", "iptables"),
    ("xdp-tools", "xdp-filter"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
    ("conntrack", "conntrack"),
];

pub struct Needs {
    pub ebpf: bool,
    pub lab: bool,
    pub bench: bool,
}

impl Needs {
    pub fn build() -> Needs {
        Needs {
            ebpf: true,
            lab: false,
            bench: false,
        }
    }
    pub fn lab() -> Needs {
        Needs {
            ebpf: true,
            lab: true,
            bench: false,
        }
    }
    pub fn all() -> Needs {
        Needs {
            ebpf: true,
            lab: true,
            bench: true,
        }
    }
}

pub fn ensure(needs: &Needs) -> anyhow::Result<()> {
    let mut packages: Vec<(&str, &str)> = Vec::new();
    if needs.lab {
        packages.extend_from_slice(LAB_PACKAGES);
    }
    if needs.bench {
        packages.extend_from_slice(BENCH_PACKAGES);
    }
    apt(&packages)?;
    if needs.ebpf {
        nightly_rust_src()?;
        bpf_linker()?;
    }
    Ok(())
}

/// Whether `cmd` is on the path (or in /usr/sbin).
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {cmd} >/dev/null 2>&1 || test -x /usr/sbin/{cmd}"),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the Debian packages whose command is missing.
pub fn apt(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed ({status})", missing.join(" "));
    }
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain (the kernel programs build with it)");
        run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly (needed for -Z build-std=core)");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let version = output("rustc", &["+nightly", "-vV"])?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc reports no LLVM version")?
        .to_string();
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])?
        .trim()
        .to_string();
    let home = std::env::var("HOME").context("HOME")?;
    // A directory that stays: the linker's RUNPATH points at it.
    let prefix = PathBuf::from(home).join(".cache/bpf-linker-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let mut versioned = None;
    for entry in std::fs::read_dir(PathBuf::from(&sysroot).join("lib"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if name.starts_with("libLLVM") && name.contains(".so") {
            let link = lib.join(&name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&path, &link)?;
            if name.starts_with("libLLVM.so.") {
                versioned = Some(path.clone());
            }
        }
    }
    let versioned = versioned.context("no libLLVM.so.* in the nightly toolchain")?;
    let plain = lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&plain);
    std::os::unix::fs::symlink(&versioned, &plain)?;
    eprintln!(
        "xtask: building bpf-linker against nightly's LLVM {llvm_major} (about 3 minutes, once)"
    );
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    Ok(())
}
