// The supervisor's report (`/reports`): a Gantt strip per agent of its
// statuses across a day (or a range of days), then the summary table of
// product.md §4 with sortable columns, and CSV downloads.
//
// Data: `api/reports/summary` (one request; it also lists the agents) and
// `api/reports/timeline` for the strips, fetched in chunks of agents as
// their strips come into view, so a board of thousands of agents stays
// quick. A 400 answer names the parameter; the page shows the message and
// marks that field.
//
// URL parameters: `date=YYYY-MM-DD` (one day), or `from=` and `to=` (dates,
// `to` inclusive, as the API reads dates), `agent=` (ids, comma-separated),
// `by=day|total` (summary rows for a range). Without a date the server's
// today (in the report time zone) is shown.

import { STATUSES, LABELS, knownStatus, formatDuration, parseTime, byName } from './status.js';

/** Agents per timeline request. */
const TIMELINE_CHUNK = 50;
/** Summary rows shown at first, and added by "Show more". */
const TABLE_PAGE = 250;
/** Start fetching a strip's chunk this far before it scrolls into view. */
const PREFETCH_MARGIN = '800px 0px';
const SVG_NS = 'http://www.w3.org/2000/svg';
const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;

const $ = (id) => document.getElementById(id);
const form = $('controls');
const fromInput = $('from');
const toInput = $('to');
const rangeInput = $('range');
const byInput = $('by');
const agentInput = $('agent');
const timelineBox = $('timeline');
const tooltip = $('tooltip');

/** Known agents from `api/agents` (for names typed into the agent field). */
let knownAgents = [];
/** The report on screen. */
let view = null;
/** Increases with every load; answers of older loads are dropped. */
let generation = 0;
let inFlight = null;
let sortKey = 'name';
let sortDirection = 1;

/** A request the server refused, with the parameter it named. */
class ApiError extends Error {
  constructor(message, parameter, status) {
    super(message);
    this.parameter = parameter;
    this.status = status;
  }
}

async function getJSON(url, signal) {
  let response;
  try {
    response = await fetch(url, { signal, headers: { Accept: 'application/json' } });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError('Cannot reach pbx2mqtt (' + error.message + ').', null, 0);
  }
  const text = await response.text();
  if (!response.ok) {
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      // Not JSON: show the start of the text.
    }
    if (body && typeof body.error === 'string') {
      throw new ApiError(body.error, body.parameter || null, response.status);
    }
    throw new ApiError(
      'The server answered ' + response.status + ' ' + response.statusText +
        (text ? ': ' + text.slice(0, 200) : ''),
      null,
      response.status,
    );
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError('The server sent something that is not JSON.', null, response.status);
  }
}

// ---------------------------------------------------------------- parameters

const DATE = /^\d{4}-\d{2}-\d{2}$/;

function readPageParams() {
  const params = new URLSearchParams(location.search);
  const date = params.get('date') || '';
  const from = date || params.get('from') || '';
  const to = date ? '' : params.get('to') || '';
  return {
    from,
    to: to && to !== from ? to : '',
    agent: params.getAll('agent').join(','),
    by: params.get('by') === 'day' ? 'day' : 'total',
  };
}

function readForm() {
  const from = fromInput.value;
  const to = rangeInput.checked ? toInput.value : '';
  return {
    from,
    to: to && to !== from ? to : '',
    agent: agentInput.value,
    by: byInput.value === 'day' ? 'day' : 'total',
  };
}

function fillForm(params) {
  fromInput.value = DATE.test(params.from) ? params.from : '';
  rangeInput.checked = Boolean(params.to);
  toInput.value = DATE.test(params.to) ? params.to : '';
  agentInput.value = params.agent;
  byInput.value = params.by;
  showRangeFields();
}

function showRangeFields() {
  const range = rangeInput.checked;
  $('to-field').hidden = !range;
  $('by-field').hidden = !range;
  $('from-caption').textContent = range ? 'From' : 'Day';
  $('previous').title = range ? 'Previous range' : 'Previous day';
  $('next').title = range ? 'Next range' : 'Next day';
  if (range && !toInput.value) toInput.value = fromInput.value;
}

