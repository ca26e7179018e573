//! Just enough QMP (QEMU's JSON control protocol) to press buttons.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Runs one QMP command and returns its `return` value.
pub fn execute(socket: &Path, command: &str, arguments: Option<Value>) -> std::io::Result<Value> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // greeting
    let mut send = |v: Value| -> std::io::Result<Value> {
        writeln!(writer, "{v}")?;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QMP closed",
                ));
            }
            let reply: Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(std::io::Error::other(format!("QMP error: {e}")));
            }
            // An asynchronous event: keep reading.
        }
    };
    send(json!({ "execute": "qmp_capabilities" }))?;
    let mut cmd = json!({ "execute": command });
    if let Some(a) = arguments {
        cmd["arguments"] = a;
    }
    send(cmd)
}
