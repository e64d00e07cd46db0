import { readFileSync } from 'node:fs';
import type { Settings } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import { XapiClient } from '../xapi/client.js';
import type { XapiOptions } from '../xapi/client.js';

/**
 * The XAPI password of the settings (password_file, or VMBACKUP_PASSWORD).
 * @throws ConfigError naming where to set it, when there is none.
 */
export function xapiPassword(settings: Settings): string {
  if (settings.password === undefined) {
    throw new ConfigError('no password for XAPI: set password_file (or --password-file), or the environment variable VMBACKUP_PASSWORD', { key: 'password' });
  }
  return settings.password;
}

/**
 * How to reach the pool, from the settings: URL, user, password, the CA of tls_ca_file
 * (read now), insecure; `log` gets xen-api's background errors.
 * @throws ConfigError when there is no password or tls_ca_file cannot be read.
 *
 * @example await XapiClient.connect(xapiOptions(settings, log))
 */
export function xapiOptions(settings: Settings, log?: Logger): XapiOptions {
  return {
    url: settings.xapi_url,
    user: settings.username,
    password: xapiPassword(settings),
    ...(settings.tls_ca_file !== undefined ? { ca: readCa(settings.tls_ca_file) } : {}),
    insecure: settings.insecure,
    ...(log !== undefined ? { log } : {}),
  };
}

/**
 * Logs in to the pool of the settings (`xapiOptions`).
 * @throws ConfigError (no password, unreadable tls_ca_file) or ConnectionError.
 *
 * @example const xapi = await connectXapi(settings, log); try { … } finally { await xapi.close(); }
 */
export async function connectXapi(settings: Settings, log?: Logger): Promise<XapiClient> {
  return XapiClient.connect(xapiOptions(settings, log));
}

function readCa(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`tls_ca_file ${file} cannot be read (${(error as { code?: string }).code ?? String(error)})`, { key: 'tls_ca_file', file });
  }
}
