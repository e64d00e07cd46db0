import { AckPolicy, DeliverPolicy, DiscardPolicy, ReplayPolicy, RetentionPolicy, StorageType, nanos } from 'nats';
import type { ConsumerConfig, StreamConfig } from 'nats';

/**
 * vmbackup's JetStream resources, declared as code. The runtime applies them at start-up
 * (runtime/bus/nats-infra.ts): each is created when missing and updated when an existing one
 * differs from what is declared here, so a second start changes nothing. Everything stays
 * within what nats-server 2.9 (Debian's) supports: no per-message TTL, no consumer
 * `filter_subjects` (plural), no stream metadata. infra/nats/README.md explains each one.
 *
 * Streams and buckets are fixed. Consumers depend on the function they feed and on the
 * worker's settings, so they are functions of those: the bus applies a job consumer when a
 * worker starts serving that function, and the coordinator's consumer when it subscribes.
 *
 * @example
 *   jobConsumer('vmbackup.jobs.export', { ackWaitMs: 30_000, maxDeliver: 4, maxAckPending: 2 })
 *   // → { durable_name: 'jobs-export', filter_subject: 'vmbackup.jobs.export', max_ack_pending: 2, … }
 */

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const KiB = 1 << 10;
const MiB = 1 << 20;
const GiB = 1 << 30;

export const JOBS_STREAM = 'VMBACKUP_JOBS';
export const EVENTS_STREAM = 'VMBACKUP_EVENTS';
export const RUNS_BUCKET = 'vmbackup-runs';
/** The stream behind the runs bucket (JetStream's KV convention: `KV_<bucket>`). */
export const RUNS_BUCKET_STREAM = `KV_${RUNS_BUCKET}`;
export const CLAIMS_BUCKET = 'vmbackup-claims';
/** The stream behind the claims bucket. */
export const CLAIMS_BUCKET_STREAM = `KV_${CLAIMS_BUCKET}`;

/** A stream as declared: the fields we decide; the server fills in the rest. */
export type StreamDecl = Partial<StreamConfig> & Pick<StreamConfig, 'name' | 'subjects'>;
/** A durable consumer as declared. */
export type ConsumerDecl = Partial<ConsumerConfig> & Pick<ConsumerConfig, 'durable_name' | 'ack_policy' | 'deliver_policy'>;

/**
 * Jobs: one work queue for every function (`vmbackup.jobs.<fn>`).
 */
export const jobsStream: StreamDecl = {
  name: JOBS_STREAM,
  description: 'vmbackup jobs, one subject per function: removed once a worker acks (or terminates) them',
  subjects: ['vmbackup.jobs.>'],
  // A job is removed when acked: the stream holds exactly the work not yet done.
  retention: RetentionPolicy.Workqueue,
  // Refuse new jobs when full, rather than silently drop queued ones.
  discard: DiscardPolicy.New,
  // Jobs must survive a nats-server restart.
  storage: StorageType.File,
  // A run queues at most `concurrency` VM jobs at a time, plus pool-db and hosts: 100,000
  // leaves room for many pools and for jobs waiting on a function no worker serves yet.
  max_msgs: 100_000,
  // JetStream reserves max_bytes of its file store per stream: the four take 2.31 GiB.
  max_bytes: 256 * MiB,
  // A phase's input is a few KiB; the run-end job carries the run's summary (~400 bytes per
  // VM), so the limit is the events' one.
  max_msg_size: 8 * MiB,
  // A job nobody took in a week belongs to a run long given up; drop it.
  max_age: nanos(7 * DAY),
  // Job ids are `<run>:<job>:<try>:<fn>`: a coordinator that applies an event twice (it was
  // redelivered after a crash, or NATS restarted under it) queues nothing twice. Two hours
  // cover any redelivery of the coordinator's events (ack_wait × attempts) with room to spare.
  duplicate_window: nanos(2 * HOUR),
  num_replicas: 1,
};

/**
 * Events: facts published by the phases (`vmbackup.events.<runId>.<fn>.<outcome>`) and the
 * runs' summaries (`vmbackup.events.<runId>.run.finished`). The coordinator, `vmbackup run`,
 * `invoke` and the gateway read them.
 */
