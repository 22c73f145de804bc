//! Many map entries per system call (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`; aya 0.14
//! has no batch operations). A policy for 10,000 peers writes ~17,000 verdicts and ~5,000 IPv6
//! prefixes; one system call per entry took ~30 ms of each apply.
//!
//! A batch only speeds things up: the kernel applies it entry by entry and reports how many it
//! applied before an error; the caller writes the rest one by one, which reports the real error
//! of the entry that fails (or does the whole job where a map type has no batch operation).

use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h). The kernel zero-fills
/// the rest of the union.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// How many entries from the start of a batch are applied.
fn call(cmd: libc::c_long, fd: BorrowedFd<'_>, keys: u64, values: u64, count: usize) -> usize {
    let Ok(max) = u32::try_from(count) else {
        return 0;
    };
    if max == 0 {
        return 0;
    }
    let mut attr = BatchAttr {
        keys,
        values,
        count: max,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; `keys` and `values` point at
    // `count` entries of the map's key and value sizes (the callers' types match the map's).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if r == 0 {
        return count;
    }
    // The kernel writes back how many entries it applied before the one that failed, which is
    // fewer than asked for. An error before the first entry (no batch operation for this map,
    // no memory) leaves the count as it was: nothing applied.
    if attr.count < max {
        attr.count as usize
    } else {
        0
    }
}

/// Writes `keys[i]` → `values[i]` (create or replace); returns how many from the start it wrote.
pub fn update<K: Copy, V: Copy>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> usize {
    assert_eq!(keys.len(), values.len());
    call(
        BPF_MAP_UPDATE_BATCH,
        fd,
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        keys.len(),
    )
}

/// Removes `keys`; returns how many from the start it removed (an absent key stops it).
pub fn delete<K: Copy>(fd: BorrowedFd<'_>, keys: &[K]) -> usize {
    call(
        BPF_MAP_DELETE_BATCH,
        fd,
        keys.as_ptr() as u64,
        0,
        keys.len(),
    )
}
