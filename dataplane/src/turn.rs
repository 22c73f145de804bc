//! The TURN relay's fast path, controller side: bindings installed both ways (the relay's
//! userspace is their only writer), the program attached to the relay's interfaces, counters.

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, PerCpuArray},
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
        let mut c: BpfHashMap<_, ChannelKey<A>, ToPeer<A>> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(A::CHANNELS_MAP)
                .context("turn channels map")?,
        )?;
        c.insert(channel, to_peer, 0)
            .context("turn channel binding")?;
        let mut p: BpfHashMap<_, PeerKey<A>, ToClient<A>> =
            BpfHashMap::try_from(self.ebpf.map_mut(A::PEERS_MAP).context("turn peers map")?)?;
        p.insert(peer, to_client, 0).context("turn peer binding")?;
        Ok(())
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
        let mut c: BpfHashMap<_, ChannelKey<A>, ToPeer<A>> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(A::CHANNELS_MAP)
                .context("turn channels map")?,
        )?;
        let _ = c.remove(channel);
        let mut p: BpfHashMap<_, PeerKey<A>, ToClient<A>> =
            BpfHashMap::try_from(self.ebpf.map_mut(A::PEERS_MAP).context("turn peers map")?)?;
        let _ = p.remove(peer);
        Ok(())
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

    /// Attaches the fast path to one of the relay's interfaces.
    pub fn attach_turn(&mut self, iface: &str, attach: LanAttach) -> anyhow::Result<&'static str> {
        crate::attach::if_index(iface)?;
        let (hook, label) = crate::attach::xdp_only(attach, "the TURN fast path")?;
        self.attach(iface, names::PROG_XDP_TURN, hook, label)?;
        Ok(label)
    }
}
