import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EVENTS_STREAM, JOBS_STREAM, RUNS_BUCKET_STREAM } from '../../infra/nats/jetstream.js';
import { openNats } from '../../runtime/bus/nats-connect.js';
import { silentLogger } from '../../runtime/log.js';
import { newRunHeader } from '../../runtime/run/reduce.js';
import { ROOT } from '../helpers/cli.js';
import { freePort, startNatsServer } from '../helpers/nats-server.js';
import type { NatsServer } from '../helpers/nats-server.js';
import { waitFor } from '../sim/test-helpers.js';

/**
 * The three-node example (infra/nats/cluster/) as written, on this machine: only addresses,
 * ports and store dirs are changed. vmbackup's streams take three replicas and keep working
 * with one node down.
 */
let nodes: NatsServer[] = [];
beforeAll(async () => {
  const client = await Promise.all([0, 1, 2].map(() => freePort()));
  const route = await Promise.all([0, 1, 2].map(() => freePort()));
  nodes = await Promise.all(
    [0, 1, 2].map((i) =>
      startNatsServer({
        port: client[i]!,
        template: ({ port, storeDir }) =>
          readFileSync(path.join(ROOT, `infra/nats/cluster/nats-${i + 1}.conf`), 'utf8')
            .replace('listen: 0.0.0.0:4222', `listen: 127.0.0.1:${port}`)
            .replace(/^http: .*$/m, '')
            .replace('listen: 0.0.0.0:6222', `listen: 127.0.0.1:${route[i]}`)
            .replace(/nats-route:\/\/nats-(\d)\.example\.org:6222/g, (_m, n: string) => `nats-route://127.0.0.1:${route[Number(n) - 1]}`)
            .replace('"/var/lib/nats/jetstream"', JSON.stringify(storeDir)),
      }),
    ),
  );
});
afterAll(async () => {
  await Promise.all(nodes.map((n) => n.stop()));
});

describe('the three-node cluster example', () => {
  it('holds vmbackup streams with three replicas, and keeps serving with one node down', async () => {
    const settings = { nats_url: nodes.map((n) => n.url).join(', '), concurrency: 2 };
    // JetStream elects its meta leader once the routes are up.
    const nats = await waitFor(async () => openNats(settings, silentLogger(), { replicas: 3 }).catch(() => undefined), 30_000, 'JetStream cluster');
    try {
      const jsm = await nats.nc.jetstreamManager();
      for (const stream of [JOBS_STREAM, EVENTS_STREAM, RUNS_BUCKET_STREAM]) {
        const info = await jsm.streams.info(stream);
        expect(info.config.num_replicas).toBe(3);
        expect(info.cluster?.replicas).toHaveLength(2);
      }
      // A later start with the default keeps the three replicas.
      const again = await openNats(settings, silentLogger());
      expect(Object.values(again.applied)).toEqual(['unchanged', 'unchanged', 'unchanged']);
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
      await nodes[0]!.stop();
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
