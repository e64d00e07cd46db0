import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { RunOutcome } from '../run/outcome.js';
import type { RunSummary } from '../run/summary.js';
import { writeFileAtomic } from '../storage/atomic.js';
import { RUN_OUTCOMES, statusMetrics } from './metrics.js';
import { StatusReader, runRecordFromSummary } from './vm-status.js';

/**
 * The node_exporter textfile of a cron install (`metrics_textfile`): the per-VM series of
 * runtime/status/metrics.ts, from backup_dir and the run that just ended, rewritten at the end
 * of each run (written beside it, then renamed: node_exporter never reads half a file).
 * What a cron install has no store for is carried from the previous file: the runs counted by
 * outcome and each VM's last failure.
 *
 * @example
 *   await writeMetricsTextfile('/var/lib/node_exporter/vmbackup.prom', summary, { backupDir, maxAgeHours: 26 });
 */
export async function writeMetricsTextfile(file: string, summary: RunSummary, opts: { backupDir: string; maxAgeHours: number }): Promise<void> {
  const previous = await readFile(file, 'utf8').catch(() => '');
  const carried = readCarried(previous);
  carried.runsTotal[summary.status] = (carried.runsTotal[summary.status] ?? 0) + 1;
  const status = await new StatusReader({ backupDir: opts.backupDir }).read({ runs: [runRecordFromSummary(summary)] });
  const text = await statusMetrics(status, { maxAgeHours: opts.maxAgeHours, runsTotal: carried.runsTotal, lastFailures: carried.lastFailures }).metrics();
  await writeFileAtomic(file, text);
}

/** Writes the textfile when `metrics_textfile` is set; a failure is a warning (the run's exit code does not change). */
export async function updateMetricsTextfile(file: string | undefined, summary: RunSummary, opts: { backupDir: string; maxAgeHours: number }, log: Logger): Promise<void> {
  if (file === undefined) return;
  await writeMetricsTextfile(file, summary, opts).catch((error: Error) => log.warn(`metrics_textfile ${file} not updated: ${error.message}`));
}

/** What the previous textfile says that a cron install keeps nowhere else. */
export function readCarried(text: string): { runsTotal: Partial<Record<RunOutcome['outcome'], number>>; lastFailures: Map<string, number> } {
  const runsTotal: Partial<Record<RunOutcome['outcome'], number>> = {};
  const lastFailures = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(vmbackup_runs_total|vmbackup_last_failure_timestamp_seconds)\{(outcome|vm)="((?:[^"\\]|\\.)*)"\} (\S+)$/.exec(line);
    if (m === null) continue;
    const value = Number(m[4]);
    if (!Number.isFinite(value) || value <= 0) continue;
    const label = m[3]!.replace(/\\(.)/g, (_s, c: string) => (c === 'n' ? '\n' : c));
    if (m[1] === 'vmbackup_runs_total' && (RUN_OUTCOMES as readonly string[]).includes(label)) runsTotal[label as RunOutcome['outcome']] = value;
    if (m[1] === 'vmbackup_last_failure_timestamp_seconds') lastFailures.set(label, value);
  }
  return { runsTotal, lastFailures };
}
