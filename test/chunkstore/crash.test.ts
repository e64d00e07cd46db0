import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { ChunkStore, collectGarbage, listPoints, removePoint, verifyPoints } from '../../runtime/chunkstore/chunkstore.js';
/** child.ts's chunk size. */
const TEST_CHUNK = 64 << 10;

const run = promisify(execFile);
const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'child.ts');
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});
async function tmp(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'chunkstore-crash-'));
  dirs.push(d);
  return d;
}

interface Outcome {
  code: number | null;
  signal: string | null;
  lines: string[];
  stderr: string;
}

/** Runs child.ts; kills it with SIGKILL at the first stdout line `killAt` matches (if given). */
function child(args: string[], killAt?: (line: string) => boolean, onSpawn?: (c: ChildProcess) => void): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    onSpawn?.(c);
    const lines: string[] = [];
    let stderr = '';
    let buf = '';
    c.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        lines.push(line);
        if (killAt?.(line)) c.kill('SIGKILL');
      }
    });
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', reject);
    c.on('close', (code, signal) => resolve({ code, signal, lines, stderr }));
  });
}

/** Every committed point of the store verifies: no chunk lost, no index or manifest damaged. */
async function allWhole(store: ChunkStore): Promise<string[]> {
  const { points } = await listPoints(store);
  const r = await verifyPoints(store, points);
  expect(r.points.flatMap((p) => p.problems)).toEqual([]);
  return points.map((p) => `${p.vmFolder}/${p.stamp}`);
}

