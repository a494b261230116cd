//! Store tests of several bridges on one database: leases shared and handed
//! over, a silent bridge's agents taken with an honest gap, fencing, and
//! command transactions claimed once. Both backends (see `tests.rs`).

use std::collections::{BTreeSet, HashMap};

use super::test_database::{backend_tests, TestDatabase};
use super::tests::{agent, at, row, rows, state};
use super::*;
use crate::model::{AgentId, Change, Previous, Status};

/// Lease length in these tests: long enough for a few quick steps, short
/// enough to let one expire.
const LEASE_MS: i64 = 1_500;

fn agents() -> Vec<AgentId> {
    (0..20).map(|i| agent(&format!("a{i:02}"))).collect()
}

fn ids(agents: &[AgentId]) -> BTreeSet<String> {
    agents.iter().map(ToString::to_string).collect()
}

async fn bridges_share_hand_over_cleanly_and_fence(database: &TestDatabase) {
    let store = &database.store;
    let all = agents();
    let first = store.cluster_tick("a", &all, LEASE_MS, &[]).await.unwrap();
    assert_eq!(first.live, ["a"]);
    assert_eq!(ids(&first.owned), ids(&all), "alone, a owns every agent");
    assert!(first
        .gained
        .iter()
        .all(|(_, handover)| *handover == Handover::Restart));

    // b joins: nothing is taken from a behind its back.
    let joined = store.cluster_tick("b", &all, LEASE_MS, &[]).await.unwrap();
    assert_eq!(joined.live, ["a", "b"]);
    assert!(joined.owned.is_empty() && joined.gained.is_empty());
    // a sees b: it keeps b's share one more step, then releases it.
    let handing = store.cluster_tick("a", &all, LEASE_MS, &[]).await.unwrap();
    assert!(!handing.to_release.is_empty() && !handing.owned.is_empty());
    assert_eq!(handing.owned.len() + handing.to_release.len(), all.len());
    let released = store
        .cluster_tick("a", &all, LEASE_MS, &handing.to_release)
        .await
        .unwrap();
    assert_eq!(ids(&released.owned), ids(&handing.owned));
    assert!(released.to_release.is_empty());
    let taken = store.cluster_tick("b", &all, LEASE_MS, &[]).await.unwrap();
    assert_eq!(ids(&taken.owned), ids(&handing.to_release));
    assert!(taken
        .gained
        .iter()
        .all(|(_, handover)| *handover == Handover::Released));
    let a_owns = ids(&released.owned);
    let b_owns = ids(&taken.owned);
    assert!(a_owns.is_disjoint(&b_owns));
    assert_eq!(a_owns.union(&b_owns).count(), all.len());
    assert_eq!(
        taken.shares,
        [
            ("a".to_owned(), a_owns.len()),
            ("b".to_owned(), b_owns.len())
        ]
    );

    // Fencing: a cannot write for an agent b holds; its own go through.
    let theirs = taken.owned[0].clone();
    let ours = released.owned[0].clone();
    let change = |id: &AgentId| Change {
        state: state(id.as_str(), Status::Available, 10, 0),
        previous: Some(Previous {
            status: Status::Unknown,
            since: at(0),
        }),
    };
    let options = CommitOptions {
        bridge: "a",
        fenced: true,
        batch_id: 1,
        heartbeat_at: None,
    };
    let mut batch = vec![change(&theirs), change(&ours)];
    let outcome = store.commit_changes(&mut batch, &options).await.unwrap();
    assert_eq!(
        outcome,
        CommitOutcome::Fenced {
            lost: vec![theirs.clone()]
        }
    );
    assert!(
        store
            .intervals(None, at(-86_400), at(86_400))
            .await
            .unwrap()
            .is_empty(),
        "nothing of a fenced batch is stored"
    );
    let mut batch = vec![change(&ours)];
    let outcome = store.commit_changes(&mut batch, &options).await.unwrap();
    assert!(
        matches!(outcome, CommitOutcome::Stored { .. }),
        "{outcome:?}"
    );

    // b falls silent past its lease: a takes its agents over, from b's
    // last heartbeat, and a's own expired leases come back as expired too.
    tokio::time::sleep(std::time::Duration::from_millis(LEASE_MS as u64 + 200)).await;
    let alone = store.cluster_tick("a", &all, LEASE_MS, &[]).await.unwrap();
    assert_eq!(alone.live, ["a"]);
    assert_eq!(ids(&alone.owned), ids(&all));
    let handovers: HashMap<AgentId, Handover> = alone.gained.iter().cloned().collect();
    for id in &taken.owned {
        assert!(
            matches!(handovers[id], Handover::Expired { owner_alive } if owner_alive <= alone.now_ms - LEASE_MS),
            "{id}: {:?}",
            handovers[id]
        );
    }
    // b comes back: it waits for a to hand its share over.
    let back = store.cluster_tick("b", &all, LEASE_MS, &[]).await.unwrap();
    assert!(back.owned.is_empty(), "b takes nothing a holds: {back:?}");

    // Leaving: the last bridge closes what it held.
    let closed_by_a = store.leave_cluster("a", LEASE_MS, at(50)).await.unwrap();
    assert_eq!(
        closed_by_a, 0,
        "b is alive: it takes a's agents over and goes on"
    );
    let closed_by_b = store.leave_cluster("b", LEASE_MS, at(50)).await.unwrap();
    assert_eq!(closed_by_b, 0, "b held nothing");
}

