/**
 * `npx tsx test/bench/metrics.ts`: the gateway's GET /metrics over a backup_dir of 1,000 VMs
 * × 30 backup sets (90,000 files), against a bare listing of the same tree (readdir of
 * backup_dir and of each VM folder) in the same run; the medians of 7 rounds:
 *
 *   metrics_ms_1000          GET /metrics, answered from what the previous scrape read   < 200
 *   metrics_vs_list_ratio    … divided by the bare listing                               ≤ 3
 *   metrics_cold_ms_1000     the first GET /metrics of a gateway (every manifest read: 14 s on
 *                            the loaded 2-core build machine, once; later scrapes read only
 *                            the folders that changed)
 *
 * As a module: `metricsBench(work, print)`, for `npm run bench -- metrics`.
 */
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createGateway } from '../../runtime/gateway/app.js';
import { RecordingBus, TestClock, defaultRunOptions } from '../../runtime/gateway/test-helpers.js';
import { MemoryTriggerLog } from '../../runtime/gateway/trigger-log.js';
import { silentLogger } from '../../runtime/log.js';
import { MemoryRunStore } from '../../runtime/run/store.js';
import type { Manifest } from '../../runtime/storage/manifest.js';
import { dataFileName, formatStamp, manifestFileName, metaFileName } from '../../runtime/storage/naming.js';

const VMS = 1000;
const SETS = 30;
const ROUNDS = 7;
const TOKEN = 'bench-metrics-token-0123456789';

/** 1,000 VM folders of 30 complete sets each (xva, meta, manifest), as vmbackup writes them. */
export async function tree(backupDir: string): Promise<void> {
  const day = 86_400_000;
  // Eight VM folders at a time: the files are tiny, so the time is the file system's round
  // trips, and those overlap.
  const one = async (v: number) => {
    const name = `vm-${String(v).padStart(4, '0')}`;
    const dir = path.join(backupDir, name);
    await mkdir(dir, { recursive: true });
    const vm = { uuid: `00000000-0000-4000-8000-${String(v).padStart(12, '0')}`, name };
    await Promise.all(
      Array.from({ length: SETS }, async (_x, s) => {
        const stamp = formatStamp(new Date(Date.UTC(2026, 10, 1) + s * day));
        const xva = dataFileName(stamp, 'xva');
        const meta = metaFileName(stamp);
        const data = Buffer.alloc(512 + s);
        await writeFile(path.join(dir, xva), data);
        await writeFile(path.join(dir, meta), 'meta');
        const manifest: Manifest = {
          kind: 'vmbackup-set',
          version: 1,
          runId: `${stamp}-bench`,
          jobId: `vm.${vm.uuid}`,
          try: 1,
          vm,
          mode: 'vm',
          stamp,
          createdAt: new Date(Date.UTC(2026, 10, 1) + s * day + 60_000).toISOString(),
          bytes: data.length,
          files: [
            { name: xva, format: 'xva', size: data.length, xxh64: '0000000000000000' },
            { name: meta, format: 'meta', size: 4, xxh64: '0000000000000000' },
          ],
          timings: { exportMs: 41_000 },
          ...(s === SETS - 1 ? { verify: { at: new Date(Date.UTC(2026, 10, 1) + s * day + 120_000).toISOString(), ok: true } } : {}),
        };
        await writeFile(path.join(dir, manifestFileName(stamp)), JSON.stringify(manifest));
      }),
    );
  };
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < VMS) await one(next++);
    }),
  );
}

const trees = new Map<string, Promise<{ dir: string; writtenAt: number }>>();

/**
 * The tree of `tree()` under `work`, written once per process: the metrics and status
 * sections only read it, so they share it (writing and removing 90,000 files took most of
 * their time). It is removed with `work`. Resolves once it is old enough to be read as a
 * gateway reads a settled backup_dir: the reader remembers no folder younger than a few
 * seconds, so a tree just written would be read again at each request.
 */
export async function sharedTree(work: string): Promise<string> {
  let built = trees.get(work);
  if (built === undefined) {
    const dir = path.join(work, 'status-tree');
    built = tree(dir).then(() => ({ dir, writtenAt: Date.now() }));
    trees.set(work, built);
  }
  const { dir, writtenAt } = await built;
  const wait = writtenAt + 4_000 - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  return dir;
}

/** The least any status of the tree costs: listing it. */
export async function listTree(backupDir: string): Promise<number> {
  let n = 0;
  for (const d of await readdir(backupDir, { withFileTypes: true })) {
    if (d.isDirectory()) n += (await readdir(path.join(backupDir, d.name), { withFileTypes: true })).length;
  }
  return n;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** A gateway over `backupDir` with no NATS behind it (an in-memory run store), for reading benches. */
export function benchGateway(backupDir: string, token: string) {
  return createGateway({
    bus: new RecordingBus(),
    store: new MemoryRunStore(),
    triggers: new MemoryTriggerLog(new TestClock()),
    backupDir,
    tokens: [token],
    bodyLimit: 1 << 20,
    alertmanagerLabel: 'vm',
    runDefaults: defaultRunOptions(backupDir),
    clock: new TestClock(),
    log: silentLogger(),
    ready: async () => true,
  });
}

export async function metricsBench(work: string, print: (line: string) => void): Promise<void> {
  const backupDir = await sharedTree(work);
  const app = benchGateway(backupDir, TOKEN);
  const scrape = async (): Promise<number> => {
    const started = performance.now();
    const res = await app.request('/metrics', { headers: { Authorization: `Bearer ${TOKEN}` } });
    const text = await res.text();
    if (res.status !== 200 || !text.includes(`vmbackup_backup_points{vm="vm-0999"} ${SETS}`)) throw new Error(`GET /metrics answered ${res.status}: ${text.slice(0, 300)}`);
    return performance.now() - started;
  };
  const cold = await scrape();
  const ours: number[] = [];
  const list: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    // Alternated, so that neither side is charged the other's garbage or cache misses.
    const t = performance.now();
    if ((await listTree(backupDir)) !== VMS * SETS * 3) throw new Error('the tree is not what was written');
    list.push(performance.now() - t);
    ours.push(await scrape());
  }
  print(`metrics_ms_1000=${median(ours).toFixed(0)}`);
  print(`metrics_vs_list_ratio=${(median(ours) / median(list)).toFixed(2)}`);
  print(`metrics_cold_ms_1000=${cold.toFixed(0)}`);
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const work = await mkdtemp(path.join(os.tmpdir(), 'vmb-bench-metrics-'));
  try {
    await metricsBench(work, (line) => console.log(line));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
