/**
 * `npm run bench`: speed and memory, each measured against a baseline in the same run (these
 * machines are shared and noisy, so only ratios and differences mean something), over at
 * least 3 rounds whose order alternates. Every line reads
 *
 *   name=<median> min=… max=… rounds=N | <figure> / <baseline>
 *
 * (test/bench/report.ts). `npm run bench -- NAME…` runs the sections whose name, or one of
 * whose lines' names, is given: `npm run bench -- startup_ms export_raw`. The whole bench
 * must take under 5 minutes on two quiet cores (docs/performance.md, "The bench's own
 * time"): a fixture several sections read is built once per process (the 1 GiB VM's
 * simulator, the 1,000-VM tree), and a section's size is the least that keeps its line's
 * meaning.
 *
 *   section       line                         what                                              target
 *   startup       startup_ms                   `vmbackup --version`, wall ms (against `node -e 0`) ≤ 250
 *   export        export_vs_curl_ratio         1 GiB XVA through snapshot+export to disk (hash,
 *                                              fsync, rename), throughput / `curl -o`
 *                 export_vs_curl_fsync_ratio   … / `curl -o` + fsync of the same bytes            ≥ 0.9
 *   export_zstd   export_zstd_vs_curl_ratio    the same with compress = zstd (XAPI compresses)    ≥ 0.9
 *   export_raw    export_raw_vs_curl_ratio     a 1 GiB disk as raw (vdi-export) / curl + fsync    ≥ 0.9
 *   parallel2     export_parallel2_ratio       two 512 MiB VMs exported at once in one process /
 *                                              two `curl -o` + fsync side by side                 ≥ 0.9
 *   run           run_vs_curl_ratio            a whole `vmbackup -e big` run (1 GiB VM, embedded,
 *                                              a process) / `curl -o` + fsync of its export       ≥ 0.85
 *   rss           rss_growth_mib               peak RSS exporting a 2 GiB disk − a 256 MiB disk   < 32
 *   plan          plan_ms_5000                 plan over 5,000 VMs with 100 selection entries     < 1000
 *                 plan_vs_fetch_ratio          … / one bare VM.get_all_records of the same pool
 *   nats          nats_vs_embedded_ratio       50 VMs with 1 MiB disks: `vmbackup run` through
 *                                              NATS with two workers / the same run embedded     ≤ 1.5
 *   sim           sim_export_vs_plain_http_ratio  the simulator's 1 GiB XVA export to `curl -o
 *                                              /dev/null` / a bare node HTTP server               ≥ 0.3
 *                 sim_pattern_vs_copy_ratio    pattern disk reads / filling fresh buffers by copy ≥ 0.2
 *   chunks, gc    chunk_<n>mib_…, gc_…         chunk store (chunkstore.ts beside this file)
 *   restore       chunk_restore_vs_full_ratio  the newest of 8 points restored to a file / a raw
 *                                              copy of the same disk, each in a fresh process
 *                                              after a sync, its input in the page cache          ≥ 0.8
 *                 restore_<raw|vhd>_rss_growth_mib  peak RSS restoring 512 MiB − 64 MiB           < 32
 *   delta         delta_bytes_ratio_1pct       incremental backups (delta.ts beside this file): store
 *                                              growth of a 1 % clustered-write delta / the full
 *                                              point (256 MiB disk)                               ≤ 0.03
 *                 delta_bytes_ratio_1pct_scattered  … with 1 % of 64 KiB blocks written anywhere
 *                 delta_time_ratio_1pct        that delta backup's wall time / `vmbackup -e` (XVA) ≤ 0.1
 *                 dedup_ratio_clones           store of 10 template clones (2 % own writes each)
 *                                              / the store of one                                 ≤ 1.5
 *   metrics       metrics_ms_1000              GET /metrics over 1,000 VMs × 30 sets, ms           < 200
 *                 metrics_vs_list_ratio        … / a bare listing of the same tree               ≤ 3
 *   status        status_page_ms_1000          GET /v1/status (the page's data), 1,000 VMs × 30   < 200
 *                 status_page_vs_list_ratio    … / a bare listing of the same tree               ≤ 3
 *                 progress_ms_1000             GET /v1/progress
 *   thousand      run_1000_vms_nats_vs_embedded, coordinator_rss_1000_vs_100, job_overhead_ms:
 *                                              1,000 VMs on four workers (thousand.ts); with
 *                                              `thousand-cluster` on the three-node cluster.
 *                                              Only when named: half an hour or more on two cores
 *
 * A new line: add a section to SECTIONS (its name, the names of the lines it prints, and
 * what it runs), measure its figure and its baseline in the same rounds (`alternate`), and
 * print it with `benchLine`; add it to this table and to README.md's.
 */
