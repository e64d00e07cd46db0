import http from 'node:http';
import type { ClientRequest, IncomingMessage } from 'node:http';
import https from 'node:https';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Agent, request } from 'undici';
import { Xapi } from 'xen-api';
// xen-api's own reading of a finished task (result parsed, failure as its XapiError), for
// tasks it did not see end (taskResult).
import getTaskResult from 'xen-api/_getTaskResult.mjs';
import type { Logger } from 'pino';
import { ConnectionError, PermanentError, RetryLaterError, VmbackupError } from '../errors.js';
import { formatBytes } from '../units.js';
import { decodeChangedBlocks, type ChangedBlocks } from './cbt.js';
import { httpGet, type BodySource } from './http-get.js';
import type { HostRecord, NbdInfo, PoolRecord, RecordType, RecordTypes, Ref } from './records.js';

/**
 * How to reach a pool. The password is a secret: it is never logged and never put in a
 * message (workers read it from their own configuration).
 */
export interface XapiOptions {
  url: string;
  user: string;
  password: string;
  /** PEM text of CA certificates to trust, besides the system's. */
  ca?: string;
  /** Skip certificate checks. */
  insecure?: boolean;
  log?: Logger;
}

/** What createVbd needs: the VM, the VDI and a free device number; the rest has defaults. */
export interface NewVbd {
  vm: Ref;
  vdi: Ref;
  /** A free device number (`allowedVbdDevices`), or "autodetect". */
  userdevice: string;
  /** Default false. */
  bootable?: boolean;
  /** Default RW. */
  mode?: 'RO' | 'RW';
  /** Default Disk. */
  type?: 'CD' | 'Disk';
  otherConfig?: Record<string, string>;
}

/**
 * A transfer from an XAPI HTTP handler: the body (a stream, or with `direct` a BodySource
 * read from one reused buffer), and the task that completes with it.
 */
export interface XapiDownload<B extends Readable | BodySource = Readable> {
  body: B;
  /** Resolves when XAPI marks the transfer's task a success; rejects with its error. */
  task: Promise<unknown>;
  /** Stops the transfer and cancels its task. */
  abort(): void;
}

export interface DownloadOptions {
  /** The host whose handler answers (default: the master). */
  host?: HostRecord;
  signal?: AbortSignal;
  /** Read the body with httpGet (a BodySource) instead of a stream. */
  direct?: boolean;
}

/** How a transfer's XAPI task ended: its result, or its error (mapped). */
type TaskOutcome = { value: unknown } | { failure: VmbackupError };

/** A transfer's XAPI task and abort wiring (`XapiClient.transferTask`). */
interface TransferTask {
  taskRef: string;
  /** Settles when XAPI ends the task, which is then destroyed; never rejects. */
  outcome: Promise<TaskOutcome>;
  /** Cancels the task (XAPI then rolls back what it did). */
  cancel(): void;
  /** Destroys the task record. */
  destroy(): void;
  /** Aborted when the caller's signal is. */
  controller: AbortController;
  /** Stops following the caller's signal. */
  release(): void;
}

/** Redirects a download follows (XAPI sends one, to the host that can reach the SR). */
const MAX_REDIRECTS = 5;

/** Socket-level idle timeout of every XAPI connection (RPC, events, transfers). */
const CONNECTION_IDLE_MS = 10 * 60_000;

/** XAPI error codes after which the same call is worth making again later. */
const RETRY_LATER: Record<string, number> = {
  TOO_MANY_PENDING_TASKS: 30_000,
  OTHER_OPERATION_IN_PROGRESS: 10_000,
  HOST_OFFLINE: 30_000,
  HOST_STILL_BOOTING: 30_000,
};

/** XAPI error codes that another attempt cannot fix. */
const PERMANENT = new Set([
  'HANDLE_INVALID',
  'UUID_INVALID',
  'VM_BAD_POWER_STATE',
  'OPERATION_BLOCKED',
  'OPERATION_NOT_ALLOWED',
  'SR_FULL',
  'VM_IS_TEMPLATE',
  'MESSAGE_METHOD_UNKNOWN',
  'MESSAGE_PARAMETER_COUNT_MISMATCH',
  'PERMISSION_DENIED',
  'RBAC_PERMISSION_DENIED',
]);

interface XenApiError {
  code: string;
  params: string[];
}

