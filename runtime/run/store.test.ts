import { storeContract } from './store-contract.js';
import { MemoryRunStore } from './store.js';

storeContract('memory', async () => ({ store: new MemoryRunStore(), close: async () => {} }));
