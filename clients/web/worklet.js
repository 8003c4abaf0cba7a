// AudioWorklet processor: microphone samples at the context rate -> 16 kHz mono PCM16 frames.
//
// Mixes the input channels to mono, low-pass filters (windowed-sinc FIR) when the context
// runs faster than the target rate, resamples by linear interpolation, and posts one
// message per frame: {pcm: ArrayBuffer (Int16, little-endian), rms, peak}. The main
// thread may post "flush": the partial last frame is posted, then {flushed: true}.

const FIR_TAPS = 63;

function lowpassTaps(cutoff, count) {
  // cutoff in cycles per input sample (0 < cutoff < 0.5); Blackman-windowed sinc, unity DC gain.
  const taps = new Float32Array(count);
  const middle = (count - 1) / 2;
  let sum = 0;
  for (let i = 0; i < count; i++) {
    const x = i - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (count - 1))
      + 0.08 * Math.cos((4 * Math.PI * i) / (count - 1));
    taps[i] = sinc * window;
    sum += taps[i];
  }
  for (let i = 0; i < count; i++) taps[i] /= sum;
  return taps;
}

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    const targetRate = opts.targetRate || 16000;
    const frameMs = opts.frameMs || 100;
    this.step = sampleRate / targetRate; // input samples per output sample
    this.frameLength = Math.round((targetRate * frameMs) / 1000);
    this.frame = new Int16Array(this.frameLength);
    this.filled = 0;
    this.taps = this.step > 1 ? lowpassTaps((0.5 * 0.9) / this.step, FIR_TAPS) : null;
    this.history = new Float32Array(FIR_TAPS);
    this.historyPos = 0;
    this.inputIndex = -1; // index of the last filtered input sample
    this.previous = 0; // the filtered sample before it
    this.nextOutput = 0; // input-sample position of the next output sample
    this.sumSquares = 0;
    this.peak = 0;
    this.port.onmessage = (event) => {
      if (event.data !== "flush") return;
      this.post(true);
      this.port.postMessage({ flushed: true });
    };
  }

  filter(x) {
    if (this.taps === null) return x;
    const size = FIR_TAPS;
    this.history[this.historyPos] = x;
    let acc = 0;
    let j = this.historyPos;
    for (let i = 0; i < size; i++) {
      acc += this.taps[i] * this.history[j];
      j = j === 0 ? size - 1 : j - 1;
    }
    this.historyPos = this.historyPos + 1 === size ? 0 : this.historyPos + 1;
    return acc;
  }

  emit(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    this.sumSquares += clamped * clamped;
    const magnitude = Math.abs(clamped);
    if (magnitude > this.peak) this.peak = magnitude;
    if (this.filled === this.frameLength) this.post(false);
  }

  post(partial) {
    if (this.filled === 0) return;
    const pcm = partial ? this.frame.slice(0, this.filled) : this.frame;
    const rms = Math.sqrt(this.sumSquares / this.filled);
    this.port.postMessage({ pcm: pcm.buffer, rms, peak: this.peak }, [pcm.buffer]);
    this.frame = new Int16Array(this.frameLength);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || !input[0]) return true;
    const channels = input.length;
    const length = input[0].length;
    for (let n = 0; n < length; n++) {
      let sample = 0;
      for (let c = 0; c < channels; c++) sample += input[c][n];
      const current = this.filter(sample / channels);
      this.inputIndex += 1;
      while (this.nextOutput <= this.inputIndex) {
        const fraction = this.nextOutput - (this.inputIndex - 1);
        this.emit(this.previous + (current - this.previous) * fraction);
        this.nextOutput += this.step;
      }
      this.previous = current;
    }
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
