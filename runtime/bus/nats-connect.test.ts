import { execFile } from 'node:child_process';
import { chmod, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer } from '../../test/helpers/nats-server.js';
import type { NatsServer } from '../../test/helpers/nats-server.js';
import { makeTls } from '../../test/sim/tls.js';
import { ConfigError, ConnectionError } from '../errors.js';
import { silentLogger } from '../log.js';
import { openNats, redactUrl } from './nats-connect.js';
import type { NatsSettings } from './nats-connect.js';

const run = promisify(execFile);
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-nats-auth-'));
});

async function secret(name: string, text: string): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, text);
  await chmod(file, 0o600);
  return file;
}

const base = (server: NatsServer, extra: Partial<NatsSettings> = {}): NatsSettings => ({ nats_url: server.url, concurrency: 2, ...extra }) as NatsSettings;

async function openAndClose(settings: NatsSettings): Promise<void> {
  const nats = await openNats(settings, silentLogger(), { reconnectForever: false });
  await nats.close();
}

describe('openNats: token', () => {
  let server: NatsServer;
  beforeAll(async () => {
    server = await startNatsServer({ config: 'authorization { token: "t0ken-of-the-test" }' });
  });
  afterAll(async () => server?.stop());

  it('connects with nats_token_file (first line)', async () => {
    await openAndClose(base(server, { nats_token_file: await secret('token', 't0ken-of-the-test\nsecond line ignored\n') }));
  });

  it('a wrong token: a ConnectionError that names the settings, never the token', async () => {
    const error = await openAndClose(base(server, { nats_token_file: await secret('bad-token', 'wrong-t0ken\n') })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectionError);
    expect((error as ConnectionError).code).toBe('NATS_AUTH');
    expect((error as Error).message).toMatch(/refused the credentials .*nats_token_file/);
    expect((error as Error).message).not.toContain('wrong-t0ken');
  });

  it('an unreadable token file: a ConfigError naming the key and the file', async () => {
    const missing = path.join(dir, 'no-such-token');
    const error = await openAndClose(base(server, { nats_token_file: missing })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect(error).toMatchObject({ message: `nats_token_file ${missing} cannot be read (ENOENT)`, data: { key: 'nats_token_file', file: missing } });
  });
});

describe('openNats: user and password', () => {
  let server: NatsServer;
  beforeAll(async () => {
    server = await startNatsServer({ config: 'authorization { users = [ { user: vmbackup, password: "pa55-word" } ] }' });
  });
  afterAll(async () => server?.stop());

  it('connects with nats_user and nats_password_file', async () => {
    await openAndClose(base(server, { nats_user: 'vmbackup', nats_password_file: await secret('password', 'pa55-word\n') }));
  });

  it('refuses a user without a password file, and a wrong password', async () => {
    await expect(openAndClose(base(server, { nats_user: 'vmbackup' }))).rejects.toThrow(/nats_user vmbackup has no password: set nats_password_file/);
    const error = await openAndClose(base(server, { nats_user: 'vmbackup', nats_password_file: await secret('bad-password', 'nope\n') })).catch((e: unknown) => e);
    expect((error as ConnectionError).code).toBe('NATS_AUTH');
    expect((error as Error).message).not.toContain('nope');
  });
});

describe('openNats: TLS with a client certificate', () => {
  let server: NatsServer;
  let tls: Awaited<ReturnType<typeof makeTls>>;
  let clientCert: string;
  let clientKey: string;
  beforeAll(async () => {
    tls = await makeTls(['127.0.0.1'], path.join(dir, 'tls'));
    const f = (n: string) => path.join(tls.dir, n);
    await writeFile(f('client.ext'), 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n');
    await run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', f('client.key'), '-out', f('client.csr'), '-subj', '/CN=vmbackup-worker']);
    await run('openssl', ['x509', '-req', '-in', f('client.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('client.crt'), '-days', '30', '-sha256', '-extfile', f('client.ext')]);
    clientCert = f('client.crt');
    clientKey = f('client.key');
    server = await startNatsServer({
      config: `tls { cert_file: ${JSON.stringify(f('server.crt'))}, key_file: ${JSON.stringify(f('server.key'))}, ca_file: ${JSON.stringify(f('ca.crt'))}, verify: true }`,
      scheme: 'tls',
    });
  });
  afterAll(async () => server?.stop());

  it('connects with nats_tls_ca_file, nats_tls_cert_file and nats_tls_key_file', async () => {
    await openAndClose(base(server, { nats_tls_ca_file: tls.caFile, nats_tls_cert_file: clientCert, nats_tls_key_file: clientKey }));
  });

  it('without the client certificate the server refuses; a certificate without its key is a config error', async () => {
    const error = await openAndClose(base(server, { nats_tls_ca_file: tls.caFile })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectionError);
    expect((error as Error).message).toMatch(/^cannot reach NATS at tls:\/\/127\.0\.0\.1:\d+ \(TIMEOUT\): no answer, or the server refused the TLS handshake \(its CA, a client certificate: nats_tls_\*\)$/);
    await expect(openAndClose(base(server, { nats_tls_ca_file: tls.caFile, nats_tls_cert_file: clientCert }))).rejects.toThrow(/nats_tls_cert_file and nats_tls_key_file go together/);
  });
});

describe('openNats: where the server is', () => {
  it('no nats_url: a ConfigError that says how to set it', async () => {
    await expect(openNats({ concurrency: 2 } as NatsSettings, silentLogger())).rejects.toThrow(/no NATS server: set nats_url in the config, VMBACKUP_NATS_URL, or --nats URL/);
  });

  it('nobody listening: NATS_UNREACHABLE, with the URL and its password masked', async () => {
    const error = await openNats({ nats_url: 'nats://me:pa55@127.0.0.1:9', concurrency: 2 } as NatsSettings, silentLogger(), { reconnectForever: false }).catch((e: unknown) => e);
    expect((error as ConnectionError).code).toBe('NATS_UNREACHABLE');
    expect((error as Error).message).toMatch(/^cannot reach NATS at nats:\/\/\*\*\*@127\.0\.0\.1:9 /);
    expect((error as Error).message).not.toContain('pa55');
  });

  it.each([
    ['nats://user:secret@host:4222', 'nats://***@host:4222'],
    ['nats://a:b@h1:4222, tls://c:d@h2:4222', 'nats://***@h1:4222, tls://***@h2:4222'],
    ['nats://host:4222', 'nats://host:4222'],
  ])('redactUrl(%s) = %s', (url, shown) => {
    expect(redactUrl(url)).toBe(shown);
  });
});
