import { spawn } from 'node:child_process';
import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { readXva } from '../../runtime/formats/xva.js';
import { vhdDiskWrites } from '../../runtime/formats/vhd.js';
import { decodeValue, encodeValue } from '../../runtime/formats/xmlrpc.js';
import { DATAMODEL, type ClassName } from './datamodel.js';
import { MemoryDisk } from './disks.js';
import { ApiError, toApiError } from './errors.js';
import type { FaultAction } from './faults.js';
import type { Call, PutHandler } from './http-handlers.js';
import { NULL_REF } from './ids.js';
import { cutConnection } from './transfer.js';

/**
 * PUT /import and PUT /import_raw_vdi, after import.ml and import_raw_vdi.ml:
 *
 * - a chunked upload is refused with 403 and IMPORT_ERROR_CANNOT_HANDLE_CHUNKED;
 * - otherwise `200` and the `task-id` header go out before the body is read, and the
 *   connection is closed when the import ends; the outcome is the task's;
 * - gzip and zstd input are recognised by their magic numbers (XAPI retries as gzip when the
 *   first block is not a tar header; newer builds also detect zstd);
 * - /import: `sr_id` (or `sr_uuid`, else the pool's default SR; an ISO SR is refused with 400
 *   and SR_OPERATION_NOT_SUPPORTED), `restore=true` keeps the VM uuid, `force=true` keeps
 *   half-imported objects on failure. Each chunk's checksum is verified (a mismatch fails
 *   with IMPORT_ERROR_SOME_CHECKSUMS_FAILED; `force` does not skip it here), a truncated
 *   stream with IMPORT_ERROR_PREMATURE_EOF. The task result is the set of imported
 *   (non-snapshot) VM refs as an XML-RPC value;
 * - /import_raw_vdi: `vdi` (ref or uuid) and `format=raw|vhd` write into the existing VDI;
 *   a raw body that ends before its Content-Length (or the VDI's size, if smaller) fails with
 *   VDI_IO_ERROR, as vhd-tool does on an early EOF;
 * - imported VDIs are made as VDI.create_from_record makes them: never `is_a_snapshot`.
 * Faults on uploads: `error`, `http-500`, `invalidate-sessions` before the body; `reset` and
 * `task-failure` with `after_bytes` cut the connection after that many body bytes (the
 * import then fails as on an early EOF, or with the fault's error); `task-failure` without
 * it fails the task once the body was read (an /import is rolled back, unless `force`);
 * `stall` stops reading after `after_bytes` for `ms`, or until the task is cancelled.
 * Imported bytes are kept (sparse, in memory) and export back unchanged.
 */

const GZIP = Buffer.from([0x1f, 0x8b]);
const ZSTD = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/**
 * The request body as chunks, moved out of the IncomingMessage as soon as they arrive: when a
 * client closes its side right after the last byte (xen-api's upload of unknown length), Node
 * destroys the request and would drop what it still buffers. Backpressure (pausing the
 * request, so Node stops reading the socket) starts only past 8 MiB queued here. Ends normally on 'end', and also on an abort once data has been received
 * (the caller's parser decides whether the data was complete).
 */
