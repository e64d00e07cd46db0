/**
 * `npm run bench`: speed and memory, each measured against a baseline in the same run (these
 * machines are noisy, so only ratios and differences mean something). Prints `name=value`
 * lines; targets in comments. Select some with `npm run bench -- export rss plan`.
 *
 *   export_vs_curl_ratio   2 GiB XVA through snapshot+export to disk, throughput / curl -o   ≥ 0.9
 *   rss_growth_mib         peak RSS exporting an 8 GiB disk − exporting a 1 GiB disk        < 32
 *   plan_ms_5000           plan over 5,000 VMs with 100 selection entries                    < 1000
 *   plan_vs_fetch_ratio    … divided by one bare VM.get_all_records of the same pool
 *   nats_vs_embedded_ratio 200 VMs with 1 MiB disks: `vmbackup run` through NATS with two
 *                          workers, wall time / the same run embedded (`vmbackup`)         ≤ 1.5
 *   chunk_<n>mib_…         chunk store: chunk sizes 1, 2, 4 MiB compared (`chunks`)
 *   gc_ms_100k_chunks      chunk store GC over 100,000 chunks; gc_vs_list_ratio ≤ 3 (`gc`)
 *   chunk_restore_vs_full_ratio  the newest of 8 points restored to a file / a raw copy ≥ 0.8,
 *                          restore_<raw|vhd>_rss_growth_mib < 32 (`restore`)
 *                          (see chunkstore.ts beside this file)
 *   sim_export_vs_plain_http_ratio  the simulator's 1 GiB XVA export to `curl -o /dev/null`,
 *                          throughput / a bare node HTTP server sending as many bytes    ≥ 0.3
 *   sim_pattern_vs_copy_ratio  pattern disk reads (2 MiB) / filling fresh buffers by copy ≥ 0.2
 *                          (`sim`: the simulator must never be what a benchmark measures)
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { plan } from '../../functions/plan/plan.js';
import { localCtx } from '../../runtime/function.js';
import { silentLogger } from '../../runtime/log.js';
import { XapiClient } from '../../runtime/xapi/client.js';

const run = promisify(execFile);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const tsx = path.join(root, 'node_modules/.bin/tsx');
const wanted = new Set(process.argv.slice(2));
const want = (name: string) => wanted.size === 0 || wanted.has(name);
const GiB = 1 << 30;

interface Sim {
  url: string;
  stop(): void;
}

/** The simulator in its own process, so it does not share our event loop or our RSS. */
async function simulator(poolFile: string, extra: string[] = []): Promise<Sim> {
  const child = spawn(process.execPath, [path.join(root, 'bin/vmbackup-sim.js'), '--pool', poolFile, '--port', '0', ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`simulator exited with ${code}`)));
  });
  return { url, stop: () => child.kill() };
}

async function pool(dir: string, vms: { name: string; mib: number }[]): Promise<string> {
  const file = path.join(dir, `pool-${vms.map((v) => v.name).join('-')}.json`);
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

async function rpc(url: string, method: string, params: unknown[]): Promise<unknown> {
  const res = await fetch(`${url}/jsonrpc`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) });
  const body = (await res.json()) as { result?: unknown; error?: unknown };
  if (body.error !== undefined) throw new Error(`${method}: ${JSON.stringify(body.error)}`);
  return body.result;
}

async function vmUuid(url: string, name: string): Promise<string> {
  const session = await rpc(url, 'session.login_with_password', ['root', 'bench']);
  const refs = (await rpc(url, 'VM.get_by_name_label', [session, name])) as string[];
  const uuid = (await rpc(url, 'VM.get_uuid', [session, refs[0]])) as string;
  await rpc(url, 'session.logout', [session]);
  return uuid;
}

async function exportOnce(url: string, uuid: string, name: string, dir: string): Promise<{ bytes: number; ms: number; maxRssMiB: number }> {
  const { stdout } = await run(tsx, [path.join(root, 'test/bench/export-once.ts'), url, 'root', 'bench', uuid, name, dir], { maxBuffer: 1 << 20 });
  await rm(path.join(dir, 'bench'), { recursive: true, force: true });
  return JSON.parse(stdout) as { bytes: number; ms: number; maxRssMiB: number };
}

