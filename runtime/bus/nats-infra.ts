import { isDeepStrictEqual } from 'node:util';
import type { ConsumerConfig, JetStreamManager, StreamConfig } from 'nats';
import { streams } from '../../infra/nats/jetstream.js';
import type { ConsumerDecl, StreamDecl } from '../../infra/nats/jetstream.js';

/** What applying a declaration did. */
export type Applied = 'created' | 'updated' | 'unchanged';

/** Per resource (`stream VMBACKUP_JOBS`, `consumer VMBACKUP_JOBS/jobs-export`): what was done. */
export type ApplyReport = Record<string, Applied>;

/**
 * Creates a stream, or updates it where it differs from the declaration; changes nothing
 * when it matches (a second start is a no-op). A larger `num_replicas` set by an operator
 * (`nats stream edit --replicas 3`) is kept. Fields the server cannot change in place
 * (retention, storage) are an error naming the stream and the field.
 *
 * @example
 *   await applyStream(jsm, jobsStream) // → 'created' the first time, 'unchanged' after
 */
export async function applyStream(jsm: JetStreamManager, decl: StreamDecl): Promise<Applied> {
  const existing = await streamInfo(jsm, decl.name);
  if (existing === undefined) {
    try {
      await jsm.streams.add(decl);
      return 'created';
    } catch (error) {
      // Another worker created it at the same moment: compare with theirs.
      if (!/already in use|already exists/i.test((error as Error).message)) throw error;
      return applyStream(jsm, decl);
    }
  }
  const wanted: Partial<StreamConfig> = { ...decl };
  if (existing.num_replicas > (decl.num_replicas ?? 1)) wanted.num_replicas = existing.num_replicas;
  const diff = differences(wanted, existing);
  if (diff.length === 0) return 'unchanged';
  for (const key of ['retention', 'storage'] as const) {
    if (diff.includes(key)) {
      throw new Error(
        `stream ${decl.name} has ${key} ${String(existing[key])}, vmbackup declares ${String(decl[key])}: JetStream cannot change it in place (back up and delete the stream, then restart)`,
      );
    }
  }
  await jsm.streams.update(decl.name, { ...existing, ...wanted });
  return 'updated';
}

/** Creates a durable consumer, or updates what differs from the declaration. */
export async function applyConsumer(jsm: JetStreamManager, stream: string, decl: ConsumerDecl): Promise<Applied> {
  const existing = await consumerInfo(jsm, stream, decl.durable_name!);
  if (existing === undefined) {
    try {
      await jsm.consumers.add(stream, decl);
      return 'created';
    } catch (error) {
      if (!/already exists|already in use/i.test((error as Error).message)) throw error;
      return applyConsumer(jsm, stream, decl);
    }
  }
  const diff = differences(decl, existing);
  if (diff.length === 0) return 'unchanged';
  for (const key of ['ack_policy', 'deliver_policy', 'filter_subject', 'replay_policy'] as const) {
    if (diff.includes(key)) {
      throw new Error(
        `consumer ${decl.durable_name} of ${stream} has ${key} ${String(existing[key])}, vmbackup declares ${String(decl[key])}: delete the consumer (nats consumer rm ${stream} ${decl.durable_name}) and restart`,
      );
    }
  }
  const { ack_policy: _a, deliver_policy: _d, replay_policy: _r, durable_name: _n, filter_subject: _f, ...update } = decl;
  await jsm.consumers.update(stream, decl.durable_name!, update);
  return 'updated';
}

/**
 * Applies every stream and bucket of infra/nats/jetstream.ts; consumers are applied by their
 * users. `replicas` (a cluster: 3) raises each stream's replica count; none is ever lowered.
 */
export async function applyStreams(jsm: JetStreamManager, opts: { replicas?: number } = {}): Promise<ApplyReport> {
  const report: ApplyReport = {};
  for (const decl of streams) {
    report[`stream ${decl.name}`] = await applyStream(jsm, opts.replicas !== undefined ? { ...decl, num_replicas: opts.replicas } : decl);
  }
  return report;
}

/** The declared keys whose value differs from the server's config. */
function differences(declared: object, actual: object): string[] {
  const a = actual as Record<string, unknown>;
  return Object.entries(declared)
    .filter(([key, value]) => value !== undefined && !isDeepStrictEqual(normalize(value), normalize(a[key])))
    .map(([key]) => key);
}

function normalize(v: unknown): unknown {
  // The server omits false booleans and empty strings from configs it returns.
  if (v === false || v === '' || v === undefined || v === null) return undefined;
  return v;
}

async function streamInfo(jsm: JetStreamManager, name: string): Promise<StreamConfig | undefined> {
  try {
    return (await jsm.streams.info(name)).config;
  } catch (error) {
    if (/stream not found/i.test((error as Error).message)) return undefined;
    throw error;
  }
}

async function consumerInfo(jsm: JetStreamManager, stream: string, name: string): Promise<ConsumerConfig | undefined> {
  try {
    return (await jsm.consumers.info(stream, name)).config;
  } catch (error) {
    if (/consumer not found/i.test((error as Error).message)) return undefined;
    throw error;
  }
}
