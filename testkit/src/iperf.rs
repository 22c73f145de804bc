//! Bulk transfers with iperf3 (a client someone else wrote) between lab namespaces, at the
//! hosts' default offloads: TSO/GSO/GRO stay on, so the data plane sees traffic as real hosts
//! send it. Every run is bounded in time; the server is killed when the run ends.

use std::{
    net::IpAddr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// One transfer: TCP, or UDP with a fixed payload size and offered rate.
#[derive(Clone, Copy, Debug)]
pub enum Transfer {
    Tcp,
    /// UDP datagrams of `payload` bytes at `mbit_per_s`.
    Udp {
        payload: u32,
        mbit_per_s: u32,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub transfer: Transfer,
    /// Data flows from the server to the client (`iperf3 -R`).
    pub reverse: bool,
    pub seconds: u32,
    pub port: u16,
}

/// The bulk transfers a data path is tried with: TCP, then UDP as `udp` says, each from the
/// client to the server and back, `seconds` each, on consecutive ports from `first_port`.
pub fn both_ways(udp: Transfer, seconds: u32, first_port: u16) -> [Run; 4] {
    let run = |transfer, reverse, i: u16| Run {
        transfer,
        reverse,
        seconds,
        port: first_port + i,
    };
    [
        run(Transfer::Tcp, false, 0),
        run(Transfer::Tcp, true, 1),
        run(udp, false, 2),
        run(udp, true, 3),
    ]
}

/// What the receiving side counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// UDP only: datagrams the receiver expected (by sequence number) and those that were missing.
    pub packets: u64,
    pub lost_packets: u64,
    pub bits_per_second: f64,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs iperf3 with its server in `server_ns` on `server_addr` and its client in `client_ns`.
pub fn run(
    client_ns: &Netns,
    server_ns: &Netns,
    server_addr: IpAddr,
    r: Run,
) -> anyhow::Result<Outcome> {
    let port = r.port.to_string();
    let server = server_ns
        .command("iperf3")
        .args(["-s", "-1", "-p", &port, "-B", &server_addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s (is iperf3 installed? cargo xtask deps)")?;
    let _server = KillOnDrop(server);
    wait_listening(server_ns, r.port)?;
    let mut args = vec![
        "-c".to_string(),
        server_addr.to_string(),
        "-p".into(),
        port,
        "-J".into(),
        "-t".into(),
        r.seconds.to_string(),
    ];
    if r.reverse {
        args.push("-R".into());
    }
    if let Transfer::Udp {
        payload,
        mbit_per_s,
    } = r.transfer
    {
        args.extend([
            "-u".into(),
            "-l".into(),
            payload.to_string(),
            "-b".into(),
            format!("{mbit_per_s}M"),
        ]);
    }
    let mut client = client_ns.command("timeout");
    client
        .arg((r.seconds + 20).to_string())
        .arg("iperf3")
        .args(&args);
    let out = client.output().context("running iperf3 -c")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = json.get("error") {
        bail!("iperf3: {e}");
    }
    // iperf3 (3.12 and later) reports both ends in the client's JSON, whichever way data flows.
    let (sent, received) = (&json["end"]["sum_sent"], &json["end"]["sum_received"]);
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Ok(Outcome {
        bytes_sent: n(&sent["bytes"]),
        bytes_received: n(&received["bytes"]),
        packets: n(&received["packets"]),
        lost_packets: n(&received["lost_packets"]),
        bits_per_second: received["bits_per_second"].as_f64().unwrap_or(0.0),
    })
}

/// Waits (bounded) until something listens on `port` in `ns`.
fn wait_listening(ns: &Netns, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = ns.exec(&["ss", "-Hltn", &format!("sport = :{port}")])?;
        if !out.stdout.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("iperf3 server did not listen on port {port} within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
