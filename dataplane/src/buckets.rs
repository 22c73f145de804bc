//! The controller's access to a bucket table (gateway_common::buckets): the array mapped into
//! this process, buckets read and written in place by the same rules the kernel's programs
//! follow (a reader checks the bucket's sequence word around its reads; a writer takes the
//! bucket with a compare-and-swap and releases it by adding one).

use std::{
    marker::PhantomData,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, bail};
use aya::maps::{Array, Map, MapData};
use gateway_common::buckets::{Bucket, TableKey, TableShape, Way, bucket_of};

use crate::mmap::MmapArray;

/// How long a writer here tries for a bucket the kernel holds (it holds one for the length
/// of a few stores).
const TAKE_ATTEMPTS: u32 = 100_000;

/// What [`BucketTable::merge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// Into an empty way.
    Inserted,
    /// Over the key's entry.
    Replaced,
    /// The key's entry stays.
    Kept,
    /// The key's bucket is full.
    NoRoom,
}

pub struct BucketTable<K, V> {
    array: MmapArray,
    shape: TableShape,
    _entries: PhantomData<Way<K, V>>,
}

impl<K: TableKey + Copy + PartialEq, V: Copy> BucketTable<K, V> {
    /// Maps `table`, whose shape `shape` holds (see [`init_shape`]).
    pub fn open(table: &Map, shape: &Map, what: &str) -> anyhow::Result<Self> {
        let shape = read_shape(shape, what)?;
        let Map::Array(data) = table else {
            bail!("the {what} table is not an array");
        };
        let array = MmapArray::from_data(data, size_of::<Bucket<Way<K, V>>>())?;
        if shape.buckets != array.entries() {
            bail!(
                "the {what} table has {} buckets, its shape says {}",
                array.entries(),
                shape.buckets
            );
        }
        Ok(BucketTable {
            array,
            shape,
            _entries: PhantomData,
        })
    }

    /// The table `table` of a loaded object, shaped by `shape`.
    pub fn of(ebpf: &aya::Ebpf, table: &str, shape: &str) -> anyhow::Result<Self> {
        let map = |name: &str| {
            ebpf.map(name)
                .with_context(|| format!("map {name} missing"))
        };
        Self::open(map(table)?, map(shape)?, table)
    }

    fn bucket(&self, index: u32) -> *mut Bucket<Way<K, V>> {
        self.array
            .element(index)
            .expect("bucket index below the shape's count")
    }

