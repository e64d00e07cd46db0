import { execFileSync, spawnSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { open, readFile, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verify } from '../../functions/verify/verify.js';
import { readTar } from '../../runtime/formats/tar.js';
import { localCtx } from '../../runtime/function.js';
import { silentLogger } from '../../runtime/log.js';
import { Manifest } from '../../runtime/storage/manifest.js';
import type { Simulator } from '../sim/server.js';
import { pool } from '../sim/fixtures.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';

/*
 * `vmbackup verify` on real backups written by `vmbackup` against the simulator: every format
 * passes untouched, one flipped byte fails it with the file and the place named, the manifest
 * records the outcome, and the exit code says it.
 */

const web1 = {
  name_label: 'web1',
  power_state: 'Running' as const,
  disks: [
    { device: 'xvda', size_mib: 3, fill: 'pattern' as const },
    { device: 'xvdb', size_mib: 4, fill: 'sparse' as const },
  ],
  vifs: [],
};
const db1 = { name_label: 'db1', power_state: 'Halted' as const, disks: [{ device: 'xvda', size_mib: 2, fill: 'pattern' as const }], vifs: [] };

const FORMATS = {
  xva: ['-e', 'web1'],
  'xva.gz': ['-e', 'web1', '-C'],
  'xva.zst': ['-e', 'web1', '--compression', 'zstd'],
  vhd: ['-E', 'web1', '-F', 'vhd'],
  raw: ['-E', 'web1', '-F', 'raw'],
} as const;
type Format = keyof typeof FORMATS;

async function flip(file: string, offset: number, mask = 0x01): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, offset);
    b[0] = b[0]! ^ mask;
    await fh.write(b, 0, 1, offset);
  } finally {
    await fh.close();
  }
}

interface JsonResult {
  ok: boolean;
  exitCode: number;
  summary: { sets: number; ok: number; failed: number; incomplete: number; errors: number };
  sets: { folder: string; stamp: string; status: string; verified?: { ok: boolean; error?: Record<string, unknown>; files: { name: string; ok: boolean }[] } }[];
}

