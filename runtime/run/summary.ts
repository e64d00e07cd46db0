import path from 'node:path';
import { z } from 'zod';
import { ErrorInfoSchema } from '../errors.js';
import { HOOK_ABORTED } from '../hooks/kind.js';
import { Category, RunWarning } from './state.js';
import type { JobState, RunHeader } from './state.js';

/**
 * The outcome of a run, built only from its jobs' outcomes (the events the coordinator
 * reduced). Printed as VmBackup's summary, or as JSON with `--json`, and published as the
 * `run.finished` event.
 *
 * Counts per category, VmBackup's way: S = jobs that succeeded, W = warnings, E = jobs that
 * failed. A VM skipped by its pre-vm hook counts as one warning (status `skipped`); when every
 * VM of the run was skipped, the run is an error (exit 1): nothing of them was backed up. Exit code:
 * 0 when nothing failed (warnings and skips allowed), 1 when a backup failed or the run-start
 * hook skipped the whole run (`skipped`: nothing was backed up), 2 when the run could not
 * start (`fatal`).
 */
export const JobSummary = z.object({
  jobId: z.string(),
  category: Category,
  name: z.string(),
  vmUuid: z.string().optional(),
  status: z.enum(['success', 'warning', 'error', 'skipped', 'pending']),
  tries: z.number().int(),
  folder: z.string().optional(),
  files: z.array(z.object({ path: z.string(), size: z.number(), format: z.string() })),
  bytes: z.number(),
  durationMs: z.number().optional(),
  warnings: z.array(z.string()),
  error: ErrorInfoSchema.optional(),
  /** verify_after_backup: the check of the set just written (absent when off). */
  verified: z.object({ ok: z.boolean(), bytes: z.number(), ms: z.number(), asWritten: z.boolean().optional(), error: z.string().optional() }).optional(),
  /** Status `skipped`: a pre-vm hook aborted, no snapshot was taken. */
  skipped: z.object({ reason: z.string() }).optional(),
});
export type JobSummary = z.infer<typeof JobSummary>;

export const Counts = z.object({ S: z.number(), W: z.number(), E: z.number() });

export const RunSummary = z.object({
  runId: z.string(),
  status: z.enum(['success', 'warning', 'error', 'fatal']),
  exitCode: z.union([z.literal(0), z.literal(1), z.literal(2)]),
  startedAt: z.string(),
  finishedAt: z.string().optional(),
  pool: z.object({ uuid: z.string(), name: z.string() }).optional(),
  backupDir: z.string().optional(),
  categories: z.partialRecord(Category, Counts),
  jobs: z.array(JobSummary),
  excludes: z.array(z.string()),
  warnings: z.array(RunWarning),
  cleaned: z.array(z.string()),
  fatal: ErrorInfoSchema.optional(),
  /**
   * The run was stopped (SIGTERM, SIGINT, a stop request): when, and how many jobs were then
   * ended without being started. Not a warning: the stopped jobs are errors of their own.
   */
  stopped: z.object({ reason: z.string(), at: z.string(), notStarted: z.number().int().min(0) }).optional(),
  /** The run-start hook aborted the run: nothing was selected nor backed up (exit code 1). */
  skipped: z.object({ reason: z.string() }).optional(),
});
export type RunSummary = z.infer<typeof RunSummary>;

const LIST_CATEGORY: Record<string, z.infer<typeof Category>> = { vdi_exports: 'vdi-export', delta_exports: 'delta-export', vm_exports: 'vm-export', excludes: 'vm-export' };

