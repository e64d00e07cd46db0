import { openNats } from '../bus/nats-connect.js';
import type { NatsRuntime } from '../bus/nats-connect.js';
import { commandHelp, takePositionals } from '../config/args.js';
import { UsageError } from '../errors.js';
import { listOutcomes, runOutcome } from '../run/outcome.js';
import type { RunOutcome } from '../run/outcome.js';
import type { JobState, RunHeader } from '../run/state.js';
import { jobOutcomeLines, stoppedLine, summarize } from '../run/summary.js';
import { formatBytes, formatSeconds } from '../units.js';
import type { Io } from './io.js';
import { VERSION, fail } from './io.js';
import { takeExtras } from './run.js';
import type { Extras } from './run.js';
import { commandLogger, loadCommandSettings } from './settings.js';

/**
 * `vmbackup status [RUN] [--json] [--limit N]` — run state from the NATS KV bucket. Without
 * RUN: the recent runs, newest first, one per line, with their outcome once finished
 * (`runOutcome`, as the gateway shows it). With RUN: the run, its outcome and each of its
 * jobs (status, phase, try, size, time per phase, errors). RUN may stand anywhere among the
 * options. Exit 0, or 2 when the run is unknown, NATS is unreachable, or on a usage / config
 * error.
 */
export async function statusCommand(argv: readonly string[], io: Io): Promise<number> {
  let extras: Extras;
  let args: { positionals: string[]; options: string[] };
  try {
    extras = takeExtras(argv, { '--limit': 'value' });
    args = takePositionals(extras.rest, { command: 'vmbackup status', takes: 'one RUN', max: 1 });
  } catch (error) {
    return fail(io, error);
  }
  const runId = args.positionals[0];
  let limit = 20;
  const loaded = loadCommandSettings(args.options, io, {
    command: 'status',
    help: () => commandHelp('status', { version: VERSION }),
    check: () => {
      const l = extras.values['--limit'];
      if (l !== undefined) {
        if (typeof l !== 'string' || !/^\d+$/.test(l) || Number(l) < 1) throw new UsageError(`--limit must be an integer >= 1 (got ${JSON.stringify(l)})`);
        limit = Number(l);
      }
    },
    warnings: false,
  });
  if (typeof loaded === 'number') return loaded;
  const { settings, flags } = loaded;
  const log = commandLogger({ ...settings, log_level: settings.log_level === 'debug' ? 'debug' : 'warning' }, io, { json: true, file: false });
  let nats: NatsRuntime | undefined;
  try {
    nats = await openNats(settings, log, { name: 'vmbackup status', reconnectForever: false });
    if (runId === undefined) {
      const headers = await nats.store.list(limit);
      const outcomes = await listOutcomes(nats.store, headers);
      if (flags.json) {
        io.stdout.write(JSON.stringify(headers.map((h, i) => ({ ...h, ...outcomes[i] })), null, 2) + '\n');
      } else if (headers.length === 0) {
        io.stdout.write('no runs\n');
      } else {
        for (const [i, h] of headers.entries()) io.stdout.write(runLine(h, outcomes[i]) + '\n');
      }
      return 0;
    }
    const current = await nats.store.header(runId);
    if (current === undefined) throw new UsageError(`no run ${runId} (vmbackup status lists the recent runs)`);
    const header = current.header;
    const jobs = await nats.store.allJobs(runId);
    const outcome = runOutcome(header, jobs);
    if (flags.json) {
      io.stdout.write(JSON.stringify({ header, ...outcome, jobs, ...(outcome !== undefined ? { summary: summarize(header, jobs) } : {}) }, null, 2) + '\n');
    } else {
      io.stdout.write(formatRun(header, jobs, outcome));
    }
    return 0;
  } catch (error) {
    return fail(io, error);
  } finally {
    await nats?.close().catch(() => {});
    log.flush();
  }
}

/** One run on one line: id, state (outcome when finished), start, duration, jobs, pool, trigger. */
export function runLine(h: RunHeader, outcome?: RunOutcome): string {
  const state = outcome?.outcome ?? h.status;
  const duration = h.finishedAt !== undefined ? formatSeconds(Date.parse(h.finishedAt) - Date.parse(h.startedAt)) : 'running';
  const jobs = `${h.jobIds.length} job${h.jobIds.length === 1 ? '' : 's'}${h.status === 'running' ? `, ${h.remaining} to go` : ''}`;
  return [h.runId, state.padEnd(8), h.startedAt, duration.padStart(8), jobs, h.pool !== undefined ? `pool ${h.pool.name}` : '', h.trigger !== undefined ? `(${h.trigger})` : '']
    .filter((s) => s !== '')
    .join('  ');
}

/** A run and its jobs, for people. */
export function formatRun(h: RunHeader, jobs: readonly JobState[], outcome?: RunOutcome): string {
  const lines: string[] = [];
  const state = outcome !== undefined ? `${h.status}: ${outcome.outcome} (exit ${outcome.exitCode})` : h.status;
  lines.push(`run ${h.runId}  ${state}${h.pool !== undefined ? `  pool ${h.pool.name}` : ''}`);
  lines.push(
    `started ${h.startedAt}${h.finishedAt !== undefined ? `  finished ${h.finishedAt} (${formatSeconds(Date.parse(h.finishedAt) - Date.parse(h.startedAt))})` : ''}${h.trigger !== undefined ? `  trigger ${h.trigger}` : ''}  concurrency ${h.concurrency}`,
  );
  if (h.backupDir !== undefined) lines.push(`backups in ${h.backupDir}`);
  if (h.fatal !== undefined) lines.push(`ERROR: the run could not start: ${h.fatal.message}`);
  if (h.stopping !== undefined) lines.push(stoppedLine({ ...h.stopping, notStarted: h.stopping.notStarted ?? 0 }));
  for (const w of h.warnings) lines.push(`WARNING: ${w.list !== undefined ? `${w.list}: ` : ''}${w.message}`);
  if (jobs.length > 0) {
    const rows = jobs.map((j) => [
      j.label,
      j.category,
      j.status,
      j.phase,
      String(j.try),
      j.bytes > 0 ? formatBytes(j.bytes) : '-',
      j.startedAt !== undefined && j.finishedAt !== undefined ? formatSeconds(Date.parse(j.finishedAt) - Date.parse(j.startedAt)) : '-',
      Object.entries(j.phaseMs)
        .map(([fn, ms]) => `${fn} ${formatSeconds(ms)}`)
        .join(', '),
    ]);
    const head = ['JOB', 'CATEGORY', 'STATUS', 'PHASE', 'TRY', 'SIZE', 'TIME', 'PHASES'];
    const widths = head.map((t, i) => Math.max(t.length, ...rows.map((r) => r[i]!.length)));
    for (const row of [head, ...rows]) lines.push(row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
  }
  for (const j of jobs) {
    // As the run's summary prints them: a VM its pre-vm hook skipped is SKIPPED, not an error.
    const skipped = j.status === 'skipped';
    lines.push(
      ...jobOutcomeLines({
        category: j.category,
        name: j.label,
        ...(skipped ? { skipped: j.error?.message ?? 'skipped' } : j.error !== undefined ? { error: j.error.message } : {}),
        warnings: j.warnings,
      }),
    );
  }
  return lines.join('\n') + '\n';
}
