import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { VHD_BLOCK_SIZE, type BlockSource } from '../../runtime/formats/block-source.js';
import { rawStream } from '../../runtime/formats/raw.js';
import { TAR_END, TarFormat, encodeTarHeader, tarEntry, tarPadding } from '../../runtime/formats/tar.js';
import { vhdStream } from '../../runtime/formats/vhd.js';
import { XvaChecksum, xvaStream } from '../../runtime/formats/xva.js';
import { dumpDatabase } from './dbdump.js';
import { PatternDisk, type SimDisk } from './disks.js';
import { ApiError, toApiError } from './errors.js';
import type { FaultAction, FaultSubject, Faults, HttpHandlerName } from './faults.js';
import { NULL_REF } from './ids.js';
import { buildOva } from './ova.js';
import type { HostInfo, SimState } from './state.js';
import { Meter, compressionOf, compressor, cutConnection, trackedSource, type Compression, type CutReason } from './transfer.js';

/**
 * XAPI's HTTP handlers (export.ml, export_raw_vdi.ml, pool_db_backup.ml, xapi_host_backup.ml,
 * xapi_http.ml), as the simulator serves them:
 *
 * - credentials: `session_id` (cookie, then query, as `lookup_param_of_req`), else HTTP Basic
 *   (a temporary session, logged out afterwards); none or invalid → 401, and a given `task_id`
 *   fails with SESSION_AUTHENTICATION_FAILED (xapi_http.ml `with_context`);
 * - `task_id` names the task to drive (progress, then success with result "" or failure with
 *   error_info); without it a task is made for the transfer and destroyed at the end;
 * - an XAPI error before streaming (bad ref, VM_BAD_POWER_STATE, OPERATION_BLOCKED…) fails the
 *   task and answers 500, as Http_svr does for a handler raising Server_error;
 * - a disk on a local SR of another host is answered with 302 to that host;
 * - streams are 200 with `Connection: close`, a `task-id` header, no Content-Length and no
 *   chunked encoding: the body ends when the connection closes.
 * A client that goes away mid-stream fails the task with INTERNAL_ERROR (XAPI sees EPIPE).
 */

export interface Transfer {
  id: number;
  handler: HttpHandlerName;
  /** Name of the answering host. */
  host: string;
  /** name_label and uuid of the exported VM (or snapshot) / VDI. */
  vm?: string;
  vmUuid?: string;
  vdi?: string;
  vdiUuid?: string;
  format?: string;
  compression?: Compression;
  task?: string;
  bytes: number;
  status: 'running' | 'done' | 'failed' | 'aborted';
  error?: string[];
  startedAt: Date;
  finishedAt?: Date;
}

export interface HttpEnv {
  readonly state: SimState;
  readonly faults: Faults;
  readonly closed: Promise<void>;
  readonly transfers: Transfer[];
  /** Base URL of a host (scheme, address, port), for redirects. */
  hostUrl(host: HostInfo): string;
  /** Handlers of PUT /import and /import_raw_vdi. */
  readonly putHandlers: Partial<Record<HttpHandlerName, PutHandler>>;
}

const SERVER = 'xapi/23.1';

function params(req: IncomingMessage, url: URL): Map<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of url.searchParams) if (!out.has(k)) out.set(k, v);
  // Cookies win over the query in XAPI's lookup.
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq === -1) continue;
    out.set(decodeURIComponent(part.slice(0, eq).trim()), decodeURIComponent(part.slice(eq + 1).trim()));
  }
  return out;
}

function html(res: ServerResponse, status: number, title: string, extra: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = `<html><body><h1>HTTP ${status} ${title}</h1></body></html>`;
  res.writeHead(status, { 'content-type': 'text/html', 'content-length': Buffer.byteLength(body), connection: 'close', 'cache-control': 'no-cache, no-store', ...extra });
  res.end(body);
}

/** One handler invocation: its credentials, task and transfer record. */
class Call {
  session: string | undefined;
  private temporarySession = false;
  task: string | undefined;
  private ownTask = false;
  transfer: Transfer | undefined;

  constructor(
    readonly env: HttpEnv,
    readonly host: HostInfo,
    readonly name: HttpHandlerName,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly q: Map<string, string>,
  ) {}

