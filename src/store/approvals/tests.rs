use std::time::Instant;

use serde_json::json;

use super::requests::DUE_SQL;
use super::*;
use crate::store::Location;
use crate::store::testutil::TempDir;

const T0: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

fn new(id: &str, key: &str) -> ApprovalRequest {
    ApprovalRequest {
        id: id.into(),
        key: key.into(),
        server: "fs".into(),
        tool: "delete_file".into(),
        arguments: json!({"path": "/tmp/x", "opts": {"force": true}}),
        agent: Some("claude".into()),
        risk: Some("high".into()),
        rule: Some("deletes".into()),
        rule_reason: Some("deleting files needs a human".into()),
        workflow: "default".into(),
        required_approvals: 1,
        grant_secs: 0,
        trace: json!([{"rule": "deletes", "result": "escalate"}]),
        created_at: T0,
        expires_at: T0 + HOUR,
        tool_info: Some(json!({"description": "Deletes a file", "annotations": {"destructiveHint": true}})),
        channel: Some("wait".into()),
        approvers: None,
    }
}

fn approve(actor: &str) -> Vote {
    Vote {
        actor: actor.into(),
        credential: actor.into(),
        decision: VoteDecision::Approve,
        notes: Some(format!("ok from {actor}")),
        reason: None,
    }
}

fn deny(actor: &str, reason: &str) -> Vote {
    Vote {
        actor: actor.into(),
        credential: actor.into(),
        decision: VoteDecision::Deny,
        notes: Some("code freeze".into()),
        reason: Some(reason.into()),
    }
}

/// A fresh store: in memory, or on PostgreSQL with `MCP_GATE_TEST_ENGINE=postgres` (see
/// [`location`](crate::store::testutil::location)).
async fn mem() -> Store {
    Store::open(crate::store::testutil::location().await).await.unwrap()
}

async fn engine(store: &Store) -> Engine {
    store.call(|c| Ok(c.engine())).await.unwrap()
}

#[tokio::test]
async fn expiring_means_within_the_warning_or_past_half_its_life() {
    const MIN: i64 = 60_000;
    let store = mem().await;
    // Lives an hour (T0 .. T0 + 60 min); a 10-minute warning starts at T0 + 50 min.
    store.insert_approval(new("hour", "k1")).await.unwrap();
    // Lives 10 minutes: the warning starts half-way, at T0 + 5 min, not at once.
    store.insert_approval(ApprovalRequest { expires_at: T0 + 10 * MIN, ..new("short", "k2") }).await.unwrap();
    let due = |now: i64| {
        let store = store.clone();
        async move {
            let ids: Vec<String> =
                store.pending_expiring(now, 10 * MIN).await.unwrap().into_iter().map(|a| a.request.id).collect();
            ids
        }
    };
    assert!(due(T0).await.is_empty(), "nothing at creation");
    assert!(due(T0 + 4 * MIN).await.is_empty());
    assert_eq!(due(T0 + 5 * MIN).await, ["short"]);
    assert_eq!(due(T0 + 50 * MIN).await, ["hour"], "the short one has expired by then");
    store.record_vote("hour", approve("alice"), 1, T0 + 51 * MIN).await.unwrap();
    assert!(due(T0 + 55 * MIN).await.is_empty(), "only pending requests");
}

#[tokio::test]
async fn insert_get_and_json_shape() {
    let store = mem().await;
    let a = store.insert_approval(new("a1", "k1")).await.unwrap();
    assert_eq!(a.status, Status::Pending);
    assert_eq!(a.arguments, json!({"path": "/tmp/x", "opts": {"force": true}}));
    assert_eq!(store.get_approval("a1").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_approval("nope").await.unwrap(), None);
    assert!(matches!(store.insert_approval(new("a1", "k1")).await, Err(StoreError::AlreadyExists(id)) if id == "a1"));

    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(v["status"], "pending");
    assert_eq!(v["rule_reason"], "deleting files needs a human");
    assert_eq!(v["required_approvals"], 1);
    assert!(v["votes"].as_array().unwrap().is_empty());

    let t = store.transitions("a1").await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].from, t[0].to, t[0].actor.as_str()), (None, Status::Pending, "claude"));

    assert_eq!("executed".parse::<Status>(), Ok(Status::Executed));
    assert!("bogus".parse::<Status>().is_err());
    for s in Status::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
    }
}

