import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAll } from '../../runtime/formats/test-sources.js';
import { verifyXva } from '../../runtime/formats/xva.js';
import { decodeValue } from '../../runtime/formats/xmlrpc.js';
import { smallPool } from './fixtures.js';
import { startSimulator, type Simulator } from './server.js';
import { login, waitFor, xapi } from './test-helpers.js';

const run = promisify(execFile);

let sim: Simulator;
let session: string;
let dir: string;

beforeAll(async () => {
  sim = await startSimulator({
    pool: smallPool({
      vms: [
        ...smallPool().vms!,
        { name_label: 'big', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 128, fill: 'pattern' }], vifs: [] },
      ],
    }),
  });
  session = await login(sim.url);
  dir = await mkdtemp(join(tmpdir(), 'sim-http-'));
});
afterAll(async () => {
  await sim.close();
});

interface Got {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  rawHead: string;
}

/** A GET with node:http, keeping the raw header block to check the framing. */
function get(url: string, headers: Record<string, string> = {}): Promise<Got> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks), rawHead: res.rawHeaders.join('\n') }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

const q = (params: Record<string, string>) => new URLSearchParams({ session_id: session, ...params }).toString();
const vdiOf = (name: string) => sim.state.vdis().find((v) => v.name_label === name)!;

async function taskRecord(task: string): Promise<Record<string, unknown>> {
  return (await xapi(sim.url, 'task.get_record', session, task)) as Record<string, unknown>;
}

// Independent check of an XVA: Python's tarfile walks it, xxhsum recomputes every chunk's XXH64.
const PY_XVA = `
import json, os, subprocess, sys, tarfile
path, out = sys.argv[1], sys.argv[2]
names, stored, files = [], {}, []
with tarfile.open(path, 'r|') as tar:
    for m in tar:
        names.append(m.name)
        data = tar.extractfile(m).read()
        if m.name.endswith('.xxhash'):
            stored[m.name[:-7]] = data.decode().strip().lower()
        elif m.name != 'ova.xml':
            f = os.path.join(out, str(len(files)))
            open(f, 'wb').write(data)
            files.append((m.name, f, len(data)))
sums = {}
if files:
    res = subprocess.run(['xxhsum', '-H1'] + [f for _, f, _ in files], capture_output=True, text=True, check=True)
    for line in res.stdout.splitlines():
        h, f = line.split()
        sums[f] = h
print(json.dumps({'first': names[0], 'chunks': [[n, size, stored.get(n) == sums[f]] for n, f, size in files]}))
`;

