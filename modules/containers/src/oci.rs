//! Reading an OCI image layout from an archive, and the OCI chain IDs.

use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest, Sha256};

use crate::fetch::hex;
use crate::Error;

/// An unpacked OCI layout: the manifest we run, its config, the blobs.
pub struct Layout {
    pub dir: PathBuf,
    pub manifest_desc: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

/// Extracts the archive `tar` into `dir` (tar's `unpack` keeps every entry
/// inside `dir`) and selects the linux/amd64 manifest (or the only one).
pub fn unpack(tar_path: &Path, dir: &Path) -> Result<Layout, Error> {
    let f =
        std::fs::File::open(tar_path).map_err(Error::io(format!("open {}", tar_path.display())))?;
    tar::Archive::new(f)
        .unpack(dir)
        .map_err(|e| Error::Layout(format!("not a tar archive: {e}")))?;
    let layout: serde_json::Value = serde_json::from_slice(&read(dir, Path::new("oci-layout"))?)
        .map_err(|e| Error::Layout(format!("oci-layout: {e}")))?;
    if layout["imageLayoutVersion"].as_str().is_none() {
        return Err(Error::Layout("oci-layout has no imageLayoutVersion".into()));
    }
    let index: ImageIndex = serde_json::from_slice(&read(dir, Path::new("index.json"))?)
        .map_err(|e| Error::Layout(format!("index.json: {e}")))?;
    let mut desc = pick(index.manifests(), "index.json")?;
    // One level of nested index (a multi-platform image inside the layout).
    if *desc.media_type() == MediaType::ImageIndex {
        let nested: ImageIndex = serde_json::from_slice(&blob(dir, &desc)?)
            .map_err(|e| Error::Layout(format!("nested index: {e}")))?;
        desc = pick(nested.manifests(), "nested index")?;
    }
    if *desc.media_type() != MediaType::ImageManifest
        && desc.media_type().to_string() != "application/vnd.docker.distribution.manifest.v2+json"
    {
        return Err(Error::Layout(format!(
            "unsupported manifest media type {}",
            desc.media_type()
        )));
    }
    let manifest: ImageManifest = serde_json::from_slice(&blob(dir, &desc)?)
        .map_err(|e| Error::Layout(format!("manifest: {e}")))?;
    let config: ImageConfiguration = serde_json::from_slice(&blob(dir, manifest.config())?)
        .map_err(|e| Error::Layout(format!("config: {e}")))?;
    if config.rootfs().diff_ids().len() != manifest.layers().len() {
        return Err(Error::Layout(format!(
            "{} layers but {} diff_ids in the config",
            manifest.layers().len(),
            config.rootfs().diff_ids().len()
        )));
    }
    Ok(Layout {
        dir: dir.to_path_buf(),
        manifest_desc: desc,
        manifest,
        config,
    })
}

fn pick(manifests: &[Descriptor], what: &str) -> Result<Descriptor, Error> {
    let fits = |d: &&Descriptor| {
        d.platform().as_ref().is_none_or(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
        })
    };
    manifests
        .iter()
        .find(fits)
        .cloned()
        .ok_or_else(|| Error::Layout(format!("{what}: no manifest for linux/amd64")))
}

fn read(dir: &Path, rel: &Path) -> Result<Vec<u8>, Error> {
    let p = dir.join(rel);
    std::fs::read(&p).map_err(|e| Error::Layout(format!("{}: {e}", rel.display())))
}

/// The path of a blob in the layout (the digest is checked for its form,
/// so a descriptor cannot point outside the layout).
pub fn blob_path(dir: &Path, d: &Descriptor) -> Result<PathBuf, Error> {
    let digest = d.digest().to_string();
    let (alg, h) = digest
        .split_once(':')
        .ok_or_else(|| Error::Layout(format!("digest {digest:?}")))?;
    if alg != "sha256" || h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Layout(format!("unsupported digest {digest:?}")));
    }
    Ok(dir.join("blobs").join(alg).join(h))
}

/// A small blob (manifest, config, index), checked against its digest.
pub fn blob(dir: &Path, d: &Descriptor) -> Result<Vec<u8>, Error> {
    let p = blob_path(dir, d)?;
    let data = std::fs::read(&p).map_err(|e| Error::Layout(format!("blob {}: {e}", d.digest())))?;
    let got = format!("sha256:{}", hex(&Sha256::digest(&data)));
    if got != d.digest().to_string() {
        return Err(Error::Layout(format!(
            "blob {} hashes to {got}",
            d.digest()
        )));
    }
    Ok(data)
}

/// The chain IDs of the layers (OCI image spec, "Layer ChainID"):
/// ChainID(L0) = DiffID(L0); ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex(&Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = format!(
            "sha256:{}",
            hex(&Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(ids[1], want);
        assert!(chain_ids(&[]).is_empty());
    }
}
