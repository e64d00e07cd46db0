import { X509Certificate } from 'node:crypto';
import net, { type Socket } from 'node:net';
import { Readable } from 'node:stream';
import tls, { type TLSSocket } from 'node:tls';
import { VmbackupError } from '../errors.js';
import {
  Cmd,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  Info,
  NBD_MAGIC,
  OPTION_REPLY_MAGIC,
  Opt,
  Rep,
  SIMPLE_REPLY_MAGIC,
  TFlag,
  encodeInfoRequest,
  encodeOption,
  encodeRequest,
  errnoName,
  repName,
} from './protocol.js';
import { ByteReader } from './reader.js';

/**
 * How to reach one NBD export. With XAPI, every field comes from one record of
 * `VDI.get_nbd_info`: `{address → host, port, exportname → exportName, cert, subject}`.
 */
export interface NbdConnectOptions {
  host: string;
  port: number;
  exportName: string;
  /**
   * Negotiate TLS (NBD_OPT_STARTTLS). `cert`: the exact certificate the server must present
   * (get_nbd_info's `cert`: pinned, whoever signed it); `ca`: CA certificates to verify the
   * server's chain against, with `servername` (get_nbd_info's `subject`) or `host` as the name
   * to check. Give one or both. Without `tls` the connection stays plain, and a server that
   * requires TLS is reported as such (NBD_TLS_REQUIRED).
   */
  tls?: { cert?: string; ca?: string | string[]; servername?: string };
  /** Give up connecting and negotiating after this long (default 30 s). */
  connectTimeoutMs?: number;
  /** Fail outstanding reads when the server sends nothing for this long (default 120 s). */
  idleTimeoutMs?: number;
}

/** A range of the export to read. */
export interface NbdRange {
  offset: number;
  length: number;
}

/** Options of `readRanges`. */
export interface ReadRangesOptions {
  /** Requests in flight at once (default 8): hides the round trip without unbounded memory. */
  depth?: number;
  /** Largest single request; ranges are split (default 2 MiB, capped by the server's maximum). */
  requestSize?: number;
}

/**
 * An NBD failure. Codes: `NBD_CONNECT_FAILED`, `NBD_PROTOCOL` (not an NBD server, or one
 * that breaks the protocol), `NBD_TLS_REQUIRED`, `NBD_TLS_UNTRUSTED`, `NBD_REFUSED` (the
 * export was refused; `data.reply` names the reply), `NBD_READ_FAILED` (a read answered with
 * an error), `NBD_DISCONNECTED` (the connection dropped; `data.outstanding` reads were lost),
 * `NBD_TIMEOUT`, `NBD_CLOSED` (used after close), `NBD_BAD_REQUEST`.
 */
export class NbdError extends VmbackupError {
  override name = 'NbdError';
}

interface Pending {
  offset: number;
  length: number;
  resolve(data: Buffer): void;
  reject(error: Error): void;
}

const DEFAULT_REQUEST = 2 << 20;

/**
 * A client for one NBD export (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle
 * negotiation, NBD_OPT_STARTTLS, NBD_OPT_GO (NBD_OPT_EXPORT_NAME with older servers), and
 * pipelined NBD_CMD_READ with simple replies. Read-only: the reads a backup needs.
 *
 * @example
 *   const [info] = await xapi.vdiNbdInfo(snapshotVdi);
 *   const nbd = await NbdClient.connect({ host: info.address, port: info.port, exportName: info.exportname, tls: { cert: info.cert, servername: info.subject } });
 *   try {
 *     for await (const { offset, data } of nbd.readRanges(changed)) await store.put(offset, data);
 *   } finally {
 *     await nbd.close();
 *   }
 */
export class NbdClient {
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private failure: NbdError | undefined;
  private closing = false;

  private constructor(
    private readonly socket: Socket | TLSSocket,
    private readonly reader: ByteReader,
    private readonly where: string,
    /** Virtual size of the export in bytes. */
    readonly size: number,
    /** Transmission flags (NBD_FLAG_*). */
    readonly flags: number,
    /** Block size constraints the server announced (defaults when it did not). */
    readonly blockSize: { minimum: number; preferred: number; maximum: number },
    /** Whether the connection is encrypted. */
    readonly tls: boolean,
    idleTimeoutMs: number,
  ) {
    socket.setTimeout(idleTimeoutMs);
    socket.on('timeout', () => {
      if (this.pending.size > 0) {
        this.fail(new NbdError('NBD_TIMEOUT', `${where}: no answer for ${Math.round(idleTimeoutMs / 1000)} s with ${this.pending.size} read(s) outstanding`, this.lost()));
        socket.destroy();
      }
    });
    void this.receive();
  }

