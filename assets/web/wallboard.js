// The live wallboard (`/`): one tile per agent, coloured by status, with the
// time in status counting up, counts per status and queue membership, fed by
// the server-sent events of `api/stream`.
//
// Built for thousands of agents on a modest TV: tiles are built once and
// only the changed tile is touched per event; events are applied in batches
// once per animation frame; timers tick once a second for the tiles in view
// only. Tiles sit in fixed-height rows (not one big CSS grid): a row is a
// layout boundary (`contain: strict`), so a change re-lays out one row, not
// 5,000 grid items; off-screen rows are not rendered (`content-visibility:
// auto`) and one IntersectionObserver watches rows, not tiles.
//
// URL parameters (a TV can be pointed at a filtered board):
//   status=available,ringing   only these statuses (repeatable or comma-separated)
//   hide=offline               never these statuses
//   queue=500,501              only agents in these queues
//   q=text                     name, id or number contains the text
//   sort=name|status           tile order (default name)
//   size=220                   fixed tile width in px (default: fit the screen)
//   kiosk=1                    hide the toolbar and navigation
//   rotate=20                  scroll one screen every 20 s, then back to the top

import { STATUSES, LABELS, knownStatus, formatElapsed, parseTime, byName } from './status.js';

/** Tile width bounds (px) when fitting the board to the screen. */
const MIN_TILE_WIDTH = 150;
const MAX_TILE_WIDTH = 560;
/** Tile height as a fraction of its width. */
const TILE_RATIO = 0.56;
/** Queue chips shown on a tile before `+n`. */
const MAX_CHIPS = 4;
/** Waits between reconnection attempts after the stream was refused. */
const RECONNECT_DELAYS_MS = [1000, 2000, 5000, 10000, 30000];
/** How long to wait for the first snapshot before saying the server is unreachable. */
const FIRST_CONNECT_GRACE_MS = 5000;
/** Re-fit the tile size at most this often when the number of shown tiles changes. */
const REFIT_DEBOUNCE_MS = 1500;
/**
 * When status changes move tiles (a status filter, or sorting by status),
 * rows are rebuilt at most this often: tiles stay put in between, showing
 * their true status.
 */
const STATUS_RELAYOUT_MS = 1000;
/** Half a period of the ringing pulse. */
const PULSE_MS = 600;

const STATUS_ORDER = Object.fromEntries(STATUSES.map((status, index) => [status, index]));

const $ = (id) => document.getElementById(id);
const board = $('board');
const tileTemplate = $('tile-template').content.firstElementChild;

/** @type {Map<string, object>} agent id -> record (state + tile elements). */
const agents = new Map();
/** Records in display order (name, then id). */
let ordered = [];
/** @type {Map<string, {queue: string, members: string[], agents: string[], updated: string}>} */
const queues = new Map();
/** @type {Map<string, string[]>} agent id -> the queues it is in (sorted). */
let agentQueues = new Map();
/** Server clock minus this device's clock, in ms (from the snapshot's server_time). */
let clockOffsetMs = 0;
/** States received but not yet drawn, applied on the next animation frame. */
const pending = new Map();
/** Records whose queue chips must be redrawn. */
const chipsPending = new Set();
let frameRequested = false;
let countsDirty = true;
let queuesStructureDirty = true;
/** The rows of tiles, top to bottom: `{el, recs}`. */
const rows = [];
/** Rows in (or near) the viewport: their tiles' timers tick. */
const rowsInView = new Set();
const rowOfElement = new WeakMap();
/** Tiles per row, from the last fit. */
let columns = 1;
/** How many tiles pass the filters (from the last layout). */
let shownCount = 0;
let layoutDirty = false;
let statusLayoutTimer = null;

/** Numbers for tests and for measuring (read by tests/browser/pages.py). */
const stats = {
  snapshots: 0,
  events: 0,
  applied: 0,
  batches: 0,
  lastBatchMs: 0,
  maxBatchMs: 0,
  firstSnapshotAt: null,
  firstRenderAt: null,
  buildMs: null,
  ticks: 0,
  lastTickMs: 0,
  maxTickMs: 0,
  lagMs: 0,
  maxLagMs: 0,
  stale: 0,
};

