import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { vhdDiskWrites } from '../../runtime/formats/vhd.js';
import { xvaDiskWrites } from '../../runtime/formats/xva.js';
import { cbtPool, decodeBitmap } from './fixtures.js';
import { startSimulator, type Simulator } from './server.js';
import { login, xapi, xapiError } from './test-helpers.js';

const BLOCK = 64 * 1024;

let sim: Simulator;
let session: string;
beforeAll(async () => {
  sim = await startSimulator({ pool: cbtPool() });
  session = await login(sim.url);
});
afterAll(async () => {
  await sim.close();
});

const vdiOf = (vm: string, device = 'xvda') => {
  const v = sim.state.vm(vm);
  const vbd = sim.state.records('VBD').find((b) => b.VM === v.ref && b.device === device)!;
  return vbd.VDI as string;
};

async function raw(vdi: string): Promise<Buffer> {
  const res = await fetch(`${sim.url}/export_raw_vdi?session_id=${session}&vdi=${vdi}&format=raw`);
  expect(res.status).toBe(200);
  return Buffer.from(await res.arrayBuffer());
}

/** Indices of the 64 KiB blocks that differ between two images of one disk. */
function differingBlocks(a: Buffer, b: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i * BLOCK < a.length; i++) if (!a.subarray(i * BLOCK, (i + 1) * BLOCK).equals(b.subarray(i * BLOCK, (i + 1) * BLOCK))) out.push(i);
  return out;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('VDI.enable_cbt / disable_cbt', () => {
  it('are idempotent, show in cbt_enabled, and snapshots inherit CBT', async () => {
    const vdi = vdiOf('app');
    expect(await xapi(sim.url, 'VDI.get_cbt_enabled', session, vdi)).toBe(false);
    await xapi(sim.url, 'VDI.enable_cbt', session, vdi);
    await xapi(sim.url, 'VDI.enable_cbt', session, vdi);
    expect(await xapi(sim.url, 'VDI.get_cbt_enabled', session, vdi)).toBe(true);
    expect(await xapi(sim.url, 'VDI.get_allowed_operations', session, vdi)).toEqual(expect.arrayContaining(['enable_cbt', 'disable_cbt', 'list_changed_blocks']));
    const snap = (await xapi(sim.url, 'VDI.snapshot', session, vdi, {})) as string;
    expect(sim.state.record('VDI', snap)).toMatchObject({ cbt_enabled: true, is_a_snapshot: true });
    expect(await xapi(sim.url, 'VDI.get_allowed_operations', session, snap)).toContain('data_destroy');
    await xapi(sim.url, 'VDI.destroy', session, snap);
  });

  it('are refused where XAPI refuses them', async () => {
    const vdi = vdiOf('app');
    const snap = (await xapi(sim.url, 'VDI.snapshot', session, vdi, {})) as string;
    expect(await xapiError(sim.url, 'VDI.enable_cbt', session, snap)).toEqual(['OPERATION_NOT_ALLOWED', `VDI is a snapshot: ${snap}`]);
    expect(await xapiError(sim.url, 'VDI.disable_cbt', session, snap)).toEqual(['OPERATION_NOT_ALLOWED', `VDI is a snapshot: ${snap}`]);
    await xapi(sim.url, 'VDI.destroy', session, snap);
    const iso = sim.state.vdis().find((v) => v.name_label === 'guest-tools.iso')!;
    expect(await xapiError(sim.url, 'VDI.enable_cbt', session, iso.ref)).toEqual(['SR_OPERATION_NOT_SUPPORTED', iso.SR]);
    const sr = sim.state.records('SR').find((s) => s.name_label === 'sr')!.ref;
    const suspend = (await xapi(sim.url, 'VDI.create', session, { SR: sr, virtual_size: '1048576', type: 'suspend', sharable: false, read_only: false, other_config: {} })) as string;
    expect(await xapiError(sim.url, 'VDI.enable_cbt', session, suspend)).toEqual(['VDI_INCOMPATIBLE_TYPE', suspend, 'suspend']);
    expect(await xapiError(sim.url, 'VDI.enable_cbt', session, 'OpaqueRef:nope')).toEqual(['HANDLE_INVALID', 'VDI', 'OpaqueRef:nope']);
  });
});

