//! The password of `callfabric devices add`: from the command line (discouraged), a file,
//! standard input, or a prompt on the terminal without echo.

use anyhow::{anyhow, Context as _, Result};
use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

/// The first line of `text`, without its line end.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_owned()
}

/// The password from `inline`, `file` or standard input (`stdin`), else prompted on the
/// controlling terminal (echo off while typing).
pub fn read(inline: Option<&str>, file: Option<&Path>, stdin: bool) -> Result<String> {
    if let Some(p) = inline {
        eprintln!("warning: --password is visible to other users (ps) and in shell history");
        return Ok(p.to_owned());
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("--password-file: cannot read {}", f.display()))?;
        return Ok(first_line(&text));
    }
    if stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("--password-stdin: cannot read standard input")?;
        return Ok(first_line(&line));
    }
    prompt()
}

/// Asks twice on /dev/tty with echo off (`stty -echo`), and compares.
fn prompt() -> Result<String> {
    let tty = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|e| {
                anyhow!(
                    "no terminal to prompt for the password ({e}): use --password-file or \
                     --password-stdin"
                )
            })
    };
    let stty = |arg: &str| -> Result<()> {
        let status = Command::new("stty")
            .arg(arg)
            .stdin(Stdio::from(tty()?))
            .status()
            .context("running stty")?;
        if !status.success() {
            return Err(anyhow!("stty {arg} failed"));
        }
        Ok(())
    };
    let mut out = tty()?;
    let mut ask = |what: &str| -> Result<String> {
        write!(out, "{what}")?;
        out.flush()?;
        stty("-echo")?;
        let mut line = String::new();
        let read = std::io::BufReader::new(tty()?).read_line(&mut line);
        stty("echo")?;
        writeln!(out)?;
        read.context("reading the password")?;
        Ok(first_line(&line))
    };
    let a = ask("Password: ")?;
    let b = ask("Again: ")?;
    if a != b {
        return Err(anyhow!("the passwords differ"));
    }
    Ok(a)
}