  get state(): SimState {
    return this.env.state;
  }

  /** Checks credentials; answers 401 (failing a given task) and returns false when refused. */
  authenticate(): boolean {
    const { state } = this;
    const sid = this.q.get('session_id');
    if (sid !== undefined) {
      if (state.db.has('session', sid)) this.session = sid;
    } else {
      const auth = this.req.headers.authorization;
      const m = auth === undefined ? null : /^Basic\s+(\S+)$/i.exec(auth);
      if (m !== null) {
        const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        const user = colon === -1 ? decoded : decoded.slice(0, colon);
        const password = colon === -1 ? '' : decoded.slice(colon + 1);
        if (state.checkCredentials(user, password)) {
          this.session = state.createSession(user, `http-basic ${this.name}`, this.host.ref);
          this.temporarySession = true;
        }
      }
    }
    if (this.session === undefined) {
      this.unauthorised();
      return false;
    }
    return true;
  }

  unauthorised(): void {
    const task = this.q.get('task_id');
    if (task !== undefined && this.state.db.has('task', task)) this.state.failTask(task, new ApiError('SESSION_AUTHENTICATION_FAILED', []));
    html(this.res, 401, 'unauthorised', { 'www-authenticate': 'Basic realm="xapi"' });
  }

  /** The task to drive: the caller's `task_id`, or one of our own. */
  startTask(label: string): string {
    const given = this.q.get('task_id');
    if (given !== undefined && this.state.db.has('task', given)) this.task = given;
    else {
      this.task = this.state.createTask(label, '');
      this.ownTask = true;
    }
    return this.task;
  }

  begin(extra: Partial<Transfer>): Transfer {
    const transfer: Transfer = { id: this.env.transfers.length + 1, handler: this.name, host: this.host.name, bytes: 0, status: 'running', startedAt: new Date(), ...extra };
    if (this.task !== undefined) transfer.task = this.task;
    this.env.transfers.push(transfer);
    this.transfer = transfer;
    return transfer;
  }

  /** A failure before the body: fail the task, answer 500. */
  failEarly(error: ApiError, status = 500): void {
    if (this.task !== undefined) this.state.failTask(this.task, error);
    else {
      const given = this.q.get('task_id');
      if (given !== undefined && this.state.db.has('task', given)) this.state.failTask(given, error);
    }
    if (this.transfer !== undefined) this.finish('failed', error);
    html(this.res, status, status === 404 ? 'not found' : 'internal server error');
  }

  finish(status: Transfer['status'], error?: ApiError): void {
    const t = this.transfer;
    if (t !== undefined && t.status === 'running') {
      t.status = status;
      t.finishedAt = new Date();
      if (error !== undefined) t.error = error.description;
    }
  }

  cleanup(): void {
    if (this.temporarySession && this.session !== undefined) this.state.destroySession(this.session, 'logout');
    // Our own task lives as long as the request, as in XAPI's exec_with_new_task.
    if (this.ownTask && this.task !== undefined && this.state.db.has('task', this.task)) this.state.db.destroy('task', this.task);
  }

  /** Applies faults that act before any byte is sent; returns false when the call is over. */
  earlyFault(fault: FaultAction | undefined): boolean {
    if (fault === undefined) return true;
    if (fault.kind === 'http-500') {
      this.failEarly(new ApiError('INTERNAL_ERROR', ['simulated HTTP 500']));
      return false;
    }
    if (fault.kind === 'error') {
      this.failEarly(new ApiError(fault.code, fault.params));
      return false;
    }
    if (fault.kind === 'invalidate-sessions') {
      this.state.invalidateAllSessions();
      this.finish('failed', new ApiError('SESSION_INVALID', [this.session ?? '']));
      this.unauthorised();
      return false;
    }
    return true;
  }

  /** 302 to the host that can reach this SR, if it is not this one. */
  redirectForSr(sr: string): boolean {
    const owner = this.state.hostOfSr(sr);
    if (owner === undefined || owner === this.host.ref) return false;
    const target = this.state.hosts.find((h) => h.ref === owner)!;
    const url = new URL(this.req.url ?? '/', 'http://x');
    this.res.writeHead(302, { location: `${this.env.hostUrl(target)}${url.pathname}${url.search}`, 'content-length': 0, connection: 'close' });
    this.res.end();
    return true;
  }