export function summarize(header: RunHeader, jobs: readonly JobState[]): RunSummary {
  const categories: Record<string, { S: number; W: number; E: number }> = {};
  const count = (c: string) => (categories[c] ??= { S: 0, W: 0, E: 0 });
  count('vm-export');
  count('vdi-export');
  const summaries: JobSummary[] = jobs.map((job) => {
    const c = count(job.category);
    const failed = job.status === 'failed';
    const skipped = job.status === 'skipped';
    if (job.status === 'success') c.S += 1;
    if (failed) c.E += 1;
    c.W += job.warnings.length + (skipped ? 1 : 0);
    const dir = job.folder !== undefined && header.backupDir !== undefined ? path.join(header.backupDir, job.folder) : header.backupDir;
    return {
      jobId: job.jobId,
      category: job.category,
      name: job.label,
      ...(job.vmUuid !== undefined ? { vmUuid: job.vmUuid } : {}),
      status: failed ? 'error' : job.status === 'success' ? (job.warnings.length > 0 ? 'warning' : 'success') : job.status === 'skipped' ? 'skipped' : 'pending',
      tries: job.try,
      ...(job.folder !== undefined ? { folder: job.folder } : {}),
      files: job.files.map((f) => ({ path: dir !== undefined ? path.join(dir, f.name) : f.name, size: f.size, format: f.format })),
      bytes: job.bytes,
      ...(job.startedAt !== undefined && job.finishedAt !== undefined ? { durationMs: Date.parse(job.finishedAt) - Date.parse(job.startedAt) } : {}),
      warnings: job.warnings,
      ...(job.verified !== undefined ? { verified: job.verified } : {}),
      ...(job.error !== undefined && !skipped ? { error: job.error } : {}),
      ...(skipped ? { skipped: { reason: job.error?.message ?? 'skipped' } } : {}),
    };
  });
  for (const w of header.warnings) count(LIST_CATEGORY[w.list ?? ''] ?? 'vm-export').W += 1;
  // Every VM skipped by its pre-vm hooks: nothing of the VMs was backed up, which cron and
  // monitoring must notice (exit 1), as for a run its run-start hooks skipped.
  const anyError = everyVmSkipped(summaries) || summaries.some((j) => j.status === 'error' || j.status === 'pending');
  // A stopped run whose jobs all ended well is still not a plain success.
  const anyWarning = Object.values(categories).some((c) => c.W > 0) || header.stopping !== undefined;
  const runSkipped = header.fatal?.code === HOOK_ABORTED;
  const status = runSkipped ? 'error' : header.fatal !== undefined ? 'fatal' : anyError ? 'error' : anyWarning ? 'warning' : 'success';
  return {
    runId: header.runId,
    status,
    exitCode: status === 'fatal' ? 2 : status === 'error' ? 1 : 0,
    startedAt: header.startedAt,
    ...(header.finishedAt !== undefined ? { finishedAt: header.finishedAt } : {}),
    ...(header.pool !== undefined ? { pool: header.pool } : {}),
    ...(header.backupDir !== undefined ? { backupDir: header.backupDir } : {}),
    categories,
    jobs: summaries,
    excludes: header.excludes,
    warnings: header.warnings,
    cleaned: header.cleaned,
    ...(header.stopping !== undefined ? { stopped: { reason: header.stopping.reason, at: header.stopping.at, notStarted: header.stopping.notStarted ?? 0 } } : {}),
    ...(header.fatal !== undefined && !runSkipped ? { fatal: header.fatal } : {}),
    ...(runSkipped ? { skipped: { reason: header.fatal!.message } } : {}),
  };
}

/** Whether the run had VMs to back up and its pre-vm hooks skipped every one. */
function everyVmSkipped(jobs: readonly Pick<JobSummary, 'category' | 'status'>[]): boolean {
  const vms = jobs.filter((j) => j.category === 'vm-export' || j.category === 'vdi-export' || j.category === 'delta-export');
  return vms.length > 0 && vms.every((j) => j.status === 'skipped');
}

/** VmBackup's verdict line for a category. */
export function verdict(c: { S: number; W: number; E: number }): string {
  if (c.E > 0) return c.S > 0 ? '>> Success with Errors <<' : '>> Error <<';
  if (c.W > 0) return '>> Success with Warnings <<';
  return '>> Success <<';
}

const TITLES: Record<string, string> = {
  'vm-export': 'vm-export',
  'vdi-export': 'vdi-export',
  'delta-export': 'delta-export',
  'pool-db': 'pool-db backup',
  'host-backup': 'host backup',
};

