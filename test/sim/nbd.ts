import net, { type Socket } from 'node:net';
import tls, { type TLSSocket } from 'node:tls';
import { ByteReader } from '../../runtime/nbd/reader.js';
import {
  Cmd,
  Errno,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  Info,
  NBD_MAGIC,
  Opt,
  REQUEST_MAGIC,
  Rep,
  TFlag,
  encodeOptionReply,
  encodeSimpleReply,
} from '../../runtime/nbd/protocol.js';
import type { SimDisk } from './disks.js';
import { ApiError } from './errors.js';
import type { FaultAction, Faults } from './faults.js';
import type { HostInfo, SimState } from './state.js';

/** Largest read the server accepts (advertised as the maximum block size). */
export const NBD_MAX_REQUEST = 32 << 20;
const MAX_OPTION_LENGTH = 64 * 1024;

/** One NBD connection, for inspection (`sim.state.nbdConnections()`). */
export interface NbdConnection {
  id: number;
  host: string;
  tls: boolean;
  vdi?: string;
  vdiUuid?: string;
  /** Read requests served and bytes sent. */
  reads: number;
  bytes: number;
  status: 'negotiating' | 'serving' | 'closed';
  /** Why the server refused or cut the connection. */
  error?: string;
}

export interface NbdEnv {
  readonly state: SimState;
  readonly faults: Faults;
  readonly connections: NbdConnection[];
  /** Key and certificate for STARTTLS (made on first use). */
  tlsMaterial(): Promise<{ key: string; cert: string }>;
}