/** `curl -o`, and the time it takes to make that file durable (`sync FILE`, an fsync). */
async function curlOnce(url: string, uuid: string, file: string): Promise<{ bytes: number; ms: number; syncedMs: number }> {
  const session = (await rpc(url, 'session.login_with_password', ['root', 'bench'])) as string;
  const started = performance.now();
  const { stdout } = await run('curl', ['-sS', '-o', file, '-w', '%{size_download}', `${url}/export?uuid=${uuid}&session_id=${session}`]);
  const ms = performance.now() - started;
  await run('sync', [file]);
  const syncedMs = performance.now() - started;
  await rpc(url, 'session.logout', [session]);
  await rm(file, { force: true });
  return { bytes: Number(stdout), ms, syncedMs };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const work = await mkdtemp(path.join(os.tmpdir(), 'vmbackup-bench-'));
try {
  if (want('export')) {
    const sim = await simulator(await pool(work, [{ name: 'big', mib: 2048 }]));
    try {
      const uuid = await vmUuid(sim.url, 'big');
      await curlOnce(sim.url, uuid, path.join(work, 'warm.xva')); // warm caches
      await run('sync');
      const ratios: number[] = [];
      const durableRatios: number[] = [];
      for (let i = 0; i < 5; i++) {
        // Alternate the order, and let the disk settle (sync) after each: curl leaves 2 GiB of
        // dirty pages behind (it does not fsync, vmbackup does), whose writeback would
        // otherwise land on whichever transfer runs next.
        const measure = async <T>(f: () => Promise<T>): Promise<T> => {
          const r = await f();
          await run('sync');
          return r;
        };
        let curl: { bytes: number; ms: number; syncedMs: number };
        let ours: { bytes: number; ms: number; maxRssMiB: number };
        if (i % 2 === 0) {
          curl = await measure(() => curlOnce(sim.url, uuid, path.join(work, 'curl.xva')));
          ours = await measure(() => exportOnce(sim.url, uuid, 'big', work));
        } else {
          ours = await measure(() => exportOnce(sim.url, uuid, 'big', work));
          curl = await measure(() => curlOnce(sim.url, uuid, path.join(work, 'curl.xva')));
        }
        // Same disk; only ova.xml may differ by a few blocks (times, task).
        if (Math.abs(ours.bytes - curl.bytes) > 1 << 20) throw new Error(`export wrote ${ours.bytes} bytes, curl ${curl.bytes}`);
        ratios.push(ours.bytes / ours.ms / (curl.bytes / curl.ms));
        durableRatios.push(ours.bytes / ours.ms / (curl.bytes / curl.syncedMs));
        const rate = (bytes: number, ms: number) => ((bytes / ms) * 1e3 / GiB).toFixed(2);
        console.error(
          `  export round ${i + 1}: curl -o ${rate(curl.bytes, curl.ms)} GiB/s (${rate(curl.bytes, curl.syncedMs)} with fsync), vmbackup ${rate(ours.bytes, ours.ms)} GiB/s (fsynced)`,
        );
      }
      console.log(`export_vs_curl_ratio=${median(ratios).toFixed(2)}`);
      // vmbackup fsyncs before it renames (a backup must survive a power cut); curl -o does
      // not. The same durability for curl: its file fsynced once written.
      console.log(`export_vs_curl_fsync_ratio=${median(durableRatios).toFixed(2)}`);
    } finally {
      sim.stop();
    }
  }

  if (want('rss')) {
    const sim = await simulator(await pool(work, [{ name: 'small', mib: 1024 }, { name: 'large', mib: 8192 }]));
    try {
      const small = await exportOnce(sim.url, await vmUuid(sim.url, 'small'), 'small', work);
      const large = await exportOnce(sim.url, await vmUuid(sim.url, 'large'), 'large', work);
      console.error(`  peak RSS: 1 GiB export ${small.maxRssMiB.toFixed(1)} MiB, 8 GiB export ${large.maxRssMiB.toFixed(1)} MiB`);
      console.log(`rss_growth_mib=${(large.maxRssMiB - small.maxRssMiB).toFixed(1)}`);
    } finally {
      sim.stop();
    }
  }

  if (want('plan')) {
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
        options: {
          backupDir: work,
          excludes: names.slice(0, 10),
          vdiExports: [...names.slice(10, 30), ...regexes.slice(0, 20)],
          vmExports: [...names.slice(30), ...regexes.slice(20)],
          maxBackups: 4,
          compress: 'none' as const,
          format: 'raw' as const,
          poolBackup: false,
          hostBackup: false,
          spaceThreshold: 1,
          concurrency: 2,
          vmRetries: 1,
          haltedWithoutSnapshot: true,
          idleTimeoutS: 300,
          leftoverAgeHours: 24,
        },
      };
      const planMs: number[] = [];
      const fetchMs: number[] = [];
      let jobs = 0;
      for (let i = 0; i < 5; i++) {
        let t = performance.now();
        await xapi.getAllRecords('VM');
        fetchMs.push(performance.now() - t);
        t = performance.now();
        const out = await plan.handle(input, ctx);
        planMs.push(performance.now() - t);
        jobs = out.vmJobs.length;
      }
      console.error(`  plan: ${jobs} jobs from 5,000 VMs; VM.get_all_records alone ${median(fetchMs).toFixed(0)} ms`);
      console.log(`plan_ms_5000=${median(planMs).toFixed(0)}`);
      console.log(`plan_vs_fetch_ratio=${(median(planMs) / median(fetchMs)).toFixed(2)}`);
    } finally {
      await xapi.close();
      sim.stop();
    }
  }

  if (want('nats')) {
    const file = path.join(work, 'pool-nats-200.json');
    await writeFile(
      file,
      JSON.stringify({
        credentials: { user: 'root', password: 'bench' },
        hosts: [{ name_label: 'bench-host' }],
        srs: [{ name_label: 'SR', size_gib: 100, used_gib: 1 }],
        vms: Array.from({ length: 200 }, (_, i) => ({ name_label: `vm-${String(i).padStart(3, '0')}`, power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'pattern' }], vifs: [] })),
      }),
    );
    const sim = await simulator(file);
    try {
      const { natsVsEmbedded } = await import('../nats/bench-nats.js');
      const r = await natsVsEmbedded({ simUrl: sim.url, user: 'root', password: 'bench', work, rounds: 3, note: (line) => console.error(line) });
      console.log(`nats_vs_embedded_ratio=${r.ratio.toFixed(2)}`);
    } finally {
      sim.stop();
    }
  }

  if (want('sim')) {
    const rounds = 3;
    // The simulator's export against the cheapest HTTP server that sends as many bytes.
    const sim = await simulator(await pool(work, [{ name: 'sim1g', mib: 1024 }]));
    const plainScript = `const chunk = Buffer.alloc(1 << 20, 7); const total = Number(process.argv[1]);
const server = require('node:http').createServer((req, res) => { res.writeHead(200, { 'content-length': total }); let sent = 0;
  const pump = () => { while (sent < total) { const n = Math.min(chunk.length, total - sent); sent += n; if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return res.once('drain', pump); } res.end(); }; pump(); });
server.listen(0, '127.0.0.1', () => console.log('listening on http://127.0.0.1:' + server.address().port));`;
    try {
      const uuid = await vmUuid(sim.url, 'sim1g');
      const curlNull = async (url: string): Promise<{ bytes: number; ms: number }> => {
        const t = performance.now();
        const { stdout } = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{size_download}', url]);
        return { bytes: Number(stdout), ms: performance.now() - t };
      };
      const simUrl = async () => `${sim.url}/export?uuid=${uuid}&session_id=${(await rpc(sim.url, 'session.login_with_password', ['root', 'bench'])) as string}`;
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
        const ratios: number[] = [];
        for (let i = 0; i < rounds; i++) {
          const ours = await curlNull(await simUrl());
          const base = await curlNull(plainUrl);
          if (ours.bytes !== base.bytes) throw new Error(`simulator sent ${ours.bytes} bytes, the plain server ${base.bytes}`);
          ratios.push(base.ms / ours.ms);
          console.error(`  sim round ${i + 1}: simulator export ${((ours.bytes / ours.ms) * 1e3 / GiB).toFixed(2)} GiB/s, plain HTTP ${((base.bytes / base.ms) * 1e3 / GiB).toFixed(2)} GiB/s`);
        }
        console.log(`sim_export_vs_plain_http_ratio=${median(ratios).toFixed(2)}`);
      } finally {
        plain.kill();
      }
    } finally {
      sim.stop();
    }

    // Pattern disk generation against the least any read costs: a fresh buffer filled by copy.
    const { PatternDisk } = await import('../sim/disks.js');
    const CHUNK = 2 << 20;
    const disk = new PatternDisk(GiB, 'bench');
    const source = Buffer.alloc(CHUNK, 7);
    const timed = (f: () => void): number => {
      const t = performance.now();
      f();
      return performance.now() - t;
    };
    const patternPass = () => timed(() => {
      for (let o = 0; o < disk.size; o += CHUNK) disk.read(o, CHUNK);
    });
    const copyPass = () => timed(() => {
      for (let o = 0; o < disk.size; o += CHUNK) source.copy(Buffer.allocUnsafe(CHUNK));
    });
    patternPass(); // warm up (JIT, the pattern's tables)
    copyPass();
    const ratios: number[] = [];
    for (let i = 0; i < 2 * rounds - 1; i++) {
      // Alternate the order: whichever runs second inherits the first's garbage.
      let patternMs: number;
      let copyMs: number;
      if (i % 2 === 0) {
        patternMs = patternPass();
        copyMs = copyPass();
      } else {
        copyMs = copyPass();
        patternMs = patternPass();
      }
      ratios.push(copyMs / patternMs);
      console.error(`  pattern round ${i + 1}: pattern disk ${((GiB / patternMs) * 1e3 / GiB).toFixed(2)} GiB/s, copy ${((GiB / copyMs) * 1e3 / GiB).toFixed(2)} GiB/s`);
    }
    console.log(`sim_pattern_vs_copy_ratio=${median(ratios).toFixed(2)}`);
  }

  if (want('chunks') || want('gc') || want('restore')) {
    const { chunkSizeBench, gcBench, restoreBench, restoreRssBench } = await import('./chunkstore.js');
    if (want('chunks')) await chunkSizeBench(work, (line) => console.error(line));
    if (want('gc')) await gcBench(work, (line) => console.error(line));
    if (want('restore')) {
      await restoreBench(work, (line) => console.error(line));
      await restoreRssBench(work, (line) => console.error(line));
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
