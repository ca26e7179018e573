//! Outbound NAT and isolation for workload networks, with nftables through
//! Debian's `nft` binary: one table `ip zeronode` that we own and replace
//! whole in one transaction (`nft -f -`), so a rule set is never half
//! applied and nobody else's tables are touched.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::ipam::Ipam;
use crate::Error;

pub const TABLE: &str = "zeronode";

/// The whole `ip zeronode` table for `ipam`'s networks, masquerading
/// through `uplink`. Workload networks reach the uplink; nothing starts a
/// connection into a workload network, nor from one network into another.
pub fn ruleset(ipam: &Ipam, uplink: &str) -> String {
    let mut nat = String::new();
    let mut fwd = String::new();
    for net in ipam.networks.values() {
        let b = &net.bridge;
        nat += &format!(
            "    ip saddr {} oifname \"{uplink}\" masquerade\n",
            net.subnet
        );
        // Within one network: bridged traffic passes here too when
        // br_netfilter is loaded (bridge-nf-call-iptables).
        fwd += &format!("    iifname \"{b}\" oifname \"{b}\" accept\n");
        fwd += &format!("    iifname \"{b}\" oifname \"{uplink}\" accept\n");
    }
    for net in ipam.networks.values() {
        let b = &net.bridge;
        fwd += &format!("    oifname \"{b}\" drop\n    iifname \"{b}\" drop\n");
    }
    // Declaring then deleting makes the delete safe when the table is absent;
    // all of it is one transaction.
    format!(
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\n\
         table ip {TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{nat}  }}\n\
         \x20 chain forward {{\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n{fwd}  }}\n}}\n"
    )
}

/// Replaces the table by running `nft -f -` with the rule set on stdin.
pub fn apply(nft: &Path, ruleset: &str) -> Result<(), Error> {
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("cannot run {}: {e}", nft.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| Error::Nft(format!("write rules to {}: {e}", nft.display())))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("wait for {}: {e}", nft.display())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Nft(format!(
            "{} -f - exited with {}: {}",
            nft.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_network_is_masqueraded_and_fenced() {
        let mut ipam = Ipam::default();
        ipam.create("blue", "10.200.0.0/24", &[]).unwrap();
        ipam.create("red", "10.201.0.0/24", &[]).unwrap();
        let r = ruleset(&ipam, "zn0");
        assert!(r.contains("ip saddr 10.200.0.0/24 oifname \"zn0\" masquerade"));
        assert!(r.contains("ip saddr 10.201.0.0/24 oifname \"zn0\" masquerade"));
        assert!(r.contains("iifname \"znb-red\" oifname \"zn0\" accept"));
        assert!(r.contains("oifname \"znb-blue\" drop"));
        assert!(r.contains("iifname \"znb-blue\" oifname \"znb-blue\" accept"));
        // Accepts to the uplink come before the fences.
        assert!(
            r.find("znb-red\" oifname \"zn0\" accept").unwrap()
                < r.find("oifname \"znb-blue\" drop").unwrap()
        );
        assert!(r.starts_with("table ip zeronode {}\ndelete table ip zeronode\n"));
    }
}
