-- Append-only, hash-chained audit log (see src/audit.rs).
--
-- hash = sha256(prev_hash || canonical JSON of {actor, agent, approval_id, at, detail, event, id, server, tool})
-- The first row's prev_hash is 64 zeros. `audit_head` anchors the tip of the chain so that deleting the
-- last rows is detected too (unless the head is rewritten as well).

CREATE TABLE audit (
    id          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,                 -- unix ms
    event       TEXT    NOT NULL,
    approval_id TEXT,
    server      TEXT    NOT NULL,
    tool        TEXT    NOT NULL,
    agent       TEXT,
    actor       TEXT,
    detail      TEXT    NOT NULL,                 -- canonical JSON, exactly the bytes that were hashed
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_approval ON audit (approval_id) WHERE approval_id IS NOT NULL;

CREATE TABLE audit_head (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    id        INTEGER NOT NULL,
    hash      TEXT    NOT NULL
) STRICT;

-- Guard rails against accidental rewrites by the application. They do not stop someone with write access to
-- the file (they can drop the triggers); the hash chain is what makes such edits visible.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only');
END;
