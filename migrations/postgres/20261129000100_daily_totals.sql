-- Per-day totals, kept as history is written, so a report over whole days
-- reads a few thousand rows instead of every interval (product.md §8).
-- A day is a local calendar day in the time zone recorded in
-- `daily_rollup`; `day_start` is its first instant (ms since the epoch,
-- UTC). Only closed intervals are counted here; reports add the open ones.
-- Append-only: change the schema in a new migration file.

-- Time per agent, day and status: the part of each closed interval that
-- falls in the day.
CREATE TABLE daily_status (
    day_start BIGINT NOT NULL,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    ms BIGINT NOT NULL,
    PRIMARY KEY (day_start, agent, status)
);

-- Calls per agent and day: closed `on_call` intervals opened by a
-- transition (with a seq), counted on the day they start, with their full
-- duration.
CREATE TABLE daily_calls (
    day_start BIGINT NOT NULL,
    agent TEXT NOT NULL,
    calls BIGINT NOT NULL,
    call_ms BIGINT NOT NULL,
    longest_ms BIGINT NOT NULL,
    PRIMARY KEY (day_start, agent)
);

-- The time zone the days above are cut in (at most one row). The totals are
-- rebuilt from the intervals when the configured zone differs.
CREATE TABLE daily_rollup (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    timezone TEXT NOT NULL
);
