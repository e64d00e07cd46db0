import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient, NbdError } from '../../runtime/nbd/client.js';
import { cbtPool } from './fixtures.js';
import { startSimulator, type Simulator } from './server.js';
import { login, xapi, xapiError } from './test-helpers.js';

const run = promisify(execFile);

interface NbdInfo {
  address: string;
  port: string;
  cert: string;
  exportname: string;
  subject: string;
}

let dir: string;
let plain: Simulator;
let secure: Simulator;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmbackup-sim-nbd-'));
  plain = await startSimulator({ pool: { ...cbtPool(), networks: [{ name_label: 'Storage', purpose: ['insecure_nbd'] }] } });
  secure = await startSimulator({ pool: { ...cbtPool(), networks: [{ name_label: 'Storage', purpose: ['nbd'] }] } });
});
afterAll(async () => {
  await plain?.close();
  await secure?.close();
  await rm(dir, { recursive: true, force: true });
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function vdiOf(sim: Simulator, vm: string, device = 'xvda'): string {
  const v = sim.state.vm(vm);
  return sim.state.records('VBD').find((b) => b.VM === v.ref && b.device === device)!.VDI as string;
}

async function rawBytes(sim: Simulator, session: string, vdi: string): Promise<Buffer> {
  const res = await fetch(`${sim.url}/export_raw_vdi?session_id=${session}&vdi=${vdi}&format=raw`);
  expect(res.status).toBe(200);
  return Buffer.from(await res.arrayBuffer());
}

async function nbdInfo(sim: Simulator, session: string, vdi: string): Promise<NbdInfo> {
  const infos = (await xapi(sim.url, 'VDI.get_nbd_info', session, vdi)) as NbdInfo[];
  expect(infos).toHaveLength(1);
  return infos[0]!;
}

/** qemu-img convert from the export into a raw file; returns the file's bytes. */
async function qemuConvert(info: NbdInfo, tlsDir?: string): Promise<Buffer> {
  const out = join(dir, `out-${Math.random().toString(36).slice(2)}.raw`);
  const file: Record<string, unknown> = { driver: 'nbd', server: { type: 'inet', host: info.address, port: info.port }, export: info.exportname };
  const args = ['convert', '-f', 'raw', '-O', 'raw'];
  if (tlsDir !== undefined) {
    file['tls-creds'] = 'tls0';
    args.push('--object', `tls-creds-x509,id=tls0,dir=${tlsDir},endpoint=client`);
  }
  args.push(`json:${JSON.stringify({ driver: 'raw', file })}`, out);
  await run('qemu-img', args, { timeout: 60_000 });
  const bytes = await readFile(out);
  await rm(out);
  return bytes;
}

describe("the simulator's NBD server, read by qemu-img (qemu-utils)", () => {
  it('plain (insecure_nbd): qemu-img convert gives exactly the VDI bytes, after guest writes too, and a snapshot keeps its own', async () => {
    const session = await login(plain.url);
    const vdi = vdiOf(plain, 'app');
    const snap = (await xapi(plain.url, 'VDI.snapshot', session, vdi, {})) as string;
    plain.state.churn('app', 10);
    const disk = await qemuConvert(await nbdInfo(plain, session, vdi));
    expect(sha(disk)).toBe(sha(await rawBytes(plain, session, vdi)));
    const snapshot = await qemuConvert(await nbdInfo(plain, session, snap));
    expect(sha(snapshot)).toBe(sha(await rawBytes(plain, session, snap)));
    expect(sha(snapshot)).not.toBe(sha(disk));
    // A sparse disk: holes come back as zeros.
    const sparse = vdiOf(plain, 'app', 'xvdb');
    expect(sha(await qemuConvert(await nbdInfo(plain, session, sparse)))).toBe(sha(await rawBytes(plain, session, sparse)));
    await xapi(plain.url, 'VDI.destroy', session, snap);
    expect(plain.state.nbdConnections().every((c) => c.status === 'closed' && !c.tls)).toBe(true);
  });

  it('TLS (nbd): qemu-img with tls-creds-x509 trusting the simulator CA reads the same bytes', async () => {
    const session = await login(secure.url);
    const vdi = vdiOf(secure, 'app');
    secure.state.churn('app', 1);
    const tlsDir = join(dir, 'qemu-client-tls');
    await mkdir(tlsDir, { recursive: true });
    await copyFile(await secure.nbdCaFile(), join(tlsDir, 'ca-cert.pem'));
    const bytes = await qemuConvert(await nbdInfo(secure, session, vdi), tlsDir);
    expect(sha(bytes)).toBe(sha(await rawBytes(secure, session, vdi)));
    expect(secure.state.nbdConnections().some((c) => c.tls && c.reads > 0)).toBe(true);
    // Without TLS, qemu-img is refused.
    await expect(qemuConvert(await nbdInfo(secure, session, vdi))).rejects.toThrow(/TLS/i);
  });
});

describe("vmbackup's NbdClient against the simulator", () => {
  it('reads a VDI over TLS with the certificate get_nbd_info gives (pinned) or the CA', async () => {
    const session = await login(secure.url);
    const vdi = vdiOf(secure, 'app');
    const info = await nbdInfo(secure, session, vdi);
    const expected = await rawBytes(secure, session, vdi);
    const nbd = await NbdClient.connect({ host: info.address, port: Number(info.port), exportName: info.exportname, tls: { cert: info.cert, servername: info.subject } });
    expect(nbd.tls).toBe(true);
    expect(nbd.size).toBe(expected.length);
    expect(nbd.blockSize.maximum).toBe(32 << 20);
    const pieces: Buffer[] = [];
    for await (const { data } of nbd.readRanges([{ offset: 0, length: nbd.size }], { requestSize: 512 << 10 })) pieces.push(data);
    expect(sha(Buffer.concat(pieces))).toBe(sha(expected));
    // While connected the VDI is attached to the control domain, as xapi-nbd does.
    expect(await xapiError(secure.url, 'VDI.destroy', session, vdi)).toEqual(['VDI_IN_USE', vdi, 'destroy']);
    await nbd.close();
    await expect.poll(() => secure.state.records('VBD').filter((b) => b.VDI === vdi).length).toBe(1);

    const ca = await readFile(await secure.nbdCaFile(), 'utf8');
    const viaCa = await NbdClient.connect({ host: info.address, port: Number(info.port), exportName: info.exportname, tls: { ca, servername: info.subject } });
    expect(await viaCa.read(65536, 65536)).toEqual(expected.subarray(65536, 131072));
    await viaCa.close();
  });

  it('is told TLS is required, and refused an invalid session or a data-destroyed VDI', async () => {
    const session = await login(secure.url);
    const vdi = vdiOf(secure, 'app');
    const info = await nbdInfo(secure, session, vdi);
    const target = { host: info.address, port: Number(info.port) };
    await expect(NbdClient.connect({ ...target, exportName: info.exportname })).rejects.toMatchObject({ code: 'NBD_TLS_REQUIRED' });

    await xapi(secure.url, 'session.logout', session);
    const refused = await NbdClient.connect({ ...target, exportName: info.exportname, tls: { cert: info.cert } }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(NbdError);
    expect(refused).toMatchObject({ code: 'NBD_REFUSED' });
    expect((refused as Error).message).toContain('SESSION_INVALID');

    const again = await login(secure.url);
    await xapi(secure.url, 'VDI.enable_cbt', again, vdi);
    const snap = (await xapi(secure.url, 'VDI.snapshot', again, vdi, {})) as string;
    const snapInfo = await nbdInfo(secure, again, snap);
    await xapi(secure.url, 'VDI.data_destroy', again, snap);
    const gone = await NbdClient.connect({ ...target, exportName: snapInfo.exportname, tls: { cert: info.cert } }).catch((e: unknown) => e);
    expect(gone).toMatchObject({ code: 'NBD_REFUSED', message: expect.stringContaining('VDI_INCOMPATIBLE_TYPE') });
  });

  it('a connection cut mid-read (fault) fails the outstanding reads with NBD_DISCONNECTED', async () => {
    const session = await login(plain.url);
    const vdi = vdiOf(plain, 'app');
    const info = await nbdInfo(plain, session, vdi);
    plain.faults.add({ http: 'nbd', vdi: 'app 0', action: { kind: 'reset', after_bytes: 600_000 } });
    const nbd = await NbdClient.connect({ host: info.address, port: Number(info.port), exportName: info.exportname });
    let received = 0;
    const error = await (async () => {
      for await (const { data } of nbd.readRanges([{ offset: 0, length: nbd.size }], { requestSize: 256 << 10, depth: 4 })) received += data.length;
    })().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ code: 'NBD_DISCONNECTED', message: expect.stringMatching(/connection dropped with \d+ read\(s\) outstanding/) });
    expect(received).toBeLessThanOrEqual(600_000);
    await nbd.close();
  });

  it('no network with an NBD purpose: the server closes the connection', async () => {
    const off = await startSimulator({ pool: cbtPool() });
    try {
      await expect(NbdClient.connect({ host: '127.0.0.1', port: off.nbdPort, exportName: '/x?session_id=y' })).rejects.toMatchObject({ code: 'NBD_PROTOCOL', message: expect.stringContaining('closed') });
    } finally {
      await off.close();
    }
  });
});
