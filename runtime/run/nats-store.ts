import { createHash } from 'node:crypto';
import type { JetStreamClient, KV } from 'nats';
import { z } from 'zod';
import { RUNS_BUCKET } from '../../infra/nats/jetstream.js';
import { untilAnswered } from '../bus/nats.js';
import { JobState, RunHeader } from './state.js';
import type { RunStore } from './store.js';

/** JetStream's error code for a KV write whose expected revision is not the current one. */
const WRONG_LAST_SEQUENCE = 10071;
/** How long a read or write waits for the bucket while its cluster elects a leader. */
const RETRY = { withinMs: 30_000 };
/** Gets in flight at once when reading many keys. */
const PARALLEL = 64;
/** Job id lists kept in memory (they never change once written): a few runs' worth. */
const ID_LISTS_CACHED = 16;

/**
 * A header as stored: a `RunHeader` whose job ids (`jobIds`) live under their own key,
 * `<runId>.=ids-<hash>`, written once when the plan made them (the `=` followed by a
 * non-hex letter is nothing kvToken ever makes, so no job id can take the key); `pending`
 * is stored as `[start, end)` ranges of indexes into that list. The header the coordinator
 * rewrites on every event then stays about a kilobyte whatever the number of VMs (it was
 * ~80 bytes a VM: 80 KB written and read back per event of a 1,000-VM run). Headers written
 * before, with `jobIds` and `pending` inline, are read as they are.
 */
const StoredHeader = RunHeader.omit({ jobIds: true, pending: true }).extend({
  ids: z.object({ key: z.string(), count: z.number().int().min(0) }),
  pendingRanges: z.array(z.tuple([z.number().int().min(0), z.number().int().min(0)])),
});
type StoredHeader = z.infer<typeof StoredHeader>;

/**
 * The run store on the `vmbackup-runs` KV bucket (infra/nats/jetstream.ts): each run's
 * header under `<runId>` (its job ids apart, see StoredHeader), each of its jobs under
 * `<runId>.<jobId>`, all as JSON, so a 5,000-VM run never rewrites one huge value. Ids are
 * mapped to one key token each (`kvToken`), so `vm.5c1e…` is stored as `vm/5c1e…`.
 *
 * - `create` is `kv.create` (compare-and-set against absent): a run id exists once, which is
 *   also how a trigger sent twice makes one run.
 * - `commit` checks the header's revision, writes the jobs (while the caller's `alongside`
 *   queues the next phases), then `kv.update`s the header with that revision (CAS): the
 *   header write is the commit point. Job writes are not
 *   undone when the header CAS loses a race; the coordinator's consumer (one event at a
 *   time) is what keeps two coordinators from racing in the first place, and a coordinator
 *   that dies between the jobs and the header is repaired from the jobs (reduce.ts, `repair`).
 * - `advance` writes one job with a compare-and-set on the revision it was read at.
 *
 * @example
 *   const store = await NatsRunStore.open(nc.jetstream());
 *   await store.create(header); // false when the run exists
 */
export class NatsRunStore implements RunStore {
  /** Id lists by key: immutable (the key names its content's hash), so safe to keep. */
  private readonly idLists = new Map<string, string[]>();
  /** The revision each job this store returned was read at (for `advance`'s compare-and-set). */
  private readonly readAt = new WeakMap<JobState, number>();

  private constructor(readonly kv: KV) {}

  /** Binds the bucket, which must exist (openNats applies it). */
  static async open(js: JetStreamClient): Promise<NatsRunStore> {
    // Reads go to the bucket's leader, never to a replica (direct get): a replica that is
    // catching up after a restart answers with an older state, and the coordinator would
    // apply an event to it — or drop the event as stale — and the run would wait for ever.
    return new NatsRunStore(await js.views.kv(RUNS_BUCKET, { bindOnly: true, allow_direct: false }));
  }

  async create(header: RunHeader): Promise<boolean> {
    try {
      // Sent again after a lost reply, a create that did land says "exists": the caller
      // then follows the run, which is this one.
      const value = await this.encode(RunHeader.parse(header));
      await untilAnswered(`creating run ${header.runId}`, () => this.kv.create(headerKey(header.runId), value), RETRY);
      return true;
    } catch (error) {
      if (isWrongLastSequence(error)) return false;
      throw error;
    }
  }

  async header(runId: string): Promise<{ header: RunHeader; revision: number } | undefined> {
    const entry = await this.get(headerKey(runId));
    if (entry === null || entry.operation !== 'PUT' || entry.length === 0) return undefined;
    const header = await this.decode(entry.json());
    // Its id list expired a moment before it (the bucket's max_age): the run is going too.
    return header === undefined ? undefined : { header, revision: entry.revision };
  }

