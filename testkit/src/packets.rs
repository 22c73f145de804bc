//! Builds test and benchmark packets byte by byte: Ethernet with optional VLAN tags, IPv4 (with
//! options, fragments) or IPv6 (with extension headers), and TCP, UDP or ICMP. Lengths and
//! checksums are right unless a field is deliberately overridden, so hostile variants differ
//! from good packets in exactly one way.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 by the IP version: type, code, the 4 bytes after the checksum, body.
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
    },
    /// Any other protocol number, with a raw payload.
    Raw {
        proto: u8,
        payload: Vec<u8>,
    },
}

impl L4 {
    pub fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            L4::Raw { proto, .. } => *proto,
        }
    }

    pub fn echo_request(v6: bool, id: u16) -> L4 {
        let [a, b] = id.to_be_bytes();
        L4::Icmp {
            kind: if v6 { 128 } else { 8 },
            code: 0,
            rest: [a, b, 0, 1],
            body: vec![0x42; 8],
        }
    }

    pub fn echo_reply(v6: bool, id: u16) -> L4 {
        let [a, b] = id.to_be_bytes();
        L4::Icmp {
            kind: if v6 { 129 } else { 0 },
            code: 0,
            rest: [a, b, 0, 1],
            body: vec![0x42; 8],
        }
    }

    /// L4 header and payload bytes (checksum left zero: the data plane does not verify it).
    pub fn bytes(&self, payload_len: usize) -> Vec<u8> {
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut b = Vec::with_capacity(20 + payload_len);
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes());
                b.extend_from_slice(&0u32.to_be_bytes());
                b.push(5 << 4);
                b.push(*flags);
                b.extend_from_slice(&65535u16.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]);
                b.resize(20 + payload_len, 0xab);
                b
            }
            L4::Udp { sport, dport } => {
                let mut b = Vec::with_capacity(8 + payload_len);
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.resize(8 + payload_len, 0xab);
                b
            }
            L4::Icmp {
                kind,
                code,
                rest,
                body,
            } => {
                let mut b = vec![*kind, *code, 0, 0];
                b.extend_from_slice(rest);
                b.extend_from_slice(body);
                b
            }
            L4::Raw { payload, .. } => payload.clone(),
        }
    }
}

/// One packet to build. Defaults make a well-formed packet; overrides make hostile ones.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    pub l4: L4,
    pub payload_len: usize,
    /// VLAN tags (TPID, VID), outermost first.
    pub vlans: Vec<(u16, u16)>,
    /// No Ethernet header (tunnel interfaces).
    pub l3_only: bool,
    /// IPv4 options bytes (padded to a multiple of 4).
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers as (next-header value of this header, bytes): see `ext_*`.
    pub ipv6_ext: Vec<(u8, Vec<u8>)>,
    pub frag_id: u32,
    /// Fragment offset in 8-byte units and the more-fragments flag.
    pub frag: Option<(u16, bool)>,
    /// Replaces the L4 bytes (for later fragments: the data at that offset).
    pub raw_l4: Option<Vec<u8>>,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// TCP options (padded with end-of-options to a multiple of 4; the data offset follows).
    pub tcp_options: Vec<u8>,
    /// Fill in the TCP/UDP checksum over the pseudo-header (left zero otherwise).
    pub l4_checksum: bool,
}

