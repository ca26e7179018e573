//! The USB stick image: a GPT disk (protective MBR, primary and backup
//! headers and entry arrays) with one EFI system partition at 1 MiB. The
//! disk and partition GUIDs are derived from a content seed, so the same
//! ESP gives the same disk.

const SECTOR: u64 = 512;
/// The ESP starts at 1 MiB, as partitioning tools align it.
pub const FIRST_LBA: u64 = 2048;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// GUID text (`XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`) to its on-disk form
/// (first three fields little-endian). For the constants above.
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: Vec<u8> = text
        .split('-')
        .flat_map(|part| {
            (0..part.len())
                .step_by(2)
                .map(move |i| u8::from_str_radix(&part[i..i + 2], 16).unwrap_or(0))
        })
        .collect();
    let mut out = [0u8; 16];
    out[..16.min(hex.len())].copy_from_slice(&hex[..16.min(hex.len())]);
    out[0..4].reverse();
    out[4..6].reverse();
    out[6..8].reverse();
    out
}

/// A random-looking (version 4, variant 1) GUID derived from `seed`.
pub fn derived_guid(seed: &[u8], what: &str) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(what.as_bytes());
    h.update(seed);
    let mut g = [0u8; 16];
    g.copy_from_slice(&h.finalize().as_bytes()[..16]);
    g[7] = (g[7] & 0x0f) | 0x40; // on-disk byte 7 is the high byte of field 3
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// A whole GPT disk with `esp` as partition 1.
pub fn disk(esp: &[u8], seed: &[u8]) -> Vec<u8> {
    let esp_sectors = (esp.len() as u64).div_ceil(SECTOR);
    let last_lba = FIRST_LBA + esp_sectors + ENTRY_SECTORS; // backup header
    let total = last_lba + 1;
    let mut disk = vec![0u8; (total * SECTOR) as usize];

    // Protective MBR: one partition of type 0xEE covering the disk.
    let mbr = &mut disk[446..462];
    mbr[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    mbr[4] = 0xEE;
    mbr[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    mbr[8..12].copy_from_slice(&1u32.to_le_bytes());
    mbr[12..16].copy_from_slice(&u32::try_from(total - 1).unwrap_or(u32::MAX).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;

    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    entries[0..16].copy_from_slice(&guid_bytes(ESP_TYPE));
    entries[16..32].copy_from_slice(&derived_guid(seed, "partition"));
    entries[32..40].copy_from_slice(&FIRST_LBA.to_le_bytes());
    entries[40..48].copy_from_slice(&(FIRST_LBA + esp_sectors - 1).to_le_bytes());
    for (i, unit) in "EFI System Partition".encode_utf16().enumerate() {
        entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    let entries_crc = crc32fast::hash(&entries);
    let disk_guid = derived_guid(seed, "disk");
    let header = |current: u64, backup: u64, entries_lba: u64| -> [u8; 92] {
        let mut h = [0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&(last_lba - ENTRY_SECTORS - 1).to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let at = |lba: u64| (lba * SECTOR) as usize;
    disk[at(1)..at(1) + 92].copy_from_slice(&header(1, last_lba, 2));
    disk[at(2)..at(2) + entries.len()].copy_from_slice(&entries);
    let backup_entries = last_lba - ENTRY_SECTORS;
    disk[at(backup_entries)..at(backup_entries) + entries.len()].copy_from_slice(&entries);
    disk[at(last_lba)..at(last_lba) + 92].copy_from_slice(&header(last_lba, 1, backup_entries));
    disk[at(FIRST_LBA)..at(FIRST_LBA) + esp.len()].copy_from_slice(esp);
    disk
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn sfdisk_reads_the_partition_table() {
        let esp = crate::fat::image(&[("EFI/BOOT/BOOTX64.EFI", b"x")], 1).unwrap();
        let d = disk(&esp, b"seed");
        assert!(d == disk(&esp, b"seed"), "two builds differ");
        assert!(d != disk(&esp, b"other"), "GUIDs ignore the seed");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, &d).unwrap();
        let out = Command::new("sfdisk")
            .arg("--dump")
            .arg(&path)
            .output()
            .expect("sfdisk (util-linux)");
        let dump = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(dump.contains("label: gpt"), "{dump}");
        assert!(
            dump.contains(&format!("start=        {FIRST_LBA}")),
            "{dump}"
        );
        assert!(dump.contains(ESP_TYPE), "{dump}");
        // Both headers valid: sfdisk warns about a bad backup.
        assert!(!stderr.contains("corrupt"), "{stderr}");
        // The partition is the ESP we wrote, byte for byte.
        let start = (FIRST_LBA * SECTOR) as usize;
        assert!(d[start..start + esp.len()] == esp[..]);
    }

    #[test]
    fn guid_layout() {
        let g = guid_bytes(ESP_TYPE);
        assert_eq!(&g[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(&g[8..], &[0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);
        let d = derived_guid(b"s", "disk");
        assert_eq!(d[7] >> 4, 4);
        assert_eq!(d[8] >> 6, 2);
    }
}
