import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { RunOutcome } from '../run/outcome.js';
import type { RunRecord, StatusSnapshot, VmStatus } from './vm-status.js';

/**
 * The Prometheus series of vmbackup (prom-client, text format 0.0.4). Per VM, labelled `vm`
 * with its name as in the pool (a second VM of the same name gets `name (uuid)`):
 *
 *   vmbackup_last_success_timestamp_seconds   its newest restorable backup was taken (0: none)
 *   vmbackup_last_failure_timestamp_seconds   its newest failed backup ended (0: none known)
 *   vmbackup_last_backup_bytes                size of its newest restorable backup
 *   vmbackup_last_backup_duration_seconds     how long it took (when known)
 *   vmbackup_backup_points                    restorable points kept (sets and chunk-store points)
 *   vmbackup_last_verify_timestamp_seconds    its newest verification (when one ran)
 *   vmbackup_last_verify_success              1 when that verification passed, 0 when it failed
 *   vmbackup_damaged_backups                  manifests that cannot be read or are half-written
 *
 * and for the whole install: `vmbackup_up{component="backup_dir"|"run_store"}` (1 when it can be
 * read), `vmbackup_max_age_seconds` (max_age_hours: what the alert rules compare with),
 * `vmbackup_last_run_timestamp_seconds` and `vmbackup_last_run_exit_code` (the newest
 * finished run), `vmbackup_runs_total{outcome}` where runs are counted (workers, cron's textfile).
 *
 * @example
 *   const text = await statusMetrics(await reader.read(), { maxAgeHours: 26 }).metrics();
 *   // vmbackup_last_success_timestamp_seconds{vm="web1"} 1796371200
 */
export const METRICS_CONTENT_TYPE = Registry.PROMETHEUS_CONTENT_TYPE;

/** The outcomes `vmbackup_runs_total` counts. */
export const RUN_OUTCOMES = ['success', 'warning', 'error', 'fatal'] as const satisfies readonly RunOutcome['outcome'][];

export interface StatusMetricsOptions {
  maxAgeHours: number;
  /** Runs counted so far by outcome (cron's textfile carries them from one run to the next). */
  runsTotal?: Partial<Record<RunOutcome['outcome'], number>>;
  /** Last failure per VM label known from before (cron: the previous textfile), used when the runs read say nothing newer. */
  lastFailures?: ReadonlyMap<string, number>;
}

const seconds = (iso: string | undefined): number | undefined => {
  const ms = iso === undefined ? NaN : Date.parse(iso);
  return Number.isFinite(ms) ? ms / 1000 : undefined;
};

/** The `vm` label of each VM: its name, or `name (uuid)` for a second VM of the same name. */
export function vmLabels(vms: readonly VmStatus[]): string[] {
  const seen = new Set<string>();
  return vms.map((v) => {
    const label = seen.has(v.vm) ? `${v.vm} (${v.uuid ?? v.folder ?? '?'})` : v.vm;
    seen.add(v.vm);
    return label;
  });
}

