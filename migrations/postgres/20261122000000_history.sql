-- Status history (product.md §4). Times are milliseconds since the Unix
-- epoch, UTC. Same shape as migrations/sqlite. Append-only: change the schema
-- in a new migration file.

-- One row per status interval of one agent. `ended_at` is NULL while the
-- interval is open (the agent's current status). `seq` is the bridge-wide
-- sequence number of the transition that opened the interval; NULL for
-- intervals the bridge synthesised on restart (the `unknown` gap while it was
-- down, and the resumed interval after it).
CREATE TABLE intervals (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    extension_status TEXT,
    destination TEXT,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    seq BIGINT,
    CONSTRAINT intervals_end_after_start CHECK (ended_at IS NULL OR ended_at >= started_at)
);

-- At most one open interval per agent.
CREATE UNIQUE INDEX intervals_one_open_per_agent ON intervals (agent) WHERE ended_at IS NULL;
-- One agent's history in time order (timelines, per-agent reports, resume).
CREATE INDEX intervals_agent_started_at ON intervals (agent, started_at);
-- Everyone's history in a time range (all-agent reports).
CREATE INDEX intervals_started_at ON intervals (started_at);

-- Bridge bookkeeping: `last_seq` (the highest transition seq committed) and
-- `heartbeat_at` (the last time the bridge was known to be running, ms).
CREATE TABLE bridge_meta (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
