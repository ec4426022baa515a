//! Figures over the queue: totals and time to decision over a range, and one agent's recent
//! activity (the risk snapshot on a request's page).

use std::collections::BTreeMap;

use serde::Serialize;

use super::db::{Sql, params};
use super::{Store, StoreError};

/// Totals over requests created in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub total: u64,
    /// Every status, zero included.
    pub by_status: BTreeMap<String, u64>,
    /// From creation to the deciding vote, over the decided requests.
    pub time_to_decision: DecisionTimes,
    pub by_agent: Vec<Breakdown>,
    pub by_tool: Vec<Breakdown>,
    pub by_rule: Vec<Breakdown>,
}

/// Milliseconds from request to decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DecisionTimes {
    pub decided: u64,
    pub median_ms: Option<i64>,
    pub p90_ms: Option<i64>,
    pub mean_ms: Option<i64>,
}

/// One group of a breakdown. `approved` counts every request that was approved, whether or
/// not it has run since.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Breakdown {
    pub key: String,
    pub total: u64,
    pub pending: u64,
    pub approved: u64,
    pub denied: u64,
    pub expired: u64,
}

/// What one agent did over the last hour and day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RiskSnapshot {
    pub agent: Option<String>,
    pub last_hour: Activity,
    pub last_day: Activity,
    /// Requests of this agent waiting now.
    pub pending_now: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// Tool calls that reached the policy (allowed, held, refused).
    pub calls: u64,
    /// Requests approved in the window.
    pub approved: u64,
    /// Requests denied by a person in the window, plus calls the policy refused.
    pub denied: u64,
}

const STATUSES: [&str; 6] = ["pending", "approved", "denied", "expired", "executed", "failed"];

impl Store {
    pub async fn stats(&self, from: Option<i64>, to: Option<i64>) -> Result<Stats, StoreError> {
        self.call(move |conn| {
            let lo = from.unwrap_or(i64::MIN);
            let hi = to.unwrap_or(i64::MAX);
            let mut by_status: BTreeMap<String, u64> = STATUSES.iter().map(|s| ((*s).to_owned(), 0)).collect();
            let mut total = 0;
            for r in conn.query(
                "SELECT status, count(*) FROM approvals WHERE created_at >= ?1 AND created_at < ?2 GROUP BY status",
                params![lo, hi],
            )? {
                let n = u64::try_from(r.get::<i64>(1)?).unwrap_or(0);
                total += n;
                *by_status.entry(r.get(0)?).or_default() += n;
            }
            let mut times: Vec<i64> = conn.sql().query_map(
                "SELECT decided_at - created_at FROM approvals
                 WHERE created_at >= ?1 AND created_at < ?2 AND decided_at IS NOT NULL",
                params![lo, hi],
                |r| r.get(0),
            )?;
            times.sort_unstable();
            let mut breakdown = |column: &str, missing: &str| -> Result<Vec<Breakdown>, StoreError> {
                let sql = format!(
                    "SELECT coalesce({column}, '{missing}'), status, count(*) FROM approvals
                     WHERE created_at >= ?1 AND created_at < ?2 GROUP BY 1, 2"
                );
                let mut groups: BTreeMap<String, Breakdown> = BTreeMap::new();
                for r in conn.query(&sql, params![lo, hi])? {
                    let key: String = r.get(0)?;
                    let status: String = r.get(1)?;
                    let n = u64::try_from(r.get::<i64>(2)?).unwrap_or(0);
                    let g = groups.entry(key.clone()).or_insert_with(|| Breakdown { key, ..Breakdown::default() });
                    g.total += n;
                    match status.as_str() {
                        "pending" => g.pending += n,
                        "approved" | "executed" | "failed" => g.approved += n,
                        "denied" => g.denied += n,
                        "expired" => g.expired += n,
                        _ => {}
                    }
                }
                let mut out: Vec<Breakdown> = groups.into_values().collect();
                out.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
                Ok(out)
            };
            let by_agent = breakdown("agent", "-")?;
            let by_tool = breakdown("server || ':' || tool", "-")?;
            // Requests no named rule sent came from the default policy.
            let by_rule = breakdown("rule", "default")?;
            Ok(Stats {
                from,
                to,
                total,
                by_status,
                time_to_decision: decision_times(&times),
                by_agent,
                by_tool,
                by_rule,
            })
        })
        .await
    }

