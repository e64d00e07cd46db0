import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import type { Bus, Closer } from '../bus/bus.js';
import { PhaseProgress, runProgress } from '../events.js';
import type { Clock } from '../function.js';
import { ProgressBoard } from '../run/progress.js';
import type { RunStore } from '../run/store.js';

/**
 * The status page's server side: the files of the page (plain HTML, CSS and JS beside this
 * file in `page/`, no build step, nothing from elsewhere), the read-only session a browser
 * gets for a token, and what `GET /v1/progress` answers. README.md beside this file,
 * "Status page", says how an operator opens it.
 */

/** The page's files by path: served as they are. */
const PAGE_FILES: Readonly<Record<string, { type: string; file: string }>> = Object.freeze({
  '/': { type: 'text/html; charset=utf-8', file: 'index.html' },
  '/page/status.js': { type: 'text/javascript; charset=utf-8', file: 'status.js' },
  '/page/status.css': { type: 'text/css; charset=utf-8', file: 'status.css' },
});
export const PAGE_PATHS: readonly string[] = Object.keys(PAGE_FILES);
const read = new Map<string, { type: string; body: string }>();

/**
 * A file of the page, read from disk the first time it is asked for and kept: importing this
 * module (as every command that reads the gateway's settings does) costs no file reads.
 */
export function pageAsset(path: string): { type: string; body: string } {
  let found = read.get(path);
  if (found === undefined) {
    const f = PAGE_FILES[path];
    if (f === undefined) throw new Error(`the status page has no file ${path}`);
    found = { type: f.type, body: asset(f.file) };
    read.set(path, found);
  }
  return found;
}

/** The page's own paths (HTML, sign-in, files): outside the API and its document, with their own sign-in. */
export function isPagePath(path: string): boolean {
  return path === '/' || path === '/login' || path.startsWith('/page/');
}

/**
 * The page's files live beside this source only: the compiled commands (dist/runtime/gateway/
 * page.js) read them from the sources, which the package ships too, so there is one copy.
 */
function asset(name: string): string {
  const places = [`./page/${name}`, `../../../runtime/gateway/page/${name}`];
  for (const place of places) {
    try {
      return readFileSync(new URL(place, import.meta.url), 'utf8');
    } catch (error) {
      if ((error as { code?: string }).code !== 'ENOENT') throw error;
    }
  }
  throw new Error(`the status page's ${name} is missing: looked in ${places.map((p) => new URL(p, import.meta.url).pathname).join(', ')}`);
}

/**
 * The page's headers: its own files only, no inline script, no framing, no referrer (a
 * `?token=` URL never travels on).
 */
export const PAGE_HEADERS = {
  'Content-Security-Policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-store',
} as const;

/** Name of the page's session cookie. */
export const PAGE_COOKIE = 'vmbackup_page';
/** How long a page session lasts. */
export const PAGE_SESSION_MS = 12 * 3600_000;

/**
 * Read-only sessions of the status page. A browser cannot send a bearer header when it
 * opens a page, so a token is given once (`/?token=…` or the page's form) and exchanged for
 * a cookie: `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends
 * it), valid 12 h. The cookie holds no token: an expiry and its HMAC under a key drawn at
 * start, so a restart (which also reloads the tokens) ends every session. It opens only
 * reads (GET), never a route that starts or changes something.
 *
 * @example
 *   const sessions = new PageSessions();
 *   const value = sessions.issue(Date.now());   // '1764146400000.Jx3…'
 *   sessions.valid(value, Date.now())           // true
 */
export class PageSessions {
  constructor(
    private readonly key: Buffer = randomBytes(32),
    private readonly ttlMs = PAGE_SESSION_MS,
  ) {}

  issue(now: number): string {
    const expires = String(now + this.ttlMs);
    return `${expires}.${this.mac(expires)}`;
  }

  valid(value: string | undefined, now: number): boolean {
    if (value === undefined) return false;
    const m = /^(\d{1,16})\.([A-Za-z0-9_-]{43})$/.exec(value);
    if (m === null || Number(m[1]) <= now) return false;
    const given = Buffer.from(m[2]!, 'base64url');
    const wanted = Buffer.from(this.mac(m[1]!), 'base64url');
    return given.length === wanted.length && timingSafeEqual(given, wanted);
  }

