import { rm } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import type { BlockSource } from '../../runtime/formats/block-source.js';
import { XmlRpcParseError, decodeMethodCall, encodeMethodResponse, escapeXml, type XmlRpcValue } from '../../runtime/formats/xmlrpc.js';
import { CLASS_NAMES, type ClassName } from './datamodel.js';
import type { ChurnPattern } from './disks.js';
import { ApiError } from './errors.js';
import { FaultSpec, Faults, type Fault, type FaultSpecInput, type FaultSubject } from './faults.js';
import { handlerForPath, serveHttpHandler, type HttpEnv, type Transfer } from './http-handlers.js';
import { IMPORT_HANDLERS } from './import.js';
import { parsePoolSpec, type PoolSpec, type PoolSpecInput } from './pool-spec.js';
import { Rpc, canonicalMethodName, type RpcOutcome } from './rpc.js';
import { SimState, type HostInfo, type SessionInfo } from './state.js';
import { createNbdServer, type NbdConnection } from './nbd.js';
import { makeTls, type TlsMaterial } from './tls.js';
import { readBody } from './transfer.js';
import { toJson } from './wire.js';

/**
 * Options of `startSimulator`.
 *
 * @example
 *   const sim = await startSimulator({ pool: { credentials: { user: 'root', password: 'pw' }, hosts: [{ name_label: 'h1' }], srs: [...], vms: [...] } });
 */
export interface SimulatorOptions {
  /** The pool to serve: a validated spec or raw input (validated here, PoolSpecError if bad). */
  pool: PoolSpec | PoolSpecInput;
  /** Port shared by every host address; 0 (default) picks a free one. */
  port?: number;
  /** Serve TLS with a generated CA (see `caFile`). */
  https?: boolean;
  /** Addresses of the hosts, in order (overriding the pool file's; loopback only). */
  bind?: string[];
  /** Where the CA and server certificate are written (default a new temp dir). */
  tlsDir?: string;
  /** Delay before SESSION_AUTHENTICATION_FAILED (XAPI: 5000 ms); default 0. */
  authFailureDelayMs?: number;
  /** Clock for snapshot times, task times… (tests); default the system clock. */
  clock?: () => Date;
  /** Port of every host's NBD server (XAPI: 10809); 0 (default) picks a free one. */
  nbdPort?: number;
}

export interface SimHost {
  name: string;
  address: string;
  url: string;
  ref: string;
  uuid: string;
}

/** A record as tests see it: plain values (Date for date-times), plus its ref. */
export type SimRecord = Record<string, unknown> & { ref: string };

/** Read access to the simulated pool, for assertions. */
export interface SimInspector {
  /** Every record of a class, in creation order. */
  records(cls: ClassName): SimRecord[];
  /** One record by ref or uuid, or undefined. */
  record(cls: ClassName, refOrUuid: string): SimRecord | undefined;
  /** Every VM record: VMs, snapshots, templates, control domains. */
  vms(): SimRecord[];
  /** The VM with this name_label, uuid or ref (not a snapshot or template); throws if none or several. */
  vm(nameOrUuidOrRef: string): SimRecord;
  /** Snapshot VMs, optionally only those of one VM (name_label, uuid or ref). */
  snapshots(of?: string): SimRecord[];
  vdis(): SimRecord[];
  tasks(): SimRecord[];
  /** Sessions not logged out (nor invalidated). */
  sessions(): SessionInfo[];
  liveSessions(): number;
  sessionStats(): { created: number; loggedOut: number; invalidated: number; live: number };
  /** HTTP transfers (exports, imports, dumps, host backups), oldest first. */
  transfers(handler?: Transfer['handler']): Transfer[];
  /** Transfers of a handler that completed successfully. */
  exportCount(handler?: Transfer['handler']): number;
  /** A VDI's content (ref or uuid), to compare with what a client wrote or read. */
  disk(vdiRefOrUuid: string): BlockSource;
  /** The database generation (bumps on every change, sessions, tasks and event.inject included). */
  generation(): number;
  /** Changes to the pool's objects (not sessions, tasks or event.inject): 0 more means read-only. */
  mutations(): number;
  /** RPC calls received, by transport and by method name (as called). */
  rpcCalls(): { xmlrpc: number; jsonrpc: number; byMethod: Record<string, number> };
  /** A JSON-able summary (what GET /_sim/state returns). */
  summary(): Record<string, unknown>;
  /** Changes fields directly (emits events), e.g. to play "someone else changed it". */
  update(cls: ClassName, refOrUuid: string, fields: Record<string, unknown>): void;
  /**
   * Guest writes: rewrites `percent` % of the 64 KiB blocks of each disk of the VM (name,
   * uuid or ref) with new deterministic bytes, tracked by CBT, `scattered` (default) or
   * `clustered` in 1 MiB-aligned runs. Returns the blocks written per VDI uuid.
   */
  churn(vm: string, percent: number, pattern?: ChurnPattern): Record<string, number[]>;
  /** NBD connections, oldest first. */
  nbdConnections(): NbdConnection[];
}

