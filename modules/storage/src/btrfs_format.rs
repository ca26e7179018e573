//! Formats a blank disk as a single-device btrfs pool, in-process.
//!
//! Writes what mkfs.btrfs 6.x writes for `--data single --metadata single`
//! (features: mixed backrefs, extended inode refs, skinny metadata, no
//! holes, free space tree): a system, a metadata and a data chunk of the
//! first 21 MiB, nine 16 KiB leaves (chunk, root, extent, device, fs,
//! checksum, UUID, free space and data relocation trees) and the
//! superblock copies. Running mkfs.btrfs was most of a new node's storage
//! bring-up under emulation (0.2-0.6 s: a dynamically linked program and
//! its libraries paged in beside the rest of the boot); this is ~150 KiB
//! of writes. The kernel grows the filesystem from there (new chunks as
//! needed), and `btrfs check` holds the output to the format in the tests.
//!
//! On-disk format: the kernel's include/uapi/linux/btrfs_tree.h; every
//! integer is little-endian; tree blocks and superblocks carry CRC-32C.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{io, Result, StorageError};
use crate::probe::{self, Content, MIB};

const NODESIZE: usize = 16 * 1024;
const SECTORSIZE: u32 = 4096;
const SUPER_OFFSET: u64 = 64 * 1024;
const SUPER_SIZE: usize = 4096;
/// The superblock's copies; each one that fits on the device is written.
const SUPER_MIRRORS: [u64; 2] = [64 * MIB, 256 << 30];
const HEADER: usize = 101;
const ITEM: usize = 25;
const GENERATION: u64 = 1;

// Chunks, identity-mapped (logical = physical), all below the first
// superblock copy (64 MiB) so none of them has a superblock inside.
const SYSTEM: (u64, u64) = (MIB, 4 * MIB);
const METADATA: (u64, u64) = (5 * MIB, 8 * MIB);
const DATA: (u64, u64) = (13 * MIB, 8 * MIB);
/// The smallest device the layout fits on.
pub const MIN_BYTES: u64 = DATA.0 + DATA.1;

// Tree object ids.
const ROOT_TREE: u64 = 1;
const EXTENT_TREE: u64 = 2;
const CHUNK_TREE: u64 = 3;
const DEV_TREE: u64 = 4;
const FS_TREE: u64 = 5;
const ROOT_TREE_DIR: u64 = 6;
const CSUM_TREE: u64 = 7;
const UUID_TREE: u64 = 9;
const FREE_SPACE_TREE: u64 = 10;
const DATA_RELOC_TREE: u64 = -9i64 as u64;
const DEV_ITEMS: u64 = 1;
const FIRST_CHUNK_TREE: u64 = 256;
const FIRST_FREE: u64 = 256;

// Item types.
const INODE_ITEM: u8 = 1;
const INODE_REF: u8 = 12;
const DIR_ITEM: u8 = 84;
const ROOT_ITEM: u8 = 132;
const METADATA_ITEM: u8 = 169;
const TREE_BLOCK_REF: u8 = 176;
const BLOCK_GROUP_ITEM: u8 = 192;
const FREE_SPACE_INFO: u8 = 198;
const FREE_SPACE_EXTENT: u8 = 199;
const DEV_EXTENT: u8 = 204;
const DEV_ITEM: u8 = 216;
const CHUNK_ITEM: u8 = 228;
const UUID_KEY_SUBVOL: u8 = 251;

// Flags.
const BG_DATA: u64 = 1;
const BG_SYSTEM: u64 = 2;
const BG_METADATA: u64 = 4;
const EXTENT_FLAG_TREE_BLOCK: u64 = 2;
const HEADER_FLAG_WRITTEN: u64 = 1;
const MIXED_BACKREF_REV: u64 = 1 << 56;
const SUPER_FLAG_WRITTEN: u64 = 1;
const COMPAT_RO_FREE_SPACE_TREE: u64 = 0x1 | 0x2; // FREE_SPACE_TREE, _VALID
const INCOMPAT: u64 = 0x1 | 0x40 | 0x100 | 0x200; // MIXED_BACKREF, EXTENDED_IREF, SKINNY_METADATA, NO_HOLES
const FT_DIR: u8 = 2;
const DIR_MODE: u32 = 0o040755;
const MAGIC: &[u8; 8] = b"_BHRfS_M";

