//! The kernel as an ELF file (`vmlinux`) for QEMU's direct boot. QEMU
//! starts an ELF kernel at its PVH entry point, already in place: the
//! bzImage's own decompressor (XZ for Debian, in emulated code) is skipped,
//! about 5 s of every boot under TCG and far more in a VM nested in a TCG
//! node. Same kernel, same bytes once running: only its wrapping differs.
//! Hardware, UEFI and PXE boot the bzImage (`vmlinuz`).

use std::io::Read;

use goblin::elf::Elf;

use crate::error::{Error, Result};

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit entry QEMU's PVH boot jumps to.
const PHYS32_ENTRY: u32 = 18;

/// The ELF kernel inside the bzImage `image`, checked to have a PVH entry.
pub fn vmlinux(image: &[u8]) -> Result<Vec<u8>> {
    let payload = payload(image)?;
    let elf = decompress(payload)?;
    check_pvh(&elf)?;
    Ok(elf)
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Kernel {
        reason: reason.into(),
    }
}

/// The compressed kernel, located by the boot protocol's setup header
/// (Documentation/arch/x86/boot.rst: `payload_offset` / `payload_length`,
/// protocol 2.08 and later).
fn payload(image: &[u8]) -> Result<&[u8]> {
    let u16_at = |at: usize| {
        image
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        image
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("not a bzImage: no HdrS setup header at 0x202"));
    }
    let version = u16_at(0x206).unwrap_or(0);
    if version < 0x208 {
        return Err(bad(format!(
            "boot protocol {version:#x} has no payload fields (needs 2.08)"
        )));
    }
    let setup_sects = match image.get(0x1f1) {
        Some(0) | None => 4,
        Some(&n) => usize::from(n),
    };
    let (offset, length) = match (u32_at(0x248), u32_at(0x24c)) {
        (Some(o), Some(l)) => (o, l),
        _ => return Err(bad("setup header cut short")),
    };
    let start = (setup_sects + 1) * 512 + offset;
    image.get(start..start + length).ok_or_else(|| {
        bad(format!(
            "payload {start}+{length} beyond the file's {} bytes",
            image.len()
        ))
    })
}

fn decompress(payload: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let read = if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        // One stream: the 4 bytes after it are the kernel's size, not padding.
        liblzma::read::XzDecoder::new(payload).read_to_end(&mut out)
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(payload).read_to_end(&mut out)
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(payload)
            .and_then(|d| d.single_frame().read_to_end(&mut out))
    } else {
        let magic: Vec<String> = payload.iter().take(6).map(|b| format!("{b:02x}")).collect();
        return Err(bad(format!(
            "payload compressed in a way not read here (magic {}): xz, gzip and zstd are",
            magic.join(" ")
        )));
    };
    read.map_err(|e| bad(format!("decompressing the payload: {e}")))?;
    Ok(out)
}

fn check_pvh(elf: &[u8]) -> Result<()> {
    let parsed =
        Elf::parse(elf).map_err(|e| bad(format!("the payload is not an ELF kernel: {e}")))?;
    let has_entry = parsed
        .iter_note_headers(elf)
        .into_iter()
        .flatten()
        .filter_map(|n| n.ok())
        .any(|n| n.name == "Xen" && n.n_type == PHYS32_ENTRY);
    if has_entry {
        Ok(())
    } else {
        Err(bad("the ELF kernel has no PVH entry note (CONFIG_PVH)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage frame around `payload`: setup header, one setup sector.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&[0u8; 16]);
        img.extend_from_slice(payload);
        img.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        img
    }

    fn reason(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn finds_and_unpacks_the_payload() {
        let elf = b"\x7fELF and the rest of a kernel".to_vec();
        let gz = crate::compress::compress(&elf, crate::config::Compression::Gzip).unwrap();
        let img = bzimage(&gz);
        assert_eq!(decompress(payload(&img).unwrap()).unwrap(), elf);
        let zst = crate::compress::compress(&elf, crate::config::Compression::Zstd).unwrap();
        assert_eq!(decompress(payload(&bzimage(&zst)).unwrap()).unwrap(), elf);
    }

    #[test]
    fn refuses_what_is_not_a_pvh_kernel() {
        assert!(reason(vmlinux(b"MZ not a kernel").unwrap_err()).contains("no HdrS"));
        let mut old = bzimage(b"x");
        old[0x206..0x208].copy_from_slice(&0x206u16.to_le_bytes());
        assert!(reason(vmlinux(&old).unwrap_err()).contains("2.08"));
        let mut short = bzimage(b"payload");
        short.truncate(short.len() - 8);
        assert!(reason(vmlinux(&short).unwrap_err()).contains("beyond the file"));
        assert!(reason(vmlinux(&bzimage(b"BZh91AY")).unwrap_err()).contains("magic 42 5a"));
        let gz = crate::compress::compress(b"not elf", crate::config::Compression::Gzip).unwrap();
        assert!(reason(vmlinux(&bzimage(&gz)).unwrap_err()).contains("not an ELF kernel"));
    }
}
