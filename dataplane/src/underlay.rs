//! The WireGuard-aware underlay filter's controller side: which ports it protects, its rates,
//! attaching it to underlay interfaces, and its counters.

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, PerCpuArray};
use gateway_common::{
    maps as names,
    stats::Counter,
    underlay::{PORTS_MAX, UnderlaySettings, reason},
};

use crate::{Dataplane, LanAttach};

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

    /// Attaches the filter to an underlay interface (native XDP unless configured otherwise).
    pub fn attach_underlay(
        &mut self,
        iface: &str,
        attach: LanAttach,
    ) -> anyhow::Result<&'static str> {
        crate::attach::if_index(iface)?;
        let (hook, label) = crate::attach::xdp_only(attach, "the underlay filter")?;
        self.attach(iface, names::PROG_XDP_WG_UNDERLAY, hook, label)?;
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
