//! The identity file (`<data>/linkrift.json`): who this node is, written so a crash leaves
//! the old one or the new one.

use super::*;

/// What the node remembers about itself, in `<data>/linkrift.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Identity {
    pub(super) node_id: u64,
    pub(super) shard_count: u32,
    /// False between registering with a cluster and being admitted to it.
    #[serde(default = "admitted_by_default")]
    pub(super) admitted: bool,
    /// The token this node registered with (see [`MetaCommand::RegisterNode`]).
    #[serde(default)]
    pub(super) token: u128,
    /// Set when the node drained itself before a shutdown: it becomes active again when it
    /// starts.
    #[serde(default)]
    pub(super) drained_for_shutdown: bool,
    /// Set while this node creates a new cluster: written before anything else, so that a
    /// crash part-way leaves a directory that finishes the creation when it starts again.
    #[serde(default)]
    pub(super) bootstrapping: bool,
}

pub(super) fn admitted_by_default() -> bool {
    true
}

/// The identity file's name in the data directory.
pub const IDENTITY_FILE: &str = "linkrift.json";

pub(super) fn read_identity(dir: &Path) -> Result<Option<Identity>, OpenError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| OpenError::IdentityDamaged { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OpenError::Io {
            context: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// Writes the identity file so that a crash leaves the old one or the new one, synced to
/// the device (file and directory) before it returns.
pub(super) fn write_identity(dir: &Path, identity: &Identity) -> Result<(), OpenError> {
    let path = dir.join(IDENTITY_FILE);
    linkrift_raft::durable::write_atomically(
        &path,
        &serde_json::to_vec_pretty(identity).expect("identity encodes"),
    )
    .map_err(|source| OpenError::Io {
        context: format!("writing {}", path.display()),
        source,
    })
}

/// Refuses a data directory that holds data but no identity file: it is not a new node (its
/// data would be taken for a new cluster's, or a new member's), and not one this program
/// can tell the identity of. A crash while a new node is created leaves nothing but its
/// identity's temporary file, which does not count.
pub(super) fn refuse_data_without_identity(dir: &Path) -> Result<(), OpenError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(OpenError::Io {
                context: format!("reading {}", dir.display()),
                source,
            })
        }
    };
    let found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| *name != format!("{IDENTITY_FILE}.tmp") && name != "lost+found")
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(OpenError::DataWithoutIdentity {
        dir: dir.to_path_buf(),
        found,
    })
}

impl Core {
    /// Records in the identity file whether this node drained itself for a shutdown.
    pub(super) fn mark_drained_for_shutdown(&self, drained: bool) -> Result<(), OpenError> {
        let Some(identity) = read_identity(&self.data_dir)? else {
            return Err(OpenError::IdentityMissing {
                dir: self.data_dir.clone(),
            });
        };
        write_identity(
            &self.data_dir,
            &Identity {
                drained_for_shutdown: drained,
                ..identity
            },
        )
    }
}
