import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vmbackup } from '../helpers/cli.js';
import { startRig } from './rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';

/**
 * Two VMs that share a name, backed up through NATS by a real worker: every line about one
 * of them, the worker's and `vmbackup run`'s, says which run and which VM (by uuid) it is.
 */
const A = '0a0a0a0a-1111-4111-8111-000000000001';
const B = '0b0b0b0b-2222-4222-8222-000000000002';
let rig: Rig;
beforeAll(async () => {
  rig = await startRig(pool([{ ...vm('twin'), uuid: A }, { ...vm('twin'), uuid: B }, vm('other')]));
  await rig.worker();
});
afterAll(async () => {
  await rig?.close();
});

describe('log lines about a VM name the run and the VM uuid', () => {
  it('two VMs sharing a name give distinguishable lines in the worker, its log file and vmbackup run', async () => {
    const r = await vmbackup(['run', ...rig.args('-e', 'twin')]);
    expect(r.code, r.stderr).toBe(0);
    const runId = /run (\S+): submitted/.exec(r.stdout)?.[1];
    expect(runId).toBeDefined();
    const worker = rig.workers[0]!.output();
    for (const uuid of [A, B]) {
      const context = `[run ${runId}, vm ${uuid}]`;
      // vmbackup run: one export line per VM, each naming its own uuid.
      expect(r.stdout.split('\n').filter((l) => /^twin: exported /.test(l) && l.endsWith(context))).toHaveLength(1);
      // The worker: its export line, and every other line about that VM, carry both.
      expect(worker.split('\n').filter((l) => /^twin: exported .* → .*/.test(l) && l.endsWith(context))).toHaveLength(1);
    }
    const twinLines = worker.split('\n').filter((l) => l.startsWith('twin:'));
    expect(twinLines.length).toBeGreaterThan(1);
    for (const l of twinLines) expect(l).toMatch(new RegExp(`\\[run ${runId}, vm (${A}|${B})\\]$`));
    // The JSON log file: the records of each VM's phases are bound to the run and the uuid.
    const records = (await readFile(path.join(rig.ws.base, 'logs', 'vmbackup.log'), 'utf8'))
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { runId?: string; vm?: string; vmUuid?: string; fn?: string; msg: string });
    const exports = records.filter((x) => x.fn === 'export' && x.runId === runId && x.vm === 'twin' && / exported /.test(x.msg));
    expect(exports.map((x) => x.vmUuid).sort()).toEqual([A, B]);
  });
});