describe('guest writes and VDI.list_changed_blocks', () => {
  it('lists exactly the blocks written between two snapshots, as the disk bytes show them', async () => {
    const vdi = vdiOf('app');
    await xapi(sim.url, 'VDI.enable_cbt', session, vdi);
    const s1 = (await xapi(sim.url, 'VDI.snapshot', session, vdi, {})) as string;
    const before = await raw(vdi);

    const first = sim.state.churn('app', 10);
    const uuid = sim.state.record('VDI', vdi)!.uuid as string;
    const b1 = first[uuid]!;
    expect(b1).toHaveLength(Math.round(64 * 0.1));
    const s2 = (await xapi(sim.url, 'VDI.snapshot', session, vdi, {})) as string;
    const middle = await raw(vdi);
    expect(differingBlocks(before, middle)).toEqual(b1);
    expect(sha(await raw(s1))).toBe(sha(before));

    // The same over the control endpoint.
    const res = await fetch(`${sim.url}/_sim/churn`, { method: 'POST', body: JSON.stringify({ vm: 'app', percent: 1 }) });
    expect(res.status).toBe(200);
    const b2 = ((await res.json()) as { written: Record<string, number[]> }).written[uuid]!;
    expect(b2).toHaveLength(1);
    const after = await raw(vdi);
    expect(differingBlocks(middle, after)).toEqual(b2);
    expect(sha(await raw(s2))).toBe(sha(middle));

    expect(decodeBitmap((await xapi(sim.url, 'VDI.list_changed_blocks', session, s1, s2)) as string)).toEqual(b1);
    expect(decodeBitmap((await xapi(sim.url, 'VDI.list_changed_blocks', session, s2, vdi)) as string)).toEqual(b2);
    expect(decodeBitmap((await xapi(sim.url, 'VDI.list_changed_blocks', session, s1, vdi)) as string)).toEqual([...new Set([...b1, ...b2])].sort((a, b) => a - b));
    // One bit per 64 KiB block, padded to whole bytes: a 4 MiB disk is 64 bits.
    expect(Buffer.from((await xapi(sim.url, 'VDI.list_changed_blocks', session, s1, s2)) as string, 'base64')).toHaveLength(8);

    // Destroying the middle snapshot keeps the chain comparable across it.
    await xapi(sim.url, 'VDI.destroy', session, s2);
    expect(decodeBitmap((await xapi(sim.url, 'VDI.list_changed_blocks', session, s1, vdi)) as string)).toEqual([...new Set([...b1, ...b2])].sort((a, b) => a - b));
    await xapi(sim.url, 'VDI.destroy', session, s1);
  });

  it('fails as the SR backend does for unrelated or reversed VDIs, and with VDI_IN_USE while `to` is attached', async () => {
    const vdi = vdiOf('app');
    await xapi(sim.url, 'VDI.enable_cbt', session, vdi);
    const a = (await xapi(sim.url, 'VDI.snapshot', session, vdi, {})) as string;
    sim.state.churn('app', 5);
    const b = (await xapi(sim.url, 'VDI.snapshot', session, vdi, {})) as string;
    const unrelated = (await xapi(sim.url, 'VDI.snapshot', session, vdiOf('other'), {})) as string;
    const backend = (reason: string) => ['SR_BACKEND_FAILURE_460', '', `Failed to calculate changed blocks for given VDIs. [opterr=${reason}]`, ''];
    expect(await xapiError(sim.url, 'VDI.list_changed_blocks', session, b, a)).toEqual(backend('Source and target VDI are unrelated'));
    expect(await xapiError(sim.url, 'VDI.list_changed_blocks', session, a, a)).toEqual(backend('Source and target VDI are same'));
    expect(await xapiError(sim.url, 'VDI.list_changed_blocks', session, a, unrelated)).toEqual(backend('Source and target VDI are unrelated'));

    const live = vdiOf('live');
    const liveSnap = (await xapi(sim.url, 'VDI.snapshot', session, live, {})) as string;
    expect(await xapiError(sim.url, 'VDI.list_changed_blocks', session, liveSnap, live)).toEqual(['VDI_IN_USE', live, 'list_changed_blocks']);

    // Disabling CBT ends the chain at the last snapshot; the snapshots stay comparable.
    await xapi(sim.url, 'VDI.disable_cbt', session, vdi);
    await xapi(sim.url, 'VDI.disable_cbt', session, vdi);
    expect(await xapi(sim.url, 'VDI.get_cbt_enabled', session, vdi)).toBe(false);
    expect(decodeBitmap((await xapi(sim.url, 'VDI.list_changed_blocks', session, a, b)) as string).length).toBeGreaterThan(0);
    expect(await xapiError(sim.url, 'VDI.list_changed_blocks', session, b, vdi)).toEqual(backend('Source and target VDI are unrelated'));
    for (const v of [a, b, unrelated, liveSnap]) await xapi(sim.url, 'VDI.destroy', session, v);
  });

  it('every export shows the writes: raw, VHD and XVA agree, 100 % rewrites every block, and the same calls give the same bytes', async () => {
    const spec = cbtPool();
    const one = await startSimulator({ pool: spec });
    const two = await startSimulator({ pool: spec });
    try {
      const images: Buffer[] = [];
      for (const s of [one, two]) {
        const sid = await login(s.url);
        const app = s.state.vm('app');
        const vdi = s.state.records('VBD').find((b) => b.VM === app.ref && b.device === 'xvdb')!.VDI as string;
        const pristine = Buffer.from(await (await fetch(`${s.url}/export_raw_vdi?session_id=${sid}&vdi=${vdi}&format=raw`)).arrayBuffer());
        s.state.churn('app', 100);
        const rawImage = Buffer.from(await (await fetch(`${s.url}/export_raw_vdi?session_id=${sid}&vdi=${vdi}&format=raw`)).arrayBuffer());
        expect(differingBlocks(pristine, rawImage)).toHaveLength(rawImage.length / BLOCK);
        s.state.churn('app', 10);
        const again = Buffer.from(await (await fetch(`${s.url}/export_raw_vdi?session_id=${sid}&vdi=${vdi}&format=raw`)).arrayBuffer());
        expect(differingBlocks(rawImage, again)).toHaveLength(Math.round((again.length / BLOCK) * 0.1));

        const vhd = Buffer.alloc(again.length);
        const vhdRes = await fetch(`${s.url}/export_raw_vdi?session_id=${sid}&vdi=${vdi}&format=vhd`);
        for await (const w of vhdDiskWrites(Readable.fromWeb(vhdRes.body as never))) w.data.copy(vhd, w.offset);
        expect(sha(vhd)).toBe(sha(again));

        const xva = Buffer.alloc(again.length);
        const xvaRes = await fetch(`${s.url}/export?session_id=${sid}&ref=${app.ref}`);
        const disks = new Map<string, Buffer>();
        for await (const w of xvaDiskWrites(Readable.fromWeb(xvaRes.body as never))) {
          if (!disks.has(w.ref)) disks.set(w.ref, Buffer.alloc(8 << 20));
          w.data.copy(disks.get(w.ref)!, w.offset);
        }
        expect([...disks.values()].some((d) => sha(d.subarray(0, xva.length)) === sha(again))).toBe(true);
        images.push(again);
      }
      expect(sha(images[0]!)).toBe(sha(images[1]!));
    } finally {
      await one.close();
      await two.close();
    }
  });

  it('the control endpoint names a bad request', async () => {
    const res = await fetch(`${sim.url}/_sim/churn`, { method: 'POST', body: JSON.stringify({ vm: 'nobody', percent: 1 }) });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: string }).error).toContain('nobody');
    const bad = await fetch(`${sim.url}/_sim/churn`, { method: 'POST', body: JSON.stringify({ vm: 'app', percent: 101 }) });
    expect(bad.status).toBe(400);
  });
});

