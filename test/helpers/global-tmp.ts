import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/**
 * Vitest global setup: every test run gets its own temporary root (TMPDIR), which the test
 * processes and whatever they start (vmbackup, the simulator, nats-server) inherit, and
 * which is removed when the run ends, so the suite leaves nothing in /tmp. Others may pass
 * through it but not list it, so a test that drops to another user (`nobody`) can reach a
 * folder it opens for that user.
 */
export default function setup(): () => void {
  const root = mkdtempSync(path.join(os.tmpdir(), 'vmbackup-tests-'));
  chmodSync(root, 0o711);
  process.env.TMPDIR = root;
  return () => rmSync(root, { recursive: true, force: true });
}
