/**
 * Where an export's time goes (docs/performance.md): the same XAPI export read through the
 * real client and taken one stage further each time, against curl on the same URL, in one
 * process, rounds alternating with the disk settled (sync) between transfers:
 *
 *   curl /dev/null    curl -o /dev/null: what the simulator and the socket cost
 *   curl file         curl -o FILE;  curl fsync: … then an fsync of FILE
 *   http              xapi.download(), the body read and dropped
 *   + hash            … each chunk through xxh64
 *   + write           … and write(2) to a file (no fsync)
 *   export            writeStreamAtomic: hash, write, background datasyncs, fsync, rename
 *   direct …          the same two through download's `direct` body (httpGet, one reused
 *                     buffer), as the export function reads it
 *
 * Prints a table: GiB/s (median, min–max), and CPU seconds per GiB of the reader (this
 * process, or curl) and of the simulator (given its pid: /proc/PID/stat) — on a shared
 * two-core machine the CPU a reader takes is CPU the simulator does not get. Then the body's
 * chunk sizes.
 *
 *   tsx test/bench/export-stages.ts <xapi url> <user> <password> <vm uuid> <dir> [rounds] [simulator pid]
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { loadXxh64 } from '../../runtime/formats/xxh64.js';
import { writeStreamAtomic } from '../../runtime/storage/atomic.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { median } from './report.js';

const run = promisify(execFile);
const [url, user, password, uuid, dir, roundsArg, simPid] = process.argv.slice(2) as [string, string, string, string, string, string | undefined, string | undefined];
const rounds = Number(roundsArg ?? 3);
const xapi = await XapiClient.connect({ url, user, password });
const xxh = await loadXxh64();
const file = path.join(dir, 'stage.bin');
const chunkSizes: number[] = [];

async function body(f: (chunk: Buffer) => void): Promise<number> {
  const download = await xapi.download('/export', { uuid });
  let bytes = 0;
  for await (const chunk of download.body as AsyncIterable<Buffer>) {
    f(chunk);
    bytes += chunk.length;
    if (chunkSizes.length < 100_000) chunkSizes.push(chunk.length);
  }
  await download.task;
  return bytes;
}

/** The body read by httpGet into one reused buffer (`direct`), as the export function reads it. */
async function directBody(f: (chunk: Buffer) => void): Promise<number> {
  const download = await xapi.download('/export', { uuid }, { direct: true });
  let bytes = 0;
  await download.body.pump((chunk) => {
    f(chunk);
    bytes += chunk.length;
  });
  await download.task;
  return bytes;
}

/** CPU seconds used so far by process `pid` (utime + stime of /proc/PID/stat). */
function cpuOf(pid: string): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** CPU seconds of this process so far. */
function ownCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** The CPU seconds of the last curl (from /usr/bin/time). */
let curlCpu = 0;

async function curl(target: string, fsync: boolean): Promise<number> {
  const session = await run('curl', ['-sS', '-H', 'content-type: application/json', '-d', JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'session.login_with_password', params: [user, password] }), `${url}/jsonrpc`]);
  const sid = (JSON.parse(session.stdout) as { result: string }).result;
  const { stdout, stderr } = await run('/usr/bin/time', ['-f', 'cpu %U %S', 'curl', '-sS', '-o', target, '-w', '%{size_download}', `${url}/export?uuid=${uuid}&session_id=${sid}`]);
  const m = /cpu ([\d.]+) ([\d.]+)/.exec(stderr);
  curlCpu = m ? Number(m[1]) + Number(m[2]) : NaN;
  if (fsync) await run('sync', [target]);
  return Number(stdout);
}

const STAGES: [string, () => Promise<number>][] = [
  ['curl -o /dev/null', () => curl('/dev/null', false)],
  ['curl -o FILE', () => curl(file, false)],
  ['curl -o FILE + fsync', () => curl(file, true)],
  ['http (body dropped)', () => body(() => {})],
  ['+ hash (xxh64)', () => {
    const h = xxh.create();
    return body((c) => void h.update(c));
  }],
  ['+ write(2), no fsync', async () => {
    const h = xxh.create();
    const fh = await open(file, 'w');
    try {
      return await body((c) => {
        h.update(c);
        for (let done = 0; done < c.length; ) done += writeSync(fh.fd, c, done, c.length - done);
      });
    } finally {
      await fh.close();
    }
  }],
  ['export (writeStreamAtomic)', async () => {
    const download = await xapi.download('/export', { uuid });
    const r = await writeStreamAtomic(file, download.body, { commit: async () => void (await download.task) });
    return r.size;
  }],
  ['direct http (body dropped)', () => directBody(() => {})],
  ['direct export', async () => {
    const download = await xapi.download('/export', { uuid }, { direct: true });
    const r = await writeStreamAtomic(file, download.body, { commit: async () => void (await download.task) });
    return r.size;
  }],
];

const rates = new Map<string, { gibs: number[]; cpu: number[]; sim: number[] }>(STAGES.map(([name]) => [name, { gibs: [], cpu: [], sim: [] }]));
for (let i = 0; i < rounds; i++) {
  const order = i % 2 === 0 ? STAGES : [...STAGES].reverse();
  for (const [name, f] of order) {
    const sim0 = simPid !== undefined ? cpuOf(simPid) : NaN;
    const cpu0 = ownCpu();
    const t = performance.now();
    const bytes = await f();
    const ms = performance.now() - t;
    const cpu = name.startsWith('curl') ? curlCpu : ownCpu() - cpu0;
    const sim = simPid !== undefined ? cpuOf(simPid) - sim0 : NaN;
    await rm(file, { force: true });
    await run('sync');
    const gib = bytes / (1 << 30);
    const r = rates.get(name)!;
    r.gibs.push(gib / (ms / 1e3));
    r.cpu.push(cpu / gib);
    r.sim.push(sim / gib);
  }
}
await xapi.close();
console.log(`${'stage'.padEnd(28)} ${'GiB/s median (min–max)'.padEnd(24)} reader CPU s/GiB   simulator CPU s/GiB`);
for (const [name, r] of rates) {
  console.log(`${name.padEnd(28)} ${`${median(r.gibs).toFixed(2)} (${Math.min(...r.gibs).toFixed(2)}–${Math.max(...r.gibs).toFixed(2)})`.padEnd(24)} ${median(r.cpu).toFixed(2).padEnd(18)} ${median(r.sim).toFixed(2)}`);
}
const sizes = [...chunkSizes].sort((a, b) => a - b);
console.log(`body chunks: ${sizes.length} seen, median ${median(sizes)} bytes, min ${sizes[0]}, max ${sizes.at(-1)}`);
process.exit(0);
