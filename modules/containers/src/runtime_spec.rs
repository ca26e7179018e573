//! The OCI runtime spec of a container: oci-spec's defaults (the usual
//! /proc, /dev, /sys mounts, masked paths, namespaces), the image's config
//! (entrypoint, cmd, env, working dir, user) under the workload's
//! overrides, cgroup limits, volume bind mounts and the network namespace
//! the module made for it.

use std::collections::BTreeMap;

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceType, LinuxPidsBuilder, MountBuilder, Spec, UserBuilder,
};

use crate::spec::ContainerSpec;
use crate::Error;

/// The CPU period the quota is a share of (the kernel's default, 100 ms).
pub const CPU_PERIOD: u64 = 100_000;
/// Processes a container may have: a fork bomb stays inside its cgroup.
const PIDS_MAX: i64 = 4096;

fn bad(what: &str) -> impl FnOnce(oci_spec::OciSpecError) -> Error + '_ {
    move |e| Error::Invalid(format!("runtime spec {what}: {e}"))
}

/// The runtime spec as JSON for `spec` run from an image with `config`,
/// in the network namespace at `netns`, in the cgroup `cgroup_path`.
pub fn build(
    spec: &ContainerSpec,
    config: &ImageConfiguration,
    netns: &str,
    cgroup_path: &str,
    resolv_conf: Option<&str>,
) -> Result<Spec, Error> {
    let img = config.config().clone().unwrap_or_default();
    let mut oci = Spec::default();
    oci.set_hostname(Some(spec.name.clone()));
    // The container's own snapshot is its writable layer (oci-spec's
    // default root is read-only).
    if let Some(root) = oci.root_mut() {
        root.set_readonly(Some(false));
    }

    // Arguments: the workload's entrypoint/args replace the image's.
    let entry = if spec.entrypoint.is_empty() {
        img.entrypoint().clone().unwrap_or_default()
    } else {
        spec.entrypoint.clone()
    };
    let cmd = if spec.args.is_empty() && spec.entrypoint.is_empty() {
        img.cmd().clone().unwrap_or_default()
    } else {
        spec.args.clone()
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::Invalid(format!(
            "container {}: neither the workload nor the image gives a command",
            spec.name
        )));
    }
    // Environment: PATH first (the image may replace it), then the image's,
    // then the workload's, a later name replacing an earlier one.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    for kv in img.env().clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    env.insert("HOSTNAME".into(), spec.name.clone());
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone());
    }
    let cwd = spec
        .workdir
        .clone()
        .or_else(|| img.working_dir().clone().filter(|w| w.starts_with('/')))
        .unwrap_or_else(|| "/".into());
    // Numeric user[:group] from the image; names would need the image's
    // /etc/passwd, which we do not read: they fall back to root.
    let (uid, gid) = match img.user().as_deref() {
        Some(u) if !u.is_empty() => {
            let (u, g) = u.split_once(':').unwrap_or((u, ""));
            match u.parse::<u32>() {
                Ok(uid) => (uid, g.parse::<u32>().unwrap_or(uid)),
                Err(_) => {
                    tracing::warn!(
                        "container {}: image user {u:?} is not numeric: running as root",
                        spec.name
                    );
                    (0, 0)
                }
            }
        }
        _ => (0, 0),
    };

    // containerd's default capability set: what ordinary services expect
    // (chown, setuid, raw sockets for ping, ...), nothing administrative.
    let caps: std::collections::HashSet<Capability> = [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect();
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps.clone()));
    lc.set_permitted(Some(caps));
    lc.set_inheritable(None);
    lc.set_ambient(None);

    if let Some(p) = oci.process_mut() {
        p.set_args(Some(args));
        p.set_env(Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()));
        p.set_cwd(cwd.into());
        p.set_user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(bad("user"))?,
        );
        p.set_capabilities(Some(lc));
        p.set_no_new_privileges(Some(true));
    }

    // Volumes: bind mounts of the storage module's paths.
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    for m in &spec.mounts {
        let mut options = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
        options.push(if m.readonly { "ro" } else { "rw" }.into());
        mounts.push(
            MountBuilder::default()
                .destination(&m.target)
                .typ("bind")
                .source(&m.source)
                .options(options)
                .build()
                .map_err(bad("mount"))?,
        );
    }
    if let Some(r) = resolv_conf {
        mounts.push(
            MountBuilder::default()
                .destination("/etc/resolv.conf")
                .typ("bind")
                .source(r)
                .options(vec![
                    "rbind".to_string(),
                    "ro".into(),
                    "nosuid".into(),
                    "nodev".into(),
                ])
                .build()
                .map_err(bad("mount"))?,
        );
    }
    oci.set_mounts(Some(mounts));

    if let Some(linux) = oci.linux_mut() {
        // Our own network namespace (attached by the network module), the
        // rest new for the container.
        let mut namespaces: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
        for ns in namespaces.iter_mut() {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(Some(netns.into()));
            }
        }
        linux.set_namespaces(Some(namespaces));
        linux.set_cgroups_path(Some(cgroup_path.into()));
        let mut res = linux.resources().clone().unwrap_or_default();
        res.set_devices(Some(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(bad("devices"))?]));
        if let Some(mem) = spec.memory {
            // memory.max on cgroup v2 (memory.limit_in_bytes on v1); the
            // swap limit equal to it on v2 means no swap use on top.
            res.set_memory(Some(
                LinuxMemoryBuilder::default()
                    .limit(mem as i64)
                    .build()
                    .map_err(bad("memory"))?,
            ));
        }
        if let Some(cores) = spec.cpu {
            // cpu.max = "quota period".
            let quota = (cores * CPU_PERIOD as f64).round() as i64;
            res.set_cpu(Some(
                LinuxCpuBuilder::default()
                    .quota(quota)
                    .period(CPU_PERIOD)
                    .build()
                    .map_err(bad("cpu"))?,
            ));
        }
        res.set_pids(Some(
            LinuxPidsBuilder::default()
                .limit(PIDS_MAX)
                .build()
                .map_err(bad("pids"))?,
        ));
        linux.set_resources(Some(res));
    }
    Ok(oci)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_overrides_the_image() {
        let spec = crate::ContainerSpec::from_json(&format!(
            r#"{{"name":"a","image":{{"url":"http://x/a.tar","sha256":"{}"}},
                "args":["echo","hi"],"env":{{"A":"1","PATH":"/bin"}},
                "cpu":0.5,"memory":67108864,"mounts":[{{"source":"/tmp","target":"/data"}}]}}"#,
            "0".repeat(64)
        ))
        .unwrap();
        let config: ImageConfiguration = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/busybox"],"Cmd":["sh"],"Env":["B=2"],"WorkingDir":"/w"},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        let oci = build(
            &spec,
            &config,
            "/run/netns/x",
            "/zeronode/a",
            Some("/etc/resolv.conf"),
        )
        .unwrap();
        let v = serde_json::to_value(&oci).unwrap();
        assert_eq!(
            v["process"]["args"],
            serde_json::json!(["/bin/busybox", "echo", "hi"])
        );
        let env: Vec<String> = serde_json::from_value(v["process"]["env"].clone()).unwrap();
        assert!(env.contains(&"A=1".into()) && env.contains(&"B=2".into()));
        assert!(env.contains(&"PATH=/bin".into()));
        assert_eq!(v["process"]["cwd"], "/w");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 67108864);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50000);
        assert_eq!(v["linux"]["cgroupsPath"], "/zeronode/a");
        let net = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap();
        assert_eq!(net["path"], "/run/netns/x");
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/data" && m["type"] == "bind"));
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/etc/resolv.conf"));
    }
}