describe('clustered guest writes', () => {
  it('rewrite whole 1 MiB-aligned runs of blocks, exactly the percent asked, the same on every simulator, and CBT lists them', async () => {
    const spec = { ...cbtPool(), vms: [{ name_label: 'db', power_state: 'Halted' as const, disks: [{ device: 'xvda', size_mib: 16, fill: 'pattern' as const, cbt_enabled: true }] }] };
    const one = await startSimulator({ pool: spec });
    const two = await startSimulator({ pool: spec });
    try {
      const written: number[][] = [];
      for (const s of [one, two]) {
        const sid = await login(s.url);
        const vdi = s.state.records('VBD').find((b) => b.VM === s.state.vm('db').ref)!.VDI as string;
        const image = async () => Buffer.from(await (await fetch(`${s.url}/export_raw_vdi?session_id=${sid}&vdi=${vdi}&format=raw`)).arrayBuffer());
        const base = (await xapi(s.url, 'VDI.snapshot', sid, vdi, {})) as string;
        const before = await image();
        // 10 % of 256 blocks: 26, a whole 1 MiB run and 10 blocks from the start of another.
        const res = await fetch(`${s.url}/_sim/churn`, { method: 'POST', body: JSON.stringify({ vm: 'db', percent: 10, pattern: 'clustered' }) });
        expect(res.status).toBe(200);
        const blocks = ((await res.json()) as { written: Record<string, number[]> }).written[s.state.record('VDI', vdi)!.uuid as string]!;
        expect(blocks).toHaveLength(26);
        const runs = [...new Set(blocks.map((b) => Math.floor(b / 16)))];
        expect(runs).toHaveLength(2);
        expect(blocks).toEqual([...Array.from({ length: 16 }, (_, i) => runs[0]! * 16 + i), ...Array.from({ length: 10 }, (_, i) => runs[1]! * 16 + i)]);
        expect(differingBlocks(before, await image())).toEqual(blocks);
        const next = (await xapi(s.url, 'VDI.snapshot', sid, vdi, {})) as string;
        expect(decodeBitmap((await xapi(s.url, 'VDI.list_changed_blocks', sid, base, next)) as string)).toEqual(blocks);
        // The default stays scattered: 26 blocks in more than two runs (with this seed, many).
        const scattered = [...s.state.churn('db', 10)[s.state.record('VDI', vdi)!.uuid as string]!];
        expect(scattered).toHaveLength(26);
        expect(new Set(scattered.map((b) => Math.floor(b / 16))).size).toBeGreaterThan(2);
        written.push(blocks);
      }
      expect(written[1]).toEqual(written[0]);
      const bad = await fetch(`${one.url}/_sim/churn`, { method: 'POST', body: JSON.stringify({ vm: 'db', percent: 1, pattern: 'bursty' }) });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: string }).error).toContain('bursty');
    } finally {
      await one.close();
      await two.close();
    }
  });
});

