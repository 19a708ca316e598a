//! A process frozen or starved of CPU through a cgroup (v1: the `freezer` and `cpu`
//! hierarchies this machine mounts), in a group of this run's own, removed when undone.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// A process moved into a cgroup of its own in one hierarchy; dropping it thaws the group,
/// moves the process back where it was and removes the group.
pub struct Cgroup {
    dir: PathBuf,
    pid: u32,
    /// The group it was in, to go back to.
    home: PathBuf,
}

impl Cgroup {
    /// Moves `pid` (all its threads) into a new group `name` of `controller`.
    pub fn enter(controller: &str, name: &str, pid: u32) -> Result<Cgroup> {
        let root = PathBuf::from("/sys/fs/cgroup").join(controller);
        // "/proc/PID/cgroup" lines: "ID:CONTROLLERS:PATH".
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let path = cgroups
            .lines()
            .filter_map(|l| {
                let mut fields = l.splitn(3, ':').skip(1);
                fields.next().zip(fields.next())
            })
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
            .map(|(_, path)| path.trim_start_matches('/').to_string())
            .with_context(|| format!("process {pid} is in no {controller} cgroup"))?;
        let home = root.join(path);
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        Ok(Cgroup { dir, pid, home })
    }

    /// Writes `value` to the group's `file` (`freezer.state`, `cpu.cfs_quota_us`).
    pub fn set(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("writing {value} to {}", self.dir.join(file).display()))
    }

    /// The group's `file`, trimmed.
    pub fn get(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.dir.join("freezer.state").exists() {
            let _ = self.set("freezer.state", "THAWED");
        }
        // A process that has exited meanwhile has nothing to move.
        let _ = std::fs::write(self.home.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}
