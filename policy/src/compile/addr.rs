//! Address classes: every address region gets the class of the rule address-sets ("atoms")
//! containing it, as a source and as a destination. IPv4 regions are written into the multibit
//! trie (root array + 16-entry chunks), IPv6 prefixes into LPM entries.

use std::collections::HashMap;

use gateway_common::acl::{
    AddrClass, V4_CHUNK_BITS, V4_CHUNK_ENTRIES, V4_ROOT_BITS, V4_ROOT_ENTRIES,
};
use ipnet::IpNet;

use super::CompileError;

pub const SIDE_SRC: u32 = 0;
pub const SIDE_DST: u32 = 1;

/// A mark on a prefix: atom id and side, packed as `atom << 1 | side`.
pub fn mark(atom: u32, side: u32) -> u32 {
    atom << 1 | side
}

/// 12 bytes, no allocation of its own: a map of 10,000 peers puts ~700,000 nodes in the IPv6
/// trie (a /128 per peer), and few of them carry marks.
#[derive(Default)]
struct Node {
    child: [u32; 2],
    /// Index of the node's marks in `Trie::marks`; 0: none.
    marks: u32,
}

/// A binary trie over left-aligned 128-bit addresses (IPv4 in the top 32 bits).
pub struct Trie {
    nodes: Vec<Node>,
    /// The mark lists of marked nodes; entry 0 is the empty list of all the others.
    marks: Vec<Vec<u32>>,
}

impl Default for Trie {
    fn default() -> Self {
        Self::new()
    }
}

impl Trie {
    pub fn new() -> Self {
        Trie {
            nodes: vec![Node::default()],
            marks: vec![Vec::new()],
        }
    }

    fn marks(&self, node: usize) -> &[u32] {
        &self.marks[self.nodes[node].marks as usize]
    }

    pub fn insert(&mut self, bits: u128, len: u8, m: u32) {
        let mut n = 0usize;
        for i in 0..len as u32 {
            let b = ((bits >> (127 - i)) & 1) as usize;
            if self.nodes[n].child[b] == 0 {
                self.nodes.push(Node::default());
                let id = (self.nodes.len() - 1) as u32;
                self.nodes[n].child[b] = id;
            }
            n = self.nodes[n].child[b] as usize;
        }
        if self.nodes[n].marks == 0 {
            self.nodes[n].marks = self.marks.len() as u32;
            self.marks.push(Vec::new());
        }
        let list = self.nodes[n].marks as usize;
        self.marks[list].push(m);
    }
}

pub fn net_bits(net: &IpNet) -> (u128, u8, bool) {
    match net {
        IpNet::V4(n) => ((u32::from(n.network()) as u128) << 96, n.prefix_len(), true),
        IpNet::V6(n) => (u128::from(n.network()), n.prefix_len(), false),
    }
}

/// Interns the atom lists of address regions into class ids. Class 0 of each side is the empty
/// list (matched by no rule).
pub struct Classes {
    src_ids: HashMap<Vec<u32>, u32>,
    dst_ids: HashMap<Vec<u32>, u32>,
    pub src_lists: Vec<Vec<u32>>,
    pub dst_lists: Vec<Vec<u32>>,
    scratch: Vec<u32>,
}

impl Default for Classes {
    fn default() -> Self {
        Self::new()
    }
}

impl Classes {
    pub fn new() -> Self {
        let mut c = Classes {
            src_ids: HashMap::new(),
            dst_ids: HashMap::new(),
            src_lists: Vec::new(),
            dst_lists: Vec::new(),
            scratch: Vec::new(),
        };
        c.src_ids.insert(Vec::new(), 0);
        c.dst_ids.insert(Vec::new(), 0);
        c.src_lists.push(Vec::new());
        c.dst_lists.push(Vec::new());
        c
    }

    pub fn class_of(&mut self, marks: &[u32]) -> AddrClass {
        self.scratch.clear();
        self.scratch.extend_from_slice(marks);
        self.scratch.sort_unstable();
        self.scratch.dedup();
        let src: Vec<u32> = self
            .scratch
            .iter()
            .filter(|m| *m & 1 == SIDE_SRC)
            .map(|m| m >> 1)
            .collect();
        let dst: Vec<u32> = self
            .scratch
            .iter()
            .filter(|m| *m & 1 == SIDE_DST)
            .map(|m| m >> 1)
            .collect();
        AddrClass {
            src: intern(&mut self.src_ids, &mut self.src_lists, src),
            dst: intern(&mut self.dst_ids, &mut self.dst_lists, dst),
        }
    }
}

fn intern(ids: &mut HashMap<Vec<u32>, u32>, lists: &mut Vec<Vec<u32>>, list: Vec<u32>) -> u32 {
    if let Some(id) = ids.get(&list) {
        return *id;
    }
    let id = lists.len() as u32;
    lists.push(list.clone());
    ids.insert(list, id);
    id
}

/// The IPv4 multibit trie of one policy: the root array and the chunk pool.
pub struct V4Tables {
    pub root: Vec<AddrClass>,
    pub chunks: Vec<AddrClass>,
}