/// What identifies the new filesystem.
#[derive(Debug, Clone)]
pub struct Identity {
    pub label: String,
    pub fsid: [u8; 16],
    pub dev_uuid: [u8; 16],
    pub chunk_tree_uuid: [u8; 16],
    pub fs_tree_uuid: [u8; 16],
    /// Seconds since the epoch for the root directories' times.
    pub now: u64,
}

/// Formats `dev` (`size` bytes). Refuses a device that is in use (opened
/// O_EXCL, as mkfs.btrfs does) or not blank (the probe sees a signature):
/// a second guard behind the disk policy.
pub fn format(dev: &Path, size: u64, id: &Identity) -> Result<()> {
    let writes = layout(size, id).map_err(|reason| StorageError::BadDevice {
        path: dev.into(),
        reason,
    })?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(dev)
        .map_err(io(
            dev,
            "opening exclusively to format (mounted or in use?)",
        ))?;
    if probe::probe(dev, size)? != Content::Blank {
        return Err(StorageError::BadDevice {
            path: dev.into(),
            reason: "not blank: refusing to format over a signature".into(),
        });
    }
    // Trees, then the superblock that points to them, then its copies,
    // each durable before the next: a format cut short leaves either a
    // blank disk or a whole filesystem (its copies are rewritten at every
    // commit), never a stray copy that would make the disk look foreign.
    let (supers, trees): (Vec<_>, Vec<_>) = writes.into_iter().partition(|w| w.is_super);
    let (primary, copies) = supers.split_at(1.min(supers.len()));
    for (step, what) in [
        (&trees[..], "the btrfs trees"),
        (primary, "the btrfs superblock"),
        (copies, "the btrfs superblock's copies"),
    ] {
        for w in step {
            file.write_all_at(&w.bytes, w.offset)
                .map_err(|source| StorageError::Io {
                    path: dev.into(),
                    what: "writing the btrfs format",
                    source,
                })?;
        }
        file.sync_data().map_err(|source| StorageError::Io {
            path: dev.into(),
            what: "flushing the btrfs format",
            source,
        })?;
        tracing::trace!("{}: {what} written", dev.display());
    }
    Ok(())
}

/// One write of the format: `bytes` at `offset`.
#[derive(Debug)]
pub struct Write {
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// The primary superblock comes first, then its copies.
    pub is_super: bool,
}

