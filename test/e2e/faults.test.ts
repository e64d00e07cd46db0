import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LOCK_FILE } from '../../runtime/storage/lock.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';
import { startSimulator } from '../sim/server.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import { waitFor } from '../sim/test-helpers.js';
import { pool, vm } from '../sim/fixtures.js';

let sims: Simulator[] = [];
async function sim(spec: PoolSpecInput, https = true): Promise<Simulator> {
  const s = https ? await httpsSim(spec) : await startSimulator({ pool: spec });
  sims.push(s);
  return s;
}
afterEach(async () => {
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
});

describe('vmbackup: connection and config errors exit 2 with a clear message', () => {
  it('bad credentials', async () => {
    const s = await sim(pool([vm('a')]));
    const ws = await workspace('wrong-password');
    const r = await vmbackup(ws.args(s));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('refused the credentials of user "root" (SESSION_AUTHENTICATION_FAILED)');
    expect(r.stderr + r.stdout).not.toContain('wrong-password');
  });

  it('unreachable host', async () => {
    const ws = await workspace();
    const r = await vmbackup(['-b', ws.base, '--xapi', 'https://127.0.0.1:9', '--password-file', ws.passwordFile]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('cannot reach XAPI at https://127.0.0.1:9 (ECONNREFUSED)');
  });

  it('TLS certificate not trusted: says how to trust it', async () => {
    const s = await sim(pool([vm('a')]));
    const ws = await workspace();
    const r = await vmbackup(['-b', ws.base, '--xapi', s.url, '--password-file', ws.passwordFile]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/TLS certificate of https:\/\/127\.0\.0\.1:\d+ is not trusted \(\w+\): give its CA with tls_ca_file/);
    expect(s.state.liveSessions()).toBe(0);
  });

  it('an invalid config value names the key, the file, the line and the reason', async () => {
    const ws = await workspace();
    const cfg = path.join(ws.base, 'bad.cfg');
    await writeFile(cfg, '[vmbackup]\nmax_backups = 0\n');
    const r = await vmbackup(['-b', ws.base, '-c', cfg, '--xapi', 'https://127.0.0.1:9', '--password-file', ws.passwordFile]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`max_backups = 0 in ${cfg} line 2`);
    expect(r.stderr).toMatch(/>= 1/);
  });

  it('an unknown flag is a usage error', async () => {
    const r = await vmbackup(['--frobnicate']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--frobnicate');
  });

  it('a missing backup_dir (share not mounted) is refused before connecting', async () => {
    const ws = await workspace();
    const r = await vmbackup(['-b', ws.base, '-d', path.join(ws.base, 'not-mounted'), '--xapi', 'https://127.0.0.1:9', '--password-file', ws.passwordFile]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('does not exist or is not a directory (is the backup share mounted?)');
  });

  it('a backup_dir that takes no file is a setup error (exit 2), not a crash', async () => {
    // sysfs takes no new file, even from root: what a read-only or root-squashed share does.
    const ws = await workspace();
    const r = await vmbackup(['-b', ws.base, '-d', '/sys', '--xapi', 'https://127.0.0.1:9', '--password-file', ws.passwordFile]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ERROR: backup_dir \/sys is not writable: cannot create \.vmbackup\.lock \((EACCES|EROFS|EPERM)\)$/m);
    expect(r.stderr).not.toContain('internal error');
  });

  it('mount_check refuses a backup_dir that is not on the share', async () => {
    const ws = await workspace();
    const cfg = path.join(ws.base, 'mount.cfg');
    await writeFile(cfg, '[vmbackup]\nmount_check = true\nshare_type = nfs\n');
    const r = await vmbackup(['-b', ws.base, '-c', cfg, '--xapi', 'https://127.0.0.1:9', '--password-file', ws.passwordFile]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/mount_check: backup_dir .* is not on a mounted nfs share \(found \S+ filesystem/);
  });

  it('too little free space: nothing is snapshotted', async () => {
    const s = await sim(pool([vm('a')]));
    const ws = await workspace();
    const r = await vmbackup([...ws.args(s), '--space-threshold', '99']);
    expect(r.code).toBe(2);
    expect(r.stdout + r.stderr).toMatch(/below space_threshold 99%/);
    expect(s.state.rpcCalls().byMethod['VM.snapshot'] ?? 0).toBe(0);
    expect(await readdir(ws.exports)).toEqual([]);
  });
});

// An export failing mid-stream, a failed task, and the other rows of the README's fault
// table: see fault-matrix.test.ts.

describe('vmbackup: snapshots are found by tag, never by name', () => {
  it('destroys leftovers of crashed runs, keeps live ones, never touches a VM named like a snapshot', async () => {
    const now = Date.now();
    const tags = (run: string, origin: string, created: number) => ({
      'vmbackup:run': run,
      'vmbackup:job': `${run}/vm.x/1`,
      'vmbackup:source': 'x',
      'vmbackup:origin': origin,
      'vmbackup:created': new Date(created).toISOString(),
    });
    const s = await sim(
      pool([
        {
          ...vm('web1'),
          snapshots: [
            { name_label: 'web1 (vmbackup 20250101-000000)', other_config: tags('20250101-000000-dead', 'elsewhere:1', now - 3 * 86_400_000) },
            { name_label: 'web1 (vmbackup now)', other_config: tags('20261126-000000-live', 'elsewhere:1', now - 60_000) },
            { name_label: `web1 (vmbackup crashed here)`, other_config: tags('20261126-000000-here', `${os.hostname()}:4194305`, now - 60_000) },
            { name_label: 'web1 nightly' },
          ],
        },
        vm('VMBACKUP_web1'),
        vm('web1 (vmbackup 20250101-000000)', 'Halted'),
      ]),
    );
    const ws = await workspace();
    const r = await vmbackup(ws.args(s));
    expect(r.code).toBe(0);
    const left = s.state.snapshots('web1').map((v) => v.name_label).sort();
    expect(left).toEqual(['web1 (vmbackup now)', 'web1 nightly']);
    expect(r.stdout).toContain('destroyed leftover snapshot "web1 (vmbackup 20250101-000000)"');
    // The real VMs named like snapshots were backed up, not destroyed.
    expect(s.state.vm('VMBACKUP_web1')).toBeDefined();
    expect(s.state.vm('web1 (vmbackup 20250101-000000)')).toBeDefined();
    expect(await readdir(path.join(ws.exports, 'VMBACKUP_web1'))).toHaveLength(3);
  });
});

describe('vmbackup: one run at a time per backup_dir', () => {
  it('refuses a second run while one runs, and takes over a stale lock', async () => {
    const s = await sim(pool([vm('slow', 'Running', 4)]));
    // Slow enough (16 s for 4 MiB) that the second command, started once the first exports, meets its lock on a loaded machine.
    s.faults.add({ http: 'export', vm: 'slow', always: true, action: { kind: 'slow', bytes_per_second: 256 << 10 } });
    const ws = await workspace();
    const first = vmbackup(ws.args(s));
    await waitFor(async () => (await readdir(ws.exports)).includes(LOCK_FILE) && s.state.transfers('export').length > 0, 20_000, 'first run exporting');
    const second = await vmbackup(ws.args(s));
    expect(second.code).toBe(2);
    expect(second.stderr).toMatch(/another vmbackup run holds .*\.vmbackup\.lock: run \S+, pid \d+ on /);
    expect((await first).code).toBe(0);
    expect(await readdir(ws.exports)).not.toContain(LOCK_FILE);

    // A lock left by a run that died (its pid is gone) is taken over, with a warning.
    s.faults.clear();
    await writeFile(path.join(ws.exports, LOCK_FILE), JSON.stringify({ hostname: os.hostname(), pid: 4194305, runId: 'crashed', startedAt: new Date().toISOString() }));
    const third = await vmbackup(ws.args(s));
    expect(third.code).toBe(0);
    expect(third.stderr).toContain('took over a stale lock of run crashed');
  });
});

describe('vmbackup: concurrency and halted VMs', () => {
  it('exports at most `concurrency` VMs at a time', async () => {
    const s = await sim(pool([vm('a'), vm('b'), vm('c'), vm('d'), vm('e')]), false);
    s.faults.add({ http: 'export', always: true, action: { kind: 'slow', bytes_per_second: 8 << 20 } });
    const overlap = () => {
      const t = s.state.transfers('export');
      let peak = 0;
      for (const x of t) peak = Math.max(peak, t.filter((y) => y.startedAt <= x.startedAt && (y.finishedAt === undefined || y.finishedAt > x.startedAt)).length);
      return peak;
    };
    const ws = await workspace();
    expect((await vmbackup([...ws.args(s), '--concurrency', '2'])).code).toBe(0);
    expect(overlap()).toBe(2);
    expect(s.state.snapshots().filter((v) => String(v.name_label).includes('vmbackup'))).toEqual([]);
  });

  it('exports a halted VM without a snapshot, its start blocked meanwhile', async () => {
    const s = await sim(pool([vm('cold', 'Halted', 4)]), false);
    s.faults.add({ http: 'export', vm: 'cold', always: true, action: { kind: 'slow', bytes_per_second: 4 << 20 } });
    const ws = await workspace();
    const run = vmbackup(ws.args(s));
    const blocked = await waitFor(() => (s.state.vm('cold').blocked_operations as Record<string, string>).start, 20_000, 'start blocked');
    expect(blocked).toMatch(/^vmbackup: export in progress \(run \S+ by \S+:\d+ at \S+\)$/);
    expect(s.state.snapshots('cold')).toEqual([]);
    expect((await run).code).toBe(0);
    expect(s.state.vm('cold').blocked_operations).toEqual({});
  });
});

describe('vmbackup: VM names map to folders inside backup_dir', () => {
  it('../x, a/b, unicode, 300 characters, and two VMs with one name', async () => {
    const long = 'L'.repeat(300);
    const s = await sim(pool([vm('../x'), vm('a/b'), vm('a_b'), vm('Café ünïcode ✓'), vm(long), vm('twin'), vm('twin', 'Halted')]), false);
    const ws = await workspace();
    const r = await vmbackup(ws.args(s));
    expect(r.code).toBe(0);
    const folders = (await readdir(ws.exports)).sort();
    expect(folders).toHaveLength(7);
    for (const f of folders) {
      expect(f.includes('/')).toBe(false);
      expect(Buffer.byteLength(f)).toBeLessThanOrEqual(255);
      expect(await readdir(path.join(ws.exports, f))).toHaveLength(3);
    }
    expect(folders).toContain('Café ünïcode ✓');
    expect(folders).toContain('a_b');
    expect(folders.filter((f) => f.startsWith('twin~'))).toHaveLength(2);
    // Nothing escaped backup_dir.
    expect((await readdir(ws.base)).sort()).toEqual(['exports', 'logs', 'password']);
    // Each folder holds the backup of the VM it names (the manifest says which).
    for (const f of folders) {
      const manifest = (await readdir(path.join(ws.exports, f))).find((n) => n.endsWith('.json'))!;
      const m = JSON.parse(await readFile(path.join(ws.exports, f, manifest), 'utf8')) as { vm: { name: string } };
      expect(['../x', 'a/b', 'a_b', 'Café ünïcode ✓', long, 'twin']).toContain(m.vm.name);
    }
  });
});

describe('vmbackup: compatibility', () => {
  it('reads the VmBackup config files from <base>/etc, and -e replaces the config list', async () => {
    const s = await sim(pool([vm('PRD-web'), vm('DEV-web'), vm('DEV-db')]), false);
    const ws = await workspace();
    await mkdir(path.join(ws.base, 'etc'));
    await writeFile(path.join(ws.base, 'etc', 'vmbackup.cfg'), ['[vmbackup]', 'max_backups = 2', 'vm_exports = DEV-.*', 'excludes = DEV-db', 'pool_backup = true', ''].join('\n'));
    const r = await vmbackup([...ws.args(s), '--no-pool-backup', '--json']);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout) as { jobs: { name: string; category: string }[] };
    expect(summary.jobs.map((j) => j.name)).toEqual(['DEV-web']);
    const r2 = await vmbackup([...ws.args(s), '-e', 'PRD-web', '--json']);
    const summary2 = JSON.parse(r2.stdout) as { jobs: { name: string; category: string }[] };
    expect(summary2.jobs.map((j) => `${j.category}:${j.name}`).sort()).toEqual(['pool-db:pool database', 'vm-export:PRD-web']);
  });
});