describe('VDI.data_destroy', () => {
  it('turns a CBT snapshot into cbt_metadata: no data, no exports, no copies, still comparable', async () => {
    const vdi = vdiOf('app');
    await xapi(sim.url, 'VDI.enable_cbt', session, vdi);
    const base = (await xapi(sim.url, 'VDI.snapshot', session, vdi, {})) as string;
    sim.state.churn('app', 3);
    const next = (await xapi(sim.url, 'VDI.snapshot', session, vdi, {})) as string;
    const expected = decodeBitmap((await xapi(sim.url, 'VDI.list_changed_blocks', session, base, next)) as string);

    expect(await xapiError(sim.url, 'VDI.data_destroy', session, vdi)).toEqual(['OPERATION_NOT_ALLOWED', `VDI is not a snapshot: ${vdi}`]);
    const srBefore = sim.state.records('SR').find((s) => s.name_label === 'sr')!.physical_utilisation as number;
    await xapi(sim.url, 'VDI.data_destroy', session, base);
    await xapi(sim.url, 'VDI.data_destroy', session, base);
    expect(sim.state.record('VDI', base)).toMatchObject({ type: 'cbt_metadata', physical_utilisation: 0, cbt_enabled: true });
    expect(sim.state.records('SR').find((s) => s.name_label === 'sr')!.physical_utilisation).toBeLessThan(srBefore);
    expect(decodeBitmap((await xapi(sim.url, 'VDI.list_changed_blocks', session, base, next)) as string)).toEqual(expected);

    const incompatible = ['VDI_INCOMPATIBLE_TYPE', base, 'cbt_metadata'];
    expect(await xapiError(sim.url, 'VDI.snapshot', session, base, {})).toEqual(incompatible);
    expect(await xapiError(sim.url, 'VDI.clone', session, base, {})).toEqual(incompatible);
    const sr = sim.state.records('SR').find((s) => s.name_label === 'sr')!.ref;
    expect(await xapiError(sim.url, 'VDI.copy', session, base, sr)).toEqual(incompatible);
    expect(await xapiError(sim.url, 'VDI.get_nbd_info', session, base)).toEqual(incompatible);
    expect(await xapiError(sim.url, 'VDI.enable_cbt', session, base)).toEqual(incompatible);
    expect(await xapi(sim.url, 'VDI.get_allowed_operations', session, base)).not.toContain('snapshot');
    for (const format of ['raw', 'vhd']) {
      const res = await fetch(`${sim.url}/export_raw_vdi?session_id=${session}&vdi=${base}&format=${format}`);
      expect(res.status).toBe(500);
    }
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    expect((await fetch(`${sim.url}/export_raw_vdi?session_id=${session}&vdi=${base}&format=raw&task_id=${task}`)).status).toBe(500);
    expect(await xapi(sim.url, 'task.get_error_info', session, task)).toEqual(incompatible);
    // A differencing export against it is refused too.
    expect((await fetch(`${sim.url}/export_raw_vdi?session_id=${session}&vdi=${next}&base=${base}&format=vhd`)).status).toBe(500);

    // Only CBT snapshots qualify.
    await xapi(sim.url, 'VDI.disable_cbt', session, vdi);
    const plain = (await xapi(sim.url, 'VDI.snapshot', session, vdi, {})) as string;
    expect(await xapiError(sim.url, 'VDI.data_destroy', session, plain)).toEqual(['VDI_NO_CBT_METADATA', plain]);
    for (const v of [base, next, plain]) await xapi(sim.url, 'VDI.destroy', session, v);
  });

  it("waits for the snapshot VM's VBDs to go, then fails with VDI_IN_USE", async () => {
    const live = sim.state.vm('live').ref;
    const snapVm = (await xapi(sim.url, 'VM.snapshot', session, live, 'cbt base')) as string;
    const snapVdi = sim.state.records('VBD').find((b) => b.VM === snapVm && b.type === 'Disk')!.VDI as string;
    expect(sim.state.record('VDI', snapVdi)!.cbt_enabled).toBe(true);
    expect(await xapiError(sim.url, 'VDI.data_destroy', session, snapVdi)).toEqual(['VDI_IN_USE', snapVdi, 'data_destroy']);
    // Destroy the snapshot VM first (as a backup does), then the data.
    await xapi(sim.url, 'VM.destroy', session, snapVm);
    await xapi(sim.url, 'VDI.data_destroy', session, snapVdi);
    expect(sim.state.record('VDI', snapVdi)!.type).toBe('cbt_metadata');
    await xapi(sim.url, 'VDI.destroy', session, snapVdi);
  });
});