import { execFile, spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { plan } from '../../functions/plan/plan.js';
import { localCtx } from '../../runtime/function.js';
import { silentLogger } from '../../runtime/log.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { vmbackup } from '../helpers/cli.js';
import { simulatorProcess } from '../helpers/sim-process.js';
import type { SimProcess } from '../helpers/sim-process.js';
import { alternate, benchLine, median, rate } from './report.js';
import { runOptions } from '../helpers/jobs.js';

const run = promisify(execFile);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const tsx = path.join(root, 'node_modules/.bin/tsx');
const GiB = 1 << 30;
const ROUNDS = 3;
/** VMs of the `nats` section's pool (1 MiB disks each). */
const NATS_VMS = 50;
/** The `rss` section's disks: peak RSS must not grow with the disk (8× here). */
const RSS_SMALL_MIB = 256;
const RSS_LARGE_MIB = 2048;

/** The simulator in its own process, so it does not share our event loop or our RSS. */
const simulator = simulatorProcess;

async function pool(dir: string, vms: { name: string; mib: number }[]): Promise<string> {
  const file = path.join(dir, `pool-${vms[0]?.name ?? 'empty'}-${vms.length}.json`);
  await writeFile(
    file,
    JSON.stringify({
      credentials: { user: 'root', password: 'bench' },
      hosts: [{ name_label: 'bench-host' }],
      srs: [{ name_label: 'SR', size_gib: 100, used_gib: 1 }],
      vms: vms.map((v) => ({ name_label: v.name, power_state: 'Halted', disks: [{ device: 'xvda', size_mib: v.mib, fill: 'pattern' }], vifs: [] })),
    }),
  );
  return file;
}

/**
 * The simulator serving one 1 GiB VM, `big`, started by the first section that needs it and
 * shared by the export, export_zstd, export_raw, run and sim sections (each of their lines
 * alternates its own figure and baseline against it); stopped when the bench ends.
 */
let bigSim: Promise<SimProcess> | undefined;
async function withBigSim<T>(work: string, f: (sim: SimProcess, vm: { uuid: string; name: string; vdi: string }) => Promise<T>): Promise<T> {
  bigSim ??= pool(work, [{ name: 'big', mib: 1024 }]).then((file) => simulator(file));
  const sim = await bigSim;
  return f(sim, await vmOf(sim.url, 'big'));
}

/** A simulator serving `vms`, for the time of `f`. */
async function withSim<T>(work: string, vms: { name: string; mib: number }[], f: (sim: SimProcess) => Promise<T>): Promise<T> {
  const sim = await simulator(await pool(work, vms));
  try {
    return await f(sim);
  } finally {
    sim.stop();
  }
}

async function rpc(url: string, method: string, params: unknown[]): Promise<unknown> {
  const res = await fetch(`${url}/jsonrpc`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) });
  const body = (await res.json()) as { result?: unknown; error?: unknown };
  if (body.error !== undefined) throw new Error(`${method}: ${JSON.stringify(body.error)}`);
  return body.result;
}

const login = async (url: string) => (await rpc(url, 'session.login_with_password', ['root', 'bench'])) as string;

/** A VM's uuid and the uuid of its disk xvda. */
async function vmOf(url: string, name: string): Promise<{ uuid: string; name: string; vdi: string }> {
  const session = await login(url);
  const [ref] = (await rpc(url, 'VM.get_by_name_label', [session, name])) as string[];
  const uuid = (await rpc(url, 'VM.get_uuid', [session, ref])) as string;
  const [vbd] = (await rpc(url, 'VM.get_VBDs', [session, ref])) as string[];
  const vdi = (await rpc(url, 'VDI.get_uuid', [session, await rpc(url, 'VBD.get_VDI', [session, vbd])])) as string;
  await rpc(url, 'session.logout', [session]);
  return { uuid, name, vdi };
}

