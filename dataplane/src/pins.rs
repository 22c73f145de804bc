//! The pinned data plane on bpffs: `<root>/<layout>/maps/<map>` and `<root>/<layout>/links/<link>`.
//! Pinned links keep the programs attached and pinned maps keep the policy and the flows when
//! the controller exits for any reason, so enforcement never lapses; the next `gateway run`
//! adopts both and swaps its programs in atomically. Removing them is an explicit act
//! (`gateway detach`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use gateway_common::maps::{LAYOUT_VERSION, PIN_LINKS_DIR, PIN_MAPS_DIR};

/// statfs(2) magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// Where bpffs is mounted by convention; mounted by the gateway when nothing is.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

#[derive(Debug, Clone)]
pub struct PinDir {
    /// `<root>/<LAYOUT_VERSION>`.
    dir: PathBuf,
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: &Path) -> PinDir {
        PinDir {
            dir: root.join(LAYOUT_VERSION),
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(PIN_MAPS_DIR).join(name)
    }

    /// A link's pin: one per (hook, interface), e.g. `xdp@lan0`, `tc-ingress@wt0`; or the
    /// record of a cls_bpf filter, `tc-ingress-filter@wt0` (see `attach::TcLinks`).
    pub fn link(&self, hook: &str, interface: &str) -> PathBuf {
        self.dir
            .join(PIN_LINKS_DIR)
            .join(format!("{hook}@{interface}"))
    }

    /// Pinned links, by file name.
    pub fn links(&self) -> Vec<PathBuf> {
        entries(&self.dir.join(PIN_LINKS_DIR))
    }

    /// Makes the folders (mounting bpffs where the convention says it belongs), refuses a
    /// pinned data plane of another layout, and says whether one of this layout is there to
    /// adopt.
    pub fn prepare(&self) -> anyhow::Result<bool> {
        ensure_bpffs(&self.root)?;
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name != LAYOUT_VERSION {
                    bail!(
                        "a data plane of another layout ({name}) is pinned under {}; this gateway uses {LAYOUT_VERSION} and cannot \
                         adopt it. It keeps enforcing as it is. To replace it, run `gateway detach --pin-dir {}` (enforcement stops \
                         until this gateway has started), or run the gateway release that pinned it",
                        self.root.display(),
                        self.root.display()
                    );
                }
            }
        }
        let adopt = self.map(gateway_common::maps::ACTIVE_POLICY).exists();
        for sub in [PIN_MAPS_DIR, PIN_LINKS_DIR] {
            std::fs::create_dir_all(self.dir.join(sub))
                .with_context(|| format!("creating {}", self.dir.join(sub).display()))?;
        }
        Ok(adopt)
    }

    /// The interfaces that cls_bpf filter records under the root (all layouts) name but this
    /// network namespace does not have: deleted since, or the records of a gateway that ran in
    /// another namespace, whose filters only a `gateway detach` there can find.
    pub fn filters_elsewhere(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for layout in entries(root) {
            for path in entries(&layout.join(PIN_LINKS_DIR)) {
                if let Some((iface, _)) = crate::attach::filter_record(&path)
                    && crate::attach::if_index(&iface).is_err()
                    && !out.contains(&iface)
                {
                    out.push(iface);
                }
            }
        }
        out
    }

    /// Removes every pin under the root, all layouts: links first (their programs detach; a
    /// cls_bpf filter's record takes its filter along), then maps. Returns what was removed.
    pub fn remove_all(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for layout in entries(root) {
            for sub in [PIN_LINKS_DIR, PIN_MAPS_DIR] {
                for path in entries(&layout.join(sub)) {
                    crate::attach::remove_pin(&path)?;
                    removed.push(path);
                }
                let _ = std::fs::remove_dir(layout.join(sub));
            }
            let _ = std::fs::remove_dir(layout);
        }
        let _ = std::fs::remove_dir(root);
        Ok(removed)
    }
}

/// What a folder holds, sorted (nothing, if it cannot be read).
fn entries(folder: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn fs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a valid out pointer.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// The pin root must be on bpffs. Under /sys/fs/bpf an unmounted bpffs is mounted (as systemd
/// and `ip netns exec` leave it unmounted); anywhere else it is the operator's to mount.
fn ensure_bpffs(root: &Path) -> anyhow::Result<()> {
    let existing = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if fs_magic(existing) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    if root.starts_with(BPFFS_MOUNT) && fs_magic(Path::new(BPFFS_MOUNT)) != Some(BPF_FS_MAGIC) {
        let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
        // SAFETY: mount(2) with valid C strings and no data.
        if unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        } != 0
        {
            bail!(
                "mounting bpffs at {BPFFS_MOUNT}: {}",
                std::io::Error::last_os_error()
            );
        }
        tracing::info!("mounted bpffs at {BPFFS_MOUNT}");
        return Ok(());
    }
    bail!(
        "{} is not on a BPF filesystem: mount one (mount -t bpf bpf DIR) or choose another pin_dir",
        root.display()
    )
}

/// Mounts a private bpffs at `dir` (labs and tests: one instance each, gone at unmount).
pub fn mount_bpffs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: mount(2) with valid C strings and no data.
    if unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    } != 0
    {
        bail!(
            "mounting bpffs at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Unmounts what [`mount_bpffs`] mounted (lazily: a process may still hold it).
pub fn unmount_bpffs(dir: &Path) {
    if let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2(2) with a valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}
