#!/usr/bin/env python3
"""Browser checks of the pbx2mqtt web pages (`/` wallboard, `/reports`) against
a running server: the real bridge (the Rust integration test starts it) or
tests/browser/dev_server.py.

Drives Debian's Chromium (`/usr/bin/chromium`, or --chromium / $CHROMIUM)
through Playwright for Python, headless, with a fresh profile. It never
downloads a browser.

Commands (each takes --url BASE, e.g. http://127.0.0.1:8080/):

  wallboard    every agent of /api/agents has a tile with its status and the
               right label; header counts match; status colours have >= 4.5:1
               contrast; optional screenshots (TV and phone).
  wait-status  opens the wallboard and its own EventSource on /api/stream,
               prints READY, then waits for a `state` event (optionally of
               --agent with --status) and checks the tile shows it within
               --within seconds.
  reconnect    opens the wallboard, prints READY, then waits for its stream
               to drop (the caller cuts it) and come back by itself: a new
               snapshot, the banner shown meanwhile, the tiles matching
               /api/agents after (and, if asked, `Last-Event-ID` sent).
  reports      /reports for a day draws one strip per agent (each with its
               intervals), the summary table, a working CSV link and shows a
               400's message; optional screenshot.
  perf         measures the wallboard: time to first render, long tasks, frame
               rate and batch times while the stream runs (use with
               dev_server.py --agents 5000 --rate 1000).

Exit status: 0 all checks passed, 1 a check failed (the message says which),
2 bad usage, 3 cannot run here (Playwright or Chromium missing: a caller
should skip, saying so).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin

# The labels the wallboard must show, written out again here on purpose: a
# wrong label in the page is caught rather than copied.
LABELS = {
    "offline": "Offline",
    "paused": "Paused",
    "busy": "Busy",
    "unavailable": "Unavailable",
    "available": "Available",
    "ringing": "Ringing",
    "on_call": "On call",
    "wrapup": "Wrap-up",
    "unknown": "Unknown",
}
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MIN_CONTRAST = 4.5
TIMER = re.compile(r"^(\d{2}:\d{2}|\d+:\d{2}:\d{2}|\d+d \d{2}h|–)$")


class CheckFailed(Exception):
    """A check did not hold; the message says what was expected and seen."""


class CannotRun(Exception):
    """Playwright or Chromium is missing."""


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------ browser

class Browser:
    """A headless Chromium with a fresh profile, closed (and its profile
    removed) on exit."""

    def __init__(self, args):
        self.args = args
        self.profile = None
        self.playwright = None
        self.context = None
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []

    def __enter__(self):
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as error:
            raise CannotRun(f"the Python package `playwright` is not installed ({error}); "
                            "pip install playwright (no browser download needed)") from error
        chromium = self.args.chromium
        if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
            found = shutil.which(chromium)
            if not found:
                raise CannotRun(f"no Chromium at {chromium}; apt-get install chromium "
                                "(or pass --chromium PATH)")
            chromium = found
        self.profile = tempfile.mkdtemp(prefix="pbx2mqtt-chromium-")
        self.playwright = sync_playwright().start()
        width, height = self.args.viewport
        self.context = self.playwright.chromium.launch_persistent_context(
            self.profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height},
            device_scale_factor=1,
            service_workers="block",
        )
        self.context.set_default_timeout(self.args.timeout * 1000)
        return self

    def page(self, width=None, height=None):
        page = self.context.new_page()
        if width:
            page.set_viewport_size({"width": width, "height": height})
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", lambda message: message.type == "error"
                and self.console_errors.append(message.text))
        return page

    def __exit__(self, *exc):
        try:
            if self.context:
                self.context.close()
        finally:
            if self.playwright:
                self.playwright.stop()
            if self.profile:
                shutil.rmtree(self.profile, ignore_errors=True)

    def check_no_page_errors(self):
        if self.page_errors:
            raise CheckFailed("the page threw: " + " | ".join(self.page_errors[:5]))


def page_url(base: str, path: str) -> str:
    return urljoin(base if base.endswith("/") else base + "/", path)


def wait_for_wallboard(page, args, query=""):
    page.goto(page_url(args.url, query), wait_until="domcontentloaded")
    try:
        page.wait_for_function(
            "() => window.pbx2mqttWallboard && window.pbx2mqttWallboard.stats.snapshots > 0"
            " && window.pbx2mqttWallboard.stats.firstRenderAt !== null",
            timeout=args.timeout * 1000,
        )
    except Exception as error:  # Playwright's TimeoutError
        conn = page.evaluate("() => document.getElementById('conn')?.textContent")
        raise CheckFailed(f"the wallboard got no snapshot from /api/stream within "
                          f"{args.timeout} s (connection shows {conn!r}): {error}") from None


def contrast(rgb_a: str, rgb_b: str) -> float:
    def channels(text):
        text = text.strip()
        if text.startswith("#"):
            text = text[1:]
            if len(text) == 3:
                text = "".join(c * 2 for c in text)
            return [int(text[i:i + 2], 16) for i in (0, 2, 4)]
        numbers = re.findall(r"[\d.]+", text)
        return [float(n) for n in numbers[:3]]

    def luminance(values):
        def linear(c):
            c = c / 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
        r, g, b = (linear(c) for c in values)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    la, lb = sorted((luminance(channels(rgb_a)), luminance(channels(rgb_b))), reverse=True)
    return (la + 0.05) / (lb + 0.05)


# ------------------------------------------------------------------ wallboard

READ_TILES = """() => {
  const out = {};
  for (const tile of document.querySelectorAll('#board .tile')) {
    out[tile.dataset.agent] = {
      status: tile.dataset.status,
      seq: Number(tile.dataset.seq || 0),
      label: tile.querySelector('.label').textContent,
      name: tile.querySelector('.name').textContent,
      timer: tile.querySelector('.timer').textContent,
      hidden: tile.hidden,
    };
  }
  const counts = {};
  for (const item of document.querySelectorAll('#counts .count')) {
    counts[item.dataset.status] = Number(item.querySelector('.n').textContent);
  }
  return {tiles: out, counts};
}"""

FETCH_AGENTS = """async () => {
  const response = await fetch('api/agents', {cache: 'no-store'});
  if (!response.ok) throw new Error('/api/agents answered ' + response.status);
  return response.json();
}"""


def compare_board(page, args) -> tuple[int, dict]:
    """One round: /api/agents, then the DOM. Returns how many agents matched
    and, for tiles behind the API, the seq they must reach."""
    api = page.evaluate(FETCH_AGENTS)
    dom = page.evaluate(READ_TILES)
    tiles = dom["tiles"]
    if args.expect_agents is not None and len(api) != args.expect_agents:
        raise CheckFailed(f"/api/agents lists {len(api)} agents, expected {args.expect_agents}")
    missing = [a["agent"] for a in api if a["agent"] not in tiles]
    extra = sorted(set(tiles) - {a["agent"] for a in api})
    if missing or extra:
        return -1, {"missing": missing[:10], "extra": extra[:10]}
    behind = {}
    for tile_id, tile in tiles.items():
        if tile["label"] != LABELS.get(tile["status"]):
            raise CheckFailed(f"tile {tile_id}: status {tile['status']!r} is labelled "
                              f"{tile['label']!r}, expected {LABELS.get(tile['status'])!r}")
        if tile["hidden"]:
            raise CheckFailed(f"tile {tile_id} is hidden on an unfiltered board")
        if not TIMER.match(tile["timer"]):
            raise CheckFailed(f"tile {tile_id}: time in status {tile['timer']!r} is not "
                              "mm:ss, h:mm:ss or Nd HHh")
    for agent in api:
        tile = tiles[agent["agent"]]
        if tile["status"] == agent["status"] or tile["seq"] > agent["seq"]:
            continue
        if tile["seq"] == agent["seq"]:
            raise CheckFailed(f"tile {agent['agent']}: shows {tile['status']!r} for seq "
                              f"{agent['seq']}, /api/agents says {agent['status']!r}")
        behind[agent["agent"]] = {"seq": agent["seq"], "status": agent["status"]}
    total = sum(dom["counts"].values())
    if total != len(tiles):
        raise CheckFailed(f"the status counts add up to {total}, but there are {len(tiles)} tiles")
    per_status = {}
    for tile in tiles.values():
        per_status[tile["status"]] = per_status.get(tile["status"], 0) + 1
    for status, count in dom["counts"].items():
        if per_status.get(status, 0) != count:
            raise CheckFailed(f"the header counts {count} {status}, the board has "
                              f"{per_status.get(status, 0)} such tiles")
    return len(api), behind


def check_queues(page, attempts=3):
    """The header lists every queue of /api/queues, and each tile's chips
    are its queues (up to four, then `+n`). Membership can change while we
    look, so a mismatch is read again before it fails."""
    for attempt in range(attempts):
        try:
            return check_queues_once(page)
        except CheckFailed:
            if attempt == attempts - 1:
                raise
            page.wait_for_timeout(1000)


def check_queues_once(page):
    seen = page.evaluate("""async () => {
      const response = await fetch('api/queues', {cache: 'no-store'});
      if (!response.ok) return {status: response.status};
      const body = await response.json();
      const header = [...document.querySelectorAll('#queues .queue .q')].map((q) => q.textContent);
      const chips = {};
      for (const tile of document.querySelectorAll('#board .tile')) {
        chips[tile.dataset.agent] = [...tile.querySelectorAll('.chip')].map((c) => c.textContent);
      }
      return {status: 200, queues: body.queues, header, chips};
    }""")
    if seen["status"] != 200:
        log(f"  (no queue check: /api/queues answered {seen['status']})")
        return
    names = sorted(f"Queue {q['queue']}" for q in seen["queues"])
    if sorted(seen["header"]) != names:
        raise CheckFailed(f"the header lists queues {seen['header']}, /api/queues has {names}")
    expected: dict[str, list[str]] = {}
    for queue in seen["queues"]:
        for agent in queue.get("agents") or []:
            expected.setdefault(agent, []).append(str(queue["queue"]))
    for agent, chips in seen["chips"].items():
        mine = expected.get(agent, [])
        if not set(c for c in chips if not c.startswith("+")) <= set(mine) or \
                len(chips) != min(len(mine), 4) + (1 if len(mine) > 4 else 0):
            raise CheckFailed(f"tile {agent} shows queues {chips}, /api/queues says {sorted(mine)}")


def check_contrast(page):
    pairs = page.evaluate("""() => {
      const out = {};
      for (const status of %s) {
        const probe = document.createElement('div');
        probe.dataset.status = status;
        document.body.append(probe);
        const style = getComputedStyle(probe);
        out[status] = ['--bg', '--bg2', '--fg'].map((name) => style.getPropertyValue(name).trim());
        probe.remove();
      }
      return out;
    }""" % json.dumps(list(LABELS)))
    for status, (bg, bg2, fg) in pairs.items():
        if not bg or not fg:
            raise CheckFailed(f"status {status} has no --bg/--fg colours in style.css")
        for background in [bg] + ([bg2] if bg2 else []):
            ratio = contrast(background, fg)
            if ratio < MIN_CONTRAST:
                raise CheckFailed(f"status {status}: text {fg} on {background} has contrast "
                                  f"{ratio:.2f}:1, below {MIN_CONTRAST}:1")


def command_wallboard(args) -> str:
    with Browser(args) as browser:
        page = browser.page()
        started = time.monotonic()
        wait_for_wallboard(page, args)
        deadline = time.monotonic() + args.timeout
        while True:
            count, behind = compare_board(page, args)
            if count >= 0 and not behind:
                break
            if count >= 0:
                # Tiles behind the API must catch up within 2 s.
                try:
                    page.wait_for_function(
                        """(behind) => Object.entries(behind).every(([agent, want]) => {
                          const tile = document.querySelector(`#board .tile[data-agent="${CSS.escape(agent)}"]`);
                          if (!tile) return false;
                          const seq = Number(tile.dataset.seq || 0);
                          return seq > want.seq || (seq === want.seq && tile.dataset.status === want.status);
                        })""",
                        arg=behind, timeout=2000)
                    break
                except Exception:
                    still = page.evaluate(READ_TILES)["tiles"]
                    detail = {a: (still.get(a, {}).get("status"), still.get(a, {}).get("seq"), w)
                              for a, w in list(behind.items())[:5]}
                    raise CheckFailed(f"{len(behind)} tile(s) did not reach the state of "
                                      f"/api/agents within 2 s: {detail}") from None
            if time.monotonic() > deadline:
                raise CheckFailed(f"the tiles never matched /api/agents: {behind}")
            page.wait_for_timeout(200)
        check_queues(page)
        conn = page.evaluate("() => document.getElementById('conn').dataset.conn")
        if conn != "live":
            raise CheckFailed(f"the connection indicator shows {conn!r}, expected 'live'")
        check_contrast(page)
        if args.screenshot:
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.wait_for_timeout(300)
            page.screenshot(path=args.screenshot)
        if args.phone_screenshot:
            phone = browser.page(390, 844)
            wait_for_wallboard(phone, args)
            phone.wait_for_timeout(1800)  # the tile size settles after the first fit
            Path(args.phone_screenshot).parent.mkdir(parents=True, exist_ok=True)
            phone.screenshot(path=args.phone_screenshot)
        browser.check_no_page_errors()
        tiles = page.evaluate("() => document.querySelectorAll('#board .tile').length")
        return (f"wallboard shows {tiles} agents with the statuses of /api/agents "
                f"({time.monotonic() - started:.1f} s)")


# ------------------------------------------------------------------ wait-status

PROBE = """([agent, status, within, events, labels]) => new Promise((resolve, reject) => {
  const probe = { ready: false, results: [] };
  window.__pbx2mqttProbe = probe;
  const source = new EventSource('api/stream');
  probe.source = source;
  source.addEventListener('snapshot', () => { probe.ready = true; resolve(true); });
  source.addEventListener('error', () => { if (!probe.ready) reject(new Error('stream error')); });
  source.addEventListener('state', (event) => {
    const state = JSON.parse(event.data);
    if (!probe.ready || probe.results.length >= events) return;
    if (agent && state.agent !== agent) return;
    if (status && state.status !== status) return;
    const result = { agent: state.agent, status: state.status, seq: state.seq, ms: null, shown: null };
    probe.results.push(result);
    const t0 = performance.now();
    const check = () => {
      const tile = document.querySelector(`#board .tile[data-agent="${CSS.escape(state.agent)}"]`);
      if (tile) {
        const seq = Number(tile.dataset.seq || 0);
        const label = tile.querySelector('.label').textContent;
        const same = seq === state.seq && tile.dataset.status === state.status && label === labels[state.status];
        if (same || seq > state.seq) {
          result.ms = performance.now() - t0;
          result.shown = same ? 'exact' : 'newer';
          // From the change's `updated` (server clock) to the DOM: the whole way.
          const offset = window.pbx2mqttWallboard.clockOffsetMs();
          result.since_update_ms = Date.now() + offset - Date.parse(state.updated);
          return;
        }
        result.last = { status: tile.dataset.status, seq, label };
      }
      if (performance.now() - t0 > within * 1000 + 1000) { result.ms = -1; return; }
      setTimeout(check, 5);
    };
    check();
  });
})"""


def command_wait_status(args) -> str:
    with Browser(args) as browser:
        page = browser.page()
        wait_for_wallboard(page, args)
        try:
            page.evaluate(PROBE, [args.agent, args.status, args.within, args.events, LABELS])
        except Exception as error:
            raise CheckFailed(f"the probe's own EventSource on /api/stream failed: {error}") \
                from None
        log("READY")
        try:
            page.wait_for_function(
                """(n) => { const p = window.__pbx2mqttProbe;
                   return p.results.length >= n && p.results.every((r) => r.ms !== null); }""",
                arg=args.events, timeout=args.timeout * 1000, polling=20)
        except Exception:
            seen = page.evaluate("() => window.__pbx2mqttProbe.results")
            what = " ".join(filter(None, [f"agent {args.agent}" if args.agent else None,
                                          f"status {args.status}" if args.status else None]))
            raise CheckFailed(f"no {args.events} state event(s){' for ' + what if what else ''} "
                              f"arrived within {args.timeout} s (seen: {seen})") from None
        results = page.evaluate("() => window.__pbx2mqttProbe.results.map(({agent, status, seq, ms, shown, last, since_update_ms}) => ({agent, status, seq, ms, shown, last, since_update_ms}))")
        browser.check_no_page_errors()
        slow = [r for r in results if r["ms"] < 0 or r["ms"] > args.within * 1000]
        for r in results:
            log(f"  {r['agent']} -> {r['status']} (seq {r['seq']}): "
                + ("not shown" if r["ms"] < 0 else
                   f"on the page {r['ms']:.0f} ms after the probe's event ({r['shown']}), "
                   f"{r['since_update_ms']:.0f} ms after `updated`"))
        if slow:
            raise CheckFailed(f"{len(slow)} change(s) not on the wallboard within "
                              f"{args.within} s: {slow}")
        if args.since_update_within is not None:
            late = [r for r in results if r["since_update_ms"] > args.since_update_within * 1000]
            if late:
                raise CheckFailed(f"{len(late)} change(s) reached the page more than "
                                  f"{args.since_update_within} s after the bridge saw them: {late}")
        worst = max(r["ms"] for r in results)
        return f"{len(results)} state change(s) shown on the wallboard, slowest {worst:.0f} ms"


# ------------------------------------------------------------------ reconnect

def command_reconnect(args) -> str:
    with Browser(args) as browser:
        page = browser.page()
        streams = []
        requests = []
        page.on("request", lambda request: "api/stream" in request.url
                and requests.append(request))
        wait_for_wallboard(page, args)
        log("READY")
        try:
            page.wait_for_function(
                "() => window.pbx2mqttWallboard.connection().stream !== 'live'",
                timeout=args.timeout * 1000, polling=20)
        except Exception:
            raise CheckFailed(f"the wallboard never noticed its stream drop within "
                              f"{args.timeout} s") from None
        shown = page.evaluate("""() => ({conn: document.getElementById('conn').textContent,
          banner: document.getElementById('banner').hidden ? null
                  : document.getElementById('banner').textContent,
          stale: document.body.classList.contains('stale')})""")
        if not shown["banner"] or not shown["stale"]:
            raise CheckFailed(f"a dropped stream is not shown as such: {shown}")
        log(f"  dropped: {shown['conn']} / {shown['banner']}")
        try:
            page.wait_for_function(
                "() => window.pbx2mqttWallboard.connection().stream === 'live'"
                " && window.pbx2mqttWallboard.stats.snapshots >= 2",
                timeout=args.timeout * 1000, polling=20)
        except Exception:
            state = page.evaluate("() => window.pbx2mqttWallboard.connection()")
            raise CheckFailed(f"the wallboard did not reconnect within {args.timeout} s "
                              f"({state}, {len(requests)} stream requests)") from None
        # The board now shows what changed while it was away.
        deadline = time.monotonic() + args.timeout
        while True:
            count, behind = compare_board(page, args)
            if count >= 0 and not behind:
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"after reconnecting, tiles differ from /api/agents: {behind}")
            page.wait_for_timeout(100)
        if not page.evaluate("() => document.getElementById('banner').hidden"):
            raise CheckFailed("the connection banner stays after reconnecting")
        browser.check_no_page_errors()
        # `headers` leaves out what the network stack adds: ask for all.
        streams = [request.all_headers().get("last-event-id") for request in requests]
        resumed = [header for header in streams[1:] if header]
        if args.require_last_event_id and not resumed:
            raise CheckFailed(f"no reconnect carried Last-Event-ID (stream requests: {streams})")
        return (f"reconnected after {len(streams) - 1} attempt(s), Last-Event-ID "
                f"{resumed[-1] if resumed else 'not sent'}, {count} tiles match /api/agents")


# ------------------------------------------------------------------ reports

def command_reports(args) -> str:
    if args.date:
        query = f"?date={args.date}"
    elif args.date_from:
        query = f"?from={args.date_from}&to={args.date_to or args.date_from}"
    else:
        query = ""
    with Browser(args) as browser:
        page = browser.page()
        page.goto(page_url(args.url, "reports" + query), wait_until="domcontentloaded")
        page.wait_for_function(
            """() => !document.getElementById('error').hidden
                  || (window.pbx2mqttReports && document.querySelector('#summary tbody tr'))
                  || /No agents/.test(document.getElementById('timeline').textContent)""")
        error = page.evaluate("() => { const e = document.getElementById('error');"
                              " return e.hidden ? null : e.textContent; }")
        if error:
            raise CheckFailed(f"the report page shows an error: {error}")
        strips = page.evaluate("() => window.pbx2mqttReports.strips()")
        if args.expect_strips is not None and len(strips) != args.expect_strips:
            raise CheckFailed(f"the report has {len(strips)} strips, expected {args.expect_strips}")
        while page.is_visible("#show-more"):
            page.click("#show-more")
        table_agents = page.evaluate(
            "() => [...new Set([...document.querySelectorAll('#summary tbody tr')]"
            ".map((tr) => tr.dataset.agent))]")
        if sorted(table_agents) != sorted(s["agent"] for s in strips):
            raise CheckFailed(f"strips ({len(strips)}) and table agents ({len(table_agents)}) "
                              "differ")
        # Strips load as they scroll into view: walk down until all are drawn.
        deadline = time.monotonic() + args.timeout
        while True:
            strips = page.evaluate("() => window.pbx2mqttReports.strips()")
            failed = [s for s in strips if s["state"] == "failed"]
            if failed:
                note = page.evaluate(
                    "(a) => document.querySelector(`.strip[data-agent=\"${CSS.escape(a)}\"] .note`)"
                    "?.textContent", failed[0]["agent"])
                raise CheckFailed(f"{len(failed)} strip(s) failed to load: {note}")
            pending = [s for s in strips if s["state"] != "loaded"]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"{len(pending)} strip(s) not drawn within {args.timeout} s")
            page.evaluate("(a) => document.querySelector(`.strip[data-agent=\"${CSS.escape(a)}\"]`)"
                          ".scrollIntoView({block: 'center'})", pending[0]["agent"])
            page.wait_for_timeout(100)
        empty = [s["agent"] for s in strips if s["intervals"] == 0]
        if empty and not args.allow_empty_strips:
            raise CheckFailed(f"{len(empty)} strip(s) have no intervals: {empty[:10]}")
        page.evaluate("() => window.scrollTo(0, 0)")

        # Tooltips on a bar.
        if strips and len(empty) < len(strips):
            rect = page.locator(".strip svg rect").first
            rect.hover()
            page.wait_for_function("() => !document.getElementById('tooltip').hidden")
            tip = page.evaluate("() => document.getElementById('tooltip').textContent")
            if "Start" not in tip or "Duration" not in tip:
                raise CheckFailed(f"the tooltip does not show start and duration: {tip!r}")
            page.mouse.move(0, 0)

        # Sorting by a column.
        page.click("#summary thead th[data-key='calls'] button")
        order = page.evaluate("""() => {
          const th = document.querySelector("#summary thead th[data-key='calls']");
          const index = [...th.parentNode.children].indexOf(th);
          const values = [...document.querySelectorAll('#summary tbody tr')]
            .map((tr) => Number(tr.children[index].textContent));
          return {sort: th.getAttribute('aria-sort'), values};
        }""")
        if order["sort"] != "descending" or order["values"] != sorted(order["values"], reverse=True):
            raise CheckFailed(f"sorting by calls did not sort the table: {order}")
        page.click("#summary thead th[data-key='name'] button")

        # The CSV download link.
        csv = page.evaluate("""async () => {
          const link = document.getElementById('csv');
          const response = await fetch(link.href);
          return {href: link.getAttribute('href'), status: response.status,
                  type: response.headers.get('content-type'), text: (await response.text()).slice(0, 200)};
        }""")
        if csv["status"] != 200 or "text/csv" not in (csv["type"] or "") \
                or not csv["text"].startswith("agent,name,period"):
            raise CheckFailed(f"the CSV link does not give the summary CSV: {csv}")

        if args.screenshot:
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            page.evaluate("() => window.scrollTo(0, 0)")
            page.wait_for_timeout(100)
            page.screenshot(path=args.screenshot, full_page=args.full_page)

        # A refused request shows the server's message and marks the field.
        if not args.no_error_check:
            page.goto(page_url(args.url, "reports?from=2026-03-02&to=2026-03-01"),
                      wait_until="domcontentloaded")
            page.wait_for_function("() => !document.getElementById('error').hidden")
            shown = page.evaluate("""() => ({
              text: document.getElementById('error').textContent,
              parameter: document.getElementById('error').dataset.parameter,
              invalid: document.getElementById('from').getAttribute('aria-invalid')})""")
            if shown["parameter"] != "from" or "from" not in shown["text"] \
                    or shown["invalid"] != "true":
                raise CheckFailed(f"a 400 naming `from` is not shown as such: {shown}")
        browser.check_no_page_errors()
        return (f"report draws {len(strips)} strips ({len(strips) - len(empty)} with intervals), "
                f"table of {len(table_agents)} agents, CSV link ok")


# ------------------------------------------------------------------ perf

LONG_TASKS = """
window.__longTasks = [];
try {
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      window.__longTasks.push({start: entry.startTime, duration: entry.duration});
    }
  }).observe({type: 'longtask', buffered: true});
} catch (error) { window.__longTasks = null; }
"""

MEASURE = """async ([seconds, scroll]) => {
  const board = window.pbx2mqttWallboard;
  const before = {...board.stats};
  const start = performance.now();
  const longBefore = window.__longTasks.length;
  let frames = 0;
  let worstFrame = 0;
  let last = start;
  let done = false;
  const frame = (now) => {
    frames += 1;
    worstFrame = Math.max(worstFrame, now - last);
    last = now;
    if (!done) requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  let scroller = null;
  if (scroll) {
    let direction = 1;
    scroller = setInterval(() => {
      const max = document.documentElement.scrollHeight - innerHeight;
      if (scrollY >= max - 5) direction = -1;
      if (scrollY <= 5) direction = 1;
      scrollBy(0, direction * 400);
    }, 100);
  }
  await new Promise((r) => setTimeout(r, seconds * 1000));
  done = true;
  if (scroller) clearInterval(scroller);
  const elapsed = (performance.now() - start) / 1000;
  const after = board.stats;
  const tasks = window.__longTasks.slice(longBefore);
  return {
    seconds: elapsed,
    fps: frames / elapsed,
    worst_frame_ms: worstFrame,
    events_per_s: (after.events - before.events) / elapsed,
    applied_per_s: (after.applied - before.applied) / elapsed,
    batches_per_s: (after.batches - before.batches) / elapsed,
    max_batch_ms: after.maxBatchMs,
    stream_lag_ms_last: after.lagMs,
    stream_lag_ms_max: after.maxLagMs,
    max_tick_ms: after.maxTickMs,
    ticking_tiles: board.ticking(),
    long_tasks: tasks.length,
    long_task_ms_total: tasks.reduce((s, t) => s + t.duration, 0),
    long_task_ms_max: tasks.reduce((m, t) => Math.max(m, t.duration), 0),
    heap_mb: performance.memory ? performance.memory.usedJSHeapSize / 1048576 : null,
  };
}"""


def command_perf(args) -> str:
    with Browser(args) as browser:
        page = browser.page()
        if args.rate is not None:
            page.request.post(page_url(args.url, f"dev/rate?value={args.rate}"))
        page.add_init_script(LONG_TASKS)
        cdp = browser.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        if args.cpu_throttle and args.cpu_throttle > 1:
            cdp.send("Emulation.setCPUThrottlingRate", {"rate": args.cpu_throttle})

        def metrics():
            return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}

        def spent(before, after, seconds):
            keys = ["ScriptDuration", "RecalcStyleDuration", "LayoutDuration", "TaskDuration"]
            out = {k[:-8].lower() + "_ms_per_s": round((after[k] - before[k]) * 1000 / seconds, 1)
                   for k in keys}
            out["layouts_per_s"] = round((after["LayoutCount"] - before["LayoutCount"]) / seconds, 1)
            return out

        wait_for_wallboard(page, args, args.query or "")
        page.wait_for_timeout(500)
        load = page.evaluate("""() => {
          const s = window.pbx2mqttWallboard.stats;
          const nav = performance.getEntriesByType('navigation')[0];
          const tasks = window.__longTasks || [];
          const until = s.firstRenderAt;
          const loading = tasks.filter((t) => t.start <= until);
          return {
            tiles: document.querySelectorAll('#board .tile').length,
            dom_content_loaded_ms: nav ? nav.domContentLoadedEventEnd : null,
            snapshot_received_ms: s.firstSnapshotAt,
            snapshot_build_ms: s.buildMs,
            first_render_ms: s.firstRenderAt,
            load_long_tasks: loading.length,
            load_long_task_ms_max: loading.reduce((m, t) => Math.max(m, t.duration), 0),
          };
        }""")
        before = metrics()
        stream = page.evaluate(MEASURE, [args.seconds, False])
        stream["main_thread"] = spent(before, metrics(), stream["seconds"])
        scrolled = None
        if args.scroll:
            before = metrics()
            scrolled = page.evaluate(MEASURE, [args.seconds, True])
            scrolled["main_thread"] = spent(before, metrics(), scrolled["seconds"])
        browser.check_no_page_errors()
    result = {"load": load, "stream": stream, "machine_load_average": os.getloadavg()}
    if scrolled:
        result["stream_while_scrolling"] = scrolled
    if args.cpu_throttle:
        result["cpu_throttle"] = args.cpu_throttle
    print(json.dumps(result, indent=2))
    problems = []
    if args.min_fps and stream["fps"] < args.min_fps:
        problems.append(f"{stream['fps']:.1f} frames/s < {args.min_fps}")
    if args.max_long_task_ms and stream["long_task_ms_max"] > args.max_long_task_ms:
        problems.append(f"a {stream['long_task_ms_max']:.0f} ms long task while streaming")
    if problems:
        raise CheckFailed("; ".join(problems))
    return (f"{load['tiles']} tiles, first render {load['first_render_ms']:.0f} ms, "
            f"{stream['events_per_s']:.0f} events/s at {stream['fps']:.1f} frames/s")


# ------------------------------------------------------------------ CLI

def viewport(text: str):
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError("use WIDTHxHEIGHT, e.g. 1920x1080")
    return int(match[1]), int(match[2])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  epilog=__doc__.split("\n\n", 1)[1])
    commands = top.add_subparsers(dest="command", required=True)

    def common(name, help_text):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8080/")
        sub.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
        sub.add_argument("--timeout", type=float, default=30, help="seconds for each wait (default 30)")
        sub.add_argument("--viewport", type=viewport, default=(1920, 1080), help="default 1920x1080")
        return sub

    sub = common("wallboard", "tiles match /api/agents")
    sub.add_argument("--expect-agents", type=int, help="the number of agents there must be")
    sub.add_argument("--screenshot", help="save the wallboard (viewport) as PNG")
    sub.add_argument("--phone-screenshot", help="also save a 390x844 phone view as PNG")

    sub = common("wait-status", "a state change reaches the DOM in time")
    sub.add_argument("--agent", help="wait for this agent's change (default: any agent)")
    sub.add_argument("--status", help="wait for a change to this status (default: any)")
    sub.add_argument("--within", type=float, default=2.0, help="seconds from event to DOM (default 2)")
    sub.add_argument("--events", type=int, default=1, help="how many changes to check (default 1)")
    sub.add_argument("--since-update-within", type=float,
                     help="also fail when a change is on the page later than this many seconds "
                          "after its `updated` time (the bridge's poll)")

    sub = common("reconnect", "the stream drops and comes back by itself")
    sub.add_argument("--expect-agents", type=int, help="the number of agents there must be")
    sub.add_argument("--require-last-event-id", action="store_true",
                     help="fail unless a reconnect sends Last-Event-ID")

    sub = common("reports", "one strip per agent, table, CSV, errors")
    sub.add_argument("--date", help="YYYY-MM-DD (default: today in the report time zone)")
    sub.add_argument("--from", dest="date_from", help="first day of a range")
    sub.add_argument("--to", dest="date_to", help="last day of a range (inclusive)")
    sub.add_argument("--expect-strips", type=int, help="the number of agents (strips) there must be")
    sub.add_argument("--allow-empty-strips", action="store_true",
                     help="accept agents without intervals in the range")
    sub.add_argument("--screenshot", help="save the page as PNG")
    sub.add_argument("--full-page", action="store_true", help="screenshot the whole page")
    sub.add_argument("--no-error-check", action="store_true", help="skip the 400 display check")

    sub = common("perf", "measure the wallboard under load")
    sub.add_argument("--seconds", type=float, default=10, help="measuring window (default 10)")
    sub.add_argument("--rate", type=float, help="dev_server.py only: set transitions per second first")
    sub.add_argument("--scroll", action="store_true", help="also measure while scrolling")
    sub.add_argument("--query", help="wallboard URL parameters, e.g. '?hide=offline&sort=status'")
    sub.add_argument("--cpu-throttle", type=float, help="slow the CPU down N times (a weak TV)")
    sub.add_argument("--min-fps", type=float, help="fail below this frame rate")
    sub.add_argument("--max-long-task-ms", type=float, help="fail on a longer task while streaming")
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    handlers = {"wallboard": command_wallboard, "wait-status": command_wait_status,
                "reconnect": command_reconnect,
                "reports": command_reports, "perf": command_perf}
    try:
        message = handlers[args.command](args)
    except CannotRun as error:
        log(f"SKIP: {error}")
        return 3
    except CheckFailed as error:
        log(f"FAIL: {args.command}: {error}")
        return 1
    except Exception as error:  # Playwright errors: the page or server misbehaved
        log(f"FAIL: {args.command}: {type(error).__name__}: {error}")
        return 1
    log(f"OK: {args.command}: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