#[tokio::test]
async fn pending_approvals_survive_a_reopen() {
    let dir = TempDir::new("store-durable");
    let loc = Location::File(dir.path().join("gate.db"));
    let store = Store::open(loc.clone()).await.unwrap();
    for i in 0..3 {
        store.insert_approval(new(&format!("p{i}"), &format!("k{i}"))).await.unwrap();
    }
    store.record_vote("p0", approve("alice"), 2, T0 + 1).await.unwrap();
    drop(store);

    let store = Store::open(loc).await.unwrap();
    let pending =
        store.list_approvals(ApprovalFilter { status: Some(Status::Pending), ..Default::default() }).await.unwrap();
    assert_eq!(pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["p2", "p1", "p0"]);
    assert_eq!(pending[2].votes.len(), 1);
    assert_eq!(pending[2].votes[0].actor, "alice");
}

#[tokio::test]
async fn two_distinct_approvers_are_required() {
    let store = mem().await;
    store.insert_approval(ApprovalRequest { required_approvals: 2, ..new("a", "k") }).await.unwrap();

    let a = store.record_vote("a", approve("alice"), 2, T0 + 10).await.unwrap();
    assert_eq!(a.status, Status::Pending);
    assert_eq!(a.votes.len(), 1);

    let again = store.record_vote("a", approve("alice"), 2, T0 + 11).await;
    assert!(matches!(again, Err(TransitionError::AlreadyVoted { ref actor }) if actor == "alice"), "{again:?}");

    let a = store.record_vote("a", approve("bob"), 2, T0 + 20).await.unwrap();
    assert_eq!(a.status, Status::Approved);
    assert_eq!(a.decided_at, Some(T0 + 20));
    assert_eq!(a.decided_by.as_deref(), Some("bob"));
    assert_eq!(a.notes.as_deref(), Some("ok from bob"));
    assert_eq!(
        a.votes.iter().map(|v| (v.actor.as_str(), v.at)).collect::<Vec<_>>(),
        [("alice", T0 + 10), ("bob", T0 + 20)]
    );

    let late = store.record_vote("a", approve("carol"), 2, T0 + 30).await;
    assert!(matches!(late, Err(TransitionError::NotPending { status: Status::Approved })), "{late:?}");

    let t = store.transitions("a").await.unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(
        (t[1].from, t[1].to, t[1].actor.as_str(), t[1].at),
        (Some(Status::Pending), Status::Approved, "bob", T0 + 20)
    );

    let missing = store.record_vote("nope", approve("alice"), 1, T0).await;
    assert!(matches!(missing, Err(TransitionError::NotFound(_))), "{missing:?}");
}

#[tokio::test]
async fn one_deny_vote_denies() {
    let store = mem().await;
    store.insert_approval(ApprovalRequest { required_approvals: 2, ..new("a", "k") }).await.unwrap();
    store.record_vote("a", approve("alice"), 2, T0 + 1).await.unwrap();
    let a = store.record_vote("a", deny("bob", "Not approved during code freeze"), 2, T0 + 2).await.unwrap();
    assert_eq!(a.status, Status::Denied);
    assert_eq!(a.deny_reason.as_deref(), Some("Not approved during code freeze"));
    assert_eq!(a.notes.as_deref(), Some("code freeze"));
    assert_eq!(a.decided_by.as_deref(), Some("bob"));

    let t = store.transitions("a").await.unwrap();
    let last = t.last().unwrap();
    assert_eq!(last.to, Status::Denied);
    assert_eq!(last.reason.as_deref(), Some("Not approved during code freeze"));
    assert_eq!(last.notes.as_deref(), Some("code freeze"));

    assert_eq!(
        store.claim_execution("a", T0 + 3).await.unwrap(),
        Claim::Denied { by: "bob".into(), reason: Some("Not approved during code freeze".into()) }
    );
    assert!(store.find_reusable("k", T0 + 3).await.unwrap().is_none());
}