describe('vmbackup verify', () => {
  let sim: Simulator;
  const ws = {} as Record<Format, Workspace>;

  beforeAll(async () => {
    sim = await httpsSim(pool([web1, db1]));
    // One after the other: two runs snapshotting one VM at once would see each other's snapshots.
    for (const format of Object.keys(FORMATS) as Format[]) {
      ws[format] = await workspace();
      const r = await vmbackup([...ws[format].args(sim), ...FORMATS[format]]);
      if (r.code !== 0) throw new Error(`backup (${format}) failed: ${r.stdout}${r.stderr}`);
    }
  }, 120_000);
  afterAll(async () => sim?.close());

  const dataFile = async (w: Workspace, suffix: string): Promise<string> => {
    const names = await readdir(path.join(w.exports, 'web1'));
    return path.join(w.exports, 'web1', names.find((n) => n.endsWith(suffix))!);
  };
  const manifestOf = async (w: Workspace): Promise<Manifest> => {
    const dir = path.join(w.exports, 'web1');
    const name = (await readdir(dir)).find((n) => n.endsWith('.json'))!;
    return Manifest.parse(JSON.parse(await readFile(path.join(dir, name), 'utf8')));
  };

  it.each(Object.keys(FORMATS) as Format[])('%s: passes untouched; one flipped byte fails it, named, recorded, exit 1', async (format) => {
    const w = ws[format];
    const ok = await vmbackup(['verify', '-b', w.base]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^OK {10}web1\/backup_\d{8}-\d{6} {2}\d+ files, [\d.]+ MiB in [\d.]+ s\nverify: 1 set: 1 OK, 0 FAILED; /);
    // The options may come first, as a VmBackup cron line writes them.
    const first = await vmbackup(['-b', w.base, 'verify']);
    expect(first).toMatchObject({ code: 0, stderr: '' });
    expect(first.stdout).toMatch(/^OK {10}web1\/backup_\d{8}-\d{6} {2}\d+ files, [\d.]+ MiB in [\d.]+ s\nverify: 1 set: 1 OK, 0 FAILED; /);
    expect((await manifestOf(w)).verify).toMatchObject({ ok: true });

    // One byte, in the middle of the (first) data file.
    const file = await dataFile(w, `.${format}`);
    const size = (await stat(file)).size;
    const at = format.startsWith('xva') ? Math.floor(size / 2) : format === 'vhd' ? 512 + 36 : 12345;
    await flip(file, at, 0x10);
    const bad = await vmbackup(['verify', '-b', w.base, '--json']);
    expect(bad.code).toBe(1);
    const json = JSON.parse(bad.stdout) as JsonResult;
    expect(json).toMatchObject({ ok: false, exitCode: 1, summary: { sets: 1, ok: 0, failed: 1 } });
    const error = json.sets[0]!.verified!.error!;
    expect(error.file).toBe(path.basename(file));
    expect(String(error.message).startsWith(`${path.basename(file)}: `)).toBe(true);
    if (format === 'xva') expect(error).toMatchObject({ code: 'XVA_BAD_CHECKSUM', chunk: expect.stringMatching(/^Ref:\d+\/\d{8}$/), offset: expect.any(Number) });
    if (format === 'vhd') expect(error).toMatchObject({ code: 'VHD_BAD_HEADER_CHECKSUM', offset: 512 + 36 });
    if (format === 'raw') expect(error).toMatchObject({ code: 'VERIFY_XXH64_MISMATCH' });
    if (format === 'xva.gz' || format === 'xva.zst') expect(error.code).toMatch(/^(VERIFY_DECOMPRESS_FAILED|XVA_|TAR_)/);
    const recorded = (await manifestOf(w)).verify!;
    expect(recorded).toMatchObject({ ok: false, error: error.message });

    // The text output names the file and the place.
    const text = await vmbackup(['verify', '-b', w.base]);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain(`FAILED      web1/backup_`);
    expect(text.stdout).toContain(String(error.message));
    await flip(file, at, 0x10); // put it back
    expect((await vmbackup(['verify', '-b', w.base])).code).toBe(0);
    expect((await manifestOf(w)).verify).toMatchObject({ ok: true });
  });

  it('a truncated file and a flipped .meta byte are caught', async () => {
    const w = await workspace();
    expect((await vmbackup([...w.args(sim), '-e', 'db1'])).code).toBe(0);
    const dir = path.join(w.exports, 'db1');
    const names = await readdir(dir);
    const xva = path.join(dir, names.find((n) => n.endsWith('.xva'))!);
    const meta = path.join(dir, names.find((n) => n.endsWith('.meta'))!);
    await flip(meta, 20);
    const r1 = JSON.parse((await vmbackup(['verify', '-b', w.base, '--json'])).stdout) as JsonResult;
    expect(r1.sets[0]!.verified!.error).toMatchObject({ file: path.basename(meta), code: 'VERIFY_XXH64_MISMATCH' });
    await flip(meta, 20);
    const { truncate } = await import('node:fs/promises');
    await truncate(xva, (await stat(xva)).size - 5000);
    const r2 = await vmbackup(['verify', '-b', w.base, '--json']);
    expect(r2.code).toBe(1);
    expect((JSON.parse(r2.stdout) as JsonResult).sets[0]!.verified!.error).toMatchObject({ file: path.basename(xva), code: expect.stringMatching(/^TAR_(TRUNCATED|NO_END)$/) });
  });

  it('VM names, --latest, paths, incomplete sets, nothing to verify, usage errors', async () => {
    const w = await workspace();
    expect((await vmbackup([...w.args(sim), '-e', 'db1'])).code).toBe(0);
    await new Promise((r) => setTimeout(r, 1100)); // a new stamp
    expect((await vmbackup([...w.args(sim), '-e', 'db1', '-e', 'web1'])).code).toBe(0);

    const byName = await vmbackup(['verify', 'db1', '-b', w.base]);
    expect(byName.code).toBe(0);
    expect(byName.stdout.match(/^OK .*db1\/backup_/gm)).toHaveLength(2);
    const latest = await vmbackup(['verify', '-b', w.base, 'db1', '--latest', 'web1']);
    expect(latest.stdout.match(/^OK /gm)).toHaveLength(2);
    expect(latest.stdout).toMatch(/verify: 2 sets: 2 OK, 0 FAILED/);
    const all = await vmbackup(['verify', '-b', w.base]);
    expect(all.stdout).toMatch(/verify: 3 sets: 3 OK, 0 FAILED/);

    // A path: a file of a set, a folder, the backup_dir.
    const dbDir = path.join(w.exports, 'db1');
    const oldest = (await readdir(dbDir)).sort()[0]!;
    const one = await vmbackup(['verify', path.join(dbDir, oldest), '-b', '/nonexistent']);
    expect(one.code).toBe(0);
    expect(one.stdout.match(/^OK /gm)).toHaveLength(1);
    expect((await vmbackup(['verify', dbDir])).stdout).toMatch(/verify: 2 sets/);
    expect((await vmbackup(['verify', w.exports])).stdout).toMatch(/verify: 3 sets/);
    expect((await vmbackup(['verify', oldest, '-b', w.base], { cwd: dbDir })).stdout).toMatch(/verify: 1 set: 1 OK/);

    // A set without manifest: reported, not a failure.
    const newest = (await readdir(dbDir)).filter((n) => n.endsWith('.json')).sort().pop()!;
    await rm(path.join(dbDir, newest));
    const incomplete = await vmbackup(['verify', '-b', w.base, 'db1']);
    expect(incomplete.code).toBe(0);
    expect(incomplete.stdout).toMatch(/^INCOMPLETE {2}db1\/backup_\d{8}-\d{6} {2}no manifest/m);
    expect(incomplete.stdout).toMatch(/1 OK, 0 FAILED, 1 incomplete/);
    // Named explicitly, the same set fails: it is not a backup.
    const named = await vmbackup(['verify', path.join(dbDir, newest.replace('.json', '.xva'))]);
    expect(named.code).toBe(1);
    expect(named.stdout).toMatch(/FAILED .*: missing: backup set \d{8}-\d{6} is incomplete/);

    const empty = await workspace();
    const nothing = await vmbackup(['verify', '-b', empty.base]);
    expect(nothing).toMatchObject({ code: 0, stderr: '' });
    expect(nothing.stdout).toBe(`verify: nothing to verify in ${empty.exports} (no backup sets)\n`);

    const unknown = await vmbackup(['verify', 'nosuchvm', '-b', w.base]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/no backups of VM "nosuchvm"/);
    expect((await vmbackup(['verify', '/nonexistent/x'])).code).toBe(2);
    expect((await vmbackup(['verify', '--bogus'])).code).toBe(2);
    expect((await vmbackup(['verify', '-b', '/nonexistent'])).code).toBe(2);
    const help = await vmbackup(['verify', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^usage: vmbackup verify/);
  }, 180_000); // seventeen commands, each a process start (tsx) and a verify

  it('a VmBackup folder: format checks only, said on the line; a damaged chunk still fails it', async () => {
    const w = await workspace();
    expect((await vmbackup([...w.args(sim), '-e', 'db1'])).code).toBe(0);
    const dir = path.join(w.exports, 'db1');
    const { rename } = await import('node:fs/promises');
    for (const name of await readdir(dir)) {
      if (name.endsWith('.json')) await rm(path.join(dir, name));
      else await rename(path.join(dir, name), path.join(dir, name.replace(/\d{8}-\d{6}/, '01022024-030405')));
    }
    const ok = await vmbackup(['verify', '-b', w.base]);
    expect(ok).toMatchObject({ code: 0, stderr: '' });
    expect(ok.stdout).toMatch(/^OK {10}db1\/backup_01022024-030405 {2}2 files, .* \(VmBackup set: format checks only, no manifest\)$/m);
    const xva = path.join(dir, 'backup_01022024-030405.xva');
    let chunkData = -1;
    for await (const e of readTar(createReadStream(xva))) if (chunkData < 0 && e.name.endsWith('/00000000')) chunkData = e.dataOffset;
    await flip(xva, chunkData + 100);
    const bad = await vmbackup(['verify', '-b', w.base]);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/FAILED {6}db1\/backup_01022024-030405 {2}backup_01022024-030405\.xva: chunk Ref:\d+\/00000000 fails its XXH64 checksum at byte \d+/);
  });

  it('verify_after_backup is a setting (file, environment), unset by default', async () => {
    const w = await workspace();
    const preview = async (env: Record<string, string> = {}) =>
      (JSON.parse((await vmbackup([...w.args(sim), '--preview', '--json'], { env })).stdout) as { settings: Record<string, unknown> }).settings.verify_after_backup;
    expect(await preview()).toBeNull();
    expect(await preview({ VMBACKUP_VERIFY_AFTER_BACKUP: 'yes' })).toBe(true);
    expect(await preview({ VMBACKUP_VERIFY_AFTER_BACKUP: 'no' })).toBe(false);
  });

  it('unset, verify_after_backup checks XVA sets and not disk exports; false turns it off', { timeout: 240_000 }, async () => {
    const verified = async (args: string[], env: Record<string, string> = {}) => {
      const w = await workspace();
      const r = await vmbackup([...w.args(sim), ...args], { env });
      expect(r.code, r.stderr).toBe(0);
      const dir = path.join(w.exports, 'web1');
      const json = (await readdir(dir)).find((n) => n.endsWith('.json'))!;
      return Manifest.parse(JSON.parse(await readFile(path.join(dir, json), 'utf8'))).verify?.ok;
    };
    expect(await verified(['-e', 'web1'])).toBe(true);
    expect(await verified(['-e', 'web1', '-C'])).toBe(true);
    expect(await verified(['-E', 'web1'])).toBeUndefined();
    expect(await verified(['-e', 'web1'], { VMBACKUP_VERIFY_AFTER_BACKUP: 'false' })).toBeUndefined();
    expect(await verified(['-E', 'web1'], { VMBACKUP_VERIFY_AFTER_BACKUP: 'true' })).toBe(true);
  });
});

