import { createHash } from 'node:crypto';
import type { RunOptions } from '../../functions/plan/plan.js';
import type { Bus, Closer, EventHandler, JobHandler, WorkOptions } from '../bus/bus.js';
import { MemoryBus } from '../bus/memory.js';
import type { Clock } from '../function.js';
import { silentLogger } from '../log.js';
import { MemoryRunStore } from '../run/store.js';
import { createGateway } from './app.js';
import type { GatewayDeps } from './app.js';
import { MemoryTriggerLog } from './trigger-log.js';
import { runOptions } from '../../test/helpers/jobs.js';

/**
 * For tests: a bus that records what was queued and published, passing everything on. Like
 * both real buses, a job queued again under an id already queued is dropped (JetStream's
 * `Nats-Msg-Id` dedup), so `enqueued` holds the jobs the bus accepted; `enqueueCalls` counts
 * every call.
 */
export class RecordingBus implements Bus {
  readonly enqueued: { subject: string; data: unknown; id: string }[] = [];
  enqueueCalls = 0;
  readonly published: { subject: string; data: unknown; id?: string }[] = [];

  constructor(readonly inner: Bus = new MemoryBus()) {}

  async enqueue(subject: string, data: unknown, opts: { id: string }): Promise<void> {
    this.enqueueCalls++;
    if (!this.enqueued.some((e) => e.id === opts.id)) this.enqueued.push({ subject, data: structuredClone(data), id: opts.id });
    await this.inner.enqueue(subject, data, opts);
  }
  async publish(subject: string, data: unknown, opts: { id?: string } = {}): Promise<void> {
    this.published.push({ subject, data: structuredClone(data), ...(opts.id !== undefined ? { id: opts.id } : {}) });
    await this.inner.publish(subject, data, opts);
  }
  work(subject: string, opts: WorkOptions, handler: JobHandler): Promise<Closer> {
    return this.inner.work(subject, opts, handler);
  }
  subscribe(pattern: string, opts: { durable?: string }, handler: EventHandler): Promise<Closer> {
    return this.inner.subscribe(pattern, opts, handler);
  }
  notify(subject: string, data: unknown): void {
    this.inner.notify(subject, data);
  }
  listen(pattern: string, handler: (subject: string, data: unknown) => void): Promise<Closer> {
    return this.inner.listen(pattern, handler);
  }
  request(subject: string, data: unknown, opts: { timeoutMs: number; maxReplies?: number }): Promise<unknown[]> {
    return this.inner.request(subject, data, opts);
  }
  reply(subject: string, handler: (data: unknown) => Promise<unknown>): Promise<Closer> {
    return this.inner.reply(subject, handler);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  connected(): boolean {
    return this.inner.connected?.() ?? true;
  }
  /** Everything sent so far, queued or published. */
  sent(): number {
    return this.enqueued.length + this.published.length;
  }
}

/** A clock tests move by hand. */
export class TestClock implements Clock {
  constructor(public t = Date.parse('2026-11-26T08:30:00Z')) {}
  now(): Date {
    return new Date(this.t);
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

export const TOKEN = 'test-token-0123456789abcdef';
export const OTHER_TOKEN = 'other-token-0123456789abcdef';
export const SECRET = 'webhook-secret-0123456789';

export function defaultRunOptions(backupDir = '/backups'): RunOptions {
  return runOptions({
    backupDir,
    excludes: ['PRD-print$'],
    maxBackups: 4,
    poolBackup: true,
    spaceThreshold: 20,
    concurrency: 2,
    vmRetries: 1,
    idleTimeoutS: 300,
    selection: { requested: [], config: [], maxBackups: 'default' },
  });
}

/** The `selection` of run options whose vm_exports, vdi_exports and delta_exports (and `excludes` when asked) came with the request. */
export function requestedSelection(opts: { excludes?: boolean; maxBackups?: string; alertLabel?: string } = {}): NonNullable<RunOptions['selection']> {
  return {
    requested:
      opts.alertLabel !== undefined
        ? [{ list: 'vm_exports', where: `alert label ${opts.alertLabel}` }]
        : [
            ...(opts.excludes === true ? [{ list: 'excludes' as const, where: 'request (excludes)' }] : []),
            { list: 'vdi_exports', where: 'request (vdi_exports)' },
            { list: 'delta_exports', where: 'request (delta_exports)' },
            { list: 'vm_exports', where: 'request (vm_exports)' },
          ],
    config: [],
    maxBackups: opts.maxBackups ?? 'default',
  };
}

/** A gateway on the memory bus and store, with a recording bus and a hand-moved clock. */
export function testGateway(over: Partial<GatewayDeps> = {}) {
  const clock = new TestClock();
  const bus = new RecordingBus();
  const store = new MemoryRunStore();
  const triggers = new MemoryTriggerLog(clock);
  const deps: GatewayDeps = {
    bus,
    store,
    triggers,
    backupDir: '/backups',
    tokens: [TOKEN, OTHER_TOKEN],
    webhookSecret: SECRET,
    bodyLimit: 64 * 1024,
    alertmanagerLabel: 'vm',
    runDefaults: defaultRunOptions(),
    clock,
    log: silentLogger(),
    ready: async () => true,
    ...over,
  };
  const app = createGateway(deps);
  return { app, bus: deps.bus as RecordingBus, store: deps.store as MemoryRunStore, clock: deps.clock as TestClock, triggers, deps };
}

/** Headers of an authenticated JSON request. */
export function authJson(token = TOKEN): Record<string, string> {
  return { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };
}

/** An Alertmanager v4 delivery for these VMs (one firing alert each). */
export function alertmanagerPayload(vms: string[], over: { status?: 'firing' | 'resolved'; startsAt?: string; groupKey?: string } = {}) {
  return {
    version: '4',
    groupKey: over.groupKey ?? '{}:{alertname="DiskFailing"}',
    truncatedAlerts: 0,
    status: over.status ?? 'firing',
    receiver: 'vmbackup',
    groupLabels: { alertname: 'DiskFailing' },
    commonLabels: { alertname: 'DiskFailing' },
    commonAnnotations: {},
    externalURL: 'http://alertmanager:9093',
    alerts: vms.map((vm) => ({
      status: over.status ?? 'firing',
      labels: { alertname: 'DiskFailing', vm },
      annotations: { summary: `disk of ${vm} failing` },
      startsAt: over.startsAt ?? '2026-11-26T08:00:00Z',
      endsAt: '0001-01-01T00:00:00Z',
      generatorURL: 'http://prometheus:9090/graph',
      fingerprint: createHash('sha1').update(vm).digest('hex').slice(0, 16),
    })),
  };
}
