//! Three raft nodes in one process over real tonic on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cmds, Cluster, DEADLINE, ELECTION_TICKS, PROPOSE_TIMEOUT, TICK};
use vigil_raft::RaftError;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elects_leader_replicates_and_rejects_followers() {
    let mut c = Cluster::new(3, 1000).await;
    c.start_all().await;
    let leader = c.wait_leader().await;

    let want = cmds("a", 3);
    let mut last = 0;
    for cmd in &want {
        let index = c.handle(leader).propose(cmd.clone().into_bytes(), PROPOSE_TIMEOUT).await.unwrap();
        assert!(index > last, "indexes grow");
        last = index;
        // Ok means applied locally, and the published state already shows it.
        assert_eq!(c.state(leader).cmds.last(), Some(cmd));
        assert!(c.status(leader).applied >= index);
    }
    for id in 1..=3 {
        c.wait_cmds(id, &want).await;
    }

    let follower = (1..=3).find(|&id| id != leader).unwrap();
    match c.handle(follower).propose(b"nope".to_vec(), PROPOSE_TIMEOUT).await {
        Err(RaftError::NotLeader { leader_id }) => assert_eq!(leader_id, leader),
        other => panic!("propose on a follower: {other:?}"),
    }
    c.handle(leader).confirm_leadership(PROPOSE_TIMEOUT).await.unwrap();
    match c.handle(follower).confirm_leadership(PROPOSE_TIMEOUT).await {
        Err(RaftError::NotLeader { leader_id }) => assert_eq!(leader_id, leader),
        other => panic!("confirm_leadership on a follower: {other:?}"),
    }
    // Nothing applied that was refused.
    for id in 1..=3 {
        assert_eq!(c.state(id).cmds, want);
    }

    c.handle(leader).transfer_leader(follower);
    common::wait_until("leadership moves to the transferee", || {
        c.status(follower).is_leader && c.status(leader).leader_id == follower
    })
    .await;
    let (new, _) = c.propose("after-transfer").await;
    assert_eq!(new, follower);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_then_restart_catches_up() {
    let mut c = Cluster::new(3, 1000).await;
    c.start_all().await;
    let mut all = Vec::new();
    for cmd in cmds("x", 3) {
        c.propose(&cmd).await;
        all.push(cmd);
    }
    let old = c.wait_leader().await;
    c.stop(old).await;

    let new = c.wait_leader().await;
    assert_ne!(new, old);
    // Straight after an election: held until the new leader has committed in its term.
    c.handle(new).confirm_leadership(PROPOSE_TIMEOUT).await.unwrap();
    for cmd in cmds("y", 3) {
        let (leader, _) = c.propose(&cmd).await;
        assert_ne!(leader, old);
        all.push(cmd);
    }
    for id in c.running() {
        c.wait_cmds(id, &all).await;
    }
    c.handle(c.wait_leader().await).confirm_leadership(PROPOSE_TIMEOUT).await.unwrap();

    // The old leader comes back from its directory and catches up.
    c.start(old).await;
    c.wait_cmds(old, &all).await;
    let (_, index) = c.propose("z").await;
    all.push("z".to_string());
    for id in 1..=3 {
        c.wait_cmds(id, &all).await;
        let mut status = c.handle(id).status();
        status.wait_for(|s| s.applied >= index).await.unwrap();
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_leader_without_quorum() {
    let mut c = Cluster::new(3, 1000).await;
    c.start(1).await;
    // Pre-vote without a quorum never even raises the term. Watch several election timeouts.
    let window = TICK * ELECTION_TICKS as u32 * 6;
    let mut status = c.handle(1).status();
    let elected = tokio::time::timeout(window, status.wait_for(|s| s.is_leader || s.leader_id != 0)).await;
    assert!(elected.is_err(), "a lone node must not elect a leader: {:?}", c.status(1));
    assert!(matches!(
        c.handle(1).propose(b"x".to_vec(), PROPOSE_TIMEOUT).await,
        Err(RaftError::NotLeader { leader_id: 0 })
    ));
    assert!(matches!(
        c.handle(1).confirm_leadership(PROPOSE_TIMEOUT).await,
        Err(RaftError::NotLeader { leader_id: 0 })
    ));

    // Two of three is a quorum.
    c.start(2).await;
    c.propose("with-quorum").await;
    c.wait_cmds(1, &["with-quorum".to_string()]).await;

    // Back to one: a leader steps down (check quorum), nobody leads, proposals fail.
    c.stop(2).await;
    let mut status = c.handle(1).status();
    tokio::time::timeout(DEADLINE, status.wait_for(|s| !s.is_leader)).await.expect("the lone node steps down").unwrap();
    match c.handle(1).propose(b"lost".to_vec(), Duration::from_millis(500)).await {
        Err(RaftError::NotLeader { .. }) => {}
        other => panic!("propose without quorum: {other:?}"),
    }
    assert_eq!(c.state(1).cmds, vec!["with-quorum".to_string()]);
    c.stop_all().await;
}
