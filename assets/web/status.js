// The agent statuses of product.md §1 as the pages show them, and the
// small time helpers both pages share. Pure: no DOM, no network.

/** Every status, in the order the pages list them (working states first). */
export const STATUSES = [
  'available',
  'ringing',
  'on_call',
  'wrapup',
  'busy',
  'paused',
  'unavailable',
  'offline',
  'unknown',
];

/** The text shown for each status (colour is never the only signal). */
export const LABELS = {
  offline: 'Offline',
  paused: 'Paused',
  busy: 'Busy',
  unavailable: 'Unavailable',
  available: 'Available',
  ringing: 'Ringing',
  on_call: 'On call',
  wrapup: 'Wrap-up',
  unknown: 'Unknown',
};

/** A status string from the server, or `unknown` for anything unexpected. */
export function knownStatus(status) {
  return Object.prototype.hasOwnProperty.call(LABELS, status) ? status : 'unknown';
}

const pad = (n) => (n < 10 ? '0' + n : String(n));

/**
 * Time in status for a tile: `mm:ss` under an hour, `h:mm:ss` under a day,
 * `3d 04h` beyond. Negative input (clock skew) shows as `00:00`.
 */
export function formatElapsed(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const s = total % 60;
  const m = Math.floor(total / 60) % 60;
  const h = Math.floor(total / 3600);
  if (h === 0) return pad(m) + ':' + pad(s);
  if (h < 24) return h + ':' + pad(m) + ':' + pad(s);
  return Math.floor(h / 24) + 'd ' + pad(h % 24) + 'h';
}

/** A report duration as `h:mm:ss` (hours may exceed 24), like the CLI. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '–';
  const total = Math.max(0, Math.round(seconds));
  return (
    Math.floor(total / 3600) + ':' + pad(Math.floor(total / 60) % 60) + ':' + pad(total % 60)
  );
}

/** Milliseconds since the epoch of an RFC 3339 string (NaN when absent). */
export function parseTime(text) {
  if (!text) return NaN;
  // Browsers differ on more than three fraction digits (chrono may write nine).
  return Date.parse(String(text).replace(/(\.\d{3})\d+/, '$1'));
}

/** Natural, case-insensitive ordering for names like `Agent 9` < `Agent 10`. */
export const byName = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' })
  .compare;
