import { mkdtemp, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunOptions } from '../../functions/plan/plan.js';
import type { PhaseEvent, PhaseProgress } from '../events.js';
import { localOrigin, systemClock } from '../function.js';
import { silentLogger } from '../log.js';
import { XapiClient } from '../xapi/client.js';
import { startSimulator } from '../../test/sim/server.js';
import type { Simulator } from '../../test/sim/server.js';
import { runEmbedded } from './embedded.js';
import { ProgressBoard } from './progress.js';
import { runOptions } from '../../test/helpers/jobs.js';
import { pool, vm } from '../../test/sim/fixtures.js';

const T0 = Date.parse('2026-11-26T08:30:00Z');
const at = (ms: number) => new Date(T0 + ms).toISOString();
const RUN = '20261126-083000-prog';
const started = (jobId: string, fn: string, ms: number, label = 'web1', tryN = 1): PhaseEvent => ({ runId: RUN, jobId, fn, try: tryN, attempt: 1, at: at(ms), outcome: 'started', label });
const done = (jobId: string, fn: string, ms: number): PhaseEvent => ({ runId: RUN, jobId, fn, try: 1, attempt: 1, at: at(ms), outcome: 'done', durationMs: 1, output: {} });
const signal = (jobId: string, ms: number, bytes: number, total?: number, tryN = 1): PhaseProgress => ({
  runId: RUN,
  jobId,
  fn: 'export',
  try: tryN,
  label: 'web1',
  bytes,
  ...(total !== undefined ? { total } : {}),
  at: at(ms),
});
const MiB = 1 << 20;

describe('ProgressBoard', () => {
  it('shows a phase from its start, its bytes, the rate over the window and the time left; drops it when it ends', () => {
    const board = new ProgressBoard({ windowMs: 5_000 });
    board.event(started('vm.a', 'snapshot', 0));
    expect(board.rows(T0 + 100)).toEqual([{ runId: RUN, jobId: 'vm.a', label: 'web1', phase: 'snapshot', since: at(0) }]);
    board.event(done('vm.a', 'snapshot', 900));
    expect(board.rows(T0 + 1_000)).toEqual([]);
    board.event(started('vm.a', 'export', 1_000));
    board.signal(signal('vm.a', 1_000, 0, 100 * MiB));
    board.signal(signal('vm.a', 2_000, 10 * MiB, 100 * MiB));
    board.signal(signal('vm.a', 3_000, 20 * MiB, 100 * MiB));
    expect(board.rows(T0 + 3_000)).toEqual([
      { runId: RUN, jobId: 'vm.a', label: 'web1', phase: 'export', since: at(1_000), bytes: 20 * MiB, total: 100 * MiB, rateBps: 10 * MiB, etaS: 8 },
    ]);
    // Faster now: the window forgets the slow start (one sample older than it is kept).
    for (let s = 4; s <= 9; s++) board.signal(signal('vm.a', s * 1_000, 20 * MiB + (s - 3) * 20 * MiB, 200 * MiB));
    const row = board.row(RUN, 'vm.a', T0 + 9_000)!;
    expect(row.bytes).toBe(140 * MiB);
    expect(row.rateBps).toBe(20 * MiB);
    expect(row.etaS).toBe(3);
    board.event(done('vm.a', 'export', 9_500));
    expect(board.rows(T0 + 9_500)).toEqual([]);
  });

  it('without a total there is a rate and no time left; past the total neither is a guess', () => {
    const board = new ProgressBoard();
    board.signal(signal('vm.a', 0, 0));
    board.signal(signal('vm.a', 2_000, 4 * MiB));
    expect(board.rows(T0 + 2_000)[0]).toMatchObject({ bytes: 4 * MiB, rateBps: 2 * MiB });
    expect(board.rows(T0 + 2_000)[0]!.etaS).toBeUndefined();
    board.signal(signal('vm.a', 3_000, 6 * MiB, 5 * MiB));
    expect(board.rows(T0 + 3_000)[0]!.etaS).toBeUndefined();
  });

  it('a job heard of only by its signals goes once they stop; a late signal of an earlier try is ignored', () => {
    const board = new ProgressBoard({ staleMs: 30_000 });
    board.signal(signal('vm.a', 0, MiB, undefined, 2));
    board.signal(signal('vm.a', 500, 9 * MiB, undefined, 1));
    expect(board.rows(T0 + 1_000)).toMatchObject([{ jobId: 'vm.a', bytes: MiB, since: at(0) }]);
    expect(board.rows(T0 + 29_000)).toHaveLength(1);
    expect(board.rows(T0 + 31_000)).toEqual([]);
  });

  it('forgets the jobs of a finished run', () => {
    const board = new ProgressBoard();
    board.event(started('vm.a', 'export', 0));
    board.event(started('vm.b', 'snapshot', 0, 'db1'));
    board.forget(RUN, 'vm.a');
    expect(board.rows(T0).map((r) => r.label)).toEqual(['db1']);
    board.forget(RUN);
    expect(board.rows(T0)).toEqual([]);
  });
});