#[tokio::test]
async fn expiry_by_sweep_and_by_late_vote() {
    let store = mem().await;
    store.insert_approval(new("swept", "k1")).await.unwrap();
    store.insert_approval(ApprovalRequest { expires_at: T0 + 2 * HOUR, ..new("later", "k2") }).await.unwrap();
    store.insert_approval(ApprovalRequest { required_approvals: 2, ..new("half-voted", "k3") }).await.unwrap();
    store.record_vote("half-voted", approve("alice"), 2, T0 + 1).await.unwrap();

    assert!(store.expire_due(T0 + HOUR - 1).await.unwrap().is_empty());
    let mut expired = store.expire_due(T0 + HOUR).await.unwrap();
    expired.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        expired.iter().map(|a| (a.id.as_str(), a.status)).collect::<Vec<_>>(),
        [("half-voted", Status::Expired), ("swept", Status::Expired)]
    );
    let t = store.transitions("swept").await.unwrap();
    assert_eq!((t[1].from, t[1].to, t[1].actor.as_str()), (Some(Status::Pending), Status::Expired, "system"));
    assert_eq!(store.get_approval("later").await.unwrap().unwrap().status, Status::Pending);
    assert!(store.expire_due(T0 + HOUR).await.unwrap().is_empty(), "a second sweep finds nothing");

    // A vote after the deadline expires the approval instead (and that is committed).
    let r = store.record_vote("later", approve("alice"), 1, T0 + 2 * HOUR).await;
    assert!(matches!(r, Err(TransitionError::Expired)), "{r:?}");
    let a = store.get_approval("later").await.unwrap().unwrap();
    assert_eq!(a.status, Status::Expired);
    assert!(a.votes.is_empty(), "the late vote is not recorded");
    assert_eq!(store.transitions("later").await.unwrap().last().unwrap().to, Status::Expired);
    assert_eq!(store.claim_execution("later", T0 + 3 * HOUR).await.unwrap(), Claim::Expired);
}

#[tokio::test]
async fn claim_and_finish_single_use() {
    let store = mem().await;
    store.insert_approval(new("a", "k")).await.unwrap();
    assert_eq!(store.claim_execution("a", T0 + 1).await.unwrap(), Claim::Pending);
    assert!(matches!(store.finish_execution("a", true, json!({}), T0 + 1).await, Err(StoreError::InvalidState(_))));
    store.record_vote("a", approve("alice"), 1, T0 + 2).await.unwrap();
    assert_eq!(store.claim_execution("a", T0 + 3).await.unwrap(), Claim::Run);
    assert_eq!(store.claim_execution("a", T0 + 4).await.unwrap(), Claim::Spent);
    if engine(&store).await == Engine::Sqlite {
        let sync: i64 = store.call(|c| c.query_one("PRAGMA synchronous", params![])?.get(0)).await.unwrap();
        assert_eq!(sync, 1, "synchronous is back to NORMAL after a claim");
    }
    let a = store.finish_execution("a", false, json!({"error": "disk full"}), T0 + 5).await.unwrap();
    assert_eq!(a.status, Status::Failed);
    assert_eq!(a.executed_at, Some(T0 + 5));
    assert_eq!(a.outcome, Some(json!({"error": "disk full"})));
    assert_eq!(a.uses, 1);
    assert_eq!(store.claim_execution("a", T0 + 6).await.unwrap(), Claim::Spent);
    assert!(matches!(store.finish_execution("a", true, json!({}), T0 + 7).await, Err(StoreError::InvalidState(_))));
    let t = store.transitions("a").await.unwrap();
    assert_eq!(t.iter().map(|t| t.to).collect::<Vec<_>>(), [Status::Pending, Status::Approved, Status::Failed]);
    assert!(matches!(store.claim_execution("nope", T0).await, Err(StoreError::NotFound(_))));

    // Approved but never claimed before the deadline: expired, by a claim or by the sweep.
    store.insert_approval(new("b", "kb")).await.unwrap();
    store.insert_approval(new("c", "kc")).await.unwrap();
    store.record_vote("b", approve("alice"), 1, T0 + 1).await.unwrap();
    store.record_vote("c", approve("alice"), 1, T0 + 1).await.unwrap();
    assert_eq!(store.claim_execution("b", T0 + HOUR).await.unwrap(), Claim::Expired);
    assert_eq!(store.get_approval("b").await.unwrap().unwrap().status, Status::Expired);
    let swept = store.expire_due(T0 + HOUR).await.unwrap();
    assert_eq!(swept.iter().map(|a| (a.id.as_str(), a.status)).collect::<Vec<_>>(), [("c", Status::Expired)]);
}

