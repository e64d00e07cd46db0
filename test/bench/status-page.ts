/**
 * `npx tsx test/bench/status-page.ts`: what the status page asks the gateway for, over the
 * backup_dir of test/bench/metrics.ts (1,000 VMs × 30 sets), against a bare listing of the
 * same tree in the same run; the medians of 7 rounds:
 *
 *   status_page_ms_1000        GET /v1/status (each VM, its chain, the runs)        < 200
 *   status_page_vs_list_ratio  … divided by the bare listing                         ≤ 3
 *   progress_ms_1000           GET /v1/progress (polled each second by the page)
 *
 * As a module: `statusPageBench(work, print)`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { StatusSnapshot } from '../../runtime/status/vm-status.js';
import { benchGateway, listTree, sharedTree } from './metrics.js';

const ROUNDS = 7;
const TOKEN = 'bench-status-page-token-0123456789';
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function statusPageBench(work: string, print: (line: string) => void): Promise<void> {
  const backupDir = await sharedTree(work);
  const app = benchGateway(backupDir, TOKEN);
  const timed = async (url: string, check: (body: unknown) => boolean): Promise<number> => {
    const started = performance.now();
    const res = await app.request(url, { headers: { Authorization: `Bearer ${TOKEN}` } });
    const body = (await res.json()) as unknown;
    if (res.status !== 200 || !check(body)) throw new Error(`GET ${url} answered ${res.status}: ${JSON.stringify(body).slice(0, 300)}`);
    return performance.now() - started;
  };
  const status = () => timed('/v1/status', (b) => (b as StatusSnapshot).vms.length === 1000 && (b as StatusSnapshot).vms.every((v) => v.points === 30));
  await status();
  const ours: number[] = [];
  const list: number[] = [];
  const progress: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const t = performance.now();
    if ((await listTree(backupDir)) !== 1000 * 30 * 3) throw new Error('the tree is not what was written');
    list.push(performance.now() - t);
    ours.push(await status());
    progress.push(await timed('/v1/progress', (b) => Array.isArray((b as { runs?: unknown }).runs)));
  }
  print(`status_page_ms_1000=${median(ours).toFixed(0)}`);
  print(`status_page_vs_list_ratio=${(median(ours) / median(list)).toFixed(2)}`);
  print(`progress_ms_1000=${median(progress).toFixed(1)}`);
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const work = await mkdtemp(path.join(os.tmpdir(), 'vmb-bench-status-page-'));
  try {
    await statusPageBench(work, (line) => console.log(line));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
