import { chmod, writeFile } from 'node:fs/promises';
import { createAccount, createOperator, createUser, encodeAccount, encodeOperator, encodeUser, fmtCreds } from '@nats-io/jwt';
import type { Account, KeyPair, User } from '@nats-io/jwt';

/**
 * A NATS operator (decentralised JWT auth), made in memory as `nsc` would: an operator, its
 * system account, accounts signed by it and users signed by an account. `config` is what a
 * nats-server needs to trust them (startNatsServer({ config })): the operator JWT, the system
 * account and a MEMORY resolver preloaded with every account's JWT.
 *
 * In operator mode JetStream is per account: an account whose JWT has no JetStream limits
 * cannot use it, however the server is configured. `jetstream: true` gives unlimited ones.
 *
 * @example
 *   const op = await natsOperator({ accounts: { vmbackup: { jetstream: true } } });
 *   const nats = await startNatsServer({ config: op.config });
 *   await writeCreds(file, await op.creds('vmbackup', 'worker'));
 */
export interface NatsOperator {
  operator: KeyPair;
  system: KeyPair;
  accounts: Record<string, KeyPair>;
  /** Lines for the server's config: operator, system_account, resolver, resolver_preload. */
  config: string;
  /** A user of `account` (or of any account key, e.g. one the server does not know), as a creds file's text. */
  creds(account: string | KeyPair, user: string, claims?: Partial<User>, opts?: { exp?: number }): Promise<string>;
}

/** Every NATS limit unlimited (what `nsc add account` writes); the Go decoder reads an absent one as 0. */
const UNLIMITED = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 } as const;
/** JetStream on, unlimited (`nsc edit account --js-mem-storage -1 --js-disk-storage -1 --js-streams -1 --js-consumer -1`). */
const JETSTREAM = { mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 } as const;

export async function natsOperator(opts: { accounts: Record<string, { jetstream: boolean }> }): Promise<NatsOperator> {
  const operator = createOperator();
  const system = createAccount();
  const operatorJwt = await encodeOperator('vmbackup-test', operator, { system_account: system.getPublicKey() });
  const preload: [string, string][] = [[system.getPublicKey(), await encodeAccount('SYS', system, { limits: UNLIMITED } as Partial<Account>, { signer: operator })]];
  const accounts: Record<string, KeyPair> = {};
  for (const [name, a] of Object.entries(opts.accounts)) {
    const kp = createAccount();
    accounts[name] = kp;
    const limits = a.jetstream ? { ...UNLIMITED, ...JETSTREAM } : UNLIMITED;
    preload.push([kp.getPublicKey(), await encodeAccount(name, kp, { limits } as Partial<Account>, { signer: operator })]);
  }
  const config = [
    `operator: ${JSON.stringify(operatorJwt)}`,
    `system_account: ${system.getPublicKey()}`,
    `resolver: MEMORY`,
    `resolver_preload: {`,
    ...preload.map(([pub, jwt]) => `  ${pub}: ${JSON.stringify(jwt)}`),
    `}`,
  ].join('\n');
  return {
    operator,
    system,
    accounts,
    config,
    async creds(account, name, claims = {}, o = {}) {
      const issuer = typeof account === 'string' ? accounts[account] : account;
      if (issuer === undefined) throw new Error(`no account ${String(account)}`);
      const user = createUser();
      const jwt = await encodeUser(name, user, issuer, claims, o.exp !== undefined ? { exp: o.exp } : {});
      return new TextDecoder().decode(fmtCreds(jwt, user));
    },
  };
}

/** Writes a creds file as nsc does: owner-only (0600), whatever the umask. */
export async function writeCreds(file: string, text: string): Promise<string> {
  await writeFile(file, text, { mode: 0o600 });
  await chmod(file, 0o600);
  return file;
}
