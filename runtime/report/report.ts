import { readFileSync } from 'node:fs';
import os from 'node:os';
import { createTransport } from 'nodemailer';
import type { Logger } from 'pino';
import { ConfigError } from '../errors.js';
import type { Settings } from '../config/schema.js';
import { formatSummary } from '../run/summary.js';
import type { JobSummary, RunSummary } from '../run/summary.js';

/**
 * Run reports: at the end of a run, its summary in VmBackup's wording (the failed VMs first)
 * to where operators read it — a JSON POST to `report_url` (Slack, Mattermost and Teams read
 * its `text`; the other fields are for programs) and a mail to `report_email` through the
 * local `sendmail`, as cron mails. `report_on` says after which runs. A report that cannot be
 * delivered is a warning: the run's exit code stays what the backups made it.
 *
 * @example POST body
 *   { "text": "vmbackup run 20261206-020000-1a2b of pool prod: error, 1 of 12 VMs failed\n\nERROR: vm-export db1: …",
 *     "runId": "20261206-020000-1a2b", "status": "error", "exitCode": 1, "pool": "prod",
 *     "startedAt": "…", "finishedAt": "…", "vms": {"total": 12, "failed": 1, "warnings": 0},
 *     "failed": [{"vm": "db1", "category": "vm-export", "error": "…"}], "backupDir": "/mnt/VmBackup/exports" }
 */
export interface ReportTargets {
  /** Where to POST; never logged (it may carry a token): `urlOrigin` names it. */
  url?: string;
  urlOrigin?: string;
  /** Recipients of the mail. */
  emails: string[];
  on: Settings['report_on'];
  timeoutMs: number;
}

/**
 * The report settings, with report_url read from report_url_file when that is set. Throws a
 * ConfigError naming the key (never the URL) when the file cannot be read or holds no URL.
 */
export function reportTargets(settings: Settings): ReportTargets {
  let url = settings.report_url;
  let key = 'report_url';
  if (settings.report_url_file !== undefined) {
    key = 'report_url_file';
    let text: string;
    try {
      text = readFileSync(settings.report_url_file, 'utf8');
    } catch (error) {
      throw new ConfigError(`report_url_file ${settings.report_url_file} cannot be read (${(error as { code?: string }).code ?? 'error'})`, { key, file: settings.report_url_file });
    }
    url = text.split(/\r?\n/)[0]!.trim();
  }
  let origin: string | undefined;
  if (url !== undefined) {
    try {
      const u = new URL(url);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http');
      origin = u.origin;
    } catch {
      throw new ConfigError(`${key}${key === 'report_url_file' ? ` ${settings.report_url_file}` : ''}: not an http(s) URL`, { key });
    }
  }
  const emails = (settings.report_email ?? '').split(',').map((e) => e.trim()).filter((e) => e !== '');
  for (const e of emails) {
    if (!/^[^\s@<>(),;:"]+@[^\s@<>(),;:"]+$/.test(e)) throw new ConfigError(`report_email: "${e}" is not a mail address`, { key: 'report_email' });
  }
  return { ...(url !== undefined ? { url, urlOrigin: origin! } : {}), emails, on: settings.report_on, timeoutMs: settings.report_timeout * 1000 };
}

/** Whether a run with this outcome is reported under `report_on`. */
export function shouldReport(on: ReportTargets['on'], status: RunSummary['status']): boolean {
  if (on === 'always') return true;
  if (on === 'warning') return status !== 'success';
  return status === 'error' || status === 'fatal';
}

const ORDER: Record<JobSummary['status'], number> = { error: 0, pending: 1, skipped: 2, warning: 3, success: 4 };

/** The first line of a report: run, pool, outcome, failed VMs. */
export function reportTitle(summary: RunSummary): string {
  const vms = summary.jobs.filter((j) => j.category === 'vm-export' || j.category === 'vdi-export');
  const failed = vms.filter((j) => j.status === 'error' || j.status === 'pending').length;
  const what = summary.fatal !== undefined ? 'the run could not start' : failed > 0 ? `${failed} of ${vms.length} VMs failed` : `${vms.length} VMs backed up`;
  return `vmbackup run ${summary.runId}${summary.pool !== undefined ? ` of pool ${summary.pool.name}` : ''}: ${summary.status}, ${what}`;
}

