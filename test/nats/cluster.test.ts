import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLAIMS_BUCKET_STREAM, EVENTS_STREAM, JOBS_STREAM, RUNS_BUCKET_STREAM } from '../../infra/nats/jetstream.js';
import { openNats } from '../../runtime/bus/nats-connect.js';
import { silentLogger } from '../../runtime/log.js';
import { newRunHeader } from '../../runtime/run/reduce.js';
import { waitFor } from '../sim/test-helpers.js';
import { startCluster } from './cluster-rig.js';
import type { Cluster } from './cluster-rig.js';

/**
 * The three-node example (infra/nats/cluster/) as written, on this machine (cluster-rig.ts):
 * vmbackup's streams take three replicas and keep working with one node down.
 */
let cluster: Cluster | undefined;
beforeAll(async () => {
  cluster = await startCluster();
});
afterAll(async () => {
  await cluster?.stop();
});

describe('the three-node cluster example', () => {
  // First, while every node is up: the streams go from one replica to three here.
  it('removes the jobs nats-server 2.9 leaves on the work queue once acked, after the streams went from one replica to three', async () => {
    const settings = { nats_url: cluster!.url, concurrency: 2 };
    const subject = 'vmbackup.jobs.spent';
    // A worker of a single-server set-up: the streams and its consumer have one replica.
    const one = await waitFor(async () => openNats(settings, silentLogger(), { bus: { ackWaitMs: 1_000 } }).catch(() => undefined), 30_000, 'JetStream cluster');
    let three: Awaited<ReturnType<typeof openNats>> | undefined;
    try {
      const jsm = await one.nc.jetstreamManager();
      expect((await jsm.streams.info(JOBS_STREAM)).config.num_replicas).toBe(1);
      const seen: number[] = [];
      await one.bus.work(subject, { concurrency: 1 }, async (job) => {
        seen.push((job.data as { n: number }).n);
        return { kind: 'ack' };
      });
      // The operator moves to the cluster: a worker started with --replicas 3.
      three = await openNats(settings, silentLogger(), { replicas: 3 });
      expect(three.applied[`stream ${JOBS_STREAM}`]).toBe('updated');
      for (const n of [1, 2, 3]) await one.bus.enqueue(subject, { n }, { id: `spent-${n}` });
      await waitFor(() => seen.length === 3, 15_000, 'three jobs handled');
      // The server keeps them (its consumer has acked them); the worker deletes them within an ack wait.
      const held = async () => (await jsm.streams.info(JOBS_STREAM, { subjects_filter: subject })).state.subjects?.[subject] ?? 0;
      await waitFor(async () => (await held()) === 0, 5_000, `the acked jobs of ${subject} gone from ${JOBS_STREAM}`);
      expect((await jsm.consumers.info(JOBS_STREAM, 'jobs-spent')).ack_floor.stream_seq).toBeGreaterThanOrEqual(3);
      expect(seen).toEqual([1, 2, 3]);
      expect(await one.bus.removeSpent([subject])).toBe(0);
    } finally {
      await three?.close();
      await one.close();
    }
  });

  it('holds vmbackup streams with three replicas, and keeps serving with one node down', async () => {
    const settings = { nats_url: cluster!.url, concurrency: 2 };
    // JetStream elects its meta leader once the routes are up.
    const nats = await waitFor(async () => openNats(settings, silentLogger(), { replicas: 3 }).catch(() => undefined), 30_000, 'JetStream cluster');
    try {
      const jsm = await nats.nc.jetstreamManager();
      for (const stream of [JOBS_STREAM, EVENTS_STREAM, RUNS_BUCKET_STREAM, CLAIMS_BUCKET_STREAM]) {
        const info = await jsm.streams.info(stream);
        expect(info.config.num_replicas).toBe(3);
        expect(info.cluster?.replicas).toHaveLength(2);
      }
      // A later start with the default keeps the three replicas.
      const again = await openNats(settings, silentLogger());
      expect(Object.values(again.applied)).toEqual(['unchanged', 'unchanged', 'unchanged', 'unchanged']);
      await again.close();

      await nats.store.create(newRunHeader('cluster-run', new Date(), { concurrency: 1, vmRetries: 0 }));
      const seen: unknown[] = [];
      await nats.bus.work('vmbackup.jobs.cluster', { concurrency: 1 }, async (job) => {
        seen.push(job.data);
        return { kind: 'ack' };
      });
      await nats.bus.enqueue('vmbackup.jobs.cluster', { n: 1 }, { id: 'c-1' });
      await waitFor(() => seen.length === 1, 10_000, 'first job');

      // One node goes (not necessarily the one we are connected to): still jobs and state.
      await cluster!.nodes[0]!.server.stop();
      await waitFor(
        async () => {
          try {
            await nats.bus.enqueue('vmbackup.jobs.cluster', { n: 2 }, { id: 'c-2' });
            return true;
          } catch {
            return false;
          }
        },
        30_000,
        'enqueue with a node down',
      );
      await waitFor(() => seen.length === 2, 30_000, 'second job');
      expect(seen).toEqual([{ n: 1 }, { n: 2 }]);
      expect((await nats.store.header('cluster-run'))?.header.runId).toBe('cluster-run');
    } finally {
      await nats.close();
    }
  });
});
