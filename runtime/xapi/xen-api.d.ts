// xen-api (npm, ISC) ships no types. This declares the part vmbackup uses; runtime/xapi/client.ts
// is the only module that imports it.
declare module 'xen-api' {
  import type { EventEmitter } from 'node:events';
  import type { Readable } from 'node:stream';

  export interface XapiOptions {
    url: string;
    auth?: { user: string; password: string } | { sessionId: string };
    allowUnauthorized?: boolean;
    readOnly?: boolean;
    transport?: 'auto' | 'json-rpc' | 'xml-rpc';
    callTimeout?: number | Record<string, number>;
    httpInactivityTimeout?: number;
    callConcurrency?: number;
    watchEvents?: boolean | string[];
    syncStackTraces?: boolean;
    debounce?: number;
  }

  export interface XapiResponse extends Readable {
    statusCode: number;
    headers: Record<string, string | string[] | undefined>;
    body: Readable;
    task?: Promise<unknown>;
  }

  export interface XapiRecord {
    readonly $type: string;
    readonly $ref: string;
    readonly $id: string;
    readonly [field: string]: unknown;
  }

  export class Xapi extends EventEmitter {
    constructor(opts: XapiOptions);
    readonly status: 'disconnected' | 'connecting' | 'connected';
    readonly pool: XapiRecord;
    readonly sessionId: string;
    readonly objects: { all: Record<string, XapiRecord> };
    readonly objectsFetched: Promise<void>;
    connect(): Promise<void>;
    disconnect(): Promise<void>;
    call<T = unknown>(method: string, ...args: unknown[]): Promise<T>;
    callAsync<T = unknown>(method: string, ...args: unknown[]): Promise<T>;
    getAllRecords(type: string): Promise<XapiRecord[]>;
    getRecord(type: string, ref: string): Promise<XapiRecord>;
    getRecordByUuid(type: string, uuid: string): Promise<XapiRecord>;
    getField<T = unknown>(type: string, ref: string, field: string): Promise<T>;
    getResource(pathname: string, opts?: { host?: XapiRecord; query?: Record<string, string>; task?: boolean | string }): Promise<XapiResponse>;
    putResource(body: unknown, pathname: string, opts?: { host?: XapiRecord; query?: Record<string, string>; task?: boolean | string }): Promise<unknown>;
    createTask(nameLabel: string, nameDescription?: string): Promise<string>;
    watchTask(ref: string): Promise<unknown>;
    barrier(ref?: string): Promise<unknown>;
  }

  export function createClient(opts: XapiOptions): Xapi;
}

// xen-api's reading of a finished task record: its result (parsed), or a rejection with the
// task's XapiError (or a Cancel); undefined while the task is pending.
declare module 'xen-api/_getTaskResult.mjs' {
  export default function getTaskResult(task: { status: string }): Promise<unknown> | undefined;
}