/** Fault injection (see faults.ts for what each action does). */
export interface SimFaults {
  add(spec: FaultSpecInput): string;
  remove(id: string): boolean;
  clear(): void;
  list(): Fault[];
  /** Drops every session now (SESSION_INVALID for their next call). Returns how many. */
  invalidateSessions(): number;
}

export interface Simulator {
  /** URL of the pool master, e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  readonly port: number;
  readonly hosts: SimHost[];
  /** PEM file of the CA to trust, with `https`. */
  readonly caFile?: string;
  /** Port of the NBD server on every host address. */
  readonly nbdPort: number;
  /** PEM file of the CA that signed the NBD server's certificate (`caFile` with `https`). */
  nbdCaFile(): Promise<string>;
  readonly credentials: { user: string; password: string };
  readonly state: SimInspector;
  readonly faults: SimFaults;
  close(): Promise<void>;
}

const MAX_RPC_BODY = 64 << 20;

function normaliseAddress(address: string | undefined): string | undefined {
  return address?.startsWith('::ffff:') ? address.slice(7) : address;
}

function replyHtml(res: ServerResponse, status: number, message: string): void {
  const body = `<html><body><h1>HTTP ${status} ${status === 500 ? 'internal server error' : 'error'}</h1>${escapeXml(message)}</body></html>`;
  res.writeHead(status, { 'content-type': 'text/html', 'content-length': Buffer.byteLength(body), connection: 'close', 'cache-control': 'no-cache, no-store' });
  res.end(body);
}

function replyJson(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value, (_k, v: unknown) => (v === Infinity ? 'Infinity' : v));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function plain(record: Record<string, unknown>, ref: string): SimRecord {
  return { ...record, ref };
}