  /**
   * Streams `body` as the 200 response, through compression and the fault meter, then completes
   * or fails the task. Resolves when the transfer is over, whatever its outcome.
   */
  async stream(body: Readable, headers: Record<string, string>, opts: { compression?: Compression; fault?: FaultAction } = {}): Promise<void> {
    const { state, res } = this;
    const task = this.task!;
    res.useChunkedEncodingByDefault = false;
    res.removeHeader('transfer-encoding');
    res.shouldKeepAlive = false;
    res.writeHead(200, { 'task-id': task, server: SERVER, connection: 'close', 'cache-control': 'no-cache, no-store', ...headers });
    res.flushHeaders();
    const meter = new Meter(opts.fault, () => state.isCancelling(task), this.env.closed);
    let cut: CutReason | undefined;
    meter.on('cut', (reason: CutReason) => {
      cut = reason;
      void cutConnection(res);
    });
    const counter = setInterval(() => {
      if (this.transfer !== undefined) this.transfer.bytes = meter.bytes;
    }, 50);
    const compress = opts.compression !== undefined && opts.compression !== 'none' ? compressor(opts.compression) : undefined;
    let failure: ApiError | undefined;
    try {
      if (compress === undefined) await pipeline(body, meter, res);
      else await pipeline(body, compress, meter, res);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      const clientGone = code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'EPIPE' || code === 'ECONNRESET';
      if (cut === undefined) {
        failure = clientGone ? new ApiError('INTERNAL_ERROR', ['Unix.Unix_error(Unix.EPIPE, "write", "")']) : new ApiError('INTERNAL_ERROR', [(error as Error).message]);
        if (!clientGone) res.destroy();
      }
    } finally {
      clearInterval(counter);
      if (this.transfer !== undefined) this.transfer.bytes = meter.bytes;
    }
    if (cut !== undefined) {
      if (cut.kind === 'cancelled') {
        state.cancelledTask(task);
        this.finish('aborted', new ApiError('TASK_CANCELLED', [task]));
      } else {
        const error = cut.kind === 'reset' ? new ApiError('INTERNAL_ERROR', ['Unix.Unix_error(Unix.ECONNRESET, "write", "")']) : new ApiError(cut.code, cut.params);
        state.failTask(task, error);
        this.finish('failed', error);
      }
      if (!res.destroyed) await cutConnection(res);
      return;
    }
    if (failure !== undefined) {
      state.failTask(task, failure);
      this.finish('aborted', failure);
      return;
    }
    if (opts.fault?.kind === 'task-failure') {
      const error = new ApiError(opts.fault.code, opts.fault.params);
      state.failTask(task, error);
      this.finish('failed', error);
      return;
    }
    state.completeTask(task, '');
    this.finish('done');
  }
}

function resolveRef(state: SimState, cls: 'VM' | 'VDI', value: string | undefined, byUuid: string | undefined): string {
  if (value !== undefined) {
    if (state.db.has(cls, value)) return value;
    if (byUuid === undefined) {
      // export_raw_vdi accepts a uuid in `vdi` too.
      const row = state.db.byUuid(cls, value);
      if (row !== undefined) return row.ref;
      if (value.startsWith('OpaqueRef:')) throw new ApiError('HANDLE_INVALID', [cls, value]);
      throw new ApiError('UUID_INVALID', [cls, value]);
    }
    throw new ApiError('HANDLE_INVALID', [cls, value]);
  }
  if (byUuid !== undefined) {
    const row = state.db.byUuid(cls, byUuid);
    if (row === undefined) throw new ApiError('UUID_INVALID', [cls, byUuid]);
    return row.ref;
  }
  throw new ApiError('INTERNAL_ERROR', [`missing parameter ${cls === 'VM' ? 'ref or uuid' : 'vdi'}`]);
}

