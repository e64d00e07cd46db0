import { readFileSync } from 'node:fs';
import { connect, credsAuthenticator } from 'nats';
import type { ConnectionOptions, NatsConnection } from 'nats';
import type { Logger } from 'pino';
import type { Settings } from '../config/schema.js';
import { ConfigError, ConnectionError } from '../errors.js';
import { NatsRunStore } from '../run/nats-store.js';
import { jobSubject } from '../events.js';
import { NatsBus, untilAnswered } from './nats.js';
import type { NatsBusOptions } from './nats.js';
import { applyStreams } from './nats-infra.js';
import type { ApplyReport } from './nats-infra.js';

/** The settings openNats reads: the `nats_*` keys, and `concurrency` (the global export cap). */
export type NatsSettings = Pick<
  Settings,
  'nats_url' | 'nats_token_file' | 'nats_user' | 'nats_password_file' | 'nats_creds_file' | 'nats_tls_ca_file' | 'nats_tls_cert_file' | 'nats_tls_key_file' | 'concurrency'
>;

export interface OpenNatsOptions {
  /** Connection name the server shows (`nats server report connections`). Default `vmbackup`. */
  name?: string;
  /** Keep reconnecting for ever (workers, `vmbackup run`). Default true; false gives up after ~10 s. */
  reconnectForever?: boolean;
  /**
   * Replicas of vmbackup's streams in a JetStream cluster (3 for three nodes). Raises the
   * count of existing streams; never lowers it. Default: 1 when creating, else as they are.
   */
  replicas?: number;
  /** Options of the bus (ack wait, publish retry, pull expiry). */
  bus?: Omit<NatsBusOptions, 'log' | 'maxAckPending'>;
}

/** A connected NATS runtime: the bus, the run store, the connection. */
export interface NatsRuntime {
  bus: NatsBus;
  store: NatsRunStore;
  nc: NatsConnection;
  /** What start-up did to each stream (`stream VMBACKUP_JOBS`: created | updated | unchanged). */
  applied: ApplyReport;
  /** Stops the bus (running handlers settle), closes the connection. */
  close(): Promise<void>;
}

/**
 * Connects to NATS with the settings' options (server list, token file, user + password
 * file, creds file, TLS CA / client certificate / key), applies vmbackup's streams and KV
 * bucket (infra/nats/jetstream.ts; create or update, a no-op when they match), and returns
 * the bus and the run store on that connection. The export subject's global limit
 * (max_ack_pending) is `settings.concurrency`.
 *
 * Secrets (token, password, creds) are read from their files here and never logged; a URL's
 * user info is masked in messages.
 *
 * @throws ConfigError for a missing `nats_url` or an unreadable secret file (names the key
 *   and the file); ConnectionError when the server cannot be reached, refuses the
 *   credentials, or has no JetStream. Both make a command exit 2.
 *
 * @example
 *   const nats = await openNats(settings, log, { name: 'vmbackup gateway' });
 *   await startRun(nats.store, nats.bus, { runId, options, startedAt: new Date() });
 *   await nats.close();
 */
