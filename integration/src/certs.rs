//! Test certificates made with the openssl CLI in a private directory: a CA and a leaf for
//! `127.0.0.1` (and `gw.test`) signed by it, as PEM files.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of one CA and its leaf.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA certificate (what a peer trusts).
    pub ca: PathBuf,
    /// The leaf certificate (SAN `IP:127.0.0.1`, `DNS:gw.test`).
    pub cert: PathBuf,
    /// The leaf's private key (P-256).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Makes `<tag>-ca.pem`, `<tag>-cert.pem` and `<tag>-key.pem` in `dir`.
pub fn make(dir: &Path, tag: &str) -> Result<Certs> {
    let f = |s: &str| format!("{tag}-{s}");
    std::fs::write(
        dir.join(f("ext")),
        "subjectAltName=IP:127.0.0.1,DNS:gw.test\nbasicConstraints=CA:FALSE\n",
    )?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let subj = format!("/CN={tag} test CA");
    let (ca_key, ca, key, csr, cert, ext) = (
        f("ca.key"),
        f("ca.pem"),
        f("key.pem"),
        f("csr"),
        f("cert.pem"),
        f("ext"),
    );
    let mut a = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &subj];
    a.extend(ec);
    a.extend(["-keyout", &ca_key, "-out", &ca]);
    openssl(dir, &a)?;
    let mut a = vec!["req", "-nodes", "-subj", "/CN=gw.test"];
    a.extend(ec);
    a.extend(["-keyout", &key, "-out", &csr]);
    openssl(dir, &a)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    )?;
    Ok(Certs {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    })
}