const filters = readFilters(new URLSearchParams(location.search));

// ---------------------------------------------------------------- filters

function listParam(params, name) {
  const values = new Set();
  for (const raw of params.getAll(name)) {
    for (const item of raw.split(',')) {
      const value = item.trim();
      if (value) values.add(value);
    }
  }
  return values;
}

function readFilters(params) {
  const size = Number.parseInt(params.get('size') || '', 10);
  const rotate = Number.parseFloat(params.get('rotate') || '');
  return {
    status: listParam(params, 'status'),
    hide: listParam(params, 'hide'),
    queue: listParam(params, 'queue'),
    text: (params.get('q') || '').trim(),
    sort: params.get('sort') === 'status' ? 'status' : 'name',
    size: Number.isFinite(size) && size >= 80 ? size : null,
    kiosk: ['1', 'true', 'yes'].includes(params.get('kiosk') || ''),
    rotate: Number.isFinite(rotate) && rotate >= 3 ? rotate : null,
  };
}

function writeFilters() {
  const params = new URLSearchParams(location.search);
  const set = (name, value) => (value ? params.set(name, value) : params.delete(name));
  set('status', [...filters.status].join(','));
  set('hide', [...filters.hide].join(','));
  set('queue', [...filters.queue].join(','));
  set('q', filters.text);
  set('sort', filters.sort === 'status' ? 'status' : '');
  const query = params.toString();
  history.replaceState(null, '', query ? '?' + query : location.pathname);
}

/** In the scope the counts describe: the queue and text filters. */
function inScope(rec) {
  if (filters.queue.size) {
    const mine = agentQueues.get(rec.id);
    if (!mine || !mine.some((queue) => filters.queue.has(queue))) return false;
  }
  if (filters.text && !rec.search.includes(filters.text.toLowerCase())) return false;
  return true;
}

function isShown(rec) {
  if (filters.hide.has(rec.status)) return false;
  if (filters.status.size && !filters.status.has(rec.status)) return false;
  return inScope(rec);
}

function updateShown(rec) {
  const shown = isShown(rec);
  if (shown === rec.shown) return;
  rec.shown = shown;
  requestStatusLayout();
  scheduleRefit();
}

/** Re-applies the filters to every tile; `changed` when the user changed them. */
function applyFilters(changed = true) {
  for (const rec of ordered) rec.shown = isShown(rec);
  requestLayout();
  fit();
  countsDirty = true;
  queuesStructureDirty = true;
  syncToolbar();
  if (changed) writeFilters();
  requestFrame();
}

// ---------------------------------------------------------------- tiles

function createRecord(state) {
  const el = tileTemplate.cloneNode(true);
  const rec = {
    id: state.agent,
    name: '',
    status: null,
    state: null,
    sinceMs: NaN,
    search: '',
    shown: true,
    reason: '',
    el,
    // Text nodes, updated in place (no node churn at 1,000 updates a second).
    nameText: el.children[0].appendChild(document.createTextNode('')),
    labelText: el.children[1].children[1].appendChild(document.createTextNode('')),
    reasonText: el.children[1].children[2].appendChild(document.createTextNode('')),
    timerText: '',
    timerNode: el.children[2].appendChild(document.createTextNode('')),
    chipsEl: el.children[3],
  };
  el.dataset.agent = state.agent;
  agents.set(rec.id, rec);
  writeState(rec, state, serverNow());
  writeChips(rec);
  return rec;
}