function bodyChunks(req: IncomingMessage): AsyncIterable<Buffer> {
  const queue: Buffer[] = [];
  let queued = 0;
  let ended = false;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  req.on('data', (chunk: Buffer) => {
    queue.push(chunk);
    queued += chunk.length;
    // Pausing the socket alone is not enough: a flowing request resumes it on every read.
    if (queued > 8 << 20 && !req.isPaused()) req.pause();
    notify();
  });
  req.on('end', () => {
    ended = true;
    notify();
  });
  req.on('error', (error) => {
    failure = error;
    notify();
  });
  req.on('aborted', () => {
    ended = true;
    notify();
  });
  return {
    async *[Symbol.asyncIterator]() {
      for (;;) {
        const chunk = queue.shift();
        if (chunk !== undefined) {
          queued -= chunk.length;
          if (queued < 1 << 20 && req.isPaused()) req.resume();
          yield chunk;
          continue;
        }
        if (ended) return;
        if (failure !== undefined) throw failure;
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
  };
}

/** What an upload fault did to the body: cut after N bytes, failing with `error` if set. */
interface BodyCut {
  fired: boolean;
  error?: ApiError;
}

/**
 * The body as the fault lets it through: `reset` / `task-failure` with `after_bytes` pass that
 * many bytes, then reset the connection and end the body (the parser sees an early EOF);
 * `stall` pauses reading.
 */
async function* cutBody(call: Call, chunks: AsyncIterable<Buffer>, fault: FaultAction | undefined, cut: BodyCut): AsyncGenerator<Buffer> {
  const limit = fault?.kind === 'reset' ? fault.after_bytes : fault?.kind === 'task-failure' ? fault.after_bytes : undefined;
  let seen = 0;
  let stalled = false;
  for await (let chunk of chunks) {
    if (fault?.kind === 'stall' && !stalled && seen + chunk.length >= fault.after_bytes) {
      // Stop reading (the client's writes back up) for `ms`, or until the client goes away.
      const head = chunk.subarray(0, fault.after_bytes - seen);
      if (head.length > 0) yield head;
      seen += head.length;
      chunk = chunk.subarray(head.length);
      stalled = true;
      // Not reading, the server cannot see the client go away; it sees its task cancelled.
      const task = call.task!;
      await new Promise<void>((resolve) => {
        const started = Date.now();
        const poll = setInterval(() => {
          if ((fault.ms !== undefined && Date.now() - started >= fault.ms) || call.state.isCancelling(task)) {
            clearInterval(poll);
            resolve();
          }
        }, 20);
        void call.env.closed.then(() => {
          clearInterval(poll);
          resolve();
        });
      });
      if (call.state.isCancelling(task)) {
        cut.fired = true;
        cut.error = new ApiError('TASK_CANCELLED', [task]);
        return;
      }
    }
    if (limit !== undefined && seen + chunk.length >= limit) {
      const head = chunk.subarray(0, limit - seen);
      if (head.length > 0) yield head;
      cut.fired = true;
      if (fault?.kind === 'task-failure') cut.error = new ApiError(fault.code, fault.params);
      void cutConnection(call.res);
      return;
    }
    seen += chunk.length;
    yield chunk;
  }
}

/** The request body, decompressed when it starts with a gzip or zstd magic number. */
async function decompressed(body: AsyncIterable<Buffer>): Promise<AsyncIterable<Buffer>> {
  const it = body[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let size = 0;
  let done = false;
  while (size < 4) {
    const r = await it.next();
    if (r.done === true) {
      done = true;
      break;
    }
    head.push(r.value);
    size += r.value.length;
  }
  const first = Buffer.concat(head);
  async function* raw(): AsyncGenerator<Buffer> {
    if (first.length > 0) yield first;
    if (done) return;
    for (;;) {
      const r = await it.next();
      if (r.done === true) return;
      yield r.value;
    }
  }
  if (first.subarray(0, 2).equals(GZIP)) return Readable.from(raw()).pipe(zlib.createGunzip());
  if (first.subarray(0, 4).equals(ZSTD)) {
    const child = spawn('zstd', ['-d', '-q', '-c'], { stdio: ['pipe', 'pipe', 'ignore'] });
    Readable.from(raw()).pipe(child.stdin).on('error', () => child.kill('SIGKILL'));
    child.stdout.on('close', () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    return child.stdout;
  }
  return raw();
}

/** Refuses chunked uploads as XAPI does; true when refused (response sent). */
function refuseChunked(call: Call): boolean {
  const te = call.req.headers['transfer-encoding'];
  if (te === undefined) return false;
  const error = new ApiError('IMPORT_ERROR_CANNOT_HANDLE_CHUNKED', []);
  if (call.task !== undefined) call.state.failTask(call.task, error);
  call.finish('failed', error);
  call.res.writeHead(403, { connection: 'close', 'content-length': 0 });
  call.res.end();
  return true;
}

/** 200 and task-id now; the body is read afterwards. */
function acceptUpload(call: Call): void {
  call.res.useChunkedEncodingByDefault = false;
  call.res.removeHeader('transfer-encoding');
  call.res.shouldKeepAlive = false;
  call.res.writeHead(200, { 'task-id': call.task!, connection: 'close', 'content-type': 'application/octet-stream', 'cache-control': 'no-cache, no-store' });
  call.res.flushHeaders();
}

function endUpload(call: Call): void {
  if (!call.res.writableEnded) call.res.end();
  // Stop reading whatever the client still sends (xen-api's 1 PiB content-length hack).
  setImmediate(() => call.req.destroy());
}

/** Maps reader failures to XAPI's import errors. */
function importError(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  const code = (error as { code?: unknown }).code;
  const message = error instanceof Error ? error.message : String(error);
  if (code === 'XVA_BAD_CHECKSUM') return new ApiError('IMPORT_ERROR_SOME_CHECKSUMS_FAILED', []);
  if (code === 'XVA_NO_OVA' || code === 'XVA_OVA_NOT_FIRST') {
    const actual = /found (\S+)/.exec(message)?.[1] ?? '';
    return new ApiError('IMPORT_ERROR_UNEXPECTED_FILE', ['ova.xml', actual]);
  }
  if (typeof code === 'string' && /^TAR_(TRUNCATED|NO_END|SHORT)/.test(code)) return new ApiError('IMPORT_ERROR_PREMATURE_EOF', []);
  if (code === 'ECONNRESET' || message === 'aborted') return new ApiError('IMPORT_ERROR_PREMATURE_EOF', []);
  return new ApiError('IMPORT_ERROR', [message]);
}

type OvaObject = { class: string; id: string; snapshot: Record<string, unknown> };

/** A stored value for `field` of `cls` from an ova.xml value (ints arrive as strings). */
function fieldValue(cls: ClassName, field: string, value: unknown): unknown {
  const def = DATAMODEL[cls].fields[field];
  if (def === undefined || def.reverse !== undefined) return undefined;
  switch (def.type) {
    case 'int':
    case 'float': {
      const n = typeof value === 'string' ? Number(value) : value;
      return typeof n === 'number' && !Number.isNaN(n) ? n : undefined;
    }
    case 'bool':
      return typeof value === 'boolean' ? value : undefined;
    case 'datetime':
      return value instanceof Date ? value : undefined;
    case 'set':
      return Array.isArray(value) ? value.map(String) : undefined;
    case 'map':
      return value !== null && typeof value === 'object' && !Array.isArray(value) ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, String(v)])) : undefined;
    default:
      return typeof value === 'string' ? value : undefined;
  }
}

function copyFields(cls: ClassName, snapshot: Record<string, unknown>, skip: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(snapshot)) {
    if (skip.includes(k)) continue;
    const value = fieldValue(cls, k, v);
    if (value !== undefined) out[k] = value;
  }
  return out;
}

