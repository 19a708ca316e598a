//! Network partitions between nodes: nftables rules on the loopback addresses, in a table
//! of this run's own, deleted when the run ends (also when it fails).

use std::process::Command;

use anyhow::{bail, Result};

/// This run's nftables table.
pub struct Net {
    table: String,
}

fn nft(args: &str) -> Result<String> {
    let out = Command::new("nft").args(args.split_whitespace()).output()?;
    if !out.status.success() {
        bail!("nft {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Net {
    /// Creates the table with an output chain that accepts everything.
    pub fn new() -> Result<Net> {
        let table = format!("linkrift_chaos_{}", std::process::id());
        nft(&format!("add table ip {table}"))?;
        nft(&format!(
            "add chain ip {table} out {{ type filter hook output priority 0 ; policy accept ; }}"
        ))?;
        Ok(Net { table })
    }

    /// Drops every packet from `from` to `to` (IPv4 addresses).
    pub fn drop_between(&self, pairs: &[(String, String)]) -> Result<()> {
        for (from, to) in pairs {
            nft(&format!(
                "add rule ip {} out ip saddr {from} ip daddr {to} drop",
                self.table
            ))?;
        }
        Ok(())
    }

    /// Drops `percent`% of the packets from `from` to `to`, at random.
    pub fn lose_between(&self, pairs: &[(String, String)], percent: u32) -> Result<()> {
        for (from, to) in pairs {
            nft(&format!(
                "add rule ip {} out ip saddr {from} ip daddr {to} numgen random mod 100 lt {percent} drop",
                self.table
            ))?;
        }
        Ok(())
    }

    /// The rules now in force, as nft lists them (to show that a partition is in place).
    pub fn rules(&self) -> Result<usize> {
        let listing = nft(&format!("list chain ip {} out", self.table))?;
        Ok(listing
            .lines()
            .filter(|l| l.trim_end().ends_with("drop"))
            .count())
    }

    /// Removes every rule.
    pub fn heal(&self) -> Result<()> {
        nft(&format!("flush chain ip {} out", self.table))?;
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table ip {}", self.table));
    }
}

/// Both directions between every node of `a` and every node of `b`.
pub fn split(a: &[String], b: &[String]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for x in a {
        for y in b {
            pairs.push((x.clone(), y.clone()));
            pairs.push((y.clone(), x.clone()));
        }
    }
    pairs
}

/// Jepsen's "majorities ring": each node reaches a majority (itself and its nearest
/// neighbours on a ring), but no two nodes see the same majority. With three nodes each
/// one hears only the next one: one-way rules.
pub fn majorities_ring(ips: &[String]) -> Vec<(String, String)> {
    let n = ips.len();
    let reach = n / 2;
    let mut pairs = Vec::new();
    for (i, from) in ips.iter().enumerate() {
        for (j, to) in ips.iter().enumerate() {
            let ahead = (j + n - i) % n;
            if i != j && ahead > reach {
                pairs.push((from.clone(), to.clone()));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_of_a_majorities_ring_reaches_a_different_majority() {
        for n in [3usize, 5] {
            let ips: Vec<String> = (1..=n).map(|i| format!("10.0.0.{i}")).collect();
            let cut = majorities_ring(&ips);
            let mut seen = std::collections::HashSet::new();
            for from in &ips {
                let reaches: Vec<&String> = ips
                    .iter()
                    .filter(|to| !cut.contains(&(from.clone(), (*to).clone())))
                    .collect();
                assert_eq!(reaches.len(), n / 2 + 1, "{from} reaches a bare majority");
                let mut set = reaches.clone();
                set.sort();
                assert!(seen.insert(set), "two nodes see the same majority");
            }
        }
    }
}