/** Agent ids from the agent field: ids, or names of known agents. */
function agentIds(text) {
  const byLowerName = new Map(knownAgents.map((agent) => [agent.name.toLowerCase(), agent.agent]));
  return text
    .split(',')
    .map((item) => item.trim())
    .filter(Boolean)
    .map((item) => byLowerName.get(item.toLowerCase()) || item);
}

/** The API query for the summary (also the CSV links). */
function apiQuery(params) {
  const query = new URLSearchParams();
  if (params.from) {
    query.set('from', params.from);
    query.set('to', params.to || params.from);
  }
  const ids = agentIds(params.agent);
  if (ids.length) query.set('agent', ids.join(','));
  query.set('by', params.to ? params.by : 'day');
  return query;
}

function pageQuery(params) {
  const query = new URLSearchParams();
  if (params.to) {
    query.set('from', params.from);
    query.set('to', params.to);
    if (params.by === 'day') query.set('by', 'day');
  } else if (params.from) {
    query.set('date', params.from);
  }
  if (params.agent.trim()) query.set('agent', agentIds(params.agent).join(','));
  return query;
}

/** `2026-03-29` shifted by `days`. */
function shiftDate(date, days) {
  const ms = Date.parse(date + 'T12:00:00Z') + days * DAY_MS;
  return new Date(ms).toISOString().slice(0, 10);
}

function daysBetween(from, to) {
  return Math.round((Date.parse(to + 'T12:00:00Z') - Date.parse(from + 'T12:00:00Z')) / DAY_MS);
}

// ---------------------------------------------------------------- loading

async function load(params, { push }) {
  generation += 1;
  const mine = generation;
  if (inFlight) inFlight.abort();
  inFlight = new AbortController();
  const { signal } = inFlight;
  clearError();
  $('meta').textContent = 'Loading…';
  const query = apiQuery(params);
  let report;
  try {
    report = await getJSON('api/reports/summary?' + query, signal);
  } catch (error) {
    if (error.name === 'AbortError' || mine !== generation) return;
    showError(error);
    view = null;
    renderEmpty();
    return;
  }
  if (mine !== generation) return;

  // The server resolved the dates (today in the report time zone by default).
  const from = String(report.from || '').slice(0, 10);
  const lastDay = shiftDate(String(report.to || '').slice(0, 10), -1);
  const resolved = { ...params, from, to: lastDay !== from ? lastDay : '' };
  fillForm({ ...resolved, agent: params.agent });
  const url = '?' + pageQuery(resolved);
  if (push) history.pushState(null, '', url);
  else history.replaceState(null, '', url);
  setLinks(apiQuery(resolved));

  view = makeView(report, signal);
  renderMeta();
  renderLegend();
  renderTimeline();
  renderSummary();
}

function makeView(report, signal) {
  const agents = [];
  const seen = new Set();
  for (const row of report.rows || []) {
    if (seen.has(row.agent)) continue;
    seen.add(row.agent);
    agents.push({ agent: row.agent, name: row.name || row.agent });
  }
  agents.sort((a, b) => byName(a.name, b.name) || (a.agent < b.agent ? -1 : 1));
  return {
    report,
    agents,
    signal,
    tz: report.timezone || 'UTC',
    fromMs: parseTime(report.from),
    toMs: parseTime(report.to),
    generatedMs: parseTime(report.generated_at),
    periods: new Set((report.rows || []).map((row) => row.period)).size,
    chunks: new Map(),
    strips: new Map(),
    rowLimit: TABLE_PAGE,
  };
}

function setLinks(query) {
  const csv = new URLSearchParams(query);
  csv.set('format', 'csv');
  const csvLink = $('csv');
  csvLink.href = 'api/reports/summary?' + csv;
  const name = csv.get('from') ? csv.get('from') + (csv.get('to') !== csv.get('from') ? '_' + csv.get('to') : '') : 'today';
  csvLink.download = 'pbx2mqtt-summary-' + name + '.csv';
  const timeline = new URLSearchParams(csv);
  timeline.delete('by');
  const timelineLink = $('timeline-csv');
  timelineLink.href = 'api/reports/timeline?' + timeline;
  timelineLink.download = 'pbx2mqtt-timeline-' + name + '.csv';
}

function clearError() {
  $('error').hidden = true;
  for (const input of form.querySelectorAll('[aria-invalid]')) {
    input.removeAttribute('aria-invalid');
  }
}

