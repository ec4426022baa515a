-- The channel through which the call that opened a request was answered (task, input_required,
-- elicitation, wait, fail_fast). NULL for requests opened before it was recorded.
ALTER TABLE approvals ADD COLUMN channel TEXT;