#[tokio::test]
async fn exactly_one_run_under_16_concurrent_claims() {
    // One handle: requests serialize on the worker.
    let store = mem().await;
    store.insert_approval(new("a", "k")).await.unwrap();
    store.record_vote("a", approve("alice"), 1, T0 + 1).await.unwrap();
    let claims = futures::future::join_all((0..16).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.claim_execution("a", T0 + 2).await.unwrap() })
    }))
    .await;
    let runs = claims.iter().filter(|c| matches!(c, Ok(Claim::Run))).count();
    assert_eq!(runs, 1, "{claims:?}");

    // 16 handles = 16 connections to one file, as if 16 processes: BEGIN IMMEDIATE does the work.
    // One database for every handle: a file (as if each were a process), or PostgreSQL (replicas).
    let (loc, _dir) = crate::store::testutil::shared_location("store-claims").await;
    let first = Store::open(loc.clone()).await.unwrap();
    first.insert_approval(new("b", "k")).await.unwrap();
    first.record_vote("b", approve("alice"), 1, T0 + 1).await.unwrap();
    let mut handles = vec![first];
    for _ in 1..16 {
        handles.push(Store::open(loc.clone()).await.unwrap());
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(16));
    let claims = futures::future::join_all(handles.into_iter().map(|store| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            store.claim_execution("b", T0 + 2).await.unwrap()
        })
    }))
    .await;
    let runs = claims.iter().filter(|c| matches!(c, Ok(Claim::Run))).count();
    assert_eq!(runs, 1, "{claims:?}");
    assert_eq!(claims.iter().filter(|c| matches!(c, Ok(Claim::Spent))).count(), 15);
}

#[tokio::test]
async fn an_idle_sweep_reads_only_what_is_due_and_opens_no_write_transaction() {
    let dir = TempDir::new("store-sweep");
    let path = dir.path().join("gate.db");
    let store = Store::open(Location::File(path.clone())).await.unwrap();
    for i in 0..50 {
        let grant = if i % 5 == 0 { 7200 } else { 0 };
        store
            .insert_approval(ApprovalRequest { grant_secs: grant, ..new(&format!("a{i}"), &format!("k{i}")) })
            .await
            .unwrap();
        store.record_vote(&format!("a{i}"), approve("alice"), 1, T0 + 1).await.unwrap();
    }
    // Another process holds the write lock: a sweep with nothing due must not wait for it.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let swept = store.expire_due(T0 + 2).await;
    other.execute_batch("ROLLBACK").unwrap();
    assert!(swept.unwrap().is_empty());

    let plan: Vec<String> = store
        .call(|c| c.sql().query_map(&format!("EXPLAIN QUERY PLAN {DUE_SQL}"), params![T0], |r| r.get::<String>(3)))
        .await
        .unwrap();
    for index in ["approvals_status_expires", "approvals_unused_expires", "approvals_grant_ends"] {
        assert!(plan.iter().any(|p| p.contains(index)), "{index} not used: {plan:?}");
    }
    assert!(!plan.iter().any(|p| p.starts_with("SCAN")), "no scan: {plan:?}");

    // Due rows are still closed.
    assert_eq!(store.expire_due(T0 + HOUR).await.unwrap().len(), 40);
    assert_eq!(store.expire_due(T0 + 7_200_001).await.unwrap().len(), 10);
}

#[tokio::test]
async fn open_request_joins_what_stands_and_closes_what_lapsed() {
    let store = mem().await;
    let first = store.open_request(new("a", "k"), T0).await.unwrap();
    assert!(!first.joined);
    let again = store.open_request(new("b", "k"), T0 + 1).await.unwrap();
    assert_eq!((again.approval.id.as_str(), again.joined), ("a", true));
    assert!(store.get_approval("b").await.unwrap().is_none());
    // A denial stands for the retry until the request would have expired.
    store.record_vote("a", deny("bob", "no"), 1, T0 + 2).await.unwrap();
    let denied = store.open_request(new("c", "k"), T0 + 3).await.unwrap();
    assert_eq!((denied.approval.id.as_str(), denied.approval.status), ("a", Status::Denied));
    // Past its deadline a pending request is closed on the way, and a new one opened.
    let other = store.open_request(new("d", "k2"), T0).await.unwrap();
    assert!(!other.joined);
    let later = store.open_request(new("e", "k2"), T0 + HOUR).await.unwrap();
    assert_eq!((later.approval.id.as_str(), later.joined), ("e", false));
    assert_eq!(later.expired.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["d"]);
    // The unique index refuses a second pending row for a key, however it is written.
    let r = store.insert_approval(new("f", "k2")).await;
    assert!(matches!(r, Err(StoreError::InvalidState(_))), "{r:?}");
}

