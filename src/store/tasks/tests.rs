use serde_json::json;

use super::*;
use crate::store::approvals::{ApprovalRequest, Vote, VoteDecision};
use crate::store::testutil::TempDir;
use crate::store::{Location, ORPHANED, Status};

const T0: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

fn request(id: &str, key: &str) -> ApprovalRequest {
    ApprovalRequest {
        id: id.into(),
        key: key.into(),
        server: "fs".into(),
        tool: "delete_file".into(),
        arguments: json!({"path": "/tmp/x"}),
        agent: Some("claude".into()),
        risk: None,
        rule: Some("deletes".into()),
        rule_reason: None,
        workflow: "default".into(),
        required_approvals: 1,
        grant_secs: 0,
        trace: json!([]),
        created_at: T0,
        expires_at: T0 + HOUR,
        tool_info: None,
        channel: Some("task".into()),
        approvers: None,
    }
}

fn task(id: &str, owner: &str, approval: &str, key: &str) -> GateTask {
    GateTask {
        id: id.into(),
        owner: owner.into(),
        era: "legacy".into(),
        approval_id: Some(approval.into()),
        key: key.into(),
        server: "fs".into(),
        tool: "delete_file".into(),
        params: r#"{"name":"delete_file","arguments":{"path":"/tmp/x"}}"#.into(),
        state: TaskState::Working,
        status_message: Some("waiting".into()),
        result: None,
        error: None,
        created_at: T0,
        updated_at: T0,
        ttl_ms: Some(HOUR),
    }
}

fn approve() -> Vote {
    Vote {
        actor: "alice".into(),
        credential: "alice".into(),
        decision: VoteDecision::Approve,
        notes: None,
        reason: None,
    }
}

async fn approved(store: &Store, id: &str, key: &str) {
    store.insert_approval(request(id, key)).await.unwrap();
    store.record_vote(id, approve(), 1, T0 + 1).await.unwrap();
}

#[tokio::test]
async fn the_same_owner_and_call_get_the_same_open_task() {
    let store = Store::open(crate::store::testutil::location().await).await.unwrap();
    store.insert_approval(request("a", "k")).await.unwrap();
    let first = store.open_task(task("mcpg-1", "agent:x", "a", "k"), T0).await.unwrap();
    assert!(!first.joined);
    assert_eq!(first.task.state, TaskState::Working);
    let again = store.open_task(task("mcpg-2", "agent:x", "a", "k"), T0 + 1).await.unwrap();
    assert!(again.joined);
    assert_eq!(again.task.id, "mcpg-1");
    let other = store.open_task(task("mcpg-3", "agent:y", "a", "k"), T0 + 1).await.unwrap();
    assert!(!other.joined, "another owner gets its own task");
    // Owner-checked reads.
    assert!(store.task("agent:x", "mcpg-1").await.unwrap().is_some());
    assert!(store.task("agent:y", "mcpg-1").await.unwrap().is_none());
    assert!(store.task("agent:x", "mcpg-nope").await.unwrap().is_none());
    // A task that ended no longer joins: the retry opens a new one.
    let cancelled = store.cancel_task("agent:x", "mcpg-1", "cancelled", json!({}), T0 + 2).await.unwrap();
    assert!(matches!(cancelled, Some(Cancelled::Now(_))));
    let fresh = store.open_task(task("mcpg-4", "agent:x", "a", "k"), T0 + 3).await.unwrap();
    assert!(!fresh.joined);
    assert_eq!(fresh.task.id, "mcpg-4");
}

