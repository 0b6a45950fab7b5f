//! An old primary that diverged (fenced after the failover, with writes the new primary never saw)
//! is rewound with pg_rewind and follows the new primary.

mod common;

use std::time::{Duration, Instant};

use common::{exec, has_rows, upstream, TestDir, SOON};
use vigil_pg::{DataDirState, PgError, StopMode};

#[tokio::test]
async fn fenced_old_primary_is_rewound_and_follows() {
    let dir = TestDir::new();
    let mut a = common::primary(&dir, "a").await;
    exec(&a, "CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'common')").await;
    let mut b = common::standby(&dir, "b", &a).await;
    let target = a.observe().await.current_lsn;
    wait_for!("b to replay a's WAL", SOON, (b.observe().await.replay_lsn >= target).then_some(()));

    // Failover while a still runs: b is promoted, then a takes writes b never sees (split brain the
    // lease is meant to prevent; here it makes the divergence certain), then a is fenced.
    b.promote(Duration::from_secs(30)).await.expect("promote b");
    exec(&a, "INSERT INTO t VALUES (2, 'lost on a')").await;
    assert!(a.fencer().fence_now());
    wait_for!("a to be down", SOON, (!a.is_running_child()).then_some(()));
    exec(&b, "INSERT INTO t VALUES (3, 'on b')").await;

    let slot = common::slot("a");
    b.ensure_slots(std::slice::from_ref(&slot)).await.expect("a's slot on b");
    a.stop(StopMode::Fast).await.expect("nothing left to stop");
    let t = Instant::now();
    a.rewind_from(&upstream(&b), &slot, None).await.expect("rewind a from b");
    eprintln!("TIMING rewind_from (CHECKPOINT + pg_rewind incl. crash recovery): {:?}", t.elapsed());
    assert_eq!(a.data_dir_state(), DataDirState::Standby);

    a.start().await.expect("start rewound a");
    wait_for!("a to stream from b on timeline 2", SOON, {
        let obs = a.observe().await;
        let from_b = obs.upstream.as_ref().map(|u| u.1) == Some(b.settings().port);
        (obs.streaming && obs.timeline == 2 && from_b).then_some(())
    });
    wait_for!("b's row on a", SOON, has_rows(&a, "SELECT 1 FROM t WHERE id = 3").await);
    assert!(has_rows(&a, "SELECT 1 FROM t WHERE id = 2").await.is_none(), "a's divergent write is gone");
    assert!(has_rows(&a, "SELECT 1 FROM t WHERE id = 1").await.is_some());

    let err = a.rewind_from(&upstream(&b), &slot, None).await.expect_err("refused while running");
    assert!(matches!(err.downcast_ref::<PgError>(), Some(PgError::Running(_))), "{err:#}");
}