/** Draws one agent's state on its tile, touching only what changed. */
function writeState(rec, state, now) {
  rec.state = state;
  const status = knownStatus(state.status);
  const name = state.name || state.agent;
  if (name !== rec.name) {
    rec.name = name;
    rec.sortKey = sortKey(name, rec.id);
    rec.nameText.data = name;
    rec.el.title = name + ' (' + rec.id + ')';
  }
  if (status !== rec.status) {
    rec.status = status;
    rec.el.dataset.status = status;
    rec.labelText.data = LABELS[status];
    if (filters.sort === 'status') requestStatusLayout();
    countsDirty = true;
  }
  const reason = status === 'unavailable' && state.reason ? state.reason : '';
  if (reason !== rec.reason) {
    rec.reason = reason;
    rec.reasonText.data = reason;
  }
  const seq = String(state.seq ?? '');
  if (seq !== rec.seq) {
    rec.seq = seq;
    rec.el.setAttribute('data-seq', seq);
  }
  rec.search = (name + ' ' + rec.id + ' ' + (state.destination || '')).toLowerCase();
  rec.sinceMs = parseTime(state.since);
  writeTimer(rec, now);
}

function writeTimer(rec, now) {
  const text = Number.isNaN(rec.sinceMs) ? '–' : formatElapsed((now - rec.sinceMs) / 1000);
  if (text !== rec.timerText) {
    rec.timerText = text;
    rec.timerNode.data = text;
  }
}

/** Chip sets by queue list: agents share a handful of combinations. */
const chipTemplates = new Map();

function chipTemplate(mine, key) {
  let template = chipTemplates.get(key);
  if (!template) {
    template = document.createDocumentFragment();
    const add = (text) => {
      const chip = document.createElement('span');
      chip.className = 'chip';
      chip.textContent = text;
      template.append(chip);
    };
    for (const queue of mine.slice(0, MAX_CHIPS)) add(queue);
    if (mine.length > MAX_CHIPS) add('+' + (mine.length - MAX_CHIPS));
    chipTemplates.set(key, template);
  }
  return template;
}

function writeChips(rec) {
  const mine = agentQueues.get(rec.id) || [];
  const key = mine.join(',');
  if (key === rec.chipsKey) return;
  rec.chipsKey = key;
  rec.chipsEl.replaceChildren(chipTemplate(mine, key).cloneNode(true));
  rec.chipsEl.title = mine.length ? 'Queues: ' + mine.join(', ') : '';
}

/**
 * A plain string that sorts like the name compared naturally and without
 * case (`Agent 9` < `Agent 10`), then the id: computed once per name, so
 * sorting 5,000 agents needs no collator calls.
 */
function sortKey(name, id) {
  const natural = name
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/\d+/g, (digits) => digits.padStart(12, '0'));
  return natural + '\u0000' + id;
}

function compareRecords(a, b) {
  return a.sortKey < b.sortKey ? -1 : a.sortKey > b.sortKey ? 1 : 0;
}

/** Puts a new agent at its place in name order. */
function insertRecord(rec) {
  let low = 0;
  let high = ordered.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (compareRecords(ordered[mid], rec) < 0) low = mid + 1;
    else high = mid;
  }
  ordered.splice(low, 0, rec);
  rec.shown = isShown(rec);
  requestLayout();
  scheduleRefit();
}

const rowObserver = new IntersectionObserver(
  (entries) => {
    const now = serverNow();
    for (const entry of entries) {
      const row = rowOfElement.get(entry.target);
      if (!row) continue;
      if (entry.isIntersecting) {
        rowsInView.add(row);
        if (row.dirty) fillRow(row, now);
        else for (const rec of row.recs) writeTimer(rec, now);
      } else {
        rowsInView.delete(row);
      }
    }
  },
  // A screen above and below: rows are filled before they scroll into view.
  { rootMargin: '100% 0px' },
);

/** Puts a row's tiles in it (taking them from wherever they are). */
function fillRow(row, now) {
  row.el.replaceChildren(...row.recs.map((rec) => rec.el));
  row.dirty = false;
  for (const rec of row.recs) writeTimer(rec, now);
}

/** Rebuild the rows on the next frame (filters, sorting, new agents, fit). */
function requestLayout() {
  layoutDirty = true;
  requestFrame();
}

/** Rebuild the rows soon, but not more than once per STATUS_RELAYOUT_MS. */
function requestStatusLayout() {
  if (statusLayoutTimer !== null) return;
  statusLayoutTimer = setTimeout(() => {
    statusLayoutTimer = null;
    requestLayout();
  }, STATUS_RELAYOUT_MS);
}