  async jobs(runId: string, jobIds: readonly string[]): Promise<Map<string, JobState>> {
    const out = new Map<string, JobState>();
    const found = await this.getJobs(runId, [...new Set(jobIds)]);
    for (const job of found) out.set(job.jobId, job);
    return out;
  }

  async allJobs(runId: string): Promise<JobState[]> {
    const current = await this.header(runId);
    if (current === undefined) return [];
    return this.getJobs(runId, current.header.jobIds);
  }

  async commit(runId: string, header: RunHeader, revision: number, jobs: readonly JobState[], alongside?: Promise<void>): Promise<boolean> {
    // The jobs are written while `alongside` queues what the new state starts: on a cluster
    // each waits for a second node, so one after the other they cost a round trip more per
    // event. Both are done before the header, the commit point.
    const written = (async (): Promise<string | undefined> => {
      const value = await this.encode(RunHeader.parse(header));
      if (jobs.length === 0) return value;
      // Do not write jobs for a state that is already stale.
      const current = await this.get(headerKey(runId));
      if (current === null || current.revision !== revision) return undefined;
      await inChunks(jobs, (job) => untilAnswered(`writing job ${job.jobId} of run ${runId}`, () => this.kv.put(jobKey(runId, job.jobId), JSON.stringify(JobState.parse(job))), RETRY));
      return value;
    })();
    // Both settle before either's failure is thrown: nothing of this commit is still in flight
    // when the coordinator tries again.
    const [jobsWritten, queued] = await Promise.allSettled([written, alongside]);
    if (jobsWritten.status === 'rejected') throw jobsWritten.reason;
    if (queued.status === 'rejected') throw queued.reason;
    const value = jobsWritten.value;
    if (value === undefined) return false;
    try {
      // Sent again after a lost reply, an update that did land says "wrong revision": the
      // coordinator then reads the state again and finds its own commit.
      await untilAnswered(`committing run ${runId}`, () => this.kv.update(headerKey(runId), value, revision), RETRY);
      return true;
    } catch (error) {
      if (isWrongLastSequence(error)) return false;
      throw error;
    }
  }

  async advance(runId: string, job: JobState, from: JobState, alongside?: Promise<void>): Promise<boolean> {
    const revision = this.readAt.get(from);
    if (revision === undefined) throw new Error(`run ${runId}: job ${job.jobId} to advance was not read from this store`);
    // Written once what it queues is out, as a commit's header: a failure there writes nothing.
    await alongside;
    try {
      // Sent again after a lost reply, an update that did land says "wrong revision": the
      // coordinator then reads the job again and finds its own step.
      await untilAnswered(`writing job ${job.jobId} of run ${runId}`, () => this.kv.update(jobKey(runId, job.jobId), JSON.stringify(JobState.parse(job)), revision), RETRY);
      return true;
    } catch (error) {
      if (isWrongLastSequence(error)) return false;
      throw error;
    }
  }

  async list(limit = 50): Promise<RunHeader[]> {
    // Headers are the one-token keys; jobs have two. A key written while they are listed comes
    // again (the listing follows the bucket's updates): each once.
    const keys = new Set<string>();
    for await (const key of await this.kv.keys('*')) keys.add(key);
    const headers = await inChunks([...keys], async (key) => {
      const entry = await this.get(key);
      if (entry === null || entry.operation !== 'PUT' || entry.length === 0) return undefined;
      return this.decode(entry.json()).catch(() => undefined);
    });
    return headers
      .filter((h): h is RunHeader => h !== undefined)
      .sort((a, b) => b.startedAt.localeCompare(a.startedAt))
      .slice(0, limit);
  }

  /** The header as stored: its job ids under their own key (written when new), pending as ranges. */
  private async encode(header: RunHeader): Promise<string> {
    const { jobIds, pending, ...rest } = header;
    const ranges = pendingRanges(jobIds, pending);
    if (ranges === undefined) return JSON.stringify(header); // pending names a job not in jobIds: kept as it is
    // A run not planned yet has no ids: nothing to write.
    const key = jobIds.length === 0 ? '' : `${kvToken(header.runId)}.=ids-${createHash('sha256').update(JSON.stringify(jobIds)).digest('hex').slice(0, 16)}`;
    // Written before the header that names it; rewriting the same list is harmless. Written
    // again when the run finishes, so that it expires with the header (max_age counts from
    // a key's last write), not a run's duration before it.
    if (key !== '' && (!this.idLists.has(key) || header.status === 'finished')) {
      await untilAnswered(`writing the job ids of run ${header.runId}`, () => this.kv.put(key, JSON.stringify(jobIds)), RETRY);
      this.remember(key, jobIds);
    }
    const stored: StoredHeader = { ...rest, ids: { key, count: jobIds.length }, pendingRanges: ranges };
    return JSON.stringify(stored);
  }

