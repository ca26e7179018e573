//! blake3 of a large buffer on every CPU. BLAKE3 is a tree: its subtrees
//! can be hashed apart and merged (the crate's `hazmat` API). Stage 1 hashes
//! the whole system image before trusting it, and under emulation that is
//! a tenth of the boot on one CPU.

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use blake3::CHUNK_LEN;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::num::NonZeroUsize;
use std::path::Path;

/// blake3 of a file or block device, mapped and hashed on every CPU.
pub fn hash_path(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    // A block device's metadata says 0 bytes; its end is its size.
    let len = file.seek(SeekFrom::End(0))? as usize;
    let Some(len) = NonZeroUsize::new(len) else {
        return Ok(*blake3::hash(&[]).as_bytes());
    };
    // SAFETY: a private read-only mapping of a file in the initramfs or of a
    // read-only loop device, which nothing writes while we hash; unmapped
    // below.
    let map = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_PRIVATE,
            &file,
            0,
        )
    }?;
    // SAFETY: the mapping is `len` readable bytes until munmap.
    let data = unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<u8>(), len.get()) };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hash = *hash(data, threads).as_bytes();
    // SAFETY: `data` is not used after this.
    let _ = unsafe { munmap(map, len.get()) };
    Ok(hash)
}

/// Below this, threads cost more than they save.
const PARALLEL_MIN: usize = 1 << 20;

/// Same result as `blake3::hash(data)`, computed on up to `threads` threads.
pub fn hash(data: &[u8], threads: usize) -> blake3::Hash {
    if threads <= 1 || data.len() < PARALLEL_MIN {
        return blake3::hash(data);
    }
    // Pieces small enough to share out evenly, each a subtree of BLAKE3's
    // own tree so that merging them gives the real root.
    let target = data.len().div_ceil(threads * 4).max(CHUNK_LEN);
    let mut pieces = Vec::new();
    split(0, data.len(), target, &mut pieces);
    let cvs = hash_pieces(data, &pieces, threads);
    let (left, right) = (left_len(data.len()), data.len());
    let l = merge(0, left, &pieces, &cvs);
    let r = merge(left, right - left, &pieces, &cvs);
    merge_subtrees_root(&l, &r, Mode::Hash)
}

/// Bytes in the left subtree of a `len`-byte input (`len` > CHUNK_LEN):
/// the largest power-of-two number of whole chunks that leaves some input
/// to the right, as BLAKE3 builds its tree.
fn left_len(len: usize) -> usize {
    let full_chunks = (len - 1) / CHUNK_LEN;
    (1usize << full_chunks.ilog2()) * CHUNK_LEN
}

fn split(offset: usize, len: usize, target: usize, out: &mut Vec<(usize, usize)>) {
    if len <= target || len <= CHUNK_LEN {
        out.push((offset, len));
        return;
    }
    let left = left_len(len);
    split(offset, left, target, out);
    split(offset + left, len - left, target, out);
}

fn hash_pieces(data: &[u8], pieces: &[(usize, usize)], threads: usize) -> Vec<ChainingValue> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut cvs = vec![[0u8; 32]; pieces.len()];
    let slots: Vec<std::sync::Mutex<&mut ChainingValue>> =
        cvs.iter_mut().map(std::sync::Mutex::new).collect();
    let work = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(&(offset, len)) = pieces.get(i) else {
            return;
        };
        let cv = blake3::Hasher::new()
            .set_input_offset(offset as u64)
            .update(&data[offset..offset + len])
            .finalize_non_root();
        if let Ok(mut slot) = slots[i].lock() {
            **slot = cv;
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            if std::thread::Builder::new().spawn_scoped(s, work).is_err() {
                break; // fewer helpers: this thread still does all that is left
            }
        }
        work();
    });
    drop(slots);
    cvs
}

/// The chaining value of the subtree at `offset`, `len` bytes long, from
/// the pieces' values, splitting exactly as `split` did.
fn merge(
    offset: usize,
    len: usize,
    pieces: &[(usize, usize)],
    cvs: &[ChainingValue],
) -> ChainingValue {
    if let Ok(i) = pieces.binary_search(&(offset, len)) {
        return cvs[i];
    }
    let left = left_len(len);
    let l = merge(offset, left, pieces, cvs);
    let r = merge(offset + left, len - left, pieces, cvs);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    #[test]
    fn equals_the_plain_hash_at_every_awkward_length() {
        for len in [
            0,
            1,
            CHUNK_LEN,
            PARALLEL_MIN - 1,
            PARALLEL_MIN,
            PARALLEL_MIN + 1,
            PARALLEL_MIN + CHUNK_LEN,
            3 * PARALLEL_MIN + 7,
            12_345_678,
            16 << 20,
            (16 << 20) + 1,
        ] {
            let data = input(len);
            for threads in [1, 2, 3, 8] {
                assert_eq!(
                    hash(&data, threads),
                    blake3::hash(&data),
                    "len {len} threads {threads}"
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        #[test]
        fn equals_the_plain_hash(len in PARALLEL_MIN..4 * PARALLEL_MIN, threads in 2usize..6) {
            let data = input(len);
            proptest::prop_assert_eq!(hash(&data, threads), blake3::hash(&data));
        }
    }
}
