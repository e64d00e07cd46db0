import { createReadStream } from 'node:fs';
import { mkdir, readFile, readdir, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAll } from '../../runtime/formats/test-sources.js';
import { verifyXva } from '../../runtime/formats/xva.js';
import { Manifest } from '../../runtime/storage/manifest.js';
import type { Simulator } from '../sim/server.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';

function pool(vms: PoolSpecInput['vms'], extra: Partial<PoolSpecInput> = {}): PoolSpecInput {
  return {
    credentials: { user: 'root', password: 'secret' },
    hosts: [{ name_label: 'xcp1' }, { name_label: 'xcp2' }],
    srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
    vms,
    ...extra,
  };
}

const web1 = {
  name_label: 'web1',
  power_state: 'Running' as const,
  disks: [
    { device: 'xvda', size_mib: 6, fill: 'pattern' as const },
    { device: 'xvdb', size_mib: 5, fill: 'sparse' as const },
  ],
  vifs: [{ network: 'eth0', mac: 'aa:bb:cc:dd:ee:01' }],
  cd: true,
};
const db1 = { name_label: 'db1', power_state: 'Halted' as const, disks: [{ device: 'xvda', size_mib: 3, fill: 'pattern' as const }], vifs: [] };

/** Sources of a VM's disks in the simulator, by device. */
function diskBytes(sim: Simulator, vmName: string, device: string): Promise<Buffer> {
  const vm = sim.state.vm(vmName);
  const vbd = (vm.VBDs as string[]).map((ref) => sim.state.record('VBD', ref)!).find((v) => v.device === device)!;
  return readAll(sim.state.disk(vbd.VDI as string));
}

/** How many times `needle` occurs in `text`. */
function occurrences(text: string, needle: string): number {
  return text.split(needle).length - 1;
}

async function files(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort();
}

