-- Gate tasks: a held call answered with a task (the client polls it) instead of a result.

CREATE TABLE gate_tasks (
    id             TEXT    NOT NULL PRIMARY KEY,  -- mcpg- and 32 hex digits
    owner          TEXT    NOT NULL,              -- agent:NAME | stdio:NAME | anonymous
    era            TEXT    NOT NULL CHECK (era IN ('legacy', 'modern')),
    approval_id    TEXT    REFERENCES approvals (id),
    key            TEXT    NOT NULL,              -- call key of what runs (server + tool + arguments)
    server         TEXT    NOT NULL,              -- upstream server name
    tool           TEXT    NOT NULL,              -- the tool's name at the upstream
    params         TEXT    NOT NULL,              -- JSON params sent upstream when it runs
    state          TEXT    NOT NULL
        CHECK (state IN ('working', 'running', 'completed', 'failed', 'cancelled')),
    status_message TEXT,
    result         TEXT,                          -- JSON of the final result (completed, cancelled)
    error          TEXT,                          -- JSON of the JSON-RPC error (failed)
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    ttl_ms         BIGINT,                       -- kept this long after creation; NULL: until purged by hand
    instance       TEXT,                          -- the process that claimed it (instances.id)
    seq            BIGINT GENERATED ALWAYS AS IDENTITY -- insertion order (SQLite's rowid), for paging
);

-- The same caller retrying the same call gets its open task back.
CREATE UNIQUE INDEX gate_tasks_one_open ON gate_tasks (owner, key) WHERE state IN ('working', 'running');
CREATE INDEX gate_tasks_owner ON gate_tasks (owner, created_at);
CREATE INDEX gate_tasks_approval ON gate_tasks (approval_id);
CREATE INDEX gate_tasks_purge ON gate_tasks ((created_at + ttl_ms)) WHERE ttl_ms IS NOT NULL;

-- A claim made for a task names it, so that the claims of a stopped process fail their task.
ALTER TABLE claims ADD COLUMN task_id TEXT;
