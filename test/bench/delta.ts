/**
 * Incremental backups (`delta_exports`) for `npm run bench -- delta`, each a ratio of two
 * figures measured in the same rounds, every backup a real `vmbackup` process against the
 * simulator in its own process (NBD over TLS):
 *
 *   delta_bytes_ratio_1pct            a 256 MiB disk, 1 % of it rewritten in 1 MiB-aligned runs
 *                                     (clustered, as guests write): what the delta point adds
 *                                     to the store / what the disk's full point stored   ≤ 0.03
 *   delta_bytes_ratio_1pct_scattered  the same with 1 % of the 64 KiB blocks rewritten anywhere
 *                                     (uniform scatter: ~15 % of the 1 MiB chunks touched)
 *   delta_time_ratio_1pct             wall time of that clustered delta backup / a full XVA
 *                                     export of the same VM (`vmbackup -e VM`)            ≤ 0.1
 *                                     (its text also gives a delta run with nothing changed:
 *                                     what a run costs whatever the disk)
 *   dedup_ratio_clones                10 VMs cloned from one 64 MiB template, each then with
 *                                     2 % of its own clustered writes, backed up as
 *                                     delta-exports into one store / the store of one    ≤ 1.5
 */
import { execFile } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { XapiClient } from '../../runtime/xapi/client.js';
import { nextSecond } from '../e2e/delta-helpers.js';
import { vmbackup } from '../helpers/cli.js';
import { simulatorProcess } from '../helpers/sim-process.js';
import type { SimProcess } from '../helpers/sim-process.js';
import { alternate, benchLine, median } from './report.js';

const MiB = 1 << 20;
const ROUNDS = 3;
const CLONES = 10;

/** Bytes of every file under `dir`: chunks, indexes, manifests. */
async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) if (e.isFile()) total += (await stat(path.join(e.parentPath, e.name))).size;
  return total;
}

/** A backup base directory (`-b`) with exports/, and the arguments of a run into it. */
async function base(work: string, name: string, sim: SimProcess, password: string): Promise<{ exports: string; args: string[] }> {
  const dir = await mkdtemp(path.join(work, `${name}-`));
  await mkdir(path.join(dir, 'exports'));
  return { exports: path.join(dir, 'exports'), args: ['-b', dir, '--xapi', sim.url, '--user', 'root', '--password-file', password, '--no-pool-backup', '--no-host-backup', '-l', 'warning'] };
}

/** The second each base directory's last run started in. */
const lastStart = new Map<string, number>();

/**
 * One `vmbackup` run, wall ms. Its stamp is its second, so a run into a base directory whose
 * last run started in the same second waits for the next one (runs into other bases need not).
 */
async function timed(args: string[]): Promise<number> {
  const baseDir = args[args.indexOf('-b') + 1]!;
  if (lastStart.get(baseDir) === Math.floor(Date.now() / 1000)) await nextSecond();
  lastStart.set(baseDir, Math.floor(Date.now() / 1000));
  const t = performance.now();
  const r = await vmbackup(args, { timeoutMs: 300_000 });
  const ms = performance.now() - t;
  if (r.code !== 0) throw new Error(`vmbackup ${args.slice(-4).join(' ')} exited ${r.code}:\n${r.stderr.slice(-2000)}`);
  return ms;
}

/** A delta-export of `vm` into `b`: wall ms and the bytes it added to the store. */
async function deltaBackup(b: { exports: string; args: string[] }, vm: string): Promise<{ ms: number; added: number }> {
  const before = await dirBytes(b.exports);
  const ms = await timed([...b.args, '--delta-export', `${vm}:100`]);
  return { ms, added: (await dirBytes(b.exports)) - before };
}

async function churn(sim: SimProcess, vm: string, percent: number, pattern: 'clustered' | 'scattered'): Promise<void> {
  const res = await fetch(`${sim.url}/_sim/churn`, { method: 'POST', body: JSON.stringify({ vm, percent, pattern }) });
  if (res.status !== 200) throw new Error(`churn ${vm}: ${await res.text()}`);
}

