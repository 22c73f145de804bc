//! The controller's access to the masquerade's translation tables (gateway_common::nat_table):
//! both arrays mapped into this process, buckets read and written in place by the same rules
//! the kernel's programs follow (a reader checks the bucket's sequence word around its reads;
//! a writer takes the bucket with a compare-and-swap and releases it by adding one).

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use aya::maps::{Array, Map, MapData};
use gateway_common::{
    maps as names,
    nat::{NatKey, NatTarget},
    nat_table::{NatBucket, NatTableShape, NatWay, bucket_of},
};

use crate::mmap::MmapArray;

/// Which direction's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// By original tuple (the peer's source, the LAN host).
    Forward,
    /// By translated tuple (the masquerade address and port, the LAN host).
    Reverse,
}

pub struct NatTables {
    forward: MmapArray,
    reverse: MmapArray,
    shape: NatTableShape,
}

/// How long a writer here tries for a bucket the kernel holds (it holds one for the length
/// of a few stores).
const TAKE_ATTEMPTS: u32 = 100_000;

impl NatTables {
    /// Maps both tables; their shape must have been written (see [`init_shape`]).
    pub fn open(forward: &Map, reverse: &Map, shape: &Map) -> anyhow::Result<NatTables> {
        let shape = read_shape(shape)?;
        let (Map::Array(f), Map::Array(r)) = (forward, reverse) else {
            bail!("the NAT tables are not arrays");
        };
        let tables = NatTables {
            forward: MmapArray::from_data(f, size_of::<NatBucket>())?,
            reverse: MmapArray::from_data(r, size_of::<NatBucket>())?,
            shape,
        };
        if shape.buckets != tables.forward.entries() || shape.buckets != tables.reverse.entries() {
            bail!(
                "NAT tables of {} and {} buckets, their shape says {}",
                tables.forward.entries(),
                tables.reverse.entries(),
                shape.buckets
            );
        }
        Ok(tables)
    }

    fn table(&self, d: Direction) -> &MmapArray {
        match d {
            Direction::Forward => &self.forward,
            Direction::Reverse => &self.reverse,
        }
    }

    fn bucket(&self, d: Direction, index: u32) -> *mut NatBucket {
        self.table(d)
            .element(index)
            .expect("bucket index below the shape's count")
    }

    fn seq(b: *mut NatBucket) -> &'static AtomicU64 {
        // SAFETY: the sequence word is 8-aligned shared memory that lives as long as the mapping
        // (callers use it only while `self` is borrowed).
        unsafe { AtomicU64::from_ptr(&raw mut (*b).seq) }
    }

    /// A consistent copy of bucket `index`, or None if writers kept changing it.
    fn read_bucket(&self, d: Direction, index: u32) -> Option<NatBucket> {
        let b = self.bucket(d, index);
        for _ in 0..TAKE_ATTEMPTS {
            let before = Self::seq(b).load(Ordering::Acquire);
            if before & 1 != 0 {
                std::hint::spin_loop();
                continue;
            }
            // SAFETY: in bounds; a torn copy is detected by the sequence check below.
            let copy = unsafe { std::ptr::read_volatile(b) };
            std::sync::atomic::fence(Ordering::Acquire);
            if Self::seq(b).load(Ordering::Relaxed) == before {
                return Some(copy);
            }
        }
        None
    }

    /// Every translation in one table: (key, target), each bucket read consistently.
    pub fn entries(&self, d: Direction) -> Vec<NatWay> {
        (0..self.shape.buckets)
            .filter_map(|i| self.read_bucket(d, i))
            .flat_map(|b| b.ways)
            .filter(|w| w.key.proto != 0)
            .collect()
    }

    /// How many translations one table holds.
    pub fn count(&self, d: Direction) -> usize {
        (0..self.shape.buckets)
            .filter_map(|i| self.read_bucket(d, i))
            .map(|b| b.ways.iter().filter(|w| w.key.proto != 0).count())
            .sum()
    }

    pub fn get(&self, d: Direction, key: &NatKey) -> Option<NatTarget> {
        let b = self.read_bucket(d, bucket_of(key, &self.shape))?;
        b.ways.iter().find(|w| w.key == *key).map(|w| w.target)
    }

    /// Runs `f` on the bucket `key` lives in, held for writing.
    fn write<R>(
        &self,
        d: Direction,
        key: &NatKey,
        f: impl FnOnce(&mut NatBucket) -> R,
    ) -> anyhow::Result<R> {
        let b = self.bucket(d, bucket_of(key, &self.shape));
        let seq = Self::seq(b);
        for _ in 0..TAKE_ATTEMPTS {
            let s = seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && seq
                    .compare_exchange(s, s + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                // SAFETY: the bucket is ours until the release below; the kernel's programs
                // do not write a bucket they did not take.
                let r = f(unsafe { &mut *b });
                seq.fetch_add(1, Ordering::Release);
                return Ok(r);
            }
            std::hint::spin_loop();
        }
        bail!("a NAT bucket stayed taken")
    }

    /// Clears `key`'s translation if it still leads to `addr` and `port`; whether it did.
    pub fn remove(
        &self,
        d: Direction,
        key: &NatKey,
        addr: &[u8; 16],
        port: u16,
    ) -> anyhow::Result<bool> {
        self.write(d, key, |b| {
            match b
                .ways
                .iter_mut()
                .find(|w| w.key == *key && w.target.addr == *addr && w.target.port == port)
            {
                Some(w) => {
                    *w = NatWay::default();
                    true
                }
                None => false,
            }
        })
    }

    /// Records `key` → `target` in its own way or an empty one (never evicting): whether there
    /// was room. For translations carried over from an earlier release, and for tests.
    pub fn insert(&self, d: Direction, key: &NatKey, target: &NatTarget) -> anyhow::Result<bool> {
        self.write(d, key, |b| {
            let at = b
                .ways
                .iter()
                .position(|w| w.key == *key)
                .or_else(|| b.ways.iter().position(|w| w.key.proto == 0));
            match at {
                Some(i) => {
                    b.ways[i] = NatWay {
                        key: *key,
                        target: *target,
                    };
                    true
                }
                None => false,
            }
        })
    }

    /// Sets the last-seen time of `key`'s translation (tests age translations with it).
    pub fn set_last_seen(&self, d: Direction, key: &NatKey, ns: u64) -> anyhow::Result<bool> {
        self.write(d, key, |b| {
            b.ways
                .iter_mut()
                .find(|w| w.key == *key)
                .map(|w| w.target.last_seen_ns = ns)
                .is_some()
        })
    }
}