describe('storage migration and NBD info', () => {
  it('VDI.pool_migrate of a CBT-enabled VDI is refused with VDI_CBT_ENABLED', async () => {
    const live = vdiOf('live');
    const sr = sim.state.records('SR').find((s) => s.name_label === 'sr')!.ref;
    expect(await xapiError(sim.url, 'VDI.pool_migrate', session, live, sr, {})).toEqual(['VDI_CBT_ENABLED', live]);
    await xapi(sim.url, 'VDI.disable_cbt', session, live);
    expect(await xapi(sim.url, 'VDI.pool_migrate', session, live, sr, {})).toBe(live);
    await xapi(sim.url, 'VDI.enable_cbt', session, live);
  });

  it('VDI.get_nbd_info is empty until a network has purpose nbd or insecure_nbd', async () => {
    const vdi = vdiOf('app');
    expect(await xapi(sim.url, 'VDI.get_nbd_info', session, vdi)).toEqual([]);
    const net = sim.state.records('network')[0]!.ref;
    await xapi(sim.url, 'network.add_purpose', session, net, 'insecure_nbd');
    expect(await xapiError(sim.url, 'network.add_purpose', session, net, 'nbd')).toEqual(['NETWORK_INCOMPATIBLE_PURPOSES', 'nbd', 'insecure_nbd']);
    const [info, ...more] = (await xapi(sim.url, 'VDI.get_nbd_info', session, vdi)) as Record<string, unknown>[];
    expect(more).toEqual([]);
    const uuid = sim.state.record('VDI', vdi)!.uuid as string;
    expect(info).toEqual({ address: '127.0.0.1', port: String(sim.nbdPort), cert: expect.stringContaining('BEGIN CERTIFICATE'), exportname: `/${uuid}?session_id=${session}`, subject: 'localhost' });
    await xapi(sim.url, 'network.remove_purpose', session, net, 'insecure_nbd');
    expect(await xapi(sim.url, 'VDI.get_nbd_info', session, vdi)).toEqual([]);
  });
});