/** A registry holding the status's series, for one scrape or one textfile. */
export function statusMetrics(status: StatusSnapshot, opts: StatusMetricsOptions): Registry {
  const registry = new Registry();
  const gauge = (name: string, help: string, labelNames: string[] = ['vm']) => new Gauge({ name, help, labelNames, registers: [registry] });
  const lastSuccess = gauge('vmbackup_last_success_timestamp_seconds', 'When the newest restorable backup of the VM was taken (Unix time; 0 when it has none).');
  const lastFailure = gauge('vmbackup_last_failure_timestamp_seconds', 'When the newest failed backup of the VM ended (Unix time; 0 when none is known).');
  const bytes = gauge('vmbackup_last_backup_bytes', 'Size of the newest restorable backup of the VM, in bytes.');
  const duration = gauge('vmbackup_last_backup_duration_seconds', 'How long the newest restorable backup of the VM took.');
  const points = gauge('vmbackup_backup_points', 'Restorable backups of the VM kept in backup_dir (complete sets and chunk-store points).');
  const verifyAt = gauge('vmbackup_last_verify_timestamp_seconds', 'When a backup of the VM was last verified (Unix time).');
  const verifyOk = gauge('vmbackup_last_verify_success', '1 when the last verification of a backup of the VM passed, 0 when it failed.');
  const damaged = gauge('vmbackup_damaged_backups', 'Backups of the VM whose manifest cannot be read or is half-written (vmbackup list names them).');
  const labels = vmLabels(status.vms);
  for (const [i, vm] of status.vms.entries()) {
    const l = { vm: labels[i]! };
    lastSuccess.set(l, seconds(vm.lastSuccess?.at) ?? 0);
    lastFailure.set(l, seconds(vm.lastFailure?.at) ?? opts.lastFailures?.get(l.vm) ?? 0);
    points.set(l, vm.points);
    damaged.set(l, vm.problems.length);
    if (vm.lastSuccess !== undefined) {
      bytes.set(l, vm.lastSuccess.bytes);
      if (vm.lastSuccess.durationMs !== undefined) duration.set(l, vm.lastSuccess.durationMs / 1000);
    }
    if (vm.lastVerify !== undefined) {
      verifyAt.set(l, seconds(vm.lastVerify.at) ?? 0);
      verifyOk.set(l, vm.lastVerify.ok ? 1 : 0);
    }
  }
  const up = gauge('vmbackup_up', 'Whether vmbackup can read a source of these metrics: backup_dir, the run store (NATS).', ['component']);
  up.set({ component: 'backup_dir' }, status.backupDirError === undefined ? 1 : 0);
  if (status.runStore !== undefined) up.set({ component: 'run_store' }, status.runStore.up ? 1 : 0);
  gauge('vmbackup_max_age_seconds', 'max_age_hours: a VM whose newest restorable backup is older is overdue (infra/prometheus/alerts.yml).', []).set(opts.maxAgeHours * 3600);
  const last = newestFinished(status.runs);
  if (last !== undefined) {
    gauge('vmbackup_last_run_timestamp_seconds', 'When the newest finished run ended (Unix time).', []).set(seconds(last.finishedAt) ?? 0);
    gauge('vmbackup_last_run_exit_code', 'Exit code of the newest finished run: 0 success or warnings, 1 a backup failed, 2 the run could not start.', []).set(last.exitCode ?? 0);
  }
  if (opts.runsTotal !== undefined) {
    const runs = new Counter({ name: 'vmbackup_runs_total', help: 'Finished runs, by outcome.', labelNames: ['outcome'], registers: [registry] });
    for (const outcome of RUN_OUTCOMES) runs.inc({ outcome }, opts.runsTotal[outcome] ?? 0);
  }
  return registry;
}

function newestFinished(runs: readonly RunRecord[]): RunRecord | undefined {
  return runs.filter((r) => r.status === 'finished' && r.finishedAt !== undefined).sort((a, b) => b.finishedAt!.localeCompare(a.finishedAt!))[0];
}

/**
 * What a worker counts of the jobs it runs, per function: `vmbackup_jobs_total{function,
 * outcome}` (done, failed, retry) and `vmbackup_job_duration_seconds{function}` (a histogram),
 * and, in the worker running the coordinator, `vmbackup_runs_total{outcome}`. Served by
 * `vmbackup worker --metrics-listen`.
 */
export class WorkerMetrics {
  readonly registry = new Registry();
  private readonly jobs = new Counter({ name: 'vmbackup_jobs_total', help: 'Jobs a function of this worker handled, by how each delivery ended: done, failed (for good), retry (handed back to be tried again).', labelNames: ['function', 'outcome'], registers: [this.registry] });
  private readonly durations = new Histogram({
    name: 'vmbackup_job_duration_seconds',
    help: 'How long each delivery of a function took in this worker.',
    labelNames: ['function'],
    // From a prune (ms) to a large export (hours).
    buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800],
    registers: [this.registry],
  });
  private readonly runs = new Counter({ name: 'vmbackup_runs_total', help: 'Runs this worker\'s coordinator saw finish, by outcome.', labelNames: ['outcome'], registers: [this.registry] });

  constructor() {
    for (const outcome of RUN_OUTCOMES) this.runs.inc({ outcome }, 0);
  }

  /** One delivery of `fn` ended so, after `ms`. */
  job(fn: string, outcome: 'done' | 'failed' | 'retry', ms: number): void {
    this.jobs.inc({ function: fn, outcome });
    this.durations.observe({ function: fn }, ms / 1000);
  }

  /** The coordinator finished a run. */
  run(outcome: RunOutcome['outcome']): void {
    this.runs.inc({ outcome });
  }
}