function showError(error) {
  const box = $('error');
  box.textContent = error.message || String(error);
  box.hidden = false;
  const fields = {
    from: fromInput,
    to: rangeInput.checked ? toInput : fromInput,
    agent: agentInput,
    by: byInput,
  };
  const field = error.parameter && fields[error.parameter];
  if (field) {
    field.setAttribute('aria-invalid', 'true');
    box.dataset.parameter = error.parameter;
  } else {
    delete box.dataset.parameter;
  }
  $('meta').textContent = '';
}

function renderEmpty() {
  timelineBox.replaceChildren();
  $('summary').tHead.replaceChildren();
  $('summary').tBodies[0].replaceChildren();
  $('summary').tFoot.replaceChildren();
}

// ---------------------------------------------------------------- formatting

const formats = new Map();
function formatter(tz, options) {
  const key = tz + JSON.stringify(options);
  if (!formats.has(key)) {
    formats.set(key, new Intl.DateTimeFormat(undefined, { timeZone: tz, ...options }));
  }
  return formats.get(key);
}

function formatDay(ms, tz, withWeekday = true) {
  return formatter(tz, {
    weekday: withWeekday ? 'long' : undefined,
    day: 'numeric',
    month: 'long',
    year: 'numeric',
  }).format(ms);
}

