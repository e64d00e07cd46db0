/**
 * vmbackup's subcommands as `--help` describes them: what `vmbackup --help` lists under
 * "commands", and what `vmbackup COMMAND --help` prints (args.ts renders both with
 * `helpText` and `commandHelp`). Data only: runtime/cli/main.ts dispatches, and a test checks
 * that both know the same commands.
 *
 * A command's options are its own (`{long, metavar, help}`) or options of vmbackup's command
 * line named by their long form (`'concurrency'`), shown with that option's own text; `shared`
 * lists, per group, the command-line options the command reads its settings with.
 *
 * @example
 *   { name: 'status', args: '[RUN]', summary: 'the runs on NATS …', options: [{ long: 'limit', metavar: 'N', help: '…' }],
 *     shared: [{ title: 'connection and config options', options: ['nats', 'config', 'base-dir', 'log-level', 'help', 'version'] }] }
 */
export interface CommandOption {
  short?: string;
  long: string;
  metavar?: string;
  help: string;
  /** Shown without brackets in the usage line. */
  required?: boolean;
}

export interface CommandSpec {
  name: string;
  /** Positional arguments as the usage line shows them (`[RUN]`, `NAME`); they may stand anywhere among the options. */
  args?: string;
  /** One line, for `vmbackup --help`. */
  summary: string;
  /** `vmbackup COMMAND --help` is the command's own (verify, restore) or the default command's (backup): not rendered from here. */
  ownHelp?: boolean;
  /** Paragraphs under the usage line. */
  description?: string[];
  arguments?: { name: string; help: string }[];
  /** The command's own options: new ones, or vmbackup's by long name. */
  options?: (CommandOption | string)[];
  /** vmbackup's options the command also reads, by group. */
  shared?: { title: string; options: string[] }[];
  /** Paragraphs at the end (exit codes …). */
  epilog?: string[];
}

/** Options every command that reads the settings takes. */
const CONFIG = ['config', 'base-dir', 'log-level', 'help', 'version'];
const NATS_CONNECTION = { title: 'connection and config options', options: ['nats', ...CONFIG] };
const XAPI = ['xapi', 'user', 'password-file', 'tls-ca-file', 'insecure', 'no-insecure'];
/** What a run is made of: the backup command's selection and retention options. */
const RUN_OPTIONS = [
  'backup-dir',
  'vm-export',
  'vdi-export',
  'delta-export',
  'exclude',
  'pool-backup',
  'no-pool-backup',
  'host-backup',
  'no-host-backup',
  'compress',
  'no-compress',
  'compression',
  'format',
  'max-backups',
  'space-threshold',
  'concurrency',
];

