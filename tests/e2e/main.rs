//! Boots the built image (scripts/build-image) in QEMU under TCG and checks
//! what a person at the console would. One file a concern: power.rs (boot
//! paths, power, the console tool), storage.rs (disks, pools, node id),
//! network.rs (the management network against a bad DHCP server),
//! provision.rs (signed deployments through the API, self-healing),
//! containers.rs (container workloads from an archive the host serves),
//! shards.rs (an object stored across three nodes' zdbs).

mod containers;
mod network;
mod power;
mod provision;
mod shards;
mod storage;
mod vms;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use zeronode_e2e::image_dir;
use zeronode_qemu::{Boot, Node, NodeOptions};

use containers::*;
use network::*;
use power::*;
use provision::*;
use shards::*;
use storage::*;
use vms::*;

pub type Check = Result<(), String>;
type Case = (&'static str, fn() -> Check);

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
pub const PXE_TIMEOUT: Duration = Duration::from_secs(420);

pub fn opts(boot: Boot) -> NodeOptions {
    let mut o = NodeOptions::new(image_dir(), boot);
    o.disks = 2;
    o
}

/// Starts a node. Each node's whole console is kept in `ZN_E2E_CONSOLE_DIR`
/// (default: `zeronode-e2e-<pid>` in the temp dir) as `node-N.log`, N
/// counting from 1 in start order; a failed case prints the end of its
/// nodes' consoles.
pub fn start(o: &NodeOptions) -> Result<Node, String> {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed) + 1;
    let mut o = o.clone();
    if o.console.is_none() {
        let dir = std::env::var_os("ZN_E2E_CONSOLE_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::env::temp_dir().join(format!("zeronode-e2e-{}", std::process::id()))
            });
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        o.console = Some(dir.join(format!("node-{n}.log")));
    }
    if let Some(path) = &o.console {
        CONSOLES.with(|c| c.borrow_mut().push(path.clone()));
    }
    Node::start(&o).map_err(|e| e.to_string())
}

thread_local! {
    /// The consoles of the nodes the case on this thread started.
    static CONSOLES: std::cell::RefCell<Vec<std::path::PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// How much of each console a failed case prints.
const FAILED_CONSOLE_LINES: usize = 80;

/// The last lines of each console the case on this thread started.
fn console_tails() -> String {
    let mut out = String::new();
    for path in CONSOLES.with(|c| c.take()) {
        let text = std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(FAILED_CONSOLE_LINES);
        out.push_str(&format!(
            "--- last {} lines of {} ---\n",
            lines.len() - from,
            path.display()
        ));
        for l in &lines[from..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

pub fn ensure(cond: bool, what: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn main() {
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let cases: [Case; 14] = [
        (
            "direct_boot_ready_then_power_button",
            direct_boot_ready_then_power_button,
        ),
        ("ctrl_alt_del_reboots", ctrl_alt_del_reboots),
        (
            "console_tool_lists_services_and_powers_off",
            console_tool_lists_services_and_powers_off,
        ),
        (
            "tampered_image_stops_the_boot",
            tampered_image_stops_the_boot,
        ),
        ("uefi_boot_from_usb_image", uefi_boot_from_usb_image),
        ("pxe_boot", pxe_boot),
        (
            "pools_and_node_id_survive_a_reboot",
            pools_and_node_id_survive_a_reboot,
        ),
        (
            "foreign_disk_is_left_untouched",
            foreign_disk_is_left_untouched,
        ),
        ("bad_boot_input_is_reported", bad_boot_input_is_reported),
        ("dhcp_garbage_is_reported", dhcp_garbage_is_reported),
        (
            "signed_deployment_survives_a_hard_reset",
            signed_deployment_survives_a_hard_reset,
        ),
        (
            "container_runs_and_comes_back_after_a_hard_reset",
            container_runs_and_comes_back_after_a_hard_reset,
        ),
        (
            "object_survives_a_node_powered_off",
            object_survives_a_node_powered_off,
        ),
        (
            "vm_runs_and_comes_back_after_a_hard_reset",
            vm_runs_and_comes_back_after_a_hard_reset,
        ),
    ];
    let (beside, serial): (Vec<Case>, Vec<Case>) = cases
        .into_iter()
        .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
        .partition(|(name, _)| BESIDE.contains(name));
    let lane = std::thread::spawn(move || beside.into_iter().map(run).collect::<Vec<bool>>());
    let mut results: Vec<bool> = serial.into_iter().map(run).collect();
    match lane.join() {
        Ok(r) => results.extend(r),
        Err(_) => {
            println!("e2e: a case beside the others panicked");
            results.push(false);
        }
    }
    let passed = results.iter().filter(|ok| **ok).count();
    let failed = results.len() - passed;
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Cases that run in a lane of their own beside the others. The VM case is
/// the longest by far, and for most of it one emulated CPU (its guest, TCG
/// inside a TCG node) keeps one host core busy. Beside it the other cases
/// run about 1.5x slower, but the suite ends sooner: 9-10 min here against
/// about 11 min one case after another.
const BESIDE: &[&str] = &["vm_runs_and_comes_back_after_a_hard_reset"];

/// Runs one case and prints its result as it ends.
fn run((name, case): Case) -> bool {
    let t = Instant::now();
    CONSOLES.with(|c| c.borrow_mut().clear());
    let result = case();
    let secs = t.elapsed().as_secs_f64();
    match &result {
        Ok(()) => println!("e2e {name} ... ok ({secs:.1} s)"),
        Err(e) => println!(
            "e2e {name} ... FAILED ({secs:.1} s)\n{e}\n{}",
            console_tails()
        ),
    }
    result.is_ok()
}
