//! Command line: `gateway run | status | policy check | policy explain | demo`.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{compile, config::Config, lab, policy, runner, status};

#[derive(Parser)]
#[command(name = "gateway", version, about = "eBPF/XDP data-plane gateway for WireGuard overlay networks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs, attach them to the configured interfaces and enforce the policy.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Serve Prometheus metrics and /status here (overrides the config file).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Show what a running gateway has attached, its policy generation, map fill and counters.
    Status {
        /// Address of the running gateway's metrics endpoint.
        #[arg(long, default_value = runner::DEFAULT_METRICS_ADDR)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// Validate and explain policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Build a lab in network namespaces, enforce the seed's policies and show traffic accepted
    /// and dropped (needs root).
    Demo {
        /// Policy file for the lab (default: the seed's four policies, embedded).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file; errors name the file, line and field.
    Check { file: PathBuf },
    /// Print the verdict and the deciding policy for one packet, from the compiled tables.
    Explain {
        /// Policy file (or use --config to take the one a gateway config names).
        #[arg(long, conflicts_with = "config")]
        policy: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        src: IpAddr,
        #[arg(long)]
        dst: IpAddr,
        /// tcp, udp, icmp, or a protocol number.
        #[arg(long, default_value = "tcp")]
        proto: String,
        #[arg(long, default_value_t = 0)]
        dport: u16,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, metrics_addr } => runner::run(&config, metrics_addr),
        Command::Status { addr, json } => status::print(addr, json),
        Command::Policy { command: PolicyCommand::Check { file } } => check(&file),
        Command::Policy { command: PolicyCommand::Explain { policy, config, src, dst, proto, dport } } => {
            explain(policy, config, src, dst, &proto, dport)
        }
        Command::Demo { policy } => lab::demo::run(policy.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let set = policy::load_file(file)?;
    let compiled = compile::compile(&set, &compile::Limits::default())?;
    let s = compiled.stats;
    println!(
        "{}: ok: {} groups, {} policies ({} enabled); compiles to {} verdict entries, {} IPv4 chunks, {} IPv6 prefixes",
        file.display(),
        set.groups.len(),
        set.policies.len(),
        compiled.rules.len(),
        s.verdicts,
        s.v4_chunks,
        s.v6_prefixes
    );
    Ok(())
}

pub fn parse_proto(s: &str) -> anyhow::Result<u8> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" | "ipv6-icmp" => 58,
        other => other.parse().map_err(|_| anyhow::anyhow!("--proto: {other:?} is not tcp, udp, icmp or a protocol number"))?,
    })
}

fn explain(policy: Option<PathBuf>, config: Option<PathBuf>, src: IpAddr, dst: IpAddr, proto: &str, dport: u16) -> anyhow::Result<()> {
    let (file, limits) = match (policy, config) {
        (Some(p), _) => (p, compile::Limits::default()),
        (None, Some(c)) => {
            let cfg = Config::load(&c)?;
            (cfg.policy.clone(), cfg.limits.compile_limits())
        }
        (None, None) => anyhow::bail!("name the policy with --policy FILE or --config FILE"),
    };
    if src.is_ipv4() != dst.is_ipv4() {
        anyhow::bail!("--src and --dst must be the same address family");
    }
    let mut proto_num = parse_proto(proto)?;
    if proto_num == 1 && src.is_ipv6() {
        proto_num = 58;
    }
    let set = policy::load_file(&file)?;
    let compiled = compile::compile(&set, &limits)?;
    let e = compiled.lookup(src, dst, proto_num, dport);
    let decided_by = match e.judgement.rule {
        Some(r) => {
            let rule = &compiled.rules[r as usize];
            if rule.action == e.judgement.action {
                format!("policy {:?} (action {}, priority {})", rule.name, rule.action.as_str(), rule.priority)
            } else {
                format!("an exception of drop policy {:?} (priority {})", rule.name, rule.priority)
            }
        }
        None => "default deny (no policy matches)".to_string(),
    };
    println!("verdict: {}", e.judgement.action.as_str());
    println!("decided by: {decided_by}");
    println!("flow: {src} -> {dst} proto {proto_num} dport {dport}");
    println!("classes: source {} destination {}", e.src_class.src, e.dst_class.dst);
    Ok(())
}
