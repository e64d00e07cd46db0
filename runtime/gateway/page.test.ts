import { describe, expect, it } from 'vitest';
import type { PhaseProgress } from '../events.js';
import { progressSubject } from '../events.js';
import { ProgressBoard } from '../run/progress.js';
import type { JobState, RunHeader } from '../run/state.js';
import type { StatusSnapshot } from '../status/vm-status.js';
import { PAGE_COOKIE, PageSessions, followProgress } from './page.js';
import { TOKEN, authJson, testGateway } from './test-helpers.js';

const cookieOf = (res: Response): string => {
  const set = res.headers.get('Set-Cookie') ?? '';
  return set.split(';')[0]!;
};

describe('status page: sign-in and read-only session', () => {
  it('without a token or session the page asks for one (401) and the API stays closed', async () => {
    const { app } = testGateway();
    const page = await app.request('/');
    expect(page.status).toBe(401);
    expect(page.headers.get('Content-Type')).toMatch(/^text\/html/);
    const html = await page.text();
    expect(html).toContain('<form method="post" action="/login">');
    expect(html).not.toContain('/page/status.js');
    expect((await app.request('/v1/progress')).status).toBe(401);
    expect((await app.request('/v1/runs')).status).toBe(401);
    // The page's own files hold no data: they are served to anyone (the form needs the CSS).
    expect((await app.request('/page/status.css')).status).toBe(200);
    expect((await app.request('/page/status.js')).headers.get('Content-Type')).toMatch(/^text\/javascript/);
  });

  it('a wrong token gets 403 and no cookie', async () => {
    const { app } = testGateway();
    const res = await app.request('/?token=not-a-token-of-this-gateway');
    expect(res.status).toBe(403);
    expect(res.headers.get('Set-Cookie')).toBeNull();
    expect(await res.text()).toContain('That token is not accepted.');
    const form = await app.request('/login', { method: 'POST', body: new URLSearchParams({ token: 'x' }), headers: { 'Content-Type': 'application/x-www-form-urlencoded' } });
    expect(form.status).toBe(403);
    expect(form.headers.get('Set-Cookie')).toBeNull();
  });

  it('?token= is exchanged once for an HttpOnly SameSite=Strict cookie, and the page drops the token from its URL', async () => {
    const { app } = testGateway();
    const res = await app.request(`/?token=${TOKEN}`);
    expect(res.status).toBe(303);
    expect(res.headers.get('Location')).toBe('/');
    const set = res.headers.get('Set-Cookie')!;
    expect(set).toMatch(new RegExp(`^${PAGE_COOKIE}=\\d+\\.[A-Za-z0-9_-]{43}; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict$`));
    expect(set).not.toContain(TOKEN);
    const cookie = cookieOf(res);
    const page = await app.request('/', { headers: { Cookie: cookie } });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<script src="/page/status.js" defer></script>');
    expect(page.headers.get('Content-Security-Policy')).toContain("script-src 'self'");
    expect(page.headers.get('Referrer-Policy')).toBe('no-referrer');
    // The form gives the same session.
    const form = await app.request('/login', { method: 'POST', body: new URLSearchParams({ token: TOKEN }), headers: { 'Content-Type': 'application/x-www-form-urlencoded' } });
    expect(form.status).toBe(303);
    expect(cookieOf(form)).toMatch(new RegExp(`^${PAGE_COOKIE}=`));
  });

  it('the session reads (GET) and never writes: a POST with it is refused and starts nothing', async () => {
    const { app, bus } = testGateway();
    const cookie = cookieOf(await app.request(`/?token=${TOKEN}`));
    expect((await app.request('/v1/progress', { headers: { Cookie: cookie } })).status).toBe(200);
    expect((await app.request('/v1/runs', { headers: { Cookie: cookie } })).status).toBe(200);
    const post = await app.request('/v1/runs', { method: 'POST', headers: { Cookie: cookie, 'Content-Type': 'application/json' }, body: '{}' });
    expect(post.status).toBe(401);
    expect(bus.sent()).toBe(0);
  });

  it('a forged, altered or expired cookie is no session', async () => {
    const sessions = new PageSessions();
    const { app, clock } = testGateway({ pageSessions: sessions });
    const good = cookieOf(await app.request(`/?token=${TOKEN}`));
    const value = good.slice(PAGE_COOKIE.length + 1);
    const [expires, mac] = value.split('.') as [string, string];
    const later = `${PAGE_COOKIE}=${Number(expires) + 3600_000}.${mac}`;
    expect((await app.request('/v1/progress', { headers: { Cookie: later } })).status).toBe(401);
    const other = `${PAGE_COOKIE}=${new PageSessions().issue(clock.t)}`;
    expect((await app.request('/v1/progress', { headers: { Cookie: other } })).status).toBe(401);
    expect((await app.request('/', { headers: { Cookie: good } })).status).toBe(200);
    clock.advance(12 * 3600_000 + 1);
    expect((await app.request('/', { headers: { Cookie: good } })).status).toBe(401);
  });

  it('a gateway without tokens (--no-auth, loopback) serves the page at once', async () => {
    const { app } = testGateway({ tokens: [], allowNoAuth: true });
    const res = await app.request('/');
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('/page/status.js');
  });
});

