-- Transitions by seq: rebuilding the events the broker has not acknowledged
-- after a restart (src/history/outbox.rs). Synthesised intervals have no seq.
CREATE INDEX intervals_seq ON intervals (seq) WHERE seq IS NOT NULL;
