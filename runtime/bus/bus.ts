/**
 * The bus: the one interface between the runtime and a transport. Two bindings implement it:
 * `memory.ts` (in-process, for `vmbackup` from cron) and `nats.ts` (JetStream). Handlers never
 * see it; the runtime (runtime/serve.ts, runtime/run/) does. Payloads are plain JSON values;
 * validation happens above this layer.
 *
 * Jobs are durable work: queued once per `id`, delivered to one worker at a time, settled by
 * the worker's decision (ack, term, or retry after a delay). Events are facts: every
 * subscriber whose pattern matches sees them, in publication order.
 *
 * Subject patterns follow NATS: tokens separated by `.`, `*` matches one token, `>` the rest.
 *
 * @example
 *   await bus.enqueue('vmbackup.jobs.prune', { … }, { id: 'run1:vm.abc:prune:1' });
 *   const worker = bus.work('vmbackup.jobs.prune', { concurrency: 2 }, async (job) => 'ack');
 */
export interface Bus {
  /** Queues a job. A second job with the same `id` (within the dedup window) is dropped. */
  enqueue(subject: string, data: unknown, opts: { id: string }): Promise<void>;

  /** Starts consuming jobs of `subject`: at most `concurrency` at a time in this process. */
  work(subject: string, opts: WorkOptions, handler: JobHandler): Promise<Closer>;

  /** Publishes an event. `id` dedups repeated publications of the same fact. */
  publish(subject: string, data: unknown, opts?: { id?: string }): Promise<void>;

  /**
   * Receives events matching `pattern`, one at a time, in order. With `durable`, events
   * published while nobody listens are kept and delivered later (NATS: a durable consumer);
   * the handler's promise settles each event (a throw means: deliver it again).
   */
  subscribe(pattern: string, opts: { durable?: string }, handler: EventHandler): Promise<Closer>;

  /**
   * Sends a passing signal on `subject` (`vmbackup.progress.…`): not stored, not repeated,
   * seen only by the listeners there at that moment (NATS: a core publish, outside
   * JetStream). For what may be lost without harm, such as the bytes an export has written
   * so far. Never throws: a signal that cannot be sent is dropped.
   *
   * @example bus.notify('vmbackup.progress.20261126-083000-7f3a.vm.5c1e', { bytes: 1048576, … })
   */
  notify(subject: string, data: unknown): void;

  /** Receives the signals of {@link notify} matching `pattern` from now on (NATS: a core subscription). */
  listen(pattern: string, handler: (subject: string, data: unknown) => void): Promise<Closer>;

  /** Asks `subject` and gathers the replies that arrive within `timeoutMs` (hooks). */
  request(subject: string, data: unknown, opts: { timeoutMs: number; maxReplies?: number }): Promise<unknown[]>;

  /** Answers requests on `subject` (hook subscribers). */
  reply(subject: string, handler: (data: unknown) => Promise<unknown>): Promise<Closer>;

  close(): Promise<void>;

  /**
   * False while the binding knows its transport is down (NATS: disconnected and
   * reconnecting, or closed), so that a caller answering someone (the gateway) can refuse at
   * once instead of waiting for a timeout. True says only that no outage is known. A binding
   * that cannot be down (in-process) leaves it out.
   *
   * @example if (bus.connected?.() === false) throw new Error('NATS is not reachable');
   */
  connected?(): boolean;

  /**
   * Whether some process consumes each kind of work: the job subjects `jobs`
   * (`vmbackup.jobs.plan`), and the durable subscriptions `durables` (`coordinator`). What
   * nobody consumes waits in silence: a run stays `planning` for ever. A binding that cannot
   * tell (in-process: the work is in this process) leaves it out.
   *
   * @example await bus.consumption?.(['vmbackup.jobs.plan'], ['coordinator'])
   *   // → [{ name: 'vmbackup.jobs.plan', consumed: false, queued: 1 }, { name: 'coordinator', consumed: true, queued: 0 }]
   */
  consumption?(jobs: readonly string[], durables: readonly string[]): Promise<Consumption[]>;
}

/** Who takes one kind of work, as far as the transport can tell. */
export interface Consumption {
  /** The job subject (`vmbackup.jobs.export`) or the durable subscription's name (`coordinator`). */
  name: string;
  /** Some process waits for this work, or holds some of it now. */
  consumed: boolean;
  /** Messages not yet handed to anyone (jobs queued; events not yet taken). */
  queued: number;
}

export interface WorkOptions {
  concurrency: number;
  /** Deliveries of one job, first included, before the bus gives up on it. */
  maxDeliver?: number;
  /** How long a delivery may go without `working()` before it is redelivered (NATS ack_wait). */
  ackWaitMs?: number;
}

/** One delivery of a job. */
export interface Delivery {
  readonly subject: string;
  readonly data: unknown;
  /** 1 on the first delivery. */
  readonly attempt: number;
  /** Extends the delivery's lease (JetStream in-progress ack). */
  working(): void;
}

/** What to do with a delivered job. */
export type Settle =
  | { readonly kind: 'ack' }
  | { readonly kind: 'term' }
  | { readonly kind: 'retry'; readonly delayMs: number };

export type JobHandler = (job: Delivery) => Promise<Settle>;
export type EventHandler = (subject: string, data: unknown) => Promise<void>;

export interface Closer {
  close(): Promise<void>;
}

/** True when NATS subject `subject` matches `pattern` (`*` one token, `>` one or more). */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    const token = p[i];
    if (token === '>') return s.length > i;
    if (i >= s.length) return false;
    if (token !== '*' && token !== s[i]) return false;
  }
  return p.length === s.length;
}