/// Every write of the format, in place; pure, so tests can look at it.
/// The rest of the device is left as it is: only what the trees point to
/// is ever read, and a blank disk's first MiB (which the superblock's
/// write does not cover) is zeros already.
pub fn layout(size: u64, id: &Identity) -> std::result::Result<Vec<Write>, String> {
    if size < MIN_BYTES {
        return Err(format!(
            "{size} bytes is too small for a pool (btrfs needs {MIN_BYTES})"
        ));
    }
    if id.label.len() >= 256 || id.label.contains('\0') {
        return Err(format!("label {:?}: at most 255 bytes, no NUL", id.label));
    }
    let total = size / SECTORSIZE as u64 * SECTORSIZE as u64;
    let chunk_leaf = SYSTEM.0;
    // The metadata chunk's leaves, in this order from its start.
    let owners = [
        ROOT_TREE,
        EXTENT_TREE,
        DEV_TREE,
        FS_TREE,
        CSUM_TREE,
        UUID_TREE,
        FREE_SPACE_TREE,
        DATA_RELOC_TREE,
    ];
    let at = |owner: u64| {
        let i = owners.iter().position(|&o| o == owner).unwrap_or(0);
        METADATA.0 + (i * NODESIZE) as u64
    };
    let chunks = [
        (SYSTEM, BG_SYSTEM, SECTORSIZE, 0u16),
        (METADATA, BG_METADATA, 64 * 1024, 1),
        (DATA, BG_DATA, 64 * 1024, 1),
    ];
    let dev_bytes_used: u64 = chunks.iter().map(|c| c.0 .1).sum();
    let dev_item = dev_item(total, dev_bytes_used, id);
    let block = |owner: u64, items: Vec<(Key, Vec<u8>)>| {
        let bytenr = if owner == CHUNK_TREE {
            chunk_leaf
        } else {
            at(owner)
        };
        Write {
            offset: bytenr,
            bytes: leaf(id, bytenr, owner, items),
            is_super: false,
        }
    };

    let mut chunk_items = vec![(Key(DEV_ITEMS, DEV_ITEM, 1), dev_item.clone())];
    for &((start, len), flags, align, sub_stripes) in &chunks {
        chunk_items.push((
            Key(FIRST_CHUNK_TREE, CHUNK_ITEM, start),
            chunk(len, flags, align, sub_stripes, start, &id.dev_uuid),
        ));
    }
    let sys_chunk_array = {
        let (key, item) = &chunk_items[1];
        let mut b = key.bytes();
        b.extend_from_slice(item);
        b
    };

    let fs_dir = inode_item(NODESIZE as u64, id.now, id.now);
    let mut root_items = vec![
        (
            Key(FS_TREE, INODE_REF, ROOT_TREE_DIR),
            inode_ref(b"default"),
        ),
        (Key(ROOT_TREE_DIR, INODE_ITEM, 0), fs_dir.clone()),
        (
            Key(ROOT_TREE_DIR, INODE_REF, ROOT_TREE_DIR),
            inode_ref(b".."),
        ),
        (
            Key(ROOT_TREE_DIR, DIR_ITEM, name_hash(b"default") as u64),
            dir_item(Key(FS_TREE, ROOT_ITEM, u64::MAX), b"default", FT_DIR),
        ),
    ];
    for &owner in &owners[1..] {
        let (dirid, uuid, time) = match owner {
            FS_TREE => (FIRST_FREE, id.fs_tree_uuid, id.now),
            DATA_RELOC_TREE => (FIRST_FREE, [0; 16], 0),
            _ => (0, [0; 16], 0),
        };
        root_items.push((
            Key(owner, ROOT_ITEM, 0),
            root_item(at(owner), dirid, &uuid, time),
        ));
    }

    let mut extent_items = Vec::new();
    let tree_blocks: Vec<(u64, u64)> = std::iter::once((chunk_leaf, CHUNK_TREE))
        .chain(owners.iter().map(|&o| (at(o), o)))
        .collect();
    for &(bytenr, owner) in &tree_blocks {
        extent_items.push((Key(bytenr, METADATA_ITEM, 0), tree_block_extent(owner)));
    }
    let mut free_items = Vec::new();
    for &((start, len), flags, _, _) in &chunks {
        let mut used: Vec<u64> = tree_blocks
            .iter()
            .map(|&(b, _)| b)
            .filter(|&b| b >= start && b < start + len)
            .collect();
        used.sort_unstable();
        extent_items.push((
            Key(start, BLOCK_GROUP_ITEM, len),
            block_group(used.len() as u64 * NODESIZE as u64, flags),
        ));
        let free = free_ranges(start, len, &used);
        free_items.push((
            Key(start, FREE_SPACE_INFO, len),
            free_space_info(free.len() as u32),
        ));
        for (s, l) in free {
            free_items.push((Key(s, FREE_SPACE_EXTENT, l), Vec::new()));
        }
    }

    let dev_items = chunks
        .iter()
        .map(|&((start, len), ..)| {
            (
                Key(1, DEV_EXTENT, start),
                dev_extent(start, len, &id.chunk_tree_uuid),
            )
        })
        .collect();

    let fs_items = vec![
        (Key(FIRST_FREE, INODE_ITEM, 0), fs_dir),
        (Key(FIRST_FREE, INODE_REF, FIRST_FREE), inode_ref(b"..")),
    ];
    let reloc_items = vec![
        (Key(FIRST_FREE, INODE_ITEM, 0), inode_item(0, id.now, 0)),
        (Key(FIRST_FREE, INODE_REF, FIRST_FREE), inode_ref(b"..")),
    ];
    let uuid_items = vec![(
        Key(
            le_u64(&id.fs_tree_uuid[..8]),
            UUID_KEY_SUBVOL,
            le_u64(&id.fs_tree_uuid[8..]),
        ),
        FS_TREE.to_le_bytes().to_vec(),
    )];

    let mut writes = vec![
        block(CHUNK_TREE, chunk_items),
        block(ROOT_TREE, root_items),
        block(EXTENT_TREE, extent_items),
        block(DEV_TREE, dev_items),
        block(FS_TREE, fs_items),
        block(CSUM_TREE, Vec::new()),
        block(UUID_TREE, uuid_items),
        block(FREE_SPACE_TREE, free_items),
        block(DATA_RELOC_TREE, reloc_items),
    ];

    let bytes_used = tree_blocks.len() as u64 * NODESIZE as u64;
    let sb = |bytenr: u64| {
        superblock(&Super {
            bytenr,
            id,
            total,
            bytes_used,
            root: at(ROOT_TREE),
            chunk_root: chunk_leaf,
            dev_item: &dev_item,
            sys_chunk_array: &sys_chunk_array,
            roots: [
                at(ROOT_TREE),
                chunk_leaf,
                at(EXTENT_TREE),
                at(FS_TREE),
                at(DEV_TREE),
                at(CSUM_TREE),
            ],
        })
    };
    for &at in std::iter::once(&SUPER_OFFSET).chain(&SUPER_MIRRORS) {
        if at + SUPER_SIZE as u64 <= total {
            writes.push(Write {
                offset: at,
                bytes: sb(at),
                is_super: true,
            });
        }
    }
    Ok(writes)
}