export async function openNats(settings: NatsSettings, log: Logger, opts: OpenNatsOptions = {}): Promise<NatsRuntime> {
  const connectOptions = natsConnectOptions(settings, opts);
  const shown = redactUrl(String(settings.nats_url));
  let nc: NatsConnection;
  try {
    nc = await connect(connectOptions);
  } catch (error) {
    throw natsConnectionError(error, shown, connectOptions.tls !== undefined || /^tls:/i.test(shown), credentialInUse(settings));
  }
  try {
    void watchStatus(nc, log, shown);
    let jsm;
    try {
      // A cluster electing its meta leader (a node just died) does not answer for seconds:
      // wait for it. A server without JetStream answers at once (no responders).
      jsm = await untilAnswered(`NATS at ${shown}: JetStream`, () => nc.jetstreamManager(), { log, retryIf: (e) => (e as { code?: string }).code === 'TIMEOUT' });
    } catch (error) {
      if (error instanceof ConnectionError) throw error; // no answer within the bound: said so
      const hint =
        settings.nats_creds_file !== undefined
          ? "the account of nats_creds_file needs JetStream limits in its JWT (nsc edit account --js-mem-storage … --js-disk-storage …) and the user may publish to $JS.API.>; or the server runs without JetStream (-js)"
          : 'run nats-server with JetStream on (-js, or infra/nats/nats-server.conf), and let this user publish to $JS.API.>';
      throw new ConnectionError('NATS_NO_JETSTREAM', `NATS at ${shown} has no JetStream for this connection (${(error as Error).message}): ${hint}`, { url: shown }, { cause: error });
    }
    // A cluster electing a leader (a node just died) answers within seconds: wait for it.
    const applied = await untilAnswered(`NATS at ${shown}: applying vmbackup's streams`, () => applyStreams(jsm, opts.replicas !== undefined ? { replicas: opts.replicas } : {}), { log });
    for (const [what, done] of Object.entries(applied)) if (done !== 'unchanged') log.info(`NATS: ${what} ${done}`);
    const exportSubject = jobSubject('export');
    const bus = await NatsBus.create(nc, { ...opts.bus, log, maxAckPending: (subject) => (subject === exportSubject ? settings.concurrency : undefined) });
    const store = await NatsRunStore.open(nc.jetstream({ checkAPI: false }));
    return { bus, store, nc, applied, close: () => bus.close() };
  } catch (error) {
    await nc.close().catch(() => {});
    throw error;
  }
}

/** nats.js connection options from the settings; secret files are read here. */
export function natsConnectOptions(settings: NatsSettings, opts: Pick<OpenNatsOptions, 'name' | 'reconnectForever'> = {}): ConnectionOptions {
  if (settings.nats_url === undefined || settings.nats_url.trim() === '') {
    throw new ConfigError('no NATS server: set nats_url in the config, VMBACKUP_NATS_URL, or --nats URL', { key: 'nats_url' });
  }
  const servers = settings.nats_url
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  const options: ConnectionOptions = {
    servers,
    name: opts.name ?? 'vmbackup',
    maxReconnectAttempts: opts.reconnectForever === false ? 10 : -1,
    reconnectTimeWait: 1_000,
    timeout: 10_000,
    // A node that dies with its machine sends no reset: the missed pings are what notice
    // it, here within 30 s (nats.js's default, two minutes and two pings, is four).
    pingInterval: 10_000,
    maxPingOut: 3,
  };
  if (settings.nats_token_file !== undefined) options.token = firstLine(settings.nats_token_file, 'nats_token_file');
  if (settings.nats_user !== undefined || settings.nats_password_file !== undefined) {
    if (settings.nats_user === undefined) throw new ConfigError('nats_password_file is set but nats_user is not', { key: 'nats_user' });
    if (settings.nats_password_file === undefined) throw new ConfigError(`nats_user ${settings.nats_user} has no password: set nats_password_file`, { key: 'nats_password_file' });
    options.user = settings.nats_user;
    options.pass = firstLine(settings.nats_password_file, 'nats_password_file');
  }
  if (settings.nats_creds_file !== undefined) {
    const creds = readSecret(settings.nats_creds_file, 'nats_creds_file');
    // nats.js would only fail at connect time, and its BAD_CREDS reads as the server's refusal.
    if (!/-{3,}BEGIN NATS USER JWT-{3,}[\s\S]*-{3,}BEGIN USER NKEY SEED-{3,}\s*\n\s*SU[A-Z2-7]+/.test(creds)) {
      throw new ConfigError(
        `nats_creds_file ${settings.nats_creds_file} is not a NATS credentials file: it needs the user JWT block and the nkey seed block, as nsc writes them (nsc generate creds)`,
        { key: 'nats_creds_file', file: settings.nats_creds_file },
      );
    }
    options.authenticator = credsAuthenticator(new TextEncoder().encode(creds));
  }
  const tls = { ca: settings.nats_tls_ca_file, cert: settings.nats_tls_cert_file, key: settings.nats_tls_key_file };
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new ConfigError('nats_tls_cert_file and nats_tls_key_file go together: set both or neither', { key: tls.cert === undefined ? 'nats_tls_cert_file' : 'nats_tls_key_file' });
  }
  if (tls.ca !== undefined || tls.cert !== undefined) {
    options.tls = {
      ...(tls.ca !== undefined ? { ca: readSecret(tls.ca, 'nats_tls_ca_file') } : {}),
      ...(tls.cert !== undefined ? { cert: readSecret(tls.cert, 'nats_tls_cert_file') } : {}),
      ...(tls.key !== undefined ? { key: readSecret(tls.key, 'nats_tls_key_file') } : {}),
    };
  }
  return options;
}