function isXenApiError(error: unknown): error is XenApiError {
  return (
    error instanceof Error &&
    typeof (error as { code?: unknown }).code === 'string' &&
    Array.isArray((error as { params?: unknown }).params)
  );
}

/**
 * Turns an error from the xen-api client into one of ours, keeping XAPI's code and params:
 * the runtime decides retries from the class, operators read the code.
 */
export function mapXapiError(error: unknown, what: string): VmbackupError {
  if (error instanceof VmbackupError) return error;
  if (isXenApiError(error)) {
    const message = `${what}: ${xapiErrorText(error.code, error.params)}`;
    const data = { xapiCode: error.code, params: error.params };
    const delay = RETRY_LATER[error.code];
    if (delay !== undefined) return new RetryLaterError(error.code, message, delay, data, { cause: error });
    if (PERMANENT.has(error.code)) return new PermanentError(error.code, message, data, { cause: error });
    return new VmbackupError(error.code, message, data, { cause: error });
  }
  const code = networkCode(error) ?? 'XAPI_ERROR';
  const message = `${what}: ${error instanceof Error ? error.message : String(error)}`;
  return new VmbackupError(code, message, {}, { cause: error });
}

/**
 * Parameters of XAPI errors that are sizes in bytes, by position and name (XAPI's datamodel
 * names them): shown to people as sizes; the error's data keeps them as XAPI sent them.
 */
const BYTE_PARAMS: Record<string, readonly (string | undefined)[]> = {
  SR_FULL: ['requested', 'maximum'],
};

/**
 * An XAPI error for people: `CODE(param, …)`, sizes rendered with formatBytes.
 *
 * @example xapiErrorText('SR_FULL', ['4294967296', '1288490188']) // 'SR_FULL(4.0 GiB requested, 1.2 GiB maximum)'
 */
export function xapiErrorText(code: string, params: readonly string[]): string {
  const names = BYTE_PARAMS[code] ?? [];
  const shown = params.map((p, i) => {
    const name = names[i];
    return name !== undefined && /^\d+$/.test(p) ? `${formatBytes(Number(p))} ${name}` : p;
  });
  return `${code}(${shown.join(', ')})`;
}

/** The errno-like code of a network or TLS failure, looking through `cause` chains. */
function networkCode(error: unknown): string | undefined {
  for (let e: unknown = error, depth = 0; e !== undefined && e !== null && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

const TLS_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_UNTRUSTED',
]);

const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'ECONNRESET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_SOCKET',
  'EPROTO',
]);

/** How often a task waited for is also asked after directly (see taskResult). */
const TASK_POLL_MS = 5_000;

/** Explains a failed login in the operator's terms: what failed, and what to do about it. */
export function connectionError(error: unknown, url: string, user: string): ConnectionError {
  if (isXenApiError(error) && error.code === 'SESSION_AUTHENTICATION_FAILED') {
    return new ConnectionError('AUTH_FAILED', `XAPI at ${url} refused the credentials of user "${user}" (SESSION_AUTHENTICATION_FAILED)`, { url, user }, { cause: error });
  }
  const code = networkCode(error);
  if (code !== undefined && TLS_CODES.has(code)) {
    return new ConnectionError(
      'TLS_UNTRUSTED',
      `the TLS certificate of ${url} is not trusted (${code}): give its CA with tls_ca_file / --tls-ca-file, or --insecure to skip the check`,
      { url, tlsCode: code },
      { cause: error },
    );
  }
  if (code !== undefined && UNREACHABLE_CODES.has(code)) {
    return new ConnectionError('UNREACHABLE', `cannot reach XAPI at ${url} (${code})`, { url, netCode: code }, { cause: error });
  }
  const detail = isXenApiError(error) ? xapiErrorText(error.code, error.params) : error instanceof Error ? error.message : String(error);
  return new ConnectionError('CONNECT_FAILED', `cannot log in to XAPI at ${url}: ${detail}`, { url }, { cause: error });
}

/**
 * xen-api 4.7.6 offers no way to trust a private CA (only `allowUnauthorized`). A pool's
 * self-signed certificate is the common case on a management node, and turning checks off is
 * not an answer, so this subclass swaps in HTTP agents that carry the CA. It touches private
 * fields (`_undiciDispatcher`, `_httpAgent`, `_setUrl`): the version is pinned in
 * package.json and test/conformance covers it.
 */
