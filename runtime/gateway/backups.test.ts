import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { WrittenFile } from '../../functions/job.js';
import type { Manifest } from '../storage/manifest.js';
import {
  HOSTS_FOLDER,
  POOL_DB_FOLDER,
  dataFileName,
  formatLegacyStamp,
  hostBackupFileName,
  manifestFileName,
  metaFileName,
  partialFileName,
  poolDbFileName,
  vmFolderName,
} from '../storage/naming.js';
import { PruneInput, prune } from '../../functions/prune/prune.js';
import { localCtx } from '../function.js';
import { silentLogger } from '../log.js';
import { BackupsResponse, listBackups } from './backups.js';
import { HttpError } from './errors.js';

const now = Date.parse('2026-11-26T12:00:00Z');

/** Writes a complete new-style set: data files, .meta files, and the manifest last. */
async function writeSet(dir: string, stamp: string, vm: { uuid: string; name: string }, mode: 'vm' | 'vdi', data: { format: WrittenFile['format']; disk?: string; bytes: number }[], opts: { breakManifest?: boolean; verify?: Manifest['verify'] } = {}) {
  await mkdir(dir, { recursive: true });
  const files: WrittenFile[] = [];
  for (const d of data) {
    const name = dataFileName(stamp, d.format as never, d.disk);
    await writeFile(path.join(dir, name), Buffer.alloc(d.bytes, 1));
    files.push({ name, format: d.format, size: d.bytes, ...(d.disk !== undefined ? { disk: d.disk } : {}) });
    const meta = metaFileName(stamp, d.disk);
    await writeFile(path.join(dir, meta), 'meta');
    files.push({ name: meta, format: 'meta', size: 4 });
  }
  const manifest: Manifest = {
    kind: 'vmbackup-set',
    version: 1,
    runId: `${stamp}-abcd`,
    jobId: `vm.${vm.uuid}`,
    try: 1,
    vm,
    mode,
    stamp,
    createdAt: new Date(now).toISOString(),
    bytes: data.reduce((n, d) => n + d.bytes, 0),
    files: opts.breakManifest === true ? files.map((f, i) => (i === 0 ? { ...f, size: f.size + 1 } : f)) : files,
    timings: {},
    ...(opts.verify !== undefined ? { verify: opts.verify } : {}),
  };
  await writeFile(path.join(dir, manifestFileName(stamp)), JSON.stringify(manifest));
}

