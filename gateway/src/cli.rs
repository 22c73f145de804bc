//! Command line: `gateway run | status | policy check | policy explain | demo`.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use gateway_policy::{self as policy, compile};

use crate::{config::Config, demo, runner, status, sync::SyncOptions};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "eBPF/XDP data-plane gateway for WireGuard overlay networks"
)]
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
        /// Remove the data plane when this process exits (SIGINT/SIGTERM). By default it stays
        /// pinned and enforcing the last policy until the next run adopts it or `gateway detach`.
        #[arg(long)]
        detach_on_exit: bool,
        #[command(flatten)]
        management: ManagementClientArgs,
    },
    /// Remove the pinned data plane: programs detach, policy and flow state are dropped, and
    /// traffic is no longer enforced. The explicit opposite of the fail-static default.
    Detach {
        /// The pin folder (default: the config's pin_dir, else /sys/fs/bpf/gateway).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The embedded management service (NetBird-compatible gRPC and REST API).
    #[cfg(feature = "management-server")]
    Management {
        #[command(subcommand)]
        command: ManagementCommand,
    },
    /// Show what a running gateway has attached, its policy generation, map fill and counters.
    Status {
        /// Address of the running gateway's metrics endpoint.
        #[arg(long, default_value = runner::DEFAULT_METRICS_ADDR)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        json: bool,
    },
    /// A TURN relay that takes coturn's place (UDP; its own YAML or coturn's turnserver.conf).
    Relay {
        #[command(subcommand)]
        command: RelayCommand,
    },
    /// The gateway's WireGuard key.
    Wireguard {
        #[command(subcommand)]
        command: WireguardCommand,
    },
    /// Validate and explain policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Build a lab in network namespaces, enforce the seed's policies and show traffic accepted
    /// and dropped (needs root).
    Demo {
        /// Run the seed lab with veths standing in for tunnels and this policy file (e.g. the
        /// seed's examples/policy.yaml) instead of the default: real WireGuard peers, the
        /// embedded management service, the seed's policies created over its REST API.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

/// Taking the policy from a management service instead of a file.
#[derive(clap::Args)]
struct ManagementClientArgs {
    /// Management service to follow, e.g. http://127.0.0.1:33073.
    #[arg(long)]
    management_url: Option<String>,
    /// Setup key for the first registration (or --setup-key-file, or GATEWAY_SETUP_KEY).
    #[arg(long, requires = "management_url", conflicts_with = "setup_key_file")]
    setup_key: Option<String>,
    #[arg(long, requires = "management_url")]
    setup_key_file: Option<PathBuf>,
    /// PEM certificates to trust for an https:// management URL besides the system's roots
    /// (a private CA, or the service's self-signed certificate).
    #[arg(long, requires = "management_url")]
    management_ca: Option<PathBuf>,
    /// Holds the WireGuard key (wg.key, mode 0600: the interface's key and the management
    /// identity) and the registration record.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Do not ask management for an IPv6 overlay address (the gateway asks for one whenever the
    /// host has IPv6; management gives it one when its account has an IPv6 overlay range).
    #[arg(long, requires = "management_url")]
    no_ipv6_overlay: bool,
}

const DEFAULT_STATE_DIR: &str = "/var/lib/gateway";

impl ManagementClientArgs {
    fn sync_options(self) -> anyhow::Result<Option<SyncOptions>> {
        let Some(url) = self.management_url else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("--management-url {url:?} must start with http:// or https://");
        }
        let setup_key = match (self.setup_key, self.setup_key_file) {
            (Some(k), _) => Some(k),
            (None, Some(f)) => Some(
                std::fs::read_to_string(&f)
                    .map_err(|e| anyhow::anyhow!("--setup-key-file {}: {e}", f.display()))?,
            ),
            (None, None) => std::env::var("GATEWAY_SETUP_KEY").ok(),
        };
        let setup_key = setup_key
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty());
        let ca_pem = match self.management_ca {
            Some(f) => {
                if !url.starts_with("https://") {
                    anyhow::bail!("--management-ca applies only to an https:// --management-url");
                }
                Some(
                    std::fs::read(&f)
                        .map_err(|e| anyhow::anyhow!("--management-ca {}: {e}", f.display()))?,
                )
            }
            None => None,
        };
        Ok(Some(SyncOptions {
            url,
            setup_key,
            state_dir: self.state_dir,
            ca_pem,
            ipv6_overlay: !self.no_ipv6_overlay && crate::sync::host_has_ipv6(),
        }))
    }
}

