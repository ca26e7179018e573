//! What a disk holds, read from its first and last MiB: nothing (blank), a
//! ZeroNode pool, or something else that we name and leave alone.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{io, Result};

pub const MIB: u64 = 1 << 20;
/// A pool's btrfs label starts with this; see [`pool_label`].
pub const POOL_LABEL_PREFIX: &str = "zn-";
/// btrfs keeps superblock copies at 64 KiB (primary), 64 MiB and 256 GiB.
const BTRFS_SUPER: u64 = 64 << 10;
const BTRFS_MIRRORS: [u64; 2] = [64 << 20, 256 << 30];
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";
/// The EFI system partition's type GUID, C12A7328-F81F-11D2-BA4B-00A0C93EC93B,
/// as GPT stores it (first three fields little-endian).
const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// First and last MiB all zero (and no btrfs superblock copy).
    Blank,
    /// A single-device btrfs labelled `zn-...`.
    Pool { label: String },
    /// Anything else; `what` names the first signature seen.
    Foreign { what: String, boot_medium: bool },
}

/// The label a new pool gets: `zn-` and the first 8 hex digits of the
/// filesystem UUID given to mkfs.
pub fn pool_label(uuid: &[u8; 16]) -> String {
    format!(
        "{POOL_LABEL_PREFIX}{:02x}{:02x}{:02x}{:02x}",
        uuid[0], uuid[1], uuid[2], uuid[3]
    )
}

/// Whether a btrfs label marks a ZeroNode pool: `zn-` then 1 to 32 of
/// `[0-9a-z-]` (so it is a safe directory name under the mount root).
pub fn is_pool_label(label: &str) -> bool {
    match label.strip_prefix(POOL_LABEL_PREFIX) {
        Some(rest) => {
            !rest.is_empty()
                && rest.len() <= 32
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
        }
        None => false,
    }
}

/// Reads what `dev` (`size` bytes) holds.
pub fn probe(dev: &Path, size: u64) -> Result<Content> {
    let file = File::open(dev).map_err(io(dev, "opening to read its signatures"))?;
    let read = |offset: u64, len: u64| -> Result<Vec<u8>> {
        let len = len.min(size.saturating_sub(offset));
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(io(dev, "reading its signatures"))?;
        Ok(buf)
    };
    let head = read(0, MIB)?;
    let tail_start = size.saturating_sub(MIB);
    let tail = read(tail_start, MIB)?;
    let mut mirrors = Vec::new();
    for at in BTRFS_MIRRORS {
        if at + 4096 <= size {
            mirrors.push((at, read(at, 4096)?));
        }
    }
    Ok(classify(&head, &tail, size, &mirrors))
}

/// Whether every byte is 0, a machine word at a time: the blank-disk test
/// reads 2 MiB a disk on the way to ready, and byte by byte that was ~1.4%
/// of the CPU from the first service to ready (a profile under TCG).
fn all_zero(b: &[u8]) -> bool {
    let words = b.chunks_exact(8);
    let rest = words.remainder();
    let mut acc = 0u64;
    for (i, w) in words.enumerate() {
        acc |= u64::from_ne_bytes(w.try_into().unwrap_or([1; 8]));
        // Tested once a 4 KiB block: a disk with data still stops early.
        if i % 512 == 511 && acc != 0 {
            return false;
        }
    }
    acc == 0 && rest.iter().all(|&x| x == 0)
}

/// The decision itself, on bytes already read: `head` is the first MiB,
/// `tail` the last, `mirrors` the btrfs superblock copies' places.
pub fn classify(head: &[u8], tail: &[u8], size: u64, mirrors: &[(u64, Vec<u8>)]) -> Content {
    if all_zero(head) && all_zero(tail) && mirrors.iter().all(|(_, m)| all_zero(m)) {
        return Content::Blank;
    }
    if let Some(label) = btrfs_label(head) {
        let devices = le_u64(head, BTRFS_SUPER as usize + 0x88).unwrap_or(0);
        if is_pool_label(&label) && devices == 1 {
            return Content::Pool { label };
        }
        let what = if devices > 1 {
            format!("btrfs filesystem (label {label:?}, member of {devices} devices)")
        } else {
            format!("btrfs filesystem (label {label:?})")
        };
        return foreign(what);
    }
    if let Some(esp) = gpt(head) {
        return Content::Foreign {
            what: if esp {
                "GPT partition table with an EFI system partition".into()
            } else {
                "GPT partition table".into()
            },
            boot_medium: esp,
        };
    }
    if let Some(what) = filesystem(head) {
        return foreign(what);
    }
    if at(head, 510, b"\x55\xaa") && head[446..510].iter().any(|&b| b != 0) {
        return foreign("MBR partition table".into());
    }
    if let Some(what) = tail_signature(tail, size) {
        return foreign(what);
    }
    for (offset, m) in mirrors {
        if at(m, 0x40, BTRFS_MAGIC) {
            return foreign(format!(
                "btrfs superblock copy at {} MiB (primary erased)",
                offset >> 20
            ));
        }
    }
    let place = if !all_zero(head) {
        "the first MiB"
    } else if !all_zero(tail) {
        "the last MiB"
    } else {
        "a btrfs superblock copy's place"
    };
    foreign(format!("data without a known signature in {place}"))
}