/// Which table a write goes to: the root level or a chunk (a small copyable tag).
#[derive(Clone, Copy)]
enum Table {
    Root,
    Chunk(u32),
}

struct V4Builder<'a> {
    trie: &'a Trie,
    classes: &'a mut Classes,
    out: V4Tables,
    max_chunks: u32,
    /// The class of the current marks, until they change (most steps down the trie add none).
    current: Option<AddrClass>,
}

impl V4Builder<'_> {
    fn write(&mut self, table: &Table, off: u32, count: u32, value: AddrClass) {
        let (base, slice) = match table {
            Table::Root => (0usize, &mut self.out.root),
            Table::Chunk(c) => ((*c * V4_CHUNK_ENTRIES) as usize, &mut self.out.chunks),
        };
        let start = base + off as usize;
        slice[start..start + count as usize].fill(value);
    }

    fn class(&mut self, marks: &[u32]) -> AddrClass {
        if let Some(c) = self.current {
            return c;
        }
        let c = self.classes.class_of(marks);
        self.current = Some(c);
        c
    }

    fn alloc_chunk(&mut self) -> Result<u32, CompileError> {
        let id = (self.out.chunks.len() / V4_CHUNK_ENTRIES as usize) as u32;
        if id >= self.max_chunks {
            return Err(CompileError::TooManyChunks {
                limit: self.max_chunks,
            });
        }
        self.out.chunks.resize(
            self.out.chunks.len() + V4_CHUNK_ENTRIES as usize,
            AddrClass::default(),
        );
        Ok(id)
    }

    /// Fills the entries `node` covers in `table` (entries sit at depth `level_end`);
    /// `marks` already holds the marks of `node` and its ancestors.
    fn descend(
        &mut self,
        node: usize,
        depth: u32,
        table: Table,
        off: u32,
        level_end: u32,
        marks: &mut Vec<u32>,
    ) -> Result<(), CompileError> {
        let child = self.trie.nodes[node].child;
        if child == [0, 0] {
            let class = self.class(marks);
            self.write(&table, off, 1 << (level_end - depth), class);
            return Ok(());
        }
        if depth == level_end {
            let chunk = self.alloc_chunk()?;
            self.write(&table, off, 1, AddrClass::link(chunk));
            return self.descend(
                node,
                depth,
                Table::Chunk(chunk),
                0,
                depth + V4_CHUNK_BITS,
                marks,
            );
        }
        let span = 1 << (level_end - depth - 1);
        for (b, &c) in child.iter().enumerate() {
            let sub = off + b as u32 * span;
            let sub_table = table;
            if c == 0 {
                let class = self.class(marks);
                self.write(&sub_table, sub, span, class);
                continue;
            }
            let added = self.trie.marks(c as usize);
            if added.is_empty() {
                self.descend(c as usize, depth + 1, sub_table, sub, level_end, marks)?;
            } else {
                let n = marks.len();
                marks.extend_from_slice(added);
                self.current = None;
                self.descend(c as usize, depth + 1, sub_table, sub, level_end, marks)?;
                marks.truncate(n);
                self.current = None;
            }
        }
        Ok(())
    }
}

/// Builds the IPv4 trie from `trie` (which holds IPv4 prefixes only).
pub fn build_v4(
    trie: &Trie,
    classes: &mut Classes,
    max_chunks: u32,
) -> Result<V4Tables, CompileError> {
    let mut b = V4Builder {
        trie,
        classes,
        out: V4Tables {
            root: vec![AddrClass::default(); V4_ROOT_ENTRIES as usize],
            chunks: Vec::new(),
        },
        max_chunks,
        current: None,
    };
    let mut marks = trie.marks(0).to_vec();
    b.descend(0, 0, Table::Root, 0, V4_ROOT_BITS, &mut marks)?;
    Ok(b.out)
}

/// IPv6 LPM entries: every marked prefix with the class of all marks on its path, plus ::/0.
pub fn build_v6(trie: &Trie, classes: &mut Classes) -> Vec<(u8, [u8; 16], AddrClass)> {
    let mut out = Vec::new();
    // Depth first, with one list of the marks on the path: a node's entry says how much of it
    // its parent's path holds (a subtree only ever cuts the list back to its own start).
    let mut path: Vec<u32> = Vec::new();
    let mut stack = vec![(0usize, 0u128, 0u32, 0usize)];
    while let Some((node, bits, depth, above)) = stack.pop() {
        path.truncate(above);
        let own = trie.marks(node);
        path.extend_from_slice(own);
        if depth == 0 || !own.is_empty() {
            out.push((depth as u8, bits.to_be_bytes(), classes.class_of(&path)));
        }
        for b in 0..2u32 {
            let c = trie.nodes[node].child[b as usize];
            if c != 0 {
                let child_bits = bits | ((b as u128) << (127 - depth));
                stack.push((c as usize, child_bits, depth + 1, path.len()));
            }
        }
    }
    out
}
