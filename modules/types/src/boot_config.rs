//! The kernel command line as a typed boot config.
//!
//! Only `zeronode.*` keys, `console=` and `ip=` matter to us; every other
//! parameter belongs to the kernel. A malformed or unknown `zeronode.*` key is
//! a [`Warning`] (reported on the console by PID 1), never a failure: a typo on
//! the command line must not make a node unbootable.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use serde::Serialize;

/// Port of the node's HTTPS API when `zeronode.api` does not say otherwise.
pub const DEFAULT_API_PORT: u16 = 8443;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootConfig {
    /// Every `console=` value, in order (the last one is /dev/console).
    pub console: Vec<String>,
    pub ip: IpConfig,
    /// `zeronode.owner=<hex>`: the ed25519 public key of the owner's 3Bot.
    #[serde(serialize_with = "hex_opt")]
    pub owner_key: Option<[u8; 32]>,
    /// `zeronode.farm=<u32>`.
    pub farm_id: Option<u32>,
    /// `zeronode.api=<ip:port>`.
    pub api_listen: SocketAddr,
    /// `zeronode.debug` (or `zeronode.debug=1|true|yes`).
    pub debug: bool,
    /// `zeronode.wipe=<serial|/dev/disk/by-id/..>[,..]`: the only disks that may be erased.
    pub wipe: Vec<String>,
    /// `zeronode.root_hash=<blake3 hex>`: the system image this boot accepts.
    #[serde(serialize_with = "hex_opt")]
    pub root_hash: Option<[u8; 32]>,
    /// `zeronode.mgmt=<ifname|mac>`: the management NIC, when not auto-detected.
    pub mgmt: Option<String>,
    /// `zeronode.hostname=<name>`.
    pub hostname: Option<String>,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            console: Vec::new(),
            ip: IpConfig::Dhcp { device: None },
            owner_key: None,
            farm_id: None,
            api_listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_API_PORT)),
            debug: false,
            wipe: Vec::new(),
            root_hash: None,
            mgmt: None,
            hostname: None,
        }
    }
}

/// `ip=` in the kernel's forms (Documentation/admin-guide/nfs/nfsroot.rst).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum IpConfig {
    /// `ip=dhcp`, `ip=on`, `ip=any`, `ip=both`, `ip=bootp`, or no `ip=` at all.
    Dhcp { device: Option<String> },
    /// `ip=off` / `ip=none`: leave addressing alone.
    Off,
    /// `ip=<client>::<gw>:<mask>:<host>:<dev>:off[:<dns0>:<dns1>]`.
    Static {
        client: Ipv4Addr,
        gateway: Option<Ipv4Addr>,
        netmask: Ipv4Addr,
        hostname: Option<String>,
        device: Option<String>,
        dns: Vec<Ipv4Addr>,
    },
}

/// A parameter we understood to be ours but could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub param: String,
    pub reason: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ignoring kernel parameter {:?}: {}",
            self.param, self.reason
        )
    }
}

/// Splits a command line the way the kernel does: on whitespace, with double
/// quotes protecting spaces (`key="a b"` or `"key=a b"`); quotes are removed.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    params.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        params.push(cur);
    }
    params
}

/// Parses a whole command line. Never fails: what cannot be used is a warning.
pub fn parse(cmdline: &str) -> (BootConfig, Vec<Warning>) {
    let mut cfg = BootConfig::default();
    let mut warnings = Vec::new();
    for param in split(cmdline) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param.as_str(), None),
        };
        if let Err(reason) = apply(&mut cfg, key, value) {
            warnings.push(Warning {
                param: param.clone(),
                reason,
            });
        }
    }
    (cfg, warnings)
}

