import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTls, type TlsMaterial } from '../../test/sim/tls.js';
import { NbdClient, NbdError } from './client.js';

/**
 * The client against an independent server: Debian's qemu-nbd (qemu-utils) serving a file.
 */

const SIZE = 24 << 20;
let dir: string;
let file: string;
let content: Buffer;
let tlsMaterial: TlsMaterial;
let tlsDir: string;
const children: ChildProcess[] = [];

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts qemu-nbd on a free port; resolves once it accepts connections. */
async function qemuNbd(opts: { tls?: boolean; exportName?: string } = {}): Promise<{ port: number; child: ChildProcess }> {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const args = ['--persistent', '--shared=8', '-r', '-f', 'raw', '--bind', '127.0.0.1', '--port', String(port), '--export-name', opts.exportName ?? 'disk'];
    if (opts.tls === true) args.push('--object', `tls-creds-x509,id=tls0,dir=${tlsDir},endpoint=server,verify-peer=off`, '--tls-creds', 'tls0');
    const child = spawn('qemu-nbd', [...args, file], { stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(child);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    for (let i = 0; i < 200 && child.exitCode === null; i++) {
      const ok = await new Promise<boolean>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port }, () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      });
      if (ok) return { port, child };
      await delay(25);
    }
    child.kill('SIGKILL');
    if (attempt >= 3) throw new Error(`qemu-nbd did not start: ${stderr}`);
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmbackup-nbd-'));
  file = join(dir, 'disk.raw');
  // Random data with a hole: zeros must come back as zeros, data as data.
  content = randomBytes(SIZE);
  content.fill(0, 4 << 20, 6 << 20);
  await writeFile(file, content);
  tlsMaterial = await makeTls(['127.0.0.1'], join(dir, 'tls'));
  tlsDir = join(dir, 'qemu-tls');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(tlsDir);
  await copyFile(tlsMaterial.caFile, join(tlsDir, 'ca-cert.pem'));
  await copyFile(join(tlsMaterial.dir, 'server.crt'), join(tlsDir, 'server-cert.pem'));
  await copyFile(join(tlsMaterial.dir, 'server.key'), join(tlsDir, 'server-key.pem'));
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('NbdClient against qemu-nbd', () => {
  it('negotiates the export and reads ranges, pipelined, exactly as the file holds them', async () => {
    const { port } = await qemuNbd();
    const nbd = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk' });
    try {
      expect(nbd.size).toBe(SIZE);
      expect(nbd.readOnly).toBe(true);
      expect(nbd.tls).toBe(false);
      expect(await nbd.read(12345, 777)).toEqual(content.subarray(12345, 12345 + 777));
      // Scattered 64 KiB blocks (what CBT hands over), an odd range, and a long one split in requests.
      const ranges = [
        { offset: 0, length: 65536 },
        { offset: 5 * 65536, length: 65536 },
        { offset: (4 << 20) - 100, length: 300_000 },
        { offset: 8 << 20, length: 9 << 20 },
        { offset: SIZE - 65536, length: 65536 },
      ];
      const pieces: Buffer[] = [];
      let expectedOffset = ranges[0]!.offset;
      let rangeIndex = 0;
      let rangeEnd = ranges[0]!.offset + ranges[0]!.length;
      for await (const { offset, data } of nbd.readRanges(ranges, { depth: 4, requestSize: 1 << 20 })) {
        expect(offset).toBe(expectedOffset);
        expect(data.length).toBeLessThanOrEqual(1 << 20);
        pieces.push(data);
        expectedOffset = offset + data.length;
        if (expectedOffset === rangeEnd && rangeIndex + 1 < ranges.length) {
          rangeIndex += 1;
          expectedOffset = ranges[rangeIndex]!.offset;
          rangeEnd = expectedOffset + ranges[rangeIndex]!.length;
        }
      }
      const expected = Buffer.concat(ranges.map((r) => content.subarray(r.offset, r.offset + r.length)));
      expect(sha(Buffer.concat(pieces))).toBe(sha(expected));
    } finally {
      await nbd.close();
    }
  });

  it('streams a whole disk through readStream', async () => {
    const { port } = await qemuNbd();
    const nbd = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk' });
    const hash = createHash('sha256');
    for await (const chunk of nbd.readStream([{ offset: 0, length: nbd.size }])) hash.update(chunk as Buffer);
    await nbd.close();
    expect(hash.digest('hex')).toBe(sha(content));
  });

  it('names a refused export', async () => {
    const { port } = await qemuNbd();
    const error = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'nope' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NbdError);
    expect(error).toMatchObject({ code: 'NBD_REFUSED' });
    expect((error as Error).message).toContain('"nope"');
  });

  it('refuses reads outside the export before sending them', async () => {
    const { port } = await qemuNbd();
    const nbd = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk' });
    await expect(nbd.read(SIZE - 10, 20)).rejects.toMatchObject({ code: 'NBD_BAD_REQUEST' });
    expect(await nbd.read(SIZE - 10, 10)).toEqual(content.subarray(SIZE - 10));
    await nbd.close();
    await expect(nbd.read(0, 1)).rejects.toMatchObject({ code: 'NBD_CLOSED' });
  });

  it('TLS: verifies the server with a CA, or with the exact certificate; a plain client is told TLS is required', async () => {
    const { port } = await qemuNbd({ tls: true });
    const viaCa = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk', tls: { ca: tlsMaterial.ca } });
    expect(viaCa.tls).toBe(true);
    expect(await viaCa.read(1 << 20, 65536)).toEqual(content.subarray(1 << 20, (1 << 20) + 65536));
    await viaCa.close();

    const pinned = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk', tls: { cert: tlsMaterial.cert } });
    expect(await pinned.read(0, 4096)).toEqual(content.subarray(0, 4096));
    await pinned.close();

    await expect(NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk' })).rejects.toMatchObject({ code: 'NBD_TLS_REQUIRED' });
    // Another CA's certificate: neither the chain nor the pin holds.
    const other = await makeTls(['127.0.0.1'], join(dir, 'other-tls'));
    await expect(NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk', tls: { ca: other.ca } })).rejects.toMatchObject({ code: 'NBD_TLS_UNTRUSTED' });
    await expect(NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk', tls: { cert: other.cert } })).rejects.toMatchObject({ code: 'NBD_TLS_UNTRUSTED' });
  });

  it('a server that dies mid-read fails every outstanding read with NBD_DISCONNECTED', async () => {
    const { port, child } = await qemuNbd();
    const nbd = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk' });
    const seen: number[] = [];
    const reading = (async () => {
      // Slow consumer: the server is killed while requests are in flight.
      for await (const { offset } of nbd.readRanges([{ offset: 0, length: SIZE }], { depth: 4, requestSize: 256 << 10 })) {
        seen.push(offset);
        if (seen.length === 3) child.kill('SIGKILL');
        await delay(20);
      }
    })();
    const error = await reading.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(NbdError);
    expect(error).toMatchObject({ code: 'NBD_DISCONNECTED' });
    // Whether reads were in flight at the instant of the kill depends on the slow consumer's timing:
    // either way the error says the connection dropped, and with how many reads when there were any.
    expect((error as Error).message).toMatch(/connection dropped( with \d+ read\(s\) outstanding)?/);
    expect(seen.length).toBeLessThan(SIZE / (256 << 10));
    await expect(nbd.read(0, 1)).rejects.toMatchObject({ code: 'NBD_DISCONNECTED' });
    await nbd.close();
  });

  it('cannot connect: NBD_CONNECT_FAILED names the address', async () => {
    const port = await freePort();
    await expect(NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk' })).rejects.toMatchObject({ code: 'NBD_CONNECT_FAILED', message: expect.stringContaining(`nbd://127.0.0.1:${port}`) });
  });
});