describe('vmbackup: a backup of a pool, end to end', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await httpsSim(pool([web1, db1]));
  });
  afterAll(async () => sim.close());

  it('exports every VM as XVA with .meta and manifest, backs up pool DB and hosts, leaves nothing behind', async () => {
    const ws = await workspace();
    const result = await vmbackup([...ws.args(sim), '-p', '-H']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/VmBackup vm-export Summary - S:2 W:0 E:0\n>> Success <</);
    expect(result.stdout).toMatch(/VmBackup pool-db backup Summary - S:1 W:0 E:0/);
    expect(result.stdout).toMatch(/VmBackup host backup Summary - S:2 W:0 E:0/);

    const web = await files(path.join(ws.exports, 'web1'));
    expect(web).toHaveLength(3);
    const [json, meta, xva] = web as [string, string, string];
    expect(xva).toMatch(/^backup_\d{8}-\d{6}\.xva$/);
    expect(meta).toBe(xva.replace('.xva', '.meta'));
    expect(json).toBe(xva.replace('.xva', '.json'));

    // The XVA reads back chunk by chunk, every checksum holds, and the disks are the VM's.
    const report = await verifyXva(createReadStream(path.join(ws.exports, 'web1', xva)));
    expect(report.disks.map((d) => d.bytes).sort()).toEqual([5 << 20, 6 << 20]);
    const manifest = Manifest.parse(JSON.parse(await readFile(path.join(ws.exports, 'web1', json), 'utf8')));
    expect(manifest.vm.name).toBe('web1');
    expect(manifest.files.find((f) => f.name === xva)!.size).toBe((await stat(path.join(ws.exports, 'web1', xva))).size);

    const metaText = await readFile(path.join(ws.exports, 'web1', meta), 'utf8');
    expect(metaText).toContain('******* VM *******\nname_label=web1\n');
    expect(metaText.match(/\*\*\*\*\*\*\* DISK \*\*\*\*\*\*\*/g)).toHaveLength(2); // the CD is not a disk
    expect(metaText).toContain('MAC=aa:bb:cc:dd:ee:01');

    expect(await files(path.join(ws.exports, 'POOL_DB'))).toEqual([expect.stringMatching(/^metadata_\d{8}-\d{6}\.db$/)]);
    expect(await files(path.join(ws.exports, 'HOSTS'))).toEqual([
      expect.stringMatching(/^hosts_xcp1_\d{8}-\d{6}\.xbk$/),
      expect.stringMatching(/^hosts_xcp2_\d{8}-\d{6}\.xbk$/),
    ]);
    // Each host answered for itself.
    expect(sim.state.transfers('host_backup').map((t) => t.host).sort()).toEqual(['xcp1', 'xcp2']);

    // Nothing left on the pool, no session left open, the halted VM's start not blocked.
    expect(sim.state.snapshots('web1')).toEqual([]);
    expect(sim.state.vdis().filter((v) => v.is_a_snapshot === true)).toEqual([]);
    expect(sim.state.liveSessions()).toBe(0);
    expect(sim.state.vm('db1').blocked_operations).toEqual({});
    // No snapshot for the halted VM: it was exported directly.
    expect(sim.state.transfers('export').find((t) => t.vm === 'db1')).toBeDefined();
  });

  it('vdi-exports chosen disks as raw and vhd, bytes equal to the VM disks', async () => {
    const ws = await workspace();
    const raw = await vmbackup([...ws.args(sim), '-E', 'web1:-1:xvda;xvdb', '-e', 'db1']);
    expect(raw.code).toBe(0);
    const names = await files(path.join(ws.exports, 'web1'));
    expect(names.filter((n) => n.endsWith('.raw'))).toHaveLength(2);
    expect(names.filter((n) => n.endsWith('.meta'))).toHaveLength(2);
    expect(names.filter((n) => n.endsWith('.json'))).toHaveLength(1); // one set for both disks
    const xvda = names.find((n) => n.startsWith('backup_xvda_') && n.endsWith('.raw'))!;
    const xvdb = names.find((n) => n.startsWith('backup_xvdb_') && n.endsWith('.raw'))!;
    expect((await readFile(path.join(ws.exports, 'web1', xvda))).equals(await diskBytes(sim, 'web1', 'xvda'))).toBe(true);
    expect((await readFile(path.join(ws.exports, 'web1', xvdb))).equals(await diskBytes(sim, 'web1', 'xvdb'))).toBe(true);

    const ws2 = await workspace();
    const vhd = await vmbackup([...ws2.args(sim), '-E', 'web1:-1:xvdb', '-F', 'vhd', '-x', 'db1']);
    expect(vhd.code).toBe(0);
    const vhdName = (await files(path.join(ws2.exports, 'web1'))).find((n) => n.endsWith('.vhd'))!;
    const vhdPath = path.join(ws2.exports, 'web1', vhdName);
    const converted = path.join(ws2.base, 'converted.raw');
    // qemu-img reads "caml"-created VHDs' size from CHS unless told to use current_size.
    execFileSync('qemu-img', ['convert', '-O', 'raw', `json:{"driver":"vpc","force_size_calc":"current_size","file":{"driver":"file","filename":"${vhdPath}"}}`, converted]);
    expect((await readFile(converted)).equals(await diskBytes(sim, 'web1', 'xvdb'))).toBe(true);
    expect(execFileSync('vhdiinfo', [vhdPath]).toString()).toMatch(/Disk type\s*:\s*Dynamic/);
  });

  it('vdi-exports a disk on a local SR of another host: the export follows XAPI’s 302 to that host', async () => {
    const srs = [
      { name_label: 'NFS', size_gib: 100, used_gib: 10 },
      { name_label: 'Local xcp2', size_gib: 100, used_gib: 1, shared: false, host: 'xcp2' },
    ];
    const local = await httpsSim(pool([{ ...db1, disks: [{ device: 'xvda', size_mib: 3, fill: 'pattern' as const, sr: 'Local xcp2' }] }], { srs }));
    try {
      const ws = await workspace();
      const r = await vmbackup([...ws.args(local), '-E', 'db1:-1:xvda']);
      expect(r.code).toBe(0);
      expect(local.state.transfers('export_raw_vdi').filter((t) => t.status === 'done').map((t) => t.host)).toEqual(['xcp2']);
      const raw = (await files(path.join(ws.exports, 'db1'))).find((n) => n.endsWith('.raw'))!;
      expect((await readFile(path.join(ws.exports, 'db1', raw))).equals(await diskBytes(local, 'db1', 'xvda'))).toBe(true);
    } finally {
      await local.close();
    }
  });

  it('a vdi-export of a disk the VM lacks: a warning when others exist, an error naming the disks when none does', async () => {
    const ws = await workspace();
    const some = await vmbackup([...ws.args(sim), '-E', 'web1:-1:xvdb;xvdz']);
    expect(some.code).toBe(0);
    expect(some.stdout).toContain('WARNING: vdi-export web1: no disk xvdz (the VM has xvda, xvdb)\n');
    // Said on stderr when it happens (cron mail), and once in the summary.
    expect(occurrences(some.stderr, 'WARNING: vdi-export web1: no disk xvdz (the VM has xvda, xvdb)\n')).toBe(1);
    expect(occurrences(some.stdout, 'no disk xvdz')).toBe(1);
    expect((await files(path.join(ws.exports, 'web1'))).filter((n) => n.endsWith('.raw'))).toEqual([expect.stringMatching(/^backup_xvdb_/)]);
    const none = await vmbackup([...ws.args(sim), '-E', 'web1:-1:xvdz']);
    expect(none.code).toBe(1);
    expect(none.stdout).toContain('ERROR: vdi-export web1: none of the chosen disks xvdz exists (the VM has xvda, xvdb)\n');
    expect(none.stderr).toContain('ERROR: web1: snapshot failed: none of the chosen disks xvdz exists');
    expect(sim.state.snapshots('web1')).toEqual([]);
  });

  it('each warning once on stderr as it happens and once in the summary: selection, retry, --insecure', async () => {
    const ws = await workspace();
    sim.faults.add({ http: 'export', vm: 'db1', action: { kind: 'error', code: 'VDI_IO_ERROR', params: ['injected'] } });
    // An exclude that matches nothing is a warning (an export entry of the request would stop the run).
    const r = await vmbackup([...ws.args(sim), '-e', 'db1', '-x', 'nosuch', '--insecure']);
    expect(r.code).toBe(0);
    const retry = 'WARNING: vm-export db1: export failed (GET /export answered HTTP 500); backing up again (attempt 2)\n';
    const noMatch = 'WARNING: excludes: entry "nosuch" matches no VM of the pool\n';
    for (const line of [retry, noMatch]) {
      expect(occurrences(r.stderr, line), line).toBe(1);
      expect(occurrences(r.stdout, line), line).toBe(1);
    }
    // --insecure is one warning, not one from the settings and another from the run.
    expect(r.stderr.match(/certificate/gi) ?? []).toHaveLength(1);
    expect(r.stdout).toContain('VmBackup vm-export Summary - S:1 W:2 E:0\n');
  });

  it('compresses vm-exports with gzip (-C) and zstd', async () => {
    const ws = await workspace();
    expect((await vmbackup([...ws.args(sim), '-e', 'db1', '-C'])).code).toBe(0);
    const gz = (await files(path.join(ws.exports, 'db1'))).find((n) => n.endsWith('.xva.gz'))!;
    const ws2 = await workspace();
    expect((await vmbackup([...ws2.args(sim), '-e', 'db1', '--compression', 'zstd'])).code).toBe(0);
    const zst = (await files(path.join(ws2.exports, 'db1'))).find((n) => n.endsWith('.xva.zst'))!;
    const plainGz = execFileSync('gzip', ['-dc', path.join(ws.exports, 'db1', gz)], { maxBuffer: 64 << 20 });
    const plainZst = execFileSync('zstd', ['-dc', path.join(ws2.exports, 'db1', zst)], { maxBuffer: 64 << 20 });
    for (const plain of [plainGz, plainZst]) {
      const report = await verifyXva((async function* () {
        yield plain;
      })());
      expect(report.disks[0]!.bytes).toBe(3 << 20);
    }
  });

  it('--preview resolves the selection read-only; --json prints the documented shape', async () => {
    const ws = await workspace();
    const before = sim.state.mutations();
    const text = await vmbackup([...ws.args(sim), '--preview', '-E', 'web1:3:xvdb', '-x', 'nope.*']);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('web1');
    const json = await vmbackup([...ws.args(sim), '--preview', '--json', '-E', 'web1:3:xvdb', '-e', '.*']);
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(parsed).toMatchObject({
      excludes: [],
      vdi_exports: [{ vm: 'web1', max_backups: 3, disks: ['xvdb'], folder: 'web1', uuid: sim.state.vm('web1').uuid }],
      vm_exports: [{ vm: 'db1', max_backups: 4, folder: 'db1' }],
    });
    expect((parsed.settings as Record<string, unknown>).backup_dir).toBe(ws.exports);
    expect(JSON.stringify(parsed)).not.toContain('"secret"'); // the password's value
    expect(sim.state.mutations()).toBe(before); // nothing changed on the pool
    expect(await files(ws.exports)).toEqual([]); // nothing written, no lock left
    expect(sim.state.liveSessions()).toBe(0);
  });

  it('--preview checks the chosen disks, and refuses what the run would refuse (exit 2) after showing the selection', async () => {
    const ws = await workspace();
    const disks = await vmbackup([...ws.args(sim), '--preview', '-E', 'web1:-1:xvdb;xvdz', '-E', 'db1:-1:xvdq']);
    expect(disks.code).toBe(0);
    expect(disks.stdout).toContain('    vdi_exports: web1: no disk xvdz (the VM has xvda, xvdb)\n');
    expect(disks.stdout).toContain('    vdi_exports: db1: none of the chosen disks xvdq exists (the VM has xvda): its backup would fail\n');
    const json = JSON.parse((await vmbackup([...ws.args(sim), '--preview', '--json', '-E', 'web1:-1:xvdb;xvdz'])).stdout) as { warnings: string[] };
    expect(json.warnings).toEqual(['vdi_exports: web1: no disk xvdz (the VM has xvda, xvdb)']);

    const gone = path.join(ws.base, 'not-mounted');
    const refused = await vmbackup([...ws.args(sim), '--preview', '-b', gone, '-e', 'db1']);
    expect(refused.code).toBe(2);
    expect(refused.stdout).toContain('db1');
    expect(refused.stderr).toContain(`backup_dir ${path.join(gone, 'exports')} does not exist or is not a directory (is the backup share mounted?)`);
    const run = await vmbackup([...ws.args(sim), '-b', gone, '-e', 'db1']);
    expect(run.code).toBe(2);
    expect(sim.state.liveSessions()).toBe(0);
  });

  it('-l warning prints nothing when all went well; --json prints the summary', async () => {
    const ws = await workspace();
    const quiet = await vmbackup([...ws.args(sim), '-e', 'db1', '-l', 'warning']);
    expect(quiet).toMatchObject({ code: 0, stdout: '', stderr: '' });
    const json = await vmbackup([...ws.args(sim), '-e', 'db1', '--json']);
    expect(json.code).toBe(0);
    const summary = JSON.parse(json.stdout) as { status: string; exitCode: number; jobs: { name: string; status: string; files: { path: string }[] }[] };
    expect(summary).toMatchObject({ status: 'success', exitCode: 0 });
    expect(summary.jobs).toHaveLength(1);
    expect(summary.jobs[0]).toMatchObject({ name: 'db1', status: 'success' });
    expect(summary.jobs[0]!.files.map((f) => path.basename(f.path))).toEqual([
      expect.stringMatching(/\.xva$/),
      expect.stringMatching(/\.meta$/),
      expect.stringMatching(/\.json$/),
    ]);
  });

  it('follows HOST_IS_SLAVE from a pool member to the master', async () => {
    const ws = await workspace();
    const member = sim.hosts[1]!;
    const args = ws.args(sim).map((a) => (a === sim.url ? member.url : a));
    const result = await vmbackup([...args, '-e', 'db1']);
    expect(result.code).toBe(0);
    expect(await files(path.join(ws.exports, 'db1'))).toHaveLength(3);
  });

  it('never writes the password to the log or the console', async () => {
    const ws = await workspace('s3cr3t-Pa55');
    const s2 = await httpsSim(pool([db1], { credentials: { user: 'root', password: 's3cr3t-Pa55' } }));
    try {
      const result = await vmbackup([...ws.args(s2), '-l', 'debug']);
      expect(result.code).toBe(0);
      const log = await readFile(path.join(ws.base, 'logs', 'vmbackup.log'), 'utf8');
      expect(log.split('\n').filter(Boolean).every((line) => JSON.parse(line) !== null)).toBe(true);
      for (const text of [log, result.stdout, result.stderr]) {
        expect(text).not.toContain('s3cr3t-Pa55');
        expect(text).not.toMatch(/OpaqueRef:[0-9a-f-]{36}/); // no session ids either
      }
    } finally {
      await s2.close();
    }
  });
});

