import http from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { listen } from '../../runtime/gateway/server.js';
import type { ListeningGateway } from '../../runtime/gateway/server.js';
import { SECRET, TOKEN, alertmanagerPayload, authJson, testGateway } from '../../runtime/gateway/test-helpers.js';
import { signBody } from '../../runtime/gateway/webhook.js';

/**
 * The gateway over a real TCP socket (@hono/node-server), on the in-process bus: each row of
 * the issue's list, and for every rejected request, nothing queued or published.
 */
let gw: ReturnType<typeof testGateway>;
let server: ListeningGateway;

beforeAll(async () => {
  gw = testGateway({ bodyLimit: 64 * 1024 });
  server = await listen(gw.app, { host: '127.0.0.1', port: 0 });
});
afterAll(async () => server.close());

let sentBefore = 0;
let runsBefore = 0;
beforeEach(async () => {
  sentBefore = gw.bus.sent();
  runsBefore = (await gw.store.list(1000)).length;
});
async function nothingSent(): Promise<void> {
  expect(gw.bus.sent()).toBe(sentBefore);
  expect((await gw.store.list(1000)).length).toBe(runsBefore);
}

/** A raw HTTP/1.1 request: exact headers, a body in chunks, with or without Content-Length. */
function raw(method: string, path: string, opts: { headers?: Record<string, string>; chunks?: Buffer[]; chunked?: boolean } = {}): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const url = new URL(path, server.url);
    const chunks = opts.chunks ?? [];
    const length = chunks.reduce((n, c) => n + c.length, 0);
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.chunked === true) headers['Transfer-Encoding'] = 'chunked';
    else if (chunks.length > 0) headers['Content-Length'] = String(length);
    const req = http.request(url, { method, headers });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
      res.on('error', reject);
    });
    // The server may answer (413) and close before the whole body is written: that is the point.
    req.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE' && error.code !== 'ECONNRESET') reject(error);
    });
    (async () => {
      for (const c of chunks) {
        if (req.destroyed) return;
        if (!req.write(c)) await new Promise((r) => req.once('drain', r));
      }
      req.end();
    })().catch(() => undefined);
  });
}

const json = (v: unknown) => [Buffer.from(JSON.stringify(v))];

