import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { connect } from 'nats';
import type { RunSummary } from '../../runtime/run/summary.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import { startNatsServer } from '../helpers/nats-server.js';
import { startCluster } from '../nats/cluster-rig.js';
import { smallVmsPool } from '../sim/fixtures.js';
import { startWorker } from '../nats/workers.js';
import type { WorkerProcess } from '../nats/workers.js';
import { leftoversOf } from './cluster.js';

export interface ThousandResult {
  seconds: number;
  summary: RunSummary;
  /** VM folders holding a finished XVA. */
  backups: number;
  /** Partial files, snapshots on the pool, jobs not acked (empty when clean). */
  leftovers: string[];
}

/**
 * Many VMs on four workers: the simulator with `vms` VMs of one 1 MiB disk (every other one
 * running, so it has a snapshot to clean up), four `vmbackup worker --concurrency 4` on one
 * nats-server or on the three-node cluster (infra/nats/cluster/, streams at three
 * replicas), and one `vmbackup run`. Says how long it took, how many VMs have their backup,
 * and what was left over.
 *
 * @example const r = await thousandVms({ vms: 1000, nodes: 1 }); // r.backups === 1000
 */
export async function thousandVms(opts: { vms: number; nodes: 1 | 3; print?: (line: string) => void }): Promise<ThousandResult> {
  const print = opts.print ?? (() => {});
  const sim = await httpsSim(smallVmsPool(opts.vms));
  const ws = await workspace();
  const server = opts.nodes === 3 ? await startCluster() : await startNatsServer();
  const args = [...ws.args(sim), '--nats', server.url, '--concurrency', '4'];
  const workers: WorkerProcess[] = [];
  try {
    for (let i = 0; i < 4; i++) workers.push(startWorker([...args, ...(opts.nodes === 3 ? ['--replicas', '3'] : [])], { readyTimeoutMs: 60_000 }));
    await Promise.all(workers.map((w) => w.ready));
    print(`${opts.vms} VMs, 4 workers, ${opts.nodes === 3 ? 'three-node cluster' : 'one nats-server'}: running`);
    const started = Date.now();
    const r = await vmbackup(['run', ...args, '--json'], { timeoutMs: 3_600_000 });
    const seconds = (Date.now() - started) / 1000;
    if (r.code !== 0) throw new Error(`vmbackup run exited ${r.code}:\n${r.stderr.slice(-3000)}`);
    const summary = JSON.parse(r.stdout) as RunSummary;
    let backups = 0;
    for (const folder of await readdir(ws.exports)) {
      if ((await readdir(path.join(ws.exports, folder))).some((f) => f.endsWith('.xva'))) backups++;
    }
    const nc = await connect({ servers: server.url.split(', ') });
    try {
      const leftovers = await leftoversOf(nc, sim, ws.exports, 30);
      print(`finished in ${seconds.toFixed(1)} s: ${backups} backups; ${leftovers.length === 0 ? 'nothing left over' : `LEFT OVER: ${leftovers.join('; ')}`}`);
      return { seconds, summary, backups, leftovers };
    } finally {
      await nc.close();
    }
  } finally {
    await Promise.all(workers.map((w) => w.stop(10_000)));
    await server.stop();
    await sim.close();
    await rm(ws.base, { recursive: true, force: true });
  }
}
