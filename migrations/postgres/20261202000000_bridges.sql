-- More than one bridge (product.md §7.6; used on PostgreSQL, where several
-- bridges share one history; SQLite keeps one bridge per file, and the same
-- columns keep the SQL the same). Append-only: change it in a new file.

-- The bridge that recorded a transition (its events are that bridge's to
-- deliver). NULL for rows written before this migration and for intervals
-- synthesised on restart or take-over.
ALTER TABLE intervals ADD COLUMN bridge TEXT;

-- Bridges alive on this database: each writes its heartbeat (ms, the
-- database's clock) every few seconds.
CREATE TABLE bridges (
    bridge TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL,
    started_at BIGINT NOT NULL
);

-- Which bridge polls which agent, until when (ms, the database's clock).
-- `epoch` grows with every change of owner: a bridge writes an agent's
-- history only while it holds the lease it took (fencing).
CREATE TABLE agent_leases (
    agent TEXT PRIMARY KEY,
    bridge TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Queue commands by transaction, shared by every bridge: a request resent
-- to another bridge (MQTT 5 shared subscriptions, QoS 1 redelivery) is
-- answered from here, not executed twice.
CREATE TABLE command_transactions (
    topic TEXT NOT NULL,
    "transaction" TEXT NOT NULL,
    bridge TEXT NOT NULL,
    -- NULL while running; the response payload once answered.
    response TEXT,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (topic, "transaction")
);
CREATE INDEX command_transactions_received_at ON command_transactions (received_at);