/// Makes `of`'s heartbeat stale, as seen by `by`: as if it had died on another host.
async fn stop_heartbeat(by: &Store, of: &Store) {
    let me = of.instance().to_owned();
    by.call(move |c| c.execute("UPDATE instances SET heartbeat_at = 0, host = 'elsewhere' WHERE id = ?1", params![me]))
        .await
        .unwrap();
}

#[tokio::test]
async fn claims_of_a_stopped_process_are_settled_as_failed() {
    let dir = TempDir::new("store-orphans");
    let loc = Location::File(dir.path().join("gate.db"));
    let crashed = Store::open(loc.clone()).await.unwrap();
    let survivor = Store::open(loc).await.unwrap();
    crashed.insert_approval(new("once", "k1")).await.unwrap();
    crashed.record_vote("once", approve("alice"), 1, T0 + 1).await.unwrap();
    crashed.insert_approval(ApprovalRequest { grant_secs: 600, ..new("grant", "k2") }).await.unwrap();
    crashed.record_vote("grant", approve("alice"), 1, T0 + 1).await.unwrap();
    crashed.insert_approval(new("mine", "k3")).await.unwrap();
    crashed.record_vote("mine", approve("alice"), 1, T0 + 1).await.unwrap();
    assert_eq!(crashed.claim_execution("once", T0 + 2).await.unwrap(), Claim::Run);
    assert_eq!(crashed.claim_execution("grant", T0 + 2).await.unwrap(), Claim::Run);
    assert_eq!(survivor.claim_execution("mine", T0 + 2).await.unwrap(), Claim::Run);

    // Alive: nothing to settle.
    assert!(survivor.settle_orphaned_claims(survivor.now_ms()).await.unwrap().is_empty());
    // Its heartbeat stops (as if the process had died on another host).
    stop_heartbeat(&survivor, &crashed).await;
    let settled = survivor.settle_orphaned_claims(survivor.now_ms()).await.unwrap();
    let mut got: Vec<_> = settled.iter().map(|a| (a.id.as_str(), a.status)).collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got, [("grant", Status::Approved), ("once", Status::Failed)]);
    let once = survivor.get_approval("once").await.unwrap().unwrap();
    assert_eq!(once.outcome, Some(json!({"error": ORPHANED})));
    let last = survivor.transitions("once").await.unwrap().pop().unwrap();
    assert_eq!((last.to, last.reason.as_deref()), (Status::Failed, Some(ORPHANED)));
    let last = survivor.transitions("grant").await.unwrap().pop().unwrap();
    assert_eq!((last.to, last.notes.as_deref()), (Status::Failed, Some("grant use")));
    // The survivor's own claim is untouched and can be finished.
    assert!(survivor.settle_orphaned_claims(survivor.now_ms()).await.unwrap().is_empty());
    let mine = survivor.finish_execution("mine", true, json!({}), T0 + 3).await.unwrap();
    assert_eq!(mine.status, Status::Executed);

    // It was only late (suspended): its next heartbeat records it again, so that what it claims
    // from now on is settled if it stops for good.
    let me = crashed.instance().to_owned();
    crashed.call(move |c| crate::store::worker::heartbeat(c, &me, T0 + 4)).await.unwrap();
    crashed.insert_approval(new("later", "k4")).await.unwrap();
    crashed.record_vote("later", approve("alice"), 1, T0 + 5).await.unwrap();
    assert_eq!(crashed.claim_execution("later", T0 + 6).await.unwrap(), Claim::Run);
    stop_heartbeat(&survivor, &crashed).await;
    let settled = survivor.settle_orphaned_claims(survivor.now_ms()).await.unwrap();
    assert_eq!(settled.iter().map(|a| (a.id.as_str(), a.status)).collect::<Vec<_>>(), [("later", Status::Failed)]);
}

