-- Approvals: one row per held tool call, its votes, and every state change.
-- Times are unix milliseconds. JSON values are stored as TEXT.

CREATE TABLE approvals (
    id                 TEXT    NOT NULL PRIMARY KEY,
    key                TEXT    NOT NULL,          -- canonical call key (server + tool + args hash)
    server             TEXT    NOT NULL,
    tool               TEXT    NOT NULL,
    arguments          TEXT    NOT NULL,          -- JSON, already redacted by the caller if needed
    agent              TEXT,
    risk               TEXT,
    rule               TEXT,
    rule_reason        TEXT,
    workflow           TEXT    NOT NULL,
    required_approvals INTEGER NOT NULL,
    grant_secs         INTEGER NOT NULL DEFAULT 0, -- 0 = single use
    trace              TEXT    NOT NULL,          -- JSON policy trace
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,          -- decision deadline; also the use deadline of a single-use approval
    status             TEXT    NOT NULL
        CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'executed', 'failed')),
    decided_at         INTEGER,                   -- when approved / denied (start of a grant window)
    decided_by         TEXT,
    deny_reason        TEXT,
    notes              TEXT,
    uses               INTEGER NOT NULL DEFAULT 0, -- successful claims
    executed_at        INTEGER,                   -- last finished execution
    outcome            TEXT                       -- JSON of the last finished execution
) STRICT;

-- Queue views: "pending, newest first" and the unfiltered list.
CREATE INDEX approvals_status_created ON approvals (status, created_at);
CREATE INDEX approvals_created ON approvals (created_at);
-- find_reusable: most recent approval for a call key.
CREATE INDEX approvals_key_created ON approvals (key, created_at);
-- expire_due: pending rows past their deadline.
CREATE INDEX approvals_status_expires ON approvals (status, expires_at);

CREATE TABLE approval_votes (
    approval_id TEXT    NOT NULL REFERENCES approvals (id),
    actor       TEXT    NOT NULL,
    decision    TEXT    NOT NULL CHECK (decision IN ('approve', 'deny')),
    notes       TEXT,
    reason      TEXT,
    at          INTEGER NOT NULL,
    PRIMARY KEY (approval_id, actor)              -- one vote per distinct actor
) STRICT, WITHOUT ROWID;

CREATE TABLE approval_transitions (
    id          INTEGER NOT NULL PRIMARY KEY,
    approval_id TEXT    NOT NULL REFERENCES approvals (id),
    at          INTEGER NOT NULL,
    from_status TEXT,                             -- NULL for the creation row
    to_status   TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    notes       TEXT,
    reason      TEXT
) STRICT;

CREATE INDEX approval_transitions_approval ON approval_transitions (approval_id, id);