/// A key: object id, item type, offset. Items sort by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key(u64, u8, u64);

impl Key {
    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(17);
        b.extend_from_slice(&self.0.to_le_bytes());
        b.push(self.1);
        b.extend_from_slice(&self.2.to_le_bytes());
        b
    }
}

/// A leaf (level 0 tree block) holding `items`, checksummed.
fn leaf(id: &Identity, bytenr: u64, owner: u64, mut items: Vec<(Key, Vec<u8>)>) -> Vec<u8> {
    items.sort_by_key(|(k, _)| *k);
    let mut b = vec![0u8; NODESIZE];
    b[32..48].copy_from_slice(&id.fsid);
    put(&mut b, 48, bytenr);
    put(&mut b, 56, HEADER_FLAG_WRITTEN | MIXED_BACKREF_REV);
    b[64..80].copy_from_slice(&id.chunk_tree_uuid);
    put(&mut b, 80, GENERATION);
    put(&mut b, 88, owner);
    b[96..100].copy_from_slice(&(items.len() as u32).to_le_bytes());
    // Item headers grow from the header; their data from the block's end.
    let mut end = NODESIZE - HEADER;
    for (i, (key, data)) in items.iter().enumerate() {
        end -= data.len();
        let h = HEADER + i * ITEM;
        b[h..h + 17].copy_from_slice(&key.bytes());
        b[h + 17..h + 21].copy_from_slice(&(end as u32).to_le_bytes());
        b[h + 21..h + 25].copy_from_slice(&(data.len() as u32).to_le_bytes());
        b[HEADER + end..HEADER + end + data.len()].copy_from_slice(data);
    }
    let csum = crc32c(&b[32..]);
    b[..4].copy_from_slice(&csum.to_le_bytes());
    b
}

struct Super<'a> {
    bytenr: u64,
    id: &'a Identity,
    total: u64,
    bytes_used: u64,
    root: u64,
    chunk_root: u64,
    dev_item: &'a [u8],
    sys_chunk_array: &'a [u8],
    /// Tree root, chunk, extent, fs, dev and checksum roots, for the first
    /// backup slot.
    roots: [u64; 6],
}

