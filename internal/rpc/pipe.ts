/**
 * A bounded single-consumer queue exposed as an async iterable: the producer
 * awaits `push` (backpressure), the consumer iterates. Used to feed client
 * streams (e.g. forwarding a Write to replica stores) without buffering a blob.
 */
export class AsyncPipe<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private ended = false;
  private failure: unknown;
  private wakeConsumer: (() => void) | undefined;
  private wakeProducer: (() => void) | undefined;

  constructor(private readonly capacity = 4) {}

  async push(item: T): Promise<void> {
    while (this.items.length >= this.capacity && !this.ended) {
      await new Promise<void>((r) => {
        this.wakeProducer = r;
      });
    }
    if (this.ended) return;
    this.items.push(item);
    this.wakeConsumer?.();
  }

  end(): void {
    this.ended = true;
    this.wakeConsumer?.();
    this.wakeProducer?.();
  }

  fail(err: unknown): void {
    this.failure = err;
    this.end();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    try {
      for (;;) {
        const item = this.items.shift();
        if (item !== undefined) {
          this.wakeProducer?.();
          yield item;
          continue;
        }
        if (this.failure !== undefined) throw this.failure;
        if (this.ended) return;
        await new Promise<void>((r) => {
          this.wakeConsumer = r;
        });
      }
    } finally {
      // A consumer that stops early must not leave the producer waiting.
      this.ended = true;
      this.wakeProducer?.();
    }
  }
}
