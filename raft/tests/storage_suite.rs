//! openraft's own storage test suite against our sled log store and file snapshots.

mod support;

use linkrift_raft::flush::Flusher;
use linkrift_raft::log_store::{LogStore, SledGroupLog};
use linkrift_raft::state_machine::GroupStateMachine;
use linkrift_raft::{DurableDb, GroupId, NodeId, StorageFault, TypeConfig};
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
        let durable = DurableDb::open(&dir.path().join("raft.sled"), 1 << 20).expect("sled opens");
        let db = durable.db().clone();
        let flusher = Flusher::start(durable, StorageFault::default());
        // Two groups in one Db, as on a real node: the suite's group must not see the other.
        let other = SledGroupLog::open(&db, flusher.clone(), GroupId(2)).expect("log");
        linkrift_raft::log_store::GroupLog::append(&other, vec![(1, b"not ours".to_vec())])
            .expect("append");
        let log = SledGroupLog::open(&db, flusher, GroupId(1)).expect("log");
        let sm = GroupStateMachine::open(
            &dir.path().join("g1"),
            Kv::default(),
            StorageFault::default(),
        )
        .expect("state machine");
        Ok((dir, LogStore::new(log, StorageFault::default()), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    support::init_tracing();
    Suite::test_all(SledBuilder).expect("storage suite passes");
}
