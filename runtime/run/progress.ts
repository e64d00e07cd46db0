import type { PhaseEvent, PhaseProgress } from '../events.js';

/**
 * One job under way, as the status page and the terminal show it: its phase, and while the
 * phase moves data, the bytes moved so far, the rate over the last few seconds and, when
 * the phase said how much it expects (`total`), the time left at that rate.
 *
 * @example
 *   { "runId": "20261126-083000-7f3a", "jobId": "vm.5c1e…", "label": "web1", "phase": "export",
 *     "since": "2026-11-26T08:30:41.000Z", "bytes": 734003200, "total": 10737418240,
 *     "rateBps": 104857600, "etaS": 95 }
 */
export interface ProgressRow {
  runId: string;
  jobId: string;
  label: string;
  phase: string;
  /** When the phase started (or, heard only from its signals, when its first signal came). */
  since: string;
  bytes?: number;
  total?: number;
  /** Bytes per second over the last `windowMs`. */
  rateBps?: number;
  /** Seconds left at that rate, when `total` is known and not yet reached. */
  etaS?: number;
}

interface Entry {
  row: Omit<ProgressRow, 'rateBps' | 'etaS'>;
  try: number;
  /** [time (ms), bytes] of the signals within the window, oldest first. */
  samples: [number, number][];
  /** When this process last heard of the job (ms). */
  heard: number;
}

/**
 * What is under way, from the phase events (started / done / failed) and the progress
 * signals (PhaseProgress) of one run or many. Pure bookkeeping: the caller feeds it and asks
 * for `rows(now)`; the terminal display and the gateway's `GET /v1/progress` share it.
 *
 * A job is shown from its phase's `started` (or its first signal) until its phase ends. A
 * job heard of only through signals (the gateway does not follow phase events) is dropped
 * once `staleMs` passes without one: its worker finished, died, or lost NATS.
 *
 * @example
 *   const board = new ProgressBoard();
 *   board.event(startedEvent); board.signal(progress);
 *   board.rows(Date.now()) // → [{ label: 'web1', phase: 'export', bytes: …, rateBps: …, etaS: … }]
 */
export class ProgressBoard {
  private readonly entries = new Map<string, Entry>();
  private readonly windowMs: number;
  private readonly staleMs: number;

  constructor(opts: { windowMs?: number; staleMs?: number } = {}) {
    this.windowMs = opts.windowMs ?? 5_000;
    this.staleMs = opts.staleMs ?? 30_000;
  }

  /** A phase event: `started` shows the job in that phase, `done` / `failed` ends it. */
  event(e: PhaseEvent, now = Date.parse(e.at)): void {
    const key = keyOf(e.runId, e.jobId);
    const entry = this.entries.get(key);
    if (entry !== undefined && e.try < entry.try) return; // a late event of an earlier try
    if (e.outcome !== 'started') {
      if (entry !== undefined && entry.row.phase === e.fn) this.entries.delete(key);
      return;
    }
    // Only jobs: plan and the run-end hooks are about the run.
    if (e.fn === 'plan' || e.fn === 'run-end') return;
    const label = e.label ?? entry?.row.label ?? e.jobId;
    this.entries.set(key, { row: { runId: e.runId, jobId: e.jobId, label, phase: e.fn, since: e.at }, try: e.try, samples: [], heard: now });
  }

  /** A progress signal: the bytes the job's phase moved so far. */
  signal(p: PhaseProgress, now = Date.parse(p.at)): void {
    const key = keyOf(p.runId, p.jobId);
    let entry = this.entries.get(key);
    if (entry !== undefined && p.try < entry.try) return;
    if (entry === undefined || entry.row.phase !== p.fn || entry.try !== p.try) {
      entry = { row: { runId: p.runId, jobId: p.jobId, label: p.label ?? entry?.row.label ?? p.jobId, phase: p.fn, since: p.at }, try: p.try, samples: [], heard: now };
      this.entries.set(key, entry);
    }
    const t = Date.parse(p.at);
    const last = entry.samples[entry.samples.length - 1];
    // Signals of one job come from one worker's clock, in order; an older one is a straggler.
    if (last !== undefined && t <= last[0]) return;
    entry.samples.push([t, p.bytes]);
    // Keep one sample older than the window, so the rate spans the whole window.
    while (entry.samples.length > 2 && entry.samples[1]![0] <= t - this.windowMs) entry.samples.shift();
    entry.row.bytes = p.bytes;
    if (p.total !== undefined) entry.row.total = p.total;
    else delete entry.row.total;
    entry.heard = now;
  }

  /** The job, or all jobs of a run, are over (the run finished). */
  forget(runId: string, jobId?: string): void {
    for (const [key, e] of this.entries) if (e.row.runId === runId && (jobId === undefined || e.row.jobId === jobId)) this.entries.delete(key);
  }

  /** The jobs under way, in the order they started. */
  rows(now: number): ProgressRow[] {
    const out: ProgressRow[] = [];
    for (const [key, e] of this.entries) {
      if (e.samples.length > 0 && now - e.heard > this.staleMs) {
        this.entries.delete(key);
        continue;
      }
      out.push({ ...e.row, ...rate(e) });
    }
    return out;
  }

  /** The row of one job, if it is under way. */
  row(runId: string, jobId: string, now: number): ProgressRow | undefined {
    return this.rows(now).find((r) => r.runId === runId && r.jobId === jobId);
  }
}

function keyOf(runId: string, jobId: string): string {
  return `${runId} ${jobId}`;
}

function rate(e: Entry): { rateBps?: number; etaS?: number } {
  const first = e.samples[0];
  const last = e.samples[e.samples.length - 1];
  if (first === undefined || last === undefined || last[0] <= first[0]) return {};
  const rateBps = Math.max(0, (last[1] - first[1]) / ((last[0] - first[0]) / 1000));
  const total = e.row.total;
  if (total === undefined || total <= last[1] || rateBps <= 0) return { rateBps };
  return { rateBps, etaS: Math.ceil((total - last[1]) / rateBps) };
}
