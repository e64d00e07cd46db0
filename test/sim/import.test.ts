import http from 'node:http';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { execFileSync } from 'node:child_process';
import { Xapi } from 'xen-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAll } from '../../runtime/formats/test-sources.js';
import { decodeValue } from '../../runtime/formats/xmlrpc.js';
import type { FaultAction } from './faults.js';
import { smallPool } from './fixtures.js';
import { startSimulator, type Simulator } from './server.js';
import { login, waitFor, xapi } from './test-helpers.js';

let sim: Simulator;
let session: string;
let xva: Buffer;

beforeAll(async () => {
  sim = await startSimulator({ pool: smallPool() });
  session = await login(sim.url);
  xva = await download(`/export?ref=${sim.state.vm('web1').ref}`, true);
});
afterAll(async () => {
  await sim.close();
});

async function download(path: string, snapshotFirst = false): Promise<Buffer> {
  let p = path;
  let snap: string | undefined;
  if (snapshotFirst) {
    snap = (await xapi(sim.url, 'VM.snapshot', session, sim.state.vm('web1').ref, 'for-import')) as string;
    p = `/export?ref=${snap}`;
  }
  const res = await fetch(`${sim.url}${p}&session_id=${session}`);
  const body = Buffer.from(await res.arrayBuffer());
  if (snap !== undefined) await xapi(sim.url, 'VM.destroy', session, snap);
  return body;
}

interface PutResult {
  status: number;
  headers: http.IncomingHttpHeaders;
}