describe('vmbackup verify: speed and memory on a 1 GiB XVA', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await httpsSim(pool([{ name_label: 'big', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1024, fill: 'pattern' }], vifs: [] }]));
  });
  afterAll(async () => sim?.close());

  it('streams at disk speed with flat memory (figures printed, RSS bounded loosely)', { timeout: 300_000 }, async () => {
    const w = await workspace();
    const backup = await vmbackup([...w.args(sim), '-e', 'big'], { timeoutMs: 240_000 });
    expect(backup.code).toBe(0);
    const dir = path.join(w.exports, 'big');
    const xva = path.join(dir, (await readdir(dir)).find((n) => n.endsWith('.xva'))!);
    const bytes = (await stat(xva)).size;
    expect(bytes).toBeGreaterThan(1 << 30);
    const MiB = 1 << 20;
    const rate = (ms: number) => `${(bytes / MiB / (ms / 1000)).toFixed(0)} MiB/s`;
    const timed = (f: () => void): number => {
      const t = performance.now();
      f();
      return performance.now() - t;
    };
    // Baselines on the same file (page cache warm for all: the backup just wrote it).
    const catMs = timed(() => execFileSync('sh', ['-c', `cat "${xva}" > /dev/null`]));
    const xxhsum = spawnSync('xxhsum', ['-H64', xva]).status === 0;
    const xxhMs = xxhsum ? timed(() => execFileSync('xxhsum', ['-H64', xva])) : NaN;

    const ctx = localCtx({
      log: silentLogger(),
      xapi: async () => {
        throw new Error('no XAPI');
      },
    });
    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    let rssMax = rssBefore;
    const sampler = setInterval(() => (rssMax = Math.max(rssMax, process.memoryUsage().rss)), 20);
    const stamp = path.basename(xva).slice('backup_'.length, -'.xva'.length);
    // Twice: the first run includes warming up; CPU time shows the cost whatever the load.
    const runs: { ms: number; cpuMs: number }[] = [];
    for (let i = 0; i < 2; i++) {
      const cpu = process.cpuUsage();
      const t = performance.now();
      const out = await verify.handle(verify.subject.schema.parse({ backupDir: w.exports, folder: 'big', stamp }), ctx);
      const used = process.cpuUsage(cpu);
      runs.push({ ms: performance.now() - t, cpuMs: (used.user + used.system) / 1000 });
      expect(out.verified!.ok).toBe(true);
    }
    clearInterval(sampler);
    const best = runs.reduce((a, b) => (b.ms < a.ms ? b : a));
    const verifyMs = best.ms;

    const cliStart = performance.now();
    const cli = await vmbackup(['verify', '-b', w.base, '--latest'], { timeoutMs: 240_000 });
    const cliMs = performance.now() - cliStart;
    expect(cli.code).toBe(0);

    const growth = (rssMax - rssBefore) / MiB;
    console.log(
      [
        `verify throughput, ${(bytes / MiB).toFixed(0)} MiB XVA (page cache):`,
        `  cat > /dev/null          ${catMs.toFixed(0)} ms  ${rate(catMs)}`,
        xxhsum ? `  xxhsum -H64              ${xxhMs.toFixed(0)} ms  ${rate(xxhMs)}` : '  xxhsum                   (not installed)',
        `  verify handler           ${verifyMs.toFixed(0)} ms  ${rate(verifyMs)}  (best of ${runs.map((r) => r.ms.toFixed(0)).join('/')} ms; CPU ${best.cpuMs.toFixed(0)} ms = ${rate(best.cpuMs)} of CPU), RSS +${growth.toFixed(1)} MiB`,
        `                           (chunk XXH64s + whole-file XXH64 + tar/ova.xml checks; load average ${os.loadavg()[0]!.toFixed(1)} on ${os.cpus().length} CPUs)`,
        `  vmbackup verify (CLI)    ${cliMs.toFixed(0)} ms  ${rate(cliMs)}  (process start included)`,
      ].join('\n'),
    );
    // Flat memory: a few read buffers and one chunk, not the file (loose bound for GC slack).
    expect(growth).toBeLessThan(200);
    await rm(w.base, { recursive: true, force: true }); // 1 GiB
  });
});