describe('GET /v1/progress', () => {
  const header = (runId: string, status: RunHeader['status'], jobIds: string[]): RunHeader => ({
    runId,
    status,
    startedAt: '2026-11-26T08:30:00.000Z',
    concurrency: 2,
    vmRetries: 0,
    jobIds,
    pending: [],
    active: 1,
    remaining: jobIds.length,
    warnings: [],
    excludes: [],
    cleaned: [],
    trigger: 'gateway',
  });
  const job = (jobId: string, label: string, phase: string, status: JobState['status']): JobState => ({
    jobId,
    kind: 'vm',
    category: 'vm-export',
    label,
    pipeline: ['snapshot', 'export', 'meta', 'prune'],
    phase,
    status,
    try: 1,
    input: {},
    files: [],
    bytes: 0,
    warnings: [],
    startedAt: '2026-11-26T08:30:01.000Z',
    phaseMs: {},
  });

  it('lists the jobs under way of the runs in progress, with the bytes, rate and time left their signals gave', async () => {
    const board = new ProgressBoard();
    const { app, store, bus, clock } = testGateway({ progress: board });
    const sub = await followProgress(bus, board, clock);
    await store.create(header('r1', 'running', ['vm.a', 'vm.b', 'vm.c']));
    await store.commit('r1', header('r1', 'running', ['vm.a', 'vm.b', 'vm.c']), 1, [job('vm.a', 'web1', 'export', 'running'), job('vm.b', 'db1', 'snapshot', 'running'), job('vm.c', 'app1', 'prune', 'success')]);
    await store.create({ ...header('r0', 'finished', ['vm.a']), startedAt: '2026-11-25T08:30:00.000Z' });
    const signal = (ms: number, bytes: number): PhaseProgress => ({ runId: 'r1', jobId: 'vm.a', fn: 'export', try: 1, label: 'web1', bytes, total: 64 << 20, at: new Date(clock.t + ms).toISOString() });
    bus.notify(progressSubject('r1', 'vm.a'), signal(0, 0));
    bus.notify(progressSubject('r1', 'vm.a'), signal(2_000, 8 << 20));
    // A signal of another phase than the store's says nothing about this one.
    bus.notify(progressSubject('r1', 'vm.b'), { ...signal(2_000, 1 << 20), jobId: 'vm.b', fn: 'export' });
    await new Promise((r) => setTimeout(r, 20));
    const res = await app.request('/v1/progress', { headers: authJson() });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { runs: { runId: string; running: unknown[]; jobs: number; remaining: number }[] };
    expect(body.runs).toEqual([
      {
        runId: 'r1',
        status: 'running',
        startedAt: '2026-11-26T08:30:00.000Z',
        trigger: 'gateway',
        jobs: 3,
        remaining: 3,
        running: [
          { jobId: 'vm.a', label: 'web1', phase: 'export', since: '2026-11-26T08:30:01.000Z', bytes: 8 << 20, total: 64 << 20, rateBps: 4 << 20, etaS: 14 },
          { jobId: 'vm.b', label: 'db1', phase: 'snapshot', since: '2026-11-26T08:30:01.000Z' },
        ],
      },
    ]);
    await sub.close();
  });

  it('answers 503 while NATS is down', async () => {
    const { app, bus } = testGateway();
    (bus as unknown as { connected(): boolean }).connected = () => false;
    const res = await app.request('/v1/progress', { headers: authJson() });
    expect(res.status).toBe(503);
  });
});

describe('GET /v1/status', () => {
  it('needs a token or the page session', async () => {
    const { app } = testGateway();
    expect((await app.request('/v1/status')).status).toBe(401);
    const cookie = cookieOf(await app.request(`/?token=${TOKEN}`));
    expect((await app.request('/v1/status', { headers: { Cookie: cookie } })).status).toBe(200);
  });

  it('answers 304 to a page whose copy is current (ETag), and the body again once something changed', async () => {
    const { app, store } = testGateway();
    const first = await app.request('/v1/status', { headers: authJson() });
    const tag = first.headers.get('ETag');
    expect(tag).toMatch(/^"[A-Za-z0-9_-]{43}"$/);
    const again = await app.request('/v1/status', { headers: { ...authJson(), 'If-None-Match': tag! } });
    expect(again.status).toBe(304);
    expect(await again.text()).toBe('');
    await store.create({ runId: 'r2', status: 'planning', startedAt: '2026-11-26T09:00:00.000Z', concurrency: 1, vmRetries: 0, jobIds: [], pending: [], active: 0, remaining: 0, warnings: [], excludes: [], cleaned: [] });
    const changed = await app.request('/v1/status', { headers: { ...authJson(), 'If-None-Match': tag! } });
    expect(changed.status).toBe(200);
    expect(((await changed.json()) as StatusSnapshot).runs.map((r) => r.runId)).toEqual(['r2']);
  });

  it('says when backup_dir cannot be read, and when NATS is down, instead of failing', async () => {
    const { app, bus } = testGateway({ backupDir: '/nonexistent/vmbackup-exports' });
    const up = (await (await app.request('/v1/status', { headers: authJson() })).json()) as StatusSnapshot;
    expect(up.backupDirError).toMatch(/backup_dir \/nonexistent\/vmbackup-exports cannot be read \(ENOENT\): is the share mounted\?/);
    expect(up.runStore).toEqual({ up: true });
    (bus as unknown as { connected(): boolean }).connected = () => false;
    const res = await app.request('/v1/status', { headers: authJson() });
    expect(res.status).toBe(200);
    const down = (await res.json()) as StatusSnapshot;
    expect(down.runStore).toMatchObject({ up: false, error: expect.stringContaining('NATS is not reachable') });
    expect(down.runs).toEqual([]);
  });
});