export const COMMAND_SPECS: readonly CommandSpec[] = [
  { name: 'backup', summary: 'back up the pool (the default: VmBackup\'s command line, "vmbackup [options]")', ownHelp: true },
  { name: 'verify', args: '[VM…|PATH…]', summary: 're-read backup sets and check them', ownHelp: true },
  {
    name: 'list',
    args: '[VM]',
    summary: 'the backup sets on disk: time, size, whether they count, verified or not, files',
    description: [
      "Reads backup_dir (no pool, no NATS) and shows each VM folder's backup sets, newest first: stamp, time (UTC), size, whether the set counts toward max_backups (and why not), its last verification and when, and its files. Without VM, POOL_DB and HOSTS too. The same reading as prune and the gateway's GET /v1/backups.",
    ],
    arguments: [{ name: 'VM', help: 'a VM folder, or the VM name its manifests record: only its sets' }],
    options: [{ long: 'json', help: "Print JSON: the document of the gateway's GET /v1/backups" }],
    shared: [{ title: 'config options', options: ['backup-dir', ...CONFIG] }],
    epilog: ['Exit codes: 0 listed, 2 usage or config error, or backup_dir cannot be read.'],
  },
  { name: 'restore', args: 'FILE', summary: 'restore one backup into the pool', ownHelp: true },
  {
    name: 'worker',
    summary: 'serve the functions on NATS (and the run coordinator) until SIGTERM',
    description: [
      'Binds the chosen functions to their subjects on NATS JetStream and runs the run coordinator. Several workers, on one node or many, share the work; each job is done once. On SIGTERM or SIGINT it drains: stops taking jobs, lets running ones finish, hands the rest back.',
    ],
    options: [
      'functions',
      'metrics-listen',
      { long: 'no-coordinator', help: 'Do not run the run coordinator here (some worker must)' },
      { long: 'ack-wait', metavar: 'S', help: "A dead worker's job is taken over after S seconds (Default: 30)" },
      { long: 'drain-timeout', metavar: 'S', help: 'On SIGTERM, running jobs get S seconds to finish (Default: 60)' },
      { long: 'replicas', metavar: 'N', help: "In a JetStream cluster, keep N copies of vmbackup's streams (raised, never lowered)" },
      'concurrency',
    ],
    shared: [{ title: 'connection and config options', options: ['nats', ...XAPI, ...CONFIG] }],
    epilog: ['Exit codes: 0 after a signal, 2 usage or config error, or NATS unreachable.'],
  },
  {
    name: 'run',
    summary: 'submit a run to the workers on NATS, follow it, print its summary',
    description: [
      'Submits a run to the workers on NATS (--nats URL or nats_url), shows its progress and prints the same summary as the embedded vmbackup, with the same exit codes. The run is made of the backup options below (and the config files); the workers do the backups.',
      'When no worker consumes some of the run\'s jobs (or none runs the coordinator), it says so on stderr within a few seconds, naming them; the run waits for a worker until --wait-timeout.',
    ],
    options: [
      { long: 'trigger-id', metavar: 'ID', help: 'One run per trigger id: sending it again follows the same run' },
      { long: 'timeout', metavar: 'S', help: 'Stop waiting after S seconds (exit 2; the run goes on: vmbackup status RUN)' },
      {
        long: 'wait-timeout',
        metavar: 'S',
        help: 'Stop waiting (exit 2) once the run has gone S seconds without progress: no event, no phase under way; a long export is progress (Default: 300). The run stays queued',
      },
      { long: 'json', help: 'Print the run summary as JSON instead of text' },
      { long: 'progress', help: 'Show a live line per running VM (phase, bytes, rate, ETA) even when stdout is not a terminal (Default: on a terminal only)' },
      { long: 'no-progress', help: 'No live progress lines, even on a terminal' },
    ],
    shared: [{ title: 'backup options (as for vmbackup)', options: RUN_OPTIONS }, NATS_CONNECTION],
    epilog: ['Exit codes: 0 all backed up (warnings allowed), 1 a backup failed, 2 the run could not start, made no progress within --wait-timeout, NATS is unreachable, or a usage or config error.'],
  },
  {
    name: 'status',
    args: '[RUN]',
    summary: 'runs on NATS: the recent ones with their outcome, or one run and its jobs',
    description: [
      'Reads the run state from NATS. Without RUN: the recent runs, newest first, one per line: id, state (its outcome once finished: success, warning, error, fatal), start, duration, jobs, pool, trigger. With RUN: that run, its outcome and exit code, and each of its jobs (status, phase, try, size, time per phase, errors).',
    ],
    arguments: [{ name: 'RUN', help: 'a run id, as vmbackup run, vmbackup status and the gateway show it' }],
    options: [
      { long: 'limit', metavar: 'N', help: 'Without RUN: at most N runs (Default: 20)' },
      { long: 'json', help: 'Print JSON: the runs, or the run with its jobs and summary' },
    ],
    shared: [NATS_CONNECTION],
    epilog: ['Exit codes: 0 shown, 2 the run is unknown, NATS is unreachable, or a usage or config error.'],
  },
  {
    name: 'invoke',
    args: 'NAME',
    summary: 'run one phase (function) on the workers and print its outcome',
    description: [
      "Validates the input against the function's schema (functions/NAME/NAME.ts), queues the job on NATS, waits for the phase's done or failed event and prints it as JSON. Without runId and jobId in the input, the invocation is ad hoc (runId adhoc-<stamp>-<hex>, jobId invoke.NAME).",
    ],
    arguments: [{ name: 'NAME', help: 'the function to run' }],
    options: [
      { long: 'input', metavar: 'JSON|@FILE', required: true, help: "The job's message, as JSON, or @FILE to read it from a file" },
      { long: 'no-wait', help: 'Only queue the job; print where it went' },
      { long: 'timeout', metavar: 'S', help: 'Stop waiting after S seconds (exit 2; the job stays queued)' },
    ],
    shared: [NATS_CONNECTION],
    epilog: ['Exit codes: 0 done, 1 the phase failed, 2 invalid input, usage or config error, NATS unreachable, or no outcome in time.'],
  },
  {
    name: 'gateway',
    summary: 'the HTTP API in front of NATS: start and follow runs, list backups, webhooks',
    description: [
      'Serves the HTTP API (runtime/gateway/README.md; GET /v1/openapi.json) until SIGTERM. Bearer tokens come from gateway_tokens_file (one per line, # comments); the secret of POST /v1/hooks/generic from webhook_secret_file. Without any token the gateway refuses to start.',
    ],
    options: ['listen', { long: 'no-auth', help: 'Serve without authentication: only on a loopback address (127.x.x.x, ::1, localhost), for a try-out' }],
    shared: [{ title: 'defaults of the runs it starts, and the backups it lists (as for vmbackup)', options: RUN_OPTIONS }, NATS_CONNECTION],
    epilog: ['Exit codes: 0 after a signal, 2 usage or config error (no token, unreadable file, no NATS).'],
  },
];

/** The spec of a command; throws for a name that is not one (a bug). */
export function commandSpec(name: string): CommandSpec {
  const spec = COMMAND_SPECS.find((c) => c.name === name);
  if (spec === undefined) throw new Error(`no command ${name}`);
  return spec;
}

/**
 * The options of vmbackup's command line that `name` reads (its shared groups and the
 * shared options it lists as its own), by long name; undefined for a command with its own
 * parser or help (backup, verify, restore). What loadCommandSettings refuses the rest with.
 *
 * @example commandAccepts('status') // Set { 'nats', 'config', 'base-dir', 'log-level', 'help', 'version', 'json' … }
 */
export function commandAccepts(name: string): ReadonlySet<string> | undefined {
  const spec = COMMAND_SPECS.find((c) => c.name === name);
  if (spec === undefined || spec.ownHelp === true) return undefined;
  return new Set([...(spec.options ?? []).map((o) => (typeof o === 'string' ? o : o.long)), ...(spec.shared ?? []).flatMap((g) => g.options)]);
}