describe('/export', () => {
  it('streams an XVA whose every chunk checksum holds (Python tarfile + xxhsum) and whose data is the disks', async () => {
    const web1 = sim.state.vm('web1');
    const snap = (await xapi(sim.url, 'VM.snapshot', session, web1.ref, 'http-test')) as string;
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    const got = await get(`${sim.url}/export?${q({ ref: snap, task_id: task })}`);
    expect(got.status).toBe(200);
    expect(got.headers['content-type']).toBe('application/octet-stream');
    expect(got.headers.connection).toBe('close');
    expect(got.headers['task-id']).toBe(task);
    expect(got.headers['content-length']).toBeUndefined();
    expect(got.headers['transfer-encoding']).toBeUndefined();

    const file = join(dir, 'web1.xva');
    await writeFile(file, got.body);
    const { stdout } = await run('/usr/bin/python3', ['-c', PY_XVA, file, dir]);
    const checked = JSON.parse(stdout) as { first: string; chunks: [string, number, boolean][] };
    expect(checked.first).toBe('ova.xml');
    expect(checked.chunks.length).toBeGreaterThan(0);
    expect(checked.chunks.every(([, , ok]) => ok)).toBe(true);

    const report = await verifyXva((async function* () { yield got.body; })());
    const ova = decodeValue(report.ovaXml) as { version: Record<string, string>; objects: { class: string; id: string; snapshot: Record<string, unknown> }[] };
    expect(ova.version).toMatchObject({ export_vsn: '2', product_brand: 'XCP-ng', hostname: 'xcp-a' });
    const vm = ova.objects.find((o) => o.class === 'VM')!;
    expect(vm.id).toBe('Ref:0');
    expect(vm.snapshot).toMatchObject({ name_label: 'http-test', power_state: 'Halted', is_a_snapshot: false, snapshot_of: 'OpaqueRef:NULL' });
    expect((vm.snapshot.VBDs as string[]).every((r) => /^Ref:\d+$/.test(r))).toBe(true);
    expect(ova.objects.map((o) => o.class)).toEqual(['VM', 'VM_guest_metrics', 'VBD', 'VBD', 'VBD', 'VIF', 'network', 'VDI', 'VDI', 'VDI', 'SR', 'SR']);

    // Every disk comes back byte for byte.
    const vdis = ova.objects.filter((o) => o.class === 'VDI' && o.snapshot.is_tools_iso === false);
    for (const d of report.disks) {
      const vdi = vdis.find((v) => v.id === d.ref)!;
      const original = sim.state.vdis().find((v) => v.uuid === vdi.snapshot.uuid)!;
      expect(d.bytes).toBe(original.virtual_size);
    }
    const rebuilt = new Map<string, Buffer>();
    const { xvaDiskWrites } = await import('../../runtime/formats/xva.js');
    for await (const w of xvaDiskWrites((async function* () { yield got.body; })())) {
      const vdi = vdis.find((v) => v.id === w.ref)!;
      const size = Number(vdi.snapshot.virtual_size);
      const buf = rebuilt.get(w.ref) ?? Buffer.alloc(size);
      w.data.copy(buf, w.offset);
      rebuilt.set(w.ref, buf);
    }
    for (const [ref, buf] of rebuilt) {
      const uuid = vdis.find((v) => v.id === ref)!.snapshot.uuid as string;
      expect(buf.equals(await readAll(sim.state.disk(uuid)))).toBe(true);
    }

    const t = await taskRecord(task);
    expect(t).toMatchObject({ status: 'success', progress: 1, result: '' });
    expect(sim.state.transfers('export').at(-1)).toMatchObject({ status: 'done', bytes: got.body.length, compression: 'none' });
  });

  it.each([
    ['true', (b: Buffer) => zlib.gunzipSync(b)],
    ['gzip', (b: Buffer) => zlib.gunzipSync(b)],
    ['zstd', (b: Buffer) => b],
  ])('compresses with use_compression=%s to the same XVA', async (mode, decompress) => {
    const ref = sim.state.vm('db1').ref;
    const plain = await get(`${sim.url}/export?${q({ ref })}`);
    const packed = await get(`${sim.url}/export?${q({ ref, use_compression: mode })}`);
    let body = decompress(packed.body);
    if (mode === 'zstd') {
      expect(packed.body.subarray(0, 4).toString('hex')).toBe('28b52ffd');
      const f = join(dir, 'db1.xva.zst');
      await writeFile(f, packed.body);
      await run('zstd', ['-d', '-q', '-f', f, '-o', `${f}.out`]);
      body = await readFile(`${f}.out`);
    } else {
      expect(packed.body.subarray(0, 2).toString('hex')).toBe('1f8b');
    }
    expect(createHash('sha256').update(body).digest('hex')).toBe(createHash('sha256').update(plain.body).digest('hex'));
  });

  it('refuses a running VM with VM_BAD_POWER_STATE, a blocked one with OPERATION_BLOCKED (500, task failed)', async () => {
    for (const [name, error] of [
      ['web1', ['VM_BAD_POWER_STATE', sim.state.vm('web1').ref, 'halted, suspended', 'running']],
      ['locked', ['OPERATION_BLOCKED', sim.state.vm('locked').ref, 'exports are off for this VM']],
    ] as const) {
      const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
      const got = await get(`${sim.url}/export?${q({ ref: sim.state.vm(name).ref, task_id: task })}`);
      expect(got.status).toBe(500);
      expect(await taskRecord(task)).toMatchObject({ status: 'failure', error_info: error });
    }
    const unknown = await get(`${sim.url}/export?${q({ uuid: '00000000-0000-0000-0000-000000000000' })}`);
    expect(unknown.status).toBe(500);
  });

  it('marks the VM with an export in current_operations while streaming', async () => {
    const big = sim.state.vm('big');
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    const req = http.get(`${sim.url}/export?${q({ ref: big.ref, task_id: task })}`);
    const res = await new Promise<http.IncomingMessage>((resolve) => req.on('response', resolve));
    res.pause();
    await waitFor(() => Object.keys(sim.state.vm('big').current_operations as object).length > 0);
    expect(sim.state.vm('big').current_operations).toEqual({ [task]: 'export' });
    expect(sim.state.vm('big').allowed_operations).not.toContain('destroy');
    res.resume();
    res.on('data', () => {});
    await new Promise((r) => res.on('end', r));
    await waitFor(() => Object.keys(sim.state.vm('big').current_operations as object).length === 0);
    expect((await taskRecord(task)).status).toBe('success');
  });

  it('holds a stalled reader without buffering the disk (backpressure)', async () => {
    const big = sim.state.vm('big');
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    const req = http.get(`${sim.url}/export?${q({ ref: big.ref, task_id: task })}`);
    const res = await new Promise<http.IncomingMessage>((resolve) => req.on('response', resolve));
    res.pause();
    const rss = process.memoryUsage().rss;
    await new Promise((r) => setTimeout(r, 600));
    const transfer = sim.state.transfers('export').at(-1)!;
    // 128 MiB disk: only socket buffers and a few chunks may be in flight (a simulator that
    // buffered the export would pass both bounds below by far).
    expect(transfer.bytes).toBeLessThan(24 << 20);
    expect((await taskRecord(task)).progress).toBeLessThan(0.1);
    expect(process.memoryUsage().rss - rss).toBeLessThan(64 << 20);
    let total = 0;
    res.on('data', (c: Buffer) => (total += c.length));
    res.resume();
    await new Promise((r) => res.on('end', r));
    expect(total).toBeGreaterThan(128 << 20);
  });

  it('answers 302 to the host that reaches a local SR, which then serves it', async () => {
    const vm = sim.state.vm('local-b');
    const got = await get(`${sim.url}/export?${q({ ref: vm.ref })}`);
    expect(got.status).toBe(302);
    expect(got.headers.location).toBe(`${sim.hosts[1]!.url}/export?${q({ ref: vm.ref })}`);
    const there = await get(got.headers.location!);
    expect(there.status).toBe(200);
    await verifyXva((async function* () { yield there.body; })());
  });
});