impl Spec {
    pub fn new(src: &str, dst: &str, l4: L4) -> Spec {
        Spec {
            src: src.parse().expect("source address"),
            dst: dst.parse().expect("destination address"),
            l4,
            payload_len: 0,
            vlans: Vec::new(),
            l3_only: false,
            ipv4_options: Vec::new(),
            ipv6_ext: Vec::new(),
            frag_id: 0x1234,
            frag: None,
            raw_l4: None,
            ttl: 64,
            tcp_options: Vec::new(),
            l4_checksum: false,
        }
    }

    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Spec {
        Spec::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Spec {
        Spec::new(src, dst, L4::Udp { sport, dport })
    }

    pub fn ping(src: &str, dst: &str, id: u16) -> Spec {
        let v6 = src.contains(':');
        Spec::new(src, dst, L4::echo_request(v6, id))
    }

    pub fn build(&self) -> Vec<u8> {
        let v6 = self.src.is_ipv6();
        let mut l4 = self
            .raw_l4
            .clone()
            .unwrap_or_else(|| self.l4.bytes(self.payload_len));
        let proto = self.l4.proto(v6);
        if self.raw_l4.is_none()
            && matches!(self.l4, L4::Tcp { .. })
            && !self.tcp_options.is_empty()
        {
            let mut opts = self.tcp_options.clone();
            opts.resize(opts.len().div_ceil(4) * 4, 0);
            l4[12] = (((20 + opts.len()) / 4) << 4) as u8;
            l4.splice(20..20, opts);
        }
        if self.l4_checksum {
            let at = match self.l4 {
                L4::Tcp { .. } => 16,
                L4::Udp { .. } => 6,
                _ => panic!("l4_checksum is for TCP and UDP"),
            };
            let (s, d) = (self.src, self.dst);
            let mut pseudo = match (s, d) {
                (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
                    [&s.octets()[..], &d.octets()[..]].concat()
                }
                (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
                    [&s.octets()[..], &d.octets()[..]].concat()
                }
                _ => panic!("mixed address families"),
            };
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            l4[at..at + 2].copy_from_slice(&[0, 0]);
            let mut sum = checksum(&[&pseudo[..], &l4[..]].concat());
            if sum == 0 && matches!(self.l4, L4::Udp { .. }) {
                // UDP sends a computed zero as all ones (zero means "no checksum").
                sum = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        let mut out = Vec::new();
        if !self.l3_only {
            out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
            for (tpid, vid) in &self.vlans {
                out.extend_from_slice(&tpid.to_be_bytes());
                out.extend_from_slice(&vid.to_be_bytes());
            }
            out.extend_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
        }
        match (self.src, self.dst) {
            (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
                self.ipv4(&mut out, s, d, proto, &l4)
            }
            (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
                self.ipv6(&mut out, s, d, proto, &l4)
            }
            _ => panic!("mixed address families"),
        }
        out
    }

    fn ipv4(&self, out: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) {
        let mut opts = self.ipv4_options.clone();
        opts.resize(opts.len().div_ceil(4) * 4, 0);
        let ihl = 5 + opts.len() / 4;
        let total = ihl * 4 + l4.len();
        let start = out.len();
        out.push(0x40 | ihl as u8);
        out.push(0);
        out.extend_from_slice(&(total as u16).to_be_bytes());
        out.extend_from_slice(&(self.frag_id as u16).to_be_bytes());
        let (offset, more) = self.frag.unwrap_or((0, false));
        out.extend_from_slice(&(offset | if more { 0x2000 } else { 0 }).to_be_bytes());
        out.push(self.ttl);
        out.push(proto);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&src.octets());
        out.extend_from_slice(&dst.octets());
        out.extend_from_slice(&opts);
        let sum = checksum(&out[start..start + ihl * 4]);
        out[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(l4);
    }

    fn ipv6(&self, out: &mut Vec<u8>, src: Ipv6Addr, dst: Ipv6Addr, proto: u8, l4: &[u8]) {
        // Chain: IPv6 header -> ext headers -> (fragment header) -> L4.
        let mut headers: Vec<(u8, Vec<u8>)> = self.ipv6_ext.clone();
        if let Some((offset, more)) = self.frag {
            let field = (offset << 3) | u16::from(more);
            let mut f = vec![0, 0];
            f.extend_from_slice(&field.to_be_bytes());
            f.extend_from_slice(&self.frag_id.to_be_bytes());
            headers.push((44, f));
        }
        let mut ext = Vec::new();
        for (i, (_, bytes)) in headers.iter().enumerate() {
            let next = headers.get(i + 1).map(|h| h.0).unwrap_or(proto);
            let mut b = bytes.clone();
            b[0] = next;
            ext.extend_from_slice(&b);
        }
        let first = headers.first().map(|h| h.0).unwrap_or(proto);
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        out.push(first);
        out.push(self.ttl);
        out.extend_from_slice(&src.octets());
        out.extend_from_slice(&dst.octets());
        out.extend_from_slice(&ext);
        out.extend_from_slice(l4);
    }
}

/// An IPv6 options-style extension header (hop-by-hop, destination options, routing) of
/// `8 * (units + 1)` bytes; the next-header byte is filled in by [`Spec::build`].
pub fn ext_options(kind: u8, units: u8) -> (u8, Vec<u8>) {
    let mut b = vec![0u8; 8 * (units as usize + 1)];
    b[1] = units;
    if kind == 0 || kind == 60 {
        // PadN option covering the rest.
        b[2] = 1;
        b[3] = (b.len() - 4) as u8;
    }
    (kind, b)
}

/// An authentication header with `words` 32-bit words of ICV beyond the fixed 12 bytes.
pub fn ext_ah(words: u8) -> (u8, Vec<u8>) {
    let mut b = vec![0u8; 12 + 4 * words as usize];
    b[1] = 1 + words;
    (51, b)
}

pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