class PoolXapi extends Xapi {
  readonly dispatcher: Agent;
  readonly tls: { ca?: string; insecure: boolean };

  constructor(opts: ConstructorParameters<typeof Xapi>[0], tls: { ca?: string; insecure: boolean; idleTimeoutMs: number }) {
    super(opts);
    this.tls = { ...(tls.ca !== undefined ? { ca: tls.ca } : {}), insecure: tls.insecure };
    this.dispatcher = new Agent({
      bodyTimeout: tls.idleTimeoutMs,
      headersTimeout: tls.idleTimeoutMs,
      connect: { rejectUnauthorized: !tls.insecure, ...(tls.ca !== undefined ? { ca: tls.ca } : {}) },
    });
    const self = this as unknown as { _undiciDispatcher: Agent; _httpAgent: https.Agent; _setUrl(url: unknown): void; _url: unknown };
    self._undiciDispatcher = this.dispatcher;
    self._httpAgent = new https.Agent({ rejectUnauthorized: !tls.insecure, ...(tls.ca !== undefined ? { ca: tls.ca } : {}) });
    self._setUrl(self._url);
  }
}

/**
 * The typed door to one pool's XAPI. Every XAPI call vmbackup makes goes through here, so
 * errors are mapped in one place and the session is always logged out (`close`).
 */
export class XapiClient {
  private constructor(
    private readonly xapi: PoolXapi,
    readonly url: string,
  ) {}

  /**
   * Logs in (following HOST_IS_SLAVE to the master) and returns a connected client.
   * @throws ConnectionError with a message naming the cause: credentials, TLS, unreachable.
   */
  static async connect(opts: XapiOptions): Promise<XapiClient> {
    // The connection's own timeouts must outlast event.from, which XAPI holds for 60 s: a
    // shorter one breaks task watching. Stalled transfers are caught by their readers' idle
    // watchdogs (writeStreamAtomic, upload), with the operator's export_idle_timeout.
    const idleTimeoutMs = CONNECTION_IDLE_MS;
    const xapi = new PoolXapi(
      {
        url: opts.url,
        auth: { user: opts.user, password: opts.password },
        allowUnauthorized: opts.insecure === true,
        // Only tasks are watched: callAsync needs them; everything else is read live, so a
        // 5,000-VM pool is not mirrored into memory.
        watchEvents: ['task'],
        httpInactivityTimeout: idleTimeoutMs,
        callTimeout: 6 * 60 * 60 * 1000,
      },
      { ...(opts.ca !== undefined ? { ca: opts.ca } : {}), insecure: opts.insecure === true, idleTimeoutMs },
    );
    // xen-api reports background event-loop trouble as events; keep it in our log, not stderr.
    xapi.on('eventFetchingError', (error: unknown) => opts.log?.debug({ err: error }, 'xapi event loop error'));
    try {
      await xapi.connect();
    } catch (error) {
      await xapi.disconnect().catch(() => {});
      await xapi.dispatcher.close().catch(() => {});
      throw connectionError(error, opts.url, opts.user);
    }
    return new XapiClient(xapi, opts.url);
  }

  /** Logs the session out and closes connections. Safe to call twice. */
  async close(): Promise<void> {
    if (this.xapi.status !== 'disconnected') {
      const sessionId = this.xapi.status === 'connected' ? this.xapi.sessionId : undefined;
      // xen-api's disconnect() fires session.logout without waiting for it; wait here, so the
      // session is really gone when close() resolves (a cron run must not leak sessions).
      if (sessionId !== undefined) {
        await (this.xapi as unknown as { _call(m: string, a: unknown[]): Promise<unknown> })
          ._call('session.logout', [sessionId])
          .catch(() => {});
      }
      await this.xapi.disconnect();
    }
    await this.xapi.dispatcher.close().catch(() => {});
  }

  /**
   * False once the session is gone for good: xen-api disconnected, or its re-login after a
   * SESSION_INVALID failed (it then keeps no session and every call fails). Connect anew.
   */
  get connected(): boolean {
    return this.xapi.status === 'connected' && this.xapi.sessionId !== undefined;
  }

  get pool(): PoolRecord {
    return this.xapi.pool as unknown as PoolRecord;
  }

  /** Calls a method with the session prepended; XAPI errors become typed errors. */
  async call<T = unknown>(method: string, ...args: unknown[]): Promise<T> {
    try {
      return await this.xapi.call<T>(method, ...args);
    } catch (error) {
      throw mapXapiError(error, method);
    }
  }

