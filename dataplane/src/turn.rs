//! The TURN relay's fast path, controller side: bindings installed both ways (the relay's
//! userspace is their only writer), the program attached to the relay's interfaces, counters.

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, ProgramArray},
};
use gateway_common::{
    maps as names,
    stats::Counter,
    turn::{
        ChannelKey, DIRECTION_TO_CLIENT, DIRECTION_TO_PEER, PeerKey, ToClient, ToPeer, TurnAddr,
        counter_index, reason,
    },
};

use crate::{Dataplane, LanAttach};

impl Dataplane {
    /// Puts a bound channel in the kernel's hands, both directions (the maps of its address
    /// family).
    pub fn set_turn_binding<A: TurnAddr>(
        &mut self,
        channel: ChannelKey<A>,
        to_peer: ToPeer<A>,
        peer: PeerKey<A>,
        to_client: ToClient<A>,
    ) -> anyhow::Result<()>
    where
        ChannelKey<A>: Pod,
        ToPeer<A>: Pod,
        PeerKey<A>: Pod,
        ToClient<A>: Pod,
    {
        self.turn_channels::<A>()?
            .insert(channel, to_peer, 0)
            .context("turn channel binding")?;
        self.turn_peers::<A>()?
            .insert(peer, to_client, 0)
            .context("turn peer binding")?;
        self.bump_turn_generation()
    }

    /// Takes a binding back (expiry, deletion): its traffic goes to userspace again.
    pub fn remove_turn_binding<A: TurnAddr>(
        &mut self,
        channel: &ChannelKey<A>,
        peer: &PeerKey<A>,
    ) -> anyhow::Result<()>
    where
        ChannelKey<A>: Pod,
        ToPeer<A>: Pod,
        PeerKey<A>: Pod,
        ToClient<A>: Pod,
    {
        let _ = self.turn_channels::<A>()?.remove(channel);
        let _ = self.turn_peers::<A>()?.remove(peer);
        self.bump_turn_generation()
    }

