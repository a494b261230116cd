-- One index by agent instead of two (issue #13: write amplification).
--
-- `intervals_agent_started_at (agent, started_at)` and `intervals_report
-- (agent, status, started_at, ended_at, seq)` were both written on every
-- transition, and the second one twice: closing the previous interval moved
-- its entry (ended_at is in the key) and the new interval went under another
-- status, so a transition dirtied three leaf pages far apart, one of which
-- usually had to be read back first. With `(agent, started_at, ...)` first,
-- an agent's closed interval and its new one sit side by side: one leaf page
-- per transition. It covers every query the two served: the summaries and
-- calls (agent list, start range; status filtered in the index), the
-- interval crossing a boundary (agent, start descending), one agent's
-- timeline (agent, start range) and resume.
-- Append-only: change it in a new migration file.
DROP INDEX intervals_agent_started_at;
DROP INDEX intervals_report;
CREATE INDEX intervals_agent_time ON intervals (agent, started_at, status, ended_at, seq);
