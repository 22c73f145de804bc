//! Masquerade from the controller's side: which destination networks are masqueraded, the port
//! range and timeouts, and the LAN interfaces' addresses; the LAN egress program that translates.

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap as BpfHashMap, LpmTrie, lpm_trie::Key};
use aya::programs::tc::TcAttachType;
use gateway_common::{
    maps as names,
    nat::{NatInterface, NatPrefix, NatSettings, V4_MAPPED_PREFIX_BITS, mapped},
};
use ipnet::IpNet;

use crate::{Dataplane, attach::Hook};

/// What the masquerade applies to (configuration: `masquerade:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// Destination networks whose traffic from the overlay leaves a LAN interface with that
    /// interface's address (a NetBird route with `masquerade` set).
    pub networks: Vec<IpNet>,
    pub settings: NatSettings,
}

impl Dataplane {
    /// Writes the masqueraded networks and the port range (replacing what was there).
    pub fn set_masquerade(&mut self, m: &Masquerade) -> anyhow::Result<()> {
        if m.settings.port_min == 0 || m.settings.port_min > m.settings.port_max {
            bail!(
                "masquerade ports {}-{}: not a range of ports",
                m.settings.port_min,
                m.settings.port_max
            );
        }
        let mut settings: Array<_, NatSettings> = Array::try_from(
            self.ebpf
                .map_mut(names::NAT_SETTINGS)
                .context("NAT settings map")?,
        )?;
        settings.set(0, m.settings, 0)?;
        let mut trie: LpmTrie<_, NatPrefix, u8> = LpmTrie::try_from(
            self.ebpf
                .map_mut(names::NAT_NETWORKS)
                .context("NAT networks map")?,
        )?;
        let old: Vec<Key<NatPrefix>> = trie.keys().collect::<Result<_, _>>()?;
        let new: Vec<Key<NatPrefix>> = m.networks.iter().map(|n| prefix_key(*n)).collect();
        for k in &new {
            trie.insert(k, 1, 0).context("masqueraded network")?;
        }
        for k in old {
            if !new
                .iter()
                .any(|n| n.prefix_len() == k.prefix_len() && n.data() == k.data())
            {
                trie.remove(&k)?;
            }
        }
        Ok(())
    }

    /// Makes a LAN interface masquerade: its addresses are the translated sources, and the LAN
    /// egress program translates. The address is in place before the program is attached.
    pub fn attach_masquerade(&mut self, iface: &str) -> anyhow::Result<NatInterface> {
        let ifindex = crate::attach::if_index(iface)?;
        let addrs = interface_addresses(iface)?;
        let mut entry = NatInterface::default();
        for a in addrs {
            match a {
                IpAddr::V4(v4) if entry.has_v4 == 0 => {
                    entry.v4 = v4.octets();
                    entry.has_v4 = 1;
                }
                // A global address: link-local sources would not be routed back.
                IpAddr::V6(v6) if entry.has_v6 == 0 && (v6.segments()[0] & 0xffc0) != 0xfe80 => {
                    entry.v6 = v6.octets();
                    entry.has_v6 = 1;
                }
                _ => {}
            }
        }
        if entry.has_v4 == 0 && entry.has_v6 == 0 {
            bail!("{iface} has no address to masquerade with");
        }
        self.set_nat_interface(ifindex, entry)?;
        self.attach(
            iface,
            names::PROG_TC_LAN_EGRESS,
            Hook::Tc(TcAttachType::Egress),
            "tc egress (masquerade)",
        )?;
        Ok(entry)
    }

    /// Sets the masquerade addresses of an interface by index (without attaching anything:
    /// [`Dataplane::attach_masquerade`] does both for an interface by name).
    pub fn set_nat_interface(&mut self, ifindex: u32, entry: NatInterface) -> anyhow::Result<()> {
        let mut map: BpfHashMap<_, u32, NatInterface> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::NAT_INTERFACES)
                .context("NAT interfaces map")?,
        )?;
        map.insert(ifindex, entry, 0)?;
        let mut settings: Array<_, gateway_common::settings::Settings> =
            Array::try_from(self.ebpf.map_mut(names::SETTINGS).context("settings map")?)?;
        let mut s = settings.get(&0, 0)?;
        s.flags |= gateway_common::settings::FLAG_MASQUERADE;
        settings.set(0, s, 0)?;
        Ok(())
    }

    /// Translations in force (forward entries; each has its reverse).
    pub fn nat_entries(&self) -> anyhow::Result<u64> {
        let tables = crate::nat_table::NatTables::of(&self.ebpf)?;
        Ok(tables.count(crate::nat_table::Direction::Forward) as u64)
    }

    /// The translation tables, mapped into this process.
    pub fn nat_tables(&self) -> anyhow::Result<crate::nat_table::NatTables> {
        crate::nat_table::NatTables::of(&self.ebpf)
    }
}

fn prefix_key(n: IpNet) -> Key<NatPrefix> {
    match n {
        IpNet::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.network().octets());
            Key::new(
                V4_MAPPED_PREFIX_BITS + v4.prefix_len() as u32,
                NatPrefix {
                    addr: mapped(true, &a),
                },
            )
        }
        IpNet::V6(v6) => Key::new(
            v6.prefix_len() as u32,
            NatPrefix {
                addr: v6.network().octets(),
            },
        ),
    }
}

/// The interface's addresses, primary first (getifaddrs order).
fn interface_addresses(iface: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        bail!("getifaddrs: {}", std::io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; its name is a C string and its address,
        // when present, a sockaddr of the family it says.
        unsafe {
            let ifa = &*cur;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if name == iface && !ifa.ifa_addr.is_null() {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
