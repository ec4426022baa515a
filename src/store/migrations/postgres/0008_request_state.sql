-- The keys the proxy signs with, shared by every process on this database (created once, then
-- read), and the request states already used: a signed `requestState` is accepted once.

CREATE TABLE secrets (
    name       TEXT    NOT NULL PRIMARY KEY,
    value      BYTEA    NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE request_state_uses (
    nonce       TEXT    NOT NULL PRIMARY KEY,
    approval_id TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    at          BIGINT NOT NULL,
    -- After this the state is ignored (the call is held afresh), used or not: the row may go.
    expires_at  BIGINT NOT NULL
);
CREATE INDEX request_state_uses_expires ON request_state_uses (expires_at);
