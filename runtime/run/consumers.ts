import { pipelines } from '../../functions/index.js';
import type { RunOptions } from '../../functions/plan/plan.js';
import type { Bus } from '../bus/bus.js';
import { jobSubject } from '../events.js';
import { COORDINATOR } from './coordinator.js';

/**
 * The functions a run needs workers for: its plan, the VM phases when it selects VMs (or
 * when its selection is not given: any run may), the pool database and host backups when
 * asked (or not said).
 *
 * @example runFunctions({ vmExports: [], vdiExports: [], poolBackup: true, hostBackup: false }) // → ['plan', 'pool-db']
 */
export function runFunctions(options: Partial<Pick<RunOptions, 'vmExports' | 'vdiExports' | 'deltaExports' | 'poolBackup' | 'hostBackup'>> = {}): string[] {
  const vms = options.vmExports === undefined || options.vdiExports === undefined || options.vmExports.length > 0 || options.vdiExports.length > 0;
  // A delta-export's phases but its own are the vm pipeline's: needed when either list is.
  const deltas = (options.deltaExports?.length ?? 0) > 0;
  const vmPhases = vms ? pipelines.vm : deltas ? pipelines.delta : [];
  const deltaOnly = deltas ? pipelines.delta.filter((f) => !(vmPhases as readonly string[]).includes(f)) : [];
  return ['plan', ...vmPhases, ...deltaOnly, ...(options.poolBackup !== false ? pipelines['pool-db'] : []), ...(options.hostBackup !== false ? pipelines['host-backup'] : [])];
}

/** Work nobody consumes: a function's jobs, or the coordinator's events. */
export interface Unconsumed {
  /** A function's name (`plan`), or `coordinator`. */
  name: string;
  kind: 'jobs' | 'coordinator';
  /** Jobs (or events) waiting for it now. */
  queued: number;
}

/**
 * What of a run's work no worker consumes now: the jobs of `fns` and the coordinator.
 * Undefined when the bus cannot tell (in-process).
 *
 * @example await unconsumedWork(bus, ['plan', 'export']) // → [{ name: 'plan', kind: 'jobs', queued: 1 }]
 */
export async function unconsumedWork(bus: Bus, fns: readonly string[]): Promise<Unconsumed[] | undefined> {
  if (bus.consumption === undefined) return undefined;
  const found = await bus.consumption(
    fns.map((f) => jobSubject(f)),
    [COORDINATOR],
  );
  return found
    .filter((c) => !c.consumed)
    .map((c) => (c.name === COORDINATOR ? { name: COORDINATOR, kind: 'coordinator' as const, queued: c.queued } : { name: c.name.slice(jobSubject('').length), kind: 'jobs' as const, queued: c.queued }));
}

/**
 * Says what nobody consumes, for people: which jobs wait, and what to start.
 *
 * @example describeUnconsumed([{ name: 'plan', kind: 'jobs', queued: 1 }])
 *   // → 'no worker is consuming plan jobs (vmbackup.jobs.plan: 1 queued); start `vmbackup worker` (serving plan)'
 */
export function describeUnconsumed(missing: readonly Unconsumed[]): string {
  const jobs = missing.filter((m) => m.kind === 'jobs');
  const parts: string[] = [];
  if (jobs.length > 0) {
    const queued = jobs.map((j) => `${jobSubject(j.name)}: ${j.queued} queued`).join(', ');
    parts.push(`no worker is consuming ${jobs.map((j) => j.name).join(', ')} jobs (${queued})`);
  }
  if (missing.some((m) => m.kind === 'coordinator')) parts.push('no worker runs the coordinator (every worker has --no-coordinator, or none is connected)');
  const serving = jobs.length > 0 ? ` (serving ${jobs.map((j) => j.name).join(',')}${missing.some((m) => m.kind === 'coordinator') ? ', with the coordinator' : ''})` : ' (without --no-coordinator)';
  return `${parts.join('; ')}; start \`vmbackup worker\`${serving}`;
}
