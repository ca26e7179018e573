//! Initramfs compression. Every encoder is deterministic at a fixed level
//! (single-threaded zstd, gzip with a zero mtime and no file name, lz4 in
//! independent blocks), so the bytes depend only on the input.
//!
//! Which one the image uses is declared in image/zeronode.toml, with the
//! TCG measurements behind the choice: the kernel decompresses in emulated
//! code, and the bulk of our initramfs is the squashfs, compressed already.

use std::io::Write;

use crate::config::Compression;
use crate::cpio::{self, Entry};

/// zstd level: 19 is the best ratio before the "ultra" levels, whose larger
/// windows the kernel's decompressor may refuse.
const ZSTD_LEVEL: i32 = 19;

/// lz4 legacy format (lib/decompress_unlz4.c): this magic, then blocks of
/// at most 8 MiB of input, each as its compressed length (u32 LE) and the
/// compressed bytes. The kernel stops at the end of its input or at a zero
/// length, the only end mark an archive after the stream leaves it.
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// lz4's high-compression level 9, liblz4's default for HC.
const LZ4_HC_LEVEL: i32 = 9;

pub fn compress(data: &[u8], how: Compression) -> std::io::Result<Vec<u8>> {
    match how {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut enc = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::best());
            enc.write_all(data)?;
            enc.finish()
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
            // The kernel sizes its buffers from the frame header: say how much.
            enc.set_pledged_src_size(Some(data.len() as u64))?;
            enc.include_contentsize(true)?;
            enc.include_checksum(true)?;
            enc.write_all(data)?;
            enc.finish()
        }
        Compression::Lz4 => {
            let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
            for block in data.chunks(LZ4_LEGACY_BLOCK) {
                let mode = lz4::block::CompressionMode::HIGHCOMPRESSION(LZ4_HC_LEVEL);
                let packed = lz4::block::compress(block, Some(mode), false)?;
                // At most lz4's bound for 8 MiB, well under 4 GiB.
                out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
                out.extend_from_slice(&packed);
            }
            out.extend_from_slice(&0u32.to_le_bytes());
            Ok(out)
        }
    }
}

/// An initramfs: `entries` as one cpio archive compressed `how`, then
/// `stored` as a second archive left uncompressed. The kernel unpacks
/// concatenated archives in turn, each compressed or not; files that are
/// compressed already (the squashfs images) gain nothing from a second
/// pass, and decoding them again cost the kernel's unpack measurable time
/// under TCG, time its request_module() callers wait for.
pub fn initramfs(
    entries: &[Entry],
    stored: &[Entry],
    how: Compression,
    mtime: u32,
) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    cpio::write(&mut raw, entries, mtime)?;
    let mut out = compress(&raw, how)?;
    if !stored.is_empty() {
        // The kernel skips zeros between archives and wants each one's
        // magic on a 4-byte boundary.
        out.resize(out.len().next_multiple_of(4), 0);
        cpio::write(&mut out, stored, mtime)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn stored_files_follow_the_compressed_archive_verbatim() {
        let small = [Entry::file("init", 0o755, b"#!/bin/sh\n".repeat(100))];
        let image: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 253) as u8).collect();
        let stored = [Entry::file("system.img", 0o444, image.clone())];
        let bytes = initramfs(&small, &stored, Compression::Gzip, 1).unwrap();
        assert_eq!(
            bytes,
            initramfs(&small, &stored, Compression::Gzip, 1).unwrap()
        );

        // The first archive is one gzip member holding `init` ...
        let mut rest = &bytes[..];
        let mut first = Vec::new();
        flate2::bufread::GzDecoder::new(&mut rest)
            .read_to_end(&mut first)
            .unwrap();
        let mut expected = Vec::new();
        cpio::write(&mut expected, &small, 1).unwrap();
        assert_eq!(first, expected);
        // ... then zeros up to a 4-byte boundary, where the stored archive
        // starts and holds the image's bytes as they are.
        let at = bytes.len() - rest.len();
        let start = at.next_multiple_of(4);
        assert!(bytes[at..start].iter().all(|&b| b == 0));
        assert_eq!(&bytes[start..start + 6], b"070701");
        let mut second = Vec::new();
        cpio::write(&mut second, &stored, 1).unwrap();
        assert_eq!(&bytes[start..], &second[..]);

        // Nothing stored: the plain compressed archive.
        assert_eq!(
            initramfs(&small, &[], Compression::Gzip, 1).unwrap(),
            compress(&expected, Compression::Gzip).unwrap()
        );
    }

    #[test]
    fn round_trips_and_is_reproducible() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for how in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Lz4,
        ] {
            let a = compress(&data, how).unwrap();
            assert_eq!(a, compress(&data, how).unwrap(), "{how:?} differs");
            let back = match how {
                Compression::None => a.clone(),
                Compression::Gzip => {
                    let mut v = Vec::new();
                    flate2::read::GzDecoder::new(&a[..])
                        .read_to_end(&mut v)
                        .unwrap();
                    v
                }
                Compression::Zstd => zstd::stream::decode_all(&a[..]).unwrap(),
                Compression::Lz4 => unlz4(&a).unwrap(),
            };
            assert_eq!(back, data, "{how:?}");
        }
    }

    /// Reads the lz4 legacy format as the kernel does: blocks until the
    /// input ends or a zero length; returns the data and where it stopped.
    fn unlz4_at(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        (word(0)? == LZ4_LEGACY_MAGIC).then_some(())?;
        let (mut at, mut out) = (4, Vec::new());
        while at < bytes.len() {
            let len = word(at)? as usize;
            if len == 0 {
                break;
            }
            let block = bytes.get(at + 4..at + 4 + len)?;
            let size = Some(LZ4_LEGACY_BLOCK as i32);
            out.extend(lz4::block::decompress(block, size).ok()?);
            at += 4 + len;
        }
        Some((out, at))
    }

    fn unlz4(bytes: &[u8]) -> Option<Vec<u8>> {
        unlz4_at(bytes).map(|(data, _)| data)
    }

    #[test]
    fn lz4_blocks_are_at_most_8_mib_and_the_stored_archive_follows_zeros() {
        // 9 MiB of text-like bytes: two blocks, the second of 1 MiB.
        let big: Vec<u8> = (0..9u32 << 20)
            .map(|i| b"zeronode "[(i % 9) as usize])
            .collect();
        let small = [Entry::file("init", 0o755, big)];
        let stored = [Entry::file("system.img", 0o444, vec![7u8; 1001])];
        let bytes = initramfs(&small, &stored, Compression::Lz4, 1).unwrap();
        let (first, end) = unlz4_at(&bytes).unwrap();
        let mut expected = Vec::new();
        cpio::write(&mut expected, &small, 1).unwrap();
        assert_eq!(first, expected);
        let first_block = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        let second_at = 8 + first_block;
        assert!(second_at < end, "one block only");
        // The kernel's reader stops at a zero length; the stored archive
        // starts on the next 4-byte boundary.
        assert_eq!(&bytes[end..end + 4], &[0; 4]);
        let start = bytes[end..].iter().position(|&b| b != 0).unwrap() + end;
        assert_eq!(start % 4, 0);
        let mut second = Vec::new();
        cpio::write(&mut second, &stored, 1).unwrap();
        assert_eq!(&bytes[start..], &second[..]);
    }
}