describe('authentication', () => {
  it('answers 401 without credentials or with a stale session, and fails the given task', async () => {
    const ref = sim.state.vm('db1').ref;
    expect((await get(`${sim.url}/export?ref=${ref}`)).status).toBe(401);
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    const stale = await get(`${sim.url}/export?ref=${ref}&session_id=OpaqueRef:stale&task_id=${task}`);
    expect(stale.status).toBe(401);
    expect(stale.headers['www-authenticate']).toBe('Basic realm="xapi"');
    expect(await taskRecord(task)).toMatchObject({ status: 'failure', error_info: ['SESSION_AUTHENTICATION_FAILED'] });
    expect((await get(`${sim.url}/export?ref=${ref}`, { authorization: `Basic ${Buffer.from('root:bad').toString('base64')}` })).status).toBe(401);
  });

  it('accepts the session in a cookie, or HTTP Basic credentials (a session logged out afterwards)', async () => {
    const ref = sim.state.vm('db1').ref;
    expect((await get(`${sim.url}/export?ref=${ref}`, { cookie: `session_id=${session}` })).status).toBe(200);
    const live = sim.state.liveSessions();
    const basic = await get(`${sim.url}/export?ref=${ref}`, { authorization: `Basic ${Buffer.from('root:secret').toString('base64')}` });
    expect(basic.status).toBe(200);
    expect(sim.state.liveSessions()).toBe(live);
    // Without task_id the handler's own task lives only as long as the request.
    expect(sim.state.tasks().filter((t) => t.name_label === 'VM.export')).toEqual([]);
  });
});

/** The fields of `vhdiinfo` output a test looks at. */
function vhdiinfo(text: string): { format: string; size: number } {
  const format = /Disk type\s*:\s*(\w+)/i.exec(text)?.[1]?.toLowerCase() ?? '';
  const size = Number(/Media size\s*:\s*.*?\((\d+) bytes\)/i.exec(text)?.[1] ?? /Media size\s*:\s*(\d+)/i.exec(text)?.[1] ?? NaN);
  return { format, size };
}