/** The shown tiles in display order, cut into rows of `columns`. */
function layoutRows() {
  layoutDirty = false;
  let list = ordered.filter((rec) => rec.shown);
  if (filters.sort === 'status') {
    // Array sort is stable: name order within a status.
    list = list.sort((a, b) => STATUS_ORDER[a.status] - STATUS_ORDER[b.status]);
  }
  for (const rec of ordered) {
    if (!rec.shown && rec.el.parentNode) rec.el.remove();
  }
  const needed = Math.ceil(list.length / columns);
  // New rows are filled while detached, then added in one go.
  const added = document.createDocumentFragment();
  while (rows.length < needed) {
    const el = document.createElement('div');
    el.className = 'row';
    el.setAttribute('role', 'none');
    // `dirty`: `recs` changed while the row was off screen; filled when it comes near.
    const row = { el, recs: [], dirty: false, fresh: true };
    rowOfElement.set(el, row);
    added.append(el);
    rows.push(row);
  }
  while (rows.length > needed) {
    const row = rows.pop();
    rowObserver.unobserve(row.el);
    rowsInView.delete(row);
    row.el.remove();
  }
  const now = serverNow();
  rows.forEach((row, index) => {
    const slice = list.slice(index * columns, (index + 1) * columns);
    const same = slice.length === row.recs.length && slice.every((rec, i) => rec === row.recs[i]);
    if (same && !row.fresh) return;
    row.recs = slice;
    // Rows far off screen are only marked: moving thousands of tiles every
    // second (sorting by status) would cost more than the rest of the board.
    if (row.fresh || rowsInView.has(row)) fillRow(row, now);
    else row.dirty = true;
    row.fresh = false;
  });
  for (const el of added.children) rowObserver.observe(el);
  board.append(added);
  shownCount = list.length;
  countsDirty = true;
}

// ---------------------------------------------------------------- data in

function serverNow() {
  return Date.now() + clockOffsetMs;
}

function setQueues(list) {
  queues.clear();
  for (const queue of list || []) {
    if (queue && queue.queue !== undefined) queues.set(String(queue.queue), queue);
  }
  rebuildAgentQueues();
}

function rebuildAgentQueues() {
  const next = new Map();
  const ids = [...queues.keys()].sort(byName);
  for (const id of ids) {
    for (const agent of queues.get(id).agents || []) {
      let mine = next.get(agent);
      if (!mine) next.set(agent, (mine = []));
      mine.push(id);
    }
  }
  for (const agent of new Set([...agentQueues.keys(), ...next.keys()])) {
    const rec = agents.get(agent);
    if (rec) chipsPending.add(rec);
  }
  agentQueues = next;
  queuesStructureDirty = true;
  countsDirty = true;
}

/** A snapshot (first connect and every reconnect): the whole board. */
function onSnapshot(snapshot) {
  const started = performance.now();
  stats.snapshots += 1;
  const serverTime = parseTime(snapshot.server_time);
  if (!Number.isNaN(serverTime)) clockOffsetMs = serverTime - Date.now();
  setBridge(snapshot.bridge || 'online');
  setQueues(snapshot.queues);
  pending.clear();
  const now = serverNow();
  const seen = new Set();
  let structural = false;
  for (const state of snapshot.agents || []) {
    if (!state || typeof state.agent !== 'string') continue;
    seen.add(state.agent);
    const rec = agents.get(state.agent);
    if (rec) {
      const renamed = (state.name || state.agent) !== rec.name;
      writeState(rec, state, now);
      structural ||= renamed;
    } else {
      createRecord(state);
      structural = true;
    }
  }
  for (const [id, rec] of agents) {
    if (!seen.has(id)) {
      agents.delete(id);
      rec.el.remove();
      structural = true;
    }
  }
  if (structural) ordered = [...agents.values()].sort(compareRecords);
  for (const rec of chipsPending) writeChips(rec);
  chipsPending.clear();
  renderQueues();
  applyFilters(false);
  layoutRows();
  renderCounts();
  board.setAttribute('aria-busy', 'false');
  stats.buildMs = performance.now() - started;
  if (stats.firstSnapshotAt === null) {
    stats.firstSnapshotAt = started;
    // The first frame after this one has the tiles on screen.
    requestAnimationFrame(() =>
      setTimeout(() => {
        stats.firstRenderAt = performance.now();
      }, 0),
    );
  }
}

