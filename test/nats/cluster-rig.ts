import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from '../helpers/cli.js';
import { freePort, startNatsServer } from '../helpers/nats-server.js';
import type { NatsServer } from '../helpers/nats-server.js';

/** One node of the three-node example, as started on this machine. */
export interface ClusterNode {
  /** `vmbackup-nats-1` …: the server_name of infra/nats/cluster/nats-<n>.conf. */
  name: string;
  server: NatsServer;
  /** The node's HTTP monitoring port (`http:` of the example, moved to a free port). */
  monitorPort: number;
}

/**
 * The three-node example (infra/nats/cluster/) as written, on this machine: only addresses,
 * ports and store dirs are changed. `url` lists every node, as clients are told to.
 *
 * @example
 *   const cluster = await startCluster();
 *   const leader = await cluster.streamLeader('VMBACKUP_JOBS'); // → 'vmbackup-nats-2'
 *   await cluster.node(leader).server.restart({ signal: 'SIGKILL', downMs: 2000 });
 */
export interface Cluster {
  nodes: ClusterNode[];
  /** `nats://127.0.0.1:a, nats://127.0.0.1:b, nats://127.0.0.1:c` */
  url: string;
  node(name: string): ClusterNode;
  /** The meta leader, as the first node that answers says (undefined during an election). */
  metaLeader(): Promise<string | undefined>;
  /** The leader of a stream (KV buckets are streams: `KV_vmbackup-runs`). */
  streamLeader(stream: string): Promise<string | undefined>;
  /** The leader of a durable consumer. */
  consumerLeader(stream: string, consumer: string): Promise<string | undefined>;
  /** The nodes that clients named `name` (a prefix: `vmbackup worker`) are connected to. */
  clientNodes(name: string): Promise<string[]>;
  stop(): Promise<void>;
}

export async function startCluster(): Promise<Cluster> {
  const ids = [0, 1, 2];
  const client = await Promise.all(ids.map(() => freePort()));
  const route = await Promise.all(ids.map(() => freePort()));
  const monitor = await Promise.all(ids.map(() => freePort()));
  const servers = await Promise.all(
    ids.map((i) =>
      startNatsServer({
        port: client[i]!,
        template: ({ port, storeDir }) =>
          readFileSync(path.join(ROOT, `infra/nats/cluster/nats-${i + 1}.conf`), 'utf8')
            .replace('listen: 0.0.0.0:4222', `listen: 127.0.0.1:${port}`)
            .replace(/^http: .*$/m, `http: 127.0.0.1:${monitor[i]}`)
            .replace('listen: 0.0.0.0:6222', `listen: 127.0.0.1:${route[i]}`)
            .replace(/nats-route:\/\/nats-(\d)\.example\.org:6222/g, (_m, n: string) => `nats-route://127.0.0.1:${route[Number(n) - 1]}`)
            .replace('"/var/lib/nats/jetstream"', JSON.stringify(storeDir)),
      }),
    ),
  );
  const nodes: ClusterNode[] = ids.map((i) => ({ name: `vmbackup-nats-${i + 1}`, server: servers[i]!, monitorPort: monitor[i]! }));
  const monitorGet = async (n: ClusterNode, what: string): Promise<unknown> => {
    const res = await fetch(`http://127.0.0.1:${n.monitorPort}/${what}`, { signal: AbortSignal.timeout(2_000) });
    return res.json();
  };
  /** Asks each node in turn; the first answer that has the field wins. */
  const ask = async <T>(what: string, pick: (body: unknown) => T | undefined): Promise<T | undefined> => {
    for (const n of nodes) {
      try {
        const v = pick(await monitorGet(n, what));
        if (v !== undefined && v !== '') return v;
      } catch {
        // that node is down: ask the next
      }
    }
    return undefined;
  };
  type Jsz = { account_details?: { stream_detail?: { name: string; cluster?: { leader?: string }; consumer_detail?: { name: string; cluster?: { leader?: string } }[] }[] }[] };
  const streams = (body: unknown) => (body as Jsz).account_details?.flatMap((a) => a.stream_detail ?? []) ?? [];
  return {
    nodes,
    url: servers.map((s) => s.url).join(', '),
    node(name) {
      const n = nodes.find((x) => x.name === name);
      if (n === undefined) throw new Error(`no node ${name}`);
      return n;
    },
    metaLeader: () => ask('jsz', (b) => (b as { meta_cluster?: { leader?: string } }).meta_cluster?.leader),
    streamLeader: (stream) => ask('jsz?accounts=true&streams=true', (b) => streams(b).find((s) => s.name === stream)?.cluster?.leader),
    consumerLeader: (stream, consumer) =>
      ask('jsz?accounts=true&streams=true&consumers=true', (b) => streams(b).find((s) => s.name === stream)?.consumer_detail?.find((c) => c.name === consumer)?.cluster?.leader),
    async clientNodes(name) {
      const found: string[] = [];
      for (const n of nodes) {
        try {
          const body = (await monitorGet(n, 'connz?limit=1024')) as { connections?: { name?: string }[] };
          if (body.connections?.some((c) => c.name?.startsWith(name) === true)) found.push(n.name);
        } catch {
          // a node that is down has nobody connected
        }
      }
      return found;
    },
    async stop() {
      await Promise.all(servers.map((s) => s.stop()));
    },
  };
}