async function importVm(call: Call): Promise<void> {
  const { state, q } = call;
  const { db } = state;
  const restore = q.get('restore') === 'true';
  const force = q.get('force') === 'true';
  let sr: string;
  try {
    const srId = q.get('sr_id');
    const srUuid = q.get('sr_uuid');
    if (srId !== undefined) sr = db.require('SR', srId).ref;
    else if (srUuid !== undefined) {
      const row = db.byUuid('SR', srUuid);
      if (row === undefined) throw new ApiError('UUID_INVALID', ['SR', srUuid]);
      sr = row.ref;
    } else {
      sr = db.field<string>('pool', state.poolRef, 'default_SR');
      if (!db.has('SR', sr)) throw new ApiError('DEFAULT_SR_NOT_FOUND', [sr]);
    }
  } catch (error) {
    call.failEarly(toApiError(error));
    return;
  }
  const fault = call.env.faults.forHttp('import', { vms: [], vdis: [] });
  if (call.redirectForSr(sr)) return;
  const task = call.startTask('VM.import');
  call.begin({ format: 'xva' });
  if (!call.earlyFault(fault)) return;
  if (db.field<string>('SR', sr, 'content_type') === 'iso') {
    const error = new ApiError('SR_OPERATION_NOT_SUPPORTED', []);
    state.failTask(task, error);
    call.finish('failed', error);
    call.res.writeHead(400, { connection: 'close', 'content-length': 0 });
    call.res.end();
    return;
  }
  if (refuseChunked(call)) return;
  acceptUpload(call);
  state.setTaskProgress(task, 0);

  const created: { cls: ClassName; ref: string }[] = [];
  const vdiByExportId = new Map<string, { ref: string; disk: MemoryDisk; size: number }>();
  const vms: string[] = [];
  let total = 0;
  let written = 0;
  const cut: BodyCut = { fired: false };
  try {
    const input = await decompressed(cutBody(call, bodyChunks(call.req), fault, cut));
    for await (const event of readXva(input, { trailing: 'any' })) {
      if (event.type === 'ova') {
        const header = decodeValue(event.xml) as { objects?: OvaObject[] };
        const objects = header.objects ?? [];
        const table = new Map<string, string>();
        const create = (cls: ClassName, fields: Record<string, unknown>): string => {
          const uuid = state.ids.next(cls);
          const ref = state.ids.ref(uuid);
          db.create(cls, ref, { uuid, ...fields });
          created.push({ cls, ref });
          return ref;
        };
        for (const o of objects.filter((x) => x.class === 'network')) {
          const name = String(o.snapshot.name_label ?? '');
          const existing = db.all('network').find((n) => n.fields.name_label === name);
          table.set(o.id, existing?.ref ?? create('network', copyFields('network', o.snapshot, ['uuid'])));
        }
        for (const o of objects.filter((x) => x.class === 'VDI')) {
          const size = Number(o.snapshot.virtual_size);
          const ref = create('VDI', { ...copyFields('VDI', o.snapshot, ['uuid', 'SR', 'snapshot_of', 'parent', 'metadata_of_pool', 'location', 'physical_utilisation', 'is_a_snapshot', 'snapshot_time']), SR: sr, physical_utilisation: 0 });
          db.update('VDI', ref, { location: db.field<string>('VDI', ref, 'uuid') });
          const disk = new MemoryDisk(size);
          state.disks.set(ref, disk);
          table.set(o.id, ref);
          vdiByExportId.set(o.id, { ref, disk, size });
          total += size;
        }
        for (const o of objects.filter((x) => x.class === 'VM_guest_metrics')) table.set(o.id, create('VM_guest_metrics', copyFields('VM_guest_metrics', o.snapshot, ['uuid'])));
        for (const o of objects.filter((x) => x.class === 'VM')) {
          const fields = copyFields('VM', o.snapshot, ['uuid', 'resident_on', 'affinity', 'suspend_VDI', 'snapshot_of', 'parent', 'guest_metrics', 'current_operations', 'allowed_operations', 'domid']);
          const uuid = restore && typeof o.snapshot.uuid === 'string' ? o.snapshot.uuid : state.ids.next('VM');
          if (db.byUuid('VM', uuid) !== undefined) throw new ApiError('IMPORT_ERROR', [`a VM with uuid ${uuid} already exists`]);
          const ref = state.ids.ref(uuid);
          const gm = table.get(String(o.snapshot.guest_metrics));
          db.create('VM', ref, {
            ...fields,
            uuid,
            power_state: 'Halted',
            domid: -1,
            guest_metrics: gm ?? NULL_REF,
            current_operations: { [task]: 'import' },
          });
          created.push({ cls: 'VM', ref });
          table.set(o.id, ref);
          if (fields.is_a_snapshot !== true) vms.push(ref);
        }
        for (const o of objects.filter((x) => x.class === 'VM')) {
          const ref = table.get(o.id)!;
          const of = table.get(String(o.snapshot.snapshot_of));
          const parent = table.get(String(o.snapshot.parent));
          if (of !== undefined || parent !== undefined) db.update('VM', ref, { ...(of === undefined ? {} : { snapshot_of: of }), ...(parent === undefined ? {} : { parent }) });
        }
        for (const o of objects.filter((x) => x.class === 'VBD')) {
          const vm = table.get(String(o.snapshot.VM));
          if (vm === undefined) continue;
          const vdi = table.get(String(o.snapshot.VDI)) ?? NULL_REF;
          create('VBD', { ...copyFields('VBD', o.snapshot, ['uuid', 'VM', 'VDI', 'currently_attached', 'empty']), VM: vm, VDI: vdi, empty: vdi === NULL_REF, currently_attached: false });
        }
        for (const o of objects.filter((x) => x.class === 'VIF')) {
          const vm = table.get(String(o.snapshot.VM));
          const network = table.get(String(o.snapshot.network));
          if (vm === undefined || network === undefined) continue;
          create('VIF', { ...copyFields('VIF', o.snapshot, ['uuid', 'VM', 'network', 'currently_attached']), VM: vm, network, currently_attached: false });
        }
        db.update('task', task, { other_config: { ...db.field<Record<string, string>>('task', task, 'other_config'), object_creation: 'complete' } });
      } else if (event.type === 'chunk') {
        if (state.isCancelling(task)) throw new ApiError('TASK_CANCELLED', [task]);
        const target = vdiByExportId.get(event.ref);
        if (target === undefined) throw new ApiError('IMPORT_ERROR_FAILED_TO_FIND_OBJECT', [event.ref]);
        if (event.data.length > 0) await target.disk.write(event.offset, event.data);
        written += event.data.length;
        if (call.transfer !== undefined) call.transfer.bytes = written;
        if (total > 0) state.setTaskProgress(task, Math.min(0.99, (event.offset + event.data.length) / total));
      }
    }
    if (fault?.kind === 'task-failure' && fault.after_bytes === undefined) throw new ApiError(fault.code, fault.params);
    for (const { ref } of vdiByExportId.values()) state.refreshVdiUsage(ref);
    for (const vm of created.filter((c) => c.cls === 'VM')) db.update('VM', vm.ref, { current_operations: {} });
    state.completeTask(task, encodeValue(vms, { int64: 'string' }));
    call.finish('done');
  } catch (error) {
    const e = cut.error ?? importError(error);
    if (!force) {
      for (const c of [...created].reverse()) {
        if (db.has(c.cls, c.ref)) db.destroy(c.cls, c.ref);
        if (c.cls === 'VDI') state.disks.delete(c.ref);
      }
    }
    state.failTask(task, e);
    call.finish('failed', e);
  } finally {
    endUpload(call);
  }
}