fn superblock(s: &Super) -> Vec<u8> {
    let mut b = vec![0u8; SUPER_SIZE];
    b[32..48].copy_from_slice(&s.id.fsid);
    put(&mut b, 48, s.bytenr);
    put(&mut b, 56, SUPER_FLAG_WRITTEN);
    b[64..72].copy_from_slice(MAGIC);
    put(&mut b, 72, GENERATION);
    put(&mut b, 80, s.root);
    put(&mut b, 88, s.chunk_root);
    put(&mut b, 112, s.total);
    put(&mut b, 120, s.bytes_used);
    put(&mut b, 128, ROOT_TREE_DIR);
    put(&mut b, 136, 1); // num_devices
    b[144..148].copy_from_slice(&SECTORSIZE.to_le_bytes());
    b[148..152].copy_from_slice(&(NODESIZE as u32).to_le_bytes());
    b[152..156].copy_from_slice(&(NODESIZE as u32).to_le_bytes()); // leafsize
    b[156..160].copy_from_slice(&SECTORSIZE.to_le_bytes()); // stripesize
    b[160..164].copy_from_slice(&(s.sys_chunk_array.len() as u32).to_le_bytes());
    put(&mut b, 164, GENERATION); // chunk_root_generation
    put(&mut b, 180, COMPAT_RO_FREE_SPACE_TREE);
    put(&mut b, 188, INCOMPAT);
    // csum_type 0 (crc32c) and root levels 0 stay zero.
    b[201..201 + s.dev_item.len()].copy_from_slice(s.dev_item);
    b[299..299 + s.id.label.len()].copy_from_slice(s.id.label.as_bytes());
    put(&mut b, 563, GENERATION); // uuid_tree_generation: the UUID tree is whole
    b[571..587].copy_from_slice(&s.id.fsid); // metadata_uuid
    b[0x32b..0x32b + s.sys_chunk_array.len()].copy_from_slice(s.sys_chunk_array);
    // Backup root 0: each root and its generation, sizes, device count.
    let backup = 0xb2b;
    for (i, &root) in s.roots.iter().enumerate() {
        put(&mut b, backup + i * 16, root);
        put(&mut b, backup + i * 16 + 8, GENERATION);
    }
    put(&mut b, backup + 96, s.total);
    put(&mut b, backup + 104, s.bytes_used);
    put(&mut b, backup + 112, 1);
    let csum = crc32c(&b[32..]);
    b[..4].copy_from_slice(&csum.to_le_bytes());
    b
}

fn dev_item(total: u64, bytes_used: u64, id: &Identity) -> Vec<u8> {
    let mut b = Vec::with_capacity(98);
    b.extend_from_slice(&1u64.to_le_bytes()); // devid
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(&bytes_used.to_le_bytes());
    for _ in 0..3 {
        b.extend_from_slice(&SECTORSIZE.to_le_bytes()); // io_align, io_width, sector_size
    }
    b.extend_from_slice(&[0; 8 + 8 + 8 + 4 + 1 + 1]); // type, generation, start_offset, group, seek, bandwidth
    b.extend_from_slice(&id.dev_uuid);
    b.extend_from_slice(&id.fsid);
    b
}

fn chunk(
    len: u64,
    flags: u64,
    align: u32,
    sub_stripes: u16,
    at: u64,
    dev_uuid: &[u8; 16],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(80);
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&EXTENT_TREE.to_le_bytes()); // owner
    b.extend_from_slice(&(64u64 * 1024).to_le_bytes()); // stripe_len
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&align.to_le_bytes()); // io_align
    b.extend_from_slice(&align.to_le_bytes()); // io_width
    b.extend_from_slice(&SECTORSIZE.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // num_stripes
    b.extend_from_slice(&sub_stripes.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // stripe: devid
    b.extend_from_slice(&at.to_le_bytes());
    b.extend_from_slice(dev_uuid);
    b
}

/// A directory's inode item (160 bytes).
fn inode_item(nbytes: u64, time: u64, otime: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(160);
    b.extend_from_slice(&GENERATION.to_le_bytes());
    b.extend_from_slice(&[0; 8 + 8]); // transid, size
    b.extend_from_slice(&nbytes.to_le_bytes());
    b.extend_from_slice(&[0; 8]); // block_group
    b.extend_from_slice(&1u32.to_le_bytes()); // nlink
    b.extend_from_slice(&[0; 4 + 4]); // uid, gid
    b.extend_from_slice(&DIR_MODE.to_le_bytes());
    b.extend_from_slice(&[0; 8 + 8 + 8 + 32]); // rdev, flags, sequence, reserved
    for t in [time, time, time, otime] {
        b.extend_from_slice(&timespec(t));
    }
    b
}

fn timespec(secs: u64) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&secs.to_le_bytes());
    t
}

