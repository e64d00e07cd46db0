import { createHash, randomBytes } from 'node:crypto';
import type { RunOptions } from '../../functions/plan/plan.js';
import type { PlanInput } from '../../functions/plan/plan.js';
import type { Bus } from '../bus/bus.js';
import { RequestConflictError } from '../errors.js';
import { jobSubject } from '../events.js';
import { formatStamp } from '../storage/naming.js';
import { enqueueId, newRunHeader } from './reduce.js';
import type { RunStore } from './store.js';

/** A new run id: the run's UTC stamp and 4 random hex digits, e.g. `20261126-083000-7f3a`. */
export function newRunId(at: Date): string {
  return `${formatStamp(at)}-${randomBytes(2).toString('hex')}`;
}

/**
 * Submits a run: records its header (status `planning`, with a hash of its options) and
 * queues its plan job. A repeat with other options throws RequestConflictError. Returns
 * false when a run with this id exists already (a repeated trigger). Then nothing new is
 * started — but if that run is still `planning`, its plan is queued again (the plan's id
 * dedups a copy that is already queued): the first submission may have recorded the run and
 * then lost the bus before its plan was queued, and a repeat is how it gets going.
 */
export async function startRun(
  store: RunStore,
  bus: Bus,
  run: { runId: string; options: RunOptions; startedAt: Date; trigger?: string },
): Promise<boolean> {
  const requestHash = createHash('sha256').update(JSON.stringify(run.options)).digest('hex');
  const header = {
    ...newRunHeader(run.runId, run.startedAt, {
      concurrency: run.options.concurrency,
      vmRetries: run.options.vmRetries,
      ...(run.trigger !== undefined ? { trigger: run.trigger } : {}),
    }),
    requestHash,
  };
  const planJob = (startedAt: string): PlanInput => ({ runId: run.runId, jobId: 'plan', try: 1, options: run.options, startedAt });
  const id = enqueueId(run.runId, 'plan', 1, 'plan');
  if (!(await store.create(header))) {
    const existing = await store.header(run.runId);
    if (existing?.header.requestHash !== undefined && existing.header.requestHash !== requestHash) {
      throw new RequestConflictError(`run ${run.runId} was asked for with other options: a repeated request (the same Idempotency-Key or trigger id) must repeat them, or use a new key`, {
        runId: run.runId,
      });
    }
    if (existing?.header.status === 'planning') await bus.enqueue(jobSubject('plan'), planJob(existing.header.startedAt), { id });
    return false;
  }
  await bus.enqueue(jobSubject('plan'), planJob(run.startedAt.toISOString()), { id });
  return true;
}