/** Starts a simulated pool; resolves once every host accepts connections. */
export async function startSimulator(options: SimulatorOptions): Promise<Simulator> {
  const input = options.pool as PoolSpecInput;
  // Bound addresses are the hosts' addresses (HOST_IS_SLAVE and redirects name them).
  const bound = options.bind === undefined ? input : { ...input, hosts: input.hosts.map((h, i) => ({ ...h, address: options.bind![i] ?? h.address })) };
  const spec = parsePoolSpec(bound);
  const state = new SimState(spec, options.clock);
  let resolveClosed!: () => void;
  const closed = new Promise<void>((resolve) => (resolveClosed = resolve));
  const transfers: Transfer[] = [];

  const faults = new Faults(
    (subject: FaultSubject, f: FaultSpec) =>
      (f.vm === undefined || subject.vms.some((v) => state.vmMatches(v, f.vm!))) && (f.vdi === undefined || subject.vdis.some((v) => state.vdiMatches(v, f.vdi!))),
    canonicalMethodName,
  );
  const addresses = state.hosts.map((h) => h.address);
  const hostsByAddress = new Map(state.hosts.map((h, i) => [addresses[i]!, h]));
  const tls = options.https === true ? await makeTls(addresses, options.tlsDir) : undefined;
  // NBD over TLS needs a certificate even without https: made on first use.
  let nbdTls: Promise<TlsMaterial> | undefined = tls === undefined ? undefined : Promise.resolve(tls);
  const nbdTlsMaterial = () => (nbdTls ??= makeTls(addresses));
  let nbdPort = options.nbdPort ?? 0;
  const nbdConnections: NbdConnection[] = [];
  const rpc = new Rpc(state, faults, closed, {
    authFailureDelayMs: options.authFailureDelayMs ?? 0,
    nbd: {
      get port() {
        return nbdPort;
      },
      cert: async () => (await nbdTlsMaterial()).cert,
      subject: 'localhost',
    },
  });
  const scheme = tls === undefined ? 'http' : 'https';
  let port = options.port ?? 0;
  const hostUrl = (h: HostInfo) => `${scheme}://${addresses[state.hosts.indexOf(h)]}:${port}`;
  const env: HttpEnv = { state, faults, closed, transfers, hostUrl, putHandlers: IMPORT_HANDLERS };

  const calls = { xmlrpc: 0, jsonrpc: 0, byMethod: {} as Record<string, number> };
  const count = (transport: 'xmlrpc' | 'jsonrpc', method: string) => {
    calls[transport] += 1;
    calls.byMethod[method] = (calls.byMethod[method] ?? 0) + 1;
  };
  const inspector = makeInspector(state, transfers, faults, calls, nbdConnections);
  const simFaults: SimFaults = {
    add: (s) => faults.add(s),
    remove: (id) => faults.remove(id),
    clear: () => faults.clear(),
    list: () => faults.list(),
    invalidateSessions: () => state.invalidateAllSessions(),
  };

  const handle = (fallback: HostInfo) => (req: IncomingMessage, res: ServerResponse) => {
    const host = hostsByAddress.get(normaliseAddress(req.socket.localAddress) ?? '') ?? fallback;
    void route(host, req, res).catch((error: unknown) => {
      if (!res.headersSent) replyHtml(res, 500, error instanceof Error ? error.message : String(error));
      else res.destroy();
    });
  };

  const route = async (host: HostInfo, req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://sim');
    const method = req.method ?? 'GET';
    if (url.pathname.startsWith('/_sim/')) return control(req, res, url);
    if (method === 'POST') {
      if (url.pathname === '/jsonrpc') return jsonRpc(host, req, res);
      return xmlRpc(host, req, res);
    }
    const handler = handlerForPath(method, url.pathname);
    if (handler !== undefined) return serveHttpHandler(env, host, handler, req, res, url);
    replyHtml(res, 404, `no handler for ${method} ${url.pathname}`);
  };

  const transportOutcome = (res: ServerResponse, outcome: RpcOutcome): boolean => {
    if (outcome.kind === 'reset') {
      res.socket?.destroy();
      return true;
    }
    if (outcome.kind === 'http-500') {
      replyHtml(res, 500, 'simulated failure');
      return true;
    }
    return false;
  };

  const xmlRpc = async (host: HostInfo, req: IncomingMessage, res: ServerResponse): Promise<void> => {
    let call: { methodName: string; params: XmlRpcValue[] };
    try {
      call = decodeMethodCall((await readBody(req, MAX_RPC_BODY)).toString('utf8'));
    } catch (error) {
      replyHtml(res, 500, error instanceof XmlRpcParseError ? `Xmlrpc.Parse_error: ${error.message}` : String(error));
      return;
    }
    count('xmlrpc', call.methodName);
    const outcome = await rpc.call(host, call.methodName, call.params);
    if (transportOutcome(res, outcome)) return;
    let value: XmlRpcValue;
    if (outcome.kind === 'value') value = outcome.bare === true ? outcome.value : { Status: 'Success', Value: outcome.value };
    else value = { Status: 'Failure', ErrorDescription: (outcome as { error: ApiError }).error.description };
    const body = encodeMethodResponse(value, { int64: 'string' });
    res.writeHead(200, { 'content-type': 'text/xml', 'content-length': Buffer.byteLength(body), 'access-control-allow-origin': '*' });
    res.end(body);
  };

  const jsonRpc = async (host: HostInfo, req: IncomingMessage, res: ServerResponse): Promise<void> => {
    let request: { jsonrpc?: unknown; method?: unknown; params?: unknown; id?: unknown };
    try {
      request = JSON.parse((await readBody(req, MAX_RPC_BODY)).toString('utf8')) as typeof request;
      if (request === null || typeof request !== 'object' || typeof request.method !== 'string' || (request.params !== undefined && !Array.isArray(request.params)) || request.id === undefined || request.id === null) {
        throw new Error('Jsonrpc.Malformed_method_request');
      }
    } catch (error) {
      replyHtml(res, 500, (error as Error).message);
      return;
    }
    count('jsonrpc', request.method as string);
    const outcome = await rpc.call(host, request.method as string, (request.params as unknown[] | undefined) ?? []);
    if (transportOutcome(res, outcome)) return;
    const v2 = request.jsonrpc === '2.0';
    let reply: unknown;
    if (outcome.kind === 'value') reply = v2 ? { jsonrpc: '2.0', result: outcome.value, id: request.id } : { result: outcome.value, error: null, id: request.id };
    else {
      const error = (outcome as { error: ApiError }).error;
      reply = v2 ? { jsonrpc: '2.0', error: { code: 1, message: error.code, data: error.params }, id: request.id } : { result: null, error: error.description, id: request.id };
    }
    const body = toJson(reply);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'access-control-allow-origin': '*' });
    res.end(body);
  };

  const control = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const method = req.method ?? 'GET';
    const path = url.pathname.replace(/\/+$/, '');
    try {
      if (method === 'GET' && path === '/_sim/state') return replyJson(res, 200, inspector.summary());
      if (method === 'GET' && path === '/_sim/faults') return replyJson(res, 200, faults.list());
      if (method === 'POST' && path === '/_sim/faults') {
        const body = JSON.parse((await readBody(req, 1 << 20)).toString('utf8')) as unknown;
        const list = Array.isArray(body) ? body : [body];
        const checked = list.map((f, i) => {
          const r = FaultSpec.safeParse(f);
          if (!r.success) throw new Error(`fault ${i}: ${r.error.issues.map((x) => `${x.path.join('.') || '(root)'}: ${x.message}`).join('; ')}`);
          return f as FaultSpecInput;
        });
        return replyJson(res, 201, { ids: checked.map((f) => faults.add(f)) });
      }
      if (method === 'DELETE' && path === '/_sim/faults') {
        faults.clear();
        return replyJson(res, 200, { cleared: true });
      }
      if (method === 'DELETE' && path.startsWith('/_sim/faults/')) {
        const ok = faults.remove(decodeURIComponent(path.slice('/_sim/faults/'.length)));
        return replyJson(res, ok ? 200 : 404, { removed: ok });
      }
      if (method === 'POST' && path === '/_sim/sessions/invalidate') return replyJson(res, 200, { invalidated: state.invalidateAllSessions() });
      if (method === 'POST' && path === '/_sim/churn') {
        const body = JSON.parse((await readBody(req, 1 << 20)).toString('utf8')) as { vm?: unknown; percent?: unknown; pattern?: unknown };
        if (typeof body.vm !== 'string' || typeof body.percent !== 'number') throw new Error('give {"vm": name, uuid or ref, "percent": 0..100, "pattern": "scattered" (default) or "clustered"}');
        return replyJson(res, 200, { written: inspector.churn(body.vm, body.percent, body.pattern as ChurnPattern | undefined) });
      }
      replyJson(res, 404, { error: `no control endpoint ${method} ${path}` });
    } catch (error) {
      replyJson(res, 400, { error: error instanceof Error ? error.message : String(error) });
    }
  };

  const servers: (http.Server | https.Server | net.Server)[] = [];
  const nbdSockets = new Set<net.Socket>();
  const closeServers = async () => {
    for (const socket of nbdSockets) socket.destroy();
    await Promise.all(
      servers.map(
        (s) =>
          new Promise<void>((resolve) => {
            s.close(() => resolve());
            if ('closeAllConnections' in s) s.closeAllConnections();
          }),
      ),
    );
    servers.length = 0;
  };
  for (let attempt = 0; ; attempt++) {
    try {
      for (let i = 0; i < state.hosts.length; i++) {
        const host = state.hosts[i]!;
        const server = tls === undefined ? http.createServer(handle(host)) : https.createServer({ key: tls.key, cert: tls.cert }, handle(host));
        server.requestTimeout = 0;
        servers.push(server);
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(port, addresses[i], () => {
            server.off('error', reject);
            resolve();
          });
        });
        if (port === 0) port = (server.address() as AddressInfo).port;
      }
      for (let i = 0; i < state.hosts.length; i++) {
        const server = createNbdServer({ state, faults, connections: nbdConnections, tlsMaterial: nbdTlsMaterial }, state.hosts[i]!);
        server.on('connection', (socket) => {
          nbdSockets.add(socket);
          socket.once('close', () => nbdSockets.delete(socket));
        });
        servers.push(server);
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(nbdPort, addresses[i], () => {
            server.off('error', reject);
            resolve();
          });
        });
        if (nbdPort === 0) nbdPort = (server.address() as AddressInfo).port;
      }
      break;
    } catch (error) {
      await closeServers();
      if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || (options.port ?? 0) !== 0 || (options.nbdPort ?? 0) !== 0 || attempt >= 5) throw error;
      port = 0;
      nbdPort = 0;
    }
  }

  const hosts = state.hosts.map((h, i) => ({ name: h.name, address: addresses[i]!, url: `${scheme}://${addresses[i]}:${port}`, ref: h.ref, uuid: h.uuid }));
  return {
    url: hosts[0]!.url,
    port,
    hosts,
    ...(tls === undefined ? {} : { caFile: tls.caFile }),
    nbdPort,
    nbdCaFile: async () => (await nbdTlsMaterial()).caFile,
    credentials: { ...spec.credentials },
    state: inspector,
    faults: simFaults,
    async close() {
      resolveClosed();
      await closeServers();
      // A CA and keys made for this run go with it; a --tls-dir the caller chose stays.
      if (tls !== undefined && options.tlsDir === undefined) await rm(tls.dir, { recursive: true, force: true });
      else if (tls === undefined && nbdTls !== undefined) await rm((await nbdTls).dir, { recursive: true, force: true });
    },
  };
}

