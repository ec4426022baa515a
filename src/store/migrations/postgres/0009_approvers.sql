-- Who may vote on a request: its workflow's `approvers` list (names and `team:NAME`) when the
-- request was opened, as a JSON array; an empty array admits everyone. A process deciding it
-- admits only a voter both this list and its own workflow admit. NULL for requests opened before
-- it was recorded.
ALTER TABLE approvals ADD COLUMN approvers TEXT;