  /** Calls `Async.<method>` and waits for its task; resolves with the task's result. */
  async callAsync<T = unknown>(method: string, ...args: unknown[]): Promise<T> {
    try {
      const taskRef = await this.xapi.call<string>(`Async.${method}`, ...args);
      try {
        return (await this.taskResult(taskRef)) as T;
      } finally {
        void this.xapi.call('task.destroy', taskRef).catch(() => {});
      }
    } catch (error) {
      throw mapXapiError(error, method);
    }
  }

  /**
   * A task's result, from xen-api's event loop or, should that miss the task's end, from
   * asking XAPI every `TASK_POLL_MS`. The event loop can miss it: its re-login after a
   * SESSION_INVALID (a toolstack restart) fetches the tasks again with a session that is
   * being replaced, fails, and then only sees events from its new token on. A task that
   * ended in between would be waited for forever.
   */
  private taskResult(taskRef: string): Promise<unknown> {
    let timer: NodeJS.Timeout | undefined;
    const polled = new Promise<unknown>((resolve, reject) => {
      let asking = false;
      timer = setInterval(() => {
        if (asking) return;
        asking = true;
        this.xapi
          .call<{ status: string }>('task.get_record', taskRef)
          .then((task) => {
            if (task.status === 'pending') return;
            clearInterval(timer);
            const result = getTaskResult(task) as Promise<unknown> | undefined;
            if (result !== undefined) result.then(resolve, reject);
          })
          .catch((error: unknown) => {
            // The task gone (destroyed by someone else): its outcome cannot be known.
            if ((error as { code?: string }).code === 'HANDLE_INVALID') {
              clearInterval(timer);
              reject(error);
            }
          })
          .finally(() => (asking = false));
      }, TASK_POLL_MS);
      timer.unref();
    });
    return Promise.race([this.xapi.watchTask(taskRef), polled]).finally(() => clearInterval(timer));
  }

  async getRecord<K extends RecordType>(type: K, ref: Ref): Promise<RecordTypes[K]> {
    try {
      return (await this.xapi.getRecord(type, ref)) as unknown as RecordTypes[K];
    } catch (error) {
      throw mapXapiError(error, `${type}.get_record`);
    }
  }

  async getRecordByUuid<K extends RecordType>(type: K, uuid: string): Promise<RecordTypes[K]> {
    try {
      return (await this.xapi.getRecordByUuid(type, uuid)) as unknown as RecordTypes[K];
    } catch (error) {
      throw mapXapiError(error, `${type}.get_by_uuid`);
    }
  }

  async getAllRecords<K extends RecordType>(type: K): Promise<RecordTypes[K][]> {
    try {
      return (await this.xapi.getAllRecords(type)) as unknown as RecordTypes[K][];
    } catch (error) {
      throw mapXapiError(error, `${type}.get_all_records`);
    }
  }

  /**
   * The records matching an XAPI filter expression (`<class>.get_all_records_where`), e.g.
   * `field "is_a_snapshot"="true"`: on a large pool, only what is needed crosses the wire.
   */
  async getAllRecordsWhere<K extends RecordType>(type: K, expr: string): Promise<RecordTypes[K][]> {
    const records = await this.call<Record<string, object>>(`${type}.get_all_records_where`, expr);
    return Object.entries(records).map(([ref, record]) => ({ ...record, $ref: ref }) as unknown as RecordTypes[K]);
  }

