//! Scenario "management": an account of 10,000 peers, 1,000 groups and 5,000 policies.
//!
//! - Network-map computation per peer, in process, over a sample of peers and the gateway.
//! - REST change → BPF maps updated: the real `gateway management serve` and the real
//!   `gateway run --management-url` in a namespace; each change disables or re-enables a policy that reaches the
//!   gateway, timed from sending the PUT to the gateway's /status showing the new serial applied.
//! - Memory: the management process's resident set (peak and after the changes).

use gateway::status::Report;
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway_testkit::{management::ManagementProcess, netns::Netns, process::GatewayProcess};
use management::{
    model::*,
    netmap::{MapSettings, network_map},
    store::{Kind, Store, Touched},
};
use management_proto::WgKey;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde::{Deserialize, Serialize};

use crate::stats::{Summary, percentile};

pub const GATEWAY_SETUP_KEY: &str = "BENCH-GATEWAY-SETUP-KEY";
const TOKEN: &str = "bench-token-7c1e";
const MGMT_ADDR: &str = "127.0.0.1:33073";
const METRICS_ADDR: &str = "127.0.0.1:9464";
/// Policies that reach the gateway: half to it (input), half to the LAN resource it routes.
const GATEWAY_POLICIES: usize = 500;

#[derive(Debug, Serialize, Deserialize)]
pub struct ManagementBench {
    pub peers: usize,
    pub groups: usize,
    pub policies: usize,
    /// Per-peer network-map computation over `sampled_peers` random peers, ms.
    pub sampled_peers: usize,
    pub map_ms: Summary,
    pub map_p99_ms: f64,
    /// Firewall rules in a sampled peer's map (median).
    pub map_rules_median: f64,
    /// The gateway's own map: computation time and size.
    pub gateway_map_ms: Summary,
    pub gateway_firewall_rules: usize,
    pub gateway_route_rules: usize,
    /// REST change → policy in force on the gateway, ms.
    pub changes: usize,
    pub change_ms: Summary,
    pub change_p99_ms: f64,
    /// Policies the gateway compiled from its map.
    pub gateway_compiled_rules: usize,
    /// Of each change, the gateway's own share: map received → translated, compiled, written.
    pub gateway_apply_mean_ms: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    pub db_mib: f64,
}