    /// The agent's calls, approvals and denials over the last hour and day before `now`.
    pub async fn risk_snapshot(&self, agent: Option<String>, now: i64) -> Result<RiskSnapshot, StoreError> {
        self.call(move |conn| {
            // `count(CASE WHEN … THEN 1 END)` counts the rows where the condition holds (a BIGINT on
            // both engines; PostgreSQL cannot sum booleans); `IS NOT DISTINCT FROM` matches a NULL agent too.
            let mut activity = |since: i64| -> Result<Activity, StoreError> {
                let r = conn.query_one(
                    "SELECT count(*), count(CASE WHEN event = 'denied_by_policy' THEN 1 END) FROM audit
                     WHERE agent IS NOT DISTINCT FROM ?1 AND at >= ?2
                       AND event IN ('allowed', 'requested', 'denied_by_policy')",
                    params![agent, since],
                )?;
                let (calls, refused): (i64, i64) = (r.get(0)?, r.get(1)?);
                let r = conn.query_one(
                    "SELECT count(CASE WHEN status IN ('approved', 'executed', 'failed') THEN 1 END),
                            count(CASE WHEN status = 'denied' THEN 1 END)
                     FROM approvals WHERE agent IS NOT DISTINCT FROM ?1 AND decided_at >= ?2",
                    params![agent, since],
                )?;
                let (approved, denied): (i64, i64) = (r.get(0)?, r.get(1)?);
                let count = |n: i64| u64::try_from(n).unwrap_or(0);
                Ok(Activity { calls: count(calls), approved: count(approved), denied: count(denied + refused) })
            };
            let last_hour = activity(now - 3_600_000)?;
            let last_day = activity(now - 86_400_000)?;
            let pending: i64 = conn
                .query_one(
                    "SELECT count(*) FROM approvals WHERE agent IS NOT DISTINCT FROM ?1 AND status = 'pending'",
                    params![agent],
                )?
                .get(0)?;
            Ok(RiskSnapshot { agent, last_hour, last_day, pending_now: u64::try_from(pending).unwrap_or(0) })
        })
        .await
    }
}

/// Median, 90th percentile (nearest rank) and mean of sorted durations.
fn decision_times(sorted: &[i64]) -> DecisionTimes {
    if sorted.is_empty() {
        return DecisionTimes::default();
    }
    let n = sorted.len();
    let rank = |p: usize| sorted[((p * n).div_ceil(100)).clamp(1, n) - 1];
    let sum: i128 = sorted.iter().map(|&t| i128::from(t)).sum();
    DecisionTimes {
        decided: n as u64,
        median_ms: Some(rank(50)),
        p90_ms: Some(rank(90)),
        mean_ms: i64::try_from(sum / n as i128).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        assert_eq!(decision_times(&[]), DecisionTimes::default());
        let one = decision_times(&[7]);
        assert_eq!((one.median_ms, one.p90_ms, one.decided), (Some(7), Some(7), 1));
        let ten: Vec<i64> = (1..=10).map(|i| i * 100).collect();
        let t = decision_times(&ten);
        assert_eq!((t.median_ms, t.p90_ms, t.mean_ms), (Some(500), Some(900), Some(550)));
        let eleven: Vec<i64> = (1..=11).collect();
        let t = decision_times(&eleven);
        assert_eq!((t.median_ms, t.p90_ms), (Some(6), Some(10)));
    }
}