describe('VDI.resize / VDI.resize_online', () => {
  let own: Simulator;
  let s: string;
  beforeAll(async () => {
    own = await startSimulator({ pool: cbtPool() });
    s = await login(own.url);
  });
  afterAll(async () => own.close());
  const disk = (vm: string) => own.state.records('VBD').find((b) => b.VM === own.state.vm(vm).ref && b.device === 'xvda')!.VDI as string;

  it('grow a disk (new bytes zero, CBT tracks them) and refuse what XAPI and SM refuse', async () => {
    const halted = disk('other');
    await xapi(own.url, 'VDI.resize', s, halted, String(6 << 20));
    expect(own.state.record('VDI', halted)!.virtual_size).toBe(6 << 20);
    const res = await fetch(`${own.url}/export_raw_vdi?session_id=${s}&vdi=${halted}&format=raw`);
    const bytes = Buffer.from(await res.arrayBuffer());
    expect(bytes.length).toBe(6 << 20);
    expect(bytes.every((b) => b === 0)).toBe(true);
    expect(await xapiError(own.url, 'VDI.resize', s, halted, String(2 << 20))).toEqual(['SR_BACKEND_FAILURE_79', '', `VDI Invalid size [opterr=shrinking from ${6 << 20} to ${2 << 20} is not supported]`, '']);

    const attached = disk('live');
    expect((await xapiError(own.url, 'VDI.resize', s, attached, String(4 << 20)))[0]).toBe('VDI_IN_USE');
    const before = (await xapi(own.url, 'VDI.snapshot', s, attached, {})) as string;
    await xapi(own.url, 'VDI.resize_online', s, attached, String(4 << 20));
    own.state.churn('live', 100);
    const after = (await xapi(own.url, 'VDI.snapshot', s, attached, {})) as string;
    // Every block of the grown disk changed, the new ones included.
    expect(decodeBitmap(String(await xapi(own.url, 'VDI.list_changed_blocks', s, before, after)))).toHaveLength(64);
  });
});