describe('verify_after_backup: each set is checked right after it is written', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await httpsSim(pool([web1, db1]));
  });
  afterAll(async () => sim.close());

  async function cfg(ws: Workspace, extra = ''): Promise<string> {
    const file = path.join(ws.base, 'verify.cfg');
    await (await import('node:fs/promises')).writeFile(file, `[vmbackup]\nverify_after_backup = true\n${extra}`);
    return file;
  }

  it('reports the checks in the summary and records them in the manifests', async () => {
    const ws = await workspace();
    const r = await vmbackup([...ws.args(sim), '-c', await cfg(ws)]);
    expect(r.code).toBe(0);
    // Uncompressed XVAs: checked by the export as it wrote them, not read back.
    expect(r.stdout).toMatch(/verified after backup: 2 of 2 sets OK \(checked as written\)/);
    for (const vm of ['web1', 'db1']) {
      const json = (await readdir(path.join(ws.exports, vm))).find((n) => n.endsWith('.json'))!;
      const manifest = Manifest.parse(JSON.parse(await readFile(path.join(ws.exports, vm, json), 'utf8')));
      expect(manifest.verify).toMatchObject({ ok: true });
      expect(manifest.files.find((f) => f.format === 'xva')!.checkedAsWritten?.detail).toMatch(/ chunks, xxhash checksums$/);
    }
  });

  it('silent corruption on the way is caught as it is written: the VM is backed up again, the bad export never kept', async () => {
    const ws = await workspace();
    // One flipped byte inside the XVA's second chunk, once: the first attempt's check fails,
    // the VM is backed up again from a new snapshot (vm_retries = 1), and that one is good.
    sim.faults.add({ http: 'export', vm: 'web1', action: { kind: 'corrupt', at_byte: (2 << 20) + 4096 } });
    const r = await vmbackup([...ws.args(sim), '-c', await cfg(ws), '-e', 'web1', '--json']);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout) as { jobs: { status: string; tries: number; verified: { ok: boolean }; warnings: string[] }[] };
    expect(summary.jobs[0]).toMatchObject({ status: 'warning', tries: 2, verified: { ok: true, asWritten: true } });
    // Only the small .meta was read back, not the XVA.
    expect((summary.jobs[0]!.verified as unknown as { bytes: number }).bytes).toBeLessThan(4096);
    expect(summary.jobs[0]!.warnings.join('\n')).toMatch(/export failed \(checked as written: backup_\d{8}-\d{6}\.xva: chunk Ref:\d+\/\d{8} fails its XXH64 checksum at byte \d+; the export was discarded\)/);
    // One set: the second attempt's.
    expect((await readdir(path.join(ws.exports, 'web1'))).filter((n) => n.endsWith('.xva'))).toHaveLength(1);
  });

  it('corruption every time: exit 1, the error names the chunk, nothing kept, earlier backups intact', async () => {
    const ws = await workspace();
    expect((await vmbackup([...ws.args(sim), '-e', 'web1'])).code).toBe(0);
    const before = (await readdir(path.join(ws.exports, 'web1'))).sort();
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const fault = sim.faults.add({ http: 'export', vm: 'web1', always: true, action: { kind: 'corrupt', at_byte: (2 << 20) + 4096 } });
    try {
      const r = await vmbackup([...ws.args(sim), '-c', await cfg(ws), '-e', 'web1']);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(/ERROR: vm-export web1: checked as written: backup_\d{8}-\d{6}\.xva: chunk Ref:\d+\/\d{8} fails its XXH64 checksum at byte \d+; the export was discarded/);
      // No set was written, so none was verified after the backup.
      expect(r.stdout).not.toMatch(/verified after backup/);
      // Nothing of the bad exports is on disk (no .partial, no set); the earlier set is intact.
      expect((await readdir(path.join(ws.exports, 'web1'))).sort()).toEqual(before);
    } finally {
      sim.faults.remove(fault);
    }
  });
});