fn inode_ref(name: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 8]; // index
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(name);
    b
}

fn dir_item(location: Key, name: &[u8], kind: u8) -> Vec<u8> {
    let mut b = location.bytes();
    b.extend_from_slice(&[0; 8]); // transid
    b.extend_from_slice(&0u16.to_le_bytes()); // data_len
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.push(kind);
    b.extend_from_slice(name);
    b
}

/// A root item (439 bytes) for a one-leaf tree at `bytenr`.
fn root_item(bytenr: u64, dirid: u64, uuid: &[u8; 16], time: u64) -> Vec<u8> {
    // The embedded inode is what mkfs.btrfs writes there: a directory of
    // size 3 (unused by the kernel).
    let mut b = inode_item(NODESIZE as u64, 0, 0);
    b[16..24].copy_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(&GENERATION.to_le_bytes());
    b.extend_from_slice(&dirid.to_le_bytes());
    b.extend_from_slice(&bytenr.to_le_bytes());
    b.extend_from_slice(&[0; 8]); // byte_limit
    b.extend_from_slice(&(NODESIZE as u64).to_le_bytes()); // bytes_used
    b.extend_from_slice(&[0; 8 + 8]); // last_snapshot, flags
    b.extend_from_slice(&1u32.to_le_bytes()); // refs
    b.extend_from_slice(&[0; 17 + 1 + 1]); // drop_progress, drop_level, level
    b.extend_from_slice(&GENERATION.to_le_bytes()); // generation_v2
    b.extend_from_slice(uuid);
    b.extend_from_slice(&[0; 16 + 16 + 8 * 4]); // parent, received uuid; transids
    b.extend_from_slice(&timespec(time)); // ctime
    b.extend_from_slice(&timespec(time)); // otime
    b.extend_from_slice(&[0; 12 + 12 + 64]); // stime, rtime, reserved
    b
}

/// A skinny extent item for a tree block of `owner` with its one backref.
fn tree_block_extent(owner: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(33);
    b.extend_from_slice(&1u64.to_le_bytes()); // refs
    b.extend_from_slice(&GENERATION.to_le_bytes());
    b.extend_from_slice(&EXTENT_FLAG_TREE_BLOCK.to_le_bytes());
    b.push(TREE_BLOCK_REF);
    b.extend_from_slice(&owner.to_le_bytes());
    b
}

fn block_group(used: u64, flags: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&used.to_le_bytes());
    b.extend_from_slice(&FIRST_CHUNK_TREE.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b
}

fn dev_extent(start: u64, len: u64, chunk_tree_uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = Vec::with_capacity(48);
    b.extend_from_slice(&CHUNK_TREE.to_le_bytes());
    b.extend_from_slice(&FIRST_CHUNK_TREE.to_le_bytes());
    b.extend_from_slice(&start.to_le_bytes()); // chunk offset (identity-mapped)
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(chunk_tree_uuid);
    b
}

fn free_space_info(extents: u32) -> Vec<u8> {
    let mut b = extents.to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes()); // flags: extents, not bitmaps
    b
}

/// The free ranges (start, length) of `[start, start + len)` around the
/// tree blocks at `used` (sorted, each NODESIZE long).
fn free_ranges(start: u64, len: u64, used: &[u64]) -> Vec<(u64, u64)> {
    let mut free = Vec::new();
    let mut at = start;
    for &b in used {
        if b > at {
            free.push((at, b - at));
        }
        at = b + NODESIZE as u64;
    }
    if at < start + len {
        free.push((at, start + len - at));
    }
    free
}