/** The report's text: its title, then VmBackup's summary with the failed VMs first. */
export function reportText(summary: RunSummary): string {
  const jobs = [...summary.jobs].sort((a, b) => ORDER[a.status] - ORDER[b.status]);
  return `${reportTitle(summary)}\n${formatSummary({ ...summary, jobs })}`;
}

/** The JSON a report URL receives. */
export function reportPayload(summary: RunSummary): Record<string, unknown> {
  const vms = summary.jobs.filter((j) => j.category === 'vm-export' || j.category === 'vdi-export');
  const failed = summary.jobs.filter((j) => j.status === 'error' || j.status === 'pending');
  return {
    text: reportText(summary),
    runId: summary.runId,
    status: summary.status,
    exitCode: summary.exitCode,
    ...(summary.pool !== undefined ? { pool: summary.pool.name } : {}),
    startedAt: summary.startedAt,
    ...(summary.finishedAt !== undefined ? { finishedAt: summary.finishedAt } : {}),
    vms: { total: vms.length, failed: vms.filter((j) => failed.includes(j)).length, warnings: vms.filter((j) => j.status === 'warning' || j.status === 'skipped').length },
    failed: failed.map((j) => ({ vm: j.name, category: j.category, error: j.error?.message ?? 'not finished' })),
    ...(summary.fatal !== undefined ? { fatal: summary.fatal.message } : {}),
    ...(summary.backupDir !== undefined ? { backupDir: summary.backupDir } : {}),
  };
}

/**
 * Sends the run's report where `targets` say, if `report_on` wants this run reported. Never
 * throws: what could not be delivered is logged as a warning, and returned.
 */
export async function sendReports(summary: RunSummary, targets: ReportTargets, log: Logger): Promise<string[]> {
  if (!shouldReport(targets.on, summary.status)) return [];
  const problems: string[] = [];
  const jobs: Promise<void>[] = [];
  if (targets.url !== undefined) {
    jobs.push(
      postReport(targets.url, reportPayload(summary), targets.timeoutMs).catch((error: Error) => {
        problems.push(`report_url (${targets.urlOrigin}): the run's report was not delivered: ${error.message}`);
      }),
    );
  }
  if (targets.emails.length > 0) {
    jobs.push(
      mailReport(summary, targets.emails, targets.timeoutMs).catch((error: Error & { code?: string }) => {
        const missing = error.code === 'ENOENT' || /ENOENT/.test(error.message);
        problems.push(
          missing
            ? 'report_email: the run\'s report was not mailed: no sendmail program on PATH (install a mail transfer agent, e.g. Debian\'s exim4-daemon-light or msmtp-mta)'
            : `report_email: the run's report was not mailed: ${error.message}`,
        );
      }),
    );
  }
  await Promise.all(jobs);
  for (const p of problems) log.warn(p);
  return problems;
}

async function postReport(url: string, payload: Record<string, unknown>, timeoutMs: number): Promise<void> {
  let res: Response;
  try {
    res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(payload), signal: AbortSignal.timeout(timeoutMs), redirect: 'error' });
  } catch (error) {
    const e = error as Error & { cause?: { code?: string } };
    if (e.name === 'TimeoutError') throw new Error(`no answer within ${timeoutMs / 1000} s`);
    throw new Error(e.cause?.code ?? e.message);
  }
  await res.arrayBuffer().catch(() => undefined);
  if (!res.ok) throw new Error(`it answered HTTP ${res.status}`);
}

async function mailReport(summary: RunSummary, to: string[], timeoutMs: number): Promise<void> {
  const transport = createTransport({ sendmail: true, newline: 'unix', path: 'sendmail' });
  const send = transport.sendMail({
    from: `vmbackup <vmbackup@${os.hostname()}>`,
    to,
    subject: reportTitle(summary),
    text: reportText(summary),
  });
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([send, new Promise<never>((_r, reject) => (timer = setTimeout(() => reject(new Error(`sendmail did not finish within ${timeoutMs / 1000} s`)), timeoutMs)))]);
  } finally {
    clearTimeout(timer);
  }
}
