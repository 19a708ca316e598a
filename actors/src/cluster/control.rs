//! The handles the control loops act through: the node's settings, its Raft runtime, the
//! meta client, the replicas it hosts, the peers, its task owner, and where it records its
//! departure. The service composes one and hands it to the placement driver, liveness,
//! handover and the orphaned-replica check; none of them sees the service.

use std::sync::Arc;

use linkrift_raft::{Group, RaftNode};

use super::membership::Departure;
use super::peers::Peers;
use crate::groups::GroupState;
use crate::meta_client::MetaClient;
use crate::replicas::Replicas;
use crate::settings::Settings;
use crate::tasks::Tasks;

/// What the control loops of one node act through.
pub(crate) struct Control {
    pub(crate) settings: Settings,
    pub(crate) node: Arc<RaftNode<GroupState>>,
    pub(crate) meta: MetaClient,
    pub(crate) replicas: Arc<Replicas>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) tasks: Tasks,
    /// Set once this node learns it is no longer a member.
    pub(crate) departure: tokio::sync::watch::Sender<Option<Departure>>,
}

impl Control {
    /// The meta group and every shard group this node holds.
    pub(crate) fn all_groups(&self) -> Vec<Group<GroupState>> {
        let mut groups = vec![self.meta.group.clone()];
        groups.extend(self.replicas.pin().values().map(|l| l.group.clone()));
        groups
    }
}
