import { open, readdir, stat, truncate } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupsResponse } from '../../runtime/gateway/backups.js';
import type { Simulator } from '../sim/server.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';

/* `vmbackup list` on real backups written by `vmbackup` against the simulator, read without a pool. */

describe('vmbackup list, and verify --quarantine', () => {
  let sim: Simulator;
  let ws: Workspace;
  let stamps: string[];
  beforeAll(async () => {
    sim = await httpsSim({
      credentials: { user: 'root', password: 'secret' },
      hosts: [{ name_label: 'xcp1' }],
      srs: [{ name_label: 'NFS', size_gib: 10, used_gib: 1 }],
      vms: [{ name_label: 'web1', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 2, fill: 'pattern' }], vifs: [] }],
    });
    ws = await workspace();
    for (const args of [['-e', 'web1', '-p'], ['-e', 'web1']]) {
      const r = await vmbackup([...ws.args(sim), ...args]);
      if (r.code !== 0) throw new Error(r.stderr);
      await new Promise((resolve) => setTimeout(resolve, 1100));
    }
    const dir = path.join(ws.exports, 'web1');
    stamps = (await readdir(dir)).filter((n) => n.endsWith('.json')).map((n) => n.slice(7, 22)).sort();
    // The older set's XVA gets one flipped byte, and vmbackup verify records its failure.
    const fh = await open(path.join(dir, `backup_${stamps[0]}.xva`), 'r+');
    await fh.write(Buffer.from([0xff]), 0, 1, 4096 + 1024 * 3);
    await fh.close();
    await vmbackup(['verify', '-b', ws.base, path.join(dir, `backup_${stamps[0]}.json`)]);
  }, 120_000);
  afterAll(async () => sim?.close());

  it('shows each set: time, size, whether it counts, verified or not and when, its files; POOL_DB too', async () => {
    // No pool: the simulator is not named, only the backup folder.
    const r = await vmbackup(['list', '-b', ws.base]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines[0]).toMatch(/^web1 \([0-9a-f-]{36}\)$/);
    const newest = lines.find((l) => l.startsWith(`  ${stamps[1]}`))!;
    expect(newest).toMatch(/^ {2}\d{8}-\d{6} {2}\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ {2}[\d.]+ [KM]iB {2}complete {2}verified OK at \d{4}-/);
    const older = lines.find((l) => l.startsWith(`  ${stamps[0]}`))!;
    expect(older).toContain('does not count (failed verification at');
    expect(older).toContain('FAILED verification at');
    expect(lines[lines.indexOf(newest) + 1]).toBe(`    backup_${stamps[1]}.json, backup_${stamps[1]}.meta, backup_${stamps[1]}.xva`);
    expect(r.stdout).toMatch(/^POOL_DB\n {2}\d{8}-\d{6} .* {2}complete {2}not verified\n {4}metadata_\d{8}-\d{6}\.db$/m);
  });

  it('--json, and one VM only', async () => {
    const r = await vmbackup(['list', 'web1', '--json', '-b', ws.base]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout) as BackupsResponse;
    expect(doc.vms.map((v) => v.folder)).toEqual(['web1']);
    expect(doc.vms[0]!.sets.map((s) => [s.stamp, s.complete, s.verify?.ok])).toEqual([
      [stamps[1], true, true],
      [stamps[0], false, false],
    ]);
    expect(doc.poolDb).toEqual([]);
    const none = await vmbackup(['list', 'nosuch', '-b', ws.base]);
    expect(none.code).toBe(0);
    expect(none.stdout).toBe(`no backups of nosuch in ${ws.exports}\n`);
    const bad = await vmbackup(['list', '-d', path.join(ws.base, 'missing')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('cannot be read');
  });

  it('vmbackup verify checks POOL_DB and HOSTS backups: the dump\'s structure, the gzip and tar of a host backup', async () => {
    const w = await workspace();
    const r = await vmbackup([...w.args(sim), '-x', '.*', '-p', '-H']);
    expect(r.code, r.stderr).toBe(0);
    const good = await vmbackup(['verify', '-b', w.base]);
    expect(good.code, good.stdout).toBe(0);
    expect(good.stdout).toMatch(/^OK {10}POOL_DB\/metadata_\d{8}-\d{6}\.db {2}/m);
    expect(good.stdout).toMatch(/^OK {10}HOSTS\/hosts_xcp1_\d{8}-\d{6}\.xbk {2}/m);
    const db = path.join(w.exports, 'POOL_DB', (await readdir(path.join(w.exports, 'POOL_DB')))[0]!);
    const xbk = path.join(w.exports, 'HOSTS', (await readdir(path.join(w.exports, 'HOSTS')))[0]!);
    await truncate(db, (await stat(db)).size - 20);
    await truncate(xbk, (await stat(xbk)).size - 100);
    const bad = await vmbackup(['verify', '-b', w.base]);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/^FAILED {6}POOL_DB\/metadata_\d{8}-\d{6}\.db {2}.*truncated: it does not end with <\/database>/m);
    expect(bad.stdout).toMatch(/^FAILED {6}HOSTS\/hosts_xcp1_\d{8}-\d{6}\.xbk {2}.*not a whole gzip stream/m);
    expect(bad.stdout).toContain('POOL_DB and HOSTS: 0 OK, 2 FAILED');
  });

  it('vmbackup verify --quarantine moves the failed set into .failed/: counted and warned about no more', async () => {
    const dir = path.join(ws.exports, 'web1');
    const r = await vmbackup(['verify', 'web1', '--quarantine', '-b', ws.base]);
    expect(r.code).toBe(1);
    const aside = path.join(dir, '.failed', stamps[0]!);
    expect(r.stdout).toContain(`moved aside to ${aside}; deleted after 30 days (failed_keep_days)`);
    expect((await readdir(aside)).sort()).toEqual([`backup_${stamps[0]}.json`, `backup_${stamps[0]}.meta`, `backup_${stamps[0]}.xva`]);
    expect((await readdir(dir)).filter((n) => n.includes(stamps[0]!))).toEqual([]);
    const listed = JSON.parse((await vmbackup(['list', 'web1', '--json', '-b', ws.base])).stdout) as BackupsResponse;
    expect(listed.vms[0]!.sets.map((s) => s.stamp)).toEqual([stamps[1]]);
    const again = await vmbackup(['verify', 'web1', '-b', ws.base]);
    expect(again.code).toBe(0);
    expect(again.stderr).toBe('');
    expect(again.stdout).toMatch(/verify: 1 set: 1 OK, 0 FAILED/);
  });
});
