// The last seconds of sent datagrams, kept to answer a rack's NACKs (DESIGN §1). Bounded by
// seconds and bytes; the oldest second goes first. A stamp sent twice is answered for neither.

export class ResendRing {
  private readonly seconds = new Map<number, Uint8Array[]>();
  private bytes = 0;
  evictedSeconds = 0;

  constructor(
    private readonly secondsMax: number,
    private readonly bytesMax: number,
  ) {}

  /**
   * Stamps sent twice (the wall clock stepped back by more than half a second): neither copy is
   * kept, so a NACK for that stamp is never answered with the other copy's part (before: the
   * second copy replaced the first, and a part of one second was filed into another). Bounded.
   */
  private readonly repeated = new Set<number>();
  repeatedSeconds = 0;

  put(second: number, frames: Uint8Array[]): void {
    const old = this.seconds.get(second);
    if (old !== undefined || this.repeated.has(second)) {
      if (old !== undefined) this.remove(second, old);
      if (!this.repeated.has(second)) {
        this.repeated.add(second);
        this.repeatedSeconds++;
        for (const r of this.repeated) {
          if (this.repeated.size <= 2 * this.secondsMax) break;
          this.repeated.delete(r);
        }
      }
      return;
    }
    let size = 0;
    for (const f of frames) size += f.length;
    this.seconds.set(second, frames);
    this.bytes += size;
    for (const [s, fs] of this.seconds) {
      if (this.seconds.size <= this.secondsMax && this.bytes <= this.bytesMax) break;
      this.remove(s, fs);
      this.evictedSeconds++;
    }
  }

  get(second: number, part: number): Uint8Array | undefined {
    return this.seconds.get(second)?.[part];
  }

  get heldBytes(): number {
    return this.bytes;
  }

  private remove(second: number, frames: Uint8Array[]): void {
    for (const f of frames) this.bytes -= f.length;
    this.seconds.delete(second);
  }
}