async function importRawVdi(call: Call): Promise<void> {
  const { state, q } = call;
  const { db } = state;
  let vdi: string;
  try {
    const key = q.get('vdi');
    if (key === undefined) throw new ApiError('INTERNAL_ERROR', ['missing parameter vdi']);
    const row = db.has('VDI', key) ? db.get('VDI', key) : db.byUuid('VDI', key);
    if (row === undefined) throw key.startsWith('OpaqueRef:') ? new ApiError('HANDLE_INVALID', ['VDI', key]) : new ApiError('UUID_INVALID', ['VDI', key]);
    vdi = row.ref;
  } catch (error) {
    call.failEarly(toApiError(error));
    return;
  }
  const format = (q.get('format') ?? 'raw').toLowerCase();
  const fault = call.env.faults.forHttp('import_raw_vdi', { vms: call.env.state.vmsOfVdi(vdi), vdis: [vdi] });
  if (call.redirectForSr(db.field<string>('VDI', vdi, 'SR'))) return;
  const task = call.startTask('VDI.import_raw_vdi');
  call.begin({ vdi: db.field<string>('VDI', vdi, 'name_label'), vdiUuid: db.field<string>('VDI', vdi, 'uuid'), format });
  if (format !== 'raw' && format !== 'vhd') {
    call.failEarly(new ApiError('INTERNAL_ERROR', [`Unknown format ${q.get('format')}`]), 404);
    return;
  }
  if (!call.earlyFault(fault)) return;
  if (refuseChunked(call)) return;
  acceptUpload(call);
  const size = db.field<number>('VDI', vdi, 'virtual_size');
  const current = state.disks.get(vdi);
  const disk = current instanceof MemoryDisk ? current : new MemoryDisk(size, current);
  state.disks.set(vdi, disk);
  let written = 0;
  const cut: BodyCut = { fired: false };
  const body = cutBody(call, bodyChunks(call.req), fault, cut);
  try {
    if (format === 'vhd') {
      for await (const w of vhdDiskWrites(body)) {
        if (w.offset + w.data.length > size) throw new ApiError('VDI_IO_ERROR', ['Device I/O errors']);
        await disk.write(w.offset, w.data);
        state.noteWrite(vdi, w.offset, w.data.length);
        written += w.data.length;
        state.setTaskProgress(task, Math.min(0.99, (w.offset + w.data.length) / size));
      }
    } else {
      try {
        for await (const chunk of body) {
          const room = size - written;
          if (room <= 0) break;
          const piece = chunk.length > room ? chunk.subarray(0, room) : chunk;
          await disk.write(written, piece);
          state.noteWrite(vdi, written, piece.length);
          written += piece.length;
          state.setTaskProgress(task, Math.min(0.99, written / size));
          if (written >= size) break;
        }
      } catch (error) {
        // xen-api cuts the connection after a body of unknown length: that is the end of data.
        const code = (error as NodeJS.ErrnoException).code;
        if (code !== 'ECONNRESET' && (error as Error).message !== 'aborted') throw error;
      }
      const declared = Number(call.req.headers['content-length']);
      if (Number.isSafeInteger(declared) && written < Math.min(declared, size)) throw new ApiError('VDI_IO_ERROR', ['Device I/O errors']);
    }
    if (fault?.kind === 'task-failure' && fault.after_bytes === undefined) throw new ApiError(fault.code, fault.params);
    if (call.transfer !== undefined) call.transfer.bytes = written;
    state.refreshVdiUsage(vdi);
    state.completeTask(task, '');
    call.finish('done');
  } catch (error) {
    if (call.transfer !== undefined) call.transfer.bytes = written;
    const e = cut.error ?? (error instanceof ApiError ? error : new ApiError('VDI_IO_ERROR', [error instanceof Error ? error.message : String(error)]));
    state.failTask(task, e);
    call.finish('failed', e);
  } finally {
    endUpload(call);
  }
}

/** The PUT handlers, for the HTTP dispatcher. */
export const IMPORT_HANDLERS = { import: importVm, import_raw_vdi: importRawVdi } as const satisfies Record<string, PutHandler>;