#[tokio::test]
async fn claim_runs_only_an_approved_working_task_and_finish_records_both() {
    let store = Store::open(crate::store::testutil::location().await).await.unwrap();
    store.insert_approval(request("a", "k")).await.unwrap();
    store.open_task(task("mcpg-1", "agent:x", "a", "k"), T0).await.unwrap();
    assert_eq!(store.claim_task("mcpg-1", T0 + 1).await.unwrap(), TaskClaim::Approval(Claim::Pending));
    store.record_vote("a", approve(), 1, T0 + 2).await.unwrap();
    let TaskClaim::Run(running) = store.claim_task("mcpg-1", T0 + 3).await.unwrap() else { panic!("runs") };
    assert_eq!(running.state, TaskState::Running);
    assert!(matches!(store.claim_task("mcpg-1", T0 + 4).await.unwrap(), TaskClaim::NotWorking(_)));
    let claimed: Option<String> =
        store.call(|c| c.query_one("SELECT task_id FROM claims", params![])?.get(0)).await.unwrap();
    assert_eq!(claimed.as_deref(), Some("mcpg-1"), "the claim names its task");
    let result = json!({"content": [{"type": "text", "text": "done"}]});
    let (done, approval) =
        store.finish_task("mcpg-1", TaskEnd::Result(result.clone()), "Completed", T0 + 5).await.unwrap();
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.result.as_deref().map(|r| serde_json::from_str::<Value>(r).unwrap()), Some(result));
    assert_eq!(approval.unwrap().status, Status::Executed);
    let claims: i64 = store.call(|c| c.query_one("SELECT count(*) FROM claims", params![])?.get(0)).await.unwrap();
    assert_eq!(claims, 0);
    assert!(matches!(
        store.finish_task("mcpg-1", TaskEnd::Result(json!({})), "again", T0 + 6).await,
        Err(StoreError::InvalidState(_))
    ));
}

#[tokio::test]
async fn a_released_task_is_working_again_and_its_approval_usable() {
    let store = Store::open(crate::store::testutil::location().await).await.unwrap();
    approved(&store, "a", "k").await;
    store.open_task(task("mcpg-1", "agent:x", "a", "k"), T0).await.unwrap();
    assert!(matches!(store.claim_task("mcpg-1", T0 + 2).await.unwrap(), TaskClaim::Run(_)));
    let back = store.release_task("mcpg-1", T0 + 3).await.unwrap();
    assert_eq!(back.state, TaskState::Working);
    assert_eq!(store.get_approval("a").await.unwrap().unwrap().uses, 0);
    assert!(matches!(store.claim_task("mcpg-1", T0 + 4).await.unwrap(), TaskClaim::Run(_)));
}

#[tokio::test]
async fn settle_ends_only_a_working_task_and_a_cancelled_run_stays_cancelled() {
    let store = Store::open(crate::store::testutil::location().await).await.unwrap();
    store.insert_approval(request("a", "k")).await.unwrap();
    store.open_task(task("mcpg-1", "agent:x", "a", "k"), T0).await.unwrap();
    let denial = json!({"content": [{"type": "text", "text": "denied"}], "isError": true});
    let settled = store.settle_task("mcpg-1", TaskEnd::Result(denial), "Denied", T0 + 1).await.unwrap().unwrap();
    assert_eq!((settled.state, settled.status_message.as_deref()), (TaskState::Completed, Some("Denied")));
    assert!(store.settle_task("mcpg-1", TaskEnd::Result(json!({})), "again", T0 + 2).await.unwrap().is_none());
    assert!(matches!(
        store.cancel_task("agent:x", "mcpg-1", "c", json!({}), T0 + 3).await.unwrap(),
        Some(Cancelled::Terminal(_))
    ));
    assert!(store.cancel_task("agent:y", "mcpg-1", "c", json!({}), T0 + 3).await.unwrap().is_none());

    approved(&store, "b", "kb").await;
    store.open_task(task("mcpg-2", "agent:x", "b", "kb"), T0).await.unwrap();
    assert!(matches!(store.claim_task("mcpg-2", T0 + 2).await.unwrap(), TaskClaim::Run(_)));
    let Some(Cancelled::Now(t)) = store.cancel_task("agent:x", "mcpg-2", "c", json!({}), T0 + 3).await.unwrap() else {
        panic!("a running task is cancelled for its client")
    };
    assert_eq!(t.state, TaskState::Cancelled);
    // The call that was already upstream ends: the task stays cancelled, the approval records the run.
    let result = json!({"content": [{"type": "text", "text": "done"}]});
    let (after, approval) = store.finish_task("mcpg-2", TaskEnd::Result(result), "Completed", T0 + 4).await.unwrap();
    assert_eq!((after.state, after.status_message.as_deref()), (TaskState::Cancelled, Some("c")));
    assert_eq!(approval.unwrap().status, Status::Executed);
    assert!(store.finish_task("mcpg-2", TaskEnd::Result(json!({})), "again", T0 + 5).await.is_err(), "finished once");

    // Cancelled between its claim and the send: the claim goes back, the task stays cancelled.
    approved(&store, "c", "kc").await;
    store.open_task(task("mcpg-3", "agent:x", "c", "kc"), T0).await.unwrap();
    assert!(matches!(store.claim_task("mcpg-3", T0 + 2).await.unwrap(), TaskClaim::Run(_)));
    store.cancel_task("agent:x", "mcpg-3", "c", json!({}), T0 + 3).await.unwrap();
    let back = store.release_task("mcpg-3", T0 + 4).await.unwrap();
    assert_eq!(back.state, TaskState::Cancelled);
    assert_eq!(store.get_approval("c").await.unwrap().unwrap().uses, 0, "the approval is usable again");
    // A task cancelled while working never held a claim: finishing it finishes nobody's run.
    store.open_task(task("mcpg-4", "agent:x", "c", "kc"), T0 + 5).await.unwrap();
    store.cancel_task("agent:x", "mcpg-4", "c", json!({}), T0 + 6).await.unwrap();
    assert!(store.finish_task("mcpg-4", TaskEnd::Result(json!({})), "x", T0 + 7).await.is_err());
}

