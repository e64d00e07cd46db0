import type { Bus, Closer, Delivery, EventHandler, JobHandler, Settle, WorkOptions } from './bus.js';
import { subjectMatches } from './bus.js';

interface QueuedJob {
  subject: string;
  data: unknown;
  attempt: number;
}

interface Worker {
  subject: string;
  opts: WorkOptions;
  handler: JobHandler;
  running: number;
  closed: boolean;
}

interface Subscription {
  pattern: string;
  handler: EventHandler;
  queue: { subject: string; data: unknown }[];
  draining: boolean;
  closed: boolean;
}

/**
 * The in-process binding: jobs and events live in this process only, so nothing survives
 * it — the embedded run is one process from start to summary. Semantics follow the NATS
 * binding where a test could tell the difference: jobs dedup by id, one delivery per job at
 * a time, `retry` redelivers after its delay with `attempt + 1`, events reach each matching
 * subscriber in publication order, one at a time.
 */
export class MemoryBus implements Bus {
  private readonly queues = new Map<string, QueuedJob[]>();
  private readonly workers: Worker[] = [];
  private readonly subscriptions: Subscription[] = [];
  private readonly listeners: { pattern: string; handler: (subject: string, data: unknown) => void }[] = [];
  private readonly repliers = new Map<string, (data: unknown) => Promise<unknown>>();
  private readonly seenJobIds = new Set<string>();
  private readonly seenEventIds = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private closed = false;

  async enqueue(subject: string, data: unknown, opts: { id: string }): Promise<void> {
    this.assertOpen();
    if (this.seenJobIds.has(opts.id)) return;
    this.seenJobIds.add(opts.id);
    this.push({ subject, data: structuredClone(data), attempt: 1 });
  }

  async work(subject: string, opts: WorkOptions, handler: JobHandler): Promise<Closer> {
    this.assertOpen();
    const worker: Worker = { subject, opts, handler, running: 0, closed: false };
    this.workers.push(worker);
    queueMicrotask(() => this.dispatch(subject));
    return {
      close: async () => {
        worker.closed = true;
        this.workers.splice(this.workers.indexOf(worker), 1);
      },
    };
  }

  async publish(subject: string, data: unknown, opts: { id?: string } = {}): Promise<void> {
    this.assertOpen();
    if (opts.id !== undefined) {
      if (this.seenEventIds.has(opts.id)) return;
      this.seenEventIds.add(opts.id);
    }
    for (const sub of this.subscriptions) {
      if (!sub.closed && subjectMatches(sub.pattern, subject)) {
        sub.queue.push({ subject, data: structuredClone(data) });
        void this.drain(sub);
      }
    }
  }

  async subscribe(pattern: string, _opts: { durable?: string }, handler: EventHandler): Promise<Closer> {
    this.assertOpen();
    const sub: Subscription = { pattern, handler, queue: [], draining: false, closed: false };
    this.subscriptions.push(sub);
    return {
      close: async () => {
        sub.closed = true;
        this.subscriptions.splice(this.subscriptions.indexOf(sub), 1);
      },
    };
  }

  notify(subject: string, data: unknown): void {
    if (this.closed) return;
    for (const l of [...this.listeners]) {
      if (!subjectMatches(l.pattern, subject)) continue;
      const copy = structuredClone(data);
      // As a core NATS subscription: later, never inside the sender's call.
      queueMicrotask(() => {
        if (this.listeners.includes(l)) l.handler(subject, copy);
      });
    }
  }

  async listen(pattern: string, handler: (subject: string, data: unknown) => void): Promise<Closer> {
    this.assertOpen();
    const l = { pattern, handler };
    this.listeners.push(l);
    return {
      close: async () => {
        const at = this.listeners.indexOf(l);
        if (at >= 0) this.listeners.splice(at, 1);
      },
    };
  }

  async request(subject: string, data: unknown, opts: { timeoutMs: number; maxReplies?: number }): Promise<unknown[]> {
    this.assertOpen();
    const replier = this.repliers.get(subject);
    if (replier === undefined) return [];
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<unknown[]>((resolve) => {
      timer = setTimeout(() => resolve([]), opts.timeoutMs);
    });
    try {
      return await Promise.race([replier(structuredClone(data)).then((r) => [r]), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async reply(subject: string, handler: (data: unknown) => Promise<unknown>): Promise<Closer> {
    this.repliers.set(subject, handler);
    return { close: async () => void this.repliers.delete(subject) };
  }

  /** Resolves when no job is queued, running or waiting for a retry, and no event is pending. */
  async idle(): Promise<void> {
    if (this.isIdle()) return;
    await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.workers.length = 0;
    this.subscriptions.length = 0;
    this.listeners.length = 0;
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('bus is closed');
  }

  private push(job: QueuedJob): void {
    let queue = this.queues.get(job.subject);
    if (queue === undefined) {
      queue = [];
      this.queues.set(job.subject, queue);
    }
    queue.push(job);
    queueMicrotask(() => this.dispatch(job.subject));
  }

  private dispatch(subject: string): void {
    if (this.closed) return;
    const queue = this.queues.get(subject);
    if (queue === undefined) return;
    for (const worker of this.workers) {
      if (worker.closed || !subjectMatches(worker.subject, subject)) continue;
      while (queue.length > 0 && worker.running < worker.opts.concurrency) {
        const job = queue.shift()!;
        worker.running++;
        this.inflight++;
        void this.deliver(worker, job).finally(() => {
          worker.running--;
          this.inflight--;
          this.dispatch(subject);
          this.checkIdle();
        });
      }
    }
  }

  private async deliver(worker: Worker, job: QueuedJob): Promise<void> {
    const delivery: Delivery = { subject: job.subject, data: job.data, attempt: job.attempt, working: () => {} };
    let settle: Settle;
    try {
      settle = await worker.handler(delivery);
    } catch {
      // A handler that throws past the runtime is a bug there; retry as NATS would after ack_wait.
      settle = { kind: 'retry', delayMs: 1_000 };
    }
    const maxDeliver = worker.opts.maxDeliver ?? Infinity;
    if (settle.kind === 'retry' && job.attempt < maxDeliver && !this.closed) {
      this.inflight++;
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        this.inflight--;
        this.push({ ...job, attempt: job.attempt + 1 });
      }, settle.delayMs);
      this.timers.add(timer);
    }
  }

  private async drain(sub: Subscription): Promise<void> {
    if (sub.draining) return;
    sub.draining = true;
    this.inflight++;
    try {
      while (sub.queue.length > 0 && !sub.closed) {
        const event = sub.queue[0]!;
        try {
          await sub.handler(event.subject, event.data);
          sub.queue.shift();
        } catch {
          // Redeliver, as a durable consumer would; back off so a persistent failure cannot spin.
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
    } finally {
      sub.draining = false;
      this.inflight--;
      this.checkIdle();
    }
  }

  private isIdle(): boolean {
    if (this.inflight > 0) return false;
    for (const q of this.queues.values()) if (q.length > 0) return false;
    return true;
  }

  private checkIdle(): void {
    if (!this.isIdle()) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
