/**
 * Blob ids: 1..255 bytes drawn from the URL-safe unreserved set [A-Za-z0-9._~-].
 * Being pure ASCII, a blob id's string length equals its byte length, and
 * JavaScript string comparison equals byte-wise comparison.
 */
export const MAX_BLOB_ID_LENGTH = 255;

const ALLOWED = /^[A-Za-z0-9._~-]+$/;

/** Returns null when `id` is a valid blob id, else a human-readable reason. */
export function validateBlobId(id: unknown): string | null {
  if (typeof id !== 'string') return 'blob id must be a string';
  if (id.length === 0) return 'blob id must not be empty';
  if (id.length > MAX_BLOB_ID_LENGTH) {
    return `blob id is ${id.length} bytes long; the maximum is ${MAX_BLOB_ID_LENGTH}`;
  }
  if (!ALLOWED.test(id)) {
    const bad = [...id].find((c) => !ALLOWED.test(c)) ?? '?';
    return `blob id contains ${JSON.stringify(bad)}; only letters, digits and . _ ~ - are allowed`;
  }
  return null;
}