function subjectOfVm(state: SimState, vm: string): FaultSubject {
  const vdis = state.db.reverse('VBD', 'VM', vm).map((v) => state.db.field<string>('VBD', v, 'VDI')).filter((v) => v !== NULL_REF);
  return { vms: [vm], vdis };
}

function subjectOfVdi(state: SimState, vdi: string): FaultSubject {
  return { vms: state.vmsOfVdi(vdi), vdis: [vdi] };
}

/** A VDI's bytes; a cbt_metadata VDI (data destroyed) fails with VDI_INCOMPATIBLE_TYPE. */
function contentOf(state: SimState, vdi: string): BlockSource {
  return state.readableContent(vdi);
}

/** `/export`: the VM as an XVA (export.ml `handler`). */
async function exportVm(call: Call): Promise<void> {
  const { state, q } = call;
  let vm: string;
  try {
    vm = resolveRef(state, 'VM', q.get('ref'), q.get('uuid'));
  } catch (error) {
    call.failEarly(toApiError(error));
    return;
  }
  const compression = compressionOf(q.get('use_compression') ?? null);
  const ova = buildOva(state, vm, { hostname: state.db.field<string>('host', call.host.ref, 'hostname') });
  // export.ml checks SR reachability first, in a task of its own: a redirect leaves task_id alone.
  for (const d of ova.disks) if (call.redirectForSr(state.db.field<string>('VDI', d.vdi, 'SR'))) return;
  const fault = call.env.faults.forHttp('export', subjectOfVm(state, vm));
  call.startTask('VM.export');
  call.begin({ vm: state.db.field<string>('VM', vm, 'name_label'), vmUuid: state.db.field<string>('VM', vm, 'uuid'), compression, format: 'xva' });
  if (!call.earlyFault(fault)) return;
  const task = call.task!;
  try {
    await state.withVmOperation(vm, 'export', task, async () => {
      state.setTaskProgress(task, 0);
      const sizes = ova.disks.map((d) => state.db.field<number>('VDI', d.vdi, 'virtual_size'));
      const total = sizes.reduce((a, b) => a + b, 0);
      const reached = ova.disks.map(() => 0);
      const disks = ova.disks.map((d, i) => ({
        ref: d.id,
        source: trackedSource(contentOf(state, d.vdi), (end) => {
          reached[i] = Math.max(reached[i]!, end);
          if (total > 0) state.setTaskProgress(task, reached.reduce((a, b) => a + b, 0) / total);
        }),
      }));
      const body = xvaStream({ ovaXml: ova.xml, disks, checksum: XvaChecksum.xxhash });
      await call.stream(body, { 'content-type': 'application/octet-stream', 'content-disposition': 'attachment; filename="export.xva"' }, { compression, fault });
    });
  } catch (error) {
    call.failEarly(toApiError(error));
  }
}

/** `/export_metadata`: a tar holding only ova.xml, with Content-Length (export.ml `metadata_handler`). */
async function exportMetadata(call: Call): Promise<void> {
  const { state, q, res } = call;
  let vm: string;
  try {
    vm = resolveRef(state, 'VM', q.get('ref'), q.get('uuid'));
    if (state.db.field<boolean>('VM', vm, 'is_a_snapshot')) throw new ApiError('OPERATION_NOT_ALLOWED', ['Exporting metadata of a snapshot is not allowed']);
  } catch (error) {
    call.failEarly(toApiError(error));
    return;
  }
  const fault = call.env.faults.forHttp('export_metadata', subjectOfVm(state, vm));
  const task = call.startTask('VM.export_metadata');
  call.begin({ vm: state.db.field<string>('VM', vm, 'name_label'), vmUuid: state.db.field<string>('VM', vm, 'uuid'), format: 'tar' });
  if (!call.earlyFault(fault)) return;
  try {
    state.assertVmOperation(vm, 'metadata_export');
  } catch (error) {
    call.failEarly(toApiError(error));
    return;
  }
  const withSnapshots = (q.get('export_snapshots') ?? 'true') === 'true';
  const ova = buildOva(state, vm, { hostname: state.db.field<string>('host', call.host.ref, 'hostname'), withSnapshotMetadata: withSnapshots, preservePowerState: true });
  const body = Buffer.concat([...tarEntry('ova.xml', Buffer.from(ova.xml, 'utf8'), TarFormat.xapi), TAR_END]);
  res.writeHead(200, {
    'task-id': task,
    server: SERVER,
    'content-type': 'application/octet-stream',
    'content-length': body.length,
    'content-disposition': 'attachment; filename="export.xva"',
    connection: 'close',
  });
  res.end(body);
  if (call.transfer !== undefined) call.transfer.bytes = body.length;
  state.completeTask(task, '');
  call.finish('done');
}

