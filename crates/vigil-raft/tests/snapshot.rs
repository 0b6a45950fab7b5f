//! Log compaction and catching up through a snapshot.

#![allow(clippy::unwrap_used)]

mod common;

use common::{cmds, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_node_catches_up_via_snapshot() {
    let mut c = Cluster::new(3, 5).await;
    c.start_all().await;
    let leader = c.wait_leader().await;
    let lagging = (1..=3).find(|&id| id != leader).unwrap();
    c.stop(lagging).await;

    // Far more than the threshold: the others compact past everything the lagging node has.
    let mut all = Vec::new();
    for cmd in cmds("s", 20) {
        c.propose(&cmd).await;
        all.push(cmd);
    }
    for id in c.running() {
        c.wait_cmds(id, &all).await;
    }

    c.start(lagging).await;
    c.wait_cmds(lagging, &all).await;
    let caught_up = c.state(lagging);
    assert!(
        caught_up.applied_here.len() < all.len(),
        "node {lagging} should have restored a snapshot, yet applied every command itself: {:?}",
        caught_up.applied_here
    );
    for id in 1..=3 {
        assert_eq!(c.state(id).cmds, all, "node {id}");
    }

    // A node that compacted restarts from its own snapshot plus log.
    let leader = c.wait_leader().await;
    c.stop(leader).await;
    c.start(leader).await;
    c.wait_cmds(leader, &all).await;
    c.propose("after").await;
    all.push("after".to_string());
    for id in 1..=3 {
        c.wait_cmds(id, &all).await;
    }
    c.stop_all().await;
}