describe('killed with SIGKILL', () => {
  it('a backup killed at any step counts no point that is not whole; run again, it completes', async () => {
    const dir = await tmp();
    expect((await child(['backup', dir, 'vm', 'p0', '0', '48'])).lines).toContain('committed');
    const store = await ChunkStore.open(dir, { chunkSize: TEST_CHUNK });
    const steps = ['begun', 'chunk 15', 'chunk 39', 'disk', 'meta'];
    for (const [i, step] of steps.entries()) {
      const out = await child(['backup', dir, 'vm', `k${i}`, String(i + 1), '48'], (l) => l === step);
      expect(out.signal).toBe('SIGKILL');
      const points = await allWhole(store);
      expect(points).toContain('vm/p0');
      // The point counts only if the kill came after its manifest: then it is whole (checked above).
      if (!out.lines.includes('committed')) expect(points).not.toContain(`vm/k${i}`);
    }
    // Rerun: each killed backup completes with the same stamp; a GC (the killed GC's lock and the
    // dead writers' registrations notwithstanding) keeps every point whole.
    for (const [i] of steps.entries()) {
      if ((await listPoints(store, 'vm')).points.some((p) => p.stamp === `k${i}`)) continue;
      expect((await child(['backup', dir, 'vm', `k${i}`, String(i + 1), '48'])).lines).toContain('committed');
    }
    expect((await child(['gc', dir])).code).toBe(0);
    expect(await allWhole(store)).toEqual(['vm/k0', 'vm/k1', 'vm/k2', 'vm/k3', 'vm/k4', 'vm/p0']);
  }, 300_000);

  it('a GC killed at several moments loses no chunk of a point; run again, it completes', async () => {
    const dir = await tmp();
    for (let i = 0; i < 6; i++) expect((await child(['backup', dir, 'vm', `p${i}`, String(i), '160'])).code).toBe(0);
    const store = await ChunkStore.open(dir, { chunkSize: TEST_CHUNK });
    for (const stamp of ['p0', 'p2', 'p4']) await removePoint(store, { vmFolder: 'vm', stamp });
    // First a GC that sets unreferenced chunks aside, so that the killed ones also delete.
    await collectGarbage(store, { safetyMarginMs: 0 });
    await removePoint(store, { vmFolder: 'vm', stamp: 'p1' });
    for (const delayMs of [0, 30, 120, 400]) {
      const started = { at: 0 };
      const out = await new Promise<Outcome>((resolve, reject) => {
        const c = spawn(process.execPath, ['--import', 'tsx', CHILD, 'gc', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
        const lines: string[] = [];
        c.stdout.on('data', (d: Buffer) => {
          for (const line of d.toString().split('\n').filter(Boolean)) {
            lines.push(line);
            if (line === 'gc started') {
              started.at = Date.now();
              setTimeout(() => c.kill('SIGKILL'), delayMs);
            }
          }
        });
        let stderr = '';
        c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        c.on('error', reject);
        c.on('close', (code, signal) => resolve({ code, signal, lines, stderr }));
      });
      expect({ code: out.code === 0 || out.signal === 'SIGKILL', stderr: out.stderr }).toEqual({ code: true, stderr: '' });
      expect(await allWhole(store)).toEqual(['vm/p3', 'vm/p5']);
    }
    const final = await child(['gc', dir]);
    expect(final.code).toBe(0);
    await collectGarbage(store, { safetyMarginMs: 0 });
    expect(await allWhole(store)).toEqual(['vm/p3', 'vm/p5']);
    // What is left is what the two points reference, nothing else.
    const files: string[] = [];
    for (const prefix of await readdir(store.chunksDir)) files.push(...(await readdir(path.join(store.chunksDir, prefix))));
    const referenced = new Set<string>();
    for (const p of (await listPoints(store)).points) {
      const idx = await (await import('../../runtime/chunkstore/points.js')).openPoint(store, p).then((x) => x.openIndex('xvda'));
      for await (const [, d] of idx.entries()) if (!d.equals(Buffer.alloc(32))) referenced.add(d.toString('hex'));
      await idx.close();
    }
    expect(files.sort()).toEqual([...referenced].sort());
  }, 300_000);
});

describe('beside a concurrent writer', () => {
  it('prune + GC in a loop while another process writes points that reuse pruned chunks: no point loses a chunk', async () => {
    const dir = await tmp();
    const store = await ChunkStore.open(dir, { chunkSize: TEST_CHUNK });
    let proc: ChildProcess | undefined;
    const writer = child(['loop', dir, 'vm', '14', '96'], undefined, (c) => (proc = c));
    let done = false;
    void writer.then(() => (done = true));
    let gcs = 0;
    try {
      while (!done) {
        const { points } = await listPoints(store, 'vm');
        // Keep only the newest committed point: the writer's next point reuses half its chunks
        // and the other half of the pruned one's.
        for (const p of points.slice(0, -1)) await removePoint(store, p);
        await collectGarbage(store, { safetyMarginMs: 0 });
        gcs++;
        await allWhole(store);
      }
    } finally {
      if (!done) proc?.kill('SIGKILL');
      await writer;
    }
    const out = await writer;
    expect(out.stderr).toBe('');
    expect(out.lines.filter((l) => l === 'committed')).toHaveLength(14);
    expect(gcs).toBeGreaterThan(3);
    await collectGarbage(store, { safetyMarginMs: 0 });
    await collectGarbage(store, { safetyMarginMs: 0 });
    expect((await allWhole(store)).at(-1)).toBe('vm/p0013');
  }, 300_000);
});

describe('the backup filesystem full', () => {
  it('ENOSPC during a backup and during a GC: nothing counted that is not whole', async () => {
    const base = await tmp();
    const dir = path.join(base, 'full');
    await mkdir(dir);
    const tsx = `'${process.execPath}' --import tsx '${CHILD}'`;
    // A 4 MiB tmpfs in a private mount namespace: a 1 MiB point fits, a 6 MiB one does not.
    const script = [
      'set -e',
      `mount -t tmpfs -o size=4m tmpfs '${dir}'`,
      `${tsx} random '${dir}' vm p0 16 > '${base}/p0.txt'`,
      `${tsx} random '${dir}' vm p1 96 > '${base}/p1.txt' 2> '${base}/p1.err' || echo "exit=$?" > '${base}/p1.code'`,
      `(cd '${dir}' && find . -type f | sort) > '${base}/files1.txt'`,
      `${tsx} verify '${dir}' > '${base}/verify1.txt'`,
      // Fill what is left, then GC.
      `dd if=/dev/zero of='${dir}/filler' bs=64k 2>/dev/null || true`,
      `${tsx} gc '${dir}' > '${base}/gc.txt' 2> '${base}/gc.err' || echo "exit=$?" > '${base}/gc.code'`,
      `${tsx} verify '${dir}' > '${base}/verify2.txt'`,
      `rm '${dir}/filler'`,
      `${tsx} gc '${dir}' > '${base}/gc2.txt'`,
      `${tsx} verify '${dir}' > '${base}/verify3.txt'`,
    ].join('\n');
    const unshare = process.getuid?.() === 0 ? ['--mount'] : ['--user', '--map-root-user', '--mount'];
    await run('unshare', [...unshare, 'bash', '-c', script], { env: { PATH: process.env.PATH ?? '' }, cwd: process.cwd() });
    const text = (f: string) => readFile(path.join(base, f), 'utf8');
    expect(await text('p0.txt')).toContain('committed');
    expect(await text('p1.code')).toBe('exit=1\n');
    expect(await text('p1.err')).toMatch(/the backup filesystem is full: cannot write .*ENOSPC/);
    const files = (await text('files1.txt')).trim().split('\n');
    expect(files.filter((f) => f.endsWith('.partial'))).toEqual([]);
    expect(files.filter((f) => f.startsWith('./vm/'))).toEqual(['./vm/point_p0/manifest.json', './vm/point_p0/vm.meta', './vm/point_p0/xvda.cidx']);
    for (const f of ['verify1.txt', 'verify2.txt', 'verify3.txt']) expect(JSON.parse(await text(f))).toEqual({ ok: true, points: ['vm/p0'], problems: [] });
    // The GC on a full disk either stops at once with a clear error, or runs (it writes almost nothing).
    const gcCode = await text('gc.code').catch(() => '');
    if (gcCode !== '') expect(await text('gc.err')).toMatch(/the backup filesystem is full: cannot write .*(gc\.lock|gc-last\.json)/);
    expect(await text('gc2.txt')).toContain('gc {');
  }, 300_000);
});

describe('memory', () => {
  it('stays flat in the disk size: a 4 GiB zero-heavy disk takes no more than a 256 MiB one', async () => {
    const small = JSON.parse((await child(['stream', '256'])).lines.at(-1)!) as { maxRssMiB: number; chunks: number };
    const large = JSON.parse((await child(['stream', '4096'])).lines.at(-1)!) as { maxRssMiB: number; chunks: number; zeroChunks: number };
    expect(large.chunks).toBe(1024);
    expect(large.zeroChunks).toBe(1024 - 64);
    expect(large.maxRssMiB - small.maxRssMiB).toBeLessThan(32);
  }, 300_000);
});
