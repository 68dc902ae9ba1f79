import { signedUrlPath, verifyBlobUrl } from '../auth/signed-url.js';

/**
 * The gateways' signed-URL keys (URL_SIGNING_KEYS): the first signs, each verifies, so a new
 * key is rolled out first as a second key, then made first, then the old one dropped.
 */
export class UrlSigner {
  constructor(private readonly keys: readonly Buffer[]) {
    if (keys.length === 0) throw new Error('UrlSigner needs a key');
  }

  /** `/blobs/{id}?exp=…&sig=…` for the blob with `cookie`, valid until `expSec` (unix seconds). */
  sign(blobId: string, cookie: bigint, expSec: number): string {
    return signedUrlPath(this.keys[0] as Buffer, blobId, cookie, expSec);
  }

  verify(blobId: string, cookie: bigint, expSec: number, sig: Buffer): boolean {
    return verifyBlobUrl(this.keys, blobId, cookie, expSec, sig);
  }
}