function onState(state) {
  if (!state || typeof state.agent !== 'string') return;
  stats.events += 1;
  // How late changes arrive (server clock): the bridge and the network's share.
  const lag = serverNow() - parseTime(state.updated);
  if (lag >= 0) {
    stats.lagMs = lag;
    if (lag > stats.maxLagMs) stats.maxLagMs = lag;
  }
  // An older transition than the one we have (`seq` only grows) is a
  // straggler: drawing it would put the tile back in time.
  const known = pending.get(state.agent) || agents.get(state.agent)?.state;
  if (known && Number(state.seq) < Number(known.seq)) {
    stats.stale += 1;
    return;
  }
  pending.set(state.agent, state);
  requestFrame();
}

function onQueue(queue) {
  if (!queue || queue.queue === undefined) return;
  queues.set(String(queue.queue), queue);
  rebuildAgentQueues();
  requestFrame();
}

function requestFrame() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(flush);
}

/** Applies everything that arrived since the last frame, in one batch. */
function flush() {
  frameRequested = false;
  const started = performance.now();
  if (pending.size) {
    const now = serverNow();
    for (const state of pending.values()) {
      const rec = agents.get(state.agent);
      if (rec) {
        writeState(rec, state, now);
        if (filters.status.size || filters.hide.size) updateShown(rec);
      } else {
        insertRecord(createRecord(state));
        countsDirty = true;
      }
      stats.applied += 1;
    }
    pending.clear();
  }
  if (chipsPending.size) {
    for (const rec of chipsPending) {
      writeChips(rec);
      updateShown(rec);
    }
    chipsPending.clear();
  }
  if (queuesStructureDirty) renderQueues();
  if (layoutDirty) layoutRows();
  if (countsDirty) renderCounts();
  const spent = performance.now() - started;
  stats.batches += 1;
  stats.lastBatchMs = spent;
  if (spent > stats.maxBatchMs) stats.maxBatchMs = spent;
}

// ---------------------------------------------------------------- header

const countElements = new Map();

function buildCounts() {
  const list = $('counts');
  for (const status of STATUSES) {
    const item = document.createElement('li');
    item.className = 'count zero';
    item.dataset.status = status;
    const button = document.createElement('button');
    button.type = 'button';
    button.setAttribute('aria-pressed', 'false');
    button.title = 'Show only ' + LABELS[status].toLowerCase() + ' agents';
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.dataset.status = status;
    swatch.innerHTML = '<span class="glyph" aria-hidden="true"></span>';
    const number = document.createElement('span');
    number.className = 'n';
    number.textContent = '0';
    const label = document.createElement('span');
    label.className = 'what';
    label.textContent = LABELS[status];
    button.append(swatch, number, label);
    button.addEventListener('click', () => {
      if (filters.status.has(status)) filters.status.delete(status);
      else filters.status.add(status);
      applyFilters();
    });
    item.append(button);
    list.append(item);
    countElements.set(status, { item, button, number, value: 0 });
  }
}

function renderCounts() {
  countsDirty = false;
  const counts = Object.fromEntries(STATUSES.map((status) => [status, 0]));
  for (const rec of ordered) {
    if (inScope(rec)) counts[rec.status] += 1;
  }
  for (const [status, view] of countElements) {
    const value = counts[status];
    if (value !== view.value) {
      view.value = value;
      view.number.textContent = String(value);
      view.item.classList.toggle('zero', value === 0);
    }
    view.button.setAttribute('aria-pressed', String(filters.status.has(status)));
  }
  const shown = $('shown');
  const text =
    shownCount === agents.size
      ? agents.size + (agents.size === 1 ? ' agent' : ' agents')
      : 'Showing ' + shownCount + ' of ' + agents.size + ' agents';
  if (shown.textContent !== text) shown.textContent = text;
  const empty = $('empty');
  const emptyText =
    agents.size === 0 ? 'The bridge reports no agents.' : 'No agent matches these filters.';
  if (empty.textContent !== emptyText) empty.textContent = emptyText;
  empty.hidden = !(stats.snapshots > 0 && shownCount === 0);
  // Queue availability changes with statuses.
  renderQueueNumbers();
}

