//! Access to an mmapable BPF array: a whole policy slot is written with memory stores instead
//! of one syscall per entry, and the NAT tables' buckets are taken and written in place.

use std::{os::fd::AsRawFd, ptr::NonNull};

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData};

pub struct MmapArray {
    base: NonNull<u8>,
    len: usize,
    /// Bytes between elements: the kernel rounds values up to 8 bytes.
    stride: usize,
    entries: u32,
}

// SAFETY: the mapping is plain shared memory owned by this value.
unsafe impl Send for MmapArray {}

impl MmapArray {
    pub fn new(map: &Map, value_size: usize) -> anyhow::Result<MmapArray> {
        let Map::Array(data) = map else {
            bail!("not an array map")
        };
        Self::from_data(data, value_size)
    }

    pub(crate) fn from_data(data: &MapData, value_size: usize) -> anyhow::Result<MmapArray> {
        let info = data.info().context("map info")?;
        let entries = info.max_entries();
        let stride = value_size.div_ceil(8) * 8;
        let len = (entries as usize * stride).next_multiple_of(4096);
        let fd = data.fd().as_fd_raw();
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE; length within the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of BPF array");
        }
        Ok(MmapArray {
            base: NonNull::new(ptr.cast()).context("mmap returned null")?,
            len,
            stride,
            entries,
        })
    }

    /// Elements in the array.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Where element `index` starts (`T` must fit in an element); None past the end.
    pub fn element<T>(&self, index: u32) -> Option<*mut T> {
        assert!(size_of::<T>() <= self.stride);
        (index < self.entries)
            // SAFETY: in bounds of the mapping.
            .then(|| unsafe { self.base.as_ptr().add(index as usize * self.stride) }.cast())
    }

    /// Copies `values` into elements `first..first + values.len()`.
    pub fn write<T: Copy>(&mut self, first: u32, values: &[T]) -> anyhow::Result<()> {
        assert!(size_of::<T>() <= self.stride);
        if first as usize + values.len() > self.entries as usize {
            bail!("write past the end of a {}-entry array", self.entries);
        }
        for (i, v) in values.iter().enumerate() {
            let at = (first as usize + i) * self.stride;
            // SAFETY: in bounds (checked above); the target is plain shared memory.
            unsafe { std::ptr::write_unaligned(self.base.as_ptr().add(at).cast::<T>(), *v) };
        }
        Ok(())
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

trait RawFd {
    fn as_fd_raw(&self) -> i32;
}

impl RawFd for aya::maps::MapFd {
    fn as_fd_raw(&self) -> i32 {
        use std::os::fd::AsFd;
        self.as_fd().as_raw_fd()
    }
}
