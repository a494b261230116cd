-- Reports (product.md §4 and §8). The summary sums, per agent and status, the
-- intervals that start in a period; with this index PostgreSQL can answer from
-- the index alone (index-only scan once the pages are all-visible).
-- Append-only: change it in a new migration file.
CREATE INDEX intervals_report ON intervals (agent, status, started_at) INCLUDE (ended_at, seq);
