-- One pending request per call key, the sweeper's deadlines, and the processes that hold claims.

-- Older versions could store several pending requests for the same call. All but the newest of
-- each key are expired (with a transition saying why) before the uniqueness is enforced.
CREATE TEMP TABLE superseded AS
    SELECT a.id AS id FROM approvals a
    WHERE a.status = 'pending' AND EXISTS (
        SELECT 1 FROM approvals b
        WHERE b.key = a.key AND b.status = 'pending'
          AND (b.created_at > a.created_at OR (b.created_at = a.created_at AND b.rowid > a.rowid)));
INSERT INTO approval_transitions (approval_id, at, from_status, to_status, actor, notes, reason)
    SELECT id, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), 'pending', 'expired', 'system', NULL,
           'superseded by a newer identical pending request'
    FROM superseded;
UPDATE approvals SET status = 'expired' WHERE id IN (SELECT id FROM superseded);
DROP TABLE superseded;

CREATE UNIQUE INDEX approvals_one_pending_per_key ON approvals (key) WHERE status = 'pending';

-- The sweeper reads only rows that can lapse, by their deadline: single-use approvals not yet
-- used (by `expires_at`) and grants (by the end of their window).
CREATE INDEX approvals_unused_expires ON approvals (expires_at)
    WHERE status = 'approved' AND grant_secs = 0 AND uses = 0;
CREATE INDEX approvals_grant_ends ON approvals (coalesce(decided_at, created_at) + grant_secs * 1000)
    WHERE status = 'approved' AND grant_secs > 0;

-- Every process using the database, with a heartbeat. A claim names the process that runs it, so
-- that the claims of a process that stopped without finishing them can be settled.
CREATE TABLE instances (
    id           TEXT    NOT NULL PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
) STRICT;

-- Claims in flight: written with the claim, removed when the run is finished or released.
CREATE TABLE claims (
    id          INTEGER NOT NULL PRIMARY KEY,
    approval_id TEXT    NOT NULL REFERENCES approvals (id),
    instance    TEXT    NOT NULL,
    at          INTEGER NOT NULL
) STRICT;

CREATE INDEX claims_instance ON claims (instance);
CREATE INDEX claims_approval ON claims (approval_id);