  /** The header a stored value holds; undefined when its id list is gone (expired). */
  private async decode(value: unknown): Promise<RunHeader | undefined> {
    const stored = StoredHeader.safeParse(value);
    if (!stored.success) return RunHeader.parse(value);
    const { ids, pendingRanges: ranges, ...rest } = stored.data;
    let jobIds = ids.key === '' ? [] : this.idLists.get(ids.key);
    if (jobIds === undefined) {
      const entry = await this.get(ids.key);
      if (entry === null || entry.operation !== 'PUT') return undefined;
      jobIds = z.array(z.string()).parse(entry.json());
      this.remember(ids.key, jobIds);
    }
    if (jobIds.length !== ids.count) throw new Error(`run ${rest.runId}: its job id list ${ids.key} has ${jobIds.length} ids, the header says ${ids.count}`);
    return RunHeader.parse({ ...rest, jobIds: [...jobIds], pending: ranges.flatMap(([a, b]) => jobIds.slice(a, b)) });
  }

  private remember(key: string, jobIds: string[]): void {
    this.idLists.set(key, [...jobIds]);
    if (this.idLists.size > ID_LISTS_CACHED) this.idLists.delete(this.idLists.keys().next().value!);
  }

  /** A read from the bucket's leader, again while the cluster elects one. */
  private get(key: string): ReturnType<KV['get']> {
    return untilAnswered(`reading ${key} of ${RUNS_BUCKET}`, () => this.kv.get(key), RETRY);
  }

  private async getJobs(runId: string, jobIds: readonly string[]): Promise<JobState[]> {
    const jobs = await inChunks(jobIds, async (id) => {
      const entry = await this.get(jobKey(runId, id));
      if (entry === null || entry.operation !== 'PUT' || entry.length === 0) return undefined;
      const job = JobState.parse(entry.json());
      this.readAt.set(job, entry.revision);
      return job;
    });
    return jobs.filter((j): j is JobState => j !== undefined);
  }
}

/**
 * An id as one KV key token, reversibly: letters, digits, `_` and `-` stay, `.` becomes
 * `/`, any other character `=XX` per UTF-8 byte (so `=` and `/` themselves are escaped).
 *
 * @example kvToken('vm.5c1e-2') // → 'vm/5c1e-2';  kvToken('a b') // → 'a=20b'
 */
export function kvToken(id: string): string {
  if (id === '') throw new Error('an empty id cannot be a KV key');
  let out = '';
  for (const byte of Buffer.from(id, 'utf8')) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9_-]/.test(c)) out += c;
    else if (c === '.') out += '/';
    else out += `=${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The inverse of kvToken. */
export function fromKvToken(token: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < token.length; i++) {
    const c = token[i]!;
    if (c === '/') bytes.push(0x2e);
    else if (c === '=') {
      bytes.push(parseInt(token.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(c.charCodeAt(0));
  }
  return Buffer.from(bytes).toString('utf8');
}

export function headerKey(runId: string): string {
  return kvToken(runId);
}

export function jobKey(runId: string, jobId: string): string {
  return `${kvToken(runId)}.${kvToken(jobId)}`;
}

/**
 * `pending` as `[start, end)` ranges of indexes into `jobIds`, or undefined when an id of it
 * is not there. Pending jobs are a tail of the plan's VM jobs (plus a retry's failed ones),
 * so a run has one range or a few.
 *
 * @example pendingRanges(['a', 'b', 'c', 'd'], ['c', 'd']) // → [[2, 4]]
 */
export function pendingRanges(jobIds: readonly string[], pending: readonly string[]): [number, number][] | undefined {
  const index = new Map(jobIds.map((id, i) => [id, i]));
  const ranges: [number, number][] = [];
  for (const id of pending) {
    const i = index.get(id);
    if (i === undefined) return undefined;
    const last = ranges.at(-1);
    if (last !== undefined && last[1] === i) last[1] = i + 1;
    else ranges.push([i, i + 1]);
  }
  return ranges;
}

function isWrongLastSequence(error: unknown): boolean {
  const e = error as { api_error?: { err_code?: number }; message?: string };
  return e.api_error?.err_code === WRONG_LAST_SEQUENCE || /wrong last sequence/i.test(e.message ?? '');
}

/** Maps over items with at most PARALLEL calls in flight, keeping order. */
async function inChunks<T, R>(items: readonly T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += PARALLEL) out.push(...(await Promise.all(items.slice(i, i + PARALLEL).map(fn))));
  return out;
}