/// Twenty claims of one task from twenty handles on one file (as if twenty processes): one runs.
#[tokio::test]
async fn twenty_concurrent_claims_make_one_run() {
    // One database for every handle: a file (as if each were a process), or PostgreSQL (replicas).
    let (loc, _dir) = crate::store::testutil::shared_location("task-claims").await;
    let first = Store::open(loc.clone()).await.unwrap();
    approved(&first, "a", "k").await;
    first.open_task(task("mcpg-1", "agent:x", "a", "k"), T0).await.unwrap();
    let mut handles = vec![first];
    for _ in 1..20 {
        handles.push(Store::open(loc.clone()).await.unwrap());
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let claims = futures::future::join_all(handles.into_iter().map(|store| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            store.claim_task("mcpg-1", T0 + 2).await.unwrap()
        })
    }))
    .await;
    let runs = claims.iter().filter(|c| matches!(c, Ok(TaskClaim::Run(_)))).count();
    assert_eq!(runs, 1, "{claims:?}");
    assert_eq!(claims.iter().filter(|c| matches!(c, Ok(TaskClaim::NotWorking(_)))).count(), 19);
}

/// A cancel and a claim racing from two processes: a cancel that comes first means the call never
/// runs; a claim that comes first runs it once (and a cancel after it still cancels the task for
/// its client). Never neither, and the approval is claimed only by a run.
#[tokio::test]
async fn cancel_and_claim_race_has_one_winner() {
    let dir = TempDir::new("task-race");
    let loc = Location::File(dir.path().join("gate.db"));
    let a = Store::open(loc.clone()).await.unwrap();
    let b = Store::open(loc).await.unwrap();
    for round in 0..20 {
        let (approval, key, id) = (format!("a{round}"), format!("k{round}"), format!("mcpg-{round}"));
        approved(&a, &approval, &key).await;
        a.open_task(task(&id, "agent:x", &approval, &key), T0).await.unwrap();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let (claim, cancel) = {
            let (a, b, id2, id3) = (a.clone(), b.clone(), id.clone(), id.clone());
            let (b1, b2) = (barrier.clone(), barrier.clone());
            tokio::join!(
                tokio::spawn(async move {
                    b1.wait().await;
                    a.claim_task(&id2, T0 + 2).await.unwrap()
                }),
                tokio::spawn(async move {
                    b2.wait().await;
                    b.cancel_task("agent:x", &id3, "cancelled", json!({}), T0 + 2).await.unwrap()
                })
            )
        };
        let ran = matches!(claim.unwrap(), TaskClaim::Run(_));
        let cancelled = matches!(cancel.unwrap(), Some(Cancelled::Now(_)));
        assert!(cancelled, "round {round}: a working or running task is cancelled for its client");
        let state = a.task("agent:x", &id).await.unwrap().unwrap().state;
        assert_eq!(state, TaskState::Cancelled, "round {round}");
        let uses = a.get_approval(&approval).await.unwrap().unwrap().uses;
        assert_eq!(uses, u32::from(ran), "the approval is claimed only by the run");
    }
}

