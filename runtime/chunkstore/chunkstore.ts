/**
 * The chunk store's public API: what the backup, restore, prune and verify phases call.
 * No XAPI here; see README.md in this folder for the on-disk layout and the GC rule.
 *
 * @example
 *   const store = await ChunkStore.open(backupDir);
 *   const point = await PointWriter.begin(store, { vmFolder: 'web1', vm: { uuid, name: 'web1' } });
 *   await point.addDiskChanges('xvda', previousRef, rangesFromCbtBitmap(bitmap, size), nbdReader);
 *   await point.setMeta(metaXml);
 *   await point.commit();
 *   await removePoint(store, oldRef);
 *   await collectGarbage(store);
 *   await verifyPoints(store, [ref], { samplePercent: 10 });
 */
export { ChunkError, ChunkErrorCode, ChunkStore, DEFAULT_CHUNK_SIZE, STORE_FOLDER, ZERO_DIGEST } from './chunks.js';
export type { ChunkStoreOptions, PutResult } from './chunks.js';
export { IndexReader } from './index-file.js';
export { CBT_BLOCK_SIZE, rangesFromCbtBitmap, writeDisk, writeDiskChanges } from './write-disk.js';
export type { ByteRange, DiskReader, DiskWriteResult, WriteDiskOptions } from './write-disk.js';
export { PointDisk, PointManifest, PointWriter, diskBlockSource, listPoints, openPoint, pointDir, pointName, readDiskRaw, readDiskVhd, removePoint } from './points.js';
export type { BeginPointInput, OpenPoint, PointListing, PointRef } from './points.js';
export { GC_SAFETY_MARGIN_MS, collectGarbage, lastGcReport } from './gc.js';
export type { GcOptions, GcReport } from './gc.js';
export { chunkVerifiedAt, verifyPoints } from './verify.js';
export type { PointVerifyResult, VerifyOptions, VerifyProblem, VerifyReport } from './verify.js';
export { liveWriters } from './writers.js';
export type { WriterInfo } from './writers.js';
export { openExistingStore } from './existing.js';
export { PointInfo, describePoints } from './describe.js';
