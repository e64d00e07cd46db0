import { createHash, randomBytes } from 'node:crypto';
import { zValidator } from '@hono/zod-validator';
import { Hono } from 'hono';
import type { Context, Next } from 'hono';
import type { BlankEnv } from 'hono/types';
import { bodyLimit } from 'hono/body-limit';
import type { Logger } from 'pino';
import { z } from 'zod';
import { functions } from '../../functions/index.js';
import { JobBase } from '../../functions/job.js';
import { SELECTION_CHECK_SUBJECT, SelectionCheckReply } from '../../functions/plan/check.js';
import { selectOptions } from '../../functions/plan/plan.js';
import type { RunOptions } from '../../functions/plan/plan.js';
import { selectVms } from '../../functions/plan/select.js';
import type { Bus } from '../bus/bus.js';
import { ConfigError, RequestConflictError } from '../errors.js';
import { jobSubject } from '../events.js';
import type { Clock, FunctionDef } from '../function.js';
import { describeUnconsumed, runFunctions, unconsumedWork } from '../run/consumers.js';
import { formatBytes } from '../units.js';
import { planRetry } from '../run/retry.js';
import { newRunId, startRun } from '../run/start.js';
import { JobState, RunHeader } from '../run/state.js';
import type { RunStore } from '../run/store.js';
import { RunSummary, summarize } from '../run/summary.js';
import { RunOutcome, listOutcomes, runOutcome } from '../run/outcome.js';
import { formatStamp } from '../storage/naming.js';
import { METRICS_CONTENT_TYPE, statusMetrics } from '../status/metrics.js';
import { DEFAULT_MAX_AGE_HOURS } from '../config/schema.js';
import { AlertmanagerPayload, deliveryKey, vmsToBackUp } from './alertmanager.js';
import { checkBearer, refusal, tokenDigests } from './auth.js';
import { BackupsResponse, listBackups } from './backups.js';
import { HttpError, badInput, errorResponse, natsUnavailable, zodIssues } from './errors.js';
import { getCookie } from 'hono/cookie';
import { ProgressBoard } from '../run/progress.js';
import { StatusReader, StatusSnapshot } from '../status/vm-status.js';
import { PAGE_COOKIE, PAGE_PATHS, PAGE_HEADERS, PageSessions, ProgressResponse, loginPage, pageAsset, progressView } from './page.js';
import { buildOpenApi } from './openapi.js';
import type { RouteDoc } from './openapi.js';
import { RunRequest, exactNameEntry, runOptionsFrom } from './run-request.js';
import type { TriggerLog } from './trigger-log.js';
import { DEFAULT_FRESHNESS, GenericHook, SIGNATURE_HEADER, checkFreshness, genericDeliveryKey, verifySignature } from './webhook.js';
import type { Freshness } from './webhook.js';

/**
 * What the gateway needs, as interfaces: the app never sees NATS, so it runs the same on the
 * in-process bus (tests) and on JetStream (`vmbackup gateway`).
 */
export interface GatewayDeps {
  bus: Bus;
  store: RunStore;
  /** Where repeated webhook deliveries are recognised. */
  triggers: TriggerLog;
  /** The gateway's backup_dir, listed by GET /v1/backups. */
  backupDir: string;
  /** Accepted bearer tokens. Empty only together with `allowNoAuth`. */
  tokens: readonly string[];
  /** Serve without any token (tests, a loopback-only gateway). Says so in the log. */
  allowNoAuth?: boolean;
  /** HMAC secret of POST /v1/hooks/generic; without it that route answers 404. */
  webhookSecret?: string;
  /** Largest request body, in bytes (gateway_body_limit). */
  bodyLimit: number;
  /** The Alertmanager label naming the VM to back up (alertmanager_label). */
  alertmanagerLabel: string;
  /** Run options from the gateway's settings (runOptions(settings)); requests override them. */
  runDefaults: RunOptions;
  clock: Clock;
  log: Logger;
  /**
   * True when the bus can take work (NATS connected, JetStream answering). The routes that
   * need NATS also refuse at once (503) while `bus.connected()` says the connection is down.
   */
  ready(): Promise<boolean>;
  /** Dedup windows of webhook deliveries, in ms. */
  windows?: { alertmanagerMs?: number; genericMs?: number; idempotencyMs?: number };
  /** Accepted age of generic deliveries. */
  freshness?: Freshness;
  /**
   * How long a request waits for a worker serving `plan` to check its selection against the
   * pool (functions/plan/check.ts), in ms. Default 10 s. No answer: the run is started and
   * its plan decides.
   */
  selectionCheckMs?: number;
  /** Shown in the OpenAPI document. */
  version?: string;
  /**
   * The progress signals heard (bytes, rate, time left per job), for `GET /v1/progress`:
   * fed by `followProgress(bus, board)` (page.ts). Without it the page shows phases only.
   */
  progress?: ProgressBoard;
  /** Sessions of the status page (default: a new key, so a restart ends them). */
  pageSessions?: PageSessions;
  /** Tokens accepted by GET /metrics besides `tokens` (metrics_tokens_file). */
  metricsTokens?: readonly string[];
  /** max_age_hours, exported as vmbackup_max_age_seconds for the alert rules. Default 26. */
  maxAgeHours?: number;
}

/**
 * Default dedup windows: an alert keeps its run for a day; a signed delivery id for an hour
 * (more than the 5 + 5 minutes its timestamp may be off, so a replay is either stale or
 * recognised); an Idempotency-Key of a function invocation for a day.
 */
export const DEFAULT_WINDOWS = { alertmanagerMs: 24 * 3600_000, genericMs: 3600_000, idempotencyMs: 24 * 3600_000 } as const;

const RunId = JobBase.shape.runId;
const IdempotencyKey = z.string().regex(/^[\x21-\x7e]{1,200}$/, 'Idempotency-Key: 1 to 200 visible ASCII characters');