  /** Whether the server says the export is read-only. */
  get readOnly(): boolean {
    return (this.flags & TFlag.READ_ONLY) !== 0;
  }

  /**
   * Connects and negotiates the export.
   * @throws NbdError naming the cause: unreachable, not NBD, TLS, export refused.
   */
  static async connect(opts: NbdConnectOptions): Promise<NbdClient> {
    const where = `nbd://${net.isIPv6(opts.host) ? `[${opts.host}]` : opts.host}:${opts.port}`;
    const timeoutMs = opts.connectTimeoutMs ?? 30_000;
    const raw = await new Promise<Socket>((resolve, reject) => {
      const s = net.connect({ host: opts.host, port: opts.port });
      const timer = setTimeout(() => s.destroy(Object.assign(new Error(`no connection in ${Math.round(timeoutMs / 1000)} s`), { code: 'ETIMEDOUT' })), timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.off('error', onError);
        resolve(s);
      });
      const onError = (error: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new NbdError('NBD_CONNECT_FAILED', `cannot connect to ${where}: ${error.code ?? error.message}`, { where, netCode: error.code }, { cause: error }));
      };
      s.once('error', onError);
    });
    raw.setNoDelay(true);
    // Errors surface through the reader; never as an unhandled 'error' event.
    raw.on('error', () => {});
    const deadline = setTimeout(() => raw.destroy(), timeoutMs);
    try {
      return await NbdClient.negotiate(raw, opts, where);
    } catch (error) {
      raw.destroy();
      if (error instanceof NbdError) throw error;
      throw new NbdError('NBD_PROTOCOL', `${where}: negotiation failed: ${(error as Error).message}`, { where }, { cause: error });
    } finally {
      clearTimeout(deadline);
    }
  }

  private static async negotiate(raw: Socket, opts: NbdConnectOptions, where: string): Promise<NbdClient> {
    let socket: Socket | TLSSocket = raw;
    let reader = new ByteReader(raw);
    const hello = await reader.take(18);
    if (hello.readBigUInt64BE(0) !== NBD_MAGIC) throw new NbdError('NBD_PROTOCOL', `${where} is not an NBD server`, { where });
    if (hello.readBigUInt64BE(8) !== IHAVEOPT) throw new NbdError('NBD_PROTOCOL', `${where} speaks oldstyle NBD only`, { where });
    const serverFlags = hello.readUInt16BE(16);
    if ((serverFlags & FLAG_FIXED_NEWSTYLE) === 0) throw new NbdError('NBD_PROTOCOL', `${where} does not speak fixed newstyle NBD`, { where });
    const noZeroes = (serverFlags & FLAG_NO_ZEROES) !== 0;
    raw.write(Buffer.from([0, 0, 0, FLAG_FIXED_NEWSTYLE | (noZeroes ? FLAG_NO_ZEROES : 0)]));

    /** Reads one option reply to `option`. */
    const optionReply = async (option: number): Promise<{ type: number; data: Buffer }> => {
      const head = await reader.take(20);
      if (head.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC || head.readUInt32BE(8) !== option) throw new NbdError('NBD_PROTOCOL', `${where}: unexpected option reply`, { where });
      const type = head.readUInt32BE(12);
      const length = head.readUInt32BE(16);
      if (length > 1 << 20) throw new NbdError('NBD_PROTOCOL', `${where}: option reply of ${length} bytes`, { where });
      return { type, data: await reader.take(length) };
    };
    const refusal = (what: string, reply: { type: number; data: Buffer }) => {
      const text = reply.data.toString('utf8');
      const detail = `${repName(reply.type)}${text === '' ? '' : `: ${text}`}`;
      if (reply.type === Rep.ERR_TLS_REQD) {
        return new NbdError('NBD_TLS_REQUIRED', `${where} requires TLS (${detail}): give the server certificate (VDI.get_nbd_info's cert)`, { where, reply: repName(reply.type) });
      }
      return new NbdError('NBD_REFUSED', `${where} refused ${what} (${detail})`, { where, reply: repName(reply.type), message: text });
    };

    let secured = false;
    if (opts.tls !== undefined) {
      socket.write(encodeOption(Opt.STARTTLS));
      const reply = await optionReply(Opt.STARTTLS);
      if (reply.type !== Rep.ACK) throw refusal('TLS', reply);
      const leftover = reader.detach();
      if (leftover.length > 0) throw new NbdError('NBD_PROTOCOL', `${where}: data before the TLS handshake`, { where });
      socket = await startTls(raw, opts, where);
      reader = new ByteReader(socket);
      secured = true;
    }

    socket.write(encodeOption(Opt.GO, encodeInfoRequest(opts.exportName, [Info.BLOCK_SIZE])));
    let size: number | undefined;
    let flags = 0;
    const blockSize = { minimum: 1, preferred: 4096, maximum: 32 << 20 };
    for (;;) {
      const reply = await optionReply(Opt.GO);
      if (reply.type === Rep.INFO) {
        const kind = reply.data.readUInt16BE(0);
        if (kind === Info.EXPORT && reply.data.length >= 12) {
          size = Number(reply.data.readBigUInt64BE(2));
          flags = reply.data.readUInt16BE(10);
        } else if (kind === Info.BLOCK_SIZE && reply.data.length >= 14) {
          blockSize.minimum = reply.data.readUInt32BE(2);
          blockSize.preferred = reply.data.readUInt32BE(6);
          blockSize.maximum = reply.data.readUInt32BE(10);
        }
        continue;
      }
      if (reply.type === Rep.ACK) break;
      if (reply.type === Rep.ERR_UNSUP) {
        // A server older than NBD_OPT_GO: the export name alone, then size and flags.
        socket.write(encodeOption(Opt.EXPORT_NAME, Buffer.from(opts.exportName, 'utf8')));
        const answer = await reader.take(noZeroes ? 10 : 134).catch((error: unknown) => {
          throw new NbdError('NBD_REFUSED', `${where} refused export ${JSON.stringify(opts.exportName)} (connection closed)`, { where }, { cause: error });
        });
        size = Number(answer.readBigUInt64BE(0));
        flags = answer.readUInt16BE(8);
        break;
      }
      throw refusal(`export ${JSON.stringify(opts.exportName)}`, reply);
    }
    if (size === undefined) throw new NbdError('NBD_PROTOCOL', `${where}: NBD_OPT_GO ended without the export's size`, { where });
    return new NbdClient(socket, reader, where, size, flags, blockSize, secured, opts.idleTimeoutMs ?? 120_000);
  }

  /** The bytes of [offset, offset + length): one request. */
  read(offset: number, length: number): Promise<Buffer> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(new NbdError('NBD_CLOSED', `${this.where}: read after close`, { where: this.where }));
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      return Promise.reject(new NbdError('NBD_BAD_REQUEST', `${this.where}: read [${offset}, ${offset + length}) outside the export's ${this.size} bytes`, { offset, length, size: this.size }));
    }
    if (length > this.blockSize.maximum) {
      return Promise.reject(new NbdError('NBD_BAD_REQUEST', `${this.where}: read of ${length} bytes exceeds the server's maximum of ${this.blockSize.maximum}`, { length }));
    }
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    const cookie = this.nextCookie++;
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { offset, length, resolve, reject });
      this.socket.write(encodeRequest(Cmd.READ, cookie, offset, length));
    });
  }

  /**
   * Reads ranges in order, yielding `{offset, data}` pieces of at most `requestSize` bytes,
   * with up to `depth` requests in flight: memory holds at most depth × requestSize bytes
   * whatever the size of the disk. Stops at the first failure (NbdError).
   */
  async *readRanges(ranges: Iterable<NbdRange> | AsyncIterable<NbdRange>, options: ReadRangesOptions = {}): AsyncGenerator<{ offset: number; data: Buffer }> {
    const depth = Math.max(1, options.depth ?? 8);
    const requestSize = Math.max(1, Math.min(options.requestSize ?? DEFAULT_REQUEST, this.blockSize.maximum));
    const queue: { offset: number; data: Promise<Buffer> }[] = [];
    for await (const range of ranges) {
      const end = range.offset + range.length;
      for (let at = range.offset; at < end; at += requestSize) {
        const data = this.read(at, Math.min(requestSize, end - at));
        // Awaited in order below; until then a failure must not count as unhandled.
        data.catch(() => {});
        queue.push({ offset: at, data });
        if (queue.length >= depth) {
          const head = queue.shift()!;
          yield { offset: head.offset, data: await head.data };
        }
      }
    }
    while (queue.length > 0) {
      const head = queue.shift()!;
      yield { offset: head.offset, data: await head.data };
    }
  }

  /** `readRanges` as a byte stream (the pieces concatenated, in order). */
  readStream(ranges: Iterable<NbdRange> | AsyncIterable<NbdRange>, options: ReadRangesOptions = {}): Readable {
    const pieces = this.readRanges(ranges, options);
    return Readable.from(
      (async function* () {
        for await (const piece of pieces) yield piece.data;
      })(),
      { objectMode: false, highWaterMark: 1 },
    );
  }

  /** Ends the session (NBD_CMD_DISC) and closes the connection. Safe to call twice. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.failure === undefined && !this.socket.destroyed) {
      // Replies still due are awaited by their callers; DISC comes after them on the wire.
      await Promise.allSettled([...this.pending.values()].map((p) => new Promise((resolve) => {
        const { resolve: ok, reject: ko } = p;
        p.resolve = (d) => {
          ok(d);
          resolve(undefined);
        };
        p.reject = (e) => {
          ko(e);
          resolve(undefined);
        };
      })));
      this.socket.end(encodeRequest(Cmd.DISC, 0n, 0, 0));
    }
    await new Promise<void>((resolve) => {
      if (this.socket.destroyed) resolve();
      else {
        const timer = setTimeout(() => this.socket.destroy(), 5_000);
        this.socket.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
      }
    });
  }

  private lost(): Record<string, unknown> {
    const reads = [...this.pending.values()];
    return { where: this.where, outstanding: reads.length, bytes: reads.reduce((n, p) => n + p.length, 0), firstOffset: reads[0]?.offset };
  }

  private fail(error: NbdError): void {
    this.failure ??= error;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(this.failure);
  }

  /** Reads replies until the connection ends, settling the matching requests. */
  private async receive(): Promise<void> {
    try {
      for (;;) {
        const head = await this.reader.take(16);
        const magic = head.readUInt32BE(0);
        if (magic !== SIMPLE_REPLY_MAGIC) throw new NbdError('NBD_PROTOCOL', `${this.where}: unexpected reply magic 0x${magic.toString(16)}`, { where: this.where });
        const error = head.readUInt32BE(4);
        const cookie = head.readBigUInt64BE(8);
        const request = this.pending.get(cookie);
        if (request === undefined) throw new NbdError('NBD_PROTOCOL', `${this.where}: reply to unknown request ${cookie}`, { where: this.where });
        if (error !== 0) {
          this.pending.delete(cookie);
          request.reject(new NbdError('NBD_READ_FAILED', `${this.where}: read of ${request.length} bytes at ${request.offset} failed with ${errnoName(error)}`, { where: this.where, errno: error, offset: request.offset, length: request.length }));
          continue;
        }
        const data = await this.reader.take(request.length);
        this.pending.delete(cookie);
        request.resolve(data);
      }
    } catch (error) {
      if (error instanceof NbdError) {
        this.fail(error);
        this.socket.destroy();
        return;
      }
      if (this.closing && this.pending.size === 0) return;
      const lost = this.lost();
      const message =
        this.pending.size > 0
          ? `${this.where}: connection dropped with ${this.pending.size} read(s) outstanding (${lost.bytes as number} bytes from offset ${lost.firstOffset as number}): ${(error as Error).message}`
          : `${this.where}: connection dropped: ${(error as Error).message}`;
      this.fail(new NbdError('NBD_DISCONNECTED', message, lost, { cause: error }));
    }
  }
}

