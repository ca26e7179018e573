//! Initramfs compression. Both encoders are deterministic at a fixed level
//! (single-threaded zstd, gzip with a zero mtime and no file name), so the
//! bytes depend only on the input.
//!
//! Which one the image uses is declared in image/zeronode.toml, with the
//! TCG measurements behind the choice: the kernel decompresses in emulated
//! code, and the bulk of our initramfs is the squashfs, compressed already.

use std::io::Write;

use crate::config::Compression;

/// zstd level: 19 is the best ratio before the "ultra" levels, whose larger
/// windows the kernel's decompressor may refuse.
const ZSTD_LEVEL: i32 = 19;

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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips_and_is_reproducible() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for how in [Compression::None, Compression::Gzip, Compression::Zstd] {
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
            };
            assert_eq!(back, data, "{how:?}");
        }
    }
}
