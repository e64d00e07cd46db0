import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Xapi, type XapiRecord } from 'xen-api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyXva } from '../../runtime/formats/xva.js';
import { smallPool } from '../sim/fixtures.js';
import { startSimulator, type Simulator } from '../sim/server.js';
import { login, waitFor, xapi } from '../sim/test-helpers.js';

const run = promisify(execFile);

let sim: Simulator;
beforeAll(async () => {
  sim = await startSimulator({ pool: smallPool() });
});
afterAll(async () => {
  await sim.close();
});

function client(url: string, transport: 'auto' | 'xml-rpc'): Xapi {
  return new Xapi({ url, auth: { user: 'root', password: 'secret' }, allowUnauthorized: false, transport, debounce: 20 });
}

function cached(x: Xapi, type: string): XapiRecord[] {
  return Object.values(x.objects.all).filter((o) => o.$type === type);
}

describe.each(['auto', 'xml-rpc'] as const)('the real xen-api client, transport %s', (transport) => {
  let x: Xapi;
  beforeAll(async () => {
    x = client(sim.url, transport);
    const before = sim.state.rpcCalls();
    await x.connect();
    await x.objectsFetched;
    const after = sim.state.rpcCalls();
    // auto tries JSON-RPC first and keeps it; xml-rpc posts XML from the start.
    if (transport === 'auto') expect(after.jsonrpc - before.jsonrpc).toBeGreaterThanOrEqual(4);
    else expect(after.xmlrpc - before.xmlrpc).toBeGreaterThanOrEqual(4);
  });
  afterAll(async () => {
    await x.disconnect();
  });

  it('caches the pool objects, with their references followed', () => {
    expect(x.status).toBe('connected');
    const vms = cached(x, 'VM');
    expect(vms.map((v) => v.name_label)).toEqual(expect.arrayContaining(['web1', 'db1', 'Café ünïcode ✓']));
    const web1 = vms.find((v) => v.name_label === 'web1') as XapiRecord & { $VBDs: (XapiRecord & { $VDI?: XapiRecord })[] };
    expect(web1.$VBDs.map((b) => b.$VDI?.name_label)).toEqual(['web1 0', 'web1 1', 'guest-tools.iso']);
    expect(x.pool.master).toBe(sim.hosts[0]!.ref);
  });

  it('sees a change made by another session', async () => {
    const other = await login(sim.url);
    const db1 = sim.state.vm('db1').ref;
    await xapi(sim.url, 'VM.set_name_description', other, db1, `changed by another session (${transport})`);
    await waitFor(() => cached(x, 'VM').find((v) => v.$ref === db1)?.name_description === `changed by another session (${transport})`, 5000, 'the event');
    await xapi(sim.url, 'session.logout', other);
  });

  it('callAsync(VM.snapshot) resolves with the new ref; barrier() returns', async () => {
    const web1 = sim.state.vm('web1').ref;
    const snap = await x.callAsync<string>('VM.snapshot', web1, `snap-${transport}`);
    expect(snap).toMatch(/^OpaqueRef:/);
    await x.barrier();
    const cachedSnap = cached(x, 'VM').find((v) => v.$ref === snap);
    expect(cachedSnap).toMatchObject({ name_label: `snap-${transport}`, is_a_snapshot: true, snapshot_of: web1 });
    // callAsync destroyed its task afterwards.
    await waitFor(() => !sim.state.tasks().some((t) => t.name_label === 'Async.VM.snapshot' && t.status === 'success'), 5000, 'task destroy');
  });

  it('getResource streams an XVA of a snapshot and its task resolves', async () => {
    const snap = sim.state.snapshots('web1').find((s) => s.name_label === `snap-${transport}`)!;
    const response = await x.getResource('/export/', { query: { ref: snap.ref } });
    expect(response.headers['content-length']).toBeUndefined();
    const report = await verifyXva(response.body);
    expect(report.disks.map((d) => d.bytes)).toEqual([4 << 20, 3 << 20]);
    await response.task;
    expect(sim.state.transfers('export').at(-1)).toMatchObject({ status: 'done', vm: `snap-${transport}`, vmUuid: snap.uuid });
  });

  it('reports XAPI errors as XapiError with code and params', async () => {
    const web1 = sim.state.vm('web1').ref;
    await expect(x.call('VM.destroy', web1)).rejects.toMatchObject({ code: 'VM_BAD_POWER_STATE', params: [web1, 'halted, suspended', 'running'] });
    await expect(x.callAsync('VM.destroy', web1)).rejects.toMatchObject({ code: 'VM_BAD_POWER_STATE' });
  });
});

