import { EVENTS_STREAM } from '../../infra/nats/jetstream.js';
import { openNats } from '../../runtime/bus/nats-connect.js';
import type { NatsRuntime } from '../../runtime/bus/nats-connect.js';
import { silentLogger } from '../../runtime/log.js';
import { startCluster } from '../nats/cluster-rig.js';

/**
 * How long a durable event consumer (the coordinator's kind) stalls when its leader dies:
 * a three-node cluster, one event published every 200 ms, the consumer's leader killed
 * (SIGKILL, started again after 2 s) `kills` times; for each, the longest time from an
 * event's publication to its handling. docs/cluster.md quotes the figures.
 */
export async function measureStall(opts: { kills: number; windowMs?: number; print?: (line: string) => void }): Promise<number[]> {
  const print = opts.print ?? (() => {});
  const cluster = await startCluster();
  let nats: NatsRuntime | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    for (let i = 0; nats === undefined; i++) {
      nats = await openNats({ nats_url: cluster.url, concurrency: 2 }, silentLogger(), { replicas: 3 }).catch((error: unknown) => {
        if (i > 60) throw error;
        return new Promise<undefined>((r) => setTimeout(() => r(undefined), 500));
      });
    }
    const bus = nats.bus;
    const sent = new Map<number, number>();
    const waits: number[] = [];
    await bus.subscribe('vmbackup.events.>', { durable: 'stall-measure' }, async (_s, data) => {
      const n = (data as { n: number }).n;
      const at = sent.get(n);
      if (at !== undefined) waits.push(Date.now() - at);
      sent.delete(n);
    });
    let n = 0;
    timer = setInterval(() => {
      const k = ++n;
      sent.set(k, Date.now());
      void bus.publish('vmbackup.events.stall.measure.done', { n: k }, { id: `stall-${k}` }).catch(() => {});
    }, 200);
    const out: number[] = [];
    for (let i = 1; i <= opts.kills; i++) {
      await new Promise((r) => setTimeout(r, 4_000));
      waits.length = 0;
      const leader = await cluster.consumerLeader(EVENTS_STREAM, 'stall-measure');
      if (leader === undefined) continue;
      await cluster.node(leader).server.restart({ signal: 'SIGKILL', downMs: 2_000 });
      await new Promise((r) => setTimeout(r, opts.windowMs ?? 45_000));
      const longest = Math.max(0, ...waits, ...[...sent.values()].map((t) => Date.now() - t));
      out.push(longest);
      print(`kill ${i} (consumer leader ${leader}): longest wait of an event ${(longest / 1000).toFixed(1)} s${sent.size > 0 ? `, ${sent.size} still waiting` : ''}`);
    }
    return out;
  } finally {
    clearInterval(timer);
    await nats?.close().catch(() => {});
    await cluster.stop();
  }
}
