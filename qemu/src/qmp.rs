//! Just enough QMP (QEMU's JSON control protocol) to press buttons: one
//! connection per command, capabilities negotiated, events skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QmpError {
    #[error("connecting to QMP at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP {command}: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
    #[error("QMP {command}: QEMU closed the connection")]
    Closed { command: String },
    #[error("QMP {command}: unreadable reply {reply:?}: {source}")]
    Reply {
        command: String,
        reply: String,
        source: serde_json::Error,
    },
    #[error("QMP {command} refused: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
}

/// Runs one QMP command and returns its `return` value. Waits up to 5 s for
/// the socket (QEMU creates it while starting).
pub fn execute(socket: &Path, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(source) if Instant::now() >= deadline => {
                return Err(QmpError::Connect {
                    path: socket.to_path_buf(),
                    source,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let io = |source| QmpError::Io {
        command: command.into(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
    let mut writer = stream;
    let read_reply = |reader: &mut BufReader<UnixStream>| -> Result<Value, QmpError> {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            return Err(QmpError::Closed {
                command: command.into(),
            });
        }
        serde_json::from_str(&line).map_err(|source| QmpError::Reply {
            command: command.into(),
            reply: line.trim().into(),
            source,
        })
    };
    read_reply(&mut reader)?; // the greeting
    let mut call = |v: Value| -> Result<Value, QmpError> {
        writeln!(writer, "{v}").map_err(io)?;
        loop {
            let reply = read_reply(&mut reader)?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                return Err(QmpError::Refused {
                    command: command.into(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            // An asynchronous event: keep reading.
        }
    };
    call(json!({ "execute": "qmp_capabilities" }))?;
    let mut cmd = json!({ "execute": command });
    if let Some(a) = arguments {
        cmd["arguments"] = a;
    }
    call(cmd)
}
