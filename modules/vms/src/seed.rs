//! The NoCloud config drive: a small FAT volume labelled `cidata` holding
//! `meta-data`, `user-data` and, when the VM has a NIC, `network-config`
//! (cloud-init's version 2, matched by the NIC's MAC). The documents are
//! JSON, which YAML parsers read as YAML: nothing the tenant gives (keys,
//! env values) can break out of its string. Written in memory with fatfs
//! and fixed timestamps: the same VM gets the same bytes.

use std::io::{Cursor, Write};
use std::path::Path;

use serde_json::{json, Value};

use crate::spec::VmSpec;
use crate::Error;

/// The volume: FAT12 with room to spare for a user-data of a few hundred KiB.
const SIZE: usize = 2 << 20;

/// The network part of the seed: the address the network module gave.
#[derive(Debug, Clone)]
pub struct NicConfig {
    pub mac: String,
    /// a.b.c.d/n
    pub address: String,
    pub gateway: String,
}

/// The gateway of the workload network `address` (a.b.c.d/n) is on: the
/// network module puts the bridge on the subnet's first address.
pub fn gateway_of(address: &str) -> Result<String, Error> {
    let bad = || Error::Invalid(format!("address {address:?}: a.b.c.d/n expected"));
    let (ip, prefix) = address.split_once('/').ok_or_else(bad)?;
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u32 = prefix.parse().map_err(|_| bad())?;
    if !(1..=30).contains(&prefix) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - prefix);
    Ok(std::net::Ipv4Addr::from((u32::from(ip) & mask) + 1).to_string())
}

pub fn meta_data(spec: &VmSpec) -> String {
    json!({ "instance-id": spec.name, "local-hostname": spec.name }).to_string()
}

pub fn user_data(spec: &VmSpec) -> String {
    let ci = spec.cloud_init.clone().unwrap_or_default();
    if let Some(u) = ci.user_data {
        return u;
    }
    let mut doc = serde_json::Map::new();
    if !ci.ssh_keys.is_empty() {
        doc.insert("ssh_authorized_keys".into(), json!(ci.ssh_keys));
    }
    if !ci.env.is_empty() {
        let content: String = ci.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        doc.insert(
            "write_files".into(),
            json!([{ "path": "/etc/environment", "content": content, "append": true }]),
        );
    }
    format!("#cloud-config\n{}\n", Value::Object(doc))
}

pub fn network_config(nic: &NicConfig) -> String {
    json!({
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": { "macaddress": nic.mac },
                "set-name": "eth0",
                "addresses": [nic.address],
                "gateway4": nic.gateway,
            }
        }
    })
    .to_string()
}

fn fat_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Seed(format!("{what}: {e}"))
}

/// The config drive's bytes.
pub fn image(spec: &VmSpec, nic: Option<&NicConfig>) -> Result<Vec<u8>, Error> {
    let mut files = vec![
        ("meta-data", meta_data(spec)),
        ("user-data", user_data(spec)),
    ];
    if let Some(n) = nic {
        files.push(("network-config", network_config(n)));
    }
    let payload: usize = files.iter().map(|(_, d)| d.len()).sum();
    if payload > SIZE / 2 {
        return Err(Error::Invalid(format!(
            "cloud-init seed of {payload} bytes: at most {} bytes",
            SIZE / 2
        )));
    }
    let mut disk = Cursor::new(vec![0u8; SIZE]);
    let opts = fatfs::FormatVolumeOptions::new()
        .volume_id(0x5a4e_5644)
        .volume_label(*b"cidata     ");
    fatfs::format_volume(&mut disk, opts).map_err(fat_err("formatting"))?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .map_err(fat_err("opening the new volume"))?;
        for (name, data) in &files {
            let mut f = fs
                .root_dir()
                .create_file(name)
                .map_err(fat_err("creating a file"))?;
            f.truncate().map_err(fat_err("writing a file"))?;
            f.write_all(data.as_bytes())
                .map_err(fat_err("writing a file"))?;
        }
        fs.unmount().map_err(fat_err("closing the volume"))?;
    }
    Ok(disk.into_inner())
}

/// Writes the config drive to `path` (mode 0600: env may hold secrets).
pub fn write(path: &Path, spec: &VmSpec, nic: Option<&NicConfig>) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = image(spec, nic)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(format!("create {}", tmp.display())))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(Error::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("rename to {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_drive_holds_the_documents() {
        let mut spec = VmSpec::from_json(&format!(
            r#"{{"name":"vm","kernel":{{"url":"file:///k","sha256":"{}"}},"cpu":1,"memory":134217728,
               "cloud_init":{{"ssh_keys":["ssh-ed25519 AAAA x\"y"],"env":{{"A":"1 2"}}}}}}"#,
            "a".repeat(64)
        ))
        .unwrap();
        let nic = NicConfig {
            mac: "02:7a:00:00:00:01".into(),
            address: "10.9.0.2/24".into(),
            gateway: gateway_of("10.9.0.2/24").unwrap(),
        };
        assert_eq!(nic.gateway, "10.9.0.1");
        let img = image(&spec, Some(&nic)).unwrap();
        assert_eq!(img, image(&spec, Some(&nic)).unwrap(), "reproducible");
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim(), "cidata");
        let read = |n: &str| {
            let mut s = String::new();
            fs.root_dir()
                .open_file(n)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        let ud = read("user-data");
        assert!(ud.starts_with("#cloud-config\n"));
        let doc: Value = serde_json::from_str(&ud["#cloud-config\n".len()..]).unwrap();
        assert_eq!(doc["ssh_authorized_keys"][0], "ssh-ed25519 AAAA x\"y");
        assert_eq!(doc["write_files"][0]["content"], "A=1 2\n");
        let nc: Value = serde_json::from_str(&read("network-config")).unwrap();
        assert_eq!(nc["ethernets"]["eth0"]["addresses"][0], "10.9.0.2/24");
        assert!(read("meta-data").contains("\"instance-id\":\"vm\""));
        spec.cloud_init = None;
        assert_eq!(user_data(&spec), "#cloud-config\n{}\n");
    }
}
