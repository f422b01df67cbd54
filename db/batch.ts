// Micro-batching of small database calls: calls made in the same event-loop turn (and those made while
// the previous batch runs) share one statement. An embedded database pays most of a statement's cost per
// statement, not per row, so a hundred concurrent calls cost about what one does.

export class Batcher<In, Out> {
  private waiting: Array<{ readonly input: In, readonly resolve: (out: Out) => void, readonly reject: (err: unknown) => void }> = []
  private scheduled = false
  private running = 0

  /**
   * `run` gets every input of a batch and returns one output per input, in the same order.
   * A failing batch fails each of its calls with that error; the next batch runs regardless.
   * `concurrency`: batches running at once. A server database overlaps them on its own cores; an
   * embedded one runs on our thread, where a second batch would only wait, so it gets 1.
   */
  constructor (private readonly run: (inputs: In[]) => Promise<Out[]>, private readonly concurrency = 1, private readonly maxBatch = 1000) {}

  submit (input: In): Promise<Out> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ input, resolve, reject })
      this.schedule()
    })
  }

  private schedule (): void {
    if (this.scheduled || this.running >= this.concurrency || this.waiting.length === 0) return
    this.scheduled = true
    setImmediate(() => { this.scheduled = false; void this.flush() })
  }

  private async flush (): Promise<void> {
    this.running++
    const batch = this.waiting.splice(0, this.maxBatch)
    try {
      const outs = await this.run(batch.map(b => b.input))
      if (outs.length !== batch.length) throw new Error(`batch returned ${outs.length} results for ${batch.length} calls`)
      batch.forEach((b, i) => b.resolve(outs[i] as Out))
    } catch (err) {
      for (const b of batch) b.reject(err)
    } finally {
      this.running--
      this.schedule()
    }
  }
}