function makeInspector(
  state: SimState,
  transfers: Transfer[],
  faults: Faults,
  calls: { xmlrpc: number; jsonrpc: number; byMethod: Record<string, number> },
  nbdConnections: NbdConnection[],
): SimInspector {
  const { db } = state;
  const records = (cls: ClassName) => db.all(cls).map((r) => plain(db.record(cls, r.ref), r.ref));
  const find = (cls: ClassName, key: string) => (db.has(cls, key) ? db.get(cls, key) : db.byUuid(cls, key));
  const inspector: SimInspector = {
    records,
    record(cls, key) {
      const row = find(cls, key);
      return row === undefined ? undefined : plain(db.record(cls, row.ref), row.ref);
    },
    vms: () => records('VM'),
    vm(key) {
      const found = records('VM').filter((v) => v.is_a_snapshot !== true && v.is_a_template !== true && (v.ref === key || v.uuid === key || v.name_label === key));
      if (found.length !== 1) throw new Error(`${found.length === 0 ? 'no' : 'several'} VM named ${JSON.stringify(key)}`);
      return found[0]!;
    },
    snapshots(of) {
      const snaps = records('VM').filter((v) => v.is_a_snapshot === true);
      if (of === undefined) return snaps;
      return snaps.filter((s) => {
        const parent = db.get('VM', s.snapshot_of as string);
        return parent !== undefined && (parent.ref === of || parent.fields.uuid === of || parent.fields.name_label === of);
      });
    },
    vdis: () => records('VDI'),
    tasks: () => records('task'),
    sessions: () => state.liveSessions(),
    liveSessions: () => db.count('session'),
    sessionStats: () => ({ ...state.sessionStats, live: db.count('session') }),
    transfers: (handler) => transfers.filter((t) => handler === undefined || t.handler === handler).map((t) => ({ ...t })),
    exportCount: (handler) => transfers.filter((t) => (handler === undefined || t.handler === handler) && t.status === 'done').length,
    disk(key) {
      const row = find('VDI', key);
      if (row === undefined) throw new Error(`no VDI ${key}`);
      const content = state.disks.get(row.ref);
      if (content === undefined) throw new Error(`VDI ${key} has no content`);
      return content;
    },
    generation: () => db.generation,
    mutations: () => db.mutations,
    rpcCalls: () => ({ xmlrpc: calls.xmlrpc, jsonrpc: calls.jsonrpc, byMethod: { ...calls.byMethod } }),
    summary() {
      const brief = (cls: ClassName, fields: string[]) =>
        db.all(cls).map((r) => Object.fromEntries([['ref', r.ref], ...fields.map((f) => [f, r.fields[f]])]));
      return {
        generation: db.generation,
        counts: Object.fromEntries(CLASS_NAMES.map((c) => [c, db.count(c)])),
        vms: brief('VM', ['uuid', 'name_label', 'power_state', 'is_a_snapshot', 'is_a_template', 'is_control_domain', 'snapshot_of']),
        vdis: brief('VDI', ['uuid', 'name_label', 'SR', 'virtual_size', 'is_a_snapshot', 'snapshot_of']),
        tasks: brief('task', ['uuid', 'name_label', 'status', 'progress', 'error_info']),
        sessions: { ...state.sessionStats, live: db.count('session'), list: state.liveSessions() },
        transfers,
        faults: faults.list(),
      };
    },
    churn(key, percent, pattern) {
      const vm = inspector.vm(key);
      const written = state.churn(vm.ref, percent, pattern);
      return Object.fromEntries([...written].map(([vdi, blocks]) => [db.field<string>('VDI', vdi, 'uuid'), blocks]));
    },
    nbdConnections: () => nbdConnections.map((c) => ({ ...c })),
    update(cls, key, fields) {
      const row = find(cls, key);
      if (row === undefined) throw new ApiError('HANDLE_INVALID', [cls, key]);
      db.update(cls, row.ref, fields);
    },
  };
  return inspector;
}