fn read_shape(map: &Map) -> anyhow::Result<NatTableShape> {
    let shape = Array::<_, NatTableShape>::try_from(map)?
        .get(&0, 0)
        .context("reading the NAT tables' shape")?;
    if shape.buckets == 0 || !shape.buckets.is_power_of_two() {
        bail!("the NAT tables' shape is unset ({} buckets)", shape.buckets);
    }
    Ok(shape)
}

/// Writes the tables' shape when they are new (`buckets` each, a fresh random seed); keeps a
/// pinned one, which the translations in the tables were placed by.
pub fn init_shape(shape: &mut Map, buckets: u32) -> anyhow::Result<NatTableShape> {
    let mut array = Array::<_, NatTableShape>::try_from(shape)?;
    let current = array.get(&0, 0)?;
    if current.buckets != 0 {
        if current.buckets != buckets {
            bail!(
                "the pinned NAT tables' shape says {} buckets, the tables have {buckets}",
                current.buckets
            );
        }
        return Ok(current);
    }
    let mut seed = [0u8; 4];
    // SAFETY: writes at most 4 bytes into `seed`.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom for the NAT hash seed");
    }
    let fresh = NatTableShape {
        buckets,
        seed: u32::from_ne_bytes(seed),
    };
    array.set(0, fresh, 0)?;
    Ok(fresh)
}

impl NatTables {
    /// The tables of a loaded object.
    pub fn of(ebpf: &aya::Ebpf) -> anyhow::Result<NatTables> {
        let map = |name: &str| {
            ebpf.map(name)
                .with_context(|| format!("map {name} missing"))
        };
        NatTables::open(
            map(names::NAT_FORWARD)?,
            map(names::NAT_REVERSE)?,
            map(names::NAT_TABLE_SHAPE)?,
        )
    }
}

/// Moves the translations of an earlier release's pinned tables (LRU hash maps, the same keys
/// and targets) into the bucket tables, then unpins the old maps. The programs that still use
/// them are replaced when this process attaches its own; a translation they make in between
/// is not carried over.
pub fn carry_over_v1(ebpf: &aya::Ebpf, pins: &crate::pins::PinDir) -> anyhow::Result<()> {
    let old = [
        (names::NAT_FORWARD_V1_LRU, Direction::Forward),
        (names::NAT_REVERSE_V1_LRU, Direction::Reverse),
    ];
    if old.iter().all(|(name, _)| !pins.map(name).exists()) {
        return Ok(());
    }
    let tables = NatTables::of(ebpf)?;
    for (name, direction) in old {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let map: aya::maps::HashMap<MapData, NatKey, NatTarget> =
            aya::maps::HashMap::try_from(Map::LruHashMap(data))?;
        let (mut moved, mut dropped) = (0usize, 0usize);
        for entry in map.iter().filter_map(Result::ok) {
            let (key, mut target) = entry;
            // The old layout's padding byte is the new one's `replied`: unknown, so unset.
            target.replied = 0;
            if tables.insert(direction, &key, &target)? {
                moved += 1;
            } else {
                dropped += 1;
            }
        }
        tracing::info!(
            "carried {moved} translations over from {name} ({dropped} found no room in their bucket)"
        );
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    Ok(())
}