#[tokio::test]
async fn a_deleted_or_replaced_file_fails_closed() {
    let dir = TempDir::new("store-replaced");
    let path = dir.path().join("gate.db");
    let store = Store::open(Location::File(path.clone())).await.unwrap();
    assert!(store.file_id().is_some());
    store.insert_approval(new("a", "k")).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let r = store.insert_approval(new("b", "k2")).await;
    assert!(matches!(r, Err(StoreError::Replaced { how: "deleted", .. })), "{r:?}");
    // A new file at the path does not bring it back.
    let fresh = Store::open(Location::File(path.clone())).await.unwrap();
    assert_ne!(fresh.file_id(), store.file_id());
    let r = store.get_approval("a").await;
    assert!(matches!(r, Err(StoreError::Replaced { .. })), "{r:?}");
    assert!(fresh.insert_approval(new("c", "k3")).await.is_ok());
}

#[tokio::test]
async fn grant_window_runs_until_it_ends() {
    let store = mem().await;
    store.insert_approval(ApprovalRequest { grant_secs: 60, ..new("g", "k") }).await.unwrap();
    let a = store.record_vote("g", approve("alice"), 1, T0 + 1_000).await.unwrap();
    assert_eq!(a.grant_ends_at(), Some(T0 + 61_000));

    for i in 0..3 {
        let now = T0 + 2_000 + i * 10_000;
        assert_eq!(store.claim_execution("g", now).await.unwrap(), Claim::Run);
        let a = store.finish_execution("g", i != 1, json!({"run": i}), now + 500).await.unwrap();
        assert_eq!(a.status, Status::Approved, "a grant stays approved while its window is open");
        assert_eq!(a.uses, u32::try_from(i + 1).unwrap());
    }
    // Still reusable inside the window, even past expires_at of the request.
    assert_eq!(store.find_reusable("k", T0 + 60_999).await.unwrap().map(|a| a.request.id), Some("g".into()));
    assert_eq!(store.claim_execution("g", T0 + 60_999).await.unwrap(), Claim::Run);
    assert!(store.find_reusable("k", T0 + 61_000).await.unwrap().is_none());
    assert_eq!(store.claim_execution("g", T0 + 61_000).await.unwrap(), Claim::Spent);
    let a = store.get_approval("g").await.unwrap().unwrap();
    assert_eq!((a.status, a.uses), (Status::Executed, 4));

    // The run claimed just before the end can still be finished.
    store.finish_execution("g", true, json!({"run": 3}), T0 + 61_500).await.unwrap();
    let t = store.transitions("g").await.unwrap();
    let runs: Vec<_> = t.iter().filter(|t| t.notes.as_deref() == Some("grant use")).map(|t| t.to).collect();
    assert_eq!(runs, [Status::Executed, Status::Failed, Status::Executed, Status::Executed]);

    // When the window ends the sweep closes grants: an unused one expires (and is returned), a used one
    // becomes executed (not returned: nothing expired).
    store.insert_approval(ApprovalRequest { grant_secs: 60, ..new("unused", "k2") }).await.unwrap();
    store.record_vote("unused", approve("alice"), 1, T0).await.unwrap();
    store.insert_approval(ApprovalRequest { grant_secs: 60, ..new("used", "k3") }).await.unwrap();
    store.record_vote("used", approve("alice"), 1, T0).await.unwrap();
    assert_eq!(store.claim_execution("used", T0 + 1).await.unwrap(), Claim::Run);
    store.finish_execution("used", true, json!({}), T0 + 2).await.unwrap();
    assert!(store.expire_due(T0 + 59_999).await.unwrap().is_empty());
    let swept = store.expire_due(T0 + 60_000).await.unwrap();
    assert_eq!(swept.iter().map(|a| (a.id.as_str(), a.status)).collect::<Vec<_>>(), [("unused", Status::Expired)]);
    let used = store.get_approval("used").await.unwrap().unwrap();
    assert_eq!((used.status, used.uses), (Status::Executed, 1));
    let last = store.transitions("used").await.unwrap().pop().unwrap();
    assert_eq!((last.from, last.to, last.actor.as_str()), (Some(Status::Approved), Status::Executed, "system"));
    assert!(store.expire_due(T0 + 120_000).await.unwrap().is_empty());
}