fn apply(cfg: &mut BootConfig, key: &str, value: Option<&str>) -> Result<(), String> {
    match key {
        "console" => cfg.console.push(need(value)?.to_string()),
        "ip" => cfg.ip = parse_ip(need(value)?)?,
        "zeronode.owner" => cfg.owner_key = Some(parse_hex32(need(value)?)?),
        "zeronode.farm" => {
            let v = need(value)?;
            cfg.farm_id = Some(
                v.parse()
                    .map_err(|_| format!("{v:?} is not a farm id (an unsigned 32-bit number)"))?,
            );
        }
        "zeronode.api" => {
            let v = need(value)?;
            cfg.api_listen = v
                .parse()
                .map_err(|_| format!("{v:?} is not an ip:port address"))?;
        }
        "zeronode.debug" => cfg.debug = parse_bool(value)?,
        "zeronode.wipe" => {
            let disks: Vec<String> = need(value)?
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(bad) = disks.iter().find(|d| !valid_disk_ref(d)) {
                return Err(format!(
                    "{bad:?} is neither a disk serial nor a /dev/disk/by-id/ path"
                ));
            }
            cfg.wipe.extend(disks);
        }
        "zeronode.root_hash" => cfg.root_hash = Some(parse_hex32(need(value)?)?),
        "zeronode.mgmt" => cfg.mgmt = Some(need(value)?.to_string()),
        "zeronode.hostname" => {
            let v = need(value)?;
            if !valid_hostname(v) {
                return Err(format!("{v:?} is not a valid host name"));
            }
            cfg.hostname = Some(v.to_string());
        }
        k if k.starts_with("zeronode.") => return Err("unknown zeronode key".into()),
        _ => {}
    }
    Ok(())
}

fn need(v: Option<&str>) -> Result<&str, String> {
    match v {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err("needs a value".into()),
    }
}

fn parse_bool(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("1") | Some("true") | Some("yes") | Some("on") => Ok(true),
        Some("0") | Some("false") | Some("no") | Some("off") => Ok(false),
        Some(v) => Err(format!(
            "{v:?} is not a boolean (use 1/0, true/false, yes/no, on/off)"
        )),
    }
}

