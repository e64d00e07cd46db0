import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { makeTls } from '../../test/sim/tls.js';
import { httpGet, type GetOptions } from './http-get.js';

const servers: net.Server[] = [];
const connections = new Set<net.Socket>();
afterEach(async () => {
  for (const c of connections) c.destroy();
  connections.clear();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

async function listen<S extends net.Server>(server: S, scheme = 'http'): Promise<URL> {
  servers.push(server);
  server.on(server instanceof https.Server ? 'secureConnection' : 'connection', (c: net.Socket) => connections.add(c));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return new URL(`${scheme}://127.0.0.1:${(server.address() as AddressInfo).port}/export?uuid=x`);
}

/** A raw server that answers every connection with `pieces`, a pause between each. */
function rawServer(pieces: (string | Buffer)[], end = true): net.Server {
  return net.createServer((socket) => {
    socket.once('data', async () => {
      for (const p of pieces) {
        socket.write(p);
        await new Promise((r) => setTimeout(r, 5));
      }
      if (end) socket.end();
      else socket.destroy();
    });
  });
}

/** Reads a whole body, copying each view (the buffer behind it is reused). */
async function readAll(url: URL, opts: GetOptions = { idleTimeoutMs: 10_000 }): Promise<{ status: number; bytes: Buffer; views: Set<ArrayBufferLike> }> {
  const { statusCode, body } = await httpGet(url, opts);
  const parts: Buffer[] = [];
  const views = new Set<ArrayBufferLike>();
  await body.pump((chunk) => {
    views.add(chunk.buffer);
    parts.push(Buffer.from(chunk));
  });
  return { status: statusCode, bytes: Buffer.concat(parts), views };
}

describe('httpGet: one GET read into one reused buffer', () => {
  const data = randomBytes(3 << 20);

  it('reads a body of Content-Length bytes, the request line carrying path and query', async () => {
    let seen = '';
    const url = await listen(
      http.createServer((req, res) => {
        seen = req.url!;
        res.writeHead(200, { 'content-length': data.length });
        res.end(data);
      }),
    );
    const { status, bytes, views } = await readAll(url);
    expect(seen).toBe('/export?uuid=x');
    expect(status).toBe(200);
    expect(bytes.equals(data)).toBe(true);
    // Every read after the first lands in the same buffer.
    expect(views.size).toBeLessThanOrEqual(2);
  });

  it('reads a chunked body, chunk sizes and data split across reads at odd places', async () => {
    const body = Buffer.concat([Buffer.from('5;ext=1\r\nhello\r\n'), Buffer.from('b\r\n, the world\r\n0\r\nx-trailer: 1\r\n\r\n')]);
    const pieces = [Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n')];
    for (let i = 0; i < body.length; i += 3) pieces.push(body.subarray(i, i + 3));
    const { bytes } = await readAll(await listen(rawServer(pieces, false)));
    expect(bytes.toString()).toBe('hello, the world');
  });

  it('reads a chunked body from Node’s server', async () => {
    const url = await listen(
      http.createServer((_req, res) => {
        res.writeHead(200);
        for (let i = 0; i < data.length; i += 100_000) res.write(data.subarray(i, i + 100_000));
        res.end();
      }),
    );
    expect((await readAll(url)).bytes.equals(data)).toBe(true);
  });

  it('reads a body that ends with the connection (no length, as XAPI sends exports)', async () => {
    const url = await listen(rawServer(['HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n', data.subarray(0, 1000), data.subarray(1000)]));
    expect((await readAll(url)).bytes.equals(data)).toBe(true);
  });

  it('a body cut before its Content-Length rejects with UND_ERR_SOCKET', async () => {
    const url = await listen(rawServer(['HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n', data.subarray(0, 5000)], false));
    await expect(readAll(url)).rejects.toMatchObject({ code: 'UND_ERR_SOCKET' });
  });

  it('returns a redirect as it is, with its Location', async () => {
    const url = await listen(
      http.createServer((_req, res) => {
        res.writeHead(302, { location: 'http://127.0.0.2:1/export', 'content-length': 0 });
        res.end();
      }),
    );
    const { statusCode, headers, body } = await httpGet(url, { idleTimeoutMs: 10_000 });
    expect([statusCode, headers.get('location')]).toEqual([302, 'http://127.0.0.2:1/export']);
    await body.pump(() => {});
  });

  it('a throw from the consumer ends the transfer and rejects with it', async () => {
    let closed = false;
    const url = await listen(
      http.createServer((_req, res) => {
        res.on('close', () => (closed = true));
        res.writeHead(200, { 'content-length': data.length * 10 });
        const more = () => {
          while (res.write(data.subarray(0, 1 << 20)));
        };
        res.on('drain', more);
        more();
      }),
    );
    const { body } = await httpGet(url, { idleTimeoutMs: 10_000 });
    await expect(
      body.pump(() => {
        throw Object.assign(new Error('disk full'), { code: 'ENOSPC' });
      }),
    ).rejects.toMatchObject({ code: 'ENOSPC' });
    await expect.poll(() => closed).toBe(true);
  });

  it('destroy while reading rejects the pump with the given error', async () => {
    const url = await listen(rawServer(['HTTP/1.1 200 OK\r\n\r\n', 'a'], false));
    const { body } = await httpGet(url, { idleTimeoutMs: 10_000 });
    const pumping = body.pump(() => body.destroy(Object.assign(new Error('stop'), { code: 'ABORTED' })));
    await expect(pumping).rejects.toMatchObject({ code: 'ABORTED' });
  });

  it('a silent server: ETIMEDOUT after the idle timeout', async () => {
    const url = await listen(net.createServer(() => {}));
    await expect(httpGet(url, { idleTimeoutMs: 300 })).rejects.toMatchObject({ code: 'ETIMEDOUT' });
  });

  it('TLS: trusts the given CA, and refuses an unknown one with its TLS code unless insecure', async () => {
    const tls = await makeTls(['127.0.0.1']);
    const url = await listen(
      https.createServer({ key: tls.key, cert: tls.cert }, (_req, res) => {
        res.writeHead(200, { 'content-length': data.length });
        res.end(data);
      }),
      'https',
    );
    expect((await readAll(url, { ca: tls.ca, idleTimeoutMs: 10_000 })).bytes.equals(data)).toBe(true);
    await expect(httpGet(url, { idleTimeoutMs: 10_000 })).rejects.toMatchObject({ code: expect.stringMatching(/CERT|SIGNATURE/) });
    expect((await readAll(url, { insecure: true, idleTimeoutMs: 10_000 })).bytes.equals(data)).toBe(true);
  });

  it('a refused connection rejects with ECONNREFUSED', async () => {
    const server = net.createServer();
    const url = await listen(server);
    await new Promise((r) => server.close(r));
    servers.splice(servers.indexOf(server), 1);
    await expect(httpGet(url, { idleTimeoutMs: 10_000 })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });
});