#[cfg(feature = "management-server")]
// Parsed once at start-up: the size of the larger variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ManagementCommand {
    /// Serve REST (/api) and gRPC (ManagementService) on one address, state in SQLite.
    Serve {
        /// Holds management.db, the server's WireGuard key and (unless --api-token) api-token.
        #[arg(long, default_value = "/var/lib/gateway-management")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:33073")]
        listen: std::net::SocketAddr,
        /// REST API token (or GATEWAY_MANAGEMENT_TOKEN); default: <data-dir>/api-token, created on first start.
        #[arg(long)]
        api_token: Option<String>,
        /// Overlay network peers get addresses from.
        #[arg(long, default_value = "100.64.0.0/10")]
        network: ipnet::Ipv4Net,
        #[arg(long, default_value = "netbird.selfhosted")]
        dns_domain: String,
        /// IPv6 overlay range (default: a random ULA /64 picked at first start and kept).
        #[arg(long, conflicts_with = "no_ipv6")]
        network_v6: Option<ipnet::Ipv6Net>,
        /// No IPv6 overlay: maps carry IPv4 only.
        #[arg(long)]
        no_ipv6: bool,
        /// Ephemeral peers are deleted this many seconds after they disconnect.
        #[arg(long, default_value_t = 600)]
        ephemeral_timeout: u64,
        /// A TURN relay to hand to peers (NetbirdConfig.turns), e.g.
        /// turn:relay.example:3478?transport=udp; repeat for several.
        #[arg(long, requires = "turn_secret_file")]
        turn_uri: Vec<String>,
        /// The relays' shared secret (coturn's static-auth-secret): peers get time-limited
        /// credentials made from it.
        #[arg(long, requires = "turn_uri")]
        turn_secret_file: Option<PathBuf>,
        /// How long a TURN credential lasts, in seconds (NetBird's default 12 h).
        #[arg(long, default_value_t = 43_200)]
        turn_ttl: u64,
        /// A STUN server to hand to peers (NetbirdConfig.stuns); repeat for several.
        #[arg(long)]
        stun_uri: Vec<String>,
        /// The Signal server to hand to peers (NetbirdConfig.signal), e.g.
        /// https://signal.example:443. A stock NetBird client needs one to connect to others.
        #[arg(long)]
        signal_uri: Option<String>,
        /// A NetBird relay to hand to peers (NetbirdConfig.relay), e.g. rels://relay.example:443;
        /// repeat for several.
        #[arg(long, requires = "relay_secret_file")]
        relay_address: Vec<String>,
        /// The relays' auth secret: peers get time-limited tokens signed with it.
        #[arg(long, requires = "relay_address")]
        relay_secret_file: Option<PathBuf>,
        /// How long a relay token lasts, in seconds (NetBird's default 24 h).
        #[arg(long, default_value_t = 86_400)]
        relay_ttl: u64,
        /// TLS certificate chain, PEM, leaf first (e.g. certbot's fullchain.pem); re-read
        /// when it changes.
        #[arg(long, requires = "tls_key", conflicts_with = "plain_http")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key, PEM.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve without TLS (a lab, or behind a proxy that terminates TLS): tokens and setup
        /// keys then cross the network readable.
        #[arg(long)]
        plain_http: bool,
    },
    /// Snapshot the service's state (database and server key) into a directory; safe while it runs.
    Backup {
        #[arg(long, default_value = "/var/lib/gateway-management")]
        data_dir: PathBuf,
        /// An empty or new directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup into a data directory; with the service stopped.
    Restore {
        /// A directory `backup` wrote.
        #[arg(long)]
        from: PathBuf,
        #[arg(long, default_value = "/var/lib/gateway-management")]
        data_dir: PathBuf,
        /// Replace the database the data directory holds.
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Serve TURN until SIGINT/SIGTERM.
    Serve {
        /// The relay's YAML configuration.
        #[arg(long, conflicts_with = "coturn_config")]
        config: Option<PathBuf>,
        /// coturn's turnserver.conf: options this relay does not support are refused by name.
        #[arg(long)]
        coturn_config: Option<PathBuf>,
    },
    /// What a running relay reports (its metrics_addr).
    Status {
        #[arg(long, default_value = crate::relay::DEFAULT_STATUS_ADDR)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum WireguardCommand {
    /// Print the public key to hand to peers (the key is created on first use, mode 0600).
    PublicKey {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
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
        Command::Run {
            config,
            metrics_addr,
            detach_on_exit,
            management,
        } => {
            let state_dir = management.state_dir.clone();
            management
                .sync_options()
                .and_then(|m| runner::run(&config, metrics_addr, detach_on_exit, m, &state_dir))
        }
        Command::Detach { pin_dir, config } => detach(pin_dir, config),
        #[cfg(feature = "management-server")]
        Command::Management {
            command:
                ManagementCommand::Serve {
                    data_dir,
                    listen,
                    api_token,
                    network,
                    dns_domain,
                    network_v6,
                    no_ipv6,
                    ephemeral_timeout,
                    turn_uri,
                    turn_secret_file,
                    turn_ttl,
                    stun_uri,
                    signal_uri,
                    relay_address,
                    relay_secret_file,
                    relay_ttl,
                    tls_cert,
                    tls_key,
                    plain_http,
                },
        } => {
            use crate::management_server::Transport;
            let transport = match (tls_cert, tls_key, plain_http) {
                (Some(cert), Some(key), false) => {
                    Transport::Tls(management::tls::TlsFiles::new(cert, key))
                }
                (None, None, true) => Transport::PlainHttp,
                _ => {
                    return fail(anyhow::anyhow!(
                        "give --tls-cert and --tls-key to serve HTTPS, or --plain-http to serve without TLS"
                    ));
                }
            };
            let mut options = management::Options::new(data_dir);
            options.stuns = stun_uri;
            options.signal = signal_uri;
            if let Some(file) = relay_secret_file {
                match read_secret("--relay-secret-file", &file) {
                    Ok(secret) => {
                        options.relay = Some(management::RelayOptions {
                            urls: relay_address,
                            secret,
                            ttl: std::time::Duration::from_secs(relay_ttl.max(2)),
                        })
                    }
                    Err(e) => return fail(e),
                }
            }
            if let Some(file) = turn_secret_file {
                match read_secret("--turn-secret-file", &file) {
                    Ok(secret) => {
                        options.turn = Some(management::TurnOptions {
                            uris: turn_uri,
                            secret,
                            ttl: std::time::Duration::from_secs(turn_ttl.max(2)),
                        })
                    }
                    Err(e) => return fail(e),
                }
            }
            options.api_token =
                api_token.or_else(|| std::env::var("GATEWAY_MANAGEMENT_TOKEN").ok());
            options.network = network;
            options.dns_domain = dns_domain;
            options.ipv6 = match (network_v6, no_ipv6) {
                (_, true) => management::Ipv6Overlay::Off,
                (Some(n), false) => management::Ipv6Overlay::Range(n),
                (None, false) => management::Ipv6Overlay::Auto,
            };
            options.ephemeral_timeout = std::time::Duration::from_secs(ephemeral_timeout);
            crate::management_server::serve(options, listen, transport)
        }
        #[cfg(feature = "management-server")]
        Command::Management {
            command: ManagementCommand::Backup { data_dir, out },
        } => management::backup::backup(&data_dir, &out)
            .map(|()| println!("backed up {} into {}", data_dir.display(), out.display())),
        #[cfg(feature = "management-server")]
        Command::Management {
            command:
                ManagementCommand::Restore {
                    from,
                    data_dir,
                    replace,
                },
        } => management::backup::restore(&from, &data_dir, replace)
            .map(|()| println!("restored {} into {}", from.display(), data_dir.display())),
        Command::Status { addr, json } => status::print(addr, json),
        Command::Relay {
            command:
                RelayCommand::Serve {
                    config,
                    coturn_config,
                },
        } => crate::relay::serve(config.as_deref(), coturn_config.as_deref()),
        Command::Relay {
            command: RelayCommand::Status { addr, json },
        } => crate::relay::print_status(addr, json),
        Command::Wireguard {
            command: WireguardCommand::PublicKey { state_dir },
        } => crate::sync::Identity::load_or_create(&state_dir)
            .map(|id| println!("{}", id.key.public().to_base64())),
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => check(&file),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    policy,
                    config,
                    src,
                    dst,
                    proto,
                    dport,
                },
        } => explain(policy, config, src, dst, &proto, dport),
        Command::Demo { policy } => demo::run(policy.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// A shared secret from a file (trimmed); an empty file is refused.
#[cfg(feature = "management-server")]
fn read_secret(flag: &str, file: &std::path::Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(file) {
        Ok(secret) if !secret.trim().is_empty() => Ok(secret.trim().to_string()),
        Ok(_) => Err(anyhow::anyhow!("{flag} {}: empty", file.display())),
        Err(e) => Err(anyhow::anyhow!("{flag} {}: {e}", file.display())),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("gateway: {e:#}");
    ExitCode::FAILURE
}

fn detach(pin_dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let root = match (pin_dir, config) {
        (Some(dir), _) => dir,
        (None, Some(cfg)) => crate::config::Config::load(&cfg)?.pin_dir.ok_or_else(|| {
            anyhow::anyhow!("{} sets pin_dir: null; nothing is pinned", cfg.display())
        })?,
        (None, None) => PathBuf::from(gateway_common::maps::DEFAULT_PIN_ROOT),
    };
    for iface in gateway_dataplane::pins::PinDir::filters_elsewhere(&root) {
        eprintln!(
            "gateway detach: {iface} has a cls_bpf filter record but is not an interface of this \
             network namespace: deleted (its filter went with it), or the gateway ran in another \
             namespace, where its filter stays until `gateway detach` runs there"
        );
    }
    let removed = gateway_dataplane::pins::PinDir::remove_all(&root)?;
    if removed.is_empty() {
        println!("nothing pinned under {}", root.display());
    } else {
        println!(
            "removed {} pins under {}; the data plane is detached",
            removed.len(),
            root.display()
        );
    }
    Ok(())
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
        other => other.parse().map_err(|_| {
            anyhow::anyhow!("--proto: {other:?} is not tcp, udp, icmp or a protocol number")
        })?,
    })
}

fn explain(
    policy: Option<PathBuf>,
    config: Option<PathBuf>,
    src: IpAddr,
    dst: IpAddr,
    proto: &str,
    dport: u16,
) -> anyhow::Result<()> {
    let (file, limits) = match (policy, config) {
        (Some(p), _) => (p, compile::Limits::default()),
        (None, Some(c)) => {
            let cfg = Config::load(&c)?;
            let Some(policy) = cfg.policy.clone() else {
                anyhow::bail!(
                    "{} names no policy file (its policy comes from a management service)",
                    c.display()
                );
            };
            (policy, cfg.limits.compile_limits())
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
                format!(
                    "policy {:?} (action {}, priority {})",
                    rule.name,
                    rule.action.as_str(),
                    rule.priority
                )
            } else {
                format!(
                    "an exception of drop policy {:?} (priority {})",
                    rule.name, rule.priority
                )
            }
        }
        None => "default deny (no policy matches)".to_string(),
    };
    println!("verdict: {}", e.judgement.action.as_str());
    println!("decided by: {decided_by}");
    println!("flow: {src} -> {dst} proto {proto_num} dport {dport}");
    println!(
        "classes: source {} destination {}",
        e.src_class.src, e.dst_class.dst
    );
    Ok(())
}