    fn seq(b: *mut Bucket<Way<K, V>>) -> &'static AtomicU64 {
        // SAFETY: the sequence word is 8-aligned shared memory that lives as long as the mapping
        // (callers use it only while `self` is borrowed).
        unsafe { AtomicU64::from_ptr(&raw mut (*b).seq) }
    }

    /// Runs `attempt` on bucket `b` until it succeeds, spinning between tries, for a round of
    /// [`TAKE_ATTEMPTS`]; `None` if it never did. A bucket that stayed taken at one odd value
    /// through the whole round is released and given a second round: the kernel's programs
    /// hold a bucket for a few stores with preemption off, so only a controller killed between
    /// its take and its release leaves one taken, and every packet of its flows would then
    /// meet a bucket being written.
    fn retry<R>(
        b: *mut Bucket<Way<K, V>>,
        mut attempt: impl FnMut(&AtomicU64) -> Option<R>,
    ) -> Option<R> {
        let seq = Self::seq(b);
        let first = seq.load(Ordering::Relaxed);
        for round in 0..2 {
            for _ in 0..TAKE_ATTEMPTS {
                if let Some(r) = attempt(seq) {
                    return Some(r);
                }
                std::hint::spin_loop();
            }
            let now = seq.load(Ordering::Relaxed);
            let orphaned = round == 0
                && now == first
                && now & 1 != 0
                && seq
                    .compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok();
            if !orphaned {
                break;
            }
            tracing::warn!("released a flow table bucket left taken by a writer that is gone");
        }
        None
    }

    /// A consistent copy of bucket `index`, or None if writers kept changing it.
    fn read_bucket(&self, index: u32) -> Option<Bucket<Way<K, V>>> {
        let b = self.bucket(index);
        Self::retry(b, |seq| {
            let before = seq.load(Ordering::Acquire);
            if before & 1 != 0 {
                return None;
            }
            // SAFETY: in bounds; a torn copy is detected by the sequence check below.
            let copy = unsafe { std::ptr::read_volatile(b) };
            std::sync::atomic::fence(Ordering::Acquire);
            (seq.load(Ordering::Relaxed) == before).then_some(copy)
        })
    }

    /// Every entry: (key, value), each bucket read consistently.
    pub fn entries(&self) -> Vec<Way<K, V>> {
        (0..self.shape.buckets)
            .filter_map(|i| self.read_bucket(i))
            .flat_map(|b| b.ways)
            .filter(|w| !w.key.is_vacant())
            .collect()
    }

    /// How many entries the table holds.
    pub fn count(&self) -> usize {
        (0..self.shape.buckets)
            .filter_map(|i| self.read_bucket(i))
            .map(|b| b.ways.iter().filter(|w| !w.key.is_vacant()).count())
            .sum()
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let b = self.read_bucket(bucket_of(key, &self.shape))?;
        b.ways.iter().find(|w| w.key == *key).map(|w| w.value)
    }

    /// Runs `f` on the bucket `key` lives in, held for writing.
    fn write<R>(&self, key: &K, f: impl FnOnce(&mut Bucket<Way<K, V>>) -> R) -> anyhow::Result<R> {
        let b = self.bucket(bucket_of(key, &self.shape));
        let mut f = Some(f);
        Self::retry(b, |seq| {
            let s = seq.load(Ordering::Relaxed);
            if s & 1 != 0
                || seq
                    .compare_exchange(s, s + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                return None;
            }
            // SAFETY: the bucket is ours until the release below; the kernel's programs do not
            // write a bucket they did not take.
            let r = f.take().map(|f| f(unsafe { &mut *b }));
            seq.fetch_add(1, Ordering::Release);
            r
        })
        .context("a bucket stayed taken")
    }

    /// Empties `key`'s way if `still` says its value is still the caller's to remove (the
    /// kernel may have changed it since it was read); whether it did.
    pub fn remove_if(&self, key: &K, still: impl FnOnce(&V) -> bool) -> anyhow::Result<bool>
    where
        Way<K, V>: Default,
    {
        self.write(key, |b| match b.ways.iter_mut().find(|w| w.key == *key) {
            Some(w) if still(&w.value) => {
                *w = Way::default();
                true
            }
            _ => false,
        })
    }

    /// Records `key` → `value` in its own way or an empty one (never evicting): whether there
    /// was room. For tests.
    pub fn insert(&self, key: &K, value: &V) -> anyhow::Result<bool> {
        self.write(key, |b| {
            let at = b
                .ways
                .iter()
                .position(|w| w.key == *key)
                .or_else(|| b.ways.iter().position(|w| w.key.is_vacant()));
            match at {
                Some(i) => {
                    b.ways[i] = Way {
                        key: *key,
                        value: *value,
                    };
                    true
                }
                None => false,
            }
        })
    }

    /// Records `key` → `value`: over the key's own entry where `replaces(held)` says the offered
    /// value is the one to keep, else in an empty way.
    pub fn merge(
        &self,
        key: &K,
        value: &V,
        replaces: impl FnOnce(&V) -> bool,
    ) -> anyhow::Result<Merged> {
        self.write(key, |b| {
            if let Some(w) = b.ways.iter_mut().find(|w| w.key == *key) {
                if !replaces(&w.value) {
                    return Merged::Kept;
                }
                w.value = *value;
                return Merged::Replaced;
            }
            match b.ways.iter_mut().find(|w| w.key.is_vacant()) {
                Some(w) => {
                    *w = Way {
                        key: *key,
                        value: *value,
                    };
                    Merged::Inserted
                }
                None => Merged::NoRoom,
            }
        })
    }

    /// Lets `f` change `key`'s value in place, if the table holds the key (the kernel may have
    /// changed it since it was read: `f` sees it as it is now); what `f` returned, false where
    /// the key is not held.
    pub fn update(&self, key: &K, f: impl FnOnce(&mut V) -> bool) -> anyhow::Result<bool> {
        self.write(key, |b| {
            b.ways
                .iter_mut()
                .find(|w| w.key == *key)
                .is_some_and(|w| f(&mut w.value))
        })
    }
}

