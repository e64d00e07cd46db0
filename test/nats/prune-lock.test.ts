import { spawn } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from '../sim/test-helpers.js';
import { holdFolderLocks } from '../helpers/held-lock.js';
import { VMBACKUP } from '../helpers/cli.js';
import { startRig } from './rig.js';
import { pool } from '../sim/fixtures.js';
import type { Rig } from './rig.js';

/*
 * A run on NATS workers prunes POOL_DB under the same folder lock as a cron `vmbackup`: while
 * another run holds it, the worker waits and deletes nothing; once that run is dead, it takes over.
 */

let rig: Rig | undefined;
afterEach(async () => {
  await rig?.close();
  rig = undefined;
});

describe('NATS: pool-db prunes under the folder lock', () => {
  it('a worker waits for another run’s prune of POOL_DB, then takes over its dead lock', async () => {
    rig = await startRig(pool([]));
    const poolDir = path.join(rig.ws.exports, 'POOL_DB');
    await mkdir(poolDir);
    const old = ['20260101-000000', '20260102-000000'];
    for (const stamp of old) await writeFile(path.join(poolDir, `metadata_${stamp}.db`), '<database/>');
    const worker = await rig.worker();
    const other = await holdFolderLocks([poolDir], 'cron-run');
    let out = '';
    const run = spawn(process.execPath, [VMBACKUP, 'run', ...rig.args('-x', '.*', '-p', '--max-backups', '1')], { env: { PATH: process.env.PATH ?? '', HOME: os.tmpdir() } });
    run.stdout.on('data', (d: Buffer) => (out += d.toString()));
    run.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => run.once('close', resolve));
    try {
      await waitFor(() => worker.output().includes('POOL_DB: waiting for run cron-run'), 60_000, `worker waiting:\n${worker.output()}`);
      const names = await readdir(poolDir);
      for (const stamp of old) expect(names).toContain(`metadata_${stamp}.db`);
    } finally {
      await other.release();
    }
    expect(await exited, out).toBe(0);
    expect(worker.output()).toContain('took over the prune lock of a dead run (cron-run');
    const left = (await readdir(poolDir)).filter((n) => n.startsWith('metadata_'));
    expect(left).toHaveLength(1);
    expect(old.some((s) => left[0]!.includes(s))).toBe(false);
  });
});
