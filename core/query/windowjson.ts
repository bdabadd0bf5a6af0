// A window's JSON text, as JSON.stringify gives it, written by hand (issue 14): an answer of 120
// windows took ~67 µs to stringify, half of it on the 13-digit startMs and endMs, which are no
// small integers to V8 and go through its double formatting. Here a multiple of 1,000 ms is
// written as its seconds (a small integer) and "000". Every caller's windows come from
// eval.ts `result` (the properties in its order); windowJson is proven equal to JSON.stringify
// on them, with NaN, ±Infinity, −0, huge and tiny values (windowjson.test.ts).

import type { WindowResult } from './eval.js';

/** A number as JSON writes it (NaN and ±Infinity: null). */
function num(x: number): string {
  if ((x | 0) === x) return `${x}`; // 32-bit integers (and −0, written 0 by both)
  if (x % 1000 === 0 && x < 2147483647000 && x > -2147483648000) return `${(x / 1000) | 0}000`;
  return Number.isFinite(x) ? `${x}` : 'null';
}

/** Keys of `values` as JSON strings with their colon (function keys: a few per query), bounded. */
const keyTexts = new Map<string, string>();
const keyTextsMax = 256;

function keyText(k: string): string {
  let t = keyTexts.get(k);
  if (t === undefined) {
    if (keyTexts.size >= keyTextsMax) keyTexts.clear();
    keyTexts.set(k, (t = `${JSON.stringify(k)}:`));
  }
  return t;
}

/** JSON.stringify(w) for a window made by eval.ts `result`. */
export function windowJson(w: WindowResult): string {
  let s = `{"startMs":${num(w.startMs)},"endMs":${num(w.endMs)},"servers":${num(w.servers)},"count":${num(w.count)},"values":{`;
  let first = true;
  const v = w.values;
  for (const k in v) {
    s += (first ? '' : ',') + keyText(k) + num(v[k]!);
    first = false;
  }
  s += `},"revision":${num(w.revision)}`;
  if (w.sketched === true) s += ',"sketched":true';
  return `${s}}`;
}

/** JSON.stringify(ws) for windows made by eval.ts `result`. */
export function windowsJson(ws: readonly WindowResult[]): string {
  let s = '[';
  for (let i = 0; i < ws.length; i++) s += (i === 0 ? '' : ',') + windowJson(ws[i]!);
  return `${s}]`;
}
