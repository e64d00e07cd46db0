import { z } from 'zod';
import { WrittenFile } from '../../functions/job.js';
import { ErrorInfoSchema } from '../errors.js';

/**
 * The state of a run, as the coordinator keeps it (in memory for the embedded run, in a KV
 * bucket on NATS: the header under `<runId>`, each job under `<runId>.<jobId>`, so a
 * 5,000-VM run never rewrites one huge value).
 */
export const Category = z.enum(['vm-export', 'vdi-export', 'delta-export', 'pool-db', 'host-backup']);
export type Category = z.infer<typeof Category>;

export const JobStatus = z.enum(['pending', 'running', 'success', 'failed', 'skipped']);
export type JobStatus = z.infer<typeof JobStatus>;

export const RunWarning = z.object({ entry: z.string().optional(), list: z.string().optional(), message: z.string() });

export const RunHeader = z.object({
  runId: z.string(),
  status: z.enum(['planning', 'running', 'finished']),
  startedAt: z.string(),
  finishedAt: z.string().optional(),
  backupDir: z.string().optional(),
  pool: z.object({ uuid: z.string(), name: z.string() }).optional(),
  concurrency: z.number().int().min(1),
  vmRetries: z.number().int().min(0),
  /** Every job, in plan order. */
  jobIds: z.array(z.string()),
  /** VM jobs not started yet (started `concurrency` at a time). */
  pending: z.array(z.string()),
  /** VM jobs started and not finished. */
  active: z.number().int().min(0),
  /** Jobs not yet in a final state. */
  remaining: z.number().int().min(0),
  warnings: z.array(RunWarning),
  excludes: z.array(z.string()),
  cleaned: z.array(z.string()),
  /** Why the run could not start (plan failed). */
  fatal: ErrorInfoSchema.optional(),
  /** Which trigger asked for the run (cli, gateway, webhook …), for status displays. */
  trigger: z.string().optional(),
  /** SHA-256 of the run's options: a repeated submission with other options is refused. */
  requestHash: z.string().optional(),
  /**
   * The run was asked to stop (RunStop: SIGTERM or SIGINT): no VM, attempt or phase starts
   * any more but those that clean up; the jobs not started end as failed (STOPPED).
   */
  stopping: z.object({ reason: z.string(), at: z.string(), /** Jobs ended as not started when the stop came. */ notStarted: z.number().int().min(0).optional() }).optional(),
  /** How many times the failed jobs of the finished run were run again (runtime/run/retry.ts). */
  retries: z.number().int().min(0).optional(),
});
export type RunHeader = z.infer<typeof RunHeader>;

export const JobState = z.object({
  jobId: z.string(),
  kind: z.enum(['vm', 'pool-db', 'host-backup']),
  category: Category,
  /** VM or host name, for people. */
  label: z.string(),
  vmUuid: z.string().optional(),
  folder: z.string().optional(),
  pipeline: z.array(z.string()),
  /** The phase running or last run. */
  phase: z.string(),
  status: JobStatus,
  try: z.number().int().min(1),
  /** The input of the pipeline's first phase: a restart begins from it. */
  input: z.unknown(),
  files: z.array(WrittenFile),
  bytes: z.number().int().min(0),
  warnings: z.array(z.string()),
  error: ErrorInfoSchema.optional(),
  /** The failed phase's input, so `retry` can re-run just that phase. */
  failedInput: z.unknown().optional(),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  phaseMs: z.record(z.string(), z.number()),
  /** verify_after_backup: the check of the set just written (absent when off). */
  verified: z.object({ ok: z.boolean(), bytes: z.number(), ms: z.number(), asWritten: z.boolean().optional(), error: z.string().optional() }).optional(),
});
export type JobState = z.infer<typeof JobState>;
