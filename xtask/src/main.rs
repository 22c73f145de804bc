//! `cargo xtask <task>`: the commands a newcomer runs. Each installs what it needs first
//! (Debian packages, the nightly rust-src component, bpf-linker), idempotently.

mod deps;
mod kernel_check;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; fast when everything is there).
    Deps,
    /// Build the gateway (the kernel programs are built and embedded by dataplane/build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the main job on the embedded default: the seed lab with the seed's policies.
    Demo,
    /// Run every test: host unit tests, BPF_PROG_TEST_RUN fixtures, differential and
    /// namespace integration tests.
    Test {
        /// Extra arguments for `cargo test` (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Load every kernel program under another kernel (default: Debian 12's own 6.1, installed
    /// if missing) booted in QEMU with virtme-ng: does that kernel's verifier accept them?
    KernelCheck {
        /// The kernel image to boot (default: the newest /boot/vmlinuz-6.1.*).
        #[arg(long)]
        kernel: Option<std::path::PathBuf>,
        /// Boot with KVM (default: software emulation, which works in any VM; slower).
        #[arg(long)]
        kvm: bool,
    },
    /// Run the benchmarks and write bench/results/ and bench/RESULTS.md.
    Bench {
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        scenario: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Deps => deps::ensure(&deps::Needs::all()),
        Task::Build { release } => {
            deps::ensure(&deps::Needs::build())?;
            build(release)
        }
        Task::Demo => {
            deps::ensure(&deps::Needs::lab())?;
            require_root("the demo")?;
            build(false)?;
            cargo(&[
                "run",
                "--quiet",
                "--package",
                "gateway",
                "--bin",
                "gateway",
                "--",
                "demo",
            ])
        }
        Task::Test { args } => {
            deps::ensure(&deps::Needs::lab())?;
            require_root("the kernel tests")?;
            build(false)?;
            // The kernel programs build only for bpfel-unknown-none (dataplane/build.rs does that).
            let mut cmd = vec![
                "test",
                "--workspace",
                "--exclude",
                "gateway-ebpf",
                "--exclude",
                "bench-ebpf",
                "--lib",
                "--bins",
                "--tests",
            ];
            let extra: Vec<&str> = args.iter().map(String::as_str).collect();
            if !extra.is_empty() {
                cmd.push("--");
                cmd.extend(extra);
            }
            cargo_test(&cmd)
        }
        Task::KernelCheck { kernel, kvm } => {
            // The lab's tools too: the WireGuard test in the guest runs wireguard-go peers.
            deps::ensure(&deps::Needs::lab())?;
            require_root("loading kernel programs")?;
            build(false)?;
            kernel_check::run(kernel, kvm)
        }
        Task::Bench { quick, scenario } => {
            deps::ensure(&deps::Needs::all())?;
            require_root("the benchmarks")?;
            // The management scenario runs the real gateway binary from target/release.
            build(true)?;
            let mut cmd = vec!["run", "--release", "--package", "bench", "--"];
            if quick {
                cmd.push("--quick");
            }
            if let Some(s) = &scenario {
                cmd.push("--scenario");
                cmd.push(s);
            }
            cargo(&cmd)
        }
    }
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build", "--package", "gateway"];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs `cargo test`, passing its output through, and ends with one line totalling every test
/// binary's result (so the last line speaks for the whole run, not the last binary).
fn cargo_test(args: &[&str]) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (
                    words.next().and_then(|n| n.parse::<u64>().ok()),
                    words.next(),
                ) {
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

fn require_root(what: &str) -> anyhow::Result<()> {
    let out = Command::new("id").arg("-u").output().context("id -u")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("{what} load BPF programs and create network namespaces: run as root");
    }
    Ok(())
}