#[tokio::test]
async fn an_orphaned_claim_fails_its_task_which_never_runs_again() {
    let dir = TempDir::new("task-orphans");
    let loc = Location::File(dir.path().join("gate.db"));
    let crashed = Store::open(loc.clone()).await.unwrap();
    let survivor = Store::open(loc).await.unwrap();
    approved(&crashed, "a", "k").await;
    crashed.open_task(task("mcpg-1", "agent:x", "a", "k"), T0).await.unwrap();
    assert!(matches!(crashed.claim_task("mcpg-1", T0 + 2).await.unwrap(), TaskClaim::Run(_)));
    // A call that needed no approval, run as a task: it has no claim row.
    let free = GateTask { approval_id: None, ..task("mcpg-2", "agent:x", "-", "k2") };
    crashed.open_task(free, T0).await.unwrap();
    assert!(matches!(crashed.claim_task("mcpg-2", T0 + 2).await.unwrap(), TaskClaim::Run(_)));
    // A task of the survivor, running: untouched.
    let own = GateTask { approval_id: None, ..task("mcpg-3", "agent:x", "-", "k3") };
    survivor.open_task(own, T0).await.unwrap();
    assert!(matches!(survivor.claim_task("mcpg-3", T0 + 2).await.unwrap(), TaskClaim::Run(_)));
    let me = crashed.instance().to_owned();
    survivor
        .call(move |c| {
            c.execute("UPDATE instances SET heartbeat_at = 0, host = 'elsewhere' WHERE id = ?1", params![me])
        })
        .await
        .unwrap();
    survivor.settle_orphaned_claims(survivor.now_ms()).await.unwrap();
    let t = survivor.task("agent:x", "mcpg-1").await.unwrap().unwrap();
    assert_eq!((t.state, t.status_message.as_deref()), (TaskState::Failed, Some(ORPHANED)));
    let error: Value = serde_json::from_str(t.error.as_deref().unwrap()).unwrap();
    assert_eq!(error["message"], ORPHANED);
    assert!(matches!(survivor.claim_task("mcpg-1", T0 + 3).await.unwrap(), TaskClaim::NotWorking(_)));
    assert_eq!(survivor.get_approval("a").await.unwrap().unwrap().status, Status::Failed);
    let free = survivor.task("agent:x", "mcpg-2").await.unwrap().unwrap();
    assert_eq!(free.state, TaskState::Failed, "a task without approval fails with its process too");
    let own = survivor.task("agent:x", "mcpg-3").await.unwrap().unwrap();
    assert_eq!(own.state, TaskState::Running, "the live process's task is untouched");
}

#[tokio::test]
async fn list_pages_by_owner_and_purge_removes_only_ended_tasks_past_their_lifetime() {
    let store = Store::open(crate::store::testutil::location().await).await.unwrap();
    for i in 0..(TASK_PAGE + 5) {
        let (a, k) = (format!("a{i}"), format!("k{i}"));
        store.insert_approval(request(&a, &k)).await.unwrap();
        store.open_task(task(&format!("mcpg-{i}"), "agent:x", &a, &k), T0).await.unwrap();
    }
    store.insert_approval(request("other", "ko")).await.unwrap();
    store.open_task(task("mcpg-other", "agent:y", "other", "ko"), T0).await.unwrap();
    let (page, next) = store.tasks_of_owner("agent:x", None).await.unwrap();
    assert_eq!(page.len(), TASK_PAGE as usize);
    let (rest, end) = store.tasks_of_owner("agent:x", next).await.unwrap();
    assert_eq!(rest.len(), 5);
    assert!(end.is_none());
    assert!(page.iter().chain(&rest).all(|t| t.owner == "agent:x"));

    store.settle_task("mcpg-0", TaskEnd::Result(json!({})), "done", T0 + 1).await.unwrap().unwrap();
    assert_eq!(store.purge_tasks(T0 + HOUR - 1).await.unwrap(), 0, "not yet past its lifetime");
    assert_eq!(store.purge_tasks(T0 + HOUR).await.unwrap(), 1, "only the ended task goes");
    assert!(store.task("agent:x", "mcpg-0").await.unwrap().is_none());
    assert!(store.task("agent:x", "mcpg-1").await.unwrap().is_some());
}