describe('sessions and redirects', () => {
  it('disconnect() logs the session out', async () => {
    const x = client(sim.url, 'auto');
    await x.connect();
    await x.objectsFetched;
    const id = x.sessionId;
    expect(sim.state.sessions().map((s) => s.ref)).toContain(id);
    const loggedOut = sim.state.sessionStats().loggedOut;
    await x.disconnect();
    // xen-api does not wait for session.logout to be answered.
    await waitFor(() => !sim.state.sessions().some((s) => s.ref === id), 5000, 'logout');
    expect(sim.state.sessionStats().loggedOut).toBeGreaterThan(loggedOut);
  });

  it('follows HOST_IS_SLAVE from a pool member to the master', async () => {
    const x = client(sim.hosts[1]!.url, 'auto');
    await x.connect();
    await x.objectsFetched;
    expect(cached(x, 'host')).toHaveLength(2);
    const mine = sim.state.sessions().filter((s) => s.host === sim.hosts[0]!.ref);
    expect(mine.length).toBeGreaterThan(0);
    await x.disconnect();
  });

  it('re-logs in transparently when every session is invalidated mid-run', async () => {
    const x = client(sim.url, 'xml-rpc');
    await x.connect();
    await x.objectsFetched;
    sim.faults.invalidateSessions();
    const names = await x.call<string>('VM.get_name_label', sim.state.vm('db1').ref);
    expect(typeof names).toBe('string');
    await x.disconnect();
  });
});

describe('over HTTPS', () => {
  let tlsSim: Simulator;
  let script: string;
  beforeAll(async () => {
    tlsSim = await startSimulator({ pool: smallPool(), https: true });
    const dir = await mkdtemp(join(tmpdir(), 'sim-tls-client-'));
    script = join(dir, 'connect.mjs');
    const xenApi = join(process.cwd(), 'node_modules/xen-api/index.mjs');
    await writeFile(
      script,
      `import { Xapi } from ${JSON.stringify(xenApi)};
const x = new Xapi({ url: process.argv[2], auth: { user: 'root', password: 'secret' }, allowUnauthorized: false });
try {
  await x.connect();
  await x.objectsFetched;
  console.log('CONNECTED ' + Object.values(x.objects.all).filter((o) => o.$type === 'VM').length);
  await x.disconnect();
  // disconnect() does not wait for session.logout; give it time to leave.
  await new Promise((r) => setTimeout(r, 300));
  process.exit(0);
} catch (error) {
  console.log('FAILED ' + (error.code ?? error.cause?.code ?? error.message));
  process.exit(1);
}
`,
    );
  });
  afterAll(async () => {
    await tlsSim.close();
  });

  it('serves a certificate naming every host address', () => {
    expect(tlsSim.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(tlsSim.caFile).toBeDefined();
  });

  it('is refused by a client that does not trust the CA', async () => {
    const env = { ...process.env };
    delete env.NODE_EXTRA_CA_CERTS;
    const result = await run(process.execPath, [script, tlsSim.url], { env }).catch((e: { stdout: string; code: number }) => e);
    expect(result.stdout).toMatch(/^FAILED (UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|DEPTH_ZERO_SELF_SIGNED_CERT|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)/);
  });

  it('works once the CA is trusted (NODE_EXTRA_CA_CERTS), on the master and through a member', async () => {
    for (const url of [tlsSim.url, tlsSim.hosts[1]!.url]) {
      const { stdout } = await run(process.execPath, [script, url], { env: { ...process.env, NODE_EXTRA_CA_CERTS: tlsSim.caFile! } });
      expect(stdout.trim()).toBe(`CONNECTED ${tlsSim.state.vms().length}`);
    }
    await waitFor(() => tlsSim.state.liveSessions() === 0, 5000, 'logouts');
  });
});
