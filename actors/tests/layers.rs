//! The import direction inside `linkrift-actors`: a module uses only modules of its own layer
//! or below, so that what is low (the task owner, the transport, the click pipeline) never
//! depends on what composes it (the service). Read from the source, so that a new upward
//! `use` fails here, with the file and the module it reached.

use std::path::{Path, PathBuf};

/// Layers from the bottom; a module's layer is that of its longest prefix listed.
const LAYERS: &[&[&str]] = &[
    // What the model crate gives (re-exported), and the task owner.
    &[
        "domain",
        "meta",
        "placement",
        "status",
        "tasks",
        "settings",
        "errors",
    ],
    // The state machine type the groups run, the shard actors, the click pipeline.
    &["groups", "shard", "clicks"],
    // The cluster transport and the near cache.
    &[
        "cluster::wire",
        "cluster::cache",
        "cluster::peers",
        "replicas",
        "meta_client",
    ],
    // The control loops and the mirror, which act on the node's state.
    &[
        "cluster::control",
        "cluster::driver",
        "cluster::liveness",
        "cluster::membership",
        "mirror",
    ],
    // The composition root: the service and the RPC dispatch.
    &["service"],
];

/// The listed module that `module` is, or is inside, and its layer (the longest match).
fn place(module: &str) -> Option<(usize, &'static str)> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, mods)| mods.iter().map(move |m| (i, *m)))
        .filter(|(_, m)| module == *m || module.starts_with(&format!("{m}::")))
        .max_by_key(|(_, m)| m.len())
}

/// The module path of a source file: `src/cluster/peers.rs` is `cluster::peers`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    parts.join("::")
}

/// Every module path a file of `module` names as `crate::a::b...` or `super::b...` (its
/// parent's `b`): the first two lower-case segments, from the crate root.
fn crate_paths(module: &str, text: &str) -> Vec<String> {
    let parent = module.rsplit_once("::").map(|(p, _)| p);
    let mut found = Vec::new();
    found.extend(paths_after(text, "crate::", None));
    found.extend(paths_after(text, "super::", parent));
    found
}

/// The module paths after each `marker` in `text`, under `prefix` when given.
fn paths_after(text: &str, marker: &str, prefix: Option<&str>) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        let whole_word = !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        rest = &rest[i + marker.len()..];
        if !whole_word {
            continue;
        }
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<&str> = path
            .split("::")
            .take_while(|s| s.starts_with(|c: char| c.is_ascii_lowercase()))
            .take(2)
            .collect();
        if !segments.is_empty() {
            let path = segments.join("::");
            found.push(match prefix {
                Some(p) => format!("{p}::{path}"),
                None => path,
            });
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
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
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "cluster" {
            // The crate root and the folder's index only declare modules.
            continue;
        }
        let Some((own, _)) = place(&module) else {
            panic!(
                "{module} ({}) is in no layer: add it to LAYERS",
                file.display()
            );
        };
        let text = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&module, &text) {
            let Some((theirs, _)) = place(&path) else {
                panic!("{module} names crate::{path}, which is in no layer: add it to LAYERS");
            };
            if theirs <= own {
                continue;
            }
            upward.push(format!(
                "{module} ({}) uses crate::{path} (layer {theirs}, above its own {own})",
                file.display()
            ));
        }
    }
    assert!(
        upward.is_empty(),
        "imports from above:\n{}",
        upward.join("\n")
    );
}

#[test]
fn modules_are_placed_by_their_longest_listed_prefix() {
    assert_eq!(place("tasks"), Some((0, "tasks")));
    assert_eq!(place("clicks::event"), Some((1, "clicks")));
    assert_eq!(place("cluster::peers"), Some((2, "cluster::peers")));
    assert_eq!(place("cluster::driver"), Some((3, "cluster::driver")));
    assert_eq!(place("service::routing"), Some((4, "service")));
    assert_eq!(place("cluster"), None);
    assert_eq!(
        crate_paths(
            "cluster::driver",
            "use crate::cluster::wire::{Notice};\nlet t = crate::tasks::Tasks::new();\n\
             use super::control::Control; use super::*; let x = my_crate::y;"
        ),
        ["cluster::wire", "tasks", "cluster::control"]
    );
}