  /**
   * GETs an HTTP handler of the master (`/export`, `/export_raw_vdi`, `/pool/xmldbdump`), or
   * of `host` when given (`/host_backup` is answered by the host that receives it), with a
   * task XAPI completes at the end of the transfer. With `direct`, the body is read by
   * `httpGet` into one reused buffer and handed to a synchronous consumer (`writeStreamAtomic`
   * takes it), with no allocation or copy per chunk: for the large exports (docs/performance.md).
   */
  async download(pathname: string, query: Record<string, string>, opts: DownloadOptions & { direct: true }): Promise<XapiDownload<BodySource>>;
  async download(pathname: string, query: Record<string, string>, opts?: DownloadOptions): Promise<XapiDownload>;
  async download(pathname: string, query: Record<string, string>, opts: DownloadOptions = {}): Promise<XapiDownload<Readable | BodySource>> {
    const what = `GET ${pathname}`;
    const transfer = await this.transferTask(what, pathname, query, opts.signal);
    const { taskRef, controller } = transfer;
    const task = transfer.outcome.then((outcome) => {
      if ('failure' in outcome) throw outcome.failure;
      return outcome.value;
    });
    task.catch(() => {});
    const abort = () => {
      controller.abort();
      transfer.cancel();
    };
    try {
      const isMaster = opts.host === undefined || opts.host.$ref === this.pool.master;
      const { statusCode, body } = opts.direct === true ? await this.getDirect(pathname, query, taskRef, opts.host, isMaster) : await this.getStream(pathname, query, taskRef, opts.host, isMaster, controller.signal);
      controller.signal.addEventListener('abort', () => body.destroy(new VmbackupError('ABORTED', `${what} aborted`)), { once: true });
      if (statusCode !== 200) {
        if ('pump' in body) body.destroy();
        else {
          // Nobody reads this body: swallow its errors, or aborting it would crash the process.
          body.on('error', () => {});
          body.resume();
        }
        abort();
        const message = `${what} answered HTTP ${statusCode}`;
        if (statusCode === 401) throw new VmbackupError('HTTP_401', `${message}: session not accepted`, { status: 401 });
        if (statusCode === 404) throw new PermanentError('HTTP_404', message, { status: 404 });
        throw new VmbackupError(`HTTP_${statusCode}`, message, { status: statusCode });
      }
      if ('pump' in body) {
        const direct: BodySource = {
          pump: (onChunk) => body.pump(onChunk).finally(() => transfer.release()),
          destroy: (error) => {
            body.destroy(error);
            transfer.release();
          },
        };
        return { body: direct, task, abort };
      }
      body.once('close', () => transfer.release());
      return { body, task, abort };
    } catch (error) {
      transfer.release();
      abort();
      throw error instanceof VmbackupError ? error : mapXapiError(error, what);
    }
  }

  /** A download's request through undici; the body is a stream. */
  private async getStream(pathname: string, query: Record<string, string>, taskRef: string, host: HostRecord | undefined, isMaster: boolean, signal: AbortSignal): Promise<{ statusCode: number; body: Readable }> {
    if (isMaster) {
      // The master's handlers go through xen-api's own getResource (it follows 302s).
      try {
        const response = await this.xapi.getResource(pathname, { query, task: taskRef });
        return { statusCode: response.statusCode, body: response.body };
      } catch (error) {
        const response = (error as { response?: { statusCode: number; body?: Readable } }).response;
        if (response === undefined) throw error;
        return { statusCode: response.statusCode, body: response.body! };
      }
    }
    const response = await request(this.handlerUrl(pathname, query, taskRef, host), { method: 'GET', dispatcher: this.xapi.dispatcher, signal, maxRedirections: 0 });
    return { statusCode: response.statusCode, body: response.body as unknown as Readable };
  }

  /** A download's request through httpGet, following the master's redirects as getResource does. */
  private async getDirect(pathname: string, query: Record<string, string>, taskRef: string, host: HostRecord | undefined, isMaster: boolean): Promise<{ statusCode: number; body: BodySource }> {
    const tls = this.xapi.tls;
    let url = this.handlerUrl(pathname, query, taskRef, isMaster ? undefined : host);
    for (let redirects = 0; ; redirects++) {
      const response = await httpGet(url, { ...tls, idleTimeoutMs: CONNECTION_IDLE_MS });
      const location = response.headers.get('location');
      if (!isMaster || response.statusCode !== 302 || location === undefined || redirects === MAX_REDIRECTS) return response;
      response.body.destroy();
      url = new URL(location, url);
    }
  }

  /**
   * The URL of an XAPI HTTP handler with the session and the task. Another host's handler
   * keeps the port of the configured URL (xen-api would use the default one), which is XAPI's
   * 443 in production.
   */
  private handlerUrl(pathname: string, query: Record<string, string>, taskRef: string, host?: HostRecord): URL {
    const url = new URL(pathname, this.url);
    if (host !== undefined) url.hostname = host.address;
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    url.searchParams.set('session_id', this.xapi.sessionId);
    url.searchParams.set('task_id', taskRef);
    return url;
  }

