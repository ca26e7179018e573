//! The unified kernel image: systemd's EFI stub with the os-release, the
//! command line, the kernel and the initramfs added as PE sections (by
//! objcopy) at section-aligned addresses after the stub's own, so UEFI
//! firmware boots the whole node from one file.

use std::path::Path;
use std::process::Command;

use goblin::pe::PE;

use crate::error::{io, run, Error, Result};

pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The stub's image base, section alignment and the end of its last
/// section (relative virtual address), from its PE headers.
pub fn stub_layout(stub: &[u8], path: &Path) -> Result<(u64, u64, u64)> {
    let bad = |reason: String| Error::Stub {
        path: path.to_path_buf(),
        reason,
    };
    let pe = PE::parse(stub).map_err(|e| bad(e.to_string()))?;
    if !pe.is_64 {
        return Err(bad("not a PE32+ (64-bit) image".into()));
    }
    let opt = pe
        .header
        .optional_header
        .ok_or_else(|| bad("no optional header".into()))?;
    let align = u64::from(opt.windows_fields.section_alignment).max(4096);
    let end = pe
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size))
        .max()
        .ok_or_else(|| bad("no sections".into()))?;
    Ok((opt.windows_fields.image_base, align, end))
}

/// Writes `out` from the stub plus the given files; its PE timestamp is
/// `epoch`.
pub fn build(
    out: &Path,
    osrel: &Path,
    cmdline: &Path,
    kernel: &Path,
    initrd: &Path,
    epoch: u32,
) -> Result<()> {
    let stub_path = Path::new(STUB);
    let stub = std::fs::read(stub_path).map_err(io(
        "reading the EFI stub (Debian package systemd-boot-efi)",
        stub_path,
    ))?;
    let (base, align, mut next) = stub_layout(&stub, stub_path)?;
    let mut cmd = Command::new("objcopy");
    for (name, file) in [
        (".osrel", osrel),
        (".cmdline", cmdline),
        (".linux", kernel),
        (".initrd", initrd),
    ] {
        next = next.div_ceil(align) * align;
        let len = std::fs::metadata(file).map_err(io("reading", file))?.len();
        cmd.arg("--add-section")
            .arg(format!("{name}={}", file.display()));
        cmd.arg("--change-section-vma")
            .arg(format!("{name}={:#x}", base + next));
        next += len;
    }
    cmd.arg(stub_path).arg(out);
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
    run(&mut cmd)?;
    // objcopy stamps the PE header with the time of day (and a checksum over
    // it): pin both, whatever the binutils version does with the variable.
    let mut bytes = std::fs::read(out).map_err(io("reading", out))?;
    pin_timestamp(&mut bytes, epoch).map_err(|reason| Error::Stub {
        path: out.to_path_buf(),
        reason,
    })?;
    std::fs::write(out, bytes).map_err(io("writing", out))
}

/// Sets the COFF TimeDateStamp to `epoch` and recomputes the optional
/// header's CheckSum (the PE algorithm: 16-bit one's-complement-style sum
/// with the field itself counted as zero, plus the file length).
pub fn pin_timestamp(pe: &mut [u8], epoch: u32) -> std::result::Result<(), String> {
    let lfanew = pe
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("no DOS header")?;
    if pe.get(lfanew..lfanew + 4) != Some(b"PE\0\0") {
        return Err("no PE signature".into());
    }
    let stamp = lfanew + 8;
    let checksum = lfanew + 24 + 64;
    if pe.len() < checksum + 4 {
        return Err("truncated PE header".into());
    }
    pe[stamp..stamp + 4].copy_from_slice(&epoch.to_le_bytes());
    pe[checksum..checksum + 4].fill(0);
    let mut sum: u64 = 0;
    for chunk in pe.chunks(2) {
        let word = u64::from(chunk[0]) | u64::from(chunk.get(1).copied().unwrap_or(0)) << 8;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    let total = u32::try_from(sum + pe.len() as u64).map_err(|_| "PE over 4 GiB")?;
    pe[checksum..checksum + 4].copy_from_slice(&total.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debians_stub_has_a_layout() {
        let stub = std::fs::read(STUB).expect("systemd-boot-efi is installed");
        let (_base, align, end) = stub_layout(&stub, Path::new(STUB)).unwrap();
        assert!(align >= 4096 && align.is_power_of_two());
        assert!(end > 0x1000, "{end:#x}");
        let err = stub_layout(b"MZ not a PE", Path::new("x.efi"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.efi: not a usable EFI stub"), "{err}");
    }

    /// Two builds a second apart give the same bytes, and objdump reads the
    /// pinned timestamp back.
    #[test]
    fn reproducible_uki() {
        let dir = tempfile::tempdir().unwrap();
        let f = |name: &str, body: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let (osrel, cmdline) = (f("osrel", b"ID=zeronode\n"), f("cmdline", b"console=ttyS0"));
        let (kernel, initrd) = (f("kernel", &[0x90; 5000]), f("initrd", &[7; 3000]));
        let (a, b) = (dir.path().join("a.efi"), dir.path().join("b.efi"));
        build(&a, &osrel, &cmdline, &kernel, &initrd, 86400).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        build(&b, &osrel, &cmdline, &kernel, &initrd, 86400).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
        let out = std::process::Command::new("objdump")
            .arg("-h")
            .arg("-p")
            .arg(&a)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Jan  2 00:00:00 1970"), "{text}");
        for s in [".osrel", ".cmdline", ".linux", ".initrd"] {
            assert!(text.contains(s), "{s} missing: {text}");
        }
    }
}
