//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages separated by NUL on file descriptors 3 and 4, here the child's stdin and
//! stdout moved there by `sh`), from a private profile directory. Enough to open a page and
//! evaluate expressions in it.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

/// A running headless Chromium.
pub struct Chromium {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Value>,
    next_id: u64,
}

/// An open page (a target attached with a flat session).
pub struct Page {
    session: String,
}

impl Chromium {
    /// Starts Chromium with its profile and stderr in `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Chromium> {
        let bin = crate::require_binary("chromium")?;
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let cmd = format!(
            "exec '{}' --headless --no-sandbox --disable-gpu --no-first-run \
             --disable-background-networking --disable-dev-shm-usage --user-data-dir='{}' \
             --remote-debugging-pipe 3<&0 4>&1 0</dev/null 1>/dev/null 2>'{}'",
            bin.display(),
            profile.display(),
            dir.join("chromium.stderr").display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromium")?;
        let stdin = child.stdin.take().context("chromium stdin")?;
        let stdout = child.stdout.take().context("chromium stdout")?;
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while let Ok(n) = r.read_until(0, &mut buf) {
                if n == 0 {
                    break;
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if v.get("id").is_some() && tx.send(v).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        Ok(Chromium {
            child,
            stdin,
            replies,
            next_id: 1,
        })
    }

    /// Sends a command (in `session`, if any) and waits up to `timeout` for its result.
    pub fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.stdin.write_all(&bytes)?;
        self.stdin.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(v) if v["id"] == json!(id) => {
                    if let Some(e) = v.get("error") {
                        bail!("{method}: {e}");
                    }
                    return Ok(v["result"].clone());
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => bail!("{method}: no answer in {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("{method}: chromium exited"),
            }
        }
    }

    /// Opens `url` in a new page.
    pub fn open(&mut self, url: &str) -> anyhow::Result<Page> {
        let t = Duration::from_secs(30);
        let target = self.call(None, "Target.createTarget", json!({"url": url}), t)?;
        let id = target["targetId"]
            .as_str()
            .ok_or_else(|| anyhow!("no targetId: {target}"))?
            .to_owned();
        let s = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": id, "flatten": true}),
            t,
        )?;
        let session = s["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId: {s}"))?
            .to_owned();
        Ok(Page { session })
    }

    /// Evaluates `expr` in `page`; its value (JSON), or an error for a thrown exception.
    pub fn eval(&mut self, page: &Page, expr: &str) -> anyhow::Result<Value> {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
            Duration::from_secs(10),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expr}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` until `ok` holds for its value; the value.
    pub fn wait_for(
        &mut self,
        page: &Page,
        expr: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(v) = self.eval(page, expr) {
                if ok(&v) {
                    return Ok(v);
                }
                last = v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{expr}: still {last} after {timeout:?}")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.call(None, "Browser.close", json!({}), Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
