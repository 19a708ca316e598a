//! The meta group's state machine: the cluster's API keys.
//!
//! Keys are identified by an id chosen by the proposer, so a retried create is answered
//! with the key it already made instead of making a second one.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::domain::{ApiKeyHash, ApiKeyRecord};

/// A change to the meta group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Store a new key.
    CreateKey(ApiKeyRecord),
    /// Revoke a key.
    RevokeKey {
        /// The key's id.
        id: String,
        /// Proposer's clock, Unix milliseconds.
        at: i64,
    },
}

/// What a meta command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOutcome {
    /// The key is stored (now, or by an earlier try of the same request).
    KeyCreated(ApiKeyRecord),
    /// The key is revoked (now, or earlier).
    KeyRevoked(ApiKeyRecord),
    /// No key has that id.
    KeyNotFound,
    /// Another key already has that hash.
    KeyExists,
}

#[derive(Default, Serialize, Deserialize)]
struct Keys {
    by_id: BTreeMap<String, ApiKeyRecord>,
    #[serde(skip)]
    by_hash: HashMap<ApiKeyHash, String>,
}

/// Reads the keys (for authentication and listing).
#[derive(Clone, Default)]
pub struct MetaReader {
    keys: Arc<RwLock<Keys>>,
}

impl MetaReader {
    /// The key whose hash is `hash`, revoked or not.
    pub fn by_hash(&self, hash: &ApiKeyHash) -> Option<ApiKeyRecord> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.by_hash
            .get(hash)
            .and_then(|id| keys.by_id.get(id))
            .cloned()
    }

    /// Every key, by id.
    pub fn all(&self) -> Vec<ApiKeyRecord> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .values()
            .cloned()
            .collect()
    }

    /// Whether any key exists.
    pub fn is_empty(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .is_empty()
    }
}

/// The meta state machine.
#[derive(Default)]
pub struct MetaState {
    reader: MetaReader,
}

impl MetaState {
    /// A reader sharing this state.
    pub fn reader(&self) -> MetaReader {
        self.reader.clone()
    }

    /// Applies one command.
    pub fn apply(&mut self, command: MetaCommand) -> MetaOutcome {
        let mut keys = self.reader.keys.write().unwrap_or_else(|p| p.into_inner());
        match command {
            MetaCommand::CreateKey(record) => {
                if let Some(existing) = keys.by_id.get(&record.id) {
                    return if existing.hash == record.hash {
                        MetaOutcome::KeyCreated(existing.clone())
                    } else {
                        MetaOutcome::KeyExists
                    };
                }
                if keys.by_hash.contains_key(&record.hash) {
                    return MetaOutcome::KeyExists;
                }
                keys.by_hash.insert(record.hash.clone(), record.id.clone());
                keys.by_id.insert(record.id.clone(), record.clone());
                MetaOutcome::KeyCreated(record)
            }
            MetaCommand::RevokeKey { id, at } => match keys.by_id.get_mut(&id) {
                None => MetaOutcome::KeyNotFound,
                Some(record) => {
                    record.revoked_at.get_or_insert(at);
                    MetaOutcome::KeyRevoked(record.clone())
                }
            },
        }
    }

    /// Writes every key.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let keys = self.reader.keys.read().unwrap_or_else(|p| p.into_inner());
        out.write_all(&linkrift_raft::codec::encode(&*keys))
    }

    /// Replaces every key with a snapshot's.
    pub fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let mut restored: Keys = linkrift_raft::codec::decode(&bytes)?;
        restored.by_hash = restored
            .by_id
            .values()
            .map(|r| (r.hash.clone(), r.id.clone()))
            .collect();
        *self.reader.keys.write().unwrap_or_else(|p| p.into_inner()) = restored;
        Ok(())
    }
}