/**
 * A job's lines as the summary and `vmbackup status` print them: `ERROR:` (failed) or
 * `SKIPPED:` (its pre-vm hooks skipped it), then a `WARNING:` per warning.
 */
export function jobOutcomeLines(job: { category: string; name: string; error?: string; skipped?: string; warnings: readonly string[] }): string[] {
  const who = `${job.category} ${job.name}`;
  return [
    ...(job.error !== undefined ? [`ERROR: ${who}: ${job.error}`] : []),
    ...(job.skipped !== undefined ? [`SKIPPED: ${who}: ${job.skipped}`] : []),
    ...job.warnings.map((w) => `WARNING: ${who}: ${w}`),
  ];
}

/** The summary as text for cron mail, in VmBackup's shape. */
export function formatSummary(summary: RunSummary): string {
  const lines: string[] = [];
  lines.push('');
  lines.push(`*** vmbackup run ${summary.runId}${summary.pool !== undefined ? ` of pool ${summary.pool.name}` : ''} ***`);
  if (summary.skipped !== undefined) {
    lines.push(`SKIPPED: ${summary.skipped.reason}`);
    lines.push('>> Error: nothing backed up <<');
    return lines.join('\n') + '\n';
  }
  if (summary.fatal !== undefined) {
    lines.push(`ERROR: the run could not start: ${summary.fatal.message}`);
    lines.push('>> Error <<');
    return lines.join('\n') + '\n';
  }
  if (summary.stopped !== undefined) lines.push(stoppedLine(summary.stopped));
  for (const w of summary.warnings) lines.push(`WARNING: ${w.list !== undefined ? `${w.list}: ` : ''}${w.message}`);
  for (const line of summary.cleaned) lines.push(`cleaned: ${line}`);
  for (const job of summary.jobs) {
    lines.push(
      ...jobOutcomeLines({
        category: job.category,
        name: job.name,
        ...(job.status === 'error' ? { error: job.error?.message ?? 'failed' } : {}),
        ...(job.status === 'skipped' ? { skipped: job.skipped?.reason ?? 'skipped' } : {}),
        warnings: job.warnings,
      }),
    );
  }
  const verified = summary.jobs.filter((j) => j.verified !== undefined);
  if (verified.length > 0) {
    const ok = verified.filter((j) => j.verified!.ok);
    const bytes = ok.reduce((n, j) => n + j.verified!.bytes, 0);
    // A set the export checked as it wrote it was not read back: say so rather than "0 GiB read back".
    const asWritten = ok.filter((j) => j.verified!.asWritten === true).length;
    const how = asWritten === ok.length && ok.length > 0 ? 'checked as written' : `${asWritten > 0 ? `${asWritten} checked as written, ` : ''}${(bytes / 2 ** 30).toFixed(2)} GiB read back`;
    lines.push(`verified after backup: ${ok.length} of ${verified.length} sets OK (${how})`);
  }
  for (const [category, counts] of Object.entries(summary.categories)) {
    lines.push(`VmBackup ${TITLES[category] ?? category} Summary - S:${counts.S} W:${counts.W} E:${counts.E}`);
    lines.push(verdict(counts));
  }
  if (everyVmSkipped(summary.jobs)) lines.push('>> Error: every VM was skipped, none backed up <<');
  if (summary.backupDir !== undefined) lines.push(`backups in ${summary.backupDir}`);
  return lines.join('\n') + '\n';
}

/** `STOPPED: the run was stopped by SIGTERM at <when>: 2 jobs not started, the jobs under way were stopped`. */
export function stoppedLine(stopped: { reason: string; at: string; notStarted: number }): string {
  const jobs = `${stopped.notStarted} job${stopped.notStarted === 1 ? '' : 's'}`;
  return `STOPPED: the run was stopped by ${stopped.reason} at ${stopped.at}: ${jobs} not started, the jobs under way were stopped`;
}
