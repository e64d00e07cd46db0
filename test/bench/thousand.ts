import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { JobState } from '../../runtime/run/state.js';
import type { RunSummary } from '../../runtime/run/summary.js';
import { simulatorProcess } from '../helpers/sim-process.js';
import type { SimProcess } from '../helpers/sim-process.js';
import { median, natsVsEmbedded } from '../nats/bench-nats.js';
import { smallVmsPool } from '../sim/fixtures.js';

/**
 * The `thousand` and `thousand-cluster` sections of `npm run bench` (`npm run bench --
 * thousand`; only when named: half an hour or more on two cores): 1,000 VMs with 1 MiB disks
 * (half running, so each has its snapshot) on four workers, concurrency 4.
 *
 *   run_1000_vms_nats_vs_embedded   `vmbackup run` over NATS (one server), four workers,
 *                                   wall time / the same run embedded, concurrency 4     ≤ 1.5
 *   run_1000_vms_cluster_vs_embedded  the same on the three-node cluster                  ≤ 1.5
 *   coordinator_rss_1000_vs_100     peak RSS of a process running only the coordinator,
 *                                   a 1,000-VM run / a 100-VM run                        ≤ 1.5
 *   job_overhead_ms                 per VM, its job's time beyond its export phase (the
 *                                   transfer), median, over NATS (from the runs bucket)
 *
 * Each line is min/median/max over the rounds; each round measures its own baseline. The
 * simulators run in their own processes (the suite's run of the same is
 * test/nats/thousand.test.ts, the cluster's `npm run soak -- thousand`).
 */
/** The password of smallVmsPool's pool. */
const PASSWORD = 'secret';
const CONCURRENCY = ['--concurrency', '4'];

async function simulator(work: string, count: number): Promise<SimProcess> {
  const file = path.join(work, `pool-${count}.json`);
  await writeFile(file, JSON.stringify(smallVmsPool(count)));
  return simulatorProcess(file);
}

/** Per VM job: its time from start to end less its export phase's, in ms. */
export function jobOverheads(jobs: readonly JobState[]): number[] {
  return jobs
    .filter((j) => j.kind === 'vm' && j.startedAt !== undefined && j.finishedAt !== undefined && j.phaseMs.export !== undefined)
    .map((j) => Date.parse(j.finishedAt!) - Date.parse(j.startedAt!) - j.phaseMs.export!);
}

const spread = (xs: number[], digits = 2) => `${Math.min(...xs).toFixed(digits)}/${median(xs).toFixed(digits)}/${Math.max(...xs).toFixed(digits)}`;

/** `single`: the lines on one nats-server; `cluster`: the cluster's line. */
export async function thousandBench(work: string, opts: { rounds: number; single: boolean; cluster: boolean; note: (line: string) => void; print: (line: string) => void }): Promise<void> {
  const backedUp = (r: { summary: RunSummary }, count: number) => {
    const s = r.summary.categories['vm-export'];
    if (s === undefined || s.S + s.W !== count) throw new Error(`a run of ${count} VMs backed up ${JSON.stringify(s)}`);
  };
  const sims = { 100: await simulator(work, 100), 1000: await simulator(work, 1000) };
  try {
    // Peak RSS of the coordinator: a fresh coordinator process for each run, one round each.
    const rss: Record<number, number[]> = { 100: [], 1000: [] };
    const ratios: number[] = [];
    const overhead: number[] = [];
    for (let round = 0; opts.single && round < opts.rounds; round++) {
      for (const count of round % 2 === 0 ? [100, 1000] : [1000, 100]) {
        const r = await natsVsEmbedded({ simUrl: sims[count as 100 | 1000].url, user: 'root', password: PASSWORD, work, rounds: 1, workers: 4, args: CONCURRENCY, coordinator: true, note: opts.note });
        for (const run of [...r.embedded, ...r.nats]) backedUp(run, count);
        rss[count]!.push(r.coordinatorPeakRssMiB!);
        if (count === 1000) {
          ratios.push(r.ratio);
          overhead.push(median(r.nats.flatMap((x) => jobOverheads(x.jobs ?? []))));
        }
        opts.note(`  coordinator peak RSS, ${count} VMs: ${r.coordinatorPeakRssMiB!.toFixed(1)} MiB`);
      }
    }
    if (opts.single) {
      opts.print(`run_1000_vms_nats_vs_embedded=${spread(ratios)}`);
      opts.print(`coordinator_rss_1000_vs_100=${spread(rss[1000]!.map((x, i) => x / rss[100]![i]!))}`);
      opts.print(`job_overhead_ms=${spread(overhead, 0)}`);
    }
    if (opts.cluster) {
      const r = await natsVsEmbedded({ simUrl: sims[1000].url, user: 'root', password: PASSWORD, work, rounds: opts.rounds, workers: 4, args: CONCURRENCY, cluster: true, note: opts.note });
      for (const run of [...r.embedded, ...r.nats]) backedUp(run, 1000);
      opts.print(`run_1000_vms_cluster_vs_embedded=${spread(r.nats.map((n, i) => n.ms / r.embedded[i]!.ms))}`);
    }
  } finally {
    sims[100].stop();
    sims[1000].stop();
  }
}