interface Export {
  bytes: number;
  ms: number;
  maxRssMiB: number;
}

/**
 * The real snapshot + export functions in a fresh process (export-once.ts): `vms` at once,
 * `kind` vm (XVA) or vdi:raw / vdi:vhd; the files are removed after. Settles the disk after.
 */
async function exportOnce(sim: SimProcess, vms: { uuid: string; name: string }[], dir: string, opts: { compress?: 'none' | 'gzip' | 'zstd'; kind?: string } = {}): Promise<Export> {
  const args = [path.join(root, 'test/bench/export-once.ts'), sim.url, 'root', 'bench', dir, opts.compress ?? 'none', opts.kind ?? 'vm', ...vms.map((v) => `${v.uuid}:${v.name}`)];
  const { stdout } = await run(tsx, args, { maxBuffer: 1 << 20 });
  await Promise.all(vms.map((v) => rm(path.join(dir, `bench-${v.name}`), { recursive: true, force: true })));
  await run('sync');
  return JSON.parse(stdout) as Export;
}

interface Curl {
  bytes: number;
  /** Until curl wrote its last byte. */
  ms: number;
  /** … and the file was fsynced (`sync FILE`), the durability vmbackup gives its files. */
  syncedMs: number;
}

/**
 * `curl -o` of an XAPI handler (`pathAndQuery` without the session), then an fsync of the
 * file: the least moving these bytes to this disk can cost. Logged in before the clock
 * starts; the file is removed and the disk settled after.
 */
async function curlOnce(sim: SimProcess, pathAndQuery: string, file: string): Promise<Curl> {
  const session = await login(sim.url);
  const started = performance.now();
  const { stdout } = await run('curl', ['-sS', '-o', file, '-w', '%{size_download}', `${sim.url}${pathAndQuery}&session_id=${session}`]);
  const ms = performance.now() - started;
  await run('sync', [file]);
  const syncedMs = performance.now() - started;
  await rpc(sim.url, 'session.logout', [session]);
  await rm(file, { force: true });
  await run('sync');
  return { bytes: Number(stdout), ms, syncedMs };
}

/**
 * Our bytes and curl's must be the same transfer: an XVA's ova.xml may differ by a few blocks
 * (times, task), which compressed can shift the rest by a little more.
 */
function sameBytes(what: string, ours: number, curl: number): void {
  if (Math.abs(ours - curl) > Math.max(1 << 20, curl * 0.02)) throw new Error(`${what}: vmbackup wrote ${ours} bytes, curl ${curl}`);
}

/** `curl -o /dev/null` of an XAPI handler: warms the simulator's side (its JIT) without writing. */
async function warmUp(sim: SimProcess, pathAndQuery: string): Promise<void> {
  const session = await login(sim.url);
  await run('curl', ['-sS', '-o', '/dev/null', `${sim.url}${pathAndQuery}&session_id=${session}`]);
  await rpc(sim.url, 'session.logout', [session]);
}

/**
 * An export line: `rounds` of our export against curl + fsync of the same handler, in
 * alternating order, after one warm-up read of that handler; prints `name` (throughput /
 * curl + fsync's).
 */
async function exportLine(work: string, sim: SimProcess, name: string, what: string, ours: () => Promise<Export>, curlPath: string): Promise<{ ours: Export[]; curls: Curl[] }> {
  await warmUp(sim, curlPath);
  const all: { ours: Export[]; curls: Curl[] } = { ours: [], curls: [] };
  for (let i = 0; i < ROUNDS; i++) {
    const [o, c] = await alternate(i, ours, () => curlOnce(sim, curlPath, path.join(work, 'curl.bin')));
    sameBytes(name, o.bytes, c.bytes);
    all.ours.push(o);
    all.curls.push(c);
    console.error(`  ${name} round ${i + 1}: curl -o ${rate(c.bytes, c.ms)} (${rate(c.bytes, c.syncedMs)} with fsync), ${what} ${rate(o.bytes, o.ms)} (fsynced)`);
  }
  const gibs = (xs: { bytes: number; ms: number }[]) => rate(median(xs.map((x) => x.bytes)), median(xs.map((x) => x.ms)));
  benchLine(
    name,
    all.ours.map((o, i) => o.bytes / o.ms / (all.curls[i]!.bytes / all.curls[i]!.syncedMs)),
    { figure: `${what} (fsynced) ${gibs(all.ours)}`, baseline: `curl -o + fsync ${gibs(all.curls.map((c) => ({ bytes: c.bytes, ms: c.syncedMs })))}` },
  );
  return all;
}

