//! Where PID 1's own log lines go: the console (our stdout, which the kernel
//! opened on /dev/console) and the kernel log (/dev/kmsg, so `dmesg` has
//! them too). Whether the kernel also echoes kmsg records to the console
//! depends on `loglevel=`; the image sets it so lines are not doubled.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Arc;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// A status line for the person at the console (`zeronode: ready in N ms`,
/// `zeronode: boot stopped: ...`), written in one call and then drained:
/// the serial driver sends a tty write from its buffer while the kernel
/// prints its own messages (and the kmsg records it echoes) straight to the
/// port, so an undrained line can be cut in two by the next one. Draining
/// also gets the line out before a power-off. Not a terminal (tests, a pipe):
/// nothing to drain.
pub fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
    drain_console(&out);
}

fn drain_console(out: &io::StdoutLock<'_>) {
    let _ = nix::sys::termios::tcdrain(out);
}

/// Process mode: plain lines on stderr.
pub fn init_stderr() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// PID 1: console and kernel log. With `debug` every line also carries the
/// time since the kernel started, the clock of the ready line and of the
/// kernel's own messages, so a slow boot shows where its time went.
pub fn init_pid1(debug: bool) {
    let kmsg = OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .ok()
        .map(Arc::new);
    let builder = tracing_subscriber::fmt()
        .with_writer(ConsoleAndKmsg { kmsg })
        .with_target(false)
        .with_ansi(false);
    let _ = if debug {
        builder
            .with_max_level(Level::DEBUG)
            .with_timer(SinceBoot)
            .try_init()
    } else {
        builder
            .with_max_level(Level::INFO)
            .without_time()
            .try_init()
    };
}

/// Seconds since the kernel started (CLOCK_BOOTTIME), as `[   3.214]`.
struct SinceBoot;

impl tracing_subscriber::fmt::time::FormatTime for SinceBoot {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map_or((0, 0), |t| (t.tv_sec(), t.tv_nsec() / 1_000_000));
        write!(w, "[{:4}.{:03}]", t.0, t.1)
    }
}

/// Warnings and errors: kmsg records the image's `loglevel=4` lets the
/// kernel print to the console too. Rare lines, so draining costs nothing.
const ECHOED_PRIORITY: u8 = 4;

#[derive(Clone)]
struct ConsoleAndKmsg {
    kmsg: Option<Arc<File>>,
}

pub struct LineWriter {
    kmsg: Option<Arc<File>>,
    priority: u8,
}

impl<'a> MakeWriter<'a> for ConsoleAndKmsg {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            kmsg: self.kmsg.clone(),
            priority: 6,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        let priority = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        LineWriter {
            kmsg: self.kmsg.clone(),
            priority,
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"zeronode-init: ");
        let _ = out.write_all(buf);
        let _ = out.flush();
        if self.priority <= ECHOED_PRIORITY {
            // The kernel echoes this record to the console: let ours go first.
            drain_console(&out);
        }
        if let Some(kmsg) = &self.kmsg {
            // One write is one kmsg record; a failed log write is not worth failing for.
            let mut record = format!("<{}>zeronode-init: ", self.priority).into_bytes();
            record.extend_from_slice(buf);
            let _ = (&**kmsg).write(&record);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
