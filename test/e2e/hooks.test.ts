import { createHmac, timingSafeEqual } from 'node:crypto';
import { chmod, mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { IncomingMessage, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { HookEvent } from '../../runtime/hooks/event.js';
import type { PostVmEvent } from '../../runtime/hooks/event.js';
import { RunSummary } from '../../runtime/run/summary.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { Workspace } from '../helpers/cli.js';
import { startNatsServer } from '../helpers/nats-server.js';

const vm = (name: string, mib = 2) => ({
  name_label: name,
  power_state: 'Running' as const,
  disks: [{ device: 'xvda', size_mib: mib, fill: 'pattern' as const }],
  vifs: [],
});
const pool: PoolSpecInput = {
  credentials: { user: 'root', password: 'secret' },
  hosts: [{ name_label: 'xcp1' }],
  srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
  vms: [vm('web1', 4), vm('db1'), vm('app1')],
};

/** A workspace with a hooks/ folder for scripts and what they record. */
async function hookWorkspace(): Promise<Workspace & { hooks: string; cfg(lines: string[]): Promise<string[]> }> {
  const ws = await workspace();
  const hooks = path.join(ws.base, 'hooks');
  await mkdir(path.join(hooks, 'events'), { recursive: true });
  return {
    ...ws,
    hooks,
    /** The command-line flags of a config file with these lines. */
    async cfg(lines) {
      const file = path.join(ws.base, 'hooks.cfg');
      await writeFile(file, ['[vmbackup]', ...lines, ''].join('\n'));
      return ['-c', file];
    },
  };
}

/** An executable shell script in the workspace's hooks/ folder. */
async function script(ws: { hooks: string }, name: string, body: string): Promise<string> {
  const file = path.join(ws.hooks, name);
  await writeFile(file, `#!/bin/sh\n${body}\n`);
  await chmod(file, 0o755);
  return file;
}

/** A hook that records each call: a line in calls.log and the event (stdin) in events/. */
const RECORD = `
line="$VMBACKUP_POINT \${VMBACKUP_VM_NAME:--} try=\${VMBACKUP_TRY:--} status=\${VMBACKUP_STATUS:--} retrying=\${VMBACKUP_RETRYING:--} phase=\${VMBACKUP_FAILED_PHASE:--}"
echo "$line" >> "$(dirname "$0")/calls.log"
cat > "$(dirname "$0")/events/$VMBACKUP_POINT-\${VMBACKUP_VM_NAME:-run}-\${VMBACKUP_TRY:-0}.json"
`;

async function calls(ws: { hooks: string }): Promise<string[]> {
  try {
    return (await readFile(path.join(ws.hooks, 'calls.log'), 'utf8')).trim().split('\n');
  } catch {
    return [];
  }
}

async function recorded(ws: { hooks: string }, name: string): Promise<HookEvent> {
  return HookEvent.parse(JSON.parse(await readFile(path.join(ws.hooks, 'events', `${name}.json`), 'utf8')));
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** True while a process runs (a zombie left to a PID 1 that does not reap is not running). */
async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** VM snapshots taken on the simulator so far (sync or async call). */
function snapshotCalls(sim: Simulator): number {
  const by = sim.state.rpcCalls().byMethod;
  return (by['VM.snapshot'] ?? 0) + (by['Async.VM.snapshot'] ?? 0);
}

describe('vmbackup: hooks, end to end', () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await httpsSim(pool);
  });
  afterAll(async () => sim.close());
  beforeEach(() => sim.faults.clear());

  it('a pre-vm command that aborts skips its VM — no snapshot — and the others are backed up; post-vm runs for all', async () => {
    const ws = await hookWorkspace();
    const pre = await script(ws, 'pre.sh', `${RECORD}\nif [ "$VMBACKUP_VM_NAME" = db1 ]; then echo "checking replica"; echo "db1: replica is 300 s behind"; exit 3; fi\nexit 0`);
    const post = await script(ws, 'post.sh', RECORD);
    const snapshotsBefore = snapshotCalls(sim);
    const r = await vmbackup([...ws.args(sim), ...(await ws.cfg([`hook_command_pre_vm = ${pre}`, `hook_command_post_vm = ${post} --verbose`]))]);

    expect(r.code).toBe(0); // a skip is a warning, as documented
    expect(r.stdout).toContain('SKIPPED: vm-export db1: pre-vm command hook: db1: replica is 300 s behind\n');
    expect(r.stdout).toMatch(/VmBackup vm-export Summary - S:2 W:1 E:0\n>> Success with Warnings <</);
    // No snapshot of db1: two VMs, two snapshots; nothing written for db1.
    expect(snapshotCalls(sim) - snapshotsBefore).toBe(2);
    expect(await exists(path.join(ws.exports, 'db1'))).toBe(false);
    expect((await readdir(path.join(ws.exports, 'web1'))).filter((n) => n.endsWith('.xva'))).toHaveLength(1);

    // Every pre-vm is followed by a post-vm, which knows how the VM's backup ended.
    const log = await calls(ws);
    for (const name of ['web1', 'db1', 'app1']) {
      const own = log.filter((l) => l.split(' ')[1] === name);
      expect(own.map((l) => l.split(' ')[0])).toEqual(['pre-vm', 'post-vm']);
    }
    expect(log).toContain('post-vm db1 try=1 status=skipped retrying=- phase=-');
    expect(log).toContain('post-vm web1 try=1 status=success retrying=- phase=-');
    const postWeb = (await recorded(ws, 'post-vm-web1-1')) as PostVmEvent;
    expect(postWeb).toMatchObject({ point: 'post-vm', vm: { name: 'web1' }, mode: 'vm', folder: 'web1', outcome: { status: 'success' } });
    expect(postWeb.outcome.files.map((f) => path.basename(f.path))).toEqual([
      expect.stringMatching(/^backup_\d{8}-\d{6}\.xva$/),
      expect.stringMatching(/\.meta$/),
      expect.stringMatching(/\.json$/),
    ]);
    for (const f of postWeb.outcome.files) expect((await stat(f.path)).size).toBe(f.size);
    expect(((await recorded(ws, 'post-vm-db1-1')) as PostVmEvent).outcome).toMatchObject({ status: 'skipped', files: [], reason: 'pre-vm command hook: db1: replica is 300 s behind' });
    expect(sim.state.snapshots().filter((s) => (s.other_config as Record<string, string>)['vmbackup:run'] !== undefined)).toEqual([]);

    // --json reports the skip per job.
    const json = await vmbackup([...ws.args(sim), '--json', ...(await ws.cfg([`hook_command_pre_vm = ${pre}`]))]);
    const summary = RunSummary.parse(JSON.parse(json.stdout));
    expect(summary.jobs.find((j) => j.name === 'db1')).toMatchObject({ status: 'skipped', skipped: { reason: 'pre-vm command hook: db1: replica is 300 s behind' } });
    expect(summary.jobs.filter((j) => j.status === 'success').map((j) => j.name).sort()).toEqual(['app1', 'web1']);
  });

  it('post-vm runs after a failed export, with the VM and the outcome in its environment, before each new attempt', async () => {
    const ws = await hookWorkspace();
    const pre = await script(ws, 'pre.sh', RECORD);
    const post = await script(ws, 'post.sh', `${RECORD}\necho "error=$VMBACKUP_ERROR" >> "$(dirname "$0")/errors.log"`);
    sim.faults.add({ http: 'export', vm: 'web1', always: true, action: { kind: 'reset', after_bytes: 1 << 20 } });
    const r = await vmbackup([...ws.args(sim), '-e', 'web1', ...(await ws.cfg([`hook_command_pre_vm = ${pre}`, `hook_command_post_vm = ${post}`, 'vm_retries = 1']))]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('ERROR: vm-export web1:');
    // Attempt 1 fails and is retried: post-vm (retrying) comes before the new pre-vm.
    expect(await calls(ws)).toEqual([
      'pre-vm web1 try=1 status=- retrying=- phase=-',
      'post-vm web1 try=1 status=failed retrying=1 phase=export',
      'pre-vm web1 try=2 status=- retrying=- phase=-',
      'post-vm web1 try=2 status=failed retrying=0 phase=export',
    ]);
    const event = (await recorded(ws, 'post-vm-web1-2')) as PostVmEvent;
    expect(event.outcome).toMatchObject({ status: 'failed', retrying: false, error: { phase: 'export' } });
    expect(event.outcome.error!.message.length).toBeGreaterThan(0);
    expect(await readFile(path.join(ws.hooks, 'errors.log'), 'utf8')).toContain(`error=${event.outcome.error!.message}`);
    // The broken exports left nothing on the pool.
    expect(sim.state.snapshots('web1')).toEqual([]);
  });

  it('HTTP hooks: every event POSTed, signed with the secret; a 409 skips the VM; run-start and run-end too', async () => {
    const secret = 'e2e-hook-secret-42';
    const received: { ok: boolean; timestamp: string | undefined; event: HookEvent }[] = [];
    const verify = (req: IncomingMessage, body: Buffer) => {
      const sig = Buffer.from(String(req.headers['x-vmbackup-signature-256']));
      const want = Buffer.from(`sha256=${createHmac('sha256', secret).update(body).digest('hex')}`);
      return sig.length === want.length && timingSafeEqual(sig, want);
    };
    const server: Server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        const ok = verify(req, body);
        const event = HookEvent.parse(JSON.parse(body.toString()));
        received.push({ ok, timestamp: req.headers['x-vmbackup-timestamp'] as string | undefined, event });
        if (!ok) return void res.writeHead(401).end();
        if (event.point === 'pre-vm' && event.vm.name === 'app1') return void res.writeHead(409, { 'content-type': 'application/json' }).end('{"reason":"app1 is being deployed"}');
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"decision":"continue"}');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`;
      const ws = await hookWorkspace();
      const secretFile = path.join(ws.base, 'hook-secret');
      await writeFile(secretFile, secret + '\n');
      await chmod(secretFile, 0o600);
      const r = await vmbackup([
        ...ws.args(sim),
        '-e',
        'web1',
        '-e',
        'app1',
        ...(await ws.cfg([`hook_url_pre_vm = ${url}`, `hook_url_post_vm = ${url}`, `hook_url_run_start = ${url}`, `hook_url_run_end = ${url}`, `hook_secret_file = ${secretFile}`])),
      ]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain('SKIPPED: vm-export app1: pre-vm http hook: app1 is being deployed');
      expect(received.every((x) => x.ok)).toBe(true);
      expect(received.every((x) => Math.abs(Number(x.timestamp) * 1000 - Date.parse(x.event.at)) < 2_000)).toBe(true);
      const points = received.map((x) => `${x.event.point}${'vm' in x.event ? ` ${x.event.vm.name}` : ''}`);
      expect(points[0]).toBe('run-start');
      expect(points.at(-1)).toBe('run-end');
      expect(points.slice(1, -1).sort()).toEqual(['post-vm app1', 'post-vm web1', 'pre-vm app1', 'pre-vm web1']);
      const end = received.at(-1)!.event;
      expect(end.point === 'run-end' && end.summary).toMatchObject({ status: 'warning', exitCode: 0, jobs: expect.arrayContaining([expect.objectContaining({ name: 'app1', status: 'skipped' })]) });
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('a hook that hangs is killed at hook_timeout; the policy decides (continue: backed up with a warning; abort: skipped)', async () => {
    const ws = await hookWorkspace();
    const pids = path.join(ws.hooks, 'pids');
    // The hook would sleep an hour, far past this test's own timeout: the run ending at all
    // (with the reason below) proves the hook was killed at hook_timeout, not waited for.
    const hang = await script(ws, 'hang.sh', `sleep 3600 &\necho $! >> "${pids}"\necho $$ >> "${pids}"\nwait`);
    const r = await vmbackup([...ws.args(sim), '-e', 'db1', ...(await ws.cfg([`hook_command_pre_vm = ${hang}`, 'hook_timeout = 1']))]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/WARNING: vm-export db1: pre-vm command hook timed out: hang.sh did not finish within 1 s: killed; going on \(hooks_on_timeout = continue\)/);
    expect((await readdir(path.join(ws.exports, 'db1'))).filter((n) => n.endsWith('.xva'))).toHaveLength(1);
    for (const pid of (await readFile(pids, 'utf8')).trim().split('\n').map(Number)) expect(await alive(pid)).toBe(false);

    const ws2 = await hookWorkspace();
    const hang2 = await script(ws2, 'hang.sh', 'exec sleep 3600');
    const r2 = await vmbackup([...ws2.args(sim), '-e', 'db1', ...(await ws2.cfg([`hook_command_pre_vm = ${hang2}`, 'hook_timeout = 1', 'hooks_on_timeout = abort']))]);
    // Its only VM skipped: nothing backed up, exit 1.
    expect(r2.code).toBe(1);
    expect(r2.stdout).toContain('SKIPPED: vm-export db1: pre-vm command hook: timed out (hang.sh did not finish within 1 s: killed; hooks_on_timeout = abort)');
    expect(r2.stdout).toContain('>> Error: every VM was skipped, none backed up <<');
    expect(await exists(path.join(ws2.exports, 'db1'))).toBe(false);
  });

  it('a run-start hook that aborts ends the run at once: nothing snapshotted, exit 1; run-end still runs', async () => {
    const ws = await hookWorkspace();
    const start = await script(ws, 'start.sh', `${RECORD}\necho "backup share in maintenance"\nexit 3`);
    const end = await script(ws, 'end.sh', `${RECORD}\necho "exit=$VMBACKUP_EXIT_CODE" >> "$(dirname "$0")/calls.log"`);
    const pre = await script(ws, 'pre.sh', RECORD);
    const before = sim.state.mutations();
    const r = await vmbackup([...ws.args(sim), ...(await ws.cfg([`hook_command_run_start = ${start}`, `hook_command_run_end = ${end}`, `hook_command_pre_vm = ${pre}`]))]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('SKIPPED: the run was skipped: run-start command hook: backup share in maintenance\n>> Error: nothing backed up <<');
    expect(sim.state.mutations()).toBe(before); // nothing changed on the pool
    expect((await readdir(ws.exports)).filter((n) => !n.startsWith('.'))).toEqual([]);
    expect(await calls(ws)).toEqual(['run-start - try=- status=- retrying=- phase=-', 'run-end - try=- status=error retrying=- phase=-', 'exit=1']);
    const ended = await recorded(ws, 'run-end-run-0');
    expect(ended.point === 'run-end' && ended.summary).toMatchObject({ status: 'error', exitCode: 1, skipped: { reason: 'the run was skipped: run-start command hook: backup share in maintenance' } });
  });

  it('a run-start hook that fails does not stop the run (hooks_on_failure = continue): a warning of the run', async () => {
    const ws = await hookWorkspace();
    const start = await script(ws, 'start.sh', 'echo "cannot reach the CMDB" >&2\nexit 1');
    const r = await vmbackup([...ws.args(sim), '-e', 'db1', ...(await ws.cfg([`hook_command_run_start = ${start}`]))]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('WARNING: hooks: run-start command hook failed: start.sh exited with 1: cannot reach the CMDB; going on (hooks_on_failure = continue)\n');
    expect(r.stdout).toMatch(/VmBackup vm-export Summary - S:1 W:1 E:0/);
    expect((await readdir(path.join(ws.exports, 'db1'))).filter((n) => n.endsWith('.xva'))).toHaveLength(1);
  });

  it('a bad hook setting stops the command before anything runs (exit 2)', async () => {
    const ws = await hookWorkspace();
    const r = await vmbackup([...ws.args(sim), ...(await ws.cfg(['hook_command_pre_vm = quiesce --now', 'hook_url_post_vm = https://ops.example/h']))]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^vmbackup: 2 configuration errors:\n {2}- hook_command_pre_vm = quiesce --now in /);
    expect(r.stderr).toContain('the program must be an absolute path');
    expect(r.stderr).toContain('set hook_secret_file');
    expect(await readdir(ws.exports)).toEqual([]);
  });

  it('a hook program that does not exist or cannot be run stops the command at start-up (exit 2): nothing locked or snapshotted', async () => {
    const ws = await hookWorkspace();
    const missing = path.join(ws.hooks, 'nonexistent');
    const before = sim.state.mutations();
    const flags = await ws.cfg(['hook_timeout = 5', `hook_command_pre_vm = ${missing} --freeze`]);
    const r = await vmbackup([...ws.args(sim), ...flags]);
    expect(r.code).toBe(2);
    // As every config error: the key, its value, the file and line, the reason.
    expect(r.stderr).toContain(`vmbackup: hook_command_pre_vm = ${missing} --freeze in ${flags[1]} line 3: the program ${missing} does not exist\n`);
    expect(r.stdout).not.toContain('backing up');
    expect(sim.state.mutations()).toBe(before); // no snapshot, nothing on the pool
    expect(await readdir(ws.exports)).toEqual([]); // no lock, no folder

    const plain = await script(ws, 'plain.sh', 'exit 0');
    await chmod(plain, 0o644);
    const flags2 = await ws.cfg([`hook_command_post_vm = ${plain}`, `hook_command_run_end = ${ws.hooks}`]);
    const r2 = await vmbackup([...ws.args(sim), ...flags2]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toContain(`hook_command_post_vm = ${plain} in ${flags2[1]} line 2: the program ${plain} is not executable (mode 0644: chmod +x it)\n`);
    expect(r2.stderr).toContain(`hook_command_run_end = ${ws.hooks} in ${flags2[1]} line 3: the program ${ws.hooks} is a directory\n`);
    expect(sim.state.mutations()).toBe(before);
  });

  it('vmbackup worker checks its hook programs at start-up too: exit 2, printed as a config error', async () => {
    const nats = await startNatsServer();
    try {
      const ws = await hookWorkspace();
      const missing = path.join(ws.hooks, 'nonexistent');
      const flags = await ws.cfg([`hook_command_pre_vm = ${missing}`]);
      const r = await vmbackup(['worker', '--nats', nats.url, ...ws.args(sim), ...flags], { timeoutMs: 60_000 });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`vmbackup: hook_command_pre_vm = ${missing} in ${flags[1]} line 2: the program ${missing} does not exist\n`);
      expect(r.stdout + r.stderr).not.toContain('worker ready');
      // Before it connects: NATS unreachable, the hook setting is still what it reports.
      const early = await vmbackup(['worker', '--nats', 'nats://127.0.0.1:9', ...ws.args(sim), ...flags], { timeoutMs: 60_000 });
      expect(early.code).toBe(2);
      expect(early.stderr).toContain(`the program ${missing} does not exist`);
      expect(early.stderr).not.toContain('cannot reach NATS');
    } finally {
      await nats.stop();
    }
  });

  it('hook progress lines name their VM (VMs backed up two at a time) or the run', async () => {
    const ws = await hookWorkspace();
    const pre = await script(ws, 'pre.sh', 'echo "quiescing $VMBACKUP_VM_NAME"');
    const post = await script(ws, 'post.sh', 'exit 0');
    const start = await script(ws, 'start.sh', 'exit 0');
    const r = await vmbackup([
      ...ws.args(sim),
      '--concurrency',
      '2',
      ...(await ws.cfg([`hook_command_pre_vm = ${pre}`, `hook_command_post_vm = ${post}`, `hook_command_run_start = ${start}`, `hook_command_run_end = ${start}`])),
    ]);
    expect(r.code).toBe(0);
    const lines = r.stdout.split('\n');
    for (const name of ['web1', 'db1', 'app1']) {
      expect(lines).toContain(`${name}: pre-vm hook pre.sh: quiescing ${name}`);
      expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^${name}: pre-vm command hook: continue \\(\\d+\\.\\d s\\)$`)));
      expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^${name}: post-vm command hook: continue \\(\\d+\\.\\d s\\)$`)));
    }
    const runId = /run (\S+): backing up/.exec(r.stdout)?.[1];
    expect(runId).toBeDefined();
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^run ${runId}: run-start command hook: continue \\(\\d+\\.\\d s\\)$`)));
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^run ${runId}: run-end command hook: continue \\(\\d+\\.\\d s\\)$`)));
    expect(lines.filter((l) => /^(pre-vm|post-vm|run-start|run-end) /.test(l))).toEqual([]);
  });
});
