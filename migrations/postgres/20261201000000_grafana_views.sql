-- Read-only views and functions over the status history, for Grafana
-- (deploy/grafana/dashboards/pbx2mqtt.json) and for anyone writing SQL by
-- hand. They only read `intervals`; the bridge never uses them.
-- Append-only: change them in a new migration file (CREATE OR REPLACE).
--
-- Times in `intervals` are BIGINT milliseconds since the epoch, UTC; here
-- they are timestamptz. An open interval (the agent's current status) has
-- no `ended_at` and counts up to now(): `effective_end`.
--
-- Two kinds of object:
-- - views over the whole history, with days cut in Europe/Amsterdam (the
--   default `report.timezone`): easy to query, but each reads every
--   interval, so filter the daily ones by day only on small histories;
-- - functions taking a time range, an IANA time zone and an optional agent
--   list (NULL = every agent), which read only what the range needs through
--   the `(agent, started_at)` and `(started_at)` indexes. The dashboard uses
--   these.
--
-- Days are local calendar days in the given zone, so a daylight-saving day
-- has 23 or 25 hours, and an interval crossing midnight is split at it.
-- Calls are entries into `on_call` made by a transition (`seq` set; an
-- `on_call` interval resumed after a bridge restart continues a call already
-- counted), counted on the day the call starts, with its full duration, as
-- in `pbx2mqtt report summary`.

-- Milliseconds since the epoch (the unit of `intervals`) of a timestamptz.
CREATE FUNCTION pbx2mqtt_ms(at timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT floor(extract(epoch FROM at) * 1000)::bigint $$;

-- Every interval, with timestamps. `started_ms` and `ended_ms` are the
-- stored values: filter on them (not on `started_at`) to use the indexes.
CREATE VIEW pbx2mqtt_intervals AS
SELECT
    i.id,
    i.agent,
    i.status,
    i.reason,
    i.extension_status,
    i.destination,
    i.seq,
    to_timestamp(i.started_at / 1000.0) AS started_at,
    to_timestamp(i.ended_at / 1000.0) AS ended_at,
    -- The end, or now() while open (never before the start, should the
    -- database's clock be behind the bridge's).
    coalesce(to_timestamp(i.ended_at / 1000.0),
             greatest(now(), to_timestamp(i.started_at / 1000.0))) AS effective_end,
    (greatest(coalesce(i.ended_at, pbx2mqtt_ms(now())), i.started_at) - i.started_at)
        / 1000.0::double precision AS duration_s,
    i.started_at AS started_ms,
    i.ended_at AS ended_ms
FROM intervals i;

-- Every agent with history, in order: a skip scan over the
-- `(agent, started_at)` index (one seek per agent, not one row per interval).
CREATE FUNCTION pbx2mqtt_agents() RETURNS SETOF text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH RECURSIVE agents(agent) AS (
        (SELECT agent FROM intervals ORDER BY agent LIMIT 1)
        UNION ALL
        SELECT (SELECT i.agent FROM intervals i WHERE i.agent > a.agent ORDER BY i.agent LIMIT 1)
        FROM agents a
        WHERE a.agent IS NOT NULL
    )
    SELECT agent FROM agents WHERE agent IS NOT NULL
$$;

-- The interval each agent of `agent_ids` (NULL: every agent) was in at
-- `at`, having started before it: its last interval that started before
-- `at`, unless that one had ended by then. One backward seek per agent on
-- the `(agent, started_at)` index (the row comparison keeps the planner on
-- it: an agent with no history before `at` must not cost a scan of
-- everyone's).
CREATE FUNCTION pbx2mqtt_crossing(at timestamptz, agent_ids text[] DEFAULT NULL)
RETURNS SETOF pbx2mqtt_intervals
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT last.*
    FROM unnest(coalesce(agent_ids, ARRAY(SELECT pbx2mqtt_agents()))) AS a(agent)
    CROSS JOIN LATERAL (
        SELECT * FROM pbx2mqtt_intervals b
        WHERE (b.agent, b.started_ms) < (a.agent, pbx2mqtt_ms(at))
        ORDER BY b.agent DESC, b.started_ms DESC, b.id DESC
        LIMIT 1
    ) last
    WHERE last.agent = a.agent
      AND (last.ended_ms IS NULL OR last.ended_ms > pbx2mqtt_ms(at))
$$;

-- The intervals of `agent_ids` (NULL: every agent) that overlap
-- [range_from, range_to), not clipped: the one each agent was in at
-- range_from, then those starting inside the range.
CREATE FUNCTION pbx2mqtt_intervals_between(
    range_from timestamptz,
    range_to timestamptz,
    agent_ids text[] DEFAULT NULL
) RETURNS SETOF pbx2mqtt_intervals
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT * FROM pbx2mqtt_crossing(range_from, agent_ids)
    WHERE range_to > range_from
    UNION ALL
    SELECT inside.*
    FROM pbx2mqtt_intervals inside
    WHERE inside.started_ms >= pbx2mqtt_ms(range_from)
      AND inside.started_ms < pbx2mqtt_ms(range_to)
      AND (agent_ids IS NULL OR inside.agent = ANY(agent_ids))
$$;

-- The local days (in `zone`) that [range_from, range_to) touches, whole:
-- day, its start and its end (exclusive).
CREATE FUNCTION pbx2mqtt_days(
    range_from timestamptz,
    range_to timestamptz,
    zone text DEFAULT 'Europe/Amsterdam'
) RETURNS TABLE (day date, day_start timestamptz, day_end timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT d.day,
           d.day::timestamp AT TIME ZONE zone,
           (d.day + 1)::timestamp AT TIME ZONE zone
    FROM (
        SELECT (range_from AT TIME ZONE zone)::date + n AS day
        FROM generate_series(
            0,
            ((range_to - interval '1 microsecond') AT TIME ZONE zone)::date
              - (range_from AT TIME ZONE zone)::date
        ) AS n
    ) d
    WHERE range_to > range_from
$$;

-- Seconds per local day, agent and status, for the days [range_from,
-- range_to) touches (whole days; an open interval counts up to now). An
-- interval crossing midnight is split at it. Statuses with no time that day
-- have no row. Like the report: per day, the intervals starting in it (cut
-- at its end), plus the one each agent was in at its start.
CREATE FUNCTION pbx2mqtt_status_seconds_by_day(
    range_from timestamptz,
    range_to timestamptz,
    zone text DEFAULT 'Europe/Amsterdam',
    agent_ids text[] DEFAULT NULL
) RETURNS TABLE (day date, day_start timestamptz, agent text, status text, seconds double precision)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH days AS (
        SELECT d.day, d.day_start, pbx2mqtt_ms(d.day_start) AS start_ms,
               pbx2mqtt_ms(d.day_end) AS end_ms, pbx2mqtt_ms(now()) AS now_ms
        FROM pbx2mqtt_days(range_from, range_to, zone) d
    ), parts AS (
        SELECT d.day, d.day_start, i.agent, i.status,
               greatest(least(coalesce(i.ended_at, d.now_ms), d.end_ms) - i.started_at, 0) AS ms
        FROM days d
        JOIN intervals i ON i.started_at >= d.start_ms AND i.started_at < d.end_ms
        WHERE agent_ids IS NULL OR i.agent = ANY(agent_ids)
        UNION ALL
        SELECT d.day, d.day_start, c.agent, c.status,
               greatest(least(coalesce(c.ended_ms, d.now_ms), d.end_ms) - d.start_ms, 0)
        FROM days d
        CROSS JOIN LATERAL pbx2mqtt_crossing(d.day_start, agent_ids) c
    )
    SELECT day, day_start, agent, status, sum(ms) / 1000.0::double precision
    FROM parts
    GROUP BY day, day_start, agent, status
    HAVING sum(ms) > 0
$$;

-- Calls per local day and agent, for the days [range_from, range_to)
-- touches: entries into on_call starting that day, their total, average
-- and longest duration (full durations; an open call counts up to now).
-- Days without calls have no row.
CREATE FUNCTION pbx2mqtt_calls_by_day(
    range_from timestamptz,
    range_to timestamptz,
    zone text DEFAULT 'Europe/Amsterdam',
    agent_ids text[] DEFAULT NULL
) RETURNS TABLE (
    day date, day_start timestamptz, agent text, calls bigint,
    call_seconds double precision, average_call_s double precision, longest_call_s double precision
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH days AS (
        SELECT * FROM pbx2mqtt_days(range_from, range_to, zone)
    )
    SELECT days.day, days.day_start, c.agent, count(*),
           sum(c.duration_s), avg(c.duration_s), max(c.duration_s)
    FROM days
    JOIN pbx2mqtt_intervals c
      ON c.started_ms >= pbx2mqtt_ms(days.day_start) AND c.started_ms < pbx2mqtt_ms(days.day_end)
    WHERE c.status = 'on_call'
      AND c.seq IS NOT NULL
      AND (agent_ids IS NULL OR c.agent = ANY(agent_ids))
    GROUP BY days.day, days.day_start, c.agent
$$;

-- Occupancy per local day and agent: (ringing + on_call + wrapup + busy) /
-- (logged in - paused), where logged in is every status but offline and
-- unknown; NULL when that is 0. Rounded to four decimals as in the report.
CREATE FUNCTION pbx2mqtt_occupancy_by_day(
    range_from timestamptz,
    range_to timestamptz,
    zone text DEFAULT 'Europe/Amsterdam',
    agent_ids text[] DEFAULT NULL
) RETURNS TABLE (
    day date, day_start timestamptz, agent text, logged_in_s double precision,
    paused_s double precision, handling_s double precision, occupancy double precision
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT s.day, s.day_start, s.agent, s.logged_in_s, s.paused_s, s.handling_s,
           round((s.handling_s / nullif(s.logged_in_s - s.paused_s, 0))::numeric, 4)::double precision
    FROM (
        SELECT day, day_start, agent,
               coalesce(sum(seconds) FILTER (WHERE status NOT IN ('offline', 'unknown')), 0) AS logged_in_s,
               coalesce(sum(seconds) FILTER (WHERE status = 'paused'), 0) AS paused_s,
               coalesce(sum(seconds) FILTER (WHERE status IN ('ringing', 'on_call', 'wrapup', 'busy')), 0)
                 AS handling_s
        FROM pbx2mqtt_status_seconds_by_day(range_from, range_to, zone, agent_ids)
        GROUP BY day, day_start, agent
    ) s
$$;

-- A number per status, for Grafana's state timeline (its time series carry
-- numbers; the dashboard maps them back to names and colours).
CREATE FUNCTION pbx2mqtt_status_code(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE status
        WHEN 'offline' THEN 0
        WHEN 'paused' THEN 1
        WHEN 'busy' THEN 2
        WHEN 'unavailable' THEN 3
        WHEN 'available' THEN 4
        WHEN 'ringing' THEN 5
        WHEN 'on_call' THEN 6
        WHEN 'wrapup' THEN 7
        WHEN 'unknown' THEN 8
    END
$$;

-- The whole history, days in Europe/Amsterdam (call the functions above for
-- another zone or a range).
CREATE VIEW pbx2mqtt_status_seconds_daily AS
SELECT s.*
FROM (SELECT to_timestamp(min(started_at) / 1000.0) AS first_start FROM intervals) h
CROSS JOIN LATERAL pbx2mqtt_status_seconds_by_day(h.first_start, now(), 'Europe/Amsterdam') s;

CREATE VIEW pbx2mqtt_calls_daily AS
SELECT c.*
FROM (SELECT to_timestamp(min(started_at) / 1000.0) AS first_start FROM intervals) h
CROSS JOIN LATERAL pbx2mqtt_calls_by_day(h.first_start, now(), 'Europe/Amsterdam') c;

CREATE VIEW pbx2mqtt_occupancy_daily AS
SELECT o.*
FROM (SELECT to_timestamp(min(started_at) / 1000.0) AS first_start FROM intervals) h
CROSS JOIN LATERAL pbx2mqtt_occupancy_by_day(h.first_start, now(), 'Europe/Amsterdam') o;
