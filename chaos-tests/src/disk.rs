//! A node's data directory on its own `faultfs` mount (`faultfs/`): an in-memory
//! filesystem that forgets, on command, every write the node did not sync. A power cut is
//! SIGKILL, then that command: what the page cache held and no `fsync` covered is gone, as
//! after a real one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A mounted `faultfs`, unmounted when dropped.
pub struct PowerDisk {
    child: Child,
    pub mount: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl PowerDisk {
    /// Mounts a new, empty `faultfs` (the program `bin`) at `mount`, created if needed.
    pub fn mount(bin: &Path, mount: PathBuf) -> Result<PowerDisk> {
        std::fs::create_dir_all(&mount)?;
        let mut child = Command::new(bin)
            .arg(&mount)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut disk = PowerDisk {
            child,
            mount,
            lines,
        };
        disk.wait_line("faultfs: mounted")
            .with_context(|| format!("mounting faultfs at {}", disk.mount.display()))?;
        Ok(disk)
    }

    fn wait_line(&mut self, prefix: &str) -> Result<String> {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => continue,
                Err(_) => bail!(
                    "faultfs did not print {prefix:?} within 20 s ({})",
                    match self.child.try_wait() {
                        Ok(Some(status)) => format!("it exited: {status}"),
                        _ => "still running".into(),
                    }
                ),
            }
        }
    }

    /// Forgets every unsynced write now; how many bytes that was. The processes using
    /// the mount must be dead already.
    pub fn cut(&mut self) -> Result<u64> {
        let sent = Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status()?;
        if !sent.success() {
            bail!("could not signal faultfs");
        }
        let line = self.wait_line("faultfs: power cut, ")?;
        line.trim_start_matches("faultfs: power cut, ")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("faultfs said {line:?}"))
    }
}

impl Drop for PowerDisk {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