  /** The `Set-Cookie` value; `Secure` when the page was reached over HTTPS. */
  cookie(value: string, secure: boolean): string {
    return `${PAGE_COOKIE}=${value}; Path=/; Max-Age=${Math.floor(this.ttlMs / 1000)}; HttpOnly; SameSite=Strict${secure ? '; Secure' : ''}`;
  }

  private mac(expires: string): string {
    return createHmac('sha256', this.key).update(`vmbackup-page:${expires}`).digest('base64url');
  }
}

/** The page a browser gets without a session: a form that asks for a token. */
export function loginPage(message: string): string {
  const esc = message.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>vmbackup</title><link rel="stylesheet" href="/page/status.css"></head>
<body><main class="login"><h1>vmbackup</h1><p id="login-message">${esc}</p>
<form method="post" action="/login"><label>Token <input type="password" name="token" autocomplete="current-password" required></label>
<button type="submit">Open</button></form>
<p class="hint">A token of the gateway's <code>gateway_tokens_file</code>. The browser keeps a read-only session for 12 hours.</p></main></body></html>
`;
}

/** One VM job under way, as `GET /v1/progress` shows it. */
export const ProgressVm = z.object({
  jobId: z.string(),
  label: z.string(),
  phase: z.string(),
  /** When the job started (its first phase). */
  since: z.string().optional(),
  bytes: z.number().optional(),
  total: z.number().optional().describe('What the phase expects to move, when it can tell (an export: the disks’ virtual size, an upper bound of an XVA).'),
  rateBps: z.number().optional().describe('Bytes a second over the last 5 s.'),
  etaS: z.number().optional().describe('Seconds left at that rate.'),
});
export const ProgressResponse = z
  .object({
    at: z.string(),
    runs: z.array(
      z.object({
        runId: z.string(),
        status: z.enum(['planning', 'running']),
        startedAt: z.string(),
        trigger: z.string().optional(),
        /** Jobs of the run, finished or not. */
        jobs: z.number().int(),
        /** Jobs not yet in a final state. */
        remaining: z.number().int(),
        /** Jobs under way, in plan order. */
        running: z.array(ProgressVm),
      }),
    ),
  })
  .meta({ description: 'Runs in progress and the jobs under way: phase, bytes, rate, time left.' });
export type ProgressResponse = z.infer<typeof ProgressResponse>;

/**
 * The runs in progress, from the run store (which job is in which phase: right also for a
 * gateway started in the middle of a run), with the bytes, rate and time left of the
 * progress signals the board heard.
 */
export async function progressView(store: RunStore, board: ProgressBoard, now: Date): Promise<ProgressResponse> {
  const headers = (await store.list(50)).filter((h) => h.status !== 'finished');
  const runs: ProgressResponse['runs'] = [];
  for (const h of headers) {
    const jobs = h.status === 'running' ? await store.allJobs(h.runId) : [];
    const running = jobs
      .filter((j) => j.status === 'running')
      .map((j) => {
        const live = board.row(h.runId, j.jobId, now.getTime());
        const same = live !== undefined && live.phase === j.phase;
        return {
          jobId: j.jobId,
          label: j.label,
          phase: j.phase,
          ...(j.startedAt !== undefined ? { since: j.startedAt } : {}),
          ...(same && live.bytes !== undefined ? { bytes: live.bytes } : {}),
          ...(same && live.total !== undefined ? { total: live.total } : {}),
          ...(same && live.rateBps !== undefined ? { rateBps: Math.round(live.rateBps) } : {}),
          ...(same && live.etaS !== undefined ? { etaS: live.etaS } : {}),
        };
      });
    runs.push({
      runId: h.runId,
      status: h.status as 'planning' | 'running',
      startedAt: h.startedAt,
      ...(h.trigger !== undefined ? { trigger: h.trigger } : {}),
      jobs: h.jobIds.length,
      remaining: h.remaining,
      running,
    });
  }
  return { at: now.toISOString(), runs };
}

/**
 * Feeds a board with the progress signals of every run (the gateway's `GET /v1/progress`).
 *
 * @example const board = new ProgressBoard(); const sub = await followProgress(bus, board, systemClock);
 */
export async function followProgress(bus: Bus, board: ProgressBoard, clock: Clock): Promise<Closer> {
  return bus.listen(runProgress(), (_subject, data) => {
    const p = PhaseProgress.safeParse(data);
    // The gateway's clock: a worker's may be off, and staleness is about what this process heard.
    if (p.success) board.signal(p.data, clock.now().getTime());
  });
}
