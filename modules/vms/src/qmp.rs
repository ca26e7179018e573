//! A QMP client: JSON lines on QEMU's unix control socket. After the
//! greeting, `qmp_capabilities` enters command mode; a command's answer is
//! the next line holding `return` or `error` (events in between skipped).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::Error;

/// A command that takes longer than this is reported as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Qmp {
    path: PathBuf,
    stream: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Qmp, Error> {
        let fail = |reason: String| Error::Qmp {
            path: path.display().to_string(),
            reason,
        };
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let mut q = Qmp {
            path: path.to_path_buf(),
            stream: BufReader::new(stream),
        };
        let greeting = q.read_line().await?;
        if greeting.get("QMP").is_none() {
            return Err(fail(format!("not a QMP greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    fn fail(&self, reason: String) -> Error {
        Error::Qmp {
            path: self.path.display().to_string(),
            reason,
        }
    }

    async fn read_line(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        let n = tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read_line(&mut line))
            .await
            .map_err(|_| self.fail("no answer in 10 s".into()))?
            .map_err(|e| self.fail(format!("read: {e}")))?;
        if n == 0 {
            return Err(self.fail("closed by qemu".into()));
        }
        serde_json::from_str(&line).map_err(|e| self.fail(format!("bad JSON {line:?}: {e}")))
    }

    /// Runs `command` (with `arguments`) and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, Error> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.stream
            .get_mut()
            .write_all(&bytes)
            .await
            .map_err(|e| self.fail(format!("write {command}: {e}")))?;
        loop {
            let v = self.read_line().await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(self.fail(format!("{command}: {e}")));
            }
            // An asynchronous event (POWERDOWN, SHUTDOWN...): not our answer.
        }
    }

    /// `running`, `paused`, `shutdown`... as `query-status` says.
    pub async fn status(&mut self) -> Result<String, Error> {
        let r = self.execute("query-status", None).await?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    /// The ACPI power button: the guest decides how to shut down.
    pub async fn system_powerdown(&mut self) -> Result<(), Error> {
        self.execute("system_powerdown", None).await.map(drop)
    }
}
