-- The credential that cast each vote: one vote per credential, so that the shared approver token
-- counts once whatever approver name it decides under. NULL for votes cast before.

ALTER TABLE approval_votes ADD COLUMN credential TEXT;
