//! The EFI system partition's filesystem: FAT32 written in memory by the
//! `fatfs` crate (built without chrono, so every timestamp is the FAT epoch:
//! raw date and time 0) with a volume id from the content: same files, same bytes.

use std::io::{Cursor, Write};

use crate::error::{Error, Result};

fn fat_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Disk {
        what,
        reason: e.to_string(),
    }
}

/// A FAT32 filesystem holding `files` (path with `/` separators, bytes),
/// sized to fit them.
pub fn image(files: &[(&str, &[u8])], volume_id: u32) -> Result<Vec<u8>> {
    let payload: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    // FAT32 needs at least 65525 clusters; 512-byte clusters keep that
    // minimum (32 MiB) small, and the slack covers FATs and directories.
    let size = (payload + payload / 8 + (40 << 20)).div_ceil(1 << 20) << 20;
    let mut disk = Cursor::new(vec![0u8; size as usize]);
    let opts = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat32)
        .bytes_per_cluster(512)
        .volume_id(volume_id)
        .volume_label(*b"ZERONODE   ");
    fatfs::format_volume(&mut disk, opts).map_err(fat_err("formatting the ESP"))?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .map_err(fat_err("opening the new FAT volume"))?;
        for (path, data) in files {
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let Some((name, dirs)) = parts.split_last() else {
                return Err(Error::Disk {
                    what: "writing the ESP",
                    reason: format!("{path:?} is not a file path"),
                });
            };
            let mut dir = fs.root_dir();
            for d in dirs {
                dir = match dir.open_dir(d) {
                    Ok(existing) => existing,
                    Err(_) => dir
                        .create_dir(d)
                        .map_err(fat_err("creating a directory on the ESP"))?,
                };
            }
            let mut f = dir
                .create_file(name)
                .map_err(fat_err("creating a file on the ESP"))?;
            f.truncate().map_err(fat_err("writing a file on the ESP"))?;
            f.write_all(data)
                .map_err(fat_err("writing a file on the ESP"))?;
        }
        fs.unmount().map_err(fat_err("closing the FAT volume"))?;
    }
    Ok(disk.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn holds_the_files_and_is_reproducible() {
        let efi: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let files: [(&str, &[u8]); 2] = [("EFI/BOOT/BOOTX64.EFI", &efi), ("EFI/BOOT/x.txt", b"hi")];
        let a = image(&files, 7).unwrap();
        assert!(a == image(&files, 7).unwrap(), "two builds differ");
        let mut cur = Cursor::new(a);
        let fs = fatfs::FileSystem::new(&mut cur, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        assert_eq!(fs.volume_id(), 7);
        let mut back = Vec::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, efi);
        let entry = fs
            .root_dir()
            .open_dir("EFI/BOOT")
            .unwrap()
            .iter()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == "BOOTX64.EFI")
            .unwrap();
        // Without a clock the crate stamps the FAT epoch year (raw date 0).
        let m = entry.modified();
        assert_eq!(m.date.year, 1980);
        assert_eq!(entry.created().date.year, 1980);
    }
}