const queueElements = new Map();

function renderQueues() {
  queuesStructureDirty = false;
  const list = $('queues');
  const ids = [...queues.keys()].sort(byName);
  const same = ids.length === queueElements.size && ids.every((id) => queueElements.has(id));
  if (!same) {
    queueElements.clear();
    const items = ids.map((id) => {
      const item = document.createElement('li');
      item.className = 'queue';
      const button = document.createElement('button');
      button.type = 'button';
      button.title = 'Show only agents in queue ' + id;
      const name = document.createElement('span');
      name.className = 'q';
      name.textContent = 'Queue ' + id;
      const members = document.createElement('span');
      members.className = 'qn';
      const available = document.createElement('span');
      available.className = 'qa';
      button.append(name, members, available);
      button.addEventListener('click', () => {
        if (filters.queue.has(id)) filters.queue.delete(id);
        else filters.queue.add(id);
        applyFilters();
      });
      item.append(button);
      queueElements.set(id, { item, button, members, available, text: '' });
      return item;
    });
    list.replaceChildren(...items);
    scheduleRefit();
  }
  for (const [id, view] of queueElements) {
    view.button.setAttribute('aria-pressed', String(filters.queue.has(id)));
  }
  renderQueueNumbers();
}

function renderQueueNumbers() {
  for (const [id, view] of queueElements) {
    const queue = queues.get(id);
    if (!queue) continue;
    const members = (queue.members || []).length;
    let available = 0;
    for (const agent of queue.agents || []) {
      const rec = agents.get(agent);
      if (rec && rec.status === 'available') available += 1;
    }
    const text = members + '/' + available;
    if (text === view.text) continue;
    view.text = text;
    view.members.textContent = members + (members === 1 ? ' member' : ' members');
    view.available.textContent = available + ' available';
  }
}

function syncToolbar() {
  const search = $('search');
  if (document.activeElement !== search && search.value !== filters.text) {
    search.value = filters.text;
  }
  $('sort').value = filters.sort;
  $('hide-offline').checked = filters.hide.has('offline');
}

function setupToolbar() {
  $('toolbar').addEventListener('submit', (event) => event.preventDefault());
  let searchTimer = null;
  $('search').addEventListener('input', (event) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      filters.text = event.target.value.trim();
      applyFilters();
    }, 150);
  });
  $('sort').addEventListener('change', (event) => {
    filters.sort = event.target.value === 'status' ? 'status' : 'name';
    requestLayout();
    writeFilters();
  });
  $('hide-offline').addEventListener('change', (event) => {
    if (event.target.checked) filters.hide.add('offline');
    else filters.hide.delete('offline');
    applyFilters();
  });
  $('clear-filters').addEventListener('click', () => {
    filters.status.clear();
    filters.hide.clear();
    filters.queue.clear();
    filters.text = '';
    $('search').value = '';
    applyFilters();
  });
  syncToolbar();
}

// ---------------------------------------------------------------- layout

/**
 * Picks the largest tile size with which every shown tile fits the screen
 * (a TV cannot scroll), down to a readable minimum; then the number of
 * columns and the exact tile width that fills the line.
 */
