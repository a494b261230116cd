-- Queue command audit (product.md §3): one row per command received over
-- MQTT or run from the CLI, including refused ones. Times are milliseconds
-- since the Unix epoch, UTC. Append-only: change the schema in a new file.
-- Nothing here ever holds the TRiNG key: `request` is the payload as
-- received (requests never carry the key) and error texts are redacted.
CREATE TABLE command_audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- When the request was received (ms since the epoch, UTC).
    received_at BIGINT NOT NULL,
    -- The request topic (`cli/...` for the CLI).
    topic TEXT NOT NULL,
    -- The payload as received (lossy UTF-8, at most 4096 characters).
    request TEXT NOT NULL,
    -- add, remove, clean, list, queues, or the unknown action as received.
    action TEXT NOT NULL,
    queue TEXT,
    -- The configured agent, when the request named one.
    agent TEXT,
    extension TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'error')),
    -- The machine code of an error (see src/commands/mod.rs).
    error_code TEXT,
    -- The human error message (redacted).
    error TEXT,
    -- Time spent waiting for TRiNG; NULL when nothing was sent.
    upstream_latency_ms BIGINT,
    -- The request's transaction as JSON text (`"abc"` or `42`).
    "transaction" TEXT
);

-- `pbx2mqtt audit --since`: newest first from a time.
CREATE INDEX command_audit_received_at ON command_audit (received_at);