fn read_shape(map: &Map, what: &str) -> anyhow::Result<TableShape> {
    let shape = Array::<_, TableShape>::try_from(map)?
        .get(&0, 0)
        .with_context(|| format!("reading the {what} table's shape"))?;
    if shape.buckets == 0 || !shape.buckets.is_power_of_two() {
        bail!(
            "the {what} table's shape is unset ({} buckets)",
            shape.buckets
        );
    }
    Ok(shape)
}

/// Writes a table's shape when it is new (`buckets`, a fresh random seed); keeps a pinned
/// one, which the entries in the table were placed by.
pub fn init_shape(shape: &mut Map, buckets: u32, what: &str) -> anyhow::Result<TableShape> {
    let mut array = Array::<_, TableShape>::try_from(shape)?;
    let current = array.get(&0, 0)?;
    if current.buckets != 0 {
        if current.buckets != buckets {
            bail!(
                "the pinned {what} table's shape says {} buckets, the table has {buckets}",
                current.buckets
            );
        }
        return Ok(current);
    }
    let mut seed = [0u8; 4];
    // SAFETY: writes at most 4 bytes into `seed`.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("getrandom for the {what} hash seed"));
    }
    let fresh = TableShape {
        buckets,
        seed: u32::from_ne_bytes(seed),
    };
    array.set(0, fresh, 0)?;
    Ok(fresh)
}

/// How an entry carried over from an earlier release's table meets the new table: `adapt`
/// makes it (false: left behind, an entry no longer live); `wins(offered, held)` says whether
/// it replaces the new table's entry of the same key.
pub struct CarryRules<A, W> {
    pub adapt: A,
    pub wins: W,
}

impl<A, W> CarryRules<A, W> {
    /// Copies `entries` of the old table `old` into `table` by these rules.
    pub fn copy_into<K, V>(
        &mut self,
        table: &BucketTable<K, V>,
        entries: Vec<(K, V)>,
        old: &str,
    ) -> anyhow::Result<()>
    where
        K: TableKey + Copy + PartialEq,
        V: Copy,
        A: FnMut(&K, &mut V) -> bool,
        W: FnMut(&V, &V) -> bool,
    {
        let (mut moved, mut kept, mut dropped) = (0usize, 0usize, 0usize);
        for (key, mut value) in entries {
            if !(self.adapt)(&key, &mut value) {
                continue;
            }
            match table.merge(&key, &value, |held| (self.wins)(&value, held))? {
                Merged::Inserted | Merged::Replaced => moved += 1,
                Merged::Kept => kept += 1,
                Merged::NoRoom => dropped += 1,
            }
        }
        tracing::info!(
            "carried {moved} entries over from {old} ({kept} newer in the new table, {dropped} found no room in their bucket)"
        );
        Ok(())
    }
}

/// The entries of an earlier release's pinned table `old` (none where it is not pinned): an
/// LRU hash map, or with `shape` a bucket table of that shape (another bucket count than the
/// new table's). It stays pinned (`carry` unpins it).
pub fn old_entries<K, V>(
    pins: &crate::pins::PinDir,
    old: &str,
    shape: Option<&str>,
) -> anyhow::Result<Vec<(K, V)>>
where
    K: TableKey + Copy + PartialEq + aya::Pod,
    V: Copy + aya::Pod,
{
    let path = pins.map(old);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let open = |path: &std::path::Path| {
        MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))
    };
    Ok(match shape {
        None => aya::maps::HashMap::<MapData, K, V>::try_from(Map::LruHashMap(open(&path)?))?
            .iter()
            .filter_map(Result::ok)
            .collect(),
        Some(shape) => BucketTable::<K, V>::open(
            &Map::Array(open(&path)?),
            &Map::Array(open(&pins.map(shape))?),
            old,
        )?
        .entries()
        .into_iter()
        .map(|w| (w.key, w.value))
        .collect(),
    })
}
