import { spawn } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FOLDER_LOCK_FILE } from '../../runtime/storage/lock.js';
import type { Simulator } from '../sim/server.js';
import { waitFor } from '../sim/test-helpers.js';
import { holdFolderLocks } from '../helpers/held-lock.js';
import { VMBACKUP, httpsSim, workspace } from '../helpers/cli.js';

/*
 * Two runs at once (a cron `vmbackup` and a run on NATS workers) must never prune POOL_DB or
 * HOSTS side by side: each prune takes the folder's lock, waits while another run's live prune
 * holds it, and takes over a dead run's lock.
 */

let sims: Simulator[] = [];
afterEach(async () => {
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
});

const OLD = ['20260101-000000', '20260102-000000', '20260103-000000'];

describe('prune of POOL_DB and HOSTS under the folder lock', () => {
  it('waits while another run prunes POOL_DB and HOSTS, deletes nothing meanwhile, then takes over the dead run’s lock', async () => {
    const sim = await httpsSim({ credentials: { user: 'root', password: 'secret' }, hosts: [{ name_label: 'xcp1' }], srs: [{ name_label: 'NFS', size_gib: 10, used_gib: 1 }], vms: [] });
    sims.push(sim);
    const ws = await workspace();
    const poolDir = path.join(ws.exports, 'POOL_DB');
    const hostsDir = path.join(ws.exports, 'HOSTS');
    await mkdir(poolDir);
    await mkdir(hostsDir);
    for (const stamp of OLD) {
      await writeFile(path.join(poolDir, `metadata_${stamp}.db`), '<database/>');
      await writeFile(path.join(hostsDir, `hosts_xcp1_${stamp}.xbk`), 'old');
    }
    const other = await holdFolderLocks([poolDir, hostsDir]);
    let out = '';
    const child = spawn(process.execPath, [VMBACKUP, ...ws.args(sim), '-x', '.*', '-p', '-H', '--max-backups', '1'], { env: { PATH: process.env.PATH ?? '', HOME: os.tmpdir() } });
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
    try {
      await waitFor(() => out.includes('POOL_DB: waiting for run other-run') && out.includes('HOSTS: waiting for run other-run'), 60_000, `both prunes waiting:\n${out}`);
      // The new backups are in place, and nothing was deleted while the other run held the folders.
      const pool = await readdir(poolDir);
      const hosts = await readdir(hostsDir);
      for (const stamp of OLD) {
        expect(pool).toContain(`metadata_${stamp}.db`);
        expect(hosts).toContain(`hosts_xcp1_${stamp}.xbk`);
      }
      expect(pool.filter((n) => /^metadata_\d{8}-\d{6}\.db$/.test(n))).toHaveLength(4);
    } finally {
      await other.release();
    }
    expect(await exited, out).toBe(0);
    expect(out).toContain('took over the prune lock of a dead run (other-run');
    expect((await readdir(poolDir)).filter((n) => n !== FOLDER_LOCK_FILE && !OLD.some((s) => n.includes(s)))).toHaveLength(1);
    expect((await readdir(poolDir)).filter((n) => OLD.some((s) => n.includes(s)))).toEqual([]);
    expect((await readdir(hostsDir)).filter((n) => OLD.some((s) => n.includes(s)))).toEqual([]);
    expect(await readdir(poolDir)).not.toContain(FOLDER_LOCK_FILE);
  });
});
