//! The model stays pure: its manifest names no runtime, Raft, network or database crate,
//! and its sources use none (a dependency added by hand would show here first).

use std::path::Path;

const RUNNING_CRATES: &[&str] = &[
    "tokio",
    "openraft",
    "sled",
    "ractor",
    "ractor_cluster",
    "linkrift-raft",
    "linkrift_raft",
    "linkrift-actors",
    "linkrift_actors",
    "sqlx",
    "clickhouse",
    "reqwest",
    "axum",
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_model_depends_on_nothing_that_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let dependencies = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    for name in RUNNING_CRATES {
        assert!(
            !dependencies
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))
                    || l.trim_start().starts_with(&format!("{name}."))
                    || l.trim_start().starts_with(&format!("{name}="))),
            "model/Cargo.toml depends on {name}"
        );
    }
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() >= 10, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for name in RUNNING_CRATES.iter().filter(|n| !n.contains('-')) {
                assert!(
                    !line.contains(&format!("{name}::")),
                    "{} uses {name}: {line}",
                    file.display()
                );
            }
        }
    }
}