describe('/export_raw_vdi', () => {
  it('serves raw bytes equal to the disk, by ref or uuid, sparse disks included', async () => {
    for (const name of ['web1 0', 'web1 1', 'db1 0']) {
      const vdi = vdiOf(name);
      const got = await get(`${sim.url}/export_raw_vdi?${q({ vdi: vdi.uuid as string, format: 'raw' })}`);
      expect(got.status).toBe(200);
      expect(got.headers['content-disposition']).toBe(`attachment; filename="${vdi.uuid}.raw"`);
      expect(got.body.equals(await readAll(sim.state.disk(vdi.ref)))).toBe(true);
    }
  });

  it('serves a VHD that qemu-img checks and converts back to the raw bytes', async () => {
    for (const name of ['web1 0', 'web1 1', 'db1 0']) {
      const vdi = vdiOf(name);
      const vhd = await get(`${sim.url}/export_raw_vdi?${q({ vdi: vdi.ref, format: 'vhd' })}`);
      expect(vhd.status).toBe(200);
      expect(vhd.headers['content-type']).toBe('application/vhd');
      const raw = await get(`${sim.url}/export_raw_vdi?${q({ vdi: vdi.ref, format: 'raw' })}`);
      const f = join(dir, `${vdi.uuid}.vhd`);
      await writeFile(f, vhd.body);
      // qemu-img 7.2 has no `check` for vpc: `info` parses footer, header and BAT, libvhdi reads
      // it too. qemu sizes VHDs from CHS geometry unless told to trust current_size.
      const opts = `driver=vpc,force_size_calc=current_size,file.filename=${f}`;
      const info = JSON.parse((await run('qemu-img', ['info', '--output=json', '--image-opts', opts])).stdout) as { 'virtual-size': number; format: string };
      expect(info).toMatchObject({ format: 'vpc', 'virtual-size': raw.body.length });
      const vhdi = (await run('vhdiinfo', [f])).stdout;
      expect(vhdiinfo(vhdi)).toMatchObject({ format: 'dynamic', size: raw.body.length });
      await run('qemu-img', ['convert', '--image-opts', opts, '-O', 'raw', `${f}.raw`]);
      const converted = await readFile(`${f}.raw`);
      expect(converted.equals(raw.body)).toBe(true);
    }
  });

  it('serves a differencing VHD against a base (empty when nothing changed)', async () => {
    const vdi = vdiOf('web1 0');
    const snap = (await xapi(sim.url, 'VDI.snapshot', session, vdi.ref, {})) as string;
    const got = await get(`${sim.url}/export_raw_vdi?${q({ vdi: snap, format: 'vhd', base: vdi.ref })}`);
    expect(got.status).toBe(200);
    expect(got.body.readUInt32BE(60)).toBe(4);
    await xapi(sim.url, 'VDI.destroy', session, snap);
  });

  it('answers 404 for an unknown format and fails the task', async () => {
    const task = (await xapi(sim.url, 'task.create', session, 'x', '')) as string;
    const got = await get(`${sim.url}/export_raw_vdi?${q({ vdi: vdiOf('db1 0').ref, format: 'qcow2', task_id: task })}`);
    expect(got.status).toBe(404);
    expect(await taskRecord(task)).toMatchObject({ status: 'failure', error_info: ['INTERNAL_ERROR', 'Unknown format qcow2'] });
  });
});

describe('/pool/xmldbdump, /host_backup, /export_metadata', () => {
  it('dumps the database deterministically', async () => {
    const a = await get(`${sim.url}/pool/xmldbdump?${q({})}`);
    const b = await get(`${sim.url}/pool/xmldbdump?${q({})}`);
    expect(a.status).toBe(200);
    expect(a.body.equals(b.body)).toBe(true);
    const text = a.body.toString('utf8');
    expect(text).toContain(`uuid="${sim.state.vm('web1').uuid}"`);
    expect(text).toContain('name__label="Café ünïcode ✓"');
    const f = join(dir, 'db.xml');
    await writeFile(f, a.body);
    const parsed = await run('/usr/bin/python3', ['-c', 'import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); print(len(r.findall("table[@name=\'VM\']/row")))', f]);
    expect(Number(parsed.stdout.trim())).toBe(sim.state.vms().length);
  });

  it('serves each host its own deterministic backup', async () => {
    const [a1, a2, b] = await Promise.all([
      get(`${sim.hosts[0]!.url}/host_backup?${q({})}`),
      get(`${sim.hosts[0]!.url}/host_backup?${q({})}`),
      get(`${sim.hosts[1]!.url}/host_backup?${q({})}`),
    ]);
    expect(a1.status).toBe(200);
    expect(a1.body.equals(a2.body)).toBe(true);
    expect(a1.body.equals(b.body)).toBe(false);
    const f = join(dir, 'b.tgz');
    await writeFile(f, b.body);
    const { stdout } = await run('tar', ['-xzOf', f, 'etc/hostname']);
    expect(stdout.trim()).toBe('xcp-b');
  });

  it('serves the metadata of a VM and its snapshots as a tar with Content-Length', async () => {
    const got = await get(`${sim.url}/export_metadata?${q({ uuid: sim.state.vm('db1').uuid as string })}`);
    expect(got.status).toBe(200);
    expect(Number(got.headers['content-length'])).toBe(got.body.length);
    const f = join(dir, 'meta.tar');
    await writeFile(f, got.body);
    const { stdout } = await run('tar', ['-tf', f]);
    expect(stdout.trim()).toBe('ova.xml');
    const xml = (await run('tar', ['-xOf', f, 'ova.xml'])).stdout;
    const ova = decodeValue(xml) as { objects: { class: string; snapshot: Record<string, unknown> }[] };
    expect(ova.objects.filter((o) => o.class === 'VM').map((o) => o.snapshot.name_label)).toEqual(['db1', 'db1 nightly']);
  });
});