#[tokio::test]
async fn find_reusable_picks_the_newest_usable() {
    let store = mem().await;
    assert!(store.find_reusable("k", T0).await.unwrap().is_none());
    // One pending request per key: the older one is approved (not yet used) before the newer is made.
    store.insert_approval(new("old", "k")).await.unwrap();
    store.record_vote("old", approve("alice"), 1, T0 + 1).await.unwrap();
    store.insert_approval(ApprovalRequest { created_at: T0 + 5, ..new("new", "k") }).await.unwrap();
    store.insert_approval(ApprovalRequest { created_at: T0 + 9, ..new("other", "k-other") }).await.unwrap();
    assert_eq!(store.find_reusable("k", T0 + 10).await.unwrap().map(|a| a.request.id), Some("new".into()));

    store.record_vote("new", deny("bob", "no"), 1, T0 + 11).await.unwrap();
    let found = store.find_reusable("k", T0 + 14).await.unwrap().unwrap();
    assert_eq!((found.id.as_str(), found.status, found.votes.len()), ("old", Status::Approved, 1));

    assert_eq!(store.claim_execution("old", T0 + 15).await.unwrap(), Claim::Run);
    assert!(store.find_reusable("k", T0 + 16).await.unwrap().is_none(), "a consumed single use is not reusable");

    // Past the deadline nothing is reusable, even before the sweep.
    store.insert_approval(new("late", "k3")).await.unwrap();
    assert!(store.find_reusable("k3", T0 + HOUR - 1).await.unwrap().is_some());
    assert!(store.find_reusable("k3", T0 + HOUR).await.unwrap().is_none());
}

#[tokio::test]
async fn list_filters_and_paging() {
    let store = mem().await;
    for i in 0..6 {
        let mut a = new(&format!("a{i}"), &format!("k{i}"));
        a.created_at = T0 + i;
        a.server = if i % 2 == 0 { "fs".into() } else { "git".into() };
        a.tool = if i < 3 { "delete_file".into() } else { "push".into() };
        a.agent = if i == 5 { None } else { Some("claude".into()) };
        store.insert_approval(a).await.unwrap();
    }
    store.record_vote("a4", approve("alice"), 1, T0 + 10).await.unwrap();

    let ids = |v: Vec<Approval>| v.into_iter().map(|a| a.request.id).collect::<Vec<_>>();
    let list = |f: ApprovalFilter| {
        let store = store.clone();
        async move { ids(store.list_approvals(f).await.unwrap()) }
    };
    assert_eq!(list(ApprovalFilter::default()).await, ["a5", "a4", "a3", "a2", "a1", "a0"]);
    assert_eq!(
        list(ApprovalFilter { status: Some(Status::Pending), ..Default::default() }).await,
        ["a5", "a3", "a2", "a1", "a0"]
    );
    assert_eq!(list(ApprovalFilter { status: Some(Status::Approved), ..Default::default() }).await, ["a4"]);
    assert_eq!(list(ApprovalFilter { server: Some("git".into()), ..Default::default() }).await, ["a5", "a3", "a1"]);
    assert_eq!(
        list(ApprovalFilter { server: Some("fs".into()), tool: Some("delete_file".into()), ..Default::default() })
            .await,
        ["a2", "a0"]
    );
    assert_eq!(
        list(ApprovalFilter { agent: Some("claude".into()), limit: Some(2), ..Default::default() }).await,
        ["a4", "a3"]
    );
    assert_eq!(
        list(ApprovalFilter { status: Some(Status::Pending), limit: Some(2), offset: 2, ..Default::default() }).await,
        ["a2", "a1"]
    );
    assert!(list(ApprovalFilter { offset: 100, ..Default::default() }).await.is_empty());
    assert_eq!(store.list_approvals(ApprovalFilter::default()).await.unwrap()[1].votes.len(), 1);
}