    /// After every change to the binding maps: the kernel's per-CPU copies of bindings read
    /// before it stop matching (gateway_common::turn::CachedBinding). The relay's userspace is
    /// the maps' only writer, so a read and a write of the counter cannot race another bump.
    fn bump_turn_generation(&mut self) -> anyhow::Result<()> {
        let mut generation: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(names::TURN_GENERATION)
                .context("turn generation map")?,
        )?;
        let next = generation.get(&0, 0)?.wrapping_add(1);
        generation.set(0, next, 0).context("turn generation")?;
        Ok(())
    }

    /// The channel map of family `A`: (client, listening address, channel) → to the peer.
    fn turn_channels<A: TurnAddr>(
        &mut self,
    ) -> anyhow::Result<BpfHashMap<&mut MapData, ChannelKey<A>, ToPeer<A>>>
    where
        ChannelKey<A>: Pod,
        ToPeer<A>: Pod,
    {
        let map = self
            .ebpf
            .map_mut(A::CHANNELS_MAP)
            .context("turn channels map")?;
        Ok(BpfHashMap::try_from(map)?)
    }

    /// The peer map of family `A`: (peer, relayed address) → to the client.
    fn turn_peers<A: TurnAddr>(
        &mut self,
    ) -> anyhow::Result<BpfHashMap<&mut MapData, PeerKey<A>, ToClient<A>>>
    where
        PeerKey<A>: Pod,
        ToClient<A>: Pod,
    {
        let map = self.ebpf.map_mut(A::PEERS_MAP).context("turn peers map")?;
        Ok(BpfHashMap::try_from(map)?)
    }

    /// What the kernel relayed for a binding's slot: (to the peer, to the client), payload bytes.
    pub fn turn_binding_counters(&self, slot: u32) -> anyhow::Result<(Counter, Counter)> {
        let map: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.ebpf.map(names::TURN_STATS).context("turn stats map")?)?;
        Ok((
            crate::sum_counters(&map.get(&counter_index(slot, DIRECTION_TO_PEER), 0)?),
            crate::sum_counters(&map.get(&counter_index(slot, DIRECTION_TO_CLIENT), 0)?),
        ))
    }

    /// The program's counters by reason (gateway_common::turn::REASON_NAMES).
    pub fn turn_counters(&self) -> anyhow::Result<Vec<Counter>> {
        let map: PerCpuArray<_, Counter> = PerCpuArray::try_from(
            self.ebpf
                .map(names::TURN_REASONS)
                .context("turn reasons map")?,
        )?;
        (0..reason::SLOTS)
            .map(|i| Ok(crate::sum_counters(&map.get(&i, 0)?)))
            .collect()
    }

    /// The relay's sign of life: the program relays while the last stamp is younger than
    /// gateway_common::turn::ALIVE_WINDOW_NS (the relay stamps every second).
    pub fn stamp_turn_alive(&mut self) -> anyhow::Result<()> {
        self.set_turn_alive(crate::sweep::monotonic_coarse_ns())
    }

    /// Sets the stamp to `ns` (CLOCK_MONOTONIC_COARSE); tests age it with this.
    pub fn set_turn_alive(&mut self, ns: u64) -> anyhow::Result<()> {
        let mut a: aya::maps::Array<_, u64> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut(names::TURN_ALIVE)
                .context("turn alive map")?,
        )?;
        a.set(0, ns, 0)?;
        Ok(())
    }

    /// Attaches the fast path to one of the relay's interfaces.
    pub fn attach_turn(&mut self, iface: &str, attach: LanAttach) -> anyhow::Result<&'static str> {
        crate::attach::if_index(iface)?;
        let (hook, label) = crate::attach::xdp_only(attach, "the TURN fast path")?;
        self.attach(iface, names::PROG_XDP_TURN, hook, label)?;
        Ok(label)
    }

    /// Puts the fast path in the slot after the gateway's underlay filter, in the gateway's
    /// data plane pinned under `gateway_pin_root`: frames the filter passes on its interfaces
    /// reach this program next. The slot empties when the returned chain is dropped.
    pub fn chain_turn_after_gateway(
        &self,
        gateway_pin_root: &std::path::Path,
    ) -> anyhow::Result<TurnChain> {
        let path = crate::pins::PinDir::new(gateway_pin_root).map(names::XDP_NEXT);
        let data = MapData::from_pin(&path).with_context(|| {
            format!(
                "opening {}: no gateway data plane of this layout is pinned under {} (start \
                 `gateway run` with its underlay filter first, or give the relay interfaces of \
                 its own)",
                path.display(),
                gateway_pin_root.display()
            )
        })?;
        let mut next = ProgramArray::try_from(Map::ProgramArray(data))?;
        let prog = self
            .ebpf
            .program(names::PROG_XDP_TURN)
            .context("TURN program")?;
        let aya::programs::Program::Xdp(xdp) = prog else {
            anyhow::bail!("{} is not an XDP program", names::PROG_XDP_TURN);
        };
        next.set(names::XDP_NEXT_SLOT, xdp.fd()?, 0)
            .with_context(|| format!("filling {}", path.display()))?;
        Ok(TurnChain { next, path })
    }
}

/// The fast path in the gateway's filter chain; out of it when dropped (the relay stopping).
/// A relay that dies without unwinding leaves its program there, but its stamp ages
/// (`stamp_turn_alive`): after gateway_common::turn::ALIVE_WINDOW_NS the program relays
/// nothing and passes every frame on; the next relay start takes the slot.
pub struct TurnChain {
    next: ProgramArray<MapData>,
    path: std::path::PathBuf,
}

impl TurnChain {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TurnChain {
    fn drop(&mut self) {
        let _ = self.next.clear_index(&names::XDP_NEXT_SLOT);
    }
}