/**
 * What no worker consumes when a run is accepted: the run waits (and starts when a worker
 * comes), so the answer says so instead of leaving it to wait in silence.
 */
const NoWorker = {
  warning: z.string().optional().describe('Set when no worker consumes some of the work this run needs: the run is queued and starts when a worker serving it connects.'),
  unconsumed: z.array(z.string()).optional().describe('The functions (and `coordinator`) no worker consumes now.'),
};
const RunAccepted = z.object({
  runId: z.string(),
  /** True when this request repeats an earlier one: no new run was started. */
  duplicate: z.boolean().optional(),
  ...NoWorker,
});
/** Once the run is finished: how it ended, as `vmbackup status` shows it (runtime/run/outcome.ts). */
const Outcome = {
  outcome: RunOutcome.shape.outcome.optional().describe('Once finished: success, warning (exit 0), error (a backup failed: exit 1), fatal (the run could not start: exit 2) — as `vmbackup status` shows it.'),
  exitCode: RunOutcome.shape.exitCode.optional().describe('Once finished: the exit code `vmbackup` (or `vmbackup run`) gives for this run.'),
};
const RunListItem = RunHeader.pick({ runId: true, status: true, startedAt: true, finishedAt: true, pool: true, backupDir: true, trigger: true, remaining: true, retries: true, fatal: true }).extend({
  ...Outcome,
  /** Number of jobs of the run. */
  jobs: z.number().int(),
});
const RunList = z.object({ runs: z.array(RunListItem) });
const JobView = JobState.omit({ input: true, failedInput: true });
const RunDetail = z.object({
  run: RunHeader,
  ...Outcome,
  /** Each job's state (without its messages), in plan order. */
  jobs: z.array(JobView),
  /** Present once the run is finished. */
  summary: RunSummary.optional(),
});
const RetryAccepted = z.object({
  runId: z.string(),
  /** How many times this run was retried, this time included. */
  retries: z.number().int(),
  jobs: z.array(z.object({ jobId: z.string(), label: z.string(), phase: z.string(), from: z.enum(['failed-phase', 'start']) })),
});
const InvokeAccepted = z.object({
  runId: z.string(),
  jobId: z.string(),
  function: z.string(),
  subject: z.string(),
  /** The message's dedup id on the bus. */
  dedupId: z.string(),
  /** A repeated request (same Idempotency-Key): nothing queued. */
  duplicate: z.boolean().optional(),
});
const HookAnswer = z.object({
  /** The run started by this delivery (or by the earlier one it repeats); null when there was nothing to do. */
  runId: z.string().nullable(),
  duplicate: z.boolean().optional(),
  vms: z.array(z.string()).optional(),
  message: z.string().optional(),
  ...NoWorker,
});
const Health = z.object({
  status: z.string(),
  /** Not ready: the functions (and `coordinator`) no worker consumes. */
  unconsumed: z.array(z.string()).optional(),
});
const RunsQuery = z.object({ limit: z.coerce.number().int().min(1).max(1000).optional().describe('At most this many runs, newest first (default 50).') });
const BackupsQuery = z.object({ vm: z.string().min(1).max(1000).optional().describe('Only this VM: its folder name or the VM name recorded in its manifests.') });

/**
 * The body schema `POST /v1/functions/{name}` validates with: the function's own input
 * schema, where `runId` and `jobId` may be left out (an ad-hoc invocation gets
 * `adhoc-<stamp>-<hex>` and `adhoc`).
 */
export function invokeSchema(fn: FunctionDef): z.ZodType {
  const schema = fn.subject.schema;
  if (!(schema instanceof z.ZodObject)) return schema;
  return schema.extend({ runId: RunId.optional(), jobId: JobBase.shape.jobId.optional() });
}

type Env = BlankEnv;
type AnyHandler = (c: Context<Env>, next: Next) => unknown;

/** What a validator middleware of the route checked. */
function valid<T>(c: Context<Env>, target: 'json' | 'query'): T {
  return (c.req.valid as unknown as (t: string) => T)(target);
}

/**
 * The HTTP gateway: a Hono app over the bus and the run store. See README.md beside this
 * file for the API; the OpenAPI document is served at GET /v1/openapi.json.
 *
 * @example
 *   const app = createGateway({ bus, store, triggers: new MemoryTriggerLog(systemClock), backupDir,
 *     tokens, bodyLimit: 1 << 20, alertmanagerLabel: 'vm', runDefaults: runOptions(settings),
 *     clock: systemClock, log, ready: async () => true });
 *   serve({ fetch: app.fetch, port: 8080 });
 */
