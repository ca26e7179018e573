//! The unified kernel image: systemd's EFI stub with the kernel, initramfs,
//! command line and os-release added as PE sections, so UEFI firmware boots
//! the whole node from one file.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::kernel::run;

pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Where the stub's last section ends (relative virtual address), and the
/// image base, read from its PE headers.
fn stub_layout(stub: &[u8]) -> Result<(u64, u64, u64)> {
    let u16_at = |o: usize| stub.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        stub.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let pe = u32_at(0x3c).context("stub: no DOS header")? as usize;
    if stub.get(pe..pe + 4) != Some(b"PE\0\0") {
        bail!("stub: no PE signature");
    }
    let coff = pe + 4;
    let sections = u16_at(coff + 2).context("stub: short COFF header")? as usize;
    let opt_size = u16_at(coff + 16).context("stub: short COFF header")? as usize;
    let opt = coff + 20;
    if u16_at(opt) != Some(0x20b) {
        bail!("stub: not a PE32+ image");
    }
    let image_base = stub
        .get(opt + 24..opt + 32)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .context("stub: short optional header")?;
    let align = u32_at(opt + 32).context("stub: short optional header")? as u64;
    let mut end = 0u64;
    for i in 0..sections {
        let s = opt + opt_size + i * 40;
        let vsize = u32_at(s + 8).context("stub: short section table")? as u64;
        let vaddr = u32_at(s + 12).context("stub: short section table")? as u64;
        end = end.max(vaddr + vsize);
    }
    Ok((image_base, align.max(4096), end))
}

/// Writes `out` from the stub plus the given files, stamped with `epoch`.
pub fn build(
    out: &Path,
    osrel: &Path,
    cmdline: &Path,
    kernel: &Path,
    initrd: &Path,
    epoch: u32,
) -> Result<()> {
    let stub = std::fs::read(STUB)
        .with_context(|| format!("reading {STUB} (Debian package systemd-boot-efi)"))?;
    let (base, align, mut next) = stub_layout(&stub)?;
    let mut cmd = Command::new("objcopy");
    for (name, file) in [
        (".osrel", osrel),
        (".cmdline", cmdline),
        (".linux", kernel),
        (".initrd", initrd),
    ] {
        next = next.div_ceil(align) * align;
        let len = std::fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        cmd.arg("--add-section")
            .arg(format!("{name}={}", file.display()));
        cmd.arg("--change-section-vma")
            .arg(format!("{name}={:#x}", base + next));
        next += len;
    }
    cmd.arg(STUB).arg(out);
    run(&mut cmd)?;
    let mut image = std::fs::read(out).with_context(|| format!("reading {}", out.display()))?;
    set_timestamp(&mut image, epoch)?;
    std::fs::write(out, image).with_context(|| format!("writing {}", out.display()))
}

/// objcopy stamps PE files with the current time (and ignores
/// SOURCE_DATE_EPOCH): put the build's time there and fix the checksum.
pub fn set_timestamp(image: &mut [u8], epoch: u32) -> Result<()> {
    let pe = image
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .context("PE: no DOS header")?;
    let stamp = pe + 8;
    let checksum = pe + 4 + 20 + 64;
    if image.len() < checksum + 4 || image.get(pe..pe + 4) != Some(b"PE\0\0") {
        bail!("PE: headers cut short");
    }
    image[stamp..stamp + 4].copy_from_slice(&epoch.to_le_bytes());
    image[checksum..checksum + 4].fill(0);
    let sum = pe_checksum(image, checksum);
    image[checksum..checksum + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE checksum: 16-bit one's-complement-style sum of the file (the
/// checksum field counted as zero), plus the file's length.
fn pe_checksum(image: &[u8], field: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in image.chunks(2).enumerate() {
        if i * 2 >= field && i * 2 < field + 4 {
            continue;
        }
        let word = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u64;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(image.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_layout_and_timestamp() {
        let Ok(stub) = std::fs::read(STUB) else {
            panic!("{STUB} missing: install systemd-boot-efi");
        };
        let (_base, align, end) = stub_layout(&stub).unwrap();
        assert!(align >= 4096 && end > 0);
        let mut a = stub.clone();
        set_timestamp(&mut a, 1_700_000_000).unwrap();
        let mut b = stub.clone();
        set_timestamp(&mut b, 1_700_000_000).unwrap();
        assert_eq!(a, b);
        let pe = u32::from_le_bytes(a[0x3c..0x40].try_into().unwrap()) as usize;
        assert_eq!(&a[pe + 8..pe + 12], &1_700_000_000u32.to_le_bytes());
        assert!(set_timestamp(&mut [0u8; 16], 0).is_err());
    }
}