export const eventsStream: StreamDecl = {
  name: EVENTS_STREAM,
  description: 'vmbackup phase events and run summaries',
  subjects: ['vmbackup.events.>'],
  // Facts for every reader; kept by age, not by who has read them.
  retention: RetentionPolicy.Limits,
  discard: DiscardPolicy.Old,
  storage: StorageType.File,
  // A week of history: enough to follow, audit and debug recent runs; run state lives in the
  // runs bucket anyway.
  max_age: nanos(7 * DAY),
  max_bytes: 1 * GiB,
  // `plan.done` carries every VM job of the run (about 700 bytes per VM): 8 MiB is ~11,000
  // VMs. The server's max_payload must allow it too (nats-server.conf sets 8 MB; NATS's
  // default 1 MB is ~1,400 VMs).
  max_msg_size: 8 * MiB,
  // Event ids (`<run>:<job>:<try>:<fn>:<outcome>`) dedup a phase that publishes its outcome
  // again after a redelivery, and the summary a coordinator publishes twice.
  duplicate_window: nanos(2 * HOUR),
  num_replicas: 1,
};

/**
 * A KV bucket as a stream: JetStream's conventions for `bucket` (what nats.js and the nats
 * CLI set: history 1, so a key holds its current value and writes can compare revisions;
 * rollups and delete markers; direct gets), with the limits given. When full, the oldest
 * keys go first.
 */