function readSecret(file: string, key: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as { code?: string }).code ?? String(error);
    throw new ConfigError(`${key} ${file} cannot be read (${code})`, { key, file });
  }
}

function firstLine(file: string, key: string): string {
  const line = readSecret(file, key).split(/\r?\n/)[0] ?? '';
  if (line === '') throw new ConfigError(`${key} ${file}: its first line is empty`, { key, file });
  return line;
}

/** The credential settings a connection uses, as the NATS_AUTH message names them. */
function credentialInUse(settings: NatsSettings): string {
  if (settings.nats_creds_file !== undefined) return `nats_creds_file ${settings.nats_creds_file} (is its user signed by an account the server knows, and not expired?)`;
  if (settings.nats_token_file !== undefined) return `nats_token_file ${settings.nats_token_file}`;
  if (settings.nats_user !== undefined) return `nats_user ${settings.nats_user} and nats_password_file`;
  return 'none is set: the server wants nats_token_file, nats_user / nats_password_file or nats_creds_file';
}

/** A connection failure in the operator's terms. */
function natsConnectionError(error: unknown, url: string, tls: boolean, credential: string): ConnectionError {
  const code = (error as { code?: string }).code ?? '';
  const message = (error as Error).message ?? String(error);
  if (code === 'AUTHORIZATION_VIOLATION' || code === 'BAD_AUTHENTICATION' || code === 'BAD_CREDS' || /authori[sz]ation|authentication/i.test(message)) {
    return new ConnectionError('NATS_AUTH', `NATS at ${url} refused the credentials (${code || message}): ${credential}`, { url }, { cause: error });
  }
  if (code === 'CONNECTION_REFUSED' || code === 'CONNECTION_TIMEOUT' || code === 'TIMEOUT' || /ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|timeout/i.test(message)) {
    // A server that refuses the TLS handshake (an unknown client certificate) just hangs up.
    const hint = tls && /TIMEOUT/i.test(code || message) ? ': no answer, or the server refused the TLS handshake (its CA, a client certificate: nats_tls_*)' : '';
    return new ConnectionError('NATS_UNREACHABLE', `cannot reach NATS at ${url} (${code || message})${hint}`, { url }, { cause: error });
  }
  if (code === 'TLS' || /tls|certificate|self[- ]signed/i.test(message)) {
    return new ConnectionError('NATS_TLS', `TLS to NATS at ${url} failed (${message}): check nats_tls_ca_file, nats_tls_cert_file, nats_tls_key_file`, { url }, { cause: error });
  }
  return new ConnectionError('NATS_CONNECT_FAILED', `cannot connect to NATS at ${url}: ${message}`, { url }, { cause: error });
}

/** Says when the connection drops and comes back; a worker keeps going through both. */
async function watchStatus(nc: NatsConnection, log: Logger, url: string): Promise<void> {
  for await (const s of nc.status()) {
    if (s.type === 'disconnect') log.warn(`NATS: disconnected from ${redactUrl(String(s.data))}; reconnecting`);
    else if (s.type === 'reconnect') log.info(`NATS: reconnected to ${redactUrl(String(s.data))}`);
    else if (s.type === 'error') log.warn(`NATS (${url}): ${String(s.data)}`);
    else if (s.type === 'ldm') log.warn(`NATS: the server (${url}) entered lame duck mode; moving to another`);
  }
}

/** `nats://user:secret@host` → `nats://***@host`, for messages. */
export function redactUrl(text: string): string {
  return text.replace(/([a-z][a-z0-9+.-]*:\/\/)[^@/,\s]*@/gi, '$1***@');
}
