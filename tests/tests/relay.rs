//! The TURN relay with real clients someone else wrote: coturn's `turnutils_uclient` against the
//! relay (`gateway relay serve`), echoed by coturn's `turnutils_peer`, in namespaces. Channels
//! and Send indications, static and time-limited credentials, several clients, coturn's own
//! configuration file; no message lost at a low rate.
//!
//! ```text
//!  client 198.18.30.2 ── c0 198.18.30.1:3478 [relay] p0 198.18.31.1 ── peer 198.18.31.2:3480
//! ```

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use gateway_testkit::{
    harness::{gateway_binary, turn_flows_on},
    netns::{Netns, veth},
};

struct Lab {
    relay: Netns,
    client: Netns,
    peer: Netns,
    dir: std::path::PathBuf,
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lab() -> Lab {
    gateway_testkit::netns::remove_stale("gwturn");
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!(
        "gwturn{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let lab = Lab {
        relay: Netns::create(&format!("{id}-relay")).unwrap(),
        client: Netns::create(&format!("{id}-client")).unwrap(),
        peer: Netns::create(&format!("{id}-peer")).unwrap(),
        dir: std::env::temp_dir().join(&id),
    };
    std::fs::create_dir_all(&lab.dir).unwrap();
    veth(&lab.relay, "c0", &lab.client, "eth0").unwrap();
    veth(&lab.relay, "p0", &lab.peer, "eth0").unwrap();
    lab.relay
        .ip(&["addr", "add", "198.18.30.1/24", "dev", "c0"])
        .unwrap();
    lab.relay
        .ip(&["addr", "add", "198.18.31.1/24", "dev", "p0"])
        .unwrap();
    lab.client
        .ip(&["addr", "add", "198.18.30.2/24", "dev", "eth0"])
        .unwrap();
    lab.peer
        .ip(&["addr", "add", "198.18.31.2/24", "dev", "eth0"])
        .unwrap();
    lab
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the relay with `args` after `relay serve`, and coturn's echo peer; waits until the
/// relay listens.
fn start(lab: &Lab, args: &[&str]) -> (Kill, Kill) {
    let log = std::fs::File::create(lab.dir.join("relay.log")).unwrap();
    let relay = lab
        .relay
        .command(gateway_binary().to_str().unwrap())
        .args(["relay", "serve"])
        .args(args)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let peer = lab
        .peer
        .command("turnutils_peer")
        .args(["-L", "198.18.31.2", "-p", "3480"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer (apt install coturn)");
    // The relay loads and verifies the whole data-plane object before it listens: seconds on
    // an idle machine, more while the rest of the suite loads it too, and far more in an
    // emulated guest (the test kit's slowdown stretches it there).
    let deadline = Instant::now() + gateway_testkit::harness::deadline(Duration::from_secs(30));
    while !std::fs::read_to_string(lab.dir.join("relay.log"))
        .unwrap_or_default()
        .contains("TURN relay listening")
    {
        assert!(
            Instant::now() < deadline,
            "relay did not start:\n{}",
            std::fs::read_to_string(lab.dir.join("relay.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Kill(relay), Kill(peer))
}

/// What turnutils_uclient reported: messages sent, received, lost.
#[derive(Debug, PartialEq)]
struct Outcome {
    sent: u64,
    received: u64,
    lost: u64,
}

fn uclient(lab: &Lab, args: &[&str]) -> Result<Outcome, String> {
    uclient_to(lab, args, "198.18.31.2")
}

/// turnutils_uclient relaying to the echo peer at `peer` (port 3480).
fn uclient_to(lab: &Lab, args: &[&str], peer: &str) -> Result<Outcome, String> {
    uclient_via(lab, args, peer, "198.18.30.1")
}

/// turnutils_uclient through the relay at `server` to the echo peer at `peer` (port 3480).
fn uclient_via(lab: &Lab, args: &[&str], peer: &str, server: &str) -> Result<Outcome, String> {
    let out = lab
        .client
        .command("timeout")
        .args(["60", "turnutils_uclient"])
        .args(args)
        .args(["-e", peer, "-r", "3480", server])
        .output()
        .expect("turnutils_uclient (apt install coturn)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .rev()
            .find_map(|l| l.split(key).nth(1))
            .and_then(|rest| {
                rest.trim_start_matches(['=', ' '])
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
            })
            .and_then(|n| n.parse().ok())
    };
    match (
        field("tot_send_msgs"),
        field("tot_recv_msgs"),
        field("Total lost packets"),
    ) {
        (Some(sent), Some(received), Some(lost)) => Ok(Outcome {
            sent,
            received,
            lost,
        }),
        _ => Err(text),
    }
}

/// coturn's client as the static user of [`CONFIG`]: 2 clients, 30 messages each.
const ALICE: [&str; 8] = ["-u", "alice", "-w", "wonderland", "-m", "2", "-n", "30"];

const CONFIG: &str = "listen: [198.18.30.1:3478]\nrelay_ip: 198.18.31.1\nrealm: lab.example\nusers:\n  alice: wonderland\nstatic_auth_secret: s3cret\nmin_port: 50000\nmax_port: 50100\nmetrics_addr: 127.0.0.1:9465\n";

/// What the relay's XDP route lookups need: forwarding on its two links (the kernel answers
/// input lookups only there), with a firewall that drops what the kernel itself would forward.
fn xdp_routes(lab: &Lab) {
    for dev in ["c0", "p0"] {
        for family in ["ipv4", "ipv6"] {
            lab.relay
                .sysctl(&format!("net.{family}.conf.{dev}.forwarding"), "1")
                .unwrap();
        }
    }
    lab.relay.exec(&["nft", "add table inet fw; add chain inet fw forward { type filter hook forward priority 0; policy drop; }"]).unwrap();
}

/// The relay's /status or /metrics, from inside its namespace.
fn relay_http(lab: &Lab, path: &'static str) -> String {
    lab.relay
        .run(move || gateway_testkit::process::http_get("127.0.0.1:9465".parse().unwrap(), path))
        .unwrap()
        .expect("relay answers")
}

#[test]
fn coturn_clients_relay_through_channels_and_send_indications() {
    let lab = lab();
    let cfg = lab.dir.join("relay.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let _procs = start(&lab, &["--config", cfg.to_str().unwrap()]);
    let each = |args: &[&str], what: &str| {
        let o = uclient(&lab, args).unwrap_or_else(|text| panic!("{what}: no report\n{text}"));
        assert_eq!((o.sent, o.received, o.lost), (60, 60, 0), "{what}: {o:?}");
    };
    // Two clients, 30 messages each, static user, channels (the default).
    each(
        &[
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-m",
            "2",
            "-n",
            "30",
            "-l",
            "120",
        ],
        "channels",
    );
    // Send and Data indications instead of channels.
    each(
        &[
            "-s",
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-m",
            "2",
            "-n",
            "30",
            "-l",
            "120",
        ],
        "send indications",
    );
    // Time-limited credentials from the shared secret, with a timestamp-only username, exactly
    // what NetBird's management hands out.
    each(
        &["-W", "s3cret", "-m", "2", "-n", "30", "-l", "120"],
        "time-limited credentials",
    );
    // Padded ChannelData.
    each(
        &[
            "-D",
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-m",
            "2",
            "-n",
            "30",
            "-l",
            "121",
        ],
        "padding",
    );
    // A wrong password gets no allocation.
    let refused = uclient(&lab, &["-u", "alice", "-w", "not-it", "-m", "1", "-n", "5"]);
    assert!(
        refused
            .as_ref()
            .is_err_and(|t| t.contains("Cannot complete Allocation")),
        "{refused:?}"
    );
    // What the relay counted: every message both ways (4 runs of 60), the refused login.
    let status: serde_json::Value = serde_json::from_str(&relay_http(&lab, "/status")).unwrap();
    assert!(
        status["to_peer_packets"].as_u64().unwrap() >= 240,
        "{status}"
    );
    assert!(
        status["to_client_packets"].as_u64().unwrap() >= 240,
        "{status}"
    );
    assert!(status["auth_failures"].as_u64().unwrap() >= 1, "{status}");
    let metrics = relay_http(&lab, "/metrics");
    assert!(
        metrics.contains("gateway_relay_packets_total{direction=\"to_peer\",path=\"userspace\"}"),
        "{metrics}"
    );
}

/// The relay's log without its terminal colour codes.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// IPv6 relayed addresses (RFC 8656 REQUESTED-ADDRESS-FAMILY) as coturn's client asks for them
/// (`-x`): a client on IPv4 relays to an IPv6 peer, through channels and Send indications.
#[test]
fn coturn_clients_relay_to_ipv6_peers_from_ipv6_relayed_addresses() {
    let lab = lab();
    // Duplicate address detection off: the addresses are usable at once.
    lab.relay
        .ip(&["addr", "add", "fd00:31::1/64", "dev", "p0", "nodad"])
        .unwrap();
    lab.peer
        .ip(&["addr", "add", "fd00:31::2/64", "dev", "eth0", "nodad"])
        .unwrap();
    let cfg = lab.dir.join("relay.yaml");
    std::fs::write(
        &cfg,
        CONFIG.replace(
            "relay_ip: 198.18.31.1",
            "relay_ip: [198.18.31.1, 'fd00:31::1']",
        ),
    )
    .unwrap();
    let _procs = start(&lab, &["--config", cfg.to_str().unwrap()]);
    let _peer6 = Kill(
        lab.peer
            .command("turnutils_peer")
            .args(["-L", "fd00:31::2", "-p", "3480"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(200));
    for (extra, what) in [(&[][..], "channels"), (&["-s"][..], "send indications")] {
        let args: Vec<&str> = ["-x", "-l", "1200"]
            .iter()
            .chain(extra)
            .chain(&ALICE)
            .copied()
            .collect();
        let o = uclient_to(&lab, &args, "fd00:31::2").unwrap_or_else(|text| {
            let log = std::fs::read_to_string(lab.dir.join("relay.log")).unwrap_or_default();
            panic!("{what}: no report\n{text}\nthe relay's log:\n{log}")
        });
        assert_eq!((o.sent, o.received, o.lost), (60, 60, 0), "{what}: {o:?}");
    }
    // The allocations were IPv6 ones (the relay logs each with its relayed address), RTCP's
    // included (its port reserved by EVEN-PORT, taken with the RESERVATION-TOKEN).
    let log = without_colours(&std::fs::read_to_string(lab.dir.join("relay.log")).unwrap());
    let made: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("INFO allocation client="))
        .collect();
    assert!(
        made.len() >= 4 && made.iter().all(|l| l.contains("relayed=[fd00:31::1]:")),
        "IPv6 relayed addresses only:\n{log}"
    );
    // (coturn's client asks for an IPv4 relayed address itself when its peer is IPv4, so the
    // 443 for a peer of the wrong family is checked with the crate's own client, in
    // relay/src/server/tests.rs.)
}

#[test]
fn coturns_configuration_file_starts_the_relay_in_its_place() {
    let lab = lab();
    let conf = lab.dir.join("turnserver.conf");
    std::fs::write(
        &conf,
        "# as NetBird's docs set up coturn\nlistening-port=3478\nlistening-ip=198.18.30.1\nrelay-ip=198.18.31.1\nrealm=wiretrustee.com\nfingerprint\nlt-cred-mech\nuser=self:pw\nmin-port=50000\nmax-port=50100\nno-cli\n",
    )
    .unwrap();
    let _procs = start(&lab, &["--coturn-config", conf.to_str().unwrap()]);
    let o = uclient(
        &lab,
        &["-u", "self", "-w", "pw", "-m", "2", "-n", "10", "-l", "100"],
    )
    .expect("report");
    assert_eq!((o.sent, o.received, o.lost), (20, 20, 0), "{o:?}");
    let log = std::fs::read_to_string(lab.dir.join("relay.log")).unwrap();
    assert!(
        log.contains("fingerprint") && log.contains("no-cli"),
        "the ignored options are named:\n{log}"
    );
    // An option the relay cannot honour stops it, by name.
    std::fs::write(
        &conf,
        "realm=r\nlt-cred-mech\nuser=a:b\ntls-listening-port=5349\n",
    )
    .unwrap();
    let out = lab
        .relay
        .command(gateway_binary().to_str().unwrap())
        .args(["relay", "serve", "--coturn-config", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls-listening-port"));
}

#[test]
fn peers_the_relay_must_not_reach_are_refused() {
    let lab = lab();
    let cfg = lab.dir.join("relay.yaml");
    // The peer's network denied: allocations work, permissions to it do not.
    std::fs::write(&cfg, format!("{CONFIG}denied_peer_ip: [198.18.31.0/24]\n")).unwrap();
    let _procs = start(&lab, &["--config", cfg.to_str().unwrap()]);
    let o = uclient(
        &lab,
        &[
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-m",
            "1",
            "-n",
            "5",
            "-l",
            "100",
        ],
    );
    assert!(
        o.as_ref().map_or(true, |o| o.received == 0),
        "relayed to a denied peer: {o:?}"
    );
    let log = std::fs::read_to_string(lab.dir.join("relay.log")).unwrap();
    assert!(
        log.contains("allocation"),
        "the client did get an allocation:\n{log}"
    );
    assert!(
        log.contains("refused") && log.contains("198.18.31.2"),
        "the relay refused the peer:\n{log}"
    );
}

/// The embedded management service hands the relay out as NetBird's does: `NetbirdConfig.turns`
/// with a time-limited credential made from the relay's shared secret, in the Login answer, on
/// the Sync stream, and again before it expires. coturn's client relays with it.
#[test]
fn management_hands_out_the_relay_with_credentials_it_accepts() {
    use management_proto::{
        WgKey, WgPublicKey,
        pb::{self, management_service_client::ManagementServiceClient},
    };
    let lab = lab();
    let secret = lab.dir.join("turn-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let data = lab.dir.join("management");
    let uri = "turn:198.18.30.1:3478?transport=udp";
    let _mgmt = gateway_testkit::management::ManagementProcess::start(
        &gateway_binary(),
        &lab.relay,
        &data,
        "198.18.30.1:33073".parse().unwrap(),
        "relay-lab-token",
        &[
            "--plain-http",
            "--turn-uri",
            uri,
            "--turn-secret-file",
            secret.to_str().unwrap(),
            "--turn-ttl",
            "4",
        ],
        &lab.dir.join("management.log"),
    )
    .expect("management starts");
    let api = gateway_testkit::management::Api {
        ns: &lab.relay,
        addr: "198.18.30.1:33073",
        token: "relay-lab-token",
    };
    let setup_key = api.ok(
        "POST",
        "/api/setup-keys",
        serde_json::json!({"name": "peers", "type": "reusable"}),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let key = WgKey::generate();
    let login = gateway_testkit::management::grpc_login(
        &lab.client,
        "http://198.18.30.1:33073",
        &setup_key,
        WgKey::from_base64(&key.to_base64()).unwrap(),
        "peer",
    )
    .expect("login");
    let turns = login
        .netbird_config
        .expect("netbirdConfig in the Login answer")
        .turns;
    assert_eq!(turns.len(), 1);
    let t = &turns[0];
    assert_eq!(t.host_config.as_ref().map(|h| h.uri.as_str()), Some(uri));
    let expiry: u64 = t.user.parse().expect("username = expiry unix time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 2..=now + 6).contains(&expiry),
        "expiry {expiry}, now {now}"
    );

    // The relay with the same secret; coturn's client with the handed-out credential.
    let cfg = lab.dir.join("relay.yaml");
    std::fs::write(&cfg, "listen: [198.18.30.1:3478]\nrelay_ip: 198.18.31.1\nrealm: lab.example\nstatic_auth_secret: s3cret\nmin_port: 50000\nmax_port: 50100\n").unwrap();
    let _procs = start(&lab, &["--config", cfg.to_str().unwrap()]);
    let o = uclient(
        &lab,
        &[
            "-u",
            &t.user,
            "-w",
            &t.password,
            "-m",
            "2",
            "-n",
            "10",
            "-l",
            "100",
        ],
    )
    .expect("report");
    assert_eq!((o.sent, o.received, o.lost), (20, 20, 0), "{o:?}");

    // On the Sync stream: the first message carries a credential, and a renewed one comes at ¾
    // of its 4 s life, alone.
    let fresh = lab
        .client
        .run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut client = ManagementServiceClient::connect("http://198.18.30.1:33073")
                        .await
                        .unwrap();
                    let server = WgPublicKey::from_base64(
                        &client
                            .get_server_key(pb::Empty {})
                            .await
                            .unwrap()
                            .into_inner()
                            .key,
                    )
                    .unwrap();
                    let mut stream = client
                        .sync(key.seal_message(&server, &pb::SyncRequest { meta: None }))
                        .await
                        .unwrap()
                        .into_inner();
                    let mut users = Vec::new();
                    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(8);
                    while users.len() < 2 && tokio::time::Instant::now() < deadline {
                        let Ok(Ok(Some(m))) = tokio::time::timeout(
                            std::time::Duration::from_secs(8),
                            stream.message(),
                        )
                        .await
                        else {
                            break;
                        };
                        let r: pb::SyncResponse = key.open_message(&server, &m).unwrap();
                        if let Some(c) = r.netbird_config {
                            users.push((c.turns[0].user.clone(), r.network_map.is_some()));
                        }
                    }
                    users
                })
        })
        .unwrap();
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    assert!(
        fresh[0].1 && !fresh[1].1,
        "the map first, then the credential alone: {fresh:?}"
    );
    assert!(
        fresh[1].0.parse::<u64>().unwrap() > fresh[0].0.parse::<u64>().unwrap(),
        "a later expiry: {fresh:?}"
    );
}

/// Bound channels in the kernel: the relay hands each ChannelBind to its XDP program, coturn's
/// client relays through it without loss, and the relay's counters show the kernel carried the
/// channel data. (Generic XDP here: the lab's veths redirect to each other in generic mode; the
/// relay's interfaces forward, behind a firewall that drops forwarded traffic, because the
/// program's route lookups need forwarding interfaces.) The client and the peer send with
/// transmit checksum offload off, so that their datagrams carry full checksums as frames from a
/// wire do: with it on, a veth hands the relay checksums only begun, which the program leaves
/// to userspace (asserted in the next test).
#[test]
fn bound_channels_are_relayed_in_xdp() {
    let lab = lab();
    for ns in [&lab.client, &lab.peer] {
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    }
    xdp_routes(&lab);
    let cfg = lab.dir.join("relay.yaml");
    std::fs::write(
        &cfg,
        format!("{CONFIG}xdp:\n  interfaces: [c0, p0]\n  attach: xdp-generic\n"),
    )
    .unwrap();
    let _procs = start(&lab, &["--config", cfg.to_str().unwrap()]);
    for len in ["64", "120", "1200"] {
        let o = uclient(
            &lab,
            &[
                "-u",
                "alice",
                "-w",
                "wonderland",
                "-m",
                "2",
                "-n",
                "30",
                "-l",
                len,
            ],
        )
        .expect("report");
        assert_eq!(
            (o.sent, o.received, o.lost),
            (60, 60, 0),
            "{len} bytes: {o:?}\n{}",
            relay_http(&lab, "/status")
        );
    }
    let status: serde_json::Value = serde_json::from_str(&relay_http(&lab, "/status")).unwrap();
    let xdp = &status["xdp"];
    assert!(
        xdp["to_peer_packets"].as_u64().unwrap() >= 50,
        "the kernel carried the client's channel data: {status}"
    );
    assert!(
        xdp["to_client_packets"].as_u64().unwrap() >= 50,
        "and the peer's answers: {status}"
    );
    // Most of it took the per-flow shortcut (a flow's first frame on each CPU, and the first
    // longer than its route was looked up for, take the full path, which fills the slot).
    let flows = turn_flows_on(&lab.relay, "c0").unwrap();
    let hits: u64 = flows.iter().map(|f| f.hits as u64).sum();
    // (Read after the slots: every frame a slot counts, the relay's counters count.)
    let after: serde_json::Value = serde_json::from_str(&relay_http(&lab, "/status")).unwrap();
    let in_kernel = after["xdp"]["to_peer_packets"].as_u64().unwrap()
        + after["xdp"]["to_client_packets"].as_u64().unwrap();
    eprintln!("{hits} of {in_kernel} frames relayed in XDP took the shortcut");
    assert!(
        flows.iter().any(|f| f.channel != 0) && flows.iter().any(|f| f.channel == 0),
        "slots of both directions: {flows:?}"
    );
    assert!(
        hits * 2 >= in_kernel && hits <= in_kernel,
        "{hits} of {in_kernel} frames relayed in XDP took the shortcut: {flows:?}"
    );
    // Each allocation's own count, from its bindings' kernel counters: logged as the clients
    // release their allocations (coturn logs its sessions' usage the same way).
    let log = std::fs::read_to_string(lab.dir.join("relay.log")).unwrap();
    let in_xdp: Vec<(u64, u64)> = log
        .lines()
        .filter(|l| l.contains("allocation ended (released)"))
        .flat_map(|l| {
            l.split("in XDP ")
                .skip(1)
                .map(|part| part.split(')').next().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .map(|pair| {
            let (p, b) = pair.split_once(", ").unwrap();
            (p.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    let packets: u64 = in_xdp.iter().map(|(p, _)| p).sum();
    let bytes: u64 = in_xdp.iter().map(|(_, b)| b).sum();
    assert!(
        packets >= 100 && bytes >= 30 * 1200,
        "per-allocation XDP counts in the log:\n{log}"
    );
    assert!(
        packets
            <= xdp["to_peer_packets"].as_u64().unwrap()
                + xdp["to_client_packets"].as_u64().unwrap(),
        "{status}"
    );
    // Send indications (no channel) stay in userspace.
    let before = status["to_peer_packets"].as_u64().unwrap();
    let o = uclient(
        &lab,
        &[
            "-s",
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-m",
            "2",
            "-n",
            "10",
            "-l",
            "120",
        ],
    )
    .expect("report");
    assert_eq!((o.sent, o.received, o.lost), (20, 20, 0), "{o:?}");
    let status: serde_json::Value = serde_json::from_str(&relay_http(&lab, "/status")).unwrap();
    assert!(
        status["to_peer_packets"].as_u64().unwrap() >= before + 20,
        "{status}"
    );
}

/// IPv6 end to end in XDP: coturn's client reaches the relay over IPv6, asks for an IPv6
/// relayed address (`-x`) and relays to an IPv6 echo peer through channels; the kernel
/// carries the channel data both ways (counted per direction in /status) and nothing is lost.
#[test]
fn ipv6_channels_are_relayed_in_xdp() {
    let lab = lab();
    for (ns, dev, addr) in [
        (&lab.relay, "c0", "fd00:30::1/64"),
        (&lab.relay, "p0", "fd00:31::1/64"),
        (&lab.client, "eth0", "fd00:30::2/64"),
        (&lab.peer, "eth0", "fd00:31::2/64"),
    ] {
        // Duplicate address detection off: the addresses are usable at once.
        ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]).unwrap();
    }
    // Full checksums, as from a wire (begun ones go to userspace: see begun_checksums_...).
    for ns in [&lab.client, &lab.peer] {
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    }
    xdp_routes(&lab);
    let cfg = lab.dir.join("relay.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}xdp:\n  interfaces: [c0, p0]\n  attach: xdp-generic\n",
            CONFIG
                .replace(
                    "listen: [198.18.30.1:3478]",
                    "listen: [198.18.30.1:3478, '[fd00:30::1]:3478']"
                )
                .replace(
                    "relay_ip: 198.18.31.1",
                    "relay_ip: [198.18.31.1, 'fd00:31::1']"
                )
        ),
    )
    .unwrap();
    let _procs = start(&lab, &["--config", cfg.to_str().unwrap()]);
    let _peer6 = Kill(
        lab.peer
            .command("turnutils_peer")
            .args(["-L", "fd00:31::2", "-p", "3480"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(200));
    for len in ["64", "1200"] {
        let args = [&["-x", "-l", len][..], &ALICE].concat();
        let o = uclient_via(&lab, &args, "fd00:31::2", "fd00:30::1").unwrap_or_else(|text| {
            let log = std::fs::read_to_string(lab.dir.join("relay.log")).unwrap_or_default();
            panic!("{len} bytes: no report\n{text}\nthe relay's log:\n{log}")
        });
        assert_eq!(
            (o.sent, o.received, o.lost),
            (60, 60, 0),
            "{len} bytes: {o:?}\n{}",
            relay_http(&lab, "/status")
        );
    }
    let status: serde_json::Value = serde_json::from_str(&relay_http(&lab, "/status")).unwrap();
    let xdp = &status["xdp"];
    assert!(
        xdp["to_peer_packets"].as_u64().unwrap() >= 100
            && xdp["to_client_packets"].as_u64().unwrap() >= 100,
        "the kernel carried the IPv6 channel data both ways: {status}"
    );
    let log = without_colours(&std::fs::read_to_string(lab.dir.join("relay.log")).unwrap());
    let made: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("INFO allocation client="))
        .collect();
    assert!(
        made.len() >= 4
            && made
                .iter()
                .all(|l| l.contains("client=[fd00:30::2]:") && l.contains("relayed=[fd00:31::1]:")),
        "IPv6 clients with IPv6 relayed addresses:\n{log}"
    );
}

/// A bpffs of the test's own for a gateway's pins; unmounted (its programs detach) when dropped.
struct Bpffs(std::path::PathBuf);
impl Drop for Bpffs {
    fn drop(&mut self) {
        gateway_dataplane::pins::unmount_bpffs(&self.0);
    }
}

/// The relay and the gateway's underlay filter on one interface: `gateway run` guards c0 (its
/// WireGuard port, native-less veth so generic XDP) and the relay, told where the gateway is
/// pinned (`xdp.behind_gateway`), runs its program after the filter on what the filter passes.
/// coturn's client relays through channels in XDP across c0, malformed WireGuard is still
/// dropped there, and a relay that stops takes its program out of the gateway's slot.
#[test]
fn the_relay_runs_after_the_gateways_underlay_filter_on_one_interface() {
    let lab = lab();
    for ns in [&lab.client, &lab.peer] {
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    }
    xdp_routes(&lab);
    let bpffs = Bpffs(lab.dir.join("bpffs"));
    gateway_dataplane::pins::mount_bpffs(&bpffs.0).unwrap();
    let pins = bpffs.0.join("gateway");
    // The gateway: a tunnel (a veth) it guards, and its underlay filter on c0.
    veth(&lab.relay, "wt9", &lab.peer, "wt9p").unwrap();
    let policy = lab.dir.join("policy.yaml");
    std::fs::write(&policy, "groups: {}\npolicies: []\n").unwrap();
    let gw_cfg = lab.dir.join("gateway.yaml");
    std::fs::write(
        &gw_cfg,
        format!(
            "policy: {}\npin_dir: {}\nmetrics_addr: 127.0.0.1:9464\ninterfaces:\n  tunnel:\n    - name: wt9\n  lan: []\n  underlay:\n    - name: c0\n      ports: [51820]\n      attach: xdp-generic\n",
            policy.display(),
            pins.display()
        ),
    )
    .unwrap();
    let gw = gateway_testkit::process::GatewayProcess::start_with(
        &gateway_binary(),
        &lab.relay,
        &gw_cfg,
        &lab.dir.join("gateway.log"),
        &[],
    )
    .unwrap();
    // The relay: its own program on p0, and behind the gateway's filter on c0.
    let cfg = lab.dir.join("relay.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{CONFIG}xdp:\n  interfaces: [p0]\n  attach: xdp-generic\n  behind_gateway: {}\n",
            pins.display()
        ),
    )
    .unwrap();
    // Told to run behind a gateway that has pinned nothing there, the relay refuses, by name.
    let wrong = lab.dir.join("relay-wrong.yaml");
    std::fs::write(
        &wrong,
        format!(
            "{CONFIG}xdp:\n  interfaces: [p0]\n  attach: xdp-generic\n  behind_gateway: {}\n",
            bpffs.0.join("nothing-here").display()
        ),
    )
    .unwrap();
    let refused = lab
        .relay
        .command(gateway_binary().to_str().unwrap())
        .args(["relay", "serve", "--config", wrong.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr).into_owned()
        + &String::from_utf8_lossy(&refused.stdout);
    assert!(
        !refused.status.success() && said.contains("no gateway data plane of this layout"),
        "{said}"
    );
    let (relay, _peer) = start(&lab, &["--config", cfg.to_str().unwrap()]);
    let o = uclient(&lab, &[&["-l", "1200"][..], &ALICE].concat()).expect("report");
    assert_eq!((o.sent, o.received, o.lost), (60, 60, 0), "{o:?}");
    let status: serde_json::Value = serde_json::from_str(&relay_http(&lab, "/status")).unwrap();
    assert!(
        status["xdp"]["to_peer_packets"].as_u64().unwrap() >= 50,
        "the client's channel data was relayed in XDP behind the gateway's filter on c0: {status}"
    );
    assert!(
        status["xdp"]["to_client_packets"].as_u64().unwrap() >= 50,
        "and the peer's answers by the relay's own program on p0: {status}"
    );
    // The filter still guards its port on the shared interface.
    let garbage = lab
        .client
        .run(|| {
            let s = std::net::UdpSocket::bind("198.18.30.2:0").unwrap();
            (0..20)
                .filter(|_| s.send_to(&[0x42; 100], "198.18.30.1:51820").is_ok())
                .count()
        })
        .unwrap();
    let malformed = || {
        gw.metrics(&lab.relay)
            .unwrap()
            .lines()
            .find(|l| {
                l.starts_with(
                    "gateway_underlay_packets_total{reason=\"malformed\",verdict=\"drop\"}",
                )
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        gateway_testkit::wireguard::wait_for(Duration::from_secs(5), || malformed()
            >= garbage as u64),
        "the filter dropped the {garbage} malformed datagrams: {}",
        gw.metrics(&lab.relay).unwrap()
    );
    // A relay that stops empties the gateway's slot.
    let slot = pins.join("v1/maps").join(gateway_common::maps::XDP_NEXT);
    let lookup = || {
        std::process::Command::new("bpftool")
            .args([
                "map",
                "lookup",
                "pinned",
                slot.to_str().unwrap(),
                "key",
                "0",
                "0",
                "0",
                "0",
            ])
            .output()
            .expect("bpftool")
            .status
            .success()
    };
    assert!(lookup(), "the relay's program is in the slot while it runs");
    // SAFETY: plain kill(2) on the relay's process.
    assert_eq!(unsafe { libc::kill(relay.0.id() as i32, libc::SIGTERM) }, 0);
    assert!(
        gateway_testkit::wireguard::wait_for(Duration::from_secs(10), || !lookup()),
        "the slot is empty once the relay stopped"
    );
    drop(relay);
    drop(gw);
}

/// At the hosts' default offloads a veth carries checksums only begun: the XDP program leaves
/// such frames to userspace (counted), which relays them; nothing is lost either way.
/// One XDP program per interface: a second relay asking for the fast path on interfaces that
/// already carry one is refused at start, saying why and what to do, and the first one keeps
/// relaying in XDP.
#[test]
fn an_interface_already_carrying_xdp_is_refused_by_name() {
    let lab = lab();
    xdp_routes(&lab);
    for ns in [&lab.client, &lab.peer] {
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    }
    let xdp = "xdp:\n  interfaces: [c0, p0]\n  attach: xdp-generic\n";
    let cfg = lab.dir.join("relay.yaml");
    std::fs::write(&cfg, format!("{CONFIG}{xdp}")).unwrap();
    let _procs = start(&lab, &["--config", cfg.to_str().unwrap()]);
    let second = lab.dir.join("second.yaml");
    std::fs::write(
        &second,
        format!(
            "{}{xdp}",
            CONFIG
                .replace("198.18.30.1:3478", "198.18.30.1:3479")
                .replace("9465", "9466")
        ),
    )
    .unwrap();
    let out = lab
        .relay
        .command("timeout")
        .args(["20", gateway_binary().to_str().unwrap()])
        .args(["relay", "serve", "--config", second.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second relay started:\n{text}");
    assert!(
        text.contains("attaching the TURN fast path to c0")
            && text.contains("an interface takes one XDP program"),
        "{text}"
    );
    // The first relay's fast path is untouched.
    let o = uclient(
        &lab,
        &[
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-m",
            "1",
            "-n",
            "20",
            "-l",
            "200",
        ],
    )
    .expect("report");
    // (20 messages on each of the client's two allocations, RTP's and RTCP's.)
    assert_eq!((o.sent, o.received, o.lost), (40, 40, 0), "{o:?}");
    let status: serde_json::Value = serde_json::from_str(&relay_http(&lab, "/status")).unwrap();
    assert!(
        status["xdp"]["to_peer_packets"].as_u64().unwrap() >= 30,
        "{status}"
    );
}

#[test]
fn begun_checksums_go_to_userspace() {
    let lab = lab();
    for dev in ["c0", "p0"] {
        lab.relay
            .sysctl(&format!("net.ipv4.conf.{dev}.forwarding"), "1")
            .unwrap();
    }
    let cfg = lab.dir.join("relay.yaml");
    std::fs::write(
        &cfg,
        format!("{CONFIG}xdp:\n  interfaces: [c0, p0]\n  attach: xdp-generic\n"),
    )
    .unwrap();
    let _procs = start(&lab, &["--config", cfg.to_str().unwrap()]);
    let o = uclient(
        &lab,
        &[
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-m",
            "2",
            "-n",
            "30",
            "-l",
            "64",
        ],
    )
    .expect("report");
    assert_eq!((o.sent, o.received, o.lost), (60, 60, 0), "{o:?}");
    let status: serde_json::Value = serde_json::from_str(&relay_http(&lab, "/status")).unwrap();
    assert!(
        status["to_peer_packets"].as_u64().unwrap() >= 50,
        "userspace relayed them: {status}"
    );
}

/// A WireGuard endpoint behind TURN, as NetBird's client uses a relay: wireguard-go sends to
/// `local`; each datagram leaves through the allocation's channel to the peer as ChannelData,
/// and the peer's datagrams come back from the relay as ChannelData, unwrapped for
/// wireguard-go. It stands in for the ICE agent inside NetBird's client (none can run here); the
/// relay sees the same messages: Allocate, ChannelBind, ChannelData both ways.
struct TurnProxy {
    local: std::net::SocketAddr,
    relayed: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const PROXY_CHANNEL: u16 = 0x4001;

impl TurnProxy {
    fn start(ns: &Netns, server: &str, peer: &str) -> TurnProxy {
        use std::sync::{Arc, Mutex, atomic::AtomicBool, atomic::Ordering};
        let (server, peer): (std::net::SocketAddr, std::net::SocketAddr) =
            (server.parse().unwrap(), peer.parse().unwrap());
        let (client, local, relayed) = ns
            .run(move || -> anyhow::Result<_> {
                let mut c = gateway_relay::client::TurnClient::new(
                    "0.0.0.0:0".parse()?,
                    server,
                    "alice",
                    "wonderland",
                )?;
                let relayed = c.allocate()?;
                c.channel_bind(PROXY_CHANNEL, peer)?;
                let local = std::net::UdpSocket::bind("127.0.0.1:0")?;
                Ok((c, local, relayed))
            })
            .unwrap()
            .expect("allocation and channel");
        let tick = Some(Duration::from_millis(100));
        client.sock.set_read_timeout(tick).unwrap();
        local.set_read_timeout(tick).unwrap();
        let (client, local) = (Arc::new(client), Arc::new(local));
        let local_addr = local.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let wireguard: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
        let outbound = {
            let (client, local, stop, wireguard) = (
                client.clone(),
                local.clone(),
                stop.clone(),
                wireguard.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = local.recv_from(&mut buf) {
                        *wireguard.lock().unwrap() = Some(from);
                        let _ = client.send_channel(PROXY_CHANNEL, &buf[..n]);
                    }
                }
            })
        };
        let inbound = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = client.sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let to = *wireguard.lock().unwrap();
                    if let (Some((PROXY_CHANNEL, data)), Some(to)) =
                        (gateway_relay::message::parse_channel_data(&buf[..n]), to)
                    {
                        let _ = local.send_to(data, to);
                    }
                }
            })
        };
        TurnProxy {
            local: local_addr,
            relayed,
            stop,
            threads: vec![outbound, inbound],
        }
    }
}

impl Drop for TurnProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Two wireguard-go peers whose only path is the relay: the client's side reaches the peer
/// through a TURN allocation and a bound channel (as a NetBird client on a relayed connection
/// does), the peer answers the relayed address it learned from the handshake. Ping, then bulk
/// TCP both ways (iperf3, default offloads, MTU 1280 as NetBird's); the relay counts it all.
/// Then the same with the XDP fast path carrying the bound channel.
#[test]
fn wireguard_peers_talk_through_a_turn_allocation() {
    use gateway_testkit::{
        iperf::{self, Run, Transfer},
        traffic,
        wireguard::{WgPeer, wait_for},
    };
    let lab = lab();
    // The kernel does not route between the relay's two links (xdp_routes).
    xdp_routes(&lab);
    let cfg = lab.dir.join("relay.yaml");
    std::fs::write(
        &cfg,
        format!("{CONFIG}xdp:\n  interfaces: [c0, p0]\n  attach: xdp-generic\n"),
    )
    .unwrap();
    let _procs = start(&lab, &["--config", cfg.to_str().unwrap()]);
    let tag = std::process::id() % 100_000;
    let a = WgPeer::start(&lab.client, &format!("wgt{tag}a"), "100.64.50.1/24", 1280).unwrap();
    let b = WgPeer::start(&lab.peer, &format!("wgt{tag}b"), "100.64.50.2/24", 1280).unwrap();
    b.set_listen_port(51820).unwrap();
    let proxy = TurnProxy::start(&lab.client, "198.18.30.1:3478", "198.18.31.2:51820");
    a.add_peer(
        &b.public_key,
        Some(&proxy.local.to_string()),
        "100.64.50.2/32",
        25,
    )
    .unwrap();
    b.add_peer(&a.public_key, None, "100.64.50.1/32", 0)
        .unwrap();
    let far: std::net::IpAddr = "100.64.50.2".parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || traffic::ping(&lab.client, far)),
        "no ping through the relay\n{}",
        relay_http(&lab, "/status")
    );
    let status =
        || -> serde_json::Value { serde_json::from_str(&relay_http(&lab, "/status")).unwrap() };
    let mine = status()["per_allocation"][0].clone();
    assert_eq!(
        mine["relayed"].as_str(),
        Some(proxy.relayed.to_string().as_str()),
        "{mine}"
    );
    let bulk = |what: &str| {
        for reverse in [false, true] {
            let o = iperf::run(
                &lab.client,
                &lab.peer,
                far,
                Run {
                    transfer: Transfer::Tcp,
                    reverse,
                    seconds: 3,
                    port: 5201,
                },
            )
            .unwrap_or_else(|e| panic!("{what}, reverse {reverse}: {e:#}"));
            assert!(
                o.bytes_received >= 1_000_000,
                "{what}, reverse {reverse}: {o:?}"
            );
        }
    };
    // As hosts send: a veth's sender leaves UDP checksums begun, which the XDP program passes
    // to the userspace relay.
    bulk("default offloads");
    let first = status();
    let relayed_packets = |s: &serde_json::Value, path: &str| -> u64 {
        let s = if path == "xdp" { &s["xdp"] } else { s };
        s["to_peer_packets"].as_u64().unwrap_or(0) + s["to_client_packets"].as_u64().unwrap_or(0)
    };
    assert!(
        relayed_packets(&first, "userspace") >= 2_000,
        "the relay carried the tunnel: {first}"
    );
    // Complete checksums (as frames from a real NIC have): the kernel fast path carries the
    // bound channel. Switched off here only to isolate that path.
    for ns in [&lab.client, &lab.peer] {
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    }
    bulk("checksums complete");
    let second = status();
    eprintln!(
        "relayed packets: userspace {} then {}, XDP {} then {}",
        relayed_packets(&first, "userspace"),
        relayed_packets(&second, "userspace"),
        relayed_packets(&first, "xdp"),
        relayed_packets(&second, "xdp")
    );
    assert!(
        relayed_packets(&second, "xdp") >= relayed_packets(&first, "xdp") + 2_000,
        "XDP carried the channel: before {first}\nafter {second}"
    );
    drop(proxy);
}
