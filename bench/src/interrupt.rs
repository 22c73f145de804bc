//! Stopping on a signal (Ctrl-C, `kill`, a closed terminal). No `Drop` runs then, so the
//! namespaces the run made, and what runs in them (relays, coturn, iperf3 servers, the gateway),
//! would outlive the bench; a later run would find them and measure beside them. One thread
//! takes these signals and removes this process's namespaces before exiting.

use gateway_testkit::netns::remove_own;

/// The name prefixes of the namespaces the scenarios create, each followed by this process's id.
const NAMESPACE_PREFIXES: [&str; 5] = [
    "gwbench",
    "gwbench-mgmt-",
    "gwrbench",
    "gwwg",
    gateway_testkit::topology::NETNS_PREFIX,
];

const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks the signals in this thread, which every later thread inherits (children do not: the
/// standard library clears the mask in them), and starts the thread that waits for them. Call
/// first in `main`, before any other thread exists.
pub fn install() -> anyhow::Result<()> {
    // SAFETY: a sigset_t filled by sigemptyset/sigaddset before use.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    };
    // SAFETY: a valid set; only this thread's mask changes.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    anyhow::ensure!(rc == 0, "blocking signals: error {rc}");
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: a valid set and an out-parameter on this stack.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            eprintln!("bench: signal {sig}: removing this run's namespaces and what runs in them");
            for prefix in NAMESPACE_PREFIXES {
                remove_own(prefix);
            }
            std::process::exit(128 + sig);
        })?;
    Ok(())
}
