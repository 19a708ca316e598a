//! A network partition between loopback addresses: nftables rules in a table of the
//! test's own, deleted when it is dropped (also when the test fails). Nodes bind their
//! outbound peer and cluster connections to their own address, so a rule on the pair of
//! addresses cuts both directions of every connection between two nodes, while the test's
//! own requests (from 127.0.0.1) still reach every node.

use std::process::Command;

fn nft(args: &str) {
    let out = Command::new("nft")
        .args(args.split_whitespace())
        .output()
        .expect("nft runs (scripts/test installs nftables)");
    assert!(
        out.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packets dropped between the addresses of `cut`, in both directions, while it lives.
pub struct Partition {
    table: String,
}

impl Partition {
    /// Cuts every address of `a` off from every address of `b`.
    pub fn between(a: &[&str], b: &[&str]) -> Partition {
        let table = format!("linkrift_test_{}", std::process::id());
        nft(&format!("add table ip {table}"));
        nft(&format!(
            "add chain ip {table} out {{ type filter hook output priority 0 ; policy accept ; }}"
        ));
        for x in a {
            for y in b {
                for (from, to) in [(x, y), (y, x)] {
                    nft(&format!(
                        "add rule ip {table} out ip saddr {from} ip daddr {to} drop"
                    ));
                }
            }
        }
        Partition { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &self.table])
            .status();
    }
}
