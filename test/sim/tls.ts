import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TlsMaterial {
  /** PEM of the CA that signed the server certificate (what a client must trust). */
  caFile: string;
  ca: string;
  key: string;
  cert: string;
  dir: string;
}

/**
 * A throwaway CA and a server certificate signed by it, made with the `openssl` command:
 * the certificate names every host address (as IP SANs) and `localhost`, so clients that
 * verify certificates work once they trust `caFile`.
 *
 * @example
 *   const tls = await makeTls(['127.0.0.1', '127.0.0.2']);
 *   https.createServer({ key: tls.key, cert: tls.cert });
 */
export async function makeTls(addresses: string[], dir?: string): Promise<TlsMaterial> {
  const where = dir ?? (await mkdtemp(join(tmpdir(), 'vmbackup-sim-tls-')));
  await mkdir(where, { recursive: true });
  const f = (name: string) => join(where, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', [
    'req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '3650', '-subj', '/CN=vmbackup-sim test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  await run('openssl', ['req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=vmbackup-sim']);
  const san = [...new Set(addresses)].map((a) => `IP:${a}`).concat('DNS:localhost').join(',');
  await writeFile(
    f('server.ext'),
    `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n`,
  );
  await run('openssl', [
    'x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-out', f('server.crt'), '-days', '825', '-sha256', '-extfile', f('server.ext'),
  ]);
  const [ca, key, cert] = await Promise.all([readFile(f('ca.crt'), 'utf8'), readFile(f('server.key'), 'utf8'), readFile(f('server.crt'), 'utf8')]);
  return { caFile: f('ca.crt'), ca, key, cert, dir: where };
}