/** A differencing view: null where the disk equals its base (vhd-tool `relative_to`). */
function diffSource(disk: BlockSource, base: BlockSource): BlockSource {
  return {
    size: disk.size,
    async read(offset, length) {
      const [a, b] = await Promise.all([disk.read(offset, length), offset + length <= base.size ? base.read(offset, length) : Promise.resolve(Buffer.alloc(0))]);
      if (a === null && b === null) return null;
      const x = a ?? Buffer.alloc(length);
      const y = b ?? Buffer.alloc(length);
      return x.equals(y) ? null : x;
    },
  };
}

/** `/export_raw_vdi`: one disk as raw or VHD (export_raw_vdi.ml). */
async function exportRawVdi(call: Call): Promise<void> {
  const { state, q } = call;
  let vdi: string;
  let base: string | undefined;
  try {
    vdi = resolveRef(state, 'VDI', q.get('vdi'), undefined);
    if (q.has('base')) base = resolveRef(state, 'VDI', q.get('base'), undefined);
  } catch (error) {
    call.failEarly(toApiError(error));
    return;
  }
  const format = (q.get('format') ?? 'raw').toLowerCase();
  if (call.redirectForSr(state.db.field<string>('VDI', vdi, 'SR'))) return;
  try {
    contentOf(state, vdi);
    if (base !== undefined) contentOf(state, base);
  } catch (error) {
    call.failEarly(toApiError(error));
    return;
  }
  const fault = call.env.faults.forHttp('export_raw_vdi', subjectOfVdi(state, vdi));
  const task = call.startTask('VDI.export_raw_vdi');
  const uuid = state.db.field<string>('VDI', vdi, 'uuid');
  call.begin({ vdi: state.db.field<string>('VDI', vdi, 'name_label'), vdiUuid: uuid, format });
  if (format !== 'raw' && format !== 'vhd') {
    call.failEarly(new ApiError('INTERNAL_ERROR', [`Unknown format ${q.get('format')}`]), 404);
    return;
  }
  if (!call.earlyFault(fault)) return;
  const size = state.db.field<number>('VDI', vdi, 'virtual_size');
  const content = contentOf(state, vdi);
  let source = trackedSource(content, (end) => state.setTaskProgress(task, size > 0 ? end / size : 1));
  let body: Readable;
  if (format === 'vhd') {
    const parent = base === undefined ? undefined : { uuid: state.db.field<string>('VDI', base, 'uuid'), timestamp: state.clock() };
    if (base !== undefined) source = diffSource(source, contentOf(state, base));
    // Our disks know where their data is: spare vhdStream its allocation pass.
    const hint = base === undefined && 'hasData' in content ? (content as SimDisk) : undefined;
    const allocated = hint === undefined ? undefined : (block: number) => hint.hasData(block * VHD_BLOCK_SIZE, Math.min(VHD_BLOCK_SIZE, size - block * VHD_BLOCK_SIZE));
    body = vhdStream(source, { uuid, timestamp: state.clock(), ...(parent === undefined ? {} : { parent }), ...(allocated === undefined ? {} : { allocated }) });
  } else {
    body = rawStream(source);
  }
  await call.stream(
    body,
    { 'content-type': format === 'vhd' ? 'application/vhd' : 'application/octet-stream', 'content-disposition': `attachment; filename="${uuid}.${format}"` },
    { fault },
  );
}

/** `/pool/xmldbdump`: the database as XML (pool_db_backup.ml). */
async function xmlDbDump(call: Call): Promise<void> {
  const fault = call.env.faults.forHttp('xmldbdump', { vms: [], vdis: [] });
  call.startTask('pool.dump_database');
  call.begin({ format: 'xml' });
  if (!call.earlyFault(fault)) return;
  const body = Readable.from([Buffer.from(dumpDatabase(call.state), 'utf8')]);
  await call.stream(body, { 'content-type': 'application/octet-stream' }, { fault });
}