function formatClock(ms, tz) {
  return formatter(tz, { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' }).format(ms);
}

function formatStamp(ms, tz) {
  return formatter(tz, {
    day: 'numeric',
    month: 'short',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
    hourCycle: 'h23',
  }).format(ms);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function renderMeta() {
  const { tz, fromMs, toMs, agents, generatedMs } = view;
  const days = Math.round((toMs - fromMs) / DAY_MS);
  const when =
    days <= 1
      ? formatDay(fromMs, tz)
      : formatDay(fromMs, tz, false) + ' – ' + formatDay(toMs - 1, tz, false);
  $('meta').textContent =
    when + ' · times in ' + tz + ' · ' + agents.length +
    (agents.length === 1 ? ' agent' : ' agents') +
    ' · generated ' + formatClock(generatedMs, tz);
}

function renderLegend() {
  const legend = $('legend');
  if (legend.childElementCount) return;
  for (const status of STATUSES) {
    const item = document.createElement('li');
    item.innerHTML =
      `<span class="swatch" data-status="${status}"><span class="glyph" aria-hidden="true"></span></span>` +
      escapeHtml(LABELS[status]);
    legend.append(item);
  }
}

// ---------------------------------------------------------------- timeline

/** Axis ticks at local hours in the report time zone (23 or 25 on DST days). */
function axisTicks(fromMs, toMs, tz) {
  const days = (toMs - fromMs) / DAY_MS;
  const step = days <= 2 ? 1 : days <= 8 ? 6 : 24;
  const labelEvery = step === 24 ? Math.max(1, Math.ceil(days / 16)) : 1;
  const firstHourLabel = days > 1 ? Math.ceil(days * 1.7) : 0;
  const hourFormat = formatter(tz, { hour: '2-digit', hourCycle: 'h23' });
  const dayFormat = formatter(tz, { weekday: 'short', day: 'numeric', month: 'short' });
  const ticks = [];
  let dayIndex = 0;
  // Report ranges start at a local midnight (or an instant); step by real hours.
  const first = fromMs + ((HOUR_MS - (((fromMs % HOUR_MS) + HOUR_MS) % HOUR_MS)) % HOUR_MS);
  const start = (((fromMs % HOUR_MS) + HOUR_MS) % HOUR_MS) === 0 ? fromMs : first;
  for (let t = start; t < toMs; t += HOUR_MS) {
    const hour = Number.parseInt(hourFormat.format(t), 10) % 24;
    const major = hour === 0;
    if (hour % step !== 0) continue;
    // Leave room after a day's name before the next hour label.
    let label = major || hour >= firstHourLabel ? String(hour).padStart(2, '0') : '';
    if (step === 24 || (major && days > 1)) {
      label = dayIndex % labelEvery === 0 ? dayFormat.format(t) : '';
      dayIndex += 1;
    }
    ticks.push({ pct: ((t - fromMs) / (toMs - fromMs)) * 100, label, major, even: hour % 2 === 0 });
  }
  return ticks;
}

let stripObserver = null;

function renderTimeline() {
  if (stripObserver) stripObserver.disconnect();
  const { fromMs, toMs, tz, agents, generatedMs } = view;
  const ticks = axisTicks(fromMs, toMs, tz);

  const axisRow = document.createElement('div');
  axisRow.className = 'tl-row tl-axis-row';
  const corner = document.createElement('div');
  corner.className = 'tl-name';
  corner.innerHTML = '<small>' + escapeHtml(tz) + '</small>';
  const axis = document.createElement('div');
  axis.className = 'tl-axis';
  axis.setAttribute('aria-hidden', 'true');
  const grid = document.createElement('div');
  grid.className = 'tl-grid';
  for (const tick of ticks) {
    const mark = document.createElement('div');
    mark.className = 'tick' + (tick.major ? ' major' : '') + (tick.even ? ' even' : '');
    mark.style.left = tick.pct + '%';
    mark.textContent = tick.label;
    axis.append(mark);
    const line = document.createElement('div');
    line.className = 'g';
    line.style.left = tick.pct + '%';
    grid.append(line);
  }
  axisRow.append(corner, axis);

  const rows = [axisRow];
  stripObserver = new IntersectionObserver(onStripsVisible, { rootMargin: PREFETCH_MARGIN });
  agents.forEach((agent, index) => {
    const row = document.createElement('div');
    row.className = 'tl-row strip';
    row.dataset.agent = agent.agent;
    row.dataset.state = 'pending';
    row.dataset.index = String(index);
    const name = document.createElement('div');
    name.className = 'tl-name';
    name.title = agent.name + ' (' + agent.agent + ')';
    name.textContent = agent.name;
    if (agent.name !== agent.agent) {
      const id = document.createElement('small');
      id.textContent = agent.agent;
      name.append(id);
    }
    const bar = document.createElement('div');
    bar.className = 'tl-bar';
    bar.innerHTML = '<span class="note">…</span>';
    row.append(name, bar);
    view.strips.set(agent.agent, { row, bar, index });
    rows.push(row);
  });
  if (!agents.length) {
    const none = document.createElement('p');
    none.className = 'meta';
    none.style.padding = '0 1rem';
    none.textContent = 'No agents in this report.';
    rows.push(none);
  }
  const overlay = document.createElement('div');
  overlay.className = 'tl-overlay';
  overlay.append(grid);
  if (generatedMs > fromMs && generatedMs < toMs) {
    const now = document.createElement('div');
    now.className = 'tl-now';
    now.title = 'Now';
    now.style.left = ((generatedMs - fromMs) / (toMs - fromMs)) * 100 + '%';
    overlay.append(now);
  }
  timelineBox.replaceChildren(overlay, ...rows);
  for (const { row } of view.strips.values()) stripObserver.observe(row);
}

function onStripsVisible(entries) {
  if (!view) return;
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const index = Number(entry.target.dataset.index);
    loadChunk(Math.floor(index / TIMELINE_CHUNK));
  }
}

async function loadChunk(chunk) {
  const current = view;
  if (current.chunks.has(chunk)) return;
  const agents = current.agents.slice(chunk * TIMELINE_CHUNK, (chunk + 1) * TIMELINE_CHUNK);
  current.chunks.set(chunk, 'loading');
  const query = new URLSearchParams();
  query.set('from', current.report.from);
  query.set('to', current.report.to);
  query.set('agent', agents.map((agent) => agent.agent).join(','));
  let timeline;
  try {
    timeline = await getJSON('api/reports/timeline?' + query, current.signal);
  } catch (error) {
    if (error.name === 'AbortError' || current !== view) return;
    current.chunks.delete(chunk);
    for (const agent of agents) {
      const strip = current.strips.get(agent.agent);
      strip.row.dataset.state = 'failed';
      strip.bar.innerHTML = '<span class="note failed"></span>';
      strip.bar.firstChild.textContent = 'Timeline not available: ' + error.message;
    }
    return;
  }
  if (current !== view) return;
  current.chunks.set(chunk, 'loaded');
  const byAgent = new Map(agents.map((agent) => [agent.agent, []]));
  const generated = parseTime(timeline.generated_at);
  if (!Number.isNaN(generated)) current.generatedMs = Math.max(current.generatedMs, generated);
  for (const interval of timeline.intervals || []) {
    const list = byAgent.get(interval.agent);
    if (list) list.push(interval);
  }
  for (const agent of agents) drawStrip(current, agent, byAgent.get(agent.agent));
  if (stripObserver) {
    for (const agent of agents) stripObserver.unobserve(current.strips.get(agent.agent).row);
  }
}

function drawStrip(current, agent, intervals) {
  const strip = current.strips.get(agent.agent);
  const { fromMs, toMs, generatedMs } = current;
  const span = toMs - fromMs;
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('role', 'img');
  const drawn = [];
  const time = {};
  for (const interval of intervals) {
    const started = parseTime(interval.started_at);
    const ended = interval.ended_at ? parseTime(interval.ended_at) : generatedMs;
    const start = Math.max(started, fromMs);
    const end = Math.min(ended, toMs);
    if (!(end > start)) continue;
    const status = knownStatus(interval.status);
    time[status] = (time[status] || 0) + (end - start);
    const rect = document.createElementNS(SVG_NS, 'rect');
    rect.setAttribute('x', (((start - fromMs) / span) * 100).toFixed(4) + '%');
    rect.setAttribute('width', (((end - start) / span) * 100).toFixed(4) + '%');
    rect.setAttribute('y', '0');
    rect.setAttribute('height', '100%');
    rect.setAttribute('data-status', status);
    rect.setAttribute('data-i', String(drawn.length));
    drawn.push({ ...interval, status, startedMs: started, endedMs: interval.ended_at ? ended : null });
    svg.append(rect);
  }
  svg.intervals = drawn;
  const main = Object.entries(time)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 3)
    .map(([status, ms]) => LABELS[status] + ' ' + formatDuration(ms / 1000))
    .join(', ');
  svg.setAttribute(
    'aria-label',
    agent.name + ': ' + drawn.length + ' intervals' + (main ? '; most time ' + main : ''),
  );
  if (drawn.length) strip.bar.replaceChildren(svg);
  else strip.bar.innerHTML = '<span class="note">No history in this range.</span>';
  strip.row.dataset.state = 'loaded';
  strip.row.dataset.intervals = String(drawn.length);
}

function showTooltip(rect, x, y) {
  const svg = rect.ownerSVGElement;
  const interval = svg && svg.intervals && svg.intervals[Number(rect.dataset.i)];
  if (!interval || !view) return;
  const { tz } = view;
  const end = interval.endedMs;
  const duration = Number.isFinite(interval.duration_s)
    ? interval.duration_s
    : ((end ?? view.generatedMs) - interval.startedMs) / 1000;
  const details = [
    ['Start', formatStamp(interval.startedMs, tz)],
    ['End', end === null ? 'now (current)' : formatStamp(end, tz)],
    ['Duration', formatDuration(duration)],
  ];
  if (interval.reason) details.push(['Reason', interval.reason]);
  if (interval.destination) details.push(['Number', interval.destination]);
  tooltip.innerHTML =
    `<strong><span class="swatch" data-status="${interval.status}"><span class="glyph" aria-hidden="true"></span></span>` +
    escapeHtml(LABELS[interval.status]) +
    '</strong><dl>' +
    details.map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`).join('') +
    '</dl>';
  tooltip.hidden = false;
  const box = tooltip.getBoundingClientRect();
  const left = Math.min(x + 14, window.innerWidth - box.width - 8);
  const top = y + 18 + box.height > window.innerHeight ? y - box.height - 12 : y + 18;
  tooltip.style.left = Math.max(8, left) + 'px';
  tooltip.style.top = Math.max(8, top) + 'px';
}

function setupTooltip() {
  timelineBox.addEventListener('pointermove', (event) => {
    const rect = event.target.closest && event.target.closest('rect[data-i]');
    if (rect) showTooltip(rect, event.clientX, event.clientY);
    else tooltip.hidden = true;
  });
  timelineBox.addEventListener('pointerleave', () => {
    tooltip.hidden = true;
  });
  document.addEventListener('pointerdown', (event) => {
    const rect = event.target.closest && event.target.closest('rect[data-i]');
    if (rect) showTooltip(rect, event.clientX, event.clientY);
    else tooltip.hidden = true;
  });
  window.addEventListener('scroll', () => (tooltip.hidden = true), { passive: true });
}

// ---------------------------------------------------------------- summary table

const COLUMNS = [
  { key: 'name', label: 'Agent', kind: 'text' },
  { key: 'period', label: 'Day', kind: 'text', onlyWithPeriods: true },
  { key: 'logged_in_s', label: 'Logged in', kind: 'duration' },
  { key: 'available_s', label: 'Available', kind: 'duration' },
  { key: 'on_call_s', label: 'On call', kind: 'duration' },
  { key: 'wrapup_s', label: 'Wrap-up', kind: 'duration' },
  { key: 'ringing_s', label: 'Ringing', kind: 'duration' },
  { key: 'busy_s', label: 'Busy', kind: 'duration' },
  { key: 'paused_s', label: 'Paused', kind: 'duration' },
  { key: 'calls', label: 'Calls', kind: 'count' },
  { key: 'average_call_s', label: 'Avg call', kind: 'duration' },
  { key: 'longest_call_s', label: 'Longest call', kind: 'duration' },
  { key: 'occupancy', label: 'Occupancy', kind: 'ratio' },
];

function columns() {
  return COLUMNS.filter((column) => !column.onlyWithPeriods || view.periods > 1);
}

function cell(column, value) {
  if (column.kind === 'text') return escapeHtml(value ?? '');
  if (value === null || value === undefined) return '<span class="muted">–</span>';
  if (column.kind === 'duration') return formatDuration(value);
  if (column.kind === 'ratio') return (value * 100).toFixed(1) + '%';
  return escapeHtml(String(value));
}

function renderSummary() {
  const table = $('summary');
  const cols = columns();
  const head = document.createElement('tr');
  for (const column of cols) {
    const th = document.createElement('th');
    th.scope = 'col';
    if (column.kind !== 'text') th.className = 'num';
    th.dataset.key = column.key;
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = column.label;
    button.addEventListener('click', () => {
      if (sortKey === column.key) sortDirection = -sortDirection;
      else {
        sortKey = column.key;
        sortDirection = column.kind === 'text' ? 1 : -1;
      }
      renderRows();
    });
    th.append(button);
    head.append(th);
  }
  table.tHead.replaceChildren(head);
  if (!cols.some((column) => column.key === sortKey)) {
    sortKey = 'name';
    sortDirection = 1;
  }
  renderRows();
  renderTotals();
}

function rowHtml(row, cols) {
  const cells = cols
    .map((c, i) => {
      const content =
        c.key === 'name'
          ? escapeHtml(row.name) +
            (row.name !== row.agent ? ' <small class="muted">' + escapeHtml(row.agent) + '</small>' : '')
          : cell(c, row[c.key]);
      const tag = i === 0 ? 'th scope="row"' : 'td';
      const close = i === 0 ? 'th' : 'td';
      return `<${tag}${c.kind !== 'text' ? ' class="num"' : ''}>${content}</${close}>`;
    })
    .join('');
  return `<tr data-agent="${escapeHtml(row.agent)}">${cells}</tr>`;
}

/** Sorts every row, shows the first `view.rowLimit` (a table of thousands of
 * rows takes seconds to lay out; the CSV has them all). */
function renderRows() {
  const table = $('summary');
  const cols = columns();
  for (const th of table.tHead.querySelectorAll('th')) {
    th.setAttribute(
      'aria-sort',
      th.dataset.key === sortKey ? (sortDirection > 0 ? 'ascending' : 'descending') : 'none',
    );
  }
  const column = cols.find((c) => c.key === sortKey) || cols[0];
  const key = column.key;
  const rows = [...(view.report.rows || [])];
  rows.sort((a, b) => {
    const x = a[key];
    const y = b[key];
    if (x === y) return byName(a.name, b.name) || (a.period < b.period ? -1 : 1);
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    const order = column.kind === 'text' ? byName(String(x), String(y)) : x - y;
    return order * sortDirection || (a.period < b.period ? -1 : 1);
  });
  const shown = rows.slice(0, view.rowLimit);
  table.tBodies[0].innerHTML = shown.map((row) => rowHtml(row, cols)).join('');
  const more = $('more-rows');
  const hidden = rows.length - shown.length;
  more.hidden = hidden <= 0;
  if (hidden > 0) {
    $('more-rows-text').textContent =
      'Showing ' + shown.length + ' of ' + rows.length + ' rows (the CSV has all).';
    $('show-more').textContent = 'Show ' + Math.min(hidden, TABLE_PAGE) + ' more';
  }
}

function renderTotals() {
  const table = $('summary');
  const rows = view.report.rows || [];
  const foot = table.tFoot;
  if (rows.length < 2) {
    foot.replaceChildren();
    return;
  }
  const sum = (key) => rows.reduce((total, row) => total + (row[key] || 0), 0);
  const calls = sum('calls');
  const callTime = rows.reduce((total, row) => total + (row.average_call_s || 0) * row.calls, 0);
  const longest = rows.reduce((max, row) => Math.max(max, row.longest_call_s || 0), 0);
  const occupied = sum('ringing_s') + sum('on_call_s') + sum('wrapup_s') + sum('busy_s');
  const workable = sum('logged_in_s') - sum('paused_s');
  const totals = {
    name: 'All agents',
    period: '',
    calls,
    average_call_s: calls ? callTime / calls : null,
    longest_call_s: calls ? longest : null,
    occupancy: workable > 0 ? occupied / workable : null,
  };
  for (const key of ['logged_in_s', 'available_s', 'on_call_s', 'wrapup_s', 'ringing_s', 'busy_s', 'paused_s']) {
    totals[key] = sum(key);
  }
  const cells = columns()
    .map((c, i) => `<td${i ? ' class="num"' : ''}>${cell(c, totals[c.key])}</td>`)
    .join('');
  foot.innerHTML = `<tr>${cells}</tr>`;
}

// ---------------------------------------------------------------- start

function addPatterns() {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('width', '0');
  svg.setAttribute('height', '0');
  svg.setAttribute('aria-hidden', 'true');
  svg.style.position = 'absolute';
  svg.innerHTML =
    '<defs><pattern id="unknown-stripes" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">' +
    '<rect width="8" height="8" fill="#30343a"/><rect width="4" height="8" fill="#4a5059"/></pattern></defs>';
  document.body.append(svg);
}

async function loadAgents() {
  try {
    const list = await getJSON('api/agents');
    if (!Array.isArray(list)) return;
    knownAgents = list.filter((agent) => agent && agent.agent);
    const options = knownAgents
      .slice(0, 5000)
      .map((agent) => `<option value="${escapeHtml(agent.agent)}">${escapeHtml(agent.name || '')}</option>`)
      .join('');
    $('agent-list').innerHTML = options;
  } catch {
    // The agent list only helps typing; reports work without it.
  }
}

function start() {
  addPatterns();
  setupTooltip();
  const initial = readPageParams();
  fillForm(initial);
  rangeInput.addEventListener('change', showRangeFields);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    load(readForm(), { push: true });
  });
  const step = (direction) => {
    const params = readForm();
    if (!params.from) return;
    const length = params.to ? daysBetween(params.from, params.to) + 1 : 1;
    params.from = shiftDate(params.from, direction * length);
    if (params.to) params.to = shiftDate(params.to, direction * length);
    fillForm(params);
    load(params, { push: true });
  };
  $('show-more').addEventListener('click', () => {
    if (!view) return;
    view.rowLimit += TABLE_PAGE;
    renderRows();
  });
  $('previous').addEventListener('click', () => step(-1));
  $('next').addEventListener('click', () => step(1));
  window.addEventListener('popstate', () => {
    const params = readPageParams();
    fillForm(params);
    load(params, { push: false });
  });
  const agentsLoaded = loadAgents();
  if (initial.agent.trim()) {
    // Names in the URL are resolved to ids with the agent list.
    agentsLoaded.then(() => load(initial, { push: false }));
  } else {
    load(initial, { push: false });
  }
  window.pbx2mqttReports = {
    /** Strips by state, for tests. */
    strips: () =>
      view
        ? [...view.strips.values()].map(({ row }) => ({
            agent: row.dataset.agent,
            state: row.dataset.state,
            intervals: Number(row.dataset.intervals || 0),
          }))
        : [],
  };
}

start();
