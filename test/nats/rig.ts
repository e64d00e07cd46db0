import { DeliverPolicy, connect } from 'nats';
import type { NatsConnection } from 'nats';
import { EVENTS_STREAM, JOBS_STREAM, jobConsumerName } from '../../infra/nats/jetstream.js';
import type { PhaseEvent } from '../../runtime/events.js';
import { startNatsServer } from '../helpers/nats-server.js';
import type { NatsServer } from '../helpers/nats-server.js';
import { httpsSim, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';
import { waitFor } from '../sim/test-helpers.js';
import { startWorker } from './workers.js';
import type { WorkerProcess } from './workers.js';

/**
 * What a NATS test needs: a real nats-server, the XAPI simulator (HTTPS, as a pool), a
 * backup workspace, and `vmbackup worker` processes pointed at all three.
 */
export interface Rig {
  sim: Simulator;
  nats: NatsServer;
  ws: Workspace;
  /** Flags for any command: workspace, simulator, NATS. */
  args(...extra: string[]): string[];
  /** Starts a worker with these extra flags and waits until it is ready. */
  worker(...extra: string[]): Promise<WorkerProcess>;
  workers: WorkerProcess[];
  /** A plain NATS client for the test's own checks. */
  client(): Promise<NatsConnection>;
  close(): Promise<void>;
}

export async function startRig(pool: PoolSpecInput): Promise<Rig> {
  const [sim, nats, ws] = await Promise.all([httpsSim(pool), startNatsServer(), workspace()]);
  const workers: WorkerProcess[] = [];
  const clients: NatsConnection[] = [];
  const args = (...extra: string[]) => [...ws.args(sim), '--nats', nats.url, ...extra];
  return {
    sim,
    nats,
    ws,
    args,
    workers,
    async worker(...extra) {
      const w = startWorker(args(...extra));
      workers.push(w);
      await w.ready;
      return w;
    },
    async client() {
      const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 500 });
      clients.push(nc);
      return nc;
    },
    async close() {
      await Promise.all(workers.map((w) => w.stop(10_000)));
      await Promise.all(clients.map((c) => c.close().catch(() => {})));
      await nats.stop();
      await sim.close();
    },
  };
}

/** Publishes a job straight onto the work queue (a redelivery, as NATS would make one). */
export async function publishJob(nc: NatsConnection, fn: string, data: unknown, id: string): Promise<void> {
  await nc.jetstream().publish(`vmbackup.jobs.${fn}`, JSON.stringify(data), { msgID: id });
}

/** Waits until no job of `fn` is queued or being worked on. */
export async function jobsSettled(nc: NatsConnection, fn: string, ms = 20_000): Promise<void> {
  const jsm = await nc.jetstreamManager();
  await waitFor(
    async () => {
      const info = await jsm.consumers.info(JOBS_STREAM, jobConsumerName(`vmbackup.jobs.${fn}`));
      return info.num_pending === 0 && info.num_ack_pending === 0 && info.num_redelivered === 0;
    },
    ms,
    `${fn} jobs settled`,
  );
}

/** The largest number of export transfers of the simulator running at one moment. */
export function exportOverlap(sim: Simulator): number {
  const t = sim.state.transfers('export');
  let peak = 0;
  for (const x of t) peak = Math.max(peak, t.filter((y) => y.startedAt <= x.startedAt && (y.finishedAt === undefined || y.finishedAt > x.startedAt)).length);
  return peak;
}

/** Every event of one run and function so far, from the events stream. */
export async function events(r: Rig, runId: string, fn: string): Promise<PhaseEvent[]> {
  const nc = await r.client();
  const consumer = await nc.jetstream().consumers.get(EVENTS_STREAM, { filterSubjects: `vmbackup.events.${runId}.${fn}.*`, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: 1 });
  const out: PhaseEvent[] = [];
  const batch = await consumer.fetch({ max_messages: 100, expires: 1_000 });
  for await (const m of batch) out.push(m.json<PhaseEvent>());
  return out;
}
