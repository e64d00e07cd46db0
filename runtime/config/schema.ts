import { z } from 'zod';

/**
 * The whole configuration of vmbackup, as one schema. Parsed once at start-up from (lowest to
 * highest precedence) the defaults below, the config files (`<base>/etc/vmbackup.cfg`,
 * `/etc/vmbackup.cfg`, `~/vmbackup.cfg`, `-c FILE`), the environment (`VMBACKUP_*`) and the
 * command line. Keys are VmBackup's, plus the ones a management node needs.
 *
 * @example
 *   [vmbackup]
 *   backup_dir = /mnt/VmBackup/exports
 *   max_backups = 4
 *   vm_exports = PRD-.*:7, DEV-web1
 *   xapi_url = https://pool-master.example
 *   password_file = /etc/vmbackup/password
 */
export const LogLevel = z.enum(['debug', 'info', 'warning', 'error', 'critical']);
export type LogLevel = z.infer<typeof LogLevel>;

export const Compression = z.enum(['none', 'gzip', 'zstd']);
export type Compression = z.infer<typeof Compression>;

export const VdiFormat = z.enum(['raw', 'vhd']);
export type VdiFormat = z.infer<typeof VdiFormat>;

export const Settings = z.object({
  /** VmBackup's base directory: holds etc/, logs/ and, by default, exports/. */
  base_dir: z.string().min(1).default('/mnt/VmBackup'),
  /** Where backups go. Default `<base_dir>/exports`. */
  backup_dir: z.string().min(1),
  /** Kept for VmBackup configs; `nfs` or `smb`. Used by `mount_check`. */
  share_type: z.enum(['nfs', 'smb']).default('nfs'),
  /** When true, refuse to run unless backup_dir is on a mounted share of `share_type`. */
  mount_check: z.boolean().default(false),
  /** Percent of the backup filesystem that must stay free; checked before each VM. */
  space_threshold: z.number().int().min(1).max(99).default(20),
  /** Backup sets kept per VM (one set = one VM's backup in one run, whatever its disks). */
  max_backups: z.number().int().min(1).default(4),
  /** Compression of vm-exports: VmBackup's `compress = true` means gzip. */
  compress: Compression.default('none'),
  /** Format of vdi-exports. */
  vdi_export_format: VdiFormat.default('raw'),
  pool_backup: z.boolean().default(false),
  host_backup: z.boolean().default(false),
  log_level: LogLevel.default('info'),
  /** Selection entries, `NAME[:MAX[:DISK;DISK]]`; see functions/plan. */
  vm_exports: z.array(z.string()).default([]),
  vdi_exports: z.array(z.string()).default([]),
  excludes: z.array(z.string()).default([]),
  /** XAPI of the pool (the master, or any member: HOST_IS_SLAVE is followed). */
  xapi_url: z.string().url().default('https://localhost'),
  username: z.string().min(1).default('root'),
  /** The password is read from this file (first line) or env VMBACKUP_PASSWORD. */
  password_file: z.string().optional(),
  /** Resolved secret; never logged (see runtime/log.ts redaction). */
  password: z.string().optional(),
  /** PEM file of the CA that signed the pool's certificate. */
  tls_ca_file: z.string().optional(),
  /** Skip TLS certificate checks (say so loudly). */
  insecure: z.boolean().default(false),
  /** VMs backed up at the same time. */
  concurrency: z.number().int().min(1).max(64).default(2),
  /** Halted VMs are exported directly (their start blocked meanwhile) instead of snapshotted. */
  halted_without_snapshot: z.boolean().default(true),
  /** Retries of a VM's backup within a run after a transient failure (0 = none). */
  vm_retries: z.number().int().min(0).max(10).default(1),
  /** Seconds without a byte from XAPI before an export is abandoned. */
  export_idle_timeout: z.number().int().min(5).default(300),
  /** Hours after which a lock left by a run on another host is considered stale. */
  lock_stale_hours: z.number().min(0.01).default(24),
  /**
   * Re-read each backup set right after it is written (the verify function: XVA chunk
   * checksums, VHD structure, raw sizes, every file's XXH64 against the manifest); a set that
   * fails is reported and does not count toward max_backups. Costs one read of the backup.
   * Unset: on for vm-exports (XVA sets), off for vdi-exports; `true`/`false` for all.
   */
  verify_after_backup: z.boolean().optional(),
  /** Days a set that failed verification is kept in `<vm folder>/.failed/` before it is deleted. */
  failed_keep_days: z.number().int().min(1).max(3650).default(30),

  // --- NATS (vmbackup worker / run / status / invoke / gateway) ---
  /** NATS server(s), comma-separated: `nats://host:4222`. */
  nats_url: z.string().optional(),
  /** File holding a NATS token (first line). */
  nats_token_file: z.string().optional(),
  nats_user: z.string().optional(),
  /** File holding the NATS user's password (first line). */
  nats_password_file: z.string().optional(),
  /** NATS credentials file (JWT + nkey seed). */
  nats_creds_file: z.string().optional(),
  /** PEM CA, client certificate and key for TLS to NATS. */
  nats_tls_ca_file: z.string().optional(),
  nats_tls_cert_file: z.string().optional(),
  nats_tls_key_file: z.string().optional(),
  /** Functions a worker serves (default: all), e.g. `export, prune`. */
  worker_functions: z.array(z.string()).default([]),

  // --- HTTP gateway ---
  /** HOST:PORT the gateway listens on. */
  gateway_listen: z.string().default('127.0.0.1:8080'),
  /** File of bearer tokens accepted by the gateway, one per line. */
  gateway_tokens_file: z.string().optional(),
  /** File holding the HMAC-SHA256 secret of signed webhooks (`X-Hub-Signature-256`). */
  webhook_secret_file: z.string().optional(),
  /** Largest request body the gateway reads, in bytes. */
  gateway_body_limit: z.number().int().min(1024).default(1 << 20),
  /** Alertmanager label that names the VM to back up. */
  alertmanager_label: z.string().min(1).default('vm'),

  // --- what operators see: metrics and run reports ---
  /** A VM whose newest restorable backup is older than this is overdue (vmbackup_max_age_seconds, infra/prometheus/alerts.yml). */
  max_age_hours: z.number().min(1).max(100_000).default(26), // DEFAULT_MAX_AGE_HOURS
  /** File of bearer tokens accepted by GET /metrics (gateway, worker) besides gateway_tokens_file, one per line. */
  metrics_tokens_file: z.string().optional(),
  /** HOST:PORT where `vmbackup worker` serves GET /metrics (its job counters and durations); off when unset. */
  metrics_listen: z.string().optional(),
  /** node_exporter textfile the `vmbackup` command rewrites (atomically) at the end of each run. */
  metrics_textfile: z.string().optional(),
  /** URL a run report is POSTed to as JSON (Slack, Mattermost, Teams: a `text` field). */
  report_url: z.string().url().optional(),
  /** File holding report_url (first line), for a URL that carries a token. */
  report_url_file: z.string().optional(),
  /** Addresses the run report is mailed to through the local sendmail, comma-separated. */
  report_email: z.string().optional(),
  /** When a report is sent: after every run, only after a failure, or after warnings and failures. */
  report_on: z.enum(['always', 'failure', 'warning']).default('failure'),
  /** Seconds a report (POST or sendmail) may take before it is given up with a warning. */
  report_timeout: z.number().int().min(1).max(600).default(30),

  // --- hooks (runtime/hooks/README.md) ---
  /**
   * Commands run at each hook point: an absolute program path and its arguments, no shell
   * (`"…"`/`'…'` quote; write `/bin/sh -c '…'` for one). Exit 0 = continue, 3 = abort.
   * @example hook_command_pre_vm = /usr/local/bin/quiesce --db "sales db"
   */
  hook_command_pre_vm: z.string().optional(),
  hook_command_post_vm: z.string().optional(),
  hook_command_run_start: z.string().optional(),
  hook_command_run_end: z.string().optional(),
  /**
   * URLs POSTed the event as JSON at each hook point, signed with hook_secret_file
   * (`X-Vmbackup-Signature-256: sha256=<hex HMAC-SHA256>`). 2xx = continue, 409 = abort.
   * @example hook_url_pre_vm = https://ops.example/hooks/vmbackup
   */
  hook_url_pre_vm: z.string().optional(),
  hook_url_post_vm: z.string().optional(),
  hook_url_run_start: z.string().optional(),
  hook_url_run_end: z.string().optional(),
  /** File holding the HMAC-SHA256 secret of HTTP hooks (first line). Required with hook_url_*. */
  hook_secret_file: z.string().optional(),
  /** Ask NATS subscribers on `vmbackup.hooks.<point>` at every hook point (needs NATS). */
  hooks_nats: z.boolean().default(false),
  /** NATS replies to wait for at each point; 0 = every reply that comes within hook_timeout. */
  hook_nats_replies: z.number().int().min(0).max(100).default(1),
  /** Seconds a hook may take; a command is then killed with its process group. */
  hook_timeout: z.number().int().min(1).max(86_400).default(60),
  /** A hook that does not answer in time at pre-vm or run-start: `continue` (with a warning) or `abort`. */
  hooks_on_timeout: z.enum(['continue', 'abort']).default('continue'),
  /** A hook that fails (cannot run, exits non-zero but 3, HTTP error) at pre-vm or run-start: `continue` or `abort`. */
  hooks_on_failure: z.enum(['continue', 'abort']).default('continue'),
});
export type Settings = z.infer<typeof Settings>;

/** Default of max_age_hours: a daily backup, with two hours' slack. */
export const DEFAULT_MAX_AGE_HOURS = 26;