/** A PUT with an explicit Content-Length, or chunked when `chunked`. */
function put(path: string, body: Buffer, opts: { chunked?: boolean } = {}): Promise<PutResult> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${sim.url}${path}`, { method: 'PUT', headers: opts.chunked === true ? {} : { 'content-length': body.length } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers }));
      res.on('error', () => resolve({ status: res.statusCode!, headers: res.headers }));
    });
    req.on('error', reject);
    if (opts.chunked === true) {
      req.write(body.subarray(0, 1000));
      req.end(body.subarray(1000));
    } else {
      req.end(body);
    }
  });
}

async function taskOutcome(task: string): Promise<Record<string, unknown>> {
  return waitFor(async () => {
    const r = (await xapi(sim.url, 'task.get_record', session, task)) as Record<string, unknown>;
    return r.status !== 'pending' ? r : undefined;
  });
}

async function importAndCheck(body: Buffer, query = ''): Promise<string> {
  const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
  const got = await put(`/import?session_id=${session}&task_id=${task}${query}`, body);
  expect(got.status).toBe(200);
  expect(got.headers['task-id']).toBe(task);
  const outcome = await taskOutcome(task);
  expect(outcome.status).toBe('success');
  const vms = decodeValue(outcome.result as string) as string[];
  expect(vms).toHaveLength(1);
  return vms[0]!;
}

async function expectSameDisks(vm: string): Promise<void> {
  const record = sim.state.record('VM', vm)!;
  const devices = (record.VBDs as string[]).map((b) => sim.state.record('VBD', b)!).filter((b) => b.type === 'Disk');
  const original = (sim.state.vm('web1').VBDs as string[]).map((b) => sim.state.record('VBD', b)!).filter((b) => b.type === 'Disk');
  expect(devices.map((d) => d.device)).toEqual(original.map((d) => d.device));
  for (const [i, d] of devices.entries()) {
    const mine = await readAll(sim.state.disk(d.VDI as string));
    const theirs = await readAll(sim.state.disk(original[i]!.VDI as string));
    expect(mine.equals(theirs)).toBe(true);
  }
}

describe('PUT /import', () => {
  it('imports an XVA (Content-Length), answering 200 + task-id first; the VM and its disks come back', async () => {
    const vm = await importAndCheck(xva, `&sr_id=${sim.state.records('SR').find((s) => s.name_label === 'NFS storage')!.ref}`);
    const record = sim.state.record('VM', vm)!;
    expect(record).toMatchObject({ name_label: 'for-import', power_state: 'Halted', is_a_snapshot: false, current_operations: {} });
    expect(record.uuid).not.toBe(sim.state.vm('web1').uuid);
    await expectSameDisks(vm);
    // And it exports back to the same disks.
    const again = await download(`/export?ref=${vm}`);
    const reimported = await importAndCheck(again);
    await expectSameDisks(reimported);
    expect(sim.state.transfers('import').at(-1)).toMatchObject({ status: 'done' });
  });

  it.each([
    ['gzip', (b: Buffer) => zlib.gzipSync(b)],
    ['zstd', (b: Buffer) => execFileSync('zstd', ['-q', '-c'], { input: b, maxBuffer: 256 << 20 })],
  ])('recognises %s input', async (_name, pack) => {
    const vm = await importAndCheck(pack(xva));
    await expectSameDisks(vm);
  });

  it('works through xen-api putResource (a Buffer, and a stream that declares its length)', async () => {
    // A stream without `length` makes xen-api send Content-Length 1 PiB and destroy the socket
    // once the body is queued: it loses whatever the socket had not flushed yet (client-side,
    // not simulated); so the stream here carries `length`.
    const x = new Xapi({ url: sim.url, auth: { user: 'root', password: 'secret' }, allowUnauthorized: true });
    await x.connect();
    await x.objectsFetched;
    try {
      const fromBuffer = (await x.putResource(xva, '/import/', {})) as string[];
      expect(fromBuffer).toHaveLength(1);
      await expectSameDisks(fromBuffer[0]!);
      const stream = Object.assign(Readable.from([xva.subarray(0, 100_000), xva.subarray(100_000)]), { length: xva.length });
      const fromStream = (await x.putResource(stream, '/import/', {})) as string[];
      await expectSameDisks(fromStream[0]!);
    } finally {
      await x.disconnect();
    }
  });

  it('answers 200 with task-id before reading any of the body', async () => {
    const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    const req = http.request(`${sim.url}/import?session_id=${session}&task_id=${task}`, { method: 'PUT', headers: { 'content-length': xva.length } });
    req.flushHeaders();
    const res = await new Promise<http.IncomingMessage>((resolve) => req.on('response', resolve));
    expect(res.statusCode).toBe(200);
    expect(res.headers['task-id']).toBe(task);
    expect(res.headers['content-length']).toBeUndefined();
    req.on('error', () => {});
    req.destroy();
    expect(await taskOutcome(task)).toMatchObject({ status: 'failure', error_info: ['IMPORT_ERROR_PREMATURE_EOF'] });
  });

  it('refuses a chunked upload with 403 and IMPORT_ERROR_CANNOT_HANDLE_CHUNKED', async () => {
    const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    const got = await put(`/import?session_id=${session}&task_id=${task}`, xva, { chunked: true });
    expect(got.status).toBe(403);
    expect(await taskOutcome(task)).toMatchObject({ status: 'failure', error_info: ['IMPORT_ERROR_CANNOT_HANDLE_CHUNKED'] });
  });

  it('fails a corrupted chunk with IMPORT_ERROR_SOME_CHECKSUMS_FAILED and leaves nothing behind', async () => {
    const vms = sim.state.vms().length;
    const vdis = sim.state.vdis().length;
    const bad = Buffer.from(xva);
    // Flip a byte inside the first data chunk (after ova.xml's header and data).
    const ovaSize = parseInt(bad.subarray(124, 135).toString('latin1'), 8);
    const firstChunkData = 512 + Math.ceil(ovaSize / 512) * 512 + 512;
    bad[firstChunkData + 100] = bad[firstChunkData + 100]! ^ 0xff;
    const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    expect((await put(`/import?session_id=${session}&task_id=${task}`, bad)).status).toBe(200);
    expect(await taskOutcome(task)).toMatchObject({ status: 'failure', error_info: ['IMPORT_ERROR_SOME_CHECKSUMS_FAILED'] });
    expect(sim.state.vms()).toHaveLength(vms);
    expect(sim.state.vdis()).toHaveLength(vdis);
  });

  it('fails a truncated upload with IMPORT_ERROR_PREMATURE_EOF', async () => {
    const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    await put(`/import?session_id=${session}&task_id=${task}`, xva.subarray(0, xva.length - 4096));
    expect(await taskOutcome(task)).toMatchObject({ status: 'failure', error_info: ['IMPORT_ERROR_PREMATURE_EOF'] });
  });

  it('keeps the VM uuid with restore=true, and refuses an ISO SR with 400', async () => {
    const db1 = sim.state.vm('db1');
    const body = await download(`/export?ref=${db1.ref}`);
    const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    await put(`/import?session_id=${session}&task_id=${task}&restore=true`, body);
    expect((await taskOutcome(task)).error_info).toEqual(['IMPORT_ERROR', `a VM with uuid ${db1.uuid} already exists`]);
    const copy = await importAndCheck(body);
    await xapi(sim.url, 'VM.destroy', session, copy);
    const iso = sim.state.records('SR').find((s) => s.content_type === 'iso')!;
    const t2 = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    expect((await put(`/import?session_id=${session}&task_id=${t2}&sr_id=${iso.ref}`, body)).status).toBe(400);
    expect((await taskOutcome(t2)).error_info).toEqual(['SR_OPERATION_NOT_SUPPORTED']);
  });
});

describe('PUT /import_raw_vdi', () => {
  it.each(['raw', 'vhd'])('writes a %s image into a VDI, which exports back the same bytes', async (format) => {
    const source = sim.state.vdis().find((v) => v.name_label === 'web1 1')!;
    const image = await download(`/export_raw_vdi?vdi=${source.ref}&format=${format}`);
    const sr = sim.state.records('SR').find((s) => s.name_label === 'NFS storage')!.ref;
    const vdi = (await xapi(sim.url, 'VDI.create', session, {
      name_label: `restored ${format}`,
      name_description: '',
      SR: sr,
      virtual_size: String(source.virtual_size),
      type: 'user',
      sharable: false,
      read_only: false,
      other_config: {},
    })) as string;
    const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    const got = await put(`/import_raw_vdi?session_id=${session}&task_id=${task}&vdi=${vdi}&format=${format}`, image);
    expect(got.status).toBe(200);
    expect(await taskOutcome(task)).toMatchObject({ status: 'success' });
    const back = await download(`/export_raw_vdi?vdi=${vdi}&format=raw`);
    expect(back.equals(await readAll(sim.state.disk(source.ref)))).toBe(true);
    expect(sim.state.record('VDI', vdi)!.physical_utilisation).toBeGreaterThan(0);
  });
});

describe('upload faults, early EOF and imported VDIs', () => {
  const counts = () => ({ vms: sim.state.vms().length, vdis: sim.state.vdis().length });

  it('imported VDIs are not snapshots, even when the export was of a snapshot', async () => {
    const vm = await importAndCheck(xva);
    const vdis = (sim.state.record('VM', vm)!.VBDs as string[]).map((b) => sim.state.record('VBD', b)!).filter((b) => b.type === 'Disk').map((b) => sim.state.record('VDI', b.VDI as string)!);
    expect(vdis.length).toBeGreaterThan(0);
    for (const vdi of vdis) expect(vdi.is_a_snapshot).toBe(false);
  });

  it.each([
    ['reset', { kind: 'reset', after_bytes: 300_000 }, ['IMPORT_ERROR_PREMATURE_EOF']],
    ['task-failure after N bytes', { kind: 'task-failure', code: 'IMPORT_ERROR', params: ['simulated'], after_bytes: 300_000 }, ['IMPORT_ERROR', 'simulated']],
    ['task-failure at the end', { kind: 'task-failure', code: 'IMPORT_ERROR', params: ['late'] }, ['IMPORT_ERROR', 'late']],
  ] satisfies [string, FaultAction, string[]][])('/import with a %s fault fails its task and rolls back', async (_name, action, errorInfo) => {
    const before = counts();
    sim.faults.add({ http: 'import', action });
    const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    await put(`/import?session_id=${session}&task_id=${task}`, xva).catch(() => undefined);
    expect(await taskOutcome(task)).toMatchObject({ status: 'failure', error_info: errorInfo });
    expect(counts()).toEqual(before);
  });

  async function newVdi(size: number): Promise<string> {
    const sr = sim.state.records('SR').find((s) => s.name_label === 'NFS storage')!.ref;
    return (await xapi(sim.url, 'VDI.create', session, { name_label: 'target', name_description: '', SR: sr, virtual_size: String(size), type: 'user', sharable: false, read_only: false, other_config: {} })) as string;
  }

  it('/import_raw_vdi: a raw body shorter than its Content-Length fails with VDI_IO_ERROR', async () => {
    const vdi = await newVdi(2 << 20);
    const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    await new Promise<void>((resolve) => {
      const req = http.request(`${sim.url}/import_raw_vdi?session_id=${session}&task_id=${task}&vdi=${vdi}&format=raw`, { method: 'PUT', headers: { 'content-length': 2 << 20 } });
      req.on('error', () => resolve());
      req.on('response', (res) => {
        res.resume();
        res.on('close', () => resolve());
      });
      req.write(Buffer.alloc(1 << 20, 7), () => setTimeout(() => req.destroy(), 50));
    });
    expect(await taskOutcome(task)).toMatchObject({ status: 'failure', error_info: ['VDI_IO_ERROR', 'Device I/O errors'] });
  });

  it.each(['raw', 'vhd'])('/import_raw_vdi (%s) with a reset fault fails its task', async (format) => {
    const source = sim.state.vdis().find((v) => v.name_label === 'web1 1')!;
    const image = await download(`/export_raw_vdi?vdi=${source.ref}&format=${format}`);
    const vdi = await newVdi(source.virtual_size as number);
    sim.faults.add({ http: 'import_raw_vdi', action: { kind: 'reset', after_bytes: 100_000 } });
    const task = (await xapi(sim.url, 'task.create', session, 'import', '')) as string;
    await put(`/import_raw_vdi?session_id=${session}&task_id=${task}&vdi=${vdi}&format=${format}`, image).catch(() => undefined);
    const outcome = await taskOutcome(task);
    expect(outcome.status).toBe('failure');
    expect((outcome.error_info as string[])[0]).toBe('VDI_IO_ERROR');
    expect(sim.state.transfers('import_raw_vdi').at(-1)).toMatchObject({ status: 'failed', bytes: expect.any(Number) });
    expect(sim.state.transfers('import_raw_vdi').at(-1)!.bytes).toBeLessThanOrEqual(100_000);
  });
});