function fit() {
  const style = getComputedStyle(board);
  const gap = Number.parseFloat(style.getPropertyValue('--gap')) || 8;
  const paddingX = Number.parseFloat(style.paddingLeft) + Number.parseFloat(style.paddingRight);
  const width = Math.max(MIN_TILE_WIDTH, board.clientWidth - paddingX);
  const top = board.getBoundingClientRect().top + window.scrollY;
  const height = window.innerHeight - top - 2 * gap;
  const count = Math.max(1, ordered.reduce((n, rec) => n + (rec.shown ? 1 : 0), 0));
  const columnsFor = (tile) => Math.max(1, Math.floor((width + gap) / (tile + gap)));
  let tileWidth = filters.size;
  if (!tileWidth) {
    for (let candidate = MAX_TILE_WIDTH; candidate >= MIN_TILE_WIDTH; candidate -= 4) {
      const lines = Math.ceil(count / columnsFor(candidate));
      if (lines * (Math.round(candidate * TILE_RATIO) + gap) - gap <= height) {
        tileWidth = candidate;
        break;
      }
    }
  }
  // Too many to fit: the board scrolls, with tiles as wide as the columns
  // allow (phones get two columns).
  const scrolls = !tileWidth;
  tileWidth = Math.min(tileWidth || MIN_TILE_WIDTH, width);
  const nextColumns = columnsFor(tileWidth);
  const fullWidth = Math.floor((width - (nextColumns - 1) * gap) / nextColumns);
  const fontWidth = scrolls ? fullWidth : tileWidth;
  board.style.setProperty('--tile-w', fullWidth + 'px');
  board.style.setProperty('--tile-font-w', fontWidth + 'px');
  board.style.setProperty('--tile-h', Math.round(fontWidth * TILE_RATIO) + 'px');
  if (nextColumns !== columns) {
    columns = nextColumns;
    requestLayout();
  }
}

let refitTimer = null;
function scheduleRefit() {
  if (refitTimer !== null) return;
  refitTimer = setTimeout(() => {
    refitTimer = null;
    fit();
  }, REFIT_DEBOUNCE_MS);
}

/** The ringing pulse (see style.css), off for users who prefer reduced motion. */
function setupPulse() {
  const reduce = window.matchMedia('(prefers-reduced-motion: reduce)');
  setInterval(() => {
    if (reduce.matches || document.hidden) {
      if (board.dataset.pulse !== undefined) delete board.dataset.pulse;
    } else if (board.dataset.pulse !== undefined) {
      delete board.dataset.pulse;
    } else {
      board.dataset.pulse = '';
    }
  }, PULSE_MS);
}

function setupRotation() {
  if (!filters.rotate) return;
  setInterval(() => {
    const bottom = window.scrollY + window.innerHeight >= document.documentElement.scrollHeight - 4;
    if (bottom) window.scrollTo({ top: 0 });
    else window.scrollBy({ top: Math.max(100, window.innerHeight - 80) });
  }, filters.rotate * 1000);
}

// ---------------------------------------------------------------- timers

const clockFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
});

function tick() {
  const started = performance.now();
  const now = serverNow();
  for (const row of rowsInView) for (const rec of row.recs) writeTimer(rec, now);
  const clock = $('clock');
  const text = clockFormat.format(new Date(now));
  if (clock.textContent !== text) {
    clock.textContent = text;
    clock.dateTime = new Date(now).toISOString();
  }
  stats.ticks += 1;
  stats.lastTickMs = performance.now() - started;
  if (stats.lastTickMs > stats.maxTickMs) stats.maxTickMs = stats.lastTickMs;
  scheduleTick();
}

/** Ticks just after each full second of server time, so all timers move together. */
function scheduleTick() {
  const now = serverNow();
  setTimeout(tick, 1000 - (((now % 1000) + 1000) % 1000) + 5);
}

// ---------------------------------------------------------------- connection

let source = null;
let reconnectAttempt = 0;
let reconnectTimer = null;
let streamState = 'connecting';
let bridgeState = 'online';
let streamLostAt = null;
let bridgeOfflineAt = null;