/** The bytes of a host's `/host_backup`: a gzipped tar, the same every time for a host. */
export async function* hostBackupParts(state: SimState, host: HostInfo): AsyncGenerator<Buffer> {
  const hostname = state.db.field<string>('host', host.ref, 'hostname');
  const dom0 = state.db.field<string>('host', host.ref, 'control_domain');
  const inventory = [
    `PRODUCT_BRAND='${state.spec.product.brand}'`,
    `PRODUCT_VERSION='${state.spec.product.version}'`,
    `BUILD_NUMBER='${state.spec.product.build_number}'`,
    `INSTALLATION_UUID='${host.uuid}'`,
    `CONTROL_DOMAIN_UUID='${state.db.has('VM', dom0) ? state.db.field<string>('VM', dom0, 'uuid') : ''}'`,
    '',
  ].join('\n');
  yield* tarEntry('etc/xensource-inventory', Buffer.from(inventory), TarFormat.ustar);
  yield* tarEntry('etc/hostname', Buffer.from(`${hostname}\n`), TarFormat.ustar);
  const filler = new PatternDisk(host.backupSize, `${state.spec.seed}/host-backup/${host.uuid}`);
  yield encodeTarHeader({ name: 'var/lib/sim/state.bin', size: host.backupSize, format: TarFormat.ustar });
  for (let offset = 0; offset < host.backupSize; offset += 1 << 20) {
    yield filler.read(offset, Math.min(1 << 20, host.backupSize - offset))!;
  }
  yield tarPadding(host.backupSize);
  yield TAR_END;
}

/** `/host_backup`: the answering host's dom0 backup (xapi_host_backup.ml). */
async function hostBackup(call: Call): Promise<void> {
  const fault = call.env.faults.forHttp('host_backup', { vms: [], vdis: [] });
  call.startTask('host.backup');
  call.begin({ format: 'tgz' });
  if (!call.earlyFault(fault)) return;
  const body = Readable.from(hostBackupParts(call.state, call.host)).pipe(zlib.createGzip({ level: 1 }));
  await call.stream(body, { 'content-type': 'application/octet-stream' }, { fault });
}

const GET_HANDLERS: Partial<Record<HttpHandlerName, (call: Call) => Promise<void>>> = {
  export: exportVm,
  export_metadata: exportMetadata,
  export_raw_vdi: exportRawVdi,
  xmldbdump: xmlDbDump,
  host_backup: hostBackup,
};

/** Maps a request path to a handler name (trailing slashes ignored). */
export function handlerForPath(method: string, pathname: string): HttpHandlerName | undefined {
  const path = pathname.replace(/\/+$/, '') || '/';
  if (method === 'GET' || method === 'HEAD') {
    switch (path) {
      case '/export':
        return 'export';
      case '/export_metadata':
        return 'export_metadata';
      case '/export_raw_vdi':
        return 'export_raw_vdi';
      case '/pool/xmldbdump':
        return 'xmldbdump';
      case '/host_backup':
        return 'host_backup';
    }
  }
  if (method === 'PUT') {
    if (path === '/import') return 'import';
    if (path === '/import_raw_vdi') return 'import_raw_vdi';
  }
  return undefined;
}

/** A handler for one of the PUT paths (see import.ts). */
export type PutHandler = (call: Call) => Promise<void>;

export type { Call };

/** Serves one handler request. Never throws. */
export async function serveHttpHandler(env: HttpEnv, host: HostInfo, name: HttpHandlerName, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  const call = new Call(env, host, name, req, res, params(req, url));
  try {
    if (!call.authenticate()) return;
    const handler = GET_HANDLERS[name] ?? env.putHandlers[name];
    if (handler === undefined) {
      html(res, 404, 'not found');
      return;
    }
    await handler(call);
  } catch (error) {
    call.failEarly(toApiError(error));
  } finally {
    call.cleanup();
  }
}
