import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, readdir, rename, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import path from 'node:path';
import { chromium } from 'playwright-core';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkStore, PointWriter } from '../../runtime/chunkstore/chunkstore.js';
import { ROOT } from '../helpers/cli.js';
import { startRig } from '../nats/rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from '../nats/rig.js';
import { waitFor } from '../sim/test-helpers.js';
import { startGatewayCommand } from './gateway-command.js';
import type { GatewayCommand } from './gateway-command.js';

/**
 * The status page in a real browser (Debian's chromium, driven by playwright-core) against
 * `vmbackup gateway` on a real nats-server, a `vmbackup worker` process and the XAPI
 * simulator: a run in progress shows its export's bytes, the run ends, and the VM whose
 * export failed is shown in red with its error. Screenshots go to test-results/page/ for a
 * person to look at (docs/status-page.png is one of them).
 */
const SHOTS = path.join(ROOT, 'test-results', 'page');
const TOKEN = 'page-browser-token-0123456789abcdef';

describe('status page in chromium: gateway, NATS, a worker, the simulator', () => {
  let rig: Rig;
  let gw: GatewayCommand;
  let browser: Browser;
  const headers = { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' };

  const startRun = async (body: unknown): Promise<string> => {
    const res = await fetch(`${gw.url}/v1/runs`, { method: 'POST', headers, body: JSON.stringify(body) });
    expect(res.status, await res.clone().text()).toBe(202);
    return ((await res.json()) as { runId: string }).runId;
  };
  const finished = (runId: string) =>
    waitFor(
      async () => {
        const r = (await (await fetch(`${gw.url}/v1/runs/${runId}`, { headers })).json()) as { run?: { status: string }; outcome?: string };
        return r.run?.status === 'finished' ? r : undefined;
      },
      90_000,
      `run ${runId} to finish`,
    );

  beforeAll(async () => {
    await mkdir(SHOTS, { recursive: true });
    rig = await startRig(pool([vm('web1', 'Running', 6), vm('db1', 'Running', 1), vm('app1', 'Halted', 1)]));
    await rig.worker('--concurrency', '3');
    const tokens = path.join(rig.ws.base, 'tokens');
    await writeFile(tokens, `${TOKEN}\n`);
    await chmod(tokens, 0o600);
    gw = await startGatewayCommand(['--nats', rig.nats.url, '--listen', '127.0.0.1:0', '-b', rig.ws.base], { VMBACKUP_GATEWAY_TOKENS_FILE: tokens });
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium' });
    // A first night that went well: every VM has a backup to show.
    const first = await startRun({ vm_exports: ['web1', 'db1', 'app1'] });
    expect((await finished(first)).outcome).toBe('success');
  }, 180_000);

  afterAll(async () => {
    await browser?.close();
    gw?.child.kill('SIGTERM');
    await gw?.exited;
    await rig?.close();
  });

  const signIn = async (page: Page): Promise<void> => {
    const res = await page.goto(gw.url);
    expect(res!.status()).toBe(401);
    await page.fill('input[name="token"]', TOKEN);
    await Promise.all([page.waitForURL(`${gw.url}/`), page.click('button[type="submit"]')]);
  };

  it('asks for a token, then shows a run in progress, its end, and the failed VM in red with its error', async () => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
    // Without a token: the sign-in form, and nothing of the backups.
    const bare = await page.goto(gw.url);
    expect(bare!.status()).toBe(401);
    expect(await page.locator('#vm-table').count()).toBe(0);
    await page.screenshot({ path: path.join(SHOTS, '0-sign-in.png') });
    await page.fill('input[name="token"]', 'not-the-token-0123456789');
    await page.click('button[type="submit"]');
    await expect.poll(() => page.textContent('#login-message')).toBe('That token is not accepted.');
    await signIn(page);
    await page.waitForSelector('tr[data-vm="web1"]');

    // The second night: web1's export is slow (6 MiB at 384 KiB/s), db1's fails.
    rig.sim.faults.add({ http: 'export', vm: 'web1', action: { kind: 'slow', bytes_per_second: 384 * 1024 } });
    rig.sim.faults.add({ http: 'export', vm: 'db1', always: true, action: { kind: 'http-500' } });
    const runId = await startRun({ vm_exports: ['web1', 'db1', 'app1'], vm_retries: 0 });

    // In progress: web1 exporting, its bytes, rate and time left moving.
    const row = page.locator(`[data-run="${runId}"] .vm-progress[data-vm="web1"][data-phase="export"]`);
    await row.waitFor({ timeout: 30_000 });
    await expect.poll(async () => Number(await row.getAttribute('data-bytes')), { timeout: 15_000 }).toBeGreaterThan(0);
    await expect.poll(async () => (await row.textContent()) ?? '', { timeout: 15_000 }).toMatch(/export · [\d.]+ (KiB|MiB) of ≤ 6\.0 MiB · [\d.]+ KiB\/s · ≤ \d+ s left/);
    const firstBytes = Number(await row.getAttribute('data-bytes'));
    await expect.poll(async () => Number(await row.getAttribute('data-bytes')), { timeout: 15_000 }).toBeGreaterThan(firstBytes);
    await page.screenshot({ path: path.join(SHOTS, '1-in-progress.png'), fullPage: true });

    // It ends: nothing in progress, the run listed as failed (a VM failed), db1 in red with its error.
    expect((await finished(runId)).outcome).toBe('error');
    await page.locator('#progress-none').waitFor({ state: 'visible', timeout: 15_000 });
    const runItem = page.locator(`#run-list > li[data-run="${runId}"]`);
    await runItem.waitFor({ timeout: 20_000 });
    await expect.poll(() => runItem.locator('.outcome').textContent(), { timeout: 20_000 }).toBe('error');
    await expect.poll(() => runItem.locator('li[data-vm="db1"]').textContent()).toMatch(/^db1: .*HTTP 500/);
    const db1 = page.locator('tr[data-vm="db1"]');
    await expect.poll(() => db1.getAttribute('class')).toBe('failed');
    expect(await db1.locator('.error').first().textContent()).toMatch(/^failed .* ago: .*HTTP 500/);
    // The browser's own code, as text: this project compiles without the DOM's types.
    const red = await page.evaluate(`getComputedStyle(document.querySelector('tr[data-vm="db1"] .error')).color`);
    expect(red).toBe('rgb(198, 40, 40)');
    // web1 and app1 are backed up twice now; nothing of theirs is red.
    for (const name of ['web1', 'app1']) {
      const tr = page.locator(`tr[data-vm="${name}"]`);
      expect(await tr.getAttribute('class')).toBeNull();
      await expect.poll(() => tr.locator('td[data-label="Points"] summary').textContent()).toBe('2');
    }
    expect(await page.locator('tr[data-vm="db1"] td[data-label="Points"] summary').textContent()).toBe('1');
    await page.screenshot({ path: path.join(SHOTS, '2-finished.png'), fullPage: true });

    // The same on a phone's screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: path.join(SHOTS, '3-phone.png'), fullPage: true });
    const phoneWidth = await page.evaluate('document.documentElement.scrollWidth');
    expect(phoneWidth).toBeLessThanOrEqual(390);
    await page.close();
  }, 180_000);

  it('shows chunk-store points as full or changes to their base, a half-written manifest under its VM, and with NATS down says so and still shows the backups from disk', async () => {
    // Two incremental points of web1 beside its XVA sets, written by the chunk store's own writer.
    const store = await ChunkStore.open(rig.ws.exports, { chunkSize: 64 << 10 });
    const web1 = { uuid: String(rig.sim.state.vms().find((v) => v.name_label === 'web1')!.uuid), name: 'web1' };
    const disk = randomBytes(256 << 10);
    const full = await PointWriter.begin(store, { vmFolder: 'web1', vm: web1, stamp: '20261201-080000' });
    await full.addDisk('xvda', Readable.from([disk]));
    await full.commit();
    const changes = await PointWriter.begin(store, { vmFolder: 'web1', vm: web1, stamp: '20261202-080000' });
    await changes.addDiskChanges('xvda', { vmFolder: 'web1', stamp: '20261201-080000' }, [{ offset: 0, length: 64 << 10 }], { size: disk.length, read: async (o, l) => randomBytes(l) });
    await changes.commit();

    // app1's older manifest replaced by its first half, as a crash while another tool copied the folder leaves it.
    const app1 = path.join(rig.ws.exports, 'app1');
    const older = path.join(app1, (await readdir(app1)).filter((n) => n.endsWith('.json')).sort()[0]!);
    const text = await readFile(older);
    await writeFile(`${older}.copy`, text.subarray(0, Math.floor(text.length / 2)));
    await rename(`${older}.copy`, older);

    const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
    await signIn(page);
    // The page says so under app1, in red, and counts only the set that stands.
    const problem = page.locator('tr[data-vm="app1"] .problem');
    await expect.poll(() => problem.textContent(), { timeout: 20_000 }).toMatch(/^\d{8}-\d{6}: .*JSON/);
    expect(await page.locator('tr[data-vm="app1"] td[data-label="Points"] summary').textContent()).toBe('1');
    const points = page.locator('tr[data-vm="web1"] td[data-label="Points"]');
    await expect.poll(() => points.locator('summary').textContent(), { timeout: 20_000 }).toBe('4');
    await points.locator('summary').click();
    const items = (await points.locator('li').allTextContents()).join('\n');
    // A point's size is what it added to the store: the changed chunk alone for the second.
    expect(items).toMatch(/point \(changes to 20261201-080000\) · 64 KiB/);
    expect(items).toMatch(/point \(full\) · 256 KiB/);
    expect(items.match(/· backup ·/g)).toHaveLength(2);
    await rig.nats.stop();
    await page.reload();
    await expect.poll(() => page.textContent('#banner'), { timeout: 30_000 }).toMatch(/^NATS is not reachable \(the connection is down\): runs and progress unknown; the backups on disk are shown$/);
    expect(await page.locator('tr[data-vm="web1"]').count()).toBe(1);
    await page.screenshot({ path: path.join(SHOTS, '4-nats-down.png'), fullPage: true });
    await page.close();
  }, 60_000);
});
