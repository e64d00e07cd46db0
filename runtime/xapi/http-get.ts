import net from 'node:net';
import tls from 'node:tls';

/**
 * The body of a response read by `httpGet`. `pump` hands each piece of it to `onChunk`,
 * synchronously, as a view of one buffer that is reused for the next socket read: `onChunk`
 * must not keep it (copy what must outlive the call). A throw from `onChunk` ends the transfer
 * and rejects `pump` with it. Resolves at the body's end (its Content-Length, the last chunk
 * of a chunked body, or the server's close when neither is given).
 */
export interface BodySource {
  pump(onChunk: (chunk: Buffer) => void): Promise<void>;
  /** Ends the transfer; a running `pump` rejects with `error`. Safe to call twice. */
  destroy(error?: Error): void;
}

export interface GetResponse {
  statusCode: number;
  /** Header names in lower case. */
  headers: Map<string, string>;
  body: BodySource;
}

export interface GetOptions {
  /** PEM text of CA certificates to trust, besides the system's. */
  ca?: string;
  insecure?: boolean;
  /** The socket is destroyed with ETIMEDOUT after this long without a byte. */
  idleTimeoutMs: number;
}

/** Bytes read from the socket at once, into the one buffer of a response. */
const READ_BUFFER = 256 << 10;
/** Largest status line and headers accepted. */
const MAX_HEAD = 64 << 10;

function protocolError(message: string): Error {
  return Object.assign(new Error(message), { code: 'HTTP_PROTOCOL' });
}

/**
 * One HTTP/1.1 GET over a plain or TLS socket, for large downloads: each socket read lands in
 * the same buffer (`onread`) and goes straight to the consumer, with no allocation or copy per
 * chunk (undici copies every read into its parser's memory, then into a fresh Buffer per
 * chunk: three times the CPU of `curl` per GiB; docs/performance.md). Redirects are the
 * caller's (a 3xx is returned like any status). Rejects with the socket's error (ECONNREFUSED,
 * a TLS code…) when no response head arrives.
 *
 * @example
 *   const { statusCode, body } = await httpGet(new URL('https://xapi/export?uuid=…'), { idleTimeoutMs: 600_000 });
 *   await body.pump((chunk) => hash.update(chunk));
 */
