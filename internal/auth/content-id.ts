/**
 * Content ids are earned: a blob id that looks like a content address (64 hex digits, what
 * Put names a blob without an id) must be the SHA-256 of the data, so nobody can squat the id
 * of content someone else will upload (issue 13).
 */
const CONTENT_ID = /^[0-9a-fA-F]{64}$/;

export function isContentId(blobId: string): boolean {
  return CONTENT_ID.test(blobId);
}

/**
 * Why `blobId` may not name content whose SHA-256 is `sha256Hex` (lower-case hex), or null.
 * Ids that are not 64 hex digits are free-form and always allowed.
 */
export function contentIdProblem(blobId: string, sha256Hex: string): string | null {
  if (!isContentId(blobId)) return null;
  if (blobId.toLowerCase() === sha256Hex.toLowerCase() && blobId === blobId.toLowerCase()) return null;
  return `blob id ${blobId} looks like a SHA-256 content address but the data's SHA-256 is ${sha256Hex}: a 64-hex-digit id must be the lower-case SHA-256 of the data (or leave the id empty and the gateway names it)`;
}
