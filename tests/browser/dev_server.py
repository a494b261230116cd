#!/usr/bin/env python3
"""A development stand-in for the pbx2mqtt HTTP server, for working on the web
pages (assets/web/) before, or without, the Rust side.

Standard library only. It serves the pages and fakes the endpoints the pages
use, with generated data for N agents:

  /                       assets/web/index.html (the wallboard)
  /reports                assets/web/reports.html
  /assets/<file>          assets/web/<file>
  GET /api/agents         every agent's state (the MQTT state payload)
  GET /api/queues         {"queues": [{"queue", "members", "agents", "updated"}]}
  GET /api/stream         server-sent events: snapshot, state, queues, bridge, ": ping"
  GET /api/reports/summary?from=&to=&agent=&by=day|total&format=json|csv
  GET /api/reports/timeline?from=&to=&agent=&format=json|csv   (agent optional)

Controls for development and tests (POST or GET):

  /dev/set?agent=ID&status=S    make one transition now
  /dev/bridge?state=offline     send `event: bridge` (online|offline); offline pauses changes
  /dev/drop                     close every open stream (the browser reconnects)
  /dev/refuse?seconds=10        answer /api/stream with 503 for a while
  /dev/rate?value=1000          transitions per second
  /dev/info                     counters

Example: python3 tests/browser/dev_server.py --agents 5000 --rate 1000 --port 8099
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import random
import re
import socket
import sys
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets" / "web"
UTC = dt.timezone.utc

STATUSES = [
    "offline", "paused", "busy", "unavailable", "available",
    "ringing", "on_call", "wrapup", "unknown",
]
LOGGED_IN = {"paused", "busy", "unavailable", "available", "ringing", "on_call", "wrapup"}

# Where an agent goes next, with weights (a rough call-center day).
NEXT = {
    "offline": [("available", 8), ("paused", 1), ("unavailable", 1)],
    "available": [("ringing", 60), ("paused", 12), ("busy", 10), ("unavailable", 8),
                  ("offline", 7), ("unknown", 3)],
    "ringing": [("on_call", 8), ("available", 2)],
    "on_call": [("wrapup", 7), ("available", 3)],
    "wrapup": [("available", 9), ("paused", 1)],
    "busy": [("available", 8), ("wrapup", 2)],
    "paused": [("available", 85), ("offline", 15)],
    "unavailable": [("available", 8), ("offline", 2)],
    "unknown": [("available", 1), ("offline", 1)],
}
# Typical seconds in each status for the report history: (min, max).
DURATION = {
    "available": (20, 420), "ringing": (3, 25), "on_call": (45, 900), "wrapup": (20, 180),
    "busy": (60, 400), "paused": (120, 600), "unavailable": (300, 1200), "unknown": (60, 300),
}
# Where an agent goes next in the generated history (fewer breaks than live).
HISTORY_NEXT = {
    "available": [("ringing", 80), ("paused", 4), ("busy", 8), ("unavailable", 3), ("unknown", 1)],
    "ringing": [("on_call", 85), ("available", 15)],
    "on_call": [("wrapup", 75), ("available", 25)],
    "wrapup": [("available", 95), ("paused", 5)],
    "busy": [("available", 80), ("wrapup", 20)],
    "paused": [("available", 1)],
    "unavailable": [("available", 1)],
    "unknown": [("available", 1)],
}
REASONS = ["lunch", "meeting", "training", "coaching", "backoffice"]
FIRST = ["Anna", "Bram", "Chloé", "Daan", "Emma", "Finn", "Gijs", "Hanna", "Iris", "Jasper",
         "Julia", "Lars", "Lotte", "Milan", "Noor", "Olivier", "Puck", "Ruben", "Sanne", "Thijs",
         "Vera", "Wouter", "Yara", "Zoë", "Fatima", "Mohammed", "Sem", "Lieke", "Koen", "Eva"]
LAST = ["de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen",
        "Visser", "Smit", "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters",
        "Hendriks", "van Leeuwen", "Dekker", "Brouwer", "El Amrani", "Kaya", "Yılmaz",
        "van der Meer-Oosterhuis"]


def rfc3339_utc(ts: float) -> str:
    """`2026-11-22T09:41:07.250Z`, as the bridge writes state times."""
    return dt.datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(ts * 1000) % 1000:03d}Z"


def rfc3339_zone(ts: float, tz: ZoneInfo) -> str:
    """`2026-03-29T12:30:00+02:00`, as the reports write times."""
    moment = dt.datetime.fromtimestamp(ts, tz)
    text = moment.isoformat(timespec="milliseconds" if ts % 1 else "seconds")
    return text


def weighted(rng: random.Random, choices):
    total = sum(weight for _, weight in choices)
    pick = rng.uniform(0, total)
    for value, weight in choices:
        pick -= weight
        if pick <= 0:
            return value
    return choices[-1][0]


class Board:
    """The live agents, their queues and the connected streams."""

    def __init__(self, agents: int, queue_count: int, seed: int):
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.seq = 100_000
        self.bridge = "online"
        self.clients: list[Client] = []
        self.refuse_until = 0.0
        self.rate = 0.0
        self.transitions = 0
        now = time.time()
        self.agents: dict[str, dict] = {}
        self.extension: dict[str, str] = {}
        for index in range(agents):
            agent = f"agent{1001 + index}"
            name = f"{FIRST[index % len(FIRST)]} {LAST[(index // len(FIRST) + index) % len(LAST)]}"
            if agents <= len(FIRST) * len(LAST) // 4:
                name = f"{FIRST[index % len(FIRST)]} {LAST[(index * 7) % len(LAST)]}"
            self.extension[agent] = str(200 + index) if agents < 700 else str(10_000 + index)
            status = weighted(self.rng, [("available", 30), ("on_call", 30), ("wrapup", 8),
                                         ("ringing", 5), ("busy", 5), ("paused", 8),
                                         ("unavailable", 4), ("offline", 9), ("unknown", 1)])
            since = now - self.rng.choice([self.rng.uniform(0, 300), self.rng.uniform(0, 3000),
                                           self.rng.uniform(3600, 20_000)])
            self.agents[agent] = self.state(agent, name, status, since, since, 0)
        ids = list(self.agents)
        self.queues: dict[str, dict] = {}
        for number in range(queue_count):
            queue = str(500 + number)
            size = max(1, min(len(ids), int(len(ids) * self.rng.uniform(0.08, 0.35))))
            members_agents = sorted(self.rng.sample(ids, size))
            extras = [str(900 + number)] if number % 3 == 0 else []
            self.queues[queue] = {
                "queue": queue,
                "members": [self.extension[a] for a in members_agents] + extras,
                "agents": members_agents,
                "updated": rfc3339_utc(now),
            }

    def state(self, agent, name, status, since, updated, seq):
        available = None if status == "unknown" else status in (
            "available", "ringing", "on_call", "wrapup")
        reason = None
        if status == "paused":
            reason = "pause"
        elif status == "busy":
            reason = "handling"
        elif status == "unavailable":
            reason = self.rng.choice(REASONS)
        extension_status = {"available": "idle", "ringing": "calling", "on_call": "called",
                            "wrapup": "wrapup"}.get(status)
        return {
            "agent": agent, "name": name, "status": status,
            "on_a_call": status in ("ringing", "on_call", "busy"),
            "available": available, "reason": reason, "extension_status": extension_status,
            "destination": self.extension[agent] if status != "offline" else None,
            "since": rfc3339_utc(since), "updated": rfc3339_utc(updated), "seq": seq,
        }

    def snapshot(self, subscriber: "Client | None" = None) -> dict:
        """Every agent and queue; with `subscriber`, registers it for events in
        the same critical section, so no change falls between the snapshot and
        the stream (the real server must do the same: subscribe, then read)."""
        with self.lock:
            if subscriber is not None:
                self.clients.append(subscriber)
            return {
                "agents": [self.agents[a] for a in sorted(self.agents)],
                "queues": [dict(self.queues[q]) for q in sorted(self.queues)],
                "bridge": self.bridge,
                "server_time": rfc3339_utc(time.time()),
            }

    def transition(self, agent: str | None = None, status: str | None = None) -> dict:
        with self.lock:
            if agent is None:
                agent = self.rng.choice(list(self.agents))
            current = self.agents[agent]
            if status is None:
                status = weighted(self.rng, NEXT[current["status"]])
            now = time.time()
            self.seq += 1
            state = self.state(agent, current["name"], status, now, now, self.seq)
            self.agents[agent] = state
            self.transitions += 1
        self.broadcast("state", state, event_id=state["seq"])
        return state

    def move_queue_member(self):
        with self.lock:
            queue = self.queues[self.rng.choice(list(self.queues))]
            agent = self.rng.choice(list(self.agents))
            agents = set(queue["agents"])
            agents.symmetric_difference_update({agent})
            queue["agents"] = sorted(agents)
            extras = [m for m in queue["members"] if m not in self.extension.values()]
            queue["members"] = [self.extension[a] for a in queue["agents"]] + extras
            queue["updated"] = rfc3339_utc(time.time())
            message = dict(queue)
        self.broadcast("queues", message)

    def set_bridge(self, state: str):
        with self.lock:
            self.bridge = state
        self.broadcast("bridge", {"state": state})

    def broadcast(self, event: str, data, event_id=None):
        text = ""
        if event_id is not None:
            text += f"id: {event_id}\n"
        text += f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        payload = text.encode()
        with self.lock:
            clients = list(self.clients)
        for client in clients:
            client.send(payload)

    def drop_clients(self):
        with self.lock:
            clients, self.clients = self.clients, []
        for client in clients:
            client.close()


class Client:
    """One open stream: a bounded outbox drained by its handler thread."""

    LIMIT = 200_000

    def __init__(self):
        self.outbox: deque[bytes] = deque()
        self.ready = threading.Condition()
        self.closed = False

    def send(self, payload: bytes):
        with self.ready:
            if len(self.outbox) >= self.LIMIT:
                self.closed = True  # too slow: drop it, the browser reconnects
            else:
                self.outbox.append(payload)
            self.ready.notify()

    def close(self):
        with self.ready:
            self.closed = True
            self.ready.notify()

    def take(self, timeout: float) -> bytes | None:
        with self.ready:
            if not self.outbox and not self.closed:
                self.ready.wait(timeout)
            if self.closed:
                return None
            chunk = b"".join(self.outbox)
            self.outbox.clear()
            return chunk


def simulate(board: Board, stop: threading.Event, queue_every: float):
    """Random transitions at `board.rate` per second; a queue change now and then."""
    carry = 0.0
    last = time.monotonic()
    next_queue = last + queue_every
    while not stop.wait(0.01):
        now = time.monotonic()
        carry += board.rate * (now - last)
        last = now
        if board.bridge != "online":
            carry = 0
            continue
        count = int(carry)
        carry -= count
        for _ in range(count):
            board.transition()
        if queue_every > 0 and now >= next_queue:
            next_queue = now + queue_every
            board.move_queue_member()


# ------------------------------------------------------------------ history

class History:
    """Deterministic generated history: the same agent and day always give the
    same intervals; today stops at now with an open interval."""

    def __init__(self, board: Board, tz: ZoneInfo):
        self.board = board
        self.tz = tz
        self.cache: dict[tuple[str, dt.date], list] = {}
        self.lock = threading.Lock()

    def day_start(self, day: dt.date) -> float:
        return dt.datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()

    def rng(self, agent: str, day: dt.date, what: str) -> random.Random:
        digest = hashlib.sha256(f"{agent}/{day.isoformat()}/{what}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def work(self, agent: str, day: dt.date) -> list[tuple[str, float, float, str | None]]:
        """The logged-in intervals of one day (status, start, end, reason)."""
        key = (agent, day)
        with self.lock:
            if key in self.cache:
                return self.cache[key]
        rng = self.rng(agent, day, "work")
        weekend = day.weekday() >= 5
        intervals = []
        if rng.random() < (0.2 if weekend else 0.92):
            base = self.day_start(day)
            t = base + rng.uniform(7 * 3600, 9.5 * 3600)
            end = base + rng.uniform(15.5 * 3600, 18.5 * 3600)
            lunch = base + rng.uniform(11.75 * 3600, 12.75 * 3600)
            status = "available"
            had_lunch = False
            while t < end:
                if not had_lunch and t >= lunch:
                    status, had_lunch = "paused", True
                    length = rng.uniform(1500, 2400)
                else:
                    low, high = DURATION[status]
                    length = rng.uniform(low, high)
                stop = min(t + length, end)
                reason = None
                if status == "unavailable":
                    reason = rng.choice(REASONS)
                elif status == "paused":
                    reason = "pause"
                elif status == "busy":
                    reason = "handling"
                intervals.append((status, t, stop, reason))
                t = stop
                status = weighted(rng, HISTORY_NEXT[status])
        with self.lock:
            self.cache[key] = intervals
        return intervals

    def intervals(self, agent: str, start: float, stop: float, now: float):
        """Intervals overlapping [start, stop), unclipped, the current one open."""
        first = dt.datetime.fromtimestamp(start, self.tz).date() - dt.timedelta(days=1)
        last = dt.datetime.fromtimestamp(min(stop, now), self.tz).date() + dt.timedelta(days=1)
        blocks = []
        day = first
        while day <= last:
            blocks.extend(self.work(agent, day))
            day += dt.timedelta(days=1)
        # Offline between working blocks; the first offline began before the window.
        full = []
        cursor = self.day_start(first) - 6 * 3600
        for status, begin, end, reason in blocks:
            if begin > cursor:
                full.append(("offline", cursor, begin, None))
            full.append((status, begin, end, reason))
            cursor = end
        full.append(("offline", cursor, float("inf"), None))
        result = []
        for status, begin, end, reason in full:
            if begin >= now:
                break
            open_ = end >= now
            if begin >= stop or (not open_ and end <= start):
                continue
            result.append((status, begin, None if open_ else end, reason))
        return result


def parse_bound(raw: str, tz: ZoneInfo, name: str, end: bool) -> float:
    raw = raw.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        try:
            day = dt.date.fromisoformat(raw)
        except ValueError:
            day = None
        if day is not None:
            if end:
                day += dt.timedelta(days=1)
            return dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()
    try:
        moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            return moment.timestamp()
    except ValueError:
        pass
    raise BadParameter(name, f"{raw[:64]!r} is not a date (YYYY-MM-DD) or an RFC 3339 "
                             "timestamp (2026-03-29T08:00:00+02:00)")


class BadParameter(Exception):
    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter
        self.message = message


def report_params(query: str, allowed: list[str], tz: ZoneInfo, now: float) -> dict:
    params = {"agents": []}
    seen = set()
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise BadParameter("query", f"unknown parameter \"{key[:40]}\"; use {', '.join(allowed)}")
        if key != "agent":
            if key in seen:
                raise BadParameter(key, "given more than once")
            seen.add(key)
        if key == "agent":
            for item in value.split(","):
                item = item.strip()
                if item and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", item):
                    raise BadParameter("agent", f"{item!r} is not a valid agent id")
                if item:
                    params["agents"].append(item)
        elif key == "by":
            if value not in ("day", "week", "month", "total"):
                raise BadParameter("by", f"unknown period {value!r}: use day, week, month or total")
            params["by"] = value
        elif key == "format":
            if value not in ("json", "csv", "table"):
                raise BadParameter("format", f"unknown format {value!r}: use table, csv or json")
            params["format"] = value
        else:
            params[key] = value
    today = dt.datetime.fromtimestamp(now, tz).date()
    params["start"] = parse_bound(params.get("from", today.isoformat()), tz, "from", False)
    params["stop"] = parse_bound(params.get("to", today.isoformat()), tz, "to", True)
    if params["start"] >= params["stop"]:
        raise BadParameter("from", "the range is empty: `from` ({}) must be before `to` ({})".format(
            rfc3339_zone(params["start"], tz), rfc3339_zone(params["stop"], tz)))
    return params


def periods(start: float, stop: float, by: str, tz: ZoneInfo):
    if by == "total":
        return [("total", start, stop)]
    result = []
    t = start
    while t < stop:
        day = dt.datetime.fromtimestamp(t, tz).date()
        nxt = day + dt.timedelta(days=1)
        end = min(stop, dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp())
        result.append((day.isoformat(), t, end))
        t = end
        if len(result) > 1000:
            raise BadParameter("by", "the range has more than 1000 periods; use a shorter range "
                                     "or a coarser `by`")
    return result


def summary_rows(history: History, agents: list[str], start, stop, by, now):
    tz = history.tz
    rows = []
    for agent in agents:
        name = history.board.agents[agent]["name"] if agent in history.board.agents else agent
        intervals = history.intervals(agent, start, stop, now)
        for label, p_start, p_end in periods(start, stop, by, tz):
            seconds = dict.fromkeys(STATUSES, 0.0)
            calls, call_total, longest = 0, 0.0, 0.0
            for status, begin, end, _ in intervals:
                end_or_now = now if end is None else end
                overlap = min(end_or_now, p_end) - max(begin, p_start)
                if overlap > 0:
                    seconds[status] += overlap
                if status == "on_call" and p_start <= begin < p_end:
                    calls += 1
                    call_total += end_or_now - begin
                    longest = max(longest, end_or_now - begin)
            logged_in = sum(seconds[s] for s in LOGGED_IN)
            occupied = sum(seconds[s] for s in ("ringing", "on_call", "wrapup", "busy"))
            workable = logged_in - seconds["paused"]
            row = {
                "agent": agent, "name": name, "period": label,
                "period_start": rfc3339_zone(p_start, tz), "period_end": rfc3339_zone(p_end, tz),
                "period_s": round(p_end - p_start, 3),
                "recorded_s": round(sum(seconds.values()), 3),
                "logged_in_s": round(logged_in, 3),
            }
            for status in STATUSES:
                row[f"{status}_s"] = round(seconds[status], 3)
            row["calls"] = calls
            row["average_call_s"] = round(call_total / calls, 3) if calls else None
            row["longest_call_s"] = round(longest, 3) if calls else None
            row["occupancy"] = round(occupied / workable, 4) if workable > 0 else None
            rows.append(row)
    return rows


SUMMARY_COLUMNS = ["agent", "name", "period", "period_start", "period_end", "period_s",
                   "recorded_s", "logged_in_s", "offline_s", "paused_s", "busy_s",
                   "unavailable_s", "available_s", "ringing_s", "on_call_s", "wrapup_s",
                   "unknown_s", "calls", "average_call_s", "longest_call_s", "occupancy"]
# The pages need nothing from elsewhere and no inline script or style
# (icons are data: images in style.css).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
TIMELINE_COLUMNS = ["agent", "status", "started_at", "ended_at", "duration_s", "reason",
                    "extension_status", "destination"]


def to_csv(rows, columns) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return out.getvalue()


# ------------------------------------------------------------------ HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pbx2mqtt-dev"
    board: Board
    history: History
    quiet = True

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)

    def send_body(self, status: int, body: bytes, content_type: str, extra=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, value, status=200):
        body = json.dumps(value, separators=(",", ":")).encode()
        self.send_body(status, body, "application/json")

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        path = url.path
        try:
            if path in ("/", "/index.html"):
                return self.static("index.html")
            if path == "/reports":
                return self.static("reports.html")
            if path.startswith("/assets/"):
                return self.static(path[len("/assets/"):])
            if path == "/api/agents":
                return self.send_json(self.board.snapshot()["agents"])
            if path == "/api/queues":
                return self.send_json({"queues": self.board.snapshot()["queues"]})
            if path == "/api/stream":
                return self.stream()
            if path == "/api/reports/summary":
                return self.summary(url.query)
            if path == "/api/reports/timeline":
                return self.timeline(url.query)
            if path.startswith("/dev/"):
                return self.control(path[5:], dict(parse_qsl(url.query)))
            self.send_body(404, b"not found\n", "text/plain; charset=utf-8")
        except BadParameter as error:
            self.send_json({"error": f"invalid `{error.parameter}`: {error.message}"
                            if error.parameter != "query" else error.message,
                            "parameter": error.parameter}, 400)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def static(self, name: str):
        types = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
        file = ASSETS / name
        if "/" in name or name.startswith(".") or not file.is_file():
            return self.send_body(404, b"not found\n", "text/plain; charset=utf-8")
        headers = {"X-Content-Type-Options": "nosniff"}
        if file.suffix == ".html":
            headers["Content-Security-Policy"] = CSP
        self.send_body(200, file.read_bytes(), types.get(file.suffix, "application/octet-stream"),
                       headers)

    def stream(self):
        if time.time() < self.board.refuse_until:
            return self.send_body(503, b"refused for testing\n", "text/plain; charset=utf-8")
        client = Client()
        snapshot = json.dumps(self.board.snapshot(subscriber=client), separators=(",", ":"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(f"event: snapshot\ndata: {snapshot}\n\n".encode())
            self.wfile.flush()
            while True:
                chunk = client.take(15)
                if chunk is None:
                    break
                self.wfile.write(chunk if chunk else b": ping\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        finally:
            with self.board.lock:
                if client in self.board.clients:
                    self.board.clients.remove(client)
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def summary(self, query: str):
        now = time.time()
        params = report_params(query, ["from", "to", "agent", "by", "format"],
                               self.history.tz, now)
        agents = sorted(set(params["agents"])) if params["agents"] else sorted(self.board.agents)
        by = params.get("by", "day")
        rows = summary_rows(self.history, agents, params["start"], params["stop"], by, now)
        if params.get("format") == "csv":
            return self.send_body(200, to_csv(rows, SUMMARY_COLUMNS).encode(),
                                  "text/csv; charset=utf-8")
        tz = self.history.tz
        self.send_json({
            "timezone": tz.key, "from": rfc3339_zone(params["start"], tz),
            "to": rfc3339_zone(params["stop"], tz), "by": by,
            "generated_at": rfc3339_zone(now, tz), "rows": rows,
        })

    def timeline(self, query: str):
        now = time.time()
        tz = self.history.tz
        params = report_params(query, ["from", "to", "agent", "format"], tz, now)
        agents = sorted(set(params["agents"])) if params["agents"] else sorted(self.board.agents)
        rows = []
        for agent in agents:
            destination = self.board.extension.get(agent)
            for status, begin, end, reason in self.history.intervals(
                    agent, params["start"], params["stop"], now):
                rows.append({
                    "agent": agent, "status": status, "started_at": rfc3339_zone(begin, tz),
                    "ended_at": None if end is None else rfc3339_zone(end, tz),
                    "duration_s": round((now if end is None else end) - begin, 3),
                    "reason": reason,
                    "extension_status": {"available": "idle", "ringing": "calling",
                                         "on_call": "called", "wrapup": "wrapup"}.get(status),
                    "destination": None if status == "offline" else destination,
                })
        if params.get("format") == "csv":
            return self.send_body(200, to_csv(rows, TIMELINE_COLUMNS).encode(),
                                  "text/csv; charset=utf-8")
        self.send_json({
            "timezone": tz.key, "from": rfc3339_zone(params["start"], tz),
            "to": rfc3339_zone(params["stop"], tz), "generated_at": rfc3339_zone(now, tz),
            "intervals": rows,
        })

    def control(self, action: str, args: dict):
        board = self.board
        if action == "set":
            agent, status = args.get("agent"), args.get("status")
            if agent not in board.agents or status not in STATUSES:
                return self.send_json({"error": "need agent=<known id>&status=<status>"}, 400)
            return self.send_json(board.transition(agent, status))
        if action == "bridge":
            state = args.get("state", "offline")
            board.set_bridge("offline" if state == "offline" else "online")
            return self.send_json({"bridge": board.bridge})
        if action == "drop":
            board.drop_clients()
            return self.send_json({"dropped": True})
        if action == "refuse":
            board.refuse_until = time.time() + float(args.get("seconds", "10"))
            return self.send_json({"refuse_until": board.refuse_until})
        if action == "rate":
            board.rate = max(0.0, float(args.get("value", "0")))
            return self.send_json({"rate": board.rate})
        if action == "info":
            return self.send_json({"agents": len(board.agents), "clients": len(board.clients),
                                   "rate": board.rate, "transitions": board.transitions,
                                   "bridge": board.bridge})
        self.send_json({"error": "unknown control"}, 404)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--queues", type=int, default=6)
    parser.add_argument("--rate", type=float, default=None,
                        help="transitions per second (default: each agent every ~20 s)")
    parser.add_argument("--queue-every", type=float, default=10.0,
                        help="seconds between queue membership changes (0: never)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timezone", default="Europe/Amsterdam")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args()

    board = Board(args.agents, args.queues, args.seed)
    board.rate = args.rate if args.rate is not None else max(0.2, args.agents / 20)
    Handler.board = board
    Handler.history = History(board, ZoneInfo(args.timezone))
    Handler.quiet = not args.verbose
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    stop = threading.Event()
    threading.Thread(target=simulate, args=(board, stop, args.queue_every), daemon=True).start()
    host, port = server.server_address[:2]
    print(f"dev server: http://{host}:{port}/  ({args.agents} agents, {board.rate:g} "
          f"transitions/s)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        board.drop_clients()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