/// Builds the account: peers in one or two of the groups, random policies among groups, and a
/// gateway group and LAN resource that `GATEWAY_POLICIES` of the policies reach.
pub fn synthetic_account(peers: usize, groups: usize, policies: usize, seed: u64) -> Account {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut a = Account::default();
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    for i in 0..peers {
        let id = format!("peer{i:05}");
        a.peers.insert(
            id.clone(),
            Peer {
                id: id.clone(),
                name: id.clone(),
                wg_pub_key: WgKey::generate().public().to_base64(),
                ip: Ipv4Addr::from(base + 2 + i as u32),
                hostname: id.clone(),
                os: "linux".into(),
                dns_label: id.clone(),
                ..Peer::blank()
            },
        );
    }
    let group_ids: Vec<String> = (0..groups).map(|g| format!("group{g:04}")).collect();
    for g in &group_ids {
        a.groups.insert(
            g.clone(),
            Group {
                id: g.clone(),
                name: g.clone(),
                peers: vec![],
                resources: vec![],
            },
        );
    }
    for (i, p) in a.peers.keys().enumerate() {
        a.groups
            .get_mut(&group_ids[i % groups])
            .unwrap()
            .peers
            .push(p.clone());
        if rng.random_bool(0.5) {
            let extra = group_ids.choose(&mut rng).unwrap();
            let g = a.groups.get_mut(extra).unwrap();
            if !g.peers.contains(p) {
                g.peers.push(p.clone());
            }
        }
    }
    // The gateway's group (it joins at registration) and the LAN it routes.
    a.groups.insert(
        "gateways".into(),
        Group {
            id: "gateways".into(),
            name: "gateways".into(),
            peers: vec![],
            resources: vec![],
        },
    );
    let lan_res = ResourceRef {
        id: "lan".into(),
        kind: ResourceKind::Subnet,
    };
    a.groups.insert(
        "lan-resources".into(),
        Group {
            id: "lan-resources".into(),
            name: "lan-resources".into(),
            peers: vec![],
            resources: vec![lan_res],
        },
    );
    a.networks.insert(
        "net".into(),
        Network {
            id: "net".into(),
            name: "lan".into(),
            description: String::new(),
        },
    );
    a.resources.insert(
        "lan".into(),
        NetworkResource {
            id: "lan".into(),
            network_id: "net".into(),
            name: "lan".into(),
            description: String::new(),
            address: "198.19.0.0/16".into(),
            parsed: ResourceAddress::Prefix("198.19.0.0/16".parse().unwrap()),
            enabled: true,
        },
    );
    a.routers.insert(
        "router".into(),
        NetworkRouter {
            id: "router".into(),
            network_id: "net".into(),
            peer: None,
            peer_groups: vec!["gateways".into()],
            metric: 100,
            masquerade: false,
            enabled: true,
        },
    );
    a.setup_keys.insert(
        "gateway-key".into(),
        SetupKey {
            id: "gateway-key".into(),
            hashed_key: management::account::hash_setup_key(GATEWAY_SETUP_KEY),
            key_prefix: GATEWAY_SETUP_KEY[..5].into(),
            legacy_key: None,
            name: "gateway".into(),
            kind: SetupKeyType::Reusable,
            created_at: 0,
            expires_at: 0,
            updated_at: 0,
            last_used: 0,
            revoked: false,
            used_times: 0,
            usage_limit: 0,
            auto_groups: vec!["gateways".into()],
            ephemeral: false,
            allow_extra_dns_labels: false,
        },
    );
    for i in 0..policies {
        let pick = |rng: &mut StdRng| -> Vec<String> {
            (0..rng.random_range(1..=3))
                .map(|_| group_ids.choose(rng).unwrap().clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let sources = pick(&mut rng);
        let destinations = if i < GATEWAY_POLICIES {
            vec![if i % 2 == 0 {
                "gateways".to_string()
            } else {
                "lan-resources".to_string()
            }]
        } else {
            pick(&mut rng)
        };
        let tcp = rng.random_bool(0.8);
        let ports = if tcp {
            (0..rng.random_range(1..=2))
                .map(|_| rng.random_range(1..=65535u16))
                .collect()
        } else {
            vec![]
        };
        let id = format!("policy{i:05}");
        a.policies.insert(
            id.clone(),
            Policy {
                id: id.clone(),
                name: id.clone(),
                description: String::new(),
                enabled: true,
                rules: vec![PolicyRule {
                    id: id.clone(),
                    name: id.clone(),
                    description: String::new(),
                    enabled: true,
                    action: if rng.random_bool(0.9) {
                        RuleAction::Accept
                    } else {
                        RuleAction::Drop
                    },
                    bidirectional: rng.random_bool(0.2),
                    protocol: if tcp {
                        RuleProtocol::Tcp
                    } else {
                        RuleProtocol::All
                    },
                    ports,
                    port_ranges: vec![],
                    sources,
                    destinations,
                    source_resource: None,
                    destination_resource: None,
                    authorized_groups: Default::default(),
                }],
            },
        );
    }
    a.serial = 1;
    a
}

fn all_objects(a: &Account) -> Touched {
    let mut t = Touched::new();
    t.extend(a.peers.keys().map(|k| (Kind::Peer, k.clone())));
    t.extend(a.groups.keys().map(|k| (Kind::Group, k.clone())));
    t.extend(a.policies.keys().map(|k| (Kind::Policy, k.clone())));
    t.extend(a.setup_keys.keys().map(|k| (Kind::SetupKey, k.clone())));
    t.extend(a.networks.keys().map(|k| (Kind::Network, k.clone())));
    t.extend(a.resources.keys().map(|k| (Kind::Resource, k.clone())));
    t.extend(a.routers.keys().map(|k| (Kind::Router, k.clone())));
    t
}

fn time_ms(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// Resident set of a process, current and peak (MiB).
fn rss_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kb: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(kb / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

pub(crate) fn gateway_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.join("gateway");
    if !bin.exists() {
        bail!(
            "{} is missing: `cargo xtask bench` builds it (cargo build --release -p gateway)",
            bin.display()
        );
    }
    Ok(bin)
}

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(quick: bool) -> anyhow::Result<ManagementBench> {
    let (peers, groups, policies) = (10_000, 1_000, 5_000);
    let sampled = if quick { 30 } else { 200 };
    let changes = if quick { 10 } else { 40 };
    eprintln!(
        "management: building an account of {peers} peers, {groups} groups, {policies} policies"
    );
    let account = synthetic_account(peers, groups, policies, 7);
    let settings = MapSettings {
        network: "100.64.0.0/10".parse()?,
        dns_domain: "bench.internal".into(),
    };

    // Map computation, in process.
    let mut rng = StdRng::seed_from_u64(11);
    let ids: Vec<&String> = account.peers.keys().collect();
    let mut map_ms = Vec::new();
    let mut rules = Vec::new();
    for id in ids.choose_multiple(&mut rng, sampled) {
        let mut m = None;
        map_ms.push(time_ms(|| m = network_map(&account, id, &settings)));
        rules.push(m.context("peer exists")?.firewall_rules.len() as f64);
    }

    // The real processes, in a namespace of their own.
    let dir = Scratch(std::env::temp_dir().join(format!("gwbench-mgmt-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let data = dir.0.join("management");
    std::fs::create_dir_all(&data)?;
    {
        let mut store = Store::open(&data.join("management.db"))?;
        store.save(&account, &all_objects(&account), &[])?;
    }
    let db_mib = std::fs::metadata(data.join("management.db"))?.len() as f64 / 1048576.0
        + std::fs::metadata(data.join("management.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0) as f64
            / 1048576.0;
    drop(account);
    let ns = Netns::create(&format!("gwbench-mgmt-{}", std::process::id()))?;
    ns.ip(&["link", "add", "t0", "type", "veth", "peer", "name", "t1"])?;
    ns.ip(&["link", "set", "t0", "up"])?;
    ns.ip(&["link", "set", "t1", "up"])?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let bin = gateway_binary()?;
    let addr: SocketAddr = MGMT_ADDR.parse()?;
    let mgmt = ManagementProcess::start(
        &bin,
        &ns,
        &data,
        addr,
        TOKEN,
        &["--plain-http"],
        &dir.0.join("management.log"),
    )?;
    let config = dir.0.join("gateway.yaml");
    std::fs::write(
        &config,
        format!("metrics_addr: {METRICS_ADDR}\ninterfaces:\n  tunnel:\n    - name: t0\n"),
    )?;
    let state = dir.0.join("gateway-state");
    let url = format!("http://{MGMT_ADDR}");
    let gw = GatewayProcess::start_with(
        &bin,
        &ns,
        &config,
        &dir.0.join("gateway.log"),
        &[
            "--management-url",
            &url,
            "--setup-key",
            GATEWAY_SETUP_KEY,
            "--state-dir",
            state.to_str().context("path")?,
        ],
    )?;
    let serial = |gw: &GatewayProcess| {
        gw.status::<Report>(&ns)
            .ok()
            .and_then(|s| s.management)
            .map(|m| m.serial)
            .unwrap_or(0)
    };
    let started = Instant::now();
    while serial(&gw) == 0 {
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the gateway applied no map within 30 s:\n{}\n{}",
                gw.log_text(),
                mgmt.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let compiled_rules = gw.status::<Report>(&ns)?.rules;

    // The gateway's map, computed in process from the stored account (it now includes the
    // registered gateway).
    let stored = Store::open(&data.join("management.db"))?.load()?;
    let gateway_id = stored.groups["gateways"]
        .peers
        .first()
        .cloned()
        .context("the gateway registered")?;
    let mut gw_ms = Vec::new();
    let mut gw_map = None;
    for _ in 0..if quick { 5 } else { 21 } {
        gw_ms.push(time_ms(|| {
            gw_map = network_map(&stored, &gateway_id, &settings)
        }));
    }
    let gw_map = gw_map.context("gateway map")?;

    // REST change → maps updated on the gateway.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let agent = Arc::new(agent);
    let mut change_ms = Vec::new();
    // Changes come in fours over two policies that reach the gateway (one to it, one to the LAN
    // behind it): off, off, on, on, then the next two. Each map then differs from the one
    // before last (what the gateway's inactive slot holds) by two policies, as a stream of
    // different edits would, and not by nothing, as toggling one policy back and forth would.
    let apply_sum = |gw: &GatewayProcess| -> anyhow::Result<(f64, f64)> {
        let text = gw.metrics(&ns)?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0)
        };
        Ok((
            value("gateway_management_apply_seconds_sum "),
            value("gateway_management_apply_seconds_count "),
        ))
    };
    let (sum0, count0) = apply_sum(&gw)?;
    for i in 0..changes {
        let before = serial(&gw);
        let policy = 2 * (i / 4) + i % 2;
        let path = format!("http://{MGMT_ADDR}/api/policies/policy{policy:05}");
        let enabled = i % 4 >= 2;
        // The body is prepared first: only the PUT and what follows it is timed.
        let body = {
            let (agent, path) = (agent.clone(), path.clone());
            ns.run(move || -> anyhow::Result<serde_json::Value> {
                let mut policy: serde_json::Value = agent
                    .get(&path)
                    .header("Authorization", &format!("Token {TOKEN}"))
                    .call()?
                    .body_mut()
                    .read_json()?;
                policy["enabled"] = serde_json::Value::Bool(enabled);
                for rule in policy["rules"].as_array_mut().context("rules")? {
                    for side in ["sources", "destinations"] {
                        let ids: Vec<serde_json::Value> = rule[side]
                            .as_array()
                            .context("groups")?
                            .iter()
                            .map(|g| g["id"].clone())
                            .collect();
                        rule[side] = serde_json::Value::Array(ids);
                    }
                }
                policy.as_object_mut().context("object")?.remove("id");
                Ok(policy)
            })??
        };
        let agent = agent.clone();
        let t0 = Instant::now();
        ns.run(move || {
            agent
                .put(&path)
                .header("Authorization", &format!("Token {TOKEN}"))
                .send_json(&body)
                .map(|_| ())
        })??;
        while serial(&gw) <= before {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("change {i} not applied within 10 s:\n{}", gw.log_text());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        change_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (sum1, count1) = apply_sum(&gw)?;
    let gateway_apply_mean_ms = (sum1 - sum0) / (count1 - count0).max(1.0) * 1e3;
    let (rss, peak) = rss_mib(mgmt.pid())?;
    drop(gw);
    drop(mgmt);
    Ok(ManagementBench {
        peers,
        groups,
        policies,
        sampled_peers: sampled,
        map_p99_ms: percentile(&map_ms, 99.0),
        map_ms: Summary::of(map_ms),
        map_rules_median: Summary::of(rules).median,
        gateway_map_ms: Summary::of(gw_ms),
        gateway_firewall_rules: gw_map.firewall_rules.len(),
        gateway_route_rules: gw_map.routes_firewall_rules.len(),
        changes,
        change_p99_ms: percentile(&change_ms, 99.0),
        change_ms: Summary::of(change_ms),
        gateway_compiled_rules: compiled_rules,
        gateway_apply_mean_ms,
        rss_mib: rss,
        peak_rss_mib: peak,
        db_mib,
    })
}

pub fn markdown(md: &mut String, m: &ManagementBench) {
    use std::fmt::Write as _;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let _ = writeln!(
        md,
        "## Management: {} peers, {} groups, {} policies\n",
        m.peers, m.groups, m.policies
    );
    let _ = writeln!(
        md,
        "The account is synthetic (bench/src/management.rs): every peer in one group and half of them in a second; each policy one rule from 1–3 random groups to 1–3 random groups (80% TCP with 1–2 ports, 90% accept, 20% bidirectional); {GATEWAY_POLICIES} of them reach the gateway (its group, or a LAN subnet it routes). The REST figures come from the real `gateway management serve` and `gateway run --management-url` processes in a namespace: each change disables or re-enables one of the policies that reach the gateway (in fours: two off, the same two on, then the next two, so each map differs from the one before last by two policies), timed from sending the PUT until the gateway's /status shows the new serial in force (maps written).\n"
    );
    let _ = writeln!(md, "| measure | median | min–max | p99 | target |");
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    let s = &m.map_ms;
    let _ = writeln!(
        md,
        "| network map, {} random peers (median {:.0} firewall rules) | {:.2} ms | {:.2}–{:.2} ms | {:.2} ms | ≤ 50 ms: {} |",
        m.sampled_peers,
        m.map_rules_median,
        s.median,
        s.min,
        s.max,
        m.map_p99_ms,
        verdict(s.max <= 50.0)
    );
    let s = &m.gateway_map_ms;
    let _ = writeln!(
        md,
        "| network map of the gateway ({} firewall rules, {} route rules) | {:.2} ms | {:.2}–{:.2} ms | — | ≤ 50 ms: {} |",
        m.gateway_firewall_rules,
        m.gateway_route_rules,
        s.median,
        s.min,
        s.max,
        verdict(s.max <= 50.0)
    );
    let s = &m.change_ms;
    let _ = writeln!(
        md,
        "| REST change → gateway maps updated ({} changes; {} compiled policies) | {:.1} ms | {:.1}–{:.1} ms | {:.1} ms | p99 ≤ 200 ms: {} |",
        m.changes,
        m.gateway_compiled_rules,
        s.median,
        s.min,
        s.max,
        m.change_p99_ms,
        verdict(m.change_p99_ms <= 200.0)
    );
    let _ = writeln!(
        md,
        "| of which the gateway: map received → policy in force (mean) | {:.1} ms | — | — | — |",
        m.gateway_apply_mean_ms
    );
    let _ = writeln!(
        md,
        "| management resident memory (now / peak) | {:.0} MiB / {:.0} MiB | — | — | ≤ 300 MB: {} |",
        m.rss_mib,
        m.peak_rss_mib,
        verdict(m.peak_rss_mib * 1.048576 <= 300.0)
    );
    let _ = writeln!(
        md,
        "\nThe SQLite database with this account is {:.1} MiB.\n",
        m.db_mib
    );
}
