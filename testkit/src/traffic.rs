//! Real traffic between lab hosts: TCP and UDP echo servers, clients that check the bytes come
//! back, ping. Every wait is bounded.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

pub const TIMEOUT: Duration = Duration::from_millis(700);

/// Echo servers in one namespace; stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(ns: &Netns, tcp_ports: &[u16], udp_ports: &[u16]) -> anyhow::Result<Servers> {
        Self::start_on(ns, IpAddr::from([0, 0, 0, 0]), tcp_ports, udp_ports)
    }

    /// Echo servers listening on `ip` (`::` for IPv6).
    pub fn start_on(
        ns: &Netns,
        ip: IpAddr,
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> anyhow::Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in tcp_ports {
            let listener = ns.run(move || TcpListener::bind((ip, port)))??;
            listener.set_nonblocking(true)?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || tcp_echo_loop(listener, stop)));
        }
        for &port in udp_ports {
            let socket = ns.run(move || UdpSocket::bind((ip, port)))??;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || udp_echo_loop(socket, stop)));
        }
        Ok(Servers { stop, threads })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_echo_loop(listener: TcpListener, stop: Arc<AtomicBool>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let stop = stop.clone();
                conns.push(std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::SeqCst) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                }));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

fn udp_echo_loop(socket: UdpSocket, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

/// Connects over TCP from `ns`, sends a message and checks it comes back.
pub fn tcp_exchange(ns: &Netns, to: IpAddr, port: u16) -> bool {
    match tcp_open(ns, to, port) {
        Some(mut conn) => conn.exchange(b"hello through the gateway"),
        None => false,
    }
}

/// A TCP connection opened from inside a namespace, kept for later exchanges.
pub struct Conn(TcpStream);

impl Conn {
    /// Sends bytes and waits (bounded) for the echo.
    pub fn exchange(&mut self, msg: &[u8]) -> bool {
        if self.0.write_all(msg).is_err() {
            return false;
        }
        let mut got = vec![0u8; msg.len()];
        let mut have = 0;
        while have < msg.len() {
            match self.0.read(&mut got[have..]) {
                Ok(0) | Err(_) => return false,
                Ok(n) => have += n,
            }
        }
        got == msg
    }
}

pub fn tcp_open(ns: &Netns, to: IpAddr, port: u16) -> Option<Conn> {
    let addr = SocketAddr::new(to, port);
    let stream = ns
        .run(move || TcpStream::connect_timeout(&addr, TIMEOUT))
        .ok()?
        .ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    Some(Conn(stream))
}

/// Sends a UDP datagram from `ns` and waits for the echo.
pub fn udp_exchange(ns: &Netns, to: IpAddr, port: u16) -> bool {
    let addr = SocketAddr::new(to, port);
    let Ok(Ok(socket)) = ns.run(|| UdpSocket::bind("0.0.0.0:0")) else {
        return false;
    };
    if socket.set_read_timeout(Some(TIMEOUT)).is_err() || socket.send_to(b"query", addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(socket.recv_from(&mut buf), Ok((5, from)) if from == addr && &buf[..5] == b"query")
}

/// One ping from `ns` (the system's ping, so ICMP is real).
pub fn ping(ns: &Netns, to: IpAddr) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "1", "-q", &to.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Datagrams UDP sockets in `ns` dropped because their receive buffer was full (the namespace's
/// UdpRcvbufErrors and Udp6RcvbufErrors): the receiving host's own drops, not the network's.
pub fn udp_socket_drops(ns: &Netns) -> u64 {
    // IPv6 sockets count theirs apart (Udp6RcvbufErrors, /proc/net/snmp6).
    const COUNTERS: [&str; 2] = ["UdpRcvbufErrors", "Udp6RcvbufErrors"];
    let Ok(out) = ns.exec(&["nstat", "-az", COUNTERS[0], COUNTERS[1]]) else {
        return 0;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let name = fields.next()?;
            COUNTERS
                .contains(&name)
                .then(|| fields.next()?.parse::<u64>().ok())?
        })
        .sum()
}

/// A UDP socket in `ns` bound to `addr` that keeps every datagram of a test run until it is read
/// (a 4 MiB receive buffer; root may exceed rmem_max) and stops a read after 300 ms of quiet.
pub fn udp_sink(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    ns.run_scoped(move || {
        let s = UdpSocket::bind(addr).expect("bind the sink");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let size: libc::c_int = 4 << 20;
        // SAFETY: a valid socket and a pointer to a c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
        s
    })
    .expect("enter the namespace")
}

/// What a [`udp_sink`] holds: how many datagrams each sender sent it.
pub fn udp_senders(sink: &UdpSocket) -> std::collections::BTreeMap<SocketAddr, usize> {
    let mut from = std::collections::BTreeMap::new();
    let mut buf = [0u8; 2048];
    while let Ok((_, peer)) = sink.recv_from(&mut buf) {
        *from.entry(peer).or_default() += 1;
    }
    from
}