  /**
   * PUTs `length` bytes to an HTTP handler of the master (`/import`, `/import_raw_vdi`) with a
   * Content-Length (XAPI refuses chunked uploads), with a task XAPI completes when the upload
   * is processed; resolves with that task's result (for `/import`: the imported VM refs).
   * XAPI answers 200 and `task-id` before it reads the body, then closes once done: the task,
   * not the socket, says whether the upload worked. `body` opens the stream to send; it is
   * opened again if XAPI redirects (302) to the host that can reach the SR. An upload that
   * makes no progress for `idleTimeoutMs` (default 300 s), or whose `signal` aborts, is cut
   * and its task cancelled; XAPI then rolls back what it imported.
   *
   * @example
   *   const [vm] = await xapi.upload('/import', { sr_id }, () => createReadStream(file), size) as string[];
   */
  async upload(
    pathname: string,
    query: Record<string, string>,
    body: () => Readable,
    length: number,
    opts: { signal?: AbortSignal; idleTimeoutMs?: number } = {},
  ): Promise<unknown> {
    const what = `PUT ${pathname}`;
    const transfer = await this.transferTask(what, pathname, query, opts.signal);
    const { taskRef, controller, outcome: task, cancel: cancelTask } = transfer;
    if (opts.signal?.aborted === true) controller.abort(opts.signal.reason);
    const aborted = () => new VmbackupError('ABORTED', `${what} aborted`);
    const idleTimeoutMs = opts.idleTimeoutMs ?? 300_000;
    let url = new URL(pathname, this.url);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    url.searchParams.set('session_id', this.xapi.sessionId);
    url.searchParams.set('task_id', taskRef);

    const within = async (ms: number) => {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
      try {
        return await Promise.race([task, late]);
      } finally {
        clearTimeout(timer);
      }
    };
    /**
     * After a broken transfer, XAPI's verdict decides: it fails the task with the reason
     * (IMPORT_ERROR_SOME_CHECKSUMS_FAILED…) and rolls back. A task still pending after a while
     * is cancelled; one that never settles leaves `error`.
     */
    const settle = async (error: VmbackupError, patienceMs = 10_000): Promise<unknown> => {
      // Given up on our side: the task's failure would only be a consequence of it.
      const ours = error.code === 'ABORTED' || error.code === 'IDLE_TIMEOUT';
      if (ours) cancelTask();
      let verdict = await within(patienceMs);
      if (verdict === undefined) {
        cancelTask();
        verdict = await within(patienceMs === 10_000 ? 60_000 : patienceMs);
      }
      if (verdict === undefined) {
        transfer.destroy();
        throw error;
      }
      // A task that succeeded anyway had every byte it needed: the caller decides what to keep.
      if ('value' in verdict) return verdict.value;
      throw ours ? error : verdict.failure;
    };

    try {
      for (let redirects = 0; ; redirects++) {
        let response: IncomingMessage;
        let req: ClientRequest;
        try {
          ({ req, response } = await this.putHeaders(url, length, controller.signal, idleTimeoutMs));
        } catch (error) {
          // No answer: XAPI most likely never saw the request, so its task stays pending; a
          // short wait covers an answer lost after XAPI had started.
          return await settle(controller.signal.aborted ? aborted() : mapXapiError(error, what), 2_000);
        }
        const { statusCode = 0 } = response;
        // Errors of the answer only say how the socket ended; the task says how the upload did.
        response.on('error', () => {});
        response.resume();
        if (statusCode === 302 && redirects < 3) {
          req.destroy();
          const location = response.headers.location;
          if (typeof location !== 'string') return await settle(new VmbackupError('HTTP_302', `${what} redirected without a Location`, { status: 302 }), 2_000);
          url = new URL(location, url);
          url.searchParams.set('session_id', this.xapi.sessionId);
          url.searchParams.set('task_id', taskRef);
          continue;
        }
        if (statusCode !== 200) {
          req.destroy();
          const message = `${what} answered HTTP ${statusCode}`;
          // XAPI fails the task with the reason (SR_OPERATION_NOT_SUPPORTED…): settle prefers it.
          return await settle(
            statusCode === 401
              ? new VmbackupError('HTTP_401', `${message}: session not accepted`, { status: 401 })
              : statusCode === 404
                ? new PermanentError('HTTP_404', message, { status: 404 })
                : new VmbackupError(`HTTP_${statusCode}`, message, { status: statusCode }),
          );
        }
        // 200 and task-id: XAPI reads the body now.
        let sent = 0;
        let lastProgress = Date.now();
        const meter = new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            sent += chunk.length;
            lastProgress = Date.now();
            callback(null, chunk);
          },
        });
        const source = body();
        let watchdog: NodeJS.Timeout | undefined;
        const broken = new Promise<VmbackupError>((resolve) => {
          pipeline(source, meter, req).catch((error: unknown) => resolve(controller.signal.aborted ? aborted() : mapXapiError(error, what)));
          response.once('error', (error: Error) => resolve(controller.signal.aborted ? aborted() : mapXapiError(error, what)));
          controller.signal.addEventListener('abort', () => resolve(aborted()), { once: true });
          watchdog = setInterval(() => {
            if (sent < length && Date.now() - lastProgress > idleTimeoutMs) {
              resolve(new VmbackupError('IDLE_TIMEOUT', `${what}: no progress for ${Math.round(idleTimeoutMs / 1000)} s after ${formatBytes(sent)} of ${formatBytes(length)}`, { sent, length }));
            }
          }, Math.min(1_000, idleTimeoutMs));
        });
        try {
          const first = await Promise.race([task, broken.then((error) => ({ broken: error }))]);
          if ('value' in first) return first.value;
          if ('failure' in first) throw first.failure;
          req.destroy();
          return await settle(first.broken);
        } finally {
          clearInterval(watchdog);
          if (!source.readableEnded) source.destroy();
        }
      }
    } finally {
      transfer.release();
    }
  }

  /**
   * The task of a transfer to or from an HTTP handler, and its abort wiring: creates the task
   * (`vmbackup <pathname>`), watches it (destroyed once it ends), and links `signal` to an
   * AbortController of the transfer.
   */
  private async transferTask(what: string, pathname: string, query: Record<string, string>, signal: AbortSignal | undefined): Promise<TransferTask> {
    let taskRef: string;
    try {
      taskRef = await this.xapi.createTask(`vmbackup ${pathname}`, JSON.stringify(query));
    } catch (error) {
      throw mapXapiError(error, 'task.create');
    }
    const destroy = () => void this.xapi.call('task.destroy', taskRef).catch(() => {});
    const outcome = this.taskResult(taskRef).then(
      (result): TaskOutcome => {
        destroy();
        return { value: result as unknown };
      },
      (error: unknown): TaskOutcome => {
        destroy();
        return { failure: mapXapiError(error, `${what} task`) };
      },
    );
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    return {
      taskRef,
      outcome,
      cancel: () => void this.xapi.call('task.cancel', taskRef).catch(() => {}),
      destroy,
      controller,
      release: () => signal?.removeEventListener('abort', onAbort),
    };
  }

  /**
   * Sends a PUT's headers alone (with Content-Length) and waits for the answer: XAPI answers
   * 200 + `task-id` before it reads the body, or 302 to another host, which must get the whole
   * body instead. (undici would only send headers with the first body bytes, which a 302
   * then cuts off with EPIPE.) The request is left open for the body.
   */
  private putHeaders(url: URL, length: number, signal: AbortSignal, timeoutMs: number): Promise<{ req: ClientRequest; response: IncomingMessage }> {
    return new Promise((resolve, reject) => {
      const tls = url.protocol === 'https:';
      const agent = tls ? (this.xapi as unknown as { _httpAgent: https.Agent })._httpAgent : undefined;
      const req = (tls ? https : http).request(url, {
        method: 'PUT',
        ...(agent !== undefined ? { agent } : {}),
        headers: { 'content-length': String(length), 'content-type': 'application/octet-stream' },
        signal,
        timeout: timeoutMs,
      });
      req.once('timeout', () => req.destroy(Object.assign(new Error(`no answer in ${Math.round(timeoutMs / 1000)} s`), { code: 'ETIMEDOUT' })));
      req.once('error', reject);
      req.once('response', (response) => {
        req.setTimeout(0);
        req.off('error', reject);
        // Later errors surface through the body pipeline.
        req.on('error', () => {});
        resolve({ req, response });
      });
      req.flushHeaders();
    });
  }

  // --- changed-block tracking and NBD (incremental backups) ------------------------------

  /** `VDI.enable_cbt`: idempotent; refused on snapshots (OPERATION_NOT_ALLOWED) and where the SR cannot track. */
  async enableCbt(vdi: Ref): Promise<void> {
    await this.call('VDI.enable_cbt', vdi);
  }

  /** `VDI.disable_cbt`: idempotent; ends the chain of comparable snapshots. */
  async disableCbt(vdi: Ref): Promise<void> {
    await this.call('VDI.disable_cbt', vdi);
  }

  /**
   * `VDI.list_changed_blocks(from, to)` decoded for a disk of `size` bytes: the 64 KiB
   * blocks written after snapshot `from` up to `to` (a later snapshot, or the disk itself
   * when no VM has it attached), as ranges to read. XAPI refuses with VDI_IN_USE while `to`
   * is attached, and SR_BACKEND_FAILURE_460 for VDIs of unrelated chains.
   */
  async listChangedBlocks(from: Ref, to: Ref, size: number): Promise<ChangedBlocks> {
    const bitmap = await this.call<string>('VDI.list_changed_blocks', from, to);
    return decodeChangedBlocks(bitmap, size);
  }

  /**
   * `VDI.data_destroy`: drops a CBT snapshot's data and keeps its changed-block metadata
   * (type `cbt_metadata`, still a valid `from` for listChangedBlocks). Destroy the snapshot
   * VM first: XAPI waits 4 s for the VDI's VBDs to go, then fails with VDI_IN_USE.
   */
  async dataDestroy(vdi: Ref): Promise<void> {
    await this.call('VDI.data_destroy', vdi);
  }

  /**
   * `VDI.get_nbd_info`: where the VDI can be read over NBD (empty unless a network has purpose
   * `nbd` or `insecure_nbd`). The export names carry this client's session.
   */
  async vdiNbdInfo(vdi: Ref): Promise<NbdInfo[]> {
    const infos = await this.call<Record<string, unknown>[]>('VDI.get_nbd_info', vdi);
    return infos.map((i) => ({
      address: String(i.address),
      port: Number(i.port),
      cert: String(i.cert),
      exportname: String(i.exportname),
      subject: String(i.subject),
    }));
  }

  // --- disks of a VM ----------------------------------------------------------------------

  /** `VM.get_allowed_VBD_devices`: the device numbers free on the VM ("1", "2", …), lowest first. */
  async allowedVbdDevices(vm: Ref): Promise<string[]> {
    return this.call<string[]>('VM.get_allowed_VBD_devices', vm);
  }

  /**
   * `VBD.create`: connects `vdi` to `vm` as device `userdevice`, unplugged (XAPI plugs it when
   * the VM starts; plugVbd hotplugs it into a running VM). Defaults: a read-write, non-bootable
   * disk. XAPI refuses a device in use (DEVICE_ALREADY_EXISTS) and a read-only VDI in RW mode
   * (VDI_READONLY).
   *
   * @example await xapi.createVbd({ vm, vdi, userdevice: '1' }) // → 'OpaqueRef:…'
   */
  async createVbd(spec: NewVbd): Promise<Ref> {
    return this.call<Ref>('VBD.create', {
      VM: spec.vm,
      VDI: spec.vdi,
      userdevice: spec.userdevice,
      bootable: spec.bootable ?? false,
      mode: spec.mode ?? 'RW',
      type: spec.type ?? 'Disk',
      unpluggable: true,
      empty: false,
      other_config: spec.otherConfig ?? {},
      qos_algorithm_type: '',
      qos_algorithm_params: {},
    });
  }

  /** `VBD.plug`: hotplugs the VBD into its running VM; VM_BAD_POWER_STATE unless the VM runs. */
  async plugVbd(vbd: Ref): Promise<void> {
    await this.call('VBD.plug', vbd);
  }

  /** `VBD.unplug`: detaches the VBD from its running VM (the guest must let go of the disk). */
  async unplugVbd(vbd: Ref): Promise<void> {
    await this.call('VBD.unplug', vbd);
  }

  /** `VBD.destroy`: removes an unplugged VBD; the VDI stays. */
  async destroyVbd(vbd: Ref): Promise<void> {
    await this.call('VBD.destroy', vbd);
  }

  /** The pool's hosts, master first. */
  async hosts(): Promise<HostRecord[]> {
    const hosts = await this.getAllRecords('host');
    const master = this.pool.master;
    return [...hosts].sort((a, b) => Number(b.$ref === master) - Number(a.$ref === master));
  }

}