fn put(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// btrfs's directory name hash: CRC-32C seeded with !1, not inverted.
fn name_hash(name: &[u8]) -> u32 {
    crc32c_raw(!1, name)
}

/// CRC-32C (Castagnoli) as btrfs checksums blocks with it.
fn crc32c(data: &[u8]) -> u32 {
    !crc32c_raw(!0, data)
}

fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    data.iter().fold(seed, |c, &b| {
        TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            label: "zn-test".into(),
            fsid: [0x11; 16],
            dev_uuid: [0x22; 16],
            chunk_tree_uuid: [0x33; 16],
            fs_tree_uuid: [0x44; 16],
            now: 1_700_000_000,
        }
    }

    #[test]
    fn crc32c_and_the_name_hash_match_btrfs() {
        // The standard check value, and mkfs.btrfs's key for "default".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(name_hash(b"default"), 2_378_154_706);
    }

    #[test]
    fn the_encoded_structures_have_the_kernels_sizes() {
        let id = identity();
        assert_eq!(dev_item(1 << 30, 0, &id).len(), 98);
        assert_eq!(chunk(1, BG_DATA, 1, 1, 0, &id.dev_uuid).len(), 80);
        assert_eq!(inode_item(0, 0, 0).len(), 160);
        assert_eq!(root_item(0, 0, &[0; 16], 0).len(), 439);
        assert_eq!(tree_block_extent(1).len(), 33);
        assert_eq!(dev_extent(0, 0, &[0; 16]).len(), 48);
        assert_eq!(dir_item(Key(5, ROOT_ITEM, 0), b"default", FT_DIR).len(), 37);
    }

    #[test]
    fn free_ranges_skip_the_tree_blocks() {
        let n = NODESIZE as u64;
        assert_eq!(free_ranges(0, 10 * n, &[0, n]), vec![(2 * n, 8 * n)]);
        assert_eq!(
            free_ranges(0, 10 * n, &[3 * n]),
            vec![(0, 3 * n), (4 * n, 6 * n)]
        );
        assert_eq!(free_ranges(0, 4 * n, &[]), vec![(0, 4 * n)]);
    }

    #[test]
    fn too_small_a_device_or_a_bad_label_is_refused() {
        let err = layout(MIN_BYTES - 1, &identity()).unwrap_err();
        assert!(err.contains("too small"), "{err}");
        let mut id = identity();
        id.label = "x".repeat(256);
        assert!(layout(1 << 30, &id).unwrap_err().contains("255 bytes"));
    }

    #[test]
    fn the_superblock_is_checksummed_and_names_the_trees() {
        let w = layout(1 << 30, &identity()).unwrap();
        let supers: Vec<&Write> = w.iter().filter(|w| w.is_super).collect();
        assert_eq!(supers[0].offset, SUPER_OFFSET);
        let sb = &supers[0].bytes;
        assert_eq!(&sb[64..72], MAGIC);
        assert_eq!(le_u64(&sb[..8]) as u32, crc32c(&sb[32..]));
        assert_eq!(le_u64(&sb[80..]), METADATA.0, "root tree");
        assert_eq!(le_u64(&sb[88..]), SYSTEM.0, "chunk tree");
        assert_eq!(&sb[299..306], b"zn-test");
        // A 1 GiB device has the 64 MiB copy, not the 256 GiB one; each
        // copy names its own place.
        let at: Vec<u64> = supers.iter().map(|w| w.offset).collect();
        assert_eq!(at, vec![SUPER_OFFSET, 64 * MIB]);
        assert_eq!(le_u64(&supers[1].bytes[48..]), 64 * MIB);
    }

    /// mkfs.btrfs's own checker (btrfs-progs, which scripts/test installs)
    /// finds nothing wrong with the format: every tree, the free space
    /// tree against the extent tree, the device extents against the chunks.
    #[test]
    fn btrfs_check_accepts_the_format() {
        let dir = tempfile::tempdir().unwrap();
        for size in [MIN_BYTES, 256 * MIB, 300 << 30] {
            let img = dir.path().join("disk.img");
            let f = std::fs::File::create(&img).unwrap();
            f.set_len(size).unwrap();
            drop(f);
            format(&img, size, &identity()).unwrap();
            let out = std::process::Command::new("btrfs")
                .args(["check", "--readonly"])
                .arg(&img)
                .output()
                .expect("btrfs (btrfs-progs) runs");
            assert!(
                out.status.success(),
                "size {size}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let err = format(&img, size, &identity()).unwrap_err().to_string();
            assert!(err.contains("not blank"), "{err}");
        }
    }
}