describe('the gateway over a real socket', () => {
  it('health answers without a token', async () => {
    expect((await raw('GET', '/healthz')).status).toBe(200);
    expect((await raw('GET', '/readyz')).status).toBe(200);
  });

  it('no token → 401 with WWW-Authenticate: Bearer', async () => {
    const r = await raw('POST', '/v1/runs', { headers: { 'Content-Type': 'application/json' }, chunks: json({}) });
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toMatch(/^Bearer/);
    await nothingSent();
  });

  it('wrong token → 403', async () => {
    const r = await raw('POST', '/v1/runs', { headers: authJson('wrong-token-0123456789abcdef'), chunks: json({}) });
    expect(r.status).toBe(403);
    expect(JSON.parse(r.body)).toMatchObject({ error: 'FORBIDDEN' });
    await nothingSent();
  });

  it('malformed JSON → 400 saying so', async () => {
    const r = await raw('POST', '/v1/runs', { headers: authJson(), chunks: [Buffer.from('{"vm_exports": [web1]}')] });
    expect(r.status).toBe(400);
    expect(JSON.parse(r.body).message).toMatch(/^malformed JSON in request body: /);
    await nothingSent();
  });

  it('wrong types → 400 listing each problem as path: message', async () => {
    const r = await raw('POST', '/v1/runs', { headers: authJson(), chunks: json({ vm_exports: 'web1', concurrency: 0, compress: 'lz4' }) });
    expect(r.status).toBe(400);
    const body = JSON.parse(r.body) as { issues: { path: string }[]; message: string };
    expect(body.issues.map((i) => i.path).sort()).toEqual(['compress', 'concurrency', 'vm_exports']);
    expect(body.message).toMatch(/vm_exports: Invalid input: expected array, received string/);
    await nothingSent();
  });

  it('huge body with Content-Length → 413', async () => {
    const big = Buffer.alloc(8 << 20, 0x20);
    const r = await raw('POST', '/v1/runs', { headers: authJson(), chunks: [big] });
    expect(r.status).toBe(413);
    expect(JSON.parse(r.body)).toMatchObject({ error: 'PAYLOAD_TOO_LARGE' });
    await nothingSent();
  });

  it('huge body without Content-Length (chunked) → 413', async () => {
    const chunks = Array.from({ length: 256 }, () => Buffer.alloc(32 * 1024, 0x20)); // 8 MiB
    const r = await raw('POST', '/v1/runs', { headers: authJson(), chunks, chunked: true });
    expect(r.status).toBe(413);
    await nothingSent();
  });

  describe('signed webhook', () => {
    const delivery = (over: Record<string, unknown> = {}) => Buffer.from(JSON.stringify({ id: `d-${Math.random()}`, timestamp: gw.clock.now().toISOString(), vm_exports: ['web1'], ...over }));

    it('bad signature → 401', async () => {
      const body = delivery();
      const r = await raw('POST', '/v1/hooks/generic', { headers: { ...authJson(), 'X-Hub-Signature-256': signBody('not-the-secret-0123456789', body) }, chunks: [body] });
      expect(r.status).toBe(401);
      expect(JSON.parse(r.body)).toMatchObject({ error: 'SIGNATURE_INVALID' });
      await nothingSent();
    });

    it('stale delivery → 400', async () => {
      const body = delivery({ timestamp: new Date(gw.clock.now().getTime() - 10 * 60_000).toISOString() });
      const r = await raw('POST', '/v1/hooks/generic', { headers: { ...authJson(), 'X-Hub-Signature-256': signBody(SECRET, body) }, chunks: [body] });
      expect(r.status).toBe(400);
      expect(JSON.parse(r.body)).toMatchObject({ error: 'STALE_DELIVERY' });
      await nothingSent();
    });

    it('replayed delivery → the first run, no second one', async () => {
      const body = delivery({ id: 'replayed-1' });
      const headers = { ...authJson(), 'X-Hub-Signature-256': signBody(SECRET, body) };
      const first = await raw('POST', '/v1/hooks/generic', { headers, chunks: [body] });
      expect(first.status).toBe(202);
      sentBefore = gw.bus.sent();
      runsBefore += 1;
      const replay = await raw('POST', '/v1/hooks/generic', { headers, chunks: [body] });
      expect(replay.status).toBe(200);
      expect(JSON.parse(replay.body)).toEqual({ runId: JSON.parse(first.body).runId, duplicate: true });
      await nothingSent();
    });
  });

  describe('the same trigger sent twice: one run', () => {
    it('Alertmanager, one after the other', async () => {
      const body = json(alertmanagerPayload(['web1'], { groupKey: 'twice' }));
      const a = await raw('POST', '/v1/hooks/alertmanager', { headers: authJson(), chunks: body });
      const b = await raw('POST', '/v1/hooks/alertmanager', { headers: authJson(), chunks: body });
      expect([a.status, b.status]).toEqual([202, 200]);
      expect(JSON.parse(b.body).runId).toBe(JSON.parse(a.body).runId);
      expect(gw.bus.sent() - sentBefore).toBe(1);
      expect((await gw.store.list(1000)).length - runsBefore).toBe(1);
    });

    it('Alertmanager, five deliveries at once', async () => {
      const body = json(alertmanagerPayload(['db1'], { groupKey: 'at-once' }));
      const answers = await Promise.all(Array.from({ length: 5 }, () => raw('POST', '/v1/hooks/alertmanager', { headers: authJson(), chunks: body })));
      expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 200, 200, 202]);
      expect(new Set(answers.map((a) => JSON.parse(a.body).runId)).size).toBe(1);
      expect(gw.bus.sent() - sentBefore).toBe(1);
    });

    it('a signed webhook, five deliveries at once', async () => {
      const body = Buffer.from(JSON.stringify({ id: 'at-once-1', timestamp: gw.clock.now().toISOString() }));
      const headers = { ...authJson(), 'X-Hub-Signature-256': signBody(SECRET, body) };
      const answers = await Promise.all(Array.from({ length: 5 }, () => raw('POST', '/v1/hooks/generic', { headers, chunks: [body] })));
      expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 200, 200, 202]);
      expect(gw.bus.sent() - sentBefore).toBe(1);
    });

    it('POST /v1/runs with one Idempotency-Key', async () => {
      const headers = { ...authJson(), 'Idempotency-Key': 'socket-once' };
      const answers = await Promise.all(Array.from({ length: 3 }, () => raw('POST', '/v1/runs', { headers, chunks: json({ vm_exports: ['web1'] }) })));
      expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 202]);
      expect(gw.bus.sent() - sentBefore).toBe(1);
    });
  });

  it('a run submitted, listed and shown over the socket', async () => {
    const res = await fetch(`${server.url}/v1/runs`, { method: 'POST', headers: authJson(), body: JSON.stringify({ vm_exports: ['web1'] }) });
    expect(res.status).toBe(202);
    const { runId } = (await res.json()) as { runId: string };
    expect(res.headers.get('location')).toBe(`/v1/runs/${runId}`);
    const list = (await (await fetch(`${server.url}/v1/runs`, { headers: { Authorization: `Bearer ${TOKEN}` } })).json()) as { runs: { runId: string }[] };
    expect(list.runs.map((r) => r.runId)).toContain(runId);
    const shown = await fetch(`${server.url}${res.headers.get('location')}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    expect(((await shown.json()) as { run: { runId: string } }).run.runId).toBe(runId);
  });

  it('the OpenAPI document is served', async () => {
    const res = await fetch(`${server.url}/v1/openapi.json`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/application\/json/);
    expect(((await res.json()) as { openapi: string }).openapi).toBe('3.1.0');
  });
});
