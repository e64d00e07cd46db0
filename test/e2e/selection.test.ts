/**
 * Selection and retention with the real `vmbackup` command against the simulator: a one-off
 * run keeps the MAX the config gives a VM, and a request that matches nothing is an error.
 */
import { mkdir, readdir, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';

const vm = (name: string) => ({ name_label: name, power_state: 'Halted' as const, disks: [{ device: 'xvda', size_mib: 1, fill: 'pattern' as const }], vifs: [] });

const POOL: PoolSpecInput = {
  credentials: { user: 'root', password: 'secret' },
  hosts: [{ name_label: 'xcp1' }],
  srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
  vms: [vm('web01'), vm('db01'), vm('File Server (old)')],
};

let sim: Simulator;
beforeAll(async () => {
  sim = await httpsSim(POOL);
});
afterAll(async () => sim.close());

/** A workspace whose `<base>/etc/vmbackup.cfg` holds `lines` (after `[vmbackup]`). */
async function configured(lines: string[]): Promise<Workspace & { cfg: string }> {
  const ws = await workspace();
  await mkdir(path.join(ws.base, 'etc'));
  const cfg = path.join(ws.base, 'etc', 'vmbackup.cfg');
  await writeFile(cfg, ['[vmbackup]', ...lines, ''].join('\n'));
  return { ...ws, cfg };
}

/** `n` complete VmBackup sets (xva + meta) in the VM's folder, the newest `n` days ago. */
async function legacySets(dir: string, n: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (let i = 1; i <= n; i++) {
    const stamp = `0${i}022024-030405`;
    await writeFile(path.join(dir, `backup_${stamp}.xva`), `xva ${i}`);
    await writeFile(path.join(dir, `backup_${stamp}.meta`), 'name_label=web01\n');
  }
  const old = new Date(Date.now() - 2 * 86_400_000);
  for (const name of await readdir(dir)) await utimes(path.join(dir, name), old, old);
}

const xvas = async (dir: string) => (await readdir(dir)).filter((n) => n.endsWith('.xva')).sort();

describe('retention of a one-off run is never looser than the config', () => {
  it('vmbackup -e web01 keeps the MAX of the config\'s entry for web01, not max_backups', async () => {
    const ws = await configured(['max_backups = 1', 'vm_exports = web01:7, db01']);
    const dir = path.join(ws.exports, 'web01');
    await legacySets(dir, 6);

    const preview = await vmbackup([...ws.args(sim), '-e', 'web01', '--preview']);
    expect(preview.code).toBe(0);
    expect(preview.stdout).toContain(`    web01  (max_backups 7 from config entry "web01:7" [${ws.cfg} line 3])\n`);
    const json = JSON.parse((await vmbackup([...ws.args(sim), '-e', 'web01', '--preview', '--json'])).stdout) as { vm_exports: unknown[] };
    expect(json.vm_exports).toEqual([
      { vm: 'web01', max_backups: 7, max_backups_from: { source: 'config', entry: 'web01:7', where: `${ws.cfg} line 3`, file: ws.cfg, line: 3 }, uuid: sim.state.vm('web01').uuid, folder: 'web01' },
    ]);

    const r = await vmbackup([...ws.args(sim), '-e', 'web01']);
    expect(r.code).toBe(0);
    // The six earlier sets and this run's: seven, as web01:7 says.
    const left = await xvas(dir);
    expect(left).toHaveLength(7);
    expect(left.filter((n) => n.endsWith('022024-030405.xva'))).toHaveLength(6);
  });

  it('the request\'s own MAX wins (-e web01:3); without any entry for the VM, max_backups applies', async () => {
    const ws = await configured(['max_backups = 1', 'vm_exports = web01:7']);
    const dir = path.join(ws.exports, 'web01');
    await legacySets(dir, 6);
    const preview = await vmbackup([...ws.args(sim), '-e', 'web01:3', '-e', 'db01', '--preview']);
    expect(preview.code).toBe(0);
    expect(preview.stdout).toContain('    web01  (max_backups 3 from entry "web01:3" [command line (-e)])\n');
    expect(preview.stdout).toContain(`    db01  (max_backups 1 from max_backups [${ws.cfg} line 2])\n`);
    const r = await vmbackup([...ws.args(sim), '-e', 'web01:3']);
    expect(r.code).toBe(0);
    const left = await xvas(dir);
    expect(left).toHaveLength(3);
    expect(left.filter((n) => n.endsWith('022024-030405.xva'))).toEqual(['backup_05022024-030405.xva', 'backup_06022024-030405.xva']);
  });
});

describe('a request that matched nothing is not a success', () => {
  it('-e NAME matching no VM: exit 2 naming the entry, nothing backed up; --preview says the same and exits 2', async () => {
    const ws = await workspace();
    const r = await vmbackup([...ws.args(sim), '-e', 'web01', '-e', 'nope']);
    expect(r.code).toBe(2);
    expect(r.stdout + r.stderr).toContain('vm_exports: entry "nope" matches no VM of the pool');
    expect(await readdir(ws.exports)).toEqual([]);
    expect(sim.state.snapshots('web01')).toEqual([]);

    const p = await vmbackup([...ws.args(sim), '-e', 'web01', '-E', 'nope2', '--preview']);
    expect(p.code).toBe(2);
    expect(p.stdout).toContain('  errors (cnt) = 1\n    vdi_exports: entry "nope2" matches no VM of the pool\n');
    expect(p.stderr).toContain('vdi_exports: entry "nope2" matches no VM of the pool');
    const pj = await vmbackup([...ws.args(sim), '-e', 'nope3', '--preview', '--json']);
    expect(pj.code).toBe(2);
    expect((JSON.parse(pj.stdout) as { errors: string[] }).errors).toEqual(['vm_exports: entry "nope3" matches no VM of the pool']);
  });

  it('-x NAME matching no VM loses nothing: a warning, the others are backed up', async () => {
    const ws = await workspace();
    const x = await vmbackup([...ws.args(sim), '-e', 'db01', '-x', 'retired-vm']);
    expect(x.code).toBe(0);
    expect(x.stdout + x.stderr).toContain('excludes: entry "retired-vm" matches no VM of the pool');
    expect(await readdir(ws.exports)).toEqual(['db01']);
  });

  it('an entry of a config file matching no VM stays a warning, as in VmBackup', async () => {
    const ws = await configured(['vm_exports = db01, nope']);
    const r = await vmbackup([...ws.args(sim)]);
    expect(r.code).toBe(0);
    expect(r.stdout + r.stderr).toContain('entry "nope" matches no VM of the pool');
    expect(await readdir(ws.exports)).toEqual(['db01']);
  });

  it('an invalid regex is exit 2 from a config file as from the command line, and in --preview', async () => {
    const ws = await configured(['vm_exports = db01, web((']);
    const r = await vmbackup([...ws.args(sim)]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`vm_exports entry "web((" in ${ws.cfg} line 2: invalid regex`);
    expect((await vmbackup([...ws.args(sim), '--preview'])).code).toBe(2);
    const flag = await vmbackup([...ws.args(sim), '-e', 'db(']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain('vm_exports entry "db(" on the command line (-e): invalid regex');
    expect(await readdir(ws.exports)).toEqual([]);
  });

  it('a name with regex characters equal to a VM\'s name: the message says so and how to escape it', async () => {
    const ws = await workspace();
    const r = await vmbackup([...ws.args(sim), '-e', 'File Server (old)']);
    expect(r.code).toBe(2);
    expect(r.stdout + r.stderr).toContain(
      'entry "File Server (old)" matches no VM of the pool: it is read as a regular expression, which the VM named "File Server (old)" does not match; to select that VM by its name, escape the regex characters: File Server \\(old\\)$',
    );
    const fixed = await vmbackup([...ws.args(sim), '-e', 'File Server \\(old\\)$']);
    expect(fixed.code).toBe(0);
    expect(await readdir(ws.exports)).toEqual(['File Server (old)']);
  });
});
