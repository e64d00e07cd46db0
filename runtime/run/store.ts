import type { JobState, RunHeader } from './state.js';

/**
 * Where run state lives. The memory store serves the embedded run; the NATS binding keeps the
 * same shape in a KV bucket. `commit` is compare-and-set on the header's revision, so two
 * coordinators can never both advance a run from the same state.
 */
export interface RunStore {
  create(header: RunHeader): Promise<boolean>;
  header(runId: string): Promise<{ header: RunHeader; revision: number } | undefined>;
  jobs(runId: string, jobIds: readonly string[]): Promise<Map<string, JobState>>;
  allJobs(runId: string): Promise<JobState[]>;
  /**
   * Writes the jobs, then the header if its revision is still `revision`; false on conflict.
   * `alongside` (the jobs and events the new state queues) runs while the jobs are written
   * and has ended before the header is: the header write is the commit point, so what it
   * queued is out once it is committed. Its failure fails the commit, and the header is not
   * written.
   */
  commit(runId: string, header: RunHeader, revision: number, jobs: readonly JobState[], alongside?: Promise<void>): Promise<boolean>;
  /**
   * Writes one job whose change leaves the header as it is (a phase moved to the next), if
   * the job is still the one `from` is (an object this store's `jobs` returned); false
   * when it changed since. The header is not written: its revision stays. `alongside` is as
   * in `commit`, and the job is written only once it is out. Most of a run's events are
   * such a step, and on a cluster each skipped write (the header's compare-and-set, and
   * the read that checks its revision) is a replicated round trip less per event.
   */
  advance(runId: string, job: JobState, from: JobState, alongside?: Promise<void>): Promise<boolean>;
  /** Headers of known runs, newest first. */
  list(limit?: number): Promise<RunHeader[]>;
}

export class MemoryRunStore implements RunStore {
  private readonly headers = new Map<string, { header: RunHeader; revision: number }>();
  private readonly jobStates = new Map<string, Map<string, JobState>>();

  async create(header: RunHeader): Promise<boolean> {
    if (this.headers.has(header.runId)) return false;
    this.headers.set(header.runId, { header: structuredClone(header), revision: 1 });
    this.jobStates.set(header.runId, new Map());
    return true;
  }

  async header(runId: string) {
    const h = this.headers.get(runId);
    return h === undefined ? undefined : { header: structuredClone(h.header), revision: h.revision };
  }

  async jobs(runId: string, jobIds: readonly string[]): Promise<Map<string, JobState>> {
    const all = this.jobStates.get(runId) ?? new Map<string, JobState>();
    const out = new Map<string, JobState>();
    for (const id of jobIds) {
      const job = all.get(id);
      if (job !== undefined) out.set(id, structuredClone(job));
    }
    return out;
  }

  async allJobs(runId: string): Promise<JobState[]> {
    const header = this.headers.get(runId)?.header;
    const all = this.jobStates.get(runId);
    if (header === undefined || all === undefined) return [];
    return header.jobIds.map((id) => all.get(id)).filter((j): j is JobState => j !== undefined).map((j) => structuredClone(j));
  }

  async commit(runId: string, header: RunHeader, revision: number, jobs: readonly JobState[], alongside?: Promise<void>): Promise<boolean> {
    await alongside;
    const current = this.headers.get(runId);
    if (current === undefined || current.revision !== revision) return false;
    const all = this.jobStates.get(runId)!;
    for (const job of jobs) all.set(job.jobId, structuredClone(job));
    this.headers.set(runId, { header: structuredClone(header), revision: revision + 1 });
    return true;
  }

  async advance(runId: string, job: JobState, from: JobState, alongside?: Promise<void>): Promise<boolean> {
    await alongside;
    const all = this.jobStates.get(runId);
    const current = all?.get(job.jobId);
    if (all === undefined || current === undefined || JSON.stringify(current) !== JSON.stringify(from)) return false;
    all.set(job.jobId, structuredClone(job));
    return true;
  }

  async list(limit = 50): Promise<RunHeader[]> {
    return [...this.headers.values()]
      .map((h) => h.header)
      .sort((a, b) => b.startedAt.localeCompare(a.startedAt))
      .slice(0, limit)
      .map((h) => structuredClone(h));
  }
}
