-- Indexes for the dashboard: per-agent views (risk snapshot), the stats range scan, and audit
-- pages filtered by agent or event.

CREATE INDEX approvals_agent_created ON approvals (agent, created_at);
CREATE INDEX audit_agent_at ON audit (agent, at) WHERE agent IS NOT NULL;
CREATE INDEX audit_event ON audit (event, id);

-- The tool as the upstream described it when the call was held (description, annotations), so
-- the request page shows what the approver is approving even after the tool list changes.
ALTER TABLE approvals ADD COLUMN tool_info TEXT;