fn parse_hex32(v: &str) -> Result<[u8; 32], String> {
    if v.len() != 64 {
        return Err(format!(
            "expected 64 hex digits (32 bytes), got {} characters",
            v.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in v.as_bytes().chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
        out[i] =
            u8::from_str_radix(digits, 16).map_err(|_| format!("{digits:?} is not a hex byte"))?;
    }
    Ok(out)
}

fn valid_hostname(v: &str) -> bool {
    v.len() <= 63
        && !v.starts_with('-')
        && !v.ends_with('-')
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn valid_disk_ref(v: &str) -> bool {
    match v.strip_prefix("/dev/disk/by-id/") {
        Some(rest) => !rest.is_empty() && !rest.contains('/'),
        None => !v.contains('/') && v.bytes().all(|b| b.is_ascii_graphic()),
    }
}

fn parse_ip(v: &str) -> Result<IpConfig, String> {
    if !v.contains(':') {
        return match v {
            "dhcp" | "on" | "any" | "both" | "bootp" | "dhcp6" => Ok(IpConfig::Dhcp { device: None }),
            "off" | "none" => Ok(IpConfig::Off),
            other => Err(format!("{other:?} is not an ip= mode (dhcp, on, any, off, none) nor <client>::<gw>:<mask>:<host>:<dev>:<autoconf>")),
        };
    }
    let f: Vec<&str> = v.split(':').collect();
    if f.len() > 10 {
        return Err(format!("ip= has {} fields, at most 10", f.len()));
    }
    let field = |i: usize| f.get(i).copied().filter(|s| !s.is_empty());
    let addr = |i: usize, what: &str| -> Result<Option<Ipv4Addr>, String> {
        field(i)
            .map(|s| {
                s.parse::<Ipv4Addr>()
                    .map_err(|_| format!("{what} {s:?} is not an IPv4 address"))
            })
            .transpose()
    };
    let client = addr(0, "client address")?;
    let gateway = addr(2, "gateway")?;
    let netmask = addr(3, "netmask")?;
    let hostname = field(4).map(str::to_string);
    if let Some(h) = &hostname {
        if !valid_hostname(h) {
            return Err(format!("host name {h:?} is not valid"));
        }
    }
    let device = field(5).map(str::to_string);
    let dns = [addr(7, "dns server")?, addr(8, "dns server")?]
        .into_iter()
        .flatten()
        .collect();
    match field(6).unwrap_or("off") {
        "off" | "none" | "static" => {
            let client = client.ok_or("static ip= needs a client address")?;
            let netmask = netmask.ok_or("static ip= needs a netmask")?;
            if u32::from(netmask).leading_ones() != u32::from(netmask).count_ones() {
                return Err(format!("netmask {netmask} is not contiguous"));
            }
            Ok(IpConfig::Static {
                client,
                gateway,
                netmask,
                hostname,
                device,
                dns,
            })
        }
        "dhcp" | "on" | "any" | "both" | "bootp" => Ok(IpConfig::Dhcp { device }),
        other => Err(format!(
            "autoconf {other:?} is not off, none, dhcp, on or any"
        )),
    }
}

fn hex_opt<S: serde::Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(bytes) => s.serialize_some(&hex(bytes)),
        None => s.serialize_none(),
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    #[test]
    fn full_command_line() {
        let line = format!(
            "BOOT_IMAGE=/vmlinuz console=tty0 console=ttyS0,115200 quiet \
             zeronode.owner={KEY} zeronode.farm=42 zeronode.api=127.0.0.1:9000 zeronode.debug \
             zeronode.wipe=S3Z9NB0K123,/dev/disk/by-id/nvme-X_1 zeronode.root_hash={KEY} \
             ip=10.0.2.15::10.0.2.2:255.255.255.0:node1:eth0:off:10.0.2.3\n"
        );
        let (cfg, warnings) = parse(&line);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.console, ["tty0", "ttyS0,115200"]);
        assert_eq!(hex(&cfg.owner_key.unwrap()), KEY);
        assert_eq!(cfg.root_hash, cfg.owner_key);
        assert_eq!(cfg.farm_id, Some(42));
        assert_eq!(cfg.api_listen, "127.0.0.1:9000".parse().unwrap());
        assert!(cfg.debug);
        assert_eq!(cfg.wipe, ["S3Z9NB0K123", "/dev/disk/by-id/nvme-X_1"]);
        assert_eq!(
            cfg.ip,
            IpConfig::Static {
                client: Ipv4Addr::new(10, 0, 2, 15),
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                hostname: Some("node1".into()),
                device: Some("eth0".into()),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            }
        );
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let (cfg, warnings) = parse("root=/dev/sda1 ro");
        assert!(warnings.is_empty());
        assert_eq!(cfg, BootConfig::default());
        assert_eq!(cfg.ip, IpConfig::Dhcp { device: None });
        assert_eq!(cfg.api_listen.port(), DEFAULT_API_PORT);
    }

    #[test]
    fn quotes_protect_spaces() {
        assert_eq!(split(r#"a="b c" "d=e f"  g"#), ["a=b c", "d=e f", "g"]);
        assert_eq!(split("  "), Vec::<String>::new());
        assert_eq!(split(r#"x="""#), ["x="]);
    }

    #[test]
    fn malformed_and_unknown_keys_are_warnings_and_change_nothing() {
        let (cfg, warnings) = parse(
            "zeronode.farm=-1 zeronode.owner=abc zeronode.api=nope zeronode.frobnicate=1 \
             zeronode.debug=maybe zeronode.wipe=/dev/sda zeronode.hostname=-bad ip=10.0.0.1::::: ip=weird zeronode.mgmt",
        );
        assert_eq!(cfg, BootConfig::default());
        let params: Vec<&str> = warnings.iter().map(|w| w.param.as_str()).collect();
        assert_eq!(
            params,
            [
                "zeronode.farm=-1",
                "zeronode.owner=abc",
                "zeronode.api=nope",
                "zeronode.frobnicate=1",
                "zeronode.debug=maybe",
                "zeronode.wipe=/dev/sda",
                "zeronode.hostname=-bad",
                "ip=10.0.0.1:::::",
                "ip=weird",
                "zeronode.mgmt",
            ]
        );
        assert!(warnings[3].reason.contains("unknown"));
        assert!(warnings[7].reason.contains("netmask"), "{}", warnings[7]);
    }

    #[test]
    fn ip_forms() {
        assert_eq!(parse_ip("off"), Ok(IpConfig::Off));
        assert_eq!(parse_ip("dhcp"), Ok(IpConfig::Dhcp { device: None }));
        assert_eq!(
            parse_ip(":::::eth1:dhcp"),
            Ok(IpConfig::Dhcp {
                device: Some("eth1".into())
            })
        );
        assert!(parse_ip("10.0.0.1::10.0.0.254:255.0.255.0::eth0:off")
            .unwrap_err()
            .contains("contiguous"));
        assert!(parse_ip("10.0.0.1::10.0.0.999:255.0.0.0")
            .unwrap_err()
            .contains("gateway"));
        assert!(parse_ip("10.0.0.1::10.0.0.1:255.0.0.0::eth0:rarp")
            .unwrap_err()
            .contains("autoconf"));
        assert!(parse_ip(&"1:".repeat(11)).unwrap_err().contains("fields"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(line in "\\PC*") {
            let _ = parse(&line);
        }

        #[test]
        fn never_panics_on_our_keys(key in "(zeronode\\.[a-z_]{0,10}|ip|console)", value in "[ -~]{0,80}") {
            let _ = parse(&format!("{key}={value}"));
        }
    }
}