describe('vmbackup: retention', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await httpsSim(pool([db1]));
  });
  afterAll(async () => sim.close());

  it('keeps max_backups sets, understands VmBackup folders, never counts partial or empty files', async () => {
    const ws = await workspace();
    const dir = path.join(ws.exports, 'db1');
    await mkdir(dir);
    // Two legacy VmBackup sets (MMDDYYYY-HHMMSS), a 0-byte legacy export, a stray partial.
    await writeFile(path.join(dir, 'backup_01022024-030405.xva'), 'old xva');
    await writeFile(path.join(dir, 'backup_01022024-030405.meta'), 'name_label=db1\n');
    await writeFile(path.join(dir, 'backup_03042024-030405.xva'), 'newer xva');
    await writeFile(path.join(dir, 'backup_03042024-030405.meta'), 'name_label=db1\n');
    await writeFile(path.join(dir, 'backup_05062024-030405.xva'), '');
    await writeFile(path.join(dir, 'backup_05062024-030405.meta'), 'name_label=db1\n');
    await writeFile(path.join(dir, 'unrelated-notes.txt'), 'mine');
    // Written by an earlier run, two days ago (not a job still in progress).
    const old = new Date(Date.now() - 2 * 86_400_000);
    for (const name of await readdir(dir)) await utimes(path.join(dir, name), old, old);
    const result = await vmbackup([...ws.args(sim), '--max-backups', '2']);
    expect(result.code).toBe(0);
    const left = await files(dir);
    // Kept: the new set and the newest complete legacy set; the empty legacy export (never a
    // backup) is gone as it is older than the newest complete set; unrelated files untouched.
    expect(left.filter((n) => n.startsWith('backup_03042024'))).toHaveLength(2);
    expect(left.some((n) => n.startsWith('backup_01022024'))).toBe(false);
    expect(left.some((n) => n.startsWith('backup_05062024'))).toBe(false);
    expect(left).toContain('unrelated-notes.txt');
    expect(left.filter((n) => /^backup_20\d{6}-\d{6}\.(xva|meta|json)$/.test(n))).toHaveLength(3); // this run's set
  });
});