/** Wraps the socket in TLS, checking the server as `opts.tls` says. */
async function startTls(raw: Socket, opts: NbdConnectOptions, where: string): Promise<TLSSocket> {
  const given = opts.tls!;
  const pinned = given.cert === undefined ? undefined : new X509Certificate(given.cert);
  const verifyChain = given.ca !== undefined;
  const servername = given.servername ?? (net.isIP(opts.host) === 0 ? opts.host : undefined);
  const socket = tls.connect({
    socket: raw,
    host: opts.host,
    ...(servername !== undefined ? { servername } : {}),
    ...(verifyChain ? { ca: given.ca } : {}),
    rejectUnauthorized: verifyChain,
    ...(verifyChain && given.servername !== undefined ? { checkServerIdentity: (_host: string, cert: tls.PeerCertificate) => tls.checkServerIdentity(given.servername!, cert) } : {}),
  });
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', (error: NodeJS.ErrnoException) => {
      const code = error.code ?? '';
      const untrusted = /CERT|SELF_SIGNED|ALTNAME|UNABLE_TO/.test(code);
      reject(
        untrusted
          ? new NbdError('NBD_TLS_UNTRUSTED', `${where}: the server's TLS certificate is not trusted (${code})`, { where, tlsCode: code }, { cause: error })
          : new NbdError('NBD_PROTOCOL', `${where}: TLS handshake failed: ${error.message}`, { where }, { cause: error }),
      );
    });
  });
  if (pinned !== undefined) {
    const peer = socket.getPeerX509Certificate();
    if (peer === undefined || !peer.raw.equals(pinned.raw)) {
      socket.destroy();
      throw new NbdError('NBD_TLS_UNTRUSTED', `${where}: the server presented a TLS certificate other than the one given (fingerprint ${peer?.fingerprint256 ?? 'none'})`, {
        where,
        expected: pinned.fingerprint256,
      });
    }
  }
  return socket;
}