#[tokio::test]
async fn list_10k_pending_is_fast() {
    let store = mem().await;
    let started = Instant::now();
    for i in 0..10_000 {
        let mut a = new(&format!("appr-{i:05}"), &format!("key-{i}"));
        a.created_at = T0 + i;
        store.insert_approval(a).await.unwrap();
    }
    // A few decided ones in between, so the status filter has work to do.
    for i in (0..10_000).step_by(1000) {
        store.record_vote(&format!("appr-{i:05}"), approve("alice"), 1, T0 + 20_000).await.unwrap();
    }
    let inserted = started.elapsed();

    // The plan is SQLite's.
    if engine(&store).await == Engine::Sqlite {
        let plan: Vec<String> = store
            .call(|c| {
                let sql = format!(
                    "EXPLAIN QUERY PLAN SELECT {COLS} FROM approvals WHERE status = ?1
                     ORDER BY created_at DESC, rowid DESC LIMIT ?2 OFFSET ?3"
                );
                c.sql().query_map(&sql, params!["pending", 100, 0], |r| r.get::<String>(3))
            })
            .await
            .unwrap();
        assert!(plan.iter().any(|p| p.contains("approvals_status_created")), "{plan:?}");
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "listing must not sort: {plan:?}");
    }

    let pending = |limit, offset| ApprovalFilter {
        status: Some(Status::Pending),
        limit: Some(limit),
        offset,
        ..Default::default()
    };
    let t = Instant::now();
    let first = store.list_approvals(pending(DEFAULT_LIST_LIMIT, 0)).await.unwrap();
    let default_page = t.elapsed();
    assert_eq!(first.len(), 100);
    assert_eq!(first[0].id, "appr-09999");

    let t = Instant::now();
    let last = store.list_approvals(pending(MAX_LIST_LIMIT, 8_990)).await.unwrap();
    let max_page = t.elapsed();
    assert_eq!(last.len(), 1000);
    assert_eq!(last[999].id, "appr-00001");

    let t = Instant::now();
    let mut all = Vec::new();
    loop {
        let page = store.list_approvals(pending(MAX_LIST_LIMIT, u32::try_from(all.len()).unwrap())).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    let every_page = t.elapsed();
    assert_eq!(all.len(), 9_990);
    assert!(all.windows(2).all(|w| w[0].created_at > w[1].created_at));

    eprintln!(
        "10k approvals: insert + 10 votes {inserted:?}; with 9,990 pending: list default page (100) \
         {default_page:?}, list max page (1000, offset 8990) {max_page:?}, all 9,990 in 10 pages {every_page:?}"
    );
    // Generous bounds that hold in debug builds too; they catch a lost index or an N+1 query.
    assert!(max_page.as_millis() < 500, "a page of 1000 took {max_page:?}");
    assert!(every_page.as_millis() < 5_000, "listing all 10k pending took {every_page:?}");
}

/// Two stores on one database (two processes, or two replicas on PostgreSQL) racing: each due
/// request is expired by exactly one of them, and a single-use approval is run by exactly one.
#[tokio::test]
async fn two_stores_on_one_database_expire_once_and_claim_once() {
    let (loc, _dir) = crate::store::testutil::shared_location("two-stores").await;
    let a = Store::open(loc.clone()).await.unwrap();
    let b = Store::open(loc).await.unwrap();
    for i in 0..20 {
        let id = format!("due{i}");
        a.insert_approval(ApprovalRequest { expires_at: T0 + 10, ..new(&id, &format!("k{i}")) }).await.unwrap();
    }
    let (ea, eb) = tokio::join!(a.expire_due(T0 + 20), b.expire_due(T0 + 20));
    let mut expired: Vec<String> = ea.unwrap().into_iter().chain(eb.unwrap()).map(|x| x.request.id).collect();
    expired.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("due{i}")).collect();
    want.sort();
    assert_eq!(expired, want, "every request expired once, by one store");

    for round in 0..10 {
        let id = format!("run{round}");
        b.insert_approval(new(&id, &format!("run-key{round}"))).await.unwrap();
        b.record_vote(&id, approve("alice"), 1, T0 + 1).await.unwrap();
        let (ca, cb) = tokio::join!(a.claim_execution(&id, T0 + 2), b.claim_execution(&id, T0 + 2));
        let runs = [ca.unwrap(), cb.unwrap()].into_iter().filter(|c| *c == Claim::Run).count();
        assert_eq!(runs, 1, "round {round}: one of the two stores runs it");
    }
}