export function createGateway(deps: GatewayDeps): Hono<Env> {
  if (deps.tokens.length === 0 && deps.allowNoAuth !== true) {
    throw new ConfigError('the gateway has no bearer token: list at least one in gateway_tokens_file (one per line)', { key: 'gateway_tokens_file' });
  }
  const log = deps.log.child({ component: 'gateway' });
  if (deps.tokens.length === 0) log.warn('gateway without authentication: every caller may start runs');
  const digests = tokenDigests(deps.tokens);
  const windows = { ...DEFAULT_WINDOWS, ...deps.windows };
  const freshness = deps.freshness ?? DEFAULT_FRESHNESS;
  const docs: RouteDoc[] = [];
  const app = new Hono<Env>();

  // --- cross-cutting: access log, errors, auth, body limit ---------------------------------

  app.use('*', async (c, next) => {
    const started = Date.now();
    await next();
    const quiet = c.req.path === '/healthz' || c.req.path === '/readyz' || c.req.path === '/metrics';
    log[quiet ? 'debug' : 'info']({ method: c.req.method, path: c.req.path, status: c.res.status, ms: Date.now() - started }, `${c.req.method} ${c.req.path} ${c.res.status}`);
  });

  app.onError((error, c) => {
    const r = errorResponse(error);
    if (r.bug) log.error({ err: error, method: c.req.method, path: c.req.path }, `gateway: ${(error as Error).message}`);
    else if (r.status === 503) log.warn({ err: error, method: c.req.method, path: c.req.path }, `${c.req.method} ${c.req.path}: ${r.body.message}`);
    return c.json(r.body, r.status, r.headers);
  });
  app.notFound((c) => c.json({ error: 'NOT_FOUND', message: `no route ${c.req.method} ${c.req.path} (see GET /v1/openapi.json)` }, 404));

  const publicPaths = new Set(['/v1/openapi.json']);
  const sessions = deps.pageSessions ?? new PageSessions();
  const board = deps.progress ?? new ProgressBoard();
  // Real time, not deps.clock: whether a folder may be cached depends on its mtime, which is real.
  const status = new StatusReader({ backupDir: deps.backupDir, store: deps.store, connected: () => deps.bus.connected?.() !== false });
  /** The status page's session: reads only (runtime/gateway/page.ts). */
  const pageSession = (c: Context<Env>): boolean => sessions.valid(getCookie(c, PAGE_COOKIE), deps.clock.now().getTime());
  app.use('/v1/*', async (c, next) => {
    if (digests.length === 0 || publicPaths.has(c.req.path)) return next();
    if (c.req.header('Authorization') === undefined && (c.req.method === 'GET' || c.req.method === 'HEAD') && pageSession(c)) return next();
    const check = checkBearer(c.req.header('Authorization'), digests);
    if (!check.ok) throw refusal(check);
    return next();
  });
  app.use(
    '/v1/*',
    bodyLimit({
      maxSize: deps.bodyLimit,
      onError: () => {
        throw new HttpError(413, 'PAYLOAD_TOO_LARGE', `request body larger than ${formatBytes(deps.bodyLimit)} (gateway_body_limit)`);
      },
    }),
  );

  /** A JSON body, or none: a body in another type is refused rather than ignored. */
  const jsonBody: AnyHandler = async (c, next) => {
    const raw = new Uint8Array(await c.req.arrayBuffer());
    const type = (c.req.header('Content-Type') ?? '').split(';')[0]!.trim().toLowerCase();
    const isJson = /^application\/([\w.-]+\+)?json$/.test(type);
    if (raw.length > 0 && !isJson) {
      throw new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', `the body must be JSON, sent with Content-Type: application/json (got ${type === '' ? 'no Content-Type' : type})`);
    }
    if (isJson) {
      try {
        JSON.parse(new TextDecoder().decode(raw));
      } catch (error) {
        throw new HttpError(400, 'BAD_REQUEST', `malformed JSON in request body: ${(error as Error).message}`);
      }
    }
    return next();
  };
  /** Validates the body or query with `schema`; bad input is a 400 listing each problem. */
  const validate = (target: 'json' | 'query', schema: z.ZodType): AnyHandler =>
    zValidator(target, schema, (result) => {
      if (!result.success) throw target === 'json' ? badInput(zodIssues(result.error.issues)) : badInput(zodIssues(result.error.issues, '(query)'), 'invalid query');
    }) as unknown as AnyHandler;

  /**
   * Refuses at once while the bus knows NATS is down, rather than after nats.js's request
   * timeout; and nothing is sent then. An outage it does not know of yet ends the same way,
   * later: errorResponse maps the timeout to the same 503.
   */
  const natsUp: AnyHandler = (_c, next) => {
    if (deps.bus.connected?.() === false) throw natsUnavailable('the connection is down (the gateway is reconnecting)');
    return next();
  };

  /**
   * Registers a route and its description together. A route that needs NATS (`doc.nats`)
   * gets the natsUp check just before its handler: after authentication and validation, so
   * bad input is still a 400 while NATS is down.
   */
  function route(doc: RouteDoc, ...handlers: AnyHandler[]): void {
    docs.push(doc);
    const honoPath = doc.path.replace(/\{(\w+)\}/g, ':$1');
    const chain = doc.nats === true ? [...handlers.slice(0, -1), natsUp, handlers[handlers.length - 1]!] : handlers;
    (app.on as unknown as (method: string, path: string, ...h: AnyHandler[]) => void)(doc.method.toUpperCase(), honoPath, ...chain);
  }

  const runIdParam = (c: Context<Env>): string => {
    const id = c.req.param('id') ?? '';
    const ok = RunId.safeParse(id);
    if (!ok.success) throw badInput([{ path: 'id', message: ok.error.issues[0]?.message ?? 'invalid run id' }], 'invalid run id');
    return id;
  };
  /** The run id of the path checked before anything else (a bad id is a 400 even with NATS down). */
  const checkRunId: AnyHandler = (c, next) => {
    runIdParam(c);
    return next();
  };
  /**
   * Gives the claim of an Idempotency-Key back after a failure, so that the retry may queue
   * the work. With NATS known to be down the release cannot work either: not waiting for
   * its timeout then (the key stays claimed until its window ends; said in the log).
   */
  const releaseClaim = async (key: string, runId: string): Promise<void> => {
    const kept = `the key stays claimed for ${windows.idempotencyMs / 3_600_000} h, a retry with it queues nothing`;
    if (deps.bus.connected?.() === false) {
      log.warn(`could not release the claim ${key}: NATS is not reachable; ${kept}`);
      return;
    }
    await deps.triggers.release(key, runId).catch((e: unknown) => log.warn({ err: e }, `could not release the claim ${key}: ${(e as Error).message}; ${kept}`));
  };
  const idempotencyKey = (c: Context<Env>): string | undefined => {
    const key = c.req.header('Idempotency-Key');
    if (key === undefined) return undefined;
    const ok = IdempotencyKey.safeParse(key);
    if (!ok.success) throw badInput([{ path: 'Idempotency-Key', message: ok.error.issues[0]!.message }], 'invalid header');
    return key;
  };

  /**
   * `{warning, unconsumed}` when no worker consumes some work the run needs (nothing when
   * all is consumed, or the bus cannot tell). The run is accepted all the same: it waits in
   * the queue and starts when a worker comes, as a cron run queued at night should.
   */
  const noWorker = async (runId: string, options: RunOptions): Promise<{ warning?: string; unconsumed?: string[] }> => {
    try {
      const missing = await unconsumedWork(deps.bus, runFunctions(options));
      if (missing === undefined || missing.length === 0) return {};
      const warning = `${describeUnconsumed(missing)}: run ${runId} is queued and starts when one connects`;
      log.warn({ runId }, warning);
      return { warning, unconsumed: missing.map((m) => m.name) };
    } catch (error) {
      log.debug({ err: error, runId }, `could not tell whether workers consume run ${runId}'s work: ${(error as Error).message}`);
      return {};
    }
  };

  /**
   * Refuses (422 SELECTION, nothing started) a run the plan would refuse: an invalid regex at
   * once; an entry of the request that matches no VM once a worker serving `plan` has
   * checked it against the pool (SELECTION_CHECK_SUBJECT). Without an answer within
   * selectionCheckMs the run is started and its plan decides (it fails naming the entry).
   * `place` names an entry as the caller wrote it: `vm_exports.1`, the alert's label.
   */
  async function checkSelection(options: RunOptions, place: (issue: { entry: string; list: string }) => string): Promise<void> {
    if ((options.selection?.requested.length ?? 0) === 0) return;
    const refuse = (errors: readonly { entry: string; list: string; message: string }[]): never => {
      const issues = errors.map((e) => ({ path: place(e), message: e.message }));
      throw new HttpError(422, 'SELECTION', `nothing started: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
    };
    // What needs no pool: an invalid entry or regex (every entry of the request matches no VM of an empty pool).
    const offline = selectVms([], selectOptions(options)).errors.filter((e) => e.code !== 'no-match');
    if (offline.length > 0) refuse(offline);
    const timeoutMs = deps.selectionCheckMs ?? 10_000;
    const replies = await deps.bus.request(SELECTION_CHECK_SUBJECT, options, { timeoutMs, maxReplies: 1 });
    const reply = replies.length > 0 ? SelectionCheckReply.safeParse(replies[0]) : undefined;
    const answer = reply?.success === true ? reply.data : undefined;
    if (answer === undefined || 'failed' in answer) {
      const why = reply === undefined ? `no worker serving plan answered within ${timeoutMs / 1000} s` : answer === undefined ? 'a malformed answer' : answer.failed;
      log.warn(`selection not checked against the pool (${why}): the run's plan checks it`);
      return;
    }
    if (answer.errors.length > 0) refuse(answer.errors);
  }
  /** `vm_exports.1`: where an entry is in the request's list. */
  const bodyPlace = (options: RunOptions) => (issue: { entry: string; list: string }): string => {
    const list = issue.list === 'excludes' ? options.excludes : issue.list === 'vdi_exports' ? options.vdiExports : issue.list === 'delta_exports' ? (options.deltaExports ?? []) : options.vmExports;
    const at = list.findIndex((e) => e.trim() === issue.entry.trim());
    return at < 0 ? issue.list : `${issue.list}.${at}`;
  };

  /**
   * Starts a run for a webhook delivery unless the delivery was seen within the window.
   *
   * The key is claimed first, for a new run id. When NATS goes away after the claim (the
   * run not recorded, or recorded without its plan queued), the claim is kept with its run
   * id, and the sender's repeat starts that run: startRun records it once, or queues its
   * plan again (the plan's id dedups a copy already queued). Releasing the claim instead
   * could fail the same way, and would leave a recorded run that never starts.
   */
  async function triggerRun(c: Context<Env>, key: string, windowMs: number, options: RunOptions, trigger: string, vms?: string[]): Promise<Response> {
    const now = deps.clock.now();
    const fresh = newRunId(now);
    const claim = await deps.triggers.claim(key, fresh, windowMs);
    const runId = claim === 'new' ? fresh : claim.runId;
    const duplicate = () => {
      log.info({ runId, trigger }, `${trigger}: repeated delivery, run ${runId} already started`);
      return c.json({ runId, duplicate: true, ...(vms !== undefined ? { vms } : {}) }, 200, { Location: `/v1/runs/${runId}` });
    };
    if (claim !== 'new') {
      const existing = await deps.store.header(runId);
      if (existing !== undefined && existing.header.status !== 'planning') return duplicate();
      if (existing === undefined) log.warn({ runId, trigger }, `${trigger}: delivery ${key} was claimed for run ${runId}, which was never recorded: starting it now`);
    }
    let created: boolean;
    try {
      created = await startRun(deps.store, deps.bus, { runId, options, startedAt: now, trigger });
    } catch (error) {
      // A repeated delivery whose payload changed meanwhile (e.g. more alerts in the group):
      // it is still the one trigger, and its run stands.
      if (error instanceof RequestConflictError && claim !== 'new') return duplicate();
      throw error;
    }
    if (claim !== 'new' && !created) return duplicate();
    log.info({ runId, trigger }, `${trigger}: run ${runId} started${vms !== undefined ? ` for ${vms.join(', ')}` : ''}`);
    return c.json({ runId, ...(vms !== undefined ? { vms } : {}), ...(await noWorker(runId, options)) }, 202, { Location: `/v1/runs/${runId}` });
  }

  // --- the status page (HTML; not part of the API document) ---------------------------------

  for (const path of PAGE_PATHS) {
    if (path === '/') continue;
    app.get(path, (c) => {
      const file = pageAsset(path);
      return c.body(file.body, 200, { 'Content-Type': file.type, 'X-Content-Type-Options': 'nosniff', 'Cache-Control': 'no-cache' });
    });
  }
  const htmlAnswer = (c: Context<Env>, body: string, status: 200 | 401 | 403, extra: Record<string, string> = {}) =>
    c.body(body, status, { 'Content-Type': 'text/html; charset=utf-8', ...PAGE_HEADERS, ...extra });
  /** A token given once (query or form): a session cookie, then the page without the token in its URL. */
  const openSession = (c: Context<Env>, token: string): Response => {
    const check = checkBearer(`Bearer ${token}`, digests);
    if (!check.ok) {
      log.warn('status page: a token that is not accepted');
      return htmlAnswer(c, loginPage('That token is not accepted.'), 403);
    }
    const secure = new URL(c.req.url).protocol === 'https:' || c.req.header('X-Forwarded-Proto') === 'https';
    return c.body(null, 303, { Location: '/', 'Set-Cookie': sessions.cookie(sessions.issue(deps.clock.now().getTime()), secure), ...PAGE_HEADERS });
  };
  app.get('/', (c) => {
    if (digests.length === 0) return htmlAnswer(c, pageAsset('/').body, 200);
    const token = c.req.query('token');
    if (token !== undefined) return openSession(c, token);
    if (pageSession(c)) return htmlAnswer(c, pageAsset('/').body, 200);
    return htmlAnswer(c, loginPage('A token is needed to see the backups.'), 401);
  });
  app.post('/login', async (c) => {
    if (Number(c.req.header('Content-Length') ?? 0) > 4096) return htmlAnswer(c, loginPage('That form is too large.'), 403);
    const form = await c.req.parseBody().catch(() => ({}) as Record<string, unknown>);
    const token = typeof form.token === 'string' ? form.token.trim() : '';
    if (digests.length === 0) return c.body(null, 303, { Location: '/' });
    return openSession(c, token);
  });

  route(
    {
      method: 'get',
      path: '/v1/progress',
      tag: 'runs',
      nats: true,
      summary: 'Runs in progress: each job under way with its phase, bytes, rate and time left',
      description:
        'The phases come from the run store; bytes, rate (over the last 5 s) and time left from the progress signals the workers send about once a second while a phase moves data (`vmbackup.progress.<runId>.<jobId>`, core NATS). The status page polls it.',
      responses: { 200: { description: 'Runs in progress', schema: ProgressResponse } },
    },
    async (c) => c.json(await progressView(deps.store, board, deps.clock.now())),
  );

  route(
    {
      method: 'get',
      path: '/v1/status',
      tag: 'backups',
      summary: 'Each VM at a glance: its last good backup, points kept, last verification and failure; the recent runs',
      description:
        'What the status page shows (runtime/status/vm-status.ts): backups from backup_dir (sets and chunk-store points, with damaged manifests named per VM), runs and their per-VM errors from the run store. With NATS down the VMs are still read from disk and `runStore.up` is false; with backup_dir unreadable `backupDirError` says so.',
      headers: [{ name: 'If-None-Match', required: false, description: 'The ETag of an earlier answer: 304 while nothing but the time of reading changed.', schema: z.string() }],
      responses: { 200: { description: 'Status', schema: StatusSnapshot, headers: { ETag: 'Changes when anything but `at` does' } }, 304: { description: 'Nothing changed since the answer with this ETag' } },
    },
    async (c) => {
      const snapshot = await status.read();
      // A page polling a large backup_dir gets 304 while nothing changed (the body is some KiB a
      // VM); the tag leaves out `at`, the time of reading, which changes every time.
      const { at: _at, ...content } = snapshot;
      const tag = `"${createHash('sha256').update(JSON.stringify(content)).digest('base64url')}"`;
      if (c.req.header('If-None-Match') === tag) return c.body(null, 304, { ETag: tag });
      return c.json(snapshot, 200, { ETag: tag });
    },
  );

  // --- health ---------------------------------------------------------------------------

  route({ method: 'get', path: '/healthz', tag: 'health', public: true, summary: 'Liveness: the process answers', responses: { 200: { description: 'Alive', schema: Health } } }, (c) =>
    c.json({ status: 'ok' }),
  );
  route(
    {
      method: 'get',
      path: '/readyz',
      tag: 'health',
      public: true,
      summary: 'Readiness: NATS is reachable and workers consume the work of a run',
      description:
        'Not ready (503) when NATS or JetStream does not answer, or when no worker consumes some of the work a run with the gateway’s settings needs (its plan, the VM phases, pool-db / host-backup when configured) or no worker runs the coordinator: `unconsumed` names them. Runs are still accepted then; they wait for a worker.',
      responses: {
        200: { description: 'Ready', schema: Health },
        503: { description: 'NATS not reachable (the connection is down, or NATS or JetStream does not answer within 2 s), or no worker consumes some work (`unconsumed`)', schema: Health },
      },
    },
    async (c) => {
      let ready = false;
      try {
        ready = deps.bus.connected?.() !== false && (await deps.ready());
      } catch (error) {
        log.warn({ err: error }, `readiness check failed: ${(error as Error).message}`);
      }
      if (!ready) return c.json({ status: 'not ready: the bus (NATS) is not reachable' }, 503);
      let missing;
      try {
        // Any selection: webhooks and requests choose VMs whatever the gateway's own list is.
        missing = await unconsumedWork(deps.bus, runFunctions({ poolBackup: deps.runDefaults.poolBackup, hostBackup: deps.runDefaults.hostBackup }));
      } catch (error) {
        log.warn({ err: error }, `readiness check failed: ${(error as Error).message}`);
        return c.json({ status: `not ready: cannot tell whether workers consume the jobs (${(error as Error).message})` }, 503);
      }
      if (missing !== undefined && missing.length > 0) return c.json({ status: `not ready: ${describeUnconsumed(missing)}`, unconsumed: missing.map((m) => m.name) }, 503);
      return c.json({ status: 'ready' });
    },
  );
  route(
    { method: 'get', path: '/v1/openapi.json', tag: 'meta', public: true, summary: 'This API, as an OpenAPI 3.1 document', responses: { 200: { description: 'The OpenAPI document' } } },
    (c) => c.json(openapi),
  );

  // --- runs -----------------------------------------------------------------------------

  route(
    {
      method: 'post',
      path: '/v1/runs',
      tag: 'runs',
      nats: true,
      summary: 'Start a run',
      description:
        'Backs up the pool with the gateway’s settings, overridden by the body (config key names). An empty body runs with the settings alone. With `Idempotency-Key`, a repeated request gives the same run and starts nothing.',
      body: { schema: RunRequest, required: false },
      headers: [{ name: 'Idempotency-Key', required: false, description: 'Makes the request repeatable: the same key gives the same run id.', schema: IdempotencyKey }],
      responses: {
        202: { description: 'Run submitted', schema: RunAccepted, headers: { Location: 'The run: /v1/runs/{id}' } },
        200: { description: 'A repeated request (same Idempotency-Key): the existing run, nothing started', schema: RunAccepted },
        422: { description: 'An entry of the body is an invalid regex or matches no VM of the pool (SELECTION), or the Idempotency-Key was used before with another body (IDEMPOTENCY_KEY_REUSED): nothing started' },
      },
    },
    jsonBody,
    validate('json', RunRequest),
    async (c) => {
      const req = valid<RunRequest>(c, 'json');
      const key = idempotencyKey(c);
      const now = deps.clock.now();
      const runId = key !== undefined ? `req-${createHash('sha256').update(`idempotency:${key}`).digest('hex').slice(0, 24)}` : newRunId(now);
      const options = runOptionsFrom(deps.runDefaults, req);
      await checkSelection(options, bodyPlace(options));
      const created = await startRun(deps.store, deps.bus, { runId, options, startedAt: now, trigger: 'gateway' });
      if (!created) return c.json({ runId, duplicate: true }, 200, { Location: `/v1/runs/${runId}` });
      log.info({ runId }, `run ${runId} submitted`);
      return c.json({ runId, ...(await noWorker(runId, options)) }, 202, { Location: `/v1/runs/${runId}` });
    },
  );

  route(
    {
      method: 'get',
      path: '/v1/runs',
      tag: 'runs',
      nats: true,
      summary: 'Recent runs, newest first, with the outcome of those finished',
      description: 'A finished run carries `outcome` (success, warning, error, fatal) and `exitCode` (0, 1, 2): what `vmbackup status` shows, computed by the same code from the run’s jobs.',
      query: RunsQuery,
      responses: { 200: { description: 'Runs', schema: RunList } },
    },
    validate('query', RunsQuery),
    async (c) => {
      const q = valid<z.infer<typeof RunsQuery>>(c, 'query');
      const headers = await deps.store.list(q.limit ?? 50);
      const outcomes = await listOutcomes(deps.store, headers);
      return c.json({
        runs: headers.map((h, i) => ({
          runId: h.runId,
          status: h.status,
          ...outcomes[i],
          startedAt: h.startedAt,
          ...(h.finishedAt !== undefined ? { finishedAt: h.finishedAt } : {}),
          ...(h.pool !== undefined ? { pool: h.pool } : {}),
          ...(h.backupDir !== undefined ? { backupDir: h.backupDir } : {}),
          ...(h.trigger !== undefined ? { trigger: h.trigger } : {}),
          remaining: h.remaining,
          ...(h.retries !== undefined ? { retries: h.retries } : {}),
          ...(h.fatal !== undefined ? { fatal: h.fatal } : {}),
          jobs: h.jobIds.length,
        })),
      });
    },
  );

  route(
    {
      method: 'get',
      path: '/v1/runs/{id}',
      tag: 'runs',
      nats: true,
      summary: 'One run: its state, its outcome and summary once finished, its jobs',
      description:
        'Once finished, `outcome` (success, warning, error, fatal) and `exitCode` (0, 1, 2) say how the run ended, as `vmbackup status RUN` does, and `summary` is the same RunSummary as `vmbackup --json`. Ad-hoc function invocations (POST /v1/functions/{name} without a runId) have no run state: their id answers 404.',
      params: { id: { description: 'Run id', schema: RunId } },
      responses: { 200: { description: 'The run', schema: RunDetail }, 404: { description: 'No such run', schema: undefined } },
    },
    checkRunId,
    async (c) => {
      const id = runIdParam(c);
      const current = await deps.store.header(id);
      if (current === undefined) throw unknownRun(id);
      const jobs = await deps.store.allJobs(id);
      const header = current.header;
      return c.json({
        run: header,
        ...runOutcome(header, jobs),
        jobs: jobs.map(({ input: _i, failedInput: _f, ...rest }) => rest),
        ...(header.status === 'finished' ? { summary: summarize(header, jobs) } : {}),
      });
    },
  );

  route(
    {
      method: 'post',
      path: '/v1/runs/{id}/retry',
      tag: 'runs',
      nats: true,
      summary: 'Run the failed jobs of a finished run again',
      description:
        'Each failed job runs again from the phase that failed (meta, prune, pool-db, host-backup), or from a new snapshot when the failed message is spent (export). The run is running again until they end; its summary is published again.',
      params: { id: { description: 'Run id', schema: RunId } },
      responses: {
        202: { description: 'Failed jobs queued again', schema: RetryAccepted, headers: { Location: 'The run: /v1/runs/{id}' } },
        404: { description: 'No such run' },
        409: { description: 'The run is not finished, could not start, has no failed job, or changed meanwhile' },
      },
    },
    checkRunId,
    async (c) => {
      const id = runIdParam(c);
      const current = await deps.store.header(id);
      if (current === undefined) throw unknownRun(id);
      const r = planRetry(current.header, await deps.store.allJobs(id), deps.clock.now());
      if (!r.ok) throw new HttpError(409, r.reason.toUpperCase().replace(/-/g, '_'), r.message);
      if (!(await deps.store.commit(id, r.header, current.revision, r.jobs))) {
        throw new HttpError(409, 'CONFLICT', `run ${id} changed while the retry was prepared: look at it again and retry`);
      }
      for (const e of r.enqueue) await deps.bus.enqueue(jobSubject(e.fn), e.data, { id: e.id });
      log.info({ runId: id }, `run ${id}: retrying ${r.retried.map((j) => `${j.label} (${j.phase})`).join(', ')}`);
      return c.json({ runId: id, retries: r.header.retries ?? 1, jobs: r.retried }, 202, { Location: `/v1/runs/${id}` });
    },
  );

  // --- backups ----------------------------------------------------------------------------

  route(
    {
      method: 'get',
      path: '/v1/backups',
      tag: 'backups',
      summary: 'Backup sets in backup_dir, per VM, with dates, sizes and formats; pool DB and host backups',
      query: BackupsQuery,
      responses: { 200: { description: 'Backups', schema: BackupsResponse }, 503: { description: 'backup_dir cannot be read' } },
    },
    validate('query', BackupsQuery),
    async (c) => {
      const q = valid<z.infer<typeof BackupsQuery>>(c, 'query');
      return c.json(await listBackups(deps.backupDir, { now: deps.clock.now().getTime(), ...(q.vm !== undefined ? { vm: q.vm } : {}) }));
    },
  );

  // --- metrics ---------------------------------------------------------------------------------

  const metricsDigests = tokenDigests([...deps.tokens, ...(deps.metricsTokens ?? [])]);
  route(
    {
      method: 'get',
      path: '/metrics',
      tag: 'metrics',
      summary: 'Prometheus metrics: each VM\u2019s newest good backup, failure, size, duration, points kept, verification; vmbackup_up',
      description:
        'Prometheus text format (0.0.4), read from backup_dir and the run store (runtime/status/metrics.ts). Needs a token of gateway_tokens_file or of metrics_tokens_file. While NATS is down the per-VM series from backup_dir are still served and `vmbackup_up{component="run_store"}` is 0.',
      responses: { 200: { description: 'The metrics, text/plain; version=0.0.4' } },
    },
    async (c) => {
      if (metricsDigests.length > 0) {
        const check = checkBearer(c.req.header('Authorization'), metricsDigests);
        if (!check.ok) throw refusal(check);
      }
      const text = await statusMetrics(await status.read(), { maxAgeHours: deps.maxAgeHours ?? DEFAULT_MAX_AGE_HOURS }).metrics();
      return c.body(text, 200, { 'Content-Type': METRICS_CONTENT_TYPE });
    },
  );

  // --- one phase on its own -----------------------------------------------------------------

  for (const fn of functions.filter((f) => f.remote)) {
    const schema = invokeSchema(fn);
    route(
      {
        method: 'post',
        path: `/v1/functions/${fn.name}`,
        tag: 'functions',
        nats: true,
        summary: `Run ${fn.name} on its own: ${fn.description}`,
        description: `Validated with ${fn.name}'s own input schema and queued on ${fn.subject.name}. Without runId/jobId the invocation is ad hoc (runId adhoc-…, jobId adhoc): it has no run state, GET /v1/runs/{id} answers 404 for it; its events are published on vmbackup.events.<runId>.${fn.name}.*. With Idempotency-Key a repeated request queues nothing new.`,
        body: { schema, required: true },
        headers: [{ name: 'Idempotency-Key', required: false, description: 'A repeated request with the same key queues nothing new.', schema: IdempotencyKey }],
        responses: { 202: { description: 'Queued', schema: InvokeAccepted }, 200: { description: 'A repeated request (same Idempotency-Key): nothing queued', schema: InvokeAccepted } },
      },
      jsonBody,
      validate('json', schema),
      async (c) => {
        const body = valid<Record<string, unknown>>(c, 'json');
        const key = idempotencyKey(c);
        const nonce = key !== undefined ? createHash('sha256').update(`invoke:${fn.name}:${key}`).digest('hex').slice(0, 24) : randomBytes(8).toString('hex');
        const runId = typeof body.runId === 'string' ? body.runId : key !== undefined ? `adhoc-${nonce}` : `adhoc-${formatStamp(deps.clock.now())}-${nonce.slice(0, 4)}`;
        const jobId = typeof body.jobId === 'string' ? body.jobId : 'adhoc';
        const parsed = fn.subject.schema.safeParse({ ...body, runId, jobId });
        if (!parsed.success) throw badInput(zodIssues(parsed.error.issues));
        const data = parsed.data as { try?: number };
        const dedupId = `invoke:${runId}:${jobId}:${data.try ?? 1}:${fn.name}:${nonce}`;
        const answer = { runId, jobId, function: fn.name, subject: fn.subject.name, dedupId };
        const claimKey = `inv.${nonce}`;
        if (key !== undefined) {
          const claim = await deps.triggers.claim(claimKey, runId, windows.idempotencyMs);
          if (claim !== 'new') return c.json({ ...answer, runId: claim.runId, duplicate: true }, 200);
        }
        try {
          await deps.bus.enqueue(fn.subject.name, parsed.data, { id: dedupId });
        } catch (error) {
          if (key !== undefined) await releaseClaim(claimKey, runId);
          throw error;
        }
        log.info({ runId, jobId, fn: fn.name }, `${fn.name} invoked on its own (run ${runId}, job ${jobId})`);
        return c.json(answer, 202);
      },
    );
  }
  app.post('/v1/functions/:name', (c) => {
    throw new HttpError(404, 'UNKNOWN_FUNCTION', `no function "${c.req.param('name')}" (functions: ${functions.filter((f) => f.remote).map((f) => f.name).join(', ')})`);
  });

  // --- webhooks ---------------------------------------------------------------------------

  route(
    {
      method: 'post',
      path: '/v1/hooks/alertmanager',
      tag: 'hooks',
      nats: true,
      summary: 'Prometheus Alertmanager webhook (version 4): back up the VMs its firing alerts name',
      description: `Each firing alert's label "${deps.alertmanagerLabel}" (alertmanager_label) names a VM, backed up as a whole VM (vm-export, exact name); resolved alerts ask for nothing. Other options come from the gateway's settings; its excludes still apply. A delivery repeating one seen within ${windows.alertmanagerMs / 3_600_000} h (same group, same firing alerts by fingerprint and startsAt) starts no second run.`,
      body: { schema: AlertmanagerPayload, required: true },
      responses: {
        202: { description: 'Run started for the named VMs', schema: HookAnswer, headers: { Location: 'The run' } },
        200: { description: 'Nothing to do (no firing alert names a VM), or a repeated delivery (duplicate: true, the first run id)', schema: HookAnswer },
        422: { description: 'A firing alert names a VM the pool does not have (SELECTION): nothing started' },
      },
    },
    jsonBody,
    validate('json', AlertmanagerPayload),
    async (c) => {
      const payload = valid<AlertmanagerPayload>(c, 'json');
      const vms = vmsToBackUp(payload, deps.alertmanagerLabel);
      if (vms.length === 0) {
        return c.json({ runId: null, vms: [], message: `nothing to do: no firing alert has the label "${deps.alertmanagerLabel}"` }, 200);
      }
      // Pool DB and hosts as every entry does: per pool_backup / host_backup (README, "Scope").
      const entries = vms.map(exactNameEntry);
      const options: RunOptions = {
        ...deps.runDefaults,
        vmExports: entries,
        vdiExports: [],
        ...(deps.runDefaults.deltaExports !== undefined ? { deltaExports: [] } : {}),
        selection: {
          requested: [{ list: 'vm_exports', where: `alert label ${deps.alertmanagerLabel}` }],
          config: deps.runDefaults.selection?.config ?? [],
          maxBackups: deps.runDefaults.selection?.maxBackups ?? "the gateway's max_backups",
        },
      };
      await checkSelection(options, (issue) => {
        const name = vms[entries.indexOf(issue.entry)];
        return name !== undefined ? `alerts: label ${deps.alertmanagerLabel}=${JSON.stringify(name)}` : issue.list;
      });
      if (payload.truncatedAlerts > 0) log.warn(`alertmanager: ${payload.truncatedAlerts} alerts of group ${payload.groupKey} were truncated: their VMs are not backed up`);
      return triggerRun(c, deliveryKey(payload), windows.alertmanagerMs, options, 'alertmanager', vms);
    },
  );

  const verify: AnyHandler = async (c, next) => {
    if (deps.webhookSecret === undefined) {
      throw new HttpError(404, 'NOT_CONFIGURED', 'signed webhooks are off: set webhook_secret_file in the gateway’s config');
    }
    const raw = new Uint8Array(await c.req.arrayBuffer());
    const header = c.req.header(SIGNATURE_HEADER);
    if (header === undefined) throw new HttpError(401, 'SIGNATURE_MISSING', `${SIGNATURE_HEADER} header missing: sign the body (sha256=<hex HMAC-SHA256>)`);
    if (!verifySignature(deps.webhookSecret, raw, header)) throw new HttpError(401, 'SIGNATURE_INVALID', `${SIGNATURE_HEADER} does not match the body`);
    return next();
  };
  route(
    {
      method: 'post',
      path: '/v1/hooks/generic',
      tag: 'hooks',
      nats: true,
      summary: 'A signed webhook: start a run with the options it carries',
      description: `Needs both the bearer token and \`${SIGNATURE_HEADER}: sha256=<hex HMAC-SHA256(webhook secret, raw body)>\`. \`timestamp\` may be at most ${freshness.maxAgeMs / 60_000} min old and ${freshness.maxAheadMs / 60_000} min ahead; a delivery \`id\` seen within ${windows.genericMs / 60_000} min starts no second run.`,
      body: { schema: GenericHook, required: true },
      headers: [{ name: SIGNATURE_HEADER, required: true, description: 'sha256=<hex HMAC-SHA256 of the raw body>', schema: z.string().regex(/^sha256=[0-9a-fA-F]{64}$/) }],
      responses: {
        202: { description: 'Run started', schema: HookAnswer, headers: { Location: 'The run' } },
        200: { description: 'A repeated delivery: the first run id, nothing started', schema: HookAnswer },
        404: { description: 'Signed webhooks are not configured (webhook_secret_file)' },
        422: { description: 'An entry is an invalid regex or matches no VM of the pool (SELECTION): nothing started' },
      },
    },
    verify,
    jsonBody,
    validate('json', GenericHook),
    (c, next) => {
      const stale = checkFreshness(valid<GenericHook>(c, 'json').timestamp, deps.clock.now(), freshness);
      if (stale !== undefined) throw new HttpError(400, 'STALE_DELIVERY', stale, [{ path: 'timestamp', message: stale }]);
      return next();
    },
    async (c) => {
      const body = valid<GenericHook>(c, 'json');
      const { id: _id, timestamp: _ts, ...req } = body;
      const options = runOptionsFrom(deps.runDefaults, req);
      await checkSelection(options, bodyPlace(options));
      return triggerRun(c, genericDeliveryKey(body.id), windows.genericMs, options, 'webhook');
    },
  );

  const openapi = buildOpenApi(docs, { version: deps.version ?? '0.0.0' });
  return app;
}

function unknownRun(id: string): HttpError {
  return new HttpError(
    404,
    'NOT_FOUND',
    id.startsWith('adhoc-') ? `no run ${id}: ad-hoc function invocations are not tracked as runs (their events are on vmbackup.events.${id}.>)` : `no run ${id}`,
  );
}

/** The routes the gateway serves, as documented (for tests and tools). */
export function gatewayRoutes(app: Hono<Env>): { method: string; path: string }[] {
  // Hono lists a route once per handler of its chain.
  const seen = new Set<string>();
  return app.routes
    .filter((r) => r.method !== 'ALL')
    .filter((r) => !seen.has(`${r.method} ${r.path}`) && seen.add(`${r.method} ${r.path}`))
    .map((r) => ({ method: r.method, path: r.path }));
}
