//! Network namespaces and veth links, removed again when their guards drop (also on panic).

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip netns exec NAME ...` for a namespace someone else owns (no guard, nothing deleted).
pub fn exec_in(name: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut full = vec!["ip", "netns", "exec", name];
    full.extend_from_slice(args);
    sh(&full)
}

/// A network namespace that is deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Whether this namespace has a resolved neighbour entry for `addr` (`family`: "-4" or
    /// "-6"): one with a link-layer address, neither FAILED nor INCOMPLETE.
    pub fn neighbour_resolved(&self, family: &str, addr: &str) -> bool {
        let Ok(out) = self.ip(&[family, "neigh", "show", addr]) else {
            return false;
        };
        let entry = String::from_utf8_lossy(&out.stdout);
        entry.contains("lladdr") && !entry.contains("INCOMPLETE") && !entry.contains("FAILED")
    }

    /// The id of the XDP program attached to `dev` (any mode), from `ip -j -d link show`.
    pub fn xdp_program_id(&self, dev: &str) -> anyhow::Result<Option<u32>> {
        let out = self.ip(&["-j", "-d", "link", "show", "dev", dev])?;
        let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(links[0]["xdp"]["prog"]["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok()))
    }

    /// `ip -n NAME` with `line`'s words (`"-6 addr add fd00::1/64 dev eth0"`).
    pub fn ip_line(&self, line: &str) -> anyhow::Result<Output> {
        self.ip(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// `ip netns exec NAME ...`
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        exec_in(&self.name, args)
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates live there.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let handle = std::thread::spawn(move || -> anyhow::Result<T> {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }
}

impl Netns {
    /// As [`Netns::run`], for closures that borrow from the caller (attaching a program of a data
    /// plane the caller owns, say).
    pub fn run_scoped<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(move || -> anyhow::Result<T> {
                // SAFETY: setns on a valid namespace fd affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes its veth ends and whatever was attached to them.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair with one end in each namespace.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> anyhow::Result<()> {
    sh(&[
        "ip", "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name,
        "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// A router's namespace `<id>-gw` between two LAN namespaces `<id>-a` and `<id>-b`, each on a
/// veth (the router's ends `lan-a` with 198.18.1.1/24 and `lan-b` with 198.19.1.1/24, the
/// LANs' ends `eth0`), IPv4 forwarding on. The LANs' own addresses are the caller's. Keep all
/// three: deleting a namespace deletes its veth ends, and their peers with them.
pub fn router_with_two_lans(id: &str) -> anyhow::Result<(Netns, Netns, Netns)> {
    let gw = Netns::create(&format!("{id}-gw"))?;
    let a = Netns::create(&format!("{id}-a"))?;
    let b = Netns::create(&format!("{id}-b"))?;
    veth(&gw, "lan-a", &a, "eth0")?;
    veth(&gw, "lan-b", &b, "eth0")?;
    gw.sysctl("net.ipv4.ip_forward", "1")?;
    gw.ip(&["addr", "add", "198.18.1.1/24", "dev", "lan-a"])?;
    gw.ip(&["addr", "add", "198.19.1.1/24", "dev", "lan-b"])?;
    Ok((gw, a, b))
}

/// A gateway's namespace `<id>-g` with a tunnel-side veth `t0` (100.64.0.1/10) and a LAN veth
/// `l0` (198.18.10.1/24), their other ends in `<id>-o`, IPv4 forwarding on: where the tunnel's
/// TC program is test-run as if a packet arrived on t0 and the FIB forwards it out of l0. The
/// LAN hosts (permanent neighbours, so the FIB answers without ARP) are the caller's. Keep both:
/// deleting a namespace deletes its veth ends.
pub fn tunnel_and_lan(id: &str) -> anyhow::Result<(Netns, Netns)> {
    let (gw, other) = (
        Netns::create(&format!("{id}-g"))?,
        Netns::create(&format!("{id}-o"))?,
    );
    gw.sysctl("net.ipv4.ip_forward", "1")?;
    veth(&gw, "t0", &other, "t1")?;
    veth(&gw, "l0", &other, "l1")?;
    gw.ip(&["addr", "add", "100.64.0.1/10", "dev", "t0"])?;
    gw.ip(&["addr", "add", "198.18.10.1/24", "dev", "l0"])?;
    Ok((gw, other))
}

/// A permanent neighbour entry: `addr` at `mac` on `dev`.
pub fn permanent_neighbour(ns: &Netns, addr: &str, mac: &str, dev: &str) -> anyhow::Result<()> {
    ns.ip(&[
        "neigh",
        "replace",
        addr,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// Removes namespaces left by labs whose process is gone (a crash, a kill -9), and ends what
/// still runs in them (a relay, an iperf3 server): those would outlive the namespace's name.
pub fn remove_stale(prefix: &str) {
    remove_where(prefix, |pid| {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
}

/// Removes the namespaces `prefix<pid>...` of this process and ends what runs in them: for a
/// process that is stopping on a signal, where no `Drop` will run.
pub fn remove_own(prefix: &str) {
    let me = std::process::id();
    remove_where(prefix, |pid| pid == me);
}

/// Removes each namespace named `prefix<pid>...` whose `pid` satisfies `remove`.
fn remove_where(prefix: &str, remove: impl Fn(u32) -> bool) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(pid) = pid.parse::<u32>()
            && remove(pid)
        {
            kill_members(name);
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Kills every process inside namespace `name`.
fn kill_members(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: plain system call.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
