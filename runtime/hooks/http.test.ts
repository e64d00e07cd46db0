import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HookEvent } from './event.js';
import type { RunStartEvent } from './event.js';
import { POINT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, postHook, signBody } from './http.js';

const SECRET = 'hook-secret-0123456789';

/** What a receiver does, written the way the README tells operators to. */
function verified(req: IncomingMessage, body: Buffer): boolean {
  const header = req.headers[SIGNATURE_HEADER.toLowerCase()];
  if (typeof header !== 'string') return false;
  const expected = Buffer.from(`sha256=${createHmac('sha256', SECRET).update(body).digest('hex')}`);
  const given = Buffer.from(header);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

type Handler = (req: IncomingMessage, body: Buffer, res: ServerResponse) => void;
let server: Server;
let base: string;
const routes = new Map<string, Handler>();
const seen: { path: string; headers: IncomingMessage['headers']; body: Buffer; ok: boolean }[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ path: req.url ?? '', headers: req.headers, body, ok: verified(req, body) });
      if (!verified(req, body)) {
        res.writeHead(401).end('bad signature');
        return;
      }
      const route = routes.get(req.url ?? '');
      if (route === undefined) res.writeHead(404).end('no such hook');
      else route(req, body, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  routes.set('/empty', (_q, _b, res) => res.writeHead(204).end());
  routes.set('/ok-text', (_q, _b, res) => res.writeHead(200).end('ok'));
  routes.set('/continue', (_q, _b, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"decision":"continue"}'));
  routes.set('/abort', (_q, _b, res) => res.writeHead(200).end('{"decision":"abort","reason":"maintenance window"}'));
  routes.set('/conflict', (_q, _b, res) => res.writeHead(409).end('{"reason":"db busy"}'));
  routes.set('/conflict-text', (_q, _b, res) => res.writeHead(409).end('  replica lagging \n'));
  routes.set('/boom', (_q, _b, res) => res.writeHead(500).end('internal error'));
  routes.set('/redirect', (_q, _b, res) => res.writeHead(302, { location: '/continue' }).end());
  routes.set('/hang', () => {});
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

const event: RunStartEvent = { point: 'run-start', runId: '20261126-083000-7f3a', at: '2026-11-26T08:30:00.000Z', startedAt: '2026-11-26T08:30:00.000Z', backupDir: '/b' };
const now = new Date('2026-11-26T08:30:01.000Z');

describe('postHook', () => {
  it('POSTs the event as JSON, signed over the exact body, with timestamp and point headers', async () => {
    seen.length = 0;
    expect(await postHook(`${base}/empty`, event, { secret: SECRET, timeoutMs: 5_000, now })).toEqual({ kind: 'http', outcome: 'continue', reason: '' });
    const req = seen[0]!;
    expect(req.ok).toBe(true);
    expect(HookEvent.parse(JSON.parse(req.body.toString()))).toEqual(event);
    expect(req.headers['content-type']).toBe('application/json');
    expect(req.headers[SIGNATURE_HEADER.toLowerCase()]).toBe(signBody(SECRET, req.body.toString()));
    expect(req.headers[TIMESTAMP_HEADER.toLowerCase()]).toBe(String(now.getTime() / 1000));
    expect(req.headers[POINT_HEADER.toLowerCase()]).toBe('run-start');
  });

  const answers: [string, string, string][] = [
    ['/ok-text', 'continue', ''],
    ['/continue', 'continue', ''],
    ['/abort', 'abort', 'maintenance window'],
    ['/conflict', 'abort', 'db busy'],
    ['/conflict-text', 'abort', 'replica lagging'],
    ['/boom', 'failed', 'HOST answered 500: internal error'],
    ['/redirect', 'failed', 'HOST answered 302'],
    ['/missing', 'failed', 'HOST answered 404: no such hook'],
  ];
  it.each(answers)('%s → %s', async (route, outcome, reason) => {
    const r = await postHook(`${base}${route}`, event, { secret: SECRET, timeoutMs: 5_000, now });
    expect(r).toEqual({ kind: 'http', outcome, reason: reason.replace('HOST', base) });
  });

  it('a wrong secret is refused by the receiver: a failure, not an answer', async () => {
    const r = await postHook(`${base}/abort`, event, { secret: 'wrong', timeoutMs: 5_000, now });
    expect(r).toMatchObject({ outcome: 'failed', reason: expect.stringContaining('answered 401') });
  });

  it('no answer within the timeout is a timeout; no server is a failure', async () => {
    // /hang never answers: returning at all, with the timeout's reason, proves the timeout.
    expect(await postHook(`${base}/hang`, event, { secret: SECRET, timeoutMs: 300, now })).toMatchObject({ outcome: 'timeout', reason: expect.stringMatching(/did not answer within 0.3 s/) });
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    expect(await postHook(`http://127.0.0.1:${port}/x`, event, { secret: SECRET, timeoutMs: 5_000, now })).toMatchObject({ outcome: 'failed', reason: expect.stringMatching(/ECONNREFUSED/) });
  });

  it('never puts the URL’s user info or path in a message', async () => {
    const r = await postHook(`${base.replace('http://', 'http://user:tok3n@')}/boom?key=s3cret`, event, { secret: SECRET, timeoutMs: 5_000, now });
    expect(r.outcome).toBe('failed');
    expect(r.reason).not.toMatch(/tok3n|s3cret/);
  });
});