export function httpGet(url: URL, opts: GetOptions): Promise<GetResponse> {
  return new Promise((resolve, reject) => {
    const buffer = Buffer.allocUnsafe(READ_BUFFER);
    const secure = url.protocol === 'https:';
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const port = Number(url.port || (secure ? 443 : 80));

    // Parsing state.
    let head: Buffer | undefined = Buffer.alloc(0);
    let framing: 'length' | 'chunked' | 'close' = 'close';
    let remaining = 0; // body bytes left (length), or bytes left of the current chunk (chunked)
    let chunkState: 'size' | 'data' | 'data-end' | 'trailer' = 'size';
    let line = '';
    let pending: Buffer | undefined; // body bytes read with the head, before pump
    let done = false;
    let failure: Error | undefined;
    let consumer: ((chunk: Buffer) => void) | undefined;
    let finish: { resolve(): void; reject(e: Error): void } | undefined;

    const settle = (error?: Error) => {
      if (done) return;
      done = true;
      if (error !== undefined) failure = error;
      socket.destroy();
      if (head !== undefined) {
        reject(failure ?? protocolError(`${url.host} closed the connection before answering`));
        return;
      }
      if (finish !== undefined) {
        if (failure !== undefined) finish.reject(failure);
        else finish.resolve();
      }
    };

    /** Hands body bytes to the consumer; false when the body ended in them. */
    const deliver = (data: Buffer) => {
      if (consumer === undefined) {
        pending = pending === undefined ? Buffer.from(data) : Buffer.concat([pending, data]);
        return;
      }
      consumer(data);
    };

    const onBody = (data: Buffer): void => {
      if (framing === 'close') {
        deliver(data);
      } else if (framing === 'length') {
        const take = Math.min(remaining, data.length);
        if (take > 0) deliver(take === data.length ? data : data.subarray(0, take));
        remaining -= take;
        if (remaining === 0) settle();
      } else {
        let at = 0;
        while (at < data.length && !done) {
          if (chunkState === 'data') {
            const take = Math.min(remaining, data.length - at);
            deliver(data.subarray(at, at + take));
            at += take;
            remaining -= take;
            if (remaining === 0) chunkState = 'data-end';
            continue;
          }
          const nl = data.indexOf(10, at);
          const end = nl === -1 ? data.length : nl;
          line += data.toString('latin1', at, end);
          if (line.length > 8192) throw protocolError(`${url.host} sent a malformed chunked body`);
          at = end;
          if (nl === -1) break;
          at++;
          const text = line.trim();
          line = '';
          if (chunkState === 'data-end') {
            if (text !== '') throw protocolError(`${url.host} sent a malformed chunked body`);
            chunkState = 'size';
          } else if (chunkState === 'size') {
            const size = Number.parseInt(text.split(';')[0]!, 16);
            if (!/^[0-9a-fA-F]+/.test(text) || !Number.isSafeInteger(size)) throw protocolError(`${url.host} sent a malformed chunk size`);
            if (size === 0) chunkState = 'trailer';
            else {
              remaining = size;
              chunkState = 'data';
            }
          } else if (text === '') {
            settle(); // the empty line after the trailers
          }
        }
      }
    };

    const onHead = (data: Buffer): void => {
      head = Buffer.concat([head!, data]);
      const end = head.indexOf('\r\n\r\n');
      if (end === -1) {
        if (head.length > MAX_HEAD) throw protocolError(`${url.host} sent a response head over ${MAX_HEAD} bytes`);
        return;
      }
      const lines = head.toString('latin1', 0, end).split('\r\n');
      const rest = head.subarray(end + 4);
      head = undefined;
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!);
      if (status === null) throw protocolError(`${url.host} sent no HTTP status line`);
      const headers = new Map<string, string>();
      for (const l of lines.slice(1)) {
        const colon = l.indexOf(':');
        if (colon > 0) headers.set(l.slice(0, colon).trim().toLowerCase(), l.slice(colon + 1).trim());
      }
      const statusCode = Number(status[1]);
      if (/\bchunked\b/i.test(headers.get('transfer-encoding') ?? '')) framing = 'chunked';
      else if (headers.has('content-length')) {
        remaining = Number(headers.get('content-length'));
        if (!Number.isSafeInteger(remaining) || remaining < 0) throw protocolError(`${url.host} sent a bad Content-Length`);
        framing = 'length';
      }
      resolve({ statusCode, headers, body });
      if (framing === 'length' && remaining === 0) settle();
      else if (rest.length > 0) onBody(rest);
    };

    const onread = {
      buffer,
      callback: (n: number, buf: Uint8Array): boolean => {
        if (done) return false;
        const data = Buffer.from(buf.buffer, buf.byteOffset, n);
        try {
          if (head !== undefined) onHead(data);
          else onBody(data);
        } catch (error) {
          settle(error as Error);
          return false;
        }
        // Until someone reads the body, stop reading (pump resumes).
        return head !== undefined || consumer !== undefined;
      },
    };

    const socket: net.Socket = secure
      ? tls.connect({
          host,
          port,
          ...(net.isIP(host) === 0 ? { servername: host } : {}),
          rejectUnauthorized: opts.insecure !== true,
          ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
          onread,
        } as tls.ConnectionOptions)
      : net.connect({ host, port, onread });
    socket.setNoDelay(true);
    socket.setTimeout(opts.idleTimeoutMs, () =>
      settle(Object.assign(new Error(`no data from ${url.host} for ${Math.round(opts.idleTimeoutMs / 1000)} s`), { code: 'ETIMEDOUT' })),
    );
    socket.on('error', (error) => settle(error));
    socket.on('end', () => {
      if (head === undefined && framing === 'close') settle();
      else settle(Object.assign(new Error(`${url.host} closed the connection before the end of the response`), { code: 'UND_ERR_SOCKET' }));
    });
    socket.on('close', () => settle(failure ?? Object.assign(new Error(`${url.host} closed the connection`), { code: 'UND_ERR_SOCKET' })));
    socket.once(secure ? 'secureConnect' : 'connect', () => {
      socket.write(`GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\nAccept: */*\r\n\r\n`);
    });

    const body: BodySource = {
      pump(onChunk) {
        return new Promise<void>((res, rej) => {
          if (consumer !== undefined) throw new Error('the body is already being read');
          consumer = onChunk;
          if (pending !== undefined) {
            const first = pending;
            pending = undefined;
            try {
              onChunk(first);
            } catch (error) {
              settle(error as Error);
            }
          }
          if (done) {
            if (failure !== undefined) rej(failure);
            else res();
            return;
          }
          finish = { resolve: res, reject: rej };
          socket.resume();
        });
      },
      destroy(error) {
        settle(error ?? Object.assign(new Error('the transfer was cancelled'), { code: 'ABORT_ERR' }));
      },
    };
  });
}