fn foreign(what: String) -> Content {
    Content::Foreign {
        what,
        boot_medium: false,
    }
}

fn at(buf: &[u8], offset: usize, magic: &[u8]) -> bool {
    buf.get(offset..offset + magic.len()) == Some(magic)
}

fn le_u16(buf: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        buf.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

fn le_u32(buf: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        buf.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn le_u64(buf: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        buf.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

fn c_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The label of the btrfs whose primary superblock `head` holds.
pub fn btrfs_label(head: &[u8]) -> Option<String> {
    let sb = BTRFS_SUPER as usize;
    if !at(head, sb + 0x40, BTRFS_MAGIC) {
        return None;
    }
    Some(c_string(head.get(sb + 0x12b..sb + 0x12b + 256)?))
}

/// A GPT header at LBA 1 (512- or 4096-byte sectors): Some(has an ESP).
fn gpt(head: &[u8]) -> Option<bool> {
    for sector in [512usize, 4096] {
        if !at(head, sector, b"EFI PART") {
            continue;
        }
        let entries_lba = le_u64(head, sector + 72)? as usize;
        let count = le_u32(head, sector + 80)? as usize;
        let entry_size = le_u32(head, sector + 84)? as usize;
        let mut esp = false;
        if entry_size >= 128 {
            for i in 0..count.min(256) {
                let start = entries_lba * sector + i * entry_size;
                match head.get(start..start + 16) {
                    Some(t) if t == ESP_TYPE => esp = true,
                    Some(_) => {}
                    None => break,
                }
            }
        }
        return Some(esp);
    }
    None
}

/// Filesystem and volume signatures in the first MiB.
fn filesystem(head: &[u8]) -> Option<String> {
    if le_u16(head, 1024 + 0x38) == Some(0xef53) {
        let compat = le_u32(head, 1024 + 0x5c).unwrap_or(0);
        let incompat = le_u32(head, 1024 + 0x60).unwrap_or(0);
        let kind = if incompat & (0x40 | 0x80 | 0x200) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        let label = c_string(&head[1024 + 0x78..1024 + 0x88]);
        return Some(if label.is_empty() {
            format!("{kind} filesystem")
        } else {
            format!("{kind} filesystem (label {label:?})")
        });
    }
    let sigs: [(usize, &[u8], &str); 10] = [
        (0, b"XFSB", "XFS filesystem"),
        (0, b"LUKS\xba\xbe", "LUKS encrypted volume"),
        (0, b"SKUL\xba\xbe", "LUKS2 encrypted volume"),
        (3, b"NTFS    ", "NTFS filesystem"),
        (4086, b"SWAPSPACE2", "Linux swap"),
        (4086, b"SWAP-SPACE", "Linux swap"),
        (0x8001, b"CD001", "ISO 9660 filesystem"),
        (4096, b"\xfc\x4e\x2b\xa9", "Linux RAID member (md 1.2)"),
        (0, b"\xfc\x4e\x2b\xa9", "Linux RAID member (md 1.1)"),
        (0x52, b"FAT32   ", "FAT32 filesystem"),
    ];
    for (offset, magic, what) in sigs {
        if at(head, offset, magic) {
            return Some(what.into());
        }
    }
    if at(head, 0x36, b"FAT1") && at(head, 510, b"\x55\xaa") {
        return Some("FAT filesystem".into());
    }
    for sector in 0..4 {
        if at(head, sector * 512, b"LABELONE") {
            return Some("LVM2 physical volume".into());
        }
    }
    // ZFS: uberblocks (magic 0x00bab10c) fill 128..256 KiB of label 0.
    for ub in (128 << 10..256 << 10).step_by(1024) {
        if le_u64(head, ub) == Some(0x00ba_b10c) {
            return Some("ZFS pool member".into());
        }
    }
    None
}

/// Signatures kept at the end of a disk.
fn tail_signature(tail: &[u8], size: u64) -> Option<String> {
    let tail_start = size.saturating_sub(tail.len() as u64);
    let rel = |abs: u64| abs.checked_sub(tail_start).map(|r| r as usize);
    if let Some(r) = rel(size.saturating_sub(512)) {
        if at(tail, r, b"EFI PART") {
            return Some("GPT backup header (primary erased)".into());
        }
    }
    // md 0.90 at the last 64 KiB-aligned 64 KiB; md 1.0 at 8 KiB from the end.
    let md090 = (size & !0xffff).saturating_sub(64 << 10);
    let md10 = (size.saturating_sub(8 << 10)) & !0xfff;
    for (abs, what) in [
        (md090, "Linux RAID member (md 0.90)"),
        (md10, "Linux RAID member (md 1.0)"),
    ] {
        if let Some(r) = rel(abs) {
            if at(tail, r, b"\xfc\x4e\x2b\xa9") {
                return Some(what.into());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_test_sees_any_set_byte() {
        for len in [0, 1, 7, 8, 9, 4095, 4096, 4097, 3 * 4096 + 5] {
            let mut b = vec![0u8; len];
            assert!(all_zero(&b), "{len} zero bytes");
            for at in [0, len / 2, len.saturating_sub(1)] {
                if at < len {
                    b[at] = 0x80;
                    assert!(!all_zero(&b), "byte {at} of {len}");
                    b[at] = 0;
                }
            }
        }
    }

    const SIZE: u64 = 64 * MIB;

    fn disk() -> (Vec<u8>, Vec<u8>) {
        (vec![0; MIB as usize], vec![0; MIB as usize])
    }

    #[test]
    fn all_zero_is_blank() {
        let (head, tail) = disk();
        assert_eq!(classify(&head, &tail, SIZE, &[]), Content::Blank);
    }

    #[test]
    fn one_byte_anywhere_read_is_not_blank() {
        let (mut head, tail) = disk();
        head[777] = 1;
        assert!(
            matches!(classify(&head, &tail, SIZE, &[]), Content::Foreign { what, .. } if what.contains("first MiB"))
        );
        let (head, mut tail) = disk();
        tail[MIB as usize - 1] = 1;
        assert!(
            matches!(classify(&head, &tail, SIZE, &[]), Content::Foreign { what, .. } if what.contains("last MiB"))
        );
        let (head, tail) = disk();
        let mut m = vec![0u8; 4096];
        m[0x40..0x48].copy_from_slice(BTRFS_MAGIC);
        assert!(matches!(
            classify(&head, &tail, 1 << 30, &[(64 << 20, m)]),
            Content::Foreign { what, .. } if what.contains("copy at 64 MiB")
        ));
    }

    fn btrfs(label: &str, devices: u64) -> Vec<u8> {
        let (mut head, _) = disk();
        let sb = BTRFS_SUPER as usize;
        head[sb + 0x40..sb + 0x48].copy_from_slice(BTRFS_MAGIC);
        head[sb + 0x88..sb + 0x90].copy_from_slice(&devices.to_le_bytes());
        head[sb + 0x12b..sb + 0x12b + label.len()].copy_from_slice(label.as_bytes());
        head
    }

    #[test]
    fn pools_are_single_device_btrfs_with_our_label() {
        let tail = vec![0; MIB as usize];
        assert_eq!(
            classify(&btrfs("zn-0a1b2c3d", 1), &tail, SIZE, &[]),
            Content::Pool {
                label: "zn-0a1b2c3d".into()
            }
        );
        for (label, devices) in [("zn-0a1b2c3d", 2), ("data", 1), ("zn-", 1), ("zn-../x", 1)] {
            assert!(
                matches!(classify(&btrfs(label, devices), &tail, SIZE, &[]), Content::Foreign { what, .. } if what.starts_with("btrfs")),
                "{label} {devices}"
            );
        }
    }

    #[test]
    fn labels() {
        assert_eq!(
            pool_label(&[0xab, 0x01, 0x2c, 0xff, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]),
            "zn-ab012cff"
        );
        assert!(is_pool_label("zn-ab012cff"));
        assert!(!is_pool_label("zn-AB"));
        assert!(!is_pool_label("zn-a/b"));
    }

    #[test]
    fn ext4_and_gpt_esp() {
        let (mut head, tail) = disk();
        head[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        head[1024 + 0x60] = 0x40;
        head[1024 + 0x78..1024 + 0x7c].copy_from_slice(b"home");
        assert_eq!(
            classify(&head, &tail, SIZE, &[]),
            Content::Foreign {
                what: "ext4 filesystem (label \"home\")".into(),
                boot_medium: false
            }
        );
        let (mut head, tail) = disk();
        head[510] = 0x55;
        head[511] = 0xaa;
        head[446 + 4] = 0xee;
        head[512..520].copy_from_slice(b"EFI PART");
        head[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        head[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        head[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        head[1024 + 128..1024 + 144].copy_from_slice(&ESP_TYPE);
        assert_eq!(
            classify(&head, &tail, SIZE, &[]),
            Content::Foreign {
                what: "GPT partition table with an EFI system partition".into(),
                boot_medium: true
            }
        );
    }
}
