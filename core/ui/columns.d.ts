// Types of core/ui/columns.js (a plain ES module the page loads as it is) for its node tests.

export interface ApiWindow {
  startMs: number;
  endMs?: number;
  servers: number;
  count: number;
  values: Record<string, number | null>;
  revision: number;
}

export class WindowColumns {
  keys: string[];
  n: number;
  cap: number;
  startMs: Float64Array;
  endMs: Float64Array;
  servers: Uint32Array;
  count: Float64Array;
  revision: Uint32Array;
  flags: Uint8Array;
  values: Float64Array[];
  reserve(rows: number): void;
  clear(): void;
  lowerBound(ms: number): number;
  isAdhoc(i: number): boolean;
  upsert(w: ApiWindow, adhoc?: boolean): void;
  upsertMany(ws: ApiWindow[], opts?: { adhoc?: boolean; keepExisting?: boolean }): void;
  dropBefore(ms: number): void;
  upsertLive(w: ApiWindow, keepFromMs: number): void;
  filter(keep: (i: number) => boolean): void;
  row(i: number): Required<ApiWindow> & { values: Record<string, number>; adhoc: boolean };
  rowAt(ms: number, slackMs: number): number;
}

export function plotColumns(cols: WindowColumns, opts: { lo: number; hi: number; windowMs: number; fromMs: number; toMs: number; pixels: number }): { data: [number[], ...(number | null)[][]]; rowOf: number[] | null; bucketMs: number };

export function historyRows(fromMs: number, toMs: number, windowMs: number, pagesMax: number, windowsPerAnswer: number): number;

export function axisOf(keys: string[], magnitude: (key: string) => number): Map<string, 'left' | 'right'>;
