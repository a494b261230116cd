-- Reports (product.md §4 and §8). The summary sums, per agent and status, the
-- intervals that start in a period; with this index SQLite reads them from
-- the index alone, already in (agent, status) order, so it neither visits the
-- table nor sorts to group. Append-only: change it in a new migration file.
CREATE INDEX intervals_report ON intervals (agent, status, started_at, ended_at, seq);
