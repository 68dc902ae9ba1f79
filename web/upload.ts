/**
 * Uploads from the page: drag and drop or a file picker. Each file is read and
 * hashed (SHA-256, Web Crypto) in a Worker (hash-worker.ts); then the File itself
 * goes to the gateway's `PUT /blobs/{sha256}` by XMLHttpRequest (`client.putFile`):
 * the browser streams it from disk, the page's thread never holds its bytes, and the
 * limit is MAX_UPLOAD_SIZE (not the unary Put's MAX_PUT_SIZE). The bar shows both
 * phases: 0–20 % reading and hashing, 20–100 % bytes sent.
 */
import type { HaystackClient, StoredBlob } from '../internal/sdk/browser.js';
import { $, el, errorText } from './dom.js';

type WorkerReply =
  | { type: 'progress'; read: number }
  | { type: 'done'; sha256: string }
  | { type: 'error'; message: string };

/** Runs one file through a fresh Worker: its SHA-256 (hex). */
function hash(file: File, onRead: (read: number) => void) {
  return new Promise<string>((resolve, reject) => {
    const worker = new Worker(new URL('./hash-worker.js', import.meta.url), { type: 'module' });
    worker.onmessage = (e: MessageEvent<WorkerReply>) => {
      const m = e.data;
      if (m.type === 'progress') return onRead(m.read);
      worker.terminate();
      if (m.type === 'done') resolve(m.sha256);
      else reject(new Error(m.message));
    };
    worker.onerror = (e) => {
      worker.terminate();
      reject(new Error(e.message || 'the upload worker failed'));
    };
    worker.postMessage({ file });
  });
}

export function setupUpload(client: HaystackClient, onStored: (b: StoredBlob) => void): void {
  const upload = async (files: FileList | File[]) => {
    for (const file of Array.from(files)) {
      const progress = el('progress', { max: 100, value: 0 });
      const state = el('span', { className: 'state' }, 'hashing');
      const row = el(
        'li',
        {},
        el('span', { className: 'name', title: file.name }, file.name),
        progress,
        state,
      );
      $('#uploads').prepend(row);
      const size = file.size || 1;
      try {
        const contentType = file.type || 'application/octet-stream';
        const sha256 = await hash(file, (read) => {
          progress.value = (read / size) * 20;
          state.textContent = `hashing ${Math.round((read / size) * 100)}%`;
        });
        progress.value = 20;
        const b = await client.putFile(file, sha256, {
          contentType,
          fileName: file.name,
          onProgress: (sent, total) => {
            progress.value = 20 + (total ? (sent / total) * 80 : 80);
            state.textContent = `${total ? Math.round((sent / total) * 100) : 100}%`;
          },
        });
        row.className = 'done';
        row.dataset.id = b.id;
        state.textContent = 'stored';
        progress.value = 100;
        onStored(b);
      } catch (err) {
        row.className = 'failed';
        state.textContent = 'failed';
        row.title = errorText(err);
      }
    }
  };
  const drop = $('#drop');
  const input = $<HTMLInputElement>('#file');
  input.addEventListener('change', () => {
    if (input.files) void upload(input.files);
    input.value = '';
  });
  for (const ev of ['dragenter', 'dragover']) {
    drop.addEventListener(ev, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
  }
  for (const ev of ['dragleave', 'drop']) {
    drop.addEventListener(ev, (e) => {
      e.preventDefault();
      drop.classList.remove('over');
    });
  }
  drop.addEventListener('drop', (e) => {
    const files = (e as DragEvent).dataTransfer?.files;
    if (files?.length) void upload(files);
  });
}