export async function deltaBench(work: string, note: (line: string) => void): Promise<void> {
  const clone = (r: number, i: number) => `c${r}-${String(i).padStart(2, '0')}`;
  const poolFile = path.join(work, 'pool-delta.json');
  await writeFile(
    poolFile,
    JSON.stringify({
      credentials: { user: 'root', password: 'bench' },
      hosts: [{ name_label: 'bench-host' }],
      srs: [{ name_label: 'SR', size_gib: 100, used_gib: 1 }],
      networks: [{ name_label: 'Storage', purpose: ['nbd'] }],
      vms: [
        { name_label: 'clustered', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 256, fill: 'pattern' }], vifs: [] },
        { name_label: 'scattered', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 256, fill: 'pattern' }], vifs: [] },
        { name_label: 'tpl', power_state: 'Halted', is_a_template: true, disks: [{ device: 'xvda', size_mib: 64, fill: 'pattern' }], vifs: [] },
        ...Array.from({ length: ROUNDS * CLONES }, (_, k) => ({ name_label: clone(Math.floor(k / CLONES), k % CLONES), power_state: 'Halted', disks: [], vifs: [] })),
      ],
    }),
  );
  const password = path.join(work, 'password');
  await writeFile(password, 'bench');
  await chmod(password, 0o600);
  const sim = await simulatorProcess(poolFile);
  try {
    // The clones: each a copy of the template's disk (VDI.clone), as XAPI's VM clone makes them.
    const xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'bench' });
    try {
      const [tpl] = await xapi.call<string[]>('VM.get_by_name_label', 'tpl');
      const [tplVbd] = await xapi.call<string[]>('VM.get_VBDs', tpl);
      const tplVdi = await xapi.call<string>('VBD.get_VDI', tplVbd);
      for (let k = 0; k < ROUNDS * CLONES; k++) {
        const [vm] = await xapi.call<string[]>('VM.get_by_name_label', clone(Math.floor(k / CLONES), k % CLONES));
        await xapi.createVbd({ vm: vm!, vdi: await xapi.call<string>('VDI.clone', tplVdi, {}), userdevice: '0', bootable: true });
      }
    } finally {
      await xapi.close();
    }

    // The full points the deltas are measured against.
    const cb = await base(work, 'clustered', sim, password);
    const sb = await base(work, 'scattered', sim, password);
    const xb = await base(work, 'xva', sim, password);
    const fullC = await deltaBackup(cb, 'clustered');
    const fullS = await deltaBackup(sb, 'scattered');
    note(`  delta: full points of 256 MiB stored ${(fullC.added / MiB).toFixed(1)} MiB (clustered VM), ${(fullS.added / MiB).toFixed(1)} MiB (scattered VM) in ${(fullC.ms / 1000).toFixed(1)} s`);
    const xva = async () => {
      const ms = await timed([...xb.args, '-e', 'clustered']);
      await rm(path.join(xb.exports, 'clustered'), { recursive: true, force: true });
      await promisify(execFile)('sync');
      return ms;
    };
    await xva(); // warm-up

    const clustered: { ms: number; added: number }[] = [];
    const scattered: { ms: number; added: number }[] = [];
    const xvaMs: number[] = [];
    const idle: number[] = [];
    const clones: { all: number; one: number }[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      await churn(sim, 'clustered', 1, 'clustered');
      await churn(sim, 'scattered', 1, 'scattered');
      const [d, x] = await alternate(r, () => deltaBackup(cb, 'clustered'), xva);
      // What any delta run costs, nothing changed: a process, snapshot, changed blocks, point.
      idle.push((await deltaBackup(cb, 'clustered')).ms);
      clustered.push(d);
      xvaMs.push(x);

      // The lines below are bytes, not times: their runs go side by side, into bases of their own.
      // This round's 10 fresh clones, each with 2 % of its own writes: all in one store, one alone.
      for (let i = 0; i < CLONES; i++) await churn(sim, clone(r, i), 2, 'clustered');
      const all = await base(work, `clones${r}`, sim, password);
      const one = await base(work, `clone${r}`, sim, password);
      // (The store of one backs up a VM of the ten: it must not run beside theirs.)
      const [s] = await Promise.all([deltaBackup(sb, 'scattered'), timed([...all.args, '--concurrency', '2', '--delta-export', `c${r}-.*`])]);
      await timed([...one.args, '--delta-export', clone(r, 0)]);
      scattered.push(s);
      clones.push({ all: await dirBytes(all.exports), one: await dirBytes(one.exports) });
      await rm(path.dirname(all.exports), { recursive: true, force: true });
      await rm(path.dirname(one.exports), { recursive: true, force: true });
      note(
        `  delta round ${r + 1}: 1 % clustered adds ${(d.added / MiB).toFixed(2)} MiB in ${(d.ms / 1000).toFixed(2)} s (XVA export ${(x / 1000).toFixed(2)} s, a delta with nothing changed ${(idle[r]! / 1000).toFixed(2)} s); ` +
          `1 % scattered adds ${(s.added / MiB).toFixed(2)} MiB; ${CLONES} clones ${(clones[r]!.all / MiB).toFixed(1)} MiB, one ${(clones[r]!.one / MiB).toFixed(1)} MiB`,
      );
    }
    const mib = (xs: number[]) => `${(median(xs) / MiB).toFixed(2)} MiB`;
    benchLine('delta_bytes_ratio_1pct', clustered.map((d) => d.added / fullC.added), {
      figure: `store growth after 1 % clustered churn (1 MiB-aligned runs) of 256 MiB, delta point ${mib(clustered.map((d) => d.added))}`,
      baseline: `the full point ${mib([fullC.added])}`,
      digits: 3,
    });
    benchLine('delta_bytes_ratio_1pct_scattered', scattered.map((d) => d.added / fullS.added), {
      figure: `store growth after 1 % scattered churn (64 KiB blocks anywhere, 1 MiB chunks) of 256 MiB, delta point ${mib(scattered.map((d) => d.added))}`,
      baseline: `the full point ${mib([fullS.added])}`,
      digits: 3,
    });
    benchLine('delta_time_ratio_1pct', clustered.map((d, i) => d.ms / xvaMs[i]!), {
      figure: `vmbackup --delta-export after 1 % clustered churn ${(median(clustered.map((d) => d.ms)) / 1000).toFixed(2)} s (with nothing changed ${(median(idle) / 1000).toFixed(2)} s)`,
      baseline: `vmbackup -e of the same 256 MiB VM (XVA) ${(median(xvaMs) / 1000).toFixed(2)} s`,
      digits: 3,
    });
    benchLine('dedup_ratio_clones', clones.map((c) => c.all / c.one), {
      figure: `store of ${CLONES} clones of a 64 MiB template, 2 % clustered churn each ${mib(clones.map((c) => c.all))}`,
      baseline: `store of one ${mib(clones.map((c) => c.one))}`,
    });
  } finally {
    sim.stop();
  }
}
