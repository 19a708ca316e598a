//! openraft's own storage test suite against our sled log store and file snapshots.

mod support;

use linkrift_raft::flush::Flusher;
use linkrift_raft::log_store::{LogStore, SledGroupLog};
use linkrift_raft::state_machine::GroupStateMachine;
use linkrift_raft::{GroupId, NodeId, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use support::Kv;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore<SledGroupLog>, GroupStateMachine<Kv>, tempfile::TempDir>
    for SledBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<SledGroupLog>,
            GroupStateMachine<Kv>,
        ),
        StorageError<NodeId>,
    > {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path().join("raft.sled")).expect("sled opens");
        // Two groups in one Db, as on a real node: the suite's group must not see the other.
        let other = SledGroupLog::open(&db, Flusher::start(db.clone()), GroupId(2)).expect("log");
        linkrift_raft::log_store::GroupLog::append(&other, vec![(1, b"not ours".to_vec())])
            .expect("append");
        let log = SledGroupLog::open(&db, Flusher::start(db.clone()), GroupId(1)).expect("log");
        let sm =
            GroupStateMachine::open(&dir.path().join("g1"), Kv::default()).expect("state machine");
        Ok((dir, LogStore::new(log), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    support::init_tracing();
    Suite::test_all(SledBuilder).expect("storage suite passes");
}