/** A section of one export line: a 1 GiB VM exported as `opts` say, against curl + fsync of `curlPath`. */
function exportSection(name: string, line: string, what: string, opts: Parameters<typeof exportOnce>[3], curlPath: (vm: { uuid: string; vdi: string }) => string): Section {
  return {
    name,
    lines: [line],
    run: (work) => withBigSim(work, (sim, vm) => exportLine(work, sim, line, what, () => exportOnce(sim, [vm], work, opts), curlPath(vm)).then(() => undefined)),
  };
}

interface Section {
  /** The section's name, for `npm run bench -- NAME`. */
  name: string;
  /** The lines it prints (each also selects it). */
  lines: string[];
  run(work: string): Promise<void>;
  /** Too long for the whole bench (half an hour or more on two cores): runs only when named. */
  onlyWhenNamed?: boolean;
}

const SECTIONS: Section[] = [
  {
    name: 'startup',
    lines: ['startup_ms'],
    async run() {
      // Wall time is the line; the CPU time (/usr/bin/time) says what it would be on an idle
      // machine, where a start waits for nothing else.
      const timed = async (args: string[]): Promise<{ ms: number; cpuMs: number }> => {
        const t = performance.now();
        const { stderr } = await run('/usr/bin/time', ['-f', 'cpu %U %S', process.execPath, ...args]);
        const ms = performance.now() - t;
        const m = /cpu ([\d.]+) ([\d.]+)\s*$/.exec(stderr);
        return { ms, cpuMs: m ? (Number(m[1]) + Number(m[2])) * 1000 : NaN };
      };
      const ours = () => timed([path.join(root, 'bin/vmbackup.js'), '--version']);
      const bare = () => timed(['-e', '0']);
      await ours(); // the page cache
      await bare();
      const o: { ms: number; cpuMs: number }[] = [];
      const b: { ms: number; cpuMs: number }[] = [];
      for (let i = 0; i < 7; i++) {
        const [x, y] = await alternate(i, ours, bare);
        o.push(x);
        b.push(y);
      }
      const ms = (xs: number[]) => `${median(xs).toFixed(0)} ms`;
      benchLine('startup_ms', o.map((x) => x.ms), {
        figure: `vmbackup --version ${ms(o.map((x) => x.ms))} (CPU ${ms(o.map((x) => x.cpuMs))})`,
        baseline: `node -e 0 ${ms(b.map((x) => x.ms))} (CPU ${ms(b.map((x) => x.cpuMs))})`,
        digits: 0,
      });
    },
  },
  {
    name: 'export',
    lines: ['export_vs_curl_ratio', 'export_vs_curl_fsync_ratio'],
    run: (work) =>
      withBigSim(work, async (sim, vm) => {
        const all = await exportLine(work, sim, 'export_vs_curl_fsync_ratio', 'vmbackup', () => exportOnce(sim, [vm], work), `/export?uuid=${vm.uuid}`);
        // The same rounds against curl -o alone, which leaves its bytes in the page cache.
        benchLine(
          'export_vs_curl_ratio',
          all.ours.map((o, i) => o.bytes / o.ms / (all.curls[i]!.bytes / all.curls[i]!.ms)),
          { figure: `vmbackup (fsynced) ${rate(median(all.ours.map((o) => o.bytes)), median(all.ours.map((o) => o.ms)))}`, baseline: `curl -o (no fsync) ${rate(median(all.curls.map((c) => c.bytes)), median(all.curls.map((c) => c.ms)))}` },
        );
      }),
  },
  exportSection('export_zstd', 'export_zstd_vs_curl_ratio', 'vmbackup zstd', { compress: 'zstd' }, (vm) => `/export?uuid=${vm.uuid}&use_compression=zstd`),
  exportSection('export_raw', 'export_raw_vs_curl_ratio', 'vmbackup raw', { kind: 'vdi:raw' }, (vm) => `/export_raw_vdi?vdi=${vm.vdi}&format=raw`),
  {
    name: 'parallel2',
    lines: ['export_parallel2_ratio'],
    run: (work) =>
      withSim(work, [{ name: 'p1', mib: 512 }, { name: 'p2', mib: 512 }], async (sim) => {
        const vms = [await vmOf(sim.url, 'p1'), await vmOf(sim.url, 'p2')];
        const curls = async (): Promise<Export> => {
          const t = performance.now();
          const cs = await Promise.all(vms.map((vm) => curlOnce(sim, `/export?uuid=${vm.uuid}`, path.join(work, `curl-${vm.name}.bin`))));
          return { bytes: cs.reduce((n, c) => n + c.bytes, 0), ms: performance.now() - t, maxRssMiB: 0 };
        };
        await Promise.all(vms.map((vm) => warmUp(sim, `/export?uuid=${vm.uuid}`)));
        const ours: Export[] = [];
        const base: Export[] = [];
        for (let i = 0; i < ROUNDS; i++) {
          const [o, c] = await alternate(i, () => exportOnce(sim, vms, work), curls);
          sameBytes('export_parallel2_ratio', o.bytes, c.bytes);
          ours.push(o);
          base.push(c);
          console.error(`  parallel2 round ${i + 1}: two curl -o + fsync side by side ${rate(c.bytes, c.ms)}, vmbackup two exports at once ${rate(o.bytes, o.ms)}`);
        }
        benchLine(
          'export_parallel2_ratio',
          ours.map((o, i) => o.bytes / o.ms / (base[i]!.bytes / base[i]!.ms)),
          { figure: `two vmbackup exports at once ${rate(median(ours.map((o) => o.bytes)), median(ours.map((o) => o.ms)))}`, baseline: `two curl -o + fsync side by side ${rate(median(base.map((o) => o.bytes)), median(base.map((o) => o.ms)))}` },
        );
      }),
  },
  {
    name: 'run',
    lines: ['run_vs_curl_ratio'],
    run: (work) =>
      withBigSim(work, async (sim, vm) => {
        const base = path.join(work, 'run-base');
        await mkdir(path.join(base, 'exports'), { recursive: true });
        await writeFile(path.join(base, 'password'), 'bench\n');
        await chmod(path.join(base, 'password'), 0o600);
        const args = ['-b', base, '--xapi', sim.url, '--user', 'root', '--password-file', path.join(base, 'password'), '-e', 'big', '--no-pool-backup', '--no-host-backup', '-l', 'warning'];
        const whole = async (): Promise<number> => {
          const t = performance.now();
          const r = await vmbackup(args, { timeoutMs: 600_000 });
          const ms = performance.now() - t;
          if (r.code !== 0) throw new Error(`vmbackup -e big exited ${r.code}:\n${r.stderr.slice(-2000)}`);
          await rm(path.join(base, 'exports', 'big'), { recursive: true, force: true });
          await run('sync');
          return ms;
        };
        const curl = () => curlOnce(sim, `/export?uuid=${vm.uuid}`, path.join(work, 'curl.bin'));
        await warmUp(sim, `/export?uuid=${vm.uuid}`);
        const runMs: number[] = [];
        const curls: Curl[] = [];
        for (let i = 0; i < ROUNDS; i++) {
          const [r, c] = await alternate(i, whole, curl);
          runMs.push(r);
          curls.push(c);
          console.error(`  run round ${i + 1}: vmbackup -e big ${(r / 1000).toFixed(2)} s, curl -o ${(c.ms / 1000).toFixed(2)} s (${(c.syncedMs / 1000).toFixed(2)} s with fsync)`);
        }
        benchLine('run_vs_curl_ratio', curls.map((c, i) => c.syncedMs / runMs[i]!), {
          figure: `vmbackup -e big (a process: start, snapshot, export, meta, prune) ${(median(runMs) / 1000).toFixed(2)} s`,
          baseline: `curl -o + fsync of the export ${(median(curls.map((c) => c.syncedMs)) / 1000).toFixed(2)} s (without fsync ${(median(curls.map((c) => c.ms)) / 1000).toFixed(2)} s)`,
        });
      }),
  },
  {
    name: 'rss',
    lines: ['rss_growth_mib'],
    run: (work) =>
      withSim(work, [{ name: 'small', mib: RSS_SMALL_MIB }, { name: 'large', mib: RSS_LARGE_MIB }], async (sim) => {
        const small = await vmOf(sim.url, 'small');
        const large = await vmOf(sim.url, 'large');
        const smallRss: number[] = [];
        const largeRss: number[] = [];
        for (let i = 0; i < ROUNDS; i++) {
          const [s, l] = await alternate(i, () => exportOnce(sim, [small], work), () => exportOnce(sim, [large], work));
          smallRss.push(s.maxRssMiB);
          largeRss.push(l.maxRssMiB);
          console.error(`  rss round ${i + 1}: peak RSS exporting ${RSS_SMALL_MIB} MiB ${s.maxRssMiB.toFixed(1)} MiB, ${RSS_LARGE_MIB / 1024} GiB ${l.maxRssMiB.toFixed(1)} MiB`);
        }
        benchLine('rss_growth_mib', largeRss.map((l, i) => l - smallRss[i]!), {
          figure: `peak RSS exporting ${RSS_LARGE_MIB / 1024} GiB ${median(largeRss).toFixed(1)} MiB`,
          baseline: `exporting ${RSS_SMALL_MIB} MiB ${median(smallRss).toFixed(1)} MiB`,
          digits: 1,
        });
      }),
  },
  {
    name: 'plan',
    lines: ['plan_ms_5000', 'plan_vs_fetch_ratio'],
    async run(work) {
      const file = path.join(work, 'pool-5000.json');
      await writeFile(file, JSON.stringify({ credentials: { user: 'root', password: 'bench' }, hosts: [{ name_label: 'h' }], srs: [{ name_label: 'SR', size_gib: 100, used_gib: 1 }], vms: [] }));
      const sim = await simulator(file, ['--generate', '5000']);
      const xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'bench' });
      try {
        // 100 entries: half simple names, half regexes, spread over the three lists.
        const names = Array.from({ length: 50 }, (_, i) => `vm-${String(i * 97 + 1).padStart(3, '0')}`);
        const regexes = Array.from({ length: 50 }, (_, i) => `vm-${i % 10}${(i * 7) % 10}.*[13579]$:${(i % 5) + 1}`);
        const ctx = localCtx({ log: silentLogger(), xapi });
        const input = {
          runId: 'bench',
          jobId: 'plan',
          try: 1,
          startedAt: new Date().toISOString(),
          options: runOptions({
            backupDir: work,
            excludes: names.slice(0, 10),
            vdiExports: [...names.slice(10, 30), ...regexes.slice(0, 20)],
            vmExports: [...names.slice(30), ...regexes.slice(20)],
            maxBackups: 4,
            concurrency: 2,
            vmRetries: 1,
            idleTimeoutS: 300,
          }),
        };
        const planMs: number[] = [];
        const fetchMs: number[] = [];
        let jobs = 0;
        for (let i = 0; i < 5; i++) {
          const [p, f] = await alternate(
            i,
            async () => {
              const t = performance.now();
              jobs = (await plan.handle(input, ctx)).vmJobs.length;
              return performance.now() - t;
            },
            async () => {
              const t = performance.now();
              await xapi.getAllRecords('VM');
              return performance.now() - t;
            },
          );
          planMs.push(p);
          fetchMs.push(f);
        }
        console.error(`  plan: ${jobs} jobs from 5,000 VMs`);
        const detail = { figure: `plan ${median(planMs).toFixed(0)} ms`, baseline: `VM.get_all_records ${median(fetchMs).toFixed(0)} ms` };
        benchLine('plan_ms_5000', planMs, { ...detail, digits: 0 });
        benchLine('plan_vs_fetch_ratio', planMs.map((p, i) => p / fetchMs[i]!), detail);
      } finally {
        await xapi.close();
        sim.stop();
      }
    },
  },
  {
    name: 'nats',
    lines: ['nats_vs_embedded_ratio'],
    async run(work) {
      // 50 VMs: an embedded run takes ~0.15 s of wall per VM on two cores, so the run's fixed
      // cost (a process start is ~0.2 s, then a login and the plan) stays a small part of
      // either side and the ratio is still the per-VM cost of going through NATS; 200 VMs
      // only made the section four times longer. The thousand section runs 1,000.
      const sim = await simulator(await pool(work, Array.from({ length: NATS_VMS }, (_, i) => ({ name: `vm-${String(i).padStart(3, '0')}`, mib: 1 }))));
      try {
        const { natsVsEmbedded } = await import('../nats/bench-nats.js');
        const r = await natsVsEmbedded({ simUrl: sim.url, user: 'root', password: 'bench', work, rounds: ROUNDS, note: (line) => console.error(line) });
        benchLine('nats_vs_embedded_ratio', r.nats.map((n, i) => n.ms / r.embedded[i]!.ms), {
          figure: `vmbackup run of ${NATS_VMS} VMs, NATS with two workers ${(median(r.nats.map((n) => n.ms)) / 1000).toFixed(1)} s`,
          baseline: `vmbackup embedded ${(median(r.embedded.map((n) => n.ms)) / 1000).toFixed(1)} s`,
        });
      } finally {
        sim.stop();
      }
    },
  },
  {
    name: 'sim',
    lines: ['sim_export_vs_plain_http_ratio', 'sim_pattern_vs_copy_ratio'],
    async run(work) {
      // The simulator's export against the cheapest HTTP server that sends as many bytes.
      const plainScript = `const chunk = Buffer.alloc(1 << 20, 7); const total = Number(process.argv[1]);
const server = require('node:http').createServer((req, res) => { res.writeHead(200, { 'content-length': total }); let sent = 0;
  const pump = () => { while (sent < total) { const n = Math.min(chunk.length, total - sent); sent += n; if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return res.once('drain', pump); } res.end(); }; pump(); });
server.listen(0, '127.0.0.1', () => console.log('listening on http://127.0.0.1:' + server.address().port));`;
      await withBigSim(work, async (sim, { uuid }) => {
        const curlNull = async (url: string): Promise<{ bytes: number; ms: number }> => {
          const t = performance.now();
          const { stdout } = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{size_download}', url]);
          return { bytes: Number(stdout), ms: performance.now() - t };
        };
        const simUrl = async () => `${sim.url}/export?uuid=${uuid}&session_id=${await login(sim.url)}`;
        const probe = await curlNull(await simUrl());
        const plain = spawn(process.execPath, ['-e', plainScript, String(probe.bytes)], { stdio: ['ignore', 'pipe', 'inherit'] });
        try {
          const plainUrl = await new Promise<string>((resolve, reject) => {
            plain.stdout.on('data', (d: Buffer) => {
              const m = /listening on (\S+)/.exec(d.toString());
              if (m) resolve(m[1]!);
            });
            plain.on('exit', (code) => reject(new Error(`plain HTTP server exited with ${code}`)));
          });
          const ours: { bytes: number; ms: number }[] = [];
          const base: { bytes: number; ms: number }[] = [];
          for (let i = 0; i < ROUNDS; i++) {
            const url = await simUrl();
            const [o, b] = await alternate(i, () => curlNull(url), () => curlNull(plainUrl));
            if (o.bytes !== b.bytes) throw new Error(`simulator sent ${o.bytes} bytes, the plain server ${b.bytes}`);
            ours.push(o);
            base.push(b);
            console.error(`  sim round ${i + 1}: simulator export ${rate(o.bytes, o.ms)}, plain HTTP ${rate(b.bytes, b.ms)}`);
          }
          benchLine('sim_export_vs_plain_http_ratio', ours.map((o, i) => base[i]!.ms / o.ms), {
            figure: `simulator export to curl -o /dev/null ${rate(probe.bytes, median(ours.map((o) => o.ms)))}`,
            baseline: `a bare node HTTP server ${rate(probe.bytes, median(base.map((b) => b.ms)))}`,
          });
        } finally {
          plain.kill();
        }
      });

      // Pattern disk generation against the least any read costs: a fresh buffer filled by copy.
      const { PatternDisk } = await import('../sim/disks.js');
      const CHUNK = 2 << 20;
      const disk = new PatternDisk(GiB, 'bench');
      const source = Buffer.alloc(CHUNK, 7);
      const timed = async (f: () => void): Promise<number> => {
        const t = performance.now();
        f();
        return performance.now() - t;
      };
      const patternPass = () =>
        timed(() => {
          for (let o = 0; o < disk.size; o += CHUNK) disk.read(o, CHUNK);
        });
      const copyPass = () =>
        timed(() => {
          for (let o = 0; o < disk.size; o += CHUNK) source.copy(Buffer.allocUnsafe(CHUNK));
        });
      await patternPass(); // warm up (JIT, the pattern's tables)
      await copyPass();
      const patternMs: number[] = [];
      const copyMs: number[] = [];
      for (let i = 0; i < 2 * ROUNDS - 1; i++) {
        const [p, c] = await alternate(i, patternPass, copyPass);
        patternMs.push(p);
        copyMs.push(c);
      }
      benchLine('sim_pattern_vs_copy_ratio', patternMs.map((p, i) => copyMs[i]! / p), {
        figure: `pattern disk reads ${rate(GiB, median(patternMs))}`,
        baseline: `fresh buffers filled by copy ${rate(GiB, median(copyMs))}`,
      });
    },
  },
  {
    name: 'chunks',
    lines: [],
    async run(work) {
      const { chunkSizeBench } = await import('./chunkstore.js');
      await chunkSizeBench(work, (line) => console.error(line));
    },
  },
  {
    name: 'thousand',
    lines: ['run_1000_vms_nats_vs_embedded', 'coordinator_rss_1000_vs_100', 'job_overhead_ms'],
    onlyWhenNamed: true,
    async run(work) {
      const { thousandBench } = await import('./thousand.js');
      await thousandBench(work, { rounds: 3, single: true, cluster: false, note: (line) => console.error(line), print: (line) => console.log(line) });
    },
  },
  {
    name: 'thousand-cluster',
    lines: [],
    onlyWhenNamed: true,
    async run(work) {
      const { thousandBench } = await import('./thousand.js');
      await thousandBench(work, { rounds: 3, single: false, cluster: true, note: (line) => console.error(line), print: (line) => console.log(line) });
    },
  },
  {
    name: 'restore',
    lines: ['chunk_restore_vs_full_ratio', 'restore_raw_rss_growth_mib', 'restore_vhd_rss_growth_mib'],
    async run(work) {
      const { restoreBench, restoreRssBench } = await import('./chunkstore.js');
      await restoreBench(work, (line) => console.error(line));
      await restoreRssBench(work, (line) => console.error(line));
    },
  },
  {
    name: 'delta',
    lines: ['delta_bytes_ratio_1pct', 'delta_bytes_ratio_1pct_scattered', 'delta_time_ratio_1pct', 'dedup_ratio_clones'],
    async run(work) {
      const { deltaBench } = await import('./delta.js');
      await deltaBench(work, (line) => console.error(line));
    },
  },
  {
    name: 'metrics',
    lines: ['metrics_ms_1000', 'metrics_vs_list_ratio'],
    async run(work) {
      const { metricsBench } = await import('./metrics.js');
      await metricsBench(work, (line) => console.log(line));
    },
  },
  {
    name: 'status',
    lines: ['status_page_ms_1000', 'status_page_vs_list_ratio', 'progress_ms_1000'],
    async run(work) {
      const { statusPageBench } = await import('./status-page.js');
      await statusPageBench(work, (line) => console.log(line));
    },
  },
  {
    name: 'gc',
    lines: ['gc_ms_100k_chunks', 'gc_vs_list_ratio'],
    async run(work) {
      const { gcBench } = await import('./chunkstore.js');
      await gcBench(work, (line) => console.error(line));
    },
  },
];

const wanted = process.argv.slice(2);
const unknown = wanted.filter((w) => !SECTIONS.some((s) => s.name === w || s.lines.includes(w) || (s.name === 'chunks' && w.startsWith('chunk_'))));
if (unknown.length > 0) {
  console.error(`bench: no line or section named ${unknown.join(', ')} (sections: ${SECTIONS.map((s) => s.name).join(', ')})`);
  process.exit(2);
}
const work = await mkdtemp(path.join(os.tmpdir(), 'vmbackup-bench-'));
try {
  for (const section of SECTIONS) {
    const named = wanted.some((w) => w === section.name || section.lines.includes(w) || (section.name === 'chunks' && w.startsWith('chunk_')));
    if (wanted.length > 0 ? !named : section.onlyWhenNamed === true) continue;
    const t = performance.now();
    await section.run(work);
    console.error(`  (${section.name}: ${((performance.now() - t) / 1000).toFixed(0)} s)`);
  }
} finally {
  if (bigSim !== undefined) (await bigSim).stop();
  await rm(work, { recursive: true, force: true });
}