/// A waiting task whose lifetime passed goes once its approval is no longer pending (approved and
/// never claimed, denied, expired): its owner did not come back for it. One whose approval is
/// still pending, and one claimed to run, stay; a purged task can no longer be claimed.
#[tokio::test]
async fn purge_removes_waiting_tasks_whose_owner_did_not_come_back() {
    let store = Store::open(crate::store::testutil::location().await).await.unwrap();
    approved(&store, "unclaimed", "k1").await;
    store.open_task(task("mcpg-unclaimed", "agent:x", "unclaimed", "k1"), T0).await.unwrap();
    store.insert_approval(request("denied", "k2")).await.unwrap();
    store.open_task(task("mcpg-denied", "agent:x", "denied", "k2"), T0).await.unwrap();
    let deny = Vote { decision: VoteDecision::Deny, reason: Some("no".into()), ..approve() };
    store.record_vote("denied", deny, 1, T0 + 1).await.unwrap();
    store.insert_approval(request("pending", "k3")).await.unwrap();
    store.open_task(task("mcpg-pending", "agent:x", "pending", "k3"), T0).await.unwrap();
    approved(&store, "running", "k4").await;
    store.open_task(task("mcpg-running", "agent:x", "running", "k4"), T0).await.unwrap();
    assert!(matches!(store.claim_task("mcpg-running", T0 + 2).await.unwrap(), TaskClaim::Run(_)));

    assert_eq!(store.purge_tasks(T0 + HOUR - 1).await.unwrap(), 0, "not yet past their lifetime");
    assert_eq!(store.purge_tasks(T0 + HOUR).await.unwrap(), 2);
    for (id, kept) in
        [("mcpg-unclaimed", false), ("mcpg-denied", false), ("mcpg-pending", true), ("mcpg-running", true)]
    {
        assert_eq!(store.task("agent:x", id).await.unwrap().is_some(), kept, "{id}");
    }
    // The owner comes back too late: the approved call is not run for it.
    assert!(store.claim_task("mcpg-unclaimed", T0 + HOUR + 1).await.is_err(), "a purged task is not claimed");
}

/// A database of the previous version keeps its rows through the tasks migration.
#[tokio::test]
async fn a_database_from_before_tasks_keeps_its_claims() {
    let dir = TempDir::new("task-migrate");
    let path = dir.path().join("gate.db");
    {
        let store = Store::open(Location::File(path.clone())).await.unwrap();
        approved(&store, "a", "k").await;
        assert_eq!(store.claim_execution("a", T0 + 2).await.unwrap(), Claim::Run);
        // Back to version 6 (before tasks): drop what 0007 and later added.
        store
            .call(|c| {
                c.batch(
                    "DROP TABLE gate_tasks; ALTER TABLE claims DROP COLUMN task_id;
                     DROP TABLE request_state_uses; DROP TABLE secrets;
                     ALTER TABLE approvals DROP COLUMN approvers;
                     DELETE FROM schema_version WHERE version >= 7;",
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }
    let store = Store::open(Location::File(path)).await.unwrap();
    let claims: i64 = store.call(|c| c.query_one("SELECT count(*) FROM claims", params![])?.get(0)).await.unwrap();
    assert_eq!(claims, 1);
    let a = store.finish_execution("a", true, json!({}), T0 + 3).await.unwrap();
    assert_eq!(a.status, Status::Executed);
}

/// A client may ask for any `ttl` (2025-11-25 `params.task.ttl`, up to `i64::MAX` once read):
/// `created_at + ttl_ms` (the purge's index and condition) overflowed a 64-bit integer, which
/// PostgreSQL refused (`bigint out of range`): the task was never stored, the call failed with
/// a storage error. The lifetime is cut to what fits; the purge works for every task.
#[tokio::test]
async fn a_huge_requested_lifetime_is_stored_and_the_purge_still_works() {
    let store = Store::open(crate::store::testutil::location().await).await.unwrap();
    for (id, key, ttl) in [("mcpg-huge", "kh", i64::MAX), ("mcpg-due", "kd", HOUR)] {
        let a = format!("a-{id}");
        store.insert_approval(request(&a, key)).await.unwrap();
        store.open_task(GateTask { ttl_ms: Some(ttl), ..task(id, "agent:x", &a, key) }, T0).await.unwrap();
        store.settle_task(id, TaskEnd::Result(json!({})), "done", T0 + 1).await.unwrap().unwrap();
    }
    assert_eq!(store.purge_tasks(T0 + HOUR).await.unwrap(), 1, "the task past its lifetime goes");
    assert!(store.task("agent:x", "mcpg-due").await.unwrap().is_none());
    assert!(store.task("agent:x", "mcpg-huge").await.unwrap().is_some(), "the other one stays");
}