function connect() {
  if (source) source.close();
  source = new EventSource('api/stream');
  const parse = (handler) => (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (error) {
      console.warn('pbx2mqtt: unreadable ' + event.type + ' event', error);
      return;
    }
    handler(data);
  };
  source.addEventListener(
    'snapshot',
    parse((snapshot) => {
      reconnectAttempt = 0;
      setStream('live');
      onSnapshot(snapshot);
    }),
  );
  source.addEventListener('state', parse(onState));
  source.addEventListener('queues', parse(onQueue));
  source.addEventListener(
    'bridge',
    parse((message) => setBridge(message && message.state)),
  );
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (HTTP error or wrong content type): EventSource gives up, we do not.
      source.close();
      const delay =
        RECONNECT_DELAYS_MS[Math.min(reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
      reconnectAttempt += 1;
      clearTimeout(reconnectTimer);
      reconnectTimer = setTimeout(connect, delay);
    }
    if (stats.snapshots === 0) setStream('unreachable');
    else setStream('reconnecting');
  });
}

function setStream(state) {
  if (state === streamState) return;
  if (state === 'reconnecting' && streamLostAt === null) streamLostAt = Date.now();
  if (state === 'live') streamLostAt = null;
  streamState = state;
  renderConnection();
}

function setBridge(state) {
  const next = state === 'offline' ? 'offline' : 'online';
  if (next === bridgeState) return;
  bridgeState = next;
  bridgeOfflineAt = next === 'offline' ? Date.now() : null;
  renderConnection();
}

function renderConnection() {
  const conn = $('conn');
  const banner = $('banner');
  let indicator;
  let label;
  let message = '';
  let severe = false;
  if (streamState === 'live' && bridgeState === 'online') {
    indicator = 'live';
    label = 'Live';
  } else if (streamState === 'live') {
    indicator = 'offline';
    label = 'Bridge offline';
    severe = true;
    message =
      'The pbx2mqtt bridge is offline (since ' +
      timeFormat.format(new Date(bridgeOfflineAt)) +
      '): statuses are not being updated.';
  } else if (streamState === 'reconnecting') {
    indicator = 'reconnecting';
    label = 'Reconnecting…';
    message =
      'Connection to pbx2mqtt lost at ' +
      timeFormat.format(new Date(streamLostAt)) +
      ', reconnecting… Statuses shown may be out of date.';
  } else if (streamState === 'unreachable') {
    indicator = 'reconnecting';
    label = 'Connecting…';
    message = 'Cannot reach pbx2mqtt yet, retrying…';
  } else {
    indicator = 'connecting';
    label = 'Connecting…';
  }
  conn.dataset.conn = indicator;
  conn.textContent = label;
  banner.textContent = message;
  banner.hidden = !message;
  banner.classList.toggle('offline', severe);
  document.body.classList.toggle('stale', indicator !== 'live' && stats.snapshots > 0);
}

// ---------------------------------------------------------------- start

function start() {
  if (filters.kiosk) document.body.classList.add('kiosk');
  buildCounts();
  setupToolbar();
  renderConnection();
  connect();
  setTimeout(() => {
    if (stats.snapshots === 0 && streamState === 'connecting') setStream('unreachable');
  }, FIRST_CONNECT_GRACE_MS);
  // Refit when the board's width changes: a window resize, or a scrollbar
  // appearing once the board is taller than the screen.
  let resizeTimer = null;
  let boardWidth = board.clientWidth;
  const refitSoon = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(fit, 150);
  };
  window.addEventListener('resize', refitSoon);
  new ResizeObserver(() => {
    if (board.clientWidth !== boardWidth) {
      boardWidth = board.clientWidth;
      refitSoon();
    }
  }).observe(board);
  setupRotation();
  setupPulse();
  tick();
  window.pbx2mqttWallboard = {
    stats,
    /** The agent ids with a tile, in display order. */
    tiles: () => ordered.map((rec) => rec.id),
    /** How many tiles have a ticking timer. */
    ticking: () => [...rowsInView].reduce((n, row) => n + row.recs.length, 0),
    clockOffsetMs: () => clockOffsetMs,
    /** The latest state the page has for an agent (drawn or about to be). */
    state: (agent) => pending.get(agent) || agents.get(agent)?.state || null,
    connection: () => ({ stream: streamState, bridge: bridgeState }),
  };
}

start();