class Refused extends Error {
  constructor(
    readonly reply: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * XAPI's NBD server (xapi-nbd) as the simulator serves it, on every host address:
 *
 * - fixed newstyle negotiation; no connection at all unless a network has purpose `nbd`
 *   (then TLS is required: NBD_OPT_STARTTLS with the host certificate, any other option
 *   first gets NBD_REP_ERR_TLS_REQD) or `insecure_nbd` (plain; STARTTLS refused with
 *   NBD_REP_ERR_POLICY);
 * - the export name is the one VDI.get_nbd_info gives, `/<vdi uuid>?session_id=<ref>`: an
 *   unknown session or VDI, or a cbt_metadata VDI, is refused (NBD_REP_ERR_UNKNOWN with XAPI's
 *   error code as message, or the connection closed for NBD_OPT_EXPORT_NAME);
 * - NBD_OPT_GO / NBD_OPT_INFO answer the size, read-only flags and block sizes; like
 *   xapi-nbd, the VDI is attached (a read-only VBD of the host's control domain) while the
 *   connection serves it, so the VDI is "in use" meanwhile;
 * - NBD_CMD_READ (simple replies), NBD_CMD_FLUSH and NBD_CMD_CACHE succeed, writes and trims
 *   fail with EPERM, NBD_CMD_DISC ends the connection. No structured replies, hence no
 *   block status.
 */
export function createNbdServer(env: NbdEnv, host: HostInfo): net.Server {
  const server = net.createServer((socket) => {
    void serveConnection(env, host, socket).catch(() => socket.destroy());
  });
  return server;
}

function parseExportName(name: string): { uuid: string; session: string } | undefined {
  const m = /^\/?([^?]+)\?session_id=(.+)$/.exec(name);
  return m === null ? undefined : { uuid: decodeURIComponent(m[1]!), session: decodeURIComponent(m[2]!) };
}

async function serveConnection(env: NbdEnv, host: HostInfo, raw: Socket): Promise<void> {
  const { state } = env;
  const record: NbdConnection = { id: env.connections.length + 1, host: host.name, tls: false, reads: 0, bytes: 0, status: 'negotiating' };
  env.connections.push(record);
  let socket: Socket | TLSSocket = raw;
  let vbd: string | undefined;
  raw.setNoDelay(true);
  raw.on('error', () => {});
  const finish = (error?: string) => {
    if (record.status !== 'closed') {
      record.status = 'closed';
      if (error !== undefined) record.error = error;
    }
    if (vbd !== undefined && state.db.has('VBD', vbd)) state.db.destroy('VBD', vbd);
    vbd = undefined;
    socket.destroy();
  };
  raw.once('close', () => finish());

  const mode = state.nbdMode();
  if (mode === 'off') {
    finish('no network has purpose nbd or insecure_nbd');
    return;
  }
  const hello = Buffer.alloc(18);
  hello.writeBigUInt64BE(NBD_MAGIC, 0);
  hello.writeBigUInt64BE(IHAVEOPT, 8);
  hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  raw.write(hello);
  let reader = new ByteReader(raw);
  try {
    const clientFlags = (await reader.take(4)).readUInt32BE(0);
    if ((clientFlags & FLAG_FIXED_NEWSTYLE) === 0) {
      finish('client does not speak fixed newstyle');
      return;
    }
    const noZeroes = (clientFlags & FLAG_NO_ZEROES) !== 0;

    // Option haggling.
    let disk: SimDisk | undefined;
    let vdiRef = '';
    let exportFlags = 0;
    for (;;) {
      const head = await reader.take(16);
      if (head.readBigUInt64BE(0) !== IHAVEOPT) {
        finish('bad option magic');
        return;
      }
      const option = head.readUInt32BE(8);
      const length = head.readUInt32BE(12);
      if (length > MAX_OPTION_LENGTH) {
        finish(`option of ${length} bytes`);
        return;
      }
      const data = await reader.take(length);
      const reply = (type: number, payload?: Buffer) => socket.write(encodeOptionReply(option, type, payload));
      const refuse = (type: number, message: string) => reply(type, Buffer.from(message, 'utf8'));

      if (mode === 'tls' && !record.tls && option !== Opt.STARTTLS && option !== Opt.ABORT) {
        if (option === Opt.EXPORT_NAME) {
          finish('NBD_OPT_EXPORT_NAME before STARTTLS');
          return;
        }
        refuse(Rep.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
        continue;
      }
      if (option === Opt.ABORT) {
        reply(Rep.ACK);
        socket.end();
        finish();
        return;
      }
      if (option === Opt.STARTTLS) {
        if (mode !== 'tls') refuse(Rep.ERR_POLICY, 'TLS is not offered (network purpose insecure_nbd)');
        else if (record.tls) refuse(Rep.ERR_INVALID, 'TLS is already on');
        else if (length !== 0) refuse(Rep.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
        else {
          reply(Rep.ACK);
          const material = await env.tlsMaterial();
          reader.detach();
          const secure = new tls.TLSSocket(raw, { isServer: true, key: material.key, cert: material.cert });
          secure.on('error', () => {});
          await new Promise<void>((resolve, reject) => {
            secure.once('secure', resolve);
            secure.once('error', reject);
            secure.once('close', () => reject(new Error('closed during the TLS handshake')));
          });
          socket = secure;
          reader = new ByteReader(secure);
          record.tls = true;
        }
        continue;
      }
      if (option === Opt.EXPORT_NAME || option === Opt.INFO || option === Opt.GO) {
        let name: string;
        let infos: number[] = [];
        if (option === Opt.EXPORT_NAME) name = data.toString('utf8');
        else {
          if (length < 6) {
            refuse(Rep.ERR_INVALID, 'malformed request');
            continue;
          }
          const nameLength = data.readUInt32BE(0);
          if (4 + nameLength + 2 > length) {
            refuse(Rep.ERR_INVALID, 'malformed request');
            continue;
          }
          name = data.subarray(4, 4 + nameLength).toString('utf8');
          const count = data.readUInt16BE(4 + nameLength);
          infos = Array.from({ length: count }, (_, i) => data.readUInt16BE(6 + nameLength + 2 * i));
        }
        let resolved: { ref: string; disk: SimDisk };
        try {
          resolved = resolveExport(state, name);
        } catch (error) {
          const message = error instanceof Refused ? error.message : String(error);
          if (option === Opt.EXPORT_NAME) {
            finish(message);
            return;
          }
          refuse(error instanceof Refused ? error.reply : Rep.ERR_UNKNOWN, message);
          continue;
        }
        exportFlags = TFlag.HAS_FLAGS | TFlag.READ_ONLY | TFlag.SEND_FLUSH | TFlag.SEND_CACHE;
        if (option === Opt.EXPORT_NAME) {
          const out = Buffer.alloc(noZeroes ? 10 : 134);
          out.writeBigUInt64BE(BigInt(resolved.disk.size), 0);
          out.writeUInt16BE(exportFlags, 8);
          socket.write(out);
        } else {
          const exportInfo = Buffer.alloc(12);
          exportInfo.writeUInt16BE(Info.EXPORT, 0);
          exportInfo.writeBigUInt64BE(BigInt(resolved.disk.size), 2);
          exportInfo.writeUInt16BE(exportFlags, 10);
          reply(Rep.INFO, exportInfo);
          if (infos.includes(Info.BLOCK_SIZE)) {
            const sizes = Buffer.alloc(14);
            sizes.writeUInt16BE(Info.BLOCK_SIZE, 0);
            sizes.writeUInt32BE(1, 2);
            sizes.writeUInt32BE(64 * 1024, 6);
            sizes.writeUInt32BE(NBD_MAX_REQUEST, 10);
            reply(Rep.INFO, sizes);
          }
          reply(Rep.ACK);
          if (option === Opt.INFO) continue;
        }
        disk = resolved.disk;
        vdiRef = resolved.ref;
        break;
      }
      refuse(Rep.ERR_UNSUP, `option ${option} is not supported`);
    }

    // Transmission: the VDI is attached to the control domain meanwhile, as xapi-nbd does.
    record.vdi = state.db.field<string>('VDI', vdiRef, 'name_label');
    record.vdiUuid = state.db.field<string>('VDI', vdiRef, 'uuid');
    record.status = 'serving';
    vbd = state.attachToControlDomain(vdiRef, host.ref);
    const fault = env.faults.forHttp('nbd', { vms: [], vdis: [vdiRef] });
    await transmit(socket, reader, disk, record, fault);
    finish();
  } catch (error) {
    finish(error instanceof Error ? error.message : String(error));
  }
}

function resolveExport(state: SimState, name: string): { ref: string; disk: SimDisk } {
  const parsed = parseExportName(name);
  if (parsed === undefined) throw new Refused(Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(name)}: expected /<vdi uuid>?session_id=<session>`);
  if (!state.db.has('session', parsed.session)) throw new Refused(Rep.ERR_POLICY, `SESSION_INVALID(${parsed.session})`);
  const row = state.db.byUuid('VDI', parsed.uuid);
  if (row === undefined) throw new Refused(Rep.ERR_UNKNOWN, `UUID_INVALID(VDI, ${parsed.uuid})`);
  try {
    return { ref: row.ref, disk: state.readableContent(row.ref) };
  } catch (error) {
    if (error instanceof ApiError) throw new Refused(Rep.ERR_UNKNOWN, error.message);
    throw error;
  }
}

/** Writes, honouring backpressure. */
function send(socket: Socket | TLSSocket, data: Buffer): Promise<void> | undefined {
  if (socket.write(data)) return undefined;
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      socket.off('close', onClose);
      resolve();
    };
    const onClose = () => {
      socket.off('drain', onDrain);
      reject(new Error('connection closed while sending'));
    };
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}

async function transmit(socket: Socket | TLSSocket, reader: ByteReader, disk: SimDisk, record: NbdConnection, fault: FaultAction | undefined): Promise<void> {
  let sentData = 0;
  let stalled = false;
  for (;;) {
    const head = await reader.take(28);
    if (head.readUInt32BE(0) !== REQUEST_MAGIC) throw new Error('bad request magic');
    const type = head.readUInt16BE(6);
    const cookie = head.subarray(8, 16);
    const offset = Number(head.readBigUInt64BE(16));
    const length = head.readUInt32BE(24);
    if (type === Cmd.DISC) {
      socket.end();
      return;
    }
    if (type === Cmd.WRITE) {
      await reader.take(length);
      await send(socket, encodeSimpleReply(Errno.EPERM, cookie));
      continue;
    }
    if (type === Cmd.FLUSH || type === Cmd.CACHE) {
      await send(socket, encodeSimpleReply(0, cookie));
      continue;
    }
    if (type !== Cmd.READ) {
      await send(socket, encodeSimpleReply(type === Cmd.TRIM || type === Cmd.WRITE_ZEROES ? Errno.EPERM : Errno.EINVAL, cookie));
      continue;
    }
    if (length > NBD_MAX_REQUEST) {
      await send(socket, encodeSimpleReply(Errno.EOVERFLOW, cookie));
      continue;
    }
    if (offset + length > disk.size) {
      await send(socket, encodeSimpleReply(Errno.EINVAL, cookie));
      continue;
    }
    if (fault?.kind === 'error') {
      await send(socket, encodeSimpleReply(Errno.EIO, cookie));
      continue;
    }
    const data = (length === 0 ? null : await disk.read(offset, length)) ?? Buffer.alloc(length);
    record.reads += 1;
    if (fault?.kind === 'reset' && sentData + length > fault.after_bytes) {
      // Cut inside this reply's data, as a host that goes away mid-read.
      const keep = Math.max(0, fault.after_bytes - sentData);
      socket.write(encodeSimpleReply(0, cookie));
      if (keep > 0) socket.write(data.subarray(0, keep));
      record.bytes += keep;
      await new Promise((resolve) => setImmediate(resolve));
      socket.resetAndDestroy?.();
      socket.destroy();
      throw new Error(`connection reset after ${fault.after_bytes} bytes (fault)`);
    }
    if (fault?.kind === 'stall' && !stalled && sentData + length > fault.after_bytes) {
      stalled = true;
      await new Promise((resolve) => {
        const timer = fault.ms === undefined ? undefined : setTimeout(resolve, fault.ms);
        socket.once('close', () => {
          if (timer !== undefined) clearTimeout(timer);
          resolve(undefined);
        });
      });
      if (socket.destroyed) return;
    }
    await send(socket, encodeSimpleReply(0, cookie));
    await send(socket, data);
    sentData += length;
    record.bytes += length;
  }
}