async fn take_over_keeps_a_clean_hand_over_and_marks_a_silence_unknown(database: &TestDatabase) {
    let store = &database.store;
    let x = agent("x");
    let y = agent("y");
    store
        .record(&[
            state("x", Status::Available, 0, 1),
            state("y", Status::OnCall, 0, 2),
        ])
        .await
        .unwrap();
    let ms = |seconds: i64| at(seconds).timestamp_millis();
    let handovers: HashMap<AgentId, Handover> = [
        (x.clone(), Handover::Released),
        (
            y.clone(),
            Handover::Expired {
                owner_alive: ms(40),
            },
        ),
    ]
    .into_iter()
    .collect();
    let states = store
        .take_over(
            &[(x.clone(), "X".into()), (y.clone(), "Y".into())],
            at(100),
            &handovers,
        )
        .await
        .unwrap();
    let by_agent: HashMap<&AgentId, &crate::model::AgentState> =
        states.iter().map(|state| (&state.agent, state)).collect();
    assert_eq!(
        (by_agent[&x].status, by_agent[&x].since),
        (Status::Available, at(0))
    );
    assert_eq!(
        (by_agent[&y].status, by_agent[&y].since),
        (Status::OnCall, at(100))
    );
    assert_eq!(
        rows(
            &store
                .intervals(None, at(-86_400), at(86_400))
                .await
                .unwrap()
        ),
        [
            row("x", Status::Available, 0, None, Some(1)),
            row("y", Status::OnCall, 0, Some(40), Some(2)),
            row("y", Status::Unknown, 40, Some(100), None),
            row("y", Status::OnCall, 100, None, None),
        ],
        "a clean hand-over goes on; a silent owner's time is unknown"
    );
}

async fn command_transactions_are_claimed_once(database: &TestDatabase) {
    let store = &database.store;
    // a and b are alive; c never was.
    store.cluster_tick("a", &[], LEASE_MS, &[]).await.unwrap();
    store.cluster_tick("b", &[], LEASE_MS, &[]).await.unwrap();
    let window = 60_000;
    let claim = |transaction: &'static str, bridge: &'static str| async move {
        store
            .claim_transaction(
                "base/request/queue/500/add",
                transaction,
                bridge,
                window,
                LEASE_MS,
            )
            .await
            .unwrap()
    };
    assert_eq!(claim("\"t1\"", "a").await, Claim::Run);
    assert_eq!(claim("\"t1\"", "b").await, Claim::RunningOn("a".into()));
    store
        .finish_transaction(
            "base/request/queue/500/add",
            "\"t1\"",
            Some(b"{\"status\":\"ok\"}"),
        )
        .await
        .unwrap();
    assert_eq!(
        claim("\"t1\"", "b").await,
        Claim::Answered(b"{\"status\":\"ok\"}".to_vec())
    );
    assert_eq!(
        claim("\"t1\"", "a").await,
        Claim::Answered(b"{\"status\":\"ok\"}".to_vec())
    );

    // A failure is forgotten: a retry runs again.
    assert_eq!(claim("\"t2\"", "a").await, Claim::Run);
    store
        .finish_transaction("base/request/queue/500/add", "\"t2\"", None)
        .await
        .unwrap();
    assert_eq!(claim("\"t2\"", "b").await, Claim::Run);

    // A claim of a bridge that is not alive is taken over.
    assert_eq!(claim("\"t3\"", "c").await, Claim::Run);
    assert_eq!(claim("\"t3\"", "b").await, Claim::Run);
    assert_eq!(claim("\"t3\"", "a").await, Claim::RunningOn("b".into()));

    // Old claims are pruned.
    assert_eq!(store.prune_transactions(window).await.unwrap(), 0);
    assert_eq!(store.prune_transactions(-1).await.unwrap(), 3);
}

backend_tests!(
    bridges_share_hand_over_cleanly_and_fence,
    take_over_keeps_a_clean_hand_over_and_marks_a_silence_unknown,
    command_transactions_are_claimed_once,
);

/// A bridge paused inside a write transaction (SIGSTOP, a frozen VM) holds
/// row locks every other bridge's commit needs (the `last_seq` counter);
/// the server ends its session after its idle limit, so the others go on
/// and the paused one finds its transaction gone when it wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pbx2mqtt_postgres),
    ignore = "set PBX2MQTT_TEST_POSTGRES_URL to run"
)]
async fn a_bridge_paused_inside_a_transaction_does_not_stall_the_others() {
    let database = TestDatabase::create(super::test_database::Backend::Postgres)
        .await
        .expect("PBX2MQTT_TEST_POSTGRES_URL was set when the tests were built");
    let store = &database.store;
    store
        .record(&[state("x", Status::Available, 0, 1)])
        .await
        .unwrap();
    let paused = database.open().await;
    // The bridge's own kind of write transaction (`begin_write`).
    let mut transaction = super::dialect::WritePool::begin_write(paused.postgres_pool().unwrap())
        .await
        .unwrap();
    sqlx::query("UPDATE bridge_meta SET value = value WHERE key = 'last_seq'")
        .execute(&mut *transaction)
        .await
        .unwrap();

    let options = CommitOptions {
        bridge: "a",
        fenced: false,
        batch_id: 1,
        heartbeat_at: None,
    };
    let mut batch = vec![Change {
        state: state("x", Status::OnCall, 10, 0),
        previous: Some(Previous {
            status: Status::Available,
            since: at(0),
        }),
    }];
    // Without the idle limit this waits until the paused bridge commits,
    // which it never does here.
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.commit_changes(&mut batch, &options),
    )
    .await
    .expect("the commit waited for the paused bridge's locks")
    .unwrap();
    assert_eq!(outcome, CommitOutcome::Stored { first_seq: 2 });
    let woke = transaction.commit().await;
    assert!(woke.is_err(), "the paused session was ended: {woke:?}");
    paused.close().await;
    database.finish().await;
}