describe('progress of a real export (simulator, in-process run)', () => {
  let sim: Simulator;
  let xapi: XapiClient;
  let backupDir: string;
  beforeAll(async () => {
    sim = await startSimulator({
      pool: pool([vm('web1', 'Running', 3)]),
    });
    xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret', log: silentLogger() });
    backupDir = await mkdtemp(path.join(os.tmpdir(), 'vmb-progress-'));
  });
  afterAll(async () => {
    await xapi?.close();
    await sim?.close();
  });
  /** A run of web1 alone, one VM at a time, no retry, no pool DB or hosts. */
  const web1Options = (selection: Pick<RunOptions, 'vmExports'> & Partial<RunOptions>): RunOptions =>
    runOptions({ backupDir, haltedWithoutSnapshot: false, ...selection });

  it('the export sends its bytes about once a second, never more than it wrote, with the disks as total', async () => {
    // 3 MiB at 768 KiB/s: four seconds of transfer.
    sim.faults.add({ http: 'export', vm: 'web1', action: { kind: 'slow', bytes_per_second: 768 * 1024 } });
    const options = web1Options({ vmExports: ['web1'] });
    const signals: PhaseProgress[] = [];
    const board = new ProgressBoard();
    const seenRows: ReturnType<ProgressBoard['rows']>[] = [];
    const summary = await runEmbedded(
      { runId: RUN, options, startedAt: new Date() },
      {
        xapi,
        log: silentLogger(),
        clock: systemClock,
        origin: localOrigin(),
        onEvent: (e) => board.event(e),
        onProgress: (p) => {
          signals.push(p);
          board.signal(p);
          seenRows.push(board.rows(Date.now()));
        },
      },
    );
    expect(summary.exitCode, JSON.stringify(summary)).toBe(0);
    const file = summary.jobs.find((j) => j.name === 'web1')!.files[0]!;
    const size = (await stat(file.path)).size;
    expect(signals.length).toBeGreaterThanOrEqual(2);
    for (const s of signals) expect(s).toMatchObject({ runId: RUN, jobId: expect.stringMatching(/^vm\./), fn: 'export', try: 1, label: 'web1', total: 3 * MiB });
    const bytes = signals.map((s) => s.bytes);
    expect(bytes).toEqual([...bytes].sort((a, b) => a - b));
    expect(bytes[bytes.length - 1]).toBeLessThanOrEqual(size);
    // One signal a second at most: consecutive signals are at least ~1 s apart on the worker's clock.
    const times = signals.map((s) => Date.parse(s.at));
    for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(990);
    // The board made a rate and a time left of them while the export ran, and dropped the row after.
    const live = seenRows.flat().filter((r) => r.rateBps !== undefined);
    expect(live.length).toBeGreaterThan(0);
    // A time left while bytes remain (an XVA's header may take it past the disks' size at the end).
    expect(live.every((r) => r.label === 'web1' && r.phase === 'export' && r.rateBps! > 0 && (r.etaS !== undefined || r.bytes! >= r.total!))).toBe(true);
    expect(live.some((r) => r.etaS !== undefined)).toBe(true);
    expect(board.rows(Date.now())).toEqual([]);
  }, 60_000);

  it('a delta-export sends its position through the disks the same way, ending at their size', async () => {
    // No NBD network in this pool: the first point reads /export_raw_vdi, slowed to four seconds.
    sim.faults.clear();
    sim.faults.add({ http: 'export_raw_vdi', vm: 'web1', action: { kind: 'slow', bytes_per_second: 768 * 1024 } });
    const signals: PhaseProgress[] = [];
    const summary = await runEmbedded(
      {
        runId: `${RUN}-delta`,
        options: web1Options({ vmExports: [], deltaExports: ['web1'] }),
        startedAt: new Date(),
      },
      { xapi, log: silentLogger(), clock: systemClock, origin: localOrigin(), onProgress: (p) => signals.push(p) },
    );
    sim.faults.clear();
    expect(summary.exitCode, JSON.stringify(summary)).toBe(0);
    expect(signals.length).toBeGreaterThanOrEqual(2);
    for (const s of signals) expect(s).toMatchObject({ fn: 'delta-export', label: 'web1', total: 3 * MiB });
    const bytes = signals.map((s) => s.bytes);
    expect(bytes).toEqual([...bytes].sort((a, b) => a - b));
    expect(bytes[0]).toBeLessThan(3 * MiB);
    expect(bytes.at(-1)).toBeLessThanOrEqual(3 * MiB);
  }, 60_000);
});
