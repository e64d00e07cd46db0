import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PermanentError } from '../../runtime/errors.js';
import { NbdClient } from '../../runtime/nbd/client.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { cbtPool } from '../sim/fixtures.js';
import { startSimulator, type Simulator } from '../sim/server.js';

/**
 * vmbackup's typed CBT / NBD calls through the real `xen-api` client, and the same calls from
 * Python's official XenAPI.py, against the simulator: the ground incremental backups stand on.
 */

const XENAPI_DIR = '/usr/lib/python3/dist-packages/os_xenapi/client';
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let sim: Simulator;
let xapi: XapiClient;
beforeAll(async () => {
  sim = await startSimulator({ pool: { ...cbtPool(), networks: [{ name_label: 'Storage', purpose: ['nbd'] }] } });
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret' });
});
afterAll(async () => {
  await xapi?.close();
  await sim?.close();
});

function diskOf(vm: string): { ref: string; size: number } {
  const v = sim.state.vm(vm);
  const vdi = sim.state.records('VBD').find((b) => b.VM === v.ref && b.device === 'xvda')!.VDI as string;
  return { ref: vdi, size: sim.state.record('VDI', vdi)!.virtual_size as number };
}

async function snapshotDisk(vm: string, name: string): Promise<{ vm: string; vdi: string }> {
  const snap = await xapi.call<string>('VM.snapshot', sim.state.vm(vm).ref, name);
  const vdi = sim.state.records('VBD').find((b) => b.VM === snap && b.type === 'Disk' && b.device === 'xvda')!.VDI as string;
  return { vm: snap, vdi };
}

describe('XapiClient CBT and NBD calls, with the real xen-api client', () => {
  it('one incremental: enable CBT, base snapshot, guest writes, next snapshot, changed blocks read over NBD', async () => {
    const disk = diskOf('app');
    await xapi.enableCbt(disk.ref);
    await xapi.enableCbt(disk.ref);
    expect((await xapi.getRecord('VDI', disk.ref)).cbt_enabled).toBe(true);

    const base = await snapshotDisk('app', 'base');
    const written = sim.state.churn('app', 10)[sim.state.record('VDI', disk.ref)!.uuid as string]!;
    const next = await snapshotDisk('app', 'next');

    const changed = await xapi.listChangedBlocks(base.vdi, next.vdi, disk.size);
    expect(changed.blocks).toBe(written.length);
    expect(changed.bytes).toBe(written.length * 65536);

    const [info, ...more] = await xapi.vdiNbdInfo(next.vdi);
    expect(more).toEqual([]);
    expect(info).toMatchObject({ address: '127.0.0.1', port: sim.nbdPort, subject: 'localhost' });
    const nbd = await NbdClient.connect({ host: info!.address, port: info!.port, exportName: info!.exportname, tls: { cert: info!.cert, servername: info!.subject } });
    const baseBytes = Buffer.from(await (await sim.state.disk(base.vdi).read(0, disk.size))!);
    const image = Buffer.from(baseBytes);
    for await (const { offset, data } of nbd.readRanges(changed.ranges)) data.copy(image, offset);
    await nbd.close();
    // The base plus the changed blocks is the next snapshot, byte for byte.
    expect(sha(image)).toBe(sha(Buffer.from((await sim.state.disk(next.vdi).read(0, disk.size))!)));

    // The base's data can go once read; its CBT metadata stays for the next comparison.
    await expect(xapi.dataDestroy(base.vdi)).rejects.toMatchObject({ code: 'VDI_IN_USE' });
    await xapi.call('VM.destroy', base.vm);
    await xapi.dataDestroy(base.vdi);
    expect((await xapi.getRecord('VDI', base.vdi)).type).toBe('cbt_metadata');
    expect((await xapi.listChangedBlocks(base.vdi, next.vdi, disk.size)).blocks).toBe(written.length);
    await xapi.disableCbt(disk.ref);
    await xapi.disableCbt(disk.ref);
    expect((await xapi.getRecord('VDI', disk.ref)).cbt_enabled).toBe(false);
  });

  it('XAPI refusals come back as typed errors with their codes', async () => {
    const live = diskOf('live');
    const snap = await snapshotDisk('live', 'live base');
    await expect(xapi.listChangedBlocks(snap.vdi, live.ref, live.size)).rejects.toMatchObject({ code: 'VDI_IN_USE', data: { params: [live.ref, 'list_changed_blocks'] } });
    const refused = await xapi.enableCbt(snap.vdi).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(PermanentError);
    expect(refused).toMatchObject({ code: 'OPERATION_NOT_ALLOWED' });
    await expect(xapi.listChangedBlocks(snap.vdi, diskOf('other').ref, live.size)).rejects.toMatchObject({ code: 'SR_BACKEND_FAILURE_460' });
  });
});

describe("Python's official XenAPI.py", () => {
  it('enables CBT, lists changed blocks, reads NBD info and destroys a snapshot\'s data', async () => {
    const vm = sim.state.vm('other').ref;
    const script = `
import sys, json, base64
sys.path.insert(0, ${JSON.stringify(XENAPI_DIR)})
import XenAPI
s = XenAPI.Session(sys.argv[1])
s.xenapi.login_with_password('root', 'secret', '2.20', 'cbt-test')
x = s.xenapi
vm = sys.argv[2]
vdi = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(vm) if x.VBD.get_type(b) == 'Disk'][0]
x.VDI.enable_cbt(vdi)
base = x.VDI.snapshot(vdi, {})
print(json.dumps({'base': base, 'vdi': vdi}), flush=True)
sys.stdin.readline()
nxt = x.VDI.snapshot(vdi, {})
bits = base64.b64decode(x.VDI.list_changed_blocks(base, nxt))
changed = [i for i in range(len(bits) * 8) if bits[i >> 3] & (0x80 >> (i & 7))]
info = x.VDI.get_nbd_info(nxt)
x.VDI.data_destroy(base)
out = {'changed': changed, 'type': x.VDI.get_type(base), 'cbt': x.VDI.get_cbt_enabled(nxt),
       'nbd': [{k: i[k] for k in ('address', 'port', 'subject')} for i in info], 'exportname': info[0]['exportname'].startswith('/' + x.VDI.get_uuid(nxt) + '?session_id=')}
try:
    x.VDI.enable_cbt(nxt)
except XenAPI.Failure as e:
    out['snapshot_refusal'] = e.details
s.xenapi.session.logout()
print(json.dumps(out))
`;
    const child = execFile('/usr/bin/python3', ['-c', script, sim.url, vm], { timeout: 30_000 });
    let stdout = '';
    const done = new Promise<void>((resolve, reject) => {
      child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`python exited ${code}`))));
    });
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      // Guest writes between the two snapshots Python takes.
      if (stdout.includes('\n') && !stdout.includes('written')) {
        const blocks = sim.state.churn('other', 5);
        stdout += `written ${JSON.stringify(Object.values(blocks)[0])}\n`;
        child.stdin!.write('\n');
      }
    });
    await done;
    const written = JSON.parse(/written (.*)\n/.exec(stdout)![1]!) as number[];
    const result = JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(result.changed).toEqual(written);
    expect(result.type).toBe('cbt_metadata');
    expect(result.cbt).toBe(true);
    expect(result.nbd).toEqual([{ address: '127.0.0.1', port: String(sim.nbdPort), subject: 'localhost' }]);
    expect(result.exportname).toBe(true);
    expect((result.snapshot_refusal as string[])[0]).toBe('OPERATION_NOT_ALLOWED');
  });
});