function kvBucket(bucket: string, decl: Pick<StreamConfig, 'description' | 'max_age' | 'max_bytes' | 'max_msg_size'>): StreamDecl {
  return {
    name: `KV_${bucket}`,
    subjects: [`$KV.${bucket}.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    max_msgs_per_subject: 1,
    discard: DiscardPolicy.Old,
    allow_rollup_hdrs: true,
    deny_delete: true,
    deny_purge: false,
    allow_direct: true,
    duplicate_window: nanos(2 * MINUTE),
    num_replicas: 1,
    ...decl,
  };
}

/**
 * Run state: the header of each run under `<runId>`, each job under `<runId>.<jobId>`
 * (runtime/run/nats-store.ts). When full, the oldest runs' state goes first: better than
 * refusing the commits of a running run (which would stall it).
 */
export const runsBucket: StreamDecl = kvBucket(RUNS_BUCKET, {
  description: 'vmbackup run state (headers and jobs of each run)',
  // `vmbackup status` shows a month of runs; older state expires (the backups stay on disk).
  max_age: nanos(30 * DAY),
  // A job's state is 2-3 KiB: a month of daily 5,000-VM runs is ~450 MiB.
  max_bytes: 1 * GiB,
  // A header lists every job id twice (jobIds, pending): ~80 bytes per VM.
  max_msg_size: 8 * MiB,
});

/**
 * Claims: which delivery of a job runs it, one at a time across workers
 * (runtime/bus/nats-claims.ts): a key per job delivered, `job.<stream seq>.<timestamp>`,
 * naming the delivery that runs it and where its process answers for it.
 */
export const claimsBucket: StreamDecl = kvBucket(CLAIMS_BUCKET, {
  description: 'vmbackup job claims (one delivery of a job runs it at a time)',
  // A claim matters while its job may be delivered again: while it runs, and until it
  // leaves the queue. A day, for a job a buggy server left queued after its ack.
  max_age: nanos(1 * DAY),
  // ~150 bytes a key: 64 MiB is some 400,000 jobs a day.
  max_bytes: 64 * MiB,
  max_msg_size: 4 * KiB,
});

/** Every stream (and bucket) vmbackup needs, in the order they are applied. */
export const streams: readonly StreamDecl[] = [jobsStream, eventsStream, runsBucket, claimsBucket];

/** The durable consumer name of a job subject: `vmbackup.jobs.export` → `jobs-export`. */
export function jobConsumerName(subject: string): string {
  const rest = subject.startsWith('vmbackup.jobs.') ? subject.slice('vmbackup.jobs.'.length) : subject;
  return `jobs-${rest.replace(/[^A-Za-z0-9_-]/g, '_')}`;
}

export interface JobConsumerOptions {
  /** How long a delivery may go without an ack or in-progress ack before redelivery. */
  ackWaitMs: number;
  /** Deliveries before the server stops redelivering (the runtime passes attempts + 1). */
  maxDeliver: number;
  /** Deliveries outstanding at once across every worker: a global concurrency cap. */
  maxAckPending: number;
}

/**
 * The durable pull consumer of one function's jobs. Filters never overlap (one subject per
 * function), as a work-queue stream requires. No `backoff`: retries after a failure are the
 * runtime's `nak(delay)` with the function's backoff; the server's own redelivery only
 * covers a worker that died or lost NATS (after `ack_wait`, which workers extend with
 * in-progress acks while a job runs).
 */
export function jobConsumer(subject: string, opts: JobConsumerOptions): ConsumerDecl {
  return {
    durable_name: jobConsumerName(subject),
    description: `vmbackup workers of ${subject}`,
    filter_subject: subject,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    replay_policy: ReplayPolicy.Instant,
    ack_wait: nanos(opts.ackWaitMs),
    max_deliver: opts.maxDeliver,
    max_ack_pending: opts.maxAckPending,
    // Pull requests waiting at once: every worker's free slots.
    max_waiting: 512,
  };
}

/** max_ack_pending of functions without a global limit: the coordinator gates VM jobs already. */
export const DEFAULT_MAX_ACK_PENDING = 1000;

/**
 * A durable event consumer: the coordinator's (`coordinator`, every phase event) and the
 * run-end hook trigger's (`run-end-hooks`, `run.finished` events). `max_ack_pending: 1`
 * makes it process events one at a time, in order, however many processes subscribe (every
 * worker runs the coordinator; only one event is ever out). Deliveries are unlimited: a
 * failure naks the event with a growing delay, and the next one waits behind it.
 */
export function eventConsumer(durable: string, filter: string, opts: { ackWaitMs?: number } = {}): ConsumerDecl {
  return {
    durable_name: durable,
    description: `vmbackup ${durable}: events of ${filter}, one at a time`,
    filter_subject: filter,
    ack_policy: AckPolicy.Explicit,
    // From its creation on (as a subscription starts), never last week's history: a run-end
    // trigger created on an upgrade must not run the hooks of old runs again. Workers create
    // their durable consumers before they serve any job, so no phase event predates them.
    deliver_policy: DeliverPolicy.New,
    replay_policy: ReplayPolicy.Instant,
    // The event a dead subscriber held waits this long; a live one renews it while it works.
    ack_wait: nanos(opts.ackWaitMs ?? 30 * SECOND),
    max_deliver: -1,
    max_ack_pending: 1,
    max_waiting: 512,
  };
}

const nsToDays = (ns: number | undefined) => (ns ?? 0) / (DAY * 1e6);

/**
 * The most one run leaves in the events stream and in the runs bucket: a part per run (the
 * plan's events and the summary's frame; the header and its job id list) and a part per job
 * (its seven phases' `started` and `done` events, its lines in `plan.done` and in the
 * summary; its state), for one try of each job (a VM tried again adds its events again).
 * Measured on the simulator's VMs (12.0 KiB and 1.4 KiB a VM, 2.0 KiB and 0.7 KiB a run),
 * rounded up for longer names and paths; a pool-db or host job counts as a VM.
 * infra/nats/README.md works out a year of nightly runs with it; test/nats/retention.test.ts
 * holds fifty runs to it.
 */
interface Footprint {
  perRun: { msgs: number; bytes: number };
  perVm: { msgs: number; bytes: number };
}
export const RUN_FOOTPRINT: Readonly<Record<'events' | 'runs', Footprint>> = {
  events: { perRun: { msgs: 5, bytes: 4 * KiB }, perVm: { msgs: 14, bytes: 16 * KiB } },
  runs: { perRun: { msgs: 2, bytes: 2 * KiB }, perVm: { msgs: 1, bytes: 3 * KiB } },
};

/**
 * What the events stream and the runs bucket hold at most, with `runsPerDay` runs of `vms`
 * jobs a day: the runs of their max_age (and the one being written), each at RUN_FOOTPRINT,
 * and never more than their max_bytes. The jobs stream holds only work not yet done.
 *
 * @example retainedBound({ vms: 1000, runsPerDay: 1 }).events.bytes // → 8 runs × ~12 MiB
 */
export function retainedBound(opts: { vms: number; runsPerDay: number }): Record<'events' | 'runs', { runs: number; msgs: number; bytes: number }> {
  const of = (decl: StreamDecl, f: Footprint) => {
    const runs = Math.ceil(nsToDays(decl.max_age) * opts.runsPerDay) + 1;
    return {
      runs,
      msgs: runs * (f.perRun.msgs + opts.vms * f.perVm.msgs),
      bytes: Math.min(runs * (f.perRun.bytes + opts.vms * f.perVm.bytes), decl.max_bytes ?? Infinity),
    };
  };
  return { events: of(eventsStream, RUN_FOOTPRINT.events), runs: of(runsBucket, RUN_FOOTPRINT.runs) };
}