describe('listBackups: a real backup_dir', () => {
  let dir: string;
  const web1 = { uuid: '11111111-aaaa', name: 'web1' };
  const db1 = { uuid: '22222222-bbbb', name: 'db1' };
  const slash = { uuid: '33333333-cccc', name: 'a/b' };

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-backups-'));
    const w = path.join(dir, 'web1');
    await writeSet(w, '20261120-083000', web1, 'vm', [{ format: 'xva', bytes: 100 }]);
    await writeSet(w, '20261125-083000', web1, 'vm', [{ format: 'xva.zst', bytes: 60 }]);
    await writeFile(path.join(w, partialFileName(dataFileName('20261126-083000', 'xva'))), Buffer.alloc(10));
    await writeSet(w, '20261126-090000', web1, 'vm', [{ format: 'xva', bytes: 100 }], { breakManifest: true });
    await writeFile(path.join(w, 'notes.txt'), 'not ours');
    await writeSet(path.join(dir, 'db1'), '20261125-083000', db1, 'vdi', [{ format: 'vhd', disk: 'xvda', bytes: 30 }, { format: 'vhd', disk: 'xvdb', bytes: 20 }]);
    await writeSet(path.join(dir, vmFolderName(slash.name, slash.uuid, { shared: false })), '20261125-083000', slash, 'vm', [{ format: 'xva.gz', bytes: 5 }]);
    // A folder VmBackup wrote: legacy stamps, no manifest.
    const legacy = path.join(dir, 'old-vm');
    await mkdir(legacy);
    const ls = formatLegacyStamp(new Date('2026-01-11T08:30:00Z'));
    await writeFile(path.join(legacy, `backup_${ls}.xva`), Buffer.alloc(7));
    await writeFile(path.join(legacy, `backup_${ls}.meta`), 'm');
    await mkdir(path.join(dir, 'lost+found'));
    await mkdir(path.join(dir, POOL_DB_FOLDER));
    await writeFile(path.join(dir, POOL_DB_FOLDER, poolDbFileName('20261124-083000')), Buffer.alloc(9));
    await writeFile(path.join(dir, POOL_DB_FOLDER, poolDbFileName('20261125-083000')), Buffer.alloc(11));
    await mkdir(path.join(dir, HOSTS_FOLDER));
    await writeFile(path.join(dir, HOSTS_FOLDER, hostBackupFileName('xcp1', '20261125-083000')), Buffer.alloc(3));
    await writeFile(path.join(dir, HOSTS_FOLDER, partialFileName(hostBackupFileName('xcp2', '20261125-083000'))), Buffer.alloc(2));
  });

  it('lists each VM folder with its sets, newest first: dates, sizes, formats, complete or not', async () => {
    const r = BackupsResponse.parse(await listBackups(dir, { now }));
    expect(r.backupDir).toBe(dir);
    expect(r.vms.map((v) => v.folder)).toEqual([vmFolderName('a/b', slash.uuid, { shared: false }), 'db1', 'old-vm', 'web1']);
    expect(r.vms[0]!.folder).toMatch(/^a_b~[0-9a-f]{8}$/);

    const w = r.vms.find((v) => v.folder === 'web1')!;
    expect(w.vm).toEqual(web1);
    expect(w.sets.map((s) => [s.stamp, s.complete, s.incompleteReason, s.formats])).toEqual([
      ['20261126-090000', false, 'invalid-manifest', ['xva']],
      ['20261126-083000', false, 'partial', []],
      ['20261125-083000', true, undefined, ['xva.zst']],
      ['20261120-083000', true, undefined, ['xva']],
    ]);
    const complete = w.sets[2]!;
    expect(complete).toMatchObject({ date: '2026-11-25T08:30:00.000Z', legacy: false, mode: 'vm', runId: '20261125-083000-abcd', bytes: 60 + 4 + complete.files.find((f) => f.kind === 'manifest')!.size });
    expect(complete.files.map((f) => [f.name, f.kind, f.format])).toEqual([
      ['backup_20261125-083000.json', 'manifest', undefined],
      ['backup_20261125-083000.meta', 'meta', undefined],
      ['backup_20261125-083000.xva.zst', 'data', 'xva.zst'],
    ]);
    expect(w.sets[1]!.files).toEqual([{ name: 'backup_20261126-083000.xva.partial', size: 10, kind: 'partial', format: 'xva' }]);

    const d = r.vms.find((v) => v.folder === 'db1')!;
    expect(d.sets).toHaveLength(1); // one set for both disks
    expect(d.sets[0]).toMatchObject({ complete: true, mode: 'vdi', formats: ['vhd'], disks: ['xvda', 'xvdb'] });

    const old = r.vms.find((v) => v.folder === 'old-vm')!;
    expect(old.vm).toBeUndefined();
    expect(old.sets).toMatchObject([{ legacy: true, complete: true, date: '2026-01-11T08:30:00.000Z', formats: ['xva'] }]);
  });

  it('a set that failed `vmbackup verify` is not complete, says why, and shows each set’s verification', async () => {
    // What `vmbackup verify` leaves: its result recorded in each manifest.
    const own = await mkdtemp(path.join(os.tmpdir(), 'vmb-gw-verified-'));
    const folder = path.join(own, 'PRD-db1');
    const prd = { uuid: '44444444-dddd', name: 'PRD-db1' };
    const bad = { at: '2026-11-26T09:00:00.000Z', ok: false, error: 'backup_20261126-083000.xva: chunk Ref:3/00000042 fails its XXH64 checksum at byte 44107776' };
    await writeSet(folder, '20261125-083000', prd, 'vm', [{ format: 'xva', bytes: 40 }], { verify: { at: '2026-11-26T08:59:00.000Z', ok: true } });
    await writeSet(folder, '20261126-083000', prd, 'vm', [{ format: 'xva', bytes: 50 }], { verify: bad });
    await writeSet(folder, '20261126-100000', prd, 'vm', [{ format: 'xva', bytes: 60 }]);

    const r = BackupsResponse.parse(await listBackups(own, { now, vm: 'PRD-db1' }));
    expect(r.vms.map((v) => [v.folder, v.vm])).toEqual([['PRD-db1', prd]]);
    const [unverified, failed, good] = r.vms[0]!.sets;
    expect(failed).toMatchObject({
      stamp: '20261126-083000',
      complete: false,
      incompleteReason: 'failed-verification',
      incompleteMessage: `failed verification at ${bad.at}: ${bad.error}`,
      verify: bad,
      mode: 'vm',
      runId: '20261126-083000-abcd',
    });
    expect(good).toMatchObject({ stamp: '20261125-083000', complete: true, verify: { at: '2026-11-26T08:59:00.000Z', ok: true } });
    expect(good).not.toHaveProperty('incompleteReason');
    expect(unverified).toMatchObject({ stamp: '20261126-100000', complete: true });
    expect(unverified).not.toHaveProperty('verify');

    // The very sets prune counts (prune keeps every complete one, and moves the failed one aside).
    const pruned = await prune.handle(PruneInput.parse({ runId: 'r', jobId: 'j', backupDir: own, folder: 'PRD-db1', maxBackups: 2 }), localCtx({ log: silentLogger(), clock: { now: () => new Date(now) } }));
    expect(pruned.kept).toEqual(r.vms[0]!.sets.filter((s) => s.complete).map((s) => s.stamp));
    expect(pruned.warnings).toEqual([`PRD-db1: backup set 20261126-083000 failed verification: moved aside to ${path.join(own, 'PRD-db1', '.failed', '20261126-083000')}, deleted after 30 days`]);
    expect(pruned.quarantined).toEqual(['20261126-083000']);
  });

  it('says why each incomplete set does not count', async () => {
    const r = await listBackups(dir, { now, vm: 'web1' });
    expect(r.vms[0]!.sets.filter((s) => !s.complete).map((s) => [s.incompleteReason, s.incompleteMessage])).toEqual([
      ['invalid-manifest', 'backup_20261126-090000.xva: 100 bytes, manifest says 101'],
      ['partial', expect.stringContaining('.partial')],
    ]);
  });

  it('pool DB and host backups, per host', async () => {
    const r = await listBackups(dir, { now });
    expect(r.poolDb.map((s) => [s.stamp, s.complete, s.bytes, s.formats])).toEqual([
      ['20261125-083000', true, 11, ['db']],
      ['20261124-083000', true, 9, ['db']],
    ]);
    expect(r.hosts.map((h) => [h.host, h.sets.map((s) => [s.complete, s.files[0]!.kind])])).toEqual([
      ['xcp1', [[true, 'data']]],
      ['xcp2', [[false, 'partial']]],
    ]);
  });

  it.each([
    ['a folder name', 'db1', ['db1']],
    ['a VM name recorded in its manifests', 'a/b', [vmFolderName('a/b', slash.uuid, { shared: false })]],
    ['a VM with no backup', 'nope', []],
  ])('?vm= by %s', async (_name, vm, folders) => {
    const r = await listBackups(dir, { now, vm });
    expect(r.vms.map((v) => v.folder)).toEqual(folders);
    expect(r.poolDb).toEqual([]);
    expect(r.hosts).toEqual([]);
  });

  it('a backup_dir that cannot be read is a 503 naming it', async () => {
    const missing = path.join(dir, 'not-mounted');
    const error = await listBackups(missing, { now }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HttpError);
    expect(error).toMatchObject({ status: 503, code: 'BACKUP_DIR_UNAVAILABLE' });
    expect((error as Error).message).toContain(missing);
  });
});
