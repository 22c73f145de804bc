//! The WireGuard-aware underlay filter's controller side: which ports it protects, its rates,
//! attaching it to underlay interfaces, and its counters.

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray};
use gateway_common::{
    maps as names,
    stats::Counter,
    underlay::{PORTS_MAX, UnderlaySettings, reason},
};

use aya::programs::TcAttachType;

use crate::{Dataplane, LanAttach, attach::Hook};

impl Dataplane {
    /// Puts the protected ports and rates in force (ports no longer listed are released).
    pub fn set_underlay(
        &mut self,
        ports: &[u16],
        settings: UnderlaySettings,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            ports.len() as u32 <= PORTS_MAX,
            "at most {PORTS_MAX} WireGuard ports"
        );
        let mut s: Array<_, UnderlaySettings> = Array::try_from(
            self.ebpf
                .map_mut(names::UNDERLAY_SETTINGS)
                .context("underlay settings map")?,
        )?;
        s.set(0, settings, 0)?;
        let mut map: BpfHashMap<_, u16, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::UNDERLAY_PORTS)
                .context("underlay ports map")?,
        )?;
        for &p in ports {
            map.insert(p, 1, 0)
                .with_context(|| format!("protecting port {p}"))?;
        }
        let stale: Vec<u16> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !ports.contains(p))
            .collect();
        for p in stale {
            map.remove(&p)?;
        }
        Ok(())
    }

    /// Attaches the filter to an underlay interface: `auto` takes native XDP, except on a veth,
    /// where an XDP program would switch off the peer's segmentation offload (the UDP GSO
    /// wireguard-go sends with) and TC ingress costs less than that.
    pub fn attach_underlay(
        &mut self,
        iface: &str,
        attach: LanAttach,
    ) -> anyhow::Result<&'static str> {
        crate::attach::if_index(iface)?;
        let tc = (names::PROG_TC_WG_UNDERLAY, Hook::Tc(TcAttachType::Ingress));
        let (program, hook, label) = match attach {
            LanAttach::Auto if crate::attach::is_veth(iface) => (
                tc.0,
                tc.1,
                "tc ingress (auto: a veth, where XDP would switch off its peer's UDP GSO)",
            ),
            LanAttach::Tc => (tc.0, tc.1, "tc ingress (configured)"),
            _ => {
                let (hook, label) = crate::attach::xdp_only(attach, "the underlay filter")?;
                (names::PROG_XDP_WG_UNDERLAY, hook, label)
            }
        };
        self.attach(iface, program, hook, label)?;
        Ok(label)
    }

    /// The filter's counters by reason (gateway_common::underlay::REASON_NAMES), all CPUs.
    pub fn underlay_counters(&self) -> anyhow::Result<Vec<Counter>> {
        let map: PerCpuArray<_, Counter> = PerCpuArray::try_from(
            self.ebpf
                .map(names::UNDERLAY_STATS)
                .context("underlay stats map")?,
        )?;
        (0..reason::SLOTS)
            .map(|i| Ok(crate::sum_counters(&map.get(&i, 0)?)))
            .collect()
    }
}
